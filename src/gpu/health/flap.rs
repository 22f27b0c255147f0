//! The flap guard: a slot set [`FLAP_SETS`] times within [`FLAP_WINDOW`] is
//! held True until it has stayed clear for a whole window; the clears it
//! delays are applied when the hold ends, and each slot that starts
//! flapping sends one `GPUConditionFlapping` event.

use std::time::SystemTime;

use super::state::{GpuState, Slot};
use super::{FLAP_SETS, FLAP_WINDOW, HealthModel};
use crate::problem::Severity;

impl GpuState {
    /// Flap guard: a slot set [`FLAP_SETS`] times within [`FLAP_WINDOW`] is
    /// held True until it has stayed clear for a whole window.
    pub(super) fn note_set(&mut self, slot: Slot, now: SystemTime) {
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

    /// Ends holds that expired; applies the clears they delayed.
    pub(super) fn release_holds(&mut self, now: SystemTime) -> bool {
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
}

impl HealthModel {
    /// One `GPUConditionFlapping` event per slot that just started flapping.
    pub(super) fn report_flapping(&mut self, at: SystemTime) {
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
}
