//! The listener's own HTTP/1.1 reader and writer, for requests that cannot
//! have a body.
//!
//! hyper's server is a general machine: a dispatcher per connection, its own
//! buffers, a message head converted field by field, a body channel for
//! every request. For the request most traffic through a gateway is — an
//! HTTP/1.1 `GET` with a few headers and no body — that machinery is a
//! large share of the work per request (docs/BENCHMARKS.md). This loop
//! reads such heads itself (httparse, the parser hyper uses), builds the
//! same `http::Request` hyper would, calls the same tower service, and
//! writes the response itself.
//!
//! It takes only what it can serve exactly; everything else goes to hyper
//! **with the bytes read so far**, and hyper serves the connection from
//! then on (with the smuggling observer in front of it). Handed over:
//! a head that does not parse or is larger than the listener allows, more
//! header fields than [`MAX_FIELDS`], HTTP/1.0, `CONNECT`, a target not in
//! origin form, and any request with `Content-Length`, `Transfer-Encoding`,
//! `Expect`, `Upgrade` or `TE` (bodies, `100-continue`, upgrades, trailers).
//! So every refusal of a malformed request, every body framing decision and
//! every smuggling check stays where it was: in hyper and the observer.
//!
//! With an express lane ([`crate::express`]), each head taken is first
//! offered to it, as bytes: a request it plans is forwarded from here (the
//! upstream exchange in this task, the answer's head written from the
//! upstream's bytes with the same framing rules), one it declines becomes
//! an `http::Request` for the service as before.
//!
//! What this loop does itself, as hyper does it:
//! - waits for each head at most the listener's header read timeout
//!   (idle keep-alive time included), then closes;
//! - `Connection: close` from the client, keep-alive off, or a shutdown
//!   requested while a request was served: answers with `connection:
//!   close` and closes; a shutdown while waiting for a head closes at once;
//! - responses, in hyper's order: status line with the canonical reason,
//!   the service's fields, `content-length` (the service's, in its place,
//!   or the body's exact size) or chunked encoding, then `date` when the
//!   service set none; no body for `HEAD`, 1xx, 204 and 304; a body that
//!   fails or ends short of its length closes the connection (the client
//!   sees a truncated message, never a wrong one);
//! - a service error closes the connection without an answer.

use std::cell::RefCell;
use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt as _};

use crate::body::{BoxBody, BoxError, RequestBody};
use crate::express::{Express, RequestHead};
use crate::ext::{ConnectionInfo, RequestId};
use crate::proxy::h1codec::ResponseHead;
use crate::proxy::{ExpressAnswer, ExpressBody};

/// Most header fields a request may have and still be read here; a request
/// with more goes to hyper, which applies the listener's own limit.
pub(super) const MAX_FIELDS: usize = 64;

/// Header fields a request map has room for beyond the client's own.
const ROOM_FOR_ADDED: usize = 16;

/// Data frames at least this large are written as they are, not copied
/// into the output buffer.
const DIRECT_WRITE: usize = 16 * 1024;

/// The output buffer is given back when it grew beyond this (between
/// pipelined requests; otherwise it is given back after every response).
const KEEP_OUT: usize = 64 * 1024;
/// Room reserved beyond a client's head for the express lane's upstream
/// head: the signed identity fields (about 700 bytes) and the forwarding
/// fields.
const EXPRESS_HEAD_EXTRA: usize = 2048;

/// How a connection left this loop.
pub(super) enum End {
    /// Done: closed by either side, timed out, or stopped.
    Closed,
    /// hyper serves the rest of the connection, starting with these bytes
    /// (read, not yet consumed).
    Handoff(Bytes),
}

/// The listener's limits this loop applies.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Largest request head (hyper's read buffer limit).
    pub(super) max_head: usize,
    /// Most header fields.
    pub(super) max_headers: usize,
    /// Time for a request head to arrive, from the end of the previous
    /// response (or the connection's start).
    pub(super) header_read_timeout: Duration,
    /// Keep connections open between requests.
    pub(super) keep_alive: bool,
}

