//! Secrets at rest: XChaCha20-Poly1305 sealing with key rotation.
//!
//! TOTP seeds, HMAC shared secrets and other secrets the gateway must read
//! back (so cannot hash) are sealed before they reach a store. The sealed
//! form is `version (1) ‖ key id (4) ‖ nonce (24) ‖ ciphertext+tag`:
//!
//! - **XChaCha20-Poly1305** because its 192-bit nonce can be drawn at random
//!   for every seal without a counter shared between nodes (AES-GCM's 96-bit
//!   nonce makes random nonces risky at volume).
//! - The **key id** (the first 4 bytes of a SHA-256 over the key, under a
//!   fixed label) says which key sealed a value, so a ring of old keys can
//!   still open values sealed before a rotation, and
//!   [`SecretKeys::needs_rewrap`] finds values to re-seal.
//! - A **context** (the record's kind and id) is bound as associated data:
//!   a sealed value copied to another record does not open.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::StoreError;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Bytes that are secret: zeroed on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wrap secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretBytes(Zeroizing::new(bytes.into()))
    }

    /// The secret itself. Use it, do not log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// Why secret keys could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretKeyError {
    /// No key was configured.
    #[error(
        "no secret-encryption key configured; generate one with `hexon keys secret` and set it as the first of `state.encryption_keys`"
    )]
    Missing,
    /// A key is not base64.
    #[error("encryption key #{index} is not base64 (standard or URL-safe)")]
    NotBase64 {
        /// Position in the configured list (0 = primary).
        index: usize,
    },
    /// A key is not 32 bytes.
    #[error("encryption key #{index} is {len} bytes; it must be 32 bytes (44 base64 characters)")]
    WrongLength {
        /// Position in the configured list.
        index: usize,
        /// Decoded length.
        len: usize,
    },
    /// The same key appears twice.
    #[error("encryption key #{index} repeats an earlier key")]
    Duplicate {
        /// Position of the repeat.
        index: usize,
    },
}

struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: XChaCha20Poly1305,
}

/// The keys that seal and open secrets at rest: the first is the primary
/// (it seals), the others only open values sealed before a rotation.
pub struct SecretKeys {
    keys: Vec<Key>,
}

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex4(&k.id)).collect();
        f.debug_struct("SecretKeys").field("key_ids", &ids).finish()
    }
}

fn hex4(id: &[u8; KEY_ID_LEN]) -> String {
    crate::hex::encode(id)
}

