//! The system stats monitor (upstream NPD's metrics-only monitor).

pub mod catalog;
pub mod procfs;
