#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! StripIdentityLayer and RequestIdLayer.

mod layers_support;

use bytes::Bytes;
use hexon_proxy::ext::RequestId;
use hexon_proxy::request_id::{RequestIdLayer, X_REQUEST_ID};
use hexon_proxy::strip::StripIdentityLayer;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Empty;
use layers_support::*;
use tower::ServiceBuilder;

fn req() -> http::request::Builder {
    Request::get("http://app.example.com/")
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped() {
    let svc = ServiceBuilder::new()
        .layer(StripIdentityLayer::new().with_header("X-Tenant-User"))
        .service(echo::<hexon_proxy::strip::StrippedBody<Empty<Bytes>>>());
    let mut r = req()
        .header("Hexon-User", "root")
        .header("hexon_groups", "admins")
        .header("HEXON-SUBJECT", "u-0")
        .header("Signature", "hexon=:AAAA:")
        .header("signature_input", "hexon=()")
        .header("Remote-User", "root")
        .header("remote_user", "root")
        .header("X-Forwarded-User", "root")
        .header("X-Auth-Request-Email", "root@example.com")
        .header("x_auth_request_groups", "admins")
        .header("x-tenant_user", "root")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("Accept", "*/*")
        .body(Empty::new())
        .unwrap();
    // Several values of one header go too.
    r.headers_mut()
        .append("hexon-user", HeaderValue::from_static("second"));
    let res = call(svc, r).await;
    let s = seen(&res);
    let mut left: Vec<&str> = s.parts.headers.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    assert_eq!(left, ["accept", "x-forwarded-for"]);
}

#[tokio::test]
async fn untrusted_request_id_is_replaced() {
    let layer = RequestIdLayer::new().trust_cidrs(["10.0.0.0/8".parse().unwrap()]);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());

    // From outside the trusted range.
    let mut r = req()
        .header(X_REQUEST_ID, "client-chosen")
        .body(Empty::new())
        .unwrap();
    r.extensions_mut().insert(peer("203.0.113.7"));
    let res = call(svc.clone(), r).await;
    let s = seen(&res);
    let id = s.parts.extensions.get::<RequestId>().unwrap().clone();
    assert_ne!(id.as_str(), "client-chosen");
    assert_eq!(id.as_str().len(), 32);
    assert_eq!(s.header("x-request-id"), Some(id.as_str()));
    assert_eq!(res.headers()[X_REQUEST_ID], id.as_str());

    // No ConnectionInfo at all: untrusted.
    let r = req()
        .header(X_REQUEST_ID, "client-chosen")
        .body(Empty::new())
        .unwrap();
    let res = call(svc, r).await;
    assert_ne!(res.headers()[X_REQUEST_ID], "client-chosen");
}

#[tokio::test]
async fn trusted_request_id_passes_when_well_formed() {
    let layer = RequestIdLayer::new().trust_cidrs(["10.0.0.0/8".parse().unwrap()]);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());

    let mut r = req()
        .header(X_REQUEST_ID, "lb-4711.abc")
        .body(Empty::new())
        .unwrap();
    r.extensions_mut().insert(peer("10.1.2.3"));
    let res = call(svc.clone(), r).await;
    assert_eq!(res.headers()[X_REQUEST_ID], "lb-4711.abc");
    assert_eq!(
        seen(&res)
            .parts
            .extensions
            .get::<RequestId>()
            .unwrap()
            .as_str(),
        "lb-4711.abc"
    );

    // IPv4-mapped IPv6 peers match IPv4 ranges.
    let mut r = req()
        .header(X_REQUEST_ID, "mapped")
        .body(Empty::new())
        .unwrap();
    r.extensions_mut().insert(peer("[::ffff:10.9.9.9]"));
    let res = call(svc.clone(), r).await;
    assert_eq!(res.headers()[X_REQUEST_ID], "mapped");

    // Malformed ids from trusted sources are replaced.
    for bad in [
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("a,b"),
        HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_static(""),
    ] {
        let mut r = req().body(Empty::new()).unwrap();
        r.headers_mut().insert(X_REQUEST_ID, bad.clone());
        r.extensions_mut().insert(peer("10.1.2.3"));
        let res = call(svc.clone(), r).await;
        let got = res.headers()[X_REQUEST_ID].clone();
        assert_ne!(got, bad);
        assert_eq!(got.len(), 32, "{bad:?}");
    }

    // Two X-Request-Id headers: ambiguous, replaced.
    let mut r = req()
        .header(X_REQUEST_ID, "one")
        .header(X_REQUEST_ID, "two")
        .body(Empty::new())
        .unwrap();
    r.extensions_mut().insert(peer("10.1.2.3"));
    let res = call(svc, r).await;
    assert_eq!(res.headers()[X_REQUEST_ID].len(), 32);
}

#[tokio::test]
async fn trust_predicate_over_connection() {
    let layer = RequestIdLayer::new().trust_if(|c| c.tcp_peer.ip().is_loopback());
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());
    let mut r = req()
        .header(X_REQUEST_ID, "from-lb")
        .body(Empty::new())
        .unwrap();
    r.extensions_mut().insert(peer("127.0.0.1"));
    let res = call(svc, r).await;
    assert_eq!(res.headers()[X_REQUEST_ID], "from-lb");
}
