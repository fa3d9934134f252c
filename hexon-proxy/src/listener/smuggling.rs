//! Request smuggling defences for HTTP/1.x.
//!
//! What hyper (1.x) already refuses with 400 and a closed connection:
//! differing `Content-Length`s, a non-numeric `Content-Length`,
//! `Transfer-Encoding` whose last coding is not `chunked`, and
//! `Transfer-Encoding` on HTTP/1.0.
//!
//! What hyper lets through, and this module refuses:
//! - `Content-Length` together with `Transfer-Encoding`: hyper follows RFC
//!   9112 §6.3 (drops `Content-Length`, closes after the response) and
//!   leaves no trace of it in the request, so an observer on the connection's
//!   read side ([`SniffIo`]) parses each request head itself and queues a
//!   verdict per request, in order; the service wrapper pops it.
//! - `Transfer-Encoding` other than exactly one `chunked` (`gzip, chunked`,
//!   `chunked, chunked`, `\x0bchunked`): visible in the request headers,
//!   checked in [`check_headers`].
//!
//! The observer is fail-open by construction: anything it does not
//! understand (HTTP/2 preface, upgrades, oversized heads, odd chunk framing)
//! stops it for the rest of the connection and requests get no verdict;
//! hyper's own framing stays authoritative, so a confused observer never
//! changes how bytes are framed — it can only fail to add the 400.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-request verdicts from the observer, in request order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Verdicts(Arc<Mutex<VecDeque<Option<&'static str>>>>);

impl Verdicts {
    fn push(&self, v: Option<&'static str>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(v);
    }

    /// The verdict for the next HTTP/1 request (`Some(reason)`: refuse).
    pub(crate) fn pop(&self) -> Option<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .flatten()
    }
}

/// Header checks on a request as the service receives it (any version).
pub(crate) fn check_headers(headers: &HeaderMap) -> Option<&'static str> {
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        let trimmed = trim_ows(first.as_bytes());
        if te.next().is_some() || !trimmed.eq_ignore_ascii_case(b"chunked") {
            return Some("Transfer-Encoding other than a single chunked");
        }
        if headers.contains_key(CONTENT_LENGTH) {
            return Some("both Content-Length and Transfer-Encoding");
        }
    }
    let mut cl = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = cl.next() {
        if cl.any(|v| v != first) || !first.as_bytes().iter().all(u8::is_ascii_digit) {
            return Some("invalid or repeated Content-Length");
        }
    }
    None
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let Some((first, rest)) = b.split_first() {
        if *first == b' ' || *first == b'\t' {
            b = rest;
        } else {
            break;
        }
    }
    while let Some((last, rest)) = b.split_last() {
        if *last == b' ' || *last == b'\t' {
            b = rest;
        } else {
            break;
        }
    }
    b
}

const MAX_LINE: usize = 4096;

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
    Passthrough,
}

/// Follows HTTP/1.x request framing on the bytes hyper reads.
#[derive(Debug)]
pub(crate) struct Observer {
    state: State,
    buf: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    verdicts: Verdicts,
}

impl Observer {
    pub(crate) fn new(max_head: usize, max_headers: usize, verdicts: Verdicts) -> Self {
        Observer {
            state: State::Head,
            buf: Vec::new(),
            max_head,
            max_headers,
            verdicts,
        }
    }

