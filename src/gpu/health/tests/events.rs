//! Tests of event aggregation, the event backlog and the flap guard.

use super::*;

#[test]
fn event_backlog_is_bounded() {
    let mut m = model();
    // Distinct (GPU, XID) keys, so nothing aggregates.
    for i in 0..200u32 {
        m.apply(&Observation::Xid {
            gpu: i % 8,
            xid: 1000 + i,
            at: SystemTime::now(),
        });
    }
    let s = m.snapshot();
    assert_eq!(s.events.len(), EVENT_BACKLOG);
    assert_eq!(s.last_event_seq(), 200);
    assert_eq!(s.events_after(198).count(), 2);
}

#[test]
fn an_xid_storm_becomes_one_event_and_one_summary() {
    let mut m = model();
    let t0 = SystemTime::now();
    for i in 0..10_000u64 {
        m.apply(&Observation::Xid {
            gpu: 2,
            xid: 95,
            at: t0 + Duration::from_millis(i),
        });
    }
    // Another GPU's XID is its own key: not swallowed by the storm.
    m.apply(&Observation::Xid {
        gpu: 5,
        xid: 95,
        at: t0,
    });
    assert_eq!(m.snapshot().events.len(), 2);
    assert!(!m.flush(t0 + Duration::from_secs(30)), "window still open");
    assert!(m.flush(t0 + EVENT_WINDOW + Duration::from_secs(1)));
    let events = m.snapshot().events;
    assert_eq!(events.len(), 3);
    let summary = &events[2].1;
    assert!(
        summary.message.contains("gpu=2 ") && summary.message.contains("repeated 9999 more times"),
        "{}",
        summary.message
    );
    assert!(!m.flush(t0 + EVENT_WINDOW * 3), "nothing left to summarise");
    // After the window a new occurrence is news again.
    m.apply(&Observation::Xid {
        gpu: 2,
        xid: 95,
        at: t0 + EVENT_WINDOW * 3,
    });
    assert_eq!(m.snapshot().events.len(), 4);
}

#[test]
fn a_flapping_condition_is_held_true_until_it_stays_clear() {
    let mut m = model();
    let t0 = SystemTime::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let width = |m: &mut HealthModel, w, t| {
        m.apply(&Observation::PcieLink {
            gpu: 5,
            width: w,
            max_width: 16,
            at: t,
        })
    };
    let status = |m: &HealthModel| status_of(&m.conditions(), GPU_PCIE_LINK_DEGRADED).status;
    let mut t = 0;
    for round in 0..3 {
        width(&mut m, 8, at(t));
        t += 10;
        for _ in 0..3 {
            width(&mut m, 16, at(t));
            t += 10;
        }
        if round < 2 {
            assert_eq!(
                status(&m),
                ConditionStatus::False,
                "round {round}: clears normally"
            );
        }
    }
    // Third set within 10 min: flapping, and the clear is held back.
    assert_eq!(status(&m), ConditionStatus::True);
    let flaps: Vec<_> = m
        .snapshot()
        .events
        .into_iter()
        .filter(|(_, e)| e.reason == "GPUConditionFlapping")
        .collect();
    assert_eq!(flaps.len(), 1);
    assert!(
        flaps[0].1.message.contains("gpu=5 ") && flaps[0].1.message.contains("GPUPCIeLinkDegraded")
    );
    assert!(!m.flush(at(t + 60)), "still inside the hold");
    assert_eq!(status(&m), ConditionStatus::True);
    assert!(m.flush(at(t + FLAP_WINDOW.as_secs() + 1)));
    assert_eq!(
        status(&m),
        ConditionStatus::False,
        "clear once the hold ends"
    );
}
