//! Durable objects: the directory, credentials, API clients and their
//! permissions, OIDC clients, ACME accounts, issued certificates and the
//! audit trail.
//!
//! One trait per kind of object, and [`DurableStore`] for a backend that
//! keeps them all (embedded SQLite by default, PostgreSQL at scale).
//!
//! - Secrets the gateway must read back ([`Material::Secret`]) are sealed
//!   by the store with its [`SecretKeys`](super::SecretKeys) before they are
//!   written, bound to the record they belong to; hashed material is stored
//!   as given.
//! - Where two writers can race, updates are optimistic: a record carries
//!   the `version` it was read at and an update with a stale version fails
//!   with [`StoreError::Conflict`]; counters (WebAuthn sign counts, TOTP
//!   steps) advance only by compare-and-set.
//! - The audit trail is append-only: there is no update or delete, and the
//!   SQL backends refuse both in the database too.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{SecretBytes, StoreError};
use crate::UnixTime;
use crate::directory::{SourceId, SourceSnapshot, UserRecord};

// ---------------------------------------------------------------- directory

/// Users, groups and memberships, kept per source (so a merged directory
/// can say where each value came from and a source's sync replaces only its
/// own records).
#[async_trait]
pub trait DirectoryStore: Send + Sync {
    /// Replace everything `source` said with `snapshot`, atomically.
    async fn save_source(
        &self,
        source: &SourceId,
        snapshot: &SourceSnapshot,
    ) -> Result<(), StoreError>;

    /// Every source's snapshot, sorted by source id. Feed them to
    /// [`Directory::from_snapshots`](crate::directory::Directory::from_snapshots).
    async fn load_sources(&self) -> Result<Vec<(SourceId, SourceSnapshot)>, StoreError>;

    /// Forget a source and everything it said. `Ok(false)` if it had nothing.
    async fn delete_source(&self, source: &SourceId) -> Result<bool, StoreError>;

    /// What each source says about one user, sorted by source id.
    async fn find_user(&self, subject: &str) -> Result<Vec<(SourceId, UserRecord)>, StoreError>;
}

// -------------------------------------------------------------- credentials

/// What a credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialKind {
    /// A password hash (PHC string, e.g. argon2id).
    Password,
    /// A TOTP seed (sealed).
    Totp,
    /// A recovery code (hashed, single use).
    RecoveryCode,
    /// A WebAuthn credential (public key and sign count).
    WebAuthn,
    /// An API key (hashed; looked up by its prefix).
    ApiKey,
    /// An HMAC shared secret (sealed).
    HmacSecret,
    /// An Ed25519 public key an API client signs requests with (RFC 9421);
    /// the private key never leaves the client.
    Ed25519Key,
}

impl CredentialKind {
    /// Every kind.
    pub const ALL: [CredentialKind; 7] = [
        CredentialKind::Password,
        CredentialKind::Totp,
        CredentialKind::RecoveryCode,
        CredentialKind::WebAuthn,
        CredentialKind::ApiKey,
        CredentialKind::HmacSecret,
        CredentialKind::Ed25519Key,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Password => "password",
            CredentialKind::Totp => "totp",
            CredentialKind::RecoveryCode => "recovery_code",
            CredentialKind::WebAuthn => "webauthn",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::HmacSecret => "hmac_secret",
            CredentialKind::Ed25519Key => "ed25519_key",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        CredentialKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A credential's material.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Material {
    /// A one-way hash (PHC string or hex digest), stored as is.
    Hash(String),
    /// A secret the gateway must read back: sealed at rest.
    Secret(SecretBytes),
    /// Public data (a WebAuthn credential's public key), stored as is.
    Public(Vec<u8>),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Hashes of low-entropy secrets (passwords) are still offline-attackable.
            Material::Hash(_) => f.write_str("Hash(<redacted>)"),
            Material::Secret(s) => write!(f, "Secret({s:?})"),
            Material::Public(p) => write!(f, "Public(<{} bytes>)", p.len()),
        }
    }
}

/// A stored credential of a user or an API client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Unique id.
    pub id: String,
    /// The user's subject id or the API client's id.
    pub owner: String,
    /// What it is.
    pub kind: CredentialKind,
    /// A name the owner chose ("YubiKey 5", "CI key").
    pub label: String,
    /// A non-secret handle to find it by, unique per kind: an API key's
    /// prefix, a WebAuthn credential id.
    pub lookup: Option<String>,
    /// The material.
    pub material: Material,
    /// A counter that only moves forward: WebAuthn sign count, last TOTP step.
    pub counter: u64,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it last authenticated someone.
    pub last_used_at: Option<UnixTime>,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixTime>,
}

