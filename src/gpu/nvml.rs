//! The NVML backend: loads `libnvidia-ml.so.1` at run time (so the binary
//! runs, and says so, where there is no driver), enumerates the GPUs and polls
//! them. Every NVML call runs on a watchdog worker under a deadline: a call
//! that does not return makes `GPUUnresponsive` True; the session's thread
//! stays stuck with it, and no new session (thread, NVML handle) starts until
//! that call returns, so a wedged driver costs one thread, not one per retry.
//!
//! Fast sweep (every `poll_interval`): temperature, clock-event reasons,
//! the driver's recovery action (field 230), row remapping. Slow sweep
//! (every `slow_every` fast ones): volatile uncorrectable ECC, PCIe width,
//! NVLink state, and the GPU count against sysfs and `/dev/nvidiaN`. Very
//! slow sweep (every ten slow ones): fabric registration, InfoROM validation.
//! `NotSupported` means "this GPU has no such feature": no observation.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::{Bits, NvmlError};
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::{Device, Nvml};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::nvml_raw::RawNvml;
use super::watchdog::{CallError, Worker};
use super::{GpuCounts, GpuIdentity, Observation, inventory};
use crate::liveness::Pulse;

/// Where `libnvidia-ml.so.1` is looked for when `--nvml-lib` is not given:
/// the loader's search path, then the GPU Operator's driver root.
pub const LIBRARY_CANDIDATES: [&str; 3] = [
    "libnvidia-ml.so.1",
    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/run/nvidia/driver/usr/lib64/libnvidia-ml.so.1",
];

#[derive(Clone, Debug)]
pub struct NvmlOptions {
    /// A specific library to load instead of the candidates.
    pub library: Option<PathBuf>,
    /// Deadline of every NVML call.
    pub call_timeout: Duration,
    /// Fast poll period, and the retry period while the driver is not ready.
    pub poll_interval: Duration,
    /// A slow sweep runs every this many fast ones.
    pub slow_every: u32,
    /// GPUs this node should have (`--expected-gpus`).
    pub expected_gpus: Option<u32>,
    /// Roots of sysfs and /dev (tests point them elsewhere).
    pub sys_root: PathBuf,
    pub dev_root: PathBuf,
}

/// NVML field ID of the driver's recovery action (`NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`).
const FIELD_RECOVERY_ACTION: u32 = 230;
/// Links an NVML device may have (`NVML_NVLINK_MAX_LINKS`).
const NVLINK_MAX_LINKS: u32 = 18;

/// What a session's worker thread owns: nothing until NVML is loaded.
type Slot = Option<Handles>;

/// The loaded library.
struct Handles {
    nvml: Nvml,
    raw: Option<RawNvml>,
}

/// The call in progress on the worker, so a hang can be named, and what
/// each call has cost so far (logged with every very slow sweep).
#[derive(Clone, Debug, Default)]
struct InFlight {
    call: &'static str,
    gpu: Option<u32>,
    since: Option<Instant>,
    /// Per call: count, total and worst time.
    costs: std::collections::BTreeMap<&'static str, (u32, Duration, Duration)>,
}

type Shared = Arc<Mutex<InFlight>>;

/// Notes that `call` starts now; the previous call's time goes to its cost.
fn mark(in_flight: &Shared, call: &'static str, gpu: Option<u32>) {
    let now = Instant::now();
    let mut f = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(since) = f.since
        && f.call != "idle"
        && !f.call.is_empty()
    {
        let took = now - since;
        let previous = f.call;
        let entry = f.costs.entry(previous).or_default();
        entry.0 += 1;
        entry.1 += took;
        entry.2 = entry.2.max(took);
    }
    f.call = call;
    f.gpu = gpu;
    f.since = Some(now);
}

/// Logs each call's mean and worst cost, then starts counting afresh.
fn log_costs(in_flight: &Shared) {
    let costs = std::mem::take(
        &mut in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .costs,
    );
    let table: Vec<String> = costs
        .iter()
        .map(|(call, (n, total, max))| {
            format!(
                "{call}: n={n} mean={}µs max={}µs",
                (*total / (*n).max(1)).as_micros(),
                max.as_micros()
            )
        })
        .collect();
    tracing::debug!("NVML call costs: {}", table.join("; "));
}

