//! [`Pair`]: two one-way sockets acting as one link.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tracing::{debug, error, info, Instrument};

use super::core::{Actions, ConnId, LinkCore, LinkStatus};
use super::server::{Ending, Hook, ServerConfig, ServerEvent, ServerShared, DEFAULT_READ_QUEUE};
use super::PairError;
use crate::session::FOR_EVER;
use crate::transport::{self, ByteStream, Endpoint, Listener, TransportError};

/// Default pause between two attempts to open the client connection: 100 ms,
/// the reference implementation's value; short enough that a peer that
/// comes up is reached at once, long enough not to flood it with SYNs.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest retry interval used, whatever the configuration says.
const MIN_RETRY_INTERVAL: Duration = Duration::from_millis(1);

/// Default deadline of [`Pair::connect`]: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default number of frames waiting to be written: 64. When full, writers
/// wait for room (backpressure), they are never dropped.
pub const DEFAULT_WRITE_QUEUE: usize = 64;

/// Default [`write_stall_limit`](PairConfig::write_stall_limit): 30 s, as
/// a session server's.
pub const DEFAULT_WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The longest queue a pair makes (tokio's channels take no more).
pub(crate) const QUEUE_AT_MOST: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The connect callback: called with the new value of
/// [`Pair::connected`] on each change, in order, never twice in a row with
/// the same value.
///
/// It runs on one of tether's tasks, one call at a time; keep it short (it
/// may call the pair's non-async methods, e.g. [`Pair::connected`]). A panic
/// in it is caught and logged.
#[derive(Clone)]
pub struct ConnectCallback(Arc<dyn Fn(bool) + Send + Sync>);

impl ConnectCallback {
    /// Wraps a function.
    pub fn new(f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        ConnectCallback(Arc::new(f))
    }
}

impl fmt::Debug for ConnectCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectCallback(..)")
    }
}

/// Settings of a [`Pair`]; every limit has a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PairConfig {
    /// The peer's listening endpoint, for [`Pair::connect`]; may also be
    /// given later with [`Pair::connect_to`].
    pub peer: Option<Endpoint>,
    /// Pause between attempts to open the client connection
    /// ([`DEFAULT_RETRY_INTERVAL`]; at least 1 ms, so that a peer that
    /// refuses is not hammered; at most a year).
    pub retry_interval: Duration,
    /// How long [`Pair::connect`] tries ([`DEFAULT_CONNECT_TIMEOUT`]; at
    /// most a year, for ever in practice).
    pub connect_timeout: Duration,
    /// Frames read ahead of [`Pair::read`] ([`DEFAULT_READ_QUEUE`]; at
    /// least 1).
    pub read_queue: usize,
    /// Frames waiting to be written ([`DEFAULT_WRITE_QUEUE`]; at least 1).
    pub write_queue: usize,
    /// How long a write may make no progress before the link is taken as
    /// lost ([`DEFAULT_WRITE_STALL_LIMIT`]; at least 1 ms). A peer that
    /// accepts our connection but reads nothing would otherwise hold every
    /// writer for ever; one that reads slowly is not cut off.
    pub write_stall_limit: Duration,
    /// Called on every change of [`Pair::connected`].
    pub on_connect: Option<ConnectCallback>,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            peer: None,
            retry_interval: DEFAULT_RETRY_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_queue: DEFAULT_READ_QUEUE,
            write_queue: DEFAULT_WRITE_QUEUE,
            write_stall_limit: DEFAULT_WRITE_STALL_LIMIT,
            on_connect: None,
        }
    }
}

impl PairConfig {
    /// Sets the peer endpoint.
    pub fn peer(mut self, peer: Endpoint) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Sets the retry interval.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Sets the connect deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the write stall limit.
    pub fn write_stall_limit(mut self, limit: Duration) -> Self {
        self.write_stall_limit = limit;
        self
    }

    /// Sets the connect callback.
    pub fn on_connect(mut self, f: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.on_connect = Some(ConnectCallback::new(f));
        self
    }
}

/// Two one-way sockets used as one link, for controllers that speak this
/// way: the pair writes on a client connection it opens to the peer, and
/// reads on a one-client server of its own that the peer connects to.
///
/// See the [module documentation](super) for the whole picture. Methods take
/// `&self`: share a pair between tasks with an `Arc`. Writes go through one
/// writer task, so frames from concurrent writers never interleave.
pub struct Pair<E, D: Decoder> {
    shared: Arc<PairShared<E, D>>,
}

