//! The OCSP responder and the HTTP endpoints, queried by `openssl ocsp`
//! and `curl`: good, revoked, unknown; nonces; delegated and direct
//! signing; hostile requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;
use hexon_ca::{OcspSettings, ResponderSigning, RevocationReason};

async fn issue(t: &TestCa, stem: &str) -> (String, String) {
    issue_server(t, stem).await
}

fn ocsp_query(t: &TestCa, url: &str, cert: &str, extra: &[&str]) -> (bool, String) {
    let int = t.path("tls-server.crt");
    let root = t.path("root.crt");
    let mut args = vec![
        "ocsp",
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        cert,
        "-url",
        url,
        "-CAfile",
        root.to_str().unwrap(),
        "-resp_text",
    ];
    args.extend_from_slice(extra);
    openssl(&args)
}

async fn statuses(signing: ResponderSigning) {
    let t = test_ca(&config(Some("http://ca.example.test/ca"))).await;
    let url = format!(
        "{}/ocsp",
        serve(
            t.ca.clone(),
            OcspSettings {
                signing,
                ..OcspSettings::default()
            }
        )
        .await
    );
    let (good, _) = issue(&t, "good").await;
    let (bad, bad_serial) = issue(&t, "bad").await;
    t.ca.revoke(
        "tls-server",
        &bad_serial,
        RevocationReason::KeyCompromise,
        None,
    )
    .await
    .unwrap();

    let (ok, out) = ocsp_query(&t, &url, &good, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(&format!("{good}: good")), "{out}");
    assert!(out.contains("Next Update"), "{out}");
    if signing == ResponderSigning::Delegated {
        assert!(out.contains("OCSP responder for tls-server"), "{out}");
        assert!(
            out.contains("OCSP Signing") && out.contains("OCSP No Check"),
            "{out}"
        );
    }

    let (ok, out) = ocsp_query(&t, &url, &bad, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(&format!("{bad}: revoked")), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");

    // A certificate the store never saw, from the same issuer: unknown.
    let (ok, out) = ocsp_query(&t, &url, &good, &["-serial", "0x0123456789abcdef"]);
    assert!(ok, "{out}");
    assert!(out.contains(": unknown"), "{out}");

    // The nonce is echoed (openssl checks it and complains otherwise).
    assert!(!out.contains("WARNING: no nonce in response"), "{out}");
    let (ok, out) = ocsp_query(&t, &url, &good, &["-no_nonce"]);
    assert!(ok && out.contains(": good"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_ocsp_sees_good_revoked_and_unknown_with_a_delegated_responder() {
    statuses(ResponderSigning::Delegated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_ocsp_sees_good_revoked_and_unknown_signed_by_the_authority() {
    statuses(ResponderSigning::Authority).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_cached_answer_at_once_and_get_works() {
    let t = test_ca(&config(None)).await;
    let base = serve(t.ca.clone(), OcspSettings::default()).await;
    let url = format!("{base}/ocsp");
    let (cert, serial) = issue(&t, "c").await;
    let (ok, out) = ocsp_query(&t, &url, &cert, &["-no_nonce"]);
    assert!(ok && out.contains(": good"), "{out}");
    t.ca.revoke("tls-server", &serial, RevocationReason::Superseded, None)
        .await
        .unwrap();
    let (ok, out) = ocsp_query(&t, &url, &cert, &["-no_nonce"]);
    assert!(
        ok && out.contains(": revoked"),
        "stale answer after revocation: {out}"
    );

    // GET form (RFC 6960 A.1), as curl fetches it; cacheable.
    let d = t.dir.path();
    let req = d.join("req.der");
    let int = t.path("tls-server.crt");
    let (ok, out) = openssl(&[
        "ocsp",
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        &cert,
        "-no_nonce",
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap());
    let enc = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = d.join("resp.der");
    let curl = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            resp.to_str().unwrap(),
            &format!("{url}/{enc}"),
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&curl.stdout);
    assert!(headers.contains("application/ocsp-response"), "{headers}");
    assert!(headers.contains("max-age="), "{headers}");
    let root = t.path("root.crt");
    let (ok, out) = openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        &cert,
        "-CAfile",
        root.to_str().unwrap(),
    ]);
    assert!(ok && out.contains(": revoked"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_ocsp_error_statuses() {
    let t = test_ca(&config(None)).await;
    let responder = hexon_ca::OcspResponder::new(t.ca.clone(), OcspSettings::default());
    // OCSPResponseStatus is the ENUMERATED at offset 4: 30 03 0a 01 <status>.
    let status = |der: &[u8]| (der.len(), der[4]);
    assert_eq!(
        status(&responder.respond(b"").await.der),
        (5, 1),
        "empty: malformedRequest"
    );
    assert_eq!(
        status(&responder.respond(b"\x30\x80garbage").await.der),
        (5, 1)
    );
    assert_eq!(
        status(&responder.respond(&vec![0x30; 9000]).await.der),
        (5, 1),
        "oversized"
    );
    // A request about another CA's certificate: unauthorized.
    let other = test_ca(&config(None)).await;
    let (cert, _) = issue(&other, "x").await;
    let req = t.dir.path().join("other.der");
    let int = other.path("tls-server.crt");
    let (ok, out) = openssl(&[
        "ocsp",
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        &cert,
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let der = std::fs::read(&req).unwrap();
    assert_eq!(
        status(&responder.respond(&der).await.der),
        (5, 6),
        "unauthorized"
    );
    // Truncations of a valid request never panic and are malformed.
    let (cert, _) = issue(&t, "y").await;
    let int = t.path("tls-server.crt");
    let (ok, _) = openssl(&[
        "ocsp",
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        &cert,
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(ok);
    let der = std::fs::read(&req).unwrap();
    use der::Decode as _;
    let whole = x509_ocsp::OcspResponse::from_der(&responder.respond(&der).await.der).unwrap();
    assert_eq!(
        whole.response_status,
        x509_ocsp::OcspResponseStatus::Successful,
        "the whole request succeeds"
    );
    for cut in 0..der.len() {
        assert_eq!(
            status(&responder.respond(&der[..cut]).await.der),
            (5, 1),
            "cut at {cut}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_serve_crls_certificates_and_bundles() {
    let t = test_ca(&config(None)).await;
    let base = serve(t.ca.clone(), OcspSettings::default()).await;
    let get = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "-",
                "-w",
                "\n%{http_code} %{content_type}",
                &format!("{base}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let crl = get("/crl/tls-server.crl");
    assert!(crl.ends_with("200 application/pkix-crl"), "{crl}");
    assert!(get("/crl/nope.crl").ends_with("404 text/plain; charset=utf-8"));
    assert!(get("/certs/root.crt").ends_with("200 application/pkix-cert"));
    let pem = get("/certs/spiffe.pem");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(
        get("/bundle.pem").split('\n').next(),
        Some("-----BEGIN CERTIFICATE-----")
    );
    let bundle = get("/spiffe/bundle");
    let json: serde_json::Value =
        serde_json::from_str(bundle.rsplit_once('\n').unwrap().0).unwrap();
    assert_eq!(json["keys"][0]["use"], "x509-svid");
    assert_eq!(json["keys"][0]["kty"], "EC");
    assert_eq!(json["trust_domain"], "example.test");
    assert!(get("/nothing").ends_with("404 text/plain; charset=utf-8"));
}
