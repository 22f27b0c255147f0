//! The system stats monitor end to end: the detector binary reads a node's
//! `/proc` and `/sys` (tests/fixtures/stats-root, or a copy the test
//! changes) and `/metrics` is scraped over real HTTP. Names, label keys
//! and types are checked against upstream NPD's, written out here from its
//! metric definitions (not from our catalog), and values against the files.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::bin::{BIN, sigterm, wait_exit, wait_until};
use common::prom::Page;

/// Upstream's families: name (the default displayName, sanitised), type,
/// label keys.
const UPSTREAM: &[(&str, &str, &[&str])] = &[
    ("cpu_runnable_task_count", "gauge", &[]),
    ("cpu_usage_time", "counter", &["state"]),
    ("cpu_load_1m", "gauge", &[]),
    ("cpu_load_5m", "gauge", &[]),
    ("cpu_load_15m", "gauge", &[]),
    ("system_processes_total", "counter", &[]),
    ("system_procs_running", "gauge", &[]),
    ("system_procs_blocked", "gauge", &[]),
    ("system_interrupts_total", "counter", &[]),
    ("system_cpu_stat", "counter", &["cpu", "stage"]),
    ("disk_io_time", "counter", &["device_name"]),
    ("disk_weighted_io", "counter", &["device_name"]),
    ("disk_avg_queue_len", "gauge", &["device_name"]),
    (
        "disk_operation_count",
        "counter",
        &["device_name", "direction"],
    ),
    (
        "disk_merged_operation_count",
        "counter",
        &["device_name", "direction"],
    ),
    (
        "disk_operation_bytes_count",
        "counter",
        &["device_name", "direction"],
    ),
    (
        "disk_operation_time",
        "counter",
        &["device_name", "direction"],
    ),
    (
        "disk_bytes_used",
        "gauge",
        &["device_name", "fs_type", "mount_option", "state"],
    ),
    ("disk_percent_used", "gauge", &["device_name"]),
    ("host_uptime", "gauge", &["kernel_version", "os_version"]),
    ("memory_bytes_used", "gauge", &["state"]),
    ("memory_anonymous_used", "gauge", &["state"]),
    ("memory_page_cache_used", "gauge", &["state"]),
    ("memory_unevictable_used", "gauge", &[]),
    ("memory_dirty_used", "gauge", &["state"]),
    ("memory_percent_used", "gauge", &["state"]),
    ("system_os_feature", "gauge", &["os_feature", "value"]),
    ("net_rx_bytes", "counter", &["interface_name"]),
    ("net_rx_packets", "counter", &["interface_name"]),
    ("net_rx_errors", "counter", &["interface_name"]),
    ("net_rx_dropped", "counter", &["interface_name"]),
    ("net_rx_fifo", "counter", &["interface_name"]),
    ("net_rx_frame", "counter", &["interface_name"]),
    ("net_rx_compressed", "counter", &["interface_name"]),
    ("net_rx_multicast", "counter", &["interface_name"]),
    ("net_tx_bytes", "counter", &["interface_name"]),
    ("net_tx_packets", "counter", &["interface_name"]),
    ("net_tx_errors", "counter", &["interface_name"]),
    ("net_tx_dropped", "counter", &["interface_name"]),
    ("net_tx_fifo", "counter", &["interface_name"]),
    ("net_tx_collisions", "counter", &["interface_name"]),
    ("net_tx_carrier", "counter", &["interface_name"]),
    ("net_tx_compressed", "counter", &["interface_name"]),
];

/// Every family of `expected` is here with upstream's type and label
/// keys on every series, and nothing else but the detector's own.
fn has_exactly(page: &Page, expected: &BTreeSet<&str>) {
    let ours: BTreeSet<&str> = page
        .names()
        .into_iter()
        .filter(|n| !n.starts_with("npd_ext_") && !n.starts_with("problem_"))
        .collect();
    assert_eq!(&ours, expected, "families on /metrics");
    for (name, kind, keys) in UPSTREAM.iter().filter(|(n, _, _)| expected.contains(n)) {
        assert_eq!(
            page.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name}"
        );
        let want: BTreeSet<&str> = keys.iter().copied().collect();
        for s in page.of(name) {
            let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "{name} label keys: {s:?}");
        }
    }
}

