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

use std::io::{self, IoSlice, Read, Write};
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
    let mut frames = FrameReader::default();
    // prefix and body, as read, in one write: the reply is one segment
    while let Some(frame) = frames.next(&mut s)? {
        s.write_all(frame)?;
    }
    Ok(())
}

/// How much a [`FrameReader`] asks of each read at least, as a `BufReader`
/// does: a 64-byte frame and its prefix come in one `read`; a bulk one
/// grows the buffer to its size once its prefix is in, then comes in a few
/// large reads. (A connection per request allocates it each time: 64 KiB
/// made W2's baseline three times slower.)
const READ_SIZE: usize = 8 * 1024;

/// Reads 4-byte-prefixed frames the way a careful hand-written blocking
/// loop does: one `read` takes the prefix and as much of the body as has
/// arrived, the buffer is kept (zero-filled only when it grows), and bytes
/// past a frame stay for the next.
#[derive(Default)]
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    /// The next frame, its prefix included; `None` at a clean end of
    /// stream (between frames).
    fn next(&mut self, s: &mut impl Read) -> io::Result<Option<&[u8]>> {
        while self.end - self.start < 4 {
            if !self.fill(s, 4)? {
                return match self.end - self.start {
                    0 => Ok(None),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
        let prefix = &self.buf[self.start..self.start + 4];
        let n = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if n > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
        }
        while self.end - self.start < 4 + n {
            if !self.fill(s, 4 + n)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let frame = self.start..self.start + 4 + n;
        self.start = frame.end;
        Ok(Some(&self.buf[frame]))
    }

    /// One read towards a frame of `want` bytes (prefix included): false at
    /// end of stream.
    fn fill(&mut self, s: &mut impl Read, want: usize) -> io::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.buf.len() < self.start + want.max(READ_SIZE) {
            // the frame's start moves to the front, the room grows to fit it
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() < want.max(READ_SIZE) {
                self.buf.resize(want.max(READ_SIZE), 0);
            }
        }
        let n = s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }
}

/// Writes `payload` behind its 4-byte prefix, both in one `writev` (no
/// copy, one segment for a small frame).
fn write_frame(s: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?
        .to_be_bytes();
    let total = len.len() + payload.len();
    let mut written = 0;
    while written < total {
        let rest = match written.checked_sub(len.len()) {
            None => [IoSlice::new(&len[written..]), IoSlice::new(payload)],
            Some(into_payload) => [IoSlice::new(&payload[into_payload..]), IoSlice::new(&[])],
        };
        match s.write_vectored(&rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A std-blocking client connection.
pub struct StdClient {
    stream: TcpStream,
    frames: FrameReader,
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
            frames: FrameReader::default(),
        })
    }

    /// Sends `payload` as one frame and reads the reply; returns its length.
    pub fn echo(&mut self, payload: &[u8]) -> io::Result<usize> {
        write_frame(&mut self.stream, payload)?;
        match self.frames.next(&mut self.stream)? {
            Some(frame) => Ok(frame.len() - 4),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
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

    /// A stream that hands out at most `step` bytes a call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for p in payloads {
            wire.extend_from_slice(&(p.len() as u32).to_be_bytes());
            wire.extend_from_slice(p);
        }
        wire
    }

    #[test]
    fn frame_reader_takes_frames_however_the_bytes_arrive() {
        let big = payload(3 * READ_SIZE + 5);
        let wire = frames(&[b"one", b"", &big, b"two"]);
        for step in [1, 3, 7, READ_SIZE, usize::MAX] {
            let mut s = Trickle {
                data: &wire,
                step,
                calls: 0,
            };
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            while let Some(frame) = r.next(&mut s).unwrap() {
                got.push(frame[4..].to_vec());
            }
            assert_eq!(got, [&b"one"[..], b"", &big, b"two"], "step {step}");
        }
        // a 64-byte frame and its prefix: one read
        let wire = frames(&[&[7u8; 64]]);
        let mut s = Trickle {
            data: &wire,
            step: usize::MAX,
            calls: 0,
        };
        assert!(FrameReader::default().next(&mut s).unwrap().is_some());
        assert_eq!(s.calls, 1);
    }

    #[test]
    fn frame_reader_refuses_a_cut_or_oversize_frame() {
        let wire = frames(&[b"whole"]);
        let cut = &wire[..wire.len() - 1];
        let mut s = Trickle {
            data: cut,
            step: 2,
            calls: 0,
        };
        let e = FrameReader::default().next(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut s = Trickle {
            data: &wire[..2],
            step: 2,
            calls: 0,
        };
        let e = FrameReader::default().next(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "a cut prefix");
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut s = Trickle {
            data: &huge,
            step: 4,
            calls: 0,
        };
        let e = FrameReader::default().next(&mut s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn write_frame_writes_the_prefix_then_the_payload_whatever_each_write_takes() {
        struct Sink(Vec<u8>, usize);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = self.1.min(buf.len());
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for step in [1, 3, 5, 1000] {
            let mut sink = Sink(Vec::new(), step);
            write_frame(&mut sink, b"payload").unwrap();
            assert_eq!(sink.0, frames(&[b"payload"]), "step {step}");
        }
    }
}
