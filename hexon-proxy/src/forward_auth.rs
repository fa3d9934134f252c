//! Forward authentication: the endpoint nginx `auth_request`, Traefik
//! `forwardAuth` and Caddy `forward_auth` ask before they serve a request.
//!
//! [`ForwardAuthLayer`] turns a request for its path into the request it is
//! about — method, URI and host from `X-Original-Method` / `X-Original-URI`
//! / `X-Original-Host` (nginx) or `X-Forwarded-Method` / `-Uri` / `-Host`
//! (Traefik, Caddy), everything else (credentials, cookies) as the proxy
//! passed it — and marks it [`ForwardAuth`]. It then goes through the same
//! stack as a proxied request (strip, authenticate, authorize, sign), and
//! [`ForwardAuthResponder`], in place of the reverse proxy, answers:
//!
//! | outcome | status | headers |
//! |---|---|---|
//! | allowed | `200` | the signed identity (`Hexon-*`, `Signature`, `Signature-Input`, or `Authorization` on JWT routes), `X-Auth-Client-ID`, `X-Auth-Client-Name`, `X-Auth-Route-ID` |
//! | no credential | `401` | `WWW-Authenticate` (a browser may get the login redirect instead) |
//! | invalid credential | `401` | `X-Auth-Reason: invalid_credential` |
//! | refused | `403` | `X-Auth-Reason: <code>` (`no_permission`, `method_not_permitted`, `no_route`, `denied_by_rule`, …) |
//! | missing headers | `400` | `X-Auth-Reason: missing_headers` |
//!
//! The proxy does not send the body, so HMAC-signed requests are checked
//! over an empty body here (existing API Gatekeeper clients sign bodyless
//! requests the same way); use Hexon as the proxy for body-covering
//! signatures.
//!
//! The client address for source-IP rules comes from `X-Original-Client-IP`,
//! else the last `X-Forwarded-For` entry, **only** when the TCP peer is a
//! trusted proxy; otherwise it is the peer itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::authz::AuthzOutcome;
use crate::body::{BoxBody, BoxError, full};
use crate::clients::HmacBody;
use crate::ext::{ConnectionInfo, MatchedRoute, RequestId};
use crate::proxy::TrustedProxies;
use crate::respond;

/// Request extension: this request is a forward-auth question, not one to
/// proxy.
#[derive(Clone, Copy, Debug)]
pub struct ForwardAuth;

/// The header carrying the reason of a refusal.
pub const X_AUTH_REASON: HeaderName = HeaderName::from_static("x-auth-reason");

const ORIGINAL_METHOD: [&str; 2] = ["x-original-method", "x-forwarded-method"];
const ORIGINAL_URI: [&str; 2] = ["x-original-uri", "x-forwarded-uri"];
const ORIGINAL_HOST: [&str; 2] = ["x-original-host", "x-forwarded-host"];

/// Answers forward-auth requests on `path`. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ForwardAuthLayer {
    path: Option<Arc<str>>,
    trusted: TrustedProxies,
}

impl ForwardAuthLayer {
    /// Serve forward-auth on `path` (e.g. `/authz`), any host.
    pub fn new(path: &str) -> Self {
        ForwardAuthLayer {
            path: Some(Arc::from(path)),
            trusted: TrustedProxies::none(),
        }
    }

    /// No forward-auth endpoint: every request passes through (the stack
    /// keeps one body type either way).
    pub fn off() -> Self {
        ForwardAuthLayer {
            path: None,
            trusted: TrustedProxies::none(),
        }
    }

    /// Take the client address from proxies `trusted` accepts.
    #[must_use]
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }
}

impl<S> Layer<S> for ForwardAuthLayer {
    type Service = ForwardAuthService<S>;
    fn layer(&self, inner: S) -> ForwardAuthService<S> {
        ForwardAuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`ForwardAuthLayer`].
#[derive(Clone, Debug)]
pub struct ForwardAuthService<S> {
    inner: S,
    layer: ForwardAuthLayer,
}

fn first<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| {
        let mut all = headers.get_all(*n).iter();
        let v = all.next()?;
        // Two values for the same question: ambiguous, treat as missing.
        if all.next().is_some() {
            return None;
        }
        v.to_str().ok().map(str::trim).filter(|v| !v.is_empty())
    })
}

/// The client address a trusted proxy reports.
fn client_ip(headers: &HeaderMap) -> Option<IpAddr> {
    if let Some(ip) = first(headers, &["x-original-client-ip"]) {
        return ip.parse().ok();
    }
    let xff = headers.get_all("x-forwarded-for").iter().next_back()?;
    xff.to_str()
        .ok()?
        .rsplit(',')
        .next()
        .and_then(|ip| ip.trim().parse().ok())
}

