//! The gateway's two HTTP/1.1 readers side by side: one gateway, two
//! listeners — the listener's own reader (`fast_http1`, the default) and
//! hyper's (`fast_http1 = false`) — the same requests sent as raw bytes to
//! each, in front of an upstream that records every request head it gets.
//! What the upstream receives must be byte for byte the same, and so must
//! what the client receives (the `date` aside): identity headers, spoofing
//! attempts, hop-by-hop hygiene, forwarding headers, refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use hexon_proxy::test_util::{Answer, RawConn};
use std::net::SocketAddr;

mod common;
use common::*;

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
login_url = "https://auth.example.com/login"
# The test client's request ids and forwarding headers are kept, so both
# listeners' upstream requests carry the same ones.
trusted_proxies = ["127.0.0.1/32"]

[[listener]]
name = "own"
bind = "127.0.0.1:0"

[[listener]]
name = "hyper"
bind = "127.0.0.1:0"
fast_http1 = false

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
name = "public"
path = "/public/*"
public = true
identity = "none"
upstream = ["http://{upstream}"]
"#
    )
}

/// Send `request` on a new connection to `addr`; the answer, without its
/// `date` (the moment differs) unless the upstream set it.
async fn exchange(addr: SocketAddr, request: &str, method: &str) -> Answer {
    let mut c = RawConn::open(addr).await.unwrap();
    let mut a = c.exchange(request.as_bytes(), method).await.unwrap();
    a.headers
        .retain(|(n, v)| n != "date" || v.starts_with("Sun, 06 Dec 2026 00:00:00"));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_readers_send_the_upstream_the_same_bytes_and_the_client_the_same_answer() {
    let (upstream, heads) = recording_upstream().await;
    let heads = heads.heads;
    let gw = Gw::start(&config(upstream)).await;
    let listeners = gw.running.as_ref().unwrap().listeners.clone();
    let (own, hyper) = (listeners[0], listeners[1]);
    let alice = gw.token("alice").await;
    let bob = gw.token("bob").await;
    let auth = |t: &str| format!("Authorization: Bearer {t}\r\n");

    let cases: Vec<(&str, String, String)> = vec![
        // Signed identity; every kind of spoofed identity header dropped.
        ("GET", "/signed/a?q=1&r=%2F".into(), format!(
            "{}Hexon-User: root\r\nhexon-groups: admin\r\nSignature: sig1=:AAAA:\r\nSignature-Input: sig1=()\r\nX-Forwarded-For: 10.1.2.3\r\nForwarded: for=10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer.example\r\n",
            auth(&alice)
        )),
        // Hop-by-hop fields and the ones Connection names.
        ("GET", "/public/x".into(), "Connection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=1\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n".into()),
        ("HEAD", "/public/head".into(), String::new()),
        ("DELETE", "/signed/d".into(), auth(&alice)),
        ("OPTIONS", "/public/o".into(), "X-Dup: 1\r\nx-dup: 2\r\nX-DUP: 3\r\n".into()),
        ("GET", "/public/chunked".into(), String::new()),
        ("GET", "/public/%7Euser/a%20b".into(), "Cookie: a=b; c=d\r\nAccept: */*\r\n".into()),
        // Dot segments and empty segments: refused by the policy (403).
        ("GET", "/public/./a//b".into(), String::new()),
        ("GET", "/jwt/x".into(), auth(&alice)),
        ("PATCH", "/public/many".into(), (0..40).map(|i| format!("X-H{i}: v{i}\r\n")).collect()),
        // Refused before any upstream: no token, a token without the group,
        // a broken token, no route.
        ("GET", "/signed/none".into(), "Accept: application/json\r\n".into()),
        ("GET", "/signed/bob".into(), auth(&bob)),
        ("GET", "/signed/broken".into(), auth("e30.e30.AAAA")),
        ("GET", "/nowhere".into(), String::new()),
        // Handed to hyper by the own reader: same either way.
        ("GET", "/public/te".into(), "TE: trailers\r\n".into()),
    ];
    for (i, (method, target, extra)) in cases.iter().enumerate() {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: app.example.com\r\nX-Request-Id: case-{i}\r\nUser-Agent: raw\r\n{extra}\r\n"
        );
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        for addr in [own, hyper] {
            let before = heads.lock().unwrap().len();
            let answer = exchange(addr, &request, method).await;
            // The upstream got at most one head for it.
            let got = heads.lock().unwrap().get(before..).unwrap().to_vec();
            assert!(got.len() <= 1, "{request:?}: {got:?}");
            seen.push(got.first().map(|h| String::from_utf8_lossy(h).into_owned()));
            answers.push(answer);
        }
        assert_eq!(seen[0], seen[1], "upstream request for {request:?}");
        assert_eq!(answers[0], answers[1], "answer to {request:?}");
        // Not two equal mistakes: what each case is about holds.
        let answer = &answers[0];
        let head = seen[0].as_deref().unwrap_or_default().to_ascii_lowercase();
        match target.as_str() {
            "/signed/a?q=1&r=%2F" => {
                assert_eq!(answer.status, 200);
                assert!(
                    head.starts_with("get /base/signed/a?q=1&r=%2f http/1.1\r\n"),
                    "{head}"
                );
                assert!(head.contains("hexon-user: alice\r\n"), "{head}");
                assert!(!head.contains("root") && !head.contains("admin"), "{head}");
                assert!(!head.contains("sig1=:aaaa:"), "{head}");
                assert!(
                    head.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\r\n"),
                    "{head}"
                );
                assert!(head.contains("x-request-id: case-0\r\n"), "{head}");
                assert!(!head.contains("authorization"), "{head}");
            }
            "/public/x" => {
                assert!(
                    !head.contains("x-secret") && !head.contains("keep-alive"),
                    "{head}"
                );
                assert!(head.contains("x-kept: yes\r\n"), "{head}");
                assert_eq!(answer.header("x-hop"), None);
                assert_eq!(answer.header("keep-alive"), None);
                assert_eq!(answer.header("x-up"), Some("l"));
                assert_eq!(answer.text(), "ok");
            }
            "/public/chunked" => {
                assert_eq!(answer.text(), "abcde");
                assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
            }
            "/jwt/x" => assert!(head.contains("authorization: bearer ey"), "{head}"),
            "/signed/none" => {
                assert_eq!(answer.status, 401);
                assert!(seen[0].is_none());
            }
            "/signed/bob" => assert_eq!(answer.status, 403),
            "/signed/broken" => assert_eq!(answer.status, 401),
            "/nowhere" => assert!(answer.status >= 400 && seen[0].is_none()),
            "/public/./a//b" => assert_eq!((answer.status, seen[0].is_none()), (403, true)),
            _ => assert_eq!(answer.status, 200, "{request:?}"),
        }
    }
    gw.stop().await;
}
