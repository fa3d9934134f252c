//! The PostgreSQL store: state shared by several gateways.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::db::{Arg, Engine, Pools, map_err};
use super::kv::Buckets;
use super::{Core, MigrationReport};
use crate::store::{SecretKeys, StoreError};

/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_SCHEMA_LEN: usize = 63;

/// Where and how to connect to PostgreSQL.
#[derive(Clone)]
pub struct PostgresOptions {
    url: String,
    schema: Option<String>,
    max_connections: u32,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// The URL without its password (`postgres://user:***@host/db`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsed>".into();
    };
    // The last `@`: a password may contain one (over-redacting is fine).
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl PostgresOptions {
    /// Connect to `url` (`postgres://user[:password]@host[:port]/database`,
    /// with any libpq parameter such as `sslmode`), with 10 connections and
    /// a 5-second wait for one.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
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
        Ok(PostgresStore {
            core: Arc::new(Core::new(Engine::Postgres, pools, keys)),
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
            "postgres://hexon:***@db:5432/hexon"
        );
        assert_eq!(
            redact("postgres://hexon@db/hexon"),
            "postgres://hexon@db/hexon"
        );
        assert_eq!(redact("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        let shown = format!("{:?}", PostgresOptions::new("postgres://u:pw@h/d"));
        assert!(!shown.contains("pw"), "{shown}");
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
