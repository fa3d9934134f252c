//! The ACME client (RFC 8555) that obtains and renews a listener's own
//! certificate from any ACME CA — Let's Encrypt, pebble, step-ca, Hexon's
//! own `[ca.acme]` — and answers the challenges itself:
//!
//! - **tls-alpn-01** (RFC 8737, the default): the listener answers
//!   `acme-tls/1` handshakes for the domain with a self-signed certificate
//!   carrying the critical `acmeIdentifier` extension
//!   ([`ServerTls::alpn_challenges`]). Needs the listener reachable on the
//!   port the CA validates (443 for public CAs).
//! - **http-01**: [`Http01Layer`](super::Http01Layer) answers
//!   `/.well-known/acme-challenge/<token>` on the gateway's plain-HTTP
//!   listener (port 80 for public CAs).
//!
//! The protocol is instant-acme's; this module keeps the state (account
//! credentials, certificate and key, all in [`AcmeFiles::dir`], secrets
//! mode 0600), decides when to renew — at a random point of the CA's ACME
//! Renewal Information window (RFC 9773) when it offers one, else after two
//! thirds of the lifetime or `renew_before` ahead of expiry — and hands new
//! certificates to the listener with [`ServerTls::reload`]. A new key is made
//! for every certificate (P-256); the order and the new certificate are
//! checked before anything is replaced, so a failed renewal leaves the
//! current certificate serving. Failures retry with backoff (1 min doubling
//! to 1 h) and are logged with the CA's problem document.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::{AcmeFiles, Http01Tokens, ServerTls};

/// Which challenge the client answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Challenge {
    /// RFC 8737, on the TLS listener itself (default).
    #[default]
    TlsAlpn01,
    /// RFC 8555 §8.3, on a plain-HTTP listener with [`Http01Layer`](super::Http01Layer).
    Http01,
}

/// How to talk to the ACME CA.
#[derive(Clone)]
#[non_exhaustive]
pub struct AcmeClientSettings {
    /// The CA's directory URL (`https://…/directory`).
    pub directory: String,
    /// Contact URIs (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// Challenge to answer.
    pub challenge: Challenge,
    /// Trust these roots for the CA's HTTPS endpoint, besides the web's
    /// (a private or test CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// External Account Binding: key id and MAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// Ask for the TLS Feature `status_request` (must-staple, RFC 7633).
    pub must_staple: bool,
    /// Renew this long before expiry when the CA gives no renewal window
    /// (default: a third of the lifetime).
    pub renew_before: Option<Duration>,
    /// How long to wait for validation and issuance (default 2 min).
    pub order_timeout: Duration,
}

impl std::fmt::Debug for AcmeClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClientSettings")
            .field("directory", &self.directory)
            .field("contact", &self.contact)
            .field("challenge", &self.challenge)
            .field("extra_roots", &self.extra_roots.len())
            .field("eab_kid", &self.eab.as_ref().map(|(kid, _)| kid))
            .field("must_staple", &self.must_staple)
            .field("renew_before", &self.renew_before)
            .field("order_timeout", &self.order_timeout)
            .finish()
    }
}

impl AcmeClientSettings {
    /// Defaults for the CA at `directory`.
    pub fn new(directory: impl Into<String>) -> Self {
        AcmeClientSettings {
            directory: directory.into(),
            contact: Vec::new(),
            challenge: Challenge::default(),
            extra_roots: Vec::new(),
            eab: None,
            must_staple: false,
            renew_before: None,
            order_timeout: Duration::from_secs(120),
        }
    }
}

/// Why obtaining a certificate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeClientError {
    /// The CA refused or the exchange failed (the CA's problem document,
    /// when it sent one, is in the message).
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// Reading or writing the state directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Anything else, said plainly.
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeClientError + '_ {
    move |source| AcmeClientError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the state directory keeps about the account.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Obtains and renews one listener's certificate.
