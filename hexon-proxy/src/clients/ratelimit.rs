//! Per-client rate limits: `rate_limit_per_minute` of an API client,
//! enforced with GCRA (the generic cell rate algorithm) over the shared KV
//! store, so every node of a cluster counts against the same budget.
//!
//! GCRA keeps one number per client, the theoretical arrival time (TAT) of
//! its next request. A request at `now` passes while `TAT - now` is within
//! the burst tolerance (one minute's worth of requests), and moves the TAT
//! one emission interval (`60 s / limit`) on. It is a sliding window without
//! window edges: a client cannot double its rate by straddling a minute.
//! The update is a compare-and-set, retried a few times under contention;
//! a store that does not answer refuses the request (`503`), a limit that is
//! exceeded is a `429` with `Retry-After`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hexon_core::Identity;
use hexon_core::store::{KvStore, Revision};
use http::{HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::ClientRegistry;
use crate::body::BoxBody;
use crate::ext::RequestId;
use crate::forward_auth::X_AUTH_REASON;
use crate::respond;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the limit.
    Allowed,
    /// Over it: retry after this long.
    Limited(Duration),
    /// The store did not answer.
    Unavailable,
}

const KEY_PREFIX: &str = "client.";
const RETRIES: usize = 4;

/// The GCRA step: with the stored TAT (ms) and `now` (ms), the new TAT if
/// the request passes, or how long to wait.
pub fn gcra(tat: Option<u64>, now: u64, per_minute: u32) -> Result<u64, Duration> {
    let per_minute = u64::from(per_minute.max(1));
    let interval = 60_000u64.div_ceil(per_minute);
    // One minute's worth of requests may come at once.
    let tolerance = interval.saturating_mul(per_minute - 1);
    let tat = tat.unwrap_or(now).max(now);
    let allow_at = tat.saturating_sub(tolerance);
    if now < allow_at {
        return Err(Duration::from_millis(allow_at - now));
    }
    Ok(tat.saturating_add(interval))
}

/// Check and count one request of `client` allowed `per_minute`.
pub async fn check(kv: &dyn KvStore, client: &str, per_minute: u32, now_ms: u64) -> RateDecision {
    let key = format!("{KEY_PREFIX}{client}");
    let ttl = Duration::from_secs(120);
    for _ in 0..RETRIES {
        let current = match kv.get(&key).await {
            Ok(e) => e,
            Err(_) => return RateDecision::Unavailable,
        };
        let (tat, revision): (Option<u64>, Option<Revision>) = match &current {
            Some(e) => (
                <[u8; 8]>::try_from(e.value.as_slice())
                    .ok()
                    .map(u64::from_be_bytes),
                Some(e.revision),
            ),
            None => (None, None),
        };
        let next = match gcra(tat, now_ms, per_minute) {
            Ok(n) => n,
            Err(wait) => return RateDecision::Limited(wait),
        };
        let value = next.to_be_bytes();
        let written = match revision {
            Some(r) => kv.compare_and_set(&key, r, &value, ttl).await,
            None => kv.put_if_absent(&key, &value, ttl).await,
        };
        match written {
            Ok(Some(_)) => return RateDecision::Allowed,
            // Another request (or node) moved it first: read again.
            Ok(None) => {}
            Err(_) => return RateDecision::Unavailable,
        }
    }
    // Still contended: count it as over the limit rather than let it through.
    RateDecision::Limited(Duration::from_secs(1))
}

/// Enforces API clients' rate limits. Place it after authentication.
#[derive(Clone, Debug)]
pub struct ClientRateLimitLayer {
    registry: ClientRegistry,
    kv: Arc<dyn KvStore>,
}

impl ClientRateLimitLayer {
    /// Limits from `registry`, counters in `kv`.
    pub fn new(registry: ClientRegistry, kv: Arc<dyn KvStore>) -> Self {
        ClientRateLimitLayer { registry, kv }
    }
}

