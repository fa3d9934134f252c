//! The ACME server's protocol rules, with a small JWS client of the test's
//! own: hostile and malformed requests get the right ACME errors and issue
//! nothing; key rollover, external account binding, deactivation,
//! revocation with the certificate's key, renewal information.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use common::*;
use hexon_ca::acme::AcmeServer;
use http_body_util::{BodyExt, Full};
use p256::ecdsa::{Signature, SigningKey, signature::Signer as _};
use serde_json::{Value, json};

struct Key(SigningKey);

impl Key {
    fn new() -> Self {
        Key(SigningKey::random(&mut rand_core::OsRng))
    }
    fn jwk(&self) -> Value {
        let p = self.0.verifying_key().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(p.x().unwrap()), "y": B64.encode(p.y().unwrap())})
    }
    fn thumbprint(&self) -> String {
        use sha2::Digest as _;
        let j = self.jwk();
        let canon = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        B64.encode(sha2::Sha256::digest(canon))
    }
    fn sign(&self, protected: &Value, payload: &str) -> Value {
        let p = B64.encode(protected.to_string());
        let sig: Signature = self.0.sign(format!("{p}.{payload}").as_bytes());
        json!({"protected": p, "payload": payload, "signature": B64.encode(sig.to_bytes())})
    }
}

struct Resp {
    status: u16,
    body: Value,
    nonce: Option<String>,
    location: Option<String>,
    headers: http::HeaderMap,
}

struct Client {
    acme: Arc<AcmeServer>,
    base: String,
}

impl Client {
    fn new(h: &AcmeHarness) -> Self {
        Client {
            acme: h.acme.clone(),
            base: h.directory.trim_end_matches("/directory").to_owned(),
        }
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    async fn raw(&self, method: &str, url: &str, ct: &str, body: Vec<u8>) -> Resp {
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self
            .acme
            .call(req, Some("192.0.2.1".parse().unwrap()))
            .await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            body: serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            nonce: headers
                .get("replay-nonce")
                .map(|v| v.to_str().unwrap().to_owned()),
            location: headers
                .get("location")
                .map(|v| v.to_str().unwrap().to_owned()),
            headers,
        }
    }
    async fn nonce(&self) -> String {
        self.raw("HEAD", &self.url("/new-nonce"), "", vec![])
            .await
            .nonce
            .unwrap()
    }
    /// POST `payload` (None: POST-as-GET) signed by `key`, as `kid` or with its jwk.
    async fn post(&self, url: &str, key: &Key, kid: Option<&str>, payload: Option<Value>) -> Resp {
        let mut protected = json!({"alg": "ES256", "nonce": self.nonce().await, "url": url});
        match kid {
            Some(k) => protected["kid"] = k.into(),
            None => protected["jwk"] = key.jwk(),
        }
        let payload = payload
            .map(|p| B64.encode(p.to_string()))
            .unwrap_or_default();
        self.send(url, &key.sign(&protected, &payload)).await
    }
    async fn send(&self, url: &str, jws: &Value) -> Resp {
        self.raw(
            "POST",
            url,
            "application/jose+json",
            jws.to_string().into_bytes(),
        )
        .await
    }
    async fn account(&self, key: &Key) -> String {
        let r = self
            .post(
                &self.url("/new-account"),
                key,
                None,
                Some(json!({"contact": ["mailto:a@example.test"]})),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.body);
        r.location.unwrap()
    }
}

