//! Put the caller's identity on the upstream request, per route.
//!
//! [`SignIdentityLayer`] reads the [`Identity`] (from [`crate::authn`]) and
//! the [`MatchedRoute`] (from [`crate::authz`]) and looks the route up in a
//! hot-swappable [`SignTable`] ([`SignHandle`]):
//!
//! - [`RouteIdentity::Headers`]: RFC 9421 signed `Hexon-*` headers through
//!   [`HttpSigner::sign`] (unbound signatures are cached by the signer). For a
//!   route that binds the body, the body is buffered up to a limit (default
//!   1 MiB; `413` above) and its `Content-Digest` set before signing.
//! - [`RouteIdentity::Jwt`]: `Authorization: Bearer <JWT>` issued by the
//!   table's [`JwtIssuer`]; a token is reused per (session, route) for the
//!   first half of its lifetime.
//! - [`RouteIdentity::None`] sends nothing.
//!
//! Anonymous requests (public routes) get no identity headers at all (and on
//! JWT routes the client's `Authorization` is removed). Identity headers are
//! removed again here whatever happens, so the layer is safe on its own.
//!
//! **Fail closed**: an authenticated request whose route has no identity
//! mode, or whose signing fails, is answered `500` (with the request id) —
//! never forwarded unsigned.
//!
//! What is signed is the request's authority (URI authority and/or `Host`,
//! see [`hexon_core::httpsig::authority`]): the proxy must preserve `Host`
//! (or set it before this layer runs).
//!
//! The inner service receives `Request<`[`SignedBody<B>`]`>`: the original
//! body, or the buffered one on body-bound routes.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::config::{IdentityMode, RouteConfig};
use hexon_core::httpsig::{
    Binding, CONTENT_DIGEST, HttpSigner, content_digest, remove_identity_headers,
};
use hexon_core::jwt::{IssueParams, JwtIssuer};
use hexon_core::verify::Clock;
use hexon_core::{Identity, UnixTime};
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full, Limited};
use quick_cache::Equivalent;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{BoxBody, BoxError};
use crate::ext::{MatchedRoute, RequestId};
use crate::respond;

/// The request body the inner service receives: the original, or the
/// buffered body of a body-bound route.
pub type SignedBody<B> = Either<B, Full<Bytes>>;

/// How a route passes the identity upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteIdentity {
    /// Signed `Hexon-*` headers with this binding.
    Headers {
        /// Request / body binding.
        binding: Binding,
    },
    /// `Authorization: Bearer <JWT>` issued with these parameters.
    Jwt {
        /// Issuer, audience, lifetime.
        params: IssueParams,
    },
    /// Nothing.
    None,
}

/// Identity mode per route name, plus the JWT issuer. Swapped as a whole on
/// reload through a [`SignHandle`].
#[derive(Clone, Debug, Default)]
pub struct SignTable {
    // Read on every request; foldhash, as route names come from the
    // configuration.
    routes: HashMap<Box<str>, RouteIdentity, foldhash::fast::RandomState>,
    default: Option<RouteIdentity>,
    jwt: Option<Arc<JwtIssuer>>,
}

impl SignTable {
    /// An empty table: authenticated requests on any route fail (`500`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The table of a configuration's routes. `identity = "jwt"` routes get
    /// tokens from `jwt_issuer` (`iss`) for the audience = the route name,
    /// valid for `jwt_lifetime`.
    pub fn from_config(routes: &[RouteConfig], jwt_issuer: &str, jwt_lifetime: Duration) -> Self {
        let mut t = SignTable::new();
        for r in routes {
            let mode = match r.identity {
                IdentityMode::Headers => RouteIdentity::Headers {
                    binding: r.binding.to_binding(),
                },
                IdentityMode::Jwt => RouteIdentity::Jwt {
                    params: IssueParams::new(jwt_issuer, r.spec.name.as_str(), jwt_lifetime),
                },
                // `IdentityMode` is non-exhaustive: an unknown mode sends nothing
                // rather than guessing. (Today: `None`.)
                _ => RouteIdentity::None,
            };
            t.routes.insert(r.spec.name.as_str().into(), mode);
        }
        t
    }

    /// Set the mode of `route`.
    pub fn with_route(mut self, route: &str, mode: RouteIdentity) -> Self {
        self.routes.insert(route.into(), mode);
        self
    }

    /// The mode of routes not in the table (default: none → `500`).
    pub fn with_default(mut self, mode: RouteIdentity) -> Self {
        self.default = Some(mode);
        self
    }

    /// The issuer of JWT-mode tokens.
    pub fn with_jwt_issuer(mut self, issuer: JwtIssuer) -> Self {
        self.jwt = Some(Arc::new(issuer));
        self
    }

    /// The mode for `route`.
    pub fn get(&self, route: &str) -> Option<&RouteIdentity> {
        self.routes.get(route).or(self.default.as_ref())
    }
}

