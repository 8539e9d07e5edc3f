//! Request handlers: the raw [`Handler`] trait, closures, typed requests
//! ([`TypedRequest`] and the [`Service`] registry) and [`EchoService`], the
//! handler of `tether serve packet`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{IncomingRequest, Response};

/// The reason sent when a handler cannot make sense of a request (the
/// reference's words for a handler that raised).
pub const HANDLER_FAILED: &str = "exception during handler";
/// The reason sent for a request type nobody registered.
pub const UNKNOWN_RQ_TYPE: &str = "unknown request type";
/// The reason sent when this end has no handler.
pub const NO_HANDLER: &str = "no request handler";

/// Answers the peer's requests.
///
/// Handlers of one connection run concurrently (up to
/// [`PacketConfig::max_handlers`](super::PacketConfig::max_handlers)) on
/// the connection's task, and their responses go out in completion order.
/// Put CPU-heavy work in `tokio::task::spawn_blocking`. A handler may send
/// requests of its own on any connection, its own included (clone a
/// [`PacketConnection`](super::PacketConnection) into it). A handler that
/// panics fails its request with `exception during handler`, like the
/// reference's handler that raises; the connection goes on.
///
/// ```
/// use std::future::{ready, Ready};
/// use tether::packet::{Handler, IncomingRequest, Response};
///
/// struct Upper;
/// impl Handler for Upper {
///     type Future = Ready<Response>;
///     fn handle(&self, rq: IncomingRequest) -> Self::Future {
///         ready(Response::ok(0, rq.payload.to_ascii_uppercase()))
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The future of one response.
    type Future: Future<Output = Response> + Send + 'static;
    /// Starts handling one request.
    fn handle(&self, request: IncomingRequest) -> Self::Future;

    /// An optional fast path: answer at once, without creating a future.
    /// The connection calls this first and [`Handler::handle`] only with a
    /// request it gives back. The default gives every request back.
    fn handle_now(&self, request: IncomingRequest) -> Result<Response, IncomingRequest> {
        Err(request)
    }
}

/// The handler of a connection that serves nothing: every request gets a
/// failure `no request handler` (the reference's words).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Handler for NoHandler {
    type Future = std::future::Ready<Response>;
    fn handle(&self, _request: IncomingRequest) -> Self::Future {
        std::future::ready(Response::fail(NO_HANDLER))
    }
}

/// A handler made of a closure returning a future; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Makes a [`Handler`] of an async closure.
///
/// ```
/// use tether::packet::{handler_fn, IncomingRequest, Response};
/// let h = handler_fn(|rq: IncomingRequest| async move { Response::ok(rq.flags, rq.payload) });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    type Future = Fut;
    fn handle(&self, request: IncomingRequest) -> Fut {
        (self.0)(request)
    }
}

impl<H: Handler> Handler for Arc<H> {
    type Future = H::Future;
    fn handle(&self, request: IncomingRequest) -> Self::Future {
        (**self).handle(request)
    }
    fn handle_now(&self, request: IncomingRequest) -> Result<Response, IncomingRequest> {
        (**self).handle_now(request)
    }
}

/// The contract handler of `tether serve packet`, shared by the CLI, the
/// demo, the benchmarks and the tests:
///
/// | rq_type | response |
/// |---|---|
/// | 0 | ok, flags 0, the payload |
/// | 1 | ok, flags 0, the payload reversed |
/// | 2 | ok, the request's flags + 1, the payload |
/// | 3 | failure `exception during handler` |
/// | 4 | after `payload` (decimal ASCII) milliseconds, ok with the payload |
/// | other | failure `exception during handler` |
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoService;

/// The future of an [`EchoService`] response.
#[derive(Debug)]
pub struct EchoFuture(EchoState);

#[derive(Debug)]
enum EchoState {
    Ready(Option<Response>),
    Sleep(Pin<Box<tokio::time::Sleep>>, Bytes),
}

impl Future for EchoFuture {
    type Output = Response;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match &mut self.0 {
            EchoState::Ready(r) => {
                Poll::Ready(r.take().unwrap_or_else(|| Response::fail(HANDLER_FAILED)))
            }
            EchoState::Sleep(sleep, payload) => {
                std::task::ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Response::ok(0, std::mem::take(payload)))
            }
        }
    }
}

