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
//!
//! This file holds the options, the library's loading and enumeration, and a
//! session's life (start, sweep loop, retries after a failure or a hang);
//! `sweep.rs` holds the fast, slow and very slow sweeps, `events.rs` the NVML
//! event thread.

mod events;
mod sweep;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureThreshold;
use nvml_wrapper::error::NvmlError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::events::EventThread;
use self::sweep::{Depth, sweep};
use super::error::Error;
use super::nvml_raw::RawNvml;
use super::watchdog::{CallError, Worker};
use super::{GpuIdentity, Observation};
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
                if !worker
                    .wait_returned(&mut tick, &token, || pulse.beat(beat))
                    .await
                {
                    return;
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
    let (inventory, indexes) = match load(options, in_flight, worker).await {
        Ok(loaded) => loaded,
        Err(e) => return Some(e),
    };
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

/// Loads NVML on `worker` and lists its GPUs: the start of a session.
async fn load(
    options: &NvmlOptions,
    in_flight: &Shared,
    worker: &Worker<Slot>,
) -> Result<(Inventory, Arc<[u32]>), Error> {
    let deadline = options.call_timeout;
    mark(in_flight, "nvmlInit", None);
    let library = options.library.clone();
    let started = Instant::now();
    let loaded = worker
        .call(deadline, move |slot| open(library).map(|h| *slot = Some(h)))
        .await;
    match loaded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(call_error(e, in_flight)),
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
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(call_error(e, in_flight)),
    };
    let indexes: Arc<[u32]> = inventory.gpus.iter().map(|g| g.index).collect();
    tracing::info!(
        driver = %inventory.version,
        gpus = indexes.len(),
        init_us,
        enumerate_us = started.elapsed().as_micros(),
        "NVML ready"
    );
    Ok((inventory, indexes))
}
