//! OCSP stapling: the listener fetches the OCSP status of each certificate
//! it serves and hands it to clients in the handshake (RFC 6066
//! `status_request`), so they need not ask the CA themselves (privacy, one
//! round trip less) and must-staple certificates (RFC 7633) work.
//!
//! - The request names the leaf by the CertID of RFC 6960 (SHA-1 of the
//!   issuer's name and key, the serial) and goes by HTTP POST to the leaf's
//!   AIA OCSP URL. The issuer is the next certificate of the chain file.
//! - A response is stapled only after it checks out: status `successful`,
//!   a basic response signed by the issuer or by a responder certificate the
//!   issuer signed for `id-kp-OCSPSigning`, a single response for exactly
//!   this certificate saying `good`, `thisUpdate` not in the future and
//!   `nextUpdate` not past. Anything else is logged and not stapled: a
//!   broken or hostile responder cannot make the listener staple garbage.
//! - Refreshed at half of the response's validity; failures retry with
//!   backoff and keep the previous staple until its `nextUpdate`.
//!
//! rcgen and rustls do not speak OCSP; the messages use `x509-ocsp` (the
//! RustCrypto formats family) and the signature check x509-parser's ring
//! verifier, as certificates do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::{Decode as _, Encode as _};
use rustls_pki_types::CertificateDer;
use sha1::{Digest as _, Sha1};
use x509_ocsp::{BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// `id-pkix-ocsp-basic`.
const OCSP_BASIC: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// `id-sha1`.
const SHA1: const_oid::ObjectIdentifier = const_oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// TLS Feature extension (RFC 7633), the must-staple marker.
const TLS_FEATURE: &str = "1.3.6.1.5.5.7.1.24";
/// Largest OCSP response read.
pub(crate) const MAX_RESPONSE: usize = 64 * 1024;
/// Clock skew tolerated for `thisUpdate` in the future.
const SKEW: Duration = Duration::from_secs(300);
/// Refresh interval bounds.
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);

/// What to ask about one served certificate, and where.
#[derive(Clone, Debug)]
pub(crate) struct OcspTarget {
    /// The AIA OCSP URL.
    pub(crate) url: String,
    /// The DER `OCSPRequest`.
    pub(crate) request: Vec<u8>,
    cert_id: CertId,
    issuer: CertificateDer<'static>,
    /// The leaf carries the TLS Feature `status_request` (must-staple).
    pub(crate) must_staple: bool,
}

/// A verified response, ready to staple.
#[derive(Clone, Debug)]
pub(crate) struct Staple {
    pub(crate) der: Vec<u8>,
    pub(crate) this_update: SystemTime,
    pub(crate) next_update: SystemTime,
}

impl Staple {
    /// When to fetch a newer one, asked at `now` (just after fetching):
    /// half way through its validity, but never sooner than a minute from
    /// now (a responder or CDN may hand out responses already past their
    /// middle) nor later than a day, and before `nextUpdate` when it can be.
    pub(crate) fn refresh_at(&self, now: SystemTime) -> SystemTime {
        let half = self
            .next_update
            .duration_since(self.this_update)
            .unwrap_or_default()
            / 2;
        let wanted = (self.this_update + half)
            .min(now + MAX_REFRESH)
            .min(self.next_update.checked_sub(MIN_REFRESH).unwrap_or(now));
        wanted.max(now + MIN_REFRESH)
    }
}

/// Why a response was not stapled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NotStapled {
    /// The responder says the certificate is revoked: any older staple
    /// must go too.
    pub(crate) revoked: bool,
    pub(crate) message: String,
}

impl From<String> for NotStapled {
    fn from(message: String) -> Self {
        NotStapled {
            revoked: false,
            message,
        }
    }
}

impl From<&str> for NotStapled {
    fn from(message: &str) -> Self {
        NotStapled::from(message.to_owned())
    }
}

