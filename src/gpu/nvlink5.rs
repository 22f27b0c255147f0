//! NVLink-5 XIDs (144–150), decoded by the driver's generation of the
//! catalog's rules.
//!
//! The kernel line names the unit, a severity word and two registers:
//! `145, RLW_REMAP Fatal XC1 i0 Link 10 (0x00000082 0x00000040 0x0 …)`, the
//! first being IntrInfo, the second ErrorStatus. NVIDIA's XID catalog
//! (sheet "Xid 144-150 Decode", docs.nvidia.com/deploy/xid-errors/
//! analyzing-xid-catalog.html) maps IntrInfo's unit bits and the status to
//! a resolution. The unit bits moved at R575: drivers before it put the
//! unit in IntrInfo bits 9:0 ("V1"), R575 and later in bits 6:0 ("V2"), so
//! one line reads differently under the two (NVIDIA/NVSentinel issue #748,
//! PR #749, which choose by the driver version NVML reports, major only).
//!
//! A line the rules do not cover, or one read while the driver version is
//! not known, keeps the severity word the kernel printed (`Fatal`: a
//! degraded link and a reset; `Nonfatal`: an event), and the message says
//! that the rules did not decide.

use super::xid::Classes;

/// The first driver branch of the V2 decoding.
pub const V2_FROM: u32 = 575;

/// Which bit layout of IntrInfo a driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Before R575: the unit in bits 9:0.
    V1,
    /// R575 and later: the unit in bits 6:0.
    V2,
}

impl Generation {
    /// The generation of `driver` as NVML prints it ("575.57.08"); `None`
    /// while it is unknown (empty) or not a version.
    pub fn of(driver: &str) -> Option<Self> {
        let major: u32 = driver.split('.').next()?.trim().parse().ok()?;
        Some(if major >= V2_FROM { Self::V2 } else { Self::V1 })
    }

    fn unit(self, intr_info: u32) -> u32 {
        match self {
            Self::V1 => intr_info & 0x3ff,
            Self::V2 => intr_info & 0x7f,
        }
    }
}

/// The catalog's resolution buckets the rules use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// Corrected or informational: an event.
    Ignore,
    /// The link is degraded until the GPU is reset.
    ResetGpu,
    /// The driver follows with XID 154, whose recovery action decides.
    Xid154,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Self::Ignore => "IGNORE",
            Self::ResetGpu => "RESET_GPU",
            Self::Xid154 => "XID_154_EVAL",
        }
    }

    fn classes(self) -> Classes {
        match self {
            Self::Ignore | Self::Xid154 => Classes::EVENT,
            Self::ResetGpu => Classes::NVLINK_DEGRADED | Classes::RESET,
        }
    }
}

/// IntrInfo bits 25:20 (the link-down reason of XID 149, zero elsewhere).
#[derive(Clone, Copy, Debug)]
enum High {
    Zero,
    /// Any value; these reasons are benign.
    Any {
        benign: &'static [u32],
    },
}

/// One row of the decode sheet.
#[derive(Debug)]
struct Rule {
    xid: u32,
    unit: &'static str,
    /// The unit bits: 9:0 under V1, 6:0 under V2.
    v1: u32,
    v2: u32,
    high: High,
    /// ErrorStatus values and their bucket.
    statuses: &'static [(u32, Bucket)],
    /// The bucket of any other status (`None`: the row does not match).
    otherwise: Option<Bucket>,
}

use Bucket::{Ignore, ResetGpu, Xid154};

/// The rows, in the sheet's order (the first that matches decides).
const RULES: &[Rule] = &[
    Rule {
        xid: 144,
        unit: "SAW_MVB",
        v1: 0b00_0010_0001,
        v2: 0b000_0001,
        high: High::Zero,
        statuses: &[
            (0x1, Ignore),
            (0x2, ResetGpu),
            (0x4, Ignore),
            (0x8, Ignore),
            (0x10, ResetGpu),
            (0x20, Ignore),
        ],
        otherwise: None,
    },
    Rule {
        xid: 145,
        unit: "RLW_CTRL",
        v1: 0b00_0110_0010,
        v2: 0b000_0011,
        high: High::Zero,
        statuses: &[(0x8000_0000, Ignore)],
        otherwise: None,
    },
    Rule {
        xid: 145,
        unit: "RLW_REMAP",
        v1: 0b00_1000_0010,
        v2: 0b000_0100,
        high: High::Zero,
        statuses: &[
            (0x1, Xid154),
            (0x2, Xid154),
            (0x4, Xid154),
            (0x8, Xid154),
            (0x10, Xid154),
            (0x20, Xid154),
            (0x40, ResetGpu),
            (0x80, ResetGpu),
            (0x100, Ignore),
            (0x200, Ignore),
            (0x8000_0000, Ignore),
        ],
        otherwise: None,
    },
    Rule {
        xid: 145,
        unit: "RLW_SRC_TRACK",
        v1: 0b00_1110_0010,
        v2: 0b000_0111,
        high: High::Zero,
        statuses: &[
            (0x1, ResetGpu),
            (0x2, Ignore),
            (0x4, Xid154),
            (0x8, Xid154),
            (0x10, ResetGpu),
            (0x20, ResetGpu),
        ],
        otherwise: None,
    },
    Rule {
        xid: 146,
        unit: "TLW_CTRL",
        v1: 0b01_0010_0011,
        v2: 0b000_1001,
        high: High::Zero,
        statuses: &[(0x4, ResetGpu)],
        otherwise: Some(Ignore),
    },
    Rule {
        xid: 149,
        unit: "NETIR_LINK_EVT",
        v1: 0b01_1100_0110,
        v2: 0b001_0001,
        high: High::Any {
            benign: &[0b10_0110, 0b10_1000],
        },
        statuses: &[],
        otherwise: Some(ResetGpu),
    },
    Rule {
        xid: 149,
        unit: "NETIR_BER_EVENT",
        v1: 0b10_0010_0110,
        v2: 0b001_0011,
        high: High::Zero,
        statuses: &[(0x0, Ignore), (0x1, Ignore), (0x2, Ignore), (0x3, Ignore)],
        otherwise: None,
    },
    Rule {
        xid: 150,
        unit: "MSE",
        v1: 0,
        v2: 0,
        high: High::Zero,
        statuses: &[(0x0, ResetGpu), (0xffff_ffff, ResetGpu)],
        otherwise: None,
    },
];

