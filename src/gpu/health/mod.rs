//! The GPU health model: per-GPU state from observations, folded into node
//! conditions (True = problem) that name every affected GPU with its
//! evidence and the action to take, plus aggregated events.
//!
//! Sets and clears follow shared/reference/gpu-peers.md §6: XIDs are
//! classified by the catalog (`src/gpu/xid.rs`), the driver's recovery action
//! overrides it, an observed reset clears reset-class and link faults, and
//! memory and hardware faults stay until the board is replaced (a new serial).
//!
//! Owns what an observation means for the node's conditions and events. It
//! must not read a device, the kernel log or the network: backends bring
//! [`Observation`]s, the plugin publishes [`Snapshot`]s.
//!
//! This file holds the model, its tunables and the dispatch of each
//! observation; each fault family is an `impl HealthModel` block of its own:
//! - `state.rs`: per-GPU state, fault slots, sets, clears and readings;
//! - `flap.rs`: the flap guard;
//! - `driver.rs`: driver readiness, inventory, hung calls, GPU count, resets;
//! - `xid.rs`: XIDs, the recovery action, NVSwitch SXids, lost GPUs;
//! - `policy.rs`: the operator's XID policy (`--xid-policy`) over the catalog;
//! - `thermal.rs`: temperature, thermal margin, clock-event slowdown;
//! - `memory.rs`: row remapping, retired pages, ECC, InfoROM, memory use;
//! - `links.rs`: PCIe, NVLink and fabric registration;
//! - `events.rs`: events, bursts and the backlog;
//! - `render.rs`: the node conditions and their wording.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{GpuIdentity, Observation};
use crate::config::xid_policy::XidPolicy;
use crate::problem::{Condition, ConditionStatus, Event};

mod driver;
mod events;
mod flap;
mod links;
mod memory;
mod policy;
mod render;
mod state;
mod thermal;
mod xid;

#[cfg(test)]
mod tests;

use driver::{Driver, Stuck};
use events::Burst;
use state::{GpuState, Slot};
pub use xid::{parse_recovery_change, recovery_action_name};

/// Hopper's slowdown threshold (H200 fixture: slowdown 89 °C, shutdown 95 °C).
pub const DEFAULT_SLOWDOWN_CELSIUS: i32 = 89;
/// A throttling GPU must cool this far below slowdown before it counts as clear.
pub const THERMAL_HYSTERESIS_CELSIUS: i32 = 5;
/// Recent events kept for clients that have not yet seen them.
pub const EVENT_BACKLOG: usize = 64;
/// The same XID on the same GPU from NVML and from the kernel log within
/// this interval is one report.
const XID_CORRELATION: Duration = Duration::from_secs(10);
/// Repeats of one (GPU, reason, XID) within this window are counted, not sent.
pub const EVENT_WINDOW: Duration = Duration::from_secs(60);
/// Clock-event samples kept per GPU (10 min at the 10 s fast poll).
pub const SLOWDOWN_WINDOW: usize = 60;
/// Slowdown active in at least this share of the window sets throttling…
const SLOWDOWN_SET: f64 = 0.6;
/// …and at most this share clears it.
const SLOWDOWN_CLEAR: f64 = 0.2;
/// Samples needed before the rate counts.
const SLOWDOWN_MIN_SAMPLES: usize = 6;
/// Consecutive good readings that clear a reading-based fault.
const GOOD_READINGS_TO_CLEAR: u8 = 3;
/// PCIe replays per slow reading (60 s by default) that count as a high rate.
pub const PCIE_REPLAY_BUDGET: u64 = 100;
/// Corrected ECC errors per slow reading that make a `CorrectedECCRateHigh` event.
pub const CORRECTED_ECC_BUDGET: u64 = 1000;
/// Retired pages (pre-Ampere) beyond which the GPU is due for replacement:
/// the table holds 64; NVIDIA's guidance is to replace at 60+ or 15+ from double-bit errors.
const RETIRED_PAGES_LIMIT: u32 = 60;
const RETIRED_DBE_PAGES_LIMIT: u32 = 15;
/// Slow readings in a row over a budget before a counter raises a condition.
const SUSTAINED_READINGS: u8 = 3;
/// A condition set this many times within [`FLAP_WINDOW`] is flapping…
const FLAP_SETS: usize = 3;
/// …and is then held True until it stays clear for this long.
pub const FLAP_WINDOW: Duration = Duration::from_secs(600);
/// Fabric registration may take this many (slow) readings after boot.
const FABRIC_GRACE_READINGS: u8 = 3;
/// More uncorrectable remapped rows than this: the bank budget is spent.
const REMAPPED_ROWS_BUDGET: u32 = 512;
/// GPUs the kernel log may name that the driver never enumerated (one that
/// fell off the bus before gpu-monitor started is one): more than a node
/// holds. Past it, and for reports naming no address, one "unknown GPU".
const MAX_KERNEL_NAMED: usize = 8;

