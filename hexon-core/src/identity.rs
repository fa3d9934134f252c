//! [`Identity`]: who is calling, as established by the gateway.
//!
//! An `Identity` rides on every request, so it is an `Arc` inside: cloning is
//! one atomic increment. It is immutable once built; a changed identity (new
//! groups, a step-up) is a new value.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::UnixTime;

/// Whether the caller is a person or a machine client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdentityKind {
    /// A person, logged in through a login method.
    User,
    /// A machine client (API key, HMAC client, client credentials, mTLS workload).
    Service,
}

impl IdentityKind {
    /// The wire name (`user` / `service`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::User => "user",
            IdentityKind::Service => "service",
        }
    }

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(IdentityKind::User),
            "service" => Some(IdentityKind::Service),
            _ => None,
        }
    }
}

/// The name of an authentication method, e.g. `password`, `totp`, `webauthn`.
///
/// Names are lower-case ASCII letters, digits, `_` and `-`, 1 to 32 bytes, so
/// they are safe in headers, logs and JWT `amr` claims without escaping.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthMethod(Arc<str>);

impl AuthMethod {
    /// Password login.
    pub const PASSWORD: &'static str = "password";
    /// Time-based one-time password (RFC 6238).
    pub const TOTP: &'static str = "totp";
    /// WebAuthn / passkey.
    pub const WEBAUTHN: &'static str = "webauthn";
    /// Magic link sent by email.
    pub const MAGIC_LINK: &'static str = "magic_link";
    /// One-time code sent by email.
    pub const EMAIL_OTP: &'static str = "email_otp";
    /// X.509 client certificate.
    pub const X509: &'static str = "x509";
    /// Personal access token.
    pub const PAT: &'static str = "pat";
    /// Upstream OpenID Connect federation.
    pub const OIDC: &'static str = "oidc";
    /// API key.
    pub const API_KEY: &'static str = "api_key";
    /// HMAC-signed request.
    pub const HMAC: &'static str = "hmac";

    /// Validate and wrap a method name.
    pub fn new(name: &str) -> Result<Self, InvalidAuthMethod> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(AuthMethod(Arc::from(name)))
        } else {
            Err(InvalidAuthMethod(name.chars().take(40).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AuthMethod {
    type Error = InvalidAuthMethod;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AuthMethod::new(&s)
    }
}

impl From<AuthMethod> for String {
    fn from(m: AuthMethod) -> String {
        m.0.to_string()
    }
}

/// An authentication method name that is not of the allowed form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid authentication method name {0:?}: use 1-32 of a-z, 0-9, '_' and '-'")]
pub struct InvalidAuthMethod(pub String);

/// One authentication method the caller used, and when (the AMR entry).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthEvent {
    /// Which method.
    pub method: AuthMethod,
    /// When it was completed.
    pub at: UnixTime,
}

/// The caller's identity. Cheap to clone.
///
/// Built with [`Identity::builder`]:
///
/// ```
/// use hexon_core::{Identity, IdentityKind, UnixTime};
/// let id = Identity::builder("u-123", "alice")
///     .email("alice@example.com")
///     .groups(["eng", "admins"])
///     .auth("webauthn", UnixTime::from_secs(1_700_000_000))?
///     .session("s-1")
///     .build()?;
/// assert!(id.in_group("eng"));
/// assert_eq!(id.kind(), IdentityKind::User);
/// # Ok::<(), hexon_core::identity::IdentityError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IdentityData", into = "IdentityData")]
pub struct Identity(Arc<IdentityData>);

/// The fields of an [`Identity`], for serialization and for building one field by field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IdentityData {
    /// Stable subject id: never reused, survives renames.
    pub subject: Arc<str>,
    /// Login name.
    pub username: Arc<str>,
    /// Email address, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Arc<str>>,
    /// Human-readable name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Arc<str>>,
    /// Resolved (direct and inherited) groups, sorted and without duplicates.
    #[serde(default)]
    pub groups: Arc<[Arc<str>]>,
    /// Person or machine.
    pub kind: IdentityKind,
    /// Authentication methods used in this session, with their times.
    #[serde(default)]
    pub auth: Arc<[AuthEvent]>,
    /// Session handle. A public identifier, never the session's bearer secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Arc<str>>,
    /// The audience the identity was issued for (route, client id, backend), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Arc<str>>,
}

