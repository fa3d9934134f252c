//! Verdicts cached by (database, role, dialect, origin, statement text), so a
//! repeated statement skips the parse and every layer below.
//!
//! The key holds the exact text, not a hash of it, and an admitted verdict
//! carries the canonical text the layers approved: a cache hit can only ever
//! send what was checked.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use crate::acl::Acl;
use crate::dialect::Dialect;
use crate::request::{Admitted, Origin, Refusal, SqlRequest};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    database: Arc<str>,
    role: Arc<str>,
    dialect: Dialect,
    origin: Origin,
    sql: Arc<str>,
}

/// The shared cache of verdicts.
pub type VerdictCache = quick_cache::sync::Cache<KeyOpaque, Result<Admitted, Refusal>>;

/// The cache key (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyOpaque(Key);

/// The verdict-cache layer.
#[derive(Debug, Clone)]
pub struct VerdictCacheLayer {
    acl: Arc<Acl>,
    cache: Option<Arc<VerdictCache>>,
}

impl VerdictCacheLayer {
    /// A cache of `capacity` verdicts (0: pass everything through).
    pub fn new(acl: Arc<Acl>, capacity: usize) -> Self {
        Self {
            acl,
            cache: (capacity > 0).then(|| Arc::new(VerdictCache::new(capacity))),
        }
    }
}

impl<S> Layer<S> for VerdictCacheLayer {
    type Service = VerdictCacheService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        VerdictCacheService {
            acl: self.acl.clone(),
            cache: self.cache.clone(),
            inner,
        }
    }
}

/// The service [`VerdictCacheLayer`] makes.
#[derive(Debug, Clone)]
pub struct VerdictCacheService<S> {
    acl: Arc<Acl>,
    cache: Option<Arc<VerdictCache>>,
    inner: S,
}

impl<S> VerdictCacheService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<SqlRequest> for VerdictCacheService<S>
where
    S: Service<SqlRequest, Response = Admitted, Error = Refusal>,
    S::Future: Unpin,
{
    type Response = Admitted;
    type Error = Refusal;
    type Future = CachedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: SqlRequest) -> Self::Future {
        let Some(cache) = &self.cache else {
            return Either::Right(self.inner.call(req));
        };
        // No role: nothing to key on; the layers below refuse it.
        let Some(role) = self.acl.role_for(req.identity(), req.database()) else {
            return Either::Right(self.inner.call(req));
        };
        let key = KeyOpaque(Key {
            database: req.database().into(),
            role: role.name.clone(),
            dialect: req.dialect(),
            origin: req.origin(),
            sql: req.shared_sql(),
        });
        if let Some(v) = cache.get(&key) {
            return Either::Left(ready(v));
        }
        // The layers of this crate decide synchronously, so the inner future
        // is ready at its first poll and its verdict can be cached here. An
        // inner service that really waits is passed through uncached.
        let mut fut = self.inner.call(req);
        match super::poll_once(&mut fut) {
            Poll::Ready(verdict) => {
                cache.insert(key, verdict.clone());
                Either::Left(ready(verdict))
            }
            Poll::Pending => Either::Right(fut),
        }
    }
}

/// Either a cached verdict or the inner future (for inner services that are
/// not immediately ready).
pub type CachedFuture<F> = Either<Ready<Result<Admitted, Refusal>>, F>;
