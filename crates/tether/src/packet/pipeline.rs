//! [`Pipeline`]: many requests in flight, their responses taken in
//! completion order from one place.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::connection::{enqueue, Enqueued, PipeSlot, Shared, Taker, WaitForRoom, KEEP_OPEN};
use super::{PacketConnection, PacketError, Response};

/// Requests on one connection whose responses come back through one
/// queue, in completion order, each with its tag: the tagged counterpart
/// of a hand-written pipeline over a framed stream.
///
/// A future per request ([`PacketConnection::submit`]) costs a wake-up
/// and a hand-over per response; a pipeline takes every response that
/// arrived in one batch under one lock, with at most one wake-up. Use it
/// to keep many requests in flight from one task.
///
/// Every request submitted resolves exactly once through
/// [`next`](Self::next), with its response or, if the connection ends
/// first, a connection-ended error. Dropping the pipeline abandons its
/// requests: their responses are discarded when they come (and counted in
/// [`StatsSnapshot::cancelled`](super::StatsSnapshot::cancelled)).
///
/// ```
/// # async fn run() -> Result<(), tether::packet::PacketError> {
/// use tether::packet::{EchoService, NoHandler, PacketConfig, PacketConnection};
/// use tether::transport::memory_pair;
///
/// let (a, b) = memory_pair(64 * 1024);
/// let _server = PacketConnection::spawn(b, EchoService, PacketConfig::default());
/// let client = PacketConnection::spawn(a, NoHandler, PacketConfig::default());
/// let mut pipeline = client.pipeline();
/// // 1000 echo requests, 64 in flight at any time
/// let (mut sent, mut done) = (0, 0);
/// while done < 1000 {
///     while sent < 1000 && pipeline.in_flight() < 64 {
///         pipeline.submit(0, 0, format!("request {sent}")).await?;
///         sent += 1;
///     }
///     let (_tag, response) = pipeline.next().await.expect("requests in flight");
///     assert!(response?.ok);
///     done += 1;
/// }
/// assert!(pipeline.next().await.is_none()); // nothing left in flight
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
pub struct Pipeline {
    shared: Arc<Shared>,
    /// Our slot in the connection's pipeline table.
    slot: usize,
    /// Results taken from the slot, not yet returned.
    local: VecDeque<(u64, Result<Response, PacketError>)>,
    /// Submitted and not yet returned by `next`.
    in_flight: usize,
}

/// Where [`Pipeline::submit`] left a request it could not queue at once.
enum Slow {
    Wait(WaitForRoom),
    Failed(Box<PacketError>),
}

/// The future of [`Pipeline::submit`]: resolves to the request's tag once
/// it is queued.
///
/// Written out rather than an `async` block, and inlined: it is built,
/// polled once and dropped for every request.
#[must_use = "a request waiting for room is dropped with its Submit future"]
pub struct Submit<'a> {
    pipeline: &'a mut Pipeline,
    /// The tag of a request queued when submitted (the usual case), until
    /// returned. Apart from `slow`: taking it drops nothing, where setting
    /// an enum holding boxes called its drop glue twice per request.
    queued: Option<u64>,
    /// Otherwise, until done.
    slow: Option<Slow>,
}

impl std::fmt::Debug for Submit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = match (&self.queued, &self.slow) {
            (Some(_), _) => "queued",
            (None, Some(Slow::Wait(_))) => "waiting for room",
            (None, Some(Slow::Failed(_))) => "failed",
            (None, None) => "done",
        };
        f.debug_struct("Submit").field("step", &step).finish()
    }
}

impl Future for Submit<'_> {
    type Output = Result<u64, PacketError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(tag) = this.queued.take() {
            // the usual case: queued when submitted
            return Poll::Ready(Ok(tag));
        }
        this.poll_slow(cx)
    }
}

