//! Interop with an independent JWT implementation, PyJWT (pinned in
//! `tests/interop/requirements.txt`, installed by `scripts/install-test-deps`).
//!
//! 1. Tokens Hexon issues (EdDSA and ES256) are verified by PyJWT with the
//!    key taken from Hexon's JWKS document by `kid`, PyJWT checking iss, aud,
//!    exp, nbf and iat; PyJWT is shown to refuse a wrong audience, a wrong
//!    issuer, an expired token and a tampered one, so its acceptance means
//!    something.
//! 2. Tokens PyJWT signs (EdDSA and ES256, with a PKCS#8 PEM key made here)
//!    are verified by `JwtVerifier` and rebuild the expected `Identity`; PyJWT
//!    tokens signed by another key, with HS256 keyed by our public key, with
//!    `alg: none`, or with EdDSA under a P-256 `kid` are refused.
//!
//! Missing Python or PyJWT is a test failure, never a skip.

// The whole crate is test code: its helpers fail the test by panicking, which
// clippy's allow-*-in-tests settings only recognize inside `#[test]` fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexon_core::jwt::{IssueParams, JwtError, JwtIssuer, JwtVerifier};
use hexon_core::{
    Algorithm, Ed25519Signer, Identity, IdentityKind, KeySet, P256Signer, PublicKey, Signer,
    UnixTime,
};
use serde_json::{Value, json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/jwt_interop.py");
const ISS: &str = "https://hexon.example";
const AUD: &str = "billing";
const INSTALL: &str = "run scripts/install-test-deps (pip installs tests/interop/requirements.txt), \
                       or set PYTHON to an interpreter that has PyJWT[crypto]";

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Run the helper; missing Python or PyJWT fails the test with instructions.
fn run_script(mode: &str, stdin: &str) -> String {
    let py = python();
    let mut child = Command::new(&py)
        .arg(SCRIPT)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {py:?} ({e}): the JWT interop test needs Python 3; {INSTALL}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => String::from_utf8(out.stdout).unwrap(),
        Some(3) => panic!("PyJWT is not installed for {py:?}: {}", stderr.trim()),
        _ => panic!("{SCRIPT} {mode} failed ({}): {stderr}", out.status),
    }
}

/// Send a batch of requests to PyJWT, get one response per request.
fn pyjwt(requests: &[Value]) -> Vec<Value> {
    let check: Value = serde_json::from_str(&run_script("check", "")).unwrap();
    assert!(check["pyjwt"].is_string(), "{check}");
    let out = run_script("batch", &Value::from(requests.to_vec()).to_string());
    let responses: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(responses.len(), requests.len());
    responses
}

fn alice() -> Identity {
    Identity::builder("u-123", "alice")
        .email("alice@example.com")
        .display_name("Alice Liddell")
        .groups(["eng", "admins"])
        .auth("password", UnixTime::from_secs(1_700_000_000))
        .unwrap()
        .auth("webauthn", UnixTime::from_secs(1_700_000_100))
        .unwrap()
        .session("s-42")
        .audience(AUD)
        .build()
        .unwrap()
}

fn jwks_json(signers: &[&dyn Signer], now: UnixTime) -> Value {
    let mut ks = KeySet::new();
    for s in signers {
        ks.insert(s.key_id(), s.public_key(), None).unwrap();
    }
    serde_json::to_value(ks.to_jwks(now)).unwrap()
}

