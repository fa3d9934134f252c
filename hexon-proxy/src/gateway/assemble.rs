//! From a validated [`Config`] to running listeners: the one place where the
//! stack is ordered.
//!
//! ```text
//! audit → strip → request id → forward-auth question → single authority → well-known (JWKS)
//!       → HMAC body → authenticate → capture → client rate limit → pin generation → authorize
//!       → drop credentials → sign → forward-auth answer | reverse proxy
//! ```
//!
//! Why this order:
//! - **audit** is outermost so every request is timed and logged, including
//!   the ones an inner layer refuses;
//! - **strip** runs before anything reads headers, so no later layer (nor
//!   the upstream) can ever see a client-forged identity;
//! - **request id** comes next so every response, even a 401, carries one;
//! - **forward-auth question** turns a request for `gateway.forward_auth_path`
//!   into the request it asks about (after strip, so a client-forged
//!   identity the proxy passed along is gone; before everything that reads
//!   the method, host and path), answered at the end instead of proxied;
//! - **single authority** refuses requests whose absolute URI and `Host`
//!   disagree (or with no or several `Host`s), so the policy, the proxy, the
//!   signature and the audit log all see the same host;
//! - **well-known** serves the public JWKS before authentication: backends
//!   fetch it without credentials;
//! - **HMAC body** holds the body of HMAC-signed requests, which the
//!   signature covers, for the authenticator (which sees only the head);
//! - **authenticate** turns a credential into an `Identity` (an invalid
//!   credential is a 401 here, never anonymous); **capture** records it for
//!   the audit line; **client rate limit** counts API clients' requests
//!   (who is calling must be known; permission or not, a request costs);
//! - **authorize** asks the policy (API clients: their grants, after the
//!   deny rules); only allowed requests go further;
//! - **drop credentials** removes the gateway's own bearer token and session
//!   cookie, so no backend can replay them at the gateway;
//! - **sign** puts the identity on the request for the route's upstream;
//! - the **forward-auth answer** returns that signed identity to the asking
//!   proxy (`200`) for forward-auth questions; the **reverse proxy**
//!   forwards every other request.
//!
//! Hot reload swaps what the handles hold (policy, routing table, signing
//! table) together; each request pins one generation of all three before
//! authorization, so it is authorized, signed and forwarded by the same
//! configuration, and in-flight requests finish on the one they started with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::UnixTime;
use hexon_core::config::{
    AcmeChallenge, ClientAuthMode, Config, MinTlsVersion as TlsVersion, RouteConfig, TlsConfig,
};
use hexon_core::httpsig::HttpSigner;
use hexon_core::jwt::{JwtIssuer, JwtVerifier};
use hexon_core::keys::KeySet;
use hexon_core::signer::Signer;
use hexon_core::store::Event;
use http::{Method, Request, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};
use tower::ServiceBuilder;
use tower_layer::Layer;
use tower_service::Service;

use super::GatewayError;
use super::admin::{self, Readiness};
use super::admin_api::AdminApi;
use super::audit::{AuditLayer, AuditSink, CaptureLayer};
use super::authority::SingleAuthorityLayer;
use super::credentials::DropCredentialsLayer;
use super::express::GatewayExpress;
use super::keys;
use super::login::LoginLayer;
use super::metrics::Metrics;
use super::state::{self, GatewayState};
use crate::authn::{
    AuthenticateLayer, BearerJwt, ClientCertificate, DEFAULT_SESSION_COOKIE, HttpsJwksFetcher,
    JwksIssuer, KvSessionStore, SessionCookie,
};
use crate::authz::{AuthorizeLayer, PolicyHandle};
use crate::body::{BoxBody, full};
use crate::clients::{
    ApiKeyAuth, ClientRateLimitLayer, ClientRegistry, HmacAuth, HttpSignatureAuth, SignedBodyLayer,
};
use crate::forward_auth::{ForwardAuthLayer, ForwardAuthResponder};
use crate::listener::{Listener, ListenerSettings, ServerHandle};
use crate::proxy::{
    GroupConfig, ReverseProxy, RoutingTable, RoutingTableHandle, Timeouts, TrustedProxies,
    UpstreamGroup, UpstreamTls,
};
use crate::proxy_protocol::ProxyProtocolLimits;
use crate::request_id::RequestIdLayer;
use crate::sign::{SignHandle, SignIdentityLayer, SignTable};
use crate::strip::StripIdentityLayer;
use crate::tls::{
    AcmeFiles, CertificateFiles, ClientAuth, DevCertificate, Http01Layer, Http01Tokens,
    MinTlsVersion, ServerTls, TlsSettings,
};
use hexon_core::rt::{ConnectionThreads, ThreadOptions};

/// Largest body of a `bind_body` route (it is buffered to be digested).
pub const BIND_BODY_MAX: u64 = 1024 * 1024;

/// The swappable parts of a running gateway. They change together: reload
/// stores all three under the write side of `generation`, and every request
/// pins all three under its read side (the pin-generation layer), so a request
/// never mixes two configurations.
#[derive(Clone)]
pub struct Handles {
    policy: PolicyHandle,
    routes: RoutingTableHandle,
    sign: SignHandle,
    generation: Arc<RwLock<()>>,
}

impl Handles {
    pub(crate) fn pin(
        &self,
    ) -> (
        Arc<hexon_core::policy::PolicyEngine>,
        Arc<RoutingTable>,
        Arc<SignTable>,
    ) {
        let _g = match self.generation.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        (self.policy.load(), self.routes.load(), self.sign.load())
    }

    fn store_shared(
        &self,
        policy: hexon_core::policy::PolicyEngine,
        routes: Arc<RoutingTable>,
        sign: SignTable,
    ) {
        let _g = match self.generation.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        self.policy.store(policy);
        self.routes.store_shared(routes);
        self.sign.store(sign);
    }
}

/// Pins one configuration generation (policy, routing table, signing
/// table) on the request, for authorize, sign and proxy to share.
#[derive(Clone)]
struct PinGenerationLayer {
    handles: Handles,
}

