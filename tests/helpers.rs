//! `log-counter` and `health-checker`, NPD's helper binaries, as applets run
//! by argv[0] through symlinks, against real child processes: a scripted
//! journalctl, systemctl, crictl, docker and pkill, and a loopback HTTP
//! server standing in for kubelet and kube-proxy. Then both run from a
//! custom plugin monitor in the detector, as NPD's configs call them, at
//! `/home/kubernetes/bin` inside a private mount namespace.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin::{read_until, run, sigterm, wait_exit};
use common::node::{Health, Node, Tools, applet, entry};

const KUBELET_STARTED: &str = "Started Kubernetes kubelet.";
const KUBELET_STOPPING: &str = "Stopping Kubernetes kubelet...";
const PATTERN: &str =
    "--pattern=Started (Kubernetes kubelet|kubelet.service|kubelet.service - .*).";
const REVERT: &str =
    "--revert-pattern=Stopping (Kubernetes kubelet|kubelet.service|kubelet.service - .*)...";

fn log_counter(tmp: &Path, tools: &Tools, args: &[&str]) -> (i32, String, String) {
    let bin = applet(&tmp.join("bin"), "log-counter");
    run(Command::new(bin)
        .args(args)
        .env("NPD_EXT_JOURNALCTL", tools.dir.join("journalctl")))
}

#[test]
fn log_counter_counts_matches_minus_reverts_and_exits_one_at_the_count() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    let journal = tmp.path().join("journal");
    std::fs::create_dir(&journal).expect("journal");
    tools.journalctl(&[
        entry("systemd", KUBELET_STARTED, 300),
        entry("systemd", KUBELET_STOPPING, 290),
        entry("systemd", KUBELET_STARTED, 280),
        entry("systemd", "Started Session 4 of user root.", 200),
        entry("systemd", KUBELET_STARTED, 100),
        // Outside the window journalctl was asked for: not counted.
        entry("systemd", KUBELET_STARTED, 3600),
    ]);
    let dir = format!("--log-path={}", journal.display());
    let base = [
        "--journald-source=systemd",
        &dir,
        "--lookback=20m",
        PATTERN,
        REVERT,
    ];

    let (code, out, err) = log_counter(tmp.path(), &tools, &[&base[..], &["--count=2"]].concat());
    assert_eq!(
        (code, out.as_str()),
        (1, "Found 2 matching logs, which meets the threshold of 2\n"),
        "{err}"
    );
    let (code, out, err) = log_counter(tmp.path(), &tools, &[&base[..], &["--count=3"]].concat());
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // Asked as upstream's reader asks: this identifier, this directory, a
    // window ending now.
    let calls = tools.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let call = &calls[0];
    for want in [
        "--output=json",
        &format!("--directory={}", journal.display()),
        "SYSLOG_IDENTIFIER=systemd",
        "--since=@",
        "--until=@",
    ] {
        assert!(call.contains(want), "{want} not in {call}");
    }
    let secs = |flag: &str| -> f64 {
        call.split(' ')
            .find_map(|a| a.strip_prefix(flag))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} in {call}"))
    };
    let window = secs("--until=@") - secs("--since=@");
    assert!(
        window <= 1200.0 + 1.0 && window > 0.0,
        "a 20m lookback (or less, after a recent boot): {window}"
    );
}

#[test]
fn log_counter_without_a_revert_pattern_and_with_an_empty_one_counts_the_same() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.journalctl(&[
        entry(
            "kernel",
            "unregister_netdevice: waiting for eth0 to become free. Usage count = 1",
            30,
        ),
        entry(
            "kernel",
            "unregister_netdevice: waiting for eth0 to become free. Usage count = 2",
            20,
        ),
        entry(
            "kernel",
            "unregister_netdevice: waiting for lo to become free. Usage count = 3",
            10,
        ),
    ]);
    let pattern =
        r"--pattern=unregister_netdevice: waiting for \w+ to become free. Usage count = \d+";
    for extra in [&[][..], &["--revert-pattern="][..]] {
        let args = [
            &[
                "--journald-source=kernel",
                "--lookback=20m",
                "--count=3",
                pattern,
            ][..],
            extra,
        ]
        .concat();
        let (code, out, err) = log_counter(tmp.path(), &tools, &args);
        assert_eq!(
            (code, out.as_str()),
            (1, "Found 3 matching logs, which meets the threshold of 3\n"),
            "{extra:?}: {err}"
        );
    }
}

