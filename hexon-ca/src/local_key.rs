//! Local P-256 CA keys signing with ring.
//!
//! hexon-core's [`P256Signer`] is pure Rust (RustCrypto `p256`) so that the
//! crates backends use to verify identities do not build ring; it signs in
//! about 0.15 ms. A CA signs every certificate, OCSP response and CRL, and
//! ring's P-256 signs the same message with the same key in a fraction of
//! that. So the CA loads and writes its keys exactly as before (PKCS #8 PEM
//! through `P256Signer`) and signs through ring: same key files, same `r ||
//! s` signatures, and every signature is still verified by the bridge
//! before it is released.

use hexon_core::signer::SignError;
use hexon_core::signer::SignFuture;
use hexon_core::{Algorithm, P256Signer, PublicKey, Signer};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// A P-256 key held in memory, signing with ring.
pub(crate) struct RingP256Signer {
    kid: String,
    key: EcdsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for RingP256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingP256Signer")
            .field("kid", &self.kid)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl RingP256Signer {
    /// The same key as `signer`, signing through ring. `Err` with the
    /// reason if ring does not take the key (the caller keeps `signer`).
    pub(crate) fn from_p256(signer: &P256Signer) -> Result<Self, String> {
        let pem = signer.to_pkcs8_pem().map_err(|e| e.to_string())?;
        let der = match rustls_pemfile::private_key(&mut pem.as_bytes()) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => der,
            _ => return Err("the key does not re-encode as PKCS #8".into()),
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| format!("ring refuses the key: {e}"))?;
        Ok(RingP256Signer {
            kid: signer.key_id().to_owned(),
            key,
            public: signer.public_key(),
            rng,
        })
    }
}

impl Signer for RingP256Signer {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::EcdsaP256Sha256
    }
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
        let result = self
            .key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignError::Failed {
                key_id: self.kid.clone(),
                reason: "ring could not sign".into(),
            });
        Box::pin(std::future::ready(result))
    }
}

/// `signer` signing through ring when ring takes the key, else as it is.
pub(crate) fn fast(signer: P256Signer) -> std::sync::Arc<dyn Signer> {
    match RingP256Signer::from_p256(&signer) {
        Ok(s) => std::sync::Arc::new(s),
        Err(why) => {
            tracing::debug!(
                key = signer.key_id(),
                why,
                "signing with the pure-Rust P-256 implementation"
            );
            std::sync::Arc::new(signer)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn ring_signs_what_the_p256_key_verifies() {
        use p256::ecdsa::signature::Verifier as _;
        let k = P256Signer::generate("ca-test").unwrap();
        let PublicKey::P256(vk) = k.public_key() else {
            panic!("not P-256")
        };
        let ring = RingP256Signer::from_p256(&k).unwrap();
        assert_eq!(ring.key_id(), "ca-test");
        assert_eq!(ring.public_key(), k.public_key());
        let sig = ring.sign(b"to be signed").await.unwrap();
        assert_eq!(sig.len(), 64);
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify(b"to be signed", &sig).unwrap();
        assert!(vk.verify(b"something else", &sig).is_err());
    }
}
