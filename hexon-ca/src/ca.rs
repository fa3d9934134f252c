//! The hierarchy: a root, issuing intermediates per profile, issuance,
//! revocation and CRLs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::store::{CertificateRecord, CertificateStore, Revocation, StoreError};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use tokio::sync::Mutex;

use crate::CaError;
use crate::authority::{
    Authority, aia_extension, pem, random_serial, serial_from_hex, serial_hex, to_offset,
};
use crate::csr::{CheckedCsr, KeyKind};
use crate::profile::{Profile, ProfileRules, SubjectName};

/// Shortest lifetime granted: anything shorter is a mistake.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Where relying parties fetch CRLs, issuer certificates and OCSP answers.
#[derive(Clone, Debug)]
pub struct PublicUrls {
    base: String,
}

impl PublicUrls {
    /// Under `base` (e.g. `https://ca.example.com/ca`): `/crl/{ca}.crl`,
    /// `/certs/{ca}.crt`, `/ocsp`.
    pub fn new(base: &str) -> Self {
        PublicUrls {
            base: base.trim_end_matches('/').to_owned(),
        }
    }
    /// The CRL of authority `name`.
    pub fn crl(&self, name: &str) -> String {
        format!("{}/crl/{name}.crl", self.base)
    }
    /// The certificate (DER) of authority `name`.
    pub fn certificate(&self, name: &str) -> String {
        format!("{}/certs/{name}.crt", self.base)
    }
    /// The OCSP responder.
    pub fn ocsp(&self) -> String {
        format!("{}/ocsp", self.base)
    }
}

/// A certificate to issue.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// What it is for.
    pub profile: Profile,
    /// The subject public key, DER `SubjectPublicKeyInfo`.
    pub spki_der: Vec<u8>,
    /// Its kind.
    pub key: KeyKind,
    /// Subject alternative names (checked against the profile's rules).
    pub names: Vec<SubjectName>,
    /// Subject common name; the first name when `None`.
    pub common_name: Option<String>,
    /// Requested lifetime; the profile's default when `None`, its maximum at most.
    pub lifetime: Option<Duration>,
    /// Who asked (identity subject or ACME account), for the record.
    pub requester: Option<String>,
    /// Add the TLS feature extension `status_request` (must-staple, RFC 7633).
    pub must_staple: bool,
}

impl IssueRequest {
    /// A request from a checked CSR, for the names it asks.
    pub fn from_csr(profile: Profile, csr: CheckedCsr) -> Self {
        IssueRequest {
            profile,
            spki_der: csr.spki_der,
            key: csr.key,
            names: csr.names,
            common_name: csr.common_name,
            lifetime: None,
            requester: None,
            must_staple: csr.must_staple,
        }
    }
}

/// An issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Serial, as the store records it.
    pub serial: String,
    /// The issuing authority's name.
    pub issuer: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate and the intermediate above it, PEM (what a TLS
    /// server sends; the root is the relying party's).
    pub chain_pem: String,
    /// Validity start.
    pub not_before: UnixTime,
    /// Validity end.
    pub not_after: UnixTime,
}

