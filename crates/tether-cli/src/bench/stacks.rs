//! tether's servers as the bench runs them, and the client handler of the
//! push workload.
//!
//! - sessions (`tether-sentinel`, `tether-length`): `session::Server` with
//!   an echo handler;
//! - `tether-blocking`: `blocking::Server` (a thread per connection over
//!   std sockets) with the same echo handler as a plain function;
//! - `tether-packet`: `packet::serve` with the contract's `EchoService`
//!   (rq_type 0 echoes), or, for push, an accept loop that pushes to each
//!   client as many messages as its first request asks for.
//!
//! Every server binds the address it is given (in-process: 127.0.0.1 on a
//! free port), reports its address, and serves until told to stop; TLS
//! ones use `Listener::bind_tls`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tether::framing::{FrameEncoder, FramingError, LengthCodec};
use tether::packet::{
    EchoService, Handler as PacketHandler, IncomingRequest, PacketConfig, PacketConnection,
    Response,
};
use tether::session::{ConnectionInfo, Handler, HandlerError, Server, ServerOptions};
use tether::transport::{ByteStream, Endpoint, Listener, TlsServerConfig};
use tokio::sync::{oneshot, Notify};
use tokio_util::codec::Decoder;

use super::rig::{endpoint, payload, serve_connections, PushCount};
use crate::CliResult;

/// Sessions a bench server accepts at once: above W8's 10,000 idle ones.
const MAX_CONNECTIONS: usize = 65_536;

/// Binds a tether listener at `at` (TLS when `tls` is given).
pub async fn bind(
    at: SocketAddr,
    tls: Option<TlsServerConfig>,
) -> CliResult<(Listener, SocketAddr)> {
    let listener = match tls {
        None => Listener::bind(&endpoint(at, false)).await?,
        Some(cfg) => Listener::bind_tls(&endpoint(at, true), cfg).await?,
    };
    let addr = socket_addr(&listener.local_endpoint())?;
    Ok((listener, addr))
}

/// The IP address and port a bound endpoint listens on.
fn socket_addr(endpoint: &Endpoint) -> CliResult<SocketAddr> {
    Ok(endpoint
        .host_port()
        .and_then(|hp| hp.parse().ok())
        .ok_or("the listener has no IP address")?)
}

/// A session server echoing every frame of `codec`.
pub async fn session_server<C>(
    at: SocketAddr,
    ready: oneshot::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
    codec: C,
    tls: Option<TlsServerConfig>,
) -> CliResult<()>
where
    C: Decoder<Item = BytesMut, Error = FramingError>
        + FrameEncoder<BytesMut>
        + Clone
        + Send
        + 'static,
{
    let (listener, addr) = bind(at, tls).await?;
    let server = Server::with_listener(listener, codec, Echo)
        .options(ServerOptions::default().max_connections(MAX_CONNECTIONS));
    let _ = ready.send(addr);
    server
        .run(
            async {
                let _ = stop.await;
            },
            Duration::from_secs(1),
        )
        .await;
    Ok(())
}

/// The blocking session server over `LengthCodec`, echoing every frame:
/// its own accept thread and a thread per connection, no runtime.
pub fn blocking_server(at: SocketAddr) -> CliResult<(tether::blocking::RunningServer, SocketAddr)> {
    let server = tether::blocking::Server::bind_with(
        &endpoint(at, false),
        LengthCodec::new(),
        |request: BytesMut, _: &ConnectionInfo| Ok::<_, HandlerError>(Some(request)),
        ServerOptions::default().max_connections(MAX_CONNECTIONS),
    )?;
    let addr = socket_addr(&server.local_endpoint())?;
    Ok((server, addr))
}

/// The session servers' handler: every request comes back as it is. A
/// struct rather than a closure, so the server's future is plainly `Send`.
struct Echo;

impl Handler<BytesMut> for Echo {
    type Response = BytesMut;
    fn handle(
        &self,
        request: BytesMut,
        _conn: &ConnectionInfo,
    ) -> impl std::future::Future<Output = Result<Option<BytesMut>, HandlerError>> + Send {
        std::future::ready(Ok(Some(request)))
    }
}