// Event reasons.
pub const REASON_XID_ERROR: &str = "XIDError";
pub const REASON_XID_APP_ERROR: &str = "XIDAppError";
/// An application XID repeating on one GPU past its rule (`xid::REPEATS`).
pub const REASON_XID_REPEATED: &str = "GPUXIDRepeated";
pub const REASON_RECOVERED: &str = "GPURecovered";
pub const REASON_RECOVERY_ACTION: &str = "GPURecoveryActionChanged";
pub const REASON_DRIVER_NOT_READY: &str = "DriverNotReady";
pub const REASON_MODEL_RESTARTING: &str = "HealthModelRestarting";
pub const REASON_DRIVER_READY: &str = "DriverReady";
pub const REASON_UNRESPONSIVE: &str = "NVMLCallHung";
pub const REASON_RESPONSIVE: &str = "NVMLResponsive";
pub const REASON_ROW_REMAP_PENDING: &str = "RowRemapPending";

/// One enumerated GPU as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuView {
    pub id: GpuIdentity,
    /// Per-GPU condition types True for this GPU.
    pub conditions: Vec<&'static str>,
    /// XIDs reported (not replayed) since the monitor started, by XID.
    pub xids: Vec<(u32, u64)>,
}

/// What the plugin publishes after every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub conditions: Vec<Condition>,
    /// Recent events with their sequence numbers, oldest first.
    pub events: Vec<(u64, Event)>,
}

impl Snapshot {
    /// The same conditions, each Unknown because of `why`; events kept.
    pub fn unknown(self, why: &str) -> Self {
        Self {
            conditions: self
                .conditions
                .into_iter()
                .map(|c| {
                    Condition::new(
                        c.type_,
                        ConditionStatus::Unknown,
                        REASON_MODEL_RESTARTING,
                        why.to_owned(),
                    )
                })
                .collect(),
            events: self.events,
        }
    }

    pub fn last_event_seq(&self) -> u64 {
        self.events.last().map_or(0, |(seq, _)| *seq)
    }

    /// Events with a sequence number above `after`.
    pub fn events_after(&self, after: u64) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(move |(seq, _)| *seq > after)
            .map(|(_, e)| e)
    }
}

#[derive(Debug)]
pub struct HealthModel {
    gpus: Vec<GpuState>,
    driver: Driver,
    unresponsive: Option<Stuck>,
    /// Why fewer GPUs are enumerated than expected (`None`: counts agree).
    missing: Option<String>,
    /// The most GPUs NVML has enumerated this run (a floor for "expected").
    seen_max: u32,
    /// Operator override of the throttling temperature.
    temperature_threshold: Option<i32>,
    /// Memory use (percent) above which a Normal event is sent; off by default.
    memory_threshold: Option<f64>,
    events: VecDeque<(u64, Event)>,
    next_seq: u64,
    bursts: HashMap<String, Burst>,
    /// Fatal NVSwitch errors by switch address: the fabric is not usable.
    switch_faults: BTreeMap<String, String>,
    /// Last report per (PCI address, XID): when, and whether from the kernel log.
    recent_xids: HashMap<(String, u32), (SystemTime, bool)>,
    /// The operator's XID policy, over the catalog.
    policy: Option<Arc<XidPolicy>>,
}

