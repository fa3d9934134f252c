//! Property: a verdict reused through the shape cache (same statement,
//! other literal values) is exactly the verdict the full pipeline gives for
//! the new statement: the same text sent, the same row cap and normalised
//! text. Statements come from templates over several layers' concerns
//! (tables, functions, LIMIT, writes), both dialects, with literal values
//! drawn from hostile alphabets (quotes, backslashes, comment openers,
//! semicolons, non-ASCII).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{analyst, developer, pipeline, run};
use hexon_sql::{Acl, Dialect, Pipeline};
use proptest::prelude::*;

/// `{n}` is a number literal, `{s}` a string literal.
const TEMPLATES: &[(&str, Dialect, &str)] = &[
    (
        "app",
        Dialect::Postgres,
        "SELECT id, name FROM orders WHERE id = {n} AND name = {s}",
    ),
    (
        "app",
        Dialect::Postgres,
        "select * from orders o join customers c on c.id = o.customer_id where o.total > {n} and c.name like {s}",
    ),
    (
        "app",
        Dialect::Postgres,
        "SELECT lower(name) FROM orders WHERE name IN ({s}, {s}) ORDER BY 1 LIMIT 500",
    ),
    (
        "app",
        Dialect::Postgres,
        "SELECT * FROM orders WHERE id > {n} LIMIT 5",
    ),
    (
        "app",
        Dialect::Postgres,
        "SELECT * FROM orders WHERE id BETWEEN {n} AND {n} OFFSET {n}",
    ),
    (
        "app",
        Dialect::Postgres,
        "UPDATE orders SET name = {s} WHERE id = {n}",
    ),
    (
        "app",
        Dialect::Postgres,
        "INSERT INTO orders (id, name) VALUES ({n}, {s}), ({n}, {s})",
    ),
    (
        "app",
        Dialect::Postgres,
        "DELETE FROM orders WHERE id = {n}",
    ),
    (
        "app",
        Dialect::Postgres,
        "SELECT * FROM credit_cards WHERE id = {n}",
    ),
    (
        "app",
        Dialect::Postgres,
        "SELECT {s} || name, {n} * 2 FROM orders",
    ),
    (
        "shop",
        Dialect::Mysql,
        "SELECT id FROM items WHERE id = {n} AND label = {s}",
    ),
    (
        "shop",
        Dialect::Mysql,
        "SELECT id FROM items WHERE label LIKE {s} LIMIT {n}, 10",
    ),
    (
        "shop",
        Dialect::Mysql,
        "UPDATE items SET label = {s} WHERE id = {n}",
    ),
];

fn fill(template: &str, nums: &[u64], strs: &[String], quote: fn(&str) -> String) -> String {
    let mut out = String::new();
    let (mut n, mut s) = (0, 0);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        if rest[i..].starts_with("{n}") {
            out.push_str(&nums[n % nums.len()].to_string());
            n += 1;
        } else {
            out.push_str(&quote(&strs[s % strs.len()]));
            s += 1;
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn value() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 ';\\-*/\\\\%_éß\"]{0,12}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn shape_hits_equal_the_full_path(
        t in 0..TEMPLATES.len(),
        first_nums in proptest::collection::vec(0u64..100_000, 4),
        first_strs in proptest::collection::vec(value(), 4),
        nums in proptest::collection::vec(0u64..100_000, 4),
        strs in proptest::collection::vec(value(), 4),
        who in 0..2usize,
    ) {
        let (db, dialect, template) = TEMPLATES[t];
        let identity = if who == 0 { analyst() } else { developer() };
        let first = fill(template, &first_nums, &first_strs, sql_quote);
        let second = fill(template, &nums, &strs, sql_quote);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (cached, full) = rt.block_on(async {
            // One pipeline learns the shape from the first statement and
            // answers the second from it; the other has no cache at all.
            let mut p = pipeline();
            let _ = run(&mut p, &identity, db, dialect, &first).await;
            let cached = run(&mut p, &identity, db, dialect, &second).await;
            let acl: std::sync::Arc<Acl> = common::acl();
            let mut uncached = Pipeline::build(acl, 0);
            let full = run(&mut uncached, &identity, db, dialect, &second).await;
            (cached, full)
        });
        prop_assert_eq!(cached, full, "{} then {}", first, second);
    }
}
