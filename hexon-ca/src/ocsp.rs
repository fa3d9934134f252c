//! OCSP responder (RFC 6960), with nonces (RFC 8954).
//!
//! Responses are built with the RustCrypto `x509-ocsp` types and signed
//! through the [`Signer`] seam like everything else. By default each
//! authority answers through a *delegated responder*: a short-lived
//! certificate with `id-kp-OCSPSigning` and `id-pkix-ocsp-nocheck` that the
//! authority issues itself and whose key lives in memory. The authority's
//! own key — which may be a slow threshold key — then signs one responder
//! certificate every few days instead of every response. With
//! [`ResponderSigning::Authority`] the authority signs responses directly.
//!
//! Responses without a nonce are cached until close to their `nextUpdate`,
//! and dropped at once when a revocation is made through the CA.

use std::sync::Arc;
use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Decode, Encode};
use hexon_core::store::CertificateRecord;
use hexon_core::{P256Signer, Signer, UnixTime};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose,
    SerialNumber,
};
use sha1::{Digest as _, Sha1};
use tokio::sync::Mutex;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::CrlReason;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    OcspResponseStatus, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
    Version,
};

use crate::CaError;
use crate::authority::{Authority, random_serial, serial_hex, to_offset};
use crate::bridge::{CaptureKey, sign_checked, signature_algorithm};
use crate::ca::{CertificateAuthority, Status};

/// Largest OCSP request accepted, in bytes.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;
/// Most certificates asked about in one request.
pub const MAX_CERTS_PER_REQUEST: usize = 16;

/// Who signs OCSP responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponderSigning {
    /// A delegated responder certificate per authority (default).
    #[default]
    Delegated,
    /// The authority's own key.
    Authority,
}

/// Settings of the responder.
#[derive(Clone, Debug)]
pub struct OcspSettings {
    /// Who signs.
    pub signing: ResponderSigning,
    /// `nextUpdate - thisUpdate` of each response (default 4 hours).
    pub validity: Duration,
    /// Lifetime of a delegated responder certificate (default 7 days; a
    /// new one is made when half of it is left).
    pub responder_lifetime: Duration,
}

impl Default for OcspSettings {
    fn default() -> Self {
        OcspSettings {
            signing: ResponderSigning::Delegated,
            validity: Duration::from_secs(4 * 3600),
            responder_lifetime: Duration::from_secs(7 * 86_400),
        }
    }
}

/// A finished answer: DER and how long a cache may keep it.
#[derive(Clone, Debug)]
pub struct OcspAnswer {
    /// The DER `OCSPResponse`.
    pub der: Arc<[u8]>,
    /// Seconds an HTTP cache may keep it (`0` for errors and nonced answers).
    pub max_age: u64,
}

struct Delegate {
    signer: Arc<dyn Signer>,
    /// SHA-1 of its public key: the response's `ResponderID`.
    key_hash: [u8; 20],
    cert: x509_cert::Certificate,
    renew_after: UnixTime,
}

struct Cached {
    der: Arc<[u8]>,
    next_update: UnixTime,
    fresh_until: UnixTime,
    epoch: u64,
}

/// A checked OCSP request: the certificates asked about and the nonce.
#[derive(Debug)]
pub struct ParsedRequest {
    /// One entry per certificate (1 to [`MAX_CERTS_PER_REQUEST`]).
    pub requests: Vec<x509_ocsp::Request>,
    /// The nonce extension, echoed in the response.
    pub nonce: Option<Extension>,
}

/// Parse and check a DER `OCSPRequest`: size, structure, 1 to
/// [`MAX_CERTS_PER_REQUEST`] certificates, a nonce of 1 to 32 octets (RFC
/// 8954), no critical extension we do not know. Errors are the response
/// status to send (`malformedRequest`).
pub fn parse_request(der: &[u8]) -> Result<ParsedRequest, OcspResponseStatus> {
    let malformed = OcspResponseStatus::MalformedRequest;
    if der.len() > MAX_REQUEST_LEN {
        return Err(malformed);
    }
    let request = OcspRequest::from_der(der).map_err(|_| malformed)?;
    let tbs = request.tbs_request;
    if tbs.request_list.is_empty() || tbs.request_list.len() > MAX_CERTS_PER_REQUEST {
        return Err(malformed);
    }
    let mut nonce = None;
    for ext in tbs.request_extensions.into_iter().flatten() {
        if ext.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE {
            // At most 32 octets, plus the OCTET STRING header.
            let len = ext.extn_value.as_bytes().len();
            if len == 0 || len > 34 {
                return Err(malformed);
            }
            nonce = Some(ext);
        } else if ext.critical {
            return Err(malformed);
        }
    }
    Ok(ParsedRequest {
        requests: tbs.request_list,
        nonce,
    })
}

/// The OCSP responder for every authority of a [`CertificateAuthority`].
pub struct OcspResponder {
    ca: Arc<CertificateAuthority>,
    settings: OcspSettings,
    delegates: Mutex<std::collections::HashMap<String, Arc<Delegate>>>,
    cache: quick_cache::sync::Cache<Vec<u8>, Arc<Cached>>,
}

