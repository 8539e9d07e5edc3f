//! The W1 (one request at a time), W2 (a connection each), W3 (64 requests
//! in flight), W4 (64 sessions at once), W5 (1 MiB echoes) and W6 (push) workloads of
//! BENCHMARKS.md, one implementation per run, for a profiler.
//!
//! Speed is measured by `tether bench` (crates/tether-cli/src/bench), with
//! its baselines beside it in the same run; this example measures nothing.
//! It runs one workload alone, so that a profiler's figures belong to it:
//! instructions per request under callgrind are what the packet layer's
//! changes are judged by.
//!
//! ```text
//! cargo build --release -p tether --example packet_bench
//! valgrind --tool=callgrind target/release/examples/packet_bench --profile-w3-pipeline --quick
//! ```
//!
//! Modes (exactly one):
//!
//! - `--profile-w1`: W1, sequential requests, each awaited before the next;
//! - `--profile-w1-length`: W1 over a session and its server (`LengthCodec`);
//! - `--profile-w1-framed`: W1 over tokio-util's `LengthDelimitedCodec`;
//! - `--profile-w4-length`: W4, 64 sessions at once (`LengthCodec`), each
//!   sequential;
//! - `--profile-w4-framed`: W4 over tokio-util's `LengthDelimitedCodec`;
//! - `--profile-w5-sentinel`, `--profile-w5-length`: W5, 1 MiB echoes
//!   over a session and its server (`SentinelCodec::lines()`, `LengthCodec`);
//! - `--profile-w5-framed`: W5 over tokio-util's `LengthDelimitedCodec`;
//! - `--profile-w2`: W2, a connection per request through
//!   `PacketConnection::request_once`;
//! - `--profile-w2-framed`: W2 over tokio-util's `LengthDelimitedCodec`;
//! - `--profile-w3`: W3, a future per request, awaited in a `FuturesUnordered`;
//! - `--profile-w3-in-order`: W3, the futures awaited in submission order;
//! - `--profile-w3-pipeline`: W3 through a `Pipeline`;
//! - `--profile-w3-framed`: W3 over tokio-util's `LengthDelimitedCodec`;
//! - `--profile-w6`: W6, the server pushing with `PacketConnection::push`;
//! - `--profile-w6-submit`: W6, the server pushing with `submit`;
//! - `--profile-w6-framed`: W6 over `LengthDelimitedCodec`.
//!
//! W1 sends 200,000 requests (20,000 with `--quick`: total instructions /
//! 20,000 ≈ instructions per round trip, both ends); W2 opens 2,000
//! connections (200 with `--quick`); W3 sends 2,000,000
//! requests (200,000 with `--quick`: total instructions
//! / 200,000 ≈ instructions per request); W4 sends 200,000 requests
//! (20,000 with `--quick`, total / 20,000 per request); W5 echoes 512 payloads of 1 MiB
//! (51 with `--quick`); W6 pushes 100,000 messages to
//! each of 16 clients (10,000 with `--quick`). The server and the client
//! run on two single-threaded runtimes in one process, over TCP on
//! 127.0.0.1.
//!
//! W6: the packet layer has no one-way message, so each push is a request
//! that the client's handler acknowledges with an empty response, which
//! the server reads and discards; the framed baseline writes frames that
//! the clients only read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};

use tether::framing::{FrameEncoder, FramingError, LengthCodec, SentinelCodec};
use tether::packet::{
    EchoService, IncomingRequest, NoHandler, PacketConfig, PacketConnection, Response,
    ResponseFuture,
};
use tether::session::{Client, ClientOptions, ConnectionInfo, HandlerError, Server};
use tether::transport::{self, Endpoint, Listener};
use tokio::net::TcpListener;
use tokio_util::codec::{Decoder, Framed, LengthDelimitedCodec};

const PAYLOAD: usize = 64;
const IN_FLIGHT: usize = 64;
/// W4: sessions open at once.
const FAN_IN: usize = 64;
/// W5: the size of each echoed payload.
const BULK_PAYLOAD: usize = 1 << 20;
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

async fn packet_client(ep: &Endpoint) -> PacketConnection {
    PacketConnection::connect(
        ep,
        Duration::from_secs(5),
        NoHandler,
        PacketConfig::default(),
    )
    .await
    .unwrap()
}

async fn w3_packet(ep: Endpoint, n: usize) {
    let c = packet_client(&ep).await;
    let payload = small_payload();
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
    c.close().await.unwrap();
}

/// W3 with the futures awaited in submission order (a `VecDeque`): the
/// same in-order pipeline shape as the framed baseline, on the tagged
/// protocol.
async fn w3_packet_in_order(ep: Endpoint, n: usize) {
    let c = packet_client(&ep).await;
    let payload = small_payload();
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
    c.close().await.unwrap();
}

