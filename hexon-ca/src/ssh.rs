//! The SSH certificate authority: OpenSSH user and host certificates
//! (`PROTOCOL.certkeys`), signed through the async [`Signer`].
//!
//! Two CA keys, one for user certificates and one for host certificates:
//! servers trust the first (`TrustedUserCAKeys`), clients the second
//! (`@cert-authority` in `known_hosts`), and the compromise of one forges
//! neither the other kind of certificate nor anything X.509.
//!
//! # Signing without blocking
//!
//! An OpenSSH certificate is `signed data || string(signature)`, where the
//! signed data is every field up to and including the CA public key.
//! ssh-key's `certificate::Builder` wants a synchronous signer and, in
//! debug builds, re-verifies the result inside `sign`, so a placeholder
//! signature cannot pass through it. The fields are therefore encoded here,
//! in the order and form `PROTOCOL.certkeys` gives (the same bytes
//! ssh-key's builder would sign), the signed data goes to the async signer,
//! and the signature is appended. The finished blob is then parsed back
//! with ssh-key and its signature verified with the CA public key: a faulty
//! HSM or threshold share yields [`CaError::BadSignature`], never a
//! certificate.
//!
//! # Policy
//!
//! - Principals of a user certificate come from the caller's identity: the
//!   user name (unless `user_principal = false`) and the principals its
//!   groups map to. A request names a subset, or none for all of them;
//!   anything else is refused.
//! - Host certificate names are DNS names under the configured host domains.
//! - Validity starts [`BACKDATE`] in the past (clients with slow clocks)
//!   and lasts the requested lifetime, the default when none is asked;
//!   a request above the maximum is clamped to it, as on the X.509 side
//!   (the certificate says what it got).
//! - Extensions are the policy's (by default OpenSSH's five `permit-*`); a
//!   request may drop some, never add. `force-command` and `source-address`
//!   from the policy are imposed; a request may narrow `source-address`.
//! - Subject keys: Ed25519, ECDSA (P-256/384/521), their FIDO (`sk-`)
//!   variants and RSA of 2048 bits or more. DSA and short RSA are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hexon_core::store::{CertificateRecord, CertificateStore};
use hexon_core::{Algorithm, Signer, UnixTime};
use rand_core::{OsRng, RngCore};
use ssh_key::public::KeyData;
use ssh_key::{Certificate, HashAlg};

use crate::CaError;

/// Most principals OpenSSH accepts in one certificate.
pub const MAX_PRINCIPALS: usize = 256;

/// How far back validity starts, for clients whose clocks are behind.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// Shortest lifetime granted.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Longest OpenSSH public key line accepted (a 16384-bit RSA key is about
/// 2.8 KB in base64; anything longer is not a key).
pub const MAX_PUBLIC_KEY_LEN: usize = 8 * 1024;

/// Smallest RSA modulus certified.
pub const MIN_RSA_BITS: usize = 2048;

/// OpenSSH's default extensions of a user certificate (what `ssh-keygen -s`
/// grants without `-O`).
pub const DEFAULT_EXTENSIONS: [&str; 5] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// Extensions OpenSSH knows besides the defaults.
const OTHER_KNOWN_EXTENSIONS: [&str; 1] = ["no-touch-required"];

/// A user or a host certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SshCertKind {
    /// Authenticates a user to servers (`TrustedUserCAKeys`).
    User,
    /// Authenticates a server to clients (`@cert-authority`).
    Host,
}

impl SshCertKind {
    /// `user` or `host`.
    pub fn as_str(self) -> &'static str {
        match self {
            SshCertKind::User => "user",
            SshCertKind::Host => "host",
        }
    }

    /// The `profile` column of the certificate store (`ssh-user`, `ssh-host`).
    pub fn profile(self) -> &'static str {
        match self {
            SshCertKind::User => "ssh-user",
            SshCertKind::Host => "ssh-host",
        }
    }

    fn wire(self) -> u32 {
        match self {
            SshCertKind::User => 1,
            SshCertKind::Host => 2,
        }
    }
}

impl fmt::Display for SshCertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subject public key to certify, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshPublicKey(ssh_key::PublicKey);

