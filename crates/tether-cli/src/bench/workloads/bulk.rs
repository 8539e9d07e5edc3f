//! W5 bulk: one session, 512 echoes of 1 MiB. The figure is MiB/s each
//! way (every MiB goes out and comes back).

use std::time::Instant;

use super::with_server;
use crate::bench::conn::{BlockingConn, Conn};
use crate::bench::report::Record;
use crate::bench::rig::{payload, per_sec, Ctx};
use crate::bench::{Impl, Workload};
use crate::CliResult;

/// The payload: 1 MiB.
pub const SIZE: usize = 1024 * 1024;

/// Runs W5 for `imp` (every implementation).
pub fn run(ctx: &Ctx, imp: Impl) -> CliResult<Record> {
    let n = ctx.count(512);
    let p = payload(SIZE);
    let elapsed = with_server(ctx, Workload::Bulk, imp, |addr| {
        if imp.is_blocking() {
            let mut c = BlockingConn::connect(imp, addr)?;
            let start = Instant::now();
            for _ in 0..n {
                c.echo(&p)?;
            }
            let elapsed = start.elapsed();
            c.close()?;
            Ok(elapsed)
        } else {
            let p = p.clone();
            ctx.run(async move {
                let mut c = Conn::connect(imp, addr, None).await?;
                let start = Instant::now();
                for _ in 0..n {
                    c.echo(&p).await?;
                }
                let elapsed = start.elapsed();
                c.close().await?;
                Ok(elapsed)
            })
        }
    })?;
    Ok(Record::new(Workload::Bulk, imp, "mib_s")
        .int("requests", n)
        .int("payload_bytes", SIZE as u64)
        .float("mib_s", per_sec(n, elapsed), 1))
}
