//! Verdicts cached by (database, role, dialect, origin, statement text), so a
//! repeated statement skips the parse and every layer below; and, on a miss,
//! admitted verdicts cached by statement *shape* (the same statement with
//! other literal values: see `shape.rs` for why that is sound), so
//! `… WHERE id = 17` reuses what `… WHERE id = 42` cost to decide.
//!
//! The keys hold the exact text (or token stream), not a hash of it, and an
//! admitted verdict carries the canonical text the layers approved (for a
//! shape, a template of it): a cache hit can only ever send what was
//! checked.

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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ShapeKey {
    database: Arc<str>,
    role: Arc<str>,
    dialect: Dialect,
    origin: Origin,
    shape: super::shape::Shape,
}

/// By shape: the verdict to reuse, or `None` for a shape known to have no
/// usable template.
type ShapeCache = quick_cache::sync::Cache<ShapeKey, Option<super::shape::ShapeVerdict>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QuickKey {
    database: Arc<str>,
    role: Arc<str>,
    dialect: Dialect,
    origin: Origin,
    key: super::shape::QuickKey,
}

/// By quick key (`shape::quick_shape`): the shape verdict learned for a
/// statement with that key, only ever inserted once its shape was known.
type QuickCache = quick_cache::sync::Cache<QuickKey, super::shape::ShapeVerdict>;

/// The cache key (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyOpaque(Key);

/// The verdict-cache layer.
#[derive(Debug, Clone)]
pub struct VerdictCacheLayer {
    acl: Arc<Acl>,
    cache: Option<Arc<VerdictCache>>,
    shapes: Option<Arc<ShapeCache>>,
    quick: Option<Arc<QuickCache>>,
}

impl VerdictCacheLayer {
    /// A cache of `capacity` verdicts (0: pass everything through).
    pub fn new(acl: Arc<Acl>, capacity: usize) -> Self {
        Self {
            acl,
            cache: (capacity > 0).then(|| Arc::new(VerdictCache::new(capacity))),
            shapes: (capacity > 0).then(|| Arc::new(ShapeCache::new(capacity))),
            quick: (capacity > 0).then(|| Arc::new(QuickCache::new(capacity))),
        }
    }
}

impl<S> Layer<S> for VerdictCacheLayer {
    type Service = VerdictCacheService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        VerdictCacheService {
            acl: self.acl.clone(),
            cache: self.cache.clone(),
            shapes: self.shapes.clone(),
            quick: self.quick.clone(),
            local: Local::default(),
            inner,
        }
    }
}

