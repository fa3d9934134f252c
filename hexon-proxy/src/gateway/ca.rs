//! The certificate authority of `[ca]` (feature `ca`): its public
//! endpoints (CRLs, issuer certificates, bundles, OCSP, and with `[ca.ssh]`
//! the SSH CA public keys) at `[ca] url`, and
//! the ACME server at `[ca.acme] url`, answered before authentication
//! (relying parties and ACME clients carry no gateway credentials; ACME
//! requests are signed JWS the ACME server checks itself).

use std::task::{Context, Poll};

use bytes::Bytes;
use hexon_core::config::{Config, ConfigError, ConfigErrors};
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::GatewayError;
use super::state::GatewayState;
use crate::body::BoxBody;

/// The `[ca]` section, validated (`None` when there is none).
///
/// # Errors
/// The problem, located under `ca`; or a build without the `ca` feature
/// asked to run one.
pub fn section(config: &Config) -> Result<Option<CaSection>, ConfigErrors> {
    let Some(table) = config.ca.clone() else {
        return Ok(None);
    };
    #[cfg(feature = "ca")]
    {
        let cfg = hexon_ca::setup::CaConfig::from_toml(table).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "ca",
                e.to_string().trim_start_matches("[ca] ").to_owned(),
            )])
        })?;
        let Some(url) = cfg.url.clone() else {
            return Err(ConfigErrors(vec![ConfigError::new(
                "ca.url",
                "required: the gateway serves the CA's CRLs, certificates and OCSP there (e.g. \"https://ca.example.com/ca\")".to_owned(),
            )]));
        };
        Ok(Some(CaSection { cfg, url }))
    }
    #[cfg(not(feature = "ca"))]
    {
        let _ = table;
        Err(ConfigErrors(vec![ConfigError::new(
            "ca",
            "needs the certificate authority: build hexon-proxy with the `ca` feature (the hexon binary has it)".to_owned(),
        )]))
    }
}

/// A validated `[ca]`.
#[derive(Clone, Debug)]
pub struct CaSection {
    #[cfg(feature = "ca")]
    cfg: hexon_ca::setup::CaConfig,
    url: String,
}

impl CaSection {
    /// One line for `hexon check`.
    pub fn summary(&self) -> String {
        #[cfg(feature = "ca")]
        {
            let profiles: Vec<&str> = self.cfg.profiles.keys().map(|p| p.as_str()).collect();
            format!(
                "ca: served at {}; profiles {}; ACME {}; SSH {}",
                self.url,
                profiles.join(", "),
                self.cfg
                    .acme
                    .as_ref()
                    .map_or("off".to_owned(), |a| format!("at {}/directory", a.url)),
                if self.cfg.ssh.is_some() {
                    format!("CA keys at {}/ssh/", self.url)
                } else {
                    "off".to_owned()
                }
            )
        }
        #[cfg(not(feature = "ca"))]
        {
            format!("ca: served at {}", self.url)
        }
    }
}

/// Split `https://host[:port]/path` into (host, path).
#[cfg(feature = "ca")]
fn host_and_path(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    (
        host.to_ascii_lowercase(),
        format!("/{}", path.trim_end_matches('/')),
    )
}

/// The running CA endpoints and ACME server.
#[derive(Clone, Debug)]
pub struct CaRoutes {
    #[cfg(feature = "ca")]
    ca_host: String,
    #[cfg(feature = "ca")]
    http: hexon_ca::CaHttp,
    #[cfg(feature = "ca")]
    acme: Option<(String, std::sync::Arc<hexon_ca::acme::AcmeServer>)>,
    /// The SSH CA and the path users ask it to sign at.
    #[cfg(feature = "ca")]
    ssh: Option<(String, std::sync::Arc<hexon_ca::SshCa>)>,
}

impl CaRoutes {
    /// Whether requests for `host` (without port) may be the CA's or the
    /// ACME server's: every request to either host, whatever the path (a
    /// superset of what the CA layers answer; the express lane leaves all
    /// of them to the stack).
    pub(crate) fn may_claim(&self, host: &str) -> bool {
        #[cfg(feature = "ca")]
        {
            host.eq_ignore_ascii_case(&self.ca_host)
                || self
                    .acme
                    .as_ref()
                    .is_some_and(|(h, _)| host.eq_ignore_ascii_case(h))
        }
        #[cfg(not(feature = "ca"))]
        {
            let _ = host;
            true
        }
    }

