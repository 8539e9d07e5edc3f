use std::time::Duration;

use crate::framing::FramingError;
use crate::transport::TransportError;

/// Errors of the session layer. Each variant says whether the session survives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Connecting failed; there is no session.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A frame could not be encoded or decoded. After `FrameTooLong`,
    /// `Malformed`, `InvalidUtf8`, `SentinelInFrame`, `WrongLength` or
    /// `PayloadOutOfFrame` the session is still usable (that one frame was
    /// skipped, nothing of it sent); after
    /// `TruncatedFrame` or `Io` it is closed.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// No whole reply within the request deadline. The session has been
    /// closed: a late reply would otherwise be read as the next one's.
    #[error("no reply within {after:?}; the session was closed so a late reply cannot be taken for the next one")]
    Timeout {
        /// The request deadline.
        after: Duration,
    },
    /// The peer closed the connection before a reply came. The session is closed.
    #[error("the peer closed the connection before replying")]
    Disconnected,
    /// The session was closed earlier; `reason` says why.
    #[error("the session is closed ({reason})")]
    Closed {
        /// Why the session was closed.
        reason: String,
    },
}

impl SessionError {
    pub(crate) fn from_framing(e: FramingError) -> Self {
        match e {
            FramingError::Io(io) => SessionError::Transport(TransportError::Io(io)),
            other => SessionError::Framing(other),
        }
    }
}

/// An error returned by a server's request handler. It is logged and
/// closes that connection only.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;
