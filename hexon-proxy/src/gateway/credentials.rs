//! The gateway's own credentials never reach an upstream.
//!
//! A bearer token or session cookie the gateway accepted proves the caller
//! to the gateway; forwarded, it would let any backend (or whoever reads its
//! logs) replay it at the gateway for every other route. After
//! authorization, this layer removes `Authorization: Bearer …` from
//! authenticated requests (an invalid one never gets this far: it is a 401),
//! likewise the API-client schemes `ApiKey …` and `HMAC …`, the API-key
//! header and query parameter (always), and the gateway's session cookie
//! from `Cookie`, keeping other cookies and query parameters.
//! Routes that need a token get one made for them (`identity = "jwt"`).

use std::sync::Arc;
use std::task::{Context, Poll};

use hexon_core::Identity;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::authn::cookie_pairs;

/// Layer of [`DropCredentials`].
#[derive(Clone, Debug)]
pub struct DropCredentialsLayer {
    cookie: &'static str,
    key_header: Option<HeaderName>,
    key_param: Option<Arc<str>>,
}

impl DropCredentialsLayer {
    /// Drop bearer tokens and the session cookie named `cookie`.
    pub fn new(cookie: &'static str) -> Self {
        DropCredentialsLayer {
            cookie,
            key_header: None,
            key_param: None,
        }
    }

    /// Also drop the header API clients send their key in.
    #[must_use]
    pub fn with_api_key_header(mut self, header: HeaderName) -> Self {
        self.key_header = Some(header);
        self
    }

    /// Also drop the query parameter API clients may send their key in.
    #[must_use]
    pub fn with_api_key_param(mut self, name: &str) -> Self {
        self.key_param = Some(Arc::from(name));
        self
    }
}

impl<S> Layer<S> for DropCredentialsLayer {
    type Service = DropCredentials<S>;
    fn layer(&self, inner: S) -> DropCredentials<S> {
        DropCredentials {
            inner,
            cookie: self.cookie,
            key_header: self.key_header.clone(),
            key_param: self.key_param.clone(),
        }
    }
}

/// Removes the gateway's credentials from requests before they are forwarded.
#[derive(Clone, Debug)]
pub struct DropCredentials<S> {
    inner: S,
    cookie: &'static str,
    key_header: Option<HeaderName>,
    key_param: Option<Arc<str>>,
}

impl<S, B> Service<Request<B>> for DropCredentials<S>
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
        if let Some(h) = &self.key_header {
            req.headers_mut().remove(h);
        }
        // At the forward-auth endpoint the URI is the proxy's question: the
        // proxy forwards the original URL itself, so the signed `@query`
        // must stay what the upstream will see (the proxy has to remove the
        // key; docs/API-CLIENTS.md).
        let question = req
            .extensions()
            .get::<crate::forward_auth::ForwardAuth>()
            .is_some();
        if let (Some(p), false) = (&self.key_param, question) {
            drop_query_param(&mut req, p);
        }
        drop_credentials(&mut req, self.cookie);
        self.inner.call(req)
    }
}

/// Remove every `name=…` pair from the request's query, keeping the other
/// pairs byte for byte and in order.
fn drop_query_param<B>(req: &mut Request<B>, name: &str) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let is_key = |pair: &&str| pair.split_once('=').map_or(*pair, |(n, _)| n) == name;
    if !query.split('&').any(|p| is_key(&p)) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_key(p)).collect();
    let mut pq = req.uri().path().to_owned();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = req.uri().clone().into_parts();
    // The path and the remaining pairs were a valid URI a moment ago.
    parts.path_and_query = pq.parse().ok();
    match http::Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        // Cannot happen; never forward the key if it did.
        Err(_) => *req.uri_mut() = http::Uri::from_static("/"),
    }
}

