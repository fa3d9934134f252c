//! A whole session lookup as the session-cookie authenticator does it:
//! two KV reads (the record and the user's revocation generation), opening
//! the sealed record, decoding the identity — per backend.
//!
//! ```text
//! cargo bench -p hexon-proxy --all-features --bench session
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hexon_core::store::{KvBackend, MemoryKvBackend, SecretKeys};
use hexon_core::{Identity, UnixTime};
use hexon_proxy::authn::{KvSessionStore, Session, SessionStore};

async fn rows(name: &str, backend: &dyn KvBackend, n: usize) {
    let keys = Arc::new(SecretKeys::new([9; 32]));
    let store = KvSessionStore::open(backend, keys, Duration::from_secs(3600))
        .await
        .unwrap();
    let now = UnixTime::now();
    let groups: Vec<String> = (0..20).map(|g| format!("group-{g}")).collect();
    let sessions = 1000;
    for s in 0..sessions {
        let identity = Identity::builder(format!("u-{s}"), format!("user{s}"))
            .email(format!("user{s}@example.com"))
            .groups(groups.iter().map(String::as_str))
            .build()
            .unwrap();
        let session = Session::new(identity, now.saturating_add(Duration::from_secs(3000)));
        store
            .insert(&format!("cookie-{s}"), &session, now)
            .await
            .unwrap();
    }
    for s in 0..sessions {
        assert!(store.get(&format!("cookie-{s}")).await.unwrap().is_some());
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let got = store
            .get(&format!("cookie-{}", (i * 7919) % sessions))
            .await
            .unwrap();
        lat.push(t.elapsed());
        assert!(got.is_some());
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    println!(
        "{name:<9} session lookup (sealed, 20 groups) {:>10.0} ops/s   p50 {:>8.2} µs   p99 {:>8.2} µs",
        n as f64 / elapsed.as_secs_f64(),
        lat[n / 2].as_secs_f64() * 1e6,
        lat[n * 99 / 100].as_secs_f64() * 1e6,
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 50_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        rows("memory", &MemoryKvBackend::new(), n).await;
        #[cfg(feature = "sqlite")]
        {
            let dir =
                std::env::temp_dir().join(format!("hexon-session-bench-{}", std::process::id()));
            let keys = Arc::new(SecretKeys::new([1; 32]));
            let store = hexon_core::store::sql::SqliteStore::open(&dir.join("s.db"), keys)
                .await
                .unwrap();
            rows("sqlite", &store, n).await;
            store.close().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}
