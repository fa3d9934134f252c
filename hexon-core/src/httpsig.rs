//! The contract with backends: the caller's identity as headers, signed as an
//! [RFC 9421] HTTP Message Signature.
//!
//! The gateway removes every client-sent identity header
//! ([`remove_identity_headers`]), then [`HttpSigner::sign`] sets
//!
//! | header | value |
//! |---|---|
//! | `Hexon-User` | username |
//! | `Hexon-Subject` | stable subject id |
//! | `Hexon-Kind` | `user` or `service` |
//! | `Hexon-Email` | email (if known) |
//! | `Hexon-Name` | display name (if known) |
//! | `Hexon-Groups` | resolved groups, `a, b, c` (if any) |
//! | `Hexon-Auth` | methods used with their Unix times, `password=1700000000, webauthn=1700000090` (if any) |
//! | `Hexon-Session` | public session id (if any) |
//! | `Hexon-Route` | the route that admitted the request |
//!
//! Every text value is percent-encoded (UTF-8, upper-case hex) for exactly
//! the bytes that could be ambiguous in a header: controls, space, `"`, `%`,
//! `,`, `;`, `\`, DEL and everything non-ASCII. Decoding is strict and
//! canonical: a value decodes only if encoding the result gives back the very
//! same bytes, so one identity has exactly one header form.
//!
//! The headers present, and `@authority`, are covered by a signature with the
//! label `hexon` and the parameters `created`, `expires`, `keyid`, `alg` and
//! `tag="hexon"`. A route may bind the signature to the request
//! ([`Binding`]): then `@method`, `@path`, `@query` and a random `nonce` are
//! covered too, and optionally `content-digest` (RFC 9530, `sha-256`).
//!
//! Unbound signatures do not depend on the request, so [`HttpSigner`] reuses
//! one per (session, route, authority) for the first half of its lifetime:
//! on the hot path signing is a cache lookup. [`Verifier`] keeps a bounded
//! cache of signatures it has verified, so a backend that sees the same
//! signature again skips the public-key operation (it still rebuilds and
//! compares the signature base, and still checks time and key validity).
//!
//! ```
//! use std::sync::Arc;
//! use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
//! use hexon_core::httpsig::{Binding, HttpSigner, Verifier};
//!
//! # tokio_test_block_on(async {
//! let key = Arc::new(Ed25519Signer::generate("gw-1")?);
//! let mut keys = KeySet::new();
//! keys.insert("gw-1", key.public_key(), None)?;
//!
//! let signer = HttpSigner::new(key);
//! let verifier = Verifier::new(keys, ["app.example.com"]);
//!
//! let alice = Identity::builder("u-1", "alice").groups(["eng"]).session("s-1").build()?;
//! let now = UnixTime::from_secs(1_700_000_000);
//! let (mut parts, ()) = http::Request::get("http://app.example.com/reports?q=1")
//!     .body(())?
//!     .into_parts();
//! signer.sign(&alice, "app", Binding::default(), &mut parts, now).await?;
//!
//! let verified = verifier.verify_parts(&parts, now)?;
//! assert_eq!(verified.identity, alice);
//! assert_eq!(&*verified.route, "app");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [RFC 9421]: https://www.rfc-editor.org/rfc/rfc9421

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use quick_cache::Equivalent;
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::identity::{AuthEvent, AuthMethod, Identity, IdentityKind};
use crate::keys::{KeySet, PublicKey, SignatureError};
use crate::signer::{Algorithm, SignError, Signer};
use crate::time::UnixTime;

/// The signature label (dictionary key in `Signature-Input` / `Signature`).
pub const LABEL: &str = "hexon";
/// The `tag` parameter value: marks the signature as Hexon's identity signature.
pub const TAG: &str = "hexon";

/// `Hexon-User`: username.
pub const HEXON_USER: HeaderName = HeaderName::from_static("hexon-user");
/// `Hexon-Subject`: stable subject id.
pub const HEXON_SUBJECT: HeaderName = HeaderName::from_static("hexon-subject");
/// `Hexon-Kind`: `user` or `service`.
pub const HEXON_KIND: HeaderName = HeaderName::from_static("hexon-kind");
/// `Hexon-Email`: email address.
pub const HEXON_EMAIL: HeaderName = HeaderName::from_static("hexon-email");
/// `Hexon-Name`: display name.
pub const HEXON_NAME: HeaderName = HeaderName::from_static("hexon-name");
/// `Hexon-Groups`: resolved groups, comma separated.
pub const HEXON_GROUPS: HeaderName = HeaderName::from_static("hexon-groups");
/// `Hexon-Auth`: authentication methods with their times.
pub const HEXON_AUTH: HeaderName = HeaderName::from_static("hexon-auth");
/// `Hexon-Session`: public session id.
pub const HEXON_SESSION: HeaderName = HeaderName::from_static("hexon-session");
/// `Hexon-Route`: the route that admitted the request.
pub const HEXON_ROUTE: HeaderName = HeaderName::from_static("hexon-route");
/// `Signature-Input` (RFC 9421).
pub const SIGNATURE_INPUT: HeaderName = HeaderName::from_static("signature-input");
/// `Signature` (RFC 9421).
pub const SIGNATURE: HeaderName = HeaderName::from_static("signature");
/// `Content-Digest` (RFC 9530).
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");

/// Components every Hexon identity signature must cover (what a verifier
/// in any language should require).
pub const REQUIRED_COMPONENTS: [&str; 5] = [
    "hexon-user",
    "hexon-subject",
    "hexon-kind",
    "hexon-route",
    "@authority",
];
/// Components a request-bound signature covers in addition.
pub const BOUND_COMPONENTS: [&str; 3] = ["@method", "@path", "@query"];

/// Bytes percent-encoded in identity header values.
const ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'%')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(0x7f);

/// Limit on the combined `Signature-Input` / `Signature` field values a verifier parses.
const MAX_SIGNATURE_FIELD: usize = 8 * 1024;

