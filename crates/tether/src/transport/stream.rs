//! [`ByteStream`]: one type for every transport, dispatched statically.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::telnet::{TelnetOptions, TelnetStream};
use super::tls::{self, TlsClientConfig};
use super::{Endpoint, TransportError};

/// Who is at the other end of a [`ByteStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP (or Telnet) peer.
    Tcp(SocketAddr),
    /// A Unix-socket peer (usually unnamed).
    Unix,
    /// The process at the other end of our stdin/stdout.
    Stdio,
    /// A child process we started, by pid.
    Child(u32),
    /// The other half of an in-memory pipe.
    Memory,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => write!(f, "{addr}"),
            PeerAddr::Unix => f.write_str("unix peer"),
            PeerAddr::Stdio => f.write_str("stdio"),
            PeerAddr::Child(pid) => write!(f, "child process {pid}"),
            PeerAddr::Memory => f.write_str("memory"),
        }
    }
}

/// A bidirectional byte stream over any transport tether supports.
///
/// It implements tokio's [`AsyncRead`] and [`AsyncWrite`], so codecs,
/// `Framed` and every layer above work on it unchanged. Shutting down the
/// write half (`AsyncWriteExt::shutdown`) sends end-of-stream to the peer.
pub struct ByteStream {
    inner: Inner,
    peer: PeerAddr,
}

enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
    Telnet(Box<TelnetStream<TcpStream>>),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    // Boxed, like the other large variants: every TCP stream is as big as
    // the largest variant, and a server holds thousands of them.
    Stdio(Box<tokio::io::Join<tokio::io::Stdin, tokio::io::Stdout>>),
    Child(Box<ChildStream>),
    Memory(DuplexStream),
}

/// A child process's stdout (read) and stdin (write).
///
/// The child is killed if still running when this is dropped, and tokio
/// reaps it, so no zombie is left behind.
struct ChildStream {
    // Kept for `kill_on_drop`; never polled.
    _child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl ByteStream {
    /// Who is at the other end.
    pub fn peer(&self) -> PeerAddr {
        self.peer
    }

    /// Waits until a read would find data (or end of stream), without
    /// reading, so that a caller can wait holding no read buffer.
    /// Transports that cannot tell return at once.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// [`readable`](Self::readable) as a poll. Only the waker of the latest
    /// call is woken, which suits the one task that reads a stream.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            Inner::Tcp(s) => s.poll_read_ready(cx),
            Inner::Unix(s) => s.poll_read_ready(cx),
            Inner::Telnet(s) => s.get_ref().poll_read_ready(cx),
            Inner::Tls(s) => {
                let (tcp, tls) = s.get_ref();
                // Plaintext already decrypted (a record bigger than the last
                // read) would never make the socket readable again.
                if tls.wants_read() {
                    tcp.poll_read_ready(cx)
                } else {
                    Poll::Ready(Ok(()))
                }
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Whether written bytes may wait in a buffer of this stream until a
    /// flush: TLS records, Telnet escapes, stdio. TCP, Unix and memory
    /// streams write through.
    pub(crate) fn buffers_writes(&self) -> bool {
        !matches!(
            self.inner,
            Inner::Tcp(_) | Inner::Unix(_) | Inner::Memory(_)
        )
    }

    /// Wraps a connected TCP stream (sets `TCP_NODELAY`).
    pub fn from_tcp(stream: TcpStream) -> io::Result<Self> {
        let peer = stream.peer_addr()?;
        Self::from_tcp_with_peer(stream, peer)
    }

    /// [`from_tcp`](Self::from_tcp) when the peer's address is already
    /// known (from `accept` or `connect`): one system call fewer per
    /// connection.
    pub(crate) fn from_tcp_with_peer(stream: TcpStream, peer: SocketAddr) -> io::Result<Self> {
        // A peer that reset at once can make this fail (on BSDs): that is
        // its connection's trouble, found at its first read, not an
        // accept error that would pause the listener for everyone.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        Ok(ByteStream {
            inner: Inner::Tcp(stream),
            peer: PeerAddr::Tcp(peer),
        })
    }

    /// Wraps a connected Unix stream.
    pub fn from_unix(stream: UnixStream) -> Self {
        ByteStream {
            inner: Inner::Unix(stream),
            peer: PeerAddr::Unix,
        }
    }

    /// This process's standard input and output.
    pub fn stdio() -> Self {
        ByteStream {
            inner: Inner::Stdio(Box::new(tokio::io::join(
                tokio::io::stdin(),
                tokio::io::stdout(),
            ))),
            peer: PeerAddr::Stdio,
        }
    }

    /// Wraps a Telnet stream.
    pub fn from_telnet(stream: TelnetStream<TcpStream>) -> io::Result<Self> {
        let peer = stream.get_ref().peer_addr()?;
        Ok(Self::from_telnet_with_peer(stream, peer))
    }

