//! `hexon.toml`: the configuration model, `${VAR}` substitution, validation
//! with precise locations, and the effective-values dump.
//!
//! ```
//! use hexon_core::config::Config;
//!
//! let text = r#"
//!     [signing]
//!     key_id = "${KEY_ID:-gw-1}"
//!
//!     [[listener]]
//!     bind = "127.0.0.1:${PORT}"
//!
//!     [[group]]
//!     name = "eng"
//!     users = ["alice"]
//!
//!     [[route]]
//!     name = "app"
//!     host = "app.example.com"
//!     upstream = ["http://127.0.0.1:9000"]
//!     [[route.allow]]
//!     groups = ["eng"]
//! "#;
//! let env = |name: &str| (name == "PORT").then(|| "8443".to_owned());
//! let config = Config::parse(text, &env)?;
//! assert_eq!(config.listeners[0].bind, "127.0.0.1:8443");
//! assert_eq!(config.signing.key_id, "gw-1");
//!
//! // Every problem, each with its place:
//! let err = Config::parse(r#"
//!     [[route]]
//!     name = "app"
//!     [[route.allow]]
//!     groups = ["eng"]
//!     [[group]]
//!     name = "ops"
//! "#, &env).unwrap_err();
//! assert_eq!(err.to_string(), r#"route[0].allow[0].groups[0]: unknown group "eng""#);
//! # Ok::<(), hexon_core::config::ConfigErrors>(())
//! ```
//!
//! Substitution happens inside string values only (after TOML parsing), so a
//! variable's value can never change the structure of the file: `${NAME}` is
//! the variable (an error naming it if unset), `${NAME:-default}` falls back
//! to `default` when unset or empty, `$$` is a literal `$`.
//!
//! Every field is documented in `docs/CONFIG.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::directory::{
    Directory, DirectoryConfig, DirectoryError, GroupRecord, SourceId, SourceSnapshot, UserRecord,
};
use crate::duration::HumanDuration;
use crate::httpsig::Binding;
use crate::policy::spec::RouteSpec;
use crate::policy::{CompileOptions, PolicyEngine};
use crate::signer::Algorithm;

/// The whole configuration file, validated.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Config {
    /// `[gateway]`: process-wide settings.
    pub gateway: GatewayConfig,
    /// `[signing]`: the key identity headers and JWTs are signed with.
    pub signing: SigningConfig,
    /// `[[listener]]`: where the gateway accepts connections.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[jwt]`: bearer tokens the gateway issues and accepts.
    pub jwt: JwtConfig,
    /// `[[trusted_issuer]]`: external token issuers whose JWTs are accepted.
    #[serde(rename = "trusted_issuer")]
    pub trusted_issuers: Vec<TrustedIssuerConfig>,
    /// `[[user]]`: local users.
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    /// `[[group]]`: local groups (more come from directory sync).
    #[serde(rename = "group")]
    pub groups: Vec<GroupConfig>,
    /// `[[route]]`: routes, their policy and upstreams.
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[state]`: where durable objects, shared state and events live.
    pub state: StateConfig,
    /// `[sql]`: the SQL bastion, kept as TOML (after `${VAR}`
    /// substitution): `hexon-sql` validates it and the gateway runs it.
    /// Skipped by `Serialize` (it holds database passwords);
    /// [`Config::non_default_values`] shows it redacted.
    #[serde(skip)]
    pub sql: Option<toml::Table>,
    /// `[ca]`: the certificate authority (and `[ca.acme]`, its ACME
    /// server), kept as TOML: `hexon-ca` validates it and the gateway runs
    /// it. Skipped by `Serialize` (it may hold EAB keys);
    /// [`Config::non_default_values`] shows it redacted.
    #[serde(skip)]
    pub ca: Option<toml::Table>,
    /// `[login]`: the login host (hexon-idp). Unset: no login pages; browsers
    /// without a session go to `gateway.login_url` or get a 401.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginConfig>,
    /// Routes from this index on came from the durable store
    /// ([`Config::with_routes`]): a second tier, matched only where no file
    /// route matches.
    #[serde(skip)]
    store_routes_from: Option<usize>,
}

/// Where durable objects live (`state.durable`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DurableBackend {
    /// Embedded SQLite in `gateway.data_dir` (single node; the default).
    #[default]
    Sqlite,
    /// PostgreSQL at `state.postgres_url` (several nodes).
    Postgres,
    /// Process memory: nothing survives a restart (tests, demos).
    Memory,
}

/// Where shared short-lived state (sessions, codes, nonces, counters) lives
/// (`state.shared`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SharedBackend {
    /// Process memory (single node; the default). Lost on restart.
    #[default]
    Memory,
    /// The durable store (SQLite or PostgreSQL): survives restarts.
    Durable,
    /// NATS JetStream at `state.nats_url` (several nodes); events go through
    /// NATS too.
    Nats,
}

/// `[state]`: where Hexon keeps what it must remember.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct StateConfig {
    /// `sqlite` (default), `postgres` or `memory`.
    pub durable: DurableBackend,
    /// The SQLite file (default `<gateway.data_dir>/hexon.db`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_path: Option<String>,
    /// PostgreSQL connection URL, e.g. `postgres://hexon@db/hexon`
    /// (use `${VAR}` for a password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema to keep Hexon's tables in (created if missing).
    pub postgres_schema: String,
    /// Largest PostgreSQL connection pool.
    pub postgres_max_connections: u32,
    /// `memory` (default), `durable` or `nats`.
    pub shared: SharedBackend,
    /// NATS server URL(s), comma-separated, e.g. `nats://10.0.0.5:4222`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Prefix of Hexon's NATS KV buckets and event stream.
    pub nats_prefix: String,
    /// NATS credentials file (`.creds`, JWT + NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_credentials_file: Option<String>,
    /// NATS token (use `${VAR}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_token: Option<String>,
    /// NATS user (with `nats_password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_user: Option<String>,
    /// NATS password (use `${VAR}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_password: Option<String>,
    /// Refuse to talk to NATS without TLS.
    pub nats_tls_required: bool,
    /// Allow a NATS connection without credentials. Whoever can write to
    /// Hexon's buckets can end sessions and replay nonces: only for a NATS
    /// that nothing else can reach.
    pub nats_allow_unauthenticated: bool,
    /// This node's name on published events (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Keys sealing secrets at rest (TOTP seeds, HMAC secrets), base64 of 32
    /// bytes, newest first: the first seals, the others only open values
    /// sealed before a rotation. Empty: a key is generated in
    /// `gateway.data_dir` (single node only). Generate with `hexon keys secret`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encryption_keys: Vec<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            durable: DurableBackend::Sqlite,
            sqlite_path: None,
            postgres_url: None,
            postgres_schema: "hexon".into(),
            postgres_max_connections: 16,
            shared: SharedBackend::Memory,
            nats_url: None,
            nats_prefix: "hexon".into(),
            nats_credentials_file: None,
            nats_token: None,
            nats_user: None,
            nats_password: None,
            nats_tls_required: false,
            nats_allow_unauthenticated: false,
            node: None,
            encryption_keys: Vec::new(),
        }
    }
}

impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("durable", &self.durable)
            .field("sqlite_path", &self.sqlite_path)
            .field(
                "postgres_url",
                &self.postgres_url.as_deref().map(redact_url),
            )
            .field("postgres_schema", &self.postgres_schema)
            .field("shared", &self.shared)
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("nats_prefix", &self.nats_prefix)
            .field("nats_credentials_file", &self.nats_credentials_file)
            .field(
                "nats_token",
                &self.nats_token.as_ref().map(|_| "[redacted]"),
            )
            .field("nats_user", &self.nats_user)
            .field(
                "nats_password",
                &self.nats_password.as_ref().map(|_| "[redacted]"),
            )
            .field("nats_tls_required", &self.nats_tls_required)
            .field(
                "nats_allow_unauthenticated",
                &self.nats_allow_unauthenticated,
            )
            .field("node", &self.node)
            .field(
                "encryption_keys",
                &format_args!("[{} redacted]", self.encryption_keys.len()),
            )
            .finish()
    }
}

pub use crate::redact::redact_url;

impl StateConfig {
    /// The SQLite file: `sqlite_path`, or `hexon.db` in `data_dir`.
    pub fn sqlite_file(&self, data_dir: &str) -> std::path::PathBuf {
        match &self.sqlite_path {
            Some(p) => std::path::PathBuf::from(p),
            None => std::path::Path::new(data_dir).join("hexon.db"),
        }
    }