/// Loads NVML from `library` or the first candidate that works, with the
/// raw symbols from the same file.
fn open(library: Option<PathBuf>) -> Result<Handles, Error> {
    let candidates: Vec<OsString> = match library {
        Some(p) => vec![p.into_os_string()],
        None => LIBRARY_CANDIDATES.iter().map(OsString::from).collect(),
    };
    let mut errors = Vec::new();
    for path in &candidates {
        match Nvml::builder().lib_path(path).init() {
            Ok(nvml) => {
                let raw = RawNvml::open(path)
                    .inspect_err(|e| {
                        tracing::warn!("raw NVML symbols unavailable (row remapping not read): {e}")
                    })
                    .ok();
                return Ok(Handles { nvml, raw });
            }
            // The loader's message already names the file.
            Err(e @ NvmlError::LibloadingError(_)) => errors.push(describe(&e)),
            Err(NvmlError::DriverNotLoaded) => return Err(Error::DriverNotLoaded),
            Err(e) => errors.push(format!("{}: {}", path.to_string_lossy(), describe(&e))),
        }
    }
    Err(Error::LibraryNotLoaded { tried: errors })
}

fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => inner.to_string(),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".into(),
        other => other.to_string(),
    }
}

struct Inventory {
    gpus: Vec<GpuIdentity>,
    version: String,
    slowdowns: Vec<(u32, i32)>,
}

fn enumerate(h: &Handles, in_flight: &Shared) -> Result<Inventory, Error> {
    let nvml = &h.nvml;
    let failed = |call| {
        move |e: NvmlError| Error::Call {
            call,
            reason: describe(&e),
        }
    };
    mark(in_flight, "nvmlSystemGetDriverVersion", None);
    let version = nvml
        .sys_driver_version()
        .map_err(failed("nvmlSystemGetDriverVersion"))?;
    mark(in_flight, "nvmlDeviceGetCount", None);
    let count = nvml.device_count().map_err(failed("nvmlDeviceGetCount"))?;
    let mut gpus = Vec::new();
    let mut slowdowns = Vec::new();
    for i in 0..count {
        mark(in_flight, "nvmlDeviceGetHandleByIndex", Some(i));
        let dev = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(gpu = i, "cannot open GPU: {}", describe(&e));
                continue;
            }
        };
        let text = |r: Result<String, NvmlError>| {
            r.unwrap_or_else(|e| format!("unknown({})", describe(&e)))
        };
        mark(in_flight, "nvmlDeviceGetUUID", Some(i));
        let uuid = text(dev.uuid());
        mark(in_flight, "nvmlDeviceGetPciInfo", Some(i));
        let pci_bus_id = text(dev.pci_info().map(|p| p.bus_id));
        mark(in_flight, "nvmlDeviceGetSerial", Some(i));
        let serial = text(dev.serial());
        mark(in_flight, "nvmlDeviceGetName", Some(i));
        let name = text(dev.name());
        mark(in_flight, "nvmlDeviceGetTemperatureThreshold", Some(i));
        // NotSupported means "this GPU has no such threshold": keep the default.
        if let Ok(t) = dev.temperature_threshold(TemperatureThreshold::Slowdown)
            && let Ok(t) = i32::try_from(t)
            && t > 0
        {
            slowdowns.push((i, t));
        }
        gpus.push(GpuIdentity {
            index: i,
            uuid,
            pci_bus_id,
            serial,
            name,
        });
    }
    Ok(Inventory {
        gpus,
        version,
        slowdowns,
    })
}

/// One sweep of every GPU; `GPU_IS_LOST` from any call becomes `Lost`.
/// How deep a sweep goes: fast, slow, or very slow (each includes the one before).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Depth {
    Fast,
    Slow,
    VerySlow,
}

