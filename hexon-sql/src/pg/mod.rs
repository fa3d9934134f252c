//! The PostgreSQL wire-protocol bastion.
//!
//! PostgreSQL clients (`psql`, `pgbench`, drivers) connect to the bastion as
//! if it were the server. They log in with their gateway user name and a
//! short-lived gateway token (a JWT, as minted by `hexon token`) as the
//! password, over TLS. The bastion verifies the token, picks the caller's
//! role on the database from the [`Acl`], logs in to the real server as that
//! role's database user, and from then on relays the session: every
//! statement (simple `Query`, or `Parse` of the extended protocol) passes the
//! [`Pipeline`] first, and what the server receives is the
//! pipeline's canonical text, never the client's bytes. Results are relayed
//! frame by frame, and capped at the statement's row cap.
//!
//! ```no_run
//! # async fn run(acl: std::sync::Arc<hexon_sql::Acl>, keys: hexon_core::KeySet) -> Result<(), hexon_sql::pg::PgBastionError> {
//! use hexon_sql::pg::{PgBastion, PgBastionConfig};
//! let config: PgBastionConfig = toml::from_str(r#"
//!     listen = "127.0.0.1:6432"
//!     tls_cert = "/etc/hexon/pg.crt"
//!     tls_key = "/etc/hexon/pg.key"
//!     token_issuer = "https://hexon.example"
//!     token_audience = "hexon"
//! "#).map_err(|e| hexon_sql::pg::PgBastionError::Config(e.to_string()))?;
//! let bastion = PgBastion::bind(&config, acl, keys).await?;
//! bastion.serve(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! What the relay enforces beyond the pipeline:
//! - startup parameters that could change how statements are understood
//!   (`options`, `search_path`, any unknown setting) or `replication` are
//!   refused; the upstream session is started with
//!   `standard_conforming_strings=on`, `application_name=hexon-sql`, and for
//!   read-only roles `default_transaction_read_only=on`;
//! - `Bind`, `Describe` and `Execute` must name statements and portals that
//!   were admitted; `FunctionCall` is refused; COPY data only flows while
//!   the server is in COPY FROM STDIN;
//! - every result is capped at the statement's row cap (the pipeline's, or
//!   the role's `row_limit`): past it, rows are dropped and the result ends
//!   with SQLSTATE `54000`. Rows of a portal fetched in chunks are counted
//!   cumulatively; `FETCH` statements sent as simple queries are capped per
//!   statement.
//!
//! Each statement is logged as one `tracing` event with target
//! `hexon_sql::query` (fields `user`, `database`, `role`, `statement` — the
//! normalised text —, `verdict`, `stage`, `code`, `duration_us`, `rows`).
//! Tokens and upstream passwords are never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use hexon_core::KeySet;
use hexon_core::jwt::JwtVerifier;

use crate::acl::Acl;
use crate::layers::{Pipeline, PipelineService};

mod auth;
mod frame;
mod relay;
mod session;

/// Configuration of the PostgreSQL bastion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgBastionConfig {
    /// Address to listen on, e.g. `0.0.0.0:6432`.
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Accept logins without TLS (the token then crosses the network in
    /// clear). For tests and loopback-only setups.
    #[serde(default)]
    pub dangerous_allow_plaintext: bool,
    /// Issuer (`iss`) of the gateway tokens accepted as passwords.
    pub token_issuer: String,
    /// Audience (`aud`) the tokens must carry.
    pub token_audience: String,
    /// Entries of the pipeline's verdict cache.
    #[serde(default = "default_cache")]
    pub verdict_cache: usize,
}

fn default_cache() -> usize {
    10_000
}

/// Why the bastion could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgBastionError {
    /// The configuration is incomplete or inconsistent.
    #[error("PostgreSQL bastion configuration: {0}")]
    Config(String),
    /// The certificate or key could not be loaded.
    #[error("PostgreSQL bastion TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("PostgreSQL bastion listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What every session shares.
pub(crate) struct Shared {
    tls: Option<TlsAcceptor>,
    allow_plaintext: bool,
    verifier: JwtVerifier,
    acl: Arc<Acl>,
    pipeline: PipelineService,
    cancels: Arc<session::CancelMap>,
}

/// A bound PostgreSQL bastion; [`serve`](Self::serve) runs it.
pub struct PgBastion {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgBastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBastion")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, PgBastionError> {
    let tls = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        PgBastionError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(tls("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls("key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgBastionError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| PgBastionError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl PgBastion {
    /// Bind the listener, load the TLS certificate, and prepare the
    /// pipeline for `acl`. Tokens are verified against `keys`, the
    /// configured issuer and audience.
    ///
    /// # Errors
    /// No TLS configured without `dangerous_allow_plaintext`, only one of
    /// certificate and key, unreadable PEM, or a listener that cannot bind.
    pub async fn bind(
        config: &PgBastionConfig,
        acl: Arc<Acl>,
        keys: KeySet,
    ) -> Result<Self, PgBastionError> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
            (None, None) if config.dangerous_allow_plaintext => None,
            (None, None) => {
                return Err(PgBastionError::Config(
                    "set tls_cert and tls_key (clients send their token as the password), or dangerous_allow_plaintext = true for tests".into(),
                ));
            }
            _ => {
                return Err(PgBastionError::Config(
                    "tls_cert and tls_key go together".into(),
                ));
            }
        };
        let listener = TcpListener::bind(config.listen).await?;
        let verifier = JwtVerifier::new(
            keys,
            config.token_issuer.clone(),
            config.token_audience.clone(),
        );
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                tls,
                allow_plaintext: config.dangerous_allow_plaintext,
                verifier,
                pipeline: Pipeline::build(acl.clone(), config.verdict_cache),
                acl,
                cancels: Arc::default(),
            }),
        })
    }

    /// The address the listener is bound to (useful with port 0).
    ///
    /// # Errors
    /// As [`TcpListener::local_addr`].
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept connections until `shutdown` completes, each session in its
    /// own task. Sessions already running go on until their clients leave.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                r = self.listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        tracing::debug!(%peer, "PostgreSQL client connected");
                        tokio::spawn(session::handle(tcp, self.shared.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}
