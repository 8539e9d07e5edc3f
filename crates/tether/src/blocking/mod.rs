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
//! Over TCP and Unix both ends use blocking sockets directly, with no
//! runtime:
//!
//! - a [`Session`] makes one syscall per read or write, its deadlines
//!   socket timeouts;
//! - a [`Server`] serves each connection on a thread of its own, which
//!   reads a request, runs the handler and writes the reply: no hand-off
//!   between threads, so its latency is a hand-written `std::net`
//!   server's. The cost is a thread per connection, bounded by
//!   [`ServerOptions::max_connections`](crate::session::ServerOptions::max_connections);
//!   a thread whose connection ended waits up to 10 s to serve the next
//!   (so thread-local state a handler leaves may be seen by a later
//!   connection); a server holding thousands of idle sessions wants the async
//!   [`crate::session::Server`]. Shutdown wakes idle connections, lets
//!   handlers in progress finish within the grace period, and never hangs.
//!
//! The other transports (TLS among them) run the async stream or server on
//! a small private runtime. Either way the codecs, limits, errors and
//! behaviour are the async API's.

mod server;
mod session;
mod socket;
mod threaded;

pub use crate::packet::blocking::PacketConnection;
pub use crate::pair::blocking::{OneClientServer, Pair};
pub use server::{RunningServer, Server};
pub use session::{Client, Session};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::framing::{FrameEncoder, FramingError};
use crate::session::{ConnectionInfo, HandlerError, READ_CHUNK};

/// What a blocking server needs of its codec: the bounds of
/// [`Server::bind`], named once for the code behind it.
pub(crate) trait ServerCodec<Req, Resp>:
    Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp> + Clone + Send + 'static
{
}

impl<C, Req, Resp> ServerCodec<Req, Resp> for C where
    C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp> + Clone + Send + 'static
{
}

/// What a blocking server needs of its handler: a plain function, called
/// from any thread.
pub(crate) trait PlainHandler<Req, Resp>:
    Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static
{
}

impl<F, Req, Resp> PlainHandler<Req, Resp> for F where
    F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static
{
}

/// The most one `read` asks for while a frame is arriving. The room it
/// reads into is zero-filled first (safe code cannot read into
/// uninitialised memory), so the cap bounds that fill even when the buffer
/// has grown for a bulk frame.
const READ_AT_MOST: usize = 64 * 1024;

/// One `read` into the spare room of `buf`, for the blocking session and
/// server alike; the number of bytes. A read that starts a frame (the
/// buffer empty) asks for [`READ_CHUNK`]: most frames are short, and a
/// buffer kept from a longer one would otherwise have all its room
/// zero-filled at every request. One into a frame already arriving asks
/// for up to [`READ_AT_MOST`].
fn read_into(
    buf: &mut BytesMut,
    read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let len = buf.len();
    let most = if len == 0 { READ_CHUNK } else { READ_AT_MOST };
    let room = (buf.capacity() - len).min(most);
    buf.resize(len + room, 0);
    let result = read(&mut buf[len..]);
    buf.truncate(len + *result.as_ref().unwrap_or(&0));
    result
}

/// A frame to write: the encoded bytes, with the payload a
/// [`FrameEncoder`] left out in place at `at`, if it left one.
fn frame_parts<'a>(encoded: &'a [u8], left_out: Option<(&'a [u8], usize)>) -> [&'a [u8]; 3] {
    match left_out {
        None => [encoded, &[], &[]],
        Some((payload, at)) => {
            let (head, tail) = encoded.split_at(at);
            [head, payload, tail]
        }
    }
}

/// Writes `parts` in order by vectored writes (a payload left out of the
/// write buffer is not copied); `between` runs before each write after the
/// first (to shorten a deadline's timeout, say).
fn write_parts(
    out: &mut impl std::io::Write,
    mut parts: [&[u8]; 3],
    mut between: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut first = true;
    while parts.iter().any(|p| !p.is_empty()) {
        if !std::mem::take(&mut first) {
            between()?;
        }
        let slices = parts.map(std::io::IoSlice::new);
        match out.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                for part in &mut parts {
                    let k = n.min(part.len());
                    *part = &part[k..];
                    n -= k;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
