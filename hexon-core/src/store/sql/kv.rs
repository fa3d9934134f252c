//! KV buckets in SQL: one table `kv (bucket, key, value, revision,
//! expires_at)` for every bucket.
//!
//! - Every operation is one statement, so it is atomic on its own:
//!   put-if-absent is an upsert that only overwrites an expired row,
//!   compare-and-set an update guarded by the revision, delete-if a delete
//!   guarded by it.
//! - Revisions come from one counter for all buckets that only grows (a
//!   PostgreSQL sequence; in SQLite a one-row table that triggers keep at the
//!   highest revision written), so a key deleted and created again never
//!   gets an old revision back.
//! - Expiry is in milliseconds of the gateway's clock. An expired row is
//!   invisible to every statement at once; a sweep removes expired rows
//!   every few thousand writes (and on [`sweep_expired`](super::SqliteStore::sweep_expired)).
//! - On SQLite, gets are answered from an in-process cache that every write
//!   of this process updates (see [`ReadCache`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::store::StoreError;
use crate::store::kv::{
    KvEntry, KvStore, Revision, check_bucket, check_key, check_ttl, check_value,
};

use super::Core;
use super::db::{Arg, Engine, map_err};

/// Sweep expired rows after this many KV writes (per store).
const SWEEP_EVERY: u64 = 2048;
/// Rows one sweep statement removes at most.
const SWEEP_BATCH: i64 = 1000;

/// The statements whose revision expression differs between engines.
struct KvSql {
    put: &'static str,
    put_if_absent: &'static str,
    compare_and_set: &'static str,
}

/// `$1` bucket, `$2` key, `$3` value, `$4` expires_at, then `$5` now
/// (put-if-absent) or `$5` expected revision and `$6` now (CAS).
macro_rules! kv_sql {
    ($next_revision:literal) => {
        KvSql {
            put: concat!(
                "INSERT INTO kv (bucket, key, value, revision, expires_at) VALUES ($1, $2, $3, ",
                $next_revision,
                ", $4) ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, \
                 revision = excluded.revision, expires_at = excluded.expires_at RETURNING revision"
            ),
            put_if_absent: concat!(
                "INSERT INTO kv (bucket, key, value, revision, expires_at) VALUES ($1, $2, $3, ",
                $next_revision,
                ", $4) ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, \
                 revision = excluded.revision, expires_at = excluded.expires_at \
                 WHERE kv.expires_at <= $5 RETURNING revision"
            ),
            compare_and_set: concat!(
                "UPDATE kv SET value = $3, revision = ",
                $next_revision,
                ", expires_at = $4 WHERE bucket = $1 AND key = $2 AND revision = $5 \
                 AND expires_at > $6 RETURNING revision"
            ),
        }
    };
}

#[cfg(feature = "sqlite")]
const SQLITE_KV: KvSql = kv_sql!("(SELECT last + 1 FROM kv_revision WHERE id = 1)");
#[cfg(feature = "postgres")]
const POSTGRES_KV: KvSql = kv_sql!("nextval('kv_revision')");

fn statements(engine: Engine) -> &'static KvSql {
    match engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite => &SQLITE_KV,
        #[cfg(feature = "postgres")]
        Engine::Postgres => &POSTGRES_KV,
    }
}

const GET: &str = "SELECT value, revision, expires_at FROM kv \
                   WHERE bucket = $1 AND key = $2 AND expires_at > $3";
const DELETE: &str = "DELETE FROM kv WHERE bucket = $1 AND key = $2 RETURNING expires_at";
const DELETE_IF: &str = "DELETE FROM kv WHERE bucket = $1 AND key = $2 AND revision = $3 \
                         AND expires_at > $4";
const SWEEP: &str = "DELETE FROM kv WHERE (bucket, key) IN \
                     (SELECT bucket, key FROM kv WHERE expires_at <= $1 LIMIT $2)";

/// Milliseconds since the Unix epoch, by the gateway's clock.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn expiry(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

