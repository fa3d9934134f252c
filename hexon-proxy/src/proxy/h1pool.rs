//! Kept-alive HTTP/1.1 connections to one plain `http://` upstream, a stack
//! of idle ones per connection thread, read and written in the task that
//! serves the request.
//!
//! Why not hyper: hyper-util's pooled client costs about 12,000
//! instructions per request on the calling side (pool key hashing, a
//! `Pooled` guard, a lazy connect future, futures moved through several
//! layers), and hyper's `client::conn` runs every connection as a task of
//! its own, fed over a channel (about 14,000 more). A pool that only ever
//! holds connections to one upstream, used from one thread, needs a stack
//! of sockets; and a request without a body needs no second task: its head
//! is written, the response head read and the body streamed from the
//! socket by whoever polls the response body (the listener's connection
//! task). The protocol is in [`super::h1codec`] (docs/BENCHMARKS.md,
//! "2026-12-05: upstream HTTP/1.1 in the request's own task").
//!
//! Only requests without a body take this path ([`H1Pool::accepts`]);
//! uploads, TLS, HTTP/2, h2c and upgrades stay on hyper-util's client
//! ([`super::client`]), which streams a body up while the answer comes
//! down.
//!
//! A connection goes back on its thread's stack when its response ended as
//! framed (at once for a response without a body), the upstream did not
//! ask to close, and nothing followed the response. A body dropped early
//! takes its connection with it (closed). An idle connection older than
//! the pool's idle timeout, or one the upstream closed or wrote to while
//! idle, is dropped when found, and a task on the thread closes idle
//! connections past the timeout while the stack is not empty. A request
//! whose reused connection turns out closed before any answer arrived (the
//! upstream closed it while the request was on its way) is sent again on a
//! new connection when its method is idempotent (RFC 9110 §9.2.2, RFC 9112
//! §9.3.1).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tower_service::Service as _;

use super::client::{Connector, PoolConfig};
use super::h1codec::{self, Chunked, Decoded, Framing, ProtocolError};
use crate::body::BoxError;

/// Read-buffer growth per read.
const READ_CHUNK: usize = 16 * 1024;

/// The pool of one upstream.
pub(crate) struct H1Pool {
    connector: Connector,
    dst: Uri,
    idle_timeout: Duration,
    max_idle: usize,
    /// One stack per connection thread (slot 0: threads outside any set).
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Default)]
struct Slot {
    idle: Vec<Conn>,
    /// A task closing expired idle connections runs for this stack.
    reaping: bool,
}

/// One upstream connection and what was read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being written (kept for its allocation).
    out: Vec<u8>,
    /// Working space for reading response heads.
    fields: Vec<h1codec::Field>,
    idle_since: Instant,
}

impl Conn {
    /// Read more into the buffer. `Ok(0)`: the upstream closed.
    ///
    /// Through tokio's `poll_read`, which takes a short read as proof that
    /// the socket is drained and forgets its readiness: the next read (and
    /// the idle check) then waits for the reactor instead of trying a
    /// `recv` that would find nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        std::pin::pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Still usable while idle: not closed by the upstream and nothing
    /// unasked-for arrived. No system call unless the socket became
    /// readable.
    fn idle_ok(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl H1Pool {
    pub(crate) fn new(connector: Connector, dst: Uri, pool: &PoolConfig) -> Self {
        H1Pool {
            connector,
            dst,
            idle_timeout: pool.idle_timeout,
            max_idle: pool.max_idle_per_host,
            slots: (0..=hexon_core::rt::MAX_THREADS)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
        }
    }

    /// Whether `req` takes this path: no body, and no framing fields that
    /// say otherwise.
    pub(crate) fn accepts<B: Body>(req: &Request<B>) -> bool {
        req.body().is_end_stream()
            && !req.headers().contains_key(TRANSFER_ENCODING)
            && req
                .headers()
                .get_all(CONTENT_LENGTH)
                .iter()
                .all(|v| v.as_bytes() == b"0")
    }

    /// The calling thread's stack. On a connection thread only that thread
    /// locks it; threads outside a set (a multi-threaded runtime) share
    /// slot 0.
    fn slot(&self) -> Option<&Mutex<Slot>> {
        self.slots.get(self.slot_index())
    }

    fn slot_index(&self) -> usize {
        let i = hexon_core::rt::worker_index();
        if i < self.slots.len() { i } else { 0 }
    }

    /// The most recently used live idle connection of this thread.
    fn checkout(&self) -> Option<Conn> {
        let slot = self.slot()?;
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some(mut c) = slot.idle.pop() {
            if now.saturating_duration_since(c.idle_since) < self.idle_timeout && c.idle_ok() {
                return Some(c);
            }
        }
        None
    }

    fn put_back(self: &Arc<Self>, mut conn: Conn) {
        let Some(slot) = self.slot() else { return };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.idle.len() >= self.max_idle {
            return;
        }
        conn.idle_since = Instant::now();
        slot.idle.push(conn);
        if !slot.reaping {
            // On this thread's runtime, like the connections it closes.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                slot.reaping = true;
                rt.spawn(reap(Arc::downgrade(self), self.slot_index()));
            }
        }
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = match connector.call(self.dst.clone()).await? {
            hyper_rustls::MaybeHttpsStream::Http(io) => io.into_inner(),
            hyper_rustls::MaybeHttpsStream::Https(_) => {
                return Err("an http:// upstream answered with TLS".into());
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(512),
            fields: Vec::new(),
            idle_since: Instant::now(),
        })
    }

    /// Send `req` (one [`accepts`](Self::accepts); its `Host` set) on a
    /// kept connection or a new one, and read the response head.
    pub(crate) async fn send<B>(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let method = req.method();
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let retry_allowed = method.is_idempotent();
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut conn, method, target, req.headers()).await {
                Ok(head) => {
                    let (framing, keep_alive) = (head.framing.clone(), head.keep_alive);
                    let mut res = Response::new(ResponseBody::Empty);
                    *res.status_mut() = head.status;
                    *res.version_mut() = head.version;
                    *res.headers_mut() = head.headers;
                    let pool = Arc::clone(self);
                    *res.body_mut() = match framing {
                        Framing::Empty => {
                            finish(pool, conn, keep_alive);
                            ResponseBody::Empty
                        }
                        framing => ResponseBody::H1(H1Body {
                            conn: Some(conn),
                            pool,
                            framing: match framing {
                                Framing::Length(n) => BodyFraming::Length(n),
                                Framing::Chunked => BodyFraming::Chunked(Chunked::default()),
                                _ => BodyFraming::Close,
                            },
                            keep_alive,
                        }),
                    };
                    return Ok(res);
                }
                // Closed before any answer on a reused connection: the
                // upstream let it go while the request was on its way.
                Err(Failure::Closed(_)) if reused && retry_allowed => {}
                Err(Failure::Closed(e) | Failure::Other(e)) => return Err(e),
            }
        }
    }
}

