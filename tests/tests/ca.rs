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
