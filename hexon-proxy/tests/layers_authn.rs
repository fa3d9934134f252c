#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! AuthenticateLayer with bearer JWTs, session cookies, client certificates and closures.

mod layers_support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hexon_core::jwt::{IssueParams, JwtIssuer, JwtVerifier};
use hexon_core::{Identity, IdentityKind, UnixTime};
use hexon_proxy::authn::{
    AuthenticateLayer, AuthnResult, BearerJwt, ClientCertSans, ClientCertificate, ClientSan,
    KvSessionStore, MemorySessionStore, Session, SessionCookie,
};
use hexon_proxy::ext::RequestId;
use http::request::Parts;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use layers_support::*;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use tower::ServiceBuilder;

const ISS: &str = "https://hexon.example";
const AUD: &str = "hexon";

struct Fixture {
    issuer: JwtIssuer,
    store: Arc<MemorySessionStore>,
    layer: AuthenticateLayer,
}

fn fixture() -> Fixture {
    let (key, keys) = signer("jwt-1");
    let issuer = JwtIssuer::new(key);
    let store = Arc::new(MemorySessionStore::new().with_clock(|| NOW));
    let layer = AuthenticateLayer::new()
        .with(BearerJwt::new(JwtVerifier::new(keys, ISS, AUD)))
        .with(SessionCookie::new(store.clone()))
        .with(ClientCertificate::new())
        .with_clock(|| NOW);
    Fixture {
        issuer,
        store,
        layer,
    }
}

async fn token(f: &Fixture, aud: &str, at: UnixTime) -> String {
    f.issuer
        .issue(
            &alice(),
            &IssueParams::new(ISS, aud, Duration::from_secs(300)),
            at,
        )
        .await
        .unwrap()
}

fn get() -> http::request::Builder {
    Request::get("http://app.example.com/x")
}

async fn run(
    f: &Fixture,
    req: Request<Empty<Bytes>>,
) -> http::Response<hexon_proxy::body::BoxBody> {
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(echo::<Empty<Bytes>>());
    call(svc, req).await
}

