//! `tether serve … --listen tls://` and `tether call tls://…` through the real binary.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const LIMIT: Duration = Duration::from_secs(20);

/// A scratch directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tether-cli-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the server when a test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn serve(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(TETHER)
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .to_string();
    (server, addr)
}

fn call(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut child = Command::new(TETHER)
        .arg("call")
        .args(args)
        .env_remove("TETHER_TLS_CA")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child);
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, out, err)
}

fn terminate(mut server: Server) -> ExitStatus {
    Command::new("kill")
        .arg("-TERM")
        .arg(server.0.id().to_string())
        .status()
        .unwrap();
    wait_bounded(&mut server.0)
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

    assert!(terminate(server).success(), "SIGTERM is a graceful exit 0");
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
    assert!(terminate(server).success());
}

#[test]
fn serve_on_tls_without_a_certificate_is_refused() {
    let mut child = Command::new(TETHER)
        .args(["serve", "lines", "--listen", "tls://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("--tls-self-signed"), "{err}");
}
