//! The state layer: durable objects, shared short-lived state and cluster
//! events, each behind one trait with backends swapped by configuration.
//!
//! | kind | trait | single node (default) | cluster |
//! |---|---|---|---|
//! | durable | [`DurableStore`] | SQLite (feature `sqlite`) | PostgreSQL (feature `postgres`) |
//! | shared, short-lived | [`KvBackend`] / [`KvStore`] | [`MemoryKvBackend`] (or SQLite) | NATS JetStream KV (feature `nats`) |
//! | events | [`EventBus`] | [`MemoryBus`] | NATS JetStream stream (feature `nats`) |
//!
//! Every backend passes the same conformance suite (`conformance`, feature
//! `test-util`). Errors fail closed: [`StoreError::Unavailable`] means the
//! store could not answer, and callers that guard security deny.

pub mod bus;
pub mod durable;
mod error;
pub mod kv;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
mod seal;
pub mod session;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;

pub use bus::{Event, EventBus, EventRecord, EventStream, StartAt};
pub use durable::{
    AcmeAccountRecord, AcmeAccountStatus, AcmeAccountStore, ApiClientRecord, ApiClientStore,
    AuditRecord, AuditStore, CertificateRecord, CertificateStore, ClientStatus, CredentialKind,
    CredentialRecord, CredentialStore, DirectoryStore, DurableStore, Material, NewAuditEvent,
    OidcClientRecord, OidcClientStore, PermissionRecord, Revocation, RouteRecord, RouteStore,
};
pub use error::StoreError;
pub use kv::{KvBackend, KvEntry, KvStore, Revision};
pub use memory::{MemoryBus, MemoryKv, MemoryKvBackend, MemoryStore};
pub use seal::{SecretBytes, SecretKeyError, SecretKeys};

#[cfg(feature = "test-util")]
pub mod conformance;
