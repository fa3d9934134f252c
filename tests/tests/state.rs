//! The state layer as the gateway uses it: gateways assembled from
//! `hexon.toml` with `[state]` on real backends (SQLite files, PostgreSQL,
//! NATS JetStream), sessions presented as cookies to the real listener, and
//! an upstream whose view of the caller is verified with the gateway's
//! public key.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (trust auth, database `test`) and NATS
//! with JetStream at 127.0.0.1:4222; one test runs a nats-server of its own.
//! A missing server fails the test with the command that starts it. Every
//! test works in its own data directories, PostgreSQL schema and NATS
//! prefix, removed when it ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use hexon_core::UnixTime;
use hexon_core::config::Config;
use hexon_core::httpsig::Verifier;
use hexon_core::store::conformance::NatsServer;
use hexon_core::store::{Event, EventStream, SecretKeys, StartAt};
use hexon_proxy::authn::{DEFAULT_SESSION_COOKIE, Session};
use hexon_proxy::body::{BoxBody, empty, full};
use hexon_proxy::gateway::assemble::watch_config;
use hexon_proxy::gateway::{Gateway, Running};
use hexon_proxy::test_util::{self, Handler, handler};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;

mod common;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const START_NATS: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";
const HOST: &str = "app.example.com";

// ------------------------------------------------------------ helpers

/// A random lowercase hex tag (for schemas, prefixes, cookies).
fn random_hex() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.write_usize(N.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// A new key for `state.encryption_keys`, as `hexon keys secret` prints it.
fn secret_key() -> String {
    SecretKeys::generate_base64()
}

/// A session cookie value: 256 random bits, hex.
fn new_cookie() -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(SecretKeys::generate_base64())
        .unwrap();
    hexon_core::hex::encode(&bytes)
}

async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?}"),
    }
}

/// A directory of a test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "hexon-e2e-state-{tag}-{}-{}",
            std::process::id(),
            random_hex()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn toml(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ------------------------------------------------------------ upstream

/// Answers with the request it received as JSON (method, URI, headers).
fn header_echo() -> Handler {
    handler(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        test_util::count_body(body).await.unwrap();
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let vals: Vec<Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::from(v.to_str().unwrap_or("?")))
                .collect();
            headers.insert(name.as_str().to_owned(), Value::Array(vals));
        }
        let j = json!({"method": parts.method.as_str(), "uri": parts.uri.to_string(), "headers": headers});
        Response::builder()
            .header("content-type", "application/json")
            .body(full(j.to_string()))
            .unwrap()
    })
}

// ------------------------------------------------------------ gateway

/// The gateway configuration of these tests: alice and bob in `staff`, one
/// route to `upstream` allowing `staff`; `users` and `state` appended.
fn config_text(data: &Dir, upstream: SocketAddr, users: &str, state: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{data}"
audit = "off"

[[listener]]
bind = "127.0.0.1:0"

{users}

[[group]]
name = "staff"
users = ["alice", "bob"]

[[route]]
name = "app"
path = "/*"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]

[state]
{state}
"#,
        data = data.toml(),
    )
}

const USERS: &str = r#"
[[user]]
name = "alice"
email = "alice@example.com"
[[user]]
name = "bob"
"#;

fn parse(toml: &str) -> Config {
    Config::parse(toml, &|_| None).unwrap_or_else(|e| panic!("config: {e}\n{toml}"))
}

/// A gateway built from a configuration and listening.
struct Node {
    gateway: Arc<Gateway>,
    running: Option<Running>,
    addr: SocketAddr,
}

impl Node {
    async fn start(toml: &str) -> Node {
        let gateway = Gateway::build(parse(toml))
            .await
            .unwrap_or_else(|e| panic!("Gateway::build: {e}"));
        Node::serve(Arc::new(gateway)).await
    }

    async fn serve(gateway: Arc<Gateway>) -> Node {
        let running = gateway.start().await.unwrap();
        let addr = running.listeners[0];
        Node {
            gateway,
            running: Some(running),
            addr,
        }
    }

    /// Log `user` in: a new session in the gateway's store, as the login
    /// page will make it. Returns the cookie value.
    async fn login(&self, user: &str) -> String {
        let now = UnixTime::now();
        let identity = self
            .gateway
            .config()
            .directory()
            .unwrap()
            .identity_builder(user)
            .unwrap()
            .auth("password", now)
            .unwrap()
            .session(format!("s-{}", random_hex()))
            .build()
            .unwrap();
        let cookie = new_cookie();
        self.gateway
            .sessions()
            .insert(
                &cookie,
                &Session::new(identity, now.saturating_add(Duration::from_secs(3600))),
                now,
            )
            .await
            .unwrap();
        cookie
    }

