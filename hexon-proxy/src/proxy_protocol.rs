//! PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy
//! (`doc/proxy-protocol.txt`).
//!
//! A load balancer that terminates TCP but not HTTP prepends one header to
//! the stream, carrying the client's original source and destination. Only
//! listeners configured for it parse one: on any other listener a `PROXY`
//! line is just bytes of an invalid HTTP request, so clients cannot forge
//! their address.
//!
//! - [`parse`] is the pure, incremental parser: it says [`Parsed::Incomplete`]
//!   until the header is complete, then how many bytes it took.
//! - [`read_header`] reads one header from the start of a stream under a size
//!   limit and a timeout and returns the bytes read past it, which
//!   [`PrefixedStream`] replays to the TLS or HTTP layer.
//!
//! Strictness: the signature, version, command, address family, transport,
//! lengths, addresses and ports are checked as the spec requires; a v2
//! `PP2_TYPE_CRC32C` checksum is verified; TLVs must be well framed. Anything
//! else is a typed [`ProxyProtocolError`] and the caller closes the connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// The largest v2 header the spec allows (16-byte fixed part + 65535).
pub const V2_MAX_LEN: usize = 16 + 0xFFFF;

/// Default limit on a whole header (v2 fixed part, addresses and TLVs).
///
/// Load balancers add a few TLVs (AWS VPC endpoint id, Azure link id, GCP
/// PSC connection id, TLS details): a few hundred bytes. 4 KiB leaves room
/// and keeps a hostile peer from making us buffer 64 KiB per connection.
pub const DEFAULT_MAX_HEADER_LEN: usize = 4096;

/// Default time a peer has to send the whole header.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED_LEN: usize = 16;
const INET_ADDRS_LEN: usize = 12;
const INET6_ADDRS_LEN: usize = 36;
const UNIX_ADDR_LEN: usize = 108;
const UNIX_ADDRS_LEN: usize = 2 * UNIX_ADDR_LEN;

/// `PP2_TYPE_CRC32C`.
pub const PP2_TYPE_CRC32C: u8 = 0x03;

/// Why a PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyProtocolError {
    /// The stream does not start with a v1 or v2 signature.
    #[error("the connection does not start with a PROXY protocol header")]
    NoSignature,
    /// A v1 line is malformed.
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    /// A v2 header is malformed.
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY v2 version {0:#x}")]
    V2Version(u8),
    /// The v2 command is neither LOCAL nor PROXY.
    #[error("unsupported PROXY v2 command {0:#x}")]
    V2Command(u8),
    /// The v2 address family / transport byte has an undefined value.
    #[error("unsupported PROXY v2 address family/transport {0:#04x}")]
    V2Family(u8),
    /// The v2 `PP2_TYPE_CRC32C` checksum does not match.
    #[error("PROXY v2 header checksum mismatch")]
    V2Checksum,
    /// The header is longer than the configured (or spec) limit.
    #[error("PROXY protocol header longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection before the header was complete.
    #[error("connection closed inside the PROXY protocol header")]
    Truncated,
    /// The peer did not send the header in time.
    #[error("timed out reading the PROXY protocol header")]
    Timeout,
    /// Reading failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// Protocol version of a parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// What the sender asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The connection was made by the proxy itself (health check): use the
    /// real connection endpoints. v1 has no LOCAL; its `UNKNOWN` maps to
    /// [`Command::Proxy`] with [`Addresses::Unspecified`].
    Local,
    /// The connection is relayed on behalf of another node.
    Proxy,
}

/// Transport protocol of the original connection (v2; v1 is always TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `UNSPEC`.
    Unspecified,
    /// `STREAM` (TCP, or a UNIX stream socket).
    Stream,
    /// `DGRAM` (UDP, or a UNIX datagram socket).
    Datagram,
}

