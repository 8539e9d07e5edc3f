//! [`PacketError`]: the one error type of the packet layer.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::transport::TransportError;

/// Everything that can go wrong in the packet layer.
///
/// [`PacketError::is_connection_lost`] says whether the connection is gone
/// (every later request on it fails too) or only this request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// A varint on the wire does not fit in 64 bits. Fatal for the connection.
    #[error("protocol error: varint overflows 64 bits")]
    VarintOverflow,
    /// A packet's length prefix did not end within the allowed number of
    /// bytes (a stream of garbage). Fatal for the connection.
    #[error("protocol error: length prefix longer than {max} bytes")]
    LengthPrefixTooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// A packet's body is longer than the configured maximum. Fatal for the
    /// connection when received; only this request when sending.
    #[error("packet body of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The body length announced or requested.
        len: u64,
        /// The configured maximum body length.
        max: usize,
    },
    /// A packet body ends before one of its fields. Fatal for the connection.
    #[error("protocol error: packet body too short for its {field}")]
    Truncated {
        /// The field that is missing.
        field: &'static str,
    },
    /// A value cannot be represented on the wire (flags too wide, rq_type
    /// `u64::MAX`). Only this request fails.
    #[error("cannot encode: {0}")]
    OutOfRange(&'static str),
    /// The connection ended (peer EOF, end of stream, cut mid-packet, I/O
    /// error, protocol error, or closed locally) before this request got its
    /// response.
    #[error("connection ended: {0}")]
    ConnectionEnded(Arc<str>),
    /// This end has sent ERQ (`end_requests` or `close`): no new requests.
    #[error("requests have been ended on this connection")]
    RequestsEnded,
    /// The peer answered with a failure response.
    #[error("request failed (flags={flags}): {}", String::from_utf8_lossy(payload))]
    Failed {
        /// The failure response's flags (usually 0).
        flags: u64,
        /// The failure reason the peer sent.
        payload: Bytes,
    },
    /// A typed response could not be decoded.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// An operation did not complete within its deadline.
    #[error("timed out")]
    Timeout,
    /// Reading or writing the byte stream failed.
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),
    /// Connecting failed.
    #[error(transparent)]
    Transport(Arc<TransportError>),
}

impl PacketError {
    /// True if the connection is gone and no later request can succeed.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            PacketError::ConnectionEnded(_)
                | PacketError::Io(_)
                | PacketError::VarintOverflow
                | PacketError::LengthPrefixTooLong { .. }
                | PacketError::Truncated { .. }
                | PacketError::Transport(_)
        )
    }

    pub(crate) fn ended(reason: impl Into<Arc<str>>) -> Self {
        PacketError::ConnectionEnded(reason.into())
    }
}

impl From<io::Error> for PacketError {
    fn from(e: io::Error) -> Self {
        PacketError::Io(Arc::new(e))
    }
}

impl From<TransportError> for PacketError {
    fn from(e: TransportError) -> Self {
        PacketError::Transport(Arc::new(e))
    }
}
