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
