//! [`OneClientServer`]: a listener that serves one client at a time and
//! reads its frames.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::codec::Decoder;
use tracing::{info, warn, Instrument};

use super::core::ConnId;
use super::PairError;
use crate::transport::{ByteStream, Endpoint, Listener, PeerAddr};

/// Frames read ahead of the application, per client, unless configured.
///
/// Large enough to absorb a burst of replies from a device, small enough
/// that a peer flooding us is held back by TCP flow control: when the queue
/// is full the server stops reading the socket until the application reads.
pub const DEFAULT_READ_QUEUE: usize = 64;

/// How much a decoder may keep buffered without producing a frame before the
/// connection is closed: a safety net under the codec's own maximum frame
/// length (tether's codecs never get near it; the default maximum frame
/// length is 8 MiB).
const MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// How much a read asks for at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How long a client arriving while another is served waits for that one to
/// turn out gone before it is refused. A peer that drops its link and dials
/// again at once closes the old connection before opening the new one, but
/// the end of the old one may not have been read yet; without this grace the
/// reconnect would be refused and the link would flap.
const SECOND_CLIENT_GRACE: Duration = Duration::from_millis(100);

/// Connections that ended before anyone read them, kept so their frames can
/// still be read; older ones are dropped (with a log line) beyond this.
const MAX_UNREAD_CONNECTIONS: usize = 4;

/// Settings of a [`OneClientServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Frames decoded ahead of [`OneClientServer::read`] (default
    /// [`DEFAULT_READ_QUEUE`]). When full, the socket is not read until the
    /// application catches up, so a client that goes away meanwhile is
    /// noticed once the queued frames have been read.
    pub read_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            read_queue: DEFAULT_READ_QUEUE,
        }
    }
}

/// What the server tells its owner (the [`Pair`](super::Pair)).
#[derive(Debug)]
pub(crate) enum ServerEvent {
    Up(ConnId),
    Down(ConnId, String),
}

pub(crate) type Hook = Arc<dyn Fn(ServerEvent) + Send + Sync>;

type Frame<T> = Result<T, PairError>;
type FrameRx<T> = mpsc::Receiver<Frame<T>>;

/// A server that reads from one client at a time.
///
/// It listens on an [`Endpoint`] (port 0 picks a free port; the real one
/// is in [`local_endpoint`](Self::local_endpoint) as soon as
/// [`bind`](Self::bind) returns) and accepts one client. A second client
/// that connects while the first is served is refused: its connection is
/// closed at once and a warning is logged; the first is not disturbed. The
/// server reads and decodes its client's frames all the time, so it notices
/// at once when the client goes away; then the next client is accepted.
///
/// Frames a client sent before leaving are still read, in order, followed
/// by one [`PairError::ConnectionLost`]. Decoding errors concern one frame:
/// they are returned by [`read`](Self::read) in the frame's place and
/// reading goes on, unless the codec says the stream is over.
///
/// ```no_run
/// # async fn run() -> Result<(), tether::pair::PairError> {
/// use std::time::Duration;
/// use tether::framing::SentinelCodec;
/// use tether::pair::{OneClientServer, ServerConfig};
///
/// let server = OneClientServer::bind(
///     &"tcp://127.0.0.1:0".parse()?,
///     SentinelCodec::crlf(),
///     ServerConfig::default(),
/// )
/// .await?;
/// println!("listening on {}", server.display_address());
/// let peer = server.wait_connected(Duration::from_secs(10)).await?;
/// println!("{peer} says {}", server.read_text().await?);
/// # Ok(()) }
/// ```
pub struct OneClientServer<D: Decoder> {
    shared: Arc<ServerShared<D>>,
}

