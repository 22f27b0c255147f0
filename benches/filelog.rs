//! Filelog monitor throughput and peak memory (numbers go to docs/performance.md).
//!
//! A kernel monitor's rules plus an NVRM Xid rule, read by the filelog
//! plugin from 1 M syslog-format kernel lines of which 0.1 % match. The
//! rules are those of the kernel-monitor.json we ship (manifests/
//! npd-ext-config.yaml) with the pluginConfig of tests/fixtures/
//! kernel-monitor-filelog.json; with `NPD_EXT_COMPAT_DIR` set, upstream
//! NPD's kernel-monitor.json and kernel-monitor-filelog.json from that
//! directory's npd-configs/. The output names which.
//! The real `npd-ext detector` binary is started on them; the clock runs
//! from its start until every expected `problem_counter` shows on
//! `/metrics`. Reported: CPU seconds of the detector (every thread's schedstat), lines
//! per CPU-second, and its peak RSS (`VmHWM`).
//!
//! Run: `cargo bench --bench filelog` (add `-- --quick` for 100 k lines).
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/proc.rs"]
mod proc;
use proc::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_npd-ext");

/// Benign kernel lines (none matches a rule).
const BENIGN: [&str; 8] = [
    "eth0: renamed from veth{n}",
    "IPv6: ADDRCONF(NETDEV_CHANGE): cali{n}: link becomes ready",
    "audit: type=1400 audit({n}.123:456): apparmor=\"STATUS\" operation=\"profile_load\" name=\"cri-containerd.apparmor.d\" pid={n}",
    "EXT4-fs (nvme0n1p{n}): mounted filesystem with ordered data mode. Opts: (null)",
    "cni0: port 3(veth{n}) entered forwarding state",
    "nvidia-nvswitch0: open (major=510)",
    "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.159.04",
    "xfs filesystem being mounted at /var/lib/kubelet/pods/{n}/volumes supports timestamps until 2038",
];

/// Matching lines and the reason each one counts under, for either config.
const PROBLEMS: [(&str, &str); 5] = [
    (
        "OOMKilling",
        "Killed process {n} (python3) total-vm:9876543kB, anon-rss:8765432kB, file-rss:0kB, shmem-rss:0kB",
    ),
    (
        "TaskHung",
        "INFO: task kworker/2:{n}:123 blocked for more than 120 seconds.",
    ),
    (
        "Ext4Error",
        "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #{n}: comm ls: reading directory lblock 0",
    ),
    (
        "IOError",
        "Buffer I/O error on dev nvme0n1, logical block {n}, async page read",
    ),
    (
        "NvidiaXid",
        "NVRM: Xid (PCI:0000:61:00): 79, pid={n}, GPU has fallen off the bus.",
    ),
];

/// The rules the detector runs: which config they come from, the sixth
/// problem line (a CPER record, each config counting another severity),
/// and the config with its log path.
struct Rules {
    from: String,
    cper: (&'static str, &'static str),
    config: serde_json::Value,
}

