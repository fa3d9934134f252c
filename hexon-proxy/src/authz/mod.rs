//! Authorization: the policy decides every request.
//!
//! # Stack order
//!
//! ```text
//! strip → request id → authenticate → authorize → sign → proxy
//! ```
//!
//! 1. [`strip`](crate::strip) first: every client-sent identity header is
//!    gone before any other layer (or a log line) could trust it.
//! 2. [`request_id`](crate::request_id) next, so every later response — a
//!    `401` from authentication, a `403` from here, a `500` from signing —
//!    and every log line carries the id.
//! 3. [`authn`](crate::authn) establishes the [`Identity`] (or anonymous),
//!    failing closed on an invalid credential.
//! 4. **authorize** (this module) asks the policy about the request, the
//!    identity, the source address and the client certificate; only an
//!    allowed request goes on, carrying its [`MatchedRoute`].
//! 5. [`sign`](crate::sign) needs both the identity and the route: it puts
//!    the signed identity headers (or a JWT) for *that* route on the request.
//! 6. The proxy forwards what was allowed and signed, and nothing else.
//!
//! # Outcomes
//!
//! | verdict | browser (`Accept: text/html`) | API client |
//! |---|---|---|
//! | allow | inner service, with [`MatchedRoute`] | same |
//! | need login | `302` to the login URL, `?rd=<original URL>` (no login URL: `401`) | `401`, `WWW-Authenticate: Bearer realm="hexon"` |
//! | need step-up | `302` to the login URL with `step_up=1`, `acr_values`, `max_age` | `401`, `WWW-Authenticate: Bearer error="insufficient_user_authentication", acr_values=…, max_age=…` (RFC 9470) |
//! | deny | `403` page | `403` JSON |
//!
//! Clients never see a rule name or a reason; both go to the log (fields
//! `request_id`, `user`, `route`, `decision`, `reason`) and into the
//! response extensions as [`AuthzOutcome`] for an outer audit layer.
//!
//! The policy is a [`PolicyHandle`]: a configuration reload
//! [`store`s](PolicyHandle::store) a new engine; requests already decided
//! keep the engine they were decided with.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hexon_core::policy::{Credential, Decision, PolicyEngine, Reason, Subject, Verdict};
use hexon_core::verify::Clock;
use hexon_core::{AuthMethod, Identity, UnixTime};
use http::header::{HOST, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::ClientCertSans;
use crate::body::BoxBody;
use crate::clients::{Grants, Permit};
use crate::ext::{ConnectionInfo, MatchedRoute, RequestId};
use crate::respond;

/// A hot-swappable, shared policy engine.
#[derive(Clone)]
pub struct PolicyHandle(Arc<RwLock<Arc<PolicyEngine>>>);

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle").finish_non_exhaustive()
    }
}

impl PolicyHandle {
    /// A handle on `engine`.
    pub fn new(engine: impl Into<Arc<PolicyEngine>>) -> Self {
        PolicyHandle(Arc::new(RwLock::new(engine.into())))
    }

    /// The current engine (a request keeps the one it loaded).
    pub fn load(&self) -> Arc<PolicyEngine> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new engine for requests from now on.
    pub fn store(&self, engine: impl Into<Arc<PolicyEngine>>) {
        let engine = engine.into();
        match self.0.write() {
            Ok(mut g) => *g = engine,
            Err(p) => *p.into_inner() = engine,
        }
    }
}

/// The verdict, owned (for [`AuthzOutcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthzVerdict {
    /// Allowed.
    Allow,
    /// Anonymous; a login could allow it.
    NeedLogin,
    /// Authenticated; a fresh authentication with one of `methods` (any if
    /// empty) within `max_age` could allow it.
    NeedStepUp {
        /// Acceptable methods.
        methods: Vec<AuthMethod>,
        /// Freshness required.
        max_age: Option<Duration>,
    },
    /// Refused.
    Deny,
}

