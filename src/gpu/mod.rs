//! The GPU monitor: backends produce [`Observation`]s, the health model turns
//! them into node conditions, and the plugin serves those over gRPC.
//!
//! Owns what a GPU reading means. It must not know about the detector or
//! Kubernetes: its only output is a `Status` on the wire.

pub mod error;
pub mod health;
pub mod inventory;
pub mod kmsg;
pub mod metrics;
pub mod nvlink5;
pub mod nvml;
pub mod nvml_raw;
pub mod plugin;
pub mod sim;
pub mod watchdog;
pub mod xid;

pub use error::Error;

use std::fmt;
use std::time::{Duration, SystemTime};

// Condition types (True = problem).
pub const GPU_DRIVER_NOT_READY: &str = "GPUDriverNotReady";
pub const GPU_UNRESPONSIVE: &str = "GPUUnresponsive";
pub const GPU_LOST: &str = "GPULost";
pub const GPU_RESET_REQUIRED: &str = "GPUResetRequired";
pub const GPU_REBOOT_REQUIRED: &str = "GPURebootRequired";
pub const GPU_MEMORY_UNHEALTHY: &str = "GPUMemoryUnhealthy";
pub const GPU_HARDWARE_FAULT: &str = "GPUHardwareFault";
pub const GPU_NVLINK_DOWN: &str = "GPUNVLinkDown";
pub const GPU_NVLINK_DEGRADED: &str = "GPUNVLinkDegraded";
pub const GPU_THERMAL_THROTTLING: &str = "GPUThermalThrottling";
pub const GPU_MISSING: &str = "GPUMissing";
pub const GPU_PCIE_LINK_DEGRADED: &str = "GPUPCIeLinkDegraded";
pub const GPU_FABRIC_NOT_READY: &str = "GPUFabricNotReady";

/// Every condition type this monitor reports, in report order.
pub const SUPPORTED_CONDITIONS: [&str; 13] = [
    GPU_DRIVER_NOT_READY,
    GPU_UNRESPONSIVE,
    GPU_MISSING,
    GPU_LOST,
    GPU_RESET_REQUIRED,
    GPU_REBOOT_REQUIRED,
    GPU_MEMORY_UNHEALTHY,
    GPU_HARDWARE_FAULT,
    GPU_NVLINK_DOWN,
    GPU_NVLINK_DEGRADED,
    GPU_FABRIC_NOT_READY,
    GPU_PCIE_LINK_DEGRADED,
    GPU_THERMAL_THROTTLING,
];

/// The index of a GPU seen only in the kernel log, not enumerated by the
/// driver (often one that has just fallen off the bus).
pub const UNENUMERATED: u32 = u32::MAX;
/// The PCI address of the GPU a kernel report names none for.
pub const UNKNOWN_PCI: &str = "unknown";

/// Who a GPU is: everything an operator needs to find the board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    pub index: u32,
    pub uuid: String,
    pub pci_bus_id: String,
    pub serial: String,
    pub name: String,
}

impl GpuIdentity {
    /// The stand-in for GPUs a kernel report names no tracked address for.
    pub fn is_unknown(&self) -> bool {
        self.index == UNENUMERATED && self.pci_bus_id == UNKNOWN_PCI
    }
}

impl fmt::Display for GpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unknown() {
            return f.write_str(
                "an unknown GPU (the kernel log gave no address, or more GPUs than are tracked)",
            );
        }
        if self.index == UNENUMERATED {
            return write!(
                f,
                "gpu=unknown pci={} (not enumerated by the driver)",
                self.pci_bus_id
            );
        }
        write!(
            f,
            "gpu={} uuid={} pci={} serial={}",
            self.index, self.uuid, self.pci_bus_id, self.serial
        )
    }
}

/// GPU counts by source; `None` where a source could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounts {
    /// What NVML enumerates.
    pub nvml: Option<u32>,
    /// NVIDIA display and 3D controllers in PCI sysfs (they stay listed when
    /// the driver failed to initialise one).
    pub sysfs: Option<u32>,
    /// `/dev/nvidiaN` nodes.
    pub dev_nodes: Option<u32>,
    /// Configured (`--expected-gpus`).
    pub expected: Option<u32>,
}