/// Remove every identity and signature header a client might have sent:
/// all `Hexon-*` headers, `Signature`, `Signature-Input` (and their `_`
/// spellings). The gateway calls this before anything else, so a forged
/// identity can never reach a backend.
pub fn remove_identity_headers(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_identity_header(n.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether a (lower-case) header name belongs to the identity contract.
/// `_` counts as `-`: CGI-style stacks (WSGI, PHP, Rack) fold both into the
/// same variable, so `Hexon_Groups` must not slip past the gateway either.
pub fn is_identity_header(name: &str) -> bool {
    is_identity_header_bytes(name.as_bytes())
}

/// [`is_identity_header`] for a lower-case name's bytes.
pub fn is_identity_header_bytes(n: &[u8]) -> bool {
    let dashed = |prefix: &[u8]| {
        n.len() >= prefix.len()
            && n.iter()
                .zip(prefix)
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    (dashed(b"hexon-") && n.len() > 6)
        || (n.len() == 9 && dashed(b"signature"))
        || (n.len() == 15 && dashed(b"signature-input"))
}

/// Percent-encode an identity value (see the module docs).
pub fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, ENCODE).to_string()
}

/// Decode an identity value strictly: only visible ASCII, `%XX` with
/// upper-case hex, valid UTF-8, and canonical (re-encoding gives the input).
pub fn decode_value(raw: &str) -> Result<String, HeaderDecodeError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(upper_hex);
            let lo = bytes.next().and_then(upper_hex);
            let (Some(h), Some(l)) = (hi, lo) else {
                return Err(HeaderDecodeError::BadEscape);
            };
            let d = h << 4 | l;
            // Canonical: only bytes that must be encoded may appear encoded.
            if !must_encode(d) {
                return Err(HeaderDecodeError::NotCanonical);
            }
            out.push(d);
        } else if must_encode(b) {
            return Err(HeaderDecodeError::RawByte);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| HeaderDecodeError::NotUtf8)
}

/// The bytes [`ENCODE`] percent-encodes (percent-encoding also always encodes non-ASCII).
fn must_encode(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || matches!(b, b'"' | b'%' | b',' | b';' | b'\\')
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why an identity header value did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderDecodeError {
    /// A byte that must be percent-encoded (space, control, non-ASCII, `"`, `,`, `;`, `\\`) appears raw.
    #[error("raw byte that must be percent-encoded")]
    RawByte,
    /// `%` not followed by two upper-case hex digits.
    #[error("malformed percent escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("decoded value is not UTF-8")]
    NotUtf8,
    /// The value is not in canonical form (a byte encoded that need not be, or the reverse).
    #[error("value is not canonically encoded")]
    NotCanonical,
}

/// Content-Digest (RFC 9530) header value for a body: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let value = format!("sha-256=:{}:", STANDARD.encode(digest));
    // Base64 and the fixed prefix are always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// How strongly a signature is bound to the request it travels on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Cover `@method`, `@path`, `@query` and a random `nonce`: the signature
    /// is made per request and is useless on any other request.
    #[serde(default)]
    pub request: bool,
    /// Also cover `content-digest` (implies `request`). The request must
    /// carry a `Content-Digest` header with a `sha-256` member (see
    /// [`content_digest`]); the backend SDK checks the body against it.
    #[serde(default)]
    pub content_digest: bool,
}

impl Binding {
    /// Unbound: identity headers and `@authority` only; cacheable.
    pub const NONE: Binding = Binding {
        request: false,
        content_digest: false,
    };
    /// Bound to method, path, query and a nonce.
    pub const REQUEST: Binding = Binding {
        request: true,
        content_digest: false,
    };
    /// Bound to the request and its body digest.
    pub const REQUEST_AND_BODY: Binding = Binding {
        request: true,
        content_digest: true,
    };

    /// Whether the signature covers more than the identity and the
    /// authority (unbound signatures are cached and reused).
    pub fn is_bound(self) -> bool {
        self.request || self.content_digest
    }
}

/// Why signing a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSigError {
    /// The signing key failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// An identity header would exceed the configured size (e.g. a huge group list).
    #[error(
        "identity header {header} would be {len} bytes, over the limit of {max}; \
         pass fewer groups to this route or raise the limit"
    )]
    HeaderTooLarge {
        /// Which header.
        header: &'static str,
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request has neither an absolute URI nor a single `Host` header.
    #[error("request has no authority (absolute URI or Host header) to sign")]
    MissingAuthority,
    /// Body binding was asked for but the request has no `sha-256` `Content-Digest`.
    #[error("route binds the body but the request has no sha-256 Content-Digest header")]
    MissingContentDigest,
    /// A value could not be put into a header (cannot happen with encoded values; kept fail-closed).
    #[error("value for {0} is not a valid header value")]
    InvalidHeader(&'static str),
}

/// Result of a successful [`HttpSigner::sign`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Signed {
    /// When the signature expires.
    pub expires: UnixTime,
    /// Whether a cached signature was reused.
    pub cached: bool,
}

/// Signs identity headers onto requests. Shared across tasks (`Arc`).
pub struct HttpSigner {
    signer: RwLock<Arc<dyn Signer>>,
    lifetime: Duration,
    max_header_bytes: usize,
    cache: Option<quick_cache::sync::Cache<CacheKey, Arc<CachedSignature>>>,
}

impl fmt::Debug for HttpSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSigner")
            .field("signer", &*read(&self.signer))
            .field("lifetime", &self.lifetime)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("cached", &self.cache.as_ref().map(|c| c.len()))
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    principal: Arc<str>,
    route: Box<str>,
    authority: Box<str>,
}

struct CacheKeyRef<'a> {
    principal: &'a str,
    route: &'a str,
    authority: &'a str,
}

impl Equivalent<CacheKey> for CacheKeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        *key.principal == *self.principal
            && *key.route == *self.route
            && *key.authority == *self.authority
    }
}

// `CacheKey` and `CacheKeyRef` must hash alike for borrowed lookups.
impl Hash for CacheKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.principal.hash(state);
        self.route.hash(state);
        self.authority.hash(state);
    }
}

/// The headers of a cached unbound signature
/// ([`HttpSigner::cached_headers`]).
#[derive(Clone)]
pub struct CachedHeaders(Arc<CachedSignature>);

impl CachedHeaders {
    /// The identity headers, `Signature-Input` and `Signature`, in the
    /// order [`HttpSigner::sign`] appends them.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.headers.iter().map(|(n, v)| (n, v))
    }

    /// The same fields as HTTP/1.1 field lines, `name: value\r\n` each
    /// (names in lower case), made once when the signature was cached.
    pub fn lines(&self) -> &[u8] {
        &self.0.lines
    }
}

impl fmt::Debug for CachedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedHeaders").finish_non_exhaustive()
    }
}

struct CachedSignature {
    identity: Identity,
    key_id: Box<str>,
    created: UnixTime,
    expires: UnixTime,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `headers` as HTTP/1.1 field lines (`name: value\r\n` each).
    lines: Box<[u8]>,
}

