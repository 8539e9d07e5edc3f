//! `tether`: demo, serve, call and bench from the command line.
//!
//! The command-line contract (forms, first output line of `serve`, exit
//! statuses) is fixed by DESIGN.md; scripts outside the project rely on it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod call;
mod demo;
mod mount_cmd;
mod packet_cmd;
mod serve;
mod tls_args;

#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "Long-lived conversations with devices and services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start an embedded server on loopback and show every layer at work.
    Demo,
    /// Run a service until interrupted (prints `listening on HOST:PORT` first).
    #[command(subcommand)]
    Serve(serve::Service),
    /// Send each line of stdin (or each argument after `--`) as a request and print the replies.
    Call(call::CallArgs),
    /// Run the workloads of BENCHMARKS.md beside the std-blocking and tokio-framed baselines.
    Bench(bench::BenchArgs),
    /// (internal) Hold idle clients for the bench's idle workload.
    #[command(name = "bench-hold-clients", hide = true)]
    BenchHoldClients(bench::HoldArgs),
    /// (internal) Serve and measure the bench's idle workload in a fresh process.
    #[command(name = "bench-idle-server", hide = true)]
    BenchIdleServer(bench::IdleServerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo provokes errors on purpose; its own lines say what happened.
    let default_level = if matches!(cli.command, Command::Demo) {
        "error"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    // The bench builds its own runtimes (server and client apart).
    let command = match cli.command {
        Command::Bench(args) => return bench::run(args),
        Command::BenchHoldClients(args) => return bench::hold_clients(args),
        Command::BenchIdleServer(args) => return bench::idle_server(args),
        other => other,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match command {
            Command::Demo => demo::run().await,
            Command::Serve(service) => serve::run(service).await,
            Command::Call(args) => call::run(args).await,
            Command::Bench(_) | Command::BenchHoldClients(_) | Command::BenchIdleServer(_) => {
                unreachable!("handled above")
            }
        }
    });
    // Not a plain drop: that waits for tokio's blocking stdin read, which
    // cannot be cancelled, so a `stdio:` server whose parent keeps stdin
    // open would never exit after SIGTERM.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every command returns: a one-line reason on failure.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A future that resolves on SIGINT or SIGTERM. The handlers are
/// registered when this is called, not when the future is first polled:
/// servers call it before they print `listening on`, so a peer that signals
/// as soon as it reads that line stops them in order rather than by the
/// signal's default action.
pub fn interrupted() -> CliResult<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
