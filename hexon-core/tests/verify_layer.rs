//! The backend SDK: `VerifyIdentityLayer` and the axum extractors.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use hexon_core::httpsig::{Binding, HttpSigner, VerifiedIdentity, Verifier, content_digest};
use hexon_core::verify::VerifyIdentityLayer;
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

fn setup() -> (HttpSigner, Router) {
    let key = Arc::new(Ed25519Signer::generate("gw-1").unwrap());
    let mut keys = KeySet::new();
    keys.insert("gw-1", key.public_key(), None).unwrap();
    let app = Router::new()
        .route(
            "/",
            get(|who: Identity| async move { format!("hello {}", who.username()) }),
        )
        .route(
            "/full",
            get(|v: VerifiedIdentity| async move {
                format!("{} via {}", v.identity.email().unwrap_or("-"), v.route)
            }),
        )
        .route(
            "/first-frame",
            post(|body: Body| async move {
                // A handler that takes the first (here: only) frame and acts.
                let mut body = body;
                match body.frame().await {
                    Some(Ok(f)) => format!("acted on {:?}", f.into_data().unwrap_or_default()),
                    Some(Err(e)) => format!("refused: {e}"),
                    None => "empty".into(),
                }
            }),
        )
        .route(
            "/upload",
            post(|body: String| async move { format!("got {} bytes", body.len()) }),
        )
        .layer(
            VerifyIdentityLayer::new(Verifier::new(keys, ["app.example.com"])).with_clock(|| NOW),
        );
    (HttpSigner::new(key), app)
}

fn alice() -> Identity {
    Identity::builder("u-1", "alice")
        .email("alice@example.com")
        .build()
        .unwrap()
}

async fn signed(
    signer: &HttpSigner,
    method: &str,
    uri: &str,
    body: &'static str,
    binding: Binding,
) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "app.example.com")
        .body(Body::from(body))
        .unwrap();
    if binding.content_digest {
        req.headers_mut()
            .insert("content-digest", content_digest(body.as_bytes()));
    }
    let (mut parts, body) = req.into_parts();
    signer
        .sign(&alice(), "app", binding, &mut parts, NOW)
        .await
        .unwrap();
    Request::from_parts(parts, body)
}

async fn text(res: axum::response::Response) -> (StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.map(|b| b.to_bytes());
    (
        status,
        body.map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("body error: {e}")),
    )
}

#[tokio::test]
async fn verified_identity_reaches_the_handler() {
    let (signer, app) = setup();
    let res = app
        .clone()
        .oneshot(signed(&signer, "GET", "/", "", Binding::NONE).await)
        .await
        .unwrap();
    assert_eq!(text(res).await, (StatusCode::OK, "hello alice".into()));
    let res = app
        .oneshot(signed(&signer, "GET", "/full", "", Binding::REQUEST).await)
        .await
        .unwrap();
    assert_eq!(
        text(res).await,
        (StatusCode::OK, "alice@example.com via app".into())
    );
}

#[tokio::test]
async fn unsigned_forged_and_tampered_requests_get_401() {
    let (signer, app) = setup();
    let plain = Request::get("/")
        .header("host", "app.example.com")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(plain).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["cache-control"], "no-store");

    let forged = Request::get("/")
        .header("host", "app.example.com")
        .header("hexon-user", "root")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let mut tampered = signed(&signer, "GET", "/", "", Binding::NONE).await;
    tampered
        .headers_mut()
        .insert("hexon-email", "mallory@example.com".parse().unwrap());
    let (status, body) = text(app.oneshot(tampered).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.is_empty(), "no reason leaks to the client: {body:?}");
}

#[tokio::test]
async fn body_digest_is_checked_while_streaming() {
    let (signer, app) = setup();
    let ok = signed(
        &signer,
        "POST",
        "/upload",
        "hello world",
        Binding::REQUEST_AND_BODY,
    )
    .await;
    assert_eq!(
        text(app.clone().oneshot(ok).await.unwrap()).await,
        (StatusCode::OK, "got 11 bytes".into())
    );

    // Same signed headers, other body: the handler's body extractor fails.
    let good = signed(
        &signer,
        "POST",
        "/upload",
        "hello world",
        Binding::REQUEST_AND_BODY,
    )
    .await;
    let (parts, _) = good.into_parts();
    let swapped = Request::from_parts(parts, Body::from("hello WORLD"));
    let (status, _) = text(app.oneshot(swapped).await.unwrap()).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "a body that does not match the signed digest must not be accepted"
    );
}

#[tokio::test]
async fn extractor_without_layer_is_401() {
    let app: Router = Router::new().route(
        "/",
        get(|who: Identity| async move { who.username().to_owned() }),
    );
    let res = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_handler_that_stops_early_still_sees_a_digest_mismatch() {
    let (signer, app) = setup();
    let good = signed(
        &signer,
        "POST",
        "/first-frame",
        "{\"amount\":1}",
        Binding::REQUEST_AND_BODY,
    )
    .await;
    let (parts, _) = good.into_parts();
    let res = app
        .clone()
        .oneshot(Request::from_parts(parts, Body::from("{\"amount\":9}")))
        .await
        .unwrap();
    let (status, body) = text(res).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("refused:"), "{body}");

    let good = signed(
        &signer,
        "POST",
        "/first-frame",
        "{\"amount\":1}",
        Binding::REQUEST_AND_BODY,
    )
    .await;
    let (_, body) = text(app.oneshot(good).await.unwrap()).await;
    assert!(body.starts_with("acted on"), "{body}");
}