#[test]
fn log_counter_that_cannot_count_exits_two_and_says_why() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.journalctl(&[]);
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--journald-source=systemd",
                "--log-path=/nonexistent/journal",
                "--count=1",
                "--pattern=x",
            ],
            "error watching journald: failed to stat the log path \"/nonexistent/journal\"",
        ),
        (
            &["--journald-source=", "--count=1", "--pattern=x"],
            "error watching journald: failed to filter journal log, empty source is not allowed",
        ),
        (
            &[
                "--journald-source=systemd",
                "--count=1",
                "--pattern=Started (kubelet",
            ],
            "invalid pattern \"Started (kubelet\"",
        ),
        (
            &[
                "--journald-source=systemd",
                "--lookback=20 minutes",
                "--count=1",
                "--pattern=x",
            ],
            "failed to get start time: failed to parse lookback duration \"20 minutes\"",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = log_counter(tmp.path(), &tools, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            out.starts_with(want),
            "{args:?}: {out:?} should start with {want:?}"
        );
        assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    }
    // A journalctl that is not there.
    let (code, out, _) = run(
        Command::new(applet(&tmp.path().join("bin2"), "log-counter"))
            .args([
                "--journald-source=systemd",
                "--count=1",
                "--pattern=x",
                "--lookback=1m",
            ])
            .env("NPD_EXT_JOURNALCTL", tmp.path().join("no-journalctl")),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("error watching journald: cannot run"),
        "{out}"
    );
}

fn health_checker(tools: &Tools, kubelet: &Health, args: &[&str]) -> (i32, String, String) {
    let bin = applet(&tools.dir.join("../hc-bin"), "health-checker");
    run(Command::new(bin)
        .args(args)
        .env("PATH", tools.path_var())
        .env("HOST_ADDRESS", "127.0.0.1")
        .env("KUBELET_PORT", kubelet.addr.port().to_string())
        .env("KUBEPROXY_PORT", kubelet.addr.port().to_string()))
}

fn kills(tools: &Tools) -> Vec<String> {
    tools
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("systemctl kill") || c.starts_with("pkill"))
        .collect()
}

#[test]
fn health_checker_asks_kubelet_and_kube_proxy_and_says_nothing_when_healthy() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.systemctl_started(600);
    let kubelet = Health::start(200);
    let (code, out, err) = health_checker(&tools, &kubelet, &["--component=kubelet"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = health_checker(&tools, &kubelet, &["--component=kube-proxy"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(kubelet.paths(), ["/healthz", "/livez"]);
    assert!(
        tools.calls().is_empty(),
        "no repair, no log check: {:?}",
        tools.calls()
    );

    kubelet.set(500);
    let (code, out, _) = health_checker(&tools, &kubelet, &["--component=kube-proxy"]);
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "kube-proxy:kube-proxy was found unhealthy; repair flag : true\n"
        )
    );
}

#[test]
fn health_checker_repairs_only_a_service_up_longer_than_the_cooldown() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    let kubelet = Health::start(500);
    let args = [
        "--component=kubelet",
        "--enable-repair=true",
        "--cooldown-time=1m",
        "--loopback-time=0",
        "--health-check-timeout=10s",
    ];
    // Restarted 20 s ago: within the cooldown, left alone.
    tools.systemctl_started(20);
    let (code, out, err) = health_checker(&tools, &kubelet, &args);
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "kubelet:kubelet was found unhealthy; repair flag : true\n"
        ),
        "{err}"
    );
    assert!(kills(&tools).is_empty(), "{:?}", tools.calls());
    // Up for 10 minutes: killed, so systemd restarts it.
    tools.systemctl_started(600);
    let (code, _, err) = health_checker(&tools, &kubelet, &args);
    assert_eq!(code, 1, "{err}");
    assert_eq!(kills(&tools), ["systemctl kill --kill-who=main kubelet"]);
    // Repair off: the same line with its flag, no kill.
    let (code, out, _) = health_checker(
        &tools,
        &kubelet,
        &["--component=kubelet", "--enable-repair=false"],
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "kubelet:kubelet was found unhealthy; repair flag : false\n"
        )
    );
    assert_eq!(kills(&tools).len(), 1);
}

