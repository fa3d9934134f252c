//! Public keys, key sets with rotation, and JWKS export/import.
//!
//! A [`KeyRing`] is what a signing component holds: one active [`Signer`]
//! plus the public keys of keys it rotated away from, each valid until the
//! last signature it made has expired. A [`KeySet`] is what a verifier holds:
//! public keys by key id, each with an optional end of validity. The JWKS
//! document (`/.well-known/jwks.json`) is the bridge between the two.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::signer::{Algorithm, Signer, validate_key_id};
use crate::time::UnixTime;

/// A public key of one of the supported algorithms.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKey::Ed25519(k) => write!(f, "Ed25519({})", URL_SAFE_NO_PAD.encode(k.as_bytes())),
            PublicKey::P256(k) => {
                write!(
                    f,
                    "P256({})",
                    URL_SAFE_NO_PAD.encode(k.to_encoded_point(true).as_bytes())
                )
            }
        }
    }
}

/// Why a signature did not verify. Deliberately coarse: callers learn *that*
/// it failed, not which bit, so the error is no oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The algorithm asked for is not this key's algorithm (algorithm confusion).
    #[error("algorithm {asked} does not match the key's algorithm {key}")]
    AlgorithmMismatch {
        /// What the message claimed.
        asked: Algorithm,
        /// What the key is.
        key: Algorithm,
    },
    /// The signature is not of the right length or encoding.
    #[error("malformed signature")]
    Malformed,
    /// The signature does not match.
    #[error("signature does not verify")]
    Invalid,
}

impl PublicKey {
    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
            PublicKey::P256(_) => Algorithm::EcdsaP256Sha256,
        }
    }

    /// Ed25519 public key from its 32 bytes.
    pub fn ed25519_from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Malformed("Ed25519 public key must be 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map(PublicKey::Ed25519)
            .map_err(|_| KeyError::Malformed("not a valid Ed25519 point"))
    }

    /// Verify `signature` over `message`, insisting on `alg` (the caller's
    /// expectation, never just what the message says).
    ///
    /// Ed25519 uses strict verification (rejects small-order keys and
    /// non-canonical signatures); ECDSA rejects high-S malleated signatures is
    /// not required by JWS/RFC 9421, so both S forms are accepted there.
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        if alg != self.algorithm() {
            return Err(SignatureError::AlgorithmMismatch {
                asked: alg,
                key: self.algorithm(),
            });
        }
        match self {
            PublicKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Malformed)?;
                k.verify_strict(message, &sig)
                    .map_err(|_| SignatureError::Invalid)
            }
            PublicKey::P256(k) => {
                use p256::ecdsa::signature::Verifier as _;
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::Malformed)?;
                k.verify(message, &sig).map_err(|_| SignatureError::Invalid)
            }
        }
    }

    /// This key as a public JWK with the given key id.
    pub fn to_jwk(&self, kid: &str) -> Jwk {
        match self {
            PublicKey::Ed25519(k) => Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(URL_SAFE_NO_PAD.encode(k.as_bytes())),
                y: None,
                kid: Some(kid.into()),
                alg: Some("EdDSA".into()),
                use_: Some("sig".into()),
                private_material: false,
            },
            PublicKey::P256(k) => {
                let point = k.to_encoded_point(false);
                Jwk {
                    kty: "EC".into(),
                    crv: Some("P-256".into()),
                    x: point.x().map(|x| URL_SAFE_NO_PAD.encode(x)),
                    y: point.y().map(|y| URL_SAFE_NO_PAD.encode(y)),
                    kid: Some(kid.into()),
                    alg: Some("ES256".into()),
                    use_: Some("sig".into()),
                    private_material: false,
                }
            }
        }
    }

    /// Parse a public JWK (OKP/Ed25519 or EC/P-256). A JWK carrying private
    /// material (`d`) is refused: a public key set must never hold secrets.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        if jwk.private_material {
            return Err(KeyError::PrivateMaterial);
        }
        if let Some(u) = &jwk.use_ {
            if u != "sig" {
                return Err(KeyError::Unsupported(format!("use {u:?} (only \"sig\")")));
            }
        }
        let b64 = |s: &Option<String>, what: &'static str| -> Result<Vec<u8>, KeyError> {
            let s = s.as_deref().ok_or(KeyError::Malformed(what))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| KeyError::Malformed(what))
        };
        let key = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("OKP", Some("Ed25519")) => {
                PublicKey::ed25519_from_bytes(&b64(&jwk.x, "OKP key needs base64url \"x\"")?)?
            }
            ("EC", Some("P-256")) => {
                let x = b64(&jwk.x, "EC key needs base64url \"x\"")?;
                let y = b64(&jwk.y, "EC key needs base64url \"y\"")?;
                let coord = |v: Vec<u8>| -> Result<p256::FieldBytes, KeyError> {
                    let arr: [u8; 32] = v.try_into().map_err(|_| {
                        KeyError::Malformed("P-256 coordinates must be 32 bytes each")
                    })?;
                    Ok(p256::FieldBytes::from(arr))
                };
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&coord(x)?, &coord(y)?, false);
                PublicKey::P256(
                    p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                        .map_err(|_| KeyError::Malformed("not a point on P-256"))?,
                )
            }
            (kty, crv) => return Err(KeyError::Unsupported(format!("kty {kty:?} crv {crv:?}"))),
        };
        if let Some(alg) = &jwk.alg {
            if Algorithm::from_jws_name(alg) != Some(key.algorithm()) {
                return Err(KeyError::Unsupported(format!(
                    "alg {alg:?} for a {} key",
                    key.algorithm()
                )));
            }
        }
        Ok(key)
    }
}

