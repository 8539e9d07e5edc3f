use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::codec::{Decoder, Encoder};

use crate::framing::FramingError;
use crate::session::{self, ConnectionInfo, Handler, HandlerError, ServerOptions};
use crate::transport::{Endpoint, Listener, TlsServerConfig, TransportError};

/// A server whose handler is a plain function: the blocking twin of
/// [`crate::session::Server`].
///
/// The network side runs on a private tokio runtime; each request is handed
/// to the handler on tokio's blocking thread pool, so a slow handler never
/// holds up another connection.
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
        C: Decoder<Item = Req, Error = FramingError>
            + Encoder<Resp, Error = FramingError>
            + Clone
            + Send
            + 'static,
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
        C: Decoder<Item = Req, Error = FramingError>
            + Encoder<Resp, Error = FramingError>
            + Clone
            + Send
            + 'static,
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
        C: Decoder<Item = Req, Error = FramingError>
            + Encoder<Resp, Error = FramingError>
            + Clone
            + Send
            + 'static,
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
        C: Decoder<Item = Req, Error = FramingError>
            + Encoder<Resp, Error = FramingError>
            + Clone
            + Send
            + 'static,
        F: Fn(Req, &ConnectionInfo) -> Result<Option<Resp>, HandlerError> + Send + Sync + 'static,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
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
            runtime: Some(runtime),
            running: Some(running),
        })
    }
}

struct OnBlockingPool<F>(Arc<F>);

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
pub struct RunningServer {
    runtime: Option<tokio::runtime::Runtime>,
    running: Option<session::RunningServer>,
}

impl RunningServer {
    /// The endpoint clients connect to.
    pub fn local_endpoint(&self) -> Endpoint {
        self.running
            .as_ref()
            .expect("running")
            .local_endpoint()
            .clone()
    }

    /// Stops accepting, lets requests in progress finish (up to `grace`), closes.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    fn stop(&mut self, grace: Duration) {
        if let (Some(runtime), Some(running)) = (self.runtime.take(), self.running.take()) {
            runtime.block_on(running.shutdown(grace));
            runtime.shutdown_timeout(grace);
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
