//! Upstreams, upstream groups and their settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

use super::balance::{Balance, RoundRobin};
use super::client::{self, PoolConfig, Protocols, ThreadClients, UpstreamClient, UpstreamTls};
use super::error::UpstreamError;
use super::h1conns::H1Conns;
use super::h1pool::H1Pool;

/// How the proxy talks to an upstream, from its base URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamScheme {
    /// `http://`: HTTP/1.1 over TCP.
    Http,
    /// `https://`: TLS, HTTP/2 or HTTP/1.1 by ALPN.
    Https,
    /// `h2c://`: HTTP/2 over TCP with prior knowledge (gRPC without TLS).
    H2c,
}

/// Timeouts of one upstream group.
///
/// | timeout | default | on expiry |
/// |---|---|---|
/// | `connect` (TCP + TLS handshake) | 5 s | 504 |
/// | `response_header` (from forwarding to the response head, connect included) | 60 s | 504 |
/// | `idle` (gap between two response body frames) | 60 s | body cut (headers already sent) |
/// | `total` (whole exchange, response body included) | none | 504 before the head, body cut after |
///
/// Upgraded (WebSocket) connections have no timeout once spliced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// From the start of forwarding to the upstream's response head.
    pub response_header: Duration,
    /// Longest gap between two frames of the response body.
    pub idle: Duration,
    /// The whole exchange; `None` for no limit (long downloads, streams).
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: None,
        }
    }
}

impl Timeouts {
    /// Set [`Timeouts::connect`].
    pub fn connect(mut self, d: Duration) -> Self {
        self.connect = d;
        self
    }

    /// Set [`Timeouts::response_header`].
    pub fn response_header(mut self, d: Duration) -> Self {
        self.response_header = d;
        self
    }

    /// Set [`Timeouts::idle`].
    pub fn idle(mut self, d: Duration) -> Self {
        self.idle = d;
        self
    }

    /// Set [`Timeouts::total`].
    pub fn total(mut self, d: Option<Duration>) -> Self {
        self.total = d;
        self
    }
}

/// Default request body limit: 32 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * 1024 * 1024;

/// Settings of one upstream group (one route).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GroupConfig {
    /// Timeouts; see [`Timeouts`] for the defaults.
    pub timeouts: Timeouts,
    /// Largest request body forwarded, `None` for no limit. Default
    /// [`DEFAULT_MAX_REQUEST_BODY`]. A larger `Content-Length` is refused
    /// with 413 before the upstream is contacted; a streamed body is cut
    /// when it crosses the limit (413 if the upstream has not answered yet).
    pub max_request_body: Option<u64>,
    /// Connection pool settings.
    pub pool: PoolConfig,
    /// TLS to `https://` upstreams.
    pub tls: UpstreamTls,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            timeouts: Timeouts::default(),
            max_request_body: Some(DEFAULT_MAX_REQUEST_BODY),
            pool: PoolConfig::default(),
            tls: UpstreamTls::default(),
        }
    }
}

impl GroupConfig {
    /// Set [`GroupConfig::timeouts`].
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Set [`GroupConfig::max_request_body`].
    pub fn max_request_body(mut self, limit: Option<u64>) -> Self {
        self.max_request_body = limit;
        self
    }

    /// Set [`GroupConfig::pool`].
    pub fn pool(mut self, p: PoolConfig) -> Self {
        self.pool = p;
        self
    }

    /// Set [`GroupConfig::tls`].
    pub fn tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = tls;
        self
    }
}

