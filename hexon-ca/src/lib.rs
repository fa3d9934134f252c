//! hexon-ca
pub mod acme;
mod authority;
mod bridge;
mod ca;
mod csr;
mod error;
mod http;
mod ocsp;
mod profile;
pub mod setup;
pub use authority::*;
pub use ca::*;
pub use csr::*;
pub use error::CaError;
pub use http::CaHttp;
pub use ocsp::*;
pub use profile::*;
