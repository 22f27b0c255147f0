//! The sweeps of one GPU list on the session's worker: fast (every poll),
//! slow (every `slow_every` fast ones) and very slow (every ten slow ones),
//! each NVML reading turned into an [`Observation`]; a GPU lost mid-sweep
//! becomes `Lost`. Also decodes the recovery-action field the event thread
//! reads.

use std::time::SystemTime;

use nvml_wrapper::Device;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;

use super::{Handles, NvmlOptions, Shared, describe, mark};
use crate::gpu::{GpuCounts, Observation, inventory};

/// NVML field ID of the driver's recovery action (`NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`).
pub(super) const FIELD_RECOVERY_ACTION: u32 = 230;
/// Links an NVML device may have (`NVML_NVLINK_MAX_LINKS`).
const NVLINK_MAX_LINKS: u32 = 18;

/// How deep a sweep goes: fast, slow, or very slow (each includes the one before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Depth {
    Fast,
    Slow,
    VerySlow,
}

/// One sweep of every GPU; `GPU_IS_LOST` from any call becomes `Lost`.
pub(super) fn sweep(
    h: &Handles,
    gpus: &[u32],
    depth: Depth,
    options: &NvmlOptions,
    in_flight: &Shared,
) -> Vec<Observation> {
    let slow = depth >= Depth::Slow;
    let at = SystemTime::now();
    let mut out = Vec::with_capacity(gpus.len() * 4);
    for &gpu in gpus {
        mark(in_flight, "nvmlDeviceGetHandleByIndex", Some(gpu));
        let dev = match h.nvml.device_by_index(gpu) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) => {
                out.push(Observation::Lost { gpu, at });
                continue;
            }
            Err(e) => {
                tracing::debug!(gpu, "no handle: {}", describe(&e));
                continue;
            }
        };
        let mut gpu_out = Vec::new();
        let lost = fast(h, &dev, gpu, at, in_flight, &mut gpu_out).is_err()
            || (slow && self::slow(h, &dev, gpu, at, in_flight, &mut gpu_out).is_err())
            || (depth == Depth::VerySlow
                && very_slow(&dev, gpu, at, in_flight, &mut gpu_out).is_err());
        if lost {
            out.push(Observation::Lost { gpu, at });
        } else {
            out.extend(gpu_out);
        }
    }
    if slow {
        mark(in_flight, "nvmlDeviceGetCount", None);
        let nvml = h.nvml.device_count().ok();
        out.push(Observation::GpuCount {
            counts: GpuCounts {
                nvml,
                sysfs: inventory::sysfs_gpus(&options.sys_root),
                dev_nodes: inventory::dev_nodes(&options.dev_root),
                expected: options.expected_gpus,
            },
            at,
        });
    }
    mark(in_flight, "idle", None);
    out
}

/// `Err(())` when the GPU is lost; other errors only skip the reading.
pub(super) fn check<T>(r: Result<T, NvmlError>, gpu: u32, what: &str) -> Result<Option<T>, ()> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::GpuLost) => Err(()),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => {
            tracing::debug!(gpu, "{what} not read: {}", describe(&e));
            Ok(None)
        }
    }
}