struct PairShared<E, D: Decoder> {
    server: Arc<ServerShared<D>>,
    core: Mutex<LinkCore>,
    status: watch::Sender<LinkStatus>,
    client: Mutex<Option<ClientConn>>,
    encoder: Mutex<E>,
    peer: Mutex<Option<Endpoint>>,
    connect_lock: tokio::sync::Mutex<()>,
    close_lock: tokio::sync::Mutex<()>,
    ids: Arc<AtomicU64>,
    config: PairConfig,
}

struct ClientConn {
    id: ConnId,
    // whom it writes to
    peer: Endpoint,
    tx: mpsc::Sender<WriteRequest>,
    task: Option<JoinHandle<()>>,
}

struct WriteRequest {
    bytes: Bytes,
    done: oneshot::Sender<Result<(), String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few assignments: a panic elsewhere
    // cannot leave them half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<E, D> Pair<E, D>
where
    E: Send + 'static,
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// Starts the pair's server on `listen` (port 0 picks a free port) and
    /// returns at once; [`connect`](Self::connect) opens the link. `encoder`
    /// frames what is written, a clone of `decoder` decodes each connection
    /// the peer makes.
    pub async fn bind(
        listen: &Endpoint,
        config: PairConfig,
        encoder: E,
        decoder: D,
    ) -> Result<Self, PairError> {
        let listener = Listener::bind(listen).await?;
        let ids = Arc::new(AtomicU64::new(0));
        let shared = Arc::new_cyclic(|weak: &Weak<PairShared<E, D>>| {
            let weak = weak.clone();
            let hook: Hook = Arc::new(move |event| {
                if let Some(shared) = weak.upgrade() {
                    shared.on_server_event(event);
                }
            });
            let server_config = ServerConfig {
                read_queue: config.read_queue,
            };
            PairShared {
                server: ServerShared::new(
                    &listener,
                    decoder,
                    server_config,
                    Some(hook),
                    Arc::clone(&ids),
                ),
                core: Mutex::new(LinkCore::default()),
                status: watch::Sender::new(LinkStatus::default()),
                client: Mutex::new(None),
                encoder: Mutex::new(encoder),
                peer: Mutex::new(config.peer.clone()),
                connect_lock: tokio::sync::Mutex::new(()),
                close_lock: tokio::sync::Mutex::new(()),
                ids,
                // (`Instant + Duration` panics past the clock's range, and
                // a channel past its largest size)
                config: PairConfig {
                    write_queue: config.write_queue.clamp(1, QUEUE_AT_MOST),
                    retry_interval: config.retry_interval.clamp(MIN_RETRY_INTERVAL, FOR_EVER),
                    connect_timeout: config.connect_timeout.min(FOR_EVER),
                    write_stall_limit: config
                        .write_stall_limit
                        .clamp(Duration::from_millis(1), FOR_EVER),
                    ..config
                },
            }
        });
        shared.server.start(listener);
        Ok(Pair { shared })
    }

    /// Connects to the peer endpoint given in [`PairConfig::peer`] or to the
    /// last [`connect_to`](Self::connect_to).
    ///
    /// Opens the client connection, retrying every
    /// [`retry_interval`](PairConfig::retry_interval), and waits for the
    /// peer to connect back to our server; both may happen in either order,
    /// all within [`connect_timeout`](PairConfig::connect_timeout). Returns
    /// at once if already connected. Works again after the link was lost.
    pub async fn connect(&self) -> Result<(), PairError> {
        let peer = lock(&self.shared.peer).clone().ok_or(PairError::NoPeer)?;
        self.shared.connect(&peer).await
    }

    /// Sets the peer endpoint, then [`connect`](Self::connect)s to it.
    pub async fn connect_to(&self, peer: &Endpoint) -> Result<(), PairError> {
        *lock(&self.shared.peer) = Some(peer.clone());
        self.shared.connect(peer).await
    }

