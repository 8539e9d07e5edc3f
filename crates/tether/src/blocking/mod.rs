//! The same clients and servers for synchronous programs.
//!
//! Names mirror the async API: [`Client`], [`Session`], [`Server`],
//! [`Pair`], [`OneClientServer`], [`PacketConnection`]. A plain
//! `fn main` talks to a device in three lines:
//!
//! ```no_run
//! use tether::blocking::Client;
//! use tether::framing::{text, SentinelCodec};
//!
//! # fn main() -> Result<(), tether::session::SessionError> {
//! let client = Client::new("tcp://192.0.2.10:5025".parse()?, text(SentinelCodec::crlf()), Default::default());
//! let idn = client.with_session(|session| session.request("*IDN?".to_string()))?;
//! println!("{idn}");
//! # Ok(()) }
//! ```
//!
//! TCP and Unix sessions use blocking sockets directly (no runtime, one
//! syscall per read or write, deadlines as socket timeouts); the other
//! transports (TLS among them) run the async stream on a small private
//! runtime. Either way
//! the codecs, limits and errors are the async API's.

mod server;
mod session;

pub use crate::packet::blocking::PacketConnection;
pub use crate::pair::blocking::{OneClientServer, Pair};
pub use server::{RunningServer, Server};
pub use session::{Client, Session};