/// The original endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// v1 `UNKNOWN`, v2 `AF_UNSPEC`, or a LOCAL command: the receiver uses
    /// the real connection endpoints.
    Unspecified,
    /// IPv4 (`TCP4`) or IPv6 (`TCP6`).
    Inet {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
        /// Stream or datagram.
        transport: Transport,
    },
    /// UNIX socket paths (108 bytes each, NUL padded, as sent).
    Unix {
        /// Source path bytes, trailing NULs removed.
        source: Vec<u8>,
        /// Destination path bytes, trailing NULs removed.
        destination: Vec<u8>,
        /// Stream or datagram.
        transport: Transport,
    },
}

/// One v2 Type-Length-Value extension, unparsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlv {
    /// `PP2_TYPE_*`.
    pub kind: u8,
    /// The value bytes.
    pub value: Vec<u8>,
}

/// A parsed PROXY protocol header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// v1 or v2.
    pub version: Version,
    /// LOCAL or PROXY.
    pub command: Command,
    /// The original endpoints.
    pub addresses: Addresses,
    /// v2 TLVs in order (empty for v1 and for LOCAL).
    pub tlvs: Vec<Tlv>,
}

impl ProxyHeader {
    /// The original client's address, when the header carries an IP one
    /// for a relayed stream connection.
    pub fn source(&self) -> Option<SocketAddr> {
        match (&self.command, &self.addresses) {
            (Command::Proxy, Addresses::Inet { source, .. }) => Some(*source),
            _ => None,
        }
    }

    /// The address the original client connected to, when carried.
    pub fn destination(&self) -> Option<SocketAddr> {
        match (&self.command, &self.addresses) {
            (Command::Proxy, Addresses::Inet { destination, .. }) => Some(*destination),
            _ => None,
        }
    }

    /// The first TLV of `kind`.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| t.value.as_slice())
    }
}

/// Result of [`parse`] on a prefix of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Everything so far is a valid beginning: read more.
    Incomplete,
    /// A whole header.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Bytes it occupied; what follows belongs to the next layer.
        len: usize,
    },
}

/// Parse a header at the start of `buf`, accepting at most `max_len` bytes
/// (clamped to the spec's own limits).
///
/// Garbage is refused as early as possible, without waiting for more bytes.
pub fn parse(buf: &[u8], max_len: usize) -> Result<Parsed, ProxyProtocolError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..n) == V2_SIGNATURE.get(..n) {
        return parse_v2(buf, max_len.min(V2_MAX_LEN));
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf.get(..n) == V1_PREFIX.get(..n) {
        return parse_v1(buf, max_len.min(V1_MAX_LEN));
    }
    Err(ProxyProtocolError::NoSignature)
}

fn parse_v1(buf: &[u8], max_len: usize) -> Result<Parsed, ProxyProtocolError> {
    let window = buf.get(..buf.len().min(max_len)).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= max_len {
            return Err(ProxyProtocolError::TooLong { max: max_len });
        }
        if window
            .iter()
            .any(|&b| !(0x20..0x7f).contains(&b) && b != b'\r')
        {
            return Err(ProxyProtocolError::V1("non-printable byte"));
        }
        if window
            .iter()
            .position(|&b| b == b'\r')
            .is_some_and(|cr| cr + 1 < window.len())
        {
            return Err(ProxyProtocolError::V1("CR not followed by LF"));
        }
        return Ok(Parsed::Incomplete);
    };
    let len = lf + 1;
    let line = match lf.checked_sub(1).and_then(|cr| window.get(..=cr)) {
        Some(l) => l,
        None => return Err(ProxyProtocolError::V1("LF without CR")),
    };
    let Some((b'\r', line)) = line.split_last() else {
        return Err(ProxyProtocolError::V1("LF without CR"));
    };
    if line.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Err(ProxyProtocolError::V1("non-printable byte"));
    }
    // ASCII checked above.
    let line = std::str::from_utf8(line).map_err(|_| ProxyProtocolError::V1("not ASCII"))?;
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(ProxyProtocolError::V1("missing PROXY prefix"))?;
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        // "the receiver must ignore anything presented before the CRLF".
        return Ok(Parsed::Complete {
            header: ProxyHeader {
                version: Version::V1,
                command: Command::Proxy,
                addresses: Addresses::Unspecified,
                tlvs: Vec::new(),
            },
            len,
        });
    }
    let mut fields = rest.split(' ');
    let proto = fields.next().unwrap_or_default();
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(ProxyProtocolError::V1("expected 5 fields after PROXY")),
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(
                src.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv4 source"))?,
            ),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv6 source"))?,
            ),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv6 destination"))?,
            ),
        ),
        _ => {
            return Err(ProxyProtocolError::V1(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let sport = v1_port(sport).ok_or(ProxyProtocolError::V1("bad source port"))?;
    let dport = v1_port(dport).ok_or(ProxyProtocolError::V1("bad destination port"))?;
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            addresses: Addresses::Inet {
                source: SocketAddr::new(src, sport),
                destination: SocketAddr::new(dst, dport),
                transport: Transport::Stream,
            },
            tlvs: Vec::new(),
        },
        len,
    })
}