    fn validate(&self, errs: &mut Errors) {
        if self.durable == DurableBackend::Postgres {
            match &self.postgres_url {
                None => errs.push(
                    "state.postgres_url",
                    "required when state.durable = \"postgres\" (e.g. \"postgres://hexon@db.internal/hexon\")",
                ),
                Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => errs.push(
                    "state.postgres_url",
                    format!("{} is not a postgres:// URL", redact_url(u)),
                ),
                Some(_) => {}
            }
            if self.encryption_keys.is_empty() {
                errs.push(
                    "state.encryption_keys",
                    "required with PostgreSQL: every node must seal and open secrets with the same keys \
                     (generate one with `hexon keys secret`)",
                );
            }
        }
        if self.durable != DurableBackend::Postgres && self.postgres_url.is_some() {
            errs.push(
                "state.postgres_url",
                "set, but state.durable is not \"postgres\"",
            );
        }
        let schema_ok = !self.postgres_schema.is_empty()
            && self.postgres_schema.len() <= 63
            && self
                .postgres_schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !self
                .postgres_schema
                .starts_with(|c: char| c.is_ascii_digit());
        if !schema_ok {
            errs.push(
                "state.postgres_schema",
                format!(
                    "{:?}: use 1-63 of a-z, 0-9, '_' (not starting with a digit)",
                    self.postgres_schema
                ),
            );
        }
        if !(1..=1000).contains(&self.postgres_max_connections) {
            errs.push(
                "state.postgres_max_connections",
                "must be between 1 and 1000",
            );
        }
        if self.shared == SharedBackend::Durable && self.durable == DurableBackend::Memory {
            errs.push(
                "state.shared",
                "\"durable\" keeps shared state in the durable store, which is \"memory\" here; use \"memory\"",
            );
        }
        if self.shared == SharedBackend::Nats {
            match &self.nats_url {
                None => errs.push(
                    "state.nats_url",
                    "required when state.shared = \"nats\" (e.g. \"nats://10.0.0.5:4222\")",
                ),
                Some(u) => {
                    for (i, part) in u.split(',').enumerate() {
                        let part = part.trim();
                        let ok = ["nats://", "tls://", "ws://", "wss://"]
                            .iter()
                            .any(|p| part.starts_with(p))
                            || part.parse::<SocketAddr>().is_ok();
                        let has_userinfo = part.split_once("://").is_some_and(|(_, r)| {
                            r.split(['/', '?']).next().is_some_and(|a| a.contains('@'))
                        });
                        if !ok {
                            errs.push(
                                "state.nats_url",
                                format!(
                                    "server #{i} {:?} is not a nats:// or tls:// URL",
                                    redact_url(part)
                                ),
                            );
                        } else if has_userinfo {
                            errs.push(
                                "state.nats_url",
                                format!(
                                    "server #{i} {:?} has credentials in the URL, which the NATS client ignores; \
                                     use state.nats_credentials_file, nats_token or nats_user + nats_password",
                                    redact_url(part)
                                ),
                            );
                        }
                    }
                }
            }
            let methods = [
                self.nats_credentials_file.is_some(),
                self.nats_token.is_some(),
                self.nats_user.is_some() || self.nats_password.is_some(),
            ];
            match methods.iter().filter(|m| **m).count() {
                0 if !self.nats_allow_unauthenticated => errs.push(
                    "state.nats_credentials_file",
                    "NATS needs credentials: whoever can write to Hexon's buckets can forge and end sessions \
                     and replay nonces. Set nats_credentials_file, nats_token or nats_user + nats_password \
                     (or nats_allow_unauthenticated = true for a NATS nothing else can reach)",
                ),
                0 | 1 => {}
                _ => errs.push(
                    "state.nats_token",
                    "choose one of nats_credentials_file, nats_token, nats_user + nats_password",
                ),
            }
            if self.nats_user.is_some() != self.nats_password.is_some() {
                errs.push("state.nats_user", "nats_user and nats_password go together");
            }
            // Sessions in the shared KV are sealed with these keys: a key
            // generated per node would make every node refuse the sessions
            // the others made. (PostgreSQL already requires them above.)
            if self.encryption_keys.is_empty() && self.durable != DurableBackend::Postgres {
                errs.push(
                    "state.encryption_keys",
                    "required with shared = \"nats\": sessions are sealed with these keys and every node \
                     must open what any node sealed (generate one with `hexon keys secret`)",
                );
            }
        } else if self.nats_url.is_some() {
            errs.push("state.nats_url", "set, but state.shared is not \"nats\"");
        }
        let prefix_ok = !self.nats_prefix.is_empty()
            && self.nats_prefix.len() <= 32
            && self
                .nats_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !prefix_ok {
            errs.push("state.nats_prefix", "use 1-32 of a-z, 0-9, '-'");
        }
        if let Some(node) = &self.node {
            if node.is_empty()
                || node.len() > 64
                || node.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                errs.push("state.node", "use 1-64 printable characters without spaces");
            }
        }
        #[cfg(feature = "store")]
        if let Err(e) = crate::store::SecretKeys::from_base64(&self.encryption_keys) {
            if !self.encryption_keys.is_empty() {
                errs.push("state.encryption_keys", e.to_string());
            }
        }
        #[cfg(not(feature = "store"))]
        for (i, k) in self.encryption_keys.iter().enumerate() {
            if k.trim().len() < 43 {
                // Same location as with the `store` feature, which checks
                // the keys fully (a feature must not change the messages).
                errs.push(
                    "state.encryption_keys",
                    format!("key {i} must be base64 of 32 bytes"),
                );
            }
        }
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Development mode: self-signed TLS when no certificate is configured,
    /// verbose errors in logs. Never in production.
    pub dev: bool,
    /// Where the embedded state (keys, SQLite) lives.
    pub data_dir: String,
    /// Where browsers without a session are sent (`?rd=<original URL>` is
    /// appended). Unset: they get a 401 like API clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_url: Option<String>,
    /// Admin listener for `/metrics`, `/healthz`, `/readyz` (e.g. `127.0.0.1:9090`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_bind: Option<String>,
    /// Audit log: `stdout` (one JSON line per request), `off`, or a file path.
    pub audit: String,
    /// Proxies (CIDRs) whose `X-Request-Id` and `X-Forwarded-For` are trusted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Largest request body forwarded, in bytes (413 above).
    pub max_body_bytes: u64,
    /// Path of the forward-auth endpoint (nginx `auth_request`, Traefik,
    /// Caddy), on every listener and host, e.g. `/authz`. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_auth_path: Option<String>,
    /// Header API clients may send their key in (besides `Authorization`).
    pub api_key_header: String,
    /// Query parameter API clients may send their key in (e.g. `api_key`),
    /// accepted only on routes that list `api_key_query` in `credentials`.
    /// Unset: keys in URLs are never read (the parameter reaches upstreams
    /// untouched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_query_param: Option<String>,
    /// Group whose (enabled) members may use the admin API.
    pub admin_group: String,
    /// Threads serving HTTP connections, each with its own single-threaded
    /// runtime (a connection stays on one thread: no cross-thread
    /// wake-ups). Unset: one per CPU. `0`: serve on the main runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_threads: Option<usize>,
    /// Pin connection thread `i` to the `i`-th CPU the process may use, and
    /// place each new connection on the thread of the CPU its packets
    /// arrive on. Unset: on when there are connection threads and the
    /// process may use every CPU of the host
    /// (`hexon_core::rt::host_defaults_apply`; not under a CPU quota or affinity
    /// mask, where a pinned thread could share its CPU with anything).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_connection_threads: Option<bool>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            dev: false,
            data_dir: "./hexon-data".into(),
            login_url: None,
            admin_bind: None,
            audit: "stdout".into(),
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024 * 1024,
            forward_auth_path: None,
            api_key_header: "X-API-Key".into(),
            api_key_query_param: None,
            connection_threads: None,
            pin_connection_threads: None,
            admin_group: "admins".into(),
        }
    }
}

/// `[jwt]`: the gateway's own bearer tokens (`hexon token`, `identity = "jwt"` routes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct JwtConfig {
    /// `iss` of tokens the gateway issues, and the issuer it accepts for its own tokens.
    pub issuer: String,
    /// `aud` the gateway accepts on bearer tokens presented to it.
    pub audience: String,
    /// Lifetime of tokens `hexon token` mints.
    pub lifetime: HumanDuration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: "hexon".into(),
            audience: "hexon".into(),
            lifetime: HumanDuration(std::time::Duration::from_secs(3600)),
        }
    }
}

