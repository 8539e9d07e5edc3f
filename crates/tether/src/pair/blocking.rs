//! The pair for synchronous programs: the same operations, blocking.
//!
//! Each [`Pair`] and [`OneClientServer`] here owns a small tokio runtime
//! (one worker thread) that runs the async one, so connections are watched
//! and drops noticed even while the program is busy elsewhere. Do not call
//! these from inside an async runtime; use [`super::Pair`] there.
//!
//! ```
//! use tether::pair::blocking::Pair;
//! use tether::pair::PairConfig;
//!
//! # fn main() -> Result<(), tether::pair::PairError> {
//! let any_port = "tcp://127.0.0.1:0".parse()?;
//! let a = Pair::text(&any_port, PairConfig::default(), "\r\n")?;
//! let b = Pair::text(&any_port, PairConfig::default(), "\r\n")?;
//! let b_at = b.local_endpoint();
//! let a_at = a.local_endpoint();
//! let t = std::thread::spawn(move || b.connect_to(&a_at).map(|()| b));
//! a.connect_to(&b_at)?;
//! let b = t.join().unwrap()?;
//! a.write_text("ping")?;
//! assert_eq!(b.read_text()?, "ping");
//! # Ok(()) }
//! ```

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio_util::codec::{Decoder, Encoder};

use super::{PairConfig, PairError, ServerConfig};
use crate::framing::SentinelCodec;
use crate::transport::{Endpoint, PeerAddr};

/// Runs `read` on `rt`, giving up after `timeout` with `Ok(None)`. A
/// frame that arrives later is not lost: dropping the read leaves it
/// queued for the next one.
fn read_within<T>(
    rt: &Runtime,
    timeout: Duration,
    read: impl std::future::Future<Output = Result<T, PairError>>,
) -> Result<Option<T>, PairError> {
    rt.block_on(async { tokio::time::timeout(timeout, read).await })
        .map_or(Ok(None), |r| r.map(Some))
}

fn runtime() -> Result<Arc<Runtime>, PairError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tether-pair")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e: io::Error| PairError::Transport(e.into()))
}

/// A blocking [`super::Pair`].
pub struct Pair<E, D: Decoder> {
    // Declared first so it is dropped (and its tasks stopped) before the runtime.
    inner: super::Pair<E, D>,
    rt: Arc<Runtime>,
}

impl<E, D> Pair<E, D>
where
    E: Send + 'static,
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// See [`super::Pair::bind`].
    pub fn bind(
        listen: &Endpoint,
        config: PairConfig,
        encoder: E,
        decoder: D,
    ) -> Result<Self, PairError> {
        let rt = runtime()?;
        let inner = rt.block_on(super::Pair::bind(listen, config, encoder, decoder))?;
        Ok(Pair { inner, rt })
    }

    /// See [`super::Pair::connect`].
    pub fn connect(&self) -> Result<(), PairError> {
        self.rt.block_on(self.inner.connect())
    }

    /// See [`super::Pair::connect_to`].
    pub fn connect_to(&self, peer: &Endpoint) -> Result<(), PairError> {
        self.rt.block_on(self.inner.connect_to(peer))
    }

    /// See [`super::Pair::read`].
    pub fn read(&self) -> Result<D::Item, PairError> {
        self.rt.block_on(self.inner.read())
    }

    /// [`read`](Self::read), giving up after `timeout` (`Ok(None)`; no
    /// frame is lost).
    pub fn read_timeout(&self, timeout: Duration) -> Result<Option<D::Item>, PairError> {
        read_within(&self.rt, timeout, self.inner.read())
    }

    /// See [`super::Pair::write`].
    pub fn write<I>(&self, item: I) -> Result<(), PairError>
    where
        E: Encoder<I>,
        <E as Encoder<I>>::Error: StdError + Send + Sync + 'static,
    {
        self.rt.block_on(self.inner.write(item))
    }

    /// See [`super::Pair::client_connected`].
    pub fn client_connected(&self) -> bool {
        self.inner.client_connected()
    }

    /// See [`super::Pair::server_connected`].
    pub fn server_connected(&self) -> bool {
        self.inner.server_connected()
    }

    /// See [`super::Pair::connected`].
    pub fn connected(&self) -> bool {
        self.inner.connected()
    }

    /// See [`super::Pair::local_endpoint`].
    pub fn local_endpoint(&self) -> Endpoint {
        self.inner.local_endpoint()
    }

    /// See [`super::Pair::display_address`].
    pub fn display_address(&self) -> &str {
        self.inner.display_address()
    }

    /// See [`super::Pair::peer`].
    pub fn peer(&self) -> Option<Endpoint> {
        self.inner.peer()
    }

    /// See [`super::Pair::wait_disconnected`].
    pub fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.rt.block_on(self.inner.wait_disconnected(timeout))
    }

    /// See [`super::Pair::losses`].
    pub fn losses(&self) -> u64 {
        self.inner.losses()
    }

    /// See [`super::Pair::refused`].
    pub fn refused(&self) -> u64 {
        self.inner.refused()
    }

    /// See [`super::Pair::disconnect`].
    pub fn disconnect(&self) {
        // Runs the pair's bookkeeping (and the connect callback) on its runtime.
        let _guard = self.rt.enter();
        self.inner.disconnect()
    }

    /// See [`super::Pair::close`].
    pub fn close(&self) {
        self.rt.block_on(self.inner.close())
    }

    /// The async pair inside.
    pub fn get_ref(&self) -> &super::Pair<E, D> {
        &self.inner
    }
}

