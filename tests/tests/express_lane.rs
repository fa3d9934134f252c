//! The express lane against the stack: one gateway, two listeners — one
//! with the express lane (the default), one without (`express = false`) —
//! in front of an upstream that records every request head. Each request
//! is sent to the stack first (which verifies the token and signs, filling
//! the caches the lane reads), then to the express listener. The upstream
//! must receive the same request (the same fields with the same values; the
//! request id is the gateway's own on each), the client the same answer,
//! and the express counter (`hexon_express_requests_total`) must show which
//! requests the lane took — a lane that declined everything would pass the
//! comparison and fail here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use hexon_proxy::test_util::{Answer, RawConn};

mod common;
use common::*;

fn config(upstream: SocketAddr, audit: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "{audit}"
admin_bind = "127.0.0.1:0"

[[listener]]
name = "express"
bind = "127.0.0.1:0"

[[listener]]
name = "stack"
bind = "127.0.0.1:0"
express = false

[[user]]
name = "alice"
[[user]]
name = "bob"
[[group]]
name = "eng"
users = ["alice"]

[[route]]
name = "signed"
path = "/signed/*"
upstream = ["http://{upstream}/base"]
[[route.allow]]
groups = ["eng"]

[[route]]
name = "jwt"
path = "/jwt/*"
identity = "jwt"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["eng"]

[[route]]
name = "plain"
path = "/plain/*"
identity = "none"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["eng"]

[[route]]
name = "slow"
path = "/slow/*"
response_timeout = "1s"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["eng"]

[[route]]
name = "down"
path = "/down/*"
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
groups = ["eng"]
"#
    )
}

/// A request head as sent upstream, compared by meaning: the request line,
/// and each field name (lower case) with its values in order. HTTP gives
/// the order of differently named fields no meaning, and the two paths
/// write them in different orders (the stack's header map regroups them).
#[derive(Debug, PartialEq, Eq)]
struct Head {
    line: String,
    fields: BTreeMap<String, Vec<String>>,
}

fn head_of(raw: &[u8]) -> Head {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap().to_owned();
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (n, v) = l.split_once(':').unwrap();
        fields
            .entry(n.to_ascii_lowercase())
            .or_default()
            .push(v.trim().to_owned());
    }
    Head { line, fields }
}

/// An answer compared by meaning (fields by name, as above), with its
/// request id taken out (each path makes its own) and the gateway's own
/// `date` values (the moment differs) as `<now>`.
fn normalized(a: Answer) -> (u16, BTreeMap<String, Vec<String>>, String, Option<String>) {
    let id = a.header("x-request-id").map(str::to_owned);
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in &a.headers {
        let v = if n == "date" && !v.starts_with("Sun, 06 Dec 2026 00:00:00") {
            "<now>".to_owned()
        } else {
            v.clone()
        };
        if n != "x-request-id" {
            fields.entry(n.clone()).or_default().push(v);
        }
    }
    let mut body = a.text();
    if let Some(id) = &id {
        body = body.replace(id.as_str(), "<request id>");
    }
    (a.status, fields, body, id)
}

