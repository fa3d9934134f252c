//! Certificate signing requests (PKCS #10): parsed with x509-parser,
//! signature verified, key type and size checked, requested names read.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;

use crate::CaError;
use crate::profile::SubjectName;

/// Largest CSR accepted, in bytes (an RSA-8192 CSR with 100 names fits).
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// The kind and size of a subject key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA with this many modulus bits (2048 to 8192).
    Rsa(usize),
}

impl KeyKind {
    /// Whether a TLS server with this key uses it for key encipherment (RSA).
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa(_))
    }
}

/// A checked certificate signing request.
#[derive(Clone, Debug)]
pub struct CheckedCsr {
    /// The subject public key, as a DER `SubjectPublicKeyInfo`.
    pub spki_der: Vec<u8>,
    /// Its kind.
    pub key: KeyKind,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// Names asked for: the subject alternative names, and the common name
    /// when it is a DNS name or IP address not among them (as ACME clients
    /// still send). Deduplicated, in order of appearance.
    pub names: Vec<SubjectName>,
    /// The request asks for the TLS Feature extension (must-staple,
    /// RFC 7633); the certificate then carries `status_request` and
    /// nothing else a request might list there.
    pub must_staple: bool,
}

/// The TLS Feature extension (RFC 7633).
const TLS_FEATURE: &str = "1.3.6.1.5.5.7.1.24";

/// Parse `der`, verify its self-signature, and check its key.
///
/// Refuses keys other than P-256, P-384, Ed25519 and RSA of 2048-8192 bits,
/// requests with trailing bytes, unparseable extensions, and names of kinds
/// a certificate here never carries (directory names, other names, …).
pub fn check_csr(der: &[u8]) -> Result<CheckedCsr, CaError> {
    let bad = |why: String| CaError::BadCsr(why);
    if der.len() > MAX_CSR_LEN {
        return Err(bad(format!("larger than {MAX_CSR_LEN} bytes")));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| bad(format!("not a PKCS #10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    // The key first: a key refused here would fail verification anyway,
    // with a less useful message.
    let key = key_kind(spki)?;
    csr.verify_signature().map_err(|e| {
        bad(format!(
            "its signature does not verify with its own key ({e})"
        ))
    })?;

    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str().map(str::to_owned))
        .transpose()
        .map_err(|_| bad("the common name is not a string".into()))?;

    let mut must_staple = false;
    let mut names: Vec<SubjectName> = Vec::new();
    let mut push = |n: SubjectName| {
        if !names.contains(&n) {
            names.push(n);
        }
    };
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for gn in &san.general_names {
                        push(general_name(gn)?);
                    }
                }
                ParsedExtension::UnsupportedExtension { oid }
                    if oid.to_id_string() == TLS_FEATURE =>
                {
                    must_staple = true;
                }
                ParsedExtension::UnsupportedExtension { .. } => {}
                ParsedExtension::ParseError { error } => {
                    return Err(bad(format!(
                        "a requested extension does not parse: {error}"
                    )));
                }
                // Key usage, basic constraints and the like are the profile's
                // to decide; what the request says about them is ignored.
                _ => {}
            }
        }
    }
    if let Some(cn) = &common_name {
        if let Ok(ip) = cn.parse::<IpAddr>() {
            push(SubjectName::Ip(ip));
        } else if let Ok(dns) = SubjectName::dns(cn) {
            push(dns);
        }
    }
    Ok(CheckedCsr {
        spki_der: spki.raw.to_vec(),
        key,
        common_name,
        names,
        must_staple,
    })
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CaError> {
    let alg = &spki.algorithm.algorithm;
    let refuse = |why: String| Err(CaError::BadCsr(why));
    if *alg == oid_registry::OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => Ok(KeyKind::P256),
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => Ok(KeyKind::P384),
            _ => refuse("only the P-256 and P-384 elliptic curves are accepted".into()),
        };
    }
    if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(ParsedKey::RSA(rsa)) => rsa.key_size(),
            _ => return refuse("the RSA key does not parse".into()),
        };
        return if (2048..=8192).contains(&bits) {
            Ok(KeyKind::Rsa(bits))
        } else {
            refuse(format!(
                "an RSA key must have 2048 to 8192 bits, not {bits}"
            ))
        };
    }
    refuse(format!(
        "key algorithm {alg} is not accepted (use P-256, P-384, Ed25519 or RSA of 2048+ bits)"
    ))
}

fn general_name(gn: &GeneralName<'_>) -> Result<SubjectName, CaError> {
    Ok(match gn {
        GeneralName::DNSName(n) => SubjectName::dns(n)?,
        GeneralName::IPAddress(bytes) => SubjectName::Ip(match bytes.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(bytes);
                IpAddr::from(a)
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(bytes);
                IpAddr::from(a)
            }
            _ => {
                return Err(CaError::BadCsr(
                    "an IP address name is neither 4 nor 16 bytes".into(),
                ));
            }
        }),
        GeneralName::URI(u) => SubjectName::Uri((*u).to_owned()),
        GeneralName::RFC822Name(e) => SubjectName::Email((*e).to_owned()),
        other => {
            return Err(CaError::BadCsr(format!(
                "names of this kind are not issued: {other}"
            )));
        }
    })
}
