//! Full ACME orders per second, with a real client (instant-acme) in the
//! same process as the server.
//!
//! `cargo bench -p hexon-ca --bench acme_orders`
//!
//! One order is everything a client does for a fresh name: newOrder for
//! `o<n>.example.test` → fetch the authorization → serve the http-01 key
//! authorization → tell the server the challenge is ready → the server
//! resolves the name (an in-process DNS responder answers 127.0.0.1),
//! connects to the http-01 port and checks the answer → poll the order until
//! it is ready → generate a P-256 key and a CSR → finalize (the CA checks
//! the CSR, signs with its P-256 intermediate and records the certificate)
//! → download the chain. The ACME server is served over HTTPS (rustls) with
//! a certificate from the same CA, which the client trusts as its root.
//!
//! Stores (each with its own CA):
//! - `memory`: certificates and accounts in `MemoryStore`, the ACME KV
//!   (nonces, orders, authorizations) in `MemoryKvBackend`.
//! - `sqlite`: certificates and accounts in `SqliteStore` on a temporary
//!   file (WAL, `synchronous = FULL`), the KV in memory.
//! - `sqlite-kv`: the KV on the same SQLite file too, as a single-node
//!   gateway with `[state] backend = "sqlite"` runs it.
//!
//! Environment: `ACME_BENCH_ORDERS` (orders per concurrency level, default
//! 600), `ACME_BENCH_ACCOUNTS` (default 200), `ACME_BENCH_CONCURRENCY`
//! (default `1,4,16`), `ACME_BENCH_STORES` (default
//! `memory,sqlite,sqlite-kv`), `ACME_BENCH_POLL_MS` (the client's first
//! poll delay, default 1; it doubles after each poll).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexon_ca::acme::{AcmeConfig, AcmeServer, KV_MAX_TTL, NONCE_TTL};
use hexon_ca::setup::{CaConfig, ProfileConfig, open};
use hexon_ca::{Profile, SubjectName};
use hexon_core::Algorithm;
use hexon_core::store::sql::SqliteStore;
use hexon_core::store::{
    AcmeAccountStore, CertificateStore, KvBackend, MemoryKvBackend, MemoryStore, SecretKeys,
};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ------------------------------------------------------------ DNS responder

/// A UDP DNS responder answering `127.0.0.1` to every A query (and an
/// empty answer to anything else): the server resolves names as it would
/// in production, without an external process.
async fn dns_responder() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(answer) = dns_answer(&buf[..n]) {
                let _ = sock.send_to(&answer, peer).await;
            }
        }
    });
    addr
}

fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let mut i = 12;
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let a = qtype == 1;
    let mut r = Vec::with_capacity(question.len() + 32);
    r.extend_from_slice(q.get(..2)?);
    // QR, AA, RD as asked; RA; NOERROR; one question, one or no answer.
    r.extend_from_slice(&[0x84 | (q.get(2)? & 0x01), 0x80]);
    r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if a {
        // Name (pointer to the question), A, IN, TTL 0, 4 bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}

// ---------------------------------------------------------- http-01 responder

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Serve `/.well-known/acme-challenge/<token>` from `tokens`; returns the
/// port and a counter of requests answered.
async fn http01_responder(tokens: Tokens) -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tokens, hits) = (tokens.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let found = req
                            .uri()
                            .path()
                            .strip_prefix("/.well-known/acme-challenge/")
                            .and_then(|t| tokens.lock().unwrap().get(t).cloned());
                        let resp = match found {
                            Some(ka) => hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(ka),
                            )),
                            None => {
                                let mut r = hyper::Response::new(http_body_util::Full::default());
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, hits)
}

// -------------------------------------------------------------- server side

/// Requests the ACME server answered, by endpoint: count and time spent in
/// `AcmeServer::call`.
const ENDPOINTS: [&str; 10] = [
    "directory",
    "new-nonce",
    "new-account",
    "new-order",
    "authz",
    "chall",
    "order (poll)",
    "finalize",
    "cert",
    "other",
];

#[derive(Default)]
struct Stats {
    count: [AtomicU64; ENDPOINTS.len()],
    nanos: [AtomicU64; ENDPOINTS.len()],
}

impl Stats {
    fn reset(&self) {
        for a in self.count.iter().chain(&self.nanos) {
            a.store(0, Ordering::Relaxed);
        }
    }
}

