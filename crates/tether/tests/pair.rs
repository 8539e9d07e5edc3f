//! The client/server pair and the mount simulator, over loopback TCP.
//!
//! Every test runs within [`TEST_LIMIT`], each of its waits within `T`,
//! so that a hang fails its test rather than the suite; no test asserts on
//! timing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tether::framing::{FramingError, SentinelCodec};
use tether::pair::{Pair, PairConfig, PairError, TextPair};
use tether::sim::mount::{reason, Axis, Command, MountSimulator, Reply, MAX_COMMAND_LENGTH};
use tether::transport::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// The bound on every wait: generous, since the machine may be busy.
const T: Duration = Duration::from_secs(10);

/// The bound on a whole test, whatever it waits for.
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a test's body, failing it if it takes over [`TEST_LIMIT`].
async fn bounded(body: impl std::future::Future<Output = ()>) {
    timeout(TEST_LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not end within {TEST_LIMIT:?}"));
}

/// [`bounded`] for a blocking test: the body runs on a thread of its own.
fn bounded_thread(body: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(TEST_LIMIT) {
        Ok(()) => thread.join().unwrap(),
        // the body panicked: its panic is the failure
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(thread.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not end within {TEST_LIMIT:?}")
        }
    }
}

fn any_port() -> Endpoint {
    "tcp://127.0.0.1:0".parse().unwrap()
}

fn addr(ep: &Endpoint) -> String {
    ep.host_port().unwrap()
}

/// A connect callback that records what it is called with.
fn recorder() -> (Arc<Mutex<Vec<bool>>>, PairConfig) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&calls);
    let config = PairConfig::default().on_connect(move |c| sink.lock().unwrap().push(c));
    (calls, config)
}

fn calls(c: &Arc<Mutex<Vec<bool>>>) -> Vec<bool> {
    c.lock().unwrap().clone()
}

async fn text_pair(config: PairConfig) -> Arc<TextPair> {
    Arc::new(Pair::text(&any_port(), config, "\r\n").await.unwrap())
}

/// Connects two pairs to each other, A starting first.
async fn link(a: &Arc<TextPair>, b: &Arc<TextPair>) {
    let a2 = Arc::clone(a);
    let b_at = b.local_endpoint();
    let first = tokio::spawn(async move { a2.connect_to(&b_at).await });
    timeout(T, b.connect_to(&a.local_endpoint()))
        .await
        .unwrap()
        .unwrap();
    timeout(T, first).await.unwrap().unwrap().unwrap();
}

/// Waits until `f` holds, polling; panics after `T`.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    timeout(T, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// A peer made of raw sockets: a listener our pair's client connects to,
/// and a client connection to our pair's server.
struct RawPeer {
    listener: TcpListener,
}

