//! Interop: Hexon's RFC 9421 identity signatures against an independent
//! implementation, the Python `http-message-signatures` package.
//!
//! Needs Python 3 with the packages of `tests/interop/requirements.txt`
//! (`scripts/install-test-deps`). Missing tools fail the test: CI must
//! never pass without having run it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hexon_core::httpsig::{Binding, HttpSigner, REQUIRED_COMPONENTS, Verifier, content_digest};
use hexon_core::{Ed25519Signer, Identity, KeySet, P256Signer, Signer, UnixTime};
use http::request::Parts;
use http::{HeaderValue, Request};
use serde_json::{Value, json};

fn python(input: &Value) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/httpsig_interop.py"
    );
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {py}: {e}; install Python 3 and run scripts/install-test-deps")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python interop script failed (run scripts/install-test-deps):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn identity() -> Identity {
    Identity::builder("u-42", "zoë, \"admin\"")
        .email("zoe@example.com")
        .groups(["eng", "on-call; pager", "naïve"])
        .auth("webauthn", UnixTime::from_secs(1_700_000_000))
        .unwrap()
        .session("s-9")
        .build()
        .unwrap()
}

fn request() -> Parts {
    Request::post("/reports/q3?year=2026&x=%20y")
        .header("host", "app.example.com")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn wire(p: &Parts) -> Value {
    let headers: Vec<Value> = p
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() != "host")
        .map(|(n, v)| json!([n.as_str(), v.to_str().unwrap()]))
        .collect();
    json!({
        "method": p.method.as_str(),
        "url": format!("http://app.example.com{}", p.uri.path_and_query().unwrap()),
        "headers": headers,
    })
}

fn jwk(signer: &dyn Signer) -> Value {
    serde_json::to_value(signer.public_key().to_jwk(signer.key_id())).unwrap()
}

fn keyset(signer: &dyn Signer) -> KeySet {
    let mut k = KeySet::new();
    k.insert(signer.key_id(), signer.public_key(), None)
        .unwrap();
    k
}

fn signers() -> Vec<Arc<dyn Signer>> {
    vec![
        Arc::new(Ed25519Signer::generate("gw-ed").unwrap()),
        Arc::new(P256Signer::generate("gw-ec").unwrap()),
    ]
}

#[test]
fn python_verifies_what_hexon_signs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for key in signers() {
        let signer = HttpSigner::new(key.clone());
        for binding in [Binding::NONE, Binding::REQUEST, Binding::REQUEST_AND_BODY] {
            let mut p = request();
            p.headers
                .insert("content-digest", content_digest(b"{\"q\": 3}"));
            rt.block_on(signer.sign(&identity(), "reports", binding, &mut p, UnixTime::now()))
                .unwrap();
            let mut req = wire(&p);
            req["mode"] = "verify".into();
            req["jwk"] = jwk(&*key);
            req["require"] = json!(REQUIRED_COMPONENTS);
            let out = python(&req);
            assert_eq!(out["ok"], true, "{} {binding:?}: {out}", key.key_id());
            assert_eq!(out["label"], "hexon");
            assert_eq!(out["params"]["tag"], "hexon");
            assert_eq!(out["params"]["keyid"], key.key_id());
            assert_eq!(out["params"]["alg"], key.algorithm().http_sig_name());
            if binding.request {
                assert!(out["covered"].to_string().contains("@query"), "{out}");
            }

            // The same library refuses the request once an identity header changes.
            let mut req = req.clone();
            for h in req["headers"].as_array_mut().unwrap() {
                if h[0] == "hexon-groups" {
                    h[1] = "eng, root".into();
                }
            }
            let out = python(&req);
            assert_eq!(out["ok"], false, "tampered request must fail: {out}");
        }
    }
}

