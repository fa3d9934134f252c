//! Why the CA refused or failed.

use hexon_core::signer::SignError;
use hexon_core::store::StoreError;

/// Why a CA operation failed.
///
/// [`CaError::Refused`], [`CaError::BadCsr`] and [`CaError::BadSshKey`] are
/// the requester's fault and their messages are safe to show them (ACME
/// turns the first two into `rejectedIdentifier` / `badCSR`); every other
/// variant is an operator's problem and is logged, not shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The request breaks the profile or the name policy.
    #[error("refused: {0}")]
    Refused(String),
    /// The certificate signing request is malformed or its signature is bad.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// The SSH public key to certify is malformed (not one OpenSSH key line).
    #[error("bad SSH public key: {0}")]
    BadSshKey(String),
    /// The signing key is unavailable or failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The signer returned a signature that does not verify under its own
    /// public key (a faulty HSM or threshold share). Nothing was issued.
    #[error("signer {key_id:?} produced a signature that does not verify; nothing was issued")]
    BadSignature {
        /// Which key.
        key_id: String,
    },
    /// Building the certificate or CRL failed.
    #[error("building {what} failed: {detail}")]
    Build {
        /// What was being built.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The durable store failed (issuance is refused: an unrecorded
    /// certificate could never be revoked).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No authority of that name, or none for that profile.
    #[error("no certificate authority {0:?} is configured")]
    UnknownAuthority(String),
    /// Loading or creating the hierarchy failed.
    #[error("{0}")]
    Setup(String),
}

impl CaError {
    pub(crate) fn build(what: &'static str, e: impl std::fmt::Display) -> Self {
        CaError::Build {
            what,
            detail: e.to_string(),
        }
    }
}
