//! The gateway's own credentials never reach an upstream.
//!
//! A bearer token or session cookie the gateway accepted proves the caller
//! to the gateway; forwarded, it would let any backend (or whoever reads its
//! logs) replay it at the gateway for every other route. After
//! authorization, this layer removes `Authorization: Bearer …` from
//! authenticated requests (an invalid one never gets this far: it is a 401),
//! likewise the API-client schemes `ApiKey …` and `HMAC …`, the API-key
//! header (always), and the gateway's session cookie from `Cookie`, keeping
//! other cookies.
//! Routes that need a token get one made for them (`identity = "jwt"`).

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
}

impl DropCredentialsLayer {
    /// Drop bearer tokens and the session cookie named `cookie`.
    pub fn new(cookie: &'static str) -> Self {
        DropCredentialsLayer {
            cookie,
            key_header: None,
        }
    }

    /// Also drop the header API clients send their key in.
    #[must_use]
    pub fn with_api_key_header(mut self, header: HeaderName) -> Self {
        self.key_header = Some(header);
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
        }
    }
}

/// Removes the gateway's credentials from requests before they are forwarded.
#[derive(Clone, Debug)]
pub struct DropCredentials<S> {
    inner: S,
    cookie: &'static str,
    key_header: Option<HeaderName>,
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
        drop_credentials(&mut req, self.cookie);
        self.inner.call(req)
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
    // Read cookies with the session authenticator's own parser, so whatever
    // it would accept as the session cookie is what is removed here.
    let mut kept: Vec<u8> = Vec::new();
    for line in headers.get_all(COOKIE) {
        for (name, value) in cookie_pairs(line.as_bytes()) {
            if name == cookie.as_bytes() {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(name);
            kept.push(b'=');
            kept.extend_from_slice(value);
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            headers.insert(COOKIE, v);
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
}
