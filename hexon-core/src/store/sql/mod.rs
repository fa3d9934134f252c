//! The SQL backends: embedded SQLite (the single-node default, feature
//! `sqlite`) and PostgreSQL (several gateways sharing state, feature
//! `postgres`).
//!
//! Both keep every durable object ([`DurableStore`]) and KV buckets
//! ([`KvBackend`]) in ordinary tables created by versioned migrations
//! (`hexon-core/migrations/<engine>/`, embedded in the binary and applied by
//! `open`; see [`MigrationReport`]). The logic is written once; only the
//! revision counter, locking and connection setup differ per engine.
//!
//! - Secrets ([`Material::Secret`]) are
//!   sealed with the store's [`SecretKeys`] before they are written, bound
//!   to their record; the database never sees them in the clear.
//! - The audit trail is append-only in the database too: triggers refuse
//!   `UPDATE` and `DELETE` on it (and `TRUNCATE` on PostgreSQL).
//! - Errors fail closed: an unreachable, busy or timed-out database is
//!   [`StoreError::Unavailable`], naming the backend and what to check.
//!
//! **An SQLite state file belongs to one gateway process.** The store takes
//! an exclusive advisory lock on `<file>.lock` next to it for as long as it
//! is open, and a second process opening the same file is refused. That is
//! what makes its in-process KV read cache coherent (every write passes
//! through the process that caches). Gateways that share state use
//! PostgreSQL, which has no such cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::UnixTime;
use crate::directory::{SourceId, SourceSnapshot, UserRecord};
use crate::store::durable::{
    AcmeAccountRecord, AcmeAccountStore, ApiClientRecord, ApiClientStore, AuditRecord, AuditStore,
    CertificateRecord, CertificateStore, CredentialKind, CredentialRecord, CredentialStore,
    DirectoryStore, DurableStore, Material, NewAuditEvent, OidcClientRecord, OidcClientStore,
    PermissionRecord, Revocation, RouteRecord, RouteStore,
};
use crate::store::kv::{KvBackend, KvStore};
use crate::store::{SecretKeys, StoreError};

mod db;
mod durable;
mod kv;
mod migrate;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use migrate::MigrationReport;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use db::{Arg, Engine, Pools, map_err};

/// What both stores share: the pools, the keys that seal secrets, and
/// (SQLite) the lock on the state file.
pub(super) struct Core {
    engine: Engine,
    pools: Pools,
    keys: Arc<SecretKeys>,
    /// KV writes so far, to pace the sweep of expired rows.
    kv_writes: kv::WriteCounter,
    /// Whether a background sweep is running (one at a time).
    sweeping: AtomicBool,
    /// Set by `close`: every later operation is unavailable, whatever a
    /// cache still holds.
    closed: AtomicBool,
    /// How long a migration waits for a lock (PostgreSQL).
    #[cfg(feature = "postgres")]
    migration_lock_timeout: Duration,
    /// The exclusive lock on the SQLite state file, released on close or
    /// when the last handle drops.
    #[cfg(feature = "sqlite")]
    file_lock: std::sync::Mutex<Option<std::fs::File>>,
}

impl Core {
    fn new(engine: Engine, pools: Pools, keys: Arc<SecretKeys>) -> Self {
        Core {
            engine,
            pools,
            keys,
            kv_writes: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            #[cfg(feature = "postgres")]
            migration_lock_timeout: Duration::from_secs(300),
            #[cfg(feature = "sqlite")]
            file_lock: std::sync::Mutex::new(None),
        }
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        match &self.pools {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => {
                let mut conn = write.acquire().await.map_err(|e| map_err(self.engine, e))?;
                migrate::run(&mut *conn, self.engine).await
            }
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(|e| map_err(self.engine, e))?;
                // This connection may hold the migration's session advisory
                // lock, and its timeouts are changed below: it is closed,
                // never handed back to the pool — also when the migration is
                // cancelled part-way (this future dropped), which would
                // otherwise leave the lock held by an idle pooled connection.
                conn.close_on_drop();
                // Wait longer for another node's migration than a request
                // waits for a lock, and let a long migration finish.
                let settings = format!(
                    "SET lock_timeout = {}; SET statement_timeout = 0",
                    postgres::setting_ms(self.migration_lock_timeout)
                );
                sqlx::raw_sql(&settings)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| map_err(self.engine, e))?;
                migrate::run(&mut *conn, self.engine).await
            }
        }
    }

    /// The versions recorded as applied (empty if the database was never
    /// migrated).
    async fn applied_versions(&self) -> Result<Vec<i64>, StoreError> {
        let exists_sql = match self.engine {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres => {
                "SELECT COUNT(*) FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'"
            }
        };
        let exists = self
            .pools
            .write_fetch_optional(exists_sql, &[])
            .await
            .map_err(|e| map_err(self.engine, e))?;
        match exists {
            Some(row) if row.int(0)? > 0 => {}
            _ => return Ok(Vec::new()),
        }
        let rows = self
            .pools
            .fetch_all(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
                &[] as &[Arg<'_>],
            )
            .await
            .map_err(|e| map_err(self.engine, e))?;
        rows.iter().map(|r| r.int(0)).collect()
    }

    async fn pending_migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let applied = self.applied_versions().await?.into_iter().collect();
        migrate::pending(self.engine, &applied)
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .applied_versions()
            .await?
            .into_iter()
            .max()
            .unwrap_or(0))
    }

    /// [`StoreError::Unavailable`] once the store is closed.
    pub(super) fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable {
                backend: self.engine.name(),
                detail: "the store was closed".into(),
            })
        } else {
            Ok(())
        }
    }

    async fn close(&self) {
        // First refuse new operations (a cached KV entry included), then
        // wait for the connections in use to come back and close them.
        self.closed.store(true, Ordering::Release);
        self.pools.close().await;
        #[cfg(feature = "sqlite")]
        {
            let released = self
                .file_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            drop(released);
        }
    }
}

