//! The SQL bastions of `[sql]` (feature `sql`): validated with the rest of
//! the file by `hexon check`, started next to the HTTP listeners by
//! `hexon serve`. Callers log in with a gateway token as the password
//! (`hexon token`), checked against `[jwt]`'s issuer and audience.

use hexon_core::config::{Config, ConfigError, ConfigErrors};

use super::GatewayError;

/// The `[sql]` section, validated (`None` when there is none).
///
/// # Errors
/// Every problem, located under `sql.`; or a build without the `sql`
/// feature asked to run one.
#[cfg(feature = "sql")]
pub fn section(config: &Config) -> Result<Option<hexon_sql::wire::SqlSection>, ConfigErrors> {
    let Some(mut table) = config.sql.clone() else {
        return Ok(None);
    };
    open_sealed(config, &mut table)?;
    hexon_sql::wire::SqlSection::from_table(table)
        .map(Some)
        .map_err(|errs| {
            ConfigErrors(
                errs.into_iter()
                    .map(|e| {
                        let at = if e.location.is_empty() {
                            "sql".to_owned()
                        } else {
                            format!("sql.{}", e.location)
                        };
                        ConfigError::new(at, e.message)
                    })
                    .collect(),
            )
        })
}

/// What an upstream password sealed at rest starts with.
pub const SEALED_PREFIX: &str = "sealed:";
/// What a sealed upstream password is bound to.
const SEAL_CONTEXT: &[u8] = b"hexon-sql:upstream_password";

