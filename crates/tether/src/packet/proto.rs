//! The sans-IO protocol core: tags, the pending-request table and what to do
//! with each packet received. No sockets, no clocks, no tasks.
//!
//! The tokio driver ([`PacketConnection`](super::PacketConnection)) is a thin
//! loop around it: it feeds every decoded [`Packet`] to
//! [`Protocol::receive`] and acts on the returned [`Event`].
//!
//! ```
//! use bytes::Bytes;
//! use tether::packet::{Event, Packet, Protocol};
//!
//! let mut proto: Protocol<&str> = Protocol::new();
//! let tag = proto.start_request(0, "waiter").unwrap();
//! assert_eq!(tag, 2); // channel 0 starts at 2: 0 and 1 name EOF and ERQ
//! let response = Packet::Response { channel: 0, tag, ok: true, flags: 0, payload: Bytes::new() };
//! match proto.receive(response) {
//!     Event::Response { waiter, response, .. } => assert!(waiter == "waiter" && response.ok),
//!     _ => unreachable!(),
//! }
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use super::tag_table::TagTable;
use super::wire::{REQUESTS_NOT_ALLOWED, UNKNOWN_CHANNEL};
use super::{Packet, PacketError};

/// The reason a request whose tag is still being handled gets.
pub const DUPLICATE_TAG: &str = "tag already in use";

/// A response: what a request resolves to, and what a handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// True for success; false for a failure response.
    pub ok: bool,
    /// The responder's flags.
    pub flags: u64,
    /// The payload (a failure's reason, for a failure).
    pub payload: Bytes,
}

impl Response {
    /// A success with these flags and payload.
    pub fn ok(flags: u64, payload: impl Into<Bytes>) -> Self {
        Response {
            ok: true,
            flags,
            payload: payload.into(),
        }
    }

    /// A failure (flags 0) with this short ASCII reason.
    pub fn fail(reason: impl Into<Bytes>) -> Self {
        Response {
            ok: false,
            flags: 0,
            payload: reason.into(),
        }
    }
}

/// An incoming request for a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    /// The channel it arrived on.
    pub channel: u64,
    /// The peer's tag.
    pub tag: u64,
    /// The application request type.
    pub rq_type: u64,
    /// The caller's flags.
    pub flags: u64,
    /// The payload.
    pub payload: Bytes,
}

/// What the driver must do about one received packet.
#[derive(Debug)]
pub enum Event<W> {
    /// A response for one of our requests: hand it to its waiter.
    Response {
        /// Channel of the request.
        channel: u64,
        /// Tag of the request.
        tag: u64,
        /// The waiter registered by [`Protocol::start_request`].
        waiter: W,
        /// The response.
        response: Response,
    },
    /// A response for a (channel, tag) that is not pending: ignored (and
    /// counted). Normal after a local cancellation.
    UnknownResponse {
        /// Channel.
        channel: u64,
        /// Tag.
        tag: u64,
    },
    /// A request to run; call [`Protocol::finish_request`] once its
    /// response is queued.
    Request(IncomingRequest),
    /// A request refused: send a failure response with this reason.
    Reject {
        /// Channel of the request.
        channel: u64,
        /// Tag of the request.
        tag: u64,
        /// ASCII reason.
        reason: &'static str,
    },
    /// The peer sent ERQ: it will send no more requests.
    PeerErq,
    /// The peer sent EOF: it will send nothing more. Every pending request
    /// has been handed back through [`Protocol::take_pending`].
    PeerEof,
}

/// Counters a user can read; see [`StatsSnapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    requests_sent: AtomicU64,
    responses_received: AtomicU64,
    requests_received: AtomicU64,
    requests_rejected: AtomicU64,
    unknown_responses: AtomicU64,
    cancelled: AtomicU64,
    in_flight: AtomicU64,
    /// The peer's requests being handled, those waiting for a handler
    /// slot included (the snapshot tells them apart).
    handlers_running: AtomicU64,
    requests_waiting: AtomicU64,
    push_failures: AtomicU64,
}