    /// Reads the next frame from the peer.
    ///
    /// Waits while the link is up. If the link goes down (either socket),
    /// the frames that arrived before come first, then
    /// [`PairError::ConnectionLost`]; before the first `connect`,
    /// [`PairError::NotConnected`]. A decoding error takes the place of its
    /// frame and the link stays up. Cancel-safe: dropping the future loses
    /// no frame.
    ///
    /// Frames of a lost link that nobody read before `connect` restored the
    /// link are dropped, with a warning that says how many: what `read`
    /// returns after a successful `connect` comes from the new link.
    pub async fn read(&self) -> Result<D::Item, PairError> {
        let status = self.shared.status();
        if status.closed {
            return Err(PairError::Closed);
        }
        if !status.connected {
            if let Some(leftover) = self.shared.server.read_leftover().await {
                return leftover;
            }
            if !self.shared.status().connected {
                return Err(self.shared.not_connected());
            }
            // the link came up while the last link's frames were read
        }
        match self.shared.server.read().await {
            // Say why the link went down, whichever socket it was.
            Err(PairError::ConnectionLost { .. }) => Err(self.shared.lost()),
            // The link went down between the check above and the read.
            Err(PairError::NotConnected) => Err(self.shared.not_connected()),
            other => other,
        }
    }

    /// Writes one frame to the peer: waits until it is written and flushed.
    ///
    /// [`PairError::NotConnected`] if the link is down; an encoder error
    /// concerns this frame only (nothing is sent); if the link goes down
    /// while waiting, [`PairError::ConnectionLost`]. Frames are queued for
    /// one writer task (up to [`write_queue`](PairConfig::write_queue),
    /// then writers wait); a frame whose `write` future is dropped after it
    /// was queued is still written whole, never half.
    pub async fn write<I>(&self, item: I) -> Result<(), PairError>
    where
        E: Encoder<I>,
        <E as Encoder<I>>::Error: StdError + Send + Sync + 'static,
    {
        let tx = self.shared.writer()?;
        let mut buf = BytesMut::new();
        lock(&self.shared.encoder)
            .encode(item, &mut buf)
            .map_err(PairError::from_codec)?;
        let (done, result) = oneshot::channel();
        let request = WriteRequest {
            bytes: buf.freeze(),
            done,
        };
        if tx.send(request).await.is_err() {
            return Err(self.shared.lost());
        }
        match result.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(PairError::lost(reason)),
            Err(_) => Err(self.shared.lost()),
        }
    }

    /// Is the client (write) connection to the peer open?
    pub fn client_connected(&self) -> bool {
        self.shared.status().client.is_some()
    }

    /// Is the peer connected to our server (read side)?
    pub fn server_connected(&self) -> bool {
        self.shared.server.client().is_some()
    }

    /// Are both connections up: is the link usable?
    pub fn connected(&self) -> bool {
        self.shared.status().connected
    }

    /// Waits until the link is down (or `timeout` passes); true if it is down.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut status = self.shared.status.subscribe();
        tokio::time::timeout(timeout, status.wait_for(|s| !s.connected))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many times the link was lost since the pair was made.
    pub fn losses(&self) -> u64 {
        self.shared.status().losses
    }

    /// The endpoint the peer connects to (with the real port after port 0).
    pub fn local_endpoint(&self) -> Endpoint {
        self.shared.server.local().clone()
    }

    /// `HOST:PORT` (or the socket path) of our server, for a
    /// `listening on …` line.
    pub fn display_address(&self) -> &str {
        self.shared.server.display()
    }

    /// The peer endpoint `connect` uses, if known.
    pub fn peer(&self) -> Option<Endpoint> {
        lock(&self.shared.peer).clone()
    }

    /// How many peers were refused because one was already connected to
    /// our server.
    pub fn refused(&self) -> u64 {
        self.shared.server.refused()
    }

    /// Drops the link but keeps the pair: closes both connections (the peer
    /// notices), waiting readers and writers get
    /// [`PairError::ConnectionLost`]; [`connect`](Self::connect) restores it.
    pub fn disconnect(&self) {
        let actions = {
            let mut core = lock(&self.shared.core);
            let actions = core.disconnect("disconnected by this side");
            self.shared.publish(&core);
            actions
        };
        self.shared.apply(actions);
    }

    /// Closes the client connection, then the server's connection and its
    /// listener; waiting readers and writers get [`PairError::Closed`] or
    /// [`PairError::ConnectionLost`]. Idempotent; when it returns, both
    /// sockets and the listening port are closed.
    pub async fn close(&self) {
        let _closing = self.shared.close_lock.lock().await;
        let actions = {
            let mut core = lock(&self.shared.core);
            let actions = core.close();
            self.shared.publish(&core);
            actions
        };
        // Ordered: the client socket first, and wait until it is gone.
        let task = actions
            .close_client
            .and_then(|id| self.shared.take_client(id));
        if let Some(mut task) = task {
            task.abort();
            let _ = (&mut task).await;
        }
        // (the read connection, `actions.close_server`, is the server's to
        // end: its close waits until the socket is gone)
        self.shared.run_callbacks();
        self.shared.server.close().await;
    }
}

