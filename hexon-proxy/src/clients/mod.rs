//! API clients: machine identities (kind `service`) that call routes with an
//! API key or an HMAC-signed request, and what they may call.
//!
//! The durable store ([`hexon_core::store::ApiClientStore`],
//! [`hexon_core::store::CredentialStore`]) is the source of truth. The
//! request path never queries it: [`ClientRegistry`] keeps an immutable
//! [`ClientTable`] snapshot (keys by lookup prefix, HMAC secrets and
//! permissions by client) and swaps in a new one when
//! [`ClientRegistry::reload`] is called after a change, so a decision is a
//! few hash lookups.
//!
//! - **API keys** look like `hxk_<prefix>_<secret>`: 16 hex characters of
//!   public lookup prefix and 256 random bits. Only SHA-256 of the whole key
//!   is stored (with the prefix as lookup handle). A fast hash is right here
//!   where it would be wrong for passwords: the key is uniformly random, so
//!   there is nothing to guess offline, and a slow hash would cost every
//!   request milliseconds. Compared in constant time.
//! - **HMAC secrets** are random strings the client keeps; the store seals
//!   them (the gateway must read them back to verify signatures). See
//!   [`hmac`] for the request format, compatible with API Gatekeeper's
//!   clients (the `byteforge-hmac` package).
//! - A client has any number of credentials of each kind, so a new one can
//!   be issued before the old one is deleted (rotation).
//! - **Permissions** ([`Grants`]): an API client passes a route only with a
//!   grant for that route and the request's method; the route's deny rules
//!   still apply first, its allow rules (written for people and groups) do
//!   not.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hexon_core::UnixTime;
use hexon_core::store::{
    ApiClientRecord, ClientStatus, CredentialKind, CredentialRecord, DurableStore, Material,
    PermissionRecord, SecretBytes, StoreError,
};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

mod authn;
pub mod hmac;
pub mod ratelimit;
pub mod signature;

pub use authn::{ApiKeyAuth, HmacAuth, SIGNED_BODY_MAX, SignedBody, SignedBodyLayer};
pub use ratelimit::ClientRateLimitLayer;
pub use signature::HttpSignatureAuth;

/// The `auth` method name an API key login records.
pub const API_KEY_METHOD: &str = "api_key";
/// The `auth` method name an HMAC-signed request records.
pub const HMAC_METHOD: &str = "hmac";
/// The `auth` method name an RFC 9421-signed request records.
pub const SIGNATURE_METHOD: &str = "http_signature";

/// Whether `identity` logged in as an API client (kind `service`, with one
/// of the API-client methods). Grants and rate limits apply to exactly
/// these identities, so every API-client authenticator must be listed here.
pub fn is_api_client_login(identity: &hexon_core::Identity) -> bool {
    identity.kind() == hexon_core::IdentityKind::Service
        && [API_KEY_METHOD, HMAC_METHOD, SIGNATURE_METHOD]
            .iter()
            .any(|m| identity.last_auth(m).is_some())
}

pub(crate) const KEY_TAG: &str = "hxk_";
const PREFIX_LEN: usize = 16;

/// A new API key, to show once.
#[derive(Clone)]
pub struct NewApiKey {
    /// The stored credential (hash only).
    pub record: CredentialRecord,
    /// The key itself: give it to the client now, it cannot be read back.
    pub key: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    hexon_core::hex::encode(&b)
}

/// A random id suffix (16 hex characters).
pub fn random_id() -> String {
    random_hex(8)
}

fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Hex SHA-256 of an API key, as stored.
fn key_hash(key: &str) -> String {
    hexon_core::hex::encode(&Sha256::digest(key.as_bytes()))
}