/// A copy of a connection's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests this end has sent.
    pub requests_sent: u64,
    /// Responses received for pending requests (including cancelled ones).
    pub responses_received: u64,
    /// Requests received from the peer (including rejected ones).
    pub requests_received: u64,
    /// Requests refused with a failure response without running a handler
    /// (after ERQ, unknown channel, duplicate tag).
    pub requests_rejected: u64,
    /// Responses for a (channel, tag) that was not pending: ignored.
    pub unknown_responses: u64,
    /// Requests whose caller gave up (dropped the future) before the response.
    pub cancelled: u64,
    /// Requests sent and not yet answered (including cancelled ones whose
    /// entry is not yet swept).
    pub in_flight: u64,
    /// The peer's requests being handled right now.
    pub handlers_running: u64,
    /// The peer's requests read and waiting for a handler slot, while
    /// [`max_handlers`](super::PacketConfig::max_handlers) run.
    pub requests_waiting: u64,
    /// Failure responses to pushes
    /// ([`PacketConnection::push`](super::PacketConnection::push)), whose
    /// responses nobody awaits.
    pub push_failures: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let handling = self.handlers_running.load(Relaxed);
        let waiting = self.requests_waiting.load(Relaxed).min(handling);
        StatsSnapshot {
            requests_sent: self.requests_sent.load(Relaxed),
            responses_received: self.responses_received.load(Relaxed),
            requests_received: self.requests_received.load(Relaxed),
            requests_rejected: self.requests_rejected.load(Relaxed),
            unknown_responses: self.unknown_responses.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            // `handlers_running` holds every request being handled, those
            // waiting for a handler slot included (no subtraction on the
            // per-request path)
            handlers_running: handling.saturating_sub(waiting),
            requests_waiting: waiting,
            push_failures: self.push_failures.load(Relaxed),
        }
    }

    /// Counts a failure response to a push. Like every counter, written by
    /// one owner at a time (the driver, under its lock).
    pub(crate) fn note_push_failure(&self) {
        bump(&self.push_failures, 1);
    }
}

/// Adds to a counter. Only the protocol (behind `&mut`) writes the
/// counters, so a plain load and store suffice: no locked instruction on
/// the hot path. Readers see a recent value.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Something waiting for a response, that may give up.
pub trait Waiter {
    /// True if nobody wants the response any more.
    fn is_cancelled(&self) -> bool {
        false
    }
}

impl Waiter for &str {}
impl Waiter for u64 {}

impl<T> Waiter for tokio::sync::oneshot::Sender<T> {
    fn is_cancelled(&self) -> bool {
        self.is_closed()
    }
}

/// The hasher of tether's tag tables (FxHash). Tags are small sequential integers chosen by us or the peer;
/// hash flooding only costs the flooder's own connection, and SipHash is
/// several times slower on this hot path.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type Fx = BuildHasherDefault<FxHasher>;

/// Allocates tags per channel, counting up and never reusing one. Channel
/// 0 starts at 2 (0 and 1 name EOF and ERQ); other channels start at 0.
#[derive(Debug, Default)]
pub struct TagAllocator {
    next0: u64,
    next: HashMap<u64, u64, Fx>,
}

impl TagAllocator {
    /// A fresh allocator.
    pub fn new() -> Self {
        TagAllocator {
            next0: 2,
            next: HashMap::default(),
        }
    }

    /// The next tag on `channel`; an error once the tag space is exhausted
    /// (after 2^64 requests, never in practice).
    #[inline]
    pub fn next(&mut self, channel: u64) -> Result<u64, PacketError> {
        // the hot path, inlined into every request: channel 0, far from
        // the end of the tag space (the error is built out of line)
        if channel == 0 && self.next0 < u64::MAX {
            let tag = self.next0;
            self.next0 = tag + 1;
            return Ok(tag);
        }
        self.next_slow(channel)
    }

    #[cold]
    fn next_slow(&mut self, channel: u64) -> Result<u64, PacketError> {
        let slot = if channel == 0 {
            &mut self.next0
        } else {
            self.next.entry(channel).or_insert(0)
        };
        let tag = *slot;
        *slot = tag
            .checked_add(1)
            .ok_or(PacketError::OutOfRange("tag space exhausted"))?;
        Ok(tag)
    }
}