/// Something a backend saw: about the driver, or about one GPU (by index).
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The driver (NVML) cannot be reached; `reason` says why.
    DriverNotReady { reason: String, at: SystemTime },
    /// The driver answers and sees these GPUs.
    DriverReady {
        gpus: Vec<GpuIdentity>,
        version: String,
        at: SystemTime,
    },
    /// A driver call did not return within `waited`.
    Unresponsive {
        call: String,
        gpu: Option<u32>,
        waited: Duration,
        at: SystemTime,
    },
    /// The backend that reads the driver stopped (it panicked, and waits to
    /// be restarted): no readings come until it sends `Responsive` again.
    BackendDown { reason: String, at: SystemTime },
    /// Driver calls return in time again.
    Responsive { at: SystemTime },
    /// Degrees left before the GPU slows down (≤ 0: at or past it).
    MarginTemperature {
        gpu: u32,
        celsius: i32,
        at: SystemTime,
    },
    /// The GPU's own slowdown temperature, °C.
    SlowdownThreshold { gpu: u32, celsius: i32 },
    /// One clock-event sample: hardware, thermal or power-brake slowdown
    /// active; whether the GPU was idle.
    ClockEvents {
        gpu: u32,
        slowdown: bool,
        idle: bool,
        at: SystemTime,
    },
    /// Row remapping state (Ampere and later).
    RemappedRows {
        gpu: u32,
        pending: bool,
        failure: bool,
        uncorrectable: u32,
        at: SystemTime,
    },
    /// Uncorrectable ECC errors since the driver loaded.
    VolatileUncorrectableEcc {
        gpu: u32,
        count: u64,
        at: SystemTime,
    },
    /// PCIe link: current and maximum generation and width.
    PcieLink {
        gpu: u32,
        width: u32,
        max_width: u32,
        at: SystemTime,
    },
    /// PCIe link generation, current and maximum.
    PcieGen {
        gpu: u32,
        generation: u32,
        max_generation: u32,
        at: SystemTime,
    },
    /// NVLink links reported active and inactive (links the GPU does not
    /// support are left out).
    NvLinks {
        gpu: u32,
        active: Vec<u32>,
        inactive: Vec<u32>,
        at: SystemTime,
    },
    /// How many GPUs each source sees.
    GpuCount { counts: GpuCounts, at: SystemTime },
    /// Retired pages (pre-Ampere GPUs; Ampere and later remap rows instead).
    RetiredPages {
        gpu: u32,
        single_bit: u32,
        double_bit: u32,
        pending: bool,
        at: SystemTime,
    },
    /// Corrected ECC errors since the driver loaded (cumulative).
    CorrectedEcc {
        gpu: u32,
        count: u64,
        at: SystemTime,
    },
    /// A data source stopped working (kernel log unreadable, …); what it
    /// would have seen is now missed.
    SourceDegraded {
        source: String,
        reason: String,
        at: SystemTime,
    },
    /// PCIe replay counter (cumulative).
    PcieReplays {
        gpu: u32,
        count: u64,
        at: SystemTime,
    },
    /// NVLink replay, recovery and CRC error counters summed over active
    /// links (cumulative).
    NvlinkErrors {
        gpu: u32,
        count: u64,
        at: SystemTime,
    },
    /// NVLink fabric registration: `NVML_GPU_FABRIC_STATE_*` (1 not started,
    /// 2 in progress, 3 completed) and its result (0 = success).
    Fabric {
        gpu: u32,
        state: u32,
        status: u32,
        at: SystemTime,
    },
    /// InfoROM checksum validation.
    InfoRom {
        gpu: u32,
        valid: bool,
        at: SystemTime,
    },
    /// Memory in use, percent of the total.
    MemoryUsage {
        gpu: u32,
        used_percent: f64,
        at: SystemTime,
    },
    /// Operator thresholds (flags or the detector's `pluginParameters`):
    /// a temperature that counts as throttling instead of each GPU's own
    /// slowdown, and a memory use above which a Normal event is sent.
    Thresholds {
        temperature: Option<i32>,
        memory_percent: Option<f64>,
    },
    /// An XID error was reported for the GPU.
    Xid { gpu: u32, xid: u32, at: SystemTime },
    /// An XID from the kernel log, named by PCI address (the GPU may not be
    /// enumerated at all); `detail` is the driver's text after the number.
    KernelXid {
        pci: kmsg::PciAddr,
        xid: u32,
        detail: String,
        at: SystemTime,
        /// Read again after a restart: rebuilds state, sends no event.
        replay: bool,
    },
    /// A kernel report of an XID (a GPU that fell off the bus) that names no
    /// GPU we could find: it still counts, for an unknown GPU.
    KernelXidUnknownGpu {
        xid: u32,
        detail: String,
        at: SystemTime,
        replay: bool,
    },
    /// An NVSwitch error from the kernel log (`SXid`), named by the switch's PCI address.
    SXid {
        pci: kmsg::PciAddr,
        sxid: u32,
        fatal: bool,
        detail: String,
        at: SystemTime,
        replay: bool,
    },
    /// The driver's recovery action for the GPU (NVML field 230).
    RecoveryAction {
        gpu: u32,
        action: u32,
        at: SystemTime,
    },
    /// The GPU stopped answering (NVML `GPU_IS_LOST` or equivalent).
    Lost { gpu: u32, at: SystemTime },
    /// A core temperature reading, °C.
    Temperature {
        gpu: u32,
        celsius: i32,
        at: SystemTime,
    },
    /// The GPU was reset and answers again: faults that a reset clears are gone.
    Reset { gpu: u32, at: SystemTime },
}

