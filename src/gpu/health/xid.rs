//! XIDs and what the driver says about recovery: XIDs from NVML events and
//! from the kernel log (one report when both see the same one), classified
//! by the catalog (`src/gpu/xid.rs`); the driver's recovery action (NVML
//! field 230 / XID 154), which overrides the catalog; NVSwitch SXids; a GPU
//! the driver reports lost; and finding a GPU by its PCI address.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::render::{evidence, truncate};
use super::state::{GpuState, Slot, Source, fault};
use super::{
    HealthModel, MAX_KERNEL_NAMED, REASON_RECOVERY_ACTION, REASON_XID_APP_ERROR, REASON_XID_ERROR,
    REASON_XID_REPEATED, XID_CORRELATION,
};
use crate::gpu::kmsg::PciAddr;
use crate::gpu::nvlink5;
use crate::gpu::xid::{self as catalog, Classes};
use crate::gpu::{GpuIdentity, UNENUMERATED, UNKNOWN_PCI};
use crate::problem::Severity;

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

/// A GPU known only by what the kernel log says of it.
fn unenumerated(pci_bus_id: String) -> GpuIdentity {
    GpuIdentity {
        index: UNENUMERATED,
        uuid: "unknown".into(),
        pci_bus_id,
        serial: "unknown".into(),
        name: "unknown".into(),
    }
}

impl HealthModel {
    /// The GPU at `pci`, if any.
    pub(super) fn position_of_pci(&self, pci: PciAddr) -> Option<usize> {
        self.gpus
            .iter()
            .position(|g| PciAddr::parse(&g.id.pci_bus_id) == Some(pci))
    }

    /// The GPU at `pci`, or a new entry named by the address alone (at most
    /// [`MAX_KERNEL_NAMED`]; past them, the unknown GPU's).
    fn position_for_pci(&mut self, pci: PciAddr) -> usize {
        if let Some(pos) = self.position_of_pci(pci) {
            return pos;
        }
        let named = self
            .gpus
            .iter()
            .filter(|g| g.id.index == UNENUMERATED && !g.id.is_unknown())
            .count();
        if named >= MAX_KERNEL_NAMED {
            tracing::warn!(%pci, "kernel log names yet another GPU the driver does not enumerate; counted for an unknown GPU");
            return self.position_for_unknown();
        }
        tracing::warn!(%pci, "kernel log names a GPU the driver does not enumerate");
        self.gpus.push(GpuState::new(unenumerated(pci.to_string())));
        self.gpus.len() - 1
    }

    /// The entry for reports that name no GPU we can find.
    fn position_for_unknown(&mut self) -> usize {
        if let Some(pos) = self.gpus.iter().position(|g| g.id.is_unknown()) {
            return pos;
        }
        self.gpus
            .push(GpuState::new(unenumerated(UNKNOWN_PCI.to_owned())));
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

    /// An XID from the kernel log, named by PCI address (the GPU may not be
    /// enumerated at all).
    pub(super) fn kernel_xid(
        &mut self,
        pci: PciAddr,
        xid: u32,
        detail: &str,
        at: SystemTime,
        replay: bool,
    ) {
        let pos = self.position_for_pci(pci);
        self.xid(pos, xid, Some(detail), at, replay);
    }

    /// A kernel report naming no GPU (a bare "fallen off the bus"): it
    /// counts, for an unknown GPU.
    pub(super) fn kernel_xid_unknown_gpu(
        &mut self,
        xid: u32,
        detail: &str,
        at: SystemTime,
        replay: bool,
    ) {
        let pos = self.position_for_unknown();
        self.xid(pos, xid, Some(detail), at, replay);
    }

    /// An XID from NVML's events for the GPU with index `gpu`.
    pub(super) fn nvml_xid(&mut self, gpu: u32, xid: u32, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            self.xid(pos, xid, None, at, false);
        }
    }

    fn xid(&mut self, pos: usize, xid: u32, kernel: Option<&str>, at: SystemTime, replay: bool) {
        if !replay && self.seen_from_other_source(pos, xid, kernel.is_some(), at) {
            return;
        }
        if !replay {
            *self.gpus[pos].xid_counts.entry(xid).or_insert(0) += 1;
        }
        let mut info = catalog::lookup(xid);
        if info.classes.contains(Classes::RECOVERY)
            && let Some(action) = kernel.and_then(parse_recovery_change)
        {
            self.recovery(pos, action, at, replay);
            return;
        }
        let mut evidence = evidence(&info);
        // NVLink-5 XIDs (144–150): their registers, decoded by the
        // driver's generation of the catalog's rules.
        if (144..=150).contains(&xid)
            && let Some(k) = kernel
            && let Some((classes, note)) = nvlink5::decode(xid, k, self.driver_version())
        {
            info.classes = classes;
            evidence.push_str(&format!("; {note}"));
        }
        // The operator's policy has the last word, and says so.
        if let Some((classes, owner)) = self.policy_classes(xid) {
            info.classes = classes;
            evidence.push_str(&format!("; {owner}"));
        }
        let action = info.classes.action();
        let reason = if xid == 79 {
            "GPUFellOffTheBus".to_owned()
        } else {
            format!("Xid{xid}")
        };
        self.raise(pos, info.classes, &reason, &evidence, action, at);
        if replay {
            self.count_repeat(pos, xid, at, true);
            return;
        }
        let g = &self.gpus[pos];
        let (severity, event_reason) = if info.classes.contains(Classes::APP) {
            (Severity::Info, REASON_XID_APP_ERROR)
        } else {
            (Severity::Warn, REASON_XID_ERROR)
        };
        let mut message = format!("{}: {evidence}; action: {action}", g.id);
        if let Some(k) = kernel.filter(|k| !k.is_empty()) {
            message.push_str(&format!("; kernel: {}", truncate(k, 256)));
        }
        let key = format!("{}/{xid}", g.id.pci_bus_id);
        self.emit(severity, at, event_reason, &key, message);
        self.count_repeat(pos, xid, at, false);
    }

