//! Tests of which GPUs the model keeps: the enumerated ones, those NVML
//! lost, a bounded number the kernel log names, and one unknown GPU.

use super::*;

fn lost_message(m: &HealthModel) -> String {
    let c = m.conditions();
    let lost = status_of(&c, GPU_LOST);
    assert_eq!(lost.status, ConditionStatus::True, "{lost:?}");
    assert_eq!(
        status_of(&c, GPU_REBOOT_REQUIRED).status,
        ConditionStatus::True
    );
    lost.message.clone()
}

#[test]
fn a_report_naming_no_gpu_raises_lost_for_an_unknown_gpu() {
    let mut m = model();
    m.apply(&Observation::KernelXidUnknownGpu {
        xid: 79,
        detail: "GPU has fallen off the bus (the report names no GPU)".into(),
        at: SystemTime::now(),
        replay: false,
    });
    let message = lost_message(&m);
    assert!(message.starts_with("an unknown GPU"), "{message}");
    assert_eq!(m.enumerated(), 8);
}

#[test]
fn kernel_named_gpus_are_bounded_and_the_rest_count_as_unknown() {
    let mut m = model();
    let now = SystemTime::now();
    for bus in 0..40u8 {
        m.apply(&Observation::KernelXid {
            pci: PciAddr::parse(&format!("0000:{:02x}:00", 0x80 + bus)).expect("pci"),
            xid: 79,
            detail: "GPU has fallen off the bus.".into(),
            at: now,
            replay: false,
        });
    }
    assert_eq!(
        m.gpus.len(),
        8 + MAX_KERNEL_NAMED + 1,
        "enumerated, named, one unknown"
    );
    let message = lost_message(&m);
    assert!(message.contains("pci=0000:80:00"), "{message}");
    assert!(message.contains("an unknown GPU"), "{message}");
    assert!(!message.contains("pci=0000:a7:00"), "{message}");
}

#[test]
fn a_gpu_the_driver_stops_listing_keeps_its_fault_and_its_index_goes_to_the_new_one() {
    let mut m = model();
    let now = SystemTime::now();
    let ids = sim::identities(8);
    m.apply(&Observation::Xid {
        gpu: 3,
        xid: 79,
        at: now,
    });
    // A new session enumerates seven: GPU 3 is gone, the rest renumbered.
    let mut seven: Vec<GpuIdentity> = ids.iter().filter(|g| g.index != 3).cloned().collect();
    for (i, g) in seven.iter_mut().enumerate() {
        g.index = i as u32;
    }
    m.apply(&Observation::DriverReady {
        gpus: seven.clone(),
        version: "580.159.04".into(),
        at: now,
    });
    assert_eq!(m.enumerated(), 7);
    let message = lost_message(&m);
    assert!(
        message.contains(&ids[3].uuid) && message.contains(&ids[3].serial),
        "the lost board is still named: {message}"
    );
    // Index 3 now is the old GPU 4: readings for it are its own.
    m.apply(&Observation::Temperature {
        gpu: 3,
        celsius: 95,
        at: now,
    });
    let c = m.conditions();
    let hot = status_of(&c, GPU_THERMAL_THROTTLING);
    assert!(hot.message.contains(&ids[4].uuid), "{}", hot.message);
    assert!(!hot.message.contains(&ids[3].uuid), "{}", hot.message);
    // The board comes back (same UUID): the driver re-probed it, a reset.
    m.apply(&Observation::DriverReady {
        gpus: ids.clone(),
        version: "580.159.04".into(),
        at: now,
    });
    assert_eq!((m.enumerated(), m.gpus.len()), (8, 8));
    assert_eq!(
        status_of(&m.conditions(), GPU_LOST).status,
        ConditionStatus::False
    );
    assert_eq!(
        m.snapshot().events.last().map(|(_, e)| e.reason.clone()),
        Some(REASON_RECOVERED.to_owned())
    );
}

#[test]
fn faults_the_kernel_log_raised_before_the_driver_answered_go_to_its_gpu() {
    // At start the kernel log is replayed before NVML has enumerated.
    let mut m = HealthModel::awaiting_driver();
    let ids = sim::identities(8);
    let now = SystemTime::now();
    m.apply(&Observation::KernelXid {
        pci: PciAddr::parse(&ids[5].pci_bus_id).expect("pci"),
        xid: 48,
        detail: "DBE".into(),
        at: now,
        replay: true,
    });
    m.apply(&Observation::DriverReady {
        gpus: ids.clone(),
        version: "580.159.04".into(),
        at: now,
    });
    assert_eq!(m.gpus.len(), 8, "the kernel-named entry merged");
    let c = m.conditions();
    let reset = status_of(&c, GPU_RESET_REQUIRED);
    assert_eq!(reset.status, ConditionStatus::True);
    assert!(reset.message.contains(&ids[5].uuid), "{}", reset.message);
}

#[test]
fn a_hung_call_names_its_stuck_session_and_the_time_it_began() {
    let mut m = model();
    let t0 = SystemTime::now();
    for i in 0..3 {
        m.apply(&Observation::Unresponsive {
            call: "nvmlDeviceGetTemperature".into(),
            gpu: Some(2),
            waited: Duration::from_secs(30),
            at: t0 + Duration::from_secs(40 * i),
        });
    }
    let c = m.conditions();
    let stuck = status_of(&c, GPU_UNRESPONSIVE);
    assert!(
        stuck.message.contains("gpu=2 ")
            && stuck
                .message
                .contains("its thread stays stuck in the driver (since ")
            && stuck.message.contains(&crate::problem::format_time(t0))
            && stuck.message.contains("no new NVML session starts"),
        "{}",
        stuck.message
    );
}