/// A running detector with the stats monitors of `configs`, reading
/// `root`, with `path` as its PATH (where lsblk is looked for).
struct Running {
    child: Child,
    port: u16,
}

impl Running {
    fn start(root: &Path, configs: &[PathBuf], path: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let list: Vec<String> = configs.iter().map(|c| c.display().to_string()).collect();
        let mut child = Command::new(BIN)
            .args(["detector", "--enable-k8s-exporter=false", "--port=0"])
            .arg("--prometheus-address=127.0.0.1")
            .arg(format!("--prometheus-port={port}"))
            .arg(format!("--system-stats-root={}", root.display()))
            .arg(format!("--config.system-stats-monitor={}", list.join(",")))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("detector starts");
        let mut stderr = child.stderr.take().expect("stderr");
        common::bin::read_until(&mut stderr, "detector running");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, port }
    }

    fn scrape(&self) -> Page {
        common::prom::scrape(self.port)
    }

    /// Scrapes until `ready` holds for the page (a collection has run).
    fn wait(&self, what: &str, ready: impl Fn(&Page) -> bool) -> Page {
        let mut page = Page::default();
        wait_until(Duration::from_secs(20), what, || {
            page = self.scrape();
            ready(&page)
        });
        page
    }

    fn stop(mut self) {
        sigterm(&self.child);
        let status = wait_exit(&mut self.child, Duration::from_secs(15));
        assert!(status.success(), "{status}");
    }
}

fn fixture_root() -> PathBuf {
    common::fixture("stats-root")
}

/// A PATH holding only an `lsblk` that prints `names` and logs each run.
fn lsblk_path(dir: &Path, names: &[&str]) -> (String, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let log = dir.join("lsblk.log");
    common::script(
        &bin,
        "lsblk",
        &format!(
            "echo \"$*\" >> '{}'\nprintf '{}'",
            log.display(),
            names.iter().map(|n| format!("{n}\\n")).collect::<String>()
        ),
    );
    (bin.display().to_string(), log)
}

fn upstream_names(filter: impl Fn(&str) -> bool) -> BTreeSet<&'static str> {
    UPSTREAM
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| filter(n))
        .collect()
}

/// What every stock-shaped config must read from the fixture tree.
fn check_fixture_values(p: &Page) {
    assert_eq!(p.value("cpu_load_1m", &[]), Some(0.52));
    assert_eq!(p.value("cpu_runnable_task_count", &[]), Some(0.52));
    assert_eq!(p.value("cpu_load_15m", &[]), Some(0.7));
    assert_eq!(
        p.value("cpu_usage_time", &[("state", "user")]),
        Some(4_705_560.0)
    );
    assert_eq!(
        p.value("cpu_usage_time", &[("state", "softirq")]),
        Some(37_650.0)
    );
    assert_eq!(p.label_values("cpu_usage_time", "state").len(), 10);
    assert_eq!(
        p.value("system_cpu_stat", &[("cpu", "cpu1"), ("stage", "idle")]),
        Some(751_172.3)
    );
    assert_eq!(
        p.label_values("system_cpu_stat", "cpu"),
        set(&["cpu0", "cpu1"])
    );
    assert_eq!(p.value("system_interrupts_total", &[]), Some(987_654_321.0));
    assert_eq!(p.value("system_processes_total", &[]), Some(5_123_456.0));
    assert_eq!(p.value("system_procs_running", &[]), Some(3.0));
    assert_eq!(p.value("system_procs_blocked", &[]), Some(1.0));
    assert_eq!(
        p.value(
            "disk_operation_bytes_count",
            &[("device_name", "nvme0n1"), ("direction", "read")]
        ),
        Some(1_098_765_432.0 * 512.0)
    );
    assert_eq!(
        p.value(
            "disk_operation_time",
            &[("device_name", "sda"), ("direction", "write")]
        ),
        Some(512_345.0)
    );
    assert_eq!(
        p.value("disk_weighted_io", &[("device_name", "nvme0n1")]),
        Some(3_580_245.0)
    );
    assert_eq!(
        p.value(
            "host_uptime",
            &[
                ("kernel_version", "6.8.0-1015-nvidia"),
                ("os_version", "ubuntu 22.04.5 LTS (Jammy Jellyfish)")
            ]
        ),
        Some(864_123.0)
    );
    let total: f64 = p.of("memory_bytes_used").map(|s| s.value).sum();
    assert_eq!(
        total,
        2_113_178_768.0 * 1024.0,
        "memory states add up to MemTotal"
    );
    assert_eq!(
        p.value("memory_anonymous_used", &[("state", "active")]),
        Some(30_123_456.0 * 1024.0)
    );
    assert_eq!(
        p.value("memory_dirty_used", &[("state", "writeback")]),
        Some(128.0 * 1024.0)
    );
    assert_eq!(
        p.value("memory_unevictable_used", &[]),
        Some(409_600.0 * 1024.0)
    );
    let used = 2_113_178_768.0 - 1_835_624_108.0 - 2_212_148.0 - 198_112_020.0 - 12_000_000.0;
    let pct = p
        .value("memory_percent_used", &[("state", "used")])
        .expect("percent");
    assert!((pct - 100.0 * used / 2_113_178_768.0).abs() < 1e-9, "{pct}");
    // Filesystems: the first mount of each block device (not the bind
    // mount of sda1, not tmpfs or overlay), sized by statvfs.
    assert_eq!(
        p.label_values("disk_bytes_used", "device_name"),
        set(&["nvme0n1p1", "sda1"])
    );
    assert_eq!(
        p.label_values("disk_bytes_used", "mount_option"),
        set(&["rw,relatime"])
    );
    assert_eq!(
        p.label_values("disk_bytes_used", "fs_type"),
        set(&["ext4", "xfs"])
    );
    for dev in ["nvme0n1p1", "sda1"] {
        let v = |state| {
            p.value("disk_bytes_used", &[("device_name", dev), ("state", state)])
                .expect("bytes")
        };
        let pct = p
            .value("disk_percent_used", &[("device_name", dev)])
            .expect("percent");
        assert!(v("free") > 0.0 && v("used") > 0.0, "{dev}");
        assert!((pct - 100.0 * v("used") / (v("used") + v("free"))).abs() < 1e-9);
    }
}

