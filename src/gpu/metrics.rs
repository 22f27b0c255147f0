//! gpu-monitor's Prometheus metrics (`--metrics-address HOST:PORT`,
//! `/metrics`, a private registry). Per GPU, labelled `gpu` (index), `uuid`
//! and `pci`:
//!
//! - `npd_ext_gpu_condition{…,condition}` (gauge): 1 while the per-GPU
//!   condition holds for that GPU, 0 otherwise (every type has a series);
//! - `npd_ext_gpu_xids_total{…,xid}` (counter): XIDs reported for the GPU
//!   (NVML and kernel log, one report when both see it);
//! - counters as NVML reads them (volatile: they restart at a driver
//!   reload, which Prometheus sees as a counter reset):
//!   `npd_ext_gpu_ecc_uncorrected_errors_total`,
//!   `npd_ext_gpu_ecc_corrected_errors_total`,
//!   `npd_ext_gpu_pcie_replays_total`, `npd_ext_gpu_nvlink_errors_total`
//!   (data-link replay, recovery and CRC errors over the active links);
//! - gauges: `npd_ext_gpu_remapped_rows_uncorrectable` (rows remapped for
//!   uncorrectable errors), `npd_ext_gpu_row_remap_pending` and
//!   `npd_ext_gpu_row_remap_failure` (0 or 1).
//!
//! About the monitor: `npd_ext_gpu_nvml_call_duration_seconds{worker}`
//! (histogram of each call on a watchdog worker: a whole sweep, the
//! library's load, the inventory; `sim-driver` for the sim backend),
//! `npd_ext_gpu_nvml_call_timeouts_total{worker}` (calls past their
//! deadline), `npd_ext_gpu_last_good_sweep_timestamp_seconds` (Unix time of
//! the last sweep that returned readings; absent before the first) and
//! `npd_ext_gpu_readings_available` (1 while readings come, 0 while the
//! driver is not ready or a call hangs).
//!
//! Never stale as fresh: while the backend cannot see (driver not ready,
//! a hung call, the backend down) every per-GPU reading series is dropped,
//! as are those of a GPU that is lost or leaves the inventory; they come
//! back with the next reading. Condition series are dropped while the
//! driver is not ready (the conditions are Unknown then) and kept while a
//! call hangs (the faults stay known). Nothing about utilisation, clocks or
//! power: DCGM exporter owns those.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::health::HealthModel;
use super::{GpuIdentity, Observation};
use crate::exporter::prometheus::{counter_vec, gauge_vec, register};

const GPU_LABELS: [&str; 3] = ["gpu", "uuid", "pci"];

/// The per-GPU readings, by the name of their family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reading {
    EccUncorrected,
    EccCorrected,
    PcieReplays,
    NvlinkErrors,
    RemappedRows,
    RemapPending,
    RemapFailure,
}

impl Reading {
    const ALL: [Self; 7] = [
        Self::EccUncorrected,
        Self::EccCorrected,
        Self::PcieReplays,
        Self::NvlinkErrors,
        Self::RemappedRows,
        Self::RemapPending,
        Self::RemapFailure,
    ];
}

/// NVML call metrics, shared by every watchdog worker of the process.
#[derive(Debug)]
pub struct CallMetrics {
    pub duration: HistogramVec,
    pub timeouts: IntCounterVec,
}

/// The process's call metrics (each worker records into them).
#[allow(clippy::expect_used)] // literal, valid names and labels; built by a test
pub fn calls() -> &'static CallMetrics {
    static CALLS: OnceLock<CallMetrics> = OnceLock::new();
    CALLS.get_or_init(|| CallMetrics {
        duration: HistogramVec::new(
            HistogramOpts::new(
                "npd_ext_gpu_nvml_call_duration_seconds",
                "Time NVML calls on a watchdog worker took (a whole sweep is one call)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["worker"],
        )
        .expect("a valid metric definition"),
        timeouts: counter_vec(
            "npd_ext_gpu_nvml_call_timeouts_total",
            "NVML calls that did not return within their deadline",
            &["worker"],
        ),
    })
}