impl Observation {
    /// When it was seen (`None` for settings, which have no time).
    pub fn at(&self) -> Option<SystemTime> {
        match self {
            Self::DriverNotReady { at, .. }
            | Self::DriverReady { at, .. }
            | Self::Unresponsive { at, .. }
            | Self::BackendDown { at, .. }
            | Self::Responsive { at, .. }
            | Self::ClockEvents { at, .. }
            | Self::RemappedRows { at, .. }
            | Self::VolatileUncorrectableEcc { at, .. }
            | Self::PcieLink { at, .. }
            | Self::PcieGen { at, .. }
            | Self::NvLinks { at, .. }
            | Self::GpuCount { at, .. }
            | Self::RetiredPages { at, .. }
            | Self::CorrectedEcc { at, .. }
            | Self::SourceDegraded { at, .. }
            | Self::PcieReplays { at, .. }
            | Self::NvlinkErrors { at, .. }
            | Self::Fabric { at, .. }
            | Self::InfoRom { at, .. }
            | Self::MemoryUsage { at, .. }
            | Self::Xid { at, .. }
            | Self::KernelXid { at, .. }
            | Self::KernelXidUnknownGpu { at, .. }
            | Self::SXid { at, .. }
            | Self::MarginTemperature { at, .. }
            | Self::RecoveryAction { at, .. }
            | Self::Lost { at, .. }
            | Self::Temperature { at, .. }
            | Self::Reset { at, .. } => Some(*at),
            Self::SlowdownThreshold { .. } | Self::Thresholds { .. } => None,
        }
    }

    /// The GPU this is about, or `None` for the driver as a whole.
    pub fn gpu(&self) -> Option<u32> {
        match self {
            Self::Xid { gpu, .. }
            | Self::Lost { gpu, .. }
            | Self::Temperature { gpu, .. }
            | Self::Reset { gpu, .. }
            | Self::RecoveryAction { gpu, .. }
            | Self::SlowdownThreshold { gpu, .. }
            | Self::ClockEvents { gpu, .. }
            | Self::RemappedRows { gpu, .. }
            | Self::VolatileUncorrectableEcc { gpu, .. }
            | Self::PcieLink { gpu, .. }
            | Self::PcieGen { gpu, .. }
            | Self::MemoryUsage { gpu, .. }
            | Self::MarginTemperature { gpu, .. }
            | Self::Fabric { gpu, .. }
            | Self::PcieReplays { gpu, .. }
            | Self::RetiredPages { gpu, .. }
            | Self::CorrectedEcc { gpu, .. }
            | Self::NvlinkErrors { gpu, .. }
            | Self::InfoRom { gpu, .. }
            | Self::NvLinks { gpu, .. } => Some(*gpu),
            Self::KernelXid { .. }
            | Self::KernelXidUnknownGpu { .. }
            | Self::SXid { .. }
            | Self::SourceDegraded { .. }
            | Self::GpuCount { .. }
            | Self::Thresholds { .. }
            | Self::DriverNotReady { .. }
            | Self::DriverReady { .. }
            | Self::Unresponsive { .. }
            | Self::BackendDown { .. }
            | Self::Responsive { .. } => None,
        }
    }
}