/// A decimal port in `0..=65535`, no sign, no leading zeros.
fn v1_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8], max_len: usize) -> Result<Parsed, ProxyProtocolError> {
    let Some(fixed) = buf.get(..V2_FIXED_LEN) else {
        // Check what we can of the version byte early.
        if let Some(&ver_cmd) = buf.get(12) {
            check_ver_cmd(ver_cmd)?;
        }
        return Ok(Parsed::Incomplete);
    };
    let (ver_cmd, fam, len_hi, len_lo) = match fixed.get(12..16) {
        Some(&[a, b, c, d]) => (a, b, c, d),
        _ => return Ok(Parsed::Incomplete),
    };
    let command = check_ver_cmd(ver_cmd)?;
    let body_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = V2_FIXED_LEN + body_len;
    if total > max_len {
        return Err(ProxyProtocolError::TooLong { max: max_len });
    }
    let Some(body) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete);
    };
    let header_bytes = buf.get(..total).unwrap_or_default();

    if command == Command::Local {
        // "the receiver must accept this connection as valid and must use the
        // real connection endpoints and discard the protocol block including
        // the family which is ignored" — so the block (addresses, TLVs) is
        // skipped unparsed.
        return Ok(Parsed::Complete {
            header: ProxyHeader {
                version: Version::V2,
                command,
                addresses: Addresses::Unspecified,
                tlvs: Vec::new(),
            },
            len: total,
        });
    }

    let transport = match fam & 0x0F {
        0x0 => Transport::Unspecified,
        0x1 => Transport::Stream,
        0x2 => Transport::Datagram,
        _ => return Err(ProxyProtocolError::V2Family(fam)),
    };
    let (addresses, addr_len) = match fam >> 4 {
        0x0 => (Addresses::Unspecified, 0),
        0x1 => {
            let a = body.get(..INET_ADDRS_LEN).ok_or(ProxyProtocolError::V2(
                "length too short for IPv4 addresses",
            ))?;
            let ip = |o: usize| -> Ipv4Addr {
                let mut b = [0u8; 4];
                if let Some(s) = a.get(o..o + 4) {
                    b.copy_from_slice(s);
                }
                Ipv4Addr::from(b)
            };
            let (src, dst) = (ip(0), ip(4));
            let (sp, dp) = (be16(a, 8), be16(a, 10));
            (
                Addresses::Inet {
                    source: SocketAddr::new(IpAddr::V4(src), sp),
                    destination: SocketAddr::new(IpAddr::V4(dst), dp),
                    transport,
                },
                INET_ADDRS_LEN,
            )
        }
        0x2 => {
            let a = body.get(..INET6_ADDRS_LEN).ok_or(ProxyProtocolError::V2(
                "length too short for IPv6 addresses",
            ))?;
            let ip = |o: usize| -> Ipv6Addr {
                let mut b = [0u8; 16];
                if let Some(s) = a.get(o..o + 16) {
                    b.copy_from_slice(s);
                }
                Ipv6Addr::from(b)
            };
            let (src, dst) = (ip(0), ip(16));
            let (sp, dp) = (be16(a, 32), be16(a, 34));
            (
                Addresses::Inet {
                    source: SocketAddr::new(IpAddr::V6(src), sp),
                    destination: SocketAddr::new(IpAddr::V6(dst), dp),
                    transport,
                },
                INET6_ADDRS_LEN,
            )
        }
        0x3 => {
            let a = body.get(..UNIX_ADDRS_LEN).ok_or(ProxyProtocolError::V2(
                "length too short for UNIX addresses",
            ))?;
            let path = |o: usize| -> Vec<u8> {
                let p = a.get(o..o + UNIX_ADDR_LEN).unwrap_or_default();
                let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
                p.get(..end).unwrap_or_default().to_vec()
            };
            (
                Addresses::Unix {
                    source: path(0),
                    destination: path(UNIX_ADDR_LEN),
                    transport,
                },
                UNIX_ADDRS_LEN,
            )
        }
        _ => return Err(ProxyProtocolError::V2Family(fam)),
    };
    let tlvs = parse_tlvs(body, addr_len, header_bytes)?;
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: Version::V2,
            command,
            addresses,
            tlvs,
        },
        len: total,
    })
}

