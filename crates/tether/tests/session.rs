//! The session layer end to end: real sockets on 127.0.0.1, both ends in
//! this process, every wait bounded.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether::framing::{
    text, DuplexCodec, FixedLengthCodec, FramingError, LengthCodec, SentinelCodec,
};
use tether::session::{
    Client, ClientOptions, ConnectionInfo, HandlerError, Server, ServerOptions, SessionError,
};
use tether::sim::lines::LinesDevice;
use tether::transport::Endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> Endpoint {
    "tcp://127.0.0.1:0".parse().unwrap()
}

async fn lines_server(max_line: usize) -> tether::session::RunningServer {
    LinesDevice::new()
        .bind(&loopback(), b"\n", max_line)
        .await
        .unwrap()
        .spawn()
}

fn lines_client(endpoint: &Endpoint) -> Client<tether::framing::TextCodec<SentinelCodec>> {
    Client::new(
        endpoint.clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default(),
    )
}

async fn raw(endpoint: &Endpoint) -> TcpStream {
    TcpStream::connect(endpoint.host_port().unwrap())
        .await
        .unwrap()
}

/// Reads from a raw socket until `n` bytes or end of stream.
async fn read_some(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n {
        let got = timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("read timed out")
            .unwrap();
        if got == 0 {
            break;
        }
        out.extend_from_slice(&buf[..got]);
    }
    out
}

#[tokio::test]
async fn a_server_with_no_connection_limit_serves() {
    // usize::MAX as "no limit": the server must still serve, not die
    let server = Server::bind(
        &loopback(),
        SentinelCodec::lines(),
        |request: BytesMut, _: &ConnectionInfo| async move { Ok::<_, HandlerError>(Some(request)) },
    )
    .await
    .unwrap()
    .options(ServerOptions::default().max_connections(usize::MAX))
    .spawn();
    let client = Client::new(
        server.local_endpoint().clone(),
        SentinelCodec::lines(),
        ClientOptions::default(),
    );
    let reply = timeout(LIMIT, client.request_once(&b"still here"[..])).await;
    assert_eq!(&reply.unwrap().unwrap()[..], b"still here");
    server.shutdown(LIMIT).await;
}

/// Sends one 8 MiB length-prefixed request to `endpoint` from a socket
/// with a 4 KiB receive buffer, reads nothing for `idle`, then reads to the
/// end: how many reply bytes it got (all of them: 8 MiB + 4).
fn reply_bytes_after_reading_nothing_for(endpoint: &Endpoint, idle: Duration) -> usize {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = endpoint.host_port().unwrap().parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), LIMIT).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.set_write_timeout(Some(LIMIT)).unwrap();
    const LEN: usize = 8 << 20;
    let mut request = (LEN as u32).to_be_bytes().to_vec();
    request.resize(4 + LEN, b'x');
    stream.write_all(&request).unwrap();
    std::thread::sleep(idle);
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got += n,
        }
        if got == 4 + LEN {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_none_of_its_replies_is_let_go_after_the_stall_limit() {
    let options = ServerOptions::default().write_stall_limit(Duration::from_millis(200));
    let echo =
        |request: BytesMut, _: &ConnectionInfo| async move { Ok::<_, HandlerError>(Some(request)) };
    let server = Server::bind(&loopback(), LengthCodec::new(), echo)
        .await
        .unwrap()
        .options(options)
        .spawn();
    let endpoint = server.local_endpoint().clone();
    let got = tokio::task::spawn_blocking(move || {
        reply_bytes_after_reading_nothing_for(&endpoint, Duration::from_millis(1500))
    });
    let got = timeout(LIMIT, got).await.unwrap().unwrap();
    assert!(got < 4 + (8 << 20), "the async server waited: {got} bytes");
    server.shutdown(LIMIT).await;

    let blocking = tether::blocking::Server::bind_with(
        &loopback(),
        LengthCodec::new(),
        |request: BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(request)),
        options,
    )
    .unwrap();
    let endpoint = blocking.local_endpoint().clone();
    let got = tokio::task::spawn_blocking(move || {
        reply_bytes_after_reading_nothing_for(&endpoint, Duration::from_millis(1500))
    });
    let got = timeout(LIMIT, got).await.unwrap().unwrap();
    assert!(
        got < 4 + (8 << 20),
        "the blocking server waited: {got} bytes"
    );
    // a client that reads, however slowly, gets all of it
    let endpoint = blocking.local_endpoint().clone();
    let got = tokio::task::spawn_blocking(move || {
        reply_bytes_after_reading_nothing_for(&endpoint, Duration::from_millis(50))
    });
    assert_eq!(timeout(LIMIT, got).await.unwrap().unwrap(), 4 + (8 << 20));
}

