//! Sessions: request/response conversations through a codec.
//!
//! A [`Client`] opens [`Session`]s to an endpoint; a session sends requests
//! and reads their replies in order, each within a deadline. A [`Server`]
//! serves every connection at the same time, one [`Handler`] for all.
//! Both drive the sans-IO codecs of [`crate::framing`] over any
//! [`crate::transport`] stream; a payload of 16 KiB or more goes out from
//! the request or reply itself, not copied (see
//! [`FrameEncoder`](crate::framing::FrameEncoder)). A codec of your own
//! needs `impl FrameEncoder<Item> for YourCodec {}` to be used here.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tether::framing::{text, SentinelCodec};
//! use tether::session::{Client, ClientOptions, ConnectionInfo, HandlerError, Server};
//!
//! let server = Server::bind(&"127.0.0.1:0".parse()?, text(SentinelCodec::lines()),
//!     |req: String, _: &ConnectionInfo| async move { Ok::<_, HandlerError>(Some(req.chars().rev().collect::<String>())) },
//! ).await?.spawn();
//!
//! let client = Client::new(server.local_endpoint().clone(), text(SentinelCodec::lines()), ClientOptions::default());
//! let mut session = client.connect().await?;
//! assert_eq!(session.request("abc".to_string()).await?, "cba");
//! session.close().await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod io;
mod server;

pub use client::{Client, ClientOptions, Session, CLOSE_LIMIT};
pub use error::{HandlerError, SessionError};
pub use server::{
    ConnectionId, ConnectionInfo, Handler, RunningServer, Server, ServerOptions, ServerStats,
};
// The blocking server's connection loop shares the async one's limits.
pub(crate) use client::FOR_EVER;
pub(crate) use io::READ_CHUNK;
pub(crate) use server::{LINGER_BYTES, LINGER_TIME};
