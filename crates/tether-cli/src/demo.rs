//! `tether demo`: an embedded server on loopback, clients through every
//! layer, a few readable lines, exit 0 when everything behaved.

use std::time::{Duration, Instant};

use tether::framing::{text, SentinelCodec, TextCodec};
use tether::session::{Client, ClientOptions};
use tether::sim::lines::LinesDevice;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::CliResult;

/// Fails the demo with a message when a reply is not what it should be.
macro_rules! expect {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

pub async fn run() -> CliResult {
    let started = Instant::now();
    lines_section().await?;
    tls_section().await?;
    crate::mount_cmd::demo_section().await?;
    crate::packet_cmd::demo_section().await?;
    println!("demo: all sections passed in {:.2?}", started.elapsed());
    Ok(())
}

async fn lines_section() -> CliResult {
    let server = LinesDevice::new()
        .bind(&"tcp://127.0.0.1:0".parse()?, b"\n", 64 * 1024)
        .await?
        .spawn();
    let endpoint = server.local_endpoint().clone();
    println!("lines device simulator listening on {endpoint}");
    let client: Client<TextCodec<SentinelCodec>> = Client::new(
        endpoint.clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default(),
    );

    // One session, several requests.
    let mut session = client.connect().await?;
    let mut transcript = Vec::new();
    for request in ["*IDN?", "SET gain 12", "GET gain", "REV stressed"] {
        let reply = session.request(request.to_string()).await?;
        transcript.push(format!("{request} → {reply}"));
    }
    session.close().await?;
    println!("  session:      {}", transcript.join(" | "));
    expect!(
        transcript[2].ends_with("12"),
        "GET gain should give 12: {transcript:?}"
    );

    // Sessionless: a new connection per request.
    let before = server.stats().accepted();
    let a = client.request_once("ECHO first".to_string()).await?;
    let b = client.request_once("ECHO second".to_string()).await?;
    let opened = server.stats().accepted() - before;
    println!("  sessionless:  ECHO first → {a} | ECHO second → {b} ({opened} connections opened)");
    expect!(
        opened == 2,
        "sessionless mode should open 2 connections, opened {opened}"
    );

    // Two clients at once: a slow request does not hold up another client.
    let mut slow = client.connect().await?;
    let mut quick = client.connect().await?;
    let t0 = Instant::now();
    let slow_task = tokio::spawn(async move {
        let reply = slow.request("SLEEP 300".to_string()).await;
        (reply, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let quick_reply = quick.request("ECHO not kept waiting".to_string()).await?;
    let quick_at = t0.elapsed();
    let (slow_reply, slow_at) = slow_task.await?;
    println!(
        "  two clients:  SLEEP 300 → {} after {:.0?}; meanwhile ECHO → {quick_reply} after {:.0?}",
        slow_reply?, slow_at, quick_at
    );
    expect!(
        quick_at < slow_at,
        "the second client should be answered first"
    );

    // Bad requests: an unknown command, and a line over the limit.
    let unknown = quick.request("LAUNCH rockets".to_string()).await?;
    let mut raw = tokio::net::TcpStream::connect(endpoint.host_port().unwrap_or_default()).await?;
    raw.write_all(&vec![b'x'; 100 * 1024]).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut reply)).await??;
    drop(raw);
    let reply = String::from_utf8_lossy(&reply);
    println!(
        "  bad input:    LAUNCH rockets → {unknown} | a 100 KiB line → {} (connection closed)",
        reply.trim_end()
    );
    expect!(
        reply == "ERR line too long\n",
        "an oversize line should get ERR line too long"
    );
    let still = quick.request("ECHO others unaffected".to_string()).await?;
    println!("  other connections go on: ECHO → {still}");

    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

/// The same device over `tls://`, with a throw-away certificate authority.
async fn tls_section() -> CliResult {
    let certs = tether::transport::tls::self_signed(&["127.0.0.1"])?;
    let listener =
        tether::transport::Listener::bind_tls(&"tls://127.0.0.1:0".parse()?, certs.server).await?;
    let server = LinesDevice::new()
        .serve_on(listener, b"\n", 64 * 1024)
        .spawn();
    let endpoint = server.local_endpoint().clone();
    let trusting = ClientOptions::default().tls(certs.client);
    let client = Client::new(endpoint.clone(), text(SentinelCodec::lines()), trusting);
    let t0 = Instant::now();
    let mut session = client.connect().await?;
    let handshake = t0.elapsed();
    let reply = session.request("REV encrypted".to_string()).await?;
    session.close().await?;
    let stranger = tether::transport::tls::self_signed(&["127.0.0.1"])?.client;
    let untrusting = Client::new(
        endpoint.clone(),
        text(SentinelCodec::lines()),
        ClientOptions::default().tls(stranger),
    );
    let refused = match untrusting.connect().await {
        Ok(_) => return Err("a client that does not trust the certificate got in".into()),
        Err(e) => e.to_string(),
    };
    println!("lines device over TLS 1.3 on {endpoint}");
    println!("  session:      REV encrypted → {reply} (connect + handshake {handshake:.0?})");
    println!("  untrusted:    {refused}");
    expect!(reply == "detpyrcne", "REV over TLS gave {reply}");
    expect!(
        refused.contains("unknown certificate authority"),
        "an untrusted client should be refused for its CA: {refused}"
    );
    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