/// The service [`VerdictCacheLayer`] makes.
#[derive(Debug, Clone)]
pub struct VerdictCacheService<S> {
    acl: Arc<Acl>,
    cache: Option<Arc<VerdictCache>>,
    shapes: Option<Arc<ShapeCache>>,
    quick: Option<Arc<QuickCache>>,
    /// This service's own memo (a clone starts with an empty one).
    local: Local,
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
        let Some((database, role)) = self.local.scope(&self.acl, &req) else {
            return Either::Right(self.inner.call(req));
        };
        let origin = req.origin();
        // This service's own memo first: by text, then (for a statement
        // with literals) by its quick key.
        if let Some(admitted) = self.local.exact(origin, req.sql()) {
            return Either::Left(ready(Ok(admitted)));
        }
        // The quick key: one pass over the bytes, no tokenizer.
        let buffer = std::mem::take(&mut self.local.key);
        let quick_shape = super::shape::quick_shape_in(req.sql(), buffer);
        // No literals the quick lexer can take out: remembered by its text.
        let plain = quick_shape.as_ref().is_none_or(|(_, l)| l.is_empty());
        if let (Some((k, literals)), false) = (&quick_shape, plain) {
            if let Some(admitted) = self.local.shaped(origin, k, literals) {
                if let Some((k, _)) = quick_shape {
                    self.local.key = k.into_buffer();
                }
                return Either::Left(ready(Ok(admitted)));
            }
        }
        let key = KeyOpaque(Key {
            database: database.clone(),
            role: role.clone(),
            dialect: req.dialect(),
            origin,
            sql: req.shared_sql(),
        });
        if let Some(v) = cache.get(&key) {
            if let (Ok(admitted), true) = (&v, plain) {
                self.local.remember_exact(origin, req.sql(), admitted);
            }
            return Either::Left(ready(v));
        }
        let quick = self.quick.as_ref().and_then(|q| {
            let (k, literals) = quick_shape?;
            let quick_key = QuickKey {
                database: database.clone(),
                role: role.clone(),
                dialect: key.0.dialect,
                origin,
                key: k,
            };
            Some((q.get(&quick_key), quick_key, literals))
        });
        if let Some((Some(v), quick_key, literals)) = &quick {
            if let Some(admitted) = from_shape(v, literals, &mut self.local.fill) {
                self.local.remember_shape(origin, &quick_key.key, v);
                return Either::Left(ready(Ok(admitted)));
            }
        }
        let shaped = self.shapes.as_ref().and_then(|shapes| {
            let (shape, literals) = super::shape::shape(req.sql(), req.dialect())?;
            let shape_key = ShapeKey {
                database: key.0.database.clone(),
                role: key.0.role.clone(),
                dialect: key.0.dialect,
                origin: key.0.origin,
                shape,
            };
            Some((shapes.get(&shape_key), shape_key, literals))
        });
        if let Some((Some(Some(v)), _, literals)) = &shaped {
            if let Some(admitted) = from_shape(v, literals, &mut self.local.fill) {
                self.learn_quick(quick, literals, v);
                return Either::Left(ready(Ok(admitted)));
            }
        }
        // The layers of this crate decide synchronously, so the inner future
        // is ready at its first poll and its verdict can be cached here. An
        // inner service that really waits is passed through uncached.
        let mut fut = self.inner.call(req.clone());
        match super::poll_once(&mut fut) {
            Poll::Ready(verdict) => {
                if let (Ok(admitted), true) = (&verdict, plain) {
                    self.local.remember_exact(origin, req.sql(), admitted);
                }
                cache.insert(key, verdict.clone());
                // Learn an admitted statement's shape once: a shape whose
                // template did not check out is remembered as such, so its
                // statements do not pay for the check again.
                if let (Ok(admitted), Some((None, shape_key, literals))) = (&verdict, shaped) {
                    let learned = self.learn_shape(&req, admitted, &literals);
                    if let Some(v) = &learned {
                        self.learn_quick(quick, &literals, v);
                    }
                    if let Some(shapes) = &self.shapes {
                        shapes.insert(shape_key, learned);
                    }
                }
                Either::Left(ready(verdict))
            }
            Poll::Pending => Either::Right(fut),
        }
    }
}

