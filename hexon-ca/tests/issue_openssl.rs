//! Issuance checked by openssl: the chain verifies, the extensions are
//! what the profile says, refused requests say why, CRLs verify and list
//! revoked serials.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hexon_ca::{CaError, IssueRequest, Profile, RevocationReason, check_csr};

#[tokio::test]
async fn tls_server_certificate_verifies_with_openssl_and_says_what_the_profile_says() {
    let t = test_ca(&config(Some("http://ca.example.test/ca"))).await;
    let d = t.dir.path();
    let (_, csr) = openssl_csr(
        d,
        "leaf",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "/CN=www.example.test",
        "DNS:www.example.test,DNS:api.example.test,IP:127.0.0.1",
    );
    let checked = check_csr(&csr).unwrap();
    assert_eq!(checked.names.len(), 3, "{:?}", checked.names);
    let mut req = IssueRequest::from_csr(Profile::TlsServer, checked);
    req.requester = Some("alice".into());
    let issued = t.ca.issue(&req).await.unwrap();
    assert_eq!(issued.issuer, "tls-server");
    assert_eq!(issued.serial.len(), 32);

    let leaf = write(d, "leaf.pem", &issued.chain_pem);
    let root = t.path("root.crt");
    let int = t.path("tls-server.crt");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        int.to_str().unwrap(),
        "-purpose",
        "sslserver",
        &leaf,
    ]);
    assert!(ok, "openssl verify: {out}");
    // Not good for client authentication.
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        int.to_str().unwrap(),
        "-purpose",
        "sslclient",
        &leaf,
    ]);
    assert!(!ok, "a server certificate verified for clients: {out}");

    let (ok, text) = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
    assert!(ok, "{text}");
    for want in [
        "TLS Web Server Authentication",
        "Digital Signature",
        "CA:FALSE",
        "DNS:www.example.test, DNS:api.example.test, IP Address:127.0.0.1",
        "OCSP - URI:http://ca.example.test/ca/ocsp",
        "CA Issuers - URI:http://ca.example.test/ca/certs/tls-server.crt",
        "URI:http://ca.example.test/ca/crl/tls-server.crl",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("Key Encipherment"),
        "EC key with key encipherment:\n{text}"
    );
    let (_, int_text) = openssl(&["x509", "-in", int.to_str().unwrap(), "-noout", "-text"]);
    assert!(int_text.contains("CA:TRUE, pathlen:0"), "{int_text}");
    assert!(
        int_text.contains("Certificate Sign, CRL Sign"),
        "{int_text}"
    );

    // Recorded.
    let rec = t.ca.find(&issued.serial).await.unwrap().expect("recorded");
    assert_eq!(rec.requester.as_deref(), Some("alice"));
    assert_eq!(rec.der, issued.der);
    assert_eq!(
        rec.sans,
        [
            "dns:www.example.test",
            "dns:api.example.test",
            "ip:127.0.0.1"
        ]
    );
}

#[tokio::test]
async fn every_key_kind_and_profile_verifies() {
    let t = test_ca(&config(None)).await;
    let d = t.dir.path();
    let root = t.path("root.crt");
    type Case<'a> = (&'a str, &'a [&'a str], Profile, &'a str, &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "rsa",
            &["rsa:2048"],
            Profile::TlsServer,
            "/CN=rsa.example.test",
            "DNS:rsa.example.test",
            "sslserver",
        ),
        (
            "p384",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Profile::TlsServer,
            "/CN=p384.example.test",
            "",
            "sslserver",
        ),
        (
            "ed",
            &["ed25519"],
            Profile::TlsClient,
            "/CN=ed.example.test",
            "DNS:ed.example.test,email:ed@example.test",
            "sslclient",
        ),
        (
            "svid",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Profile::Spiffe,
            "/O=x",
            "URI:spiffe://example.test/ns/prod/sa/api",
            "sslclient",
        ),
    ];
    for (stem, key, profile, subj, sans, purpose) in cases {
        let (_, csr) = openssl_csr(d, stem, key, subj, sans);
        let issued =
            t.ca.issue(&IssueRequest::from_csr(*profile, check_csr(&csr).unwrap()))
                .await
                .unwrap();
        let leaf = write(d, &format!("{stem}.pem"), &issued.chain_pem);
        let int = t.path(&format!("{}.crt", profile.as_str()));
        let (ok, out) = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            int.to_str().unwrap(),
            "-purpose",
            purpose,
            &leaf,
        ]);
        assert!(ok, "{stem}: {out}");
        let (_, text) = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
        if *stem == "rsa" {
            assert!(
                text.contains("Digital Signature, Key Encipherment"),
                "{text}"
            );
        }
        if *stem == "svid" {
            assert!(
                text.contains("URI:spiffe://example.test/ns/prod/sa/api"),
                "{text}"
            );
            assert!(
                text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
                "{text}"
            );
            assert!(!text.contains("Subject: CN"), "{text}");
        }
    }
}

