//! Human durations in configuration: `90s`, `15m`, `1h30m`, `7d`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way operators write it (`15m`, `1h30m`, `45s`, `7d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (write e.g. \"90s\", \"15m\", \"1h30m\", \"7d\")")]
pub struct DurationError {
    /// The input, truncated.
    pub input: String,
    /// What is wrong.
    pub why: &'static str,
}

impl HumanDuration {
    /// Parse `<number><unit>` groups, units `s`, `m`, `h`, `d`. At most 100 years.
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        let err = |why| DurationError {
            input: s.chars().take(40).collect(),
            why,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut total: u64 = 0;
        let mut num: Option<u64> = None;
        for c in s.chars() {
            if let Some(d) = c.to_digit(10) {
                let n = num
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)));
                num = Some(n.ok_or_else(|| err("too large"))?);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(err("unknown unit; use s, m, h or d")),
            };
            let n = num
                .take()
                .ok_or_else(|| err("a unit needs a number before it"))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("too large"))?;
        }
        if num.is_some() {
            return Err(err("a number needs a unit after it"));
        }
        if total > 100 * 365 * 86_400 {
            return Err(err("too large"));
        }
        Ok(HumanDuration(Duration::from_secs(total)))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        if s == 0 {
            return f.write_str("0s");
        }
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= len {
                write!(f, "{}{unit}", s / len)?;
                s %= len;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HumanDuration::parse(s)
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (s, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("1h30m", 5400),
            ("7d", 604_800),
            ("0s", 0),
        ] {
            let d = HumanDuration::parse(s).unwrap();
            assert_eq!(d.get().as_secs(), secs, "{s}");
        }
        assert_eq!(HumanDuration::parse("90s").unwrap().to_string(), "1m30s");
        assert_eq!(HumanDuration::parse("1d1s").unwrap().to_string(), "1d1s");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "15",
            "m",
            "1x",
            "-1s",
            "1.5h",
            "99999999999999999999s",
            "40000d",
            "1 h",
        ] {
            assert!(HumanDuration::parse(s).is_err(), "{s}");
        }
    }
}
