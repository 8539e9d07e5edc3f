//! The bench's machinery: the two runtimes, where the servers are (here or
//! at a `--target`), a server's lifetime and its accept loop, the scaled
//! counts, the push clients' count message, payloads, and bounded waits.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tether::transport::tls::SelfSigned;
use tether::transport::{Endpoint, TlsClientConfig, TlsServerConfig};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

use super::baselines::StdServer;
use super::served::{certificate, Target};
use crate::CliResult;

/// Where an in-process server binds: loopback, a free port.
pub const ANY_LOOPBACK_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// How long any single step (a connect, a server start, a whole
/// workload's client side) may take before the bench gives up on it with
/// an error instead of hanging. Far above any full-size run here.
pub const STEP_LIMIT: Duration = Duration::from_secs(300);

/// Everything a workload needs: the client runtime, where the servers
/// are, the counts, the TLS material.
pub struct Ctx {
    /// The client side: a current-thread runtime driven by the main thread.
    pub client: Runtime,
    /// Where the servers run.
    pub servers: Servers,
    /// The divisor applied to every count (`--quick`, `--scale`).
    pub divisor: u64,
    tls: std::sync::OnceLock<SelfSigned>,
}

/// Where a workload finds its servers.
pub enum Servers {
    /// Started for each workload on a runtime of this process (`procs=1`).
    Local(ServerRuntime),
    /// Already running in a `tether bench --serve` process (`procs=2`).
    Target(Target),
}

impl Ctx {
    /// The in-process bench: builds both runtimes.
    pub fn new(divisor: u64) -> CliResult<Ctx> {
        Ok(Ctx {
            client: current_thread()?,
            servers: Servers::Local(ServerRuntime::start()?),
            divisor,
            tls: std::sync::OnceLock::new(),
        })
    }

    /// The two-process bench: clients here, servers at `target`.
    pub fn targeting(divisor: u64, target: Target) -> CliResult<Ctx> {
        Ok(Ctx {
            client: current_thread()?,
            servers: Servers::Target(target),
            divisor,
            tls: std::sync::OnceLock::new(),
        })
    }

    /// A count of BENCHMARKS.md divided by the divisor, at least 1.
    pub fn count(&self, full: u64) -> u64 {
        (full / self.divisor).max(1)
    }

    /// The `procs=` of workload results measured against these servers.
    pub fn procs(&self) -> u8 {
        match self.servers {
            Servers::Local(_) => 1,
            Servers::Target(_) => 2,
        }
    }

    /// The TLS configuration of the local servers: the bench's self-signed
    /// certificate for 127.0.0.1 (as `--serve` makes one), made once per run.
    pub fn tls_server(&self) -> CliResult<TlsServerConfig> {
        Ok(self.self_signed()?.server.clone())
    }

    /// The TLS configuration of the clients: trusts the local servers'
    /// certificate, or the one the target handed out.
    pub fn tls_client(&self) -> CliResult<TlsClientConfig> {
        match &self.servers {
            Servers::Local(_) => Ok(self.self_signed()?.client.clone()),
            Servers::Target(t) => Ok(t.tls_client()),
        }
    }

    fn self_signed(&self) -> CliResult<&SelfSigned> {
        if let Some(t) = self.tls.get() {
            return Ok(t);
        }
        let made = certificate(ANY_LOOPBACK_PORT.ip())?;
        Ok(self.tls.get_or_init(|| made))
    }

    /// Runs `fut` on the client runtime within [`STEP_LIMIT`], in
    /// `block_on` itself: for setting up, not for measured clients (see
    /// [`run`](Self::run)).
    pub fn block_on<T>(&self, fut: impl Future<Output = CliResult<T>>) -> CliResult<T> {
        self.client.block_on(bounded("the client side", fut))
    }

    /// Runs a measured client as a task of the client runtime within
    /// [`STEP_LIMIT`], as an application's code runs. In `block_on`
    /// instead, every wake-up from another task (a packet connection's
    /// task handing over a response) costs tokio's current-thread
    /// scheduler an extra non-blocking poll of the driver: one more
    /// `epoll_wait` per round trip that says nothing about the protocol.
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = CliResult<T>> + Send + 'static,
    ) -> CliResult<T> {
        let task = self.client.spawn(bounded("the client side", fut));
        self.client
            .block_on(task)
            .map_err(|e| format!("the client task failed: {e}"))?
    }
}

/// `fut`, or an error naming `what` after [`STEP_LIMIT`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = CliResult<T>>) -> CliResult<T> {
    match tokio::time::timeout(STEP_LIMIT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not finish within {STEP_LIMIT:?}").into()),
    }
}