/// A JSON Web Key (RFC 7517), the public subset Hexon reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `OKP` or `EC`.
    pub kty: String,
    /// Curve: `Ed25519` or `P-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Public key (OKP) or x coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// y coordinate (EC), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm (`EdDSA`, `ES256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// Whether the document carried private key material (`d`). The value
    /// itself is never kept; its presence is only read so it can be refused.
    #[serde(default, rename = "d", skip_serializing, deserialize_with = "present")]
    pub private_material: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(true)
}

/// A JWK Set document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// Why a key or key set could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Malformed key material.
    #[error("malformed key: {0}")]
    Malformed(&'static str),
    /// A key type, curve or use Hexon does not accept.
    #[error("unsupported key: {0}; Hexon verifies Ed25519 (OKP) and P-256 (EC) signing keys")]
    Unsupported(String),
    /// Private material where only public keys belong.
    #[error("the key set contains private key material (\"d\"); publish public keys only")]
    PrivateMaterial,
    /// A JWK without a `kid`.
    #[error("every key in a key set needs a \"kid\"")]
    MissingKid,
    /// A key id used twice.
    #[error("key id {0:?} appears twice")]
    DuplicateKid(String),
    /// A key id that is not safe in headers.
    #[error("invalid key id {0:?}: use 1-64 of A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidKid(String),
    /// A JWKS document that is not JSON of the right shape.
    #[error("not a JWK Set: {0}")]
    Json(String),
}

/// A verification key and how long it stays valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationKey {
    /// The public key.
    pub key: PublicKey,
    /// After this instant, signatures by this key are no longer accepted
    /// (`None`: until removed).
    pub valid_until: Option<UnixTime>,
}

/// Public keys by key id: what a verifier trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: BTreeMap<String, VerificationKey>,
}

impl KeySet {
    /// An empty set (verifies nothing).
    pub fn new() -> Self {
        KeySet::default()
    }