impl<S> Layer<S> for PinGenerationLayer {
    type Service = PinGeneration<S>;
    fn layer(&self, inner: S) -> PinGeneration<S> {
        PinGeneration {
            inner,
            handles: self.handles.clone(),
        }
    }
}

#[derive(Clone)]
struct PinGeneration<S> {
    inner: S,
    handles: Handles,
}

impl<S, B> Service<Request<B>> for PinGeneration<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let (policy, routes, sign) = self.handles.pin();
        let ext = req.extensions_mut();
        ext.insert(policy);
        ext.insert(routes);
        ext.insert(sign);
        self.inner.call(req)
    }
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

/// A gateway built from a configuration, not yet listening.
pub struct Gateway {
    config: Config,
    key: Arc<dyn Signer>,
    handles: Handles,
    /// The keys backends verify with (the signing key and the
    /// `[[signing.publish]]` keys; fixed until restart).
    keys: KeySet,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    state: GatewayState,
    enabled: EnabledUsers,
    clients: ClientRegistry,
    login: Option<super::login::Login>,
    ca: Option<super::ca::CaRoutes>,
    routes: super::routes::RouteSet,
}

/// The users the current configuration has enabled, by subject, with their
/// resolved groups. Session lookups check it, so a user disabled by a reload
/// (or while this node was down) is refused at once even if revoking their
/// sessions failed; the admin API asks it for group membership.
#[derive(Clone, Default)]
struct EnabledUsers(Arc<RwLock<Arc<Users>>>);

/// Enabled users: subject → resolved groups (nested ones included).
/// Enabled users by subject: their user name and groups now. Looked up on
/// every request; foldhash, as the keys come from the configuration.
type Users =
    std::collections::HashMap<String, (Arc<str>, Arc<[Arc<str>]>), foldhash::fast::RandomState>;