    /// `GET /whoami` with a bearer token through the real listener: the status.
    async fn get_bearer(&self, token: &str) -> StatusCode {
        let req = Request::get("/whoami")
            .header("host", HOST)
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        send(self.addr, req).await.status()
    }

    /// `GET /whoami` with the session cookie through the real listener.
    async fn get(&self, cookie: &str) -> Seen {
        let req = Request::get("/whoami")
            .header("host", HOST)
            .header("cookie", format!("{DEFAULT_SESSION_COOKIE}={cookie}"))
            .body(empty())
            .unwrap();
        let res = send(self.addr, req).await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = within(
            "response body",
            Duration::from_secs(30),
            res.into_body().collect(),
        )
        .await
        .unwrap()
        .to_bytes();
        let user = (status == StatusCode::OK).then(|| self.verified_user(&body, cookie));
        Seen {
            status,
            headers,
            user,
        }
    }

    /// The user the upstream saw, verified with this gateway's public key
    /// (the upstream's view of the signed request, rebuilt from its echo).
    fn verified_user(&self, body: &[u8], cookie: &str) -> String {
        let j: Value = serde_json::from_slice(body).unwrap();
        let mut parts = Request::get(j["uri"].as_str().unwrap())
            .body(())
            .unwrap()
            .into_parts()
            .0;
        for (name, vals) in j["headers"].as_object().unwrap() {
            for v in vals.as_array().unwrap() {
                let v = v.as_str().unwrap();
                assert!(
                    !v.contains(cookie),
                    "the session cookie reached the upstream: {name}: {v}"
                );
                parts.headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
        }
        let v = Verifier::new(self.gateway.keys().clone(), [HOST])
            .verify_parts(&parts, UnixTime::now())
            .unwrap_or_else(|e| panic!("the upstream's request does not verify: {e:?}"));
        assert_eq!(
            j["headers"]["hexon-user"],
            json!([v.identity.username()]),
            "the header the upstream reads is the signed identity"
        );
        v.identity.username().to_owned()
    }

    /// Stop listening and drop the gateway (and with it its state).
    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
        drop(self.gateway);
    }
}

/// What a request through the gateway got.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    /// The user the upstream saw (verified), on 200.
    user: Option<String>,
}

impl Seen {
    #[track_caller]
    fn assert_user(&self, user: &str) {
        assert_eq!(self.status, StatusCode::OK, "{user}: {self:?}");
        assert_eq!(self.user.as_deref(), Some(user), "{self:?}");
    }

    #[track_caller]
    fn assert_refused(&self) {
        assert_eq!(self.status, StatusCode::UNAUTHORIZED, "{self:?}");
        let cleared = self.headers.get_all("set-cookie").iter().any(|v| {
            let v = v.to_str().unwrap();
            v.starts_with(&format!("{DEFAULT_SESSION_COOKIE}=;")) && v.contains("Max-Age=0")
        });
        assert!(cleared, "a refused session's cookie is cleared: {self:?}");
    }
}

async fn send(addr: SocketAddr, req: Request<BoxBody>) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    within(
        "gateway response",
        Duration::from_secs(30),
        tx.send_request(req),
    )
    .await
    .unwrap()
}

/// Wait for an event matching `want` on `sub`, at most 10 s.
async fn expect_event(sub: &mut EventStream, what: &str, want: impl Fn(&Event) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Err(_) => panic!("no {what} event within 10 s"),
            Ok(None) => panic!("the event stream ended before {what}"),
            Ok(Some(Err(e))) => panic!("event stream error before {what}: {e}"),
            Ok(Some(Ok(record))) if want(&record.event) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Poll `f` every 100 ms until it returns `Some`, at most `limit`.
async fn poll<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------ servers

/// PostgreSQL, or a failure saying how to start it.
async fn postgres() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(POSTGRES_URL)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {POSTGRES_URL} ({e}). Start it with:\n  {START_POSTGRES}")
        })
}

/// A PostgreSQL schema of the test's own, dropped when the test ends.
struct Schema(String);

impl Schema {
    async fn new() -> Schema {
        postgres().await.close().await;
        Schema(format!("hx_e2e_{}", random_hex()))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop may run inside the test's runtime: clean up on a thread with
        // a runtime of its own.
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let pool = postgres().await;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&pool)
                        .await
                        .unwrap();
                    pool.close().await;
                });
        })
        .join();
        if done.is_err() && !std::thread::panicking() {
            panic!("could not drop schema {}", self.0);
        }
    }
}