async fn express_count(admin: SocketAddr) -> u64 {
    let mut c = RawConn::open(admin).await.unwrap();
    let a = c
        .exchange(
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            "GET",
        )
        .await
        .unwrap();
    a.text()
        .lines()
        .find_map(|l| l.strip_prefix("hexon_express_requests_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_express_lane_forwards_what_the_stack_forwards_and_answers_alike() {
    let (upstream, rec) = recording_upstream().await;
    let audit = std::env::temp_dir().join(format!("hexon-express-audit-{}", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let gw = Gw::start(&config(upstream, &audit.display().to_string())).await;
    let running = gw.running.as_ref().unwrap();
    let (express, stack) = (running.listeners[0], running.listeners[1]);
    let admin = running.admin.unwrap();
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;
    let auth = |t: &str| format!("Authorization: Bearer {t}\r\n");
    // Sessions as the login service stores them: a session handle, the
    // application host as audience, an idle timeout.
    let now = hexon_core::UnixTime::now();
    let later = now.saturating_add(std::time::Duration::from_secs(600));
    for (cookie, subject, groups, audience) in [
        ("s-alice", "alice", vec!["eng"], "app.example.com"),
        ("s-bob", "bob", vec![], "app.example.com"),
        ("s-elsewhere", "alice", vec!["eng"], "other.example.com"),
    ] {
        let identity = hexon_core::Identity::builder(subject, subject)
            .groups(groups)
            .session(format!("h-{cookie}"))
            .audience(audience)
            .build()
            .unwrap();
        let session = hexon_proxy::authn::Session::new(identity, later)
            .with_idle_timeout(std::time::Duration::from_secs(3600));
        gw.gateway
            .sessions()
            .insert(cookie, &session, now)
            .await
            .unwrap();
    }
    let session = |id: &str| format!("Cookie: __Host-hexon-session={id}\r\n");

    // (method, target, extra fields, taken by the lane)
    let cases: Vec<(&str, String, String, bool)> = vec![
        // Signed identity; every kind of spoofed identity and forwarding
        // field dropped, the client's request id replaced.
        (
            "GET",
            "/signed/a?q=1&r=%2F".into(),
            format!(
                "{}Hexon-User: root\r\nhexon_groups: admin\r\nSignature: sig1=:AAAA:\r\nSignature-Input: sig1=()\r\nX-Forwarded-For: 10.1.2.3\r\nForwarded: for=10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer.example\r\nX-Request-Id: mine\r\n",
                auth(&alice)
            ),
            true,
        ),
        ("HEAD", "/signed/h".into(), auth(&alice), true),
        ("GET", "/signed/chunked".into(), auth(&alice), true),
        // A body that is not read with its head (the streamed path), an
        // empty one, none at all.
        ("GET", "/signed/late".into(), auth(&alice), true),
        ("GET", "/signed/empty".into(), auth(&alice), true),
        ("HEAD", "/signed/empty".into(), auth(&alice), true),
        ("GET", "/signed/nocontent".into(), auth(&alice), true),
        // Hop-by-hop fields naming nothing else: removed on the lane.
        (
            "GET",
            "/signed/hop".into(),
            format!(
                "{}Connection: keep-alive\r\nKeep-Alive: timeout=1\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\nX-Kept: yes\r\n",
                auth(&alice)
            ),
            true,
        ),
        (
            "GET",
            "/signed/many".into(),
            format!(
                "{}X-Dup: 1\r\nx-dup: 2\r\nX-DUP: 3\r\n{}",
                auth(&alice),
                (0..40)
                    .map(|i| format!("X-H{i}: v{i}\r\n"))
                    .collect::<String>()
            ),
            true,
        ),
        (
            "GET",
            "/signed/%7Euser/a%20b".into(),
            format!("{}Accept: */*\r\n", auth(&alice)),
            true,
        ),
        ("GET", "/plain/p".into(), auth(&alice), true),
        // Sessions, and the cookies that come with them: the session
        // cookie never goes upstream, the others do (as one field).
        (
            "GET",
            "/signed/session".into(),
            "Cookie: a=1; __Host-hexon-session=s-alice\r\nCookie: b=2;c\r\n".into(),
            true,
        ),
        (
            "GET",
            "/signed/only-session".into(),
            session("s-alice"),
            true,
        ),
        ("HEAD", "/plain/session".into(), session("s-alice"), true),
        (
            "GET",
            "/signed/cookie".into(),
            format!("{}Cookie: a=b\r\n", auth(&alice)),
            true,
        ),
        // A bearer token decides before a session cookie, which is dropped.
        (
            "GET",
            "/signed/both".into(),
            format!(
                "{}Cookie: __Host-hexon-session=s-bob; c=3\r\n",
                auth(&alice)
            ),
            true,
        ),
        // The upstream closes after answering: the next request opens another.
        ("GET", "/signed/close".into(), auth(&alice), true),
        ("GET", "/signed/after-close".into(), auth(&alice), true),
        // Upstream down: 502 with the request id, JSON and HTML.
        ("GET", "/down/x".into(), auth(&alice), true),
        (
            "GET",
            "/down/y".into(),
            format!("{}Accept: text/html\r\n", auth(&alice)),
            true,
        ),
        // No answer in time: 504 with the request id.
        ("GET", "/slow/slow".into(), auth(&alice), true),
        // Declined, served by the stack on both listeners.
        (
            "GET",
            "/signed/named".into(),
            format!("{}Connection: x-secret\r\nX-Secret: 1\r\n", auth(&alice)),
            false,
        ),
        ("GET", "/jwt/x".into(), auth(&alice), false),
        ("DELETE", "/signed/d".into(), auth(&alice), false),
        ("GET", "/signed/bob".into(), auth(&bob), false),
        ("GET", "/signed/broken".into(), auth("e30.e30.AAAA"), false),
        ("GET", "/signed/none".into(), String::new(), false),
        (
            "GET",
            "/signed/crumbs".into(),
            "Cookie: a=1\r\n".into(),
            false,
        ),
        ("GET", "/signed/session-bob".into(), session("s-bob"), false),
        (
            "GET",
            "/signed/session-elsewhere".into(),
            session("s-elsewhere"),
            false,
        ),
        (
            "GET",
            "/signed/session-unknown".into(),
            session("s-nope"),
            false,
        ),
        (
            "GET",
            "/signed/session-twice".into(),
            "Cookie: __Host-hexon-session=s-alice; __Host-hexon-session=s-alice\r\n".into(),
            false,
        ),
        ("GET", "/nowhere".into(), auth(&alice), false),
        ("GET", "/signed/./dot".into(), auth(&alice), false),
        ("GET", "/.well-known/jwks.json".into(), auth(&alice), false),
    ];
    for (method, target, extra, taken) in &cases {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: raw\r\n{extra}\r\n"
        );
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        let mut lane = Vec::new();
        for addr in [stack, express] {
            let before = rec.heads.lock().unwrap().len();
            let count = express_count(admin).await;
            let mut c = RawConn::open(addr).await.unwrap();
            let answer = c.exchange(request.as_bytes(), method).await.unwrap();
            lane.push(express_count(admin).await - count);
            let got = rec.heads.lock().unwrap().get(before..).unwrap().to_vec();
            assert!(got.len() <= 1, "{request:?}: {got:?}");
            seen.push(got.first().map(|h| head_of(h)));
            answers.push(normalized(answer));
        }
        assert_eq!(lane, [0, u64::from(*taken)], "lane taken for {request:?}");
        // Each path's own request id went upstream and came back.
        for (s, a) in seen.iter_mut().zip(&answers) {
            if let Some(s) = s {
                let id = s.fields.remove("x-request-id").unwrap_or_default();
                assert_eq!(id.len(), 1, "{request:?}");
                assert_eq!(a.3.as_deref(), Some(id[0].as_str()), "{request:?}");
                assert_ne!(id[0], "mine");
            }
        }
        assert_eq!(seen[0], seen[1], "upstream request for {request:?}");
        let (stack_answer, express_answer) = (&answers[0], &answers[1]);
        assert_eq!(
            (&stack_answer.0, &stack_answer.1, &stack_answer.2),
            (&express_answer.0, &express_answer.1, &express_answer.2),
            "answer to {request:?}"
        );
        assert!(express_answer.3.is_some(), "{request:?}: no request id");
        // Not two equal mistakes: what each case is about holds.
        let head = seen[1].as_ref();
        let field = |n: &str| head.and_then(|h| h.fields.get(n)).cloned();
        match target.as_str() {
            "/signed/a?q=1&r=%2F" => {
                assert_eq!(express_answer.0, 200);
                assert_eq!(head.unwrap().line, "GET /base/signed/a?q=1&r=%2F HTTP/1.1");
                assert_eq!(field("hexon-user"), Some(vec!["alice".to_owned()]));
                assert_eq!(field("hexon_groups"), None);
                assert_eq!(field("x-forwarded-for"), Some(vec!["127.0.0.1".to_owned()]));
                assert_eq!(
                    field("x-forwarded-host"),
                    Some(vec!["app.example.com".to_owned()])
                );
                assert_eq!(
                    field("forwarded"),
                    Some(vec![
                        "for=127.0.0.1;proto=http;host=app.example.com".to_owned()
                    ])
                );
                assert!(field("signature").unwrap()[0].starts_with("hexon="));
                assert_eq!(field("authorization"), None);
                assert_eq!(express_answer.1.get("x-up"), Some(&vec!["l".to_owned()]));
                assert_eq!(express_answer.1.get("x-hop"), None);
                assert_eq!(express_answer.2, "ok");
            }
            "/signed/h" => {
                assert_eq!(
                    express_answer.1.get("content-length"),
                    Some(&vec!["2".to_owned()])
                );
                assert_eq!(express_answer.2, "");
            }
            "/signed/late" => {
                assert_eq!(express_answer.0, 200);
                assert_eq!(express_answer.2, "later");
                assert_eq!(express_answer.1.get("x-up"), Some(&vec!["t".to_owned()]));
            }
            "/signed/empty" => {
                assert_eq!(express_answer.0, 200);
                assert_eq!(express_answer.2, "");
                assert_eq!(
                    express_answer.1.get("content-length"),
                    Some(&vec!["0".to_owned()])
                );
            }
            "/signed/nocontent" => {
                assert_eq!(express_answer.0, 204);
                assert_eq!(express_answer.2, "");
                assert_eq!(express_answer.1.get("content-length"), None);
                assert_eq!(express_answer.1.get("x-up"), Some(&vec!["n".to_owned()]));
            }
            "/signed/chunked" => {
                assert_eq!(express_answer.2, "abcde");
                assert_eq!(
                    express_answer.1.get("transfer-encoding"),
                    Some(&vec!["chunked".to_owned()])
                );
            }
            "/signed/hop" => {
                for n in [
                    "connection",
                    "keep-alive",
                    "proxy-connection",
                    "proxy-authorization",
                ] {
                    assert_eq!(field(n), None, "{n}");
                }
                assert_eq!(field("x-kept"), Some(vec!["yes".to_owned()]));
            }
            "/signed/many" => {
                assert_eq!(
                    field("x-dup"),
                    Some(vec!["1".into(), "2".into(), "3".into()])
                );
                assert_eq!(field("x-h39"), Some(vec!["v39".to_owned()]));
            }
            "/plain/p" => {
                assert_eq!(field("hexon-user"), None);
                assert_eq!(field("signature"), None);
            }
            "/signed/session" => {
                assert_eq!(express_answer.0, 200);
                assert_eq!(field("hexon-user"), Some(vec!["alice".to_owned()]));
                assert_eq!(field("cookie"), Some(vec!["a=1; b=2".to_owned()]));
                assert!(field("signature").unwrap()[0].starts_with("hexon="));
            }
            "/signed/only-session" | "/plain/session" => {
                assert_eq!(express_answer.0, 200);
                assert_eq!(field("cookie"), None);
            }
            "/signed/cookie" => assert_eq!(field("cookie"), Some(vec!["a=b".to_owned()])),
            "/signed/both" => {
                assert_eq!(field("hexon-user"), Some(vec!["alice".to_owned()]));
                assert_eq!(field("cookie"), Some(vec!["c=3".to_owned()]));
            }
            "/signed/session-bob" => assert_eq!(express_answer.0, 403),
            "/signed/session-elsewhere" | "/signed/session-unknown" | "/signed/session-twice" => {
                assert_eq!(express_answer.0, 401);
                assert!(
                    express_answer.1.contains_key("set-cookie"),
                    "{:?}",
                    express_answer.1
                );
            }
            "/signed/crumbs" => assert_eq!(express_answer.0, 401),
            "/signed/close" => assert_eq!(express_answer.2, "close"),
            "/down/x" | "/down/y" | "/slow/slow" => {
                let status = if target.starts_with("/slow") {
                    504
                } else {
                    502
                };
                assert_eq!(express_answer.0, status);
                assert!(
                    express_answer.2.contains("<request id>"),
                    "{:?}",
                    express_answer.2
                );
            }
            "/signed/bob" => assert_eq!(express_answer.0, 403),
            "/signed/broken" | "/signed/none" => assert_eq!(express_answer.0, 401),
            _ => assert!(express_answer.0 < 500, "{request:?}"),
        }
    }

    // Kept connections: more requests on one client connection, pipelined
    // in one write, each answered in order; the lane takes every one and
    // reuses its upstream connection.
    let connections = rec.connections.load(Ordering::SeqCst);
    let count = express_count(admin).await;
    let one = format!(
        "GET /signed/k HTTP/1.1\r\nHost: app.example.com\r\n{}\r\n",
        auth(&alice)
    );
    let mut c = RawConn::open(express).await.unwrap();
    c.send(one.repeat(5).as_bytes()).await.unwrap();
    for _ in 0..5 {
        let a = c.answer("GET").await.unwrap();
        assert_eq!((a.status, a.text()), (200, "ok".to_owned()));
    }
    for _ in 0..5 {
        let a = c.exchange(one.as_bytes(), "GET").await.unwrap();
        assert_eq!(a.status, 200);
    }
    assert_eq!(express_count(admin).await - count, 10);
    assert!(
        rec.connections.load(Ordering::SeqCst) - connections <= 1,
        "upstream connections not kept"
    );

    // Answer timeouts on a kept connection (the lane keeps one timer per
    // connection): each slow answer is a 504, and the requests after one
    // are answered as usual.
    let count = express_count(admin).await;
    let slow = format!(
        "GET /slow/slow HTTP/1.1\r\nHost: app.example.com\r\n{}\r\n",
        auth(&alice)
    );
    for _ in 0..2 {
        let a = c.exchange(slow.as_bytes(), "GET").await.unwrap();
        assert_eq!(a.status, 504);
        let a = c.exchange(one.as_bytes(), "GET").await.unwrap();
        assert_eq!((a.status, a.text()), (200, "ok".to_owned()));
    }
    assert_eq!(express_count(admin).await - count, 4);

    // A session revoked (on any node sharing the state) is refused at
    // once: the stack answers, with the cookie cleared.
    let count = express_count(admin).await;
    let with_session = format!(
        "GET /signed/s HTTP/1.1\r\nHost: app.example.com\r\n{}\r\n",
        session("s-alice")
    );
    let a = c.exchange(with_session.as_bytes(), "GET").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(express_count(admin).await - count, 1);
    gw.gateway.sessions().revoke_subject("alice").await.unwrap();
    let a = c.exchange(with_session.as_bytes(), "GET").await.unwrap();
    assert_eq!(a.status, 401);
    assert!(a.header("set-cookie").is_some());
    assert_eq!(express_count(admin).await - count, 1);

    // The audit lines of a request served either way say the same.
    gw.stop().await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |path: &str| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["path"] == path)
            .map(|l| {
                let mut l = l.clone();
                for k in ["ts", "latency_ms", "request_id"] {
                    assert!(!l[k].is_null(), "{k} missing in {l}");
                    l[k] = serde_json::Value::Null;
                }
                l
            })
            .collect()
    };
    for path in ["/signed/a", "/down/x", "/signed/bob"] {
        let l = of(path);
        assert_eq!(l.len(), 2, "{path}: {l:?}");
        assert_eq!(l[0], l[1], "{path}");
    }
    let a = &of("/signed/a")[0];
    assert_eq!(
        (&a["user"], &a["route"], &a["decision"], &a["status"]),
        (
            &serde_json::json!("alice"),
            &serde_json::json!("signed"),
            &serde_json::json!("allow"),
            &serde_json::json!(200)
        )
    );
    std::fs::remove_file(&audit).ok();
}
