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
    /// The TLS handshake failed: the server's certificate was refused (bad
    /// certificate, unknown certificate authority, name mismatch), the peer
    /// refused ours, or it does not speak TLS 1.3. No connection is left open.
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    TlsHandshake {
        /// The endpoint as written.
        endpoint: String,
        /// Why, in words.
        reason: String,
        /// The underlying error (a [`rustls::Error`] inside an I/O error, when TLS itself failed).
        #[source]
        source: io::Error,
    },
    /// TLS cannot be used for this endpoint as configured (no certificate
    /// authority to trust, an unreadable CA file, a host name no certificate can carry).
    #[error("cannot connect to {endpoint} over TLS: {reason}")]
    TlsConfig {
        /// The endpoint as written.
        endpoint: String,
        /// What is missing or wrong, and how to supply it.
        reason: String,
    },
    /// An I/O error on an open stream.
    #[error(transparent)]
    Io(#[from] io::Error),
}