#[derive(Debug)]
pub struct GpuMetrics {
    registry: Registry,
    condition: IntGaugeVec,
    xids: IntCounterVec,
    counters: HashMap<Reading, IntCounterVec>,
    gauges: HashMap<Reading, IntGaugeVec>,
    last_good_sweep: Gauge,
    available: IntGauge,
    /// The GPUs with series, by index.
    ids: HashMap<u32, GpuIdentity>,
    /// Last value exported per (GPU, counter).
    last: HashMap<(u32, Reading), u64>,
    /// XIDs exported per (GPU, XID).
    xids_seen: HashMap<(u32, u32), u64>,
}

impl Default for GpuMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(clippy::expect_used)] // literal, valid names; built by a test
fn plain_gauge(name: &str, help: &str) -> Gauge {
    Gauge::with_opts(Opts::new(name, help)).expect("a valid metric definition")
}

#[allow(clippy::expect_used)] // literal, valid names; built by a test
fn plain_int_gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("a valid metric definition")
}

impl GpuMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let with = |extra: &'static str| {
            let mut l = GPU_LABELS.to_vec();
            l.push(extra);
            l
        };
        let condition = gauge_vec(
            "npd_ext_gpu_condition",
            "1 while the per-GPU condition holds for this GPU, else 0",
            &with("condition"),
        );
        let xids = counter_vec(
            "npd_ext_gpu_xids_total",
            "XIDs reported for this GPU (NVML events and the kernel log, once when both see one)",
            &with("xid"),
        );
        let counters: HashMap<Reading, IntCounterVec> = [
            (
                Reading::EccUncorrected,
                "npd_ext_gpu_ecc_uncorrected_errors_total",
                "Volatile uncorrectable ECC errors as NVML reads them (since the driver loaded)",
            ),
            (
                Reading::EccCorrected,
                "npd_ext_gpu_ecc_corrected_errors_total",
                "Volatile corrected ECC errors as NVML reads them (since the driver loaded)",
            ),
            (
                Reading::PcieReplays,
                "npd_ext_gpu_pcie_replays_total",
                "PCIe replays as NVML reads them",
            ),
            (
                Reading::NvlinkErrors,
                "npd_ext_gpu_nvlink_errors_total",
                "NVLink data-link replay, recovery and CRC errors over the active links, as NVML reads them",
            ),
        ]
        .into_iter()
        .map(|(r, name, help)| (r, counter_vec(name, help, &GPU_LABELS)))
        .collect();
        let gauges: HashMap<Reading, IntGaugeVec> = [
            (
                Reading::RemappedRows,
                "npd_ext_gpu_remapped_rows_uncorrectable",
                "Rows remapped for uncorrectable errors, as NVML reads them",
            ),
            (
                Reading::RemapPending,
                "npd_ext_gpu_row_remap_pending",
                "1 while a row remap waits for a GPU reset",
            ),
            (
                Reading::RemapFailure,
                "npd_ext_gpu_row_remap_failure",
                "1 when a row remap failed",
            ),
        ]
        .into_iter()
        .map(|(r, name, help)| (r, gauge_vec(name, help, &GPU_LABELS)))
        .collect();
        let last_good_sweep = plain_gauge(
            "npd_ext_gpu_last_good_sweep_timestamp_seconds",
            "Unix time of the last sweep that returned readings",
        );
        let available = plain_int_gauge(
            "npd_ext_gpu_readings_available",
            "1 while readings come, 0 while the driver is not ready or a call hangs",
        );
        register(&registry, &condition);
        register(&registry, &xids);
        for c in counters.values() {
            register(&registry, c);
        }
        for g in gauges.values() {
            register(&registry, g);
        }
        register(&registry, &last_good_sweep);
        register(&registry, &available);
        register(&registry, &calls().duration);
        register(&registry, &calls().timeouts);
        Self {
            registry,
            condition,
            xids,
            counters,
            gauges,
            last_good_sweep,
            available,
            ids: HashMap::new(),
            last: HashMap::new(),
            xids_seen: HashMap::new(),
        }
    }

    /// The registry, to serve (clones share the metrics).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Brings the metrics in line with the model after it applied `batch`.
    pub fn observe(&mut self, batch: &[Observation], model: &HealthModel) {
        let views = model.per_gpu();
        // GPUs that left the inventory lose every series.
        let gone: Vec<u32> = self
            .ids
            .keys()
            .copied()
            .filter(|i| {
                !views
                    .iter()
                    .any(|v| v.id.index == *i && v.id == self.ids[i])
            })
            .collect();
        for gpu in gone {
            self.drop_gpu(gpu);
        }
        let driver_ready = model.is_driver_ready();
        for v in &views {
            self.ids.insert(v.id.index, v.id.clone());
            let labels = labels(&v.id);
            for t in HealthModel::per_gpu_condition_types() {
                let l = [labels[0].as_str(), &labels[1], &labels[2], t];
                if driver_ready {
                    let on = v.conditions.contains(&t);
                    self.condition.with_label_values(&l).set(i64::from(on));
                } else {
                    let _ = self.condition.remove_label_values(&l);
                }
            }
            for (xid, n) in &v.xids {
                let seen = self.xids_seen.entry((v.id.index, *xid)).or_insert(0);
                if *n > *seen {
                    let x = xid.to_string();
                    self.xids
                        .with_label_values(&[labels[0].as_str(), &labels[1], &labels[2], &x])
                        .inc_by(*n - *seen);
                    *seen = *n;
                }
            }
        }
        let sees = model.sees();
        self.available.set(i64::from(sees));
        if !sees {
            let all: Vec<u32> = self.ids.keys().copied().collect();
            for gpu in all {
                self.drop_readings(gpu);
            }
            return;
        }
        let mut swept = false;
        for obs in batch {
            swept |= matches!(obs, Observation::Temperature { .. });
            self.reading(obs);
        }
        if swept {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.last_good_sweep.set(now.as_secs_f64());
        }
    }

    fn reading(&mut self, obs: &Observation) {
        use Observation as O;
        match *obs {
            O::VolatileUncorrectableEcc { gpu, count, .. } => {
                self.counter(gpu, Reading::EccUncorrected, count);
            }
            O::CorrectedEcc { gpu, count, .. } => self.counter(gpu, Reading::EccCorrected, count),
            O::PcieReplays { gpu, count, .. } => self.counter(gpu, Reading::PcieReplays, count),
            O::NvlinkErrors { gpu, count, .. } => self.counter(gpu, Reading::NvlinkErrors, count),
            O::RemappedRows {
                gpu,
                pending,
                failure,
                uncorrectable,
                ..
            } => {
                self.gauge(gpu, Reading::RemappedRows, i64::from(uncorrectable));
                self.gauge(gpu, Reading::RemapPending, i64::from(pending));
                self.gauge(gpu, Reading::RemapFailure, i64::from(failure));
            }
            O::Lost { gpu, .. } => self.drop_readings(gpu),
            _ => {}
        }
    }

    /// A cumulative counter as read: it follows the value; one that went
    /// down (driver reload, reset) starts over, as Prometheus expects.
    fn counter(&mut self, gpu: u32, r: Reading, value: u64) {
        let Some(id) = self.ids.get(&gpu) else {
            return;
        };
        let labels = labels(id);
        let l = [labels[0].as_str(), &labels[1], &labels[2]];
        let Some(vec) = self.counters.get(&r) else {
            return;
        };
        let last = self.last.get(&(gpu, r)).copied();
        match last {
            Some(before) if value >= before => vec.with_label_values(&l).inc_by(value - before),
            _ => {
                let _ = vec.remove_label_values(&l);
                vec.with_label_values(&l).inc_by(value);
            }
        }
        self.last.insert((gpu, r), value);
    }

    fn gauge(&mut self, gpu: u32, r: Reading, value: i64) {
        let (Some(id), Some(vec)) = (self.ids.get(&gpu), self.gauges.get(&r)) else {
            return;
        };
        let labels = labels(id);
        vec.with_label_values(&[labels[0].as_str(), &labels[1], &labels[2]])
            .set(value);
    }

    /// The GPU's readings are no longer known.
    fn drop_readings(&mut self, gpu: u32) {
        let Some(id) = self.ids.get(&gpu) else {
            return;
        };
        let labels = labels(id);
        let l = [labels[0].as_str(), &labels[1], &labels[2]];
        for r in Reading::ALL {
            if let Some(v) = self.counters.get(&r) {
                let _ = v.remove_label_values(&l);
            }
            if let Some(v) = self.gauges.get(&r) {
                let _ = v.remove_label_values(&l);
            }
            self.last.remove(&(gpu, r));
        }
    }

    /// The GPU left the inventory: every series of it goes.
    fn drop_gpu(&mut self, gpu: u32) {
        self.drop_readings(gpu);
        let Some(id) = self.ids.remove(&gpu) else {
            return;
        };
        let labels = labels(&id);
        for t in HealthModel::per_gpu_condition_types() {
            let _ = self.condition.remove_label_values(&[
                labels[0].as_str(),
                &labels[1],
                &labels[2],
                t,
            ]);
        }
        let xids: Vec<u32> = self
            .xids_seen
            .keys()
            .filter(|(g, _)| *g == gpu)
            .map(|(_, x)| *x)
            .collect();
        for x in xids {
            self.xids_seen.remove(&(gpu, x));
            let x = x.to_string();
            let _ =
                self.xids
                    .remove_label_values(&[labels[0].as_str(), &labels[1], &labels[2], &x]);
        }
    }
}