fn check_ver_cmd(ver_cmd: u8) -> Result<Command, ProxyProtocolError> {
    if ver_cmd >> 4 != 0x2 {
        return Err(ProxyProtocolError::V2Version(ver_cmd >> 4));
    }
    match ver_cmd & 0x0F {
        0x0 => Ok(Command::Local),
        0x1 => Ok(Command::Proxy),
        c => Err(ProxyProtocolError::V2Command(c)),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

/// Frame the TLVs after the addresses; verify a CRC32C TLV if present.
fn parse_tlvs(
    body: &[u8],
    start: usize,
    header_bytes: &[u8],
) -> Result<Vec<Tlv>, ProxyProtocolError> {
    let mut tlvs = Vec::new();
    let mut at = start;
    while at < body.len() {
        let (kind, len) = match body.get(at..at + 3) {
            Some(&[k, hi, lo]) => (k, usize::from(u16::from_be_bytes([hi, lo]))),
            _ => return Err(ProxyProtocolError::V2("truncated TLV header")),
        };
        let value = body
            .get(at + 3..at + 3 + len)
            .ok_or(ProxyProtocolError::V2("TLV longer than the header"))?;
        if kind == PP2_TYPE_CRC32C {
            let expected = match value {
                &[a, b, c, d] => u32::from_be_bytes([a, b, c, d]),
                _ => return Err(ProxyProtocolError::V2("CRC32C TLV is not 4 bytes")),
            };
            // The checksum covers the whole header with the field zeroed.
            let value_at = V2_FIXED_LEN + at + 3;
            let mut crc = Crc32c::new();
            crc.update(header_bytes.get(..value_at).unwrap_or_default());
            crc.update(&[0; 4]);
            crc.update(header_bytes.get(value_at + 4..).unwrap_or_default());
            if crc.finish() != expected {
                return Err(ProxyProtocolError::V2Checksum);
            }
        }
        tlvs.push(Tlv {
            kind,
            value: value.to_vec(),
        });
        at += 3 + len;
    }
    Ok(tlvs)
}

/// CRC-32C (Castagnoli), bitwise: headers are small and this runs once per
/// connection at most.
struct Crc32c(u32);

impl Crc32c {
    fn new() -> Self {
        Crc32c(!0)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u32::from(b);
            for _ in 0..8 {
                let mask = (self.0 & 1).wrapping_neg();
                self.0 = (self.0 >> 1) ^ (0x82F6_3B78 & mask);
            }
        }
    }
    fn finish(&self) -> u32 {
        !self.0
    }
}

/// CRC-32C of `data`, as `PP2_TYPE_CRC32C` carries it (for senders and tests).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

/// Limits for [`read_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyProtocolLimits {
    /// Largest header accepted, in bytes ([`DEFAULT_MAX_HEADER_LEN`]).
    pub max_header_len: usize,
    /// Time the peer has to send the whole header ([`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Duration,
}

