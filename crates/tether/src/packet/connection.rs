//! [`PacketConnection`]: the tokio driver around the sans-IO [`Protocol`].
//!
//! One task per connection owns the byte stream, the read and write
//! buffers and the running handlers. The protocol state sits behind a
//! mutex shared with the requesters: a requester allocates its tag,
//! registers itself in the pending table and encodes its request straight
//! into the outgoing buffer, waking the task only if it was idle; the task
//! stores each response beside the table and wakes its requester (or
//! appends it to its [`Pipeline`](super::Pipeline)'s queue, or drops it for
//! a push). No channel, no per-request allocation beyond the payload.
//! Handlers (user code) never run under that lock; one that answers at
//! once runs in place, polled once, and only a pending one joins the
//! running set.
//!
//! The task reads in 16 KiB chunks (a long packet still arriving gets more
//! room, as `LengthCodec`'s frames do) and decodes each run of whole packets
//! split off the read buffer at once. It writes whatever has accumulated as
//! soon as it has nothing else to do, so a burst of requests or responses
//! goes out in one `write` and a lone request goes out at once (no grace
//! sleep). A payload of 16 KiB or more is not copied: it waits beside the
//! write buffer and goes out in a vectored write (see [`super::outgoing`]).
//!
//! While `max_handlers` handlers run, the peer's further requests wait in
//! a queue (bounded at 256 KiB) and decoding goes on past them, so that the
//! answers a running handler may be awaiting still come in.
//!
//! When 64 KiB are waiting to be written, the task takes no new work until
//! the peer reads: it decodes nothing (requests or responses), takes no
//! handler results and no requests from this end. It goes on reading,
//! though, up to `max_body_len` bytes undecoded (at least 256 KiB, and one
//! read more, at most 256 KiB): a peer doing the same (another tether end
//! echoing 1 MiB packets back) would otherwise wait for this end to read
//! while this end waits for it. While packets read ahead wait, this end's
//! new requests wait behind them, so that each end serves the other before
//! it sends more of its own. Two ends can still stall if one has more
//! queued than the other reads ahead (a handler answering a small request
//! with many megabytes, say): the wire has no flow control, and reading
//! further would leave memory unbounded. A peer that keeps sending requests
//! and reads slowly can so hold this end's own requests back for as long as
//! it does. If the stream ends meanwhile, the packets read ahead are decoded
//! before the end is handled (the peer may have answered, then closed), and
//! the close starts at once, so that its time limits bound the wait for a
//! peer that never reads again.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::panic::AssertUnwindSafe;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Sleep;
use tracing::Instrument;

use super::codec::{PacketCodec, DEFAULT_MAX_BODY_LEN};
use super::handler::{Handler, NoHandler, TypedRequest, HANDLER_FAILED};
use super::outgoing::{self, Outgoing};
use super::proto::{Batch, IncomingRequest, Protocol, Stats, StatsSnapshot};
use super::scratch::Scratch;
use super::tag_table::TagTable;
use super::wire::{MAX_REQUEST_FLAGS, MAX_RQ_TYPE};
use super::{Packet, PacketError, Response};
use crate::buffers::ReadBuf;
use crate::framing::room_ahead;
use crate::transport::{self, ConnectOptions, Endpoint};

/// Write-buffer level above which the connection stops taking new work
/// (commands, handler results, incoming requests) until the socket drains.
/// 64 KiB: a few loopback socket buffers' worth, small next to the 8 MiB
/// packet limit, large enough that 64-byte packets are batched by the
/// hundred.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// The least a connection whose writes are behind reads ahead (it reads
/// up to `max_body_len`, if that is more): what a peer like it may have
/// queued, a full write buffer and a batch of answers besides, so that
/// neither waits on the other when `max_body_len` is small.
const READ_AHEAD_AT_LEAST: usize = 4 * WRITE_HIGH_WATER;
/// What the peer's requests waiting for a handler slot may hold (see
/// [`Parked`]): their payloads (copied), and their own size each. Past it,
/// nothing more is decoded until a handler finishes, and at most as much
/// again is read ahead (to see a peer that goes meanwhile); the request
/// that crosses it waits too, whatever its size (up to `max_body_len`).
const PARKED_AT_MOST: usize = READ_AHEAD_AT_LEAST;
/// Bytes reserved for each read. 16 KiB amortises the syscall over many
/// small packets; a connection holds the buffer only while it has work (see
/// [`super::scratch`]).
const READ_CHUNK: usize = 16 * 1024;
/// Room made at once for the peer's requests decoded in one batch, in the
/// vectors given back when the connection goes idle (each entry 64 bytes).
/// 64: a pipelined peer's usual burst, in one allocation.
const BATCH_RESERVE: usize = 64;
/// Loop rounds before the task yields to the scheduler voluntarily, so one
/// busy connection cannot starve others on its worker thread; each round
/// moves up to a full write buffer, so 64 rounds is several MiB.
const MAX_ROUNDS: usize = 64;

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PacketConfig {
    /// Maximum packet body length, both directions. Default 8 MiB. A
    /// request's payload may take all of it but 30 bytes (40 on a channel
    /// other than 0), room for the largest tag, header and request type:
    /// a longer one is refused with [`PacketError::TooLarge`] before
    /// anything is sent.
    pub max_body_len: usize,
    /// Maximum number of the peer's requests handled at once. Default
    /// 256; 0 is taken as 1.
    ///
    /// While that many run, further requests wait their turn and start in
    /// order of arrival as handlers finish. The connection goes on reading
    /// past them, so that answers to its own requests still come in (a
    /// running handler may be awaiting one, over the same connection),
    /// until the waiting requests hold 256 KiB (their payloads, copied
    /// out of the read buffer, and 64 bytes each), or that and one more
    /// request of any size up to `max_body_len`. Then it reads
    /// nothing more until a handler finishes, and the peer's writes wait
    /// (backpressure). So a handler can call back over its own connection
    /// even when every slot is taken, unless the peer sends more requests
    /// than that before the answer.
    /// [`StatsSnapshot::requests_waiting`] counts the waiting requests.
    pub max_handlers: usize,
    /// Maximum number of our requests awaiting a response; `submit` waits
    /// for room beyond it. Default 65536. (Requests encoded but not yet
    /// written are bounded too: `submit` waits while 64 KiB are queued.)
    pub max_pending: usize,
    /// On close: how long running handlers may take before they are
    /// abandoned and EOF is sent. Default 5 s.
    pub close_timeout: Duration,
    /// On close: how long to wait for the peer's EOF after ours. Default 5 s.
    pub eof_timeout: Duration,
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            max_body_len: DEFAULT_MAX_BODY_LEN,
            max_handlers: 256,
            max_pending: 65536,
            close_timeout: Duration::from_secs(5),
            eof_timeout: Duration::from_secs(5),
        }
    }
}

type Key = (u64, u64);

/// How the connection ended (`None` while it runs): `Ok` after an orderly
/// shutdown, or why not.
type Outcome = Option<Result<(), Arc<str>>>;

/// Who takes the response of a pending request.
#[derive(Debug)]
pub(super) enum Waiting {
    /// A [`ResponseFuture`], with its waker once it has been polled.
    Requester(Option<Waker>),
    /// Nobody: a [`PacketConnection::push`]. The response is discarded (a
    /// failure is counted).
    Detached,
    /// The [`Pipeline`](super::Pipeline) in this slot of
    /// [`State::pipelines`].
    Pipeline(usize),
}

impl super::Waiter for Waiting {}

/// Where a connection's close stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Not closing.
    No,
    /// Closing; its time limits start when the driver first waits (see
    /// `Driver::arm_close_deadlines`).
    Started,
    /// Closing, against its time limits.
    Timed,
}

/// Who will take the response of a request being queued.
#[derive(Debug, Clone, Copy)]
pub(super) enum Taker {
    /// A [`ResponseFuture`].
    Future,
    /// Nobody (a push).
    Nobody,
    /// The pipeline in this slot.
    Pipeline(usize),
}