#[tokio::test]
async fn refusals_say_why_and_issue_nothing() {
    let t = test_ca(&config(None)).await;
    let d = t.dir.path();
    let refuse = |r: Result<hexon_ca::Issued, CaError>, want: &str| match r {
        Err(CaError::Refused(why)) | Err(CaError::BadCsr(why)) => {
            assert!(why.contains(want), "{why:?} lacks {want:?}")
        }
        other => panic!("expected a refusal with {want:?}, got {other:?}"),
    };
    let p256 = P256;
    type Case<'a> = (&'a str, &'a str, &'a str, Profile, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "/CN=www.other.test",
            "DNS:www.other.test",
            "a",
            Profile::TlsServer,
            "outside the names",
        ),
        // A suffix match is on a label boundary.
        (
            "/CN=evilexample.test",
            "DNS:evilexample.test",
            "b",
            Profile::TlsServer,
            "outside the names",
        ),
        (
            "/CN=x",
            "IP:10.1.2.3",
            "c",
            Profile::TlsServer,
            "outside the networks",
        ),
        (
            "/CN=x",
            "URI:spiffe://other.test/a",
            "d",
            Profile::Spiffe,
            "trust domain",
        ),
        (
            "/O=x",
            "URI:spiffe://example.test/a,URI:spiffe://example.test/b",
            "e",
            Profile::Spiffe,
            "exactly one",
        ),
        (
            "/CN=x",
            "email:a@example.test",
            "f",
            Profile::TlsServer,
            "may not name email",
        ),
    ];
    for (subj, sans, stem, profile, want) in cases {
        let (_, csr) = openssl_csr(d, stem, &p256, subj, sans);
        refuse(issue_csr(&t, *profile, &csr).await, want);
    }
    let (_, csr) = openssl_csr(d, "g", &["rsa:1024"], "/CN=www.example.test", "");
    refuse(check_csr(&csr).map(|_| unreachable!()), "2048 to 8192");
    let (_, csr) = openssl_csr(
        d,
        "h",
        &["ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        "/CN=www.example.test",
        "",
    );
    refuse(check_csr(&csr).map(|_| unreachable!()), "P-256 and P-384");
    // A tampered CSR: flip a byte of the name.
    let (_, mut csr) = openssl_csr(d, "i", &p256, "/CN=www.example.test", "");
    let at = csr.windows(3).position(|w| w == b"www").unwrap();
    csr[at] = b'v';
    refuse(check_csr(&csr).map(|_| unreachable!()), "does not verify");
    refuse(
        check_csr(&csr[..csr.len() - 3]).map(|_| unreachable!()),
        "not a PKCS #10",
    );
    refuse(
        check_csr(&vec![0x30; 20_000]).map(|_| unreachable!()),
        "larger than",
    );
}

