//! Session cookies, looked up in a [`SessionStore`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use hexon_core::verify::Clock;
use hexon_core::{Identity, UnixTime};
use http::header::{COOKIE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Authenticator, AuthnFuture, AuthnResult};
use crate::body::BoxBody;

/// The default session cookie name. The `__Host-` prefix makes browsers
/// accept it only with `Secure`, `Path=/` and no `Domain`, so a sibling
/// subdomain cannot plant or overwrite it.
pub const DEFAULT_SESSION_COOKIE: &str = "__Host-hexon-session";

/// Longest session cookie value accepted (the store's ids are far shorter).
const MAX_COOKIE_VALUE: usize = 1024;

/// A logged-in session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// Who is logged in (its `session` field is the public session handle,
    /// never the cookie secret).
    pub identity: Identity,
    /// When the session ends.
    pub expires: UnixTime,
}

impl Session {
    /// A session for `identity` until `expires`.
    pub fn new(identity: Identity, expires: UnixTime) -> Self {
        Session { identity, expires }
    }
}

/// The future a [`SessionStore`] returns.
pub type SessionFuture<'a> = Pin<Box<dyn Future<Output = Option<Session>> + Send + 'a>>;

/// Where sessions live. `id` is the cookie value: a bearer secret. Stores
/// must look it up without leaking it through timing (hash it, or compare
/// in constant time) and must not log it.
pub trait SessionStore: Send + Sync + 'static {
    /// The session for the cookie value `id`, if it exists (expired sessions
    /// may be returned; the authenticator checks `expires`).
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a>;
}

impl<T: SessionStore + ?Sized> SessionStore for Arc<T> {
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a> {
        (**self).get(id)
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

    fn lookup(&self, id: &str) -> Option<Session> {
        let k = key(id);
        let now = (self.clock)();
        let expired = {
            let map = self.read();
            let (stored, s) = map.get_key_value(&k)?;
            if !bool::from(stored.ct_eq(&k)) {
                return None;
            }
            if s.expires > now {
                return Some(s.clone());
            }
            true
        };
        if expired {
            self.write().remove(&k);
        }
        None
    }
}

impl SessionStore for MemorySessionStore {
    fn get<'a>(&'a self, id: &'a str) -> SessionFuture<'a> {
        Box::pin(std::future::ready(self.lookup(id)))
    }
}

/// Authenticates with a session cookie (default name
/// [`DEFAULT_SESSION_COOKIE`]) looked up in a [`SessionStore`].
///
/// No such cookie: [`AuthnResult::NoCredential`]. The cookie twice, a value
/// that is empty, longer than 1 KiB or not visible ASCII, an unknown
/// (revoked) or expired session: [`AuthnResult::Invalid`]; the `401` then
/// also clears the cookie, so the browser's next request is anonymous and
/// gets the login redirect.
#[derive(Clone)]
pub struct SessionCookie {
    store: Arc<dyn SessionStore>,
    name: Arc<str>,
}

impl fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCookie")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SessionCookie {
    /// Look sessions up in `store`, cookie [`DEFAULT_SESSION_COOKIE`].
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        SessionCookie {
            store,
            name: Arc::from(DEFAULT_SESSION_COOKIE),
        }
    }

    /// Another cookie name.
    pub fn with_cookie_name(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// The cookie value on the request: `Ok(None)` if absent, `Err` if
    /// present but unacceptable.
    fn cookie<'p>(&self, parts: &'p Parts) -> Result<Option<&'p str>, &'static str> {
        let name = self.name.as_bytes();
        let mut found: Option<&[u8]> = None;
        for header in parts.headers.get_all(COOKIE) {
            for (n, v) in cookie_pairs(header.as_bytes()) {
                if n != name {
                    continue;
                }
                if found.is_some() {
                    return Err("session cookie sent more than once");
                }
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                found = Some(v);
            }
        }
        let Some(v) = found else {
            return Ok(None);
        };
        if v.is_empty() || v.len() > MAX_COOKIE_VALUE {
            return Err("session cookie empty or too long");
        }
        if !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err("session cookie is not visible ASCII");
        }
        std::str::from_utf8(v)
            .map(Some)
            .map_err(|_| "session cookie is not visible ASCII")
    }
}

impl Authenticator for SessionCookie {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        Box::pin(async move {
            let id = match self.cookie(parts) {
                Ok(None) => return AuthnResult::NoCredential,
                Ok(Some(id)) => id,
                Err(why) => return AuthnResult::invalid(why),
            };
            match self.store.get(id).await {
                None => AuthnResult::invalid("unknown or revoked session"),
                Some(s) if s.expires <= now => AuthnResult::invalid("session expired"),
                Some(s) => AuthnResult::Authenticated(s.identity),
            }
        })
    }

    fn name(&self) -> &str {
        "session_cookie"
    }

    fn challenge(&self, response: &mut Response<BoxBody>) {
        let clear = format!(
            "{}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax",
            self.name
        );
        if let Ok(v) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(SET_COOKIE, v);
        }
    }
}

/// The `name=value` pairs of one `Cookie` field line, names and values
/// trimmed; pieces without `=` are skipped. The one cookie parser: the
/// session authenticator and the gateway (which drops the session cookie
/// before forwarding) must read cookies alike.
pub fn cookie_pairs(line: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    line.split(|b| *b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (n, v) = pair.split_at(eq);
        Some((n.trim_ascii(), v.get(1..).unwrap_or_default().trim_ascii()))
    })
}