/// Credentials of users and API clients.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Store a new credential. [`StoreError::AlreadyExists`] if the id, or
    /// the (kind, lookup) pair, is taken.
    async fn insert_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError>;

    /// One credential by id.
    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError>;

    /// One credential by its lookup handle.
    async fn credential_by_lookup(
        &self,
        kind: CredentialKind,
        lookup: &str,
    ) -> Result<Option<CredentialRecord>, StoreError>;

    /// All credentials of an owner, sorted by creation time then id.
    async fn credentials_of(&self, owner: &str) -> Result<Vec<CredentialRecord>, StoreError>;

    /// Move the counter from `expected` to `new` and record the use, only if
    /// it is still at `expected`. `Ok(false)` means another writer moved it
    /// first (a cloned authenticator, a replayed TOTP code).
    /// [`StoreError::NotFound`] if there is no such credential.
    async fn advance_counter(
        &self,
        id: &str,
        expected: u64,
        new: u64,
        used_at: UnixTime,
    ) -> Result<bool, StoreError>;

    /// Replace the material (password change, secret rotation).
    /// [`StoreError::NotFound`] if there is no such credential.
    async fn replace_material(&self, id: &str, material: &Material) -> Result<(), StoreError>;

    /// Delete one credential. `Ok(false)` if it did not exist.
    async fn delete_credential(&self, id: &str) -> Result<bool, StoreError>;

    /// Re-seal every secret sealed by a non-primary key with the primary key
    /// (after a key rotation). Returns how many were re-sealed.
    async fn rewrap_secrets(&self) -> Result<usize, StoreError>;
}

/// The context a credential's sealed material is bound to.
/// Bound: the kind, the id and the owner, so a sealed TOTP seed moved to
/// another row or to another user's row does not open.
pub(crate) fn material_context(owner: &str, id: &str, kind: CredentialKind) -> Vec<u8> {
    format!("hexon credential\0{}\0{id}\0{owner}", kind.as_str()).into_bytes()
}

/// Material as stored: a type tag and bytes (sealed for secrets).
pub(crate) fn seal_material(
    keys: &super::SecretKeys,
    owner: &str,
    id: &str,
    kind: CredentialKind,
    material: &Material,
) -> Result<(&'static str, Vec<u8>), StoreError> {
    Ok(match material {
        Material::Hash(h) => ("hash", h.as_bytes().to_vec()),
        Material::Public(p) => ("public", p.clone()),
        Material::Secret(s) => (
            "sealed",
            keys.seal(s.expose(), &material_context(owner, id, kind))?,
        ),
    })
}

/// The inverse of [`seal_material`].
pub(crate) fn open_material(
    keys: &super::SecretKeys,
    owner: &str,
    id: &str,
    kind: CredentialKind,
    tag: &str,
    bytes: Vec<u8>,
) -> Result<Material, StoreError> {
    match tag {
        "hash" => String::from_utf8(bytes)
            .map(Material::Hash)
            .map_err(|_| StoreError::Corrupt(format!("credential {id}: hash is not UTF-8"))),
        "public" => Ok(Material::Public(bytes)),
        "sealed" => keys
            .open(&bytes, &material_context(owner, id, kind))
            .map(Material::Secret),
        other => Err(StoreError::Corrupt(format!(
            "credential {id}: unknown material type `{other}`"
        ))),
    }
}

// -------------------------------------------------------------- API clients

/// An API client's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    /// May authenticate.
    Active,
    /// Temporarily refused; may be reactivated.
    Suspended,
    /// Permanently refused.
    Revoked,
}

impl ClientStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Active => "active",
            ClientStatus::Suspended => "suspended",
            ClientStatus::Revoked => "revoked",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ClientStatus::Active,
            ClientStatus::Suspended,
            ClientStatus::Revoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A machine identity (kind = service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiClientRecord {
    /// Unique id (also its subject).
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Lifecycle state.
    pub status: ClientStatus,
    /// Groups the client is a member of, sorted.
    pub groups: Vec<String>,
    /// Free text.
    pub description: String,
    /// Requests per minute, if limited.
    pub rate_limit_per_minute: Option<u32>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it last changed.
    pub updated_at: UnixTime,
    /// Optimistic-concurrency version: set by the store (1 on insert, +1 on
    /// every update); pass back the version you read to update.
    pub version: u64,
}

/// A client may call `route` with these methods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionRecord {
    /// The route id (or pattern) from the configuration.
    pub route: String,
    /// Allowed methods, upper-case and sorted; `["*"]` for all.
    pub methods: Vec<String>,
}

/// API clients and their permissions.
#[async_trait]
pub trait ApiClientStore: Send + Sync {
    /// Store a new client (its `version` is ignored and set to 1).
    /// [`StoreError::AlreadyExists`] if the id or the name is taken.
    async fn insert_api_client(&self, client: &ApiClientRecord) -> Result<(), StoreError>;