impl EnabledUsers {
    fn of(config: &Config) -> Users {
        // An invalid directory cannot happen for a validated config; if it
        // did, nobody's session is accepted (fail closed).
        config
            .directory()
            .map(|d| {
                d.users()
                    .iter()
                    .filter(|u| !u.is_disabled())
                    .map(|u| {
                        let groups = d
                            .identity(u.subject())
                            .map(|i| Arc::from(i.groups()))
                            .unwrap_or_else(|_| Arc::from(Vec::new()));
                        (
                            u.subject().to_string(),
                            (u.username().value.clone(), groups),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set(&self, users: Users) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(users);
    }

    fn current(&self) -> Arc<Users> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether the enabled user `subject` is in `group` now.
    fn in_group(&self, subject: &str, group: &str) -> bool {
        self.current()
            .get(subject)
            .is_some_and(|(_, gs)| gs.iter().any(|g| &**g == group))
    }

    /// The check the session and bearer authenticators run on every
    /// identity they accept.
    fn check(
        &self,
    ) -> impl Fn(&hexon_core::Identity) -> Result<(), &'static str> + Send + Sync + 'static {
        let enabled = self.clone();
        move |id| {
            if enabled.contains(id.subject()) {
                Ok(())
            } else {
                Err("user disabled or no longer configured")
            }
        }
    }

    fn contains(&self, subject: &str) -> bool {
        self.current().contains_key(subject)
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A running gateway: its listeners and how to stop it.
#[derive(Debug)]
pub struct Running {
    /// The bound address of each `[[listener]]`, in order.
    pub listeners: Vec<SocketAddr>,
    /// The admin listener's address, if configured.
    pub admin: Option<SocketAddr>,
    servers: Vec<ServerHandle>,
    tls: Vec<ServerTls>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready: Arc<Readiness>,
    /// The connection threads; they wind down once dropped and idle.
    _threads: Arc<ConnectionThreads>,
}

impl Running {
    /// Re-read every listener's certificates and keys (e.g. after renewal).
    /// A listener whose new files are invalid keeps its current ones; the
    /// errors are returned and logged.
    pub fn reload_certificates(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for tls in &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the current certificates");
                    errors.push(e.to_string());
                }
            }
        }
        errors
    }

    /// Stop accepting, let in-flight requests finish (up to `grace`).
    pub async fn shutdown(self, grace: Duration) {
        self.ready.set(false);
        for t in &self.tasks {
            t.abort();
        }
        for s in self.servers {
            let report = s.shutdown(grace).await;
            tracing::info!(
                finished = report.finished,
                aborted = report.aborted,
                "listener stopped"
            );
        }
    }
}

pub(crate) fn routing_table(config: &Config) -> Result<RoutingTable, GatewayError> {
    routing_table_keeping(config, None)
}

/// The routes and settings a routing table was built from, to rebuild it
/// keeping what did not change.
#[derive(Default)]
struct Built {
    routes: std::collections::HashMap<String, RouteConfig>,
    max_body_bytes: u64,
    table: Arc<RoutingTable>,
}

/// [`routing_table`], sharing with `previous` the group (and so the pooled
/// upstream connections) of every route whose definition and defaults did
/// not change. Routes that read files (`upstream_ca`, client certificates)
/// are always rebuilt, so a reload picks up rotated files.
fn routing_table_keeping(
    config: &Config,
    previous: Option<&Built>,
) -> Result<RoutingTable, GatewayError> {
    let mut table = RoutingTable::new();
    for r in &config.routes {
        let o = &r.upstream_options;
        let reads_files = o.upstream_ca.is_some() || o.upstream_client_cert.is_some();
        let kept = previous
            .filter(|p| !reads_files && p.max_body_bytes == config.gateway.max_body_bytes)
            .filter(|p| p.routes.get(&r.spec.name) == Some(r))
            .and_then(|p| p.table.get(&r.spec.name));
        if let Some(group) = kept {
            table.insert_shared(r.spec.name.as_str(), group.clone());
            continue;
        }
        let group = UpstreamGroup::new(&r.upstream, group_config(config, r)?).map_err(|e| {
            GatewayError::Config(hexon_core::config::ConfigErrors(vec![
                hexon_core::config::ConfigError::new(
                    format!("route {:?}.upstream", r.spec.name),
                    e.to_string(),
                ),
            ]))
        })?;
        table.insert(r.spec.name.as_str(), group);
    }
    Ok(table)
}

/// The upstream settings of one route: its options over the gateway's defaults.
fn group_config(config: &Config, r: &RouteConfig) -> Result<GroupConfig, GatewayError> {
    let o = &r.upstream_options;
    let mut t = Timeouts::default();
    if let Some(d) = o.connect_timeout {
        t = t.connect(d.get());
    }
    if let Some(d) = o.response_timeout {
        t = t.response_header(d.get());
    }
    if let Some(d) = o.idle_timeout {
        t = t.idle(d.get());
    }
    if let Some(d) = o.total_timeout {
        t = t.total(Some(d.get()));
    }
    let mut group = GroupConfig::default().timeouts(t).max_request_body(Some(
        o.max_body_bytes.unwrap_or(config.gateway.max_body_bytes),
    ));
    let read = |p: &str| std::fs::read(p).map_err(|e| GatewayError::io(Path::new(p), e));
    let mut tls = match &o.upstream_ca {
        Some(ca) => {
            UpstreamTls::ca_pem(&read(ca)?).map_err(|e| GatewayError::key(Path::new(ca), e))?
        }
        None => UpstreamTls::webpki(),
    };
    if let (Some(c), Some(k)) = (&o.upstream_client_cert, &o.upstream_client_key) {
        tls = tls
            .with_client_cert_pem(&read(c)?, &read(k)?)
            .map_err(|e| GatewayError::key(Path::new(c), e))?;
    }
    if o.upstream_ca.is_some() || o.upstream_client_cert.is_some() {
        group = group.tls(tls);
    }
    Ok(group)
}

fn sign_table(config: &Config, key: &Arc<dyn Signer>) -> SignTable {
    SignTable::from_config(
        &config.routes,
        &config.jwt.issuer,
        config.jwt.lifetime.get(),
    )
    .with_jwt_issuer(JwtIssuer::new(key.clone()))
}

fn trusted_cidrs(config: &Config) -> Vec<ipnet::IpNet> {
    config
        .gateway
        .trusted_proxies
        .iter()
        .filter_map(|c| {
            c.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| c.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect()
}

impl Gateway {
    /// Build every part from `config`: load or create the signing key, open
    /// the state layer (`[state]`, running database migrations), compile
    /// policy and routes.
    pub async fn build(config: Config) -> Result<Gateway, GatewayError> {
        let key = keys::load_or_create(&config)?;
        let jwks = keys::verification_keys(&config, &key)?;
        let handles = Handles {
            policy: PolicyHandle::new(config.policy()?),
            routes: RoutingTableHandle::new(routing_table(&config)?),
            sign: SignHandle::new(sign_table(&config, &key)),
            generation: Arc::new(RwLock::new(())),
        };
        let state = state::open(&config).await?;
        let clients = ClientRegistry::open(state.durable.clone())
            .await
            .map_err(|e| GatewayError::Other(format!("loading API clients: {e}")))?;
        let login = super::login::Login::start(&config, &state).await?;
        let ca = super::ca::CaRoutes::start(&config, &state).await?;
        let enabled = EnabledUsers::default();
        // The file's routes and the store's make one table; applying it
        // swaps the policy, routing and signing tables together.
        let apply: super::routes::Apply = {
            let (handles, key, enabled, login) =
                (handles.clone(), key.clone(), enabled.clone(), login.clone());
            // What the running routing table was built from: a change keeps
            // the groups (and connection pools) of the routes it leaves alone.
            let built = Arc::new(std::sync::Mutex::new(Built::default()));
            Box::new(move |merged: &Config, dry_run: bool| {
                let policy = merged.policy()?;
                if dry_run {
                    // Builds every group afresh, touching no running pool.
                    routing_table(merged)?;
                    return Ok(());
                }
                let mut built = match built.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let routes = Arc::new(routing_table_keeping(merged, Some(&built))?);
                let sign = sign_table(merged, &key);
                handles.store_shared(policy, routes.clone(), sign);
                *built = Built {
                    routes: merged
                        .routes
                        .iter()
                        .map(|r| (r.spec.name.clone(), r.clone()))
                        .collect(),
                    max_body_bytes: merged.gateway.max_body_bytes,
                    table: routes,
                };
                enabled.set(EnabledUsers::of(merged));
                if let Some(login) = &login {
                    login.reload(merged);
                }
                Ok(())
            })
        };
        let (routes, config) =
            super::routes::RouteSet::open(config, state.durable.clone(), apply).await?;
        Ok(Gateway {
            login,
            ca,
            key,
            handles,
            keys: jwks,
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(Readiness::default()),
            state,
            clients,
            enabled,
            routes,
            config,
        })
    }

    /// The route table's sources: the file's routes and the durable
    /// store's. Programs that write routes to the store themselves call
    /// `routes().reload()`.
    pub fn routes(&self) -> &super::routes::RouteSet {
        &self.routes
    }

    /// The API clients (reload it after changing clients, credentials or
    /// permissions in the store).
    pub fn clients(&self) -> &ClientRegistry {
        &self.clients
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<dyn Signer> {
        &self.key
    }

    /// The public keys backends verify with (what `/.well-known/jwks.json` serves).
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// The check every authenticator runs on the identities it accepts:
    /// is the user still enabled in the current configuration. The SQL
    /// bastions run it at login and before every statement.
    pub fn enabled_check(
        &self,
    ) -> impl Fn(&hexon_core::Identity) -> Result<(), &'static str> + Send + Sync + 'static {
        self.enabled.check()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The session store (sessions are created by the login issue; tests and
    /// embedders may insert them).
    pub fn sessions(&self) -> &KvSessionStore {
        &self.state.sessions
    }

    /// The state layer: durable store, shared KV, event bus.
    pub fn state(&self) -> &GatewayState {
        &self.state
    }

    /// A user was disabled or removed: end their sessions on every node
    /// sharing the state, and tell every node (event `user_disabled`).
    pub async fn user_disabled(&self, subject: &str) -> Result<(), GatewayError> {
        self.state
            .sessions
            .revoke_subject(subject)
            .await
            .map_err(|e| GatewayError::Other(format!("revoking sessions of {subject}: {e}")))?;
        self.state
            .events
            .publish(&Event::UserDisabled {
                subject: subject.to_owned(),
            })
            .await
            .map_err(|e| {
                GatewayError::Other(format!("publishing user_disabled for {subject}: {e}"))
            })?;
        Ok(())
    }

    /// Swap in a new configuration's policy, routes and signing table (its
    /// routes with the durable store's; refused, keeping the running
    /// configuration, when the two clash). Listener, signing-key and authentication changes need a restart; they
    /// are reported, not applied.
    pub fn reload(&self, new: &Config) -> Result<Vec<String>, GatewayError> {
        // Includes the check that no route relies on a changed
        // `api_key_query_param` (the layers built at start read the old one).
        self.routes.set_file(new)?;
        let mut restart = Vec::new();
        if new.login != self.config.login {
            restart.push("login".to_owned());
        }
        if new.ca != self.config.ca {
            restart.push("ca".to_owned());
        }
        if new.state != self.config.state {
            restart.push("state".to_owned());
        }
        if new.listeners != self.config.listeners {
            restart.push("listener".to_owned());
        }
        if new.signing != self.config.signing {
            restart.push("signing".to_owned());
        }
        // Token verification is built at start (tokens presented to the
        // gateway keep being checked against the old issuer and audience).
        if new.jwt.audience != self.config.jwt.audience
            || new.jwt.issuer != self.config.jwt.issuer
            || new.trusted_issuers != self.config.trusted_issuers
        {
            restart.push("jwt.issuer / jwt.audience / trusted_issuer".to_owned());
        }
        // max_body_bytes is applied through the routing table; the rest of
        // [gateway] shapes the stack and its listeners.
        let (mut old_gw, mut new_gw) = (self.config.gateway.clone(), new.gateway.clone());
        old_gw.max_body_bytes = 0;
        new_gw.max_body_bytes = 0;
        if new_gw != old_gw {
            restart.push("gateway".to_owned());
        }
        Ok(restart)
    }

    fn api_key_header(&self) -> Result<http::HeaderName, GatewayError> {
        http::HeaderName::from_bytes(self.config.gateway.api_key_header.as_bytes())
            .map_err(|_| GatewayError::Other("gateway.api_key_header: not a header name".into()))
    }

    /// The authenticators, and the bearer and session ones (shared with
    /// the express lane).
    async fn authenticate_layer(
        &self,
    ) -> Result<(AuthenticateLayer, Arc<BearerJwt>, SessionCookie), GatewayError> {
        let own = JwtVerifier::new(
            self.keys.clone(),
            self.config.jwt.issuer.as_str(),
            self.config.jwt.audience.as_str(),
        );
        let mut bearer = BearerJwt::new(own).with_local_check(self.enabled.check());
        if !self.config.trusted_issuers.is_empty() {
            let fetcher = Arc::new(
                HttpsJwksFetcher::new()
                    .map_err(|e| GatewayError::Other(format!("JWKS client: {e}")))?,
            );
            for t in &self.config.trusted_issuers {
                bearer = bearer.with_external(JwksIssuer::new(
                    t.issuer.as_str(),
                    t.audience.as_str(),
                    t.jwks_url.as_str(),
                    fetcher.clone(),
                ));
            }
        }
        let key_header = self.api_key_header()?;
        let nonces = self
            .state
            .kv
            .bucket("nonces", Duration::from_secs(3600))
            .await
            .map_err(|e| GatewayError::Other(format!("opening the nonce store: {e}")))?;
        // Signatures first: a request that carries a failing HMAC or RFC
        // 9421 signature is a 401 whatever else it carries. API keys before
        // bearer JWTs: `Bearer hxk_…` is a key, the JWT authenticator would
        // call it a malformed token.
        let bearer = Arc::new(bearer);
        let session = SessionCookie::new(Arc::new(self.state.sessions.clone()))
            .with_check(self.enabled.check());
        let layer = AuthenticateLayer::new()
            .with(HmacAuth::new(self.clients.clone(), nonces.clone()))
            .with(HttpSignatureAuth::new(self.clients.clone(), nonces))
            .with(
                ApiKeyAuth::new(self.clients.clone())
                    .with_header(Some(key_header))
                    .with_query_param(self.config.gateway.api_key_query_param.as_deref()),
            )
            .with_shared(bearer.clone())
            .with(session.clone())
            .with(ClientCertificate::new());
        Ok((layer, bearer, session))
    }

    /// Bind every listener (and the admin listener) and serve.
    pub async fn start(&self) -> Result<Running, GatewayError> {
        let sink = AuditSink::open(&self.config.gateway.audit, self.metrics.clone())
            .await
            .map_err(|e| {
                GatewayError::Other(format!(
                    "gateway.audit: cannot open {:?}: {e}",
                    self.config.gateway.audit
                ))
            })?;
        let http_signer = Arc::new(
            HttpSigner::new(self.key.clone())
                .with_lifetime(self.config.signing.lifetime.get())
                .with_max_header_bytes(self.config.signing.max_header_bytes),
        );
        let trusted = trusted_cidrs(&self.config);
        let trusted_for_proxy = trusted.clone();
        let rate_limits = self
            .state
            .kv
            .bucket("ratelimits", Duration::from_secs(600))
            .await
            .map_err(|e| GatewayError::Other(format!("opening the rate-limit store: {e}")))?;
        let mut authorize = AuthorizeLayer::new(self.handles.policy.clone())
            .with_grants(Arc::new(self.clients.clone()));
        if let Some(url) = &self.config.gateway.login_url {
            authorize = authorize
                .with_login_url(url)
                .map_err(|e| GatewayError::Other(format!("gateway.login_url: {e}")))?;
        }
        if let Some(login) = &self.login {
            authorize = authorize
                .with_login_url(&login.login_url())
                .map_err(|e| GatewayError::Other(format!("login.url: {e}")))?;
        }
        let trusted_proxies = TrustedProxies::from_fn(move |ip| {
            trusted_for_proxy
                .iter()
                .any(|n| n.contains(&ip.to_canonical()))
        });
        let proxy = ReverseProxy::new(self.handles.routes.clone())
            .with_trusted_proxies(trusted_proxies.clone());
        let forward_auth = self
            .config
            .gateway
            .forward_auth_path
            .as_deref()
            .map_or_else(ForwardAuthLayer::off, ForwardAuthLayer::new)
            .with_trusted_proxies(trusted_proxies.clone());
        // http-01 answers for the listeners' ACME clients, when one uses it.
        let http01 = self
            .config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref()?.acme.as_ref())
            .any(|a| a.challenge == AcmeChallenge::Http01)
            .then(Http01Tokens::default);
        let (authenticate, bearer, session) = self.authenticate_layer().await?;
        let express = Arc::new(GatewayExpress {
            handles: self.handles.clone(),
            bearer,
            session,
            signer: http_signer.clone(),
            strip: StripIdentityLayer::new(),
            api_key_header: self.api_key_header()?,
            api_key_param: self.config.gateway.api_key_query_param.clone(),
            forward_auth_path: self.config.gateway.forward_auth_path.clone(),
            login: self.login.clone(),
            ca: self.ca.clone(),
            trusted: trusted.clone(),
            sink: sink.clone(),
        });
        let stack = ServiceBuilder::new()
            .layer(AuditLayer::new(sink))
            // Before anything that could refuse or redirect the CA's
            // validation request.
            .option_layer(http01.clone().map(Http01Layer::new))
            .layer(StripIdentityLayer::new())
            .layer(RequestIdLayer::new().trust_cidrs(trusted))
            .layer(forward_auth)
            .layer(SingleAuthorityLayer)
            .layer(LoginLayer::new(self.login.clone(), trusted_proxies.clone()))
            .layer(super::ca::CaLayer::new(self.ca.clone()))
            .layer(WellKnownLayer {
                // Serialised once: the key set only changes with a restart.
                jwks: Bytes::from(
                    serde_json::to_string(&self.keys.to_jwks(UnixTime::now()))
                        .unwrap_or_else(|_| "{\"keys\":[]}".into()),
                ),
            })
            .layer(SignedBodyLayer)
            .layer(authenticate)
            .layer(CaptureLayer)
            // SSH certificates for the identity just established; the SSH
            // policy, not a route, decides.
            .option_layer(super::ca::SshSignLayer::new(
                self.ca.as_ref(),
                {
                    let users = self.enabled.clone();
                    Arc::new(move |subject: &str| users.current().get(subject).cloned())
                },
                &self.config.jwt.issuer,
            ))
            .layer(ClientRateLimitLayer::new(self.clients.clone(), rate_limits))
            .layer(PinGenerationLayer {
                handles: self.handles.clone(),
            })
            .layer(authorize)
            .layer({
                let drop = DropCredentialsLayer::new(DEFAULT_SESSION_COOKIE)
                    .with_api_key_header(self.api_key_header()?);
                match &self.config.gateway.api_key_query_param {
                    Some(p) => drop.with_api_key_param(p),
                    None => drop,
                }
            })
            .layer(
                SignIdentityLayer::new(http_signer, self.handles.sign.clone()).with_max_body_bytes(
                    // Bodies of `bind_body` routes are held in memory to be
                    // digested: bounded small, whatever the forwarding limit.
                    usize::try_from(self.config.gateway.max_body_bytes.min(BIND_BODY_MAX))
                        .unwrap_or(1024 * 1024),
                ),
            )
            .service(ForwardAuthResponder::new(proxy));

        let threads = self
            .config
            .gateway
            .connection_threads
            .unwrap_or_else(ConnectionThreads::per_cpu);
        // Pinned threads, each connection placed on its client's CPU: the
        // client, the relaying thread and the upstream then stay on one CPU
        // (docs/BENCHMARKS.md, "2026-12-06, sixth session"). Off by default
        // where another process may be confined to the same CPUs.
        let pin = self
            .config
            .gateway
            .pin_connection_threads
            .unwrap_or_else(|| hexon_core::rt::host_defaults_apply(threads));
        let options = ThreadOptions {
            pin_cpus: pin,
            ..ThreadOptions::default()
        };
        let threads = Arc::new(
            ConnectionThreads::start_with(threads, "hexon-http", options).map_err(|e| {
                GatewayError::Other(format!("starting {threads} connection threads: {e}"))
            })?,
        );
        self.metrics.watch_threads(&threads);
        tracing::info!(
            connection_threads = threads.len(),
            pinned = pin && !threads.is_empty(),
            "HTTP connections are served on {} connection thread(s){}",
            threads.len(),
            match (threads.is_empty(), pin) {
                (true, _) => " (none: on the main runtime)",
                (false, true) => ", each pinned to a CPU",
                (false, false) => "",
            }
        );
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        let mut tls_handles = Vec::new();
        let mut acme_clients = Vec::new();
        for (i, l) in self.config.listeners.iter().enumerate() {
            let bind: SocketAddr = l.bind.parse().map_err(|_| {
                GatewayError::Other(format!(
                    "listener[{i}].bind: {:?} is not an address:port",
                    l.bind
                ))
            })?;
            let mut settings = ListenerSettings::new(l.name.as_str(), bind);
            if l.proxy_protocol {
                settings.proxy_protocol = Some(ProxyProtocolLimits::default());
            }
            if let Some(d) = &l.tls_handshake_timeout {
                settings.tls_handshake_timeout = d.get();
            }
            if let Some(d) = &l.header_read_timeout {
                settings.header_read_timeout = d.get();
            }
            if let Some(d) = &l.http2_keep_alive_interval {
                settings.http2_keep_alive_interval = (!d.get().is_zero()).then(|| d.get());
            }
            if let Some(n) = l.max_header_bytes {
                settings.max_header_size = n;
            }
            if let Some(n) = l.max_headers {
                settings.max_headers = n;
            }
            if let Some(b) = l.keep_alive {
                settings.keep_alive = b;
            }
            if let Some(n) = l.http2_max_concurrent_streams {
                settings.http2_max_concurrent_streams = n;
            }
            if let Some(b) = l.h2c {
                settings.h2c = b;
            }
            if let Some(b) = l.fast_http1 {
                settings.fast_http1 = b;
            }
            if l.max_connections.is_some() {
                settings.max_connections = l.max_connections;
            }
            let tls = match &l.tls {
                Some(t) => Some(
                    ServerTls::load(tls_settings(t, &self.config, &l.name))
                        .map_err(|e| GatewayError::Other(format!("listener[{i}].tls: {e}")))?,
                ),
                None => None,
            };
            if let Some(t) = &tls {
                tls_handles.push(t.clone());
            }
            if let (Some(server_tls), Some(acme)) =
                (&tls, l.tls.as_ref().and_then(|t| t.acme.as_ref()))
            {
                // Made now (configuration errors stop the start), run once
                // every listener is up.
                acme_clients.push(acme_client(
                    i,
                    &l.name,
                    acme,
                    server_tls.clone(),
                    http01.clone().unwrap_or_default(),
                )?);
            }
            let listener = Listener::bind(settings, tls)
                .await
                .map_err(|e| GatewayError::Other(e.to_string()))?;
            addrs.push(listener.local_addr());
            let listener = if l.connection_threads == Some(false) {
                listener
            } else {
                listener.with_threads(threads.clone())
            };
            servers.push(if l.express == Some(false) {
                listener.serve(stack.clone())
            } else {
                listener.serve_with_express(stack.clone(), express.clone())
            });
        }

        // Background work of the listeners, started only once all are bound
        // (a failed start leaves nothing running).
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = tls_handles
            .iter()
            .map(|t| tokio::spawn(t.clone().run_stapling()))
            .collect();
        tasks.extend(acme_clients.into_iter().map(tokio::spawn));
        let mut admin_addr = None;
        if let Some(a) = &self.config.gateway.admin_bind {
            let tcp = tokio::net::TcpListener::bind(a).await.map_err(|e| {
                GatewayError::Other(format!("gateway.admin_bind: cannot bind {a}: {e}"))
            })?;
            admin_addr = tcp.local_addr().ok();
            let api = AdminApi::new(
                self.clients.clone(),
                JwtVerifier::new(
                    self.keys.clone(),
                    self.config.jwt.issuer.as_str(),
                    self.config.jwt.audience.as_str(),
                ),
                self.enabled.check(),
                &self.config.gateway.admin_group,
            )
            .with_membership({
                let users = self.enabled.clone();
                move |identity, group| users.in_group(identity.subject(), group)
            })
            .with_routes(self.handles.policy.clone())
            .with_route_store(self.routes.clone())
            .with_sessions(self.state.sessions.clone())
            .with_events(self.state.events.clone())
            .with_health_kv(
                self.state
                    .kv
                    .bucket("health", Duration::from_secs(60))
                    .await
                    .map_err(|e| GatewayError::Other(format!("opening the shared store: {e}")))?,
            );
            tasks.push(tokio::spawn(admin::serve(
                tcp,
                self.metrics.clone(),
                self.ready.clone(),
                Some(api),
            )));
        }
        tasks.push(tokio::spawn(follow_changes(
            self.state.events.clone(),
            self.clients.clone(),
            self.routes.clone(),
        )));
        tasks.push(tokio::spawn(watch_state(
            self.state.kv.clone(),
            self.ready.clone(),
        )));
        self.ready.set(true);
        Ok(Running {
            listeners: addrs,
            admin: admin_addr,
            servers,
            tls: tls_handles,
            tasks,
            ready: self.ready.clone(),
            _threads: threads,
        })
    }
}

/// How often every node reads the API clients and the store's routes
/// again regardless of events.
const CLIENT_RESYNC: Duration = Duration::from_secs(60);

/// Read the API clients (or the store's routes) again whenever a node says
/// they changed, when events may have been missed, and every
/// [`CLIENT_RESYNC`]. Resubscribes after a failure.
async fn follow_changes(
    events: Arc<dyn hexon_core::store::EventBus>,
    clients: ClientRegistry,
    routes: super::routes::RouteSet,
) {
    use futures_util::StreamExt as _;
    use hexon_core::store::StartAt;
    async fn reload_clients(clients: &ClientRegistry) {
        if let Err(e) = clients.reload().await {
            tracing::warn!(error = %e, "reloading API clients failed; keeping the current table");
        }
    }
    async fn reload_routes(routes: &super::routes::RouteSet) {
        match routes.reload().await {
            Ok(true) => tracing::info!("routes from the durable store applied"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "applying the durable store's routes failed"),
        }
    }
    loop {
        let mut stream = match events.subscribe(StartAt::New).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow API client and route changes; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        // Changes made while not subscribed.
        reload_clients(&clients).await;
        reload_routes(&routes).await;
        // Also read again now and then: a node whose publish failed told
        // nobody. (A route table is only rebuilt when the routes changed.)
        let mut resync = tokio::time::interval(CLIENT_RESYNC);
        resync.tick().await;
        loop {
            let (c, r) = tokio::select! {
                item = stream.next() => match item {
                    None => break,
                    Some(Ok(r)) => match r.event {
                        Event::ApiClientChanged { .. } => (true, false),
                        Event::RouteChanged { .. } => (false, true),
                        Event::Unknown => (true, true),
                        _ => (false, false),
                    },
                    // Events may have been missed: assume the worst.
                    Some(Err(_)) => (true, true),
                },
                _ = resync.tick() => (true, true),
            };
            if c {
                reload_clients(&clients).await;
            }
            if r {
                reload_routes(&routes).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn tls_settings(t: &TlsConfig, config: &Config, name: &str) -> TlsSettings {
    let mut certs = Vec::new();
    if let (Some(c), Some(k)) = (&t.cert, &t.key) {
        certs.push(CertificateFiles::new(c, k));
    }
    certs.extend(t.sni.iter().map(|s| CertificateFiles::new(&s.cert, &s.key)));
    let mut settings = if certs.is_empty() {
        TlsSettings::dev(DevCertificate::new(Some(PathBuf::from(
            &config.gateway.data_dir,
        ))))
    } else {
        TlsSettings::new(certs)
    };
    settings.client_ca = t.client_ca.as_ref().map(PathBuf::from);
    settings.client_auth = match t.client_auth {
        ClientAuthMode::Optional => ClientAuth::Optional,
        _ => ClientAuth::Required,
    };
    settings.min_version = match t.min_version {
        TlsVersion::Tls13 => MinTlsVersion::Tls13,
        _ => MinTlsVersion::Tls12,
    };
    settings.ocsp_stapling = t.ocsp_stapling;
    if let Some(acme) = &t.acme {
        settings.acme = Some(AcmeFiles::new(
            acme_dir(config, name),
            acme.domains.clone(),
            acme.challenge == AcmeChallenge::TlsAlpn01,
        ));
    }
    settings
}

/// For `hexon check`: one line per listener whose certificate comes by
/// ACME, after checking what can be checked without the CA (the
/// `ca_bundle` file).
pub(crate) fn acme_summaries(config: &Config) -> Result<Vec<String>, GatewayError> {
    let mut lines = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let Some(acme) = &tls.acme else { continue };
        if let Some(path) = &acme.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                GatewayError::Other(format!("listener[{i}].tls.acme.ca_bundle: {path}: {e}"))
            })?;
            let n = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    GatewayError::Other(format!("listener[{i}].tls.acme.ca_bundle: {path}: {e}"))
                })?
                .len();
            if n == 0 {
                return Err(GatewayError::Other(format!(
                    "listener[{i}].tls.acme.ca_bundle: {path}: no CERTIFICATE in it"
                )));
            }
        }
        lines.push(format!(
            "listener {}: certificate by ACME from {} for {} ({}{}), kept in {}; OCSP stapling {}",
            l.name,
            acme.directory,
            acme.domains.join(", "),
            match acme.challenge {
                AcmeChallenge::Http01 => "http-01",
                _ => "tls-alpn-01",
            },
            if acme.must_staple {
                ", must-staple"
            } else {
                ""
            },
            acme_dir(config, &l.name).display(),
            if tls.ocsp_stapling { "on" } else { "off" },
        ));
    }
    Ok(lines)
}

/// Where a listener's ACME account, certificate and key live.
fn acme_dir(config: &Config, listener: &str) -> PathBuf {
    let safe: String = listener
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::new(&config.gateway.data_dir).join("acme").join(safe)
}

/// Start the ACME client of listener `i`.
#[cfg(feature = "acme")]
fn acme_client(
    i: usize,
    name: &str,
    acme: &hexon_core::config::AcmeClientConfig,
    tls: ServerTls,
    http01: Http01Tokens,
) -> Result<AcmeTask, GatewayError> {
    use crate::tls::acme::{AcmeClient, AcmeClientSettings, Challenge};
    let at = format!("listener[{i}].tls.acme");
    let mut settings = AcmeClientSettings::new(&acme.directory);
    settings.contact = acme.contact.clone();
    settings.challenge = match acme.challenge {
        AcmeChallenge::Http01 => Challenge::Http01,
        _ => Challenge::TlsAlpn01,
    };
    settings.must_staple = acme.must_staple;
    settings.renew_before = acme.renew_before.map(|d| d.get());
    if let Some(path) = &acme.ca_bundle {
        let pem = std::fs::read(path)
            .map_err(|e| GatewayError::Other(format!("{at}.ca_bundle: {path}: {e}")))?;
        settings.extra_roots = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GatewayError::Other(format!("{at}.ca_bundle: {path}: {e}")))?;
        if settings.extra_roots.is_empty() {
            return Err(GatewayError::Other(format!(
                "{at}.ca_bundle: {path}: no CERTIFICATE in it"
            )));
        }
    }
    if let (Some(kid), Some(key)) = (&acme.eab_kid, &acme.eab_hmac_key) {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.trim_end_matches('='))
            .map_err(|e| GatewayError::Other(format!("{at}.eab_hmac_key: not base64url: {e}")))?;
        settings.eab = Some((kid.clone(), key));
    }
    let client = AcmeClient::new(name, settings, tls, http01)
        .map_err(|e| GatewayError::Other(format!("{at}: {e}")))?;
    Ok(Box::pin(client.run()))
}

/// A listener's ACME client, to spawn.
type AcmeTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(not(feature = "acme"))]
fn acme_client(
    i: usize,
    _name: &str,
    _acme: &hexon_core::config::AcmeClientConfig,
    _tls: ServerTls,
    _http01: Http01Tokens,
) -> Result<AcmeTask, GatewayError> {
    Err(GatewayError::Other(format!(
        "listener[{i}].tls.acme: this build has no ACME client (hexon-proxy feature `acme`)"
    )))
}

/// Watch `path` and reload on change (SHA-256 of the contents), every
/// `every`. An invalid new file keeps the running configuration and logs why.
pub async fn watch_config(
    path: PathBuf,
    gateway: Arc<Gateway>,
    env: fn(&str) -> Option<String>,
    every: Duration,
) {
    // No hash yet: the first look compares the file with the configuration
    // the gateway runs, so an edit made while it was starting (after the
    // file was read) is applied, not taken as the running configuration.
    let mut last: Option<[u8; 32]> = None;
    let mut applied = gateway.config.clone();
    // Users whose sessions must be revoked: at start every disabled user (a
    // user disabled while this node was down, or edited before a restart),
    // then whoever a reload disables; kept until revoking succeeds.
    let mut pending: std::collections::BTreeSet<String> = applied
        .users
        .iter()
        .filter(|u| u.disabled)
        .map(|u| u.name.clone())
        .collect();
    revoke_pending(&gateway, &mut pending).await;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut changed = None;
        // The file first: a reload is never held up by revocations that
        // wait on a slow store.
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            if Some(hash) != last {
                let first_look = last.is_none();
                last = Some(hash);
                match Config::parse(&text, &env) {
                    Ok(new) if first_look && new == applied => {}
                    Err(e) => {
                        tracing::error!(path = %path.display(), errors = %e, "configuration changed but is invalid; still running the previous one")
                    }
                    Ok(new) => match gateway.reload(&new) {
                        Ok(restart) => {
                            if restart.is_empty() {
                                tracing::info!(path = %path.display(), "configuration reloaded");
                            } else {
                                tracing::warn!(path = %path.display(), sections = ?restart, "configuration reloaded; changes to these sections apply after a restart");
                            }
                            // A user enabled again is no longer to be revoked
                            // (that would end the sessions they start now).
                            let enabled_now = EnabledUsers::of(&new);
                            pending.retain(|u| !enabled_now.contains_key(u));
                            pending.extend(newly_disabled(&applied, &new));
                            changed = Some(hexon_core::hex::encode(&hash));
                            applied = new;
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "configuration changed but cannot be applied; still running the previous one")
                        }
                    },
                }
            }
        }
        revoke_pending(&gateway, &mut pending).await;
        // Announced once its consequences (revocations) are done.
        if let Some(sha256) = changed {
            if let Err(e) = gateway
                .state
                .events
                .publish(&Event::ConfigChanged { sha256 })
                .await
            {
                tracing::warn!(error = %e, "cannot publish config_changed");
            }
        }
    }
}

