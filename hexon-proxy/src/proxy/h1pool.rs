//! Kept-alive HTTP/1.1 connections to one plain `http://` upstream, a stack
//! of idle ones per connection thread.
//!
//! Why not hyper-util's pooled client for these: on the proxy's hot path
//! its checkout and return cost about 12,000 instructions per request
//! on the calling side (docs/BENCHMARKS.md, "2026-12-05: a connection stack
//! per thread"; this stack saves 8,500–9,500 of them) — the
//! pool key hashed with SipHash three times, a `Pooled` guard, a lazy
//! connect future, and futures moved through several layers. A pool that
//! only ever holds connections to one upstream, used from one thread,
//! needs a stack of idle senders and nothing else. hyper's
//! `client::conn::http1` still speaks the protocol; TLS, HTTP/2 and
//! upgrades stay on hyper-util's client ([`super::client`]).
//!
//! A connection goes back on its thread's stack when the response body
//! has been read to its end (at once for a response without a body) and
//! the request body has been sent whole; one whose upload is still going
//! (an upstream that answered early) is not kept, so no request waits
//! behind another's upload. A body dropped early takes its connection
//! with it, as hyper closes it.
//! An idle connection older than the pool's idle timeout, or one the
//! upstream closed, is dropped when found, and a task on the thread
//! closes idle connections past the timeout while the stack is not empty;
//! a request that could not be written on a reused connection is sent
//! again on another.
//!
//! An upstream may also close an idle connection just as a request is
//! written on it (its keep-alive timeout: 5 s in Node.js, uvicorn and
//! Apache httpd, 2 s in gunicorn; or a restart). The request then meets a
//! closed connection and no answer. One that may be sent twice
//! ([`super::resend`]) on a connection idle for at least
//! [`RESEND_AFTER_IDLE`] is sent once more, on a new connection, as nginx
//! does; anything else is a `502`. Only those requests are copied before
//! they are sent: a connection reused within microseconds under load, the
//! common case, costs no copy.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::client::{Connector, PoolConfig, UpstreamBody};
use super::resend;
use super::stacks::{Kept, ThreadStacks};
use crate::body::BoxError;
use http_body_util::BodyExt as _;

type Sender = SendRequest<UpstreamBody>;

/// How long a kept connection to an `http://` upstream must have been idle
/// for an idempotent request without a body to be sent again, on a new
/// connection, if the upstream closes the connection under it before
/// answering. Upstreams close idle connections after a second or more; one
/// idle for less is not closed by a keep-alive timeout, and a request on it
/// is not copied (the copy would cost every request under load).
pub const RESEND_AFTER_IDLE: Duration = Duration::from_millis(100);

/// The pool of one upstream.
pub(crate) struct H1Pool {
    connector: Connector,
    dst: Uri,
    stacks: Arc<ThreadStacks<Sender>>,
}

impl Kept for Sender {
    fn usable(&mut self) -> bool {
        !self.is_closed()
    }

    fn closed(&self) -> bool {
        self.is_closed()
    }
}

impl H1Pool {
    pub(crate) fn new(connector: Connector, dst: Uri, pool: &PoolConfig) -> Self {
        H1Pool {
            connector,
            dst,
            stacks: ThreadStacks::new(pool),
        }
    }

    async fn connect(&self) -> Result<Sender, BoxError> {
        let io = super::client::dial(&self.connector, &self.dst).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await?;
        // On this thread's runtime: a request never waits on another thread.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    /// Send `req` (an origin-form request with its `Host` set) on a kept
    /// connection or a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, BoxError> {
        // A request with a body: whether it was sent whole decides whether
        // the connection can be kept (bodiless requests skip the flag).
        let uploaded = if req.body().is_end_stream() {
            None
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            req = req.map(|body| {
                UploadBody {
                    inner: body,
                    done: Arc::clone(&flag),
                }
                .boxed_unsync()
            });
            Some(flag)
        };
        // After a resend, only a new connection: the upstream may have
        // closed the others too (a restart).
        let mut fresh_only = false;
        loop {
            let kept = if fresh_only { None } else { self.stacks.take() };
            let (mut tx, idle) = match kept {
                Some((tx, idle)) => (tx, Some(idle)),
                None => (self.connect().await?, None),
            };
            let reused = idle.is_some();
            // A reused connection finishing its previous response, or
            // closed by the upstream meanwhile.
            if let Err(e) = tx.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            let copy = match idle {
                Some(idle) if idle >= RESEND_AFTER_IDLE => resend::copy_if_resendable(&req),
                _ => None,
            };
            match tx.try_send_request(req).await {
                Ok(res) => {
                    let (parts, body) = res.into_parts();
                    let back = Back {
                        tx,
                        pool: Arc::clone(self),
                        uploaded: uploaded.clone(),
                    };
                    let body = PooledBody::new(body, Some(back));
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match (e.take_message(), copy) {
                    // Not written: the connection was gone. Once more on
                    // another; a new connection's failure is final.
                    (Some(r), _) if reused => req = r,
                    // Written, and the upstream closed the connection
                    // without an answer: once more on a new connection.
                    (None, Some(copy)) if resend::closed_under(e.error()) => {
                        tracing::debug!(error = %e.error(), "upstream closed an idle connection under a request; sending it again on a new one");
                        req = *copy;
                        fresh_only = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

/// `uri` as a request target on an HTTP/1.1 connection: path and query.
pub(crate) fn origin_form(uri: &mut Uri) {
    *uri = match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
}

pin_project_lite::pin_project! {
    /// A request body that records when it has been sent whole.
    struct UploadBody {
        #[pin]
        inner: UpstreamBody,
        done: Arc<AtomicBool>,
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if frame.is_none()
            || (frame.as_ref().is_some_and(|f| f.is_ok()) && this.inner.is_end_stream())
        {
            this.done.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A kept connection on its way back to its pool.
pub(crate) struct Back {
    tx: Sender,
    pool: Arc<H1Pool>,
    /// For a request with a body: set once it was sent whole.
    uploaded: Option<Arc<AtomicBool>>,
}

impl Back {
    fn give(self) {
        if self
            .uploaded
            .as_ref()
            .is_none_or(|done| done.load(Ordering::Acquire))
        {
            self.pool.stacks.give(self.tx);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from an upstream; a pooled connection goes back to
    /// its pool when the body has been read to its end.
    pub(crate) struct PooledBody {
        #[pin]
        inner: Incoming,
        back: Option<Back>,
    }
}

impl PooledBody {
    /// `back`: the connection and its pool, `None` for a body from
    /// hyper-util's client (which returns its own connections).
    pub(crate) fn new(inner: Incoming, mut back: Option<Back>) -> Self {
        // No body to read (HEAD, 204, 304, empty): nobody may poll it.
        if inner.is_end_stream() {
            if let Some(back) = back.take() {
                back.give();
            }
        }
        PooledBody { inner, back }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let done = match &frame {
            None => true,
            // Trailers end a chunked body (servers stop polling after them).
            Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
            Some(Err(_)) => {
                // A broken connection is not reused.
                this.back.take();
                false
            }
        };
        if done {
            if let Some(back) = this.back.take() {
                back.give();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