/// Every role's `upstream_password` in the raw `[sql]` table: (database
/// index, role index, value).
fn upstream_passwords(table: &toml::Table) -> Vec<(usize, usize, &str)> {
    let Some(dbs) = table.get("databases").and_then(toml::Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (di, db) in dbs.iter().enumerate() {
        let Some(roles) = db.get("roles").and_then(toml::Value::as_array) else {
            continue;
        };
        for (ri, role) in roles.iter().enumerate() {
            if let Some(p) = role.get("upstream_password").and_then(toml::Value::as_str) {
                out.push((di, ri, p));
            }
        }
    }
    out
}

#[cfg(feature = "sql")]
/// Replace sealed upstream passwords (`sealed:…`, from `hexon sql
/// seal-password`) by their plaintext, opened with the gateway's secret keys
/// (never created here).
fn open_sealed(config: &Config, table: &mut toml::Table) -> Result<(), ConfigErrors> {
    use base64::Engine as _;
    let sealed: Vec<(usize, usize, String)> = upstream_passwords(table)
        .into_iter()
        .filter(|(_, _, p)| p.starts_with(SEALED_PREFIX))
        .map(|(di, ri, p)| (di, ri, p.to_owned()))
        .collect();
    if sealed.is_empty() {
        return Ok(());
    }
    let keys = super::state::load_secret_keys(config);
    let mut errs = Vec::new();
    for (di, ri, text) in sealed {
        let at = format!("sql.databases[{di}].roles[{ri}].upstream_password");
        let opened = keys
            .as_ref()
            .map_err(|e| format!("no key to open it ({e}); seal with the key this gateway uses"))
            .and_then(|k| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(text.trim_start_matches(SEALED_PREFIX))
                    .map_err(|_| "not a sealed value (base64 after \"sealed:\")".to_owned())?;
                let plain = k.open(&raw, SEAL_CONTEXT).map_err(|e| {
                    format!("cannot open it ({e}): sealed with another key? seal it again with `hexon sql seal-password`")
                })?;
                String::from_utf8(plain.expose().to_vec())
                    .map_err(|_| "the sealed password is not UTF-8".to_owned())
            });
        let slot = table
            .get_mut("databases")
            .and_then(|d| d.get_mut(di))
            .and_then(|d| d.get_mut("roles"))
            .and_then(|r| r.get_mut(ri))
            .and_then(|r| r.get_mut("upstream_password"));
        match (opened, slot) {
            (Ok(p), Some(v)) => *v = toml::Value::String(p),
            (Err(e), _) => errs.push(ConfigError::new(at, e)),
            (Ok(_), None) => {}
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// `hexon sql seal-password`: seal `password` with the gateway's secret key
/// (created in the data directory if `state.encryption_keys` is not set),
/// for a role's `upstream_password`.
///
/// # Errors
/// No usable key.
pub fn seal_password(config: &Config, password: &str) -> Result<String, GatewayError> {
    use base64::Engine as _;
    let keys = super::state::secret_keys(config)?;
    let sealed = keys
        .seal(password.as_bytes(), SEAL_CONTEXT)
        .map_err(|e| GatewayError::Other(format!("cannot seal: {e}")))?;
    Ok(format!(
        "{SEALED_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(sealed)
    ))
}

/// How many roles' `upstream_password` values are in plain text.
pub fn plain_passwords(config: &Config) -> usize {
    config.sql.as_ref().map_or(0, |t| {
        upstream_passwords(t)
            .iter()
            .filter(|(_, _, p)| !p.starts_with(SEALED_PREFIX))
            .count()
    })
}

/// One line for `hexon check`.
#[cfg(feature = "sql")]
pub fn summary(s: &hexon_sql::wire::SqlSection) -> String {
    let listen = |l: &Option<hexon_sql::wire::ListenerSection>| {
        l.as_ref()
            .map_or_else(|| "off".to_owned(), |l| l.listen.to_string())
    };
    format!(
        "sql: {} database(s); PostgreSQL bastion {}, MySQL bastion {}",
        s.acl.databases().count(),
        listen(&s.postgres),
        listen(&s.mysql)
    )
}

/// Without the `sql` feature, a `[sql]` section is an error that says so.
#[cfg(not(feature = "sql"))]
pub fn check_absent(config: &Config) -> Result<(), ConfigErrors> {
    if config.sql.is_some() {
        return Err(ConfigErrors(vec![ConfigError::new(
            "sql",
            "this build has no SQL bastion: build hexon-proxy with the `sql` feature (the hexon binary has it)",
        )]));
    }
    Ok(())
}

/// Running bastions; dropping them stops accepting (sessions already
/// running end with their clients).
#[derive(Debug, Default)]
pub struct SqlBastions {
    /// Where the PostgreSQL bastion listens.
    pub postgres: Option<std::net::SocketAddr>,
    /// Where the MySQL bastion listens.
    pub mysql: Option<std::net::SocketAddr>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl SqlBastions {
    /// Stop accepting connections.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

impl Drop for SqlBastions {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bind and start the bastions of `section`; tokens are verified with
/// `keys` (the gateway's published keys), and `check` (the gateway's "user
/// still enabled") runs at login and before every statement.
///
/// # Errors
/// A listener that cannot bind or TLS material that does not load: the
/// gateway does not start half-configured.
#[cfg(feature = "sql")]
pub async fn start(
    config: &Config,
    section: &hexon_sql::wire::SqlSection,
    keys: &hexon_core::keys::KeySet,
    check: hexon_sql::wire::IdentityCheck,
) -> Result<SqlBastions, GatewayError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (issuer, audience) = (config.jwt.issuer.as_str(), config.jwt.audience.as_str());
    let fail = |what: &str, e: hexon_sql::wire::BastionError| {
        GatewayError::Other(format!("sql.{what}: {e}"))
    };
    let mut out = SqlBastions::default();
    if let Some(l) = &section.postgres {
        let b = hexon_sql::pg::PgBastion::bind(
            &section.bastion_config(l, issuer, audience),
            section.acl.clone(),
            keys.clone(),
        )
        .await
        .map_err(|e| fail("postgres", e))?
        .with_identity_check(check.clone());
        out.postgres = b.local_addr().ok();
        tokio::spawn(b.serve(stopped()));
    }
    if let Some(l) = &section.mysql {
        let b = hexon_sql::mysql::MyBastion::bind(
            &section.bastion_config(l, issuer, audience),
            section.acl.clone(),
            keys.clone(),
        )
        .await
        .map_err(|e| fail("mysql", e))?
        .with_identity_check(check.clone());
        out.mysql = b.local_addr().ok();
        tokio::spawn(b.serve(stopped()));
    }
    out.stop = Some(tx);
    Ok(out)
}
