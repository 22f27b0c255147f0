//! gpu-monitor's `/metrics` end to end: the real binary (sim backend,
//! 8 GPUs) scraped over real HTTP. Per-GPU series carry the GPU's index,
//! UUID and PCI address; counters follow the readings; a GPU's XIDs are
//! counted on that GPU; and while the driver's calls hang the readings
//! leave the page instead of standing there stale. (scripts/
//! gpu-metrics-check.sh parses the same page with prometheus_client.)
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::process::Child;
use std::time::{Duration, SystemTime};

use common::bin::{stop, wait_until};
use common::prom::{Page, scrape};
use common::{sock, tempdir};

const GPUS: usize = 8;
const PER_GPU_CONDITIONS: usize = 9;

struct Monitor {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Monitor {
    fn start(scenario: &str, extra: &[&str]) -> Self {
        let dir = tempdir();
        let file = dir.path().join("scenario.json");
        std::fs::write(&file, scenario).expect("scenario");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = common::sim_plugin(&sock(&dir), &file)
            .args(["--sim-gpus", "8", "--poll-interval", "100ms"])
            .arg(format!("--metrics-address=127.0.0.1:{port}"))
            .args(extra)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .spawn()
            .expect("spawn gpu-monitor");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// Scrapes until `ready` holds for the page.
    fn wait(&self, what: &str, ready: impl Fn(&Page) -> bool) -> Page {
        let mut page = Page::default();
        wait_until(Duration::from_secs(30), what, || {
            page = match std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(_) => scrape(self.port),
                Err(_) => return false,
            };
            ready(&page)
        });
        page
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            stop(&mut self.child);
        }
    }
}

fn gpu(i: usize) -> [(&'static str, String); 3] {
    let id = &npd_ext::gpu::sim::identities(8)[i];
    [
        ("gpu", i.to_string()),
        ("uuid", id.uuid.clone()),
        ("pci", id.pci_bus_id.clone()),
    ]
}

fn value(
    p: &Page,
    name: &str,
    gpu_labels: &[(&str, String)],
    more: &[(&str, &str)],
) -> Option<f64> {
    let mut l: Vec<(&str, &str)> = gpu_labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    l.extend_from_slice(more);
    p.value(name, &l)
}

#[test]
fn per_gpu_series_name_the_gpu_and_follow_what_was_read() {
    let m = Monitor::start(
        r#"{"steps": [
  {"at": "200ms", "gpu": 3, "fault": {"pcie_replays": 5}},
  {"at": "200ms", "gpu": 3, "fault": {"corrected_ecc": 2}},
  {"at": "200ms", "gpu": 6, "fault": {"nvlink_errors": 4}},
  {"at": "300ms", "gpu": 1, "fault": {"xid": 48}},
  {"at": "300ms", "gpu": 5, "fault": {"xid_storm": {"xid": 13, "count": 3}}},
  {"at": "300ms", "gpu": 2, "fault": {"ecc_errors": 7}}
]}"#,
        &[],
    );
    // Every step is waited for: the sim may take the steps of one instant
    // over several polls.
    let p = m.wait(
        "XID 13 three times on GPU 5 and every counter moving",
        |p| {
            value(p, "npd_ext_gpu_xids_total", &gpu(5), &[("xid", "13")]) == Some(3.0)
                && value(p, "npd_ext_gpu_pcie_replays_total", &gpu(3), &[])
                    .is_some_and(|v| v >= 10.0)
                && value(p, "npd_ext_gpu_ecc_corrected_errors_total", &gpu(3), &[])
                    .is_some_and(|v| v > 0.0)
                && value(p, "npd_ext_gpu_nvlink_errors_total", &gpu(6), &[])
                    .is_some_and(|v| v > 0.0)
                && value(p, "npd_ext_gpu_xids_total", &gpu(1), &[("xid", "48")]) == Some(1.0)
                && value(
                    p,
                    "npd_ext_gpu_condition",
                    &gpu(1),
                    &[("condition", "GPUResetRequired")],
                ) == Some(1.0)
        },
    );

    // Every GPU, once, with its own UUID and PCI address.
    let cond: Vec<_> = p.of("npd_ext_gpu_condition").collect();
    assert_eq!(cond.len(), GPUS * PER_GPU_CONDITIONS);
    for i in 0..GPUS {
        for (k, v) in gpu(i) {
            assert_eq!(
                cond.iter().filter(|s| s.labels.get(k) == Some(&v)).count(),
                PER_GPU_CONDITIONS,
                "{k}={v}"
            );
        }
    }
    // Only GPU 1's reset holds (and GPU 2's uncorrectable ECC count is a
    // memory fault).
    let on: Vec<(String, String)> = cond
        .iter()
        .filter(|s| s.value == 1.0)
        .map(|s| (s.labels["gpu"].clone(), s.labels["condition"].clone()))
        .collect();
    assert!(
        on.contains(&("1".into(), "GPUResetRequired".into())),
        "{on:?}"
    );
    assert!(on.iter().all(|(g, _)| g == "1" || g == "2"), "{on:?}");
    // XIDs on the GPU that logged them, nowhere else.
    assert_eq!(
        value(&p, "npd_ext_gpu_xids_total", &gpu(1), &[("xid", "48")]),
        Some(1.0)
    );
    assert_eq!(
        p.of("npd_ext_gpu_xids_total").count(),
        2,
        "only GPU 1's 48 and GPU 5's 13"
    );
    // Counters as read: 5 replays and 2 corrected errors a poll on GPU 3,
    // 4 NVLink errors a poll on GPU 6, ECC 7 on GPU 2; 0 elsewhere.
    let replays = value(&p, "npd_ext_gpu_pcie_replays_total", &gpu(3), &[]).expect("replays");
    assert_eq!(replays % 5.0, 0.0, "{replays}");
    let corrected =
        value(&p, "npd_ext_gpu_ecc_corrected_errors_total", &gpu(3), &[]).expect("corrected");
    assert!(corrected > 0.0 && corrected % 2.0 == 0.0, "{corrected}");
    let nvlink = value(&p, "npd_ext_gpu_nvlink_errors_total", &gpu(6), &[]).expect("nvlink");
    assert!(nvlink > 0.0 && nvlink % 4.0 == 0.0, "{nvlink}");
    assert_eq!(
        value(&p, "npd_ext_gpu_pcie_replays_total", &gpu(0), &[]),
        Some(0.0)
    );
    let ecc = m.wait("ECC 7 on GPU 2", |p| {
        value(p, "npd_ext_gpu_ecc_uncorrected_errors_total", &gpu(2), &[]) == Some(7.0)
    });
    // About the monitor: timed calls, no timeouts, a fresh sweep.
    let calls = ecc
        .value(
            "npd_ext_gpu_nvml_call_duration_seconds_count",
            &[("worker", "sim-driver")],
        )
        .expect("timed calls");
    assert!(calls >= 1.0, "{calls}");
    assert_eq!(
        ecc.value(
            "npd_ext_gpu_nvml_call_timeouts_total",
            &[("worker", "sim-driver")]
        ),
        Some(0.0)
    );
    assert_eq!(ecc.value("npd_ext_gpu_readings_available", &[]), Some(1.0));
    let sweep = ecc
        .value("npd_ext_gpu_last_good_sweep_timestamp_seconds", &[])
        .expect("a sweep");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - sweep).abs() < 30.0, "{sweep} vs {now}");
    // Prometheus conventions, and nothing of DCGM exporter's.
    for (name, t) in &ecc.types {
        assert!(name.starts_with("npd_ext_gpu_"), "{name}");
        assert!(
            !["util", "clock", "power"].iter().any(|w| name.contains(w)),
            "{name}"
        );
        if t == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
}