#[tokio::test]
async fn bearer_jwt_valid() {
    let f = fixture();
    let t = token(&f, AUD, NOW).await;
    let res = run(
        &f,
        get()
            .header("authorization", format!("Bearer {t}"))
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = seen(&res).identity().unwrap();
    assert_eq!(id.username(), "alice");
    assert!(id.in_group("eng"));
    // Case-insensitive scheme.
    let res = run(
        &f,
        get()
            .header("authorization", format!("bEaReR {t}"))
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn no_credential_is_anonymous() {
    let f = fixture();
    let res = run(&f, get().body(Empty::new()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(seen(&res).identity().is_none());
    // Another scheme is not ours: anonymous too (an HMAC/API-key authenticator may take it).
    let res = run(
        &f,
        get()
            .header("authorization", "Basic YTpi")
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(seen(&res).identity().is_none());
}

#[tokio::test]
async fn spoofed_identity_extension_is_dropped() {
    let f = fixture();
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut().insert(alice());
    let res = run(&f, r).await;
    assert!(seen(&res).identity().is_none());
}

#[tokio::test]
async fn invalid_bearer_is_401_without_fallback() {
    let f = fixture();
    // A valid session cookie rides along: it must not rescue the request.
    f.store.insert(
        "sess-secret",
        Session::new(alice(), NOW.saturating_add(Duration::from_secs(60))),
    );
    let expired = token(&f, AUD, NOW.saturating_sub(Duration::from_secs(3600))).await;
    let wrong_aud = token(&f, "billing", NOW).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"jwt-1"}"#);
    let good = token(&f, AUD, NOW).await;
    let payload = good.split('.').nth(1).unwrap();
    let alg_none = format!("{header}.{payload}.");
    let mut tampered = good.clone();
    tampered.pop();
    tampered.push(if good.ends_with('A') { 'B' } else { 'A' });
    let other_key = {
        let (k, _) = signer("jwt-1");
        JwtIssuer::new(k)
            .issue(
                &alice(),
                &IssueParams::new(ISS, AUD, Duration::from_secs(300)),
                NOW,
            )
            .await
            .unwrap()
    };
    for (what, t) in [
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("alg none", alg_none),
        ("tampered", tampered),
        ("foreign key", other_key),
        ("garbage", "not-a-jwt".into()),
        ("empty", String::new()),
    ] {
        let mut r = get()
            .header("authorization", format!("Bearer {t}"))
            .header("cookie", "__Host-hexon-session=sess-secret")
            .body(Empty::new())
            .unwrap();
        r.extensions_mut().insert(RequestId(Arc::from("rid-1")));
        let res = run(&f, r).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            res.extensions().get::<Seen>().is_none(),
            "{what} reached upstream"
        );
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer realm="hexon", error="invalid_token""#
        );
        assert_eq!(res.headers()["x-request-id"], "rid-1");
        let body = body_string(res).await;
        assert!(
            body.contains("rid-1") && !body.contains("expired"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn several_authorization_headers_are_refused() {
    let f = fixture();
    let t = token(&f, AUD, NOW).await;
    let r = get()
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", "Basic YTpi")
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn session_cookie_valid_expired_revoked() {
    let f = fixture();
    let later = NOW.saturating_add(Duration::from_secs(600));
    f.store.insert("s3cr3t-a", Session::new(alice(), later));
    let bob = Identity::builder("u-2", "bob").build().unwrap();
    f.store.insert("s3cr3t-b", Session::new(bob, later));
    f.store.insert("s3cr3t-old", Session::new(alice(), NOW));

    let with_cookie = |c: &str| {
        get()
            .header(
                "cookie",
                format!("theme=dark; __Host-hexon-session={c}; other=1"),
            )
            .header("accept", "text/html")
            .body(Empty::new())
            .unwrap()
    };
    let res = run(&f, with_cookie("s3cr3t-a")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(seen(&res).identity().unwrap().username(), "alice");

    // Expired: a browser is sent to the same URL with the cookie cleared,
    // so its next request is anonymous (and gets the login redirect).
    let res = run(&f, with_cookie("s3cr3t-old")).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/x");
    let clear = res.headers()["set-cookie"].to_str().unwrap();
    assert!(clear.starts_with("__Host-hexon-session=;") && clear.contains("Max-Age=0"));
    assert!(body_string(res).await.contains("<html"));
    // An API call gets the 401 (and the cleared cookie).
    let with_cookie = |c: &str| {
        get()
            .header("cookie", format!("__Host-hexon-session={c}"))
            .header("accept", "application/json")
            .body(Empty::new())
            .unwrap()
    };
    f.store.insert(
        "s3cr3t-old",
        Session::new(alice(), NOW.saturating_sub(Duration::from_secs(1))),
    );
    let res = run(&f, with_cookie("s3cr3t-old")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Unknown.
    assert_eq!(
        run(&f, with_cookie("nope")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Revoked: all of alice's sessions.
    // (The expired session was already dropped when it was looked up.)
    assert_eq!(f.store.remove_all_for_subject("u-1"), 1);
    assert_eq!(
        run(&f, with_cookie("s3cr3t-a")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        run(&f, with_cookie("s3cr3t-b")).await.status(),
        StatusCode::OK
    );
    // Logout of one session.
    assert!(f.store.remove("s3cr3t-b"));
    assert_eq!(
        run(&f, with_cookie("s3cr3t-b")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn session_cookie_edge_cases() {
    let f = fixture();
    f.store.insert(
        "abc",
        Session::new(alice(), NOW.saturating_add(Duration::from_secs(60))),
    );
    // HTTP/2 splits cookies over several headers.
    let r = get()
        .header("cookie", "a=1")
        .header("cookie", "__Host-hexon-session=abc")
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::OK);
    // The cookie twice: refused.
    let r = get()
        .header(
            "cookie",
            "__Host-hexon-session=abc; __Host-hexon-session=abc",
        )
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
    // A cookie whose name merely contains ours is not ours.
    let r = get()
        .header("cookie", "x__Host-hexon-session=abc")
        .body(Empty::new())
        .unwrap();
    let res = run(&f, r).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(seen(&res).identity().is_none());
    // A custom cookie name.
    let layer = AuthenticateLayer::new()
        .with(SessionCookie::new(f.store.clone()).with_cookie_name("sid"))
        .with_clock(|| NOW);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());
    let r = get()
        .header("cookie", "sid=abc")
        .body(Empty::new())
        .unwrap();
    let res = call(svc, r).await;
    assert_eq!(seen(&res).identity().unwrap().username(), "alice");
}

#[tokio::test]
async fn hostile_headers_get_clear_statuses() {
    let f = fixture();
    // Huge Authorization.
    let r = get()
        .header("authorization", format!("Bearer {}", "a".repeat(100_000)))
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
    // Huge session cookie.
    let r = get()
        .header(
            "cookie",
            format!("__Host-hexon-session={}", "a".repeat(100_000)),
        )
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
    // A huge unrelated cookie is ignored.
    let r = get()
        .header("cookie", format!("junk={}", "a".repeat(100_000)))
        .body(Empty::new())
        .unwrap();
    assert_eq!(run(&f, r).await.status(), StatusCode::OK);
    // Non-UTF-8 bytes in the bearer token and the cookie.
    let mut r = get().body(Empty::new()).unwrap();
    r.headers_mut().insert(
        "authorization",
        HeaderValue::from_bytes(b"Bearer ab\xff\xfe.cd.ef").unwrap(),
    );
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
    let mut r = get().body(Empty::new()).unwrap();
    r.headers_mut().insert(
        "cookie",
        HeaderValue::from_bytes(b"\xff=1; __Host-hexon-session=caf\xc3\xa9").unwrap(),
    );
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
    // Non-UTF-8 in an unrelated Authorization scheme: not ours, anonymous.
    let mut r = get().body(Empty::new()).unwrap();
    r.headers_mut().insert(
        "authorization",
        HeaderValue::from_bytes(b"Custom \xff\xff").unwrap(),
    );
    assert_eq!(run(&f, r).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn client_certificate_san_mapping() {
    let f = fixture();
    let ca = Ca::new();
    let cases = [
        (
            vec![
                dns_san("web.internal"),
                uri_san("spiffe://example.org/ns/prod/sa/web"),
            ],
            "spiffe://example.org/ns/prod/sa/web",
            IdentityKind::Service,
        ),
        (
            vec![email_san("carol@example.com")],
            "carol@example.com",
            IdentityKind::User,
        ),
        (
            vec![dns_san("batch.internal")],
            "batch.internal",
            IdentityKind::Service,
        ),
    ];
    for (sans, subject, kind) in cases {
        let (der, _) = ca.issue(sans, vec![Eku::ClientAuth]);
        let mut r = get().body(Empty::new()).unwrap();
        r.extensions_mut().insert(tls_peer("10.0.0.5", vec![der]));
        let res = run(&f, r).await;
        assert_eq!(res.status(), StatusCode::OK, "{subject}");
        let s = seen(&res);
        let id = s.identity().unwrap();
        assert_eq!(id.subject(), subject);
        assert_eq!(id.kind(), kind);
        assert_eq!(id.last_auth("x509"), Some(NOW));
        if kind == IdentityKind::User {
            assert_eq!(id.email(), Some(subject));
        }
        let sans = s.parts.extensions.get::<ClientCertSans>().unwrap();
        assert!(!sans.sans().is_empty());
    }
    // No EKU at all is fine (EKU is only checked when present).
    let (der, _) = ca.issue(vec![dns_san("legacy.internal")], vec![]);
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut().insert(tls_peer("10.0.0.5", vec![der]));
    assert_eq!(run(&f, r).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn server_auth_only_certificate_is_refused() {
    let f = fixture();
    let ca = Ca::new();
    let (der, _) = ca.issue(vec![dns_san("web.example.com")], vec![Eku::ServerAuth]);
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut()
        .insert(tls_peer("10.0.0.5", vec![der.clone()]));
    let res = run(&f, r).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // And its SANs are not offered to the policy either.
    let layer = AuthenticateLayer::new().with_clock(|| NOW);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut().insert(tls_peer("10.0.0.5", vec![der]));
    let res = call(svc, r).await;
    assert!(
        seen(&res)
            .parts
            .extensions
            .get::<ClientCertSans>()
            .is_none()
    );
    // Garbage DER.
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut().insert(tls_peer(
        "10.0.0.5",
        vec![rustls_pki_types::CertificateDer::from(vec![
            0x30, 0x03, 1, 2, 3,
        ])],
    ));
    assert_eq!(run(&f, r).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn custom_cert_mapping_and_closure_authenticator() {
    let ca = Ca::new();
    let (der, _) = ca.issue(vec![dns_san("unknown.internal")], vec![Eku::ClientAuth]);
    // A mapping that accepts only *.trusted SANs.
    let mapping = ClientCertificate::with_mapping(|sans, _now| {
        sans.sans().iter().find_map(|s| match s {
            ClientSan::Dns(d) if d.ends_with(".trusted") => {
                Identity::builder(d.clone(), d.clone()).build().ok()
            }
            _ => None,
        })
    });
    // An API-key style closure authenticator first.
    let api_key = |parts: &Parts, _now: UnixTime| {
        let key = parts.headers.get("x-api-key").cloned();
        async move {
            match key {
                None => AuthnResult::NoCredential,
                Some(k) if k == "good" => AuthnResult::Authenticated(
                    Identity::builder("svc-1", "ci")
                        .kind(IdentityKind::Service)
                        .build()
                        .unwrap(),
                ),
                Some(_) => AuthnResult::invalid("unknown API key"),
            }
        }
    };
    let layer = AuthenticateLayer::new()
        .with(api_key)
        .with(mapping)
        .with_clock(|| NOW);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(echo::<Empty<Bytes>>());

    let r = get()
        .header("x-api-key", "good")
        .body(Empty::new())
        .unwrap();
    let res = call(svc.clone(), r).await;
    assert_eq!(seen(&res).identity().unwrap().username(), "ci");
    let mut r = get().header("x-api-key", "bad").body(Empty::new()).unwrap();
    // The bad key decides, even with a certificate present.
    r.extensions_mut()
        .insert(tls_peer("10.0.0.5", vec![der.clone()]));
    assert_eq!(
        call(svc.clone(), r).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut r = get().body(Empty::new()).unwrap();
    r.extensions_mut().insert(tls_peer("10.0.0.5", vec![der]));
    assert_eq!(call(svc, r).await.status(), StatusCode::UNAUTHORIZED);
}

/// A KV bucket that cannot be reached (a NATS outage, a dead database).
#[derive(Debug)]
struct DownKv;

#[async_trait::async_trait]
impl hexon_core::store::KvStore for DownKv {
    async fn get(
        &self,
        _: &str,
    ) -> Result<Option<hexon_core::store::KvEntry>, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable(
            "test",
            "connection refused",
        ))
    }
    async fn put(
        &self,
        _: &str,
        _: &[u8],
        _: Duration,
    ) -> Result<hexon_core::store::Revision, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable("test", "down"))
    }
    async fn put_if_absent(
        &self,
        _: &str,
        _: &[u8],
        _: Duration,
    ) -> Result<Option<hexon_core::store::Revision>, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable("test", "down"))
    }
    async fn compare_and_set(
        &self,
        _: &str,
        _: hexon_core::store::Revision,
        _: &[u8],
        _: Duration,
    ) -> Result<Option<hexon_core::store::Revision>, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable("test", "down"))
    }
    async fn delete(&self, _: &str) -> Result<bool, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable("test", "down"))
    }
    async fn delete_if(
        &self,
        _: &str,
        _: hexon_core::store::Revision,
    ) -> Result<bool, hexon_core::store::StoreError> {
        Err(hexon_core::store::StoreError::unavailable("test", "down"))
    }
}

#[derive(Debug)]
struct DownBackend;

#[async_trait::async_trait]
impl hexon_core::store::KvBackend for DownBackend {
    async fn bucket(
        &self,
        _: &str,
        _: Duration,
    ) -> Result<Arc<dyn hexon_core::store::KvStore>, hexon_core::store::StoreError> {
        Ok(Arc::new(DownKv))
    }
    fn backend(&self) -> &'static str {
        "down"
    }
}

fn session_layer(store: KvSessionStore) -> AuthenticateLayer {
    AuthenticateLayer::new()
        .with(SessionCookie::new(Arc::new(store)))
        .with_clock(UnixTime::now)
}

async fn run_layer(
    layer: &AuthenticateLayer,
    cookie: &str,
) -> http::Response<hexon_proxy::body::BoxBody> {
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(echo::<Empty<Bytes>>());
    let req = get()
        .header("cookie", format!("__Host-hexon-session={cookie}"))
        .body(Empty::new())
        .unwrap();
    call(svc, req).await
}

#[tokio::test]
async fn kv_sessions_are_shared_revoked_everywhere_and_fail_closed() {
    use futures_util::StreamExt as _;
    use hexon_core::store::{Event, EventBus, KvBackend, MemoryBus, MemoryKvBackend, StartAt};
    let backend = MemoryKvBackend::new();
    let bus = Arc::new(MemoryBus::new("node-a"));
    let mut events = bus.subscribe(StartAt::New).await.unwrap();
    // Two "nodes" sharing one backend.
    let keys = Arc::new(hexon_core::store::SecretKeys::new([5; 32]));
    let node_a = KvSessionStore::open(&backend, keys.clone(), Duration::from_secs(3600))
        .await
        .unwrap()
        .with_events(bus.clone());
    let node_b = KvSessionStore::open(&backend, keys.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let now = UnixTime::now();
    let later = now.saturating_add(Duration::from_secs(600));
    let started = now.saturating_sub(Duration::from_secs(5));
    node_a
        .insert(
            "cookie-a",
            &Session::new(alice(), later).created_at(started),
            now,
        )
        .await
        .unwrap();
    let bob = Identity::builder("u-2", "bob").build().unwrap();
    node_a
        .insert(
            "cookie-b",
            &Session::new(bob, later).created_at(started),
            now,
        )
        .await
        .unwrap();
    // The cookie value is not what the store keeps.
    let raw = backend
        .bucket("sessions", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(raw.get("cookie-a").await.unwrap(), None);

    let (layer_a, layer_b) = (session_layer(node_a.clone()), session_layer(node_b.clone()));
    let res = run_layer(&layer_b, "cookie-a").await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "a session made on node A works on node B"
    );
    assert_eq!(seen(&res).identity().unwrap().username(), "alice");

    // Revoking alice on node A ends her session on node B, not bob's.
    node_a.revoke_subject("u-1").await.unwrap();
    assert_eq!(
        run_layer(&layer_b, "cookie-a").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        run_layer(&layer_a, "cookie-a").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        run_layer(&layer_b, "cookie-b").await.status(),
        StatusCode::OK
    );
    let event = events.next().await.unwrap().unwrap();
    assert_eq!(
        event.event,
        Event::UserSessionsRevoked {
            subject: "u-1".into()
        }
    );
    // A session begun after the revocation is not affected by it.
    let fresh = now.saturating_add(Duration::from_secs(2));
    node_a
        .insert(
            "cookie-a2",
            &Session::new(alice(), later).created_at(fresh),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        run_layer(&layer_b, "cookie-a2").await.status(),
        StatusCode::OK
    );
    // Logout.
    assert!(node_b.remove("cookie-b").await.unwrap());
    assert_eq!(
        run_layer(&layer_a, "cookie-b").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The store is down: 503 with Retry-After, and the cookie is NOT cleared
    // (the user is not logged out by an outage), never 200.
    let down = KvSessionStore::open(&DownBackend, keys.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let res = run_layer(&session_layer(down), "cookie-b").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    assert!(res.headers().get("set-cookie").is_none());

    // A check against current state (the gateway's "is this user still
    // enabled?") refuses a valid session.
    node_a
        .insert(
            "cookie-c",
            &Session::new(alice(), later).created_at(now),
            now,
        )
        .await
        .unwrap();
    let checked = AuthenticateLayer::new()
        .with(
            SessionCookie::new(Arc::new(node_a.clone())).with_check(|id| {
                if id.subject() == "u-1" {
                    Err("disabled")
                } else {
                    Ok(())
                }
            }),
        )
        .with_clock(UnixTime::now);
    assert_eq!(
        run_layer(&checked, "cookie-c").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        run_layer(&layer_a, "cookie-c").await.status(),
        StatusCode::OK
    );
}

/// `peek` (what the express lane reads) answers what `get` would, and only
/// when the lookup would write nothing; `remembered` then applies the
/// authenticator's own checks.
#[tokio::test]
async fn a_peeked_session_is_what_get_returns_and_only_when_nothing_is_due() {
    use hexon_core::store::{KvBackend, MemoryKvBackend, SecretKeys};
    use hexon_proxy::authn::SessionStore as _;
    use std::sync::atomic::{AtomicI64, Ordering};
    let backend = MemoryKvBackend::new();
    let keys = Arc::new(SecretKeys::new([7; 32]));
    let start = UnixTime::now();
    let offset = Arc::new(AtomicI64::new(0));
    let clock = {
        let offset = offset.clone();
        move || UnixTime::from_secs(start.as_secs() + offset.load(Ordering::SeqCst))
    };
    let store = KvSessionStore::open(&backend, keys.clone(), Duration::from_secs(3600))
        .await
        .unwrap()
        .with_clock(clock.clone());
    let later = start.saturating_add(Duration::from_secs(1800));
    let scoped = alice()
        .to_builder()
        .audience("app.example")
        .build()
        .unwrap();
    store
        .insert("plain", &Session::new(alice(), later), start)
        .await
        .unwrap();
    let idle = Session::new(scoped, later).with_idle_timeout(Duration::from_secs(80));
    store.insert("idle", &idle, start).await.unwrap();

    // Live, nothing due: peek says what get says.
    for id in ["plain", "idle"] {
        let got = store.get(id).await.unwrap();
        assert!(got.is_some(), "{id}");
        assert_eq!(store.peek(id), got, "{id}");
    }
    assert_eq!(store.peek("unknown"), None);
    // A record that does not open is no session, to either.
    let raw = backend
        .bucket("sessions", Duration::from_secs(3600))
        .await
        .unwrap();
    raw.put(
        &KvSessionStore::digest("forged"),
        b"junk",
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(store.peek("forged"), None);
    assert_eq!(store.get("forged").await.unwrap(), None);

    // The authenticator's checks: audience, expiry, current state.
    let cookie = SessionCookie::new(Arc::new(store.clone()));
    let user = |i: Option<Identity>| i.map(|i| i.username().to_owned());
    assert_eq!(
        user(cookie.remembered("idle", Some("APP.example"), start)),
        Some("alice".to_owned())
    );
    assert_eq!(
        cookie.remembered("idle", Some("other.example"), start),
        None
    );
    assert_eq!(cookie.remembered("idle", None, start), None);
    assert!(cookie.remembered("plain", None, start).is_some());
    assert_eq!(cookie.remembered("plain", None, later), None);
    let refused = cookie.clone().with_check(|_| Err("disabled"));
    assert_eq!(refused.remembered("plain", None, start), None);

    // An idle mark due (after an eighth of the timeout): peek leaves it to
    // get, which marks the session seen; then peek answers again.
    offset.store(15, Ordering::SeqCst);
    assert_eq!(store.peek("idle"), None);
    assert!(
        store.peek("plain").is_some(),
        "no idle timeout, nothing due"
    );
    let marked = store.get("idle").await.unwrap();
    assert!(marked.is_some());
    assert_eq!(store.peek("idle"), marked);
    // Unused for longer than the timeout: ended, for both.
    offset.store(15 + 81, Ordering::SeqCst);
    assert_eq!(store.peek("idle"), None);
    assert_eq!(store.get("idle").await.unwrap(), None);
    // Revoked (on any node): neither answers with it.
    store.revoke_subject(alice().subject()).await.unwrap();
    assert_eq!(store.peek("plain"), None);
    assert_eq!(store.get("plain").await.unwrap(), None);

    // A store that cannot answer at once never does.
    let down = KvSessionStore::open(&DownBackend, keys, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(down.peek("plain"), None);

    // The in-process store answers for live sessions, not expired ones.
    let memory = MemorySessionStore::new().with_clock(clock);
    memory.insert("m", Session::new(alice(), later));
    memory.insert("old", Session::new(alice(), start));
    assert!(memory.peek("m").is_some());
    assert_eq!(memory.peek("m"), memory.get("m").await.unwrap());
    assert_eq!(memory.peek("old"), None);
    assert_eq!(memory.get("old").await.unwrap(), None);
    assert_eq!(memory.len(), 1, "get removed the expired session");
}