/// Why an exchange failed.
enum Failure {
    /// The connection closed or reset before any byte of an answer.
    Closed(BoxError),
    Other(BoxError),
}

/// Write the request head and read the response head.
async fn exchange(
    conn: &mut Conn,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
) -> Result<h1codec::ResponseHead, Failure> {
    let closed = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Failure::Closed(e.into()),
        _ => Failure::Other(e.into()),
    };
    conn.out.clear();
    h1codec::write_request_head(&mut conn.out, method, target, headers);
    conn.io.write_all(&conn.out).await.map_err(closed)?;
    conn.buf.clear();
    loop {
        let before = conn.buf.len();
        match conn.fill().await {
            Ok(0) if before == 0 => {
                return Err(Failure::Closed(
                    ProtocolError("connection closed before a response").into(),
                ));
            }
            Ok(0) => {
                return Err(Failure::Other(
                    ProtocolError("connection closed inside the response head").into(),
                ));
            }
            Ok(_) => {}
            Err(e) if before == 0 => return Err(closed(e)),
            Err(e) => return Err(Failure::Other(e.into())),
        }
        match h1codec::read_response_head(&mut conn.buf, method, &mut conn.fields) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => return Err(Failure::Other(e.into())),
        }
    }
}

/// A response ended as framed: keep its connection if it may carry more
/// and nothing followed the response.
fn finish(pool: Arc<H1Pool>, conn: Conn, keep_alive: bool) {
    if keep_alive && conn.buf.is_empty() {
        pool.put_back(conn);
    }
}

/// Close the idle connections of one stack once they pass the idle
/// timeout (or were closed by the upstream); ends when the stack is empty
/// or the pool is gone (a new configuration replaced the upstream).
async fn reap(pool: std::sync::Weak<H1Pool>, index: usize) {
    loop {
        let Some(every) = pool.upgrade().map(|p| p.idle_timeout) else {
            return;
        };
        tokio::time::sleep(every.max(Duration::from_millis(10))).await;
        let Some(pool) = pool.upgrade() else { return };
        let Some(slot) = pool.slots.get(index) else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Dropping a connection closes it.
        slot.idle.retain_mut(|c| {
            now.saturating_duration_since(c.idle_since) < pool.idle_timeout && c.idle_ok()
        });
        if slot.idle.is_empty() {
            slot.reaping = false;
            return;
        }
    }
}

/// How the rest of a response body is delimited.
enum BodyFraming {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// A response body read from a kept connection; the connection goes back
/// to its pool when the body ended as framed.
pub(crate) struct H1Body {
    /// `None` once the body ended (or failed).
    conn: Option<Conn>,
    pool: Arc<H1Pool>,
    framing: BodyFraming,
    keep_alive: bool,
}

impl H1Body {
    fn end(&mut self) {
        if let Some(conn) = self.conn.take() {
            let keep = self.keep_alive && !matches!(self.framing, BodyFraming::Close);
            finish(Arc::clone(&self.pool), conn, keep);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                BodyFraming::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                        *left -= n as u64;
                        let data = conn.buf.split_to(n).freeze();
                        if *left == 0 {
                            this.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => {
                        this.end();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                BodyFraming::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    if matches!(this.framing, BodyFraming::Close) {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    return this.fail(ProtocolError("connection closed inside the body"));
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, BodyFraming::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A response body from an upstream: from a kept connection, from
/// hyper-util's client, or none.
pub(crate) enum ResponseBody {
    Empty,
    H1(H1Body),
    Hyper(Incoming),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::H1(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::H1(b) => b.is_end_stream(),
            ResponseBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::H1(b) => b.size_hint(),
            ResponseBody::Hyper(b) => b.size_hint(),
        }
    }
}
