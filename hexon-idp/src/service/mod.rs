//! The login service: pages on the login host, and the callback every
//! protected host answers to turn a one-time code into its own session.
//!
//! ```text
//! app.example.com/x ──302──▶ auth.example.com/login?rd=https://app.example.com/x
//!   (no session)              password [→ TOTP] → login-host session (__Host-hexon-sso)
//!                             one-time code, bound to app.example.com, 60 s, single use
//! app.example.com/.hexon/callback?code=… ◀──302──┘
//!   code consumed → session scoped to app.example.com (__Host-hexon-session) ──302──▶ /x
//! ```
//!
//! Everything a flow needs between requests (its stage, the return URL,
//! pending TOTP secrets, codes) is sealed in the shared KV, so a flow may
//! move between nodes. See docs/LOGIN.md.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hexon_core::config::LoginConfig;
use hexon_core::store::session::{KvSessionStore, Session, SessionStore as _, cookie_pairs};
use hexon_core::store::{
    CredentialKind, CredentialRecord, DurableStore, KvBackend, KvStore, Material, NewAuditEvent,
    SecretBytes, SecretKeys, StoreError,
};
use hexon_core::{Identity, IdentityKind, UnixTime};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Full, Limited};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::digest_hex;
use crate::pages;
use crate::password::HashPool;
use crate::redirect::{ReturnHosts, ReturnTo};
use crate::throttle::{Throttle, ip_key, user_key};
use crate::totp;
use crate::users::{LocalUser, Users};

mod account;
mod email;
mod passkeys;
mod sessions;

/// The login host's session cookie (host-only: the login host's alone).
pub const SSO_COOKIE: &str = "__Host-hexon-sso";
/// The cookie of a flow in progress (before there is a session).
pub const FLOW_COOKIE: &str = "__Host-hexon-login";
/// The session cookie on protected hosts (what the gateway's session
/// authenticator reads).
pub const APP_COOKIE: &str = "__Host-hexon-session";
/// Where protected hosts take the one-time code.
pub const CALLBACK_PATH: &str = "/.hexon/callback";
/// Where protected hosts sign out of their own session.
pub const APP_LOGOUT_PATH: &str = "/.hexon/logout";
/// Where protected hosts start a sign-in: the gateway sends browsers
/// without a session here (`?rd=<URL>`); it marks the browser with a state
/// cookie and goes on to the login host. A code is accepted only by the
/// browser holding the state it was made for, so nobody can sign a victim
/// in as themselves by sending them a code.
pub const START_PATH: &str = "/.hexon/login";
/// The state cookie of a sign-in started on a protected host.
pub const STATE_COOKIE: &str = "__Host-hexon-state";

/// How long a sign-in page may sit before it is submitted.
const FLOW_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a one-time code is good for.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Largest form body read.
const MAX_FORM: usize = 16 * 1024;
/// How recent a sign-in without the password must be to set a new
/// password without the current one.
const RESET_WINDOW: Duration = Duration::from_secs(600);
/// Recovery codes made at TOTP enrolment.
const RECOVERY_CODES: usize = 10;

/// The login service. Cheap to clone.
#[derive(Clone)]
pub struct LoginService {
    inner: Arc<Inner>,
}

struct Inner {
    config: LoginConfig,
    scheme: &'static str,
    host: String,
    port: Option<u16>,
    origin: String,
    return_hosts: std::sync::RwLock<Arc<ReturnHosts>>,
    users: Arc<dyn Users>,
    store: Arc<dyn DurableStore>,
    sessions: KvSessionStore,
    keys: Arc<SecretKeys>,
    flows: Arc<dyn KvStore>,
    codes: Arc<dyn KvStore>,
    /// Each user's sessions (sealed list), for the account page.
    index: Arc<dyn KvStore>,
    throttle: Throttle,
    hashes: HashPool,
    webauthn: crate::webauthn::RelyingParty,
    mailer: Option<crate::email::Mailer>,
    clock: Arc<dyn Fn() -> UnixTime + Send + Sync>,
}

impl std::fmt::Debug for LoginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginService")
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

/// What the login service needs from the gateway.
pub struct LoginParts {
    /// `[login]`.
    pub config: LoginConfig,
    /// Host patterns of the configured routes (return targets).
    pub route_hosts: Vec<String>,
    /// The users.
    pub users: Arc<dyn Users>,
    /// Credentials and audit events.
    pub store: Arc<dyn DurableStore>,
    /// Shared short-lived state (flows, codes, throttle buckets).
    pub kv: Arc<dyn KvBackend>,
    /// Where sessions live (the gateway's).
    pub sessions: KvSessionStore,
    /// Sealing keys of the state.
    pub keys: Arc<SecretKeys>,
    /// The clock (`None`: the system's; tests and benchmarks move time).
    pub clock: Option<Arc<dyn Fn() -> UnixTime + Send + Sync>>,
}

/// Why the login service could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

// ------------------------------------------------------------ stored state

#[derive(Serialize, Deserialize, Clone, Debug)]
enum Stage {
    /// Username and password (for step-up: `subject` is fixed).
    Password { subject: Option<String> },
    /// A first factor verified (`first`: its method and time; `None` for a
    /// step-up of a live login-host session); a second factor is due.
    SecondFactor {
        subject: String,
        first: Option<(String, i64)>,
        /// Wrong codes so far (five end the flow).
        #[serde(default)]
        failures: u32,
    },
}

