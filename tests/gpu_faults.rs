//! Every GPU condition's set, hold and clear path, through the sim backend:
//! a simulated driver polled through the watchdog, the real plugin on a
//! tempdir socket and a real detector.
#![allow(clippy::expect_used, clippy::panic)] // test code: a failed expectation is the test failing

mod common;

use std::time::{Duration, Instant};

use common::*;
use npd_ext::gpu::sim::{Fault, Scenario, Sim, SimOptions};
use npd_ext::gpu::{self, SUPPORTED_CONDITIONS};
use npd_ext::problem::ConditionStatus;
use npd_ext::rpc::pb;
use tokio_util::sync::CancellationToken;

const POLL: Duration = Duration::from_millis(50);
const DEADLINE: Duration = Duration::from_millis(300);

struct Rig {
    sim: Sim,
    rx: Conditions,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _plugin: RunningPlugin,
    shutdown: npd_ext::shutdown::Shutdown,
    _detector: npd_ext::detector::Detector,
    token: CancellationToken,
}

async fn rig() -> Rig {
    let dir = tempdir();
    let socket = sock(&dir);
    let plugin = start_plugin(&socket, true);
    let sim = Sim::new(GPUS, plugin.observations.clone());
    let token = CancellationToken::new();
    let options = SimOptions {
        poll_interval: POLL,
        call_timeout: DEADLINE,
    };
    tokio::spawn(sim.clone().run(
        Scenario::builtin("healthy").expect("builtin"),
        options,
        token.clone(),
    ));
    let (shutdown, detector) = start_detector(vec![monitor_config(&socket, &SUPPORTED_CONDITIONS)]);
    let mut rx = detector.conditions();
    wait_for(&mut rx, Duration::from_secs(10), "a healthy node", |c| {
        SUPPORTED_CONDITIONS
            .iter()
            .all(|t| has(c, t, ConditionStatus::False))
    })
    .await;
    Rig {
        sim,
        rx,
        socket,
        _dir: dir,
        _plugin: plugin,
        shutdown,
        _detector: detector,
        token,
    }
}

impl Rig {
    async fn expect(&mut self, t: &str, status: ConditionStatus) -> String {
        let c = wait_for(
            &mut self.rx,
            Duration::from_secs(10),
            &format!("{t} {status}"),
            |c| has(c, t, status),
        )
        .await;
        find(&c, t).map(|c| c.message.clone()).unwrap_or_default()
    }

