//! The client/server pair: two one-way sockets acting as one link.
//!
//! Some controllers (the LSST telescope mount's, for one) talk over two
//! TCP connections: each side writes only on a connection it opens to the
//! other, and reads only on a connection the other opened to it.
//!
//! ```text
//!        side A                                      side B
//!  ┌──────────────────┐   A's client connection  ┌──────────────────┐
//!  │ Pair  write ─────┼─────────────────────────▶│ OneClientServer  │
//!  │                  │                          │  read            │
//!  │ OneClientServer  │   B's client connection  │                  │
//!  │  read ◀──────────┼──────────────────────────┼───── write  Pair │
//!  └──────────────────┘                          └──────────────────┘
//! ```
//!
//! - [`OneClientServer`] listens and reads frames from one client at a
//!   time; a second client is refused without disturbing the first, and a
//!   client that goes away is noticed at once.
//! - [`Pair`] writes on its client connection and reads on its own
//!   `OneClientServer`. [`Pair::connect`] retries the client connection
//!   every [`retry_interval`](PairConfig::retry_interval) and waits for the
//!   peer to connect back, in either order, within one deadline.
//!   [`Pair::connected`] is true when both connections are up; the
//!   [connect callback](PairConfig::on_connect) runs on every change of it
//!   and only then.
//! - When either connection drops the link is lost: the pair closes the
//!   other one too (so the peer notices), waiting readers and writers get
//!   [`PairError::ConnectionLost`], and `connect` restores the link on the
//!   same pair. A drop on the write-only connection is noticed because the
//!   pair keeps reading it for end-of-stream.
//! - Any codec works in each direction (tokio-util `Encoder` for writes,
//!   `Decoder` for reads); [`TextPair`] carries text messages with a
//!   terminator (`\r\n` by default) and JSON lines, decoded strictly.
//! - The connection state is a sans-IO state machine (`core.rs`); the
//!   tokio driver around it is thin. [`blocking`] offers the same API to
//!   synchronous programs.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tether::pair::PairError> {
//! use tether::pair::{Pair, PairConfig};
//!
//! let any_port = "tcp://127.0.0.1:0".parse()?;
//! let a = Pair::text(&any_port, PairConfig::default(), "\r\n").await?;
//! let b = Pair::text(&any_port, PairConfig::default(), "\r\n").await?;
//! let (a_at, b_at) = (a.local_endpoint(), b.local_endpoint());
//! // Each connects to the other; both wait until the link is up both ways.
//! let (ra, rb) = tokio::join!(a.connect_to(&b_at), b.connect_to(&a_at));
//! ra?;
//! rb?;
//! assert!(a.connected() && b.connected());
//!
//! a.write_text("hello").await?;
//! assert_eq!(b.read_text().await?, "hello");
//! b.write_json(&serde_json::json!({"answer": 42})).await?;
//! let v: serde_json::Value = a.read_json().await?;
//! assert_eq!(v["answer"], 42);
//!
//! b.close().await;
//! assert!(a.read().await.unwrap_err().is_connection_lost());
//! # Ok(()) }
//! ```
//!
//! What the pair does not do: it does not reconnect by itself (call
//! `connect` again, as the mount simulator in [`crate::sim`] does), and it
//! does not match requests to replies — that is the protocol's business.

pub mod blocking;
mod core;
mod error;
mod link;
mod server;
mod text;

pub use error::PairError;
pub use link::{
    ConnectCallback, Pair, PairConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RETRY_INTERVAL,
    DEFAULT_WRITE_QUEUE, DEFAULT_WRITE_STALL_LIMIT,
};
pub use server::{OneClientServer, ServerConfig, DEFAULT_READ_QUEUE};
pub use text::{TextPair, DEFAULT_TERMINATOR};
