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
    verified: Option<quick_cache::sync::Cache<TokenKey, Arc<Verified>>>,
    check: Option<super::SessionCheck>,
}

/// A remembered token's bytes, the key of the verified-token cache.
///
/// Hashed by its length and last [`HASHED_TAIL`] bytes only, and compared
/// whole. A compact JWS ends with its signature, so those bytes differ
/// between tokens like the whole token does, and a lookup hashes 40 bytes
/// instead of the whole token (often 500 or more; the lookup is on every
/// request). Collisions cost a comparison, never a wrong hit; and no one
/// can fill a bucket on purpose, since only tokens that verified are
/// stored, and their signatures cannot be chosen without the signing key.
#[derive(PartialEq, Eq)]
struct TokenKey(Box<[u8]>);

/// A token's bytes, looked up as a [`TokenKey`].
struct TokenRef<'a>(&'a [u8]);

/// How many of a token's last bytes its cache key hashes.
const HASHED_TAIL: usize = 32;

fn hash_token<H: std::hash::Hasher>(token: &[u8], state: &mut H) {
    use std::hash::Hash as _;
    token.len().hash(state);
    token
        .get(token.len().saturating_sub(HASHED_TAIL)..)
        .unwrap_or(token)
        .hash(state);
}

impl std::hash::Hash for TokenKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_token(&self.0, state);
    }
}

impl std::hash::Hash for TokenRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_token(self.0, state);
    }
}

impl quick_cache::Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        *self.0 == *key.0
    }
}

/// A token Hexon's own verifier accepted, remembered so the same token (a
/// client sends it on every request) is not verified again. An entry is
/// used only while `nbf <= now <= exp` (no leeway: outside that window the
/// full verification decides) and only with the verifier that accepted it.
struct Verified {
    identity: hexon_core::Identity,
    not_before: Option<UnixTime>,
    expires: UnixTime,
    verifier: Arc<JwtVerifier>,
}

/// Tokens remembered by default.
const VERIFIED_CACHE: usize = 16_384;

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
            verified: Some(quick_cache::sync::Cache::new(VERIFIED_CACHE)),
            check: None,
        }
    }

    /// Only external issuers (add them with [`with_external`](Self::with_external)).
    pub fn external_only() -> Self {
        BearerJwt {
            local: RwLock::new(None),
            external: Vec::new(),
            max_len: DEFAULT_MAX_TOKEN_LEN,
            verified: Some(quick_cache::sync::Cache::new(VERIFIED_CACHE)),
            check: None,
        }
    }

    /// Check the identity of every token of Hexon's own issuer against
    /// current state before accepting it (e.g. refuse a user disabled since
    /// the token was minted). External issuers' tokens are not checked: their
    /// users are not Hexon's.
    pub fn with_local_check(
        mut self,
        check: impl Fn(&hexon_core::Identity) -> Result<(), &'static str> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    fn accept(&self, identity: hexon_core::Identity) -> AuthnResult {
        match self.check.as_ref().map_or(Ok(()), |c| c(&identity)) {
            Ok(()) => AuthnResult::Authenticated(identity),
            Err(why) => AuthnResult::invalid(why),
        }
    }

    /// Also trust tokens of an external issuer.
    pub fn with_external(mut self, issuer: JwksIssuer) -> Self {
        self.external.push(Arc::new(issuer));
        self
    }

    /// How many verified tokens to remember (default 16,384; 0 verifies every time).
    pub fn with_verified_cache(mut self, entries: usize) -> Self {
        self.verified = (entries > 0).then(|| quick_cache::sync::Cache::new(entries));
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
        if let Some(c) = &self.verified {
            c.clear();
        }
    }

    fn local(&self) -> Option<Arc<JwtVerifier>> {
        match self.local.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The identity of a token remembered as verified by `local` and fresh
    /// at `now` (no leeway).
    fn remembered_by(
        &self,
        raw: &[u8],
        local: Option<&Arc<JwtVerifier>>,
        now: UnixTime,
    ) -> Option<hexon_core::Identity> {
        let (cache, v) = (self.verified.as_ref()?, local?);
        let hit = cache.get(&TokenRef(raw))?;
        let fresh = now <= hit.expires && hit.not_before.is_none_or(|nbf| nbf <= now);
        (fresh && Arc::ptr_eq(&hit.verifier, v)).then(|| hit.identity.clone())
    }

    /// The identity [`authenticate`](Authenticator::authenticate) would
    /// accept for the bearer token `raw` (its bytes, trimmed) without
    /// verifying it again: a token this authenticator verified and
    /// remembers, still fresh, whose identity passes the local check now.
    /// `None` otherwise — not remembered, expired, or refused: only the
    /// full authentication decides those.
    pub fn remembered(&self, raw: &[u8], now: UnixTime) -> Option<hexon_core::Identity> {
        let identity = self.remembered_by(raw, self.local().as_ref(), now)?;
        match self.accept(identity) {
            AuthnResult::Authenticated(identity) => Some(identity),
            _ => None,
        }
    }

    /// The bearer token's bytes: `Ok(None)` when there is no `Bearer`
    /// credential. Its characters are checked by [`compact_jws`].
    fn token<'p>(&self, parts: &'p Parts) -> Result<Option<&'p [u8]>, &'static str> {
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
        Ok(Some(raw))
    }
}

