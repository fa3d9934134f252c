//! HTTP/1.1 from upstreams without I/O: reading a response head and its
//! framing, and decoding a chunked body.
//!
//! Why our own and not hyper's client connection: hyper runs each upstream
//! connection as a task of its own and hands requests and responses to it
//! over channels, about 14,000 instructions per request on the proxy's hot
//! path (docs/BENCHMARKS.md, "2026-12-05: upstream HTTP/1.1 in the
//! request's own task"). The express lane ([`crate::express`]) reads and
//! writes its upstream connections ([`super::h1conns`]) in the task that
//! serves the client instead; this module is the protocol it speaks. Heads
//! are parsed by `httparse` (hyper's parser); what is ours is small and
//! strict:
//!
//! - **Framing** (RFC 9112 §6.3): no body for `HEAD`, 1xx, 204 and 304;
//!   `Transfer-Encoding` must be exactly `chunked`, and never together with
//!   `Content-Length` (refused: a response-splitting sign, and a proxy
//!   cannot know which framing the upstream meant); every `Content-Length`
//!   must be the same run of digits; neither means "until the connection
//!   closes".
//! - **Chunked decoding** (RFC 9112 §7.1): hexadecimal sizes that fit in
//!   63 bits, extensions skipped but bounded and free of control bytes,
//!   `CRLF` (never a bare `LF`) after every line and chunk, trailers parsed
//!   as header fields under the same limits as a head.
//! - Interim (1xx) responses are skipped; `101` is refused (this path never
//!   asks for an upgrade).
//!
//! Anything else is an error naming what was wrong; the connection is then
//! closed, never reused.

use std::fmt;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// Largest response head (status line and fields), and largest trailer
/// section.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head or trailer section.
pub(crate) const MAX_HEADERS: usize = 100;
/// Fields parsed with the small table (see [`read_response_head`]).
const FEW_HEADERS: usize = 24;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// A violation of HTTP/1.1 by the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub(crate) &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream HTTP/1.1: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// How a response body is delimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    /// The head's bytes; the fields a client may see are offsets into it
    /// (see [`read_response_head`]).
    pub(crate) head: Bytes,
    pub(crate) framing: Framing,
    /// The connection may carry another request after this response.
    pub(crate) keep_alive: bool,
    /// The `Content-Length` sent (every one the same), if any.
    pub(crate) declared: Option<u64>,
    /// A `Date` field is among the fields.
    pub(crate) date: bool,
}

impl ResponseHead {
    /// A field's name and value, by its offsets.
    pub(crate) fn field(&self, [ns, ne, vs, ve]: [usize; 4]) -> (&[u8], &[u8]) {
        (
            self.head.get(ns..ne).unwrap_or_default(),
            self.head.get(vs..ve).unwrap_or_default(),
        )
    }
}