/// The lookup prefix of a well-formed key.
fn key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_TAG)?;
    let (prefix, secret) = rest.split_at_checked(PREFIX_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let ok = prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && (16..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(prefix)
}

/// A fresh credential record for `owner`.
fn credential(
    owner: &str,
    kind: CredentialKind,
    label: &str,
    lookup: Option<String>,
    material: Material,
    now: UnixTime,
    expires_at: Option<UnixTime>,
) -> CredentialRecord {
    CredentialRecord {
        id: format!("cred_{}", random_hex(12)),
        owner: owner.to_owned(),
        kind,
        label: label.to_owned(),
        lookup,
        material,
        counter: 0,
        created_at: now,
        last_used_at: None,
        expires_at,
    }
}

/// Make a new API key for `client` (not stored yet: insert
/// `record` with [`hexon_core::store::CredentialStore::insert_credential`]).
pub fn new_api_key(
    client: &str,
    label: &str,
    now: UnixTime,
    expires_at: Option<UnixTime>,
) -> NewApiKey {
    let prefix = random_hex(PREFIX_LEN / 2);
    let key = zeroize::Zeroizing::new(format!("{KEY_TAG}{prefix}_{}", random_token(32)));
    let hash = key_hash(&key);
    NewApiKey {
        record: credential(
            client,
            CredentialKind::ApiKey,
            label,
            Some(prefix),
            Material::Hash(hash),
            now,
            expires_at,
        ),
        key,
    }
}

/// Make a new HMAC secret for `client` (not stored yet). Returns the record
/// (the store seals the secret) and the secret to give the client.
pub fn new_hmac_secret(
    client: &str,
    label: &str,
    now: UnixTime,
    expires_at: Option<UnixTime>,
) -> (CredentialRecord, zeroize::Zeroizing<String>) {
    let secret = zeroize::Zeroizing::new(random_token(32));
    let record = credential(
        client,
        CredentialKind::HmacSecret,
        label,
        None,
        Material::Secret(SecretBytes::new(secret.as_bytes().to_vec())),
        now,
        expires_at,
    );
    (record, secret)
}

/// One API key as the request path needs it.
#[derive(Clone)]
struct KeyEntry {
    client: Arc<str>,
    /// Hex SHA-256 of the key, as stored.
    hash: Box<[u8]>,
    expires_at: Option<UnixTime>,
}

/// One HMAC secret.
#[derive(Clone)]
struct HmacEntry {
    secret: SecretBytes,
    expires_at: Option<UnixTime>,
}

/// A key an API client signs RFC 9421 requests with, by credential id.
#[derive(Clone)]
struct SigKeyEntry {
    client: Arc<str>,
    key: SigKey,
    expires_at: Option<UnixTime>,
}

#[derive(Clone)]
enum SigKey {
    /// The client's HMAC secret (also usable in the API Gatekeeper format).
    Hmac(SecretBytes),
    /// The client's Ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A client with its permissions.
#[derive(Clone, Debug)]
pub struct ClientEntry {
    /// The stored record.
    pub record: ApiClientRecord,
    /// Route name → allowed methods (upper case; `*` for all).
    permissions: HashMap<Box<str>, Vec<Box<str>>>,
    identity: hexon_core::Identity,
}

impl ClientEntry {
    /// The identity requests of this client carry (before the auth event).
    pub fn identity(&self) -> &hexon_core::Identity {
        &self.identity
    }

    /// What the client may do on `route` with `method`.
    pub fn permits(&self, route: &str, method: &str) -> Permit {
        let Some(methods) = self.permissions.get(route) else {
            return Permit::NoPermission;
        };
        let head_as_get = method.eq_ignore_ascii_case("HEAD");
        if methods.iter().any(|m| {
            &**m == "*"
                || m.eq_ignore_ascii_case(method)
                || (head_as_get && m.eq_ignore_ascii_case("GET"))
        }) {
            Permit::Allowed
        } else {
            Permit::MethodNotPermitted
        }
    }
}

/// The answer of [`ClientEntry::permits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// A grant covers the route and method.
    Allowed,
    /// No grant for the route.
    NoPermission,
    /// A grant for the route, not for this method.
    MethodNotPermitted,
}

/// A snapshot of every API client and credential, for the request path.
#[derive(Clone, Default)]
pub struct ClientTable {
    keys: HashMap<Box<str>, KeyEntry>,
    hmac: HashMap<Arc<str>, Vec<HmacEntry>>,
    sig_keys: HashMap<Box<str>, SigKeyEntry>,
    clients: HashMap<Arc<str>, Arc<ClientEntry>>,
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable")
            .field("clients", &self.clients.len())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a credential was not accepted (for logs; the client sees a bare 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not a credential of ours (malformed, unknown prefix, wrong secret).
    Unknown,
    /// The credential has expired.
    Expired,
    /// The client is suspended.
    Suspended,
    /// The client is revoked.
    Revoked,
}

impl Rejection {
    /// A short reason for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unknown => "unknown or wrong API credential",
            Rejection::Expired => "expired API credential",
            Rejection::Suspended => "API client suspended",
            Rejection::Revoked => "API client revoked",
        }
    }
}