/// Implement the seven durable traits, [`DurableStore`] and [`KvBackend`] for
/// a store type with fields `core: Arc<Core>` and `buckets: Arc<kv::Buckets>`.
macro_rules! sql_store {
    ($store:ty) => {
        #[async_trait]
        impl DirectoryStore for $store {
            async fn save_source(
                &self,
                source: &SourceId,
                snapshot: &SourceSnapshot,
            ) -> Result<(), StoreError> {
                self.core.save_source(source, snapshot).await
            }
            async fn load_sources(&self) -> Result<Vec<(SourceId, SourceSnapshot)>, StoreError> {
                self.core.load_sources().await
            }
            async fn delete_source(&self, source: &SourceId) -> Result<bool, StoreError> {
                self.core.delete_source(source).await
            }
            async fn find_user(
                &self,
                subject: &str,
            ) -> Result<Vec<(SourceId, UserRecord)>, StoreError> {
                self.core.find_user(subject).await
            }
        }

        #[async_trait]
        impl CredentialStore for $store {
            async fn insert_credential(
                &self,
                credential: &CredentialRecord,
            ) -> Result<(), StoreError> {
                self.core.insert_credential(credential).await
            }
            async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
                self.core.credential(id).await
            }
            async fn credential_by_lookup(
                &self,
                kind: CredentialKind,
                lookup: &str,
            ) -> Result<Option<CredentialRecord>, StoreError> {
                self.core.credential_by_lookup(kind, lookup).await
            }
            async fn credentials_of(
                &self,
                owner: &str,
            ) -> Result<Vec<CredentialRecord>, StoreError> {
                self.core.credentials_of(owner).await
            }
            async fn advance_counter(
                &self,
                id: &str,
                expected: u64,
                new: u64,
                used_at: UnixTime,
            ) -> Result<bool, StoreError> {
                self.core.advance_counter(id, expected, new, used_at).await
            }
            async fn replace_material(
                &self,
                id: &str,
                material: &Material,
            ) -> Result<(), StoreError> {
                self.core.replace_material(id, material).await
            }
            async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
                self.core.delete_credential(id).await
            }
            async fn rewrap_secrets(&self) -> Result<usize, StoreError> {
                self.core.rewrap_secrets().await
            }
        }

        #[async_trait]
        impl ApiClientStore for $store {
            async fn insert_api_client(&self, client: &ApiClientRecord) -> Result<(), StoreError> {
                self.core.insert_api_client(client).await
            }
            async fn api_client(&self, id: &str) -> Result<Option<ApiClientRecord>, StoreError> {
                self.core.api_client(id).await
            }
            async fn api_clients(&self) -> Result<Vec<ApiClientRecord>, StoreError> {
                self.core.api_clients().await
            }
            async fn update_api_client(&self, client: &ApiClientRecord) -> Result<u64, StoreError> {
                self.core.update_api_client(client).await
            }
            async fn delete_api_client(&self, id: &str) -> Result<bool, StoreError> {
                self.core.delete_api_client(id).await
            }
            async fn set_permissions(
                &self,
                client: &str,
                permissions: &[PermissionRecord],
            ) -> Result<(), StoreError> {
                self.core.set_permissions(client, permissions).await
            }
            async fn permissions(&self, client: &str) -> Result<Vec<PermissionRecord>, StoreError> {
                self.core.permissions(client).await
            }
        }

        #[async_trait]
        impl OidcClientStore for $store {
            async fn insert_oidc_client(
                &self,
                client: &OidcClientRecord,
            ) -> Result<(), StoreError> {
                self.core.insert_oidc_client(client).await
            }
            async fn oidc_client(
                &self,
                client_id: &str,
            ) -> Result<Option<OidcClientRecord>, StoreError> {
                self.core.oidc_client(client_id).await
            }
            async fn oidc_clients(&self) -> Result<Vec<OidcClientRecord>, StoreError> {
                self.core.oidc_clients().await
            }
            async fn update_oidc_client(
                &self,
                client: &OidcClientRecord,
            ) -> Result<u64, StoreError> {
                self.core.update_oidc_client(client).await
            }
            async fn delete_oidc_client(&self, client_id: &str) -> Result<bool, StoreError> {
                self.core.delete_oidc_client(client_id).await
            }
        }

        #[async_trait]
        impl RouteStore for $store {
            async fn insert_route(&self, route: &RouteRecord) -> Result<(), StoreError> {
                self.core.insert_route(route).await
            }
            async fn route(&self, name: &str) -> Result<Option<RouteRecord>, StoreError> {
                self.core.route(name).await
            }
            async fn routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
                self.core.routes().await
            }
            async fn update_route(&self, route: &RouteRecord) -> Result<u64, StoreError> {
                self.core.update_route(route).await
            }
            async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
                self.core.delete_route(name).await
            }
        }

        #[async_trait]
        impl AcmeAccountStore for $store {
            async fn insert_acme_account(
                &self,
                account: &AcmeAccountRecord,
            ) -> Result<(), StoreError> {
                self.core.insert_acme_account(account).await
            }
            async fn acme_account(
                &self,
                id: &str,
            ) -> Result<Option<AcmeAccountRecord>, StoreError> {
                self.core.acme_account(id).await
            }
            async fn acme_account_by_thumbprint(
                &self,
                thumbprint: &str,
            ) -> Result<Option<AcmeAccountRecord>, StoreError> {
                self.core.acme_account_by_thumbprint(thumbprint).await
            }
            async fn update_acme_account(
                &self,
                account: &AcmeAccountRecord,
            ) -> Result<u64, StoreError> {
                self.core.update_acme_account(account).await
            }
        }

        #[async_trait]
        impl CertificateStore for $store {
            async fn insert_certificate(&self, cert: &CertificateRecord) -> Result<(), StoreError> {
                self.core.insert_certificate(cert).await
            }
            async fn certificate(
                &self,
                issuer: &str,
                serial: &str,
            ) -> Result<Option<CertificateRecord>, StoreError> {
                self.core.certificate(issuer, serial).await
            }
            async fn revoke_certificate(
                &self,
                issuer: &str,
                serial: &str,
                revocation: Revocation,
            ) -> Result<bool, StoreError> {
                self.core
                    .revoke_certificate(issuer, serial, revocation)
                    .await
            }
            async fn revoked_certificates(
                &self,
                issuer: &str,
                now: UnixTime,
            ) -> Result<Vec<(String, Revocation)>, StoreError> {
                self.core.revoked_certificates(issuer, now).await
            }
        }

        #[async_trait]
        impl AuditStore for $store {
            async fn append_audit(&self, event: &NewAuditEvent) -> Result<u64, StoreError> {
                self.core.append_audit(event).await
            }
            async fn audit_after(
                &self,
                after: u64,
                limit: usize,
            ) -> Result<Vec<AuditRecord>, StoreError> {
                self.core.audit_after(after, limit).await
            }
        }

        #[async_trait]
        impl DurableStore for $store {
            fn backend(&self) -> &'static str {
                self.core.engine.name()
            }
            async fn schema_version(&self) -> Result<i64, StoreError> {
                self.core.schema_version().await
            }
        }

        #[async_trait]
        impl KvBackend for $store {
            /// Buckets share one table; `max_ttl` is not needed (expired
            /// rows are swept whatever their bucket).
            async fn bucket(
                &self,
                name: &str,
                _max_ttl: Duration,
            ) -> Result<Arc<dyn KvStore>, StoreError> {
                let bucket: Arc<dyn KvStore> = self.buckets.bucket(&self.core, name)?;
                Ok(bucket)
            }
            fn backend(&self) -> &'static str {
                self.core.engine.name()
            }
        }

        impl $store {
            /// Apply the migrations this database lacks (see
            /// [`MigrationReport`]). Refuses a database written by a newer
            /// Hexon, or whose applied migrations differ from this binary's.
            /// A second call is a no-op.
            pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
                self.core.migrate().await
            }

            /// The migrations `migrate` would apply: `(version, description)`.
            /// Refuses a database written by a newer Hexon, like `migrate`.
            pub async fn pending_migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
                self.core.pending_migrations().await
            }

            /// Remove expired KV rows now (they are invisible already, and
            /// swept in the background every few thousand writes anyway).
            /// Returns how many.
            pub async fn sweep_expired(&self) -> Result<u64, StoreError> {
                kv::sweep(&self.core).await
            }

            /// Close every connection (and, for SQLite, release the state
            /// file's lock and empty the KV read cache). Every operation
            /// after this fails with [`StoreError::Unavailable`], KV gets
            /// included.
            pub async fn close(&self) {
                self.core.close().await;
                // After the pools: writes in flight have updated the caches.
                self.buckets.close();
            }
        }
    };
}

#[cfg(feature = "sqlite")]
sql_store!(SqliteStore);
#[cfg(feature = "postgres")]
sql_store!(PostgresStore);
