//! `hexonctl` against a real gateway (built from `hexon.toml` in this
//! process, admin listener on loopback): every command, tables and JSON,
//! and the errors users see.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::process::Output;
use std::sync::Arc;

use hexon_core::config::Config;
use hexon_proxy::gateway::{Gateway, Running, mint_token};
use serde_json::Value;

struct Admin {
    url: String,
    token: String,
    gateway: Arc<Gateway>,
    _running: Running,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

async fn start() -> Admin {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hexonctl-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        r#"
[gateway]
data_dir = "{}"
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
[[route]]
name = "orders"
path = "/orders/*"
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
authenticated = true
"#,
        dir.display()
    );
    let config = Config::parse(&toml, &|_| None).unwrap();
    let gateway = Arc::new(Gateway::build(config).await.unwrap());
    let running = gateway.start().await.unwrap();
    let url = format!("http://{}", running.admin.unwrap());
    let token = mint_token(gateway.config(), gateway.key().clone(), "alice")
        .await
        .unwrap();
    Admin {
        url,
        token,
        gateway,
        _running: running,
        _dir: TempDir(dir),
    }
}

async fn ctl(admin: &Admin, token: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hexonctl"))
        .env("HEXON_ADMIN_URL", &admin.url)
        .env("HEXON_TOKEN", token)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "hexonctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manages_clients_end_to_end() {
    let a = start().await;
    let t = a.token.clone();
    let out = stdout(
        &ctl(
            &a,
            &t,
            &[
                "client", "create", "billing", "--id", "billing", "--group", "staff",
            ],
        )
        .await,
    );
    assert_eq!(out.trim(), "created client billing");
    let out = stdout(&ctl(&a, &t, &["client", "list"]).await);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(
        lines[1].starts_with("billing")
            && lines[1].contains("active")
            && lines[1].contains("staff"),
        "{out}"
    );

    let out = stdout(
        &ctl(
            &a,
            &t,
            &[
                "--json",
                "credential",
                "issue",
                "billing",
                "--kind",
                "api-key",
                "--label",
                "ci",
            ],
        )
        .await,
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    let key = j["secret"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hxk_"));
    let cred = j["credential"]["id"].as_str().unwrap().to_owned();
    let out = stdout(
        &ctl(
            &a,
            &t,
            &["credential", "issue", "billing", "--kind", "hmac"],
        )
        .await,
    );
    assert!(out.contains("shown once"), "{out}");

    // Ed25519: the client keeps the private key, the gateway its public half.
    {
        use ed25519_dalek::Signer as _;
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let pem = signing
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let file = std::env::temp_dir().join(format!("hexonctl-{}.pub", std::process::id()));
        std::fs::write(&file, pem).unwrap();
        let path = file.display().to_string();
        let args = [
            "--json",
            "credential",
            "issue",
            "billing",
            "--kind",
            "ed25519",
            "--public-key",
            &path,
        ];
        let j: Value = serde_json::from_str(&stdout(&ctl(&a, &t, &args).await)).unwrap();
        assert_eq!(j["credential"]["kind"], "ed25519", "{j}");
        assert!(j.get("secret").is_none(), "{j}");
        let ed = j["credential"]["id"].as_str().unwrap().to_owned();
        let sig = signing.sign(b"base").to_bytes();
        let table = a.gateway.clients().load();
        let now = hexon_core::UnixTime::now();
        assert!(
            table
                .check_signature(&ed, Some("ed25519"), b"base", &sig, now)
                .is_ok()
        );
        // Rotation cannot make a key the client holds: it says what to do.
        let o = ctl(&a, &t, &["credential", "rotate", "billing", &ed]).await;
        assert!(
            !o.status.success()
                && String::from_utf8_lossy(&o.stderr).contains("--kind ed25519 --public-key"),
            "{o:?}"
        );
        std::fs::write(&file, "not a key").unwrap();
        for (kind, says) in [("ed25519", "public_key"), ("hmac", "only then")] {
            let args = [
                "credential",
                "issue",
                "billing",
                "--kind",
                kind,
                "--public-key",
                &path,
            ];
            let o = ctl(&a, &t, &args).await;
            assert!(
                String::from_utf8_lossy(&o.stderr).contains(says),
                "{kind}: {o:?}"
            );
        }
        std::fs::remove_file(&file).ok();
        stdout(&ctl(&a, &t, &["credential", "delete", "billing", &ed]).await);
    }

    let out = stdout(&ctl(&a, &t, &["routes"]).await);
    assert!(out.lines().any(|l| l.starts_with("orders")), "{out}");
    stdout(&ctl(&a, &t, &["grant", "billing", "orders", "GET", "POST"]).await);
    let out = stdout(&ctl(&a, &t, &["client", "show", "billing"]).await);
    assert!(out.contains("orders") && out.contains("GET,POST"), "{out}");
    assert!(out.contains(&cred), "{out}");
    assert!(!out.contains(&key[21..]), "no key material in show: {out}");

    // The gateway's table follows the admin API at once.
    let table = a.gateway.clients().load();
    assert!(
        table
            .check_api_key(&key, hexon_core::UnixTime::now())
            .is_ok()
    );

    // Rotate: a new key works, the old one does not.
    let out = stdout(
        &ctl(
            &a,
            &t,
            &["--json", "credential", "rotate", "billing", &cred],
        )
        .await,
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    let new_key = j["secret"].as_str().unwrap().to_owned();
    let table = a.gateway.clients().load();
    let now = hexon_core::UnixTime::now();
    assert!(table.check_api_key(&new_key, now).is_ok());
    assert!(table.check_api_key(&key, now).is_err());

    stdout(&ctl(&a, &t, &["client", "rate-limit", "billing", "600"]).await);
    stdout(&ctl(&a, &t, &["client", "suspend", "billing"]).await);
    let out = stdout(&ctl(&a, &t, &["--json", "client", "show", "billing"]).await);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "suspended");
    assert_eq!(j["rate_limit_per_minute"], 600);
    assert!(
        a.gateway
            .clients()
            .load()
            .check_api_key(&new_key, now)
            .is_err()
    );
    stdout(&ctl(&a, &t, &["client", "activate", "billing"]).await);
    // No value removes the limit; zero is refused with a reason.
    stdout(&ctl(&a, &t, &["client", "rate-limit", "billing"]).await);
    let out = stdout(&ctl(&a, &t, &["--json", "client", "show", "billing"]).await);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["rate_limit_per_minute"], Value::Null);
    let o = ctl(&a, &t, &["client", "rate-limit", "billing", "0"]).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("at least 1"),
        "{o:?}"
    );
    stdout(&ctl(&a, &t, &["revoke", "billing", "orders"]).await);
    let out = stdout(&ctl(&a, &t, &["--json", "client", "show", "billing"]).await);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["permissions"], serde_json::json!([]));
    stdout(&ctl(&a, &t, &["client", "delete", "billing"]).await);

    // Errors say what is wrong.
    let o = ctl(&a, &t, &["client", "show", "billing"]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"));
    let o = ctl(&a, "not-a-token", &["client", "list"]).await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"), "{o:?}");
    let bob = mint_token(a.gateway.config(), a.gateway.key().clone(), "bob")
        .await
        .unwrap();
    let o = ctl(&a, &bob, &["client", "list"]).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not in the admin group"),
        "{o:?}"
    );
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_hexonctl"))
        .env("HEXON_ADMIN_URL", "http://127.0.0.1:1")
        .env("HEXON_TOKEN", &t)
        .args(["client", "list"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the admin API"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manages_store_routes() {
    let a = start().await;
    let t = a.token.clone();
    let dir = &a._dir.0;
    // TOML in the [[route]] schema, as in hexon.toml.
    let file = dir.join("billing.toml");
    std::fs::write(
        &file,
        "[[route]]\nname = \"billing\"\npath = \"/billing/*\"\nupstream = [\"http://127.0.0.1:9\"]\n[[route.allow]]\ngroups = [\"admins\"]\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let out = stdout(&ctl(&a, &t, &["route", "set", &file]).await);
    assert!(
        out.starts_with("created route billing (version 1)"),
        "{out}"
    );
    assert!(
        a.gateway
            .routes()
            .running()
            .1
            .iter()
            .any(|r| r.spec.name == "billing")
    );
    let out = stdout(&ctl(&a, &t, &["routes"]).await);
    let billing = out.lines().find(|l| l.starts_with("billing")).unwrap();
    assert!(
        billing.contains("/billing/*") && billing.ends_with("store"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("orders") && l.trim_end().ends_with("file")),
        "{out}"
    );
    let out = stdout(&ctl(&a, &t, &["route", "show", "billing"]).await);
    assert!(out.starts_with("route billing (from store)"), "{out}");
    assert!(
        out.contains("[[route]]") && out.contains("path = \"/billing/*\""),
        "{out}"
    );

    // JSON on stdin replaces it.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hexonctl"))
        .env("HEXON_ADMIN_URL", &a.url)
        .env("HEXON_TOKEN", &t)
        .args(["route", "set", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(br#"{"name": "billing", "path": "/billing/v2/*", "upstream": ["http://127.0.0.1:9"]}"#)
            .await
            .unwrap();
    }
    let out = stdout(&child.wait_with_output().await.unwrap());
    assert!(
        out.starts_with("replaced route billing (version 2)"),
        "{out}"
    );

    // Errors say what to fix.
    let o = ctl(&a, &t, &["route", "set", "--create", &file]).await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("409"), "{o:?}");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"ghost\"\npath = \"/g/*\"\n[[allow]]\ngroups = [\"nobody\"]\n",
    )
    .unwrap();
    let o = ctl(&a, &t, &["route", "set", &bad.display().to_string()]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("400")
            && err.contains("route \"ghost\".allow[0].groups[0]"),
        "{err}"
    );
    let o = ctl(&a, &t, &["route", "delete", "orders"]).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("hexon.toml"),
        "{o:?}"
    );
    let out = stdout(&ctl(&a, &t, &["route", "delete", "billing"]).await);
    assert_eq!(out.trim(), "deleted route billing");
    assert!(a.gateway.routes().running().1.is_empty());
}
