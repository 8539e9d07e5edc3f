//! The `tls://` transport end to end: real sockets on 127.0.0.1, both ends
//! in this process, every wait bounded.

use std::time::{Duration, Instant};

use tether::framing::{text, SentinelCodec, TextCodec};
use tether::session::{Client, ClientOptions, RunningServer, SessionError};
use tether::sim::lines::LinesDevice;
use tether::transport::tls::{self, SelfSigned, TlsServerConfig};
use tether::transport::{self, ConnectOptions, Endpoint, Listener, PeerAddr, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn loopback() -> Endpoint {
    "tls://127.0.0.1:0".parse().unwrap()
}

fn certs() -> SelfSigned {
    tls::self_signed(&["127.0.0.1", "localhost"]).unwrap()
}

async fn lines_server(config: TlsServerConfig) -> RunningServer {
    let listener = Listener::bind_tls(&loopback(), config).await.unwrap();
    LinesDevice::new().serve_on(listener, b"\n", 4096).spawn()
}

fn lines_client(endpoint: &Endpoint, certs: &SelfSigned) -> Client<TextCodec<SentinelCodec>> {
    Client::new(
        endpoint.clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default()
            .connect_timeout(LIMIT)
            .request_timeout(Some(LIMIT))
            .tls(certs.client.clone()),
    )
}

async fn raw(endpoint: &Endpoint) -> TcpStream {
    TcpStream::connect(endpoint.host_port().unwrap())
        .await
        .unwrap()
}

/// Reads a raw socket until the server closes it; returns how long that took.
async fn wait_closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the server did not close the connection in time")
        {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

fn handshake_reason(err: &SessionError) -> String {
    match err {
        SessionError::Transport(e @ TransportError::TlsHandshake { .. }) => e.to_string(),
        other => panic!("expected a TLS handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_over_tls_carries_many_requests_and_one_shots() {
    let certs = certs();
    let server = lines_server(certs.server.clone()).await;
    let endpoint = server.local_endpoint().clone();
    assert!(
        endpoint.to_string().starts_with("tls://127.0.0.1:"),
        "{endpoint}"
    );

    let client = lines_client(&endpoint, &certs);
    let mut session = timeout(LIMIT, client.connect()).await.unwrap().unwrap();
    assert_eq!(session.request("SET volts 5".into()).await.unwrap(), "OK");
    assert_eq!(session.request("GET volts".into()).await.unwrap(), "5");
    assert_eq!(session.request("REV tls".into()).await.unwrap(), "slt");
    // A reply bigger than one TLS record (16 KiB) and than one read.
    let big = "x".repeat(3000);
    for _ in 0..3 {
        assert_eq!(session.request(format!("ECHO {big}")).await.unwrap(), big);
    }
    session.close().await.unwrap();

    let reply = timeout(LIMIT, client.request_once("*IDN?".to_string()))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("tether,lines,"), "{reply}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_certificate_for_a_dns_name_is_checked_against_the_host_connected_to() {
    let certs = tls::self_signed(&["localhost"]).unwrap();
    let server = lines_server(certs.server.clone()).await;
    let port = match server.local_endpoint() {
        Endpoint::Tls { port, .. } => *port,
        other => panic!("{other}"),
    };
    let by_name: Endpoint = format!("tls://localhost:{port}").parse().unwrap();
    let mut session = lines_client(&by_name, &certs).connect().await.unwrap();
    assert_eq!(session.request("ECHO hi".into()).await.unwrap(), "hi");
    session.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_gets_a_handshake_error_naming_the_endpoint() {
    let certs = certs();
    let stranger = certs_of_another_authority();
    let server = lines_server(certs.server.clone()).await;
    let endpoint = server.local_endpoint().clone();

    let err = timeout(LIMIT, lines_client(&endpoint, &stranger).connect())
        .await
        .unwrap()
        .unwrap_err();
    let message = handshake_reason(&err);
    assert!(message.contains(&endpoint.to_string()), "{message}");
    assert!(
        message.contains("unknown certificate authority"),
        "{message}"
    );

    // The server is unharmed.
    let mut session = lines_client(&endpoint, &certs).connect().await.unwrap();
    assert_eq!(
        session.request("ECHO still here".into()).await.unwrap(),
        "still here"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

fn certs_of_another_authority() -> SelfSigned {
    tls::self_signed(&["127.0.0.1"]).unwrap()
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let certs = tls::self_signed(&["device.example", "10.9.8.7"]).unwrap();
    let server = lines_server(certs.server.clone()).await;
    let endpoint = server.local_endpoint().clone();

    let err = timeout(LIMIT, lines_client(&endpoint, &certs).connect())
        .await
        .unwrap()
        .unwrap_err();
    let message = handshake_reason(&err);
    assert!(message.contains(&endpoint.to_string()), "{message}");
    assert!(message.contains("name mismatch"), "{message}");
    assert!(message.contains("127.0.0.1"), "{message}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_plain_tcp_client_is_dropped_without_disturbing_other_connections() {
    let certs = certs();
    let server = lines_server(certs.server.clone()).await;
    let endpoint = server.local_endpoint().clone();
    let client = lines_client(&endpoint, &certs);

    let mut before = client.connect().await.unwrap();
    assert_eq!(before.request("SET k v".into()).await.unwrap(), "OK");

    // Speaks the line protocol in clear, as if the server were plain TCP.
    let mut plain = raw(&endpoint).await;
    plain.write_all(b"*IDN?\nGET k\n").await.unwrap();
    wait_closed(&mut plain).await;

    // The established session and new ones go on.
    assert_eq!(before.request("GET k".into()).await.unwrap(), "v");
    let mut after = timeout(LIMIT, client.connect()).await.unwrap().unwrap();
    assert_eq!(after.request("GET k".into()).await.unwrap(), "v");
    before.close().await.unwrap();
    after.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_silent_peer_does_not_hold_up_the_accept_loop() {
    let certs = certs();
    // Far longer than this test may take: if handshakes ran one at a time in
    // the accept loop, nobody would get in behind the silent peer.
    let config = certs
        .server
        .clone()
        .handshake_timeout(Duration::from_secs(600));
    let server = lines_server(config).await;
    let endpoint = server.local_endpoint().clone();

    let silent = raw(&endpoint).await;
    let garbage = {
        let mut s = raw(&endpoint).await;
        s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        s
    };
    let client = lines_client(&endpoint, &certs);
    for i in 0..3 {
        let mut session = timeout(LIMIT, client.connect())
            .await
            .expect("a handshake waited behind a silent peer")
            .unwrap();
        assert_eq!(
            session.request(format!("ECHO {i}")).await.unwrap(),
            i.to_string()
        );
        session.close().await.unwrap();
    }
    drop((silent, garbage));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_peer_that_never_sends_a_client_hello_is_dropped_after_the_handshake_timeout() {
    let certs = certs();
    let handshake_timeout = Duration::from_millis(300);
    let server = lines_server(certs.server.clone().handshake_timeout(handshake_timeout)).await;
    let endpoint = server.local_endpoint().clone();

    let mut silent = raw(&endpoint).await;
    let client = lines_client(&endpoint, &certs);
    let mut session = client.connect().await.unwrap();
    assert_eq!(
        session.request("ECHO served".into()).await.unwrap(),
        "served"
    );

    let waited = wait_closed(&mut silent).await;
    assert!(
        waited + Duration::from_millis(50) >= handshake_timeout,
        "dropped after {waited:?}, before the {handshake_timeout:?} handshake timeout"
    );
    // Still serving, before and after.
    assert_eq!(session.request("ECHO again".into()).await.unwrap(), "again");
    session.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_in_the_connect_timeout_fails_in_time() {
    // A TCP listener that accepts and never answers the ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let endpoint: Endpoint = format!("tls://127.0.0.1:{port}").parse().unwrap();
    let options = ConnectOptions::new(Duration::from_millis(300)).tls(certs().client);
    let err = timeout(LIMIT, transport::connect_with(&endpoint, &options))
        .await
        .expect("connect_with ignored its timeout")
        .unwrap_err();
    assert!(
        matches!(err, TransportError::ConnectTimeout { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&endpoint.to_string()), "{err}");
}

#[tokio::test]
async fn a_tls_client_to_a_plain_tcp_server_gets_a_handshake_error() {
    let server = LinesDevice::new()
        .bind(&"tcp://127.0.0.1:0".parse().unwrap(), b"\n", 4096)
        .await
        .unwrap()
        .spawn();
    let port = match server.local_endpoint() {
        Endpoint::Tcp { port, .. } => *port,
        other => panic!("{other}"),
    };
    let endpoint: Endpoint = format!("tls://127.0.0.1:{port}").parse().unwrap();
    let err = timeout(LIMIT, lines_client(&endpoint, &certs()).connect())
        .await
        .unwrap()
        .unwrap_err();
    let message = handshake_reason(&err);
    assert!(message.contains(&endpoint.to_string()), "{message}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn streams_report_the_tcp_peer_and_see_plaintext_already_decrypted() {
    let certs = certs();
    let mut listener = Listener::bind_tls(&loopback(), certs.server.clone())
        .await
        .unwrap();
    let endpoint = listener.local_endpoint();
    let server = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        // One write, one TLS record, bigger than the client's first read.
        stream.write_all(&[7u8; 8192]).await.unwrap();
        stream.flush().await.unwrap();
        let mut done = [0u8; 1];
        let _ = stream.read(&mut done).await;
        stream.peer()
    });

    let options = ConnectOptions::new(LIMIT).tls(certs.client.clone());
    let mut stream = transport::connect_with(&endpoint, &options).await.unwrap();
    let PeerAddr::Tcp(addr) = stream.peer() else {
        panic!("peer {:?}", stream.peer())
    };
    assert_eq!(addr.to_string(), endpoint.host_port().unwrap());
    let mut half = vec![0u8; 4096];
    timeout(LIMIT, stream.read_exact(&mut half))
        .await
        .unwrap()
        .unwrap();
    // The rest sits decrypted inside TLS, not in the socket: readable() must say so.
    timeout(Duration::from_secs(2), stream.readable())
        .await
        .expect("readable() waited on the socket while plaintext was buffered")
        .unwrap();
    timeout(LIMIT, stream.read_exact(&mut half))
        .await
        .unwrap()
        .unwrap();
    assert!(half.iter().all(|&b| b == 7));
    stream.write_all(b"!").await.unwrap();
    let server_peer = timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(matches!(server_peer, PeerAddr::Tcp(a) if a.ip().is_loopback()));
}

#[tokio::test]
async fn listening_on_tls_needs_a_certificate() {
    let err = Listener::bind(&loopback()).await.unwrap_err();
    assert!(err.to_string().contains("bind_tls"), "{err}");
}

#[test]
fn the_blocking_client_speaks_tls() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let certs = certs();
    let server = runtime.block_on(lines_server(certs.server.clone()));
    let endpoint = server.local_endpoint().clone();

    let options = ClientOptions::default()
        .connect_timeout(LIMIT)
        .request_timeout(Some(LIMIT))
        .tls(certs.client.clone());
    let client =
        tether::blocking::Client::new(endpoint.clone(), text(SentinelCodec::lines()), options);
    let reply = client
        .with_session(|session| {
            assert_eq!(session.request("SET b 1".to_string())?, "OK");
            session.request("GET b".to_string())
        })
        .unwrap();
    assert_eq!(reply, "1");
    assert_eq!(client.request_once("REV ab".to_string()).unwrap(), "ba");

    let untrusting = tether::blocking::Client::new(
        endpoint.clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default()
            .connect_timeout(LIMIT)
            .tls(certs_of_another_authority().client),
    );
    let err = untrusting.connect().unwrap_err();
    let message = handshake_reason(&err);
    assert!(message.contains(&endpoint.to_string()), "{message}");
    runtime.block_on(server.shutdown(Duration::from_secs(1)));
}

#[test]
fn a_blocking_server_serves_tls() {
    let certs = certs();
    let server = tether::blocking::Server::bind_tls(
        &loopback(),
        certs.server.clone(),
        text(SentinelCodec::crlf()),
        |request: String,
         conn: &tether::session::ConnectionInfo|
         -> Result<Option<String>, tether::session::HandlerError> {
            Ok(Some(format!(
                "{} from {}",
                request.to_uppercase(),
                conn.peer
            )))
        },
        tether::session::ServerOptions::default(),
    )
    .unwrap();
    let endpoint = server.local_endpoint();
    assert!(matches!(endpoint, Endpoint::Tls { .. }), "{endpoint}");
    let client = tether::blocking::Client::new(
        endpoint,
        text(SentinelCodec::crlf()),
        ClientOptions::default()
            .connect_timeout(LIMIT)
            .request_timeout(Some(LIMIT))
            .tls(certs.client.clone()),
    );
    let reply = client.request_once("hi".to_string()).unwrap();
    assert!(reply.starts_with("HI from 127.0.0.1:"), "{reply}");
    server.shutdown(Duration::from_secs(1));
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_and_the_cap_frees_up_on_timeout() {
    let certs = certs();
    let handshake_timeout = Duration::from_millis(400);
    let config = certs
        .server
        .clone()
        .handshake_timeout(handshake_timeout)
        .max_pending_handshakes(1);
    let server = lines_server(config).await;
    let endpoint = server.local_endpoint().clone();

    // The one handshake slot is taken by a peer that says nothing …
    let mut silent = raw(&endpoint).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // … so the next client waits in the backlog until that peer is dropped.
    let start = Instant::now();
    let mut session = timeout(LIMIT, lines_client(&endpoint, &certs).connect())
        .await
        .unwrap()
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(session.request("ECHO in".into()).await.unwrap(), "in");
    assert!(
        waited + Duration::from_millis(100) >= handshake_timeout,
        "got in after {waited:?}: the cap of one handshake was not applied"
    );
    wait_closed(&mut silent).await;
    session.close().await.unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_reads_none_of_its_replies_is_let_go_too() {
    // Small replies each fit TLS's own buffer, so the write is taken at
    // once and the socket fills in the flush that sends them: that must be
    // timed too.
    use bytes::BytesMut;
    use tether::framing::LengthCodec;
    use tether::session::{ConnectionInfo, HandlerError, Server, ServerOptions};
    let certs = certs();
    let listener = Listener::bind_tls(&loopback(), certs.server.clone())
        .await
        .unwrap();
    let echo =
        |request: BytesMut, _: &ConnectionInfo| async move { Ok::<_, HandlerError>(Some(request)) };
    let server = Server::with_listener(listener, LengthCodec::new(), echo)
        .options(ServerOptions::default().write_stall_limit(Duration::from_millis(200)))
        .spawn();
    let options = ConnectOptions::new(LIMIT).tls(certs.client.clone());
    let stream = transport::connect_with(server.local_endpoint(), &options)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    // 32 KiB requests, 16 MiB of them, sent without reading a reply
    let sending = tokio::spawn(async move {
        let mut frame = (32u32 * 1024).to_be_bytes().to_vec();
        frame.resize(4 + 32 * 1024, b'x');
        for _ in 0..512 {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match timeout(LIMIT, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the server still holds the connection after {got} bytes"),
        }
    }
    assert!(got < 512 * (4 + 32 * 1024), "every reply came: {got}");
    sending.abort();
    server.shutdown(LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_payloads_written_in_place_cross_tls_whole_both_apis() {
    // TLS takes no vectored write: each part of a frame whose payload is
    // written in place goes in a write of its own, then the flush
    use bytes::{Bytes, BytesMut};
    use tether::framing::LengthCodec;
    use tether::session::{ConnectionInfo, HandlerError, Server};
    let certs = certs();
    let listener = Listener::bind_tls(&loopback(), certs.server.clone())
        .await
        .unwrap();
    let reverse = |mut request: BytesMut, _: &ConnectionInfo| async move {
        request.reverse();
        Ok::<_, HandlerError>(Some(request))
    };
    let server = Server::with_listener(listener, LengthCodec::new(), reverse).spawn();
    let options = ClientOptions::default()
        .connect_timeout(LIMIT)
        .request_timeout(Some(LIMIT))
        .tls(certs.client.clone());
    let lengths = [5usize, 16 * 1024, 300_000, 7];
    let payload = |len: usize| -> Bytes { (0..len).map(|i| (i % 251) as u8).collect() };
    let reversed = move |len: usize| -> Vec<u8> { payload(len).iter().rev().copied().collect() };
    let client = Client::new(
        server.local_endpoint().clone(),
        LengthCodec::new(),
        options.clone(),
    );
    let mut session = client.connect().await.unwrap();
    for len in lengths {
        let reply = session.request(payload(len)).await.unwrap();
        assert!(
            reply[..] == reversed(len)[..],
            "async: {len} bytes came back changed"
        );
    }
    session.close().await.unwrap();
    let endpoint = server.local_endpoint().clone();
    tokio::task::spawn_blocking(move || {
        let client = tether::blocking::Client::new(endpoint, LengthCodec::new(), options);
        let mut session = client.connect().unwrap();
        for len in lengths {
            let reply = session.request(payload(len)).unwrap();
            assert!(
                reply[..] == reversed(len)[..],
                "blocking: {len} bytes came back changed"
            );
        }
        session.close().unwrap();
    })
    .await
    .unwrap();
    server.shutdown(LIMIT).await;
}