    /// Add or replace a key.
    pub fn insert(
        &mut self,
        kid: &str,
        key: PublicKey,
        valid_until: Option<UnixTime>,
    ) -> Result<(), KeyError> {
        validate_key_id(kid).map_err(|_| KeyError::InvalidKid(kid.chars().take(70).collect()))?;
        self.keys
            .insert(kid.to_owned(), VerificationKey { key, valid_until });
        Ok(())
    }

    /// Remove a key.
    pub fn remove(&mut self, kid: &str) -> Option<VerificationKey> {
        self.keys.remove(kid)
    }

    /// The key for `kid` if it is still valid at `now`.
    pub fn get(&self, kid: &str, now: UnixTime) -> Option<&PublicKey> {
        let k = self.keys.get(kid)?;
        match k.valid_until {
            Some(until) if now > until => None,
            _ => Some(&k.key),
        }
    }

    /// The entry for `kid`, whatever its validity.
    pub fn entry(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid)
    }

    /// Iterate over `(kid, key)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerificationKey)> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Drop keys whose validity ended before `now`.
    pub fn prune(&mut self, now: UnixTime) {
        self.keys
            .retain(|_, k| k.valid_until.is_none_or(|u| now <= u));
    }

    /// The keys valid at `now` as a JWK Set.
    pub fn to_jwks(&self, now: UnixTime) -> Jwks {
        Jwks {
            keys: self
                .keys
                .iter()
                .filter(|(_, k)| k.valid_until.is_none_or(|u| now <= u))
                .map(|(kid, k)| k.key.to_jwk(kid))
                .collect(),
        }
    }

    /// Import a JWK Set. Every key must have a unique, header-safe `kid`, be
    /// public, and be Ed25519 or P-256; one bad key rejects the whole set
    /// (a verifier must not silently trust a partial set).
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, KeyError> {
        let mut set = KeySet::new();
        for jwk in &jwks.keys {
            let kid = jwk.kid.as_deref().ok_or(KeyError::MissingKid)?;
            let key = PublicKey::from_jwk(jwk)?;
            if set.keys.contains_key(kid) {
                return Err(KeyError::DuplicateKid(kid.to_owned()));
            }
            set.insert(kid, key, None)?;
        }
        Ok(set)
    }

    /// Parse and import a JWK Set JSON document.
    pub fn from_jwks_json(json: &str) -> Result<Self, KeyError> {
        let jwks: Jwks = serde_json::from_str(json).map_err(|e| KeyError::Json(e.to_string()))?;
        KeySet::from_jwks(&jwks)
    }
}

/// The signing side: an active signer plus the public keys of retired ones.
#[derive(Clone, Debug)]
pub struct KeyRing {
    active: Arc<dyn Signer>,
    staged: Option<Arc<dyn Signer>>,
    keys: KeySet,
}

impl KeyRing {
    /// A ring with one active key.
    pub fn new(active: Arc<dyn Signer>) -> Result<Self, KeyError> {
        let mut keys = KeySet::new();
        keys.insert(active.key_id(), active.public_key(), None)?;
        Ok(KeyRing {
            active,
            staged: None,
            keys,
        })
    }

    /// The key new signatures are made with.
    pub fn active(&self) -> &Arc<dyn Signer> {
        &self.active
    }

    /// Every key a verifier should currently trust (active + retiring).
    pub fn key_set(&self) -> &KeySet {
        &self.keys
    }

    /// Publish `next` without signing with it yet: it appears in the JWKS
    /// so verifiers can fetch it before the first signature it makes. A
    /// later [`rotate`](Self::rotate) to the same key id activates it.
    /// Staging again replaces a previously staged key.
    pub fn stage(&mut self, next: Arc<dyn Signer>) -> Result<(), KeyError> {
        if next.key_id() == self.active.key_id() {
            return Err(KeyError::DuplicateKid(next.key_id().to_owned()));
        }
        if let Some(old) = self.staged.take() {
            self.keys.remove(old.key_id());
        }
        if self.keys.entry(next.key_id()).is_some() {
            return Err(KeyError::DuplicateKid(next.key_id().to_owned()));
        }
        self.keys.insert(next.key_id(), next.public_key(), None)?;
        self.staged = Some(next);
        Ok(())
    }

