//! The http-01 side of the listeners' ACME client: key authorizations on
//! offer and the layer that serves them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{BoxBody, full};

/// The http-01 key authorizations being offered, by token.
#[derive(Clone, Debug, Default)]
pub struct Http01Tokens {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl Http01Tokens {
    /// Offer `key_authorization` for `token` (until [`Http01Tokens::remove`]).
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Withdraw `token`.
    pub fn remove(&self, token: &str) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// The key authorization for `token`, while its challenge is open.
    pub fn get(&self, token: &str) -> Option<String> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }
}

/// Path prefix of http-01 challenges.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers `GET /.well-known/acme-challenge/<token>` for open challenges;
/// everything else goes to the inner service (unknown tokens too, so a
/// backend's own ACME client behind the gateway keeps working). Add it only
/// where http-01 is answered (e.g. with `ServiceBuilder::option_layer`):
/// it boxes the inner future.
#[derive(Clone, Debug)]
pub struct Http01Layer {
    tokens: Http01Tokens,
}

impl Http01Layer {
    /// Answer for `tokens`.
    pub fn new(tokens: Http01Tokens) -> Self {
        Http01Layer { tokens }
    }
}

impl<S> Layer<S> for Http01Layer {
    type Service = Http01<S>;
    fn layer(&self, inner: S) -> Http01<S> {
        Http01 {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service of [`Http01Layer`].
#[derive(Clone, Debug)]
pub struct Http01<S> {
    inner: S,
    tokens: Http01Tokens,
}

impl<S, B> Service<Request<B>> for Http01<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<BoxBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            if let Some(answer) = req
                .uri()
                .path()
                .strip_prefix(HTTP01_PREFIX)
                .and_then(|token| self.tokens.get(token))
            {
                let mut res = Response::new(full(Bytes::from(answer)));
                *res.status_mut() = StatusCode::OK;
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/octet-stream"),
                );
                return Box::pin(std::future::ready(Ok(res)));
            }
        }
        Box::pin(self.inner.call(req))
    }
}