/// `[[trusted_issuer]]`: an external OpenID provider / token issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrustedIssuerConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Where its public keys are (`https://…/jwks.json`; `http://` only for loopback).
    pub jwks_url: String,
    /// Expected `aud`.
    pub audience: String,
}

/// `[[user]]`: a local user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UserConfig {
    /// Username (also the subject id in the local directory source).
    pub name: String,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Disabled users cannot authenticate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Initial password as an argon2id PHC string (`hexon hash-password`).
    /// A password the user sets on the login host replaces it. `hexon
    /// check` prints it redacted.
    #[serde(default, skip_serializing)]
    pub password_hash: Option<String>,
}

/// `[login]`: the central login host (see docs/LOGIN.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LoginConfig {
    /// Public base URL of the login host, e.g. `https://auth.example.com`
    /// (with the port when not the default). Requests to its host are
    /// answered by the login service; every protected host returns through
    /// `/.hexon/callback` on the same scheme and port.
    pub url: String,
    /// Hosts browsers may be returned to besides the hosts of `[[route]]`s
    /// (exact names, or `*.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub return_hosts: Vec<String>,
    /// A session ends this long after its last use.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// A session ends this long after login, however active.
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime: HumanDuration,
    /// Password hashing (argon2id).
    #[serde(default)]
    pub password: PasswordHashConfig,
    /// Growing delays against guessing.
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// Name, logo and colours of the login pages.
    #[serde(default)]
    pub brand: BrandConfig,
    /// Sign-in codes and links by email. Unset: not offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailLoginConfig>,
}

/// `[login.email]`: one-time codes and magic links sent over SMTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EmailLoginConfig {
    /// SMTP server: `smtps://user:pass@mail.example.com:465` (implicit
    /// TLS), `smtp://mail.example.com:587?tls=required` (STARTTLS), or
    /// `smtp://127.0.0.1:25` (plain: loopback only, or `gateway.dev`).
    /// `hexon check` prints it with its credentials redacted.
    #[serde(skip_serializing)]
    pub smtp_url: String,
    /// Sender, e.g. `Example Corp <login@example.com>`.
    pub from: String,
    /// How long a code or link works.
    #[serde(default = "default_email_ttl")]
    pub ttl: HumanDuration,
}

fn default_email_ttl() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3600))
}

fn default_session_lifetime() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(12 * 3600))
}

/// `[login.password]`: argon2id cost and the hashing pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PasswordHashConfig {
    /// Memory per hash in KiB (OWASP: at least 19456).
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Threads that hash (a login flood queues here, not on the proxy).
    pub threads: usize,
    /// Hashes that may wait for a thread; beyond that a login gets "busy,
    /// try again" (503) at once.
    pub queue: usize,
    /// Shortest password accepted when a user sets one.
    pub min_length: usize,
}

impl Default for PasswordHashConfig {
    fn default() -> Self {
        PasswordHashConfig {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            threads: 1,
            queue: 64,
            min_length: 12,
        }
    }
}

/// `[login.throttle]`: failed logins per user and per client address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ThrottleConfig {
    /// Failures allowed before delays start.
    pub free_failures: u32,
    /// First delay; each further failure doubles it.
    pub base_delay: HumanDuration,
    /// Longest delay.
    pub max_delay: HumanDuration,
    /// Failures are forgotten this long after the last one.
    pub window: HumanDuration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 3,
            base_delay: HumanDuration(std::time::Duration::from_secs(2)),
            max_delay: HumanDuration(std::time::Duration::from_secs(15 * 60)),
            window: HumanDuration(std::time::Duration::from_secs(3600)),
        }
    }
}

/// `[login.brand]`: how the login pages look.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct BrandConfig {
    /// Product name in titles and headings.
    pub name: String,
    /// Logo image URL (`https://…` or a path on the login host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// Accent colour (`#rrggbb`): buttons, links, focus rings.
    pub accent_color: String,
    /// Page background (`#rrggbb`).
    pub background_color: String,
}

impl Default for BrandConfig {
    fn default() -> Self {
        BrandConfig {
            name: "Hexon".into(),
            logo_url: None,
            accent_color: "#1f5fbf".into(),
            background_color: "#f4f6fa".into(),
        }
    }
}

/// `[signing]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SigningConfig {
    /// PKCS#8 PEM private key file. Unset: a key is generated in `data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Key id published in the JWKS and put in every signature.
    pub key_id: String,
    /// `ed25519` (default) or `ecdsa-p256-sha256`.
    pub algorithm: Algorithm,
    /// Signature lifetime (`expires - created`).
    pub lifetime: HumanDuration,
    /// Largest identity header the gateway will send.
    pub max_header_bytes: usize,
    /// Keys published in the JWKS (and accepted for the gateway's own bearer
    /// tokens) without signing with them: the next key before a rotation,
    /// the previous one after it. See docs/CONFIG.md, "Rotating the signing
    /// key".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PublishedKey>,
}

/// `[[signing.publish]]`: a verification key the gateway publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PublishedKey {
    /// PKCS#8 PEM private key file (only its public half is used).
    pub key_file: String,
    /// Key id in the JWKS and in the signatures the key made or will make.
    pub key_id: String,
    /// The key's algorithm; defaults to `signing.algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            key_file: None,
            key_id: "hexon-1".into(),
            algorithm: Algorithm::Ed25519,
            lifetime: HumanDuration(std::time::Duration::from_secs(120)),
            max_header_bytes: 16 * 1024,
            publish: Vec::new(),
        }
    }
}

/// `[[listener]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Name for logs and metrics.
    #[serde(default = "default_listener_name")]
    pub name: String,
    /// `address:port` to bind, e.g. `0.0.0.0:8443` or `[::]:443`.
    pub bind: String,
    /// TLS; without it the listener speaks plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Expect a PROXY protocol (v1/v2) header from a load balancer.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Time for the TLS handshake (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout: Option<HumanDuration>,
    /// Time for an HTTP/1 request head to arrive (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<HumanDuration>,
    /// Largest request head in bytes (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<usize>,
    /// Most header fields in an HTTP/1 request (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<usize>,
    /// HTTP/1 keep-alive (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<bool>,
    /// HTTP/2 PING interval to detect dead peers (default 60s; "0s" turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive_interval: Option<HumanDuration>,
    /// HTTP/2 concurrent streams per connection (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Accept HTTP/2 with prior knowledge (h2c) on a plain listener (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2c: Option<bool>,
    /// Read HTTP/1.1 requests without a body with the gateway's own reader
    /// and writer instead of hyper's server (default true; `false` is the
    /// way back should a client meet a difference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_http1: Option<bool>,
    /// Serve the common request (a bearer token verified before, allowed,
    /// its signature cached, an `http://` upstream) on the express lane,
    /// without the tower stack (default true; needs `fast_http1`). `false`
    /// sends every request through the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub express: Option<bool>,
    /// Most simultaneous connections; at the limit new ones wait in the
    /// kernel's backlog (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Serve this listener's connections on the connection threads
    /// (`gateway.connection_threads`; default true). `false`: on the main
    /// multi-threaded runtime, which balances better when a few keep-alive
    /// connections carry most requests (a listener only nginx
    /// `auth_request` talks to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_threads: Option<bool>,
}

fn default_listener_name() -> String {
    "http".into()
}

/// `[listener.tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM certificate chain file. With `key`; both unset only in dev mode
    /// (a self-signed certificate is generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// More certificate/key pairs, chosen by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
    /// PEM CA bundle: clients present a certificate it issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// With `client_ca`: `"required"` (default) or `"optional"`.
    #[serde(default)]
    pub client_auth: ClientAuthMode,
    /// Lowest TLS version: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: MinTlsVersion,
    /// Staple OCSP responses for certificates that name a responder
    /// (default true).
    #[serde(default = "default_true")]
    pub ocsp_stapling: bool,
    /// `[listener.tls.acme]`: obtain and renew the certificate from an ACME
    /// CA instead of `cert`/`key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeClientConfig>,
}

fn default_true() -> bool {
    true
}

