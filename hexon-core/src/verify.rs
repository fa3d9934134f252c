//! The backend SDK: verify Hexon's signed identity in a tower / axum service.
//!
//! [`VerifyIdentityLayer`] checks the RFC 9421 signature the gateway put on
//! the request (see [`crate::httpsig`]) and rejects missing, expired,
//! foreign-key or tampered requests with `401 Unauthorized`. A verified
//! request carries the caller's [`Identity`](crate::Identity) and the full
//! [`VerifiedIdentity`](crate::httpsig::VerifiedIdentity) in its extensions. With the `axum` feature both are
//! extractors.
//!
//! ```no_run
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! use hexon_core::{Identity, KeySet};
//! use hexon_core::httpsig::Verifier;
//! use hexon_core::verify::VerifyIdentityLayer;
//!
//! # fn jwks() -> String { r#"{"keys":[]}"#.to_owned() }
//! let keys = KeySet::from_jwks_json(&jwks()).expect("valid JWKS");
//! let app: Router = Router::new()
//!     .route("/", get(|who: Identity| async move { format!("hello {}", who.username()) }))
//!     .layer(VerifyIdentityLayer::new(Verifier::new(keys, ["api.internal:8080"])));
//! # }
//! ```
//!
//! When the signature covers `content-digest`, the layer also checks the
//! body against it while it streams: on a mismatch the body yields an error
//! instead of its last data frame when its length is known (so a handler that
//! stops after `Content-Length` bytes still fails), and at its end otherwise.
//! A handler that reads a chunked body must read it to the end (every
//! buffering extractor does) before acting on it.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest as _, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use crate::httpsig::Verifier;
use crate::time::UnixTime;

/// Where the layer reads the time from. The default is the system clock.
pub type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// Tower layer that verifies Hexon's signed identity headers.
#[derive(Clone)]
pub struct VerifyIdentityLayer {
    verifier: Arc<Verifier>,
    clock: Clock,
}

impl fmt::Debug for VerifyIdentityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyIdentityLayer")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl VerifyIdentityLayer {
    /// Verify with `verifier`, reading the system clock.
    pub fn new(verifier: Verifier) -> Self {
        Self::from_shared(Arc::new(verifier))
    }

    /// Verify with a shared verifier (e.g. one whose keys another task rotates).
    pub fn from_shared(verifier: Arc<Verifier>) -> Self {
        VerifyIdentityLayer {
            verifier,
            clock: Arc::new(UnixTime::now),
        }
    }

    /// Use another clock (tests; a host with its own time source).
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl<S> Layer<S> for VerifyIdentityLayer {
    type Service = VerifyIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        VerifyIdentity {
            inner,
            verifier: self.verifier.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The service produced by [`VerifyIdentityLayer`].
#[derive(Clone)]
pub struct VerifyIdentity<S> {
    inner: S,
    verifier: Arc<Verifier>,
    clock: Clock,
}

impl<S: fmt::Debug> fmt::Debug for VerifyIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyIdentity")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> VerifyIdentity<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for VerifyIdentity<S>
where
    S: Service<Request<DigestCheckedBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let now = (self.clock)();
        let (mut parts, body) = req.into_parts();
        match self.verifier.verify_parts(&parts, now) {
            Ok(verified) => {
                let expected = verified.content_digest_sha256();
                tracing::debug!(
                    user = verified.identity.username(),
                    route = %verified.route,
                    key_id = %verified.key_id,
                    "hexon identity verified"
                );
                parts.extensions.insert(verified.identity.clone());
                parts.extensions.insert(verified);
                let body = DigestCheckedBody::new(body, expected);
                ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)))
            }
            Err(err) => {
                tracing::warn!(reason = %err, method = %parts.method, path = parts.uri.path(), "hexon identity rejected");
                ResponseFuture::unauthorized()
            }
        }
    }
}