/// The packet server of the contract (`EchoService`).
pub async fn packet_server(
    at: SocketAddr,
    ready: oneshot::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
    tls: Option<TlsServerConfig>,
) -> CliResult<()> {
    let (listener, addr) = bind(at, tls).await?;
    let _ = ready.send(addr);
    tether::packet::serve(listener, EchoService, PacketConfig::default(), stop).await;
    Ok(())
}

/// The push workload's packet server: as each client connects, waits for
/// its first request, an 8-byte count ([`PushCount`]), acknowledges it,
/// then pushes that many 64-byte messages to it with
/// [`PacketConnection::push`] (requests whose acknowledgements the
/// connection discards).
pub async fn packet_push_server(
    at: SocketAddr,
    ready: oneshot::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
) -> CliResult<()> {
    let (listener, addr) = bind(at, None).await?;
    let _ = ready.send(addr);
    serve_connections(listener, stop, push_as_asked).await;
    Ok(())
}

/// Serves one push connection: the connection starts at once, and the
/// task pushes as many messages as the client's first request asks for.
fn push_as_asked(stream: ByteStream) -> impl Future<Output = ()> + Send {
    let (count, counted) = oneshot::channel();
    let asked = PushCountRequest(std::sync::Mutex::new(Some(count)));
    let conn = PacketConnection::spawn(stream, asked, PacketConfig::default());
    async move {
        tokio::select! {
            Ok(n) = counted => push_to(conn, n).await,
            _ = conn.closed() => {}
            // a client that never says: closed, not kept
            () = tokio::time::sleep(PushCount::ASK_TIMEOUT) => {
                let _ = conn.close().await;
            }
        }
    }
}

/// The handler of a push server's connection: the client's request with
/// the count is acknowledged and the count handed to the task that pushes.
struct PushCountRequest(std::sync::Mutex<Option<oneshot::Sender<u64>>>);

impl PacketHandler for PushCountRequest {
    type Future = std::future::Ready<Response>;
    fn handle(&self, request: IncomingRequest) -> Self::Future {
        let Some(n) = PushCount::decode(&request.payload) else {
            return std::future::ready(Response::fail("expected a push count (8 bytes)"));
        };
        let asked = self.0.lock().map(|mut once| once.take());
        if let Ok(Some(count)) = asked {
            let _ = count.send(n);
        }
        std::future::ready(Response::ok(0, Bytes::new()))
    }
}

async fn push_to(conn: PacketConnection, n: u64) {
    let msg = payload(64);
    for _ in 0..n {
        // `push` waits only when the send queue or the pending table is full
        if conn.push(0, 0, msg.clone()).await.is_err() {
            return;
        }
    }
    let _ = conn.close().await;
}

/// The push client's handler: acknowledges each pushed request at once
/// (empty ok response) and counts it; wakes the waiter at the target.
#[derive(Clone)]
pub struct PushCounter {
    got: Arc<AtomicU64>,
    want: u64,
    done: Arc<Notify>,
}

impl PushCounter {
    /// A counter that signals after `want` requests.
    pub fn new(want: u64) -> Self {
        PushCounter {
            got: Arc::new(AtomicU64::new(0)),
            want,
            done: Arc::new(Notify::new()),
        }
    }

    /// How many have arrived.
    pub fn got(&self) -> u64 {
        self.got.load(Ordering::Relaxed)
    }

    /// Resolves once `want` requests have arrived.
    pub async fn finished(&self) {
        while self.got() < self.want {
            // notify_one stores a permit: a count reached before this wait
            // still wakes it
            self.done.notified().await;
        }
    }

    fn count(&self) -> Response {
        if self.got.fetch_add(1, Ordering::Relaxed) + 1 == self.want {
            self.done.notify_one();
        }
        Response::ok(0, Bytes::new())
    }
}

impl PacketHandler for PushCounter {
    type Future = std::future::Ready<Response>;
    fn handle(&self, _request: IncomingRequest) -> Self::Future {
        std::future::ready(self.count())
    }
    fn handle_now(&self, _request: IncomingRequest) -> Result<Response, IncomingRequest> {
        Ok(self.count())
    }
}
