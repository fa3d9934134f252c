//! The gateway's state layer, opened from `[state]`: the durable store
//! (SQLite by default, PostgreSQL, or memory), shared short-lived state
//! (memory, the durable store, or NATS JetStream), the event bus, and the
//! keys that seal secrets at rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hexon_core::config::{Config, DurableBackend, SharedBackend};
use hexon_core::store::{
    DurableStore, EventBus, KvBackend, MemoryBus, MemoryKvBackend, MemoryStore, SecretKeys,
    StoreError,
};

use super::GatewayError;
use super::keys::write_private;
use crate::authn::KvSessionStore;

/// The longest a session lives (the shared `sessions` bucket keeps entries
/// no longer than this).
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `[state]` opened.
#[derive(Clone)]
pub struct GatewayState {
    /// Users, credentials, clients, certificates, audit.
    pub durable: Arc<dyn DurableStore>,
    /// Shared short-lived state.
    pub kv: Arc<dyn KvBackend>,
    /// Cluster events.
    pub events: Arc<dyn EventBus>,
    /// Keys sealing secrets at rest.
    pub keys: Arc<SecretKeys>,
    /// Sessions, in the shared state.
    pub sessions: KvSessionStore,
    /// This node's name.
    pub node: String,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("durable", &self.durable.backend())
            .field("kv", &self.kv.backend())
            .field("events", &self.events.backend())
            .field("keys", &self.keys)
            .field("node", &self.node)
            .finish()
    }
}

/// Where the generated secret-sealing key lives when `state.encryption_keys`
/// is empty.
pub fn default_secret_key_path(config: &Config) -> PathBuf {
    Path::new(&config.gateway.data_dir).join("state-key")
}

/// The configured secret-sealing keys, or the generated key in the data
/// directory (created on first use, mode 0600).
pub fn secret_keys(config: &Config) -> Result<Arc<SecretKeys>, GatewayError> {
    let path = default_secret_key_path(config);
    if config.state.encryption_keys.is_empty() && !path.exists() {
        write_private(&path, &format!("{}\n", SecretKeys::generate_base64()))?;
        tracing::warn!(
            path = %path.display(),
            "generated the key that seals secrets at rest; back it up, or set state.encryption_keys (losing it loses TOTP seeds and HMAC secrets)"
        );
    }
    load_secret_keys(config)
}

/// The configured secret-sealing keys, or the key in the data directory if
/// it exists (never created here: for reading values sealed before).
pub fn load_secret_keys(config: &Config) -> Result<Arc<SecretKeys>, GatewayError> {
    if !config.state.encryption_keys.is_empty() {
        return SecretKeys::from_base64(&config.state.encryption_keys)
            .map(Arc::new)
            .map_err(|e| GatewayError::Other(format!("state.encryption_keys: {e}")));
    }
    let path = default_secret_key_path(config);
    let text = std::fs::read_to_string(&path).map_err(|e| GatewayError::io(&path, e))?;
    SecretKeys::from_base64(&[text.trim()])
        .map(Arc::new)
        .map_err(|e| GatewayError::Other(format!("{}: {e}", path.display())))
}

fn node_name(config: &Config) -> String {
    config.state.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("hexon-{}", std::process::id()))
    })
}

fn store_error(what: &str, e: StoreError) -> GatewayError {
    GatewayError::Other(format!("{what}: {e}"))
}

#[allow(dead_code)] // unused when a build has no backend feature that needs it
fn missing_feature(setting: &str, feature: &str) -> GatewayError {
    GatewayError::Other(format!(
        "{setting}: this build of hexon has no {feature} support; rebuild with the `{feature}` feature of hexon-proxy (the `hexon` binary has it)"
    ))
}

/// One durable backend and, when it is SQL, its KV side too.
struct Durable {
    store: Arc<dyn DurableStore>,
    kv: Option<Arc<dyn KvBackend>>,
}

