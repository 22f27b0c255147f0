//! Tests of application XIDs that repeat on one GPU (the catalog's repeat
//! rules): bursts, not lines, count; a 43 echoing a 13 does not.

use super::*;

fn kernel(m: &mut HealthModel, gpu: usize, xid: u32, at: SystemTime, replay: bool) {
    let pci = PciAddr::parse(&sim::identities(8)[gpu].pci_bus_id).expect("pci");
    m.apply(&Observation::KernelXid {
        pci,
        xid,
        detail: "pid=7, name=train, fault".into(),
        at,
        replay,
    });
}

fn repeated(m: &HealthModel) -> Vec<String> {
    m.snapshot()
        .events
        .iter()
        .filter(|(_, e)| e.reason == REASON_XID_REPEATED)
        .map(|(_, e)| {
            assert_eq!(e.severity, Severity::Warn);
            e.message.clone()
        })
        .collect()
}

const MIN: Duration = Duration::from_secs(60);

#[test]
fn xid31_in_two_bursts_on_one_gpu_is_a_repeat_naming_the_gpu_and_count() {
    let mut m = model();
    let t0 = SystemTime::now();
    // One failing job logs a storm: one burst, however many lines.
    for s in 0..50 {
        kernel(&mut m, 2, 31, t0 + Duration::from_secs(s), false);
    }
    assert!(repeated(&m).is_empty(), "one burst is the application's");
    kernel(&mut m, 5, 31, t0 + 10 * MIN, false);
    assert!(repeated(&m).is_empty(), "another GPU's burst is its own");
    kernel(&mut m, 2, 31, t0 + 10 * MIN, false);
    let found = repeated(&m);
    assert_eq!(found.len(), 1, "{found:?}");
    let id = &sim::identities(8)[2];
    assert!(
        found[0].contains(&format!("gpu=2 uuid={}", id.uuid))
            && found[0].contains("XID 31")
            && found[0].contains("in 2 separate bursts within 24 h (threshold 2)")
            && found[0].contains("dcgmi diag"),
        "{}",
        found[0]
    );
    // No condition: the node is not declared broken by a hint.
    assert!(
        m.conditions()
            .iter()
            .all(|c| c.status == ConditionStatus::False)
    );
}

#[test]
fn xid13_needs_five_bursts_within_a_day_and_old_bursts_age_out() {
    let mut m = model();
    let t0 = SystemTime::now();
    let hour = 60 * MIN;
    // Four bursts, the first a day and more before the fifth.
    kernel(&mut m, 1, 13, t0, false);
    for h in [20, 21, 22] {
        kernel(&mut m, 1, 13, t0 + h * hour, false);
    }
    kernel(&mut m, 1, 13, t0 + 25 * hour, false);
    assert!(
        repeated(&m).is_empty(),
        "the first burst aged out: 4 in 24 h"
    );
    kernel(&mut m, 1, 13, t0 + 26 * hour, false);
    let found = repeated(&m);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("in 5 separate bursts"), "{}", found[0]);
    kernel(&mut m, 1, 13, t0 + 27 * hour, false);
    let found = repeated(&m);
    assert_eq!(found.len(), 2, "each further burst says the count");
    assert!(found[1].contains("in 6 separate bursts"), "{}", found[1]);
}

#[test]
fn an_xid43_echoing_a_13_does_not_count_and_replays_count_silently() {
    let mut m = model();
    let t0 = SystemTime::now();
    for i in 0..5 {
        let at = t0 + i * 10 * MIN;
        kernel(&mut m, 4, 13, at, true);
        // The channel stop that follows the exception: its echo.
        kernel(&mut m, 4, 43, at + Duration::from_secs(2), false);
    }
    let found = repeated(&m);
    assert!(
        found.iter().all(|f| !f.contains("XID 43")),
        "43s that echo 13s: {found:?}"
    );
    assert!(found.is_empty(), "replayed 13s send nothing: {found:?}");
    // Replayed bursts rebuilt the count: one more burst is the sixth.
    kernel(&mut m, 4, 13, t0 + 60 * MIN, false);
    let found = repeated(&m);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("in 6 separate bursts"), "{}", found[0]);
}
