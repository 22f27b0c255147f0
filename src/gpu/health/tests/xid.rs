//! Tests of XIDs (NVML and kernel log), the recovery action, NVSwitch SXids and
//! lost GPUs.

use super::*;

#[test]
fn xid79_is_lost_and_names_the_gpu_until_reset() {
    let mut m = model();
    let now = SystemTime::now();
    assert!(m.apply(&Observation::Xid {
        gpu: 3,
        xid: 79,
        at: now
    }));
    let c = m.conditions();
    let lost = status_of(&c, GPU_LOST);
    assert_eq!(lost.status, ConditionStatus::True);
    assert_eq!(lost.reason, "GPUFellOffTheBus");
    let id = &sim::identities(8)[3];
    assert!(
        lost.message.contains(&id.uuid) && lost.message.contains(&id.pci_bus_id),
        "{}",
        lost.message
    );
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).status,
        ConditionStatus::False
    );
    let events = m.snapshot().events;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].1.reason.as_str(), events[0].1.severity),
        (REASON_XID_ERROR, Severity::Warn)
    );
    assert!(m.apply(&Observation::Reset { gpu: 3, at: now }));
    assert_eq!(
        status_of(&m.conditions(), GPU_LOST).status,
        ConditionStatus::False
    );
}

#[test]
fn reset_class_xid_sets_reset_required_and_app_xid_only_an_event() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::Xid {
        gpu: 1,
        xid: 48,
        at: now,
    });
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).status,
        ConditionStatus::True
    );
    assert_eq!(status_of(&c, GPU_RESET_REQUIRED).reason, "Xid48");
    let mut m = model();
    assert!(
        m.apply(&Observation::Xid {
            gpu: 1,
            xid: 13,
            at: now
        }),
        "an event is a change"
    );
    let events = m.snapshot().events;
    assert_eq!(
        (events[0].1.reason.as_str(), events[0].1.severity),
        (REASON_XID_APP_ERROR, Severity::Info)
    );
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
}

#[test]
fn kernel_xids_find_their_gpu_by_pci_address_or_are_named_by_it() {
    let mut m = model();
    let now = SystemTime::now();
    let pci = |s: &str| PciAddr::parse(s).expect("address");
    // GPU 3 of the sim is 00000000:61:00.0; the kernel writes 0000:61:00.
    m.apply(&Observation::KernelXid {
        pci: pci("0000:61:00"),
        xid: 79,
        detail: "pid=7, name=python3, GPU has fallen off the bus.".into(),
        at: now,
        replay: false,
    });
    let lost = status_of(&m.conditions(), GPU_LOST).clone();
    assert!(lost.message.starts_with("gpu=3 "), "{}", lost.message);
    let events = m.snapshot().events;
    assert!(
        events[0].1.message.contains("kernel: pid=7, name=python3"),
        "{}",
        events[0].1.message
    );

    // An address no GPU has: still reported, named by the address.
    m.apply(&Observation::KernelXid {
        pci: pci("0000:3b:00"),
        xid: 48,
        detail: String::new(),
        at: now,
        replay: false,
    });
    let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
    assert_eq!(reset.status, ConditionStatus::True);
    assert!(
        reset
            .message
            .starts_with("gpu=unknown pci=0000:3b:00 (not enumerated by the driver)"),
        "{}",
        reset.message
    );
    assert_eq!(
        m.enumerated(),
        8,
        "the stranger is not counted as a GPU the driver sees"
    );
    let driver = status_of(&m.conditions(), GPU_DRIVER_NOT_READY).clone();
    assert!(
        driver.message.ends_with("8 GPUs visible"),
        "{}",
        driver.message
    );
}

#[test]
fn catalog_classes_raise_their_conditions() {
    let now = SystemTime::now();
    for (xid, types) in [
        (79, &[GPU_LOST, GPU_REBOOT_REQUIRED][..]),
        (64, &[GPU_MEMORY_UNHEALTHY, GPU_RESET_REQUIRED][..]),
        (54, &[GPU_HARDWARE_FAULT][..]),
        (136, &[GPU_NVLINK_DOWN, GPU_RESET_REQUIRED][..]),
        (74, &[GPU_NVLINK_DEGRADED][..]),
        (151, &[GPU_REBOOT_REQUIRED][..]),
        (13, &[][..]),
    ] {
        let mut m = model();
        m.apply(&Observation::Xid {
            gpu: 6,
            xid,
            at: now,
        });
        let c = m.conditions();
        for cond in &c {
            let expected = types.contains(&cond.type_.as_str());
            assert_eq!(
                cond.status == ConditionStatus::True,
                expected,
                "XID {xid}: {cond:?}"
            );
            if expected {
                assert!(
                    cond.message.starts_with("gpu=6 ")
                        && cond.message.contains(&format!("XID {xid} ")),
                    "{}",
                    cond.message
                );
                assert!(cond.message.contains("action: "), "{}", cond.message);
            }
        }
    }
}

#[test]
fn a_reset_clears_reset_class_faults_but_not_memory_or_hardware() {
    let mut m = model();
    let now = SystemTime::now();
    for xid in [64, 54, 74] {
        m.apply(&Observation::Xid {
            gpu: 1,
            xid,
            at: now,
        });
    }
    m.apply(&Observation::Reset { gpu: 1, at: now });
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).status,
        ConditionStatus::False
    );
    assert_eq!(
        status_of(&c, GPU_NVLINK_DEGRADED).status,
        ConditionStatus::False
    );
    assert_eq!(
        status_of(&c, GPU_MEMORY_UNHEALTHY).status,
        ConditionStatus::True,
        "a board property"
    );
    assert_eq!(
        status_of(&c, GPU_HARDWARE_FAULT).status,
        ConditionStatus::True,
        "a board property"
    );
}