/// `[listener.tls.acme]`: the listener's certificate from an ACME CA.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AcmeClientConfig {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Names to obtain the certificate for (DNS names or IP addresses).
    pub domains: Vec<String>,
    /// Contact URIs (`mailto:ops@example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// `"tls-alpn-01"` (default: answered on this listener) or `"http-01"`
    /// (answered on the gateway's plain-HTTP listeners).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// PEM bundle to trust for the CA's HTTPS endpoint besides the web's
    /// roots (a private or test CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// External Account Binding key id (with `eab_hmac_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab_kid: Option<String>,
    /// External Account Binding MAC key, base64url as CAs hand it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab_hmac_key: Option<String>,
    /// Ask for must-staple certificates (RFC 7633).
    #[serde(default)]
    pub must_staple: bool,
    /// Renew this long before expiry when the CA gives no renewal window
    /// (default: a third of the lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<HumanDuration>,
}

impl fmt::Debug for AcmeClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClientConfig")
            .field("directory", &self.directory)
            .field("domains", &self.domains)
            .field("contact", &self.contact)
            .field("challenge", &self.challenge)
            .field("ca_bundle", &self.ca_bundle)
            .field("eab_kid", &self.eab_kid)
            .field(
                "eab_hmac_key",
                &self.eab_hmac_key.as_ref().map(|_| "[redacted]"),
            )
            .field("must_staple", &self.must_staple)
            .field("renew_before", &self.renew_before)
            .finish()
    }
}

/// `listener.tls.acme.challenge`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AcmeChallenge {
    /// RFC 8737, on the TLS listener.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3, on plain-HTTP listeners.
    #[serde(rename = "http-01")]
    Http01,
}

/// `listener.tls.client_auth`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClientAuthMode {
    /// Clients must present a certificate issued by `client_ca`.
    #[default]
    Required,
    /// Clients may present one; other credentials may authenticate otherwise.
    Optional,
}

/// `listener.tls.min_version`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[[listener.tls.sni]]`: another certificate, served for the names in its SANs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SniCertificate {
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// `[[group]]`: a local group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GroupConfig {
    /// Group name, as rules refer to it.
    pub name: String,
    /// Usernames that are direct members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups that are members of this group (nesting: their members are members here too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// How a route passes the caller's identity to its upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdentityMode {
    /// RFC 9421 signed `Hexon-*` headers (default).
    #[default]
    Headers,
    /// `Authorization: Bearer <JWT>`.
    Jwt,
    /// Nothing (public assets, health checks).
    None,
}

/// `[[route]]`: a [`RouteSpec`] (match + policy) plus where and how to forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Match and policy.
    #[serde(flatten)]
    pub spec: RouteSpec,
    /// Upstream base URLs (`http://` or `https://`), balanced round-robin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<String>,
    /// How the identity reaches the upstream.
    pub identity: IdentityMode,
    /// Signed-header binding (`bind_request`, `bind_body`).
    #[serde(flatten)]
    pub binding: RouteBinding,
    /// Timeouts, limits and TLS towards the upstreams.
    #[serde(flatten)]
    pub upstream_options: UpstreamOptions,
}

/// Per-route upstream settings (all optional; the gateway's defaults apply).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct UpstreamOptions {
    /// Time to establish a connection (default 5s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// Time until the upstream's response head (default 60s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<HumanDuration>,
    /// Longest pause while streaming a response body (default 60s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// Upper bound on the whole exchange (default none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<HumanDuration>,
    /// Largest request body for this route (default `gateway.max_body_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// PEM CA bundle for `https://` upstreams (default: the public web roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<String>,
    /// PEM client certificate chain for mTLS to the upstream (with `upstream_client_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_client_cert: Option<String>,
    /// PEM private key of `upstream_client_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_client_key: Option<String>,
}

/// Per-route signature binding, in config form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RouteBinding {
    /// Bind signatures to method, path, query and a nonce.
    pub bind_request: bool,
    /// Also bind the body through `Content-Digest`.
    pub bind_body: bool,
}

impl RouteBinding {
    /// As the signer's [`Binding`].
    pub fn to_binding(self) -> Binding {
        Binding {
            request: self.bind_request || self.bind_body,
            content_digest: self.bind_body,
        }
    }
}

/// The directory source name of `[[group]]` definitions.
pub const CONFIG_SOURCE: &str = "config";

/// Keys of `[[route]]` that belong to forwarding, not to the [`RouteSpec`].
const ROUTE_FORWARD_KEYS: [&str; 12] = [
    "upstream",
    "identity",
    "bind_request",
    "bind_body",
    "connect_timeout",
    "response_timeout",
    "idle_timeout",
    "total_timeout",
    "max_body_bytes",
    "upstream_ca",
    "upstream_client_cert",
    "upstream_client_key",
];
const SECTIONS: [&str; 12] = [
    "gateway",
    "state",
    "signing",
    "jwt",
    "trusted_issuer",
    "listener",
    "user",
    "group",
    "route",
    "sql",
    "login",
    "ca",
];

/// One configuration problem and where it is (`route[3].allow[0].groups[1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// Dotted path into the file; empty for the file as a whole.
    pub location: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl ConfigError {
    /// A problem at `location` (for sections validated outside this crate,
    /// such as `[sql]`).
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// Every problem found (never just the first), one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(e, f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            location: location.into(),
            message: message.into(),
        });
    }
}

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