fn verify_req(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Value {
    json!({"op": "verify", "token": token, "jwks": jwks, "issuer": issuer, "audience": audience})
}

async fn check_pyjwt_verifies(signer: Arc<dyn Signer>) {
    let now = UnixTime::now();
    let issuer = JwtIssuer::new(signer.clone());
    let params = IssueParams::new(ISS, AUD, Duration::from_secs(300)).with_audience("reports");
    let token = issuer.issue(&alice(), &params, now).await.unwrap();
    let expired = issuer
        .issue(
            &alice(),
            &params,
            now.saturating_sub(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    // Change the subject, keep the signature.
    let (h, rest) = token.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
    let tampered = format!(
        "{h}.{}.{s}",
        URL_SAFE_NO_PAD.encode(payload.replace("u-123", "u-999"))
    );
    // The published JWKS holds another key too: PyJWT must pick ours by kid.
    let other = Ed25519Signer::generate("other").unwrap();
    let jwks = jwks_json(&[&*signer, &other], now);

    let r = pyjwt(&[
        verify_req(&token, &jwks, ISS, AUD),
        verify_req(&token, &jwks, ISS, "reports"),
        verify_req(&token, &jwks, ISS, "elsewhere"),
        verify_req(&token, &jwks, "https://evil.example", AUD),
        verify_req(&expired, &jwks, ISS, AUD),
        verify_req(&tampered, &jwks, ISS, AUD),
    ]);
    let alg = signer.algorithm().jws_name();
    assert_eq!(r[0]["ok"], true, "PyJWT refused our {alg} token: {}", r[0]);
    assert_eq!(
        r[0]["header"],
        json!({"alg": alg, "typ": "JWT", "kid": signer.key_id()})
    );
    let c = &r[0]["claims"];
    assert_eq!(c["iss"], ISS);
    assert_eq!(c["sub"], "u-123");
    assert_eq!(c["aud"], json!([AUD, "reports"]));
    assert_eq!(c["exp"], now.as_secs() + 300);
    assert_eq!(c["iat"], now.as_secs());
    assert_eq!(c["preferred_username"], "alice");
    assert_eq!(c["groups"], json!(["admins", "eng"]));
    assert_eq!(c["amr"], json!(["password", "webauthn"]));
    assert_eq!(c["auth_time"], 1_700_000_100);
    assert_eq!(c["hexon_kind"], "user");
    assert_eq!(
        c["hexon_auth"],
        json!([{"method": "password", "at": 1_700_000_000}, {"method": "webauthn", "at": 1_700_000_100}])
    );
    assert_eq!(c["jti"].as_str().unwrap().len(), 22);
    assert_eq!(r[1]["ok"], true, "{}", r[1]);
    let refused = |i: usize, error: &str| {
        assert_eq!(r[i]["ok"], false, "PyJWT accepted case {i}: {}", r[i]);
        let e = r[i]["error"].as_str().unwrap();
        assert!(e.starts_with(error), "case {i}: expected {error}, got {e}");
    };
    refused(2, "InvalidAudienceError");
    refused(3, "InvalidIssuerError");
    refused(4, "ExpiredSignatureError");
    refused(5, "InvalidSignatureError");
}

#[tokio::test]
async fn pyjwt_verifies_our_eddsa_tokens() {
    check_pyjwt_verifies(Arc::new(Ed25519Signer::generate("ed-1").unwrap())).await;
}

#[tokio::test]
async fn pyjwt_verifies_our_es256_tokens() {
    check_pyjwt_verifies(Arc::new(P256Signer::generate("ec-1").unwrap())).await;
}

/// A fresh Ed25519 key and its PKCS#8 PEM as Hexon exports it. Python
/// `cryptography` loading it is part of what this test proves.
fn ed25519_with_pem(kid: &str) -> (Ed25519Signer, String) {
    let signer = Ed25519Signer::generate(kid).unwrap();
    let pem = signer.to_pkcs8_pem().unwrap().to_string();
    (signer, pem)
}

fn sign_req(alg: &str, kid: &str, claims: &Value, key: (&str, Value)) -> Value {
    let mut r = json!({"op": "sign", "alg": alg, "kid": kid, "claims": claims});
    r.as_object_mut().unwrap().insert(key.0.to_owned(), key.1);
    r
}

fn check_we_verify_pyjwt(alg: Algorithm, pem: &str, kid: &str, public: PublicKey) {
    let now = UnixTime::now();
    let jws = alg.jws_name();
    let claims = json!({
        "iss": ISS, "sub": "svc-7", "aud": [AUD, "reports"],
        "iat": now.as_secs(), "nbf": now.as_secs(), "exp": now.as_secs() + 120,
        "jti": "pyjwt-1", "preferred_username": "ci-bot", "email": "ci@example.com",
        "groups": ["deploy", "ci"], "sid": "s-9", "hexon_kind": "service",
        "amr": ["api_key"], "auth_time": now.as_secs() - 5,
        "hexon_auth": [{"method": "api_key", "at": now.as_secs() - 5}],
    });
    let (ed_for_confusion, ed_pem) = ed25519_with_pem("ed-x");
    let PublicKey::Ed25519(ed_pub) = ed_for_confusion.public_key() else {
        unreachable!()
    };
    let r = pyjwt(&[
        sign_req(jws, kid, &claims, ("key_pem", json!(pem))),
        sign_req(jws, kid, &claims, ("generate", json!(true))),
        sign_req(
            "HS256",
            "ed-x",
            &claims,
            (
                "hmac_secret_b64url",
                json!(URL_SAFE_NO_PAD.encode(ed_pub.as_bytes())),
            ),
        ),
        sign_req("none", kid, &claims, ("generate", json!(false))),
        // An EdDSA token that names a P-256 key (or, for the EdDSA case, an
        // EdDSA token by another Ed25519 key under the P-256 key's kid).
        sign_req(
            "EdDSA",
            "ec-x",
            &claims,
            ("key_pem", json!(ed_pem.as_str())),
        ),
    ]);
    let token = |i: usize| r[i]["token"].as_str().unwrap().to_owned();

    let mut keys = KeySet::new();
    keys.insert(kid, public, None).unwrap();
    keys.insert("ed-x", ed_for_confusion.public_key(), None)
        .unwrap();
    keys.insert(
        "ec-x",
        P256Signer::generate("ec-x").unwrap().public_key(),
        None,
    )
    .unwrap();
    let verifier = JwtVerifier::new(keys, ISS, "reports");

    let v = verifier
        .verify(&token(0), now)
        .unwrap_or_else(|e| panic!("refused PyJWT's {jws} token: {e}"));
    assert_eq!(v.alg, alg);
    assert_eq!(v.kid, kid);
    assert_eq!(v.jti(), "pyjwt-1");
    let expected = Identity::builder("svc-7", "ci-bot")
        .email("ci@example.com")
        .groups(["ci", "deploy"])
        .kind(IdentityKind::Service)
        .auth("api_key", now.saturating_sub(Duration::from_secs(5)))
        .unwrap()
        .session("s-9")
        .audience("reports")
        .build()
        .unwrap();
    assert_eq!(v.identity, expected);
    // Our claim checks still apply to PyJWT's tokens.
    assert!(matches!(
        verifier.verify(&token(0), now.saturating_add(Duration::from_secs(181))),
        Err(JwtError::Expired { .. })
    ));
    assert!(matches!(
        JwtVerifier::new(verifier.keys().clone(), ISS, "elsewhere").verify(&token(0), now),
        Err(JwtError::WrongAudience)
    ));

    assert!(matches!(
        verifier.verify(&token(1), now),
        Err(JwtError::BadSignature)
    ));
    assert!(matches!(
        verifier.verify(&token(2), now),
        Err(JwtError::UnsupportedAlgorithm { alg }) if alg == "HS256"
    ));
    assert!(matches!(
        verifier.verify(&token(3), now),
        Err(JwtError::UnsupportedAlgorithm { alg }) if alg == "none"
    ));
    assert!(matches!(
        verifier.verify(&token(4), now),
        Err(JwtError::AlgorithmMismatch {
            alg: Algorithm::Ed25519,
            key: Algorithm::EcdsaP256Sha256
        })
    ));
}

#[test]
fn we_verify_pyjwt_eddsa_tokens() {
    let (k, pem) = ed25519_with_pem("py-ed");
    check_we_verify_pyjwt(Algorithm::Ed25519, &pem, "py-ed", k.public_key());
}

#[test]
fn we_verify_pyjwt_es256_tokens() {
    let k = P256Signer::generate("py-ec").unwrap();
    let pem = k.to_pkcs8_pem().unwrap();
    check_we_verify_pyjwt(Algorithm::EcdsaP256Sha256, &pem, "py-ec", k.public_key());
}
