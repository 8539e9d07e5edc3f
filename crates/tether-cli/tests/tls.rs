//! `tether serve … --listen tls://` and `tether call tls://…` through the real binary.

mod common;

use std::process::ExitStatus;

use common::{run, serve, tether, Scratch, LIMIT};

/// `tether call ARGS…` with `env` set and `TETHER_TLS_CA` otherwise unset:
/// its exit status, stdout and stderr, within [`LIMIT`].
fn call(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = tether("call");
    command
        .args(args)
        .env_remove("TETHER_TLS_CA")
        .envs(env.iter().copied());
    run(&mut command, b"", LIMIT)
}

#[test]
fn serve_with_a_self_signed_certificate_and_call_trusting_its_ca() {
    let scratch = Scratch::new("self-signed");
    let ca = scratch.path("ca.pem");
    let (server, addr) = serve(&[
        "lines",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-self-signed",
        "--tls-write-ca",
        &ca,
    ]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let endpoint = format!("tls://{addr}");

    let (status, out, err) = call(
        &[
            &endpoint, "--tls-ca", &ca, "--", "SET k v", "GET k", "REV abc",
        ],
        &[],
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "OK\nv\ncba\n");

    // The CA file named by TETHER_TLS_CA, and the certificate's DNS name.
    let port = addr.rsplit(':').next().unwrap();
    let (status, out, err) = call(
        &[&format!("tls://localhost:{port}"), "--", "GET k"],
        &[("TETHER_TLS_CA", &ca)],
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, "v\n");

    // No CA: one line saying how to give one.
    let (status, out, err) = call(&[&endpoint, "--", "GET k"], &[]);
    assert!(!status.success());
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--tls-ca") && err.contains("TETHER_TLS_CA"),
        "{err}"
    );

    assert!(
        server.signal_and_wait("TERM").success(),
        "SIGTERM is a graceful exit 0"
    );
}

#[test]
fn serve_with_certificate_files_and_refuse_an_untrusted_server() {
    let scratch = Scratch::new("files");
    // Another server's throw-away CA: trusted by nobody but its own clients.
    let other_ca = scratch.path("other-ca.pem");
    let (other, _) = serve(&[
        "lines",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-self-signed",
        "--tls-write-ca",
        &other_ca,
    ]);
    drop(other);

    let made = tether::transport::tls::self_signed(&["127.0.0.1"]).unwrap();
    let (cert, key, ca) = (
        scratch.path("cert.pem"),
        scratch.path("key.pem"),
        scratch.path("ca.pem"),
    );
    std::fs::write(&cert, &made.cert_pem).unwrap();
    std::fs::write(&key, &made.key_pem).unwrap();
    std::fs::write(&ca, &made.ca_pem).unwrap();
    let (server, addr) = serve(&[
        "lines",
        "--listen",
        "tls://127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let endpoint = format!("tls://{addr}");

    let (status, out, err) = call(&[&endpoint, "--tls-ca", &ca, "--", "ECHO files"], &[]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "files\n");

    let (status, out, err) = call(&[&endpoint, "--tls-ca", &other_ca, "--", "ECHO x"], &[]);
    assert!(!status.success());
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&endpoint), "{err}");
    assert!(err.contains("unknown certificate authority"), "{err}");
    assert!(server.signal_and_wait("TERM").success());
}

#[test]
fn serve_on_tls_without_a_certificate_is_refused() {
    let (status, _, err) = run(
        tether("serve").args(["lines", "--listen", "tls://127.0.0.1:0"]),
        b"",
        LIMIT,
    );
    assert!(!status.success());
    assert!(err.contains("--tls-self-signed"), "{err}");
}

#[test]
fn tls_ca_with_an_endpoint_that_is_not_tls_is_refused_before_connecting() {
    // a plain server that would answer: the refusal must not depend on
    // reaching it, and the file must not be read (it does not exist)
    let (server, addr) = serve(&["lines", "--listen", "tcp://127.0.0.1:0"]);
    for packet in [false, true] {
        let endpoint = format!("tcp://{addr}");
        let mut args = vec![endpoint.as_str(), "--tls-ca", "/nonexistent/ca.pem"];
        if packet {
            args.extend(["--packet", "--rq-type", "0"]);
        }
        args.extend(["--", "ECHO x"]);
        let (status, out, err) = call(&args, &[]);
        assert!(!status.success(), "packet {packet}: {out}");
        assert_eq!(out, "");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("--tls-ca needs a tls:// endpoint") && err.contains(&endpoint),
            "{err}"
        );
    }
    assert!(server.signal_and_wait("TERM").success());
}