/// The admitted verdict of a shape for a statement with `literals`; the
/// text is filled in `buf` before it is shared.
fn from_shape(
    v: &super::shape::ShapeVerdict,
    literals: &[super::shape::Literal<'_>],
    buf: &mut String,
) -> Option<Admitted> {
    buf.clear();
    if !v.template.fill_into(literals, buf) {
        return None;
    }
    Some(Admitted {
        sql: Arc::from(buf.as_str()),
        row_cap: v.row_cap,
        normalized: v.normalized.clone(),
        role: v.role.clone(),
        switches_database: None,
    })
}

impl<S> VerdictCacheService<S> {
    /// Remember the shape verdict `v` under the statement's quick key, when
    /// it has one and the quick lexer found exactly the literals the shape
    /// did (`shape_literals`).
    fn learn_quick(
        &mut self,
        quick: Option<(
            Option<super::shape::ShapeVerdict>,
            QuickKey,
            Vec<super::shape::Literal<'_>>,
        )>,
        shape_literals: &[super::shape::Literal<'_>],
        v: &super::shape::ShapeVerdict,
    ) {
        if let (Some(q), Some((_, mut quick_key, literals))) = (&self.quick, quick) {
            if literals == shape_literals {
                self.local
                    .remember_shape(quick_key.origin, &quick_key.key, v);
                quick_key.key.shrink();
                q.insert(quick_key, v.clone());
            }
        }
    }
}

impl<S> VerdictCacheService<S>
where
    S: Service<SqlRequest, Response = Admitted, Error = Refusal>,
    S::Future: Unpin,
{
    /// Keep the template of an admitted statement's shape, once the full
    /// pipeline agrees with it on a probe (the statement with synthetic
    /// literal values).
    fn learn_shape(
        &mut self,
        req: &SqlRequest,
        admitted: &Admitted,
        literals: &[super::shape::Literal<'_>],
    ) -> Option<super::shape::ShapeVerdict> {
        let analysis = req.analysis(&super::limits(&self.acl)).ok()?;
        let c =
            super::shape::candidate(req.sql(), literals, &admitted.sql, analysis, req.dialect())?;
        let probe = SqlRequest::new(
            req.identity().clone(),
            req.database(),
            c.probe,
            req.dialect(),
        )
        .with_origin(req.origin());
        // The probe is a second call: the inner service must be ready for it
        // now (this crate's layers always are).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if !matches!(self.inner.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
            return None;
        }
        let mut fut = self.inner.call(probe);
        let agrees = matches!(
            super::poll_once(&mut fut),
            Poll::Ready(Ok(p)) if *p.sql == c.expected
                && p.row_cap == admitted.row_cap
                && p.normalized == admitted.normalized
                && p.role == admitted.role
                && p.switches_database.is_none()
        );
        agrees.then(|| super::shape::ShapeVerdict {
            template: Arc::new(c.template),
            row_cap: admitted.row_cap,
            normalized: admitted.normalized.clone(),
            role: admitted.role.clone(),
        })
    }
}

/// Entries of each of [`Local`]'s maps; when one is full the memo is
/// emptied.
const LOCAL_ENTRIES: usize = 64;
/// Bytes of text [`Local`] holds at most (keys and copies together): when
/// a new entry would pass it, the memo is emptied. Bounds a session's
/// memory however long its admitted statements are.
const LOCAL_BYTES: usize = 64 * 1024;
/// Statements longer than this are not remembered (the shared caches still
/// answer them).
const LOCAL_MAX_TEXT: usize = 4 * 1024;

type LocalMap<V> = std::collections::HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// A service's own memo of the admitted verdicts it handed out, in front of
/// the shared caches. A clone starts empty: a bastion session owns its
/// pipeline, so its repeated statements are answered here without the
/// shared caches' locks, and with copies of the verdicts' text, so without
/// touching reference counts other sessions' threads write too (with two
/// session threads that sharing cost more than the lookups).
///
/// Entries hold for one scope (identity, database, dialect, and the role the
/// ACL gives them there): a request in another scope empties the memo. The
/// ACL of a service never changes, so neither does a verdict. Only what the
/// shared caches would answer is remembered, with the same keys: exact text,
/// or the quick key of a shape verdict (never for a statement whose
/// literals the two lexers disagree on).
#[derive(Debug, Default)]
struct Local {
    scope: Option<Scope>,
    /// Admitted verdicts by exact text, per origin.
    exact: [LocalMap<Admitted>; 2],
    /// Shape verdicts by quick key, per origin.
    shapes: [LocalMap<super::shape::ShapeVerdict>; 2],
    /// Where a template is filled before its text is shared.
    fill: String,
    /// A buffer for the quick key.
    key: String,
    /// Text held by the entries (see [`LOCAL_BYTES`]).
    bytes: usize,
}

impl Clone for Local {
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[derive(Debug)]
struct Scope {
    identity: hexon_core::Identity,
    dialect: Dialect,
    /// Copies, not the ACL's shared values.
    database: Arc<str>,
    role: Arc<str>,
}

fn slot(origin: Origin) -> usize {
    match origin {
        Origin::Simple => 0,
        Origin::Prepare => 1,
    }
}

impl Local {
    /// The database and role names of `req`'s scope (emptying the memo when
    /// the scope changed), or `None` when the identity has no role there.
    fn scope(&mut self, acl: &Acl, req: &SqlRequest) -> Option<(Arc<str>, Arc<str>)> {
        if let Some(s) = &self.scope {
            if s.identity.ptr_eq(req.identity())
                && s.dialect == req.dialect()
                && *s.database == *req.database()
            {
                return Some((s.database.clone(), s.role.clone()));
            }
        }
        *self = Self::default();
        let role = acl.role_for(req.identity(), req.database())?;
        let scope = Scope {
            identity: req.identity().clone(),
            dialect: req.dialect(),
            database: Arc::from(req.database()),
            role: Arc::from(&*role.name),
        };
        let names = (scope.database.clone(), scope.role.clone());
        self.scope = Some(scope);
        Some(names)
    }

    fn exact(&self, origin: Origin, sql: &str) -> Option<Admitted> {
        self.exact.get(slot(origin))?.get(sql).cloned()
    }

    fn shaped(
        &mut self,
        origin: Origin,
        key: &super::shape::QuickKey,
        literals: &[super::shape::Literal<'_>],
    ) -> Option<Admitted> {
        let v = self.shapes.get(slot(origin))?.get(key.as_str())?;
        from_shape(v, literals, &mut self.fill)
    }

    /// The scope's copy of `role`: verdicts are remembered only for the
    /// role of the scope (their keys in the shared caches have it).
    fn role(&self, role: &str) -> Option<Arc<str>> {
        self.scope
            .as_ref()
            .filter(|s| *s.role == *role)
            .map(|s| s.role.clone())
    }

    /// Make room for an entry of `size` bytes of text in a map holding
    /// `entries`, emptying the memo when either bound would be passed;
    /// false when the entry is too long to remember.
    fn room(&mut self, entries: usize, size: usize) -> bool {
        if size > LOCAL_MAX_TEXT {
            return false;
        }
        if entries >= LOCAL_ENTRIES || self.bytes + size > LOCAL_BYTES {
            self.exact.iter_mut().for_each(LocalMap::clear);
            self.shapes.iter_mut().for_each(LocalMap::clear);
            self.bytes = 0;
        }
        self.bytes += size;
        true
    }

    fn remember_exact(&mut self, origin: Origin, sql: &str, a: &Admitted) {
        let Some(role) = self.role(&a.role) else {
            return;
        };
        let size = sql.len() + a.sql.len() + a.normalized.len();
        let entries = self.exact.get(slot(origin)).map_or(0, LocalMap::len);
        if !self.room(entries, size) {
            return;
        }
        let Some(map) = self.exact.get_mut(slot(origin)) else {
            return;
        };
        map.insert(
            sql.into(),
            Admitted {
                sql: Arc::from(&*a.sql),
                row_cap: a.row_cap,
                normalized: Arc::from(&*a.normalized),
                role,
                switches_database: a.switches_database.as_deref().map(Arc::from),
            },
        );
    }

    fn remember_shape(
        &mut self,
        origin: Origin,
        key: &super::shape::QuickKey,
        v: &super::shape::ShapeVerdict,
    ) {
        // One without literals is looked up by its text.
        if v.template.slots() == 0 {
            return;
        }
        let Some(role) = self.role(&v.role) else {
            return;
        };
        let size = key.as_str().len() + v.template.text_len() + v.normalized.len();
        let entries = self.shapes.get(slot(origin)).map_or(0, LocalMap::len);
        if !self.room(entries, size) {
            return;
        }
        let Some(map) = self.shapes.get_mut(slot(origin)) else {
            return;
        };
        map.insert(
            key.as_str().into(),
            super::shape::ShapeVerdict {
                template: Arc::new((*v.template).clone()),
                row_cap: v.row_cap,
                normalized: Arc::from(&*v.normalized),
                role,
            },
        );
    }
}

/// Either a cached verdict or the inner future (for inner services that are
/// not immediately ready).
pub type CachedFuture<F> = Either<Ready<Result<Admitted, Refusal>>, F>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ACL: &str = r#"
[[databases]]
name = "app"
dialect = "postgres"
[[databases.roles]]
name = "r"
groups = ["g"]
tables = [{ name = "public.*", ops = ["select"] }]
"#;

    /// The cache over an inner service that admits everything as its
    /// canonical text and counts its calls.
    fn service(
        calls: Arc<AtomicUsize>,
    ) -> VerdictCacheService<
        impl Service<
            SqlRequest,
            Response = Admitted,
            Error = Refusal,
            Future = Ready<Result<Admitted, Refusal>>,
        >,
    > {
        let acl = Arc::new(Acl::from_toml(ACL).unwrap_or_else(|e| panic!("{e:?}")));
        let limits = super::super::limits(&acl);
        let inner = tower::service_fn(move |req: SqlRequest| {
            calls.fetch_add(1, Ordering::SeqCst);
            ready(
                req.analysis(&limits)
                    .map(|a| Admitted {
                        sql: a.canonical.as_str().into(),
                        row_cap: None,
                        normalized: a.normalized.as_str().into(),
                        role: "r".into(),
                        switches_database: None,
                    })
                    .map_err(|e| e.clone()),
            )
        });
        VerdictCacheLayer::new(acl, 100).layer(inner)
    }

    /// The cache over an inner service that admits everything as its
    /// canonical text, for the role the ACL gives the caller, with row cap
    /// 10 for role `r` and `other_cap` for any other, counting its calls.
    fn per_role(
        acl_text: &str,
        other_cap: u64,
        calls: Arc<AtomicUsize>,
    ) -> VerdictCacheService<
        impl Service<
            SqlRequest,
            Response = Admitted,
            Error = Refusal,
            Future = Ready<Result<Admitted, Refusal>>,
        > + Clone,
    > {
        let acl = Arc::new(Acl::from_toml(acl_text).unwrap_or_else(|e| panic!("{e:?}")));
        let (inner_acl, counted) = (acl.clone(), calls);
        let limits = super::super::limits(&acl);
        let inner = tower::service_fn(move |req: SqlRequest| {
            counted.fetch_add(1, Ordering::SeqCst);
            let role = inner_acl.role_for(req.identity(), req.database()).cloned();
            ready(match (req.analysis(&limits), role) {
                (Ok(a), Some(role)) => Ok(Admitted {
                    sql: a.canonical.as_str().into(),
                    row_cap: Some(if &*role.name == "r" { 10 } else { other_cap }),
                    normalized: a.normalized.as_str().into(),
                    role: role.name.clone(),
                    switches_database: None,
                }),
                (Err(e), _) => Err(e.clone()),
                (_, None) => Err(super::super::no_access(req.database())),
            })
        });
        VerdictCacheLayer::new(acl, 100).layer(inner)
    }

    fn req(sql: &str) -> SqlRequest {
        let id = hexon_core::Identity::builder("u", "u")
            .groups(["g"])
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        SqlRequest::new(id, "app", sql, Dialect::Postgres)
    }

    fn decide(
        s: &mut impl Service<
            SqlRequest,
            Response = Admitted,
            Error = Refusal,
            Future = CachedFuture<Ready<Result<Admitted, Refusal>>>,
        >,
        sql: &str,
    ) -> Result<Admitted, Refusal> {
        match super::super::poll_once(&mut s.call(req(sql))) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn the_memo_is_bounded_in_entries_and_bytes() {
        let mut s = service(Arc::new(AtomicUsize::new(0)));
        let id = hexon_core::Identity::builder("u", "u")
            .groups(["g"])
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let ask = |s: &mut VerdictCacheService<_>, sql: &str| {
            let r = SqlRequest::new(id.clone(), "app", sql, Dialect::Postgres);
            match super::super::poll_once(&mut s.call(r)) {
                Poll::Ready(v) => v.unwrap_or_else(|e| panic!("{e}")),
                Poll::Pending => panic!("pending"),
            }
        };
        let columns = |n: usize, tag: usize| {
            (0..n)
                .map(|i| format!("c{tag}_{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Too long to remember: answered, not kept.
        let long = format!("SELECT {} FROM t WHERE id = $1", columns(600, 0));
        assert!(long.len() > LOCAL_MAX_TEXT);
        assert_eq!(*ask(&mut s, &long).sql, *long);
        assert_eq!(*ask(&mut s, &long).sql, *long);
        assert!(s.local.exact.iter().all(|m| m.is_empty()));
        assert_eq!(s.local.bytes, 0);
        // Many distinct statements: never more than the bounds.
        for tag in 1..200 {
            let sql = format!("SELECT {} FROM t WHERE id = $1", columns(tag % 40 + 1, tag));
            assert_eq!(*ask(&mut s, &sql).sql, *sql);
            assert_eq!(*ask(&mut s, &sql).sql, *sql, "again, from the memo");
            assert!(s.local.bytes <= LOCAL_BYTES);
            assert!(s.local.exact.iter().all(|m| m.len() <= LOCAL_ENTRIES));
            assert!(
                !s.local.exact.iter().all(|m| m.is_empty()),
                "the last one is kept"
            );
        }
    }

    #[test]
    fn a_services_own_memo_answers_only_its_scope() {
        let two_roles = format!(
            "{ACL}[[databases.roles]]\nname = \"r2\"\ngroups = [\"h\"]\ntables = [{{ name = \"public.*\", ops = [\"select\"] }}]\n"
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let mut s = per_role(&two_roles, 20, calls.clone());
        let who = |group: &str| {
            hexon_core::Identity::builder(group, group)
                .groups([group])
                .build()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (a, b) = (who("g"), who("h"));
        let ask = |s: &mut VerdictCacheService<_>, id: &hexon_core::Identity, sql: &str, origin| {
            let r = SqlRequest::new(id.clone(), "app", sql, Dialect::Postgres).with_origin(origin);
            match super::super::poll_once(&mut s.call(r)) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("pending"),
            }
        };
        let sql = |n: u32| format!("SELECT name FROM t WHERE id = {n}");
        let ok = |v: Result<Admitted, Refusal>| v.unwrap_or_else(|e| panic!("{e}"));

        // Learned (decision and probe), then answered with each new literal.
        ok(ask(&mut s, &a, &sql(1), Origin::Simple));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        for n in 2..6 {
            let v = ok(ask(&mut s, &a, &sql(n), Origin::Simple));
            assert_eq!(*v.sql, *sql(n));
            assert_eq!((&*v.role, v.row_cap), ("r", Some(10)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A clone starts with an empty memo but shares the caches.
        let mut clone = s.clone();
        assert_eq!(
            *ok(ask(&mut clone, &a, &sql(7), Origin::Simple)).sql,
            *sql(7)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Another identity with another role: never the memo's verdict.
        let v = ok(ask(&mut s, &b, &sql(8), Origin::Simple));
        assert_eq!((&*v.role, v.row_cap, &*v.sql), ("r2", Some(20), &*sql(8)));
        assert!(calls.load(Ordering::SeqCst) > 2);
        // An identity without a role there: refused below, not remembered.
        let nobody = who("x");
        assert!(ask(&mut s, &nobody, &sql(9), Origin::Simple).is_err());
        // Back to the first: its own role again.
        let v = ok(ask(&mut s, &a, &sql(10), Origin::Simple));
        assert_eq!((&*v.role, v.row_cap, &*v.sql), ("r", Some(10), &*sql(10)));

        // By text, per origin: a prepared statement is not a simple query.
        let text = "SELECT name FROM t WHERE id = $1";
        let before = calls.load(Ordering::SeqCst);
        ok(ask(&mut s, &a, text, Origin::Simple));
        let simple = calls.load(Ordering::SeqCst);
        assert!(simple > before);
        ok(ask(&mut s, &a, text, Origin::Simple));
        assert_eq!(calls.load(Ordering::SeqCst), simple);
        ok(ask(&mut s, &a, text, Origin::Prepare));
        let prepared = calls.load(Ordering::SeqCst);
        assert!(prepared > simple);
        let v = ok(ask(&mut s, &a, text, Origin::Prepare));
        assert_eq!(calls.load(Ordering::SeqCst), prepared);
        assert_eq!((&*v.role, v.row_cap, &*v.sql), ("r", Some(10), text));
    }

    #[test]
    fn the_memo_follows_a_database_or_dialect_switch_inside_one_service() {
        // The same identity reaches two databases through different roles
        // (row caps 10 and 30) and a third through none.
        let acl_text = format!(
            "{ACL}[[databases]]\nname = \"other\"\ndialect = \"postgres\"\n[[databases.roles]]\nname = \"o\"\ngroups = [\"g\"]\ntables = [{{ name = \"public.*\", ops = [\"select\"] }}]\n[[databases]]\nname = \"closed\"\ndialect = \"postgres\"\n[[databases.roles]]\nname = \"c\"\ngroups = [\"nobody\"]\ntables = [{{ name = \"public.*\", ops = [\"select\"] }}]\n"
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let mut s = per_role(&acl_text, 30, calls.clone());
        let id = hexon_core::Identity::builder("u", "u")
            .groups(["g"])
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let ask = |s: &mut VerdictCacheService<_>, db: &str, dialect, sql: &str| {
            let r = SqlRequest::new(id.clone(), db, sql, dialect);
            match super::super::poll_once(&mut s.call(r)) {
                Poll::Ready(v) => v,
                Poll::Pending => panic!("pending"),
            }
        };
        let ok = |v: Result<Admitted, Refusal>| v.unwrap_or_else(|e| panic!("{e}"));
        let sql = |n: u32| format!("SELECT name FROM t WHERE id = {n}");
        let pg = Dialect::Postgres;

        // Remembered for `app` (learned, then answered with new literals).
        ok(ask(&mut s, "app", pg, &sql(1)));
        ok(ask(&mut s, "app", pg, &sql(2)));
        let learned = calls.load(Ordering::SeqCst);
        // `other` in the same service: its own role, never app's verdict.
        let v = ok(ask(&mut s, "other", pg, &sql(3)));
        assert_eq!((&*v.role, v.row_cap, &*v.sql), ("o", Some(30), &*sql(3)));
        assert!(calls.load(Ordering::SeqCst) > learned);
        // A database the identity has no role in: refused, whatever the
        // memo held a moment ago.
        let e = ask(&mut s, "closed", pg, &sql(4));
        assert!(e.is_err(), "{e:?}");
        let e = ask(&mut s, "closed", pg, &sql(4));
        assert!(e.is_err(), "asked again: {e:?}");
        // Back to `app`: app's role again.
        let v = ok(ask(&mut s, "app", pg, &sql(5)));
        assert_eq!((&*v.role, v.row_cap, &*v.sql), ("r", Some(10), &*sql(5)));
        // The same text under another dialect is decided for that dialect,
        // not answered from the PostgreSQL entries.
        let text = "SELECT name FROM t WHERE id = $1";
        ok(ask(&mut s, "app", pg, text));
        ok(ask(&mut s, "app", pg, text));
        let before = calls.load(Ordering::SeqCst);
        let mysql = ask(&mut s, "app", Dialect::Mysql, text);
        assert!(
            calls.load(Ordering::SeqCst) > before,
            "the MySQL request reached the inner service: {mysql:?}"
        );
    }

    #[test]
    fn a_shape_is_learned_once_and_reused() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut s = service(calls.clone());
        let a = decide(&mut s, "SELECT name FROM t WHERE id = 1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*a.sql, "SELECT name FROM t WHERE id = 1");
        // The decision and the probe that checks the template.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let b =
            decide(&mut s, "SELECT name FROM t WHERE id = 987").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&*b.sql, "SELECT name FROM t WHERE id = 987");
        assert_eq!(b.normalized, a.normalized);
        // Answered from the shape: the inner service was not asked.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The exact text again: from the first cache.
        decide(&mut s, "SELECT name FROM t WHERE id = 1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Another shape: asked again.
        decide(&mut s, "SELECT id FROM t WHERE id = 1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Plain statements are learned under their quick key too (no
        // tokenizer on the next hit); a statement the quick lexer refuses
        // (a comment here) still takes the tokenizer's shape.
        decide(&mut s, "SELECT name FROM t WHERE id = 5 -- five").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // A shapeless statement (a string with a backslash): asked every time.
        decide(&mut s, "SELECT name FROM t WHERE name = 'a\\b'").unwrap_or_else(|e| panic!("{e}"));
        decide(&mut s, "SELECT name FROM t WHERE name = 'c\\d'").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn quick_keys_are_learned_only_for_plain_statements() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut s = service(calls.clone());
        let quick_len = |s: &VerdictCacheService<_>| s.quick.as_ref().map_or(0, |q| q.len());
        let decide = |s: &mut VerdictCacheService<_>, sql: &str| match super::super::poll_once(
            &mut s.call(req(sql)),
        ) {
            Poll::Ready(v) => v.unwrap_or_else(|e| panic!("{e}")),
            Poll::Pending => panic!("pending"),
        };
        // A comment: no quick key, only the tokenizer's shape.
        decide(&mut s, "SELECT name FROM t WHERE id = 1 -- one");
        assert_eq!(quick_len(&s), 0);
        decide(&mut s, "SELECT name FROM t WHERE id = 2");
        assert_eq!(quick_len(&s), 1);
        // Answered from the quick key: the same text as the full path.
        let a = decide(&mut s, "SELECT name FROM t WHERE id = 3");
        assert_eq!(&*a.sql, "SELECT name FROM t WHERE id = 3");
        let b = decide(&mut s, "SELECT name FROM t WHERE id = 'x'");
        assert_eq!(&*b.sql, "SELECT name FROM t WHERE id = 'x'");
        // The decision and its probe once; every other statement came from
        // a shape.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