impl HealthModel {
    /// A node whose GPUs are known up front (the sim backend).
    pub fn new(gpus: Vec<GpuIdentity>) -> Self {
        Self {
            gpus: gpus.into_iter().map(GpuState::new).collect(),
            driver: Driver::Ready {
                version: String::new(),
            },
            unresponsive: None,
            missing: None,
            seen_max: 0,
            temperature_threshold: None,
            memory_threshold: None,
            events: VecDeque::new(),
            next_seq: 1,
            bursts: HashMap::new(),
            recent_xids: HashMap::new(),
            switch_faults: BTreeMap::new(),
            policy: None,
        }
    }

    /// The same model under the operator's XID policy.
    #[must_use]
    pub fn with_xid_policy(mut self, policy: Option<Arc<XidPolicy>>) -> Self {
        self.policy = policy;
        self
    }

    /// A node whose GPUs are learnt from the driver: until it answers,
    /// nothing about the GPUs is known.
    pub fn awaiting_driver() -> Self {
        let mut m = Self::new(Vec::new());
        m.driver = Driver::NotReady {
            reason: "the NVIDIA driver has not been reached yet".into(),
        };
        m
    }

    /// GPUs the driver enumerates (not those known only from the kernel log).
    pub fn enumerated(&self) -> usize {
        self.gpus.iter().filter(|g| g.enumerated).count()
    }

    /// Applies one observation. Returns false when nothing a client can see changed.
    pub fn apply(&mut self, obs: &Observation) -> bool {
        self.apply_all(std::iter::once(obs))
    }

