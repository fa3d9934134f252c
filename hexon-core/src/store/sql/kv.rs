//! KV buckets in SQL: one table `kv (bucket, key, value, revision,
//! expires_at)` for every bucket.
//!
//! - Every operation is one statement, so it is atomic on its own:
//!   put-if-absent is an upsert that only overwrites an expired row,
//!   compare-and-set an update guarded by the revision, delete-if a delete
//!   guarded by it.
//! - Every write runs in a task of its own that the caller awaits: a caller
//!   that gives up (a request cancelled, a timeout) never cuts a write in
//!   half between its statement and its cache update. The write then
//!   completes without it.
//! - Revisions come from one counter for all buckets that only grows (a
//!   PostgreSQL sequence; in SQLite a one-row table that triggers keep at the
//!   highest revision written), so a key deleted and created again never
//!   gets an old revision back.
//! - Expiry is in milliseconds of the gateway's clock, read once the write
//!   holds its connection. An expired row is invisible to every statement at
//!   once; a background sweep removes expired rows every few thousand writes
//!   (and [`sweep_expired`](super::SqliteStore::sweep_expired) on demand).
//! - On SQLite, gets are answered from an in-process cache that every write
//!   of this process updates (see [`ReadCache`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::store::StoreError;
use crate::store::kv::{
    KvEntry, KvStore, Revision, check_bucket, check_key, check_ttl, check_value,
};

use super::Core;
use super::db::{Arg, Conn, Engine, map_err};

/// Sweep expired rows after this many KV writes (per store).
const SWEEP_EVERY: u64 = 2048;
/// Rows one sweep statement removes at most.
const SWEEP_BATCH: i64 = 1000;

/// The statements that differ between engines.
struct KvSql {
    put: &'static str,
    put_if_absent: &'static str,
    compare_and_set: &'static str,
    sweep: &'static str,
}

/// `$1` bucket, `$2` key, `$3` value, `$4` expires_at, then `$5` now
/// (put-if-absent) or `$5` expected revision and `$6` now (CAS).
///
/// The sweep (`$1` now, `$2` batch size) checks the expiry again on the row
/// it deletes: on PostgreSQL a row the subquery found expired may have been
/// revived (put-if-absent) by another session before the delete gets its
/// lock, and the delete then sees the new row. `$lock` skips rows another
/// session is writing (they are not expired, or will be swept next time).
macro_rules! kv_sql {
    ($next_revision:literal, $lock:literal) => {
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
            sweep: concat!(
                "DELETE FROM kv WHERE (bucket, key) IN \
                 (SELECT bucket, key FROM kv WHERE expires_at <= $1 LIMIT $2",
                $lock,
                ") AND expires_at <= $1"
            ),
        }
    };
}

// SQLite has one writer: nothing to lock against.
#[cfg(feature = "sqlite")]
const SQLITE_KV: KvSql = kv_sql!("(SELECT last + 1 FROM kv_revision WHERE id = 1)", "");
#[cfg(feature = "postgres")]
const POSTGRES_KV: KvSql = kv_sql!("nextval('kv_revision')", " FOR UPDATE SKIP LOCKED");

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

/// The write epoch of a cache, and whether it was closed.
struct CacheState {
    epoch: u64,
    closed: bool,
}

/// The read cache of one SQLite bucket.
///
/// It is coherent because the process is the only writer of the database
/// file (the store holds an exclusive lock on it) and every write goes
/// through the single writer connection:
///
/// - a writer changes the row, then — still holding the writer connection,
///   so writers apply their cache updates in commit order — stores the new
///   entry (or removes the key) and bumps the epoch, under one mutex;
/// - a write runs in a task of its own, so the caller dropping its future
///   cannot stop it between the statement and the cache update (and if the
///   task itself is dropped, at runtime shutdown, the key is forgotten);
/// - a reader that missed notes the epoch before reading the row, and
///   fills the cache only if no write happened meanwhile (same mutex), so a
///   row read before a write can never overwrite that write's entry;
/// - entries carry their expiry and are ignored once past it;
/// - closing the store empties it for good.
pub(super) struct ReadCache {
    entries: quick_cache::sync::Cache<String, Arc<Cached>, ByteWeight>,
    state: Mutex<CacheState>,
}

impl ReadCache {
    fn new() -> Self {
        ReadCache {
            entries: quick_cache::sync::Cache::with_weighter(
                CACHE_ITEMS_PER_BUCKET,
                CACHE_BYTES_PER_BUCKET,
                ByteWeight,
            ),
            state: Mutex::new(CacheState {
                epoch: 0,
                closed: false,
            }),
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
        lock(&self.state).epoch
    }

    /// Fill after a miss, unless a write happened since `epoch`.
    fn fill(&self, epoch: u64, key: &str, cached: Cached) {
        let state = lock(&self.state);
        if state.epoch == epoch && !state.closed {
            self.entries.insert(key.to_owned(), Arc::new(cached));
        }
    }

    /// Record a write: the key's new entry, or `None` if it is gone (or
    /// its state is unknown).
    fn write(&self, key: String, entry: Option<Cached>) {
        let mut state = lock(&self.state);
        state.epoch = state.epoch.wrapping_add(1);
        match entry {
            Some(cached) if !state.closed => self.entries.insert(key, Arc::new(cached)),
            _ => {
                self.entries.remove(&key);
            }
        }
    }

    /// Empty the cache and keep it empty (the store was closed).
    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.epoch = state.epoch.wrapping_add(1);
        self.entries.clear();
    }
}

