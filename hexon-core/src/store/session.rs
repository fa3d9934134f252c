//! Sessions: what a session cookie stands for, and where sessions live.
//!
//! [`KvSessionStore`] keeps them in a shared KV bucket (every node of a
//! cluster sees the same sessions; revocation is one compare-and-set);
//! [`MemorySessionStore`] keeps them in process. The cookie authenticator
//! (`hexon_proxy::authn::SessionCookie`) reads them; the login service
//! (`hexon-idp`) writes them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Event, EventBus, KvBackend, KvEntry, KvStore, Revision, SecretKeys, StoreError};
use crate::{Identity, UnixTime};

/// Longest session cookie value accepted (the store's ids are far shorter).
pub const MAX_COOKIE_VALUE: usize = 1024;

type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// A logged-in session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// Who is logged in (its `session` field is the public session handle,
    /// never the cookie secret).
    pub identity: Identity,
    /// When the session ends.
    pub expires: UnixTime,
    /// When the session began (revoking a user's sessions ends those begun
    /// at or before the revocation).
    pub created: UnixTime,
    /// The session ends this long after its last use ([`KvSessionStore`]
    /// enforces it; `None`: only `expires`).
    pub idle_timeout: Option<std::time::Duration>,
}

impl Session {
    /// A session for `identity` from now until `expires`.
    pub fn new(identity: Identity, expires: UnixTime) -> Self {
        Session {
            identity,
            expires,
            created: UnixTime::now(),
            idle_timeout: None,
        }
    }

    /// End the session `idle` after its last use.
    pub fn with_idle_timeout(mut self, idle: std::time::Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Set when the session began.
    pub fn created_at(mut self, created: UnixTime) -> Self {
        self.created = created;
        self
    }
}

/// The future a [`SessionStore`] returns: `Ok(None)` for no such session,
/// `Err` when the store could not look (the request then fails closed with
/// `503`, and the browser keeps its cookie).
pub type SessionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Session>, StoreError>> + Send + 'a>>;

/// Where sessions live. `id` is the cookie value: a bearer secret. Stores
/// must look it up without leaking it through timing (hash it, or compare
/// in constant time) and must not log it.
pub trait SessionStore: Send + Sync + 'static {
    /// The session for the cookie value `id`, if it exists (expired sessions
    /// may be returned; the authenticator checks `expires`).
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a>;

    /// The session for the cookie value `id` when the store can tell at
    /// once — without waiting and without writing — that it is live and
    /// that a lookup would change nothing (no idle mark due, nothing to
    /// remove): then it is what [`get`](Self::get) would return. `None`
    /// otherwise, which decides nothing: ask `get`. The default never
    /// answers. Lets a caller that must not wait (the gateway's express
    /// lane) serve the sessions a store holds in process.
    fn peek(&self, id: &str) -> Option<Session> {
        let _ = id;
        None
    }
}

impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a> {
        (**self).get(id)
    }

    fn peek(&self, id: &str) -> Option<Session> {
        (**self).peek(id)
    }
}

type Key = [u8; 32];

fn key(id: &str) -> Key {
    Sha256::digest(id.as_bytes()).into()
}

/// In-process [`SessionStore`]: entries keyed by the SHA-256 of the cookie
/// value (a lookup's timing reveals nothing usable about the secret; the
/// stored digest is then compared in constant time), dropped when expired.
pub struct MemorySessionStore {
    map: RwLock<HashMap<Key, Session>>,
    clock: Clock,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("sessions", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemorySessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySessionStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        MemorySessionStore {
            map: RwLock::new(HashMap::new()),
            clock: Arc::new(UnixTime::now),
        }
    }

    /// Use another clock for expiry (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Session>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Session>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Store `session` under the cookie value `id` (replacing any).
    pub fn insert(&self, id: &str, session: Session) {
        self.write().insert(key(id), session);
    }

