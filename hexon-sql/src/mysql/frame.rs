//! Framing of MySQL packets (a three-byte little-endian payload length and
//! a sequence id), and the few packets the bastion writes itself.
//!
//! A payload of exactly `0xFF_FFFF` bytes means the logical packet goes on
//! in the next physical packet; the relay forwards such continuations
//! without classifying them. Every length is checked against a cap before
//! any buffer is reserved for it.

use bytes::{BufMut, BytesMut};
use mysql_common::packets::{ErrPacket, ServerError, SqlState};
use mysql_common::proto::MySerialize;

/// Payload length and sequence id.
pub(crate) const HEADER: usize = 4;
/// The largest physical payload; a payload this long continues in the next
/// packet.
pub(crate) const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Server status flags the relay reads.
pub(crate) const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
pub(crate) const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
pub(crate) const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// A framing error: the peer does not speak the protocol (or is hostile).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A packet longer than the cap.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// One physical packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) seq: u8,
    pub(crate) payload: BytesMut,
}

impl Packet {
    /// The first payload byte (the command, or the response's kind).
    pub(crate) fn kind(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// The payload goes on in the next packet.
    pub(crate) fn continues(&self) -> bool {
        self.payload.len() == MAX_PAYLOAD
    }
}

/// The payload length announced at the start of `buf`, once its header is
/// there.
fn payload_len(buf: &[u8]) -> Option<usize> {
    let [a, b, c, _seq] = *buf.first_chunk::<HEADER>()?;
    Some(usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16)
}

/// A little-endian `u16` at `at`.
pub(crate) fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(*p.get(at..)?.first_chunk::<2>()?))
}

/// A little-endian `u32` at `at`.
pub(crate) fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*p.get(at..)?.first_chunk::<4>()?))
}

/// Take one complete packet from the start of `buf`; `max` caps the payload.
///
/// # Errors
/// A payload longer than `max`.
pub(crate) fn take(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, FrameError> {
    let Some(len) = payload_len(buf) else {
        return Ok(None);
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let mut p = buf.split_to(HEADER + len);
    let payload = p.split_off(HEADER);
    let seq = p.last().copied().unwrap_or_default();
    Ok(Some(Packet { seq, payload }))
}

/// Bytes still missing for the packet in progress (bounded by `max`).
pub(crate) fn missing(buf: &[u8], max: usize) -> usize {
    match payload_len(buf) {
        Some(len) => (HEADER + len.min(max)).saturating_sub(buf.len()),
        None => HEADER - buf.len().min(HEADER),
    }
}

/// Append one physical packet as it came: `payload` is at most
/// [`MAX_PAYLOAD`] bytes (what [`take`] returns), a continued payload
/// included, so a 16 MiB row relayed chunk by chunk stays intact.
pub(crate) fn forward(out: &mut BytesMut, seq: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    out.reserve(HEADER + payload.len());
    out.put_uint_le(payload.len() as u64, 3);
    out.put_u8(seq);
    out.put_slice(payload);
}

/// Append a whole message: split into [`MAX_PAYLOAD`] chunks when longer
/// (and ended by a shorter, possibly empty, packet), never cut. Returns the
/// sequence id after the last packet.
pub(crate) fn put(out: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_PAYLOAD));
        forward(out, seq, chunk);
        seq = seq.wrapping_add(1);
        if chunk.len() < MAX_PAYLOAD {
            return seq;
        }
        rest = tail;
    }
}

/// Append a command (sequence id 0): the command byte, then `body`.
pub(crate) fn put_command(out: &mut BytesMut, command: u8, body: &[u8]) {
    if body.len() < MAX_PAYLOAD - 1 {
        out.reserve(HEADER + 1 + body.len());
        out.put_uint_le(1 + body.len() as u64, 3);
        out.put_u8(0);
        out.put_u8(command);
        out.put_slice(body);
    } else {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(command);
        payload.extend_from_slice(body);
        put(out, 0, &payload);
    }
}