/// Parse the final response head at the start of `buf`, skipping (and
/// consuming) interim 1xx responses. `Ok(None)`: more bytes are needed.
/// On success the head's bytes are consumed from `buf`, and `fields` holds
/// the offsets (name start and end, value start and end) of the fields a
/// client may see, in order: all but the hop-by-hop ones (read for framing
/// and left out, as the proxy removes them), the ones a `Connection` field
/// names (except those the proxy protects) and `Content-Length` (framing:
/// [`ResponseHead::declared`]).
pub(crate) fn read_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
    fields: &mut Vec<[usize; 4]>,
) -> Result<Option<ResponseHead>, ProtocolError> {
    loop {
        // Most answers have few fields: a small table first (filling
        // a hundred empty slots costs more than parsing), the full one when
        // it overflows.
        let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
        let mut many;
        let mut res = httparse::Response::new(&mut few);
        let mut parsed = res.parse(buf);
        if parsed == Err(httparse::Error::TooManyHeaders) {
            many = [httparse::EMPTY_HEADER; MAX_HEADERS];
            res = httparse::Response::new(&mut many);
            parsed = res.parse(buf);
        }
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_HEAD {
                    Err(ProtocolError("response head too large"))
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProtocolError("too many response header fields"));
            }
            Err(_) => return Err(ProtocolError("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(ProtocolError("response head too large"));
        }
        let code = res.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| ProtocolError("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtocolError("101 Switching Protocols without an upgrade"));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = match res.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let base = buf.as_ptr() as usize;
        let at = |b: &[u8]| {
            (b.as_ptr() as usize)
                .checked_sub(base)
                .filter(|s| s + b.len() <= len)
                .ok_or(ProtocolError("invalid header field"))
        };
        fields.clear();
        let mut frame = FramingFields::default();
        let mut date = false;
        // `Connection` values naming other fields (offsets).
        let mut named: Option<Vec<[usize; 2]>> = None;
        for h in res.headers.iter() {
            let name = h.name.as_bytes();
            // What a header map accepts, httparse already checked: names
            // are tokens, and values (without obsolete line folding, which
            // is not enabled) hold only tab, space, visible ASCII and
            // bytes from 0x80 — no control bytes, no DEL; see
            // `malformed_heads_are_refused`.
            let kind = frame.see(name, h.value)?;
            let v = at(h.value)?;
            match kind {
                // A value naming only `keep-alive` names a hop-by-hop
                // field, gone anyway; anything else is read below.
                Seen::Connection(true) => {
                    named
                        .get_or_insert_with(Vec::new)
                        .push([v, v + h.value.len()]);
                }
                Seen::HopByHop | Seen::Connection(false) | Seen::Length => {}
                Seen::Other => {
                    date |= name.eq_ignore_ascii_case(b"date");
                    let n = at(name)?;
                    fields.push([n, n + name.len(), v, v + h.value.len()]);
                }
            }
        }
        let head = buf.split_to(len).freeze();
        if let Some(named) = named {
            // As the proxy's hop-by-hop hygiene: what `Connection` names
            // goes, except the fields the proxy protects.
            let names = |value: &[usize; 2]| -> Vec<Vec<u8>> {
                head.get(value[0]..value[1])
                    .unwrap_or_default()
                    .split(|b| *b == b',')
                    .map(|t| t.trim_ascii().to_ascii_lowercase())
                    .filter(|t| {
                        !t.is_empty()
                            && !std::str::from_utf8(t).is_ok_and(super::forward::is_protected_str)
                    })
                    .collect()
            };
            let doomed: Vec<Vec<u8>> = named.iter().flat_map(names).collect();
            fields.retain(|f| {
                let name = head.get(f[0]..f[1]).unwrap_or_default();
                !doomed.iter().any(|d| d.eq_ignore_ascii_case(name))
            });
            date = fields.iter().any(|f| {
                head.get(f[0]..f[1])
                    .is_some_and(|n| n.eq_ignore_ascii_case(b"date"))
            });
        }
        let framing = frame.framing(status, request_method)?;
        let keep_alive = version == Version::HTTP_11 && framing != Framing::Close && !frame.close;
        return Ok(Some(ResponseHead {
            status,
            head,
            framing,
            keep_alive,
            declared: frame.length,
            date,
        }));
    }
}

/// What kind of field [`FramingFields::see`] saw.
enum Seen {
    /// `Connection` (read; never passed on), and whether it names anything
    /// but `keep-alive`.
    Connection(bool),
    /// Another hop-by-hop field (read or not; never passed on).
    HopByHop,
    /// `Content-Length` (framing).
    Length,
    /// Anything else.
    Other,
}

/// What the framing fields of a response said.
#[derive(Default)]
struct FramingFields {
    /// `Transfer-Encoding` fields seen, and whether the (single) one was
    /// exactly `chunked`.
    te: usize,
    chunked: bool,
    length: Option<u64>,
    /// `Connection` lists `close`.
    close: bool,
}

impl FramingFields {
    fn see(&mut self, name: &[u8], value: &[u8]) -> Result<Seen, ProtocolError> {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te += 1;
            self.chunked = trim(value).eq_ignore_ascii_case(b"chunked");
            Ok(Seen::HopByHop)
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value)?;
            if self.length.is_some_and(|l| l != n) {
                return Err(ProtocolError("differing Content-Length values"));
            }
            self.length = Some(n);
            Ok(Seen::Length)
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut names = false;
            for token in value.split(|b| *b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                    names = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    names = true;
                }
            }
            Ok(Seen::Connection(names))
        } else if super::forward::is_hop_by_hop_bytes(name) {
            Ok(Seen::HopByHop)
        } else {
            Ok(Seen::Other)
        }
    }

    fn framing(&self, status: StatusCode, method: &Method) -> Result<Framing, ProtocolError> {
        if self.te > 0 {
            if self.te > 1 || !self.chunked {
                return Err(ProtocolError("Transfer-Encoding other than chunked"));
            }
            if self.length.is_some() {
                return Err(ProtocolError("both Transfer-Encoding and Content-Length"));
            }
        }
        // RFC 9112 §6.3, rules 1–2: these never have a body, whatever the
        // fields say (the fields were still checked above).
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        Ok(match (self.te > 0, self.length) {
            (true, _) => Framing::Chunked,
            (false, Some(0)) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        })
    }
}

