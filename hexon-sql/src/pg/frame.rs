//! Framing of PostgreSQL messages, structural checks of frontend messages
//! before they are handed to pgwire's decoders, and the backend messages the
//! bastion authors itself.
//!
//! Every message is framed by its header (type byte and big-endian `i32`
//! length, which counts itself but not the type byte) and its length is
//! checked against a cap *before* any buffer is reserved for it, so a hostile
//! length prefix never makes the bastion allocate what it claims.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::{DecodeContext, Message, PgWireFrontendMessage, ProtocolVersion};

use crate::request::Refusal;

/// Type byte and length.
pub(crate) const HEADER: usize = 5;

/// Startup-phase packets (SSLRequest, StartupMessage, CancelRequest) have no
/// type byte; PostgreSQL caps them at 10000 bytes and so do we.
pub(crate) const MAX_STARTUP_PACKET: usize = 10_000;

/// A framing error: the peer does not speak the protocol (or is hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A length below the header's own four bytes.
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// A message longer than the cap.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Contents that do not match the message type's layout.
    #[error("malformed {0:?} message")]
    Malformed(char),
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(s.try_into().ok()?))
}

/// The total size (header included) of the typed message at the start of
/// `buf`, once its header is there; `max` caps the body.
///
/// # Errors
/// A length below 4 or a body above `max`.
pub(crate) fn typed_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(len) = be_i32(buf, 1) else {
        return Ok(None);
    };
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let body = len as usize - 4;
    if body > max {
        return Err(FrameError::TooLarge { len: body, max });
    }
    Ok(Some(len as usize + 1))
}

/// Split the next complete typed message (header included) off `buf`.
///
/// # Errors
/// As [`typed_len`].
pub(crate) fn take_typed(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    match typed_len(buf, max)? {
        Some(total) if buf.len() >= total => Ok(Some(buf.split_to(total))),
        _ => Ok(None),
    }
}

/// The size of an untyped startup-phase packet whose length is at the start
/// of `buf`.
///
/// # Errors
/// Shorter than 8 bytes or longer than [`MAX_STARTUP_PACKET`].
pub(crate) fn startup_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(len) = be_i32(buf, 0) else {
        return Ok(None);
    };
    if len < 8 {
        return Err(FrameError::BadLength(len));
    }
    if len as usize > MAX_STARTUP_PACKET {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: MAX_STARTUP_PACKET,
        });
    }
    Ok(Some(len as usize))
}

/// How many more bytes are needed for the message at the start of `buf`
/// (0 if unknown or complete): a hint for reserving buffer space, bounded by
/// the cap already checked.
pub(crate) fn missing(buf: &[u8], max: usize) -> usize {
    match typed_len(buf, max) {
        Ok(Some(total)) => total.saturating_sub(buf.len()),
        _ => 0,
    }
}