impl TryFrom<IdentityData> for Identity {
    type Error = IdentityError;
    fn try_from(d: IdentityData) -> Result<Self, IdentityError> {
        IdentityBuilder {
            groups: d.groups.to_vec(),
            auth: d.auth.to_vec(),
            data: d,
        }
        .build()
    }
}

impl From<Identity> for IdentityData {
    fn from(i: Identity) -> Self {
        Arc::unwrap_or_clone(i.0)
    }
}

fn normalize_groups(it: impl IntoIterator<Item = Arc<str>>) -> Arc<[Arc<str>]> {
    let mut v: Vec<Arc<str>> = it.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v.into()
}

impl Identity {
    /// Whether `other` is this very value (a clone of it), not merely an
    /// equal one: a constant-time check for caches that remember what they
    /// decided for one identity.
    pub fn ptr_eq(&self, other: &Identity) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Start building an identity for a subject id and username.
    pub fn builder(subject: impl Into<Arc<str>>, username: impl Into<Arc<str>>) -> IdentityBuilder {
        IdentityBuilder {
            data: IdentityData {
                subject: subject.into(),
                username: username.into(),
                email: None,
                display_name: None,
                groups: Arc::from(Vec::new()),
                kind: IdentityKind::User,
                auth: Arc::from(Vec::new()),
                session: None,
                audience: None,
            },
            groups: Vec::new(),
            auth: Vec::new(),
        }
    }

    /// Stable subject id.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }
    /// Login name.
    pub fn username(&self) -> &str {
        &self.0.username
    }
    /// Email address.
    pub fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }
    /// Display name.
    pub fn display_name(&self) -> Option<&str> {
        self.0.display_name.as_deref()
    }
    /// Resolved groups, sorted.
    pub fn groups(&self) -> &[Arc<str>] {
        &self.0.groups
    }
    /// Whether the identity is (directly or by inheritance) in `group`. O(log n).
    pub fn in_group(&self, group: &str) -> bool {
        self.0.groups.binary_search_by(|g| (**g).cmp(group)).is_ok()
    }
    /// Person or machine.
    pub fn kind(&self) -> IdentityKind {
        self.0.kind
    }
    /// Authentication methods used, with times.
    pub fn auth(&self) -> &[AuthEvent] {
        &self.0.auth
    }
    /// When `method` was last used in this session, if it was.
    pub fn last_auth(&self, method: &str) -> Option<UnixTime> {
        self.0
            .auth
            .iter()
            .filter(|e| e.method.as_str() == method)
            .map(|e| e.at)
            .max()
    }
    /// Session handle.
    pub fn session(&self) -> Option<&str> {
        self.0.session.as_deref()
    }
    /// Audience.
    pub fn audience(&self) -> Option<&str> {
        self.0.audience.as_deref()
    }
    /// Domain part of the email address (after the last `@`), lower-cased comparison is up to the caller.
    pub fn email_domain(&self) -> Option<&str> {
        self.email()
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d)
    }
    /// All fields.
    pub fn data(&self) -> &IdentityData {
        &self.0
    }
    /// A builder pre-filled with this identity's fields, to derive a changed identity.
    pub fn to_builder(&self) -> IdentityBuilder {
        IdentityBuilder {
            data: (*self.0).clone(),
            groups: self.0.groups.to_vec(),
            auth: self.0.auth.to_vec(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        f.debug_struct("Identity")
            .field("subject", &d.subject)
            .field("username", &d.username)
            .field("email", &d.email)
            .field("kind", &d.kind)
            .field("groups", &d.groups.len())
            .field("auth", &d.auth)
            .field("session", &d.session)
            .field("audience", &d.audience)
            .finish()
    }
}

/// Builds an [`Identity`].
#[derive(Debug, Clone)]
pub struct IdentityBuilder {
    data: IdentityData,
    groups: Vec<Arc<str>>,
    auth: Vec<AuthEvent>,
}

impl IdentityBuilder {
    /// Email address.
    pub fn email(mut self, email: impl Into<Arc<str>>) -> Self {
        self.data.email = Some(email.into());
        self
    }
    /// Display name.
    pub fn display_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.data.display_name = Some(name.into());
        self
    }
    /// Add groups (resolved: direct and inherited).
    pub fn groups<I, G>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<Arc<str>>,
    {
        self.groups.extend(groups.into_iter().map(Into::into));
        self
    }
    /// Replace all groups.
    pub fn set_groups<I, G>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = G>,
        G: Into<Arc<str>>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }
    /// Person or machine (default: person).
    pub fn kind(mut self, kind: IdentityKind) -> Self {
        self.data.kind = kind;
        self
    }
    /// Record an authentication method used at `at`.
    pub fn auth(mut self, method: &str, at: UnixTime) -> Result<Self, IdentityError> {
        self.auth.push(AuthEvent {
            method: AuthMethod::new(method)?,
            at,
        });
        Ok(self)
    }
    /// Record an already validated authentication event.
    pub fn auth_event(mut self, event: AuthEvent) -> Self {
        self.auth.push(event);
        self
    }
    /// Session handle (public id, not the bearer secret).
    pub fn session(mut self, session: impl Into<Arc<str>>) -> Self {
        self.data.session = Some(session.into());
        self
    }
    /// Audience.
    pub fn audience(mut self, audience: impl Into<Arc<str>>) -> Self {
        self.data.audience = Some(audience.into());
        self
    }
    /// Validate and build.
    pub fn build(mut self) -> Result<Identity, IdentityError> {
        if self.data.subject.is_empty() {
            return Err(IdentityError::Empty("subject"));
        }
        if self.data.username.is_empty() {
            return Err(IdentityError::Empty("username"));
        }
        if self.groups.iter().any(|g| g.is_empty()) {
            return Err(IdentityError::Empty("group name"));
        }
        self.data.groups = normalize_groups(self.groups);
        self.auth.sort_by_key(|e| e.at);
        self.data.auth = self.auth.into();
        Ok(Identity(Arc::new(self.data)))
    }
}