/// A request head taken off the buffer: its bytes, with the fields as
/// offsets into them (in the loop's field table).
struct Raw {
    head: Bytes,
    method: Method,
    /// The target's offsets in `head`.
    target: [usize; 2],
    close: bool,
}

/// Serve requests from `io` until the connection ends or a request needs
/// hyper.
pub(super) async fn serve<I, S, E>(
    io: &mut I,
    service: &mut S,
    express: Option<&E>,
    info: &Arc<ConnectionInfo>,
    limits: Limits,
    stop: &mut watch::Receiver<bool>,
) -> End
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<RequestBody>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    E: Express,
{
    // Allocated when first used, and given back whenever the connection
    // falls idle (below): an idle connection holds no buffer.
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut fields: Vec<[usize; 4]> = Vec::new();
    // One timer and one shutdown watch for the connection's life; the timer
    // is made the first time a head is not already there.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    // The express lane's timer for upstream answers, kept likewise (made
    // by the first lane request; see `proxy::until`).
    let mut answer_timer: Option<Pin<Box<Sleep>>> = None;
    // The watch is waited on through a copy, so that `stop` itself can be
    // read after each response: a read of the value, where polling the
    // waiting future again costs a lock.
    let mut waiting = stop.clone();
    let mut stopped = pin!(super::stopped(&mut waiting));
    loop {
        let deadline = Instant::now() + limits.header_read_timeout;
        let head = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut fields, limits) {
                    Parsed::Ready(raw) => break raw,
                    Parsed::Handoff => return End::Handoff(buf.freeze()),
                    Parsed::Partial if buf.len() >= limits.max_head => {
                        return End::Handoff(buf.freeze());
                    }
                    Parsed::Partial => {}
                }
            }
            buf.reserve(4096);
            let mut read = pin!(io.read_buf(&mut buf));
            let read_or_stop = std::future::poll_fn(|cx| {
                // The read first: when bytes are there (the usual wake-up)
                // the shutdown watch is not polled, which costs a lock. A
                // shutdown is still seen: it wakes this task, whose read
                // is then pending.
                if let Poll::Ready(r) = read.as_mut().poll(cx) {
                    return Poll::Ready(Wait::Read(r));
                }
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Stop);
                }
                Poll::Pending
            });
            let waited = crate::proxy::until(&mut timer, deadline, read_or_stop)
                .await
                .unwrap_or(Wait::Timeout);
            match waited {
                Wait::Read(Ok(n)) if n > 0 => {}
                // End of stream (mid-head too: nothing to answer to), an
                // error, the header read timeout, or a shutdown.
                Wait::Read(_) | Wait::Timeout | Wait::Stop => return End::Closed,
            }
        };
        let close = head.close;
        let head_method = head.method == Method::HEAD;
        let planned = express.and_then(|x| {
            let view = RequestHead {
                method: &head.method,
                head: &head.head,
                target: head.target,
                fields: &fields,
            };
            // One allocation for the upstream head (the client's fields,
            // the signed identity and the forwarding fields), not a few
            // growing ones.
            out.reserve(head.head.len() + EXPRESS_HEAD_EXTRA);
            let plan = x.plan(&view, info, &mut out);
            // A plan may have begun writing before it declined.
            if plan.is_none() {
                out.clear();
            }
            Some((x, plan?))
        });
        let res = match planned {
            Some((x, plan)) => {
                let start = Instant::now();
                let answer = crate::proxy::forward_express(
                    crate::proxy::ExpressForward {
                        head: &out,
                        method: &head.method,
                        upstream: &plan.upstream,
                        timeouts: plan.timeouts,
                        request_id: &plan.request_id,
                        route: &plan.route,
                        flavor: plan.flavor,
                    },
                    &mut fields,
                    &mut answer_timer,
                )
                .await;
                out.clear();
                x.finished(plan.done, answer.status(), start.elapsed());
                match answer {
                    ExpressAnswer::Own(res) => Answer::Stack(res),
                    ExpressAnswer::Upstream { head, body } => {
                        Answer::Upstream(head, body, plan.request_id)
                    }
                }
            }
            None => {
                let Some(req) = build(head, &fields, &mut buf, info) else {
                    return End::Handoff(buf.freeze());
                };
                let res: Result<_, BoxError> = async {
                    let svc = service.ready().await.map_err(Into::into)?;
                    svc.call(req).await.map_err(Into::into)
                }
                .await;
                match res {
                    Ok(res) => Answer::Stack(res),
                    Err(e) => {
                        tracing::debug!(peer = %info.peer, error = %e, "service error; connection closed");
                        return End::Closed;
                    }
                }
            }
        };
        // After a shutdown request the answer says the connection closes,
        // as hyper's graceful shutdown does.
        let close = close || !limits.keep_alive || *stop.borrow();
        let written = match res {
            Answer::Stack(res) => write_response(io, &mut out, res, head_method, close).await,
            Answer::Upstream(answer, body, rid) => {
                let answer = (&answer, &fields[..], body);
                write_upstream_answer(io, &mut out, answer, &rid, head_method, close).await
            }
        };
        let keep = match written {
            Ok(keep) => keep,
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "writing a response failed");
                return End::Closed;
            }
        };
        if buf.is_empty() {
            // Nothing pipelined: the connection may now idle for long, and
            // holds no buffer while it does (allocated again, 4 KiB, by
            // the next read; the next response's own).
            buf = BytesMut::new();
            out = Vec::new();
        } else if out.capacity() > KEEP_OUT {
            out = Vec::new();
        }
        if !keep {
            let _ = io.shutdown().await;
            return End::Closed;
        }
    }
}

