//! WebAuthn passkeys and security keys, with webauthn-rs.
//!
//! - The relying party is the login host (its host name is the RP id, its
//!   URL the only origin): every ceremony happens there.
//! - Ceremony state is sealed in the shared KV between `begin` and
//!   `finish`, and deleted with compare-and-delete at `finish`: a ceremony
//!   completes once (a replayed assertion finds no state), on any node.
//! - The sign count is the stored credential's counter, advanced with
//!   compare-and-set: an assertion whose count does not move forward
//!   (a cloned authenticator, a replay of an old assertion) is refused,
//!   and of two racing uses of one count only one passes. Authenticators
//!   that do not count (always 0) are accepted as such.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexon_core::store::CredentialRecord;
use sha2::{Digest as _, Sha256};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, Url, Uuid, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::{
    AuthenticatorSelectionCriteria, ResidentKeyRequirement, UserVerificationPolicy,
};

/// The relying party of the login host.
#[derive(Clone)]
pub struct RelyingParty {
    webauthn: std::sync::Arc<Webauthn>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty").finish_non_exhaustive()
    }
}

impl RelyingParty {
    /// The relying party for `origin` (the login URL) named `name`.
    pub fn new(origin: &str, host: &str, name: &str) -> Result<RelyingParty, String> {
        let url = Url::parse(origin).map_err(|e| format!("login.url for WebAuthn: {e}"))?;
        let webauthn = WebauthnBuilder::new(host, &url)
            .map_err(|e| format!("WebAuthn relying party {host}: {e}"))?
            .rp_name(name)
            .build()
            .map_err(|e| format!("WebAuthn relying party {host}: {e}"))?;
        Ok(RelyingParty {
            webauthn: std::sync::Arc::new(webauthn),
        })
    }

    /// The library's relying party.
    pub fn webauthn(&self) -> &Webauthn {
        &self.webauthn
    }
}

/// The WebAuthn user handle of `subject`: stable, and not the subject
/// itself (authenticators may show or sync it).
pub fn user_handle(subject: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"hexon webauthn user\0");
    h.update(subject.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    for (to, from) in b.iter_mut().zip(d.iter()) {
        *to = *from;
    }
    Uuid::from_bytes(b)
}

/// A credential id as stored (`lookup` of the credential record).
pub fn credential_lookup(id: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

/// Ask for a discoverable credential (a passkey that can sign in without a
/// username), where the authenticator can keep one.
pub fn prefer_discoverable(ccr: &mut CreationChallengeResponse) {
    let selection =
        ccr.public_key
            .authenticator_selection
            .get_or_insert(AuthenticatorSelectionCriteria {
                authenticator_attachment: None,
                resident_key: None,
                require_resident_key: false,
                user_verification: UserVerificationPolicy::Required,
            });
    selection.resident_key = Some(ResidentKeyRequirement::Preferred);
}

/// The passkey stored in a credential record, if it is one.
pub fn passkey_of(record: &CredentialRecord) -> Option<Passkey> {
    match &record.material {
        hexon_core::store::Material::Public(json) => serde_json::from_slice(json).ok(),
        _ => None,
    }
}

/// Whether an assertion's sign count may be accepted after `stored`:
/// it must move forward, unless the authenticator does not count at all.
pub fn counter_ok(stored: u64, presented: u32) -> bool {
    (stored == 0 && presented == 0) || u64::from(presented) > stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_forward_or_are_absent() {
        assert!(counter_ok(0, 0));
        assert!(counter_ok(0, 1));
        assert!(counter_ok(5, 6));
        assert!(!counter_ok(5, 5), "replayed count");
        assert!(!counter_ok(5, 4), "rollback (cloned authenticator)");
        assert!(
            !counter_ok(5, 0),
            "a counting authenticator stopped counting"
        );
    }

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_handle("alice"), user_handle("alice"));
        assert_ne!(user_handle("alice"), user_handle("bob"));
    }

    #[test]
    fn the_relying_party_is_the_login_host() {
        assert!(RelyingParty::new("https://auth.example.com", "auth.example.com", "X").is_ok());
        assert!(RelyingParty::new("http://auth.localhost:8080", "auth.localhost", "X").is_ok());
        assert!(RelyingParty::new("https://auth.example.com", "example.org", "X").is_err());
    }
}
