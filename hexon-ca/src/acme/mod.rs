//! ACME server (RFC 8555), with External Account Binding, key rollover and
//! renewal information (ARI, RFC 9773).
//!
//! - Accounts are durable ([`AcmeAccountStore`]); orders, authorizations,
//!   nonces and rate counters live in the shared KV, so any node of a
//!   cluster answers any request.
//! - Every POST is a flattened JWS checked in one place
//!   (`AcmeServer::verify_post`): content type, size, `url` equal to the
//!   request's URL, a fresh single-use nonce, a key or an account in good
//!   standing, an algorithm that matches the key, the signature.
//! - Every response carries a fresh `Replay-Nonce` (errors and `badNonce`
//!   included), `Link: <directory>;rel="index"` and `Cache-Control: no-store`.
//! - Challenges (`http-01`, `tls-alpn-01`, `dns-01`) are validated in the
//!   background; clients poll.
//! - Issuance goes through the [`CertificateAuthority`]: the profile's name
//!   rules, narrowed by the External Account Binding key's own rules, decide
//!   which names an account may obtain (identity-aware issuance).

mod handlers;
pub mod jws;
pub mod problem;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hexon_core::duration::HumanDuration;
use hexon_core::store::{AcmeAccountStore, KvStore, StoreError};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

pub use problem::Problem;

use crate::ca::CertificateAuthority;
use crate::profile::Profile;

/// `[ca.acme]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// Public base URL of the ACME endpoints; the directory is
    /// `{url}/directory`.
    pub url: String,
    /// The profile orders are issued under (default `tls-server`).
    #[serde(default = "default_profile")]
    pub profile: Profile,
    /// Port http-01 validation connects to (default 80; other values are
    /// for tests and private networks).
    #[serde(default = "default_http_port")]
    pub http01_port: u16,
    /// Port tls-alpn-01 validation connects to (default 443).
    #[serde(default = "default_tls_port")]
    pub tls_alpn01_port: u16,
    /// DNS server used to resolve identifiers and read dns-01 TXT records
    /// (default: the system's resolvers).
    pub dns_server: Option<SocketAddr>,
    /// How long a new order (and its authorizations) may stay pending
    /// (default 24h).
    #[serde(default = "default_order_lifetime")]
    pub order_lifetime: HumanDuration,
    /// Refuse accounts without an External Account Binding.
    #[serde(default)]
    pub eab_required: bool,
    /// External Account Binding keys.
    #[serde(default)]
    pub eab_keys: Vec<EabKey>,
    /// New orders per account per hour (default 300).
    #[serde(default = "default_orders_per_hour")]
    pub orders_per_hour: u32,
    /// New accounts per client address per hour (default 50).
    #[serde(default = "default_accounts_per_hour")]
    pub accounts_per_hour: u32,
    /// Terms of service URL (clients must agree when set).
    pub terms_of_service: Option<String>,
    /// Website shown to clients.
    pub website: Option<String>,
}

/// An External Account Binding key (RFC 8555 section 7.3.4).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EabKey {
    /// Key id the client sends.
    pub kid: String,
    /// HMAC key, base64url (at least 32 bytes).
    pub hmac_key: String,
    /// Whom accounts bound with this key act for (an identity subject,
    /// recorded as the requester of their certificates).
    pub identity: Option<String>,
    /// DNS names accounts bound with this key may obtain: each entry and
    /// everything under it, within the profile's own rules. Empty: what
    /// the profile allows.
    #[serde(default)]
    pub dns: Vec<String>,
}

impl std::fmt::Debug for EabKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKey")
            .field("kid", &self.kid)
            .field("identity", &self.identity)
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

fn default_profile() -> Profile {
    Profile::TlsServer
}
fn default_http_port() -> u16 {
    80
}
fn default_tls_port() -> u16 {
    443
}
fn default_order_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(86_400))
}
fn default_orders_per_hour() -> u32 {
    300
}
fn default_accounts_per_hour() -> u32 {
    50
}

impl AcmeConfig {
    /// A configuration with defaults for everything but the URL.
    pub fn new(url: &str) -> Self {
        AcmeConfig {
            url: url.to_owned(),
            profile: default_profile(),
            http01_port: default_http_port(),
            tls_alpn01_port: default_tls_port(),
            dns_server: None,
            order_lifetime: default_order_lifetime(),
            eab_required: false,
            eab_keys: Vec::new(),
            orders_per_hour: default_orders_per_hour(),
            accounts_per_hour: default_accounts_per_hour(),
            terms_of_service: None,
            website: None,
        }
    }

