//! Migrations are never silently destructive.
//!
//! Every file under `migrations/<engine>/` is scanned: a statement that
//! drops, truncates, deletes or updates rows, alters a column, drops
//! anything from a table, or replaces a function or trigger fails this test.
//! Two kinds of exception:
//!
//! - the event clause of a trigger whose action raises an error (the audit
//!   trail's "no UPDATE, no DELETE, no TRUNCATE" guards);
//! - the statements named in [`ALLOWED`], each with its file and why it is
//!   safe (the KV revision counter's triggers, which update a counter row).
//!
//! A migration that really has to change or remove something needs a
//! deliberate entry in [`ALLOWED`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

/// What a migration must not say (upper case, after a space or at the
/// start of a statement or trigger body).
const FORBIDDEN: [&str; 8] = [
    "DROP ",
    "TRUNCATE",
    "DELETE FROM",
    "UPDATE ",
    "ALTER COLUMN",
    "CREATE OR REPLACE FUNCTION",
    "CREATE OR REPLACE TRIGGER",
    "DROP TRIGGER",
];

/// Statements allowed although they contain a forbidden word: `(file
/// under migrations/, how the statement starts, why it is safe)`. The
/// start is matched on the normalised statement (upper case, single spaces)
/// and must name the object, so nothing else in that file rides along.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "sqlite/0002_kv_and_append_only_audit.sql",
        "CREATE TRIGGER KV_REVISION_ON_INSERT AFTER INSERT ON KV ",
        "keeps the one-row revision counter at the highest revision written; touches no KV row",
    ),
    (
        "sqlite/0002_kv_and_append_only_audit.sql",
        "CREATE TRIGGER KV_REVISION_ON_UPDATE AFTER UPDATE OF REVISION ON KV ",
        "keeps the one-row revision counter at the highest revision written; touches no KV row",
    ),
];

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

/// The destructive statements of one file's SQL (`file` as named in
/// [`ALLOWED`]), or none.
fn destructive(file: &str, sql: &str) -> Vec<String> {
    destructive_with(file, sql, ALLOWED)
}

fn destructive_with(file: &str, sql: &str, allowed: &[(&str, &str, &str)]) -> Vec<String> {
    let is_allowed = |s: &str| {
        allowed
            .iter()
            .any(|(f, start, _)| *f == file && s.starts_with(start))
    };
    scan(sql).into_iter().filter(|s| !is_allowed(s)).collect()
}

/// The statements with a forbidden word, before the allow-list.
fn scan(sql: &str) -> Vec<String> {
    let all = statements(sql);
    // Functions (PostgreSQL) whose body raises and does nothing destructive.
    let raising_functions: Vec<String> = all
        .iter()
        .filter(|s| s.starts_with("CREATE FUNCTION"))
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
            let file = format!("{engine}/{}", path.file_name().unwrap().to_str().unwrap());
            let bad = destructive(&file, &sql);
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
        assert!(
            !destructive("x/0001_x.sql", sql).is_empty(),
            "not caught: {sql}"
        );
    }
    for sql in [
        "CREATE TABLE t (deleted_at INTEGER, drops INTEGER); -- DROP TABLE t;",
        "CREATE TRIGGER no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END;",
        "CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no; %', TG_OP; END; $$;\n\
         CREATE TRIGGER g BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION guard();",
        "CREATE TRIGGER no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'no'); END;",
        "CREATE TABLE updates (updated_at INTEGER, alter_count INTEGER);",
    ] {
        assert_eq!(
            destructive("x/0001_x.sql", sql),
            Vec::<String>::new(),
            "{sql}"
        );
    }
}

#[test]
fn the_scanner_catches_updates_alterations_and_replacements() {
    for sql in [
        "UPDATE credentials SET material = X'00';",
        "update kv set value = x'00' where 1;",
        "INSERT INTO kv_revision (id, last) VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET last = 0;",
        "ALTER TABLE credentials ALTER COLUMN counter TYPE SMALLINT;",
        "ALTER TABLE credentials ALTER COLUMN lookup SET NOT NULL;",
        "ALTER TABLE kv DROP CONSTRAINT kv_pkey;",
        "ALTER TABLE kv DROP COLUMN IF EXISTS value;",
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END; $$;",
        "CREATE OR REPLACE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END; $$;",
        "CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE INSERT ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION f();",
        "DROP TRIGGER audit_log_no_update;",
        "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;",
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET y = 1; END;",
        "CREATE TRIGGER t AFTER UPDATE ON a BEGIN UPDATE b SET y = NEW.y; END;",
    ] {
        assert!(
            !destructive("x/0003_x.sql", sql).is_empty(),
            "not caught: {sql}"
        );
    }
}

#[test]
fn the_allow_list_names_one_statement_of_one_file() {
    let allowed: &[(&str, &str, &str)] = &[(
        "sqlite/0003_x.sql",
        "CREATE TRIGGER COUNT_ON_INSERT AFTER INSERT ON A ",
        "test",
    )];
    let counter =
        "CREATE TRIGGER count_on_insert AFTER INSERT ON a BEGIN UPDATE counter SET n = n + 1; END;";
    assert!(destructive_with("sqlite/0003_x.sql", counter, allowed).is_empty());
    // The same statement in another file, another trigger in that file, or
    // a second forbidden statement next to the allowed one: caught.
    assert_eq!(
        destructive_with("sqlite/0004_x.sql", counter, allowed).len(),
        1
    );
    let other =
        "CREATE TRIGGER count_on_delete AFTER DELETE ON a BEGIN UPDATE counter SET n = n - 1; END;";
    assert_eq!(
        destructive_with("sqlite/0003_x.sql", other, allowed).len(),
        1
    );
    let both = format!("{counter}\nUPDATE counter SET n = 0;");
    assert_eq!(
        destructive_with("sqlite/0003_x.sql", &both, allowed),
        ["UPDATE COUNTER SET N = 0"]
    );
}

#[test]
fn every_allow_list_entry_is_used_and_needed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for (file, start, why) in ALLOWED {
        assert!(!why.is_empty(), "{file}: {start}: say why it is safe");
        let sql = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("allow-list names {file}, which cannot be read: {e}"));
        let hits: Vec<String> = scan(&sql)
            .into_iter()
            .filter(|s| s.starts_with(start))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{file}: the allow-list entry `{start}` must match exactly one statement the scanner flags; it matches {hits:?}"
        );
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
