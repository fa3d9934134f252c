//! Shared fixtures for the pipeline tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;

use hexon_core::Identity;
use hexon_sql::{Acl, Admitted, Dialect, Origin, Pipeline, PipelineService, Refusal, SqlRequest};
use tower::{Service, ServiceExt};

/// One PostgreSQL and one MySQL database, with a read-only role, a writer
/// role and an admin role on each.
pub const ACL: &str = r#"
[validation]
max_bytes = 4096
max_depth = 16

[[databases]]
name = "app"
dialect = "postgres"
rate_per_identity = 1000

[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
row_limit = 100
max_complexity = 20
deny_patterns = ["(?i)\\bcredit_cards\\b"]
tables = [
  { name = "public.*", ops = ["select"] },
  { name = "public.salaries", ops = [] },
  { name = "reporting.*", ops = ["select"] },
]

[[databases.roles]]
name = "writer"
groups = ["developers"]
tables = [
  { name = "public.*", ops = ["select", "insert", "update", "delete"] },
  { name = "public.audit", ops = ["select", "insert"] },
]

[[databases.roles]]
name = "admin"
groups = ["dba"]
statements = ["ddl"]
allow_unbounded_writes = true
tables = [{ name = "*", ops = ["select", "insert", "update", "delete"] }]

[[databases]]
name = "other"
dialect = "postgres"
[[databases.roles]]
name = "dba-only"
groups = ["dba"]
tables = [{ name = "*", ops = ["select"] }]

[[databases]]
name = "shop"
dialect = "mysql"
[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
row_limit = 100
tables = [{ name = "shop.*", ops = ["select"] }]
[[databases.roles]]
name = "writer"
groups = ["developers"]
tables = [{ name = "shop.*", ops = ["select", "insert", "update", "delete"] }]

[[databases]]
name = "archive"
dialect = "mysql"
[[databases.roles]]
name = "dba-only"
groups = ["dba"]
tables = [{ name = "archive.*", ops = ["select"] }]
"#;

pub fn acl() -> Arc<Acl> {
    Arc::new(Acl::from_toml(ACL).unwrap())
}

pub fn pipeline() -> PipelineService {
    Pipeline::build(acl(), 1024)
}

pub fn user(name: &str, groups: &[&str]) -> Identity {
    Identity::builder(name, name)
        .groups(groups.iter().copied())
        .build()
        .unwrap()
}

pub fn analyst() -> Identity {
    user("ana", &["analysts"])
}

pub fn developer() -> Identity {
    user("dev", &["developers"])
}

pub fn dba() -> Identity {
    user("root", &["dba"])
}

pub async fn run(
    p: &mut PipelineService,
    who: &Identity,
    db: &str,
    dialect: Dialect,
    sql: &str,
) -> Result<Admitted, Refusal> {
    let req = SqlRequest::new(who.clone(), db, sql, dialect).with_origin(Origin::Simple);
    p.ready().await?.call(req).await
}