impl Submit<'_> {
    fn poll_slow(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, PacketError>> {
        if let Some(Slow::Wait(slow)) = &mut self.slow {
            let tag = match slow.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            };
            self.slow = None;
            if tag.is_ok() {
                self.pipeline.in_flight += 1;
            }
            return Poll::Ready(tag);
        }
        Poll::Ready(match self.slow.take() {
            Some(Slow::Failed(e)) => Err(*e),
            _ => Err(PacketError::ended("polled after completion")),
        })
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl PacketConnection {
    /// A new [`Pipeline`] on this connection (any number may coexist).
    pub fn pipeline(&self) -> Pipeline {
        let mut st = self.shared.lock();
        let slot = match st.pipelines.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                st.pipelines.push(None);
                st.pipelines.len() - 1
            }
        };
        st.pipelines[slot] = Some(PipeSlot::default());
        drop(st);
        Pipeline {
            shared: self.shared.clone(),
            slot,
            local: VecDeque::new(),
            in_flight: 0,
        }
    }
}

impl Pipeline {
    /// Sends a request on channel 0; resolves to its tag once it is queued.
    /// Its response comes from [`next`](Self::next).
    ///
    /// As with [`PacketConnection::submit`], the request is queued at once,
    /// in call order, unless 64 KiB of requests are already waiting to be
    /// written or
    /// [`PacketConfig::max_pending`](super::PacketConfig::max_pending)
    /// requests are in flight: then the future queues it when there is
    /// room (dropping it before then drops the request). Errors as
    /// `submit`'s (the request is then not in flight).
    pub fn submit(&mut self, rq_type: u64, flags: u64, payload: impl Into<Bytes>) -> Submit<'_> {
        let taker = Taker::Pipeline(self.slot);
        // the fast path runs here, not in the future, and the future stays
        // small (the rare error boxed): it is built and moved per request
        let (queued, slow) =
            match enqueue::<KEEP_OPEN>(&self.shared, 0, rq_type, flags, payload.into(), taker) {
                Ok(Enqueued::Now(tag)) => {
                    self.in_flight += 1;
                    (Some(tag), None)
                }
                Ok(Enqueued::Later(wait)) => (None, Some(Slow::Wait(wait))),
                Err(e) => (None, Some(Slow::Failed(Box::new(e)))),
            };
        Submit {
            pipeline: self,
            queued,
            slow,
        }
    }

    /// The next response to arrive, with its request's tag; `None` when no
    /// request is in flight. A failure response is `Ok(Response { ok:
    /// false, .. })`; `Err` means the connection ended before the response.
    pub async fn next(&mut self) -> Option<(u64, Result<Response, PacketError>)> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next response (see [`next`](Self::next)).
    #[inline]
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(u64, Result<Response, PacketError>)>> {
        // the usual case, inlined: a result of the batch already taken
        if let Some(next) = self.local.pop_front() {
            self.in_flight -= 1;
            return Poll::Ready(Some(next));
        }
        self.poll_next_batch(cx)
    }

    /// Takes the next batch of results from the connection, or waits.
    fn poll_next_batch(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(u64, Result<Response, PacketError>)>> {
        if self.in_flight == 0 {
            return Poll::Ready(None);
        }
        let mut st = self.shared.lock();
        let Some(Some(p)) = st.pipelines.get_mut(self.slot) else {
            return Poll::Ready(None); // cannot happen: the slot is ours
        };
        if p.ready.is_empty() {
            if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                p.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        // take the whole batch at once
        std::mem::swap(&mut self.local, &mut p.ready);
        drop(st);
        self.in_flight -= 1;
        Poll::Ready(self.local.pop_front())
    }

    /// Requests submitted whose response [`next`](Self::next) has not
    /// returned yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if let Some(Some(p)) = st.pipelines.get_mut(self.slot) {
            if p.pending == 0 {
                st.pipelines[self.slot] = None;
            } else {
                // the task frees the slot when the last response is in
                p.dropped = true;
                p.ready.clear();
                p.waker = None;
            }
        }
    }
}