impl ClientTable {
    /// Build the table from every client, credential and permission in
    /// `store`.
    ///
    /// # Errors
    /// The store's.
    pub async fn load(store: &dyn DurableStore) -> Result<Self, StoreError> {
        let mut table = ClientTable::default();
        for record in store.api_clients().await? {
            let id: Arc<str> = Arc::from(record.id.as_str());
            let permissions = store.permissions(&record.id).await?;
            for c in store.credentials_of(&record.id).await? {
                table.add_credential(&id, c);
            }
            let entry = entry(record, &permissions)?;
            table.clients.insert(id, Arc::new(entry));
        }
        Ok(table)
    }

    fn add_credential(&mut self, client: &Arc<str>, c: CredentialRecord) {
        match (c.kind, c.lookup, c.material) {
            (CredentialKind::ApiKey, Some(prefix), Material::Hash(h)) => {
                self.keys.insert(
                    prefix.into(),
                    KeyEntry {
                        client: client.clone(),
                        hash: h.into_bytes().into_boxed_slice(),
                        expires_at: c.expires_at,
                    },
                );
            }
            (CredentialKind::HmacSecret, _, Material::Secret(secret)) => {
                self.sig_keys.insert(
                    c.id.into(),
                    SigKeyEntry {
                        client: client.clone(),
                        key: SigKey::Hmac(secret.clone()),
                        expires_at: c.expires_at,
                    },
                );
                self.hmac
                    .entry(client.clone())
                    .or_default()
                    .push(HmacEntry {
                        secret,
                        expires_at: c.expires_at,
                    });
            }
            (CredentialKind::Ed25519Key, _, Material::Public(bytes)) => {
                let key = <[u8; 32]>::try_from(bytes.as_slice())
                    .ok()
                    .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok());
                match key {
                    Some(key) => {
                        self.sig_keys.insert(
                            c.id.into(),
                            SigKeyEntry {
                                client: client.clone(),
                                key: SigKey::Ed25519(key),
                                expires_at: c.expires_at,
                            },
                        );
                    }
                    None => tracing::warn!(
                        credential = c.id,
                        client = &**client,
                        "stored Ed25519 key is not a valid public key; ignored"
                    ),
                }
            }
            _ => {}
        }
    }

    /// The client with this id.
    pub fn client(&self, id: &str) -> Option<&Arc<ClientEntry>> {
        self.clients.get(id)
    }

    /// How many clients there are.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    fn active(&self, id: &str) -> Result<&Arc<ClientEntry>, Rejection> {
        let c = self.clients.get(id).ok_or(Rejection::Unknown)?;
        match c.record.status {
            ClientStatus::Active => Ok(c),
            ClientStatus::Suspended => Err(Rejection::Suspended),
            ClientStatus::Revoked => Err(Rejection::Revoked),
        }
    }

    /// The active client an API key belongs to.
    ///
    /// # Errors
    /// Why the key is not accepted.
    pub fn check_api_key(&self, key: &str, now: UnixTime) -> Result<&Arc<ClientEntry>, Rejection> {
        use subtle::ConstantTimeEq as _;
        let prefix = key_prefix(key).ok_or(Rejection::Unknown)?;
        let entry = self.keys.get(prefix).ok_or(Rejection::Unknown)?;
        if !bool::from(key_hash(key).as_bytes().ct_eq(&entry.hash)) {
            return Err(Rejection::Unknown);
        }
        if entry.expires_at.is_some_and(|e| e <= now) {
            return Err(Rejection::Expired);
        }
        self.active(&entry.client)
    }

    /// The active client `client_id`, if one of its unexpired HMAC secrets
    /// makes `expected` signature over `message`.
    ///
    /// # Errors
    /// Why the signature is not accepted.
    pub fn check_hmac(
        &self,
        client_id: &str,
        message: &[u8],
        signature: &[u8],
        now: UnixTime,
    ) -> Result<&Arc<ClientEntry>, Rejection> {
        let secrets = self.hmac.get(client_id).ok_or(Rejection::Unknown)?;
        let mut matched = None;
        // Every secret is tried (no early exit): the time taken does not say
        // which one matched.
        for s in secrets {
            if hmac::verify(s.secret.expose(), message, signature) {
                matched = Some(s);
            }
        }
        let s = matched.ok_or(Rejection::Unknown)?;
        if s.expires_at.is_some_and(|e| e <= now) {
            return Err(Rejection::Expired);
        }
        self.active(client_id)
    }
}

