//! System log monitors in-process: a detector on one config, log files and
//! kmsg records written as the kernel does, the events and metrics that
//! come out, and the checks that `syslog` runs on our configs and `compat`
//! on upstream's.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use npd_ext::conditions::Published;
use npd_ext::config::syslog;
use npd_ext::detector::{self, Detector, DetectorOptions};
use npd_ext::problem::ConditionStatus;
use npd_ext::shutdown::Shutdown;
use tokio::sync::broadcast;

use super::{find, has, http_get, wait_for};

/// The system log monitor config `text` (from `path`), reading `log_path`.
pub fn config(path: &Path, text: &str, log_path: &Path) -> syslog::SyslogMonitorConfig {
    let mut cfg = syslog::check(path, text)
        .config
        .unwrap_or_else(|| panic!("{}: the config loads", path.display()));
    cfg.log_path = Some(log_path.display().to_string());
    cfg
}

/// The system log monitor config in the file `path`, reading `log_path`.
pub fn config_file(path: &Path, log_path: &Path) -> syslog::SyslogMonitorConfig {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config(path, &text, log_path)
}

pub fn start(options: DetectorOptions) -> (Shutdown, Detector) {
    let shutdown = Shutdown::new();
    let options = DetectorOptions {
        http: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
        metrics: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("bind")),
        log_exporter: true,
        ..options
    };
    let d = detector::start(options, &shutdown).expect("detector starts");
    (shutdown, d)
}

pub fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(bytes).expect("append");
}

/// The next event with `reason`, skipping others.
pub async fn next_event(rx: &mut broadcast::Receiver<Published>, reason: &str) -> String {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(Published::Event { event, .. }) if event.reason == reason => {
                    return event.message;
                }
                Ok(_) => {}
                Err(e) => panic!("published stream: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {reason} event within 20 s"))
}

pub async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `/metrics` until `series` satisfies `pred` (20 s at most).
pub async fn wait_metric(addr: std::net::SocketAddr, series: &str, pred: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(addr, series).await;
        if v.is_some_and(&pred) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {v:?} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Microseconds since boot on the clock kmsg uses, for records dated now.
pub fn usec_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(npd_ext::kmsg::boot_time())
        .expect("after boot");
    u64::try_from(since.as_micros()).expect("fits")
}

/// Now as a syslog-format kern.log line starts.
pub fn syslog_stamp() -> String {
    jiff::ZonedDateTime::now()
        .strftime("%b %e %H:%M:%S")
        .to_string()
}

/// A kernel monitor (`cfg`, reading a kmsg file of ours) on kmsg records:
/// it skips what came before its lookback, sets XfsShutdown, and a hung
/// `task` (a name whose hang is a deadlock in this config) gives a TaskHung
/// event and KernelDeadlock True with `deadlock` as its reason; the counters
/// and gauges say so.
pub async fn kernel_monitor_on_kmsg_records(
    cfg: impl FnOnce(&Path) -> syslog::SyslogMonitorConfig,
    task: &str,
    deadlock: &str,
) {
    let dir = super::tempdir();
    let kmsg = dir.path().join("kmsg");
    let t = usec_now();
    // A record from before the monitor's lookback (5m) must be ignored.
    let old = t.saturating_sub(3_600_000_000);
    append(
        &kmsg,
        format!(
            "3,1,{old},-;Out of memory: Killed process 1 (old) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB\n\
             6,2,{t},-;eth0: link up\n SUBSYSTEM=net\n DEVICE=n2\n\
             3,3,{t},-;Out of memory: Killed process 4321 (python3) total-vm:9876543kB, anon-rss:8765432kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:17000kB oom_score_adj:0\n\
             3,9,{t},-;XFS (sdb1): Corruption of in-memory data detected.  Shutting down filesystem\n"
        )
        .as_bytes(),
    );
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![cfg(&kmsg)],
        ..DetectorOptions::default()
    });
    let mut events = d.subscribe();
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "XfsShutdown True",
        |c| has(c, "XfsShutdown", ConditionStatus::True),
    )
    .await;
    let x = find(&c, "XfsShutdown").expect("declared");
    assert_eq!(x.reason, "XfsHasShutdown");
    assert!(x.message.contains("Shutting down filesystem"), "{x:?}");
    assert_eq!(x.source, "kernel-monitor");
    // Untouched conditions start False with their configured reason.
    let k = find(&c, "KernelDeadlock").expect("declared");
    assert_eq!(
        (k.status, k.reason.as_str()),
        (ConditionStatus::False, "KernelHasNoDeadlock")
    );
    // A hung task now: permanent `deadlock` and temporary TaskHung.
    let hung = format!("INFO: task {task}:1234 blocked for more than 120 seconds.");
    append(&kmsg, format!("3,10,{},-;{hung}\n", usec_now()).as_bytes());
    let msg = next_event(&mut events, "TaskHung").await;
    assert_eq!(msg, hung);
    wait_for(
        &mut conds,
        Duration::from_secs(20),
        "KernelDeadlock True",
        |c| {
            find(c, "KernelDeadlock")
                .is_some_and(|k| k.status == ConditionStatus::True && k.reason == deadlock)
        },
    )
    .await;
    let m = d.metrics_addr.expect("metrics served");
    // Only the OOM kill since the lookback counts, not the old one.
    assert_eq!(
        metric(m, "problem_counter{reason=\"OOMKilling\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(m, "problem_counter{reason=\"TaskHung\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(m, "problem_counter{reason=\"Ext4Error\"}").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            m,
            "problem_gauge{reason=\"XfsHasShutdown\",type=\"XfsShutdown\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            m,
            &format!("problem_gauge{{reason=\"{deadlock}\",type=\"KernelDeadlock\"}}")
        )
        .await,
        Some(1.0)
    );
    shutdown.token().cancel();
}