pub struct AcmeClient {
    name: String,
    settings: AcmeClientSettings,
    files: AcmeFiles,
    tls: ServerTls,
    http01: Http01Tokens,
    /// The ARI window seen last and the renewal time chosen in it.
    ari_choice: std::sync::Mutex<Option<(SystemTime, SystemTime, SystemTime)>>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("listener", &self.name)
            .field("directory", &self.settings.directory)
            .field("domains", &self.files.domains)
            .finish_non_exhaustive()
    }
}

/// A certificate the client put in place.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Obtained {
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, hex.
    pub serial: String,
}

impl AcmeClient {
    /// The client for `tls`'s ACME certificate (its [`TlsSettings::acme`](super::TlsSettings::acme)).
    /// `http01` is where [`Http01Layer`](super::Http01Layer) looks (used with
    /// [`Challenge::Http01`]).
    pub fn new(
        name: impl Into<String>,
        settings: AcmeClientSettings,
        tls: ServerTls,
        http01: Http01Tokens,
    ) -> Result<Self, AcmeClientError> {
        let files = tls.settings().acme.clone().ok_or_else(|| {
            AcmeClientError::Other("the listener's TLS settings have no ACME certificate".into())
        })?;
        if files.domains.is_empty() {
            return Err(AcmeClientError::Other("no domains to ask for".into()));
        }
        if settings.challenge == Challenge::TlsAlpn01 && !files.tls_alpn_01 {
            return Err(AcmeClientError::Other(
                "tls-alpn-01 needs the listener to answer acme-tls/1 (AcmeFiles::tls_alpn_01)"
                    .into(),
            ));
        }
        Ok(AcmeClient {
            name: name.into(),
            settings,
            files,
            tls,
            http01,
            ari_choice: std::sync::Mutex::new(None),
        })
    }

