//! The express lane: the common request served without the tower stack.
//!
//! Most requests through a gateway are alike: an HTTP/1.1 `GET` with a few
//! header fields and a credential the gateway has seen before, allowed by
//! the policy, signed with a signature made a moment ago, forwarded to a
//! plain `http://` upstream. Through the tower stack such a request costs
//! about 63,000 instructions (docs/BENCHMARKS.md): a dozen layers, a header
//! map built and rebuilt, request extensions boxed one by one, hyper's
//! client connection task. The express lane serves it from the bytes the
//! listener read: an [`Express`] implementation (the gateway's) looks at
//! the request head and either declines — the request then goes through
//! the stack, exactly as without the lane — or returns a [`Plan`] with the
//! upstream request head already written. The listener then writes that
//! head on a kept connection of its own thread, reads the answer in the
//! same task ([`crate::proxy`]'s HTTP/1.1 codec), and writes it to the
//! client with the same writer the stack's answers go through.
//!
//! **The lane never decides anything the stack would decide otherwise.**
//! It takes a request only when every answer is known to be the one the
//! stack would give: anything uncertain (an unknown credential, a refusal,
//! a signature not yet made, a field it does not handle) declines, and the
//! stack serves it — and, by doing so, usually makes the next such request
//! one the lane can take (the verified token and the signature are
//! cached). `tests/tests/http1_paths.rs` checks both paths side by side.
//!
//! [`UpstreamHead`] writes the upstream request head as
//! [`crate::proxy::ReverseProxy`] would send it: hop-by-hop fields
//! removed, `Host` kept, the forwarding fields (`X-Forwarded-For`,
//! `-Proto`, `-Host`, `Forwarded`) and `X-Request-Id` set. Field names are
//! written in lower case, as the stack's header map writes them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, StatusCode};

use crate::ext::{ConnectionInfo, RequestId};
use crate::proxy::{Timeouts, Upstream};
use crate::respond::Flavor;

/// A request head as the listener's HTTP/1.1 reader took it: HTTP/1.1, a
/// target in origin form, no body (no `Content-Length`,
/// `Transfer-Encoding`, `Expect`, `Upgrade` or `TE`), at most 64 fields.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) head: &'a Bytes,
    pub(crate) target: [usize; 2],
    pub(crate) fields: &'a [[usize; 4]],
}

impl<'a> RequestHead<'a> {
    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request target as sent (origin form: path and query).
    pub fn target(&self) -> &'a [u8] {
        self.head
            .get(self.target[0]..self.target[1])
            .unwrap_or_default()
    }

    /// The target as `http` reads it (as the stack would see it), or
    /// `None` where `http` refuses it.
    pub fn path_and_query(&self) -> Option<PathAndQuery> {
        let [a, b] = self.target;
        if a > b || b > self.head.len() {
            return None;
        }
        PathAndQuery::from_maybe_shared(self.head.slice(a..b)).ok()
    }

    /// The header fields in the order sent: name as sent (any case), value
    /// without surrounding whitespace.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let head: &'a [u8] = self.head;
        self.fields.iter().map(move |&[ns, ne, vs, ve]| {
            (
                head.get(ns..ne).unwrap_or_default(),
                head.get(vs..ve).unwrap_or_default(),
            )
        })
    }
}

/// Decides which requests take the express lane. See the [module docs](self).
pub trait Express: Send + Sync + 'static {
    /// What [`finished`](Self::finished) needs of a request (for its audit
    /// line and metrics).
    type Done: Send + 'static;

    /// A plan for `head` on `conn`, with the upstream request head written
    /// into `out` (empty on entry); `None` declines: the stack serves the
    /// request.
    fn plan(
        &self,
        head: &RequestHead<'_>,
        conn: &ConnectionInfo,
        out: &mut Vec<u8>,
    ) -> Option<Plan<Self::Done>>;

    /// A planned request was answered with `status` after `elapsed` (up to
    /// the answer's head, as the stack's audit layer times requests).
    fn finished(&self, done: Self::Done, status: StatusCode, elapsed: Duration);
}

