//! Layer 2: statements per identity per database, and per database in all,
//! as a GCRA (generic cell rate algorithm): one timestamp per key, a burst
//! of one second's worth, no background task.
//!
//! The counters are in-process; a cluster shares them through the KV in a
//! later step (each node enforces its own share until then).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::acl::Acl;
use crate::request::{Admitted, Refusal, SqlRequest, Stage};

/// Most keys remembered before stale ones are swept.
const SWEEP_AT: usize = 100_000;

/// (database, identity subject or `None` for the database total).
type Key = (Arc<str>, Option<Arc<str>>);

/// The rate-limit layer (state shared by every service it makes).
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

    fn check(&self, req: &SqlRequest) -> Result<(), Refusal> {
        let Some(db) = self.acl.database(req.database()) else {
            return Ok(());
        };
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

impl<S> Layer<S> for RateLimit {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            limit: self.clone(),
            inner,
        }
    }
}

/// The service [`RateLimit`] makes.
#[derive(Debug, Clone)]
pub struct RateLimitService<S> {
    limit: RateLimit,
    inner: S,
}

impl<S> RateLimitService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<SqlRequest> for RateLimitService<S>
where
    S: Service<SqlRequest, Response = Admitted, Error = Refusal>,
{
    type Response = Admitted;
    type Error = Refusal;
    type Future = Either<Ready<Result<Admitted, Refusal>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: SqlRequest) -> Self::Future {
        match self.limit.check(&req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(r) => Either::Left(ready(Err(r))),
        }
    }
}