/// Where a batch of the peer's requests admitted by
/// [`Protocol::admit_in_batch`] stands: whether its requests are registered
/// as being handled. The driver that decodes the batch keeps it beside the
/// batch's requests, for as long as it acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batch {
    /// Each tag admitted rose above the one before, up to `last` (`None`
    /// before the first); none is registered.
    Rising { last: Option<u64> },
    /// The batch's requests are registered, as the rest of it will be.
    Registered,
    /// Every handler slot was taken when the batch began (or requests
    /// were waiting for one already): its requests wait their turn,
    /// admitted by [`Protocol::admit_waiting`].
    Parking,
}

impl Batch {
    /// A batch before its first request.
    pub(crate) const START: Batch = Batch::Rising { last: None };
}

/// The protocol state of one connection, sans-IO. `W` is whatever the
/// driver uses to deliver a response to its requester.
#[derive(Debug)]
pub struct Protocol<W> {
    tags: TagAllocator,
    pending: TagTable<W>,
    handling: TagTable<()>,
    local_erq: bool,
    peer_erq: bool,
    peer_eof: bool,
    stats: Arc<Stats>,
}

impl<W> Default for Protocol<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Protocol<W> {
    /// A fresh connection state.
    pub fn new() -> Self {
        Protocol {
            tags: TagAllocator::new(),
            pending: TagTable::default(),
            handling: TagTable::default(),
            local_erq: false,
            peer_erq: false,
            peer_eof: false,
            stats: Arc::default(),
        }
    }

    /// The counters, shared.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Registers a new outgoing request on `channel`; returns its tag.
    ///
    /// Fails after [`Protocol::end_requests`] or the peer's EOF, giving
    /// the waiter back.
    // always: #[inline] left it a call from submit's enqueue
    #[inline(always)]
    pub fn start_request(&mut self, channel: u64, waiter: W) -> Result<u64, (PacketError, W)> {
        if self.local_erq {
            return Err((PacketError::RequestsEnded, waiter));
        }
        if self.peer_eof {
            return Err((PacketError::ended("the peer sent EOF"), waiter));
        }
        let tag = match self.tags.next(channel) {
            Ok(tag) => tag,
            Err(e) => return Err((e, waiter)),
        };
        self.pending.insert((channel, tag), waiter);
        bump(&self.stats.requests_sent, 1);
        self.publish_in_flight();
        Ok(tag)
    }

    /// What [`receive`](Self::receive) does with a response to
    /// `(channel, tag)`, without building an [`Event`]: takes the waiter of
    /// that pending request, or gives `None` (and counts an unknown
    /// response) if it is not pending. A driver may call it for each
    /// response it decodes instead of `receive`.
    // always: #[inline] left it a call from the driver's big loop
    #[inline(always)]
    pub fn take_waiter(&mut self, channel: u64, tag: u64) -> Option<W> {
        let waiter = self.pending.remove((channel, tag));
        if waiter.is_some() {
            bump(&self.stats.responses_received, 1);
            self.publish_in_flight();
        } else {
            bump(&self.stats.unknown_responses, 1);
        }
        waiter
    }