    /// [`from_telnet`](Self::from_telnet) when the peer's address is known.
    fn from_telnet_with_peer(stream: TelnetStream<TcpStream>, peer: SocketAddr) -> Self {
        ByteStream {
            inner: Inner::Telnet(Box::new(stream)),
            peer: PeerAddr::Tcp(peer),
        }
    }

    /// Wraps an established TLS stream (either side) over TCP; `peer` is the TCP peer.
    pub(crate) fn from_tls(stream: tokio_rustls::TlsStream<TcpStream>, peer: SocketAddr) -> Self {
        ByteStream {
            inner: Inner::Tls(Box::new(stream)),
            peer: PeerAddr::Tcp(peer),
        }
    }

    /// Starts `program` with piped stdin and stdout (stderr is inherited).
    pub fn spawn(program: &str, args: &[String]) -> io::Result<Self> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        Ok(ByteStream {
            inner: Inner::Child(Box::new(ChildStream {
                _child: child,
                stdin: Some(stdin),
                stdout,
            })),
            peer: PeerAddr::Child(pid),
        })
    }

    /// Wraps one half of a tokio in-memory duplex pipe.
    pub fn from_memory(stream: DuplexStream) -> Self {
        ByteStream {
            inner: Inner::Memory(stream),
            peer: PeerAddr::Memory,
        }
    }
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Tcp(_) => "tcp",
            Inner::Unix(_) => "unix",
            Inner::Telnet(_) => "telnet",
            Inner::Tls(_) => "tls",
            Inner::Stdio(_) => "stdio",
            Inner::Child(_) => "exec",
            Inner::Memory(_) => "memory",
        };
        f.debug_struct("ByteStream")
            .field("transport", &kind)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Two connected in-memory streams, each buffering up to `capacity` bytes
/// in each direction: a transport for tests and for in-process links.
pub fn memory_pair(capacity: usize) -> (ByteStream, ByteStream) {
    let (a, b) = tokio::io::duplex(capacity);
    (ByteStream::from_memory(a), ByteStream::from_memory(b))
}

/// How to connect: the timeout, and for `tls://` which servers to trust.
///
/// ```
/// use std::time::Duration;
/// use tether::transport::ConnectOptions;
///
/// let options = ConnectOptions::new(Duration::from_secs(2));
/// assert_eq!(options.timeout_value(), Duration::from_secs(2));
/// assert!(options.tls_config().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    timeout: Duration,
    tls: Option<TlsClientConfig>,
}

impl ConnectOptions {
    /// Gives up after `timeout` (connecting and, for TLS, the handshake);
    /// `tls://` trusts the CA file named by `TETHER_TLS_CA`.
    pub fn new(timeout: Duration) -> Self {
        ConnectOptions { timeout, tls: None }
    }

    /// The TLS client configuration for `tls://` endpoints.
    pub fn tls(mut self, config: TlsClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The connect timeout.
    pub fn timeout_value(&self) -> Duration {
        self.timeout
    }

    /// The TLS client configuration, if one was given.
    pub fn tls_config(&self) -> Option<&TlsClientConfig> {
        self.tls.as_ref()
    }
}

/// Opens a byte stream to `endpoint`, giving up after `timeout`.
///
/// TCP tries every address the host resolves to, in order, within the one
/// timeout. Errors name the endpoint. `tls://` trusts the certificate
/// authorities in the PEM file named by `TETHER_TLS_CA`; use
/// [`connect_with`] to give a [`TlsClientConfig`].
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<ByteStream, TransportError> {
    connect_with(endpoint, &ConnectOptions::new(timeout)).await
}

/// Opens a byte stream to `endpoint` with `options`.
///
/// For `tls://host:port`, the TCP connection and the TLS handshake together
/// must finish within the timeout; the server's certificate must be signed
/// by a trusted authority and name `host`.
pub async fn connect_with(
    endpoint: &Endpoint,
    options: &ConnectOptions,
) -> Result<ByteStream, TransportError> {
    let timeout = options.timeout;
    let named = |source: io::Error| TransportError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    let attempt = async {
        match endpoint {
            Endpoint::Tcp { .. } => {
                let (tcp, peer) = connect_tcp(endpoint).await.map_err(named)?;
                ByteStream::from_tcp_with_peer(tcp, peer).map_err(named)
            }
            Endpoint::Telnet { .. } => {
                let (tcp, peer) = connect_tcp(endpoint).await.map_err(named)?;
                tcp.set_nodelay(true).map_err(named)?;
                let telnet = TelnetStream::new(tcp, TelnetOptions::default());
                Ok(ByteStream::from_telnet_with_peer(telnet, peer))
            }
            Endpoint::Tls { host, .. } => {
                let config = tls::client_config_for(endpoint, options.tls.as_ref())?;
                let name = tls::server_name(endpoint, host)?;
                let (tcp, peer) = connect_tcp(endpoint).await.map_err(named)?;
                tcp.set_nodelay(true).map_err(named)?;
                tls::client_handshake(tcp, peer, endpoint, (host, name), &config).await
            }
            Endpoint::Unix(path) => Ok(ByteStream::from_unix(
                UnixStream::connect(path).await.map_err(named)?,
            )),
            Endpoint::Stdio => Ok(ByteStream::stdio()),
            Endpoint::Exec { program, args } => ByteStream::spawn(program, args).map_err(named),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::ConnectTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        }),
    }
}