impl Config {
    /// Read and validate a file, substituting from the process environment.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                location: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parse and validate TOML text; `env` resolves `${VAR}`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut errs = Errors(Vec::new());
        if text.len() > MAX_CONFIG_BYTES {
            errs.push("", format!("file is larger than {MAX_CONFIG_BYTES} bytes"));
            return Err(ConfigErrors(errs.0));
        }
        let mut doc: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                errs.push("", format!("not valid TOML: {}", e.message().trim()));
                if let Some(span) = e.span() {
                    let line = text
                        .get(..span.start)
                        .map_or(0, |t| t.matches('\n').count())
                        + 1;
                    if let Some(first) = errs.0.first_mut() {
                        first.message = format!("line {line}: {}", first.message);
                    }
                }
                return Err(ConfigErrors(errs.0));
            }
        };
        for (k, v) in doc.iter_mut() {
            substitute_value(v, k, env, &mut errs);
        }
        // A value that could not be substituted would only produce follow-up
        // errors about the unsubstituted text: report the variables first.
        if !errs.0.is_empty() {
            return Err(ConfigErrors(errs.0));
        }

        let mut config = Config::default();
        for (key, value) in doc {
            match key.as_str() {
                "gateway" => {
                    if let Some(v) = section(value, &key, &mut errs) {
                        config.gateway = v;
                    }
                }
                "signing" => {
                    if let Some(v) = section(value, &key, &mut errs) {
                        config.signing = v;
                    }
                }
                "jwt" => {
                    if let Some(v) = section(value, &key, &mut errs) {
                        config.jwt = v;
                    }
                }
                "state" => {
                    if let Some(v) = section(value, &key, &mut errs) {
                        config.state = v;
                    }
                }
                "trusted_issuer" => {
                    config.trusted_issuers = array(value, "trusted_issuer", &mut errs, section)
                }
                "user" => config.users = array(value, "user", &mut errs, section),
                "listener" => config.listeners = array(value, "listener", &mut errs, section),
                "group" => config.groups = array(value, "group", &mut errs, section),
                "route" => config.routes = array(value, "route", &mut errs, route),
                "login" => {
                    if let Some(v) = section(value, &key, &mut errs) {
                        config.login = Some(v);
                    }
                }
                "sql" => match value {
                    toml::Value::Table(t) => config.sql = Some(t),
                    _ => errs.push("sql", "must be a table ([sql])".to_owned()),
                },
                "ca" => match value {
                    toml::Value::Table(t) => config.ca = Some(t),
                    _ => errs.push("ca", "must be a table ([ca])".to_owned()),
                },
                other => errs.push(
                    other,
                    format!("unknown section; expected one of {}", SECTIONS.join(", ")),
                ),
            }
        }
        config.validate(&mut errs);
        if errs.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errs.0))
        }
    }

    fn validate(&self, errs: &mut Errors) {
        self.validate_login(errs);
        check_key_id(errs, "signing.key_id", &self.signing.key_id);
        let mut seen = std::collections::HashSet::from([self.signing.key_id.as_str()]);
        for (i, p) in self.signing.publish.iter().enumerate() {
            let at = format!("signing.publish[{i}]");
            check_key_id(errs, &format!("{at}.key_id"), &p.key_id);
            if !seen.insert(p.key_id.as_str()) {
                errs.push(
                    format!("{at}.key_id"),
                    format!(
                        "key id {:?} is already used by signing.key_id or another published key",
                        p.key_id
                    ),
                );
            }
            if p.key_file.is_empty() {
                errs.push(format!("{at}.key_file"), "must not be empty");
            }
        }
        let lifetime = self.signing.lifetime.get().as_secs();
        if !(1..=3600).contains(&lifetime) {
            errs.push("signing.lifetime", "must be between 1s and 1h");
        }
        if self.signing.max_header_bytes < 256 {
            errs.push("signing.max_header_bytes", "must be at least 256");
        }
        if self.gateway.data_dir.is_empty() {
            errs.push("gateway.data_dir", "must not be empty");
        }
        self.state.validate(errs);

        if let Some(url) = &self.gateway.login_url {
            if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
            {
                errs.push(
                    "gateway.login_url",
                    "must be an http(s) URL or an absolute path",
                );
            }
        }
        if let Some(p) = &self.gateway.forward_auth_path {
            let plain = p.starts_with('/')
                && p.len() <= 256
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"?#%".contains(&b));
            if self.gateway.trusted_proxies.is_empty() {
                errs.push(
                    "gateway.forward_auth_path",
                    "needs gateway.trusted_proxies: only the proxies (nginx, Traefik, Caddy) may ask, list their addresses",
                );
            }
            if !plain {
                errs.push(
                    "gateway.forward_auth_path",
                    format!("{p:?} must be a plain absolute path such as \"/authz\" (no query, no percent-encoding)"),
                );
            }
        }
        if http_token(&self.gateway.api_key_header).is_none() {
            errs.push(
                "gateway.api_key_header",
                format!("{:?} is not a header name", self.gateway.api_key_header),
            );
        }
        if self.gateway.connection_threads.is_some_and(|n| n > 256) {
            errs.push(
                "gateway.connection_threads",
                "at most 256; one thread serves many connections (leave it unset for one per CPU)",
            );
        }
        if self.gateway.pin_connection_threads == Some(true)
            && self.gateway.connection_threads == Some(0)
        {
            errs.push(
                "gateway.pin_connection_threads",
                "needs connection threads, and connection_threads = 0 turns them off (remove one of the two)",
            );
        }
        match &self.gateway.api_key_query_param {
            Some(p) if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => errs.push(
                "gateway.api_key_query_param",
                format!("{p:?} must be a plain parameter name such as \"api_key\" (letters, digits, - _ .)"),
            ),
            Some(_) => {}
            None => {
                let wants = |r: &RouteConfig| r.spec.credentials.contains(&crate::policy::Credential::ApiKeyQuery);
                if let Some(i) = self.routes.iter().position(wants) {
                    errs.push(
                        format!("route[{i}].credentials"),
                        "lists \"api_key_query\" but gateway.api_key_query_param is not set: name the query parameter (e.g. \"api_key\")",
                    );
                }
            }
        }
        if let Some(a) = &self.gateway.admin_bind {
            if a.parse::<SocketAddr>().is_err() {
                errs.push(
                    "gateway.admin_bind",
                    format!("{a:?} is not an address:port"),
                );
            }
        }
        let audit = self.gateway.audit.as_str();
        if audit.is_empty() {
            errs.push("gateway.audit", "write \"stdout\", \"off\" or a file path");
        }
        for (i, c) in self.gateway.trusted_proxies.iter().enumerate() {
            if c.parse::<ipnet::IpNet>().is_err() && c.parse::<std::net::IpAddr>().is_err() {
                errs.push(
                    format!("gateway.trusted_proxies[{i}]"),
                    format!("{c:?} is not a CIDR (e.g. \"10.0.0.0/8\") or an address"),
                );
            }
        }
        if self.jwt.issuer.is_empty() {
            errs.push("jwt.issuer", "must not be empty");
        }
        if self.jwt.audience.is_empty() {
            errs.push("jwt.audience", "must not be empty");
        }
        for (i, t) in self.trusted_issuers.iter().enumerate() {
            if t.issuer.is_empty() {
                errs.push(format!("trusted_issuer[{i}].issuer"), "must not be empty");
            }
            if t.issuer == self.jwt.issuer {
                errs.push(
                    format!("trusted_issuer[{i}].issuer"),
                    "is the gateway's own issuer (jwt.issuer); choose another",
                );
            }
            if let Err(why) = check_jwks_url(&t.jwks_url) {
                errs.push(format!("trusted_issuer[{i}].jwks_url"), why);
            }
        }
        let mut user_names = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                errs.push(format!("user[{i}].name"), "must not be empty");
            } else if !user_names.insert(u.name.as_str()) {
                errs.push(
                    format!("user[{i}].name"),
                    format!("duplicate user {:?}", u.name),
                );
            }
        }

        let mut names = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.bind.parse::<SocketAddr>().is_err() {
                errs.push(
                    format!("listener[{i}].bind"),
                    format!(
                        "{:?} is not an address:port (e.g. \"0.0.0.0:8443\", \"[::]:443\")",
                        l.bind
                    ),
                );
            }
            if !names.insert(l.name.as_str()) {
                errs.push(
                    format!("listener[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            let one = std::time::Duration::from_secs(1);
            let ten_minutes = std::time::Duration::from_secs(600);
            for (key, value, zero_is_off) in [
                ("tls_handshake_timeout", &l.tls_handshake_timeout, false),
                ("header_read_timeout", &l.header_read_timeout, false),
                (
                    "http2_keep_alive_interval",
                    &l.http2_keep_alive_interval,
                    true,
                ),
            ] {
                let bad = value
                    .as_ref()
                    .map(|d| d.get())
                    .is_some_and(|v| v > ten_minutes || (v < one && !(zero_is_off && v.is_zero())));
                if bad {
                    errs.push(
                        format!("listener[{i}].{key}"),
                        if zero_is_off {
                            "must be \"0s\" (off) or between 1s and 10m"
                        } else {
                            "must be between 1s and 10m"
                        },
                    );
                }
            }
            let ranges: [(&str, Option<usize>, usize, usize); 4] = [
                (
                    "max_header_bytes",
                    l.max_header_bytes,
                    8 * 1024,
                    1024 * 1024,
                ),
                ("max_headers", l.max_headers, 1, 1000),
                (
                    "http2_max_concurrent_streams",
                    l.http2_max_concurrent_streams.map(|n| n as usize),
                    1,
                    10_000,
                ),
                ("max_connections", l.max_connections, 1, 10_000_000),
            ];
            for (key, value, lo, hi) in ranges {
                if value.is_some_and(|v| v < lo || v > hi) {
                    errs.push(
                        format!("listener[{i}].{key}"),
                        format!("must be between {lo} and {hi}"),
                    );
                }
            }
            if let Some(acme) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) {
                let at = format!("listener[{i}].tls.acme");
                if !acme.directory.starts_with("https://") {
                    errs.push(
                        format!("{at}.directory"),
                        "must be an https:// URL (ACME is HTTPS only)",
                    );
                }
                if acme.domains.is_empty() {
                    errs.push(format!("{at}.domains"), "name at least one domain");
                }
                for (j, d) in acme.domains.iter().enumerate() {
                    let ok = d.parse::<std::net::IpAddr>().is_ok()
                        || (!d.is_empty()
                            && d.len() <= 253
                            && d.split('.').all(|label| {
                                !label.is_empty()
                                    && label.len() <= 63
                                    && label
                                        .bytes()
                                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            }));
                    if !ok {
                        errs.push(
                            format!("{at}.domains[{j}]"),
                            format!("{d:?} is not a DNS name or IP address (wildcards need dns-01, which the listener cannot answer)"),
                        );
                    }
                }
                if acme.eab_kid.is_some() != acme.eab_hmac_key.is_some() {
                    errs.push(
                        at.clone(),
                        "eab_kid and eab_hmac_key go together (the CA hands out both)",
                    );
                }
                if let Some(k) = &acme.eab_hmac_key {
                    use base64::Engine as _;
                    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(k.trim_end_matches('='));
                    if decoded.map_or(true, |d| d.is_empty()) {
                        errs.push(
                            format!("{at}.eab_hmac_key"),
                            "not base64url (paste the key exactly as the CA gave it)",
                        );
                    }
                }
                let tls = l.tls.as_ref();
                if acme.must_staple && tls.is_some_and(|t| !t.ocsp_stapling) {
                    errs.push(
                        format!("{at}.must_staple"),
                        "must-staple certificates need ocsp_stapling = true (clients refuse them unstapled)",
                    );
                }
                if acme.challenge == AcmeChallenge::TlsAlpn01
                    && tls.is_some_and(|t| {
                        t.client_ca.is_some() && t.client_auth == ClientAuthMode::Required
                    })
                {
                    errs.push(
                        format!("{at}.challenge"),
                        "tls-alpn-01 cannot pass on a listener that requires client certificates (the CA has none): use client_auth = \"optional\" or http-01",
                    );
                }
                if !l
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    errs.push(
                        format!("listener[{i}].name"),
                        "a listener with [listener.tls.acme] keeps its state in <data_dir>/acme/<name>: use letters, digits, - and _",
                    );
                }
                if acme.challenge == AcmeChallenge::Http01
                    && !self.listeners.iter().any(|l| l.tls.is_none())
                {
                    errs.push(
                        format!("{at}.challenge"),
                        "http-01 is answered on a plain-HTTP listener: add one (port 80 for public CAs) or use tls-alpn-01",
                    );
                }
            }
            if let Some(tls) = &l.tls {
                match (&tls.cert, &tls.key) {
                    (None, None) if tls.acme.is_some() => {}
                    (Some(_), _) | (_, Some(_)) if tls.acme.is_some() => errs.push(
                        format!("listener[{i}].tls"),
                        "cert/key and acme exclude each other: the ACME client provides the certificate",
                    ),
                    (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {}
                    (None, None) if self.gateway.dev => {}
                    (None, None) => errs.push(
                        format!("listener[{i}].tls"),
                        "no certificate: set cert and key (or gateway.dev = true for a \
                         self-signed development certificate)",
                    ),
                    _ => errs.push(
                        format!("listener[{i}].tls"),
                        "cert and key go together: set both to PEM files",
                    ),
                }
            }
        }

        let groups: BTreeSet<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        let mut seen = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if g.name.is_empty() {
                errs.push(format!("group[{i}].name"), "must not be empty");
            }
            if !seen.insert(g.name.as_str()) {
                errs.push(
                    format!("group[{i}].name"),
                    format!("duplicate group {:?}", g.name),
                );
            }
            if !self.users.is_empty() {
                for (j, u) in g.users.iter().enumerate() {
                    if !user_names.contains(u.as_str()) {
                        errs.push(
                            format!("group[{i}].users[{j}]"),
                            format!("unknown user {u:?} (define it with [[user]])"),
                        );
                    }
                }
            }
            for (j, member) in g.groups.iter().enumerate() {
                if !groups.contains(member.as_str()) {
                    errs.push(
                        format!("group[{i}].groups[{j}]"),
                        format!("unknown group {member:?}"),
                    );
                }
            }
        }
        // Cycles and nesting depth: the directory refuses them with the path.
        // Only once names are sound, so its errors are not duplicates.
        if errs
            .0
            .iter()
            .all(|e| !e.location.starts_with("group") && !e.location.starts_with("user"))
        {
            if let Err(e) = self.directory() {
                errs.push("group", e.to_string());
            }
        }

        for (i, r) in self.routes.iter().enumerate() {
            if r.spec.name == self.jwt.audience {
                errs.push(
                    format!("route[{i}].name"),
                    format!(
                        "{:?} is jwt.audience: tokens the gateway sends to this route's backend \
                         would be accepted by the gateway itself; rename the route or change jwt.audience",
                        r.spec.name
                    ),
                );
            }
            for (j, u) in r.upstream.iter().enumerate() {
                if let Err(why) = check_upstream(u) {
                    errs.push(format!("route[{i}].upstream[{j}]"), why);
                }
            }
            let o = &r.upstream_options;
            if o.upstream_client_cert.is_some() != o.upstream_client_key.is_some() {
                errs.push(
                    format!("route[{i}].upstream_client_cert"),
                    "upstream_client_cert and upstream_client_key go together",
                );
            }
            if o.max_body_bytes == Some(0) {
                errs.push(format!("route[{i}].max_body_bytes"), "must be at least 1");
            }
            if r.identity != IdentityMode::Headers
                && (r.binding.bind_request || r.binding.bind_body)
            {
                errs.push(
                    format!("route[{i}].identity"),
                    "bind_request/bind_body need identity = \"headers\"",
                );
            }
        }

        // The policy compiler validates routes and rules with the same
        // locations (`route[i]...`). Group names are checked when the file
        // defines groups; with none, groups come from directory sync at runtime.
        let specs: Vec<RouteSpec> = self.routes.iter().map(|r| r.spec.clone()).collect();
        let exists = |g: &str| groups.contains(g);
        let mut opts = if self.groups.is_empty() {
            CompileOptions::new()
        } else {
            CompileOptions::new().group_exists(&exists)
        };
        if let Some(n) = self.store_routes_from {
            opts = opts.second_tier_from(n);
        }
        if let Err(e) = PolicyEngine::compile(&specs, &opts) {
            for ce in e.errors() {
                errs.push(ce.location(), ce.kind().to_string());
            }
        }
    }

    /// The local directory defined by `[[user]]` and `[[group]]`: one source
    /// named `config`; each username is also the user's subject id.
    pub fn directory(&self) -> Result<Directory, DirectoryError> {
        let mut snapshot = SourceSnapshot::new();
        let mut users = BTreeSet::new();
        for u in &self.users {
            if users.insert(u.name.as_str()) {
                let mut record = UserRecord::new(u.name.as_str())
                    .username(u.name.as_str())
                    .disabled(u.disabled);
                if let Some(e) = &u.email {
                    record = record.email(e.as_str());
                }
                if let Some(d) = &u.display_name {
                    record = record.display_name(d.as_str());
                }
                snapshot.push_user(record);
            }
        }
        for g in &self.groups {
            snapshot.push_group(GroupRecord::new(g.name.as_str()));
            for u in &g.users {
                if users.insert(u.as_str()) {
                    snapshot.push_user(UserRecord::new(u.as_str()).username(u.as_str()));
                }
                snapshot.push_member(u.as_str(), g.name.as_str());
            }
            for child in &g.groups {
                snapshot.push_nested(child.as_str(), g.name.as_str());
            }
        }
        Directory::from_snapshots(
            DirectoryConfig::new().source(CONFIG_SOURCE, 0),
            [(SourceId::from(CONFIG_SOURCE), snapshot)],
        )
    }

    /// Compile the routes into the policy engine (already validated by `parse`).
    pub fn policy(&self) -> Result<PolicyEngine, ConfigErrors> {
        let specs: Vec<RouteSpec> = self.routes.iter().map(|r| r.spec.clone()).collect();
        let mut opts = CompileOptions::new();
        if let Some(n) = self.store_routes_from {
            opts = opts.second_tier_from(n);
        }
        PolicyEngine::compile(&specs, &opts).map_err(|e| {
            ConfigErrors(
                e.errors()
                    .iter()
                    .map(|ce| ConfigError {
                        location: ce.location().to_owned(),
                        message: ce.kind().to_string(),
                    })
                    .collect(),
            )
        })
    }

    /// The whole effective configuration (defaults filled in) as TOML: a
    /// configuration that parses back to this one (values are written
    /// after `${VAR}` substitution, so one holding a `$` is read again as
    /// a variable). It holds every secret as written (database passwords
    /// in `[sql]`, keys, password hashes), so it is for machines; show
    /// people [`Config::non_default_values`].
    pub fn effective_toml(&self) -> String {
        let Some(all) = self.whole_table() else {
            return "# cannot render the configuration\n".to_owned();
        };
        // (An empty `[sql]` or `[ca]` is kept: it turns that part on.)
        toml::to_string_pretty(&all).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Every value that differs from its default, as `path = value` lines
    /// (what `hexon check` prints), `[sql]` and `[ca]` included. Values of
    /// keys that look secret are redacted, and so are URL credentials.
    pub fn non_default_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (Some(me), Ok(toml::Value::Table(def))) =
            (self.whole_table(), toml::Value::try_from(Config::default()))
        else {
            return out;
        };
        diff_table("", &me, &def, &mut out);
        out
    }

    /// The whole configuration as a TOML table: its `Serialize` plus what
    /// that skips, because people must not see it unredacted in a plain
    /// `Serialize`: the `[sql]` and `[ca]` tables, users' password hashes
    /// and the SMTP URL.
    fn whole_table(&self) -> Option<toml::Table> {
        let Ok(toml::Value::Table(mut all)) = toml::Value::try_from(self) else {
            return None;
        };
        for (name, table) in [("sql", &self.sql), ("ca", &self.ca)] {
            if let Some(t) = table {
                all.insert(name.to_owned(), toml::Value::Table(t.clone()));
            }
        }
        if let Some(toml::Value::Array(users)) = all.get_mut("user") {
            for (u, config) in users.iter_mut().zip(&self.users) {
                if let (toml::Value::Table(u), Some(h)) = (u, &config.password_hash) {
                    u.insert("password_hash".into(), toml::Value::String(h.clone()));
                }
            }
        }
        if let (Some(toml::Value::Table(login)), Some(config)) = (all.get_mut("login"), &self.login)
        {
            if let (Some(toml::Value::Table(email)), Some(e)) =
                (login.get_mut("email"), &config.email)
            {
                email.insert("smtp_url".into(), toml::Value::String(e.smtp_url.clone()));
            }
        }
        Some(all)
    }
}