    /// Remove the session with cookie value `id` (logout). Whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        self.write().remove(&key(id)).is_some()
    }

    /// Remove every session of `subject` (revocation: disabled user, password
    /// reset). How many were removed.
    pub fn remove_all_for_subject(&self, subject: &str) -> usize {
        let mut map = self.write();
        let before = map.len();
        map.retain(|_, s| s.identity.subject() != subject);
        before - map.len()
    }

    /// Drop expired sessions. How many were dropped.
    pub fn purge_expired(&self) -> usize {
        let now = (self.clock)();
        let mut map = self.write();
        let before = map.len();
        map.retain(|_, s| s.expires > now);
        before - map.len()
    }

    /// Number of sessions stored (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live session under `k`: `Err(())` when there is one and it
    /// expired.
    fn find(&self, k: &Key) -> Result<Option<Session>, ()> {
        let now = (self.clock)();
        let map = self.read();
        let Some((stored, s)) = map.get_key_value(k) else {
            return Ok(None);
        };
        if !bool::from(stored.ct_eq(k)) {
            return Ok(None);
        }
        if s.expires > now {
            Ok(Some(s.clone()))
        } else {
            Err(())
        }
    }

    fn lookup(&self, id: &str) -> Option<Session> {
        let k = key(id);
        self.find(&k).unwrap_or_else(|()| {
            self.write().remove(&k);
            None
        })
    }
}

impl SessionStore for MemorySessionStore {
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a> {
        Box::pin(std::future::ready(Ok(self.lookup(id))))
    }

    /// Always answers for a live session (an expired one `get` removes).
    fn peek(&self, id: &str) -> Option<Session> {
        self.find(&key(id)).ok().flatten()
    }
}

/// Sessions in a shared [`KvStore`] bucket: the same session is valid on
/// every node that shares the store (NATS JetStream in a cluster), and it
/// survives a restart where the store does (SQLite, PostgreSQL).
///
/// - Entries are keyed by the SHA-256 of the cookie value: the store never
///   holds the bearer secret, and a store dump cannot be replayed as cookies.
/// - Entries are **sealed** with the state's [`SecretKeys`], bound to their
///   key: whoever can write to the store cannot forge a session for anyone.
/// - Each entry lives until the session expires, and never longer than
///   `max_lifetime` after the session began.
/// - Revocation is by **generation**, not by clock: every user has a counter
///   in the bucket `revocations`; a session records the counter's value when
///   it is stored and is valid only while the counter has not moved.
///   [`revoke_subject`](Self::revoke_subject) bumps the counter (one
///   compare-and-set), which ends every session of the user on every node at
///   once, whatever the nodes' clocks say. Storing a session refreshes the
///   counter's TTL so it outlives the session; a session whose counter is
///   missing is refused.
/// - A store error is returned as `Err` (the request fails closed with 503),
///   never as "no session".
#[derive(Clone)]
pub struct KvSessionStore {
    sessions: Arc<dyn KvStore>,
    revocations: Arc<dyn KvStore>,
    keys: Arc<SecretKeys>,
    /// Opened records by KV key and revision: a revision is never reused
    /// for a key, so a hit is exactly the stored record, without opening
    /// and decoding it again.
    opened: Arc<OpenedCache>,
    events: Option<Arc<dyn EventBus>>,
    max_lifetime: std::time::Duration,
    clock: Clock,
}

impl fmt::Debug for KvSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSessionStore")
            .field("sessions", &self.sessions)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

type OpenedCache = quick_cache::sync::Cache<String, (Revision, Arc<StoredSession>)>;

/// Opened session records kept in memory per store.
const OPENED_CAPACITY: usize = 100_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSession {
    identity: Identity,
    expires: UnixTime,
    created: UnixTime,
    generation: u64,
    /// Idle timeout in seconds, and when the session was last seen in use
    /// (refreshed at most every eighth of the timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seen: Option<UnixTime>,
}

impl StoredSession {
    fn session(&self) -> Session {
        Session {
            identity: self.identity.clone(),
            expires: self.expires,
            created: self.created,
            idle_timeout: self.idle.map(std::time::Duration::from_secs),
        }
    }