    /// Open the hierarchy (creating it in `<data_dir>/ca` on first start)
    /// and start the responders, if `[ca]` is configured.
    pub async fn start(
        config: &Config,
        state: &GatewayState,
    ) -> Result<Option<CaRoutes>, GatewayError> {
        let Some(section) = section(config)? else {
            return Ok(None);
        };
        #[cfg(feature = "ca")]
        {
            use std::sync::Arc;
            let err = |e: hexon_ca::CaError| GatewayError::Other(format!("[ca]: {e}"));
            let dir = std::path::Path::new(&config.gateway.data_dir).join("ca");
            let certs: Arc<dyn hexon_core::store::CertificateStore> = state.durable.clone();
            let ca = Arc::new(
                hexon_ca::setup::open(&section.cfg, &dir, certs)
                    .await
                    .map_err(err)?,
            );
            let ocsp = Arc::new(hexon_ca::OcspResponder::new(
                ca.clone(),
                section.cfg.ocsp_settings(),
            ));
            let (ca_host, ca_path) = host_and_path(&section.url);
            let mut http = hexon_ca::CaHttp::new(ca.clone(), ocsp, &ca_path);
            let certs: Arc<dyn hexon_core::store::CertificateStore> = state.durable.clone();
            let mut ssh_ca = None;
            if let Some(ssh) = hexon_ca::setup::open_ssh(&section.cfg, &dir, certs)
                .map_err(|e| GatewayError::Other(format!("[ca.ssh]: {e}")))?
            {
                let ssh = Arc::new(ssh);
                http = http.with_ssh(ssh.clone());
                ssh_ca = Some((format!("{ca_path}{SSH_SIGN_PATH}"), ssh));
            }
            let acme = match &section.cfg.acme {
                None => None,
                Some(acme_cfg) => {
                    let accounts: Arc<dyn hexon_core::store::AcmeAccountStore> =
                        state.durable.clone();
                    let [(orders, orders_ttl), (nonces, nonces_ttl)] =
                        hexon_ca::acme::AcmeServer::BUCKETS;
                    let bucket = |name, ttl| state.kv.bucket(name, ttl);
                    let kv = bucket(orders, orders_ttl)
                        .await
                        .map_err(|e| GatewayError::Other(format!("[ca.acme]: {e}")))?;
                    let nonce_kv = bucket(nonces, nonces_ttl)
                        .await
                        .map_err(|e| GatewayError::Other(format!("[ca.acme]: {e}")))?;
                    let server = hexon_ca::acme::AcmeServer::new(
                        acme_cfg.clone(),
                        ca.clone(),
                        accounts,
                        kv,
                        nonce_kv,
                    )
                    .map_err(err)?;
                    let (host, _) = host_and_path(&acme_cfg.url);
                    tracing::info!(directory = %format!("{}/directory", acme_cfg.url), "ACME server enabled");
                    Some((host, Arc::new(server)))
                }
            };
            tracing::info!(url = %section.url, root = %dir.join("root.crt").display(), "certificate authority enabled");
            Ok(Some(CaRoutes {
                ca_host,
                http,
                acme,
                ssh: ssh_ca,
            }))
        }
        #[cfg(not(feature = "ca"))]
        {
            let _ = (section, state);
            Ok(None)
        }
    }
}

/// Answers the CA's and the ACME server's requests; passes everything else on.
#[derive(Clone, Debug)]
pub struct CaLayer {
    routes: Option<CaRoutes>,
}

impl CaLayer {
    /// Answer with `routes` (none: pass everything on).
    pub fn new(routes: Option<CaRoutes>) -> Self {
        CaLayer { routes }
    }
}

