//! System log and custom plugin monitors end to end: upstream's stock
//! configs on real files, a real `journalctl`-shaped child, real plugin
//! scripts, the conditions and events they give and the metrics they count.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{find, http_get, wait_for};
use npd_ext::conditions::Published;
use npd_ext::config::{custom, syslog};
use npd_ext::detector::{self, Detector, DetectorOptions};
use npd_ext::problem::ConditionStatus;
use npd_ext::shutdown::Shutdown;
use tokio::sync::broadcast;

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel)
}

fn stock_syslog(name: &str, log_path: &Path) -> syslog::SyslogMonitorConfig {
    let path = shared(&format!("npd-configs/{name}"));
    let text = std::fs::read_to_string(&path).expect("shared config");
    let mut cfg = syslog::check(&path, &text)
        .config
        .expect("stock config loads");
    cfg.log_path = Some(log_path.display().to_string());
    cfg
}

fn start(options: DetectorOptions) -> (Shutdown, Detector) {
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

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(bytes).expect("append");
}

/// The next event with `reason`, skipping others.
async fn next_event(rx: &mut broadcast::Receiver<Published>, reason: &str) -> String {
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

async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `/metrics` until `series` satisfies `pred` (20 s at most).
async fn wait_metric(addr: std::net::SocketAddr, series: &str, pred: impl Fn(f64) -> bool) {
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
fn usec_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(npd_ext::kmsg::boot_time())
        .expect("after boot");
    u64::try_from(since.as_micros()).expect("fits")
}

#[tokio::test]
async fn stock_kernel_monitor_on_kmsg_records() {
    let dir = common::tempdir();
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
    let cfg = stock_syslog("kernel-monitor.json", &kmsg);
    let (shutdown, d) = start(DetectorOptions {
        syslog: vec![cfg],
        ..DetectorOptions::default()
    });
    let mut events = d.subscribe();
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "XfsShutdown True",
        |c| common::has(c, "XfsShutdown", ConditionStatus::True),
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
    // A hung docker task now: permanent DockerHung and temporary TaskHung.
    append(
        &kmsg,
        format!(
            "3,10,{},-;INFO: task docker:1234 blocked for more than 120 seconds.\n",
            usec_now()
        )
        .as_bytes(),
    );
    let msg = next_event(&mut events, "TaskHung").await;
    assert_eq!(
        msg,
        "INFO: task docker:1234 blocked for more than 120 seconds."
    );
    wait_for(
        &mut conds,
        Duration::from_secs(20),
        "KernelDeadlock True",
        |c| {
            find(c, "KernelDeadlock")
                .is_some_and(|k| k.status == ConditionStatus::True && k.reason == "DockerHung")
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
            "problem_gauge{reason=\"DockerHung\",type=\"KernelDeadlock\"}"
        )
        .await,
        Some(1.0)
    );
    shutdown.token().cancel();
}

fn syslog_stamp() -> String {
    jiff::ZonedDateTime::now()
        .strftime("%b %e %H:%M:%S")
        .to_string()
}

#[tokio::test]
async fn filelog_follows_rotation_and_truncation() {
    let dir = common::tempdir();
    let log = dir.path().join("kern.log");
    let line = |pid: u32| {
        format!(
            "{} node-1 kernel: [ 1234.567890] Killed process {pid} (java) total-vm:2345678kB, anon-rss:123456kB, file-rss:0kB\n",
            syslog_stamp()
        )
    };
    append(&log, line(1).as_bytes());
    append(&log, b"garbage that has no timestamp\n");
    let mut cfg = stock_syslog("kernel-monitor-filelog.json", &log);
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

use common::script;

#[tokio::test]
async fn custom_plugin_sets_clears_and_counts() {
    let dir = common::tempdir();
    let state = dir.path().join("state");
    std::fs::write(&state, "1").expect("state");
    let check = script(
        dir.path(),
        "check_ntp.sh",
        &format!(
            "s=$(cat {})\n[ \"$s\" = 1 ] && echo 'NTP is down' \nexit $s",
            state.display()
        ),
    );
    let text = format!(
        r#"{{"plugin": "custom",
            "pluginConfig": {{"invoke_interval": "200ms", "timeout": "5s", "max_output_length": 80, "concurrency": 3}},
            "source": "ntp-custom-plugin-monitor",
            "conditions": [{{"type": "NTPProblem", "reason": "NTPIsUp", "message": "ntp service is up"}}],
            "rules": [{{"type": "temporary", "reason": "NTPIsDown", "path": "{0}"}},
                      {{"type": "permanent", "condition": "NTPProblem", "reason": "NTPIsDown", "path": "{0}"}}]}}"#,
        check.display()
    );
    let cfg = custom::check(&dir.path().join("c.json"), &text)
        .config
        .expect("valid");
    let (shutdown, d) = start(DetectorOptions {
        custom: vec![cfg],
        ..DetectorOptions::default()
    });
    let mut conds = d.conditions();
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "NTPProblem True",
        |c| common::has(c, "NTPProblem", ConditionStatus::True),
    )
    .await;
    let n = find(&c, "NTPProblem").expect("declared");
    assert_eq!(
        (n.reason.as_str(), n.message.as_str()),
        ("NTPIsDown", "NTP is down")
    );
    let m = d.metrics_addr.expect("metrics");
    assert_eq!(
        metric(m, "problem_gauge{reason=\"NTPIsDown\",type=\"NTPProblem\"}").await,
        Some(1.0)
    );
    // Both rules have reported the problem (a temporary event, the change
    // to True) before it goes away.
    wait_metric(m, "problem_counter{reason=\"NTPIsDown\"}", |v| v >= 2.0).await;
    std::fs::write(&state, "0").expect("state");
    let c = wait_for(
        &mut conds,
        Duration::from_secs(20),
        "NTPProblem False",
        |c| common::has(c, "NTPProblem", ConditionStatus::False),
    )
    .await;
    assert_eq!(find(&c, "NTPProblem").expect("declared").reason, "NTPIsUp");
    assert_eq!(
        metric(m, "problem_gauge{reason=\"NTPIsDown\",type=\"NTPProblem\"}").await,
        Some(0.0),
        "the gauge returns to 0 when the condition clears"
    );
    shutdown.token().cancel();
}
