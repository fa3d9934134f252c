//! The gateway's ACME client (`[listener.tls.acme]`) obtaining its own
//! listener certificates from real ACME CAs — pebble (Let's Encrypt's test
//! CA) and Hexon's own `[ca.acme]` — answering tls-alpn-01 and http-01
//! itself, renewing on the CA's renewal window, and stapling OCSP; checked
//! from the outside with `openssl s_client`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `openssl s_client` against `port` with `sni`, verifying against `ca`
/// (all output, stdout and stderr).
fn s_client(port: u16, sni: &str, ca: &Path, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", sni, "-verify_hostname", sni])
        .arg("-CAfile")
        .arg(ca)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (apt-get install openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The served leaf's `openssl x509 -text`.
fn served_leaf(s_client_output: &str) -> String {
    // After "Server certificate" (a stapled response prints its
    // responder's certificate earlier).
    let from = s_client_output
        .find("Server certificate")
        .expect("a server certificate in the s_client output");
    let begin = from
        + s_client_output[from..]
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap();
    let end = begin
        + s_client_output[begin..]
            .find("-----END CERTIFICATE-----")
            .unwrap()
        + 25;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&s_client_output.as_bytes()[begin..end])
        .unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

fn serial(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("serial="))
        .expect("serial in x509 output")
        .to_owned()
}

/// Poll `check` every 250 ms until it returns Some, up to `limit`.
async fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gets_must_staple_certificates_from_its_own_ca_renews_them_and_staples_ocsp() {
    let dns = dns();
    let (plain, ca_port, public) = (free_port(), free_port(), free_port());
    // Listener "ca" serves the CA and its ACME server over HTTPS with the
    // dev certificate; listener "public" gets its certificate from it by
    // tls-alpn-01; OCSP and CRLs go over plain HTTP as usual.
    let gw = Gw::start(&format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
dev = true
connection_threads = 0

[state]
durable = "memory"

[[listener]]
name = "plain"
bind = "127.0.0.1:{plain}"

[[listener]]
name = "ca"
bind = "127.0.0.1:{ca_port}"
[listener.tls]

[[listener]]
name = "public"
bind = "127.0.0.1:{public}"
[listener.tls.acme]
directory = "https://127.0.0.1:{ca_port}/acme/directory"
domains = ["gw.example.test"]
contact = ["mailto:ops@example.test"]
ca_bundle = "${{DATA}}/dev-tls/cert.pem"
must_staple = true

[ca]
name = "Example Corp"
url = "http://127.0.0.1:{plain}/ca"
[ca.profiles.tls-server]
dns = ["example.test"]
# Short enough that the renewal window (from two thirds of the life,
# counted from the 5-minute backdated notBefore) opens within a minute.
default_lifetime = "180s"
[ca.acme]
url = "https://127.0.0.1:{ca_port}/acme"
tls_alpn01_port = {public}
dns_server = "127.0.0.1:{dns}"
"#,
        dns = dns.1
    ))
    .await;
    let root = gw.dir.join("ca/root.crt");
    let cert_file = gw.dir.join("acme/public/cert.pem");

    // Until the first certificate arrives the listener serves a
    // self-signed placeholder; then the CA's, with the chain verifying.
    let first = wait_for(
        Duration::from_secs(60),
        "the first ACME certificate",
        || {
            let out = s_client(public, "gw.example.test", &root, &["-status"]);
            out.contains("Verify return code: 0 (ok)").then_some(out)
        },
    )
    .await;
    assert!(cert_file.exists());
    let leaf = served_leaf(&first);
    assert!(leaf.contains("Example Corp tls-server CA"), "{leaf}");
    assert!(leaf.contains("DNS:gw.example.test"), "{leaf}");
    // Must-staple: the TLS Feature extension with status_request.
    assert!(leaf.contains("TLS Feature"), "{leaf}");
    assert!(leaf.contains("status_request"), "{leaf}");
    // The account and key are private to the gateway.
    {
        use std::os::unix::fs::PermissionsExt as _;
        for f in ["acme/public/key.pem", "acme/public/account.json"] {
            let mode = std::fs::metadata(gw.dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }

    // The OCSP response is stapled (fetched in the background) and good.
    let stapled = wait_for(Duration::from_secs(30), "an OCSP staple", || {
        let out = s_client(public, "gw.example.test", &root, &["-status"]);
        out.contains("OCSP Response Status: successful")
            .then_some(out)
    })
    .await;
    assert!(stapled.contains("Cert Status: good"), "{stapled}");
    assert!(stapled.contains("Verify return code: 0 (ok)"), "{stapled}");

    // The CA's renewal window (ACME Renewal Information) opens: the
    // gateway renews without a restart and serves the new certificate,
    // stapled again.
    let old_serial = serial(&leaf);
    let renewed = wait_for(Duration::from_secs(120), "the renewed certificate", || {
        let out = s_client(public, "gw.example.test", &root, &["-status"]);
        if !out.contains("Verify return code: 0 (ok)") {
            return None;
        }
        let text = served_leaf(&out);
        (serial(&text) != old_serial).then_some(text)
    })
    .await;
    assert!(renewed.contains("DNS:gw.example.test"), "{renewed}");
    let restapled = wait_for(
        Duration::from_secs(30),
        "the new certificate's staple",
        || {
            let out = s_client(public, "gw.example.test", &root, &["-status"]);
            (out.contains("Cert Status: good") && serial(&served_leaf(&out)) != old_serial)
                .then_some(())
        },
    )
    .await;
    let () = restapled;
    gw.stop().await;
}

/// pebble, configured to validate on the gateway's ports, with an HTTPS
/// certificate of our own making.
struct Pebble {
    child: std::process::Child,
    directory: String,
    management: u16,
    root: std::path::PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pebble(dir: &Path, dns: u16, http_port: u16, tls_port: u16) -> Pebble {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("pebble.crt"), dir.join("pebble.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=pebble test server"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // An end-entity certificate that is its own trust anchor (webpki
        // refuses a CA certificate as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl could not make pebble's certificate");
    let (port, management) = (free_port(), free_port());
    let config = dir.join("pebble.json");
    std::fs::write(
        &config,
        serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let child = Command::new("pebble")
        .arg("-config")
        .arg(&config)
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        // No random validation delay, no deliberately rejected nonces.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap())
        .spawn()
        .expect("pebble runs (apt-get install pebble)");
    let server = Pebble {
        child,
        directory: format!("https://127.0.0.1:{port}/dir"),
        management,
        root: cert,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pebble did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pebble_issues_listener_certificates_by_tls_alpn_01_and_http_01() {
    let dns = dns();
    let (plain, alpn, http) = (free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("hexon-pebble-{}", std::process::id()));
    let pebble = pebble(&dir, dns.1, plain, alpn);
    let upstream = start_upstream(header_echo()).await;
    let config = format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
connection_threads = 0

[state]
durable = "memory"

[[listener]]
name = "plain"
bind = "127.0.0.1:{plain}"

[[listener]]
name = "alpn"
bind = "127.0.0.1:{alpn}"
[listener.tls.acme]
directory = "{directory}"
domains = ["alpn.example.test"]
ca_bundle = "{pebble_root}"

[[listener]]
name = "http"
bind = "127.0.0.1:{http}"
[listener.tls.acme]
directory = "{directory}"
domains = ["http.example.test"]
challenge = "http-01"
ca_bundle = "{pebble_root}"

[[route]]
name = "app"
host = "*"
upstream = ["http://{upstream}"]
public = true
"#,
        directory = pebble.directory,
        pebble_root = pebble.root.display(),
    );
    let gw = Gw::start(&config).await;

    // pebble's issuing root, for verifying what the gateway serves.
    let root = dir.join("pebble-root.pem");
    let out = Command::new("curl")
        .args([
            "-sfk",
            &format!("https://127.0.0.1:{}/roots/0", pebble.management),
        ])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "pebble's root: {out:?}");
    std::fs::write(&root, &out.stdout).unwrap();

    let mut serials = Vec::new();
    for (port, name) in [(alpn, "alpn.example.test"), (http, "http.example.test")] {
        let out = wait_for(Duration::from_secs(60), name, || {
            let out = s_client(port, name, &root, &[]);
            out.contains("Verify return code: 0 (ok)").then_some(out)
        })
        .await;
        let leaf = served_leaf(&out);
        assert!(leaf.contains(&format!("DNS:{name}")), "{leaf}");
        assert!(leaf.to_lowercase().contains("pebble"), "{leaf}");
        serials.push(serial(&leaf));
    }

    // And it is a working gateway on that certificate: a real client
    // verifying the chain reaches the upstream through it.
    let out = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&root)
        .args([
            "--resolve",
            &format!("alpn.example.test:{alpn}:127.0.0.1"),
            &format!("https://alpn.example.test:{alpn}/hello"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl through the gateway: {out:?}");

    // After a restart the stored certificate is served at once (no
    // placeholder, no new order).
    let gw = gw.restart(&config).await;
    let out = s_client(alpn, "alpn.example.test", &root, &[]);
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert_eq!(serial(&served_leaf(&out)), serials[0]);

    // A key that does not match the stored chain (a crash between the two
    // writes, a botched restore): the listener falls back to the
    // placeholder and the client obtains a new certificate at once.
    let key = gw.dir.join("acme/alpn/key.pem");
    let fresh = gw.dir.join("fresh.pem");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out"
            ])
            .arg(&fresh)
            .status()
            .unwrap()
            .success()
    );
    std::fs::rename(&fresh, &key).unwrap();
    let gw = gw.restart(&config).await;
    let renewed = wait_for(
        Duration::from_secs(60),
        "a new certificate after a bad key",
        || {
            let out = s_client(alpn, "alpn.example.test", &root, &[]);
            if !out.contains("Verify return code: 0 (ok)") {
                return None;
            }
            let s = serial(&served_leaf(&out));
            (s != serials[0]).then_some(s)
        },
    )
    .await;
    assert_ne!(renewed, serials[0]);
    gw.stop().await;
    drop(pebble);
    std::fs::remove_dir_all(&dir).ok();
}
