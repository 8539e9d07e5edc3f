//! Byte streams: the bottom layer.
//!
//! Everything above this layer reads and writes a [`ByteStream`], whatever
//! carries it: TCP, TLS over TCP ([`tls`]), a Unix socket, Telnet, this
//! process's stdio, a child process or an in-memory pipe. An [`Endpoint`] names one as a URL, so a
//! single command-line flag reaches every transport.
//!
//! ```no_run
//! # async fn run() -> Result<(), tether::transport::TransportError> {
//! use std::time::Duration;
//! use tether::transport::{self, Endpoint, Listener};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let mut listener = Listener::bind(&"tcp://127.0.0.1:0".parse()?).await?;
//! let endpoint = listener.local_endpoint();
//! tokio::spawn(async move {
//!     let mut stream = listener.accept().await.unwrap();
//!     let mut buf = [0; 5];
//!     stream.read_exact(&mut buf).await.unwrap();
//!     stream.write_all(&buf).await.unwrap();
//! });
//! let mut stream = transport::connect(&endpoint, Duration::from_secs(1)).await?;
//! stream.write_all(b"hello").await?;
//! # Ok(()) }
//! ```

mod endpoint;
mod error;
mod listener;
mod stream;
pub mod telnet;
pub mod tls;

pub use endpoint::Endpoint;
pub use error::TransportError;
pub use listener::Listener;
pub use stream::{connect, connect_with, memory_pair, ByteStream, ConnectOptions, PeerAddr};
pub use telnet::{TelnetOptions, TelnetStream};
pub use tls::{TlsClientConfig, TlsServerConfig};