fn rules() -> Rules {
    let read = |path: &Path| -> serde_json::Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("json")
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (from, cper, mut kernel, filelog) = match std::env::var_os("NPD_EXT_COMPAT_DIR") {
        Some(dir) if !dir.is_empty() => {
            let configs = Path::new(&dir).join("npd-configs");
            (
                format!("upstream ({})", configs.display()),
                (
                    "CperHardwareErrorCorrected",
                    "{1}[Hardware Error]: event severity: corrected",
                ),
                read(&configs.join("kernel-monitor.json")),
                read(&configs.join("kernel-monitor-filelog.json")),
            )
        }
        _ => {
            let manifest = root.join("manifests/npd-ext-config.yaml");
            let text = std::fs::read_to_string(&manifest).expect("the shipped ConfigMap");
            let entry = npd_ext::config::configmap::entries(&text)
                .expect("the manifest parses")
                .into_iter()
                .find(|e| e.key == "kernel-monitor.json")
                .expect("a kernel-monitor.json entry");
            (
                "ours (the shipped kernel-monitor.json, tests/fixtures' filelog pluginConfig)"
                    .to_owned(),
                (
                    "CperHardwareErrorFatal",
                    "{1}[Hardware Error]: event severity: fatal",
                ),
                serde_json::from_str(&entry.text).expect("json"),
                read(&root.join("tests/fixtures/kernel-monitor-filelog.json")),
            )
        }
    };
    kernel["plugin"] = "filelog".into();
    kernel["pluginConfig"] = filelog["pluginConfig"].clone();
    kernel["rules"]
        .as_array_mut()
        .expect("rules")
        .push(serde_json::json!({
            "type": "temporary",
            "reason": "NvidiaXid",
            "pattern": "NVRM: Xid \\(PCI:[0-9a-fA-F:.]+\\): \\d+, .*"
        }));
    Rules {
        from,
        cper,
        config: kernel,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lines: usize = if quick { 100_000 } else { 1_000_000 };
    let dir = std::env::temp_dir().join(format!("npd-ext-filelog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let log = dir.join("kern.log");
    let Rules {
        from,
        cper,
        mut config,
    } = rules();
    let mut problems = PROBLEMS.to_vec();
    problems.push(cper);
    let expected = write_log(&log, lines, &problems);
    let cfg = dir.join("kernel-monitor-filelog.json");
    config["logPath"] = log.display().to_string().into();
    std::fs::write(&cfg, config.to_string()).expect("config");
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["detector", "--enable-k8s-exporter=false", "--port", "0"])
        .arg("--prometheus-port")
        .arg(port.to_string())
        .arg("--config.system-log-monitor")
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("detector starts");
    let pid = child.id();
    loop {
        if let Some(counts) = scrape(port)
            && expected.iter().all(|(r, n)| counts.get(r) == Some(n))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "counters not reached in 300 s: want {expected:?}, have {:?}",
            scrape(port)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds(pid);
    let hwm = peak_rss_kib(pid);
    let anon = proc::status_kib(pid, "RssAnon:");
    let file = proc::status_kib(pid, "RssFile:");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("filelog: rules: {from}");
    println!(
        "filelog: {lines} lines ({:.0} MiB), {} problems; wall {:.2} s; CPU {:.3} s; {:.2} M lines per CPU-second; peak RSS {:.1} MiB (at the end RssAnon {:.1}, RssFile {:.1} MiB)",
        size as f64 / 1048576.0,
        expected.values().sum::<u64>(),
        wall.as_secs_f64(),
        cpu,
        lines as f64 / cpu / 1e6,
        hwm as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0,
    );
}

fn write_log(path: &Path, lines: usize, problems: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut out = BufWriter::new(std::fs::File::create(path).expect("log"));
    let stamp = jiff::ZonedDateTime::now()
        .strftime("%b %e %H:%M:%S")
        .to_string();
    let mut expected: BTreeMap<String, u64> =
        problems.iter().map(|(r, _)| ((*r).to_owned(), 0)).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..lines {
        let (text, reason) = if i % 1000 == 999 {
            let (reason, t) = problems[rng.usize(..problems.len())];
            (t, Some(reason))
        } else {
            (BENIGN[rng.usize(..BENIGN.len())], None)
        };
        let text = text.replace("{n}", &rng.u32(1..100_000).to_string());
        writeln!(
            out,
            "{stamp} gpu-node-17 kernel: [{:>6}.{:06}] {text}",
            100_000 + i / 1000,
            i % 1_000_000
        )
        .expect("write");
        if let Some(r) = reason {
            *expected.entry(r.to_owned()).or_default() += 1;
        }
    }
    out.flush().expect("flush");
    expected
}

fn scrape(port: u16) -> Option<BTreeMap<String, u64>> {
    let body = proc::metrics_text(port)?;
    Some(
        body.lines()
            .filter_map(|l| l.strip_prefix("problem_counter{reason=\""))
            .filter_map(|l| {
                let (reason, rest) = l.split_once("\"}")?;
                Some((reason.to_owned(), rest.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The CPU time of every thread of `pid`, from schedstat (nanoseconds: a
/// run of a tenth of a second is too short for clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    proc::threads(pid).iter().map(|t| t.cpu_ns).sum::<u64>() as f64 / 1e9
}

fn peak_rss_kib(pid: u32) -> u64 {
    proc::status_kib(pid, "VmHWM:")
}