fn check_os_features(p: &Page, unknown: &str) {
    let f = |feature: &str, value: &str| {
        p.value(
            "system_os_feature",
            &[("os_feature", feature), ("value", value)],
        )
    };
    assert_eq!(f("GPUSupport", ""), Some(1.0));
    assert_eq!(f("KTD", ""), Some(0.0));
    assert_eq!(f("UnifiedCgroupHierarchy", ""), Some(1.0));
    assert_eq!(f("KernelModuleIntegrity", ""), Some(0.0));
    assert_eq!(f("UnknownModules", unknown), Some(1.0));
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_shipped_stats_config_exports_every_upstream_metric_read_from_the_node() {
    let tmp = common::tempdir();
    let cfg = common::write_shipped_config(tmp.path(), "system-stats-monitor.json");
    common::write_shipped_config(tmp.path(), "known-modules.json");
    let (path, lsblk_log) = lsblk_path(tmp.path(), &["sda", "nvme0n1"]);
    let d = Running::start(&fixture_root(), &[cfg], &path);
    let p = d.wait("the first collection", |p| {
        p.names().contains("host_uptime")
    });
    // Everything but the average queue length, which needs two readings.
    has_exactly(&p, &upstream_names(|n| n != "disk_avg_queue_len"));
    check_fixture_values(&p);
    // lsblk's disks and every mounted partition; not loop0 (lsblk did not
    // list it) nor the all-zero ram0.
    assert_eq!(
        p.label_values("disk_io_time", "device_name"),
        set(&["nvme0n1", "nvme0n1p1", "sda", "sda1"])
    );
    assert_eq!(
        std::fs::read_to_string(&lsblk_log).expect("lsblk ran"),
        "-d -n -o NAME\n"
    );
    // zfs is out of tree and not in known-modules.json; lustre is; nvidia*
    // never count.
    check_os_features(&p, "zfs");
    assert_eq!(
        p.label_values("net_rx_bytes", "interface_name"),
        set(&["eth0", "lo"])
    );
    assert_eq!(
        p.value("net_rx_bytes", &[("interface_name", "eth0")]),
        Some(987_654_321_098.0)
    );
    assert_eq!(
        p.value("net_tx_carrier", &[("interface_name", "eth0")]),
        Some(5.0)
    );
    d.stop();
}

/// Copies the fixture tree, so a test can change the node under the monitor.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

fn write(path: &Path, text: &str) {
    // Whole-file replace, as the kernel presents a fresh read.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn each_collection_replaces_the_series_and_lsblk_runs_only_when_disks_change() {
    let tmp = common::tempdir();
    let root = tmp.path().join("node");
    copy_tree(&fixture_root(), &root);
    let cfg = tmp.path().join("stats.json");
    std::fs::write(
        &cfg,
        r#"{"invokeInterval": "1s",
            "cpu": {"metricsConfigs": {"cpu/load_1m": {"displayName": "my/load"}}},
            "host": {"metricsConfigs": {"host/uptime": {"displayName": "host/uptime"}}},
            "disk": {"includeRootBlk": true, "lsblkTimeout": "1s",
                     "metricsConfigs": {"disk/avg_queue_len": {"displayName": "disk/avg_queue_len"},
                                        "disk/io_time": {"displayName": "disk/io_time"}}},
            "net": {"metricsConfigs": {"net/rx_bytes": {"displayName": "net/rx_bytes"},
                                       "net/tx_bytes": {"displayName": ""}}}}"#,
    )
    .expect("config");
    let (path, lsblk_log) = lsblk_path(tmp.path(), &["sda"]);
    let d = Running::start(&root, &[cfg], &path);
    let p = d.wait("the first collection", |p| {
        p.names().contains("host_uptime")
    });
    // The displayName is the family name; an empty one exports nothing.
    assert_eq!(
        p.names()
            .into_iter()
            .filter(|n| !n.starts_with("npd_ext_"))
            .collect::<BTreeSet<_>>(),
        ["disk_io_time", "host_uptime", "my_load", "net_rx_bytes"].into()
    );
    assert_eq!(
        p.label_values("disk_io_time", "device_name"),
        set(&["sda"]),
        "lsblk's answer"
    );
    assert_eq!(p.label_values("net_rx_bytes", "interface_name").len(), 4);

    // The node moves on: sda did 1000 ms of weighted I/O, eth0 went away,
    // the uptime advanced.
    let stats = std::fs::read_to_string(root.join("proc/diskstats")).expect("diskstats");
    write(
        &root.join("proc/diskstats"),
        &stats.replace(" 545678 ", " 546678 "),
    );
    let net = std::fs::read_to_string(root.join("proc/net/dev")).expect("net");
    let net: String = net
        .lines()
        .filter(|l| !l.contains("eth0:"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(&root.join("proc/net/dev"), &net);
    write(&root.join("proc/uptime"), "864200.00 6789012.34\n");
    let p = d.wait("a queue length from two readings", |p| {
        p.value("disk_avg_queue_len", &[("device_name", "sda")])
            .is_some_and(|q| q > 0.0)
    });
    // 1000 ms of weighted I/O over about a second between readings.
    let q = p
        .value("disk_avg_queue_len", &[("device_name", "sda")])
        .expect("queue length");
    assert!(q > 0.1 && q <= 1.5, "{q}");
    assert_eq!(p.value("host_uptime", &[]), Some(864_200.0));
    assert!(
        !p.label_values("net_rx_bytes", "interface_name")
            .contains("eth0"),
        "a vanished interface leaves no series"
    );
    assert_eq!(
        std::fs::read_to_string(&lsblk_log)
            .expect("log")
            .lines()
            .count(),
        1,
        "lsblk's answer is kept"
    );

    // A new disk: lsblk is asked again.
    std::fs::create_dir_all(root.join("sys/block/sdb")).expect("sdb");
    write(&root.join("proc/uptime"), "864300.00 6789012.34\n");
    d.wait("the collection after sdb", |p| {
        p.value("host_uptime", &[]) == Some(864_300.0)
    });
    assert_eq!(
        std::fs::read_to_string(&lsblk_log)
            .expect("log")
            .lines()
            .count(),
        2
    );

    // A file that cannot be read takes its metrics off /metrics.
    std::fs::remove_file(root.join("proc/loadavg")).expect("rm");
    write(&root.join("proc/uptime"), "864400.00 6789012.34\n");
    let p = d.wait("the collection without loadavg", |p| {
        p.value("host_uptime", &[]) == Some(864_400.0)
    });
    assert!(!p.names().contains("my_load"), "no stale load");
    d.stop();
}

#[test]
fn without_lsblk_whole_disks_come_from_sys_block_as_lsblk_lists_them() {
    let tmp = common::tempdir();
    let cfg = tmp.path().join("stats.json");
    std::fs::write(
        &cfg,
        r#"{"disk": {"includeRootBlk": true,
                     "metricsConfigs": {"disk/io_time": {"displayName": "disk/io_time"}}}}"#,
    )
    .expect("config");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("empty PATH dir");
    let d = Running::start(&fixture_root(), &[cfg], &empty.display().to_string());
    let p = d.wait("the first collection", |p| {
        p.names().contains("disk_io_time")
    });
    // loop0 has no sectors and ram0 is a RAM disk: lsblk leaves both out.
    assert_eq!(
        p.label_values("disk_io_time", "device_name"),
        set(&["nvme0n1", "sda"])
    );
    d.stop();
}

