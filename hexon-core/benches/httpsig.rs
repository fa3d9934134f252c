//! Signed identity: sign and verify, cached and uncached, against the raw
//! ed25519-dalek cost. Figures go to docs/BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use hexon_core::httpsig::{Binding, HttpSigner, Verifier};
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
use http::request::Parts;

/// Local signers finish on the first poll; no runtime needed.
fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("local signer did not complete synchronously"),
    }
}

fn request() -> Parts {
    http::Request::get("/api/reports?year=2026")
        .header("host", "app.example.com")
        .header("accept", "application/json")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn identity() -> Identity {
    Identity::builder("u-12345", "alice")
        .email("alice@example.com")
        .display_name("Alice Example")
        .groups((0..20).map(|i| format!("team-{i}")))
        .auth("password", UnixTime::from_secs(1_699_999_000))
        .unwrap()
        .auth("webauthn", UnixTime::from_secs(1_699_999_100))
        .unwrap()
        .session("s-abcdef")
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let now = UnixTime::from_secs(1_700_000_000);
    let key = Arc::new(Ed25519Signer::from_seed("gw-1", &[3; 32]).unwrap());
    let mut keys = KeySet::new();
    keys.insert("gw-1", key.public_key(), None).unwrap();
    let id = identity();

    let mut g = c.benchmark_group("httpsig");
    let msg = [0x5au8; 600];
    let sig = key.sign_sync(&msg);
    let pk = key.public_key();
    g.bench_function("raw ed25519-dalek sign (600 B)", |b| {
        b.iter(|| black_box(key.sign_sync(black_box(&msg))))
    });
    g.bench_function("raw ed25519-dalek verify (600 B)", |b| {
        b.iter(|| {
            pk.verify(key.algorithm(), black_box(&msg), black_box(&sig))
                .unwrap()
        })
    });

    let uncached = HttpSigner::new(key.clone()).with_cache_capacity(0);
    let cached = HttpSigner::new(key.clone());
    g.bench_function("sign uncached", |b| {
        b.iter(|| {
            let mut p = request();
            now_or_never(uncached.sign(&id, "reports", Binding::NONE, &mut p, now)).unwrap();
            p
        })
    });
    now_or_never(cached.sign(&id, "reports", Binding::NONE, &mut request(), now)).unwrap();
    g.bench_function("sign cached (unbound, same session+route)", |b| {
        b.iter(|| {
            let mut p = request();
            let s = now_or_never(cached.sign(&id, "reports", Binding::NONE, &mut p, now)).unwrap();
            assert!(s.cached);
            p
        })
    });
    g.bench_function("sign request-bound", |b| {
        b.iter(|| {
            let mut p = request();
            now_or_never(cached.sign(&id, "reports", Binding::REQUEST, &mut p, now)).unwrap();
            p
        })
    });

    let mut signed = request();
    now_or_never(uncached.sign(&id, "reports", Binding::NONE, &mut signed, now)).unwrap();
    let cold = Verifier::new(keys.clone(), ["app.example.com"]).with_cache_bytes(0);
    let warm = Verifier::new(keys, ["app.example.com"]);
    g.bench_function("verify uncached", |b| {
        b.iter(|| cold.verify_parts(black_box(&signed), now).unwrap())
    });
    warm.verify_parts(&signed, now).unwrap();
    g.bench_function("verify cached", |b| {
        b.iter(|| warm.verify_parts(black_box(&signed), now).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
