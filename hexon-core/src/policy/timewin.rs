//! Time windows: days and wall-clock hours in an IANA time zone.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::error::{CompileErrorKind, Errors, trunc};
use super::spec::TimeWindowSpec;
use crate::time::UnixTime;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A compiled time window. Times are wall-clock minutes of the day in `tz`,
/// so on a DST change day the window follows the local clock.
#[derive(Clone, Debug)]
pub(crate) struct TimeWindow {
    /// Bit `d` set: day `d` (0 = Monday) is in the window.
    days: u8,
    /// Start, minutes since local midnight (inclusive).
    from: u16,
    /// End, minutes since local midnight (exclusive), up to 1440.
    to: u16,
    tz: TimeZone,
    tz_name: Box<str>,
}

fn day_index(s: &str) -> Option<u8> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == s)
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_days(s: &str) -> Option<u8> {
    match s.split_once('-') {
        None => day_index(s).map(|d| 1 << d),
        Some((a, b)) => {
            let (a, b) = (day_index(a)?, day_index(b)?);
            let mut mask = 0u8;
            let mut d = a;
            loop {
                mask |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
            Some(mask)
        }
    }
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, &'static str> {
    let b = s.as_bytes();
    let &[h1, h2, b':', m1, m2] = b else {
        return Err("use HH:MM, e.g. \"09:00\"");
    };
    let digit = |c: u8| {
        if c.is_ascii_digit() {
            Ok(u16::from(c - b'0'))
        } else {
            Err("use HH:MM, e.g. \"09:00\"")
        }
    };
    let h = digit(h1)? * 10 + digit(h2)?;
    let m = digit(m1)? * 10 + digit(m2)?;
    if m > 59 {
        return Err("minutes must be 00-59");
    }
    if h == 24 && m == 0 {
        return if allow_24 {
            Ok(1440)
        } else {
            Err("24:00 is only valid as `to`")
        };
    }
    if h > 23 {
        return Err("hours must be 00-23 (or 24:00 for `to`)");
    }
    Ok(h * 60 + m)
}

impl TimeWindow {
    pub(crate) fn compile(spec: &TimeWindowSpec, loc: &str, errs: &mut Errors) -> Option<Self> {
        let before = errs.0.len();
        let mut days = 0u8;
        for (i, d) in spec.days.iter().enumerate() {
            match parse_days(d) {
                Some(m) => days |= m,
                None => errs.push(
                    format_args!("{loc}.days[{i}]"),
                    CompileErrorKind::InvalidDay(trunc(d)),
                ),
            }
        }
        if spec.days.is_empty() {
            days = 0x7f;
        }
        let from = parse_hhmm(&spec.from, false)
            .map_err(|why| {
                errs.push(
                    format_args!("{loc}.from"),
                    CompileErrorKind::InvalidTimeOfDay {
                        input: trunc(&spec.from),
                        why,
                    },
                )
            })
            .ok();
        let to = parse_hhmm(&spec.to, true)
            .map_err(|why| {
                errs.push(
                    format_args!("{loc}.to"),
                    CompileErrorKind::InvalidTimeOfDay {
                        input: trunc(&spec.to),
                        why,
                    },
                )
            })
            .ok();
        if let (Some(f), Some(t)) = (from, to) {
            if f == t {
                errs.push(
                    format_args!("{loc}.to"),
                    CompileErrorKind::EmptyTimeWindow(trunc(&spec.to)),
                );
            }
        }
        let tz = TimeZone::get(&spec.tz)
            .map_err(|_| {
                errs.push(
                    format_args!("{loc}.tz"),
                    CompileErrorKind::InvalidTimeZone(trunc(&spec.tz)),
                )
            })
            .ok();
        if errs.0.len() != before {
            return None;
        }
        Some(TimeWindow {
            days,
            from: from?,
            to: to?,
            tz: tz?,
            tz_name: spec.tz.as_str().into(),
        })
    }

    /// Whether `now` falls in the window.
    pub(crate) fn contains(&self, now: UnixTime) -> bool {
        let Ok(ts) = Timestamp::from_second(now.as_secs()) else {
            return false; // outside jiff's range: fail closed
        };
        let dt = self.tz.to_datetime(ts);
        let day = u8::try_from(dt.weekday().to_monday_zero_offset()).unwrap_or(0);
        let minute = u16::try_from(i16::from(dt.hour()) * 60 + i16::from(dt.minute())).unwrap_or(0);
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from < self.to {
            on(day) && self.from <= minute && minute < self.to
        } else {
            // Spans midnight: the named day is the day the window starts.
            (on(day) && minute >= self.from) || (on((day + 6) % 7) && minute < self.to)
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days == 0x7f {
            f.write_str("every day")?;
        } else {
            let mut first = true;
            for (i, d) in DAYS.iter().enumerate() {
                if self.days & (1 << i) != 0 {
                    if !first {
                        f.write_str(",")?;
                    }
                    f.write_str(d)?;
                    first = false;
                }
            }
        }
        write!(
            f,
            " {:02}:{:02}-{:02}:{:02} {}",
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60,
            self.tz_name
        )
    }
}