    /// The staged key, if any.
    pub fn staged(&self) -> Option<&Arc<dyn Signer>> {
        self.staged.as_ref()
    }

    /// Make `next` the active key. The previous key stays valid for
    /// verification until `now + max_signature_lifetime` — the moment the last
    /// signature it could have made expires (pass the signature lifetime plus
    /// the verifiers' clock skew) — and is then pruned.
    ///
    /// `next` may be the [staged](Self::stage) key (same key id and public
    /// key); any other key id already in the ring is refused.
    pub fn rotate(
        &mut self,
        next: Arc<dyn Signer>,
        now: UnixTime,
        max_signature_lifetime: Duration,
    ) -> Result<(), KeyError> {
        if next.key_id() == self.active.key_id() {
            return Err(KeyError::DuplicateKid(next.key_id().to_owned()));
        }
        let is_staged = self
            .staged
            .as_ref()
            .is_some_and(|s| s.key_id() == next.key_id() && s.public_key() == next.public_key());
        if is_staged {
            self.staged = None;
            self.keys.remove(next.key_id());
        } else if self.keys.entry(next.key_id()).is_some() {
            return Err(KeyError::DuplicateKid(next.key_id().to_owned()));
        }
        self.keys.prune(now);
        let old_kid = self.active.key_id().to_owned();
        let old_key = self.active.public_key();
        self.keys.insert(
            &old_kid,
            old_key,
            Some(now.saturating_add(max_signature_lifetime)),
        )?;
        self.keys.insert(next.key_id(), next.public_key(), None)?;
        self.active = next;
        Ok(())
    }

