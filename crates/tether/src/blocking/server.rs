use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::codec::Decoder;

use super::{threaded, PlainHandler, ServerCodec};
use crate::framing::{FrameEncoder, FramingError};
use crate::session::{self, ConnectionInfo, Handler, HandlerError, ServerOptions, ServerStats};
use crate::transport::{Endpoint, Listener, TlsServerConfig, TransportError};

/// A server whose handler is a plain function: the blocking twin of
/// [`crate::session::Server`].
///
/// TCP and Unix endpoints are served with a thread per connection over
/// blocking `std` sockets: the handler runs on the connection's own thread,
/// where the bytes arrive, so a round trip costs what it costs in a
/// hand-written `std::net` server. The price is a thread (with a 256 KiB
/// stack) per connection, bounded by [`ServerOptions::max_connections`]
/// (see the [module docs](crate::blocking)). A thread whose connection
/// ended waits up to 10 s to serve the next one (so thread-local state a
/// handler leaves may be seen by a later connection). TLS endpoints run the async
/// [`crate::session::Server`] on a private tokio runtime and hand each
/// request to the handler on tokio's blocking thread pool.
///
/// Either way a slow handler never holds up another connection, and the
/// behaviour is the async server's: the same codecs and limits, `Ok(None)`
/// sends nothing, a handler error or panic closes that connection only, a
/// request the codec refuses closes the connection.
///
/// ```no_run
/// use tether::blocking::Server;
/// use tether::framing::{text, SentinelCodec};
/// use tether::session::{ConnectionInfo, HandlerError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::bind(&"127.0.0.1:0".parse()?, text(SentinelCodec::lines()),
///     |request: String, _: &ConnectionInfo| -> Result<Option<String>, HandlerError> {
///         Ok(Some(request.to_uppercase()))
///     })?;
/// println!("listening on {}", server.local_endpoint());
/// server.shutdown(std::time::Duration::from_secs(1));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Binds to `endpoint` and starts serving at once.
    pub fn bind<C, F, Req, Resp>(
        endpoint: &Endpoint,
        codec: C,
        handler: F,
    ) -> Result<RunningServer, TransportError>
    where
        C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp> + Clone + Send + 'static,
        F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        Self::bind_with(endpoint, codec, handler, ServerOptions::default())
    }

    /// [`bind`](Self::bind) with limits.
    pub fn bind_with<C, F, Req, Resp>(
        endpoint: &Endpoint,
        codec: C,
        handler: F,
        options: ServerOptions,
    ) -> Result<RunningServer, TransportError>
    where
        C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp> + Clone + Send + 'static,
        F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        Self::start(endpoint, None, codec, handler, options)
    }

    /// Binds a TLS server to `endpoint` (`tls://host:port`), presenting the
    /// certificate of `tls`, with limits. Handshakes run outside the accept
    /// loop, each within the config's handshake timeout.
    pub fn bind_tls<C, F, Req, Resp>(
        endpoint: &Endpoint,
        tls: TlsServerConfig,
        codec: C,
        handler: F,
        options: ServerOptions,
    ) -> Result<RunningServer, TransportError>
    where
        C: Decoder<Item = Req, Error = FramingError> + FrameEncoder<Resp> + Clone + Send + 'static,
        F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        Self::start(endpoint, Some(tls), codec, handler, options)
    }

    fn start<C, F, Req, Resp>(
        endpoint: &Endpoint,
        tls: Option<TlsServerConfig>,
        codec: C,
        handler: F,
        options: ServerOptions,
    ) -> Result<RunningServer, TransportError>
    where
        C: ServerCodec<Req, Resp>,
        F: PlainHandler<Req, Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        if tls.is_none() && threaded::serves(endpoint) {
            let running = threaded::Running::start(endpoint, codec, handler, options)?;
            return Ok(RunningServer {
                inner: Inner::Threaded(running),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("tether-server")
            .build()?;
        let handler = OnBlockingPool(Arc::new(handler));
        let running = runtime.block_on(async {
            let listener = match tls {
                Some(tls) => Listener::bind_tls(endpoint, tls).await?,
                None => Listener::bind(endpoint).await?,
            };
            Ok::<_, TransportError>(
                session::Server::with_listener(listener, codec, handler)
                    .options(options)
                    .spawn(),
            )
        })?;
        Ok(RunningServer {
            inner: Inner::Runtime {
                runtime: Some(runtime),
                running: Some(running),
            },
        })
    }
}

struct OnBlockingPool<F>(Arc<F>);

// (`PlainHandler` would leave `Resp` unconstrained here: the `Fn` bound
// names it as the closure's output.)
impl<F, Req, Resp> Handler<Req> for OnBlockingPool<F>
where
    F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static,
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;

    fn handle(
        &self,
        request: Req,
        conn: &ConnectionInfo,
    ) -> impl Future<Output = Result<Option<Resp>, HandlerError>> + Send {
        let f = self.0.clone();
        let conn = *conn;
        async move {
            tokio::task::spawn_blocking(move || f(request, &conn))
                .await
                .map_err(|e| HandlerError::from(format!("handler panicked: {e}")))?
        }
    }
}

/// A blocking server serving in the background. Dropping it shuts it down
/// with a one-second grace period.
#[derive(Debug)]
#[must_use = "dropping a RunningServer stops the server"]
pub struct RunningServer {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// TCP and Unix: a thread per connection.
    Threaded(threaded::Running),
    /// TLS and the rest: the async server on a private runtime.
    Runtime {
        runtime: Option<tokio::runtime::Runtime>,
        running: Option<session::RunningServer>,
    },
}

impl RunningServer {
    /// The endpoint clients connect to.
    pub fn local_endpoint(&self) -> Endpoint {
        match &self.inner {
            Inner::Threaded(running) => running.local_endpoint().clone(),
            Inner::Runtime { running, .. } => running
                .as_ref()
                .expect("running until shut down")
                .local_endpoint()
                .clone(),
        }
    }

    /// The server's counters: connections accepted, and refused because
    /// the server was full.
    pub fn stats(&self) -> &ServerStats {
        match &self.inner {
            Inner::Threaded(running) => running.stats(),
            Inner::Runtime { running, .. } => {
                running.as_ref().expect("running until shut down").stats()
            }
        }
    }

    /// True once the server has stopped serving without being told to: on
    /// a `stdio:` endpoint, once its one peer has gone.
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            // (TCP and Unix listeners never run out of peers)
            Inner::Threaded(_) => false,
            Inner::Runtime { running, .. } => running
                .as_ref()
                .map_or(true, session::RunningServer::is_finished),
        }
    }

    /// Graceful shutdown: stops accepting at once, lets requests in
    /// progress finish and their replies go out (up to `grace`), then
    /// closes every connection. Connections waiting for a request close at
    /// once. Over TCP and Unix it returns within `grace` and a fraction of
    /// a second: a handler still running after that is left to finish on
    /// its own thread, its connection closed. Over TLS (the runtime path)
    /// the runtime too gets up to `grace` to wind down its handler threads.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        match &mut self.inner {
            Inner::Threaded(running) => running.stop(grace),
            Inner::Runtime { runtime, running } => {
                if let (Some(runtime), Some(running)) = (runtime.take(), running.take()) {
                    runtime.block_on(running.shutdown(grace));
                    runtime.shutdown_timeout(grace);
                }
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
