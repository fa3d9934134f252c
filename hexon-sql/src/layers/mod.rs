//! The pipeline's layers, each a tower [`Layer`] over
//! `Service<SqlRequest, Response = Admitted, Error = Refusal>`.
//!
//! Every layer has the same shape: a [`Check`] (a small value holding the
//! ACL) wrapped in [`CheckLayer`]. A check looks at the request (and its
//! shared parse) and either lets it on or refuses it; the bottom of the stack
//! is [`Admit`], which turns a request every layer let through into an
//! [`Admitted`] statement. [`Pipeline`] assembles them in order.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use crate::acl::Acl;
use crate::analysis::{Analysis, ParseLimits};
use crate::request::{Admitted, Refusal, SqlRequest, Stage};

mod cache;
mod checks;
mod rate_limit;
mod shape;

pub use cache::{CachedFuture, KeyOpaque, VerdictCache, VerdictCacheLayer, VerdictCacheService};
pub use checks::{
    Complexity, DatabaseAccess, Limit, LimitAnnotation, Pattern, ReadOnly, TablePermission,
    Validation,
};
pub use rate_limit::RateLimit;

/// One decision of the pipeline, as a value a [`CheckLayer`] runs.
pub trait Check: Clone {
    /// Refuse the request, or let it on (possibly annotating it).
    ///
    /// # Errors
    /// The refusal, naming the stage.
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal>;
}

/// A tower layer running one [`Check`] before the inner service.
#[derive(Debug, Clone)]
pub struct CheckLayer<C> {
    check: C,
}

impl<C> CheckLayer<C> {
    /// A layer running `check`.
    pub fn new(check: C) -> Self {
        Self { check }
    }
}

impl<C: Check, S> Layer<S> for CheckLayer<C> {
    type Service = CheckService<C, S>;
    fn layer(&self, inner: S) -> Self::Service {
        CheckService {
            check: self.check.clone(),
            inner,
        }
    }
}

/// The service a [`CheckLayer`] makes.
#[derive(Debug, Clone)]
pub struct CheckService<C, S> {
    check: C,
    inner: S,
}

impl<C, S> CheckService<C, S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<C, S> Service<SqlRequest> for CheckService<C, S>
where
    C: Check,
    S: Service<SqlRequest, Response = Admitted, Error = Refusal>,
{
    type Response = Admitted;
    type Error = Refusal;
    type Future = Either<Ready<Result<Admitted, Refusal>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: SqlRequest) -> Self::Future {
        match self.check.check(&mut req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(refusal) => Either::Left(ready(Err(refusal))),
        }
    }
}

/// The bottom of the stack: a statement every layer let through becomes an
/// [`Admitted`] with the canonical text (or the limit layer's rewrite).
#[derive(Debug, Clone)]
pub struct Admit {
    acl: Arc<Acl>,
}

impl Admit {
    /// The terminal service for `acl`.
    pub fn new(acl: Arc<Acl>) -> Self {
        Self { acl }
    }
}

impl Service<SqlRequest> for Admit {
    type Response = Admitted;
    type Error = Refusal;
    type Future = Ready<Result<Admitted, Refusal>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SqlRequest) -> Self::Future {
        ready(admit(&self.acl, &req))
    }
}

/// The shared parse, with the authoritative statement count: the lexical
/// scan of the validation layer can only refuse, so a text it took for one
/// statement is counted again here, by the parser.
pub(crate) fn parsed<'r>(acl: &Acl, req: &'r SqlRequest) -> Result<&'r Arc<Analysis>, Refusal> {
    let a = req.analysis(&limits(acl))?;
    if a.statements.len() > 1 && !acl.validation.multi_statements {
        return Err(Refusal::new(
            Stage::Validation,
            "multi_statement",
            "one statement at a time: several statements in one query are refused",
        ));
    }
    Ok(a)
}

