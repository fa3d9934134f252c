//! Remove every client-sent identity header before anything else runs.
//!
//! [`StripIdentityLayer`] deletes
//!
//! - every `Hexon-*`, `Signature` and `Signature-Input` header (and their `_`
//!   spellings), through [`hexon_core::httpsig::remove_identity_headers`]; a
//!   client's own `Signature-Input`/`Signature` pair (API clients may sign
//!   requests, RFC 9421) is moved to the [`ClientSignature`] extension for
//!   authentication;
//! - the identity headers other proxies and backends commonly trust
//!   ([`DEFAULT_EXTRA_HEADERS`]: `Remote-User`, `X-Forwarded-User`,
//!   `X-Auth-Request-*`, ...), extendable with [`StripIdentityLayer::with_header`]
//!   and [`StripIdentityLayer::with_prefix`].
//!
//! Names are compared case-insensitively with `_` equal to `-`: CGI-style
//! stacks (WSGI, PHP, Rack) fold both into the same variable, so
//! `Remote_User` must not slip past either. The layer runs first in the stack,
//! so a forged identity can never reach authentication, policy or a backend.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request};
use tower_layer::Layer;
use tower_service::Service;

use hexon_core::httpsig::{SIGNATURE, SIGNATURE_INPUT};

use crate::ext::ClientSignature;

/// Identity headers, beyond `Hexon-*` and `Signature*`, that are removed by
/// default. An entry ending in `*` is a prefix.
///
/// They are the headers that other authenticating proxies (oauth2-proxy,
/// Authelia, Pomerium, Apache/nginx `auth_request`, IIS, Shibboleth) set and
/// that backends are often configured to trust blindly.
pub const DEFAULT_EXTRA_HEADERS: &[&str] = &[
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-remote-user",
    "x-remote-email",
    "x-remote-groups",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-*",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-user",
    "x-username",
    "x-email",
    "x-webauth-user",
    "x-ms-client-principal*",
    "x-goog-authenticated-user-*",
    "x-pomerium-*",
    "x-client-cert*",
    "x-ssl-client-*",
    "ssl-client-*",
];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    /// Lower-case, `_` folded to `-`, without the trailing `*`.
    name: Box<str>,
    prefix: bool,
}

impl Pattern {
    fn parse(raw: &str) -> Option<Self> {
        let (name, prefix) = match raw.strip_suffix('*') {
            Some(p) => (p, true),
            None => (raw, false),
        };
        if name.is_empty() {
            return None;
        }
        let folded: String = name
            .chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        Some(Pattern {
            name: folded.into(),
            prefix,
        })
    }

    /// `n` is already lower-case (an [`HeaderName`]'s bytes).
    fn matches(&self, n: &[u8]) -> bool {
        let p = self.name.as_bytes();
        let len_ok = if self.prefix {
            n.len() >= p.len()
        } else {
            n.len() == p.len()
        };
        len_ok
            && n.iter()
                .zip(p)
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    }
}

/// The patterns, with the first bytes they can match: most names of a
/// request (`accept…`, `cookie`, `host`, `user-agent`) start with a byte no
/// pattern does and are passed over without a comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Patterns {
    list: Vec<Pattern>,
    /// Bit `b`: some pattern may match a name that starts with byte `b`.
    first: [u64; 4],
}

impl Patterns {
    fn new(list: Vec<Pattern>) -> Self {
        let mut first = [0u64; 4];
        let mut set = |b: u8| {
            if let Some(w) = first.get_mut(usize::from(b >> 6)) {
                *w |= 1 << (b & 63);
            }
        };
        for p in &list {
            if let Some(&b) = p.name.as_bytes().first() {
                set(b);
                // A name's `_` matches a pattern's `-`.
                if b == b'-' {
                    set(b'_');
                }
            }
        }
        Patterns { list, first }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `name` is lower-case (an [`HeaderName`]'s bytes).
    fn matches(&self, name: &[u8]) -> bool {
        let Some(&b) = name.first() else {
            return false;
        };
        let possible = self
            .first
            .get(usize::from(b >> 6))
            .is_some_and(|w| w >> (b & 63) & 1 == 1);
        possible && self.list.iter().any(|p| p.matches(name))
    }
}

/// Removes client-sent identity headers. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct StripIdentityLayer {
    patterns: Arc<Patterns>,
}

impl Default for StripIdentityLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl StripIdentityLayer {
    /// `Hexon-*`, `Signature*` and [`DEFAULT_EXTRA_HEADERS`].
    pub fn new() -> Self {
        StripIdentityLayer {
            patterns: Arc::new(Patterns::new(
                DEFAULT_EXTRA_HEADERS
                    .iter()
                    .filter_map(|p| Pattern::parse(p))
                    .collect(),
            )),
        }
    }

