//! # hexon-sql
//!
//! The SQL bastion of Hexon.
#![forbid(unsafe_code)]

pub mod acl;
pub mod analysis;
pub mod dialect;
pub mod functions;
pub mod layers;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod request;

pub use acl::{Acl, AclConfig, AclError};
pub use dialect::Dialect;
pub use layers::{Pipeline, PipelineService, decide_now};
pub use request::{Admitted, Origin, Refusal, SqlRequest, Stage};
