//! The server side: every connection served at once, one handler for all.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::Decoder;
use tracing::{debug, info, warn, Instrument};

use super::io::{Buffers, FrameIo};
use super::HandlerError;
use crate::framing::{FrameEncoder, FramingError};
use crate::transport::{Endpoint, Listener, PeerAddr, TransportError};

/// A server-assigned number for one connection, unique for the server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ConnectionId,
    /// Who is at the other end.
    pub peer: PeerAddr,
}

/// Answers requests: `Ok(Some(reply))`, `Ok(None)` for no reply, or an
/// error, which is logged and closes that connection only.
///
/// Any `Fn(Request, &ConnectionInfo) -> impl Future<Output = Result<Option<Reply>, HandlerError>>`
/// is a handler; implement the trait by hand to keep state in a struct.
pub trait Handler<Req>: Send + Sync + 'static {
    /// The reply type.
    type Response: Send + 'static;

    /// Handles one request.
    fn handle(
        &self,
        request: Req,
        conn: &ConnectionInfo,
    ) -> impl Future<Output = Result<Option<Self::Response>, HandlerError>> + Send;
}

impl<F, Fut, Req, Resp> Handler<Req> for F
where
    F: Fn(Req, &ConnectionInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Resp>, HandlerError>> + Send,
    Resp: Send + 'static,
{
    type Response = Resp;

    fn handle(
        &self,
        request: Req,
        conn: &ConnectionInfo,
    ) -> impl Future<Output = Result<Option<Resp>, HandlerError>> + Send {
        self(request, conn)
    }
}

/// Limits of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    max_connections: usize,
    write_stall: Duration,
}

impl Default for ServerOptions {
    /// 1,024 connections: well under the usual 20,000-file limit, above any
    /// device network we know.
    fn default() -> Self {
        ServerOptions {
            max_connections: 1024,
            write_stall: WRITE_STALL_LIMIT,
        }
    }
}

impl ServerOptions {
    /// At most `n` connections at once; the extra ones are closed at once,
    /// with a log line. (`usize::MAX` is no limit: it is taken as the most
    /// the async server can count, about 2^61.)
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.min(Semaphore::MAX_PERMITS);
        self
    }

    /// The connection limit.
    pub(crate) fn max_connections_value(&self) -> usize {
        self.max_connections
    }

    /// How long a client may take none of its replies before its
    /// connection is closed (default 30 s): a client that stops reading
    /// would otherwise hold its connection (and, on the blocking server,
    /// its thread) for ever. Each write that takes bytes waits anew, so a
    /// slow reader is not cut off. (At least a millisecond, at most a
    /// year: longer is for ever.)
    pub fn write_stall_limit(mut self, limit: Duration) -> Self {
        self.write_stall = limit.clamp(Duration::from_millis(1), crate::session::FOR_EVER);
        self
    }

    /// The write stall limit.
    pub(crate) fn write_stall_value(&self) -> Duration {
        self.write_stall
    }
}

/// The default of [`ServerOptions::write_stall_limit`].
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// What a running server tells its connections, shared through one watch
/// channel: whether to stop (and the grace period), and the write stall
/// limit (kept here rather than in each connection, whose size is what an
/// idle session costs).
#[derive(Debug, Clone, Copy)]
struct Control {
    grace: Option<Duration>,
    write_stall: Duration,
}

/// After a bad request, how much of the rest the server reads and drops
/// before closing, so the client gets the error reply rather than a reset.
pub(crate) const LINGER_BYTES: usize = 16 * 1024 * 1024;
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(1);

type BadFrameReply<R> = Arc<dyn Fn(&FramingError) -> Option<R> + Send + Sync>;