/// A cursor over a message body, for the structural checks.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    /// A NUL-terminated name (portal, statement): a few bytes, where a
    /// plain loop beats `memchr`'s set-up (about 200 instructions per
    /// Bind/Execute under `pgbench -M prepared`); `memchr` past the first
    /// 16 bytes.
    fn cstr(&mut self) -> Option<&'a [u8]> {
        const SHORT: usize = 16;
        let head = self.0.get(..SHORT).unwrap_or(self.0);
        let end = match head.iter().position(|&b| b == 0) {
            Some(end) => end,
            None if self.0.len() <= SHORT => return None,
            None => SHORT + memchr::memchr(0, self.0.get(SHORT..)?)?,
        };
        self.split_at_nul(end)
    }
    /// A NUL-terminated text (a statement, a password): long, where
    /// `memchr`'s SIMD search wins.
    fn text(&mut self) -> Option<&'a [u8]> {
        let end = memchr::memchr(0, self.0)?;
        self.split_at_nul(end)
    }
    fn split_at_nul(&mut self, end: usize) -> Option<&'a [u8]> {
        let s = self.0.get(..end)?;
        self.0 = self.0.get(end + 1..)?;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let s: [u8; 2] = self.0.get(..2)?.try_into().ok()?;
        self.skip(2)?;
        Some(u16::from_be_bytes(s))
    }
    fn i32(&mut self) -> Option<i32> {
        let v = be_i32(self.0, 0)?;
        self.skip(4)?;
        Some(v)
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether the body of a frontend message of type `tag` has the layout the
/// protocol defines, exactly (no trailing bytes, counts that fit). pgwire's
/// decoders assume well-formed input; this check is what makes handing them
/// hostile bytes safe.
pub(crate) fn well_formed(tag: u8, body: &[u8]) -> bool {
    let mut c = Cur(body);
    let ok = match tag {
        // Query, PasswordMessage, CopyFail: one string.
        b'Q' | b'p' | b'f' => c.text().is_some(),
        // Parse: name, query, parameter type count and OIDs.
        b'P' => {
            c.cstr().is_some()
                && c.text().is_some()
                && c.u16().and_then(|n| c.skip(4 * usize::from(n))).is_some()
        }
        b'B' => bind_well_formed(&mut c).is_some(),
        // Describe, Close: 'S' or 'P', then a name.
        b'D' | b'C' => matches!(c.u8(), Some(b'S' | b'P')) && c.cstr().is_some(),
        // Execute: portal, max rows.
        b'E' => c.cstr().is_some() && c.i32().is_some(),
        // Sync, Flush, Terminate, CopyDone: empty.
        b'S' | b'H' | b'X' | b'c' => true,
        // CopyData: anything.
        b'd' => return true,
        _ => return false,
    };
    ok && c.done()
}

fn bind_well_formed(c: &mut Cur<'_>) -> Option<()> {
    c.cstr()?;
    c.cstr()?;
    let formats = c.u16()?;
    c.skip(2 * usize::from(formats))?;
    let params = c.u16()?;
    for _ in 0..params {
        let len = c.i32()?;
        if len >= 0 {
            c.skip(len as usize)?;
        } else if len != -1 {
            return None;
        }
    }
    let results = c.u16()?;
    c.skip(2 * usize::from(results))
}

/// Hand each complete typed message at the front of `buf` to `handle`
/// where it lies (no copy), then advance `buf` once past those handled.
/// Stops at an incomplete message, or after a message for which `handle`
/// answers `true` (returned as `Ok(true)`).
///
/// # Errors
/// A length field out of range ([`typed_len`]); the messages before it are
/// handled and consumed, the bad one stays.
pub(crate) fn each_typed(
    buf: &mut BytesMut,
    max: usize,
    mut handle: impl FnMut(&[u8]) -> bool,
) -> Result<bool, FrameError> {
    let mut at = 0;
    let out = loop {
        let rest = buf.get(at..).unwrap_or_default();
        match typed_len(rest, max) {
            Ok(Some(n)) if rest.len() >= n => {
                at += n;
                if handle(rest.get(..n).unwrap_or_default()) {
                    break Ok(true);
                }
            }
            Ok(_) => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    bytes::Buf::advance(buf, at);
    out
}

/// A frontend message of the relay phase, checked (exactly the layout
/// [`well_formed`] accepts) and borrowed from its frame: no copy, no
/// allocation. Names and texts are raw bytes, as the server reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front<'a> {
    /// `Query`: the text (without its NUL).
    Query(&'a [u8]),
    /// `Parse`: statement name, text, and the parameter types as sent
    /// (count and OIDs).
    Parse {
        name: &'a [u8],
        query: &'a [u8],
        types: &'a [u8],
    },
    /// `Bind`: portal and statement names (the rest is checked, not read).
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
    },
    /// `Describe`: `S` (statement) or `P` (portal), and the name.
    Describe { target: u8, name: &'a [u8] },
    /// `Execute`: the portal name.
    Execute { portal: &'a [u8] },
    /// `Close`: `S` or `P`, and the name.
    Close { target: u8, name: &'a [u8] },
    /// `Sync`.
    Sync,
    /// `Flush`.
    Flush,
    /// `Terminate`.
    Terminate,
}

/// The relay-phase message in `frame` (header included).
///
/// # Errors
/// A frame shorter than its header, a body that does not have its type's
/// layout exactly, or a type the protocol does not define for a frontend.
/// `Ok(None)`: well formed, but not a message the relay takes (a password
/// message after login, COPY messages, `FunctionCall`).
pub(crate) fn front(frame: &[u8]) -> Result<Option<Front<'_>>, FrameError> {
    let tag = frame.first().copied().unwrap_or(0);
    let bad = || FrameError::Malformed(char::from(tag));
    let body = frame.get(HEADER..).ok_or_else(bad)?;
    let mut c = Cur(body);
    let m = match tag {
        b'Q' => c.text().map(Front::Query),
        b'P' => (|| {
            let name = c.cstr()?;
            let query = c.text()?;
            let types = c.0;
            let n = c.u16()?;
            c.skip(4 * usize::from(n))?;
            Some(Front::Parse { name, query, types })
        })(),
        b'B' => (|| {
            let mut probe = Cur(body);
            bind_well_formed(&mut probe)?;
            c = probe;
            let mut names = Cur(body);
            let portal = names.cstr()?;
            let statement = names.cstr()?;
            Some(Front::Bind { portal, statement })
        })(),
        b'D' | b'C' => (|| {
            let target = c.u8()?;
            if !matches!(target, b'S' | b'P') {
                return None;
            }
            let name = c.cstr()?;
            Some(if tag == b'D' {
                Front::Describe { target, name }
            } else {
                Front::Close { target, name }
            })
        })(),
        b'E' => (|| {
            let portal = c.cstr()?;
            c.i32()?;
            Some(Front::Execute { portal })
        })(),
        b'S' => Some(Front::Sync),
        b'H' => Some(Front::Flush),
        b'X' => Some(Front::Terminate),
        _ => {
            return if well_formed(tag, body) {
                Ok(None)
            } else {
                Err(bad())
            };
        }
    };
    match m {
        Some(m) if c.done() => Ok(Some(m)),
        _ => Err(bad()),
    }
}

/// Append a message of type `tag` whose body is `parts`, one after the
/// other. A body too long for the length field is dropped (and logged), as
/// [`put`] drops a message that does not encode.
pub(crate) fn put_parts(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let Some(len) = body.checked_add(4).and_then(|n| i32::try_from(n).ok()) else {
        tracing::error!(len = body, "could not encode a message: too long");
        return;
    };
    out.reserve(body + HEADER);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&len.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// The decode context after startup (protocol 3.0, no negotiation pending).
pub(crate) fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Decode one complete, structurally checked frontend message with pgwire.
///
/// # Errors
/// A message that is malformed or of a type pgwire does not know.
pub(crate) fn decode_frontend(mut frame: BytesMut) -> Result<PgWireFrontendMessage, FrameError> {
    let tag = frame.first().copied().unwrap_or(0);
    if !frame
        .get(HEADER..)
        .is_some_and(|body| well_formed(tag, body))
    {
        return Err(FrameError::Malformed(char::from(tag)));
    }
    match PgWireFrontendMessage::decode(&mut frame, &context()) {
        Ok(Some(m)) => Ok(m),
        _ => Err(FrameError::Malformed(char::from(tag))),
    }
}

/// Append an encoded message we author to `out`. Our messages are small and
/// well under pgwire's limits; should one ever not encode, it is dropped
/// (and logged) rather than sending a half-written frame.
pub(crate) fn put<M: Message>(out: &mut BytesMut, msg: &M) {
    let mark = out.len();
    if let Err(e) = msg.encode(out) {
        out.truncate(mark);
        tracing::error!(error = %e, "could not encode a backend message");
    }
}

/// Severity of an error we author.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// Append an `ErrorResponse`.
pub(crate) fn error(
    out: &mut BytesMut,
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut fields = vec![
        (b'S', sev.to_owned()),
        (b'V', sev.to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_owned()));
    }
    put(out, &ErrorResponse::new(fields));
}

/// The `ErrorResponse` for a statement the pipeline refused: the refusal's
/// SQLSTATE and reason, and the stage in the detail.
pub(crate) fn refusal_error(out: &mut BytesMut, refusal: &Refusal) {
    let detail = format!(
        "refused by the hexon-sql bastion at stage {} ({})",
        refusal.stage, refusal.code
    );
    error(
        out,
        Severity::Error,
        refusal.sqlstate(),
        &refusal.reason,
        Some(&detail),
    );
}

/// Append a `ReadyForQuery` with the transaction status byte `status`
/// (`I`, `T` or `E`; anything else is reported as idle).
pub(crate) fn ready(out: &mut BytesMut, status: u8) {
    let status = TransactionStatus::try_from(status).unwrap_or(TransactionStatus::Idle);
    put(out, &ReadyForQuery::new(status));
}

/// Append a raw frame header (for messages we re-frame ourselves).
#[cfg(test)]
pub(crate) fn header(out: &mut BytesMut, tag: u8, body_len: usize) {
    use bytes::BufMut;
    out.put_u8(tag);
    out.put_i32(i32::try_from(body_len + 4).unwrap_or(i32::MAX));
}

/// A whole message of type `tag` with `body` (for tests).
#[cfg(test)]
pub(crate) fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = BytesMut::new();
    header(&mut f, tag, body.len());
    f.extend_from_slice(body);
    f.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_end_at_the_first_nul_at_every_length() {
        // Around the point where the short loop hands over to `memchr`.
        for len in 0..40 {
            for nul in (0..len).chain([usize::MAX]) {
                let mut buf: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                if let Some(b) = buf.get_mut(nul) {
                    *b = 0;
                }
                // A second NUL later: the first one ends the string.
                buf.extend_from_slice(b"z\0");
                let want = buf.iter().position(|&b| b == 0).unwrap();
                for text in [false, true] {
                    let mut c = Cur(&buf);
                    let got = if text { c.text() } else { c.cstr() };
                    assert_eq!(got, buf.get(..want), "len {len} nul {nul}");
                    assert_eq!(c.0, buf.get(want + 1..).unwrap());
                }
            }
            let unterminated = vec![b'a'; len];
            assert_eq!(Cur(&unterminated).cstr(), None, "len {len}");
            assert_eq!(Cur(&unterminated).text(), None, "len {len}");
        }
    }

    #[test]
    fn lengths_are_checked_before_anything_is_reserved() {
        // 2 GiB claimed.
        let buf = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            typed_len(&buf, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(missing(&buf, 1 << 20), 0);
        // Negative and too small.
        assert_eq!(
            typed_len(&[b'Q', 0xff, 0xff, 0xff, 0xff], 10),
            Err(FrameError::BadLength(-1))
        );
        assert_eq!(
            typed_len(&[b'Q', 0, 0, 0, 3], 10),
            Err(FrameError::BadLength(3))
        );
        // Incomplete header, incomplete body, complete.
        assert_eq!(typed_len(&[b'Q', 0, 0], 10), Ok(None));
        let mut b = BytesMut::from(&[b'S', 0, 0, 0, 4, b'Q', 0, 0, 0, 6, b'x'][..]);
        assert_eq!(
            take_typed(&mut b, 10).unwrap().unwrap().as_ref(),
            &[b'S', 0, 0, 0, 4]
        );
        assert_eq!(take_typed(&mut b, 10), Ok(None));
        assert_eq!(missing(&b, 10), 1);
        assert!(matches!(
            startup_len(&[0x7f, 0, 0, 0]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(startup_len(&[0, 0, 0, 4]), Err(FrameError::BadLength(4)));
    }

    #[test]
    fn structure_is_checked() {
        assert!(well_formed(b'Q', b"select 1\0"));
        assert!(!well_formed(b'Q', b"select 1"));
        assert!(!well_formed(b'Q', b"a\0b"));
        assert!(well_formed(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17"));
        assert!(!well_formed(b'P', b"s1\0select $1\0\0\x02\0\0\0\x17"));
        assert!(!well_formed(b'P', b""));
        // Bind: portal, statement, no formats, one param of 2 bytes, one NULL, no result formats.
        let bind = b"\0s1\0\0\0\0\x02\0\0\0\x02hi\xff\xff\xff\xff\0\0";
        assert!(well_formed(b'B', bind));
        assert!(!well_formed(b'B', &bind[..bind.len() - 1]));
        let huge = b"\0s1\0\0\0\0\x01\x7f\xff\xff\xff\0\0";
        assert!(!well_formed(b'B', huge));
        assert!(well_formed(b'D', b"Sname\0"));
        assert!(!well_formed(b'D', b"Xname\0"));
        assert!(well_formed(b'E', b"\0\0\0\0\0"));
        assert!(!well_formed(b'S', b"x"));
        assert!(!well_formed(b'F', b""));
        assert!(decode_frontend(BytesMut::from(&b"P\0\0\0\x04"[..])).is_err());
        let mut q = BytesMut::new();
        header(&mut q, b'Q', 9);
        q.extend_from_slice(b"select 1\0");
        assert!(matches!(
            decode_frontend(q),
            Ok(PgWireFrontendMessage::Query(_))
        ));
    }

    #[test]
    fn front_borrows_exactly_what_well_formed_accepts() {
        let bind = b"p1\0s1\0\0\x01\0\x01\0\x02\0\0\0\x02hi\xff\xff\xff\xff\0\x01\0\x01";
        assert_eq!(
            front(&framed(b'B', bind)),
            Ok(Some(Front::Bind {
                portal: b"p1",
                statement: b"s1"
            }))
        );
        assert_eq!(
            front(&framed(b'P', b"s\0select $1\0\0\x01\0\0\0\x17")),
            Ok(Some(Front::Parse {
                name: b"s",
                query: b"select $1",
                types: b"\0\x01\0\0\0\x17"
            }))
        );
        assert_eq!(
            front(&framed(b'Q', b"select 1\0")),
            Ok(Some(Front::Query(b"select 1")))
        );
        assert_eq!(
            front(&framed(b'E', b"p\0\0\0\0\x05")),
            Ok(Some(Front::Execute { portal: b"p" }))
        );
        assert_eq!(
            front(&framed(b'D', b"P\0")),
            Ok(Some(Front::Describe {
                target: b'P',
                name: b""
            }))
        );
        assert_eq!(
            front(&framed(b'C', b"Sx\0")),
            Ok(Some(Front::Close {
                target: b'S',
                name: b"x"
            }))
        );
        assert_eq!(front(&framed(b'S', b"")), Ok(Some(Front::Sync)));
        // Well formed, but not for the relay.
        assert_eq!(front(&framed(b'p', b"secret\0")), Ok(None));
        // Everything else is refused, and agrees with well_formed.
        let cases: &[(u8, &[u8])] = &[
            (b'B', b"p1\0s1\0\0\0\0\x01\0\0\0\x09hi\0\0"), // parameter past the end
            (b'B', b"p1\0s1\0\0\0\0\x01\xff\xff\xff\xfe\0\0"), // length -2
            (b'B', b"p1\0s1\0\0\x02\0\x01\0\0\0\0"),       // formats past the end
            (b'B', b"p1\0s1"),                             // names unterminated
            (b'B', b"p1\0s1\0\0\0\0\0\0\0\0"),             // trailing bytes
            (b'P', b"s\0select 1\0\0\x01"),                // OID count past the end
            (b'P', b"s\0select 1"),
            (b'Q', b"select 1"),
            (b'Q', b"a\0b\0"),
            (b'E', b"p\0\0\0"),
            (b'E', b"p"),
            (b'D', b"Xs\0"),
            (b'D', b""),
            (b'C', b"P"),
            (b'S', b"\0"),
            (b'H', b"x"),
            (b'X', b"x"),
            (b'~', b""),
            (b'F', b""),
        ];
        for (tag, body) in cases {
            assert!(!well_formed(*tag, body), "{} {body:?}", char::from(*tag));
            assert_eq!(
                front(&framed(*tag, body)),
                Err(FrameError::Malformed(char::from(*tag))),
                "{} {body:?}",
                char::from(*tag)
            );
        }
        // Shorter than a header.
        assert!(front(b"Q\0\0").is_err());
        assert!(front(b"").is_err());
    }

    #[test]
    fn put_parts_frames_its_parts() {
        let mut out = BytesMut::new();
        put_parts(&mut out, b'Q', &[b"select 1", b"\0"]);
        assert_eq!(&out[..], b"Q\0\0\0\x0dselect 1\0");
        assert_eq!(front(&out), Ok(Some(Front::Query(b"select 1"))));
    }
}