    async fn stop(self) {
        self.token.cancel();
        self.shutdown.drain(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn a_hung_driver_call_is_unresponsive_within_the_deadline_while_check_health_answers() {
    let mut r = rig().await;
    let started = Instant::now();
    r.sim.inject(4, &Fault::Hang).await;
    let message = r.expect(gpu::GPU_UNRESPONSIVE, ConditionStatus::True).await;
    let took = started.elapsed();
    assert!(
        took < DEADLINE + POLL + Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(
        message.contains("gpu=4 ") && message.contains("did not return within 300ms"),
        "{message}"
    );
    // The plugin still answers while its driver thread is stuck.
    let channel = npd_ext::rpc::client::lazy_channel(&r.socket);
    let mut client = pb::external_monitor_client::ExternalMonitorClient::new(channel);
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        client.check_health(pb::HealthCheckRequest::default()),
    )
    .await
    .expect("CheckHealth answers in time")
    .expect("ok")
    .into_inner();
    let unresponsive = status
        .conditions
        .iter()
        .find(|c| c.r#type == gpu::GPU_UNRESPONSIVE)
        .expect("present");
    assert_eq!(unresponsive.status, pb::ConditionStatus::True as i32);
    let thermal = r
        .expect(gpu::GPU_THERMAL_THROTTLING, ConditionStatus::Unknown)
        .await;
    assert!(thermal.contains("readings stopped"), "{thermal}");
    r.sim.inject(4, &Fault::Clear).await;
    r.expect(gpu::GPU_UNRESPONSIVE, ConditionStatus::False)
        .await;
    r.expect(gpu::GPU_THERMAL_THROTTLING, ConditionStatus::False)
        .await;
    r.stop().await;
}

#[tokio::test]
async fn recovery_action_sets_and_clears_reboot_and_reset() {
    let mut r = rig().await;
    r.sim.inject(1, &Fault::RecoveryAction(2)).await;
    let m = r
        .expect(gpu::GPU_REBOOT_REQUIRED, ConditionStatus::True)
        .await;
    assert!(
        m.contains("driver recovery action: Node Reboot Required"),
        "{m}"
    );
    r.sim.inject(1, &Fault::RecoveryAction(4)).await;
    r.expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::True)
        .await;
    r.expect(gpu::GPU_REBOOT_REQUIRED, ConditionStatus::False)
        .await;
    r.sim.inject(1, &Fault::RecoveryAction(0)).await;
    r.expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::False)
        .await;
    r.stop().await;
}

#[tokio::test]
async fn row_remapping_pending_clears_after_reset_but_failure_holds() {
    let mut r = rig().await;
    r.sim.inject(2, &Fault::RowRemapPending).await;
    let m = r
        .expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::True)
        .await;
    assert!(m.contains("row remapping pending"), "{m}");
    r.sim.inject(2, &Fault::RowRemapFailure).await;
    r.expect(gpu::GPU_MEMORY_UNHEALTHY, ConditionStatus::True)
        .await;
    r.sim.inject(2, &Fault::Clear).await;
    r.expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::False)
        .await;
    // Several polls later the failure is still reported: no evidence clears it.
    let seen =
        r.rx.borrow()
            .iter()
            .find(|c| c.type_ == gpu::GPU_MEMORY_UNHEALTHY)
            .map(|c| c.last_update);
    wait_for(&mut r.rx, Duration::from_secs(5), "more polls", |c| {
        find(c, gpu::GPU_MEMORY_UNHEALTHY).is_some_and(|x| Some(x.last_update) > seen)
    })
    .await;
    r.expect(gpu::GPU_MEMORY_UNHEALTHY, ConditionStatus::True)
        .await;
    r.stop().await;
}

#[tokio::test]
async fn ecc_pcie_and_nvlink_faults_set_and_clear() {
    let mut r = rig().await;
    r.sim.inject(3, &Fault::EccErrors(2)).await;
    r.sim.inject(5, &Fault::PcieWidth(8)).await;
    r.sim.inject(6, &Fault::NvlinkDown(11)).await;
    let m = r
        .expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::True)
        .await;
    assert!(
        m.contains("gpu=3 ") && m.contains("2 uncorrectable ECC errors"),
        "{m}"
    );
    let m = r
        .expect(gpu::GPU_PCIE_LINK_DEGRADED, ConditionStatus::True)
        .await;
    assert!(m.contains("gpu=5 ") && m.contains("x8 of x16"), "{m}");
    let m = r.expect(gpu::GPU_NVLINK_DOWN, ConditionStatus::True).await;
    assert!(
        m.contains("gpu=6 ") && m.contains("NVLink 11 inactive"),
        "{m}"
    );
    for g in [3, 5, 6] {
        r.sim.inject(g, &Fault::Clear).await;
    }
    r.expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::False)
        .await;
    r.expect(gpu::GPU_PCIE_LINK_DEGRADED, ConditionStatus::False)
        .await;
    r.expect(gpu::GPU_NVLINK_DOWN, ConditionStatus::False).await;
    r.stop().await;
}

#[tokio::test]
async fn a_gpu_missing_from_the_driver_is_reported_and_clears_when_back() {
    let mut r = rig().await;
    r.sim.inject(7, &Fault::Missing).await;
    let m = r.expect(gpu::GPU_MISSING, ConditionStatus::True).await;
    assert!(m.contains("NVML enumerates 7 of 8 GPUs"), "{m}");
    r.sim.inject(7, &Fault::Clear).await;
    r.expect(gpu::GPU_MISSING, ConditionStatus::False).await;
    r.stop().await;
}

