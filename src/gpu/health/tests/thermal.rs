//! Tests of thermal throttling: temperature, thermal margin, slowdown rate and
//! operator thresholds.

use super::*;

#[test]
fn thermal_throttling_has_hysteresis() {
    let mut m = model();
    let now = SystemTime::now();
    let temp = |m: &mut HealthModel, c| {
        m.apply(&Observation::Temperature {
            gpu: 5,
            celsius: c,
            at: now,
        })
    };
    let throttling = |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
    temp(&mut m, 88);
    assert_eq!(throttling(&m), ConditionStatus::False);
    temp(&mut m, 89);
    assert_eq!(throttling(&m), ConditionStatus::True);
    assert!(
        !temp(&mut m, 86),
        "inside the hysteresis band nothing changes"
    );
    assert_eq!(throttling(&m), ConditionStatus::True);
    temp(&mut m, 84);
    assert_eq!(throttling(&m), ConditionStatus::False);
}

#[test]
fn the_gpus_own_slowdown_threshold_is_used() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::SlowdownThreshold {
        gpu: 0,
        celsius: 80,
    });
    m.apply(&Observation::Temperature {
        gpu: 0,
        celsius: 82,
        at: now,
    });
    let t = status_of(&m.conditions(), GPU_THERMAL_THROTTLING).clone();
    assert_eq!(t.status, ConditionStatus::True);
    assert!(t.message.contains("slowdown is 80 °C"), "{}", t.message);
}

#[test]
fn sustained_slowdown_throttles_by_rate_and_idle_samples_do_not_count() {
    let mut m = model();
    let now = SystemTime::now();
    let sample = |m: &mut HealthModel, slowdown, idle| {
        m.apply(&Observation::ClockEvents {
            gpu: 7,
            slowdown,
            idle,
            at: now,
        })
    };
    let throttling = |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
    for _ in 0..100 {
        sample(&mut m, false, true); // idle: ignored while not throttling
    }
    for _ in 0..5 {
        sample(&mut m, true, false);
    }
    assert_eq!(
        throttling(&m),
        ConditionStatus::False,
        "too few samples yet"
    );
    sample(&mut m, true, false);
    assert_eq!(throttling(&m), ConditionStatus::True);
    // Mostly good now, but not yet ≤ 20 % over the window.
    for _ in 0..20 {
        sample(&mut m, false, false);
    }
    assert_eq!(throttling(&m), ConditionStatus::True, "hysteresis");
    for _ in 0..40 {
        sample(&mut m, false, false);
    }
    assert_eq!(throttling(&m), ConditionStatus::False);
}

#[test]
fn operator_thresholds_override_and_memory_is_only_a_note() {
    let mut m = model();
    let now = SystemTime::now();
    m.apply(&Observation::MemoryUsage {
        gpu: 1,
        used_percent: 99.0,
        at: now,
    });
    assert!(
        m.snapshot().events.is_empty(),
        "no memory threshold by default"
    );
    m.apply(&Observation::Thresholds {
        temperature: Some(70),
        memory_percent: Some(95.0),
    });
    m.apply(&Observation::MemoryUsage {
        gpu: 1,
        used_percent: 99.0,
        at: now,
    });
    let events = m.snapshot().events;
    assert_eq!(
        (events[0].1.reason.as_str(), events[0].1.severity),
        ("GPUMemoryHigh", Severity::Info)
    );
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False),
        "memory use is never a fault"
    );
    m.apply(&Observation::Temperature {
        gpu: 1,
        celsius: 72,
        at: now,
    });
    let t = status_of(&m.conditions(), GPU_THERMAL_THROTTLING).clone();
    assert_eq!(t.status, ConditionStatus::True);
    assert!(t.message.contains("slowdown is 70 °C"), "{}", t.message);
}

#[test]
fn no_thermal_margin_left_is_throttling() {
    let mut m = model();
    let now = SystemTime::now();
    let margin = |m: &mut HealthModel, c| {
        m.apply(&Observation::MarginTemperature {
            gpu: 4,
            celsius: c,
            at: now,
        })
    };
    let status = |m: &HealthModel| status_of(&m.conditions(), GPU_THERMAL_THROTTLING).status;
    margin(&mut m, 12);
    assert_eq!(status(&m), ConditionStatus::False);
    margin(&mut m, 0);
    assert_eq!(status(&m), ConditionStatus::True);
    assert!(
        status_of(&m.conditions(), GPU_THERMAL_THROTTLING)
            .message
            .contains("thermal margin 0 °C")
    );
    margin(&mut m, 3);
    assert_eq!(status(&m), ConditionStatus::True, "hysteresis");
    margin(&mut m, 6);
    assert_eq!(status(&m), ConditionStatus::False);
}