/// Append an `ERR` packet.
pub(crate) fn error(out: &mut BytesMut, seq: u8, code: u16, sqlstate: &str, message: &str) {
    let mut state = *b"HY000";
    if let Ok(s) = <[u8; 5]>::try_from(sqlstate.as_bytes()) {
        state = s;
    }
    let mut payload = Vec::with_capacity(9 + message.len());
    ErrPacket::Error(ServerError::new(
        code,
        Some(SqlState::new(state)),
        message.as_bytes(),
    ))
    .serialize(&mut payload);
    put(out, seq, &payload);
}

/// Append an `OK` packet with no rows affected.
pub(crate) fn ok(out: &mut BytesMut, seq: u8, status: u16) {
    let mut payload = [0u8; 7];
    // header, affected rows (lenenc 0), last insert id (lenenc 0)
    payload[3..5].copy_from_slice(&status.to_le_bytes());
    put(out, seq, &payload);
}

/// An `EOF` packet: `0xFE` and shorter than nine bytes (a row may start with
/// `0xFE` too, as an eight-byte length prefix, but is then longer).
pub(crate) fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 9
}

/// The status flags of an `EOF` packet.
pub(crate) fn eof_status(payload: &[u8]) -> u16 {
    u16_at(payload, 3).unwrap_or(0)
}

/// Read a length-encoded integer.
pub(crate) fn lenenc(p: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = p.split_first()?;
    let (n, used) = match first {
        0..=0xFA => (u64::from(first), 0),
        0xFC => (u64::from(u16_at(rest, 0)?), 2),
        0xFD => {
            let [a, b, c] = *rest.first_chunk::<3>()?;
            (u64::from(a) | u64::from(b) << 8 | u64::from(c) << 16, 3)
        }
        0xFE => (u64::from_le_bytes(*rest.first_chunk::<8>()?), 8),
        // 0xFB is NULL, 0xFF an error marker: not integers.
        _ => return None,
    };
    *p = rest.get(used..)?;
    Some(n)
}

/// The status flags of an `OK` packet (protocol 4.1 layout).
pub(crate) fn ok_status(payload: &[u8]) -> Option<u16> {
    let mut p = payload.get(1..)?;
    lenenc(&mut p)?;
    lenenc(&mut p)?;
    u16_at(p, 0)
}

