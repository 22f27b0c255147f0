//! Tests of driver readiness, the inventory, hung calls, the GPU count and
//! reset evidence, and of the healthy node.

use super::*;

#[test]
fn healthy_node_reports_all_false() {
    let m = model();
    let c = m.conditions();
    let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        crate::gpu::SUPPORTED_CONDITIONS,
        "one condition per supported type, in order"
    );
    assert!(
        c.iter().all(|c| c.status == ConditionStatus::False),
        "{c:?}"
    );
}

#[test]
fn without_a_driver_gpu_conditions_are_unknown_not_healthy() {
    let mut m = HealthModel::awaiting_driver();
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_DRIVER_NOT_READY).status,
        ConditionStatus::True
    );
    for t in [GPU_LOST, GPU_RESET_REQUIRED, GPU_THERMAL_THROTTLING] {
        assert_eq!(status_of(&c, t).status, ConditionStatus::Unknown, "{t}");
    }
    let now = SystemTime::now();
    m.apply(&Observation::DriverNotReady {
        reason: "cannot load NVML (x: not found)".into(),
        at: now,
    });
    let c = m.conditions();
    assert!(
        status_of(&c, GPU_DRIVER_NOT_READY)
            .message
            .contains("cannot load NVML (x: not found)")
    );
    assert!(
        m.snapshot().events.is_empty(),
        "never ready: no transition event"
    );

    let gpus = sim::identities(2);
    assert!(m.apply(&Observation::DriverReady {
        gpus: gpus.clone(),
        version: "580.159.04".into(),
        at: now
    }));
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_DRIVER_NOT_READY).status,
        ConditionStatus::False
    );
    assert!(
        status_of(&c, GPU_DRIVER_NOT_READY)
            .message
            .contains("580.159.04 ready; 2 GPUs visible")
    );
    assert!(
        c.iter().all(|c| c.status == ConditionStatus::False),
        "{c:?}"
    );
    assert_eq!(
        m.snapshot().events.last().map(|(_, e)| e.reason.as_str()),
        Some(REASON_DRIVER_READY)
    );
}

#[test]
fn a_new_inventory_keeps_the_state_of_gpus_that_stay() {
    let mut m = HealthModel::awaiting_driver();
    let now = SystemTime::now();
    let gpus = sim::identities(3);
    m.apply(&Observation::DriverReady {
        gpus: gpus.clone(),
        version: "v".into(),
        at: now,
    });
    m.apply(&Observation::Xid {
        gpu: 2,
        xid: 48,
        at: now,
    });
    // GPU 0 disappears: indexes shift, the UUID decides who is who.
    let mut shifted: Vec<GpuIdentity> = gpus[1..].to_vec();
    for (i, g) in shifted.iter_mut().enumerate() {
        g.index = i as u32;
    }
    m.apply(&Observation::DriverReady {
        gpus: shifted,
        version: "v".into(),
        at: now,
    });
    let reset = status_of(&m.conditions(), GPU_RESET_REQUIRED).clone();
    assert_eq!(reset.status, ConditionStatus::True);
    assert!(
        reset
            .message
            .contains(&format!("gpu=1 uuid={}", gpus[2].uuid)),
        "{}",
        reset.message
    );
}

#[test]
fn a_hung_call_is_unresponsive_and_stale_readings_unknown() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::Temperature {
        gpu: 4,
        celsius: 40,
        at: now,
    });
    assert!(m.apply(&Observation::Unresponsive {
        call: "nvmlDeviceGetTemperature".into(),
        gpu: Some(4),
        waited: Duration::from_secs(30),
        at: now,
    }));
    let c = m.conditions();
    let u = status_of(&c, GPU_UNRESPONSIVE);
    assert_eq!(u.status, ConditionStatus::True);
    assert!(
        u.message.contains("gpu=4 ") && u.message.contains("nvmlDeviceGetTemperature"),
        "{}",
        u.message
    );
    assert_eq!(
        status_of(&c, GPU_THERMAL_THROTTLING).status,
        ConditionStatus::Unknown
    );
    assert_eq!(
        status_of(&c, GPU_LOST).status,
        ConditionStatus::False,
        "XID-based state is not a reading"
    );
    assert!(m.apply(&Observation::Responsive { at: now }));
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
    assert!(
        !m.apply(&Observation::Responsive { at: now }),
        "nothing new"
    );
}