#[test]
fn health_checker_follows_redirects_and_gives_up_at_the_timeout() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.systemctl_started(600);
    // A kubelet that accepts and never answers.
    let kubelet = Health::start(0);
    let (code, out, _) = health_checker(
        &tools,
        &kubelet,
        &[
            "--component=kubelet",
            "--enable-repair=false",
            "--health-check-timeout=1s",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "kubelet:kubelet was found unhealthy; repair flag : false\n"
        )
    );
    let redirect = Health::start(0);
    let (code, out, err) = run(
        Command::new(applet(&tmp.path().join("b"), "health-checker"))
            .arg("--component=kubelet")
            .env("PATH", tools.path_var())
            .env("KUBELET_PORT", format!("{}/redirect", redirect.addr.port())),
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(redirect.paths(), ["/redirect/healthz", "/ok"]);
}

#[test]
fn health_checker_runs_crictl_and_docker_as_upstream_does() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.systemctl_started(600);
    let kubelet = Health::start(200);
    let crictl = tools.add("crictl", "exit 1");
    let crictl_flag = format!("--crictl-path={}", crictl.display());
    let (code, out, err) = health_checker(
        &tools,
        &kubelet,
        &[
            "--component=cri",
            &crictl_flag,
            "--cri-timeout=10s",
            "--enable-repair=true",
            "--cooldown-time=2m",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "cri:containerd was found unhealthy; repair flag : true\n"
        ),
        "{err}"
    );
    let calls = tools.calls();
    assert!(
        calls.contains(&"crictl --timeout=10s --runtime-endpoint=unix:///var/run/containerd/containerd.sock pods --latest".to_owned()),
        "{calls:?}"
    );
    assert_eq!(kills(&tools), ["systemctl kill --kill-who=main containerd"]);

    tools.add("docker", "[ \"$1\" = ps ]");
    tools.add("pkill", "");
    let (code, out, err) = health_checker(
        &tools,
        &kubelet,
        &["--component=docker", "--enable-repair=true"],
    );
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    tools.add("docker", "exit 1");
    let (code, out, _) = health_checker(
        &tools,
        &kubelet,
        &["--component=docker", "--enable-repair=true"],
    );
    assert_eq!(
        (code, out.as_str()),
        (1, "docker:docker was found unhealthy; repair flag : true\n")
    );
    assert_eq!(
        &kills(&tools)[1..],
        [
            "pkill -SIGUSR1 dockerd",
            "systemctl kill --kill-who=main docker"
        ]
    );
}

#[test]
fn health_checker_counts_log_patterns_since_the_service_started() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    tools.systemctl_started(600);
    tools.add(
        "journalctl",
        "echo 'kubelet[1]: PLEG is not healthy: pleg was last seen active 3m ago'\n\
         echo 'kubelet[1]: pleg is NOT HEALTHY again'\n\
         echo 'kubelet[1]: all fine'",
    );
    let kubelet = Health::start(200);
    let args = |n: u32| format!("--log-pattern={n}:PLEG is not healthy");
    let (code, out, err) = health_checker(&tools, &kubelet, &["--component=kubelet", &args(3)]);
    assert_eq!(
        (code, out.as_str()),
        (0, ""),
        "two matches, case-insensitively: {err}"
    );
    let (code, out, _) = health_checker(&tools, &kubelet, &["--component=kubelet", &args(2)]);
    assert_eq!(
        (code, out.as_str()),
        (
            1,
            "kubelet:kubelet was found unhealthy; repair flag : true\n"
        )
    );
    let journal = tools
        .calls()
        .into_iter()
        .find(|c| c.starts_with("journalctl"))
        .expect("journalctl ran");
    assert!(
        journal.starts_with("journalctl --unit kubelet --since "),
        "{journal}"
    );
}

