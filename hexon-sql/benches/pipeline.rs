//! The ACL pipeline's cost per statement: a cached verdict (the common case:
//! applications repeat their statements), and the cold path (parse, every
//! layer, canonical re-serialisation and its round-trip check).
//!
//! `cargo bench -p hexon-sql --bench pipeline`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hexon_core::Identity;
use hexon_sql::analysis::{Analysis, ParseLimits};
use hexon_sql::{Acl, Dialect, Pipeline, SqlRequest, decide_now};

const ACL: &str = r#"
[[databases]]
name = "app"
dialect = "postgres"
[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
row_limit = 1000
tables = [{ name = "public.*", ops = ["select"] }, { name = "public.salaries", ops = [] }]
"#;

const STATEMENTS: &[(&str, &str)] = &[
    (
        "point_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    ),
    (
        "join",
        "SELECT o.id, c.name, sum(l.amount) FROM orders o JOIN customers c ON c.id = o.customer_id \
         JOIN lines l ON l.order_id = o.id WHERE o.created_at > now() - interval '7 days' GROUP BY o.id, c.name",
    ),
    (
        "cte_subquery",
        "WITH recent AS (SELECT id FROM orders WHERE created_at > $1) SELECT * FROM customers \
         WHERE id IN (SELECT customer_id FROM orders WHERE id IN (SELECT id FROM recent)) ORDER BY name LIMIT 50",
    ),
];

fn bench(c: &mut Criterion) {
    let acl = Arc::new(Acl::from_toml(ACL).unwrap());
    let who = Identity::builder("ana", "ana")
        .groups(["analysts"])
        .build()
        .unwrap();
    let mut g = c.benchmark_group("sql_acl");
    for (name, sql) in STATEMENTS {
        let sql: Arc<str> = Arc::from(*sql);
        let mut cached = Pipeline::build(acl.clone(), 10_000);
        decide_now(
            &mut cached,
            SqlRequest::new(who.clone(), "app", sql.clone(), Dialect::Postgres),
        )
        .unwrap();
        g.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| {
                let req = SqlRequest::new(who.clone(), "app", sql.clone(), Dialect::Postgres);
                black_box(decide_now(&mut cached, req).unwrap())
            })
        });
        let mut cold = Pipeline::build(acl.clone(), 0);
        g.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| {
                let req = SqlRequest::new(who.clone(), "app", sql.clone(), Dialect::Postgres);
                black_box(decide_now(&mut cold, req).unwrap())
            })
        });
        g.bench_function(format!("parse_only/{name}"), |b| {
            b.iter(|| {
                black_box(
                    Analysis::parse(&sql, Dialect::Postgres, &ParseLimits::default()).unwrap(),
                )
            })
        });
    }
    // A new literal every time (as pgbench's simple protocol sends): the
    // exact-text caches miss, the service's own memo answers by quick key
    // (the shared shape cache did, before 2026-12-05; the cached/* rows are
    // memo hits too).
    let mut shaped = Pipeline::build(acl.clone(), 10_000);
    let mut n = 0u64;
    g.bench_function("shape_hit/point_select", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!("SELECT id, total FROM orders WHERE id = {n}");
            let req = SqlRequest::new(who.clone(), "app", sql, Dialect::Postgres);
            black_box(decide_now(&mut shaped, req).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
