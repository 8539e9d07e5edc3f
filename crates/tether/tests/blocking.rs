//! The blocking API: plain threads, real sockets on 127.0.0.1, bounded waits.

use std::time::Duration;

use tether::blocking::{Client, Server};
use tether::framing::{text, SentinelCodec};
use tether::session::{ClientOptions, ConnectionInfo, HandlerError, SessionError};

fn upper_server() -> tether::blocking::RunningServer {
    Server::bind(
        &"127.0.0.1:0".parse().unwrap(),
        text(SentinelCodec::crlf()),
        |request: String, _: &ConnectionInfo| -> Result<Option<String>, HandlerError> {
            if let Some(ms) = request.strip_prefix("sleep ") {
                std::thread::sleep(Duration::from_millis(ms.parse()?));
            }
            Ok(Some(request.to_uppercase()))
        },
    )
    .unwrap()
}

fn options() -> ClientOptions {
    ClientOptions::default()
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
}

#[test]
fn sessions_scoped_sessions_and_one_shot_requests() {
    let server = upper_server();
    let client = Client::new(
        server.local_endpoint(),
        text(SentinelCodec::crlf()),
        options(),
    );
    let mut session = client.connect().unwrap();
    assert_eq!(session.request("one".to_string()).unwrap(), "ONE");
    assert_eq!(session.request("two".to_string()).unwrap(), "TWO");
    session.send("three".to_string()).unwrap();
    assert_eq!(session.receive().unwrap(), "THREE");
    session.close().unwrap();

    let both = client
        .with_session(|s| Ok((s.request("a".to_string())?, s.request("b".to_string())?)))
        .unwrap();
    assert_eq!(both, ("A".to_string(), "B".to_string()));
    assert_eq!(client.request_once("once".to_string()).unwrap(), "ONCE");
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_slow_handler_does_not_hold_up_other_connections() {
    let server = upper_server();
    let endpoint = server.local_endpoint();
    let slow = std::thread::spawn(move || {
        let client = Client::new(endpoint, text(SentinelCodec::crlf()), options());
        client.request_once("sleep 500".to_string())
    });
    std::thread::sleep(Duration::from_millis(50));
    let client = Client::new(
        server.local_endpoint(),
        text(SentinelCodec::crlf()),
        options(),
    );
    assert_eq!(client.request_once("quick".to_string()).unwrap(), "QUICK");
    assert!(!slow.is_finished());
    assert_eq!(slow.join().unwrap().unwrap(), "SLEEP 500");
}

#[test]
fn a_timeout_closes_the_blocking_session() {
    let server = upper_server();
    let client = Client::new(
        server.local_endpoint(),
        text(SentinelCodec::crlf()),
        options().request_timeout(Some(Duration::from_millis(100))),
    );
    let mut session = client.connect().unwrap();
    assert!(matches!(
        session.request("sleep 400".to_string()),
        Err(SessionError::Timeout { .. })
    ));
    assert!(matches!(
        session.request("next".to_string()),
        Err(SessionError::Closed { .. })
    ));
}

#[test]
fn refused_connections_name_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Client::new(endpoint, SentinelCodec::lines(), options());
    let err = client.connect().unwrap_err();
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn other_transports_run_through_the_bridge() {
    let client = Client::new(
        "exec:cat".parse().unwrap(),
        text(SentinelCodec::lines()),
        options(),
    );
    let reply = client
        .with_session(|s| s.request("via a child".to_string()))
        .unwrap();
    assert_eq!(reply, "via a child");
}

#[test]
fn unix_sockets_use_blocking_sockets_directly() {
    let path = std::env::temp_dir().join(format!("tether-blocking-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let endpoint = tether::transport::Endpoint::Unix(path);
    let server = Server::bind(
        &endpoint,
        SentinelCodec::lines(),
        |req: bytes::BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(req)),
    )
    .unwrap();
    let client = Client::new(endpoint, SentinelCodec::lines(), options());
    assert_eq!(client.request_once("over unix").unwrap(), "over unix");
    drop(server);
}

#[test]
fn a_unix_connect_to_a_server_that_accepts_nothing_gives_up_in_time() {
    // a listener with a backlog of 1 that never accepts: once its backlog
    // is full, a blocking connect would wait for ever
    let path = std::env::temp_dir().join(format!("tether-full-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let addr = socket2::SockAddr::unix(&path).unwrap();
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener.bind(&addr).unwrap();
    listener.listen(1).unwrap();
    let mut filling = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&addr) {
            Ok(()) => filling.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(filling.len() < 64, "the backlog never filled");
    }
    let endpoint = tether::transport::Endpoint::Unix(path.clone());
    let options = options().connect_timeout(Duration::from_millis(200));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let outcome = Client::new(endpoint, SentinelCodec::lines(), options)
            .connect()
            .map(|_| ());
        let _ = tx.send((outcome, started.elapsed()));
    });
    let (outcome, took) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the connect waited past its timeout");
    let e = outcome.unwrap_err();
    assert!(e.to_string().contains("200ms"), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop((listener, filling));
    let _ = std::fs::remove_file(&path);
}

// The blocking server over TCP and Unix: a thread per connection.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tether::blocking::RunningServer;
use tether::framing::LengthCodec;
use tether::session::ServerOptions;
use tether::transport::Endpoint;

/// A small device: `sleep <ms>` sleeps then answers, `panic` panics, `fail`
/// fails, `quiet` gets no reply, anything else comes back in upper case.
/// `started` counts the requests whose handler has begun.
fn device(endpoint: &Endpoint, options: ServerOptions) -> (RunningServer, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let server = Server::bind_with(
        endpoint,
        text(SentinelCodec::crlf()),
        move |request: String, _: &ConnectionInfo| -> Result<Option<String>, HandlerError> {
            seen.fetch_add(1, Ordering::SeqCst);
            match request.as_str() {
                "panic" => panic!("the handler panics on purpose"),
                "fail" => Err("the handler fails on purpose".into()),
                "quiet" => Ok(None),
                _ => {
                    if let Some(ms) = request.strip_prefix("sleep ") {
                        std::thread::sleep(Duration::from_millis(ms.parse()?));
                    }
                    Ok(Some(request.to_uppercase()))
                }
            }
        },
        options,
    )
    .unwrap();
    (server, started)
}

fn tcp() -> Endpoint {
    "127.0.0.1:0".parse().unwrap()
}

fn unix(name: &str) -> Endpoint {
    let path =
        std::env::temp_dir().join(format!("tether-bserver-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Endpoint::Unix(path)
}

fn client_of(server: &RunningServer) -> Client<tether::framing::TextCodec<SentinelCodec>> {
    Client::new(
        server.local_endpoint(),
        text(SentinelCodec::crlf()),
        options(),
    )
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_closed(err: &SessionError) -> bool {
    matches!(err, SessionError::Disconnected | SessionError::Transport(_))
}

#[test]
fn the_blocking_server_echoes_over_tcp_and_unix() {
    for endpoint in [tcp(), unix("echo")] {
        let (server, _) = device(&endpoint, ServerOptions::default());
        let client = client_of(&server);
        let mut session = client.connect().unwrap();
        assert_eq!(session.request("one".to_string()).unwrap(), "ONE");
        // no reply for `quiet`: the next reply is the next request's
        session.send("quiet".to_string()).unwrap();
        assert_eq!(session.request("two".to_string()).unwrap(), "TWO");
        session.close().unwrap();
        assert_eq!(client.request_once("once".to_string()).unwrap(), "ONCE");
        assert_eq!(server.stats().accepted(), 2);
        assert_eq!(server.stats().refused(), 0);
        within(Duration::from_secs(5), move || {
            server.shutdown(Duration::from_secs(2))
        });
        if let Endpoint::Unix(path) = &endpoint {
            assert!(!path.exists(), "the socket file is removed on shutdown");
        }
    }
}

#[test]
fn many_clients_are_served_at_once() {
    // every client's last request waits in its handler until all 32 are
    // in one: a server that ran fewer handlers at a time would leave them
    // waiting, and answer ALONE after 5 s
    const CLIENTS: usize = 32;
    let met = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let meeting = met.clone();
    let server = Server::bind_with(
        &tcp(),
        text(SentinelCodec::crlf()),
        move |request: String, _: &ConnectionInfo| -> Result<Option<String>, HandlerError> {
            if request != "meet" {
                return Ok(Some(request.to_uppercase()));
            }
            let (arrived, all_in) = &*meeting;
            let mut arrived = arrived.lock().unwrap();
            *arrived += 1;
            all_in.notify_all();
            let (arrived, _) = all_in
                .wait_timeout_while(arrived, Duration::from_secs(5), |n| *n < CLIENTS)
                .unwrap();
            Ok(Some(
                if *arrived >= CLIENTS { "MET" } else { "ALONE" }.to_string(),
            ))
        },
        ServerOptions::default(),
    )
    .unwrap();
    let endpoint = server.local_endpoint();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let client = Client::new(endpoint, text(SentinelCodec::crlf()), options());
                let mut session = client.connect().unwrap();
                for j in 0..50 {
                    let reply = session.request(format!("client {i} request {j}")).unwrap();
                    assert_eq!(reply, format!("CLIENT {i} REQUEST {j}"));
                }
                assert_eq!(session.request("meet".to_string()).unwrap(), "MET");
                session.close().unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(server.stats().accepted(), 32);
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_secs(2))
    });
}

#[test]
fn a_connection_beyond_max_connections_is_refused() {
    let (server, _) = device(&tcp(), ServerOptions::default().max_connections(2));
    let client = client_of(&server);
    let mut first = client.connect().unwrap();
    let mut second = client.connect().unwrap();
    assert_eq!(first.request("a".to_string()).unwrap(), "A");
    assert_eq!(second.request("b".to_string()).unwrap(), "B");

    let mut third = client.connect().unwrap();
    let err = third.request("c".to_string()).unwrap_err();
    assert!(is_closed(&err), "{err}");
    assert_eq!(server.stats().refused(), 1);
    // the others are not disturbed
    assert_eq!(first.request("still".to_string()).unwrap(), "STILL");

    // a slot comes free when a connection ends
    second.close().unwrap();
    eventually("a slot comes free", || {
        client
            .request_once("again".to_string())
            .is_ok_and(|r| r == "AGAIN")
    });
    assert_eq!(first.request("end".to_string()).unwrap(), "END");
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_secs(2))
    });
}

