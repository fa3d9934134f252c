//! Trusted external JWT issuers whose keys come from a JWKS URL.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::jwt::{JwtVerifier, VerifiedJwt};
use hexon_core::keys::Jwks;
use hexon_core::{Identity, KeySet, PublicKey, UnixTime};
use http::Uri;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use super::AuthnResult;
use crate::body::BoxError;

/// Why a JWKS document could not be fetched or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL is not an `https://` URL with a host.
    #[error("invalid JWKS URL: {0}")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("JWKS fetch failed: {0}")]
    Transport(String),
    /// The endpoint answered something else than `200`.
    #[error("JWKS endpoint answered status {0}")]
    Status(u16),
    /// The document is larger than allowed.
    #[error("JWKS document larger than {0} bytes")]
    TooLarge(usize),
    /// No answer in time.
    #[error("JWKS fetch timed out")]
    Timeout,
    /// The document is not a usable JWK Set.
    #[error("JWKS document unusable: {0}")]
    Document(String),
}

/// The future a [`JwksFetcher`] returns: the document's bytes.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Bytes, FetchError>> + Send + 'a>>;

/// Fetches a JWKS document. [`HttpsJwksFetcher`] is the real one; tests and
/// special deployments inject their own (closures
/// `Fn(&str) -> impl Future<Output = Result<Bytes, FetchError>>` implement it).
pub trait JwksFetcher: Send + Sync + 'static {
    /// GET `url`.
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a>;
}

impl<F, Fut> JwksFetcher for F
where
    F: Fn(&str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, FetchError>> + Send + 'static,
{
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        Box::pin(self(url))
    }
}

// ---------------------------------------------------------------------------
// The HTTPS fetcher: hyper-util's pooled client over rustls.

/// Fetches JWKS documents over HTTPS only (hyper-util client, rustls with the
/// `ring` provider, TLS 1.2/1.3, HTTP/1.1), with a timeout (default 5 s) and
/// a size limit (default 1 MiB). Server certificates are checked against the
/// Mozilla roots (webpki-roots) unless other roots are given.
#[derive(Clone)]
pub struct HttpsJwksFetcher {
    client: Client<HttpsConnector, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl fmt::Debug for HttpsJwksFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsJwksFetcher")
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpsJwksFetcher {
    /// Trust the Mozilla root CAs (webpki-roots).
    pub fn new() -> Result<Self, FetchError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::with_roots(roots)
    }

    /// Trust `roots` (a private CA; tests).
    pub fn with_roots(roots: rustls::RootCertStore) -> Result<Self, FetchError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Transport(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = HttpsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        };
        Ok(HttpsJwksFetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: Duration::from_secs(5),
            max_bytes: 1024 * 1024,
        })
    }

    /// Give up after `timeout` (connect, TLS, response and body together).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Refuse documents larger than `max_bytes`.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(FetchError::Url(url.to_owned()));
        }
        let req = http::Request::get(uri)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Url(e.to_string()))?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        if res.status() != http::StatusCode::OK {
            return Err(FetchError::Status(res.status().as_u16()));
        }
        let body = Limited::new(res.into_body(), self.max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(self.max_bytes)
                } else {
                    FetchError::Transport(e.to_string())
                }
            })?;
        Ok(body.to_bytes())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl JwksFetcher for HttpsJwksFetcher {
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.get(url))
                .await
                .map_err(|_| FetchError::Timeout)?
        })
    }
}

/// Connects `https://` URIs: TCP, then rustls.
#[derive(Clone)]
struct HttpsConnector {
    tls: tokio_rustls::TlsConnector,
}

impl Service<Uri> for HttpsConnector {
    type Response = TlsConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            if uri.scheme_str() != Some("https") {
                return Err("only https:// JWKS URLs are fetched".into());
            }
            let host = uri
                .host()
                .ok_or("URL without host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok(TlsConn(TokioIo::new(stream)))
        })
    }
}

