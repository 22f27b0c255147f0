//! Tests of the NVML backend: probe recordings swept through the backend's
//! conversions into a health model, and a missing library.

use std::path::Path;

use nvml_wrapper::bitmasks::device::ThrottleReasons;

use super::sweep::{check, clock_events};
use super::*;

/// A value the fixture recorded (`{"ok": "<Debug>"}`) or its error.
fn fixture_value(dev: &serde_json::Value, key: &str) -> Result<String, NvmlError> {
    match (&dev[key]["ok"], &dev[key]["err"]) {
        (serde_json::Value::String(v), _) => Ok(v.clone()),
        (_, serde_json::Value::String(e)) if e == "NotSupported" => Err(NvmlError::NotSupported),
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
    if let Some(count) = check(number(dev, "ecc_uncorrected_volatile"), gpu, "ecc").expect("ok") {
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
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvml/healthy-8-gpu-probe.json");
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