    /// Keep the certificate valid: obtain one now if there is none, renew
    /// when due, retry failures with backoff. Runs until dropped.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        let mut account = None;
        loop {
            let acct = match &account {
                Some(a) => Ok(a),
                None => self.account().await.map(|a| &*account.insert(a)),
            };
            let wait = match acct {
                Err(e) => Err(e),
                Ok(acct) => match self.due(acct).await {
                    Some(wait) if !wait.is_zero() => Ok(wait),
                    _ => self.obtain_with(acct).await.map(|o| {
                        tracing::info!(listener = %self.name, domains = ?self.files.domains, serial = %o.serial, not_after = ?o.not_after, "ACME certificate obtained and in use");
                        Duration::ZERO
                    }),
                },
            };
            let sleep = match wait {
                Ok(w) => {
                    failures = 0;
                    // Look again at least every 6 hours (a CA may move the
                    // renewal window, e.g. before revoking); `due` keeps
                    // renewals apart.
                    w.clamp(Duration::from_secs(1), Duration::from_secs(6 * 3600))
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_secs(60)
                        .saturating_mul(1 << failures.saturating_sub(1).min(6))
                        .min(Duration::from_secs(3600));
                    tracing::error!(listener = %self.name, domains = ?self.files.domains, directory = %self.settings.directory, error = %e, retry_in = ?backoff, "obtaining the listener's certificate by ACME failed");
                    if matches!(e, AcmeClientError::Protocol(_)) {
                        // The account may be gone (deactivated, CA reset).
                        account = None;
                    }
                    backoff
                }
            };
            tokio::time::sleep(sleep).await;
        }
    }

    /// Obtain a certificate now (whatever the current one's state) and put
    /// it in place.
    pub async fn obtain(&self) -> Result<Obtained, AcmeClientError> {
        let account = self.account().await?;
        self.obtain_with(&account).await
    }

    /// How long until renewal is due (`None` or zero: now).
    async fn due(&self, account: &Account) -> Option<Duration> {
        let (not_before, not_after, der) = self.current()?;
        let now = SystemTime::now();
        if not_after <= now {
            return None;
        }
        // Not again within a tenth of the lifetime of a certificate (10 s
        // to 1 h): a window already open, or `renew_before` too long, must
        // not make an order loop.
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        // Counted from when it was obtained (the file's time; issuers
        // backdate notBefore).
        let obtained = std::fs::metadata(self.files.cert_path())
            .and_then(|m| m.modified())
            .unwrap_or(not_before)
            .max(not_before);
        let floor =
            obtained + (lifetime / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600));
        let floor_wait = floor.duration_since(now).unwrap_or_default();
        if let Some(id) = cert_identifier(&der) {
            match account.renewal_info(&id).await {
                Ok((info, retry_after)) => {
                    let start = SystemTime::from(info.suggested_window.start);
                    let end = SystemTime::from(info.suggested_window.end).max(start);
                    // RFC 9773 §4.2: a uniformly random point in the
                    // window, chosen once per window (choosing again on
                    // every poll would drift to its start).
                    let mut chosen = self
                        .ari_choice
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let at = match *chosen {
                        Some((s, e, at)) if s == start && e == end => at,
                        _ => {
                            let span = end.duration_since(start).unwrap_or_default();
                            let at = start + span.mul_f64(random_unit());
                            *chosen = Some((start, end, at));
                            at
                        }
                    };
                    let until = at.duration_since(now).unwrap_or_default();
                    // Ask again when the CA says to (RFC 9773 §4.3), at
                    // least a minute on, if that is sooner.
                    let poll = retry_after.max(Duration::from_secs(60));
                    return Some(until.min(poll).max(floor_wait));
                }
                Err(instant_acme::Error::Unsupported(_)) => {}
                Err(e) => {
                    tracing::debug!(listener = %self.name, error = %e, "ACME renewal information unavailable; using the lifetime")
                }
            }
        }
        let before = match self.settings.renew_before {
            Some(b) if b < lifetime => b,
            Some(b) => {
                tracing::warn!(listener = %self.name, renew_before = ?b, lifetime = ?lifetime, "renew_before is not shorter than the certificate's lifetime: renewing after two thirds of it instead");
                lifetime / 3
            }
            None => lifetime / 3,
        };
        let at = not_after.checked_sub(before).unwrap_or(not_before);
        Some(at.duration_since(now).unwrap_or_default().max(floor_wait))
    }

    /// The certificate in the state directory: validity and leaf DER.
    /// `None` when there is none, it does not load with its key (a crash
    /// between writing the key and the chain), or it misses a domain.
    fn current(&self) -> Option<(SystemTime, SystemTime, Vec<u8>)> {
        let pem = std::fs::read(self.files.cert_path()).ok()?;
        let key = std::fs::read(self.files.key_path()).ok()?;
        if let Err(e) = super::load_pair(
            &pem,
            &self.files.cert_path(),
            &key,
            &self.files.key_path(),
            &super::provider(),
            SystemTime::now(),
        ) {
            tracing::warn!(listener = %self.name, error = %e, "the stored ACME certificate is unusable: obtaining a new one");
            return None;
        }
        let leaf = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let covers = self.files.domains.iter().all(|d| {
            cert.subject_alternative_name()
                .ok()
                .flatten()
                .is_some_and(|san| {
                    san.value.general_names.iter().any(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(x) => {
                            x.eq_ignore_ascii_case(d)
                        }
                        x509_parser::extensions::GeneralName::IPAddress(ip) => {
                            d.parse::<std::net::IpAddr>().is_ok_and(|want| match want {
                                std::net::IpAddr::V4(v) => v.octets()[..] == ip[..],
                                std::net::IpAddr::V6(v) => v.octets()[..] == ip[..],
                            })
                        }
                        _ => false,
                    })
                })
        });
        if !covers {
            tracing::info!(listener = %self.name, "the stored certificate does not cover every configured domain: obtaining a new one");
            return None;
        }
        let t = |ts: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0));
        Some((
            t(cert.validity().not_before.timestamp()),
            t(cert.validity().not_after.timestamp()),
            leaf.to_vec(),
        ))
    }

    /// The account: restored from the state directory, or created (and
    /// stored) when there is none for this directory URL.
    async fn account(&self) -> Result<Account, AcmeClientError> {
        let path = self.files.dir.join("account.json");
        if let Ok(bytes) = std::fs::read(&path) {
            match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(stored) if stored.directory == self.settings.directory => {
                    return Ok(Account::builder_with_http(self.http()?)
                        .from_credentials(stored.credentials)
                        .await?);
                }
                Ok(_) => {
                    tracing::info!(listener = %self.name, "the ACME directory changed: registering a new account")
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, file = %path.display(), error = %e, "unreadable ACME account file: registering a new account")
                }
            }
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let eab = self
            .settings
            .eab
            .as_ref()
            .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
        let (account, credentials) = Account::builder_with_http(self.http()?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                eab.as_ref(),
            )
            .await?;
        let stored = serde_json::to_vec_pretty(&StoredAccount {
            directory: self.settings.directory.clone(),
            credentials,
        })
        .map_err(|e| AcmeClientError::Other(format!("account credentials: {e}")))?;
        std::fs::create_dir_all(&self.files.dir).map_err(io(&self.files.dir))?;
        super::write_file_atomic(&path, &stored, true).map_err(io(&path))?;
        tracing::info!(listener = %self.name, account = account.id(), directory = %self.settings.directory, "ACME account registered");
        Ok(account)
    }

    fn http(&self) -> Result<Box<dyn instant_acme::HttpClient>, AcmeClientError> {
        let tls = super::web_client_config(&self.settings.extra_roots)
            .map_err(|e| AcmeClientError::Other(format!("ACME CA roots: {e}")))?;
        // RFC 8555 §6.1: ACME is HTTPS only.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Box::new(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build::<_, instant_acme::BodyWrapper<Bytes>>(connector),
        ))
    }

    async fn obtain_with(&self, account: &Account) -> Result<Obtained, AcmeClientError> {
        let identifiers: Vec<Identifier> = self
            .files
            .domains
            .iter()
            .map(|d| match d.parse() {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(d.clone()),
            })
            .collect();
        let replaces = self.current().and_then(|(_, _, der)| cert_identifier(&der));
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(r) = &replaces {
            new_order = new_order.replaces(r.clone());
        }
        let mut order = match account.new_order(&new_order).await {
            Ok(o) => o,
            // A CA without ARI, or one that says the certificate was
            // already replaced (an order issued but not saved: RFC 9773
            // §5, `alreadyReplaced`): ask again without `replaces`.
            Err(e) if replaces.is_some() => {
                tracing::info!(listener = %self.name, error = %e, "renewal order refused with `replaces`; ordering without it");
                account.new_order(&NewOrder::new(&identifiers)).await?
            }
            Err(e) => return Err(e.into()),
        };

        let mut published = Published {
            tokens: &self.http01,
            tls: &self.tls,
            http: Vec::new(),
            alpn: Vec::new(),
        };
        let kind = match self.settings.challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeClientError::Other(format!(
                        "authorization for {} is {other:?}",
                        authz.identifier()
                    )));
                }
            }
            let domain = authz.identifier().to_string();
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                AcmeClientError::Other(format!(
                    "the CA offers no {kind:?} challenge for {domain}: choose another `challenge`"
                ))
            })?;
            let key_auth = challenge.key_authorization();
            match self.settings.challenge {
                Challenge::Http01 => published.http01(&challenge.token, key_auth.as_str()),
                Challenge::TlsAlpn01 => {
                    published.tls_alpn01(&domain, key_auth.digest().as_ref())?;
                }
            }
            challenge.set_ready().await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.settings.order_timeout);
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeClientError::Other(format!(
                "the order is {status:?} after validation{}",
                order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            )));
        }
        drop(published);

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AcmeClientError::Other(format!("generating the key: {e}")))?;
        let mut params = rcgen::CertificateParams::new(self.files.domains.clone())
            .map_err(|e| AcmeClientError::Other(format!("CSR: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if self.settings.must_staple {
            // TLS Feature (RFC 7633): SEQUENCE { INTEGER 5 (status_request) }.
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 5, 5, 7, 1, 24],
                    vec![0x30, 0x03, 0x02, 0x01, 0x05],
                ));
        }
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeClientError::Other(format!("CSR: {e}")))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        let key_pem = key.serialize_pem();

        // Check before replacing anything: parses, matches the key.
        let now = SystemTime::now();
        let loaded = super::load_pair(
            chain.as_bytes(),
            &self.files.cert_path(),
            key_pem.as_bytes(),
            &self.files.key_path(),
            &super::provider(),
            now,
        )
        .map_err(|e| AcmeClientError::Other(format!("the CA's certificate is unusable: {e}")))?;
        std::fs::create_dir_all(&self.files.dir).map_err(io(&self.files.dir))?;
        super::write_file_atomic(&self.files.key_path(), key_pem.as_bytes(), true)
            .map_err(io(&self.files.key_path()))?;
        super::write_file_atomic(&self.files.cert_path(), chain.as_bytes(), false)
            .map_err(io(&self.files.cert_path()))?;
        self.tls
            .reload()
            .map_err(|e| AcmeClientError::Other(format!("loading the new certificate: {e}")))?;
        let serial = self
            .current()
            .and_then(|(_, _, der)| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(_, c)| c.tbs_certificate.raw_serial_as_string())
            })
            .unwrap_or_default();
        Ok(Obtained {
            not_after: loaded.info.not_after,
            serial,
        })
    }
}