/// The defaults of one element of an array of tables (`[[listener]]`,
/// `[[route]]`), with required keys empty, to diff elements against.
fn element_defaults(array_key: &str) -> toml::Table {
    let mut seed = toml::Table::new();
    let value = match array_key {
        "listener" => {
            seed.insert("bind".into(), toml::Value::String(String::new()));
            section::<ListenerConfig>(toml::Value::Table(seed), "", &mut Errors(Vec::new()))
                .and_then(|l| toml::Value::try_from(l).ok())
        }
        "route" => {
            seed.insert("name".into(), toml::Value::String(String::new()));
            route(toml::Value::Table(seed), "", &mut Errors(Vec::new()))
                .and_then(|r| toml::Value::try_from(r).ok())
        }
        _ => None,
    };
    match value {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

fn diff_table(prefix: &str, me: &toml::Table, def: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in me {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, def.get(k)) {
            (toml::Value::Table(t), Some(toml::Value::Table(d))) => diff_table(&path, t, d, out),
            (toml::Value::Table(t), None) => diff_table(&path, t, &toml::Table::new(), out),
            (toml::Value::Array(items), _) if items.iter().all(toml::Value::is_table) => {
                let defaults = element_defaults(k);
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        diff_table(&format!("{path}[{i}]"), t, &defaults, out);
                    }
                }
            }
            (v, d) if Some(v) != d => {
                let shown = if is_secret_key(k) {
                    "\"[redacted]\"".to_owned()
                } else if let (true, toml::Value::String(url)) =
                    (k == "url" || k.ends_with("_url"), v)
                {
                    toml::Value::String(redact_url(url)).to_string()
                } else {
                    v.to_string()
                };
                out.push(format!("{path} = {shown}"));
            }
            _ => {}
        }
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "private",
        "encryption",
        "hmac_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

impl Config {
    fn validate_login(&self, errs: &mut Errors) {
        for (i, u) in self.users.iter().enumerate() {
            if let Some(h) = &u.password_hash {
                if !h.starts_with("$argon2id$") {
                    errs.push(
                        format!("user[{i}].password_hash"),
                        "must be an argon2id PHC string ($argon2id$…); make one with `hexon hash-password`".to_owned(),
                    );
                }
            }
        }
        let Some(l) = &self.login else {
            return;
        };
        if self.gateway.login_url.is_some() {
            errs.push(
                "gateway.login_url",
                "set either gateway.login_url (an external login service) or [login] (Hexon's own), not both".to_owned(),
            );
        }
        match login_url_host(&l.url) {
            Err(e) => errs.push("login.url", e),
            Ok((scheme, host)) => {
                let local = host == "localhost"
                    || host.ends_with(".localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if scheme == "http" && !local {
                    errs.push("login.url", "must be https:// (http:// only for localhost or *.localhost, where browsers keep Secure cookies over http)".to_owned());
                }
                for (i, r) in self.routes.iter().enumerate() {
                    if r.spec.host.eq_ignore_ascii_case(&host) {
                        errs.push(
                            format!("route[{i}].host"),
                            format!("{host:?} is the login host (login.url): the login service answers every request there; put the route on another host"),
                        );
                    }
                }
            }
        }
        for (i, h) in l.return_hosts.iter().enumerate() {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                errs.push(
                    format!("login.return_hosts[{i}]"),
                    format!("{h:?} is not a host name or *.domain pattern"),
                );
            }
        }
        if l.idle_timeout.get().is_zero() || l.session_lifetime.get().is_zero() {
            errs.push(
                "login",
                "idle_timeout and session_lifetime must be above zero".to_owned(),
            );
        }
        if l.session_lifetime.get() > std::time::Duration::from_secs(30 * 86_400) {
            errs.push("login.session_lifetime", "at most 30 days".to_owned());
        }
        let p = &l.password;
        if p.iterations == 0 || p.parallelism == 0 || p.memory_kib < 8 * p.parallelism {
            errs.push("login.password", "iterations and parallelism must be at least 1, memory_kib at least 8 × parallelism".to_owned());
        }
        if p.memory_kib > 4 * 1024 * 1024 {
            errs.push(
                "login.password.memory_kib",
                "at most 4194304 (4 GiB)".to_owned(),
            );
        }
        if p.threads == 0 || p.threads > 64 || p.queue == 0 {
            errs.push(
                "login.password",
                "threads must be 1 to 64 and queue at least 1".to_owned(),
            );
        }
        if p.min_length < 8 {
            errs.push("login.password.min_length", "at least 8".to_owned());
        }
        let t = &l.throttle;
        if t.base_delay.get() > t.max_delay.get() {
            errs.push(
                "login.throttle",
                "base_delay must not exceed max_delay".to_owned(),
            );
        }
        for (field, c) in [
            ("accent_color", &l.brand.accent_color),
            ("background_color", &l.brand.background_color),
        ] {
            let ok = c.len() == 7
                && c.starts_with('#')
                && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
            if !ok {
                errs.push(
                    format!("login.brand.{field}"),
                    format!("{c:?} is not a #rrggbb colour"),
                );
            }
        }
        if let Some(e) = &l.email {
            match e.smtp_url.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("smtp" | "smtps")) && u.host().is_some() => {
                    let host = u.host().unwrap_or_default();
                    let loopback = host == "localhost"
                        || host
                            .trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback());
                    // Opportunistic STARTTLS can be stripped by an active
                    // attacker: it does not count as encrypted.
                    let tls = u.scheme_str() == Some("smtps")
                        || u.query()
                            .is_some_and(|q| q.split('&').any(|kv| kv == "tls=required"));
                    if !tls && !loopback && !self.gateway.dev {
                        errs.push("login.email.smtp_url", "plain smtp:// is only for a loopback server (or gateway.dev): use smtps:// or smtp://…?tls=required, so sign-in codes are not sent in the clear".to_owned());
                    }
                }
                _ => errs.push(
                    "login.email.smtp_url",
                    "must be smtps://host[:port], smtp://host[:port][?tls=required]".to_owned(),
                ),
            }
            if !e.from.contains('@') || e.from.len() > 256 || e.from.contains(['\r', '\n']) {
                errs.push(
                    "login.email.from",
                    format!(
                        "{:?} is not a sender address (e.g. \"Example <login@example.com>\")",
                        e.from
                    ),
                );
            }
            let ttl = e.ttl.get();
            if ttl < std::time::Duration::from_secs(60) || ttl > std::time::Duration::from_secs(900)
            {
                errs.push(
                    "login.email.ttl",
                    "between 1 and 15 minutes (a sign-in page lasts 15)".to_owned(),
                );
            }
        }
        if let Some(logo) = &l.brand.logo_url {
            let ok = (logo.starts_with("https://") || logo.starts_with('/'))
                && !logo.starts_with("//")
                && !logo
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b'"' || b == b'<' || b == b'>');
            if !ok {
                errs.push(
                    "login.brand.logo_url",
                    "must be an https:// URL or a path starting with /".to_owned(),
                );
            }
        }
    }
}

