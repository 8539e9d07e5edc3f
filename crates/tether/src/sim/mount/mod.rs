//! A simulated telescope mount controller, spoken to through a
//! [`Pair`](crate::pair::Pair).
//!
//! The simulator reads commands on its listening side and writes replies
//! on the connection it opens to its peer, like the controllers the pair
//! was made for. Messages are text: fields separated by `\n`, each message
//! ending with `\r\n`.
//!
//! | command | code | parameters | replies |
//! |---|---|---|---|
//! | TAKE_CONTROL | 1 | — | Ack 0, Done; the sender's `source` becomes the commander |
//! | ENABLE | 10 | `az`\|`el` | Ack 0, Done |
//! | MOVE | 20 | `az`\|`el`, `position_deg` | Ack with the duration (10 °/s), Done when the move ends |
//! | STOP | 30 | `az`\|`el` | Ack 0, Done |
//! | STATUS | 40 | — | Ack 0, Done with the `az` and `el` positions |
//!
//! A command is `seq`, `code`, `source`, `timestamp`, then parameters.
//! Replies: `0` Ack (`seq`, `timeout_ms`), `1` NoAck (`seq`, `reason`), `2`
//! Done (`seq`, extra fields). A MOVE or STOP on an axis that is moving
//! supersedes the move: it gets NoAck `superseded` instead of its Done.
//! Refusals ([`reason`]): `not in control` (every command but TAKE_CONTROL
//! from a source that is not the commander), `unsupported command`,
//! `malformed` (seq 0 when the seq is unreadable), `axis disabled`.
//!
//! After its peer drops, the simulator waits for a peer again on the same
//! pair; the mount keeps its state (positions, enabled axes, commander).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tether::pair::PairError> {
//! use tether::pair::{Pair, PairConfig};
//! use tether::sim::mount::{Command, MountSimulator, Reply};
//!
//! let any_port = "tcp://127.0.0.1:0".parse()?;
//! let client = Pair::text(&any_port, PairConfig::default(), "\r\n").await?;
//! let mount = MountSimulator::spawn(&any_port, client.local_endpoint()).await?;
//! client.connect_to(&mount.local_endpoint()).await?;
//!
//! client.write_text(&Command::status(1, 42).encode()).await?;
//! let reply = Reply::parse(&client.read_text().await?).unwrap();
//! assert_eq!(reply, Reply::NoAck { seq: 1, reason: "not in control".into() });
//! mount.close().await;
//! # Ok(()) }
//! ```

mod core;
mod protocol;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use self::core::MountCore;
pub use protocol::{code, reason, Axis, Command, Reply, ReplyError, SPEED_DEG_PER_S};

use crate::framing::SentinelCodec;
use crate::pair::{PairConfig, PairError, TextPair};
use crate::transport::Endpoint;

/// The longest command the simulator reads: 64 KiB. Real commands are a
/// few dozen bytes; anything longer gets NoAck `malformed` (seq 0) without
/// being held in memory.
pub const MAX_COMMAND_LENGTH: usize = 64 * 1024;

/// Pause before trying again after `connect` failed for another reason
/// than its deadline (which already paces the retries).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A running mount simulator: a task that serves peers one after the other
/// on its own pair until [`close`](Self::close), or until it is dropped
/// (which stops the task; the pair closes with it unless the caller of
/// [`serve`](Self::serve) holds it too).
#[derive(Debug)]
pub struct MountSimulator {
    pair: Arc<TextPair>,
    // `None` once `close` took it
    task: Option<JoinHandle<()>>,
}

impl Drop for MountSimulator {
    fn drop(&mut self) {
        // the task holds the pair: left running, it would keep the port
        // and dial the peer for ever
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl MountSimulator {
    /// Listens on `listen` (port 0 picks a free port), and starts serving:
    /// connects to `peer` (retrying until it answers) and waits for it to
    /// connect back, then answers commands; after a drop, does it again.
    pub async fn spawn(listen: &Endpoint, peer: Endpoint) -> Result<Self, PairError> {
        Ok(Self::serve(Arc::new(Self::bind(listen, peer).await?)))
    }

    /// The simulator's pair, not yet serving: `\r\n`-terminated messages,
    /// commands at most [`MAX_COMMAND_LENGTH`] bytes.
    pub async fn bind(listen: &Endpoint, peer: Endpoint) -> Result<TextPair, PairError> {
        let codec = SentinelCodec::with_max_length(&b"\r\n"[..], MAX_COMMAND_LENGTH);
        TextPair::bind(
            listen,
            PairConfig::default().peer(peer),
            codec.clone(),
            codec,
        )
        .await
    }

    /// Starts serving on a pair made by the caller (whose peer is set);
    /// its messages must end in `\r\n`.
    pub fn serve(pair: Arc<TextPair>) -> Self {
        let task = tokio::spawn(run(Arc::clone(&pair), MountCore::new()));
        MountSimulator {
            pair,
            task: Some(task),
        }
    }

    /// Where the peer connects to (the simulator's server side).
    pub fn local_endpoint(&self) -> Endpoint {
        self.pair.local_endpoint()
    }

    /// `HOST:PORT` of the simulator's server side.
    pub fn display_address(&self) -> &str {
        self.pair.display_address()
    }

    /// The simulator's pair (to watch `connected`, for instance).
    pub fn pair(&self) -> &TextPair {
        &self.pair
    }

    /// Closes the pair (client socket, then listener) and stops serving.
    pub async fn close(mut self) {
        self.pair.close().await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Serves peers until the pair is closed.
pub async fn run(pair: Arc<TextPair>, mut mount: MountCore) {
    loop {
        let started = tokio::time::Instant::now();
        match pair.connect().await {
            Ok(()) => info!(local = %pair.display_address(), "mount: peer connected"),
            Err(PairError::Closed) => return,
            Err(e @ PairError::ConnectTimeout { .. }) => {
                debug!(error = %e, "mount: no peer yet");
                // a pair whose connect timeout is shorter than its retry
                // interval gives up without a pause: no hot loop
                tokio::time::sleep_until(started + RECONNECT_PAUSE).await;
                continue;
            }
            Err(PairError::NoPeer) => {
                warn!("mount: no peer endpoint; stopping");
                return;
            }
            // an endpoint that cannot work (TLS without a CA, …): no retry
            Err(e @ PairError::Transport(_)) => {
                warn!(error = %e, "mount: the peer cannot be reached this way; stopping");
                return;
            }
            Err(e) => {
                warn!(error = %e, "mount: connect failed");
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        }
        let why = serve_peer(&pair, &mut mount).await;
        mount.peer_lost();
        match why {
            PairError::Closed => return,
            e => info!(reason = %e, "mount: peer lost; waiting for a new one"),
        }
    }
}

/// Answers one peer's commands until the link goes down; returns why.
async fn serve_peer(pair: &TextPair, mount: &mut MountCore) -> PairError {
    loop {
        let deadline = mount.next_deadline();
        let replies = tokio::select! {
            frame = pair.read() => match frame {
                Ok(frame) => mount.handle(&frame, Instant::now()),
                Err(e) if e.connection_survives() => {
                    warn!(error = %e, "mount: unreadable command");
                    vec![mount.unreadable()]
                }
                Err(e) => return e,
            },
            () = sleep_until(deadline) => mount.poll(Instant::now()),
        };
        for reply in replies {
            debug!(?reply, "mount: reply");
            if let Err(e) = pair.write_text(&reply.encode()).await {
                return e;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