/// What requesters and the connection task share.
pub(super) struct State {
    /// Tags, the pending table (each entry: who takes the response), ERQ.
    proto: Protocol<Waiting>,
    /// Requests (and ERQ) encoded by requesters, not yet taken by the task.
    out: Outgoing,
    /// Results that arrived, until their requester takes them.
    done: TagTable<Result<Response, PacketError>>,
    /// Set while the task is idle: whoever gives it work wakes it.
    driver_waker: Option<Waker>,
    close_requested: bool,
    /// Set when the connection task has finished.
    outcome: Outcome,
    /// Set once no response can come any more: new requests fail with it.
    ended: Option<Arc<str>>,
    /// A requester waits for room (in `out` or in the pending table).
    space_waiters: bool,
    /// The pipelines' shared halves, by slot (a freed slot is reused).
    pub(super) pipelines: Vec<Option<PipeSlot>>,
}

/// The half of a [`Pipeline`](super::Pipeline) that the connection task
/// fills.
#[derive(Debug, Default)]
pub(super) struct PipeSlot {
    /// Results that arrived, in arrival order, with their tags.
    pub(super) ready: std::collections::VecDeque<(u64, Result<Response, PacketError>)>,
    /// The pipeline's waker while it waits for `ready`.
    pub(super) waker: Option<Waker>,
    /// Its requests still pending on the wire.
    pub(super) pending: usize,
    /// The pipeline was dropped: its late responses are discarded, and the
    /// slot is freed when the last one is in.
    pub(super) dropped: bool,
}

impl State {
    /// Hands a result to the pipeline in `slot`; returns the waker to wake.
    fn deliver(
        &mut self,
        slot: usize,
        tag: u64,
        result: Result<Response, PacketError>,
    ) -> Option<Waker> {
        let Some(Some(p)) = self.pipelines.get_mut(slot) else {
            return None;
        };
        p.pending -= 1;
        if p.dropped {
            self.proto.note_cancelled();
            if p.pending == 0 {
                self.pipelines[slot] = None;
            }
            return None;
        }
        p.ready.push_back((tag, result));
        p.waker.take()
    }
}

