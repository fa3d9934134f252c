//! A PostgreSQL bastion from an ACL file, for trying the bastion locally and
//! for `scripts/bench-sql`.
//!
//! ```text
//! cargo run --release -p hexon-sql --features postgres --example pg_bastion -- \
//!     ACL.toml 127.0.0.1:6434 USER GROUP[,GROUP…] TOKEN_FILE
//! ```
//!
//! It makes a signing key for this run only, writes a one-hour token for
//! USER (in the GROUPs) to TOKEN_FILE (mode 0600), and serves until
//! interrupted (`QUERY_LOG=1`: with the query log on stderr, as `hexon
//! serve` writes it). It listens **without TLS** (`dangerous_allow_plaintext`), so
//! it is for loopback experiments and benchmarks only; a deployment
//! configures `tls_cert` / `tls_key` and verifies tokens minted by the
//! gateway.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hexon_core::jwt::{IssueParams, JwtIssuer};
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
use hexon_sql::Acl;
use hexon_sql::pg::PgBastion;
use hexon_sql::wire::BastionConfig;

/// The allocator of the `hexon` binary, which runs the bastion in
/// deployments (bins/hexon/Cargo.toml says why), so that `scripts/bench-sql`
/// measures what runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ISSUER: &str = "hexon-sql-example";
const AUDIENCE: &str = "hexon-sql";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [acl_file, listen, user, groups, token_file] = args.as_slice() else {
        return Err(
            "usage: pg_bastion ACL.toml LISTEN_ADDR USER GROUP[,GROUP...] TOKEN_FILE".into(),
        );
    };
    let acl = Acl::from_toml(&std::fs::read_to_string(acl_file)?).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let signer = Arc::new(Ed25519Signer::generate("example")?);
    let mut keys = KeySet::new();
    keys.insert("example", signer.public_key(), None)?;

    let identity = Identity::builder(user.as_str(), user.as_str())
        .groups(groups.split(',').filter(|g| !g.is_empty()))
        .build()?;
    let params = IssueParams::new(ISSUER, AUDIENCE, Duration::from_secs(3600));
    let token = JwtIssuer::new(signer)
        .issue(&identity, &params, UnixTime::now())
        .await?;
    let mut f = std::fs::OpenOptions::new();
    f.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
    f.open(token_file)?.write_all(token.as_bytes())?;

    // `QUERY_LOG=1` writes the log to stderr as `hexon serve` does by
    // default: the `info` level, the query log as JSON lines (one per
    // statement) batched per session thread. `QUERY_LOG=each` writes each
    // line as it comes; `QUERY_LOG=text` sends the query log through the
    // text formatter, as `hexon serve` did before. Without it nothing is
    // logged.
    match std::env::var("QUERY_LOG").as_deref() {
        Err(_) | Ok("" | "0") => {}
        Ok(how) => {
            use tracing_subscriber::prelude::*;
            let text = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false);
            let registry =
                tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new("info"));
            if how == "text" {
                let _ = registry.with(text).try_init();
            } else {
                let json = hexon_sql::query_log::QueryLog::new(std::io::stderr);
                let json = if how == "each" { json } else { json.batched() };
                let _ = registry
                    .with(hexon_sql::query_log::without(text))
                    .with(json)
                    .try_init();
            }
        }
    }
    // `SESSION_THREADS=N` sets `session_threads` and `IDLE_POLL_US=N`
    // `idle_poll_us` (benchmarks compare settings).
    let mut settings = String::new();
    for (var, key) in [
        ("SESSION_THREADS", "session_threads"),
        ("IDLE_POLL_US", "idle_poll_us"),
        ("PIN_SESSION_THREADS", "pin_session_threads"),
    ] {
        if let Ok(n) = std::env::var(var) {
            settings.push_str(&format!("{key} = {n}\n"));
        }
    }
    let config: BastionConfig = toml::from_str(&format!(
        "listen = {listen:?}\ndangerous_allow_plaintext = true\ntoken_issuer = {ISSUER:?}\ntoken_audience = {AUDIENCE:?}\n{settings}"
    ))?;
    let bastion = PgBastion::bind(&config, Arc::new(acl), keys).await?;
    println!(
        "hexon-sql bastion on {} (plaintext: local use only); token for {user} in {token_file}",
        bastion.local_addr()?
    );
    bastion
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    hexon_sql::query_log::drain();
    Ok(())
}