/// Header fields parsed by `httparse` (a trailer section), copied.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, ProtocolError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| ProtocolError("invalid header name"))?;
        let value =
            HeaderValue::from_bytes(f.value).map_err(|_| ProtocolError("invalid header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn parse_length(v: &[u8]) -> Result<u64, ProtocolError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError("invalid Content-Length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// What [`Chunked::decode`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section; the body has ended.
    Trailers(HeaderMap),
    /// The body has ended (no trailers).
    End,
    /// More input is needed.
    NeedMore,
}

/// A chunked-body decoder (RFC 9112 §7.1).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the `CRLF` after chunk data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body has ended.
    Done,
}

impl Chunked {
    /// Decode from the start of `buf`, consuming what was decoded.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Size => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(buf.get(..end).unwrap_or_default())?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if !buf.starts_with(b"\r\n") {
                        return Err(ProtocolError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Decoded::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, fields))) => (len, fields),
                        Ok(httparse::Status::Partial) => {
                            return if buf.len() > MAX_HEAD {
                                Err(ProtocolError("trailer section too large"))
                            } else {
                                Ok(Decoded::NeedMore)
                            };
                        }
                        Err(httparse::Error::TooManyHeaders) => {
                            return Err(ProtocolError("too many trailer fields"));
                        }
                        Err(_) => return Err(ProtocolError("malformed trailer section")),
                    };
                    if len > MAX_HEAD {
                        return Err(ProtocolError("trailer section too large"));
                    }
                    let trailers = header_map(fields)?;
                    buf.advance(len);
                    self.state = ChunkState::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }
}

