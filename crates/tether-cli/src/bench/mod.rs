//! `tether bench`: the workloads of BENCHMARKS.md (W1–W8), tether's stacks
//! beside two baselines measured in the same run.
//!
//! Implementations (`impl=` in the output):
//!
//! | impl | what | workloads |
//! |---|---|---|
//! | `std-blocking` | baseline: blocking `std::net`, a thread per connection, 4-byte big-endian length prefix | rtt, connect-per-request, bulk |
//! | `tokio-framed` | baseline: tokio + tokio-util `LengthDelimitedCodec` (over tokio-rustls for tls) | all |
//! | `tether-sentinel` | async `session` over `SentinelCodec` (`\n`; payloads are printable bytes) | rtt, connect-per-request, fan-in, bulk, tls, idle |
//! | `tether-length` | async `session` over `LengthCodec` | rtt, connect-per-request, fan-in, bulk, tls, idle |
//! | `tether-blocking` | the blocking API on both ends (`LengthCodec`): `blocking::Session` against `blocking::Server`, a thread per connection | rtt, connect-per-request, bulk |
//! | `tether-packet` | the packet layer: tagged, multiplexed (`submit`) | all |
//! | `tether-pipeline` | the packet layer through a `Pipeline`: responses in completion order from one queue | pipelined |
//!
//! Left out on purpose: std-blocking where it would need a thread per
//! request in flight or per idle session (pipelined, fan-in, push, idle: 10,000
//! threads measure the kernel, not a protocol); the sessions where a
//! workload needs tags (pipelined) or server push.
//!
//! **Runtimes.** By default the server and the client run in one process
//! (`procs=1`) on two separate current-thread tokio runtimes, each on its
//! own thread: on a two-core machine that gives each side one core, with
//! no work stealing between threads to blur the figures, and the same
//! shape for every async implementation, baseline or tether. Async clients
//! run as a task of the client runtime, as an application's code does, not
//! in `block_on` (where each wake-up from another task costs tokio an extra
//! `epoll_wait`). Blocking clients run on the main thread; the blocking
//! servers (std-blocking, tether-blocking) use a thread per connection, as
//! such servers do, and no runtime. Each workload starts its servers and
//! stops them when done.
//!
//! **Two processes** (`procs=2`, as BENCHMARKS.md prefers): `tether bench
//! --serve ADDR` runs the same servers on the same kind of runtime, all at
//! once and for as long as it runs, and `tether bench --target ADDR
//! [WORKLOAD…]` runs the same clients against them and prints the same
//! lines and ratios. ADDR itself serves a listing of the servers (each
//! server on one of the 13 ports above ADDR in a fixed order, or on free
//! ports when ADDR's port is 0) and of the CA the TLS servers' certificate
//! is signed by, so the client needs nothing but ADDR ([`served`]). A
//! push server knows no count in advance, in either mode: each push client
//! sends the count it wants first (8 bytes, big-endian), so procs=1 and
//! procs=2 measure the same exchange. `--serve` stops on SIGINT or SIGTERM,
//! not on stdin closing (a server started with `&` has /dev/null there).
//! A `--target` that does not answer, or answers something other than a
//! listing, is an error within 5 s.
//!
//! W8 measures in a fresh server process (hidden `bench-idle-server`, the
//! same two runtimes) and keeps its idle clients in a third (hidden
//! `bench-hold-clients`), so that 10,000 sockets on each side stay under
//! the open-file limit and only the server's sessions are in the measured
//! RSS. With `--target` it still does so locally (a `note:` line says so,
//! and its lines say `procs=1`): it needs a fresh server process of its
//! own, which a long-running `--serve` is not.
//!
//! Layout: [`rig`] (runtimes, where the servers are, servers' lifetimes,
//! counts), [`baselines`] and [`stacks`] (the servers of each
//! implementation), [`conn`] (one client connection of any
//! implementation, and starting any server), [`workloads`] (W1–W7),
//! [`idle`] (W8), [`served`] and [`serve`] (the two-process mode: what
//! both sides agree on, and `--serve`), [`report`] (lines, ratios, JSON),
//! [`plot`] (the SVG chart).

