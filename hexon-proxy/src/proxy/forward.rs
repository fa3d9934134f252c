//! Header hygiene: hop-by-hop removal in both directions and the forwarding
//! headers (`X-Forwarded-*`, RFC 7239 `Forwarded`, `X-Request-Id`).
//!
//! Removed in both directions:
//! `Connection` and every header it names (except the protected ones
//! below), `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`,
//! `Proxy-Authenticate`, `TE`, `Transfer-Encoding`, `Upgrade`.
//! On requests `TE: trailers` is kept (gRPC needs it); on a WebSocket
//! upgrade `Connection: upgrade` and `Upgrade` are set again.
//!
//! - `Proxy-Authorization` / `Proxy-Authenticate` are credentials and
//!   challenges for *this* hop (RFC 9110 §11.7): the gateway does not use
//!   them, and forwarding them would hand a credential meant for a proxy to
//!   the backend.
//! - `Trailer` is **kept**: RFC 9110 §6.6.2 makes it end-to-end (RFC 2616's
//!   list was a mistake), and hyper's HTTP/1.1 encoder only sends the
//!   trailers a response declares in `Trailer`.
//! - `Connection` cannot remove the headers the gateway itself is
//!   responsible for: `Host`, `Content-Length`, `Content-Type`,
//!   `Authorization`, `Signature`, `Signature-Input`, `Content-Digest`,
//!   `X-Request-Id`, `Hexon-*` — otherwise a client could strip the signed
//!   identity (`Connection: Signature`) or the framing.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, FORWARDED, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::ext::{ConnectionInfo, RequestId};
use crate::request_id::X_REQUEST_ID;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Decides whether the peer in front of the gateway is a proxy whose
/// `X-Forwarded-For`/`Forwarded`/`X-Forwarded-Proto`/`X-Forwarded-Host` may
/// be believed. Default: nobody.
///
/// The predicate sees [`ConnectionInfo::peer`] (the client address after
/// PROXY protocol). When it returns `true` the gateway appends to the
/// client's `X-Forwarded-For` and `Forwarded` and keeps its
/// `X-Forwarded-Proto`/`-Host`; otherwise it replaces all four.
#[derive(Clone)]
pub struct TrustedProxies(Option<Arc<dyn Fn(IpAddr) -> bool + Send + Sync>>);

impl std::fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TrustedProxies(predicate)"
        } else {
            "TrustedProxies(none)"
        })
    }
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::none()
    }
}

impl TrustedProxies {
    /// Trust no peer (the default).
    pub fn none() -> Self {
        TrustedProxies(None)
    }

    /// Trust the peers for which `f` returns `true`.
    pub fn from_fn(f: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        TrustedProxies(Some(Arc::new(f)))
    }

    /// Trust exactly these addresses.
    pub fn addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let addrs: Vec<IpAddr> = addrs.into_iter().collect();
        Self::from_fn(move |ip| addrs.contains(&ip.to_canonical()))
    }

    /// Whether `ip` is trusted.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.0.as_ref().is_some_and(|f| f(ip))
    }
}

/// The fields a `Connection` value may not remove, by name in any case.
pub(crate) fn is_protected_str(name: &str) -> bool {
    [
        HOST.as_str(),
        CONTENT_LENGTH.as_str(),
        CONTENT_TYPE.as_str(),
        AUTHORIZATION.as_str(),
        X_REQUEST_ID.as_str(),
        "signature",
        "signature-input",
        "content-digest",
    ]
    .iter()
    .any(|p| p.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("hexon-"))
}

/// Tokens of every `Connection` header, lowercased.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

const HOP_BY_HOP_COUNT: usize = 8;

/// The fixed hop-by-hop headers, removed in both directions (`Connection`
/// first: what it names goes too).
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// The position of `name` in [`HOP_BY_HOP`]. Matched on the name's text:
/// every request and response passes each of its names through here, and a
/// `match` on the text is a length switch and one comparison, where
/// comparing `HeaderName`s against the list took eight.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authorization" => 3,
        "proxy-authenticate" => 4,
        "te" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// Whether a field value has only bytes a header map accepts (no control
