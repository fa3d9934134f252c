//! The hierarchy from configuration: keys and certificates kept in a
//! directory, created on first start.
//!
//! ```toml
//! [ca]
//! dir = "/var/lib/hexon/ca"          # default: <gateway.data_dir>/ca
//! name = "Example Corp"               # "Example Corp Root CA", "Example Corp tls-server CA", …
//! url = "https://ca.example.com/ca"   # where CRLs, issuer certificates and OCSP are served
//!
//! [ca.profiles.tls-server]
//! dns = ["example.com", "internal"]   # these names and everything under them
//! ips = ["10.0.0.0/8"]
//! default_lifetime = "7d"
//! max_lifetime = "90d"
//!
//! [ca.profiles.spiffe]
//! trust_domain = "example.org"
//!
//! [ca.ssh]                            # OpenSSH certificates (absent: none)
//! host_domains = ["example.com"]
//! [ca.ssh.groups]
//! admins = ["root"]
//! ```
//!
//! Each enabled profile gets its own issuing intermediate (named like the
//! profile) unless `intermediate` names another profile's, so the
//! compromise of one issuing key affects one kind of certificate. The
//! intermediates have path length 0 and carry the extended key usages of
//! their profiles. Private keys are PKCS #8 PEM files readable by the owner
//! only; a root key may instead come from elsewhere (an HSM or a threshold
//! signer) through [`open_with_root`].
//!
//! The SSH CA ([`open_ssh`]) has two keys of its own, `ssh_user_ca.key` and
//! `ssh_host_ca.key` in the same directory: one signs user certificates,
//! the other host certificates, so neither can forge the other kind, and
//! neither has anything to do with the X.509 hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hexon_core::duration::HumanDuration;
use hexon_core::store::CertificateStore;
use hexon_core::{Algorithm, Ed25519Signer, P256Signer, Signer, UnixTime};
use rcgen::ExtendedKeyUsagePurpose;
use serde::Deserialize;

use crate::CaError;
use crate::authority::{Authority, CaCertSpec, pem};
use crate::ca::{CertificateAuthority, PublicUrls};
use crate::profile::{Profile, ProfileRules};

/// `[ca]` in the gateway configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Directory of keys and certificates (created, mode 0700).
    pub dir: Option<PathBuf>,
    /// Organisation name, and the prefix of the CA common names.
    #[serde(default = "default_name")]
    pub name: String,
    /// Public base URL of the CA endpoints (CRL distribution points and
    /// AIA in issued certificates). None: certificates carry neither.
    pub url: Option<String>,
    /// Key algorithm of new CA keys: `ecdsa-p256-sha256` (default, what
    /// every TLS client accepts) or `ed25519`.
    #[serde(default = "default_algorithm")]
    pub key_algorithm: Algorithm,
    /// Lifetime of a new root (default 3650d).
    #[serde(default = "default_root_lifetime")]
    pub root_lifetime: HumanDuration,
    /// Lifetime of a new intermediate (default 365d).
    #[serde(default = "default_intermediate_lifetime")]
    pub intermediate_lifetime: HumanDuration,
    /// Validity of each CRL (default 24h; remade after half of it).
    #[serde(default = "default_crl_lifetime")]
    pub crl_lifetime: HumanDuration,
    /// Enabled profiles. Default: `tls-server` and `tls-client` for
    /// `localhost`, and no SPIFFE.
    #[serde(default)]
    pub profiles: BTreeMap<Profile, ProfileConfig>,
    /// Who signs OCSP responses: `delegated` (default: a short-lived
    /// responder certificate per CA) or `authority` (the CA's own key).
    #[serde(default)]
    pub ocsp_signing: crate::ocsp::ResponderSigning,
    /// `nextUpdate - thisUpdate` of OCSP responses (default 4h).
    #[serde(default = "default_ocsp_validity")]
    pub ocsp_validity: HumanDuration,
    /// `[ca.acme]`: the ACME server (absent: none).
    pub acme: Option<crate::acme::AcmeConfig>,
    /// `[ca.ssh]`: the SSH certificate authority (absent: none).
    pub ssh: Option<SshConfig>,
}

