#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The whole stack (strip → request id → authenticate → authorize → sign)
//! served by hyper on 127.0.0.1, exercised by a real HTTP client.

mod layers_support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hexon_core::httpsig::{Binding, HttpSigner, Verifier};
use hexon_core::jwt::{IssueParams, JwtIssuer, JwtVerifier};
use hexon_core::policy::spec::{RouteSpec, RuleSpec};
use hexon_core::policy::{CompileOptions, PolicyEngine};
use hexon_proxy::authn::{AuthenticateLayer, BearerJwt};
use hexon_proxy::authz::{AuthorizeLayer, PolicyHandle};
use hexon_proxy::body::full;
use hexon_proxy::ext::ConnectionInfo;
use hexon_proxy::request_id::RequestIdLayer;
use hexon_proxy::sign::{RouteIdentity, SignHandle, SignIdentityLayer, SignTable, SignedBody};
use hexon_proxy::strip::StripIdentityLayer;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use layers_support::*;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

fn policy() -> PolicyEngine {
    let spec = |name: &str, path: &str, public: bool| RouteSpec {
        name: name.into(),
        host: "*".into(),
        path: path.into(),
        methods: vec![],
        public,
        public_methods: vec![],
        allow: if public {
            vec![]
        } else {
            vec![RuleSpec {
                authenticated: true,
                ..RuleSpec::default()
            }]
        },
        deny: vec![],
        credentials: vec![],
    };
    PolicyEngine::compile(
        &[
            spec("public", "/public/*", true),
            spec("app", "/app/*", false),
            spec("upload", "/upload", false),
        ],
        &CompileOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn full_stack_over_real_http() {
    let (gw_key, gw_keys) = signer("gw-1");
    let (jwt_key, jwt_keys) = signer("jwt-1");
    let verifier = Arc::new(Verifier::dangerous_accept_any_authority(gw_keys));

    // The "upstream": verifies the signature the stack put on the request.
    let backend = {
        let verifier = verifier.clone();
        tower::service_fn(
            move |req: Request<
                SignedBody<hexon_proxy::strip::StrippedBody<hyper::body::Incoming>>,
            >| {
                let verifier = verifier.clone();
                let fut: std::pin::Pin<
                    Box<
                        dyn Future<
                                Output = Result<Response<hexon_proxy::body::BoxBody>, Infallible>,
                            > + Send,
                    >,
                > = Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let who = match verifier.verify_parts(&parts, NOW) {
                        Ok(v) => {
                            if let Some(d) = v.content_digest_sha256() {
                                use sha2::Digest as _;
                                let got: [u8; 32] = sha2::Sha256::digest(&body).into();
                                assert_eq!(got, d);
                            }
                            v.identity.username().to_owned()
                        }
                        Err(_)
                            if parts
                                .headers
                                .keys()
                                .any(|k| k.as_str().starts_with("hexon")) =>
                        {
                            "SPOOFED".to_owned()
                        }
                        Err(_) => "anonymous".to_owned(),
                    };
                    Ok::<_, Infallible>(Response::new(full(who)))
                });
                fut
            },
        )
    };

    let stack = ServiceBuilder::new()
        .layer(StripIdentityLayer::new())
        .layer(RequestIdLayer::new())
        .layer(
            AuthenticateLayer::new()
                .with(BearerJwt::new(JwtVerifier::new(
                    jwt_keys,
                    "https://hexon.example",
                    "hexon",
                )))
                .with_clock(|| NOW),
        )
        .layer(
            AuthorizeLayer::new(PolicyHandle::new(policy()))
                .with_login_url("https://login.example.com/")
                .unwrap()
                .with_clock(|| NOW),
        )
        .layer(
            SignIdentityLayer::new(
                Arc::new(HttpSigner::new(gw_key)),
                SignHandle::new(
                    SignTable::new()
                        .with_route(
                            "public",
                            RouteIdentity::Headers {
                                binding: Binding::NONE,
                            },
                        )
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
                        ),
                ),
            )
            .with_clock(|| NOW),
        )
        .service(backend);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, stack));

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{addr}");
    let send = |r: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.request(r).await.unwrap();
            let (parts, body) = res.into_parts();
            let b = body.collect().await.unwrap().to_bytes();
            (parts, String::from_utf8(b.to_vec()).unwrap())
        }
    };
    let token = JwtIssuer::new(jwt_key)
        .issue(
            &alice(),
            &IssueParams::new("https://hexon.example", "hexon", Duration::from_secs(300)),
            NOW,
        )
        .await
        .unwrap();

    // Anonymous browser on a protected route: login redirect with a request id.
    let (p, _) = send(
        Request::get(format!("{base}/app/x"))
            .header("accept", "text/html")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::FOUND);
    assert!(
        p.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("https://login.example.com/?rd=http%3A%2F%2F127.0.0.1")
    );
    assert_eq!(p.headers["x-request-id"].len(), 32);

    // Spoofed identity on a public route never reaches the backend.
    let (p, body) = send(
        Request::get(format!("{base}/public/a"))
            .header("hexon-user", "root")
            .header("remote-user", "root")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(body, "anonymous");

    // Bearer token: signed identity, verified by the backend.
    let (p, body) = send(
        Request::get(format!("{base}/app/x"))
            .header("authorization", format!("Bearer {token}"))
            .header("hexon-groups", "admins")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(body, "alice");

    // Body-bound route over HTTP: digest computed, signed and checked.
    let (p, body) = send(
        Request::post(format!("{base}/upload"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(body, "alice");

    // An invalid token is a 401, not anonymous access to the public route.
    let (p, _) = send(
        Request::get(format!("{base}/public/a"))
            .header("authorization", "Bearer a.b.c")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
}

/// Serve `stack` on `listener`, inserting `ConnectionInfo` as the listener does.
async fn serve<S>(listener: TcpListener, stack: S)
where
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response<hexon_proxy::body::BoxBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let local = listener.local_addr().unwrap();
    loop {
        let (tcp, remote) = listener.accept().await.unwrap();
        let conn = ConnectionInfo::plain(remote, local);
        let stack = stack.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(conn.clone());
                tower::ServiceExt::oneshot(stack.clone(), r)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
