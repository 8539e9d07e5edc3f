//! [`serve`]: accept connections and serve each with a packet connection.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{Handler, PacketConfig, PacketConnection};
use crate::transport::Listener;

/// Serves every connection `listener` accepts, all at the same time, each
/// with a clone of `handler`, until `shutdown` resolves; then closes every
/// connection in order (ERQ, running handlers finish, EOF; bounded by the
/// config's `close_timeout + eof_timeout`) and returns. On a `stdio:`
/// listener it also returns once its one connection has ended.
///
/// A connection that fails (protocol error, I/O error) ends alone; the
/// others go on. A failed `accept` is logged and retried after 50 ms.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tether::packet::{serve, EchoService, PacketConfig};
/// use tether::transport::Listener;
///
/// let listener = Listener::bind(&"tcp://127.0.0.1:0".parse()?).await?;
/// println!("listening on {}", listener.display_address());
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// // ... `stop.send(())` from elsewhere (a signal handler) ends it
/// serve(listener, EchoService, PacketConfig::default(), stopped).await;
/// # drop(stop);
/// # Ok(()) }
/// ```
pub async fn serve<H, F>(mut listener: Listener, handler: H, config: PacketConfig, shutdown: F)
where
    H: Handler + Clone,
    F: Future,
{
    let limit = config.close_timeout + config.eof_timeout + Duration::from_secs(1);
    // Handles to close at shutdown. Ended ones are swept out whenever the
    // list has doubled since the last sweep: amortised O(1) per accept.
    let mut conns: Vec<PacketConnection> = Vec::new();
    let mut sweep_at = 64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let peer = stream.peer();
                    tracing::debug!(%peer, "packet connection accepted");
                    // No task per connection beside its own: it logs its end.
                    let conn = PacketConnection::spawn_named(
                        stream,
                        handler.clone(),
                        config.clone(),
                        peer,
                    );
                    if conns.len() >= sweep_at {
                        conns.retain(|c| !c.is_closed());
                        sweep_at = (conns.len() * 2).max(64);
                    }
                    let only = listener.is_spent().then(|| conn.clone());
                    conns.push(conn);
                    if let Some(only) = only {
                        // stdio: this peer is the only one there will be
                        tokio::select! {
                            _ = &mut shutdown => {}
                            _ = only.closed() => {}
                        }
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let mut closing = JoinSet::new();
    for c in conns {
        closing.spawn(async move { c.close().await });
    }
    let _ = tokio::time::timeout(limit, async {
        while closing.join_next().await.is_some() {}
    })
    .await;
}
