//! The line-protocol device simulator behind `tether serve lines`.
//!
//! Each request is one line (ending in the sentinel, `\n` by default) and
//! gets exactly one reply line, in order:
//!
//! | request | reply |
//! |---|---|
//! | `*IDN?` | `tether,lines,<version>` |
//! | `ECHO <text>` | `<text>` |
//! | `REV <text>` | the bytes of `<text>` reversed |
//! | `SET <key> <value>` | `OK` (keys are shared by all connections; at most [`MAX_KEYS`], then `ERR key store full` for a new one) |
//! | `GET <key>` | the value, or `ERR unknown key <key>` |
//! | `SLEEP <ms>` | `OK`, after that many milliseconds |
//! | anything else | `ERR unknown command` |
//!
//! A line longer than the maximum gets `ERR line too long` and its
//! connection is closed; other connections go on. Text is handled as bytes,
//! so non-UTF-8 input is echoed, reversed and stored losslessly.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tether::sim::lines::LinesDevice;
//!
//! let server = LinesDevice::new().bind(&"tcp://127.0.0.1:0".parse()?, b"\n", 1 << 20).await?;
//! println!("listening on {}", server.listener().display_address());
//! let running = server.spawn(); // serves until `running` is shut down or dropped
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::framing::{FramingError, SentinelCodec};
use crate::session::{ConnectionInfo, Handler, HandlerError, Server};
use crate::transport::{Endpoint, Listener, TransportError};

/// Longest `SLEEP` honoured, so a typo cannot park a connection for days.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The most keys the store holds: 1,024. Peers share it, so without a
/// bound any of them could fill the server's memory one `SET` at a time.
pub const MAX_KEYS: usize = 1024;

/// The simulated device: its command set and the key store all connections share.
#[derive(Debug, Clone)]
pub struct LinesDevice {
    keys: Arc<Mutex<HashMap<Bytes, Bytes>>>,
    sentinel: Bytes,
}

impl Default for LinesDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl LinesDevice {
    /// A device with an empty key store.
    pub fn new() -> Self {
        LinesDevice {
            keys: Arc::default(),
            sentinel: Bytes::from_static(b"\n"),
        }
    }

    /// Binds a server for this device with the given sentinel and maximum line length.
    pub async fn bind(
        self,
        endpoint: &Endpoint,
        sentinel: &[u8],
        max_line: usize,
    ) -> Result<Server<SentinelCodec, LinesDevice, BytesMut>, TransportError> {
        let listener = Listener::bind(endpoint).await?;
        Ok(self.serve_on(listener, sentinel, max_line))
    }

    /// A server for this device on a listener bound beforehand (e.g. a TLS
    /// one from [`Listener::bind_tls`]).
    pub fn serve_on(
        mut self,
        listener: Listener,
        sentinel: &[u8],
        max_line: usize,
    ) -> Server<SentinelCodec, LinesDevice, BytesMut> {
        self.sentinel = Bytes::copy_from_slice(sentinel);
        let codec = SentinelCodec::with_max_length(self.sentinel.clone(), max_line);
        Server::with_listener(listener, codec, self).on_bad_frame(|e| match e {
            FramingError::FrameTooLong { .. } => Some(Bytes::from_static(b"ERR line too long")),
            _ => None,
        })
    }

    /// The reply to one request line.
    pub async fn reply(&self, line: &[u8]) -> Bytes {
        let (command, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        let reply = match command {
            b"*IDN?" if rest.is_empty() => {
                Bytes::from(format!("tether,lines,{}", env!("CARGO_PKG_VERSION")))
            }
            b"ECHO" => Bytes::copy_from_slice(rest),
            b"REV" => rest.iter().rev().copied().collect(),
            b"SET" => match rest.iter().position(|&b| b == b' ') {
                Some(i) if i > 0 => {
                    let key = Bytes::copy_from_slice(&rest[..i]);
                    let value = Bytes::copy_from_slice(&rest[i + 1..]);
                    let mut keys = self.keys.lock().expect("key store");
                    if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
                        Bytes::from_static(b"ERR key store full")
                    } else {
                        keys.insert(key, value);
                        Bytes::from_static(b"OK")
                    }
                }
                _ => Bytes::from_static(b"ERR usage: SET <key> <value>"),
            },
            b"GET" if !rest.is_empty() => {
                let found = self.keys.lock().expect("key store").get(rest).cloned();
                found.unwrap_or_else(|| [&b"ERR unknown key "[..], rest].concat().into())
            }
            b"SLEEP" => match std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                Some(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLEEP)).await;
                    Bytes::from_static(b"OK")
                }
                None => Bytes::from_static(b"ERR usage: SLEEP <milliseconds>"),
            },
            _ => Bytes::from_static(b"ERR unknown command"),
        };
        // REV can create the sentinel out of its reverse; the peer would split that reply.
        if crate::framing::sentinel_in_frame(&self.sentinel, &reply).is_some() {
            return Bytes::from_static(b"ERR reply would contain the line terminator");
        }
        reply
    }
}

impl Handler<BytesMut> for LinesDevice {
    type Response = Bytes;

    async fn handle(
        &self,
        request: BytesMut,
        _conn: &ConnectionInfo,
    ) -> Result<Option<Bytes>, HandlerError> {
        Ok(Some(self.reply(&request).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands() {
        let dev = LinesDevice::new();
        assert!(dev.reply(b"*IDN?").await.starts_with(b"tether,lines,"));
        assert_eq!(dev.reply(b"ECHO hi there").await, "hi there");
        assert_eq!(dev.reply(b"REV abc").await, "cba");
        assert_eq!(dev.reply(b"REV \xff\x00a").await, &b"a\x00\xff"[..]);
        assert_eq!(dev.reply(b"GET k").await, "ERR unknown key k");
        assert_eq!(dev.reply(b"SET k v w").await, "OK");
        assert_eq!(dev.reply(b"GET k").await, "v w");
        assert_eq!(dev.reply(b"SET k").await, "ERR usage: SET <key> <value>");
        for i in 1..MAX_KEYS {
            assert_eq!(dev.reply(format!("SET k{i} v").as_bytes()).await, "OK");
        }
        assert_eq!(dev.reply(b"SET one-too-many v").await, "ERR key store full");
        assert_eq!(dev.reply(b"SET k w").await, "OK", "a known key can change");
        assert_eq!(dev.reply(b"SLEEP 1").await, "OK");
        assert_eq!(
            dev.reply(b"SLEEP x").await,
            "ERR usage: SLEEP <milliseconds>"
        );
        assert_eq!(dev.reply(b"").await, "ERR unknown command");
        assert_eq!(dev.reply(b"FOO").await, "ERR unknown command");
    }
}
