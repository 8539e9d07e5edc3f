//! W1 (sequential round trips) and W3 (64 in flight) of BENCHMARKS.md over
//! the packet layer, beside the `tokio-framed` baseline (tokio-util's
//! `LengthDelimitedCodec`, in-order pipeline) measured in the same run.
//!
//! The server and the client run on two single-threaded runtimes in one
//! process, over TCP on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p tether --example packet_bench [--quick]
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tether::packet::{EchoService, NoHandler, PacketConfig, PacketConnection};
use tether::transport::{self, Endpoint, Listener};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const PAYLOAD: usize = 64;
const IN_FLIGHT: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a server runtime on its own thread; returns its endpoint.
fn server<F, Fut>(serve: F) -> Endpoint
where
    F: FnOnce(tokio::sync::oneshot::Sender<Endpoint>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let (etx, erx) = tokio::sync::oneshot::channel();
            let fut = serve(etx);
            let forward = async {
                tx.send(erx.await.unwrap()).unwrap();
            };
            tokio::join!(fut, forward);
        })
    });
    rx.recv().unwrap()
}

fn packet_server() -> Endpoint {
    server(|etx| async move {
        let l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        etx.send(l.local_endpoint()).unwrap();
        tether::packet::serve(
            l,
            EchoService,
            PacketConfig::default(),
            std::future::pending::<()>(),
        )
        .await;
    })
}

fn framed_server() -> Endpoint {
    server(|etx| async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        etx.send(
            format!("tcp://{}", l.local_addr().unwrap())
                .parse()
                .unwrap(),
        )
        .unwrap();
        while let Ok((s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (sink, stream) = Framed::new(s, LengthDelimitedCodec::new()).split();
                // forward() feeds while frames are ready and flushes when not:
                // the usual hand-written echo, batching writes.
                let _ = stream.map(|r| r.map(|b| b.freeze())).forward(sink).await;
            });
        }
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn report_rtt(name: &str, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    println!(
        "workload=rtt impl={name} requests={} req_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.0} (server and client: two runtimes in one process)",
        lat.len(),
        lat.len() as f64 / total.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0)
    );
}

/// CPU time used so far by every thread of this process (server and
/// client), from /proc: a figure that other processes' load barely moves.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