/// What the loop writes: the stack's answer, or the upstream's answer the
/// express lane got (its head, body and the request's id).
enum Answer {
    Stack(Response<BoxBody>),
    Upstream(ResponseHead, ExpressBody, RequestId),
}

enum Wait {
    Read(io::Result<usize>),
    Timeout,
    Stop,
}

enum Parsed {
    Ready(Raw),
    Partial,
    Handoff,
}

/// Parse the head at the start of `buf`; on success it is taken off `buf`
/// and its fields' offsets are in `fields`.
fn parse(buf: &mut BytesMut, fields: &mut Vec<[usize; 4]>, limits: Limits) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let slots = slots
        .get_mut(..limits.max_headers.min(MAX_FIELDS))
        .unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize).wrapping_sub(base);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handoff,
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else {
        return Parsed::Handoff;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::Handoff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handoff;
    };
    let path_at = offset(path.as_bytes());
    let target = [path_at, path_at + path.len()];
    fields.clear();
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if [
            CONTENT_LENGTH.as_str(),
            TRANSFER_ENCODING.as_str(),
            "expect",
            "upgrade",
            "te",
        ]
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            return Parsed::Handoff;
        }
        if name.eq_ignore_ascii_case(CONNECTION.as_str().as_bytes()) {
            close |= says_close(h.value);
        }
        let n = offset(name);
        let v = offset(h.value);
        fields.push([n, n + name.len(), v, v + h.value.len()]);
    }
    let head = buf.split_to(len).freeze();
    Parsed::Ready(Raw {
        head,
        method,
        target,
        close,
    })
}

/// The `http::Request` hyper would build from a head `parse` took; `None`
/// when `http` refuses a field or the target, with the head's bytes put
/// back in front of `buf`, unchanged, for hyper to answer.
fn build(
    raw: Raw,
    fields: &[[usize; 4]],
    buf: &mut BytesMut,
    info: &Arc<ConnectionInfo>,
) -> Option<Request<RequestBody>> {
    let head = raw.head;
    let rebuilt = |buf: &mut BytesMut, head: &Bytes| {
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(head);
        whole.extend_from_slice(buf);
        *buf = whole;
        None
    };
    let [ts, te] = raw.target;
    let target = if ts <= te && te <= head.len() {
        Uri::from_maybe_shared(head.slice(ts..te)).ok()
    } else {
        None
    };
    let Some(uri) = target else {
        return rebuilt(buf, &head);
    };
    // Room for what the gateway adds on the way to the upstream (forwarding
    // headers, request id, signed identity: about 14 fields) so that the
    // map is not grown and rehashed two or three times per request.
    let mut map = HeaderMap::with_capacity(fields.len() + ROOM_FOR_ADDED);
    for &[ns, ne, vs, ve] in fields {
        let name = head.get(ns..ne).map(HeaderName::from_bytes);
        let value = if vs <= ve && ve <= head.len() {
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).ok()
        } else {
            None
        };
        match (name, value) {
            (Some(Ok(name)), Some(value)) => {
                map.append(name, value);
            }
            _ => return rebuilt(buf, &head),
        }
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = raw.method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    req.extensions_mut().insert(ConnectionInfo::clone(info));
    Some(req)
}

