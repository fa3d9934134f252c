//! SQL text through the whole ACL pipeline, both dialects, a read-only and a
//! writing role: never panics, never admits what it could not parse, and
//! what it admits for the read-only role re-analyses without a write.
#![no_main]

use std::sync::{Arc, OnceLock};

use hexon_core::Identity;
use hexon_sql::analysis::{Analysis, ParseLimits};
use hexon_sql::{Acl, Dialect, Pipeline, PipelineService, SqlRequest, decide_now};

const ACL: &str = r#"
[[databases]]
name = "pg"
dialect = "postgres"
[[databases.roles]]
name = "reader"
groups = ["r"]
read_only = true
row_limit = 10
tables = [{ name = "*", ops = ["select"] }]
[[databases.roles]]
name = "writer"
groups = ["w"]
tables = [{ name = "public.*", ops = ["select", "insert", "update", "delete"] }]

[[databases]]
name = "my"
dialect = "mysql"
[[databases.roles]]
name = "reader"
groups = ["r"]
read_only = true
tables = [{ name = "my.*", ops = ["select"] }]
[[databases.roles]]
name = "writer"
groups = ["w"]
tables = [{ name = "my.*", ops = ["select", "insert", "update", "delete"] }]
"#;

fn fixtures() -> &'static (Identity, Identity) {
    static F: OnceLock<(Identity, Identity)> = OnceLock::new();
    F.get_or_init(|| {
        let r = Identity::builder("r", "r").groups(["r"]).build().expect("identity");
        let w = Identity::builder("w", "w").groups(["w"]).build().expect("identity");
        (r, w)
    })
}

fn pipeline() -> PipelineService {
    // No cache: every input is decided from scratch.
    Pipeline::build(Arc::new(Acl::from_toml(ACL).expect("fixture ACL")), 0)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let (reader, writer) = fixtures();
    let mut p = pipeline();
    for (db, dialect) in [("pg", Dialect::Postgres), ("my", Dialect::Mysql)] {
        for (who, read_only) in [(reader, true), (writer, false)] {
            let req = SqlRequest::new(who.clone(), db, sql, dialect);
            let Ok(admitted) = decide_now(&mut p, req) else { continue };
            let limits = ParseLimits::default();
            Analysis::parse(sql, dialect, &limits).expect("admitted text must parse");
            let again = Analysis::parse(&admitted.sql, dialect, &limits).expect("what is sent must parse");
            if read_only {
                for s in &again.statements {
                    assert!(s.effects.is_empty(), "read-only role admitted a write: {sql:?} -> {:?}", admitted.sql);
                }
            }
        }
    }
});