#[test]
fn stats_configs_that_cannot_be_served_are_refused_with_the_name() {
    let tmp = common::tempdir();
    let a = tmp.path().join("a.json");
    std::fs::write(
        &a,
        r#"{"cpu": {"metricsConfigs": {"cpu/load_1min": {"displayName": "cpu/load_1m"}}}}"#,
    )
    .expect("a");
    let (code, out, _) = common::bin::npd(&["validate-config", a.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("a.json:1:29: error: cpu.metricsConfigs.cpu/load_1min: unknown cpu metric \"cpu/load_1min\" (did you mean \"cpu/load_1m\"?)"),
        "{out}"
    );
    // Two files exporting one name: the detector says which.
    let b = tmp.path().join("b.json");
    let c = tmp.path().join("c.json");
    for p in [&b, &c] {
        std::fs::write(
            p,
            r#"{"cpu": {"metricsConfigs": {"cpu/load_1m": {"displayName": "cpu/load_1m"}}}}"#,
        )
        .expect("config");
    }
    let (code, _, err) = common::bin::run(common::bin::detector().arg(format!(
        "--config.system-stats-monitor={},{}",
        b.display(),
        c.display()
    )));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "{}: cpu/load_1m: displayName \"cpu/load_1m\" is exported as cpu_load_1m, which {} exports too",
            c.display(),
            b.display()
        )),
        "{err}"
    );
}

