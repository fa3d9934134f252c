//! The reference gateway assembled from `hexon.toml`: what `bins/hexon`
//! runs. The binary only parses its command line; everything it does is
//! here, testable as a library.

pub mod admin;
pub mod audit;
pub mod echo;
pub mod keys;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hexon_core::UnixTime;
use hexon_core::config::{Config, ConfigErrors};
use hexon_core::jwt::{IssueParams, JwtIssuer};
use hexon_core::keys::KeySet;
use hexon_core::signer::{Algorithm, Signer};

/// Why a gateway command failed. Every message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration is invalid (every problem, with its location).
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file is not a usable key.
    #[error("{path}: {reason}")]
    Key {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

impl GatewayError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GatewayError::Io {
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn key(path: &Path, e: impl std::fmt::Display) -> Self {
        GatewayError::Key {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Run an async command on a multi-threaded runtime.
pub fn run<F, T>(fut: F) -> Result<T, GatewayError>
where
    F: std::future::Future<Output = Result<T, GatewayError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| GatewayError::Other(format!("cannot start the runtime: {e}")))?;
    rt.block_on(fut)
}

/// Print an error for the operator.
#[allow(clippy::print_stderr)] // the binary's error output
pub fn report(e: &GatewayError) {
    eprintln!("hexon: {e}");
}

#[allow(clippy::print_stdout)] // the command's output
fn out(s: &str) {
    println!("{s}");
}

/// `hexon check`: validate and print the non-default values.
pub fn check(path: &Path) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    out(&format!(
        "{}: OK ({} listener(s), {} route(s), {} user(s), {} group(s))",
        path.display(),
        config.listeners.len(),
        config.routes.len(),
        config.users.len(),
        config.groups.len()
    ));
    let values = config.non_default_values();
    if !values.is_empty() {
        out("# non-default values");
        for v in values {
            out(&v);
        }
    }
    Ok(())
}

/// `hexon token`: a bearer token for a configured user, signed with the
/// gateway's key (created if needed), valid for `jwt.lifetime`.
pub fn token(path: &Path, user: &str) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    let key = keys::load_or_create(&config)?;
    let token = run(mint_token(&config, key, user))?;
    out(&token);
    Ok(())
}

/// Mint a token for `user` of the config's local directory.
pub async fn mint_token_for(
    config: &Config,
    key: Arc<dyn Signer>,
    user: &str,
) -> Result<String, GatewayError> {
    mint_token(config, key, user).await
}

async fn mint_token(
    config: &Config,
    key: Arc<dyn Signer>,
    user: &str,
) -> Result<String, GatewayError> {
    let directory = config
        .directory()
        .map_err(|e| GatewayError::Other(format!("local directory: {e}")))?;
    let identity = directory
        .identity_builder(user)
        .map_err(|e| GatewayError::Other(format!("user {user:?}: {e} (define it with [[user]])")))?
        .auth("token", UnixTime::now())
        .map_err(|e| GatewayError::Other(e.to_string()))?
        .build()
        .map_err(|e| GatewayError::Other(e.to_string()))?;
    let params = IssueParams::new(
        config.jwt.issuer.as_str(),
        config.jwt.audience.as_str(),
        config.jwt.lifetime.get(),
    );
    JwtIssuer::new(key)
        .issue(&identity, &params, UnixTime::now())
        .await
        .map_err(|e| GatewayError::Other(format!("cannot sign the token: {e}")))
}

/// `hexon keys generate`.
pub fn generate_key(out_path: &Path, algorithm: &str) -> Result<(), GatewayError> {
    let alg = Algorithm::from_http_sig_name(algorithm).ok_or_else(|| {
        GatewayError::Other(format!(
            "unknown algorithm {algorithm:?}: use ed25519 or ecdsa-p256-sha256"
        ))
    })?;
    let pem = keys::generate_pem(alg, "new")?;
    keys::write_private(out_path, &pem)?;
    out(&format!(
        "wrote {} ({algorithm}); set signing.key_file to it",
        out_path.display()
    ));
    Ok(())
}

/// `hexon keys jwks`: the public JWKS of the configured key.
pub fn print_jwks(path: &Path) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    let key = keys::load_or_create(&config)?;
    let mut set = KeySet::new();
    set.insert(key.key_id(), key.public_key(), None)
        .map_err(|e| GatewayError::Other(e.to_string()))?;
    let jwks = serde_json::to_string_pretty(&set.to_jwks(UnixTime::now()))
        .map_err(|e| GatewayError::Other(e.to_string()))?;
    out(&jwks);
    Ok(())
}

/// `hexon serve`.
pub async fn serve(config: PathBuf) -> Result<(), GatewayError> {
    let _ = config;
    Err(GatewayError::Other(
        "the data plane is being assembled; not available yet".into(),
    ))
}

/// `hexon quickstart`.
pub async fn quickstart(port: u16) -> Result<(), GatewayError> {
    let _ = port;
    Err(GatewayError::Other(
        "the data plane is being assembled; not available yet".into(),
    ))
}
