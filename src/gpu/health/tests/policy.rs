//! Tests of the operator's XID policy over the catalog: promotions,
//! demotions, repeats that raise a condition (in place of the compiled-in
//! rule), entries by driver version, and the policy named in every message.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::xid_policy;

const POLICY: &str = "/etc/npd-ext/xid-policy.json";

fn policy(text: &str) -> Arc<XidPolicy> {
    let c = xid_policy::check(Path::new(POLICY), text);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    Arc::new(c.config.expect("a valid policy"))
}

fn model_with(text: &str) -> HealthModel {
    model().with_xid_policy(Some(policy(text)))
}

fn nvml(m: &mut HealthModel, gpu: u32, xid: u32, at: SystemTime) {
    m.apply(&Observation::Xid { gpu, xid, at });
}

fn kernel(m: &mut HealthModel, gpu: usize, xid: u32, detail: &str, at: SystemTime) {
    let pci = PciAddr::parse(&sim::identities(8)[gpu].pci_bus_id).expect("pci");
    m.apply(&Observation::KernelXid {
        pci,
        xid,
        detail: detail.into(),
        at,
        replay: false,
    });
}

fn driver(m: &mut HealthModel, version: &str, at: SystemTime) {
    m.apply(&Observation::DriverReady {
        gpus: sim::identities(8),
        version: version.into(),
        at,
    });
}

fn condition(m: &HealthModel, t: &str) -> Condition {
    status_of(&m.conditions(), t).clone()
}

/// Other condition types than `except` are all False.
fn only(m: &HealthModel, except: &[&str]) {
    for c in m.conditions() {
        if !except.contains(&c.type_.as_str()) {
            assert_eq!(c.status, ConditionStatus::False, "{c:?}");
        }
    }
}

/// A real XID 145 line (NVSentinel's tests): RLW_REMAP in the V1 layout
/// (IntrInfo bits 9:0), where status 0x40 needs a reset.
const FATAL_145: &str = "RLW_REMAP Fatal XC1 i0 Link 10 (0x00000082 0x00000040 0x00000000 0x00000000 0x00000000 0x00000000)";
/// The same unit and status in the V2 layout (bits 6:0), printed Nonfatal.
const REMAP_V2_145: &str = "RLW_REMAP Nonfatal XC1 i0 Link 10 (0x00000004 0x00000040 0x00000000 0x00000000 0x00000000 0x00000000)";

