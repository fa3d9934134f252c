//! The session cookie authenticator. Sessions themselves live in
//! [`hexon_core::store::session`] (re-exported here).

use std::fmt;
use std::sync::Arc;

use hexon_core::store::session::MAX_COOKIE_VALUE;
pub use hexon_core::store::session::{
    KvSessionStore, MemorySessionStore, Session, SessionFuture, SessionStore, cookie_pairs,
    request_host,
};
use hexon_core::{Identity, UnixTime};
use http::header::{COOKIE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Response};

use super::{Authenticator, AuthnFuture, AuthnResult};
use crate::body::BoxBody;

/// The default session cookie name. The `__Host-` prefix makes browsers
/// accept it only with `Secure`, `Path=/` and no `Domain`, so a sibling
/// subdomain cannot plant or overwrite it.
pub const DEFAULT_SESSION_COOKIE: &str = "__Host-hexon-session";

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
    check: Option<SessionCheck>,
}

/// A check of a session's identity against current state (is the user still
/// enabled?): `Err(reason)` refuses the session.
pub type SessionCheck = Arc<dyn Fn(&Identity) -> Result<(), &'static str> + Send + Sync>;

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
            check: None,
        }
    }

    /// Check every session's identity against current state before
    /// accepting it (e.g. refuse users disabled since they logged in, even if
    /// revoking their sessions failed).
    pub fn with_check(
        mut self,
        check: impl Fn(&Identity) -> Result<(), &'static str> + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(check));
        self
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
        self.value_in(
            parts
                .headers
                .get_all(COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
        )
    }

    /// The session cookie's value in a request's `Cookie` field values
    /// (`lines`): `Ok(None)` if absent, `Err` if present but unacceptable
    /// (sent twice, empty, longer than 1 KiB, not visible ASCII).
    pub fn value_in<'p>(
        &self,
        lines: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<Option<&'p str>, &'static str> {
        let name = self.name.as_bytes();
        let mut found: Option<&[u8]> = None;
        for line in lines {
            for (n, v) in cookie_pairs(line) {
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

impl SessionCookie {
    /// What [`authenticate`](Authenticator::authenticate) makes of the
    /// session `s` the store returned, on a request for `host` (without
    /// port).
    fn accept(&self, s: Session, host: Option<&str>, now: UnixTime) -> AuthnResult {
        if s.expires <= now {
            return AuthnResult::invalid("session expired");
        }
        if !audience_matches(s.identity.audience(), host) {
            return AuthnResult::invalid("session belongs to another host");
        }
        match self.check.as_ref().map_or(Ok(()), |c| c(&s.identity)) {
            Ok(()) => AuthnResult::Authenticated(s.identity),
            Err(why) => AuthnResult::invalid(why),
        }
    }

    /// The identity [`authenticate`](Authenticator::authenticate) would
    /// accept for the session cookie value `id` ([`value_in`](Self::value_in))
    /// on a request for `host` (without port), when the store can tell at
    /// once ([`SessionStore::peek`]) and the session passes every check now.
    /// `None` otherwise — not known at once, expired, revoked, for another
    /// host, refused: only the full authentication decides those.
    pub fn remembered(&self, id: &str, host: Option<&str>, now: UnixTime) -> Option<Identity> {
        match self.accept(self.store.peek(id)?, host, now) {
            AuthnResult::Authenticated(identity) => Some(identity),
            _ => None,
        }
    }
}

impl Authenticator for SessionCookie {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        let id = match self.cookie(parts) {
            Ok(None) => return AuthnFuture::ready(AuthnResult::NoCredential),
            Ok(Some(id)) => id,
            Err(why) => return AuthnFuture::ready(AuthnResult::invalid(why)),
        };
        AuthnFuture::new(async move {
            match self.store.get(id).await {
                Err(e) => AuthnResult::Unavailable(format!("session store: {e}").into()),
                Ok(None) => AuthnResult::invalid("unknown or revoked session"),
                Ok(Some(s)) => self.accept(s, request_host(parts), now),
            }
        })
    }

    fn name(&self) -> &str {
        "session_cookie"
    }

    fn credential(&self, _: &Parts) -> hexon_core::policy::Credential {
        hexon_core::policy::Credential::Session
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

    /// A browser navigating with an ended session (expired, revoked, for
    /// another host) is sent to the same URL with the cookie cleared, so
    /// it arrives anonymous and gets the login redirect instead of a
    /// dead-end 401. API calls get the 401.
    fn challenge_request(&self, parts: &Parts, response: &mut Response<BoxBody>) {
        self.challenge(response);
        let navigation = matches!(parts.method, http::Method::GET | http::Method::HEAD)
            && crate::respond::Flavor::of(&parts.headers) == crate::respond::Flavor::Html;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // Relative, and never `//host` (which a browser reads as another host).
        if navigation && target.starts_with('/') && !target.starts_with("//") {
            if let Ok(location) = HeaderValue::from_str(target) {
                *response.status_mut() = http::StatusCode::SEE_OTHER;
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
        }
    }
}

/// Whether a session scoped to `audience` (a host name) may be used on a
/// request for `host` ([`request_host`]): sessions without an audience are
/// valid on every host; scoped ones only on their host (compared without
/// port, ASCII case-insensitive). A copied cookie is useless at another
/// application.
fn audience_matches(audience: Option<&str>, host: Option<&str>) -> bool {
    let Some(audience) = audience else {
        return true;
    };
    host.is_some_and(|h| h.eq_ignore_ascii_case(audience))
}