fn fast(
    h: &Handles,
    dev: &Device<'_>,
    gpu: u32,
    at: SystemTime,
    f: &Shared,
    out: &mut Vec<Observation>,
) -> Result<(), ()> {
    mark(f, "nvmlDeviceGetTemperature", Some(gpu));
    if let Some(t) = check(dev.temperature(TemperatureSensor::Gpu), gpu, "temperature")? {
        out.push(Observation::Temperature {
            gpu,
            celsius: i32::try_from(t).unwrap_or(i32::MAX),
            at,
        });
    }
    if let Some(raw) = &h.raw {
        mark(f, "nvmlDeviceGetMarginTemperature", Some(gpu));
        if let Some(r) = raw.margin_temperature(dev)
            && let Some(celsius) = check(r, gpu, "margin temperature")?
        {
            out.push(Observation::MarginTemperature { gpu, celsius, at });
        }
    }
    mark(f, "nvmlDeviceGetMemoryInfo", Some(gpu));
    if let Some(m) = check(dev.memory_info(), gpu, "memory")?
        && m.total > 0
    {
        out.push(Observation::MemoryUsage {
            gpu,
            used_percent: m.used as f64 * 100.0 / m.total as f64,
            at,
        });
    }
    mark(f, "nvmlDeviceGetCurrentClocksEventReasons", Some(gpu));
    if let Some(r) = check(dev.current_throttle_reasons(), gpu, "clock-event reasons")? {
        out.push(clock_events(gpu, r, at));
    }
    mark(
        f,
        "nvmlDeviceGetFieldValues(GPU_RECOVERY_ACTION)",
        Some(gpu),
    );
    if let Some(samples) = check(
        dev.field_values_for(&[FieldId(FIELD_RECOVERY_ACTION)]),
        gpu,
        "recovery action",
    )? && let Some(action) = samples.into_iter().next().and_then(recovery_value)
    {
        out.push(Observation::RecoveryAction { gpu, action, at });
    }
    if let Some(raw) = &h.raw {
        mark(f, "nvmlDeviceGetRemappedRows", Some(gpu));
        if let Some(r) = raw.remapped_rows(dev)
            && let Some(rows) = check(r, gpu, "remapped rows")?
        {
            out.push(Observation::RemappedRows {
                gpu,
                pending: rows.pending,
                failure: rows.failure,
                uncorrectable: rows.uncorrected,
                at,
            });
        }
    }
    Ok(())
}

/// Hardware, thermal and power-brake slowdown count as throttling; power
/// capping and application clocks do not (they are settings, not faults).
pub(super) fn clock_events(gpu: u32, reasons: ThrottleReasons, at: SystemTime) -> Observation {
    let slowdown = ThrottleReasons::HW_SLOWDOWN
        | ThrottleReasons::HW_THERMAL_SLOWDOWN
        | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN
        | ThrottleReasons::SW_THERMAL_SLOWDOWN;
    Observation::ClockEvents {
        gpu,
        slowdown: reasons.intersects(slowdown),
        idle: reasons.contains(ThrottleReasons::GPU_IDLE),
        at,
    }
}

pub(super) fn recovery_value(sample: Result<FieldValueSample, NvmlError>) -> Option<u32> {
    match sample.ok()?.value.ok()? {
        SampleValue::U32(v) => Some(v),
        SampleValue::U64(v) => u32::try_from(v).ok(),
        SampleValue::I64(v) => u32::try_from(v).ok(),
        SampleValue::F64(_) => None,
    }
}