    fn stop(&mut self) {
        self.state = State::Passthrough;
        self.buf = Vec::new();
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        let mut carry: Vec<u8>;
        let mut input = data;
        while !input.is_empty() {
            match &mut self.state {
                State::Passthrough => return,
                State::Body(rem) => {
                    let n = (*rem).min(input.len() as u64);
                    *rem -= n;
                    input = input.get(n as usize..).unwrap_or_default();
                    if *rem == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkData(rem) => {
                    let n = (*rem).min(input.len() as u64);
                    *rem -= n;
                    input = input.get(n as usize..).unwrap_or_default();
                    if *rem == 0 {
                        self.state = State::ChunkCrlf(2);
                    }
                }
                State::ChunkCrlf(rem) => {
                    let want: &[u8] = if *rem == 2 { b"\r\n" } else { b"\n" };
                    let n = usize::from(*rem).min(input.len());
                    if input.get(..n) != want.get(..n) {
                        return self.stop();
                    }
                    input = input.get(n..).unwrap_or_default();
                    // n <= rem <= 2
                    *rem -= n as u8;
                    if *rem == 0 {
                        self.state = State::ChunkSize;
                    }
                }
                State::ChunkSize | State::Trailers => {
                    let Some(lf) = input.iter().position(|&b| b == b'\n') else {
                        self.buf.extend_from_slice(input);
                        if self.buf.len() > MAX_LINE {
                            self.stop();
                        }
                        return;
                    };
                    self.buf
                        .extend_from_slice(input.get(..=lf).unwrap_or_default());
                    input = input.get(lf + 1..).unwrap_or_default();
                    let line = std::mem::take(&mut self.buf);
                    if matches!(self.state, State::Trailers) {
                        if line == b"\r\n" || line == b"\n" {
                            self.state = State::Head;
                        }
                        continue;
                    }
                    match chunk_size(&line) {
                        Some(0) => self.state = State::Trailers,
                        Some(n) => self.state = State::ChunkData(n),
                        None => return self.stop(),
                    }
                }
                // A head that arrived whole is parsed where it lies; only
                // a partial one is kept until the rest comes.
                State::Head if self.buf.is_empty() => match self.head(input) {
                    Head::Partial => {
                        if input.len() > self.max_head {
                            return self.stop();
                        }
                        self.buf.extend_from_slice(input);
                        return;
                    }
                    Head::Stop => return self.stop(),
                    Head::Done(n) => input = input.get(n..).unwrap_or_default(),
                },
                State::Head => {
                    self.buf.extend_from_slice(input);
                    let buf = std::mem::take(&mut self.buf);
                    match self.head(&buf) {
                        Head::Partial => {
                            self.buf = buf;
                            if self.buf.len() > self.max_head {
                                self.stop();
                            }
                            return;
                        }
                        Head::Stop => return self.stop(),
                        Head::Done(n) => {
                            carry = buf;
                            carry.drain(..n.min(carry.len()));
                            input = &carry;
                        }
                    }
                }
            }
        }
    }

    fn head(&mut self, buf: &[u8]) -> Head {
        // Room for the usual number of headers on the stack, uninitialised
        // (this runs for every request); a head with more than that is
        // parsed again with room for as many as the listener allows.
        const FEW: usize = 32;
        let max = self.max_headers.clamp(1, 1024);
        let mut few = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; FEW];
        let (slots, _) = few.split_at_mut(max.min(FEW));
        let mut scanned = scan(buf, slots);
        if matches!(scanned, Err(httparse::Error::TooManyHeaders)) && max > FEW {
            let mut many = Vec::new();
            many.resize_with(max, std::mem::MaybeUninit::uninit);
            scanned = scan(buf, &mut many);
        }
        let Ok(scan) = scanned else {
            return Head::Stop;
        };
        let Some(Scan {
            len,
            te_chunked,
            cl,
            cl_seen,
            upgrade,
            http11,
        }) = scan
        else {
            return Head::Partial;
        };
        let Ok(cl) = cl else {
            // hyper refuses these itself and closes.
            return Head::Stop;
        };
        let verdict = (te_chunked.is_some() && cl_seen)
            .then_some("both Content-Length and Transfer-Encoding");
        self.verdicts.push(verdict);
        if upgrade || !http11 && te_chunked.is_some() {
            // The connection may switch protocols, or hyper refuses it.
            return Head::Stop;
        }
        self.state = match (te_chunked, cl) {
            (Some(true), _) => State::ChunkSize,
            (Some(false), _) => return Head::Stop,
            (None, Some(0)) | (None, None) => State::Head,
            (None, Some(n)) => State::Body(n),
        };
        Head::Done(len)
    }
}

/// What the observer needs from a request head.
struct Scan {
    /// Bytes of the head.
    len: usize,
    /// `Transfer-Encoding` present: whether its last coding is `chunked`.
    te_chunked: Option<bool>,
    /// The `Content-Length` (`Err`: invalid, or several that differ).
    cl: Result<Option<u64>, ()>,
    cl_seen: bool,
    /// `CONNECT`, or an `Upgrade` header.
    upgrade: bool,
    http11: bool,
}

/// Parse a request head into `slots`; `Ok(None)`: not complete yet.
fn scan<'b>(
    buf: &'b [u8],
    slots: &mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Scan>, httparse::Error> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let mut out = Scan {
        len,
        te_chunked: None,
        cl: Ok(None),
        cl_seen: false,
        upgrade: req.method == Some("CONNECT"),
        http11: req.version == Some(1),
    };
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            out.te_chunked = Some(trim_ascii_ws(last).eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            out.cl_seen = true;
            let v = trim_ows(h.value);
            let parsed = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            out.cl = match (parsed, out.cl) {
                (Some(p), Ok(None)) => Ok(Some(p)),
                (Some(p), Ok(Some(c))) if p == c => Ok(Some(c)),
                _ => Err(()),
            };
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            out.upgrade = true;
        }
    }
    Ok(Some(out))
}

enum Head {
    Partial,
    Done(usize),
    Stop,
}