pub(crate) struct ServerShared<D: Decoder> {
    local: Endpoint,
    display: String,
    decoder: Mutex<D>,
    config: ServerConfig,
    state: Mutex<ServerState<D::Item>>,
    status: watch::Sender<ServerStatus>,
    reader: tokio::sync::Mutex<Option<(ConnId, FrameRx<D::Item>)>>,
    accept_task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    accept_abort: Mutex<Option<AbortHandle>>,
    /// Connections with a lower id are stale: their unread frames are dropped.
    min_id: AtomicU64,
    ids: Arc<AtomicU64>,
    // clients waiting out the grace for the current one to go
    waiting: Arc<AtomicUsize>,
    hook: Option<Hook>,
}

struct ServerState<T> {
    current: Option<Current>,
    // read tasks of connections no longer current, ending (aborted, or
    // reading what had arrived: see `Ending::Drain`); `close` waits for them
    ending: Vec<JoinHandle<()>>,
    unread: VecDeque<(ConnId, FrameRx<T>)>,
    disconnects: u64,
    last_disconnect: Option<String>,
    refused: u64,
    closed: bool,
}

struct Current {
    id: ConnId,
    peer: PeerAddr,
    // its read task: aborted when the connection ends, awaited by `close`
    task: Option<JoinHandle<()>>,
    // tells the read task to read only what has arrived, then end
    drain: Arc<Notify>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ServerStatus {
    client: Option<PeerAddr>,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere never leaves these states half-updated (every update
    // is a few assignments), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<D> OneClientServer<D>
where
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// Binds to `endpoint` and starts accepting; each client's bytes are
    /// decoded with a fresh clone of `decoder`.
    pub async fn bind(
        endpoint: &Endpoint,
        decoder: D,
        config: ServerConfig,
    ) -> Result<Self, PairError> {
        let listener = Listener::bind(endpoint).await?;
        let shared = ServerShared::new(
            &listener,
            decoder,
            config,
            None,
            Arc::new(AtomicU64::new(0)),
        );
        shared.start(listener);
        Ok(OneClientServer { shared })
    }

    /// The endpoint clients connect to (with the real port after port 0).
    pub fn local_endpoint(&self) -> Endpoint {
        self.shared.local.clone()
    }

    /// `HOST:PORT` (or the socket path), for a `listening on …` line.
    pub fn display_address(&self) -> &str {
        &self.shared.display
    }

    /// Is a client connected?
    pub fn connected(&self) -> bool {
        self.shared.client().is_some()
    }

    /// The connected client, if any.
    pub fn client(&self) -> Option<PeerAddr> {
        self.shared.client()
    }

    /// How many clients were refused because another one was connected.
    pub fn refused(&self) -> u64 {
        self.shared.refused()
    }

    /// Waits until a client is connected, at most `timeout`:
    /// [`PairError::NoClientWithin`] if none does, [`PairError::Closed`] if
    /// the server is closed meanwhile.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<PeerAddr, PairError> {
        self.shared.wait_connected(timeout).await
    }

    /// Waits until no client is connected, at most `timeout`; false if one
    /// still is.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let mut status = self.shared.status.subscribe();
        tokio::time::timeout(timeout, status.wait_for(|s| s.client.is_none()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The next frame from the client.
    ///
    /// Waits while the client is connected. Once it has gone, its remaining
    /// frames come first, then one [`PairError::ConnectionLost`]; with no
    /// client at all, [`PairError::NotConnected`]. A reader waiting when the
    /// client leaves gets `ConnectionLost`. Cancel-safe: dropping the future
    /// loses no frame.
    pub async fn read(&self) -> Result<D::Item, PairError> {
        self.shared.read().await
    }

    /// Closes the current client's connection (if any) and waits for the
    /// next one; its unread frames can still be read.
    pub fn disconnect(&self) {
        let id = lock(&self.shared.state).current.as_ref().map(|c| c.id);
        if let Some(id) = id {
            self.shared.disconnect(id, "disconnected by the server");
        }
    }

    /// Stops accepting, closes the client's connection and the listener.
    /// Idempotent; when it returns the port is free.
    pub async fn close(&self) {
        self.shared.close().await;
    }
}

impl<D: Decoder> Drop for OneClientServer<D> {
    fn drop(&mut self) {
        self.shared.shutdown_now();
    }
}

impl<D: Decoder> std::fmt::Debug for OneClientServer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneClientServer")
            .field("local", &self.shared.local)
            .field("client", &self.shared.client())
            .finish()
    }
}

impl<D: Decoder> ServerShared<D> {
    pub(crate) fn client(&self) -> Option<PeerAddr> {
        lock(&self.state).current.as_ref().map(|c| c.peer)
    }