/// Probe the shared state store every few seconds and lower readiness while
/// it does not answer.
async fn watch_state(kv: Arc<dyn hexon_core::store::KvBackend>, ready: Arc<Readiness>) {
    const EVERY: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_secs(3);
    // One slow answer is not an outage: two failed probes in a row are.
    const FAILURES_TO_DOWN: u32 = 2;
    let mut tick = tokio::time::interval(EVERY);
    let mut bucket = None;
    let mut failures = 0u32;
    let mut up = true;
    loop {
        tick.tick().await;
        let probe = async {
            // Open the bucket once (opening may be an administrative call,
            // e.g. on NATS); then probe with a plain read.
            let b = match &bucket {
                Some(b) => Arc::clone(b),
                None => {
                    let b = kv.bucket("health", Duration::from_secs(60)).await?;
                    bucket = Some(Arc::clone(&b));
                    b
                }
            };
            b.get("probe").await.map(|_| ())
        };
        let answered = matches!(tokio::time::timeout(TIMEOUT, probe).await, Ok(Ok(())));
        failures = if answered {
            0
        } else {
            failures.saturating_add(1)
        };
        let now_up = failures < FAILURES_TO_DOWN;
        if now_up != up {
            if now_up {
                tracing::info!(
                    backend = kv.backend(),
                    "shared state store answers again: ready"
                );
            } else {
                tracing::error!(
                    backend = kv.backend(),
                    "shared state store does not answer: not ready (requests needing it get 503)"
                );
            }
            up = now_up;
        }
        ready.set_state_up(now_up);
    }
}