/// `[ca.ssh]`: OpenSSH user and host certificates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Algorithm of new SSH CA keys: `ed25519` (default) or
    /// `ecdsa-p256-sha256` (`ecdsa-sha2-nistp256`).
    #[serde(default = "default_ssh_algorithm")]
    pub key_algorithm: Algorithm,
    /// User certificate lifetime when none is asked (default 8h).
    #[serde(default = "default_user_lifetime")]
    pub user_lifetime: HumanDuration,
    /// Longest user certificate lifetime (default 24h; longer requests are
    /// clamped).
    #[serde(default = "default_user_max_lifetime")]
    pub user_max_lifetime: HumanDuration,
    /// Host certificate lifetime when none is asked (default 30d).
    #[serde(default = "default_host_lifetime")]
    pub host_lifetime: HumanDuration,
    /// Longest host certificate lifetime (default 90d).
    #[serde(default = "default_host_max_lifetime")]
    pub host_max_lifetime: HumanDuration,
    /// Extensions of user certificates (default OpenSSH's: `permit-pty`,
    /// `permit-port-forwarding`, `permit-agent-forwarding`,
    /// `permit-X11-forwarding`, `permit-user-rc`).
    #[serde(default = "default_ssh_extensions")]
    pub extensions: Vec<String>,
    /// `force-command` critical option on every user certificate.
    pub force_command: Option<String>,
    /// `source-address` critical option on every user certificate.
    #[serde(default)]
    pub source_address: Vec<ipnet::IpNet>,
    /// Whether the user's own name is a principal (default true).
    #[serde(default = "default_true")]
    pub user_principal: bool,
    /// Group name to the principals it grants.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Domains host certificates may name (each and everything under it).
    /// Empty: no host certificates.
    #[serde(default)]
    pub host_domains: Vec<String>,
}

impl SshConfig {
    /// The issuing policy.
    pub fn policy(&self) -> crate::ssh::SshPolicy {
        crate::ssh::SshPolicy {
            user_default_lifetime: self.user_lifetime.get(),
            user_max_lifetime: self.user_max_lifetime.get(),
            host_default_lifetime: self.host_lifetime.get(),
            host_max_lifetime: self.host_max_lifetime.get(),
            extensions: self.extensions.iter().cloned().collect(),
            force_command: self.force_command.clone(),
            source_address: self.source_address.clone(),
            user_principal: self.user_principal,
            group_principals: self.groups.clone(),
            host_domains: self.host_domains.clone(),
        }
    }

    fn validate(&mut self) -> Result<(), CaError> {
        if !matches!(
            self.key_algorithm,
            Algorithm::Ed25519 | Algorithm::EcdsaP256Sha256
        ) {
            return Err(CaError::Setup(
                "[ca] ssh.key_algorithm must be ed25519 or ecdsa-p256-sha256".into(),
            ));
        }
        for d in &mut self.host_domains {
            *d = d
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
        }
        self.policy()
            .validate()
            .map_err(|e| CaError::Setup(format!("[ca] ssh.{e}")))
    }
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            key_algorithm: default_ssh_algorithm(),
            user_lifetime: default_user_lifetime(),
            user_max_lifetime: default_user_max_lifetime(),
            host_lifetime: default_host_lifetime(),
            host_max_lifetime: default_host_max_lifetime(),
            extensions: default_ssh_extensions(),
            force_command: None,
            source_address: Vec::new(),
            user_principal: true,
            groups: BTreeMap::new(),
            host_domains: Vec::new(),
        }
    }
}