impl std::fmt::Debug for OcspResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcspResponder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn status_only(status: OcspResponseStatus) -> OcspAnswer {
    let resp = OcspResponse {
        response_status: status,
        response_bytes: None,
    };
    // A status-only response is a fixed handful of bytes; it always encodes.
    let der = resp
        .to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, status as u8]);
    OcspAnswer {
        der: der.into(),
        max_age: 0,
    }
}

fn gt(t: UnixTime) -> Result<OcspGeneralizedTime, CaError> {
    let secs =
        u64::try_from(t.as_secs()).map_err(|_| CaError::build("an OCSP time", "before 1970"))?;
    GeneralizedTime::from_unix_duration(Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| CaError::build("an OCSP time", e))
}

impl OcspResponder {
    /// A responder for `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, settings: OcspSettings) -> Self {
        OcspResponder {
            ca,
            settings,
            delegates: Mutex::new(std::collections::HashMap::new()),
            cache: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// Answer a DER `OCSPRequest`. Never fails: problems become the
    /// response statuses RFC 6960 defines (`malformedRequest`,
    /// `unauthorized` for certificates of other CAs, `tryLater` when the
    /// store is down, `internalError`).
    pub async fn respond(&self, request_der: &[u8]) -> OcspAnswer {
        self.respond_at(request_der, UnixTime::now()).await
    }

    /// [`respond`](Self::respond) as of `now`.
    pub async fn respond_at(&self, request_der: &[u8], now: UnixTime) -> OcspAnswer {
        let parsed = match parse_request(request_der) {
            Ok(p) => p,
            Err(status) => return status_only(status),
        };
        let (list, nonce) = (&parsed.requests, parsed.nonce);
        // One authority must answer for every certificate asked about.
        let mut authority: Option<&Arc<Authority>> = None;
        for r in list {
            let Some(a) = self.authority_for(&r.req_cert) else {
                return status_only(OcspResponseStatus::Unauthorized);
            };
            if authority.is_some_and(|prev| prev.name() != a.name()) {
                return status_only(OcspResponseStatus::Unauthorized);
            }
            authority = Some(a);
        }
        let Some(authority) = authority else {
            return status_only(OcspResponseStatus::MalformedRequest);
        };

        let cache_key = match (&nonce, list.as_slice()) {
            (None, [one]) => one.req_cert.to_der().ok(),
            _ => None,
        };
        let epoch = self.ca.revocation_epoch();
        if let Some(key) = &cache_key
            && let Some(hit) = self.cache.get(key)
            && hit.epoch == epoch
            && now < hit.fresh_until
        {
            return OcspAnswer {
                der: hit.der.clone(),
                max_age: u64::try_from(hit.next_update.as_secs() - now.as_secs()).unwrap_or(0),
            };
        }

        match self.build(authority, list, nonce, now).await {
            Ok((der, next_update)) => {
                let der: Arc<[u8]> = der.into();
                let max_age = if cache_key.is_some() {
                    u64::try_from(next_update.as_secs() - now.as_secs()).unwrap_or(0)
                } else {
                    0
                };
                if let Some(key) = cache_key {
                    let validity = next_update.since(now);
                    self.cache.insert(
                        key,
                        Arc::new(Cached {
                            der: der.clone(),
                            next_update,
                            // Refreshed with a quarter of the validity left.
                            fresh_until: now.saturating_add(validity.mul_f32(0.75)),
                            epoch,
                        }),
                    );
                }
                OcspAnswer { der, max_age }
            }
            Err(CaError::Store(e)) => {
                tracing::warn!(error = %e, "OCSP: the certificate store is unavailable");
                status_only(OcspResponseStatus::TryLater)
            }
            Err(e) => {
                tracing::error!(error = %e, authority = authority.name(), "OCSP: cannot sign a response");
                status_only(OcspResponseStatus::InternalError)
            }
        }
    }

    fn authority_for(&self, id: &CertId) -> Option<&Arc<Authority>> {
        let alg = id.hash_algorithm.oid;
        let (name, key) = (
            id.issuer_name_hash.as_bytes(),
            id.issuer_key_hash.as_bytes(),
        );
        self.ca.authorities().find(|a| {
            if alg == const_oid::db::rfc5912::ID_SHA_1 {
                name == a.name_hashes.0 && key == a.key_hashes.0
            } else if alg == const_oid::db::rfc5912::ID_SHA_256 {
                name == a.name_hashes.1 && key == a.key_hashes.1
            } else {
                false
            }
        })
    }

    async fn build(
        &self,
        authority: &Arc<Authority>,
        list: &[x509_ocsp::Request],
        nonce: Option<Extension>,
        now: UnixTime,
    ) -> Result<(Vec<u8>, UnixTime), CaError> {
        let next_update = now.saturating_add(self.settings.validity);
        let mut responses = Vec::with_capacity(list.len());
        for r in list {
            let serial = serial_hex(r.req_cert.serial_number.as_bytes());
            let cert_status = match self.ca.status(authority.name(), &serial).await? {
                Status::Good => CertStatus::Good(Null),
                Status::Unknown => CertStatus::Unknown(Null),
                Status::Revoked(rev) => CertStatus::Revoked(RevokedInfo {
                    revocation_time: gt(rev.at)?,
                    revocation_reason: crl_reason(rev.reason),
                }),
            };
            responses.push(SingleResponse {
                cert_id: r.req_cert.clone(),
                cert_status,
                this_update: gt(now)?,
                next_update: Some(gt(next_update)?),
                single_extensions: None,
            });
        }
        // The ResponderID is the SHA-1 of the signer's key bits, known in
        // advance for both kinds of signer.
        let (signer, key_hash, certs) = match self.settings.signing {
            ResponderSigning::Authority => {
                (authority.signer().clone(), authority.key_hashes.0, None)
            }
            ResponderSigning::Delegated => {
                let d = self.delegate(authority, now).await?;
                (d.signer.clone(), d.key_hash, Some(vec![d.cert.clone()]))
            }
        };
        let key_hash = OctetString::new(key_hash.to_vec())
            .map_err(|e| CaError::build("an OCSP response", e))?;
        let data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(key_hash),
            produced_at: gt(now)?,
            responses,
            response_extensions: nonce.map(|n| vec![n]),
        };
        let tbs = data
            .to_der()
            .map_err(|e| CaError::build("an OCSP response", e))?;
        let signature = sign_checked(signer.as_ref(), &tbs).await?;
        let basic = BasicOcspResponse {
            tbs_response_data: data,
            signature_algorithm: signature_algorithm(signer.algorithm()),
            signature: BitString::from_bytes(&signature)
                .map_err(|e| CaError::build("an OCSP response", e))?,
            certs,
        };
        let basic_der = basic
            .to_der()
            .map_err(|e| CaError::build("an OCSP response", e))?;
        let response = OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: const_oid::db::rfc6960::ID_PKIX_OCSP_BASIC,
                response: OctetString::new(basic_der)
                    .map_err(|e| CaError::build("an OCSP response", e))?,
            }),
        };
        let der = response
            .to_der()
            .map_err(|e| CaError::build("an OCSP response", e))?;
        Ok((der, next_update))
    }

    /// The authority's delegated responder, made or renewed as needed.
    async fn delegate(
        &self,
        authority: &Arc<Authority>,
        now: UnixTime,
    ) -> Result<Arc<Delegate>, CaError> {
        let mut delegates = self.delegates.lock().await;
        if let Some(d) = delegates.get(authority.name())
            && now < d.renew_after
        {
            return Ok(d.clone());
        }
        let d = Arc::new(self.make_delegate(authority, now).await?);
        delegates.insert(authority.name().to_owned(), d.clone());
        Ok(d)
    }

    async fn make_delegate(
        &self,
        authority: &Arc<Authority>,
        now: UnixTime,
    ) -> Result<Delegate, CaError> {
        let signer: Arc<dyn Signer> = crate::local_key::fast(
            P256Signer::generate(&format!("ocsp-{}", authority.name()))
                .map_err(|e| CaError::Setup(e.to_string()))?,
        );
        let not_before = now.saturating_sub(Duration::from_secs(300));
        let not_after = now
            .saturating_add(self.settings.responder_lifetime)
            .min(authority.not_after());
        let serial_bytes = random_serial();
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        p.not_before = to_offset(not_before)?;
        p.not_after = to_offset(not_after)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        let cn = format!("OCSP responder for {}", authority.name());
        p.distinguished_name.push(DnType::CommonName, cn.as_str());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        // id-pkix-ocsp-nocheck: relying parties do not check this
        // certificate's own status (it is short-lived instead).
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                vec![0x05, 0x00],
            ));
        let (public, _) = crate::bridge::raw_public_key(signer.as_ref())?;
        let key_hash: [u8; 20] = Sha1::digest(&public).into();
        let key = CaptureKey::for_signer(signer.as_ref())?;
        let der = authority
            .sign("an OCSP responder certificate", |issuer| {
                p.signed_by(&key, issuer).map(|c| c.der().to_vec())
            })
            .await?;
        self.ca
            .record(&CertificateRecord {
                serial: serial_hex(&serial_bytes),
                issuer: authority.name().to_owned(),
                subject: cn,
                sans: Vec::new(),
                profile: "ocsp-responder".into(),
                not_before,
                not_after,
                requester: None,
                der: der.clone(),
                revoked: None,
            })
            .await?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| CaError::build("an OCSP responder certificate", e))?;
        let half = not_after.since(now) / 2;
        tracing::info!(
            authority = authority.name(),
            not_after = not_after.as_secs(),
            "made an OCSP responder certificate"
        );
        Ok(Delegate {
            signer,
            key_hash,
            cert,
            renew_after: now.saturating_add(half),
        })
    }
}

fn crl_reason(code: u8) -> Option<CrlReason> {
    Some(match code {
        0 => return None,
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => CrlReason::Unspecified,
    })
}
