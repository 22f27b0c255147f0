//! The GPU health model: per-GPU state from observations, folded into node
//! conditions (True = problem) that name every affected GPU with its
//! evidence and the action to take, plus aggregated events.
//!
//! Sets and clears follow shared/reference/gpu-peers.md §6: XIDs are
//! classified by the catalog (`xid.rs`), the driver's recovery action
//! overrides it, an observed reset clears reset-class and link faults, and
//! memory and hardware faults stay until the board is replaced (a new serial).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::kmsg::PciAddr;
use super::xid::{self, Classes, XidInfo};
use super::{
    GPU_DRIVER_NOT_READY, GPU_FABRIC_NOT_READY, GPU_HARDWARE_FAULT, GPU_LOST, GPU_MEMORY_UNHEALTHY,
    GPU_MISSING, GPU_NVLINK_DEGRADED, GPU_NVLINK_DOWN, GPU_PCIE_LINK_DEGRADED, GPU_REBOOT_REQUIRED,
    GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING, GPU_UNRESPONSIVE, GpuCounts, GpuIdentity,
    Observation, UNENUMERATED,
};
use crate::problem::{Condition, ConditionStatus, Event, Severity};

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

// Event reasons.
pub const REASON_XID_ERROR: &str = "XIDError";
pub const REASON_XID_APP_ERROR: &str = "XIDAppError";
pub const REASON_RECOVERED: &str = "GPURecovered";
pub const REASON_RECOVERY_ACTION: &str = "GPURecoveryActionChanged";
pub const REASON_DRIVER_NOT_READY: &str = "DriverNotReady";
pub const REASON_MODEL_RESTARTING: &str = "HealthModelRestarting";
pub const REASON_DRIVER_READY: &str = "DriverReady";
pub const REASON_UNRESPONSIVE: &str = "NVMLCallHung";
pub const REASON_RESPONSIVE: &str = "NVMLResponsive";
pub const REASON_ROW_REMAP_PENDING: &str = "RowRemapPending";

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// A per-GPU fault condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Slot {
    Lost,
    Reset,
    Reboot,
    Memory,
    Hardware,
    NvlinkDown,
    NvlinkDegraded,
    Fabric,
    Pcie,
}

impl Slot {
    const ALL: [Self; 9] = [
        Self::Lost,
        Self::Reset,
        Self::Reboot,
        Self::Memory,
        Self::Hardware,
        Self::NvlinkDown,
        Self::NvlinkDegraded,
        Self::Fabric,
        Self::Pcie,
    ];

    fn condition_type(self) -> &'static str {
        match self {
            Self::Lost => GPU_LOST,
            Self::Reset => GPU_RESET_REQUIRED,
            Self::Reboot => GPU_REBOOT_REQUIRED,
            Self::Memory => GPU_MEMORY_UNHEALTHY,
            Self::Hardware => GPU_HARDWARE_FAULT,
            Self::NvlinkDown => GPU_NVLINK_DOWN,
            Self::NvlinkDegraded => GPU_NVLINK_DEGRADED,
            Self::Fabric => GPU_FABRIC_NOT_READY,
            Self::Pcie => GPU_PCIE_LINK_DEGRADED,
        }
    }

    fn healthy(self, n: usize) -> (&'static str, String) {
        match self {
            Self::Lost => (
                "NoGPULost",
                if n == 1 {
                    "the GPU answers".to_owned()
                } else {
                    format!("all {n} GPUs answer")
                },
            ),
            Self::Reset => ("NoGPUResetRequired", "no GPU needs a reset".into()),
            Self::Reboot => ("NoRebootRequired", "no GPU needs a node reboot".into()),
            Self::Memory => ("GPUMemoryHealthy", "no GPU memory fault recorded".into()),
            Self::Hardware => (
                "NoGPUHardwareFault",
                "no GPU hardware fault recorded".into(),
            ),
            Self::NvlinkDown => ("NVLinkUp", "no NVLink reported down".into()),
            Self::NvlinkDegraded => ("NVLinkHealthy", "no NVLink errors reported".into()),
            Self::Fabric => (
                "FabricReady",
                "NVLink fabric registered, or no fabric on this node".into(),
            ),
            Self::Pcie => (
                "PCIeLinkAtMaxWidth",
                "every PCIe link runs at its full width".into(),
            ),
        }
    }

    /// An observed reset (the GPU answers again) clears these; memory and
    /// hardware faults are properties of the board.
    fn cleared_by_reset(self) -> bool {
        !matches!(
            self,
            Self::Memory | Self::Hardware | Self::Pcie | Self::Fabric
        )
    }
}

/// Why a slot is set: kept from the first evidence, so the message stays
/// stable while the fault lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fault {
    reason: String,
    evidence: String,
    action: &'static str,
    source: Source,
}

