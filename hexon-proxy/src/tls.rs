//! TLS for listeners (rustls, ring provider).
//!
//! - TLS 1.3, and TLS 1.2 unless [`TlsSettings::min_version`] says 1.3
//!   (default: 1.2 allowed — rustls only offers ECDHE + AEAD suites for 1.2,
//!   and load balancers, health checkers and older clients still need it).
//! - ALPN `h2`, `http/1.1`.
//! - Several certificate/key PEM pairs; the certificate is chosen by SNI from
//!   each leaf's DNS SANs (exact names first, then `*.example.com`
//!   wildcards covering one label); the first pair is the default for
//!   unknown or absent SNI.
//! - [`ServerTls::reload`] re-reads every file and swaps the whole rustls
//!   configuration atomically for new connections; when anything fails the
//!   old configuration stays and the error is returned.
//! - Optional client certificates verified against a CA bundle
//!   ([`ClientAuth::Required`] or [`ClientAuth::Optional`]); the verified
//!   chain reaches requests as [`TlsInfo::client_chain`].
//! - Fail closed: missing, unreadable or invalid material is an error that
//!   names the file and the problem; expired or not-yet-valid certificates
//!   load with a warning (clients will refuse them, the operator sees why).
//! - Dev mode ([`TlsSettings::dev`]): with no certificate configured, a
//!   self-signed certificate for `localhost`, `127.0.0.1`, `::1` and the
//!   configured names is generated (and stored under the data dir when one
//!   is given), with a loud warning.
//! - OCSP stapling ([`TlsSettings::ocsp_stapling`], on by default): every
//!   served certificate that names an OCSP responder gets its status
//!   stapled, refreshed in the background by [`ServerTls::run_stapling`]
//!   (see the `stapling` module).
//! - ACME ([`TlsSettings::acme`]): the certificate of [`AcmeFiles::dir`],
//!   which the ACME client (feature `acme`, module `acme`) obtains and renews, with a
//!   self-signed placeholder until the first one arrives; `acme-tls/1`
//!   handshakes (RFC 8737 tls-alpn-01) are answered with the challenge
//!   certificates the client publishes and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ext::TlsInfo;

#[cfg(feature = "acme")]
pub mod acme;
mod http01;
mod stapling;
pub use http01::{HTTP01_PREFIX, Http01, Http01Layer, Http01Tokens};

/// The ALPN protocol of ACME tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One certificate chain and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1/RSA or SEC1/EC).
    pub key: PathBuf,
}

impl CertificateFiles {
    /// A certificate file and its key file.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        CertificateFiles {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// Whether clients must present a certificate (when a client CA is set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate issued by the client CA is required (the default: the
    /// `client_ca` option says "clients must present a certificate").
    #[default]
    Required,
    /// Clients may present one; if they do it must verify. Requests without
    /// one proceed (other authenticators decide).
    Optional,
}

/// The lowest TLS version accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3 (default).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Self-signed certificate for development.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DevCertificate {
    /// Names besides `localhost`, `127.0.0.1` and `::1` (DNS names or IPs).
    pub names: Vec<String>,
    /// Where to keep it (`<data_dir>/dev-tls/{cert,key}.pem`) so browsers
    /// see the same certificate across restarts; `None`: in memory only.
    pub data_dir: Option<PathBuf>,
}

impl DevCertificate {
    /// A dev certificate for the default names, kept under `data_dir`.
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        DevCertificate {
            names: Vec::new(),
            data_dir,
        }
    }
}

/// A listener's TLS configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSettings {
    /// Certificate/key pairs; the first is the default. May be empty only
    /// with [`TlsSettings::dev`].
    pub certificates: Vec<CertificateFiles>,
    /// PEM CA bundle that issues client certificates.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: required (default) or optional.
    pub client_auth: ClientAuth,
    /// Lowest version (default TLS 1.2).
    pub min_version: MinTlsVersion,
    /// ALPN protocols in preference order (default `h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    /// Dev mode: generate a self-signed certificate when `certificates` is
    /// empty. Ignored when certificates are configured.
    pub dev: Option<DevCertificate>,
    /// Staple OCSP responses (default true; needs [`ServerTls::run_stapling`]
    /// running).
    pub ocsp_stapling: bool,
    /// Serve the certificate an ACME client keeps in a directory (first,
    /// as the default certificate).
    pub acme: Option<AcmeFiles>,
}