/// How the body is framed on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Write `res`; `Ok(true)` when the connection can carry another request.
///
/// Framing as hyper's server does it: a body of known size gets
/// `content-length` (also for `HEAD`, which gets no body), an empty one
/// `content-length: 0` (not for `HEAD`), an unknown size the service's own
/// `content-length` or else chunked encoding; 1xx, 204 and 304 have neither
/// and no body.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    res: Response<BoxBody>,
    head_method: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    out.reserve(1024);
    let (mut parts, mut body) = res.into_parts();
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Only upgrade requests may be answered so, and those are hyper's.
        return Err(io::Error::other("101 to a request without an upgrade"));
    }
    let headers = &mut parts.headers;
    let service_closes = headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| says_close(v.as_bytes()));
    if close && !service_closes {
        // As hyper does: `close` joins the field, or the field is added
        // (last in the map).
        headers.append(CONNECTION, HeaderValue::from_static("close"));
    }
    let close = close || service_closes;
    let declared = {
        let mut all = headers.get_all(CONTENT_LENGTH).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok()),
            _ => None,
        }
    };
    let (length, framing) = framing_for(status, &body, declared, head_method);

    // The head in hyper's order: the fields in the map's order, the
    // length where the service put it (the framing is this writer's: the
    // service's `transfer-encoding` and any other `content-length` are
    // left out), a length or chunked encoding it did not set, then `date`.
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for (name, value) in headers.iter() {
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONTENT_LENGTH {
            if let (Some(n), false) = (length, length_written) {
                put_length(out, n);
                length_written = true;
            }
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match (length, &framing) {
        (Some(n), _) if !length_written => put_length(out, n),
        (None, Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    drop(parts);
    finish_body(io, out, &mut body, framing, close).await
}

/// The length a response head gives and how its body is framed, as hyper's
/// server decides: a body of known size gets `content-length` (also for
/// `HEAD`, which gets no body), an empty one `content-length: 0` (not for
/// `HEAD`), an unknown size the declared `content-length` or else chunked
/// encoding; 1xx, 204 and 304 have neither and no body.
fn framing_for(
    status: StatusCode,
    body: &BoxBody,
    declared: Option<u64>,
    head_method: bool,
) -> (Option<u64>, Framing) {
    let exact = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    framing_of(status, exact, declared, head_method)
}

/// [`framing_for`] a body whose size is `exact` (if known).
fn framing_of(
    status: StatusCode,
    exact: Option<u64>,
    declared: Option<u64>,
    head_method: bool,
) -> (Option<u64>, Framing) {
    let can_length = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let can_body = can_length && !head_method;
    let (length, framing) = match (can_length, exact, declared) {
        (false, ..) => (None, Framing::None),
        (true, Some(0), Some(d)) if head_method => (Some(d), Framing::None),
        (true, Some(0), _) if head_method => (None, Framing::None),
        (true, Some(n), _) => (Some(n), Framing::Length(n)),
        (true, None, Some(d)) => (Some(d), Framing::Length(d)),
        (true, None, None) => (None, Framing::Chunked),
    };
    (length, if can_body { framing } else { Framing::None })
}

/// Send the body after the head in `out`, then flush; `Ok(true)` when the
/// connection can carry another request.
async fn finish_body<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut BoxBody,
    framing: Framing,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let sent = send_body(io, out, body, framing).await;
    flush_out(io, out, sent, close).await
}

/// Write what `out` holds and flush, after a body was `sent` (whether it
/// matched its framing); `Ok(true)` when the connection can carry another
/// request. What is buffered goes out even after a body failed: the
/// client then sees a truncated message, not none at all.
async fn flush_out<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    sent: io::Result<bool>,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    if !out.is_empty() {
        let written = io.write_all(out).await;
        out.clear();
        written?;
    }
    io.flush().await?;
    match sent? {
        true => Ok(!close),
        false => Err(io::Error::other(
            "response body ended short of its length, or went past it",
        )),
    }
}

/// Write an upstream's answer the express lane got, as [`write_response`]
/// writes the stack's answer to the same request: the status line with the
/// canonical reason, the upstream's fields a client may see (names in lower
/// case), the request's `x-request-id` in place of the upstream's, the
/// length or chunked encoding, `date` when the upstream sent none,
/// `connection: close` when the connection ends.
async fn write_upstream_answer<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    answer: (&ResponseHead, &[[usize; 4]], ExpressBody),
    request_id: &RequestId,
    head_method: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (head, fields, body) = answer;
    let (length, framing) = match &body {
        ExpressBody::Whole(data) => framing_of(
            head.status,
            Some(data.len() as u64),
            head.declared,
            head_method,
        ),
        ExpressBody::Streaming(body) => framing_for(head.status, body, head.declared, head_method),
    };
    out.reserve(1024);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        head.status
            .canonical_reason()
            .unwrap_or("<none>")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for &f in fields {
        let (name, value) = head.field(f);
        if name.eq_ignore_ascii_case(b"x-request-id") {
            continue;
        }
        let at = out.len();
        out.extend_from_slice(name);
        if let Some(copied) = out.get_mut(at..) {
            copied.make_ascii_lowercase();
        }
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    match (length, &framing) {
        (Some(n), _) => put_length(out, n),
        (None, Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !head.date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut body = match body {
        ExpressBody::Streaming(body) => body,
        ExpressBody::Whole(data) => {
            // Head and body in one write (framing is `Length` of the
            // data's size, or `None` for `HEAD`, 204 and 304).
            let sent = match framing {
                Framing::Length(_) => put(io, out, data).await.map(|()| true),
                _ => Ok(true),
            };
            return flush_out(io, out, sent, close).await;
        }
    };
    finish_body(io, out, &mut body, framing, close).await
}

/// Whether a `Connection` value has the `close` token.
fn says_close(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Put the body into `out` (or onto the wire) framed as `framing`;
/// `Ok(false)` when it did not match a declared length.
async fn send_body<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut BoxBody,
    framing: Framing,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    match framing {
        Framing::None => Ok(true),
        Framing::Length(n) => {
            let mut left = n;
            while let Some(data) = next_data(io, out, body).await? {
                let len = data.len() as u64;
                if len > left {
                    // More than declared: what was declared goes out, the
                    // connection ends.
                    let fits = usize::try_from(left).unwrap_or(usize::MAX);
                    put(io, out, data.slice(..fits.min(data.len()))).await?;
                    return Ok(false);
                }
                left -= len;
                put(io, out, data).await?;
            }
            Ok(left == 0)
        }
        Framing::Chunked => {
            while let Some(data) = next_data(io, out, body).await? {
                if data.is_empty() {
                    continue;
                }
                let mut hex = [0u8; 16];
                out.extend_from_slice(hex_len(data.len(), &mut hex));
                out.extend_from_slice(b"\r\n");
                put(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            Ok(true)
        }
    }
}

/// The next data frame (trailers are dropped: requests with `TE` are
/// hyper's). What is buffered goes out first when the body must be waited
/// for. A body error ends the response (`Err`).
async fn next_data<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut BoxBody,
) -> io::Result<Option<Bytes>>
where
    I: AsyncWrite + Unpin,
{
    loop {
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                body.frame().await
            }
        };
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// Append `data` to `out`, or write both when `data` is large.
async fn put<I>(io: &mut I, out: &mut Vec<u8>, data: Bytes) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    if data.len() < DIRECT_WRITE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.write_all(&data).await
}

/// `n` in lowercase hex, without leading zeros.
fn hex_len(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = DIGITS.get(n & 15).copied().unwrap_or(b'0');
        }
        n >>= 4;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

thread_local! {
    /// The formatted `date` of the current second.
    static DATE_CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Call `f` with the current time as an HTTP date (IMF-fixdate, 29 bytes),
/// formatted once per second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if let Some(dst) = c.1.get_mut(..s.len()) {
                dst.copy_from_slice(s.as_bytes());
            }
            c.0 = secs;
        }
        f(&c.1);
    });
}

