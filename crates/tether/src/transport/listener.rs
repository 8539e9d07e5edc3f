//! [`Listener`]: accepts byte streams on TCP, a Unix socket or stdio.

use std::io;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

use super::{ByteStream, Endpoint, TransportError};

/// A bound listener that hands out one [`ByteStream`] per accepted peer.
///
/// `tcp://…:0` asks the system for a free port; [`Listener::local_endpoint`]
/// gives the real one as soon as `bind` returns. A Unix listener removes its
/// socket file when dropped. A `stdio:` listener yields a single stream
/// (this process's stdin/stdout) and then waits forever, so a server can be
/// run as another program's `exec:` child.
#[derive(Debug)]
pub struct Listener {
    kind: Kind,
    local: Endpoint,
}

#[derive(Debug)]
enum Kind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Stdio { taken: bool },
}

impl Listener {
    /// Binds to `endpoint`.
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
            _ => Err(TransportError::Unsupported {
                endpoint: endpoint.to_string(),
                reason: "can only listen on tcp://, unix:// and stdio:",
            }),
        }
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

    /// Waits for the next peer.
    pub async fn accept(&mut self) -> io::Result<ByteStream> {
        match &mut self.kind {
            Kind::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                ByteStream::from_tcp(stream)
            }
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
