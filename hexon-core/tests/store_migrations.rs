//! Migrations are never silently destructive.
//!
//! Every file under `migrations/<engine>/` is scanned: a statement that
//! drops, truncates or deletes rows fails this test. The one exception is
//! the event clause of a trigger whose action raises an error (the audit
//! trail's "no UPDATE, no DELETE, no TRUNCATE" guards). A migration that
//! really has to remove something needs a deliberate change here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

const FORBIDDEN: [&str; 3] = ["DROP ", "TRUNCATE", "DELETE FROM"];

/// Split SQL into statements: `--` comments removed; `;` inside quotes,
/// dollar quotes and SQLite trigger bodies (`BEGIN … END`) does not end one.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let (mut quote, mut dollar) = (None::<char>, false);
    while let Some(c) = chars.next() {
        match (quote, dollar, c) {
            (None, false, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                current.push('\n');
                continue;
            }
            (None, false, '\'' | '"') => quote = Some(c),
            (Some(q), _, c) if c == q => quote = None,
            (None, _, '$') if chars.peek() == Some(&'$') => {
                chars.next();
                current.push_str("$$");
                dollar = !dollar;
                continue;
            }
            (None, false, ';') => {
                let words = normalise(&current);
                let in_trigger_body = words.starts_with("CREATE TRIGGER")
                    && words.contains(" BEGIN ")
                    && !words.ends_with(" END");
                if !in_trigger_body {
                    if !words.is_empty() {
                        out.push(words);
                    }
                    current.clear();
                    continue;
                }
            }
            _ => {}
        }
        current.push(c);
    }
    let rest = normalise(&current);
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Upper case, whitespace collapsed to single spaces.
fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

fn forbidden_in(text: &str) -> Option<&'static str> {
    FORBIDDEN
        .into_iter()
        .find(|f| format!(" {text} ").contains(&format!(" {f}")))
}

/// The destructive statements of one file's SQL, or none.
fn destructive(sql: &str) -> Vec<String> {
    let all = statements(sql);
    // Functions (PostgreSQL) whose body raises and does nothing destructive.
    let raising_functions: Vec<String> = all
        .iter()
        .filter(|s| s.starts_with("CREATE FUNCTION") || s.starts_with("CREATE OR REPLACE FUNCTION"))
        .filter(|s| s.contains("RAISE EXCEPTION") && forbidden_in(s).is_none())
        .filter_map(|s| {
            let after = s.split(" FUNCTION ").nth(1)?;
            Some(after.split('(').next()?.trim().to_owned())
        })
        .collect();
    let mut bad = Vec::new();
    for s in all {
        if let Some(rest) = s.strip_prefix("CREATE TRIGGER") {
            let (header, body) = match rest.split_once(" BEGIN ") {
                Some((h, b)) => (h.to_owned(), b.to_owned()),
                None => (rest.to_owned(), String::new()),
            };
            let raises = body.contains("RAISE(")
                || body.contains("RAISE (")
                || raising_functions.iter().any(|f| {
                    header.contains(&format!("EXECUTE FUNCTION {f}("))
                        || header.contains(&format!("EXECUTE PROCEDURE {f}("))
                });
            if forbidden_in(&body).is_some() || (forbidden_in(&header).is_some() && !raises) {
                bad.push(s);
            }
        } else if forbidden_in(&s).is_some() {
            bad.push(s);
        }
    }
    bad
}

#[test]
fn no_migration_drops_truncates_or_deletes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut scanned = 0;
    for engine in ["sqlite", "postgres"] {
        for entry in std::fs::read_dir(root.join(engine)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "sql") {
                continue;
            }
            let sql = std::fs::read_to_string(&path).unwrap();
            let bad = destructive(&sql);
            assert!(
                bad.is_empty(),
                "{} has destructive statements (migrations only add; if this one must remove \
                 data, change this test deliberately):\n{}",
                path.display(),
                bad.join("\n")
            );
            scanned += 1;
        }
    }
    assert!(
        scanned >= 4,
        "expected migrations for both engines, scanned {scanned}"
    );
}

#[test]
fn the_scanner_catches_destructive_statements() {
    for sql in [
        "DROP TABLE credentials;",
        "drop index kv_by_expiry;",
        "ALTER TABLE kv DROP COLUMN value;",
        "TRUNCATE audit_log;",
        "DELETE FROM kv WHERE 1;",
        "CREATE TABLE a (x INT); delete\n  from a;",
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; END;",
        "CREATE TRIGGER t BEFORE TRUNCATE ON a FOR EACH STATEMENT EXECUTE FUNCTION quiet();",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM b; RAISE EXCEPTION 'x'; END; $$;",
    ] {
        assert!(!destructive(sql).is_empty(), "not caught: {sql}");
    }
    for sql in [
        "CREATE TABLE t (deleted_at INTEGER, drops INTEGER); -- DROP TABLE t;",
        "CREATE TRIGGER no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END;",
        "CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no; %', TG_OP; END; $$;\n\
         CREATE TRIGGER g BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION guard();",
    ] {
        assert_eq!(destructive(sql), Vec::<String>::new(), "{sql}");
    }
}

#[test]
fn statements_split_like_the_database_does() {
    let sql = "CREATE TABLE a (x TEXT DEFAULT ';'); -- a; comment\n\
               CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET y = 1; UPDATE c SET z = 2; END;\n\
               CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'x'; END; $$ LANGUAGE plpgsql;";
    let s = statements(sql);
    assert_eq!(s.len(), 3, "{s:#?}");
    assert!(s[1].ends_with("END"));
}
