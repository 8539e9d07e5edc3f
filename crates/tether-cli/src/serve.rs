//! `tether serve SERVICE`: run a simulator until SIGINT/SIGTERM (on
//! `stdio:`, or until stdin ends).

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use tether::framing::unescape;
use tether::sim::lines::LinesDevice;
use tether::transport::{Endpoint, Listener};

use crate::CliResult;

/// How long requests in progress may take to finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum Service {
    /// The line-protocol device simulator (*IDN?, ECHO, REV, SET, GET, SLEEP).
    Lines {
        /// Where to listen.
        #[arg(long, default_value = "tcp://127.0.0.1:0")]
        listen: Endpoint,
        /// The line terminator; escapes such as \r\n are understood.
        #[arg(long, default_value = r"\n")]
        sentinel: String,
        /// The longest line accepted, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_line: usize,
        #[command(flatten)]
        tls: crate::tls_args::ServeTls,
    },
    /// The telescope mount controller simulator, over a pair of one-way sockets.
    Mount(crate::mount_cmd::MountArgs),
    /// The packet protocol (cs.packetstream wire format): rq_type 0 echo,
    /// 1 reversed, 2 flags + 1, 3 failure, 4 sleep `payload` ms then echo.
    Packet {
        /// Where to listen.
        #[arg(long, default_value = "tcp://127.0.0.1:0")]
        listen: Endpoint,
        #[command(flatten)]
        tls: crate::tls_args::ServeTls,
    },
}

pub async fn run(service: Service) -> CliResult {
    match service {
        Service::Lines {
            listen,
            sentinel,
            max_line,
            tls,
        } => {
            let sentinel = unescape(&sentinel).map_err(|e| format!("--sentinel: {e}"))?;
            let listener = tls.bind(&listen).await?;
            let server = LinesDevice::new().serve_on(listener, &sentinel, max_line);
            let stop = crate::interrupted()?;
            announce(server.listener())?;
            server.run(stop, SHUTDOWN_GRACE).await;
            Ok(())
        }
        Service::Mount(args) => crate::mount_cmd::serve(args).await,
        Service::Packet { listen, tls } => crate::packet_cmd::serve(tls.bind(&listen).await?).await,
    }
}

/// Prints the contract's first line, `listening on HOST:PORT` (or the socket
/// path), and flushes it at once. On `stdio:` stdout is the protocol, so the
/// line goes to stderr.
pub fn announce(listener: &Listener) -> std::io::Result<()> {
    let line = format!("listening on {}", listener.display_address());
    if listener.local_endpoint() == Endpoint::Stdio {
        eprintln!("{line}");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
