//! mTLS: the caller is who its verified client certificate names.

use std::fmt;
use std::sync::Arc;

use hexon_core::policy::CertSan;
use hexon_core::{AuthMethod, Identity, IdentityKind, UnixTime};
use http::request::Parts;
use sha2::{Digest as _, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{Authenticator, AuthnFuture, AuthnResult};
use crate::ext::ConnectionInfo;

/// One subject alternative name of a client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientSan {
    /// `dNSName`.
    Dns(Arc<str>),
    /// `rfc822Name` (email).
    Email(Arc<str>),
    /// `uniformResourceIdentifier` (e.g. a SPIFFE ID).
    Uri(Arc<str>),
}

impl ClientSan {
    /// As the policy engine's borrowed [`CertSan`].
    pub fn as_cert_san(&self) -> CertSan<'_> {
        match self {
            ClientSan::Dns(s) => CertSan::Dns(s),
            ClientSan::Email(s) => CertSan::Email(s),
            ClientSan::Uri(s) => CertSan::Uri(s),
        }
    }
}

/// Request extension: the SANs of the verified client certificate (leaf),
/// for the policy's `client_cert_sans` conditions. Set by
/// [`AuthenticateLayer`](super::AuthenticateLayer) whenever the connection
/// carries a client certificate valid for client authentication, whichever
/// authenticator identifies the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertSans {
    sans: Arc<[ClientSan]>,
    fingerprint: [u8; 32],
}

/// Why a client certificate is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The DER does not parse as an X.509 certificate (or has duplicate extensions).
    #[error("client certificate does not parse")]
    Parse,
    /// The certificate has an extended key usage without `clientAuth`.
    #[error("client certificate is not valid for client authentication (EKU)")]
    NotForClientAuth,
}

/// At most this many SANs are kept (a verified certificate from our own CA
/// has a handful; this bounds the per-request work).
const MAX_SANS: usize = 64;

impl ClientCertSans {
    /// Parse a leaf certificate: EKU must allow client authentication if
    /// present; DNS, email and URI SANs are kept (others are ignored).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| CertError::Parse)?;
        match cert.extended_key_usage() {
            Err(_) => return Err(CertError::Parse),
            Ok(Some(eku)) if !(eku.value.client_auth || eku.value.any) => {
                return Err(CertError::NotForClientAuth);
            }
            Ok(_) => {}
        }
        let mut sans = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|_| CertError::Parse)?;
        if let Some(san) = san {
            for name in san.value.general_names.iter().take(MAX_SANS) {
                let s = match name {
                    GeneralName::DNSName(d) => ClientSan::Dns(Arc::from(*d)),
                    GeneralName::RFC822Name(e) => ClientSan::Email(Arc::from(*e)),
                    GeneralName::URI(u) => ClientSan::Uri(Arc::from(*u)),
                    _ => continue,
                };
                sans.push(s);
            }
        }
        Ok(ClientCertSans {
            sans: sans.into(),
            fingerprint: Sha256::digest(der).into(),
        })
    }

    /// The SANs of the connection's client certificate, if it presented one.
    pub fn from_connection(conn: &ConnectionInfo) -> Option<Result<Self, CertError>> {
        let leaf = conn.tls.as_ref()?.client_chain.first()?;
        Some(Self::from_der(leaf.as_ref()))
    }

    /// The SANs, in certificate order.
    pub fn sans(&self) -> &[ClientSan] {
        &self.sans
    }

    /// The SANs as the policy engine takes them
    /// ([`Subject::with_client_cert_sans`](hexon_core::policy::Subject::with_client_cert_sans)).
    pub fn to_cert_sans(&self) -> Vec<CertSan<'_>> {
        self.sans.iter().map(ClientSan::as_cert_san).collect()
    }

    /// SHA-256 of the leaf certificate's DER (for audit and pinning).
    pub fn sha256_fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

/// Maps a client certificate's SANs to an identity (`None`: not acceptable).
pub type CertMapper = Arc<dyn Fn(&ClientCertSans, UnixTime) -> Option<Identity> + Send + Sync>;

/// Authenticates with the connection's client certificate
/// ([`TlsInfo::client_chain`](crate::ext::TlsInfo::client_chain), leaf
/// first, already verified by the listener against the client CA).
///
/// The default mapping ([`ClientCertificate::default_mapping`]) takes the
/// first usable SAN in this order: a URI SAN (SPIFFE ID) → a service whose
/// subject and username are the URI; an email SAN → a user (subject,
/// username and email are the address); a DNS SAN → a service named by it.
/// Every mapped identity has the `x509` authentication method at `now`.
///
/// No certificate: [`AuthnResult::NoCredential`]. A certificate whose EKU
/// excludes client authentication, that does not parse, or that the mapping
/// refuses: [`AuthnResult::Invalid`].
#[derive(Clone)]
pub struct ClientCertificate {
    mapper: CertMapper,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

impl Default for ClientCertificate {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertificate {
    /// With the default SAN mapping.
    pub fn new() -> Self {
        ClientCertificate {
            mapper: Arc::new(Self::default_mapping),
        }
    }

    /// With a custom mapping.
    pub fn with_mapping(
        mapper: impl Fn(&ClientCertSans, UnixTime) -> Option<Identity> + Send + Sync + 'static,
    ) -> Self {
        ClientCertificate {
            mapper: Arc::new(mapper),
        }
    }

    /// The default mapping (see the type docs).
    pub fn default_mapping(sans: &ClientCertSans, now: UnixTime) -> Option<Identity> {
        let pick = |want: fn(&ClientSan) -> Option<&Arc<str>>| sans.sans().iter().find_map(want);
        let (name, kind, email) = if let Some(u) = pick(|s| match s {
            ClientSan::Uri(u) => Some(u),
            _ => None,
        }) {
            (u, IdentityKind::Service, false)
        } else if let Some(e) = pick(|s| match s {
            ClientSan::Email(e) => Some(e),
            _ => None,
        }) {
            (e, IdentityKind::User, true)
        } else {
            let d = pick(|s| match s {
                ClientSan::Dns(d) => Some(d),
                _ => None,
            })?;
            (d, IdentityKind::Service, false)
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_control()) {
            return None;
        }
        let mut b = Identity::builder(name.clone(), name.clone())
            .kind(kind)
            .auth(AuthMethod::X509, now)
            .ok()?;
        if email {
            b = b.email(name.clone());
        }
        b.build().ok()
    }
}

impl Authenticator for ClientCertificate {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        let result = (|| {
            let Some(conn) = parts.extensions.get::<ConnectionInfo>() else {
                return AuthnResult::NoCredential;
            };
            let parsed = match parts.extensions.get::<ClientCertSans>() {
                Some(s) => Ok(s.clone()),
                None => match ClientCertSans::from_connection(conn) {
                    None => return AuthnResult::NoCredential,
                    Some(r) => r,
                },
            };
            match parsed {
                Err(e) => AuthnResult::invalid(e.to_string()),
                Ok(sans) => match (self.mapper)(&sans, now) {
                    Some(id) => AuthnResult::Authenticated(id),
                    None => {
                        AuthnResult::invalid("client certificate has no SAN the mapping accepts")
                    }
                },
            }
        })();
        AuthnFuture::ready(result)
    }

    fn name(&self) -> &str {
        "client_certificate"
    }

    fn credential(&self, _: &Parts) -> hexon_core::policy::Credential {
        hexon_core::policy::Credential::Mtls
    }
}