impl AuthzVerdict {
    /// `allow`, `need_login`, `need_step_up`, `deny`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthzVerdict::Allow => "allow",
            AuthzVerdict::NeedLogin => "need_login",
            AuthzVerdict::NeedStepUp { .. } => "need_step_up",
            AuthzVerdict::Deny => "deny",
        }
    }
}

/// Response (and, when allowed, request) extension: what the policy decided,
/// for audit. Never sent to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthzOutcome {
    /// The verdict.
    pub verdict: AuthzVerdict,
    /// Why (stable code: [`Reason::as_str`]).
    pub reason: Reason,
    /// The matched route, if any.
    pub route: Option<Arc<str>>,
    /// The deciding rule, e.g. `allow[0] "admins"`, if a rule decided.
    pub rule: Option<String>,
}

impl AuthzOutcome {
    fn from_decision(d: &Decision<'_>) -> Self {
        let verdict = match d.verdict {
            Verdict::Allow => AuthzVerdict::Allow,
            Verdict::NeedLogin => AuthzVerdict::NeedLogin,
            Verdict::NeedStepUp { methods, max_age } => AuthzVerdict::NeedStepUp {
                methods: methods.to_vec(),
                max_age,
            },
            Verdict::Deny => AuthzVerdict::Deny,
        };
        AuthzOutcome {
            verdict,
            reason: d.reason,
            route: d.route.map(Arc::from),
            rule: d.rule.map(|r| r.to_string()),
        }
    }
}

/// The login URL is not an absolute `http(s)` URL or an absolute path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "login URL {0:?} must be an absolute http(s) URL or a path starting with '/', without fragment"
)]
pub struct InvalidLoginUrl(pub String);

#[derive(Clone, Debug)]
struct Login {
    url: Arc<str>,
    return_param: Arc<str>,
}

/// Characters kept as-is in query parameter values: RFC 3986 unreserved.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Decides every request with the policy. See the [module docs](self).
#[derive(Clone)]
pub struct AuthorizeLayer {
    policy: PolicyHandle,
    login: Option<Login>,
    clock: Clock,
    grants: Option<Arc<dyn Grants>>,
}