impl Default for ProxyProtocolLimits {
    fn default() -> Self {
        ProxyProtocolLimits {
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// Read one header from the start of `stream`.
///
/// Returns the header and the bytes read past it (the start of the TLS or
/// HTTP stream): wrap the stream in [`PrefixedStream`] with them.
pub async fn read_header<S>(
    stream: &mut S,
    limits: ProxyProtocolLimits,
) -> Result<(ProxyHeader, Bytes), ProxyProtocolError>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(limits.read_timeout, read_header_inner(stream, limits)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

async fn read_header_inner<S>(
    stream: &mut S,
    limits: ProxyProtocolLimits,
) -> Result<(ProxyHeader, Bytes), ProxyProtocolError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Truncated);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match parse(&buf, limits.max_header_len)? {
            Parsed::Complete { header, len } => {
                let mut rest = Bytes::from(buf);
                rest.advance(len);
                return Ok((header, rest));
            }
            Parsed::Incomplete if buf.len() >= limits.max_header_len => {
                return Err(ProxyProtocolError::TooLong {
                    max: limits.max_header_len,
                });
            }
            Parsed::Incomplete => {}
        }
    }
}

/// A stream that first yields `prefix` (bytes already read from `inner`),
/// then reads `inner`. Writes go straight to `inner`.
#[derive(Debug)]
pub struct PrefixedStream<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedStream<S> {
    /// Replay `prefix` before reading `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        PrefixedStream { prefix, inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedStream<S> {
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
    use proptest::prelude::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf, DEFAULT_MAX_HEADER_LEN) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn inet4_body() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    #[test]
    fn v1_tcp4_spec_example() {
        let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, len) = complete(buf);
        assert_eq!(len, 47);
        assert_eq!(&buf[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.source(), Some(sa("192.168.0.1:56324")));
        assert_eq!(h.destination(), Some(sa("192.168.0.11:443")));
    }

    #[test]
    fn v1_tcp6() {
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(h.source(), Some(sa("[2001:db8::1]:65535")));
        assert_eq!(h.destination(), Some(sa("[::1]:0")));
    }

