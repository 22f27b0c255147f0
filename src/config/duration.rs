//! Go `time.ParseDuration` grammar ("300ms", "1.5h", "1m30s", "0"), and the
//! reverse for messages. humantime accepts a different grammar, so it is not used.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration {0:?}: expected a number with a unit, such as \"30s\", \"1m30s\" or \"300ms\""
    )]
    Syntax(String),
    #[error("invalid duration {input:?}: missing unit after {number} (units: ns, us, ms, s, m, h)")]
    MissingUnit { input: String, number: String },
    #[error("invalid duration {input:?}: unknown unit {unit:?} (units: ns, us, ms, s, m, h)")]
    UnknownUnit { input: String, unit: String },
    #[error("invalid duration {0:?}: negative durations are not allowed")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses Go's duration syntax. Negative values are refused: no setting of
/// ours means anything with a negative time.
pub fn parse_go(input: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(syntax());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int_part, rest) = s.split_at(int_end);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                after.split_at(end)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_end);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                input: input.to_owned(),
                number: format!(
                    "{int_part}{}{frac_part}",
                    if frac_part.is_empty() { "" } else { "." }
                ),
            });
        }
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let overflow = || DurationError::Overflow(input.to_owned());
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = whole.checked_mul(scale).ok_or_else(overflow)?;
        // Fractions: Go truncates below a nanosecond.
        let mut frac_scale = scale;
        for d in frac_part.chars().filter_map(|c| c.to_digit(10)) {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            value += u128::from(d) * frac_scale;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        if total > i64::MAX as u128 {
            return Err(overflow());
        }
        s = rest;
    }
    if negative && total > 0 {
        return Err(DurationError::Negative(input.to_owned()));
    }
    Ok(Duration::from_nanos(
        u64::try_from(total).map_err(|_| DurationError::Overflow(input.to_owned()))?,
    ))
}

/// Formats like Go's `Duration.String` for whole units ("1m30s", "300ms", "0s").
pub fn format_go(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return trim_frac(nanos, 1_000, "µs");
    }
    if nanos < 1_000_000_000 {
        return trim_frac(nanos, 1_000_000, "ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let sub = d.subsec_nanos();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sub == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac = format!("{sub:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

fn trim_frac(nanos: u128, unit: u128, suffix: &str) -> String {
    let whole = nanos / unit;
    let rest = nanos % unit;
    if rest == 0 {
        return format!("{whole}{suffix}");
    }
    let width = unit.ilog10() as usize;
    let frac = format!("{rest:0width$}");
    format!("{whole}.{}{suffix}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn accepts_go_grammar() {
        assert_eq!(parse_go("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go("300ms"), Ok(ms(300)));
        assert_eq!(parse_go("1.5h"), Ok(ms(5_400_000)));
        assert_eq!(parse_go("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_go("2h45m"), Ok(Duration::from_secs(9900)));
        assert_eq!(parse_go("1µs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_go("1us"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_go(".5s"), Ok(ms(500)));
        assert_eq!(parse_go("1.s"), Ok(ms(1000)));
        assert_eq!(parse_go("+5s"), Ok(ms(5000)));
        assert_eq!(parse_go("-0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_go_refuses_and_negatives() {
        assert!(matches!(
            parse_go("30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse_go("5 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_go("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse_go(""), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_go("."), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_go("s"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_go("-1s"), Err(DurationError::Negative(_))));
        assert!(matches!(
            parse_go("9999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go(Duration::ZERO), "0s");
        assert_eq!(format_go(ms(300)), "300ms");
        assert_eq!(format_go(ms(90_000)), "1m30s");
        assert_eq!(format_go(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_go(ms(1500)), "1.5s");
        assert_eq!(format_go(Duration::from_nanos(30)), "30ns");
        assert_eq!(format_go(Duration::from_micros(1500)), "1.5ms");
    }
}
