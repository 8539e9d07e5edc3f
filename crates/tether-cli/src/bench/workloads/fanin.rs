//! W4 fan-in: 64 sessions open at once, each sending its share of 200,000
//! 64-byte echoes one after another; every session is its own task on the
//! client runtime. The connections are opened before the clock starts.

use std::time::Instant;

use tokio::task::JoinSet;

use super::with_server;
use crate::bench::conn::Conn;
use crate::bench::report::Record;
use crate::bench::rig::{payload, per_sec, Ctx};
use crate::bench::{Impl, Workload};
use crate::CliResult;

/// Sessions open at once.
pub const SESSIONS: u64 = 64;

/// Runs W4 for `imp` (any async implementation).
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let per_session = (ctx.count(200_000) / SESSIONS).max(1);
    let total = per_session * SESSIONS;
    let elapsed = with_server(ctx, Workload::Fanin, imp, |addr| {
        ctx.run(async move {
            let mut conns = Vec::with_capacity(SESSIONS as usize);
            for _ in 0..SESSIONS {
                conns.push(Conn::connect(imp, addr, None).await?);
            }
            let start = Instant::now();
            let mut tasks = JoinSet::new();
            for mut c in conns {
                tasks.spawn(async move {
                    let p = payload(64);
                    for _ in 0..per_session {
                        c.echo(&p).await?;
                    }
                    CliResult::Ok(c)
                });
            }
            let mut finished = Vec::with_capacity(SESSIONS as usize);
            while let Some(joined) = tasks.join_next().await {
                finished.push(joined??);
            }
            let elapsed = start.elapsed();
            for c in finished {
                c.close().await?;
            }
            Ok(elapsed)
        })
    })?;
    Ok(Record::new(Workload::Fanin, imp, "req_s")
        .int("sessions", SESSIONS)
        .int("requests", total)
        .float("req_s", per_sec(total, elapsed), 0))
}
