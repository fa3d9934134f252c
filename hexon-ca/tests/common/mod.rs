//! Shared test helpers: a CA in a temporary directory, openssl runs.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use hexon_ca::setup::{CaConfig, ProfileConfig, open};
use hexon_ca::{CertificateAuthority, Profile};
use hexon_core::store::{MemoryStore, SecretKeys};

pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: Arc<CertificateAuthority>,
}

impl TestCa {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn config(url: Option<&str>) -> CaConfig {
    let mut cfg = CaConfig {
        url: url.map(str::to_owned),
        ..CaConfig::default()
    };
    cfg.profiles.insert(
        Profile::TlsServer,
        ProfileConfig {
            dns: vec!["example.test".into(), "localhost".into()],
            ips: vec!["127.0.0.0/8".parse().unwrap()],
            ..ProfileConfig::default()
        },
    );
    cfg.profiles.insert(
        Profile::TlsClient,
        ProfileConfig {
            dns: vec!["example.test".into()],
            ..ProfileConfig::default()
        },
    );
    cfg.profiles.insert(
        Profile::Spiffe,
        ProfileConfig {
            trust_domain: Some("example.test".into()),
            ..ProfileConfig::default()
        },
    );
    cfg.validate().unwrap();
    cfg
}

pub async fn test_ca(cfg: &CaConfig) -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([7; 32]))));
    let ca = open(cfg, dir.path(), store).await.unwrap();
    TestCa {
        dir,
        ca: Arc::new(ca),
    }
}

/// Run openssl with `args`; return (success, stdout + stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A key and CSR made by openssl: (key path, CSR DER).
pub fn openssl_csr(
    dir: &Path,
    stem: &str,
    key_args: &[&str],
    subj: &str,
    sans: &str,
) -> (PathBuf, Vec<u8>) {
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr"));
    let mut args = vec!["req", "-new", "-newkey"];
    args.extend_from_slice(key_args);
    let key_s = key.to_str().unwrap().to_owned();
    let csr_s = csr.to_str().unwrap().to_owned();
    let ext = format!("subjectAltName={sans}");
    args.extend_from_slice(&[
        "-nodes", "-keyout", &key_s, "-out", &csr_s, "-outform", "DER", "-subj", subj,
    ]);
    if !sans.is_empty() {
        args.extend_from_slice(&["-addext", &ext]);
    }
    let (ok, text) = openssl(&args);
    assert!(ok, "openssl req failed: {text}");
    (key, std::fs::read(csr).unwrap())
}