#[test]
fn health_checker_refuses_what_upstream_refuses() {
    let tmp = common::tempdir();
    let tools = Tools::new(tmp.path());
    let kubelet = Health::start(200);
    let (code, out, _) = health_checker(&tools, &kubelet, &["--component=etcd"]);
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "the component specified is not supported. Supported components are : <kubelet/docker/cri/kube-proxy>\n"
    );
    let (code, out, _) = health_checker(&tools, &kubelet, &["--component=cri", "--crictl-path="]);
    assert_eq!(
        (code, out.as_str()),
        (2, "the crictl-path cannot be empty for cri component\n")
    );
    // A log pattern needs a count above zero.
    let (code, out, _) = health_checker(
        &tools,
        &kubelet,
        &["--component=kubelet", "--log-pattern=0:x"],
    );
    assert_eq!(code, 2, "{out}");
}

/// A custom plugin monitor running `cfg` in `node`'s namespace with
/// `tools` on PATH: the detector's stderr until every one of `conditions`
/// has turned True.
fn detector_until_true(
    node: &Node,
    tools: &Tools,
    cfg: &Path,
    env: &[(&str, String)],
    conditions: &[&str],
) -> String {
    let mut cmd = node.command(common::bin::BIN);
    cmd.args(common::bin::STANDALONE)
        .arg(format!("--config.custom-plugin-monitor={}", cfg.display()))
        .env("PATH", tools.path_var())
        .env("NPD_EXT_JOURNALCTL", tools.dir.join("journalctl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("detector starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    for c in conditions {
        let needle = format!("condition={c} status=True");
        if !seen.contains(&needle) {
            seen.push_str(&read_until(&mut stderr, &needle));
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    seen
}

#[test]
fn applets_at_home_kubernetes_bin_raise_conditions_from_a_custom_plugin_monitor() {
    let tmp = common::tempdir();
    let node = Node::new(tmp.path());
    let tools = Tools::new(tmp.path());
    tools.systemctl_started(600);
    let started: Vec<_> = (0..5)
        .map(|i| entry("systemd", KUBELET_STARTED, 60 + i))
        .collect();
    tools.journalctl(&started);
    let kubelet = Health::start(500);
    let cfg = tmp.path().join("helpers.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "plugin": "custom",
            "pluginConfig": {"invoke_interval": "10s", "timeout": "1m", "max_output_length": 80, "concurrency": 1},
            "source": "helpers",
            "conditions": [
                {"type": "FrequentKubeletRestart", "reason": "NoFrequentKubeletRestart", "message": "fine"},
                {"type": "KubeletUnhealthy", "reason": "KubeletIsHealthy", "message": "fine"}
            ],
            "rules": [
                {"type": "permanent", "condition": "FrequentKubeletRestart", "reason": "FrequentKubeletRestart",
                 "path": "/home/kubernetes/bin/log-counter",
                 "args": ["--journald-source=systemd", "--log-path=/var/log/journal", "--lookback=20m", "--count=5", PATTERN]},
                {"type": "permanent", "condition": "KubeletUnhealthy", "reason": "KubeletUnhealthy",
                 "path": "/home/kubernetes/bin/health-checker",
                 "args": ["--component=kubelet", "--enable-repair=true", "--cooldown-time=1m"]}
            ]
        })
        .to_string(),
    )
    .expect("config");
    let env = [("KUBELET_PORT", kubelet.addr.port().to_string())];
    let seen = detector_until_true(
        &node,
        &tools,
        &cfg,
        &env,
        &["KubeletUnhealthy", "FrequentKubeletRestart"],
    );
    assert!(
        seen.contains("kubelet:kubelet was found unhealthy; repair flag : true"),
        "{seen}"
    );
    assert!(
        seen.contains("Found 5 matching logs, which meets the threshold of 5"),
        "{seen}"
    );
    assert!(kills(&tools).contains(&"systemctl kill --kill-who=main kubelet".to_owned()));
}

mod compat {
    //! NPD's own counter and health-checker configs, unchanged.
    use super::*;
    use common::compat::upstream;

    fn stock(name: &str) -> std::path::PathBuf {
        upstream(&format!("npd-configs/{name}"))
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn stock_counter_configs_raise_their_conditions() {
        let tmp = common::tempdir();
        let node = Node::new(tmp.path());
        let tools = Tools::new(tmp.path());
        let mut entries = Vec::new();
        for i in 0..5 {
            entries.push(entry("systemd", KUBELET_STARTED, 60 + i));
            entries.push(entry(
                "systemd",
                "Starting Docker Application Container Engine...",
                60 + i,
            ));
            entries.push(entry(
                "systemd",
                "Starting containerd container runtime...",
                60 + i,
            ));
            entries.push(entry(
                "kernel",
                "unregister_netdevice: waiting for eth0 to become free. Usage count = 1",
                60 + i,
            ));
        }
        for i in 0..10 {
            entries.push(entry(
                "dockerd",
                "returned error: readlink /var/lib/docker/overlay2/l/AB: invalid argument",
                60 + i,
            ));
        }
        // The journal as one journalctl sees it: filtered by identifier.
        let body: String = entries
            .iter()
            .map(|e| {
                format!(
                    "case \"$*\" in *SYSLOG_IDENTIFIER={id}*) echo '{e}';; esac\n",
                    id = e["SYSLOG_IDENTIFIER"].as_str().expect("id")
                )
            })
            .collect();
        tools.add("journalctl", &body);
        // kubelet's rule waits --delay=5m after boot; a node that young
        // counts nothing yet, as upstream's would.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .expect("uptime")
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("uptime seconds");
        let mut systemd = vec!["FrequentDockerRestart", "FrequentContainerdRestart"];
        if uptime > 400.0 {
            systemd.push("FrequentKubeletRestart");
        }
        for (cfg, conditions, line) in [
            (
                "systemd-monitor-counter.json",
                &systemd[..],
                "Found 5 matching logs, which meets the threshold of 5",
            ),
            (
                "docker-monitor-counter.json",
                &["CorruptDockerOverlay2"][..],
                "Found 10 matching logs, which meets the threshold of 10",
            ),
            (
                "kernel-monitor-counter.json",
                &["FrequentUnregisterNetDevice"][..],
                "Found 5 matching logs, which meets the threshold of 3",
            ),
        ] {
            let seen = detector_until_true(&node, &tools, &stock(cfg), &[], conditions);
            assert!(seen.contains(line), "{cfg} {conditions:?}: {seen}");
        }
        let calls = tools.calls();
        assert!(
            calls
                .iter()
                .all(|c| c.contains("--directory=/var/log/journal")),
            "{calls:?}"
        );
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn stock_health_checker_configs_raise_their_conditions_and_repair() {
        let tmp = common::tempdir();
        let node = Node::new(tmp.path());
        let tools = Tools::new(tmp.path());
        tools.systemctl_started(600);
        tools.add("docker", "exit 1");
        tools.add("pkill", "");
        // The stock containerd config uses crictl's default path.
        common::script(
            &node.usr_bin,
            "crictl",
            &format!("echo \"crictl $*\" >> '{}'\nexit 1", tools.calls.display()),
        );
        let kubelet = Health::start(500);
        let env = [("KUBELET_PORT", kubelet.addr.port().to_string())];
        for (cfg, condition, line) in [
            (
                "health-checker-kubelet.json",
                "KubeletUnhealthy",
                "kubelet:kubelet was found unhealthy; repair flag : true",
            ),
            (
                "health-checker-docker.json",
                "ContainerRuntimeUnhealthy",
                "docker:docker was found unhealthy; repair flag : true",
            ),
            (
                "health-checker-containerd.json",
                "ContainerRuntimeUnhealthy",
                "cri:containerd was found unhealthy; repair flag : true",
            ),
        ] {
            let seen = detector_until_true(&node, &tools, &stock(cfg), &env, &[condition]);
            assert!(seen.contains(line), "{cfg}: {seen}");
        }
        let kills = kills(&tools);
        for want in [
            "systemctl kill --kill-who=main kubelet",
            "pkill -SIGUSR1 dockerd",
            "systemctl kill --kill-who=main docker",
            "systemctl kill --kill-who=main containerd",
        ] {
            assert!(kills.contains(&want.to_owned()), "{want}: {kills:?}");
        }
        assert!(
            tools.calls().iter().any(|c| c.starts_with("crictl --timeout=10s --runtime-endpoint=unix:///var/run/containerd/containerd.sock pods --latest")),
            "{:?}",
            tools.calls()
        );
    }
}
