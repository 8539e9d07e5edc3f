//! `tether serve mount`, driven through the real binary.

mod common;

use std::time::Duration;

use common::{serve, KillOnDrop, LIMIT};
use tether::pair::{PairConfig, TextPair};
use tether::sim::mount::{Axis, Command as MountCommand, Reply};
use tether::transport::Endpoint;

/// Starts `tether serve mount --connect PEER` and returns it with the
/// address of its first line.
fn serve_mount(peer: &Endpoint) -> (KillOnDrop, String) {
    serve(&[
        "mount",
        "--listen",
        "tcp://127.0.0.1:0",
        "--connect",
        &peer.to_string(),
    ])
}

#[tokio::test]
async fn serve_mount_answers_through_a_pair_and_stops_on_sigterm() {
    let client = TextPair::text(
        &"tcp://127.0.0.1:0".parse().unwrap(),
        PairConfig::default(),
        "\r\n",
    )
    .await
    .unwrap();
    let (child, addr) = serve_mount(&client.local_endpoint());
    let mount: Endpoint = addr.parse().unwrap();
    tokio::time::timeout(LIMIT, client.connect_to(&mount))
        .await
        .unwrap()
        .unwrap();

    let mut replies = Vec::new();
    for cmd in [
        MountCommand::take_control(1, 3),
        MountCommand::enable(2, 3, Axis::El),
    ] {
        client.write_text(&cmd.encode()).await.unwrap();
        for _ in 0..2 {
            let text = tokio::time::timeout(LIMIT, client.read_text())
                .await
                .unwrap()
                .unwrap();
            replies.push(Reply::parse(&text).unwrap());
        }
    }
    assert_eq!(
        replies,
        [
            Reply::Ack {
                seq: 1,
                timeout_ms: 0
            },
            Reply::Done {
                seq: 1,
                extra: vec![]
            },
            Reply::Ack {
                seq: 2,
                timeout_ms: 0
            },
            Reply::Done {
                seq: 2,
                extra: vec![]
            },
        ]
    );
    assert!(child.signal_and_wait("TERM").success());
    assert!(
        client.wait_disconnected(LIMIT).await,
        "the link goes down with the simulator"
    );
}

#[test]
fn serve_mount_waiting_for_its_peer_stops_on_sigint() {
    // Nobody listens there: the simulator keeps trying until interrupted.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (child, _) = serve_mount(&Endpoint::tcp("127.0.0.1", port));
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.signal_and_wait("INT").success());
}
