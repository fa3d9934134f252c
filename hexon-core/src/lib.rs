//! # hexon-core
//!
//! The identity core of Hexon, an identity enforcement gateway:
//!
//! - [`Identity`] — who is calling, cheap to clone, carried on every request;
//! - [`directory`] — users, groups and nested groups (a DAG with a
//!   precomputed transitive closure), merged from several sources by priority;
//! - [`policy`] — routes and rules compiled into a matcher that decides
//!   allow / need-login / need-step-up / deny, with an explain trace;
//! - [`httpsig`] — the contract with backends: identity headers signed as
//!   RFC 9421 HTTP Message Signatures (Ed25519), and the verifier;
//! - [`jwt`] — EdDSA / ES256 JWTs for routes that inject `Authorization: Bearer`;
//! - [`redact`] — secrets taken out of connection URLs before they are shown;
//! - [`signer`] and [`keys`] — the one signing seam, key rings with rotation, JWKS;
//! - `config` (feature `config`) — the TOML model with `${VAR}` substitution;
//! - `verify` (feature `tower`, `axum`) — the backend SDK: a tower layer that
//!   verifies signed identity and an axum extractor;
//! - `store` (features `store`, `sqlite`, `postgres`, `nats`) — the state
//!   layer: durable objects, shared KV with TTL and cluster events;
//! - `testing` (feature `test-util`) — helpers for tests that start real servers.
//!
//! The core is synchronous and I/O-free except where signing must await a
//! [`Signer`]; time is always a parameter ([`UnixTime`]).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod directory;
pub mod duration;
pub mod hex;
pub mod httpsig;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod policy;
pub mod redact;
pub mod signer;
pub mod time;

#[cfg(feature = "config")]
pub mod config;

#[cfg(feature = "tower")]
pub mod verify;

#[cfg(feature = "rt")]
pub mod rt;

#[cfg(feature = "store")]
pub mod store;

#[cfg(feature = "test-util")]
pub mod testing;

pub use identity::{AuthEvent, AuthMethod, Identity, IdentityKind};
pub use keys::{KeyRing, KeySet, PublicKey};
pub use signer::{Algorithm, Ed25519Signer, P256Signer, Signer};
pub use time::UnixTime;