    /// The JWKS document to publish at `now`.
    pub fn jwks(&self, now: UnixTime) -> Jwks {
        self.keys.to_jwks(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{Ed25519Signer, P256Signer};

    #[test]
    fn jwks_round_trip_both_algorithms() {
        let ed = Ed25519Signer::generate("ed-1").unwrap();
        let ec = P256Signer::generate("ec-1").unwrap();
        let mut set = KeySet::new();
        set.insert("ed-1", ed.public_key(), None).unwrap();
        set.insert("ec-1", ec.public_key(), None).unwrap();
        let json = serde_json::to_string(&set.to_jwks(UnixTime::EPOCH)).unwrap();
        assert!(json.contains(r#""kty":"OKP""#) && json.contains(r#""crv":"P-256""#));
        let back = KeySet::from_jwks_json(&json).unwrap();
        assert_eq!(back, set);
    }

    #[test]
    fn jwks_import_refuses_bad_sets() {
        let ed = Ed25519Signer::generate("k").unwrap();
        let mut jwk = ed.public_key().to_jwk("k");
        let ok = Jwks {
            keys: vec![jwk.clone()],
        };
        assert!(KeySet::from_jwks(&ok).is_ok());
        let dup = Jwks {
            keys: vec![jwk.clone(), jwk.clone()],
        };
        assert_eq!(
            KeySet::from_jwks(&dup),
            Err(KeyError::DuplicateKid("k".into()))
        );
        let with_d = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}"#;
        assert_eq!(
            KeySet::from_jwks_json(with_d),
            Err(KeyError::PrivateMaterial)
        );
        jwk.kid = None;
        assert_eq!(
            KeySet::from_jwks(&Jwks {
                keys: vec![jwk.clone()]
            }),
            Err(KeyError::MissingKid)
        );
        jwk.kid = Some("k".into());
        jwk.alg = Some("ES256".into());
        assert!(matches!(
            KeySet::from_jwks(&Jwks {
                keys: vec![jwk.clone()]
            }),
            Err(KeyError::Unsupported(_))
        ));
        jwk.alg = None;
        jwk.x = Some("AAAA".into());
        assert!(matches!(
            KeySet::from_jwks(&Jwks { keys: vec![jwk] }),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::from_jwks_json("{"),
            Err(KeyError::Json(_))
        ));
        assert!(matches!(
            KeySet::from_jwks_json(r#"{"keys":[{"kty":"RSA","kid":"r","n":"x","e":"AQAB"}]}"#),
            Err(KeyError::Unsupported(_))
        ));
    }

    #[test]
    fn rfc8037_ed25519_public_jwk() {
        // RFC 8037 Appendix A.2 public key.
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
    }

    #[test]
    fn rotation_keeps_old_key_until_its_signatures_expire() {
        let k1: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("k1").unwrap());
        let k2: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("k2").unwrap());
        let mut ring = KeyRing::new(k1.clone()).unwrap();
        let t0 = UnixTime::from_secs(1000);
        ring.rotate(k2.clone(), t0, Duration::from_secs(300))
            .unwrap();
        assert_eq!(ring.active().key_id(), "k2");
        assert!(
            ring.key_set()
                .get("k1", UnixTime::from_secs(1300))
                .is_some()
        );
        assert!(
            ring.key_set()
                .get("k1", UnixTime::from_secs(1301))
                .is_none()
        );
        assert_eq!(ring.jwks(UnixTime::from_secs(1200)).keys.len(), 2);
        assert_eq!(ring.jwks(UnixTime::from_secs(1400)).keys.len(), 1);
        assert!(ring.rotate(k2, t0, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn staged_key_is_published_before_it_signs() {
        let k1: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("k1").unwrap());
        let k2: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("k2").unwrap());
        let mut ring = KeyRing::new(k1.clone()).unwrap();
        let t0 = UnixTime::from_secs(1000);
        ring.stage(k2.clone()).unwrap();
        assert_eq!(ring.active().key_id(), "k1");
        assert_eq!(ring.jwks(t0).keys.len(), 2, "k2 published while k1 signs");
        assert!(
            ring.stage(k1.clone()).is_err(),
            "the active key cannot be staged"
        );
        // Another key under the staged id is not the staged key.
        let impostor: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("k2").unwrap());
        assert!(ring.rotate(impostor, t0, Duration::from_secs(60)).is_err());
        ring.rotate(k2, t0, Duration::from_secs(60)).unwrap();
        assert_eq!(ring.active().key_id(), "k2");
        assert!(ring.staged().is_none());
        assert!(
            ring.key_set()
                .get("k1", UnixTime::from_secs(1060))
                .is_some()
        );
        assert!(
            ring.key_set()
                .get("k1", UnixTime::from_secs(1061))
                .is_none()
        );
        assert!(
            ring.key_set()
                .get("k2", UnixTime::from_secs(99_999))
                .is_some()
        );
    }

    #[test]
    fn verify_insists_on_algorithm() {
        let ed = Ed25519Signer::generate("k").unwrap();
        let sig = ed.sign_sync(b"m");
        let pk = ed.public_key();
        assert_eq!(pk.verify(Algorithm::Ed25519, b"m", &sig), Ok(()));
        assert!(matches!(
            pk.verify(Algorithm::EcdsaP256Sha256, b"m", &sig),
            Err(SignatureError::AlgorithmMismatch { .. })
        ));
        assert_eq!(
            pk.verify(Algorithm::Ed25519, b"n", &sig),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            pk.verify(Algorithm::Ed25519, b"m", &sig[..10]),
            Err(SignatureError::Malformed)
        );
        let ec = P256Signer::generate("e").unwrap();
        let sig = ec.sign_sync(b"m");
        assert_eq!(
            ec.public_key()
                .verify(Algorithm::EcdsaP256Sha256, b"m", &sig),
            Ok(())
        );
        assert_eq!(
            ec.public_key()
                .verify(Algorithm::EcdsaP256Sha256, b"x", &sig),
            Err(SignatureError::Invalid)
        );
    }
}