impl SshPublicKey {
    /// Parse one OpenSSH public key line (`ssh-ed25519 AAAA… comment`, as
    /// in `id_ed25519.pub`) and check it is a key worth certifying.
    ///
    /// # Errors
    /// [`CaError::BadSshKey`] for anything that is not one key line;
    /// [`CaError::Refused`] for DSA, RSA under [`MIN_RSA_BITS`], and key
    /// types OpenSSH certificates do not carry.
    pub fn parse(text: &str) -> Result<Self, CaError> {
        if text.len() > MAX_PUBLIC_KEY_LEN {
            return Err(CaError::BadSshKey(format!(
                "longer than {MAX_PUBLIC_KEY_LEN} bytes"
            )));
        }
        let line = text.trim();
        if line.is_empty() {
            return Err(CaError::BadSshKey(
                "empty; send the contents of your ~/.ssh/id_ed25519.pub".into(),
            ));
        }
        if line.lines().count() != 1 {
            return Err(CaError::BadSshKey("send exactly one key line".into()));
        }
        if line.contains("-cert-v01@openssh.com") {
            return Err(CaError::BadSshKey(
                "that is a certificate; send the public key (id_*.pub, not id_*-cert.pub)".into(),
            ));
        }
        if line.starts_with("-----") {
            return Err(CaError::BadSshKey(
                "that is a PEM file (a private key?); send the public key line from id_*.pub"
                    .into(),
            ));
        }
        let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
            CaError::BadSshKey(format!(
                "not an OpenSSH public key line ({e}); expected e.g. `ssh-ed25519 AAAA… you@host`"
            ))
        })?;
        Self::checked(key)
    }

    /// From the SSH wire encoding of a public key (RFC 4253 section 6.6).
    ///
    /// # Errors
    /// As [`SshPublicKey::parse`].
    pub fn from_bytes(blob: &[u8]) -> Result<Self, CaError> {
        if blob.len() > MAX_PUBLIC_KEY_LEN {
            return Err(CaError::BadSshKey(format!(
                "longer than {MAX_PUBLIC_KEY_LEN} bytes"
            )));
        }
        let key = ssh_key::PublicKey::from_bytes(blob)
            .map_err(|e| CaError::BadSshKey(format!("not an SSH public key blob ({e})")))?;
        Self::checked(key)
    }

    fn checked(key: ssh_key::PublicKey) -> Result<Self, CaError> {
        let refuse = |why: String| Err(CaError::Refused(why));
        match key.key_data() {
            KeyData::Ed25519(_)
            | KeyData::Ecdsa(_)
            | KeyData::SkEd25519(_)
            | KeyData::SkEcdsaSha2NistP256(_) => {}
            KeyData::Rsa(rsa) => {
                let bits = rsa
                    .n
                    .as_positive_bytes()
                    .map(|n| {
                        let lead = n.first().map_or(0, |b| b.leading_zeros() as usize);
                        (n.len() * 8).saturating_sub(lead)
                    })
                    .unwrap_or(0);
                if bits < MIN_RSA_BITS {
                    return refuse(format!(
                        "an RSA key of {bits} bits is too weak: use at least {MIN_RSA_BITS} bits, or better ed25519 (`ssh-keygen -t ed25519`)"
                    ));
                }
            }
            KeyData::Dsa(_) => {
                return refuse(
                    "DSA keys are not certified (OpenSSH disabled them): use `ssh-keygen -t ed25519`"
                        .into(),
                );
            }
            other => {
                return refuse(format!(
                    "key type {} is not certified: use ed25519, ecdsa or rsa",
                    other.algorithm()
                ));
            }
        }
        Ok(SshPublicKey(key))
    }

    /// The algorithm name (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …).
    pub fn algorithm(&self) -> String {
        self.0.algorithm().as_str().to_owned()
    }

    /// The SHA-256 fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The OpenSSH public key line, without comment.
    pub fn to_openssh(&self) -> String {
        ssh_key::PublicKey::new(self.0.key_data().clone(), "")
            .to_openssh()
            .unwrap_or_default()
    }
}

/// Who may get which certificates, and what they carry.
#[derive(Clone, Debug)]
pub struct SshPolicy {
    /// User certificate lifetime when none is asked (default 8h).
    pub user_default_lifetime: Duration,
    /// Longest user certificate lifetime (default 24h).
    pub user_max_lifetime: Duration,
    /// Host certificate lifetime when none is asked (default 30d).
    pub host_default_lifetime: Duration,
    /// Longest host certificate lifetime (default 90d).
    pub host_max_lifetime: Duration,
    /// Extensions of user certificates (default [`DEFAULT_EXTENSIONS`]).
    pub extensions: BTreeSet<String>,
    /// `force-command` imposed on every user certificate.
    pub force_command: Option<String>,
    /// `source-address` imposed on every user certificate (empty: none).
    pub source_address: Vec<ipnet::IpNet>,
    /// Whether the user's own name is one of its principals (default yes).
    pub user_principal: bool,
    /// Principals each group grants its members.
    pub group_principals: BTreeMap<String, Vec<String>>,
    /// Host certificate names must be these domains or under them (empty:
    /// no host certificates).
    pub host_domains: Vec<String>,
}

impl Default for SshPolicy {
    fn default() -> Self {
        SshPolicy {
            user_default_lifetime: Duration::from_secs(8 * 3600),
            user_max_lifetime: Duration::from_secs(24 * 3600),
            host_default_lifetime: Duration::from_secs(30 * 86_400),
            host_max_lifetime: Duration::from_secs(90 * 86_400),
            extensions: DEFAULT_EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
            force_command: None,
            source_address: Vec::new(),
            user_principal: true,
            group_principals: BTreeMap::new(),
            host_domains: Vec::new(),
        }
    }
}

