//! Why a GPU backend could not read the driver: the cases its caller treats
//! differently (a hung call is `GPUUnresponsive`; the rest mean the driver
//! is not ready).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No library could be loaded; one message per path tried.
    #[error("cannot load NVML ({})", .tried.join("; "))]
    LibraryNotLoaded { tried: Vec<String> },
    /// The library loaded, the kernel driver is not there.
    #[error("the NVIDIA kernel driver is not loaded")]
    DriverNotLoaded,
    /// A call the backend cannot go on without failed.
    #[error("{call} failed: {reason}")]
    Call { call: &'static str, reason: String },
    /// A call did not return within its deadline; its thread stays stuck.
    #[error("{call} did not return within {waited:?}")]
    Hung {
        call: &'static str,
        gpu: Option<u32>,
        waited: Duration,
    },
    /// The worker thread ended.
    #[error("the NVML worker thread ended")]
    WorkerGone,
}
