//! Property: whatever the pipeline admits for a read-only role changes no
//! data when the real PostgreSQL runs it.
//!
//! Statements are generated from a grammar that mixes reads with every kind
//! of write the read-only layer knows about (DML, data-modifying CTEs,
//! `SELECT INTO`, locking reads, sequence and lock functions, session
//! changes, `COPY`, `CALL`, DDL) and with quoting and comment noise. Each
//! admitted statement runs inside a transaction on PostgreSQL at
//! 127.0.0.1:5432 (database `test`); the transaction must not have been
//! assigned a transaction id (PostgreSQL assigns one on the first write of
//! any kind), the fixture tables must hold the same rows, and the sequence
//! must not have moved. The transaction is then rolled back.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use hexon_core::Identity;
use hexon_sql::{Acl, Dialect, Pipeline, SqlRequest};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sqlx::{Connection, PgConnection, Row};
use tower::{Service, ServiceExt};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn acl(schema: &str) -> Acl {
    Acl::from_toml(&format!(
        r#"
[[databases]]
name = "test"
dialect = "postgres"
[[databases.roles]]
name = "reader"
groups = ["*"]
read_only = true
session_variables = ["search_path"]
tables = [{{ name = "{schema}.*", ops = ["select"] }}, {{ name = "public.*", ops = ["select"] }}]
"#
    ))
    .unwrap()
}

fn statement(schema: &'static str) -> impl Strategy<Value = String> {
    let table = prop::sample::select(vec!["t1", "t2"]).prop_map(move |t| format!("{schema}.{t}"));
    let read = prop_oneof![
        (table.clone(), 0..100i32)
            .prop_map(|(t, n)| format!("SELECT id, v FROM {t} WHERE id > {n}")),
        (table.clone(), table.clone())
            .prop_map(|(a, b)| format!("SELECT * FROM {a} WHERE id IN (SELECT id FROM {b})")),
        (table.clone(), table.clone()).prop_map(|(a, b)| format!(
            "SELECT x.id, lower(y.v) FROM {a} x JOIN {b} y ON x.id = y.id"
        )),
        table
            .clone()
            .prop_map(|t| format!("WITH c AS (SELECT id FROM {t}) SELECT count(*) FROM c")),
        table
            .clone()
            .prop_map(|t| format!("EXPLAIN SELECT * FROM {t}")),
        Just(format!("SET search_path = {schema}, public")),
        Just("SHOW search_path".to_string()),
    ];
    let write = prop_oneof![
        (table.clone(), 0..100i32)
            .prop_map(|(t, n)| format!("INSERT INTO {t} (id, v) VALUES ({n} + 1000, 'x')")),
        (table.clone(), 0..100i32)
            .prop_map(|(t, n)| format!("UPDATE {t} SET v = 'y' WHERE id = {n}")),
        (table.clone(), 0..100i32).prop_map(|(t, n)| format!("DELETE FROM {t} WHERE id = {n}")),
        table.clone().prop_map(|t| format!(
            "WITH d AS (DELETE FROM {t} WHERE id < 5 RETURNING *) SELECT count(*) FROM d"
        )),
        table.clone().prop_map(|t| format!(
            "WITH u AS (UPDATE {t} SET v = 'z' WHERE true RETURNING id) SELECT * FROM u"
        )),
        table
            .clone()
            .prop_map(move |t| format!("SELECT * INTO {schema}.stolen FROM {t}")),
        table
            .clone()
            .prop_map(|t| format!("SELECT * FROM {t} FOR UPDATE")),
        table
            .clone()
            .prop_map(|t| format!("SELECT * FROM {t} FOR SHARE")),
        Just(format!("SELECT nextval('{schema}.s')")),
        Just(format!("SELECT setval('{schema}.s', 42)")),
        Just("SELECT pg_advisory_xact_lock(1)".to_string()),
        Just(format!("CREATE TABLE {schema}.t3 (a int)")),
        Just(format!("DROP TABLE {schema}.t2")),
        table.clone().prop_map(|t| format!("TRUNCATE {t}")),
        table.clone().prop_map(|t| format!("COPY {t} FROM STDIN")),
        Just("SET default_transaction_read_only = off".to_string()),
        Just("SET TRANSACTION READ WRITE".to_string()),
        Just("SET ROLE postgres".to_string()),
        Just("SELECT set_config('transaction_read_only', 'off', true)".to_string()),
        table
            .clone()
            .prop_map(|t| format!("EXPLAIN ANALYZE DELETE FROM {t}")),
        table
            .clone()
            .prop_map(|t| format!("PREPARE p AS DELETE FROM {t} WHERE id = $1")),
        Just(format!("SELECT {schema}.bump()")),
        Just(format!("SELECT * FROM {schema}.bump()")),
        table.prop_map(|t| format!(
            "MERGE INTO {t} USING (SELECT 1 AS id) s ON {t}.id = s.id WHEN MATCHED THEN DELETE"
        )),
    ];
    let base = prop_oneof![3 => read, 7 => write];
    let noise = prop::sample::select(vec!["", " ", "/* c */ ", "-- c\n", "\n\t", "; ", "/* ; */"]);
    (noise.clone(), base, noise, any::<bool>()).prop_map(|(a, s, b, upper)| {
        let s = if upper { s } else { s.to_lowercase() };
        format!("{a}{s}{b}")
    })
}