#[test]
fn an_over_long_frame_closes_only_its_connection() {
    let server = Server::bind(
        &tcp(),
        LengthCodec::with_prefix(4, 1024),
        |req: bytes::BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(req)),
    )
    .unwrap();
    // the client's codec allows more than the server's
    let client = Client::new(server.local_endpoint(), LengthCodec::new(), options());
    let mut other = client.connect().unwrap();
    assert_eq!(other.request(&b"fits"[..]).unwrap(), &b"fits"[..]);

    let mut session = client.connect().unwrap();
    let err = session.request(vec![b'x'; 4096]).unwrap_err();
    // the server drains what was sent, so the close is a clean end of
    // stream rather than a reset
    assert!(matches!(err, SessionError::Disconnected), "{err}");

    assert_eq!(
        other.request(&b"unaffected"[..]).unwrap(),
        &b"unaffected"[..]
    );
    assert_eq!(client.request_once(&b"new"[..]).unwrap(), &b"new"[..]);
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_secs(2))
    });
}

#[test]
fn a_handler_panic_or_error_closes_only_its_connection() {
    for endpoint in [tcp(), unix("panic")] {
        let (server, _) = device(&endpoint, ServerOptions::default());
        let client = client_of(&server);
        let mut other = client.connect().unwrap();
        assert_eq!(other.request("before".to_string()).unwrap(), "BEFORE");
        for fatal in ["panic", "fail"] {
            let mut session = client.connect().unwrap();
            let err = session.request(fatal.to_string()).unwrap_err();
            assert!(is_closed(&err), "{fatal}: {err}");
        }
        assert_eq!(other.request("after".to_string()).unwrap(), "AFTER");
        assert_eq!(client.request_once("new".to_string()).unwrap(), "NEW");
        within(Duration::from_secs(5), move || {
            server.shutdown(Duration::from_secs(2))
        });
    }
}

