//! State-layer speed per backend: session get/put, nonce put-if-absent and
//! directory lookup, as ops/s with p50/p99 latency.
//!
//! ```text
//! cargo bench -p hexon-core --all-features --bench store
//! HEXON_BENCH_BACKENDS=memory,sqlite cargo bench -p hexon-core --all-features --bench store
//! ```
//!
//! PostgreSQL (`HEXON_BENCH_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and NATS (`HEXON_BENCH_NATS`,
//! default `nats://127.0.0.1:4222`) must be running for their rows.
//! A plain binary rather than criterion: the figures wanted are per-operation
//! latency percentiles and throughput under concurrency, over real servers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hexon_core::directory::{GroupRecord, SourceId, SourceSnapshot, UserRecord};
use hexon_core::store::{DurableStore, KvBackend, KvStore, SecretKeys};

const TTL: Duration = Duration::from_secs(600);
const SESSION: usize = 700; // bytes: a JSON identity with a few groups

struct Stats {
    ops: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn row(&mut self, backend: &str, what: &str) {
        self.lat.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
            self.lat.get(i).copied().unwrap_or_default()
        };
        println!(
            "{backend:<9} {what:<34} {:>10.0} ops/s   p50 {:>9.2} µs   p99 {:>9.2} µs",
            self.ops as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
        );
    }
}

/// `n` operations from each of `tasks` tasks; latency of every operation.
async fn run<F, Fut>(tasks: usize, n: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let s = Instant::now();
                op(t, i).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(tasks * n);
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    Stats {
        ops: tasks * n,
        elapsed: start.elapsed(),
        lat,
    }
}

async fn kv_rows(name: &str, backend: &dyn KvBackend, n: usize) {
    let sessions: Arc<dyn KvStore> = backend.bucket("bench-sessions", TTL).await.unwrap();
    let nonces: Arc<dyn KvStore> = backend.bucket("bench-nonces", TTL).await.unwrap();
    let value = Arc::new(vec![b'x'; SESSION]);
    let keys = 1000;
    for k in 0..keys {
        sessions.put(&format!("s{k}"), &value, TTL).await.unwrap();
    }
    // Warm up (caches, connections, prepared statements).
    for k in 0..keys {
        sessions.get(&format!("s{k}")).await.unwrap();
    }
    let s = sessions.clone();
    run(1, n, move |_, i| {
        let s = s.clone();
        async move {
            assert!(s.get(&format!("s{}", i % keys)).await.unwrap().is_some());
        }
    })
    .await
    .row(name, "session get (1 task)");
    let s = sessions.clone();
    run(16, n / 16, move |t, i| {
        let s = s.clone();
        async move {
            assert!(
                s.get(&format!("s{}", (t * 7919 + i) % keys))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    })
    .await
    .row(name, "session get (16 tasks)");
    let (s, v) = (sessions.clone(), value.clone());
    run(1, n / 4, move |_, i| {
        let (s, v) = (s.clone(), v.clone());
        async move {
            s.put(&format!("s{}", i % keys), &v, TTL).await.unwrap();
        }
    })
    .await
    .row(name, "session put (1 task)");
    let run_id = std::process::id();
    for tasks in [1, 32] {
        let nn = nonces.clone();
        let per_task = if tasks == 1 { n / 4 } else { n / tasks };
        run(tasks, per_task, move |t, i| {
            let nn = nn.clone();
            async move {
                let key = format!("n{run_id}-{tasks}-{t}-{i}");
                assert!(nn.put_if_absent(&key, b"1", TTL).await.unwrap().is_some());
            }
        })
        .await
        .row(name, &format!("nonce put_if_absent ({tasks} tasks)"));
    }
}

async fn directory_rows(name: &str, store: &dyn DurableStore, n: usize) {
    let mut snap = SourceSnapshot::new();
    for g in 0..100 {
        snap.push_group(GroupRecord::new(format!("g{g}")));
    }
    for u in 0..10_000 {
        snap.push_user(
            UserRecord::new(format!("u{u}"))
                .username(format!("user{u}"))
                .email(format!("u{u}@example.com")),
        );
        snap.push_member(format!("u{u}"), format!("g{}", u % 100));
    }
    let t = Instant::now();
    store
        .save_source(&SourceId::new("bench"), &snap)
        .await
        .unwrap();
    println!(
        "{name:<9} {:<34} {:>10.1} ms",
        "directory save (10k users)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut stats = Stats {
        ops: 0,
        elapsed: Duration::ZERO,
        lat: Vec::new(),
    };
    let start = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        assert_eq!(
            store
                .find_user(&format!("u{}", (i * 7919) % 10_000))
                .await
                .unwrap()
                .len(),
            1
        );
        stats.lat.push(s.elapsed());
        stats.ops += 1;
    }
    stats.elapsed = start.elapsed();
    stats.row(name, "directory find_user (10k users)");
}

fn wanted(name: &str) -> bool {
    std::env::var("HEXON_BENCH_BACKENDS").map_or(true, |v| v.split(',').any(|b| b.trim() == name))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either: run a short smoke pass unless benchmarking.
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let keys = Arc::new(SecretKeys::new([7; 32]));
        if wanted("memory") {
            kv_rows("memory", &hexon_core::store::MemoryKvBackend::new(), n).await;
            directory_rows(
                "memory",
                &hexon_core::store::MemoryStore::new(keys.clone()),
                n,
            )
            .await;
        }
        #[cfg(feature = "sqlite")]
        if wanted("sqlite") {
            let dir = std::env::temp_dir().join(format!("hexon-bench-{}", std::process::id()));
            let store =
                hexon_core::store::sql::SqliteStore::open(&dir.join("bench.db"), keys.clone())
                    .await
                    .unwrap();
            kv_rows("sqlite", &store, n).await;
            directory_rows("sqlite", &store, n).await;
            store.close().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        #[cfg(feature = "postgres")]
        if wanted("postgres") {
            let url = std::env::var("HEXON_BENCH_POSTGRES")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!("hexon_bench_{}", std::process::id());
            let options = hexon_core::store::sql::PostgresOptions::new(&url).schema(&schema);
            let store = hexon_core::store::sql::PostgresStore::open(&options, keys.clone())
                .await
                .unwrap();
            kv_rows("postgres", &store, n).await;
            directory_rows("postgres", &store, n).await;
            store.close().await;
            drop_schema(&url, &schema).await;
        }
        #[cfg(all(feature = "nats", feature = "test-util"))]
        if wanted("nats") {
            let url = std::env::var("HEXON_BENCH_NATS")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
            let prefix = format!("hxbench{}", std::process::id());
            hexon_core::store::conformance::delete_nats_prefix(&url, &prefix).await;
            let options = hexon_core::store::nats::NatsOptions::new(&url).prefix(&prefix);
            let nats = hexon_core::store::nats::NatsState::connect(&options)
                .await
                .unwrap();
            kv_rows("nats", &nats, n).await;
            hexon_core::store::conformance::delete_nats_prefix(&url, &prefix).await;
        }
    });
}

#[cfg(feature = "postgres")]
async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}