/// The OCSP target of `chain` (leaf first): `Ok(None)` when the leaf names
/// no OCSP responder.
pub(crate) fn target(chain: &[CertificateDer<'static>]) -> Result<Option<OcspTarget>, String> {
    let Some(leaf_der) = chain.first() else {
        return Ok(None);
    };
    let (_, leaf) = X509Certificate::from_der(leaf_der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let must_staple = leaf
        .extensions()
        .iter()
        .any(|e| e.oid.to_id_string() == TLS_FEATURE);
    let mut url = None;
    for ext in leaf.extensions() {
        if let x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) =
            ext.parsed_extension()
        {
            for d in &aia.accessdescs {
                if d.access_method == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                    if let x509_parser::extensions::GeneralName::URI(u) = d.access_location {
                        url.get_or_insert_with(|| u.to_owned());
                    }
                }
            }
        }
    }
    let Some(url) = url else {
        return Ok(None);
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("OCSP URL {url:?} is not http(s)"));
    }
    let Some(issuer_der) = chain.get(1) else {
        return Err(
            "the chain has no issuer certificate, needed to ask for OCSP status: \
             put the intermediate after the leaf in the certificate file"
                .into(),
        );
    };
    let (_, issuer) = X509Certificate::from_der(issuer_der.as_ref())
        .map_err(|e| format!("cannot parse the issuer certificate: {e}"))?;
    if leaf.verify_signature(Some(issuer.public_key())).is_err() {
        return Err(
            "the second certificate of the chain did not issue the first: \
             put the leaf first and its intermediate right after it"
                .into(),
        );
    }
    let bad = |e: der::Error| format!("OCSP request: {e}");
    let raw_serial = leaf.tbs_certificate.raw_serial();
    let mut serial_tlv = vec![
        0x02,
        u8::try_from(raw_serial.len()).map_err(|_| "serial too long")?,
    ];
    serial_tlv.extend_from_slice(raw_serial);
    let cert_id = CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: SHA1,
            parameters: Some(der::asn1::Null.into()),
        },
        issuer_name_hash: der::asn1::OctetString::new(
            // RFC 6960 §4.1.1: the hash of the issuer's name as the
            // certificate being checked carries it.
            Sha1::digest(leaf.tbs_certificate.issuer.as_raw()).to_vec(),
        )
        .map_err(bad)?,
        issuer_key_hash: der::asn1::OctetString::new(
            Sha1::digest(&issuer.public_key().subject_public_key.data).to_vec(),
        )
        .map_err(bad)?,
        serial_number: x509_cert::serial_number::SerialNumber::from_der(&serial_tlv)
            .map_err(bad)?,
    };
    let request = OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: cert_id.clone(),
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .map_err(bad)?;
    Ok(Some(OcspTarget {
        url,
        request,
        cert_id,
        issuer: issuer_der.clone(),
        must_staple,
    }))
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> SystemTime {
    UNIX_EPOCH + t.0.to_unix_duration()
}

/// The bytes of the first element of the DER SEQUENCE `der` (a basic
/// response's `tbsResponseData`): the signature covers them exactly as
/// received, not as re-encoded.
fn first_element(der: &[u8]) -> Result<&[u8], der::Error> {
    use der::{Reader as _, SliceReader};
    let mut r = SliceReader::new(der)?;
    let outer = der::Header::decode(&mut r)?;
    if outer.tag != der::Tag::Sequence {
        return Err(der::ErrorKind::TagUnexpected {
            expected: Some(der::Tag::Sequence),
            actual: outer.tag,
        }
        .into());
    }
    let start = usize::try_from(r.position())?;
    let inner = der::Header::decode(&mut r)?;
    let len = usize::try_from((inner.encoded_len()? + inner.length)?)?;
    der.get(start..start + len).ok_or_else(|| {
        der::ErrorKind::Incomplete {
            expected_len: (inner.encoded_len().unwrap_or_default() + inner.length)
                .unwrap_or_default(),
            actual_len: der.len().try_into().unwrap_or_default(),
        }
        .into()
    })
}