/// A hot-swappable, shared [`SignTable`].
#[derive(Clone, Debug, Default)]
pub struct SignHandle(Arc<RwLock<Arc<SignTable>>>);

impl SignHandle {
    /// A handle on `table`.
    pub fn new(table: SignTable) -> Self {
        SignHandle(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The current table.
    pub fn load(&self) -> Arc<SignTable> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new table for requests from now on.
    pub fn store(&self, table: SignTable) {
        let t = Arc::new(table);
        match self.0.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }
}

// ---------------------------------------------------------------------------
// JWT cache.

#[derive(Clone, PartialEq, Eq, Hash)]
struct JwtKey {
    principal: Arc<str>,
    route: Arc<str>,
}

struct JwtKeyRef<'a> {
    principal: &'a str,
    route: &'a str,
}

impl Equivalent<JwtKey> for JwtKeyRef<'_> {
    fn equivalent(&self, key: &JwtKey) -> bool {
        *key.principal == *self.principal && *key.route == *self.route
    }
}

// Must hash like `JwtKey` (its derived `Hash` hashes both `str`s in order).
impl Hash for JwtKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.principal.hash(state);
        self.route.hash(state);
    }
}

struct CachedJwt {
    identity: Identity,
    params: IssueParams,
    key_id: Box<str>,
    issued: UnixTime,
    value: HeaderValue,
}

struct Shared {
    signer: Arc<HttpSigner>,
    table: SignHandle,
    max_body: usize,
    clock: Clock,
    jwt_capacity: usize,
    jwt_cache: Option<JwtCache>,
}

type JwtCache = quick_cache::sync::Cache<JwtKey, Arc<CachedJwt>>;

fn jwt_cache(capacity: usize) -> Option<JwtCache> {
    (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity))
}

/// Signs the identity onto upstream requests. See the [module docs](self).
#[derive(Clone)]
pub struct SignIdentityLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for SignIdentityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignIdentityLayer")
            .field("signer", &self.shared.signer)
            .field("max_body", &self.shared.max_body)
            .finish_non_exhaustive()
    }
}