fn read<T: ?Sized>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    // A poisoned lock only means a writer panicked between two plain stores.
    match lock.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

impl HttpSigner {
    /// Sign with `signer`; signatures live 2 minutes, headers up to 16 KiB each,
    /// unbound signatures cached for 10,000 (session, route, authority) triples.
    pub fn new(signer: Arc<dyn Signer>) -> Self {
        HttpSigner {
            signer: RwLock::new(signer),
            lifetime: Duration::from_secs(120),
            max_header_bytes: 16 * 1024,
            cache: Some(quick_cache::sync::Cache::new(10_000)),
        }
    }

    /// How long a signature is valid (`expires - created`). Unbound
    /// signatures are reused for the first half of it. Clamped to 1 s..=1 h.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self
    }

    /// Largest encoded identity header (default 16 KiB; proxies commonly
    /// refuse requests whose headers exceed 8-32 KiB in total).
    pub fn with_max_header_bytes(mut self, max: usize) -> Self {
        self.max_header_bytes = max;
        self
    }

    /// How many unbound signatures to keep (0 disables the cache).
    pub fn with_cache_capacity(mut self, entries: usize) -> Self {
        self.cache = (entries > 0).then(|| quick_cache::sync::Cache::new(entries));
        self
    }

    /// Signature lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The key new signatures are made with.
    pub fn signer(&self) -> Arc<dyn Signer> {
        read(&self.signer)
    }

    /// Switch to another key (rotation). Cached signatures of the old key are dropped.
    pub fn set_signer(&self, signer: Arc<dyn Signer>) {
        match self.signer.write() {
            Ok(mut g) => *g = signer,
            Err(p) => *p.into_inner() = signer,
        }
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// Sign `identity` onto the request `parts` for `route` at `now`.
    ///
    /// Removes every identity/signature header already present, then sets
    /// the identity headers, `Signature-Input` and `Signature`. The
    /// authority signed is the request's ([`authority`]: absolute URI and/or
    /// `Host`, which must agree), so set both to what the upstream will
    /// receive before signing.
    pub async fn sign(
        &self,
        identity: &Identity,
        route: &str,
        binding: Binding,
        parts: &mut Parts,
        now: UnixTime,
    ) -> Result<Signed, HttpSigError> {
        remove_identity_headers(&mut parts.headers);
        let authority = authority(parts).ok_or(HttpSigError::MissingAuthority)?;
        let signer = self.signer();
        let principal = identity.session().unwrap_or(identity.subject());

        if !binding.is_bound() {
            if let Some(hit) = self.cached(identity, principal, route, &authority, &*signer, now) {
                for (name, value) in &hit.headers {
                    parts.headers.append(name.clone(), value.clone());
                }
                return Ok(Signed {
                    expires: hit.expires,
                    cached: true,
                });
            }
        }

        let mut headers = self.identity_headers(identity, route)?;
        let mut components: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        components.push("@authority");
        let mut nonce = None;
        if binding.is_bound() {
            components.extend(BOUND_COMPONENTS);
            let mut raw = [0u8; 16];
            OsRng.fill_bytes(&mut raw);
            nonce = Some(URL_SAFE_NO_PAD.encode(raw));
        }
        if binding.content_digest {
            if content_digest_sha256(&parts.headers).is_none() {
                return Err(HttpSigError::MissingContentDigest);
            }
            components.push("content-digest");
        }
        let expires = now.saturating_add(self.lifetime);
        let params = SignatureParams {
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            created: Some(now),
            expires: Some(expires),
            key_id: Some(signer.key_id().to_owned()),
            alg: Some(signer.algorithm()),
            alg_name: None,
            nonce,
            tag: Some(TAG.to_owned()),
            order: Vec::new(),
        };
        for (name, value) in &headers {
            parts.headers.append(name.clone(), value.clone());
        }
        let base = signature_base(parts, &authority, &params)
            .map_err(|_| HttpSigError::InvalidHeader("signature base"))?;
        let signature = signer.sign(base.as_bytes()).await?;
        let input = format!("{LABEL}={}", params.serialize());
        let sig = format!("{LABEL}=:{}:", STANDARD.encode(&signature));
        let input = HeaderValue::from_str(&input)
            .map_err(|_| HttpSigError::InvalidHeader("Signature-Input"))?;
        let sig =
            HeaderValue::from_str(&sig).map_err(|_| HttpSigError::InvalidHeader("Signature"))?;
        parts.headers.insert(SIGNATURE_INPUT, input.clone());
        parts.headers.insert(SIGNATURE, sig.clone());

        if !binding.is_bound() {
            if let Some(cache) = &self.cache {
                headers.push((SIGNATURE_INPUT, input));
                headers.push((SIGNATURE, sig));
                let mut lines = Vec::with_capacity(1024);
                for (name, value) in &headers {
                    lines.extend_from_slice(name.as_str().as_bytes());
                    lines.extend_from_slice(b": ");
                    lines.extend_from_slice(value.as_bytes());
                    lines.extend_from_slice(b"\r\n");
                }
                cache.insert(
                    CacheKey {
                        principal: Arc::from(principal),
                        route: route.into(),
                        authority: authority.into(),
                    },
                    Arc::new(CachedSignature {
                        identity: identity.clone(),
                        key_id: signer.key_id().into(),
                        created: now,
                        expires,
                        headers,
                        lines: lines.into(),
                    }),
                );
            }
        }
        Ok(Signed {
            expires,
            cached: false,
        })
    }

    /// The headers [`sign`](Self::sign) would add for an unbound
    /// signature of `identity` on `route` at `authority` (as [`authority`]
    /// gives it) at `now`, when it would reuse a cached one; `None` when
    /// it would sign anew.
    pub fn cached_headers(
        &self,
        identity: &Identity,
        route: &str,
        authority: &str,
        now: UnixTime,
    ) -> Option<CachedHeaders> {
        let signer = self.signer();
        let principal = identity.session().unwrap_or(identity.subject());
        self.cached(identity, principal, route, authority, &*signer, now)
            .map(CachedHeaders)
    }

    fn cached(
        &self,
        identity: &Identity,
        principal: &str,
        route: &str,
        authority: &str,
        signer: &dyn Signer,
        now: UnixTime,
    ) -> Option<Arc<CachedSignature>> {
        let hit = self.cache.as_ref()?.get(&CacheKeyRef {
            principal,
            route,
            authority,
        })?;
        // Reuse only for the first half of the lifetime, only for the very
        // same identity (a step-up or group change signs anew) and key.
        let fresh_until = hit.created.saturating_add(self.lifetime / 2);
        let usable = now >= hit.created
            && now < fresh_until
            && *hit.key_id == *signer.key_id()
            && hit.identity == *identity;
        usable.then_some(hit)
    }

    fn identity_headers(
        &self,
        identity: &Identity,
        route: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, HttpSigError> {
        let mut out = Vec::with_capacity(9);
        let mut push = |name: HeaderName, label: &'static str, value: String| {
            if value.len() > self.max_header_bytes {
                return Err(HttpSigError::HeaderTooLarge {
                    header: label,
                    len: value.len(),
                    max: self.max_header_bytes,
                });
            }
            let v =
                HeaderValue::from_str(&value).map_err(|_| HttpSigError::InvalidHeader(label))?;
            out.push((name, v));
            Ok(())
        };
        push(HEXON_USER, "Hexon-User", encode_value(identity.username()))?;
        push(
            HEXON_SUBJECT,
            "Hexon-Subject",
            encode_value(identity.subject()),
        )?;
        push(
            HEXON_KIND,
            "Hexon-Kind",
            identity.kind().as_str().to_owned(),
        )?;
        if let Some(email) = identity.email() {
            push(HEXON_EMAIL, "Hexon-Email", encode_value(email))?;
        }
        if let Some(name) = identity.display_name() {
            push(HEXON_NAME, "Hexon-Name", encode_value(name))?;
        }
        if !identity.groups().is_empty() {
            let mut v = String::new();
            for (i, g) in identity.groups().iter().enumerate() {
                if i > 0 {
                    v.push_str(", ");
                }
                v.extend(utf8_percent_encode(g, ENCODE));
            }
            push(HEXON_GROUPS, "Hexon-Groups", v)?;
        }
        if !identity.auth().is_empty() {
            let mut v = String::new();
            for (i, e) in identity.auth().iter().enumerate() {
                if i > 0 {
                    v.push_str(", ");
                }
                let _ = write!(v, "{}={}", e.method, e.at.as_secs());
            }
            push(HEXON_AUTH, "Hexon-Auth", v)?;
        }
        if let Some(s) = identity.session() {
            push(HEXON_SESSION, "Hexon-Session", encode_value(s))?;
        }
        push(HEXON_ROUTE, "Hexon-Route", encode_value(route))?;
        Ok(out)
    }
}

