//! W1–W7 of BENCHMARKS.md, one function per workload and implementation
//! (W8 lives in [`super::idle`]). Each starts its server on the server
//! runtime, drives the clients, stops the server, and returns one
//! [`Record`].

mod bulk;
mod fanin;
mod pipelined;
mod push;
mod rtt;
mod tls;

use super::conn::start_echo_server;
use super::report::Record;
use super::rig::{Ctx, Running};
use super::{idle, Impl, Workload};
use crate::CliResult;

/// Runs workload `w` for `imp`; `earlier` holds this run's results so far
/// (connect quotes rtt's).
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

/// Runs `f` with the echo server of `imp` (TLS when `tls`), stopping the
/// server afterwards whatever `f` returns.
pub fn with_echo_server<T>(
    ctx: &Ctx,
    imp: Impl,
    tls: bool,
    f: impl FnOnce(&Running) -> CliResult<T>,
) -> CliResult<T> {
    let server = ctx.block_on(start_echo_server(ctx, imp, tls))?;
    let out = f(&server);
    ctx.client.block_on(server.stop());
    out
}
