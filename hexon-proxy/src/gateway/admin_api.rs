//! The admin REST API on the admin listener (`/api/v1/…`): API clients,
//! their credentials and permissions. JSON in and out; the OpenAPI document
//! is at `/api/v1/openapi.json`.
//!
//! Callers authenticate with a gateway bearer token (`hexon token -u NAME`)
//! of an enabled user in `gateway.admin_group`. Every change is an audit
//! event in the durable store (who, what, when, result), failures included,
//! and reloads the gateway's client table at once.

use std::sync::Arc;

use bytes::Bytes;
use hexon_core::jwt::JwtVerifier;
use hexon_core::store::{
    ApiClientRecord, ClientStatus, CredentialKind, CredentialRecord, Material, NewAuditEvent,
    PermissionRecord, StoreError,
};
use hexon_core::{Identity, UnixTime};
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt as _, Full, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clients::{self, ClientRegistry};

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// The OpenAPI document.
const OPENAPI: &str = include_str!("admin_openapi.json");

type Check = Arc<dyn Fn(&Identity) -> Result<(), &'static str> + Send + Sync>;
/// Whether an identity is in a group now.
type Membership = Arc<dyn Fn(&Identity, &str) -> bool + Send + Sync>;

/// The admin API. See the [module docs](self).
#[derive(Clone)]
pub struct AdminApi {
    clients: ClientRegistry,
    events: Option<Arc<dyn hexon_core::store::EventBus>>,
    kv: Option<Arc<dyn hexon_core::store::KvStore>>,
    verifier: Arc<JwtVerifier>,
    enabled: Check,
    group: Arc<str>,
    member: Option<Membership>,
    policy: Option<crate::authz::PolicyHandle>,
    route_set: Option<super::routes::RouteSet>,
    sessions: Option<hexon_core::store::session::KvSessionStore>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// An HTTP answer of this API.
type Answer = Response<Full<Bytes>>;

/// A JSON answer.
fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(
        status,
        &json!({ "error": message.into(), "status": status.as_u16() }),
    )
}

fn store_error(e: &StoreError) -> Response<Full<Bytes>> {
    match e {
        StoreError::NotFound { .. } => problem(StatusCode::NOT_FOUND, e.to_string()),
        StoreError::AlreadyExists { .. } => problem(StatusCode::CONFLICT, e.to_string()),
        StoreError::Conflict { .. } => problem(
            StatusCode::CONFLICT,
            format!("{e}; read the client again and retry"),
        ),
        StoreError::Invalid { .. } => problem(StatusCode::BAD_REQUEST, e.to_string()),
        StoreError::Unavailable { .. } => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store does not answer; retry",
        ),
        _ => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store error (see the gateway log)",
        ),
    }
}

/// A `400` listing every problem of a route (`errors`: one per problem,
/// with its location), and all of them in `error`.
fn invalid(e: &hexon_core::config::ConfigErrors) -> Answer {
    let errors: Vec<Value> =
        e.0.iter()
            .map(|e| json!({ "location": e.location, "message": e.message }))
            .collect();
    reply(
        StatusCode::BAD_REQUEST,
        &json!({ "error": format!("invalid route:\n{e}"), "errors": errors, "status": 400 }),
    )
}

/// What the audit trail keeps of a route change: the definition when it
/// was accepted, the error otherwise.
fn route_detail(res: &Answer, body: &[u8]) -> Value {
    if res.status().is_success() {
        json!({ "route": serde_json::from_slice::<Value>(body).ok() })
    } else {
        json!({})
    }
}

/// A store route's name: it is a URL path segment of this API.
fn store_route_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        // `.` and `..` are path segments clients rewrite.
        && s.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// Apply the store's routes on this node and answer `applied: true`, or
/// `applied: false` with a `warning` when the change is stored but this
/// node could not apply all of it.
async fn applied(set: &super::routes::RouteSet, status: StatusCode, mut body: Value) -> Answer {
    let outcome = set.reload().await;
    if let Value::Object(m) = &mut body {
        m.insert("applied".into(), json!(outcome.is_ok()));
        if let Err(e) = &outcome {
            // Stored (and announced to the other nodes); this node could not
            // apply all of it. Checked before storing, so rare: a race with
            // another change or a file reload.
            tracing::error!(error = %e, "a route change was stored but not fully applied here");
            m.insert("warning".into(), json!(e.to_string()));
        }
    }
    reply(status, &body)
}

