//! Talk to a line-protocol device over one long-lived session.
//!
//! ```sh
//! tether serve lines --sentinel '\r\n'          # prints: listening on 127.0.0.1:PORT
//! cargo run -p tether --example device_session -- 127.0.0.1:PORT
//! ```
//! With no argument, the example starts its own simulated device.

use std::time::Duration;

use tether::framing::{text, SentinelCodec};
use tether::session::{Client, ClientOptions, SessionError};
use tether::sim::lines::LinesDevice;
use tether::transport::Endpoint;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut _device = None;
    let endpoint: Endpoint = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => {
            let device = LinesDevice::new()
                .bind(&"127.0.0.1:0".parse()?, b"\r\n", 4096)
                .await?;
            let endpoint = device.local_endpoint();
            _device = Some(device.spawn()); // serves while this handle lives
            endpoint
        }
    };
    let options = ClientOptions::default()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_millis(500)));
    let client = Client::new(endpoint, text(SentinelCodec::crlf()), options);

    let mut session = client.connect().await?;
    println!("identity: {}", session.request("*IDN?".to_string()).await?);
    for volts in [1, 2, 5] {
        session.request(format!("SET volts {volts}")).await?;
        println!(
            "volts now {}",
            session.request("GET volts".to_string()).await?
        );
    }
    // A command slower than the deadline: the session is closed, not desynchronised.
    match session.request("SLEEP 2000".to_string()).await {
        Err(SessionError::Timeout { after }) => {
            println!("no reply within {after:?}; session closed")
        }
        other => println!("unexpected: {other:?}"),
    }
    // The sessionless mode opens a fresh connection per request.
    println!(
        "fresh connection says: {}",
        client.request_once("ECHO still fine".to_string()).await?
    );
    Ok(())
}
