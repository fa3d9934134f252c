//! The PostgreSQL store: state shared by several gateways.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::db::{Arg, Engine, Pools, map_err};
use super::kv::Buckets;
use super::{Core, MigrationReport};
use crate::redact::redact_url;
use crate::store::{SecretKeys, StoreError};

/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_SCHEMA_LEN: usize = 63;
/// How long a migration waits at least for another node's migration (its
/// advisory lock) or a lock on a table it changes.
const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and how to connect to PostgreSQL.
#[derive(Clone)]
pub struct PostgresOptions {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
    lock_timeout: Duration,
    statement_timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// The URL with its userinfo and every query value replaced (see
/// [`redact_url`]); a string that is not a URL is not shown at all.
fn redact(url: &str) -> String {
    let is_url = url
        .trim_start()
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty() && !scheme.contains(char::is_whitespace));
    if is_url {
        redact_url(url)
    } else {
        "[redacted: not a URL]".into()
    }
}

impl PostgresOptions {
    /// Connect to `url` (`postgres://user[:password]@host[:port]/database`,
    /// with any libpq parameter such as `sslmode`), with 10 connections, a
    /// 5-second wait for one, a 10-second `lock_timeout` and a 30-second
    /// `statement_timeout`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }

    /// Keep Hexon's tables in schema `name` (created if missing; used as the
    /// connections' `search_path`). Names are 1..=63 of `[a-z0-9_]`, not
    /// starting with a digit.
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Most connections the pool opens (at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long an operation waits for a connection (including connecting)
    /// before failing with [`StoreError::Unavailable`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a statement waits for a lock another session holds
    /// (PostgreSQL's `lock_timeout`, set on every connection) before failing
    /// with [`StoreError::Unavailable`]. At least 1 ms; 10 seconds unless
    /// set. A stuck lock then fails requests instead of hanging them.
    ///
    /// Migrations wait longer for another node's migration (five minutes,
    /// or this if longer) and have no statement timeout.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long one statement may run (PostgreSQL's `statement_timeout`, set
    /// on every connection) before it is cancelled with
    /// [`StoreError::Unavailable`]. At least 1 ms; 30 seconds unless set.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

/// A duration as a PostgreSQL setting in milliseconds (the unit of
/// `lock_timeout` and `statement_timeout`), at least 1 (0 would disable it).
pub(super) fn setting_ms(d: Duration) -> String {
    d.as_millis().clamp(1, i32::MAX as u128).to_string()
}

fn check_schema(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SCHEMA_LEN
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "PostgreSQL schema name",
            reason: format!(
                "`{name}`: use 1..={MAX_SCHEMA_LEN} of [a-z0-9_], not starting with a digit"
            ),
        })
    }
}

/// Durable objects and KV buckets in PostgreSQL, shared by every gateway
/// pointed at the same database and schema.
///
/// Nothing is cached in process (other nodes write too). Revisions come
/// from a sequence; audit appends are serialised so positions become
/// visible in order.
///
/// KV expiry uses each gateway's clock, in milliseconds: keep the nodes'
/// clocks synchronised (as token and signature freshness already requires).
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pub(super) core: Arc<Core>,
    pub(super) buckets: Arc<Buckets>,
    schema: Option<String>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("keys", &self.core.keys)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connect (and create the schema if one is set and missing), without
    /// migrating. An unreachable server is [`StoreError::Unavailable`]
    /// once the acquire timeout passes.
    pub async fn connect(
        options: &PostgresOptions,
        keys: Arc<SecretKeys>,
    ) -> Result<PostgresStore, StoreError> {
        // sqlx's parse errors do not repeat the URL (or its password).
        let mut connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Invalid {
                what: "PostgreSQL URL",
                reason: e.to_string(),
            })?
            .application_name("hexon");
        if let Some(schema) = &options.schema {
            check_schema(schema)?;
            connect = connect.options([("search_path", schema.as_str())]);
        }
        // A session never waits for a lock, or runs a statement, without
        // end: a stuck lock (a crashed node's migration, a forgotten manual
        // transaction) fails requests with `Unavailable` instead of hanging
        // them.
        connect = connect.options([
            ("lock_timeout", setting_ms(options.lock_timeout)),
            ("statement_timeout", setting_ms(options.statement_timeout)),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| match map_err(Engine::Postgres, e) {
                StoreError::Unavailable { detail, .. } => StoreError::Unavailable {
                    backend: "postgres",
                    detail: format!(
                        "cannot connect to {} within {:?}: {detail}",
                        redact(&options.url),
                        options.acquire_timeout
                    ),
                },
                other => other,
            })?;
        let pools = Pools::Postgres(pool);
        if let Some(schema) = &options.schema {
            // The name was checked above: quoting cannot be escaped.
            let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            match pools.execute(&create, &[] as &[Arg<'_>]).await {
                Ok(_) => {}
                // Two nodes creating it at once: one wins, both are fine.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(map_err(Engine::Postgres, e)),
            }
        }
        let mut core = Core::new(Engine::Postgres, pools, keys);
        core.migration_lock_timeout = options.lock_timeout.max(MIGRATION_LOCK_TIMEOUT);
        Ok(PostgresStore {
            core: Arc::new(core),
            buckets: Arc::new(Buckets::default()),
            schema: options.schema.clone(),
        })
    }

    /// [`connect`](Self::connect), then [`migrate`](Self::migrate): the way
    /// a gateway opens its state. Several nodes opening at once migrate
    /// once (the migration holds an advisory lock).
    pub async fn open(
        options: &PostgresOptions,
        keys: Arc<SecretKeys>,
    ) -> Result<PostgresStore, StoreError> {
        let store = Self::connect(options, keys).await?;
        let report: MigrationReport = store.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(
                schema = options.schema.as_deref().unwrap_or("public"),
                from = report.from,
                to = report.to,
                "PostgreSQL state migrated"
            );
        }
        Ok(store)
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact("postgres://hexon:s3cret@db:5432/hexon"),
            "postgres://[redacted]@db:5432/hexon"
        );
        assert_eq!(redact("postgres://u:p@ss@h/d"), "postgres://[redacted]@h/d");
        assert_eq!(
            redact("postgres://db/hx?user=u&password=s3cret"),
            "postgres://db/hx?user=[redacted]&password=[redacted]"
        );
        assert_eq!(redact("host=db password=s3cret"), "[redacted: not a URL]");
        for url in [
            "postgres://u:s3cret@h/d",
            "postgres://h/d?password=s3cret",
            "postgresql://h1,h2/d?sslmode=require&password=s3cret",
            "host=db password=s3cret",
        ] {
            let shown = format!("{:?}", PostgresOptions::new(url));
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn timeouts_are_whole_positive_milliseconds() {
        assert_eq!(setting_ms(Duration::from_secs(10)), "10000");
        assert_eq!(setting_ms(Duration::ZERO), "1");
        assert_eq!(
            setting_ms(Duration::from_secs(u64::MAX)),
            i32::MAX.to_string()
        );
    }

    #[test]
    fn schema_names_are_checked() {
        for good in ["hexon", "hx_1", "_x"] {
            check_schema(good).unwrap();
        }
        for bad in ["", "Hexon", "1x", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