    /// One client by id.
    async fn api_client(&self, id: &str) -> Result<Option<ApiClientRecord>, StoreError>;

    /// Every client, sorted by id.
    async fn api_clients(&self) -> Result<Vec<ApiClientRecord>, StoreError>;

    /// Update a client read at `client.version`; returns the new version.
    /// [`StoreError::Conflict`] if it changed since, [`StoreError::NotFound`]
    /// if it is gone.
    async fn update_api_client(&self, client: &ApiClientRecord) -> Result<u64, StoreError>;

    /// Delete a client, its permissions and its credentials. `Ok(false)` if
    /// it did not exist.
    async fn delete_api_client(&self, id: &str) -> Result<bool, StoreError>;

    /// Replace a client's permissions. [`StoreError::NotFound`] if there is
    /// no such client.
    async fn set_permissions(
        &self,
        client: &str,
        permissions: &[PermissionRecord],
    ) -> Result<(), StoreError>;

    /// A client's permissions, sorted by route.
    async fn permissions(&self, client: &str) -> Result<Vec<PermissionRecord>, StoreError>;
}

// ------------------------------------------------------------- OIDC clients

/// A relying party of the OpenID Connect provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcClientRecord {
    /// `client_id`.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Registered redirect URIs, exact.
    pub redirect_uris: Vec<String>,
    /// Hash of the client secret (confidential clients); `None` for public
    /// clients (PKCE only).
    pub secret_hash: Option<String>,
    /// Allowed grant types.
    pub grant_types: Vec<String>,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: UnixTime,
    /// Optimistic-concurrency version (see [`ApiClientRecord::version`]).
    pub version: u64,
}

/// OIDC relying parties.
#[async_trait]
pub trait OidcClientStore: Send + Sync {
    /// Store a new client. [`StoreError::AlreadyExists`] if the id is taken.
    async fn insert_oidc_client(&self, client: &OidcClientRecord) -> Result<(), StoreError>;
    /// One client.
    async fn oidc_client(&self, client_id: &str) -> Result<Option<OidcClientRecord>, StoreError>;
    /// Every client, sorted by id.
    async fn oidc_clients(&self) -> Result<Vec<OidcClientRecord>, StoreError>;
    /// Update a client read at `client.version`; returns the new version.
    async fn update_oidc_client(&self, client: &OidcClientRecord) -> Result<u64, StoreError>;
    /// Delete a client. `Ok(false)` if it did not exist.
    async fn delete_oidc_client(&self, client_id: &str) -> Result<bool, StoreError>;
}

// ------------------------------------------------------------------- routes

/// A route kept in the durable store (edited through the admin API), beside
/// the `[[route]]`s of the configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRecord {
    /// The route's name (unique across the file's and the store's routes).
    pub name: String,
    /// The route as JSON in the `[[route]]` schema. The store keeps it as
    /// given; the gateway validates it before storing and when loading.
    pub definition: String,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it was last changed.
    pub updated_at: UnixTime,
    /// Optimistic-concurrency version (see [`ApiClientRecord::version`]).
    pub version: u64,
}

/// Routes kept in the durable store.
#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Store a new route. [`StoreError::AlreadyExists`] if the name is taken.
    async fn insert_route(&self, route: &RouteRecord) -> Result<(), StoreError>;
    /// One route.
    async fn route(&self, name: &str) -> Result<Option<RouteRecord>, StoreError>;
    /// Every route, sorted by name.
    async fn routes(&self) -> Result<Vec<RouteRecord>, StoreError>;
    /// Replace the definition of a route read at `route.version` (and its
    /// `updated_at`); returns the new version. [`StoreError::Conflict`] if
    /// it changed since, [`StoreError::NotFound`] if it is gone.
    async fn update_route(&self, route: &RouteRecord) -> Result<u64, StoreError>;
    /// Delete a route. `Ok(false)` if it did not exist.
    async fn delete_route(&self, name: &str) -> Result<bool, StoreError>;
}

// ------------------------------------------------------------ ACME accounts

/// Status of an ACME account (RFC 8555, section 7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AcmeAccountStatus {
    /// In use: may place orders.
    Valid,
    /// Deactivated by its holder (final in RFC 8555).
    Deactivated,
    /// Revoked by the server (final in RFC 8555).
    Revoked,
}

impl AcmeAccountStatus {
    /// Every status.
    pub const ALL: [AcmeAccountStatus; 3] = [
        AcmeAccountStatus::Valid,
        AcmeAccountStatus::Deactivated,
        AcmeAccountStatus::Revoked,
    ];