/// The cache update a write owes once it holds the writer connection:
/// [`set`](Self::set) records the outcome; dropped without it (an error, a
/// cancelled task), the key is forgotten, so the cache never keeps an entry
/// the database may no longer have.
struct CacheUpdate {
    cache: Option<Arc<ReadCache>>,
    key: String,
    done: bool,
}

impl CacheUpdate {
    /// The key's new entry, or `None` if it is gone.
    fn set(mut self, entry: Option<Cached>) {
        self.done = true;
        if let Some(cache) = &self.cache {
            cache.write(std::mem::take(&mut self.key), entry);
        }
    }

    /// The write changed nothing (its guard refused).
    fn unchanged(mut self) {
        self.done = true;
    }
}

impl Drop for CacheUpdate {
    fn drop(&mut self) {
        if !self.done {
            if let Some(cache) = &self.cache {
                cache.write(std::mem::take(&mut self.key), None);
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
                    bucket: Arc::from(name),
                    cache: (!core.engine.is_postgres()).then(|| Arc::new(ReadCache::new())),
                })
            })
            .clone();
        Ok(kv)
    }

    /// Empty every cache for good (the store was closed).
    pub(super) fn close(&self) {
        for kv in lock(&self.open).values() {
            if let Some(cache) = &kv.cache {
                cache.close();
            }
        }
    }
}

/// One KV bucket of an SQL store.
pub(super) struct SqlKv {
    core: Arc<Core>,
    bucket: Arc<str>,
    cache: Option<Arc<ReadCache>>,
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

/// A KV write, with everything it needs owned.
enum Op {
    Put {
        value: Vec<u8>,
        ttl: Duration,
    },
    PutIfAbsent {
        value: Vec<u8>,
        ttl: Duration,
    },
    CompareAndSet {
        expected: i64,
        value: Vec<u8>,
        ttl: Duration,
    },
    Delete,
    DeleteIf {
        expected: i64,
    },
}

/// What a write did.
enum Done {
    /// The new revision, or `None` if the guard refused.
    Written(Option<Revision>),
    /// Whether a live entry was removed.
    Deleted(bool),
}

/// One write, run by [`SqlKv::write`] in a task of its own.
struct Write {
    core: Arc<Core>,
    bucket: Arc<str>,
    cache: Option<Arc<ReadCache>>,
    key: String,
}

impl Write {
    fn err(&self, e: sqlx::Error) -> StoreError {
        map_err(self.core.engine, e)
    }

    fn bucket_arg(&self) -> Arg<'_> {
        Arg::Text(&self.bucket)
    }