fn sweep(
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
fn check<T>(r: Result<T, NvmlError>, gpu: u32, what: &str) -> Result<Option<T>, ()> {
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
fn clock_events(gpu: u32, reasons: ThrottleReasons, at: SystemTime) -> Observation {
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

fn recovery_value(sample: Result<FieldValueSample, NvmlError>) -> Option<u32> {
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

/// Stops the event thread when the session that started it ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, AtomicOrdering::Relaxed);
    }
}

/// The backend's one NVML event thread. A session starts it; the next
/// session starts another only once the last has ended (a wait the driver
/// never returns from keeps one thread, not one per session).
#[derive(Debug, Default)]
struct EventThread {
    /// Set by the thread while it runs.
    alive: Arc<AtomicBool>,
    /// A session wanted one while the last still ran.
    wanted: bool,
}

impl EventThread {
    /// Starts the thread for this session unless the last one still runs;
    /// the guard stops it when the session ends.
    fn start(
        &mut self,
        library: Option<PathBuf>,
        tx: &mpsc::Sender<Observation>,
    ) -> Option<StopOnDrop> {
        if self.alive.load(AtomicOrdering::Acquire) {
            if !self.wanted {
                tracing::warn!(
                    "the last NVML event thread has not ended; a new one starts once it has"
                );
            }
            self.wanted = true;
            return None;
        }
        self.wanted = false;
        let stop = Arc::new(AtomicBool::new(false));
        self.alive.store(true, AtomicOrdering::Release);
        spawn_event_thread(
            library,
            tx.clone(),
            Arc::clone(&stop),
            Arc::clone(&self.alive),
        );
        Some(StopOnDrop(stop))
    }
}

/// Clears the event thread's `alive` flag however the thread ends.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, AtomicOrdering::Release);
    }
}

/// Event types the wrapper has no flag for (`nvml.h`): the GPU became
/// unavailable, the driver's recovery action changed.
const EVENT_GPU_UNAVAILABLE: u64 =
    nvml_wrapper_sys::bindings::nvmlEventTypeGpuUnavailableError as u64;
const EVENT_RECOVERY_ACTION: u64 =
    nvml_wrapper_sys::bindings::nvmlEventTypeGpuRecoveryAction as u64;

/// The event types a device supports, including those the wrapper drops.
fn supported_events(dev: &Device<'_>) -> u64 {
    match dev.supported_event_types_strict() {
        Ok(t) => t.bits(),
        Err(NvmlError::IncorrectBits(Bits::U64(raw))) => raw,
        Err(_) => 0,
    }
}

/// The NVML event thread: critical XIDs, double-bit ECC, the GPU becoming
/// unavailable and recovery-action changes as they happen (the source of
/// XIDs where the kernel log cannot be read, e.g. a non-root container).
/// Blocking waits, so a thread and an NVML handle of its own; not under the
/// watchdog (a wait is supposed to block). What an event does not carry
/// (the ECC count, the new action) is read right away on this thread.
fn spawn_event_thread(
    library: Option<PathBuf>,
    tx: mpsc::Sender<Observation>,
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
) {
    let flag = Arc::clone(&alive);
    let spawned = std::thread::Builder::new().name("nvml-events".into()).spawn(move || {
        let _alive = Alive(flag);
        let h = match open(library) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("NVML event thread not started: {e}");
                return;
            }
        };
        let nvml = &h.nvml;
        let mut set = match nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("NVML event set not created: {}", describe(&e));
                return;
            }
        };
        let count = nvml.device_count().unwrap_or(0);
        let mask = EventTypes::CRITICAL_XID_ERROR.bits()
            | EventTypes::DOUBLE_BIT_ECC_ERROR.bits()
            | EVENT_GPU_UNAVAILABLE
            | EVENT_RECOVERY_ACTION;
        let mut registered = 0;
        for i in 0..count {
            let Ok(dev) = nvml.device_by_index(i) else { continue };
            let wanted = supported_events(&dev) & mask;
            if wanted == 0 {
                continue;
            }
            set = match dev.register_events(EventTypes::from_bits_retain(wanted), set) {
                Ok(s) => {
                    registered += 1;
                    s
                }
                Err(e) => {
                    tracing::warn!(gpu = i, "NVML events not registered: {}", describe(&e.error));
                    return;
                }
            };
        }
        tracing::info!(gpus = registered, "NVML event thread waiting for critical XIDs, ECC, availability and recovery-action events");
        while !stop.load(AtomicOrdering::Relaxed) {
            let event = match set.wait(1000) {
                Ok(event) => event,
                Err(NvmlError::Timeout) => continue,
                Err(e) => {
                    tracing::debug!("NVML event wait: {}", describe(&e));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let at = SystemTime::now();
            let Ok(gpu) = event.device.index() else { continue };
            let mut out = Vec::new();
            if let Some(XidError::Value(xid)) = event.event_data
                && event.event_type.contains(EventTypes::CRITICAL_XID_ERROR)
            {
                let xid = u32::try_from(xid).unwrap_or(u32::MAX);
                tracing::warn!(gpu, xid, "NVML event: critical XID");
                out.push(Observation::Xid { gpu, xid, at });
            } else if event.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                tracing::warn!(gpu, "NVML event: double-bit ECC error");
                match event.device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
                    Ok(count) => out.push(Observation::VolatileUncorrectableEcc { gpu, count, at }),
                    Err(NvmlError::GpuLost) => out.push(Observation::Lost { gpu, at }),
                    Err(_) => {}
                }
            } else {
                // A type the wrapper drops: unavailable or recovery action.
                // Ask the device itself what changed.
                tracing::warn!(gpu, "NVML event: GPU availability or recovery action changed");
                match event.device.field_values_for(&[FieldId(FIELD_RECOVERY_ACTION)]) {
                    Ok(samples) => {
                        if let Some(action) = samples.into_iter().next().and_then(recovery_value) {
                            out.push(Observation::RecoveryAction { gpu, action, at });
                        }
                    }
                    Err(NvmlError::GpuLost) => out.push(Observation::Lost { gpu, at }),
                    Err(_) => {}
                }
            }
            for obs in out {
                if tx.blocking_send(obs).is_err() {
                    return;
                }
            }
        }
    });
    if let Err(e) = spawned {
        alive.store(false, AtomicOrdering::Release);
        tracing::warn!("NVML event thread not started: {e}");
    }
}

