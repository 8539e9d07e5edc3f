//! The client side: [`Client`] opens [`Session`]s.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use tokio_util::codec::Decoder;
use tracing::debug;

use super::io::{Buffers, FrameIo};
use super::SessionError;
use crate::framing::{FrameEncoder, FramingError};
use crate::transport::{self, ByteStream, ConnectOptions, Endpoint, TlsClientConfig};

/// Timeouts for a [`Client`] and its sessions, and for `tls://` which
/// servers to trust.
///
/// ```
/// use std::time::Duration;
/// use tether::session::ClientOptions;
///
/// let options = ClientOptions::default()
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Some(Duration::from_millis(500)));
/// assert_eq!(options.request_timeout_value(), Some(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    tls: Option<TlsClientConfig>,
}

impl Default for ClientOptions {
    /// Connect within 5 s; each reply within 10 s. Devices on a LAN answer in
    /// milliseconds: these catch a dead peer without failing a slow command.
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(10)),
            tls: None,
        }
    }
}

/// The longest timeout taken as given: a year. (`Instant + Duration`
/// panics past the clock's range.)
pub(crate) const FOR_EVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long closing a session may take when it has no request deadline:
/// what is queued goes out, and the end of stream, or the close gives up.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(1);

impl ClientOptions {
    /// How long connecting may take (at most a year: longer is for ever).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.min(FOR_EVER);
        self
    }

    /// How long a whole reply may take (`None`: wait for ever; a timeout
    /// of more than a year is taken as a year, for ever in practice, where
    /// a deadline `now + Duration::MAX` cannot be told).
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout.map(|t| t.min(FOR_EVER));
        self
    }

    /// Which servers a `tls://` endpoint trusts. Without it, the CA file
    /// named by `TETHER_TLS_CA` is used.
    pub fn tls(mut self, config: TlsClientConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The TLS client configuration, if one was given.
    pub fn tls_config(&self) -> Option<&TlsClientConfig> {
        self.tls.as_ref()
    }

    /// The transport's connect options (timeout and TLS).
    pub fn connect_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new(self.connect_timeout);
        match &self.tls {
            Some(config) => options.tls(config.clone()),
            None => options,
        }
    }

    /// The connect timeout.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The request deadline.
    pub fn request_timeout_value(&self) -> Option<Duration> {
        self.request_timeout
    }
}

/// Opens sessions to one endpoint, speaking one codec.
///
/// A client holds no connection itself: [`connect`](Self::connect) opens a
/// long-lived [`Session`]; [`request_once`](Self::request_once) is the
/// sessionless mode, a connection per request.
///
/// ```no_run
/// # async fn run() -> Result<(), tether::session::SessionError> {
/// use tether::framing::{text, SentinelCodec};
/// use tether::session::{Client, ClientOptions};
///
/// let client = Client::new("tcp://127.0.0.1:5025".parse()?, text(SentinelCodec::lines()), ClientOptions::default());
/// let mut session = client.connect().await?;
/// let idn: String = session.request("*IDN?".to_string()).await?;
/// session.send("SET mode fast".to_string()).await?; // no reply expected
/// session.close().await?;
/// # Ok(()) }
/// ```
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

    /// The endpoint sessions connect to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The client's options.
    pub fn options(&self) -> ClientOptions {
        self.options.clone()
    }

    /// Opens a new session, within the connect timeout.
    pub async fn connect(&self) -> Result<Session<C>, SessionError> {
        let stream =
            transport::connect_with(&self.endpoint, &self.options.connect_options()).await?;
        debug!(endpoint = %self.endpoint, peer = %stream.peer(), "session opened");
        Ok(Session::new(
            stream,
            self.codec.clone(),
            self.options.clone(),
        ))
    }

    /// The sessionless mode: connects, sends `request`, reads the reply, closes.
    pub async fn request_once<Req>(&self, request: Req) -> Result<C::Item, SessionError>
    where
        C: FrameEncoder<Req> + Decoder<Error = FramingError>,
    {
        let mut session = self.connect().await?;
        let reply = session.request(request).await?;
        session.close().await?;
        Ok(reply)
    }
}

