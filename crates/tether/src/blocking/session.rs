use std::io::{self, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::socket::StdStream;
use crate::framing::{encode_frame, FrameEncoder, FramingError};
use crate::session::{ClientOptions, SessionError, READ_CHUNK};
use crate::transport::{self, ByteStream, Endpoint, TransportError};

/// Opens blocking [`Session`]s to one endpoint: the blocking twin of
/// [`crate::session::Client`].
#[derive(Debug, Clone)]
pub struct Client<C> {
    endpoint: Endpoint,
    codec: C,
    options: ClientOptions,
}

impl<C: Clone> Client<C> {
    /// A client for `endpoint`; each session gets a clone of `codec`.
    pub fn new(endpoint: Endpoint, codec: C, options: ClientOptions) -> Self {
        Client {
            endpoint,
            codec,
            options,
        }
    }

    /// Opens a session, within the connect timeout.
    pub fn connect(&self) -> Result<Session<C>, SessionError> {
        let io = Io::connect(&self.endpoint, &self.options)?;
        Ok(Session {
            io: Some(io),
            codec: self.codec.clone(),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            options: self.options.clone(),
            closed_because: None,
        })
    }

    /// Runs `f` with a new session and closes it afterwards, whatever `f`
    /// returns: the `with client as session:` of the Python seeds.
    pub fn with_session<T>(
        &self,
        f: impl FnOnce(&mut Session<C>) -> Result<T, SessionError>,
    ) -> Result<T, SessionError> {
        let mut session = self.connect()?;
        let result = f(&mut session);
        let closed = session.close();
        let value = result?;
        closed?;
        Ok(value)
    }

    /// The sessionless mode: a connection for this one request.
    pub fn request_once<Req>(&self, request: Req) -> Result<C::Item, SessionError>
    where
        C: FrameEncoder<Req> + Decoder<Error = FramingError>,
    {
        self.with_session(|session| session.request(request))
    }
}

enum Io {
    Socket(StdStream, SocketTimeouts),
    // Telnet, TLS, stdio, exec: the async stream driven by a private runtime.
    Bridged(tokio::runtime::Runtime, Box<ByteStream>),
}

impl Io {
    fn connect(endpoint: &Endpoint, options: &ClientOptions) -> Result<Io, TransportError> {
        let timeout = options.connect_timeout_value();
        let named = |source: io::Error| TransportError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            Endpoint::Tcp { .. } => {
                let stream = connect_tcp(endpoint, timeout)?;
                stream.set_nodelay(true).map_err(named)?;
                Ok(Io::Socket(
                    StdStream::Tcp(stream),
                    SocketTimeouts::default(),
                ))
            }
            Endpoint::Unix(path) => {
                let stream = connect_unix(path, timeout).map_err(|e| match e.kind() {
                    io::ErrorKind::TimedOut => TransportError::ConnectTimeout {
                        endpoint: endpoint.to_string(),
                        timeout,
                    },
                    _ => named(e),
                })?;
                Ok(Io::Socket(
                    StdStream::Unix(stream),
                    SocketTimeouts::default(),
                ))
            }
            _ => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(named)?;
                let stream = rt.block_on(transport::connect_with(
                    endpoint,
                    &options.connect_options(),
                ))?;
                Ok(Io::Bridged(rt, Box::new(stream)))
            }
        }
    }

    /// Reads into `buf`, giving up at `deadline` with `TimedOut`.
    fn read_buf(&mut self, buf: &mut BytesMut, deadline: Option<Instant>) -> io::Result<usize> {
        let remaining = remaining(deadline)?;
        buf.reserve(READ_CHUNK);
        match self {
            Io::Socket(s, set) => {
                set.read(remaining, |t| s.set_read_timeout(t))?;
                super::read_into(buf, |room| s.read(room))
            }
            Io::Bridged(rt, s) => rt.block_on(async {
                match remaining {
                    Some(left) => tokio::time::timeout(left, s.read_buf(buf))
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
                    None => s.read_buf(buf).await,
                }
            }),
        }
    }

    /// Writes `parts` in order (see [`super::frame_parts`]), giving up at
    /// `deadline` with `TimedOut`.
    fn write_all(&mut self, parts: [&[u8]; 3], deadline: Option<Instant>) -> io::Result<()> {
        let left = remaining(deadline)?;
        match self {
            Io::Socket(s, set) => {
                set.write(left, |t| s.set_write_timeout(t))?;
                // each write waits at most what is left of the deadline,
                // so a peer that reads slowly cannot stretch it
                let socket = &*s;
                super::write_parts(&mut &*socket, parts, || {
                    let left = remaining(deadline)?;
                    set.write(left, |t| socket.set_write_timeout(t))
                })
            }
            Io::Bridged(rt, s) => rt.block_on(async {
                let write = async {
                    for part in parts {
                        s.write_all(part).await?;
                    }
                    s.flush().await
                };
                match left {
                    Some(left) => tokio::time::timeout(left, write)
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
                    None => write.await,
                }
            }),
        }
    }

    /// Ends the write side (for TLS, its close_notify goes out first:
    /// within `limit`, so a peer that reads nothing cannot hold it).
    fn shutdown(&mut self, limit: Duration) -> io::Result<()> {
        match self {
            Io::Socket(s, _) => s.shutdown(std::net::Shutdown::Write),
            Io::Bridged(rt, s) => rt.block_on(async {
                tokio::time::timeout(limit, s.shutdown())
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            }),
        }
    }
}