pub(super) struct Shared {
    state: Mutex<State>,
    space: Notify,
    /// Wakes [`PacketConnection::closed`] when the task finishes. (A watch
    /// channel did this at 300-odd bytes a connection: it keeps 8 Notify.)
    ended: Notify,
    stats: Arc<Stats>,
    handles: AtomicUsize,
    pub(super) max_body_len: usize,
    max_pending: usize,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves consistent data: go on
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_driver(&self, mut st: MutexGuard<'_, State>) {
        let waker = st.driver_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A packet connection: either end may send requests, many in flight,
/// answered in completion order.
///
/// Cloning gives another handle on the same connection. When every handle
/// is dropped the connection closes in order, as [`close`](Self::close)
/// does (but nobody waits for it).
///
/// ```
/// # async fn run() -> Result<(), tether::packet::PacketError> {
/// use tether::packet::{EchoService, NoHandler, PacketConfig, PacketConnection};
/// use tether::transport::memory_pair;
///
/// let (a, b) = memory_pair(64 * 1024);
/// let server = PacketConnection::spawn(b, EchoService, PacketConfig::default());
/// let client = PacketConnection::spawn(a, NoHandler, PacketConfig::default());
/// // on the wire: 08 02 02 02 68 65 6c 6c 6f (tag 2, rq_type 1, "hello")
/// let r = client.submit(1, 0, "hello").await?;
/// // back: 07 02 04 6f 6c 6c 65 68 (ok, tag 2, flags 0, "olleh")
/// assert!(r.ok);
/// assert_eq!(&r.payload[..], b"olleh");
/// client.close().await?;
/// server.closed().await?;
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct PacketConnection {
    pub(super) shared: Arc<Shared>,
}

impl Clone for PacketConnection {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        PacketConnection {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for PacketConnection {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut st = self.shared.lock();
            st.close_requested = true;
            self.shared.wake_driver(st);
        }
    }
}

impl std::fmt::Debug for PacketConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketConnection")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PacketConnection {
    /// Starts a connection over `io` on the current tokio runtime; `handler`
    /// answers the peer's requests ([`NoHandler`] to serve
    /// nothing).
    pub fn spawn<S, H>(io: S, handler: H, config: PacketConfig) -> PacketConnection
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        H: Handler,
    {
        Self::spawn_named(io, handler, config, "-")
    }

    /// [`spawn`](Self::spawn), the task's span naming `peer`: formatted
    /// only if a subscriber records the span (a socket address formatted
    /// at every connect and accept cost 7% of a W2 exchange's
    /// instructions).
    pub(super) fn spawn_named<S, H>(
        io: S,
        handler: H,
        config: PacketConfig,
        peer: impl std::fmt::Display,
    ) -> PacketConnection
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        H: Handler,
    {
        let mut config = config;
        config.max_handlers = config.max_handlers.max(1);
        let proto = Protocol::new();
        let stats = proto.stats().clone();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                proto,
                out: Outgoing::default(),
                done: TagTable::default(),
                driver_waker: None,
                close_requested: false,
                outcome: None,
                ended: None,
                space_waiters: false,
                pipelines: Vec::new(),
            }),
            space: Notify::new(),
            ended: Notify::new(),
            stats,
            handles: AtomicUsize::new(1),
            max_body_len: config.max_body_len,
            max_pending: config.max_pending.max(1),
        });
        let driver = Driver {
            io,
            rbuf: ReadBuf::default(),
            chunk: Bytes::new(),
            chunk_pos: 0,
            wbuf: Outgoing::default(),
            codec: PacketCodec::with_max_body_len(config.max_body_len),
            shared: shared.clone(),
            handler,
            running: RunningSet::default(),
            slot: Box::pin(None),
            completed: Vec::new(),
            answered: Vec::new(),
            incoming: Vec::new(),
            batch: Batch::START,
            to_wake: Vec::new(),
            read_open: true,
            closing: Closing::No,
            eof_sent: false,
            shutdown_done: false,
            needs_flush: false,
            read_would_block: false,
            stream_ended: false,
            peer_waiting: false,
            handler_deadline: None,
            scratch: None,
            final_deadline: None,
            failure: None,
            unclean: None,
            config,
        };
        let span = tracing::debug_span!("packet_connection", peer = %peer);
        tokio::spawn(driver.instrument(span));
        PacketConnection { shared }
    }

    /// Connects to `endpoint` (any transport) and starts a connection.
    pub async fn connect<H: Handler>(
        endpoint: &Endpoint,
        timeout: Duration,
        handler: H,
        config: PacketConfig,
    ) -> Result<PacketConnection, PacketError> {
        let stream = transport::connect(endpoint, timeout).await?;
        let peer = stream.peer();
        Ok(Self::spawn_named(stream, handler, config, peer))
    }

    /// Connects to `endpoint` with `options` (the timeout, and for
    /// `tls://` which servers to trust) and starts a connection.
    pub async fn connect_with<H: Handler>(
        endpoint: &Endpoint,
        options: &ConnectOptions,
        handler: H,
        config: PacketConfig,
    ) -> Result<PacketConnection, PacketError> {
        let stream = transport::connect_with(endpoint, options).await?;
        let peer = stream.peer();
        Ok(Self::spawn_named(stream, handler, config, peer))
    }

    /// Sends a request on channel 0; the returned future resolves to its
    /// response.
    ///
    /// The request is queued at once, in call order (before the future is
    /// first polled), unless 64 KiB of requests are already waiting to be
    /// written or [`PacketConfig::max_pending`] are in flight: then the
    /// future queues it when there is room.
    ///
    /// A failure response is `Ok(Response { ok: false, .. })`; `Err` means
    /// no response will come (connection ended, requests ended, the request
    /// cannot be encoded). Dropping the future cancels the request locally:
    /// its late response is discarded.
    pub fn submit(&self, rq_type: u64, flags: u64, payload: impl Into<Bytes>) -> ResponseFuture {
        self.submit_on(0, rq_type, flags, payload)
    }

    /// Sends a request on `channel` (see [`submit`](Self::submit)). tether
    /// (and the reference) answer requests on channels other than 0 with a
    /// failure `unknown channel`; this is for peers that give channels a
    /// meaning.
    pub fn submit_on(
        &self,
        channel: u64,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> ResponseFuture {
        self.response_future::<KEEP_OPEN>(channel, rq_type, flags, payload.into())
    }

    /// Queues a request (see [`enqueue`]) and returns the future of its
    /// response: [`submit_on`](Self::submit_on)'s, and with `CLOSE_AFTER`
    /// [`submit_and_close`](Self::submit_and_close)'s.
    #[inline(always)] // on every request's path, as enqueue is
    fn response_future<const CLOSE_AFTER: bool>(
        &self,
        channel: u64,
        rq_type: u64,
        flags: u64,
        payload: Bytes,
    ) -> ResponseFuture {
        let state = match enqueue::<CLOSE_AFTER>(
            &self.shared,
            channel,
            rq_type,
            flags,
            payload,
            Taker::Future,
        ) {
            Ok(Enqueued::Now(tag)) => RfState::Waiting((channel, tag)),
            Ok(Enqueued::Later(wait)) => RfState::Queued(channel, wait),
            Err(e) => RfState::Failed(Some(e)),
        };
        ResponseFuture {
            shared: self.shared.clone(),
            state,
        }
    }

    /// Sends a typed request and decodes its response. A failure response
    /// is [`PacketError::Failed`].
    pub async fn request<R: TypedRequest>(&self, request: &R) -> Result<R::Response, PacketError> {
        let (flags, payload) = request.encode();
        let r = self.submit(R::RQ_TYPE, flags, payload).await?;
        if !r.ok {
            return Err(PacketError::Failed {
                flags: r.flags,
                payload: r.payload,
            });
        }
        R::decode_response(r.flags, r.payload).map_err(PacketError::BadResponse)
    }

    /// Pushes a message to the peer: a request on channel 0 whose response
    /// nobody awaits. Resolves once the request is queued: at once, unless
    /// 64 KiB are already waiting to be written or
    /// [`PacketConfig::max_pending`] requests are in flight; then when
    /// there is room, so a loop of pushes goes at the pace of the peer.
    ///
    /// The wire has no one-way message, so a push is an ordinary request
    /// that the peer's handler answers (an empty `ok` response is the
    /// cheapest answer); the response is read and discarded here, a
    /// failure response counted in [`StatsSnapshot::push_failures`]. `Ok`
    /// means queued, not delivered: use [`submit`](Self::submit) when the
    /// answer matters. A push costs less than a `submit`: no future to
    /// poll, no result to hand over, no wake-up.
    ///
    /// Errors: [`PacketError::RequestsEnded`] after
    /// [`end_requests`](Self::end_requests) or
    /// [`close`](Self::close), [`PacketError::ConnectionEnded`] once the
    /// connection has ended, and the checks of `submit`.
    ///
    /// ```
    /// # async fn run() -> Result<(), tether::packet::PacketError> {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use tether::packet::{handler_fn, IncomingRequest, NoHandler, PacketConfig, PacketConnection, Response};
    /// use tether::transport::memory_pair;
    ///
    /// let (a, b) = memory_pair(64 * 1024);
    /// let server = PacketConnection::spawn(a, NoHandler, PacketConfig::default());
    /// // the client counts what it is sent and acknowledges it with an empty response
    /// let received = Arc::new(AtomicU64::new(0));
    /// let count = received.clone();
    /// let client = PacketConnection::spawn(
    ///     b,
    ///     handler_fn(move |_rq: IncomingRequest| {
    ///         count.fetch_add(1, Ordering::Relaxed);
    ///         std::future::ready(Response::ok(0, ""))
    ///     }),
    ///     PacketConfig::default(),
    /// );
    /// for i in 0..1000u32 {
    ///     server.push(5, 0, i.to_string()).await?;
    /// }
    /// server.close().await?; // the pushes are answered before the peer's EOF
    /// assert_eq!(received.load(Ordering::Relaxed), 1000);
    /// assert_eq!(server.stats().push_failures, 0);
    /// # client.closed().await?;
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn push(
        &self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<(), PacketError> {
        let payload = payload.into();
        if let Enqueued::Later(wait) =
            enqueue::<KEEP_OPEN>(&self.shared, 0, rq_type, flags, payload, Taker::Nobody)?
        {
            wait.await?;
        }
        Ok(())
    }

    /// Sends ERQ (`03 01 02 00`): this end will send no more requests
    /// (later `submit`s fail with [`PacketError::RequestsEnded`]); the
    /// peer's requests are still served and responses still arrive.
    pub async fn end_requests(&self) -> Result<(), PacketError> {
        let mut st = self.shared.lock();
        if let Some(reason) = &st.ended {
            return Err(PacketError::ConnectionEnded(reason.clone()));
        }
        if st.proto.end_requests() {
            let _ = Packet::Erq.encode(st.out.buf_mut());
        }
        self.shared.wake_driver(st);
        Ok(())
    }

    /// Closes in order: ERQ; running handlers finish (up to
    /// [`PacketConfig::close_timeout`]) and their responses are sent; EOF
    /// (`03 00 02 00`); then read until the peer's EOF or end of stream (up
    /// to [`PacketConfig::eof_timeout`]). Requests still pending then
    /// resolve with [`PacketError::ConnectionEnded`].
    ///
    /// Returns `Ok` after an orderly end, or the reason it was not.
    pub async fn close(&self) -> Result<(), PacketError> {
        {
            let mut st = self.shared.lock();
            st.close_requested = true;
            self.shared.wake_driver(st);
        }
        self.closed().await
    }

    /// Sends a last request on channel 0 and closes: the close is asked for
    /// under the lock that queues the request, so the request, ERQ and EOF
    /// leave in one write (when no handler of this end is still running,
    /// which holds EOF back, and the socket takes the bytes whole), and
    /// asking and closing take one round trip between them instead of two.
    /// Returns the response, which the peer sends before its own EOF.
    ///
    /// ```text
    /// this end   05 02 02 02 68 69   request: tag 2, rq_type 1, "hi"
    ///            03 01 02 00         ERQ
    ///            03 00 02 00         EOF                      (one write)
    /// peer       04 02 04 69 68      response: tag 2, ok, "ih"
    ///            03 01 02 00         ERQ (sent before the response or after)
    ///            03 00 02 00         EOF
    /// ```
    ///
    /// The response counts: once it has arrived it is returned even if the
    /// close that follows is not orderly (the peer cut the stream instead of
    /// sending EOF, say), which is logged. Without one, the error says why
    /// the connection ended. A request refused before it is queued (too
    /// large, requests ended, connection ended) returns its error at once
    /// and leaves the connection as it was; one that waits for room in a
    /// full queue goes out before the close.
    ///
    /// ```no_run
    /// # async fn run(conn: tether::packet::PacketConnection) -> Result<(), tether::packet::PacketError> {
    /// let r = conn.submit_and_close(1, 0, "hi").await?;
    /// assert!(r.ok && conn.is_closed());
    /// # Ok(()) }
    /// ```
    pub async fn submit_and_close(
        &self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Response, PacketError> {
        // the close is asked for under the lock that queues the request
        // (after waiting for room, if the queue is full): the driver, woken
        // once, finds both; a request refused is not queued, and nothing
        // is closed
        let response = self
            .response_future::<THEN_CLOSE>(0, rq_type, flags, payload.into())
            .await?;
        // the peer answers before its EOF: what is left is the close
        if let Err(e) = self.closed().await {
            tracing::debug!(error = %e, "answered, then the close was not orderly");
        }
        Ok(response)
    }

    /// The sessionless mode: connects to `endpoint`, sends one request on
    /// channel 0 with EOF behind it, and returns the response (see
    /// [`submit_and_close`](Self::submit_and_close)). The connection serves
    /// nothing and has the default [`PacketConfig`], whose close limits
    /// bound the wait: a peer that has not answered and sent its EOF
    /// within `close_timeout + eof_timeout` (10 s) ends the connection, and
    /// the error says so. For other limits, connect with
    /// [`connect_with`](Self::connect_with) and call `submit_and_close`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tether::packet::PacketConnection;
    /// use tether::transport::ConnectOptions;
    ///
    /// let endpoint = "tcp://127.0.0.1:7000".parse()?;
    /// let options = ConnectOptions::new(std::time::Duration::from_secs(2));
    /// let r = PacketConnection::request_once(&endpoint, &options, 1, 0, "hello").await?;
    /// assert_eq!(&r.payload[..], b"olleh"); // rq_type 1 of `tether serve packet`
    /// # Ok(()) }
    /// ```
    pub async fn request_once(
        endpoint: &Endpoint,
        options: &ConnectOptions,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Response, PacketError> {
        let conn =
            Self::connect_with(endpoint, options, NoHandler, PacketConfig::default()).await?;
        conn.submit_and_close(rq_type, flags, payload).await
    }

    /// Waits until the connection has ended (closed by either side or
    /// failed); `Ok` after an orderly end.
    pub async fn closed(&self) -> Result<(), PacketError> {
        loop {
            let notified = self.shared.ended.notified();
            tokio::pin!(notified);
            // registered before looking, so an end in between still wakes us
            notified.as_mut().enable();
            match self.shared.lock().outcome.clone() {
                Some(Ok(())) => return Ok(()),
                Some(Err(reason)) => return Err(PacketError::ConnectionEnded(reason)),
                None => {}
            }
            notified.await;
        }
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().outcome.is_some()
    }

    /// The connection's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

fn unknown_response(channel: u64, tag: u64) {
    tracing::debug!(
        channel,
        tag,
        "response for a request that is not pending: ignored"
    );
}

/// How [`enqueue`] left a request.
pub(super) enum Enqueued {
    /// Queued at once under this tag (the usual case).
    Now(u64),
    /// Not queued for want of room: this future waits for room, queues the
    /// request and resolves to its tag.
    Later(WaitForRoom),
}

/// A request waiting for room in the queue (see [`Enqueued::Later`]).
pub(super) type WaitForRoom = Pin<Box<dyn Future<Output = Result<u64, PacketError>> + Send>>;

/// [`enqueue`]'s `CLOSE_AFTER`: the request only.
pub(super) const KEEP_OPEN: bool = false;
/// [`enqueue`]'s `CLOSE_AFTER`: the connection closes behind this last
/// request, asked for under the lock that queues it, so that the driver
/// takes both at once ([`PacketConnection::submit_and_close`]). A constant,
/// so that the other ways in, on every request's path, compile as if it
/// were not there.
pub(super) const THEN_CLOSE: bool = true;

/// Submits a request: checks it, then queues it if there is room, or else
/// returns the future that will (every way in takes this one path).
#[inline(always)] // see try_enqueue
pub(super) fn enqueue<const CLOSE_AFTER: bool>(
    shared: &Arc<Shared>,
    channel: u64,
    rq_type: u64,
    flags: u64,
    payload: Bytes,
    taker: Taker,
) -> Result<Enqueued, PacketError> {
    check_request(channel, rq_type, flags, payload.len(), shared.max_body_len)?;
    match try_enqueue::<CLOSE_AFTER>(shared, channel, rq_type, flags, &payload, taker)? {
        Some(tag) => Ok(Enqueued::Now(tag)),
        None => Ok(Enqueued::Later(wait_for_room::<CLOSE_AFTER>(
            shared, channel, rq_type, flags, payload, taker,
        ))),
    }
}

/// Queues a request if there is room: `Ok(None)` if there is not.
// always inlined, like the driver's hot helpers below: #[inline] left
// them calls, their arguments and results moved through memory (W3
// measured each of these worth 10 to 55 instructions a request)
#[inline(always)]
fn try_enqueue<const CLOSE_AFTER: bool>(
    shared: &Shared,
    channel: u64,
    rq_type: u64,
    flags: u64,
    payload: &Bytes,
    taker: Taker,
) -> Result<Option<u64>, PacketError> {
    let mut st = shared.lock();
    if let Some(reason) = &st.ended {
        return Err(PacketError::ConnectionEnded(reason.clone()));
    }
    if st.out.len() >= WRITE_HIGH_WATER || st.proto.pending() >= shared.max_pending {
        return Ok(None);
    }
    let waiting = match taker {
        Taker::Future => Waiting::Requester(None),
        Taker::Nobody => Waiting::Detached,
        Taker::Pipeline(slot) => Waiting::Pipeline(slot),
    };
    let tag = st
        .proto
        .start_request(channel, waiting)
        .map_err(|(e, _)| e)?;
    if let Taker::Pipeline(slot) = taker {
        if let Some(Some(p)) = st.pipelines.get_mut(slot) {
            p.pending += 1;
        }
    }
    // validated by check_request: cannot fail
    let _ = st.out.request(channel, tag, rq_type, flags, payload);
    if CLOSE_AFTER {
        st.close_requested = true;
    }
    shared.wake_driver(st);
    Ok(Some(tag))
}

/// The future that waits for room, then queues the request: the slow
/// path of [`enqueue`], boxed and cold so that the fast path it is inlined
/// into stays small (built inline, it left `push` ~80 instructions a
/// message slower).
#[cold]
fn wait_for_room<const CLOSE_AFTER: bool>(
    shared: &Arc<Shared>,
    channel: u64,
    rq_type: u64,
    flags: u64,
    payload: Bytes,
    taker: Taker,
) -> WaitForRoom {
    let shared = shared.clone();
    Box::pin(async move {
        loop {
            let notified = shared.space.notified();
            let mut notified = std::pin::pin!(notified);
            {
                let mut st = shared.lock();
                st.space_waiters = true;
                notified.as_mut().enable();
            }
            if let Some(tag) =
                try_enqueue::<CLOSE_AFTER>(&shared, channel, rq_type, flags, &payload, taker)?
            {
                return Ok(tag);
            }
            notified.await;
        }
    })
}

/// The response to one request (see [`PacketConnection::submit`]).
///
/// Dropping it before it resolves cancels the request locally: the
/// pending entry is removed at once, and a late response is discarded
/// (counted in [`StatsSnapshot::unknown_responses`]).
#[must_use = "a request is cancelled when its ResponseFuture is dropped"]
pub struct ResponseFuture {
    shared: Arc<Shared>,
    state: RfState,
}

enum RfState {
    /// Queued on the wire under this (channel, tag).
    Waiting(Key),
    /// Waiting for room in the queue.
    Queued(u64, WaitForRoom),
    Failed(Option<PacketError>),
    Done,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            RfState::Waiting(key) => format!("waiting for {key:?}"),
            RfState::Queued(..) => "waiting for room".to_string(),
            RfState::Failed(_) => "failed".to_string(),
            RfState::Done => "done".to_string(),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, PacketError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                RfState::Waiting(key) => {
                    let key = *key;
                    let mut st = this.shared.lock();
                    // still pending (the first poll, usually): only the
                    // waker to store; the result table is looked at once,
                    // when the entry is gone (the task moves a result
                    // from one to the other under this lock)
                    if let Some(Waiting::Requester(slot)) = st.proto.waiter_mut(key.0, key.1) {
                        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            *slot = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    let result = st.done.remove(key).unwrap_or_else(|| {
                        let reason = st
                            .ended
                            .clone()
                            .unwrap_or_else(|| Arc::from("connection closed"));
                        Err(PacketError::ConnectionEnded(reason))
                    });
                    drop(st);
                    this.state = RfState::Done;
                    return Poll::Ready(result);
                }
                RfState::Queued(channel, fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(tag)) => this.state = RfState::Waiting((*channel, tag)),
                    Poll::Ready(Err(e)) => {
                        this.state = RfState::Done;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                RfState::Failed(e) => {
                    let e = e
                        .take()
                        .unwrap_or_else(|| PacketError::ended("polled after completion"));
                    this.state = RfState::Done;
                    return Poll::Ready(Err(e));
                }
                RfState::Done => {
                    return Poll::Ready(Err(PacketError::ended("polled after completion")))
                }
            }
        }
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if let RfState::Waiting(key) = self.state {
            let mut st = self.shared.lock();
            // A request given up frees its place among `max_pending`: one
            // waiting for room must hear of it now, not when the peer next
            // sends something (never, if the peer is why this gave up).
            let freed = st.proto.cancel(key.0, key.1).is_some();
            let wake = freed && std::mem::take(&mut st.space_waiters);
            st.done.remove(key);
            drop(st);
            if wake {
                self.shared.space.notify_waiters();
            }
        }
    }
}

fn check_request(
    channel: u64,
    rq_type: u64,
    flags: u64,
    payload_len: usize,
    max: usize,
) -> Result<(), PacketError> {
    if rq_type > MAX_RQ_TYPE {
        return Err(PacketError::OutOfRange("rq_type u64::MAX"));
    }
    if flags > MAX_REQUEST_FLAGS {
        return Err(PacketError::OutOfRange("request flags wider than 62 bits"));
    }
    // tag, header and rq_type take at most 30 bytes, a channel other than
    // 0 up to 10 more: with the payload, at most `max` (the peer's limit
    // too, where a longer body would end the connection)
    let around = if channel == 0 { 30 } else { 40 };
    if payload_len.saturating_add(around) > max {
        return Err(PacketError::TooLarge {
            len: (payload_len as u64).saturating_add(around as u64),
            max,
        });
    }
    Ok(())
}

/// A handler future pinned in its own box, so it can be polled once in
/// place and move to the running set only if it did not finish.
type Slot<F> = Pin<Box<Option<F>>>;

/// A running handler, in its own `packet_request` span, with its key.
/// Resolves to the key and the response, or the panic's payload.
struct Running<F> {
    fut: Slot<F>,
    key: Key,
    span: tracing::Span,
}

type Panic = Box<dyn std::any::Any + Send>;

/// The handlers still running after their first poll. Most answer at once,
/// so the set (two allocations even when empty) is made only when one does
/// not, and dropped when the connection goes idle.
struct RunningSet<F>(Option<FuturesUnordered<Running<F>>>);

impl<F> Default for RunningSet<F> {
    fn default() -> Self {
        RunningSet(None)
    }
}

impl<F: Future<Output = Response>> RunningSet<F> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, running: Running<F>) {
        self.0
            .get_or_insert_with(FuturesUnordered::new)
            .push(running);
    }

    fn poll_next_unpin(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(Key, Result<Response, Panic>)>> {
        match &mut self.0 {
            Some(set) => set.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }

    /// Drops every handler still running.
    fn clear(&mut self) {
        self.0 = None;
    }
}

impl<F: Future<Output = Response>> Future for Running<F> {
    type Output = (Key, Result<Response, Panic>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let fut = &mut this.fut;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            fut.as_mut().as_pin_mut().map(|f| f.poll(cx))
        }));
        let outcome = match polled {
            Ok(Some(Poll::Pending)) => return Poll::Pending,
            Ok(Some(Poll::Ready(response))) => Ok(response),
            Ok(None) => Ok(Response::fail(HANDLER_FAILED)), // polled after completion
            Err(panic) => Err(panic),
        };
        this.fut.as_mut().set(None);
        Poll::Ready((this.key, outcome))
    }
}

