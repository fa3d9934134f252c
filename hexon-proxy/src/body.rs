//! The body and error types shared by every layer.
//!
//! Requests flow with whatever body the server gives them (generic `B`);
//! responses are [`BoxBody`], so a layer can answer on its own (401, 403,
//! 502) or pass the upstream's streaming body through unchanged.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};

/// A boxed error that crosses layer boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every Hexon service: streaming, `Send`, boxed.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> BoxBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Box any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// The future of a layer that finishes a request in an `async` block (the
/// authenticate and sign-identity layers): boxed, `Send`, answering a
/// [`BoxBody`] response.
pub struct BoxResponseFuture<E> {
    pub(crate) inner: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<http::Response<BoxBody>, E>> + Send>,
    >,
}

impl<E> BoxResponseFuture<E> {
    /// Box `fut`.
    pub(crate) fn new(
        fut: impl std::future::Future<Output = Result<http::Response<BoxBody>, E>> + Send + 'static,
    ) -> Self {
        BoxResponseFuture {
            inner: Box::pin(fut),
        }
    }
}

/// The future of a layer that answers some requests itself and passes the
/// rest on: the inner service's future as it is (no allocation on the
/// common path, which runs for every request), or the layer's own work,
/// boxed. Built with `pass`, `own` and `answer`.
pub type PassOrOwn<F, E> = futures_util::future::Either<F, BoxResponseFuture<E>>;

/// Pass the request on: `fut` is the inner service's future.
pub(crate) fn pass<F, E>(fut: F) -> PassOrOwn<F, E> {
    futures_util::future::Either::Left(fut)
}

/// Answer with `fut`.
pub(crate) fn own<F, E>(
    fut: impl std::future::Future<Output = Result<http::Response<BoxBody>, E>> + Send + 'static,
) -> PassOrOwn<F, E> {
    futures_util::future::Either::Right(BoxResponseFuture::new(fut))
}

/// Answer with `res` at once.
pub(crate) fn answer<F, E: Send + 'static>(res: http::Response<BoxBody>) -> PassOrOwn<F, E> {
    own(std::future::ready(Ok(res)))
}

/// The service that was polled ready, to call from an `async` block; a
/// clone takes its place for the next request (tower's rule for services
/// used across `poll_ready` and `call`).
pub(crate) fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

impl<E> std::fmt::Debug for BoxResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxResponseFuture").finish_non_exhaustive()
    }
}

impl<E> std::future::Future for BoxResponseFuture<E> {
    type Output = Result<http::Response<BoxBody>, E>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The body of a request as a [`Listener`](crate::listener::Listener) hands
/// it to the service: hyper's streaming body, or none — a request head
/// read by the listener's own HTTP/1.1 reader, which takes only requests
/// that cannot have a body (no `Content-Length`, no `Transfer-Encoding`).
#[derive(Debug)]
pub enum RequestBody {
    /// A request hyper read (HTTP/2, or HTTP/1 the own reader handed over).
    Hyper(hyper::body::Incoming),
    /// No body.
    Empty,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => std::pin::Pin::new(b).poll_frame(cx),
            RequestBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}