async fn nats_client(url: &str) -> async_nats::Client {
    match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            panic!("NATS is not reachable at {url} ({e}). Start it with:\n  {START_NATS}")
        }
        Err(_) => panic!("NATS at {url} did not answer within 5 s. Start it with:\n  {START_NATS}"),
    }
}

/// A NATS prefix of the test's own; its KV buckets and event stream are
/// deleted when the test ends.
struct Prefix {
    url: String,
    name: String,
}

impl Prefix {
    async fn new(url: &str) -> Prefix {
        // Check the server now, so a missing one fails with how to start it.
        drop(nats_client(url).await);
        Prefix {
            url: url.to_owned(),
            name: format!("e2e-{}", random_hex()),
        }
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(hexon_core::store::conformance::delete_nats_prefix(
                    &url, &prefix,
                ));
        })
        .join();
    }
}

fn nats_state(url: &str, prefix: &str, node: &str, key: &str) -> String {
    format!(
        r#"durable = "memory"
shared = "nats"
nats_url = "{url}"
nats_prefix = "{prefix}"
nats_allow_unauthenticated = true
node = "{node}"
encryption_keys = ["{key}"]
"#
    )
}

/// `[state]` of a cluster node: PostgreSQL (schema `schema`) for durable
/// objects, NATS (prefix `prefix`) for shared state and events.
fn cluster_state(schema: &Schema, prefix: &Prefix, node: &str, key: &str) -> String {
    format!(
        "durable = \"postgres\"\npostgres_url = \"{POSTGRES_URL}\"\npostgres_schema = \"{}\"\npostgres_max_connections = 4\nshared = \"nats\"\nnats_url = \"{NATS_URL}\"\nnats_prefix = \"{}\"\nnats_allow_unauthenticated = true\nnode = \"{node}\"\nencryption_keys = [\"{key}\"]\n",
        schema.0, prefix.name
    )
}

/// A call to the admin API at `admin` with `token`: status and JSON body.
async fn admin_json(
    admin: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"))
        .body(full(body.to_string()))
        .unwrap();
    let res = send(admin, req).await;
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
    )
}

// ------------------------------------------------------------ tests

/// The default single-node setup keeps sessions in its SQLite file: they
/// survive a restart (the generated `state-key` is reused), revocations do
/// too, and the file belongs to one gateway at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sessions_and_revocations_survive_a_restart() {
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let data = Dir::new("sqlite");
    let toml = config_text(
        &data,
        upstream,
        USERS,
        "durable = \"sqlite\"\nshared = \"durable\"\n",
    );

    let first = Node::start(&toml).await;
    let alice = first.login("alice").await;
    let bob = first.login("bob").await;
    first.get(&alice).await.assert_user("alice");
    first.get(&bob).await.assert_user("bob");
    let unknown = new_cookie();
    first.get(&unknown).await.assert_refused();

    let db = data.join("hexon.db");
    let key_file = data.join("state-key");
    assert!(db.is_file(), "{} missing", db.display());
    assert!(key_file.is_file(), "{} missing", key_file.display());
    #[cfg(unix)]
    {
        assert_eq!(mode(&db), 0o600, "{}", db.display());
        assert_eq!(mode(&key_file), 0o600, "{}", key_file.display());
    }
    let key = std::fs::read_to_string(&key_file).unwrap();

    // The state file belongs to one process: a second gateway on the same
    // data directory is refused, and the first one is unharmed.
    let err = match Gateway::build(parse(&toml)).await {
        Ok(_) => panic!("a second gateway opened the same SQLite state file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("in use") && err.contains(&db.display().to_string()),
        "{err}"
    );
    first.get(&alice).await.assert_user("alice");

    // Bob is disabled before the restart.
    first.gateway.user_disabled("bob").await.unwrap();
    first.get(&bob).await.assert_refused();
    first.stop().await;

    let second = Node::start(&toml).await;
    second.get(&alice).await.assert_user("alice");
    second.get(&bob).await.assert_refused();
    second.get(&unknown).await.assert_refused();
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "the generated state-key is reused, not replaced"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&key_file), 0o600);
    }
    // Logout ends the session for good.
    assert!(second.gateway.sessions().remove(&alice).await.unwrap());
    second.get(&alice).await.assert_refused();
    second.stop().await;
}

