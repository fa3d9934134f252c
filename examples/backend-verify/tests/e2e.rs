//! The example as a user runs it: the real binary on a real socket, a real
//! HTTP client (curl) sending requests signed by Hexon's signer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use hexon_core::httpsig::{Binding, HttpSigner};
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(url: &str, headers: &[(String, String)]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", url]);
    for (n, v) in headers {
        cmd.arg("-H").arg(format!("{n}: {v}"));
    }
    let out = cmd.output().expect("curl must be installed");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_owned(), body.to_owned())
}

#[tokio::test]
async fn binary_verifies_signed_requests_from_a_real_client() {
    let key: Arc<dyn Signer> = Arc::new(Ed25519Signer::generate("gw-e2e").unwrap());
    let mut keys = KeySet::new();
    keys.insert(key.key_id(), key.public_key(), None).unwrap();
    let dir = std::env::temp_dir().join(format!("hexon-backend-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&keys.to_jwks(UnixTime::now())).unwrap(),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_backend-verify"))
        .arg(&jwks)
        .arg("127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let addr = line.split_whitespace().nth(3).unwrap().to_owned();
    assert!(line.starts_with("backend-verify listening on"), "{line}");

    let alice = Identity::builder("u-7", "alice")
        .groups(["eng", "ops"])
        .build()
        .unwrap();
    let signer = HttpSigner::new(key);
    let signed_headers = |path: &str, binding| {
        let (mut parts, ()) = http::Request::get(path)
            .header("host", &addr)
            .body(())
            .unwrap()
            .into_parts();
        let signer = &signer;
        let alice = &alice;
        async move {
            signer
                .sign(alice, "api", binding, &mut parts, UnixTime::now())
                .await
                .unwrap();
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect::<Vec<_>>()
        }
    };

    let h = signed_headers("/whoami", Binding::REQUEST).await;
    let (code, body) = curl(&format!("http://{addr}/whoami"), &h);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "alice in [\"eng\", \"ops\"] via route api\n")
    );

    // Signed for /whoami, sent to / : the bound signature does not cover it.
    let (code, _) = curl(&format!("http://{addr}/"), &h);
    assert_eq!(code, "401");

    let h = signed_headers("/", Binding::NONE).await;
    let (code, body) = curl(&format!("http://{addr}/"), &h);
    assert_eq!((code.as_str(), body.as_str()), ("200", "hello alice\n"));

    let (code, _) = curl(
        &format!("http://{addr}/"),
        &[("Hexon-User".into(), "root".into())],
    );
    assert_eq!(code, "401");
    std::fs::remove_dir_all(&dir).ok();
}
