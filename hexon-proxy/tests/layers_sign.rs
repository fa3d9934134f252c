#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! SignIdentityLayer: signed headers, JWTs, body binding, fail-closed errors.

mod layers_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hexon_core::httpsig::{Binding, HttpSigner, Verifier, content_digest};
use hexon_core::jwt::{IssueParams, JwtIssuer, JwtVerifier};
use hexon_core::signer::{SignError, SignFuture};
use hexon_core::{Algorithm, Ed25519Signer, Identity, PublicKey, Signer};
use hexon_proxy::ext::{MatchedRoute, RequestId};
use hexon_proxy::sign::{RouteIdentity, SignHandle, SignIdentityLayer, SignTable};
use http::{Request, StatusCode};
use http_body_util::Full;
use layers_support::*;
use sha2::{Digest as _, Sha256};
use tower::ServiceBuilder;

const ISS: &str = "https://hexon.example";

struct Fx {
    keys: hexon_core::KeySet,
    jwt_keys: hexon_core::KeySet,
    handle: SignHandle,
    layer: SignIdentityLayer,
}

fn table(jwt_key: Arc<Ed25519Signer>) -> SignTable {
    SignTable::new()
        .with_route(
            "app",
            RouteIdentity::Headers {
                binding: Binding::NONE,
            },
        )
        .with_route(
            "upload",
            RouteIdentity::Headers {
                binding: Binding::REQUEST_AND_BODY,
            },
        )
        .with_route(
            "api",
            RouteIdentity::Jwt {
                params: IssueParams::new(ISS, "api", Duration::from_secs(300)),
            },
        )
        .with_route("static", RouteIdentity::None)
        .with_jwt_issuer(JwtIssuer::new(jwt_key))
}

fn fx() -> Fx {
    let (key, keys) = signer("gw-1");
    let (jwt_key, jwt_keys) = signer("jwt-1");
    let handle = SignHandle::new(table(jwt_key));
    let layer = SignIdentityLayer::new(Arc::new(HttpSigner::new(key)), handle.clone())
        .with_max_body_bytes(64)
        .with_clock(|| NOW);
    Fx {
        keys,
        jwt_keys,
        handle,
        layer,
    }
}

fn req(
    method: &str,
    uri: &str,
    route: Option<&str>,
    who: Option<Identity>,
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(uri)
        .header("hexon-groups", "admins")
        .header("Hexon_User", "root")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    r.extensions_mut().insert(RequestId(Arc::from("rid-9")));
    if let Some(route) = route {
        r.extensions_mut().insert(MatchedRoute(Arc::from(route)));
    }
    if let Some(id) = who {
        r.extensions_mut().insert(id);
    }
    r
}

async fn run(
    l: &SignIdentityLayer,
    r: Request<Full<Bytes>>,
) -> http::Response<hexon_proxy::body::BoxBody> {
    let svc = ServiceBuilder::new().layer(l.clone()).service(echo());
    call(svc, r).await
}

