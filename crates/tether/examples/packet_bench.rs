//! W1 (sequential round trips), W3 (64 in flight) and W6 (push) of
//! BENCHMARKS.md over the packet layer, beside the `tokio-framed` baseline
//! (tokio-util's `LengthDelimitedCodec`) measured in the same run.
//!
//! The server and the client run on two single-threaded runtimes in one
//! process, over TCP on 127.0.0.1.
//!
//! W6: the server pushes 64-byte messages to 16 connected clients. The
//! baseline writes length-delimited frames that the clients read (one way,
//! nothing answered). The packet layer has no one-way message: each push
//! is a request that the client's handler acknowledges with an empty
//! response, which the server reads and discards.
//!
//! ```text
//! cargo run --release -p tether --example packet_bench [--quick] [--w1-only | --w3-only | --w6-only]
//! ```
//!
//! Each workload runs three rounds, alternating the implementations; a
//! table of ratios to tokio-framed (medians of the rounds) closes the
//! output. `--profile-w3`, `--profile-w3-in-order`, `--profile-w3-pipeline`,
//! `--profile-w3-framed`, `--profile-w6-submit`, `--profile-w6-framed`
//! and `--profile-w6` run one implementation alone, for a profiler:
//!
//! ```text
//! valgrind --tool=callgrind target/release/examples/packet_bench --profile-w6 --quick
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tether::packet::{
    EchoService, IncomingRequest, NoHandler, PacketConfig, PacketConnection, Response,
    ResponseFuture,
};
use tether::transport::{self, Endpoint, Listener};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const PAYLOAD: usize = 64;
const IN_FLIGHT: usize = 64;
/// W6: connected clients, each receiving the same number of messages.
const PUSH_CLIENTS: usize = 16;
/// W6 over `submit`: requests in flight per client connection.
const PUSH_WINDOW: usize = 1024;
/// W6: the rq_type of a pushed message.
const PUSH_RQ_TYPE: u64 = 9;

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
    record("rtt", name, percentile(&lat, 0.5));
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
    record("pipelined", name, n as f64 / total.as_secs_f64());
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

/// W3 through a `Pipeline`: responses in completion order from one queue,
/// taken in batches, refilled to 64 in flight.
async fn w3_packet_pipeline(ep: &Endpoint, n: usize) {
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
    let mut p = c.pipeline();
    let mut sent = 0;
    while sent < n.min(IN_FLIGHT) {
        p.submit(0, 0, payload.clone()).await.unwrap();
        sent += 1;
    }
    while let Some((_tag, r)) = p.next().await {
        debug_assert_eq!(r.unwrap().payload.len(), PAYLOAD);
        if sent < n {
            p.submit(0, 0, payload.clone()).await.unwrap();
            sent += 1;
        }
    }
    report_pipelined("tether-packet-pipeline", n, t0.elapsed());
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

/// The W6 baseline server: on each connection, reads the count `n` (one
/// frame, decimal ASCII), then writes `n` 64-byte frames and closes.
fn framed_push_server() -> Endpoint {
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
                let mut f = Framed::new(s, LengthDelimitedCodec::new());
                let Some(Ok(count)) = f.next().await else {
                    return;
                };
                let n: usize = std::str::from_utf8(&count).unwrap().parse().unwrap();
                let msg = Bytes::from(vec![7u8; PAYLOAD]);
                // feed() writes out whenever the buffer passes 8 KiB
                for _ in 0..n {
                    f.feed(msg.clone()).await.unwrap();
                }
                SinkExt::<Bytes>::close(&mut f).await.unwrap();
            });
        }
    })
}

/// How the packet server pushes in W6.
#[derive(Clone, Copy, PartialEq)]
enum PushMode {
    /// `PacketConnection::push`: queued, the responses discarded.
    Push,
    /// `submit` with a window of [`PUSH_WINDOW`] responses awaited.
    Submit,
}