/// A request/response server on one endpoint.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tether::framing::{text, SentinelCodec};
/// use tether::session::{ConnectionInfo, HandlerError, Server};
///
/// let server = Server::bind(
///     &"tcp://127.0.0.1:0".parse()?,
///     text(SentinelCodec::lines()),
///     |request: String, _conn: &ConnectionInfo| async move {
///         Ok::<_, HandlerError>(Some(request.to_uppercase()))
///     },
/// )
/// .await?;
/// println!("listening on {}", server.local_endpoint());
/// let running = server.spawn();
/// // … later:
/// running.shutdown(Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
pub struct Server<C, H: Handler<Req>, Req> {
    listener: Listener,
    codec: C,
    handler: Arc<H>,
    options: ServerOptions,
    on_bad_frame: Option<BadFrameReply<H::Response>>,
}

impl<C, H, Req> Server<C, H, Req>
where
    C: Decoder<Item = Req, Error = FramingError>
        + FrameEncoder<H::Response>
        + Clone
        + Send
        + 'static,
    H: Handler<Req>,
    Req: Send + 'static,
{
    /// Binds to `endpoint`; serving starts with [`spawn`](Self::spawn) or [`run`](Self::run).
    pub async fn bind(endpoint: &Endpoint, codec: C, handler: H) -> Result<Self, TransportError> {
        Ok(Self::with_listener(
            Listener::bind(endpoint).await?,
            codec,
            handler,
        ))
    }

    /// Serves on a listener bound beforehand, e.g. a TLS one from
    /// [`Listener::bind_tls`] (whose handshakes run outside the accept loop).
    pub fn with_listener(listener: Listener, codec: C, handler: H) -> Self {
        Server {
            listener,
            codec,
            handler: Arc::new(handler),
            options: ServerOptions::default(),
            on_bad_frame: None,
        }
    }

    /// Sets the limits.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// What to send a client whose request could not be decoded (too long,
    /// malformed) before its connection is closed; `None` sends nothing.
    pub fn on_bad_frame(
        mut self,
        reply: impl Fn(&FramingError) -> Option<H::Response> + Send + Sync + 'static,
    ) -> Self {
        self.on_bad_frame = Some(Arc::new(reply));
        self
    }

    /// The endpoint clients connect to (the real port after binding port 0).
    pub fn local_endpoint(&self) -> Endpoint {
        self.listener.local_endpoint()
    }

    /// The listener (for its display address).
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// Serves in a background task until [`RunningServer::shutdown`] (or
    /// until the returned handle is dropped); on a `stdio:` listener, until
    /// its one peer has gone ([`RunningServer::is_finished`]).
    pub fn spawn(self) -> RunningServer {
        let (stop_tx, stop_rx) = watch::channel(Control {
            grace: None,
            write_stall: self.options.write_stall,
        });
        let stats = Arc::new(ServerStats::default());
        let local = self.local_endpoint();
        let task = tokio::spawn(self.serve(stop_rx, stats.clone()));
        RunningServer {
            local,
            stop_tx,
            stats,
            task,
        }
    }

    /// Serves until `shutdown` completes, then shuts down gracefully,
    /// giving in-flight requests up to `grace` to finish. On a `stdio:`
    /// listener it also returns once its one peer has gone (stdin ended):
    /// no other peer can come.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let mut running = self.spawn();
        tokio::select! {
            () = shutdown => running.shutdown(grace).await,
            ended = &mut running.task => report_end(ended),
        }
    }

    async fn serve(mut self, mut stop: watch::Receiver<Control>, stats: Arc<ServerStats>) {
        let slots = Arc::new(Semaphore::new(self.options.max_connections));
        let mut connections = JoinSet::new();
        let next_id = AtomicU64::new(1);
        let grace = loop {
            // (here, not where a connection ends: a stdio stream refused by
            // a full server must end it too)
            if connections.is_empty() && self.listener.is_spent() {
                info!("the stdio peer has gone, and no other can come");
                break Duration::ZERO;
            }
            tokio::select! {
                changed = stop.changed() => {
                    break if changed.is_ok() { stop.borrow().grace.unwrap_or_default() } else { Duration::ZERO };
                }
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok(stream) => stream,
                        Err(e) => {
                            // EMFILE and friends: back off rather than spin.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let info = ConnectionInfo { id: ConnectionId(next_id.fetch_add(1, Ordering::Relaxed)), peer: stream.peer() };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        warn!(peer = %info.peer, max = self.options.max_connections, "connection refused: too many connections");
                        stats.count_refused();
                        continue;
                    };
                    stats.count_accepted();
                    let conn = Connection {
                        io: FrameIo::new(stream, self.codec.clone(), Buffers::Lazy),
                        handler: self.handler.clone(),
                        info,
                        on_bad_frame: self.on_bad_frame.clone(),
                        stop: stop.clone(),
                        _slot: slot,
                    };
                    let span = tracing::debug_span!("connection", id = %info.id, peer = %info.peer);
                    // Spawned as is: wrapped in another async block, the
                    // connection would be stored twice in the task. A span
                    // no subscriber wants would still be entered and left
                    // at every poll.
                    if span.is_disabled() {
                        connections.spawn(conn.serve());
                    } else {
                        connections.spawn(conn.serve().instrument(span));
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        };
        drop(self.listener);
        info!(connections = connections.len(), ?grace, "shutting down");
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = connections.len(),
                "grace period over; closing the remaining connections"
            );
            connections.shutdown().await;
        }
    }
}