/// A peer that accepts one connection and reads nothing (its receive
/// buffer 4 KiB): its endpoint, the thread holding the connection, and
/// the sender whose drop lets it go (it goes after 10 s anyway).
fn a_peer_that_never_reads() -> (
    Endpoint,
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Sender<()>,
) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    socket.listen(1).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let (let_go, hold) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (held, _) = listener.accept().unwrap();
        let _ = hold.recv_timeout(Duration::from_secs(10));
        drop(held);
    });
    (format!("tcp://{addr}").parse().unwrap(), holder, let_go)
}

#[tokio::test]
async fn sending_to_a_peer_that_never_reads_times_out_both_apis() {
    let big = vec![b'x'; 8 << 20];
    let options = ClientOptions::default().request_timeout(Some(Duration::from_millis(200)));
    let (endpoint, holder, let_go) = a_peer_that_never_reads();
    let client = Client::new(endpoint, LengthCodec::new(), options.clone());
    let mut session = client.connect().await.unwrap();
    let sent = timeout(LIMIT, session.send(&big[..])).await.unwrap();
    assert!(
        matches!(sent, Err(SessionError::Timeout { .. })),
        "{sent:?}"
    );
    assert!(!session.is_open(), "part of it may be out: closed");
    drop((session, let_go));
    tokio::task::spawn_blocking(move || holder.join().unwrap())
        .await
        .unwrap();

    let (endpoint, holder, let_go) = a_peer_that_never_reads();
    let sent = tokio::task::spawn_blocking(move || {
        let client = tether::blocking::Client::new(endpoint, LengthCodec::new(), options);
        let mut session = client.connect().unwrap();
        let started = std::time::Instant::now();
        let sent = session.send(&big[..]);
        (sent, started.elapsed())
    });
    let (sent, took) = timeout(LIMIT, sent).await.unwrap().unwrap();
    assert!(
        matches!(sent, Err(SessionError::Timeout { .. })),
        "{sent:?}"
    );
    assert!(took < Duration::from_secs(2), "the deadline held: {took:?}");
    drop(let_go);
    tokio::task::spawn_blocking(move || holder.join().unwrap())
        .await
        .unwrap();
}

