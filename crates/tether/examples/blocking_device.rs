//! The blocking API: a plain `fn main` talking to a device.
//!
//! ```sh
//! tether serve lines                     # prints: listening on 127.0.0.1:PORT
//! cargo run -p tether --example blocking_device -- 127.0.0.1:PORT
//! ```

use tether::blocking::Client;
use tether::framing::{text, SentinelCodec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .ok_or("usage: blocking_device HOST:PORT")?;
    let client = Client::new(
        endpoint.parse()?,
        text(SentinelCodec::lines()),
        Default::default(),
    );
    let replies = client.with_session(|session| {
        let idn = session.request("*IDN?".to_string())?;
        let rev = session.request("REV blocking".to_string())?;
        Ok((idn, rev))
    })?;
    println!("{replies:?}");
    Ok(())
}