/// Where a fault's evidence came from, which decides what may clear it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// An XID (cleared by a reset, or never for board faults).
    Xid,
    /// The driver's recovery action (cleared when the action changes).
    Recovery,
    /// A reading such as a counter or link state (cleared when readings are good again).
    Reading(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Driver {
    Ready { version: String },
    NotReady { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stuck {
    call: String,
    gpu: Option<u32>,
    /// How long the call waited; `None`: the backend itself is down, and
    /// `call` says why.
    waited: Option<Duration>,
}

#[derive(Clone, Debug)]
struct GpuState {
    id: GpuIdentity,
    /// This GPU's slowdown temperature (NVML's, or the H200 default).
    slowdown: i32,
    faults: BTreeMap<Slot, Fault>,
    /// Temperature when throttling began (kept out of the live reading so
    /// the condition message does not churn with every degree).
    throttled_at: Option<i32>,
    /// Thermal margin (°C) when it reached zero, while it stays low.
    margin_at: Option<i32>,
    /// The driver's recovery action (NVML field 230 / XID 154), 0 = none.
    recovery: u32,
    /// Recent clock-event samples: slowdown active or not (idle samples skipped).
    slowdown_samples: VecDeque<bool>,
    /// Throttling judged from the slowdown rate.
    slowdown_throttling: bool,
    /// Whether the last clock-event sample found the GPU idle.
    last_idle: Option<bool>,
    /// Slow readings in a row with the PCIe link below its generation while busy.
    gen_low_streak: u8,
    /// Consecutive good readings per reading-based fault.
    good_readings: HashMap<&'static str, u8>,
    /// NVLinks active when first seen: the ones expected to stay up.
    nvlink_baseline: Option<Vec<u32>>,
    /// Consecutive readings with the fabric registration not yet complete.
    fabric_pending: u8,
    /// Last value and consecutive over-budget readings, per counter.
    counters: HashMap<&'static str, (u64, u8)>,
    /// Recent times each slot was set (flap guard).
    set_times: HashMap<Slot, VecDeque<SystemTime>>,
    /// Slots held True for flapping: until when, and whether a clear waits.
    holds: HashMap<Slot, (SystemTime, bool)>,
    /// Slots that just started flapping (the model sends one event each).
    newly_flapping: Vec<Slot>,
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

/// Repeats of one event key inside the window.
#[derive(Clone, Debug)]
struct Burst {
    since: SystemTime,
    suppressed: u32,
    last: Event,
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
}

impl GpuState {
    fn new(id: GpuIdentity) -> Self {
        Self {
            id,
            slowdown: DEFAULT_SLOWDOWN_CELSIUS,
            faults: BTreeMap::new(),
            throttled_at: None,
            margin_at: None,
            recovery: 0,
            slowdown_samples: VecDeque::new(),
            slowdown_throttling: false,
            last_idle: None,
            gen_low_streak: 0,
            good_readings: HashMap::new(),
            nvlink_baseline: None,
            fabric_pending: 0,
            counters: HashMap::new(),
            set_times: HashMap::new(),
            holds: HashMap::new(),
            newly_flapping: Vec::new(),
        }
    }

    /// Feeds a cumulative counter; returns the increase since the last
    /// reading and how many readings in a row went over `budget`. A counter
    /// that went down (driver reload, reset) starts over.
    fn counter(&mut self, key: &'static str, value: u64, budget: u64) -> (u64, u8) {
        let entry = self.counters.entry(key).or_insert((value, 0));
        let delta = value.saturating_sub(entry.0);
        entry.0 = value;
        entry.1 = if delta > budget {
            entry.1.saturating_add(1)
        } else {
            0
        };
        (delta, entry.1)
    }

    /// Sets `slot` unless already set (the first evidence stays). Returns
    /// true when it was just set.
    fn set(&mut self, slot: Slot, fault: Fault, now: SystemTime) -> bool {
        if self.faults.contains_key(&slot) {
            return false;
        }
        self.faults.insert(slot, fault);
        self.note_set(slot, now);
        true
    }

    /// Flap guard: a slot set [`FLAP_SETS`] times within [`FLAP_WINDOW`] is
    /// held True until it has stayed clear for a whole window.
    fn note_set(&mut self, slot: Slot, now: SystemTime) {
        let times = self.set_times.entry(slot).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() > FLAP_WINDOW)
        {
            times.pop_front();
        }
        let flapping = times.len() >= FLAP_SETS;
        match self.holds.get_mut(&slot) {
            Some(hold) => *hold = (now + FLAP_WINDOW, false),
            None if flapping => {
                self.holds.insert(slot, (now + FLAP_WINDOW, false));
                self.newly_flapping.push(slot);
            }
            None => {}
        }
    }

    /// Clears `slot` unless the flap guard holds it (then the clear waits for
    /// the hold to end). Returns true when it cleared.
    fn clear(&mut self, slot: Slot, now: SystemTime) -> bool {
        if let Some(hold) = self.holds.get_mut(&slot)
            && now < hold.0
        {
            hold.1 = self.faults.contains_key(&slot);
            return false;
        }
        self.holds.remove(&slot);
        self.faults.remove(&slot).is_some()
    }

    /// Ends holds that expired; applies the clears they delayed.
    fn release_holds(&mut self, now: SystemTime) -> bool {
        let expired: Vec<(Slot, bool)> = self
            .holds
            .iter()
            .filter(|(_, (until, _))| now >= *until)
            .map(|(slot, (_, pending))| (*slot, *pending))
            .collect();
        let mut changed = false;
        for (slot, pending) in expired {
            self.holds.remove(&slot);
            if pending {
                changed |= self.faults.remove(&slot).is_some();
            }
        }
        changed
    }

    /// A reading-based fault: set at once when bad; cleared after
    /// [`GOOD_READINGS_TO_CLEAR`] good readings in a row. Returns true when it was just set.
    fn reading(
        &mut self,
        slot: Slot,
        key: &'static str,
        bad: Option<Fault>,
        now: SystemTime,
    ) -> bool {
        match bad {
            Some(mut f) => {
                self.good_readings.insert(key, 0);
                f.source = Source::Reading(key);
                self.set(slot, f, now)
            }
            None => {
                let held =
                    matches!(self.faults.get(&slot), Some(f) if f.source == Source::Reading(key));
                if held {
                    let good = self.good_readings.entry(key).or_insert(0);
                    *good += 1;
                    if *good >= GOOD_READINGS_TO_CLEAR {
                        self.clear(slot, now);
                        self.good_readings.remove(key);
                    }
                }
                false
            }
        }
    }
}

/// The driver's recovery actions (NVML `nvmlDeviceGetFieldValues` field 230,
/// and the names XID 154 prints).
pub fn recovery_action_name(action: u32) -> &'static str {
    match action {
        0 => "None",
        1 => "GPU Reset Required",
        2 => "Node Reboot Required",
        3 => "Drain P2P",
        4 => "Drain and Reset",
        _ => "Unknown",
    }
}

/// The new action in an XID 154 line: "… changed from 0x0 (None) to 0x2 (Node Reboot Required)".
pub fn parse_recovery_change(detail: &str) -> Option<u32> {
    let to = detail.rsplit_once(" to ")?.1.trim();
    let hex = to.strip_prefix("0x").or_else(|| to.strip_prefix("0X"))?;
    let digits = hex.split(|c: char| !c.is_ascii_hexdigit()).next()?;
    u32::from_str_radix(digits, 16).ok()
}

// ---------------------------------------------------------------------------
// Applying observations
// ---------------------------------------------------------------------------

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
        }
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
        self.gpus
            .iter()
            .filter(|g| g.id.index != UNENUMERATED)
            .count()
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

    fn apply_one(&mut self, obs: &Observation) {
        let now = obs.at().unwrap_or_else(SystemTime::now);
        match obs {
            Observation::DriverNotReady { reason, at } => self.driver_not_ready(reason, *at),
            Observation::DriverReady { gpus, version, at } => self.driver_ready(gpus, version, *at),
            Observation::Unresponsive {
                call,
                gpu,
                waited,
                at,
            } => {
                let stuck = Stuck {
                    call: call.clone(),
                    gpu: *gpu,
                    waited: Some(*waited),
                };
                self.stuck(stuck, *at);
            }
            Observation::BackendDown { reason, at } => {
                let stuck = Stuck {
                    call: reason.clone(),
                    gpu: None,
                    waited: None,
                };
                self.stuck(stuck, *at);
            }
            Observation::Responsive { at } => {
                if self.unresponsive.take().is_some() {
                    let message = "NVML calls return in time again".to_owned();
                    self.emit(Severity::Info, *at, REASON_RESPONSIVE, "", message);
                }
            }
            Observation::KernelXid {
                pci,
                xid,
                detail,
                at,
                replay,
            } => {
                let pos = self.position_for_pci(*pci);
                self.xid(pos, *xid, Some(detail), *at, *replay);
            }
            Observation::KernelXidUnknownGpu { .. } => {}
            Observation::KernelGpuInit { pci, at, replay } => {
                // Only a GPU we know: an init line for a new address is just a driver load.
                if let Some(pos) = self.position_of_pci(*pci) {
                    self.reset(pos, *at, !*replay);
                }
            }
            Observation::SXid {
                pci,
                sxid,
                fatal,
                detail,
                at,
                replay,
            } => {
                let kind = if *fatal { "fatal" } else { "non-fatal" };
                if *fatal {
                    self.switch_faults
                        .entry(pci.to_string())
                        .or_insert_with(|| format!("SXid {sxid} ({kind})"));
                }
                if !*replay {
                    let message = format!(
                        "nvswitch pci={pci}: SXid {sxid} ({kind}); kernel: {}",
                        truncate(detail, 256)
                    );
                    let severity = if *fatal {
                        Severity::Warn
                    } else {
                        Severity::Info
                    };
                    self.emit(
                        severity,
                        *at,
                        "SXIDError",
                        &format!("{pci}/{sxid}"),
                        message,
                    );
                }
            }
            Observation::Xid { gpu, xid, at } => {
                if let Some(pos) = self.position(*gpu) {
                    self.xid(pos, *xid, None, *at, false);
                }
            }
            Observation::RecoveryAction { gpu, action, at } => {
                if let Some(pos) = self.position(*gpu) {
                    self.recovery(pos, *action, *at, false);
                }
            }
            Observation::Lost { gpu, at } => {
                if let Some(pos) = self.position(*gpu)
                    && !self.gpus[pos].faults.contains_key(&Slot::Lost)
                {
                    let g = &mut self.gpus[pos];
                    let action = Classes::LOST.action();
                    g.set(
                        Slot::Lost,
                        fault("GPUNotResponding", "the driver reports GPU_IS_LOST", action),
                        now,
                    );
                    let message = format!(
                        "{}: GPU stopped answering (GPU_IS_LOST); action: {action}",
                        g.id
                    );
                    self.emit(Severity::Warn, *at, "GPULost", &pos.to_string(), message);
                }
            }
            Observation::Temperature { gpu, celsius, at } => {
                if let Some(pos) = self.position(*gpu) {
                    self.temperature(pos, *celsius, *at);
                }
            }
            Observation::MarginTemperature { gpu, celsius, at } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let was = g.margin_at.is_some();
                    let hot = if was {
                        *celsius < THERMAL_HYSTERESIS_CELSIUS
                    } else {
                        *celsius <= 0
                    };
                    if hot != was {
                        g.margin_at = hot.then_some(*celsius);
                        let what = if hot {
                            format!("thermal margin {celsius} °C")
                        } else {
                            format!("thermal margin back to {celsius} °C")
                        };
                        self.thermal_transition(pos, hot, &what, *at);
                    }
                }
            }
            Observation::SlowdownThreshold { gpu, celsius } => {
                if let Some(pos) = self.position(*gpu) {
                    self.gpus[pos].slowdown = *celsius;
                }
            }
            Observation::Reset { gpu, at } => {
                if let Some(pos) = self.position(*gpu) {
                    self.reset(pos, *at, true);
                }
            }
            Observation::ClockEvents {
                gpu,
                slowdown,
                idle,
                at,
            } => {
                if let Some(pos) = self.position(*gpu) {
                    self.clock_events(pos, *slowdown, *idle, *at);
                }
            }
            Observation::RemappedRows {
                gpu,
                pending,
                failure,
                uncorrectable,
                at,
            } => {
                if let Some(pos) = self.position(*gpu) {
                    self.remapped_rows(pos, *pending, *failure, *uncorrectable, *at);
                }
            }
            Observation::VolatileUncorrectableEcc { gpu, count, at } => {
                if let Some(pos) = self.position(*gpu) {
                    // Volatile counters only go down when the driver
                    // reinitialises the GPU: a reset happened.
                    let before = self.gpus[pos].counters.get("ecc-volatile").map(|(v, _)| *v);
                    self.gpus[pos].counter("ecc-volatile", *count, u64::MAX);
                    if before.is_some_and(|b| *count < b) {
                        self.reset(pos, *at, true);
                    }
                    let bad = (*count > 0).then(|| {
                        fault(
                            "VolatileUncorrectableECC",
                            &format!("{count} uncorrectable ECC errors since the driver loaded"),
                            Classes::RESET.action(),
                        )
                    });
                    self.gpus[pos].reading(Slot::Reset, "ecc", bad, now);
                }
            }
            Observation::PcieLink {
                gpu,
                width,
                max_width,
                ..
            } => {
                if let Some(pos) = self.position(*gpu) {
                    let bad = (*width > 0 && width < max_width).then(|| {
                        fault(
                            "PCIeLinkWidthReduced",
                            &format!("PCIe link runs at x{width} of x{max_width}"),
                            "reseat or inspect the GPU and its riser; check the slot",
                        )
                    });
                    self.gpus[pos].reading(Slot::Pcie, "pcie-width", bad, now);
                }
            }
            Observation::PcieGen {
                gpu,
                generation,
                max_generation,
                ..
            } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    // An idle GPU lowers its link speed to save power: only a
                    // busy GPU on a slow link is degraded.
                    let low = *generation > 0
                        && generation < max_generation
                        && g.last_idle == Some(false);
                    g.gen_low_streak = if low {
                        g.gen_low_streak.saturating_add(1)
                    } else {
                        0
                    };
                    let bad = (g.gen_low_streak >= SUSTAINED_READINGS).then(|| {
                        fault(
                            "PCIeLinkGenReduced",
                            &format!("PCIe link at gen {generation} of {max_generation} while the GPU is busy"),
                            "reseat or inspect the GPU and its riser; check the slot",
                        )
                    });
                    g.reading(Slot::Pcie, "pcie-gen", bad, now);
                }
            }
            Observation::NvLinks {
                gpu,
                active,
                inactive,
                ..
            } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let baseline = g.nvlink_baseline.get_or_insert_with(|| active.clone());
                    let down: Vec<String> = baseline
                        .iter()
                        .filter(|l| inactive.contains(l))
                        .map(ToString::to_string)
                        .collect();
                    let bad = (!down.is_empty()).then(|| {
                        fault(
                            "NVLinkInactive",
                            &format!(
                                "NVLink {} inactive (active when first seen)",
                                down.join(", ")
                            ),
                            Classes::NVLINK_DOWN.action(),
                        )
                    });
                    g.reading(Slot::NvlinkDown, "nvlink", bad, now);
                }
            }
            Observation::GpuCount { counts, at } => self.gpu_count(*counts, *at),
            Observation::RetiredPages {
                gpu,
                single_bit,
                double_bit,
                pending,
                ..
            } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let bad = pending.then(|| {
                        fault(
                            "PageRetirementPending",
                            "page retirement pending (a GPU reset or driver reload applies it)",
                            Classes::RESET.action(),
                        )
                    });
                    g.reading(Slot::Reset, "retire-pending", bad, now);
                    let total = single_bit + double_bit;
                    if total >= RETIRED_PAGES_LIMIT || *double_bit >= RETIRED_DBE_PAGES_LIMIT {
                        let evidence =
                            format!("{total} pages retired ({double_bit} from double-bit errors)");
                        g.set(
                            Slot::Memory,
                            fault("RetiredPagesExhausted", &evidence, Classes::MEMORY.action()),
                            now,
                        );
                    }
                }
            }
            Observation::CorrectedEcc { gpu, count, at } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let (delta, _) = g.counter("ecc-corrected", *count, CORRECTED_ECC_BUDGET);
                    if delta > CORRECTED_ECC_BUDGET {
                        let message = format!(
                            "{}: {delta} corrected ECC errors since the last reading",
                            g.id
                        );
                        let key = g.id.pci_bus_id.clone();
                        self.emit(Severity::Warn, *at, "CorrectedECCRateHigh", &key, message);
                    }
                }
            }
            Observation::SourceDegraded { source, reason, at } => {
                let message = format!("{source}: {reason}");
                self.emit(Severity::Warn, *at, "GPUMonitorDegraded", source, message);
            }
            Observation::PcieReplays { gpu, count, at } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let (delta, streak) = g.counter("pcie-replay", *count, PCIE_REPLAY_BUDGET);
                    let bad = (streak >= SUSTAINED_READINGS).then(|| {
                        fault(
                            "PCIeReplayRateHigh",
                            &format!("PCIe replays above {PCIE_REPLAY_BUDGET} per reading for {SUSTAINED_READINGS} readings"),
                            "reseat or inspect the GPU and its riser; check the slot",
                        )
                    });
                    g.reading(Slot::Pcie, "pcie-replay", bad, now);
                    if delta > PCIE_REPLAY_BUDGET {
                        let message =
                            format!("{}: {delta} PCIe replays since the last reading", g.id);
                        let key = g.id.pci_bus_id.clone();
                        self.emit(Severity::Warn, *at, "PCIeReplayRateHigh", &key, message);
                    }
                }
            }
            Observation::NvlinkErrors { gpu, count, at } => {
                if let Some(pos) = self.position(*gpu) {
                    let g = &mut self.gpus[pos];
                    let (delta, streak) = g.counter("nvlink-errors", *count, 0);
                    let bad = (streak >= SUSTAINED_READINGS).then(|| {
                        fault(
                            "NVLinkErrorsIncreasing",
                            &format!("NVLink replay/recovery/CRC errors grew for {SUSTAINED_READINGS} readings in a row"),
                            Classes::NVLINK_DEGRADED.action(),
                        )
                    });
                    g.reading(Slot::NvlinkDegraded, "nvlink-errors", bad, now);
                    if delta > 0 {
                        let message = format!(
                            "{}: {delta} new NVLink errors (replay, recovery, CRC)",
                            g.id
                        );
                        let key = g.id.pci_bus_id.clone();
                        self.emit(Severity::Warn, *at, "NVLinkErrorsIncreased", &key, message);
                    }
                }
            }
            Observation::Fabric {
                gpu, state, status, ..
            } => {
                if let Some(pos) = self.position(*gpu) {
                    self.fabric(pos, *state, *status, now);
                }
            }
            Observation::InfoRom { gpu, valid, .. } => {
                if let Some(pos) = self.position(*gpu)
                    && !*valid
                {
                    let f = fault(
                        "InfoROMCorrupted",
                        "InfoROM checksum validation failed",
                        Classes::HARDWARE.action(),
                    );
                    self.gpus[pos].set(Slot::Hardware, f, now);
                }
            }
            Observation::Thresholds {
                temperature,
                memory_percent,
            } => {
                self.temperature_threshold = *temperature;
                self.memory_threshold = *memory_percent;
            }
            Observation::MemoryUsage {
                gpu,
                used_percent,
                at,
            } => {
                if let (Some(limit), Some(pos)) = (self.memory_threshold, self.position(*gpu))
                    && *used_percent > limit
                {
                    // High memory use is what ML frameworks do: worth a note, not a fault.
                    let g = &self.gpus[pos];
                    let message = format!("{}: memory use {used_percent:.1}% above {limit}%", g.id);
                    let key = g.id.pci_bus_id.clone();
                    self.emit(Severity::Info, *at, "GPUMemoryHigh", &key, message);
                }
            }
        }
    }

    fn position(&self, gpu: u32) -> Option<usize> {
        let pos = self.gpus.iter().position(|g| g.id.index == gpu);
        if pos.is_none() {
            tracing::warn!(
                gpu,
                "observation for a GPU this node does not have; ignored"
            );
        }
        pos
    }

    /// The GPU at `pci`, if any.
    fn position_of_pci(&self, pci: PciAddr) -> Option<usize> {
        self.gpus
            .iter()
            .position(|g| PciAddr::parse(&g.id.pci_bus_id) == Some(pci))
    }

    /// The GPU at `pci`, or a new entry named by the address alone.
    fn position_for_pci(&mut self, pci: PciAddr) -> usize {
        if let Some(pos) = self.position_of_pci(pci) {
            return pos;
        }
        tracing::warn!(%pci, "kernel log names a GPU the driver does not enumerate");
        self.gpus.push(GpuState::new(GpuIdentity {
            index: UNENUMERATED,
            uuid: "unknown".into(),
            pci_bus_id: pci.to_string(),
            serial: "unknown".into(),
            name: "unknown".into(),
        }));
        self.gpus.len() - 1
    }

    /// Whether this XID was already reported by the other source (NVML
    /// events vs the kernel log) moments ago; records it otherwise.
    fn seen_from_other_source(
        &mut self,
        pos: usize,
        xid: u32,
        from_kernel: bool,
        at: SystemTime,
    ) -> bool {
        let key = (self.gpus[pos].id.pci_bus_id.clone(), xid);
        if let Some((when, kernel)) = self.recent_xids.get(&key)
            && *kernel != from_kernel
            && at
                .duration_since(*when)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap_or_default()
                <= XID_CORRELATION
        {
            return true;
        }
        if self.recent_xids.len() > 256 {
            self.recent_xids.retain(|_, (when, _)| {
                at.duration_since(*when).unwrap_or_default() <= XID_CORRELATION
            });
        }
        self.recent_xids.insert(key, (at, from_kernel));
        false
    }

    fn xid(&mut self, pos: usize, xid: u32, kernel: Option<&str>, at: SystemTime, replay: bool) {
        if !replay && self.seen_from_other_source(pos, xid, kernel.is_some(), at) {
            return;
        }
        let mut info = xid::lookup(xid);
        if info.classes.contains(Classes::RECOVERY)
            && let Some(action) = kernel.and_then(parse_recovery_change)
        {
            self.recovery(pos, action, at, replay);
            return;
        }
        // NVLink-5 XIDs (144–150) say their severity in the text: a
        // non-fatal one is an event; a fatal one also needs a reset.
        if (144..=150).contains(&xid)
            && let Some(k) = kernel
        {
            if k.contains("Nonfatal") || k.contains("Non-fatal") {
                info.classes = Classes::EVENT;
            } else if k.contains("Fatal") {
                info.classes = info.classes | Classes::RESET;
            }
        }
        let g = &mut self.gpus[pos];
        let action = info.classes.action();
        let reason = if xid == 79 {
            "GPUFellOffTheBus".to_owned()
        } else {
            format!("Xid{xid}")
        };
        for (class, slot) in [
            (Classes::LOST, Slot::Lost),
            (Classes::REBOOT, Slot::Reboot),
            (Classes::RESET, Slot::Reset),
            (Classes::MEMORY, Slot::Memory),
            (Classes::HARDWARE, Slot::Hardware),
            (Classes::NVLINK_DOWN, Slot::NvlinkDown),
            (Classes::NVLINK_DEGRADED, Slot::NvlinkDegraded),
        ] {
            if info.classes.contains(class) {
                g.set(slot, fault(&reason, &evidence(&info), action), at);
            }
        }
        if replay {
            return;
        }
        let (severity, event_reason) = if info.classes.contains(Classes::APP) {
            (Severity::Info, REASON_XID_APP_ERROR)
        } else {
            (Severity::Warn, REASON_XID_ERROR)
        };
        let mut message = format!("{}: {}; action: {action}", g.id, evidence(&info));
        if let Some(k) = kernel.filter(|k| !k.is_empty()) {
            message.push_str(&format!("; kernel: {}", truncate(k, 256)));
        }
        let key = format!("{}/{xid}", g.id.pci_bus_id);
        self.emit(severity, at, event_reason, &key, message);
    }

    fn recovery(&mut self, pos: usize, action: u32, at: SystemTime, replay: bool) {
        let g = &mut self.gpus[pos];
        if g.recovery == action {
            return;
        }
        let old = std::mem::replace(&mut g.recovery, action);
        // Faults the previous action raised go; the new action raises its own.
        let raised: Vec<Slot> = g
            .faults
            .iter()
            .filter(|(_, f)| f.source == Source::Recovery)
            .map(|(slot, _)| *slot)
            .collect();
        for slot in raised {
            g.clear(slot, at);
        }
        let name = recovery_action_name(action);
        let evidence = format!("driver recovery action: {name}");
        let slot = match action {
            1 | 4 => Some((Slot::Reset, Classes::RESET.action())),
            2 => Some((Slot::Reboot, Classes::REBOOT.action())),
            3 => Some((
                Slot::NvlinkDegraded,
                "drain peer-to-peer traffic from the GPU, then reset it",
            )),
            _ => None,
        };
        if let Some((slot, act)) = slot {
            let mut f = fault("RecoveryAction", &evidence, act);
            f.source = Source::Recovery;
            g.faults.insert(slot, f);
        }
        if replay {
            return;
        }
        let message = format!(
            "{}: recovery action changed from {} to {name}",
            g.id,
            recovery_action_name(old)
        );
        let severity = if action == 0 {
            Severity::Info
        } else {
            Severity::Warn
        };
        self.emit(severity, at, REASON_RECOVERY_ACTION, "", message);
    }

    fn temperature(&mut self, pos: usize, celsius: i32, at: SystemTime) {
        let limit = self.temperature_threshold;
        let g = &mut self.gpus[pos];
        let slowdown = limit.unwrap_or(g.slowdown);
        let was = g.throttled_at.is_some();
        let now = if was {
            celsius > slowdown - THERMAL_HYSTERESIS_CELSIUS
        } else {
            celsius >= slowdown
        };
        if now == was {
            return;
        }
        g.throttled_at = now.then_some(celsius);
        let what = if now {
            format!("{celsius} °C reached {slowdown} °C")
        } else {
            format!("cooled to {celsius} °C")
        };
        self.thermal_transition(pos, now, &what, at);
    }

    /// The event for a GPU that starts or stops throttling (by any rule).
    fn thermal_transition(&mut self, pos: usize, started: bool, what: &str, at: SystemTime) {
        let (severity, reason) = if started {
            (Severity::Warn, "ThermalThrottlingStarted")
        } else {
            (Severity::Info, "ThermalThrottlingStopped")
        };
        let message = format!("{}: {what}", self.gpus[pos].id);
        self.emit(severity, at, reason, "", message);
    }

    /// One clock-event sample. Throttling by rate: slowdown active in at
    /// least 60 % of the last samples sets it, at most 20 % clears it; idle
    /// samples do not count.
    fn clock_events(&mut self, pos: usize, slowdown: bool, idle: bool, at: SystemTime) {
        let g = &mut self.gpus[pos];
        g.last_idle = Some(idle);
        // Idle time would dilute the rate of a GPU that slows down whenever it
        // works, so idle samples do not count toward setting; they do count
        // toward clearing (an idle GPU is not throttled).
        if idle && !slowdown && !g.slowdown_throttling {
            return;
        }
        g.slowdown_samples.push_back(slowdown);
        while g.slowdown_samples.len() > SLOWDOWN_WINDOW {
            g.slowdown_samples.pop_front();
        }
        let n = g.slowdown_samples.len();
        if n < SLOWDOWN_MIN_SAMPLES {
            return;
        }
        let share = g.slowdown_samples.iter().filter(|s| **s).count() as f64 / n as f64;
        let now = if g.slowdown_throttling {
            share > SLOWDOWN_CLEAR
        } else {
            share >= SLOWDOWN_SET
        };
        if now == g.slowdown_throttling {
            return;
        }
        g.slowdown_throttling = now;
        let what = if now {
            "hardware or thermal slowdown active in most recent samples"
        } else {
            "slowdown no longer sustained"
        };
        self.thermal_transition(pos, now, what, at);
    }

    fn remapped_rows(
        &mut self,
        pos: usize,
        pending: bool,
        failure: bool,
        uncorrectable: u32,
        at: SystemTime,
    ) {
        let g = &mut self.gpus[pos];
        let bad = pending.then(|| {
            fault(
                REASON_ROW_REMAP_PENDING,
                "row remapping pending (a GPU reset applies it)",
                Classes::RESET.action(),
            )
        });
        let newly_pending = g.reading(Slot::Reset, "remap-pending", bad, at);
        if failure {
            g.set(
                Slot::Memory,
                fault(
                    "RowRemapFailure",
                    "row remapping failed",
                    Classes::MEMORY.action(),
                ),
                at,
            );
        } else if uncorrectable >= REMAPPED_ROWS_BUDGET {
            let evidence = format!(
                "{uncorrectable} rows remapped for uncorrectable errors (budget {REMAPPED_ROWS_BUDGET})"
            );
            g.set(
                Slot::Memory,
                fault("RemappedRowsExhausted", &evidence, Classes::MEMORY.action()),
                at,
            );
        }
        if newly_pending {
            let message = format!("{}: row remapping pending; a GPU reset applies it", g.id);
            let key = g.id.pci_bus_id.clone();
            self.emit(Severity::Warn, at, REASON_ROW_REMAP_PENDING, &key, message);
        }
    }

    /// GPUFabricNotReady: registration failed, or still not complete after
    /// [`FABRIC_GRACE_READINGS`] readings (a fresh boot registers within a few).
    fn fabric(&mut self, pos: usize, state: u32, status: u32, now: SystemTime) {
        const NOT_SUPPORTED: u32 = 0;
        const COMPLETED: u32 = 3;
        let g = &mut self.gpus[pos];
        let action = "restart the NVIDIA Fabric Manager (or IMEX), then reset the GPU";
        let bad = match state {
            NOT_SUPPORTED => None,
            COMPLETED => {
                g.fabric_pending = 0;
                (status != 0).then(|| {
                    fault(
                        "FabricRegistrationFailed",
                        &format!("NVLink fabric registration failed (NVML status {status})"),
                        action,
                    )
                })
            }
            _ => {
                g.fabric_pending = g.fabric_pending.saturating_add(1);
                let phase = if state == 1 {
                    "not started"
                } else {
                    "in progress"
                };
                (g.fabric_pending >= FABRIC_GRACE_READINGS).then(|| {
                    fault(
                        "FabricNotRegistered",
                        &format!(
                            "NVLink fabric registration {phase} after {} readings",
                            g.fabric_pending
                        ),
                        action,
                    )
                })
            }
        };
        g.reading(Slot::Fabric, "fabric", bad, now);
    }

    /// GPUMissing: NVML sees fewer GPUs than the most any source says exist.
    fn gpu_count(&mut self, c: GpuCounts, at: SystemTime) {
        let Some(nvml) = c.nvml else { return };
        self.seen_max = self.seen_max.max(nvml);
        let expected = [c.expected, c.sysfs, c.dev_nodes, Some(self.seen_max)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(nvml);
        let was = self.missing.is_some();
        self.missing = (nvml < expected).then(|| {
            let show = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            format!(
                "NVML enumerates {nvml} of {expected} GPUs (PCI sysfs {}, /dev/nvidiaN {}, configured {}, most seen {})",
                show(c.sysfs),
                show(c.dev_nodes),
                show(c.expected),
                self.seen_max
            )
        });
        if !was && let Some(m) = self.missing.clone() {
            self.emit(Severity::Warn, at, GPU_MISSING, "", m);
        }
    }

    /// Evidence that the GPU was reset and answers.
    /// `announce` is false for evidence replayed after a restart, which
    /// only rebuilds state.
    fn reset(&mut self, pos: usize, at: SystemTime, announce: bool) {
        let g = &mut self.gpus[pos];
        let before = g.faults.len();
        let clearable: Vec<Slot> = g
            .faults
            .keys()
            .copied()
            .filter(|slot| slot.cleared_by_reset())
            .collect();
        for slot in clearable {
            g.clear(slot, at);
        }
        g.recovery = 0;
        if announce && g.faults.len() != before {
            let message = format!(
                "{}: GPU reset and answering; reset-class faults cleared",
                g.id
            );
            self.emit(Severity::Info, at, REASON_RECOVERED, "", message);
        }
    }

    fn driver_not_ready(&mut self, reason: &str, at: SystemTime) {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        self.driver = Driver::NotReady {
            reason: reason.to_owned(),
        };
        if was_ready {
            self.emit(
                Severity::Warn,
                at,
                REASON_DRIVER_NOT_READY,
                "",
                reason.to_owned(),
            );
        }
    }

    /// The driver's inventory replaces ours; GPUs that stay (same UUID) keep their state.
    fn driver_ready(&mut self, gpus: &[GpuIdentity], version: &str, at: SystemTime) {
        let was_ready = matches!(self.driver, Driver::Ready { .. });
        let mut old = std::mem::take(&mut self.gpus);
        self.gpus = gpus
            .iter()
            .map(|id| match old.iter().position(|g| g.id.uuid == id.uuid) {
                Some(i) => {
                    let mut g = old.swap_remove(i);
                    g.id = id.clone();
                    g
                }
                None => GpuState::new(id.clone()),
            })
            .collect();
        // GPUs known only from the kernel log stay until the driver names them.
        let named: Vec<Option<PciAddr>> = self
            .gpus
            .iter()
            .map(|g| PciAddr::parse(&g.id.pci_bus_id))
            .collect();
        self.gpus.extend(old.into_iter().filter(|g| {
            g.id.index == UNENUMERATED && !named.contains(&PciAddr::parse(&g.id.pci_bus_id))
        }));
        self.driver = Driver::Ready {
            version: version.to_owned(),
        };
        if !was_ready {
            let message = format!(
                "NVIDIA driver {version} answers; {}",
                gpus_visible(gpus.len())
            );
            self.emit(Severity::Info, at, REASON_DRIVER_READY, "", message);
        }
    }

    /// Readings stopped: said once, as a warning, until `Responsive`.
    fn stuck(&mut self, stuck: Stuck, at: SystemTime) {
        if self.unresponsive.is_none() {
            let message = self.describe_stuck(&stuck);
            self.emit(Severity::Warn, at, GPU_UNRESPONSIVE, "", message);
        }
        self.unresponsive = Some(stuck);
    }

    fn describe_stuck(&self, stuck: &Stuck) -> String {
        let Some(waited) = stuck.waited else {
            return format!(
                "no readings: {}; action: none while it restarts by itself; if this stays, read the gpu-monitor log",
                stuck.call
            );
        };
        let on = stuck
            .gpu
            .and_then(|i| self.gpus.iter().find(|g| g.id.index == i))
            .map_or_else(|| "the driver".to_owned(), |g| g.id.to_string());
        format!(
            "{on}: {} did not return within {waited:?}; action: check the driver (nvidia-smi may hang too), then reset the GPU or reboot",
            stuck.call
        )
    }

    // -----------------------------------------------------------------------
    // Events
    // -----------------------------------------------------------------------

    /// Sends an event, or counts it when the same key fired within the
    /// window (an XID storm becomes a handful of events). An empty key never
    /// aggregates: those events are transitions.
    fn emit(
        &mut self,
        severity: Severity,
        at: SystemTime,
        reason: &str,
        key: &str,
        message: String,
    ) {
        let e = Event {
            severity,
            timestamp: at,
            reason: reason.to_owned(),
            message,
        };
        if key.is_empty() {
            self.push_event(e);
            return;
        }
        let key = format!("{reason}/{key}");
        match self.bursts.get_mut(&key) {
            Some(b) if at.duration_since(b.since).unwrap_or_default() < EVENT_WINDOW => {
                b.suppressed += 1;
                b.last = e;
            }
            _ => {
                self.bursts.insert(
                    key,
                    Burst {
                        since: at,
                        suppressed: 0,
                        last: e.clone(),
                    },
                );
                self.push_event(e);
            }
        }
    }

    /// One `GPUConditionFlapping` event per slot that just started flapping.
    fn report_flapping(&mut self, at: SystemTime) {
        let mut found = Vec::new();
        for g in &mut self.gpus {
            for slot in g.newly_flapping.drain(..) {
                found.push(format!(
                    "{}: {} set {FLAP_SETS} times within {} min; held True until it stays clear that long",
                    g.id,
                    slot.condition_type(),
                    FLAP_WINDOW.as_secs() / 60
                ));
            }
        }
        for message in found {
            self.emit(Severity::Warn, at, "GPUConditionFlapping", "", message);
        }
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

    fn flush_events(&mut self, now: SystemTime) -> bool {
        let mut due: Vec<(String, Burst)> = Vec::new();
        self.bursts.retain(|k, b| {
            if now.duration_since(b.since).unwrap_or_default() < EVENT_WINDOW {
                return true;
            }
            if b.suppressed > 0 {
                due.push((k.clone(), b.clone()));
            }
            false
        });
        due.sort_by(|a, b| a.0.cmp(&b.0));
        let any = !due.is_empty();
        for (_, b) in due {
            let mut e = b.last;
            e.message = format!(
                "{} (repeated {} more times within {}s)",
                e.message,
                b.suppressed,
                EVENT_WINDOW.as_secs()
            );
            self.push_event(e);
        }
        any
    }

    fn push_event(&mut self, e: Event) {
        self.events.push_back((self.next_seq, e));
        self.next_seq += 1;
        while self.events.len() > EVENT_BACKLOG {
            self.events.pop_front();
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            conditions: self.conditions(),
            events: self.events.iter().cloned().collect(),
        }
    }

    // -----------------------------------------------------------------------
    // Conditions
    // -----------------------------------------------------------------------

    /// Node-level conditions, one per supported type, naming each affected
    /// GPU. What the monitor cannot see is `Unknown`, never a guess.
    pub fn conditions(&self) -> Vec<Condition> {
        let n = self.enumerated();
        let driver = match &self.driver {
            Driver::Ready { version } => {
                let who = if version.is_empty() {
                    "driver ready".to_owned()
                } else {
                    format!("NVIDIA driver {version} ready")
                };
                Condition::new(
                    GPU_DRIVER_NOT_READY,
                    ConditionStatus::False,
                    REASON_DRIVER_READY,
                    format!("{who}; {}", gpus_visible(n)),
                )
            }
            Driver::NotReady { reason } => Condition::new(
                GPU_DRIVER_NOT_READY,
                ConditionStatus::True,
                REASON_DRIVER_NOT_READY,
                format!(
                    "{reason}; action: check that the NVIDIA driver is loaded (nvidia-smi) and the NVML library path"
                ),
            ),
        };
        let unresponsive = match &self.unresponsive {
            None => Condition::new(
                GPU_UNRESPONSIVE,
                ConditionStatus::False,
                REASON_RESPONSIVE,
                "NVML calls return in time",
            ),
            Some(stuck) => Condition::new(
                GPU_UNRESPONSIVE,
                ConditionStatus::True,
                REASON_UNRESPONSIVE,
                self.describe_stuck(stuck),
            ),
        };
        let mut out = vec![driver, unresponsive];
        if let Driver::NotReady { .. } = &self.driver {
            let types = Slot::ALL.map(Slot::condition_type);
            out.extend(
                [GPU_MISSING]
                    .iter()
                    .chain(&types)
                    .chain(&[GPU_THERMAL_THROTTLING])
                    .map(|t| {
                        Condition::new(
                            *t,
                            ConditionStatus::Unknown,
                            REASON_DRIVER_NOT_READY,
                            "cannot see the GPUs: the NVIDIA driver is not ready (see GPUDriverNotReady)",
                        )
                    }),
            );
            return out;
        }
        out.push(match &self.missing {
            None => Condition::new(
                GPU_MISSING,
                ConditionStatus::False,
                "AllGPUsPresent",
                format!("{} present", gpus_visible(n).replace(" visible", "")),
            ),
            Some(m) => Condition::new(
                GPU_MISSING,
                ConditionStatus::True,
                "GPUCountMismatch",
                format!(
                    "{m}; action: check nvidia-smi and the kernel log, reboot, then replace the GPU"
                ),
            ),
        });
        out.extend(Slot::ALL.map(|slot| self.slot_condition(slot, n)));
        let mut thermal = self.thermal_condition();
        // Readings stopped: a throttling GPU stays reported, a cool one is no
        // longer known to be cool.
        if self.unresponsive.is_some() && thermal.status != ConditionStatus::True {
            thermal = Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::Unknown,
                REASON_UNRESPONSIVE,
                "temperature readings stopped: NVML does not answer",
            );
        }
        out.push(thermal);
        out
    }

    fn slot_condition(&self, slot: Slot, n: usize) -> Condition {
        let hit: Vec<(&GpuState, &Fault)> = self
            .gpus
            .iter()
            .filter_map(|g| g.faults.get(&slot).map(|f| (g, f)))
            .collect();
        let mut parts: Vec<String> = hit
            .iter()
            .map(|(g, f)| format!("{}: {}; action: {}", g.id, f.evidence, f.action))
            .collect();
        if slot == Slot::Fabric {
            // A fatal NVSwitch error takes the fabric down for every GPU on it.
            parts.extend(self.switch_faults.iter().map(|(pci, what)| {
                format!("nvswitch pci={pci}: {what}; action: drain the node, restart the Fabric Manager, reset the switch and GPUs")
            }));
        }
        let reason = match hit.first() {
            Some((_, f)) => f.reason.clone(),
            None if !parts.is_empty() => "SXidFatal".to_owned(),
            None => String::new(),
        };
        match parts.is_empty() {
            false => Condition::new(
                slot.condition_type(),
                ConditionStatus::True,
                reason,
                join(parts.into_iter()),
            ),
            true => {
                let (reason, message) = slot.healthy(n);
                Condition::new(
                    slot.condition_type(),
                    ConditionStatus::False,
                    reason,
                    message,
                )
            }
        }
    }

    fn thermal_condition(&self) -> Condition {
        let hot: Vec<(&GpuState, String)> = self
            .gpus
            .iter()
            .filter_map(|g| {
                let what = match (g.throttled_at, g.margin_at, g.slowdown_throttling) {
                    (Some(t), _, _) => format!(
                        "reached {t} °C, slowdown is {} °C",
                        self.temperature_threshold.unwrap_or(g.slowdown)
                    ),
                    (None, Some(m), _) => {
                        format!("thermal margin {m} °C (at or past the slowdown point)")
                    }
                    (None, None, true) => {
                        "hardware or thermal slowdown active in most of the last 10 min".to_owned()
                    }
                    (None, None, false) => return None,
                };
                Some((g, what))
            })
            .collect();
        if hot.is_empty() {
            return Condition::new(
                GPU_THERMAL_THROTTLING,
                ConditionStatus::False,
                "NoThermalThrottling",
                "all GPUs below their slowdown temperature",
            );
        }
        Condition::new(
            GPU_THERMAL_THROTTLING,
            ConditionStatus::True,
            "ThermalSlowdown",
            join(hot.iter().map(|(g, what)| {
                format!("{}: {what}; action: check cooling, airflow and power", g.id)
            })),
        )
    }
}

