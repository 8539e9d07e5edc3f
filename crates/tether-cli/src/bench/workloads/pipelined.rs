//! W3 pipelined: one connection, 64 requests in flight, 200,000 64-byte
//! echoes. tether-packet keeps 64 tagged requests outstanding with
//! `submit`, a future per request awaited in the order sent, the shape of
//! the baseline's pipeline; tether-pipeline takes the responses in
//! completion order through a `Pipeline` (one queue of responses). The
//! tokio-framed baseline, which has no tags, is an in-order pipeline
//! keeping 64 outstanding: it takes every reply already buffered, then
//! refills the window in one write. (Futures taken in completion order
//! through a `FuturesUnordered` cost half as many instructions again per
//! request, most of it the `FuturesUnordered`: `Pipeline` is tether's
//! answer for that shape.)

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tether::packet::NoHandler;

use super::with_server;
use crate::bench::baselines::framed_connect;
use crate::bench::conn::packet_connect;
use crate::bench::report::Record;
use crate::bench::rig::{payload, per_sec, Ctx};
use crate::bench::{Impl, Workload};
use crate::CliResult;

/// Requests in flight at once.
pub const IN_FLIGHT: usize = 64;

/// Runs W3 for `imp` (tokio-framed or tether-packet).
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let n = ctx.count(200_000);
    let elapsed = with_server(ctx, Workload::Pipelined, imp, |addr| {
        ctx.run(async move {
            match imp {
                Impl::TokioFramed => framed(addr, n).await,
                Impl::TetherPacket => packet(addr, n).await,
                Impl::TetherPipeline => pipeline(addr, n).await,
                _ => Err(format!("{} has no pipelined client", imp.name()).into()),
            }
        })
    })?;
    Ok(Record::new(Workload::Pipelined, imp, "req_s")
        .int("requests", n)
        .int("in_flight", IN_FLIGHT as u64)
        .float("req_s", per_sec(n, elapsed), 0))
}

async fn packet(addr: std::net::SocketAddr, n: u64) -> CliResult<std::time::Duration> {
    let c = packet_connect(addr, None, NoHandler).await?;
    let p = payload(64);
    let start = Instant::now();
    let mut inflight = VecDeque::with_capacity(IN_FLIGHT);
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && inflight.len() < IN_FLIGHT {
            inflight.push_back(c.submit(0, 0, p.clone()));
            sent += 1;
        }
        match inflight.pop_front() {
            Some(response) => {
                if response.await?.payload.len() != p.len() {
                    return Err("a pipelined echo came back wrong".into());
                }
                done += 1;
            }
            None => return Err("the pipeline ran dry".into()),
        }
    }
    let elapsed = start.elapsed();
    c.close().await?;
    Ok(elapsed)
}

async fn pipeline(addr: std::net::SocketAddr, n: u64) -> CliResult<std::time::Duration> {
    let c = packet_connect(addr, None, NoHandler).await?;
    let p = payload(64);
    let mut pipe = c.pipeline();
    let start = Instant::now();
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && pipe.in_flight() < IN_FLIGHT {
            pipe.submit(0, 0, p.clone()).await?;
            sent += 1;
        }
        match pipe.next().await {
            Some((_tag, r)) => {
                if r?.payload.len() != p.len() {
                    return Err("a pipelined echo came back wrong".into());
                }
                done += 1;
            }
            None => return Err("the pipeline ran dry".into()),
        }
    }
    let elapsed = start.elapsed();
    drop(pipe);
    c.close().await?;
    Ok(elapsed)
}

async fn framed(addr: std::net::SocketAddr, n: u64) -> CliResult<std::time::Duration> {
    let mut f = framed_connect(addr).await?;
    let p = payload(64);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n.min(IN_FLIGHT as u64) {
        f.feed(p.clone()).await?;
        sent += 1;
    }
    SinkExt::<bytes::Bytes>::flush(&mut f).await?;
    let mut done = 0;
    while done < n {
        let mut got = match f.next().await {
            Some(r) => usize::from(r?.len() == p.len()),
            None => 0,
        };
        if got == 0 {
            return Err("a pipelined echo came back wrong".into());
        }
        // every reply already buffered, then one refill and one write
        while let Some(Some(r)) = f.next().now_or_never() {
            if r?.len() != p.len() {
                return Err("a pipelined echo came back wrong".into());
            }
            got += 1;
        }
        done += got as u64;
        for _ in 0..got {
            if sent < n {
                f.feed(p.clone()).await?;
                sent += 1;
            }
        }
        SinkExt::<bytes::Bytes>::flush(&mut f).await?;
    }
    Ok(start.elapsed())
}