impl RawPeer {
    async fn new() -> Self {
        RawPeer {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn endpoint(&self) -> Endpoint {
        let a = self.listener.local_addr().unwrap();
        Endpoint::tcp(a.ip().to_string(), a.port())
    }

    /// Links with `pair`: returns (what the pair writes to, what the pair reads from).
    async fn link(&self, pair: &Arc<TextPair>) -> (TcpStream, TcpStream) {
        let p = Arc::clone(pair);
        let ep = self.endpoint();
        let connecting = tokio::spawn(async move { p.connect_to(&ep).await });
        let (inbound, _) = timeout(T, self.listener.accept()).await.unwrap().unwrap();
        let outbound = TcpStream::connect(addr(&pair.local_endpoint()))
            .await
            .unwrap();
        timeout(T, connecting).await.unwrap().unwrap().unwrap();
        (inbound, outbound)
    }
}

#[tokio::test]
async fn two_pairs_link_flags_and_callback_once_per_change() {
    bounded(async move {
        let (a_calls, a_config) = recorder();
        let (b_calls, b_config) = recorder();
        let a = text_pair(a_config).await;
        let b = text_pair(b_config).await;
        assert_ne!(a.local_endpoint(), b.local_endpoint());
        for p in [&a, &b] {
            assert!(!p.client_connected() && !p.server_connected() && !p.connected());
        }
        assert!(matches!(a.read().await, Err(PairError::NotConnected)));
        assert!(matches!(
            a.write_text("x").await,
            Err(PairError::NotConnected)
        ));

        link(&a, &b).await;
        for p in [&a, &b] {
            assert!(p.client_connected() && p.server_connected() && p.connected());
        }
        assert_eq!(calls(&a_calls), [true]);
        assert_eq!(calls(&b_calls), [true]);

        a.write_text("ping").await.unwrap();
        assert_eq!(timeout(T, b.read_text()).await.unwrap().unwrap(), "ping");
        b.write_text("pong\nwith a newline inside").await.unwrap();
        assert_eq!(
            timeout(T, a.read_text()).await.unwrap().unwrap(),
            "pong\nwith a newline inside"
        );
        // connect() on a linked pair returns at once and changes nothing.
        timeout(T, a.connect()).await.unwrap().unwrap();
        assert_eq!(calls(&a_calls), [true]);

        b.close().await;
        eventually("A notices B closing", || !a.connected()).await;
        assert_eq!(calls(&b_calls), [true, false]);
        eventually("A's callback reports the loss", || {
            calls(&a_calls) == [true, false]
        })
        .await;
        assert!(!a.client_connected());
        b.close().await; // idempotent
        assert_eq!(calls(&b_calls), [true, false]);
    })
    .await;
}

#[tokio::test]
async fn connect_retries_until_the_peer_comes_up() {
    bounded(async move {
        // A port that is free now; the peer will listen on it later.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let peer_at = Endpoint::tcp("127.0.0.1", port);
        let a = text_pair(PairConfig::default().retry_interval(Duration::from_millis(20))).await;
        let a2 = Arc::clone(&a);
        let connecting = tokio::spawn(async move { a2.connect_to(&peer_at).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b = Arc::new(
            Pair::text(
                &Endpoint::tcp("127.0.0.1", port),
                PairConfig::default(),
                "\r\n",
            )
            .await
            .unwrap(),
        );
        timeout(T, b.connect_to(&a.local_endpoint()))
            .await
            .unwrap()
            .unwrap();
        timeout(T, connecting).await.unwrap().unwrap().unwrap();
        assert!(a.connected() && b.connected());
    })
    .await;
}

#[tokio::test]
async fn connect_deadline_when_the_peer_never_appears() {
    bounded(async move {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nobody = Endpoint::tcp("127.0.0.1", port);
        let config = PairConfig::default()
            .retry_interval(Duration::from_millis(20))
            .connect_timeout(Duration::from_millis(200));
        let a = text_pair(config.clone()).await;
        let err = timeout(T, a.connect_to(&nobody))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, PairError::ConnectTimeout { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!a.client_connected());

        // A peer that accepts but never connects back.
        let half = RawPeer::new().await;
        let b = text_pair(config).await;
        let err = timeout(T, b.connect_to(&half.endpoint()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("did not connect back"), "{err}");
        assert!(b.client_connected() && !b.server_connected() && !b.connected());
    })
    .await;
}

#[tokio::test]
async fn connecting_to_another_peer_ends_the_write_connection_to_the_last() {
    bounded(async move {
        // default deadlines (10 s) for the links that must come up, on a
        // machine that may be busy
        let config = PairConfig::default().retry_interval(Duration::from_millis(20));
        // X accepts but never connects back: A, given up on after a
        // moment, is left half-open to it
        let x = RawPeer::new().await;
        let a = text_pair(config.clone()).await;
        let gave_up = timeout(Duration::from_millis(300), a.connect_to(&x.endpoint())).await;
        assert!(gave_up.is_err(), "X never connects back");
        let (mut to_x, _) = timeout(T, x.listener.accept()).await.unwrap().unwrap();
        assert!(a.client_connected() && !a.connected());
        // then A links with B: its writes go to B, and X sees its end
        let b = text_pair(config.clone()).await;
        link(&a, &b).await;
        timeout(T, a.write_text("for b")).await.unwrap().unwrap();
        assert_eq!(timeout(T, b.read_text()).await.unwrap().unwrap(), "for b");
        let mut rest = Vec::new();
        timeout(T, to_x.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "nothing meant for B went to X: {rest:?}");
        // and from B on to C, while linked: connect_to(C) does not stay with B
        let c = text_pair(config).await;
        link(&a, &c).await;
        timeout(T, a.write_text("for c")).await.unwrap().unwrap();
        assert_eq!(timeout(T, c.read_text()).await.unwrap().unwrap(), "for c");
        assert!(b.wait_disconnected(T).await, "B's link to A ended");
    })
    .await;
}

#[tokio::test]
async fn a_second_client_is_refused_without_disturbing_the_first() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let b = text_pair(PairConfig::default()).await;
        link(&a, &b).await;

        let mut intruder = TcpStream::connect(addr(&a.local_endpoint())).await.unwrap();
        let mut buf = [0u8; 16];
        // Closed at once: end of stream (or a reset), never data.
        let n = timeout(T, intruder.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        eventually("the refusal is counted", || a.refused() == 1).await;
        let _ = intruder.write_all(b"sneaky\r\n").await;

        assert!(a.connected());
        b.write_text("still here").await.unwrap();
        assert_eq!(
            timeout(T, a.read_text()).await.unwrap().unwrap(),
            "still here"
        );
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_refuses_us_is_retried_at_the_retry_interval() {
    bounded(async move {
        // B already serves another client, so it refuses A at once, every time.
        let b = text_pair(PairConfig::default()).await;
        let _other = TcpStream::connect(addr(&b.local_endpoint())).await.unwrap();
        eventually("B serves the other client", || b.server_connected()).await;
        let config = PairConfig::default()
            .retry_interval(Duration::from_millis(50))
            .connect_timeout(Duration::from_millis(300));
        let a = text_pair(config).await;
        let err = timeout(T, a.connect_to(&b.local_endpoint()))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, PairError::ConnectTimeout { .. }), "{err}");
        // At most one attempt per interval within the deadline (300 / 50 + 1),
        // not a tight loop of connections.
        assert!(b.refused() <= 7, "{} attempts", b.refused());
        assert!(b.refused() >= 1);
    })
    .await;
}

#[tokio::test]
async fn drop_of_the_reading_side_is_reported_and_connect_restores_the_link() {
    bounded(async move {
        let (a_calls, config) = recorder();
        let a = text_pair(config).await;
        let peer = RawPeer::new().await;
        let (mut a_writes_to, mut a_reads_from) = peer.link(&a).await;
        assert_eq!(calls(&a_calls), [true]);
        a_reads_from
            .write_all(b"before the drop\r\n")
            .await
            .unwrap();

        let waiting = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                let first = a.read_text().await;
                let second = a.read_text().await;
                (first, second)
            })
        };
        drop(a_reads_from);
        let (first, second) = timeout(T, waiting).await.unwrap().unwrap();
        assert_eq!(first.unwrap(), "before the drop");
        let second = second.unwrap_err();
        assert!(second.is_connection_lost(), "{second}");
        assert!(second.to_string().contains("read connection"), "{second}");

        eventually("the callback reports the loss", || {
            calls(&a_calls) == [true, false]
        })
        .await;
        assert!(!a.connected());
        // The pair closed its write connection too, so the peer knows.
        let mut buf = [0u8; 8];
        assert_eq!(
            timeout(T, a_writes_to.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0),
            0
        );
        assert!(a
            .write_text("too late")
            .await
            .unwrap_err()
            .is_connection_lost());
        assert!(a.read_text().await.unwrap_err().is_connection_lost());

        let (mut a_writes_to, mut a_reads_from) = peer.link(&a).await;
        assert_eq!(calls(&a_calls), [true, false, true]);
        a_reads_from.write_all(b"after\r\n").await.unwrap();
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "after");
        a.write_text("back").await.unwrap();
        let mut got = [0u8; 6];
        timeout(T, a_writes_to.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"back\r\n");
        assert_eq!(a.losses(), 1);
    })
    .await;
}

