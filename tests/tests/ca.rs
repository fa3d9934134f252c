//! The certificate authority in the gateway: `[ca]` and `[ca.acme]` in
//! hexon.toml, the hierarchy created under `data_dir`, the public
//! endpoints and the ACME server answered on the listener, and certbot
//! obtaining a certificate through the gateway.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use common::*;
use hexon_proxy::body::full;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_its_ca_and_certbot_gets_a_certificate_through_it() {
    let dns = dns();
    let port = free_port();
    let http01 = free_port();
    let upstream = start_upstream(header_echo()).await;
    let gw = Gw::start(&format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
connection_threads = 0

[state]
durable = "memory"

[[listener]]
bind = "127.0.0.1:{port}"

[ca]
name = "Example Corp"
url = "http://127.0.0.1:{port}/ca"
[ca.profiles.tls-server]
dns = ["example.test"]
[ca.ssh]
host_domains = ["example.test"]
[ca.acme]
url = "http://127.0.0.1:{port}/acme"
http01_port = {http01}
dns_server = "127.0.0.1:{dns}"

[[user]]
name = "alice"

[[route]]
name = "app"
host = "*"
upstream = ["http://{upstream}"]
[[route.allow]]
users = ["alice"]
"#,
        dns = dns.1
    ))
    .await;

    // The hierarchy was made under data_dir/ca, and the endpoints answer
    // without credentials.
    let root = gw.dir.join("ca/root.crt");
    assert!(root.exists());
    let get = |path: &str| {
        Request::get(format!("http://127.0.0.1:{port}{path}"))
            .body(full(""))
            .unwrap()
    };
    let res = send(gw.addr, get("/ca/bundle.pem")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let bundle = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bundle.as_ref(), std::fs::read(&root).unwrap().as_slice());
    // The SSH CA's keys were made there too, and their public halves are
    // served as sshd and known_hosts take them.
    for key in ["ssh_user_ca.key", "ssh_host_ca.key"] {
        assert!(gw.dir.join("ca").join(key).exists(), "{key}");
    }
    let text = |res: http::Response<hyper::body::Incoming>| async move {
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let user_ca = text(send(gw.addr, get("/ca/ssh/user_ca.pub")).await).await;
    let host_ca = text(send(gw.addr, get("/ca/ssh/host_ca.pub")).await).await;
    assert!(user_ca.starts_with("ssh-ed25519 AAAA"), "{user_ca}");
    assert_ne!(user_ca, host_ca, "separate user and host CA keys");
    let known_hosts = text(send(gw.addr, get("/ca/ssh/known_hosts")).await).await;
    assert_eq!(
        known_hosts,
        format!("@cert-authority *.example.test,example.test {host_ca}")
    );
    let dir = json_body(send(gw.addr, get("/acme/directory")).await).await;
    assert_eq!(
        dir["newOrder"],
        format!("http://127.0.0.1:{port}/acme/new-order")
    );
    // Everything else still goes through authentication.
    assert_eq!(
        send(gw.addr, get("/anything")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // certbot, through the gateway.
    let work = gw.dir.join("certbot");
    let d = |s: &str| work.join(s).to_str().unwrap().to_owned();
    let out = tokio::process::Command::new("certbot")
        .args([
            "certonly",
            "--non-interactive",
            "--agree-tos",
            "-m",
            "ops@example.test",
            "--standalone",
        ])
        .args([
            "--http-01-port",
            &http01.to_string(),
            "-d",
            "gw.example.test",
            "--cert-name",
            "gw",
        ])
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}/acme/directory"),
        ])
        .args([
            "--config-dir",
            &d("c"),
            "--work-dir",
            &d("w"),
            "--logs-dir",
            &d("l"),
        ])
        .output()
        .await
        .expect("certbot (apt-get install certbot)");
    assert!(
        out.status.success(),
        "certbot: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let chain = work.join("c/live/gw/fullchain.pem");
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            gw.dir.join("ca/tls-server.crt").to_str().unwrap(),
            chain.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    gw.stop().await;
}