fn revision(value: i64) -> Result<Revision, StoreError> {
    u64::try_from(value)
        .map(Revision)
        .map_err(|_| StoreError::Corrupt(format!("negative KV revision {value}")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// -------------------------------------------------------------------- cache

/// A cached live entry.
struct Cached {
    value: Vec<u8>,
    revision: Revision,
    expires_at: i64,
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<String, Arc<Cached>> for ByteWeight {
    fn weight(&self, key: &String, val: &Arc<Cached>) -> u64 {
        // Entry overhead plus the bytes it holds.
        (64 + key.len() + val.value.len()) as u64
    }
}

/// Bytes of keys and values one bucket's cache holds at most.
const CACHE_BYTES_PER_BUCKET: u64 = 64 * 1024 * 1024;
/// Entries one bucket's cache expects to hold (sizing hint).
const CACHE_ITEMS_PER_BUCKET: usize = 100_000;

/// The read cache of one SQLite bucket.
///
/// It is coherent because the process is the only writer of the database
/// file (the store holds an exclusive lock on it) and every write goes
/// through the single writer connection:
///
/// - a writer changes the row, then — still holding the writer connection,
///   so writers apply their cache updates in commit order — stores the new
///   entry (or removes the key) and bumps the epoch, under one mutex;
/// - a reader that missed notes the epoch before reading the row, and
///   fills the cache only if no write happened meanwhile (same mutex), so a
///   row read before a write can never overwrite that write's entry;
/// - entries carry their expiry and are ignored once past it.
pub(super) struct ReadCache {
    entries: quick_cache::sync::Cache<String, Arc<Cached>, ByteWeight>,
    epoch: Mutex<u64>,
}

impl ReadCache {
    fn new() -> Self {
        ReadCache {
            entries: quick_cache::sync::Cache::with_weighter(
                CACHE_ITEMS_PER_BUCKET,
                CACHE_BYTES_PER_BUCKET,
                ByteWeight,
            ),
            epoch: Mutex::new(0),
        }
    }

    /// `Some(answer)` if the cache knows, `None` to ask the database.
    fn get(&self, key: &str, now: i64) -> Option<Option<KvEntry>> {
        let cached = self.entries.get(key)?;
        if cached.expires_at > now {
            Some(Some(KvEntry {
                value: cached.value.clone(),
                revision: cached.revision,
            }))
        } else {
            // Expired in the database too (it has the same expiry).
            self.entries.remove(key);
            Some(None)
        }
    }

    fn epoch(&self) -> u64 {
        *lock(&self.epoch)
    }

    /// Fill after a miss, unless a write happened since `epoch`.
    fn fill(&self, epoch: u64, key: &str, cached: Cached) {
        let current = lock(&self.epoch);
        if *current == epoch {
            self.entries.insert(key.to_owned(), Arc::new(cached));
        }
    }

    /// Record a write: the key's new entry, or `None` if it is gone (or
    /// its state is unknown after an error).
    fn write(&self, key: &str, entry: Option<Cached>) {
        let mut epoch = lock(&self.epoch);
        *epoch = epoch.wrapping_add(1);
        match entry {
            Some(cached) => self.entries.insert(key.to_owned(), Arc::new(cached)),
            None => {
                self.entries.remove(key);
            }
        }
    }
}

// ------------------------------------------------------------------ buckets

/// The buckets a store has opened: one handle (and cache) per name, so
/// every handle of a bucket sees the same cache.
#[derive(Default)]
pub(super) struct Buckets {
    open: Mutex<HashMap<String, Arc<SqlKv>>>,
}

impl Buckets {
    pub(super) fn bucket(&self, core: &Arc<Core>, name: &str) -> Result<Arc<SqlKv>, StoreError> {
        check_bucket(name)?;
        let mut open = lock(&self.open);
        let kv = open
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(SqlKv {
                    core: core.clone(),
                    bucket: name.to_owned(),
                    cache: (!core.engine.is_postgres()).then(ReadCache::new),
                })
            })
            .clone();
        Ok(kv)
    }
}

/// One KV bucket of an SQL store.
pub(super) struct SqlKv {
    core: Arc<Core>,
    bucket: String,
    cache: Option<ReadCache>,
}

impl std::fmt::Debug for SqlKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlKv")
            .field("backend", &self.core.engine.name())
            .field("bucket", &self.bucket)
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

impl SqlKv {
    fn err(&self, e: sqlx::Error) -> StoreError {
        map_err(self.core.engine, e)
    }

    /// After a write: record it in the cache (`Ok(Some)` new entry,
    /// `Ok(None)` gone), or forget the key if the outcome is unknown.
    fn cache_write(&self, key: &str, entry: Result<Option<Cached>, ()>) {
        if let Some(cache) = &self.cache {
            cache.write(key, entry.unwrap_or(None));
        }
    }

    async fn after_write(&self) {
        if self.core.kv_writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            if let Err(e) = sweep(&self.core).await {
                tracing::warn!(backend = self.core.engine.name(), error = %e, "KV sweep failed");
            }
        }
    }

    /// Write with `sql` returning the new revision (`None`: the guard
    /// refused), keeping the writer connection until the cache has the result.
    async fn write_returning(
        &self,
        sql: &str,
        key: &str,
        value: &[u8],
        expires_at: i64,
        guard: &[Arg<'_>],
    ) -> Result<Option<Revision>, StoreError> {
        let mut conn = self.core.pools.writer().await.map_err(|e| self.err(e))?;
        let mut args = vec![
            Arg::Text(&self.bucket),
            Arg::Bytes(key.as_bytes()),
            Arg::Bytes(value),
            Arg::Int(expires_at),
        ];
        args.extend_from_slice(guard);
        let result = conn.fetch_optional(sql, &args).await;
        let outcome = match result {
            Ok(Some(row)) => match row.int(0).and_then(revision) {
                Ok(rev) => {
                    self.cache_write(
                        key,
                        Ok(Some(Cached {
                            value: value.to_vec(),
                            revision: rev,
                            expires_at,
                        })),
                    );
                    Ok(Some(rev))
                }
                Err(e) => {
                    self.cache_write(key, Err(()));
                    Err(e)
                }
            },
            // Refused by the guard: nothing changed.
            Ok(None) => Ok(None),
            Err(e) => {
                self.cache_write(key, Err(()));
                Err(self.err(e))
            }
        };
        drop(conn);
        if matches!(outcome, Ok(Some(_))) {
            self.after_write().await;
        }
        outcome
    }
}

/// Remove expired rows, at most [`SWEEP_BATCH`] per statement, until none
/// is left. Returns how many were removed.
pub(super) async fn sweep(core: &Core) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = core
            .pools
            .execute(SWEEP, &[Arg::Int(now_ms()), Arg::Int(SWEEP_BATCH)])
            .await
            .map_err(|e| map_err(core.engine, e))?;
        total += n;
        if n < u64::try_from(SWEEP_BATCH).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

/// Count of KV writes, shared by a store's buckets (to pace the sweep).
pub(super) type WriteCounter = AtomicU64;

#[async_trait]
impl KvStore for SqlKv {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        check_key(key)?;
        let now = now_ms();
        let epoch = match &self.cache {
            Some(cache) => {
                if let Some(answer) = cache.get(key, now) {
                    return Ok(answer);
                }
                cache.epoch()
            }
            None => 0,
        };
        let row = self
            .core
            .pools
            .fetch_optional(
                GET,
                &[
                    Arg::Text(&self.bucket),
                    Arg::Bytes(key.as_bytes()),
                    Arg::Int(now),
                ],
            )
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let entry = KvEntry {
            value: row.bytes(0)?,
            revision: revision(row.int(1)?)?,
        };
        if let Some(cache) = &self.cache {
            cache.fill(
                epoch,
                key,
                Cached {
                    value: entry.value.clone(),
                    revision: entry.revision,
                    expires_at: row.int(2)?,
                },
            );
        }
        Ok(Some(entry))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        check_key(key)?;
        check_value(value)?;
        check_ttl(ttl)?;
        let expires_at = expiry(now_ms(), ttl);
        let sql = statements(self.core.engine).put;
        self.write_returning(sql, key, value, expires_at, &[])
            .await?
            .ok_or_else(|| StoreError::Corrupt("KV put returned no revision".into()))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        check_value(value)?;
        check_ttl(ttl)?;
        let now = now_ms();
        let sql = statements(self.core.engine).put_if_absent;
        self.write_returning(sql, key, value, expiry(now, ttl), &[Arg::Int(now)])
            .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        check_value(value)?;
        check_ttl(ttl)?;
        let Ok(expected) = i64::try_from(expected.0) else {
            return Ok(None);
        };
        let now = now_ms();
        let sql = statements(self.core.engine).compare_and_set;
        self.write_returning(
            sql,
            key,
            value,
            expiry(now, ttl),
            &[Arg::Int(expected), Arg::Int(now)],
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let now = now_ms();
        let mut conn = self.core.pools.writer().await.map_err(|e| self.err(e))?;
        let result = conn
            .fetch_optional(
                DELETE,
                &[Arg::Text(&self.bucket), Arg::Bytes(key.as_bytes())],
            )
            .await;
        let outcome = match result {
            Ok(row) => {
                self.cache_write(key, Ok(None));
                match row {
                    Some(row) => Ok(row.int(0)? > now),
                    None => Ok(false),
                }
            }
            Err(e) => {
                self.cache_write(key, Err(()));
                Err(self.err(e))
            }
        };
        drop(conn);
        outcome
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        check_key(key)?;
        let Ok(expected) = i64::try_from(expected.0) else {
            return Ok(false);
        };
        let mut conn = self.core.pools.writer().await.map_err(|e| self.err(e))?;
        let result = conn
            .execute(
                DELETE_IF,
                &[
                    Arg::Text(&self.bucket),
                    Arg::Bytes(key.as_bytes()),
                    Arg::Int(expected),
                    Arg::Int(now_ms()),
                ],
            )
            .await;
        let outcome = match result {
            Ok(0) => Ok(false),
            Ok(_) => {
                self.cache_write(key, Ok(None));
                Ok(true)
            }
            Err(e) => {
                self.cache_write(key, Err(()));
                Err(self.err(e))
            }
        };
        drop(conn);
        outcome
    }
}