    /// The stored name (also the RFC 8555 name).
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeAccountStatus::Valid => "valid",
            AcmeAccountStatus::Deactivated => "deactivated",
            AcmeAccountStatus::Revoked => "revoked",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        AcmeAccountStatus::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An ACME account (RFC 8555): a public key that places orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeAccountRecord {
    /// Unique id, URL-safe and random, chosen by the caller (the last
    /// segment of the account URL).
    pub id: String,
    /// RFC 7638 SHA-256 thumbprint of the account key, base64url without
    /// padding; unique across accounts.
    pub key_thumbprint: String,
    /// The account's public key, a JWK as JSON text.
    pub jwk: String,
    /// Contact URLs (`mailto:`).
    pub contacts: Vec<String>,
    /// Lifecycle state.
    pub status: AcmeAccountStatus,
    /// The External Account Binding key id used at creation, if any.
    pub eab_key_id: Option<String>,
    /// When it was created.
    pub created_at: UnixTime,
    /// Optimistic-concurrency version (see [`ApiClientRecord::version`]).
    pub version: u64,
}

/// ACME accounts of the certificate authority.
#[async_trait]
pub trait AcmeAccountStore: Send + Sync {
    /// Store a new account (its `version` is ignored and set to 1).
    /// [`StoreError::AlreadyExists`] if the id or the key thumbprint is
    /// taken.
    async fn insert_acme_account(&self, account: &AcmeAccountRecord) -> Result<(), StoreError>;

    /// One account by id.
    async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccountRecord>, StoreError>;

    /// The account whose key has this thumbprint.
    async fn acme_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError>;

    /// Update an account read at `account.version` (contacts, status, and
    /// the key — `jwk` and `key_thumbprint` — for a key rollover); returns
    /// the new version. `created_at` and `eab_key_id` record the creation
    /// and are kept as stored, whatever `account` says.
    /// [`StoreError::Conflict`] if it changed since, [`StoreError::NotFound`]
    /// if it is unknown, [`StoreError::AlreadyExists`] if the new thumbprint
    /// belongs to another account (nothing is changed then).
    async fn update_acme_account(&self, account: &AcmeAccountRecord) -> Result<u64, StoreError>;
}

// ------------------------------------------------------------- certificates

/// Why and when a certificate was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// When.
    pub at: UnixTime,
    /// RFC 5280 CRLReason code.
    pub reason: u8,
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Serial number, lower-case hex without leading zeros' ambiguity
    /// (exactly as the CA formats it).
    pub serial: String,
    /// Issuing CA (name or key id).
    pub issuer: String,
    /// Subject (DN or SPIFFE id).
    pub subject: String,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Issuance profile (`tls-server`, `tls-client`, `spiffe`, …).
    pub profile: String,
    /// Validity start.
    pub not_before: UnixTime,
    /// Validity end.
    pub not_after: UnixTime,
    /// Who asked (identity subject or ACME account).
    pub requester: Option<String>,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
}

/// Issued certificates, for OCSP, CRLs and audits.
#[async_trait]
pub trait CertificateStore: Send + Sync {
    /// Record an issued certificate. [`StoreError::AlreadyExists`] if the
    /// (issuer, serial) pair is taken.
    async fn insert_certificate(&self, cert: &CertificateRecord) -> Result<(), StoreError>;
    /// One certificate.
    async fn certificate(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError>;
    /// Revoke. `Ok(false)` if it was already revoked (the first revocation
    /// stands); [`StoreError::NotFound`] if unknown.
    async fn revoke_certificate(
        &self,
        issuer: &str,
        serial: &str,
        revocation: Revocation,
    ) -> Result<bool, StoreError>;
    /// Revoked and not yet expired at `now`, for a CRL, sorted by serial.
    async fn revoked_certificates(
        &self,
        issuer: &str,
        now: UnixTime,
    ) -> Result<Vec<(String, Revocation)>, StoreError>;
}

// -------------------------------------------------------------------- audit

/// An audit event to append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// When it happened.
    pub at: UnixTime,
    /// What happened (`login.success`, `client.revoked`, …).
    pub kind: String,
    /// Who did it, if known.
    pub actor: Option<String>,
    /// Whom or what it concerned.
    pub subject: Option<String>,
    /// `success`, `failure`, `denied`, …
    pub outcome: String,
    /// Structured detail (never secrets).
    pub detail: serde_json::Value,
}

/// An audit event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail, increasing.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: NewAuditEvent,
}

/// The append-only audit trail.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Append; returns the event's position.
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<u64, StoreError>;
    /// Up to `limit` events after position `after`, in order.
    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
}

// -------------------------------------------------------------- everything

/// A backend that keeps every durable object.
#[async_trait]
pub trait DurableStore:
    DirectoryStore
    + CredentialStore
    + ApiClientStore
    + OidcClientStore
    + RouteStore
    + AcmeAccountStore
    + CertificateStore
    + AuditStore
    + fmt::Debug
{
    /// Which backend (`memory`, `sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// The schema version the database is at (0 for backends without one).
    async fn schema_version(&self) -> Result<i64, StoreError>;
}
