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
