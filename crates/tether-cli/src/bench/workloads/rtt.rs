//! W1 rtt (sequential echoes on one session: latency percentiles) and W2
//! connect (a new connection per request), for every implementation. The
//! sequential loops are shared with W7, which runs them over TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether::transport::TlsClientConfig;

use super::with_server;
use crate::bench::conn::{BlockingConn, Conn};
use crate::bench::report::{percentile_us, Record};
use crate::bench::rig::{payload, per_sec, Ctx};
use crate::bench::{Impl, Workload};
use crate::CliResult;

/// Latencies of the measured requests, and the time they took in all.
pub type Latencies = (Vec<Duration>, Duration);

/// W1: 1,000 warm-up echoes, then 20,000 timed one by one.
pub fn rtt(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let (warm, n) = (ctx.count(1_000), ctx.count(20_000));
    let p = payload(64);
    let (lat, total) = with_server(ctx, Workload::Rtt, imp, |addr| {
        if imp.is_blocking() {
            sequential_blocking(imp, addr, &p, warm, n)
        } else {
            ctx.run(sequential(imp, addr, None, p.clone(), warm, n))
        }
    })?;
    Ok(latency_record(
        Record::new(Workload::Rtt, imp, "p50_us"),
        lat,
        total,
    ))
}

/// The figures of a sequential run: requests, req/s, p50 and p99 in µs.
pub fn latency_record(record: Record, mut lat: Vec<Duration>, total: Duration) -> Record {
    lat.sort_unstable();
    record
        .int("requests", lat.len() as u64)
        .float("req_s", per_sec(lat.len() as u64, total), 0)
        .float("p50_us", percentile_us(&lat, 0.50), 1)
        .float("p99_us", percentile_us(&lat, 0.99), 1)
}

/// Sequential echoes on one async connection.
pub async fn sequential(
    imp: Impl,
    addr: SocketAddr,
    tls: Option<TlsClientConfig>,
    p: Bytes,
    warm: u64,
    n: u64,
) -> CliResult<Latencies> {
    let mut c = Conn::connect(imp, addr, tls.as_ref()).await?;
    for _ in 0..warm {
        c.echo(&p).await?;
    }
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.echo(&p).await?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    c.close().await?;
    Ok((lat, total))
}

fn sequential_blocking(
    imp: Impl,
    addr: SocketAddr,
    p: &[u8],
    warm: u64,
    n: u64,
) -> CliResult<Latencies> {
    let mut c = BlockingConn::connect(imp, addr)?;
    for _ in 0..warm {
        c.echo(p)?;
    }
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.echo(p)?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    c.close()?;
    Ok((lat, total))
}

/// W2: 2,000 requests, each on a connection of its own (connect, echo,
/// close). Quotes W1/W2 (`rtt_over_connect`, by req/s) when rtt ran first
/// in the same round (`earlier`): the two side by side in time, as the
/// ratios are.
pub fn connect(ctx: &Ctx, imp: Impl, earlier: &[Record]) -> CliResult<Record> {
    let n = ctx.count(2_000);
    let p = payload(64);
    let total = with_server(ctx, Workload::Connect, imp, |addr| {
        if imp.is_blocking() {
            let start = Instant::now();
            for _ in 0..n {
                let mut c = BlockingConn::connect(imp, addr)?;
                c.echo(&p)?;
                c.close()?;
            }
            Ok(start.elapsed())
        } else {
            ctx.run(sessionless(imp, addr, None, p.clone(), n))
        }
    })?;
    let req_s = per_sec(n, total);
    let mut r = Record::new(Workload::Connect, imp, "req_s")
        .int("requests", n)
        .float("req_s", req_s, 0);
    let rtt = earlier
        .iter()
        .find(|e| e.workload == Workload::Rtt && e.implementation == imp)
        .and_then(|e| e.get("req_s"));
    if let Some(rtt) = rtt {
        r = r.float("rtt_over_connect", rtt / req_s, 2);
    }
    Ok(r)
}

/// `n` requests, each on a new async connection; the time they took.
pub async fn sessionless(
    imp: Impl,
    addr: SocketAddr,
    tls: Option<TlsClientConfig>,
    p: Bytes,
    n: u64,
) -> CliResult<Duration> {
    let start = Instant::now();
    for _ in 0..n {
        Conn::echo_once(imp, addr, tls.as_ref(), &p).await?;
    }
    Ok(start.elapsed())
}