/// The peer's requests that arrived while `max_handlers` handlers ran:
/// admitted (registered as being handled), and started in order of arrival
/// as handlers finish. Decoding goes on past them, so that the answers to
/// this end's own requests still come in (a running handler may be
/// awaiting one, over its own connection), until they hold
/// [`PARKED_AT_MOST`] bytes. They live in the connection's [`Scratch`]
/// set: only a connection with work has any, and an idle one keeps no room
/// for them.
#[derive(Debug, Default)]
pub(super) struct Parked {
    requests: VecDeque<IncomingRequest>,
    /// Their payloads' bytes, and [`PARKED_OVERHEAD`] for each.
    bytes: usize,
}

/// What a parked request counts for beside its payload.
const PARKED_OVERHEAD: usize = std::mem::size_of::<IncomingRequest>();

impl Parked {
    fn is_full(&self) -> bool {
        self.bytes >= PARKED_AT_MOST
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    fn push(&mut self, rq: IncomingRequest) {
        self.bytes += rq.payload.len() + PARKED_OVERHEAD;
        self.requests.push_back(rq);
    }

    /// Moves the first `n` (at most) into `to`; how many.
    fn start(&mut self, n: usize, to: &mut Vec<IncomingRequest>) -> usize {
        let n = n.min(self.requests.len());
        for rq in self.requests.drain(..n) {
            self.bytes -= rq.payload.len() + PARKED_OVERHEAD;
            to.push(rq);
        }
        n
    }

    /// Lets go of a queue grown by a flood (64 requests' room is kept).
    pub(super) fn release_if_grown(&mut self) {
        if self.requests.capacity() > 64 {
            self.requests = VecDeque::new();
        }
    }

    /// Forgets them all; how many there were.
    pub(super) fn clear(&mut self) -> usize {
        self.bytes = 0;
        let n = self.requests.len();
        self.requests.clear();
        n
    }
}

struct Driver<S, H: Handler> {
    io: S,
    rbuf: ReadBuf,
    /// Whole packets split off `rbuf` at once, decoded from `chunk_pos` on.
    chunk: Bytes,
    chunk_pos: usize,
    wbuf: Outgoing,
    codec: PacketCodec,
    shared: Arc<Shared>,
    handler: H,
    running: RunningSet<H::Future>,
    /// Where the next handler future is polled first (reused while
    /// handlers finish at once).
    slot: Slot<H::Future>,
    /// Handler results collected before taking the lock (reused).
    completed: Vec<(Key, Response)>,
    /// The peer's requests answered at once, whose tags are released
    /// under the lock after the batch, or, for a batch admitted without
    /// registering (`batch` not registered), those still running,
    /// registered then (reused).
    answered: Vec<Key>,
    /// The peer's requests decoded under the lock, run after it (reused).
    incoming: Vec<IncomingRequest>,
    /// Whether the requests in `incoming` are registered as being handled
    /// (see `Protocol::admit_in_batch`).
    batch: Batch,
    /// Requesters to wake after releasing the lock (reused).
    to_wake: Vec<Waker>,
    config: PacketConfig,
    /// False after the peer's EOF, end of stream, or a failure.
    read_open: bool,
    closing: Closing,
    eof_sent: bool,
    shutdown_done: bool,
    needs_flush: bool,
    /// A read in this poll found nothing and registered the task's waker:
    /// the later rounds of the same poll need not ask the socket again
    /// (each ask costs about as much as decoding a packet).
    read_would_block: bool,
    /// The stream ended (a read returned 0). Packets read ahead are
    /// decoded first, as the writer makes room; then the end is handled.
    stream_ended: bool,
    /// Bytes of the peer's (whole packets or part of one) were read ahead
    /// while writes were behind and wait to be decoded: this end's new
    /// requests, and its EOF, wait behind them, so that each end serves
    /// the other first. Meaningful only while `read_open`.
    peer_waiting: bool,
    handler_deadline: Option<Pin<Box<Sleep>>>,
    /// While the buffers are borrowed from the thread's pool (see
    /// `adopt_scratch`): the box they go back in.
    scratch: Option<Box<Scratch>>,
    final_deadline: Option<Pin<Box<Sleep>>>,
    /// Why the connection ended, if it failed (ends the task at once).
    failure: Option<Arc<str>>,
    /// Why the end was not orderly, when the task could still close in
    /// order (end of stream without EOF, cut mid-packet).
    unclean: Option<Arc<str>>,
}

impl<S, H: Handler> Drop for Driver<S, H> {
    /// A task dropped before it finished (its runtime shut down, or it
    /// panicked) still resolves every pending request.
    fn drop(&mut self) {
        if self.shared.lock().outcome.is_none() {
            self.failure
                .get_or_insert_with(|| Arc::from("connection task stopped"));
            self.finish();
        }
    }
}

impl<S, H: Handler> Driver<S, H> {
    /// Exchanges the driver's working buffers with `s`'s.
    fn swap_buffers(&mut self, s: &mut Scratch) {
        std::mem::swap(&mut self.rbuf, &mut s.rbuf);
        std::mem::swap(&mut self.wbuf, &mut s.wbuf);
        std::mem::swap(&mut self.incoming, &mut s.incoming);
        std::mem::swap(&mut self.completed, &mut s.completed);
        std::mem::swap(&mut self.answered, &mut s.answered);
        std::mem::swap(&mut self.to_wake, &mut s.to_wake);
    }

