//! A session over `tls://`, trusting a certificate authority from a PEM file.
//!
//! ```sh
//! tether serve lines --listen tls://127.0.0.1:0 --tls-self-signed --tls-write-ca /tmp/ca.pem
//! cargo run -p tether --example tls_session -- tls://127.0.0.1:PORT /tmp/ca.pem
//! ```
//! With no argument, the example starts its own simulated device with a
//! throw-away certificate authority.

use std::time::Duration;

use tether::framing::{text, SentinelCodec};
use tether::session::{Client, ClientOptions};
use tether::sim::lines::LinesDevice;
use tether::transport::tls::{self, TlsClientConfig};
use tether::transport::{Endpoint, Listener};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut _device = None;
    let (endpoint, trust): (Endpoint, TlsClientConfig) = match (args.next(), args.next()) {
        (Some(endpoint), Some(ca)) => (endpoint.parse()?, TlsClientConfig::trusting_pem_file(ca)?),
        (Some(_), None) => return Err("usage: tls_session [tls://HOST:PORT CA.pem]".into()),
        _ => {
            let certs = tls::self_signed(&["127.0.0.1"])?;
            let listener = Listener::bind_tls(&"tls://127.0.0.1:0".parse()?, certs.server).await?;
            let device = LinesDevice::new().serve_on(listener, b"\n", 4096);
            let endpoint = device.local_endpoint();
            _device = Some(device.spawn()); // serves while this handle lives
            (endpoint, certs.client)
        }
    };
    let options = ClientOptions::default()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .tls(trust);
    let client = Client::new(endpoint.clone(), text(SentinelCodec::lines()), options);

    let mut session = client.connect().await?;
    println!("connected to {endpoint}");
    println!("identity: {}", session.request("*IDN?".to_string()).await?);
    println!(
        "REV secret → {}",
        session.request("REV secret".to_string()).await?
    );
    session.close().await?;
    Ok(())
}