/// A token's bytes as a compact JWS (base64url parts and dots only).
fn compact_jws(raw: &[u8]) -> Result<&str, &'static str> {
    if !raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("bearer token is not a compact JWS");
    }
    std::str::from_utf8(raw).map_err(|_| "bearer token is not ASCII")
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
        let raw = match self.token(parts) {
            Ok(None) => return AuthnFuture::ready(AuthnResult::NoCredential),
            Ok(Some(t)) => t,
            Err(why) => return AuthnFuture::ready(AuthnResult::invalid(why)),
        };
        let local = self.local();
        // A token remembered as verified is answered here, before its
        // characters are scanned or its parts decoded (the remembered bytes
        // passed those checks; equal bytes pass them again). Only Hexon's own
        // verifier's tokens are remembered, and only after the issuer
        // routing below sent them there; the external issuers are fixed for
        // this authenticator's life, so the routing would send the token
        // there again.
        if let Some(identity) = self.remembered_by(raw, local.as_ref(), now) {
            return AuthnFuture::ready(self.accept(identity));
        }
        let token = match compact_jws(raw) {
            Ok(t) => t,
            Err(why) => return AuthnFuture::ready(AuthnResult::invalid(why)),
        };
        AuthnFuture::new(async move {
            if !self.external.is_empty() {
                let mut segments = token.split('.');
                let header = segments.next();
                let payload = segments.next();
                if let Some(iss) = peek(payload, "iss") {
                    if let Some(ext) = self.external.iter().find(|e| e.issuer() == iss) {
                        let kid = peek(header, "kid");
                        return ext.verify(token, kid.as_deref(), now).await;
                    }
                }
            }
            let Some(v) = local else {
                return AuthnResult::invalid("bearer token from an untrusted issuer");
            };
            match v.verify(token, now) {
                Ok(verified) => {
                    if let Some(c) = &self.verified {
                        c.insert(
                            TokenKey(token.as_bytes().into()),
                            Arc::new(Verified {
                                identity: verified.identity.clone(),
                                not_before: verified.claims.nbf,
                                expires: verified.claims.exp,
                                verifier: v.clone(),
                            }),
                        );
                    }
                    self.accept(verified.identity)
                }
                Err(e) => AuthnResult::invalid(format!("bearer JWT: {e}")),
            }
        })
    }

    fn name(&self) -> &str {
        "bearer_jwt"
    }

    fn credential(&self, _: &Parts) -> hexon_core::policy::Credential {
        hexon_core::policy::Credential::Jwt
    }

    fn challenge(&self, response: &mut Response<BoxBody>) {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="hexon", error="invalid_token""#),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use hexon_core::jwt::{IssueParams, JwtIssuer, JwtVerifier};
    use hexon_core::keys::KeySet;
    use hexon_core::{Ed25519Signer, Identity, Signer, UnixTime};

    use super::*;

    /// Keys that hash alike (same length and tail) are still told apart
    /// by the whole bytes: a lookup finds its own token or none.
    #[test]
    fn tokens_alike_at_the_end_are_distinct_keys() {
        let tail = "x".repeat(HASHED_TAIL);
        let (a, b, c) = (
            format!("aaa.{tail}"),
            format!("bbb.{tail}"),
            format!("ccc.{tail}"),
        );
        let cache = quick_cache::sync::Cache::<TokenKey, usize>::new(16);
        cache.insert(TokenKey(a.as_bytes().into()), 1);
        cache.insert(TokenKey(b.as_bytes().into()), 2);
        assert_eq!(cache.get(&TokenRef(a.as_bytes())), Some(1));
        assert_eq!(cache.get(&TokenRef(b.as_bytes())), Some(2));
        assert_eq!(cache.get(&TokenRef(c.as_bytes())), None);
        // Shorter than the hashed tail, and empty.
        cache.insert(TokenKey(b"short".as_slice().into()), 3);
        assert_eq!(cache.get(&TokenRef(b"short")), Some(3));
        assert_eq!(cache.get(&TokenRef(b"shorT")), None);
        assert_eq!(cache.get(&TokenRef(b"")), None);
    }

    fn parts(token: &str) -> Parts {
        http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn cached_tokens_still_expire_and_follow_key_rotation() {
        let key = Arc::new(Ed25519Signer::generate("k1").unwrap());
        let mut keys = KeySet::new();
        keys.insert("k1", key.public_key(), None).unwrap();
        let t0 = UnixTime::from_secs(1_700_000_000);
        let alice = Identity::builder("u", "alice").build().unwrap();
        let token = JwtIssuer::new(key.clone())
            .issue(
                &alice,
                &IssueParams::new("hexon", "hexon", Duration::from_secs(60)),
                t0,
            )
            .await
            .unwrap();
        let bearer = BearerJwt::new(JwtVerifier::new(keys, "hexon", "hexon"));
        let p = parts(&token);
        for _ in 0..2 {
            assert!(matches!(
                bearer.authenticate(&p, t0).await,
                AuthnResult::Authenticated(_)
            ));
        }
        // Past exp (and its leeway) the cached entry does not help.
        let late = UnixTime::from_secs(t0.as_secs() + 60 + 61);
        assert!(matches!(
            bearer.authenticate(&p, late).await,
            AuthnResult::Invalid(_)
        ));
        // A new verifier (rotation to other keys) forgets what the old one accepted.
        let other = Ed25519Signer::generate("k1").unwrap();
        let mut keys = KeySet::new();
        keys.insert("k1", other.public_key(), None).unwrap();
        bearer.set_verifier(JwtVerifier::new(keys, "hexon", "hexon"));
        assert!(matches!(
            bearer.authenticate(&p, t0).await,
            AuthnResult::Invalid(_)
        ));
    }
}