/// A head parsed and built as the loop does it (for the fuzz entry and the
/// tests).
struct Took {
    req: Request<RequestBody>,
    close: bool,
    head_method: bool,
}

// Taken apart at once where it is made (the fuzz entry and the tests).
#[expect(
    clippy::large_enum_variant,
    reason = "moved once, in the fuzz entry and the tests only"
)]
enum Taken {
    Ready(Took),
    Partial,
    Handoff,
}

fn take(
    buf: &mut BytesMut,
    fields: &mut Vec<[usize; 4]>,
    limits: Limits,
    info: &Arc<ConnectionInfo>,
) -> Taken {
    match parse(buf, fields, limits) {
        Parsed::Partial => Taken::Partial,
        Parsed::Handoff => Taken::Handoff,
        Parsed::Ready(raw) => {
            let close = raw.close;
            let head_method = raw.method == Method::HEAD;
            match build(raw, fields, buf, info) {
                Some(req) => Taken::Ready(Took {
                    req,
                    close,
                    head_method,
                }),
                None => Taken::Handoff,
            }
        }
    }
}

/// Fuzzing entry (not an API): parse `data` as a sequence of request heads
/// the way the connection loop does, checking on every step that a head
/// handed to hyper, or still incomplete, leaves the bytes exactly as they
/// were, and that a head taken is exactly what httparse reads there.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let info = Arc::new(ConnectionInfo::plain(addr, addr));
    let limits = Limits {
        max_head: 64 * 1024,
        max_headers: 100,
        header_read_timeout: Duration::from_secs(1),
        keep_alive: true,
    };
    let mut buf = BytesMut::from(data);
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let before = buf.clone();
        match take(&mut buf, &mut fields, limits, &info) {
            Taken::Partial | Taken::Handoff => {
                assert_eq!(buf, before, "bytes changed on a head not taken");
                return;
            }
            Taken::Ready(head) => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
                let mut reference = httparse::Request::new(&mut slots);
                let parsed = reference.parse(&before);
                assert!(
                    matches!(parsed, Ok(httparse::Status::Complete(_))),
                    "a head taken that httparse does not read complete"
                );
                let Ok(httparse::Status::Complete(len)) = parsed else {
                    return;
                };
                assert_eq!(&buf[..], before.get(len..).unwrap_or_default());
                assert_eq!(Some(head.req.method().as_str()), reference.method);
                assert_eq!(head.head_method, reference.method == Some("HEAD"));
                let close = reference
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("connection") && says_close(h.value));
                assert_eq!(head.close, close, "Connection: close read wrong");
                // The target as hyper would make it (a fragment is dropped).
                let target = reference.path.and_then(|p| Uri::try_from(p).ok());
                assert_eq!(Some(head.req.uri()), target.as_ref());
                assert_eq!(head.req.headers().len(), reference.headers.len());
                for h in reference.headers.iter() {
                    assert!(
                        head.req
                            .headers()
                            .get_all(h.name)
                            .iter()
                            .any(|v| v.as_bytes() == h.value),
                        "header {:?} lost",
                        h.name
                    );
                }
            }
        }
    }
}

