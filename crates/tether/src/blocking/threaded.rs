//! The blocking server's TCP and Unix path: a thread per connection over
//! blocking `std` sockets.
//!
//! ```text
//!  accept thread ── accept() ──▶ connection thread (one per live peer)
//!                                  read ─▶ rbuf ─▶ codec.decode ─▶ handler
//!                                  write ◀─ wbuf ◀─ codec.encode ◀──┘
//! ```
//!
//! **Why a thread per connection.** The handler is a plain function, so it
//! runs best where the bytes arrive: the connection's own thread reads a
//! request, calls the handler and writes the reply, with no runtime and no
//! hand-off between threads. A round trip costs what it costs in a
//! hand-written `std::net` server: one `read` and one `write` syscall.
//!
//! **The cost** is a thread per connection (and up to [`MAX_IDLE_THREADS`]
//! more, waiting): its stack ([`STACK_SIZE`], reserved, mostly untouched)
//! and a kernel task. [`ServerOptions`]' `max_connections` bounds the
//! serving threads (beyond it a connection is accepted and closed at once,
//! as the async server does), [`MAX_IDLE_THREADS`] the waiting ones.
//! Servers holding thousands of mostly idle sessions belong on the async
//! [`crate::session::Server`].
//!
//! **Threads are reused.** A thread whose connection ended waits, idle, up
//! to [`IDLE_THREAD_TIME`] for the next one (at most [`MAX_IDLE_THREADS`]
//! wait), so clients that connect for each request do not pay for a new
//! thread each time: starting one costs tens of microseconds on the path
//! of the first request, handing a connection to a waiting one a futex
//! wake-up. (So a handler's thread-local state outlives its connection and
//! may be seen by a later one.)
//!
//! ```text
//!  accept ──▶ an idle thread waiting? ── yes ─▶ hand-off queue ─▶ it serves
//!                                      └─ no ──▶ a new thread serves
//!  connection ended ──▶ wait for the next (up to 10 s), or end
//! ```
//!
//! The rest is the async server's behaviour, loop for loop
//! (`session/server.rs`): the same sans-IO codec over a read and a write
//! buffer; requests already buffered are all answered before one write
//! sends the replies; `Ok(None)` sends nothing; a handler error, or a
//! handler panic (caught), closes that connection only; a request the codec
//! refuses (too long, malformed) closes the connection after the rest of
//! the peer's input is read and dropped for a moment, so that the close is
//! an end of stream, not a reset.
//!
//! **Shutdown.** The accept thread blocks in `accept()`; to stop it,
//! [`Running::stop`] raises the stopping flag and connects to the listener
//! itself, and the woken loop sees the flag and drops the listener. That
//! costs nothing while serving, unlike a non-blocking listener polled with a
//! sleep, which would add up to one sleep to every connect and wake the
//! thread all day. Connection threads blocked in `read` are woken by
//! `shutdown(Read)` on their sockets, which the server keeps in a registry
//! (shared with the threads, so no file descriptor is duplicated); a
//! handler running finishes, its reply is written, and the connection
//! closes. After the grace period the remaining sockets are shut down both
//! ways (a blocked write fails at once), and threads still inside a handler
//! after [`FORCE_WAIT`] more are left to finish on their own: `stop` never
//! hangs.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use tracing::{debug, info, warn};

use super::socket::StdStream;
use super::{PlainHandler, ServerCodec};
use crate::buffers::{self, clear_write_buf, ReadBuf};
use crate::framing::{encode_frame, FrameEncoder, FramingError};
use crate::session::{
    ConnectionId, ConnectionInfo, HandlerError, ServerOptions, ServerStats, LINGER_BYTES,
    LINGER_TIME, READ_CHUNK,
};
use crate::transport::{Endpoint, PeerAddr, TransportError};

/// Stack of a connection thread: 256 KiB. The loop itself needs a few KiB;
/// the rest is the handler's. std's 2 MiB default would reserve 2 GiB of
/// address space for a full server of 1,024 connections. A handler that
/// recurses deeply or keeps big arrays on the stack should hand that work
/// to a thread of its own.
pub(crate) const STACK_SIZE: usize = 256 * 1024;