    /// Check what serde cannot.
    pub fn validate(&mut self) -> Result<(), crate::CaError> {
        let bad = |why: String| Err(crate::CaError::Setup(format!("[ca.acme] {why}")));
        self.url = self.url.trim_end_matches('/').to_owned();
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return bad(format!("url {:?} must be an https:// URL", self.url));
        }
        if self.eab_required && self.eab_keys.is_empty() {
            return bad("eab_required is set but no eab_keys are configured".into());
        }
        let mut seen = std::collections::HashSet::new();
        for k in &mut self.eab_keys {
            if !seen.insert(k.kid.clone()) {
                return bad(format!("eab_keys: kid {:?} appears twice", k.kid));
            }
            match B64.decode(k.hmac_key.trim_end_matches('=')) {
                Ok(key) if key.len() >= 32 => {}
                _ => {
                    return bad(format!(
                        "eab_keys {:?}: hmac_key must be base64url of at least 32 bytes (e.g. `openssl rand -base64 32 | tr '+/' '-_'`)",
                        k.kid
                    ));
                }
            }
            for d in &mut k.dns {
                *d = d.trim_start_matches("*.").to_ascii_lowercase();
                crate::profile::check_dns_name(d)
                    .or_else(|e| bad(format!("eab_keys {:?}: {e}", k.kid)))?;
            }
        }
        if self.orders_per_hour == 0 || self.accounts_per_hour == 0 {
            return bad("orders_per_hour and accounts_per_hour must be at least 1".into());
        }
        Ok(())
    }
}

/// An identifier (RFC 8555 section 9.7.7; `ip` from RFC 8738).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    /// `dns` or `ip`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The name or address.
    pub value: String,
}

/// What an account may obtain and for whom it acts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Binding {
    pub(crate) identity: Option<String>,
    pub(crate) dns: Vec<String>,
}

/// The ACME server.
pub struct AcmeServer {
    pub(crate) cfg: AcmeConfig,
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) accounts: Arc<dyn AcmeAccountStore>,
    pub(crate) kv: Arc<dyn KvStore>,
    pub(crate) nonces: Arc<dyn KvStore>,
    pub(crate) eab: BTreeMap<String, (Vec<u8>, Binding)>,
    pub(crate) resolver: validate::Resolver,
    base_path: String,
}

impl std::fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeServer")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

/// Longest anything stays in the ACME KV bucket.
pub const KV_MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// How long a nonce is good for.
pub const NONCE_TTL: Duration = Duration::from_secs(3600);

impl AcmeServer {
    /// The KV bucket names this server uses, with their longest TTLs: open
    /// them from the shared KV backend and pass them to [`AcmeServer::new`].
    pub const BUCKETS: [(&'static str, Duration); 2] =
        [("acme", KV_MAX_TTL), ("acme-nonces", NONCE_TTL)];

    /// A server issuing from `ca`.
    pub fn new(
        mut cfg: AcmeConfig,
        ca: Arc<CertificateAuthority>,
        accounts: Arc<dyn AcmeAccountStore>,
        kv: Arc<dyn KvStore>,
        nonces: Arc<dyn KvStore>,
    ) -> Result<Self, crate::CaError> {
        cfg.validate()?;
        if ca.profile(cfg.profile).is_none() {
            return Err(crate::CaError::Setup(format!(
                "[ca.acme] profile {} is not enabled in [ca.profiles]",
                cfg.profile
            )));
        }
        let base_path = match cfg.url.splitn(4, '/').nth(3) {
            Some(p) => format!("/{p}"),
            None => String::new(),
        };
        let mut eab = BTreeMap::new();
        for k in &cfg.eab_keys {
            let key = B64.decode(k.hmac_key.trim_end_matches('=')).map_err(|_| {
                crate::CaError::Setup(format!("[ca.acme] eab key {:?} is not base64url", k.kid))
            })?;
            eab.insert(
                k.kid.clone(),
                (
                    key,
                    Binding {
                        identity: k.identity.clone(),
                        dns: k.dns.clone(),
                    },
                ),
            );
        }
        let resolver = validate::Resolver::new(cfg.dns_server)?;
        Ok(AcmeServer {
            cfg,
            ca,
            accounts,
            kv,
            nonces,
            eab,
            resolver,
            base_path,
        })
    }

    /// The path prefix requests arrive under (the path of the configured URL).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Whether `path` is one of ours.
    pub fn handles(&self, path: &str) -> bool {
        path.strip_prefix(self.base_path.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    pub(crate) fn url(&self, rest: &str) -> String {
        format!("{}{rest}", self.cfg.url)
    }

    /// A fresh nonce, remembered for [`NONCE_TTL`].
    pub(crate) async fn new_nonce(&self) -> Result<String, StoreError> {
        let nonce = random_id(16);
        self.nonces.put(&nonce, b"", NONCE_TTL).await?;
        Ok(nonce)
    }

    /// Use up `nonce`: true exactly once for a nonce this server made.
    pub(crate) async fn consume_nonce(&self, nonce: &str) -> Result<bool, StoreError> {
        if nonce.is_empty()
            || nonce.len() > 64
            || !nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(false);
        }
        match self.nonces.get(nonce).await? {
            Some(e) => self.nonces.delete_if(nonce, e.revision).await,
            None => Ok(false),
        }
    }
}

/// `n` random bytes, base64url.
pub(crate) fn random_id(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    B64.encode(b)
}

/// RFC 3339 in UTC.
pub(crate) fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