/// Fuzzing entry (not an API): read `data` as request heads the way the
/// connection loop does and write each one's upstream head as the express
/// lane writes it (every field copied but the ones it replaces, the
/// request's own `Host`, the cookies without the session cookie),
/// checking that what goes upstream is exactly one well-formed head —
/// nothing a client sends can end it early, add a second request or
/// smuggle a field the gateway sets — with the method, target, every
/// copied field and every other cookie intact.
#[doc(hidden)]
pub fn fuzz_express_head(data: &[u8]) {
    use crate::express::UpstreamHead;
    use crate::gateway::credentials::kept_cookies;
    const SESSION: &str = crate::authn::DEFAULT_SESSION_COOKIE;
    let addr = std::net::SocketAddr::from(([192, 0, 2, 1], 4000));
    let info = ConnectionInfo::plain(addr, addr);
    let limits = Limits {
        max_head: 64 * 1024,
        max_headers: 100,
        header_read_timeout: Duration::from_secs(1),
        keep_alive: true,
    };
    let rid = crate::ext::RequestId(Arc::from("0123456789abcdef0123456789abcdef"));
    let mut buf = BytesMut::from(data);
    let mut fields = Vec::new();
    let mut out = Vec::new();
    while let Parsed::Ready(raw) = parse(&mut buf, &mut fields, limits) {
        let view = RequestHead {
            method: &raw.method,
            head: &raw.head,
            target: raw.target,
            fields: &fields,
        };
        let Some(pq) = view.path_and_query() else {
            continue;
        };
        let host = view
            .fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"host"))
            .map_or(&b"fallback.example"[..], |(_, v)| v);
        if http::uri::Authority::try_from(host).is_err() {
            continue;
        }
        out.clear();
        let mut w = UpstreamHead::start(&mut out, view.method(), "/base", &pq);
        let mut copied = Vec::new();
        let mut refused = false;
        let is_cookie = |n: &[u8]| n.eq_ignore_ascii_case(b"cookie");
        for (name, value) in view.fields() {
            if UpstreamHead::replaces(name)
                || name.eq_ignore_ascii_case(b"x-request-id")
                || is_cookie(name)
            {
                continue;
            }
            if w.copy(name, value) {
                copied.push((name.to_ascii_lowercase(), value.to_vec()));
            } else {
                refused = true;
                break;
            }
        }
        // The cookies as the gateway's lane forwards them: one field,
        // without the session cookie.
        let lines = || view.fields().filter(|(n, _)| is_cookie(n)).map(|(_, v)| v);
        if refused || !w.add_with(b"cookie", |o| kept_cookies(lines(), SESSION, o)) {
            continue;
        }
        w.finish(host, &info, &rid);
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut slots);
        let parsed = req.parse(&out);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
            "the upstream head is not one whole head: {parsed:?} {:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(req.method, Some(view.method().as_str()));
        assert_eq!(req.version, Some(1));
        let mut target = Vec::new();
        crate::proxy::join_path_into(&mut target, "/base", &pq);
        assert_eq!(req.path.map(str::as_bytes), Some(&target[..]));
        for set in [
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-request-id",
        ] {
            let n = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(set))
                .count();
            assert_eq!(n, 1, "{set} appears {n} times");
        }
        // The copied fields, in order, each intact (httparse trims a
        // value's surrounding whitespace, as the reader did).
        let sent: Vec<(Vec<u8>, Vec<u8>)> = req
            .headers
            .iter()
            .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
            .collect();
        assert!(sent.len() >= copied.len());
        assert_eq!(sent.get(..copied.len()), Some(&copied[..]));
        // At most one `Cookie`, with every pair of the client's but the
        // session cookie, intact and in order.
        let cookies: Vec<&[u8]> = req
            .headers
            .iter()
            .filter(|h| is_cookie(h.name.as_bytes()))
            .map(|h| h.value)
            .collect();
        assert!(cookies.len() <= 1, "{} cookie fields", cookies.len());
        let expected: Vec<(&[u8], &[u8])> = lines()
            .flat_map(crate::authn::cookie_pairs)
            .filter(|(n, _)| *n != SESSION.as_bytes())
            .collect();
        let sent: Vec<(&[u8], &[u8])> = cookies
            .first()
            .map(|c| crate::authn::cookie_pairs(c).collect())
            .unwrap_or_default();
        assert_eq!(sent, expected);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8], max_headers: usize) -> (Vec<Taken>, BytesMut) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let info = Arc::new(ConnectionInfo::plain(addr, addr));
        let limits = Limits {
            max_head: 1024,
            max_headers,
            header_read_timeout: Duration::from_secs(1),
            keep_alive: true,
        };
        let mut buf = BytesMut::from(bytes);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        while !buf.is_empty() {
            let p = take(&mut buf, &mut fields, limits, &info);
            let stop = !matches!(p, Taken::Ready(_));
            out.push(p);
            if stop {
                break;
            }
        }
        (out, buf)
    }

    #[test]
    fn heads_are_taken_zero_copy_and_in_order() {
        let (parsed, rest) = parse_all(
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\nHEAD / HTTP/1.1\r\nConnection: close\r\n\r\nGET",
            100,
        );
        assert_eq!(&rest[..], b"GET");
        let [Taken::Ready(a), Taken::Ready(b), Taken::Partial] = &parsed[..] else {
            panic!("unexpected parse sequence");
        };
        assert_eq!(a.req.uri(), "/a?b=c");
        assert_eq!(a.req.headers().get_all("x-a").iter().count(), 2);
        assert!(!a.close && !a.head_method);
        assert!(b.close && b.head_method);
        assert!(a.req.extensions().get::<ConnectionInfo>().is_some());
    }

    #[test]
    fn requests_that_may_have_a_body_or_need_hyper_are_handed_over_unchanged() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nte: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
        ] {
            let (parsed, rest) = parse_all(head, 100);
            assert!(
                matches!(parsed[..], [Taken::Handoff]),
                "{:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(&rest[..], head, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn more_fields_than_allowed_go_to_hyper() {
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(parse_all(head, 3).0[..], [Taken::Ready(_)]));
        assert!(matches!(parse_all(head, 2).0[..], [Taken::Handoff]));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: 1\r\n".repeat(MAX_FIELDS + 1)
        );
        assert!(matches!(
            parse_all(many.as_bytes(), 1000).0[..],
            [Taken::Handoff]
        ));
    }

    #[test]
    fn hex_lengths() {
        let mut b = [0u8; 16];
        assert_eq!(hex_len(0, &mut b), b"0");
        assert_eq!(hex_len(255, &mut b), b"ff");
        assert_eq!(hex_len(4096, &mut b), b"1000");
        assert_eq!(hex_len(usize::MAX, &mut b), b"ffffffffffffffff");
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut d = Vec::new();
        with_date(|b| d.extend_from_slice(b));
        let s = String::from_utf8(d).unwrap_or_default();
        assert!(httpdate::parse_http_date(&s).is_ok(), "{s:?}");
        assert_eq!(s.len(), 29);
    }

    #[test]
    fn the_express_fuzz_entry_holds_on_samples() {
        fuzz_express_head(b"GET /a?b HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\nHost: b\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
        fuzz_express_head(
            b"GET / HTTP/1.1\r\nX-A: \x80\xff\r\nConnection: close\r\n\r\nHEAD /x HTTP/1.1\r\n\r\n",
        );
        fuzz_express_head(b"GET / HTTP/1.1\r\nHost: [::1]:8\r\nX-B:\ta\tb\t\r\n\r\n");
        fuzz_express_head(
            b"GET / HTTP/1.1\r\nCookie: a=1;__Host-hexon-session=s; b==\t\r\ncookie: ;;x;=y;  __Host-hexon-session =t\r\n\r\nGET / HTTP/1.1\r\nCookie: __Host-hexon-session=only\r\nCookie: \x80=\xff\r\n\r\n",
        );
    }

    #[test]
    fn the_fuzz_entry_holds_on_samples() {
        fuzz_parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab");
        fuzz_parse(b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n");
        fuzz_parse(b"\n\nGET / HTTP/1.1\n\n");
    }
}