fn labels(id: &GpuIdentity) -> [String; 3] {
    [id.index.to_string(), id.uuid.clone(), id.pci_bus_id.clone()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::prometheus::render;
    use crate::gpu::sim;

    fn page(m: &GpuMetrics) -> String {
        render(&m.registry()).expect("renders")
    }

    #[test]
    fn series_follow_the_model_and_readings_go_when_it_cannot_see() {
        let ids = sim::identities(8);
        let mut model = HealthModel::new(ids.clone());
        let mut m = GpuMetrics::new();
        let now = SystemTime::now();
        let batch = vec![
            Observation::Temperature {
                gpu: 2,
                celsius: 40,
                at: now,
            },
            Observation::PcieReplays {
                gpu: 2,
                count: 7,
                at: now,
            },
            Observation::Xid {
                gpu: 2,
                xid: 48,
                at: now,
            },
        ];
        model.apply_all(&batch);
        m.observe(&batch, &model);
        let p = page(&m);
        let g2 = format!("gpu=\"2\",pci=\"{}\"", ids[2].pci_bus_id);
        assert_eq!(
            p.matches("npd_ext_gpu_condition{").count(),
            8 * 9,
            "8 GPUs × 9 types: {p}"
        );
        assert!(
            p.contains(&format!(
                "npd_ext_gpu_condition{{condition=\"GPUResetRequired\",{g2},uuid=\"{}\"}} 1",
                ids[2].uuid
            )),
            "{p}"
        );
        assert!(
            p.contains(&format!(
                "npd_ext_gpu_xids_total{{{g2},uuid=\"{}\",xid=\"48\"}} 1",
                ids[2].uuid
            )),
            "{p}"
        );
        assert!(
            p.contains(&format!(
                "npd_ext_gpu_pcie_replays_total{{{g2},uuid=\"{}\"}} 7",
                ids[2].uuid
            )),
            "{p}"
        );
        assert!(p.contains("npd_ext_gpu_readings_available 1"), "{p}");
        // The counter follows the value as read, and restarts when it goes down.
        let more = [Observation::PcieReplays {
            gpu: 2,
            count: 12,
            at: now,
        }];
        model.apply_all(&more);
        m.observe(&more, &model);
        assert!(page(&m).contains(&format!("{g2},uuid=\"{}\"}} 12", ids[2].uuid)));
        // A hung call: the readings are dropped, not shown stale.
        let hung = [Observation::Unresponsive {
            call: "nvmlDeviceGetTemperature".into(),
            gpu: Some(2),
            waited: Duration::from_secs(30),
            at: now,
        }];
        model.apply_all(&hung);
        m.observe(&hung, &model);
        let p = page(&m);
        assert!(!p.contains("npd_ext_gpu_pcie_replays_total{"), "{p}");
        assert!(p.contains("npd_ext_gpu_readings_available 0"), "{p}");
        assert!(
            p.contains("condition=\"GPUResetRequired\""),
            "faults stay known"
        );
        // The driver not ready: the conditions are Unknown, their series go.
        let down = [Observation::DriverNotReady {
            reason: "gone".into(),
            at: now,
        }];
        model.apply_all(&down);
        m.observe(&down, &model);
        assert!(!page(&m).contains("npd_ext_gpu_condition{"));
    }
}
