//! W6 push: 16 clients connect; the server sends each 100,000 64-byte
//! messages. The figure is messages delivered per second, all clients
//! together, from the moment every client is connected to the last
//! message.
//!
//! - tokio-framed: raw one-way frames from server to client (`feed`, so
//!   writes are batched), the client counts frames.
//! - tether-packet: the wire has requests, not one-way sends, so the server
//!   uses `PacketConnection::push`: a request whose acknowledgement (an
//!   empty response from the client's handler) is read and discarded, many
//!   in flight, bounded by the connection's queue and pending limits.
//!
//! In every mode, in-process (`procs=1`) or against a `--serve` process
//! (`procs=2`), each client first sends the count it wants
//! ([`PushCount`]): a frame, or a request, of 8 bytes; the clock includes
//! that one asking message, so both modes measure the same exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;

use super::with_server;
use crate::bench::baselines::{framed_connect, FramedTcp};
use crate::bench::conn::packet_connect;
use crate::bench::report::Record;
use crate::bench::rig::{per_sec, Ctx, PushCount};
use crate::bench::stacks::PushCounter;
use crate::bench::{Impl, Workload};
use crate::CliResult;
use tether::packet::PacketConnection;

/// Connected clients.
pub const CLIENTS: u64 = 16;

/// Messages the server pushes to each client, before `--quick` and
/// `--scale`: also the most a client may ask a push server for.
pub const MESSAGES_PER_CLIENT: u64 = 100_000;

/// Runs W6 for `imp` (tokio-framed or tether-packet).
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let per_client = ctx.count(MESSAGES_PER_CLIENT);
    let elapsed = with_server(ctx, Workload::Push, imp, |addr| {
        ctx.run(clients(imp, addr, per_client))
    })?;
    let total = per_client * CLIENTS;
    Ok(Record::new(Workload::Push, imp, "msgs_s")
        .int("clients", CLIENTS)
        .int("messages_per_client", per_client)
        .float("msgs_s", per_sec(total, elapsed), 0))
}

/// Connects the clients, then starts the clock and has each ask for
/// `per_client` messages at once; the time until the last message arrived.
/// Connecting and closing are outside the clock, as in fan-in: the
/// tokio-framed client just drops its connection, tether's closes in
/// order (EOF both ways).
async fn clients(imp: Impl, addr: SocketAddr, per_client: u64) -> CliResult<Duration> {
    let mut connecting = JoinSet::new();
    for _ in 0..CLIENTS {
        connecting.spawn(PushClient::connect(imp, addr, per_client));
    }
    let mut connected = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        connected.push(joined??);
    }
    let start = Instant::now();
    let mut receiving = JoinSet::new();
    for client in connected {
        receiving.spawn(client.receive(per_client));
    }
    let mut last = start;
    let mut done = Vec::new();
    while let Some(joined) = receiving.join_next().await {
        let (at, client) = joined??;
        last = last.max(at);
        done.push(client);
    }
    for client in done {
        client.close().await?;
    }
    Ok(last - start)
}

/// One connected push client.
enum PushClient {
    Framed(FramedTcp),
    Packet(PacketConnection, PushCounter),
}

impl PushClient {
    /// Connects a client that will count `n` messages.
    async fn connect(imp: Impl, addr: SocketAddr, n: u64) -> CliResult<PushClient> {
        Ok(match imp {
            Impl::TokioFramed => PushClient::Framed(framed_connect(addr).await?),
            _ => {
                let counter = PushCounter::new(n);
                let conn = packet_connect(addr, None, counter.clone()).await?;
                PushClient::Packet(conn, counter)
            }
        })
    }

    /// Asks for `n` messages and takes them all; when the last came.
    async fn receive(mut self, n: u64) -> CliResult<(Instant, PushClient)> {
        match &mut self {
            PushClient::Framed(f) => {
                f.send(PushCount::encode(n)).await?;
                let mut got = 0;
                while got < n {
                    match f.next().await {
                        Some(frame) => {
                            frame?;
                            got += 1;
                        }
                        None => {
                            return Err(
                                format!("the server stopped pushing after {got} of {n}").into()
                            )
                        }
                    }
                }
            }
            PushClient::Packet(conn, counter) => {
                let answer = conn.submit(0, 0, PushCount::encode(n)).await?;
                if !answer.ok {
                    return Err("the push server refused the count".into());
                }
                tokio::select! {
                    _ = counter.finished() => {}
                    ended = conn.closed() => {
                        ended?;
                        if counter.got() < n {
                            let got = counter.got();
                            return Err(format!("the server stopped pushing after {got} of {n}").into());
                        }
                    }
                }
            }
        }
        Ok((Instant::now(), self))
    }

    async fn close(self) -> CliResult<()> {
        match self {
            PushClient::Framed(f) => drop(f),
            PushClient::Packet(conn, _) => conn.close().await?,
        }
        Ok(())
    }
}