/// The signature parameters of one signature (RFC 9421 §2.3).
///
/// Parameters serialize in the order they were parsed (the order is part of
/// the signed `@signature-params` line), then any other set parameter in the
/// order `created`, `expires`, `keyid`, `alg`, `nonce`, `tag`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignatureParams {
    /// Covered component identifiers, in order (`hexon-user`, `@authority`, ...).
    pub components: Vec<String>,
    /// `created`.
    pub created: Option<UnixTime>,
    /// `expires`.
    pub expires: Option<UnixTime>,
    /// `keyid`.
    pub key_id: Option<String>,
    /// `alg`, when it is one the gateway signs with (`ed25519`,
    /// `ecdsa-p256-sha256`).
    pub alg: Option<Algorithm>,
    /// `alg` as written, whatever it names (e.g. `hmac-sha256`, which API
    /// clients may sign with); takes precedence over [`Self::alg`] when
    /// serialized, so a parsed `@signature-params` line reproduces exactly.
    pub alg_name: Option<String>,
    /// `nonce`.
    pub nonce: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    order: Vec<Param>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    Created,
    Expires,
    KeyId,
    Alg,
    Nonce,
    Tag,
}

const DEFAULT_ORDER: [Param; 6] = [
    Param::Created,
    Param::Expires,
    Param::KeyId,
    Param::Alg,
    Param::Nonce,
    Param::Tag,
];

impl SignatureParams {
    /// The serialized inner list with parameters, as it appears in
    /// `Signature-Input` and on the `@signature-params` line.
    pub fn serialize(&self) -> String {
        let mut s = String::from("(");
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            sf_string(&mut s, c);
        }
        s.push(')');
        let rest = DEFAULT_ORDER.iter().filter(|p| !self.order.contains(p));
        for p in self.order.iter().chain(rest) {
            match p {
                Param::Created => {
                    if let Some(t) = self.created {
                        let _ = write!(s, ";created={}", t.as_secs());
                    }
                }
                Param::Expires => {
                    if let Some(t) = self.expires {
                        let _ = write!(s, ";expires={}", t.as_secs());
                    }
                }
                Param::KeyId => {
                    if let Some(k) = &self.key_id {
                        s.push_str(";keyid=");
                        sf_string(&mut s, k);
                    }
                }
                Param::Alg => {
                    let name = self
                        .alg_name
                        .as_deref()
                        .or(self.alg.map(Algorithm::http_sig_name));
                    if let Some(a) = name {
                        s.push_str(";alg=");
                        sf_string(&mut s, a);
                    }
                }
                Param::Nonce => {
                    if let Some(n) = &self.nonce {
                        s.push_str(";nonce=");
                        sf_string(&mut s, n);
                    }
                }
                Param::Tag => {
                    if let Some(t) = &self.tag {
                        s.push_str(";tag=");
                        sf_string(&mut s, t);
                    }
                }
            }
        }
        s
    }
}

/// RFC 8941 sf-string serialization (input already validated as printable ASCII).
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    if !s.contains(['"', '\\']) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The request's authority as RFC 9421 `@authority`: from the absolute URI
/// and/or the one `Host` header, lower-cased, default port removed (`:80`
/// for `http`, `:443` for `https`; either when the scheme is not known, as
/// for an origin-form request behind a TLS terminator).
///
/// `None` when there is no authority, when there are several `Host` headers,
/// or when the URI authority and `Host` disagree: an application that routes
/// by `Host` must see the authority that was signed.
pub fn authority(parts: &Parts) -> Option<String> {
    authority_of(&parts.uri, &parts.headers)
}

/// [`authority`] from a request's URI and headers (for callers that hold a
/// whole `Request` rather than its `Parts`).
pub fn authority_of(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let scheme = uri.scheme_str();
    let from_uri = uri
        .authority()
        .map(|a| normalize_authority(a.as_str(), scheme));
    let mut hosts = headers.get_all(HOST).iter();
    let from_host = match hosts.next() {
        Some(h) => {
            if hosts.next().is_some() {
                return None;
            }
            Some(normalize_authority(h.to_str().ok()?.trim(), scheme))
        }
        None => None,
    };
    let a = match (from_uri, from_host) {
        (Some(u), Some(h)) if u != h => return None,
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return None,
    };
    clean_authority(a)
}