mod baselines;
mod conn;
mod idle;
mod plot;
mod report;
mod rig;
mod serve;
mod served;
mod stacks;
mod workloads;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

pub use idle::{hold_clients, idle_server, HoldArgs, IdleServerArgs};
use report::Record;
use rig::Ctx;
use served::Target;

use crate::CliResult;

/// Arguments of `tether bench`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Two processes (procs=2), server and client apart:
  tether bench --serve 127.0.0.1:7000          # in one terminal: the servers, until Ctrl-C
  tether bench --target 127.0.0.1:7000 --quick # in another: the clients, the same lines and ratios
--serve listens at ADDR for the client (a listing of its servers) and starts the servers
at the next 13 ports up (port 0: free ports; the listing line it prints says where).")]
pub struct BenchArgs {
    /// Workloads to run, by name or id (w1..w8); none runs them all.
    #[arg(value_enum, value_name = "WORKLOAD")]
    workloads: Vec<Workload>,
    /// Divide every count by 10 (a smoke run of a few seconds).
    #[arg(long)]
    quick: bool,
    /// Write every result and ratio to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG bar chart of the tether/baseline ratios to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Run each workload N times, the implementations taking turns (every other round in reverse order), and report each one's median run (by its headline figure); each ratio is then the median of the ratios of the rounds both sides ran, shown with their spread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    runs: u32,
    /// Start every implementation's server (ADDR itself: the listing; the
    /// servers: the ports above it) and serve until SIGINT or SIGTERM, for
    /// `--target ADDR` in another process.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["target", "workloads", "quick", "json", "plot", "runs", "scale"])]
    serve: Option<SocketAddr>,
    /// Measure against the servers of `tether bench --serve ADDR` in another
    /// process (procs=2); idle still runs locally.
    #[arg(long, value_name = "ADDR")]
    target: Option<SocketAddr>,
    /// Divide every count by this too (tests use it to run in seconds).
    #[arg(long, hide = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    scale: u64,
}

/// A workload of BENCHMARKS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Workload {
    /// W1: sequential 64-byte echoes on one session.
    #[value(alias = "w1")]
    Rtt,
    /// W2: a new connection per request.
    #[value(name = "connect-per-request", alias = "w2", alias = "connect")]
    Connect,
    /// W3: 64 requests in flight on one connection.
    #[value(alias = "w3")]
    Pipelined,
    /// W4: 64 concurrent sequential sessions.
    #[value(name = "fan-in", alias = "w4", alias = "fanin")]
    Fanin,
    /// W5: 1 MiB echoes.
    #[value(alias = "w5")]
    Bulk,
    /// W6: the server pushes to 16 clients.
    #[value(alias = "w6")]
    Push,
    /// W7: W1 and W2 over TLS 1.3.
    #[value(alias = "w7")]
    Tls,
    /// W8: server memory per idle session.
    #[value(alias = "w8")]
    Idle,
}

impl Workload {
    /// Every workload, in BENCHMARKS.md order.
    pub const ALL: [Workload; 8] = [
        Workload::Rtt,
        Workload::Connect,
        Workload::Pipelined,
        Workload::Fanin,
        Workload::Bulk,
        Workload::Push,
        Workload::Tls,
        Workload::Idle,
    ];