/// Where an ACME client keeps a listener's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeFiles {
    /// Holds `cert.pem` (chain) and `key.pem`.
    pub dir: PathBuf,
    /// The names asked for (the placeholder certificate carries them).
    pub domains: Vec<String>,
    /// Answer `acme-tls/1` handshakes (tls-alpn-01).
    pub tls_alpn_01: bool,
}

impl AcmeFiles {
    /// The certificate for `domains`, kept in `dir`.
    pub fn new(dir: impl Into<PathBuf>, domains: Vec<String>, tls_alpn_01: bool) -> Self {
        AcmeFiles {
            dir: dir.into(),
            domains,
            tls_alpn_01,
        }
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The private key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl TlsSettings {
    /// Serve these certificate/key pairs (the first one is the default).
    pub fn new(certificates: Vec<CertificateFiles>) -> Self {
        TlsSettings {
            certificates,
            client_ca: None,
            client_auth: ClientAuth::default(),
            min_version: MinTlsVersion::default(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            dev: None,
            ocsp_stapling: true,
            acme: None,
        }
    }

    /// Dev mode: a generated self-signed certificate.
    pub fn dev(dev: DevCertificate) -> Self {
        TlsSettings {
            dev: Some(dev),
            ..TlsSettings::new(Vec::new())
        }
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file's content is invalid.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the certificate's.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// No certificate configured and dev mode off.
    #[error(
        "no TLS certificate configured (set cert and key, or enable dev mode for a self-signed one)"
    )]
    NoCertificate,
    /// Generating or storing the dev certificate failed.
    #[error("dev certificate: {0}")]
    Dev(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A loaded certificate, for status pages and expiry monitoring.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// The certificate file (`<dev self-signed>` for an in-memory one).
    pub cert_file: PathBuf,
    /// DNS names (SANs) it is selected for, lowercase.
    pub names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether it is served for unknown or absent SNI.
    pub default: bool,
    /// A self-signed stand-in served until ACME delivers the certificate.
    pub placeholder: bool,
}

/// A listener's TLS state: the current rustls configuration, reloadable.
///
/// Cheap to clone (shared); [`ServerTls::reload`] on any clone affects all.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TlsSettings,
    /// In-memory dev or ACME placeholder certificate (cert PEM, key PEM),
    /// generated once.
    dev_pem: Mutex<Option<(String, String)>>,
    state: RwLock<State>,
    /// tls-alpn-01 challenge certificates by domain.
    challenges: Arc<AlpnChallenges>,
    /// Wakes the stapler after a reload.
    reloaded: tokio::sync::Notify,
}

#[derive(Clone)]
struct State {
    config: Arc<ServerConfig>,
    certificates: Arc<[CertInfo]>,
    slots: Arc<[Arc<KeySlot>]>,
}

/// The tls-alpn-01 challenge certificates an ACME client publishes, by
/// lowercase domain.
#[derive(Debug, Default)]
pub struct AlpnChallenges {
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl AlpnChallenges {
    /// Answer `acme-tls/1` handshakes for `domain` with `key`.
    pub fn insert(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.to_ascii_lowercase(), key);
    }

    /// Stop answering for `domain`.
    pub fn remove(&self, domain: &str) {
        self.certs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&domain.to_ascii_lowercase());
    }

    fn get(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.certs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&domain.trim_end_matches('.').to_ascii_lowercase())
            .cloned()
    }
}

/// One served certificate: its key with the current staple, and what to
/// ask its OCSP responder.
struct KeySlot {
    key: RwLock<Arc<CertifiedKey>>,
    file: PathBuf,
    ocsp: Option<stapling::OcspTarget>,
    stapled: Mutex<StapleState>,
}

/// OCSP stapling of one served certificate, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StapleStatus {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// Its OCSP responder (`None`: it names none, or stapling is off).
    pub responder: Option<String>,
    /// It is a must-staple certificate.
    pub must_staple: bool,
    /// The stapled response's `nextUpdate` (`None`: nothing stapled).
    pub valid_until: Option<SystemTime>,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct StapleState {
    staple: Option<stapling::Staple>,
    last_error: Option<String>,
    /// Next fetch; `None`: now.
    next_attempt: Option<SystemTime>,
    failures: u32,
}