/// IntrInfo and ErrorStatus: the first two hex words in the line's
/// parenthesis.
pub fn registers(detail: &str) -> Option<(u32, u32)> {
    let (_, inside) = detail.rsplit_once('(')?;
    let mut words = inside
        .split(|c: char| c.is_whitespace() || c == ')')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let hex = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X"))?;
            u32::from_str_radix(hex, 16).ok()
        });
    Some((words.next()??, words.next()??))
}

fn severity(detail: &str) -> Option<Bucket> {
    let words = || detail.split_whitespace();
    if words().any(|w| w.eq_ignore_ascii_case("Nonfatal") || w.eq_ignore_ascii_case("Non-fatal")) {
        Some(Ignore)
    } else if words().any(|w| w == "Fatal") {
        Some(ResetGpu)
    } else {
        None
    }
}

fn lookup(xid: u32, gen_: Generation, intr: u32, status: u32) -> Option<(&'static Rule, Bucket)> {
    RULES.iter().find_map(|r| {
        let unit = match gen_ {
            Generation::V1 => r.v1,
            Generation::V2 => r.v2,
        };
        if r.xid != xid || gen_.unit(intr) != unit {
            return None;
        }
        let high = (intr >> 20) & 0x3f;
        match r.high {
            High::Zero if high != 0 => return None,
            High::Any { benign } if benign.contains(&high) => return Some((r, Ignore)),
            _ => {}
        }
        let bucket = r
            .statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, b)| *b)
            .or(r.otherwise)?;
        Some((r, bucket))
    })
}

/// What an NVLink-5 XID's kernel line raises under `driver` (as NVML
/// reports it; empty while unknown), and a note saying how it was decided.
/// `None` when neither the rules nor the line say (no rule and no severity
/// word): the catalog's class stands.
pub fn decode(xid: u32, detail: &str, driver: &str) -> Option<(Classes, String)> {
    let regs = registers(detail);
    let said = severity(detail);
    let Some(gen_) = Generation::of(driver) else {
        let b = said?;
        return Some((
            b.classes(),
            format!(
                "NVLink-5 decode: the driver version is not known yet, so the kernel's word {} stands",
                word(b)
            ),
        ));
    };
    let (v, cmp) = match gen_ {
        Generation::V1 => ("V1", "<"),
        Generation::V2 => ("V2", "≥"),
    };
    let head = format!("NVLink-5 decode {v} (driver {driver} {cmp} R{V2_FROM})");
    match regs.and_then(|(intr, status)| lookup(xid, gen_, intr, status).map(|r| (r, status))) {
        Some(((rule, bucket), status)) => Some((
            bucket.classes(),
            format!(
                "{head}: {} ErrorStatus {status:#010x} → {}",
                rule.unit,
                bucket.name()
            ),
        )),
        None => {
            let b = said?;
            let regs = regs.map_or_else(
                || "no registers in the line".to_owned(),
                |(i, s)| format!("IntrInfo {i:#010x} ErrorStatus {s:#010x}"),
            );
            Some((
                b.classes(),
                format!(
                    "{head}: no rule for {regs}, so the kernel's word {} stands",
                    word(b)
                ),
            ))
        }
    }
}