fn fault(reason: &str, evidence: &str, action: &'static str) -> Fault {
    Fault {
        reason: reason.to_owned(),
        evidence: evidence.to_owned(),
        action,
        source: Source::Xid,
    }
}

/// "XID 48 ROBUST_CHANNEL_GPU_ECC_DBE (catalog: WORKFLOW_XID_48)"
fn evidence(info: &XidInfo) -> String {
    format!("{} (catalog: {})", info.title(), info.immediate)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn gpus_visible(n: usize) -> String {
    if n == 1 {
        "1 GPU visible".into()
    } else {
        format!("{n} GPUs visible")
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim;

    fn model() -> HealthModel {
        HealthModel::new(sim::identities(8))
    }

    fn status_of<'a>(conds: &'a [Condition], t: &str) -> &'a Condition {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn healthy_node_reports_all_false() {
        let m = model();
        let c = m.conditions();
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            crate::gpu::SUPPORTED_CONDITIONS,
            "one condition per supported type, in order"
        );
        assert!(
            c.iter().all(|c| c.status == ConditionStatus::False),
            "{c:?}"
        );
    }

    #[test]
    fn xid79_is_lost_and_names_the_gpu_until_reset() {
        let mut m = model();
        let now = SystemTime::now();
        assert!(m.apply(&Observation::Xid {
            gpu: 3,
            xid: 79,
            at: now
        }));
        let c = m.conditions();
        let lost = status_of(&c, GPU_LOST);
        assert_eq!(lost.status, ConditionStatus::True);
        assert_eq!(lost.reason, "GPUFellOffTheBus");
        let id = &sim::identities(8)[3];
        assert!(
            lost.message.contains(&id.uuid) && lost.message.contains(&id.pci_bus_id),
            "{}",
            lost.message
        );
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        let events = m.snapshot().events;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].1.reason.as_str(), events[0].1.severity),
            (REASON_XID_ERROR, Severity::Warn)
        );
        assert!(m.apply(&Observation::Reset { gpu: 3, at: now }));
        assert_eq!(
            status_of(&m.conditions(), GPU_LOST).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn reset_class_xid_sets_reset_required_and_app_xid_only_an_event() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Xid {
            gpu: 1,
            xid: 48,
            at: now,
        });
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::True
        );
        assert_eq!(status_of(&c, GPU_RESET_REQUIRED).reason, "Xid48");
        let mut m = model();
        assert!(
            m.apply(&Observation::Xid {
                gpu: 1,
                xid: 13,
                at: now
            }),
            "an event is a change"
        );
        let events = m.snapshot().events;
        assert_eq!(
            (events[0].1.reason.as_str(), events[0].1.severity),
            (REASON_XID_APP_ERROR, Severity::Info)
        );
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
    }

    #[test]
    fn thermal_throttling_has_hysteresis() {
        let mut m = model();
        let now = SystemTime::now();
        let temp = |m: &mut HealthModel, c| {
            m.apply(&Observation::Temperature {
                gpu: 5,
                celsius: c,
                at: now,
            })
        };
        let throttling =
            |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
        temp(&mut m, 88);
        assert_eq!(throttling(&m), ConditionStatus::False);
        temp(&mut m, 89);
        assert_eq!(throttling(&m), ConditionStatus::True);
        assert!(
            !temp(&mut m, 86),
            "inside the hysteresis band nothing changes"
        );
        assert_eq!(throttling(&m), ConditionStatus::True);
        temp(&mut m, 84);
        assert_eq!(throttling(&m), ConditionStatus::False);
    }

    #[test]
    fn without_a_driver_gpu_conditions_are_unknown_not_healthy() {
        let mut m = HealthModel::awaiting_driver();
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_DRIVER_NOT_READY).status,
            ConditionStatus::True
        );
        for t in [GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING] {
            assert_eq!(status_of(&c, t).status, ConditionStatus::Unknown, "{t}");
        }
        let now = SystemTime::now();
        m.apply(&Observation::DriverNotReady {
            reason: "cannot load NVML (x: not found)".into(),
            at: now,
        });
        let c = m.conditions();
        assert!(
            status_of(&c, GPU_DRIVER_NOT_READY)
                .message
                .contains("cannot load NVML (x: not found)")
        );
        assert!(
            m.snapshot().events.is_empty(),
            "never ready: no transition event"
        );

        let gpus = sim::identities(2);
        assert!(m.apply(&Observation::DriverReady {
            gpus: gpus.clone(),
            version: "580.159.04".into(),
            at: now
        }));
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_DRIVER_NOT_READY).status,
            ConditionStatus::False
        );
        assert!(
            status_of(&c, GPU_DRIVER_NOT_READY)
                .message
                .contains("580.159.04 ready; 2 GPUs visible")
        );
        assert!(
            c.iter().all(|c| c.status == ConditionStatus::False),
            "{c:?}"
        );
        assert_eq!(
            m.snapshot().events.last().map(|(_, e)| e.reason.as_str()),
            Some(REASON_DRIVER_READY)
        );
    }

    #[test]
    fn a_new_inventory_keeps_the_state_of_gpus_that_stay() {
        let mut m = HealthModel::awaiting_driver();
        let now = SystemTime::now();
        let gpus = sim::identities(3);
        m.apply(&Observation::DriverReady {
            gpus: gpus.clone(),
            version: "v".into(),
            at: now,
        });
        m.apply(&Observation::Xid {
            gpu: 2,
            xid: 48,
            at: now,
        });
        // GPU 0 disappears: indexes shift, the UUID decides who is who.
        let mut shifted: Vec<GpuIdentity> = gpus[1..].to_vec();
        for (i, g) in shifted.iter_mut().enumerate() {
            g.index = i as u32;
        }
        m.apply(&Observation::DriverReady {
            gpus: shifted,
            version: "v".into(),
            at: now,
        });
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert_eq!(reset.status, ConditionStatus::True);
        assert!(
            reset
                .message
                .contains(&format!("gpu=1 uuid={}", gpus[2].uuid)),
            "{}",
            reset.message
        );
    }

    #[test]
    fn a_hung_call_is_unresponsive_and_stale_readings_unknown() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Temperature {
            gpu: 4,
            celsius: 40,
            at: now,
        });
        assert!(m.apply(&Observation::Unresponsive {
            call: "nvmlDeviceGetTemperature".into(),
            gpu: Some(4),
            waited: Duration::from_secs(30),
            at: now,
        }));
        let c = m.conditions();
        let u = status_of(&c, GPU_UNRESPONSIVE);
        assert_eq!(u.status, ConditionStatus::True);
        assert!(
            u.message.contains("gpu=4 ") && u.message.contains("nvmlDeviceGetTemperature"),
            "{}",
            u.message
        );
        assert_eq!(
            status_of(&c, GPU_THERMAL_THROTTLING).status,
            ConditionStatus::Unknown
        );
        assert_eq!(
            status_of(&c, GPU_LOST).status,
            ConditionStatus::False,
            "XID-based state is not a reading"
        );
        assert!(m.apply(&Observation::Responsive { at: now }));
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
        assert!(
            !m.apply(&Observation::Responsive { at: now }),
            "nothing new"
        );
    }

    #[test]
    fn an_unknown_snapshot_keeps_the_types_and_events_and_says_why() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Xid {
            gpu: 3,
            xid: 79,
            at: now,
        });
        let before = m.snapshot();
        assert!(!before.events.is_empty());
        let after = before.clone().unknown("the GPU health model stopped");
        assert_eq!(after.events, before.events);
        assert_eq!(
            after
                .conditions
                .iter()
                .map(|c| &c.type_)
                .collect::<Vec<_>>(),
            before
                .conditions
                .iter()
                .map(|c| &c.type_)
                .collect::<Vec<_>>()
        );
        for c in &after.conditions {
            assert_eq!(c.status, ConditionStatus::Unknown, "{}", c.type_);
            assert_eq!(c.reason, REASON_MODEL_RESTARTING);
            assert_eq!(c.message, "the GPU health model stopped");
        }
    }

    #[test]
    fn a_backend_that_went_down_stops_the_readings_until_it_answers_again() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Temperature {
            gpu: 1,
            celsius: 40,
            at: now,
        });
        assert!(m.apply(&Observation::BackendDown {
            reason: "the NVML backend panicked (boom) and restarts".into(),
            at: now,
        }));
        let c = m.conditions();
        let u = status_of(&c, GPU_UNRESPONSIVE);
        assert_eq!(u.status, ConditionStatus::True);
        assert!(
            u.message
                .starts_with("no readings: the NVML backend panicked (boom) and restarts; "),
            "{}",
            u.message
        );
        assert_eq!(
            status_of(&c, GPU_THERMAL_THROTTLING).status,
            ConditionStatus::Unknown,
            "a cool GPU is no longer known to be cool"
        );
        // The restarted backend's first sweep says Responsive.
        assert!(m.apply(&Observation::Responsive { at: now }));
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
    }

    #[test]
    fn the_gpus_own_slowdown_threshold_is_used() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::SlowdownThreshold {
            gpu: 0,
            celsius: 80,
        });
        m.apply(&Observation::Temperature {
            gpu: 0,
            celsius: 82,
            at: now,
        });
        let t = status_of(&m.conditions(), GPU_THERMAL_THROTTLING).clone();
        assert_eq!(t.status, ConditionStatus::True);
        assert!(t.message.contains("slowdown is 80 °C"), "{}", t.message);
    }

    #[test]
    fn kernel_xids_find_their_gpu_by_pci_address_or_are_named_by_it() {
        let mut m = model();
        let now = SystemTime::now();
        let pci = |s: &str| PciAddr::parse(s).expect("address");
        // GPU 3 of the sim is 00000000:61:00.0; the kernel writes 0000:61:00.
        m.apply(&Observation::KernelXid {
            pci: pci("0000:61:00"),
            xid: 79,
            detail: "pid=7, name=python3, GPU has fallen off the bus.".into(),
            at: now,
            replay: false,
        });
        let lost = status_of(&m.conditions(), GPU_LOST).clone();
        assert!(lost.message.starts_with("gpu=3 "), "{}", lost.message);
        let events = m.snapshot().events;
        assert!(
            events[0].1.message.contains("kernel: pid=7, name=python3"),
            "{}",
            events[0].1.message
        );

        // An address no GPU has: still reported, named by the address.
        m.apply(&Observation::KernelXid {
            pci: pci("0000:3b:00"),
            xid: 48,
            detail: String::new(),
            at: now,
            replay: false,
        });
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert_eq!(reset.status, ConditionStatus::True);
        assert!(
            reset
                .message
                .starts_with("gpu=unknown pci=0000:3b:00 (not enumerated by the driver)"),
            "{}",
            reset.message
        );
        assert_eq!(
            m.enumerated(),
            8,
            "the stranger is not counted as a GPU the driver sees"
        );
        let driver = status_of(&m.conditions(), GPU_DRIVER_NOT_READY).clone();
        assert!(
            driver.message.ends_with("8 GPUs visible"),
            "{}",
            driver.message
        );
    }

    #[test]
    fn event_backlog_is_bounded() {
        let mut m = model();
        // Distinct (GPU, XID) keys, so nothing aggregates.
        for i in 0..200u32 {
            m.apply(&Observation::Xid {
                gpu: i % 8,
                xid: 1000 + i,
                at: SystemTime::now(),
            });
        }
        let s = m.snapshot();
        assert_eq!(s.events.len(), EVENT_BACKLOG);
        assert_eq!(s.last_event_seq(), 200);
        assert_eq!(s.events_after(198).count(), 2);
    }

    #[test]
    fn an_xid_storm_becomes_one_event_and_one_summary() {
        let mut m = model();
        let t0 = SystemTime::now();
        for i in 0..10_000u64 {
            m.apply(&Observation::Xid {
                gpu: 2,
                xid: 95,
                at: t0 + Duration::from_millis(i),
            });
        }
        // Another GPU's XID is its own key: not swallowed by the storm.
        m.apply(&Observation::Xid {
            gpu: 5,
            xid: 95,
            at: t0,
        });
        assert_eq!(m.snapshot().events.len(), 2);
        assert!(!m.flush(t0 + Duration::from_secs(30)), "window still open");
        assert!(m.flush(t0 + EVENT_WINDOW + Duration::from_secs(1)));
        let events = m.snapshot().events;
        assert_eq!(events.len(), 3);
        let summary = &events[2].1;
        assert!(
            summary.message.contains("gpu=2 ")
                && summary.message.contains("repeated 9999 more times"),
            "{}",
            summary.message
        );
        assert!(!m.flush(t0 + EVENT_WINDOW * 3), "nothing left to summarise");
        // After the window a new occurrence is news again.
        m.apply(&Observation::Xid {
            gpu: 2,
            xid: 95,
            at: t0 + EVENT_WINDOW * 3,
        });
        assert_eq!(m.snapshot().events.len(), 4);
    }

    #[test]
    fn catalog_classes_raise_their_conditions() {
        let now = SystemTime::now();
        for (xid, types) in [
            (79, &[GPU_LOST, GPU_REBOOT_REQUIRED][..]),
            (64, &[GPU_MEMORY_UNHEALTHY, GPU_RESET_REQUIRED][..]),
            (54, &[GPU_HARDWARE_FAULT][..]),
            (136, &[GPU_NVLINK_DOWN, GPU_RESET_REQUIRED][..]),
            (74, &[GPU_NVLINK_DEGRADED][..]),
            (151, &[GPU_REBOOT_REQUIRED][..]),
            (13, &[][..]),
        ] {
            let mut m = model();
            m.apply(&Observation::Xid {
                gpu: 6,
                xid,
                at: now,
            });
            let c = m.conditions();
            for cond in &c {
                let expected = types.contains(&cond.type_.as_str());
                assert_eq!(
                    cond.status == ConditionStatus::True,
                    expected,
                    "XID {xid}: {cond:?}"
                );
                if expected {
                    assert!(
                        cond.message.starts_with("gpu=6 ")
                            && cond.message.contains(&format!("XID {xid} ")),
                        "{}",
                        cond.message
                    );
                    assert!(cond.message.contains("action: "), "{}", cond.message);
                }
            }
        }
    }

    #[test]
    fn a_reset_clears_reset_class_faults_but_not_memory_or_hardware() {
        let mut m = model();
        let now = SystemTime::now();
        for xid in [64, 54, 74] {
            m.apply(&Observation::Xid {
                gpu: 1,
                xid,
                at: now,
            });
        }
        m.apply(&Observation::Reset { gpu: 1, at: now });
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        assert_eq!(
            status_of(&c, GPU_NVLINK_DEGRADED).status,
            ConditionStatus::False
        );
        assert_eq!(
            status_of(&c, GPU_MEMORY_UNHEALTHY).status,
            ConditionStatus::True,
            "a board property"
        );
        assert_eq!(
            status_of(&c, GPU_HARDWARE_FAULT).status,
            ConditionStatus::True,
            "a board property"
        );
    }

    #[test]
    fn the_recovery_action_overrides_the_catalog() {
        let mut m = model();
        let now = SystemTime::now();
        let pci = PciAddr::parse("0000:52:00").expect("GPU 2 of the sim");
        let xid154 = |to: &str| Observation::KernelXid {
            pci,
            xid: 154,
            detail: format!("GPU recovery action changed from 0x0 (None) to {to}"),
            at: now,
            replay: false,
        };
        // XID 109 alone is only an event; the driver asking for a reset decides.
        m.apply(&Observation::Xid {
            gpu: 2,
            xid: 109,
            at: now,
        });
        assert_eq!(
            status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        m.apply(&xid154("0x1 (GPU Reset Required)"));
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert_eq!(
            (reset.status, reset.reason.as_str()),
            (ConditionStatus::True, "RecoveryAction")
        );
        assert!(
            reset
                .message
                .contains("driver recovery action: GPU Reset Required"),
            "{}",
            reset.message
        );
        // The driver changes its mind: node reboot.
        m.apply(&xid154("0x2 (Node Reboot Required)"));
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        assert_eq!(
            status_of(&c, GPU_REBOOT_REQUIRED).status,
            ConditionStatus::True
        );
        // NVML's field says the same thing the same way.
        m.apply(&Observation::RecoveryAction {
            gpu: 2,
            action: 0,
            at: now,
        });
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
        let reasons: Vec<String> = m
            .snapshot()
            .events
            .iter()
            .map(|(_, e)| e.reason.clone())
            .collect();
        assert_eq!(
            reasons
                .iter()
                .filter(|r| *r == REASON_RECOVERY_ACTION)
                .count(),
            3,
            "{reasons:?}"
        );
        assert_eq!(
            parse_recovery_change("… from 0x0 (None) to 0x4 (Drain and Reset)"),
            Some(4)
        );
        assert_eq!(parse_recovery_change("garbage"), None);
    }

    #[test]
    fn sustained_slowdown_throttles_by_rate_and_idle_samples_do_not_count() {
        let mut m = model();
        let now = SystemTime::now();
        let sample = |m: &mut HealthModel, slowdown, idle| {
            m.apply(&Observation::ClockEvents {
                gpu: 7,
                slowdown,
                idle,
                at: now,
            })
        };
        let throttling =
            |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
        for _ in 0..100 {
            sample(&mut m, false, true); // idle: ignored while not throttling
        }
        for _ in 0..5 {
            sample(&mut m, true, false);
        }
        assert_eq!(
            throttling(&m),
            ConditionStatus::False,
            "too few samples yet"
        );
        sample(&mut m, true, false);
        assert_eq!(throttling(&m), ConditionStatus::True);
        // Mostly good now, but not yet ≤ 20 % over the window.
        for _ in 0..20 {
            sample(&mut m, false, false);
        }
        assert_eq!(throttling(&m), ConditionStatus::True, "hysteresis");
        for _ in 0..40 {
            sample(&mut m, false, false);
        }
        assert_eq!(throttling(&m), ConditionStatus::False);
    }

    #[test]
    fn row_remapping_pending_needs_a_reset_and_failure_is_a_memory_fault() {
        let mut m = model();
        let now = SystemTime::now();
        let rows = |m: &mut HealthModel, pending, failure, uncorrectable| {
            m.apply(&Observation::RemappedRows {
                gpu: 0,
                pending,
                failure,
                uncorrectable,
                at: now,
            })
        };
        rows(&mut m, true, false, 1);
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).reason,
            REASON_ROW_REMAP_PENDING
        );
        assert_eq!(
            status_of(&c, GPU_MEMORY_UNHEALTHY).status,
            ConditionStatus::False
        );
        // Pending clears after three good readings in a row, not at once.
        rows(&mut m, false, false, 1);
        rows(&mut m, false, false, 1);
        assert_eq!(
            status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
            ConditionStatus::True
        );
        rows(&mut m, false, false, 1);
        assert_eq!(
            status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
            ConditionStatus::False
        );
        rows(&mut m, false, true, 1);
        assert_eq!(
            status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
            "RowRemapFailure"
        );
        let mut m = model();
        rows(&mut m, false, false, 600);
        assert_eq!(
            status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
            "RemappedRowsExhausted"
        );
    }

    #[test]
    fn volatile_ecc_pcie_width_and_nvlink_readings() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::VolatileUncorrectableEcc {
            gpu: 4,
            count: 2,
            at: now,
        });
        let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
        assert!(
            reset
                .message
                .contains("2 uncorrectable ECC errors since the driver loaded"),
            "{}",
            reset.message
        );

        m.apply(&Observation::PcieLink {
            gpu: 4,
            width: 8,
            max_width: 16,
            at: now,
        });
        let pcie = status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).clone();
        assert_eq!(pcie.status, ConditionStatus::True);
        assert!(pcie.message.contains("x8 of x16"), "{}", pcie.message);
        m.apply(&Observation::Reset { gpu: 4, at: now });
        assert_eq!(
            status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status,
            ConditionStatus::True,
            "a reset does not retrain a link"
        );

        let links = |m: &mut HealthModel, active: &[u32], inactive: &[u32]| {
            m.apply(&Observation::NvLinks {
                gpu: 4,
                active: active.to_vec(),
                inactive: inactive.to_vec(),
                at: now,
            })
        };
        links(&mut m, &[0, 1, 2, 3], &[]);
        assert_eq!(
            status_of(&m.conditions(), GPU_NVLINK_DOWN).status,
            ConditionStatus::False
        );
        links(&mut m, &[0, 1, 3], &[2]);
        let down = status_of(&m.conditions(), GPU_NVLINK_DOWN).clone();
        assert!(
            down.message.contains("NVLink 2 inactive"),
            "{}",
            down.message
        );
        // Not supported here (empty) is not "down".
        let mut single = model();
        single.apply(&Observation::NvLinks {
            gpu: 0,
            active: vec![],
            inactive: vec![],
            at: now,
        });
        assert_eq!(
            status_of(&single.conditions(), GPU_NVLINK_DOWN).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn fewer_gpus_than_any_source_says_is_missing() {
        let mut m = model();
        let now = SystemTime::now();
        let count = |m: &mut HealthModel, nvml, sysfs, dev, expected| {
            m.apply(&Observation::GpuCount {
                counts: GpuCounts {
                    nvml,
                    sysfs,
                    dev_nodes: dev,
                    expected,
                },
                at: now,
            })
        };
        count(&mut m, Some(8), Some(8), Some(8), None);
        assert_eq!(
            status_of(&m.conditions(), GPU_MISSING).status,
            ConditionStatus::False
        );
        // sysfs still lists the GPU the driver lost.
        count(&mut m, Some(7), Some(8), Some(7), None);
        let missing = status_of(&m.conditions(), GPU_MISSING).clone();
        assert_eq!(missing.status, ConditionStatus::True);
        assert!(
            missing.message.contains("NVML enumerates 7 of 8 GPUs"),
            "{}",
            missing.message
        );
        // Even when every source agrees on 7, we once saw 8.
        count(&mut m, Some(7), Some(7), Some(7), None);
        assert_eq!(
            status_of(&m.conditions(), GPU_MISSING).status,
            ConditionStatus::True
        );
        let mut m = model();
        count(&mut m, Some(8), None, None, Some(8));
        assert_eq!(
            status_of(&m.conditions(), GPU_MISSING).status,
            ConditionStatus::False
        );
        let mut m = model();
        count(&mut m, Some(6), None, None, Some(8));
        assert_eq!(
            status_of(&m.conditions(), GPU_MISSING).status,
            ConditionStatus::True,
            "configured count"
        );
    }

    #[test]
    fn operator_thresholds_override_and_memory_is_only_a_note() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::MemoryUsage {
            gpu: 1,
            used_percent: 99.0,
            at: now,
        });
        assert!(
            m.snapshot().events.is_empty(),
            "no memory threshold by default"
        );
        m.apply(&Observation::Thresholds {
            temperature: Some(70),
            memory_percent: Some(95.0),
        });
        m.apply(&Observation::MemoryUsage {
            gpu: 1,
            used_percent: 99.0,
            at: now,
        });
        let events = m.snapshot().events;
        assert_eq!(
            (events[0].1.reason.as_str(), events[0].1.severity),
            ("GPUMemoryHigh", Severity::Info)
        );
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False),
            "memory use is never a fault"
        );
        m.apply(&Observation::Temperature {
            gpu: 1,
            celsius: 72,
            at: now,
        });
        let t = status_of(&m.conditions(), GPU_THERMAL_THROTTLING).clone();
        assert_eq!(t.status, ConditionStatus::True);
        assert!(t.message.contains("slowdown is 70 °C"), "{}", t.message);
    }

    #[test]
    fn the_same_xid_from_nvml_and_the_kernel_log_is_one_report() {
        let mut m = model();
        let now = SystemTime::now();
        m.apply(&Observation::Xid {
            gpu: 3,
            xid: 79,
            at: now,
        });
        m.apply(&Observation::KernelXid {
            pci: PciAddr::parse("0000:61:00").expect("pci"),
            xid: 79,
            detail: "GPU has fallen off the bus.".into(),
            at: now + Duration::from_secs(2),
            replay: false,
        });
        assert_eq!(m.snapshot().events.len(), 1);
        // Later, it is a new occurrence (aggregated as a repeat, not dropped).
        m.apply(&Observation::Xid {
            gpu: 3,
            xid: 79,
            at: now + Duration::from_secs(30),
        });
        assert!(m.flush(now + Duration::from_secs(200)));
        assert!(
            m.snapshot().events[1]
                .1
                .message
                .contains("repeated 1 more times")
        );
    }

    #[test]
    fn fabric_registration_and_inforom() {
        let mut m = model();
        let now = SystemTime::now();
        let fabric = |m: &mut HealthModel, state, status| {
            m.apply(&Observation::Fabric {
                gpu: 0,
                state,
                status,
                at: now,
            })
        };
        let status = |m: &HealthModel| status_of(&m.conditions(), GPU_FABRIC_NOT_READY).status;
        fabric(&mut m, 0, 0);
        assert_eq!(
            status(&m),
            ConditionStatus::False,
            "no fabric is not a problem"
        );
        fabric(&mut m, 2, 0);
        fabric(&mut m, 2, 0);
        assert_eq!(
            status(&m),
            ConditionStatus::False,
            "registration takes a moment after boot"
        );
        fabric(&mut m, 2, 0);
        assert_eq!(status(&m), ConditionStatus::True);
        for _ in 0..3 {
            fabric(&mut m, 3, 0);
        }
        assert_eq!(status(&m), ConditionStatus::False);
        fabric(&mut m, 3, 17);
        assert!(
            status_of(&m.conditions(), GPU_FABRIC_NOT_READY)
                .message
                .contains("status 17")
        );

        m.apply(&Observation::InfoRom {
            gpu: 1,
            valid: false,
            at: now,
        });
        m.apply(&Observation::Reset { gpu: 1, at: now });
        let hw = status_of(&m.conditions(), GPU_HARDWARE_FAULT).clone();
        assert_eq!(
            (hw.status, hw.reason.as_str()),
            (ConditionStatus::True, "InfoROMCorrupted")
        );
    }

    #[test]
    fn counters_raise_conditions_only_when_growth_is_sustained() {
        let mut m = model();
        let now = SystemTime::now();
        let pcie = |m: &mut HealthModel, count| {
            m.apply(&Observation::PcieReplays {
                gpu: 3,
                count,
                at: now,
            })
        };
        let status = |m: &HealthModel, t| status_of(&m.conditions(), t).status;
        pcie(&mut m, 1_000_000); // the first reading is a baseline, not a rate
        assert!(m.snapshot().events.is_empty());
        pcie(&mut m, 1_000_500);
        pcie(&mut m, 1_001_000);
        assert_eq!(
            status(&m, GPU_PCIE_LINK_DEGRADED),
            ConditionStatus::False,
            "not yet sustained"
        );
        assert_eq!(
            m.snapshot().events.len(),
            1,
            "one event, the repeat aggregated"
        );
        pcie(&mut m, 1_001_500);
        assert_eq!(status(&m, GPU_PCIE_LINK_DEGRADED), ConditionStatus::True);
        for c in [1_001_510, 1_001_520, 1_001_530] {
            pcie(&mut m, c);
        }
        assert_eq!(status(&m, GPU_PCIE_LINK_DEGRADED), ConditionStatus::False);

        let nv = |m: &mut HealthModel, count| {
            m.apply(&Observation::NvlinkErrors {
                gpu: 3,
                count,
                at: now,
            })
        };
        for c in [0, 5, 9, 20] {
            nv(&mut m, c);
        }
        let d = status_of(&m.conditions(), GPU_NVLINK_DEGRADED).clone();
        assert_eq!(d.status, ConditionStatus::True);
        assert!(d.message.contains("grew for 3 readings"), "{}", d.message);
        nv(&mut m, 0); // counters reset: a new baseline, not a negative rate
        for _ in 0..3 {
            nv(&mut m, 0);
        }
        assert_eq!(
            status_of(&m.conditions(), GPU_NVLINK_DEGRADED).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn a_fatal_nvswitch_error_takes_the_fabric_down() {
        let mut m = model();
        let now = SystemTime::now();
        let sxid = |fatal| Observation::SXid {
            pci: PciAddr::parse("0000:05:00").expect("pci"),
            sxid: 24007,
            fatal,
            detail: "Link 33 sourcetrack timeout error".into(),
            at: now,
            replay: false,
        };
        m.apply(&sxid(false));
        assert_eq!(
            status_of(&m.conditions(), GPU_FABRIC_NOT_READY).status,
            ConditionStatus::False
        );
        assert_eq!(m.snapshot().events[0].1.reason, "SXIDError");
        m.apply(&sxid(true));
        let f = status_of(&m.conditions(), GPU_FABRIC_NOT_READY).clone();
        assert_eq!(
            (f.status, f.reason.as_str()),
            (ConditionStatus::True, "SXidFatal")
        );
        assert!(
            f.message
                .starts_with("nvswitch pci=0000:05:00: SXid 24007 (fatal)"),
            "{}",
            f.message
        );
    }

    #[test]
    fn retired_pages_corrected_ecc_and_a_degraded_source() {
        let mut m = model();
        let now = SystemTime::now();
        let pages = |m: &mut HealthModel, single_bit, double_bit, pending| {
            m.apply(&Observation::RetiredPages {
                gpu: 0,
                single_bit,
                double_bit,
                pending,
                at: now,
            })
        };
        pages(&mut m, 3, 1, true);
        assert_eq!(
            status_of(&m.conditions(), GPU_RESET_REQUIRED).reason,
            "PageRetirementPending"
        );
        assert_eq!(
            status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).status,
            ConditionStatus::False
        );
        pages(&mut m, 3, 16, false);
        assert_eq!(
            status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
            "RetiredPagesExhausted"
        );

        m.apply(&Observation::CorrectedEcc {
            gpu: 1,
            count: 10,
            at: now,
        });
        m.apply(&Observation::CorrectedEcc {
            gpu: 1,
            count: 5_000,
            at: now,
        });
        let reasons: Vec<String> = m
            .snapshot()
            .events
            .iter()
            .map(|(_, e)| e.reason.clone())
            .collect();
        assert!(
            reasons.contains(&"CorrectedECCRateHigh".to_owned()),
            "{reasons:?}"
        );

        m.apply(&Observation::SourceDegraded {
            source: "kernel log".into(),
            reason: "permission denied".into(),
            at: now,
        });
        let last = m
            .snapshot()
            .events
            .last()
            .map(|(_, e)| e.clone())
            .expect("event");
        assert_eq!(
            (last.reason.as_str(), last.message.as_str()),
            ("GPUMonitorDegraded", "kernel log: permission denied")
        );
    }

    #[test]
    fn a_flapping_condition_is_held_true_until_it_stays_clear() {
        let mut m = model();
        let t0 = SystemTime::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let width = |m: &mut HealthModel, w, t| {
            m.apply(&Observation::PcieLink {
                gpu: 5,
                width: w,
                max_width: 16,
                at: t,
            })
        };
        let status = |m: &HealthModel| status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status;
        let mut t = 0;
        for round in 0..3 {
            width(&mut m, 8, at(t));
            t += 10;
            for _ in 0..3 {
                width(&mut m, 16, at(t));
                t += 10;
            }
            if round < 2 {
                assert_eq!(
                    status(&m),
                    ConditionStatus::False,
                    "round {round}: clears normally"
                );
            }
        }
        // Third set within 10 min: flapping, and the clear is held back.
        assert_eq!(status(&m), ConditionStatus::True);
        let flaps: Vec<_> = m
            .snapshot()
            .events
            .into_iter()
            .filter(|(_, e)| e.reason == "GPUConditionFlapping")
            .collect();
        assert_eq!(flaps.len(), 1);
        assert!(
            flaps[0].1.message.contains("gpu=5 ")
                && flaps[0].1.message.contains("GPUPCIeLinkDegraded")
        );
        assert!(!m.flush(at(t + 60)), "still inside the hold");
        assert_eq!(status(&m), ConditionStatus::True);
        assert!(m.flush(at(t + FLAP_WINDOW.as_secs() + 1)));
        assert_eq!(
            status(&m),
            ConditionStatus::False,
            "clear once the hold ends"
        );
    }

    #[test]
    fn the_driver_reinitialising_a_gpu_is_reset_evidence() {
        let now = SystemTime::now();
        let pci = PciAddr::parse("0000:61:00").expect("GPU 3 of the sim");
        let xid = |replay| Observation::KernelXid {
            pci,
            xid: 48,
            detail: String::new(),
            at: now,
            replay,
        };
        let init = |replay| Observation::KernelGpuInit {
            pci,
            at: now,
            replay,
        };
        let reset_status = |m: &HealthModel| status_of(&m.conditions(), GPU_RESET_REQUIRED).status;

        let mut m = model();
        m.apply(&xid(false));
        assert_eq!(reset_status(&m), ConditionStatus::True);
        m.apply(&init(false));
        assert_eq!(reset_status(&m), ConditionStatus::False);
        assert_eq!(
            m.snapshot().events.last().map(|(_, e)| e.reason.clone()),
            Some(REASON_RECOVERED.to_owned())
        );

        // After a monitor restart the whole story replays, quietly, to the same end.
        let mut m = model();
        m.apply(&xid(true));
        m.apply(&init(true));
        assert_eq!(reset_status(&m), ConditionStatus::False);
        assert!(m.snapshot().events.is_empty());

        // Volatile ECC counters going back to zero: the driver reset the GPU.
        let mut m = model();
        let ecc = |count| Observation::VolatileUncorrectableEcc {
            gpu: 3,
            count,
            at: now,
        };
        m.apply(&ecc(0));
        m.apply(&Observation::Xid {
            gpu: 3,
            xid: 48,
            at: now,
        });
        m.apply(&ecc(2));
        assert_eq!(reset_status(&m), ConditionStatus::True);
        m.apply(&ecc(0));
        assert_eq!(
            reset_status(&m),
            ConditionStatus::False,
            "XID 48 cleared by the counters' reset"
        );
    }

    #[test]
    fn no_thermal_margin_left_is_throttling() {
        let mut m = model();
        let now = SystemTime::now();
        let margin = |m: &mut HealthModel, c| {
            m.apply(&Observation::MarginTemperature {
                gpu: 4,
                celsius: c,
                at: now,
            })
        };
        let status = |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
        margin(&mut m, 12);
        assert_eq!(status(&m), ConditionStatus::False);
        margin(&mut m, 0);
        assert_eq!(status(&m), ConditionStatus::True);
        assert!(
            status_of(&m.conditions(), GPU_THERMAL_THROTTLING)
                .message
                .contains("thermal margin 0 °C")
        );
        margin(&mut m, 3);
        assert_eq!(status(&m), ConditionStatus::True, "hysteresis");
        margin(&mut m, 6);
        assert_eq!(status(&m), ConditionStatus::False);
    }

    #[test]
    fn a_slow_pcie_generation_counts_only_while_busy() {
        let mut m = model();
        let now = SystemTime::now();
        let status = |m: &HealthModel| status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status;
        let sweep = |m: &mut HealthModel, idle: bool, generation: u32| {
            m.apply_all(&[
                Observation::ClockEvents {
                    gpu: 2,
                    slowdown: false,
                    idle,
                    at: now,
                },
                Observation::PcieGen {
                    gpu: 2,
                    generation,
                    max_generation: 5,
                    at: now,
                },
            ])
        };
        for _ in 0..5 {
            sweep(&mut m, true, 1);
        }
        assert_eq!(
            status(&m),
            ConditionStatus::False,
            "idle power saving is not a fault"
        );
        sweep(&mut m, false, 3);
        sweep(&mut m, false, 3);
        assert_eq!(status(&m), ConditionStatus::False, "not yet sustained");
        sweep(&mut m, false, 3);
        let p = status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).clone();
        assert_eq!(p.status, ConditionStatus::True);
        assert!(
            p.message.contains("gen 3 of 5 while the GPU is busy"),
            "{}",
            p.message
        );
    }

    #[test]
    fn nvlink5_xids_follow_the_severity_in_their_text() {
        let now = SystemTime::now();
        let pci = PciAddr::parse("0000:52:00").expect("GPU 2 of the sim");
        let line = |detail: &str| Observation::KernelXid {
            pci,
            xid: 145,
            detail: detail.into(),
            at: now,
            replay: false,
        };
        let mut m = model();
        m.apply(&line(
            "RLW_REMAP Nonfatal XC0 i0 Link 5 (0x00000004 0x00000000 0x0 0x0 0x0)",
        ));
        assert!(
            m.conditions()
                .iter()
                .all(|c| c.status == ConditionStatus::False)
        );
        let mut m = model();
        m.apply(&line(
            "RLW_SRC_TRACK Fatal XC0 i0 Link 5 (0x00000002 0x00000000 0x0 0x0 0x0)",
        ));
        let c = m.conditions();
        assert_eq!(
            status_of(&c, GPU_NVLINK_DEGRADED).status,
            ConditionStatus::True
        );
        assert_eq!(
            status_of(&c, GPU_RESET_REQUIRED).status,
            ConditionStatus::True
        );
    }

    #[test]
    fn replayed_kernel_xids_rebuild_state_without_events() {
        let mut m = model();
        m.apply(&Observation::KernelXid {
            pci: PciAddr::parse("0000:61:00").expect("pci"),
            xid: 48,
            detail: String::new(),
            at: SystemTime::now(),
            replay: true,
        });
        assert_eq!(
            status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
            ConditionStatus::True
        );
        assert!(m.snapshot().events.is_empty());
    }
}
