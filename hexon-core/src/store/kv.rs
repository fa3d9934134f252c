//! Shared short-lived state: a key-value store with TTL, put-if-absent and
//! compare-and-set.
//!
//! Sessions, authorization codes, device codes, HMAC nonces and rate-limit
//! counters live here. One node keeps them in process
//! ([`MemoryKv`](super::memory::MemoryKv)); a cluster keeps them in NATS
//! JetStream KV buckets; a single node that wants them to survive a restart
//! keeps them in SQLite.
//!
//! Semantics every backend honours (the conformance suite checks them):
//!
//! - Keys are any UTF-8 string of 1..=[`MAX_KEY_LEN`] bytes; backends with a
//!   restricted key alphabet encode keys, so a hostile key (`*`, `>`, `..`,
//!   spaces) is just a key.
//! - An entry whose TTL has passed is absent for every operation, even if
//!   the backend has not removed it yet.
//! - A [`Revision`] changes on every write and is never reused for a key,
//!   even after delete and re-create, so compare-and-set has no ABA window.
//! - Errors mean "could not look": a caller guarding security denies on
//!   [`StoreError::Unavailable`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Largest value, in bytes (NATS's default message limit is 1 MiB; leave room
/// for headers and the expiry envelope).
pub const MAX_VALUE_LEN: usize = 512 * 1024;
/// Longest bucket name.
pub const MAX_BUCKET_LEN: usize = 64;

/// A write's revision: changes on every write of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A live entry.
#[derive(Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the write that set it.
    pub revision: Revision,
}

impl fmt::Debug for KvEntry {
    // Values are often secrets (session records, codes): show only the size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvEntry")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("revision", &self.revision)
            .finish()
    }
}

/// One bucket of shared state (e.g. `sessions`, `nonces`).
#[async_trait]
pub trait KvStore: Send + Sync + fmt::Debug {
    /// The live entry under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError>;

    /// What [`get`](Self::get) would answer, when the backend can tell
    /// without waiting (in-process buckets): `Some(None)` for no live entry.
    /// `None` when it cannot (a store across the network, an invalid key):
    /// ask `get`. Lets a caller that must not wait (the gateway's express
    /// lane) use state it can read at once, and leave the rest to `get`.
    fn get_now(&self, key: &str) -> Option<Option<KvEntry>> {
        let _ = key;
        None
    }

    /// Set `key` to `value` for `ttl`, whatever was there.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError>;

    /// Set `key` only if it has no live entry. `Ok(None)` means it had one
    /// (a replayed nonce, a taken code): exactly one of many racing callers
    /// gets `Some`.
    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError>;

    /// Set `key` only if its live entry is still at `expected`. `Ok(None)`
    /// means it moved on, expired or was deleted.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError>;

    /// Remove `key`. `Ok(true)` if a live entry was removed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Remove `key` only if its live entry is still at `expected` (consume a
    /// one-time code exactly once). `Ok(true)` if this call removed it.
    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError>;
}

/// Where buckets come from: in-process, SQLite, PostgreSQL or NATS.
#[async_trait]
pub trait KvBackend: Send + Sync + fmt::Debug {
    /// Open (creating if needed) the bucket `name`. `max_ttl` is the longest
    /// TTL any entry of the bucket will have; backends may use it to size
    /// retention. Names are 1..=[`MAX_BUCKET_LEN`] of `[a-z0-9_-]`.
    async fn bucket(&self, name: &str, max_ttl: Duration) -> Result<Arc<dyn KvStore>, StoreError>;

    /// Which backend (`memory`, `sqlite`, `postgres`, `nats`).
    fn backend(&self) -> &'static str;
}

/// Check a key against the limits every backend shares.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid {
            what: "key",
            reason: "empty".into(),
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Invalid {
            what: "key",
            reason: format!("{} bytes, longer than {MAX_KEY_LEN}", key.len()),
        });
    }
    Ok(())
}

/// Check a value against the limits every backend shares.
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::Invalid {
            what: "value",
            reason: format!("{} bytes, larger than {MAX_VALUE_LEN}", value.len()),
        });
    }
    Ok(())
}

/// Check a TTL: at least one second (expiry has second precision everywhere).
pub fn check_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl < Duration::from_secs(1) {
        return Err(StoreError::Invalid {
            what: "ttl",
            reason: "shorter than one second".into(),
        });
    }
    Ok(())
}

/// Check a bucket name.
pub fn check_bucket(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BUCKET_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            what: "bucket name",
            reason: format!("`{name}`: use 1..={MAX_BUCKET_LEN} of [a-z0-9_-]"),
        })
    }
}