    /// Applies a batch (a whole sweep) and compares conditions once.
    pub fn apply_all<'a>(&mut self, batch: impl IntoIterator<Item = &'a Observation>) -> bool {
        let before = self.conditions();
        let events_before = self.next_seq;
        for obs in batch {
            self.apply_one(obs);
            self.report_flapping(obs.at().unwrap_or_else(SystemTime::now));
        }
        self.next_seq != events_before || self.conditions() != before
    }

    /// Hands each observation to its fault family: one arm per variant, each
    /// a call. `now` stands in for `at` where a variant's time is not bound
    /// (for every variant that has a time, they are the same).
    ///
    /// Laid out by hand as a table: rustfmt would give each field of the
    /// larger variants a line of its own.
    #[rustfmt::skip]
    fn apply_one(&mut self, obs: &Observation) {
        use Observation as O;
        let now = obs.at().unwrap_or_else(SystemTime::now);
        match obs {
            // driver.rs
            O::DriverNotReady { reason, at } => self.driver_not_ready(reason, *at),
            O::DriverReady { gpus, version, at } => self.driver_ready(gpus, version, *at),
            O::Unresponsive { call, gpu, waited, at } =>
                self.unresponsive(call, *gpu, *waited, *at),
            O::BackendDown { reason, at } => self.backend_down(reason, *at),
            O::Responsive { at } => self.responsive(*at),
            O::SourceDegraded { source, reason, at } => self.source_degraded(source, reason, *at),
            O::GpuCount { counts, at } => self.gpu_count(*counts, *at),
            O::Reset { gpu, at } => self.gpu_reset(*gpu, *at),
            // xid.rs
            O::KernelXid { pci, xid, detail, at, replay } =>
                self.kernel_xid(*pci, *xid, detail, *at, *replay),
            O::KernelXidUnknownGpu { xid, detail, at, replay } =>
                self.kernel_xid_unknown_gpu(*xid, detail, *at, *replay),
            O::SXid { pci, sxid, fatal, detail, at, replay } =>
                self.sxid(*pci, *sxid, *fatal, detail, *at, *replay),
            O::Xid { gpu, xid, at } => self.nvml_xid(*gpu, *xid, *at),
            O::RecoveryAction { gpu, action, at } => self.recovery_action(*gpu, *action, *at),
            O::Lost { gpu, at } => self.lost(*gpu, *at),
            // thermal.rs
            O::Temperature { gpu, celsius, at } => self.temperature(*gpu, *celsius, *at),
            O::MarginTemperature { gpu, celsius, at } => self.thermal_margin(*gpu, *celsius, *at),
            O::SlowdownThreshold { gpu, celsius } => self.slowdown_threshold(*gpu, *celsius),
            O::ClockEvents { gpu, slowdown, idle, at } =>
                self.clock_events(*gpu, *slowdown, *idle, *at),
            O::Thresholds { temperature, memory_percent } =>
                self.thresholds(*temperature, *memory_percent),
            // memory.rs
            O::RemappedRows { gpu, pending, failure, uncorrectable, at } =>
                self.remapped_rows(*gpu, *pending, *failure, *uncorrectable, *at),
            O::VolatileUncorrectableEcc { gpu, count, at } => self.volatile_ecc(*gpu, *count, *at),
            O::RetiredPages { gpu, single_bit, double_bit, pending, .. } =>
                self.retired_pages(*gpu, *single_bit, *double_bit, *pending, now),
            O::CorrectedEcc { gpu, count, at } => self.corrected_ecc(*gpu, *count, *at),
            O::InfoRom { gpu, valid, .. } => self.inforom(*gpu, *valid, now),
            O::MemoryUsage { gpu, used_percent, at } =>
                self.memory_usage(*gpu, *used_percent, *at),
            // links.rs
            O::PcieLink { gpu, width, max_width, .. } =>
                self.pcie_width(*gpu, *width, *max_width, now),
            O::PcieGen { gpu, generation, max_generation, .. } =>
                self.pcie_gen(*gpu, *generation, *max_generation, now),
            O::PcieReplays { gpu, count, at } => self.pcie_replays(*gpu, *count, *at),
            O::NvLinks { gpu, active, inactive, .. } => self.nvlinks(*gpu, active, inactive, now),
            O::NvlinkErrors { gpu, count, at } => self.nvlink_errors(*gpu, *count, *at),
            O::Fabric { gpu, state, status, .. } => self.fabric(*gpu, *state, *status, now),
        }
    }

    /// The position of the GPU with driver index `gpu`, if this node has it.
    fn position(&self, gpu: u32) -> Option<usize> {
        let pos = self
            .gpus
            .iter()
            .position(|g| g.enumerated && g.id.index == gpu);
        if pos.is_none() {
            tracing::warn!(
                gpu,
                "observation for a GPU this node does not have; ignored"
            );
        }
        pos
    }

    /// Time-driven work at `now`: ends event windows older than
    /// [`EVENT_WINDOW`] (each that counted repeats sends one summary) and
    /// flap-guard holds that expired. Returns whether anything changed.
    pub fn flush(&mut self, now: SystemTime) -> bool {
        let mut released = false;
        for g in &mut self.gpus {
            released |= g.release_holds(now);
        }
        self.flush_events(now) || released
    }

    /// The per-GPU condition types, in report order.
    pub fn per_gpu_condition_types() -> [&'static str; 9] {
        Slot::ALL.map(Slot::condition_type)
    }

    /// Each GPU the driver enumerates: its faults and XIDs.
    pub fn per_gpu(&self) -> Vec<GpuView> {
        self.gpus
            .iter()
            .filter(|g| g.enumerated)
            .map(|g| GpuView {
                id: g.id.clone(),
                conditions: g.faults.keys().map(|s| s.condition_type()).collect(),
                xids: g.xid_counts.iter().map(|(x, n)| (*x, *n)).collect(),
            })
            .collect()
    }

    /// Whether the driver answers (the GPUs can be seen at all).
    pub fn is_driver_ready(&self) -> bool {
        matches!(self.driver, Driver::Ready { .. })
    }

    /// Whether readings come: the driver answers and no call hangs.
    pub fn sees(&self) -> bool {
        matches!(self.driver, Driver::Ready { .. }) && self.unresponsive.is_none()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            conditions: self.conditions(),
            events: self.events.iter().cloned().collect(),
        }
    }
}