struct TlsConn(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------
// The issuer: cached keys, TTL, refetch on unknown `kid`, rate limit.

struct Cached {
    verifier: JwtVerifier,
    fetched: Instant,
}

type IdentityMap = Arc<dyn Fn(&VerifiedJwt) -> Option<Identity> + Send + Sync>;

/// A trusted external issuer (an IdP): tokens whose `iss` is its issuer are
/// verified with the keys of its JWKS document.
///
/// - Keys are fetched on first use and kept for the **TTL** (default 10 min).
/// - A token whose `kid` is not in the cached set triggers a **refetch**
///   (key rotation at the IdP), as does an expired TTL.
/// - Fetches are **single-flight** and **rate-limited**: at most one attempt
///   per `min_refetch_interval` (default 30 s), whatever the tokens say, so
///   random `kid`s cannot turn the gateway into a JWKS flooder.
/// - **Fail closed**: when a fetch fails, keys older than TTL +
///   `max_stale` (default 0) are not used; tokens are then refused (`401`).
/// - Keys Hexon cannot verify (RSA, HMAC) are skipped; a document with
///   private key material, duplicate `kid`s or no usable key is refused.
///
/// The identity is what the token's claims describe (see
/// [`hexon_core::jwt`]); [`with_identity_map`](Self::with_identity_map)
/// can namespace or refuse it — an external issuer is trusted for every
/// `sub` and username it asserts.
pub struct JwksIssuer {
    issuer: String,
    audience: String,
    url: String,
    fetcher: Arc<dyn JwksFetcher>,
    ttl: Duration,
    min_refetch: Duration,
    max_stale: Duration,
    leeway: Duration,
    map: Option<IdentityMap>,
    current: RwLock<Option<Arc<Cached>>>,
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl fmt::Debug for JwksIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("url", &self.url)
            .field("ttl", &self.ttl)
            .field("min_refetch", &self.min_refetch)
            .field("max_stale", &self.max_stale)
            .finish_non_exhaustive()
    }
}

impl JwksIssuer {
    /// Accept tokens with `iss` = `issuer` and `aud` containing `audience`,
    /// keys from `jwks_url` fetched by `fetcher`.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks_url: impl Into<String>,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> Self {
        JwksIssuer {
            issuer: issuer.into(),
            audience: audience.into(),
            url: jwks_url.into(),
            fetcher,
            ttl: Duration::from_secs(600),
            min_refetch: Duration::from_secs(30),
            max_stale: Duration::ZERO,
            leeway: hexon_core::jwt::DEFAULT_LEEWAY,
            map: None,
            current: RwLock::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
        }
    }

    /// How long fetched keys are used before refetching (default 10 min).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Least time between two fetch attempts (default 30 s).
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch = interval;
        self
    }

    /// How long past the TTL keys stay usable while refetching fails (default 0: fail closed).
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = max_stale;
        self
    }

    /// Clock-skew allowance for `exp`, `nbf`, `iat` (default 60 s).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Map (or refuse, with `None`) the identity of every verified token.
    pub fn with_identity_map(
        mut self,
        map: impl Fn(&VerifiedJwt) -> Option<Identity> + Send + Sync + 'static,
    ) -> Self {
        self.map = Some(Arc::new(map));
        self
    }

    /// The issuer (`iss`) this accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn current(&self) -> Option<Arc<Cached>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn store(&self, c: Arc<Cached>) {
        match self.current.write() {
            Ok(mut g) => *g = Some(c),
            Err(p) => *p.into_inner() = Some(c),
        }
    }

    fn fresh(&self, c: &Cached) -> bool {
        c.fetched.elapsed() < self.ttl
    }

    fn usable(&self, c: &Cached) -> bool {
        c.fetched.elapsed() < self.ttl.saturating_add(self.max_stale)
    }

    /// Verify `token` at `now`.
    pub(super) async fn verify(
        &self,
        token: &str,
        kid: Option<&str>,
        now: UnixTime,
    ) -> AuthnResult {
        let knows = |c: &Cached| kid.is_none_or(|k| c.verifier.keys().entry(k).is_some());
        let cached = match self.current() {
            Some(c) if self.fresh(&c) && knows(&c) => Some(c),
            _ => self.refresh(kid).await,
        };
        let Some(c) = cached else {
            return AuthnResult::invalid(format!("no keys available for issuer {:?}", self.issuer));
        };
        match c.verifier.verify(token, now) {
            Err(e) => AuthnResult::invalid(format!("external JWT ({}): {e}", self.issuer)),
            Ok(v) => match &self.map {
                None => AuthnResult::Authenticated(v.identity),
                Some(map) => match map(&v) {
                    Some(id) => AuthnResult::Authenticated(id),
                    None => AuthnResult::invalid("identity mapping refused the token"),
                },
            },
        }
    }

    /// Fetch if allowed; return the keys to verify with (fresh, or stale
    /// within `max_stale`), or `None`.
    async fn refresh(&self, kid: Option<&str>) -> Option<Arc<Cached>> {
        let mut last = self.last_attempt.lock().await;
        // Another task may have fetched while this one waited.
        let cur = self.current();
        if let Some(c) = &cur {
            let known = kid.is_none_or(|k| c.verifier.keys().entry(k).is_some());
            if self.fresh(c) && known {
                return cur;
            }
        }
        let limited = last.is_some_and(|t| t.elapsed() < self.min_refetch);
        if limited {
            return cur.filter(|c| self.usable(c));
        }
        *last = Some(Instant::now());
        let fetched = match self.fetcher.fetch(&self.url).await {
            Ok(bytes) => parse_jwks(&bytes),
            Err(e) => Err(e),
        };
        match fetched {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, url = %self.url, keys = keys.len(), "JWKS fetched");
                let c = Arc::new(Cached {
                    verifier: JwtVerifier::new(keys, self.issuer.clone(), self.audience.clone())
                        .with_leeway(self.leeway),
                    fetched: Instant::now(),
                });
                self.store(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, url = %self.url, error = %e, "JWKS fetch failed");
                cur.filter(|c| self.usable(c))
            }
        }
    }
}

