//! Authentication: who is calling?
//!
//! [`AuthenticateLayer`] runs a list of [`Authenticator`]s in order. Each
//! looks for *its* credential and answers [`AuthnResult::NoCredential`],
//! [`AuthnResult::Authenticated`] or [`AuthnResult::Invalid`]:
//!
//! - the **first authenticator that finds its credential decides**;
//! - an **invalid credential is a `401`** — never a fall-back to anonymous,
//!   never a try with the next credential (fail closed: a stolen-but-expired
//!   token next to a valid cookie is an attack signal, not a convenience);
//! - on success the [`Identity`] goes into the request extensions, with the
//!   [`Credential`] kind the authenticator accepted (routes may restrict it);
//! - without any credential the request passes on **anonymous**: the policy
//!   ([`crate::authz`]) decides whether the route needs a login.
//!
//! Built-in authenticators:
//!
//! - [`BearerJwt`]: `Authorization: Bearer <JWT>`, our own keys
//!   ([`hexon_core::jwt::JwtVerifier`]) and trusted external issuers whose
//!   keys come from a JWKS URL ([`JwksIssuer`]);
//! - [`SessionCookie`]: a session cookie looked up in a [`SessionStore`]
//!   ([`MemorySessionStore`] in process);
//! - [`ClientCertificate`]: the verified mTLS client certificate, mapped
//!   from its SANs.
//!
//! API keys and HMAC-signed requests plug in the same way (a later issue):
//! implement [`Authenticator`] — or pass a closure
//! `|parts: &Parts, now: UnixTime| async move { ... }` — and add it to the
//! layer. The layer also derives the client certificate's SANs once
//! ([`ClientCertSans`], a request extension) for the policy, whichever
//! authenticator decides.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hexon_core::policy::Credential;
use hexon_core::verify::Clock;
use hexon_core::{Identity, UnixTime};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::BoxBody;
use crate::ext::{ConnectionInfo, RequestId};
use crate::respond;

mod bearer;
mod cert;
mod jwks;
mod session;

pub use bearer::BearerJwt;
pub use cert::{CertError, CertMapper, ClientCertSans, ClientCertificate, ClientSan};
pub use jwks::{FetchError, FetchFuture, HttpsJwksFetcher, JwksFetcher, JwksIssuer};
pub use session::{
    DEFAULT_SESSION_COOKIE, KvSessionStore, MemorySessionStore, Session, SessionCheck,
    SessionCookie, SessionFuture, SessionStore, cookie_pairs, request_host,
};

/// What one authenticator made of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthnResult {
    /// This authenticator's credential is not on the request: ask the next one.
    NoCredential,
    /// The credential verified: this is the caller.
    Authenticated(Identity),
    /// The credential is present but not acceptable (expired, forged, revoked,
    /// malformed). The reason is for logs only; the client gets a bare `401`.
    Invalid(Cow<'static, str>),
    /// The credential could not be checked: the store it lives in did not
    /// answer. Fail closed without blaming the client: `503` with
    /// `Retry-After`, and the credential (cookie) is left alone.
    Unavailable(Cow<'static, str>),
}

impl AuthnResult {
    /// [`AuthnResult::Invalid`] with a reason for the log.
    pub fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        AuthnResult::Invalid(reason.into())
    }
}

/// The future an [`Authenticator`] returns: an answer known at once
/// ([`AuthnFuture::ready`], no allocation — most requests carry no
/// credential for most authenticators) or work to await
/// ([`AuthnFuture::new`]).
pub struct AuthnFuture<'a>(AuthnState<'a>);

enum AuthnState<'a> {
    Ready(Option<AuthnResult>),
    Boxed(Pin<Box<dyn Future<Output = AuthnResult> + Send + 'a>>),
}

impl<'a> AuthnFuture<'a> {
    /// An answer known now.
    pub fn ready(result: AuthnResult) -> Self {
        AuthnFuture(AuthnState::Ready(Some(result)))
    }

    /// An answer `fut` will give.
    pub fn new(fut: impl Future<Output = AuthnResult> + Send + 'a) -> Self {
        AuthnFuture(AuthnState::Boxed(Box::pin(fut)))
    }
}

impl<'a> From<Pin<Box<dyn Future<Output = AuthnResult> + Send + 'a>>> for AuthnFuture<'a> {
    fn from(fut: Pin<Box<dyn Future<Output = AuthnResult> + Send + 'a>>) -> Self {
        AuthnFuture(AuthnState::Boxed(fut))
    }
}

impl fmt::Debug for AuthnFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthnFuture").finish_non_exhaustive()
    }
}