/// Check `der`, an OCSP response from the target's responder, at `now`.
pub(crate) fn verify(
    der: &[u8],
    target: &OcspTarget,
    now: SystemTime,
) -> Result<Staple, NotStapled> {
    if der.len() > MAX_RESPONSE {
        return Err(format!("OCSP response larger than {MAX_RESPONSE} bytes").into());
    }
    let response =
        OcspResponse::from_der(der).map_err(|e| format!("malformed OCSP response: {e}"))?;
    if response.response_status != x509_ocsp::OcspResponseStatus::Successful {
        return Err(format!("the responder answered {:?}", response.response_status).into());
    }
    let bytes = response
        .response_bytes
        .ok_or("successful OCSP response without a body")?;
    if bytes.response_type != OCSP_BASIC {
        return Err(format!("unsupported OCSP response type {}", bytes.response_type).into());
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("malformed basic OCSP response: {e}"))?;

    let (_, issuer) = X509Certificate::from_der(target.issuer.as_ref())
        .map_err(|e| format!("issuer certificate: {e}"))?;
    // The signer: a responder certificate the issuer delegated OCSP to, or
    // the issuer itself.
    let mut delegated = Vec::new();
    for c in basic.certs.iter().flatten() {
        delegated.push(
            c.to_der()
                .map_err(|e| format!("responder certificate: {e}"))?,
        );
    }
    let tbs =
        first_element(bytes.response.as_bytes()).map_err(|e| format!("OCSP response data: {e}"))?;
    let alg_der = basic
        .signature_algorithm
        .to_der()
        .map_err(|e| format!("signature algorithm: {e}"))?;
    let (_, alg) = x509_parser::x509::AlgorithmIdentifier::from_der(&alg_der)
        .map_err(|e| format!("signature algorithm: {e}"))?;
    let sig_der = basic
        .signature
        .to_der()
        .map_err(|e| format!("signature: {e}"))?;
    let (_, sig) = x509_parser::der_parser::asn1_rs::BitString::from_der(&sig_der)
        .map_err(|e| format!("signature: {e}"))?;
    let signed_by = |spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>| {
        x509_parser::verify::verify_signature(spki, &alg, &sig, tbs).is_ok()
    };
    let mut verified = signed_by(issuer.public_key());
    for d in &delegated {
        if verified {
            break;
        }
        let Ok((_, responder)) = X509Certificate::from_der(d) else {
            continue;
        };
        let authorised = responder
            .verify_signature(Some(issuer.public_key()))
            .is_ok()
            && responder.validity().is_valid_at(
                x509_parser::time::ASN1Time::from_timestamp(
                    now.duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                        .try_into()
                        .unwrap_or(i64::MAX),
                )
                .map_err(|e| format!("time: {e}"))?,
            )
            && responder
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|e| e.value.ocsp_signing);
        verified = authorised && signed_by(responder.public_key());
    }
    if !verified {
        return Err(
            "OCSP response not signed by the issuer nor by a responder it authorised".into(),
        );
    }

    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| same_cert(&r.cert_id, &target.cert_id))
        .ok_or("OCSP response is not about this certificate")?;
    match &single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(info) => {
            return Err(NotStapled {
                revoked: true,
                message: format!(
                    "the certificate is REVOKED (since {} s after 1970): renew it",
                    info.revocation_time.0.to_unix_duration().as_secs()
                ),
            });
        }
        CertStatus::Unknown(_) => return Err("the responder does not know this certificate".into()),
    }
    let this_update = unix(&single.this_update);
    if this_update > now + SKEW {
        return Err("OCSP response thisUpdate is in the future".into());
    }
    let next_update = match &single.next_update {
        Some(t) => unix(t),
        // No nextUpdate: "newer information is always available"; treat
        // it as good for an hour.
        None => this_update + Duration::from_secs(3600),
    };
    if next_update <= now {
        return Err("OCSP response is stale (nextUpdate has passed)".into());
    }
    Ok(Staple {
        der: der.to_vec(),
        this_update,
        next_update,
    })
}

fn same_cert(a: &CertId, b: &CertId) -> bool {
    a.hash_algorithm.oid == b.hash_algorithm.oid
        && a.issuer_name_hash == b.issuer_name_hash
        && a.issuer_key_hash == b.issuer_key_hash
        && a.serial_number == b.serial_number
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staple(this_update: SystemTime, next_update: SystemTime) -> Staple {
        Staple {
            der: Vec::new(),
            this_update,
            next_update,
        }
    }

    #[test]
    fn refresh_is_half_way_but_never_immediate() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let h = Duration::from_secs(3600);
        // Fresh, 4 h validity: in 2 h.
        assert_eq!(staple(now, now + 4 * h).refresh_at(now), now + 2 * h);
        // A cached response issued 2 days ago, good for 5 more: its middle
        // is 36 h away, capped at a day.
        let old = staple(now - 48 * h, now + 120 * h);
        assert_eq!(old.refresh_at(now), now + 24 * h);
        // Already past its middle: ask again in a minute (the responder may
        // have a newer one), not at once and not in a busy loop.
        let past_middle = staple(now - 10 * h, now + 2 * h);
        assert_eq!(past_middle.refresh_at(now), now + MIN_REFRESH);
        // About to lapse: still a minute, not a busy loop.
        let lapsing = staple(now - 10 * h, now + Duration::from_secs(30));
        assert_eq!(lapsing.refresh_at(now), now + MIN_REFRESH);
        // Very long validity: at most a day.
        let long = staple(now, now + 30 * 24 * h);
        assert_eq!(long.refresh_at(now), now + MAX_REFRESH);
    }

    #[test]
    fn the_signed_bytes_are_taken_as_received() {
        // SEQUENCE { SEQUENCE { INTEGER 1 }, INTEGER 2 }
        let der = [0x30, 0x08, 0x30, 0x03, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        assert_eq!(first_element(&der).unwrap(), &der[2..7]);
        assert!(first_element(&der[..5]).is_err());
        assert!(first_element(&[0x02, 0x01, 0x00]).is_err());
        assert!(first_element(&[]).is_err());
    }
}
