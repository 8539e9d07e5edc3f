//! Device simulators: realistic peers for the demo, the CLI's `serve`
//! command, tests and benchmarks.
//!
//! - [`lines`]: a line-protocol device served by the session layer.
//! - [`mount`]: a telescope mount controller that talks through a
//!   [`Pair`](crate::pair::Pair) of one-way sockets.

pub mod lines;
pub mod mount;
