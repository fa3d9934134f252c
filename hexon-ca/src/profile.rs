//! Issuance profiles: what a certificate of each kind may say.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::CaError;

/// What a leaf certificate is for. Each profile fixes the key usage,
/// extended key usage and basic constraints, which names it may carry and
/// how long it may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Profile {
    /// A TLS server (EKU serverAuth): DNS names and IP addresses.
    TlsServer,
    /// A TLS client, for mTLS (EKU clientAuth): DNS names, e-mail addresses, URIs.
    TlsClient,
    /// A SPIFFE X.509-SVID: exactly one `spiffe://` URI, serverAuth and clientAuth.
    Spiffe,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::TlsServer, Profile::TlsClient, Profile::Spiffe];

    /// `tls-server`, `tls-client`, `spiffe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::TlsServer => "tls-server",
            Profile::TlsClient => "tls-client",
            Profile::Spiffe => "spiffe",
        }
    }

    /// Parse [`Profile::as_str`]'s form.
    pub fn parse(s: &str) -> Option<Self> {
        Profile::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Default and maximum lifetimes when the configuration says nothing:
    /// short, so revocation matters less.
    pub fn default_lifetimes(self) -> (Duration, Duration) {
        const HOUR: u64 = 3600;
        match self {
            Profile::TlsServer => (
                Duration::from_secs(7 * 24 * HOUR),
                Duration::from_secs(90 * 24 * HOUR),
            ),
            Profile::TlsClient => (
                Duration::from_secs(24 * HOUR),
                Duration::from_secs(30 * 24 * HOUR),
            ),
            Profile::Spiffe => (Duration::from_secs(HOUR), Duration::from_secs(24 * HOUR)),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectName {
    /// A DNS name (lower case; `*.` allowed as the whole first label).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A URI (SPIFFE ids are URIs).
    Uri(String),
    /// An e-mail address.
    Email(String),
}

impl SubjectName {
    /// A DNS name, checked and lower-cased.
    pub fn dns(name: &str) -> Result<Self, CaError> {
        let lower = name.to_ascii_lowercase();
        check_dns_name(&lower)?;
        Ok(SubjectName::Dns(lower))
    }

    /// How the store records it (`dns:a.example`, `ip:10.0.0.1`, `uri:…`, `email:…`).
    pub fn to_record(&self) -> String {
        match self {
            SubjectName::Dns(n) => format!("dns:{n}"),
            SubjectName::Ip(ip) => format!("ip:{ip}"),
            SubjectName::Uri(u) => format!("uri:{u}"),
            SubjectName::Email(e) => format!("email:{e}"),
        }
    }

    pub(crate) fn to_san(&self) -> Result<rcgen::SanType, CaError> {
        let ia5 = |s: &str| {
            rcgen::string::Ia5String::try_from(s)
                .map_err(|_| CaError::Refused(format!("{s:?} is not an ASCII name")))
        };
        Ok(match self {
            SubjectName::Dns(n) => rcgen::SanType::DnsName(ia5(n)?),
            SubjectName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            SubjectName::Uri(u) => rcgen::SanType::URI(ia5(u)?),
            SubjectName::Email(e) => rcgen::SanType::Rfc822Name(ia5(e)?),
        })
    }
}

impl fmt::Display for SubjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectName::Dns(n) => f.write_str(n),
            SubjectName::Ip(ip) => write!(f, "{ip}"),
            SubjectName::Uri(u) => f.write_str(u),
            SubjectName::Email(e) => f.write_str(e),
        }
    }
}