#[test]
fn shutdown_with_an_idle_client_returns_at_once() {
    for endpoint in [tcp(), unix("idle")] {
        let (server, _) = device(&endpoint, ServerOptions::default());
        let client = client_of(&server);
        let mut session = client.connect().unwrap();
        assert_eq!(session.request("hello".to_string()).unwrap(), "HELLO");
        let start = Instant::now();
        within(Duration::from_secs(5), move || {
            server.shutdown(Duration::from_secs(3))
        });
        // woken, not waited for: well within the grace
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let err = session.request("late".to_string()).unwrap_err();
        assert!(is_closed(&err), "{err}");
    }
}

#[test]
fn shutdown_lets_a_request_in_progress_finish() {
    for endpoint in [tcp(), unix("inflight")] {
        let (server, started) = device(&endpoint, ServerOptions::default());
        let client = client_of(&server);
        let slow = std::thread::spawn(move || {
            let mut session = client.connect().unwrap();
            let reply = session.request("sleep 300".to_string());
            (reply, session.request("next".to_string()))
        });
        eventually("the handler starts", || started.load(Ordering::SeqCst) == 1);
        let start = Instant::now();
        within(Duration::from_secs(5), move || {
            server.shutdown(Duration::from_secs(3))
        });
        let waited = start.elapsed();
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        let (reply, next) = slow.join().unwrap();
        assert_eq!(
            reply.unwrap(),
            "SLEEP 300",
            "the reply went out before the close"
        );
        let err = next.unwrap_err();
        assert!(is_closed(&err), "then the connection closed: {err}");
    }
}

