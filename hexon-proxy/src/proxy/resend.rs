//! Sending a request once more when the upstream closed its connection
//! under it: an upstream's keep-alive timeout (often 2–5 s) or a restart
//! closes an idle kept connection just as a request is written on it, and
//! the request meets a closed connection and no answer. Only a request
//! that may be sent twice is (RFC 9110 §9.2.2, as nginx does); it is copied
//! before it is sent, since sending consumes it. [`super::h1pool`] copies
//! only on connections idle long enough to have met a keep-alive timeout;
//! hyper-util's client (TLS, h2c) does not say, so every such request is.
//! Upgrade requests are not sent again: the proxy splices the connection
//! they ask for to the client's.

use bytes::Bytes;
use http::{Method, Request};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::client::UpstreamBody;

/// A copy of `req` to send again, if it may be: an idempotent method
/// (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and no body. Boxed:
/// the copy is rare, and the size of the futures holding it is paid at
/// every move. The proxy builds upstream requests without extensions, so
/// there are none to copy.
pub(crate) fn copy_if_resendable(
    req: &Request<UpstreamBody>,
) -> Option<Box<Request<UpstreamBody>>> {
    let idempotent = [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(req.method());
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
    let mut copy = Request::new(empty.boxed_unsync());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(Box::new(copy))
}

/// The upstream closed the connection (or reset it) before any answer:
/// hyper's "incomplete message", or a reset, abort, broken pipe or (TLS
/// closed without `close_notify`) unexpected end anywhere in the error's
/// chain (hyper-util's client wraps hyper's error).
pub(crate) fn closed_under(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                )
            })
        {
            return true;
        }
        next = e.source();
    }
    false
}