impl fmt::Debug for AuthorizeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeLayer")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl AuthorizeLayer {
    /// Decide with `policy`; no login URL (login needed → `401`), system clock.
    pub fn new(policy: PolicyHandle) -> Self {
        AuthorizeLayer {
            policy,
            login: None,
            clock: Arc::new(UnixTime::now),
            grants: None,
        }
    }

    /// Decide API clients by their permissions (see [`crate::clients`]):
    /// after the route's deny rules, a client passes only with a grant for
    /// the route and method (`client_permission`), else `403`
    /// (`no_permission`, `method_not_permitted`).
    #[must_use]
    pub fn with_grants(mut self, grants: Arc<dyn Grants>) -> Self {
        self.grants = Some(grants);
        self
    }

    /// Send browsers that need a login or step-up to `url`, with the original
    /// URL in the query parameter `rd` (see [`with_return_param`](Self::with_return_param)).
    /// The login service must check the return URL against its allowed hosts.
    pub fn with_login_url(mut self, url: &str) -> Result<Self, InvalidLoginUrl> {
        let bad = || InvalidLoginUrl(url.chars().take(200).collect());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let absolute = matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some();
        let path = uri.scheme().is_none()
            && uri.authority().is_none()
            && url.starts_with('/')
            && !url.starts_with("//");
        if !(absolute || path) || url.contains('#') {
            return Err(bad());
        }
        let return_param = self
            .login
            .as_ref()
            .map_or_else(|| Arc::from("rd"), |l| l.return_param.clone());
        self.login = Some(Login {
            url: Arc::from(url),
            return_param,
        });
        Ok(self)
    }

    /// The query parameter carrying the original URL (default `rd`).
    pub fn with_return_param(mut self, name: &str) -> Self {
        if let Some(l) = &mut self.login {
            l.return_param = Arc::from(name);
        }
        self
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`AuthorizeLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

impl<S: fmt::Debug> fmt::Debug for Authorize<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorize")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S> Authorize<S> {
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

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Decide `req` with `engine` at `now`; API clients by their `grants`.
fn decide<B>(
    engine: &PolicyEngine,
    grants: Option<&dyn Grants>,
    req: &Request<B>,
    now: UnixTime,
) -> AuthzOutcome {
    let ext = req.extensions();
    let identity = ext.get::<Identity>();
    let conn = ext.get::<ConnectionInfo>();
    let parsed;
    let sans = match ext.get::<ClientCertSans>() {
        Some(s) => Some(s),
        None => {
            parsed = conn
                .and_then(ClientCertSans::from_connection)
                .and_then(Result::ok);
            parsed.as_ref()
        }
    };
    let cert_sans = sans.map(ClientCertSans::to_cert_sans).unwrap_or_default();
    let mut subject = Subject::new(identity, now).with_client_cert_sans(&cert_sans);
    if let Some(c) = conn {
        subject = subject.with_source_ip(canonical(c.peer.ip()));
    }
    if let Some(c) = ext.get::<Credential>() {
        subject = subject.with_credential(*c);
    }
    let mut outcome = AuthzOutcome::from_decision(&engine.decide_http(req, &subject));
    // API clients pass by their grants: the route's deny rules, accepted
    // credentials (and public routes) apply as to anyone, its allow rules (written for people and
    // groups) do not.
    if let (Some(grants), Some(identity), Some(route)) = (grants, identity, &outcome.route) {
        let settled = matches!(
            outcome.reason,
            Reason::DeniedByRule
                | Reason::Public
                | Reason::PublicMethod
                | Reason::CredentialNotAccepted
        );
        if !settled {
            if let Some(permit) = grants.permit(identity, route, req.method().as_str()) {
                let (verdict, reason) = match permit {
                    Permit::Allowed => (AuthzVerdict::Allow, Reason::ClientPermission),
                    Permit::NoPermission => (AuthzVerdict::Deny, Reason::NoPermission),
                    Permit::MethodNotPermitted => (AuthzVerdict::Deny, Reason::MethodNotPermitted),
                };
                outcome.verdict = verdict;
                outcome.reason = reason;
                outcome.rule = None;
            }
        }
    }
    outcome
}

impl AuthorizeLayer {
    /// The URL the browser asked for, for the login service to return to.
    fn original_url<B>(req: &Request<B>) -> String {
        let scheme = req
            .uri()
            .scheme_str()
            .or_else(|| req.extensions().get::<ConnectionInfo>().map(|c| c.scheme()))
            .unwrap_or("https");
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        format!("{scheme}://{host}{pq}")
    }

    fn login_redirect<B>(
        &self,
        login: &Login,
        req: &Request<B>,
        extra: &[(&str, String)],
    ) -> String {
        let mut url = String::from(&*login.url);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&login.return_param);
        url.push('=');
        url.extend(utf8_percent_encode(&Self::original_url(req), QUERY_VALUE));
        for (k, v) in extra {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.extend(utf8_percent_encode(v, QUERY_VALUE));
        }
        url
    }

    fn refuse<B>(&self, req: &Request<B>, outcome: &AuthzOutcome) -> Response<BoxBody> {
        let id = req.extensions().get::<RequestId>();
        let flavor = respond::Flavor::of(req.headers());
        let html = flavor == respond::Flavor::Html;
        match &outcome.verdict {
            AuthzVerdict::NeedLogin => match (&self.login, html) {
                (Some(login), true) => respond::redirect(&self.login_redirect(login, req, &[]), id),
                _ => {
                    let mut res = respond::error(StatusCode::UNAUTHORIZED, id, flavor);
                    res.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static(r#"Bearer realm="hexon""#),
                    );
                    res
                }
            },
            AuthzVerdict::NeedStepUp { methods, max_age } => {
                let acr = methods
                    .iter()
                    .map(AuthMethod::as_str)
                    .collect::<Vec<_>>()
                    .join(" ");
                match (&self.login, html) {
                    (Some(login), true) => {
                        let mut extra = vec![("step_up", "1".to_owned())];
                        if !acr.is_empty() {
                            extra.push(("acr_values", acr));
                        }
                        if let Some(a) = max_age {
                            extra.push(("max_age", a.as_secs().to_string()));
                        }
                        respond::redirect(&self.login_redirect(login, req, &extra), id)
                    }
                    _ => {
                        let mut res = respond::error(StatusCode::UNAUTHORIZED, id, flavor);
                        // Method names are [a-z0-9_-], so they need no escaping.
                        let mut v = String::from(
                            r#"Bearer realm="hexon", error="insufficient_user_authentication", error_description="A different authentication level is required""#,
                        );
                        if !acr.is_empty() {
                            v.push_str(&format!(r#", acr_values="{acr}""#));
                        }
                        if let Some(a) = max_age {
                            v.push_str(&format!(r#", max_age="{}""#, a.as_secs()));
                        }
                        if let Ok(v) = HeaderValue::from_str(&v) {
                            res.headers_mut().insert(WWW_AUTHENTICATE, v);
                        }
                        res
                    }
                }
            }
            AuthzVerdict::Deny | AuthzVerdict::Allow => {
                respond::error(StatusCode::FORBIDDEN, id, flavor)
            }
        }
    }
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let now = (self.layer.clock)();
        // A snapshot pinned on the request (one configuration generation for
        // the whole stack) wins over the handle's current engine.
        let engine = req
            .extensions()
            .get::<Arc<PolicyEngine>>()
            .cloned()
            .unwrap_or_else(|| self.layer.policy.load());
        let outcome = decide(&engine, self.layer.grants.as_deref(), &req, now);
        drop(engine);

        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map_or("-", RequestId::as_str);
        let user = req
            .extensions()
            .get::<Identity>()
            .map_or("-", Identity::username);
        let route = outcome.route.as_deref().unwrap_or("-");
        let allowed = outcome.verdict == AuthzVerdict::Allow;
        if allowed {
            tracing::debug!(
                request_id,
                user,
                route,
                decision = outcome.verdict.as_str(),
                reason = outcome.reason.as_str(),
                rule = outcome.rule.as_deref(),
                "authorized"
            );
        } else {
            tracing::info!(request_id, user, route, decision = outcome.verdict.as_str(), reason = outcome.reason.as_str(), rule = outcome.rule.as_deref(), method = %req.method(), path = req.uri().path(), "not authorized");
        }

        match (&outcome.verdict, outcome.route.clone()) {
            (AuthzVerdict::Allow, Some(route)) => {
                req.extensions_mut().insert(MatchedRoute(route));
                req.extensions_mut().insert(outcome.clone());
                ResponseFuture {
                    state: State::Inner {
                        fut: self.inner.call(req),
                        outcome: Some(outcome),
                    },
                }
            }
            _ => {
                // An allow without a route cannot happen; refuse it all the same.
                let mut res = self.layer.refuse(&req, &outcome);
                res.extensions_mut().insert(outcome);
                ResponseFuture {
                    state: State::Ready { res: Some(res) },
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`Authorize`]: adds [`AuthzOutcome`] to the response.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] fut: F, outcome: Option<AuthzOutcome> },
        Ready { res: Option<Response<BoxBody>> },
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
{
    type Output = Result<Response<BoxBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut, outcome } => {
                let mut res = std::task::ready!(fut.poll(cx))?;
                if let Some(o) = outcome.take() {
                    res.extensions_mut().insert(o);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Ready { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