impl SignIdentityLayer {
    /// Sign headers with `signer`, modes from `table`; body-bound routes
    /// buffer up to 1 MiB; system clock; up to 10,000 cached JWTs.
    pub fn new(signer: Arc<HttpSigner>, table: SignHandle) -> Self {
        SignIdentityLayer {
            shared: Arc::new(Shared {
                signer,
                table,
                max_body: 1024 * 1024,
                clock: Arc::new(UnixTime::now),
                jwt_capacity: 10_000,
                jwt_cache: jwt_cache(10_000),
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &self.shared;
        let mut n = Shared {
            signer: s.signer.clone(),
            table: s.table.clone(),
            max_body: s.max_body,
            clock: s.clock.clone(),
            jwt_capacity: s.jwt_capacity,
            jwt_cache: None,
        };
        f(&mut n);
        n.jwt_cache = jwt_cache(n.jwt_capacity);
        SignIdentityLayer {
            shared: Arc::new(n),
        }
    }

    /// Largest body buffered for a body-bound route (`413` above).
    pub fn with_max_body_bytes(self, max: usize) -> Self {
        self.edit(|s| s.max_body = max)
    }

    /// How many JWTs to cache (0 disables the cache).
    pub fn with_jwt_cache_capacity(self, entries: usize) -> Self {
        self.edit(|s| s.jwt_capacity = entries)
    }

    /// Use another clock (tests).
    pub fn with_clock(self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.edit(|s| s.clock = Arc::new(clock))
    }
}

impl<S> Layer<S> for SignIdentityLayer {
    type Service = SignIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SignIdentity {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service produced by [`SignIdentityLayer`].
#[derive(Clone)]
pub struct SignIdentity<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for SignIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignIdentity")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> SignIdentity<S> {
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

/// Future of [`SignIdentity`].
pub type ResponseFuture<E> = crate::body::BoxResponseFuture<E>;

/// Why a request is not forwarded.
enum Refusal {
    Status(StatusCode, String),
}

fn fail(parts: &Parts, status: StatusCode, why: &str) -> Response<BoxBody> {
    let id = parts.extensions.get::<RequestId>();
    let route = parts
        .extensions
        .get::<MatchedRoute>()
        .map_or("-", MatchedRoute::name);
    if status.is_server_error() {
        tracing::error!(
            request_id = id.map_or("-", RequestId::as_str),
            route,
            error = why,
            "identity not signed; request refused"
        );
    } else {
        tracing::info!(
            request_id = id.map_or("-", RequestId::as_str),
            route,
            error = why,
            "request body refused"
        );
    }
    respond::error(status, id, respond::Flavor::of(&parts.headers))
}

impl Shared {
    async fn issue_jwt(
        &self,
        table: &SignTable,
        identity: &Identity,
        route: &str,
        params: &IssueParams,
        now: UnixTime,
    ) -> Result<HeaderValue, String> {
        let issuer = table
            .jwt
            .as_ref()
            .ok_or("route uses JWT identity but no JWT issuer is configured")?;
        let principal = identity.session().unwrap_or(identity.subject());
        let key = JwtKeyRef { principal, route };
        if let Some(hit) = self.jwt_cache.as_ref().and_then(|c| c.get(&key)) {
            let fresh_until = hit.issued.saturating_add(params.lifetime() / 2);
            if now >= hit.issued
                && now < fresh_until
                && hit.identity == *identity
                && hit.params == *params
                && *hit.key_id == *issuer.key_id()
            {
                return Ok(hit.value.clone());
            }
        }
        let token = issuer
            .issue(identity, params, now)
            .await
            .map_err(|e| format!("JWT issue: {e}"))?;
        let value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "issued JWT is not a header value".to_owned())?;
        if let Some(cache) = &self.jwt_cache {
            cache.insert(
                JwtKey {
                    principal: Arc::from(principal),
                    route: Arc::from(route),
                },
                Arc::new(CachedJwt {
                    identity: identity.clone(),
                    params: params.clone(),
                    key_id: issuer.key_id().into(),
                    issued: now,
                    value: value.clone(),
                }),
            );
        }
        Ok(value)
    }

    /// Sign `parts` (and buffer `body` if the route binds it).
    async fn process<B>(
        &self,
        parts: &mut Parts,
        body: B,
        now: UnixTime,
    ) -> Result<SignedBody<B>, Refusal>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // A snapshot pinned on the request (one configuration generation for
        // the whole stack) wins over the handle's current table.
        let table = parts
            .extensions
            .get::<Arc<SignTable>>()
            .cloned()
            .unwrap_or_else(|| self.table.load());
        let route = parts.extensions.get::<MatchedRoute>().cloned();
        let mode = route.as_ref().and_then(|r| table.get(r.name()));
        let identity = parts.extensions.get::<Identity>().cloned();
        // Identity headers the request came with never reach the upstream;
        // when it is signed, the signer strips them itself before it signs.
        if identity.is_none() || !matches!(mode, Some(RouteIdentity::Headers { .. })) {
            remove_identity_headers(&mut parts.headers);
        }
        let Some(identity) = identity else {
            // Anonymous (public route): no identity, and no client bearer on JWT routes.
            if let Some(RouteIdentity::Jwt { .. }) = mode {
                parts.headers.remove(AUTHORIZATION);
            }
            return Ok(Either::Left(body));
        };
        let (Some(route), Some(mode)) = (route, mode) else {
            return Err(Refusal::Status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "authenticated request without a route identity mode (is AuthorizeLayer before SignIdentityLayer, and the route in the sign table?)".into(),
            ));
        };
        match mode {
            RouteIdentity::None => Ok(Either::Left(body)),
            RouteIdentity::Jwt { params } => {
                let v = self
                    .issue_jwt(&table, &identity, route.name(), params, now)
                    .await
                    .map_err(|e| Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR, e))?;
                parts.headers.insert(AUTHORIZATION, v);
                Ok(Either::Left(body))
            }
            RouteIdentity::Headers { binding } => {
                let body = if binding.content_digest {
                    let bytes = self.buffer(parts, body).await?;
                    parts.headers.insert(CONTENT_DIGEST, content_digest(&bytes));
                    Either::Right(Full::new(bytes))
                } else {
                    Either::Left(body)
                };
                self.signer
                    .sign(&identity, route.name(), *binding, parts, now)
                    .await
                    .map_err(|e| {
                        // Never forward half-signed headers either.
                        Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("signing: {e}"))
                    })?;
                Ok(body)
            }
        }
    }

    async fn buffer<B>(&self, parts: &Parts, body: B) -> Result<Bytes, Refusal>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(Refusal::Status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over the buffering limit (Content-Length)".into(),
            ));
        }
        match Limited::new(body, self.max_body).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::Status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over the buffering limit".into(),
            )),
            Err(e) => Err(Refusal::Status(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )),
        }
    }
}

impl<S, B> Service<Request<B>> for SignIdentity<S>
where
    S: Service<Request<SignedBody<B>>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut inner = crate::body::take_ready(&mut self.inner);
        let shared = self.shared.clone();
        let now = (shared.clock)();
        ResponseFuture {
            inner: Box::pin(async move {
                let (mut parts, body) = req.into_parts();
                match shared.process(&mut parts, body, now).await {
                    Ok(body) => inner.call(Request::from_parts(parts, body)).await,
                    Err(Refusal::Status(status, why)) => {
                        remove_identity_headers(&mut parts.headers);
                        Ok(fail(&parts, status, &why))
                    }
                }
            }),
        }
    }
}