/// One upstream: a base URL and its pooled clients. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    url: String,
    scheme: UpstreamScheme,
    base_path: String,
    /// `host:port` the connector dials (also the pool key for HTTP/1.1).
    dst_authority: Authority,
    client: ThreadClients,
    /// HTTP/1.1-only client for upgrades over `https://` (ALPN could pick h2).
    upgrade_client: Option<ThreadClients>,
    /// `http://`: ordinary requests take these kept connections.
    h1: Option<Arc<H1Pool>>,
    /// `http://`: the express lane's own kept connections.
    conns: Option<Arc<H1Conns>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream from its base URL: `http://host[:port][/base]`,
    /// `https://…` or `h2c://host[:port][/base]`. Credentials, queries and
    /// fragments are refused. Builds the connection pool (lazily connecting).
    pub fn new(url: &str, config: &GroupConfig) -> Result<Self, UpstreamError> {
        let invalid = |reason| UpstreamError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if url.contains('#') {
            return Err(invalid("fragments are not allowed"));
        }
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => (UpstreamScheme::Http, 80),
            Some(s) if s.eq_ignore_ascii_case("https") => (UpstreamScheme::Https, 443),
            Some(s) if s.eq_ignore_ascii_case("h2c") => (UpstreamScheme::H2c, 80),
            _ => return Err(invalid("the scheme must be http, https or h2c")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in upstream URLs are not allowed"));
        }
        if authority.host().is_empty() {
            return Err(invalid("no host"));
        }
        if uri.query().is_some() {
            return Err(invalid("queries are not allowed"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let dst_authority: Authority = format!("{}:{port}", authority.host())
            .parse()
            .map_err(|_| invalid("bad host or port"))?;
        let dst_scheme = if scheme == UpstreamScheme::Https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let dst = Uri::builder()
            .scheme(dst_scheme)
            .authority(dst_authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| invalid("bad host or port"))?;
        let base_path = uri.path().trim_end_matches('/').to_owned();

        let t = &config.timeouts;
        let protocols = match scheme {
            UpstreamScheme::Http => Protocols::Http1,
            UpstreamScheme::Https => Protocols::Alpn,
            UpstreamScheme::H2c => Protocols::H2Only,
        };
        let client =
            client::build_client(dst.clone(), protocols, &config.tls, &config.pool, t.connect)?;
        let h1 = (scheme == UpstreamScheme::Http).then(|| {
            Arc::new(H1Pool::new(
                client.connector().clone(),
                dst.clone(),
                &config.pool,
            ))
        });
        let conns = (scheme == UpstreamScheme::Http).then(|| {
            Arc::new(H1Conns::new(
                client.connector().clone(),
                dst.clone(),
                &config.pool,
            ))
        });
        let upgrade_client = if scheme == UpstreamScheme::Https {
            Some(client::build_client(
                dst,
                Protocols::Http1,
                &config.tls,
                &config.pool,
                t.connect,
            )?)
        } else {
            None
        };
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                url: url.to_owned(),
                scheme,
                base_path,
                dst_authority,
                client,
                upgrade_client,
                h1,
                conns,
            }),
        })
    }

    /// The base URL as configured (for logs).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How the proxy talks to it.
    pub fn scheme(&self) -> UpstreamScheme {
        self.inner.scheme
    }

    /// The base path, without trailing slash (`""` for none).
    pub fn base_path(&self) -> &str {
        &self.inner.base_path
    }

    /// The kept connections for ordinary requests to `http://` upstreams.
    pub(crate) fn h1_pool(&self) -> Option<&Arc<H1Pool>> {
        self.inner.h1.as_ref()
    }

    /// The express lane's kept connections (`http://` upstreams).
    pub(crate) fn express_conns(&self) -> Option<&Arc<H1Conns>> {
        self.inner.conns.as_ref()
    }

    /// The client for ordinary requests.
    pub(crate) fn client(&self) -> &UpstreamClient {
        self.inner.client.get()
    }

    /// The client for HTTP/1.1 upgrades, `None` for `h2c://` upstreams
    /// (which cannot carry them).
    pub(crate) fn upgrade_client(&self) -> Option<&UpstreamClient> {
        match self.inner.scheme {
            UpstreamScheme::Http => Some(self.inner.client.get()),
            UpstreamScheme::Https => self.inner.upgrade_client.as_ref().map(ThreadClients::get),
            UpstreamScheme::H2c => None,
        }
    }

    /// The URI sent upstream: `scheme://<authority><base><path>?<query>`.
    /// hyper turns it into origin-form on HTTP/1.1; on HTTP/2 the authority
    /// becomes `:authority`.
    ///
    /// The URI authority is also the connection pool's key. `http://`
    /// upstreams speak HTTP/1.1 only, so they get the upstream's own
    /// address there (the public host travels in the `Host` header): a
    /// client varying `Host` cannot open one pool per name. HTTP/2-capable
    /// upstreams need the public host as `:authority` (the signature covers it).
    pub(crate) fn request_uri(
        &self,
        public_authority: &Authority,
        path_and_query: Option<&PathAndQuery>,
    ) -> Result<Uri, http::Error> {
        let scheme = if self.inner.scheme == UpstreamScheme::Https {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let authority = if self.inner.scheme == UpstreamScheme::Http {
            self.inner.dst_authority.clone()
        } else {
            public_authority.clone()
        };
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(join_path(&self.inner.base_path, path_and_query))
            .build()
    }
}