/// An RFC 5280 revocation reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationReason {
    /// 0.
    Unspecified,
    /// 1: the private key leaked.
    KeyCompromise,
    /// 3.
    AffiliationChanged,
    /// 4: replaced by a new certificate.
    Superseded,
    /// 5: no longer needed.
    CessationOfOperation,
    /// 9.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// The CRLReason code.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::PrivilegeWithdrawn => 9,
        }
    }

    /// From a CRLReason code; `None` for codes a subscriber may not use
    /// (CA compromise, certificate hold, remove from CRL, AA compromise)
    /// and undefined ones.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RevocationReason::Unspecified,
            1 => RevocationReason::KeyCompromise,
            3 => RevocationReason::AffiliationChanged,
            4 => RevocationReason::Superseded,
            5 => RevocationReason::CessationOfOperation,
            9 => RevocationReason::PrivilegeWithdrawn,
            _ => return None,
        })
    }

    fn rcgen(code: u8) -> Option<rcgen::RevocationReason> {
        Some(match code {
            0 => return None, // RFC 5280: omit rather than say "unspecified"
            1 => rcgen::RevocationReason::KeyCompromise,
            2 => rcgen::RevocationReason::CaCompromise,
            3 => rcgen::RevocationReason::AffiliationChanged,
            4 => rcgen::RevocationReason::Superseded,
            5 => rcgen::RevocationReason::CessationOfOperation,
            6 => rcgen::RevocationReason::CertificateHold,
            9 => rcgen::RevocationReason::PrivilegeWithdrawn,
            10 => rcgen::RevocationReason::AaCompromise,
            _ => rcgen::RevocationReason::Unspecified,
        })
    }
}

/// What the store says about one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Issued here and not revoked.
    Good,
    /// Revoked.
    Revoked(Revocation),
    /// Not issued by this authority.
    Unknown,
}

/// A signed CRL and when it was made.
#[derive(Clone, Debug)]
pub struct Crl {
    /// DER.
    pub der: Arc<[u8]>,
    /// `thisUpdate`.
    pub this_update: UnixTime,
    /// `nextUpdate`.
    pub next_update: UnixTime,
}

struct Binding {
    authority: Arc<Authority>,
    rules: ProfileRules,
}

/// The certificate authority: a root, the intermediates that issue leaves
/// (one per profile, or shared), the store every issued certificate is
/// recorded in, and the CRLs.
pub struct CertificateAuthority {
    root: Arc<Authority>,
    intermediates: Vec<Arc<Authority>>,
    profiles: HashMap<Profile, Binding>,
    store: Arc<dyn CertificateStore>,
    urls: Option<PublicUrls>,
    crl_lifetime: Duration,
    crls: Mutex<HashMap<String, Crl>>,
    crl_number: AtomicI64,
    revocations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("root", &self.root)
            .field("intermediates", &self.intermediates)
            .finish_non_exhaustive()
    }
}

/// Assembles a [`CertificateAuthority`].
pub struct CaBuilder {
    root: Arc<Authority>,
    intermediates: Vec<Arc<Authority>>,
    profiles: HashMap<Profile, Binding>,
    store: Arc<dyn CertificateStore>,
    urls: Option<PublicUrls>,
    crl_lifetime: Duration,
}

impl CaBuilder {
    /// Add an issuing intermediate (signed by the root) and the profiles it issues.
    pub fn intermediate(
        mut self,
        authority: Authority,
        profiles: impl IntoIterator<Item = (Profile, ProfileRules)>,
    ) -> Self {
        let authority = Arc::new(authority);
        for (profile, rules) in profiles {
            self.profiles.insert(
                profile,
                Binding {
                    authority: authority.clone(),
                    rules,
                },
            );
        }
        self.intermediates.push(authority);
        self
    }

    /// Put CRL distribution points and AIA (OCSP, issuer) under `urls`.
    pub fn public_urls(mut self, urls: PublicUrls) -> Self {
        self.urls = Some(urls);
        self
    }

    /// How long a CRL is valid (`nextUpdate - thisUpdate`); it is remade
    /// after half of that, and at once on revocation. Default 24 hours.
    pub fn crl_lifetime(mut self, lifetime: Duration) -> Self {
        self.crl_lifetime = lifetime.max(Duration::from_secs(120));
        self
    }

