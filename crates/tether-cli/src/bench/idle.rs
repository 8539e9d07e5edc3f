//! W8 idle: how much resident memory the server spends per idle session.
//!
//! Three processes, so that nothing else is in the measured one: the bench
//! starts a fresh server process (this executable again, with the hidden
//! subcommand `bench-idle-server IMPL N`, the same two runtimes as every
//! workload), where memory freed by earlier workloads can neither inflate
//! the first reading nor be reused by the sessions measured. The clients
//! are held by a third process (this executable again, with the hidden
//! subcommand `bench-hold-clients IMPL ADDR N`), so that 10,000 sockets on
//! each side fit the open-file limit and the clients' memory is not
//! counted. Each client sends one 64-byte echo first, so its connection
//! has really been served (buffers allocated), then goes idle; the child
//! prints `ready` and waits for its stdin to close.
//!
//! Figure: (server-process RSS once the sessions are idle − RSS before
//! they connected) / N. Free heap pages are returned to the system
//! (`malloc_trim`) before the first reading, so memory freed by earlier
//! workloads is not silently reused and the difference is this
//! implementation's own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::report::Record;
use super::rig::{bounded, current_thread, payload, Ctx};
use super::workloads::with_server;
use super::{Impl, Workload};
use crate::CliResult;

/// How long the child may take to connect every client.
const READY_LIMIT: Duration = Duration::from_secs(180);
/// Time given to the server to finish with the clients' requests and
/// settle before the second reading: idle means idle, and tether's packet
/// connections give their buffers back after a second of quiet.
const SETTLE: Duration = Duration::from_millis(2500);

/// Arguments of the hidden `tether bench-hold-clients`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Which implementation's client to open.
    #[arg(value_enum)]
    implementation: Impl,
    /// The server's address.
    addr: SocketAddr,
    /// How many clients.
    sessions: u64,
}

/// Arguments of the hidden `tether bench-idle-server`.
#[derive(Debug, clap::Args)]
pub struct IdleServerArgs {
    /// Which implementation's server to measure.
    #[arg(value_enum)]
    implementation: Impl,
    /// How many idle sessions.
    sessions: u64,
}

/// Runs W8 for `imp`: measures in a fresh server process.
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let n = ctx.count(10_000);
    check_open_file_limit(n)?;
    let output = run_bounded(
        Command::new(std::env::current_exe()?)
            .arg("bench-idle-server")
            .arg(imp.name())
            .arg(n.to_string()),
        READY_LIMIT + Duration::from_secs(60),
    )?;
    let figure = |key: &str| -> CliResult<u64> {
        output
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| format!("the idle server printed no {key}: {output:?}").into())
    };
    let (before, after) = (figure("rss_before")?, figure("rss_after")?);
    if after <= before {
        return Err(format!(
            "the server's RSS did not grow with {n} sessions ({before} B, then {after} B): no figure"
        )
        .into());
    }
    let per_session = (after - before) as f64 / n as f64;
    Ok(Record::new(Workload::Idle, imp, "bytes_per_session")
        .int("sessions", n)
        .int("rss_before", before)
        .int("rss_after", after)
        .float("bytes_per_session", per_session, 0))
}

/// Runs `cmd` with its stdout captured (stderr passed through), killing it
/// after `limit`; its stdout if it succeeded.
fn run_bounded(cmd: &mut Command, limit: Duration) -> CliResult<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout from the child")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the idle server did not finish within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("the idle server failed ({status})").into())
    }
}