impl<S> Layer<S> for CaLayer {
    type Service = CaRoute<S>;
    fn layer(&self, inner: S) -> CaRoute<S> {
        CaRoute {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`CaLayer`].
#[derive(Clone, Debug)]
pub struct CaRoute<S> {
    inner: S,
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    routes: Option<CaRoutes>,
}

impl<S, B> Service<Request<B>> for CaRoute<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        #[cfg(feature = "ca")]
        if let Some(routes) = &self.routes {
            let (parts, body) = req.into_parts();
            let host =
                hexon_core::store::session::request_host(&parts).map(str::to_ascii_lowercase);
            let path = parts.uri.path();
            if let Some((acme_host, acme)) = &routes.acme
                && host.as_deref() == Some(acme_host.as_str())
                && acme.handles(path)
            {
                let acme = acme.clone();
                let client = parts
                    .extensions
                    .get::<crate::ext::ConnectionInfo>()
                    .map(|c| c.peer.ip().to_canonical());
                let req = Request::from_parts(parts, body);
                return crate::body::own(async move {
                    Ok(acme.call(req, client).await.map(crate::body::boxed))
                });
            }
            let ssh_sign = routes.ssh.as_ref().is_some_and(|(p, _)| p == path);
            if host.as_deref() == Some(routes.ca_host.as_str())
                && routes.http.handles(path)
                && !ssh_sign
            {
                let http = routes.http.clone();
                let req = Request::from_parts(parts, body);
                return crate::body::own(async move {
                    Ok(http.call(req).await.map(crate::body::boxed))
                });
            }
            return crate::body::pass(self.inner.call(Request::from_parts(parts, body)));
        }
        crate::body::pass(self.inner.call(req))
    }
}

/// Where, under the CA's URL, users get SSH certificates.
pub const SSH_SIGN_PATH: &str = "/ssh/sign";
/// Largest SSH signing request body.
#[cfg(feature = "ca")]
const SSH_SIGN_MAX_BODY: usize = 16 * 1024;

/// The user name and current groups of an enabled user of the gateway's
/// directory, by subject (`None`: not such a user).
pub type Membership = std::sync::Arc<
    dyn Fn(&str) -> Option<(std::sync::Arc<str>, std::sync::Arc<[std::sync::Arc<str>]>)>
        + Send
        + Sync,
>;

/// Certificates one user may get per hour (per node).
#[cfg(feature = "ca")]
const SSH_SIGN_PER_HOUR: u32 = 60;

/// `POST <ca url>/ssh/sign`: an authenticated user sends an OpenSSH public
/// key and gets a user certificate whose principals the `[ca.ssh]` policy
/// derives from their identity (user name, groups). Sits after the
/// authenticators and before route authorization: the identity is the
/// gateway's, the decision the SSH policy's.
///
/// The body is the public key line (`ssh-ed25519 AAAA… comment`, answered
/// with the certificate line, ready for `~/.ssh/id_ed25519-cert.pub`), or
/// JSON `{"public_key": …, "principals": [...], "valid_for": "4h"}`
/// (answered with JSON). Without an identity: 401; a key or request the
/// policy refuses: 403 with the reason; malformed: 400.
///
/// Only people get certificates: the identity must be a user
/// (`IdentityKind::User`) of the gateway's own directory, enabled now,
/// signed in with the session cookie or a bearer JWT the gateway itself
/// issued (API keys, HMAC, client certificates, workloads and tokens of
/// trusted external issuers are refused: their subjects are not this
/// directory's). The principals come from the directory's current user
/// name and groups, never from what the token carries (a user removed from
/// a group, or renamed, changes at once). A session cookie must come with a JSON body
/// (a cross-site form cannot send one without a CORS preflight). At most
/// 60 certificates per user and hour on each node.
#[derive(Clone)]
pub struct SshSignLayer {
    /// The CA's host, the signing path, the SSH CA.
    #[cfg(feature = "ca")]
    at: (String, String, std::sync::Arc<hexon_ca::SshCa>),
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    membership: Membership,
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    issued: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, u32)>>>,
    /// The gateway's own JWT issuer (`[jwt] issuer`).
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    own_issuer: std::sync::Arc<str>,
}

impl std::fmt::Debug for SshSignLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSignLayer").finish_non_exhaustive()
    }
}

impl SshSignLayer {
    /// Sign with `routes`' SSH CA; `membership` gives a directory user's
    /// name and current groups; bearer tokens count only from
    /// `own_issuer`. `None` without an SSH CA: nothing to add to the stack.
    pub fn new(
        routes: Option<&CaRoutes>,
        membership: Membership,
        own_issuer: &str,
    ) -> Option<Self> {
        #[cfg(feature = "ca")]
        {
            let routes = routes?;
            let (path, ssh) = routes.ssh.as_ref()?;
            Some(SshSignLayer {
                at: (routes.ca_host.clone(), path.clone(), ssh.clone()),
                membership,
                issued: std::sync::Arc::default(),
                own_issuer: own_issuer.into(),
            })
        }
        #[cfg(not(feature = "ca"))]
        {
            let _ = (routes, membership, own_issuer);
            None
        }
    }