/// bytes other than tab).
pub(crate) fn is_valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Whether a field name (any case) is one of the fixed hop-by-hop fields
/// ([`HOP_BY_HOP`]). By length first: every field of every upstream answer
/// the express lane reads passes through here, and most have a length no
/// hop-by-hop name has.
pub(crate) fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Remove hop-by-hop headers (see the module docs). Returns whether the
/// request asked for `TE: trailers`.
///
/// One pass over the names finds which fixed ones are present, so the
/// common request with none of them costs no hash lookups (this runs twice
/// per request); the fields a `Connection` value names are looked up by
/// their text, without building a `HeaderName` (an allocation each).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(p) = hop_by_hop_index(name).and_then(|i| present.get_mut(i)) {
            *p = true;
        }
    }
    if !present.contains(&true) {
        return false;
    }
    // Positions in `HOP_BY_HOP`.
    let [connection, _, _, _, _, te, ..] = present;
    let te_trailers = te
        && headers
            .get_all(TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    // `Connection` names further fields to remove.
    if connection && headers.get_all(CONNECTION).iter().nth(1).is_none() {
        // One value (the common case): take it out, then what it names.
        if let Some(v) = headers.remove(CONNECTION) {
            remove_named(headers, &v);
        }
    } else if connection {
        let values: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        headers.remove(CONNECTION);
        for v in &values {
            remove_named(headers, v);
        }
    }
    // `Connection` (the first) is gone already.
    for (name, here) in HOP_BY_HOP.iter().zip(present).skip(1) {
        if here {
            headers.remove(name);
        }
    }
    te_trailers
}

/// Remove the fields a `Connection` value names, except the protected ones.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(v) = connection.to_str() else { return };
    for token in v.split(',').map(str::trim) {
        // `&str` keys are lowercased for the lookup; an invalid name
        // matches nothing.
        if !token.is_empty() && !is_protected_str(token) {
            headers.remove(token);
        }
    }
}

/// Request headers for the upstream: hop-by-hop removed, `TE: trailers`
/// kept, upgrade restored, `Host` set to the public authority, forwarding
/// headers and `X-Request-Id` set.
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
    host: &HeaderValue,
    conn: Option<&ConnectionInfo>,
    trust: &TrustedProxies,
    request_id: Option<&RequestId>,
) {
    if remove_hop_by_hop(headers) {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(proto) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, proto.clone());
    }
    headers.insert(HOST, host.clone());
    set_forwarding(headers, host, conn, trust);
    match request_id.and_then(|r| HeaderValue::from_str(r.as_str()).ok()) {
        Some(v) => {
            headers.insert(X_REQUEST_ID, v);
        }
        None => {
            headers.remove(X_REQUEST_ID);
        }
    }
}

/// Response headers for the client: hop-by-hop removed; on `101` the
/// upgrade is restored.
pub(crate) fn prepare_response(headers: &mut HeaderMap, switching: bool) {
    let upgrade = headers.get(UPGRADE).cloned();
    remove_hop_by_hop(headers);
    if switching {
        if let Some(proto) = upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, proto);
        }
    }
}

/// Join every value of `name` into one comma-separated string.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn set_forwarding(
    headers: &mut HeaderMap,
    host: &HeaderValue,
    conn: Option<&ConnectionInfo>,
    trust: &TrustedProxies,
) {
    let trusted = conn.is_some_and(|c| trust.is_trusted(c.peer.ip()));
    let (prior_xff, prior_fwd) = if trusted {
        (
            joined(headers, &X_FORWARDED_FOR),
            joined(headers, &FORWARDED),
        )
    } else {
        (None, None)
    };
    let keep_proto = trusted && headers.contains_key(&X_FORWARDED_PROTO);
    let keep_host = trusted && headers.contains_key(&X_FORWARDED_HOST);
    headers.remove(&X_FORWARDED_FOR);
    headers.remove(FORWARDED);
    if !keep_proto {
        headers.remove(&X_FORWARDED_PROTO);
    }
    if !keep_host {
        headers.remove(&X_FORWARDED_HOST);
    }

    let host_str = host.to_str().ok();
    if !keep_host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    // Both values are built in one buffer each and handed to the header map
    // without another copy: this runs for every request.
    let mut ours = match prior_fwd {
        Some(prior) => prior,
        None => String::with_capacity(64),
    };
    let had_prior_fwd = !ours.is_empty();
    if let Some(c) = conn {
        let ip = c.peer.ip().to_canonical();
        let mut xff = match prior_xff {
            Some(mut prior) => {
                prior.push_str(", ");
                prior
            }
            None => String::with_capacity(40),
        };
        push_ip(&mut xff, ip);
        if let Some(v) = owned_value(xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if !keep_proto {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(c.scheme()));
        }
        if had_prior_fwd {
            ours.push_str(", ");
        }
        ours.push_str("for=");
        match ip {
            IpAddr::V4(_) => push_ip(&mut ours, ip),
            IpAddr::V6(_) => {
                ours.push_str("\"[");
                push_ip(&mut ours, ip);
                ours.push_str("]\"");
            }
        }
        ours.push_str(";proto=");
        ours.push_str(c.scheme());
    }
    if let Some(h) = host_str {
        if conn.is_some() {
            ours.push(';');
        } else if had_prior_fwd {
            ours.push_str(", ");
        }
        ours.push_str("host=");
        push_forwarded_value(&mut ours, h);
    }
    if let Some(v) = owned_value(ours) {
        headers.insert(FORWARDED, v);
    }
}