impl Handler for EchoService {
    type Future = EchoFuture;
    fn handle(&self, rq: IncomingRequest) -> EchoFuture {
        match self.handle_now(rq) {
            Ok(r) => EchoFuture(EchoState::Ready(Some(r))),
            Err(rq) => match std::str::from_utf8(&rq.payload)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(ms) => EchoFuture(EchoState::Sleep(
                    Box::pin(tokio::time::sleep(Duration::from_millis(ms))),
                    rq.payload,
                )),
                None => EchoFuture(EchoState::Ready(Some(Response::fail(HANDLER_FAILED)))),
            },
        }
    }

    // inlined into the connection's dispatch loop: the request and the
    // result are then not moved through memory for every echo
    #[inline]
    fn handle_now(&self, rq: IncomingRequest) -> Result<Response, IncomingRequest> {
        Ok(match rq.rq_type {
            0 => Response::ok(0, rq.payload),
            1 => {
                let mut v = rq.payload.to_vec();
                v.reverse();
                Response::ok(0, v)
            }
            2 => match rq.flags.checked_add(1) {
                Some(f) if f <= super::wire::MAX_RESPONSE_FLAGS => Response::ok(f, rq.payload),
                _ => Response::fail(HANDLER_FAILED),
            },
            4 => return Err(rq),
            _ => Response::fail(HANDLER_FAILED),
        })
    }
}

/// A request type with its number, its wire encoding, its response and
/// its handler, so that an application never handles raw
/// `(rq_type, flags, payload)`.
///
/// Send one with [`PacketConnection::request`](super::PacketConnection::request);
/// serve it by registering it in a [`Service`].
///
/// ```
/// use bytes::Bytes;
/// use std::sync::Arc;
/// use tether::packet::TypedRequest;
///
/// /// Adds two numbers (payload: two big-endian u32s).
/// struct Add(u32, u32);
///
/// impl TypedRequest for Add {
///     const RQ_TYPE: u64 = 7;
///     type Response = u32;
///     type Context = ();
///     fn encode(&self) -> (u64, Bytes) {
///         let mut v = self.0.to_be_bytes().to_vec();
///         v.extend(self.1.to_be_bytes());
///         (0, v.into())
///     }
///     fn decode(_flags: u64, p: Bytes) -> Result<Self, String> {
///         let n = |i: usize| p.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().unwrap()));
///         Ok(Add(n(0).ok_or("short")?, n(4).ok_or("short")?))
///     }
///     fn encode_response(r: &u32) -> (u64, Bytes) {
///         (u64::from(*r), Bytes::new())
///     }
///     fn decode_response(flags: u64, _p: Bytes) -> Result<u32, String> {
///         u32::try_from(flags).map_err(|e| e.to_string())
///     }
///     async fn handle(self, _ctx: Arc<()>) -> Result<u32, String> {
///         self.0.checked_add(self.1).ok_or_else(|| "overflow".to_string())
///     }
/// }
/// ```
pub trait TypedRequest: Sized + Send + 'static {
    /// The request type number on the wire.
    const RQ_TYPE: u64;
    /// What a successful request returns.
    type Response: Send + 'static;
    /// Shared state the handler uses (`()` if none).
    type Context: Send + Sync + 'static;
    /// The request's flags and payload.
    fn encode(&self) -> (u64, Bytes);
    /// Parses a received request.
    fn decode(flags: u64, payload: Bytes) -> Result<Self, String>;
    /// The response's flags and payload.
    fn encode_response(response: &Self::Response) -> (u64, Bytes);
    /// Parses a received (successful) response.
    fn decode_response(flags: u64, payload: Bytes) -> Result<Self::Response, String>;
    /// Runs the request at the receiving end. An `Err` becomes a failure
    /// response carrying that reason.
    fn handle(
        self,
        context: Arc<Self::Context>,
    ) -> impl Future<Output = Result<Self::Response, String>> + Send;
}

type Entry<C> = Arc<dyn Fn(Arc<C>, IncomingRequest) -> BoxFuture<'static, Response> + Send + Sync>;