/// The scheme and lower-case host of the login URL, or what is wrong with it.
pub fn login_url_host(url: &str) -> Result<(&'static str, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => "https",
        Some("http") => "http",
        _ => return Err(format!("{url:?}: must start with https://")),
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?}: no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: no user information allowed"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?}: the login host is served at its root; remove the path"
        ));
    }
    Ok((scheme, authority.host().to_ascii_lowercase()))
}

fn check_jwks_url(u: &str) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|_| format!("{u:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("https") => Err(format!("{u:?} has no host")),
        Some("http") => Err(format!("{u:?}: keys must be fetched over https")),
        _ => Err(format!("{u:?} must be an https:// URL")),
    }
}

fn check_upstream(u: &str) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|_| format!("{u:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https" | "h2c") => {}
        _ => {
            return Err(format!(
                "{u:?} must start with http://, https:// or h2c:// (HTTP/2 without TLS, e.g. gRPC)"
            ));
        }
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "credentials in upstream URLs are not allowed (they would be logged); \
                    use the upstream's own authentication"
                .to_owned(),
        );
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{u:?} must not have a query"));
    }
    Ok(())
}

fn section<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    location: &str,
    errs: &mut Errors,
) -> Option<T> {
    if !value.is_table() {
        errs.push(location, "must be a table");
        return None;
    }
    deserialize(value, location, errs)
}