/// [`authority_of`] for a request whose target is in origin form and whose
/// only `Host` field has the value `host`.
pub fn host_authority(host: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    // What `HeaderValue::to_str` accepts: visible ASCII, space and tab.
    if !host
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let text = std::str::from_utf8(host).ok()?.trim();
    // Most hosts are already what normalizing makes of them: no copy.
    let normal = !text.bytes().any(|b| b.is_ascii_uppercase())
        && !text.ends_with(":80")
        && !text.ends_with(":443");
    if normal {
        let clean = !text.is_empty()
            && !text
                .bytes()
                .any(|b| matches!(b, b'@' | b' ' | b'/' | b'\\'));
        return clean.then_some(std::borrow::Cow::Borrowed(text));
    }
    clean_authority(normalize_authority(text, None)).map(std::borrow::Cow::Owned)
}

fn clean_authority(a: String) -> Option<String> {
    let clean = !a.is_empty() && !a.bytes().any(|b| matches!(b, b'@' | b' ' | b'/' | b'\\'));
    clean.then_some(a)
}

/// Lower-case an authority and remove the scheme's default port.
pub fn normalize_authority(raw: &str, scheme: Option<&str>) -> String {
    let defaults: &[&str] = match scheme {
        Some("http") => &[":80"],
        Some("https") => &[":443"],
        Some(_) => &[],
        None => &[":80", ":443"],
    };
    // The port is digits and `:`, which have no case: strip it from the raw
    // text and lower-case what is kept (one allocation, on every request).
    let kept = defaults
        .iter()
        .find_map(|d| raw.strip_suffix(d))
        .unwrap_or(raw);
    kept.to_ascii_lowercase()
}

/// Build the RFC 9421 signature base for `params` over the request `parts`.
///
/// Supported components: `@authority`, `@method`, `@path`, `@query`,
/// `@target-uri`, `@scheme`, `@request-target` and header fields by
/// lower-case name (multiple field lines joined with `", "`, each trimmed).
/// A covered header that is absent, or not visible ASCII, is an error.
pub fn signature_base(
    parts: &Parts,
    authority: &str,
    params: &SignatureParams,
) -> Result<String, BaseError> {
    let mut base = String::with_capacity(256);
    for c in &params.components {
        sf_string(&mut base, c);
        base.push_str(": ");
        match c.as_str() {
            "@authority" => base.push_str(authority),
            "@method" => base.push_str(parts.method.as_str()),
            "@path" => {
                let p = parts.uri.path();
                base.push_str(if p.is_empty() { "/" } else { p });
            }
            "@query" => {
                base.push('?');
                base.push_str(parts.uri.query().unwrap_or(""));
            }
            "@scheme" => base.push_str(parts.uri.scheme_str().ok_or(BaseError::Component)?),
            "@target-uri" => {
                let scheme = parts.uri.scheme_str().ok_or(BaseError::Component)?;
                let _ = write!(base, "{scheme}://{authority}");
                base.push_str(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
            }
            "@request-target" => {
                base.push_str(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
            }
            name if !name.starts_with('@') => field_value(&parts.headers, name, &mut base)?,
            _ => return Err(BaseError::Component),
        }
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&params.serialize());
    Ok(base)
}

/// Append the canonical value of header `name` (RFC 9421 §2.1).
fn field_value(headers: &HeaderMap, name: &str, out: &mut String) -> Result<(), BaseError> {
    let mut any = false;
    for v in headers.get_all(name) {
        let s = v.to_str().map_err(|_| BaseError::NotAscii)?;
        if any {
            out.push_str(", ");
        }
        out.push_str(s.trim_matches([' ', '\t']));
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err(BaseError::MissingHeader)
    }
}

/// Why a signature base could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaseError {
    /// A covered header is absent.
    #[error("a covered header is missing")]
    MissingHeader,
    /// A covered header value is not visible ASCII.
    #[error("a covered header is not ASCII")]
    NotAscii,
    /// A derived component that is unknown or not available on this request.
    #[error("unsupported or unavailable derived component")]
    Component,
}

/// The `sha-256` member of the request's `Content-Digest`, if any (`None`
/// also when the field is malformed or oversized).
pub fn content_digest_sha256(headers: &HeaderMap) -> Option<[u8; 32]> {
    content_digests(headers)?.sha256
}

/// The digests a `Content-Digest` field (RFC 9530) carries, of the
/// algorithms this crate checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContentDigests {
    /// `sha-256`.
    pub sha256: Option<[u8; 32]>,
    /// `sha-512`.
    pub sha512: Option<[u8; 64]>,
}

/// The `sha-256` and `sha-512` members of the request's `Content-Digest`
/// (other algorithms are ignored). `None` when the field is absent,
/// malformed or oversized, or a known member is not a byte sequence of its
/// algorithm's length.
pub fn content_digests(headers: &HeaderMap) -> Option<ContentDigests> {
    let mut joined = String::new();
    for v in headers.get_all(CONTENT_DIGEST) {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(v.to_str().ok()?);
    }
    if joined.is_empty() || joined.len() > MAX_SIGNATURE_FIELD {
        return None;
    }
    let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    fn member<const N: usize>(dict: &sfv::Dictionary, name: &str) -> Option<Option<[u8; N]>> {
        match dict.get(name) {
            None => Some(None),
            Some(sfv::ListEntry::Item(item)) => {
                let bytes = item.bare_item.as_byte_sequence()?;
                <[u8; N]>::try_from(bytes).ok().map(Some)
            }
            Some(sfv::ListEntry::InnerList(_)) => None,
        }
    }
    Some(ContentDigests {
        sha256: member(&dict, "sha-256")?,
        sha512: member(&dict, "sha-512")?,
    })
}

/// A request whose Hexon signature verified: who called, through which route.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedIdentity {
    /// The caller.
    pub identity: Identity,
    /// The route that admitted the request (`Hexon-Route`).
    pub route: Arc<str>,
    /// The key that signed.
    pub key_id: Arc<str>,
    /// `created`.
    pub created: UnixTime,
    /// `expires`.
    pub expires: UnixTime,
    /// The signed nonce, if the signature is bound to the request. Replay
    /// tracking (remembering nonces until `expires`) is up to the backend.
    pub nonce: Option<Arc<str>>,
    /// Whether `@method`, `@path` and `@query` were covered.
    pub request_bound: bool,
    content_digest: Option<[u8; 32]>,
}

