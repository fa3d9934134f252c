//! Fixtures for the wire fuzz targets (`pg::fuzz_session`,
//! `mysql::fuzz_session`): one ACL, one read-only caller.

use std::sync::{Arc, OnceLock};

use hexon_core::Identity;

use crate::acl::Acl;
use crate::layers::{Pipeline, PipelineService};

const ACL: &str = r#"
[[databases]]
name = "pg"
dialect = "postgres"
upstream = "127.0.0.1:5432"
[[databases.roles]]
name = "reader"
groups = ["r"]
read_only = true
row_limit = 3
statements = ["cursor", "prepared"]
tables = [{ name = "*", ops = ["select"] }]

[[databases]]
name = "my"
dialect = "mysql"
upstream = "127.0.0.1:3306"
upstream_database = "my_real"
[[databases.roles]]
name = "reader"
groups = ["r"]
read_only = true
row_limit = 3
upstream_user = "ro"
tables = [{ name = "my.*", ops = ["select"] }]

[[databases]]
name = "my2"
dialect = "mysql"
upstream = "127.0.0.1:3306"
[[databases.roles]]
name = "reader2"
groups = ["r"]
read_only = true
upstream_user = "ro"
tables = [{ name = "my2.*", ops = ["select"] }]
"#;

fn acl() -> Option<Arc<Acl>> {
    static ACL_: OnceLock<Option<Arc<Acl>>> = OnceLock::new();
    ACL_.get_or_init(|| Acl::from_toml(ACL).ok().map(Arc::new))
        .clone()
}

fn identity() -> Option<Identity> {
    Identity::builder("fuzz", "fuzz").groups(["r"]).build().ok()
}

pub(crate) fn pipeline() -> Option<PipelineService> {
    Some(Pipeline::build(acl()?, 64))
}

#[cfg(feature = "postgres")]
pub(crate) fn pg_session() -> Option<crate::pg::relay::SessionInfo> {
    let identity = identity()?;
    let acl = acl()?;
    let role = acl.role_for(&identity, "pg")?.clone();
    Some(crate::pg::relay::SessionInfo {
        identity,
        database: "pg".into(),
        role,
        acl,
    })
}

#[cfg(feature = "mysql")]
pub(crate) fn my_session() -> Option<crate::mysql::relay::SessionInfo> {
    let identity = identity()?;
    let acl = acl()?;
    let db = acl.database("my")?.clone();
    let role = db.role_for(&identity)?.clone();
    Some(crate::mysql::relay::SessionInfo {
        identity,
        db,
        role,
        acl,
        upstream_user: "ro".into(),
    })
}