/// Wrong second-factor codes that end a sign-in flow.
const MAX_SECOND_FACTOR_FAILURES: u32 = 5;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Flow {
    /// Checked return URL.
    rd: Option<String>,
    stage: Stage,
    /// Digest of the state cookie the return host set (see [`START_PATH`]).
    #[serde(default)]
    state: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Code {
    identity: Identity,
    host: String,
    url: String,
    expires: UnixTime,
    /// Digest of the browser's state cookie on `host`.
    state: String,
    /// The user's revocation generation when the code was made: a code
    /// outlives no "sign out everywhere", password change or admin end.
    generation: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct PendingTotp {
    secret: String,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The CSRF token of a form on a page whose browser holds `cookie`: bound
/// to that browser's secret cookie, so another site cannot know it; derived,
/// so any node can check it.
pub fn csrf_token(cookie: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"hexon csrf\0");
    h.update(cookie.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// A form or query, decoded. Repeated names: the first wins (and forms
/// the service renders never repeat one).
#[derive(Debug, Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The cookie `name` (one of the service's own: visible ASCII, at most
/// 256 bytes); sent twice, neither is trusted.
fn cookie<'a>(parts: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    let mut found = None;
    for line in parts.headers.get_all(COOKIE) {
        for (n, v) in cookie_pairs(line.as_bytes()) {
            if n == name.as_bytes() {
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
        }
    }
    let v = std::str::from_utf8(found?).ok()?;
    (!v.is_empty() && v.len() <= 256).then_some(v)
}

fn set_cookie(name: &str, value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// The request's host, lower case, without port (as sessions' audiences
/// are compared).
fn request_host(parts: &http::request::Parts) -> Option<String> {
    hexon_core::store::session::request_host(parts).map(str::to_ascii_lowercase)
}

/// A response under construction.
struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    location: Option<String>,
    cookies: Vec<HeaderValue>,
}

impl Reply {
    fn page(status: StatusCode, html: String) -> Reply {
        Reply {
            status,
            body: Bytes::from(html),
            content_type: "text/html; charset=utf-8",
            location: None,
            cookies: Vec::new(),
        }
    }
    fn redirect(url: &str) -> Reply {
        Reply {
            status: StatusCode::SEE_OTHER,
            body: Bytes::new(),
            content_type: "text/plain; charset=utf-8",
            location: Some(url.to_owned()),
            cookies: Vec::new(),
        }
    }
    fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(value.to_string()),
            content_type: "application/json",
            location: None,
            cookies: Vec::new(),
        }
    }
    fn script(js: &'static str) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(js.as_bytes()),
            content_type: "text/javascript; charset=utf-8",
            location: None,
            cookies: Vec::new(),
        }
    }
    /// For the passkey script: a redirect becomes `{"redirect": url}`
    /// (with the same cookies), a page becomes `{"error": …}`.
    fn into_json(self, error: &str) -> Reply {
        let cookies = self.cookies;
        let mut r = match self.location {
            Some(l) => Reply::json(StatusCode::OK, &serde_json::json!({ "redirect": l })),
            None => Reply::json(
                if self.status.is_success() {
                    StatusCode::BAD_REQUEST
                } else {
                    self.status
                },
                &serde_json::json!({ "error": error }),
            ),
        };
        r.cookies = cookies;
        r
    }
    fn cookie(mut self, v: HeaderValue) -> Reply {
        self.cookies.push(v);
        self
    }
    fn into_response(self) -> Response<Full<Bytes>> {
        let mut res = Response::new(Full::new(self.body));
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' https: data:; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
        if let Some(l) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(LOCATION, l);
        }
        for c in self.cookies {
            h.append(SET_COOKIE, c);
        }
        res
    }
}

/// A request's context for the handlers.
struct Ctx {
    parts: http::request::Parts,
    query: Form,
    form: Form,
    body: Bytes,
    ip: IpAddr,
    now: UnixTime,
}