#[test]
fn while_the_driver_hangs_the_readings_leave_the_page() {
    let m = Monitor::start(
        r#"{"steps": [
  {"at": "100ms", "gpu": 3, "fault": {"pcie_replays": 5}},
  {"at": "100ms", "gpu": 4, "fault": {"xid": 79}},
  {"at": "1500ms", "gpu": 0, "fault": "hang"}
]}"#,
        &["--nvml-timeout", "500ms"],
    );
    // Before the first reading nothing is available either: wait for the
    // hang itself (a call past its deadline).
    let p = m.wait("the driver's calls to hang", |p| {
        p.value("npd_ext_gpu_readings_available", &[]) == Some(0.0)
            && p.value(
                "npd_ext_gpu_nvml_call_timeouts_total",
                &[("worker", "sim-driver")],
            )
            .is_some_and(|n| n >= 1.0)
    });
    // No reading of any GPU stands stale once the driver stops answering.
    for family in [
        "npd_ext_gpu_pcie_replays_total",
        "npd_ext_gpu_ecc_uncorrected_errors_total",
        "npd_ext_gpu_ecc_corrected_errors_total",
        "npd_ext_gpu_nvlink_errors_total",
        "npd_ext_gpu_remapped_rows_uncorrectable",
        "npd_ext_gpu_row_remap_pending",
    ] {
        assert_eq!(p.of(family).count(), 0, "{family} while the driver hangs");
    }
    let timeouts = p
        .value(
            "npd_ext_gpu_nvml_call_timeouts_total",
            &[("worker", "sim-driver")],
        )
        .expect("timeouts");
    assert!(timeouts >= 1.0, "{timeouts}");
    // The faults already known stay: GPU 4 fell off the bus.
    assert_eq!(
        value(
            &p,
            "npd_ext_gpu_condition",
            &gpu(4),
            &[("condition", "GPULost")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&p, "npd_ext_gpu_xids_total", &gpu(4), &[("xid", "79")]),
        Some(1.0)
    );
}