    /// Where the session stands with its idle timeout at `now`.
    fn idle_at(&self, now: UnixTime) -> Idle {
        let (Some(idle), Some(seen)) = (self.idle, self.seen) else {
            return Idle::InUse;
        };
        let idle = std::time::Duration::from_secs(idle);
        let quiet = now.since(seen);
        if quiet > idle {
            Idle::Ended
        } else if quiet >= (idle / 8).max(std::time::Duration::from_secs(1)) {
            Idle::MarkSeen
        } else {
            Idle::InUse
        }
    }
}

/// A session's idle state ([`StoredSession::idle_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    /// No idle timeout, or seen recently enough: nothing to do.
    InUse,
    /// In time, but last marked seen long enough ago to mark it again.
    MarkSeen,
    /// Unused for longer than its idle timeout: it ends.
    Ended,
}

fn kv_key(id: &str) -> String {
    crate::hex::encode(&Sha256::digest(id.as_bytes()))
}

fn seal_context(key: &str) -> Vec<u8> {
    format!("hexon session\0{key}").into_bytes()
}

/// How long a user's generation counter is kept: twice the longest session,
/// so it outlives every session stored under it even across clock skew
/// between nodes.
fn marker_lifetime(max_lifetime: std::time::Duration) -> std::time::Duration {
    max_lifetime.saturating_mul(2)
}

/// How often a compare-and-set loop retries before reporting a conflict.
const CAS_ATTEMPTS: usize = 32;

fn parse_generation(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt("session generation marker".into()))
}

impl KvSessionStore {
    /// Open the `sessions` and `revocations` buckets of `backend`, sealing
    /// sessions with `keys`. No session lives longer than `max_lifetime`.
    pub async fn open(
        backend: &dyn KvBackend,
        keys: Arc<SecretKeys>,
        max_lifetime: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let max_lifetime = max_lifetime.max(std::time::Duration::from_secs(1));
        Ok(KvSessionStore {
            sessions: backend.bucket("sessions", max_lifetime).await?,
            revocations: backend
                .bucket("revocations", marker_lifetime(max_lifetime))
                .await?,
            keys,
            opened: Arc::new(quick_cache::sync::Cache::new(OPENED_CAPACITY)),
            events: None,
            max_lifetime,
            clock: Arc::new(UnixTime::now),
        })
    }