async fn fingerprint(c: &mut PgConnection, schema: &str) -> (String, i64) {
    let rows: String = sqlx::query(&format!(
        "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM \
         (SELECT 't1' AS k, id, v FROM {schema}.t1 UNION ALL SELECT 't2', id, v FROM {schema}.t2) t"
    ))
    .fetch_one(&mut *c)
    .await
    .unwrap()
    .get(0);
    let seq: i64 = sqlx::query(&format!("SELECT last_value FROM {schema}.s"))
        .fetch_one(&mut *c)
        .await
        .unwrap()
        .get(0);
    (rows, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn admitted_read_only_statements_change_no_data() {
    let mut admin = PgConnection::connect(URL).await.unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at 127.0.0.1:5432 (database test, user postgres): {e}")
    });
    let schema: &'static str =
        Box::leak(format!("hexon_ro_{}", std::process::id()).into_boxed_str());
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.t1 (id int PRIMARY KEY, v text)"),
        format!("CREATE TABLE {schema}.t2 (id int PRIMARY KEY, v text)"),
        format!("INSERT INTO {schema}.t1 SELECT g, 'a' || g FROM generate_series(1, 50) g"),
        format!("INSERT INTO {schema}.t2 SELECT g, 'b' || g FROM generate_series(1, 50) g"),
        format!("CREATE SEQUENCE {schema}.s"),
        format!(
            "CREATE FUNCTION {schema}.bump() RETURNS int LANGUAGE sql AS \
             'UPDATE {schema}.t1 SET v = v || ''!'' WHERE id = 1 RETURNING id'"
        ),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let before = fingerprint(&mut admin, schema).await;

    let mut pipeline = Pipeline::build(Arc::new(acl(schema)), 0);
    let who = Identity::builder("ana", "ana")
        .groups(["analysts"])
        .build()
        .unwrap();
    let mut generated = Vec::new();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    let strategy = statement(schema);
    for _ in 0..400 {
        generated.push(strategy.new_tree(&mut runner).unwrap().current());
    }

    let mut admitted = 0;
    let mut conn = PgConnection::connect(URL).await.unwrap();
    for sql in &generated {
        let req = SqlRequest::new(who.clone(), "test", sql.as_str(), Dialect::Postgres);
        let Ok(ok) = pipeline.ready().await.unwrap().call(req).await else {
            continue;
        };
        admitted += 1;
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        // Errors are fine (the statement may be invalid for the server);
        // what matters is that nothing was written.
        let ran = sqlx::raw_sql(&ok.sql).execute(&mut conn).await;
        if ran.is_ok() {
            let xid: Option<i64> = sqlx::query("SELECT txid_current_if_assigned()")
                .fetch_one(&mut conn)
                .await
                .unwrap()
                .get(0);
            assert_eq!(xid, None, "{sql:?} (sent as {:?}) wrote something", ok.sql);
            let now = fingerprint(&mut conn, schema).await;
            assert_eq!(now, before, "{sql:?} (sent as {:?}) changed data", ok.sql);
        }
        sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        assert_eq!(
            fingerprint(&mut admin, schema).await,
            before,
            "{sql:?} changed data"
        );
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
    // The grammar makes reads about a third of the time: the property is
    // only meaningful if a good share was admitted and run.
    assert!(
        admitted >= 60,
        "only {admitted} of {} statements were admitted",
        generated.len()
    );
}
