//! `tether serve mount` and the demo's mount section: the telescope mount
//! simulator, spoken to through a pair of one-way sockets.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use tether::pair::{PairConfig, TextPair};
use tether::sim::mount::{reason, Axis, Command, MountSimulator, Reply};
use tether::transport::Endpoint;

use crate::CliResult;

/// `tether serve mount --listen ENDPOINT --connect ENDPOINT`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Where the simulator listens for the peer's command connection.
    #[arg(long, default_value = "tcp://127.0.0.1:0")]
    listen: Endpoint,
    /// The peer's listening endpoint: the simulator connects there (retrying
    /// until it answers) and writes its replies on that connection.
    #[arg(long)]
    connect: Endpoint,
}

/// Serves peers one after the other until SIGINT/SIGTERM.
pub async fn serve(args: MountArgs) -> CliResult {
    let pair = Arc::new(MountSimulator::bind(&args.listen, args.connect).await?);
    let stop = crate::interrupted()?;
    // The contract's first line, flushed at once (on stderr when stdin and
    // stdout are the protocol, as `serve lines` does).
    let line = format!("listening on {}", pair.display_address());
    if pair.local_endpoint() == Endpoint::Stdio {
        eprintln!("{line}");
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let sim = MountSimulator::serve(pair);
    stop.await;
    sim.close().await;
    Ok(())
}

/// How long the demo waits for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The commands' `source`; another source plays a second user.
const DEMO_SOURCE: i64 = 1;

/// Fails the section with a message.
macro_rules! expect {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// A client pair and the commands' sequence numbers.
struct Client {
    pair: TextPair,
    seq: AtomicU64,
}

impl Client {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn send(&self, cmd: &Command) -> CliResult {
        Ok(self.pair.write_text(&cmd.encode()).await?)
    }

    async fn reply(&self) -> Result<Reply, Box<dyn std::error::Error + Send + Sync>> {
        let text = tokio::time::timeout(REPLY_TIMEOUT, self.pair.read_text())
            .await
            .map_err(|_| format!("no reply within {REPLY_TIMEOUT:?}"))??;
        Ok(Reply::parse(&text)?)
    }

    /// Sends a command and returns its replies up to the final one (Done or NoAck).
    async fn run(
        &self,
        cmd: &Command,
    ) -> Result<Vec<Reply>, Box<dyn std::error::Error + Send + Sync>> {
        self.send(cmd).await?;
        let mut replies = Vec::new();
        loop {
            let reply = self.reply().await?;
            let last = reply.seq() == cmd.seq && !matches!(reply, Reply::Ack { .. });
            replies.push(reply);
            if last {
                return Ok(replies);
            }
        }
    }
}

fn short(reply: &Reply) -> String {
    match reply {
        Reply::Ack { seq, timeout_ms } => format!("Ack {seq} ({timeout_ms} ms)"),
        Reply::NoAck { seq, reason } => format!("NoAck {seq} {reason}"),
        Reply::Done { seq, extra } if extra.is_empty() => format!("Done {seq}"),
        Reply::Done { seq, extra } => format!("Done {seq} [{}]", extra.join(" ")),
    }
}

fn shorts(replies: &[Reply]) -> String {
    replies.iter().map(short).collect::<Vec<_>>().join(", ")
}

/// The demo's section: drives the mount simulator through a pair on loopback
/// and prints what happened in a few lines. Fails if the simulator does not
/// answer as the protocol says.
pub async fn demo_section() -> CliResult {
    let any_port: Endpoint = "tcp://127.0.0.1:0".parse()?;
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let config = PairConfig::default().on_connect(move |up| {
        if let Ok(mut seen) = seen.lock() {
            seen.push(up);
        }
    });
    let pair = TextPair::text(&any_port, config, "\r\n").await?;
    let sim = MountSimulator::spawn(&any_port, pair.local_endpoint()).await?;
    println!(
        "mount simulator over a pair of one-way sockets: it listens on {}, we listen on {}",
        sim.display_address(),
        pair.display_address()
    );
    pair.connect_to(&sim.local_endpoint()).await?;
    let c = Client {
        pair,
        seq: AtomicU64::new(0),
    };

    let mut setup = Vec::new();
    for cmd in [
        Command::take_control(c.next_seq(), DEMO_SOURCE),
        Command::enable(c.next_seq(), DEMO_SOURCE, Axis::Az),
        Command::enable(c.next_seq(), DEMO_SOURCE, Axis::El),
    ] {
        let replies = c.run(&cmd).await?;
        expect!(
            matches!(replies.last(), Some(Reply::Done { .. })),
            "setup refused: {replies:?}"
        );
        setup.push(shorts(&replies));
    }
    println!("  take control, enable az and el: {}", setup.join(" | "));

    let t0 = Instant::now();
    let replies = c
        .run(&Command::move_to(c.next_seq(), DEMO_SOURCE, Axis::El, 1.5))
        .await?;
    println!(
        "  MOVE el 1.5° at 10°/s: {} after {:.0?}",
        shorts(&replies),
        t0.elapsed()
    );
    expect!(
        matches!(replies.last(), Some(Reply::Done { .. })),
        "the move should end with Done"
    );

    let long = Command::move_to(c.next_seq(), DEMO_SOURCE, Axis::Az, 90.0);
    c.send(&long).await?;
    let first = c.reply().await?;
    let replies = c
        .run(&Command::stop(c.next_seq(), DEMO_SOURCE, Axis::Az))
        .await?;
    println!(
        "  MOVE az 90° → {}; then STOP az → {}",
        short(&first),
        shorts(&replies)
    );
    expect!(
        replies.first() == Some(&Reply::no_ack(long.seq, reason::SUPERSEDED)),
        "STOP should supersede the move: {replies:?}"
    );

    let status = c.run(&Command::status(c.next_seq(), DEMO_SOURCE)).await?;
    let intruder = c
        .run(&Command::status(c.next_seq(), DEMO_SOURCE + 1))
        .await?;
    let unknown = c.run(&Command::new(c.next_seq(), 99, DEMO_SOURCE)).await?;
    c.pair.write_text("garbage").await?;
    let garbage = c.reply().await?;
    println!(
        "  STATUS → {} | from another source → {} | code 99 → {} | \"garbage\" → {}",
        shorts(&status),
        shorts(&intruder),
        shorts(&unknown),
        short(&garbage)
    );
    expect!(
        garbage == Reply::no_ack(0, reason::MALFORMED),
        "garbage should be malformed"
    );

    c.pair.disconnect();
    c.pair.connect().await?;
    let again = c.run(&Command::status(c.next_seq(), DEMO_SOURCE)).await?;
    let seen = changes.lock().map(|s| s.clone()).unwrap_or_default();
    println!(
        "  dropped the link and connected again: STATUS → {} (connect callback saw {seen:?})",
        shorts(&again)
    );
    expect!(
        seen == [true, false, true],
        "the callback should see each change once: {seen:?}"
    );

    c.pair.close().await;
    sim.close().await;
    Ok(())
}
