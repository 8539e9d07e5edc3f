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
