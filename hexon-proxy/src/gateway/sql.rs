//! The SQL bastions of `[sql]` (feature `sql`): validated with the rest of
//! the file by `hexon check`, started next to the HTTP listeners by
//! `hexon serve`. Callers log in with a gateway token as the password
//! (`hexon token`), checked against `[jwt]`'s issuer and audience.

use hexon_core::config::{Config, ConfigError, ConfigErrors};

#[cfg(feature = "sql")]
use super::GatewayError;

/// The `[sql]` section, validated (`None` when there is none).
///
/// # Errors
/// Every problem, located under `sql.`; or a build without the `sql`
/// feature asked to run one.
#[cfg(feature = "sql")]
pub fn section(config: &Config) -> Result<Option<hexon_sql::wire::SqlSection>, ConfigErrors> {
    let Some(table) = config.sql.clone() else {
        return Ok(None);
    };
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
