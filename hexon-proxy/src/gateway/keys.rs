//! The gateway's signing key: loaded from `signing.key_file`, or created
//! once in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hexon_core::config::Config;
use hexon_core::signer::{Algorithm, Ed25519Signer, P256Signer, Signer};

use super::GatewayError;

/// Where the key lives when `signing.key_file` is not set.
pub fn default_key_path(config: &Config) -> PathBuf {
    Path::new(&config.gateway.data_dir).join("signing-key.pem")
}

/// Load the configured key, or — without `signing.key_file` — load or
/// create `<data_dir>/signing-key.pem` (mode 0600).
pub fn load_or_create(config: &Config) -> Result<Arc<dyn Signer>, GatewayError> {
    let kid = config.signing.key_id.as_str();
    let alg = config.signing.algorithm;
    if let Some(file) = &config.signing.key_file {
        return load(Path::new(file), kid, alg);
    }
    let path = default_key_path(config);
    if path.exists() {
        return load(&path, kid, alg);
    }
    let pem = generate_pem(alg, kid)?;
    write_private(&path, &pem)?;
    tracing::warn!(path = %path.display(), key_id = kid, "generated a new signing key (set signing.key_file to manage keys yourself)");
    load(&path, kid, alg)
}

/// Load a PKCS#8 PEM key of the configured algorithm.
pub fn load(path: &Path, kid: &str, alg: Algorithm) -> Result<Arc<dyn Signer>, GatewayError> {
    let pem = std::fs::read_to_string(path).map_err(|e| GatewayError::io(path, e))?;
    let key: Arc<dyn Signer> = match alg {
        Algorithm::EcdsaP256Sha256 => {
            Arc::new(P256Signer::from_pkcs8_pem(kid, &pem).map_err(|e| GatewayError::key(path, e))?)
        }
        _ => Arc::new(
            Ed25519Signer::from_pkcs8_pem(kid, &pem).map_err(|e| GatewayError::key(path, e))?,
        ),
    };
    Ok(key)
}

/// A fresh private key as PKCS#8 PEM.
pub fn generate_pem(alg: Algorithm, kid: &str) -> Result<String, GatewayError> {
    let pem = match alg {
        Algorithm::EcdsaP256Sha256 => P256Signer::generate(kid).and_then(|k| k.to_pkcs8_pem()),
        _ => Ed25519Signer::generate(kid).and_then(|k| k.to_pkcs8_pem()),
    };
    pem.map(|p| p.to_string())
        .map_err(|e| GatewayError::Other(format!("cannot generate a key: {e}")))
}

/// Write a new private key file, readable by the owner only; never overwrite.
pub fn write_private(path: &Path, pem: &str) -> Result<(), GatewayError> {
    use std::io::Write as _;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| GatewayError::io(dir, e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| GatewayError::io(path, e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| GatewayError::io(path, e))?;
    Ok(())
}