impl SshPolicy {
    /// Check the policy itself (what configuration validation runs).
    ///
    /// # Errors
    /// [`CaError::Setup`] naming the problem.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |why: String| Err(CaError::Setup(why));
        for (what, default, max) in [
            ("user", self.user_default_lifetime, self.user_max_lifetime),
            ("host", self.host_default_lifetime, self.host_max_lifetime),
        ] {
            if default > max {
                return bad(format!(
                    "{what}_lifetime is longer than {what}_max_lifetime"
                ));
            }
            if default < MIN_LIFETIME {
                return bad(format!("{what}_lifetime must be at least 60s"));
            }
        }
        for e in &self.extensions {
            check_extension(e).or_else(|why| bad(format!("extensions: {why}")))?;
        }
        if let Some(fc) = &self.force_command {
            check_force_command(fc).or_else(|why| bad(format!("force_command: {why}")))?;
        }
        for (group, principals) in &self.group_principals {
            for p in principals {
                check_principal(p).or_else(|why| bad(format!("groups.{group}: {why}")))?;
            }
        }
        for d in &self.host_domains {
            crate::profile::check_dns_name(d).or_else(|e| {
                bad(format!(
                    "host_domains: {}",
                    e.to_string().trim_start_matches("refused: ")
                ))
            })?;
        }
        Ok(())
    }

    /// Every principal `user` in `groups` may have, sorted.
    pub fn allowed_principals(&self, user: &str, groups: &[String]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if self.user_principal && check_principal(user).is_ok() {
            out.insert(user.to_owned());
        }
        for g in groups {
            if let Some(ps) = self.group_principals.get(g) {
                out.extend(ps.iter().cloned());
            }
        }
        out
    }

    fn host_name_allowed(&self, name: &str) -> bool {
        self.host_domains.iter().any(|d| {
            name == d
                || name
                    .strip_suffix(d.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

/// A user certificate to issue.
#[derive(Clone, Debug)]
pub struct UserCertRequest {
    /// The key to certify.
    pub public_key: SshPublicKey,
    /// The identity's user name (a principal unless the policy says not).
    pub user: String,
    /// The identity's groups (mapped to principals by the policy).
    pub groups: Vec<String>,
    /// Principals asked for; empty: all the identity may have.
    pub principals: Vec<String>,
    /// The key id OpenSSH logs at login; the user name when `None`.
    pub key_id: Option<String>,
    /// Lifetime; the policy's default when `None`, its maximum at most.
    pub valid_for: Option<Duration>,
    /// Extensions asked for (a subset of the policy's); `None`: the policy's.
    pub extensions: Option<Vec<String>>,
    /// `force-command`; refused if the policy imposes a different one.
    pub force_command: Option<String>,
    /// `source-address` networks; each must lie within the policy's, if it
    /// has any. Empty: the policy's.
    pub source_address: Vec<ipnet::IpNet>,
}

impl UserCertRequest {
    /// A request for everything `user` may have, with the policy's defaults.
    pub fn new(public_key: SshPublicKey, user: &str, groups: &[String]) -> Self {
        UserCertRequest {
            public_key,
            user: user.to_owned(),
            groups: groups.to_vec(),
            principals: Vec::new(),
            key_id: None,
            valid_for: None,
            extensions: None,
            force_command: None,
            source_address: Vec::new(),
        }
    }
}

/// A host certificate to issue.
#[derive(Clone, Debug)]
pub struct HostCertRequest {
    /// The host key to certify (`/etc/ssh/ssh_host_ed25519_key.pub`).
    pub public_key: SshPublicKey,
    /// The names clients connect to; each under a configured host domain.
    pub names: Vec<String>,
    /// The key id; the first name when `None`.
    pub key_id: Option<String>,
    /// Lifetime; the policy's default when `None`, its maximum at most.
    pub valid_for: Option<Duration>,
    /// Who asked, for the record.
    pub requester: Option<String>,
}

/// An issued SSH certificate.
#[derive(Clone, Debug)]
pub struct SshIssued {
    /// User or host.
    pub kind: SshCertKind,
    /// The certificate as an OpenSSH line (`…-cert-v01@openssh.com AAAA… key-id`),
    /// what goes into `id_ed25519-cert.pub` or `HostCertificate`.
    pub certificate: String,
    /// The certificate blob (SSH wire encoding).
    pub blob: Vec<u8>,
    /// Serial (random, 64 bits).
    pub serial: u64,
    /// Key id.
    pub key_id: String,
    /// Principals (user names or host names).
    pub principals: Vec<String>,
    /// Valid from (inclusive).
    pub valid_after: UnixTime,
    /// Valid until (exclusive).
    pub valid_before: UnixTime,
    /// Fingerprint of the signing CA key (`SHA256:…`).
    pub ca_fingerprint: String,
}

/// One of the two CA keys, with its SSH encodings.
#[derive(Debug)]
struct CaKey {
    signer: Arc<dyn Signer>,
    public: ssh_key::PublicKey,
    /// Wire encoding of the public key (the certificate's signature key).
    blob: Vec<u8>,
    fingerprint: String,
}

impl CaKey {
    fn new(signer: Arc<dyn Signer>, comment: &str) -> Result<Self, CaError> {
        let data = match signer.public_key() {
            hexon_core::PublicKey::Ed25519(k) => {
                KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(k.to_bytes()))
            }
            hexon_core::PublicKey::P256(k) => {
                KeyData::Ecdsa(ssh_key::public::EcdsaPublicKey::from(&k))
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(CaError::Setup(format!(
                    "signer {:?}: an SSH CA key must be Ed25519 or P-256, not {:?}",
                    signer.key_id(),
                    other.algorithm()
                )));
            }
        };
        let public = ssh_key::PublicKey::new(data, comment);
        let blob = public
            .to_bytes()
            .map_err(|e| CaError::build("an SSH CA public key", e))?;
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        Ok(CaKey {
            signer,
            public,
            blob,
            fingerprint,
        })
    }

    fn openssh(&self) -> String {
        self.public.to_openssh().unwrap_or_default()
    }

    /// The certificate store's issuer of what this key signs.
    fn issuer(&self, kind: SshCertKind) -> String {
        format!("{}:{}", kind.profile(), self.fingerprint)
    }
}

/// The SSH certificate authority: a user CA key, a host CA key and the
/// policy. Every certificate it issues is recorded in the certificate store.
pub struct SshCa {
    user: CaKey,
    host: CaKey,
    policy: SshPolicy,
    store: Arc<dyn CertificateStore>,
}

impl fmt::Debug for SshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshCa")
            .field("user_ca", &self.user.fingerprint)
            .field("host_ca", &self.host.fingerprint)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SshCa {
    /// An SSH CA signing user certificates with `user_ca` and host
    /// certificates with `host_ca` (each Ed25519 or P-256).
    ///
    /// # Errors
    /// [`CaError::Setup`] for an unsuitable key or policy.
    pub fn new(
        user_ca: Arc<dyn Signer>,
        host_ca: Arc<dyn Signer>,
        policy: SshPolicy,
        store: Arc<dyn CertificateStore>,
    ) -> Result<Self, CaError> {
        policy.validate()?;
        Ok(SshCa {
            user: CaKey::new(user_ca, "hexon-ssh-user-ca")?,
            host: CaKey::new(host_ca, "hexon-ssh-host-ca")?,
            policy,
            store,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &SshPolicy {
        &self.policy
    }

    /// The user CA public key as an OpenSSH line, for sshd's
    /// `TrustedUserCAKeys` file.
    pub fn user_ca_openssh(&self) -> String {
        self.user.openssh()
    }

    /// The host CA public key as an OpenSSH line.
    pub fn host_ca_openssh(&self) -> String {
        self.host.openssh()
    }

    /// The `known_hosts` line that makes clients trust host certificates
    /// for the configured host domains:
    /// `@cert-authority *.example.com,example.com ssh-ed25519 AAAA…`.
    /// `None` without host domains: no host certificates are issued then,
    /// and trusting the host CA for every host (`*`) would outlast a later
    /// narrowing.
    pub fn known_hosts_line(&self) -> Option<String> {
        if self.policy.host_domains.is_empty() {
            return None;
        }
        let patterns = self
            .policy
            .host_domains
            .iter()
            .flat_map(|d| [format!("*.{d}"), d.clone()])
            .collect::<Vec<_>>()
            .join(",");
        Some(format!(
            "@cert-authority {patterns} {}",
            self.host.openssh()
        ))
    }

    /// Fingerprint (`SHA256:…`) of the user CA key.
    pub fn user_ca_fingerprint(&self) -> &str {
        &self.user.fingerprint
    }

    /// Fingerprint (`SHA256:…`) of the host CA key.
    pub fn host_ca_fingerprint(&self) -> &str {
        &self.host.fingerprint
    }

    /// Issue a user certificate now.
    ///
    /// # Errors
    /// [`CaError::Refused`] when the request breaks the policy (the message
    /// is for the requester); signing and store errors otherwise.
    pub async fn issue_user(&self, request: &UserCertRequest) -> Result<SshIssued, CaError> {
        self.issue_user_at(request, UnixTime::now()).await
    }

    /// Issue a user certificate as of `now` (valid from `now` minus
    /// [`BACKDATE`]).
    ///
    /// # Errors
    /// As [`SshCa::issue_user`].
    pub async fn issue_user_at(
        &self,
        request: &UserCertRequest,
        now: UnixTime,
    ) -> Result<SshIssued, CaError> {
        let policy = &self.policy;
        let allowed = policy.allowed_principals(&request.user, &request.groups);
        let principals: Vec<String> = if request.principals.is_empty() {
            allowed.iter().cloned().collect()
        } else {
            let mut asked = BTreeSet::new();
            for p in &request.principals {
                if !allowed.contains(p) {
                    return Err(CaError::Refused(format!(
                        "principal {p:?} is not allowed for {:?}; allowed: {}",
                        request.user,
                        list_or_none(allowed.iter())
                    )));
                }
                asked.insert(p.clone());
            }
            asked.into_iter().collect()
        };
        if principals.is_empty() {
            return Err(CaError::Refused(format!(
                "{:?} is allowed no SSH principals (its name is not a usable login name and no [ca.ssh] group maps to any)",
                request.user
            )));
        }

        let extensions: BTreeSet<String> = match &request.extensions {
            None => policy.extensions.clone(),
            Some(asked) => {
                for e in asked {
                    if !policy.extensions.contains(e) {
                        return Err(CaError::Refused(format!(
                            "extension {e:?} is not granted; the policy grants {}",
                            list_or_none(policy.extensions.iter())
                        )));
                    }
                }
                asked.iter().cloned().collect()
            }
        };

        let mut critical = BTreeMap::new();
        let force_command = match (&policy.force_command, &request.force_command) {
            (Some(imposed), Some(asked)) if imposed != asked => {
                return Err(CaError::Refused(format!(
                    "force-command is fixed by the policy to {imposed:?}"
                )));
            }
            (Some(c), _) => Some(c.clone()),
            (None, Some(c)) => {
                check_force_command(c).map_err(CaError::Refused)?;
                Some(c.clone())
            }
            (None, None) => None,
        };
        if let Some(c) = force_command {
            critical.insert("force-command".to_owned(), c);
        }
        let sources: Vec<ipnet::IpNet> = if request.source_address.is_empty() {
            policy.source_address.clone()
        } else {
            for net in &request.source_address {
                if !policy.source_address.is_empty()
                    && !policy.source_address.iter().any(|p| p.contains(net))
                {
                    return Err(CaError::Refused(format!(
                        "source-address {net} is outside the policy's {}",
                        list_or_none(policy.source_address.iter())
                    )));
                }
            }
            request.source_address.clone()
        };
        if !sources.is_empty() {
            let list: Vec<String> = sources.iter().map(|n| n.trunc().to_string()).collect();
            critical.insert("source-address".to_owned(), list.join(","));
        }

        let key_id = request
            .key_id
            .clone()
            .unwrap_or_else(|| request.user.clone());
        let fields = Fields {
            kind: SshCertKind::User,
            key_id,
            principals,
            critical,
            extensions: extensions.into_iter().map(|e| (e, String::new())).collect(),
        };
        let lifetime = lifetime(
            request.valid_for,
            policy.user_default_lifetime,
            policy.user_max_lifetime,
        )?;
        self.issue(
            &self.user,
            &request.public_key,
            fields,
            lifetime,
            now,
            Some(&request.user),
        )
        .await
    }

    /// Issue a host certificate now.
    ///
    /// # Errors
    /// [`CaError::Refused`] for names outside the host domains; signing and
    /// store errors otherwise.
    pub async fn issue_host(&self, request: &HostCertRequest) -> Result<SshIssued, CaError> {
        self.issue_host_at(request, UnixTime::now()).await
    }

    /// Issue a host certificate as of `now`.
    ///
    /// # Errors
    /// As [`SshCa::issue_host`].
    pub async fn issue_host_at(
        &self,
        request: &HostCertRequest,
        now: UnixTime,
    ) -> Result<SshIssued, CaError> {
        if self.policy.host_domains.is_empty() {
            return Err(CaError::Refused(
                "no host certificates: [ca.ssh] host_domains is empty".into(),
            ));
        }
        if request.names.is_empty() {
            return Err(CaError::Refused(
                "a host certificate needs at least one name".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for name in &request.names {
            let lower = name.to_ascii_lowercase();
            crate::profile::check_dns_name(&lower)?;
            if lower.starts_with("*.") {
                return Err(CaError::Refused(format!(
                    "host name {name:?}: no wildcards in host certificates"
                )));
            }
            if !self.policy.host_name_allowed(&lower) {
                return Err(CaError::Refused(format!(
                    "host name {name:?} is outside the SSH host domains {}",
                    list_or_none(self.policy.host_domains.iter())
                )));
            }
            names.insert(lower);
        }
        let principals: Vec<String> = names.into_iter().collect();
        let key_id = request
            .key_id
            .clone()
            .or_else(|| principals.first().cloned())
            .unwrap_or_default();
        let fields = Fields {
            kind: SshCertKind::Host,
            key_id,
            principals,
            critical: BTreeMap::new(),
            extensions: BTreeMap::new(),
        };
        let lifetime = lifetime(
            request.valid_for,
            self.policy.host_default_lifetime,
            self.policy.host_max_lifetime,
        )?;
        self.issue(
            &self.host,
            &request.public_key,
            fields,
            lifetime,
            now,
            request.requester.as_deref(),
        )
        .await
    }

    async fn issue(
        &self,
        ca: &CaKey,
        subject: &SshPublicKey,
        fields: Fields,
        lifetime: Duration,
        now: UnixTime,
        requester: Option<&str>,
    ) -> Result<SshIssued, CaError> {
        check_key_id(&fields.key_id).map_err(CaError::Refused)?;
        // An empty list means "any principal" to sshd (users) and ssh
        // (hosts); OpenSSH refuses more than 256.
        if fields.principals.is_empty() {
            return Err(CaError::Refused(
                "a certificate needs at least one principal".into(),
            ));
        }
        if fields.principals.len() > MAX_PRINCIPALS {
            return Err(CaError::Refused(format!(
                "{} principals: OpenSSH accepts at most {MAX_PRINCIPALS} in a certificate",
                fields.principals.len()
            )));
        }
        if subject.0.key_data() == ca.public.key_data() {
            return Err(CaError::Refused(
                "that is the CA's own key; certify a user or host key".into(),
            ));
        }
        let valid_after = now.saturating_sub(BACKDATE).as_secs().max(0);
        let valid_before = now.saturating_add(lifetime).as_secs();
        if valid_before <= 0 {
            return Err(CaError::Refused(
                "the clock is before 1970: no certificate".into(),
            ));
        }
        let serial = loop {
            let s = OsRng.next_u64();
            if s != 0 {
                break s;
            }
        };
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let tbs = encode_tbs(
            &fields,
            subject,
            &nonce,
            serial,
            // Both are non-negative here.
            valid_after.unsigned_abs(),
            valid_before.unsigned_abs(),
            &ca.blob,
        )?;
        let (cert, blob) = sign_certificate(ca, tbs).await?;
        let certificate = format!(
            "{} {}",
            cert.to_openssh()
                .map_err(|e| CaError::build("an SSH certificate", e))?,
            fields.key_id.replace(char::is_whitespace, "_")
        );
        let issued = SshIssued {
            kind: fields.kind,
            certificate,
            blob,
            serial,
            key_id: fields.key_id,
            principals: fields.principals,
            valid_after: UnixTime::from_secs(valid_after),
            valid_before: UnixTime::from_secs(valid_before),
            ca_fingerprint: ca.fingerprint.clone(),
        };
        let record = CertificateRecord {
            serial: format!("{serial:016x}"),
            issuer: ca.issuer(fields.kind),
            subject: issued.key_id.clone(),
            sans: issued.principals.clone(),
            profile: fields.kind.profile().to_owned(),
            not_before: issued.valid_after,
            not_after: issued.valid_before,
            requester: requester.map(str::to_owned),
            der: issued.blob.clone(),
            revoked: None,
        };
        // As for X.509: a certificate the store did not take is not released.
        self.store.insert_certificate(&record).await?;
        tracing::info!(
            kind = %fields.kind,
            serial = %record.serial,
            key_id = %issued.key_id,
            principals = %issued.principals.join(","),
            subject_key = %subject.fingerprint(),
            ca = %ca.fingerprint,
            valid_after = valid_after,
            valid_before = valid_before,
            requester = requester.unwrap_or("-"),
            "SSH certificate issued"
        );
        Ok(issued)
    }
}

/// What differs between user and host certificates.
struct Fields {
    kind: SshCertKind,
    key_id: String,
    principals: Vec<String>,
    critical: BTreeMap<String, String>,
    extensions: BTreeMap<String, String>,
}

fn lifetime(
    asked: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, CaError> {
    let lifetime = asked.unwrap_or(default).min(max);
    if lifetime < MIN_LIFETIME {
        return Err(CaError::Refused(format!(
            "a lifetime under {} seconds is not issued",
            MIN_LIFETIME.as_secs()
        )));
    }
    Ok(lifetime)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CaError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| CaError::build("an SSH certificate", "a field longer than 4 GiB"))?;
    put_u32(out, len);
    out.extend_from_slice(bytes);
    Ok(())
}

/// An options list (critical options, extensions): lexically ordered
/// `string name, string data`, where data is empty for flags and holds a
/// string for options with a value.
fn encode_options(map: &BTreeMap<String, String>) -> Result<Vec<u8>, CaError> {
    let mut out = Vec::new();
    for (name, value) in map {
        put_string(&mut out, name.as_bytes())?;
        if value.is_empty() {
            put_string(&mut out, b"")?;
        } else {
            let mut inner = Vec::new();
            put_string(&mut inner, value.as_bytes())?;
            put_string(&mut out, &inner)?;
        }
    }
    Ok(out)
}

/// The signed part of a certificate, as `PROTOCOL.certkeys` lays it out.
fn encode_tbs(
    fields: &Fields,
    subject: &SshPublicKey,
    nonce: &[u8],
    serial: u64,
    valid_after: u64,
    valid_before: u64,
    ca_blob: &[u8],
) -> Result<Vec<u8>, CaError> {
    let mut out = Vec::with_capacity(512);
    let key_data = subject.0.key_data();
    put_string(
        &mut out,
        key_data.algorithm().to_certificate_type().as_bytes(),
    )?;
    put_string(&mut out, nonce)?;
    // The subject key's fields: its wire encoding without the leading
    // algorithm name (which the certificate type replaces).
    let key_blob = subject
        .0
        .to_bytes()
        .map_err(|e| CaError::build("an SSH certificate", e))?;
    let name_len = key_blob
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| CaError::build("an SSH certificate", "a truncated key blob"))?;
    let key_fields = key_blob
        .get(4 + name_len..)
        .ok_or_else(|| CaError::build("an SSH certificate", "a truncated key blob"))?;
    out.extend_from_slice(key_fields);
    out.extend_from_slice(&serial.to_be_bytes());
    put_u32(&mut out, fields.kind.wire());
    put_string(&mut out, fields.key_id.as_bytes())?;
    let mut principals = Vec::new();
    for p in &fields.principals {
        put_string(&mut principals, p.as_bytes())?;
    }
    put_string(&mut out, &principals)?;
    out.extend_from_slice(&valid_after.to_be_bytes());
    out.extend_from_slice(&valid_before.to_be_bytes());
    put_string(&mut out, &encode_options(&fields.critical)?)?;
    put_string(&mut out, &encode_options(&fields.extensions)?)?;
    put_string(&mut out, b"")?; // reserved
    put_string(&mut out, ca_blob)?;
    Ok(out)
}

/// Sign `tbs` with the CA key (asynchronously), append the signature, and
/// check the result parses and verifies under the CA key before it is used.
async fn sign_certificate(ca: &CaKey, tbs: Vec<u8>) -> Result<(Certificate, Vec<u8>), CaError> {
    let bad = || CaError::BadSignature {
        key_id: ca.signer.key_id().to_owned(),
    };
    let raw = ca.signer.sign(&tbs).await?;
    let signature = match ca.signer.algorithm() {
        Algorithm::Ed25519 => ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, raw),
        Algorithm::EcdsaP256Sha256 => {
            // Signer returns `r || s`; SSH wants `mpint r, mpint s`.
            let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| bad())?;
            ssh_key::Signature::try_from(sig)
        }
        other => {
            return Err(CaError::Setup(format!(
                "an SSH CA cannot sign with {other}"
            )));
        }
    }
    .map_err(|_| bad())?;
    let sig_blob = Vec::<u8>::try_from(signature).map_err(|_| bad())?;
    let mut blob = tbs;
    put_string(&mut blob, &sig_blob)?;
    let cert = Certificate::from_bytes(&blob)
        .map_err(|e| CaError::build("an SSH certificate (it does not parse back)", e))?;
    if cert.signature_key() != ca.public.key_data() {
        return Err(CaError::build(
            "an SSH certificate",
            "the signature key in the certificate is not the CA's",
        ));
    }
    cert.verify_signature().map_err(|_| bad())?;
    Ok((cert, blob))
}

/// A principal: 1-128 of letters, digits, `.`, `_`, `-`, `@`, `+`, not
/// starting with `-` (what login names and `user@realm` principals use;
/// nothing that `AuthorizedPrincipalsFile` or `ssh-keygen -n` would split).
pub fn check_principal(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 128
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "principal {:?}: use 1 to 128 of letters, digits, '.', '_', '-', '@', '+' (not starting with '-')",
            p.chars().take(130).collect::<String>()
        ))
    }
}

/// sshd logs the key id (`… ID %s (serial %llu) CA …`): printable ASCII
/// without spaces, quotes or parentheses, so one cannot forge the rest of
/// that line for log readers.
fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'(' | b')' | b'\\'));
    if !ok {
        return Err(format!(
            "key id {:?}: 1 to 256 printable ASCII characters, without spaces, quotes, parentheses or backslashes",
            id.chars().take(260).collect::<String>()
        ));
    }
    Ok(())
}