/// A `400` answer (boxed: responses are large).
type Refused = Box<Response<BoxBody>>;

/// Why a forward-auth question cannot be asked.
fn bad_request(id: Option<&RequestId>, headers: &HeaderMap, why: &'static str) -> Refused {
    let mut res = respond::error(StatusCode::BAD_REQUEST, id, respond::Flavor::of(headers));
    res.headers_mut()
        .insert(X_AUTH_REASON, HeaderValue::from_static("missing_headers"));
    tracing::info!(reason = why, "forward-auth request refused");
    Box::new(res)
}

/// Rewrite a forward-auth request into the request it asks about.
fn rewrite<B>(
    req: Request<B>,
    trusted: &TrustedProxies,
) -> Result<Request<Either<B, Full<Bytes>>>, Refused> {
    let (mut parts, _) = req.into_parts();
    let id = parts.extensions.get::<RequestId>();
    let Some(method) = first(&parts.headers, &ORIGINAL_METHOD) else {
        return Err(bad_request(
            id,
            &parts.headers,
            "no X-Original-Method / X-Forwarded-Method",
        ));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(bad_request(id, &parts.headers, "malformed original method"));
    };
    let Some(uri) = first(&parts.headers, &ORIGINAL_URI) else {
        return Err(bad_request(
            id,
            &parts.headers,
            "no X-Original-URI / X-Forwarded-Uri",
        ));
    };
    // Origin form only: an absolute URI here would bring its own authority.
    let uri = match uri.parse::<Uri>() {
        Ok(u) if u.scheme().is_none() && u.authority().is_none() && uri.starts_with('/') => u,
        _ => return Err(bad_request(id, &parts.headers, "malformed original URI")),
    };
    let host = first(&parts.headers, &ORIGINAL_HOST)
        .map(str::to_owned)
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host.and_then(|h| HeaderValue::from_str(&h).ok()) else {
        return Err(bad_request(id, &parts.headers, "no original host"));
    };
    if let Some(conn) = parts.extensions.get::<ConnectionInfo>().cloned() {
        if trusted.is_trusted(conn.peer.ip()) {
            if let Some(ip) = client_ip(&parts.headers) {
                let mut conn = conn;
                conn.peer = SocketAddr::new(ip, 0);
                parts.extensions.insert(conn);
            }
        }
    }
    for names in [ORIGINAL_METHOD, ORIGINAL_URI, ORIGINAL_HOST] {
        for n in names {
            parts.headers.remove(n);
        }
    }
    parts.headers.remove("x-original-client-ip");
    parts.headers.insert(HOST, host);
    parts.method = method;
    parts.uri = uri;
    parts.extensions.insert(ForwardAuth);
    // The proxy does not send the body: an HMAC signature is over none.
    parts.extensions.insert(HmacBody(Bytes::new()));
    Ok(Request::from_parts(
        parts,
        Either::Right(Full::new(Bytes::new())),
    ))
}

impl<S, B> Service<Request<B>> for ForwardAuthService<S>
where
    S: Service<Request<Either<B, Full<Bytes>>>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<BoxBody>, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.path.as_deref() != Some(req.uri().path()) {
            return Box::pin(self.inner.call(req.map(Either::Left)));
        }
        let req = match rewrite(req, &self.layer.trusted) {
            Ok(r) => r,
            Err(res) => return Box::pin(std::future::ready(Ok(*res))),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            // Refusals made by the stack: add the reason code.
            if res.status() != StatusCode::OK && !res.headers().contains_key(&X_AUTH_REASON) {
                let reason = res
                    .extensions()
                    .get::<AuthzOutcome>()
                    .map(|o| o.reason.as_str())
                    .or_else(|| {
                        (res.status() == StatusCode::UNAUTHORIZED).then_some("invalid_credential")
                    });
                if let Some(r) = reason {
                    res.headers_mut()
                        .insert(X_AUTH_REASON, HeaderValue::from_static(r));
                }
            }
            Ok(res)
        })
    }
}

/// In place of the reverse proxy: answers [`ForwardAuth`] requests with
/// `200` and the identity headers the stack put on them, and passes every
/// other request to `inner`.
#[derive(Clone, Debug)]
pub struct ForwardAuthResponder<S> {
    inner: S,
}

impl<S> ForwardAuthResponder<S> {
    /// Wrap the reverse proxy.
    pub fn new(inner: S) -> Self {
        ForwardAuthResponder { inner }
    }
}

/// Headers of the allowed request that go back to the proxy.
fn is_identity_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("hexon-")
        || n == "signature"
        || n == "signature-input"
        || n == "content-digest"
        || *name == AUTHORIZATION
}