#[test]
fn a_connection_that_never_sends_does_not_hold_up_shutdown() {
    let (server, _) = device(&tcp(), ServerOptions::default());
    let addr = server.local_endpoint().host_port().unwrap();
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    eventually("the server accepts", || server.stats().accepted() == 1);
    let start = Instant::now();
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_secs(2))
    });
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let mut rest = Vec::new();
    assert_eq!(
        silent.read_to_end(&mut rest).unwrap(),
        0,
        "a clean end of stream"
    );
}

#[test]
fn a_handler_outliving_the_grace_does_not_hang_shutdown() {
    let (server, started) = device(&tcp(), ServerOptions::default());
    let addr = server.local_endpoint().host_port().unwrap();
    let mut stuck = std::net::TcpStream::connect(addr).unwrap();
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stuck.write_all(b"sleep 2000\r\n").unwrap();
    eventually("the handler starts", || started.load(Ordering::SeqCst) == 1);
    let start = Instant::now();
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_millis(200))
    });
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    // the connection was closed under the handler: the end of stream (or
    // a reset) comes now, not the reply the handler would send at 2 s
    stuck
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut rest = Vec::new();
    match stuck.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "the connection stayed open: {e}"
        ),
    }
}

#[test]
fn dropping_the_server_shuts_it_down() {
    let (server, _) = device(&tcp(), ServerOptions::default());
    let client = client_of(&server);
    let mut session = client.connect().unwrap();
    assert_eq!(session.request("x".to_string()).unwrap(), "X");
    let endpoint = server.local_endpoint();
    within(Duration::from_secs(5), move || drop(server));
    assert!(session.request("y".to_string()).is_err());
    let fresh = Client::new(endpoint, text(SentinelCodec::crlf()), options());
    assert!(fresh.connect().is_err(), "no longer listening");
}

