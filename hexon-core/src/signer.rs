//! The one signing seam: everything in Hexon that signs goes through [`Signer`].
//!
//! Identity headers, JWTs and (later) certificates and OCSP responses are
//! signed by an `Arc<dyn Signer>`. A local key ([`Ed25519Signer`],
//! [`P256Signer`]) and a threshold key split across nodes are interchangeable
//! behind it, which is why signing is asynchronous: a threshold signature is a
//! network round trip.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::PublicKey;

/// A signature algorithm Hexon signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Algorithm {
    /// Ed25519 (RFC 8032). The default everywhere.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// ECDSA over P-256 with SHA-256, signature as fixed-size `r || s`.
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
}

impl Algorithm {
    /// The RFC 9421 `alg` parameter value (`ed25519`, `ecdsa-p256-sha256`).
    pub fn http_sig_name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }

    /// The JOSE `alg` value (`EdDSA`, `ES256`).
    pub fn jws_name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "EdDSA",
            Algorithm::EcdsaP256Sha256 => "ES256",
        }
    }

    /// Parse an RFC 9421 `alg` value.
    pub fn from_http_sig_name(s: &str) -> Option<Self> {
        match s {
            "ed25519" => Some(Algorithm::Ed25519),
            "ecdsa-p256-sha256" => Some(Algorithm::EcdsaP256Sha256),
            _ => None,
        }
    }

    /// Parse a JOSE `alg` value. `none` and every HMAC/RSA algorithm are refused.
    pub fn from_jws_name(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Algorithm::Ed25519),
            "ES256" => Some(Algorithm::EcdsaP256Sha256),
            _ => None,
        }
    }

    /// Signature length in bytes (both are 64).
    pub fn signature_len(self) -> usize {
        64
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.http_sig_name())
    }
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The key is not available (threshold quorum not reached, HSM offline, ...).
    #[error("signing key {key_id:?} unavailable: {reason}")]
    Unavailable {
        /// Which key.
        key_id: String,
        /// Why, for operators.
        reason: String,
    },
    /// The underlying implementation failed.
    #[error("signing with key {key_id:?} failed: {reason}")]
    Failed {
        /// Which key.
        key_id: String,
        /// Why, for operators.
        reason: String,
    },
}

/// Future returned by [`Signer::sign`].
pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, SignError>> + Send + 'a>>;

/// Something that holds a private key and signs with it.
///
/// Implementations return the raw signature: 64 bytes for Ed25519, 64 bytes
/// `r || s` for ECDSA P-256 (the form RFC 9421 and JWS use).
pub trait Signer: Send + Sync + fmt::Debug {
    /// Key id (`keyid` in HTTP signatures, `kid` in JWS/JWKS).
    fn key_id(&self) -> &str;
    /// Algorithm.
    fn algorithm(&self) -> Algorithm;
    /// The public half, to publish and verify with.
    fn public_key(&self) -> PublicKey;
    /// Sign `message`.
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a>;
}

impl<S: Signer + ?Sized> Signer for Arc<S> {
    fn key_id(&self) -> &str {
        (**self).key_id()
    }
    fn algorithm(&self) -> Algorithm {
        (**self).algorithm()
    }
    fn public_key(&self) -> PublicKey {
        (**self).public_key()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        (**self).sign(message)
    }
}

/// Why a private key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyLoadError {
    /// Not a PKCS#8 key of the expected algorithm.
    #[error(
        "not a PKCS#8 {expected} private key ({detail}); generate one with `openssl genpkey -algorithm {openssl}`"
    )]
    Pkcs8 {
        /// Expected algorithm.
        expected: Algorithm,
        /// The `openssl genpkey` algorithm name.
        openssl: &'static str,
        /// Parser detail.
        detail: String,
    },
    /// The key id is empty or has characters that are unsafe in headers.
    #[error("invalid key id {0:?}: use 1-64 of A-Z, a-z, 0-9, '.', '_', '-'")]
    KeyId(String),
}

pub(crate) fn validate_key_id(kid: &str) -> Result<(), KeyLoadError> {
    let ok = !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyLoadError::KeyId(kid.chars().take(70).collect()))
    }
}

/// A local Ed25519 private key.
pub struct Ed25519Signer {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl Ed25519Signer {
    /// Generate a fresh key from the OS random source.
    pub fn generate(key_id: &str) -> Result<Self, KeyLoadError> {
        validate_key_id(key_id)?;
        Ok(Ed25519Signer {
            kid: key_id.to_owned(),
            key: ed25519_dalek::SigningKey::generate(&mut OsRng),
        })
    }