    /// Sets every per-GPU slot `classes` names on the GPU at `pos`.
    pub(super) fn raise(
        &mut self,
        pos: usize,
        classes: Classes,
        reason: &str,
        evidence: &str,
        action: &'static str,
        at: SystemTime,
    ) {
        let g = &mut self.gpus[pos];
        for (class, slot) in [
            (Classes::LOST, Slot::Lost),
            (Classes::REBOOT, Slot::Reboot),
            (Classes::RESET, Slot::Reset),
            (Classes::MEMORY, Slot::Memory),
            (Classes::HARDWARE, Slot::Hardware),
            (Classes::NVLINK_DOWN, Slot::NvlinkDown),
            (Classes::NVLINK_DEGRADED, Slot::NvlinkDegraded),
        ] {
            if classes.contains(class) {
                g.set(slot, fault(reason, evidence, action), at);
            }
        }
    }

    /// Counts the bursts of an application XID with a repeat rule on one GPU;
    /// from the rule's threshold on, each new burst is a `GPUXIDRepeated`
    /// warning naming the GPU and the count. Replayed lines count, silently.
    fn count_repeat(&mut self, pos: usize, xid: u32, at: SystemTime, replay: bool) {
        if self.policy_repeat(pos, xid, at, replay) {
            return;
        }
        let Some(rule) = catalog::repeat_rule(xid) else {
            return;
        };
        let g = &mut self.gpus[pos];
        let within = |then: SystemTime, span| at.duration_since(then).unwrap_or_default() <= span;
        // A 43 in the same burst as a 13 or 31 is that failure's echo.
        let echo = xid == 43
            && [13, 31].iter().any(|x| {
                g.xid_bursts
                    .get(x)
                    .is_some_and(|(last, _)| within(*last, catalog::REPEAT_BURST_GAP))
            });
        if echo {
            return;
        }
        let history = g.xid_bursts.entry(xid).or_insert((at, VecDeque::new()));
        let Some(bursts) = count_burst(
            history,
            at,
            catalog::REPEAT_BURST_GAP,
            rule.window,
            catalog::REPEAT_BURSTS_KEPT,
        ) else {
            return;
        };
        if replay || bursts < rule.bursts {
            return;
        }
        let info = catalog::lookup(xid);
        let message = format!(
            "{}: {} in {bursts} separate bursts within {} h (threshold {}); {}; action: {}",
            g.id,
            info.title(),
            rule.window.as_secs() / 3600,
            rule.bursts,
            rule.hint,
            catalog::REPEAT_ACTION
        );
        let key = format!("{}/{xid}", g.id.pci_bus_id);
        self.emit(Severity::Warn, at, REASON_XID_REPEATED, &key, message);
    }

    /// The driver's recovery action for the GPU with index `gpu` (NVML field 230).
    pub(super) fn recovery_action(&mut self, gpu: u32, action: u32, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            self.recovery(pos, action, at, false);
        }
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

    /// An NVSwitch error (`SXid`) from the kernel log: a fatal one takes the
    /// fabric down for every GPU on the switch.
    pub(super) fn sxid(
        &mut self,
        pci: PciAddr,
        sxid: u32,
        fatal: bool,
        detail: &str,
        at: SystemTime,
        replay: bool,
    ) {
        let kind = if fatal { "fatal" } else { "non-fatal" };
        if fatal {
            self.switch_faults
                .entry(pci.to_string())
                .or_insert_with(|| format!("SXid {sxid} ({kind})"));
        }
        if !replay {
            let message = format!(
                "nvswitch pci={pci}: SXid {sxid} ({kind}); kernel: {}",
                truncate(detail, 256)
            );
            let severity = if fatal {
                Severity::Warn
            } else {
                Severity::Info
            };
            self.emit(severity, at, "SXIDError", &format!("{pci}/{sxid}"), message);
        }
    }

    /// The GPU stopped answering (NVML `GPU_IS_LOST`).
    pub(super) fn lost(&mut self, gpu: u32, at: SystemTime) {
        if let Some(pos) = self.position(gpu)
            && !self.gpus[pos].faults.contains_key(&Slot::Lost)
        {
            let g = &mut self.gpus[pos];
            let action = Classes::LOST.action();
            g.set(
                Slot::Lost,
                fault("GPUNotResponding", "the driver reports GPU_IS_LOST", action),
                at,
            );
            let message = format!(
                "{}: GPU stopped answering (GPU_IS_LOST); action: {action}",
                g.id
            );
            self.emit(Severity::Warn, at, "GPULost", &pos.to_string(), message);
        }
    }
}

/// Counts a report at `at` into an XID's burst history (when it was last
/// seen, and when each recent burst began): `None` when it is part of the
/// current burst (within `gap` of the last report; a zero gap makes every
/// report a burst), else how many bursts began within `window`, keeping
/// at most `keep`.
pub(super) fn count_burst(
    history: &mut (SystemTime, VecDeque<SystemTime>),
    at: SystemTime,
    gap: Duration,
    window: Duration,
    keep: usize,
) -> Option<usize> {
    let within = |then: SystemTime, span| at.duration_since(then).unwrap_or_default() <= span;
    let (last, starts) = history;
    let same_burst = !gap.is_zero() && !starts.is_empty() && within(*last, gap);
    *last = at;
    if same_burst {
        return None;
    }
    starts.push_back(at);
    while starts.front().is_some_and(|t| !within(*t, window)) || starts.len() > keep {
        starts.pop_front();
    }
    Some(starts.len())
}
