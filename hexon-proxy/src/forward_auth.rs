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
use crate::clients::SignedBody;
use crate::ext::{ConnectionInfo, MatchedRoute, RequestId};
use crate::proxy::TrustedProxies;
use crate::respond;

/// Request extension: this request is a forward-auth question, not one to
/// proxy.
#[derive(Clone, Copy, Debug)]
pub struct ForwardAuth;

/// Response extension: the answer came from [`ForwardAuthResponder`]; only
/// a `200` carrying it is an authorization.
#[derive(Clone, Copy, Debug)]
struct Answered;

/// The header carrying the reason of a refusal.
pub const X_AUTH_REASON: HeaderName = HeaderName::from_static("x-auth-reason");

/// nginx `auth_request`: the configuration sets these (`proxy_set_header`
/// replaces whatever the client sent under the same name).
const NGINX: Family = Family {
    method: "x-original-method",
    uri: "x-original-uri",
    host: "x-original-host",
};
/// Traefik `forwardAuth`, Caddy `forward_auth`: the proxy sets these.
const FORWARDED: Family = Family {
    method: "x-forwarded-method",
    uri: "x-forwarded-uri",
    host: "x-forwarded-host",
};

/// The header names one kind of proxy asks with.
#[derive(Clone, Copy)]
struct Family {
    method: &'static str,
    uri: &'static str,
    host: &'static str,
}

impl Family {
    fn present(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(self.method) || headers.contains_key(self.uri)
    }
}

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

/// The one value of `name`, trimmed; none (also when it appears twice:
/// two answers to one question are ambiguous).
fn first<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok().map(str::trim).filter(|v| !v.is_empty())
}