/// The ska-ser-devices reference test: a server reverses 10,000-byte
/// fixed-length requests and ends each reply with `\n`; one client object,
/// two sessions, three requests each.
#[tokio::test]
async fn reference_reverse_fixed_length_requests() {
    const LEN: usize = 10_000;
    let server = Server::bind(
        &loopback(),
        DuplexCodec::new(FixedLengthCodec::new(LEN), SentinelCodec::lines()),
        |request: BytesMut, _: &ConnectionInfo| async move {
            Ok::<_, HandlerError>(Some(request.iter().rev().copied().collect::<Vec<u8>>()))
        },
    )
    .await
    .unwrap()
    .spawn();
    let client = Client::new(
        server.local_endpoint().clone(),
        DuplexCodec::new(SentinelCodec::lines(), FixedLengthCodec::new(LEN)),
        ClientOptions::default(),
    );
    let mut seed = 7u32;
    for _session in 0..2 {
        let mut session = timeout(LIMIT, client.connect()).await.unwrap().unwrap();
        for _ in 0..3 {
            let request: Vec<u8> = (0..LEN)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    b'a' + (seed >> 16) as u8 % 26
                })
                .collect();
            let reply = session.request(request.clone()).await.unwrap();
            let expected: Vec<u8> = request.into_iter().rev().collect();
            assert_eq!(&reply[..], &expected[..]);
        }
        session.close().await.unwrap();
    }
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_receive_given_up_leaves_the_session_open() {
    // waiting for an unasked frame in a select!, then moving on, is not a
    // cancelled request: no reply is owed, so nothing can be misread
    let server = lines_server(1 << 20).await;
    let client = lines_client(server.local_endpoint());
    let mut session = client.connect().await.unwrap();
    let waited = timeout(Duration::from_millis(50), session.receive()).await;
    assert!(waited.is_err(), "nothing was sent unasked");
    assert_eq!(session.request("REV abc".to_string()).await.unwrap(), "cba");
    // a request given up does close it: its reply would be read as the next
    let given_up = timeout(Duration::from_millis(50), async {
        session.request("SLEEP 1000".to_string()).await
    })
    .await;
    assert!(given_up.is_err(), "SLEEP 1000 answered within 50 ms");
    let e = session.request("REV abc".to_string()).await.unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    session.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_very_long_request_timeout_is_for_ever_not_a_panic() {
    let server = lines_server(1 << 20).await;
    let options = ClientOptions::default().request_timeout(Some(Duration::MAX));
    let client = Client::new(
        server.local_endpoint().clone(),
        text(SentinelCodec::lines()),
        options,
    );
    let mut session = client.connect().await.unwrap();
    assert_eq!(session.request("REV abc".to_string()).await.unwrap(), "cba");
    let mut blocking = tether::blocking::Client::new(
        server.local_endpoint().clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default().request_timeout(Some(Duration::MAX)),
    )
    .connect()
    .unwrap();
    let reply = tokio::task::spawn_blocking(move || blocking.request("REV xyz".to_string()));
    assert_eq!(
        timeout(LIMIT, reply).await.unwrap().unwrap().unwrap(),
        "zyx"
    );
    session.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_session_carries_many_requests_and_one_shot_works() {
    let server = lines_server(1 << 20).await;
    let client = lines_client(server.local_endpoint());
    let mut session = client.connect().await.unwrap();
    assert!(session
        .request("*IDN?".to_string())
        .await
        .unwrap()
        .starts_with("tether,lines,"));
    assert_eq!(
        session
            .request("SET colour blue".to_string())
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(session.request("REV abc".to_string()).await.unwrap(), "cba");
    session
        .send("ECHO no reply read".to_string())
        .await
        .unwrap();
    assert_eq!(session.receive().await.unwrap(), "no reply read");
    session.close().await.unwrap();
    // Sessionless: a connection per request, and the key store is shared.
    assert_eq!(
        client.request_once("GET colour".to_string()).await.unwrap(),
        "blue"
    );
    assert_eq!(server.stats().accepted(), 2);
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn pipelined_requests_in_one_write_get_replies_in_order() {
    let server = lines_server(1 << 20).await;
    let mut stream = raw(server.local_endpoint()).await;
    stream
        .write_all(b"ECHO 1\nREV 32\nSLEEP 20\nECHO 4\nECH")
        .await
        .unwrap();
    stream.write_all(b"O 5\n").await.unwrap();
    let expected = b"1\n23\nOK\n4\n5\n";
    assert_eq!(read_some(&mut stream, expected.len()).await, expected);
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_second_client_is_served_while_the_first_holds_its_session() {
    let server = lines_server(1 << 20).await;
    let client = lines_client(server.local_endpoint());
    let mut first = client.connect().await.unwrap();
    assert_eq!(first.request("ECHO one".to_string()).await.unwrap(), "one");
    // The first session is mid-conversation: its next request sleeps.
    let slow = tokio::spawn(async move {
        let reply = first.request("SLEEP 1000".to_string()).await;
        (first, reply)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = client.connect().await.unwrap();
    assert_eq!(second.request("ECHO two".to_string()).await.unwrap(), "two");
    assert!(
        !slow.is_finished(),
        "the second client was served while the first waited"
    );
    let (mut first, reply) = timeout(LIMIT, slow).await.unwrap().unwrap();
    assert_eq!(reply.unwrap(), "OK");
    assert_eq!(
        first.request("ECHO again".to_string()).await.unwrap(),
        "again"
    );
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_timeout_closes_the_session_so_the_late_reply_is_never_misread() {
    let server = lines_server(1 << 20).await;
    let client = Client::new(
        server.local_endpoint().clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default().request_timeout(Some(Duration::from_millis(100))),
    );
    let mut session = client.connect().await.unwrap();
    match session.request("SLEEP 400".to_string()).await {
        Err(SessionError::Timeout { after }) => assert_eq!(after, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!session.is_open());
    match session.request("ECHO next".to_string()).await {
        Err(SessionError::Closed { reason }) => {
            assert!(reason.contains("did not come"), "{reason}")
        }
        other => panic!("expected a closed session, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A new session is clean: its first reply is its own.
    let mut fresh = client.connect().await.unwrap();
    assert_eq!(
        fresh.request("ECHO next".to_string()).await.unwrap(),
        "next"
    );
    server.shutdown(LIMIT).await;
}

/// The deadline timer is reused from request to request: each request gets
/// the whole deadline afresh (not what was left of the first one), and the
/// timer still fires after many requests have moved it.
#[tokio::test]
async fn every_request_gets_the_whole_deadline_and_it_still_fires_later() {
    let server = lines_server(1 << 20).await;
    let client = Client::new(
        server.local_endpoint().clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default().request_timeout(Some(Duration::from_millis(300))),
    );
    let mut session = client.connect().await.unwrap();
    // Together well past one deadline; each alone well within it.
    for _ in 0..5 {
        assert_eq!(
            session.request("SLEEP 100".to_string()).await.unwrap(),
            "OK"
        );
    }
    let started = std::time::Instant::now();
    let late = timeout(LIMIT, session.request("SLEEP 2000".to_string()))
        .await
        .expect("the deadline fired");
    assert!(
        matches!(late, Err(SessionError::Timeout { .. })),
        "{late:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(290));
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_cancelled_request_poisons_the_session() {
    let server = lines_server(1 << 20).await;
    let mut session = lines_client(server.local_endpoint())
        .connect()
        .await
        .unwrap();
    let cancelled = timeout(
        Duration::from_millis(50),
        session.request("SLEEP 300".to_string()),
    )
    .await;
    assert!(cancelled.is_err(), "the outer timeout dropped the request");
    match session.request("ECHO x".to_string()).await {
        Err(SessionError::Closed { reason }) => assert!(reason.contains("cancelled"), "{reason}"),
        other => panic!("expected a closed session, got {other:?}"),
    }
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_line_too_long_closes_only_that_connection() {
    let server = lines_server(64).await;
    let client = lines_client(server.local_endpoint());
    let mut bystander = client.connect().await.unwrap();
    assert_eq!(
        bystander.request("ECHO before".to_string()).await.unwrap(),
        "before"
    );

    let mut offender = raw(server.local_endpoint()).await;
    offender.write_all(&[b'x'; 200]).await.unwrap();
    let reply = read_some(&mut offender, usize::MAX).await; // reads to end of stream
    assert_eq!(reply, b"ERR line too long\n");

    assert_eq!(
        bystander.request("ECHO after".to_string()).await.unwrap(),
        "after"
    );
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_client_vanishing_mid_frame_frees_its_connection() {
    let server = lines_server(1 << 20).await;
    for _ in 0..3 {
        let mut gone = raw(server.local_endpoint()).await;
        gone.write_all(b"ECHO never fini").await.unwrap();
        drop(gone);
    }
    let mut session = lines_client(server.local_endpoint())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        session
            .request("ECHO still here".to_string())
            .await
            .unwrap(),
        "still here"
    );
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn non_utf8_is_lossless_on_the_device_and_named_by_the_text_codec() {
    let server = lines_server(1 << 20).await;
    let mut stream = raw(server.local_endpoint()).await;
    stream.write_all(b"REV \xff\xfeok\n").await.unwrap();
    assert_eq!(read_some(&mut stream, 5).await, b"ko\xfe\xff\n");

    // A text session reports where the invalid byte is, and stays usable.
    let mut session = lines_client(server.local_endpoint())
        .connect()
        .await
        .unwrap();
    let bad = String::from_utf8_lossy(b"ab").to_string() + "\u{fffd}";
    assert_eq!(session.request(format!("ECHO {bad}")).await.unwrap(), bad);
    let raw_bytes = Client::new(
        server.local_endpoint().clone(),
        SentinelCodec::lines(),
        ClientOptions::default(),
    );
    let mut byte_session = raw_bytes.connect().await.unwrap();
    let reply = byte_session.request(&b"REV \xffab"[..]).await.unwrap();
    assert_eq!(&reply[..], b"ba\xff");
    let mut text_session = lines_client(server.local_endpoint())
        .connect()
        .await
        .unwrap();
    text_session.send("SET k x".to_string()).await.unwrap();
    assert_eq!(text_session.receive().await.unwrap(), "OK");
    byte_session.request(&b"SET k ab\xffcd"[..]).await.unwrap();
    match text_session.request("GET k".to_string()).await {
        Err(SessionError::Framing(FramingError::InvalidUtf8 { position: 2 })) => {}
        other => panic!("expected InvalidUtf8 at 2, got {other:?}"),
    }
    assert!(
        text_session.is_open(),
        "one bad frame does not end the session"
    );
    assert_eq!(
        text_session.request("ECHO fine".to_string()).await.unwrap(),
        "fine"
    );
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn a_refused_connection_names_the_endpoint() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let endpoint: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let client = Client::new(
        endpoint.clone(),
        SentinelCodec::lines(),
        ClientOptions::default().connect_timeout(Duration::from_secs(2)),
    );
    let err = timeout(LIMIT, client.connect()).await.unwrap().unwrap_err();
    assert!(err.to_string().contains(&endpoint.to_string()), "{err}");
}

#[tokio::test]
async fn a_malformed_endpoint_names_the_wrong_part() {
    let err = "tcp://127.0.0.1:port".parse::<Endpoint>().unwrap_err();
    assert!(err.to_string().contains("\"port\""), "{err}");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_without_disturbing_others() {
    let server = LinesDevice::new()
        .bind(&loopback(), b"\n", 1024)
        .await
        .unwrap()
        .options(ServerOptions::default().max_connections(1))
        .spawn();
    let client = lines_client(server.local_endpoint());
    let mut first = client.connect().await.unwrap();
    assert_eq!(first.request("ECHO 1".to_string()).await.unwrap(), "1");
    let mut extra = raw(server.local_endpoint()).await;
    assert_eq!(
        read_some(&mut extra, usize::MAX).await,
        b"",
        "closed at once"
    );
    assert_eq!(first.request("ECHO 2".to_string()).await.unwrap(), "2");
    assert_eq!(server.stats().refused(), 1);
    first.close().await.unwrap();
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn handler_errors_close_only_their_connection() {
    let server = Server::bind(
        &loopback(),
        text(SentinelCodec::lines()),
        |req: String, _: &ConnectionInfo| async move {
            if req == "boom" {
                Err::<Option<String>, HandlerError>("handler exploded".into())
            } else if req == "quiet" {
                Ok(None)
            } else {
                Ok(Some(req))
            }
        },
    )
    .await
    .unwrap()
    .spawn();
    let client = lines_client(server.local_endpoint());
    let mut good = client.connect().await.unwrap();
    let mut bad = client.connect().await.unwrap();
    bad.send("quiet".to_string()).await.unwrap();
    assert!(matches!(
        bad.request("boom".to_string()).await,
        Err(SessionError::Disconnected)
    ));
    assert_eq!(good.request("fine".to_string()).await.unwrap(), "fine");
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_progress() {
    let server = lines_server(1024).await;
    let endpoint = server.local_endpoint().clone();
    let mut session = lines_client(&endpoint).connect().await.unwrap();
    let in_flight = tokio::spawn(async move { session.request("SLEEP 200".to_string()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    timeout(LIMIT, server.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        timeout(LIMIT, in_flight).await.unwrap().unwrap().unwrap(),
        "OK"
    );
    assert!(
        TcpStream::connect(endpoint.host_port().unwrap())
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn graceful_shutdown_gives_up_after_the_grace_period() {
    let server = lines_server(1024).await;
    let mut session = lines_client(server.local_endpoint())
        .connect()
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move { session.request("SLEEP 30000".to_string()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    timeout(LIMIT, server.shutdown(Duration::from_millis(100)))
        .await
        .unwrap();
    let outcome = timeout(LIMIT, in_flight).await.unwrap().unwrap();
    assert!(
        matches!(outcome, Err(SessionError::Disconnected)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn unix_socket_sessions() {
    let path = std::env::temp_dir().join(format!("tether-test-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let endpoint = Endpoint::Unix(path.clone());
    let server = LinesDevice::new()
        .bind(&endpoint, b"\r\n", 1024)
        .await
        .unwrap()
        .spawn();
    let client = Client::new(
        endpoint,
        text(SentinelCodec::crlf()),
        ClientOptions::default(),
    );
    let mut session = client.connect().await.unwrap();
    assert_eq!(
        session.request("REV unix".to_string()).await.unwrap(),
        "xinu"
    );
    server.shutdown(LIMIT).await;
    assert!(!path.exists(), "the socket file is removed");
}

#[tokio::test]
async fn exec_sessions_talk_to_a_child_process() {
    let client = Client::new(
        "exec:cat".parse().unwrap(),
        text(SentinelCodec::lines()),
        ClientOptions::default(),
    );
    let mut session = client.connect().await.unwrap();
    assert_eq!(
        session.request("hello child".to_string()).await.unwrap(),
        "hello child"
    );
    session.close().await.unwrap();
}

/// A scripted Telnet device: negotiates options, sends a banner, `IAC IAC`,
/// and data holding 0x00 and 0x11; then answers one line.
#[tokio::test]
async fn telnet_loses_no_data_and_refuses_every_option() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let device = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut script = vec![0xFF, 0xFD, 0x01, 0xFF, 0xFB, 0x03, 0xFF, 0xFD, 0x18];
        script.extend_from_slice(b"Welcome\n");
        script.extend_from_slice(&[0xFF, 0xFA, 0x18, 0x01, 0xFF, 0xF0]); // SB TTYPE SEND SE
        script.extend_from_slice(&[b'd', 0x00, 0x11, 0xFF, 0xFF, b'z', b'\n']);
        s.write_all(&script).await.unwrap();
        // The three refusals, then the request with its 0xFF doubled.
        let refusals = [0xFF, 0xFC, 0x01, 0xFF, 0xFE, 0x03, 0xFF, 0xFC, 0x18];
        let request = [b'R', 0xFF, 0xFF, b'\n'];
        let got = read_some(&mut s, refusals.len() + request.len()).await;
        s.write_all(b"done\n").await.unwrap();
        got.to_vec() == [&refusals[..], &request[..]].concat()
    });
    let client = Client::new(
        format!("telnet://127.0.0.1:{port}").parse().unwrap(),
        SentinelCodec::lines(),
        ClientOptions::default(),
    );
    let mut session = client.connect().await.unwrap();
    assert_eq!(session.receive().await.unwrap(), "Welcome");
    assert_eq!(
        &session.receive().await.unwrap()[..],
        [b'd', 0x00, 0x11, 0xFF, b'z']
    );
    assert_eq!(
        session
            .request(Bytes::from_static(&[b'R', 0xFF]))
            .await
            .unwrap(),
        "done"
    );
    assert!(
        timeout(LIMIT, device).await.unwrap().unwrap(),
        "the device saw refusals and an escaped request"
    );
}

#[tokio::test]
async fn graceful_shutdown_closes_an_idle_connection_at_once() {
    let server = lines_server(1024).await;
    let mut stream = raw(server.local_endpoint()).await;
    // one request, so that the connection waits in its read loop
    stream.write_all(b"ECHO x\n").await.unwrap();
    let mut buf = [0u8; 256];
    timeout(LIMIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    // a long grace: only an idle connection left open would use it up
    timeout(LIMIT, server.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown finished");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited for an idle connection: {:?}",
        started.elapsed()
    );
    let end = timeout(LIMIT, stream.read(&mut buf)).await.unwrap();
    assert!(
        matches!(end, Ok(0)),
        "the client sees a clean end of stream: {end:?}"
    );
}

/// A payload of `len` letters in a pattern that shows any byte out of place
/// (no `\n`, so the sentinel codec carries it too).
fn letters(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| b'a' + ((i * 7 + seed as usize) % 26) as u8)
        .collect()
}

/// Lengths around the one where the sessions stop copying payloads into
/// their write buffer (16 KiB) and write them in place instead.
const AROUND_IN_PLACE: [usize; 7] = [5, 16 * 1024 - 1, 16 * 1024, 100_000, (1 << 20) + 3, 0, 7];

/// A codec that counts the payloads it has had written in place: what
/// tells a payload written from the caller's bytes from one copied.
#[derive(Clone)]
struct Counted<C> {
    inner: C,
    in_place: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<C> Counted<C> {
    fn new(inner: C) -> Self {
        Counted {
            inner,
            in_place: Default::default(),
        }
    }

    fn in_place(&self) -> usize {
        self.in_place.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<C: tokio_util::codec::Decoder> tokio_util::codec::Decoder for Counted<C> {
    type Item = C::Item;
    type Error = C::Error;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<C::Item>, C::Error> {
        self.inner.decode(buf)
    }
}

impl<C: tokio_util::codec::Encoder<T>, T> tokio_util::codec::Encoder<T> for Counted<C> {
    type Error = C::Error;
    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), C::Error> {
        self.inner.encode(item, dst)
    }
}

impl<C: tether::framing::FrameEncoder<T>, T> tether::framing::FrameEncoder<T> for Counted<C> {
    fn encode_around(
        &mut self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, FramingError> {
        self.inner.encode_around(item, dst)
    }

    fn payload<'a>(&self, item: &'a T) -> &'a [u8] {
        self.in_place
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.payload(item)
    }
}

/// Sends every length of [`AROUND_IN_PLACE`] through a session and a
/// server speaking `codec`; the server replies with the request reversed.
/// Every long payload, request and reply, went out in place.
async fn long_and_short_round_trip<C>(codec: C)
where
    C: tokio_util::codec::Decoder<Item = BytesMut, Error = FramingError>
        + tether::framing::FrameEncoder<BytesMut>
        + tether::framing::FrameEncoder<Bytes>
        + Clone
        + Send
        + 'static,
{
    let codec = Counted::new(codec);
    let reverse = |mut request: BytesMut, _: &ConnectionInfo| async move {
        request.reverse();
        Ok::<_, HandlerError>(Some(request))
    };
    let server = Server::bind(&loopback(), codec.clone(), reverse)
        .await
        .unwrap()
        .spawn();
    let client = Client::new(
        server.local_endpoint().clone(),
        codec.clone(),
        ClientOptions::default(),
    );
    let mut session = client.connect().await.unwrap();
    let mut long = 0;
    for (i, len) in AROUND_IN_PLACE.into_iter().enumerate() {
        let request = letters(len, i as u8);
        let reply = timeout(LIMIT, session.request(request.clone()))
            .await
            .unwrap()
            .unwrap();
        let mut want = request.to_vec();
        want.reverse();
        assert!(reply[..] == want[..], "{len} bytes came back changed");
        long += usize::from(len >= tether::framing::BY_REFERENCE);
        assert_eq!(
            codec.in_place(),
            2 * long,
            "after {len} bytes: requests and replies in place"
        );
    }
    session.close().await.unwrap();
    server.shutdown(LIMIT).await;
}

#[tokio::test]
async fn long_payloads_go_out_in_place_and_arrive_whole_between_short_ones() {
    long_and_short_round_trip(LengthCodec::new()).await;
    long_and_short_round_trip(SentinelCodec::lines()).await;
    long_and_short_round_trip(LengthCodec::with_prefix(3, 1 << 21)).await;
}

/// A device whose request `L` gets a long reply (200,000 letters), and
/// every other request itself back.
fn long_for_l(request: BytesMut) -> BytesMut {
    match &request[..] {
        b"L" => BytesMut::from(&letters(200_000, 1)[..]),
        _ => request,
    }
}

/// Requests `a`, `L`, `b` in one write (`LengthCodec` frames), and the
/// replies expected.
fn a_long_b() -> (Vec<u8>, Vec<u8>) {
    let frame = |payload: &[u8]| [&(payload.len() as u32).to_be_bytes()[..], payload].concat();
    let requests = [frame(b"a"), frame(b"L"), frame(b"b")].concat();
    let replies = [frame(b"a"), frame(&letters(200_000, 1)), frame(b"b")].concat();
    (requests, replies)
}

#[tokio::test]
async fn a_long_reply_goes_out_after_the_short_one_queued_before_it() {
    // the three requests arrive in one read: `a`'s reply is queued when
    // `L`'s is written in place, behind it
    let handler = |request: BytesMut, _: &ConnectionInfo| async move {
        Ok::<_, HandlerError>(Some(long_for_l(request)))
    };
    let server = Server::bind(&loopback(), LengthCodec::new(), handler)
        .await
        .unwrap()
        .spawn();
    let mut stream = raw(server.local_endpoint()).await;
    let (requests, replies) = a_long_b();
    stream.write_all(&requests).await.unwrap();
    let got = read_some(&mut stream, replies.len()).await;
    assert!(
        got == replies,
        "the replies came back as {} bytes, changed",
        got.len()
    );
    server.shutdown(LIMIT).await;
}