    /// What [`receive`](Self::receive) does with the peer's request
    /// `(channel, tag)`, without building an [`Event`]: `Ok` if it is to
    /// run (call [`finish_request`](Self::finish_request) once its
    /// response is queued), or the reason of the failure response to send
    /// instead. A driver may call it for each request it decodes instead
    /// of `receive`.
    #[inline]
    pub fn admit_request(&mut self, channel: u64, tag: u64) -> Result<(), &'static str> {
        bump(&self.stats.requests_received, 1);
        let reason = if self.peer_erq {
            REQUESTS_NOT_ALLOWED
        } else if channel != 0 {
            UNKNOWN_CHANNEL
        } else if self.handling.insert((channel, tag), ()).is_some() {
            DUPLICATE_TAG
        } else {
            self.publish_handlers_running();
            return Ok(());
        };
        bump(&self.stats.requests_rejected, 1);
        Err(reason)
    }

    /// What [`admit_request`](Self::admit_request) does, for a driver that
    /// answers most requests before the next batch: registering their tags
    /// only to release them at once cost more than the rest of admitting.
    /// `batch` is where the batch stands ([`Batch::START`] before its first
    /// request); `admitted` holds the requests admitted so far in it and
    /// not finished.
    ///
    /// While the batch's tags rise (as every peer allocates them), none of
    /// them can repeat another of the batch: an admitted request is not
    /// registered, and its caller must either answer it or
    /// [`register_request`](Self::register_request) it before the next
    /// batch starts. Only the table of requests still running from earlier
    /// batches is checked for duplicates. A tag not above the batch's last
    /// might repeat one of `admitted`: those are registered then, and the
    /// rest of the batch goes the way of `admit_request` (`batch` turns
    /// [`Batch::Registered`]), so duplicates are refused exactly as by
    /// `admit_request`.
    // always: #[inline] left it a call from the driver's big loop
    #[inline(always)]
    pub(crate) fn admit_in_batch(
        &mut self,
        batch: &mut Batch,
        channel: u64,
        tag: u64,
        admitted: &[IncomingRequest],
    ) -> Result<(), &'static str> {
        if let Batch::Rising { last } = batch {
            if channel == 0 && !self.peer_erq {
                if last.map_or(true, |last| tag > last) {
                    bump(&self.stats.requests_received, 1);
                    if self.handling.contains((0, tag)) {
                        bump(&self.stats.requests_rejected, 1);
                        return Err(DUPLICATE_TAG);
                    }
                    *last = Some(tag);
                    return Ok(());
                }
                self.register_batch(admitted);
                *batch = Batch::Registered;
            }
        }
        self.admit_request(channel, tag)
    }

    #[cold]
    fn register_batch(&mut self, admitted: &[IncomingRequest]) {
        for rq in admitted {
            self.register_request(rq.channel, rq.tag);
        }
    }

    /// What [`admit_request`](Self::admit_request) does, for a request
    /// that is to wait for a handler slot (in a [`Batch::Parking`]): it
    /// counts as waiting ([`StatsSnapshot::requests_waiting`]), not
    /// running, until [`start_waiting`](Self::start_waiting).
    #[cold]
    pub(crate) fn admit_waiting(&mut self, channel: u64, tag: u64) -> Result<(), &'static str> {
        self.admit_request(channel, tag)?;
        // (counted in the stats only: a protocol is as big as before)
        self.stats.requests_waiting.fetch_add(1, Relaxed);
        self.publish_handlers_running();
        Ok(())
    }

    /// `n` requests admitted by [`admit_waiting`](Self::admit_waiting)
    /// start running.
    pub(crate) fn start_waiting(&mut self, n: usize) {
        self.stats.requests_waiting.fetch_sub(n as u64, Relaxed);
        self.publish_handlers_running();
    }

    /// Registers the peer's request `(channel, tag)`, admitted by
    /// [`admit_in_batch`](Self::admit_in_batch) without it, as being
    /// handled (call [`finish_request`](Self::finish_request) once it is
    /// answered).
    pub(crate) fn register_request(&mut self, channel: u64, tag: u64) {
        self.handling.insert((channel, tag), ());
        self.publish_handlers_running();
    }

    /// Publishes how many of our requests await a response.
    #[inline(always)] // on the per-request path, as its callers are
    fn publish_in_flight(&self) {
        self.stats
            .in_flight
            .store(self.pending.len() as u64, Relaxed);
    }

    /// Publishes how many of the peer's requests are being handled.
    #[inline(always)] // on the per-request path, as its callers are
    fn publish_handlers_running(&self) {
        self.stats
            .handlers_running
            .store(self.handling.len() as u64, Relaxed);
    }

    /// Handles one received packet.
    pub fn receive(&mut self, packet: Packet) -> Event<W> {
        match packet {
            Packet::Response {
                channel,
                tag,
                ok,
                flags,
                payload,
            } => match self.take_waiter(channel, tag) {
                Some(waiter) => Event::Response {
                    channel,
                    tag,
                    waiter,
                    response: Response { ok, flags, payload },
                },
                None => Event::UnknownResponse { channel, tag },
            },
            Packet::Request {
                channel,
                tag,
                rq_type,
                flags,
                payload,
            } => match self.admit_request(channel, tag) {
                Ok(()) => Event::Request(IncomingRequest {
                    channel,
                    tag,
                    rq_type,
                    flags,
                    payload,
                }),
                Err(reason) => Event::Reject {
                    channel,
                    tag,
                    reason,
                },
            },
            Packet::Erq => {
                self.peer_erq = true;
                Event::PeerErq
            }
            Packet::Eof => {
                self.peer_erq = true;
                self.peer_eof = true;
                Event::PeerEof
            }
        }
    }

    /// Marks the peer's request `(channel, tag)` as answered (its tag may
    /// be used again by the peer).
    pub fn finish_request(&mut self, channel: u64, tag: u64) {
        self.handling.remove((channel, tag));
        self.publish_handlers_running();
    }

    /// Forgets every request being handled (their handlers were abandoned
    /// at the close deadline; no response will be sent).
    pub fn abandon_handling(&mut self) {
        self.handling = TagTable::default();
        self.stats.requests_waiting.store(0, Relaxed);
        self.publish_handlers_running();
    }

    /// Records that this end sends ERQ. Returns true the first time (send
    /// it), false after.
    pub fn end_requests(&mut self) -> bool {
        !std::mem::replace(&mut self.local_erq, true)
    }

    /// True once the peer has sent ERQ or EOF.
    pub fn peer_ended_requests(&self) -> bool {
        self.peer_erq
    }

    /// True once the peer has sent EOF.
    pub fn peer_eof(&self) -> bool {
        self.peer_eof
    }

    /// The number of the peer's requests being handled.
    pub fn handling(&self) -> usize {
        self.handling.len()
    }

    /// The number of our requests awaiting a response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Removes and returns every pending waiter with its `(channel, tag)`
    /// (to fail them when the connection ends).
    pub fn take_pending(&mut self) -> Vec<((u64, u64), W)> {
        let out = self.pending.drain();
        self.publish_in_flight();
        out
    }

    /// The waiter of a pending request, to update it.
    pub fn waiter_mut(&mut self, channel: u64, tag: u64) -> Option<&mut W> {
        self.pending.get_mut((channel, tag))
    }

    /// Forgets a pending request whose requester gave up; its late
    /// response will count as unknown. Returns its waiter if it was pending.
    pub fn cancel(&mut self, channel: u64, tag: u64) -> Option<W> {
        let w = self.pending.remove((channel, tag));
        if w.is_some() {
            bump(&self.stats.cancelled, 1);
            self.publish_in_flight();
        }
        w
    }
}