/// A current-thread runtime with timers and I/O.
pub fn current_thread() -> CliResult<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A current-thread runtime running on a thread of its own until dropped;
/// servers are spawned onto it through its handle.
pub struct ServerRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerRuntime {
    /// Starts the runtime's thread.
    pub fn start() -> CliResult<ServerRuntime> {
        let rt = current_thread()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // Connections still open end here, without waiting.
                rt.shutdown_background();
            })?;
        Ok(ServerRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Starts a tokio server: `serve` binds, sends its address on `ready`,
    /// and serves until `stop` resolves (or fails before `ready`).
    pub async fn spawn<F, Fut>(&self, serve: F) -> CliResult<Running>
    where
        F: FnOnce(oneshot::Sender<SocketAddr>, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = CliResult<()>> + Send + 'static,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = self.handle.spawn(serve(ready_tx, stop_rx));
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(addr)) => Ok(Running::Tokio {
                addr,
                stop: stop_tx,
                task,
            }),
            Ok(Err(_)) => match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err("the server stopped before it was ready".into()),
            },
            Err(_) => {
                task.abort();
                Err("the server was not ready within 10 s".into())
            }
        }
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server started for one workload; [`stop`](Self::stop) ends it.
pub enum Running {
    /// A task on the server runtime.
    Tokio {
        /// Where it listens.
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<CliResult<()>>,
    },
    /// The thread-per-connection baseline.
    Std(StdServer),
    /// tether's blocking server (a thread per connection too).
    Blocking(tether::blocking::RunningServer, SocketAddr),
}

impl Running {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Running::Tokio { addr, .. } => *addr,
            Running::Std(s) => s.addr(),
            Running::Blocking(_, addr) => *addr,
        }
    }

    /// Stops accepting; connections still open close with their clients.
    /// Waits up to 10 s for the server to finish.
    pub async fn stop(self) {
        match self {
            Running::Tokio { stop, task, .. } => {
                let _ = stop.send(());
                let abort = task.abort_handle();
                if tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            }
            // (both block while their threads end: not on this runtime's
            // thread, where `--serve` stops every server at once)
            Running::Std(s) => {
                let _ = tokio::task::spawn_blocking(move || s.stop()).await;
            }
            Running::Blocking(s, _) => {
                let _ =
                    tokio::task::spawn_blocking(move || s.shutdown(Duration::from_secs(1))).await;
            }
        }
    }
}

/// A listener the bench's own accept loop ([`serve_connections`]) takes
/// connections from: tokio's, or tether's.
pub trait Accept {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// Waits for the next connection.
    fn accept_next(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_next(&mut self) -> io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

impl Accept for tether::transport::Listener {
    type Stream = tether::transport::ByteStream;
    async fn accept_next(&mut self) -> io::Result<Self::Stream> {
        self.accept().await
    }
}

/// The accept loop of the servers the bench writes itself: accepts on
/// `listener` until `stop` resolves, and runs what `serve` makes of each
/// connection as a task of its own; then [`drain`]s those tasks.
pub async fn serve_connections<L, F, Fut>(mut listener: L, stop: impl Future, mut serve: F)
where
    L: Accept,
    F: FnMut(L::Stream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stop);
    // connection tasks are kept, so that stopping waits for them: nothing
    // from this workload is left running into the next one
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept_next() => match accepted {
                Ok(stream) => stream,
                Err(_) => {
                    // EMFILE and friends: back off rather than spin
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        conns.spawn(serve(stream));
    }
    drain(conns).await;
}

/// Waits up to 5 s for a server's connection tasks to end (their clients
/// have gone), then aborts what is left.
async fn drain(mut conns: tokio::task::JoinSet<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

/// How a push client tells the server how many messages it wants, in
/// both modes (in-process and `--serve`): its first message is a frame
/// (or, on the packet layer, a request) of 8 bytes, the count big-endian;
/// the server then pushes that many.
pub struct PushCount;

impl PushCount {
    /// The client's first message: the count `n`.
    pub fn encode(n: u64) -> Bytes {
        Bytes::copy_from_slice(&n.to_be_bytes())
    }

    /// The count in a client's first message, if it is one.
    /// `None` unless it is 1 to [`PushCount::MAX`]: a count of `u64::MAX`
    /// would keep the server busy for ever (and a served one shares its
    /// runtime with every other server).
    pub fn decode(message: &[u8]) -> Option<u64> {
        let n = u64::from_be_bytes(message.try_into().ok()?);
        (1..=Self::MAX).contains(&n).then_some(n)
    }

    /// The most messages a client may ask for: W6's count.
    pub const MAX: u64 = super::workloads::push::MESSAGES_PER_CLIENT;

    /// How long a push server waits for a client's count (and for it to
    /// hang up afterwards) before closing the connection.
    pub const ASK_TIMEOUT: Duration = Duration::from_secs(10);
}

/// tether's endpoint for `addr`: TCP, or TLS when `tls`.
pub fn endpoint(addr: SocketAddr, tls: bool) -> Endpoint {
    let (host, port) = (addr.ip().to_string(), addr.port());
    if tls {
        Endpoint::Tls { host, port }
    } else {
        Endpoint::Tcp { host, port }
    }
}

/// A payload of `len` printable bytes (`a`..`z`): valid for every framing,
/// the `\n` sentinel included.
pub fn payload(len: usize) -> Bytes {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Requests per second.
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_printable_and_sentinel_free() {
        let p = payload(64);
        assert_eq!(p.len(), 64);
        assert!(p.iter().all(|b| b.is_ascii_lowercase()));
        assert!(!p.contains(&b'\n'));
    }

    #[test]
    fn push_counts_round_trip() {
        let m = PushCount::encode(100_000);
        assert_eq!(m.len(), 8);
        assert_eq!(PushCount::decode(&m), Some(100_000));
        assert_eq!(PushCount::decode(b"short"), None);
        assert_eq!(PushCount::decode(&PushCount::encode(0)), None);
        assert_eq!(PushCount::decode(&PushCount::encode(u64::MAX)), None);
    }
}