/// Import the Ed25519 / P-256 keys of a JWK Set, skipping other key types.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, FetchError> {
    let jwks: Jwks =
        serde_json::from_slice(bytes).map_err(|e| FetchError::Document(e.to_string()))?;
    if jwks.keys.iter().any(|k| k.private_material) {
        return Err(FetchError::Document("contains private key material".into()));
    }
    let mut set = KeySet::new();
    for jwk in &jwks.keys {
        let Some(kid) = jwk.kid.as_deref() else {
            continue;
        };
        if set.entry(kid).is_some() {
            return Err(FetchError::Document(format!("duplicate kid {kid:?}")));
        }
        match PublicKey::from_jwk(jwk) {
            Ok(key) => {
                if let Err(e) = set.insert(kid, key, None) {
                    tracing::debug!(error = %e, "JWKS key skipped");
                }
            }
            Err(e) => tracing::debug!(kid, error = %e, "JWKS key skipped"),
        }
    }
    if set.is_empty() {
        return Err(FetchError::Document(
            "no usable Ed25519 or P-256 key with a kid".into(),
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing_skips_foreign_keys_and_refuses_private() {
        let key = hexon_core::Ed25519Signer::generate("k1").unwrap();
        use hexon_core::Signer as _;
        let jwk = serde_json::to_value(key.public_key().to_jwk("k1")).unwrap();
        let rsa = serde_json::json!({"kty":"RSA","kid":"r1","n":"AQAB","e":"AQAB"});
        let doc = serde_json::json!({"keys":[rsa, jwk]}).to_string();
        let set = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.entry("k1").is_some());

        let mut private = jwk.clone();
        private["d"] = "AAAA".into();
        let doc = serde_json::json!({"keys":[private]}).to_string();
        assert!(parse_jwks(doc.as_bytes()).is_err());
        let doc = serde_json::json!({"keys":[jwk.clone(), jwk]}).to_string();
        assert!(parse_jwks(doc.as_bytes()).is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(b"not json").is_err());
    }
}
