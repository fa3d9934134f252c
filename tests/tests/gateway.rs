//! The gateway as users run it: assembled from `hexon.toml` by the same code
//! as `hexon serve`, in front of real upstream servers on 127.0.0.1, driven
//! by real HTTP clients (hyper, curl). Every request crosses two sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::config::Config;
use hexon_core::httpsig::Verifier;
use hexon_core::jwt::JwtVerifier;
use hexon_core::keys::KeySet;
use hexon_proxy::body::{BoxBody, boxed, empty, full};
use hexon_proxy::test_util::{self, handler};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::*;

fn get(path: &str, token: Option<&str>) -> http::request::Builder {
    let mut b = Request::get(path).header("host", "app.example.com");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b
}

fn base_config(raw: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
login_url = "https://auth.example.com/login"

[[listener]]
bind = "127.0.0.1:0"

[[user]]
name = "alice"
email = "alice@example.com"
[[user]]
name = "bob"

[[group]]
name = "platform"
users = ["alice"]
[[group]]
name = "engineering"
groups = ["platform"]

[[route]]
name = "raw"
path = "/raw/*"
upstream = ["http://{raw}"]
[[route.allow]]
groups = ["engineering"]

[[route]]
name = "jwt-app"
path = "/jwt/*"
upstream = ["http://{raw}"]
identity = "jwt"
[[route.allow]]
groups = ["engineering"]

[[route]]
name = "bound"
path = "/bound/*"
upstream = ["http://{raw}"]
bind_request = true
[[route.allow]]
groups = ["engineering"]

[[route]]
name = "public"
path = "/public/*"
public = true
identity = "none"
upstream = ["http://{raw}"]
{extra}
"#
    )
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reaches_the_upstream_signed_and_spoofing_is_impossible() {
    let raw = start_upstream(header_echo()).await;
    let gw = Gw::start(&base_config(raw, "")).await;
    let alice = gw.token("alice").await;

    let req = get("/raw/reports?q=1", Some(&alice))
        .header("hexon-groups", "root")
        .header("hexon_user", "root")
        .header("x-forwarded-user", "root")
        .header("signature", "forged=:AA==:")
        .body(empty())
        .unwrap();
    let res = send(gw.addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let j = json_body(res).await;
    let h = &j["headers"];
    assert_eq!(h["hexon-user"], json!(["alice"]));
    assert_eq!(
        h["hexon-groups"],
        json!(["engineering, platform"]),
        "resolved groups, nested included; client value gone"
    );
    assert_eq!(h["hexon-route"], json!(["raw"]));
    assert!(h.get("hexon_user").is_none() && h.get("x-forwarded-user").is_none());
    assert!(
        h.get("authorization").is_none(),
        "the gateway's bearer token is not forwarded"
    );
    assert_eq!(h["x-request-id"], json!([rid]));
    assert_eq!(
        h["host"],
        json!(["app.example.com"]),
        "Host preserved: the signature covers it"
    );

    // The upstream's view verifies with the gateway's public key.
    let mut parts = Request::get(j["uri"].as_str().unwrap())
        .body(())
        .unwrap()
        .into_parts()
        .0;
    for (name, vals) in h.as_object().unwrap() {
        for v in vals.as_array().unwrap() {
            parts.headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
    }
    let v = Verifier::new(gw.keys(), ["app.example.com"])
        .verify_parts(&parts, hexon_core::UnixTime::now())
        .unwrap();
    assert_eq!(v.identity.username(), "alice");
    assert!(v.identity.in_group("engineering"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_become_the_right_responses() {
    let raw = start_upstream(header_echo()).await;
    let gw = Gw::start(&base_config(raw, "")).await;
    let bob = gw.token("bob").await;

    // Anonymous API client: 401 with a challenge.
    let res = send(gw.addr, get("/raw/x", None).body(empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(res.headers().contains_key("x-request-id"));

    // Anonymous browser: sent to login, with the way back.
    let res = send(
        gw.addr,
        get("/raw/x?y=1", None)
            .header("accept", "text/html")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let loc = res.headers()["location"].to_str().unwrap();
    assert!(
        loc.starts_with("https://auth.example.com/login?rd="),
        "{loc}"
    );

    // Authenticated but not allowed: 403 with the request id, no reason.
    let res = send(gw.addr, get("/raw/x", Some(&bob)).body(empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let j = json_body(res).await;
    assert_eq!(j["status"], 403);
    assert!(j["request_id"].as_str().unwrap().len() >= 16);
    assert!(
        !j.to_string().contains("engineering"),
        "no policy detail to clients: {j}"
    );

    // A forged or foreign token is a 401, never anonymous.
    let res = send(
        gw.addr,
        get("/public/x", Some("e30.e30.AAAA"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Public route: no credential, no identity headers.
    let res = send(
        gw.addr,
        get("/public/x", None)
            .header("hexon-user", "root")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    assert!(
        j["headers"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("hexon-") && !k.starts_with("signature"))
    );

    // The gateway publishes its keys.
    let res = send(
        gw.addr,
        get("/.well-known/jwks.json", None).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let jwks = json_body(res).await;
    assert_eq!(
        KeySet::from_jwks_json(&jwks.to_string()).unwrap(),
        gw.keys()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_routes_inject_a_bearer_token_for_the_upstream() {
    let raw = start_upstream(header_echo()).await;
    let gw = Gw::start(&base_config(raw, "")).await;
    let alice = gw.token("alice").await;
    let res = send(gw.addr, get("/jwt/x", Some(&alice)).body(empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    let auth = j["headers"]["authorization"][0].as_str().unwrap();
    let token = auth.strip_prefix("Bearer ").unwrap();
    assert_ne!(
        token, alice,
        "the upstream gets a token made for it, not the client's"
    );
    let v = JwtVerifier::new(gw.keys(), "hexon", "jwt-app")
        .verify(token, hexon_core::UnixTime::now())
        .unwrap();
    assert_eq!(v.identity.username(), "alice");
    assert!(j["headers"].get("signature").is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_with_request_id() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gw::start(&base_config(dead, "")).await;
    let res = send(gw.addr, get("/public/x", None).body(empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let j = json_body(res).await;
    assert_eq!(j["request_id"], rid);
    assert!(
        !j.to_string().contains(&dead.to_string()),
        "no upstream address leaks: {j}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_no_request() {
    let hits_a = Arc::new(AtomicUsize::new(0));
    let hits_b = Arc::new(AtomicUsize::new(0));
    let counting = |hits: Arc<AtomicUsize>| {
        handler(move |req: Request<Incoming>| {
            let hits = hits.clone();
            async move {
                count_body(req.into_body()).await;
                hits.fetch_add(1, Ordering::Relaxed);
                Response::new(full("ok"))
            }
        })
    };
    let a = start_upstream(counting(hits_a.clone())).await;
    let b = start_upstream(counting(hits_b.clone())).await;
    let gw = Gw::start(&base_config(a, "")).await;
    let alice = gw.token("alice").await;
    let config_a = gw.gateway.config().clone();
    let data = gw.dir.display().to_string();
    let config_b = Config::parse(&base_config(b, ""), &|n| {
        (n == "DATA").then(|| data.clone())
    })
    .unwrap();

    let addr = gw.addr;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let alice = alice.clone();
        clients.push(tokio::spawn(async move {
            // Keep-alive connection, many requests, every one must succeed.
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut failures = Vec::new();
            for i in 0..300 {
                tx.ready().await.unwrap();
                let res = tx
                    .send_request(
                        get(&format!("/raw/{i}"), Some(&alice))
                            .body(empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                if res.status() != StatusCode::OK {
                    failures.push(res.status());
                }
                res.into_body().collect().await.unwrap();
            }
            failures
        }));
    }
    for i in 0..60 {
        let next = if i % 2 == 0 { &config_b } else { &config_a };
        gw.gateway.reload(next).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in clients {
        let failures = within(c).await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during reload: {failures:?}"
        );
    }
    assert!(
        hits_a.load(Ordering::Relaxed) > 0 && hits_b.load(Ordering::Relaxed) > 0,
        "both configurations served"
    );
    assert_eq!(
        hits_a.load(Ordering::Relaxed) + hits_b.load(Ordering::Relaxed),
        1200
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_the_whole_stack() {
    let up = start_upstream(handler(|mut req: Request<Incoming>| async move {
        let signed = req.headers().contains_key("signature");
        test_util::echo_after_upgrade(&mut req);
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("x-signed", signed.to_string())
            .body(empty())
            .unwrap()
    }))
    .await;
    let gw = Gw::start(&base_config(up, "")).await;
    let alice = gw.token("alice").await;
    let req = get("/raw/chat", Some(&alice))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    let res = send(gw.addr, req).await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        res.headers()["x-signed"],
        "true",
        "the upgrade request carried the signed identity"
    );
    let mut io = TokioIo::new(within(hyper::upgrade::on(res)).await.unwrap());
    io.write_all(b"\x81\x05hello").await.unwrap();
    let mut back = [0u8; 7];
    within(io.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"\x81\x05hello");
    gw.stop().await;
}

struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A gateway whose route `grpc` sends `path` to the h2c upstream `up`
/// (engineering only).
async fn grpc_gateway(path: &str, up: SocketAddr) -> Gw {
    let extra = format!(
        r#"
[[route]]
name = "grpc"
path = "{path}"
upstream = ["h2c://{up}"]
[[route.allow]]
groups = ["engineering"]
"#
    );
    let dead = "127.0.0.1:9".parse().unwrap();
    Gw::start(&base_config(dead, &extra)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_keeps_trailers_through_the_whole_stack() {
    let up = start_upstream(handler(|req: Request<Incoming>| async move {
        assert_eq!(req.version(), http::Version::HTTP_2);
        let user = req
            .headers()
            .get("hexon-user")
            .map(|v| v.to_str().unwrap().to_owned());
        let n = count_body(req.into_body()).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = VecDeque::from([
            Frame::data(Bytes::from(format!("user={user:?} n={n}"))),
            Frame::trailers(trailers),
        ]);
        Response::builder()
            .header("content-type", "application/grpc")
            .body(boxed(Frames(frames)))
            .unwrap()
    }))
    .await;
    let gw = grpc_gateway("/pkg.Greeter/*", up).await;
    let alice = gw.token("alice").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, BoxBody>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://app.example.com/pkg.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {alice}"))
        .body(full(&b"\0\0\0\0\x05hello"[..]))
        .unwrap();
    let res = within(tx.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = within(res.into_body().collect()).await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "user=Some(\"alice\") n=10");
    gw.stop().await;
}

/// A real gRPC stack on both sides: a tonic client calls tonic's health
/// service (unary `Check`, server-streaming `Watch`) through the gateway, and
/// the tonic server verifies Hexon's signed identity with
/// `VerifyIdentityLayer` before any gRPC handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_and_server_through_the_whole_stack() {
    use tonic::Code;
    use tonic::metadata::MetadataValue;
    use tonic_health::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;

    const SVC: &str = "hexon.test.Orders";
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = backend.local_addr().unwrap();
    let gw = grpc_gateway("/grpc.health.v1.Health/*", up).await;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SVC, ServingStatus::Serving)
        .await;
    let verifier = Verifier::new(gw.keys(), ["app.example.com"]);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(hexon_core::verify::VerifyIdentityLayer::new(verifier))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(backend)),
    );

    // A client that dials `addr` and says `:authority = app.example.com`.
    async fn client(
        addr: SocketAddr,
        token: Option<String>,
    ) -> HealthClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    > {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .origin("http://app.example.com".parse().unwrap())
            .connect()
            .await
            .unwrap();
        let bearer = token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
        HealthClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(b) = &bearer {
                req.metadata_mut().insert("authorization", b.clone());
            }
            Ok(req)
        })
    }
    let check = |svc: &str| {
        tonic::Request::new(HealthCheckRequest {
            service: svc.to_owned(),
        })
    };

    let alice = gw.token("alice").await;
    let mut c = client(gw.addr, Some(alice)).await;
    // Unary call: the answer comes back with grpc-status 0 in the trailers.
    let res = within(c.check(check(SVC))).await.unwrap();
    assert_eq!(res.get_ref().status(), Wire::Serving);
    // An error status (a trailers-only response) crosses the gateway intact.
    let err = within(c.check(check("no.such.Service"))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Server streaming: each status change arrives while the stream is open,
    // so the gateway does not buffer the response.
    let mut watch = within(c.watch(check(SVC))).await.unwrap().into_inner();
    let first = within(watch.message()).await.unwrap().unwrap();
    assert_eq!(first.status(), Wire::Serving);
    reporter
        .set_service_status(SVC, ServingStatus::NotServing)
        .await;
    let second = within(watch.message()).await.unwrap().unwrap();
    assert_eq!(second.status(), Wire::NotServing);
    drop(watch);

    // The gateway's own answers map to gRPC codes a client understands.
    let mut anonymous = client(gw.addr, None).await;
    let err = within(anonymous.check(check(SVC))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let bob = gw.token("bob").await;
    let mut bob = client(gw.addr, Some(bob)).await;
    let err = within(bob.check(check(SVC))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // …with the request id to quote to an operator.
    assert!(err.metadata().get("x-request-id").is_some(), "{err:?}");

    // Straight to the backend, even with a valid gateway token, the call is
    // refused: only the gateway's signature opens it.
    let alice = gw.token("alice").await;
    let mut direct = client(up, Some(alice)).await;
    let err = within(direct.check(check(SVC))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    gw.stop().await;
}

/// 64 MiB produced on demand, never held in memory.
struct Generated(u64);

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        let n = self.0.min(64 * 1024);
        self.0 -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_stream_through_the_whole_stack() {
    const SIZE: u64 = 64 * 1024 * 1024;
    let raw = start_upstream(header_echo()).await;
    let gw = Gw::start(&base_config(raw, "")).await;
    let alice = gw.token("alice").await;
    let req = Request::post("/raw/upload")
        .header("host", "app.example.com")
        .header("authorization", format!("Bearer {alice}"))
        .body(boxed(Generated(SIZE)))
        .unwrap();
    let res = send(gw.addr, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_body(res).await["body_len"], SIZE);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_certificate_and_http2_with_curl() {
    let raw = start_upstream(header_echo()).await;
    let toml = base_config(raw, "")
        .replace(
            "[[listener]]\nbind = \"127.0.0.1:0\"",
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]",
        )
        .replace("[gateway]\n", "[gateway]\ndev = true\n");
    let gw = Gw::start(&toml).await;
    let alice = gw.token("alice").await;
    let ca = gw.dir.join("dev-tls").join("cert.pem");
    assert!(ca.exists(), "the dev certificate is kept in the data dir");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code} %{http_version}", "-H"])
        .arg(format!("Authorization: Bearer {alice}"))
        .arg(format!("https://localhost:{}/raw/tls", gw.addr.port()))
        .output()
        .await
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(
        status,
        "200 2",
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_str(body).unwrap();
    assert_eq!(j["headers"]["hexon-user"], json!(["alice"]));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_timeouts_and_body_limits_from_the_config() {
    let slow = start_upstream(handler(|req: Request<Incoming>| async move {
        let n = count_body(req.into_body()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full(format!("{n}")))
    }))
    .await;
    let extra = format!(
        r#"
[[route]]
name = "slow"
path = "/slow/*"
public = true
identity = "none"
upstream = ["http://{slow}"]
response_timeout = "1s"
max_body_bytes = 1000
"#
    );
    let dead = "127.0.0.1:9".parse().unwrap();
    let gw = Gw::start(&base_config(dead, &extra)).await;
    let res = send(gw.addr, get("/slow/x", None).body(empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(res.headers().contains_key("x-request-id"));
    let big = Request::post("/slow/x")
        .header("host", "app.example.com")
        .body(full(vec![b'x'; 1001]))
        .unwrap();
    let res = send(gw.addr, big).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_path_parameters_and_identity_trailers_are_refused() {
    let trailers_seen = handler(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers: Vec<String> = collected
            .trailers()
            .map(|t| t.keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default();
        let declared = parts
            .headers
            .get("trailer")
            .map(|v| v.to_str().unwrap().to_owned());
        Response::new(full(
            json!({"trailers": trailers, "declared": declared}).to_string(),
        ))
    });
    let raw = start_upstream(trailers_seen).await;
    let extra = r#"
[[route]]
name = "admin-vhost"
host = "admin.example.com"
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
users = ["nobody"]
"#;
    let gw = Gw::start(&base_config(raw, extra)).await;
    let alice = gw.token("alice").await;

    // Absolute-form target naming one host, Host naming another: 400.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET http://app.example.com/public/x HTTP/1.1\r\nHost: admin.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    within(tcp.read_to_string(&mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // `;` path parameters would let `/admin;x` dodge an `/admin/*` route on
    // servlet backends: refused.
    let res = send(
        gw.addr,
        get("/raw/admin;x/users", Some(&alice))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Identity headers sent as trailers never reach the upstream.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "POST /raw/t HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {alice}\r\n\
         Trailer: hexon-user, x-checksum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         3\r\nabc\r\n0\r\nHexon-User: root\r\nX-Checksum: 1\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    within(tcp.read_to_string(&mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    let json_start = body.find('{').unwrap();
    let json_end = body.rfind('}').unwrap();
    let j: Value = serde_json::from_str(&body[json_start..=json_end]).unwrap();
    assert_eq!(j["trailers"], json!(["x-checksum"]), "{j}");
    assert_eq!(j["declared"], json!("x-checksum"), "{j}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_the_configuration_it_was_authorized_with() {
    let named = |name: &'static str| {
        handler(move |req: Request<Incoming>| async move {
            count_body(req.into_body()).await;
            Response::new(full(name))
        })
    };
    let a = start_upstream(named("A")).await;
    let b = start_upstream(named("B")).await;
    // `bind_body` makes the gateway read the whole body between authorizing
    // and forwarding: the client decides how long that takes.
    let with = |up: SocketAddr| {
        base_config(up, "").replace(
            "name = \"raw\"\npath = \"/raw/*\"",
            "name = \"raw\"\npath = \"/raw/*\"\nbind_body = true",
        )
    };
    let gw = Gw::start(&with(a)).await;
    let alice = gw.token("alice").await;
    let data = gw.dir.display().to_string();
    let config_b = Config::parse(&with(b), &|n| (n == "DATA").then(|| data.clone())).unwrap();

    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /raw/x HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {alice}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Let the gateway authorize and start reading the body, then reload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.gateway.reload(&config_b).unwrap();
    tcp.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    within(tcp.read_to_string(&mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with('A'),
        "authorized under A, forwarded under A: {out}"
    );

    // New requests use B.
    let res = send(
        gw.addr,
        Request::post("/raw/y")
            .header("host", "app.example.com")
            .header("authorization", format!("Bearer {alice}"))
            .body(full("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(
        within(res.into_body().collect()).await.unwrap().to_bytes(),
        "B"
    );
    gw.stop().await;
}

/// Write `bytes` on a new connection and read until the gateway closes it.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    within(tcp.read_to_end(&mut reply)).await.unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_limits_and_timeouts_from_the_config() {
    let raw = start_upstream(header_echo()).await;
    let config = base_config(raw, "").replacen(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nmax_header_bytes = 8192\nmax_headers = 8\nheader_read_timeout = \"1s\"\nkeep_alive = false",
        1,
    );
    let gw = Gw::start(&config).await;
    // A small request passes the listener (and meets the policy: 401).
    let ok = raw_exchange(
        gw.addr,
        b"GET /raw/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 401"), "{ok}");
    // keep_alive = false: the gateway closes after one response.
    assert!(
        ok.to_ascii_lowercase().contains("connection: close"),
        "{ok}"
    );
    // Too many header fields, a too large head: refused by the listener.
    let mut many = String::from("GET /public/x HTTP/1.1\r\nHost: app.example.com\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw_exchange(gw.addr, many.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let big = format!(
        "GET /public/x HTTP/1.1\r\nHost: app.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let reply = raw_exchange(gw.addr, big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // A head that never ends is cut off (header_read_timeout), not kept open.
    let reply = raw_exchange(
        gw.addr,
        b"GET /public/x HTTP/1.1\r\nHost: app.example.com\r\n",
    )
    .await;
    assert!(!reply.starts_with("HTTP/1.1 2"), "{reply}");
    // A connection that sends nothing at all is closed too (before hyper
    // has even chosen HTTP/1 or HTTP/2), instead of holding a slot forever.
    let reply = raw_exchange(gw.addr, b"").await;
    assert_eq!(reply, "");
    gw.stop().await;
}