    pub(crate) fn refused(&self) -> u64 {
        lock(&self.state).refused
    }

    pub(crate) fn local(&self) -> &Endpoint {
        &self.local
    }

    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// Drop unread frames of connections older than `id`.
    pub(crate) fn set_min_id(&self, id: ConnId) {
        self.min_id.fetch_max(id, Ordering::SeqCst);
    }

    fn publish(&self, state: &ServerState<D::Item>) {
        self.status.send_replace(ServerStatus {
            client: state.current.as_ref().map(|c| c.peer),
            closed: state.closed,
        });
    }

    /// Closes connection `id` if it is the current one.
    pub(crate) fn disconnect(&self, id: ConnId, reason: &str) {
        self.end_connection(id, reason, Ending::Now);
    }

    /// Ends connection `id` if it is the current one, at once or, with
    /// [`Ending::Drain`], once it has read what had arrived.
    pub(crate) fn end_connection(&self, id: ConnId, reason: &str, ending: Ending) {
        let ended = {
            let mut st = lock(&self.state);
            match &st.current {
                Some(cur) if cur.id == id => {
                    let cur = st.current.take().expect("checked");
                    if let Some(task) = cur.task {
                        // Ending the task drops the socket and the queue's
                        // sender: readers see the queued frames, then the end.
                        st.ending.retain(|t| !t.is_finished());
                        match ending {
                            Ending::Now => {
                                task.abort();
                                st.ending.push(task);
                            }
                            Ending::Drain => {
                                cur.drain.notify_one();
                                let abort = task.abort_handle();
                                st.ending.push(task);
                                let mut status = self.status.subscribe();
                                tokio::spawn(async move {
                                    // (a close ends the drain at once)
                                    let _ = tokio::time::timeout(
                                        DRAIN_LIMIT,
                                        status.wait_for(|s| s.closed),
                                    )
                                    .await;
                                    abort.abort();
                                });
                            }
                        }
                    }
                    st.disconnects += 1;
                    st.last_disconnect = Some(format!("client {}: {reason}", cur.peer));
                    self.publish(&st);
                    Some(cur.peer)
                }
                _ => None,
            }
        };
        if let Some(peer) = ended {
            info!(listen = %self.display, %peer, reason, "client disconnected");
            if let Some(hook) = &self.hook {
                hook(ServerEvent::Down(id, reason.to_string()));
            }
        }
    }

    fn connection_ended(&self, id: ConnId, reason: String) {
        let ended = {
            let mut st = lock(&self.state);
            match &st.current {
                Some(cur) if cur.id == id => {
                    let peer = cur.peer;
                    st.current = None;
                    st.disconnects += 1;
                    st.last_disconnect = Some(format!("client {peer}: {reason}"));
                    self.publish(&st);
                    Some(peer)
                }
                _ => None,
            }
        };
        if let Some(peer) = ended {
            info!(listen = %self.display, %peer, %reason, "client went away");
            if let Some(hook) = &self.hook {
                hook(ServerEvent::Down(id, reason));
            }
        }
    }

    fn lost(&self) -> PairError {
        let st = lock(&self.state);
        if st.closed {
            return PairError::Closed;
        }
        PairError::lost(
            st.last_disconnect
                .clone()
                .unwrap_or_else(|| "the client went away".into()),
        )
    }