/// A header value that takes `s` as it is (no copy); `None` when empty or
/// not a valid value.
fn owned_value(s: String) -> Option<HeaderValue> {
    if s.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
}

/// Append an address as text; IPv4 without the formatting machinery (it
/// runs for every request, and `Display` costs ten times as much).
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Append a `Forwarded` value: a token as is, anything else quoted.
pub(crate) fn push_forwarded_value(out: &mut String, v: &str) {
    // Compared byte by byte: this runs for every request, and a `str`
    // search per character cost ten times as much.
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !v.is_empty() && v.bytes().all(is_tchar) {
        out.push_str(v);
        return;
    }
    out.push('"');
    // Runs without `"` or `\\` are copied whole (both are ASCII, so a
    // byte position found is a character boundary).
    let mut rest = v;
    while let Some(i) = rest.bytes().position(|b| b == b'"' || b == b'\\') {
        let (run, tail) = rest.split_at(i);
        out.push_str(run);
        out.push('\\');
        let (quoted, after) = tail.split_at(1);
        out.push_str(quoted);
        rest = after;
    }
    out.push_str(rest);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_bytes_are_the_hop_by_hop_names() {
        for h in &HOP_BY_HOP {
            let name = h.as_str();
            assert!(is_hop_by_hop_bytes(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop_bytes(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
            // One byte changed, one too many or too few: not hop-by-hop.
            let mut other = name.as_bytes().to_vec();
            other[0] ^= 0x01;
            assert!(!is_hop_by_hop_bytes(&other), "{name}");
            assert!(
                !is_hop_by_hop_bytes(format!("{name}s").as_bytes()),
                "{name}"
            );
            assert!(!is_hop_by_hop_bytes(&name.as_bytes()[1..]), "{name}");
        }
        for name in [
            "date",
            "server",
            "content-length",
            "x-connection",
            "trailer",
            "",
        ] {
            assert!(!is_hop_by_hop_bytes(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn forwarded_values_are_tokens_or_quoted_strings() {
        // The character-by-character reading of RFC 7239 §4 / RFC 9110 §5.6.4.
        fn reference(v: &str) -> String {
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if !v.is_empty() && v.chars().all(tchar) {
                return v.to_owned();
            }
            let mut out = String::from("\"");
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
        for v in [
            "app.example.com",
            "a.example:8443",
            "[2001:db8::1]:443",
            "",
            "q\"uo\\te",
            "\"\"\\",
            "ünï code",
            "x_~!|",
        ] {
            let mut out = String::new();
            push_forwarded_value(&mut out, v);
            assert_eq!(out, reference(v), "{v:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "199.200.249.255",
            "255.255.255.255",
            "10.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
    }

    #[test]
    fn the_hop_by_hop_positions_are_the_lists() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            "host",
            "content-length",
            "connections",
            "tE",
            "upgrade-insecure-requests",
            "proxy-authorization-x",
            "keep_alive",
        ] {
            let Ok(name) = HeaderName::from_bytes(other.as_bytes()) else {
                continue;
            };
            // `tE` parses to `te`: lower-case, as every `HeaderName` is.
            let expected = HOP_BY_HOP.iter().position(|h| *h == name);
            assert_eq!(hop_by_hop_index(&name), expected, "{other}");
        }
    }

    fn conn(peer: &str) -> ConnectionInfo {
        ConnectionInfo::plain(peer.parse().unwrap(), "127.0.0.1:443".parse().unwrap())
    }

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn hop_by_hop_is_removed_and_protected_headers_survive() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, hv("close, x-secret, signature, Hexon-User"));
        h.insert("x-secret", hv("1"));
        h.insert("signature", hv("sig"));
        h.insert("hexon-user", hv("alice"));
        h.insert("keep-alive", hv("timeout=5"));
        h.insert("proxy-connection", hv("keep-alive"));
        h.insert(PROXY_AUTHORIZATION, hv("Basic x"));
        h.insert(TE, hv("gzip, trailers;q=1"));
        h.insert(TRANSFER_ENCODING, hv("chunked"));
        h.insert(UPGRADE, hv("h2c"));
        h.insert("trailer", hv("grpc-status"));
        let te = remove_hop_by_hop(&mut h);
        assert!(te);
        let names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(h.contains_key("signature"));
        assert!(h.contains_key("hexon-user"));
        assert!(h.contains_key("trailer"));
    }

    #[test]
    fn every_connection_value_is_honoured_in_any_case() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, hv("x-a"));
        h.append(
            CONNECTION,
            hv("X-B, SIGNATURE, Content-Length, HEXON-route"),
        );
        for name in [
            "x-a",
            "x-b",
            "x-c",
            "signature",
            "content-length",
            "hexon-route",
        ] {
            h.insert(HeaderName::from_static(name), hv("1"));
        }
        assert!(!remove_hop_by_hop(&mut h));
        let mut names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "hexon-route", "signature", "x-c"]);
        // A request without any of them is left alone.
        let before = h.clone();
        assert!(!remove_hop_by_hop(&mut h));
        assert_eq!(h, before);
    }

    #[test]
    fn untrusted_peer_replaces_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, hv("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, hv("https"));
        h.insert(X_FORWARDED_HOST, hv("evil"));
        h.insert(FORWARDED, hv("for=6.6.6.6"));
        let c = conn("[2001:db8::1]:5000");
        prepare_request(
            &mut h,
            None,
            &hv("app.example.com:8443"),
            Some(&c),
            &TrustedProxies::none(),
            Some(&RequestId("rid-1".into())),
        );
        assert_eq!(h[X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "app.example.com:8443");
        assert_eq!(
            h[FORWARDED],
            "for=\"[2001:db8::1]\";proto=http;host=\"app.example.com:8443\""
        );
        assert_eq!(h[HOST], "app.example.com:8443");
        assert_eq!(h[X_REQUEST_ID], "rid-1");
    }

    #[test]
    fn trusted_peer_appends() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, hv("1.1.1.1"));
        h.append(X_FORWARDED_FOR, hv("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, hv("https"));
        h.insert(FORWARDED, hv("for=1.1.1.1"));
        h.insert(X_REQUEST_ID, hv("client-chosen"));
        let c = conn("10.0.0.1:5000");
        let trust = TrustedProxies::addrs(["10.0.0.1".parse().unwrap()]);
        prepare_request(&mut h, None, &hv("app"), Some(&c), &trust, None);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "app");
        assert_eq!(
            h[FORWARDED],
            "for=1.1.1.1, for=10.0.0.1;proto=http;host=app"
        );
        assert!(!h.contains_key(X_REQUEST_ID));
    }

    #[test]
    fn no_connection_info_strips_client_values() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, hv("6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, hv("https"));
        let trust = TrustedProxies::from_fn(|_| true);
        prepare_request(&mut h, None, &hv("app"), None, &trust, None);
        assert!(!h.contains_key(X_FORWARDED_FOR));
        assert!(!h.contains_key(X_FORWARDED_PROTO));
        assert_eq!(h[FORWARDED], "host=app");
    }

    #[test]
    fn upgrade_is_restored() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, hv("keep-alive, Upgrade"));
        h.insert(UPGRADE, hv("websocket"));
        prepare_request(
            &mut h,
            Some(&hv("websocket")),
            &hv("app"),
            None,
            &TrustedProxies::none(),
            None,
        );
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");

        let mut r = HeaderMap::new();
        r.insert(CONNECTION, hv("Upgrade"));
        r.insert(UPGRADE, hv("websocket"));
        r.insert("keep-alive", hv("x"));
        prepare_response(&mut r, true);
        assert_eq!(r[CONNECTION], "upgrade");
        assert_eq!(r[UPGRADE], "websocket");
        assert!(!r.contains_key("keep-alive"));
        prepare_response(&mut r, false);
        assert!(r.is_empty());
    }
}