/// Two gateways on one NATS share sessions: made on one node, valid on the
/// other; revoked on one node, refused on the other at once; the event
/// reaches the other node's bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_sessions_and_revocations_over_nats() {
    let prefix = Prefix::new(NATS_URL).await;
    let key = secret_key();
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let (dir_a, dir_b) = (Dir::new("nats-a"), Dir::new("nats-b"));
    // Sessions are sealed: nodes sharing them must share the keys, so a
    // NATS configuration without them is refused.
    let keyless = config_text(
        &dir_a,
        upstream,
        USERS,
        &nats_state(NATS_URL, &prefix.name, "node-a", &key)
            .replace(&format!("encryption_keys = [\"{key}\"]\n"), ""),
    );
    let err = Config::parse(&keyless, &|_| None).unwrap_err().to_string();
    assert!(err.contains("state.encryption_keys"), "{err}");

    let a = Node::start(&config_text(
        &dir_a,
        upstream,
        USERS,
        &nats_state(NATS_URL, &prefix.name, "node-a", &key),
    ))
    .await;
    let b = Node::start(&config_text(
        &dir_b,
        upstream,
        USERS,
        &nats_state(NATS_URL, &prefix.name, "node-b", &key),
    ))
    .await;
    assert_eq!(a.gateway.state().kv.backend(), "nats");
    assert_eq!(b.gateway.state().events.backend(), "nats");

    let alice = a.login("alice").await;
    let bob = b.login("bob").await;
    b.get(&alice).await.assert_user("alice");
    a.get(&alice).await.assert_user("alice");
    a.get(&bob).await.assert_user("bob");
    b.get(&bob).await.assert_user("bob");

    // Disabling alice on A ends her sessions on B at once; bob is untouched.
    let mut events = b
        .gateway
        .state()
        .events
        .subscribe(StartAt::New)
        .await
        .unwrap();
    a.gateway.user_disabled("alice").await.unwrap();
    b.get(&alice).await.assert_refused();
    a.get(&alice).await.assert_refused();
    b.get(&bob).await.assert_user("bob");
    expect_event(
        &mut events,
        "user_sessions_revoked for alice",
        |e| matches!(e, Event::UserSessionsRevoked { subject } if subject == "alice"),
    )
    .await;
    expect_event(
        &mut events,
        "user_disabled for alice",
        |e| matches!(e, Event::UserDisabled { subject } if subject == "alice"),
    )
    .await;

    // Revoking is per user and from now on: alice's next session (made on
    // B) works on both nodes.
    let again = b.login("alice").await;
    a.get(&again).await.assert_user("alice");
    b.get(&again).await.assert_user("alice");
    a.get(&alice).await.assert_refused();

    // Revoking bob's sessions on B (without disabling him) reaches A too.
    b.gateway.sessions().revoke_subject("bob").await.unwrap();
    a.get(&bob).await.assert_refused();
    a.get(&again).await.assert_user("alice");

    a.stop().await;
    b.stop().await;
}

