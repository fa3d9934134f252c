//! Issuance and OCSP throughput with local keys.
//!
//! `cargo bench -p hexon-ca --bench ca`
//!
//! - `issue/<ca key>`: one TLS server certificate for a P-256 subject key,
//!   signed by a P-256 or Ed25519 intermediate through the async `Signer`
//!   bridge, its signature verified, and recorded in the (in-memory) store.
//! - `ocsp/cached`: a repeated status request answered from the cache.
//! - `ocsp/nonce`: a request with a nonce: status read and a response
//!   signed every time (delegated responder, P-256).
//! - `ssh/user_ed25519`: one OpenSSH user certificate for an Ed25519 key,
//!   signed by the Ed25519 user CA through the async `Signer`, parsed back
//!   and verified, and recorded in the (in-memory) store.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use der::Encode;
use hexon_ca::setup::{CaConfig, ProfileConfig, open};
use hexon_ca::{CheckedCsr, IssueRequest, OcspResponder, OcspSettings, Profile, check_csr};
use hexon_core::Algorithm;
use hexon_core::store::{MemoryStore, SecretKeys};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn ca(alg: Algorithm, dir: &std::path::Path) -> Arc<hexon_ca::CertificateAuthority> {
    let mut cfg = CaConfig {
        key_algorithm: alg,
        url: Some("http://ca.example.test/ca".into()),
        ..CaConfig::default()
    };
    cfg.profiles.insert(
        Profile::TlsServer,
        ProfileConfig {
            dns: vec!["example.test".into()],
            ..ProfileConfig::default()
        },
    );
    cfg.validate().unwrap();
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([1; 32]))));
    Arc::new(open(&cfg, dir, store).await.unwrap())
}

fn csr() -> CheckedCsr {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["www.example.test".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    check_csr(csr.der()).unwrap()
}

fn issue(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("issue");
    g.throughput(Throughput::Elements(1));
    for (name, alg) in [
        ("p256", Algorithm::EcdsaP256Sha256),
        ("ed25519", Algorithm::Ed25519),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ca = rt.block_on(ca(alg, dir.path()));
        let req = IssueRequest::from_csr(Profile::TlsServer, csr());
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { ca.issue(&req).await.unwrap() })
        });
    }
    g.finish();
}

fn ocsp(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let ca = rt.block_on(ca(Algorithm::EcdsaP256Sha256, dir.path()));
    let issued = rt
        .block_on(ca.issue(&IssueRequest::from_csr(Profile::TlsServer, csr())))
        .unwrap();
    let responder = OcspResponder::new(ca.clone(), OcspSettings::default());
    // Requests built with the same RustCrypto types a client would use.
    use der::Decode;
    let leaf = x509_cert::Certificate::from_der(&issued.der).unwrap();
    let (int, _) = ca.profile(Profile::TlsServer).unwrap();
    let issuer = x509_cert::Certificate::from_der(int.certificate_der()).unwrap();
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_SHA_1,
            parameters: None,
        },
        issuer_name_hash: der::asn1::OctetString::new(sha1_of(
            &issuer.tbs_certificate.subject.to_der().unwrap(),
        ))
        .unwrap(),
        issuer_key_hash: der::asn1::OctetString::new(sha1_of(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        ))
        .unwrap(),
        serial_number: leaf.tbs_certificate.serial_number.clone(),
    };
    let request = |nonce: Option<Vec<u8>>| {
        x509_ocsp::OcspRequest {
            tbs_request: x509_ocsp::TbsRequest {
                version: x509_ocsp::Version::V1,
                requestor_name: None,
                request_list: vec![x509_ocsp::Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: nonce.map(|n| {
                    vec![x509_cert::ext::Extension {
                        extn_id: const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE,
                        critical: false,
                        extn_value: der::asn1::OctetString::new(
                            der::asn1::OctetString::new(n).unwrap().to_der().unwrap(),
                        )
                        .unwrap(),
                    }]
                }),
            },
            optional_signature: None,
        }
        .to_der()
        .unwrap()
    };
    let plain = request(None);
    let nonced = request(Some(vec![7; 16]));
    let first = rt.block_on(responder.respond(&plain));
    assert_eq!(
        first.der.get(4..7),
        Some(&[0x0a, 0x01, 0x00][..]),
        "a successful response"
    );
    let mut g = c.benchmark_group("ocsp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cached", |b| {
        b.to_async(&rt)
            .iter(|| async { responder.respond(&plain).await })
    });
    g.bench_function("nonce", |b| {
        b.to_async(&rt)
            .iter(|| async { responder.respond(&nonced).await })
    });
    g.finish();
}

fn sha1_of(bytes: &[u8]) -> Vec<u8> {
    use sha1::Digest as _;
    sha1::Sha1::digest(bytes).to_vec()
}

fn ssh(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = CaConfig {
        ssh: Some(hexon_ca::setup::SshConfig::default()),
        ..CaConfig::default()
    };
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([1; 32]))));
    let ca = hexon_ca::setup::open_ssh(&cfg, dir.path(), store)
        .unwrap()
        .unwrap();
    // A subject key as `ssh-keygen -t ed25519` writes it.
    let subject = hexon_core::Ed25519Signer::generate("subject").unwrap();
    let hexon_core::PublicKey::Ed25519(vk) = hexon_core::Signer::public_key(&subject) else {
        unreachable!()
    };
    let mut blob = Vec::new();
    for field in [&b"ssh-ed25519"[..], vk.as_bytes()] {
        blob.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        blob.extend_from_slice(field);
    }
    let key = hexon_ca::SshPublicKey::from_bytes(&blob).unwrap();
    let req = hexon_ca::UserCertRequest::new(key, "alice", &[]);
    let mut g = c.benchmark_group("ssh");
    g.throughput(Throughput::Elements(1));
    g.bench_function("user_ed25519", |b| {
        b.to_async(&rt)
            .iter(|| async { ca.issue_user(&req).await.unwrap() })
    });
    g.finish();
}

criterion_group!(benches, issue, ocsp, ssh);
criterion_main!(benches);