impl ClientTable {
    /// The active client whose credential `key_id` (an HMAC secret or an
    /// Ed25519 key) made `signature` over `base` (an RFC 9421 signature
    /// base). `alg`, when the client named one, must fit the key:
    /// `hmac-sha256` or `ed25519`.
    ///
    /// # Errors
    /// Why the signature is not accepted.
    pub fn check_signature(
        &self,
        key_id: &str,
        alg: Option<&str>,
        base: &[u8],
        signature: &[u8],
        now: UnixTime,
    ) -> Result<&Arc<ClientEntry>, Rejection> {
        let entry = self.sig_keys.get(key_id).ok_or(Rejection::Unknown)?;
        let ok = match (&entry.key, alg) {
            (SigKey::Hmac(secret), None | Some("hmac-sha256")) => {
                hmac::verify(secret.expose(), base, signature)
            }
            (SigKey::Ed25519(key), None | Some("ed25519")) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify_strict(base, &sig).is_ok())
            }
            _ => false,
        };
        if !ok {
            return Err(Rejection::Unknown);
        }
        if entry.expires_at.is_some_and(|e| e <= now) {
            return Err(Rejection::Expired);
        }
        self.active(&entry.client)
    }
}

impl ClientTable {
    /// For the fuzz targets only: one active client `fuzz` with an Ed25519
    /// key `cred_ed` and an HMAC secret `cred_hmac`.
    #[doc(hidden)]
    pub fn fuzz_table() -> ClientTable {
        let now = UnixTime::from_secs(0);
        let mut t = ClientTable::default();
        let id: Arc<str> = Arc::from("fuzz");
        let public = ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes();
        let mut ed = new_ed25519_key("fuzz", "", &public, now, None).unwrap_or_else(|_| {
            credential(
                "fuzz",
                CredentialKind::Ed25519Key,
                "",
                None,
                Material::Public(Vec::new()),
                now,
                None,
            )
        });
        ed.id = "cred_ed".into();
        let (mut hm, _) = new_hmac_secret("fuzz", "", now, None);
        hm.id = "cred_hmac".into();
        t.add_credential(&id, ed);
        t.add_credential(&id, hm);
        let record = ApiClientRecord {
            id: "fuzz".into(),
            name: "fuzz".into(),
            status: ClientStatus::Active,
            groups: Vec::new(),
            description: String::new(),
            rate_limit_per_minute: None,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        if let Ok(e) = entry(record, &[]) {
            t.clients.insert(id, Arc::new(e));
        }
        t
    }
}

/// An Ed25519 public key as operators paste it: PEM (`-----BEGIN PUBLIC
/// KEY-----`, SubjectPublicKeyInfo) or base64 (standard or URL-safe, padded
/// or not) of the 32 raw bytes.
///
/// # Errors
/// What is wrong with it.
pub fn parse_ed25519_public_key(text: &str) -> Result<Vec<u8>, &'static str> {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map(|k| k.to_bytes().to_vec())
            .map_err(|_| "not an Ed25519 public key in PEM (SubjectPublicKeyInfo)");
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let unpadded = compact.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(unpadded)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded))
        .map_err(|_| "public_key: PEM or base64 of the 32 raw key bytes")
}

/// A new Ed25519 signing-key credential for `client` from the client's
/// public key (32 bytes; the private key stays with the client).
///
/// # Errors
/// The bytes are not a valid Ed25519 public key.
pub fn new_ed25519_key(
    client: &str,
    label: &str,
    public_key: &[u8],
    now: UnixTime,
    expires_at: Option<UnixTime>,
) -> Result<CredentialRecord, &'static str> {
    let bytes =
        <[u8; 32]>::try_from(public_key).map_err(|_| "an Ed25519 public key is 32 bytes")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "not a valid Ed25519 public key")?;
    if key.is_weak() {
        return Err("a weak (small-order) Ed25519 public key");
    }
    Ok(credential(
        client,
        CredentialKind::Ed25519Key,
        label,
        None,
        Material::Public(bytes.to_vec()),
        now,
        expires_at,
    ))
}