/// The W6 packet server: on each connection, waits for the client's
/// request carrying the count `n` (decimal ASCII), answers it, pushes `n`
/// 64-byte messages and closes.
fn packet_push_server(mode: PushMode) -> Endpoint {
    server(move |etx| async move {
        let mut l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        etx.send(l.local_endpoint()).unwrap();
        while let Ok(stream) = l.accept().await {
            let (count_tx, count_rx) = tokio::sync::oneshot::channel::<usize>();
            let count_tx = std::sync::Mutex::new(Some(count_tx));
            let handler = tether::packet::handler_fn(move |rq: IncomingRequest| {
                if let Some(tx) = count_tx.lock().unwrap().take() {
                    let _ = tx.send(std::str::from_utf8(&rq.payload).unwrap().parse().unwrap());
                }
                std::future::ready(Response::ok(0, Bytes::new()))
            });
            let c = PacketConnection::spawn(stream, handler, PacketConfig::default());
            tokio::spawn(async move {
                let n = count_rx.await.unwrap();
                let msg = Bytes::from(vec![7u8; PAYLOAD]);
                match mode {
                    PushMode::Push => {
                        for _ in 0..n {
                            c.push(PUSH_RQ_TYPE, 0, msg.clone()).await.unwrap();
                        }
                    }
                    PushMode::Submit => {
                        let mut inflight: FuturesUnordered<ResponseFuture> =
                            FuturesUnordered::new();
                        for _ in 0..n {
                            if inflight.len() >= PUSH_WINDOW {
                                let r: Response = inflight.next().await.unwrap().expect("push");
                                assert!(r.ok);
                            }
                            inflight.push(c.submit(PUSH_RQ_TYPE, 0, msg.clone()));
                        }
                        while let Some(r) = inflight.next().await {
                            assert!(r.unwrap().ok);
                        }
                    }
                }
                // close() sends EOF once every push is answered
                c.close().await.unwrap();
                assert_eq!(c.stats().push_failures, 0);
            });
        }
    })
}

fn report_push(name: &str, n: usize, total: Duration) {
    record("push", name, n as f64 / total.as_secs_f64());
    println!(
        "workload=push impl={name} clients={PUSH_CLIENTS} messages={n} msg_s={:.0} cpu_ns_per_msg={:.0} (both ends, two runtimes in one process)",
        n as f64 / total.as_secs_f64(),
        cpu_ns_per_req(n)
    );
}

async fn w6_framed(ep: &Endpoint, per_client: usize) {
    start_cpu();
    let t0 = Instant::now();
    let clients = (0..PUSH_CLIENTS).map(|_| async {
        let s = transport::connect(ep, Duration::from_secs(5))
            .await
            .unwrap();
        let mut f = Framed::new(s, LengthDelimitedCodec::new());
        f.send(Bytes::from(per_client.to_string())).await.unwrap();
        let mut got = 0;
        while let Some(m) = f.next().await {
            debug_assert_eq!(m.unwrap().len(), PAYLOAD);
            got += 1;
        }
        got
    });
    let got: usize = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .sum();
    assert_eq!(got, per_client * PUSH_CLIENTS);
    report_push("tokio-framed", got, t0.elapsed());
}

