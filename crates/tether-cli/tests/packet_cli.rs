//! The packet part of the command-line contract (DESIGN.md): `tether serve
//! packet`, `tether call --packet`, driven through the real binary.

mod common;

use std::process::Stdio;

use common::{call, serve, tether, KillOnDrop, Scratch, LIMIT, TETHER};

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
    assert!(
        server.signal_and_wait("TERM").success(),
        "SIGTERM is a graceful exit 0"
    );
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
    assert!(server.signal_and_wait("TERM").success());
}

#[test]
fn call_packet_needs_an_rq_type() {
    let (server, addr) = serve(&["packet"]);
    let (status, _, err) = call(&[&addr, "--packet", "--", "x"], b"");
    assert_eq!(status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("--rq-type"), "{err}");
    // and a framing is not silently ignored
    let (status, _, err) = call(
        &[&addr, "--packet", "--rq-type", "0", "--framing", "length"],
        b"",
    );
    assert_eq!(status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("--framing"), "{err}");
    assert!(server.signal_and_wait("TERM").success());
}

#[test]
fn serve_packet_serves_connections_at_the_same_time() {
    let (server, addr) = serve(&["packet"]);
    // a slow request on one connection does not hold up another
    let mut slow = KillOnDrop::spawn(
        tether("call")
            .args([&addr, "--packet", "--rq-type", "4", "--", "10000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        LIMIT,
    );
    // Time for the slow call to start, connect and send (a few ms): the
    // quick one must come second for the test to tell a server that
    // serves one connection at a time. A settling pause, not a measure.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(slow.try_wait().is_none(), "the slow call is under way");
    let (status, out, _) = call(&[&addr, "--packet", "--rq-type", "0", "--", "quick"], b"");
    assert!(status.success());
    assert_eq!(out, "ok flags=0 quick\n");
    assert!(slow.try_wait().is_none(), "the slow call is still waiting");
    slow.child().kill().unwrap();
    slow.wait();
    assert!(server.signal_and_wait("TERM").success());
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
    let scratch = Scratch::new("packet-tls");
    let ca_s = scratch.path("ca.pem");
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
    assert!(server.signal_and_wait("TERM").success());
}