    /// The name in `workload=` and on the command line: BENCHMARKS.md's.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::Connect => "connect-per-request",
            Workload::Pipelined => "pipelined",
            Workload::Fanin => "fan-in",
            Workload::Bulk => "bulk",
            Workload::Push => "push",
            Workload::Tls => "tls",
            Workload::Idle => "idle",
        }
    }

    /// The implementations this workload measures, baselines first.
    pub fn impls(self) -> &'static [Impl] {
        use Impl::*;
        match self {
            Workload::Rtt | Workload::Connect | Workload::Bulk => &[
                StdBlocking,
                TokioFramed,
                TetherSentinel,
                TetherLength,
                TetherBlocking,
                TetherPacket,
            ],
            Workload::Pipelined => &[TokioFramed, TetherPacket, TetherPipeline],
            Workload::Push => &[TokioFramed, TetherPacket],
            Workload::Fanin | Workload::Idle => {
                &[TokioFramed, TetherSentinel, TetherLength, TetherPacket]
            }
            Workload::Tls => &[TokioFramed, TetherSentinel, TetherLength, TetherPacket],
        }
    }
}

/// An implementation measured by the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Impl {
    /// Baseline: blocking std::net, thread per connection, 4-byte prefix.
    StdBlocking,
    /// Baseline: tokio-util's LengthDelimitedCodec.
    TokioFramed,
    /// tether's async session over the `\n` sentinel codec.
    TetherSentinel,
    /// tether's async session over the length-prefix codec.
    TetherLength,
    /// tether's blocking session API (length prefix).
    TetherBlocking,
    /// tether's packet layer.
    TetherPacket,
    /// tether's packet layer through a `Pipeline` (W3 only): responses in
    /// completion order from one queue, no future per request.
    TetherPipeline,
}

impl Impl {
    /// The name in `impl=`.
    pub fn name(self) -> &'static str {
        match self {
            Impl::StdBlocking => "std-blocking",
            Impl::TokioFramed => "tokio-framed",
            Impl::TetherSentinel => "tether-sentinel",
            Impl::TetherLength => "tether-length",
            Impl::TetherBlocking => "tether-blocking",
            Impl::TetherPacket => "tether-packet",
            Impl::TetherPipeline => "tether-pipeline",
        }
    }

    /// A baseline rather than one of tether's stacks.
    pub fn is_baseline(self) -> bool {
        matches!(self, Impl::StdBlocking | Impl::TokioFramed)
    }

    /// The client side is blocking (runs on the main thread, no runtime).
    pub fn is_blocking(self) -> bool {
        matches!(self, Impl::StdBlocking | Impl::TetherBlocking)
    }
}