impl<E, D: Decoder> Drop for Pair<E, D> {
    fn drop(&mut self) {
        let actions = lock(&self.shared.core).close();
        if let Some(id) = actions.close_client {
            if let Some(task) = self.shared.take_client(id) {
                task.abort();
            }
        }
        self.shared.server.shutdown_now();
        // The callback hears that the link is down, as after `close`.
        self.shared.run_callbacks();
    }
}

impl<E, D: Decoder> fmt::Debug for Pair<E, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("local", self.shared.server.local())
            .field("peer", &*lock(&self.shared.peer))
            .field("status", &self.shared.status())
            .finish()
    }
}

impl<E, D: Decoder> PairShared<E, D> {
    fn status(&self) -> LinkStatus {
        lock(&self.core).status().clone()
    }

    /// Publishes the status; called with the core locked so that snapshots
    /// are published in the order the changes happened.
    fn publish(&self, core: &LinkCore) {
        let status = core.status();
        if let (true, Some(server)) = (status.connected, status.server) {
            // Frames of an earlier link nobody read are not this link's.
            self.server.set_min_id(server);
        }
        self.status.send_replace(status.clone());
    }

    /// The error for an operation that finds the link down.
    fn not_connected(&self) -> PairError {
        let core = lock(&self.core);
        if core.status().closed {
            PairError::Closed
        } else if let Some(reason) = core.last_loss() {
            PairError::lost(reason)
        } else {
            PairError::NotConnected
        }
    }

    /// The error for an operation that saw the link go down under it.
    fn lost(&self) -> PairError {
        let core = lock(&self.core);
        if core.status().closed {
            return PairError::Closed;
        }
        PairError::lost(core.last_loss().unwrap_or("the link went down"))
    }

    fn writer(&self) -> Result<mpsc::Sender<WriteRequest>, PairError> {
        let status = self.status();
        if !status.connected {
            return Err(self.not_connected());
        }
        match &*lock(&self.client) {
            Some(conn) if Some(conn.id) == status.client => Ok(conn.tx.clone()),
            _ => Err(self.not_connected()),
        }
    }

    /// Whether write connection `id` (if it is still ours) goes to `peer`.
    fn writes_to(&self, id: ConnId, peer: &Endpoint) -> bool {
        match &*lock(&self.client) {
            Some(conn) if conn.id == id => conn.peer == *peer,
            _ => true,
        }
    }

    fn take_client(&self, id: ConnId) -> Option<JoinHandle<()>> {
        let mut client = lock(&self.client);
        match &*client {
            Some(conn) if conn.id == id => client.take().and_then(|c| c.task),
            _ => None,
        }
    }

    fn apply(&self, actions: Actions) {
        self.apply_ending(actions, Ending::Now);
    }

    /// [`apply`](Self::apply), the read connection ending as `ending` says.
    fn apply_ending(&self, actions: Actions, ending: Ending) {
        if let Some(id) = actions.close_client {
            if let Some(task) = self.take_client(id) {
                // Dropping the task drops the socket: the peer sees EOF, and
                // queued writers see their request dropped.
                task.abort();
            }
        }
        if let Some((id, reason)) = actions.close_server {
            self.server.end_connection(id, &reason, ending);
        }
        self.run_callbacks();
    }

    fn on_server_event(&self, event: ServerEvent) {
        let actions = {
            let mut core = lock(&self.core);
            let actions = match &event {
                ServerEvent::Up(id) => core.server_up(*id),
                ServerEvent::Down(id, reason) => core.server_down(*id, reason),
            };
            self.publish(&core);
            actions
        };
        if let ServerEvent::Down(_, reason) = &event {
            debug!(local = %self.server.display(), reason, "read connection ended");
        }
        self.apply(actions);
    }