    #[test]
    fn v1_unknown_forms() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ] {
            let (h, len) = complete(line);
            assert_eq!(len, line.len());
            assert_eq!(h.addresses, Addresses::Unspecified);
            assert_eq!(h.source(), None);
        }
    }

    #[test]
    fn v1_worst_case_length_accepted_and_longer_refused() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), 107);
        complete(&line);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert!(matches!(
            parse(&long, DEFAULT_MAX_HEADER_LEN),
            Err(ProxyProtocolError::TooLong { max: 107 })
        ));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 1, b'x');
        long.extend_from_slice(b"\r\n");
        assert!(parse(&long, DEFAULT_MAX_HEADER_LEN).is_err());
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 extra\r\n",
            b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 ::1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP6 192.168.0.1 ::1 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 0443 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +443 443\r\n",
            b"PROXY TCP4 192.168.000.1 192.168.0.11 1 443\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\r\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \x00\r\n",
        ] {
            assert!(
                parse(bad, DEFAULT_MAX_HEADER_LEN).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn v1_incomplete_then_complete() {
        let full = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for i in 0..full.len() {
            assert_eq!(
                parse(&full[..i], DEFAULT_MAX_HEADER_LEN).unwrap(),
                Parsed::Incomplete,
                "{i}"
            );
        }
        complete(full);
    }

    #[test]
    fn garbage_refused_immediately() {
        for g in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"P",
            b"\r\n\r\n\x01",
        ] {
            let r = parse(g, DEFAULT_MAX_HEADER_LEN);
            if g == b"P" {
                assert_eq!(r.unwrap(), Parsed::Incomplete);
            } else {
                assert!(r.is_err(), "{g:?}");
            }
        }
        assert!(matches!(
            parse(b"GET", 100),
            Err(ProxyProtocolError::NoSignature)
        ));
    }

    #[test]
    fn v2_tcp4() {
        let mut buf = v2(0x21, 0x11, &inet4_body());
        buf.extend_from_slice(b"\x16\x03\x01rest");
        let (h, len) = complete(&buf);
        assert_eq!(len, 28);
        assert_eq!(&buf[len..], b"\x16\x03\x01rest");
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination(), Some(sa("198.51.100.7:443")));
    }

    #[test]
    fn v2_tcp6_with_tlvs() {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&1234u16.to_be_bytes());
        body.extend_from_slice(&8443u16.to_be_bytes());
        // PP2_TYPE_AUTHORITY, PP2_TYPE_NOOP, a custom type with an empty value.
        body.extend_from_slice(&[0x02, 0, 11]);
        body.extend_from_slice(b"example.com");
        body.extend_from_slice(&[0x04, 0, 3, 0, 0, 0]);
        body.extend_from_slice(&[0xE0, 0, 0]);
        let buf = v2(0x21, 0x21, &body);
        let (h, len) = complete(&buf);
        assert_eq!(len, buf.len());
        assert_eq!(h.source(), Some(sa("[2001:db8::7]:1234")));
        assert_eq!(h.destination(), Some(sa("[::1]:8443")));
        assert_eq!(h.tlvs.len(), 3);
        assert_eq!(h.tlv(0x02), Some(&b"example.com"[..]));
        assert_eq!(h.tlv(0xE0), Some(&b""[..]));
    }

    #[test]
    fn v2_local_ignores_addresses() {
        let (h, len) = complete(&v2(0x20, 0x00, &[]));
        assert_eq!(len, 16);
        assert_eq!(h.command, Command::Local);
        assert_eq!(h.addresses, Addresses::Unspecified);
        assert_eq!(h.source(), None);
        // LOCAL with an address block (family ignored).
        let (h, _) = complete(&v2(0x20, 0x11, &inet4_body()));
        assert_eq!(h.source(), None);
    }

    #[test]
    fn v2_unspec_and_unix() {
        let (h, _) = complete(&v2(0x21, 0x00, &[]));
        assert_eq!(h.addresses, Addresses::Unspecified);
        let mut body = vec![0u8; 216];
        body[..4].copy_from_slice(b"/src");
        body[108..112].copy_from_slice(b"/dst");
        let (h, _) = complete(&v2(0x21, 0x31, &body));
        assert_eq!(
            h.addresses,
            Addresses::Unix {
                source: b"/src".to_vec(),
                destination: b"/dst".to_vec(),
                transport: Transport::Stream
            }
        );
        assert_eq!(h.source(), None);
    }

    #[test]
    fn v2_udp_is_reported_as_datagram() {
        let (h, _) = complete(&v2(0x21, 0x12, &inet4_body()));
        assert!(matches!(
            h.addresses,
            Addresses::Inet {
                transport: Transport::Datagram,
                ..
            }
        ));
    }

    #[test]
    fn v2_crc32c() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let mut body = inet4_body();
        body.extend_from_slice(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);
        let mut buf = v2(0x21, 0x11, &body);
        let sum = crc32c(&buf);
        let n = buf.len();
        buf[n - 4..].copy_from_slice(&sum.to_be_bytes());
        complete(&buf);
        buf[n - 1] ^= 1;
        assert!(matches!(
            parse(&buf, DEFAULT_MAX_HEADER_LEN),
            Err(ProxyProtocolError::V2Checksum)
        ));
    }

    #[test]
    fn v2_malformed() {
        let cases: Vec<Vec<u8>> = vec![
            v2(0x11, 0x11, &inet4_body()),       // version 1 in a v2 header
            v2(0x22, 0x11, &inet4_body()),       // command 2
            v2(0x21, 0x41, &inet4_body()),       // family 4
            v2(0x21, 0x13, &inet4_body()),       // transport 3
            v2(0x21, 0x11, &inet4_body()[..11]), // addresses truncated
            v2(0x21, 0x21, &inet4_body()),       // IPv6 family, IPv4-sized block
            v2(0x21, 0x31, &[0; 100]),           // UNIX too short
            v2(0x21, 0x11, &[inet4_body(), vec![0x01, 0]].concat()), // TLV header cut
            v2(0x21, 0x11, &[inet4_body(), vec![0x01, 0, 5, 1]].concat()), // TLV value cut
            v2(0x21, 0x11, &[inet4_body(), vec![0x03, 0, 2, 1, 2]].concat()), // CRC not 4 bytes
        ];
        for c in cases {
            assert!(parse(&c, DEFAULT_MAX_HEADER_LEN).is_err(), "{c:x?}");
        }
    }

    #[test]
    fn v2_oversized_refused_before_reading_it() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(
            parse(&h, DEFAULT_MAX_HEADER_LEN),
            Err(ProxyProtocolError::TooLong { max: 4096 })
        ));
    }

    #[test]
    fn v2_incomplete_prefixes() {
        let buf = v2(0x21, 0x11, &inet4_body());
        for i in 0..buf.len() {
            assert_eq!(
                parse(&buf[..i], DEFAULT_MAX_HEADER_LEN).unwrap(),
                Parsed::Incomplete,
                "{i}"
            );
        }
    }

    #[tokio::test]
    async fn read_header_keeps_following_bytes() {
        let mut input = v2(0x21, 0x11, &inet4_body());
        input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            // Byte by byte: the parser must cope with any split.
            for b in input {
                client.write_all(&[b]).await.unwrap();
            }
            client
        });
        let (h, rest) = read_header(&mut server, ProxyProtocolLimits::default())
            .await
            .unwrap();
        assert_eq!(h.source(), Some(sa("192.0.2.1:56324")));
        let _client = writer.await.unwrap();
        let mut s = PrefixedStream::new(rest, server);
        let mut got = vec![0u8; 18];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn read_header_errors() {
        use tokio::io::AsyncWriteExt as _;
        // Truncated.
        let (mut c, mut s) = tokio::io::duplex(64);
        c.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(c);
        assert!(matches!(
            read_header(&mut s, ProxyProtocolLimits::default()).await,
            Err(ProxyProtocolError::Truncated)
        ));
        // Timeout.
        let (mut c, mut s) = tokio::io::duplex(64);
        c.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let limits = ProxyProtocolLimits {
            read_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        assert!(matches!(
            read_header(&mut s, limits).await,
            Err(ProxyProtocolError::Timeout)
        ));
        // Garbage.
        let (mut c, mut s) = tokio::io::duplex(64);
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(
            read_header(&mut s, ProxyProtocolLimits::default()).await,
            Err(ProxyProtocolError::NoSignature)
        ));
        // Oversized by configuration.
        let (mut c, mut s) = tokio::io::duplex(4096);
        let mut body = inet4_body();
        body.extend_from_slice(&[0xE0, 0, 200]);
        body.extend_from_slice(&[0; 200]);
        c.write_all(&v2(0x21, 0x11, &body)).await.unwrap();
        let limits = ProxyProtocolLimits {
            max_header_len: 64,
            ..Default::default()
        };
        assert!(matches!(
            read_header(&mut s, limits).await,
            Err(ProxyProtocolError::TooLong { max: 64 })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..5000) {
            let _ = parse(&data, max);
        }

        #[test]
        fn random_after_v2_signature_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = V2_SIGNATURE.to_vec();
            buf.extend_from_slice(&data);
            if let Ok(Parsed::Complete { len, .. }) = parse(&buf, V2_MAX_LEN) {
                prop_assert!(len <= buf.len());
            }
        }

        #[test]
        fn random_after_v1_prefix_never_panic(data in proptest::collection::vec(any::<u8>(), 0..150)) {
            let mut buf = b"PROXY ".to_vec();
            buf.extend_from_slice(&data);
            if let Ok(Parsed::Complete { len, .. }) = parse(&buf, V2_MAX_LEN) {
                prop_assert!(len <= V1_MAX_LEN);
            }
        }
    }
}