/// The code and message of an `ERR` packet, for logs and login errors.
pub(crate) fn error_fields(payload: &[u8]) -> (u16, String) {
    let code = u16_at(payload, 1).unwrap_or(0);
    let mut rest = payload.get(3..).unwrap_or_default();
    if rest.first() == Some(&b'#') {
        rest = rest.get(6..).unwrap_or_default();
    }
    (code, String::from_utf8_lossy(rest).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(seq: u8, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put(&mut b, seq, payload);
        b
    }

    #[test]
    fn framing_round_trips_and_waits_for_whole_packets() {
        let mut b = raw(3, b"\x03select 1");
        b.extend_from_slice(&raw(0, b"\x0e"));
        let whole = b.clone();
        // Byte by byte: nothing until a packet is complete.
        let mut partial = BytesMut::new();
        let mut got = Vec::new();
        for byte in whole.iter() {
            partial.put_u8(*byte);
            while let Some(p) = take(&mut partial, 1024).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].seq, &got[0].payload[..]), (3, &b"\x03select 1"[..]));
        assert_eq!(got[1].kind(), Some(0x0e));
        assert!(partial.is_empty());
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        let mut b = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0][..]);
        assert_eq!(
            take(&mut b, 1 << 16),
            Err(FrameError::TooLarge {
                len: MAX_PAYLOAD,
                max: 1 << 16
            })
        );
        // What is missing never exceeds the cap.
        assert_eq!(missing(&b, 10), HEADER + 10 - 4);
        assert_eq!(missing(&[1], 10), 3);
        // An empty payload is a packet.
        let mut e = BytesMut::from(&[0, 0, 0, 7][..]);
        let p = take(&mut e, 10).unwrap().unwrap();
        assert_eq!((p.seq, p.kind()), (7, None));
    }

    #[test]
    fn eof_ok_and_err_packets() {
        assert!(is_eof(&[0xFE, 0, 0, 2, 0]));
        // A row whose first column has an eight-byte length is not an EOF.
        assert!(!is_eof(&[0xFE, 1, 0, 0, 0, 0, 0, 0, 0, b'x']));
        assert_eq!(eof_status(&[0xFE, 0, 0, 0x0A, 0]), 0x0A);
        assert_eq!(eof_status(&[0xFE]), 0);
        let mut o = BytesMut::new();
        ok(&mut o, 2, SERVER_STATUS_AUTOCOMMIT);
        let p = take(&mut o, 100).unwrap().unwrap();
        assert_eq!(ok_status(&p.payload), Some(SERVER_STATUS_AUTOCOMMIT));
        // Long affected-row counts.
        assert_eq!(ok_status(&[0, 0xFC, 1, 1, 0xFD, 1, 1, 1, 8, 0]), Some(8));
        assert_eq!(ok_status(&[0, 0xFE, 1]), None);
        let mut e = BytesMut::new();
        error(&mut e, 1, 1227, "42501", "no");
        let p = take(&mut e, 100).unwrap().unwrap();
        assert_eq!(p.kind(), Some(0xFF));
        assert_eq!(error_fields(&p.payload), (1227, "no".to_owned()));
        assert_eq!(&p.payload[3..9], b"#42501");
        // A bad SQLSTATE becomes HY000 rather than a malformed packet.
        let mut e = BytesMut::new();
        error(&mut e, 1, 1, "x", "m");
        assert_eq!(&e[7..13], b"#HY000");
        assert_eq!(error_fields(&[0xFF]), (0, String::new()));
    }

    #[test]
    fn long_messages_are_split_never_cut() {
        // A continued physical packet is forwarded as it is.
        let big = vec![7u8; MAX_PAYLOAD];
        let mut out = BytesMut::new();
        forward(&mut out, 3, &big);
        let p = take(&mut out, MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!((p.seq, p.payload.len()), (3, MAX_PAYLOAD));
        assert!(p.continues());
        // A message of exactly one full chunk ends with an empty packet.
        let mut out = BytesMut::new();
        assert_eq!(put(&mut out, 1, &big), 3);
        let a = take(&mut out, MAX_PAYLOAD).unwrap().unwrap();
        let b = take(&mut out, MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!(
            (a.payload.len(), b.payload.len(), b.seq),
            (MAX_PAYLOAD, 0, 2)
        );
        assert!(out.is_empty());
        // A long command keeps every byte, in order.
        let body = vec![b'x'; MAX_PAYLOAD + 10];
        let mut out = BytesMut::new();
        put_command(&mut out, 3, &body);
        let a = take(&mut out, MAX_PAYLOAD).unwrap().unwrap();
        let b = take(&mut out, MAX_PAYLOAD).unwrap().unwrap();
        assert_eq!((a.seq, b.seq), (0, 1));
        assert_eq!(a.payload[0], 3);
        assert_eq!(a.payload.len() + b.payload.len(), 1 + body.len());
        // A short one is one packet.
        let mut out = BytesMut::new();
        put_command(&mut out, 3, b"SELECT 1");
        let p = take(&mut out, 100).unwrap().unwrap();
        assert_eq!((p.seq, &p.payload[..]), (0, &b"\x03SELECT 1"[..]));
    }

    #[test]
    fn lenenc_integers() {
        for (bytes, want) in [
            (&[5u8][..], Some(5)),
            (&[0xFC, 0x34, 0x12][..], Some(0x1234)),
            (&[0xFD, 1, 2, 3][..], Some(0x030201)),
            (&[0xFE, 1, 0, 0, 0, 0, 0, 0, 0][..], Some(1)),
            (&[0xFE, 1][..], None),
            (&[0xFB][..], None),
            (&[][..], None),
        ] {
            let mut p = bytes;
            assert_eq!(lenenc(&mut p), want, "{bytes:?}");
        }
    }
}