    /// Only `Hexon-*` and `Signature*` (no extra headers).
    pub fn hexon_only() -> Self {
        StripIdentityLayer {
            patterns: Arc::default(),
        }
    }

    /// Also remove the header `name` (case-insensitive, `_` = `-`). A name
    /// ending in `*` is a prefix, like [`with_prefix`](Self::with_prefix).
    pub fn with_header(self, name: &str) -> Self {
        self.push(Pattern::parse(name))
    }

    /// Also remove every header starting with `prefix`.
    pub fn with_prefix(self, prefix: &str) -> Self {
        let p = Pattern::parse(prefix).map(|mut p| {
            p.prefix = true;
            p
        });
        self.push(p)
    }

    fn push(self, p: Option<Pattern>) -> Self {
        let mut v = self.patterns.list.clone();
        if let Some(p) = p {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        StripIdentityLayer {
            patterns: Arc::new(Patterns::new(v)),
        }
    }

    /// Whether a header field named `name` (any case) is removed.
    pub fn strips(&self, name: &[u8]) -> bool {
        let mut small = [0u8; 64];
        let long;
        let lower: &[u8] = match small.get_mut(..name.len()) {
            Some(dst) => {
                for (d, s) in dst.iter_mut().zip(name) {
                    *d = s.to_ascii_lowercase();
                }
                dst
            }
            None => {
                long = name.to_ascii_lowercase();
                &long
            }
        };
        hexon_core::httpsig::is_identity_header_bytes(lower) || self.patterns.matches(lower)
    }

    /// Strip `headers` in place (what the service does to every request).
    pub fn strip(&self, headers: &mut HeaderMap) {
        strip(&self.patterns, headers);
    }
}

fn strip(patterns: &Patterns, headers: &mut HeaderMap) {
    hexon_core::httpsig::remove_identity_headers(headers);
    if patterns.is_empty() {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| patterns.matches(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

impl<S> Layer<S> for StripIdentityLayer {
    type Service = StripIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripIdentity {
            inner,
            patterns: self.patterns.clone(),
        }
    }
}

/// The service produced by [`StripIdentityLayer`].
#[derive(Clone)]
pub struct StripIdentity<S> {
    inner: S,
    patterns: Arc<Patterns>,
}

impl<S: fmt::Debug> fmt::Debug for StripIdentity<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripIdentity")
            .field("inner", &self.inner)
            .field("patterns", &self.patterns.list.len())
            .finish()
    }
}

impl<S> StripIdentity<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for StripIdentity<S>
where
    S: Service<Request<StrippedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // A client's own RFC 9421 signature (API clients sign requests) is
        // kept aside for authentication, never as a header. Only one made
        // with a Hexon credential (`keyid="cred_…"`) is the gateway's
        // business; others (crawlers, fediverse servers, a partner signing
        // for the backend) are removed as before.
        parts.extensions.remove::<ClientSignature>();
        if parts
            .headers
            .get_all(SIGNATURE_INPUT)
            .iter()
            .any(|v| names_hexon_credential(v.as_bytes()))
        {
            let mut fields = HeaderMap::new();
            for name in [SIGNATURE_INPUT, SIGNATURE] {
                for v in parts.headers.get_all(&name) {
                    fields.append(name.clone(), v.clone());
                }
            }
            parts.extensions.insert(ClientSignature(fields));
        }
        strip(&self.patterns, &mut parts.headers);
        strip_trailer_declaration(&self.patterns, &mut parts.headers);
        let body = StrippedBody {
            inner: body,
            patterns: self.patterns.clone(),
        };
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Whether a `Signature-Input` value names a Hexon credential as `keyid`.
pub(crate) fn names_hexon_credential(value: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"keyid=\"cred_";
    value.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

/// Drop identity header names from the `Trailer` declaration: HTTP/1.1
/// encoders only send declared trailers, and a declared `Hexon-User`
/// trailer must not survive even as a name.
fn strip_trailer_declaration(patterns: &Patterns, headers: &mut HeaderMap) {
    let declared: Vec<String> = headers
        .get_all(http::header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if declared.is_empty() {
        return;
    }
    let kept: Vec<&str> = declared
        .iter()
        .map(String::as_str)
        .filter(|n| {
            let mut probe = HeaderMap::new();
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(name) => {
                    probe.insert(name, http::HeaderValue::from_static(""));
                    strip(patterns, &mut probe);
                    !probe.is_empty()
                }
                Err(_) => false,
            }
        })
        .collect();
    headers.remove(http::header::TRAILER);
    if !kept.is_empty() {
        if let Ok(v) = http::HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(http::header::TRAILER, v);
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body whose trailers get the same stripping as the headers:
    /// a client must not smuggle `Hexon-User` in as a trailer either (some
    /// frameworks merge trailers into the header map).
    pub struct StrippedBody<B> {
        #[pin]
        inner: B,
        patterns: Arc<Patterns>,
    }
}

impl<B: fmt::Debug> fmt::Debug for StrippedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrippedBody")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<B: http_body::Body> http_body::Body for StrippedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        strip(this.patterns, &mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_fold_case_and_underscore() {
        let layer = StripIdentityLayer::new().with_header("X-Custom_User");
        let mut h = HeaderMap::new();
        for name in [
            "remote-user",
            "remote_user",
            "x-auth-request-email",
            "x_auth_request_groups",
            "x-custom-user",
            "x_custom_user",
            "hexon-user",
            "hexon_groups",
            "signature",
            "signature_input",
            "x-forwarded-for",
            "remote-userx",
            "accept",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        layer.strip(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-forwarded-for", "remote-userx", "accept"]);
    }

    #[test]
    fn the_first_byte_filter_agrees_with_every_pattern() {
        let layer = StripIdentityLayer::new()
            .with_header("-leading-dash")
            .with_prefix("_under");
        let p = &layer.patterns;
        let mut names: Vec<String> = Vec::new();
        for pat in &p.list {
            let n = pat.name.to_string();
            names.push(n.clone());
            names.push(format!("{n}-more"));
            names.push(n.replace('-', "_"));
            for first in [b'_', b'-', b'a', b'x', b'r', b's', b'h', b'0'] {
                let mut b = n.clone().into_bytes();
                if let Some(f) = b.first_mut() {
                    *f = first;
                }
                names.push(String::from_utf8(b).unwrap());
            }
        }
        names.extend(["", "a", "accept", "host", "user-agent", "_leading-dash"].map(String::from));
        let mut matched = 0;
        for n in &names {
            let plain = p.list.iter().any(|pat| pat.matches(n.as_bytes()));
            assert_eq!(p.matches(n.as_bytes()), plain, "{n:?}");
            matched += usize::from(plain);
        }
        // The names above include every pattern itself.
        assert!(matched >= p.list.len());
        assert!(p.matches(b"_leading_dash") && p.matches(b"-under-x"));
    }

    #[test]
    fn strips_agrees_with_the_layer_in_any_case() {
        let layer = StripIdentityLayer::new().with_header("X-Auth-User");
        let long = format!("x-{}", "a".repeat(80));
        for name in [
            "Hexon-User",
            "HEXON_GROUPS",
            "signature",
            "Signature-Input",
            "X-Auth-User",
            "x_auth_user",
            "X-Forwarded-User",
            "User-Agent",
            "Accept",
            "hexon-",
            long.as_str(),
        ] {
            let mut headers = HeaderMap::new();
            let name_ = HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| unreachable!());
            headers.insert(name_, http::HeaderValue::from_static("v"));
            layer.strip(&mut headers);
            assert_eq!(layer.strips(name.as_bytes()), headers.is_empty(), "{name}");
        }
    }

    #[test]
    fn hexon_only_keeps_others() {
        let mut h = HeaderMap::new();
        h.insert("remote-user", "eve".parse().unwrap());
        h.insert("hexon-user", "eve".parse().unwrap());
        StripIdentityLayer::hexon_only().strip(&mut h);
        assert!(h.contains_key("remote-user") && !h.contains_key("hexon-user"));
        StripIdentityLayer::hexon_only()
            .with_prefix("remote")
            .strip(&mut h);
        assert!(h.is_empty());
    }
}
