//! Compatibility with upstream Kubernetes Node Problem Detector: its stock
//! configs validate, load and behave as ours do, read from the directory
//! that `NPD_EXT_COMPAT_DIR` names (holding upstream's `npd-configs/`). They
//! are not ours and the repository has no copy, so every test here is
//! ignored unless asked for, and fails without the variable:
//! `NPD_EXT_COMPAT_DIR=$PWD/../shared cargo test --locked -- --ignored compat`.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

mod compat {
    use std::path::{Path, PathBuf};

    use super::common;
    use common::bin::linux_configs;
    use common::compat::upstream;

    /// Upstream NPD's shipped Linux configs (file name, path): at least 19.
    fn upstream_linux_configs() -> Vec<(String, PathBuf)> {
        linux_configs(&upstream("npd-configs"), 19)
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn validate_config_accepts_the_go_poc_config_and_explains_its_keys() {
        common::bin::explains_poc_keys(
            &upstream("npd-configs/npd-ext-poc/gpu-monitor-config.json"),
            "16:18",
        );
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn every_upstream_linux_config_validates() {
        for (name, path) in upstream_linux_configs() {
            common::bin::validates(&name, &path);
        }
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn windows_configs_are_named_as_such() {
        common::bin::refused_as_windows_only(&upstream(
            "npd-configs/windows-defender-monitor.json",
        ));
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn every_upstream_linux_config_loads_in_the_detector() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kmsg = tmp.path().join("kmsg");
        std::fs::write(&kmsg, "").expect("kmsg file");
        for (name, path) in upstream_linux_configs() {
            common::bin::loads_in_the_detector(&name, &path, &kmsg);
        }
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn journald_monitor_reads_a_journalctl_child() {
        // Upstream's docker monitor, pointed at a journal directory of ours.
        let path = upstream("npd-configs/docker-monitor.json");
        let cfg =
            serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        common::bin::journald_reads_a_journalctl_child(
            cfg,
            "dockerd",
            [
                "level=info msg=started",
                "returned error: readlink /var/lib/docker/overlay2/l/ABC: invalid argument",
            ],
            "CorruptDockerOverlay2",
        );
    }

    #[test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    fn validate_config_finds_kernel_deadlock_in_two_upstream_configs() {
        common::bin::kernel_deadlock_declared_twice(
            &upstream("npd-configs/kernel-monitor.json"),
            &upstream("npd-configs/kernel-monitor-filelog.json"),
        );
    }

    #[tokio::test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    async fn stock_kernel_monitor_on_kmsg_records() {
        let path = upstream("npd-configs/kernel-monitor.json");
        // Upstream's DockerHung is its permanent KernelDeadlock.
        common::syslog::kernel_monitor_on_kmsg_records(
            |kmsg: &Path| common::syslog::config_file(&path, kmsg),
            "docker",
            "DockerHung",
        )
        .await;
    }

    #[tokio::test]
    #[ignore = "needs NPD_EXT_COMPAT_DIR (upstream NPD configs / H200 readings)"]
    async fn stock_filelog_follows_rotation_and_truncation() {
        common::syslog::filelog_follows_rotation_and_truncation(&upstream(
            "npd-configs/kernel-monitor-filelog.json",
        ))
        .await;
    }
}
