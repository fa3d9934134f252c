//! One request, one authority.
//!
//! HTTP/1.1 allows an absolute-form target (`GET http://a.example/ HTTP/1.1`)
//! next to a `Host` header, and HTTP/2 a `host` header next to `:authority`.
//! If they disagree, the policy (which matches the URI authority first), the
//! proxy (which forwards `Host`), the signature and the audit log could each
//! see a different host — a way to reach another virtual host through a
//! public route. RFC 9112 §3.2 and RFC 9113 §8.3.1 make such requests
//! invalid; so does the gateway: 400, before anything reads them. Requests
//! with several `Host` headers, or none at all, are refused the same way.

use std::task::{Context, Poll};

use hexon_core::httpsig::authority_of;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{BoxBody, PassOrOwn};
use crate::ext::RequestId;
use crate::respond;

/// Layer of [`SingleAuthority`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleAuthorityLayer;

impl<S> Layer<S> for SingleAuthorityLayer {
    type Service = SingleAuthority<S>;
    fn layer(&self, inner: S) -> SingleAuthority<S> {
        SingleAuthority { inner }
    }
}

/// Refuses requests whose authority is missing, repeated or ambiguous.
#[derive(Clone, Debug)]
pub struct SingleAuthority<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for SingleAuthority<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The same rule the signature uses (`httpsig::authority`): one
        // consistent authority, or none.
        match authority_of(req.uri(), req.headers()) {
            Some(_) => crate::body::pass(self.inner.call(req)),
            None => {
                let id = req.extensions().get::<RequestId>();
                tracing::info!(
                    request_id = id.map(RequestId::as_str),
                    "no single, consistent authority (absolute URI vs Host, or no / several Host)"
                );
                let res = respond::error(
                    StatusCode::BAD_REQUEST,
                    id,
                    respond::Flavor::of(req.headers()),
                );
                crate::body::answer(res)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::get(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn one_authority_or_400() {
        let ok = |r: Request<()>| authority_of(r.uri(), r.headers()).is_some();
        assert!(ok(req("/x", &["a.example"])));
        assert!(ok(req("http://a.example/x", &[])));
        assert!(ok(req("http://A.example:80/x", &["a.example"])));
        assert!(ok(req("https://a.example/x", &["a.example:443"])));
        assert!(!ok(req("http://www.example/x", &["admin.example"])));
        assert!(!ok(req("/x", &["a.example", "b.example"])));
        assert!(!ok(req("/x", &[])));
    }
}