impl<S> Layer<S> for ClientRateLimitLayer {
    type Service = ClientRateLimit<S>;
    fn layer(&self, inner: S) -> ClientRateLimit<S> {
        ClientRateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ClientRateLimitLayer`].
#[derive(Clone, Debug)]
pub struct ClientRateLimit<S> {
    inner: S,
    layer: ClientRateLimitLayer,
}

fn limited_client(identity: &Identity, registry: &ClientRegistry) -> Option<(String, u32)> {
    if !super::is_api_client_login(identity) {
        return None;
    }
    let table = registry.load();
    let entry = table.client(identity.subject())?;
    entry
        .record
        .rate_limit_per_minute
        .map(|n| (entry.record.id.clone(), n))
}

impl<S, B> Service<Request<B>> for ClientRateLimit<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = req
            .extensions()
            .get::<Identity>()
            .and_then(|i| limited_client(i, &self.layer.registry));
        let Some((client, per_minute)) = limit else {
            return crate::body::pass(self.inner.call(req));
        };
        let mut inner = crate::body::take_ready(&mut self.inner);
        let kv = self.layer.kv.clone();
        crate::body::own(async move {
            let now_ms = u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX);
            let decision = check(kv.as_ref(), &client, per_minute, now_ms).await;
            let id = req.extensions().get::<RequestId>();
            let flavor = respond::Flavor::of(req.headers());
            match decision {
                RateDecision::Allowed => inner.call(req).await,
                RateDecision::Limited(wait) => {
                    tracing::info!(client, per_minute, "API client over its rate limit");
                    let mut res = respond::error(StatusCode::TOO_MANY_REQUESTS, id, flavor);
                    let secs = wait.as_millis().div_ceil(1000).max(1);
                    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                        res.headers_mut().insert(http::header::RETRY_AFTER, v);
                    }
                    res.headers_mut()
                        .insert(X_AUTH_REASON, HeaderValue::from_static("rate_limited"));
                    Ok(res)
                }
                RateDecision::Unavailable => {
                    tracing::warn!(client, "rate-limit store did not answer; request refused");
                    let mut res = respond::error(StatusCode::SERVICE_UNAVAILABLE, id, flavor);
                    res.headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    Ok(res)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_minute_of_burst_then_the_rate() {
        // 60 per minute: an interval of 1 s, 60 at once, then one a second.
        let mut tat = None;
        let now = 1_000_000;
        for i in 0..60 {
            tat = Some(
                gcra(tat, now, 60).unwrap_or_else(|w| panic!("request {i} limited for {w:?}")),
            );
        }
        let wait = gcra(tat, now, 60).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(gcra(tat, now + 999, 60).is_err());
        let t = gcra(tat, now + 1000, 60).unwrap();
        assert!(gcra(Some(t), now + 1000, 60).is_err());
        // Idle for a minute: the whole burst is back.
        let later = now + 61_000 + 60_000;
        let mut tat = Some(t);
        for _ in 0..60 {
            tat = Some(gcra(tat, later, 60).unwrap());
        }
        assert!(gcra(tat, later, 60).is_err());
        // A limit of 1 per minute: one now, the next a minute later.
        let t = gcra(None, now, 1).unwrap();
        assert_eq!(
            gcra(Some(t), now + 1, 1).unwrap_err(),
            Duration::from_millis(59_999)
        );
        assert!(gcra(Some(t), now + 60_000, 1).is_ok());
        // Zero is treated as one (never a division by zero).
        assert!(gcra(None, now, 0).is_ok());
    }

    #[tokio::test]
    async fn counts_are_shared_through_the_store() {
        let kv = hexon_core::store::MemoryKv::new();
        let now = 5_000_000;
        for _ in 0..3 {
            assert_eq!(check(&kv, "c", 3, now).await, RateDecision::Allowed);
        }
        assert!(matches!(
            check(&kv, "c", 3, now).await,
            RateDecision::Limited(_)
        ));
        // Another client has its own budget.
        assert_eq!(check(&kv, "d", 3, now).await, RateDecision::Allowed);
        // Garbage in the store is read as "no state" and overwritten by CAS.
        kv.put("client.e", b"xx", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(check(&kv, "e", 3, now).await, RateDecision::Allowed);
    }
}