impl<S, B> Service<Request<B>> for ForwardAuthResponder<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<BoxBody>, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.extensions().get::<ForwardAuth>().is_none() {
            return Box::pin(self.inner.call(req));
        }
        let mut res = Response::new(full(Bytes::new()));
        let h = res.headers_mut();
        for (name, value) in req.headers() {
            if is_identity_header(name) {
                h.append(name.clone(), value.clone());
            }
        }
        if let Some(identity) = req.extensions().get::<hexon_core::Identity>() {
            if let Ok(v) = HeaderValue::from_str(identity.subject()) {
                h.insert(HeaderName::from_static("x-auth-client-id"), v);
            }
            if let Ok(v) = HeaderValue::from_str(identity.username()) {
                h.insert(HeaderName::from_static("x-auth-client-name"), v);
            }
        }
        if let Some(route) = req.extensions().get::<MatchedRoute>() {
            if let Ok(v) = HeaderValue::from_str(route.name()) {
                h.insert(HeaderName::from_static("x-auth-route-id"), v);
            }
        }
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        Box::pin(std::future::ready(Ok(res)))
    }
}

/// For the fuzz targets only (not a stable API): `data` as header lines
/// (`name: value`), asked as a forward-auth question from a trusted peer.
#[doc(hidden)]
pub fn fuzz_question(data: &[u8]) {
    let mut b = Request::get("/authz");
    for line in data.split(|c| *c == b'\n') {
        let Some(at) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let (name, value) = line.split_at(at);
        let value = value.get(1..).unwrap_or_default();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            b = b.header(n, v);
        }
    }
    let Ok(mut req) = b.body(()) else { return };
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    req.extensions_mut()
        .insert(ConnectionInfo::plain(peer, peer));
    let _ = rewrite(req, &TrustedProxies::from_fn(|_| true));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .uri("/authz")
            .header("host", "auth.internal");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn rewrites_nginx_and_traefik_questions() {
        let r = rewrite(
            req(&[
                ("x-original-method", "POST"),
                ("x-original-uri", "/api/orders?id=7"),
                ("x-original-host", "api.example.com"),
                ("authorization", "ApiKey k"),
            ]),
            &TrustedProxies::none(),
        )
        .unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/api/orders?id=7");
        assert_eq!(r.headers()[HOST], "api.example.com");
        assert_eq!(r.headers()[AUTHORIZATION], "ApiKey k");
        assert!(!r.headers().contains_key("x-original-uri"));
        assert!(r.extensions().get::<ForwardAuth>().is_some());

        let r = rewrite(
            req(&[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/x"),
                ("x-forwarded-host", "app.example.com"),
            ]),
            &TrustedProxies::none(),
        )
        .unwrap();
        assert_eq!((r.method(), r.uri().path()), (&Method::GET, "/x"));
        assert_eq!(r.headers()[HOST], "app.example.com");
    }

    #[test]
    fn missing_or_hostile_headers_are_400() {
        for h in [
            vec![("x-original-uri", "/x")],
            vec![("x-original-method", "GET")],
            vec![
                ("x-original-method", "GET"),
                ("x-original-uri", "http://evil/x"),
            ],
            vec![("x-original-method", "GET"), ("x-original-uri", "x")],
            vec![("x-original-method", "G T"), ("x-original-uri", "/x")],
            vec![
                ("x-original-method", "GET"),
                ("x-original-method", "POST"),
                ("x-original-uri", "/x"),
            ],
        ] {
            let res = rewrite(req(&h), &TrustedProxies::none()).err().unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{h:?}");
            assert_eq!(res.headers()[X_AUTH_REASON], "missing_headers");
        }
    }

    #[test]
    fn client_address_only_from_trusted_proxies() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mk = || {
            let mut r = req(&[
                ("x-original-method", "GET"),
                ("x-original-uri", "/x"),
                ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
            ]);
            r.extensions_mut()
                .insert(ConnectionInfo::plain(peer, local));
            r
        };
        let untrusted = rewrite(mk(), &TrustedProxies::none()).unwrap();
        assert_eq!(
            untrusted
                .extensions()
                .get::<ConnectionInfo>()
                .unwrap()
                .peer
                .ip(),
            peer.ip()
        );
        let trusted = TrustedProxies::from_fn(|ip| ip == IpAddr::from([10, 0, 0, 5]));
        let r = rewrite(mk(), &trusted).unwrap();
        assert_eq!(
            r.extensions().get::<ConnectionInfo>().unwrap().peer.ip(),
            IpAddr::from([203, 0, 113, 9])
        );
    }
}