pub fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Serve the CA's endpoints under `/ca` on 127.0.0.1; returns the base URL.
pub async fn serve(ca: Arc<CertificateAuthority>, settings: hexon_ca::OcspSettings) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ocsp = Arc::new(hexon_ca::OcspResponder::new(ca.clone(), settings));
    let svc = hexon_ca::CaHttp::new(ca, ocsp, "/ca");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper::service::service_fn(move |req| {
                    let svc = svc.clone();
                    async move { Ok::<_, std::convert::Infallible>(svc.call(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    format!("http://{addr}/ca")
}

/// A free TCP port on 127.0.0.1, outside the kernel's ephemeral range.
pub use hexon_core::testing::free_port;

/// A local DNS server (pebble-challtestsrv) that answers 127.0.0.1 for
/// every name and serves TXT records set through its management API.
pub struct TestDns {
    pub dns: std::net::SocketAddr,
    pub management: u16,
    child: std::process::Child,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestDns {
    pub fn start() -> TestDns {
        let (dns_port, mgmt) = (free_port(), free_port());
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{mgmt}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (apt-get install pebble)");
        // Dropping it kills it, whatever happens next.
        let server = TestDns {
            dns: format!("127.0.0.1:{dns_port}").parse().unwrap(),
            management: mgmt,
            child,
        };
        // Wait for the management port.
        let mut up = false;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(up, "pebble-challtestsrv did not start");
        server
    }
}

/// The CA's endpoints (`/ca`) and the ACME server (`/acme`) over HTTPS on
/// 127.0.0.1, with a certificate the CA issued itself.
pub struct AcmeHarness {
    pub t: TestCa,
    pub dns: TestDns,
    pub acme: Arc<hexon_ca::acme::AcmeServer>,
    pub directory: String,
    pub root_pem: String,
    pub http01_port: u16,
    pub tls_alpn01_port: u16,
}

pub async fn acme_harness(tune: impl FnOnce(&mut hexon_ca::acme::AcmeConfig)) -> AcmeHarness {
    use hexon_core::store::{KvBackend as _, MemoryKvBackend};
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let t = test_ca(&config(Some(&format!("{base}/ca")))).await;
    let dns = TestDns::start();
    let (http01_port, tls_alpn01_port) = (free_port(), free_port());
    let mut cfg = hexon_ca::acme::AcmeConfig::new(&format!("{base}/acme"));
    cfg.http01_port = http01_port;
    cfg.tls_alpn01_port = tls_alpn01_port;
    cfg.dns_server = Some(dns.dns);
    tune(&mut cfg);
    let kv = MemoryKvBackend::new();
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([3; 32]))));
    let acme = Arc::new(
        hexon_ca::acme::AcmeServer::new(
            cfg,
            t.ca.clone(),
            store,
            kv.bucket("acme", hexon_ca::acme::KV_MAX_TTL).await.unwrap(),
            kv.bucket("acme-nonces", hexon_ca::acme::NONCE_TTL)
                .await
                .unwrap(),
        )
        .unwrap(),
    );
    // The server's own certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let mut req = hexon_ca::IssueRequest::from_csr(
        Profile::TlsServer,
        hexon_ca::check_csr(csr.der()).unwrap(),
    );
    req.names
        .push(hexon_ca::SubjectName::Ip("127.0.0.1".parse().unwrap()));
    let issued = t.ca.issue(&req).await.unwrap();
    let certs: Vec<_> = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        certs,
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let ocsp = Arc::new(hexon_ca::OcspResponder::new(
        t.ca.clone(),
        hexon_ca::OcspSettings::default(),
    ));
    let ca_http = hexon_ca::CaHttp::new(t.ca.clone(), ocsp, "/ca");
    let server = acme.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let (acceptor, ca_http, server) = (acceptor.clone(), ca_http.clone(), server.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let io = hyper_util::rt::TokioIo::new(tls);
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (ca_http, server) = (ca_http.clone(), server.clone());
                        async move {
                            let resp = if server.handles(req.uri().path()) {
                                server.call(req, Some(peer.ip())).await
                            } else {
                                ca_http.call(req).await
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let root_pem = t.path("root.crt").to_str().unwrap().to_owned();
    AcmeHarness {
        t,
        dns,
        acme,
        directory: format!("{base}/acme/directory"),
        root_pem,
        http01_port,
        tls_alpn01_port,
    }
}

/// openssl's arguments for a new P-256 key.
pub const P256: [&str; 3] = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// Check `csr` and issue it under `profile`.
pub async fn issue_csr(
    t: &TestCa,
    profile: Profile,
    csr: &[u8],
) -> Result<hexon_ca::Issued, hexon_ca::CaError> {
    let checked = hexon_ca::check_csr(csr)?;
    t.ca.issue(&hexon_ca::IssueRequest::from_csr(profile, checked))
        .await
}

/// A P-256 certificate for `<stem>.example.test` written to `<stem>.pem`:
/// (path, serial).
pub async fn issue_server(t: &TestCa, stem: &str) -> (String, String) {
    let d = t.dir.path();
    let (_, csr) = openssl_csr(d, stem, &P256, &format!("/CN={stem}.example.test"), "");
    let issued = issue_csr(t, Profile::TlsServer, &csr).await.unwrap();
    (
        write(d, &format!("{stem}.pem"), &issued.chain_pem),
        issued.serial,
    )
}
