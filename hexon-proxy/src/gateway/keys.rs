//! The gateway's signing key: loaded from `signing.key_file`, or created
//! once in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hexon_core::config::Config;
use hexon_core::keys::KeySet;
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

/// Every key backends and the gateway itself verify with: the signing key
/// plus each `[[signing.publish]]` key (only their public halves). This is
/// what `/.well-known/jwks.json` serves.
pub fn verification_keys(config: &Config, key: &Arc<dyn Signer>) -> Result<KeySet, GatewayError> {
    let mut set = KeySet::new();
    set.insert(key.key_id(), key.public_key(), None)
        .map_err(|e| GatewayError::Other(format!("signing key: {e}")))?;
    for (i, p) in config.signing.publish.iter().enumerate() {
        let alg = p.algorithm.unwrap_or(config.signing.algorithm);
        let published = load(Path::new(&p.key_file), &p.key_id, alg).map_err(|e| {
            GatewayError::Other(format!("signing.publish[{i}] ({}): {e}", p.key_id))
        })?;
        if published.public_key() == key.public_key() {
            return Err(GatewayError::Other(format!(
                "signing.publish[{i}] ({}) is the signing key itself under another key id; \
                 publish a different key",
                p.key_id
            )));
        }
        set.insert(&p.key_id, published.public_key(), None)
            .map_err(|e| GatewayError::Other(format!("signing.publish[{i}]: {e}")))?;
    }
    Ok(set)
}

/// The key id that follows `kid` in a rotation: a trailing number is
/// incremented (`gw-7` → `gw-8`, `hexon-1` → `hexon-2`), otherwise `-2` is
/// appended. Stays within the 64-byte key-id limit.
pub fn next_key_id(kid: &str) -> String {
    let digits = kid.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (stem, num) = kid.split_at(kid.len() - digits);
    let next = match num.parse::<u64>() {
        Ok(n) => format!("{stem}{}", n.saturating_add(1)),
        _ => format!("{kid}-2"),
    };
    if next.len() > 64 {
        let keep = 64 - 2;
        format!("{}-2", kid.get(..keep).unwrap_or(kid))
    } else {
        next
    }
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

#[cfg(test)]
mod tests {
    use super::next_key_id;

    #[test]
    fn next_key_ids() {
        assert_eq!(next_key_id("hexon-1"), "hexon-2");
        assert_eq!(next_key_id("gw-2026-11"), "gw-2026-12");
        assert_eq!(next_key_id("gw-9"), "gw-10");
        assert_eq!(next_key_id("prod"), "prod-2");
        assert_eq!(next_key_id("7"), "8");
        assert!(next_key_id(&"a".repeat(64)).len() <= 64);
    }
}