    /// From a 32-byte seed (RFC 8032 private key).
    pub fn from_seed(key_id: &str, seed: &[u8; 32]) -> Result<Self, KeyLoadError> {
        validate_key_id(key_id)?;
        Ok(Ed25519Signer {
            kid: key_id.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as `openssl genpkey -algorithm ed25519` writes.
    pub fn from_pkcs8_pem(key_id: &str, pem: &str) -> Result<Self, KeyLoadError> {
        validate_key_id(key_id)?;
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyLoadError::Pkcs8 {
                expected: Algorithm::Ed25519,
                openssl: "ed25519",
                detail: e.to_string(),
            })?;
        Ok(Ed25519Signer {
            kid: key_id.to_owned(),
            key,
        })
    }

    /// The key as PKCS#8 v1 PEM (RFC 8410 `OneAsymmetricKey` without the
    /// optional public key), the form OpenSSL and Python `cryptography`
    /// read. The string is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyLoadError> {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(Default::default())
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|e| KeyLoadError::Pkcs8 {
                expected: Algorithm::Ed25519,
                openssl: "ed25519",
                detail: e.to_string(),
            })
    }

    /// Sign synchronously (local keys only; generic code uses [`Signer::sign`]).
    pub fn sign_sync(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Signer for Ed25519Signer {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }
    fn public_key(&self) -> PublicKey {
        PublicKey::Ed25519(self.key.verifying_key())
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        let sig = self.sign_sync(message).to_vec();
        Box::pin(std::future::ready(Ok(sig)))
    }
}

/// A local ECDSA P-256 private key (deterministic RFC 6979 nonces).
pub struct P256Signer {
    kid: String,
    key: p256::ecdsa::SigningKey,
}

impl P256Signer {
    /// Generate a fresh key from the OS random source.
    pub fn generate(key_id: &str) -> Result<Self, KeyLoadError> {
        validate_key_id(key_id)?;
        Ok(P256Signer {
            kid: key_id.to_owned(),
            key: p256::ecdsa::SigningKey::random(&mut OsRng),
        })
    }

    /// From a PKCS#8 PEM, as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes.
    pub fn from_pkcs8_pem(key_id: &str, pem: &str) -> Result<Self, KeyLoadError> {
        validate_key_id(key_id)?;
        let key =
            p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyLoadError::Pkcs8 {
                expected: Algorithm::EcdsaP256Sha256,
                openssl: "EC -pkeyopt ec_paramgen_curve:P-256",
                detail: e.to_string(),
            })?;
        Ok(P256Signer {
            kid: key_id.to_owned(),
            key,
        })
    }

    /// The key as PKCS#8 PEM. The string is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyLoadError> {
        use p256::pkcs8::EncodePrivateKey as _;
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|e| KeyLoadError::Pkcs8 {
                expected: Algorithm::EcdsaP256Sha256,
                openssl: "EC -pkeyopt ec_paramgen_curve:P-256",
                detail: e.to_string(),
            })
    }

    /// Sign synchronously; `r || s`.
    pub fn sign_sync(&self, message: &[u8]) -> [u8; 64] {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        sig.to_bytes().into()
    }
}

impl fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P256Signer")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Signer for P256Signer {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::EcdsaP256Sha256
    }
    fn public_key(&self) -> PublicKey {
        PublicKey::P256(*self.key.verifying_key())
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        let sig = self.sign_sync(message).to_vec();
        Box::pin(std::future::ready(Ok(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn pkcs8_round_trip_and_v1_form() {
        let ed = Ed25519Signer::from_seed("k", &[4; 32]).unwrap();
        let pem = ed.to_pkcs8_pem().unwrap();
        let back = Ed25519Signer::from_pkcs8_pem("k", &pem).unwrap();
        assert_eq!(back.public_key(), ed.public_key());
        // v1 OneAsymmetricKey for Ed25519 is exactly 48 DER bytes (no public key field).
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(der.len(), 48);

        let ec = P256Signer::generate("e").unwrap();
        let back = P256Signer::from_pkcs8_pem("e", &ec.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(back.public_key(), ec.public_key());
    }

    #[test]
    fn refuses_bad_keys_and_ids() {
        assert!(matches!(
            Ed25519Signer::from_pkcs8_pem("k", "not a pem"),
            Err(KeyLoadError::Pkcs8 { .. })
        ));
        let ec_pem = P256Signer::generate("e").unwrap().to_pkcs8_pem().unwrap();
        assert!(Ed25519Signer::from_pkcs8_pem("k", &ec_pem).is_err());
        for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
            assert!(matches!(
                Ed25519Signer::generate(bad),
                Err(KeyLoadError::KeyId(_))
            ));
        }
        assert_eq!(
            format!("{:?}", Ed25519Signer::from_seed("k", &[1; 32]).unwrap()),
            "Ed25519Signer { kid: \"k\", key: \"[redacted]\" }"
        );
    }
}