/// One long-lived connection: requests and their replies, in order.
///
/// Dropping a session closes its connection. After a timeout, a broken
/// stream or a cancelled request the session refuses further use with
/// [`SessionError::Closed`] saying why, because the next reply could belong
/// to the earlier request.
#[derive(Debug)]
pub struct Session<C> {
    io: Option<FrameIo<C>>,
    options: ClientOptions,
    closed_because: Option<String>,
    // Set while a request is under way; still set at the next call if the
    // caller dropped that request's future half-way.
    busy: bool,
    timer: DeadlineTimer,
}

impl<C> Session<C> {
    /// A session over an already open stream (any transport, e.g. a memory pair).
    pub fn new(stream: ByteStream, codec: C, options: ClientOptions) -> Self {
        Session {
            io: Some(FrameIo::new(stream, codec, Buffers::Kept)),
            options,
            closed_because: None,
            busy: false,
            timer: DeadlineTimer::default(),
        }
    }

    /// Whether the session can still be used.
    pub fn is_open(&self) -> bool {
        self.io.is_some()
    }

    fn close_because(&mut self, reason: impl Into<String>) {
        self.io = None;
        self.closed_because.get_or_insert_with(|| reason.into());
    }
}

impl<C> Session<C>
where
    C: Decoder<Error = FramingError>,
{
    fn io(&mut self) -> Result<&mut FrameIo<C>, SessionError> {
        if self.busy {
            self.close_because("a request was cancelled before its reply arrived");
        }
        match &mut self.io {
            Some(io) => Ok(io),
            None => Err(SessionError::Closed {
                reason: self
                    .closed_because
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            }),
        }
    }

    /// Sends `request` and returns the decoded reply, all within the request deadline.
    ///
    /// A long payload (16 KiB or more, with tether's codecs) goes out from
    /// `request` itself, not copied: see [`FrameEncoder`].
    pub async fn request<Req>(&mut self, request: Req) -> Result<C::Item, SessionError>
    where
        C: FrameEncoder<Req>,
    {
        let deadline = self.options.request_timeout;
        let io = self.io()?;
        let long = io
            .queue_around(request)
            .map_err(SessionError::from_framing)?;
        self.busy = true;
        let io = self.io.as_mut().expect("checked above");
        let timer = &mut self.timer;
        let outcome = match &long {
            None => {
                let exchange = async {
                    io.flush().await?;
                    io.read_frame().await
                };
                timed(timer, deadline, exchange).await
            }
            // boxed: in place, this rare path's state made every request's
            // future bigger, and moving it cost W1 a `memcpy` a request
            Some((request, at)) => {
                // (the payload's bytes, not `request`: no need for `Sync`)
                let payload = io.codec.payload(request);
                let exchange = async {
                    io.write_around(payload, *at, None).await?;
                    io.read_frame().await
                };
                Box::pin(timed(timer, deadline, exchange)).await
            }
        };
        self.busy = false;
        let Some(outcome) = outcome else {
            let after = deadline.expect("only a deadline times out");
            self.close_because(format!("a reply did not come within {after:?}"));
            return Err(SessionError::Timeout { after });
        };
        self.settle(outcome)
    }

    /// Waits for one frame the peer sends unasked (a banner, an event),
    /// within the request deadline. A timeout here leaves the session open,
    /// since no request is waiting.
    ///
    /// Giving it up (dropping its future, in a `select!` say) leaves the
    /// session open too: no reply is owed, and bytes of a frame half read
    /// stay for the next call.
    pub async fn receive(&mut self) -> Result<C::Item, SessionError> {
        let deadline = self.options.request_timeout;
        self.io()?;
        let io = self.io.as_mut().expect("checked above");
        let Some(outcome) = timed(&mut self.timer, deadline, io.read_frame()).await else {
            let after = deadline.expect("only a deadline times out");
            return Err(SessionError::Timeout { after });
        };
        self.settle(outcome)
    }

    fn settle(
        &mut self,
        outcome: Result<Option<C::Item>, FramingError>,
    ) -> Result<C::Item, SessionError> {
        match outcome {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                self.close_because("the peer closed the connection");
                Err(SessionError::Disconnected)
            }
            Err(e) => {
                if e.is_fatal() {
                    self.close_because(e.to_string());
                }
                Err(SessionError::from_framing(e))
            }
        }
    }

    /// Sends `request` with no reply expected, within the request deadline
    /// (a peer that reads nothing cannot hold it; the session closes then,
    /// since part of the request may have gone out).
    pub async fn send<Req>(&mut self, request: Req) -> Result<(), SessionError>
    where
        C: FrameEncoder<Req>,
    {
        let deadline = self.options.request_timeout;
        let io = self.io()?;
        let around = io
            .queue_around(request)
            .map_err(SessionError::from_framing)?;
        let io = self.io.as_mut().expect("checked above");
        let long = around
            .as_ref()
            .map(|(request, at)| (io.codec.payload(request), *at));
        let write = async {
            match long {
                None => io.flush().await,
                Some((payload, at)) => Box::pin(io.write_around(payload, at, None)).await,
            }
        };
        let Some(flushed) = timed(&mut self.timer, deadline, write).await else {
            let after = deadline.expect("only a deadline times out");
            // (part of it may be out: the stream is no longer in step)
            self.close_because(format!("a request could not be sent within {after:?}"));
            return Err(SessionError::Timeout { after });
        };
        if let Err(e) = flushed {
            self.close_because(e.to_string());
            return Err(SessionError::Transport(e.into()));
        }
        Ok(())
    }

    /// Ends the session: flushes, tells the peer (end of stream), closes;
    /// within the request deadline (or [`CLOSE_LIMIT`], without one), so a
    /// peer that reads nothing cannot hold it.
    pub async fn close(mut self) -> Result<(), SessionError> {
        let Some(mut io) = self.io.take() else {
            return Ok(());
        };
        let after = self.options.request_timeout.unwrap_or(CLOSE_LIMIT);
        match within(&mut self.timer, after, io.shutdown()).await {
            Some(closed) => closed.map_err(|e| SessionError::Transport(e.into())),
            None => Err(SessionError::Timeout { after }),
        }
    }
}