/// A configuration reload that disables a user ends their sessions (the
/// real `watch_config` task, as `hexon serve` runs it), including an edit
/// made while the gateway was starting; enabling the user again does not
/// bring the old sessions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_disabling_a_user_revokes_their_sessions() {
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let data = Dir::new("reload");
    let file = data.join("hexon.toml");
    // carol is disabled from the start: the watcher revokes her sessions
    // when it starts (she may have been disabled while the node was down).
    let users = |alice_disabled: bool| {
        format!(
            "[[user]]\nname = \"alice\"\ndisabled = {alice_disabled}\n[[user]]\nname = \"bob\"\n[[user]]\nname = \"carol\"\ndisabled = true\n"
        )
    };
    let write = |text: &str| {
        let tmp = data.join("hexon.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let sha: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        hexon_core::hex::encode(&sha)
    };
    let enabled = config_text(&data, upstream, &users(false), "");
    let disabled = config_text(&data, upstream, &users(true), "");
    write(&enabled);

    // Built from the file as `hexon serve` does; the watcher starts after.
    let node = Node::start(&std::fs::read_to_string(&file).unwrap()).await;
    let alice = node.login("alice").await;
    let bob = node.login("bob").await;
    node.get(&alice).await.assert_user("alice");
    node.get(&bob).await.assert_user("bob");
    // A bearer token `hexon token` minted for alice, and one for bob.
    let config = node.gateway.config().clone();
    let key = node.gateway.key().clone();
    let alice_token = hexon_proxy::gateway::mint_token(&config, key.clone(), "alice")
        .await
        .unwrap();
    let bob_token = hexon_proxy::gateway::mint_token(&config, key.clone(), "bob")
        .await
        .unwrap();
    assert_eq!(node.get_bearer(&alice_token).await, StatusCode::OK);
    // carol is disabled: no token is minted for her.
    let refused = hexon_proxy::gateway::mint_token(&config, key, "carol")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("disabled"), "{refused}");

    // Alice is disabled in the file while the gateway is starting (after it
    // read the file, before the watcher first looks): the watcher must
    // apply it, not take the edited file as what is running.
    let sha = write(&disabled);
    let mut events = node
        .gateway
        .state()
        .events
        .subscribe(StartAt::New)
        .await
        .unwrap();
    let watcher = tokio::spawn(watch_config(
        file.clone(),
        node.gateway.clone(),
        |_| None,
        Duration::from_millis(100),
    ));
    expect_event(
        &mut events,
        "user_disabled for carol at start",
        |e| matches!(e, Event::UserDisabled { subject } if subject == "carol"),
    )
    .await;
    poll(
        "alice refused after the reload",
        Duration::from_secs(10),
        || async {
            let seen = node.get(&alice).await;
            (seen.status != StatusCode::OK).then_some(seen)
        },
    )
    .await
    .assert_refused();
    node.get(&bob).await.assert_user("bob");
    // Her bearer token is refused too (tokens are stateless: the gateway
    // checks the current configuration's enabled users on every request).
    assert_eq!(
        node.get_bearer(&alice_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(node.get_bearer(&bob_token).await, StatusCode::OK);
    expect_event(
        &mut events,
        "user_disabled for alice",
        |e| matches!(e, Event::UserDisabled { subject } if subject == "alice"),
    )
    .await;
    expect_event(
        &mut events,
        "config_changed with the file's SHA-256",
        |e| matches!(e, Event::ConfigChanged { sha256 } if *sha256 == sha),
    )
    .await;

    // Enable her again: the old session stays revoked, a new one works.
    let sha = write(&enabled);
    expect_event(
        &mut events,
        "config_changed after enabling alice",
        |e| matches!(e, Event::ConfigChanged { sha256 } if *sha256 == sha),
    )
    .await;
    let fresh = node.login("alice").await;
    node.get(&fresh).await.assert_user("alice");
    node.get(&alice).await.assert_refused();
    node.get(&bob).await.assert_user("bob");

    // Disabled again while the watcher runs: the new session ends too.
    write(&disabled);
    poll(
        "alice's new session refused",
        Duration::from_secs(10),
        || async {
            let seen = node.get(&fresh).await;
            (seen.status != StatusCode::OK).then_some(seen)
        },
    )
    .await
    .assert_refused();
    expect_event(
        &mut events,
        "user_disabled for alice again",
        |e| matches!(e, Event::UserDisabled { subject } if subject == "alice"),
    )
    .await;
    node.get(&bob).await.assert_user("bob");

    watcher.abort();
    let _ = watcher.await;
    node.stop().await;
}

/// PostgreSQL as the durable store: the gateway applies the migrations at
/// start, and two gateways on one schema share sessions through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_migrated_at_start_and_shares_sessions() {
    let schema = Schema::new().await;
    let key = secret_key();
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let state = format!(
        "durable = \"postgres\"\npostgres_url = \"{POSTGRES_URL}\"\npostgres_schema = \"{}\"\npostgres_max_connections = 4\nshared = \"durable\"\nencryption_keys = [\"{key}\"]\n",
        schema.0
    );
    let (dir_a, dir_b) = (Dir::new("pg-a"), Dir::new("pg-b"));
    let a = Node::start(&config_text(&dir_a, upstream, USERS, &state)).await;

    let pool = postgres().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&schema.0)
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "directory_users",
        "credentials",
        "api_clients",
        "certificates",
        "audit_log",
        "kv",
        "_sqlx_migrations",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "table {t} missing from schema {}: {tables:?}",
            schema.0
        );
    }
    let migrations = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hexon-core/migrations/postgres"),
    )
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sql")
    })
    .count();
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\"._sqlx_migrations WHERE success",
        schema.0
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        usize::try_from(applied).unwrap(),
        migrations,
        "every migration applied"
    );
    // With configured keys, nothing is generated in the data directory.
    assert!(!dir_a.join("state-key").exists());
    assert!(!dir_a.join("hexon.db").exists());

    // A second gateway on the same schema: nothing left to migrate, and the
    // sessions are shared.
    let b = Node::start(&config_text(&dir_b, upstream, USERS, &state)).await;
    let alice = a.login("alice").await;
    let bob = a.login("bob").await;
    b.get(&alice).await.assert_user("alice");
    a.get(&alice).await.assert_user("alice");
    b.get(&bob).await.assert_user("bob");
    // The store holds the SHA-256 of the cookie, sealed: never the cookie.
    let digest: [u8; 32] = Sha256::digest(alice.as_bytes()).into();
    let digest = hexon_core::hex::encode(&digest);
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".kv WHERE bucket = 'sessions' AND key = $1",
        schema.0
    ))
    .bind(digest.as_bytes())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored, 1,
        "alice's session row, keyed by the cookie's digest"
    );
    let leaked: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".kv WHERE position($1 in key) > 0 OR position($1 in value) > 0",
        schema.0
    ))
    .bind(alice.as_bytes())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "the cookie value is stored nowhere");

    b.gateway.user_disabled("alice").await.unwrap();
    a.get(&alice).await.assert_refused();
    a.get(&bob).await.assert_user("bob");

    a.stop().await;
    b.stop().await;
    pool.close().await;
    drop(schema);
}