    /// Count one certificate for `subject` in this hour; false when over
    /// the limit.
    #[cfg(feature = "ca")]
    fn admit(&self, subject: &str) -> bool {
        let hour = hexon_core::UnixTime::now().as_secs() / 3600;
        let mut m = self
            .issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() > 100_000 {
            m.retain(|_, (h, _)| *h == hour);
        }
        let e = m.entry(subject.to_owned()).or_insert((hour, 0));
        if e.0 != hour {
            *e = (hour, 0);
        }
        if e.1 >= SSH_SIGN_PER_HOUR {
            return false;
        }
        e.1 += 1;
        true
    }
}

impl<S> Layer<S> for SshSignLayer {
    type Service = SshSign<S>;
    fn layer(&self, inner: S) -> SshSign<S> {
        SshSign {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`SshSignLayer`].
#[derive(Clone, Debug)]
pub struct SshSign<S> {
    inner: S,
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    layer: SshSignLayer,
}

impl<S, B> Service<Request<B>> for SshSign<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        #[cfg(feature = "ca")]
        if req.uri().path() == self.layer.at.1 {
            let (ca_host, _, ssh) = &self.layer.at;
            let (parts, body) = req.into_parts();
            let ours = hexon_core::store::session::request_host(&parts)
                .is_some_and(|h| h.eq_ignore_ascii_case(ca_host));
            let req = Request::from_parts(parts, body);
            if ours {
                let (ssh, layer) = (ssh.clone(), self.layer.clone());
                return crate::body::own(async move { Ok(ssh_sign(req, &ssh, &layer).await) });
            }
            return crate::body::pass(self.inner.call(req));
        }
        crate::body::pass(self.inner.call(req))
    }
}

