//! GPU memory and the board: row remapping (pending needs a reset; a failure
//! or a spent budget is a memory fault), retired pages, volatile
//! uncorrectable and corrected ECC counts, the InfoROM checksum (a hardware
//! fault), and high memory use (an event, never a fault).

use std::time::SystemTime;

use super::state::{Slot, fault};
use super::{
    CORRECTED_ECC_BUDGET, HealthModel, REASON_ROW_REMAP_PENDING, REMAPPED_ROWS_BUDGET,
    RETIRED_DBE_PAGES_LIMIT, RETIRED_PAGES_LIMIT,
};
use crate::gpu::xid::Classes;
use crate::problem::Severity;

impl HealthModel {
    /// Row remapping state (Ampere and later) of the GPU with index `gpu`.
    pub(super) fn remapped_rows(
        &mut self,
        gpu: u32,
        pending: bool,
        failure: bool,
        uncorrectable: u32,
        at: SystemTime,
    ) {
        let Some(pos) = self.position(gpu) else {
            return;
        };
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

    /// Uncorrectable ECC errors since the driver loaded.
    pub(super) fn volatile_ecc(&mut self, gpu: u32, count: u64, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            // Volatile counters only go down when the driver
            // reinitialises the GPU: a reset happened.
            let before = self.gpus[pos].counters.get("ecc-volatile").map(|(v, _)| *v);
            self.gpus[pos].counter("ecc-volatile", count, u64::MAX);
            if before.is_some_and(|b| count < b) {
                self.reset(pos, at, true);
            }
            let bad = (count > 0).then(|| {
                fault(
                    "VolatileUncorrectableECC",
                    &format!("{count} uncorrectable ECC errors since the driver loaded"),
                    Classes::RESET.action(),
                )
            });
            self.gpus[pos].reading(Slot::Reset, "ecc", bad, at);
        }
    }

    /// Retired pages (pre-Ampere GPUs; Ampere and later remap rows instead).
    pub(super) fn retired_pages(
        &mut self,
        gpu: u32,
        single_bit: u32,
        double_bit: u32,
        pending: bool,
        now: SystemTime,
    ) {
        if let Some(pos) = self.position(gpu) {
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
            if total >= RETIRED_PAGES_LIMIT || double_bit >= RETIRED_DBE_PAGES_LIMIT {
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

    /// Corrected ECC errors since the driver loaded (cumulative): a fast
    /// rise is an event.
    pub(super) fn corrected_ecc(&mut self, gpu: u32, count: u64, at: SystemTime) {
        if let Some(pos) = self.position(gpu) {
            let g = &mut self.gpus[pos];
            let (delta, _) = g.counter("ecc-corrected", count, CORRECTED_ECC_BUDGET);
            if delta > CORRECTED_ECC_BUDGET {
                let message = format!(
                    "{}: {delta} corrected ECC errors since the last reading",
                    g.id
                );
                let key = g.id.pci_bus_id.clone();
                self.emit(Severity::Warn, at, "CorrectedECCRateHigh", &key, message);
            }
        }
    }

    /// InfoROM checksum validation: a failed one is a hardware fault.
    pub(super) fn inforom(&mut self, gpu: u32, valid: bool, now: SystemTime) {
        if let Some(pos) = self.position(gpu)
            && !valid
        {
            let f = fault(
                "InfoROMCorrupted",
                "InfoROM checksum validation failed",
                Classes::HARDWARE.action(),
            );
            self.gpus[pos].set(Slot::Hardware, f, now);
        }
    }

    /// Memory in use, percent of the total: above the operator's threshold, a note.
    pub(super) fn memory_usage(&mut self, gpu: u32, used_percent: f64, at: SystemTime) {
        if let (Some(limit), Some(pos)) = (self.memory_threshold, self.position(gpu))
            && used_percent > limit
        {
            // High memory use is what ML frameworks do: worth a note, not a fault.
            let g = &self.gpus[pos];
            let message = format!("{}: memory use {used_percent:.1}% above {limit}%", g.id);
            let key = g.id.pci_bus_id.clone();
            self.emit(Severity::Info, at, "GPUMemoryHigh", &key, message);
        }
    }
}