    pub(crate) async fn wait_connected(&self, timeout: Duration) -> Result<PeerAddr, PairError> {
        let mut status = self.status.subscribe();
        let waited =
            tokio::time::timeout(timeout, status.wait_for(|s| s.client.is_some() || s.closed))
                .await;
        match waited {
            Ok(Ok(s)) if !s.closed => Ok(s.client.expect("waited for it")),
            Ok(_) => Err(PairError::Closed),
            Err(_) => Err(PairError::NoClientWithin { timeout }),
        }
    }

    pub(crate) async fn read(&self) -> Result<D::Item, PairError> {
        let entry = lock(&self.state).disconnects;
        let mut slot = self.reader.lock().await;
        self.forget_stale(&mut slot, 0);
        if slot.is_none() {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(PairError::Closed);
            }
            if st.disconnects != entry {
                drop(st);
                return Err(self.lost());
            }
            match st.unread.pop_front() {
                Some(next) => *slot = Some(next),
                None => return Err(PairError::NotConnected),
            }
        }
        let (_, rx) = slot.as_mut().expect("filled above");
        match rx.recv().await {
            Some(frame) => frame,
            None => {
                *slot = None;
                Err(self.lost())
            }
        }
    }

    /// A frame left over from a lost connection: `None` when there is none
    /// left. A connection that ended is read to its end: one still
    /// draining (see [`Ending::Drain`]) reads only what had arrived,
    /// so this waits no longer than that takes. The current connection (a
    /// peer that connected to us before the link is up) is not waited
    /// for: its frames are for `read` once the link is up.
    pub(crate) async fn read_leftover(&self) -> Option<Result<D::Item, PairError>> {
        let mut slot = self.reader.lock().await;
        self.forget_stale(&mut slot, 0);
        if slot.is_none() {
            // The lost connection may not have been read from at all.
            *slot = lock(&self.state).unread.pop_front();
        }
        let current = lock(&self.state).current.as_ref().map(|c| c.id);
        let (id, rx) = slot.as_mut()?;
        let frame = if Some(*id) == current {
            match rx.try_recv() {
                Ok(frame) => Some(frame),
                // (kept: its frames are for `read` once the link is up)
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            rx.recv().await
        };
        if frame.is_none() {
            *slot = None;
            return None;
        }
        // a link restored while this waited: the frame was the old one's
        self.forget_stale(&mut slot, 1);
        frame.filter(|_| slot.is_some())
    }

    /// Lets go of the frames of links older than the current one that
    /// nobody read (`held` more already taken out of `slot`'s queue), and
    /// says how many: not an error (what `read` returns after a restored
    /// link comes from the new link), but not silent either.
    fn forget_stale(&self, slot: &mut Option<(ConnId, FrameRx<D::Item>)>, held: usize) {
        let min = self.min_id.load(Ordering::SeqCst);
        let mut dropped = 0;
        if slot.as_ref().is_some_and(|(id, _)| *id < min) {
            dropped += held + slot.take().map_or(0, |(_, rx)| rx.len());
        }
        lock(&self.state).unread.retain(|(id, rx)| {
            let stale = *id < min;
            if stale {
                dropped += rx.len();
            }
            !stale
        });
        if dropped > 0 {
            warn!(
                listen = %self.display,
                frames = dropped,
                "dropped the unread frames of a lost link, the link being restored"
            );
        }
    }

    pub(crate) async fn close(&self) {
        let (id, mut tasks) = {
            let mut st = lock(&self.state);
            st.closed = true;
            self.publish(&st);
            let tasks = std::mem::take(&mut st.ending);
            match st.current.as_mut() {
                Some(cur) => (
                    Some(cur.id),
                    tasks.into_iter().chain(cur.task.take()).collect(),
                ),
                None => (None, tasks),
            }
        };
        if let Some(id) = id {
            self.disconnect(id, "closed: the server is shutting down");
        }
        // every read connection gone, its socket with it, before `close`
        // returns
        for task in &tasks {
            task.abort();
        }
        for task in tasks.iter_mut() {
            let _ = task.await;
        }
        let mut task = self.accept_task.lock().await;
        if let Some(task) = task.take() {
            task.abort();
            // Wait until the task (and with it the listener) is gone.
            let _ = task.await;
            info!(listen = %self.display, "stopped listening");
        }
    }

    /// Stops everything without waiting (for `Drop`).
    pub(crate) fn shutdown_now(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        if let Some(cur) = st.current.take() {
            if let Some(task) = cur.task {
                task.abort();
            }
        }
        self.publish(&st);
        drop(st);
        if let Some(abort) = lock(&self.accept_abort).take() {
            abort.abort();
        }
    }
}

impl<D> ServerShared<D>
where
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    pub(crate) fn new(
        listener: &Listener,
        decoder: D,
        config: ServerConfig,
        hook: Option<Hook>,
        ids: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(ServerShared {
            local: listener.local_endpoint(),
            display: listener.display_address(),
            decoder: Mutex::new(decoder),
            config: ServerConfig {
                read_queue: config.read_queue.clamp(1, super::link::QUEUE_AT_MOST),
            },
            state: Mutex::new(ServerState {
                current: None,
                ending: Vec::new(),
                unread: VecDeque::new(),
                disconnects: 0,
                last_disconnect: None,
                refused: 0,
                closed: false,
            }),
            status: watch::Sender::new(ServerStatus::default()),
            reader: tokio::sync::Mutex::new(None),
            accept_task: tokio::sync::Mutex::new(None),
            accept_abort: Mutex::new(None),
            min_id: AtomicU64::new(0),
            ids,
            waiting: Arc::default(),
            hook,
        })
    }