fn admit(acl: &Acl, req: &SqlRequest) -> Result<Admitted, Refusal> {
    let a = parsed(acl, req)?;
    let role = acl
        .role_for(req.identity(), req.database())
        .ok_or_else(|| no_access(req.database()))?;
    let ann = req.limit_annotation();
    let sql: Arc<str> = match ann.and_then(|l| l.rewritten.clone()) {
        Some(s) => s,
        None => a.canonical.as_str().into(),
    };
    let switches = a
        .statements
        .iter()
        .rev()
        .find_map(|s| s.switches_database.as_deref())
        .map(Arc::from);
    Ok(Admitted {
        sql,
        row_cap: ann.and_then(|l| l.row_cap),
        normalized: a.normalized.as_str().into(),
        role: role.name.clone(),
        switches_database: switches,
    })
}

pub(crate) fn limits(acl: &Acl) -> ParseLimits {
    ParseLimits {
        max_depth: acl.validation.max_depth.saturating_mul(2).max(8),
    }
}

pub(crate) fn no_access(database: &str) -> Refusal {
    Refusal::new(
        Stage::DatabaseAccess,
        "no_access",
        format!("no access to database {database:?}: none of your groups has a role there"),
    )
}

/// The whole pipeline, layers in order.
pub type PipelineService = CheckService<
    Validation,
    CheckService<
        RateLimit,
        cache::VerdictCacheService<
            CheckService<
                ReadOnly,
                CheckService<
                    DatabaseAccess,
                    CheckService<
                        Pattern,
                        CheckService<
                            TablePermission,
                            CheckService<Complexity, CheckService<Limit, Admit>>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// Run a synchronous pipeline (every layer of this crate is) to its verdict
/// without an async runtime: for callers such as a lint tool or a fuzz
/// target. A service that is not ready, or whose future is pending, gives a
/// refusal (fail closed) rather than blocking.
pub fn decide_now<S>(service: &mut S, req: SqlRequest) -> Result<Admitted, Refusal>
where
    S: Service<SqlRequest, Response = Admitted, Error = Refusal>,
    S::Future: Unpin,
{
    let pending = || {
        Refusal::new(
            Stage::Validation,
            "not_ready",
            "the pipeline cannot decide synchronously",
        )
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => return Err(pending()),
    }
    let mut fut = service.call(req);
    match poll_once(&mut fut) {
        Poll::Ready(v) => v,
        Poll::Pending => Err(pending()),
    }
}

/// Poll `fut` once, with a waker that does nothing: the layers of this crate
/// decide synchronously, so their futures are ready at the first poll.
pub(crate) fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    std::pin::Pin::new(fut).poll(&mut cx)
}

/// Builds the pipeline from an [`Acl`].
#[derive(Debug)]
pub struct Pipeline;

impl Pipeline {
    /// The eight layers over [`Admit`], with a verdict cache of
    /// `cache_capacity` entries (0: no cache).
    ///
    /// The order is the "cheapest first", with two reasons of its
    /// own: validation runs before everything because it bounds the work the
    /// rest may do (size, depth) without parsing; the rate limit runs before
    /// the cache so that cached statements still count; the cache sits
    /// above every layer that parses, since its whole point is to skip the
    /// parse, and its key (database, role, dialect, origin, text) covers
    /// everything those layers decide on. The limit layer is last because it
    /// rewrites the statement every other layer has approved.
    pub fn build(acl: Arc<Acl>, cache_capacity: usize) -> PipelineService {
        let admit = Admit::new(acl.clone());
        let s = CheckLayer::new(Limit::new(acl.clone())).layer(admit);
        let s = CheckLayer::new(Complexity::new(acl.clone())).layer(s);
        let s = CheckLayer::new(TablePermission::new(acl.clone())).layer(s);
        let s = CheckLayer::new(Pattern::new(acl.clone())).layer(s);
        let s = CheckLayer::new(DatabaseAccess::new(acl.clone())).layer(s);
        let s = CheckLayer::new(ReadOnly::new(acl.clone())).layer(s);
        let s = VerdictCacheLayer::new(acl.clone(), cache_capacity).layer(s);
        let s = RateLimit::layer(acl.clone()).layer(s);
        CheckLayer::new(Validation::new(acl)).layer(s)
    }
}