/// When the shared store goes away, a session request fails closed with
/// 503 + Retry-After and the browser keeps its cookie; when it is back,
/// the same session works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fail_closed_while_nats_is_down_and_recover() {
    let storage = Dir::new("nats");
    let mut server = NatsServer::start(storage.path());
    let url = server.url();
    let prefix = format!("e2e-{}", random_hex());
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let data = Dir::new("outage");
    let node = Node::start(&config_text(
        &data,
        upstream,
        USERS,
        &nats_state(&url, &prefix, "node-outage", &secret_key()),
    ))
    .await;
    let alice = node.login("alice").await;
    node.get(&alice).await.assert_user("alice");

    server.kill();
    let seen = node.get(&alice).await;
    assert_eq!(
        seen.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an outage is neither a login nor a logout: {seen:?}"
    );
    let retry = seen
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {seen:?}"));
    assert!(
        retry.to_str().unwrap().parse::<u64>().is_ok(),
        "Retry-After: {retry:?}"
    );
    assert!(
        seen.headers.get("set-cookie").is_none(),
        "the cookie is left alone during an outage: {seen:?}"
    );
    assert!(seen.user.is_none());
    // A request with no session is unaffected by the outage.
    let anonymous = send(
        node.addr,
        Request::get("/whoami")
            .header("host", HOST)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    server.restart();
    let back = poll(
        "the session after NATS is back",
        Duration::from_secs(15),
        || async {
            let seen = node.get(&alice).await;
            assert!(
                seen.status == StatusCode::OK || seen.status == StatusCode::SERVICE_UNAVAILABLE,
                "while reconnecting: only 503 until it works, never a logout: {seen:?}"
            );
            (seen.status == StatusCode::OK).then_some(seen)
        },
    )
    .await;
    back.assert_user("alice");

    node.stop().await;
    // The server is ours: its storage goes with its directory.
    drop(server);
}

