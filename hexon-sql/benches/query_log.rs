//! The query log's cost per statement: one `tracing` event of the bastion's
//! shape through [`QueryLog`] into a writer that discards (the formatting
//! and `tracing`'s dispatch, not the `write`), each line written and
//! batched, against the `fmt` text layer the query log used before.
//!
//! `cargo bench -p hexon-sql --bench query_log`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use hexon_sql::query_log::QueryLog;
use tracing_subscriber::prelude::*;

fn statement() {
    tracing::info!(
        target: "hexon_sql::query",
        user = "alice",
        database = "app",
        role = "reader",
        statement = "SELECT abalance FROM pgbench_accounts WHERE aid = ?",
        verdict = "admitted",
        stage = "",
        code = "",
        duration_us = 138u64,
        rows = 1u64,
        "statement"
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("query_log");
    let each = tracing_subscriber::registry().with(QueryLog::new(std::io::sink));
    tracing::subscriber::with_default(each, || {
        g.bench_function("json_each", |b| b.iter(statement))
    });
    let batched = tracing_subscriber::registry().with(QueryLog::new(std::io::sink).batched());
    tracing::subscriber::with_default(batched, || {
        g.bench_function("json_batched", |b| b.iter(statement));
    });
    let text = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_ansi(false)
            .with_target(false),
    );
    tracing::subscriber::with_default(text, || g.bench_function("fmt_text", |b| b.iter(statement)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
