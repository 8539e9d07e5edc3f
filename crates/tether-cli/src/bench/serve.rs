//! `tether bench --serve ADDR`: the server side of the two-process bench.
//!
//! Starts every server of [`served()`] on one current-thread runtime on a
//! thread of its own (the std-blocking one on threads of its own), as the
//! in-process bench does, then the listing at ADDR (see [`super::served`]).
//! Prints each server's `serve impl=… workload-set=… addr=…` line, then
//! `serve listing=ADDR` once everything is up, and serves until SIGINT or
//! SIGTERM; then stops every server and exits 0. Stdin is not watched: a
//! server started in the background (`&`) has its stdin at /dev/null.

use std::io::Write;
use std::net::SocketAddr;

use tether::transport::tls::SelfSigned;
use tokio::sync::oneshot;

use super::conn::{start_server, ServerKind};
use super::idle::raise_open_file_limit;
use super::rig::{current_thread, serve_connections, Running, ServerRuntime};
use super::served::{certificate, listing, served, server_addr, Entry};
use crate::CliResult;

/// Serves the bench at `at` until SIGINT or SIGTERM.
pub fn serve(at: SocketAddr) -> CliResult<()> {
    if at.ip().is_unspecified() {
        // the TLS servers' certificate names this address, and the clients
        // check it against the one they reach
        return Err(format!(
            "--serve needs the address clients will reach, not {}: the TLS servers' \
             certificate names it (e.g. --serve 127.0.0.1:{})",
            at.ip(),
            at.port()
        )
        .into());
    }
    // as the in-process bench does: many clients may come and go
    raise_open_file_limit();
    let runtime = ServerRuntime::start()?;
    let control = current_thread()?;
    control.block_on(async {
        // registered before anything is printed: whoever reads the lines
        // may signal at once
        let stop = crate::interrupted()?;
        let certs = certificate(at.ip())?;
        let mut running = Vec::new();
        let served = start_all(&runtime, at, &certs, &mut running).await;
        let outcome = match served {
            Ok(listing_addr) => {
                say(&format!("serve listing={listing_addr}"));
                eprintln!(
                    "tether: bench servers up; run `tether bench --target {listing_addr}`; \
                     SIGINT or SIGTERM stops them"
                );
                stop.await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        // all at once: each may wait a little for its connections to end
        futures_util::future::join_all(running.into_iter().map(Running::stop)).await;
        outcome
    })
}

/// Starts every server, printing its line, then the listing; all go into
/// `running`, so that they are stopped whatever fails. Returns where the
/// listing is.
async fn start_all(
    runtime: &ServerRuntime,
    at: SocketAddr,
    certs: &SelfSigned,
    running: &mut Vec<Running>,
) -> CliResult<SocketAddr> {
    // the last port first: a base too high fails before anything starts
    let servers = served();
    server_addr(at, servers.len() - 1)?;
    // and the listing's own port, taken now: a busy one fails before
    // any server starts or says where it is
    let reserved = std::net::TcpListener::bind(at)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot serve the listing at {at}: {e}"))?;
    let mut entries = Vec::with_capacity(servers.len());
    for (index, (imp, set)) in servers.into_iter().enumerate() {
        let bind_at = server_addr(at, index)?;
        let kind = ServerKind::of(set, || Ok(certs.server.clone()))?;
        let server = start_server(runtime, imp, bind_at, kind)
            .await
            .map_err(|e| {
                format!(
                    "cannot start the {} server for {} at {bind_at}: {e}",
                    imp.name(),
                    set.name()
                )
            })?;
        let entry = Entry {
            imp,
            set,
            addr: server.addr(),
        };
        say(&entry.line());
        entries.push(entry);
        running.push(server);
    }
    let text = listing(&entries, &certs.ca_pem);
    let listing = runtime
        .spawn(|ready, stop| listing_server(reserved, ready, stop, text))
        .await
        .map_err(|e| format!("cannot serve the listing at {at}: {e}"))?;
    let listing_addr = listing.addr();
    running.push(listing);
    Ok(listing_addr)
}

/// Prints a line on stdout at once; a reader that has gone away (stdout
/// closed) does not stop the servers.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Sends `text` to every client that connects to `reserved`, then closes; once
/// stopped, waits for the sends still going as the other servers do.
async fn listing_server(
    reserved: std::net::TcpListener,
    ready: oneshot::Sender<SocketAddr>,
    stop: oneshot::Receiver<()>,
    text: String,
) -> CliResult<()> {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::from_std(reserved)?;
    let _ = ready.send(listener.local_addr()?);
    let text: std::sync::Arc<str> = text.into();
    serve_connections(listener, stop, |mut stream| {
        let text = text.clone();
        async move {
            let _ = stream.write_all(text.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    Ok(())
}
