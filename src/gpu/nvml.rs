//! The NVML backend: loads `libnvidia-ml.so.1` at run time (so the binary
//! runs, and says so, where there is no driver), enumerates the GPUs and polls
//! them. Every NVML call runs on a watchdog worker under a deadline: a call
//! that does not return makes `GPUUnresponsive` True, and the backend goes on
//! with a fresh worker and a fresh NVML handle.
//!
//! This is the first slice of the backend (issue 3): identity, temperature
//! and its slowdown threshold, lost GPUs, driver readiness and hangs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::error::NvmlError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::watchdog::{CallError, Worker, run_once};
use super::{GpuIdentity, Observation};

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
}

/// The call in progress on the worker, so a hang can be named.
#[derive(Clone, Debug, Default)]
struct InFlight {
    call: &'static str,
    gpu: Option<u32>,
}

type Shared = Arc<Mutex<InFlight>>;

fn mark(in_flight: &Shared, call: &'static str, gpu: Option<u32>) {
    *in_flight.lock().unwrap_or_else(PoisonError::into_inner) = InFlight { call, gpu };
}

/// Loads NVML from `library` or the first candidate that works.
fn open(library: Option<PathBuf>) -> Result<Nvml, String> {
    let candidates: Vec<OsString> = match library {
        Some(p) => vec![p.into_os_string()],
        None => LIBRARY_CANDIDATES.iter().map(OsString::from).collect(),
    };
    let mut errors = Vec::new();
    for path in &candidates {
        match Nvml::builder().lib_path(path).init() {
            Ok(nvml) => return Ok(nvml),
            Err(e) => errors.push(format!("{}: {}", path.to_string_lossy(), describe(&e))),
        }
    }
    Err(format!("cannot load NVML ({})", errors.join("; ")))
}

fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => format!("library not loadable: {inner}"),
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".into(),
        other => other.to_string(),
    }
}

struct Inventory {
    gpus: Vec<GpuIdentity>,
    version: String,
    slowdowns: Vec<(u32, i32)>,
}

fn enumerate(nvml: &Nvml, in_flight: &Shared) -> Result<Inventory, String> {
    mark(in_flight, "nvmlSystemGetDriverVersion", None);
    let version = nvml.sys_driver_version().map_err(|e| describe(&e))?;
    mark(in_flight, "nvmlDeviceGetCount", None);
    let count = nvml.device_count().map_err(|e| describe(&e))?;
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

/// One fast sweep: temperature of every GPU; `GPU_IS_LOST` becomes `Lost`.
fn sweep(nvml: &Nvml, gpus: &[u32], in_flight: &Shared) -> Vec<Observation> {
    let at = SystemTime::now();
    let mut out = Vec::with_capacity(gpus.len());
    for &gpu in gpus {
        mark(in_flight, "nvmlDeviceGetHandleByIndex", Some(gpu));
        let reading = nvml.device_by_index(gpu).and_then(|dev| {
            mark(in_flight, "nvmlDeviceGetTemperature", Some(gpu));
            dev.temperature(TemperatureSensor::Gpu)
        });
        match reading {
            Ok(t) => out.push(Observation::Temperature {
                gpu,
                celsius: i32::try_from(t).unwrap_or(i32::MAX),
                at,
            }),
            Err(NvmlError::GpuLost) => out.push(Observation::Lost { gpu, at }),
            Err(NvmlError::NotSupported) => {}
            Err(e) => tracing::debug!(gpu, "temperature not read: {}", describe(&e)),
        }
    }
    mark(in_flight, "idle", None);
    out
}

/// Runs the backend until `token` is cancelled.
pub async fn run(options: NvmlOptions, tx: mpsc::Sender<Observation>, token: CancellationToken) {
    let in_flight: Shared = Arc::default();
    let mut last_reason = String::new();
    loop {
        let outcome = session(&options, &tx, &token, &in_flight).await;
        let obs = match outcome {
            Session::Cancelled => return,
            Session::NotReady(reason) => {
                // Retries with the same cause are not news.
                if reason != last_reason {
                    tracing::warn!("NVML not ready: {reason}");
                    last_reason.clone_from(&reason);
                }
                Observation::DriverNotReady {
                    reason,
                    at: SystemTime::now(),
                }
            }
            Session::Hung(waited) => {
                let InFlight { call, gpu } = in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                tracing::error!(
                    call,
                    ?gpu,
                    ?waited,
                    "NVML call did not return; abandoning its thread"
                );
                Observation::Unresponsive {
                    call: call.to_owned(),
                    gpu,
                    waited,
                    at: SystemTime::now(),
                }
            }
        };
        if tx.send(obs).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(options.poll_interval) => {}
            () = token.cancelled() => return,
        }
    }
}

enum Session {
    Cancelled,
    NotReady(String),
    Hung(Duration),
}

impl From<CallError> for Session {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Hung(d) => Self::Hung(d),
            CallError::Gone => Self::NotReady("the NVML worker thread ended".into()),
        }
    }
}

/// One NVML handle's life: load, enumerate, then poll until something fails.
async fn session(
    options: &NvmlOptions,
    tx: &mpsc::Sender<Observation>,
    token: &CancellationToken,
    in_flight: &Shared,
) -> Session {
    let deadline = options.call_timeout;
    mark(in_flight, "nvmlInit", None);
    let library = options.library.clone();
    let started = Instant::now();
    let nvml = match run_once("nvml-init", deadline, move || open(library)).await {
        Ok(Ok(nvml)) => nvml,
        Ok(Err(reason)) => return Session::NotReady(reason),
        Err(e) => return e.into(),
    };
    let worker = match Worker::spawn("nvml", nvml) {
        Ok(w) => w,
        Err(e) => return Session::NotReady(format!("cannot start the NVML worker thread: {e}")),
    };
    let init_us = started.elapsed().as_micros();
    let shared = Arc::clone(in_flight);
    let started = Instant::now();
    let inventory = match worker
        .call(deadline, move |nvml| enumerate(nvml, &shared))
        .await
    {
        Ok(Ok(inv)) => inv,
        Ok(Err(reason)) => return Session::NotReady(reason),
        Err(e) => return e.into(),
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
            return Session::Cancelled;
        }
    }

    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => return Session::Cancelled,
        }
        let shared = Arc::clone(in_flight);
        let gpus = Arc::clone(&indexes);
        let started = Instant::now();
        let readings = match worker
            .call(deadline, move |nvml| sweep(nvml, &gpus, &shared))
            .await
        {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        tracing::debug!(
            gpus = indexes.len(),
            took_us = started.elapsed().as_micros(),
            "NVML sweep"
        );
        for obs in readings {
            if tx.send(obs).await.is_err() {
                return Session::Cancelled;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_library_is_driver_not_ready_naming_the_path() {
        let (tx, mut rx) = mpsc::channel(16);
        let token = CancellationToken::new();
        let task = tokio::spawn(run(
            NvmlOptions {
                library: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
                call_timeout: Duration::from_secs(10),
                poll_interval: Duration::from_secs(60),
            },
            tx,
            token.clone(),
        ));
        let obs = rx.recv().await.expect("an observation");
        let Observation::DriverNotReady { reason, .. } = obs else {
            panic!("expected DriverNotReady, got {obs:?}")
        };
        assert!(
            reason.contains("/nonexistent/libnvidia-ml.so.1"),
            "{reason}"
        );
        assert!(reason.contains("library not loadable"), "{reason}");
        token.cancel();
        task.await.expect("backend stops on cancel");
    }
}
