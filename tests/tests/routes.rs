//! Routes kept in the durable store, through the real gateway and its admin
//! API: created, changed and deleted at runtime (no restart), validated with
//! the file's routes before they are stored, kept across restarts, granted
//! to API clients like the file's routes, and never able to override the
//! file. The cluster case (two nodes, PostgreSQL + NATS) is in `state.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::net::SocketAddr;

use hexon_core::config::Config;
use hexon_proxy::body::{BoxBody, empty};
use http::{Request, StatusCode};
use serde_json::{Value, json};

mod common;
use common::*;

/// One file route (`app`, `/app/*`) to `up`; the store routes of each test
/// go to `other` (an upstream that says who it is).
fn config(up: SocketAddr, extra_groups: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
admin_bind = "127.0.0.1:0"

[[listener]]
bind = "127.0.0.1:0"

[[user]]
name = "alice"
[[user]]
name = "bob"

[[group]]
name = "admins"
users = ["alice"]
[[group]]
name = "staff"
users = ["alice", "bob"]
{extra_groups}

[[route]]
name = "app"
host = "*"
path = "/app/*"
upstream = ["http://{up}"]
[[route.allow]]
groups = ["staff"]
"#
    )
}

const FINANCE: &str = "[[group]]\nname = \"finance\"\nusers = [\"bob\"]\n";

/// An upstream answering `200 <name>` with the path it saw.
async fn named_upstream(name: &'static str) -> SocketAddr {
    start_upstream(hexon_proxy::test_util::handler(move |req| async move {
        let body = format!("{name} {}", req.uri().path());
        http::Response::new(hexon_proxy::body::full(body))
    }))
    .await
}