/// Why an identity could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A required field was empty.
    #[error("identity {0} must not be empty")]
    Empty(&'static str),
    /// An authentication method name was malformed.
    #[error(transparent)]
    AuthMethod(#[from] InvalidAuthMethod),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_sorted_dedup_and_searchable() {
        let id = Identity::builder("s", "u")
            .groups(["b", "a", "b", "c"])
            .build()
            .unwrap();
        assert_eq!(
            id.groups().iter().map(|g| &**g).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!(id.in_group("a") && id.in_group("c") && !id.in_group("d"));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            Identity::builder("", "u").build(),
            Err(IdentityError::Empty("subject"))
        );
        assert!(
            Identity::builder("s", "u")
                .auth("Web Authn", UnixTime::EPOCH)
                .is_err()
        );
        assert!(AuthMethod::new(&"a".repeat(33)).is_err());
        assert!(Identity::builder("s", "u").groups([""]).build().is_err());
    }

    #[test]
    fn last_auth_and_email_domain() {
        let id = Identity::builder("s", "u")
            .email("u@Example.com")
            .auth("password", UnixTime::from_secs(10))
            .unwrap()
            .auth("password", UnixTime::from_secs(30))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(id.last_auth("password"), Some(UnixTime::from_secs(30)));
        assert_eq!(id.last_auth("webauthn"), None);
        assert_eq!(id.email_domain(), Some("Example.com"));
    }

    #[test]
    fn serde_round_trip_normalizes() {
        let id = Identity::builder("s", "u")
            .groups(["z", "a"])
            .session("x")
            .build()
            .unwrap();
        let json = serde_json::to_string(&id).unwrap();
        let back: Identity = serde_json::from_str(&json).unwrap();
        assert_eq!(id, back);
        assert!(
            serde_json::from_str::<Identity>(r#"{"subject":"","username":"u","kind":"user"}"#)
                .is_err()
        );
        let unsorted: Identity = serde_json::from_str(
            r#"{"subject":"s","username":"u","kind":"user","groups":["b","a","a"]}"#,
        )
        .unwrap();
        assert_eq!(unsorted.groups().len(), 2);
        assert!(unsorted.in_group("a"));
    }
}