thread_local! {
    static CPU_AT_START: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn start_cpu() {
    CPU_AT_START.with(|c| c.set(cpu_ns()));
}

fn cpu_ns_per_req(n: usize) -> f64 {
    (cpu_ns() - CPU_AT_START.with(|c| c.get())) as f64 / n as f64
}

fn report_pipelined(name: &str, n: usize, total: Duration) {
    println!(
        "workload=pipelined impl={name} requests={n} in_flight={IN_FLIGHT} req_s={:.0} cpu_ns_per_req={:.0} (both ends, two runtimes in one process)",
        n as f64 / total.as_secs_f64(),
        cpu_ns_per_req(n)
    );
}

async fn w1_packet(ep: &Endpoint, warm: usize, n: usize) {
    let c = PacketConnection::connect(
        ep,
        Duration::from_secs(5),
        NoHandler,
        PacketConfig::default(),
    )
    .await
    .unwrap();
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    for _ in 0..warm {
        c.submit(0, 0, payload.clone()).await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let r = c.submit(0, 0, payload.clone()).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(r.payload.len(), PAYLOAD);
    }
    report_rtt("tether-packet", lat, t0.elapsed());
    c.close().await.unwrap();
}

async fn w1_framed(ep: &Endpoint, warm: usize, n: usize) {
    let s = transport::connect(ep, Duration::from_secs(5))
        .await
        .unwrap();
    let mut f = Framed::new(s, LengthDelimitedCodec::new());
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    for _ in 0..warm {
        f.send(payload.clone()).await.unwrap();
        f.next().await.unwrap().unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f.send(payload.clone()).await.unwrap();
        let r = f.next().await.unwrap().unwrap();
        lat.push(t.elapsed());
        assert_eq!(r.len(), PAYLOAD);
    }
    report_rtt("tokio-framed", lat, t0.elapsed());
}

async fn w3_packet(ep: &Endpoint, n: usize) {
    let c = PacketConnection::connect(
        ep,
        Duration::from_secs(5),
        NoHandler,
        PacketConfig::default(),
    )
    .await
    .unwrap();
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    start_cpu();
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0;
    let mut done = 0;
    while done < n {
        while sent < n && inflight.len() < IN_FLIGHT {
            inflight.push(c.submit(0, 0, payload.clone()));
            sent += 1;
        }
        let r = inflight.next().await.unwrap().unwrap();
        debug_assert_eq!(r.payload.len(), PAYLOAD);
        done += 1;
    }
    report_pipelined("tether-packet", n, t0.elapsed());
    c.close().await.unwrap();
}

/// W3 with the futures awaited in submission order (a `VecDeque`): the
/// same in-order pipeline shape as the baseline, on the tagged protocol.
async fn w3_packet_in_order(ep: &Endpoint, n: usize) {
    let c = PacketConnection::connect(
        ep,
        Duration::from_secs(5),
        NoHandler,
        PacketConfig::default(),
    )
    .await
    .unwrap();
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    start_cpu();
    let t0 = Instant::now();
    let mut inflight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let mut sent = 0;
    while sent < n.min(IN_FLIGHT) {
        inflight.push_back(c.submit(0, 0, payload.clone()));
        sent += 1;
    }
    while let Some(f) = inflight.pop_front() {
        let r = f.await.unwrap();
        debug_assert_eq!(r.payload.len(), PAYLOAD);
        if sent < n {
            inflight.push_back(c.submit(0, 0, payload.clone()));
            sent += 1;
        }
    }
    report_pipelined("tether-packet-in-order", n, t0.elapsed());
    c.close().await.unwrap();
}

async fn w3_framed(ep: &Endpoint, n: usize) {
    let s = transport::connect(ep, Duration::from_secs(5))
        .await
        .unwrap();
    let mut f = Framed::new(s, LengthDelimitedCodec::new());
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    start_cpu();
    let t0 = Instant::now();
    let mut sent = 0;
    for _ in 0..IN_FLIGHT.min(n) {
        f.feed(payload.clone()).await.unwrap();
        sent += 1;
    }
    SinkExt::<Bytes>::flush(&mut f).await.unwrap();
    let mut done = 0;
    while done < n {
        let r = f.next().await.unwrap().unwrap();
        debug_assert_eq!(r.len(), PAYLOAD);
        done += 1;
        let mut refill = 1;
        // take every response already buffered, then refill in one write
        while let Some(Some(r)) = f.next().now_or_never() {
            debug_assert_eq!(r.unwrap().len(), PAYLOAD);
            done += 1;
            refill += 1;
        }
        for _ in 0..refill {
            if sent < n {
                f.feed(payload.clone()).await.unwrap();
                sent += 1;
            }
        }
        SinkExt::<Bytes>::flush(&mut f).await.unwrap();
    }
    report_pipelined("tokio-framed", n, t0.elapsed());
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (warm, w1, w3) = if quick {
        (100, 2_000, 20_000)
    } else {
        (1_000, 20_000, 200_000)
    };
    let packet = packet_server();
    let framed = framed_server();
    let rt = runtime();
    if std::env::args().any(|a| a == "--w1-only") {
        rt.block_on(async {
            for _ in 0..3 {
                w1_framed(&framed, warm, w1).await;
                w1_packet(&packet, warm, w1).await;
            }
        });
        return;
    }
    if std::env::args().any(|a| a == "--profile-w3-framed") {
        rt.block_on(w3_framed(&framed, 2_000_000));
        return;
    }
    if std::env::args().any(|a| a == "--profile-w3-in-order") {
        rt.block_on(w3_packet_in_order(&packet, 2_000_000));
        return;
    }
    if std::env::args().any(|a| a == "--profile-w3") {
        // for a profiler: the packet side of W3 alone, longer
        rt.block_on(w3_packet(&packet, 2_000_000));
        return;
    }
    rt.block_on(async {
        // alternate the implementations, several rounds, so that drift and
        // other processes' load hit all of them
        for _ in 0..2 {
            w1_framed(&framed, warm, w1).await;
            w1_packet(&packet, warm, w1).await;
        }
        for _ in 0..3 {
            w3_framed(&framed, w3).await;
            w3_packet(&packet, w3).await;
            w3_packet_in_order(&packet, w3).await;
        }
    });
}
