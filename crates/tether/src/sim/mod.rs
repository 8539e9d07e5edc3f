//! Device simulators: realistic peers for the demo, the CLI's `serve`
//! command, tests and benchmarks.

pub mod lines;