struct Connection<C, H: Handler<Req>, Req> {
    io: FrameIo<C>,
    handler: Arc<H>,
    info: ConnectionInfo,
    on_bad_frame: Option<BadFrameReply<H::Response>>,
    stop: watch::Receiver<Control>,
    // Held for the connection's life: counts it against `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl<C, H, Req> Connection<C, H, Req>
where
    C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<H::Response>,
    H: Handler<Req>,
{
    /// Writes what is queued and `reply`, whose long payload the codec left
    /// out at `at`, from `reply` itself. Boxed: this rare path's state
    /// would otherwise sit in every idle connection's future.
    fn write_long(
        &mut self,
        reply: H::Response,
        at: usize,
    ) -> std::pin::Pin<Box<impl Future<Output = std::io::Result<()>> + '_>> {
        let stall = self.stop.borrow().write_stall;
        let io = &mut self.io;
        Box::pin(async move {
            let payload = io.codec.payload(&reply);
            io.write_around(payload, at, Some(stall)).await
        })
    }

    async fn serve(mut self) {
        debug!("connected");
        // One wait for the stop signal for the connection's life, rather than
        // a new one (registered, then dropped) at every request. It is
        // polled once, to register the task's waker, and again only once
        // the signal has changed (an atomic load): re-polling it at every
        // request locked its waiter list each time.
        let mut stop = self.stop.clone();
        let stopping = stop.changed();
        tokio::pin!(stopping);
        let stopped_already = self.stop.borrow().grace.is_some()
            || std::future::poll_fn(|cx| Poll::Ready(stopping.as_mut().poll(cx).is_ready())).await;
        if !stopped_already {
            loop {
                // Requests already buffered are answered before anything is flushed,
                // so a pipelined burst gets its replies in one write (a long reply goes
                // out at once, with those queued before it).
                let next = match self.io.buffered_frame() {
                    Ok(Some(request)) => Ok(Some(request)),
                    Ok(None) => {
                        // (the limit, from the shared control, only if a
                        // write stalls: one field less in every connection)
                        let stall = || self.stop.borrow().write_stall;
                        if let Err(e) = self.io.flush_within(stall).await {
                            debug!(error = %e, "write failed");
                            return;
                        }
                        // Not `select!` with an `if`: its condition is
                        // looked at once, so a stop sent while the
                        // connection waits for a request would go unseen.
                        let signal = &self.stop;
                        let read = self.io.read_frame();
                        tokio::pin!(read);
                        let next = std::future::poll_fn(|cx| {
                            if signal.has_changed().unwrap_or(true)
                                && stopping.as_mut().poll(cx).is_ready()
                            {
                                return Poll::Ready(None);
                            }
                            read.as_mut().poll(cx).map(Some)
                        });
                        match next.await {
                            Some(next) => next,
                            None => break,
                        }
                    }
                    Err(e) => Err(e),
                };
                // A long reply is written at once, after the match: awaited
                // inside it, the handler's result would take room in every
                // idle connection's future.
                let long = match next {
                    Ok(Some(request)) => match self.handler.handle(request, &self.info).await {
                        Ok(Some(reply)) => match self.io.queue_around(reply) {
                            Ok(None) => None,
                            Ok(Some((reply, at))) => Some(self.write_long(reply, at)),
                            Err(e) => {
                                warn!(error = %e, "reply could not be encoded; closing the connection");
                                break;
                            }
                        },
                        Ok(None) => None,
                        Err(e) => {
                            warn!(error = %e, "handler failed; closing the connection");
                            break;
                        }
                    },
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
                        if let Some(reply) = self.on_bad_frame.as_ref().and_then(|f| f(&e)) {
                            if let Err(e) = self.io.queue(reply) {
                                warn!(error = %e, "the refusal could not be encoded; closing without it");
                            }
                        }
                        // Boxed: this rare path's state would otherwise sit in
                        // every idle connection's future.
                        Box::pin(async {
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), self.io.shutdown())
                                    .await;
                            self.io.discard_input(LINGER_BYTES, LINGER_TIME).await;
                        })
                        .await;
                        return;
                    }
                };
                if let Some(write) = long {
                    if let Err(e) = write.await {
                        debug!(error = %e, "write failed");
                        return;
                    }
                }
            }
        }
        // Best effort: the replies already queued, then end of stream.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        debug!("closed");
    }
}

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