/// One timer for every request's deadline, moved lazily.
///
/// A request only works out when its reply is due. The timer stays
/// registered at an earlier due time (the first request's, say); when that
/// passes, it moves to the current request's due time if that is still
/// ahead, and fires for real only when it is not. So a session whose replies
/// come in time touches the timer once per timeout period, not per request:
/// a fresh `timeout()` per request cost 12% of a round trip's CPU, moving one
/// registered timer per request still 5%.
#[derive(Debug, Default)]
struct DeadlineTimer {
    sleep: Option<Pin<Box<Sleep>>>,
}

/// `work`'s output, or `None` if a `deadline` passes first.
async fn timed<T>(
    timer: &mut DeadlineTimer,
    deadline: Option<Duration>,
    work: impl Future<Output = T>,
) -> Option<T> {
    match deadline {
        Some(after) => within(timer, after, work).await,
        None => Some(work.await),
    }
}

/// `work`'s output, or `None` if `after` passes first, timed by the
/// session's reusable `timer`.
async fn within<T>(
    timer: &mut DeadlineTimer,
    after: Duration,
    work: impl Future<Output = T>,
) -> Option<T> {
    let due = Instant::now() + after;
    let sleep = match &mut timer.sleep {
        Some(sleep) => {
            // Only a timer due later than this request (a shortened timeout)
            // must move now; an earlier one moves when it fires.
            if sleep.deadline() > due {
                sleep.as_mut().reset(due);
            }
            sleep
        }
        None => timer.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
    };
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= due {
                return Poll::Ready(None);
            }
            // An earlier request's due time passed: wait for this one's.
            sleep.as_mut().reset(due);
        }
    })
    .await
}
