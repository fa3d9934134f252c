//! Time as a value.
//!
//! Libraries in Hexon never read the wall clock on their own: every decision
//! takes `now` as a parameter so tests can pin time and so a request is
//! evaluated against one instant. Only the edges (binaries, layers) call
//! [`UnixTime::now`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch (UTC). Second precision is what HTTP
/// signatures (`created`, `expires`) and JWTs (`iat`, `exp`) carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(i64);

impl UnixTime {
    /// The epoch.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// From seconds since the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        UnixTime(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_secs(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Call this at the edge and pass the value in.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => UnixTime(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            // A clock before 1970 is a broken clock; treat it as the epoch so
            // every freshness check fails closed rather than wrapping.
            Err(_) => UnixTime(0),
        }
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        UnixTime(self.0.saturating_add(secs))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        UnixTime(self.0.saturating_sub(secs))
    }

    /// How long ago `earlier` was, as seen from `self`; zero if `earlier` is in the future.
    pub fn since(self, earlier: UnixTime) -> Duration {
        let diff = self.0.saturating_sub(earlier.0);
        Duration::from_secs(u64::try_from(diff).unwrap_or(0))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = UnixTime::from_secs(i64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)).as_secs(),
            i64::MAX
        );
        let t = UnixTime::from_secs(i64::MIN + 1);
        assert_eq!(
            t.saturating_sub(Duration::from_secs(10)).as_secs(),
            i64::MIN
        );
        assert_eq!(
            UnixTime::from_secs(5).since(UnixTime::from_secs(10)),
            Duration::ZERO
        );
        assert_eq!(
            UnixTime::from_secs(10).since(UnixTime::from_secs(4)),
            Duration::from_secs(6)
        );
    }
}
