//! One echo connection of any implementation, so that a workload is written
//! once for all of them: [`Conn`] for the async ones, [`BlockingConn`] for
//! the blocking ones, and [`start_server`] for the matching server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tether::framing::{LengthCodec, SentinelCodec};
use tether::packet::{NoHandler, PacketConfig, PacketConnection, Response};
use tether::session::{Client, ClientOptions, Session};
use tether::transport::{TlsClientConfig, TlsServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::baselines::{
    framed_connect, framed_connect_tls, framed_echo, framed_server, FramedService, FramedTcp,
    FramedTls, StdClient, StdServer,
};
use super::rig::{endpoint, Running, ServerRuntime};
use super::served::WorkloadSet;
use super::stacks::{blocking_server, packet_push_server, packet_server, session_server};
use super::Impl;
use crate::CliResult;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server started by [`start_server`] serves.
pub enum ServerKind {
    /// Echoes every frame (W1–W5, W8).
    Echo,
    /// Echoes every frame over TLS 1.3 with this configuration (W7).
    EchoTls(TlsServerConfig),
    /// Pushes 64-byte messages to each client, as many as it asks for (W6).
    Push,
}

impl ServerKind {
    /// The kind of the servers of `set`; `tls` gives the TLS servers their
    /// configuration.
    pub fn of(
        set: WorkloadSet,
        tls: impl FnOnce() -> CliResult<TlsServerConfig>,
    ) -> CliResult<ServerKind> {
        Ok(match set {
            WorkloadSet::Echo => ServerKind::Echo,
            WorkloadSet::Tls => ServerKind::EchoTls(tls()?),
            WorkloadSet::Push => ServerKind::Push,
        })
    }
}

/// Starts the server of `imp` for `kind` on `runtime` (the std-blocking
/// one on threads of its own), bound at `at`.
pub async fn start_server(
    runtime: &ServerRuntime,
    imp: Impl,
    at: SocketAddr,
    kind: ServerKind,
) -> CliResult<Running> {
    match kind {
        ServerKind::Echo => start_echo_server(runtime, imp, at, None).await,
        ServerKind::EchoTls(config) => start_echo_server(runtime, imp, at, Some(config)).await,
        ServerKind::Push => start_push_server(runtime, imp, at).await,
    }
}

async fn start_echo_server(
    runtime: &ServerRuntime,
    imp: Impl,
    at: SocketAddr,
    tls: Option<TlsServerConfig>,
) -> CliResult<Running> {
    match imp {
        Impl::StdBlocking if tls.is_none() => Ok(Running::Std(StdServer::start(at)?)),
        Impl::StdBlocking => Err("std-blocking has no TLS server".into()),
        Impl::TokioFramed => {
            let acceptor = tls.map(|c| TlsAcceptor::from(c.rustls_config().clone()));
            runtime
                .spawn(|r, s| framed_server(at, r, s, FramedService::Echo, acceptor))
                .await
        }
        Impl::TetherSentinel => {
            runtime
                .spawn(|r, s| session_server(at, r, s, SentinelCodec::lines(), tls))
                .await
        }
        Impl::TetherBlocking if tls.is_none() => {
            let (server, addr) = blocking_server(at)?;
            Ok(Running::Blocking(server, addr))
        }
        Impl::TetherBlocking => Err("tether-blocking has no TLS server in the bench".into()),
        Impl::TetherLength => {
            runtime
                .spawn(|r, s| session_server(at, r, s, LengthCodec::new(), tls))
                .await
        }
        Impl::TetherPacket | Impl::TetherPipeline => {
            runtime.spawn(|r, s| packet_server(at, r, s, tls)).await
        }
    }
}

async fn start_push_server(
    runtime: &ServerRuntime,
    imp: Impl,
    at: SocketAddr,
) -> CliResult<Running> {
    match imp {
        Impl::TokioFramed => {
            runtime
                .spawn(|r, s| framed_server(at, r, s, FramedService::Push, None))
                .await
        }
        Impl::TetherPacket => runtime.spawn(|r, s| packet_push_server(at, r, s)).await,
        _ => Err(format!("{} has no push server", imp.name()).into()),
    }
}

/// The options of the bench's connects: its timeout, and over TLS when
/// `tls`.
fn client_options(tls: Option<&TlsClientConfig>) -> ClientOptions {
    let options = ClientOptions::default().connect_timeout(CONNECT_TIMEOUT);
    match tls {
        Some(t) => options.tls(t.clone()),
        None => options,
    }
}

/// A packet connection to `addr` (over TLS when `tls`) serving `handler`,
/// within the bench's connect timeout.
pub async fn packet_connect<H: tether::packet::Handler>(
    addr: SocketAddr,
    tls: Option<&TlsClientConfig>,
    handler: H,
) -> CliResult<PacketConnection> {
    Ok(PacketConnection::connect_with(
        &endpoint(addr, tls.is_some()),
        &client_options(tls).connect_options(),
        handler,
        PacketConfig::default(),
    )
    .await?)
}

/// An async client connection of one implementation.
pub enum Conn {
    /// tokio-framed over TCP.
    Framed(FramedTcp),
    /// tokio-framed over tokio-rustls.
    FramedTls(Box<FramedTls>),
    /// A tether session over the `\n` sentinel.
    Sentinel(Session<SentinelCodec>),
    /// A tether session over the length prefix.
    Length(Session<LengthCodec>),
    /// A tether packet connection.
    Packet(PacketConnection),
}

impl Conn {
    /// Connects to the echo server of `imp` at `addr` (over TLS when `tls`).
    pub async fn connect(
        imp: Impl,
        addr: SocketAddr,
        tls: Option<&TlsClientConfig>,
    ) -> CliResult<Conn> {
        let endpoint = endpoint(addr, tls.is_some());
        let options = client_options(tls);
        Ok(match imp {
            Impl::TokioFramed => match tls {
                None => Conn::Framed(framed_connect(addr).await?),
                Some(t) => {
                    let connector = TlsConnector::from(t.rustls_config().clone());
                    Conn::FramedTls(Box::new(framed_connect_tls(addr, &connector).await?))
                }
            },
            Impl::TetherSentinel => Conn::Sentinel(
                Client::new(endpoint, SentinelCodec::lines(), options)
                    .connect()
                    .await?,
            ),
            Impl::TetherLength => Conn::Length(
                Client::new(endpoint, LengthCodec::new(), options)
                    .connect()
                    .await?,
            ),
            Impl::TetherPacket | Impl::TetherPipeline => {
                Conn::Packet(packet_connect(addr, tls, NoHandler).await?)
            }
            Impl::StdBlocking | Impl::TetherBlocking => {
                return Err(format!("{} is blocking: use BlockingConn", imp.name()).into())
            }
        })
    }

    /// One request on a connection of its own, the way a user of that API
    /// asks once: connect, echo, close; the packet layer's
    /// [`PacketConnection::request_once`] sends its EOF with the request.
    pub async fn echo_once(
        imp: Impl,
        addr: SocketAddr,
        tls: Option<&TlsClientConfig>,
        payload: &Bytes,
    ) -> CliResult<()> {
        if imp == Impl::TetherPacket {
            let endpoint = endpoint(addr, tls.is_some());
            let options = client_options(tls).connect_options();
            let r =
                PacketConnection::request_once(&endpoint, &options, 0, 0, payload.clone()).await?;
            return check_ok(&r).and_then(|()| check_len(payload.len(), r.payload.len()));
        }
        let mut c = Conn::connect(imp, addr, tls).await?;
        c.echo(payload).await?;
        c.close().await
    }

    /// One request and its reply; checks the reply has the payload's length.
    pub async fn echo(&mut self, payload: &Bytes) -> CliResult<()> {
        let got = match self {
            Conn::Framed(f) => framed_echo(f, payload).await?,
            Conn::FramedTls(f) => framed_echo(f, payload).await?,
            Conn::Sentinel(s) => s.request(payload.clone()).await?.len(),
            Conn::Length(s) => s.request(payload.clone()).await?.len(),
            Conn::Packet(c) => {
                let r = c.submit(0, 0, payload.clone()).await?;
                check_ok(&r)?;
                r.payload.len()
            }
        };
        check_len(payload.len(), got)
    }

    /// Closes the connection the way a user of that API does.
    pub async fn close(self) -> CliResult<()> {
        match self {
            Conn::Framed(_) | Conn::FramedTls(_) => {}
            Conn::Sentinel(s) => s.close().await?,
            Conn::Length(s) => s.close().await?,
            Conn::Packet(c) => c.close().await?,
        }
        Ok(())
    }
}

fn check_ok(r: &Response) -> CliResult<()> {
    if r.ok {
        Ok(())
    } else {
        Err(format!(
            "the server failed the request: {}",
            String::from_utf8_lossy(&r.payload)
        )
        .into())
    }
}

fn check_len(sent: usize, got: usize) -> CliResult<()> {
    if sent == got {
        Ok(())
    } else {
        Err(format!("an echo of {sent} bytes came back with {got}").into())
    }
}

/// A blocking client connection of one implementation.
pub enum BlockingConn {
    /// The std-blocking baseline.
    Std(StdClient),
    /// tether's blocking session over the length prefix.
    Tether(Box<tether::blocking::Session<LengthCodec>>),
}

impl BlockingConn {
    /// Connects to the echo server of `imp` at `addr`.
    pub fn connect(imp: Impl, addr: SocketAddr) -> CliResult<BlockingConn> {
        match imp {
            Impl::StdBlocking => Ok(BlockingConn::Std(StdClient::connect(addr)?)),
            Impl::TetherBlocking => {
                let endpoint = endpoint(addr, false);
                let options = client_options(None);
                let client = tether::blocking::Client::new(endpoint, LengthCodec::new(), options);
                Ok(BlockingConn::Tether(Box::new(client.connect()?)))
            }
            _ => Err(format!("{} is async: use Conn", imp.name()).into()),
        }
    }

    /// One request and its reply; checks the reply has the payload's length.
    pub fn echo(&mut self, payload: &[u8]) -> CliResult<()> {
        let got = match self {
            BlockingConn::Std(c) => c.echo(payload)?,
            BlockingConn::Tether(s) => s.request(payload)?.len(),
        };
        check_len(payload.len(), got)
    }

    /// Closes the connection.
    pub fn close(self) -> CliResult<()> {
        match self {
            BlockingConn::Std(_) => {}
            BlockingConn::Tether(s) => (*s).close()?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        assert!(check_len(64, 64).is_ok());
        assert!(check_len(64, 63).is_err());
    }
}
