#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! External JWT issuers: JWKS served by a real local HTTPS server.

mod layers_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::jwt::{IssueParams, JwtIssuer, JwtVerifier};
use hexon_core::{Ed25519Signer, KeySet, Signer as _};
use hexon_proxy::authn::{
    AuthenticateLayer, BearerJwt, FetchError, HttpsJwksFetcher, JwksFetcher, JwksIssuer,
};
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use layers_support::*;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

const IDP: &str = "https://idp.example";
const AUD: &str = "hexon-gw";

struct JwksServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    doc: Arc<Mutex<(StatusCode, String)>>,
    roots: rustls::RootCertStore,
}

impl JwksServer {
    async fn start() -> JwksServer {
        let ca = Ca::new();
        let (cert, key) = ca.issue(
            vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())],
            vec![Eku::ServerAuth],
        );
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let doc = Arc::new(Mutex::new((StatusCode::OK, r#"{"keys":[]}"#.to_owned())));
        let (h, d) = (hits.clone(), doc.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, h, d) = (acceptor.clone(), h.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            assert_eq!(req.uri().path(), "/jwks.json");
                            h.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = d.lock().unwrap().clone();
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        JwksServer {
            addr,
            hits,
            doc,
            roots,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.addr.port())
    }

    fn publish(&self, keys: &[&Ed25519Signer]) {
        let mut set = KeySet::new();
        for k in keys {
            set.insert(k.key_id(), k.public_key(), None).unwrap();
        }
        let json = serde_json::to_string(&set.to_jwks(NOW)).unwrap();
        *self.doc.lock().unwrap() = (StatusCode::OK, json);
    }

    fn fail_with(&self, status: StatusCode) {
        self.doc.lock().unwrap().0 = status;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn fetcher(&self) -> Arc<dyn JwksFetcher> {
        Arc::new(HttpsJwksFetcher::with_roots(self.roots.clone()).unwrap())
    }
}

async fn idp_token(key: &Arc<Ed25519Signer>, iss: &str) -> String {
    JwtIssuer::new(key.clone())
        .issue(
            &alice(),
            &IssueParams::new(iss, AUD, Duration::from_secs(300)),
            NOW,
        )
        .await
        .unwrap()
}

fn layer(issuer: JwksIssuer) -> AuthenticateLayer {
    // Hexon's own verifier next to the external issuer: tokens are routed by `iss`.
    let (_, own_keys) = signer("own-1");
    AuthenticateLayer::new()
        .with(
            BearerJwt::new(JwtVerifier::new(own_keys, "https://hexon.example", AUD))
                .with_external(issuer),
        )
        .with_clock(|| NOW)
}

async fn status(layer: &AuthenticateLayer, token: &str) -> StatusCode {
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(echo::<Empty<Bytes>>());
    let r = Request::get("http://app.example.com/")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    let res = call(svc, r).await;
    if res.status() == StatusCode::OK {
        assert_eq!(seen(&res).identity().unwrap().username(), "alice");
    }
    res.status()
}

#[tokio::test]
async fn external_issuer_over_https_with_cache() {
    let server = JwksServer::start().await;
    let k1 = Arc::new(Ed25519Signer::generate("idp-1").unwrap());
    server.publish(&[&k1]);
    let l = layer(JwksIssuer::new(IDP, AUD, server.url(), server.fetcher()));
    let t = idp_token(&k1, IDP).await;
    assert_eq!(status(&l, &t).await, StatusCode::OK);
    assert_eq!(status(&l, &t).await, StatusCode::OK);
    assert_eq!(server.hits(), 1, "keys are cached");
    // Wrong issuer for this key: falls to Hexon's own verifier, which refuses.
    let other = idp_token(&k1, "https://evil.example").await;
    assert_eq!(status(&l, &other).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotation_is_picked_up_on_unknown_kid() {
    let server = JwksServer::start().await;
    let k1 = Arc::new(Ed25519Signer::generate("idp-1").unwrap());
    let k2 = Arc::new(Ed25519Signer::generate("idp-2").unwrap());
    server.publish(&[&k1]);
    let l = layer(
        JwksIssuer::new(IDP, AUD, server.url(), server.fetcher())
            .with_min_refetch_interval(Duration::ZERO),
    );
    assert_eq!(status(&l, &idp_token(&k1, IDP).await).await, StatusCode::OK);
    assert_eq!(server.hits(), 1);
    // The IdP rotates to k2.
    server.publish(&[&k2]);
    assert_eq!(status(&l, &idp_token(&k2, IDP).await).await, StatusCode::OK);
    assert_eq!(server.hits(), 2, "unknown kid triggered one refetch");
    // k1 is gone from the new set.
    assert_eq!(
        status(&l, &idp_token(&k1, IDP).await).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn refetch_on_unknown_kid_is_rate_limited() {
    let server = JwksServer::start().await;
    let k1 = Arc::new(Ed25519Signer::generate("idp-1").unwrap());
    let rogue = Arc::new(Ed25519Signer::generate("rogue").unwrap());
    server.publish(&[&k1]);
    let l = layer(
        JwksIssuer::new(IDP, AUD, server.url(), server.fetcher())
            .with_min_refetch_interval(Duration::from_secs(3600)),
    );
    assert_eq!(status(&l, &idp_token(&k1, IDP).await).await, StatusCode::OK);
    let t = idp_token(&rogue, IDP).await;
    for _ in 0..5 {
        assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits(), 1, "no fetch storm from unknown kids");
    // Known keys keep working.
    assert_eq!(status(&l, &idp_token(&k1, IDP).await).await, StatusCode::OK);
}

#[tokio::test]
async fn fetch_failure_fails_closed() {
    let server = JwksServer::start().await;
    let k1 = Arc::new(Ed25519Signer::generate("idp-1").unwrap());
    let t = idp_token(&k1, IDP).await;

    // Never fetched successfully: 500 from the IdP.
    server.publish(&[&k1]);
    server.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let l = layer(JwksIssuer::new(IDP, AUD, server.url(), server.fetcher()));
    assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);

    // Keys expired (TTL 0) and the refetch fails: no stale keys by default.
    server.publish(&[&k1]);
    let l = layer(
        JwksIssuer::new(IDP, AUD, server.url(), server.fetcher())
            .with_ttl(Duration::ZERO)
            .with_min_refetch_interval(Duration::ZERO),
    );
    assert_eq!(status(&l, &t).await, StatusCode::OK);
    server.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);

    // …unless a stale grace period is configured.
    server.publish(&[&k1]);
    let l = layer(
        JwksIssuer::new(IDP, AUD, server.url(), server.fetcher())
            .with_ttl(Duration::ZERO)
            .with_min_refetch_interval(Duration::ZERO)
            .with_max_stale(Duration::from_secs(3600)),
    );
    assert_eq!(status(&l, &t).await, StatusCode::OK);
    server.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status(&l, &t).await, StatusCode::OK);

    // Nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!(
        "https://127.0.0.1:{}/jwks.json",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    let l = layer(JwksIssuer::new(IDP, AUD, dead_url, server.fetcher()));
    assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);

    // Plain http:// is refused by the HTTPS fetcher.
    let plain = format!("http://127.0.0.1:{}/jwks.json", server.addr.port());
    let l = layer(JwksIssuer::new(IDP, AUD, plain, server.fetcher()));
    assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);

    // A server certificate from an untrusted CA.
    server.publish(&[&k1]);
    let untrusted = Arc::new(HttpsJwksFetcher::new().unwrap());
    let l = layer(JwksIssuer::new(IDP, AUD, server.url(), untrusted));
    assert_eq!(status(&l, &t).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn injected_fetcher_and_identity_map() {
    let k1 = Arc::new(Ed25519Signer::generate("idp-1").unwrap());
    let mut set = KeySet::new();
    set.insert("idp-1", k1.public_key(), None).unwrap();
    let doc = Bytes::from(serde_json::to_vec(&set.to_jwks(NOW)).unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let fetcher = move |url: &str| {
        assert_eq!(url, "https://idp.example/keys");
        c.fetch_add(1, Ordering::SeqCst);
        let doc = doc.clone();
        async move { Ok::<_, FetchError>(doc) }
    };
    let issuer = JwksIssuer::new(IDP, AUD, "https://idp.example/keys", Arc::new(fetcher))
        .with_identity_map(|v| (v.identity.username() == "alice").then(|| v.identity.clone()));
    let l = layer(issuer);
    assert_eq!(status(&l, &idp_token(&k1, IDP).await).await, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
