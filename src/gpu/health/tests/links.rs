//! Tests of PCIe, NVLink and fabric readings (with the volatile ECC and InfoROM
//! readings they share a test with).

use super::*;

#[test]
fn volatile_ecc_pcie_width_and_nvlink_readings() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::VolatileUncorrectableEcc {
        gpu: 4,
        count: 2,
        at: now,
    });
    let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
    assert!(
        reset
            .message
            .contains("2 uncorrectable ECC errors since the driver loaded"),
        "{}",
        reset.message
    );

    m.apply(&Observation::PcieLink {
        gpu: 4,
        width: 8,
        max_width: 16,
        at: now,
    });
    let pcie = status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).clone();
    assert_eq!(pcie.status, ConditionStatus::True);
    assert!(pcie.message.contains("x8 of x16"), "{}", pcie.message);
    m.apply(&Observation::Reset { gpu: 4, at: now });
    assert_eq!(
        status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status,
        ConditionStatus::True,
        "a reset does not retrain a link"
    );

    let links = |m: &mut HealthModel, active: &[u32], inactive: &[u32]| {
        m.apply(&Observation::NvLinks {
            gpu: 4,
            active: active.to_vec(),
            inactive: inactive.to_vec(),
            at: now,
        })
    };
    links(&mut m, &[0, 1, 2, 3], &[]);
    assert_eq!(
        status_of(&m.conditions(), GPU_NVLINK_DOWN).status,
        ConditionStatus::False
    );
    links(&mut m, &[0, 1, 3], &[2]);
    let down = status_of(&m.conditions(), GPU_NVLINK_DOWN).clone();
    assert!(
        down.message.contains("NVLink 2 inactive"),
        "{}",
        down.message
    );
    // Not supported here (empty) is not "down".
    let mut single = model();
    single.apply(&Observation::NvLinks {
        gpu: 0,
        active: vec![],
        inactive: vec![],
        at: now,
    });
    assert_eq!(
        status_of(&single.conditions(), GPU_NVLINK_DOWN).status,
        ConditionStatus::False
    );
}

#[test]
fn fabric_registration_and_inforom() {
    let mut m = model();
    let now = SystemTime::now();
    let fabric = |m: &mut HealthModel, state, status| {
        m.apply(&Observation::Fabric {
            gpu: 0,
            state,
            status,
            at: now,
        })
    };
    let status = |m: &HealthModel| status_of(&m.conditions(), GPU_FABRIC_NOT_READY).status;
    fabric(&mut m, 0, 0);
    assert_eq!(
        status(&m),
        ConditionStatus::False,
        "no fabric is not a problem"
    );
    fabric(&mut m, 2, 0);
    fabric(&mut m, 2, 0);
    assert_eq!(
        status(&m),
        ConditionStatus::False,
        "registration takes a moment after boot"
    );
    fabric(&mut m, 2, 0);
    assert_eq!(status(&m), ConditionStatus::True);
    for _ in 0..3 {
        fabric(&mut m, 3, 0);
    }
    assert_eq!(status(&m), ConditionStatus::False);
    fabric(&mut m, 3, 17);
    assert!(
        status_of(&m.conditions(), GPU_FABRIC_NOT_READY)
            .message
            .contains("status 17")
    );

    m.apply(&Observation::InfoRom {
        gpu: 1,
        valid: false,
        at: now,
    });
    m.apply(&Observation::Reset { gpu: 1, at: now });
    let hw = status_of(&m.conditions(), GPU_HARDWARE_FAULT).clone();
    assert_eq!(
        (hw.status, hw.reason.as_str()),
        (ConditionStatus::True, "InfoROMCorrupted")
    );
}

#[test]
fn counters_raise_conditions_only_when_growth_is_sustained() {
    let mut m = model();
    let now = SystemTime::now();
    let pcie = |m: &mut HealthModel, count| {
        m.apply(&Observation::PcieReplays {
            gpu: 3,
            count,
            at: now,
        })
    };
    let status = |m: &HealthModel, t| status_of(&m.conditions(), t).status;
    pcie(&mut m, 1_000_000); // the first reading is a baseline, not a rate
    assert!(m.snapshot().events.is_empty());
    pcie(&mut m, 1_000_500);
    pcie(&mut m, 1_001_000);
    assert_eq!(
        status(&m, GPU_PCIE_LINK_DEGRADED),
        ConditionStatus::False,
        "not yet sustained"
    );
    assert_eq!(
        m.snapshot().events.len(),
        1,
        "one event, the repeat aggregated"
    );
    pcie(&mut m, 1_001_500);
    assert_eq!(status(&m, GPU_PCIE_LINK_DEGRADED), ConditionStatus::True);
    for c in [1_001_510, 1_001_520, 1_001_530] {
        pcie(&mut m, c);
    }
    assert_eq!(status(&m, GPU_PCIE_LINK_DEGRADED), ConditionStatus::False);

    let nv = |m: &mut HealthModel, count| {
        m.apply(&Observation::NvlinkErrors {
            gpu: 3,
            count,
            at: now,
        })
    };
    for c in [0, 5, 9, 20] {
        nv(&mut m, c);
    }
    let d = status_of(&m.conditions(), GPU_NVLINK_DEGRADED).clone();
    assert_eq!(d.status, ConditionStatus::True);
    assert!(d.message.contains("grew for 3 readings"), "{}", d.message);
    nv(&mut m, 0); // counters reset: a new baseline, not a negative rate
    for _ in 0..3 {
        nv(&mut m, 0);
    }
    assert_eq!(
        status_of(&m.conditions(), GPU_NVLINK_DEGRADED).status,
        ConditionStatus::False
    );
}

#[test]
fn a_slow_pcie_generation_counts_only_while_busy() {
    let mut m = model();
    let now = SystemTime::now();
    let status = |m: &HealthModel| status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status;
    let sweep = |m: &mut HealthModel, idle: bool, generation: u32| {
        m.apply_all(&[
            Observation::ClockEvents {
                gpu: 2,
                slowdown: false,
                idle,
                at: now,
            },
            Observation::PcieGen {
                gpu: 2,
                generation,
                max_generation: 5,
                at: now,
            },
        ])
    };
    for _ in 0..5 {
        sweep(&mut m, true, 1);
    }
    assert_eq!(
        status(&m),
        ConditionStatus::False,
        "idle power saving is not a fault"
    );
    sweep(&mut m, false, 3);
    sweep(&mut m, false, 3);
    assert_eq!(status(&m), ConditionStatus::False, "not yet sustained");
    sweep(&mut m, false, 3);
    let p = status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).clone();
    assert_eq!(p.status, ConditionStatus::True);
    assert!(
        p.message.contains("gen 3 of 5 while the GPU is busy"),
        "{}",
        p.message
    );
}