#[tokio::test]
async fn frames_that_arrived_before_a_drop_are_read_after_it() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let peer = RawPeer::new().await;
        let (_w, mut r) = peer.link(&a).await;
        r.write_all(b"one\r\ntwo\r\n").await.unwrap();
        drop(r);
        // Nobody read while the link was up.
        assert!(a.wait_disconnected(T).await);
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "one");
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "two");
        let end = timeout(T, a.read_text()).await.unwrap().unwrap_err();
        assert!(end.is_connection_lost(), "{end}");
    })
    .await;
}

#[tokio::test]
async fn frames_sent_by_a_peer_that_then_closes_both_connections_are_all_read() {
    bounded(async move {
        // a queue of one frame: the read connection's end of stream waits
        // behind the frames, so the write connection's end is seen first, and
        // ending the link used to throw the read connection away with them
        let mut config = PairConfig::default();
        config.read_queue = 1;
        let a = text_pair(config).await;
        let peer = RawPeer::new().await;
        let (w, mut r) = peer.link(&a).await;
        let sent: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        r.write_all(format!("{}\r\n", sent.join("\r\n")).as_bytes())
            .await
            .unwrap();
        drop((w, r));
        assert!(a.wait_disconnected(T).await);
        let mut got = Vec::new();
        let end = loop {
            match timeout(T, a.read_text()).await.unwrap() {
                Ok(frame) => got.push(frame),
                Err(e) => break e,
            }
        };
        assert_eq!(got, sent);
        assert!(end.is_connection_lost(), "{end}");
    })
    .await;
}

#[tokio::test]
async fn after_reconnect_reads_come_from_the_new_link_only() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let peer = RawPeer::new().await;
        let (_w, mut r) = peer.link(&a).await;
        r.write_all(b"old, never read\r\n").await.unwrap();
        drop(r);
        assert!(a.wait_disconnected(T).await);
        let (_w, mut r) = peer.link(&a).await;
        r.write_all(b"new\r\n").await.unwrap();
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "new");
    })
    .await;
}