#[test]
fn the_recovery_action_overrides_the_catalog() {
    let mut m = model();
    let now = SystemTime::now();
    let pci = PciAddr::parse("0000:52:00").expect("GPU 2 of the sim");
    let xid154 = |to: &str| Observation::KernelXid {
        pci,
        xid: 154,
        detail: format!("GPU recovery action changed from 0x0 (None) to {to}"),
        at: now,
        replay: false,
    };
    // XID 109 alone is only an event; the driver asking for a reset decides.
    m.apply(&Observation::Xid {
        gpu: 2,
        xid: 109,
        at: now,
    });
    assert_eq!(
        status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
        ConditionStatus::False
    );
    m.apply(&xid154("0x1 (GPU Reset Required)"));
    let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
    assert_eq!(
        (reset.status, reset.reason.as_str()),
        (ConditionStatus::True, "RecoveryAction")
    );
    assert!(
        reset
            .message
            .contains("driver recovery action: GPU Reset Required"),
        "{}",
        reset.message
    );
    // The driver changes its mind: node reboot.
    m.apply(&xid154("0x2 (Node Reboot Required)"));
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).status,
        ConditionStatus::False
    );
    assert_eq!(
        status_of(&c, GPU_REBOOT_REQUIRED).status,
        ConditionStatus::True
    );
    // NVML's field says the same thing the same way.
    m.apply(&Observation::RecoveryAction {
        gpu: 2,
        action: 0,
        at: now,
    });
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
    let reasons: Vec<String> = m
        .snapshot()
        .events
        .iter()
        .map(|(_, e)| e.reason.clone())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == REASON_RECOVERY_ACTION)
            .count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        parse_recovery_change("… from 0x0 (None) to 0x4 (Drain and Reset)"),
        Some(4)
    );
    assert_eq!(parse_recovery_change("garbage"), None);
}

#[test]
fn the_same_xid_from_nvml_and_the_kernel_log_is_one_report() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::Xid {
        gpu: 3,
        xid: 79,
        at: now,
    });
    m.apply(&Observation::KernelXid {
        pci: PciAddr::parse("0000:61:00").expect("pci"),
        xid: 79,
        detail: "GPU has fallen off the bus.".into(),
        at: now + Duration::from_secs(2),
        replay: false,
    });
    assert_eq!(m.snapshot().events.len(), 1);
    // Later, it is a new occurrence (aggregated as a repeat, not dropped).
    m.apply(&Observation::Xid {
        gpu: 3,
        xid: 79,
        at: now + Duration::from_secs(30),
    });
    assert!(m.flush(now + Duration::from_secs(200)));
    assert!(
        m.snapshot().events[1]
            .1
            .message
            .contains("repeated 1 more times")
    );
}

#[test]
fn a_fatal_nvswitch_error_takes_the_fabric_down() {
    let mut m = model();
    let now = SystemTime::now();
    let sxid = |fatal| Observation::SXid {
        pci: PciAddr::parse("0000:05:00").expect("pci"),
        sxid: 24007,
        fatal,
        detail: "Link 33 sourcetrack timeout error".into(),
        at: now,
        replay: false,
    };
    m.apply(&sxid(false));
    assert_eq!(
        status_of(&m.conditions(), GPU_FABRIC_NOT_READY).status,
        ConditionStatus::False
    );
    assert_eq!(m.snapshot().events[0].1.reason, "SXIDError");
    m.apply(&sxid(true));
    let f = status_of(&m.conditions(), GPU_FABRIC_NOT_READY).clone();
    assert_eq!(
        (f.status, f.reason.as_str()),
        (ConditionStatus::True, "SXidFatal")
    );
    assert!(
        f.message
            .starts_with("nvswitch pci=0000:05:00: SXid 24007 (fatal)"),
        "{}",
        f.message
    );
}

#[test]
fn nvlink5_xids_follow_the_severity_in_their_text() {
    let now = SystemTime::now();
    let pci = PciAddr::parse("0000:52:00").expect("GPU 2 of the sim");
    let line = |detail: &str| Observation::KernelXid {
        pci,
        xid: 145,
        detail: detail.into(),
        at: now,
        replay: false,
    };
    let mut m = model();
    m.apply(&line(
        "RLW_REMAP Nonfatal XC0 i0 Link 5 (0x00000004 0x00000000 0x0 0x0 0x0)",
    ));
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
    let mut m = model();
    m.apply(&line(
        "RLW_SRC_TRACK Fatal XC0 i0 Link 5 (0x00000002 0x00000000 0x0 0x0 0x0)",
    ));
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_NVLINK_DEGRADED).status,
        ConditionStatus::True
    );
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).status,
        ConditionStatus::True
    );
}

#[test]
fn replayed_kernel_xids_rebuild_state_without_events() {
    let mut m = model();
    m.apply(&Observation::KernelXid {
        pci: PciAddr::parse("0000:61:00").expect("pci"),
        xid: 48,
        detail: String::new(),
        at: SystemTime::now(),
        replay: true,
    });
    assert_eq!(
        status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
        ConditionStatus::True
    );
    assert!(m.snapshot().events.is_empty());
}