    /// Starts the accept loop on `listener`.
    pub(crate) fn start(self: &Arc<Self>, listener: Listener) {
        let task = tokio::spawn(accept_loop(Arc::clone(self), listener));
        *lock(&self.accept_abort) = Some(task.abort_handle());
        // Nobody else can hold the lock yet: `start` runs right after `new`.
        if let Ok(mut slot) = self.accept_task.try_lock() {
            *slot = Some(task);
        }
    }

    fn admit(self: &Arc<Self>, stream: ByteStream) {
        let peer = stream.peer();
        let (tx, rx) = mpsc::channel(self.config.read_queue);
        let id = {
            let mut st = lock(&self.state);
            if st.closed {
                return;
            }
            if let Some(serving) = st.current.as_ref().map(|c| c.peer) {
                st.refused += 1;
                warn!(
                    listen = %self.display,
                    refused = %peer,
                    %serving,
                    "refused a second client: this server serves one client at a time"
                );
                return;
            }
            let id = self.ids.fetch_add(1, Ordering::SeqCst) + 1;
            st.current = Some(Current {
                id,
                peer,
                task: None,
                drain: Arc::default(),
            });
            st.unread.push_back((id, rx));
            while st.unread.len() > MAX_UNREAD_CONNECTIONS {
                st.unread.pop_front();
                warn!(listen = %self.display, "dropped the unread frames of an old client");
            }
            self.publish(&st);
            id
        };
        info!(listen = %self.display, %peer, "client connected");
        if let Some(hook) = &self.hook {
            hook(ServerEvent::Up(id));
        }
        let decoder = lock(&self.decoder).clone();
        let mut st = lock(&self.state);
        if st.closed {
            // closed since: its `close` is not waiting for a task started now
            return;
        }
        if let Some(cur) = st.current.as_mut().filter(|c| c.id == id) {
            let span =
                tracing::info_span!("one_client_read", listen = %self.display, %peer, conn = id);
            let reading = Reading {
                id,
                stream,
                decoder,
                tx,
                drain: Arc::clone(&cur.drain),
            };
            let task = tokio::spawn(read_loop(Arc::clone(self), reading).instrument(span));
            cur.task = Some(task);
        }
    }
}