#[test]
fn a_connection_thread_serves_later_connections_and_ends_at_shutdown() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let threads = Arc::new(Mutex::new(Vec::new()));
    let seen = threads.clone();
    let server = Server::bind(
        &tcp(),
        text(SentinelCodec::crlf()),
        move |request: String, _: &ConnectionInfo| -> Result<Option<String>, HandlerError> {
            seen.lock().unwrap().push(std::thread::current().id());
            Ok(Some(request))
        },
    )
    .unwrap();
    let client = client_of(&server);
    for i in 0..20 {
        assert_eq!(client.request_once(format!("{i}")).unwrap(), format!("{i}"));
        // time for the server to see the end of stream and its thread to
        // wait for the next connection (not a timing assertion: a thread
        // not yet waiting only makes the server start another)
        std::thread::sleep(Duration::from_millis(20));
    }
    let distinct: HashSet<_> = threads.lock().unwrap().iter().copied().collect();
    // a thread each without reuse; one when every hand-off finds it waiting
    assert!(
        distinct.len() <= 10,
        "{} threads for 20 connections",
        distinct.len()
    );
    // the waiting thread wakes at shutdown: no 10 s idle wait
    within(Duration::from_secs(5), move || {
        server.shutdown(Duration::from_secs(2))
    });
}

/// A payload of `len` letters in a pattern that shows any byte out of place.
fn letters(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i * 7 + seed as usize) % 26) as u8)
        .collect()
}

#[test]
fn long_payloads_go_out_in_place_both_ways_and_arrive_whole() {
    // lengths around 16 KiB, where payloads stop being copied into the
    // write buffer, over the blocking server's own threads
    for endpoint in [tcp(), unix("long")] {
        let server = Server::bind(
            &endpoint,
            LengthCodec::new(),
            |mut r: bytes::BytesMut, _: &ConnectionInfo| {
                r.reverse();
                Ok::<_, HandlerError>(Some(r))
            },
        )
        .unwrap();
        let client = Client::new(server.local_endpoint(), LengthCodec::new(), options());
        let lengths = [5, 16 * 1024 - 1, 16 * 1024, 100_000, (1 << 20) + 3, 0, 7];
        within(Duration::from_secs(60), move || {
            let mut session = client.connect().unwrap();
            for (i, len) in lengths.into_iter().enumerate() {
                let request = letters(len, i as u8);
                let reply = session.request(&request[..]).unwrap();
                let mut want = request;
                want.reverse();
                assert!(reply[..] == want[..], "{len} bytes came back changed");
            }
            session.close().unwrap();
        });
        server.shutdown(Duration::from_secs(5));
    }
}

#[test]
fn a_long_reply_goes_out_after_the_short_one_queued_before_it_from_blocking_threads() {
    // `a`, `L`, `b` in one write, so in one read: `a`'s reply is queued
    // when `L`'s long one is written in place, behind it
    let server = Server::bind(
        &tcp(),
        LengthCodec::new(),
        |r: bytes::BytesMut, _: &ConnectionInfo| {
            let reply = match &r[..] {
                b"L" => bytes::BytesMut::from(&letters(200_000, 1)[..]),
                _ => r,
            };
            Ok::<_, HandlerError>(Some(reply))
        },
    )
    .unwrap();
    let addr = server.local_endpoint().host_port().unwrap();
    let (got, want) = within(Duration::from_secs(30), move || {
        let frame = |p: &[u8]| [&(p.len() as u32).to_be_bytes()[..], p].concat();
        let requests = [frame(b"a"), frame(b"L"), frame(b"b")].concat();
        let want = [frame(b"a"), frame(&letters(200_000, 1)), frame(b"b")].concat();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&requests).unwrap();
        let mut got = vec![0u8; want.len()];
        stream.read_exact(&mut got).unwrap();
        (got, want)
    });
    assert!(got == want, "the replies came back changed");
    server.shutdown(Duration::from_secs(5));
}