fn client_json(c: &ApiClientRecord) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "status": c.status.as_str(),
        "groups": c.groups,
        "description": c.description,
        "rate_limit_per_minute": c.rate_limit_per_minute,
        "created_at": c.created_at.as_secs(),
        "updated_at": c.updated_at.as_secs(),
        "version": c.version,
    })
}

fn credential_json(c: &CredentialRecord) -> Value {
    use base64::Engine as _;
    let public_key = match (&c.kind, &c.material) {
        (CredentialKind::Ed25519Key, Material::Public(p)) => {
            Some(base64::engine::general_purpose::STANDARD.encode(p))
        }
        _ => None,
    };
    json!({
        "id": c.id,
        "kind": match c.kind {
            CredentialKind::HmacSecret => "hmac",
            CredentialKind::Ed25519Key => "ed25519",
            k => k.as_str(),
        },
        "public_key": public_key,
        "label": c.label,
        "prefix": c.lookup,
        "created_at": c.created_at.as_secs(),
        "last_used_at": c.last_used_at.map(UnixTime::as_secs),
        "expires_at": c.expires_at.map(UnixTime::as_secs),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    rate_limit_per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientPatch {
    #[serde(default)]
    status: Option<ClientStatus>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
    /// Absent: unchanged; `null`: no limit; a number: the limit.
    #[serde(default, deserialize_with = "present")]
    rate_limit_per_minute: Option<Option<u32>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

const ZERO_RATE: &str = "rate_limit_per_minute must be at least 1 (null: no limit)";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    kind: String,
    /// For `ed25519`: the client's public key (PEM or base64 of 32 bytes).
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    label: String,
    /// Seconds until it expires.
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    route: String,
    methods: Vec<String>,
}

/// An id or name: 1-64 of `A-Z a-z 0-9 . _ -`.
fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_method(m: &str) -> bool {
    m == "*" || ((1..=16).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// What one request did, for the audit trail.
struct Change {
    kind: &'static str,
    subject: Option<String>,
    detail: Value,
}

impl AdminApi {
    /// Manage `clients`; admit bearer tokens `verifier` accepts whose
    /// identity passes `enabled` and is in `group`.
    pub fn new(
        clients: ClientRegistry,
        verifier: JwtVerifier,
        enabled: impl Fn(&Identity) -> Result<(), &'static str> + Send + Sync + 'static,
        group: &str,
    ) -> Self {
        AdminApi {
            clients,
            events: None,
            kv: None,
            verifier: Arc::new(verifier),
            enabled: Arc::new(enabled),
            group: Arc::from(group),
            member: None,
            policy: None,
            route_set: None,
            sessions: None,
        }
    }

    /// List the routes of `policy` at `GET /api/v1/routes` (the names
    /// permissions refer to).
    #[must_use]
    pub fn with_routes(mut self, policy: crate::authz::PolicyHandle) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Manage the routes kept in the durable store at `/api/v1/routes`
    /// (create, change, delete; applied at once on this node and, through
    /// the event bus, on every other).
    #[must_use]
    pub fn with_route_store(mut self, routes: super::routes::RouteSet) -> Self {
        self.route_set = Some(routes);
        self
    }

    fn routes(&self) -> Response<Full<Bytes>> {
        let Some(policy) = &self.policy else {
            return problem(StatusCode::NOT_FOUND, "routes are not published here");
        };
        let engine = policy.load();
        let file = self.route_set.as_ref().map(|s| s.file_route_names());
        let routes: Vec<Value> = engine
            .routes()
            .iter()
            .map(|r| {
                let mut v = json!({
                    "name": r.name(),
                    "host": r.host(),
                    "path": r.path(),
                    "methods": r.methods().collect::<Vec<_>>(),
                    "public": r.is_public(),
                    "credentials": r.credentials().map(|c| c.as_str()).collect::<Vec<_>>(),
                });
                if let (Some(file), Value::Object(m)) = (&file, &mut v) {
                    let source = if file.contains(r.name()) {
                        "file"
                    } else {
                        "store"
                    };
                    m.insert("source".into(), json!(source));
                }
                v
            })
            .collect();
        reply(StatusCode::OK, &json!({ "routes": routes }))
    }

    /// End users' sessions at `DELETE /api/v1/users/{subject}/sessions`.
    #[must_use]
    pub fn with_sessions(mut self, sessions: hexon_core::store::session::KvSessionStore) -> Self {
        self.sessions = Some(sessions);
        self
    }

    async fn end_sessions(&self, subject: &str) -> Response<Full<Bytes>> {
        let Some(sessions) = &self.sessions else {
            return problem(StatusCode::NOT_FOUND, "sessions are not managed here");
        };
        if subject.is_empty() || subject.len() > 256 {
            return problem(StatusCode::BAD_REQUEST, "a user's subject, 1 to 256 bytes");
        }
        match sessions.revoke_subject(subject).await {
            Ok(()) => reply(StatusCode::OK, &json!({ "ended": subject })),
            Err(e) => store_error(&e),
        }
    }

    /// Decide admin-group membership with `member(identity, group)` (the
    /// gateway asks its current directory) instead of the groups the token
    /// carries, so a user removed from the group loses the admin API at
    /// once, not when their token expires.
    #[must_use]
    pub fn with_membership(
        mut self,
        member: impl Fn(&Identity, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.member = Some(Arc::new(member));
        self
    }

    /// Tell the other nodes (through `events`) after every change, so they
    /// read the clients again.
    #[must_use]
    pub fn with_events(mut self, events: Arc<dyn hexon_core::store::EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    /// Also check `kv` (a bucket of the shared store) in `/health`.
    #[must_use]
    pub fn with_health_kv(mut self, kv: Arc<dyn hexon_core::store::KvStore>) -> Self {
        self.kv = Some(kv);
        self
    }

    /// `/health`: whether the durable store and the shared store answer
    /// (`200`, or `503` naming what does not). No credential needed; no
    /// detail beyond up or down.
    pub async fn health(&self) -> Response<Full<Bytes>> {
        let store = match self.clients.store().schema_version().await {
            Ok(_) => "ok",
            Err(e) => {
                tracing::warn!(error = %e, "health: durable store");
                "down"
            }
        };
        let kv = match &self.kv {
            None => "not checked",
            Some(kv) => match kv.get("health.probe").await {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(error = %e, "health: shared store");
                    "down"
                }
            },
        };
        let up = store == "ok" && kv != "down";
        let status = if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        reply(
            status,
            &json!({ "status": if up { "ok" } else { "degraded" }, "store": store, "kv": kv }),
        )
    }

    fn admin<B>(&self, req: &Request<B>, now: UnixTime) -> Result<Identity, Box<Answer>> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            let mut res = problem(
                StatusCode::UNAUTHORIZED,
                "send a gateway token of an admin: Authorization: Bearer $(hexon token -u NAME)",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(r#"Bearer realm="hexon-admin""#),
            );
            return Err(Box::new(res));
        };
        let identity = match self.verifier.verify(token.trim(), now) {
            Ok(v) => v.identity,
            Err(e) => {
                return Err(Box::new(problem(
                    StatusCode::UNAUTHORIZED,
                    format!("invalid token: {e}"),
                )));
            }
        };
        if let Err(why) = (self.enabled)(&identity) {
            return Err(Box::new(problem(StatusCode::UNAUTHORIZED, why)));
        }
        let member = match &self.member {
            Some(m) => m(&identity, &self.group),
            None => identity.in_group(&self.group),
        };
        if !member {
            return Err(Box::new(problem(
                StatusCode::FORBIDDEN,
                format!(
                    "{:?} is not in the admin group {:?}",
                    identity.username(),
                    &*self.group
                ),
            )));
        }
        Ok(identity)
    }

    /// Answer one request under `/api/v1/`.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let now = UnixTime::now();
        if req.method() == Method::GET && req.uri().path() == "/api/v1/openapi.json" {
            let mut res = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            return res;
        }
        let admin = match self.admin(&req, now) {
            Ok(a) => a,
            Err(res) => return *res,
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request bodies are at most {MAX_BODY} bytes"),
                );
            }
        };
        let path = parts.uri.path().trim_end_matches('/');
        let segments: Vec<&str> = path
            .strip_prefix("/api/v1/")
            .unwrap_or_default()
            .split('/')
            .collect();
        let mutating = parts.method != Method::GET;
        let (res, change) = self.route(&parts.method, &segments, &body, now).await;
        if mutating {
            let client = change.as_ref().and_then(|c| c.subject.clone());
            if let Some(change) = change {
                self.audit(&admin, change, res.status(), now).await;
            }
            if res.status().is_success() && segments.first() == Some(&"routes") {
                // Applied on this node by the handler; now the others.
                if let Some(events) = &self.events {
                    let event = hexon_core::store::Event::RouteChanged {
                        name: client.unwrap_or_default(),
                    };
                    if let Err(e) = events.publish(&event).await {
                        tracing::error!(error = %e, "could not tell the other nodes about a route change; they apply it within a minute (resync)");
                    }
                }
            } else if res.status().is_success() {
                if let Err(e) = self.clients.reload().await {
                    tracing::error!(error = %e, "reloading API clients after an admin change failed; the gateway keeps the previous table");
                }
                if let Some(events) = &self.events {
                    let event = hexon_core::store::Event::ApiClientChanged {
                        client: client.unwrap_or_default(),
                    };
                    if let Err(e) = events.publish(&event).await {
                        tracing::error!(error = %e, "could not tell the other nodes about an API client change; they see it at their next restart or change");
                    }
                }
            }
        }
        res
    }

    async fn audit(&self, admin: &Identity, change: Change, status: StatusCode, now: UnixTime) {
        let outcome = if status.is_success() {
            "success"
        } else {
            "failure"
        };
        let mut detail = change.detail;
        if let Value::Object(m) = &mut detail {
            m.insert("status".into(), json!(status.as_u16()));
        }
        let event = NewAuditEvent {
            at: now,
            kind: change.kind.to_owned(),
            actor: Some(admin.username().to_owned()),
            subject: change.subject,
            outcome: outcome.into(),
            detail,
        };
        tracing::info!(
            kind = change.kind,
            actor = admin.username(),
            outcome,
            "admin change"
        );
        if let Err(e) = self.clients.store().append_audit(&event).await {
            tracing::error!(error = %e, kind = change.kind, "could not write an admin audit event");
        }
    }

    async fn route(
        &self,
        method: &Method,
        segments: &[&str],
        body: &[u8],
        now: UnixTime,
    ) -> (Response<Full<Bytes>>, Option<Change>) {
        let change = |kind, subject: &str, detail| {
            Some(Change {
                kind,
                subject: Some(subject.to_owned()),
                detail,
            })
        };
        match (method, segments) {
            (&Method::GET, ["clients"]) => (self.list().await, None),
            (&Method::GET, ["routes"]) => (self.routes(), None),
            (&Method::GET, ["routes", name]) => (self.show_route(name).await, None),
            // The definition goes into the audit trail only once it passed
            // (a refused one may hold what validation refuses to keep,
            // such as credentials in an upstream URL).
            (&Method::POST, ["routes"]) => {
                let (res, name) = self.put_route(None, body, now).await;
                let detail = route_detail(&res, body);
                (
                    res,
                    change("route.created", name.as_deref().unwrap_or("-"), detail),
                )
            }
            (&Method::PUT, ["routes", name]) => {
                let (res, _) = self.put_route(Some(name), body, now).await;
                let detail = route_detail(&res, body);
                (res, change("route.updated", name, detail))
            }
            (&Method::DELETE, ["routes", name]) => (
                self.delete_route(name).await,
                change("route.deleted", name, json!({})),
            ),
            (&Method::DELETE, ["users", subject, "sessions"]) => (
                self.end_sessions(subject).await,
                change("sessions.ended", subject, json!({})),
            ),
            (&Method::POST, ["clients"]) => {
                let (res, id) = self.create(body, now).await;
                let c = change("client.created", id.as_deref().unwrap_or("-"), json!({}));
                (res, c)
            }
            (&Method::GET, ["clients", id]) => (self.show(id).await, None),
            (&Method::PATCH, ["clients", id]) => {
                let detail = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
                (
                    self.update(id, body, now).await,
                    change("client.updated", id, json!({ "changes": detail })),
                )
            }
            (&Method::DELETE, ["clients", id]) => {
                let res = match self.clients.store().delete_api_client(id).await {
                    Ok(true) => reply(StatusCode::OK, &json!({ "deleted": id })),
                    Ok(false) => problem(StatusCode::NOT_FOUND, format!("no client {id:?}")),
                    Err(e) => store_error(&e),
                };
                (res, change("client.deleted", id, json!({})))
            }
            (&Method::POST, ["clients", id, "credentials"]) => {
                let (res, kind) = self.issue(id, body, now).await;
                (
                    res,
                    change("credential.issued", id, json!({ "kind": kind })),
                )
            }
            (&Method::DELETE, ["clients", id, "credentials", cred]) => {
                let res = self.revoke_credential(id, cred).await;
                (
                    res,
                    change("credential.deleted", id, json!({ "credential": cred })),
                )
            }
            (&Method::PUT, ["clients", id, "permissions"]) => {
                let detail = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
                (
                    self.grant(id, body).await,
                    change("permissions.set", id, json!({ "permissions": detail })),
                )
            }
            _ => (
                problem(
                    StatusCode::NOT_FOUND,
                    "no such endpoint (see /api/v1/openapi.json)",
                ),
                None,
            ),
        }
    }

    fn routes_not_managed() -> Answer {
        problem(
            StatusCode::NOT_FOUND,
            "routes are not managed here (they come from the configuration file)",
        )
    }

    async fn show_route(&self, name: &str) -> Answer {
        let Some(set) = &self.route_set else {
            return Self::routes_not_managed();
        };
        if let Some(r) = set.file_route(name) {
            let mut route = r.to_json();
            if let Value::Object(m) = &mut route {
                // A file path on the gateway's disk is not the API's business.
                for k in ["upstream_ca", "upstream_client_cert", "upstream_client_key"] {
                    if m.remove(k).is_some() {
                        m.insert(k.into(), json!("(set in hexon.toml)"));
                    }
                }
            }
            return reply(
                StatusCode::OK,
                &json!({ "name": name, "source": "file", "route": route }),
            );
        }
        match set.store().route(name).await {
            Ok(Some(record)) => match super::routes::parse_record(&record) {
                Ok(r) => reply(
                    StatusCode::OK,
                    &json!({
                        "name": name,
                        "source": "store",
                        "route": r.to_json(),
                        "created_at": record.created_at.as_secs(),
                        "updated_at": record.updated_at.as_secs(),
                        "version": record.version,
                    }),
                ),
                Err(e) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the stored route is invalid: {e}; replace it (PUT) or delete it"),
                ),
            },
            Ok(None) => problem(StatusCode::NOT_FOUND, format!("no route {name:?}")),
            Err(e) => store_error(&e),
        }
    }

    /// Create (`name` = `None`) or replace a route in the store: validated
    /// with every other route first, then written, then applied here.
    async fn put_route(
        &self,
        name: Option<&str>,
        body: &[u8],
        now: UnixTime,
    ) -> (Answer, Option<String>) {
        use super::routes;
        let Some(set) = &self.route_set else {
            return (Self::routes_not_managed(), None);
        };
        if body.len() > routes::MAX_ROUTE_BYTES {
            return (
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a route is at most {} bytes", routes::MAX_ROUTE_BYTES),
                ),
                None,
            );
        }
        let mut value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return (
                    problem(
                        StatusCode::BAD_REQUEST,
                        format!("a route is a JSON object in the [[route]] schema: {e}"),
                    ),
                    None,
                );
            }
        };
        // PUT /routes/{name}: the path names the route; the body may too.
        if let (Some(n), Value::Object(m)) = (name, &mut value) {
            match m.get("name") {
                None => {
                    m.insert("name".into(), json!(n));
                }
                Some(Value::String(b)) if b == n => {}
                Some(_) => {
                    return (
                        problem(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "the body names another route than {n:?} (rename: create the new one, then delete the old)"
                            ),
                        ),
                        None,
                    );
                }
            }
        }
        let route = match routes::parse_definition(value) {
            Ok(r) => r,
            Err(e) => return (invalid(&e), None),
        };
        let rname = route.spec.name.clone();
        if !store_route_name(&rname) {
            return (
                problem(
                    StatusCode::BAD_REQUEST,
                    "route.name: 1-128 of A-Z a-z 0-9 . _ - (it is part of the API's URLs)",
                ),
                Some(rname),
            );
        }
        if set.in_file(&rname) {
            return (
                problem(
                    StatusCode::CONFLICT,
                    format!("route {rname:?} is defined in hexon.toml: change it there"),
                ),
                Some(rname),
            );
        }
        // Validate the store's routes as they will be, with the file's.
        let mut candidate = match routes::load(&**set.store()).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    problem(
                        StatusCode::CONFLICT,
                        format!("the routes in the store cannot be read: {e}"),
                    ),
                    Some(rname),
                );
            }
        };
        let existing = candidate.iter().position(|r| r.spec.name == rname);
        match (name, existing) {
            (None, Some(_)) => {
                return (
                    problem(
                        StatusCode::CONFLICT,
                        format!(
                            "route {rname:?} exists; change it with PUT /api/v1/routes/{rname}"
                        ),
                    ),
                    Some(rname),
                );
            }
            (Some(_), None) => {
                return (
                    problem(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no route {rname:?} in the store; create it with POST /api/v1/routes"
                        ),
                    ),
                    Some(rname),
                );
            }
            (_, Some(i)) => {
                if let Some(slot) = candidate.get_mut(i) {
                    *slot = route.clone();
                }
            }
            (None, None) => {
                if candidate.len() >= routes::MAX_STORE_ROUTES {
                    return (
                        problem(
                            StatusCode::CONFLICT,
                            format!(
                                "the store holds {} routes, the most it may",
                                routes::MAX_STORE_ROUTES
                            ),
                        ),
                        Some(rname),
                    );
                }
                candidate.push(route.clone());
            }
        }
        match set.check(&candidate) {
            Ok(merged) => {
                // The file's routes are matched first: a store route inside
                // one would never be reached. Say so instead of storing it.
                let (method, host, path) = super::routes::sample_request(&route);
                let taken = merged.policy().ok().and_then(|engine| {
                    let req = hexon_core::policy::HttpRequest::new(&method, &host, &path);
                    let hit = engine.match_route(&req).ok().flatten()?;
                    set.in_file(hit.name()).then(|| hit.name().to_owned())
                });
                if let Some(file_route) = taken {
                    return (
                        problem(
                            StatusCode::CONFLICT,
                            format!(
                                "{method} {host}{path} goes to route {file_route:?} of hexon.toml: the file's routes are matched first, so this route would not be reached; give it a host or path the file leaves free"
                            ),
                        ),
                        Some(rname),
                    );
                }
            }
            Err(super::GatewayError::Config(e)) => return (invalid(&e), Some(rname)),
            Err(e) => {
                return (
                    problem(StatusCode::BAD_REQUEST, format!("invalid route: {e}")),
                    Some(rname),
                );
            }
        }
        let definition = route.to_json().to_string();
        let store = set.store();
        let written = if name.is_none() {
            let record = hexon_core::store::RouteRecord {
                name: rname.clone(),
                definition,
                created_at: now,
                updated_at: now,
                version: 0,
            };
            store.insert_route(&record).await.map(|()| 1)
        } else {
            match store.route(&rname).await {
                Ok(Some(mut record)) => {
                    record.definition = definition;
                    record.updated_at = now;
                    store.update_route(&record).await
                }
                Ok(None) => Err(StoreError::NotFound {
                    what: "route",
                    key: rname.clone(),
                }),
                Err(e) => Err(e),
            }
        };
        let version = match written {
            Ok(v) => v,
            Err(StoreError::Conflict { .. }) => {
                return (
                    problem(
                        StatusCode::CONFLICT,
                        format!("route {rname:?} changed meanwhile; read it again and retry"),
                    ),
                    Some(rname),
                );
            }
            Err(e) => return (store_error(&e), Some(rname)),
        };
        let status = if name.is_none() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (
            applied(
                set,
                status,
                json!({ "name": rname, "source": "store", "route": route.to_json(), "version": version }),
            )
            .await,
            Some(rname),
        )
    }

    async fn delete_route(&self, name: &str) -> Answer {
        let Some(set) = &self.route_set else {
            return Self::routes_not_managed();
        };
        if set.in_file(name) {
            return problem(
                StatusCode::CONFLICT,
                format!("route {name:?} is defined in hexon.toml: remove it there"),
            );
        }
        match set.store().delete_route(name).await {
            Ok(true) => applied(set, StatusCode::OK, json!({ "deleted": name })).await,
            Ok(false) => problem(
                StatusCode::NOT_FOUND,
                format!("no route {name:?} in the store"),
            ),
            Err(e) => store_error(&e),
        }
    }

    async fn list(&self) -> Response<Full<Bytes>> {
        match self.clients.store().api_clients().await {
            Ok(all) => reply(
                StatusCode::OK,
                &json!({ "clients": all.iter().map(client_json).collect::<Vec<_>>() }),
            ),
            Err(e) => store_error(&e),
        }
    }

    async fn show(&self, id: &str) -> Response<Full<Bytes>> {
        let store = self.clients.store();
        let client = match store.api_client(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no client {id:?}")),
            Err(e) => return store_error(&e),
        };
        let (perms, creds) = match (store.permissions(id).await, store.credentials_of(id).await) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => return store_error(&e),
        };
        let mut j = client_json(&client);
        if let Value::Object(m) = &mut j {
            m.insert("permissions".into(), json!(perms));
            let creds: Vec<Value> = creds.iter().map(credential_json).collect();
            m.insert("credentials".into(), Value::Array(creds));
        }
        reply(StatusCode::OK, &j)
    }

    async fn create(&self, body: &[u8], now: UnixTime) -> (Response<Full<Bytes>>, Option<String>) {
        let new: NewClient = match serde_json::from_slice(body) {
            Ok(n) => n,
            Err(e) => {
                return (
                    problem(StatusCode::BAD_REQUEST, format!("invalid client: {e}")),
                    None,
                );
            }
        };
        let id = new
            .id
            .unwrap_or_else(|| format!("cl_{}", clients::random_id()));
        for (what, v) in [("id", &id), ("name", &new.name)] {
            if !valid_name(v) {
                let res = problem(
                    StatusCode::BAD_REQUEST,
                    format!("{what} {v:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
                );
                return (res, None);
            }
        }
        if new.rate_limit_per_minute == Some(0) {
            return (problem(StatusCode::BAD_REQUEST, ZERO_RATE), None);
        }
        let mut groups = new.groups;
        groups.sort();
        groups.dedup();
        let record = ApiClientRecord {
            id: id.clone(),
            name: new.name,
            status: ClientStatus::Active,
            groups,
            description: new.description,
            rate_limit_per_minute: new.rate_limit_per_minute,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        let store = self.clients.store();
        let res = match store.insert_api_client(&record).await {
            Ok(()) => match store.api_client(&id).await {
                Ok(Some(c)) => reply(StatusCode::CREATED, &client_json(&c)),
                Ok(None) => problem(StatusCode::INTERNAL_SERVER_ERROR, "client vanished"),
                Err(e) => store_error(&e),
            },
            Err(e) => store_error(&e),
        };
        (res, Some(id))
    }

    async fn update(&self, id: &str, body: &[u8], now: UnixTime) -> Response<Full<Bytes>> {
        let patch: ClientPatch = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid change: {e}")),
        };
        let store = self.clients.store();
        let mut c = match store.api_client(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no client {id:?}")),
            Err(e) => return store_error(&e),
        };
        if let Some(s) = patch.status {
            if c.status == ClientStatus::Revoked && s != ClientStatus::Revoked {
                return problem(
                    StatusCode::CONFLICT,
                    "a revoked client stays revoked; create a new one",
                );
            }
            c.status = s;
        }
        if let Some(n) = patch.name {
            if !valid_name(&n) {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("name {n:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
                );
            }
            c.name = n;
        }
        if let Some(mut g) = patch.groups {
            g.sort();
            g.dedup();
            c.groups = g;
        }
        if let Some(d) = patch.description {
            c.description = d;
        }
        if let Some(r) = patch.rate_limit_per_minute {
            if r == Some(0) {
                return problem(StatusCode::BAD_REQUEST, ZERO_RATE);
            }
            c.rate_limit_per_minute = r;
        }
        c.updated_at = now;
        match store.update_api_client(&c).await {
            Ok(version) => {
                c.version = version;
                reply(StatusCode::OK, &client_json(&c))
            }
            Err(e) => store_error(&e),
        }
    }

    async fn issue(&self, id: &str, body: &[u8], now: UnixTime) -> (Response<Full<Bytes>>, String) {
        let new: NewCredential = match serde_json::from_slice(body) {
            Ok(n) => n,
            Err(e) => {
                return (
                    problem(StatusCode::BAD_REQUEST, format!("invalid credential: {e}")),
                    String::new(),
                );
            }
        };
        let store = self.clients.store();
        match store.api_client(id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return (
                    problem(StatusCode::NOT_FOUND, format!("no client {id:?}")),
                    new.kind,
                );
            }
            Err(e) => return (store_error(&e), new.kind),
        }
        let expires = new
            .expires_in
            .map(|s| now.saturating_add(std::time::Duration::from_secs(s)));
        if new.public_key.is_some() != (new.kind == "ed25519") {
            let msg = "public_key is given with kind \"ed25519\" (and only then): the gateway makes API keys and HMAC secrets itself";
            return (problem(StatusCode::BAD_REQUEST, msg), new.kind);
        }
        let (record, secret) = match new.kind.as_str() {
            "api_key" => {
                let k = clients::new_api_key(id, &new.label, now, expires);
                (k.record, Some(k.key))
            }
            "hmac" => {
                let (r, s) = clients::new_hmac_secret(id, &new.label, now, expires);
                (r, Some(s))
            }
            "ed25519" => {
                let key = new
                    .public_key
                    .as_deref()
                    .map(clients::parse_ed25519_public_key)
                    .unwrap_or(Err("public_key is required"))
                    .and_then(|k| clients::new_ed25519_key(id, &new.label, &k, now, expires));
                match key {
                    Ok(r) => (r, None),
                    Err(why) => {
                        return (
                            problem(StatusCode::BAD_REQUEST, format!("public_key: {why}")),
                            new.kind,
                        );
                    }
                }
            }
            other => {
                return (
                    problem(
                        StatusCode::BAD_REQUEST,
                        format!("kind {other:?}: use \"api_key\", \"hmac\" or \"ed25519\""),
                    ),
                    new.kind,
                );
            }
        };
        let res = match store.insert_credential(&record).await {
            Ok(()) => reply(
                StatusCode::CREATED,
                &match &secret {
                    Some(secret) => json!({
                        "credential": credential_json(&record),
                        "secret": secret.as_str(),
                        "note": "shown once: store it now",
                    }),
                    None => json!({
                        "credential": credential_json(&record),
                        "note": format!("sign requests (RFC 9421) with keyid=\"{}\"", record.id),
                    }),
                },
            ),
            Err(e) => store_error(&e),
        };
        (res, new.kind)
    }

    async fn revoke_credential(&self, client: &str, cred: &str) -> Response<Full<Bytes>> {
        let store = self.clients.store();
        match store.credential(cred).await {
            Ok(Some(c)) if c.owner == client => {}
            Ok(_) => {
                return problem(
                    StatusCode::NOT_FOUND,
                    format!("client {client:?} has no credential {cred:?}"),
                );
            }
            Err(e) => return store_error(&e),
        }
        match store.delete_credential(cred).await {
            Ok(_) => reply(StatusCode::OK, &json!({ "deleted": cred })),
            Err(e) => store_error(&e),
        }
    }

    async fn grant(&self, id: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let grants: Vec<Grant> = match serde_json::from_slice(body) {
            Ok(g) => g,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("invalid permissions (a list of {{\"route\", \"methods\"}}): {e}"),
                );
            }
        };
        let mut perms = Vec::with_capacity(grants.len());
        for g in grants {
            if g.route.is_empty() || g.route.len() > 128 {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "route: 1-128 characters (a route name)",
                );
            }
            if g.methods.is_empty() || !g.methods.iter().all(|m| valid_method(m)) {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "route {:?}: methods are HTTP method names or \"*\"",
                        g.route
                    ),
                );
            }
            let mut methods: Vec<String> =
                g.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
            methods.sort();
            methods.dedup();
            perms.push(PermissionRecord {
                route: g.route,
                methods,
            });
        }
        match self.clients.store().set_permissions(id, &perms).await {
            Ok(()) => reply(StatusCode::OK, &json!({ "permissions": perms })),
            Err(e) => store_error(&e),
        }
    }
}