    /// The write connection `id` ended on its own: the peer went away (or
    /// dropped it), or a write stalled. The frames the peer sent before
    /// are still on their way in: the read connection that goes down with
    /// it reads them first ([`Ending::Drain`]).
    fn client_ended(&self, id: ConnId, reason: &str) {
        self.end_client(id, reason, Ending::Drain);
    }

    /// Records the end of write connection `id`; the read connection that
    /// goes down with it ends as `ending` says.
    fn end_client(&self, id: ConnId, reason: &str, ending: Ending) {
        let actions = {
            let mut core = lock(&self.core);
            let actions = core.client_down(id, reason);
            self.publish(&core);
            actions
        };
        {
            let mut client = lock(&self.client);
            if client.as_ref().is_some_and(|c| c.id == id) {
                *client = None;
            }
        }
        info!(local = %self.server.display(), reason, "write connection ended");
        self.apply_ending(actions, ending);
    }

    /// Delivers pending connect events, one drainer at a time, in order.
    fn run_callbacks(&self) {
        if !lock(&self.core).begin_drain() {
            return;
        }
        loop {
            let Some(connected) = lock(&self.core).next_event() else {
                return;
            };
            info!(local = %self.server.display(), connected, "link state changed");
            if let Some(callback) = &self.config.on_connect {
                let f = &callback.0;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(connected))).is_err()
                {
                    error!("the pair's connect callback panicked");
                }
            }
        }
    }
}

impl<E, D> PairShared<E, D>
where
    E: Send + 'static,
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    async fn connect(self: &Arc<Self>, peer: &Endpoint) -> Result<(), PairError> {
        let mut closed = self.status.subscribe();
        tokio::select! {
            result = self.connect_until_deadline(peer) => result,
            // `close` ends a connect in progress at once.
            _ = closed.wait_for(|s| s.closed) => Err(PairError::Closed),
        }
    }

    async fn connect_until_deadline(self: &Arc<Self>, peer: &Endpoint) -> Result<(), PairError> {
        let timeout = self.config.connect_timeout;
        // before waiting for the lock: a connect behind another still has
        // its own deadline, not its own plus the other's
        let deadline = Instant::now() + timeout;
        let Ok(_one_at_a_time) = tokio::time::timeout_at(deadline, self.connect_lock.lock()).await
        else {
            return Err(PairError::ConnectTimeout {
                endpoint: peer.to_string(),
                timeout,
                stage: "another connect held the link the whole time".to_string(),
            });
        };
        let mut status = self.status.subscribe();
        let mut dialed = false;
        loop {
            let now = status.borrow_and_update().clone();
            if now.closed {
                return Err(PairError::Closed);
            }
            if let Some(id) = now.client.filter(|&id| !self.writes_to(id, peer)) {
                // A write connection to another peer (the last one, or one
                // an earlier connect left half-open): writes would go
                // there, so it ends before this peer is dialled.
                if let Some(task) = self.take_client(id) {
                    task.abort();
                }
                // (our choice, not the old peer's: no frames of its are
                // read after this)
                self.end_client(id, "the pair connects to another peer", Ending::Now);
                continue;
            }
            if now.connected {
                return Ok(());
            }
            if now.client.is_none() {
                let mut previous = None;
                if dialed {
                    // Our connection was closed before the link came up (a
                    // peer serving another client refuses us at once): pause
                    // as after a failed attempt, rather than spin.
                    previous = Some("the peer closed our connection at once".to_string());
                    let pause = Instant::now() + self.config.retry_interval;
                    tokio::time::sleep_until(pause.min(deadline)).await;
                }
                self.dial(peer, deadline, previous).await?;
                dialed = true;
                continue;
            }
            if tokio::time::timeout_at(deadline, status.changed())
                .await
                .is_err()
            {
                return Err(PairError::ConnectTimeout {
                    endpoint: peer.to_string(),
                    timeout,
                    stage: format!(
                        "connected, but the peer did not connect back to {}",
                        self.server.display()
                    ),
                });
            }
        }
    }

    /// Opens the client connection, retrying until `deadline`; `previous`
    /// says what went wrong before, should no attempt fit before it.
    async fn dial(
        self: &Arc<Self>,
        peer: &Endpoint,
        deadline: Instant,
        mut previous: Option<String>,
    ) -> Result<(), PairError> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = if remaining.is_zero() {
                None
            } else {
                Some(transport::connect(peer, remaining).await)
            };
            let last_error = match attempt {
                Some(Ok(stream)) => {
                    self.install_client(stream, peer);
                    return Ok(());
                }
                // an endpoint or a TLS setting that cannot work: no retry
                Some(Err(
                    e @ (TransportError::InvalidEndpoint { .. }
                    | TransportError::Unsupported { .. }
                    | TransportError::TlsConfig { .. }),
                )) => return Err(e.into()),
                Some(Err(e)) => e.to_string(),
                None => previous
                    .take()
                    .unwrap_or_else(|| "no time left".to_string()),
            };
            if Instant::now() + self.config.retry_interval >= deadline {
                return Err(PairError::ConnectTimeout {
                    endpoint: peer.to_string(),
                    timeout: self.config.connect_timeout,
                    stage: format!("no connection to the peer lasted (last error: {last_error})"),
                });
            }
            debug!(%peer, error = %last_error, "connect attempt failed; retrying");
            tokio::time::sleep(self.config.retry_interval).await;
        }
    }

    fn install_client(self: &Arc<Self>, stream: ByteStream, peer: &Endpoint) {
        let id = self.ids.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, rx) = mpsc::channel(self.config.write_queue);
        *lock(&self.client) = Some(ClientConn {
            id,
            peer: peer.clone(),
            tx,
            task: None,
        });
        info!(local = %self.server.display(), %peer, "write connection open");
        let actions = {
            let mut core = lock(&self.core);
            let actions = core.client_up(id);
            self.publish(&core);
            actions
        };
        {
            let mut client = lock(&self.client);
            if let Some(conn) = client.as_mut().filter(|c| c.id == id) {
                let weak = Arc::downgrade(self);
                let stall = self.config.write_stall_limit;
                let span = tracing::info_span!("pair_write", local = %self.server.display(), %peer, conn = id);
                conn.task = Some(tokio::spawn(Instrument::instrument(
                    async move {
                        let mut rx = rx;
                        let reason = run_client(stream, &mut rx, stall).await;
                        // Record the end before queued writers are woken (by
                        // dropping `rx`), so that they find the link down.
                        if let Some(shared) = weak.upgrade() {
                            shared.client_ended(id, &reason);
                        }
                        drop(rx);
                    },
                    span,
                )));
            }
        }
        self.apply(actions);
    }
}

