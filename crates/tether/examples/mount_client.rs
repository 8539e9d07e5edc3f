//! Command a telescope mount over a pair of one-way sockets.
//!
//! ```sh
//! # The mount must know where to send its replies: our listening port.
//! tether serve mount --connect 127.0.0.1:5001     # prints: listening on 127.0.0.1:PORT
//! cargo run -p tether --example mount_client -- 127.0.0.1:PORT 127.0.0.1:5001
//! ```
//! With no argument, the example starts its own simulated mount.
//!
//! It takes control, enables both axes, moves, waits for Ack then Done
//! (each with a timeout), and shows a move superseded by a newer one.

use std::time::Duration;

use tether::pair::{PairConfig, TextPair};
use tether::sim::mount::{Axis, Command, MountSimulator, Reply};
use tether::transport::Endpoint;

type Error = Box<dyn std::error::Error>;

/// Our `source` field: who is commanding.
const SOURCE: i64 = 7;

/// How long to wait for an Ack: the mount answers every command at once.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Slack on top of the duration the Ack announces before giving up on Done.
const DONE_SLACK: Duration = Duration::from_secs(2);

/// The link to the mount and our next sequence number.
struct Mount {
    pair: TextPair,
    seq: u64,
}

impl Mount {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn send(&self, cmd: &Command) -> Result<(), Error> {
        Ok(self.pair.write_text(&cmd.encode()).await?)
    }

    async fn reply(&self, within: Duration) -> Result<Reply, Error> {
        let text = tokio::time::timeout(within, self.pair.read_text())
            .await
            .map_err(|_| format!("no reply within {within:?}"))??;
        Ok(Reply::parse(&text)?)
    }

    /// Waits for the Ack of `seq`; returns how long until its Done.
    async fn ack(&self, seq: u64) -> Result<Duration, Error> {
        match self.reply(ACK_TIMEOUT).await? {
            Reply::Ack { seq: s, timeout_ms } if s == seq => Ok(Duration::from_millis(timeout_ms)),
            other => Err(format!("command {seq}: expected Ack, got {other:?}").into()),
        }
    }

    /// Sends a command, waits for its Ack, then for its Done within the
    /// time the Ack announced.
    async fn command(&mut self, cmd: Command) -> Result<Vec<String>, Error> {
        self.send(&cmd).await?;
        let expected = self.ack(cmd.seq).await?;
        match self.reply(expected + DONE_SLACK).await? {
            Reply::Done { seq, extra } if seq == cmd.seq => Ok(extra),
            other => Err(format!("command {}: expected Done, got {other:?}", cmd.seq).into()),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mount_at, listen): (Option<Endpoint>, Endpoint) = match args.as_slice() {
        [mount, listen] => (Some(mount.parse()?), listen.parse()?),
        [] => (None, "tcp://127.0.0.1:0".parse()?),
        _ => return Err("usage: mount_client [MOUNT_ENDPOINT OUR_LISTEN_ENDPOINT]".into()),
    };
    let config =
        PairConfig::default().on_connect(|up| println!("link {}", if up { "up" } else { "down" }));
    let pair = TextPair::text(&listen, config, "\r\n").await?;

    // Without arguments, a simulated mount that replies to our listening port.
    let mut _sim = None;
    let mount_at = match mount_at {
        Some(endpoint) => endpoint,
        None => {
            let sim =
                MountSimulator::spawn(&"tcp://127.0.0.1:0".parse()?, pair.local_endpoint()).await?;
            let endpoint = sim.local_endpoint();
            _sim = Some(sim);
            endpoint
        }
    };
    pair.connect_to(&mount_at).await?;
    let mut mount = Mount { pair, seq: 0 };

    let seq = mount.next_seq();
    mount.command(Command::take_control(seq, SOURCE)).await?;
    for axis in Axis::ALL {
        let seq = mount.next_seq();
        mount.command(Command::enable(seq, SOURCE, axis)).await?;
    }
    println!("in control, both axes enabled");

    let seq = mount.next_seq();
    mount
        .command(Command::move_to(seq, SOURCE, Axis::El, 2.0))
        .await?;
    println!("el at 2°");

    // A long move, replaced by a newer one before it ends.
    let first = Command::move_to(mount.next_seq(), SOURCE, Axis::Az, 45.0);
    mount.send(&first).await?;
    let first_takes = mount.ack(first.seq).await?;
    println!("az moving to 45°, {first_takes:?} to go");
    let second = Command::move_to(mount.next_seq(), SOURCE, Axis::Az, 0.5);
    mount.send(&second).await?;
    match mount.reply(ACK_TIMEOUT).await? {
        Reply::NoAck { seq, reason } if seq == first.seq => println!("move {seq}: {reason}"),
        other => return Err(format!("expected the first move superseded, got {other:?}").into()),
    }
    let second_takes = mount.ack(second.seq).await?;
    match mount.reply(second_takes + DONE_SLACK).await? {
        Reply::Done { seq, .. } if seq == second.seq => println!("az back at 0.5°"),
        other => return Err(format!("expected Done, got {other:?}").into()),
    }

    let seq = mount.next_seq();
    let positions = mount.command(Command::status(seq, SOURCE)).await?;
    println!("status: az {} el {}", positions[0], positions[1]);
    mount.pair.close().await;
    Ok(())
}