fn trim_ascii_ws(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Hex chunk size before an optional `;extension`, line ending in (CR)LF.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let rest = trim_ows(rest);
    if !rest.is_empty() && !rest.starts_with(b";") {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// An I/O wrapper that shows every byte read to an [`Observer`], and ends
/// a connection that sends nothing at all within its first-byte deadline
/// (hyper's header timeout starts only once a request head begins, and its
/// HTTP/1-or-2 detection waits for the first bytes without a limit: a client
/// that connects and stays silent would otherwise hold a slot forever).
#[derive(Debug)]
pub(crate) struct SniffIo<I> {
    inner: I,
    observer: Observer,
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> SniffIo<I> {
    pub(crate) fn new(
        inner: I,
        observer: Observer,
        first_byte_within: std::time::Duration,
    ) -> Self {
        SniffIo {
            inner,
            observer,
            first_byte: Some(Box::pin(tokio::time::sleep(first_byte_within))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SniffIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                if !matches!(this.observer.state, State::Passthrough) {
                    this.observer
                        .feed(buf.filled().get(before..).unwrap_or_default());
                }
            }
            Poll::Pending => {
                if let Some(deadline) = this.first_byte.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request bytes within the header read timeout",
                        )));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SniffIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<Option<&'static str>> {
        let v = Verdicts::default();
        let mut o = Observer::new(65536, 100, v.clone());
        for c in chunks {
            o.feed(c);
        }
        let q = v.0.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn pipelined_requests_get_one_verdict_each() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            run(&[input]),
            vec![
                None,
                None,
                Some("both Content-Length and Transfer-Encoding")
            ]
        );
        // Same bytes, one at a time.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(&bytes),
            vec![
                None,
                None,
                Some("both Content-Length and Transfer-Encoding")
            ]
        );
    }

    #[test]
    fn heads_with_many_headers_are_followed_up_to_the_listener_limit() {
        // More headers than the observer keeps room for on the stack: the
        // head is parsed again with room for the listener's limit.
        let mut head = b"POST /a HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..60 {
            head.extend_from_slice(format!("X-Filler-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        head.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        let verdict = Some("both Content-Length and Transfer-Encoding");
        assert_eq!(run(&[&head]), vec![verdict, None]);
        let bytes: Vec<&[u8]> = head.chunks(7).collect();
        assert_eq!(run(&bytes), vec![verdict, None]);
        // Past the listener's limit the observer stops (hyper answers 431).
        let v = Verdicts::default();
        let mut o = Observer::new(65536, 40, v.clone());
        o.feed(&head);
        assert!(v.0.lock().unwrap().is_empty());
        assert!(matches!(o.state, State::Passthrough));
    }

    #[test]
    fn a_partial_head_is_kept_and_an_oversized_one_stops() {
        let v = Verdicts::default();
        let mut o = Observer::new(64, 100, v.clone());
        o.feed(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(o.buf.len(), 25);
        o.feed(b"\r\n");
        assert!(o.buf.is_empty());
        assert_eq!(v.0.lock().unwrap().len(), 1);
        // A head longer than the limit, whether it comes in one read or in
        // several, stops the observer instead of growing its buffer.
        let long = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        o.feed(&long);
        assert!(matches!(o.state, State::Passthrough));
        assert!(o.buf.is_empty());
        let mut o = Observer::new(64, 100, Verdicts::default());
        for c in long.chunks(10) {
            o.feed(c);
        }
        assert!(matches!(o.state, State::Passthrough));
    }

    #[test]
    fn body_that_looks_like_a_request_is_not_a_request() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(body);
        assert_eq!(run(&[&input]), vec![None]);
    }

    #[test]
    fn stops_on_upgrade_and_h2_preface() {
        assert_eq!(
            run(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            vec![None]
        );
        assert!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).is_empty());
    }

    #[test]
    fn header_checks() {
        let h = |pairs: &[(&str, &[u8])]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            check_headers(&m)
        };
        assert_eq!(h(&[("transfer-encoding", b"chunked")]), None);
        assert_eq!(h(&[("transfer-encoding", b"Chunked ")]), None);
        assert_eq!(h(&[("content-length", b"5")]), None);
        assert!(h(&[("transfer-encoding", b"gzip, chunked")]).is_some());
        assert!(h(&[("transfer-encoding", b"chunked, chunked")]).is_some());
        assert!(h(&[("transfer-encoding", b"chunked;x")]).is_some());
        assert_eq!(h(&[("transfer-encoding", b" chunked\t")]), None);
        assert!(
            h(&[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked")
            ])
            .is_some()
        );
        assert!(h(&[("transfer-encoding", b"chunked"), ("content-length", b"1")]).is_some());
        assert!(h(&[("content-length", b"1"), ("content-length", b"2")]).is_some());
        assert!(h(&[("content-length", b"+1")]).is_some());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"a\r\n"), Some(10));
        assert_eq!(chunk_size(b"A;x=y\r\n"), Some(10));
        assert_eq!(chunk_size(b"0\n"), Some(0));
        assert_eq!(chunk_size(b"\r\n"), None);
        assert_eq!(chunk_size(b"g\r\n"), None);
        assert_eq!(chunk_size(b"11111111111111111\r\n"), None);
    }
}