/// The offset of the first `CRLF` in `buf`, looking at most `max` bytes;
/// an `LF` without `CR`, or no `CRLF` within `max`, is an error.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    let window = buf.get(..max).unwrap_or(buf);
    match window.iter().position(|b| *b == b'\n') {
        Some(i) if i > 0 && window.get(i - 1) == Some(&b'\r') => Ok(Some(i - 1)),
        Some(_) => Err(ProtocolError("bare LF in chunked framing")),
        None if buf.len() >= max => Err(ProtocolError("chunk-size line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (without its `CRLF`): hexadecimal digits,
/// then optional extensions (`;name[=value]`, whitespace around), which
/// are skipped.
fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, rest) = line.split_at_checked(digits).unwrap_or((line, &[]));
    if hex.is_empty() {
        return Err(ProtocolError("chunk size is not hexadecimal"));
    }
    let mut size: u64 = 0;
    for d in hex {
        let v = u64::from(match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        });
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .filter(|s| *s <= i64::MAX as u64)
            .ok_or(ProtocolError("chunk size too large"))?;
    }
    let rest = trim(rest);
    if !rest.is_empty() {
        // Extensions: must start with ';' and hold no control bytes other
        // than HTAB (a CR here would hide a line break).
        if !rest.starts_with(b";") || !super::forward::is_valid_value(rest) {
            return Err(ProtocolError("malformed chunk extension"));
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> Result<Option<ResponseHead>, ProtocolError> {
        Ok(with_fields(raw, method)?.map(|(h, _)| h))
    }

    /// Fields as `(name, value)` text.
    type Fields = Vec<(String, String)>;

    /// The head and its client-visible fields.
    fn with_fields(
        raw: &str,
        method: &Method,
    ) -> Result<Option<(ResponseHead, Fields)>, ProtocolError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        let mut fields = Vec::new();
        let Some(h) = read_response_head(&mut buf, method, &mut fields)? else {
            return Ok(None);
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let list = fields
            .iter()
            .map(|&f| {
                let (n, v) = h.field(f);
                (text(n), text(v))
            })
            .collect();
        Ok(Some((h, list)))
    }

    fn fields_of(raw: &str) -> Fields {
        with_fields(raw, &Method::GET)
            .unwrap_or_default()
            .map(|(_, f)| f)
            .unwrap_or_default()
    }

    fn pairs(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn framing_of(raw: &str) -> Result<Framing, ProtocolError> {
        Ok(head(raw, &Method::GET)?.expect("complete").framing)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing_of(&format!("{ok}content-length: 12\r\n\r\n")),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing_of(&format!("{ok}content-length: 0\r\n\r\n")),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing_of(&format!("{ok}Transfer-Encoding:  Chunked \r\n\r\n")),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing_of(&format!("{ok}\r\n")), Ok(Framing::Close));
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok(Framing::Empty)
        );
        let h = head(&format!("{ok}content-length: 9\r\n\r\n"), &Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        // Equal repeats are one length.
        assert_eq!(
            framing_of(&format!(
                "{ok}content-length: 7\r\ncontent-length: 7\r\n\r\n"
            )),
            Ok(Framing::Length(7))
        );
    }

    #[test]
    fn ambiguous_or_malformed_framing_is_refused() {
        let ok = "HTTP/1.1 200 OK\r\n";
        for (fields, why) in [
            (
                "content-length: 3\r\ntransfer-encoding: chunked\r\n",
                "both Transfer-Encoding and Content-Length",
            ),
            (
                "content-length: 3\r\ncontent-length: 4\r\n",
                "differing Content-Length values",
            ),
            ("content-length: 3, 3\r\n", "invalid Content-Length"),
            ("content-length: -1\r\n", "invalid Content-Length"),
            ("content-length: +5\r\n", "invalid Content-Length"),
            ("content-length: 0x10\r\n", "invalid Content-Length"),
            ("content-length: \r\n", "invalid Content-Length"),
            (
                "content-length: 99999999999999999999\r\n",
                "invalid Content-Length",
            ),
            (
                "transfer-encoding: gzip, chunked\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                "transfer-encoding: identity\r\n",
                "Transfer-Encoding other than chunked",
            ),
        ] {
            let err = framing_of(&format!("{ok}{fields}\r\n")).unwrap_err();
            assert_eq!(err.0, why, "{fields:?}");
        }
        // Still checked where no body follows.
        assert!(framing_of("HTTP/1.1 204 No Content\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn malformed_heads_are_refused() {
        for raw in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx y: a\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        ] {
            assert!(head(raw, &Method::GET).is_err(), "{raw:?}");
        }
        // Every byte a header map refuses in a value, in a short value and
        // in long ones (httparse reads those 32 or 16 bytes at a time).
        for b in (0u8..0x20).filter(|b| *b != b'\t').chain([0x7f]) {
            for pad in [0, 20, 40, 100] {
                let mut raw = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
                raw.extend(std::iter::repeat_n(b'a', pad));
                raw.push(b);
                raw.extend_from_slice(b"b\r\ny: c\r\n\r\n");
                let mut buf = BytesMut::from(&raw[..]);
                let mut fields = Vec::new();
                let read = read_response_head(&mut buf, &Method::GET, &mut fields);
                assert!(read.is_err(), "byte {b:#04x} after {pad}");
            }
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &Method::GET)
                .unwrap_err()
                .0,
            "too many response header fields"
        );
        // A head that never ends is cut at the limit, not buffered forever.
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            head(&endless, &Method::GET).unwrap_err().0,
            "response head too large"
        );
        assert!(
            head("HTTP/1.1 200 OK\r\nx: a", &Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn hop_by_hop_fields_are_read_not_returned() {
        let raw = "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\nx-app: 1\r\n\r\n";
        assert_eq!(framing_of(raw), Ok(Framing::Chunked));
        assert_eq!(fields_of(raw), pairs(&[("x-app", "1")]));
        // What Connection names goes too, except the fields the proxy
        // protects; Content-Length is framing, Date is noted.
        let raw = "HTTP/1.1 200 OK\r\nX-Secret: 1\r\nconnection: X-secret, content-type, close\r\nContent-Type: a/b\r\nClose: x\r\ncontent-length: 0\r\nDate: d\r\nx-b: 2\r\n\r\n";
        let (h, f) = with_fields(raw, &Method::GET).unwrap().unwrap();
        assert_eq!(
            f,
            pairs(&[("Content-Type", "a/b"), ("Date", "d"), ("x-b", "2")])
        );
        assert_eq!((h.declared, h.date, h.keep_alive), (Some(0), true, false));
        // A Connection naming a Date takes the note with it.
        let raw = "HTTP/1.1 200 OK\r\nDate: d\r\nConnection: date\r\ncontent-length: 0\r\n\r\n";
        let (h, f) = with_fields(raw, &Method::GET).unwrap().unwrap();
        assert!(f.is_empty() && !h.date && h.keep_alive);
        // More fields than the small table holds.
        let many: String = (0..60).map(|i| format!("x-{i}: {i}\r\n")).collect();
        let f = fields_of(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"));
        assert_eq!(f.len(), 60);
        assert_eq!(f[59], ("x-59".to_owned(), "59".to_owned()));
    }

    #[test]
    fn interim_responses_are_skipped_and_keep_alive_read() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        let mut fields = Vec::new();
        let h = read_response_head(&mut buf, &Method::GET, &mut fields)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.keep_alive);
        assert!(
            fields.is_empty(),
            "the interim answers' fields are not the final one's"
        );
        assert_eq!(&buf[..], b"hi");
        for raw in [
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                !head(raw, &Method::GET).unwrap().unwrap().keep_alive,
                "{raw:?}"
            );
        }
    }

    /// Decode `input` fed in pieces of `step` bytes; the body and trailers.
    fn decode_in_steps(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ProtocolError> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t))),
                Decoded::End => return Ok((body, None)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(ProtocolError("input ended"));
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let input =
            b"5;ext=\"v\"\r\nhello\r\nA \r\n, world!!!\r\n000\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        for step in 1..input.len() {
            let (body, trailers) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"hello, world!!!");
            let t = trailers.unwrap();
            assert_eq!(t["x-sum"], "1");
            assert_eq!(t["x-b"], "2");
        }
        let (body, trailers) = decode_in_steps(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for (input, why) in [
            (&b"x\r\n"[..], "chunk size is not hexadecimal"),
            (b";a\r\n", "chunk size is not hexadecimal"),
            (b"-1\r\n", "chunk size is not hexadecimal"),
            (b"3\nabc\r\n", "bare LF in chunked framing"),
            (b"\n", "bare LF in chunked framing"),
            (b"3\r\nabcX\r\n", "chunk data not followed by CRLF"),
            (b"3\r\nabc\n0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"3 x\r\nabc\r\n", "malformed chunk extension"),
            (b"3;a\rb\r\nabc\r\n", "malformed chunk extension"),
            (b"10000000000000000\r\n", "chunk size too large"),
            (b"8000000000000000\r\n", "chunk size too large"),
            (b"0\r\nbad trailer\r\n\r\n", "malformed trailer section"),
        ] {
            assert_eq!(
                decode_in_steps(input, input.len()).unwrap_err().0,
                why,
                "{input:?}"
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            decode_in_steps(long.as_bytes(), 64).unwrap_err().0,
            "chunk-size line too long"
        );
        let mut big = b"0\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 1));
        assert_eq!(
            decode_in_steps(&big, 1024).unwrap_err().0,
            "trailer section too large"
        );
    }

    #[test]
    fn a_huge_chunk_is_streamed_not_buffered() {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::from(&b"7fffffffffffffff\r\nabc"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::NeedMore));
        assert_eq!(dec.state, ChunkState::Data(0x7fff_ffff_ffff_ffff - 3));
    }
}