#[tokio::test]
async fn drop_of_the_writing_side_wakes_readers_and_writers() {
    bounded(async move {
        let (a_calls, config) = recorder();
        let a = text_pair(config).await;
        let peer = RawPeer::new().await;
        let (a_writes_to, a_reads_from) = peer.link(&a).await;

        let reader = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.read_text().await })
        };
        // A writer stuck because the peer does not read: 1 MiB frames until
        // the socket buffers are full.
        let writer = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                let big = "x".repeat(1 << 20);
                loop {
                    if let Err(e) = a.write_text(&big).await {
                        return e;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(a_writes_to);

        let read = timeout(T, reader).await.unwrap().unwrap().unwrap_err();
        assert!(read.is_connection_lost(), "{read}");
        let write = timeout(T, writer).await.unwrap().unwrap();
        assert!(write.is_connection_lost(), "{write}");
        eventually("the callback reports the loss", || {
            calls(&a_calls) == [true, false]
        })
        .await;
        assert!(!a.client_connected() && !a.server_connected());
        // the peer, which kept the other connection, sees it end too
        let mut a_reads_from = a_reads_from;
        let mut buf = [0u8; 8];
        let end = timeout(T, a_reads_from.read(&mut buf)).await.unwrap();
        assert_eq!(end.unwrap_or(0), 0, "the peer's write connection ended");
        drop(a_reads_from);

        let (_w, mut r) = peer.link(&a).await;
        assert!(a.connected());
        assert_eq!(calls(&a_calls), [true, false, true]);
        r.write_all(b"again\r\n").await.unwrap();
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "again");
    })
    .await;
}

