//! The two baselines of BENCHMARKS.md, written the way a Rust user writes
//! them by hand today:
//!
//! - `std-blocking`: blocking `std::net`, a thread per connection, each
//!   frame a 4-byte big-endian length then the bytes. The floor that the
//!   kernel's loopback sets for rtt, connect and bulk.
//! - `tokio-framed`: tokio with tokio-util's `LengthDelimitedCodec`; the
//!   echo server is the usual `stream.forward(sink)`, which feeds replies
//!   while requests are buffered and flushes when none are. Over
//!   tokio-rustls for the tls workload.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tether::transport::tls::DEFAULT_HANDSHAKE_TIMEOUT;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::rig::{payload, serve_connections, PushCount};
use crate::CliResult;

/// The largest frame either baseline accepts: 8 MiB, as tether's default.
const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Frames up to this size are written with their prefix in one `write`;
/// larger ones in two, rather than copied behind the prefix.
const COALESCE: usize = 64 * 1024;
/// Blocking reads and writes give up after this long: a bounded wait.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The std-blocking echo server: an accept thread and a thread per connection.
pub struct StdServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StdServer {
    /// Binds `at` (port 0: a free port) and starts accepting.
    pub fn start(at: SocketAddr) -> io::Result<StdServer> {
        let listener = TcpListener::bind(at)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("std-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        let _ =
                            std::thread::Builder::new()
                                .name("std-conn".into())
                                .spawn(move || {
                                    let _ = std_echo(stream);
                                });
                    }
                }
            })?;
        Ok(StdServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connection threads end with their clients).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        // wake the blocked accept
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn std_echo(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match s.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
        }
        buf.clear();
        buf.extend_from_slice(&len);
        buf.resize(4 + n, 0);
        s.read_exact(&mut buf[4..])?;
        // prefix and body in one write: the reply is one segment
        s.write_all(&buf)?;
    }
}

/// A std-blocking client connection.
pub struct StdClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl StdClient {
    /// Connects to `addr`, with Nagle off and bounded reads and writes.
    pub fn connect(addr: SocketAddr) -> io::Result<StdClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(StdClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends `payload` as one frame and reads the reply; returns its length.
    pub fn echo(&mut self, payload: &[u8]) -> io::Result<usize> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?
            .to_be_bytes();
        if payload.len() <= COALESCE {
            self.buf.clear();
            self.buf.extend_from_slice(&len);
            self.buf.extend_from_slice(payload);
            self.stream.write_all(&self.buf)?;
        } else {
            self.stream.write_all(&len)?;
            self.stream.write_all(payload)?;
        }
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
        }
        self.buf.resize(n, 0);
        self.stream.read_exact(&mut self.buf[..n])?;
        Ok(n)
    }
}

/// The tokio-framed codec, with the same 8 MiB limit as tether's.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// What a tokio-framed server does with each accepted connection.
#[derive(Clone)]
pub enum FramedService {
    /// Echo every frame.
    Echo,
    /// Read the client's first frame, an 8-byte count ([`PushCount`]),
    /// send that many 64-byte frames, then wait for the client to hang up
    /// (the push workload).
    Push,
}

/// The tokio-framed server: binds `at`, reports its address on `ready`,
/// serves each connection in its own task (after a TLS handshake, also in
/// that task, when `tls` is given) until `stop`.
pub async fn framed_server(
    at: SocketAddr,
    ready: oneshot::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
    service: FramedService,
    tls: Option<TlsAcceptor>,
) -> CliResult<()> {
    let listener = tokio::net::TcpListener::bind(at).await?;
    let _ = ready.send(listener.local_addr()?);
    serve_connections(listener, stop, |stream| {
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = tls.clone();
        async move {
            match tls {
                None => serve_framed(stream, service).await,
                Some(acceptor) => {
                    // as tether's TLS listener: its default handshake limit
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(DEFAULT_HANDSHAKE_TIMEOUT, handshake).await
                    {
                        serve_framed(stream, service).await
                    }
                }
            }
        }
    })
    .await;
    Ok(())
}

async fn serve_framed<S>(stream: S, service: FramedService)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let framed = Framed::new(stream, codec());
    match service {
        FramedService::Echo => {
            let (sink, stream) = framed.split();
            let _ = stream.map(|r| r.map(BytesMut::freeze)).forward(sink).await;
        }
        FramedService::Push => {
            let mut framed = framed;
            let asked = tokio::time::timeout(PushCount::ASK_TIMEOUT, framed.next()).await;
            let Ok(Some(Ok(frame))) = asked else { return };
            let Some(n) = PushCount::decode(&frame) else {
                return;
            };
            let msg = payload(64);
            for _ in 0..n {
                // feed() flushes once 8 KiB are buffered: batched writes
                if framed.feed(msg.clone()).await.is_err() {
                    return;
                }
            }
            let _ = SinkExt::<Bytes>::flush(&mut framed).await;
            // wait for the client to hang up, so our close is never a reset
            // (a while: one that never does must not pin the connection)
            let _ = tokio::time::timeout(PushCount::ASK_TIMEOUT, framed.next()).await;
        }
    }
}

/// A tokio-framed client over plain TCP.
pub type FramedTcp = Framed<tokio::net::TcpStream, LengthDelimitedCodec>;
/// A tokio-framed client over tokio-rustls.
pub type FramedTls =
    Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, LengthDelimitedCodec>;

/// Connects a tokio-framed client (Nagle off).
pub async fn framed_connect(addr: SocketAddr) -> CliResult<FramedTcp> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(Framed::new(s, codec()))
}

/// Connects a tokio-framed client over TLS 1.3.
pub async fn framed_connect_tls(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> CliResult<FramedTls> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let name = tether::transport::tls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let s = connector.connect(name, s).await?;
    Ok(Framed::new(s, codec()))
}

/// One request and its reply on a framed client; returns the reply's length.
pub async fn framed_echo<S>(
    f: &mut Framed<S, LengthDelimitedCodec>,
    payload: &Bytes,
) -> CliResult<usize>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    f.send(payload.clone()).await?;
    match f.next().await {
        Some(r) => Ok(r?.len()),
        None => Err("the server closed the connection".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_client_and_server_echo_small_and_large_frames() {
        let server = StdServer::start(crate::bench::rig::ANY_LOOPBACK_PORT).unwrap();
        let mut c = StdClient::connect(server.addr()).unwrap();
        assert_eq!(c.echo(b"hello").unwrap(), 5);
        assert_eq!(c.echo(&payload(200_000)).unwrap(), 200_000);
        assert_eq!(c.echo(b"").unwrap(), 0);
        drop(c);
        server.stop();
    }
}
