//! A blocking [`PacketConnection`] for synchronous programs.
//!
//! It runs the async connection on a small private runtime (one worker
//! thread), so the peer's requests are served while the caller is between
//! calls. Do not use it from inside an async task.
//!
//! ```no_run
//! use std::time::Duration;
//! use tether::packet::blocking::PacketConnection;
//!
//! let conn = PacketConnection::connect(&"tcp://127.0.0.1:7000".parse()?, Duration::from_secs(2))?;
//! let r = conn.call(1, 0, "hello")?; // rq_type 1 of `tether serve packet`: reversed
//! assert_eq!(&r.payload[..], b"olleh");
//! conn.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use bytes::Bytes;

use super::{Handler, NoHandler, PacketConfig, PacketError, Response, StatsSnapshot, TypedRequest};
use crate::transport::Endpoint;

/// The blocking twin of [`super::PacketConnection`].
#[derive(Debug)]
pub struct PacketConnection {
    inner: super::PacketConnection,
    rt: tokio::runtime::Runtime,
}

impl PacketConnection {
    /// Connects to `endpoint`, serving nothing (the peer's requests get a
    /// failure `no request handler`).
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Self, PacketError> {
        Self::connect_with(endpoint, timeout, NoHandler, PacketConfig::default())
    }

    /// Connects to `endpoint` with a handler for the peer's requests.
    pub fn connect_with<H: Handler>(
        endpoint: &Endpoint,
        timeout: Duration,
        handler: H,
        config: PacketConfig,
    ) -> Result<Self, PacketError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tether-packet")
            .enable_all()
            .build()?;
        let inner = rt.block_on(super::PacketConnection::connect(
            endpoint, timeout, handler, config,
        ))?;
        Ok(PacketConnection { inner, rt })
    }

    /// Sends a request and waits for its response (see
    /// [`super::PacketConnection::submit`]).
    pub fn call(
        &self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Response, PacketError> {
        self.rt.block_on(self.inner.submit(rq_type, flags, payload))
    }

    /// [`call`](Self::call) with a deadline: [`PacketError::Timeout`] if no
    /// response comes in time (the request is then cancelled locally).
    pub fn call_timeout(
        &self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Response, PacketError> {
        self.rt.block_on(async {
            tokio::time::timeout(timeout, self.inner.submit(rq_type, flags, payload))
                .await
                .unwrap_or(Err(PacketError::Timeout))
        })
    }

    /// Pushes a message whose response nobody awaits; returns once it is
    /// queued (see [`super::PacketConnection::push`]).
    pub fn push(
        &self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<(), PacketError> {
        self.rt.block_on(self.inner.push(rq_type, flags, payload))
    }

    /// A [`Pipeline`] on this connection (see
    /// [`super::PacketConnection::pipeline`]).
    pub fn pipeline(&self) -> Pipeline<'_> {
        Pipeline {
            inner: self.inner.pipeline(),
            rt: &self.rt,
        }
    }

    /// Sends a typed request (see [`super::PacketConnection::request`]).
    pub fn request<R: TypedRequest>(&self, request: &R) -> Result<R::Response, PacketError> {
        self.rt.block_on(self.inner.request(request))
    }

    /// Sends ERQ (see [`super::PacketConnection::end_requests`]).
    pub fn end_requests(&self) -> Result<(), PacketError> {
        self.rt.block_on(self.inner.end_requests())
    }

    /// Closes in order (see [`super::PacketConnection::close`]).
    pub fn close(self) -> Result<(), PacketError> {
        self.rt.block_on(self.inner.close())
    }

    /// The sessionless mode: connects to `endpoint`, sends one request with
    /// EOF behind it, and returns the response (see
    /// [`super::PacketConnection::request_once`]; the wait is bounded by
    /// the default close limits, 10 s).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use tether::packet::blocking::PacketConnection;
    /// let endpoint = "tcp://127.0.0.1:7000".parse()?;
    /// let r = PacketConnection::request_once(&endpoint, Duration::from_secs(2), 1, 0, "once")?;
    /// assert_eq!(&r.payload[..], b"ecno");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request_once(
        endpoint: &Endpoint,
        timeout: Duration,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Response, PacketError> {
        Self::connect(endpoint, timeout)?.call_and_close(rq_type, flags, payload)
    }

    /// Sends a last request and closes, in one round trip: the request and
    /// EOF leave in one write (see
    /// [`super::PacketConnection::submit_and_close`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use tether::packet::blocking::PacketConnection;
    /// let endpoint = "tcp://127.0.0.1:7000".parse()?;
    /// let r = PacketConnection::connect(&endpoint, Duration::from_secs(2))?.call_and_close(1, 0, "once")?;
    /// assert_eq!(&r.payload[..], b"ecno");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_and_close(
        self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Response, PacketError> {
        self.rt
            .block_on(self.inner.submit_and_close(rq_type, flags, payload))
    }

    /// Waits until the connection has ended (see
    /// [`super::PacketConnection::closed`]).
    pub fn closed(&self) -> Result<(), PacketError> {
        self.rt.block_on(self.inner.closed())
    }

    /// The connection's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats()
    }

    /// The async connection underneath (usable from this connection's
    /// runtime only through [`Self::runtime`]).
    pub fn as_async(&self) -> &super::PacketConnection {
        &self.inner
    }

    /// The private runtime.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

/// How long dropping a connection that was not closed may take to close it
/// in order before its runtime stops.
const DROP_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Drop for PacketConnection {
    /// Closes in order (ERQ, EOF; bounded by 2 s) if [`close`](Self::close)
    /// was not called, so the peer sees an orderly end.
    fn drop(&mut self) {
        if !self.inner.is_closed() {
            let inner = &self.inner;
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(DROP_CLOSE_TIMEOUT, inner.close()).await });
        }
    }
}

/// The blocking twin of [`super::Pipeline`]: many requests in flight, their
/// responses taken in completion order.
///
/// ```no_run
/// use std::time::Duration;
/// use tether::packet::blocking::PacketConnection;
///
/// let conn = PacketConnection::connect(&"tcp://127.0.0.1:7000".parse()?, Duration::from_secs(2))?;
/// let mut pipeline = conn.pipeline();
/// for i in 0..100 {
///     pipeline.submit(0, 0, format!("request {i}"))?;
/// }
/// while let Some((tag, response)) = pipeline.next() {
///     println!("{tag}: {:?}", response?);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Pipeline<'a> {
    inner: super::Pipeline,
    rt: &'a tokio::runtime::Runtime,
}

impl Pipeline<'_> {
    /// Sends a request; returns its tag once it is queued (see
    /// [`super::Pipeline::submit`]).
    pub fn submit(
        &mut self,
        rq_type: u64,
        flags: u64,
        payload: impl Into<Bytes>,
    ) -> Result<u64, PacketError> {
        self.rt.block_on(self.inner.submit(rq_type, flags, payload))
    }

    /// Requests submitted whose response `next` has not returned yet.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

/// Each `next` waits for the next response, with its request's tag; `None`
/// when no request is in flight (see [`super::Pipeline::next`]). Submitting
/// more afterwards starts it again.
impl Iterator for Pipeline<'_> {
    type Item = (u64, Result<Response, PacketError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.inner.next())
    }
}