/// `ssh-keygen -L` of a certificate line.
fn ssh_keygen_list(dir: &std::path::Path, cert: &str) -> String {
    let path = dir.join("id-cert.pub");
    std::fs::write(&path, cert).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(out.status.success(), "ssh-keygen -L: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_get_ssh_certificates_with_the_principals_their_identity_allows() {
    let port = free_port();
    let gw = Gw::start(&format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
connection_threads = 0
admin_bind = "127.0.0.1:0"

[state]
durable = "memory"

[[listener]]
bind = "127.0.0.1:{port}"

[ca]
url = "http://127.0.0.1:{port}/ca"
[ca.ssh]
user_lifetime = "1h"
[ca.ssh.groups]
ops = ["deploy"]

[[user]]
name = "alice"
[[user]]
name = "bob"

[[group]]
name = "ops"
users = ["alice"]
[[group]]
name = "admins"
users = ["alice"]
"#
    ))
    .await;
    let key = gw.dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs (apt-get install openssh-client)")
        .success();
    assert!(ok);
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let sign = |token: Option<String>, ctype: &str, body: String| {
        let mut b = Request::post(format!("http://127.0.0.1:{port}/ca/ssh/sign"))
            .header("content-type", ctype);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(full(body)).unwrap()
    };
    let text = |res: http::Response<hyper::body::Incoming>| async move {
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };

    // No identity, no certificate.
    let (status, body) = text(send(gw.addr, sign(None, "text/plain", public.clone())).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // alice: her name, and what her group maps to.
    let alice = gw.token("alice").await;
    let (status, cert) = text(
        send(
            gw.addr,
            sign(Some(alice.clone()), "text/plain", public.clone()),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cert}");
    assert!(
        cert.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{cert}"
    );
    let listing = ssh_keygen_list(&gw.dir, &cert);
    assert!(
        listing.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listing}"
    );
    let principals: Vec<&str> = listing
        .split("Principals:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("                "))
        .map(str::trim)
        .collect();
    assert_eq!(principals, ["alice", "deploy"], "{listing}");
    assert!(listing.contains("permit-pty"), "{listing}");

    // bob asks for a principal his identity does not allow: refused, with
    // the reason.
    let bob = gw.token("bob").await;
    let ask = serde_json::json!({ "public_key": public.trim(), "principals": ["deploy"] });
    let res = send(
        gw.addr,
        sign(Some(bob.clone()), "application/json", ask.to_string()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let v = json_body(res).await;
    assert_eq!(v["error"], "refused");
    assert!(v["detail"].as_str().unwrap().contains("deploy"), "{v}");
    // His own name is fine, for no longer than the policy allows.
    let ask = serde_json::json!({ "public_key": public.trim(), "valid_for": "30m" });
    let res = send(
        gw.addr,
        sign(Some(bob.clone()), "application/json", ask.to_string()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v = json_body(res).await;
    assert_eq!(v["principals"], serde_json::json!(["bob"]));
    let life = v["valid_before"].as_u64().unwrap() - v["valid_after"].as_u64().unwrap();
    assert_eq!(
        life,
        30 * 60 + 300,
        "30 minutes plus the 5-minute backdate: {v}"
    );

    // An API client — even one whose id is a user's name — is not a
    // person: no certificate.
    let (s, j) = admin_call(
        &gw,
        Some(&alice),
        "POST",
        "/api/v1/clients",
        Some(serde_json::json!({"id": "alice", "name": "alice-bot", "groups": ["ops"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let (s, j) = admin_call(
        &gw,
        Some(&alice),
        "POST",
        "/api/v1/clients/alice/credentials",
        Some(serde_json::json!({"kind": "api_key"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let api_key = j["secret"].as_str().unwrap().to_owned();
    let res = send(gw.addr, sign(Some(api_key), "text/plain", public.clone())).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (_, body) = text(res).await;
    assert!(body.contains("people"), "{body}");

    // No more than 60 an hour for one user (alice has 1 so far).
    let mut ok = 1;
    loop {
        let (status, _) = text(
            send(
                gw.addr,
                sign(Some(alice.clone()), "text/plain", public.clone()),
            )
            .await,
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        ok += 1;
        assert!(ok <= 60, "more than 60 certificates in an hour");
    }
    assert_eq!(ok, 60);

    // Malformed and hostile bodies: clear 4xx, nothing issued (bob still
    // has room under the limit).
    for (ctype, body, want) in [
        (
            "text/plain",
            "ssh-ed25519 not-base64!!".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        ("text/plain", cert.clone(), StatusCode::BAD_REQUEST),
        (
            "application/json",
            "{\"public_key\": 1}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            "A".repeat(100_000),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (status, body) = text(send(gw.addr, sign(Some(bob.clone()), ctype, body)).await).await;
        assert_eq!(status, want, "{body}");
    }
    gw.stop().await;
}