/// The client address a trusted proxy reports: nginx sets
/// `X-Original-Client-IP` (the documented configuration sets it from
/// `$remote_addr`, replacing anything the client sent); Traefik and Caddy
/// append the address they saw to `X-Forwarded-For`, so only its last
/// entry is theirs. Never the other family's header: a client could have
/// sent it.
pub(crate) fn client_ip(headers: &HeaderMap, nginx: bool) -> Option<IpAddr> {
    if nginx {
        return first(headers, "x-original-client-ip")?.parse().ok();
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
    // Which proxy asks decides which headers are its: with both kinds on
    // the request, one was sent by the client through the proxy (nginx and
    // Traefik pass client headers on), and the question is ambiguous.
    let family = match (
        NGINX.present(&parts.headers),
        FORWARDED.present(&parts.headers),
    ) {
        (true, true) => {
            return Err(bad_request(
                id,
                &parts.headers,
                "both X-Original-* and X-Forwarded-Method/-Uri: ambiguous question",
            ));
        }
        (false, true) => FORWARDED,
        _ => NGINX,
    };
    let nginx = family.method == NGINX.method;
    let Some(method) = first(&parts.headers, family.method) else {
        return Err(bad_request(
            id,
            &parts.headers,
            "no X-Original-Method / X-Forwarded-Method",
        ));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(bad_request(id, &parts.headers, "malformed original method"));
    };
    let Some(uri) = first(&parts.headers, family.uri) else {
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
    let host = first(&parts.headers, family.host)
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
            if let Some(ip) = client_ip(&parts.headers, nginx) {
                let mut conn = conn;
                conn.peer = SocketAddr::new(ip, 0);
                parts.extensions.insert(conn);
            }
        }
    }
    for f in [NGINX, FORWARDED] {
        for n in [f.method, f.uri, f.host] {
            parts.headers.remove(n);
        }
    }
    parts.headers.remove("x-original-client-ip");
    parts.headers.insert(HOST, host);
    parts.method = method;
    parts.uri = uri;
    parts.extensions.insert(ForwardAuth);
    // The proxy does not send the body: an HMAC signature is over none.
    parts.extensions.insert(SignedBody(Bytes::new()));
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
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.path.as_deref() != Some(req.uri().path()) {
            return crate::body::pass(self.inner.call(req.map(Either::Left)));
        }
        // Only the proxies may ask: the answer carries signed identity
        // headers (and, on JWT routes, the token minted for the backend).
        let peer = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|c| c.tcp_peer.ip());
        if !peer.is_some_and(|ip| self.layer.trusted.is_trusted(ip)) {
            let id = req.extensions().get::<RequestId>();
            let mut res = respond::error(
                StatusCode::FORBIDDEN,
                id,
                respond::Flavor::of(req.headers()),
            );
            res.headers_mut()
                .insert(X_AUTH_REASON, HeaderValue::from_static("untrusted_peer"));
            tracing::warn!(
                ?peer,
                "forward-auth question from a peer not in gateway.trusted_proxies refused"
            );
            return crate::body::answer(res);
        }
        let req = match rewrite(req, &self.layer.trusted) {
            Ok(r) => r,
            Err(res) => return crate::body::answer(*res),
        };
        let fut = self.inner.call(req);
        crate::body::own(async move {
            let mut res = fut.await?;
            // Allowed means answered by the responder after the whole
            // stack; a 200 from anything before it (the JWKS document, say)
            // is not an authorization.
            let answered = res.extensions().get::<Answered>().is_some();
            if res.status() == StatusCode::OK && !answered {
                let mut refused =
                    respond::error(StatusCode::FORBIDDEN, None, respond::Flavor::Json);
                refused
                    .headers_mut()
                    .insert(X_AUTH_REASON, HeaderValue::from_static("no_route"));
                res = refused;
            }
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
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.extensions().get::<ForwardAuth>().is_none() {
            return crate::body::pass(self.inner.call(req));
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
        res.extensions_mut().insert(Answered);
        crate::body::answer(res)
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
            // A client's X-Original-URI through Traefik, or its
            // X-Forwarded-Uri through nginx: ambiguous, refused.
            vec![
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/admin"),
                ("x-original-uri", "/public"),
            ],
        ] {
            let res = rewrite(req(&h), &TrustedProxies::none()).err().unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{h:?}");
            assert_eq!(res.headers()[X_AUTH_REASON], "missing_headers");
        }
    }

    #[test]
    fn client_address_only_from_trusted_proxies_and_their_own_header() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mk = |h: &[(&str, &str)]| {
            let mut r = req(h);
            r.extensions_mut()
                .insert(ConnectionInfo::plain(peer, local));
            r
        };
        let ip = |r: &Request<Either<(), Full<Bytes>>>| {
            r.extensions().get::<ConnectionInfo>().unwrap().peer.ip()
        };
        let traefik = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/x"),
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
            // Sent by the client through Traefik: not Traefik's header.
            ("x-original-client-ip", "192.0.2.66"),
        ];
        let nginx = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/x"),
            ("x-original-client-ip", "203.0.113.7"),
            // Passed on from the client by nginx: not nginx's statement.
            ("x-forwarded-for", "192.0.2.66"),
        ];
        let untrusted = rewrite(mk(&traefik), &TrustedProxies::none()).unwrap();
        assert_eq!(ip(&untrusted), peer.ip());
        let trusted = TrustedProxies::from_fn(|ip| ip == IpAddr::from([10, 0, 0, 5]));
        let r = rewrite(mk(&traefik), &trusted).unwrap();
        assert_eq!(ip(&r), IpAddr::from([203, 0, 113, 9]));
        let r = rewrite(mk(&nginx), &trusted).unwrap();
        assert_eq!(ip(&r), IpAddr::from([203, 0, 113, 7]));
        let r = rewrite(mk(&nginx[..2]), &trusted).unwrap();
        assert_eq!(
            ip(&r),
            peer.ip(),
            "nginx without X-Original-Client-IP: the peer"
        );
    }

    #[tokio::test]
    async fn only_trusted_peers_may_ask_and_only_the_responder_allows() {
        use tower::ServiceExt as _;
        let inner = tower::service_fn(|_req: Request<Either<(), Full<Bytes>>>| async {
            // A 200 that is not the responder's (like the JWKS document).
            Ok::<_, std::convert::Infallible>(Response::new(full(Bytes::new())))
        });
        let trusted = TrustedProxies::from_fn(|ip| ip == IpAddr::from([10, 0, 0, 5]));
        let svc = ForwardAuthLayer::new("/authz")
            .with_trusted_proxies(trusted)
            .layer(inner);
        let ask = |peer: &str| {
            let mut r = req(&[("x-original-method", "GET"), ("x-original-uri", "/x")]);
            r.extensions_mut().insert(ConnectionInfo::plain(
                peer.parse().unwrap(),
                "10.0.0.1:80".parse().unwrap(),
            ));
            r
        };
        let res = svc.clone().oneshot(ask("192.0.2.1:5")).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(res.headers()[X_AUTH_REASON], "untrusted_peer");
        let res = svc.clone().oneshot(ask("10.0.0.5:5")).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::FORBIDDEN,
            "an unmarked 200 is not an allow"
        );
        assert_eq!(res.headers()[X_AUTH_REASON], "no_route");
    }
}
