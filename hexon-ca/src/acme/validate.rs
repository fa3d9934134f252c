//! Challenge validation: http-01, tls-alpn-01 (RFC 8737), dns-01.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use http_body_util::{BodyExt, Empty, Limited};
use sha2::{Digest, Sha256};

use super::handlers::AuthzRec;
use super::{AcmeServer, Problem};
use crate::CaError;

/// Time allowed for one validation attempt.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest http-01 response body read.
const MAX_BODY: usize = 8 * 1024;

/// DNS lookups for validation.
pub(crate) struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub(crate) fn new(server: Option<SocketAddr>) -> Result<Self, CaError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        // Validation must see what DNS says now, not what it said before.
        opts.cache_size = 0;
        let builder = match server {
            Some(addr) => TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true),
                ),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio().map_err(|e| {
                CaError::Setup(format!(
                    "[ca.acme] cannot read the system's DNS configuration ({e}); set dns_server"
                ))
            })?,
        };
        Ok(Resolver {
            inner: builder.with_options(opts).build(),
        })
    }

    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, Problem> {
        let found = self
            .inner
            .lookup_ip(format!("{name}."))
            .await
            .map_err(|e| Problem::dns(format!("no address for {name}: {e}")))?;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(Problem::dns(format!("no address for {name}")));
        }
        Ok(addrs)
    }

    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, Problem> {
        let found = self
            .inner
            .txt_lookup(format!("{name}."))
            .await
            .map_err(|e| Problem::dns(format!("no TXT record at {name}: {e}")))?;
        Ok(found
            .iter()
            .map(|txt| {
                txt.txt_data()
                    .iter()
                    .flat_map(|part| part.iter().copied())
                    .collect()
            })
            .collect())
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// Validate challenge `kind` of `authz` with `key_authz`.
pub(super) async fn validate(
    server: &AcmeServer,
    kind: &str,
    authz: &AuthzRec,
    key_authz: &str,
) -> Result<(), Problem> {
    let work = async {
        match kind {
            "http-01" => http_01(server, authz, key_authz).await,
            "tls-alpn-01" => tls_alpn_01(server, authz, key_authz).await,
            "dns-01" => dns_01(server, authz, key_authz).await,
            _ => Err(Problem::malformed("unknown challenge type")),
        }
    };
    tokio::time::timeout(TIMEOUT * 3, work)
        .await
        .unwrap_or_else(|_| Err(Problem::connection("validation timed out")))
}

async fn targets(server: &AcmeServer, authz: &AuthzRec) -> Result<Vec<IpAddr>, Problem> {
    match authz.identifier.kind.as_str() {
        "ip" => authz
            .identifier
            .value
            .parse()
            .map(|ip| vec![ip])
            .map_err(|_| Problem::malformed("bad IP identifier")),
        _ => server.resolver.addresses(&authz.identifier.value).await,
    }
}

async fn http_01(server: &AcmeServer, authz: &AuthzRec, key_authz: &str) -> Result<(), Problem> {
    let token = key_authz.split('.').next().unwrap_or_default();
    let host = &authz.identifier.value;
    let mut last = Problem::connection(format!("cannot reach {host}"));
    for ip in targets(server, authz).await? {
        let addr = SocketAddr::new(ip, server.cfg.http01_port);
        match tokio::time::timeout(TIMEOUT, fetch_http_01(addr, host, token)).await {
            Ok(Ok(body)) => {
                let body = String::from_utf8_lossy(&body);
                let got = body.trim_end_matches([' ', '\t', '\r', '\n']);
                if got == key_authz {
                    return Ok(());
                }
                return Err(Problem::incorrect_response(format!(
                    "http://{host}/.well-known/acme-challenge/{token} answered {:?}, not the key authorization",
                    got.chars().take(100).collect::<String>()
                )));
            }
            Ok(Err(p)) => last = p,
            Err(_) => {
                last = Problem::connection(format!(
                    "{addr} did not answer within {}s",
                    TIMEOUT.as_secs()
                ))
            }
        }
    }
    Err(last)
}

async fn fetch_http_01(addr: SocketAddr, host: &str, token: &str) -> Result<Vec<u8>, Problem> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Problem::connection(format!("cannot connect to {addr}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Problem::connection(format!("{addr}: {e}")))?;
    tokio::spawn(conn);
    let host_header = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let req = http::Request::get(format!("/.well-known/acme-challenge/{token}"))
        .header(http::header::HOST, host_header)
        .header(http::header::USER_AGENT, "hexon-acme-validator")
        .header(http::header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Problem::server_internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Problem::connection(format!("{addr}: {e}")))?;
    if !resp.status().is_success() {
        return Err(Problem::unauthorized(format!(
            "http://{host}/.well-known/acme-challenge/{token} answered HTTP {}",
            resp.status().as_u16()
        )));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            Problem::incorrect_response(format!(
                "the answer is not a key authorization of at most {MAX_BODY} bytes"
            ))
        })?;
    Ok(body.to_bytes().to_vec())
}

async fn dns_01(server: &AcmeServer, authz: &AuthzRec, key_authz: &str) -> Result<(), Problem> {
    let name = format!("_acme-challenge.{}", authz.identifier.value);
    let want = B64.encode(Sha256::digest(key_authz.as_bytes()));
    let records = server.resolver.txt(&name).await?;
    if records.iter().any(|r| r.as_slice() == want.as_bytes()) {
        Ok(())
    } else {
        Err(Problem::incorrect_response(format!(
            "{} TXT record(s) at {name}, none is the digest of the key authorization",
            records.len()
        )))
    }
}

/// A verifier that checks the handshake signature but leaves the
/// certificate to [`tls_alpn_01`]: the validation certificate is
/// self-signed by design (RFC 8737 section 3) and carries a critical
/// extension webpki does not know, so the signature is checked against the
/// raw public key (TLS 1.3 only).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "tls-alpn-01 validation speaks TLS 1.3 only".into(),
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The acmeIdentifier extension (RFC 8737 section 6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

async fn tls_alpn_01(
    server: &AcmeServer,
    authz: &AuthzRec,
    key_authz: &str,
) -> Result<(), Problem> {
    let host = authz.identifier.value.clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Problem::server_internal(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let sni = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| Problem::malformed("the identifier is not a valid TLS server name"))?;
    let want = Sha256::digest(key_authz.as_bytes());
    let mut last = Problem::tls(format!("cannot reach {host}"));
    for ip in targets(server, authz).await? {
        let addr = SocketAddr::new(ip, server.cfg.tls_alpn01_port);
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Problem::connection(format!("cannot connect to {addr}: {e}")))?;
            let tls = connector
                .connect(sni.clone(), tcp)
                .await
                .map_err(|e| Problem::tls(format!("TLS with {addr} failed: {e}")))?;
            let (_, conn) = tls.get_ref();
            if conn.alpn_protocol() != Some(b"acme-tls/1") {
                return Err(Problem::tls(format!(
                    "{addr} did not negotiate the acme-tls/1 protocol"
                )));
            }
            let certs = conn.peer_certificates().unwrap_or_default();
            let [cert] = certs else {
                return Err(Problem::tls(format!(
                    "{addr} must present exactly one certificate, not {}",
                    certs.len()
                )));
            };
            check_validation_certificate(cert, &host, &want)
        };
        match tokio::time::timeout(TIMEOUT, attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(p))
                if p.kind.ends_with(":unauthorized") || p.kind.ends_with(":incorrectResponse") =>
            {
                return Err(p);
            }
            Ok(Err(p)) => last = p,
            Err(_) => {
                last = Problem::connection(format!(
                    "{addr} did not answer within {}s",
                    TIMEOUT.as_secs()
                ))
            }
        }
    }
    Err(last)
}