async fn accept_loop<D>(shared: Arc<ServerShared<D>>, mut listener: Listener)
where
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    info!(listen = %shared.display, "listening");
    // Clients waiting out the grace for the current one to go: a few at
    // most, so that a burst of connections cannot take every file
    // descriptor of the process for those 100 ms.
    let waiting = Arc::clone(&shared.waiting);
    loop {
        match listener.accept().await {
            Ok(stream) if shared.status.borrow().client.is_none() => shared.admit(stream),
            Ok(stream) if waiting.load(Ordering::SeqCst) >= MAX_WAITING_CLIENTS => {
                // (admit refuses it, counted and logged, as the current
                // client is still there)
                shared.admit(stream);
            }
            Ok(stream) => {
                let shared = Arc::clone(&shared);
                let waiting = WaitingClient::new(&waiting);
                tokio::spawn(async move {
                    let _waiting = waiting;
                    let mut status = shared.status.subscribe();
                    let _ = tokio::time::timeout(
                        SECOND_CLIENT_GRACE,
                        status.wait_for(|s| s.client.is_none() || s.closed),
                    )
                    .await;
                    // Refuses the client if the first one is still there.
                    shared.admit(stream);
                });
            }
            Err(e) => {
                warn!(listen = %shared.display, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// What a connection's read task holds.
struct Reading<D: Decoder> {
    id: ConnId,
    stream: ByteStream,
    decoder: D,
    tx: mpsc::Sender<Frame<D::Item>>,
    drain: Arc<Notify>,
}

async fn read_loop<D>(shared: Arc<ServerShared<D>>, reading: Reading<D>)
where
    D: Decoder,
    D::Error: StdError + Send + Sync + 'static,
{
    let Reading {
        id,
        mut stream,
        mut decoder,
        tx,
        drain,
    } = reading;
    // A decoder that panics on the peer's bytes: the end is recorded all
    // the same (or the connection would stay current for ever and every
    // later client be refused), then the panic goes on. A cancelled task
    // (aborted, a runtime shutting down) records nothing: its end is
    // someone else's to record.
    let outcome = AssertUnwindSafe(pump(&mut stream, &mut decoder, &tx, &drain))
        .catch_unwind()
        .await;
    drop(stream);
    // Record the end before readers can see it (the queue closes below), so
    // that what they are told matches the state they then find.
    let reason = match &outcome {
        Ok(reason) => reason.clone(),
        Err(_) => "the read task panicked (in the decoder?)".to_string(),
    };
    shared.connection_ended(id, reason);
    drop(tx);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Reads and decodes until the stream ends; returns why it ended.
async fn pump<D>(
    stream: &mut ByteStream,
    decoder: &mut D,
    tx: &mpsc::Sender<Frame<D::Item>>,
    drain: &Notify,
) -> String
where
    D: Decoder,
    D::Error: StdError + Send + Sync + 'static,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut draining = false;
    // Buffer length at the last decoding error: a decoder that fails twice
    // on the same bytes without consuming any is stuck, and we stop.
    let mut failed_at: Option<usize> = None;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    failed_at = None;
                    if tx.send(Ok(frame)).await.is_err() {
                        return "nobody reads this connection any more".into();
                    }
                }
                Ok(None) => {
                    failed_at = None;
                    break;
                }
                Err(e) => {
                    let err = PairError::from_codec(e);
                    let stuck = failed_at == Some(buf.len());
                    failed_at = Some(buf.len());
                    let fatal = err.is_fatal_codec() || stuck;
                    let what = err.to_string();
                    if tx.send(Err(err)).await.is_err() {
                        return "nobody reads this connection any more".into();
                    }
                    if fatal {
                        return format!("unreadable input: {what}");
                    }
                }
            }
        }
        if buf.len() > MAX_BUFFERED {
            return format!("the decoder buffered over {MAX_BUFFERED} bytes without a frame");
        }
        buf.reserve(READ_CHUNK);
        let read = if draining {
            // What has arrived, and what comes before the connection is
            // quiet for DRAIN_QUIET (its last segments may trail the other
            // connection's end on a real network). Unconstrained: tokio's
            // task budget running out is not the connection being quiet.
            let more = tokio::task::unconstrained(stream.read_buf(&mut buf));
            match tokio::time::timeout(DRAIN_QUIET, more).await {
                Ok(read) => read,
                Err(_quiet) => return "read what had arrived after the link went down".into(),
            }
        } else {
            tokio::select! {
                read = stream.read_buf(&mut buf) => read,
                () = drain.notified() => {
                    draining = true;
                    // the peer sees the end of this connection at once
                    let _ = stream.shutdown().now_or_never();
                    continue;
                }
            }
        };
        match read {
            Ok(0) => {
                for _ in 0..MAX_EOF_FRAMES {
                    match decoder.decode_eof(&mut buf) {
                        Ok(Some(frame)) => {
                            if tx.send(Ok(frame)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(PairError::from_codec(e))).await;
                            break;
                        }
                    }
                }
                return "the client closed the connection".into();
            }
            Ok(_) => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// Clients that may wait out [`SECOND_CLIENT_GRACE`] at once; the next
/// are refused at once.
const MAX_WAITING_CLIENTS: usize = 4;

/// One client waiting out the grace, counted while it lives.
struct WaitingClient(Arc<AtomicUsize>);

impl WaitingClient {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        WaitingClient(Arc::clone(count))
    }
}

impl Drop for WaitingClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a connection that is no longer the current one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// At once (a disconnect or close asked for by this side).
    Now,
    /// The peer went away: it ends our side at once (the peer sees it),
    /// reads what had arrived and no more (once quiet for
    /// [`DRAIN_QUIET`]), so that the frames sent before the peer went are
    /// delivered, then the loss; cut off after [`DRAIN_LIMIT`] if no one
    /// takes its frames.
    Drain,
}

/// How long a draining connection may be quiet before what it has read is
/// taken as all: its last segments may trail the other connection's end.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// How long a connection ended by the peer's going away may take to hand
/// over what had arrived: it reads no more than that, but a full queue
/// waits for a reader. Past it (a reader that takes nothing), what is
/// left is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Frames a decoder may still produce from the bytes left at end of stream
/// (bounded in case a decoder keeps returning frames without consuming).
const MAX_EOF_FRAMES: usize = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{FramingError, SentinelCodec};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    const T: Duration = Duration::from_secs(5);

    async fn server() -> OneClientServer<SentinelCodec> {
        OneClientServer::bind(
            &"tcp://127.0.0.1:0".parse().unwrap(),
            SentinelCodec::lines(),
            ServerConfig::default(),
        )
        .await
        .unwrap()
    }

    async fn dial(server: &OneClientServer<SentinelCodec>) -> TcpStream {
        TcpStream::connect(server.local_endpoint().host_port().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn waiting_for_a_client_says_how_it_ended() {
        let server = server().await;
        let waited = server.wait_connected(Duration::from_millis(20)).await;
        assert!(
            matches!(waited, Err(PairError::NoClientWithin { timeout })
                if timeout == Duration::from_millis(20)),
            "{waited:?}"
        );
        // still listening: a client that comes later is served
        let _c = dial(&server).await;
        server.wait_connected(T).await.unwrap();
        server.close().await;
        let waited = server.wait_connected(T).await;
        assert!(matches!(waited, Err(PairError::Closed)), "{waited:?}");
    }

    #[tokio::test]
    async fn reads_frames_then_reports_the_client_leaving_then_serves_the_next() {
        let server = server().await;
        assert!(matches!(server.read().await, Err(PairError::NotConnected)));
        let mut c = dial(&server).await;
        server.wait_connected(T).await.unwrap();
        c.write_all(b"one\ntwo\n").await.unwrap();
        drop(c);
        assert_eq!(
            tokio::time::timeout(T, server.read())
                .await
                .unwrap()
                .unwrap(),
            "one"
        );
        assert_eq!(
            tokio::time::timeout(T, server.read())
                .await
                .unwrap()
                .unwrap(),
            "two"
        );
        let end = tokio::time::timeout(T, server.read()).await.unwrap();
        assert!(
            end.as_ref().is_err_and(|e| e.is_connection_lost()),
            "{end:?}"
        );
        assert!(server.wait_disconnected(T).await);

        let mut c = dial(&server).await;
        server.wait_connected(T).await.unwrap();
        c.write_all(b"three\n").await.unwrap();
        assert_eq!(
            tokio::time::timeout(T, server.read())
                .await
                .unwrap()
                .unwrap(),
            "three"
        );
    }

    #[tokio::test]
    async fn a_waiting_reader_learns_that_the_client_left() {
        let server = Arc::new(server().await);
        let c = dial(&server).await;
        server.wait_connected(T).await.unwrap();
        let reader = tokio::spawn({
            let server = Arc::clone(&server);
            async move { server.read().await }
        });
        tokio::task::yield_now().await;
        drop(c);
        let got = tokio::time::timeout(T, reader).await.unwrap().unwrap();
        assert!(got.is_err_and(|e| e.is_connection_lost()));
    }

    #[tokio::test]
    async fn a_burst_of_second_clients_waits_a_few_at_a_time_and_is_all_refused() {
        let server = server().await;
        let _first = dial(&server).await;
        server.wait_connected(T).await.unwrap();
        let mut burst = Vec::new();
        let mut most_waiting = 0;
        for _ in 0..20 {
            burst.push(dial(&server).await);
            // let the accept loop take it
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            most_waiting = most_waiting.max(server.shared.waiting.load(Ordering::SeqCst));
        }
        assert!(
            most_waiting <= MAX_WAITING_CLIENTS,
            "{most_waiting} clients waited out the grace at once"
        );
        // all refused, those that waited too, the first client being there
        tokio::time::timeout(T, async {
            while server.refused() < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }

    /// Lines, but panics on the line `boom`.
    #[derive(Clone)]
    struct Fragile(SentinelCodec);

    impl Decoder for Fragile {
        type Item = BytesMut;
        type Error = FramingError;
        fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FramingError> {
            let frame = self.0.decode(buf)?;
            assert!(frame.as_deref() != Some(&b"boom"[..]), "a decoder bug");
            Ok(frame)
        }
    }

    #[tokio::test]
    async fn a_decoder_that_panics_ends_its_connection_and_the_next_is_served() {
        let server = OneClientServer::bind(
            &"tcp://127.0.0.1:0".parse().unwrap(),
            Fragile(SentinelCodec::lines()),
            ServerConfig::default(),
        )
        .await
        .unwrap();
        let at = server.local_endpoint().host_port().unwrap();
        let mut c = TcpStream::connect(&at).await.unwrap();
        server.wait_connected(T).await.unwrap();
        c.write_all(b"boom\n").await.unwrap();
        assert!(server.wait_disconnected(T).await, "the end is recorded");
        let mut next = TcpStream::connect(&at).await.unwrap();
        server.wait_connected(T).await.unwrap();
        next.write_all(b"fine\n").await.unwrap();
        // the first connection's end, then the next one's frame
        let end = tokio::time::timeout(T, server.read()).await.unwrap();
        assert!(end.is_err_and(|e| e.to_string().contains("panicked")));
        let got = tokio::time::timeout(T, server.read()).await.unwrap();
        assert_eq!(got.unwrap(), "fine");
    }

    #[tokio::test]
    async fn close_frees_the_port() {
        let server = server().await;
        let addr = server.local_endpoint().host_port().unwrap();
        server.close().await;
        server.close().await;
        assert!(TcpStream::connect(&addr).await.is_err());
        assert!(matches!(server.read().await, Err(PairError::Closed)));
    }
}
