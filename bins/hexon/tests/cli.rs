#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The real `hexon` binary, driven as an operator drives it: `check`,
//! `keys generate`, `keys jwks`, `token`, `serve` (enforcement, signed
//! headers, JWKS, metrics, audit log, hot reload, SIGTERM) and `quickstart`,
//! with `curl` as the HTTP client and a small thread-based upstream.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const HEXON: &str = env!("CARGO_BIN_EXE_hexon");
/// Bound on every poll: a condition not reached in this time fails the test.
const POLL_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// A directory under the system temp dir, unique per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "hexon-cli-{name}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn write(&self, file: &str, text: &str) -> PathBuf {
        let p = self.path(file);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hexon(args: &[&str]) -> Output {
    Command::new(HEXON)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HEXON_CLI_TEST_UNSET")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

// A port that was free a moment ago, outside the kernel's ephemeral range.
use hexon_core::testing::free_port;

/// Poll `f` every 100 ms until it returns `Some`, for at most [`POLL_LIMIT`].
fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > POLL_LIMIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What curl got: status (0 if no answer), header block, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn curl(url: &str, headers: &[String]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "5"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let raw = text(&out.stdout);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A child process killed (if still running) when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM failed");
    }
    /// Wait for the exit, at most `limit`.
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `hexon serve -c <config>`, stderr into `<dir>/stderr.log`.
/// `hexon serve` running a fresh configuration (route allowing `eng`) in
/// front of a recording upstream, with a token minted for alice.
struct Serving {
    dir: TempDir,
    upstream: Upstream,
    port: u16,
    admin: u16,
    cfg: PathBuf,
    alice: String,
    proc: Proc,
}

impl Serving {
    fn start(name: &str) -> Serving {
        let dir = TempDir::new(name);
        let upstream = Upstream::start();
        let (port, admin) = (free_port(), free_port());
        let cfg = dir.write(
            "hexon.toml",
            &serve_config(&dir, port, admin, upstream.port, "eng"),
        );
        let alice = mint(&cfg, "alice");
        let mut proc = spawn_serve(&dir, &cfg);
        wait_ready(&dir, &mut proc, admin);
        Serving {
            dir,
            upstream,
            port,
            admin,
            cfg,
            alice,
            proc,
        }
    }
}

fn spawn_serve(dir: &TempDir, config: &Path) -> Proc {
    let stderr = std::fs::File::create(dir.path("stderr.log")).unwrap();
    let child = Command::new(HEXON)
        .args(["serve", "-c", p(config)])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    Proc(child)
}

fn stderr_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path("stderr.log")).unwrap_or_default()
}

fn wait_ready(dir: &TempDir, proc: &mut Proc, admin: u16) {
    let ok = poll(|| {
        if let Some(st) = proc.0.try_wait().unwrap() {
            panic!("hexon serve exited ({st}):\n{}", stderr_log(dir));
        }
        (curl(&format!("http://127.0.0.1:{admin}/readyz"), &[]).status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "hexon serve not ready within {POLL_LIMIT:?}:\n{}",
        stderr_log(dir)
    );
}

/// base64url (no padding) decoder, for JWT payloads.
fn b64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c:?} in {s:?}"),
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    out
}

/// The JSON payload of a compact JWT.
fn jwt_payload(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    assert!(parts.iter().all(|p| !p.is_empty()), "empty JWT part");
    text(&b64url_decode(parts.get(1).unwrap()))
}

/// A tiny HTTP/1.1 upstream (thread per connection, keep-alive): answers 200
/// with the received request head as the body, and records every head.
struct Upstream {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let h = h.clone();
                std::thread::spawn(move || Upstream::connection(stream, &h));
            }
        });
        Upstream { port, heads }
    }

    fn connection(stream: TcpStream, heads: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            heads.lock().unwrap().push(head.clone());
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{head}",
                head.len()
            );
            if writer.write_all(res.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

/// Header lines of a raw request head named `name` (case-insensitive).
fn head_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// A gateway config: alice in `platform` nested in `eng`, bob in `ops`; one
/// route `app` allowing `allowed`.
fn serve_config(dir: &TempDir, port: u16, admin: u16, upstream: u16, allowed: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{data}"
admin_bind = "127.0.0.1:{admin}"
audit = "{audit}"

[signing]
key_id = "cli-test"

[jwt]
issuer = "hexon-cli"
audience = "hexon-cli-aud"

[[listener]]
name = "main"
bind = "127.0.0.1:{port}"

[[user]]
name = "alice"
email = "alice@example.com"

[[user]]
name = "bob"

[[group]]
name = "platform"
users = ["alice"]

[[group]]
name = "eng"
groups = ["platform"]

[[group]]
name = "ops"
users = ["bob"]

[[route]]
name = "app"
path = "/*"
upstream = ["http://127.0.0.1:{upstream}"]
[[route.allow]]
name = "team"
groups = ["{allowed}"]
"#,
        data = p(&dir.path("data")),
        audit = p(&dir.path("audit.log")),
    )
}