/// Challenge answers on offer during one order; withdrawn when dropped.
struct Published<'a> {
    tokens: &'a Http01Tokens,
    tls: &'a ServerTls,
    http: Vec<String>,
    alpn: Vec<String>,
}

impl Published<'_> {
    fn http01(&mut self, token: &str, key_authorization: &str) {
        self.tokens.insert(token, key_authorization);
        self.http.push(token.to_owned());
    }

    /// RFC 8737 §3: a self-signed certificate for `domain` whose critical
    /// `acmeIdentifier` extension holds SHA-256(key authorization).
    fn tls_alpn01(&mut self, domain: &str, digest: &[u8]) -> Result<(), AcmeClientError> {
        let fail =
            |e: rcgen::Error| AcmeClientError::Other(format!("tls-alpn-01 certificate: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let cert = params.self_signed(&key).map_err(fail)?;
        let signing = super::provider()
            .key_provider
            .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            ))
            .map_err(|e| AcmeClientError::Other(format!("tls-alpn-01 key: {e}")))?;
        // RFC 8738 §6: for an IP address the CA sends the reverse-DNS name
        // as SNI.
        let sni = match domain.parse::<std::net::IpAddr>() {
            Ok(ip) => reverse_name(ip),
            Err(_) => domain.to_owned(),
        };
        self.tls.alpn_challenges().insert(
            &sni,
            Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
        );
        self.alpn.push(sni);
        Ok(())
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.http {
            self.tokens.remove(t);
        }
        let challenges = self.tls.alpn_challenges();
        for d in &self.alpn {
            challenges.remove(d);
        }
    }
}

/// `d.c.b.a.in-addr.arpa` / nibbles `.ip6.arpa` (RFC 8738 §6).
fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0x0f, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// RFC 9773 §4.1 identifier of `der`: its authority key id and serial.
fn cert_identifier(der: &[u8]) -> Option<CertificateIdentifier<'static>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })?;
    Some(
        CertificateIdentifier::new(
            rustls_pki_types::Der::from_slice(&aki),
            rustls_pki_types::Der::from_slice(cert.tbs_certificate.raw_serial()),
        )
        .into_owned(),
    )
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
