//! The packet part of the command-line contract (DESIGN.md): `tether serve
//! packet`, `tether call --packet`, driven through the real binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `child` to exit, killing it (and failing) after `LIMIT`.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("process did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `tether serve …` and returns it with the address from its first line.
fn serve(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(TETHER)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .to_string();
    (child, addr)
}

fn call(args: &[&str], stdin: &[u8]) -> (ExitStatus, String, String) {
    let mut child = Command::new(TETHER)
        .arg("call")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let status = wait_bounded(&mut child);
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, out, err)
}

fn terminate(mut child: Child) -> ExitStatus {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait_bounded(&mut child)
}

#[test]
fn serve_packet_and_call_packet_follow_the_contract() {
    let (server, addr) = serve(&["packet"]);
    let (status, out, err) = call(
        &[&addr, "--packet", "--rq-type", "0", "--flags", "9"],
        b"hello\nworld\n",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "ok flags=0 hello\nok flags=0 world\n");
    let (status, out, _) = call(
        &[&addr, "--packet", "--rq-type", "1", "--", "stressed"],
        b"",
    );
    assert!(status.success());
    assert_eq!(out, "ok flags=0 desserts\n");
    let (status, out, _) = call(
        &[
            &addr,
            "--packet",
            "--rq-type",
            "2",
            "--flags",
            "300",
            "--",
            "x",
        ],
        b"",
    );
    assert!(status.success());
    assert_eq!(out, "ok flags=301 x\n");
    let (status, out, _) = call(&[&addr, "--packet", "--rq-type", "3", "--", "x"], b"");
    assert!(status.success());
    assert_eq!(out, "fail flags=0 exception during handler\n");
    let (status, out, _) = call(&[&addr, "--packet", "--rq-type", "4", "--", "5"], b"");
    assert!(status.success());
    assert_eq!(out, "ok flags=0 5\n");
    let (status, out, _) = call(&[&addr, "--packet", "--rq-type", "99", "--", "x"], b"");
    assert!(status.success());
    assert_eq!(out, "fail flags=0 exception during handler\n");
    assert!(terminate(server).success(), "SIGTERM is a graceful exit 0");
}

#[test]
fn call_packet_fails_with_one_line_when_a_reply_is_late() {
    let (server, addr) = serve(&["packet"]);
    let (status, out, err) = call(
        &[
            &addr,
            "--packet",
            "--rq-type",
            "4",
            "--timeout",
            "0.2",
            "--",
            "1",
            "2000",
        ],
        b"",
    );
    assert!(!status.success());
    assert_eq!(out, "ok flags=0 1\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no reply within"), "{err}");
    assert!(terminate(server).success());
}

#[test]
fn call_packet_needs_an_rq_type() {
    let (server, addr) = serve(&["packet"]);
    let (status, _, err) = call(&[&addr, "--packet", "--", "x"], b"");
    assert!(!status.success());
    assert!(err.contains("--rq-type"), "{err}");
    assert!(terminate(server).success());
}

#[test]
fn serve_packet_serves_connections_at_the_same_time() {
    let (server, addr) = serve(&["packet"]);
    // a slow request on one connection does not hold up another
    let mut slow = Command::new(TETHER)
        .args(["call", &addr, "--packet", "--rq-type", "4", "--", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (status, out, _) = call(&[&addr, "--packet", "--rq-type", "0", "--", "quick"], b"");
    assert!(status.success());
    assert_eq!(out, "ok flags=0 quick\n");
    assert!(
        slow.try_wait().unwrap().is_none(),
        "the slow call is still waiting"
    );
    slow.kill().unwrap();
    wait_bounded(&mut slow);
    assert!(terminate(server).success());
}

#[test]
fn call_packet_reaches_a_server_on_stdio_as_a_child_process() {
    let endpoint = format!("exec:{TETHER} serve packet --listen stdio:");
    let (status, out, err) = call(
        &[
            &endpoint,
            "--packet",
            "--rq-type",
            "1",
            "--",
            "hello",
            "world",
        ],
        b"",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "ok flags=0 olleh\nok flags=0 dlrow\n");
}

#[test]
fn serve_packet_and_call_packet_over_tls() {
    let dir = std::env::temp_dir().join(format!("tether-packet-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let ca_s = ca.to_str().unwrap().to_string();
    let (server, addr) = serve(&[
        "packet",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-self-signed",
        "--tls-write-ca",
        &ca_s,
    ]);
    let endpoint = format!("tls://{addr}");
    let (status, out, err) = call(
        &[
            &endpoint,
            "--tls-ca",
            &ca_s,
            "--packet",
            "--rq-type",
            "1",
            "--",
            "secure",
        ],
        b"",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "ok flags=0 eruces\n");
    assert!(terminate(server).success());
    let _ = std::fs::remove_dir_all(&dir);
}