fn default_ssh_algorithm() -> Algorithm {
    Algorithm::Ed25519
}
fn default_user_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(8 * 3600))
}
fn default_user_max_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_host_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 86_400))
}
fn default_host_max_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(90 * 86_400))
}
fn default_ssh_extensions() -> Vec<String> {
    crate::ssh::DEFAULT_EXTENSIONS
        .iter()
        .map(|e| (*e).to_owned())
        .collect()
}
fn default_true() -> bool {
    true
}

impl CaConfig {
    /// The OCSP responder settings.
    pub fn ocsp_settings(&self) -> crate::ocsp::OcspSettings {
        crate::ocsp::OcspSettings {
            signing: self.ocsp_signing,
            validity: self.ocsp_validity.get(),
            ..crate::ocsp::OcspSettings::default()
        }
    }
}

/// `[ca.profiles.<profile>]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// DNS names allowed: each entry and every name under it.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP networks allowed.
    #[serde(default)]
    pub ips: Vec<ipnet::IpNet>,
    /// SPIFFE trust domain (the `spiffe` profile; required there).
    pub trust_domain: Option<String>,
    /// Lifetime when none is asked.
    pub default_lifetime: Option<HumanDuration>,
    /// Longest lifetime granted.
    pub max_lifetime: Option<HumanDuration>,
    /// Issue from this other profile's intermediate instead of its own.
    pub intermediate: Option<Profile>,
}

fn default_name() -> String {
    "Hexon".into()
}
fn default_algorithm() -> Algorithm {
    Algorithm::EcdsaP256Sha256
}
fn default_root_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(3650 * 86_400))
}
fn default_intermediate_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(365 * 86_400))
}
fn default_ocsp_validity() -> HumanDuration {
    HumanDuration(Duration::from_secs(4 * 3600))
}
fn default_crl_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(86_400))
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            dir: None,
            name: default_name(),
            url: None,
            key_algorithm: default_algorithm(),
            root_lifetime: default_root_lifetime(),
            intermediate_lifetime: default_intermediate_lifetime(),
            crl_lifetime: default_crl_lifetime(),
            profiles: BTreeMap::new(),
            ocsp_signing: crate::ocsp::ResponderSigning::default(),
            ocsp_validity: default_ocsp_validity(),
            acme: None,
            ssh: None,
        }
    }
}