async fn open_durable(config: &Config, keys: &Arc<SecretKeys>) -> Result<Durable, GatewayError> {
    let state = &config.state;
    match state.durable {
        DurableBackend::Memory => Ok(Durable {
            store: Arc::new(MemoryStore::new(keys.clone())),
            kv: None,
        }),
        DurableBackend::Sqlite => {
            #[cfg(feature = "sqlite")]
            {
                use hexon_core::store::sql::SqliteStore;
                let path = state.sqlite_file(&config.gateway.data_dir);
                let store = SqliteStore::open(&path, keys.clone())
                    .await
                    .map_err(|e| store_error(&format!("state (SQLite {})", path.display()), e))?;
                let store = Arc::new(store);
                Ok(Durable {
                    store: store.clone(),
                    kv: Some(store),
                })
            }
            #[cfg(not(feature = "sqlite"))]
            {
                let _ = keys;
                Err(missing_feature("state.durable = \"sqlite\"", "sqlite"))
            }
        }
        DurableBackend::Postgres => {
            #[cfg(feature = "postgres")]
            {
                use hexon_core::store::sql::{PostgresOptions, PostgresStore};
                let url = state.postgres_url.as_deref().unwrap_or_default();
                let options = PostgresOptions::new(url)
                    .schema(&state.postgres_schema)
                    .max_connections(state.postgres_max_connections);
                let store = PostgresStore::open(&options, keys.clone())
                    .await
                    .map_err(|e| {
                        store_error(
                            &format!("state (PostgreSQL {})", hexon_core::config::redact_url(url)),
                            e,
                        )
                    })?;
                let store = Arc::new(store);
                Ok(Durable {
                    store: store.clone(),
                    kv: Some(store),
                })
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = keys;
                Err(missing_feature("state.durable = \"postgres\"", "postgres"))
            }
        }
        _ => Err(GatewayError::Other(
            "state.durable: unsupported backend".into(),
        )),
    }
}

/// Open everything `[state]` describes, running database migrations.
pub async fn open(config: &Config) -> Result<GatewayState, GatewayError> {
    let keys = secret_keys(config)?;
    let node = node_name(config);
    let durable = open_durable(config, &keys).await?;
    let (kv, events): (Arc<dyn KvBackend>, Arc<dyn EventBus>) = match config.state.shared {
        SharedBackend::Memory => (
            Arc::new(MemoryKvBackend::new()),
            Arc::new(MemoryBus::new(node.clone())),
        ),
        SharedBackend::Durable => match durable.kv.clone() {
            Some(kv) => (kv, Arc::new(MemoryBus::new(node.clone()))),
            None => {
                return Err(GatewayError::Other(
                    "state.shared = \"durable\" needs state.durable = \"sqlite\" or \"postgres\""
                        .into(),
                ));
            }
        },
        SharedBackend::Nats => {
            #[cfg(feature = "nats")]
            {
                use hexon_core::store::nats::{NatsOptions, NatsState};
                let url = config.state.nats_url.as_deref().unwrap_or_default();
                let st = &config.state;
                let mut options = NatsOptions::new(url)
                    .prefix(&st.nats_prefix)
                    .node(&node)
                    .tls_required(st.nats_tls_required);
                if let Some(file) = &st.nats_credentials_file {
                    options = options.credentials_file(file);
                } else if let Some(token) = &st.nats_token {
                    options = options.token(token);
                } else if let (Some(user), Some(password)) = (&st.nats_user, &st.nats_password) {
                    options = options.user_password(user, password);
                }
                let nats = Arc::new(NatsState::connect(&options).await.map_err(|e| {
                    store_error(
                        &format!("state (NATS {})", hexon_core::config::redact_url(url)),
                        e,
                    )
                })?);
                (nats.clone(), nats)
            }
            #[cfg(not(feature = "nats"))]
            {
                return Err(missing_feature("state.shared = \"nats\"", "nats"));
            }
        }
        _ => {
            return Err(GatewayError::Other(
                "state.shared: unsupported backend".into(),
            ));
        }
    };
    let sessions = KvSessionStore::open(kv.as_ref(), keys.clone(), MAX_SESSION_LIFETIME)
        .await
        .map_err(|e| store_error("state (sessions bucket)", e))?
        .with_events(events.clone());
    tracing::info!(
        durable = durable.store.backend(),
        shared = kv.backend(),
        events = events.backend(),
        node = %node,
        secret_key = %keys.primary_id(),
        "state opened"
    );
    Ok(GatewayState {
        durable: durable.store,
        kv,
        events,
        keys,
        sessions,
        node,
    })
}

/// `hexon keys rewrap`: re-seal every secret sealed by an older key with
/// the first of `state.encryption_keys`. Returns how many were re-sealed.
pub async fn rewrap(config: &Config) -> Result<usize, GatewayError> {
    let keys = secret_keys(config)?;
    let durable = open_durable(config, &keys).await?;
    durable
        .store
        .rewrap_secrets()
        .await
        .map_err(|e| store_error("re-sealing secrets", e))
}