#[tokio::test]
async fn a_read_before_connect_is_not_connected_even_if_the_peer_already_is() {
    bounded(async move {
        // the peer connects to us first, as it may: a read before our
        // connect says so at once (it waited for the peer's first frame)
        let a = text_pair(PairConfig::default()).await;
        let peer = RawPeer::new().await;
        let mut peer_writes = TcpStream::connect(addr(&a.local_endpoint())).await.unwrap();
        eventually("A's server has the peer", || a.server_connected()).await;
        let read = timeout(T, a.read_text()).await.expect("not held");
        assert!(matches!(read, Err(PairError::NotConnected)), "{read:?}");
        // and that early read took nothing from the connection: once the
        // link is up, its frames are read
        let connecting = {
            let a = Arc::clone(&a);
            let at = peer.endpoint();
            tokio::spawn(async move { a.connect_to(&at).await })
        };
        let (_peer_reads, _) = timeout(T, peer.listener.accept()).await.unwrap().unwrap();
        timeout(T, connecting).await.unwrap().unwrap().unwrap();
        peer_writes.write_all(b"first\r\n").await.unwrap();
        assert_eq!(timeout(T, a.read_text()).await.unwrap().unwrap(), "first");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_reads_nothing_is_let_go_after_the_write_stall_limit() {
    bounded(async move {
        let a =
            text_pair(PairConfig::default().write_stall_limit(Duration::from_millis(200))).await;
        let peer = RawPeer::new().await;
        // the peer keeps both connections open and never reads
        let (_a_writes_to, _a_reads_from) = peer.link(&a).await;
        let writer = {
            let a = Arc::clone(&a);
            tokio::spawn(async move {
                let big = "x".repeat(1 << 20);
                loop {
                    if let Err(e) = a.write_text(&big).await {
                        return e;
                    }
                }
            })
        };
        let write = timeout(T, writer)
            .await
            .expect("the writer is let go, not held for ever")
            .unwrap();
        assert!(write.is_connection_lost(), "{write}");
        assert!(write.to_string().contains("read nothing"), "{write}");
        assert!(!a.client_connected());
    })
    .await;
}

#[tokio::test]
async fn limits_past_what_a_clock_or_a_channel_holds_are_taken_as_the_most() {
    bounded(async move {
        let refusing = {
            // a port nobody listens on
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = l.local_addr().unwrap();
            Endpoint::tcp(a.ip().to_string(), a.port())
        };
        // a deadline `now + Duration::MAX` panicked
        let a = text_pair(PairConfig::default().connect_timeout(Duration::MAX)).await;
        let still_trying = timeout(Duration::from_millis(300), a.connect_to(&refusing)).await;
        assert!(still_trying.is_err(), "it tries until a year is up");
        let a = text_pair(
            PairConfig::default()
                .retry_interval(Duration::MAX)
                .connect_timeout(Duration::from_millis(200)),
        )
        .await;
        let gave_up = timeout(T, a.connect_to(&refusing)).await.unwrap();
        assert!(
            matches!(gave_up, Err(PairError::ConnectTimeout { .. })),
            "{gave_up:?}"
        );
        // channels of usize::MAX frames panicked (in the accept task, silently)
        let mut config = PairConfig::default();
        config.read_queue = usize::MAX;
        config.write_queue = usize::MAX;
        let (a, b) = (text_pair(config.clone()).await, text_pair(config).await);
        link(&a, &b).await;
        timeout(T, a.write_text("big queues"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            timeout(T, b.read_text()).await.unwrap().unwrap(),
            "big queues"
        );
    })
    .await;
}

#[tokio::test]
async fn an_endpoint_that_cannot_work_fails_at_once_not_at_the_deadline() {
    bounded(async move {
        let a = text_pair(PairConfig::default().connect_timeout(Duration::from_secs(60))).await;
        // TLS to a host no certificate can name (and, unless TETHER_TLS_CA
        // is set, with no authority to check it against): no attempt can
        // work, whatever the environment
        let tls: Endpoint = "tls://a..b:1".parse().unwrap();
        let failed = timeout(Duration::from_secs(5), a.connect_to(&tls))
            .await
            .expect("no retries until the 60 s deadline");
        assert!(matches!(failed, Err(PairError::Transport(_))), "{failed:?}");
    })
    .await;
}

#[tokio::test]
async fn a_mount_simulator_dropped_without_close_lets_go_of_its_port() {
    bounded(async move {
        let peer = RawPeer::new().await;
        let sim = MountSimulator::spawn(&any_port(), peer.endpoint())
            .await
            .unwrap();
        let at = addr(&sim.local_endpoint());
        TcpStream::connect(&at).await.expect("it listens");
        drop(sim);
        eventually("the port is closed", || {
            std::net::TcpStream::connect(&at).is_err()
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn disconnect_then_connect_on_the_same_pairs() {
    bounded(async move {
        let (a_calls, a_config) = recorder();
        let a = text_pair(a_config).await;
        let b = text_pair(PairConfig::default()).await;
        link(&a, &b).await;
        a.disconnect();
        assert!(!a.connected());
        eventually("B notices", || !b.connected()).await;
        link(&a, &b).await;
        assert_eq!(calls(&a_calls), [true, false, true]);
        a.write_text("once more").await.unwrap();
        assert_eq!(
            timeout(T, b.read_text()).await.unwrap().unwrap(),
            "once more"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_never_interleave() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let b = text_pair(PairConfig::default()).await;
        link(&a, &b).await;
        const WRITERS: usize = 6;
        const EACH: usize = 40;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let a = Arc::clone(&a);
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    // Sizes from a few bytes to ~100 KB, so writes are split.
                    let body = char::from(b'a' + w as u8)
                        .to_string()
                        .repeat((i * 2500) % 100_000 + 1);
                    a.write_text(&format!("{w} {i} {body}")).await.unwrap();
                }
            }));
        }
        let mut next = [0usize; WRITERS];
        for _ in 0..WRITERS * EACH {
            let line = timeout(T, b.read_text()).await.unwrap().unwrap();
            let mut parts = line.splitn(3, ' ');
            let w: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            let body = parts.next().unwrap();
            assert_eq!(i, next[w], "writer {w}'s frames in order");
            next[w] += 1;
            let c = char::from(b'a' + w as u8);
            assert!(
                body.chars().all(|x| x == c),
                "frame of writer {w} mixed with another"
            );
            assert_eq!(body.len(), (i * 2500) % 100_000 + 1);
        }
        for t in tasks {
            timeout(T, t).await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn close_is_ordered_and_idempotent() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let peer = RawPeer::new().await;
        let (mut a_writes_to, a_reads_from) = peer.link(&a).await;
        let listen = addr(&a.local_endpoint());
        timeout(T, a.close()).await.unwrap();
        // the connection A reads from is closed by the time `close` returns:
        // its end is there to read at once, no waiting
        let mut a_reads_from = a_reads_from.into_std().unwrap();
        a_reads_from.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            std::io::Read::read(&mut a_reads_from, &mut buf).map_err(|e| e.kind()),
            Ok(0),
            "A's read connection ended"
        );
        let mut buf = [0u8; 4];
        assert_eq!(
            timeout(T, a_writes_to.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0),
            0
        );
        assert!(
            TcpStream::connect(&listen).await.is_err(),
            "the listener is closed"
        );
        timeout(T, a.close()).await.unwrap();
        assert!(matches!(a.read().await, Err(PairError::Closed)));
        assert!(matches!(a.write_text("x").await, Err(PairError::Closed)));
        assert!(matches!(a.connect().await, Err(PairError::Closed)));
    })
    .await;
}

#[tokio::test]
async fn bad_input_gives_clear_errors_and_the_link_survives() {
    bounded(async move {
        let codec = SentinelCodec::with_max_length(&b"\n"[..], 64);
        let a = Arc::new(
            Pair::bind(&any_port(), PairConfig::default(), codec.clone(), codec)
                .await
                .unwrap(),
        );
        let peer = RawPeer::new().await;
        let listener = &peer.listener;
        let p = Arc::clone(&a);
        let ep = peer.endpoint();
        let connecting = tokio::spawn(async move { p.connect_to(&ep).await });
        let (_inbound, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
        let mut to_a = TcpStream::connect(addr(&a.local_endpoint())).await.unwrap();
        timeout(T, connecting).await.unwrap().unwrap().unwrap();

        let mut wire = Vec::new();
        wire.extend_from_slice(&[b'z'; 200]);
        wire.extend_from_slice(b"\n{\"ok\": tru\n\xff\xfe bytes\n[1, 2] trailing\n{\"n\": 5}\n");
        to_a.write_all(&wire).await.unwrap();

        let oversize = timeout(T, a.read_text()).await.unwrap().unwrap_err();
        assert!(
            matches!(
                oversize,
                PairError::Framing(FramingError::FrameTooLong { max: 64 })
            ),
            "{oversize}"
        );
        assert!(oversize.connection_survives());
        match timeout(T, a.read_json::<serde_json::Value>())
            .await
            .unwrap()
        {
            Err(PairError::Json { raw, .. }) => assert_eq!(&raw[..], b"{\"ok\": tru"),
            other => panic!("{other:?}"),
        }
        match timeout(T, a.read_text()).await.unwrap() {
            Err(e @ PairError::InvalidUtf8 { .. }) => {
                assert!(e.to_string().contains(r"\xff\xfe bytes"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let trailing = timeout(T, a.read_json::<Vec<u32>>()).await.unwrap();
        assert!(
            matches!(trailing, Err(PairError::Json { .. })),
            "{trailing:?}"
        );
        #[derive(serde::Deserialize)]
        struct N {
            n: u32,
        }
        let n: N = timeout(T, a.read_json()).await.unwrap().unwrap();
        assert_eq!(n.n, 5);
        assert!(a.connected());

        // Refused on the way out too: nothing is sent.
        let long = "y".repeat(65);
        assert!(matches!(
            a.write_text(&long).await,
            Err(PairError::Framing(FramingError::FrameTooLong { .. }))
        ));
        assert!(matches!(
            a.write(BytesMut::from("two\nlines")).await,
            Err(PairError::Framing(FramingError::SentinelInFrame { .. }))
        ));
        assert!(a.connected());
    })
    .await;
}

#[tokio::test]
async fn frames_split_across_writes_or_sharing_one_come_out_whole() {
    bounded(async move {
        let a = text_pair(PairConfig::default()).await;
        let peer = RawPeer::new().await;
        let (_a_writes_to, mut a_reads_from) = peer.link(&a).await;
        let wire = b"split\r\nacross\r\n\r\nmany writes\r\n";
        for byte in wire {
            a_reads_from.write_all(&[*byte]).await.unwrap();
            a_reads_from.flush().await.unwrap();
        }
        a_reads_from
            .write_all(b"one\r\ntwo\r\nthree\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(timeout(T, a.read_text()).await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            ["split", "across", "", "many writes", "one", "two", "three"]
        );
    })
    .await;
}

#[tokio::test]
async fn pairs_over_unix_sockets() {
    bounded(async move {
        let dir = std::env::temp_dir().join(format!("tether-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = |name: &str| Endpoint::Unix(dir.join(name));
        let _ = std::fs::remove_file(dir.join("a.sock"));
        let _ = std::fs::remove_file(dir.join("b.sock"));
        let a = Arc::new(
            Pair::text(&at("a.sock"), PairConfig::default(), "\r\n")
                .await
                .unwrap(),
        );
        let b = Arc::new(
            Pair::text(&at("b.sock"), PairConfig::default(), "\r\n")
                .await
                .unwrap(),
        );
        link(&a, &b).await;
        a.write_text("over a unix socket").await.unwrap();
        assert_eq!(
            timeout(T, b.read_text()).await.unwrap().unwrap(),
            "over a unix socket"
        );
        a.close().await;
        b.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn json_lines_round_trip() {
    bounded(async move {
        let a = Arc::new(
            Pair::json_lines(&any_port(), PairConfig::default())
                .await
                .unwrap(),
        );
        let b = Arc::new(
            Pair::json_lines(&any_port(), PairConfig::default())
                .await
                .unwrap(),
        );
        link(&a, &b).await;
        let value =
            serde_json::json!({"cmd": "move", "axis": "el", "deg": 45.5, "note": "line\nbreak"});
        a.write_json(&value).await.unwrap();
        let got: serde_json::Value = timeout(T, b.read_json()).await.unwrap().unwrap();
        assert_eq!(got, value);
    })
    .await;
}

// ---- the mount simulator ----

/// A client pair linked with a fresh simulator.
async fn mount() -> (Arc<TextPair>, MountSimulator) {
    let client = text_pair(PairConfig::default()).await;
    let sim = MountSimulator::spawn(&any_port(), client.local_endpoint())
        .await
        .unwrap();
    timeout(T, client.connect_to(&sim.local_endpoint()))
        .await
        .unwrap()
        .unwrap();
    (client, sim)
}

async fn send(client: &TextPair, cmd: &Command) {
    client.write_text(&cmd.encode()).await.unwrap();
}

async fn reply(client: &TextPair) -> Reply {
    let text = timeout(T, client.read_text()).await.unwrap().unwrap();
    Reply::parse(&text).unwrap()
}

fn ack(seq: u64, timeout_ms: u64) -> Reply {
    Reply::Ack { seq, timeout_ms }
}

fn done(seq: u64) -> Reply {
    Reply::Done { seq, extra: vec![] }
}

const ME: i64 = 2;

#[tokio::test]
async fn mount_control_enable_move_stop_status() {
    bounded(async move {
        let (c, sim) = mount().await;
        send(&c, &Command::enable(1, ME, Axis::Az)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(1, reason::NOT_IN_CONTROL));

        send(&c, &Command::take_control(2, ME)).await;
        assert_eq!(reply(&c).await, ack(2, 0));
        assert_eq!(reply(&c).await, done(2));

        send(&c, &Command::move_to(3, ME, Axis::Az, 1.0)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(3, reason::AXIS_DISABLED));

        for (seq, axis) in [(4, Axis::Az), (5, Axis::El)] {
            send(&c, &Command::enable(seq, ME, axis)).await;
            assert_eq!(reply(&c).await, ack(seq, 0));
            assert_eq!(reply(&c).await, done(seq));
        }

        send(&c, &Command::move_to(6, ME, Axis::El, 0.5)).await;
        assert_eq!(reply(&c).await, ack(6, 50));
        assert_eq!(reply(&c).await, done(6));

        send(&c, &Command::stop(7, ME, Axis::Az)).await;
        assert_eq!(reply(&c).await, ack(7, 0));
        assert_eq!(reply(&c).await, done(7));

        send(&c, &Command::status(8, ME)).await;
        assert_eq!(reply(&c).await, ack(8, 0));
        assert_eq!(
            reply(&c).await,
            Reply::Done {
                seq: 8,
                extra: vec!["0.000".into(), "0.500".into()]
            }
        );

        // Someone else takes control: our commands are refused from then on.
        send(&c, &Command::take_control(9, 77)).await;
        assert_eq!(reply(&c).await, ack(9, 0));
        assert_eq!(reply(&c).await, done(9));
        send(&c, &Command::status(10, ME)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(10, reason::NOT_IN_CONTROL));
        sim.close().await;
    })
    .await;
}

#[tokio::test]
async fn mount_supersedes_a_move_with_a_move_or_a_stop() {
    bounded(async move {
        let (c, sim) = mount().await;
        for cmd in [
            Command::take_control(1, ME),
            Command::enable(2, ME, Axis::Az),
        ] {
            send(&c, &cmd).await;
            reply(&c).await;
            reply(&c).await;
        }
        // 60 s moves: they cannot end before the next command arrives.
        send(&c, &Command::move_to(3, ME, Axis::Az, 600.0)).await;
        assert_eq!(reply(&c).await, ack(3, 60_000));
        send(&c, &Command::move_to(4, ME, Axis::Az, -600.0)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(3, reason::SUPERSEDED));
        let Reply::Ack { seq: 4, timeout_ms } = reply(&c).await else {
            panic!("MOVE 4 must be acknowledged");
        };
        // From wherever the first move got to (near 0°) to -600°.
        assert!((60_000..=120_000).contains(&timeout_ms), "{timeout_ms}");
        send(&c, &Command::stop(5, ME, Axis::Az)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(4, reason::SUPERSEDED));
        assert_eq!(reply(&c).await, ack(5, 0));
        assert_eq!(reply(&c).await, done(5));
        sim.close().await;
    })
    .await;
}

#[tokio::test]
async fn mount_refuses_unsupported_and_malformed_commands() {
    bounded(async move {
        let (c, sim) = mount().await;
        send(&c, &Command::new(1, 99, ME)).await;
        assert_eq!(reply(&c).await, Reply::no_ack(1, reason::UNSUPPORTED));
        for (frame, seq) in [
            ("", 0),
            ("abc\n40\n2\nt", 0),
            ("5\n40", 5),
            ("6\n20\n2\nt\naz", 6),
            ("7\n20\n2\nt\naz\nnorth", 7),
        ] {
            c.write_text(frame).await.unwrap();
            assert_eq!(
                reply(&c).await,
                Reply::no_ack(seq, reason::MALFORMED),
                "{frame:?}"
            );
        }
        c.write(&b"\xff\xfe\n40\n2\nt"[..]).await.unwrap();
        assert_eq!(reply(&c).await, Reply::no_ack(0, reason::MALFORMED));
        let oversize = format!("9\n40\n2\n{}", "t".repeat(MAX_COMMAND_LENGTH));
        c.write_text(&oversize).await.unwrap();
        assert_eq!(reply(&c).await, Reply::no_ack(0, reason::MALFORMED));
        send(&c, &Command::take_control(8, ME)).await;
        assert_eq!(reply(&c).await, ack(8, 0));
        assert_eq!(reply(&c).await, done(8));
        sim.close().await;
    })
    .await;
}

#[tokio::test]
async fn mount_waits_for_a_new_peer_after_a_drop() {
    bounded(async move {
        let (c, sim) = mount().await;
        send(&c, &Command::take_control(1, ME)).await;
        reply(&c).await;
        reply(&c).await;
        c.disconnect();
        eventually("the simulator notices", || !sim.pair().connected()).await;
        timeout(T, c.connect()).await.unwrap().unwrap();
        // Same mount, same commander.
        send(&c, &Command::status(2, ME)).await;
        assert_eq!(reply(&c).await, ack(2, 0));
        assert!(matches!(reply(&c).await, Reply::Done { seq: 2, .. }));
        sim.close().await;
    })
    .await;
}

#[test]
fn blocking_pair_talks_to_an_async_one_elsewhere() {
    bounded_thread(|| {
        use tether::pair::blocking;
        let a = blocking::Pair::text(&any_port(), PairConfig::default(), "\r\n").unwrap();
        let a_at = a.local_endpoint();
        // B: an async pair on a runtime of its own, in another thread
        let (b_at_tx, b_at) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let b = text_pair(PairConfig::default()).await;
                b_at_tx.send(b.local_endpoint()).unwrap();
                timeout(T, b.connect_to(&a_at)).await.unwrap().unwrap();
                let got = timeout(T, b.read_text()).await.unwrap().unwrap();
                timeout(T, b.write_text(&got.to_uppercase()))
                    .await
                    .unwrap()
                    .unwrap();
                timeout(T, b.close()).await.unwrap();
            });
        });
        let b_at = b_at.recv_timeout(T).unwrap();
        a.connect_to(&b_at).unwrap();
        a.write_text("shout").unwrap();
        let got = a
            .read_timeout(T)
            .unwrap()
            .map(|f| String::from_utf8(f.to_vec()).unwrap());
        assert_eq!(got.as_deref(), Some("SHOUT"));
        t.join().unwrap();
        assert!(a.read_timeout(T).unwrap_err().is_connection_lost());
    });
}

#[test]
fn blocking_one_client_server_refuses_a_second_client() {
    bounded_thread(|| {
        use std::io::{Read, Write};
        use tether::pair::{blocking, ServerConfig};
        let server = blocking::OneClientServer::bind(
            &any_port(),
            SentinelCodec::crlf(),
            ServerConfig::default(),
        )
        .unwrap();
        let at = addr(&server.local_endpoint());
        let mut first = std::net::TcpStream::connect(&at).unwrap();
        server.wait_connected(T).unwrap();
        let mut second = std::net::TcpStream::connect(&at).unwrap();
        second.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            second.read(&mut buf).unwrap_or(0),
            0,
            "the second client is closed at once"
        );
        first.write_all(b"first still served\r\n").unwrap();
        assert_eq!(server.read_text().unwrap(), "first still served");
        assert_eq!(server.refused(), 1);
        drop(first);
        assert!(server.wait_disconnected(T));
        assert!(server.read_timeout(T).unwrap_err().is_connection_lost());
        // The next client is accepted.
        let mut third = std::net::TcpStream::connect(&at).unwrap();
        server.wait_connected(T).unwrap();
        third.write_all(b"third\r\n").unwrap();
        assert_eq!(server.read_text().unwrap(), "third");
        server.close();
    });
}

/// Dropping the link and dialling again at once must not be refused as a
/// "second client" by a peer that has not yet read the old connection's
/// end: the link comes up once per connect and stays up.
#[tokio::test]
async fn reconnecting_at_once_does_not_flap_the_link() {
    bounded(async move {
        let (calls_seen, config) = recorder();
        let client = text_pair(config).await;
        let sim = MountSimulator::spawn(&any_port(), client.local_endpoint())
            .await
            .unwrap();
        timeout(T, client.connect_to(&sim.local_endpoint()))
            .await
            .unwrap()
            .unwrap();
        send(&client, &Command::take_control(1, ME)).await;
        assert_eq!(reply(&client).await, ack(1, 0));
        assert_eq!(reply(&client).await, done(1));
        let rounds = 15;
        for round in 0..rounds {
            client.disconnect();
            timeout(T, client.connect()).await.unwrap().unwrap();
            let seq = 10 + round;
            send(&client, &Command::status(seq, ME)).await;
            assert_eq!(reply(&client).await, ack(seq, 0), "round {round}");
            assert!(matches!(reply(&client).await, Reply::Done { seq: s, .. } if s == seq));
        }
        let expected: Vec<bool> = std::iter::once(true)
            .chain((0..rounds).flat_map(|_| [false, true]))
            .collect();
        assert_eq!(calls(&calls_seen), expected);
        assert_eq!(
            sim.pair().refused(),
            0,
            "no reconnect was taken for a second client"
        );
    })
    .await;
}