impl KeySlot {
    fn new(key: Arc<CertifiedKey>, file: PathBuf, stapling: bool) -> Self {
        let ocsp = if stapling {
            match stapling::target(&key.cert) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "no OCSP stapling for this certificate");
                    None
                }
            }
        } else {
            None
        };
        KeySlot {
            key: RwLock::new(key),
            file,
            ocsp,
            stapled: Mutex::new(StapleState::default()),
        }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set_ocsp(&self, der: Option<Vec<u8>>) {
        let mut key = self.key.write().unwrap_or_else(PoisonError::into_inner);
        let mut k = (**key).clone();
        k.ocsp = der;
        *key = Arc::new(k);
    }

    fn next_attempt(&self) -> Option<SystemTime> {
        self.ocsp.as_ref()?;
        let s = self.stapled.lock().unwrap_or_else(PoisonError::into_inner);
        Some(s.next_attempt.unwrap_or(UNIX_EPOCH))
    }

    /// Record a fetch's outcome at `now`.
    fn update(&self, result: Result<stapling::Staple, stapling::NotStapled>, now: SystemTime) {
        let must_staple = self.ocsp.as_ref().is_some_and(|t| t.must_staple);
        let mut s = self.stapled.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(staple) => {
                tracing::debug!(file = %self.file.display(), next_update = ?staple.next_update, "OCSP response stapled");
                self.set_ocsp(Some(staple.der.clone()));
                s.next_attempt = Some(staple.refresh_at(now));
                s.staple = Some(staple);
                s.failures = 0;
                s.last_error = None;
            }
            Err(stapling::NotStapled {
                revoked,
                message: e,
            }) => {
                s.failures = s.failures.saturating_add(1);
                let backoff = Duration::from_secs(30)
                    .saturating_mul(1 << s.failures.min(7))
                    .min(Duration::from_secs(3600));
                let mut next = now + backoff;
                // A revoked certificate loses its (older, good) staple at
                // once; otherwise a staple is kept until it lapses.
                let expired = s.staple.as_ref().is_some_and(|st| st.next_update <= now);
                if revoked || expired {
                    self.set_ocsp(None);
                    s.staple = None;
                }
                if let Some(st) = &s.staple {
                    next = next.min(st.next_update);
                }
                s.next_attempt = Some(next);
                s.last_error = Some(e.clone());
                if must_staple {
                    tracing::error!(file = %self.file.display(), error = %e, retry_in = ?backoff, stapled = s.staple.is_some(), "OCSP status for a MUST-STAPLE certificate unavailable: clients refuse it without a staple");
                } else {
                    tracing::warn!(file = %self.file.display(), error = %e, retry_in = ?backoff, stapled = s.staple.is_some(), "OCSP stapling failed");
                }
            }
        }
    }

    /// Take over `old`'s staple if it is for the same certificate.
    fn inherit(&self, old: &KeySlot) {
        if self.current().cert.first() != old.current().cert.first() {
            return;
        }
        let o = old.stapled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(st) = &o.staple {
            self.set_ocsp(Some(st.der.clone()));
            let mut s = self.stapled.lock().unwrap_or_else(PoisonError::into_inner);
            s.staple = Some(st.clone());
            s.next_attempt = o.next_attempt;
        }
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Load every file and build the configuration; fails closed.
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let dev_pem = Mutex::new(None);
        let challenges = Arc::new(AlpnChallenges::default());
        let state = build(&settings, &dev_pem, &challenges, SystemTime::now(), true)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                settings,
                dev_pem,
                state: RwLock::new(state),
                challenges,
                reloaded: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &TlsSettings {
        &self.inner.settings
    }

    /// Where an ACME client publishes tls-alpn-01 challenge certificates.
    pub fn alpn_challenges(&self) -> Arc<AlpnChallenges> {
        Arc::clone(&self.inner.challenges)
    }

    /// Keep the OCSP staples of the served certificates fresh; runs until
    /// dropped (spawn it next to the listener). Returns at once when
    /// stapling is off.
    pub async fn run_stapling(self) {
        if !self.inner.settings.ocsp_stapling {
            return;
        }
        let client = match stapling_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "OCSP stapling off: cannot build its HTTP client");
                return;
            }
        };
        loop {
            let slots = self.state().slots;
            let mut wake = SystemTime::now() + Duration::from_secs(3600);
            for slot in slots.iter() {
                let (Some(target), Some(due)) = (&slot.ocsp, slot.next_attempt()) else {
                    continue;
                };
                if due <= SystemTime::now() {
                    let result = match fetch_ocsp(&client, target).await {
                        Ok(der) => stapling::verify(&der, target, SystemTime::now()),
                        Err(e) => Err(e.into()),
                    };
                    slot.update(result, SystemTime::now());
                }
                if let Some(next) = slot.next_attempt() {
                    wake = wake.min(next);
                }
            }
            let sleep = wake
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(Duration::from_millis(100));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.inner.reloaded.notified() => {}
            }
        }
    }

    /// The OCSP stapling state of each served certificate.
    pub fn staples(&self) -> Vec<StapleStatus> {
        self.state()
            .slots
            .iter()
            .map(|s| {
                let st = s.stapled.lock().unwrap_or_else(PoisonError::into_inner);
                StapleStatus {
                    cert_file: s.file.clone(),
                    responder: s.ocsp.as_ref().map(|t| t.url.clone()),
                    must_staple: s.ocsp.as_ref().is_some_and(|t| t.must_staple),
                    valid_until: st.staple.as_ref().map(|x| x.next_update),
                    last_error: st.last_error.clone(),
                }
            })
            .collect()
    }

    /// Re-read every file and swap the configuration for new connections.
    /// On error the current configuration stays in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build(
            &self.inner.settings,
            &self.inner.dev_pem,
            &self.inner.challenges,
            SystemTime::now(),
            false,
        ) {
            Ok(state) => {
                let old = self.state();
                for new in state.slots.iter() {
                    for o in old.slots.iter() {
                        new.inherit(o);
                    }
                }
                let names: Vec<_> = state
                    .certificates
                    .iter()
                    .map(|c| c.cert_file.display().to_string())
                    .collect();
                *self
                    .inner
                    .state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = state;
                self.inner.reloaded.notify_one();
                tracing::info!(certificates = ?names, "TLS configuration reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates");
                Err(e)
            }
        }
    }

    /// The current rustls configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.state().config
    }

    /// The certificates currently served.
    pub fn certificates(&self) -> Arc<[CertInfo]> {
        self.state().certificates
    }

    /// An acceptor for one new connection (current configuration).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server_config())
    }

    fn state(&self) -> State {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a finished handshake established, for [`crate::ext::ConnectionInfo`].
pub(crate) fn tls_info(conn: &ServerConnection) -> TlsInfo {
    TlsInfo {
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        // Present only if the client verifier accepted it.
        client_chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

fn build(
    s: &TlsSettings,
    dev_pem: &Mutex<Option<(String, String)>>,
    challenges: &Arc<AlpnChallenges>,
    now: SystemTime,
    first_load: bool,
) -> Result<State, TlsError> {
    let provider = provider();
    let mut loaded = Vec::new();
    if let Some(acme) = &s.acme {
        loaded.push(acme_certificate(acme, dev_pem, &provider, now, first_load)?);
    } else if s.certificates.is_empty() {
        let Some(dev) = &s.dev else {
            return Err(TlsError::NoCertificate);
        };
        loaded.push(dev_certificate(dev, dev_pem, &provider, now)?);
    }
    for files in &s.certificates {
        let cert_pem = read(&files.cert)?;
        let key_pem = read(&files.key)?;
        loaded.push(load_pair(
            &cert_pem,
            &files.cert,
            &key_pem,
            &files.key,
            &provider,
            now,
        )?);
    }

    let slots: Vec<Arc<KeySlot>> = loaded
        .iter()
        .map(|l| {
            Arc::new(KeySlot::new(
                Arc::clone(&l.key),
                l.info.cert_file.clone(),
                s.ocsp_stapling && !l.info.placeholder,
            ))
        })
        .collect();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for (l, slot) in loaded.iter().zip(&slots) {
        for name in &l.info.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut wildcard, parent.to_owned()),
                None => (&mut exact, name.clone()),
            };
            match map.entry(key) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    tracing::debug!(name, file = %l.info.cert_file.display(), "name already served by an earlier certificate");
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Arc::clone(slot));
                }
            }
        }
    }
    let default = slots.first().cloned().ok_or(TlsError::NoCertificate)?;
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
        challenges: Arc::clone(challenges),
    };

    let verifier = match &s.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let pem = read(path)?;
            let mut roots = RootCertStore::empty();
            let certs = pem_certs(&pem, path)?;
            for c in certs {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    path: path.clone(),
                    reason: format!("invalid client CA certificate: {e}"),
                })?;
            }
            let b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let b = match s.client_auth {
                ClientAuth::Required => b,
                ClientAuth::Optional => b.allow_unauthenticated(),
            };
            b.build().map_err(|e| TlsError::Invalid {
                path: path.clone(),
                reason: format!("client CA: {e}"),
            })?
        }
    };

    let versions: &[&'static rustls::SupportedProtocolVersion] = match s.min_version {
        MinTlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinTlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = s.alpn.clone();
    if s.acme.as_ref().is_some_and(|a| a.tls_alpn_01) {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    // A fresh session cache per build: sessions resumed across a reload
    // would skip verification against a changed client CA.

    let mut infos: Vec<CertInfo> = loaded.into_iter().map(|l| l.info).collect();
    if let Some(first) = infos.first_mut() {
        first.default = true;
    }
    Ok(State {
        config: Arc::new(config),
        certificates: Arc::from(infos),
        slots: Arc::from(slots),
    })
}

/// The ACME client's certificate, or a self-signed placeholder for the
/// domains until it has one. On a reload (`first_load` false) files that
/// exist but do not load are an error, so the certificate being served
/// stays (the client may be between writing the key and the chain).
fn acme_certificate(
    acme: &AcmeFiles,
    generated: &Mutex<Option<(String, String)>>,
    provider: &CryptoProvider,
    now: SystemTime,
    first_load: bool,
) -> Result<Loaded, TlsError> {
    let (cert_path, key_path) = (acme.cert_path(), acme.key_path());
    if let (Ok(cert), Ok(key)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        match load_pair(&cert, &cert_path, &key, &key_path, provider, now) {
            Ok(l) => return Ok(l),
            Err(e) if !first_load => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the ACME certificate is unusable; serving a placeholder until a new one is obtained")
            }
        }
    }
    let (cert, key) = generated_once(generated, &acme.domains, now, |_| {})?;
    tracing::warn!(domains = ?acme.domains, dir = %acme.dir.display(), "no ACME certificate yet: serving a SELF-SIGNED placeholder until the ACME client obtains one");
    let mut l = in_memory_pair(&cert, &key, "<ACME placeholder>", provider, now)?;
    l.info.placeholder = true;
    Ok(l)
}

