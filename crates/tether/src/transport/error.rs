use std::io;
use std::time::Duration;

/// What went wrong below the framing layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The endpoint string could not be parsed; `part` is the piece that is wrong.
    #[error("invalid endpoint {input:?}: {reason} (at {part:?})")]
    InvalidEndpoint {
        /// The whole input.
        input: String,
        /// The part of it that is wrong.
        part: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed (refused, unreachable, no such host, no such program).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint as written.
        endpoint: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No connection within the connect timeout.
    #[error("cannot connect to {endpoint}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// The endpoint as written.
        endpoint: String,
        /// The connect timeout that ran out.
        timeout: Duration,
    },
    /// Binding a listener failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        /// The endpoint as written.
        endpoint: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The transport exists but cannot be used this way (e.g. listening on `exec:`).
    #[error("{endpoint}: {reason}")]
    Unsupported {
        /// The endpoint as written.
        endpoint: String,
        /// What is not supported.
        reason: &'static str,
    },
    /// An I/O error on an open stream.
    #[error(transparent)]
    Io(#[from] io::Error),
}