impl Pair<SentinelCodec, SentinelCodec> {
    /// See [`super::Pair::text`].
    pub fn text(
        listen: &Endpoint,
        config: PairConfig,
        terminator: impl Into<Bytes>,
    ) -> Result<Self, PairError> {
        let codec = SentinelCodec::new(terminator);
        Self::bind(listen, config, codec.clone(), codec)
    }

    /// See [`super::Pair::json_lines`].
    pub fn json_lines(listen: &Endpoint, config: PairConfig) -> Result<Self, PairError> {
        Self::text(listen, config, &b"\n"[..])
    }
}

impl<E, D> Pair<E, D>
where
    E: Encoder<Bytes> + Send + 'static,
    <E as Encoder<Bytes>>::Error: StdError + Send + Sync + 'static,
    D: Decoder<Item = BytesMut> + Clone + Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// See [`super::Pair::read_text`].
    pub fn read_text(&self) -> Result<String, PairError> {
        self.rt.block_on(self.inner.read_text())
    }

    /// See [`super::Pair::write_text`].
    pub fn write_text(&self, text: &str) -> Result<(), PairError> {
        self.rt.block_on(self.inner.write_text(text))
    }

    /// See [`super::Pair::read_json`].
    pub fn read_json<T: DeserializeOwned>(&self) -> Result<T, PairError> {
        self.rt.block_on(self.inner.read_json())
    }

    /// See [`super::Pair::write_json`].
    pub fn write_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), PairError> {
        self.rt.block_on(self.inner.write_json(value))
    }
}

/// A blocking [`super::OneClientServer`].
pub struct OneClientServer<D: Decoder> {
    inner: super::OneClientServer<D>,
    rt: Arc<Runtime>,
}

impl<D> OneClientServer<D>
where
    D: Decoder + Clone + Send + 'static,
    D::Item: Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// See [`super::OneClientServer::bind`].
    pub fn bind(endpoint: &Endpoint, decoder: D, config: ServerConfig) -> Result<Self, PairError> {
        let rt = runtime()?;
        let inner = rt.block_on(super::OneClientServer::bind(endpoint, decoder, config))?;
        Ok(OneClientServer { inner, rt })
    }

    /// See [`super::OneClientServer::local_endpoint`].
    pub fn local_endpoint(&self) -> Endpoint {
        self.inner.local_endpoint()
    }

    /// See [`super::OneClientServer::display_address`].
    pub fn display_address(&self) -> &str {
        self.inner.display_address()
    }

    /// See [`super::OneClientServer::connected`].
    pub fn connected(&self) -> bool {
        self.inner.connected()
    }

    /// See [`super::OneClientServer::client`].
    pub fn client(&self) -> Option<PeerAddr> {
        self.inner.client()
    }

    /// See [`super::OneClientServer::refused`].
    pub fn refused(&self) -> u64 {
        self.inner.refused()
    }

    /// See [`super::OneClientServer::wait_disconnected`].
    pub fn wait_disconnected(&self, timeout: Duration) -> bool {
        self.rt.block_on(self.inner.wait_disconnected(timeout))
    }

    /// See [`super::OneClientServer::disconnect`].
    pub fn disconnect(&self) {
        let _guard = self.rt.enter();
        self.inner.disconnect()
    }

    /// See [`super::OneClientServer::wait_connected`].
    pub fn wait_connected(&self, timeout: Duration) -> Result<PeerAddr, PairError> {
        self.rt.block_on(self.inner.wait_connected(timeout))
    }

    /// See [`super::OneClientServer::read`].
    pub fn read(&self) -> Result<D::Item, PairError> {
        self.rt.block_on(self.inner.read())
    }

    /// [`read`](Self::read), giving up after `timeout` (`Ok(None)`; no
    /// frame is lost).
    pub fn read_timeout(&self, timeout: Duration) -> Result<Option<D::Item>, PairError> {
        read_within(&self.rt, timeout, self.inner.read())
    }

    /// See [`super::OneClientServer::close`].
    pub fn close(&self) {
        self.rt.block_on(self.inner.close())
    }
}

impl<D> OneClientServer<D>
where
    D: Decoder<Item = BytesMut> + Clone + Send + 'static,
    D::Error: StdError + Send + Sync + 'static,
{
    /// See [`super::OneClientServer::read_text`].
    pub fn read_text(&self) -> Result<String, PairError> {
        self.rt.block_on(self.inner.read_text())
    }

    /// See [`super::OneClientServer::read_json`].
    pub fn read_json<T: DeserializeOwned>(&self) -> Result<T, PairError> {
        self.rt.block_on(self.inner.read_json())
    }
}
