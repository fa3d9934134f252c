//! Upstream connections: TLS settings, the connector and the pooled hyper client.
//!
//! Each [`Upstream`](super::Upstream) owns its own pooled
//! [`hyper_util::client::legacy::Client`] whose connector always dials that
//! upstream, whatever authority the request URI carries. That is what lets the
//! proxy keep the client's public authority in the URI (HTTP/2 `:authority`)
//! and the `Host` header while connecting to the upstream's address: the
//! pool key is `(scheme, public authority)` inside a pool that only ever holds
//! connections to one upstream.
//!
//! The pool is kept per connection thread ([`hexon_core::rt`]): a pooled
//! connection's task runs on the thread that opened it, so a request served
//! on one thread never waits on another thread's connection (which would
//! cost cross-thread wake-ups on every request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tower_service::Service;

use super::error::{ConnectTimeout, UpstreamError};
use crate::body::BoxError;

/// The request body sent upstream: the client's body, counted and limited.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// The connector every upstream client uses.
pub(crate) type Connector = FixedDst<HttpsConnector<HttpConnector>>;
/// A pooled client bound to one upstream.
pub(crate) type UpstreamClient = Client<Connector, UpstreamBody>;

/// A new connection to `dst` through `connector` (its connect timeout and
/// TLS), for the pools that keep connections of their own.
pub(crate) async fn dial(
    connector: &Connector,
    dst: &Uri,
) -> Result<<Connector as tower_service::Service<Uri>>::Response, BoxError> {
    use tower_service::Service as _;
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    connector.call(dst.clone()).await
}

/// Connection pool settings, per upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// How long an idle connection stays in the pool. Default 90 s.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream (per public host for TLS and
    /// HTTP/2 upstreams), on each connection thread. Default 256.
    ///
    /// Below a thread's peak of concurrent requests to the upstream, the
    /// pool closes connections that are needed again a moment later: with
    /// 32, a thread serving 42 of 64 busy client connections closed and
    /// reopened an upstream connection every 20 to 75 requests. Idle
    /// connections still close after [`idle_timeout`](Self::idle_timeout).
    pub max_idle_per_host: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
        }
    }
}

impl PoolConfig {
    /// Set [`PoolConfig::idle_timeout`].
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Set [`PoolConfig::max_idle_per_host`].
    pub fn max_idle_per_host(mut self, n: usize) -> Self {
        self.max_idle_per_host = n;
        self
    }
}

/// TLS to `https://` upstreams: trusted roots and an optional client
/// certificate (mTLS to the upstream).
///
/// Default: the Mozilla roots from `webpki-roots`, no client certificate.
#[derive(Clone)]
pub struct UpstreamTls {
    roots: Arc<RootCertStore>,
    client_auth: Option<Arc<ClientAuth>>,
}

struct ClientAuth {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.client_auth.is_some())
            .finish()
    }
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self::webpki()
    }
}

impl UpstreamTls {
    /// Trust the Mozilla roots shipped in `webpki-roots`.
    pub fn webpki() -> Self {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        UpstreamTls {
            roots: Arc::new(roots),
            client_auth: None,
        }
    }

