//! Layer 2: statements per identity per database, and per database in all,
//! as a GCRA (generic cell rate algorithm): one timestamp per key, a burst
//! of one second's worth, no background task.
//!
//! The counters are in-process; a cluster shares them through the KV in a
//! later step (each node enforces its own share until then).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Check, CheckLayer};
use crate::acl::Acl;
use crate::request::{Refusal, SqlRequest, Stage};

/// Most keys remembered before stale ones are swept.
const SWEEP_AT: usize = 100_000;

/// (database, identity subject or `None` for the database total).
type Key = (Arc<str>, Option<Arc<str>>);

/// Layer 2's check; clones share the counters.
#[derive(Debug, Clone)]
pub struct RateLimit {
    acl: Arc<Acl>,
    state: Arc<Mutex<HashMap<Key, Instant>>>,
}

impl RateLimit {
    /// Limits from each database's `rate_per_identity` and `rate_total`.
    pub fn new(acl: Arc<Acl>) -> Self {
        Self {
            acl,
            state: Arc::default(),
        }
    }

    /// This check as a tower layer (every service it makes shares the
    /// counters).
    pub fn layer(acl: Arc<Acl>) -> CheckLayer<Self> {
        CheckLayer::new(Self::new(acl))
    }

    /// GCRA: admit when the theoretical arrival time is at most one burst
    /// ahead of now. Returns how long to wait when refused.
    fn take(
        &self,
        key: (Arc<str>, Option<Arc<str>>),
        per_second: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let interval = Duration::from_secs(1) / per_second.max(1);
        let burst = Duration::from_secs(1);
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        if next > now + burst {
            return Err(next - (now + burst));
        }
        map.insert(key, next);
        Ok(())
    }

    fn decide(&self, req: &SqlRequest) -> Result<(), Refusal> {
        let Some(db) = self.acl.database(req.database()) else {
            return Ok(());
        };
        if db.rate_per_identity.is_none() && db.rate_total.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let refuse = |wait: Duration, scope: &str| {
            Refusal::new(
                Stage::RateLimit,
                "rate_limited",
                format!(
                    "too many statements {scope}; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            )
        };
        if let Some(rate) = db.rate_per_identity {
            let who: Arc<str> = req.identity().subject().into();
            self.take((db.name.clone(), Some(who)), rate, now)
                .map_err(|w| refuse(w, "from you on this database"))?;
        }
        if let Some(rate) = db.rate_total {
            self.take((db.name.clone(), None), rate, now)
                .map_err(|w| refuse(w, "on this database"))?;
        }
        Ok(())
    }
}

impl Check for RateLimit {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        self.decide(req)
    }
}
