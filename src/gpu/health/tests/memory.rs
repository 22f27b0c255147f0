//! Tests of row remapping, retired pages and ECC counts.

use super::*;

#[test]
fn row_remapping_pending_needs_a_reset_and_failure_is_a_memory_fault() {
    let mut m = model();
    let now = SystemTime::now();
    let rows = |m: &mut HealthModel, pending, failure, uncorrectable| {
        m.apply(&Observation::RemappedRows {
            gpu: 0,
            pending,
            failure,
            uncorrectable,
            at: now,
        })
    };
    rows(&mut m, true, false, 1);
    let c = m.conditions();
    assert_eq!(
        status_of(&c, GPU_RESET_REQUIRED).reason,
        REASON_ROW_REMAP_PENDING
    );
    assert_eq!(
        status_of(&c, GPU_MEMORY_UNHEALTHY).status,
        ConditionStatus::False
    );
    // Pending clears after three good readings in a row, not at once.
    rows(&mut m, false, false, 1);
    rows(&mut m, false, false, 1);
    assert_eq!(
        status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
        ConditionStatus::True
    );
    rows(&mut m, false, false, 1);
    assert_eq!(
        status_of(&m.conditions(), GPU_RESET_REQUIRED).status,
        ConditionStatus::False
    );
    rows(&mut m, false, true, 1);
    assert_eq!(
        status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
        "RowRemapFailure"
    );
    let mut m = model();
    rows(&mut m, false, false, 600);
    assert_eq!(
        status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
        "RemappedRowsExhausted"
    );
}

#[test]
fn retired_pages_corrected_ecc_and_a_degraded_source() {
    let mut m = model();
    let now = SystemTime::now();
    let pages = |m: &mut HealthModel, single_bit, double_bit, pending| {
        m.apply(&Observation::RetiredPages {
            gpu: 0,
            single_bit,
            double_bit,
            pending,
            at: now,
        })
    };
    pages(&mut m, 3, 1, true);
    assert_eq!(
        status_of(&m.conditions(), GPU_RESET_REQUIRED).reason,
        "PageRetirementPending"
    );
    assert_eq!(
        status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).status,
        ConditionStatus::False
    );
    pages(&mut m, 3, 16, false);
    assert_eq!(
        status_of(&m.conditions(), GPU_MEMORY_UNHEALTHY).reason,
        "RetiredPagesExhausted"
    );

    m.apply(&Observation::CorrectedEcc {
        gpu: 1,
        count: 10,
        at: now,
    });
    m.apply(&Observation::CorrectedEcc {
        gpu: 1,
        count: 5_000,
        at: now,
    });
    let reasons: Vec<String> = m
        .snapshot()
        .events
        .iter()
        .map(|(_, e)| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"CorrectedECCRateHigh".to_owned()),
        "{reasons:?}"
    );

    m.apply(&Observation::SourceDegraded {
        source: "kernel log".into(),
        reason: "permission denied".into(),
        at: now,
    });
    let last = m
        .snapshot()
        .events
        .last()
        .map(|(_, e)| e.clone())
        .expect("event");
    assert_eq!(
        (last.reason.as_str(), last.message.as_str()),
        ("GPUMonitorDegraded", "kernel log: permission denied")
    );
}
