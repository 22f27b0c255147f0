//! One module per applet: parse flags, compose library modules, report.
//! Applets never call each other.

pub mod demo;
pub mod detector;
pub mod gpu_monitor;
pub mod probe;
pub mod validate_config;
