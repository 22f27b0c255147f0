//! npd-ext: a node problem detector for Kubernetes GPU fleets.
//!
//! Data flows one way: sources → monitors (`monitor`, `gpu`) → the detector's
//! fan-in (`detector`) → the condition manager (`conditions`) → exporters
//! (`exporter`). `cmd` holds one thin module per applet that parses flags
//! and composes these. Every long-lived task runs under `supervisor`, which
//! restarts one that panics; `backoff` is the one retry backoff.

pub mod backoff;
pub mod cli;
pub mod cmd;
pub mod conditions;
pub mod config;
pub mod detector;
pub mod exporter;
pub mod gpu;
pub mod helpers;
pub mod kmsg;
pub mod liveness;
pub mod logging;
pub mod monitor;
pub mod problem;
pub mod rpc;
pub mod shutdown;
pub mod supervisor;
pub mod timer;

/// Where the unit tests' `compat` modules find upstream's files
/// (`NPD_EXT_COMPAT_DIR`); the integration tests compile the same file.
#[cfg(test)]
#[path = "../tests/common/compat.rs"]
pub(crate) mod compat_dir;

/// The version every applet reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
