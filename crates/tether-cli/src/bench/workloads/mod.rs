//! W1–W7 of BENCHMARKS.md, one function per workload and implementation
//! (W8 lives in [`super::idle`]). Each starts its server on the server
//! runtime (or finds it at the `--target`), drives the clients, stops the
//! server, and returns one [`Record`].

mod bulk;
mod fanin;
mod pipelined;
pub(super) mod push;
mod rtt;
mod tls;

use std::net::SocketAddr;

use super::conn::{start_server, ServerKind};
use super::report::Record;
use super::rig::{Ctx, Servers, ANY_LOOPBACK_PORT};
use super::served::WorkloadSet;
use super::{idle, Impl, Workload};
use crate::CliResult;

/// Runs workload `w` for `imp`; `earlier` holds the results of the same
/// round so far (connect quotes rtt's, run seconds before it).
pub fn run(ctx: &Ctx, w: Workload, imp: Impl, earlier: &[Record]) -> CliResult<Record> {
    match w {
        Workload::Rtt => rtt::rtt(ctx, imp),
        Workload::Connect => rtt::connect(ctx, imp, earlier),
        Workload::Pipelined => pipelined::run(ctx, imp),
        Workload::Fanin => fanin::run(ctx, imp),
        Workload::Bulk => bulk::run(ctx, imp),
        Workload::Push => push::run(ctx, imp),
        Workload::Tls => tls::run(ctx, imp),
        Workload::Idle => idle::run(ctx, imp),
    }
}

/// Runs `f` with the address of the server of `imp` for workload `w` (of
/// its [`WorkloadSet`], the one `--serve` starts too): one started for `f`
/// and stopped afterwards whatever `f` returns, or the target's.
pub fn with_server<T>(
    ctx: &Ctx,
    w: Workload,
    imp: Impl,
    f: impl FnOnce(SocketAddr) -> CliResult<T>,
) -> CliResult<T> {
    let set = WorkloadSet::of(w);
    match &ctx.servers {
        Servers::Target(target) => f(target.addr(imp, set)?),
        Servers::Local(runtime) => {
            let kind = ServerKind::of(set, || ctx.tls_server())?;
            let server = ctx.block_on(start_server(runtime, imp, ANY_LOOPBACK_PORT, kind))?;
            let out = f(server.addr());
            ctx.client.block_on(server.stop());
            out
        }
    }
}