#[test]
fn a_promoted_xid_raises_its_class_on_that_gpu_only_and_names_the_policy() {
    let mut m = model_with(r#"{"xids": [{"xid": 94, "raise": "reset"}]}"#);
    let now = SystemTime::now();
    // Without the policy, 94 is an application's contained error: an event.
    let mut plain = model();
    nvml(&mut plain, 5, 94, now);
    only(&plain, &[]);

    nvml(&mut m, 5, 94, now);
    let c = condition(&m, GPU_RESET_REQUIRED);
    assert_eq!(c.status, ConditionStatus::True);
    assert_eq!(c.reason, "Xid94");
    let id = &sim::identities(8)[5];
    assert!(
        c.message
            .contains(&format!("gpu=5 uuid={} pci={}", id.uuid, id.pci_bus_id))
            && c.message.contains(
                "raised by the XID policy /etc/npd-ext/xid-policy.json (xids[0]: XID 94 → reset)"
            )
            && c.message.contains("action: drain the GPU and reset it"),
        "{}",
        c.message
    );
    assert_eq!(
        c.message.matches("gpu=").count(),
        1,
        "one GPU: {}",
        c.message
    );
    only(&m, &[GPU_RESET_REQUIRED]);
    // The event is a warning now, and says who decided.
    let (_, e) = m.snapshot().events.last().cloned().expect("an event");
    assert_eq!(
        (e.reason.as_str(), e.severity),
        (REASON_XID_ERROR, Severity::Warn)
    );
    assert!(e.message.contains("XID policy"), "{}", e.message);
    // A reset clears it as it clears the catalog's reset-class XIDs.
    m.apply(&Observation::Reset { gpu: 5, at: now });
    only(&m, &[]);
}

#[test]
fn a_demoted_xid_is_an_event_naming_the_policy_and_raises_nothing() {
    let mut m = model_with(r#"{"xids": [{"xid": 48, "raise": "event"}]}"#);
    let now = SystemTime::now();
    for gpu in 0..8 {
        nvml(&mut m, gpu, 48, now);
    }
    only(&m, &[]);
    let events: Vec<Event> = m.snapshot().events.into_iter().map(|(_, e)| e).collect();
    assert_eq!(events.len(), 8, "{events:?}");
    assert!(
        events.iter().all(|e| e.message.contains(
            "demoted to an event by the XID policy /etc/npd-ext/xid-policy.json (xids[0]: XID 48 → event)"
        )),
        "{events:?}"
    );
}

#[test]
fn a_repeat_entry_raises_a_condition_at_its_count_in_place_of_the_compiled_rule() {
    let mut m = model_with(
        r#"{"xids": [{"xid": 31, "repeat": {"count": 3, "window": "1h", "burstGap": "0s"}, "raise": "reset"}]}"#,
    );
    let t0 = SystemTime::now();
    let min = Duration::from_secs(60);
    nvml(&mut m, 2, 31, t0);
    nvml(&mut m, 2, 31, t0 + 10 * min);
    // Other GPUs' reports are their own.
    for gpu in [0, 1, 3, 4, 5, 6, 7] {
        nvml(&mut m, gpu, 31, t0 + 20 * min);
    }
    only(&m, &[]);
    assert!(
        m.snapshot()
            .events
            .iter()
            .all(|(_, e)| e.reason != REASON_XID_REPEATED),
        "the compiled-in rule (2 within 24 h) is replaced by the policy's"
    );
    nvml(&mut m, 2, 31, t0 + 30 * min);
    let c = condition(&m, GPU_RESET_REQUIRED);
    assert_eq!(c.status, ConditionStatus::True, "{c:?}");
    assert_eq!(c.reason, "Xid31Repeated");
    let id = &sim::identities(8)[2];
    assert!(
        c.message.contains(&format!("gpu=2 uuid={}", id.uuid))
            && c.message.contains("XID 31 ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT in 3 bursts within 1h0m0s")
            && c.message.contains("raised by the XID policy /etc/npd-ext/xid-policy.json (xids[0]: XID 31 ×3 within 1h0m0s → reset)"),
        "{}",
        c.message
    );
    assert_eq!(c.message.matches("gpu=").count(), 1, "{}", c.message);
    let repeated: Vec<Event> = m
        .snapshot()
        .events
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.reason == REASON_XID_REPEATED)
        .collect();
    assert_eq!(repeated.len(), 1, "{repeated:?}");
    assert!(
        repeated[0].message.contains("XID policy"),
        "{}",
        repeated[0].message
    );
}

#[test]
fn repeats_age_out_of_the_window_and_a_burst_counts_once() {
    let mut m = model_with(
        r#"{"xids": [{"xid": 13, "repeat": {"count": 2, "window": "1h"}, "raise": "hardware"}]}"#,
    );
    let t0 = SystemTime::now();
    // A storm is one burst (default gap 3 minutes).
    for s in 0..40 {
        nvml(&mut m, 6, 13, t0 + Duration::from_secs(s));
    }
    only(&m, &[]);
    // The next burst is over an hour later: the first aged out.
    nvml(&mut m, 6, 13, t0 + Duration::from_secs(2 * 3600));
    only(&m, &[]);
    nvml(&mut m, 6, 13, t0 + Duration::from_secs(2 * 3600 + 600));
    let c = condition(&m, GPU_HARDWARE_FAULT);
    assert_eq!(c.status, ConditionStatus::True, "{c:?}");
    assert!(
        c.message.contains("gpu=6 ") && c.message.contains("in 2 bursts"),
        "{}",
        c.message
    );
    // A reset does not clear a hardware fault.
    m.apply(&Observation::Reset { gpu: 6, at: t0 });
    assert_eq!(
        condition(&m, GPU_HARDWARE_FAULT).status,
        ConditionStatus::True
    );
}

#[test]
fn nvlink5_xids_are_decoded_by_the_driver_version_nvml_reports() {
    let now = SystemTime::now();
    // A V2 line under a V2 driver: RLW_REMAP status 0x40, a reset, though
    // the kernel printed Nonfatal.
    let mut m = model();
    driver(&mut m, "575.57.08", now);
    kernel(&mut m, 4, 145, REMAP_V2_145, now);
    let c = condition(&m, GPU_NVLINK_DEGRADED);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(
        c.message.contains(
            "NVLink-5 decode V2 (driver 575.57.08 ≥ R575): RLW_REMAP ErrorStatus 0x00000040 → RESET_GPU"
        ) && c.message.contains(&format!("gpu=4 uuid={}", sim::identities(8)[4].uuid)),
        "{}",
        c.message
    );
    assert_eq!(
        condition(&m, GPU_RESET_REQUIRED).status,
        ConditionStatus::True
    );
    only(&m, &[GPU_NVLINK_DEGRADED, GPU_RESET_REQUIRED]);

    // The same line under a V1 driver: no rule, the kernel's word stands.
    let mut m = model();
    driver(&mut m, "570.124.06", now);
    kernel(&mut m, 4, 145, REMAP_V2_145, now);
    only(&m, &[]);

    // A V1 line under a V1 driver decodes to the reset.
    let mut m = model();
    driver(&mut m, "570.124.06", now);
    kernel(&mut m, 4, 145, FATAL_145, now);
    let c = condition(&m, GPU_RESET_REQUIRED);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(
        c.message
            .contains("NVLink-5 decode V1 (driver 570.124.06 < R575): RLW_REMAP"),
        "{}",
        c.message
    );
}

#[test]
fn a_policy_entry_by_driver_applies_only_to_the_drivers_it_names() {
    let text = r#"{"xids": [
        {"xid": 145, "driver": ">=575", "raise": "hardware"},
        {"xid": 145, "driver": "<575", "raise": "event"}
    ]}"#;
    let now = SystemTime::now();
    let mut m = model_with(text);
    driver(&mut m, "580.82.07", now);
    kernel(&mut m, 1, 145, FATAL_145, now);
    let c = condition(&m, GPU_HARDWARE_FAULT);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(
        c.message
            .contains("(xids[0]: XID 145 on driver >=575 → hardware)"),
        "{}",
        c.message
    );
    only(&m, &[GPU_HARDWARE_FAULT]);

    let mut m = model_with(text);
    driver(&mut m, "570.124.06", now);
    kernel(&mut m, 1, 145, FATAL_145, now);
    only(&m, &[]);

    // The driver has not said its version: no ranged entry applies, and
    // the compiled-in decoding says it does not know the generation.
    let mut m = model_with(text);
    kernel(&mut m, 1, 145, FATAL_145, now);
    let c = condition(&m, GPU_NVLINK_DEGRADED);
    assert_eq!(c.status, ConditionStatus::True);
    assert!(
        c.message.contains("the driver version is not known yet")
            && !c.message.contains("XID policy"),
        "{}",
        c.message
    );
}

#[test]
fn xids_are_counted_per_gpu_once_when_both_sources_report_them() {
    let mut m = model();
    let now = SystemTime::now();
    nvml(&mut m, 3, 13, now);
    kernel(
        &mut m,
        3,
        13,
        "pid=7, name=train, Graphics SM Warp Exception",
        now,
    );
    nvml(&mut m, 3, 43, now);
    let counts = m.per_gpu();
    let g3 = counts.iter().find(|g| g.id.index == 3).expect("gpu 3");
    assert_eq!(g3.xids, vec![(13, 1), (43, 1)]);
    assert_eq!(counts.len(), 8);
}