impl CaConfig {
    /// Parse `[ca]`, with the path of the offending key in errors.
    pub fn from_toml(table: toml::Table) -> Result<Self, CaError> {
        let mut cfg: CaConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| CaError::Setup(format!("[ca] {}: {}", e.path(), e.inner())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check what serde cannot.
    pub fn validate(&mut self) -> Result<(), CaError> {
        let bad = |why: String| Err(CaError::Setup(format!("[ca] {why}")));
        if self.name.trim().is_empty() || self.name.chars().count() > 40 {
            return bad("name must be 1 to 40 characters".into());
        }
        if !matches!(
            self.key_algorithm,
            Algorithm::EcdsaP256Sha256 | Algorithm::Ed25519
        ) {
            return bad("key_algorithm must be ecdsa-p256-sha256 or ed25519".into());
        }
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return bad(format!("url {url:?} must be an http:// or https:// URL"));
        }
        if self.profiles.is_empty() {
            for p in [Profile::TlsServer, Profile::TlsClient] {
                self.profiles.insert(
                    p,
                    ProfileConfig {
                        dns: vec!["localhost".into()],
                        ..ProfileConfig::default()
                    },
                );
            }
        }
        for (profile, pc) in &mut self.profiles {
            for d in &mut pc.dns {
                *d = d
                    .trim_start_matches("*.")
                    .trim_start_matches('.')
                    .to_ascii_lowercase();
                crate::profile::check_dns_name(d)
                    .or_else(|e| bad(format!("profiles.{profile}.dns: {e}")))?;
            }
            if *profile == Profile::Spiffe {
                match &pc.trust_domain {
                    None => return bad("profiles.spiffe.trust_domain is required".into()),
                    Some(td) => crate::profile::check_spiffe_id(&format!("spiffe://{td}/x"), td)
                        .or_else(|e| bad(format!("profiles.spiffe.trust_domain: {e}")))?,
                }
            } else if pc.trust_domain.is_some() {
                return bad(format!(
                    "profiles.{profile}.trust_domain is for the spiffe profile only"
                ));
            }
            let rules = pc.rules(*profile);
            if rules.default_lifetime > rules.max_lifetime {
                return bad(format!(
                    "profiles.{profile}: default_lifetime is longer than max_lifetime"
                ));
            }
            if rules.default_lifetime < crate::ca::MIN_LIFETIME {
                return bad(format!(
                    "profiles.{profile}: default_lifetime must be at least 60s"
                ));
            }
        }
        if let Some(acme) = &mut self.acme {
            acme.validate()?;
            if !self.profiles.contains_key(&acme.profile) {
                return bad(format!(
                    "acme.profile {} is not among the enabled profiles",
                    acme.profile
                ));
            }
        }
        if let Some(ssh) = &mut self.ssh {
            ssh.validate()?;
        }
        if self.ocsp_validity.get() < Duration::from_secs(300) {
            return bad("ocsp_validity must be at least 5m".into());
        }
        for (profile, pc) in &self.profiles {
            if let Some(other) = pc.intermediate {
                match self.profiles.get(&other) {
                    None => {
                        return bad(format!(
                            "profiles.{profile}.intermediate: profile {other} is not enabled"
                        ));
                    }
                    Some(o) if o.intermediate.is_some() => {
                        return bad(format!(
                            "profiles.{profile}.intermediate: {other} itself shares another's intermediate"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

impl ProfileConfig {
    /// The issuing rules.
    pub fn rules(&self, profile: Profile) -> ProfileRules {
        let mut r = ProfileRules::new(profile);
        if let Some(d) = self.default_lifetime {
            r.default_lifetime = d.get();
        }
        if let Some(m) = self.max_lifetime {
            r.max_lifetime = m.get();
        }
        r.dns_suffixes = self.dns.clone();
        r.ip_networks = self.ips.clone();
        r.trust_domain = self.trust_domain.clone();
        r
    }
}

fn ekus(profile: Profile) -> Vec<ExtendedKeyUsagePurpose> {
    match profile {
        Profile::TlsServer => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Profile::TlsClient => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Profile::Spiffe => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    }
}

/// Open the hierarchy in `cfg.dir` (or `default_dir`), creating what is
/// missing: the root key and certificate, and an intermediate per profile.
pub async fn open(
    cfg: &CaConfig,
    default_dir: &Path,
    store: Arc<dyn CertificateStore>,
) -> Result<CertificateAuthority, CaError> {
    let dir = cfg.dir.clone().unwrap_or_else(|| default_dir.to_path_buf());
    create_dir(&dir)?;
    let root_signer = load_or_generate_key(&dir, "root", cfg.key_algorithm)?;
    open_with_root(cfg, &dir, root_signer, store).await
}

/// [`open`] with a root key held elsewhere (an HSM, a threshold signer):
/// `root.crt` in `dir` must be its certificate, or is created for it.
pub async fn open_with_root(
    cfg: &CaConfig,
    dir: &Path,
    root_signer: Arc<dyn Signer>,
    store: Arc<dyn CertificateStore>,
) -> Result<CertificateAuthority, CaError> {
    create_dir(dir)?;
    let now = UnixTime::now();
    let root_cert = dir.join("root.crt");
    let root_der = match read_cert(&root_cert)? {
        Some(der) => der,
        None => {
            let spec = CaCertSpec {
                common_name: format!("{} Root CA", cfg.name),
                organization: Some(cfg.name.clone()),
                lifetime: cfg.root_lifetime.get(),
                path_len: None,
                ekus: Vec::new(),
                crl_url: None,
                issuer_url: None,
                ocsp_url: None,
            };
            let der = spec.self_signed(&root_signer, now).await?;
            write_file(&root_cert, pem("CERTIFICATE", &der).as_bytes(), false)?;
            tracing::warn!(path = %root_cert.display(), "created a new root CA; distribute root.crt to relying parties");
            der
        }
    };
    let root = Authority::new("root", root_der, root_signer)?;
    let urls = cfg.url.as_deref().map(PublicUrls::new);

    // Which intermediate each profile uses.
    let mut owners: BTreeMap<Profile, Vec<Profile>> = BTreeMap::new();
    for (profile, pc) in &cfg.profiles {
        owners
            .entry(pc.intermediate.unwrap_or(*profile))
            .or_default()
            .push(*profile);
    }
    let mut intermediates = Vec::new();
    for (owner, profiles) in owners {
        let name = owner.as_str();
        let signer = load_or_generate_key(dir, name, cfg.key_algorithm)?;
        let path = dir.join(format!("{name}.crt"));
        let der = match read_cert(&path)? {
            Some(der) => der,
            None => {
                let spec = CaCertSpec {
                    common_name: format!("{} {name} CA", cfg.name),
                    organization: Some(cfg.name.clone()),
                    lifetime: cfg.intermediate_lifetime.get(),
                    path_len: Some(0),
                    ekus: profiles
                        .iter()
                        .flat_map(|p| ekus(*p))
                        .fold(Vec::new(), |mut v, e| {
                            if !v.contains(&e) {
                                v.push(e);
                            }
                            v
                        }),
                    crl_url: urls.as_ref().map(|u| u.crl("root")),
                    issuer_url: urls.as_ref().map(|u| u.certificate("root")),
                    ocsp_url: urls.as_ref().map(|u| u.ocsp()),
                };
                let der = spec.signed_by(&signer, &root, now).await?;
                // Recorded like every certificate the hierarchy issues, so
                // the root's CRL and OCSP know it.
                store
                    .insert_certificate(&intermediate_record(&der, &spec.common_name)?)
                    .await?;
                write_file(&path, pem("CERTIFICATE", &der).as_bytes(), false)?;
                tracing::info!(path = %path.display(), "created intermediate CA {name}");
                der
            }
        };
        let authority = Authority::new(name, der, signer)?;
        let left = authority.not_after().since(now);
        if left < Duration::from_secs(30 * 86_400) {
            tracing::warn!(
                intermediate = name,
                days_left = left.as_secs() / 86_400,
                "intermediate CA expires soon: remove {name}.crt and {name}.key to have a new one made (certificates it issued stay valid until they expire)"
            );
        }
        let rules = profiles
            .iter()
            .map(|p| {
                (
                    *p,
                    cfg.profiles
                        .get(p)
                        .map(|pc| pc.rules(*p))
                        .unwrap_or_else(|| ProfileRules::new(*p)),
                )
            })
            .collect::<Vec<_>>();
        intermediates.push((authority, rules));
    }

    let mut builder =
        CertificateAuthority::builder(root, store).crl_lifetime(cfg.crl_lifetime.get());
    if let Some(urls) = urls {
        builder = builder.public_urls(urls);
    }
    for (authority, rules) in intermediates {
        builder = builder.intermediate(authority, rules);
    }
    builder.build()
}

/// Open the SSH certificate authority of `[ca.ssh]` (`None` when there is
/// none): its user and host CA keys in `cfg.dir` (or `default_dir`),
/// created on first start as `ssh_user_ca.key` and `ssh_host_ca.key`
/// (PKCS #8 PEM, mode 0600).
pub fn open_ssh(
    cfg: &CaConfig,
    default_dir: &Path,
    store: Arc<dyn CertificateStore>,
) -> Result<Option<crate::ssh::SshCa>, CaError> {
    let Some(ssh) = &cfg.ssh else {
        return Ok(None);
    };
    let dir = cfg.dir.clone().unwrap_or_else(|| default_dir.to_path_buf());
    create_dir(&dir)?;
    let mut keys = Vec::new();
    for name in ["ssh_user_ca", "ssh_host_ca"] {
        let created = !dir.join(format!("{name}.key")).exists();
        keys.push(load_or_generate_key(&dir, name, ssh.key_algorithm)?);
        if created {
            tracing::warn!(key = %dir.join(format!("{name}.key")).display(), "created a new SSH CA key");
        }
    }
    let host = keys.pop();
    let user = keys.pop();
    let (Some(user), Some(host)) = (user, host) else {
        return Err(CaError::Setup("SSH CA keys missing".into()));
    };
    let ca = crate::ssh::SshCa::new(user, host, ssh.policy(), store)
        .map_err(|e| CaError::Setup(format!("[ca] ssh: {e}")))?;
    tracing::info!(
        user_ca = ca.user_ca_fingerprint(),
        host_ca = ca.host_ca_fingerprint(),
        "SSH certificate authority enabled"
    );
    Ok(Some(ca))
}

/// The store's record of an intermediate the root just signed.
fn intermediate_record(
    der: &[u8],
    subject: &str,
) -> Result<hexon_core::store::CertificateRecord, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::build("an intermediate record", e))?;
    Ok(hexon_core::store::CertificateRecord {
        serial: crate::authority::serial_hex(cert.raw_serial()),
        issuer: "root".into(),
        subject: subject.to_owned(),
        sans: Vec::new(),
        profile: "intermediate".into(),
        not_before: UnixTime::from_secs(cert.validity().not_before.timestamp()),
        not_after: UnixTime::from_secs(cert.validity().not_after.timestamp()),
        requester: None,
        der: der.to_vec(),
        revoked: None,
    })
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::Setup(format!("cannot create CA directory {}: {e}", dir.display())))
}

fn read_cert(path: &Path) -> Result<Option<Vec<u8>>, CaError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CaError::Setup(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let der = rustls_pemfile::certs(&mut text.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CaError::Setup(format!("{} holds no PEM certificate", path.display())))?;
    Ok(Some(der.to_vec()))
}

fn load_or_generate_key(
    dir: &Path,
    name: &str,
    alg: Algorithm,
) -> Result<Arc<dyn Signer>, CaError> {
    let path = dir.join(format!("{name}.key"));
    let kid = format!("ca-{name}");
    let setup = |why: String| CaError::Setup(format!("{}: {why}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(pem_text) => {
            // Whichever algorithm the file holds, whatever new keys use.
            if let Ok(k) = P256Signer::from_pkcs8_pem(&kid, &pem_text) {
                return Ok(crate::local_key::fast(k));
            }
            Ed25519Signer::from_pkcs8_pem(&kid, &pem_text)
                .map(|k| Arc::new(k) as Arc<dyn Signer>)
                .map_err(|e| setup(format!("not a P-256 or Ed25519 PKCS #8 key ({e})")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(format!("{name}.crt")).exists() {
                return Err(setup(format!(
                    "the key is missing but {name}.crt exists; restore the key, or remove {name}.crt to start a new {name} CA"
                )));
            }
            let (signer, pem_text): (Arc<dyn Signer>, _) = match alg {
                Algorithm::Ed25519 => {
                    let k = Ed25519Signer::generate(&kid).map_err(|e| setup(e.to_string()))?;
                    let pem_text = k.to_pkcs8_pem().map_err(|e| setup(e.to_string()))?;
                    (Arc::new(k), pem_text)
                }
                _ => {
                    let k = P256Signer::generate(&kid).map_err(|e| setup(e.to_string()))?;
                    let pem_text = k.to_pkcs8_pem().map_err(|e| setup(e.to_string()))?;
                    (crate::local_key::fast(k), pem_text)
                }
            };
            write_file(&path, pem_text.as_bytes(), true)?;
            Ok(signer)
        }
        Err(e) => Err(setup(format!("cannot read: {e}"))),
    }
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| CaError::Setup(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| CaError::Setup(format!("cannot write {}: {e}", path.display())))
}