fn entry(
    record: ApiClientRecord,
    permissions: &[PermissionRecord],
) -> Result<ClientEntry, StoreError> {
    let identity = hexon_core::Identity::builder(record.id.as_str(), record.name.as_str())
        .kind(hexon_core::IdentityKind::Service)
        .groups(record.groups.iter().map(String::as_str))
        .build()
        .map_err(|e| StoreError::Corrupt(format!("API client {:?}: {e}", record.id)))?;
    let permissions = permissions
        .iter()
        .map(|p| {
            (
                p.route.as_str().into(),
                p.methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase().into_boxed_str())
                    .collect(),
            )
        })
        .collect();
    Ok(ClientEntry {
        record,
        permissions,
        identity,
    })
}

/// The current [`ClientTable`], swapped whole on reload.
#[derive(Clone)]
pub struct ClientRegistry {
    store: Arc<dyn DurableStore>,
    table: Arc<RwLock<Arc<ClientTable>>>,
    /// One reload at a time: two racing reloads could otherwise finish in
    /// the wrong order and leave the older read in place.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("table", &self.load())
            .finish_non_exhaustive()
    }
}

impl ClientRegistry {
    /// Load every client from `store`.
    ///
    /// # Errors
    /// The store's.
    pub async fn open(store: Arc<dyn DurableStore>) -> Result<Self, StoreError> {
        let table = ClientTable::load(store.as_ref()).await?;
        Ok(ClientRegistry {
            store,
            table: Arc::new(RwLock::new(Arc::new(table))),
            reloading: Arc::default(),
        })
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<ClientTable> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Read the store again (after a change to clients, credentials or
    /// permissions). On error the current table stays.
    ///
    /// # Errors
    /// The store's.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let table = Arc::new(ClientTable::load(self.store.as_ref()).await?);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(p) => *p.into_inner() = table,
        }
        Ok(())
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn DurableStore> {
        &self.store
    }
}

/// What an API client may call: the authorize layer asks this after the
/// policy (see [`crate::authz::AuthorizeLayer::with_grants`]).
pub trait Grants: Send + Sync + 'static {
    /// `None` when `identity` is not an API client (the policy alone
    /// decides); otherwise whether its grants cover `route` and `method`.
    fn permit(&self, identity: &hexon_core::Identity, route: &str, method: &str) -> Option<Permit>;
}