/// A filelog kernel monitor (the config file `cfg`) on a kern.log that is
/// written in pieces, rotated and truncated: every OOM kill is seen once,
/// and a skipped line is not one.
pub async fn filelog_follows_rotation_and_truncation(cfg: &Path) {
    let dir = super::tempdir();
    let log = dir.path().join("kern.log");
    let line = |pid: u32| {
        format!(
            "{} node-1 kernel: [ 1234.567890] Killed process {pid} (java) total-vm:2345678kB, anon-rss:123456kB, file-rss:0kB\n",
            syslog_stamp()
        )
    };
    append(&log, line(1).as_bytes());
    append(&log, b"garbage that has no timestamp\n");
    let mut cfg = config_file(cfg, &log);
    cfg.skip_list = vec!["(skipped)".into()];
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![cfg],
        ..DetectorOptions::default()
    });
    let mut events = d.subscribe();
    assert!(
        next_event(&mut events, "OOMKilling")
            .await
            .contains("process 1 ")
    );
    // A skipped line, then a partial line finished in a second write.
    append(
        &log,
        format!("{} node-1 kernel: [ 1.0] Killed process 9 (skipped) total-vm:1kB, anon-rss:1kB, file-rss:0kB\n", syslog_stamp()).as_bytes(),
    );
    let l2 = line(2);
    let (a, b) = l2.split_at(30);
    append(&log, a.as_bytes());
    tokio::task::yield_now().await;
    append(&log, b.as_bytes());
    assert!(
        next_event(&mut events, "OOMKilling")
            .await
            .contains("process 2 ")
    );

    // Rotation: the old file moves away, a new one takes its name.
    std::fs::rename(&log, dir.path().join("kern.log.1")).expect("rotate");
    append(&dir.path().join("kern.log.1"), line(3).as_bytes());
    append(&log, line(4).as_bytes());
    assert!(
        next_event(&mut events, "OOMKilling")
            .await
            .contains("process 3 "),
        "the rotated file's last line"
    );
    assert!(
        next_event(&mut events, "OOMKilling")
            .await
            .contains("process 4 "),
        "the new file from its start"
    );

    // Truncation: the file is emptied in place and written again.
    std::fs::File::create(&log).expect("truncate");
    append(&log, line(5).as_bytes());
    assert!(
        next_event(&mut events, "OOMKilling")
            .await
            .contains("process 5 ")
    );
    assert_eq!(
        metric(
            d.metrics_addr.expect("metrics"),
            "problem_counter{reason=\"OOMKilling\"}"
        )
        .await,
        Some(5.0),
        "five OOM kills; the skipped line is not one"
    );
    shutdown.token().cancel();
}