fn check_extension(e: &str) -> Result<(), String> {
    if DEFAULT_EXTENSIONS.contains(&e) || OTHER_KNOWN_EXTENSIONS.contains(&e) {
        return Ok(());
    }
    // Vendor extensions are `name@domain`; OpenSSH ignores ones it does
    // not know.
    let vendor = e.split_once('@').is_some_and(|(n, d)| {
        !n.is_empty()
            && crate::profile::check_dns_name(d).is_ok()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if vendor {
        Ok(())
    } else {
        Err(format!(
            "unknown extension {e:?}: use {} or a vendor `name@domain`",
            DEFAULT_EXTENSIONS
                .iter()
                .chain(OTHER_KNOWN_EXTENSIONS.iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn check_force_command(c: &str) -> Result<(), String> {
    if c.trim().is_empty() || c.len() > 1024 || c.contains('\0') || c.contains('\n') {
        return Err("force-command must be 1 to 1024 characters on one line".into());
    }
    Ok(())
}

fn list_or_none<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hexon_core::signer::SignFuture;
    use hexon_core::store::{MemoryStore, SecretKeys};
    use hexon_core::{Ed25519Signer, P256Signer};

    fn store() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([3; 32]))))
    }

    fn policy() -> SshPolicy {
        let mut p = SshPolicy::default();
        p.group_principals
            .insert("admins".into(), vec!["root".into(), "deploy".into()]);
        p.host_domains = vec!["example.test".into()];
        p
    }

    fn ca_with(policy: SshPolicy) -> (SshCa, Arc<MemoryStore>) {
        let store = store();
        let ca = SshCa::new(
            Arc::new(Ed25519Signer::generate("ssh-user").unwrap()),
            Arc::new(P256Signer::generate("ssh-host").unwrap()),
            policy,
            store.clone(),
        )
        .unwrap();
        (ca, store)
    }

    fn ed_key() -> SshPublicKey {
        let k = Ed25519Signer::generate("subject").unwrap();
        let hexon_core::PublicKey::Ed25519(vk) = k.public_key() else {
            unreachable!()
        };
        let pk = ssh_key::PublicKey::new(
            KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(vk.to_bytes())),
            "alice@laptop",
        );
        SshPublicKey::parse(&pk.to_openssh().unwrap()).unwrap()
    }

    fn rsa_line(bits: usize) -> String {
        // An RSA public key blob: string "ssh-rsa", mpint e, mpint n.
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-rsa").unwrap();
        put_string(&mut blob, &[1, 0, 1]).unwrap();
        let mut n = vec![0u8; 1 + bits / 8];
        n[1] = 0xc5;
        *n.last_mut().unwrap() = 0x01;
        put_string(&mut blob, &n).unwrap();
        use base64::Engine as _;
        format!(
            "ssh-rsa {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[tokio::test]
    async fn user_certificate_fields_and_record() {
        let (ca, store) = ca_with(policy());
        let mut req = UserCertRequest::new(ed_key(), "alice", &["admins".into()]);
        req.source_address = vec!["10.1.2.3/8".parse().unwrap()];
        req.force_command = Some("uptime".into());
        let now = UnixTime::now();
        let issued = ca.issue_user_at(&req, now).await.unwrap();
        assert_eq!(issued.principals, ["alice", "deploy", "root"]);
        assert_eq!(issued.key_id, "alice");
        assert_eq!(
            issued.valid_after.as_secs(),
            now.as_secs() - 300,
            "backdated 5 minutes"
        );
        assert_eq!(issued.valid_before.as_secs(), now.as_secs() + 8 * 3600);
        let cert = Certificate::from_openssh(&issued.certificate).unwrap();
        assert!(cert.cert_type().is_user());
        assert_eq!(cert.serial(), issued.serial);
        let fp = cert.signature_key().fingerprint(HashAlg::Sha256);
        cert.validate_at(now.as_secs().unsigned_abs(), [&fp])
            .unwrap();
        assert_eq!(fp.to_string(), ca.user_ca_fingerprint());
        let exts: Vec<&str> = cert.extensions().keys().map(String::as_str).collect();
        assert_eq!(exts, DEFAULT_EXTENSIONS);
        assert_eq!(
            cert.critical_options()
                .get("source-address")
                .map(String::as_str),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            cert.critical_options()
                .get("force-command")
                .map(String::as_str),
            Some("uptime")
        );
        let rec = store
            .certificate(
                &format!("ssh-user:{}", ca.user_ca_fingerprint()),
                &format!("{:016x}", issued.serial),
            )
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(rec.profile, "ssh-user");
        assert_eq!(rec.der, issued.blob);
        assert_eq!(rec.requester.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn host_certificate_from_a_p256_ca() {
        let (ca, _) = ca_with(policy());
        let req = HostCertRequest {
            public_key: ed_key(),
            names: vec!["Web.Example.test".into(), "example.test".into()],
            key_id: None,
            valid_for: None,
            requester: None,
        };
        let issued = ca.issue_host(&req).await.unwrap();
        assert_eq!(issued.principals, ["example.test", "web.example.test"]);
        assert_eq!(
            issued.valid_before.since(issued.valid_after),
            Duration::from_secs(30 * 86_400 + 300)
        );
        let cert = Certificate::from_openssh(&issued.certificate).unwrap();
        assert!(cert.cert_type().is_host());
        assert!(cert.extensions().is_empty());
        assert!(cert.signature_key().is_ecdsa());
        cert.verify_signature().unwrap();
        assert!(
            ca.known_hosts_line()
                .unwrap()
                .starts_with("@cert-authority *.example.test,example.test ecdsa-sha2-nistp256 ")
        );
    }

    #[test]
    fn key_ids_cannot_forge_sshd_log_lines() {
        assert!(check_key_id("alice@example.test").is_ok());
        for bad in [
            "",
            "bob (serial 1) CA ED25519 SHA256:x",
            "a\"b",
            "tab\there",
            "line\u{2028}sep",
            "rtl\u{202e}x",
        ] {
            assert!(check_key_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_key_id(&"a".repeat(257)).is_err());
    }

    #[test]
    fn no_known_hosts_line_without_host_domains() {
        let mut p = policy();
        p.host_domains.clear();
        let (ca, _) = ca_with(p);
        assert_eq!(ca.known_hosts_line(), None);
    }

    #[tokio::test]
    async fn principal_counts_openssh_refuses_are_refused() {
        let mut p = policy();
        p.group_principals
            .insert("many".into(), (0..300).map(|i| format!("p{i}")).collect());
        let (ca, _) = ca_with(p);
        let req = UserCertRequest::new(ed_key(), "alice", &["many".to_owned()]);
        match ca.issue_user(&req).await {
            Err(CaError::Refused(why)) => assert!(why.contains("at most 256"), "{why}"),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn policy_refusals() {
        let (ca, _) = ca_with(policy());
        let refused = |r: Result<SshIssued, CaError>, needle: &str| match r {
            Err(CaError::Refused(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
        };
        // A principal the identity does not have.
        let mut req = UserCertRequest::new(ed_key(), "alice", &[]);
        req.principals = vec!["root".into()];
        refused(
            ca.issue_user(&req).await,
            "principal \"root\" is not allowed",
        );
        // Groups grant it.
        req.groups = vec!["admins".into()];
        assert_eq!(ca.issue_user(&req).await.unwrap().principals, ["root"]);
        // An extension beyond the policy.
        let mut narrow = policy();
        narrow.extensions = ["permit-pty".to_owned()].into();
        let (narrow_ca, _) = ca_with(narrow);
        let mut req = UserCertRequest::new(ed_key(), "alice", &[]);
        req.extensions = Some(vec!["permit-port-forwarding".into()]);
        refused(narrow_ca.issue_user(&req).await, "is not granted");
        // A force-command other than the imposed one.
        let mut forced = policy();
        forced.force_command = Some("/usr/bin/backup".into());
        forced.source_address = vec!["10.0.0.0/8".parse().unwrap()];
        let (forced_ca, _) = ca_with(forced);
        let mut req = UserCertRequest::new(ed_key(), "alice", &[]);
        req.force_command = Some("/bin/sh".into());
        refused(forced_ca.issue_user(&req).await, "fixed by the policy");
        let mut req = UserCertRequest::new(ed_key(), "alice", &[]);
        req.source_address = vec!["192.168.0.0/16".parse().unwrap()];
        refused(forced_ca.issue_user(&req).await, "outside the policy");
        // A user name that cannot be a principal and no groups.
        let req = UserCertRequest::new(ed_key(), "Alice Smith", &[]);
        refused(ca.issue_user(&req).await, "allowed no SSH principals");
        // Lifetime: clamped to the maximum, refused below a minute.
        let mut req = UserCertRequest::new(ed_key(), "alice", &[]);
        req.valid_for = Some(Duration::from_secs(7 * 86_400));
        let issued = ca.issue_user(&req).await.unwrap();
        assert_eq!(
            issued.valid_before.since(issued.valid_after),
            Duration::from_secs(24 * 3600 + 300),
            "clamped to user_max_lifetime"
        );
        req.valid_for = Some(Duration::from_secs(10));
        refused(ca.issue_user(&req).await, "lifetime under 60 seconds");
        // Host names outside the domains, wildcards.
        for (name, needle) in [
            ("evil.test", "outside the SSH host domains"),
            ("notexample.test", "outside the SSH host domains"),
            ("*.example.test", "no wildcards"),
            ("bad_name.example.test", "only letters"),
        ] {
            let req = HostCertRequest {
                public_key: ed_key(),
                names: vec![name.into()],
                key_id: None,
                valid_for: None,
                requester: None,
            };
            refused(ca.issue_host(&req).await, needle);
        }
        // No host domains: no host certificates.
        let (no_hosts, _) = ca_with(SshPolicy::default());
        let req = HostCertRequest {
            public_key: ed_key(),
            names: vec!["a.example.test".into()],
            key_id: None,
            valid_for: None,
            requester: None,
        };
        refused(no_hosts.issue_host(&req).await, "host_domains is empty");
    }

    #[test]
    fn weak_and_malformed_keys() {
        let refused = |line: &str, needle: &str| match SshPublicKey::parse(line) {
            Err(CaError::Refused(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
        };
        refused(&rsa_line(1024), "1024 bits is too weak");
        refused(&rsa_line(2040), "2040 bits is too weak");
        assert!(SshPublicKey::parse(&rsa_line(2048)).is_ok());
        // A DSA key line (p, q, g, y mpints).
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-dss").unwrap();
        for _ in 0..4 {
            put_string(&mut blob, &[0x01; 20]).unwrap();
        }
        use base64::Engine as _;
        let dsa = format!(
            "ssh-dss {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        refused(&dsa, "DSA keys are not certified");
        let bad = |line: &str, needle: &str| match SshPublicKey::parse(line) {
            Err(CaError::BadSshKey(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected a bad-key error containing {needle:?}, got {other:?}"),
        };
        bad("", "empty");
        bad("ssh-ed25519 !!!notbase64", "not an OpenSSH public key");
        bad("ssh-ed25519 AAAA\nssh-ed25519 AAAA", "exactly one");
        bad(&"A".repeat(MAX_PUBLIC_KEY_LEN + 1), "longer than");
        bad("-----BEGIN OPENSSH PRIVATE KEY-----", "PEM");
        bad(
            "ssh-ed25519-cert-v01@openssh.com AAAA",
            "that is a certificate",
        );
        // The algorithm name must match the blob.
        let ed = ed_key().to_openssh();
        bad(
            &ed.replacen("ssh-ed25519", "ssh-rsa", 1),
            "not an OpenSSH public key",
        );
    }

    /// A signer that signs, then flips a bit.
    #[derive(Debug)]
    struct Faulty(Ed25519Signer);

    impl Signer for Faulty {
        fn key_id(&self) -> &str {
            self.0.key_id()
        }
        fn algorithm(&self) -> Algorithm {
            self.0.algorithm()
        }
        fn public_key(&self) -> hexon_core::PublicKey {
            self.0.public_key()
        }
        fn sign<'a>(&'a self, message: &'a [u8]) -> SignFuture<'a> {
            let mut sig = self.0.sign_sync(message);
            sig[10] ^= 1;
            Box::pin(std::future::ready(Ok(sig.to_vec())))
        }
    }

    #[tokio::test]
    async fn faulty_signer_yields_an_error() {
        let store = store();
        let faulty = Arc::new(Faulty(Ed25519Signer::generate("faulty").unwrap()));
        let ca = SshCa::new(faulty.clone(), faulty, policy(), store.clone()).unwrap();
        let req = UserCertRequest::new(ed_key(), "alice", &[]);
        match ca.issue_user(&req).await {
            Err(CaError::BadSignature { key_id }) => assert_eq!(key_id, "faulty"),
            other => panic!("expected BadSignature, got {other:?}"),
        }
    }

    #[test]
    fn policy_validation() {
        let bad = |p: SshPolicy, needle: &str| match p.validate() {
            Err(CaError::Setup(why)) => assert!(why.contains(needle), "{why}"),
            other => panic!("expected a setup error containing {needle:?}, got {other:?}"),
        };
        let p = SshPolicy {
            user_default_lifetime: Duration::from_secs(48 * 3600),
            ..SshPolicy::default()
        };
        bad(p, "user_lifetime is longer than user_max_lifetime");
        let mut p = SshPolicy::default();
        p.extensions.insert("permit-everything".into());
        bad(p, "unknown extension");
        let mut p = SshPolicy::default();
        p.extensions.insert("login@example.com".into());
        p.validate().unwrap();
        let mut p = SshPolicy::default();
        p.group_principals.insert("g".into(), vec!["a b".into()]);
        bad(p, "groups.g: principal");
        let p = SshPolicy {
            host_domains: vec!["under_score.test".into()],
            ..SshPolicy::default()
        };
        bad(p, "host_domains");
        let p = SshPolicy {
            force_command: Some("a\nb".into()),
            ..SshPolicy::default()
        };
        bad(p, "force_command");
    }
}