fn slow(
    h: &Handles,
    dev: &Device<'_>,
    gpu: u32,
    at: SystemTime,
    f: &Shared,
    out: &mut Vec<Observation>,
) -> Result<(), ()> {
    mark(f, "nvmlDeviceGetTotalEccErrors", Some(gpu));
    if let Some(count) = check(
        dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        gpu,
        "volatile ECC",
    )? {
        out.push(Observation::VolatileUncorrectableEcc { gpu, count, at });
    }
    mark(f, "nvmlDeviceGetCurrPcieLinkWidth", Some(gpu));
    let width = check(dev.current_pcie_link_width(), gpu, "PCIe width")?;
    mark(f, "nvmlDeviceGetMaxPcieLinkWidth", Some(gpu));
    let max_width = check(dev.max_pcie_link_width(), gpu, "PCIe max width")?;
    if let (Some(width), Some(max_width)) = (width, max_width) {
        out.push(Observation::PcieLink {
            gpu,
            width,
            max_width,
            at,
        });
    }
    mark(f, "nvmlDeviceGetTotalEccErrors(corrected)", Some(gpu));
    if let Some(count) = check(
        dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        gpu,
        "corrected ECC",
    )? {
        out.push(Observation::CorrectedEcc { gpu, count, at });
    }
    // Pre-Ampere GPUs retire pages; later ones answer NotSupported (and remap rows).
    mark(f, "nvmlDeviceGetRetiredPages", Some(gpu));
    let single = check(
        dev.retired_pages(RetirementCause::MultipleSingleBitEccErrors),
        gpu,
        "retired pages",
    )?;
    let double = check(
        dev.retired_pages(RetirementCause::DoubleBitEccError),
        gpu,
        "retired pages",
    )?;
    mark(f, "nvmlDeviceGetRetiredPagesPendingStatus", Some(gpu));
    let pending = check(
        dev.are_pages_pending_retired(),
        gpu,
        "pages pending retirement",
    )?;
    if let (Some(single), Some(double)) = (single, double) {
        out.push(Observation::RetiredPages {
            gpu,
            single_bit: u32::try_from(single.len()).unwrap_or(u32::MAX),
            double_bit: u32::try_from(double.len()).unwrap_or(u32::MAX),
            pending: pending.unwrap_or(false),
            at,
        });
    }
    if let Some(raw) = &h.raw {
        mark(f, "nvmlDeviceGetGpuFabricInfo", Some(gpu));
        if let Some(r) = raw.fabric_info(dev)
            && let Some(info) = check(r, gpu, "fabric info")?
        {
            out.push(Observation::Fabric {
                gpu,
                state: info.state,
                status: info.status,
                at,
            });
        }
    }
    mark(f, "nvmlDeviceGetCurrPcieLinkGeneration", Some(gpu));
    let generation = check(dev.current_pcie_link_gen(), gpu, "PCIe generation")?;
    mark(f, "nvmlDeviceGetMaxPcieLinkGeneration", Some(gpu));
    let max_generation = check(dev.max_pcie_link_gen(), gpu, "PCIe max generation")?;
    if let (Some(generation), Some(max_generation)) = (generation, max_generation) {
        out.push(Observation::PcieGen {
            gpu,
            generation,
            max_generation,
            at,
        });
    }
    mark(f, "nvmlDeviceGetPcieReplayCounter", Some(gpu));
    if let Some(count) = check(dev.pcie_replay_counter(), gpu, "PCIe replays")? {
        out.push(Observation::PcieReplays {
            gpu,
            count: u64::from(count),
            at,
        });
    }
    nvlinks(dev, gpu, at, f, out)
}

/// Each NVLink's state and, over the active ones, the data-link error
/// counters; the end of the slow sweep.
fn nvlinks(
    dev: &Device<'_>,
    gpu: u32,
    at: SystemTime,
    f: &Shared,
    out: &mut Vec<Observation>,
) -> Result<(), ()> {
    let (mut active, mut inactive) = (Vec::new(), Vec::new());
    let mut errors: Option<u64> = None;
    for link in 0..NVLINK_MAX_LINKS {
        mark(f, "nvmlDeviceGetNvLinkState", Some(gpu));
        let wrapper = dev.link_wrapper_for(link);
        match check(wrapper.is_active(), gpu, "NVLink state")? {
            Some(true) => {
                active.push(link);
                mark(f, "nvmlDeviceGetNvLinkErrorCounter", Some(gpu));
                for counter in [
                    ErrorCounter::DlReplay,
                    ErrorCounter::DlRecovery,
                    ErrorCounter::DlCrcFlit,
                ] {
                    if let Some(n) = check(wrapper.error_counter(counter), gpu, "NVLink errors")? {
                        *errors.get_or_insert(0) += n;
                    }
                }
            }
            Some(false) => inactive.push(link),
            None => {}
        }
    }
    if let Some(count) = errors {
        out.push(Observation::NvlinkErrors { gpu, count, at });
    }
    out.push(Observation::NvLinks {
        gpu,
        active,
        inactive,
        at,
    });
    Ok(())
}

fn very_slow(
    dev: &Device<'_>,
    gpu: u32,
    at: SystemTime,
    f: &Shared,
    out: &mut Vec<Observation>,
) -> Result<(), ()> {
    mark(f, "nvmlDeviceValidateInforom", Some(gpu));
    match dev.validate_info_rom() {
        Ok(()) => out.push(Observation::InfoRom {
            gpu,
            valid: true,
            at,
        }),
        Err(NvmlError::CorruptedInfoROM) => out.push(Observation::InfoRom {
            gpu,
            valid: false,
            at,
        }),
        Err(NvmlError::GpuLost) => return Err(()),
        Err(e) => tracing::debug!(gpu, "InfoROM not validated: {}", describe(&e)),
    }
    Ok(())
}