/// Revoke the sessions of every pending user; keep those that failed.
async fn revoke_pending(gateway: &Gateway, pending: &mut std::collections::BTreeSet<String>) {
    let mut failed = std::collections::BTreeSet::new();
    for subject in std::mem::take(pending) {
        match gateway.user_disabled(&subject).await {
            Ok(()) => {
                tracing::info!(user = %subject, "user disabled or removed: sessions revoked on every node")
            }
            Err(e) => {
                tracing::error!(user = %subject, error = %e, "revoking a disabled user's sessions failed; retrying (their sessions are refused meanwhile)");
                failed.insert(subject);
            }
        }
    }
    *pending = failed;
}

/// Users enabled in `old` that `new` disables or no longer has.
fn newly_disabled(old: &Config, new: &Config) -> Vec<String> {
    // Every user of the merged directory counts, including users that exist
    // only as members of a `[[group]]`.
    let now = EnabledUsers::of(new);
    let mut gone: Vec<String> = EnabledUsers::of(old)
        .into_keys()
        .filter(|u| !now.contains_key(u))
        .collect();
    gone.sort();
    gone
}

/// Serves `/.well-known/jwks.json` (the keys backends verify with); passes
/// everything else on.
#[derive(Clone)]
struct WellKnownLayer {
    jwks: Bytes,
}

