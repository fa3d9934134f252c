//! Hexon's certificate authority: an X.509 hierarchy signing through the
//! async [`hexon_core::Signer`], issuance profiles, CSR checks, CRLs, an OCSP
//! responder, an ACME server, and an SSH certificate authority ([`ssh`]).
//! See docs/CA.md.
pub mod acme;
mod authority;
mod bridge;
mod ca;
mod csr;
mod error;
mod http;
mod local_key;
mod ocsp;
mod profile;
pub mod setup;
pub mod ssh;
pub use authority::*;
pub use ca::*;
pub use csr::*;
pub use error::CaError;
pub use http::CaHttp;
pub use ocsp::*;
pub use profile::*;
pub use ssh::{
    HostCertRequest, SshCa, SshCertKind, SshIssued, SshPolicy, SshPublicKey, UserCertRequest,
};