impl VerifiedIdentity {
    /// The signed SHA-256 body digest, when the signature covers
    /// `content-digest`. The body must be checked against it (the tower
    /// layer does this while the body streams).
    pub fn content_digest_sha256(&self) -> Option<[u8; 32]> {
        self.content_digest
    }
}

/// Why a request's identity signature was refused. The variant is for logs;
/// clients only ever see a bare 401.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `Signature-Input` / `Signature` with the `hexon` label.
    #[error("no Hexon signature on the request")]
    Missing,
    /// The signature fields are not valid structured fields of the expected shape.
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    /// A component Hexon requires is not covered.
    #[error("signature does not cover {0}")]
    NotCovered(&'static str),
    /// An identity header is on the request but not covered by the signature.
    #[error("identity header {0} is not covered by the signature")]
    UncoveredIdentityHeader(String),
    /// `created` is in the future.
    #[error("signature created in the future")]
    NotYetValid,
    /// `expires` has passed.
    #[error("signature expired")]
    Expired,
    /// `expires - created` is longer than this verifier accepts.
    #[error("signature lifetime longer than accepted")]
    LifetimeTooLong,
    /// `keyid` is not a key this verifier trusts (now).
    #[error("unknown or retired signing key {0:?}")]
    UnknownKey(String),
    /// The request has no single, consistent authority (absolute URI and/or one `Host`).
    #[error(
        "request has no single, consistent authority (URI and Host disagree, or no/several Host headers)"
    )]
    NoAuthority,
    /// The signature names a route this backend does not serve.
    #[error("signed for another route {0:?}")]
    WrongRoute(String),
    /// The `@authority` is not one this backend serves.
    #[error("signed for another authority {0:?}")]
    WrongAuthority(String),
    /// The signature base could not be rebuilt.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// The signature did not verify.
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    /// A signed identity header does not decode.
    #[error("identity header {header}: {error}")]
    IdentityHeader {
        /// Which header.
        header: &'static str,
        /// What is wrong.
        error: &'static str,
    },
}

/// Verifies Hexon identity signatures. Shared across tasks (`Arc`).
pub struct Verifier {
    keys: RwLock<Arc<KeySet>>,
    clock_skew: Duration,
    max_lifetime: Duration,
    require_request_binding: bool,
    authorities: Option<Vec<String>>,
    routes: Option<Vec<String>>,
    cache: Option<quick_cache::sync::Cache<[u8; 64], Arc<VerifiedSig>, VerifiedWeighter>>,
}

#[derive(Clone)]
struct VerifiedWeighter;

impl quick_cache::Weighter<[u8; 64], Arc<VerifiedSig>> for VerifiedWeighter {
    fn weight(&self, _: &[u8; 64], v: &Arc<VerifiedSig>) -> u64 {
        (v.base.len() + 128) as u64
    }
}