    /// Use another clock for idle timeouts (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Publish revocations on `events`.
    pub fn with_events(mut self, events: Arc<dyn EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    /// The user's revocation generation now (`None`: no session of theirs
    /// was ever stored, or its marker expired). Anything made for a session
    /// — a one-time login code — can record it and be refused once it
    /// moved ([`revoke_subject`](Self::revoke_subject)).
    pub async fn generation(&self, subject: &str) -> Result<Option<u64>, StoreError> {
        match self.revocations.get(subject).await? {
            Some(marker) => parse_generation(&marker.value).map(Some),
            None => Ok(None),
        }
    }

    /// The user's current generation, its marker's TTL refreshed to
    /// `max_lifetime` (created at 0 if missing).
    async fn touch_generation(&self, subject: &str) -> Result<u64, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            match self.revocations.get(subject).await? {
                None => {
                    if self
                        .revocations
                        .put_if_absent(subject, b"0", marker_lifetime(self.max_lifetime))
                        .await?
                        .is_some()
                    {
                        return Ok(0);
                    }
                }
                Some(entry) => {
                    let generation = parse_generation(&entry.value)?;
                    if self
                        .revocations
                        .compare_and_set(
                            subject,
                            entry.revision,
                            &entry.value,
                            marker_lifetime(self.max_lifetime),
                        )
                        .await?
                        .is_some()
                    {
                        return Ok(generation);
                    }
                }
            }
        }
        Err(StoreError::Conflict {
            what: "session generation",
            key: subject.to_owned(),
        })
    }

    /// Store `session` under the cookie value `id` (replacing any), until it
    /// expires or `max_lifetime` after it began, whichever is first.
    pub async fn insert(
        &self,
        id: &str,
        session: &Session,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let end = session
            .expires
            .min(session.created.saturating_add(self.max_lifetime));
        let ttl = end.since(now).min(self.max_lifetime);
        if ttl.is_zero() {
            return Err(StoreError::Invalid {
                what: "session",
                reason: "already expired".into(),
            });
        }
        let generation = self.touch_generation(session.identity.subject()).await?;
        let stored = StoredSession {
            identity: session.identity.clone(),
            expires: end,
            created: session.created,
            generation,
            idle: session.idle_timeout.map(|d| d.as_secs().max(1)),
            seen: session.idle_timeout.map(|_| now),
        };
        let key = kv_key(id);
        let sealed = self.seal(&key, &stored)?;
        self.sessions.put(&key, &sealed, ttl).await.map(|_| ())
    }

    fn seal(&self, key: &str, stored: &StoredSession) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(stored).map_err(|e| StoreError::Invalid {
            what: "session",
            reason: e.to_string(),
        })?;
        self.keys.seal(&json, &seal_context(key))
    }

    /// Idle sessions end; sessions in use are marked seen now and then
    /// (a compare-and-set: of two nodes touching it, one writes).
    async fn check_idle(
        &self,
        key: &str,
        revision: Revision,
        stored: &StoredSession,
    ) -> Result<bool, StoreError> {
        let now = (self.clock)();
        match stored.idle_at(now) {
            Idle::InUse => {}
            Idle::Ended => {
                let _ = self.sessions.delete_if(key, revision).await;
                self.opened.remove(key);
                return Ok(false);
            }
            Idle::MarkSeen => {
                let ttl = stored.expires.since(now).min(self.max_lifetime);
                if !ttl.is_zero() {
                    let touched = StoredSession {
                        identity: stored.identity.clone(),
                        expires: stored.expires,
                        created: stored.created,
                        generation: stored.generation,
                        idle: stored.idle,
                        seen: Some(now),
                    };
                    let sealed = self.seal(key, &touched)?;
                    if let Some(rev) = self
                        .sessions
                        .compare_and_set(key, revision, &sealed, ttl)
                        .await?
                    {
                        self.opened.insert(key.to_owned(), (rev, Arc::new(touched)));
                    }
                }
            }
        }
        Ok(true)
    }

    /// Remove the session with cookie value `id` (logout). Whether it existed.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_digest(&kv_key(id)).await
    }

    /// The digest a session is stored under (SHA-256 of the cookie value,
    /// hex): a handle to end it later without keeping the cookie.
    pub fn digest(id: &str) -> String {
        kv_key(id)
    }

    /// Remove the session stored under `digest` (see [`digest`](Self::digest)).
    pub async fn remove_digest(&self, digest: &str) -> Result<bool, StoreError> {
        self.opened.remove(digest);
        self.sessions.delete(digest).await
    }

    /// End every session of `subject`, on every node sharing the store.
    pub async fn revoke_subject(&self, subject: &str) -> Result<(), StoreError> {
        let mut bumped = false;
        for _ in 0..CAS_ATTEMPTS {
            let done = match self.revocations.get(subject).await? {
                // No marker: no session of this user can be valid.
                None => self
                    .revocations
                    .put_if_absent(subject, b"1", marker_lifetime(self.max_lifetime))
                    .await?
                    .is_some(),
                Some(entry) => {
                    let next = parse_generation(&entry.value)?.saturating_add(1);
                    self.revocations
                        .compare_and_set(
                            subject,
                            entry.revision,
                            next.to_string().as_bytes(),
                            marker_lifetime(self.max_lifetime),
                        )
                        .await?
                        .is_some()
                }
            };
            if done {
                bumped = true;
                break;
            }
        }
        if !bumped {
            return Err(StoreError::Conflict {
                what: "session generation",
                key: subject.to_owned(),
            });
        }
        if let Some(events) = &self.events {
            events
                .publish(&Event::UserSessionsRevoked {
                    subject: subject.to_owned(),
                })
                .await?;
        }
        Ok(())
    }

    /// The record of `entry`, stored under `key`: opened before (same
    /// revision) or opened now. `Err` for a record that does not open or
    /// decode.
    fn opened_record(&self, key: &str, entry: &KvEntry) -> Result<Arc<StoredSession>, StoreError> {
        if let Some((_, stored)) = self
            .opened
            .get(key)
            .filter(|(revision, _)| *revision == entry.revision)
        {
            return Ok(stored);
        }
        let stored = self
            .keys
            .open(&entry.value, &seal_context(key))
            .and_then(|json| {
                serde_json::from_slice::<StoredSession>(json.expose())
                    .map_err(|e| StoreError::Corrupt(format!("session record: {e}")))
            })?;
        let stored = Arc::new(stored);
        self.opened
            .insert(key.to_owned(), (entry.revision, stored.clone()));
        Ok(stored)
    }

    async fn lookup(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let key = kv_key(id);
        let Some(entry) = self.sessions.get(&key).await? else {
            return Ok(None);
        };
        let stored = match self.opened_record(&key, &entry) {
            Ok(stored) => stored,
            // A record that does not open or decode is not a session:
            // forged, moved from another key, or sealed with a key no
            // longer configured. Refuse it like an unknown session (401),
            // not as an outage (503).
            Err(e) => {
                tracing::warn!(error = %e, "refusing a session record that does not open");
                return Ok(None);
            }
        };
        let current = match self.revocations.get(stored.identity.subject()).await? {
            Some(marker) => Some(parse_generation(&marker.value)?),
            None => None,
        };
        if current != Some(stored.generation) {
            // Revoked (or its marker is gone, which storing a session never
            // allows): refuse, and drop it. Best effort: the generation
            // check already refuses it everywhere.
            let _ = self.sessions.delete_if(&key, entry.revision).await;
            self.opened.remove(&key);
            return Ok(None);
        }
        if !self.check_idle(&key, entry.revision, &stored).await? {
            return Ok(None);
        }
        Ok(Some(stored.session()))
    }
}

