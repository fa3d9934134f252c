//! The declarative form of routes and rules: what configuration files and
//! admin APIs write, and what [`super`] compiles into a matcher.
//!
//! These types are plain data (serde), validated only when compiled. Every
//! field is documented in `docs/POLICY.md`.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::identity::IdentityKind;

/// One route: where it applies (host, path, methods) and who may pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name; appears in `Hexon-Route`, audit logs and explain traces.
    pub name: String,
    /// `app.example.com` (exact), `*.example.com` (any subdomain, not the apex) or `*` (any host).
    #[serde(default = "any_host")]
    pub host: String,
    /// `/exact`, `/api/*` (prefix on a segment boundary: `/api`, `/api/x/y`,
    /// never `/apiary`), or a glob with `*` (within one segment) and `**`
    /// (any number of segments), e.g. `/users/*/avatar`, `/files/**/*.pdf`.
    #[serde(default = "root_prefix")]
    pub path: String,
    /// HTTP methods this route covers; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The whole route needs no authentication. Deny rules still apply.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// Methods that need no authentication on this route (e.g. `OPTIONS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_methods: Vec<String>,
    /// Allow rules: any one that matches allows (unless a deny rule matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<RuleSpec>,
    /// Deny rules: any one that matches denies. Deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<RuleSpec>,
    /// The credentials an authenticated caller may have used on this route
    /// (e.g. `["hmac", "http_signature"]`). Empty means every kind except
    /// [`Credential::ApiKeyQuery`], which a route must list to accept.
    /// Applies to public routes too: a caller that authenticated with
    /// another kind is refused, not treated as anonymous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

/// How a caller proved who it is: the kind of credential the deciding
/// authenticator accepted. Routes restrict it with
/// [`RouteSpec::credentials`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Credential {
    /// The gateway's session cookie.
    Session,
    /// A bearer JWT (the gateway's own or a trusted issuer's).
    Jwt,
    /// A verified TLS client certificate.
    Mtls,
    /// An API key in a header (`Authorization` or the configured key header).
    ApiKey,
    /// An API key in a query parameter: only where a route lists it, since
    /// URLs end up in browser histories and access logs.
    ApiKeyQuery,
    /// An `Authorization: HMAC …` signed request (API Gatekeeper format).
    Hmac,
    /// An RFC 9421 HTTP message signature by an API client (HMAC-SHA256 or
    /// Ed25519).
    HttpSignature,
    /// An authenticator outside this list (embedders' own). Accepted by
    /// routes without a `credentials` list, and by routes that list it.
    Other,
}

impl Credential {
    /// Every kind, in declaration order.
    pub const ALL: [Credential; 8] = [
        Credential::Session,
        Credential::Jwt,
        Credential::Mtls,
        Credential::ApiKey,
        Credential::ApiKeyQuery,
        Credential::Hmac,
        Credential::HttpSignature,
        Credential::Other,
    ];

    /// The configuration name, e.g. `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Session => "session",
            Credential::Jwt => "jwt",
            Credential::Mtls => "mtls",
            Credential::ApiKey => "api_key",
            Credential::ApiKeyQuery => "api_key_query",
            Credential::Hmac => "hmac",
            Credential::HttpSignature => "http_signature",
            Credential::Other => "other",
        }
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule. *Selectors* (`users`, `groups`, `email_domains`,
/// `authenticated`) say whom it is about: the caller must match at least one.
/// *Conditions* (everything else) must all hold.
///
/// An allow rule must have a selector (write `authenticated = true` for "any
/// logged-in caller"). A deny rule without a selector applies to every caller,
/// anonymous ones included (e.g. a source-IP block).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Optional name for explain traces and audit logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Usernames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups (matched against resolved membership, so nested groups count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Email domains (`example.com`; case-insensitive; exact domain, not subdomains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_domains: Vec<String>,
    /// Matches any authenticated caller.
    #[serde(default, skip_serializing_if = "is_false")]
    pub authenticated: bool,
    /// Caller kinds (`user`, `service`); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<IdentityKind>,
    /// At least one of these authentication methods must have been used (e.g. `["webauthn"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_methods: Vec<String>,
    /// Step-up freshness: the method (one of `auth_methods`, or any method if
    /// that is empty) must have been used within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_auth_age: Option<HumanDuration>,
    /// Source address must be in one of these CIDRs (`10.0.0.0/8`, `2001:db8::/32`, or a bare address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// Time window in an IANA time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeWindowSpec>,
    /// The client certificate must carry one of these SANs: a DNS name
    /// (`svc.example.com`, or `*.example.com` for one label), an email, or a URI
    /// (`spiffe://example.org/ns/prod/sa/web`, or a prefix ending in `/*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cert_sans: Vec<String>,
}

/// Days and hours of a week, in a time zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowSpec {
    /// Days: `mon`..`sun`, or ranges like `mon-fri`. Empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Start `HH:MM` (inclusive). Default `00:00`.
    #[serde(default = "midnight")]
    pub from: String,
    /// End `HH:MM` (exclusive). Default `24:00`. `from > to` spans midnight
    /// (the day named is the day the window starts).
    #[serde(default = "end_of_day")]
    pub to: String,
    /// IANA time zone, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default = "utc")]
    pub tz: String,
}

fn any_host() -> String {
    "*".into()
}
fn root_prefix() -> String {
    "/*".into()
}
fn midnight() -> String {
    "00:00".into()
}
fn end_of_day() -> String {
    "24:00".into()
}
fn utc() -> String {
    "UTC".into()
}
fn is_false(b: &bool) -> bool {
    !*b
}
