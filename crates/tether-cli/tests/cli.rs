//! The command-line contract of DESIGN.md, driven through the real binary.

mod common;

use std::process::Stdio;
use std::time::Instant;

use common::{call, run, serve, tether, KillOnDrop, Lines, LIMIT, TETHER};

#[test]
fn a_server_signalled_as_soon_as_it_listens_stops_in_order() {
    // the handlers are in place before the line is printed: the signal
    // stops the server (exit 0), it does not kill it
    for (args, signal) in [
        (&["lines"][..], "TERM"),
        (&["lines"][..], "INT"),
        (&["packet"][..], "TERM"),
    ] {
        let (server, _) = serve(args);
        let status = server.signal_and_wait(signal);
        assert!(status.success(), "serve {args:?} on SIG{signal}: {status}");
    }
}

#[test]
fn a_server_on_stdio_stops_on_sigterm_while_its_stdin_stays_open() {
    // as under a parent that keeps the pipe open: tokio's read of stdin
    // cannot be cancelled, and the exit must not wait for it
    for service in ["lines", "packet"] {
        let mut server = KillOnDrop::spawn(
            tether("serve")
                .args([service, "--listen", "stdio:"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            LIMIT,
        );
        let stderr = Lines::read(server.child().stderr.take().unwrap());
        let line = stderr.next_before(Instant::now() + LIMIT).unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        let status = server.signal_and_wait("TERM");
        assert!(
            status.success(),
            "serve {service} on stdio, SIGTERM: {status}"
        );
    }
}

#[test]
fn serve_lines_and_call_over_stdin_and_arguments() {
    let (server, addr) = serve(&["lines", "--sentinel", r"\r\n"]);
    let (status, out, _) = call(
        &[&addr, "--framing", r"sentinel:\r\n"],
        b"*IDN?\nSET k v\nGET k\nREV abc\n",
    );
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("tether,lines,"), "{out}");
    assert_eq!(&lines[1..], ["OK", "v", "cba"]);

    let (status, out, _) = call(
        &[
            &format!("tcp://{addr}"),
            "--framing",
            r"sentinel:\r\n",
            "--",
            "ECHO x y",
            "NOPE",
        ],
        b"",
    );
    assert!(status.success());
    assert_eq!(out, "x y\nERR unknown command\n");
    assert!(
        server.signal_and_wait("TERM").success(),
        "SIGTERM is a graceful exit 0"
    );
}

#[test]
fn call_fails_with_one_line_when_a_reply_is_late_or_the_peer_is_away() {
    let (server, addr) = serve(&["lines"]);
    let (status, out, err) = call(
        &[&addr, "--timeout", "0.2", "--", "ECHO a", "SLEEP 2000"],
        b"",
    );
    assert!(!status.success());
    assert_eq!(out, "a\n");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no reply within"), "{err}");
    assert!(server.signal_and_wait("TERM").success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, _, err) = call(&[&format!("127.0.0.1:{port}"), "--", "x"], b"");
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[test]
fn call_speaks_fixed_and_length_framing() {
    // `exec:cat` echoes bytes back, whatever the framing.
    let (status, out, _) = call(
        &["exec:cat", "--framing", "fixed:4", "--", "abcd", "wxyz"],
        b"",
    );
    assert!(status.success());
    assert_eq!(out, "abcd\nwxyz\n");
    let (status, out, _) = call(&["exec:cat", "--framing", "length"], b"first\n\nthird\n");
    assert!(status.success());
    assert_eq!(out, "first\n\nthird\n");
    let (status, _, err) = call(&["exec:cat", "--framing", "fixed:4", "--", "toolong"], b"");
    assert!(!status.success());
    assert!(err.contains("must be 4 bytes"), "{err}");
}

#[test]
fn bad_arguments_are_named() {
    let (status, _, err) = call(&["tcp://host:port", "--", "x"], b"");
    assert!(!status.success());
    assert!(err.contains("\"port\""), "{err}");
    let (status, _, err) = call(&["127.0.0.1:1", "--framing", "json"], b"");
    assert!(!status.success());
    assert!(err.contains("unknown framing"), "{err}");
}

#[test]
fn demo_runs_and_exits_zero() {
    let (status, out, err) = run(&mut tether("demo"), b"", LIMIT);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("demo: all sections passed"), "{out}");
}

#[test]
fn a_server_on_stdio_is_reachable_as_a_child_process() {
    let endpoint = format!("exec:{TETHER} serve lines --listen stdio:");
    let (status, out, err) = call(&[&endpoint, "--", "REV stdio", "*IDN?"], b"");
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "oidts");
    assert!(lines[1].starts_with("tether,lines,"));
}

#[test]
fn a_huge_timeout_is_for_ever_not_a_panic() {
    // 1e20 s does not fit a `Duration`: taken as a year, the call goes on
    // to fail as any call to a closed port does, in one line
    let (status, out, err) = call(&["127.0.0.1:1", "--timeout", "1e20", "--", "x"], b"");
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A device on a port of its own that sends `greeting`, then answers each
/// line `echo LINE`, until its one client goes.
fn echo_device(greeting: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = format!("telnet://{}", listener.local_addr().unwrap());
    let device = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        let mut out = conn.try_clone().unwrap();
        out.write_all(greeting).unwrap();
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { return };
            out.write_all(format!("echo {line}\n").as_bytes()).unwrap();
        }
    });
    (at, device)
}

#[test]
fn call_over_telnet_sets_a_greeting_aside_so_replies_line_up() {
    let (at, device) = echo_device(b"Welcome to the device\nREADY\n");
    let (status, out, err) = call(&[&at, "--", "one", "two"], b"");
    assert!(status.success(), "{err}");
    assert_eq!(out, "echo one\necho two\n", "each reply is its request's");
    assert!(err.contains("greeting: Welcome to the device"), "{err}");
    assert!(err.contains("greeting: READY"), "{err}");
    device.join().unwrap();

    // a quiet device and a timeout shorter than the quiet time: not a failure
    let (at, device) = echo_device(b"");
    let (status, out, err) = call(&[&at, "--timeout", "0.1", "--", "quick"], b"");
    assert!(status.success(), "{err}");
    assert_eq!(out, "echo quick\n");
    device.join().unwrap();
}

#[test]
fn a_server_on_stdio_exits_once_its_peer_has_gone() {
    // as an `exec:` child or under inetd: stdin's end is its one peer
    // leaving, and nothing else can connect, so it exits (status 0) with
    // its replies out, rather than linger until signalled
    let cases: [(&str, &[u8]); 2] = [
        ("lines", b"REV abc\n*IDN?\n"),
        // stdin ends at once, without even the protocol's EOF packet
        ("packet", b""),
    ];
    for (service, input) in cases {
        let (status, out, err) = run(
            tether("serve").args([service, "--listen", "stdio:"]),
            input,
            LIMIT,
        );
        assert!(status.success(), "serve {service} on stdio: {status} {err}");
        assert!(err.starts_with("listening on"), "{err}");
        if service == "lines" {
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[0], "cba", "{out}");
            assert!(lines[1].starts_with("tether,lines,"), "{out}");
        }
    }
}