/// The hidden `tether bench-idle-server`: serves, has the clients held,
/// prints `rss_before=… rss_after=…`.
pub fn idle_server(args: IdleServerArgs) -> ExitCode {
    raise_open_file_limit();
    match Ctx::new(1).and_then(|ctx| measure(&ctx, args.implementation, args.sessions)) {
        Ok((before, after)) => {
            println!("rss_before={before} rss_after={after}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether: bench-idle-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// In the server process: RSS before the clients connect and once they idle.
fn measure(ctx: &Ctx, imp: Impl, n: u64) -> CliResult<(u64, u64)> {
    let exe = std::env::current_exe()?;
    with_server(ctx, Workload::Idle, imp, |addr| {
        let before = quiet_rss()?;
        let mut child = Command::new(&exe)
            .arg("bench-hold-clients")
            .arg(imp.name())
            .arg(addr.to_string())
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout from the child")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let ready = match rx.recv_timeout(READY_LIMIT) {
            Ok(Ok(line)) if line.trim() == "ready" => Ok(()),
            // its output ended: it failed (its error is on stderr, above)
            Ok(Ok(line)) if line.is_empty() => Err(format!(
                "the client holder ended without holding its clients ({})",
                exit_within(&mut child, Duration::from_secs(5))
            )),
            Ok(Ok(line)) => Err(format!("the client holder said {:?}", line.trim())),
            Ok(Err(e)) => Err(format!("the client holder's output: {e}")),
            Err(_) => Err(format!(
                "the client holder was not ready within {READY_LIMIT:?}"
            )),
        };
        let after = ready.map_err(Into::into).and_then(|()| {
            std::thread::sleep(SETTLE);
            // As for the first reading: what the sessions hold, not what
            // the allocator keeps cached of what they gave back.
            trim_heap();
            rss_bytes()
        });
        // closing its stdin tells the child to let go
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((before, after?))
    })
}

/// How `child` exited, waiting up to `limit` (then killing it).
fn exit_within(child: &mut std::process::Child, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "still running: killed".to_string();
            }
        }
    }
}

/// The hidden `tether bench-hold-clients`: opens the clients, says `ready`,
/// holds them until stdin closes.
pub fn hold_clients(args: HoldArgs) -> ExitCode {
    raise_open_file_limit();
    let held = current_thread().and_then(|rt| {
        let conns = rt.block_on(bounded("connecting the idle clients", async {
            let p = payload(64);
            let mut conns = Vec::with_capacity(args.sessions as usize);
            for _ in 0..args.sessions {
                let mut c = Conn::connect(args.implementation, args.addr, None).await?;
                c.echo(&p).await?;
                conns.push(c);
            }
            Ok(conns)
        }))?;
        Ok((rt, conns))
    });
    match held {
        Ok(held) => {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready").and_then(|()| out.flush());
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(held);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether: bench-hold-clients: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The RSS once it has stopped moving: free heap returned to the system,
/// then read every 100 ms until two readings agree within 64 KiB (at most
/// 3 s): the server's start-up is over.
fn quiet_rss() -> CliResult<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        trim_heap();
        let now = rss_bytes()?;
        if now.abs_diff(last) < 64 * 1024 || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// This process's resident set size in bytes, from /proc/self/status.
pub fn rss_bytes() -> CliResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_vm_rss(&status).ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Returns free heap pages to the system (glibc only; elsewhere nothing).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // has no preconditions and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft open-file limit to the hard one: W8 opens 10,000
/// sockets on each side. Failure is ignored (the workload then reports
/// the connect error).
pub fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct we
    // pass, which lives on this stack frame for the whole call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// This process's open-file limit (the soft one), if it can be read.
fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_open_file_limit.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then_some(lim.rlim_cur)
}

/// Files each W8 process needs beside its `n` sockets: the runtime's,
/// stdio, the listener, the pipes to its children, and room to spare.
const FILES_BESIDE_SOCKETS: u64 = 256;

/// Fails at once, naming the limit, when the server and client processes
/// cannot each hold `n` sockets: they inherit this process's (already
/// raised) limit, and would otherwise fail a connection at a time.
fn check_open_file_limit(n: u64) -> CliResult<()> {
    let need = n + FILES_BESIDE_SOCKETS;
    match open_file_limit() {
        Some(limit) if limit < need => Err(format!(
            "idle holds {n} sessions, and each of its processes needs {need} open files, \
             but the limit is {limit}: raise it (`ulimit -n {need}`)"
        )
        .into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\ttether\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_bytes().unwrap() > 0);
    }
}
