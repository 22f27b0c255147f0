//! Per-GPU state: the fault slots (one per per-GPU condition), why a slot is
//! set ([`Fault`], [`Source`]), and [`GpuState`] with its cumulative
//! counters, sets, clears and reading-based faults.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use super::{DEFAULT_SLOWDOWN_CELSIUS, GOOD_READINGS_TO_CLEAR};
use crate::gpu::{
    GPU_FABRIC_NOT_READY, GPU_HARDWARE_FAULT, GPU_LOST, GPU_MEMORY_UNHEALTHY, GPU_NVLINK_DEGRADED,
    GPU_NVLINK_DOWN, GPU_PCIE_LINK_DEGRADED, GPU_REBOOT_REQUIRED, GPU_RESET_REQUIRED, GpuIdentity,
    UNENUMERATED,
};

/// A per-GPU fault condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Slot {
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
    pub(super) const ALL: [Self; 9] = [
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

    pub(super) fn condition_type(self) -> &'static str {
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

    /// An observed reset (the GPU answers again) clears these; memory and
    /// hardware faults are properties of the board.
    pub(super) fn cleared_by_reset(self) -> bool {
        !matches!(
            self,
            Self::Memory | Self::Hardware | Self::Pcie | Self::Fabric
        )
    }
}

/// Why a slot is set: kept from the first evidence, so the message stays
/// stable while the fault lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fault {
    pub(super) reason: String,
    pub(super) evidence: String,
    pub(super) action: &'static str,
    pub(super) source: Source,
}

/// Where a fault's evidence came from, which decides what may clear it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// An XID (cleared by a reset, or never for board faults).
    Xid,
    /// The driver's recovery action (cleared when the action changes).
    Recovery,
    /// A reading such as a counter or link state (cleared when readings are good again).
    Reading(&'static str),
}

#[derive(Clone, Debug)]
pub(super) struct GpuState {
    pub(super) id: GpuIdentity,
    /// In the driver's current inventory. A GPU NVML enumerated and then
    /// lost stays, with its faults, until the driver names it again.
    pub(super) enumerated: bool,
    /// This GPU's slowdown temperature (NVML's, or the H200 default).
    pub(super) slowdown: i32,
    pub(super) faults: BTreeMap<Slot, Fault>,
    /// Temperature when throttling began (kept out of the live reading so
    /// the condition message does not churn with every degree).
    pub(super) throttled_at: Option<i32>,
    /// Thermal margin (°C) when it reached zero, while it stays low.
    pub(super) margin_at: Option<i32>,
    /// The driver's recovery action (NVML field 230 / XID 154), 0 = none.
    pub(super) recovery: u32,
    /// Recent clock-event samples: slowdown active or not (idle samples skipped).
    pub(super) slowdown_samples: VecDeque<bool>,
    /// Throttling judged from the slowdown rate.
    pub(super) slowdown_throttling: bool,
    /// Whether the last clock-event sample found the GPU idle.
    pub(super) last_idle: Option<bool>,
    /// Slow readings in a row with the PCIe link below its generation while busy.
    pub(super) gen_low_streak: u8,
    /// Consecutive good readings per reading-based fault.
    pub(super) good_readings: HashMap<&'static str, u8>,
    /// NVLinks active when first seen: the ones expected to stay up.
    pub(super) nvlink_baseline: Option<Vec<u32>>,
    /// Consecutive readings with the fabric registration not yet complete.
    pub(super) fabric_pending: u8,
    /// Last value and consecutive over-budget readings, per counter.
    pub(super) counters: HashMap<&'static str, (u64, u8)>,
    /// Per application XID with a repeat rule: when it was last seen, and
    /// when each of its recent bursts began.
    pub(super) xid_bursts: HashMap<u32, (SystemTime, VecDeque<SystemTime>)>,
    /// The same, per repeat entry of the XID policy (by its index).
    pub(super) policy_bursts: HashMap<usize, (SystemTime, VecDeque<SystemTime>)>,
    /// XIDs reported (not replayed), by XID, since the monitor started.
    pub(super) xid_counts: BTreeMap<u32, u64>,
    /// Recent times each slot was set (flap guard).
    pub(super) set_times: HashMap<Slot, VecDeque<SystemTime>>,
    /// Slots held True for flapping: until when, and whether a clear waits.
    pub(super) holds: HashMap<Slot, (SystemTime, bool)>,
    /// Slots that just started flapping (the model sends one event each).
    pub(super) newly_flapping: Vec<Slot>,
}

impl GpuState {
    pub(super) fn new(id: GpuIdentity) -> Self {
        Self {
            enumerated: id.index != UNENUMERATED,
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
            xid_bursts: HashMap::new(),
            policy_bursts: HashMap::new(),
            xid_counts: BTreeMap::new(),
            set_times: HashMap::new(),
            holds: HashMap::new(),
            newly_flapping: Vec::new(),
        }
    }

    /// Feeds a cumulative counter; returns the increase since the last
    /// reading and how many readings in a row went over `budget`. A counter
    /// that went down (driver reload, reset) starts over.
    pub(super) fn counter(&mut self, key: &'static str, value: u64, budget: u64) -> (u64, u8) {
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
    pub(super) fn set(&mut self, slot: Slot, fault: Fault, now: SystemTime) -> bool {
        if self.faults.contains_key(&slot) {
            return false;
        }
        self.faults.insert(slot, fault);
        self.note_set(slot, now);
        true
    }

    /// Clears `slot` unless the flap guard holds it (then the clear waits for
    /// the hold to end). Returns true when it cleared.
    pub(super) fn clear(&mut self, slot: Slot, now: SystemTime) -> bool {
        if let Some(hold) = self.holds.get_mut(&slot)
            && now < hold.0
        {
            hold.1 = self.faults.contains_key(&slot);
            return false;
        }
        self.holds.remove(&slot);
        self.faults.remove(&slot).is_some()
    }

    /// A reading-based fault: set at once when bad; cleared after
    /// [`GOOD_READINGS_TO_CLEAR`] good readings in a row. Returns true when it was just set.
    pub(super) fn reading(
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

pub(super) fn fault(reason: &str, evidence: &str, action: &'static str) -> Fault {
    Fault {
        reason: reason.to_owned(),
        evidence: evidence.to_owned(),
        action,
        source: Source::Xid,
    }
}