impl SessionStore for KvSessionStore {
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a> {
        Box::pin(self.lookup(id))
    }

    /// Answers when both buckets answer at once ([`KvStore::get_now`]: the
    /// in-process backend) and the lookup would write nothing: the record
    /// opens, its generation is the user's current one, and no idle mark
    /// is due. The same checks as `get`, in the same order.
    fn peek(&self, id: &str) -> Option<Session> {
        let key = kv_key(id);
        let entry = self.sessions.get_now(&key)??;
        let stored = self.opened_record(&key, &entry).ok()?;
        let marker = self.revocations.get_now(stored.identity.subject())??;
        if parse_generation(&marker.value).ok()? != stored.generation {
            return None;
        }
        (stored.idle_at((self.clock)()) == Idle::InUse).then(|| stored.session())
    }
}

/// The `name=value` pairs of one `Cookie` field line, names and values
/// trimmed; pieces without `=` are skipped. The one cookie parser: the
/// session authenticator, the gateway (which drops the session cookie
/// before forwarding) and the login service must read cookies alike.
pub fn cookie_pairs(line: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    line.split(|b| *b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (n, v) = pair.split_at(eq);
        Some((n.trim_ascii(), v.get(1..).unwrap_or_default().trim_ascii()))
    })
}

/// The request's host name, without port: the URI's authority (HTTP/2,
/// absolute form) or the `Host` field. What a session's audience is
/// compared with (ASCII case-insensitively).
pub fn request_host(parts: &http::request::Parts) -> Option<&str> {
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    authority_host(authority)
}

/// The host of an authority (`Host` value or URI authority): without
/// user info and port; an IPv6 literal keeps its brackets. `None` for an
/// unclosed bracket.
pub fn authority_host(authority: &str) -> Option<&str> {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if authority.starts_with('[') {
        return authority.find(']').map(|end| &authority[..=end]);
    }
    Some(authority.split(':').next().unwrap_or(authority))
}