#[cfg(feature = "ca")]
async fn ssh_sign<B>(
    req: Request<B>,
    ssh: &hexon_ca::SshCa,
    layer: &SshSignLayer,
) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http::{HeaderValue, Method, StatusCode, header};
    use http_body_util::BodyExt as _;
    use serde_json::json;

    let reply = |status: StatusCode, json_out: bool, body: serde_json::Value| {
        let (text, ctype) = if json_out {
            (body.to_string(), "application/json")
        } else {
            (
                format!(
                    "{}\n",
                    body.get("certificate")
                        .or_else(|| body.get("detail"))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                ),
                "text/plain; charset=utf-8",
            )
        };
        let mut res = Response::new(crate::body::full(text));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    };
    let json_in = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let json_out = json_in
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"));
    let refuse = |status: StatusCode, error: &str, detail: String| {
        reply(
            status,
            json_out,
            json!({ "error": error, "detail": detail }),
        )
    };
    if req.method() != Method::POST {
        let mut res = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST your OpenSSH public key here".into(),
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let Some(identity) = req.extensions().get::<hexon_core::Identity>().cloned() else {
        let mut res = refuse(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "sign in first: send a bearer token or session cookie the gateway accepts".into(),
        );
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hexon\""),
        );
        return res;
    };
    // People only, from this gateway's directory, with a credential made
    // for them (see the layer's documentation).
    let credential = req
        .extensions()
        .get::<hexon_core::policy::Credential>()
        .copied();
    let by_session = credential == Some(hexon_core::policy::Credential::Session);
    if identity.kind() != hexon_core::IdentityKind::User
        || !matches!(
            credential,
            Some(hexon_core::policy::Credential::Session | hexon_core::policy::Credential::Jwt)
        )
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "not_a_person",
            "SSH certificates are for people signed in to the gateway (session or bearer token); API clients and workloads cannot get them".into(),
        );
    }
    if credential == Some(hexon_core::policy::Credential::Jwt)
        && bearer_issuer(req.headers()).as_deref() != Some(&*layer.own_issuer)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "not_a_person",
            "SSH certificates need the gateway's own sign-in (session or a token it issued), not another issuer's token".into(),
        );
    }
    let Some((username, directory_groups)) = (layer.membership)(identity.subject()) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "unknown_user",
            "not an enabled user of this gateway's directory".into(),
        );
    };
    if by_session && !json_in {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "with a session cookie, send Content-Type: application/json ({\"public_key\": …})"
                .into(),
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), SSH_SIGN_MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("send at most {SSH_SIGN_MAX_BODY} bytes: one public key"),
            );
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        public_key: String,
        #[serde(default)]
        principals: Vec<String>,
        valid_for: Option<String>,
    }
    let ask = if json_in {
        match serde_json::from_slice::<Ask>(&body) {
            Ok(a) => a,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "expected {{\"public_key\": \"ssh-ed25519 AAAA…\", \"principals\": [...], \"valid_for\": \"8h\"}}: {e}"
                    ),
                );
            }
        }
    } else {
        match std::str::from_utf8(&body) {
            Ok(line) => Ask {
                public_key: line.trim().to_owned(),
                principals: Vec::new(),
                valid_for: None,
            },
            Err(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body is not UTF-8: send the public key line (the content of id_ed25519.pub)".into(),
                );
            }
        }
    };
    let key = match hexon_ca::SshPublicKey::parse(&ask.public_key) {
        Ok(k) => k,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_public_key", e.to_string()),
    };
    let valid_for = match ask
        .valid_for
        .as_deref()
        .map(hexon_core::duration::HumanDuration::parse)
    {
        None => None,
        Some(Ok(d)) => Some(d.get()),
        Some(Err(e)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("valid_for: {e}"),
            );
        }
    };
    // The directory's groups now, not the token's.
    let groups: Vec<String> = directory_groups.iter().map(|g| g.to_string()).collect();
    let mut request = hexon_ca::UserCertRequest::new(key, &username, &groups);
    request.principals = ask.principals;
    request.valid_for = valid_for;
    if !layer.admit(identity.subject()) {
        let mut res = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("at most {SSH_SIGN_PER_HOUR} SSH certificates per hour; try again later"),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
        return res;
    }
    match ssh.issue_user(&request).await {
        Ok(issued) => reply(
            StatusCode::OK,
            json_out,
            json!({
                "certificate": issued.certificate,
                "serial": issued.serial.to_string(),
                "key_id": issued.key_id,
                "principals": issued.principals,
                "valid_after": issued.valid_after.as_secs(),
                "valid_before": issued.valid_before.as_secs(),
                "ca_fingerprint": issued.ca_fingerprint,
            }),
        ),
        Err(hexon_ca::CaError::Refused(why)) => refuse(StatusCode::FORBIDDEN, "refused", why),
        Err(hexon_ca::CaError::BadSshKey(why)) => {
            refuse(StatusCode::BAD_REQUEST, "bad_public_key", why)
        }
        Err(e) => {
            tracing::error!(error = %e, user = identity.subject(), "SSH certificate issuance failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the SSH CA could not sign now; try again".into(),
            )
        }
    }
}

/// The `iss` claim of the request's bearer JWT, read without verifying
/// (the authenticator already verified the token; this only says whose
/// verifier it went to).
#[cfg(feature = "ca")]
fn bearer_issuer(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let payload = token.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(all(test, feature = "ca"))]
mod ssh_sign_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bearer(claims: &str) -> http::HeaderMap {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}.{}.sig", b64("{\"alg\":\"EdDSA\"}"), b64(claims))
                .parse()
                .unwrap(),
        );
        h
    }

    #[test]
    fn the_bearer_token_issuer_is_read_and_nothing_else_passes_for_one() {
        assert_eq!(
            bearer_issuer(&bearer(r#"{"iss":"https://idp.example","sub":"alice"}"#)).as_deref(),
            Some("https://idp.example")
        );
        assert_eq!(bearer_issuer(&bearer(r#"{"sub":"alice"}"#)), None);
        assert_eq!(bearer_issuer(&bearer(r#"{"iss":7}"#)), None);
        assert_eq!(bearer_issuer(&bearer("not json")), None);
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_issuer(&h), None);
        h.insert(http::header::AUTHORIZATION, "ApiKey abc".parse().unwrap());
        assert_eq!(bearer_issuer(&h), None);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer onlyonepart".parse().unwrap(),
        );
        assert_eq!(bearer_issuer(&h), None);
    }
}