mod compat {
    //! Upstream's three stats configs, unchanged, on the fixture node.
    use super::*;
    use common::compat::upstream;

    /// The stock config `name` copied beside a known-modules list where
    /// its `knownModulesConfigPath` points.
    fn stock(dir: &Path, name: &str) -> PathBuf {
        let to = dir.join(name);
        std::fs::copy(upstream(&format!("npd-configs/{name}")), &to).expect("copy");
        std::fs::create_dir_all(dir.join("guestosconfig")).expect("dir");
        std::fs::write(
            dir.join("guestosconfig/known-modules.json"),
            r#"[{"moduleName": "zfs"}]"#,
        )
        .expect("known modules");
        to
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn stock_stats_configs_export_upstreams_names_and_labels() {
        let tmp = common::tempdir();
        let (path, _) = lsblk_path(tmp.path(), &["sda", "nvme0n1"]);
        let system = stock(tmp.path(), "system-stats-monitor.json");
        let net = stock(tmp.path(), "net-cgroup-system-stats-monitor.json");
        let d = Running::start(&fixture_root(), &[system, net], &path);
        let p = d.wait("the first collections", |p| {
            p.names().contains("host_uptime") && p.names().contains("net_rx_bytes")
        });
        has_exactly(&p, &upstream_names(|n| n != "disk_avg_queue_len"));
        check_fixture_values(&p);
        check_os_features(&p, "lustre");
        assert_eq!(
            p.label_values("net_tx_bytes", "interface_name"),
            set(&["eth0", "lo"])
        );
        d.stop();

        // The Windows config's collectors run here too; with neither
        // include flag every active disk line is read.
        let windows = stock(tmp.path(), "windows-system-stats-monitor.json");
        let d = Running::start(&fixture_root(), &[windows], &path);
        let p = d.wait("the first collection", |p| {
            p.names().contains("host_uptime")
        });
        has_exactly(
            &p,
            &upstream_names(|n| {
                n != "disk_avg_queue_len" && !n.starts_with("net_") && n != "system_os_feature"
            }),
        );
        check_fixture_values(&p);
        assert_eq!(
            p.label_values("disk_io_time", "device_name"),
            set(&["loop0", "nvme0n1", "nvme0n1p1", "sda", "sda1"])
        );
        d.stop();
    }
}