/// After the grace period and the forced close, how long `stop` still waits
/// for handlers to return before leaving their threads behind.
pub(crate) const FORCE_WAIT: Duration = Duration::from_millis(100);

/// The listen backlog: tokio's, so that a burst of connects is queued
/// rather than dropped (std's `bind` asks for 128).
const BACKLOG: i32 = 1024;

/// How long the self-connect that wakes the accept loop may take. On
/// loopback it completes or fails at once; a full backlog means the accept
/// loop is awake anyway.
const WAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// How long closing a connection may spend writing the replies still queued.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection thread whose connection ended waits for another
/// before it ends.
pub(crate) const IDLE_THREAD_TIME: Duration = Duration::from_secs(10);

/// How many connection threads may wait for a connection at once; the
/// others end with their connection.
pub(crate) const MAX_IDLE_THREADS: usize = 64;

/// A connection's whole service, as a thread runs it.
type Job = Box<dyn FnOnce() + Send>;

/// The number of the thread serving a connection handed off but not yet
/// taken.
const NO_THREAD: usize = usize::MAX;

/// Whether the blocking server serves `endpoint` with a thread per connection.
pub(crate) fn serves(endpoint: &Endpoint) -> bool {
    matches!(endpoint, Endpoint::Tcp { .. } | Endpoint::Unix(_))
}

/// A bound listener; a Unix one removes its socket file when dropped, as
/// [`crate::transport::Listener`] does.
#[derive(Debug)]
enum StdListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl StdListener {
    fn bind(endpoint: &Endpoint) -> Result<(StdListener, Endpoint, Wake), TransportError> {
        let named = |source: io::Error| TransportError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            Endpoint::Tcp { .. } => {
                use std::net::ToSocketAddrs;
                let target = endpoint.host_port().expect("tcp has a host and port");
                let mut last = None;
                for addr in target.to_socket_addrs().map_err(named)? {
                    match bind_tcp(addr) {
                        Ok(listener) => {
                            let local = listener.local_addr().map_err(named)?;
                            let endpoint = Endpoint::tcp(local.ip().to_string(), local.port());
                            return Ok((StdListener::Tcp(listener), endpoint, Wake::tcp(local)));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(named(last.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "the host name resolved to no address",
                    )
                })))
            }
            Endpoint::Unix(path) => {
                let listener = UnixListener::bind(path).map_err(named)?;
                Ok((
                    StdListener::Unix(listener, path.clone()),
                    endpoint.clone(),
                    Wake::Unix(path.clone()),
                ))
            }
            _ => unreachable!("threaded::serves said yes"),
        }
    }

    fn accept(&self) -> io::Result<(StdStream, PeerAddr)> {
        match self {
            StdListener::Tcp(l) => {
                let (stream, addr) = l.accept()?;
                stream.set_nodelay(true)?;
                Ok((StdStream::Tcp(stream), PeerAddr::Tcp(addr)))
            }
            StdListener::Unix(l, _) => {
                let (stream, _) = l.accept()?;
                Ok((StdStream::Unix(stream), PeerAddr::Unix))
            }
        }
    }
}