/// What `hexon migrate` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateOutcome {
    /// The backend (`sqlite`, `postgres`, `memory`).
    pub backend: &'static str,
    /// Schema version before.
    pub from: i64,
    /// Schema version after.
    pub to: i64,
    /// Migrations applied now, `(version, description)`.
    pub applied: Vec<(i64, String)>,
}

/// Run the durable store's migrations (or, with `dry_run`, list the pending
/// ones without applying them).
pub async fn migrate(config: &Config, dry_run: bool) -> Result<MigrateOutcome, GatewayError> {
    let keys = secret_keys(config)?;
    let _ = &keys;
    match config.state.durable {
        DurableBackend::Memory => Ok(MigrateOutcome {
            backend: "memory",
            from: 0,
            to: 0,
            applied: Vec::new(),
        }),
        DurableBackend::Sqlite => {
            #[cfg(feature = "sqlite")]
            {
                use hexon_core::store::sql::SqliteStore;
                let path = config.state.sqlite_file(&config.gateway.data_dir);
                let what = format!("state (SQLite {})", path.display());
                let store = SqliteStore::connect(&path, keys)
                    .await
                    .map_err(|e| store_error(&what, e))?;
                run_migrations(&store, "sqlite", &what, dry_run).await
            }
            #[cfg(not(feature = "sqlite"))]
            {
                let _ = dry_run;
                Err(missing_feature("state.durable = \"sqlite\"", "sqlite"))
            }
        }
        DurableBackend::Postgres => {
            #[cfg(feature = "postgres")]
            {
                use hexon_core::store::sql::{PostgresOptions, PostgresStore};
                let url = config.state.postgres_url.as_deref().unwrap_or_default();
                let what = format!("state (PostgreSQL {})", hexon_core::config::redact_url(url));
                let options = PostgresOptions::new(url)
                    .schema(&config.state.postgres_schema)
                    .max_connections(2);
                let store = PostgresStore::connect(&options, keys)
                    .await
                    .map_err(|e| store_error(&what, e))?;
                run_migrations(&store, "postgres", &what, dry_run).await
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = dry_run;
                Err(missing_feature("state.durable = \"postgres\"", "postgres"))
            }
        }
        _ => Err(GatewayError::Other(
            "state.durable: unsupported backend".into(),
        )),
    }
}

/// The migration side of an SQL store (both engines have the same methods).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
trait SqlMigrations: DurableStore {
    async fn pending(&self) -> Result<Vec<(i64, String)>, StoreError>;
    async fn apply(&self) -> Result<hexon_core::store::sql::MigrationReport, StoreError>;
    async fn shut(&self);
}

#[cfg(feature = "sqlite")]
impl SqlMigrations for hexon_core::store::sql::SqliteStore {
    async fn pending(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.pending_migrations().await
    }
    async fn apply(&self) -> Result<hexon_core::store::sql::MigrationReport, StoreError> {
        self.migrate().await
    }
    async fn shut(&self) {
        self.close().await;
    }
}

#[cfg(feature = "postgres")]
impl SqlMigrations for hexon_core::store::sql::PostgresStore {
    async fn pending(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.pending_migrations().await
    }
    async fn apply(&self) -> Result<hexon_core::store::sql::MigrationReport, StoreError> {
        self.migrate().await
    }
    async fn shut(&self) {
        self.close().await;
    }
}

/// `hexon migrate` on one SQL store: list (`dry_run`) or apply.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn run_migrations<S: SqlMigrations>(
    store: &S,
    backend: &'static str,
    what: &str,
    dry_run: bool,
) -> Result<MigrateOutcome, GatewayError> {
    let outcome = if dry_run {
        let from = store
            .schema_version()
            .await
            .map_err(|e| store_error(what, e));
        let pending = store.pending().await.map_err(|e| store_error(what, e));
        from.and_then(|from| {
            pending.map(|pending| MigrateOutcome {
                backend,
                from,
                to: pending.last().map_or(from, |p| p.0),
                applied: pending,
            })
        })
    } else {
        store
            .apply()
            .await
            .map(|r| MigrateOutcome {
                backend,
                from: r.from,
                to: r.to,
                applied: r.applied,
            })
            .map_err(|e| store_error(what, e))
    };
    store.shut().await;
    outcome
}