fn drop_credentials<B>(req: &mut Request<B>, cookie: &str) {
    let authenticated = req.extensions().get::<Identity>().is_some();
    let headers = req.headers_mut();
    // `ApiKey` and `HMAC` are the gateway's own schemes: never forwarded,
    // authenticated or not. `Bearer` only when the gateway authenticated
    // the request (an anonymous public route may pass another bearer on).
    let ours = headers.get_all(AUTHORIZATION).iter().any(|v| {
        let scheme = v
            .as_bytes()
            .split(|b| *b == b' ')
            .next()
            .unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"apikey")
            || scheme.eq_ignore_ascii_case(b"hmac")
            || (authenticated && scheme.eq_ignore_ascii_case(b"bearer"))
    });
    if ours {
        headers.remove(AUTHORIZATION);
    }
    if !headers.contains_key(COOKIE) {
        return;
    }
    let mut kept: Vec<u8> = Vec::new();
    kept_cookies(
        headers.get_all(COOKIE).iter().map(HeaderValue::as_bytes),
        cookie,
        &mut kept,
    );
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(COOKIE, v);
        }
    }
}

/// The one `Cookie` value forwarded for a request's `Cookie` field values
/// (`lines`), appended to `out`: every `name=value` pair but the session
/// cookie `cookie`, in order, joined by `; ` (nothing when none is left).
/// Cookies are read with the session authenticator's own parser, so
/// whatever it would accept as the session cookie is what is removed. The
/// stack and the express lane both forward this.
pub(crate) fn kept_cookies<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
    cookie: &str,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    for line in lines {
        for (name, value) in cookie_pairs(line) {
            if name == cookie.as_bytes() {
                continue;
            }
            if out.len() > start {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(name);
            out.push(b'=');
            out.extend_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_session_cookie_are_dropped_other_cookies_kept() {
        let mut req = Request::get("/")
            .header("authorization", "Bearer abc")
            .header("cookie", "a=1; __Host-hexon-session=secret; b=2")
            .header("cookie", "__Host-hexon-session =other")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(Identity::builder("s", "u").build().unwrap());
        drop_credentials(&mut req, "__Host-hexon-session");
        assert!(req.headers().get("authorization").is_none());
        for scheme in ["ApiKey hxk_x", "HMAC client_id=\"a\"", "bearer x"] {
            let mut r = Request::get("/")
                .header("authorization", scheme)
                .body(())
                .unwrap();
            r.extensions_mut()
                .insert(Identity::builder("s", "u").build().unwrap());
            drop_credentials(&mut r, "c");
            assert!(r.headers().get("authorization").is_none(), "{scheme}");
        }
        assert_eq!(
            req.headers().get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );

        // Anonymous requests keep Authorization (other schemes, public routes).
        let mut req = Request::get("/")
            .header("authorization", "Basic eDp5")
            .body(())
            .unwrap();
        drop_credentials(&mut req, "__Host-hexon-session");
        assert!(req.headers().get("authorization").is_some());
        // ...but never the gateway's own schemes.
        let mut req = Request::get("/")
            .header("authorization", "apikey hxk_x")
            .body(())
            .unwrap();
        drop_credentials(&mut req, "c");
        assert!(req.headers().get("authorization").is_none());
        let mut req = Request::get("/")
            .header("cookie", "__Host-hexon-session=x")
            .body(())
            .unwrap();
        drop_credentials(&mut req, "__Host-hexon-session");
        assert!(req.headers().get("cookie").is_none());
    }

    #[test]
    fn api_key_query_parameter_is_dropped_other_pairs_kept() {
        let cases = [
            ("/a?api_key=hxk_1&x=%2F&api_key=2&y", "/a?x=%2F&y"),
            ("/a?api_key=hxk_1", "/a"),
            ("/a?api_key", "/a"),
            (
                "/a?x=1&api_keyx=2&xapi_key=3",
                "/a?x=1&api_keyx=2&xapi_key=3",
            ),
            ("/a", "/a"),
            (
                "http://h.example:8080/a?q=1&api_key=k",
                "http://h.example:8080/a?q=1",
            ),
        ];
        for (from, to) in cases {
            let mut req = Request::get(from).body(()).unwrap();
            drop_query_param(&mut req, "api_key");
            assert_eq!(req.uri().to_string(), to, "{from}");
        }
    }
}