/// The socket timeouts last set. A request's deadline gives every read and
/// write a slightly shorter timeout than the one before; setting it each time
/// cost two extra syscalls per request. The kernel keeps these timeouts in
/// scheduler ticks (1 to 10 ms), so a change smaller than [`TIMEOUT_SLACK`]
/// is skipped: a deadline may fire that much early or late, no more.
#[derive(Debug, Default)]
struct SocketTimeouts {
    read: Option<Option<Duration>>,
    write: Option<Option<Duration>>,
}

const TIMEOUT_SLACK: Duration = Duration::from_millis(1);

impl SocketTimeouts {
    fn read(
        &mut self,
        wanted: Option<Duration>,
        set: impl FnOnce(Option<Duration>) -> io::Result<()>,
    ) -> io::Result<()> {
        update(&mut self.read, wanted, set)
    }

    fn write(
        &mut self,
        wanted: Option<Duration>,
        set: impl FnOnce(Option<Duration>) -> io::Result<()>,
    ) -> io::Result<()> {
        update(&mut self.write, wanted, set)
    }
}

fn update(
    current: &mut Option<Option<Duration>>,
    wanted: Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let close_enough = match (*current, wanted) {
        (Some(Some(now)), Some(want)) => now.max(want) - now.min(want) <= TIMEOUT_SLACK,
        (Some(None), None) => true,
        _ => false,
    };
    if !close_enough {
        set(wanted)?;
        *current = Some(wanted);
    }
    Ok(())
}

/// A Unix connection to `path` within `timeout`. A blocking connect waits
/// for as long as the server's backlog is full (for ever, if it stalled);
/// a non-blocking one says so at once and is tried again every few
/// milliseconds until the timeout (`TimedOut`).
fn connect_unix(path: &std::path::Path, timeout: Duration) -> io::Result<UnixStream> {
    let addr = socket2::SockAddr::unix(path)?;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match socket.connect(&addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

/// The addresses of `target` (`host:port`), within `timeout`: an address
/// is parsed at once; a host name is resolved on a thread of its own, since
/// the system resolver takes no timeout (a thread still waiting on it when
/// the time is up ends when the resolver gives up).
fn resolve(target: &str, timeout: Duration) -> io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = target.parse() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = target.to_string();
    std::thread::Builder::new()
        .name("tether-resolve".into())
        .spawn(move || {
            let _ = tx.send(owned.to_socket_addrs().map(Iterator::collect));
        })?;
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

fn connect_tcp(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, TransportError> {
    let named = |source: io::Error| TransportError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    let target = endpoint.host_port().expect("tcp endpoint");
    let start = Instant::now();
    let mut last = None;
    let addrs = resolve(&target, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => TransportError::ConnectTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        },
        _ => named(e),
    })?;
    for addr in addrs {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() != io::ErrorKind::TimedOut => Err(named(e)),
        _ if start.elapsed() >= timeout => Err(TransportError::ConnectTimeout {
            endpoint: endpoint.to_string(),
            timeout,
        }),
        Some(e) => Err(named(e)),
        None => Err(named(io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolved to no address",
        ))),
    }
}

fn remaining(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::ErrorKind::TimedOut.into())
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// A blocking session: the twin of [`crate::session::Session`], with the
/// same deadline rule (a timeout closes the session, since a late reply
/// would be read as the next one).
pub struct Session<C> {
    io: Option<Io>,
    codec: C,
    rbuf: BytesMut,
    wbuf: BytesMut,
    options: ClientOptions,
    closed_because: Option<String>,
}

impl<C> std::fmt::Debug for Session<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("open", &self.io.is_some())
            .field("closed_because", &self.closed_because)
            .finish()
    }
}

impl<C> Session<C> {
    /// Whether the session can still be used.
    pub fn is_open(&self) -> bool {
        self.io.is_some()
    }

    fn check_open(&self) -> Result<(), SessionError> {
        match self.io {
            Some(_) => Ok(()),
            None => Err(SessionError::Closed {
                reason: self
                    .closed_because
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            }),
        }
    }

    fn close_because(&mut self, reason: impl Into<String>) {
        self.io = None;
        self.closed_because.get_or_insert_with(|| reason.into());
    }