/// The one writer of a client connection. It writes requests in order and
/// meanwhile reads the socket, which the peer never writes to, to notice
/// at once when the peer goes away. A write that makes no progress for
/// `stall` ends the connection. Returns why the connection ended.
async fn run_client(
    stream: ByteStream,
    requests: &mut mpsc::Receiver<WriteRequest>,
    stall: Duration,
) -> String {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut scratch = [0u8; 1024];
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else {
                    return "the pair was dropped".into();
                };
                let write = async {
                    let stalled = || {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the peer read nothing for {stall:?}"),
                        )
                    };
                    let mut written = 0;
                    while written < request.bytes.len() {
                        match tokio::time::timeout(stall, wr.write(&request.bytes[written..])).await {
                            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                            Ok(Ok(n)) => written += n,
                            Ok(Err(e)) => return Err(e),
                            Err(_) => return Err(stalled()),
                        }
                    }
                    tokio::time::timeout(stall, wr.flush()).await.map_err(|_| stalled())?
                };
                tokio::pin!(write);
                // Keep watching for EOF while a slow peer holds the write back.
                let result = loop {
                    tokio::select! {
                        result = &mut write => break result,
                        read = rd.read(&mut scratch) => match read {
                            Ok(0) => {
                                let _ = request.done.send(Err("the peer closed the write connection".into()));
                                return "the peer closed it".into();
                            }
                            Ok(n) => debug!(bytes = n, "ignoring bytes received on the write-only connection"),
                            Err(e) => {
                                let _ = request.done.send(Err(format!("write connection failed: {e}")));
                                return format!("read failed: {e}");
                            }
                        },
                    }
                };
                match result {
                    Ok(()) => {
                        let _ = request.done.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = request.done.send(Err(format!("write failed: {e}")));
                        return format!("write failed: {e}");
                    }
                }
            }
            read = rd.read(&mut scratch) => match read {
                Ok(0) => return "the peer closed it".into(),
                Ok(n) => debug!(bytes = n, "ignoring bytes received on the write-only connection"),
                Err(e) => return format!("read failed: {e}"),
            },
        }
    }
}
