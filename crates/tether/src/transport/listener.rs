//! [`Listener`]: accepts byte streams on TCP, TLS, a Unix socket or stdio.

use std::io;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use super::tls::{TlsAccept, TlsServerConfig};
use super::{ByteStream, Endpoint, TransportError};

/// A bound listener that hands out one [`ByteStream`] per accepted peer.
///
/// `tcp://…:0` asks the system for a free port; [`Listener::local_endpoint`]
/// gives the real one as soon as `bind` returns. A Unix listener removes its
/// socket file when dropped. A `stdio:` listener yields a single stream
/// (this process's stdin/stdout), so a server can be run as another
/// program's `exec:` child; then it accepts nothing more (`accept` waits
/// for ever) and the session and packet servers end once that one peer has
/// gone.
///
/// A TLS listener ([`Listener::bind_tls`]) runs each handshake in its own
/// task, within the handshake timeout of its [`TlsServerConfig`];
/// [`accept`](Self::accept) yields only peers whose handshake succeeded, so a
/// slow, silent or non-TLS peer never holds up the others. Failed handshakes
/// are logged (with `tracing`) and dropped.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    local: Endpoint,
}

#[derive(Debug)]
enum Kind {
    Tcp(TcpListener),
    Tls(Box<TlsAccept>),
    Unix(UnixListener, PathBuf),
    Stdio { taken: bool },
}

impl Listener {
    /// Binds to `endpoint` (`tcp://`, `unix://` or `stdio:`; `tls://` needs
    /// [`bind_tls`](Self::bind_tls)).
    pub async fn bind(endpoint: &Endpoint) -> Result<Self, TransportError> {
        let named = |source: io::Error| TransportError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            Endpoint::Tcp { .. } => {
                let listener = TcpListener::bind(endpoint.host_port().expect("tcp"))
                    .await
                    .map_err(named)?;
                let addr = listener.local_addr().map_err(named)?;
                Ok(Listener {
                    kind: Kind::Tcp(listener),
                    local: Endpoint::tcp(addr.ip().to_string(), addr.port()),
                })
            }
            Endpoint::Unix(path) => {
                let listener = UnixListener::bind(path).map_err(named)?;
                Ok(Listener {
                    kind: Kind::Unix(listener, path.clone()),
                    local: endpoint.clone(),
                })
            }
            Endpoint::Stdio => Ok(Listener {
                kind: Kind::Stdio { taken: false },
                local: Endpoint::Stdio,
            }),
            Endpoint::Tls { .. } => Err(TransportError::Unsupported {
                endpoint: endpoint.to_string(),
                reason: "listening on tls:// needs a certificate: use Listener::bind_tls",
            }),
            _ => Err(TransportError::Unsupported {
                endpoint: endpoint.to_string(),
                reason: "can only listen on tcp://, tls://, unix:// and stdio:",
            }),
        }
    }

    /// Binds a TLS listener to `endpoint` (`tls://host:port`; port 0 picks
    /// a free one) presenting the certificate of `config`.
    pub async fn bind_tls(
        endpoint: &Endpoint,
        config: TlsServerConfig,
    ) -> Result<Self, TransportError> {
        let Endpoint::Tls { .. } = endpoint else {
            return Err(TransportError::Unsupported {
                endpoint: endpoint.to_string(),
                reason: "bind_tls needs a tls://host:port endpoint",
            });
        };
        let named = |source: io::Error| TransportError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        let listener = TcpListener::bind(endpoint.host_port().expect("tls has a host and port"))
            .await
            .map_err(named)?;
        let addr = listener.local_addr().map_err(named)?;
        Ok(Listener {
            kind: Kind::Tls(Box::new(TlsAccept::new(listener, config))),
            local: Endpoint::Tls {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
        })
    }

    /// The endpoint peers connect to (with the real port after binding port 0).
    pub fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }

    /// What to print in the `listening on …` line: `HOST:PORT` or the socket path.
    pub fn display_address(&self) -> String {
        match &self.local {
            Endpoint::Unix(path) => path.display().to_string(),
            other => other.host_port().unwrap_or_else(|| other.to_string()),
        }
    }

    /// True once this listener will accept nothing more: a `stdio:` one
    /// that has handed out its stream. A server on it ends with that
    /// stream's connection rather than wait for peers that cannot come.
    pub(crate) fn is_spent(&self) -> bool {
        matches!(self.kind, Kind::Stdio { taken: true })
    }

    /// Waits for the next peer. Cancel-safe: a peer (or a TLS handshake in
    /// progress) is not lost when this future is dropped.
    pub async fn accept(&mut self) -> io::Result<ByteStream> {
        match &mut self.kind {
            Kind::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                ByteStream::from_tcp_with_peer(stream, peer)
            }
            Kind::Tls(tls) => tls.accept().await,
            Kind::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                Ok(ByteStream::from_unix(stream))
            }
            Kind::Stdio { taken } => {
                if *taken {
                    std::future::pending::<()>().await;
                }
                *taken = true;
                Ok(ByteStream::stdio())
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Kind::Unix(_, path) = &self.kind {
            let _ = std::fs::remove_file(path);
        }
    }
}