fn dev_certificate(
    dev: &DevCertificate,
    dev_pem: &Mutex<Option<(String, String)>>,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Loaded, TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for n in &dev.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let Some(dir) = &dev.data_dir else {
        let (cert, key) = generated_once(dev_pem, &names, now, |n| warn_dev(n, None))?;
        return in_memory_pair(&cert, &key, "<dev self-signed>", provider, now);
    };
    let dir = dir.join("dev-tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if let (Ok(cert), Ok(key)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        match load_pair(&cert, &cert_path, &key, &key_path, provider, now) {
            Ok(l)
                if l.info.not_after > now + Duration::from_secs(86_400)
                    && dns_names_covered(&names, &l.info.names) =>
            {
                warn_dev(&names, Some(&dir));
                return Ok(l);
            }
            Ok(_) => {
                tracing::info!(dir = %dir.display(), "dev certificate expiring or names changed; generating a new one")
            }
            Err(e) => {
                tracing::warn!(error = %e, "stored dev certificate unusable; generating a new one")
            }
        }
    }
    let (cert, key) = generate_self_signed(&names, now)?;
    std::fs::create_dir_all(&dir).map_err(|e| TlsError::Dev(format!("{}: {e}", dir.display())))?;
    write_private(&key_path, key.as_bytes())?;
    std::fs::write(&cert_path, cert.as_bytes())
        .map_err(|e| TlsError::Dev(format!("{}: {e}", cert_path.display())))?;
    warn_dev(&names, Some(&dir));
    load_pair(
        cert.as_bytes(),
        &cert_path,
        key.as_bytes(),
        &key_path,
        provider,
        now,
    )
}

