//! One module per applet: parse flags, compose library modules, report.
//! Applets never call each other.

/// `println!` that does not panic when stdout is a closed pipe
/// (`npd-ext probe SOCKET | head`): output to a reader that left is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod demo;
pub mod detector;
pub mod gpu_monitor;
pub mod health_checker;
pub mod log_counter;
pub mod prepare_dir;
pub mod probe;
pub mod validate_config;
