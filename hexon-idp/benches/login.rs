//! Login figures, in process (no sockets): the login service's real
//! request handling over the in-memory state.
//!
//! - the TOTP step (`POST /login/totp`: flow, CSRF, code, compare-and-set
//!   of the step, session, one-time code for the app) and a whole SSO
//!   round trip (start on the app host → login page → password → TOTP →
//!   app callback) with the
//!   password hash made negligible (argon2id m=8 KiB, t=1), so the figure
//!   is everything but the hash;
//! - password verifications per second at the default cost (argon2id
//!   m=19456 KiB, t=2, p=1) on the hashing pool, one thread per core.
//!
//! ```text
//! cargo bench -p hexon-idp --bench login
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hexon_core::UnixTime;
use hexon_core::config::{Config, PasswordHashConfig};
use hexon_core::store::session::KvSessionStore;
use hexon_core::store::{
    CredentialKind, CredentialRecord, CredentialStore as _, Material, MemoryKvBackend, MemoryStore,
    SecretBytes, SecretKeys,
};
use hexon_idp::{ConfigUsers, LoginParts, LoginService, csrf_token};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};

const SECRET: &[u8; 20] = b"12345678901234567890";
const PASSWORD: &str = "correct horse battery";

fn config(hash: &str) -> Config {
    let toml = format!(
        r#"
[state]
durable = "memory"
[login]
url = "https://auth.example.com"
[login.password]
memory_kib = 8
iterations = 1
threads = 1
[[user]]
name = "alice"
password_hash = "{hash}"
[[route]]
name = "app"
host = "app.example.com"
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
authenticated = true
"#
    );
    Config::parse(&toml, &|_| None).unwrap()
}

struct Browser {
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn cookie(&self, name: &str) -> String {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    async fn send(
        &mut self,
        login: &LoginService,
        method: &str,
        host: &str,
        path: &str,
        form: &str,
    ) -> (Response<Full<Bytes>>, String) {
        let line = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("cookie", line)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        let res = login.call(req, IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
        for c in res.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (n, v) = c.split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != n);
            if !c.contains("Max-Age=0") {
                self.cookies.push((n.to_owned(), v.to_owned()));
            }
        }
        let (parts, body) = res.into_parts();
        let text = String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned();
        (Response::from_parts(parts, Full::new(Bytes::new())), text)
    }
}

fn percentile(mut v: Vec<Duration>, p: usize) -> f64 {
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e6
}

async fn logins(n: usize) {
    let mut cheap = PasswordHashConfig::default();
    cheap.memory_kib = 8;
    cheap.iterations = 1;
    let hash =
        hexon_idp::password::hash_now(&hexon_idp::password::argon2(&cheap).unwrap(), PASSWORD)
            .unwrap();
    let config = config(&hash);
    let keys = Arc::new(SecretKeys::new([7; 32]));
    let kv = Arc::new(MemoryKvBackend::new());
    let store = Arc::new(MemoryStore::new(keys.clone()));
    store
        .insert_credential(&CredentialRecord {
            id: "totp_bench".into(),
            owner: "alice".into(),
            kind: CredentialKind::Totp,
            label: "bench".into(),
            lookup: None,
            material: Material::Secret(SecretBytes::new(SECRET.to_vec())),
            counter: 0,
            created_at: UnixTime::from_secs(0),
            last_used_at: None,
            expires_at: None,
        })
        .await
        .unwrap();
    let sessions = KvSessionStore::open(kv.as_ref(), keys.clone(), Duration::from_secs(86_400))
        .await
        .unwrap();
    // A clock moved one TOTP step per login (each code is good once).
    let clock = Arc::new(AtomicI64::new(1_700_000_000));
    let login = LoginService::start(LoginParts {
        config: config.login.clone().unwrap(),
        route_hosts: vec!["app.example.com".into()],
        users: Arc::new(ConfigUsers::new(&config)),
        store,
        kv,
        sessions,
        keys,
        clock: Some({
            let clock = clock.clone();
            Arc::new(move || UnixTime::from_secs(clock.load(Ordering::Relaxed)))
        }),
    })
    .await
    .unwrap();

    let mut totp_step = Vec::with_capacity(n);
    let mut round_trip = Vec::with_capacity(n);
    for _ in 0..n {
        let now = clock.fetch_add(30, Ordering::Relaxed) + 30;
        let code = format!(
            "{:06}",
            hexon_idp::totp::code_at(SECRET, hexon_idp::totp::step_of(now as u64))
        );
        let mut b = Browser {
            cookies: Vec::new(),
        };
        let start = Instant::now();
        let (res, _) = b
            .send(
                &login,
                "GET",
                "app.example.com",
                "/.hexon/login?rd=https%3A%2F%2Fapp.example.com%2Fx",
                "",
            )
            .await;
        assert_eq!(res.status(), 303, "start on the app host");
        let to_login = res.headers()["location"].to_str().unwrap().to_owned();
        let path = to_login.trim_start_matches("https://auth.example.com");
        let (res, _) = b.send(&login, "GET", "auth.example.com", path, "").await;
        assert_eq!(res.status(), 200);
        let csrf = csrf_token(&b.cookie("__Host-hexon-login"));
        let form = format!("csrf={csrf}&username=alice&password=correct+horse+battery");
        let (res, _) = b
            .send(&login, "POST", "auth.example.com", "/login", &form)
            .await;
        assert_eq!(res.status(), 200, "password step");
        let t = Instant::now();
        let (res, _) = b
            .send(
                &login,
                "POST",
                "auth.example.com",
                "/login/totp",
                &format!("csrf={csrf}&code={code}"),
            )
            .await;
        totp_step.push(t.elapsed());
        assert_eq!(res.status(), 303, "TOTP step");
        let callback = res.headers()["location"].to_str().unwrap().to_owned();
        let path = callback.trim_start_matches("https://app.example.com");
        let (res, _) = b.send(&login, "GET", "app.example.com", path, "").await;
        round_trip.push(start.elapsed());
        assert_eq!(res.status(), 303, "callback");
    }
    println!(
        "TOTP step (POST /login/totp)            p50 {:>8.1} µs   p99 {:>8.1} µs",
        percentile(totp_step.clone(), 50),
        percentile(totp_step, 99)
    );
    println!(
        "SSO round trip, 5 requests, cheap hash  p50 {:>8.1} µs   p99 {:>8.1} µs",
        percentile(round_trip.clone(), 50),
        percentile(round_trip, 99)
    );
}

async fn password_throughput(n: usize) {
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let mut cost = PasswordHashConfig::default();
    cost.threads = threads;
    cost.queue = 4096;
    let argon2 = hexon_idp::password::argon2(&cost).unwrap();
    let hash = hexon_idp::password::hash_now(&argon2, PASSWORD).unwrap();
    let pool = hexon_idp::password::HashPool::start(&cost).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (pool, hash) = (pool.clone(), hash.clone());
        tasks.push(tokio::spawn(async move {
            pool.verify(Some(&hash), PASSWORD).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(true));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "password logins/s, argon2id m={} KiB t={} p={}, {threads} hashing thread(s): {:.1}/s ({:.1} ms each)",
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        n as f64 / secs,
        secs * 1000.0 * threads as f64 / n as f64
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        logins(if full { 5_000 } else { 20 }).await;
        password_throughput(if full { 200 } else { 4 }).await;
    });
}
