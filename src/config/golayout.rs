//! Go reference-time layouts (`Jan _2 15:04:05`, `2006-01-02T15:04:05.999999999-07:00`),
//! as filelog's `timestampFormat` gives them: parsed once into tokens, then
//! used to read timestamps the way Go's `time.ParseInLocation` does (local
//! zone unless the value carries an offset; a layout without a year gets the
//! current one, as NPD does).

use std::time::SystemTime;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    LongYear,
    Year,
    Pm,
    TzName,
    /// `-0700`-style offsets; `z` accepts `Z` for UTC; `colon` and
    /// `seconds` say which parts the layout has.
    Offset {
        z: bool,
        colon: bool,
        minutes: bool,
        seconds: bool,
    },
    /// `.000` (exactly `digits`) or `.999` (optional, any number).
    Fraction {
        digits: usize,
        optional: bool,
    },
}

/// A compiled layout.
#[derive(Clone, Debug)]
pub struct Layout {
    tokens: Vec<Token>,
    has_year: bool,
    local: TimeZone,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl Layout {
    /// Tokenises a Go layout. A layout with no time field at all is refused
    /// (it is a literal string, surely a mistake).
    pub fn new(layout: &str) -> Result<Self, ParseError> {
        let tokens = tokenize(layout);
        if tokens.iter().all(|t| matches!(t, Token::Literal(_))) {
            return Err(ParseError(format!(
                "{layout:?} has no Go reference-time field (write the reference time Mon Jan 2 15:04:05 MST 2006 in the shape of your timestamps)"
            )));
        }
        Ok(Self {
            has_year: tokens
                .iter()
                .any(|t| matches!(t, Token::LongYear | Token::Year)),
            tokens,
            local: TimeZone::try_system().unwrap_or(TimeZone::UTC),
        })
    }

    /// Reads `value` in the local zone; `now` supplies a missing year.
    pub fn parse(&self, value: &str, now: SystemTime) -> Result<SystemTime, ParseError> {
        let mut p = Parts::default();
        let mut rest = value;
        let mut i = 0;
        while i < self.tokens.len() {
            let token = &self.tokens[i];
            rest = p.take(token, rest).ok_or_else(|| {
                ParseError(format!(
                    "{value:?} does not match the layout at {:?}",
                    rest.chars().take(12).collect::<String>()
                ))
            })?;
            // Go reads a fraction after the seconds even when the layout has none.
            if matches!(token, Token::Second | Token::ZeroSecond)
                && !matches!(self.tokens.get(i + 1), Some(Token::Fraction { .. }))
                && rest.len() > 1
                && rest.as_bytes()[0] == b'.'
                && rest.as_bytes()[1].is_ascii_digit()
            {
                rest = p.fraction(&rest[1..], 0, true).unwrap_or(rest);
            }
            i += 1;
        }
        if !rest.is_empty() {
            return Err(ParseError(format!(
                "{value:?}: extra text {rest:?} after the layout"
            )));
        }
        let now_ts = jiff::Timestamp::try_from(now).map_err(|e| ParseError(e.to_string()))?;
        let year = if self.has_year {
            p.year
        } else {
            now_ts.to_zoned_datetime(self.local.clone()).year()
        };
        let hour = match p.pm {
            Some(true) if p.hour < 12 => p.hour + 12,
            Some(false) if p.hour == 12 => 0,
            _ => p.hour,
        };
        let (month, day) = match p.year_day {
            Some(yd) => {
                let first =
                    jiff::civil::Date::new(year, 1, 1).map_err(|e| ParseError(e.to_string()))?;
                let d = first
                    .checked_add(jiff::Span::new().days(i64::from(yd) - 1))
                    .map_err(|e| ParseError(e.to_string()))?;
                (d.month(), d.day())
            }
            None => (p.month.unwrap_or(1), p.day.unwrap_or(1)),
        };
        let dt = DateTime::new(year, month, day, hour, p.minute, p.second, p.nanos)
            .map_err(|e| ParseError(format!("{value:?}: {e}")))?;
        let tz = match p.offset {
            Some(secs) => {
                TimeZone::fixed(Offset::from_seconds(secs).map_err(|e| ParseError(e.to_string()))?)
            }
            None => self.local.clone(),
        };
        let mut ts = dt
            .to_zoned_datetime(tz)
            .map_err(|e| ParseError(format!("{value:?}: {e}")))?
            .timestamp();
        // A year-less line from December read in January is last year's.
        if !self.has_year
            && ts > now_ts + jiff::SignedDuration::from_hours(24 * 2)
            && let Ok(dt) = dt.checked_sub(jiff::Span::new().years(1))
            && let Ok(z) = dt.to_zoned_datetime(self.local.clone())
        {
            ts = z.timestamp();
        }
        SystemTime::try_from(ts).map_err(|e| ParseError(e.to_string()))
    }
}

#[derive(Debug, Default)]
struct Parts {
    year: i16,
    month: Option<i8>,
    day: Option<i8>,
    year_day: Option<i16>,
    hour: i8,
    minute: i8,
    second: i8,
    nanos: i32,
    pm: Option<bool>,
    offset: Option<i32>,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// Up to `max` digits, at least `min`.
fn digits(s: &str, min: usize, max: usize) -> Option<(i64, &str)> {
    let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
    if n < min {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

fn prefix_ci<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    head.eq_ignore_ascii_case(word).then(|| &s[word.len()..])
}

fn small<T: TryFrom<i64>>(v: i64, max: i64) -> Option<T> {
    if v > max {
        return None;
    }
    T::try_from(v).ok()
}

impl Parts {
    fn take<'a>(&mut self, token: &Token, s: &'a str) -> Option<&'a str> {
        Some(match token {
            Token::Literal(l) => s.strip_prefix(l.as_str())?,
            Token::LongMonth | Token::Month => {
                let (i, rest) = MONTHS.iter().enumerate().find_map(|(i, m)| {
                    let name = if *token == Token::Month { &m[..3] } else { m };
                    prefix_ci(s, name).map(|r| (i, r))
                })?;
                self.month = Some(i8::try_from(i + 1).ok()?);
                rest
            }
            Token::LongWeekDay | Token::WeekDay => DAYS.iter().find_map(|d| {
                let name = if *token == Token::WeekDay { &d[..3] } else { d };
                prefix_ci(s, name)
            })?,
            Token::NumMonth | Token::ZeroMonth => {
                let (v, rest) = digits(s, if *token == Token::ZeroMonth { 2 } else { 1 }, 2)?;
                self.month = Some(small(v, 12)?);
                rest
            }
            Token::Day | Token::UnderDay | Token::ZeroDay => {
                let s = if *token == Token::UnderDay {
                    s.strip_prefix(' ').unwrap_or(s)
                } else {
                    s
                };
                let (v, rest) = digits(s, if *token == Token::ZeroDay { 2 } else { 1 }, 2)?;
                self.day = Some(small(v, 31)?);
                rest
            }
            Token::UnderYearDay | Token::ZeroYearDay => {
                let s = if *token == Token::UnderYearDay {
                    s.trim_start_matches(' ')
                } else {
                    s
                };
                let (v, rest) = digits(s, if *token == Token::ZeroYearDay { 3 } else { 1 }, 3)?;
                self.year_day = Some(small(v, 366)?);
                rest
            }
            Token::Hour => {
                let (v, rest) = digits(s, 1, 2)?;
                self.hour = small(v, 23)?;
                rest
            }
            Token::Hour12 | Token::ZeroHour12 => {
                let (v, rest) = digits(s, if *token == Token::ZeroHour12 { 2 } else { 1 }, 2)?;
                self.hour = small(v, 12)?;
                rest
            }
            Token::Minute | Token::ZeroMinute => {
                let (v, rest) = digits(s, if *token == Token::ZeroMinute { 2 } else { 1 }, 2)?;
                self.minute = small(v, 59)?;
                rest
            }
            Token::Second | Token::ZeroSecond => {
                let (v, rest) = digits(s, if *token == Token::ZeroSecond { 2 } else { 1 }, 2)?;
                self.second = small(v, 59)?;
                rest
            }
            Token::LongYear => {
                let (v, rest) = digits(s, 4, 4)?;
                self.year = small(v, 9999)?;
                rest
            }
            Token::Year => {
                let (v, rest) = digits(s, 2, 2)?;
                self.year = small(if v >= 69 { 1900 + v } else { 2000 + v }, 9999)?;
                rest
            }
            Token::Pm => {
                if let Some(r) = prefix_ci(s, "PM") {
                    self.pm = Some(true);
                    r
                } else {
                    self.pm = Some(false);
                    prefix_ci(s, "AM")?
                }
            }
            Token::TzName => {
                let n = s.bytes().take_while(u8::is_ascii_uppercase).count();
                if !(3..=5).contains(&n) {
                    return None;
                }
                if matches!(&s[..n], "UTC" | "GMT") {
                    self.offset = Some(0);
                }
                &s[n..]
            }
            Token::Offset {
                z,
                colon,
                minutes,
                seconds,
            } => {
                if *z && let Some(r) = s.strip_prefix('Z') {
                    self.offset = Some(0);
                    return Some(r);
                }
                let sign = match s.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (h, mut rest) = digits(&s[1..], 2, 2)?;
                let mut total = h * 3600;
                for (present, scale) in [(*minutes, 60), (*seconds, 1)] {
                    if !present {
                        continue;
                    }
                    if *colon {
                        rest = rest.strip_prefix(':')?;
                    }
                    let (v, r) = digits(rest, 2, 2)?;
                    total += v * scale;
                    rest = r;
                }
                self.offset = Some(i32::try_from(sign * total).ok()?);
                rest
            }
            Token::Fraction { digits, optional } => {
                let Some(after) = s.strip_prefix(['.', ',']) else {
                    return optional.then_some(s);
                };
                self.fraction(after, *digits, *optional)?
            }
        })
    }