/// API clients live in the shared durable store: an admin change on one
/// node (through its admin API) reaches the other node's request path at
/// once, through the event bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_client_changes_reach_every_node() {
    let schema = Schema::new().await;
    let prefix = Prefix::new(NATS_URL).await;
    let key = secret_key();
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let state = |node: &str| cluster_state(&schema, &prefix, node, &key);
    let admins = "[[group]]\nname = \"admins\"\nusers = [\"alice\"]\n";
    let with_admin = |text: String| {
        text.replace(
            "audit = \"off\"\n",
            "audit = \"off\"\nadmin_bind = \"127.0.0.1:0\"\n",
        )
    };
    let (dir_a, dir_b) = (Dir::new("clients-a"), Dir::new("clients-b"));
    let a = Node::start(&with_admin(config_text(
        &dir_a,
        upstream,
        &format!("{USERS}{admins}"),
        &state("node-a"),
    )))
    .await;
    let b = Node::start(&config_text(
        &dir_b,
        upstream,
        &format!("{USERS}{admins}"),
        &state("node-b"),
    ))
    .await;
    let admin = a.running.as_ref().unwrap().admin.unwrap();
    let token =
        hexon_proxy::gateway::mint_token(a.gateway.config(), a.gateway.key().clone(), "alice")
            .await
            .unwrap();
    let call = |method: &'static str, path: String, body: Value| {
        let token = token.clone();
        async move { admin_json(admin, &token, method, &path, body).await }
    };
    let (s, _) = call(
        "POST",
        "/api/v1/clients".into(),
        json!({"id": "etl", "name": "etl"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, j) = call(
        "POST",
        "/api/v1/clients/etl/credentials".into(),
        json!({"kind": "api_key"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let api_key = j["secret"].as_str().unwrap().to_owned();
    let (s, _) = call(
        "PUT",
        "/api/v1/clients/etl/permissions".into(),
        json!([{"route": "app", "methods": ["GET"]}]),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let get = |node: SocketAddr| {
        let api_key = api_key.clone();
        async move {
            let req = Request::get("/x")
                .header("host", HOST)
                .header("x-api-key", api_key)
                .body(empty())
                .unwrap();
            send(node, req).await.status()
        }
    };
    // B learns of the new client from the event bus, not from a restart.
    poll(
        "node B accepts the new key",
        Duration::from_secs(10),
        || async { (get(b.addr).await == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(get(a.addr).await, StatusCode::OK);
    let (s, _) = call(
        "PATCH",
        "/api/v1/clients/etl".into(),
        json!({"status": "suspended"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    poll(
        "node B refuses the suspended client",
        Duration::from_secs(10),
        || async { (get(b.addr).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// Routes kept in the durable store: created on node A through its admin
/// API, served by node B moments later (the event bus, no restart);
/// changed and deleted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_routes_reach_every_node() {
    let schema = Schema::new().await;
    let prefix = Prefix::new(NATS_URL).await;
    let key = secret_key();
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    let state = |node: &str| cluster_state(&schema, &prefix, node, &key);
    let admins = "[[group]]\nname = \"admins\"\nusers = [\"alice\"]\n";
    // The file's route covers /app/ only here, so /ledger/ has no route.
    // Only node A's file has the finance group.
    let text = |dir: &Dir, node: &str| {
        let finance = if node == "node-a" {
            "[[group]]\nname = \"finance\"\nusers = [\"bob\"]\n"
        } else {
            ""
        };
        config_text(
            dir,
            upstream,
            &format!("{USERS}{admins}{finance}"),
            &state(node),
        )
        .replace("path = \"/*\"", "path = \"/app/*\"")
        .replace(
            "audit = \"off\"\n",
            "audit = \"off\"\nadmin_bind = \"127.0.0.1:0\"\n",
        )
    };
    let (dir_a, dir_b) = (Dir::new("routes-a"), Dir::new("routes-b"));
    let a = Node::start(&text(&dir_a, "node-a")).await;
    let b = Node::start(&text(&dir_b, "node-b")).await;
    let admin = a.running.as_ref().unwrap().admin.unwrap();
    let token =
        hexon_proxy::gateway::mint_token(a.gateway.config(), a.gateway.key().clone(), "alice")
            .await
            .unwrap();
    let call = |method: &'static str, path: &'static str, body: Value| {
        let token = token.clone();
        async move { admin_json(admin, &token, method, path, body).await }
    };
    // Each node signs its own tokens.
    let get = |node: &Node, user: &'static str| {
        let (gateway, node) = (node.gateway.clone(), node.addr);
        async move {
            let token =
                hexon_proxy::gateway::mint_token(gateway.config(), gateway.key().clone(), user)
                    .await
                    .unwrap();
            let req = Request::get("/ledger/2026")
                .header("host", HOST)
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            send(node, req).await.status()
        }
    };
    // No route: refused.
    assert_eq!(get(&b, "bob").await, StatusCode::FORBIDDEN);

    let route = |users: &[&str]| {
        json!({
            "name": "ledger",
            "path": "/ledger/*",
            "upstream": [format!("http://{upstream}")],
            "allow": [{"users": users}],
        })
    };
    let (s, j) = call("POST", "/api/v1/routes", route(&["alice", "bob"])).await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    poll(
        "node B serves the new route",
        Duration::from_secs(10),
        || async { (get(&b, "bob").await == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(get(&a, "bob").await, StatusCode::OK);

    // A route that fits A's file but not B's: B leaves it out (and says
    // so in its log) and keeps applying the other routes' changes.
    let (s, j) = call(
        "POST",
        "/api/v1/routes",
        json!({"name": "fin", "path": "/fin/*", "upstream": [format!("http://{upstream}")], "allow": [{"groups": ["finance"]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    assert_eq!(j["applied"], true);
    let (s, j) = call("PUT", "/api/v1/routes/ledger", route(&["alice"])).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    poll(
        "node B applies the changed policy",
        Duration::from_secs(10),
        || async { (get(&b, "bob").await == StatusCode::FORBIDDEN).then_some(()) },
    )
    .await;
    assert_eq!(get(&b, "alice").await, StatusCode::OK);
    let running = |n: &Node| -> Vec<String> {
        n.gateway
            .routes()
            .running()
            .1
            .into_iter()
            .map(|r| r.spec.name)
            .collect()
    };
    assert_eq!(running(&a), ["fin", "ledger"]);
    assert_eq!(
        running(&b),
        ["ledger"],
        "B leaves out the route its file cannot take"
    );

    let (s, j) = call("DELETE", "/api/v1/routes/ledger", Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    poll(
        "node B drops the deleted route",
        Duration::from_secs(10),
        || async { (get(&b, "alice").await == StatusCode::FORBIDDEN).then_some(()) },
    )
    .await;
    a.stop().await;
    b.stop().await;
}

/// A sign-in moves between nodes: its flow, the one-time code for the app
/// and passkey ceremonies live in the shared KV, so each step may land on
/// another node (as behind a load balancer) and still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_moves_between_nodes() {
    use common::{Browser, cheap_hash};
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::prelude::{
        CreationChallengeResponse, RequestChallengeResponse, Url,
    };
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;

    let schema = Schema::new().await;
    let prefix = Prefix::new(NATS_URL).await;
    let key = secret_key();
    let upstream = test_util::start_upstream(header_echo()).await.unwrap();
    // The port browsers see (a load balancer's); the nodes listen elsewhere
    // and are reached directly, with this port in `Host`.
    let public = 8443;
    let hash = cheap_hash("correct horse battery");
    let config = |dir: &Dir, node: &str| {
        format!(
            r#"
[gateway]
data_dir = "{data}"
audit = "off"
connection_threads = 0

[state]
durable = "postgres"
postgres_url = "{POSTGRES_URL}"
postgres_schema = "{schema}"
postgres_max_connections = 4
shared = "nats"
nats_url = "{NATS_URL}"
nats_prefix = "{prefix}"
nats_allow_unauthenticated = true
node = "{node}"
encryption_keys = ["{key}"]

[[listener]]
bind = "127.0.0.1:0"

[login]
url = "http://localhost:{public}"
[login.password]
memory_kib = 64
iterations = 1

[[user]]
name = "alice"
password_hash = "{hash}"

[[route]]
name = "app"
host = "app.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
users = ["alice"]
"#,
            data = dir.0.display(),
            schema = schema.0,
            prefix = prefix.name,
        )
    };
    let (dir_a, dir_b) = (Dir::new("login-a"), Dir::new("login-b"));
    let a = Node::start(&config(&dir_a, "node-a")).await;
    let b = Node::start(&config(&dir_b, "node-b")).await;
    let url = |host: &str, path: &str| format!("http://{host}:{public}{path}");

    // Page on A, password on B, code made by B consumed on A, session used on B.
    let mut browser = Browser::new(a.addr);
    let first = browser.get(&url("app.localhost", "/x")).await;
    assert_eq!(first.status, StatusCode::FOUND);
    let started = browser
        .get(&url("app.localhost", first.location.as_deref().unwrap()))
        .await;
    let page = browser.get(started.location.as_deref().unwrap()).await;
    browser.addr = b.addr;
    let done = browser
        .post(
            &url("localhost", "/login"),
            &[
                ("csrf", &page.csrf()),
                ("username", "alice"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    browser.addr = a.addr;
    let back = browser.get(done.location.as_deref().unwrap()).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER, "{}", back.body);
    browser.addr = b.addr;
    let seen = browser.get(&url("app.localhost", "/x")).await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    let seen: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(seen["headers"]["hexon-user"][0], "alice");

    // A passkey registered: begun on A, finished on B.
    let origin = Url::parse(&url("localhost", "")).unwrap();
    let mut authenticator = WebauthnAuthenticator::new(SoftPasskey::new(true));
    browser.addr = a.addr;
    let account = browser.get(&url("localhost", "/account")).await;
    let (status, ccr, _) = browser
        .json(
            &url("localhost", "/webauthn/register/begin"),
            &account.data_csrf(),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ccr}");
    let ccr: CreationChallengeResponse = serde_json::from_value(ccr).unwrap();
    let reg = serde_json::to_string(&authenticator.do_registration(origin.clone(), ccr).unwrap())
        .unwrap();
    browser.addr = b.addr;
    let (status, v, _) = browser
        .json(
            &url("localhost", "/webauthn/register/finish"),
            &account.data_csrf(),
            &reg,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Another browser: password on A, passkey ceremony begun on B and
    // finished on A (the credential is in the shared durable store).
    let mut other = Browser::new(a.addr);
    let page = other.get(&url("localhost", "/login")).await;
    let second = other
        .post(
            &url("localhost", "/login"),
            &[
                ("csrf", &page.csrf()),
                ("username", "alice"),
                ("password", "correct horse battery"),
            ],
        )
        .await;
    assert!(second.body.contains("Use a passkey"), "{}", second.body);
    other.addr = b.addr;
    let (status, rcr, _) = other
        .json(
            &url("localhost", "/webauthn/login/begin"),
            &second.data_csrf(),
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rcr}");
    let rcr: RequestChallengeResponse = serde_json::from_value(rcr).unwrap();
    let assertion =
        serde_json::to_string(&authenticator.do_authentication(origin, rcr).unwrap()).unwrap();
    other.addr = a.addr;
    let (status, v, _) = other
        .json(
            &url("localhost", "/webauthn/login/finish"),
            &second.data_csrf(),
            &assertion,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["redirect"], "/account");
    drop((a, b));
}