/// How long the backend may go without beating: a session start takes up
/// to two call deadlines, a sweep one, plus the poll period between.
fn beat_within(options: &NvmlOptions) -> Duration {
    options.poll_interval + options.call_timeout * 3 + Duration::from_secs(10)
}

/// Runs the backend until `token` is cancelled, beating `pulse` while it
/// works: also while NVML hangs (that is `GPUUnresponsive`, not a stalled
/// backend), not while the health model stops taking observations.
pub async fn run(
    options: NvmlOptions,
    tx: mpsc::Sender<Observation>,
    token: CancellationToken,
    pulse: Pulse,
) {
    let in_flight: Shared = Arc::default();
    let mut events = EventThread::default();
    let mut last_reason = String::new();
    let beat = beat_within(&options);
    loop {
        pulse.beat(beat);
        let worker = match Worker::spawn("nvml", None::<Handles>) {
            Ok(w) => w,
            Err(e) => {
                let reason = format!("cannot start the NVML worker thread: {e}");
                if !not_ready(&tx, reason, &mut last_reason).await {
                    return;
                }
                if !pause(&options, &token, &pulse).await {
                    return;
                }
                continue;
            }
        };
        let error = match session(
            &options,
            &tx,
            &token,
            &in_flight,
            &worker,
            &mut events,
            &pulse,
        )
        .await
        {
            None => return,
            Some(e) => e,
        };
        match error {
            Error::Hung { call, gpu, waited } => {
                tracing::error!(
                    call,
                    ?gpu,
                    ?waited,
                    "NVML call did not return; its thread stays stuck, and no new session starts until it returns"
                );
                let obs = Observation::Unresponsive {
                    call: call.to_owned(),
                    gpu,
                    waited,
                    at: SystemTime::now(),
                };
                if tx.send(obs).await.is_err() {
                    return;
                }
                // At most one abandoned session: wait for its call.
                let mut tick = tokio::time::interval(options.poll_interval);
                loop {
                    tokio::select! {
                        () = worker.returned() => break,
                        _ = tick.tick() => pulse.beat(beat),
                        () = token.cancelled() => return,
                    }
                }
                tracing::info!(call, "the stuck NVML call returned; starting a new session");
            }
            other => {
                if !not_ready(&tx, other.to_string(), &mut last_reason).await {
                    return;
                }
            }
        }
        drop(worker);
        if !pause(&options, &token, &pulse).await {
            return;
        }
    }
}