impl ServerStats {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused because the server was full.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts one more accepted connection (for the blocking server).
    pub(crate) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one more refused connection (for the blocking server).
    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A server serving in the background. Dropping it stops the server at
/// once (no grace period); call [`shutdown`](Self::shutdown) for a graceful stop.
#[derive(Debug)]
#[must_use = "dropping a RunningServer stops the server"]
pub struct RunningServer {
    local: Endpoint,
    stop_tx: watch::Sender<Control>,
    stats: Arc<ServerStats>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The endpoint clients connect to.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// True once the server has stopped serving without being told to:
    /// on a `stdio:` listener, once its one peer has gone.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Graceful shutdown: stop accepting, let requests in progress finish
    /// (up to `grace`), close every connection, and wait for all that.
    pub async fn shutdown(self, grace: Duration) {
        self.stop_tx.send_modify(|c| c.grace = Some(grace));
        report_end(self.task.await);
    }
}

/// Logs a server task that did not end normally.
fn report_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        // (it never panics by design: say so loudly if it did)
        tracing::error!(error = %e, "the server task failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{LengthCodec, SentinelCodec};
    use bytes::BytesMut;

    /// An idle connection costs mostly its task's future (buffers are
    /// allocated lazily): keep it well under the 2 KiB per idle session that
    /// W8 allows. An 8 KiB scratch array once hid in here, and a handler's
    /// result held across an await once cost 48 bytes.
    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        for (codec, size) in [
            ("length", idle_future_size(LengthCodec::new())),
            ("sentinel", idle_future_size(SentinelCodec::lines())),
        ] {
            eprintln!("{codec} connection future: {size} bytes");
            assert!(size <= 1280, "{codec} connection future is {size} bytes");
        }
    }

    fn idle_future_size<C>(codec: C) -> usize
    where
        C: Decoder<Item = BytesMut, Error = FramingError> + FrameEncoder<BytesMut>,
    {
        let (a, _b) = crate::transport::memory_pair(64);
        let (_tx, stop) = watch::channel(Control {
            grace: None,
            write_stall: WRITE_STALL_LIMIT,
        });
        let conn = Connection {
            io: FrameIo::new(a, codec, Buffers::Lazy),
            handler: Arc::new(|request: BytesMut, _: &ConnectionInfo| async move {
                Ok::<_, HandlerError>(Some(request))
            }),
            info: ConnectionInfo {
                id: ConnectionId(1),
                peer: PeerAddr::Memory,
            },
            on_bad_frame: None,
            stop,
            _slot: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        };
        std::mem::size_of_val(&conn.serve())
    }
}