impl Future for AuthnFuture<'_> {
    type Output = AuthnResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AuthnResult> {
        match &mut self.get_mut().0 {
            // A ready future polled again after completion stays pending
            // (never a panic in a server).
            AuthnState::Ready(r) => r.take().map_or(Poll::Pending, Poll::Ready),
            AuthnState::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// One way to authenticate a request.
///
/// Closures `Fn(&Parts, UnixTime) -> impl Future<Output = AuthnResult>`
/// (returning a `'static` future: copy what you need out of the parts first)
/// implement it too.
pub trait Authenticator: Send + Sync + 'static {
    /// Look for this authenticator's credential on the request and check it at `now`.
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a>;

    /// A short name for logs (`bearer_jwt`, `session_cookie`, ...).
    fn name(&self) -> &str {
        "custom"
    }

    /// The kind of credential this authenticator accepted on `parts` (asked
    /// only after it authenticated them), for routes that restrict it
    /// (`credentials = [...]`). Recorded on the request as a [`Credential`]
    /// extension.
    fn credential(&self, parts: &Parts) -> Credential {
        let _ = parts;
        Credential::Other
    }

    /// Adjust the `401` sent when this authenticator found an invalid
    /// credential (e.g. a `WWW-Authenticate` challenge, clearing a cookie).
    fn challenge(&self, response: &mut Response<BoxBody>) {
        let _ = response;
    }

    /// Like [`challenge`](Self::challenge), knowing the request. The
    /// default calls `challenge`.
    fn challenge_request(&self, parts: &Parts, response: &mut Response<BoxBody>) {
        let _ = parts;
        self.challenge(response);
    }
}

impl<F, Fut> Authenticator for F
where
    F: Fn(&Parts, UnixTime) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AuthnResult> + Send + 'static,
{
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        AuthnFuture::new(self(parts, now))
    }
}

struct Shared {
    authenticators: Vec<Arc<dyn Authenticator>>,
    clock: Clock,
}

/// Runs [`Authenticator`]s in order. See the [module docs](self).
#[derive(Clone)]
pub struct AuthenticateLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for AuthenticateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticateLayer")
            .field(
                "authenticators",
                &self
                    .shared
                    .authenticators
                    .iter()
                    .map(|a| a.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for AuthenticateLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthenticateLayer {
    /// No authenticators yet (every request is anonymous), system clock.
    pub fn new() -> Self {
        AuthenticateLayer {
            shared: Arc::new(Shared {
                authenticators: Vec::new(),
                clock: Arc::new(UnixTime::now),
            }),
        }
    }

    /// Append an authenticator (tried after those added before).
    pub fn with(self, authenticator: impl Authenticator) -> Self {
        self.with_shared(Arc::new(authenticator))
    }

    /// Append a shared authenticator.
    pub fn with_shared(self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.edit(|s| s.authenticators.push(authenticator))
    }

    /// Use another clock (tests).
    pub fn with_clock(self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.edit(|s| s.clock = Arc::new(clock))
    }

    fn edit(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut s = Shared {
            authenticators: self.shared.authenticators.clone(),
            clock: self.shared.clock.clone(),
        };
        f(&mut s);
        AuthenticateLayer {
            shared: Arc::new(s),
        }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service produced by [`AuthenticateLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Authenticate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticate")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Authenticate<S> {
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

/// Future of [`Authenticate`].
pub type ResponseFuture<E> = crate::body::BoxResponseFuture<E>;

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call.
        let mut inner = crate::body::take_ready(&mut self.inner);
        let shared = self.shared.clone();
        let now = (shared.clock)();
        let (mut parts, body) = req.into_parts();
        // Only this layer establishes who is calling, and how.
        parts.extensions.remove::<Identity>();
        parts.extensions.remove::<Credential>();
        if parts.extensions.get::<ClientCertSans>().is_none() {
            let sans = parts
                .extensions
                .get::<ConnectionInfo>()
                .and_then(ClientCertSans::from_connection);
            if let Some(Ok(sans)) = sans {
                parts.extensions.insert(sans);
            }
        }
        ResponseFuture {
            inner: Box::pin(async move {
                for a in &shared.authenticators {
                    match a.authenticate(&parts, now).await {
                        AuthnResult::NoCredential => continue,
                        AuthnResult::Authenticated(identity) => {
                            tracing::debug!(
                                request_id = request_id(&parts),
                                authenticator = a.name(),
                                user = identity.username(),
                                subject = identity.subject(),
                                "authenticated"
                            );
                            let credential = a.credential(&parts);
                            parts.extensions.insert(identity);
                            parts.extensions.insert(credential);
                            break;
                        }
                        AuthnResult::Invalid(reason) => {
                            tracing::warn!(
                                request_id = request_id(&parts),
                                authenticator = a.name(),
                                reason = &*reason,
                                method = %parts.method,
                                path = parts.uri.path(),
                                "credential refused"
                            );
                            let mut res = respond::error(
                                StatusCode::UNAUTHORIZED,
                                parts.extensions.get::<RequestId>(),
                                respond::Flavor::of(&parts.headers),
                            );
                            a.challenge_request(&parts, &mut res);
                            return Ok(res);
                        }
                        AuthnResult::Unavailable(reason) => {
                            tracing::error!(
                                request_id = request_id(&parts),
                                authenticator = a.name(),
                                reason = &*reason,
                                "credential store unavailable; refusing the request"
                            );
                            let mut res = respond::error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                parts.extensions.get::<RequestId>(),
                                respond::Flavor::of(&parts.headers),
                            );
                            res.headers_mut().insert(
                                http::header::RETRY_AFTER,
                                http::HeaderValue::from_static("5"),
                            );
                            return Ok(res);
                        }
                    }
                }
                inner.call(Request::from_parts(parts, body)).await
            }),
        }
    }
}

fn request_id(parts: &Parts) -> &str {
    parts
        .extensions
        .get::<RequestId>()
        .map_or("-", RequestId::as_str)
}