/// Deserialize with the failing field's path in the location
/// (`route[0].allow[1].users`); the first error of a section is reported.
fn deserialize<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    location: &str,
    errs: &mut Errors,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner: toml::de::Error = e.into_inner();
            let at = if path == "." || path.is_empty() {
                location.to_owned()
            } else {
                format!("{location}.{path}")
            };
            errs.push(at, inner.message().trim().to_owned());
            None
        }
    }
}

fn array<T>(
    value: toml::Value,
    name: &str,
    errs: &mut Errors,
    item: fn(toml::Value, &str, &mut Errors) -> Option<T>,
) -> Vec<T> {
    let toml::Value::Array(items) = value else {
        errs.push(
            name,
            format!("must be an array of tables: write [[{name}]]"),
        );
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| item(v, &format!("{name}[{i}]"), errs))
        .collect()
}

fn route(value: toml::Value, location: &str, errs: &mut Errors) -> Option<RouteConfig> {
    let toml::Value::Table(mut table) = value else {
        errs.push(location, "must be a table");
        return None;
    };
    let mut forward = toml::Table::new();
    for k in ROUTE_FORWARD_KEYS {
        if let Some(v) = table.remove(k) {
            forward.insert(k.to_owned(), v);
        }
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Forward {
        #[serde(default)]
        upstream: Vec<String>,
        #[serde(default)]
        identity: IdentityMode,
        #[serde(default)]
        bind_request: bool,
        #[serde(default)]
        bind_body: bool,
        #[serde(flatten)]
        options: UpstreamOptions,
    }
    let forward: Option<Forward> = deserialize(toml::Value::Table(forward), location, errs);
    let before = errs.0.len();
    let spec: Option<RouteSpec> = deserialize(toml::Value::Table(table), location, errs);
    if let Some(e) = errs.0.get_mut(before) {
        let field_of_route = e
            .location
            .strip_prefix(location)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|f| !f.contains(['.', '[']));
        if e.message.starts_with("unknown field") && field_of_route {
            e.message
                .push_str(&format!(", {}", ROUTE_FORWARD_KEYS.join(", ")));
        }
    }
    let (spec, f) = (spec?, forward?);
    Some(RouteConfig {
        spec,
        upstream: f.upstream,
        identity: f.identity,
        binding: RouteBinding {
            bind_request: f.bind_request,
            bind_body: f.bind_body,
        },
        upstream_options: f.options,
    })
}

/// Deepest nesting accepted in a route given as JSON.
const MAX_JSON_DEPTH: usize = 16;

/// JSON to TOML for the route parser: `null` has no TOML form (leave the
/// field out), nor do integers above `i64::MAX`.
fn json_to_toml(
    v: serde_json::Value,
    location: &str,
    depth: usize,
    errs: &mut Errors,
) -> Option<toml::Value> {
    use serde_json::Value as J;
    if depth > MAX_JSON_DEPTH {
        errs.push(
            location,
            format!("nested deeper than {MAX_JSON_DEPTH} levels"),
        );
        return None;
    }
    Some(match v {
        J::Null => {
            errs.push(location, "null is not a value here; leave the field out");
            return None;
        }
        J::Bool(b) => toml::Value::Boolean(b),
        J::String(s) => toml::Value::String(s),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if n.is_f64() => toml::Value::Float(f),
            _ => {
                errs.push(location, format!("{n} is out of range"));
                return None;
            }
        },
        J::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    json_to_toml(item, &format!("{location}[{i}]"), depth + 1, errs)
                })
                .collect(),
        ),
        J::Object(map) => toml::Value::Table(
            map.into_iter()
                .filter_map(|(k, item)| {
                    let at = format!("{location}.{k}");
                    json_to_toml(item, &at, depth + 1, errs).map(|v| (k, v))
                })
                .collect(),
        ),
    })
}

impl RouteConfig {
    /// A route given as JSON in the `[[route]]` schema (the admin API's
    /// routes, kept in the durable store), checked field by field as the
    /// file's routes are; errors are located under `route`.
    /// [`Config::with_routes`] then checks it against the rest of the
    /// configuration.
    pub fn from_json(value: serde_json::Value) -> Result<RouteConfig, ConfigErrors> {
        let mut errs = Errors(Vec::new());
        let route = json_to_toml(value, "route", 0, &mut errs)
            .filter(|_| errs.0.is_empty())
            .and_then(|v| route(v, "route", &mut errs));
        match route {
            Some(r) if errs.0.is_empty() => Ok(r),
            _ => Err(ConfigErrors(errs.0)),
        }
    }

    /// The route as JSON in the `[[route]]` schema ([`RouteConfig::from_json`]
    /// reads it back unchanged).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Config {
    /// This configuration with `extra` routes after the file's (the routes
    /// kept in the durable store), validated as a whole exactly as
    /// [`Config::parse`] validates a file: names unique across both,
    /// groups known, upstreams well formed. Problems of an extra route are
    /// located by its name (`route "orders".path`). The extra routes are a
    /// second tier of the policy: a request any file route matches is
    /// decided by the file's routes, however specific an extra route is.
    pub fn with_routes(&self, extra: Vec<RouteConfig>) -> Result<Config, ConfigErrors> {
        let file = self.routes.len();
        let mut config = self.clone();
        config.routes.extend(extra);
        config.store_routes_from = Some(file);
        let mut errs = Errors(Vec::new());
        config.validate(&mut errs);
        if errs.0.is_empty() {
            return Ok(config);
        }
        for e in &mut errs.0 {
            let Some((index, rest)) = e
                .location
                .strip_prefix("route[")
                .and_then(|r| r.split_once(']'))
            else {
                continue;
            };
            let name = index
                .parse::<usize>()
                .ok()
                .filter(|&i| i >= file)
                .and_then(|i| config.routes.get(i));
            if let Some(r) = name {
                e.location = format!("route {:?}{rest}", r.spec.name);
            }
        }
        Err(ConfigErrors(errs.0))
    }
}

/// Substitute `${VAR}` in every string of `v` (recursively).
fn substitute_value(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errs: &mut Errors,
) {
    match v {
        // A PHC hash (`$argon2id$…`, or another scheme's, refused by
        // validation with a clear message) is full of `$`: taken as
        // written; `${VAR}` still works for the whole value.
        toml::Value::String(s)
            if path.ends_with(".password_hash")
                && s.starts_with('$')
                && !s.starts_with("${")
                && !s.starts_with("$$") => {}
        toml::Value::String(s) => match substitute(s, env) {
            Ok(new) => *s = new,
            Err(msg) => errs.push(path, msg),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{path}[{i}]"), env, errs);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                substitute_value(item, &format!("{path}.{k}"), env, errs);
            }
        }
        _ => {}
    }
}

/// `${NAME}`, `${NAME:-default}`, `$$`. Exposed for tools that want the same rules.
pub fn substitute(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        let after = after.get(1..).unwrap_or("");
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or_else(|| {
                "unterminated ${...}: close it with '}' or write $$ for a literal $".to_owned()
            })?;
            let (expr, r) = r.split_at(end);
            rest = r.get(1..).unwrap_or("");
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if default.is_some_and(|d| d.contains(['$', '{'])) {
                return Err(format!(
                    "the default of ${{{name}:-...}} must not contain '$' or '{{' (defaults do not nest)"
                ));
            }
            let valid = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "invalid variable name {name:?} in ${{...}}: use letters, digits and '_'"
                ));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name:?} is not set (set it, or write ${{{name}:-default}})"
                    ));
                }
            }
        } else if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            return Err(format!(
                "write ${{{name}}} for a variable (or $$ for a literal $)"
            ));
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `kid` is a valid signing key id: 1-64 of `A-Z a-z 0-9 . _ -`
/// (key ids appear in signature headers and in the JWKS).
pub fn is_valid_key_id(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_key_id(errs: &mut Errors, at: &str, kid: &str) {
    if !is_valid_key_id(kid) {
        errs.push(
            at,
            format!("invalid key id {kid:?}: use 1-64 of A-Z, a-z, 0-9, '.', '_', '-'"),
        );
    }
}

/// `s` if it is an HTTP token (a valid header name), lower-cased.
fn http_token(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| s.to_ascii_lowercase())
}