struct VerifiedSig {
    base: Box<[u8]>,
    key_id: Box<str>,
    // The very key that verified: a key set swapped in while this entry was
    // being inserted may reuse the key id for another key.
    key: PublicKey,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &read(&self.keys).len())
            .field("clock_skew", &self.clock_skew)
            .field("max_lifetime", &self.max_lifetime)
            .field("require_request_binding", &self.require_request_binding)
            .field("authorities", &self.authorities)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Trust `keys` for requests to `authorities` — the `host` or
    /// `host:port` names this backend is reached by, as the gateway's
    /// upstream requests carry them. A signature made for any other
    /// authority is refused, so a request captured at one backend cannot be
    /// replayed at another. Tolerates 30 s of clock skew, accepts lifetimes
    /// up to 1 h, caches up to 8 MiB of verified signatures.
    pub fn new<I, S>(keys: KeySet, authorities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let authorities = authorities
            .into_iter()
            .map(|a| normalize_authority(a.as_ref().trim(), None))
            .collect();
        Verifier {
            keys: RwLock::new(Arc::new(keys)),
            clock_skew: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
            require_request_binding: false,
            authorities: Some(authorities),
            routes: None,
            cache: Some(quick_cache::sync::Cache::with_weighter(
                16_384,
                8 * 1024 * 1024,
                VerifiedWeighter,
            )),
        }
    }

    /// Trust `keys` for requests to any authority. Only for a backend that
    /// cannot know its own names and accepts that a signed request made for
    /// another backend of the same gateway verifies here too.
    pub fn dangerous_accept_any_authority(keys: KeySet) -> Self {
        let mut v = Verifier::new(keys, std::iter::empty::<&str>());
        v.authorities = None;
        v
    }

    /// Accept only signatures whose `Hexon-Route` is one of `routes`: pins
    /// the backend to its routes when several backends share a host.
    pub fn with_routes<I, S>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.routes = Some(routes.into_iter().map(Into::into).collect());
        self
    }

    /// Clock skew tolerated on `created` and `expires` (default 30 s).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// Longest `expires - created` accepted (default 1 h).
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Refuse signatures that do not cover `@method`, `@path` and `@query`.
    pub fn require_request_binding(mut self, yes: bool) -> Self {
        self.require_request_binding = yes;
        self
    }

    /// Verified-signature cache size in bytes (0 disables it).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = (bytes > 0).then(|| {
            quick_cache::sync::Cache::with_weighter(
                (bytes / 512).max(16) as usize,
                bytes,
                VerifiedWeighter,
            )
        });
        self
    }

    /// Replace the trusted keys (e.g. after fetching a new JWKS). Clears the cache.
    pub fn set_keys(&self, keys: KeySet) {
        match self.keys.write() {
            Ok(mut g) => *g = Arc::new(keys),
            Err(p) => *p.into_inner() = Arc::new(keys),
        }
        if let Some(c) = &self.cache {
            c.clear();
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> Arc<KeySet> {
        read(&self.keys)
    }

    /// Verify the Hexon signature on a request and return the identity it carries.
    pub fn verify_parts(
        &self,
        parts: &Parts,
        now: UnixTime,
    ) -> Result<VerifiedIdentity, VerifyError> {
        let (params, signature) = parse_signature_fields(&parts.headers, LABEL)?;
        if params.alg.is_none() && params.alg_name.is_some() {
            return Err(VerifyError::Malformed("unsupported alg"));
        }
        if params.tag.as_deref() != Some(TAG) {
            return Err(VerifyError::Malformed("tag is not \"hexon\""));
        }
        let created = params
            .created
            .ok_or(VerifyError::Malformed("created is required"))?;
        let expires = params
            .expires
            .ok_or(VerifyError::Malformed("expires is required"))?;
        let key_id = params
            .key_id
            .as_deref()
            .ok_or(VerifyError::Malformed("keyid is required"))?;

        for required in REQUIRED_COMPONENTS {
            if !params.components.iter().any(|c| c == required) {
                return Err(VerifyError::NotCovered(required));
            }
        }
        let request_bound = BOUND_COMPONENTS
            .iter()
            .all(|b| params.components.iter().any(|c| c == b));
        if self.require_request_binding && !request_bound {
            return Err(VerifyError::NotCovered("@method, @path and @query"));
        }
        for name in parts.headers.keys() {
            let n = name.as_str();
            let identity_header = is_identity_header(n) && !n.starts_with("signature");
            if identity_header && !params.components.iter().any(|c| c == n) {
                return Err(VerifyError::UncoveredIdentityHeader(n.to_owned()));
            }
        }

        let skew = self.clock_skew;
        if created > now.saturating_add(skew) {
            return Err(VerifyError::NotYetValid);
        }
        if now > expires.saturating_add(skew) {
            return Err(VerifyError::Expired);
        }
        if expires < created {
            return Err(VerifyError::Malformed("expires is before created"));
        }
        if created.saturating_add(self.max_lifetime) < expires {
            return Err(VerifyError::LifetimeTooLong);
        }

        let authority = authority(parts).ok_or(VerifyError::NoAuthority)?;
        if let Some(allowed) = &self.authorities {
            if !allowed.contains(&authority) {
                return Err(VerifyError::WrongAuthority(authority));
            }
        }

        let keys = self.keys();
        let key = keys
            .get(key_id, now)
            .ok_or_else(|| VerifyError::UnknownKey(key_id.to_owned()))?;
        let alg = params.alg.unwrap_or(key.algorithm());
        let base = signature_base(parts, &authority, &params)?;

        // Only Ed25519 signatures are cached: strict Ed25519 verification
        // admits one encoding per signature, whereas an ECDSA (r, s) has a
        // second valid form (r, n - s) that would only fill the cache.
        let cache_key: Option<[u8; 64]> = match key {
            PublicKey::Ed25519(_) => signature.as_slice().try_into().ok(),
            _ => None,
        };
        let cached = match (&self.cache, &cache_key) {
            (Some(cache), Some(k)) => cache.get(k).is_some_and(|hit| {
                *hit.base == *base.as_bytes() && *hit.key_id == *key_id && hit.key == *key
            }),
            _ => false,
        };
        if !cached {
            key.verify(alg, base.as_bytes(), &signature)?;
            if let (Some(cache), Some(k)) = (&self.cache, cache_key) {
                cache.insert(
                    k,
                    Arc::new(VerifiedSig {
                        base: base.into_bytes().into_boxed_slice(),
                        key_id: key_id.into(),
                        key: key.clone(),
                    }),
                );
            }
        }

        let content_digest = if params.components.iter().any(|c| c == "content-digest") {
            Some(
                content_digest_sha256(&parts.headers).ok_or(VerifyError::Malformed(
                    "content-digest is covered but has no sha-256 member",
                ))?,
            )
        } else {
            None
        };
        let (identity, route) = identity_from_headers(&parts.headers)?;
        if let Some(routes) = &self.routes {
            if !routes.iter().any(|r| **r == *route) {
                return Err(VerifyError::WrongRoute(route.to_string()));
            }
        }
        Ok(VerifiedIdentity {
            identity,
            route,
            key_id: key_id.into(),
            created,
            expires,
            nonce: params.nonce.as_deref().map(Arc::from),
            request_bound,
            content_digest,
        })
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, VerifyError> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let s = v
            .to_str()
            .map_err(|_| VerifyError::Malformed("non-ASCII signature field"))?;
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_owned()),
        }
        if out.as_ref().is_some_and(|o| o.len() > MAX_SIGNATURE_FIELD) {
            return Err(VerifyError::Malformed("signature field too large"));
        }
    }
    Ok(out)
}

/// The labels of the signatures in `Signature-Input`, in order.
///
/// # Errors
/// A missing, oversized, non-ASCII or malformed field.
pub fn signature_labels(headers: &HeaderMap) -> Result<Vec<String>, VerifyError> {
    let input = joined(headers, &SIGNATURE_INPUT)?.ok_or(VerifyError::Missing)?;
    let input: sfv::Dictionary = sfv::Parser::new(&input)
        .parse()
        .map_err(|_| VerifyError::Malformed("Signature-Input is not a structured dictionary"))?;
    Ok(input.keys().map(|k| k.as_str().to_owned()).collect())
}