/// A DNS name as certificates may carry it: 1-253 octets, labels of 1-63
/// letters, digits and hyphens (not at either end), at least two labels
/// unless it is `localhost`, and a wildcard only as the whole first label.
pub fn check_dns_name(name: &str) -> Result<(), CaError> {
    let refuse = |why: &str| Err(CaError::Refused(format!("DNS name {name:?}: {why}")));
    if name.is_empty() || name.len() > 253 {
        return refuse("must be 1 to 253 characters");
    }
    let mut labels = name.split('.').peekable();
    let mut count = 0;
    let mut first = true;
    while let Some(label) = labels.next() {
        count += 1;
        if first && label == "*" {
            if labels.peek().is_none() {
                return refuse("a wildcard needs a domain under it");
            }
            first = false;
            continue;
        }
        first = false;
        if label.is_empty() || label.len() > 63 {
            return refuse("every label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return refuse(
                "only letters, digits, '-' and '.' are allowed (use the A-label form of IDNs)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return refuse("a label may not start or end with '-'");
        }
    }
    if count < 2 && name != "localhost" {
        return refuse("must have at least two labels");
    }
    Ok(())
}

/// A SPIFFE ID (`spiffe://trust-domain/path`) as the SPIFFE-ID standard
/// defines it: lower-case trust domain of letters, digits, `.`, `-`, `_`;
/// a non-empty path of segments of letters, digits, `.`, `-`, `_` (not `.`
/// or `..`); no query, fragment, port, user info or trailing slash; at most
/// 2048 bytes.
pub fn check_spiffe_id(id: &str, trust_domain: &str) -> Result<(), CaError> {
    let refuse = |why: &str| Err(CaError::Refused(format!("SPIFFE ID {id:?}: {why}")));
    if id.len() > 2048 {
        return refuse("longer than 2048 bytes");
    }
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return refuse("must start with spiffe://");
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty()
        || !domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
    {
        return refuse("the trust domain must be lower-case letters, digits, '.', '-' and '_'");
    }
    if domain != trust_domain {
        return refuse(&format!("the trust domain must be {trust_domain:?}"));
    }
    if path.is_empty() {
        return refuse("a workload ID needs a path");
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return refuse("path segments may not be empty, '.' or '..'");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return refuse("path segments may hold only letters, digits, '.', '-' and '_'");
        }
    }
    Ok(())
}

/// What a profile allows, from the configuration.
#[derive(Clone, Debug)]
pub struct ProfileRules {
    /// Lifetime when the request names none.
    pub default_lifetime: Duration,
    /// Longest lifetime granted (a longer request is shortened to it).
    pub max_lifetime: Duration,
    /// DNS names allowed: a name matches an entry equal to it or a parent
    /// domain of it (`example.com` allows `a.example.com` and `*.example.com`).
    /// Empty: no DNS name is allowed.
    pub dns_suffixes: Vec<String>,
    /// IP networks allowed. Empty: no IP address is allowed.
    pub ip_networks: Vec<ipnet::IpNet>,
    /// SPIFFE trust domain (the `spiffe` profile).
    pub trust_domain: Option<String>,
}

impl ProfileRules {
    /// The defaults for `profile`: default lifetimes and no names allowed.
    pub fn new(profile: Profile) -> Self {
        let (default_lifetime, max_lifetime) = profile.default_lifetimes();
        ProfileRules {
            default_lifetime,
            max_lifetime,
            dns_suffixes: Vec::new(),
            ip_networks: Vec::new(),
            trust_domain: None,
        }
    }

    fn dns_allowed(&self, name: &str) -> bool {
        let name = name.strip_prefix("*.").unwrap_or(name);
        self.dns_suffixes.iter().any(|suffix| {
            name == suffix
                || (name.len() > suffix.len()
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.'))
        })
    }

    /// Check `names` against `profile` and these rules.
    pub fn check(&self, profile: Profile, names: &[SubjectName]) -> Result<(), CaError> {
        let refuse = |why: String| Err(CaError::Refused(why));
        if names.is_empty() {
            return refuse(format!("a {profile} certificate needs at least one name"));
        }
        if names.len() > 100 {
            return refuse("at most 100 names per certificate".into());
        }
        let mut uris = 0;
        for name in names {
            match (profile, name) {
                (
                    Profile::TlsServer | Profile::TlsClient | Profile::Spiffe,
                    SubjectName::Dns(n),
                ) => {
                    check_dns_name(n)?;
                    if !self.dns_allowed(n) {
                        return refuse(format!(
                            "DNS name {n:?} is outside the names the {profile} profile allows ({})",
                            list_or_none(&self.dns_suffixes)
                        ));
                    }
                }
                (Profile::TlsServer | Profile::TlsClient, SubjectName::Ip(ip)) => {
                    if !self.ip_networks.iter().any(|net| net.contains(ip)) {
                        return refuse(format!(
                            "IP address {ip} is outside the networks the {profile} profile allows ({})",
                            list_or_none(&self.ip_networks)
                        ));
                    }
                }
                (Profile::TlsClient, SubjectName::Email(_) | SubjectName::Uri(_)) => {}
                (Profile::Spiffe, SubjectName::Uri(u)) => {
                    uris += 1;
                    let Some(td) = &self.trust_domain else {
                        return refuse("no SPIFFE trust domain is configured".into());
                    };
                    check_spiffe_id(u, td)?;
                }
                (_, other) => {
                    return refuse(format!(
                        "a {profile} certificate may not name {}",
                        other.to_record()
                    ));
                }
            }
        }
        if profile == Profile::Spiffe && uris != 1 {
            return refuse("an X.509-SVID carries exactly one spiffe:// URI".into());
        }
        Ok(())
    }
}

fn list_or_none<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none are configured".into();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