fn word(b: Bucket) -> &'static str {
    if b == ResetGpu { "Fatal" } else { "Nonfatal" }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines (NVSentinel's syslog-health-monitor tests and code).
    const NETIR_149: &str = "NETIR_LINK_EVT  Fatal   XC0 i0 Link 09 (0x025525c6 0x00000000 0x00000000 0x00000000 0x00000000 0x00000000)";
    const REMAP_V1: &str = "RLW_REMAP Fatal XC1 i0 Link 10 (0x00000082 0x00000040 0x00000000 0x00000000 0x00000000 0x00000000)";
    const REMAP_V2: &str = "RLW_REMAP Nonfatal XC1 i0 Link 10 (0x00000004 0x00000040 0x00000000 0x00000000 0x00000000 0x00000000)";
    const SRC_TRACK_V2: &str = "RLW_SRC_TRACK Nonfatal XC1 i0 Link 10 (0x04082907 0x00000008 0x00000000 0x00000000 0x00000000 0x00000000)";

    #[test]
    fn the_registers_are_the_first_two_words_in_the_parenthesis() {
        assert_eq!(registers(NETIR_149), Some((0x0255_25c6, 0)));
        assert_eq!(registers(REMAP_V1), Some((0x82, 0x40)));
        assert_eq!(registers("RLW_REMAP Fatal XC1 i0 Link 10"), None);
        assert_eq!(registers("x (0x12 zz)"), None);
    }

    #[test]
    fn the_generation_is_the_driver_major_from_r575() {
        assert_eq!(Generation::of("570.148.08"), Some(Generation::V1));
        assert_eq!(Generation::of("574.99.99"), Some(Generation::V1));
        assert_eq!(Generation::of("575.0.0"), Some(Generation::V2));
        assert_eq!(Generation::of("590.100.05"), Some(Generation::V2));
        assert_eq!(Generation::of(""), None);
        assert_eq!(Generation::of("invalid"), None);
    }

    #[test]
    fn one_line_decodes_by_the_generation_of_the_driver() {
        // 0x4 is RLW_REMAP only in V2 (bits 6:0 = 0000100): there, status
        // 0x40 needs a reset, whatever the kernel's word; V1 has no rule
        // and keeps the word.
        let (c, note) = decode(145, REMAP_V2, "575.57.08").expect("decided");
        assert_eq!(c, Classes::NVLINK_DEGRADED | Classes::RESET);
        assert_eq!(
            note,
            "NVLink-5 decode V2 (driver 575.57.08 ≥ R575): RLW_REMAP ErrorStatus 0x00000040 → RESET_GPU"
        );
        let (c, note) = decode(145, REMAP_V2, "570.148.08").expect("decided");
        assert_eq!(c, Classes::EVENT);
        assert!(note.ends_with("no rule for IntrInfo 0x00000004 ErrorStatus 0x00000040, so the kernel's word Nonfatal stands"), "{note}");
        // 0x82 is RLW_REMAP in V1 (bits 9:0 = 0010000010).
        let (c, note) = decode(145, REMAP_V1, "570.148.08").expect("decided");
        assert_eq!(c, Classes::NVLINK_DEGRADED | Classes::RESET);
        assert!(
            note.ends_with("RLW_REMAP ErrorStatus 0x00000040 → RESET_GPU"),
            "{note}"
        );
    }

    #[test]
    fn rows_match_on_unit_high_bits_and_status() {
        // XID 149 link event: reason 100101 is not benign: a reset.
        let (c, note) = decode(149, NETIR_149, "570.148.08").expect("decided");
        assert_eq!(c, Classes::NVLINK_DEGRADED | Classes::RESET);
        assert!(
            note.contains("NETIR_LINK_EVT ErrorStatus 0x00000000 → RESET_GPU"),
            "{note}"
        );
        // The same with a benign link-down reason (100110).
        let benign = NETIR_149.replace("0x025525c6", "0x026525c6");
        let (c, note) = decode(149, &benign, "570.148.08").expect("decided");
        assert_eq!(c, Classes::EVENT, "{note}");
        // RLW_SRC_TRACK status 0x8 waits for XID 154.
        let (c, note) = decode(145, SRC_TRACK_V2, "580.82.07").expect("decided");
        assert_eq!(c, Classes::EVENT);
        assert!(
            note.ends_with("RLW_SRC_TRACK ErrorStatus 0x00000008 → XID_154_EVAL"),
            "{note}"
        );
        // A rule for another XID does not match.
        let (_, note) = decode(144, REMAP_V1, "570.148.08").expect("word");
        assert!(note.contains("no rule"), "{note}");
        // A status the row does not list: no rule, the word stands.
        let odd = REMAP_V1.replace("0x00000040", "0x00000400");
        let (c, note) = decode(145, &odd, "570.148.08").expect("word");
        assert_eq!(c, Classes::NVLINK_DEGRADED | Classes::RESET);
        assert!(note.contains("no rule"), "{note}");
    }

    #[test]
    fn without_a_driver_version_or_a_rule_the_kernel_word_stands() {
        let (c, note) = decode(145, REMAP_V1, "").expect("word");
        assert_eq!(c, Classes::NVLINK_DEGRADED | Classes::RESET);
        assert!(note.contains("driver version is not known yet"), "{note}");
        assert_eq!(decode(145, "RLW_REMAP XC1 i0 Link 10", "575.1"), None);
    }

    #[test]
    fn every_rule_fits_its_layout() {
        for r in RULES {
            assert!((144..=150).contains(&r.xid), "{r:?}");
            assert_eq!(r.v1 & !0x3ff, 0, "{r:?}");
            assert_eq!(r.v2 & !0x7f, 0, "{r:?}");
            assert!(!r.statuses.is_empty() || r.otherwise.is_some(), "{r:?}");
        }
    }
}