fn mint(config: &Path, user: &str) -> String {
    let out = hexon(&["token", "-c", p(config), "--user", user]);
    assert!(
        out.status.success(),
        "hexon token failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// Value of the `hexon_requests_total` sample whose labels contain all of
/// `labels`, or 0.
fn requests_metric(metrics: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("hexon_requests_total{"))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------- check

#[test]
fn check_valid_config_prints_ok_and_non_default_values() {
    let dir = TempDir::new("check-ok");
    let cfg = dir.write("hexon.toml", &serve_config(&dir, 8443, 9090, 3000, "eng"));
    let out = hexon(&["check", "-c", p(&cfg)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.contains(": OK"), "first line: {first:?}");
    assert!(
        first.contains("1 listener(s), 1 route(s), 2 user(s), 3 group(s)"),
        "counts: {first:?}"
    );
    for v in [
        "cli-test",
        "hexon-cli-aud",
        "127.0.0.1:9090",
        "127.0.0.1:8443",
    ] {
        assert!(
            stdout.contains(v),
            "non-default value {v:?} missing:\n{stdout}"
        );
    }
    // Defaults are not printed.
    assert!(!stdout.contains("max_body_bytes"), "{stdout}");
    assert!(!stdout.contains("ed25519"), "{stdout}");
}

#[test]
fn check_describes_acme_listeners_and_checks_their_ca_bundle() {
    let dir = TempDir::new("check-acme");
    let config = |bundle: &str| {
        format!(
            r#"
[gateway]
data_dir = "{}"

[[listener]]
name = "public"
bind = "127.0.0.1:8443"
[listener.tls.acme]
directory = "https://acme.example.test/directory"
domains = ["gw.example.test"]
must_staple = true
ca_bundle = "{bundle}"
eab_kid = "kid-1"
eab_hmac_key = "c2VjcmV0LW1hYy1rZXk"
"#,
            dir.0.display()
        )
    };
    let missing = dir.path("missing.pem");
    let cfg = dir.write("hexon.toml", &config(&missing.display().to_string()));
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("listener[0].tls.acme.ca_bundle") && stderr.contains("missing.pem"),
        "{stderr}"
    );

    let not_pem = dir.write("bundle.pem", "not a certificate");
    let cfg = dir.write("hexon.toml", &config(&not_pem.display().to_string()));
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no CERTIFICATE"),
        "{}",
        text(&out.stderr)
    );

    let root = self_signed_pem(&dir);
    let cfg = dir.write("hexon.toml", &config(&root));
    let out = hexon(&["check", "-c", p(&cfg)]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        stdout.contains("listener public: certificate by ACME from https://acme.example.test/directory for gw.example.test (tls-alpn-01, must-staple)"),
        "{stdout}"
    );
    assert!(stdout.contains("OCSP stapling on"), "{stdout}");
    // The EAB key is a secret.
    assert!(!stdout.contains("c2VjcmV0"), "{stdout}");
}

/// A self-signed certificate made with openssl, as a CA bundle.
fn self_signed_pem(dir: &TempDir) -> String {
    let cert = dir.path("root.pem");
    let key = dir.path("root.key");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=test root", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs")
        .success();
    assert!(ok);
    cert.display().to_string()
}