/// Where and how an express request is forwarded.
#[derive(Debug)]
pub struct Plan<D> {
    pub(crate) upstream: Upstream,
    pub(crate) timeouts: Timeouts,
    pub(crate) request_id: RequestId,
    pub(crate) route: Arc<str>,
    pub(crate) flavor: Flavor,
    pub(crate) done: D,
}

impl<D> Plan<D> {
    /// Forward to `upstream` (of the route `route`, with its group's
    /// `timeouts`); error answers in `flavor` carry `request_id`. `None`
    /// when the upstream is not a plain `http://` one.
    pub fn new(
        upstream: &Upstream,
        timeouts: Timeouts,
        request_id: RequestId,
        route: Arc<str>,
        flavor: Flavor,
        done: D,
    ) -> Option<Self> {
        upstream.express_conns()?;
        Some(Plan {
            upstream: upstream.clone(),
            timeouts,
            request_id,
            route,
            flavor,
            done,
        })
    }
}

/// The fields the express lane handles itself and never copies from the
/// client (in lower case): hop-by-hop fields, and the ones the proxy sets.
const REPLACED: [&str; 9] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Writes an upstream request head from a client's, as the reverse proxy
/// would send it for a client that is not a trusted proxy.
#[derive(Debug)]
pub struct UpstreamHead<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> UpstreamHead<'o> {
    /// Start the head in `out`: the request line, with `base` (the
    /// upstream's base path, no trailing slash) before the target's path.
    pub fn start(out: &'o mut Vec<u8>, method: &Method, base: &str, pq: &PathAndQuery) -> Self {
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        crate::proxy::join_path_into(out, base, pq);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        UpstreamHead { out }
    }

    /// Whether a client field is one the head sets itself (hop-by-hop,
    /// `Host`, the forwarding fields): leave it out of
    /// [`copy`](Self::copy). `X-Request-Id` is not among them; the caller
    /// decides about it.
    pub fn replaces(name: &[u8]) -> bool {
        REPLACED
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Copy a client field; `false` (nothing written) when its value has
    /// bytes a header map refuses (control characters other than tab).
    pub fn copy(&mut self, name: &[u8], value: &[u8]) -> bool {
        if !crate::proxy::is_valid_value(value) {
            return false;
        }
        self.out.extend(name.iter().map(u8::to_ascii_lowercase));
        self.put_value(value);
        true
    }

    /// Add the field `name` (lower case) with the value `write` appends;
    /// nothing when it appends nothing. `false` (nothing written) when the
    /// value has bytes a header map refuses.
    pub fn add_with(&mut self, name: &[u8], write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let start = self.out.len();
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        let value = self.out.len();
        write(self.out);
        let v = self.out.get(value..).unwrap_or_default();
        let (empty, valid) = (v.is_empty(), crate::proxy::is_valid_value(v));
        if empty || !valid {
            self.out.truncate(start);
            return valid;
        }
        self.out.extend_from_slice(b"\r\n");
        true
    }

    /// Add whole field lines (`name: value\r\n` each, names in lower case,
    /// values valid) the gateway made.
    pub fn add_lines(&mut self, lines: &[u8]) {
        self.out.extend_from_slice(lines);
    }

    fn put_value(&mut self, value: &[u8]) {
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    /// `Host`, the forwarding fields and `X-Request-Id`, then the end of
    /// the head.
    pub fn finish(self, host: &[u8], conn: &ConnectionInfo, request_id: &RequestId) {
        let ip = conn.peer.ip().to_canonical();
        let scheme = conn.scheme();
        if host.len() > MAX_REMEMBERED_HOST {
            write_tail(self.out, host, ip, scheme);
        } else {
            LAST_TAIL.with_borrow_mut(|last| {
                let same = last.ip == Some(ip) && last.scheme == scheme && *last.host == *host;
                if !same {
                    last.ip = Some(ip);
                    last.scheme = scheme;
                    last.host.clear();
                    last.host.extend_from_slice(host);
                    last.text.clear();
                    write_tail(&mut last.text, host, ip, scheme);
                }
                self.out.extend_from_slice(&last.text);
            });
        }
        self.out.extend_from_slice(request_id.as_str().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
    }
}

/// The part of an upstream head from `Host` to the name of
/// `X-Request-Id`, as last written on this thread, with what it was
/// written from. A connection's requests, and most of a thread's, come
/// from one client address with one scheme and one `Host`: copying the
/// text costs a fraction of writing it (the address and `Forwarded`'s
/// quoting).
struct Tail {
    ip: Option<IpAddr>,
    scheme: &'static str,
    host: Vec<u8>,
    text: Vec<u8>,
}

thread_local! {
    static LAST_TAIL: std::cell::RefCell<Tail> = const {
        std::cell::RefCell::new(Tail {
            ip: None,
            scheme: "",
            host: Vec::new(),
            text: Vec::new(),
        })
    };
}

/// Longer `Host` values are not remembered per thread (here, nor by the
/// gateway's planner): written, or read, each time.
pub(crate) const MAX_REMEMBERED_HOST: usize = 256;

/// `Host`, `X-Forwarded-Host`, `-For`, `-Proto`, `Forwarded` and the name
/// of `X-Request-Id` (see [`Tail`]).
fn write_tail(out: &mut Vec<u8>, host: &[u8], ip: IpAddr, scheme: &str) {
    out.extend_from_slice(b"host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nx-forwarded-for: ");
    let mut text = String::with_capacity(48);
    crate::proxy::push_ip(&mut text, ip);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"\r\nforwarded: for=");
    match ip {
        IpAddr::V4(_) => out.extend_from_slice(text.as_bytes()),
        IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(scheme.as_bytes());
    // (A `Host` that is not text gets no `host=`, as in the proxy.)
    if let Ok(h) = std::str::from_utf8(host) {
        text.clear();
        crate::proxy::push_forwarded_value(&mut text, h);
        out.extend_from_slice(b";host=");
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(b"\r\nx-request-id: ");
}

/// No express lane: every request goes through the stack.
#[derive(Debug)]
pub(crate) enum NoExpress {}

impl Express for NoExpress {
    type Done = ();

    fn plan(&self, _: &RequestHead<'_>, _: &ConnectionInfo, _: &mut Vec<u8>) -> Option<Plan<()>> {
        None
    }

    fn finished(&self, (): (), _: StatusCode, _: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{TrustedProxies, prepare_request};
    use http::{HeaderMap, HeaderName, HeaderValue};

    /// A field made by a writer: written whole when valid, left out when
    /// empty, refused (nothing written) when a header map would refuse it.
    #[test]
    fn a_written_field_is_whole_absent_or_refused() {
        let pq = PathAndQuery::from_static("/a");
        let mut out = Vec::new();
        let mut w = UpstreamHead::start(&mut out, &Method::GET, "", &pq);
        assert!(w.add_with(b"cookie", |o| o.extend_from_slice(b"a=1; b=2")));
        assert!(w.add_with(b"cookie", |_| {}));
        assert!(!w.add_with(b"cookie", |o| o.extend_from_slice(b"a=\x01")));
        assert!(!w.add_with(b"cookie", |o| o.extend_from_slice(b"a\r\nx: y")));
        assert!(w.add_with(b"x-tab", |o| o.extend_from_slice(b"a\tb")));
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\r\ncookie: a=1; b=2\r\nx-tab: a\tb\r\n"
        );
    }

    /// The fields of a head, by name (lower case), values in order.
    fn fields_of(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).unwrap_or_default();
        let mut v: Vec<(String, String)> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        // Stable: values of one name keep their order.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `UpstreamHead` writes what `prepare_request` makes of the same
    /// client fields, for IPv4 and IPv6 clients and hosts that are and are
    /// not `Forwarded` tokens.
    #[test]
    fn the_head_carries_what_the_proxy_sets() {
        let client = [
            ("Host", "ignored"),
            ("User-Agent", "t"),
            ("X-Forwarded-For", "10.0.0.9"),
            ("Forwarded", "for=10.0.0.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "outer"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Accept", "a"),
            ("accept", "b"),
        ];
        for (peer, host) in [
            ("192.0.2.7:5000", "app.example.com"),
            ("[2001:db8::1]:5000", "app.example.com:8443"),
            ("[::ffff:192.0.2.8]:5000", "[2001:db8::2]"),
        ] {
            let peer: std::net::SocketAddr = peer.parse().unwrap_or_else(|_| unreachable!());
            let conn = ConnectionInfo::plain(peer, peer);
            let rid = RequestId(Arc::from("0123456789abcdef0123456789abcdef"));
            let pq = PathAndQuery::from_static("/a/b?c=d");

            let mut out = Vec::new();
            let mut w = UpstreamHead::start(&mut out, &Method::GET, "/base", &pq);
            for (n, v) in client {
                if !UpstreamHead::replaces(n.as_bytes()) {
                    assert!(w.copy(n.as_bytes(), v.as_bytes()));
                }
            }
            w.finish(host.as_bytes(), &conn, &rid);

            let mut map = HeaderMap::new();
            for (n, v) in client {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap_or_else(|_| unreachable!()),
                    HeaderValue::from_static(v),
                );
            }
            let host_value = HeaderValue::from_static(host);
            prepare_request(
                &mut map,
                None,
                &host_value,
                Some(&conn),
                &TrustedProxies::none(),
                Some(&rid),
            );
            let mut expected = b"GET /base/a/b?c=d HTTP/1.1\r\n".to_vec();
            for (n, v) in &map {
                expected.extend_from_slice(n.as_str().as_bytes());
                expected.extend_from_slice(b": ");
                expected.extend_from_slice(v.as_bytes());
                expected.extend_from_slice(b"\r\n");
            }
            assert!(out.starts_with(b"GET /base/a/b?c=d HTTP/1.1\r\n"));
            assert!(out.ends_with(b"\r\n\r\n"));
            assert_eq!(fields_of(&out), fields_of(&expected), "{peer} {host}");
        }
    }

    /// The remembered forwarding fields are the ones written afresh, for
    /// each change of client address, scheme or `Host` and each repeat.
    #[test]
    fn remembered_forwarding_fields_follow_the_request() {
        let v4: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let plain = |peer| ConnectionInfo::plain(peer, peer);
        let tls = |peer| ConnectionInfo {
            tls: Some(Arc::new(crate::ext::TlsInfo::default())),
            ..ConnectionInfo::plain(peer, peer)
        };
        let long = "h".repeat(MAX_REMEMBERED_HOST + 1);
        let steps = [
            (plain(v4), "a.example"),
            (plain(v4), "a.example"),
            (plain(v6), "a.example"),
            (tls(v6), "a.example"),
            (tls(v6), "b.example:8443"),
            (plain(v4), "a.example"),
            (plain(v4), long.as_str()),
            (plain(v4), "a.example"),
        ];
        let rid = RequestId(Arc::from("r1"));
        for (i, (conn, host)) in steps.iter().enumerate() {
            let mut out = Vec::new();
            let w =
                UpstreamHead::start(&mut out, &Method::GET, "", &PathAndQuery::from_static("/"));
            w.finish(host.as_bytes(), conn, &rid);
            let mut expected = b"GET / HTTP/1.1\r\n".to_vec();
            write_tail(
                &mut expected,
                host.as_bytes(),
                conn.peer.ip().to_canonical(),
                conn.scheme(),
            );
            expected.extend_from_slice(b"r1\r\n\r\n");
            assert_eq!(out, expected, "step {i}");
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(&format!("\r\nx-forwarded-proto: {}\r\n", conn.scheme())));
            assert!(text.contains(&format!("host: {host}\r\n")), "step {i}");
        }
    }

    #[test]
    fn control_bytes_in_a_value_are_refused() {
        let mut out = Vec::new();
        let mut w =
            UpstreamHead::start(&mut out, &Method::GET, "", &PathAndQuery::from_static("/"));
        assert!(w.copy(b"X-A", b"tab\tok \x80obs-text"));
        assert!(!w.copy(b"X-B", b"a\x01b"));
        assert!(!w.copy(b"X-C", b"a\x7fb"));
        assert!(!w.copy(b"X-D", b"a\rb"));
        assert_eq!(out, b"GET / HTTP/1.1\r\nx-a: tab\tok \x80obs-text\r\n");
    }
}
