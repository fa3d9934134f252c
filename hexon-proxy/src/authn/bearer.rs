//! `Authorization: Bearer <JWT>`.

use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexon_core::UnixTime;
use hexon_core::jwt::{DEFAULT_MAX_TOKEN_LEN, JwtVerifier};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderValue, Response};

use super::jwks::JwksIssuer;
use super::{Authenticator, AuthnFuture, AuthnResult};
use crate::body::BoxBody;

/// Authenticates `Authorization: Bearer <JWT>`.
///
/// The token's (unverified) `iss` picks the verifier: a configured external
/// issuer ([`JwksIssuer`]) with that issuer name, otherwise Hexon's own
/// [`JwtVerifier`] — which then checks everything, `iss` included.
///
/// No `Authorization` header, or another scheme (`Basic`, an HMAC scheme):
/// [`AuthnResult::NoCredential`], so another authenticator may handle it.
/// A `Bearer` credential that is malformed, too long (16 KiB by default),
/// sent in several `Authorization` headers, or that does not verify:
/// [`AuthnResult::Invalid`] (`401` with `WWW-Authenticate: Bearer
/// realm="hexon", error="invalid_token"`).
pub struct BearerJwt {
    local: RwLock<Option<Arc<JwtVerifier>>>,
    external: Vec<Arc<JwksIssuer>>,
    max_len: usize,
}

impl fmt::Debug for BearerJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerJwt")
            .field("external", &self.external)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl BearerJwt {
    /// Verify with Hexon's own `verifier` (keys, issuer, audience).
    pub fn new(verifier: JwtVerifier) -> Self {
        BearerJwt {
            local: RwLock::new(Some(Arc::new(verifier))),
            external: Vec::new(),
            max_len: DEFAULT_MAX_TOKEN_LEN,
        }
    }

    /// Only external issuers (add them with [`with_external`](Self::with_external)).
    pub fn external_only() -> Self {
        BearerJwt {
            local: RwLock::new(None),
            external: Vec::new(),
            max_len: DEFAULT_MAX_TOKEN_LEN,
        }
    }

    /// Also trust tokens of an external issuer.
    pub fn with_external(mut self, issuer: JwksIssuer) -> Self {
        self.external.push(Arc::new(issuer));
        self
    }

    /// Longest token accepted (default [`DEFAULT_MAX_TOKEN_LEN`]).
    pub fn with_max_token_len(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    /// Replace Hexon's own verifier (key rotation); takes effect for the next request.
    pub fn set_verifier(&self, verifier: JwtVerifier) {
        let v = Some(Arc::new(verifier));
        match self.local.write() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }

    fn local(&self) -> Option<Arc<JwtVerifier>> {
        match self.local.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The bearer token: `Ok(None)` when there is no `Bearer` credential.
    fn token<'p>(&self, parts: &'p Parts) -> Result<Option<&'p str>, &'static str> {
        let all = parts.headers.get_all(AUTHORIZATION);
        let mut bearer = None;
        let mut count = 0usize;
        for v in all {
            count += 1;
            let b = v.as_bytes();
            if b.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
            {
                bearer = Some(b.get(7..).unwrap_or_default());
            }
        }
        let Some(raw) = bearer else {
            return Ok(None);
        };
        if count > 1 {
            return Err("several Authorization headers");
        }
        let raw = raw.trim_ascii();
        if raw.is_empty() {
            return Err("empty bearer token");
        }
        if raw.len() > self.max_len {
            return Err("bearer token too long");
        }
        if !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err("bearer token is not a compact JWS");
        }
        std::str::from_utf8(raw)
            .map(Some)
            .map_err(|_| "bearer token is not ASCII")
    }
}

/// A member of a JWS part's JSON, read *before* verification (only to route
/// the token to its verifier).
fn peek(part: Option<&str>, member: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(part?).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get(member)?.as_str().map(str::to_owned)
}

impl Authenticator for BearerJwt {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        Box::pin(async move {
            let token = match self.token(parts) {
                Ok(None) => return AuthnResult::NoCredential,
                Ok(Some(t)) => t,
                Err(why) => return AuthnResult::invalid(why),
            };
            let mut segments = token.split('.');
            let header = segments.next();
            let payload = segments.next();
            if let Some(iss) = peek(payload, "iss") {
                if let Some(ext) = self.external.iter().find(|e| e.issuer() == iss) {
                    let kid = peek(header, "kid");
                    return ext.verify(token, kid.as_deref(), now).await;
                }
            }
            match self.local() {
                None => AuthnResult::invalid("bearer token from an untrusted issuer"),
                Some(v) => match v.verify(token, now) {
                    Ok(verified) => AuthnResult::Authenticated(verified.identity),
                    Err(e) => AuthnResult::invalid(format!("bearer JWT: {e}")),
                },
            }
        })
    }

    fn name(&self) -> &str {
        "bearer_jwt"
    }

    fn challenge(&self, response: &mut Response<BoxBody>) {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="hexon", error="invalid_token""#),
        );
    }
}