#[test]
fn check_invalid_config_names_every_location() {
    let dir = TempDir::new("check-bad");
    let cfg = dir.write(
        "hexon.toml",
        r#"
[bogus]
x = 1

[[listener]]
bind = "localhost"

[[group]]
name = "eng"

[[route]]
name = "app"
upstream = ["http://127.0.0.1:3000"]
[[route.allow]]
groups = ["engg"]
"#,
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(text(&out.stdout).trim().is_empty(), "nothing on stdout");
    assert!(stderr.contains("bogus"), "unknown section: {stderr}");
    assert!(
        stderr.contains("listener[0].bind") && stderr.contains("\"localhost\""),
        "bad bind: {stderr}"
    );
    assert!(
        stderr.contains(r#"route[0].allow[0].groups[0]: unknown group "engg""#),
        "unknown group: {stderr}"
    );
}

#[test]
fn check_unset_variable_is_refused_with_its_location() {
    let dir = TempDir::new("check-env");
    let cfg = dir.write(
        "hexon.toml",
        r#"
[signing]
key_file = "${HEXON_CLI_TEST_UNSET}"

[[listener]]
bind = "127.0.0.1:8443"
"#,
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("signing.key_file")
            && stderr.contains(r#"environment variable "HEXON_CLI_TEST_UNSET" is not set"#),
        "{stderr}"
    );
    // With the variable set, the same file is valid.
    let out = Command::new(HEXON)
        .args(["check", "-c", p(&cfg)])
        .env("HEXON_CLI_TEST_UNSET", "/etc/hexon/key.pem")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("/etc/hexon/key.pem"));
}

#[test]
fn check_missing_file_says_so() {
    let dir = TempDir::new("check-missing");
    let missing = dir.path("nope.toml");
    let out = hexon(&["check", "-c", p(&missing)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot read") && stderr.contains(p(&missing)),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("no such file"),
        "the OS reason: {stderr}"
    );
}

// ---------------------------------------------------------------- keys

#[test]
fn keys_generate_writes_private_pkcs8_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("keys");
    let key = dir.path("signing.pem");
    let out = hexon(&["keys", "generate", "--out", p(&key)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(p(&key)));
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8: {pem}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");

    // A second run must not overwrite it.
    let out = hexon(&["keys", "generate", "--out", p(&key)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(p(&key)), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), pem, "overwritten");

    // ECDSA also works; an unknown algorithm is refused.
    let ec = dir.path("ec.pem");
    let out = hexon(&[
        "keys",
        "generate",
        "--out",
        p(&ec),
        "--algorithm",
        "ecdsa-p256-sha256",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hexon(&[
        "keys",
        "generate",
        "--out",
        p(&dir.path("x.pem")),
        "--algorithm",
        "rsa",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown algorithm"));
    assert!(!dir.path("x.pem").exists());

    // `keys jwks` prints the public key under the configured key_id.
    let cfg = dir.write(
        "hexon.toml",
        &format!(
            "[signing]\nkey_file = \"{}\"\nkey_id = \"ops-2026\"\n\n[[listener]]\nbind = \"127.0.0.1:8443\"\n",
            p(&key)
        ),
    );
    let out = hexon(&["keys", "jwks", "-c", p(&cfg)]);
    let jwks = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(jwks.contains("\"keys\""), "{jwks}");
    assert!(jwks.contains("\"kid\": \"ops-2026\""), "{jwks}");
    assert!(jwks.contains("\"crv\": \"Ed25519\""), "{jwks}");
    assert!(!jwks.contains("\"d\""), "private part leaked: {jwks}");
    // Same file, same public key.
    assert_eq!(text(&hexon(&["keys", "jwks", "-c", p(&cfg)]).stdout), jwks);
}

// ---------------------------------------------------------------- token

#[test]
fn token_carries_resolved_groups_and_jwt_settings() {
    let dir = TempDir::new("token");
    let cfg = dir.write("hexon.toml", &serve_config(&dir, 8443, 9090, 3000, "eng"));
    let token = mint(&cfg, "alice");
    let payload = jwt_payload(&token);
    assert!(payload.contains(r#""sub":"alice""#), "{payload}");
    assert!(
        payload.contains(r#""groups":["eng","platform"]"#),
        "nested groups resolved: {payload}"
    );
    assert!(payload.contains(r#""iss":"hexon-cli""#), "{payload}");
    assert!(payload.contains(r#""aud":"hexon-cli-aud""#), "{payload}");

    let out = hexon(&["token", "-c", p(&cfg), "--user", "mallory"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).trim().is_empty());
    assert!(
        text(&out.stderr).contains("mallory"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- serve

#[test]
fn serve_enforces_signs_and_records() {
    let Serving {
        dir,
        upstream,
        port,
        admin,
        cfg,
        alice,
        mut proc,
    } = Serving::start("serve");
    let bob = mint(&cfg, "bob");
    let url = format!("http://127.0.0.1:{port}/api/items?x=1");

    // No credential: 401, with a request id, upstream not reached.
    let r = curl(&url, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "{r:?}"
    );
    assert!(upstream.heads.lock().unwrap().is_empty());

    // An invalid token is a 401 too, never anonymous.
    let r = curl(&url, &[bearer(&format!("{alice}x"))]);
    assert_eq!(r.status, 401, "{r:?}");

    // alice (eng through platform): 200; the upstream gets the signed
    // identity and not the forged group.
    let r = curl(&url, &[bearer(&alice), "Hexon-Groups: root".into()]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("x-request-id").is_some());
    let head = upstream.last_head();
    assert!(head.starts_with("GET /api/items?x=1 "), "{head}");
    assert_eq!(head_values(&head, "hexon-user"), ["alice"], "{head}");
    assert_eq!(head_values(&head, "signature-input").len(), 1, "{head}");
    assert_eq!(head_values(&head, "signature").len(), 1, "{head}");
    assert!(
        head_values(&head, "hexon-groups")
            .iter()
            .all(|g| !g.contains("root")),
        "forged group reached the upstream:\n{head}"
    );

    // bob (ops): 403.
    let r = curl(&url, &[bearer(&bob)]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(upstream.heads.lock().unwrap().len(), 1);

    // The JWKS, without credentials.
    let r = curl(
        &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""kid":"cli-test""#), "{}", r.body);
    let printed = text(&hexon(&["keys", "jwks", "-c", p(&cfg)]).stdout);
    let x_of = |s: &str| {
        let compact: String = s.split_whitespace().collect();
        compact
            .split(r#""x":""#)
            .nth(1)
            .and_then(|t| t.split('"').next())
            .map(str::to_owned)
    };
    assert!(x_of(&r.body).is_some());
    assert_eq!(x_of(&r.body), x_of(&printed), "served vs printed key");

    // Metrics count the requests, by route, decision and status.
    let m = curl(&format!("http://127.0.0.1:{admin}/metrics"), &[]);
    assert_eq!(m.status, 200);
    assert_eq!(
        requests_metric(&m.body, &["route=\"app\"", "status=\"200\""]),
        1,
        "{}",
        m.body
    );
    assert_eq!(
        requests_metric(&m.body, &["route=\"app\"", "status=\"403\""]),
        1,
        "{}",
        m.body
    );
    assert_eq!(
        requests_metric(&m.body, &["status=\"401\""]),
        2,
        "{}",
        m.body
    );

    // The audit log: one JSON line per request (5 so far).
    let audit = dir.path("audit.log");
    let lines = poll(|| {
        let t = std::fs::read_to_string(&audit).unwrap_or_default();
        (t.lines().count() >= 5).then_some(t)
    })
    .expect("audit lines");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with('{') && l.ends_with('}')));
    for key in ["\"user\":", "\"route\":", "\"decision\":", "\"status\":"] {
        assert!(lines.iter().all(|l| l.contains(key)), "{key}: {lines:#?}");
    }
    assert!(lines[0].contains("\"status\":401") && lines[0].contains("\"user\":null"));
    assert!(
        lines[2].contains("\"user\":\"alice\"")
            && lines[2].contains("\"route\":\"app\"")
            && lines[2].contains("\"decision\":\"allow\"")
            && lines[2].contains("\"status\":200"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("\"user\":\"bob\"")
            && lines[3].contains("\"route\":\"app\"")
            && lines[3].contains("\"decision\":\"deny\"")
            && lines[3].contains("\"status\":403"),
        "{}",
        lines[3]
    );

    // Open connections per connection thread: one kept-alive client
    // connection shows on one thread, and is gone once closed.
    let thread_connections = || {
        let m = curl(&format!("http://127.0.0.1:{admin}/metrics"), &[]);
        let samples: Vec<u64> = m
            .body
            .lines()
            .filter(|l| l.starts_with("hexon_connection_thread_connections{thread=\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!samples.is_empty(), "{}", m.body);
        samples.iter().sum::<u64>()
    };
    let mut kept = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut kept,
        b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .unwrap();
    let mut answer = [0u8; 64];
    let n = std::io::Read::read(&mut kept, &mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
    assert_eq!(thread_connections(), 1);
    drop(kept);
    assert_eq!(
        poll(|| (thread_connections() == 0).then_some(())),
        Some(()),
        "the closed connection still counted"
    );

    proc.sigterm();
    let st = proc.wait_for(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "{st:?}\n{}",
        stderr_log(&dir)
    );
}

/// The client's bearer token was issued for the gateway's audience; an
/// upstream that receives it could replay it against every other route.
#[test]
fn serve_does_not_forward_the_gateway_bearer_token_upstream() {
    let Serving {
        dir: _dir,
        upstream,
        port,
        admin: _admin,
        cfg: _cfg,
        alice,
        proc: _proc,
    } = Serving::start("no-bearer");
    let r = curl(&format!("http://127.0.0.1:{port}/"), &[bearer(&alice)]);
    assert_eq!(r.status, 200, "{r:?}");
    let head = upstream.last_head();
    assert_eq!(head_values(&head, "hexon-user"), ["alice"], "{head}");
    assert!(
        head_values(&head, "authorization").is_empty(),
        "the gateway's bearer token reached the upstream:\n{head}"
    );
}

#[test]
fn serve_hot_reloads_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    let Serving {
        dir,
        upstream,
        port,
        admin,
        cfg,
        alice,
        mut proc,
    } = Serving::start("reload");
    let url = format!("http://127.0.0.1:{port}/");
    let status = || curl(&url, &[bearer(&alice)]).status;
    assert_eq!(status(), 200);

    // The route now allows ops only: alice is refused.
    std::fs::write(&cfg, serve_config(&dir, port, admin, upstream.port, "ops")).unwrap();
    assert!(
        poll(|| (status() == 403).then_some(())).is_some(),
        "reload to `ops` not applied:\n{}",
        stderr_log(&dir)
    );

    // And back.
    std::fs::write(&cfg, serve_config(&dir, port, admin, upstream.port, "eng")).unwrap();
    assert!(
        poll(|| (status() == 200).then_some(())).is_some(),
        "reload back to `eng` not applied:\n{}",
        stderr_log(&dir)
    );

    // An invalid file: logged, the running configuration stays.
    std::fs::write(
        &cfg,
        serve_config(&dir, port, admin, upstream.port, "nosuchgroup"),
    )
    .unwrap();
    let logged = poll(|| {
        let log = stderr_log(&dir);
        (log.contains("invalid") && log.contains("unknown group")).then_some(log)
    });
    assert!(
        logged.is_some(),
        "no error logged for the invalid file:\n{}",
        stderr_log(&dir)
    );
    assert_eq!(status(), 200, "old configuration no longer serving");
    assert_eq!(
        proc.0.try_wait().unwrap(),
        None,
        "exited on an invalid file"
    );
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let Serving {
        dir,
        upstream: _upstream,
        port,
        admin: _admin,
        cfg: _cfg,
        alice,
        mut proc,
    } = Serving::start("sigterm");
    assert_eq!(
        curl(&format!("http://127.0.0.1:{port}/"), &[bearer(&alice)]).status,
        200
    );
    proc.sigterm();
    let st = proc.wait_for(Duration::from_secs(15));
    assert!(st.is_some(), "still running 15 s after SIGTERM");
    assert!(
        st.is_some_and(|s| s.code() == Some(0)),
        "{st:?}\n{}",
        stderr_log(&dir)
    );
    assert!(
        stderr_log(&dir).contains("shutting down"),
        "{}",
        stderr_log(&dir)
    );
    // Nothing listens any more.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

// ---------------------------------------------------------------- quickstart

#[test]
fn quickstart_prints_tokens_and_enforces() {
    let port = free_port();
    let child = Command::new(HEXON)
        .args(["quickstart", "--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    let stdout = proc.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut alice, mut bob) = (None, None);
    let deadline = Instant::now() + POLL_LIMIT;
    while (alice.is_none() || bob.is_none()) && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(t) = line.trim().strip_prefix("ALICE=") {
            alice = Some(t.to_owned());
        }
        if let Some(t) = line.trim().strip_prefix("BOB=") {
            bob = Some(t.to_owned());
        }
    }
    let alice = alice.expect("ALICE= on stdout");
    let bob = bob.expect("BOB= on stdout");
    assert!(jwt_payload(&alice).contains(r#""sub":"alice""#));
    assert!(jwt_payload(&bob).contains(r#""sub":"bob""#));

    let base = format!("http://127.0.0.1:{port}");
    let r = curl(&format!("{base}/whoami"), &[bearer(&alice)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""user": "alice""#), "{}", r.body);
    assert!(r.body.contains("verified by this backend"), "{}", r.body);
    assert!(r.body.contains(r#""engineering""#), "{}", r.body);

    // A spoofed identity header is stripped: still alice.
    let r = curl(
        &format!("{base}/whoami"),
        &[bearer(&alice), "Hexon-User: root".into()],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""user": "alice""#), "{}", r.body);

    assert_eq!(curl(&format!("{base}/whoami"), &[bearer(&bob)]).status, 403);
    assert_eq!(curl(&format!("{base}/whoami"), &[]).status, 401);
    let r = curl(&format!("{base}/public/hello"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("hello anonymous"), "{}", r.body);

    // The audit lines go to stdout too.
    let mut audit = Vec::new();
    let _ = poll(|| {
        while let Ok(l) = rx.try_recv() {
            if l.starts_with('{') {
                audit.push(l);
            }
        }
        (audit.len() >= 5).then_some(())
    });
    assert_eq!(audit.len(), 5, "{audit:#?}");

    proc.sigterm();
    let st = proc.wait_for(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

// ---------------------------------------------------------------- state

/// Decode standard base64 (with padding).
fn b64std_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    if s.len() % 4 != 0 {
        return None;
    }
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    Some(out)
}

#[test]
fn keys_secret_prints_a_new_32_byte_key_each_time() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = hexon(&["keys", "secret"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
        let key = stdout.trim().to_owned();
        assert_eq!(key.len(), 44, "{key:?}");
        let bytes = b64std_decode(&key).unwrap_or_else(|| panic!("not standard base64: {key:?}"));
        assert_eq!(bytes.len(), 32, "{key:?}");
        seen.push(key);
    }
    assert_ne!(seen[0], seen[1], "every run prints a new key");

    // What it prints is accepted as state.encryption_keys.
    let dir = TempDir::new("secret");
    let cfg = dir.write(
        "hexon.toml",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:8443\"\n\n[state]\nencryption_keys = [\"{}\", \"{}\"]\n",
            seen[0], seen[1]
        ),
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains(&seen[0]) && !stdout.contains(&seen[1]),
        "keys are redacted: {stdout}"
    );
}

/// The SQLite migrations shipped with this build: `(version, file)`.
fn sqlite_migrations() -> Vec<(i64, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hexon-core/migrations/sqlite");
    let mut v: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .map(|n| (n.split('_').next().unwrap().parse().unwrap(), n))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no migrations in {}", dir.display());
    v
}

#[test]
fn migrate_lists_applies_and_then_reports_up_to_date() {
    let dir = TempDir::new("migrate");
    let cfg = dir.write(
        "hexon.toml",
        &format!(
            "{}\n[state]\ndurable = \"sqlite\"\n",
            serve_config(&dir, 8443, 9090, 3000, "eng")
        ),
    );
    let migrations = sqlite_migrations();
    let last = migrations.last().unwrap().0;

    // --dry-run lists every migration and applies none (twice the same).
    let out = hexon(&["migrate", "-c", p(&cfg), "--dry-run"]);
    let listed = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (version, file) in &migrations {
        assert!(
            listed.contains(&format!("sqlite: would apply {version} ")),
            "{file} not listed:\n{listed}"
        );
    }
    assert!(
        listed.contains(&format!("sqlite: schema version 0 -> {last}")),
        "{listed}"
    );
    assert!(!listed.contains("applied"), "{listed}");
    let again = hexon(&["migrate", "-c", p(&cfg), "--dry-run"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), listed, "a dry run changes nothing");

    // Applying prints the versions; they are the ones the dry run listed.
    let out = hexon(&["migrate", "-c", p(&cfg)]);
    let applied = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (version, file) in &migrations {
        assert!(
            applied.contains(&format!("sqlite: applied {version} ")),
            "{file} not applied:\n{applied}"
        );
    }
    assert!(
        applied.contains(&format!("sqlite: schema version 0 -> {last}")),
        "{applied}"
    );
    assert_eq!(
        applied.replace("sqlite: applied ", "sqlite: would apply "),
        listed
    );
    assert!(dir.path("data/hexon.db").is_file());

    // Nothing left to do, with and without --dry-run.
    for args in [
        vec!["migrate", "-c", p(&cfg)],
        vec!["migrate", "-c", p(&cfg), "--dry-run"],
    ] {
        let out = hexon(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            format!("sqlite: schema is up to date (version {last})"),
            "{args:?}"
        );
    }
}

#[test]
fn migrate_against_an_unreachable_postgres_fails_without_the_password() {
    let dir = TempDir::new("migrate-pg");
    let cfg = dir.write(
        "hexon.toml",
        &format!(
            "{}\n[state]\ndurable = \"postgres\"\npostgres_url = \"postgres://hexon:Pa55-w0rd-e2e@127.0.0.1:1/hexon\"\nencryption_keys = [\"{}\"]\n",
            serve_config(&dir, 8443, 9090, 3000, "eng"),
            text(&hexon(&["keys", "secret"]).stdout).trim()
        ),
    );
    let start = Instant::now();
    let out = hexon(&["migrate", "-c", p(&cfg)]);
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "names the server: {stderr}");
    assert!(
        !stderr.contains("Pa55-w0rd-e2e") && !stdout.contains("Pa55-w0rd-e2e"),
        "password leaked:\n{stdout}\n{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn check_refuses_nats_without_credentials() {
    let dir = TempDir::new("check-nats");
    let key = text(&hexon(&["keys", "secret"]).stdout).trim().to_owned();
    let base = format!(
        "{}\n[state]\nshared = \"nats\"\nnats_url = \"nats://127.0.0.1:4222\"\nencryption_keys = [\"{key}\"]\n",
        serve_config(&dir, 8443, 9090, 3000, "eng")
    );
    let cfg = dir.write("hexon.toml", &base);
    let out = hexon(&["check", "-c", p(&cfg)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(text(&out.stdout).trim().is_empty(), "nothing on stdout");
    assert!(
        stderr.contains("state.nats_credentials_file"),
        "names the setting: {stderr}"
    );

    // With the explicit opt-out it passes.
    let cfg = dir.write(
        "ok.toml",
        &format!("{base}nats_allow_unauthenticated = true\n"),
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The kids of a JWKS document, sorted.
fn jwks_kids(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut kids: Vec<String> = v
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .unwrap()
        .iter()
        .map(|k| k.get("kid").and_then(|v| v.as_str()).unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

#[test]
fn keys_rotate_publishes_then_signs_with_the_new_key_and_old_tokens_stay_valid() {
    let dir = TempDir::new("rotate");
    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let before = serve_config(&dir, port, admin, upstream.port, "eng");
    let cfg_a = dir.write("a.toml", &before);
    // A token signed by the current key (created in the data directory).
    let old_token = mint(&cfg_a, "alice");

    let next = dir.path("next.pem");
    let out = hexon(&["keys", "rotate", "-c", p(&cfg_a), "--out", p(&next)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("key id cli-test-2"), "{said}");
    assert!(
        said.contains("[[signing.publish]]") && said.contains("Step 2"),
        "{said}"
    );
    assert!(next.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&next).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Never overwrites, and refuses a key id that is in use.
    let again = hexon(&["keys", "rotate", "-c", p(&cfg_a), "--out", p(&next)]);
    assert!(!again.status.success());
    let taken = hexon(&[
        "keys",
        "rotate",
        "-c",
        p(&cfg_a),
        "--out",
        p(&dir.path("x.pem")),
        "--key-id",
        "cli-test",
    ]);
    assert!(!taken.status.success());
    let bad = hexon(&[
        "keys",
        "rotate",
        "-c",
        p(&cfg_a),
        "--out",
        p(&dir.path("y.pem")),
        "--key-id",
        "bad id",
    ]);
    assert!(!bad.status.success());
    assert!(
        !dir.path("y.pem").exists(),
        "no key written for a refused key id"
    );
    assert!(
        text(&taken.stderr).contains("already in use"),
        "{}",
        text(&taken.stderr)
    );

    // Step 2 done: the new key signs, the old one is published.
    let old_key = dir.path("data").join("signing-key.pem");
    let signing = format!(
        "[signing]\nkey_file = \"{}\"\nkey_id = \"cli-test-2\"\n\n[[signing.publish]]\nkey_file = \"{}\"\nkey_id = \"cli-test\"\n",
        p(&next),
        p(&old_key)
    );
    let after = before.replace("[signing]\nkey_id = \"cli-test\"\n", &signing);
    assert_ne!(after, before);
    let cfg_b = dir.write("b.toml", &after);
    let jwks = hexon(&["keys", "jwks", "-c", p(&cfg_b)]);
    assert!(jwks.status.success(), "{}", text(&jwks.stderr));
    assert_eq!(jwks_kids(&text(&jwks.stdout)), ["cli-test", "cli-test-2"]);

    let new_token = mint(&cfg_b, "alice");
    let header = text(&b64url_decode(new_token.split('.').next().unwrap()));
    assert!(header.contains("\"kid\":\"cli-test-2\""), "{header}");
    let mut proc = spawn_serve(&dir, &cfg_b);
    wait_ready(&dir, &mut proc, admin);
    let served = curl(
        &format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        &[],
    );
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(jwks_kids(&served.body), ["cli-test", "cli-test-2"]);
    for token in [&old_token, &new_token] {
        let r = curl(&format!("http://127.0.0.1:{port}/"), &[bearer(token)]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // The upstream's signature is made with the new key.
    let head = upstream.last_head();
    assert!(head.contains("keyid=\"cli-test-2\""), "{head}");
    drop(proc);

    // A published key must not reuse a key id, and must be readable.
    let dup = after.replace("key_id = \"cli-test\"\n", "key_id = \"cli-test-2\"\n");
    let cfg_dup = dir.write("dup.toml", &dup);
    let out = hexon(&["check", "-c", p(&cfg_dup)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("signing.publish[0].key_id"),
        "{}",
        text(&out.stderr)
    );
    let missing = after.replace(p(&old_key), p(&dir.path("gone.pem")));
    let cfg_missing = dir.write("missing.toml", &missing);
    let out = hexon(&["keys", "jwks", "-c", p(&cfg_missing)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("signing.publish[0]"),
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- sql

/// `[sql]` with both bastions on loopback (plaintext, for the test), in
/// front of the machine's PostgreSQL (database `test`, user `postgres`) and
/// MariaDB (database `test`, `root`).
fn sql_section(pg: u16, my: u16) -> String {
    sql_section_as(pg, my, "root", "")
}

fn sql_section_as(pg: u16, my: u16, my_user: &str, my_password: &str) -> String {
    format!(
        r#"
[sql.postgres]
listen = "127.0.0.1:{pg}"
dangerous_allow_plaintext = true

[sql.mysql]
listen = "127.0.0.1:{my}"
dangerous_allow_plaintext = true

[[sql.databases]]
name = "app"
dialect = "postgres"
upstream = "127.0.0.1:5432"
upstream_database = "test"
[[sql.databases.roles]]
name = "engineers"
groups = ["eng"]
read_only = true
upstream_user = "postgres"
tables = [{{ name = "public.*", ops = ["select"] }}]

[[sql.databases]]
name = "shop"
dialect = "mysql"
upstream = "127.0.0.1:3306"
upstream_database = "test"
[[sql.databases.roles]]
name = "engineers"
groups = ["eng"]
read_only = true
upstream_user = "{my_user}"
upstream_password = "{my_password}"
tables = [{{ name = "shop.*", ops = ["select"] }}]
"#
    )
}

fn mariadb_root(sql: &str) {
    let o = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-P3306",
            "-uroot",
            "-e",
            sql,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{sql}: {}", text(&o.stderr));
}

/// `hexon sql seal-password` with the password on stdin.
fn seal(config: &Path, password: &str) -> Output {
    let mut child = Command::new(HEXON)
        .args(["sql", "seal-password", "-c", p(config)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn check_validates_the_sql_section_with_locations() {
    let dir = TempDir::new("check-sql");
    let (pg, my) = (free_port(), free_port());
    let base = serve_config(&dir, free_port(), free_port(), free_port(), "eng");
    let cfg = dir.write("ok.toml", &format!("{base}{}", sql_section(pg, my)));
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "sql: 2 database(s); PostgreSQL bastion 127.0.0.1:{pg}, MySQL bastion 127.0.0.1:{my}"
        )),
        "{stdout}"
    );
    // A plain password is reported; a sealed one opens; a damaged one is
    // located.
    let plain = dir.write(
        "plain.toml",
        &format!("{base}{}", sql_section_as(pg, my, "root", "hunter2")),
    );
    let out = hexon(&["check", "-c", p(&plain)]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 upstream_password value(s) in plain text"));
    // The [sql] values are printed, the password redacted.
    assert!(
        stdout.contains("sql.databases[1].upstream = \"127.0.0.1:3306\"")
            && stdout.contains("sql.databases[1].roles[0].upstream_password = \"[redacted]\""),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let sealed = seal(&plain, "hunter2\n");
    assert!(sealed.status.success(), "{}", text(&sealed.stderr));
    let sealed = text(&sealed.stdout).trim().to_owned();
    assert!(sealed.starts_with("sealed:") && !sealed.contains("hunter2"));
    let cfg = dir.write(
        "sealed.toml",
        &format!("{base}{}", sql_section_as(pg, my, "root", &sealed)),
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("plain text"));
    let damaged = sealed.replace("sealed:", "sealed:AAAA");
    let cfg = dir.write(
        "damaged.toml",
        &format!("{base}{}", sql_section_as(pg, my, "root", &damaged)),
    );
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sql.databases[1].roles[0].upstream_password: cannot open it"),
        "{}",
        text(&out.stderr)
    );
    let bad = sql_section(pg, my)
        .replace("dialect = \"mysql\"", "dialect = \"oracle\"")
        .replace(
            "read_only = true\nupstream_user = \"postgres\"",
            "read_only = 3\nupstream_user = \"postgres\"",
        );
    let cfg = dir.write("bad.toml", &format!("{base}{bad}"));
    let out = hexon(&["check", "-c", p(&cfg)]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("sql.databases[0].roles[0].read_only"),
        "{stderr}"
    );
}

#[test]
fn serve_runs_the_sql_bastions_with_gateway_tokens() {
    let dir = TempDir::new("serve-sql");
    let upstream = Upstream::start();
    let (port, admin, pg, my) = (free_port(), free_port(), free_port(), free_port());
    // The MariaDB account the bastion uses, its password sealed at rest.
    let account = format!("hexon_cli_{}", std::process::id());
    mariadb_root(&format!(
        "DROP USER IF EXISTS '{account}'@'%'; CREATE USER '{account}'@'%' IDENTIFIED BY 'cli-pw-9'; GRANT SELECT ON test.* TO '{account}'@'%'"
    ));
    let base = serve_config(&dir, port, admin, upstream.port, "eng");
    let cfg = dir.write("hexon.toml", &base);
    let sealed = seal(&cfg, "cli-pw-9");
    assert!(sealed.status.success(), "{}", text(&sealed.stderr));
    let sealed = text(&sealed.stdout).trim().to_owned();
    std::fs::write(
        &cfg,
        format!("{base}{}", sql_section_as(pg, my, &account, &sealed)),
    )
    .unwrap();
    let alice = mint(&cfg, "alice");
    let bob = mint(&cfg, "bob");
    let mut proc = spawn_serve(&dir, &cfg);
    wait_ready(&dir, &mut proc, admin);
    let psql = |token: &str, user: &str, sql: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={pg} user={user} dbname=app sslmode=disable"
            ))
            .args(["-X", "-A", "-t", "-c", sql])
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .output()
            .unwrap()
    };
    let mariadb = |token: &str, user: &str, sql: &str| {
        Command::new("mariadb")
            .arg("--no-defaults")
            .args(["-h127.0.0.1", &format!("-P{my}"), &format!("-u{user}")])
            .args(["-D", "shop", "--batch", "--skip-column-names", "--skip-ssl"])
            .args(["-e", sql])
            .env("MYSQL_PWD", token)
            .output()
            .unwrap()
    };
    let o = psql(&alice, "alice", "SELECT 40 + 2");
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stderr),
        stderr_log(&dir)
    );
    assert_eq!(text(&o.stdout).trim(), "42");
    let o = mariadb(&alice, "alice", "SELECT 40 + 2");
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stderr),
        stderr_log(&dir)
    );
    assert_eq!(text(&o.stdout).trim(), "42");
    // The ACL applies: the role is read-only.
    let o = psql(&alice, "alice", "CREATE TABLE hexon_cli_nope (a int)");
    assert!(!o.status.success());
    let o = mariadb(&alice, "alice", "CREATE TABLE hexon_cli_nope (a int)");
    assert!(!o.status.success());
    // bob is not in eng: no role on either database.
    let o = psql(&bob, "bob", "SELECT 1");
    assert!(text(&o.stderr).contains("no access"), "{}", text(&o.stderr));
    let o = mariadb(&bob, "bob", "SELECT 1");
    assert!(text(&o.stderr).contains("no access"), "{}", text(&o.stderr));
    // Each statement is in the query log: JSON lines among the text ones.
    let log = stderr_log(&dir);
    let query_log: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let admitted = query_log
        .iter()
        .filter(|l| l["user"] == "alice" && l["verdict"] == "admitted")
        .count();
    assert_eq!(admitted, 2, "{log}");
    let refused: Vec<_> = query_log
        .iter()
        .filter(|l| l["user"] == "alice" && l["verdict"] == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    for l in &refused {
        assert_eq!(l["stage"], "read_only", "{l}");
        assert!(
            l["message"]
                .as_str()
                .unwrap()
                .starts_with("statement refused"),
            "{l}"
        );
        assert!(l["ts"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    // Disabling alice (hot reload) refuses her logins on both bastions.
    let text_now = std::fs::read_to_string(&cfg).unwrap();
    let disabled = text_now.replace(
        "name = \"alice\"\nemail",
        "name = \"alice\"\ndisabled = true\nemail",
    );
    assert_ne!(disabled, text_now);
    std::fs::write(&cfg, disabled).unwrap();
    let refused = poll(|| {
        let o = psql(&alice, "alice", "SELECT 1");
        text(&o.stderr).contains("may not log in").then_some(())
    });
    assert!(refused.is_some(), "{}", stderr_log(&dir));
    let o = mariadb(&alice, "alice", "SELECT 1");
    assert!(
        text(&o.stderr).contains("may not log in"),
        "{}",
        text(&o.stderr)
    );
    proc.sigterm();
    assert!(proc.wait_for(Duration::from_secs(15)).is_some());
    assert!(TcpStream::connect(("127.0.0.1", my)).is_err());
    mariadb_root(&format!("DROP USER IF EXISTS '{account}'@'%'"));
}

/// A route stored through the admin API outlives the process; when the
/// file no longer fits it (its group was removed while the gateway was
/// down), `serve` refuses to start and says how to repair, and
/// `hexon routes list` / `hexon routes delete` do so without a running
/// gateway.
#[test]
fn store_routes_survive_restarts_and_are_repaired_offline() {
    let dir = TempDir::new("store-routes");
    let (port, admin) = (free_port(), free_port());
    // The file's route leaves /ledger/ free (the file's routes are matched
    // first).
    let toml = format!(
        "{}\n[[group]]\nname = \"admins\"\nusers = [\"alice\"]\n",
        serve_config(&dir, port, admin, 9, "eng").replace("path = \"/*\"", "path = \"/app/*\"")
    );
    let cfg = dir.write("hexon.toml", &toml);
    let alice = mint(&cfg, "alice");
    let mut proc = spawn_serve(&dir, &cfg);
    wait_ready(&dir, &mut proc, admin);
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-X", "POST", "-H", &bearer(&alice), "-d"])
        .arg(r#"{"name": "ledger", "path": "/ledger/*", "upstream": ["http://127.0.0.1:9"], "allow": [{"groups": ["ops"]}]}"#)
        .arg(format!("http://127.0.0.1:{admin}/api/v1/routes"))
        .output()
        .unwrap();
    assert!(
        text_of(&out).contains("\"applied\":true"),
        "{}",
        text_of(&out)
    );
    drop(proc);

    let list = hexon(&["routes", "list", "-c", p(&cfg)]);
    let listed = text(&list.stdout);
    assert!(
        listed.contains("ledger\t*/ledger/*\tversion 1") && listed.contains("fit it"),
        "{listed}{}",
        text(&list.stderr)
    );

    // The ops group goes from the file: the stored route no longer fits.
    let without_ops = toml.replace("[[group]]\nname = \"ops\"\nusers = [\"bob\"]\n", "");
    assert_ne!(without_ops, toml);
    std::fs::write(&cfg, &without_ops).unwrap();
    let mut refused = spawn_serve(&dir, &cfg);
    let status = poll(|| refused.0.try_wait().unwrap());
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve started with a store route that does not fit"
    );
    let log = stderr_log(&dir);
    assert!(
        log.contains("route \"ledger\".allow[0].groups[0]")
            && log.contains("hexon routes delete -c hexon.toml NAME"),
        "{log}"
    );
    let listed = text(&hexon(&["routes", "list", "-c", p(&cfg)]).stdout);
    assert!(listed.contains("do not fit"), "{listed}");

    let deleted = hexon(&["routes", "delete", "-c", p(&cfg), "ledger"]);
    assert!(
        text(&deleted.stdout).contains("deleted route \"ledger\""),
        "{}",
        text(&deleted.stderr)
    );
    let again = hexon(&["routes", "delete", "-c", p(&cfg), "ledger"]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("no route \"ledger\""));
    let mut proc = spawn_serve(&dir, &cfg);
    wait_ready(&dir, &mut proc, admin);
}

fn text_of(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}