#[test]
fn an_unknown_snapshot_keeps_the_types_and_events_and_says_why() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::Xid {
        gpu: 3,
        xid: 79,
        at: now,
    });
    let before = m.snapshot();
    assert!(!before.events.is_empty());
    let after = before.clone().unknown("the GPU health model stopped");
    assert_eq!(after.events, before.events);
    assert_eq!(
        after
            .conditions
            .iter()
            .map(|c| &c.type_)
            .collect::<Vec<_>>(),
        before
            .conditions
            .iter()
            .map(|c| &c.type_)
            .collect::<Vec<_>>()
    );
    for c in &after.conditions {
        assert_eq!(c.status, ConditionStatus::Unknown, "{}", c.type_);
        assert_eq!(c.reason, REASON_MODEL_RESTARTING);
        assert_eq!(c.message, "the GPU health model stopped");
    }
}

#[test]
fn a_backend_that_went_down_stops_the_readings_until_it_answers_again() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::Temperature {
        gpu: 1,
        celsius: 40,
        at: now,
    });
    assert!(m.apply(&Observation::BackendDown {
        reason: "the NVML backend panicked (boom) and restarts".into(),
        at: now,
    }));
    let c = m.conditions();
    let u = status_of(&c, GPU_UNRESPONSIVE);
    assert_eq!(u.status, ConditionStatus::True);
    assert!(
        u.message
            .starts_with("no readings: the NVML backend panicked (boom) and restarts; "),
        "{}",
        u.message
    );
    assert_eq!(
        status_of(&c, GPU_THERMAL_THROTTLING).status,
        ConditionStatus::Unknown,
        "a cool GPU is no longer known to be cool"
    );
    // The restarted backend's first sweep says Responsive.
    assert!(m.apply(&Observation::Responsive { at: now }));
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
}

#[test]
fn fewer_gpus_than_any_source_says_is_missing() {
    let mut m = model();
    let now = SystemTime::now();
    let count = |m: &mut HealthModel, nvml, sysfs, dev, expected| {
        m.apply(&Observation::GpuCount {
            counts: GpuCounts {
                nvml,
                sysfs,
                dev_nodes: dev,
                expected,
            },
            at: now,
        })
    };
    count(&mut m, Some(8), Some(8), Some(8), None);
    assert_eq!(
        status_of(&m.conditions(), GPU_MISSING).status,
        ConditionStatus::False
    );
    // sysfs still lists the GPU the driver lost.
    count(&mut m, Some(7), Some(8), Some(7), None);
    let missing = status_of(&m.conditions(), GPU_MISSING).clone();
    assert_eq!(missing.status, ConditionStatus::True);
    assert!(
        missing.message.contains("NVML enumerates 7 of 8 GPUs"),
        "{}",
        missing.message
    );
    // Even when every source agrees on 7, we once saw 8.
    count(&mut m, Some(7), Some(7), Some(7), None);
    assert_eq!(
        status_of(&m.conditions(), GPU_MISSING).status,
        ConditionStatus::True
    );
    let mut m = model();
    count(&mut m, Some(8), None, None, Some(8));
    assert_eq!(
        status_of(&m.conditions(), GPU_MISSING).status,
        ConditionStatus::False
    );
    let mut m = model();
    count(&mut m, Some(6), None, None, Some(8));
    assert_eq!(
        status_of(&m.conditions(), GPU_MISSING).status,
        ConditionStatus::True,
        "configured count"
    );
}

#[test]
fn volatile_ecc_counters_back_to_zero_are_reset_evidence() {
    let now = SystemTime::now();
    let reset_status = |m: &HealthModel| status_of(&m.conditions(), GPU_RESET_REQUIRED).status;

    // Volatile ECC counters going back to zero: the driver reset the GPU.
    let mut m = model();
    let ecc = |count| Observation::VolatileUncorrectableEcc {
        gpu: 3,
        count,
        at: now,
    };
    m.apply(&ecc(0));
    m.apply(&Observation::Xid {
        gpu: 3,
        xid: 48,
        at: now,
    });
    m.apply(&ecc(2));
    assert_eq!(reset_status(&m), ConditionStatus::True);
    m.apply(&ecc(0));
    assert_eq!(
        reset_status(&m),
        ConditionStatus::False,
        "XID 48 cleared by the counters' reset"
    );
}
