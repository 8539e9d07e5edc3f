//! What the integration tests share: running the `tether` binary with every
//! wait bounded, and a guard that kills a child when a test fails half-way,
//! so that no server outlives its test.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The binary under test.
pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// How long a command or a server's start or stop may take by default.
pub const LIMIT: Duration = Duration::from_secs(20);

/// `tether SUBCOMMAND`, to be given its arguments.
pub fn tether(subcommand: &str) -> Command {
    let mut command = Command::new(TETHER);
    command.arg(subcommand);
    command
}

/// A running child process, killed and reaped when dropped: a test that
/// fails (panics) leaves nothing running behind it.
pub struct KillOnDrop {
    child: Option<Child>,
    /// How long [`wait`](Self::wait) and [`signal_and_wait`](Self::signal_and_wait) wait.
    limit: Duration,
}

impl KillOnDrop {
    /// Spawns `command`; its waits are bounded by `limit`.
    pub fn spawn(command: &mut Command, limit: Duration) -> KillOnDrop {
        KillOnDrop {
            child: Some(command.spawn().unwrap()),
            limit,
        }
    }

    /// The running child.
    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child was already waited for")
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().unwrap()
    }

    /// Waits for the exit; kills the child (and fails) after the limit.
    pub fn wait(self) -> ExitStatus {
        self.wait_for("exit")
    }

    /// [`wait`](Self::wait), saying in the failure what it waited for.
    fn wait_for(mut self, what: &str) -> ExitStatus {
        let limit = self.limit;
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return status;
            }
            if start.elapsed() > limit {
                // the drop kills and reaps it
                panic!("no {what} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`TERM`, `INT`) and waits, bounded, for the exit.
    pub fn signal_and_wait(mut self, signal: &str) -> ExitStatus {
        let id = self.child().id();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(id.to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {id} failed");
        self.wait_for(&format!("exit after SIG{signal}"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to its end with `stdin` as its input; returns its exit
/// status, stdout and stderr. Kills it (and fails) after `limit`.
pub fn run(command: &mut Command, stdin: &[u8], limit: Duration) -> (ExitStatus, String, String) {
    let deadline = Instant::now() + limit;
    let mut child = KillOnDrop::spawn(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        limit,
    );
    // read both pipes on threads so a full pipe never stalls the child
    let out = read_to_end(child.child().stdout.take().unwrap());
    let err = read_to_end(child.child().stderr.take().unwrap());
    // written on a thread, so a child that never reads cannot stall the
    // test past `limit`; a child that exits without reading is no failure
    // here (its status and output say what happened). Dropped at the end:
    // the child sees the end of its input.
    let mut input = child.child().stdin.take().unwrap();
    let stdin = stdin.to_vec();
    std::thread::spawn(move || match input.write_all(&stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("writing the child's stdin failed: {e}")
        }
        _ => {}
    });
    let status = child.wait();
    let collect = |pipe: Receiver<String>, name: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        pipe.recv_timeout(left)
            .unwrap_or_else(|e| panic!("its {name} did not close within {limit:?} ({e})"))
    };
    (status, collect(out, "stdout"), collect(err, "stderr"))
}

/// All that `pipe` gives until it closes, read on a thread of its own.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// `tether call ARGS…` with `stdin` as its input: its exit status, stdout
/// and stderr, within [`LIMIT`].
pub fn call(args: &[&str], stdin: &[u8]) -> (ExitStatus, String, String) {
    run(tether("call").args(args), stdin, LIMIT)
}

/// A child's stdout (or stderr), read line by line on a thread of its own
/// so that each wait for a line can be bounded.
pub struct Lines(Receiver<std::io::Result<String>>);

impl Lines {
    /// Starts reading `stdout`; the thread ends with it, or at the first
    /// line after this is dropped.
    pub fn read(stdout: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, or an error if none comes before `deadline` (or
    /// stdout closes first).
    pub fn next_before(&self, deadline: Instant) -> Result<String, RecvTimeoutError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.0.recv_timeout(left).map(Result::unwrap)
    }
}

/// Starts `command` (stdout piped) and reads its lines until one starts
/// with `prefix`, within `limit`; returns the guarded child, the lines
/// before that one, and the rest of that line.
pub fn spawn_until(
    command: &mut Command,
    prefix: &str,
    limit: Duration,
) -> (KillOnDrop, Vec<String>, String) {
    let mut child = KillOnDrop::spawn(command.stdout(Stdio::piped()), limit);
    let stdout = Lines::read(child.child().stdout.take().unwrap());
    let deadline = Instant::now() + limit;
    let mut before = Vec::new();
    loop {
        let line = stdout
            .next_before(deadline)
            .unwrap_or_else(|e| panic!("no `{prefix}` line within {limit:?} ({e}): {before:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return (child, before, rest.trim().to_string());
        }
        before.push(line);
    }
}

/// Starts `tether serve ARGS…` and returns it with the address of its
/// first line, `listening on ADDR`, which must come within [`LIMIT`].
pub fn serve(args: &[&str]) -> (KillOnDrop, String) {
    let (server, before, addr) = spawn_until(
        tether("serve").args(args).stderr(Stdio::null()),
        "listening on ",
        LIMIT,
    );
    assert!(before.is_empty(), "lines before `listening on`: {before:?}");
    (server, addr)
}

/// A scratch directory of this test process, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory named after the process and `name`, which is
    /// unique among the tests of one binary.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tether-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The path of `file` in it.
    pub fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