fn endpoint(path: &str) -> usize {
    let rest = path.strip_prefix("/acme/").unwrap_or_default();
    let mut seg = rest.split('/');
    match (seg.next(), seg.next(), seg.next()) {
        (Some("directory"), ..) => 0,
        (Some("new-nonce"), ..) => 1,
        (Some("new-account"), ..) => 2,
        (Some("new-order"), ..) => 3,
        (Some("authz"), ..) => 4,
        (Some("chall"), ..) => 5,
        (Some("order"), Some(_), None) => 6,
        (Some("order"), Some(_), Some("finalize")) => 7,
        (Some("cert"), ..) => 8,
        _ => 9,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StoreKind {
    Memory,
    Sqlite,
    SqliteKv,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::SqliteKv => "sqlite-kv",
        }
    }
}

struct Server {
    directory: String,
    root_pem: String,
    tokens: Tokens,
    stats: Arc<Stats>,
    validations: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

async fn server(kind: StoreKind) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(SecretKeys::new([5; 32]));
    let (certs, accounts, kv): (
        Arc<dyn CertificateStore>,
        Arc<dyn AcmeAccountStore>,
        Arc<dyn KvBackend>,
    ) = match kind {
        StoreKind::Memory => {
            let m = Arc::new(MemoryStore::new(keys));
            (m.clone(), m, Arc::new(MemoryKvBackend::new()))
        }
        StoreKind::Sqlite | StoreKind::SqliteKv => {
            let s = Arc::new(
                SqliteStore::open(&dir.path().join("state.db"), keys)
                    .await
                    .unwrap(),
            );
            let kv: Arc<dyn KvBackend> = if kind == StoreKind::SqliteKv {
                s.clone()
            } else {
                Arc::new(MemoryKvBackend::new())
            };
            (s.clone(), s, kv)
        }
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let mut cfg = CaConfig {
        key_algorithm: Algorithm::EcdsaP256Sha256,
        url: Some(format!("{base}/ca")),
        ..CaConfig::default()
    };
    cfg.profiles.insert(
        Profile::TlsServer,
        ProfileConfig {
            dns: vec!["example.test".into(), "localhost".into()],
            ips: vec!["127.0.0.0/8".parse().unwrap()],
            ..ProfileConfig::default()
        },
    );
    cfg.validate().unwrap();
    let ca = Arc::new(open(&cfg, &dir.path().join("ca"), certs).await.unwrap());

    let tokens = Tokens::default();
    let (http01_port, validations) = http01_responder(tokens.clone()).await;
    let mut acme_cfg = AcmeConfig::new(&format!("{base}/acme"));
    acme_cfg.http01_port = http01_port;
    acme_cfg.dns_server = Some(dns_responder().await);
    acme_cfg.orders_per_hour = u32::MAX;
    acme_cfg.accounts_per_hour = u32::MAX;
    let acme = Arc::new(
        AcmeServer::new(
            acme_cfg,
            ca.clone(),
            accounts,
            kv.bucket("acme", KV_MAX_TTL).await.unwrap(),
            kv.bucket("acme-nonces", NONCE_TTL).await.unwrap(),
        )
        .unwrap(),
    );

    // The server's own certificate, from the CA under test.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let mut req = hexon_ca::IssueRequest::from_csr(
        Profile::TlsServer,
        hexon_ca::check_csr(csr.der()).unwrap(),
    );
    req.names
        .push(SubjectName::Ip("127.0.0.1".parse().unwrap()));
    let issued = ca.issue(&req).await.unwrap();
    let chain: Vec<_> = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        chain,
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let (acceptor, acme, st) = (acceptor.clone(), acme.clone(), st.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (acme, st) = (acme.clone(), st.clone());
                        async move {
                            let which = endpoint(req.uri().path());
                            let t = Instant::now();
                            let resp = if acme.handles(req.uri().path()) {
                                acme.call(req, Some(peer.ip())).await
                            } else {
                                let mut r = hyper::Response::new(http_body_util::Full::default());
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                                r
                            };
                            let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            st.count[which].fetch_add(1, Ordering::Relaxed);
                            st.nanos[which].fetch_add(nanos, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    Server {
        directory: format!("{base}/acme/directory"),
        root_pem: dir.path().join("ca/root.crt").to_str().unwrap().to_owned(),
        tokens,
        stats,
        validations,
        _dir: dir,
    }
}

// -------------------------------------------------------------- client side

async fn new_account(root_pem: &str, directory: &str) -> Result<Account, instant_acme::Error> {
    let (account, _) = Account::builder_with_root(root_pem)?
        .create(
            &NewAccount {
                contact: &["mailto:ops@example.test"],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await?;
    Ok(account)
}

/// Time spent in each client step of one order.
#[derive(Default, Clone, Copy)]
struct Steps([Duration; 7]);

const STEPS: [&str; 7] = [
    "newOrder (+ newNonce)",
    "fetch authorization",
    "challenge ready",
    "poll until ready",
    "P-256 key + CSR",
    "finalize (issuance)",
    "download chain",
];

impl Steps {
    fn add(&mut self, o: &Steps) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

async fn order(
    account: &Account,
    tokens: &Tokens,
    n: usize,
    poll: &RetryPolicy,
) -> Result<Steps, String> {
    let err = |what: &str, e: instant_acme::Error| format!("{what}: {e}");
    let mut steps = Steps::default();
    let mut t = Instant::now();
    let mut lap = |i: usize| {
        steps.0[i] = t.elapsed();
        t = Instant::now();
    };
    let name = format!("o{n}.example.test");
    let ids = [Identifier::Dns(name.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| err("newOrder", e))?;
    lap(0);
    let mut token = None;
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.map_err(|e| err("authorization", e))?;
        lap(1);
        if authz.status != AuthorizationStatus::Pending {
            return Err(format!("authorization is {:?}", authz.status));
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or("no http-01 challenge")?;
        let key_authz = challenge.key_authorization().as_str().to_owned();
        tokens
            .lock()
            .unwrap()
            .insert(challenge.token.clone(), key_authz);
        token = Some(challenge.token.clone());
        challenge
            .set_ready()
            .await
            .map_err(|e| err("challenge", e))?;
        lap(2);
    }
    let status = order.poll_ready(poll).await.map_err(|e| err("poll", e))?;
    if let Some(t) = token {
        tokens.lock().unwrap().remove(&t);
    }
    if status != OrderStatus::Ready {
        return Err(format!("order is {status:?}"));
    }
    lap(3);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    lap(4);
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| err("finalize", e))?;
    lap(5);
    // The server waits for local keys, so the order is usually valid
    // already: download at once, poll only if it is still processing.
    let chain = match order
        .certificate()
        .await
        .map_err(|e| err("certificate", e))?
    {
        Some(chain) => chain,
        None => order
            .poll_certificate(poll)
            .await
            .map_err(|e| err("certificate", e))?,
    };
    if chain.matches("-----BEGIN CERTIFICATE-----").count() != 2 {
        return Err("the chain is not leaf + intermediate".into());
    }
    lap(6);
    Ok(steps)
}

struct Run {
    elapsed: Duration,
    /// CPU time of the whole process (client and server) meanwhile.
    cpu: Duration,
    /// CPU time of everything else on the machine meanwhile.
    others: Duration,
    latencies: Vec<Duration>,
    steps: Steps,
    errors: Vec<String>,
}

/// `total` orders, `concurrency` at a time; names from `first` on.
async fn run(
    account: &Account,
    s: &Server,
    concurrency: usize,
    total: usize,
    first: usize,
    poll: RetryPolicy,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let (cpu, busy) = (cpu_time(), machine_busy());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (account, tokens, next) = (account.clone(), s.tokens.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut steps, mut errors) = (Vec::new(), Steps::default(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match order(&account, &tokens, first + i, &poll).await {
                    Ok(st) => {
                        lat.push(t.elapsed());
                        steps.add(&st);
                    }
                    Err(e) => errors.push(e),
                }
            }
            (lat, steps, errors)
        }));
    }
    let mut out = Run {
        elapsed: Duration::ZERO,
        cpu: Duration::ZERO,
        others: Duration::ZERO,
        latencies: Vec::new(),
        steps: Steps::default(),
        errors: Vec::new(),
    };
    for t in tasks {
        let (lat, steps, errors) = t.await.unwrap();
        out.latencies.extend(lat);
        out.steps.add(&steps);
        out.errors.extend(errors);
    }
    out.elapsed = start.elapsed();
    out.cpu = cpu_time().saturating_sub(cpu);
    out.others = machine_busy().saturating_sub(busy).saturating_sub(out.cpu);
    out.latencies.sort();
    out
}

/// CPU time this process has used (all threads, user + system), from
/// `/proc/self/stat` (Linux; clock ticks of 10 ms). Zero elsewhere.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Duration::from_millis((user + system) * 10),
        _ => Duration::ZERO,
    }
}

/// CPU time the whole machine has been busy (all processes), from
/// `/proc/stat`: with [`cpu_time`], shows whether anything else ran.
fn machine_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Duration::from_millis(total.saturating_sub(idle) * 10)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench_store(
    kind: StoreKind,
    levels: &[usize],
    orders: usize,
    accounts: usize,
    poll: RetryPolicy,
) {
    let s = server(kind).await;
    println!("\n## store: {}\n", kind.name());

    // Accounts: each is a fresh client (its own HTTPS connection): fetch
    // the directory, a nonce, newAccount with a new P-256 key.
    for &c in &[1, 16] {
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..c {
            let next = next.clone();
            let (root, dir) = (s.root_pem.clone(), s.directory.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut errors) = (0usize, Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < accounts {
                    match new_account(&root, &dir).await {
                        Ok(_) => ok += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            }));
        }
        let (mut ok, mut errors) = (0, Vec::new());
        for t in tasks {
            let (n, e) = t.await.unwrap();
            ok += n;
            errors.extend(e);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "accounts, concurrency {c:>2}: {ok} in {secs:.2} s = {:.0}/s, {} errors",
            ok as f64 / secs,
            errors.len()
        );
        if let Some(e) = errors.first() {
            println!("  first error: {e}");
        }
    }

    let account = new_account(&s.root_pem, &s.directory).await.unwrap();
    let mut first = 0;
    // Warm-up: connections, caches, the allocator.
    let warm = run(&account, &s, 4, 100, first, poll).await;
    assert!(warm.errors.is_empty(), "warm-up: {:?}", warm.errors.first());
    first += 100;

    println!(
        "\n| store | concurrency | orders | seconds | orders/s | p50 ms | p99 ms | CPU ms/order | cores busy | other processes (cores) | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut breakdown = None;
    for &c in levels {
        s.stats.reset();
        s.validations.store(0, Ordering::Relaxed);
        let r = run(&account, &s, c, orders, first, poll).await;
        first += orders;
        let ok = r.latencies.len();
        println!(
            "| {} | {c} | {ok} | {:.2} | **{:.0}** | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            kind.name(),
            r.elapsed.as_secs_f64(),
            ok as f64 / r.elapsed.as_secs_f64(),
            ms(pct(&r.latencies, 0.5)),
            ms(pct(&r.latencies, 0.99)),
            ms(r.cpu) / ok.max(1) as f64,
            r.cpu.as_secs_f64() / r.elapsed.as_secs_f64(),
            r.others.as_secs_f64() / r.elapsed.as_secs_f64(),
            r.errors.len(),
        );
        if let Some(e) = r.errors.first() {
            println!("  first error: {e}");
        }
        if breakdown.is_none() && ok > 0 {
            let server: Vec<(u64, u64)> = (0..ENDPOINTS.len())
                .map(|i| {
                    (
                        s.stats.count[i].load(Ordering::Relaxed),
                        s.stats.nanos[i].load(Ordering::Relaxed),
                    )
                })
                .collect();
            breakdown = Some((
                c,
                ok,
                r.steps,
                server,
                s.validations.load(Ordering::Relaxed),
            ));
        }
    }

    if let Some((c, ok, steps, server, validations)) = breakdown {
        let n = ok as f64;
        println!("\nclient steps, concurrency {c} (mean per order):\n");
        println!("| step | ms |");
        println!("|---|---|");
        let mut sum = 0.0;
        for (name, d) in STEPS.iter().zip(steps.0) {
            sum += ms(d) / n;
            println!("| {name} | {:.3} |", ms(d) / n);
        }
        println!("| total | {sum:.3} |");
        println!("\nserver, concurrency {c}: requests per order and time in AcmeServer::call:\n");
        println!("| endpoint | per order | mean µs |");
        println!("|---|---|---|");
        for (name, (count, nanos)) in ENDPOINTS.iter().zip(server) {
            if count > 0 {
                println!(
                    "| {name} | {:.2} | {:.0} |",
                    count as f64 / n,
                    nanos as f64 / count as f64 / 1e3
                );
            }
        }
        println!("| http-01 fetches | {:.2} | |", validations as f64 / n);
    }
}

fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .unwrap();
    let orders: usize = env_or("ACME_BENCH_ORDERS", 600);
    let accounts: usize = env_or("ACME_BENCH_ACCOUNTS", 200);
    let levels: Vec<usize> = std::env::var("ACME_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let stores: Vec<StoreKind> = std::env::var("ACME_BENCH_STORES")
        .unwrap_or_else(|_| "memory,sqlite,sqlite-kv".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "memory" => Some(StoreKind::Memory),
            "sqlite" => Some(StoreKind::Sqlite),
            "sqlite-kv" => Some(StoreKind::SqliteKv),
            _ => None,
        })
        .collect();
    let poll_ms: u64 = env_or("ACME_BENCH_POLL_MS", 1);
    let poll = RetryPolicy::new()
        .initial_delay(Duration::from_millis(poll_ms))
        .backoff(2.0)
        .timeout(Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# ACME orders, instant-acme in process; http-01; P-256 CA key; {} worker threads",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    rt.block_on(async {
        for kind in stores {
            bench_store(kind, &levels, orders, accounts, poll).await;
        }
    });
}