/// Parse `Signature-Input` and `Signature` and return the parameters and
/// bytes of the signature labelled `label`. Strict: only the RFC 9421
/// parameters (`created`, `expires`, `keyid`, `alg`, `nonce`, `tag`), string
/// component identifiers without component parameters, no duplicates.
pub fn parse_signature_fields(
    headers: &HeaderMap,
    label: &str,
) -> Result<(SignatureParams, Vec<u8>), VerifyError> {
    let input = joined(headers, &SIGNATURE_INPUT)?.ok_or(VerifyError::Missing)?;
    let sig = joined(headers, &SIGNATURE)?.ok_or(VerifyError::Missing)?;
    let input: sfv::Dictionary = sfv::Parser::new(&input)
        .parse()
        .map_err(|_| VerifyError::Malformed("Signature-Input is not a structured dictionary"))?;
    let sig: sfv::Dictionary = sfv::Parser::new(&sig)
        .parse()
        .map_err(|_| VerifyError::Malformed("Signature is not a structured dictionary"))?;
    let list = match input.get(label) {
        Some(sfv::ListEntry::InnerList(l)) => l,
        Some(sfv::ListEntry::Item(_)) => {
            return Err(VerifyError::Malformed(
                "Signature-Input member is not an inner list",
            ));
        }
        None => return Err(VerifyError::Missing),
    };
    let signature = match sig.get(label) {
        Some(sfv::ListEntry::Item(item)) if item.params.is_empty() => item
            .bare_item
            .as_byte_sequence()
            .ok_or(VerifyError::Malformed(
                "Signature member is not a byte sequence",
            ))?
            .to_vec(),
        Some(_) => {
            return Err(VerifyError::Malformed(
                "Signature member is not a byte sequence",
            ));
        }
        None => return Err(VerifyError::Missing),
    };

    let mut components: Vec<String> = Vec::with_capacity(list.items.len());
    for item in &list.items {
        if !item.params.is_empty() {
            return Err(VerifyError::Malformed(
                "component parameters are not supported",
            ));
        }
        let name = item
            .bare_item
            .as_string()
            .ok_or(VerifyError::Malformed(
                "component identifier is not a string",
            ))?
            .as_str();
        let valid = match name.strip_prefix('@') {
            Some(derived) => matches!(
                derived,
                "authority"
                    | "method"
                    | "path"
                    | "query"
                    | "target-uri"
                    | "scheme"
                    | "request-target"
            ),
            None => HeaderName::from_bytes(name.as_bytes()).is_ok_and(|h| h.as_str() == name),
        };
        if !valid {
            return Err(VerifyError::Malformed("unsupported component identifier"));
        }
        if components.iter().any(|c| c == name) {
            return Err(VerifyError::Malformed("component covered twice"));
        }
        components.push(name.to_owned());
    }

    let mut params = SignatureParams {
        components,
        ..SignatureParams::default()
    };
    for (k, v) in &list.params {
        let int = || {
            v.as_integer()
                .map(|i| UnixTime::from_secs(i64::from(i)))
                .ok_or(VerifyError::Malformed("created/expires is not an integer"))
        };
        let string = || {
            v.as_string()
                .map(|s| s.as_str().to_owned())
                .ok_or(VerifyError::Malformed(
                    "keyid/alg/nonce/tag is not a string",
                ))
        };
        let p = match k.as_str() {
            "created" => {
                params.created = Some(int()?);
                Param::Created
            }
            "expires" => {
                params.expires = Some(int()?);
                Param::Expires
            }
            "keyid" => {
                params.key_id = Some(string()?);
                Param::KeyId
            }
            "alg" => {
                let name = string()?;
                params.alg = Algorithm::from_http_sig_name(&name);
                params.alg_name = Some(name);
                Param::Alg
            }
            "nonce" => {
                params.nonce = Some(string()?);
                Param::Nonce
            }
            "tag" => {
                params.tag = Some(string()?);
                Param::Tag
            }
            _ => return Err(VerifyError::Malformed("unknown signature parameter")),
        };
        params.order.push(p);
    }
    Ok((params, signature))
}

/// Read the identity headers (after the signature verified). Returns the identity and route.
fn identity_from_headers(headers: &HeaderMap) -> Result<(Identity, Arc<str>), VerifyError> {
    let get = |name: &HeaderName, label: &'static str| -> Result<Option<String>, VerifyError> {
        let mut it = headers.get_all(name).iter();
        let Some(v) = it.next() else { return Ok(None) };
        if it.next().is_some() {
            return Err(VerifyError::IdentityHeader {
                header: label,
                error: "appears more than once",
            });
        }
        let s = v.to_str().map_err(|_| VerifyError::IdentityHeader {
            header: label,
            error: "not ASCII",
        })?;
        decode_value(s.trim_matches([' ', '\t']))
            .map(Some)
            .map_err(|e| VerifyError::IdentityHeader {
                header: label,
                error: decode_error_str(e),
            })
    };
    let required = |name: &HeaderName, label: &'static str| -> Result<String, VerifyError> {
        get(name, label)?.ok_or(VerifyError::IdentityHeader {
            header: label,
            error: "missing",
        })
    };
    let user = required(&HEXON_USER, "Hexon-User")?;
    let subject = required(&HEXON_SUBJECT, "Hexon-Subject")?;
    let kind = required(&HEXON_KIND, "Hexon-Kind")?;
    let kind = IdentityKind::parse(&kind).ok_or(VerifyError::IdentityHeader {
        header: "Hexon-Kind",
        error: "not user or service",
    })?;
    let route = required(&HEXON_ROUTE, "Hexon-Route")?;
    let mut b = Identity::builder(subject, user).kind(kind);
    if let Some(e) = get(&HEXON_EMAIL, "Hexon-Email")? {
        b = b.email(e);
    }
    if let Some(n) = get(&HEXON_NAME, "Hexon-Name")? {
        b = b.display_name(n);
    }
    if let Some(s) = get(&HEXON_SESSION, "Hexon-Session")? {
        b = b.session(s);
    }
    let mut groups = Vec::new();
    for_each_list_member(headers, &HEXON_GROUPS, "Hexon-Groups", |m| {
        groups.push(decode_value(m).map_err(decode_error_str)?);
        Ok(())
    })?;
    b = b.set_groups(groups);
    let mut events = Vec::new();
    for_each_list_member(headers, &HEXON_AUTH, "Hexon-Auth", |m| {
        let (method, at) = m.split_once('=').ok_or("member is not method=time")?;
        let method = AuthMethod::new(method).map_err(|_| "invalid method name")?;
        let at: i64 = at.parse().map_err(|_| "time is not an integer")?;
        if at.to_string() != m.split_once('=').map_or("", |(_, t)| t) {
            return Err("time is not canonical");
        }
        events.push(AuthEvent {
            method,
            at: UnixTime::from_secs(at),
        });
        Ok(())
    })?;
    for e in events {
        b = b.auth_event(e);
    }
    let identity = b.build().map_err(|_| VerifyError::IdentityHeader {
        header: "Hexon-User",
        error: "identity fields are invalid",
    })?;
    Ok((identity, route.into()))
}

/// Split a list header (all field lines) on commas, trimming optional whitespace.
fn for_each_list_member(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
    mut f: impl FnMut(&str) -> Result<(), &'static str>,
) -> Result<(), VerifyError> {
    for v in headers.get_all(name) {
        let s = v.to_str().map_err(|_| VerifyError::IdentityHeader {
            header: label,
            error: "not ASCII",
        })?;
        for member in s.split(',') {
            let m = member.trim_matches([' ', '\t']);
            if m.is_empty() {
                return Err(VerifyError::IdentityHeader {
                    header: label,
                    error: "empty list member",
                });
            }
            f(m).map_err(|error| VerifyError::IdentityHeader {
                header: label,
                error,
            })?;
        }
    }
    Ok(())
}

fn decode_error_str(e: HeaderDecodeError) -> &'static str {
    match e {
        HeaderDecodeError::RawByte => "raw byte that must be percent-encoded",
        HeaderDecodeError::BadEscape => "malformed percent escape",
        HeaderDecodeError::NotUtf8 => "not UTF-8",
        HeaderDecodeError::NotCanonical => "not canonically encoded",
    }
}