impl<S> Layer<S> for WellKnownLayer {
    type Service = WellKnown<S>;
    fn layer(&self, inner: S) -> WellKnown<S> {
        WellKnown {
            inner,
            jwks: self.jwks.clone(),
        }
    }
}

#[derive(Clone)]
struct WellKnown<S> {
    inner: S,
    jwks: Bytes,
}

const JWKS_PATH: &str = "/.well-known/jwks.json";

impl<S, B> Service<Request<B>> for WellKnown<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.uri().path() == JWKS_PATH
            && (req.method() == Method::GET || req.method() == Method::HEAD)
        {
            let mut res = Response::new(full(self.jwks.clone()));
            *res.status_mut() = StatusCode::OK;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/jwk-set+json"),
            );
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("public, max-age=300"),
            );
            return crate::body::answer(res);
        }
        crate::body::pass(self.inner.call(req))
    }
}

#[cfg(test)]
mod reload_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, &|_| None).unwrap()
    }

    #[test]
    fn users_disabled_or_gone_are_found_including_group_only_members() {
        let old = config(
            "[[user]]\nname = \"alice\"\n[[user]]\nname = \"bob\"\n[[user]]\nname = \"carol\"\ndisabled = true\n",
        );
        let new =
            config("[[user]]\nname = \"alice\"\ndisabled = true\n[[user]]\nname = \"carol\"\n");
        // alice disabled, bob removed; carol enabled again is not "disabled".
        assert_eq!(newly_disabled(&old, &new), ["alice", "bob"]);
        assert!(newly_disabled(&new, &new).is_empty());
        let enabled = EnabledUsers::of(&new);
        assert!(enabled.contains_key("carol") && !enabled.contains_key("alice"));
        // Without [[user]] sections, members of [[group]] are the users.
        let old = config("[[group]]\nname = \"ops\"\nusers = [\"dave\", \"erin\"]\n");
        let new = config("[[group]]\nname = \"ops\"\nusers = [\"erin\"]\n");
        assert_eq!(newly_disabled(&old, &new), ["dave"]);
    }
}