fn check_validation_certificate(der: &[u8], host: &str, want: &[u8]) -> Result<(), Problem> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};
    let wrong = |why: String| Problem::incorrect_response(why);
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| wrong("the validation certificate does not parse".into()))?;
    let mut names = Vec::new();
    let mut ident = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == ACME_IDENTIFIER_OID {
            if !ext.critical {
                return Err(wrong(
                    "the acmeIdentifier extension must be critical".into(),
                ));
            }
            ident = Some(ext.value);
        }
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for gn in &san.general_names {
                match gn {
                    GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                    _ => {
                        return Err(wrong(
                            "the validation certificate may carry only the one DNS name".into(),
                        ));
                    }
                }
            }
        }
    }
    if names != [host.to_owned()] {
        return Err(wrong(format!(
            "the validation certificate must name exactly {host}, not {names:?}"
        )));
    }
    let Some(value) = ident else {
        return Err(wrong(
            "the validation certificate lacks the acmeIdentifier extension".into(),
        ));
    };
    // Authorization ::= OCTET STRING (SIZE (32))
    match value {
        [0x04, 0x20, rest @ ..] if rest == want => Ok(()),
        _ => Err(wrong(
            "the acmeIdentifier extension is not the digest of the key authorization".into(),
        )),
    }
}
