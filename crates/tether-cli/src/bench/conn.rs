//! One echo connection of any implementation, so that a workload is written
//! once for all of them: [`Conn`] for the async ones, [`BlockingConn`] for
//! the blocking ones, and [`start_echo_server`] for the matching server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tether::framing::{LengthCodec, SentinelCodec};
use tether::packet::{NoHandler, PacketConfig, PacketConnection};
use tether::session::{Client, ClientOptions, Session};
use tether::transport::tls::SelfSigned;
use tether::transport::Endpoint;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::baselines::{
    framed_connect, framed_connect_tls, framed_echo, framed_server, FramedService, FramedTcp,
    FramedTls, StdClient, StdServer,
};
use super::rig::{Ctx, Running};
use super::stacks::{blocking_server, packet_server, session_server};
use super::Impl;
use crate::CliResult;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the echo server of `imp` on the server runtime (over TLS 1.3
/// with the run's self-signed certificate when `tls`).
pub async fn start_echo_server(ctx: &Ctx, imp: Impl, tls: bool) -> CliResult<Running> {
    let certs = if tls { Some(ctx.tls()?) } else { None };
    let server_tls = certs.map(|c| c.server.clone());
    match imp {
        Impl::StdBlocking if !tls => Ok(Running::Std(StdServer::start()?)),
        Impl::StdBlocking => Err("std-blocking has no TLS server".into()),
        Impl::TokioFramed => {
            let acceptor = server_tls.map(|c| TlsAcceptor::from(c.rustls_config().clone()));
            ctx.server
                .spawn(|r, s| framed_server(r, s, FramedService::Echo, acceptor))
                .await
        }
        Impl::TetherSentinel => {
            ctx.server
                .spawn(|r, s| session_server(r, s, SentinelCodec::lines(), server_tls))
                .await
        }
        Impl::TetherBlocking if !tls => {
            let (server, addr) = blocking_server()?;
            Ok(Running::Blocking(server, addr))
        }
        Impl::TetherBlocking => Err("tether-blocking runs without TLS in the bench".into()),
        Impl::TetherLength => {
            ctx.server
                .spawn(|r, s| session_server(r, s, LengthCodec::new(), server_tls))
                .await
        }
        Impl::TetherPacket | Impl::TetherPipeline => {
            ctx.server
                .spawn(|r, s| packet_server(r, s, server_tls))
                .await
        }
    }
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
    pub async fn connect(imp: Impl, addr: SocketAddr, tls: Option<&SelfSigned>) -> CliResult<Conn> {
        let endpoint = match tls {
            None => Endpoint::tcp(addr.ip().to_string(), addr.port()),
            Some(_) => Endpoint::Tls {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
        };
        let mut options = ClientOptions::default().connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = tls {
            options = options.tls(t.client.clone());
        }
        Ok(match imp {
            Impl::TokioFramed => match tls {
                None => Conn::Framed(framed_connect(addr).await?),
                Some(t) => {
                    let connector = TlsConnector::from(t.client.rustls_config().clone());
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
            Impl::TetherPacket | Impl::TetherPipeline => Conn::Packet(
                PacketConnection::connect_with(
                    &endpoint,
                    &options.connect_options(),
                    NoHandler,
                    PacketConfig::default(),
                )
                .await?,
            ),
            Impl::StdBlocking | Impl::TetherBlocking => {
                return Err(format!("{} is blocking: use BlockingConn", imp.name()).into())
            }
        })
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
                if !r.ok {
                    return Err(format!(
                        "the server failed the request: {}",
                        String::from_utf8_lossy(&r.payload)
                    )
                    .into());
                }
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
                let endpoint = Endpoint::tcp(addr.ip().to_string(), addr.port());
                let options = ClientOptions::default().connect_timeout(CONNECT_TIMEOUT);
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
