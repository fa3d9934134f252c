//! Kept-alive HTTP/1.1 connections to one plain `http://` upstream for the
//! express lane ([`crate::express`]): a stack of idle sockets per connection
//! thread, written and read in the task that serves the client.
//!
//! Why not hyper's `client::conn` here, as [`super::h1pool`] uses: hyper
//! runs each connection as a task of its own, fed over a channel, about
//! 14,000 instructions per request (docs/BENCHMARKS.md). The express lane
//! already holds the request head as bytes; it writes them on a socket of
//! its own thread, reads the answer head with [`super::h1codec`], and the
//! body is read from the socket by whoever polls it (the listener's
//! connection task, writing it to the client). Earlier attempts to put this
//! under the whole tower stack lost throughput (the upstream woken per
//! request while the thread went on with ~12 µs of other work); the lane
//! exists so that little work sits between those reads and writes.
//!
//! A connection goes back on its thread's stack when its answer ended as
//! framed (at once for an answer without a body), the upstream did not ask
//! to close, and nothing followed the answer. A body dropped early takes
//! its connection with it (closed). An idle connection older than the
//! pool's idle timeout, or one the upstream closed or wrote to while idle,
//! is dropped when found, and a task on the thread closes idle connections
//! past the timeout while the stack is not empty. A request whose reused
//! connection turns out closed before any answer arrived (the upstream
//! closed it while the request was on its way) is sent again on a new
//! connection: the lane only carries `GET` and `HEAD`, which are idempotent
//! (RFC 9110 §9.2.2, RFC 9112 §9.3.1).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Bytes, BytesMut};
use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::client::{Connector, PoolConfig};
use super::h1codec::{self, Chunked, Decoded, Framing, ProtocolError};
use super::stacks::{Kept, ThreadStacks};
use crate::body::BoxError;

/// Read-buffer growth per read.
const READ_CHUNK: usize = 16 * 1024;

/// The express lane's connections to one upstream.
pub(crate) struct H1Conns {
    connector: Connector,
    dst: Uri,
    stacks: Arc<ThreadStacks<Conn>>,
}

/// One upstream connection and what was read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Read more into the buffer. `Ok(0)`: the upstream closed.
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

impl Kept for Conn {
    fn usable(&mut self) -> bool {
        self.idle_ok()
    }
}

impl H1Conns {
    pub(crate) fn new(connector: Connector, dst: Uri, pool: &PoolConfig) -> Self {
        H1Conns {
            connector,
            dst,
            stacks: ThreadStacks::new(pool),
        }
    }

    async fn connect(&self) -> Result<Conn, BoxError> {
        let io = match super::client::dial(&self.connector, &self.dst).await? {
            hyper_rustls::MaybeHttpsStream::Http(io) => io.into_inner(),
            hyper_rustls::MaybeHttpsStream::Https(_) => {
                return Err("an http:// upstream answered with TLS".into());
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Write `head` (a whole request head without a body) on a kept
    /// connection or a new one, and read the answer head; `fields` gets
    /// the offsets of its fields a client may see
    /// ([`h1codec::read_response_head`]). `method` is the request's (`HEAD`
    /// answers have no body); it must be idempotent.
    pub(crate) async fn send(
        self: &Arc<Self>,
        head: &[u8],
        method: &Method,
        fields: &mut Vec<[usize; 4]>,
    ) -> Result<(h1codec::ResponseHead, H1Body), BoxError> {
        debug_assert!(method.is_idempotent());
        // After a failed new connection, no more tries.
        loop {
            let (mut conn, reused) = match self.stacks.take() {
                Some((c, _)) => (c, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut conn, head, method, fields).await {
                Ok(answer) => {
                    let framing = match answer.framing {
                        Framing::Empty => {
                            finish(self, conn, answer.keep_alive);
                            return Ok((answer, H1Body::empty()));
                        }
                        Framing::Length(n) => BodyFraming::Length(n),
                        Framing::Chunked => BodyFraming::Chunked(Chunked::default()),
                        Framing::Close => BodyFraming::Close,
                    };
                    let body = H1Body {
                        conn: Some(conn),
                        pool: Some(Arc::clone(self)),
                        framing,
                        keep_alive: answer.keep_alive,
                    };
                    return Ok((answer, body));
                }
                // Closed before any answer on a reused connection: the
                // upstream let it go while the request was on its way.
                Err(Failure::Closed(e)) if reused => {
                    tracing::debug!(error = %e, "upstream closed a kept connection under a request; sending it again");
                }
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

/// Write the request head and read the answer head.
async fn exchange(
    conn: &mut Conn,
    head: &[u8],
    method: &Method,
    fields: &mut Vec<[usize; 4]>,
) -> Result<h1codec::ResponseHead, Failure> {
    let closed = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Failure::Closed(e.into()),
        _ => Failure::Other(e.into()),
    };
    conn.io.write_all(head).await.map_err(closed)?;
    conn.buf.clear();
    loop {
        let before = conn.buf.len();
        match conn.fill().await {
            Ok(0) if before == 0 => {
                return Err(Failure::Closed(
                    ProtocolError("connection closed before an answer").into(),
                ));
            }
            Ok(0) => {
                return Err(Failure::Other(
                    ProtocolError("connection closed inside the answer head").into(),
                ));
            }
            Ok(_) => {}
            Err(e) if before == 0 => return Err(closed(e)),
            Err(e) => return Err(Failure::Other(e.into())),
        }
        match h1codec::read_response_head(&mut conn.buf, method, fields) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(e) => return Err(Failure::Other(e.into())),
        }
    }
}

/// An answer ended as framed: keep its connection if it may carry more and
/// nothing followed the answer.
fn finish(pool: &Arc<H1Conns>, conn: Conn, keep_alive: bool) {
    if keep_alive && conn.buf.is_empty() {
        pool.stacks.give(conn);
    }
}

/// How the rest of an answer body is delimited.
enum BodyFraming {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// An answer body read from a kept connection; the connection goes back to
/// its pool when the body ended as framed. Trailers of a chunked body are
/// passed on as a trailers frame.
pub(crate) struct H1Body {
    /// `None` once the body ended (or failed), and for no body at all.
    conn: Option<Conn>,
    pool: Option<Arc<H1Conns>>,
    framing: BodyFraming,
    keep_alive: bool,
}

impl H1Body {
    fn empty() -> Self {
        H1Body {
            conn: None,
            pool: None,
            framing: BodyFraming::Length(0),
            keep_alive: false,
        }
    }

    /// The whole body, when it is already read (a small answer arrives
    /// with its head): its connection goes back to the pool now, and the
    /// body needs no polling, timing or boxing. `None` (the body is left
    /// as it was) when more is to come or the body is framed otherwise.
    pub(crate) fn take_whole(&mut self) -> Option<Bytes> {
        let Some(conn) = self.conn.as_mut() else {
            // No body at all (`Framing::Empty`), or one already ended.
            return matches!(self.framing, BodyFraming::Length(0)).then(Bytes::new);
        };
        let BodyFraming::Length(left) = &mut self.framing else {
            return None;
        };
        let n = usize::try_from(*left)
            .ok()
            .filter(|n| *n <= conn.buf.len())?;
        let data = conn.buf.split_to(n).freeze();
        *left = 0;
        self.end();
        Some(data)
    }

    fn end(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.as_ref()) {
            let keep = self.keep_alive && !matches!(self.framing, BodyFraming::Close);
            finish(pool, conn, keep);
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
        match (&self.conn, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), BodyFraming::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