impl Drop for StdListener {
    fn drop(&mut self) {
        if let StdListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// How to wake the accept loop: connect to the listener.
#[derive(Debug)]
enum Wake {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Wake {
    fn tcp(mut local: SocketAddr) -> Wake {
        // A wildcard listener is reached on the loopback of its family.
        if local.ip().is_unspecified() {
            local.set_ip(match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Wake::Tcp(local)
    }

    fn wake(&self) {
        let woke = match self {
            Wake::Tcp(addr) => TcpStream::connect_timeout(addr, WAKE_TIMEOUT).map(drop),
            // Non-blocking: a Unix connect waits while the backlog is
            // full, and then the accept loop has peers to wake it anyway.
            Wake::Unix(path) => socket2::SockAddr::unix(path).and_then(|addr| {
                let socket =
                    socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                socket.set_nonblocking(true)?;
                match socket.connect(&addr) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    other => other,
                }
            }),
        };
        if let Err(e) = woke {
            debug!(error = %e, "could not wake the accept loop");
        }
    }
}

/// What the accept thread, the connection threads and `stop` share.
#[derive(Debug)]
struct Shared {
    /// Raised once, under the state lock, by `stop`; read by every loop.
    stopping: AtomicBool,
    state: Mutex<State>,
    /// Signalled when a connection ends or the accept loop does.
    changed: Condvar,
    /// Signalled when a connection is handed off to the idle threads, and
    /// at stop.
    handed_off: Condvar,
    stats: ServerStats,
    max_connections: usize,
    /// See [`ServerOptions::write_stall_limit`].
    write_stall: Duration,
}

struct State {
    /// Every live connection: its socket, to wake or close it, and the
    /// number of its thread.
    live: HashMap<ConnectionId, (Arc<StdStream>, usize)>,
    /// Connection threads by number, to join on stop (finished ones are
    /// pruned as new ones start).
    threads: Vec<(usize, JoinHandle<()>)>,
    /// Connections handed to the idle threads, first come first served.
    handoff: VecDeque<(ConnectionId, Job)>,
    /// Threads waiting for a connection.
    idle: usize,
    /// The accept loop has not ended yet.
    accepting: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("live", &self.live.len())
            .field("threads", &self.threads.len())
            .field("handoff", &self.handoff.len())
            .field("idle", &self.idle)
            .field("accepting", &self.accepting)
            .finish()
    }
}

impl Shared {
    /// A server's state before its accept loop starts: no connections yet.
    fn new(max_connections: usize, write_stall: Duration) -> Shared {
        Shared {
            stopping: AtomicBool::new(false),
            state: Mutex::new(State {
                live: HashMap::new(),
                threads: Vec::new(),
                handoff: VecDeque::new(),
                idle: 0,
                accepting: true,
            }),
            changed: Condvar::new(),
            handed_off: Condvar::new(),
            stats: ServerStats::default(),
            max_connections,
            write_stall,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Waits until every connection and the accept loop have ended, or
    /// until `deadline`.
    fn wait_idle(&self, deadline: Instant) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while state.accepting || !state.live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }

    /// Waits, as thread number `me`, for a connection handed off to serve
    /// next: `None` after [`IDLE_THREAD_TIME`], at stop, or at once when
    /// [`MAX_IDLE_THREADS`] already wait. (At stop the queue is empty:
    /// `stop` closes the connections not yet taken.)
    fn next_job(&self, me: usize) -> Option<Job> {
        let mut state = self.lock();
        if state.idle >= MAX_IDLE_THREADS {
            return None;
        }
        state.idle += 1;
        let deadline = Instant::now() + IDLE_THREAD_TIME;
        loop {
            if let Some((id, job)) = state.handoff.pop_front() {
                state.idle -= 1;
                if let Some(live) = state.live.get_mut(&id) {
                    live.1 = me;
                }
                return Some(job);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stopping() || left.is_zero() {
                state.idle -= 1;
                return None;
            }
            state = self
                .handed_off
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A connection thread: serves `job`, then the connections handed to it
/// while it waits idle, until none comes.
fn connection_thread(shared: Arc<Shared>, me: usize, mut job: Job) {
    loop {
        job();
        match shared.next_job(me) {
            Some(next) => job = next,
            None => return,
        }
    }
}

/// Takes a connection out of the registry when its service ends (or when
/// no thread could take it), however it ends.
struct Registered {
    shared: Arc<Shared>,
    id: ConnectionId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        // The last reference: the socket closes once the lock is released.
        let socket = state.live.remove(&self.id);
        // Only `stop` waits, and it raised the flag under this lock first:
        // while serving, a connection's end costs no wake-up syscall.
        if self.shared.stopping() {
            self.shared.changed.notify_all();
        }
        drop(state);
        drop(socket.map(|(socket, _)| socket));
    }
}

/// Marks the accept loop ended, however it ends.
struct AcceptEnded(Arc<Shared>);

impl Drop for AcceptEnded {
    fn drop(&mut self) {
        self.0.lock().accepting = false;
        self.0.changed.notify_all();
    }
}

/// A server serving TCP or Unix with a thread per connection.
#[derive(Debug)]
pub(crate) struct Running {
    local: Endpoint,
    shared: Arc<Shared>,
    wake: Wake,
    accept: Option<JoinHandle<()>>,
}

impl Running {
    /// Binds `endpoint` (TCP or Unix, see [`serves`]) and starts the accept thread.
    pub(crate) fn start<C, F, Req, Resp>(
        endpoint: &Endpoint,
        codec: C,
        handler: F,
        options: ServerOptions,
    ) -> Result<Running, TransportError>
    where
        C: ServerCodec<Req, Resp>,
        F: PlainHandler<Req, Resp>,
    {
        let (listener, local, wake) = StdListener::bind(endpoint)?;
        let shared = Arc::new(Shared::new(
            options.max_connections_value(),
            options.write_stall_value(),
        ));
        let accepting = shared.clone();
        let handler = Arc::new(handler);
        let accept = std::thread::Builder::new()
            .name("tether-accept".into())
            .stack_size(STACK_SIZE)
            .spawn(move || accept_loop(listener, codec, handler, accepting))
            .map_err(|source| TransportError::Bind {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(Running {
            local,
            shared,
            wake,
            accept: Some(accept),
        })
    }

    /// The endpoint clients connect to (the real port after binding port 0).
    pub(crate) fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// The server's counters.
    pub(crate) fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Stops accepting at once, wakes idle connections, lets handlers in
    /// progress finish and their replies go out (up to `grace`), then
    /// closes whatever is left. Returns within `grace` plus [`FORCE_WAIT`]
    /// (and a loopback connect). A second call does nothing.
    pub(crate) fn stop(&mut self, grace: Duration) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        // (capped: `Instant + Duration::MAX` would panic; a year is for ever)
        let deadline = Instant::now() + grace.min(crate::session::FOR_EVER);
        let (connections, unserved) = {
            let mut state = self.shared.lock();
            // Under the lock: a connection registers either before this
            // (and is woken below) or sees the flag and is dropped.
            self.shared.stopping.store(true, Ordering::Release);
            for (socket, _) in state.live.values() {
                let _ = socket.shutdown(Shutdown::Read);
            }
            // handed off and not yet taken: closed unserved, as a served
            // connection stops before its next read
            let unserved: Vec<_> = state.handoff.drain(..).collect();
            (state.live.len(), unserved)
        };
        drop(unserved); // (each takes the lock to leave the registry)
        info!(connections, ?grace, "shutting down");
        self.shared.handed_off.notify_all(); // idle threads end
        self.wake.wake();
        let mut state = self.shared.wait_idle(deadline);
        if !state.live.is_empty() {
            warn!(
                left = state.live.len(),
                "grace period over; closing the remaining connections"
            );
            for (socket, _) in state.live.values() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            drop(state);
            state = self.shared.wait_idle(Instant::now() + FORCE_WAIT);
        }
        // (a connection handed off and not yet taken has no thread)
        let busy: HashSet<usize> = state
            .live
            .values()
            .map(|(_, thread)| *thread)
            .filter(|&thread| thread != NO_THREAD)
            .collect();
        let threads = std::mem::take(&mut state.threads);
        let accept_ended = !state.accepting;
        drop(state);
        // Threads serving no live connection have only their return left
        // (an idle one sees the flag): join them.
        for (number, thread) in threads {
            if !busy.contains(&number) {
                let _ = thread.join();
            }
        }
        if accept_ended {
            let _ = accept.join();
        } else {
            warn!("the accept loop did not wake; it ends at its next connection");
        }
        if !busy.is_empty() {
            warn!(
                left = busy.len(),
                "handlers still running after the grace period; their threads are left to finish"
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}

fn accept_loop<C, F, Req, Resp>(
    listener: StdListener,
    codec: C,
    handler: Arc<F>,
    shared: Arc<Shared>,
) where
    C: ServerCodec<Req, Resp>,
    F: PlainHandler<Req, Resp>,
{
    let ended = AcceptEnded(shared.clone());
    let mut next_id = 1;
    let mut next_thread = 0;
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            break;
        }
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let info = ConnectionInfo {
            id: ConnectionId(next_id),
            peer,
        };
        next_id += 1;
        let socket = Arc::new(socket);
        {
            let mut state = shared.lock();
            if shared.stopping() {
                break;
            }
            if state.live.len() >= shared.max_connections {
                drop(state);
                warn!(peer = %info.peer, max = shared.max_connections, "connection refused: too many connections");
                shared.stats.count_refused();
                continue;
            }
            state.live.insert(info.id, (socket.clone(), NO_THREAD));
        }
        shared.stats.count_accepted();
        let registered = Registered {
            shared: shared.clone(),
            id: info.id,
        };
        let conn = Connection {
            socket,
            codec: codec.clone(),
            handler: handler.clone(),
            info,
            shared: shared.clone(),
            rbuf: ReadBuf::default(),
            wbuf: BytesMut::new(),
        };
        let job: Job = Box::new(move || {
            let span = tracing::debug_span!("connection", id = %info.id, peer = %info.peer);
            span.in_scope(|| conn.serve());
            // Last: `stop` joins a thread once it is out of the registry.
            drop(registered);
        });
        let me = {
            let mut state = shared.lock();
            if shared.stopping() {
                // (stop has emptied the hand-off queue: none goes in after)
                drop(state);
                drop(job);
                break;
            }
            if state.idle > state.handoff.len() {
                state.handoff.push_back((info.id, job));
                drop(state);
                shared.handed_off.notify_one();
                continue;
            }
            let me = next_thread;
            next_thread += 1;
            if let Some(live) = state.live.get_mut(&info.id) {
                live.1 = me;
            }
            me
        };
        let serving = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("tether-conn".into())
            .stack_size(STACK_SIZE)
            .spawn(move || connection_thread(serving, me, job));
        match spawned {
            Ok(thread) => {
                let mut state = shared.lock();
                if state.threads.len() >= 2 * (state.live.len() + state.idle) + 16 {
                    state.threads.retain(|(_, t)| !t.is_finished());
                }
                state.threads.push((me, thread));
            }
            // The closure, dropped, took the connection out of the registry.
            Err(e) => warn!(error = %e, peer = %info.peer, "no thread for the connection; closed"),
        }
    }
    drop(listener);
    drop(ended);
}

/// A read that found the server stopping rather than the peer's bytes.
struct Stopped;

struct Connection<C, F> {
    socket: Arc<StdStream>,
    codec: C,
    handler: Arc<F>,
    info: ConnectionInfo,
    shared: Arc<Shared>,
    rbuf: ReadBuf,
    wbuf: BytesMut,
}

impl<C, F, Req, Resp> Connection<C, F>
where
    C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp>,
    F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError>,
{
    fn serve(mut self) {
        debug!("connected");
        // a client that takes none of its replies lets go of this thread
        // within the limit (each write that takes bytes waits anew)
        if let Err(e) = self.socket.set_write_timeout(Some(self.shared.write_stall)) {
            debug!(error = %e, "cannot bound the writes; closing the connection");
            return;
        }
        loop {
            // Requests already buffered are answered before anything is
            // flushed, so a pipelined burst gets its replies in one write (a long
            // reply goes out at once, with those queued before it).
            let next = match self.buffered_frame() {
                Ok(Some(request)) => Ok(Some(request)),
                Ok(None) => {
                    if let Err(e) = self.flush() {
                        debug!(error = %e, "write failed");
                        return;
                    }
                    if self.shared.stopping() {
                        break;
                    }
                    match self.read_frame() {
                        Ok(next) => next,
                        Err(Stopped) => break,
                    }
                }
                Err(e) => Err(e),
            };
            match next {
                Ok(Some(request)) => {
                    let handler = &self.handler;
                    let info = &self.info;
                    match catch_unwind(AssertUnwindSafe(|| handler(request, info))) {
                        Ok(Ok(Some(reply))) => match self.queue(reply) {
                            Ok(()) => {}
                            Err(FramingError::Io(e)) => {
                                debug!(error = %e, "write failed");
                                return;
                            }
                            Err(e) => {
                                warn!(error = %e, "reply could not be encoded; closing the connection");
                                break;
                            }
                        },
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => {
                            warn!(error = %e, "handler failed; closing the connection");
                            break;
                        }
                        Err(panic) => {
                            warn!(
                                panic = panic_message(&*panic),
                                "handler panicked; closing the connection"
                            );
                            break;
                        }
                    }
                }
                Ok(None) => {
                    debug!("peer closed the connection");
                    break;
                }
                Err(FramingError::Io(e)) => {
                    debug!(error = %e, "connection lost");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "bad request; closing the connection");
                    let _ = self.close_write();
                    self.discard_input(LINGER_BYTES, LINGER_TIME);
                    return;
                }
            }
        }
        // Best effort: the replies already queued, then end of stream.
        let _ = self.close_write();
        debug!("closed");
    }

    /// A frame already in the read buffer, without touching the socket.
    fn buffered_frame(&mut self) -> Result<Option<Req>, FramingError> {
        buffers::buffered_frame(&mut self.codec, &mut self.rbuf)
    }

    /// The next frame; `Ok(None)` at a clean end of stream; `Stopped` when
    /// the server shut the socket's read side to stop.
    fn read_frame(&mut self) -> Result<Result<Option<Req>, FramingError>, Stopped> {
        loop {
            match self.buffered_frame() {
                Ok(None) => {}
                done => return Ok(done),
            }
            match self.read_some() {
                Ok(0) if self.shared.stopping() => return Err(Stopped),
                Ok(0) => return Ok(self.codec.decode_eof(&mut self.rbuf)),
                Ok(_) => {}
                Err(e) => return Ok(Err(e.into())),
            }
        }
    }

    /// One `read` into the read buffer, which grows (doubling) only as far
    /// as the codec lets a frame grow before it refuses it.
    fn read_some(&mut self) -> io::Result<usize> {
        self.rbuf.reserve(READ_CHUNK);
        let socket = &self.socket;
        super::read_into(&mut self.rbuf, |room| read_retrying(socket, room))
    }

    /// Encodes `reply` behind those queued; one whose codec leaves its long
    /// payload out is written at once, with them, from `reply` itself.
    fn queue(&mut self, reply: Resp) -> Result<(), FramingError> {
        match encode_frame(&mut self.codec, reply, &mut self.wbuf)? {
            None => Ok(()),
            Some((reply, at)) => {
                let payload = self.codec.payload(&reply);
                let parts = super::frame_parts(&self.wbuf, Some((payload, at)));
                super::write_parts(&mut &*self.socket, parts, || Ok(()))?;
                clear_write_buf(&mut self.wbuf);
                Ok(())
            }
        }
    }

    /// Writes the queued replies, in one write when the kernel takes it.
    fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        (&*self.socket).write_all(&self.wbuf)?;
        clear_write_buf(&mut self.wbuf);
        Ok(())
    }

    /// Flushes (within [`CLOSE_TIMEOUT`]), then ends the write side so the
    /// peer sees end of stream.
    fn close_write(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.socket.set_write_timeout(Some(CLOSE_TIMEOUT))?;
            self.flush()?;
        }
        self.socket.shutdown(Shutdown::Write)
    }

    /// After refusing a peer, reads and drops what it is still sending (up
    /// to `max_bytes`, until `max_wait`), so that closing does not reset the
    /// connection before the peer has read what came before.
    fn discard_input(&mut self, max_bytes: usize, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        let mut scratch = vec![0u8; 8192];
        let mut seen = 0;
        while seen < max_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match read_retrying(&self.socket, &mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    }
}

/// One `read`, retried when a signal interrupts it: a server thread must
/// not end a connection for a signal meant for the process. (The blocking
/// session returns the interruption to its caller instead, so the retry is
/// here, not in [`StdStream`].)
fn read_retrying(socket: &StdStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match (&*socket).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::KEEP_AT_MOST;
    use crate::framing::LengthCodec;
    use std::os::unix::net::UnixStream;

    fn echo(options: ServerOptions) -> Running {
        Running::start(
            &Endpoint::tcp("127.0.0.1", 0),
            LengthCodec::new(),
            |req: BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(req)),
            options,
        )
        .unwrap()
    }

    fn connect(server: &Running) -> TcpStream {
        let addr = server.local_endpoint().host_port().unwrap();
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn echo_once(s: &mut TcpStream, body: &[u8]) -> Vec<u8> {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        s.write_all(&frame).unwrap();
        let mut len = [0; 4];
        s.read_exact(&mut len).unwrap();
        let mut reply = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).unwrap();
        reply
    }

    #[test]
    fn a_pipelined_burst_is_answered_in_order() {
        let server = echo(ServerOptions::default());
        let mut s = connect(&server);
        let mut burst = Vec::new();
        for i in 0..50u8 {
            burst.extend_from_slice(&1u32.to_be_bytes());
            burst.push(i);
        }
        s.write_all(&burst).unwrap();
        let mut replies = vec![0; burst.len()];
        s.read_exact(&mut replies).unwrap();
        assert_eq!(replies, burst);
    }

    #[test]
    fn a_bulk_frame_grows_the_read_buffer_which_is_then_given_back() {
        let server = echo(ServerOptions::default());
        let mut s = connect(&server);
        let big = vec![7u8; 4 * KEEP_AT_MOST];
        assert_eq!(echo_once(&mut s, &big), big);
        assert_eq!(echo_once(&mut s, b"small"), b"small");
        // The buffers themselves are checked through a connection built by hand.
        let (a, mut b) = UnixStream::pair().unwrap();
        let shared = Arc::new(Shared::new(1, Duration::from_secs(30)));
        let mut conn = Connection {
            socket: Arc::new(StdStream::Unix(a)),
            codec: LengthCodec::new(),
            handler: Arc::new(|r: BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(r))),
            info: ConnectionInfo {
                id: ConnectionId(1),
                peer: PeerAddr::Unix,
            },
            shared,
            rbuf: ReadBuf::default(),
            wbuf: BytesMut::new(),
        };
        let writer = std::thread::spawn(move || {
            let mut frame = ((4 * KEEP_AT_MOST) as u32).to_be_bytes().to_vec();
            frame.resize(4 + 4 * KEEP_AT_MOST, 1);
            b.write_all(&frame).unwrap();
            b
        });
        let got = conn.read_frame().ok().unwrap().unwrap().unwrap();
        assert_eq!(got.len(), 4 * KEEP_AT_MOST);
        assert_eq!(conn.rbuf.capacity(), 0, "the bulk buffer was given back");
        drop(writer.join().unwrap());
    }

    #[test]
    fn stop_without_connections_is_prompt_and_idempotent() {
        let mut server = echo(ServerOptions::default());
        let start = Instant::now();
        server.stop(Duration::from_secs(5));
        server.stop(Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_secs(1));
        let addr = server.local_endpoint().host_port().unwrap();
        assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    }

    #[test]
    fn the_registry_empties_as_connections_end() {
        let server = echo(ServerOptions::default());
        let mut s = connect(&server);
        assert_eq!(echo_once(&mut s, b"x"), b"x");
        assert_eq!(server.shared.lock().live.len(), 1);
        drop(s);
        let state = server
            .shared
            .wait_idle_of_connections(Instant::now() + Duration::from_secs(5));
        assert!(state.live.is_empty());
        assert_eq!(server.stats().accepted(), 1);
    }

    impl Shared {
        fn wait_idle_of_connections(&self, deadline: Instant) -> MutexGuard<'_, State> {
            let mut state = self.lock();
            while !state.live.is_empty() && Instant::now() < deadline {
                state = self
                    .changed
                    .wait_timeout(state, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
            state
        }
    }

    #[test]
    fn wake_targets_loopback_for_a_wildcard_listener() {
        let Wake::Tcp(addr) = Wake::tcp("0.0.0.0:80".parse().unwrap()) else {
            unreachable!()
        };
        assert_eq!(addr, "127.0.0.1:80".parse().unwrap());
        let Wake::Tcp(addr) = Wake::tcp("[::]:80".parse().unwrap()) else {
            unreachable!()
        };
        assert_eq!(addr, "[::1]:80".parse().unwrap());
    }
}
