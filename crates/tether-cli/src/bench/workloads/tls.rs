//! W7 tls: W1 and W2 over TLS 1.3 with the run's self-signed certificate,
//! for tokio-framed (tokio-rustls), tether-sentinel, tether-length and
//! tether-packet.
//! Headline: the session's req/s; `session_over_sessionless` is the ratio
//! of the session's req/s to the sessionless mode's (a handshake per
//! request). Every client keeps its TLS sessions, as rustls's client
//! configuration does by default, so each sessionless connection after
//! the first resumes one (a PSK handshake, no certificate), as a client
//! reconnecting to its server would: the line says `tls_resumption=1`.

use super::rtt::{latency_record, sequential, sessionless};
use super::with_server;
use crate::bench::report::Record;
use crate::bench::rig::{payload, per_sec, Ctx};
use crate::bench::{Impl, Workload};
use crate::CliResult;

/// Runs W7 for `imp`.
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let (warm, n, m) = (ctx.count(1_000), ctx.count(20_000), ctx.count(2_000));
    let p = payload(64);
    let trust = ctx.tls_client()?;
    let ((lat, total), once) = with_server(ctx, Workload::Tls, imp, move |addr| {
        ctx.run(async move {
            let session = sequential(imp, addr, Some(trust.clone()), p.clone(), warm, n).await?;
            let once = sessionless(imp, addr, Some(trust), p, m).await?;
            Ok((session, once))
        })
    })?;
    // (sequential made n requests: the req_s latency_record gives the session)
    let session_req_s = per_sec(n, total);
    let once_req_s = per_sec(m, once);
    Ok(
        latency_record(Record::new(Workload::Tls, imp, "req_s"), lat, total)
            .int("sessionless_requests", m)
            .float("sessionless_req_s", once_req_s, 0)
            .float("session_over_sessionless", session_req_s / once_req_s, 1)
            .int("tls_resumption", 1),
    )
}