#[tokio::test]
async fn signed_headers_verify() {
    let f = fx();
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/x?y=1",
            Some("app"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let s = seen(&res);
    assert_eq!(s.header("hexon-user"), Some("alice"));
    assert_eq!(
        s.header("hexon-groups"),
        Some("eng"),
        "spoofed groups replaced"
    );
    assert!(s.parts.headers.get("hexon_user").is_none());
    let v = Verifier::new(f.keys.clone(), ["app.example.com"]).with_routes(["app"]);
    let verified = v.verify_parts(&s.parts, NOW).unwrap();
    assert_eq!(verified.identity, alice());
    assert_eq!(&*verified.route, "app");
    // Another backend's authority does not verify.
    let other = Verifier::new(f.keys.clone(), ["billing.internal"]);
    assert!(other.verify_parts(&s.parts, NOW).is_err());

    // Origin-form request: the Host header is the signed authority.
    let mut r = req("GET", "/x", Some("app"), Some(alice()), b"");
    r.headers_mut()
        .insert("host", "App.Example.com:80".parse().unwrap());
    let res = run(&f.layer, r).await;
    let verified = v.verify_parts(&seen(&res).parts, NOW).unwrap();
    assert_eq!(verified.identity.username(), "alice");
}

#[tokio::test]
async fn anonymous_and_none_routes_carry_no_identity() {
    let f = fx();
    for (route, who) in [("app", None), ("static", Some(alice())), ("upload", None)] {
        let res = run(
            &f.layer,
            req("GET", "http://app.example.com/", Some(route), who, b""),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let h = &seen(&res).parts.headers;
        assert!(
            h.keys()
                .all(|k| !k.as_str().starts_with("hexon") && !k.as_str().starts_with("signature")),
            "{route}: {h:?}"
        );
    }
    // Anonymous on a JWT route: the client's Authorization does not pass.
    let mut r = req("GET", "http://app.example.com/", Some("api"), None, b"");
    r.headers_mut()
        .insert("authorization", "Bearer forged".parse().unwrap());
    let res = run(&f.layer, r).await;
    assert!(seen(&res).parts.headers.get("authorization").is_none());
}

#[tokio::test]
async fn body_bound_signature_carries_the_digest() {
    let f = fx();
    let mut r = req(
        "POST",
        "http://app.example.com/upload?id=7",
        Some("upload"),
        Some(alice()),
        b"hello world",
    );
    r.headers_mut()
        .insert("content-digest", "sha-256=:AAAA:".parse().unwrap());
    let res = run(&f.layer, r).await;
    assert_eq!(res.status(), StatusCode::OK);
    let s = seen(&res);
    assert_eq!(&s.body[..], b"hello world");
    assert_eq!(
        s.parts.headers["content-digest"],
        content_digest(b"hello world")
    );
    let v = Verifier::new(f.keys.clone(), ["app.example.com"]).require_request_binding(true);
    let verified = v.verify_parts(&s.parts, NOW).unwrap();
    assert!(verified.request_bound);
    let want: [u8; 32] = Sha256::digest(b"hello world").into();
    assert_eq!(verified.content_digest_sha256(), Some(want));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let f = fx();
    let big: &'static [u8] = Box::leak(vec![b'x'; 65].into_boxed_slice());
    let res = run(
        &f.layer,
        req(
            "POST",
            "http://app.example.com/u",
            Some("upload"),
            Some(alice()),
            big,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(res.extensions().get::<Seen>().is_none());
    assert_eq!(res.headers()["x-request-id"], "rid-9");
    // Declared too large: refused before reading.
    let mut r = req(
        "POST",
        "http://app.example.com/u",
        Some("upload"),
        Some(alice()),
        b"",
    );
    r.headers_mut()
        .insert("content-length", "1000000".parse().unwrap());
    let res = run(&f.layer, r).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine.
    let ok: &'static [u8] = Box::leak(vec![b'x'; 64].into_boxed_slice());
    let res = run(
        &f.layer,
        req(
            "POST",
            "http://app.example.com/u",
            Some("upload"),
            Some(alice()),
            ok,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Unbound routes do not buffer (and have no limit).
    let res = run(
        &f.layer,
        req(
            "POST",
            "http://app.example.com/u",
            Some("app"),
            Some(alice()),
            big,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen(&res).body.len(), 65);
}

#[tokio::test]
async fn jwt_mode_verifies_and_is_cached() {
    let f = fx();
    let mut r = req(
        "GET",
        "http://app.example.com/api",
        Some("api"),
        Some(alice()),
        b"",
    );
    r.headers_mut()
        .insert("authorization", "Bearer client-token".parse().unwrap());
    let res = run(&f.layer, r).await;
    assert_eq!(res.status(), StatusCode::OK);
    let auth = seen(&res).header("authorization").unwrap().to_owned();
    let token = auth.strip_prefix("Bearer ").unwrap();
    let verified = JwtVerifier::new(f.jwt_keys.clone(), ISS, "api")
        .verify(token, NOW)
        .unwrap();
    assert_eq!(verified.identity.username(), "alice");
    assert_eq!(verified.identity.session(), Some("s-1"));
    assert!(seen(&res).parts.headers.get("hexon-user").is_none());

    // Same session and route: the token is reused.
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/api",
            Some("api"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert_eq!(seen(&res).header("authorization").unwrap(), auth);
    // A changed identity (step-up) gets a new token.
    let stepped = alice()
        .to_builder()
        .auth("webauthn", NOW)
        .unwrap()
        .build()
        .unwrap();
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/api",
            Some("api"),
            Some(stepped),
            b"",
        ),
    )
    .await;
    assert_ne!(seen(&res).header("authorization").unwrap(), auth);
}

#[derive(Debug)]
struct BrokenSigner(PublicKey);

impl Signer for BrokenSigner {
    fn key_id(&self) -> &str {
        "broken"
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }
    fn public_key(&self) -> PublicKey {
        self.0.clone()
    }
    fn sign<'a>(&'a self, _message: &'a [u8]) -> SignFuture<'a> {
        Box::pin(async {
            Err(SignError::Unavailable {
                key_id: "broken".into(),
                reason: "HSM offline".into(),
            })
        })
    }
}

#[tokio::test]
async fn signing_failures_are_500_never_unsigned() {
    let f = fx();
    let pk = Ed25519Signer::generate("x").unwrap().public_key();
    let broken = SignIdentityLayer::new(
        Arc::new(HttpSigner::new(Arc::new(BrokenSigner(pk)))),
        f.handle.clone(),
    )
    .with_clock(|| NOW);
    let res = run(
        &broken,
        req(
            "GET",
            "http://app.example.com/",
            Some("app"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.extensions().get::<Seen>().is_none());
    assert_eq!(res.headers()["x-request-id"], "rid-9");
    let body = body_string(res).await;
    assert!(body.contains("rid-9") && !body.contains("HSM"), "{body}");

    // No authority to sign (origin-form, no Host).
    let res = run(&f.layer, req("GET", "/x", Some("app"), Some(alice()), b"")).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // An authenticated request without a matched route, or on an unknown route.
    let res = run(
        &f.layer,
        req("GET", "http://app.example.com/", None, Some(alice()), b""),
    )
    .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/",
            Some("nope"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // JWT route without an issuer.
    f.handle.store(SignTable::new().with_route(
        "api",
        RouteIdentity::Jwt {
            params: IssueParams::new(ISS, "api", Duration::from_secs(300)),
        },
    ));
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/",
            Some("api"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn sign_table_hot_swap_and_default() {
    let f = fx();
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/",
            Some("app"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert!(seen(&res).parts.headers.contains_key("signature"));
    f.handle
        .store(SignTable::new().with_route("app", RouteIdentity::None));
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/",
            Some("app"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    assert!(!seen(&res).parts.headers.contains_key("signature"));
    f.handle
        .store(SignTable::new().with_default(RouteIdentity::Headers {
            binding: Binding::REQUEST,
        }));
    let res = run(
        &f.layer,
        req(
            "GET",
            "http://app.example.com/",
            Some("other"),
            Some(alice()),
            b"",
        ),
    )
    .await;
    let v = Verifier::new(f.keys.clone(), ["app.example.com"]);
    assert_eq!(
        &*v.verify_parts(&seen(&res).parts, NOW).unwrap().route,
        "other"
    );
}