    /// Digits after the separator: exactly `want`, or any number when optional.
    fn fraction<'a>(&mut self, s: &'a str, want: usize, optional: bool) -> Option<&'a str> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if (!optional && n != want) || n == 0 {
            return None;
        }
        let mut nanos = 0i64;
        for (i, b) in s.bytes().take(n.min(9)).enumerate() {
            nanos += i64::from(b - b'0') * 10i64.pow(8 - u32::try_from(i).ok()?);
        }
        self.nanos = i32::try_from(nanos).ok()?;
        Some(&s[n..])
    }
}

/// Splits a layout into fields and literals, with Go's precedence
/// (`time.nextStdChunk`).
fn tokenize(layout: &str) -> Vec<Token> {
    let b = layout.as_bytes();
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    let starts = |i: usize, p: &str| layout[i..].starts_with(p);
    while i < b.len() {
        let (token, len) = match b[i] {
            b'J' if starts(i, "January") => (Some(Token::LongMonth), 7),
            b'J' if starts(i, "Jan") => (Some(Token::Month), 3),
            b'M' if starts(i, "Monday") => (Some(Token::LongWeekDay), 6),
            b'M' if starts(i, "Mon") => (Some(Token::WeekDay), 3),
            b'M' if starts(i, "MST") => (Some(Token::TzName), 3),
            b'0' if starts(i, "002") => (Some(Token::ZeroYearDay), 3),
            b'0' if i + 1 < b.len() && (b'1'..=b'6').contains(&b[i + 1]) => (
                Some(match b[i + 1] {
                    b'1' => Token::ZeroMonth,
                    b'2' => Token::ZeroDay,
                    b'3' => Token::ZeroHour12,
                    b'4' => Token::ZeroMinute,
                    b'5' => Token::ZeroSecond,
                    _ => Token::Year,
                }),
                2,
            ),
            b'1' if starts(i, "15") => (Some(Token::Hour), 2),
            b'1' => (Some(Token::NumMonth), 1),
            b'2' if starts(i, "2006") => (Some(Token::LongYear), 4),
            b'2' => (Some(Token::Day), 1),
            b'_' if starts(i, "__2") => (Some(Token::UnderYearDay), 3),
            b'_' if starts(i, "_2") && !starts(i, "_2006") => (Some(Token::UnderDay), 2),
            b'3' => (Some(Token::Hour12), 1),
            b'4' => (Some(Token::Minute), 1),
            b'5' => (Some(Token::Second), 1),
            b'P' if starts(i, "PM") => (Some(Token::Pm), 2),
            b'p' if starts(i, "pm") => (Some(Token::Pm), 2),
            b'-' | b'Z' => {
                let z = b[i] == b'Z';
                let forms: [(&str, bool, bool, bool); 5] = [
                    ("07:00:00", true, true, true),
                    ("070000", false, true, true),
                    ("07:00", true, true, false),
                    ("0700", false, true, false),
                    ("07", false, false, false),
                ];
                forms.iter().find(|(f, ..)| starts(i + 1, f)).map_or(
                    (None, 1),
                    |(f, colon, minutes, seconds)| {
                        (
                            Some(Token::Offset {
                                z,
                                colon: *colon,
                                minutes: *minutes,
                                seconds: *seconds,
                            }),
                            1 + f.len(),
                        )
                    },
                )
            }
            b'.' | b',' if i + 1 < b.len() && (b[i + 1] == b'0' || b[i + 1] == b'9') => {
                let c = b[i + 1];
                let n = b[i + 1..].iter().take_while(|&&x| x == c).count();
                if b.get(i + 1 + n).is_some_and(u8::is_ascii_digit) {
                    (None, 1)
                } else {
                    (
                        Some(Token::Fraction {
                            digits: n,
                            optional: c == b'9',
                        }),
                        1 + n,
                    )
                }
            }
            _ => (None, 1),
        };
        match token {
            Some(t) => {
                if !lit.is_empty() {
                    out.push(Token::Literal(std::mem::take(&mut lit)));
                }
                out.push(t);
                i += len;
            }
            None => {
                // One whole character (layouts may hold any UTF-8).
                let ch = layout[i..].chars().next().unwrap_or(' ');
                lit.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    if !lit.is_empty() {
        out.push(Token::Literal(lit));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn utc(layout: &str) -> Layout {
        let mut l = Layout::new(layout).expect("layout");
        l.local = TimeZone::UTC;
        l
    }

    fn at(s: &str) -> SystemTime {
        SystemTime::try_from(s.parse::<jiff::Timestamp>().expect("timestamp")).expect("in range")
    }

    #[test]
    fn syslog_layout_without_a_year() {
        let l = utc("Jan _2 15:04:05");
        let now = at("2026-11-27T10:00:00Z");
        assert_eq!(
            l.parse("Nov  7 09:08:07", now),
            Ok(at("2026-11-07T09:08:07Z"))
        );
        assert_eq!(
            l.parse("Nov 17 09:08:07", now),
            Ok(at("2026-11-17T09:08:07Z"))
        );
        // Read in January, a December line is last year's.
        assert_eq!(
            l.parse("Dec 31 23:59:59", at("2027-01-01T00:00:10Z")),
            Ok(at("2026-12-31T23:59:59Z"))
        );
        assert!(l.parse("Nov 7 09:08", now).is_err());
        assert!(l.parse("Foo  7 09:08:07", now).is_err());
    }

    #[test]
    fn rfc3339_with_nanoseconds_and_offsets() {
        let l = utc("2006-01-02T15:04:05.999999999-07:00");
        let now = at("2026-11-27T10:00:00Z");
        assert_eq!(
            l.parse("2026-11-27T09:00:00.5+01:00", now),
            Ok(at("2026-11-27T08:00:00.5Z"))
        );
        assert_eq!(
            l.parse("2026-11-27T09:00:00-02:30", now),
            Ok(at("2026-11-27T11:30:00Z"))
        );
        let z = utc("2006-01-02T15:04:05Z07:00");
        assert_eq!(
            z.parse("2026-11-27T09:00:00Z", now),
            Ok(at("2026-11-27T09:00:00Z"))
        );
        // A fraction after the seconds is read even without one in the layout.
        assert_eq!(
            z.parse("2026-11-27T09:00:00.250Z", now)
                .map(|t| t.duration_since(at("2026-11-27T09:00:00Z")).ok()),
            Ok(Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn twelve_hour_clock_names_and_fixed_fractions() {
        let l = utc("Monday, 02-Jan-06 03:04:05.000 PM MST");
        let now = at("2026-11-27T10:00:00Z");
        assert_eq!(
            l.parse("Friday, 27-Nov-26 01:02:03.045 PM UTC", now),
            Ok(at("2026-11-27T13:02:03.045Z"))
        );
        assert!(
            l.parse("Friday, 27-Nov-26 01:02:03.04 PM UTC", now)
                .is_err()
        );
        assert!(Layout::new("no fields here").is_err());
    }
}