/// Says the driver is not ready; false when the model is gone.
async fn not_ready(
    tx: &mpsc::Sender<Observation>,
    reason: String,
    last_reason: &mut String,
) -> bool {
    // Retries with the same cause are not news.
    if reason != *last_reason {
        tracing::warn!("NVML not ready: {reason}");
        last_reason.clone_from(&reason);
    }
    let obs = Observation::DriverNotReady {
        reason,
        at: SystemTime::now(),
    };
    tx.send(obs).await.is_ok()
}

/// The wait before the next session; false when cancelled.
async fn pause(options: &NvmlOptions, token: &CancellationToken, pulse: &Pulse) -> bool {
    pulse.beat(beat_within(options));
    tokio::select! {
        () = tokio::time::sleep(options.poll_interval) => true,
        () = token.cancelled() => false,
    }
}

/// The error for a call that failed on the worker, naming the call in
/// flight when it hung.
fn call_error(e: CallError, in_flight: &Shared) -> Error {
    match e {
        CallError::Hung(waited) | CallError::Stuck(waited) => {
            let f = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            Error::Hung {
                call: f.call,
                gpu: f.gpu,
                waited,
            }
        }
        CallError::Gone => Error::WorkerGone,
    }
}

/// One NVML handle's life on `worker`: load, enumerate, then poll until
/// something fails (`Some(why)`) or `token` is cancelled (`None`).
async fn session(
    options: &NvmlOptions,
    tx: &mpsc::Sender<Observation>,
    token: &CancellationToken,
    in_flight: &Shared,
    worker: &Worker<Slot>,
    events: &mut EventThread,
    pulse: &Pulse,
) -> Option<Error> {
    let deadline = options.call_timeout;
    mark(in_flight, "nvmlInit", None);
    let library = options.library.clone();
    let started = Instant::now();
    let loaded = worker
        .call(deadline, move |slot| open(library).map(|h| *slot = Some(h)))
        .await;
    match loaded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(e),
        Err(e) => return Some(call_error(e, in_flight)),
    }
    let init_us = started.elapsed().as_micros();
    let shared = Arc::clone(in_flight);
    let started = Instant::now();
    let listed = worker
        .call(deadline, move |slot| match slot {
            Some(h) => enumerate(h, &shared),
            None => Err(Error::WorkerGone),
        })
        .await;
    let inventory = match listed {
        Ok(Ok(inv)) => inv,
        Ok(Err(e)) => return Some(e),
        Err(e) => return Some(call_error(e, in_flight)),
    };
    let indexes: Arc<[u32]> = inventory.gpus.iter().map(|g| g.index).collect();
    tracing::info!(
        driver = %inventory.version,
        gpus = indexes.len(),
        init_us,
        enumerate_us = started.elapsed().as_micros(),
        "NVML ready"
    );
    let now = SystemTime::now();
    let mut first = vec![
        Observation::Responsive { at: now },
        Observation::DriverReady {
            gpus: inventory.gpus,
            version: inventory.version,
            at: now,
        },
    ];
    first.extend(
        inventory
            .slowdowns
            .into_iter()
            .map(|(gpu, celsius)| Observation::SlowdownThreshold { gpu, celsius }),
    );
    for obs in first {
        if tx.send(obs).await.is_err() {
            return None;
        }
    }
    let mut _stop_events = events.start(options.library.clone(), tx);

    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let opts = Arc::new(options.clone());
    let beat = beat_within(options);
    for n in 0u64.. {
        pulse.beat(beat);
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return None,
        }
        let every = u64::from(options.slow_every.max(1));
        // Very slow (fabric, InfoROM at ~70 ms) every ten slow sweeps.
        let depth = if n % (every * 10) == 0 {
            Depth::VerySlow
        } else if n % every == 0 {
            Depth::Slow
        } else {
            Depth::Fast
        };
        if depth >= Depth::Slow && _stop_events.is_none() && events.wanted {
            _stop_events = events.start(options.library.clone(), tx);
        }
        let shared = Arc::clone(in_flight);
        let gpus = Arc::clone(&indexes);
        let o = Arc::clone(&opts);
        let started = Instant::now();
        let readings = match worker
            .call(deadline, move |slot| {
                slot.as_ref()
                    .map(|h| sweep(h, &gpus, depth, &o, &shared))
                    .unwrap_or_default()
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Some(call_error(e, in_flight)),
        };
        tracing::debug!(
            gpus = indexes.len(),
            ?depth,
            took_us = started.elapsed().as_micros(),
            "NVML sweep"
        );
        if depth == Depth::VerySlow && n > 0 {
            log_costs(in_flight);
        }
        for obs in readings {
            if tx.send(obs).await.is_err() {
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A value the fixture recorded (`{"ok": "<Debug>"}`) or its error.
    fn fixture_value(dev: &serde_json::Value, key: &str) -> Result<String, NvmlError> {
        match (&dev[key]["ok"], &dev[key]["err"]) {
            (serde_json::Value::String(v), _) => Ok(v.clone()),
            (_, serde_json::Value::String(e)) if e == "NotSupported" => {
                Err(NvmlError::NotSupported)
            }
            (_, e) => panic!("{key}: unexpected fixture entry {e}"),
        }
    }

    fn number(dev: &serde_json::Value, key: &str) -> Result<u64, NvmlError> {
        fixture_value(dev, key).map(|v| v.parse().unwrap_or_else(|_| panic!("{key}: {v}")))
    }

    /// "ThrottleReasons(GPU_IDLE | SW_POWER_CAP)" as nvml-wrapper printed it.
    fn throttle(text: &str) -> ThrottleReasons {
        let inner = text
            .trim_start_matches("ThrottleReasons(")
            .trim_end_matches(')');
        inner
            .split(" | ")
            .filter(|n| !n.is_empty())
            .map(|n| ThrottleReasons::from_name(n).unwrap_or_else(|| panic!("flag {n}")))
            .fold(ThrottleReasons::empty(), |a, b| a | b)
    }

    /// One sweep of device `gpu` of an NVML probe recording, through the
    /// conversions the backend uses; with the GPU's slowdown threshold. The
    /// GPU is idle and healthy: its clocks say idle, not slowed down, and
    /// Hopper answers `NotSupported` for retired pages (not a fault).
    fn sweep_of(dev: &serde_json::Value, gpu: u32, at: SystemTime) -> (Vec<Observation>, u64) {
        // A reading the backend takes: answered, the GPU not lost.
        let read = |key: &str| {
            check(number(dev, key), gpu, key)
                .expect("not lost")
                .expect("supported")
        };
        let mut out = Vec::new();
        let temp = read("temperature_gpu");
        out.push(Observation::Temperature {
            gpu,
            celsius: temp as i32,
            at,
        });
        let slowdown = read("temp_threshold_slowdown");
        out.push(Observation::SlowdownThreshold {
            gpu,
            celsius: slowdown as i32,
        });
        let reasons = check(fixture_value(dev, "throttle_reasons"), gpu, "r")
            .expect("ok")
            .expect("read");
        let clocks = clock_events(gpu, throttle(&reasons), at);
        assert!(
            matches!(
                clocks,
                Observation::ClockEvents {
                    slowdown: false,
                    idle: true,
                    ..
                }
            ),
            "{clocks:?}"
        );
        out.push(clocks);
        let rows = &dev["remapped_rows"];
        out.push(Observation::RemappedRows {
            gpu,
            pending: rows["pending"] != 0,
            failure: rows["failure"] != 0,
            uncorrectable: rows["uncorrected"].as_u64().unwrap_or_default() as u32,
            at,
        });
        if let Some(count) = check(number(dev, "ecc_uncorrected_volatile"), gpu, "ecc").expect("ok")
        {
            out.push(Observation::VolatileUncorrectableEcc { gpu, count, at });
        }
        for key in ["retired_pages_dbe", "pages_pending_retired"] {
            assert_eq!(
                check(number(dev, key), gpu, key),
                Ok(None),
                "{key}: NotSupported is no reading"
            );
        }
        let (mut active, mut inactive) = (Vec::new(), Vec::new());
        for (link, l) in dev["nvlinks"].as_array().expect("links").iter().enumerate() {
            let state = match (&l["active"]["ok"], &l["active"]["err"]) {
                (serde_json::Value::String(v), _) => Ok(v == "true"),
                _ => Err(NvmlError::NotSupported),
            };
            match check(state, gpu, "nvlink").expect("ok") {
                Some(true) => active.push(link as u32),
                Some(false) => inactive.push(link as u32),
                None => {}
            }
        }
        out.push(Observation::NvLinks {
            gpu,
            active,
            inactive,
            at,
        });
        let width = read("pcie_link_width") as u32;
        let max_width = read("pcie_link_width_max") as u32;
        out.push(Observation::PcieLink {
            gpu,
            width,
            max_width,
            at,
        });
        let generation = read("pcie_link_gen") as u32;
        let max_generation = read("pcie_link_gen_max") as u32;
        out.push(Observation::PcieGen {
            gpu,
            generation,
            max_generation,
            at,
        });
        let replays = read("pcie_replay_counter");
        out.push(Observation::PcieReplays {
            gpu,
            count: replays,
            at,
        });
        (out, slowdown)
    }

    /// Every GPU of the probe recording at `path` swept twice into one health
    /// model: nothing may be raised. Each GPU's slowdown threshold, in order.
    fn probe_raises_nothing(path: &Path) -> Vec<u64> {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let probe: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
        let devices = probe["devices"].as_array().expect("devices");
        assert_eq!(
            probe["device_count"]["ok"].as_str(),
            Some(devices.len().to_string().as_str()),
            "one entry per GPU counted"
        );
        let at = SystemTime::now();
        let (mut out, mut slowdowns) = (Vec::new(), Vec::new());
        for (gpu, dev) in devices.iter().enumerate() {
            let (sweep, slowdown) = sweep_of(dev, gpu as u32, at);
            out.extend(sweep);
            slowdowns.push(slowdown);
        }
        let gpus = crate::gpu::sim::identities(devices.len() as u32);
        let mut model = crate::gpu::health::HealthModel::new(gpus);
        model.apply_all(&out);
        model.apply_all(&out); // a second sweep: counters are rates, not totals
        let raised: Vec<_> = model
            .conditions()
            .into_iter()
            .filter(|c| c.status != crate::problem::ConditionStatus::False)
            .collect();
        assert!(raised.is_empty(), "{raised:#?}");
        slowdowns
    }

    /// Our own recording of an idle, healthy eight-GPU node (invented
    /// values): NVLinks all active, a few corrected rows and PCIe replays
    /// that a second sweep does not turn into a rate, power-capped clocks.
    #[test]
    fn a_healthy_eight_gpu_probe_raises_nothing() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nvml/healthy-8-gpu-probe.json");
        assert_eq!(probe_raises_nothing(&path), [89; 8]);
    }

    mod compat {
        use super::*;
        use crate::compat_dir::upstream;

        /// Real readings from an idle, healthy H200 (slowdown at 89 °C). In
        /// this VM NVLink answers `NotSupported` too: not a fault.
        #[test]
        #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
        fn the_h200_fixture_raises_nothing() {
            let path = upstream("fixtures/nvidia-h200/nvml-probe.json");
            assert_eq!(probe_raises_nothing(&path), [89]);
        }
    }

    #[tokio::test]
    async fn a_missing_library_is_driver_not_ready_naming_the_path() {
        let (tx, mut rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        let liveness = crate::liveness::Liveness::new();
        let pulse = liveness.register("nvml backend", Duration::from_secs(60));
        let task = tokio::spawn(run(
            NvmlOptions {
                library: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
                call_timeout: Duration::from_secs(10),
                poll_interval: Duration::from_secs(60),
                slow_every: 6,
                expected_gpus: None,
                sys_root: PathBuf::from("/sys"),
                dev_root: PathBuf::from("/dev"),
            },
            tx,
            token.clone(),
            pulse,
        ));
        let obs = rx.recv().await.expect("an observation");
        let Observation::DriverNotReady { reason, .. } = obs else {
            panic!("expected DriverNotReady, got {obs:?}")
        };
        assert!(
            reason.contains("/nonexistent/libnvidia-ml.so.1"),
            "{reason}"
        );
        assert!(reason.starts_with("cannot load NVML ("), "{reason}");
        token.cancel();
        task.await.expect("backend stops on cancel");
    }
}