    fn key_arg(&self) -> Arg<'_> {
        Arg::Bytes(self.key.as_bytes())
    }

    /// Hold the writer connection (SQLite: the only one), then read the
    /// clock, run the statement and update the cache before letting go.
    async fn run(self, op: Op) -> Result<Done, StoreError> {
        self.core.check_open()?;
        let mut conn = self.core.pools.writer().await.map_err(|e| self.err(e))?;
        // "Now" once the connection is ours: waiting for it must not eat
        // into the TTL, nor make the guards compare against a stale time.
        let now = now_ms();
        let update = CacheUpdate {
            cache: self.cache.clone(),
            key: self.key.clone(),
            done: false,
        };
        let sql = statements(self.core.engine);
        let done = match op {
            Op::Put { value, ttl } => {
                let written = (value, expiry(now, ttl));
                let rev = self
                    .returning(&mut conn, sql.put, &[], written, update)
                    .await?;
                Done::Written(rev)
            }
            Op::PutIfAbsent { value, ttl } => {
                let written = (value, expiry(now, ttl));
                let guard = [Arg::Int(now)];
                let rev = self
                    .returning(&mut conn, sql.put_if_absent, &guard, written, update)
                    .await?;
                Done::Written(rev)
            }
            Op::CompareAndSet {
                expected,
                value,
                ttl,
            } => {
                let written = (value, expiry(now, ttl));
                let guard = [Arg::Int(expected), Arg::Int(now)];
                let rev = self
                    .returning(&mut conn, sql.compare_and_set, &guard, written, update)
                    .await?;
                Done::Written(rev)
            }
            Op::Delete => {
                let row = conn
                    .fetch_optional(DELETE, &[self.bucket_arg(), self.key_arg()])
                    .await
                    .map_err(|e| self.err(e))?;
                update.set(None);
                Done::Deleted(match row {
                    Some(row) => row.int(0)? > now,
                    None => false,
                })
            }
            Op::DeleteIf { expected } => {
                let n = conn
                    .execute(
                        DELETE_IF,
                        &[
                            self.bucket_arg(),
                            self.key_arg(),
                            Arg::Int(expected),
                            Arg::Int(now),
                        ],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                if n == 0 {
                    update.unchanged();
                } else {
                    update.set(None);
                }
                Done::Deleted(n > 0)
            }
        };
        drop(conn);
        if matches!(done, Done::Written(Some(_))) {
            maybe_sweep(&self.core);
        }
        Ok(done)
    }

    /// Write `(value, expires_at)` with `sql` (`$1` bucket, `$2` key, `$3`
    /// value, `$4` expires_at, then `guard`), returning the new revision
    /// (`None`: the guard refused), and record it in the cache.
    async fn returning(
        &self,
        conn: &mut Conn,
        sql: &str,
        guard: &[Arg<'_>],
        (value, expires_at): (Vec<u8>, i64),
        update: CacheUpdate,
    ) -> Result<Option<Revision>, StoreError> {
        let mut args = vec![
            Arg::Text(&self.bucket),
            Arg::Bytes(self.key.as_bytes()),
            Arg::Bytes(&value),
            Arg::Int(expires_at),
        ];
        args.extend_from_slice(guard);
        let row = conn
            .fetch_optional(sql, &args)
            .await
            .map_err(|e| self.err(e))?;
        drop(args);
        let Some(row) = row else {
            // Refused by the guard: nothing changed.
            update.unchanged();
            return Ok(None);
        };
        let rev = row.int(0).and_then(revision)?;
        update.set(Some(Cached {
            value,
            revision: rev,
            expires_at,
        }));
        Ok(Some(rev))
    }
}

impl SqlKv {
    fn err(&self, e: sqlx::Error) -> StoreError {
        map_err(self.core.engine, e)
    }

    /// Run `op` on `key` in a task of its own and wait for it. Dropping this
    /// future does not stop the write: it completes, cache update included.
    async fn write(&self, key: &str, op: Op) -> Result<Done, StoreError> {
        let write = Write {
            core: self.core.clone(),
            bucket: self.bucket.clone(),
            cache: self.cache.clone(),
            key: key.to_owned(),
        };
        tokio::spawn(write.run(op))
            .await
            .map_err(|e| StoreError::Unavailable {
                backend: self.core.engine.name(),
                detail: format!("the KV write did not finish: {e}"),
            })?
    }

    async fn write_revision(&self, key: &str, op: Op) -> Result<Option<Revision>, StoreError> {
        match self.write(key, op).await? {
            Done::Written(rev) => Ok(rev),
            Done::Deleted(_) => Err(StoreError::Corrupt("KV write reported a delete".into())),
        }
    }

    async fn write_delete(&self, key: &str, op: Op) -> Result<bool, StoreError> {
        match self.write(key, op).await? {
            Done::Deleted(removed) => Ok(removed),
            Done::Written(_) => Err(StoreError::Corrupt("KV delete reported a write".into())),
        }
    }
}

/// Every [`SWEEP_EVERY`] writes, sweep expired rows in a background task
/// (never in a caller's request), unless a sweep is running already.
fn maybe_sweep(core: &Arc<Core>) {
    if core.kv_writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
        return;
    }
    if core.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let core = core.clone();
    tokio::spawn(async move {
        let _running = Running(&core.sweeping);
        if let Err(e) = sweep(&core).await {
            if core.check_open().is_ok() {
                tracing::warn!(backend = core.engine.name(), error = %e, "KV sweep failed");
            }
        }
    });
}

/// Clears the "sweep running" flag when the sweep ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Remove expired rows, at most [`SWEEP_BATCH`] per statement, until none
/// is left. Returns how many were removed.
pub(super) async fn sweep(core: &Core) -> Result<u64, StoreError> {
    core.check_open()?;
    let sql = statements(core.engine).sweep;
    let mut total = 0;
    loop {
        let n = core
            .pools
            .execute(sql, &[Arg::Int(now_ms()), Arg::Int(SWEEP_BATCH)])
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
        // Before the cache: a closed store answers nothing.
        self.core.check_open()?;
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
        let op = Op::Put {
            value: value.to_vec(),
            ttl,
        };
        self.write_revision(key, op)
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
        let op = Op::PutIfAbsent {
            value: value.to_vec(),
            ttl,
        };
        self.write_revision(key, op).await
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
        let op = Op::CompareAndSet {
            expected,
            value: value.to_vec(),
            ttl,
        };
        self.write_revision(key, op).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        self.write_delete(key, Op::Delete).await
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        check_key(key)?;
        let Ok(expected) = i64::try_from(expected.0) else {
            return Ok(false);
        };
        self.write_delete(key, Op::DeleteIf { expected }).await
    }
}
