//! The one error type of every store, KV and event-bus backend.

use std::fmt;

/// What went wrong in a store operation.
///
/// Callers that guard security (nonce replay, revocation checks, session
/// lookups) must treat [`StoreError::Unavailable`] as a denial: the state
/// layer fails closed, it never answers "not found" when it could not look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time. Retrying
    /// later may succeed; until then, deny.
    #[error("{backend} is unavailable: {detail}")]
    Unavailable {
        /// Which backend (`sqlite`, `postgres`, `nats`, `memory`).
        backend: &'static str,
        /// What the backend said.
        detail: String,
    },
    /// An optimistic-concurrency update lost: the record changed since it
    /// was read. Read it again and retry, or give up.
    #[error("{what} `{key}` was changed by another writer; read it again and retry")]
    Conflict {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// The record does not exist.
    #[error("{what} `{key}` does not exist")]
    NotFound {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
    },
    /// A record with the same unique key exists already.
    #[error("{what} `{key}` already exists")]
    AlreadyExists {
        /// What kind of record.
        what: &'static str,
        /// The key that collided.
        key: String,
    },
    /// The caller passed something the store refuses (an empty or oversized
    /// key, an oversized value, an invalid name).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A sealed secret could not be opened: no configured key has its key id,
    /// or it was tampered with or moved to another record.
    #[error("cannot decrypt a stored secret: {0}")]
    Crypto(&'static str),
    /// Stored data does not decode (written by a newer version, or damaged).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// Events were published that this subscriber can no longer receive (it
    /// fell behind the retained history). Drop caches and continue.
    #[error(
        "events after #{after} are no longer retained (oldest kept is #{first_available}); caches must be rebuilt"
    )]
    EventsMissed {
        /// The last event the subscriber had.
        after: u64,
        /// The first event still retained.
        first_available: u64,
    },
    /// A schema migration failed or the database is newer than this binary.
    #[error("migration: {0}")]
    Migration(String),
}

impl StoreError {
    /// An [`Unavailable`](Self::Unavailable) error from any displayable cause.
    pub fn unavailable(backend: &'static str, detail: impl fmt::Display) -> Self {
        StoreError::Unavailable {
            backend,
            detail: detail.to_string(),
        }
    }

    /// Whether retrying later could succeed (the backend was unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}