    fn deadline(&self) -> Option<Instant> {
        self.options
            .request_timeout_value()
            .map(|t| Instant::now() + t)
    }

    /// Flushes, tells the peer (end of stream) and closes, within the
    /// request deadline (or [`CLOSE_LIMIT`](crate::session::CLOSE_LIMIT),
    /// without one).
    pub fn close(mut self) -> Result<(), SessionError> {
        let limit = self
            .options
            .request_timeout_value()
            .unwrap_or(crate::session::CLOSE_LIMIT);
        match self.io.take() {
            Some(mut io) => io.shutdown(limit).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => SessionError::Timeout { after: limit },
                _ => SessionError::Transport(e.into()),
            }),
            None => Ok(()),
        }
    }
}

impl<C: Decoder<Error = FramingError>> Session<C> {
    /// Sends `request` and returns the decoded reply, within the request deadline.
    pub fn request<Req>(&mut self, request: Req) -> Result<C::Item, SessionError>
    where
        C: FrameEncoder<Req>,
    {
        let deadline = self.deadline();
        self.write(request, deadline)?;
        self.read(deadline, true)
    }

    /// Sends `request` with no reply expected.
    pub fn send<Req>(&mut self, request: Req) -> Result<(), SessionError>
    where
        C: FrameEncoder<Req>,
    {
        let deadline = self.deadline();
        self.write(request, deadline)
    }

    /// Waits for one frame the peer sends unasked; a timeout leaves the session open.
    pub fn receive(&mut self) -> Result<C::Item, SessionError> {
        let deadline = self.deadline();
        self.read(deadline, false)
    }

    fn write<Req>(&mut self, request: Req, deadline: Option<Instant>) -> Result<(), SessionError>
    where
        C: FrameEncoder<Req>,
    {
        self.check_open()?;
        self.wbuf.clear();
        // a long payload is written from `request` itself, not copied
        let long = encode_frame(&mut self.codec, request, &mut self.wbuf)?;
        let left_out = long
            .as_ref()
            .map(|(request, at)| (self.codec.payload(request), *at));
        let parts = super::frame_parts(&self.wbuf, left_out);
        let io = self.io.as_mut().expect("checked");
        if let Err(e) = io.write_all(parts, deadline) {
            return Err(self.fail(e, deadline, true));
        }
        Ok(())
    }

    fn read(
        &mut self,
        deadline: Option<Instant>,
        closes_on_timeout: bool,
    ) -> Result<C::Item, SessionError> {
        self.check_open()?;
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
            let io = self.io.as_mut().expect("checked");
            match io.read_buf(&mut self.rbuf, deadline) {
                Ok(0) => {
                    return match self.codec.decode_eof(&mut self.rbuf) {
                        Ok(Some(frame)) => Ok(frame),
                        Ok(None) => {
                            self.close_because("the peer closed the connection");
                            Err(SessionError::Disconnected)
                        }
                        Err(e) => {
                            self.close_because(e.to_string());
                            Err(e.into())
                        }
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(self.fail(e, deadline, closes_on_timeout)),
            }
        }
    }

    fn fail(
        &mut self,
        e: io::Error,
        deadline: Option<Instant>,
        closes_on_timeout: bool,
    ) -> SessionError {
        let timed_out = matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        );
        match (timed_out, deadline) {
            (true, Some(_)) => {
                let after = self.options.request_timeout_value().unwrap_or_default();
                if closes_on_timeout {
                    self.close_because(format!("a reply did not come within {after:?}"));
                }
                SessionError::Timeout { after }
            }
            _ => {
                self.close_because(e.to_string());
                SessionError::Transport(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_parsed_and_host_names_resolved_within_the_timeout() {
        let limit = Duration::from_secs(10);
        let v4 = resolve("127.0.0.1:80", limit).unwrap();
        assert_eq!(v4, ["127.0.0.1:80".parse().unwrap()]);
        let v6 = resolve("[::1]:80", limit).unwrap();
        assert_eq!(v6, ["[::1]:80".parse().unwrap()]);
        let named = resolve("localhost:80", limit).unwrap();
        assert!(
            named.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
            "{named:?}"
        );
        assert!(resolve("no port here", limit).is_err());
    }

    #[test]
    fn socket_timeouts_change_only_when_the_deadline_has_moved() {
        let mut timeouts = SocketTimeouts::default();
        let mut calls = Vec::new();
        let mut set = |wanted| {
            timeouts.read(wanted, |t| {
                calls.push(t);
                Ok(())
            })
        };
        let second = Duration::from_secs(1);
        set(Some(second)).unwrap();
        set(Some(second - Duration::from_micros(20))).unwrap(); // the next request
        set(Some(second - Duration::from_millis(5))).unwrap(); // late in a slow reply
        set(None).unwrap();
        set(None).unwrap();
        assert_eq!(
            calls,
            [Some(second), Some(second - Duration::from_millis(5)), None]
        );
    }
}