/// A TCP connection to the first of the endpoint's addresses that takes
/// it, and that address.
async fn connect_tcp(endpoint: &Endpoint) -> io::Result<(TcpStream, SocketAddr)> {
    let target = endpoint.host_port().expect("network endpoint");
    let mut last_error = None;
    for addr in tokio::net::lookup_host(&target).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolved to no address",
        )
    }))
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($s) => $e,
            Inner::Unix($s) => $e,
            Inner::Telnet($s) => $e,
            Inner::Tls($s) => $e,
            Inner::Stdio($s) => $e,
            Inner::Child($s) => $e,
            Inner::Memory($s) => $e,
        }
    };
}

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Unix(s) => s.is_write_vectored(),
            _ => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for ChildStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdout).poll_read(cx, buf)
    }
}

impl AsyncWrite for ChildStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stdin {
            Some(stdin) => Pin::new(stdin).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stdin {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing the pipe is how a child learns that its input has ended.
        let this = self.get_mut();
        if let Some(stdin) = &mut this.stdin {
            std::task::ready!(Pin::new(stdin).poll_shutdown(cx))?;
        }
        this.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn memory_pair_carries_bytes_both_ways() {
        let (mut a, mut b) = memory_pair(64);
        a.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(b.peer(), PeerAddr::Memory);
    }

    /// The local address of a TCP or Telnet stream.
    fn local_tcp_addr(s: &ByteStream) -> SocketAddr {
        match &s.inner {
            Inner::Tcp(t) => t.local_addr().unwrap(),
            Inner::Telnet(t) => t.get_ref().local_addr().unwrap(),
            _ => panic!("not over TCP"),
        }
    }

    #[tokio::test]
    async fn each_end_of_a_tcp_or_telnet_stream_names_the_other() {
        // the peer comes from `accept` and `connect`, not asked of the socket
        for scheme in ["tcp", "telnet"] {
            let at: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
            let mut listener = crate::transport::Listener::bind(&at).await.unwrap();
            let listening = listener.local_endpoint();
            let target: Endpoint = format!("{scheme}://{}", listening.host_port().unwrap())
                .parse()
                .unwrap();
            let limit = Duration::from_secs(5);
            let (client, server) = tokio::join!(connect(&target, limit), async {
                tokio::time::timeout(limit, listener.accept())
                    .await
                    .unwrap()
            });
            let (client, server) = (client.unwrap(), server.unwrap());
            let PeerAddr::Tcp(server_seen_by_client) = client.peer() else {
                panic!("{scheme}: client's peer {:?}", client.peer())
            };
            assert_eq!(
                server_seen_by_client.to_string(),
                listening.host_port().unwrap(),
                "{scheme}"
            );
            assert_eq!(
                server.peer(),
                PeerAddr::Tcp(local_tcp_addr(&client)),
                "{scheme}"
            );
        }
    }

    #[tokio::test]
    async fn exec_talks_to_a_child_and_sees_its_exit() {
        let ep: Endpoint = "exec:cat".parse().unwrap();
        let mut s = connect(&ep, Duration::from_secs(5)).await.unwrap();
        s.write_all(b"round trip").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, b"round trip");
    }

    #[tokio::test]
    async fn a_dropped_child_is_killed_and_reaped() {
        let ep: Endpoint = "exec:sleep 30".parse().unwrap();
        let s = connect(&ep, Duration::from_secs(5)).await.unwrap();
        let PeerAddr::Child(pid) = s.peer() else {
            panic!("peer should be a child: {:?}", s.peer())
        };
        drop(s);
        let stat = format!("/proc/{pid}/stat");
        for _ in 0..250 {
            // Gone from /proc means killed and reaped; a zombie would linger as state Z.
            if std::fs::read_to_string(&stat).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "child {pid} still present: {:?}",
            std::fs::read_to_string(&stat)
        );
    }

    #[tokio::test]
    async fn exec_of_a_missing_program_names_it() {
        let ep: Endpoint = "exec:/no/such/program-tether".parse().unwrap();
        let err = connect(&ep, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("/no/such/program-tether"), "{err}");
    }
}
