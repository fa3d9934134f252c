//! # hexon-sql
//!
//! The SQL bastion of Hexon: every statement a caller sends passes an ACL
//! pipeline before the database sees it, and what the database receives is
//! the pipeline's canonical re-serialisation of what it checked, never the
//! caller's raw bytes.
//!
//! - [`Pipeline`] — eight tower layers over one shared parse (sqlparser),
//!   cheapest first: validation, rate limit, (verdict cache), read-only,
//!   database access, patterns, table permissions, complexity, `LIMIT`
//!   injection. Each layer is usable alone ([`layers`]); the whole stack is a
//!   `Service<SqlRequest, Response = Admitted, Error = Refusal>`.
//! - [`Acl`] — databases and roles (chosen by the caller's groups) from TOML,
//!   validated with located errors.
//! - `pg` (feature `postgres`) — the PostgreSQL wire-protocol bastion;
//!   `mysql` (feature `mysql`) — the MySQL / MariaDB one. Both share
//!   `wire` (configuration, token login, query log).
//!
//! Anything the pipeline cannot parse or classify is refused, naming the
//! stage. The guide is docs/SQL.md in the repository.
//!
//! ```
//! use std::sync::Arc;
//! use hexon_core::Identity;
//! use hexon_sql::{Acl, Dialect, Pipeline, SqlRequest, Stage, decide_now};
//!
//! let acl = Acl::from_toml(r#"
//!     [[databases]]
//!     name = "app"
//!     dialect = "postgres"
//!     [[databases.roles]]
//!     name = "analyst"
//!     groups = ["analysts"]
//!     read_only = true
//!     row_limit = 100
//!     tables = [{ name = "public.*", ops = ["select"] }]
//! "#).expect("valid ACL");
//! let mut pipeline = Pipeline::build(Arc::new(acl), 10_000);
//! let ana = Identity::builder("ana", "ana").groups(["analysts"]).build().expect("identity");
//!
//! let ok = decide_now(&mut pipeline, SqlRequest::new(ana.clone(), "app", "select * from orders", Dialect::Postgres))
//!     .expect("admitted");
//! assert_eq!(&*ok.sql, "SELECT * FROM orders LIMIT 100");
//!
//! let no = decide_now(&mut pipeline, SqlRequest::new(ana, "app", "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Dialect::Postgres))
//!     .expect_err("refused");
//! assert_eq!(no.stage, Stage::ReadOnly);
//! ```
#![forbid(unsafe_code)]

pub mod acl;
pub mod analysis;
pub mod dialect;
pub mod functions;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod fuzzing;
pub mod layers;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod query_log;
pub mod request;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod wire;

pub use acl::{Acl, AclConfig, AclError, UpstreamTls};
pub use dialect::Dialect;
pub use layers::{Pipeline, PipelineService, decide_now};
pub use request::{Admitted, Origin, Refusal, SqlRequest, Stage};