    /// Trust exactly the certificates of a PEM bundle (an internal CA),
    /// instead of the public roots.
    pub fn ca_pem(pem: &[u8]) -> Result<Self, UpstreamError> {
        let mut roots = RootCertStore::empty();
        let mut reader = pem;
        for cert in rustls_pemfile::certs(&mut reader) {
            let cert = cert.map_err(|e| UpstreamError::Tls(format!("CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Tls(format!("CA bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(UpstreamError::Tls(
                "CA bundle: no certificate found".to_owned(),
            ));
        }
        Ok(Self::roots(roots))
    }

    /// Trust exactly these roots.
    pub fn roots(roots: RootCertStore) -> Self {
        UpstreamTls {
            roots: Arc::new(roots),
            client_auth: None,
        }
    }

    /// Present this certificate chain (leaf first) and key to upstreams.
    pub fn with_client_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_auth = Some(Arc::new(ClientAuth { chain, key }));
        self
    }

    /// [`UpstreamTls::with_client_cert`] from PEM: a certificate chain and a
    /// PKCS#8, PKCS#1 or SEC1 private key.
    pub fn with_client_cert_pem(
        self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, UpstreamError> {
        let mut reader = chain_pem;
        let chain = rustls_pemfile::certs(&mut reader)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamError::Tls(format!("client certificate: {e}")))?;
        if chain.is_empty() {
            return Err(UpstreamError::Tls(
                "client certificate: no certificate found".to_owned(),
            ));
        }
        let mut reader = key_pem;
        let key = rustls_pemfile::private_key(&mut reader)
            .map_err(|e| UpstreamError::Tls(format!("client key: {e}")))?
            .ok_or_else(|| UpstreamError::Tls("client key: no private key found".to_owned()))?;
        Ok(self.with_client_cert(chain, key))
    }

    /// A rustls client configuration (without ALPN; the connector sets it).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, UpstreamError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Tls(e.to_string()))?
            .with_root_certificates(Arc::clone(&self.roots));
        match &self.client_auth {
            Some(auth) => builder
                .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
                .map_err(|e| UpstreamError::Tls(format!("client certificate: {e}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Which HTTP versions a client may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/1.1 only (plain `http://`; WebSocket upgrades over `https://`).
    Http1,
    /// HTTP/1.1 or HTTP/2 by ALPN (`https://`).
    Alpn,
    /// HTTP/2 with prior knowledge (`h2c://`).
    H2Only,
}

/// One upstream's pooled clients: one per connection thread, made on first
/// use there (slot 0 serves threads outside any set). Two sets of
/// connection threads in one process share slots by index: still correct,
/// only without the benefit.
pub(crate) struct ThreadClients {
    builder: hyper_util::client::legacy::Builder,
    connector: Connector,
    /// Any index out of range (cannot happen with `hexon_core::rt`).
    shared: std::sync::OnceLock<Box<UpstreamClient>>,
    slots: Box<[std::sync::OnceLock<Box<UpstreamClient>>]>,
}

impl ThreadClients {
    /// The connector the clients dial with.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The calling thread's client.
    pub(crate) fn get(&self) -> &UpstreamClient {
        let i = hexon_core::rt::worker_index();
        let slot = self.slots.get(i).unwrap_or(&self.shared);
        slot.get_or_init(|| Box::new(self.builder.build(self.connector.clone())))
    }
}

/// Build the pooled clients that always dial `dst` (`http://host:port` or
/// `https://host:port`).
pub(crate) fn build_client(
    dst: Uri,
    protocols: Protocols,
    tls: &UpstreamTls,
    pool: &PoolConfig,
    connect_timeout: Duration,
) -> Result<ThreadClients, UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls_config = tls.client_config()?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let https = match protocols {
        Protocols::Http1 => builder.enable_http1().wrap_connector(http),
        Protocols::Alpn | Protocols::H2Only => {
            builder.enable_http1().enable_http2().wrap_connector(http)
        }
    };
    let connector = FixedDst {
        inner: https,
        dst,
        connect_timeout,
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_adaptive_window(true);
    if protocols == Protocols::H2Only {
        b.http2_only(true);
    }
    Ok(ThreadClients {
        builder: b,
        connector,
        shared: std::sync::OnceLock::new(),
        slots: (0..=hexon_core::rt::MAX_THREADS)
            .map(|_| std::sync::OnceLock::new())
            .collect(),
    })
}

/// A connector that ignores the request URI and always dials one
/// destination, under a connect timeout (TCP and TLS handshake together).
#[derive(Clone, Debug)]
pub(crate) struct FixedDst<C> {
    inner: C,
    dst: Uri,
    connect_timeout: Duration,
}

impl<C> Service<Uri> for FixedDst<C>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _requested: Uri) -> Self::Future {
        let fut = self.inner.call(self.dst.clone());
        let limit = self.connect_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(res) => res.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout) as BoxError),
            }
        })
    }
}