impl Grants for ClientRegistry {
    fn permit(&self, identity: &hexon_core::Identity, route: &str, method: &str) -> Option<Permit> {
        if !is_api_client_login(identity) {
            return None;
        }
        // An identity that claims an API-client login but is unknown here
        // (removed since) gets nothing.
        Some(
            self.load()
                .client(identity.subject())
                .map_or(Permit::NoPermission, |c| c.permits(route, method)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_keys_verify_by_kind_and_lifetime() {
        use ed25519_dalek::Signer as _;
        let t = ClientTable::fuzz_table();
        let now = UnixTime::from_secs(100);
        let base = b"\"@method\": GET";
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let sig = ed.sign(base).to_bytes();
        assert!(
            t.check_signature("cred_ed", Some("ed25519"), base, &sig, now)
                .is_ok()
        );
        assert!(t.check_signature("cred_ed", None, base, &sig, now).is_ok());
        // The key decides the algorithm: no HMAC over an Ed25519 key id.
        assert!(
            t.check_signature("cred_ed", Some("hmac-sha256"), base, &sig, now)
                .is_err()
        );
        assert!(
            t.check_signature("cred_ed", Some("ed25519"), b"other", &sig, now)
                .is_err()
        );
        assert!(
            t.check_signature("cred_ed", Some("ed25519"), base, &sig[..63], now)
                .is_err()
        );
        assert!(
            t.check_signature("cred_nope", None, base, &sig, now)
                .is_err()
        );
        let hm = t.sig_keys.get("cred_hmac").unwrap();
        let SigKey::Hmac(secret) = &hm.key else {
            panic!("not an HMAC key")
        };
        let mac = hmac::sign(secret.expose(), base);
        assert!(
            t.check_signature("cred_hmac", Some("hmac-sha256"), base, &mac, now)
                .is_ok()
        );
        assert!(
            t.check_signature("cred_hmac", Some("ed25519"), base, &mac, now)
                .is_err()
        );
        assert!(
            t.check_signature("cred_hmac", None, b"x", &mac, now)
                .is_err()
        );

        // Expired keys and suspended clients are refused after the check.
        let mut t2 = ClientTable::default();
        let id: Arc<str> = Arc::from("c");
        let public = ed.verifying_key().to_bytes();
        let mut rec = new_ed25519_key("c", "", &public, now, Some(now)).unwrap();
        rec.id = "old".into();
        t2.add_credential(&id, rec);
        assert_eq!(
            t2.check_signature("old", None, base, &sig, now).err(),
            Some(Rejection::Expired)
        );
    }

    #[test]
    fn ed25519_public_keys_are_read_from_pem_or_base64() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let raw = key.to_bytes().to_vec();
        let pem = key.to_public_key_pem(Default::default()).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        for text in [pem.as_str(), &b64, &url, &format!("  {b64}\n")] {
            assert_eq!(parse_ed25519_public_key(text).unwrap(), raw, "{text}");
        }
        assert!(
            parse_ed25519_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(parse_ed25519_public_key("not base64!").is_err());
        let now = UnixTime::from_secs(1);
        assert!(new_ed25519_key("c", "", &raw[..31], now, None).is_err());
        // The identity point is a weak key: anything would verify under it.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(new_ed25519_key("c", "", &identity, now, None).is_err());
        assert!(new_ed25519_key("c", "", &raw, now, None).is_ok());
    }

    #[test]
    fn api_keys_have_a_checkable_shape() {
        let k = new_api_key("c1", "ci", UnixTime::from_secs(1), None);
        let prefix = key_prefix(&k.key).unwrap();
        assert_eq!(k.record.lookup.as_deref(), Some(prefix));
        assert_eq!(prefix.len(), PREFIX_LEN);
        for bad in [
            "",
            "hxk_",
            "hxk_0123456789abcdef",
            "hxk_0123456789abcdef_",
            "hxk_0123456789abcdeg_aaaaaaaaaaaaaaaaaaaa",
            "hxk_0123456789abcdef_aaaa aaaaaaaaaaaaaaaa",
            "Bearer hxk_0123456789abcdef_aaaaaaaaaaaaaaaaaaaa",
            "hxk_é123456789abcdef_aaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(key_prefix(bad).is_none(), "{bad:?}");
        }
        assert!(key_prefix(&format!("hxk_0123456789abcdef_{}", "a".repeat(129))).is_none());
        assert!(key_prefix("hxk_0123456789abcdef_aaaaaaaaaaaaaaaa").is_some());
    }

    #[test]
    fn permits_by_route_and_method() {
        let record = ApiClientRecord {
            id: "c1".into(),
            name: "billing".into(),
            status: ClientStatus::Active,
            groups: vec![],
            description: String::new(),
            rate_limit_per_minute: None,
            created_at: UnixTime::from_secs(1),
            updated_at: UnixTime::from_secs(1),
            version: 1,
        };
        let e = entry(
            record,
            &[
                PermissionRecord {
                    route: "orders".into(),
                    methods: vec!["GET".into(), "post".into()],
                },
                PermissionRecord {
                    route: "all".into(),
                    methods: vec!["*".into()],
                },
            ],
        )
        .unwrap();
        assert_eq!(e.permits("orders", "GET"), Permit::Allowed);
        assert_eq!(e.permits("orders", "HEAD"), Permit::Allowed);
        assert_eq!(e.permits("orders", "POST"), Permit::Allowed);
        assert_eq!(e.permits("orders", "DELETE"), Permit::MethodNotPermitted);
        assert_eq!(e.permits("all", "DELETE"), Permit::Allowed);
        assert_eq!(e.permits("other", "GET"), Permit::NoPermission);
        assert_eq!(e.identity().kind(), hexon_core::IdentityKind::Service);
    }
}
