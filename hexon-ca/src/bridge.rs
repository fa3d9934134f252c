//! Bridging rcgen's synchronous signing hook to the asynchronous
//! [`Signer`](hexon_core::Signer).
//!
//! rcgen calls `SigningKey::sign(tbs)` in the middle of serialising a
//! certificate or CRL and wants the signature back at once. A threshold key
//! answers after a network round trip, so blocking there would hold a thread
//! for about a second per signature. Instead the certificate is built twice
//! over, cheaply:
//!
//! 1. rcgen builds it with a [`CaptureKey`]: its `sign` records the
//!    to-be-signed bytes (in a thread-local slot: rcgen's call is synchronous
//!    and on this thread, so nothing else can write the slot in between) and
//!    returns a placeholder;
//! 2. the real signer signs those bytes, asynchronously;
//! 3. the outer `SEQUENCE { tbs, signatureAlgorithm, signature }` that
//!    certificates and CRLs share is re-encoded with the real signature
//!    (with the `der` crate; the to-be-signed part is carried over byte for
//!    byte and checked to be exactly what was signed).
//!
//! Every signature is verified with the signer's public key before it is
//! released: a faulty HSM or threshold share yields an error, never a
//! certificate that does not verify.

use std::cell::RefCell;

use der::asn1::{AnyRef, BitString};
use der::{Decode, Encode, Sequence};
use hexon_core::{Algorithm, Signer};

use crate::CaError;

thread_local! {
    static CAPTURED: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// An rcgen signing key that records what it is asked to sign.
#[derive(Debug)]
pub(crate) struct CaptureKey {
    public: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl CaptureKey {
    /// For `signer`'s public key.
    pub(crate) fn for_signer(signer: &dyn Signer) -> Result<Self, CaError> {
        let (public, alg) = raw_public_key(signer)?;
        Ok(CaptureKey { public, alg })
    }
}

/// The public key as X.509 puts it in `subjectPublicKey`, and rcgen's
/// algorithm for it.
pub(crate) fn raw_public_key(
    signer: &dyn Signer,
) -> Result<(Vec<u8>, &'static rcgen::SignatureAlgorithm), CaError> {
    match signer.public_key() {
        hexon_core::PublicKey::Ed25519(k) => Ok((k.as_bytes().to_vec(), &rcgen::PKCS_ED25519)),
        hexon_core::PublicKey::P256(k) => Ok((
            k.to_encoded_point(false).as_bytes().to_vec(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )),
        other => Err(CaError::Setup(format!(
            "signer {:?}: a CA key must be Ed25519 or P-256, not {:?}",
            signer.key_id(),
            other.algorithm()
        ))),
    }
}

impl rcgen::PublicKeyData for CaptureKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

impl rcgen::SigningKey for CaptureKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        CAPTURED.with(|c| *c.borrow_mut() = Some(msg.to_vec()));
        // Replaced before anything leaves this module.
        Ok(Vec::new())
    }
}

/// What certificates and CRLs look like on the outside.
#[derive(Sequence)]
struct Signed<'a> {
    tbs: AnyRef<'a>,
    algorithm: AnyRef<'a>,
    signature: BitString,
}

/// Build with rcgen (`build` must sign with a [`CaptureKey`] exactly once),
/// then sign with `signer` and return the finished DER.
pub(crate) async fn sign_built(
    signer: &dyn Signer,
    what: &'static str,
    build: impl FnOnce() -> Result<Vec<u8>, rcgen::Error>,
) -> Result<Vec<u8>, CaError> {
    let (unsigned, tbs) = {
        CAPTURED.with(|c| c.borrow_mut().take());
        let unsigned = build().map_err(|e| CaError::build(what, e))?;
        let tbs = CAPTURED
            .with(|c| c.borrow_mut().take())
            .ok_or_else(|| CaError::build(what, "rcgen did not ask for a signature"))?;
        (unsigned, tbs)
    };
    let signature = sign_checked(signer, &tbs).await?;
    let outer = Signed::from_der(&unsigned).map_err(|e| CaError::build(what, e))?;
    if outer.tbs.to_der().map_err(|e| CaError::build(what, e))? != tbs {
        return Err(CaError::build(
            what,
            "the signed bytes are not the structure's to-be-signed part",
        ));
    }
    let signed = Signed {
        tbs: outer.tbs,
        algorithm: outer.algorithm,
        signature: BitString::from_bytes(&signature).map_err(|e| CaError::build(what, e))?,
    };
    signed.to_der().map_err(|e| CaError::build(what, e))
}

/// Sign `message` and return the signature as X.509 and OCSP carry it
/// (Ed25519 raw; ECDSA as a DER `Ecdsa-Sig-Value`), after checking it
/// verifies.
pub(crate) async fn sign_checked(signer: &dyn Signer, message: &[u8]) -> Result<Vec<u8>, CaError> {
    let raw = signer.sign(message).await?;
    let bad = || CaError::BadSignature {
        key_id: signer.key_id().to_owned(),
    };
    // ring verifies several times faster than the pure-Rust curve code,
    // and this check runs once per certificate, CRL and OCSP response.
    let (public, _) = raw_public_key(signer)?;
    let alg: &dyn ring::signature::VerificationAlgorithm = match signer.algorithm() {
        Algorithm::Ed25519 => &ring::signature::ED25519,
        _ => &ring::signature::ECDSA_P256_SHA256_FIXED,
    };
    ring::signature::UnparsedPublicKey::new(alg, &public)
        .verify(message, &raw)
        .map_err(|_| bad())?;
    match signer.algorithm() {
        Algorithm::EcdsaP256Sha256 => {
            let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| bad())?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        _ => Ok(raw),
    }
}

/// The X.509 `AlgorithmIdentifier` of signatures by `alg` (Ed25519, or
/// ecdsa-with-SHA256 without parameters, as RFC 8410 and RFC 5758 say).
pub(crate) fn signature_algorithm(alg: Algorithm) -> spki::AlgorithmIdentifierOwned {
    let oid = match alg {
        Algorithm::Ed25519 => const_oid::db::rfc8410::ID_ED_25519,
        _ => const_oid::db::rfc5912::ECDSA_WITH_SHA_256,
    };
    spki::AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}
