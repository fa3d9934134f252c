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
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
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
        b'Q' | b'p' | b'f' => c.cstr().is_some(),
        // Parse: name, query, parameter type count and OIDs.
        b'P' => {
            c.cstr().is_some()
                && c.cstr().is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