    /// Gives the buffers back to the thread if nothing is left in them, so
    /// that an idle connection holds none.
    fn release_scratch(&mut self) {
        let Some(mut s) = self.scratch.take() else {
            return;
        };
        self.swap_buffers(&mut s);
        self.chunk = Bytes::new();
        self.chunk_pos = 0;
        self.running.clear();
        s.give_back();
    }

    /// Resolves every pending request with a connection-ended error.
    fn fail_pending(&mut self, st: &mut State, reason: &Arc<str>) {
        for (key, waiting) in st.proto.take_pending() {
            let error = PacketError::ConnectionEnded(reason.clone());
            match waiting {
                Waiting::Requester(waker) => {
                    st.done.insert(key, Err(error));
                    self.to_wake.extend(waker);
                }
                Waiting::Pipeline(slot) => self.to_wake.extend(st.deliver(slot, key.1, Err(error))),
                Waiting::Detached => {}
            }
        }
    }

    fn finish(&mut self) {
        if self.shared.lock().outcome.is_some() {
            return;
        }
        let reason: Arc<str> = self
            .failure
            .clone()
            .unwrap_or_else(|| Arc::from("connection closed"));
        self.running.clear();
        if let Some(s) = self.scratch.as_mut() {
            s.parked.clear();
        }
        {
            let shared = self.shared.clone();
            let mut st = shared.lock();
            if st.ended.is_none() || self.failure.is_some() {
                st.ended = Some(reason.clone());
            }
            self.fail_pending(&mut st, &reason);
            st.out.clear();
            st.space_waiters = false;
            st.proto.abandon_handling();
        }
        self.shared.space.notify_waiters();
        for w in self.to_wake.drain(..) {
            w.wake();
        }
        let outcome = match self.failure.as_ref().or(self.unclean.as_ref()) {
            None => Ok(()),
            Some(r) => Err(r.clone()),
        };
        match &outcome {
            Ok(()) => tracing::debug!("connection ended"),
            Err(reason) => tracing::info!(%reason, "connection ended"),
        }
        self.shared.lock().outcome = Some(outcome);
        self.shared.ended.notify_waiters();
        // the buffers go back to the thread, emptied and warm, for its next
        // connection (a connection per request allocated a set each time)
        self.release_scratch();
    }
}

// The driver never pins its fields (handler futures live in the
// FuturesUnordered, which pins them itself), so moving it is fine.
impl<S, H: Handler> Unpin for Driver<S, H> {}

impl<S, H> Future for Driver<S, H>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.scratch.is_none() {
            this.adopt_scratch();
        }
        this.read_would_block = false;
        for _ in 0..MAX_ROUNDS {
            let mut progress = this.take_outgoing();
            progress |= this.poll_handlers(cx);
            progress |= this.poll_read(cx);
            progress |= this.poll_close(cx);
            progress |= this.poll_write(cx);
            if this.failure.is_some() || this.is_done() {
                this.finish();
                return Poll::Ready(());
            }
            if !progress {
                let mut st = this.shared.lock();
                let more = (!st.out.is_empty() && this.takes_requests())
                    || (st.close_requested && this.closing == Closing::No);
                if !more {
                    if !st
                        .driver_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        st.driver_waker = Some(cx.waker().clone());
                    }
                    // Given back even while replies are awaited (keeping
                    // them saved 2% of a W1 round trip, but a connection
                    // waiting on a stalled peer would hold them for ever).
                    drop(st);
                    if this.arm_close_deadlines() {
                        continue; // once more, to register them
                    }
                    if this.scratch_unused() {
                        this.release_scratch();
                    }
                    return Poll::Pending;
                }
            }
        }
        // a close kept busy still runs against its time limits
        this.arm_close_deadlines();
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S, H> Driver<S, H>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Handler,
{
    /// Borrows this thread's warm buffers (see [`super::scratch`]).
    fn adopt_scratch(&mut self) {
        let mut s = Scratch::take();
        self.swap_buffers(&mut s);
        // the emptied box stays here until the buffers go back into it
        self.scratch = Some(s);
    }

    fn scratch_unused(&self) -> bool {
        self.scratch.is_some()
            && self.rbuf.is_empty()
            && self.chunk_pos == self.chunk.len()
            && self.wbuf.is_empty()
            && self.running.is_empty()
            && self.parked().is_empty()
            && self.incoming.is_empty()
            && self.completed.is_empty()
            && self.answered.is_empty()
            && self.to_wake.is_empty()
    }

    /// Whether the requests this end's requesters queued go into the write
    /// buffer now: not while it is full, nor while the peer's packets wait
    /// (each end sending its own requests before serving the other's would
    /// fill both ends' read-ahead, and stall them both). Once the peer's
    /// EOF is read, nothing more of its waits: the close's ERQ and the
    /// requests before it go out.
    #[inline(always)]
    fn takes_requests(&self) -> bool {
        self.wbuf.len() < WRITE_HIGH_WATER && !self.peer_packets_wait()
    }

    /// Whether the peer's bytes, read ahead while writes were behind, are
    /// still to be decoded (none are once its EOF is read).
    #[inline(always)]
    fn peer_packets_wait(&self) -> bool {
        self.peer_waiting && self.read_open
    }

    /// Takes the requests encoded by requesters, and a close request.
    fn take_outgoing(&mut self) -> bool {
        let mut progress = false;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if st.close_requested && self.closing == Closing::No {
            self.start_close(&mut st);
            progress = true;
        }
        if !st.out.is_empty() && self.takes_requests() {
            if self.eof_sent {
                st.out.clear(); // cannot happen: requests end before EOF
            } else {
                self.wbuf.append(&mut st.out);
            }
            progress = true;
        }
        let room = st.out.len() < WRITE_HIGH_WATER && st.proto.pending() < shared.max_pending;
        let notify = st.space_waiters && (room || st.ended.is_some());
        if notify {
            st.space_waiters = false;
        }
        drop(st);
        if notify {
            shared.space.notify_waiters();
        }
        progress
    }

    fn start_close(&mut self, st: &mut State) {
        if self.closing != Closing::No {
            return;
        }
        tracing::debug!("closing");
        self.closing = Closing::Started;
        if st.proto.end_requests() {
            tracing::debug!("sending ERQ");
            let _ = Packet::Erq.encode(st.out.buf_mut());
        }
        // the time limits start when the driver first waits (see
        // `arm_close_deadlines`)
    }

    /// Starts the close's time limits the first time the driver would wait
    /// (or yield) while closing; true if it did. A close that ends within
    /// the poll that began it, as a server's does when the peer's EOF came
    /// right behind its last request, so never registers a timer: tokio
    /// wakes its runtime with a system call for a timer due before any it
    /// has, two per connection in W2.
    fn arm_close_deadlines(&mut self) -> bool {
        if self.closing != Closing::Started {
            return false;
        }
        self.closing = Closing::Timed;
        if !self.eof_sent {
            self.handler_deadline = Some(Box::pin(tokio::time::sleep(self.config.close_timeout)));
        }
        self.final_deadline = Some(Box::pin(tokio::time::sleep(
            self.config.close_timeout + self.config.eof_timeout,
        )));
        true
    }

    fn poll_handlers(&mut self, cx: &mut Context<'_>) -> bool {
        // poll user futures without holding the lock: they may submit
        while !self.running.is_empty() && self.wbuf.len() < WRITE_HIGH_WATER {
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some((key, outcome))) => {
                    let response = outcome.unwrap_or_else(|_| {
                        tracing::error!(channel = key.0, tag = key.1, "request handler panicked");
                        Response::fail(HANDLER_FAILED)
                    });
                    self.completed.push((key, response));
                }
                _ => break,
            }
        }
        // the answers first, then the requests waiting for their slots
        let flushed = self.flush_completed();
        (!self.parked().is_empty() && self.start_parked(cx)) || flushed
    }

    /// Starts the requests waiting for a handler slot, in order, as far as
    /// slots are free (none while the write buffer is full); true if any.
    #[cold]
    fn start_parked(&mut self, cx: &mut Context<'_>) -> bool {
        let free = self.config.max_handlers.saturating_sub(self.running.len());
        if free == 0 || self.wbuf.len() >= WRITE_HIGH_WATER {
            return false;
        }
        let Some(scratch) = self.scratch.as_mut() else {
            return false; // (none are parked: they live there)
        };
        // (`incoming` is empty between batches)
        let n = scratch.parked.start(free, &mut self.incoming);
        self.shared.lock().proto.start_waiting(n);
        self.batch = Batch::Registered; // they were, when parked
        self.dispatch(cx);
        true
    }

    /// The peer's requests waiting for a handler slot (see [`Parked`]).
    fn parked(&self) -> &Parked {
        static NONE: Parked = Parked {
            requests: VecDeque::new(),
            bytes: 0,
        };
        self.scratch.as_ref().map_or(&NONE, |s| &s.parked)
    }

    /// Whether the requests waiting for a handler slot hold all they may.
    fn parked_full(&self) -> bool {
        self.parked().is_full()
    }

    /// Keeps the peer's request waiting for a handler slot (see [`Parked`]).
    #[cold]
    fn park(&mut self, st: &mut State, rq: IncomingRequest) {
        let (channel, tag) = (rq.channel, rq.tag);
        if self.eof_sent {
            // no answer can go out: counted, and released at once
            if st.proto.admit_request(channel, tag).is_ok() {
                st.proto.finish_request(channel, tag);
            }
            return;
        }
        match st.proto.admit_waiting(channel, tag) {
            Ok(()) => {
                // its own copy: a slice of the read buffer would keep the
                // whole allocation it was read into (megabytes, maybe)
                // alive for as long as it waits, where the bound counts
                // only its bytes
                let rq = IncomingRequest {
                    payload: Bytes::copy_from_slice(&rq.payload),
                    ..rq
                };
                // (the set is borrowed while the driver is polled: taking
                // one here is only a fallback)
                let scratch = self.scratch.get_or_insert_with(Scratch::take);
                scratch.parked.push(rq)
            }
            Err(reason) => self.reject(channel, tag, reason),
        }
    }

    /// Encodes the responses in `completed` (one lock for all).
    fn flush_completed(&mut self) -> bool {
        if self.completed.is_empty() {
            return false;
        }
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let mut completed = std::mem::take(&mut self.completed);
        for (key, response) in completed.drain(..) {
            self.respond(&mut st, key, response);
        }
        self.completed = completed;
        true
    }

    /// Starts the handlers of the requests decoded in the last batch,
    /// outside the lock: handler code may submit requests of its own.
    fn dispatch(&mut self, cx: &mut Context<'_>) {
        if self.incoming.is_empty() {
            return;
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut answered = std::mem::take(&mut self.answered);
        let registered = self.batch == Batch::Registered;
        answered.reserve(incoming.len());
        for rq in incoming.drain(..) {
            let key = (rq.channel, rq.tag);
            if let Some(response) = self.start_handler(rq, cx) {
                // encoded at once, straight into the write buffer (it
                // needs no lock); only the tags are released under it
                self.encode_response(key, response);
                if registered {
                    answered.push(key);
                }
            } else if !registered {
                answered.push(key); // still running: registered below
            }
        }
        self.incoming = incoming;
        if !answered.is_empty() {
            let mut st = self.shared.lock();
            for (channel, tag) in answered.drain(..) {
                if registered {
                    st.proto.finish_request(channel, tag);
                } else {
                    st.proto.register_request(channel, tag);
                }
            }
        }
        self.answered = answered;
    }

    /// Runs one request's handler as far as it goes at once: its
    /// [`Handler::handle_now`], else its future polled once, in place. Only
    /// a future still pending joins `running` (no task, no allocation for
    /// a handler that answers at once). A handler that panics fails its
    /// request, as the reference fails a handler that raises; the
    /// connection goes on.
    fn start_handler(&mut self, rq: IncomingRequest, cx: &mut Context<'_>) -> Option<Response> {
        let key = (rq.channel, rq.tag);
        let handler = &self.handler;
        let slot = &mut self.slot;
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let rq = match handler.handle_now(rq) {
                Ok(response) => return Ok(response),
                Err(rq) => rq,
            };
            let span = tracing::debug_span!(
                "packet_request",
                channel = key.0,
                tag = key.1,
                rq_type = rq.rq_type
            );
            let polled = {
                let _entered = span.enter();
                slot.as_mut().set(Some(handler.handle(rq)));
                slot.as_mut().as_pin_mut().map(|f| f.poll(cx))
            };
            match polled {
                Some(Poll::Ready(response)) => {
                    slot.as_mut().set(None);
                    Ok(response)
                }
                _ => Err(span),
            }
        }));
        match started {
            Ok(Ok(response)) => Some(response),
            Ok(Err(span)) => {
                // still running: it moves out with its slot (a new one for the next)
                let fut = std::mem::replace(&mut self.slot, Box::pin(None));
                self.running.push(Running { fut, key, span });
                None
            }
            Err(_) => {
                tracing::error!(channel = key.0, tag = key.1, "request handler panicked");
                // the slot may hold a half-polled future: drop it apart
                let old = std::mem::replace(&mut self.slot, Box::pin(None));
                let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(old)));
                Some(Response::fail(HANDLER_FAILED))
            }
        }
    }

    fn respond(&mut self, st: &mut State, key: Key, r: Response) {
        st.proto.finish_request(key.0, key.1);
        self.encode_response(key, r);
    }

    /// Queues a handler's response for the peer (a failure if it cannot
    /// be encoded); nothing once EOF is sent.
    #[inline(always)] // see try_enqueue
    fn encode_response(&mut self, (channel, tag): Key, r: Response) {
        if self.eof_sent {
            return;
        }
        let too_big = r.payload.len().saturating_add(30) > self.config.max_body_len;
        let res = if too_big {
            Err(PacketError::TooLarge {
                len: r.payload.len() as u64,
                max: self.config.max_body_len,
            })
        } else {
            self.wbuf.response(channel, tag, r.ok, r.flags, r.payload)
        };
        if let Err(e) = res {
            tracing::warn!(channel, tag, error = %e, "handler response cannot be sent; sending a failure");
            let reason = Bytes::from_static(b"response cannot be encoded");
            let _ = self.wbuf.response(channel, tag, false, 0, reason);
        }
    }

    /// The next whole packet received, if any: from the run of whole
    /// packets split off the read buffer at once (`chunk`), refilled when
    /// it runs out.
    #[inline]
    fn next_packet(&mut self) -> Result<Option<Packet>, PacketError> {
        if self.chunk_pos == self.chunk.len() {
            let run = self.codec.whole_packets_len(&self.rbuf)?;
            if run == 0 {
                return Ok(None);
            }
            self.chunk = self.rbuf.split_to(run).freeze();
            self.chunk_pos = 0;
        }
        self.codec
            .decode_whole(&self.chunk, &mut self.chunk_pos)
            .map(Some)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.read_open {
            // decode what is buffered, while there is room to act on it,
            // under one lock for the whole batch (at most max_handlers
            // requests: they run after it)
            let mut whole = false; // no complete packet left to decode
            if !self.rbuf.is_empty() || self.chunk_pos < self.chunk.len() {
                if self.incoming.capacity() == 0 {
                    // given back when idle: sized once per burst, not
                    // regrown from empty a push at a time
                    self.incoming
                        .reserve(BATCH_RESERVE.min(self.config.max_handlers));
                }
                let shared = self.shared.clone();
                let mut st = shared.lock();
                self.batch = Batch::START;
                // a batch takes what the free handler slots can run; with
                // none free, requests wait their turn (see `Parked`) and
                // decoding goes on, up to a bound
                let running = self.running.len();
                let room = if !self.parked().is_empty() || running >= self.config.max_handlers {
                    self.batch = Batch::Parking;
                    usize::MAX
                } else {
                    self.batch = Batch::START;
                    self.config.max_handlers - running
                };
                while self.wbuf.len() < WRITE_HIGH_WATER
                    && self.incoming.len() < room
                    && !(self.batch == Batch::Parking && self.parked_full())
                {
                    match self.next_packet() {
                        Ok(Some(packet)) => {
                            progress = true;
                            self.on_packet(&mut st, packet);
                            if !self.read_open {
                                break;
                            }
                        }
                        Ok(None) => {
                            whole = true;
                            break;
                        }
                        Err(e) => {
                            // the wire's errors say "protocol error" of
                            // themselves; TooLarge, shared with sending, not
                            let reason = match e {
                                PacketError::TooLarge { .. } => format!("protocol error: {e}"),
                                _ => e.to_string(),
                            };
                            tracing::warn!(error = %reason, "closing the connection");
                            self.fail(reason);
                            break;
                        }
                    }
                }
                drop(st);
                if self.chunk_pos == self.chunk.len() {
                    // let the read buffer reuse its storage once the
                    // payloads handed out are dropped
                    self.chunk = Bytes::new();
                    self.chunk_pos = 0;
                }
                for w in self.to_wake.drain(..) {
                    w.wake();
                }
                self.dispatch(cx);
                if !self.read_open {
                    return true;
                }
            }
            let undecoded = self.rbuf.len() + (self.chunk.len() - self.chunk_pos);
            let parked_full = self.parked_full();
            if parked_full {
                if self.wbuf.len() < WRITE_HIGH_WATER {
                    // the writer caught up: nothing holds this end's
                    // requests back (a handler may be waiting on its own)
                    self.peer_waiting = false;
                }
                // Decode nothing more until a handler finishes, but read on
                // a little (as much again as the waiting requests may
                // hold): a peer that goes away while every handler is busy
                // must still be seen going, so that the close and its time
                // limits begin; else the connection waits on its handlers,
                // maybe for ever, holding all this. (One that sends more
                // than that first is seen once a handler finishes.)
                if undecoded >= PARKED_AT_MOST || self.stream_ended {
                    return progress; // woken by a handler
                }
            } else {
                let behind = self.wbuf.len() >= WRITE_HIGH_WATER;
                self.peer_waiting = behind && undecoded > 0;
                if !behind {
                    if !whole && undecoded > 0 {
                        continue; // the batch was full: decode the rest before reading
                    }
                } else {
                    // Take no new work while the peer is slow to read, but go
                    // on reading what it sends, at least a packet's worth: a
                    // peer that also waits for its writes before it reads
                    // (another tether, a 1 MiB echo each way) would otherwise
                    // wait on this end for ever, and this end on it.
                    let read_ahead_full =
                        undecoded >= self.config.max_body_len.max(READ_AHEAD_AT_LEAST);
                    if read_ahead_full || (self.stream_ended && undecoded > 0) {
                        return progress; // woken by the writer
                    }
                }
                if self.stream_ended {
                    // every whole packet read ahead is decoded
                    self.end_of_stream();
                    return true;
                }
            }
            if self.read_would_block {
                return progress;
            }
            // a long packet still arriving gets room for its rest as
            // LengthCodec's frames do (up to four times what has arrived,
            // and 256 KiB, at a time): a few big reads, and no regrowing the
            // buffer 16 KiB at a time
            let ahead = if self.rbuf.is_empty() {
                0
            } else {
                room_ahead(self.rbuf.len(), self.codec.still_missing(&self.rbuf))
            };
            if ahead > READ_CHUNK {
                self.rbuf.reserve(ahead);
            } else {
                self.rbuf.make_room(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut *self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    // the packets read ahead while writes were behind (or
                    // handlers busy) come first (the peer may have
                    // answered, then closed), as the writer makes room (or
                    // a handler finishes); the close starts now, so that
                    // its time limits bound the wait if the peer never
                    // reads (or a handler never ends)
                    progress = true;
                    self.stream_ended = true;
                    if self.peer_waiting || parked_full {
                        let shared = self.shared.clone();
                        self.start_close(&mut shared.lock());
                    }
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "read failed");
                    self.fail(format!("read failed: {e}"));
                    return true;
                }
                Poll::Pending => {
                    self.read_would_block = true;
                    return progress;
                }
            }
        }
        progress
    }

    /// The stream ended without the peer's EOF packet: in the middle of a
    /// packet (the bytes left once every whole one is decoded) or between
    /// two.
    fn end_of_stream(&mut self) {
        let reason = if self.rbuf.is_empty() {
            "end of stream without EOF".to_string()
        } else {
            format!(
                "stream cut mid-packet ({} bytes of an incomplete packet)",
                self.rbuf.len()
            )
        };
        tracing::debug!("{reason}");
        self.unclean = Some(Arc::from(reason.as_str()));
        let shared = self.shared.clone();
        let mut st = shared.lock();
        self.read_ended(&mut st, &reason);
        drop(st);
        for w in self.to_wake.drain(..) {
            w.wake();
        }
    }

    fn on_packet(&mut self, st: &mut State, packet: Packet) {
        // what `Protocol::receive` does, without building and matching an
        // Event around each packet: a response goes straight to its waiter,
        // a request straight to the batch
        match packet {
            Packet::Response {
                channel,
                tag,
                ok,
                flags,
                payload,
            } => match st.proto.take_waiter(channel, tag) {
                Some(waiter) => {
                    let response = Response { ok, flags, payload };
                    self.on_response(st, (channel, tag), waiter, response);
                }
                None => unknown_response(channel, tag),
            },
            // a request goes straight to the batch; most are answered at
            // once, before the next batch, without registering their tags
            Packet::Request {
                channel,
                tag,
                rq_type,
                flags,
                payload,
            } => {
                if self.batch == Batch::Parking {
                    let rq = IncomingRequest {
                        channel,
                        tag,
                        rq_type,
                        flags,
                        payload,
                    };
                    return self.park(st, rq);
                }
                match st
                    .proto
                    .admit_in_batch(&mut self.batch, channel, tag, &self.incoming)
                {
                    Ok(()) if self.eof_sent => {
                        // no response can go out: released at once
                        if self.batch == Batch::Registered {
                            st.proto.finish_request(channel, tag);
                        }
                    }
                    Ok(()) => self.incoming.push(IncomingRequest {
                        channel,
                        tag,
                        rq_type,
                        flags,
                        payload,
                    }),
                    Err(reason) => self.reject(channel, tag, reason),
                }
            }
            Packet::Erq => {
                tracing::debug!("peer sent ERQ");
                st.proto.receive(packet); // notes it
            }
            Packet::Eof => {
                tracing::debug!("peer sent EOF");
                st.proto.receive(packet); // notes it
                self.read_ended(st, "the peer sent EOF");
            }
        }
    }

    /// Answers a request refused without running a handler.
    fn reject(&mut self, channel: u64, tag: u64, reason: &'static str) {
        tracing::debug!(channel, tag, reason, "request refused");
        if !self.eof_sent {
            let reason = Bytes::from_static(reason.as_bytes());
            let _ = self.wbuf.response(channel, tag, false, 0, reason);
        }
    }

    /// Hands a response to whoever waits for it.
    #[inline(always)] // see try_enqueue
    fn on_response(&mut self, st: &mut State, key: Key, waiter: Waiting, response: Response) {
        match waiter {
            Waiting::Requester(waker) => {
                st.done.insert(key, Ok(response));
                self.to_wake.extend(waker);
            }
            Waiting::Detached if !response.ok => {
                let (channel, tag) = key;
                tracing::debug!(channel, tag, reason = ?response.payload, "a push failed");
                st.proto.stats().note_push_failure();
            }
            Waiting::Detached => {}
            Waiting::Pipeline(slot) => self.to_wake.extend(st.deliver(slot, key.1, Ok(response))),
        }
    }

    /// The peer will send nothing more: every pending request fails, new
    /// ones are refused, and this end closes in order.
    fn read_ended(&mut self, st: &mut State, reason: &str) {
        self.read_open = false;
        let reason: Arc<str> = Arc::from(reason);
        st.ended = Some(reason.clone());
        self.fail_pending(st, &reason);
        self.start_close(st);
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closing == Closing::No {
            return false;
        }
        let mut progress = false;
        if !self.eof_sent {
            let deadline_passed = self
                .handler_deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready());
            let handling = !self.running.is_empty() || !self.parked().is_empty();
            if !handling || deadline_passed {
                if handling {
                    let waiting = self.scratch.as_mut().map_or(0, |s| s.parked.clear());
                    tracing::warn!(
                        abandoned = self.running.len(),
                        waiting,
                        "the peer's requests still handled at the close timeout"
                    );
                    self.running.clear();
                    self.shared.lock().proto.abandon_handling();
                }
                // requests queued before the close go out before EOF (once
                // the writer has made room for the last of them)
                self.take_outgoing();
                // nor before the answers to the peer's packets read ahead
                if self.shared.lock().out.is_empty() && !self.peer_packets_wait() {
                    tracing::debug!("sending EOF");
                    let _ = Packet::Eof.encode(self.wbuf.buf_mut());
                    self.eof_sent = true;
                    progress = true;
                }
            }
        }
        if let Some(d) = self.final_deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.final_deadline = None;
                if self.read_open || !self.shutdown_done {
                    tracing::debug!("close timed out");
                    self.read_open = false;
                    self.fail("close timed out: no EOF from the peer".to_string());
                }
                progress = true;
            }
        }
        progress
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.wbuf.is_empty() {
            let written = match self.wbuf.contiguous() {
                Some(bytes) => Pin::new(&mut self.io).poll_write(cx, bytes),
                None => {
                    // a large payload waits beside the buffer, not copied
                    let mut slices = [IoSlice::new(&[]); outgoing::SLICES];
                    let n = self.wbuf.io_slices(&mut slices);
                    Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
                }
            };
            match written {
                Poll::Ready(Ok(0)) => {
                    self.fail("write failed: wrote zero bytes".to_string());
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.needs_flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    self.fail(format!("write failed: {e}"));
                    return true;
                }
                Poll::Pending => return progress,
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => {
                    self.fail(format!("flush failed: {e}"));
                    return true;
                }
                Poll::Pending => return progress,
            }
        }
        if self.eof_sent && !self.shutdown_done {
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(_) => {
                    self.shutdown_done = true;
                    progress = true;
                }
                Poll::Pending => return progress,
            }
        }
        progress
    }

    fn is_done(&self) -> bool {
        self.eof_sent && self.shutdown_done && !self.read_open && self.wbuf.is_empty()
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(Arc::from(reason));
        }
        self.read_open = false;
    }
}