/// W1 over the packet layer: one request in flight.
async fn w1_packet(ep: Endpoint, n: usize) {
    let c = packet_client(&ep).await;
    let payload = small_payload();
    for _ in 0..n {
        let r = c.submit(0, 0, payload.clone()).await.unwrap();
        debug_assert_eq!(r.payload.len(), PAYLOAD);
    }
    c.close().await.unwrap();
}

/// W1, W5 and each session of W4: `n` requests of `payload`, one after
/// another, over a session of `codec`.
async fn sequential_session<C>(ep: Endpoint, codec: C, payload: Bytes, n: usize)
where
    C: Decoder<Item = BytesMut, Error = FramingError>
        + FrameEncoder<Bytes>
        + Clone
        + Send
        + 'static,
{
    let client = Client::new(ep, codec, ClientOptions::default());
    let mut s = client.connect().await.unwrap();
    for _ in 0..n {
        let r = s.request(payload.clone()).await.unwrap();
        debug_assert_eq!(r.len(), payload.len());
    }
    s.close().await.unwrap();
}

/// The same over `LengthDelimitedCodec`, against the framed echo server.
async fn sequential_framed(ep: Endpoint, payload: Bytes, n: usize) {
    let s = transport::connect(&ep, Duration::from_secs(5))
        .await
        .unwrap();
    let mut f = Framed::new(s, LengthDelimitedCodec::new());
    for _ in 0..n {
        f.send(payload.clone()).await.unwrap();
        let r = f.next().await.unwrap().unwrap();
        debug_assert_eq!(r.len(), payload.len());
    }
}

