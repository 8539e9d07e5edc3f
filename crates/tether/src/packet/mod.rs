//! The packet layer: bidirectional multiplexed requests over one byte
//! stream, wire-compatible with Python's cs.packetstream 20240630.
//!
//! Either end may send requests; many are in flight at once, each tagged,
//! and responses come back in completion order.
//!
//! ```text
//!  submit() ──► lock: tag, pending entry, encode ──► outgoing bytes ─┐
//!     │                                                              ▼
//!  ResponseFuture ◄── result slot ◄── connection task ──► write buffer ──► stream
//!                                      │ Protocol (sans-IO: tags, pending,
//!                                      │ ERQ/EOF, refusals, counters)
//!                                      │ Handler futures (bounded) ◄── decode ◄── stream
//! ```
//!
//! - [`varint`], [`Packet`] and [`PacketCodec`]: the wire format, sans-IO
//!   (a request `08 02 02 04 68 65 6c 6c 6f` is tag 2, rq_type 3, `hello`;
//!   EOF is `03 00 02 00`, ERQ `03 01 02 00`).
//! - [`Protocol`]: the sans-IO state machine (tags that are never reused,
//!   the pending table, refusals after ERQ, duplicate tags, unknown
//!   channels).
//! - [`PacketConnection`]: the tokio driver over any `AsyncRead +
//!   AsyncWrite` (every [`ByteStream`](crate::transport::ByteStream)); its
//!   [`submit`](PacketConnection::submit) returns a [`ResponseFuture`];
//!   [`push`](PacketConnection::push) sends a request whose response is
//!   discarded; a [`Pipeline`] keeps many requests in flight and takes
//!   their responses in completion order from one queue;
//!   [`request_once`](PacketConnection::request_once) and
//!   [`submit_and_close`](PacketConnection::submit_and_close) send a last
//!   request with the close behind it (one write, one round trip).
//! - [`Handler`], [`handler_fn`], [`TypedRequest`] + [`Service`],
//!   [`EchoService`]: answering the peer.
//! - [`serve`]: an accept loop serving every connection at once, with an
//!   orderly shutdown.
//! - [`blocking::PacketConnection`]: the same for synchronous programs.
//!
//! ```
//! # async fn run() -> Result<(), tether::packet::PacketError> {
//! use tether::packet::{handler_fn, EchoService, IncomingRequest, PacketConfig, PacketConnection, Response};
//! use tether::transport::memory_pair;
//!
//! let (a, b) = memory_pair(64 * 1024);
//! let server = PacketConnection::spawn(b, EchoService, PacketConfig::default());
//! let client = PacketConnection::spawn(
//!     a,
//!     handler_fn(|rq: IncomingRequest| async move { Response::ok(rq.flags, rq.payload) }),
//!     PacketConfig::default(),
//! );
//! // two sleeps: the shorter one completes first
//! let (slow, fast) = tokio::join!(client.submit(4, 0, "30"), client.submit(4, 0, "1"));
//! assert!(slow?.ok && fast?.ok);
//! // the server asks the client on the same connection
//! let r = server.submit(0, 7, "ping").await?;
//! assert_eq!((r.ok, r.flags, &r.payload[..]), (true, 7, &b"ping"[..]));
//! client.close().await?;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! What tether adds to the reference without changing the wire: no grace
//! sleep before flushing, bounded queues and handler concurrency, a
//! maximum packet size, and every pending request resolved when the
//! connection ends.
//!
//! What it deliberately does not do: give channels a meaning (a request on
//! a channel other than 0 gets the reference's answer, a failure `unknown
//! channel`); time requests out (wrap the future in
//! `tokio::time::timeout`: dropping it cancels the request); reconnect
//! (the message layer above does).
//!
//! Each connection is a task of its own, which hands every response to the
//! task that awaits it. On a current-thread runtime, await responses from a
//! spawned task rather than from `block_on`'s future: tokio polls the
//! driver once more (an `epoll_wait`) for each wake-up of `block_on`'s
//! future by another task, a third of a round trip's system calls.

pub mod blocking;
mod codec;
mod connection;
mod error;
mod handler;
mod outgoing;
mod pipeline;
mod proto;
mod scratch;
mod server;
mod tag_table;
pub mod varint;
mod wire;

pub use codec::{PacketCodec, DEFAULT_MAX_BODY_LEN, MAX_LENGTH_PREFIX};
pub use connection::{PacketConfig, PacketConnection, ResponseFuture};
pub use error::PacketError;
pub use handler::{
    handler_fn, EchoFuture, EchoService, FnHandler, Handler, NoHandler, Service, TypedRequest,
    HANDLER_FAILED, NO_HANDLER, UNKNOWN_RQ_TYPE,
};
pub use pipeline::{Pipeline, Submit};
pub use proto::{
    Event, IncomingRequest, Protocol, Response, Stats, StatsSnapshot, TagAllocator, Waiter,
    DUPLICATE_TAG,
};
pub use server::serve;
pub use tag_table::TagTable;
pub use wire::{
    encode_request, encode_response, Packet, MAX_REQUEST_FLAGS, MAX_RESPONSE_FLAGS, MAX_RQ_TYPE,
    REQUESTS_NOT_ALLOWED, UNKNOWN_CHANNEL,
};
