//! `tether serve mount`, driven through the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tether::pair::{PairConfig, TextPair};
use tether::sim::mount::{Axis, Command as MountCommand, Reply};
use tether::transport::Endpoint;

const TETHER: &str = env!("CARGO_BIN_EXE_tether");
const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `child` to exit, killing it (and failing) after `LIMIT`.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("process did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(mut child: Child, signal: &str) -> ExitStatus {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    wait_bounded(&mut child)
}

/// Starts `tether serve mount --connect PEER` and returns it with the
/// address of its first line.
fn serve_mount(peer: &Endpoint) -> (Child, String) {
    let mut child = Command::new(TETHER)
        .args([
            "serve",
            "mount",
            "--listen",
            "tcp://127.0.0.1:0",
            "--connect",
        ])
        .arg(peer.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .trim()
        .to_string();
    (child, addr)
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
    assert!(terminate(child, "TERM").success());
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
    assert!(terminate(child, "INT").success());
}