/// The self-signed pair kept in `slot`, generated for `names` the first
/// time (then `on_new`).
fn generated_once(
    slot: &Mutex<Option<(String, String)>>,
    names: &[String],
    now: SystemTime,
    on_new: impl FnOnce(&[String]),
) -> Result<(String, String), TlsError> {
    let mut pem = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = &*pem {
        return Ok(p.clone());
    }
    let p = generate_self_signed(names, now)?;
    *pem = Some(p.clone());
    on_new(names);
    Ok(p)
}

/// Load a PEM pair held in memory, named `label` in errors and status.
fn in_memory_pair(
    cert: &str,
    key: &str,
    label: &str,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Loaded, TlsError> {
    let label = PathBuf::from(label);
    load_pair(
        cert.as_bytes(),
        &label,
        key.as_bytes(),
        &label,
        provider,
        now,
    )
}

fn warn_dev(names: &[String], dir: Option<&Path>) {
    tracing::warn!(
        names = ?names,
        stored_in = %dir.map_or_else(|| "memory only".to_owned(), |d| d.display().to_string()),
        "DEV MODE: serving a SELF-SIGNED TLS certificate. Clients cannot verify it. Never use dev mode in production."
    );
}

/// Whether every DNS name we want (IPs are not reported in `have`) is present.
fn dns_names_covered(want: &[String], have: &[String]) -> bool {
    want.iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
        .all(|n| have.contains(&n.to_ascii_lowercase()))
}

fn generate_self_signed(names: &[String], now: SystemTime) -> Result<(String, String), TlsError> {
    let dev = |e: rcgen::Error| TlsError::Dev(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(dev)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(dev)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Hexon development certificate");
    params.not_before = now
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(now)
        .into();
    params.not_after = (now + Duration::from_secs(365 * 86_400)).into();
    let cert = params.self_signed(&key).map_err(dev)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    write_file_atomic(path, data, true)
        .map_err(|e| TlsError::Dev(format!("{}: {e}", path.display())))
}

/// Write `data` to `path` through a temporary file and a rename, so a
/// reader (a reload) sees the old or the new content, never half; `secret`:
/// readable by the owner only.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8], secret: bool) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may have other permissions: start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            reason: "no CERTIFICATE block in PEM".into(),
        });
    }
    Ok(certs)
}

