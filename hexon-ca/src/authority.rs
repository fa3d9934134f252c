//! One certificate authority: a certificate and the [`Signer`] of its key.

use std::sync::Arc;
use std::time::Duration;

use hexon_core::{Signer, UnixTime};
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose, SerialNumber,
};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CaError;
use crate::bridge::{CaptureKey, raw_public_key, sign_built};

/// A CA certificate with the signer of its key.
pub struct Authority {
    name: String,
    cert_der: Vec<u8>,
    signer: Arc<dyn Signer>,
    issuer: rcgen::Issuer<'static, CaptureKey>,
    not_after: UnixTime,
    subject_der: Vec<u8>,
    ski: Vec<u8>,
    /// SHA-1 and SHA-256 of the DER subject, as OCSP `CertID`s carry them.
    pub(crate) name_hashes: ([u8; 20], [u8; 32]),
    /// SHA-1 and SHA-256 of the public key bits, as OCSP `CertID`s carry them.
    pub(crate) key_hashes: ([u8; 20], [u8; 32]),
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("name", &self.name)
            .field("key_id", &self.signer.key_id())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// An authority from its certificate (DER) and the signer of its key.
    ///
    /// Refuses a certificate that is not a CA, or whose public key is not the
    /// signer's.
    pub fn new(name: &str, cert_der: Vec<u8>, signer: Arc<dyn Signer>) -> Result<Self, CaError> {
        let setup = |why: String| CaError::Setup(format!("certificate authority {name:?}: {why}"));
        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| setup(format!("its certificate does not parse: {e}")))?;
        if !rest.is_empty() {
            return Err(setup("trailing bytes after its certificate".into()));
        }
        if !cert.is_ca() {
            return Err(setup("its certificate is not a CA certificate".into()));
        }
        let (public, _) = raw_public_key(signer.as_ref())?;
        let spk = cert.public_key().subject_public_key.data.as_ref();
        if spk != public.as_slice() {
            return Err(setup(format!(
                "its certificate is for another key than signer {:?}",
                signer.key_id()
            )));
        }
        let subject_der = cert.subject().as_raw().to_vec();
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .unwrap_or_else(|| Sha1::digest(spk).to_vec());
        let not_after = UnixTime::from_secs(cert.validity().not_after.timestamp());
        let name_hashes = (
            Sha1::digest(&subject_der).into(),
            Sha256::digest(&subject_der).into(),
        );
        let key_hashes = (Sha1::digest(spk).into(), Sha256::digest(spk).into());
        let issuer = rcgen::Issuer::from_ca_cert_der(
            &cert_der.as_slice().into(),
            CaptureKey::for_signer(signer.as_ref())?,
        )
        .map_err(|e| setup(format!("rcgen cannot issue from its certificate: {e}")))?;
        Ok(Authority {
            name: name.to_owned(),
            cert_der,
            signer,
            issuer,
            not_after,
            subject_der,
            ski,
            name_hashes,
            key_hashes,
        })
    }

    /// Its name (`root`, `tls-server`, …): the issuer name the store records.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Its certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// The signer of its key.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// When its certificate expires.
    pub fn not_after(&self) -> UnixTime {
        self.not_after
    }

    /// Its subject, DER.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// Its subject key identifier (what certificates it issues name as
    /// their authority key identifier).
    pub fn key_identifier(&self) -> &[u8] {
        &self.ski
    }

    /// Sign what `build` makes with rcgen through this authority's issuer.
    pub(crate) async fn sign(
        &self,
        what: &'static str,
        build: impl FnOnce(&rcgen::Issuer<'static, CaptureKey>) -> Result<Vec<u8>, rcgen::Error>,
    ) -> Result<Vec<u8>, CaError> {
        sign_built(self.signer.as_ref(), what, || build(&self.issuer)).await
    }
}

/// A fresh serial number: 16 random bytes (RFC 5280 allows 20; CA/B
/// Forum asks for 64 random bits) with a non-zero first byte, so its hex
/// form is always 32 digits and one certificate has one spelling.
pub fn random_serial() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    bytes.to_vec()
}

/// A serial number as the store records it: lower-case hex of its
/// big-endian magnitude without leading zero bytes.
pub fn serial_hex(be_bytes: &[u8]) -> String {
    let start = be_bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(be_bytes.len());
    let trimmed = be_bytes.get(start..).unwrap_or_default();
    if trimmed.is_empty() {
        return "00".into();
    }
    hexon_core::hex::encode(trimmed)
}