/// Base path (no trailing slash) + request path, query preserved.
pub(crate) fn join_path(base: &str, pq: Option<&PathAndQuery>) -> String {
    let mut out = Vec::with_capacity(base.len() + pq.map_or(1, |p| p.as_str().len()) + 1);
    join(&mut out, base, pq);
    // Built from two strings and ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// [`join_path`], appended to `out`.
pub(crate) fn join_path_into(out: &mut Vec<u8>, base: &str, pq: &PathAndQuery) {
    join(out, base, Some(pq));
}

fn join(out: &mut Vec<u8>, base: &str, pq: Option<&PathAndQuery>) {
    let path = pq.map(PathAndQuery::path).unwrap_or("/");
    let start = out.len();
    out.extend_from_slice(base.as_bytes());
    if path.starts_with('/') {
        out.extend_from_slice(path.as_bytes());
    } else if path == "*" && base.is_empty() {
        out.push(b'*');
    } else {
        out.push(b'/');
        out.extend_from_slice(path.as_bytes());
    }
    if out.len() == start {
        out.push(b'/');
    }
    if let Some(q) = pq.and_then(PathAndQuery::query) {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
}

/// The upstreams of one route, their balancer and settings.
pub struct UpstreamGroup {
    balancer: Box<dyn Balance>,
    config: GroupConfig,
}

impl fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("upstreams", &self.balancer.upstreams())
            .field("config", &self.config)
            .finish()
    }
}

impl UpstreamGroup {
    /// Round-robin over upstreams built from base URLs.
    pub fn new<I>(urls: I, config: GroupConfig) -> Result<Self, UpstreamError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let upstreams = urls
            .into_iter()
            .map(|u| Upstream::new(u.as_ref(), &config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_balancer(RoundRobin::new(upstreams), config))
    }

    /// A group with its own balancer (the upstreams come from it).
    pub fn with_balancer(balancer: impl Balance, config: GroupConfig) -> Self {
        UpstreamGroup {
            balancer: Box::new(balancer),
            config,
        }
    }

    /// The group's upstreams.
    pub fn upstreams(&self) -> &[Upstream] {
        self.balancer.upstreams()
    }

    /// The upstream for the next request.
    pub fn pick(&self) -> Option<&Upstream> {
        self.balancer.pick()
    }

    /// The group's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(s: &str) -> PathAndQuery {
        s.parse().unwrap()
    }

    #[test]
    fn paths_join_without_double_slashes() {
        assert_eq!(join_path("", Some(&pq("/a/b?x=1"))), "/a/b?x=1");
        assert_eq!(
            join_path("/api", Some(&pq("/users?q=a%20b"))),
            "/api/users?q=a%20b"
        );
        assert_eq!(join_path("/api", Some(&pq("/"))), "/api/");
        assert_eq!(join_path("/api", None), "/api/");
        assert_eq!(join_path("", None), "/");
        assert_eq!(join_path("", Some(&pq("*"))), "*");
    }

    #[test]
    fn urls_are_checked() {
        let c = GroupConfig::default();
        for bad in [
            "ftp://x",
            "http://u:p@x",
            "http://x/?q",
            "http://x/#f",
            "/relative",
            "http://",
        ] {
            assert!(Upstream::new(bad, &c).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn base_paths_and_schemes() {
        let c = GroupConfig::default();
        let u = Upstream::new("http://127.0.0.1:8080/base/", &c).unwrap();
        assert_eq!(u.base_path(), "/base");
        assert_eq!(u.scheme(), UpstreamScheme::Http);
        let u = Upstream::new("h2c://[::1]:50051", &c).unwrap();
        assert_eq!(u.scheme(), UpstreamScheme::H2c);
        assert!(u.upgrade_client().is_none());
        let u = Upstream::new("https://backend.internal", &c).unwrap();
        assert!(u.upgrade_client().is_some());
        let host: Authority = "app.example.com:8443".parse().unwrap();
        assert_eq!(
            u.request_uri(&host, Some(&pq("/x?y"))).unwrap().to_string(),
            "https://app.example.com:8443/x?y"
        );
    }
}
