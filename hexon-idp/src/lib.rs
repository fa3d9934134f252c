//! Hexon's login host (identity provider, part 1).
//!
//! The gateway and the login service are one process: a user signs in once
//! on the login host and every protected host recognises them, through a
//! one-time code that becomes a session cookie scoped to that host.
//!
//! - [`LoginService`]: the pages (sign in, two-step verification, account,
//!   sign out) and the `/.hexon/callback` every protected host answers.
//! - [`password`]: argon2id on a bounded pool of dedicated threads.
//! - [`totp`]: RFC 6238 codes, enrolment URI and QR code; a code is good once.
//! - [`redirect`]: return URLs only to configured hosts.
//! - [`throttle`]: growing delays per account name and per address.
//!
//! Methods still to come (see docs/LOGIN.md): WebAuthn passkeys, magic
//! links and email codes.

pub mod email;
pub mod pages;
pub mod password;
pub mod redirect;
pub mod service;
pub mod throttle;
pub mod totp;
pub mod users;
pub mod webauthn;

pub use service::{
    APP_COOKIE, APP_LOGOUT_PATH, CALLBACK_PATH, FLOW_COOKIE, LoginParts, LoginService, SSO_COOKIE,
    START_PATH, STATE_COOKIE, StartError, csrf_token, fuzz_login_inputs,
};
pub use users::{ConfigUsers, LocalUser, Users};

/// SHA-256 of `label`, a zero byte and `value`, in hex: how the service
/// names what it stores for a secret (a cookie, a code) or a person (a
/// throttle bucket) without storing the secret or the name.
pub(crate) fn digest_hex(label: &str, value: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    hexon_core::hex::encode(&h.finalize())
}
