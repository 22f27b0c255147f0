//! The NVML event thread: its own NVML handle and blocking waits for
//! critical XIDs, double-bit ECC, the GPU becoming unavailable and
//! recovery-action changes; at most one such thread at a time
//! ([`EventThread`]), stopped when its session ends ([`StopOnDrop`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime};

use nvml_wrapper::Device;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::{Bits, NvmlError};
use nvml_wrapper::structs::device::FieldId;
use tokio::sync::mpsc;

use super::sweep::{FIELD_RECOVERY_ACTION, recovery_value};
use super::{describe, open};
use crate::gpu::Observation;

/// Stops the event thread when the session that started it ends.
pub(super) struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, AtomicOrdering::Relaxed);
    }
}

/// The backend's one NVML event thread. A session starts it; the next
/// session starts another only once the last has ended (a wait the driver
/// never returns from keeps one thread, not one per session).
#[derive(Debug, Default)]
pub(super) struct EventThread {
    /// Set by the thread while it runs.
    alive: Arc<AtomicBool>,
    /// A session wanted one while the last still ran.
    pub(super) wanted: bool,
}

impl EventThread {
    /// Starts the thread for this session unless the last one still runs;
    /// the guard stops it when the session ends.
    pub(super) fn start(
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