impl LoginService {
    /// Start the service (and its password hashing threads).
    pub async fn start(p: LoginParts) -> Result<LoginService, StartError> {
        let (scheme, host) =
            hexon_core::config::login_url_host(&p.config.url).map_err(StartError)?;
        let uri: http::Uri = p
            .config
            .url
            .parse()
            .map_err(|_| StartError("login.url: not a URL".into()))?;
        let port = uri
            .port_u16()
            .filter(|p| *p != if scheme == "http" { 80 } else { 443 });
        let origin = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        let hashes = HashPool::start(&p.config.password).map_err(StartError)?;
        let webauthn = crate::webauthn::RelyingParty::new(&origin, &host, &p.config.brand.name)
            .map_err(StartError)?;
        let mailer = p
            .config
            .email
            .as_ref()
            .map(crate::email::Mailer::new)
            .transpose()
            .map_err(StartError)?;
        let open = |name: &'static str, ttl: Duration| {
            let kv = p.kv.clone();
            async move {
                kv.bucket(name, ttl)
                    .await
                    .map_err(|e| StartError(format!("opening the {name} store: {e}")))
            }
        };
        let flows = open("login_flows", FLOW_TTL).await?;
        let codes = open("login_codes", CODE_TTL).await?;
        let index = open("login_sessions", p.config.session_lifetime.get()).await?;
        let throttle_kv = open(
            "login_throttle",
            p.config
                .throttle
                .window
                .get()
                .max(p.config.throttle.max_delay.get()),
        )
        .await?;
        let service = LoginService {
            inner: Arc::new(Inner {
                throttle: Throttle::new(throttle_kv, p.config.throttle.clone()),
                return_hosts: std::sync::RwLock::new(Arc::new(ReturnHosts::default())),
                config: p.config,
                scheme,
                host,
                port,
                origin,
                users: p.users,
                store: p.store,
                sessions: p.sessions,
                keys: p.keys,
                flows,
                codes,
                index,
                hashes,
                webauthn,
                mailer,
                clock: p.clock.unwrap_or_else(|| Arc::new(UnixTime::now)),
            }),
        };
        service.set_route_hosts(p.route_hosts.iter().map(String::as_str));
        Ok(service)
    }

    /// Replace the hosts browsers may return to (after a reload): the
    /// login host, `route_hosts` and `login.return_hosts`.
    pub fn set_route_hosts<'a>(&self, route_hosts: impl IntoIterator<Item = &'a str>) {
        let i = &self.inner;
        let mut patterns: Vec<&str> = route_hosts.into_iter().collect();
        patterns.push(i.host.as_str());
        patterns.extend(i.config.return_hosts.iter().map(String::as_str));
        let hosts = ReturnHosts::new(i.scheme, i.port, patterns);
        *i.return_hosts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
    }

    fn return_hosts(&self) -> Arc<ReturnHosts> {
        self.inner
            .return_hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where the gateway sends browsers without a session: [`START_PATH`]
    /// on the host they asked for.
    pub fn login_url(&self) -> String {
        START_PATH.to_owned()
    }

    /// The login host (lower case, no port).
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Whether this service answers `parts`: anything on the login host,
    /// and the `/.hexon/` callback and logout paths on every host.
    pub fn handles(&self, parts: &http::request::Parts) -> bool {
        self.handles_target(
            hexon_core::store::session::request_host(parts),
            parts.uri.path(),
        )
    }

    /// [`handles`](Self::handles) from the request's host (without port,
    /// as [`request_host`](hexon_core::store::session::request_host) gives
    /// it) and path.
    pub fn handles_target(&self, host: Option<&str>, path: &str) -> bool {
        path == CALLBACK_PATH
            || path == APP_LOGOUT_PATH
            || path == START_PATH
            || host.is_some_and(|h| h.eq_ignore_ascii_case(&self.inner.host))
    }

    /// Answer a request [`handles`](Self::handles) accepted. `ip` is the
    /// client's address (after trusted-proxy handling).
    pub async fn call<B>(&self, req: Request<B>, ip: IpAddr) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let body = if parts.method == Method::POST {
            match Limited::new(body, MAX_FORM).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return self
                        .message(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "Form too large",
                            "The form sent was too large. Go back and try again.",
                        )
                        .into_response();
                }
            }
        } else {
            Bytes::new()
        };
        let is_form = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let form = if is_form {
            Form::parse(&body)
        } else {
            Form::default()
        };
        let query = Form::parse(parts.uri.query().unwrap_or("").as_bytes());
        let ctx = Ctx {
            parts,
            query,
            form,
            body,
            ip,
            now: (self.inner.clock)(),
        };
        match self.route(&ctx).await {
            Ok(r) => r.into_response(),
            Err(e) => {
                tracing::error!(error = %e, "login service: state unavailable");
                self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again in a moment",
                    "Sign-in is briefly unavailable. Nothing was changed; please try again.",
                )
                .into_response()
            }
        }
    }

    async fn route(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let path = c.parts.uri.path();
        let on_login_host = request_host(&c.parts).is_some_and(|h| h == self.inner.host);
        let m = &c.parts.method;
        if !on_login_host {
            return match (m.as_str(), path) {
                ("GET", CALLBACK_PATH) => self.callback(c).await,
                ("GET", START_PATH) => Ok(self.start_here(c)),
                ("GET" | "POST", APP_LOGOUT_PATH) => self.app_logout(c).await,
                _ => Ok(self.not_found()),
            };
        }
        if *m == Method::POST && !self.same_origin(c) {
            return Ok(self.forbidden_csrf());
        }
        match (m.as_str(), path) {
            ("GET", "/") => Ok(Reply::redirect("/account")),
            ("GET", "/login") => self.login_page(c).await,
            ("POST", "/login") => self.login_password(c).await,
            ("POST", "/login/totp") => self.login_totp(c).await,
            ("POST", "/login/email") if self.inner.mailer.is_some() => self.email_request(c).await,
            ("POST", "/login/email/code") if self.inner.mailer.is_some() => {
                self.email_code(c).await
            }
            ("GET", "/login/email/link") if self.inner.mailer.is_some() => self.email_link(c).await,
            ("GET", "/account") => self.account(c, None, None).await,
            ("POST", "/account/password") => self.change_password(c).await,
            ("GET", "/account/totp") => self.enrol_page(c, None).await,
            ("POST", "/account/totp") => self.enrol_confirm(c).await,
            ("POST", "/account/totp/disable") => self.totp_disable(c).await,
            ("POST", "/account/passkeys/remove") => self.passkey_remove(c).await,
            ("POST", "/account/sessions/end") => self.session_end(c).await,
            ("POST", "/webauthn/register/begin") => self.passkey_register_begin(c).await,
            ("POST", "/webauthn/register/finish") => self.passkey_register_finish(c).await,
            ("POST", "/webauthn/login/begin") => self.passkey_login_begin(c).await,
            ("POST", "/webauthn/login/finish") => self.passkey_login_finish(c).await,
            ("GET", "/static/webauthn.js") => Ok(Reply::script(crate::pages::WEBAUTHN_JS)),
            ("GET", "/logout") => self.logout_page(c).await,
            ("POST", "/logout") => self.logout(c).await,
            ("GET", CALLBACK_PATH) => self.callback(c).await,
            ("GET", START_PATH) => {
                let q = c
                    .parts
                    .uri
                    .query()
                    .map_or(String::new(), |q| format!("?{q}"));
                Ok(Reply::redirect(&format!("/login{q}")))
            }
            _ => Ok(self.not_found()),
        }
    }

    // ------------------------------------------------------------ helpers

    /// A session with the configured idle timeout.
    fn session(&self, identity: Identity, expires: UnixTime, created: UnixTime) -> Session {
        Session::new(identity, expires)
            .created_at(created)
            .with_idle_timeout(self.inner.config.idle_timeout.get())
    }

    fn brand(&self) -> &hexon_core::config::BrandConfig {
        &self.inner.config.brand
    }

    fn message(&self, status: StatusCode, title: &str, text: &str) -> Reply {
        Reply::page(status, pages::message(self.brand(), title, text, None))
    }

    fn not_found(&self) -> Reply {
        Reply::page(
            StatusCode::NOT_FOUND,
            pages::message(
                self.brand(),
                "Not found",
                "There is no such page.",
                Some(("/login", "Sign in")),
            ),
        )
    }

    fn forbidden_csrf(&self) -> Reply {
        Reply::page(
            StatusCode::FORBIDDEN,
            pages::message(
                self.brand(),
                "Form expired",
                "This form could not be checked (it may have come from another site, or your sign-in page expired). Start again.",
                Some(("/login", "Sign in")),
            ),
        )
    }

    /// Browsers tell where a POST came from: refuse cross-site ones before
    /// reading any field (the CSRF token is checked as well).
    fn same_origin(&self, c: &Ctx) -> bool {
        let h = &c.parts.headers;
        if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
            if !matches!(site, "same-origin" | "none") {
                return false;
            }
        }
        match h.get(http::header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            Some(Ok(o)) => o == self.inner.origin,
            Some(Err(_)) => false,
        }
    }

    fn csrf_ok(&self, c: &Ctx, cookie_value: &str) -> bool {
        let expected = csrf_token(cookie_value);
        // Forms carry it as a field; the passkey script as a header.
        let presented = c.form.get("csrf").or_else(|| {
            c.parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
        });
        presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())))
    }

    async fn audit(
        &self,
        now: UnixTime,
        kind: &str,
        subject: Option<&str>,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        let event = NewAuditEvent {
            at: now,
            kind: kind.to_owned(),
            actor: subject.map(str::to_owned),
            subject: subject.map(str::to_owned),
            outcome: outcome.to_owned(),
            detail,
        };
        tracing::info!(kind, subject, outcome, detail = %event.detail, "audit");
        if let Err(e) = self.inner.store.append_audit(&event).await {
            tracing::warn!(error = %e, kind, "audit event not stored");
        }
    }

    fn seal<T: Serialize>(&self, context: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
            what: "login state",
            reason: e.to_string(),
        })?;
        self.inner.keys.seal(&json, context.as_bytes())
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, context: &str, sealed: &[u8]) -> Option<T> {
        let json = self.inner.keys.open(sealed, context.as_bytes()).ok()?;
        serde_json::from_slice(json.expose()).ok()
    }

    /// The login-host session of this browser, if valid (and its cookie).
    async fn sso(&self, c: &Ctx) -> Result<Option<(String, Session)>, StoreError> {
        let Some(id) = cookie(&c.parts, SSO_COOKIE) else {
            return Ok(None);
        };
        let Some(s) = self.inner.sessions.get(id).await? else {
            return Ok(None);
        };
        let valid = s.expires > c.now
            && s.identity.audience() == Some(self.inner.host.as_str())
            && self.inner.users.by_subject(s.identity.subject()).is_some();
        Ok(valid.then(|| (id.to_owned(), s)))
    }

    async fn flow(
        &self,
        c: &Ctx,
    ) -> Result<Option<(String, Flow, hexon_core::store::Revision)>, StoreError> {
        let Some(id) = cookie(&c.parts, FLOW_COOKIE) else {
            return Ok(None);
        };
        let key = digest_hex("flow", id);
        let Some(entry) = self.inner.flows.get(&key).await? else {
            return Ok(None);
        };
        Ok(self
            .open::<Flow>(&format!("hexon login flow\0{key}"), &entry.value)
            .map(|f| (id.to_owned(), f, entry.revision)))
    }

    async fn new_flow(&self, flow: &Flow) -> Result<String, StoreError> {
        let id = random_token();
        let key = digest_hex("flow", &id);
        let sealed = self.seal(&format!("hexon login flow\0{key}"), flow)?;
        self.inner.flows.put(&key, &sealed, FLOW_TTL).await?;
        Ok(id)
    }

    async fn update_flow(
        &self,
        id: &str,
        flow: &Flow,
        revision: hexon_core::store::Revision,
    ) -> Result<bool, StoreError> {
        let key = digest_hex("flow", id);
        let sealed = self.seal(&format!("hexon login flow\0{key}"), flow)?;
        Ok(self
            .inner
            .flows
            .compare_and_set(&key, revision, &sealed, FLOW_TTL)
            .await?
            .is_some())
    }

    /// The password hash of `user`: one set on the login host, else the
    /// configured one.
    async fn password_hash(
        &self,
        user: &LocalUser,
    ) -> Result<(Option<String>, Option<String>), StoreError> {
        let creds = self.inner.store.credentials_of(&user.subject).await?;
        let stored = creds
            .into_iter()
            .rfind(|c| c.kind == CredentialKind::Password);
        Ok(match stored {
            Some(CredentialRecord {
                id,
                material: Material::Hash(h),
                ..
            }) => (Some(h), Some(id)),
            _ => (user.configured_hash.clone(), None),
        })
    }

    /// The second steps `subject` has set up.
    async fn second_factors(&self, subject: &str) -> Result<pages::SecondFactors, StoreError> {
        let creds = self.inner.store.credentials_of(subject).await?;
        Ok(pages::SecondFactors {
            totp: creds.iter().any(|c| c.kind == CredentialKind::Totp),
            passkey: creds.iter().any(|c| c.kind == CredentialKind::WebAuthn),
        })
    }

    async fn totp_credentials(
        &self,
        subject: &str,
    ) -> Result<(Vec<CredentialRecord>, Vec<CredentialRecord>), StoreError> {
        let creds = self.inner.store.credentials_of(subject).await?;
        let (totp, rest): (Vec<_>, Vec<_>) = creds
            .into_iter()
            .partition(|c| c.kind == CredentialKind::Totp);
        let recovery = rest
            .into_iter()
            .filter(|c| c.kind == CredentialKind::RecoveryCode)
            .collect();
        Ok((totp, recovery))
    }

    // ------------------------------------------------------------ login

    fn check_rd(&self, rd: Option<&str>) -> Result<Option<ReturnTo>, Reply> {
        match rd {
            None | Some("") => Ok(None),
            Some(rd) => self.return_hosts().check(rd).map(Some).map_err(|why| {
                tracing::info!(reason = why, "refused a return URL");
                Reply::page(
                    StatusCode::BAD_REQUEST,
                    pages::message(
                        self.brand(),
                        "This sign-in link is not valid",
                        "The page that sent you here asked to return somewhere this gateway does not serve. Go back to the application and try again.",
                        None,
                    ),
                )
            }),
        }
    }

    async fn login_page(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let rd = match self.check_rd(c.query.get("rd")) {
            Ok(rd) => rd,
            Err(reply) => return Ok(reply),
        };
        let state = c
            .query
            .get("state")
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        let step_up = c.query.get("step_up") == Some("1");
        let acr: Vec<&str> = c
            .query
            .get("acr_values")
            .map(|a| a.split(' ').filter(|m| !m.is_empty()).collect())
            .unwrap_or_default();
        let max_age = c
            .query
            .get("max_age")
            .and_then(|a| a.parse::<u64>().ok())
            .map(Duration::from_secs);
        if let Some((_, session)) = self.sso(c).await? {
            let fresh = |m: &str| {
                session
                    .identity
                    .last_auth(m)
                    .is_some_and(|at| max_age.is_none_or(|age| c.now.since(at) <= age))
            };
            let satisfied = !step_up
                || if acr.is_empty() {
                    session
                        .identity
                        .auth()
                        .iter()
                        .any(|e| fresh(e.method.as_str()))
                } else {
                    acr.iter().any(|m| fresh(m))
                };
            if satisfied {
                return self
                    .finish_to(
                        c,
                        &session.identity,
                        rd.as_ref(),
                        session.expires,
                        state.as_deref(),
                    )
                    .await;
            }
            // Step-up: ask again for a method the route accepts.
            let subject = session.identity.subject().to_owned();
            let have = self.second_factors(&subject).await?;
            let factors = pages::SecondFactors {
                totp: have.totp && (acr.is_empty() || acr.contains(&"totp")),
                passkey: have.passkey && (acr.is_empty() || acr.contains(&"webauthn")),
            };
            let stage = if factors.totp || factors.passkey {
                Stage::SecondFactor {
                    subject: subject.clone(),
                    first: None,
                    failures: 0,
                }
            } else if acr.is_empty() || acr.contains(&"password") {
                Stage::Password {
                    subject: Some(subject.clone()),
                }
            } else {
                return Ok(self.message(
                    StatusCode::FORBIDDEN,
                    "A stronger sign-in is needed",
                    &format!(
                        "This page needs you to sign in with {} recently, which is not set up for your account. Set it up on your account page, or ask an administrator.",
                        acr.join(" or ")
                    ),
                ));
            };
            let flow = Flow {
                rd: rd.map(|r| r.url),
                stage: stage.clone(),
                state,
            };
            let id = self.new_flow(&flow).await?;
            let username = self
                .inner
                .users
                .by_subject(&subject)
                .map(|u| u.username)
                .unwrap_or_default();
            let page = match stage {
                Stage::SecondFactor { .. } => {
                    pages::totp(self.brand(), &csrf_token(&id), &username, factors, None)
                }
                Stage::Password { .. } => pages::login(
                    self.brand(),
                    &csrf_token(&id),
                    &username,
                    None,
                    Some("Please confirm your password to continue."),
                    false,
                ),
            };
            return Ok(Reply::page(StatusCode::OK, page).cookie(set_cookie(FLOW_COOKIE, &id)));
        }
        let flow = Flow {
            rd: rd.map(|r| r.url),
            stage: Stage::Password { subject: None },
            state,
        };
        let id = self.new_flow(&flow).await?;
        let notice = (c.query.get("signed_out") == Some("1")).then_some("You are signed out.");
        Ok(Reply::page(
            StatusCode::OK,
            pages::login(
                self.brand(),
                &csrf_token(&id),
                "",
                None,
                notice,
                self.inner.mailer.is_some(),
            ),
        )
        .cookie(set_cookie(FLOW_COOKIE, &id)))
    }

    /// A fresh sign-in page (the old flow expired or was used).
    async fn restart(&self, c: &Ctx, error: &str) -> Result<Reply, StoreError> {
        let flow = Flow {
            rd: None,
            stage: Stage::Password { subject: None },
            state: None,
        };
        let id = self.new_flow(&flow).await?;
        let _ = c;
        Ok(Reply::page(
            StatusCode::BAD_REQUEST,
            pages::login(
                self.brand(),
                &csrf_token(&id),
                "",
                Some(error),
                None,
                self.inner.mailer.is_some(),
            ),
        )
        .cookie(set_cookie(FLOW_COOKIE, &id)))
    }

    async fn login_password(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let Some((id, flow, revision)) = self.flow(c).await? else {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        };
        if !self.csrf_ok(c, &id) {
            return Ok(self.forbidden_csrf());
        }
        let Stage::Password { subject: fixed } = &flow.stage else {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        };
        let typed = c.form.get("username").unwrap_or("").trim();
        let password = c.form.get("password").unwrap_or("");
        let username = match fixed {
            Some(s) => self
                .inner
                .users
                .by_subject(s)
                .map(|u| u.username)
                .unwrap_or_default(),
            None => typed.chars().take(256).collect(),
        };
        let again = |error: &str, status| {
            Reply::page(
                status,
                pages::login(
                    self.brand(),
                    &csrf_token(&id),
                    &username,
                    Some(error),
                    None,
                    fixed.is_none() && self.inner.mailer.is_some(),
                ),
            )
        };
        if username.is_empty() || password.is_empty() || password.len() > 1024 {
            return Ok(again(
                "Enter your username and password.",
                StatusCode::UNPROCESSABLE_ENTITY,
            ));
        }
        let ukey = user_key(&username);
        let ikey = ip_key(c.ip);
        if let Some(wait) = self.inner.throttle.begin(&[&ukey, &ikey], c.now).await? {
            self.audit(
                c.now,
                "login.throttled",
                None,
                "denied",
                serde_json::json!({"username": username, "ip": c.ip.to_string(), "wait_s": wait.as_secs()}),
            )
            .await;
            return Ok(again(
                &format!(
                    "Too many attempts. Wait {} seconds, then try again.",
                    wait.as_secs().max(1)
                ),
                StatusCode::TOO_MANY_REQUESTS,
            ));
        }
        let user = self.inner.users.by_name(&username);
        let (hash, _) = match &user {
            Some(u) => self.password_hash(u).await?,
            None => (None, None),
        };
        let verified = match self.inner.hashes.verify(hash.as_deref(), password).await {
            Ok(v) => v,
            Err(busy) => {
                return Ok(again(&busy.to_string(), StatusCode::SERVICE_UNAVAILABLE));
            }
        };
        let user = match (verified, user) {
            (true, Some(u)) => u,
            (_, u) => {
                // (Counted as a failure by `begin` already.)
                let reason = match (&u, &hash) {
                    (None, _) => "unknown_or_disabled_user",
                    (Some(_), None) => "no_password_set",
                    (Some(_), Some(_)) => "wrong_password",
                };
                self.audit(
                    c.now,
                    "login.failure",
                    u.as_ref().map(|u| u.subject.as_str()),
                    "failure",
                    serde_json::json!({"method": "password", "reason": reason, "username": username, "ip": c.ip.to_string()}),
                )
                .await;
                // One message whatever went wrong: no account enumeration.
                return Ok(again(
                    "Wrong username or password.",
                    StatusCode::UNAUTHORIZED,
                ));
            }
        };
        // The account's failures are forgotten only when the whole sign-in
        // completes: a known password must not buy fresh guesses at the
        // second factor.
        if fixed.is_some() {
            // A step-up by password: the login-host session it steps up
            // still has its other methods.
            return self
                .complete(
                    c,
                    &id,
                    revision,
                    &flow,
                    &user.subject,
                    &[("password", c.now)],
                )
                .await;
        }
        self.after_first_factor(c, &id, revision, &flow, &user.subject, "password")
            .await
    }

    /// A first factor (`method`) verified for `subject`: ask for the second
    /// step the user has set up, or complete if there is none.
    async fn after_first_factor(
        &self,
        c: &Ctx,
        id: &str,
        revision: hexon_core::store::Revision,
        flow: &Flow,
        subject: &str,
        method: &str,
    ) -> Result<Reply, StoreError> {
        let factors = self.second_factors(subject).await?;
        if !(factors.totp || factors.passkey) {
            return self
                .complete(c, id, revision, flow, subject, &[(method, c.now)])
                .await;
        }
        let next = Flow {
            rd: flow.rd.clone(),
            state: flow.state.clone(),
            stage: Stage::SecondFactor {
                subject: subject.to_owned(),
                first: Some((method.to_owned(), c.now.as_secs())),
                failures: 0,
            },
        };
        if !self.update_flow(id, &next, revision).await? {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        }
        let username = self
            .inner
            .users
            .by_subject(subject)
            .map(|u| u.username)
            .unwrap_or_default();
        Ok(Reply::page(
            StatusCode::OK,
            pages::totp(self.brand(), &csrf_token(id), &username, factors, None),
        ))
    }

    /// Check a TOTP or recovery code of `subject`; the method that passed.
    async fn second_factor(
        &self,
        subject: &str,
        code: &str,
        now: UnixTime,
    ) -> Result<Option<&'static str>, StoreError> {
        let (totp, recovery) = self.totp_credentials(subject).await?;
        for cred in &totp {
            let Material::Secret(secret) = &cred.material else {
                continue;
            };
            let secs = u64::try_from(now.as_secs()).unwrap_or(0);
            if let Some(step) = totp::matching_step(secret.expose(), code, secs, cred.counter) {
                // Compare-and-set: of two logins with the same code, one wins.
                if self
                    .inner
                    .store
                    .advance_counter(&cred.id, cred.counter, step, now)
                    .await?
                {
                    return Ok(Some("totp"));
                }
            }
        }
        let normal: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if normal.len() >= 10 {
            let digest = digest_hex("recovery", &normal);
            for cred in &recovery {
                if let Material::Hash(h) = &cred.material {
                    if bool::from(h.as_bytes().ct_eq(digest.as_bytes()))
                        && self.inner.store.delete_credential(&cred.id).await?
                    {
                        return Ok(Some("recovery_code"));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn login_totp(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let expired = "Your sign-in page expired. Please sign in again.";
        let Some((id, flow, revision)) = self.flow(c).await? else {
            return self.restart(c, expired).await;
        };
        if !self.csrf_ok(c, &id) {
            return Ok(self.forbidden_csrf());
        }
        let Stage::SecondFactor {
            subject,
            first,
            failures,
        } = &flow.stage
        else {
            return self.restart(c, expired).await;
        };
        let Some(user) = self.inner.users.by_subject(subject) else {
            return self.restart(c, expired).await;
        };
        if !self.second_step_allowed(c, &flow).await? {
            return self.restart(c, expired).await;
        }
        let factors = self.second_factors(subject).await?;
        let again = |error: &str, status| {
            Reply::page(
                status,
                pages::totp(
                    self.brand(),
                    &csrf_token(&id),
                    &user.username,
                    factors,
                    Some(error),
                ),
            )
        };
        let ukey = user_key(&user.username);
        // Second-step attempts count against the account (the address paid
        // for the first step; the flow allows five wrong codes).
        if let Some(wait) = self.inner.throttle.begin(&[&ukey], c.now).await? {
            return Ok(again(
                &format!(
                    "Too many attempts. Wait {} seconds, then try again.",
                    wait.as_secs().max(1)
                ),
                StatusCode::TOO_MANY_REQUESTS,
            ));
        }
        let code = c.form.get("code").unwrap_or("");
        let method = if code.len() > 64 {
            None
        } else {
            self.second_factor(subject, code, c.now).await?
        };
        let Some(method) = method else {
            self.audit(
                c.now,
                "login.failure",
                Some(subject),
                "failure",
                serde_json::json!({"method": "totp", "reason": "wrong_or_reused_code", "ip": c.ip.to_string()}),
            )
            .await;
            // The flow counts its wrong codes (compare-and-set); too many
            // end it, and the password must be given again.
            let failures = failures + 1;
            let next = Flow {
                rd: flow.rd.clone(),
                state: flow.state.clone(),
                stage: Stage::SecondFactor {
                    subject: subject.clone(),
                    first: first.clone(),
                    failures,
                },
            };
            if failures >= MAX_SECOND_FACTOR_FAILURES
                || !self.update_flow(&id, &next, revision).await?
            {
                self.inner
                    .flows
                    .delete_if(&digest_hex("flow", &id), revision)
                    .await?;
                return self
                    .restart(c, "Too many wrong codes. Please sign in again.")
                    .await;
            }
            return Ok(again(
                "That code is not valid, or was already used. Wait for the next code.",
                StatusCode::UNAUTHORIZED,
            ));
        };
        let mut events = vec![(method, c.now)];
        if let Some((m, at)) = first {
            events.insert(0, (m.as_str(), UnixTime::from_secs(*at)));
        }
        let subject = subject.clone();
        self.complete(c, &id, revision, &flow, &subject, &events)
            .await
    }

    /// A second step may complete: after a first factor, or — for a step-up
    /// — while the login-host session it steps up is still there and is
    /// the same user's.
    async fn second_step_allowed(&self, c: &Ctx, flow: &Flow) -> Result<bool, StoreError> {
        match &flow.stage {
            Stage::SecondFactor { first: Some(_), .. } => Ok(true),
            Stage::SecondFactor {
                subject,
                first: None,
                ..
            } => Ok(self
                .sso(c)
                .await?
                .is_some_and(|(_, s)| s.identity.subject() == subject)),
            Stage::Password { .. } => Ok(false),
        }
    }

    /// The flow succeeded: end it (once), rotate the login-host session,
    /// and send the browser on.
    async fn complete(
        &self,
        c: &Ctx,
        flow_id: &str,
        revision: hexon_core::store::Revision,
        flow: &Flow,
        subject: &str,
        events: &[(&str, UnixTime)],
    ) -> Result<Reply, StoreError> {
        // Single use: of two submissions racing, one completes.
        if !self
            .inner
            .flows
            .delete_if(&digest_hex("flow", flow_id), revision)
            .await?
        {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        }
        let Some(builder) = self.inner.users.identity(subject) else {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        };
        // A step-up keeps the session's earlier events (and its end).
        let previous = self.sso(c).await?;
        let mut builder = builder.kind(IdentityKind::User);
        let mut expires = c
            .now
            .saturating_add(self.inner.config.session_lifetime.get());
        let mut created = c.now;
        let mut family = None;
        if let Some((old_id, old)) = &previous {
            let old_family = old.identity.session().unwrap_or_default().to_owned();
            if old.identity.subject() == subject {
                // A step-up: the same sign-in, stronger. Its sessions on
                // other hosts stay one family (signing out ends them all).
                for e in old.identity.auth() {
                    if !events.iter().any(|(m, _)| *m == e.method.as_str()) {
                        builder = builder.auth_event(e.clone());
                    }
                }
                expires = old.expires;
                created = old.created;
                family = Some(old_family);
            } else {
                // Another user signs in on this browser: the previous
                // user's sessions here end, on every host.
                self.end_family(c, old.identity.subject(), &old_family)
                    .await?;
            }
            // Rotate: the old id is dead whoever it belonged to.
            self.inner.sessions.remove(old_id).await?;
        }
        for (m, at) in events {
            builder = builder.auth(m, *at).map_err(|e| StoreError::Invalid {
                what: "identity",
                reason: e.to_string(),
            })?;
        }
        let handle = family
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| random_token().chars().take(22).collect());
        let identity = builder
            .session(handle)
            .audience(self.inner.host.as_str())
            .build()
            .map_err(|e| StoreError::Invalid {
                what: "identity",
                reason: e.to_string(),
            })?;
        let sso_id = random_token();
        self.inner
            .sessions
            .insert(
                &sso_id,
                &self.session(identity.clone(), expires, created),
                c.now,
            )
            .await?;
        let dropped: Vec<String> = previous
            .iter()
            .map(|(old, _)| KvSessionStore::digest(old))
            .collect();
        let host = self.inner.host.clone();
        self.track(
            c,
            subject,
            Some(self.tracked(c, &sso_id, &identity, &host, expires)),
            &dropped,
        )
        .await?;
        if let Some(user) = self.inner.users.by_subject(subject) {
            self.inner
                .throttle
                .succeeded(&user_key(&user.username), &ip_key(c.ip))
                .await?;
        }
        let methods: Vec<&str> = events.iter().map(|(m, _)| *m).collect();
        self.audit(
            c.now,
            if previous.is_some() {
                "login.step_up"
            } else {
                "login.success"
            },
            Some(subject),
            "success",
            serde_json::json!({"methods": methods, "ip": c.ip.to_string()}),
        )
        .await;
        let rd = flow
            .rd
            .as_deref()
            .and_then(|u| self.return_hosts().check(u).ok());
        let reply = self
            .finish_to(c, &identity, rd.as_ref(), expires, flow.state.as_deref())
            .await?;
        Ok(reply
            .cookie(set_cookie(SSO_COOKIE, &sso_id))
            .cookie(clear_cookie(FLOW_COOKIE)))
    }

    /// Send a signed-in browser to `rd` through a one-time code (or to the
    /// account page).
    async fn finish_to(
        &self,
        c: &Ctx,
        identity: &Identity,
        rd: Option<&ReturnTo>,
        expires: UnixTime,
        state: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let Some(rd) = rd else {
            return Ok(Reply::redirect("/account"));
        };
        if rd.host == self.inner.host {
            return Ok(Reply::redirect(&rd.url));
        }
        let port = self
            .inner
            .port
            .map_or_else(String::new, |p| format!(":{p}"));
        let Some(state) = state else {
            // Not started on that host (no state there yet): start there,
            // which marks the browser and comes straight back.
            return Ok(Reply::redirect(&format!(
                "{}://{}{port}{START_PATH}?rd={}",
                self.inner.scheme,
                rd.host,
                percent_encoding::utf8_percent_encode(&rd.url, percent_encoding::NON_ALPHANUMERIC)
            )));
        };
        let app_identity = identity
            .to_builder()
            .audience(rd.host.as_str())
            .build()
            .map_err(|e| StoreError::Invalid {
                what: "identity",
                reason: e.to_string(),
            })?;
        let code = random_token();
        let key = digest_hex("code", &code);
        let record = Code {
            identity: app_identity,
            host: rd.host.clone(),
            url: rd.url.clone(),
            expires,
            state: state.to_owned(),
            generation: self.inner.sessions.generation(identity.subject()).await?,
        };
        let sealed = self.seal(&format!("hexon login code\0{key}"), &record)?;
        if self
            .inner
            .codes
            .put_if_absent(&key, &sealed, CODE_TTL)
            .await?
            .is_none()
        {
            return Err(StoreError::Conflict {
                what: "login code",
                key,
            });
        }
        let _ = c;
        Ok(Reply::redirect(&format!(
            "{}://{}{port}{CALLBACK_PATH}?code={code}",
            self.inner.scheme, rd.host
        )))
    }

    // ------------------------------------------------------------ protected hosts

    async fn callback(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let bad = |why: &str| {
            tracing::info!(reason = why, "refused a login code");
            Reply::page(
                StatusCode::BAD_REQUEST,
                pages::message(
                    self.brand(),
                    "This sign-in link has expired",
                    "It was already used, is too old, or was made for another site. Open the page you wanted again to sign in.",
                    None,
                ),
            )
        };
        let Some(code) = c.query.get("code").filter(|c| c.len() <= 64) else {
            return Ok(bad("no code"));
        };
        let key = digest_hex("code", code);
        let Some(entry) = self.inner.codes.get(&key).await? else {
            return Ok(bad("unknown or used code"));
        };
        // Consume first: a code works once, even if what follows fails.
        if !self.inner.codes.delete_if(&key, entry.revision).await? {
            return Ok(bad("code already used"));
        }
        let Some(record) = self.open::<Code>(&format!("hexon login code\0{key}"), &entry.value)
        else {
            return Ok(bad("code record does not open"));
        };
        if request_host(&c.parts).as_deref() != Some(record.host.as_str()) {
            self.audit(
                c.now,
                "login.code_refused",
                Some(record.identity.subject()),
                "denied",
                serde_json::json!({"reason": "code for another host", "code_host": record.host, "ip": c.ip.to_string()}),
            )
            .await;
            return Ok(bad("code for another host"));
        }
        // Revoked since the code was made (sign out everywhere, password
        // change, an admin): the code dies with the sessions.
        if self
            .inner
            .sessions
            .generation(record.identity.subject())
            .await?
            != record.generation
        {
            return Ok(bad("sessions revoked since the code was made"));
        }
        // Only the browser that started this sign-in here may use the code.
        let started_here = cookie(&c.parts, STATE_COOKIE).is_some_and(|s| {
            bool::from(
                digest_hex("state", s)
                    .as_bytes()
                    .ct_eq(record.state.as_bytes()),
            )
        });
        if !started_here {
            self.audit(
                c.now,
                "login.code_refused",
                Some(record.identity.subject()),
                "denied",
                serde_json::json!({"reason": "code for another browser", "ip": c.ip.to_string()}),
            )
            .await;
            return Ok(bad("code for another browser"));
        }
        if self
            .inner
            .users
            .by_subject(record.identity.subject())
            .is_none()
        {
            return Ok(bad("user disabled since"));
        }
        let expires = record.expires.min(
            c.now
                .saturating_add(self.inner.config.session_lifetime.get()),
        );
        let id = random_token();
        self.inner
            .sessions
            .insert(
                &id,
                &self.session(record.identity.clone(), expires, c.now),
                c.now,
            )
            .await?;
        let entry = self.tracked(c, &id, &record.identity, &record.host, expires);
        self.track(c, record.identity.subject(), Some(entry), &[])
            .await?;
        Ok(Reply::redirect(&record.url)
            .cookie(set_cookie(APP_COOKIE, &id))
            .cookie(clear_cookie(STATE_COOKIE)))
    }

    /// A protected host starts a sign-in: mark this browser with a state
    /// cookie (host-only) and go to the login host with its digest.
    fn start_here(&self, c: &Ctx) -> Reply {
        let rd = match self.check_rd(c.query.get("rd")) {
            Ok(Some(rd)) => rd,
            Ok(None) => return self.not_found(),
            Err(reply) => return reply,
        };
        if request_host(&c.parts).as_deref() != Some(rd.host.as_str()) {
            return Reply::page(
                StatusCode::BAD_REQUEST,
                pages::message(
                    self.brand(),
                    "This sign-in link is not valid",
                    "A sign-in started here must return here. Go back to the application and try again.",
                    None,
                ),
            );
        }
        let state = random_token();
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut url = format!(
            "{}/login?rd={}&state={}",
            self.inner.origin,
            enc(&rd.url),
            digest_hex("state", &state)
        );
        for p in ["step_up", "acr_values", "max_age"] {
            if let Some(v) = c.query.get(p) {
                url.push_str(&format!("&{p}={}", enc(v)));
            }
        }
        Reply::redirect(&url).cookie(set_cookie(STATE_COOKIE, &state))
    }

    async fn app_logout(&self, c: &Ctx) -> Result<Reply, StoreError> {
        if let Some(id) = cookie(&c.parts, APP_COOKIE) {
            self.inner.sessions.remove(id).await?;
        }
        Ok(Reply::redirect(&format!("{}/logout", self.inner.origin))
            .cookie(clear_cookie(APP_COOKIE)))
    }
}

/// What a browser sends the login service — forms, queries, cookies, host
/// names, return URLs, codes — parsed or refused, never a panic. For the
/// fuzz target `login_inputs`.
#[doc(hidden)]
pub fn fuzz_login_inputs(data: &[u8]) {
    let form = Form::parse(data);
    for (k, _) in &form.0 {
        let _ = form.get(k);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let hosts = ReturnHosts::new("https", None, ["app.example.com", "*.example.org"]);
    if let Ok(r) = hosts.check(text) {
        assert!(hosts.allows(&r.host));
        assert!(r.url.starts_with("https://"));
    }
    let _ = totp::matching_step(b"12345678901234567890", text, 1_700_000_000, 0);
    if let Ok(v) = HeaderValue::from_str(text) {
        let mut req = Request::new(());
        req.headers_mut().insert(COOKIE, v.clone());
        req.headers_mut().insert(http::header::HOST, v);
        let (parts, ()) = req.into_parts();
        if let Some(c) = cookie(&parts, SSO_COOKIE) {
            assert!(!c.is_empty() && c.len() <= 256);
        }
        let _ = request_host(&parts);
    }
}