    /// Finish. Refuses names used twice.
    pub fn build(self) -> Result<CertificateAuthority, CaError> {
        let mut seen = std::collections::HashSet::new();
        for a in std::iter::once(&self.root).chain(&self.intermediates) {
            if !seen.insert(a.name()) {
                return Err(CaError::Setup(format!(
                    "two certificate authorities are named {:?}",
                    a.name()
                )));
            }
        }
        Ok(CertificateAuthority {
            root: self.root,
            intermediates: self.intermediates,
            profiles: self.profiles,
            store: self.store,
            urls: self.urls,
            crl_lifetime: self.crl_lifetime,
            crls: Mutex::new(HashMap::new()),
            crl_number: AtomicI64::new(0),
            revocations: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

impl CertificateAuthority {
    /// Start with `root`, recording issued certificates in `store`.
    pub fn builder(root: Authority, store: Arc<dyn CertificateStore>) -> CaBuilder {
        CaBuilder {
            root: Arc::new(root),
            intermediates: Vec::new(),
            profiles: HashMap::new(),
            store,
            urls: None,
            crl_lifetime: Duration::from_secs(24 * 3600),
        }
    }

    /// The root.
    pub fn root(&self) -> &Arc<Authority> {
        &self.root
    }

    /// The issuing intermediates.
    pub fn intermediates(&self) -> &[Arc<Authority>] {
        &self.intermediates
    }

    /// The root and the intermediates.
    pub fn authorities(&self) -> impl Iterator<Item = &Arc<Authority>> {
        std::iter::once(&self.root).chain(&self.intermediates)
    }

    /// The authority named `name`.
    pub fn authority(&self, name: &str) -> Option<&Arc<Authority>> {
        self.authorities().find(|a| a.name() == name)
    }

    /// The intermediate that issues `profile`, and its rules.
    pub fn profile(&self, profile: Profile) -> Option<(&Arc<Authority>, &ProfileRules)> {
        self.profiles
            .get(&profile)
            .map(|b| (&b.authority, &b.rules))
    }

    /// The store issued certificates are recorded in.
    pub fn store(&self) -> &Arc<dyn CertificateStore> {
        &self.store
    }

    /// Where relying parties fetch status, if configured.
    pub fn urls(&self) -> Option<&PublicUrls> {
        self.urls.as_ref()
    }

    /// Issue a certificate now.
    pub async fn issue(&self, request: &IssueRequest) -> Result<Issued, CaError> {
        self.issue_at(request, UnixTime::now()).await
    }

    /// Issue a certificate as of `now`.
    ///
    /// The names are checked against the profile's rules; the lifetime is
    /// the profile's default, at most its maximum, and never past the
    /// intermediate's own expiry. The certificate is recorded in the store
    /// before it is returned: one the store did not take is not returned.
    pub async fn issue_at(&self, request: &IssueRequest, now: UnixTime) -> Result<Issued, CaError> {
        let binding = self
            .profiles
            .get(&request.profile)
            .ok_or_else(|| CaError::UnknownAuthority(format!("for profile {}", request.profile)))?;
        binding.rules.check(request.profile, &request.names)?;
        let authority = &binding.authority;
        let lifetime = request
            .lifetime
            .unwrap_or(binding.rules.default_lifetime)
            .min(binding.rules.max_lifetime);
        if lifetime < MIN_LIFETIME {
            return Err(CaError::Refused(format!(
                "a lifetime under {} seconds is not issued",
                MIN_LIFETIME.as_secs()
            )));
        }
        // Five minutes back for clients whose clocks are behind.
        let not_before = now.saturating_sub(Duration::from_secs(300));
        let not_after = now.saturating_add(lifetime).min(authority.not_after());
        if not_after <= now {
            return Err(CaError::Setup(format!(
                "certificate authority {:?} has expired; renew it",
                authority.name()
            )));
        }

        let serial_bytes = random_serial();
        let serial = serial_hex(&serial_bytes);
        let params = self.leaf_params(request, authority, &serial_bytes, not_before, not_after)?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&request.spki_der)
            .map_err(|e| CaError::BadCsr(format!("the public key is not usable: {e}")))?;
        let der = authority
            .sign("a certificate", |issuer| {
                params.signed_by(&spki, issuer).map(|c| c.der().to_vec())
            })
            .await?;

        let record = CertificateRecord {
            serial: serial.clone(),
            issuer: authority.name().to_owned(),
            subject: subject_text(request),
            sans: request.names.iter().map(SubjectName::to_record).collect(),
            profile: request.profile.as_str().to_owned(),
            not_before,
            not_after,
            requester: request.requester.clone(),
            der: der.clone(),
            revoked: None,
        };
        self.store.insert_certificate(&record).await?;
        tracing::info!(
            serial = %serial,
            issuer = authority.name(),
            profile = %request.profile,
            subject = %record.subject,
            requester = record.requester.as_deref().unwrap_or("-"),
            not_after = not_after.as_secs(),
            "certificate issued"
        );
        let mut chain_pem = pem("CERTIFICATE", &der);
        chain_pem.push_str(&authority.certificate_pem());
        Ok(Issued {
            serial,
            issuer: authority.name().to_owned(),
            der,
            chain_pem,
            not_before,
            not_after,
        })
    }

    fn leaf_params(
        &self,
        request: &IssueRequest,
        authority: &Authority,
        serial: &[u8],
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(serial));
        p.not_before = to_offset(not_before)?;
        p.not_after = to_offset(not_after)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        let cn = request
            .common_name
            .clone()
            .or_else(|| match request.profile {
                // An SVID's identity is its URI; its subject may be empty.
                Profile::Spiffe => None,
                _ => request.names.first().map(|n| n.to_string()),
            });
        if let Some(cn) = cn {
            if cn.is_empty() || cn.chars().count() > 64 {
                return Err(CaError::Refused(
                    "the common name must be 1 to 64 characters".into(),
                ));
            }
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.subject_alt_names = request
            .names
            .iter()
            .map(SubjectName::to_san)
            .collect::<Result<_, _>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if request.key.is_rsa() && request.profile != Profile::TlsClient {
            p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        p.extended_key_usages = match request.profile {
            Profile::TlsServer => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Profile::TlsClient => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Profile::Spiffe => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        if let Some(urls) = &self.urls {
            p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![urls.crl(authority.name())],
            }];
            if let Some(ext) = aia_extension(
                Some(&urls.ocsp()),
                Some(&urls.certificate(authority.name())),
            )? {
                p.custom_extensions.push(ext);
            }
        }
        if request.must_staple {
            if self.urls.is_none() {
                // Nothing could ever be stapled: every client would refuse
                // the certificate.
                return Err(CaError::Refused(
                    "must-staple asked, but this CA names no OCSP responder in its certificates (set [ca] url)".into(),
                ));
            }
            p.custom_extensions.push(must_staple_extension()?);
        }
        Ok(p)
    }

    /// The authority that issued the certificate with this serial, and its record.
    pub async fn find(&self, serial: &str) -> Result<Option<CertificateRecord>, CaError> {
        for a in self.authorities() {
            if let Some(record) = self.store.certificate(a.name(), serial).await? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// What the store says about `serial` issued by `issuer`.
    pub async fn status(&self, issuer: &str, serial: &str) -> Result<Status, CaError> {
        Ok(match self.store.certificate(issuer, serial).await? {
            None => Status::Unknown,
            Some(r) => match r.revoked {
                Some(rev) => Status::Revoked(rev),
                None => Status::Good,
            },
        })
    }

    /// Revoke the certificate `serial` of `issuer`. `Ok(false)` if it was
    /// revoked already (the first revocation stands). The issuer's CRL is
    /// remade on its next fetch.
    pub async fn revoke(
        &self,
        issuer: &str,
        serial: &str,
        reason: RevocationReason,
        by: Option<&str>,
    ) -> Result<bool, CaError> {
        let revocation = Revocation {
            at: UnixTime::now(),
            reason: reason.code(),
        };
        let fresh = match self
            .store
            .revoke_certificate(issuer, serial, revocation)
            .await
        {
            Ok(fresh) => fresh,
            Err(StoreError::NotFound { .. }) => {
                return Err(CaError::Refused(format!(
                    "certificate {serial} was not issued by {issuer}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.revocations.fetch_add(1, Ordering::AcqRel);
        self.crls.lock().await.remove(issuer);
        tracing::info!(
            serial,
            issuer,
            reason = reason.code(),
            by = by.unwrap_or("-"),
            fresh,
            "certificate revoked"
        );
        Ok(fresh)
    }

    /// The current CRL of authority `name`: cached, remade when half its
    /// lifetime has passed or after a revocation.
    pub async fn crl(&self, name: &str) -> Result<Crl, CaError> {
        let now = UnixTime::now();
        let mut crls = self.crls.lock().await;
        if let Some(crl) = crls.get(name) {
            let half = crl.next_update.since(crl.this_update) / 2;
            if now < crl.this_update.saturating_add(half) {
                return Ok(crl.clone());
            }
        }
        let crl = self.make_crl(name, now).await?;
        crls.insert(name.to_owned(), crl.clone());
        Ok(crl)
    }

    async fn make_crl(&self, name: &str, now: UnixTime) -> Result<Crl, CaError> {
        let authority = self
            .authority(name)
            .ok_or_else(|| CaError::UnknownAuthority(name.to_owned()))?;
        let revoked = self.store.revoked_certificates(name, now).await?;
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for (serial, rev) in revoked {
            let Some(bytes) = serial_from_hex(&serial) else {
                tracing::error!(
                    serial,
                    issuer = name,
                    "a stored serial is not hex; left out of the CRL"
                );
                continue;
            };
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: to_offset(rev.at)?,
                reason_code: RevocationReason::rcgen(rev.reason),
                invalidity_date: None,
            });
        }
        // CRL numbers only grow: the time in milliseconds, or one more than
        // the last if the clock has not moved on.
        let millis = now.as_secs().saturating_mul(1000);
        let step = |prev: i64| prev.saturating_add(1).max(millis);
        let number =
            match self
                .crl_number
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| Some(step(prev)))
            {
                Ok(prev) | Err(prev) => step(prev),
            };
        let next_update = now.saturating_add(self.crl_lifetime);
        let params = CertificateRevocationListParams {
            this_update: to_offset(now)?,
            next_update: to_offset(next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(authority.key_identifier().to_vec()),
        };
        let der = authority
            .sign("a CRL", |issuer| {
                params.signed_by(issuer).map(|c| c.der().to_vec())
            })
            .await?;
        Ok(Crl {
            der: der.into(),
            this_update: now,
            next_update,
        })
    }

    /// Counts revocations made through this value: a cache of statuses
    /// (OCSP responses) made at an older count is stale.
    pub fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Record a certificate this CA made outside [`issue`](Self::issue)
    /// (OCSP responder certificates).
    pub(crate) async fn record(&self, record: &CertificateRecord) -> Result<(), CaError> {
        Ok(self.store.insert_certificate(record).await?)
    }

    /// The trust bundle (the root), PEM.
    pub fn bundle_pem(&self) -> String {
        self.root.certificate_pem()
    }
}

fn subject_text(request: &IssueRequest) -> String {
    request
        .common_name
        .clone()
        .or_else(|| request.names.first().map(|n| n.to_string()))
        .unwrap_or_default()
}

/// TLS feature `status_request` (RFC 7633): the certificate must be
/// presented with a stapled OCSP response.
fn must_staple_extension() -> Result<rcgen::CustomExtension, CaError> {
    use der::Encode;
    // Features ::= SEQUENCE OF INTEGER; status_request is 5.
    let der = vec![5u8]
        .to_der()
        .map_err(|e| CaError::build("the TLS feature extension", e))?;
    Ok(rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 24],
        der,
    ))
}