#[tokio::test]
async fn sustained_slowdown_throttles_and_stops() {
    let mut r = rig().await;
    r.sim.inject(0, &Fault::Slowdown(true)).await;
    let m = r
        .expect(gpu::GPU_THERMAL_THROTTLING, ConditionStatus::True)
        .await;
    assert!(m.contains("gpu=0 ") && m.contains("slowdown active"), "{m}");
    r.sim.inject(0, &Fault::Slowdown(false)).await;
    r.expect(gpu::GPU_THERMAL_THROTTLING, ConditionStatus::False)
        .await;
    r.stop().await;
}

#[tokio::test]
async fn an_xid_storm_reaches_the_detector_as_a_handful_of_events() {
    let mut r = rig().await;
    let mut events = r._detector.subscribe();
    r.sim
        .inject(
            2,
            &Fault::XidStorm {
                xid: 95,
                count: 10_000,
            },
        )
        .await;
    // A marker after the storm: once it arrives, every storm XID has been handled.
    r.sim.inject(0, &Fault::Xid(13)).await;
    r.expect(gpu::GPU_RESET_REQUIRED, ConditionStatus::True)
        .await;
    let mut xid_events = 0;
    loop {
        let p = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the marker arrives")
            .expect("detector alive");
        if let npd_ext::conditions::Published::Event { event, .. } = p {
            if event.reason == "XIDAppError" {
                break;
            }
            xid_events += usize::from(event.reason == "XIDError");
        }
    }
    assert_eq!(
        xid_events, 1,
        "10,000 identical XIDs within the window are one event"
    );
    r.stop().await;
}

#[tokio::test]
async fn fabric_registration_and_inforom_faults() {
    let mut r = rig().await;
    r.sim.inject(1, &Fault::FabricNotReady).await;
    r.sim.inject(2, &Fault::InfoRomCorrupt).await;
    let m = r
        .expect(gpu::GPU_FABRIC_NOT_READY, ConditionStatus::True)
        .await;
    assert!(
        m.contains("gpu=1 ") && m.contains("registration in progress"),
        "{m}"
    );
    let m = r
        .expect(gpu::GPU_HARDWARE_FAULT, ConditionStatus::True)
        .await;
    assert!(m.contains("gpu=2 ") && m.contains("InfoROM"), "{m}");
    r.sim.inject(1, &Fault::Clear).await;
    r.sim.inject(2, &Fault::Clear).await;
    r.expect(gpu::GPU_FABRIC_NOT_READY, ConditionStatus::False)
        .await;
    r.expect(gpu::GPU_HARDWARE_FAULT, ConditionStatus::True)
        .await;
    r.stop().await;
}

#[tokio::test]
async fn growing_pcie_replay_and_nvlink_error_counters() {
    let mut r = rig().await;
    r.sim.inject(4, &Fault::PcieReplays(500)).await;
    r.sim.inject(5, &Fault::NvlinkErrors(3)).await;
    let m = r
        .expect(gpu::GPU_PCIE_LINK_DEGRADED, ConditionStatus::True)
        .await;
    assert!(
        m.contains("gpu=4 ") && m.contains("PCIe replays above 100"),
        "{m}"
    );
    let m = r
        .expect(gpu::GPU_NVLINK_DEGRADED, ConditionStatus::True)
        .await;
    assert!(
        m.contains("gpu=5 ") && m.contains("NVLink replay/recovery/CRC errors grew"),
        "{m}"
    );
    r.sim.inject(4, &Fault::Clear).await;
    r.sim.inject(5, &Fault::Clear).await;
    r.expect(gpu::GPU_PCIE_LINK_DEGRADED, ConditionStatus::False)
        .await;
    r.expect(gpu::GPU_NVLINK_DEGRADED, ConditionStatus::False)
        .await;
    r.stop().await;
}