#[tokio::test]
async fn crl_verifies_with_openssl_and_lists_revoked_certificates() {
    let t = test_ca(&config(Some("http://ca.example.test/ca"))).await;
    let d = t.dir.path();
    let mut serials = Vec::new();
    for i in 0..3 {
        let (path, serial) = issue_server(&t, &format!("c{i}")).await;
        assert!(path.ends_with(&format!("c{i}.pem")));
        serials.push(serial);
    }
    let before = t.ca.crl("tls-server").await.unwrap();
    assert!(
        t.ca.revoke(
            "tls-server",
            &serials[1],
            RevocationReason::KeyCompromise,
            Some("admin")
        )
        .await
        .unwrap()
    );
    assert!(
        !t.ca
            .revoke(
                "tls-server",
                &serials[1],
                RevocationReason::Superseded,
                None
            )
            .await
            .unwrap(),
        "first revocation stands"
    );
    assert!(matches!(
        t.ca.revoke("tls-server", "abcd", RevocationReason::Unspecified, None)
            .await,
        Err(CaError::Refused(_))
    ));
    let crl = t.ca.crl("tls-server").await.unwrap();
    let crl_path = write(d, "int.crl", &crl.der);
    let int = t.path("tls-server.crt");
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl_path,
        "-CAfile",
        int.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    assert!(
        text.to_lowercase().contains(&serials[1]),
        "revoked serial missing:\n{text}"
    );
    assert!(!text.to_lowercase().contains(&serials[0]), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    // CRL numbers grow.
    let number = |der: &[u8]| {
        let p = write(d, "n.crl", der);
        let (_, t) = openssl(&["crl", "-inform", "DER", "-in", &p, "-noout", "-crlnumber"]);
        u128::from_str_radix(
            t.trim()
                .trim_start_matches("crlNumber=0x")
                .trim_start_matches("crlNumber="),
            16,
        )
        .unwrap()
    };
    assert!(number(&crl.der) > number(&before.der));
    // openssl verify with CRL checking: the revoked one fails, another passes.
    let pem_crl = write(d, "int.crl.pem", hexon_ca::pem("X509 CRL", &crl.der));
    let root_crl = t.ca.crl("root").await.unwrap();
    let root_crl_pem = write(d, "root.crl.pem", hexon_ca::pem("X509 CRL", &root_crl.der));
    let root = t.path("root.crt");
    let check = |leaf: &str| {
        openssl(&[
            "verify",
            "-crl_check_all",
            "-CRLfile",
            &pem_crl,
            "-CRLfile",
            &root_crl_pem,
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            int.to_str().unwrap(),
            d.join(leaf).to_str().unwrap(),
        ])
    };
    let (ok, out) = check("c0.pem");
    assert!(ok, "{out}");
    let (ok, out) = check("c1.pem");
    assert!(!ok && out.contains("revoked"), "{out}");
}

#[tokio::test]
async fn hierarchy_is_reopened_from_its_directory() {
    let cfg = config(None);
    let t = test_ca(&cfg).await;
    let root_before = std::fs::read(t.path("root.crt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.path("root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let store = std::sync::Arc::new(hexon_core::store::MemoryStore::new(std::sync::Arc::new(
        hexon_core::store::SecretKeys::new([1; 32]),
    )));
    let again = hexon_ca::setup::open(&cfg, t.dir.path(), store.clone())
        .await
        .unwrap();
    assert_eq!(
        again.root().certificate_der(),
        t.ca.root().certificate_der()
    );
    assert_eq!(std::fs::read(t.path("root.crt")).unwrap(), root_before);
    // The intermediates the root signed are in the store (its CRL and OCSP
    // answer for them).
    let int = std::fs::read_to_string(t.path("tls-server.crt")).unwrap();
    let der = rustls_pemfile::certs(&mut int.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = hexon_ca::serial_hex(x.raw_serial());
    assert_eq!(
        t.ca.status("root", &serial).await.unwrap(),
        hexon_ca::Status::Good
    );
    // A certificate without its key is refused with what to do.
    std::fs::remove_file(t.path("spiffe.key")).unwrap();
    let err = hexon_ca::setup::open(&cfg, t.dir.path(), store)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the key is missing but spiffe.crt exists"),
        "{err}"
    );
}