fn get(path: &str, token: &str) -> Request<BoxBody> {
    Request::get(path)
        .header("host", "svc.example.com")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

async fn text(gw: &Gw, req: Request<BoxBody>) -> (StatusCode, String) {
    use http_body_util::BodyExt as _;
    let res = send(gw.addr, req).await;
    let status = res.status();
    let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn route_json(name: &str, path: &str, up: SocketAddr, group: &str) -> Value {
    json!({
        "name": name,
        "path": path,
        "upstream": [format!("http://{up}")],
        "allow": [{"groups": [group]}],
    })
}

fn messages(j: &Value) -> Vec<String> {
    j["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list in {j}"))
        .iter()
        .map(|e| format!("{}: {}", e["location"].as_str().unwrap(), e["message"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routes_are_managed_at_runtime_and_validated_with_the_file() {
    let app = named_upstream("app").await;
    let billing = named_upstream("billing").await;
    let text_cfg = config(app, FINANCE);
    let gw = Gw::start(&text_cfg).await;
    let (alice, bob) = (gw.token("alice").await, gw.token("bob").await);
    let a = Some(alice.as_str());

    // Before: /billing/ has no route (refused, never proxied).
    assert_eq!(
        text(&gw, get("/billing/x", &bob)).await.0,
        StatusCode::FORBIDDEN
    );

    // Only admins manage routes.
    let (s, _) = admin_call(
        &gw,
        Some(&bob),
        "POST",
        "/api/v1/routes",
        Some(route_json("billing", "/billing/*", billing, "finance")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Create: served at once, by the store route's upstream and policy.
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/routes",
        Some(route_json("billing", "/billing/*", billing, "finance")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    assert_eq!(j["applied"], true);
    assert_eq!(j["version"], 1);
    assert_eq!(
        text(&gw, get("/billing/x", &bob)).await,
        (StatusCode::OK, "billing /billing/x".into())
    );
    assert_eq!(
        text(&gw, get("/billing/x", &alice)).await.0,
        StatusCode::FORBIDDEN,
        "alice is not in finance"
    );
    assert_eq!(
        text(&gw, get("/app/y", &alice)).await,
        (StatusCode::OK, "app /app/y".into()),
        "the file's route is untouched"
    );

    // The file's routes are matched first: a store route cannot take their
    // requests, however specific. One inside a file route is refused...
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/routes",
        Some(json!({"name": "shadow", "path": "/app/admin/*", "public": true, "upstream": [format!("http://{billing}")]})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("route \"app\" of hexon.toml"),
        "{j}"
    );
    // ...and one that only overlaps (an exact host, more specific than the
    // file's `*`) serves what the file leaves free, never the file's paths.
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/routes",
        Some(json!({"name": "svc-public", "host": "svc.example.com", "path": "/*", "public": true, "identity": "none", "upstream": [format!("http://{billing}")]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let anonymous = |path: &str| {
        Request::get(path)
            .header("host", "svc.example.com")
            .body(empty())
            .unwrap()
    };
    assert_eq!(
        text(&gw, anonymous("/free")).await,
        (StatusCode::OK, "billing /free".into())
    );
    let (s, _) = text(&gw, anonymous("/app/admin/x")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the file's app route decides");
    assert_eq!(
        text(&gw, get("/app/admin/x", &bob)).await,
        (StatusCode::OK, "app /app/admin/x".into())
    );
    let (s, _) = admin_call(&gw, a, "DELETE", "/api/v1/routes/svc-public", None).await;
    assert_eq!(s, StatusCode::OK);

    // Listed with its source; shown whole.
    let (_, j) = admin_call(&gw, a, "GET", "/api/v1/routes", None).await;
    let sources: Vec<(String, String)> = j["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().into(),
                r["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("app".to_owned(), "file".to_owned()),
            ("billing".to_owned(), "store".to_owned())
        ]
    );
    let (s, j) = admin_call(&gw, a, "GET", "/api/v1/routes/billing", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["source"], "store");
    assert_eq!(j["route"]["path"], "/billing/*");
    assert_eq!(j["route"]["allow"][0]["groups"], json!(["finance"]));
    let (s, j) = admin_call(&gw, a, "GET", "/api/v1/routes/app", None).await;
    assert_eq!((s, j["source"].as_str()), (StatusCode::OK, Some("file")));
    let (s, _) = admin_call(&gw, a, "GET", "/api/v1/routes/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Refused before anything is stored, each with what to fix.
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        // Same name as the file's route.
        (
            route_json("app", "/other/*", billing, "staff"),
            StatusCode::CONFLICT,
            "hexon.toml",
        ),
        // Same name as a store route (POST creates only).
        (
            route_json("billing", "/b2/*", billing, "staff"),
            StatusCode::CONFLICT,
            "PUT",
        ),
        // A group nobody defined.
        (
            route_json("ghost", "/ghost/*", billing, "nobody"),
            StatusCode::BAD_REQUEST,
            "route \"ghost\".allow[0].groups[0]",
        ),
        // Files on the gateway's disk are the file's business.
        (
            json!({"name": "tls", "path": "/t/*", "upstream": ["https://10.0.0.1"], "upstream_ca": "/etc/shadow"}),
            StatusCode::BAD_REQUEST,
            "route.upstream_ca",
        ),
        // Not the [[route]] schema.
        (
            json!({"name": "typo", "path": "/t/*", "upstreams": ["http://x"]}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"name": "bad", "path": "/t/*", "upstream": ["ftp://x"]}),
            StatusCode::BAD_REQUEST,
            "upstream[0]",
        ),
        // Names are URL segments of this API.
        (
            json!({"name": "a/b", "path": "/t/*"}),
            StatusCode::BAD_REQUEST,
            "route.name",
        ),
        (
            json!({"name": "..", "path": "/t/*"}),
            StatusCode::BAD_REQUEST,
            "route.name",
        ),
        // What only the upstream client refuses is caught before storing
        // (the tables are built first).
        (
            json!({"name": "frag", "path": "/f/*", "upstream": ["http://127.0.0.1:9/#x"]}),
            StatusCode::BAD_REQUEST,
            "route \"frag\".upstream",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, j) = admin_call(&gw, a, "POST", "/api/v1/routes", Some(body.clone())).await;
        assert_eq!(s, status, "{body} -> {j}");
        assert!(
            j["error"].as_str().unwrap().contains(needle),
            "{body}: {needle:?} not in {j}"
        );
    }
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/routes",
        Some(route_json("ghost", "/ghost/*", billing, "nobody")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        messages(&j)
            .iter()
            .any(|m| m.starts_with("route \"ghost\".allow[0].groups[0]")),
        "{j}"
    );
    let (s, _) = admin_call(&gw, a, "GET", "/api/v1/routes/ghost", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused route is not stored");
    // Malformed and oversized bodies.
    let (s, _) = admin_call(&gw, a, "POST", "/api/v1/routes", Some(json!("["))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let huge = json!({"name": "huge", "path": "/h/*", "methods": vec!["GET"; 10_000]});
    let (s, _) = admin_call(&gw, a, "POST", "/api/v1/routes", Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    // The file's routes are not the API's to change.
    let (s, j) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/routes/app",
        Some(route_json("app", "/app/*", billing, "staff")),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{j}");
    let (s, _) = admin_call(&gw, a, "DELETE", "/api/v1/routes/app", None).await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Replace: a new policy applies at once.
    let (s, j) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/routes/billing",
        Some(json!({
            "path": "/billing/*",
            "upstream": [format!("http://{billing}")],
            "allow": [{"users": ["alice"]}],
        })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["version"], 2);
    assert_eq!(text(&gw, get("/billing/x", &alice)).await.0, StatusCode::OK);
    assert_eq!(
        text(&gw, get("/billing/x", &bob)).await.0,
        StatusCode::FORBIDDEN
    );
    // The body may not rename the route.
    let (s, _) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/routes/billing",
        Some(route_json("other", "/billing/*", billing, "staff")),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/routes/missing",
        Some(route_json("missing", "/m/*", billing, "staff")),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // API clients are granted store routes like the file's.
    let (s, _) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients",
        Some(json!({"id": "etl", "name": "etl"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/clients/etl/credentials",
        Some(json!({"kind": "api_key"})),
    )
    .await;
    let key = j["secret"].as_str().unwrap().to_owned();
    let with_key = || {
        Request::get("/billing/report")
            .header("host", "svc.example.com")
            .header("x-api-key", key.as_str())
            .body(empty())
            .unwrap()
    };
    assert_eq!(text(&gw, with_key()).await.0, StatusCode::FORBIDDEN);
    let (s, _) = admin_call(
        &gw,
        a,
        "PUT",
        "/api/v1/clients/etl/permissions",
        Some(json!([{"route": "billing", "methods": ["GET"]}])),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        text(&gw, with_key()).await,
        (StatusCode::OK, "billing /billing/report".into())
    );

    // Every change is audited, refusals included.
    let audit = gw
        .gateway
        .state()
        .durable
        .audit_after(0, 1000)
        .await
        .unwrap();
    let kinds: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.event.kind.starts_with("route."))
        .map(|e| (e.event.kind.as_str(), e.event.outcome.as_str()))
        .collect();
    assert!(kinds.contains(&("route.created", "success")), "{kinds:?}");
    assert!(kinds.contains(&("route.created", "failure")), "{kinds:?}");
    assert!(kinds.contains(&("route.updated", "success")), "{kinds:?}");

    // Kept across a restart (SQLite).
    let gw = gw.restart(&text_cfg).await;
    let alice = gw.token("alice").await;
    let a = Some(alice.as_str());
    assert_eq!(
        text(&gw, get("/billing/x", &alice)).await,
        (StatusCode::OK, "billing /billing/x".into())
    );

    // A file reload that clashes with a store route is refused and the
    // running table stays; the message names the route.
    let clashing = Config::parse(
        &format!(
            "{}\n[[route]]\nname = \"billing\"\npath = \"/elsewhere/*\"\nupstream = [\"http://{app}\"]\n[[route.allow]]\nauthenticated = true\n",
            text_cfg.replace("${DATA}", &gw.dir.display().to_string())
        ),
        &|_| None,
    )
    .unwrap();
    let err = gw.gateway.reload(&clashing).unwrap_err().to_string();
    assert!(
        err.contains("billing") && err.contains("durable store"),
        "{err}"
    );
    assert_eq!(text(&gw, get("/billing/x", &alice)).await.0, StatusCode::OK);

    // Delete: gone at once (no route: refused).
    let (s, j) = admin_call(&gw, a, "DELETE", "/api/v1/routes/billing", None).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(
        text(&gw, get("/billing/x", &alice)).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, _) = admin_call(&gw, a, "DELETE", "/api/v1/routes/billing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    gw.stop().await;
}

/// A store route that no longer fits the file (its group was removed from
/// hexon.toml while the gateway was down) keeps the gateway from starting,
/// with the command that repairs it; the route never runs without the
/// check it was stored with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_route_that_no_longer_fits_stops_the_start() {
    let app = named_upstream("app").await;
    let gw = Gw::start(&config(app, FINANCE)).await;
    let alice = gw.token("alice").await;
    let (s, j) = admin_call(
        &gw,
        Some(&alice),
        "POST",
        "/api/v1/routes",
        Some(route_json("billing", "/billing/*", app, "finance")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let dir = gw.dir.clone();
    if let Some(r) = gw.running {
        r.shutdown(std::time::Duration::from_secs(2)).await;
    }
    drop(gw.gateway);
    let data = dir.display().to_string();
    let without_finance =
        Config::parse(&config(app, ""), &|n| (n == "DATA").then(|| data.clone())).unwrap();
    let err = match hexon_proxy::gateway::Gateway::build(without_finance).await {
        Ok(_) => panic!("started with a store route whose group is gone"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("route \"billing\".allow[0].groups[0]") && err.contains("hexon routes delete"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An upstream that counts the TCP connections it accepts.
async fn counting_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(hexon_proxy::body::full(
                        "counted",
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A route change rebuilds the table but keeps the upstream groups (and
/// pooled connections) of the routes it leaves alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_keeps_the_other_routes_connections() {
    use std::sync::atomic::Ordering;
    let (app, accepted) = counting_upstream().await;
    let other = named_upstream("other").await;
    // One connection thread: one pool per upstream, whichever thread a
    // client connection lands on.
    let one_thread = |text: String| {
        text.replace(
            "audit = \"off\"\n",
            "audit = \"off\"\nconnection_threads = 1\n",
        )
    };
    let gw = Gw::start(&one_thread(config(app, FINANCE))).await;
    let alice = gw.token("alice").await;
    let a = Some(alice.as_str());
    // The token's first request goes through the stack (which verifies it
    // and signs); the next one takes the express lane. Each path keeps its
    // own connections to the upstream: two.
    let through_stack = |path: &str| {
        let mut req = get(path, &alice);
        // A cookie declines the express lane.
        req.headers_mut()
            .insert("cookie", http::HeaderValue::from_static("k=v"));
        req
    };
    for path in ["/app/1", "/app/1b"] {
        assert_eq!(
            text(&gw, get(path, &alice)).await,
            (StatusCode::OK, "counted".into())
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let (s, j) = admin_call(
        &gw,
        a,
        "POST",
        "/api/v1/routes",
        Some(route_json("reports", "/reports/*", other, "staff")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    for req in [get("/app/2", &alice), through_stack("/app/2")] {
        assert_eq!(text(&gw, req).await, (StatusCode::OK, "counted".into()));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the app route's pooled connections survived the change"
    );
    // A change of the route itself builds its group afresh.
    let data = gw.dir.display().to_string();
    let changed = Config::parse(
        &one_thread(config(app, FINANCE))
            .replace("groups = [\"staff\"]", "groups = [\"staff\", \"admins\"]"),
        &|n| (n == "DATA").then(|| data.clone()),
    )
    .unwrap();
    gw.gateway.reload(&changed).unwrap();
    assert_eq!(
        text(&gw, get("/app/3", &alice)).await,
        (StatusCode::OK, "counted".into())
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "a new group, a new pool"
    );
    gw.stop().await;
}

/// The API-key query parameter is read by layers built at start: after a
/// reload that sets it, a store route may not list `api_key_query` until
/// the gateway restarts (its key would reach the upstream unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_route_cannot_rely_on_a_query_parameter_set_after_start() {
    let app = named_upstream("app").await;
    let text_cfg = config(app, FINANCE);
    let gw = Gw::start(&text_cfg).await;
    let alice = gw.token("alice").await;
    let data = gw.dir.display().to_string();
    let with_param = Config::parse(
        &text_cfg.replace(
            "audit = \"off\"\n",
            "audit = \"off\"\napi_key_query_param = \"api_key\"\n",
        ),
        &|n| (n == "DATA").then(|| data.clone()),
    )
    .unwrap();
    gw.gateway.reload(&with_param).unwrap();
    let q = json!({
        "name": "q", "path": "/q/*", "upstream": [format!("http://{app}")],
        "credentials": ["api_key_query"], "allow": [{"authenticated": true}],
    });
    let (s, j) = admin_call(&gw, Some(&alice), "POST", "/api/v1/routes", Some(q)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    assert!(
        messages(&j)
            .iter()
            .any(|m| m.starts_with("route \"q\".credentials") && m.contains("restart")),
        "{j}"
    );
    gw.stop().await;
}