/// W4: `n` requests shared by `FAN_IN` sessions at once, each its own task
/// running `session(its share)`.
async fn fan_in<F, Fut>(n: usize, session: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FAN_IN {
        let share = n / FAN_IN + usize::from(i < n % FAN_IN);
        tasks.spawn(session(share));
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// The 64-byte payload of W1, W3, W4 and W6.
fn small_payload() -> Bytes {
    Bytes::from(vec![7u8; PAYLOAD])
}

/// A session server echoing every `LengthCodec` frame.
fn length_server() -> Endpoint {
    session_server(LengthCodec::new())
}

/// A session server echoing every frame of `codec`.
fn session_server<C>(codec: C) -> Endpoint
where
    C: Decoder<Item = BytesMut, Error = FramingError>
        + FrameEncoder<BytesMut>
        + Clone
        + Send
        + 'static,
{
    server(|etx| async move {
        let l = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        etx.send(l.local_endpoint()).unwrap();
        let echo = |frame: BytesMut, _: &ConnectionInfo| {
            std::future::ready(Ok::<_, HandlerError>(Some(frame)))
        };
        Server::with_listener(l, codec, echo)
            .run(std::future::pending(), Duration::from_secs(1))
            .await;
    })
}

/// A W5 payload: 1 MiB of printable bytes, so that no sentinel is in it.
fn bulk_payload() -> Bytes {
    (0..BULK_PAYLOAD).map(|i| b'a' + (i % 26) as u8).collect()
}

/// W3 through a `Pipeline`: responses in completion order from one queue,
/// taken in batches, refilled to 64 in flight.
async fn w3_packet_pipeline(ep: Endpoint, n: usize) {
    let c = packet_client(&ep).await;
    let payload = small_payload();
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
    c.close().await.unwrap();
}

/// W2 through `PacketConnection::request_once`: a connection per request,
/// closed in order (the request, ERQ and EOF in one write).
async fn w2_packet(ep: Endpoint, n: usize) {
    let options = transport::ConnectOptions::new(Duration::from_secs(5));
    let payload = small_payload();
    for _ in 0..n {
        let r = PacketConnection::request_once(&ep, &options, 0, 0, payload.clone())
            .await
            .unwrap();
        debug_assert_eq!(r.payload.len(), PAYLOAD);
    }
}

/// W2 over `LengthDelimitedCodec`: connect, one echo, drop.
async fn w2_framed(ep: Endpoint, n: usize) {
    let payload = small_payload();
    for _ in 0..n {
        let s = transport::connect(&ep, Duration::from_secs(5))
            .await
            .unwrap();
        let mut f = Framed::new(s, LengthDelimitedCodec::new());
        f.send(payload.clone()).await.unwrap();
        let r = f.next().await.unwrap().unwrap();
        debug_assert_eq!(r.len(), PAYLOAD);
    }
}

async fn w3_framed(ep: Endpoint, n: usize) {
    let s = transport::connect(&ep, Duration::from_secs(5))
        .await
        .unwrap();
    let mut f = Framed::new(s, LengthDelimitedCodec::new());
    let payload = small_payload();
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
                let msg = small_payload();
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
                let msg = small_payload();
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

async fn w6_framed(ep: Endpoint, per_client: usize) {
    let clients = (0..PUSH_CLIENTS).map(|_| async {
        let s = transport::connect(&ep, Duration::from_secs(5))
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
}

async fn w6_packet(ep: Endpoint, per_client: usize) {
    let clients = (0..PUSH_CLIENTS).map(|_| async {
        let got = Arc::new(AtomicUsize::new(0));
        let counter = got.clone();
        // the client's handler acknowledges each message with an empty response
        let ack = tether::packet::handler_fn(move |rq: IncomingRequest| {
            debug_assert_eq!(rq.payload.len(), PAYLOAD);
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Response::ok(0, Bytes::new()))
        });
        let c =
            PacketConnection::connect(&ep, Duration::from_secs(5), ack, PacketConfig::default())
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
}

const USAGE: &str = "usage: packet_bench [--quick] --profile-w1 | --profile-w1-length | \
    --profile-w1-framed | --profile-w4-length | --profile-w4-framed | \
    --profile-w5-sentinel | --profile-w5-length | \
    --profile-w5-framed | --profile-w2 | --profile-w2-framed | \
    --profile-w3 | --profile-w3-in-order | \
    --profile-w3-pipeline | --profile-w3-framed | --profile-w6 | --profile-w6-submit | \
    --profile-w6-framed\n(speed is measured by `tether bench`; this runs one workload for a profiler)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let modes: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--quick")
        .collect();
    let [mode] = modes[..] else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let (w1, w2, w3, w4, w5, w6) = if quick {
        (20_000, 200, 200_000, 20_000, 51, 10_000)
    } else {
        (200_000, 2_000, 2_000_000, 200_000, 512, 100_000)
    };
    // one runtime loop for every mode, the workload polled through a
    // pointer: inlined into a loop of its own, each workload's code moved
    // the instruction counts by up to 2% with no change to tether
    let workload: Pin<Box<dyn Future<Output = ()> + Send>> = match mode {
        "--profile-w1" => Box::pin(w1_packet(packet_server(), w1)),
        "--profile-w1-length" => Box::pin(sequential_session(
            length_server(),
            LengthCodec::new(),
            small_payload(),
            w1,
        )),
        "--profile-w1-framed" => Box::pin(sequential_framed(framed_server(), small_payload(), w1)),
        "--profile-w4-length" => {
            let ep = length_server();
            Box::pin(fan_in(w4, move |share| {
                sequential_session(ep.clone(), LengthCodec::new(), small_payload(), share)
            }))
        }
        "--profile-w4-framed" => {
            let ep = framed_server();
            Box::pin(fan_in(w4, move |share| {
                sequential_framed(ep.clone(), small_payload(), share)
            }))
        }
        "--profile-w5-sentinel" => Box::pin(sequential_session(
            session_server(SentinelCodec::lines()),
            SentinelCodec::lines(),
            bulk_payload(),
            w5,
        )),
        "--profile-w5-length" => Box::pin(sequential_session(
            length_server(),
            LengthCodec::new(),
            bulk_payload(),
            w5,
        )),
        "--profile-w5-framed" => Box::pin(sequential_framed(framed_server(), bulk_payload(), w5)),
        "--profile-w2" => Box::pin(w2_packet(packet_server(), w2)),
        "--profile-w2-framed" => Box::pin(w2_framed(framed_server(), w2)),
        "--profile-w3" => Box::pin(w3_packet(packet_server(), w3)),
        "--profile-w3-in-order" => Box::pin(w3_packet_in_order(packet_server(), w3)),
        "--profile-w3-pipeline" => Box::pin(w3_packet_pipeline(packet_server(), w3)),
        "--profile-w3-framed" => Box::pin(w3_framed(framed_server(), w3)),
        "--profile-w6" => Box::pin(w6_packet(packet_push_server(PushMode::Push), w6)),
        "--profile-w6-submit" => Box::pin(w6_packet(packet_push_server(PushMode::Submit), w6)),
        "--profile-w6-framed" => Box::pin(w6_framed(framed_push_server(), w6)),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // as a task, not in `block_on`, as `tether bench` runs its clients and
    // the packet module's docs advise: in `block_on`, each wake-up from
    // another task costs the current-thread scheduler an extra `epoll_wait`
    let rt = runtime();
    rt.block_on(async { tokio::spawn(workload).await })
        .expect("the workload panicked");
    println!("{mode}: done");
}