#[test]
fn hexon_verifies_what_python_signs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now = UnixTime::now();
    let ed_seed = [5u8; 32];
    let ed = Arc::new(Ed25519Signer::from_seed("py-ed", &ed_seed).unwrap());
    let ec = Arc::new(P256Signer::generate("py-ec").unwrap());
    let cases: Vec<(Arc<dyn Signer>, Value)> = vec![
        (
            ed.clone(),
            json!({"seed_b64": URL_SAFE_NO_PAD.encode(ed_seed)}),
        ),
        (
            ec.clone(),
            json!({"private_pem": ec.to_pkcs8_pem().unwrap().as_str()}),
        ),
    ];
    for (key, secret) in cases {
        for bound in [false, true] {
            // Identity headers as Hexon writes them; the signature comes from Python.
            let mut p = request();
            let helper = HttpSigner::new(key.clone());
            rt.block_on(helper.sign(&identity(), "reports", Binding::NONE, &mut p, now))
                .unwrap();
            p.headers.remove("signature");
            p.headers.remove("signature-input");
            let mut components: Vec<String> = p
                .headers
                .keys()
                .map(|k| k.as_str().to_owned())
                .filter(|k| k.starts_with("hexon-"))
                .collect();
            components.push("@authority".into());
            if bound {
                components.extend(["@method", "@path", "@query"].map(String::from));
            }
            let mut req = wire(&p);
            req["mode"] = "sign".into();
            req["jwk"] = jwk(&*key);
            req["components"] = json!(components);
            req["created"] = now.as_secs().into();
            req["expires"] = (now.as_secs() + 60).into();
            req["tag"] = "hexon".into();
            if bound {
                req["nonce"] = "n-0123456789".into();
            }
            for (k, v) in secret.as_object().unwrap() {
                req[k] = v.clone();
            }
            let out = python(&req);
            p.headers.insert(
                "signature-input",
                HeaderValue::from_str(out["signature_input"].as_str().unwrap()).unwrap(),
            );
            p.headers.insert(
                "signature",
                HeaderValue::from_str(out["signature"].as_str().unwrap()).unwrap(),
            );
            let verifier =
                Verifier::new(keyset(&*key), ["app.example.com"]).require_request_binding(bound);
            let v = verifier
                .verify_parts(&p, now)
                .unwrap_or_else(|e| panic!("{} bound={bound}: {e}: {out}", key.key_id()));
            assert_eq!(v.identity, identity());
            assert_eq!(&*v.route, "reports");
            assert_eq!(v.request_bound, bound);
            if bound {
                assert_eq!(v.nonce.as_deref(), Some("n-0123456789"));
                let mut moved = p.clone();
                moved.uri = "/reports/q4?year=2026&x=%20y".parse().unwrap();
                assert!(verifier.verify_parts(&moved, now).is_err());
            }
        }
    }
}

/// `examples/verify-python` (the documented non-Rust backend) accepts what
/// Hexon signs, decodes the identity exactly, and refuses tampering.
#[test]
fn python_backend_example_reads_the_identity() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("gw-ex").unwrap());
    let jwks = serde_json::to_string(&keyset(&*key).to_jwks(UnixTime::now())).unwrap();
    let dir = std::env::temp_dir().join(format!("hexon-verify-python-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/verify-python/verify.py"
    );
    let check = |req: &Value| -> Value {
        let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&py)
            .arg(script)
            .arg(&jwks_path)
            .arg("--check")
            .arg("app.example.com")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "run scripts/install-test-deps");
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let mut p = request();
    rt.block_on(HttpSigner::new(key).sign(
        &identity(),
        "reports",
        Binding::REQUEST,
        &mut p,
        UnixTime::now(),
    ))
    .unwrap();
    let out = check(&wire(&p));
    assert_eq!(out["ok"], true, "{out}");
    let who = &out["identity"];
    assert_eq!(who["username"], "zoë, \"admin\"");
    assert_eq!(who["subject"], "u-42");
    assert_eq!(who["groups"], json!(["eng", "naïve", "on-call; pager"]));
    assert_eq!(who["auth"]["webauthn"], 1_700_000_000);
    assert_eq!(who["route"], "reports");

    let mut forged = wire(&p);
    forged["headers"]
        .as_array_mut()
        .unwrap()
        .push(json!(["hexon-admin", "yes"]));
    assert_eq!(check(&forged)["ok"], false);
    let mut moved = wire(&p);
    moved["url"] = "http://app.example.com/admin".into();
    assert_eq!(check(&moved)["ok"], false);
    let mut elsewhere = wire(&p);
    elsewhere["url"] = "http://other.example.com/reports/q3?year=2026&x=%20y".into();
    let out = check(&elsewhere);
    assert_eq!(out["ok"], false);
    assert!(
        out["error"].as_str().unwrap().contains("another authority"),
        "{out}"
    );
    let mut underscored = wire(&p);
    underscored["headers"]
        .as_array_mut()
        .unwrap()
        .push(json!(["hexon_groups", "root"]));
    assert_eq!(check(&underscored)["ok"], false);
    std::fs::remove_dir_all(&dir).ok();
}