async fn w6_packet(name: &str, ep: &Endpoint, per_client: usize) {
    start_cpu();
    let t0 = Instant::now();
    let clients = (0..PUSH_CLIENTS).map(|_| async {
        let got = Arc::new(AtomicUsize::new(0));
        let counter = got.clone();
        // the client's handler acknowledges each message with an empty response
        let ack = tether::packet::handler_fn(move |rq: IncomingRequest| {
            debug_assert_eq!(rq.payload.len(), PAYLOAD);
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Response::ok(0, Bytes::new()))
        });
        let c = PacketConnection::connect(ep, Duration::from_secs(5), ack, PacketConfig::default())
            .await
            .unwrap();
        let r = c.submit(0, 0, per_client.to_string()).await.unwrap();
        assert!(r.ok);
        // the server closes after its last message is acknowledged
        c.closed().await.unwrap();
        got.load(Ordering::Relaxed)
    });
    let got: usize = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .sum();
    assert_eq!(got, per_client * PUSH_CLIENTS);
    report_push(name, got, t0.elapsed());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let (warm, w1, w3, w6) = if flag("--quick") {
        (100, 2_000, 20_000, 10_000)
    } else {
        (1_000, 20_000, 200_000, 100_000)
    };
    let packet = packet_server();
    let framed = framed_server();
    let rt = runtime();
    // for a profiler: one implementation alone, W3 ten times longer
    if flag("--profile-w3-framed") {
        return rt.block_on(w3_framed(&framed, w3 * 10));
    }
    if flag("--profile-w3-in-order") {
        return rt.block_on(w3_packet_in_order(&packet, w3 * 10));
    }
    if flag("--profile-w3-pipeline") {
        return rt.block_on(w3_packet_pipeline(&packet, w3 * 10));
    }
    if flag("--profile-w3") {
        return rt.block_on(w3_packet(&packet, w3 * 10));
    }
    if flag("--profile-w6-framed") {
        let framed_push = framed_push_server();
        return rt.block_on(w6_framed(&framed_push, w6));
    }
    if flag("--profile-w6-submit") {
        let packet_submit = packet_push_server(PushMode::Submit);
        return rt.block_on(w6_packet("tether-packet-submit", &packet_submit, w6));
    }
    if flag("--profile-w6") {
        let packet_push = packet_push_server(PushMode::Push);
        return rt.block_on(w6_packet("tether-packet", &packet_push, w6));
    }
    let only = ["--w1-only", "--w3-only", "--w6-only"]
        .iter()
        .find(|f| flag(f))
        .copied();
    let run = |w: &str| only.map_or(true, |f| f == format!("--{w}-only"));
    // alternate the implementations, several rounds, so that drift and
    // other processes' load hit all of them
    if run("w1") {
        rt.block_on(async {
            for _ in 0..3 {
                w1_framed(&framed, warm, w1).await;
                w1_packet(&packet, warm, w1).await;
            }
        });
    }
    if run("w3") {
        rt.block_on(async {
            for _ in 0..3 {
                w3_framed(&framed, w3).await;
                w3_packet(&packet, w3).await;
                w3_packet_in_order(&packet, w3).await;
                w3_packet_pipeline(&packet, w3).await;
            }
        });
    }
    if run("w6") {
        let framed_push = framed_push_server();
        let packet_push = packet_push_server(PushMode::Push);
        let packet_submit = packet_push_server(PushMode::Submit);
        rt.block_on(async {
            for _ in 0..3 {
                w6_framed(&framed_push, w6).await;
                w6_packet("tether-packet", &packet_push, w6).await;
                w6_packet("tether-packet-submit", &packet_submit, w6).await;
            }
        });
    }
    print_ratios();
}

thread_local! {
    /// (workload, impl, figure) of every line printed, for the summary.
    static FIGURES: std::cell::RefCell<Vec<(&'static str, String, f64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn record(workload: &'static str, name: &str, figure: f64) {
    FIGURES.with(|f| f.borrow_mut().push((workload, name.to_string(), figure)));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The median of each implementation's rounds over the median of
/// tokio-framed's, per workload: p50 latency for rtt (baseline / tether,
/// so above 1 is faster), throughput for the others (tether / baseline).
fn print_ratios() {
    let figures = FIGURES.with(|f| f.take());
    let mut keys: Vec<(&str, String)> = Vec::new();
    for (w, name, _) in &figures {
        if !keys.iter().any(|(kw, kn)| kw == w && kn == name) {
            keys.push((w, name.clone()));
        }
    }
    let median_of = |w: &str, name: &str| {
        median(
            figures
                .iter()
                .filter(|(fw, fname, _)| *fw == w && fname == name)
                .map(|(_, _, v)| *v)
                .collect(),
        )
    };
    println!("ratio to tokio-framed (medians of the rounds; above 1 is better):");
    for (w, name) in &keys {
        if name == "tokio-framed" {
            continue;
        }
        let (base, ours) = (median_of(w, "tokio-framed"), median_of(w, name));
        let (what, ratio) = if *w == "rtt" {
            ("p50 latency", base / ours)
        } else {
            ("throughput", ours / base)
        };
        println!("  {w:<9} {name:<24} {ratio:.2}x ({what})");
    }
}