fn load_pair(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Loaded, TlsError> {
    let chain = pem_certs(cert_pem, cert_path)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Invalid {
            path: key_path.to_owned(),
            reason: format!("invalid PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Invalid {
            path: key_path.to_owned(),
            reason: "no private key (PKCS#8, RSA or EC) in PEM".into(),
        })?;
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid {
                path: key_path.to_owned(),
                reason: format!("unsupported private key: {e}"),
            })?;
    let info = cert_info(&chain, cert_path, now)?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            tracing::warn!(key = %key_path.display(), "cannot check that the private key matches the certificate");
        }
        Err(e) => {
            return Err(TlsError::Invalid {
                path: cert_path.to_owned(),
                reason: format!("certificate/key check failed: {e}"),
            });
        }
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

fn cert_info(
    chain: &[CertificateDer<'static>],
    path: &Path,
    now: SystemTime,
) -> Result<CertInfo, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let leaf = chain
        .first()
        .ok_or_else(|| invalid("no CERTIFICATE block in PEM".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| invalid(format!("cannot parse the first certificate: {e}")))?;
    let mut names = Vec::new();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    let bad_wildcard = d.contains('*')
                        && d.strip_prefix("*.")
                            .is_none_or(|rest| rest.contains('*') || !rest.contains('.'));
                    if bad_wildcard {
                        tracing::warn!(file = %path.display(), name = d, "unsupported wildcard form ignored");
                        continue;
                    }
                    names.push(d);
                }
            }
        }
        Ok(None) => {
            tracing::warn!(file = %path.display(), "certificate has no subjectAltName: served only as the default");
        }
        Err(e) => return Err(invalid(format!("invalid subjectAltName: {e}"))),
    }
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let not_before = time(cert.validity().not_before.timestamp());
    let not_after = time(cert.validity().not_after.timestamp());
    if not_after < now {
        tracing::warn!(file = %path.display(), not_after = %cert.validity().not_after, "certificate EXPIRED: clients will refuse it");
    } else if not_before > now {
        tracing::warn!(file = %path.display(), not_before = %cert.validity().not_before, "certificate not yet valid: clients will refuse it");
    } else if not_after < now + Duration::from_secs(14 * 86_400) {
        tracing::warn!(file = %path.display(), not_after = %cert.validity().not_after, "certificate expires in less than 14 days");
    }
    Ok(CertInfo {
        cert_file: path.to_owned(),
        names,
        not_before,
        not_after,
        default: false,
        placeholder: false,
    })
}