impl<W: Waiter> Protocol<W> {
    /// Forgets pending requests whose waiter gave up; returns how many.
    /// Their late responses will count as unknown.
    pub fn sweep_cancelled(&mut self) -> usize {
        let before = self.pending.len();
        self.pending.retain(|w| !w.is_cancelled());
        let n = before - self.pending.len();
        bump(&self.stats.cancelled, n as u64);
        self.publish_in_flight();
        n
    }

    /// Counts a response delivered to a waiter that had gone.
    pub fn note_cancelled(&self) {
        bump(&self.stats.cancelled, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(channel: u64, tag: u64) -> Packet {
        Packet::Response {
            channel,
            tag,
            ok: true,
            flags: 0,
            payload: Bytes::new(),
        }
    }

    fn req(channel: u64, tag: u64) -> Packet {
        Packet::Request {
            channel,
            tag,
            rq_type: 0,
            flags: 0,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn tags_per_channel_never_reused() {
        let mut t = TagAllocator::new();
        assert_eq!((t.next(0).unwrap(), t.next(0).unwrap()), (2, 3));
        assert_eq!((t.next(5).unwrap(), t.next(5).unwrap()), (0, 1));
        assert_eq!(t.next(0).unwrap(), 4);
        t.next0 = u64::MAX;
        assert!(t.next(0).is_err());
    }

    #[test]
    fn responses_complete_in_any_order() {
        let mut p: Protocol<u64> = Protocol::new();
        let tags: Vec<u64> = (0..4).map(|i| p.start_request(0, i).unwrap()).collect();
        assert_eq!(tags, [2, 3, 4, 5]);
        for &t in tags.iter().rev() {
            match p.receive(resp(0, t)) {
                Event::Response { waiter, tag, .. } => assert_eq!((waiter, tag), (t - 2, t)),
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(p.pending(), 0);
        assert!(matches!(
            p.receive(resp(0, 2)),
            Event::UnknownResponse { channel: 0, tag: 2 }
        ));
        assert_eq!(p.stats().snapshot().unknown_responses, 1);
    }

    #[test]
    fn duplicate_in_flight_tag_is_rejected_then_allowed_after_finish() {
        let mut p: Protocol<u64> = Protocol::new();
        assert!(matches!(p.receive(req(0, 7)), Event::Request(_)));
        assert!(matches!(
            p.receive(req(0, 7)),
            Event::Reject {
                reason: DUPLICATE_TAG,
                ..
            }
        ));
        p.finish_request(0, 7);
        assert!(matches!(p.receive(req(0, 7)), Event::Request(_)));
    }

    fn incoming(tag: u64) -> IncomingRequest {
        IncomingRequest {
            channel: 0,
            tag,
            rq_type: 0,
            flags: 0,
            payload: Bytes::new(),
        }
    }

    /// Admits `tags` as one batch the way the driver does; the requests
    /// admitted, the rejections, and where the batch stands at its end.
    fn batch(p: &mut Protocol<u64>, tags: &[u64]) -> (Vec<u64>, Vec<&'static str>, Batch) {
        let mut batch = Batch::START;
        let (mut admitted, mut rejected) = (Vec::new(), Vec::new());
        for &tag in tags {
            match p.admit_in_batch(&mut batch, 0, tag, &admitted) {
                Ok(()) => admitted.push(incoming(tag)),
                Err(reason) => rejected.push(reason),
            }
        }
        (admitted.iter().map(|rq| rq.tag).collect(), rejected, batch)
    }

    #[test]
    fn rising_batch_is_admitted_without_registering() {
        let mut p: Protocol<u64> = Protocol::new();
        let rising = |last| Batch::Rising { last: Some(last) };
        assert_eq!(
            batch(&mut p, &[2, 3, 5]),
            (vec![2, 3, 5], vec![], rising(5))
        );
        assert_eq!(p.handling(), 0);
        // answered at once: the tags may come again in the next batch
        assert_eq!(batch(&mut p, &[2, 3]), (vec![2, 3], vec![], rising(3)));
        let s = p.stats().snapshot();
        assert_eq!((s.requests_received, s.requests_rejected), (5, 0));
    }

    #[test]
    fn duplicate_within_a_batch_is_rejected_as_before() {
        let mut p: Protocol<u64> = Protocol::new();
        // the repeat registers the batch so far; the rest goes the usual way
        assert_eq!(
            batch(&mut p, &[2, 3, 3, 1, 4, 4]),
            (
                vec![2, 3, 1, 4],
                vec![DUPLICATE_TAG, DUPLICATE_TAG],
                Batch::Registered
            )
        );
        assert_eq!(p.handling(), 4);
        for tag in [2, 3, 1, 4] {
            p.finish_request(0, tag);
        }
        assert_eq!(p.handling(), 0);
        let s = p.stats().snapshot();
        assert_eq!((s.requests_received, s.requests_rejected), (6, 2));
        // a falling tag that repeats nothing is admitted (registered)
        assert_eq!(
            batch(&mut p, &[5, 4]),
            (vec![5, 4], vec![], Batch::Registered)
        );
        assert_eq!(p.handling(), 2);
    }

    #[test]
    fn duplicate_of_a_running_request_is_rejected_in_a_batch() {
        let mut p: Protocol<u64> = Protocol::new();
        let rising = |last| Batch::Rising { last: Some(last) };
        assert_eq!(batch(&mut p, &[7, 8]), (vec![7, 8], vec![], rising(8)));
        p.register_request(0, 7); // still running after the batch
        assert_eq!(
            batch(&mut p, &[7, 9]),
            (vec![9], vec![DUPLICATE_TAG], rising(9))
        );
        p.finish_request(0, 7);
        assert_eq!(batch(&mut p, &[7]), (vec![7], vec![], rising(7)));
        assert_eq!(p.stats().snapshot().handlers_running, 0);
    }

    #[test]
    fn a_request_waiting_for_a_slot_is_registered_and_counted_apart() {
        let mut p: Protocol<u64> = Protocol::new();
        p.register_request(0, 2); // running
        assert_eq!(p.admit_waiting(0, 3), Ok(()));
        assert_eq!(p.handling(), 2);
        // a duplicate of either is refused
        assert_eq!(p.admit_waiting(0, 2), Err(DUPLICATE_TAG));
        assert_eq!(p.admit_waiting(0, 3), Err(DUPLICATE_TAG));
        let s = p.stats().snapshot();
        assert_eq!((s.handlers_running, s.requests_waiting), (1, 1));
        assert_eq!((s.requests_received, s.requests_rejected), (3, 2));
        p.start_waiting(1);
        let s = p.stats().snapshot();
        assert_eq!((s.handlers_running, s.requests_waiting), (2, 0));
        assert_eq!(p.admit_waiting(0, 4), Ok(()));
        p.abandon_handling();
        let s = p.stats().snapshot();
        assert_eq!((s.handlers_running, s.requests_waiting), (0, 0));
    }

    #[test]
    fn batch_refuses_other_channels_and_after_erq() {
        let mut p: Protocol<u64> = Protocol::new();
        let mut batch = Batch::START;
        assert_eq!(
            p.admit_in_batch(&mut batch, 3, 2, &[]),
            Err(UNKNOWN_CHANNEL)
        );
        assert_eq!(p.handling(), 0);
        assert!(matches!(p.receive(Packet::Erq), Event::PeerErq));
        assert_eq!(
            p.admit_in_batch(&mut batch, 0, 2, &[]),
            Err(REQUESTS_NOT_ALLOWED)
        );
        let s = p.stats().snapshot();
        assert_eq!((s.requests_received, s.requests_rejected), (2, 2));
    }

    #[test]
    fn both_directions_have_independent_tag_spaces() {
        let mut p: Protocol<u64> = Protocol::new();
        let t = p.start_request(0, 1).unwrap();
        assert!(matches!(p.receive(req(0, t)), Event::Request(_)));
        assert!(matches!(
            p.receive(resp(0, t)),
            Event::Response { waiter: 1, .. }
        ));
    }

    #[test]
    fn other_channels_rejected_the_reference_way() {
        let mut p: Protocol<u64> = Protocol::new();
        assert!(matches!(
            p.receive(req(3, 2)),
            Event::Reject {
                channel: 3,
                tag: 2,
                reason: UNKNOWN_CHANNEL
            }
        ));
    }

    #[test]
    fn after_peer_erq_requests_are_refused() {
        let mut p: Protocol<u64> = Protocol::new();
        assert!(matches!(p.receive(Packet::Erq), Event::PeerErq));
        assert!(matches!(
            p.receive(req(0, 2)),
            Event::Reject {
                reason: REQUESTS_NOT_ALLOWED,
                ..
            }
        ));
        assert_eq!(p.stats().snapshot().requests_rejected, 1);
    }

    #[test]
    fn local_erq_stops_new_requests_and_eof_hands_back_pending() {
        let mut p: Protocol<u64> = Protocol::new();
        p.start_request(0, 1).unwrap();
        p.start_request(0, 2).unwrap();
        assert!(p.end_requests());
        assert!(!p.end_requests());
        assert!(matches!(
            p.start_request(0, 3),
            Err((PacketError::RequestsEnded, 3))
        ));
        assert!(matches!(p.receive(Packet::Eof), Event::PeerEof));
        let mut w = p.take_pending();
        w.sort();
        assert_eq!(w, [((0, 2), 1), ((0, 3), 2)]);
        assert_eq!(p.stats().snapshot().in_flight, 0);
    }

    #[test]
    fn cancelled_waiters_are_swept() {
        let mut p = Protocol::new();
        let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
        let (tx2, _rx2) = tokio::sync::oneshot::channel::<()>();
        let t1 = p.start_request(0, tx1).unwrap();
        p.start_request(0, tx2).unwrap();
        drop(rx1);
        assert_eq!(p.sweep_cancelled(), 1);
        assert_eq!(p.pending(), 1);
        assert!(matches!(
            p.receive(resp(0, t1)),
            Event::UnknownResponse { .. }
        ));
    }

    #[test]
    fn cancel_forgets_and_counts() {
        let mut p: Protocol<u64> = Protocol::new();
        let t = p.start_request(0, 1).unwrap();
        *p.waiter_mut(0, t).unwrap() = 5;
        assert_eq!(p.cancel(0, t), Some(5));
        assert_eq!(p.cancel(0, t), None);
        assert_eq!(p.stats().snapshot().cancelled, 1);
        assert!(matches!(
            p.receive(resp(0, t)),
            Event::UnknownResponse { .. }
        ));
    }
}