/// A registry of [`TypedRequest`]s sharing one context: a [`Handler`] that
/// decodes each request by its number, runs it and encodes its response.
/// An unregistered number gets a failure `unknown request type`.
///
/// With `Add` from the [`TypedRequest`] example:
/// `PacketConnection::spawn(stream, Service::new(()).with::<Add>(), PacketConfig::default())`
/// serves it, and `conn.request(&Add(2, 3)).await?` returns `5` at the
/// other end.
pub struct Service<C> {
    context: Arc<C>,
    entries: HashMap<u64, Entry<C>>,
}

impl<C: Send + Sync + 'static> Service<C> {
    /// An empty registry around `context`.
    pub fn new(context: C) -> Self {
        Service {
            context: Arc::new(context),
            entries: HashMap::new(),
        }
    }

    /// Registers request type `R` (replacing any earlier one with its number).
    pub fn with<R: TypedRequest<Context = C>>(mut self) -> Self {
        let entry: Entry<C> = Arc::new(|ctx: Arc<C>, rq: IncomingRequest| {
            async move {
                match R::decode(rq.flags, rq.payload) {
                    Err(e) => Response::fail(format!("bad request: {e}")),
                    Ok(r) => match r.handle(ctx).await {
                        Ok(resp) => {
                            let (flags, payload) = R::encode_response(&resp);
                            Response::ok(flags, payload)
                        }
                        Err(e) => Response::fail(e),
                    },
                }
            }
            .boxed()
        });
        self.entries.insert(R::RQ_TYPE, entry);
        self
    }

    /// The registered request type numbers.
    pub fn rq_types(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }
}

impl<C: Send + Sync + 'static> Handler for Service<C> {
    type Future = BoxFuture<'static, Response>;
    fn handle(&self, rq: IncomingRequest) -> Self::Future {
        match self.entries.get(&rq.rq_type) {
            Some(entry) => entry(self.context.clone(), rq),
            None => std::future::ready(Response::fail(UNKNOWN_RQ_TYPE)).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq(rq_type: u64, flags: u64, payload: &'static [u8]) -> IncomingRequest {
        IncomingRequest {
            channel: 0,
            tag: 2,
            rq_type,
            flags,
            payload: Bytes::from_static(payload),
        }
    }

    #[tokio::test]
    async fn echo_service_contract() {
        let e = EchoService;
        assert_eq!(
            e.handle(rq(0, 9, b"abc")).await,
            Response::ok(0, &b"abc"[..])
        );
        assert_eq!(
            e.handle(rq(1, 0, b"abc")).await,
            Response::ok(0, &b"cba"[..])
        );
        assert_eq!(
            e.handle(rq(2, 5, b"abc")).await,
            Response::ok(6, &b"abc"[..])
        );
        assert_eq!(
            e.handle(rq(3, 0, b"abc")).await,
            Response::fail(HANDLER_FAILED)
        );
        assert_eq!(e.handle(rq(4, 0, b"1")).await, Response::ok(0, &b"1"[..]));
        assert_eq!(
            e.handle(rq(4, 0, b"x")).await,
            Response::fail(HANDLER_FAILED)
        );
        assert_eq!(
            e.handle(rq(9, 0, b"")).await,
            Response::fail(HANDLER_FAILED)
        );
    }

    struct Double(u64);
    impl TypedRequest for Double {
        const RQ_TYPE: u64 = 10;
        type Response = u64;
        type Context = u64;
        fn encode(&self) -> (u64, Bytes) {
            (self.0, Bytes::new())
        }
        fn decode(flags: u64, _p: Bytes) -> Result<Self, String> {
            Ok(Double(flags))
        }
        fn encode_response(r: &u64) -> (u64, Bytes) {
            (*r, Bytes::new())
        }
        fn decode_response(flags: u64, _p: Bytes) -> Result<u64, String> {
            Ok(flags)
        }
        async fn handle(self, ctx: Arc<u64>) -> Result<u64, String> {
            if self.0 > *ctx {
                return Err("too big".into());
            }
            Ok(self.0 * 2)
        }
    }

    #[tokio::test]
    async fn service_dispatches_by_number() {
        let s = Service::new(100u64).with::<Double>();
        assert_eq!(
            s.handle(rq(10, 21, b"")).await,
            Response::ok(42, Bytes::new())
        );
        assert_eq!(s.handle(rq(10, 101, b"")).await, Response::fail("too big"));
        assert_eq!(
            s.handle(rq(11, 1, b"")).await,
            Response::fail(UNKNOWN_RQ_TYPE)
        );
    }
}