/// Chooses the certificate by SNI.
struct SniResolver {
    exact: HashMap<String, Arc<KeySlot>>,
    /// Keyed by the parent domain (`*.example.com` → `example.com`).
    wildcard: HashMap<String, Arc<KeySlot>>,
    default: Arc<KeySlot>,
    challenges: Arc<AlpnChallenges>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys())
            .field("wildcard", &self.wildcard.keys())
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.current();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.current();
        }
        if let Some(k) = name
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
        {
            return k.current();
        }
        self.default.current()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: an `acme-tls/1` handshake gets the challenge
        // certificate for its SNI or nothing at all (the listener closes
        // such connections right after the handshake).
        if let Some(protocols) = hello.alpn() {
            let (mut acme, mut others) = (false, false);
            for p in protocols {
                if p == ACME_TLS_ALPN {
                    acme = true;
                } else {
                    others = true;
                }
            }
            if acme {
                // Only a validation handshake offers acme-tls/1, and only
                // it (RFC 8737 §3); anything mixing it with other
                // protocols gets no certificate at all.
                return if others {
                    None
                } else {
                    self.challenges.get(hello.server_name()?)
                };
            }
        }
        Some(self.lookup(hello.server_name()))
    }
}

/// The client that fetches OCSP responses (http, or https with the web's
/// roots).
type StaplingClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// A client configuration (ring) trusting the web's roots and `extra`:
/// for the listeners' own outgoing calls (OCSP responders, ACME CAs).
pub(crate) fn web_client_config(
    extra: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for r in extra {
        roots.add(r.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn stapling_client() -> Result<StaplingClient, rustls::Error> {
    let tls = web_client_config(&[])?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// POST the target's request to its responder (10 s, bounded body).
async fn fetch_ocsp(
    client: &StaplingClient,
    target: &stapling::OcspTarget,
) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt as _;
    let req = http::Request::post(&target.url)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .header(http::header::ACCEPT, "application/ocsp-response")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            target.request.clone(),
        )))
        .map_err(|e| format!("OCSP URL {}: {e}", target.url))?;
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("OCSP responder {}: {e}", target.url))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!(
                "OCSP responder {} answered HTTP {}",
                target.url,
                resp.status()
            ));
        }
        http_body_util::Limited::new(resp.into_body(), stapling::MAX_RESPONSE)
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| format!("OCSP responder {}: {e}", target.url))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("OCSP responder {} timed out", target.url))?
}

/// For the fuzz targets only (not a stable API): check `data` as an OCSP
/// response about a fixed certificate whose issuer is known. Whatever the
/// input, no panic; a response that passes is stapled byte for byte and is
/// not stale.
#[doc(hidden)]
pub fn fuzz_ocsp_response(data: &[u8]) {
    static TARGET: std::sync::OnceLock<Option<stapling::OcspTarget>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().ok()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).ok()?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "fuzz issuer");
        let ca_cert = ca.self_signed(&ca_key).ok()?;
        let key = rcgen::KeyPair::generate().ok()?;
        let mut leaf = rcgen::CertificateParams::new(vec!["fuzz.example.test".to_owned()]).ok()?;
        // AuthorityInfoAccess: OCSP at http://o.test.
        let url = b"http://o.test";
        let mut aia = vec![0x30, 0x1b, 0x30, 0x19];
        aia.extend_from_slice(&[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]);
        aia.extend_from_slice(&[0x86, 13]);
        aia.extend_from_slice(url);
        leaf.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                aia,
            ));
        let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).ok()?;
        stapling::target(&[leaf.der().clone(), ca_cert.der().clone()])
            .ok()
            .flatten()
    });
    let Some(target) = target else {
        return;
    };
    let now = SystemTime::now();
    if let Ok(staple) = stapling::verify(data, target, now) {
        assert_eq!(staple.der, data);
        assert!(staple.next_update > now);
        assert!(staple.refresh_at(now) > now);
    }
}