/// Runs `tether bench`. Outside any tokio runtime: the bench builds its own.
pub fn run(args: BenchArgs) -> ExitCode {
    let outcome = match args.serve {
        Some(at) => serve::serve(at).map(|()| true),
        None => run_inner(args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An output file (`--json`, `--plot`), written only once the run is over:
/// its directory is tried at once, with a file beside the target, so that a
/// bad path fails before minutes of measuring; the target itself is
/// replaced at the end, so a run that fails or is interrupted leaves an
/// earlier file as it was.
struct Output {
    flag: &'static str,
    path: PathBuf,
    partial: PathBuf,
    file: Option<std::fs::File>,
}

impl Output {
    fn create(flag: &'static str, path: &Path) -> CliResult<Output> {
        let Some(file_name) = path.file_name().filter(|_| !path.is_dir()) else {
            return Err(format!("cannot write {flag} {}: not a file name", path.display()).into());
        };
        let mut name = file_name.to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot write {flag} {}: {e}", path.display()))?;
        Ok(Output {
            flag,
            path: path.to_path_buf(),
            partial,
            file: Some(file),
        })
    }

    /// Writes `bytes`, then puts the file in place.
    fn finish(mut self, bytes: &[u8]) -> CliResult<()> {
        let failed =
            |e: std::io::Error| format!("cannot write {} {}: {e}", self.flag, self.path.display());
        let mut file = self.file.take().expect("finished once");
        file.write_all(bytes).map_err(failed)?;
        drop(file);
        std::fs::rename(&self.partial, &self.path).map_err(failed)?;
        Ok(())
    }
}

impl Drop for Output {
    /// Removes the partial file: the run failed, or `finish` did (after a
    /// rename there is nothing left to remove).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Returns whether every workload succeeded.
fn run_inner(args: BenchArgs) -> CliResult<bool> {
    if let (Some(json), Some(plot)) = (&args.json, &args.plot) {
        // (as written or through another path to the same place)
        if json == plot || std::path::absolute(json).ok() == std::path::absolute(plot).ok() {
            return Err("--json and --plot name the same file".into());
        }
    }
    let json_file = args
        .json
        .as_deref()
        .map(|p| Output::create("--json", p))
        .transpose()?;
    let plot_file = args
        .plot
        .as_deref()
        .map(|p| Output::create("--plot", p))
        .transpose()?;
    let mut workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    // BENCHMARKS.md order, so that connect can quote rtt's figure.
    workloads.sort();
    workloads.dedup();
    let divisor = if args.quick { 10 } else { 1 } * args.scale;
    let runs = args.runs as usize;
    idle::raise_open_file_limit();
    let ctx = match args.target {
        Some(at) => Ctx::targeting(divisor, Target::fetch(at)?)?,
        None => Ctx::new(divisor)?,
    };

    let steps: usize = workloads.iter().map(|w| w.impls().len() * runs).sum();
    let bar = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut records: Vec<Record> = Vec::new();
    // each round's results so far, of every workload: connect quotes the
    // rtt of its own round, side by side in time
    let mut by_round: Vec<Vec<Record>> = vec![Vec::new(); runs];
    let mut all_ok = true;
    for &w in &workloads {
        let procs = procs_of(&ctx, w);
        if procs != ctx.procs() {
            bar.suspend(|| {
                println!(
                    "note: workload={} runs in local processes as without --target, so its lines say procs={procs}",
                    w.name()
                )
            });
        }
        // Round-robin over the implementations, round after round, so that
        // a change of pace of a shared machine mid-workload (it happens, by
        // four times or more) falls on every implementation alike rather
        // than on the ones that happened to run then; every other round in
        // the reverse order, so that a steady drift within a round does too.
        // The ratios pair the runs of each round (see `report`).
        let impls = w.impls();
        let mut results: Vec<Vec<Option<Record>>> = vec![Vec::new(); impls.len()];
        for (round, this_round) in by_round.iter_mut().enumerate() {
            let mut order: Vec<usize> = (0..impls.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let imp = impls[i];
                bar.set_message(format!("{} {}", w.name(), imp.name()));
                let result = workloads::run(&ctx, w, imp, this_round);
                if let Err(e) = &result {
                    all_ok = false;
                    bar.suspend(|| {
                        eprintln!("tether: bench {} {} failed: {e}", w.name(), imp.name())
                    });
                }
                if let Ok(r) = &result {
                    this_round.push(r.clone());
                }
                results[i].push(result.ok());
                bar.inc(1);
            }
        }
        for rounds in results {
            if let Some(r) = report::summarize(rounds).map(|r| r.with_procs(procs)) {
                bar.suspend(|| {
                    println!("{}", r.line());
                    let _ = std::io::stdout().flush();
                });
                records.push(r);
            }
        }
    }
    bar.finish_and_clear();
    let procs = ctx.procs();
    drop(ctx);
    println!();
    let ratios = report::ratios(&records);
    print!("{}", report::ratio_table(&ratios));
    if let Some(out) = json_file {
        let doc = report::to_json(&records, &ratios, divisor, runs, procs);
        let mut text = serde_json::to_string_pretty(&doc)?;
        text.push('\n');
        out.finish(text.as_bytes())?;
    }
    if let Some(out) = plot_file {
        out.finish(plot::svg(&ratios).as_bytes())?;
    }
    Ok(all_ok)
}

/// The `procs=` of `w`'s results: idle measures in fresh local processes
/// of its own whatever the servers are, and says 1 as it always has.
fn procs_of(ctx: &Ctx, w: Workload) -> u8 {
    if w == Workload::Idle {
        1
    } else {
        ctx.procs()
    }
}