fn key_id(key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new()
        .chain_update(b"hexon secret key id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.get(..KEY_ID_LEN).unwrap_or(&[0; KEY_ID_LEN]));
    id
}

impl SecretKeys {
    /// A ring with one key, the primary.
    pub fn new(primary: [u8; 32]) -> Self {
        let primary = Zeroizing::new(primary);
        SecretKeys {
            keys: vec![Key {
                id: key_id(&primary),
                cipher: XChaCha20Poly1305::new((&*primary).into()),
            }],
        }
    }

    /// Add an older key, used only to open values it sealed.
    pub fn with_previous(mut self, key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        let id = key_id(&key);
        if !self.keys.iter().any(|k| k.id == id) {
            self.keys.push(Key {
                id,
                cipher: XChaCha20Poly1305::new((&*key).into()),
            });
        }
        self
    }

    /// Keys from their base64 forms, primary first.
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> Result<Self, SecretKeyError> {
        let mut decoded: Vec<Zeroizing<[u8; 32]>> = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let text = key.as_ref().trim();
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                    .map_err(|_| SecretKeyError::NotBase64 { index })?,
            );
            let arr: [u8; 32] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| SecretKeyError::WrongLength {
                        index,
                        len: bytes.len(),
                    })?;
            let arr = Zeroizing::new(arr);
            if decoded.iter().any(|k| **k == *arr) {
                return Err(SecretKeyError::Duplicate { index });
            }
            decoded.push(arr);
        }
        let mut iter = decoded.into_iter();
        let primary = iter.next().ok_or(SecretKeyError::Missing)?;
        Ok(iter.fold(SecretKeys::new(*primary), |ring, k| ring.with_previous(*k)))
    }

    /// A fresh random key in standard base64, for `state.encryption_keys`.
    pub fn generate_base64() -> String {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *key);
        base64::engine::general_purpose::STANDARD.encode(*key)
    }

    /// The primary key's id, as hex (safe to log).
    pub fn primary_id(&self) -> String {
        self.keys.first().map(|k| hex4(&k.id)).unwrap_or_default()
    }

    /// Seal `plaintext`, binding `context` (e.g. `b"credential:totp:<id>"`).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self
            .keys
            .first()
            .ok_or(StoreError::Crypto("no secret-encryption key"))?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Crypto("encryption failed"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Open a value sealed by [`seal`](Self::seal) with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<SecretBytes, StoreError> {
        let (id, nonce, ciphertext) = split(sealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(StoreError::Crypto(
                "sealed with a key that is not configured; add the old key to state.encryption_keys",
            ))?;
        key.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map(SecretBytes::new)
            .map_err(|_| {
                StoreError::Crypto("authentication failed (tampered, or moved between records)")
            })
    }

    /// Whether `sealed` was sealed by a key other than the primary (and so
    /// should be re-sealed after a rotation).
    pub fn needs_rewrap(&self, sealed: &[u8]) -> bool {
        match (split(sealed), self.keys.first()) {
            (Ok((id, _, _)), Some(primary)) => id != primary.id,
            _ => true,
        }
    }

    /// Open with any configured key and seal again with the primary.
    pub fn rewrap(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, StoreError> {
        let plain = self.open(sealed, context)?;
        self.seal(plain.expose(), context)
    }
}

/// A sealed value's key id, nonce and ciphertext.
type Parts<'a> = ([u8; KEY_ID_LEN], [u8; NONCE_LEN], &'a [u8]);

fn split(sealed: &[u8]) -> Result<Parts<'_>, StoreError> {
    if sealed.len() < HEADER_LEN + TAG_LEN {
        return Err(StoreError::Crypto("sealed value is truncated"));
    }
    let (header, ciphertext) = sealed.split_at(HEADER_LEN);
    let (version, rest) = header.split_at(1);
    if version != [VERSION] {
        return Err(StoreError::Crypto("unknown sealed-value version"));
    }
    let (id, nonce) = rest.split_at(KEY_ID_LEN);
    let mut key = [0u8; KEY_ID_LEN];
    key.copy_from_slice(id);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    Ok((key, n, ciphertext))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let keys = SecretKeys::new([7; 32]);
        let sealed = keys.seal(b"JBSWY3DPEHPK3PXP", b"totp:1").unwrap();
        assert_eq!(
            keys.open(&sealed, b"totp:1").unwrap().expose(),
            b"JBSWY3DPEHPK3PXP"
        );
        assert!(matches!(
            keys.open(&sealed, b"totp:2"),
            Err(StoreError::Crypto(_))
        ));
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, keys.seal(b"JBSWY3DPEHPK3PXP", b"totp:1").unwrap());
    }

    #[test]
    fn tampering_truncation_and_unknown_keys_are_refused() {
        let keys = SecretKeys::new([1; 32]);
        let sealed = keys.seal(b"secret", b"c").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(keys.open(&bad, b"c").is_err(), "flipped byte {i} accepted");
        }
        for len in 0..sealed.len() {
            assert!(keys.open(&sealed[..len], b"c").is_err());
        }
        let other = SecretKeys::new([2; 32]);
        assert!(
            matches!(other.open(&sealed, b"c"), Err(StoreError::Crypto(m)) if m.contains("not configured"))
        );
    }

    #[test]
    fn rotation_opens_old_values_and_rewraps_to_the_primary() {
        let old = SecretKeys::new([1; 32]);
        let sealed = old.seal(b"hmac-secret", b"ctx").unwrap();
        let rotated = SecretKeys::new([9; 32]).with_previous([1; 32]);
        assert!(rotated.needs_rewrap(&sealed));
        assert_eq!(
            rotated.open(&sealed, b"ctx").unwrap().expose(),
            b"hmac-secret"
        );
        let fresh = rotated.rewrap(&sealed, b"ctx").unwrap();
        assert!(!rotated.needs_rewrap(&fresh));
        // After the old key is dropped, only the rewrapped value opens.
        let only_new = SecretKeys::new([9; 32]);
        assert!(only_new.open(&sealed, b"ctx").is_err());
        assert_eq!(
            only_new.open(&fresh, b"ctx").unwrap().expose(),
            b"hmac-secret"
        );
    }

    #[test]
    fn base64_keys_are_validated_with_precise_errors() {
        let k = SecretKeys::generate_base64();
        assert!(SecretKeys::from_base64(&[k.as_str()]).is_ok());
        assert_eq!(
            SecretKeys::from_base64::<&str>(&[]).unwrap_err(),
            SecretKeyError::Missing
        );
        assert_eq!(
            SecretKeys::from_base64(&["not base64!"]).unwrap_err(),
            SecretKeyError::NotBase64 { index: 0 }
        );
        assert_eq!(
            SecretKeys::from_base64(&[k.as_str(), "AAAA"]).unwrap_err(),
            SecretKeyError::WrongLength { index: 1, len: 3 }
        );
        assert_eq!(
            SecretKeys::from_base64(&[k.as_str(), k.as_str()]).unwrap_err(),
            SecretKeyError::Duplicate { index: 1 }
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let keys = SecretKeys::new([0xAB; 32]);
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains("ab, ab") && !shown.contains("171"),
            "{shown}"
        );
        let secret = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "SecretBytes(<7 bytes redacted>)");
    }
}