fn problem(r: &Resp, kind: &str) {
    assert_eq!(
        r.body["type"],
        format!("urn:ietf:params:acme:error:{kind}"),
        "status {} body {}",
        r.status,
        r.body
    );
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert!(r.nonce.is_some(), "every error carries a fresh nonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_nonces_and_common_headers() {
    let h = acme_harness(|c| c.terms_of_service = Some("https://example.test/tos".into())).await;
    let c = Client::new(&h);
    let d = c.raw("GET", &c.url("/directory"), "", vec![]).await;
    assert_eq!(d.status, 200);
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
        "renewalInfo",
    ] {
        assert!(d.body[k].as_str().unwrap().starts_with(&c.base), "{k}");
    }
    assert_eq!(d.body["meta"]["termsOfService"], "https://example.test/tos");
    let head = c.raw("HEAD", &c.url("/new-nonce"), "", vec![]).await;
    assert_eq!(head.status, 200);
    let get = c.raw("GET", &c.url("/new-nonce"), "", vec![]).await;
    assert_eq!(get.status, 204);
    assert_ne!(head.nonce, get.nonce);
    assert_eq!(get.headers.get("cache-control").unwrap(), "no-store");
    assert!(
        get.headers
            .get("link")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("rel=\"index\"")
    );
    // Terms of service must be agreed.
    let k = Key::new();
    let r = c
        .post(&c.url("/new-account"), &k, None, Some(json!({})))
        .await;
    problem(&r, "malformed");
    let r = c
        .post(
            &c.url("/new-account"),
            &k,
            None,
            Some(json!({"termsOfServiceAgreed": true})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_acme_errors_and_change_nothing() {
    let h = acme_harness(|_| {}).await;
    let c = Client::new(&h);
    let k = Key::new();
    let url = c.url("/new-account");
    let payload = B64.encode(json!({}).to_string());

    // Wrong content type, garbage, oversized.
    problem(
        &c.raw("POST", &url, "application/json", b"{}".to_vec())
            .await,
        "malformed",
    );
    problem(
        &c.raw("POST", &url, "application/jose+json", b"not json".to_vec())
            .await,
        "malformed",
    );
    let big = c
        .raw("POST", &url, "application/jose+json", vec![b' '; 70_000])
        .await;
    assert_eq!(big.status, 413);
    problem(&big, "malformed");
    // JWS general serialization / unprotected header.
    let mut jws = k.sign(
        &json!({"alg": "ES256", "nonce": c.nonce().await, "url": url, "jwk": k.jwk()}),
        &payload,
    );
    jws["header"] = json!({"kid": "x"});
    problem(&c.send(&url, &jws).await, "malformed");
    // alg none, HMAC with a key, and a mismatch between alg and key.
    // A multi-byte algorithm name is quoted safely.
    for alg in ["none", "RS256", "HS256", &"é".repeat(150)] {
        let jws = k.sign(
            &json!({"alg": alg, "nonce": c.nonce().await, "url": url, "jwk": k.jwk()}),
            &payload,
        );
        let r = c.send(&url, &jws).await;
        assert!(
            r.body["type"]
                .as_str()
                .unwrap()
                .ends_with("badSignatureAlgorithm")
                || r.body["type"].as_str().unwrap().ends_with("malformed"),
            "{alg}: {}",
            r.body
        );
        assert_eq!(r.status, 400);
    }
    // Missing nonce, unknown nonce, replayed nonce.
    let jws = k.sign(
        &json!({"alg": "ES256", "url": url, "jwk": k.jwk()}),
        &payload,
    );
    problem(&c.send(&url, &jws).await, "badNonce");
    let jws = k.sign(
        &json!({"alg": "ES256", "nonce": "made-up", "url": url, "jwk": k.jwk()}),
        &payload,
    );
    problem(&c.send(&url, &jws).await, "badNonce");
    let nonce = c.nonce().await;
    let jws = k.sign(
        &json!({"alg": "ES256", "nonce": nonce, "url": url, "jwk": k.jwk()}),
        &payload,
    );
    assert_eq!(c.send(&url, &jws).await.status, 201);
    let replay = c.send(&url, &jws).await;
    problem(&replay, "badNonce");
    // A wrong url in the protected header.
    let jws = k.sign(&json!({"alg": "ES256", "nonce": c.nonce().await, "url": c.url("/new-order"), "jwk": k.jwk()}), &payload);
    problem(&c.send(&url, &jws).await, "unauthorized");
    // A bad signature (payload swapped after signing): the nonce survives.
    let nonce = c.nonce().await;
    let mut jws = k.sign(
        &json!({"alg": "ES256", "nonce": nonce, "url": url, "jwk": k.jwk()}),
        &payload,
    );
    jws["payload"] = B64
        .encode(json!({"contact": ["mailto:evil@example.test"]}).to_string())
        .into();
    problem(&c.send(&url, &jws).await, "malformed");
    // jwk where kid is required; unknown account; both jwk and kid.
    let r = c
        .post(
            &c.url("/new-order"),
            &k,
            None,
            Some(json!({"identifiers": [{"type": "dns", "value": "a.example.test"}]})),
        )
        .await;
    problem(&r, "malformed");
    let other = Key::new();
    let r = c
        .post(
            &c.url("/new-order"),
            &other,
            Some(&c.url("/acct/nobody")),
            Some(json!({})),
        )
        .await;
    problem(&r, "accountDoesNotExist");
    let jws = k.sign(&json!({"alg": "ES256", "nonce": c.nonce().await, "url": url, "jwk": k.jwk(), "kid": c.url("/acct/x")}), &payload);
    problem(&c.send(&url, &jws).await, "malformed");
    // A private key in the JWK is refused.
    let mut jwk = k.jwk();
    jwk["d"] = "AAAA".into();
    let jws = k.sign(
        &json!({"alg": "ES256", "nonce": c.nonce().await, "url": url, "jwk": jwk}),
        &payload,
    );
    problem(&c.send(&url, &jws).await, "malformed");
    // onlyReturnExisting for an unknown key.
    let r = c
        .post(
            &url,
            &Key::new(),
            None,
            Some(json!({"onlyReturnExisting": true})),
        )
        .await;
    problem(&r, "accountDoesNotExist");
    // Bad contacts.
    let r = c
        .post(
            &url,
            &Key::new(),
            None,
            Some(json!({"contact": ["tel:+1555"]})),
        )
        .await;
    problem(&r, "unsupportedContact");
    let r = c
        .post(
            &url,
            &Key::new(),
            None,
            Some(json!({"contact": ["mailto:a@b.test?cc=c@d.test"]})),
        )
        .await;
    problem(&r, "invalidContact");
    // GET on a POST resource, and unknown paths, are problems too.
    assert_eq!(
        c.raw("GET", &c.url("/new-order"), "", vec![]).await.status,
        404
    );
    assert_eq!(
        c.raw("PUT", &c.url("/new-order"), "", vec![]).await.status,
        405
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_authorizations_and_finalize_follow_the_rules() {
    let h = acme_harness(|c| c.orders_per_hour = 3).await;
    let c = Client::new(&h);
    let k = Key::new();
    let kid = c.account(&k).await;
    // Identifiers: refused names list their subproblems; unsupported types.
    let r = c.post(&c.url("/new-order"), &k, Some(&kid), Some(json!({"identifiers": [{"type": "dns", "value": "ok.example.test"}, {"type": "dns", "value": "no.elsewhere.test"}]}))).await;
    problem(&r, "rejectedIdentifier");
    assert_eq!(
        r.body["subproblems"][0]["identifier"]["value"],
        "no.elsewhere.test"
    );
    let r = c
        .post(
            &c.url("/new-order"),
            &k,
            Some(&kid),
            Some(json!({"identifiers": [{"type": "email", "value": "a@example.test"}]})),
        )
        .await;
    problem(&r, "unsupportedIdentifier");
    let r = c
        .post(
            &c.url("/new-order"),
            &k,
            Some(&kid),
            Some(json!({"identifiers": [{"type": "dns", "value": "bad_name.example.test"}]})),
        )
        .await;
    problem(&r, "rejectedIdentifier");
    let r = c.post(&c.url("/new-order"), &k, Some(&kid), Some(json!({"identifiers": [{"type": "dns", "value": "a.example.test"}], "notAfter": "2030-01-01T00:00:00Z"}))).await;
    problem(&r, "malformed");

    // A good order: pending, three challenges, wildcard only dns-01.
    let r = c.post(&c.url("/new-order"), &k, Some(&kid), Some(json!({"identifiers": [{"type": "dns", "value": "A.Example.Test"}, {"type": "dns", "value": "*.example.test"}]}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let order_url = r.location.clone().unwrap();
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["identifiers"][0]["value"], "a.example.test");
    let authzs: Vec<String> = r.body["authorizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let a0 = c.post(&authzs[0], &k, Some(&kid), None).await;
    let kinds: Vec<&str> = a0.body["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["http-01", "tls-alpn-01", "dns-01"]);
    let a1 = c.post(&authzs[1], &k, Some(&kid), None).await;
    assert_eq!(a1.body["wildcard"], true);
    assert_eq!(a1.body["identifier"]["value"], "example.test");
    let kinds: Vec<&str> = a1.body["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["dns-01"]);

    // Another account sees none of it.
    let stranger = Key::new();
    let skid = c.account(&stranger).await;
    problem(
        &c.post(&order_url, &stranger, Some(&skid), None).await,
        "unauthorized",
    );
    problem(
        &c.post(&authzs[0], &stranger, Some(&skid), None).await,
        "unauthorized",
    );
    let chall = a0.body["challenges"][0]["url"].as_str().unwrap().to_owned();
    problem(
        &c.post(&chall, &stranger, Some(&skid), Some(json!({})))
            .await,
        "unauthorized",
    );

    // Finalize before the authorizations are valid.
    let finalize = r.body["finalize"].as_str().unwrap().to_owned();
    problem(
        &c.post(&finalize, &k, Some(&kid), Some(json!({"csr": "AAAA"})))
            .await,
        "orderNotReady",
    );

    // A failing http-01 (nothing listens): the authorization goes invalid
    // with the validation error, and the order with it.
    let resp = c.post(&chall, &k, Some(&kid), Some(json!({}))).await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.headers
            .get("link")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("rel=\"up\"")
            || resp
                .headers
                .get_all("link")
                .iter()
                .any(|v| v.to_str().unwrap().contains("rel=\"up\""))
    );
    let mut status = String::new();
    for _ in 0..100 {
        let a = c.post(&authzs[0], &k, Some(&kid), None).await;
        status = a.body["status"].as_str().unwrap().to_owned();
        if status != "pending" {
            assert_eq!(
                a.body["challenges"][0]["error"]["type"], "urn:ietf:params:acme:error:connection",
                "{}",
                a.body
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, "invalid");
    let o = c.post(&order_url, &k, Some(&kid), None).await;
    assert_eq!(o.body["status"], "invalid");

    // Rate limit: 3 orders an hour (2 made above... the refused ones do not count).
    let mut last = None;
    for i in 0..4 {
        let r = c.post(&c.url("/new-order"), &k, Some(&kid), Some(json!({"identifiers": [{"type": "dns", "value": format!("r{i}.example.test")}]}))).await;
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(last.status, 429);
    problem(&last, "rateLimited");
    // The account's order list.
    let list = c.post(&format!("{kid}/orders"), &k, Some(&kid), None).await;
    assert_eq!(
        list.body["orders"].as_array().unwrap().len(),
        3,
        "{}",
        list.body
    );
}

/// Serve http-01 answers for `thumbprint` on `port` until dropped.
fn http01_responder(port: u16, thumbprint: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tp = thumbprint.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let token = req.uri().path().rsplit('/').next().unwrap().to_owned();
                        let body = format!("{token}.{tp}");
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// Run an order for `names` through http-01 to a certificate; returns (order body, cert PEM, cert key).
async fn obtain(
    c: &Client,
    h: &AcmeHarness,
    k: &Key,
    kid: &str,
    names: &[&str],
) -> (Value, String, rcgen::KeyPair) {
    let responder = http01_responder(h.http01_port, k.thumbprint());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let ids: Vec<Value> = names
        .iter()
        .map(|n| json!({"type": "dns", "value": n}))
        .collect();
    let r = c
        .post(
            &c.url("/new-order"),
            k,
            Some(kid),
            Some(json!({"identifiers": ids})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let order_url = r.location.unwrap();
    for a in r.body["authorizations"].as_array().unwrap() {
        let a = c.post(a.as_str().unwrap(), k, Some(kid), None).await;
        let ch = a.body["challenges"][0]["url"].as_str().unwrap().to_owned();
        c.post(&ch, k, Some(kid), Some(json!({}))).await;
    }
    let mut order = Value::Null;
    for _ in 0..100 {
        order = c.post(&order_url, k, Some(kid), None).await.body;
        if order["status"] != "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(order["status"], "ready", "{order}");
    let key = rcgen::KeyPair::generate().unwrap();
    // A CSR for other names than the order's is refused.
    let wrong = rcgen::CertificateParams::new(vec!["other.example.test".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let r = c
        .post(
            order["finalize"].as_str().unwrap(),
            k,
            Some(kid),
            Some(json!({"csr": B64.encode(wrong.der())})),
        )
        .await;
    problem(&r, "badCSR");
    let csr =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
    let r = c
        .post(
            order["finalize"].as_str().unwrap(),
            k,
            Some(kid),
            Some(json!({"csr": B64.encode(csr.der())})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "valid", "{}", r.body);
    let cert = c
        .post(r.body["certificate"].as_str().unwrap(), k, Some(kid), None)
        .await;
    assert_eq!(
        cert.headers.get("content-type").unwrap(),
        "application/pem-certificate-chain"
    );
    responder.abort();
    (r.body, cert.body.as_str().unwrap().to_owned(), key)
}

fn first_der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_revocation_by_certificate_key_renewal_info_and_deactivation() {
    let h = acme_harness(|_| {}).await;
    let c = Client::new(&h);
    let k = Key::new();
    let kid = c.account(&k).await;
    let (order, pem, cert_key) = obtain(&c, &h, &k, &kid, &["ari.example.test"]).await;
    let der = first_der(&pem);

    // ARI: the certificate id is base64url(AKI) "." base64url(serial).
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x) = X509Certificate::from_der(&der).unwrap();
    let aki = x
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    let certid = format!("{}.{}", B64.encode(aki), B64.encode(x.raw_serial()));
    let ari = c
        .raw(
            "GET",
            &c.url(&format!("/renewal-info/{certid}")),
            "",
            vec![],
        )
        .await;
    assert_eq!(ari.status, 200, "{}", ari.body);
    assert!(ari.headers.get("retry-after").is_some());
    let start = ari.body["suggestedWindow"]["start"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert!(
        start > jiff::Timestamp::now(),
        "a fresh certificate is not due for renewal yet: {}",
        ari.body
    );
    assert_eq!(
        c.raw("GET", &c.url("/renewal-info/AAAA.AAAA"), "", vec![])
            .await
            .status,
        404
    );
    // An order replacing it (ARI `replaces`); another account cannot claim it.
    let stranger = Key::new();
    let skid = c.account(&stranger).await;
    let r = c.post(&c.url("/new-order"), &stranger, Some(&skid), Some(json!({"identifiers": [{"type": "dns", "value": "ari.example.test"}], "replaces": certid}))).await;
    problem(&r, "unauthorized");
    let r = c.post(&c.url("/new-order"), &k, Some(&kid), Some(json!({"identifiers": [{"type": "dns", "value": "ari.example.test"}], "replaces": certid}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["replaces"], certid.as_str());
    // The stranger cannot download or revoke it.
    problem(
        &c.post(
            order["certificate"].as_str().unwrap(),
            &stranger,
            Some(&skid),
            None,
        )
        .await,
        "unauthorized",
    );
    let revoke = json!({"certificate": B64.encode(&der), "reason": 1});
    problem(
        &c.post(
            &c.url("/revoke-cert"),
            &stranger,
            Some(&skid),
            Some(revoke.clone()),
        )
        .await,
        "unauthorized",
    );
    // A bad reason code.
    problem(
        &c.post(
            &c.url("/revoke-cert"),
            &k,
            Some(&kid),
            Some(json!({"certificate": B64.encode(&der), "reason": 2})),
        )
        .await,
        "badRevocationReason",
    );

    // Key change: the new key signs the inner JWS; the old one stops working.
    let new = Key::new();
    let inner = new.sign(
        &json!({"alg": "ES256", "jwk": new.jwk(), "url": c.url("/key-change")}),
        &B64.encode(json!({"account": kid, "oldKey": k.jwk()}).to_string()),
    );
    let r = c
        .post(&c.url("/key-change"), &k, Some(&kid), Some(inner))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    problem(&c.post(&kid, &k, Some(&kid), None).await, "malformed");
    assert_eq!(c.post(&kid, &new, Some(&kid), None).await.status, 200);
    // Changing to a key another account holds: 409 with its URL.
    let inner = stranger.sign(
        &json!({"alg": "ES256", "jwk": stranger.jwk(), "url": c.url("/key-change")}),
        &B64.encode(json!({"account": kid, "oldKey": new.jwk()}).to_string()),
    );
    let r = c
        .post(&c.url("/key-change"), &new, Some(&kid), Some(inner))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(skid.as_str()));
    // An inner JWS with a nonce, or naming another old key, is refused.
    let inner = Key::new();
    let bad = inner.sign(
        &json!({"alg": "ES256", "jwk": inner.jwk(), "url": c.url("/key-change"), "nonce": "x"}),
        &B64.encode(json!({"account": kid, "oldKey": new.jwk()}).to_string()),
    );
    problem(
        &c.post(&c.url("/key-change"), &new, Some(&kid), Some(bad))
            .await,
        "malformed",
    );
    let bad = inner.sign(
        &json!({"alg": "ES256", "jwk": inner.jwk(), "url": c.url("/key-change")}),
        &B64.encode(json!({"account": kid, "oldKey": k.jwk()}).to_string()),
    );
    problem(
        &c.post(&c.url("/key-change"), &new, Some(&kid), Some(bad))
            .await,
        "unauthorized",
    );

    // Revocation signed by the certificate's own key (no account).
    let p = cert_key.public_key_raw();
    use p256::pkcs8::DecodePrivateKey as _;
    let cert_jwk = Key(SigningKey::from_pkcs8_der(&cert_key.serialize_der()).unwrap());
    assert_eq!(
        cert_jwk
            .0
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes(),
        p
    );
    let r = c
        .post(
            &c.url("/revoke-cert"),
            &cert_jwk,
            None,
            Some(revoke.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    problem(
        &c.post(&c.url("/revoke-cert"), &new, Some(&kid), Some(revoke))
            .await,
        "alreadyRevoked",
    );
    // ARI says: renew now.
    let ari = c
        .raw(
            "GET",
            &c.url(&format!("/renewal-info/{certid}")),
            "",
            vec![],
        )
        .await;
    let end = ari.body["suggestedWindow"]["end"]
        .as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap();
    assert!(end <= jiff::Timestamp::now(), "{}", ari.body);

    // Deactivation: the account can do nothing afterwards.
    let r = c
        .post(
            &kid,
            &new,
            Some(&kid),
            Some(json!({"status": "deactivated"})),
        )
        .await;
    assert_eq!(r.body["status"], "deactivated");
    problem(
        &c.post(
            &c.url("/new-order"),
            &new,
            Some(&kid),
            Some(json!({"identifiers": [{"type": "dns", "value": "x.example.test"}]})),
        )
        .await,
        "unauthorized",
    );
    problem(
        &c.post(&c.url("/new-account"), &new, None, Some(json!({})))
            .await,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_required_checked_and_narrows_names() {
    let hmac = [9u8; 32];
    let h = acme_harness(|c| {
        c.eab_required = true;
        c.eab_keys = vec![serde_json::from_value(json!({"kid": "team-a", "hmac_key": B64.encode(hmac), "identity": "team-a@example.test", "dns": ["a.example.test"]})).unwrap()];
    })
    .await;
    let c = Client::new(&h);
    let d = c.raw("GET", &c.url("/directory"), "", vec![]).await;
    assert_eq!(d.body["meta"]["externalAccountRequired"], true);
    let k = Key::new();
    let url = c.url("/new-account");
    problem(
        &c.post(&url, &k, None, Some(json!({}))).await,
        "externalAccountRequired",
    );
    let eab = |kid: &str, key: &[u8], jwk: Value, url: &str| {
        let protected = B64.encode(json!({"alg": "HS256", "kid": kid, "url": url}).to_string());
        let payload = B64.encode(jwk.to_string());
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            format!("{protected}.{payload}").as_bytes(),
        );
        json!({"protected": protected, "payload": payload, "signature": B64.encode(mac.as_ref())})
    };
    // Wrong MAC key, unknown kid, another account key, wrong url.
    problem(
        &c.post(
            &url,
            &k,
            None,
            Some(json!({"externalAccountBinding": eab("team-a", &[1; 32], k.jwk(), &url)})),
        )
        .await,
        "unauthorized",
    );
    problem(
        &c.post(
            &url,
            &k,
            None,
            Some(json!({"externalAccountBinding": eab("team-b", &hmac, k.jwk(), &url)})),
        )
        .await,
        "unauthorized",
    );
    problem(
        &c.post(
            &url,
            &k,
            None,
            Some(json!({"externalAccountBinding": eab("team-a", &hmac, Key::new().jwk(), &url)})),
        )
        .await,
        "unauthorized",
    );
    problem(&c.post(&url, &k, None, Some(json!({"externalAccountBinding": eab("team-a", &hmac, k.jwk(), &c.url("/new-order"))}))).await, "malformed");
    // The right binding.
    let r = c
        .post(
            &url,
            &k,
            None,
            Some(json!({"externalAccountBinding": eab("team-a", &hmac, k.jwk(), &url)})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let kid = r.location.unwrap();
    // The binding narrows the names: a.example.test and below only.
    let ok = c
        .post(
            &c.url("/new-order"),
            &k,
            Some(&kid),
            Some(json!({"identifiers": [{"type": "dns", "value": "www.a.example.test"}]})),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let no = c
        .post(
            &c.url("/new-order"),
            &k,
            Some(&kid),
            Some(json!({"identifiers": [{"type": "dns", "value": "b.example.test"}]})),
        )
        .await;
    problem(&no, "rejectedIdentifier");
    assert!(
        no.body["detail"].as_str().unwrap().contains("binding"),
        "{}",
        no.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_under_the_limit_are_not_rate_limited() {
    // Many clients behind one address register at once: the per-address
    // counter is contended, and every request under the limit must still
    // be served (a lost compare-and-set retries, it is not a refusal).
    let h = acme_harness(|c| c.accounts_per_hour = 1000).await;
    let c = Arc::new(Client::new(&h));
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let k = Key::new();
            c.post(
                &c.url("/new-account"),
                &k,
                None,
                Some(json!({"contact": ["mailto:a@example.test"]})),
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // And the limit itself still holds.
    let h = acme_harness(|c| c.accounts_per_hour = 5).await;
    let c = Arc::new(Client::new(&h));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let k = Key::new();
            c.post(&c.url("/new-account"), &k, None, Some(json!({})))
                .await
                .status
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => created += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(created, 5);
}