fn unauthorized<ResBody: Default>() -> Response<ResBody> {
    // The reason goes to the log, not to the caller: the response is no oracle.
    let mut res = Response::new(ResBody::default());
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pin_project_lite::pin_project! {
    /// Future of [`VerifyIdentity`].
    pub struct ResponseFuture<F, ResBody> {
        #[pin]
        state: State<F, ResBody>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, ResBody> {
        Inner { #[pin] fut: F },
        Unauthorized { _body: std::marker::PhantomData<fn() -> ResBody> },
    }
}

impl<F, ResBody> ResponseFuture<F, ResBody> {
    fn inner(fut: F) -> Self {
        ResponseFuture {
            state: State::Inner { fut },
        }
    }
    fn unauthorized() -> Self {
        ResponseFuture {
            state: State::Unauthorized {
                _body: std::marker::PhantomData,
            },
        }
    }
}

impl<F, ResBody, E> std::future::Future for ResponseFuture<F, ResBody>
where
    F: std::future::Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Unauthorized { .. } => Poll::Ready(Ok(unauthorized())),
        }
    }
}

/// The request body doesn't match the signed `Content-Digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body does not match the signed Content-Digest")]
pub struct DigestMismatch;

/// Error of a [`DigestCheckedBody`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError<E> {
    /// The underlying body failed.
    #[error(transparent)]
    Inner(E),
    /// The body does not match the signed digest.
    #[error(transparent)]
    Digest(#[from] DigestMismatch),
}

pin_project_lite::pin_project! {
    /// A request body that, when the signature covered `content-digest`,
    /// hashes the body as it streams and fails at the end on a mismatch.
    /// Otherwise it passes the body through untouched.
    pub struct DigestCheckedBody<B> {
        #[pin]
        inner: B,
        check: Option<(Sha256, [u8; 32])>,
    }
}

impl<B> DigestCheckedBody<B> {
    fn new(inner: B, expected: Option<[u8; 32]>) -> Self {
        DigestCheckedBody {
            inner,
            check: expected.map(|e| (Sha256::new(), e)),
        }
    }

    /// The wrapped body (no digest check once unwrapped).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for DigestCheckedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestCheckedBody")
            .field("inner", &self.inner)
            .field("checked", &self.check.is_some())
            .finish()
    }
}

impl<B> Body for DigestCheckedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = BodyError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Inner(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some((hasher, _)), Some(data)) = (this.check.as_mut(), frame.data_ref()) {
                    hasher.update(data);
                }
                // When the inner body knows this was its last frame (a known
                // length), judge now and withhold the frame on a mismatch: a
                // consumer that stops after `Content-Length` bytes never
                // polls the end and would otherwise never see the error.
                if this.check.is_some() && this.inner.is_end_stream() {
                    if let Some((hasher, expected)) = this.check.take() {
                        if !digest_matches(hasher, &expected) {
                            return Poll::Ready(Some(Err(BodyError::Digest(DigestMismatch))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some((hasher, expected)) = this.check.take() {
                    if !digest_matches(hasher, &expected) {
                        return Poll::Ready(Some(Err(BodyError::Digest(DigestMismatch))));
                    }
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not at the end until the digest has been compared.
        self.check.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn digest_matches(hasher: Sha256, expected: &[u8; 32]) -> bool {
    let got: [u8; 32] = hasher.finalize().into();
    subtle::ConstantTimeEq::ct_eq(&got[..], &expected[..]).into()
}

#[cfg(feature = "axum")]
mod axum_impl {
    use axum::extract::FromRequestParts;
    use axum::response::{IntoResponse, Response};
    use http::StatusCode;
    use http::request::Parts;

    use crate::httpsig::VerifiedIdentity;
    use crate::identity::Identity;

    /// Rejection when no verified identity is on the request (the route is
    /// not behind [`super::VerifyIdentityLayer`], or verification failed).
    #[derive(Debug, Clone, Copy, thiserror::Error)]
    #[error("no verified Hexon identity on this request")]
    pub struct MissingIdentity;

    impl IntoResponse for MissingIdentity {
        fn into_response(self) -> Response {
            (StatusCode::UNAUTHORIZED, "no verified identity").into_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Identity {
        type Rejection = MissingIdentity;
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Identity>()
                .cloned()
                .ok_or(MissingIdentity)
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for VerifiedIdentity {
        type Rejection = MissingIdentity;
        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<VerifiedIdentity>()
                .cloned()
                .ok_or(MissingIdentity)
        }
    }
}

#[cfg(feature = "axum")]
pub use axum_impl::MissingIdentity;
