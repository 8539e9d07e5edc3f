use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::framing::FramingError;
use crate::transport::TransportError;

/// What went wrong on a [`Pair`](super::Pair) or a
/// [`OneClientServer`](super::OneClientServer).
///
/// [`connection_survives`](Self::connection_survives) says whether the link
/// is still usable after the error: a bad frame concerns that frame only,
/// a lost connection needs [`Pair::connect`](super::Pair::connect) again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    /// The link is not up: `connect()` has not succeeded yet (or no client
    /// is connected to a [`OneClientServer`](super::OneClientServer)).
    #[error("not connected")]
    NotConnected,
    /// The link went down while, or before, this operation waited on it.
    /// Call `connect()` again to restore it.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// Which socket ended and how.
        reason: String,
    },
    /// `connect()` ran out of time.
    #[error("cannot connect to {endpoint} within {timeout:?}: {stage}")]
    ConnectTimeout {
        /// The peer endpoint, as written.
        endpoint: String,
        /// The connect timeout that ran out.
        timeout: Duration,
        /// What was still missing: the peer accepting our client connection
        /// (with the last error), or the peer connecting back to us.
        stage: String,
    },
    /// [`OneClientServer::wait_connected`](super::OneClientServer::wait_connected)
    /// ran out of time: no client connected. The server goes on listening.
    #[error("no client connected within {timeout:?}")]
    NoClientWithin {
        /// The wait that ran out.
        timeout: Duration,
    },
    /// `connect()` without a peer endpoint: give one with
    /// [`Pair::connect_to`](super::Pair::connect_to) or
    /// [`PairConfig::peer`](super::PairConfig::peer).
    #[error("no peer endpoint to connect to")]
    NoPeer,
    /// The pair or server was closed; it cannot be used any more.
    #[error("closed")]
    Closed,
    /// Binding the listener failed (or another transport failure).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A tether codec refused a frame (too long, truncated, …). Unless
    /// [`FramingError::is_fatal`], only that frame is lost.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// Any other codec's error, as that codec reported it.
    #[error("codec error: {0}")]
    Codec(#[source] Box<dyn StdError + Send + Sync>),
    /// A text frame is not valid UTF-8.
    #[error("invalid UTF-8 at byte {position} of frame {}", Preview(raw))]
    InvalidUtf8 {
        /// The whole frame, as received.
        raw: Bytes,
        /// Offset of the first invalid byte.
        position: usize,
    },
    /// A frame is not the JSON value expected.
    #[error("invalid JSON ({source}) in frame {}", Preview(raw))]
    Json {
        /// The whole frame, as received.
        raw: Bytes,
        /// What serde_json found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialized to JSON (nothing was sent).
    #[error("cannot serialize to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl PairError {
    /// True when the link (or the server's client) is still up after this
    /// error: the error concerned one frame or one value.
    pub fn connection_survives(&self) -> bool {
        match self {
            PairError::Framing(e) => !e.is_fatal(),
            PairError::Codec(_)
            | PairError::InvalidUtf8 { .. }
            | PairError::Json { .. }
            | PairError::Serialize(_) => true,
            _ => false,
        }
    }

    /// True for [`PairError::ConnectionLost`].
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, PairError::ConnectionLost { .. })
    }

    /// Wraps any codec error, keeping tether's own [`FramingError`] typed.
    pub(crate) fn from_codec<E: StdError + Send + Sync + 'static>(error: E) -> Self {
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(error);
        match boxed.downcast::<FramingError>() {
            Ok(framing) => PairError::Framing(*framing),
            Err(other) => match other.downcast::<PairError>() {
                Ok(pair) => *pair,
                Err(other) => PairError::Codec(other),
            },
        }
    }

    /// True when a codec error means the stream cannot be read any further.
    pub(crate) fn is_fatal_codec(&self) -> bool {
        matches!(self, PairError::Framing(e) if e.is_fatal())
    }

    pub(crate) fn lost(reason: impl Into<String>) -> Self {
        PairError::ConnectionLost {
            reason: reason.into(),
        }
    }
}

/// At most this many bytes of a bad frame are shown in an error message;
/// the error value keeps them all.
const PREVIEW_BYTES: usize = 64;

/// A frame shown as an escaped byte string, cut after [`PREVIEW_BYTES`].
struct Preview<'a>(&'a Bytes);

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(PREVIEW_BYTES)];
        f.write_str("\"")?;
        for &b in shown {
            write!(f, "{}", std::ascii::escape_default(b))?;
        }
        f.write_str("\"")?;
        if self.0.len() > PREVIEW_BYTES {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_errors_stay_typed_through_from_codec() {
        let e = PairError::from_codec(FramingError::FrameTooLong { max: 4 });
        assert!(matches!(
            e,
            PairError::Framing(FramingError::FrameTooLong { max: 4 })
        ));
        assert!(e.connection_survives());
        let io = std::io::Error::other("boom");
        assert!(matches!(PairError::from_codec(io), PairError::Codec(_)));
    }

    #[test]
    fn bad_frames_are_shown_escaped_and_cut() {
        let e = PairError::InvalidUtf8 {
            raw: Bytes::from_static(b"ab\xff\r\n"),
            position: 2,
        };
        assert_eq!(
            e.to_string(),
            r#"invalid UTF-8 at byte 2 of frame "ab\xff\r\n""#
        );
        let long = PairError::InvalidUtf8 {
            raw: Bytes::from(vec![b'x'; 100]),
            position: 0,
        };
        assert!(long.to_string().ends_with("… (100 bytes)"), "{long}");
    }
}