/// Parse [`serial_hex`]'s form back.
pub fn serial_from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() > 42 {
        return None;
    }
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .ok()
}

/// What kind of CA certificate to make.
#[derive(Clone, Debug)]
pub struct CaCertSpec {
    /// Subject common name.
    pub common_name: String,
    /// Subject organisation.
    pub organization: Option<String>,
    /// Lifetime.
    pub lifetime: Duration,
    /// `None` for a root; `Some(0)` for an issuing intermediate.
    pub path_len: Option<u8>,
    /// Extended key usages the CA may issue for (empty: any).
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// CRL distribution point to put in an intermediate (its issuer's CRL).
    pub crl_url: Option<String>,
    /// Issuer URL (AIA caIssuers) to put in an intermediate.
    pub issuer_url: Option<String>,
    /// OCSP URL (AIA) to put in an intermediate.
    pub ocsp_url: Option<String>,
}

impl CaCertSpec {
    fn params(&self, now: UnixTime) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, self.common_name.as_str());
        if let Some(o) = &self.organization {
            p.distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        p.is_ca = IsCa::Ca(match self.path_len {
            None => BasicConstraints::Unconstrained,
            Some(n) => BasicConstraints::Constrained(n),
        });
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.extended_key_usages = self.ekus.clone();
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        // An hour of slack for relying parties whose clocks are behind.
        p.not_before = to_offset(now.saturating_sub(Duration::from_secs(3600)))?;
        p.not_after = to_offset(now.saturating_add(self.lifetime))?;
        if let Some(url) = &self.crl_url {
            p.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        if let Some(ext) = aia_extension(self.ocsp_url.as_deref(), self.issuer_url.as_deref())? {
            p.custom_extensions.push(ext);
        }
        Ok(p)
    }

    /// A self-signed root for `signer`'s key.
    pub async fn self_signed(
        &self,
        signer: &Arc<dyn Signer>,
        now: UnixTime,
    ) -> Result<Vec<u8>, CaError> {
        let params = self.params(now)?;
        let key = CaptureKey::for_signer(signer.as_ref())?;
        sign_built(signer.as_ref(), "the root certificate", || {
            params.self_signed(&key).map(|c| c.der().to_vec())
        })
        .await
    }

    /// An intermediate for `subject`'s key, signed by `parent`.
    pub async fn signed_by(
        &self,
        subject: &Arc<dyn Signer>,
        parent: &Authority,
        now: UnixTime,
    ) -> Result<Vec<u8>, CaError> {
        let mut params = self.params(now)?;
        params.use_authority_key_identifier_extension = true;
        let key = CaptureKey::for_signer(subject.as_ref())?;
        parent
            .sign("an intermediate certificate", |issuer| {
                params.signed_by(&key, issuer).map(|c| c.der().to_vec())
            })
            .await
    }
}

pub(crate) fn to_offset(t: UnixTime) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_secs())
        .map_err(|e| CaError::build("a validity time", e))
}

/// The Authority Information Access extension (RFC 5280 4.2.2.1).
pub(crate) fn aia_extension(
    ocsp: Option<&str>,
    ca_issuers: Option<&str>,
) -> Result<Option<rcgen::CustomExtension>, CaError> {
    use der::Encode;
    use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
    use x509_cert::ext::pkix::name::GeneralName;

    let mut descriptions = Vec::new();
    for (method, url) in [
        (const_oid::db::rfc5280::ID_AD_OCSP, ocsp),
        (const_oid::db::rfc5280::ID_AD_CA_ISSUERS, ca_issuers),
    ] {
        if let Some(url) = url {
            let uri =
                der::asn1::Ia5String::new(url).map_err(|e| CaError::build("an AIA URL", e))?;
            descriptions.push(x509_cert::ext::pkix::AccessDescription {
                access_method: method,
                access_location: GeneralName::UniformResourceIdentifier(uri),
            });
        }
    }
    if descriptions.is_empty() {
        return Ok(None);
    }
    let der = AuthorityInfoAccessSyntax(descriptions)
        .to_der()
        .map_err(|e| CaError::build("the AIA extension", e))?;
    Ok(Some(rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        der,
    )))
}

/// PEM armour.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
