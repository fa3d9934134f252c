//! The reference gateway assembled from `hexon.toml`: what `bins/hexon`
//! runs. The binary only parses its command line; everything it does is
//! here, testable as a library.

pub mod admin;
pub mod admin_api;
pub mod assemble;
pub mod audit;
pub mod authority;
pub mod ca;
pub mod credentials;
pub mod echo;
mod express;
pub mod keys;
pub mod login;
pub mod metrics;
pub mod routes;
pub mod sql;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use assemble::{Gateway, Running};

use hexon_core::UnixTime;
use hexon_core::config::{Config, ConfigErrors};
use hexon_core::jwt::{IssueParams, JwtIssuer};
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

/// Serve plain HTTP/1.1 and HTTP/2 (h2c) with a tower `svc` on `listener`
/// until the task is dropped: the admin listener and the echo backend. The
/// gateway's own listeners use [`crate::listener`] (TLS, PROXY protocol,
/// smuggling checks, graceful shutdown).
pub(crate) async fn serve_plain<S, B>(listener: tokio::net::TcpListener, svc: S)
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<crate::body::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::body::BoxError>,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). The SQL
/// bastion's query log (target `hexon_sql::query`) is written as JSON lines
/// by its own layer (`hexon_sql::query_log`, feature `sql`), which costs a small part of
/// what the text formatter costs per statement, batched per thread: a
/// session thread hands its lines to the query log's writer thread when it
/// runs out of work, and [`run`]'s runtime does the same for sessions kept
/// on it (and waits for the writer before it returns).
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    #[cfg(feature = "sql")]
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(hexon_sql::query_log::without(text))
        .with(hexon_sql::query_log::QueryLog::new(std::io::stderr).batched())
        .try_init();
    #[cfg(not(feature = "sql"))]
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .try_init();
}

/// Run an async command on a multi-threaded runtime.
pub fn run<F, T>(fut: F) -> Result<T, GatewayError>
where
    F: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // SQL sessions run here when `session_threads = 0`: their batched
    // query-log lines go out as a worker goes idle.
    #[cfg(feature = "sql")]
    builder.on_thread_park(hexon_sql::query_log::flush);
    let rt = builder
        .build()
        .map_err(|e| GatewayError::Other(format!("cannot start the runtime: {e}")))?;
    let out = rt.block_on(fut);
    // The workers hand their last query-log lines over as they stop; then
    // the writer thread writes them. (Session threads of sessions still
    // running keep theirs.)
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    #[cfg(feature = "sql")]
    hexon_sql::query_log::drain();
    out
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
    #[cfg(feature = "sql")]
    let sql = sql::section(&config)?;
    #[cfg(not(feature = "sql"))]
    sql::check_absent(&config)?;
    let ca = ca::section(&config)?;
    let acme = assemble::acme_summaries(&config)?;
    out(&format!(
        "{}: OK ({} listener(s), {} route(s), {} user(s), {} group(s))",
        path.display(),
        config.listeners.len(),
        config.routes.len(),
        config.users.len(),
        config.groups.len()
    ));
    #[cfg(feature = "sql")]
    if let Some(s) = &sql {
        out(&sql::summary(s));
        let plain = sql::plain_passwords(&config);
        if plain > 0 {
            out(&format!(
                "note: {plain} upstream_password value(s) in plain text; store them sealed: `hexon sql seal-password -c {}` (reads the password on stdin)",
                path.display()
            ));
        }
    }
    if let Some(ca) = &ca {
        out(&ca.summary());
    }
    for line in &acme {
        out(line);
    }
    let values = config.non_default_values();
    if !values.is_empty() {
        out("# non-default values");
        for v in values {
            out(&v);
        }
    }
    Ok(())
}

/// `hexon sql seal-password`: read a database password on stdin, print it
/// sealed for a role's `upstream_password`.
pub fn seal_sql_password(path: &Path) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    let password = password_on_stdin(
        64 * 1024,
        "printf '%s' \"$PASSWORD\" | hexon sql seal-password -c hexon.toml",
    )?;
    out(&sql::seal_password(&config, &password)?);
    Ok(())
}

/// A password read on stdin (at most `limit` bytes, one trailing line end
/// dropped); `usage` says how to pass one when there is none.
fn password_on_stdin(limit: u64, usage: &str) -> Result<zeroize::Zeroizing<String>, GatewayError> {
    use std::io::Read as _;
    let mut password = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .take(limit)
        .read_to_string(&mut password)
        .map_err(|e| GatewayError::Other(format!("cannot read the password on stdin: {e}")))?;
    let trimmed = zeroize::Zeroizing::new(password.trim_end_matches(['\r', '\n']).to_owned());
    if trimmed.is_empty() {
        return Err(GatewayError::Other(format!(
            "no password on stdin: {usage}"
        )));
    }
    Ok(trimmed)
}

/// `hexon hash-password`: read a password on stdin and print its argon2id
/// hash (PHC string) for `[[user]] password_hash`, with the cost of
/// `[login.password]` when `path` is given (else the defaults).
#[cfg(feature = "idp")]
pub fn hash_password(path: Option<&Path>) -> Result<(), GatewayError> {
    let cost = match path {
        Some(p) => Config::load(p)?
            .login
            .map(|l| l.password)
            .unwrap_or_default(),
        None => hexon_core::config::PasswordHashConfig::default(),
    };
    let password = password_on_stdin(4 * 1024, "printf '%s' \"$PASSWORD\" | hexon hash-password")?;
    let argon2 = hexon_idp::password::argon2(&cost).map_err(GatewayError::Other)?;
    out(&hexon_idp::password::hash_now(&argon2, &password).map_err(GatewayError::Other)?);
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
pub async fn mint_token(
    config: &Config,
    key: Arc<dyn Signer>,
    user: &str,
) -> Result<String, GatewayError> {
    let directory = config
        .directory()
        .map_err(|e| GatewayError::Other(format!("local directory: {e}")))?;
    if directory.user(user).is_some_and(|u| u.is_disabled()) {
        return Err(GatewayError::Other(format!(
            "user {user:?} is disabled (disabled = true in [[user]]); the gateway would refuse its token"
        )));
    }
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

/// `hexon keys rotate`: write a new signing key (the configured algorithm)
/// to `out_path` and print the two configuration steps that rotate to it
/// without a moment where a backend cannot verify.
pub fn rotate_key(path: &Path, out_path: &Path, key_id: Option<&str>) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    let current = keys::load_or_create(&config)?;
    let current_file = config
        .signing
        .key_file
        .clone()
        .unwrap_or_else(|| keys::default_key_path(&config).display().to_string());
    let kid = key_id.map_or_else(|| keys::next_key_id(current.key_id()), str::to_owned);
    if !hexon_core::config::is_valid_key_id(&kid) {
        return Err(GatewayError::Other(format!(
            "invalid key id {kid:?}: use 1-64 of A-Z, a-z, 0-9, '.', '_', '-'"
        )));
    }
    let taken = kid == current.key_id() || config.signing.publish.iter().any(|p| p.key_id == kid);
    if taken {
        return Err(GatewayError::Other(format!(
            "key id {kid:?} is already in use; choose another with --key-id"
        )));
    }
    let alg = config.signing.algorithm;
    let pem = keys::generate_pem(alg, &kid)?;
    keys::write_private(out_path, &pem)?;
    // The printed configuration must not depend on where the gateway runs.
    let new_file = std::fs::canonicalize(out_path).unwrap_or_else(|_| out_path.to_owned());
    let new_file = new_file.display();
    let old_kid = current.key_id();
    let lifetime = config
        .signing
        .lifetime
        .get()
        .as_secs()
        .max(config.jwt.lifetime.get().as_secs());
    out(&format!(
        "wrote {new_file} ({}, key id {kid}).\n\n\
         Step 1 - publish it: add to {path} and restart (or roll) every node:\n\n\
         [[signing.publish]]\n\
         key_file = \"{new_file}\"\n\
         key_id = \"{kid}\"\n\n\
         Backends now see both keys in /.well-known/jwks.json. Wait until every backend has\n\
         refreshed its copy of the JWKS (its cache time).\n\n\
         Step 2 - sign with it: in [signing] set\n\n\
         key_file = \"{new_file}\"\n\
         key_id = \"{kid}\"\n\n\
         and change the [[signing.publish]] entry to the previous key, so its signatures and\n\
         tokens stay valid until they expire:\n\n\
         [[signing.publish]]\n\
         key_file = \"{current_file}\"\n\
         key_id = \"{old_kid}\"\n\n\
         Restart (or roll) every node. After {lifetime} s (the longer of signing.lifetime and\n\
         jwt.lifetime) nothing signed with {old_kid} is valid any more: remove that entry.",
        alg.http_sig_name(),
        path = path.display(),
    ));
    Ok(())
}

/// `hexon keys jwks`: the public JWKS of the configured and published keys.
pub fn print_jwks(path: &Path) -> Result<(), GatewayError> {
    let config = Config::load(path)?;
    let key = keys::load_or_create(&config)?;
    let set = keys::verification_keys(&config, &key)?;
    let jwks = serde_json::to_string_pretty(&set.to_jwks(UnixTime::now()))
        .map_err(|e| GatewayError::Other(e.to_string()))?;
    out(&jwks);
    Ok(())
}

/// `hexon keys secret`: a new key for `state.encryption_keys`.
pub fn print_secret_key() -> Result<(), GatewayError> {
    out(&hexon_core::store::SecretKeys::generate_base64());
    Ok(())
}

/// `hexon keys rewrap`: re-seal secrets sealed by older keys with the
/// primary key (after a rotation of `state.encryption_keys`).
pub async fn rewrap_secrets(path: PathBuf) -> Result<(), GatewayError> {
    let config = Config::load(&path)?;
    let n = state::rewrap(&config).await?;
    out(&format!(
        "re-sealed {n} secret(s) with the first of state.encryption_keys; keys after it can be removed once every node runs with this list"
    ));
    Ok(())
}

/// `hexon routes list`: the routes kept in the durable store, each with
/// whether it fits the file (what `serve` would say at start).
pub async fn list_store_routes(path: PathBuf) -> Result<(), GatewayError> {
    let config = Config::load(&path)?;
    let state = state::open(&config).await?;
    let records = state
        .durable
        .routes()
        .await
        .map_err(|e| GatewayError::Other(format!("reading the routes in the store: {e}")))?;
    if records.is_empty() {
        out("no routes in the durable store");
        return Ok(());
    }
    let mut parsed = Vec::new();
    for r in &records {
        match routes::parse_record(r) {
            Ok(route) => {
                out(&format!(
                    "{}\t{}{}\tversion {}",
                    r.name, route.spec.host, route.spec.path, r.version
                ));
                parsed.push(route);
            }
            Err(e) => out(&format!("{}\tINVALID: {e}", r.name)),
        }
    }
    if parsed.len() == records.len() {
        let fits = config
            .with_routes(parsed)
            .map_err(GatewayError::from)
            .and_then(|merged| assemble::routing_table(&merged).map(drop));
        match fits {
            Ok(()) => out(&format!("{}: the store's routes fit it", path.display())),
            Err(e) => out(&format!(
                "{}: the store's routes do not fit it:\n{e}",
                path.display()
            )),
        }
    }
    Ok(())
}

/// `hexon routes delete NAME`: remove a route from the durable store (the
/// repair when the store's routes keep the gateway from starting); running
/// nodes drop it at once.
pub async fn delete_store_route(path: PathBuf, name: &str) -> Result<(), GatewayError> {
    use hexon_core::store::NewAuditEvent;
    let config = Config::load(&path)?;
    let state = state::open(&config).await?;
    let deleted = state
        .durable
        .delete_route(name)
        .await
        .map_err(|e| GatewayError::Other(format!("deleting route {name:?}: {e}")))?;
    if !deleted {
        return Err(GatewayError::Other(format!(
            "no route {name:?} in the durable store (`hexon routes list -c {}`)",
            path.display()
        )));
    }
    let audit = NewAuditEvent {
        at: UnixTime::now(),
        kind: "route.deleted".into(),
        actor: Some("hexon routes delete".into()),
        subject: Some(name.to_owned()),
        outcome: "success".into(),
        detail: serde_json::json!({}),
    };
    if let Err(e) = state.durable.append_audit(&audit).await {
        tracing::warn!(error = %e, "could not write the audit event");
    }
    if let Err(e) = state
        .events
        .publish(&hexon_core::store::Event::RouteChanged {
            name: name.to_owned(),
        })
        .await
    {
        tracing::warn!(error = %e, "running nodes were not told; they drop the route within a minute");
    }
    out(&format!("deleted route {name:?} from the durable store"));
    Ok(())
}

/// `hexon migrate`: bring the durable store's schema up to date (or list
/// what would run).
pub async fn migrate(path: PathBuf, dry_run: bool) -> Result<(), GatewayError> {
    let config = Config::load(&path)?;
    let o = state::migrate(&config, dry_run).await?;
    if o.applied.is_empty() {
        out(&format!(
            "{}: schema is up to date (version {})",
            o.backend, o.to
        ));
        return Ok(());
    }
    let verb = if dry_run { "would apply" } else { "applied" };
    for (version, description) in &o.applied {
        out(&format!("{}: {verb} {version} {description}", o.backend));
    }
    out(&format!(
        "{}: schema version {} -> {}",
        o.backend, o.from, o.to
    ));
    Ok(())
}

/// `hexon serve`: run until SIGINT/SIGTERM, reloading the file when it changes.
pub async fn serve(path: PathBuf) -> Result<(), GatewayError> {
    let config = Config::load(&path)?;
    #[cfg(feature = "sql")]
    let sql_section = sql::section(&config)?;
    #[cfg(not(feature = "sql"))]
    sql::check_absent(&config)?;
    let gateway = Arc::new(Gateway::build(config).await?);
    let running = gateway.start().await?;
    #[cfg(feature = "sql")]
    let mut bastions = match &sql_section {
        Some(s) => {
            sql::start(
                gateway.config(),
                s,
                gateway.keys(),
                Arc::new(gateway.enabled_check()),
            )
            .await?
        }
        None => sql::SqlBastions::default(),
    };
    #[cfg(not(feature = "sql"))]
    let mut bastions = sql::SqlBastions::default();
    tracing::info!(listeners = ?running.listeners, admin = ?running.admin, sql_postgres = ?bastions.postgres, sql_mysql = ?bastions.mysql, config = %path.display(), "hexon is serving");
    let watcher = tokio::spawn(assemble::watch_config(
        path,
        gateway.clone(),
        |name| std::env::var(name).ok(),
        Duration::from_secs(2),
    ));
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        {
            if let Some(h) = hup.as_mut() {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = h.recv() => {
                        tracing::info!("SIGHUP: reloading TLS certificates");
                        running.reload_certificates();
                        continue;
                    }
                }
            }
        }
        (&mut stop).await;
        break;
    }
    tracing::info!("shutting down: finishing in-flight requests");
    bastions.stop();
    watcher.abort();
    running.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The configuration `hexon quickstart` runs (with `${HEXON_*}` filled in).
pub const QUICKSTART_CONFIG: &str = include_str!("quickstart.toml");

/// A quickstart gateway, running: what [`quickstart`] prints, for tests.
#[derive(Debug)]
pub struct Quickstart {
    /// The running gateway.
    pub running: Running,
    /// The gateway's address.
    pub gateway: std::net::SocketAddr,
    /// The echo backend's address.
    pub backend: std::net::SocketAddr,
    /// A token for alice (in `engineering`, allowed).
    pub alice: String,
    /// A token for bob (not in `engineering`, denied).
    pub bob: String,
    backend_task: tokio::task::JoinHandle<()>,
}

impl Quickstart {
    /// Stop the gateway and the backend.
    pub async fn shutdown(self) {
        self.backend_task.abort();
        self.running.shutdown(Duration::from_secs(5)).await;
    }
}

/// Start the quickstart: the echo backend and the gateway in front of it,
/// state kept in `data_dir`. `port` 0 picks a free port.
pub async fn start_quickstart(
    port: u16,
    data_dir: &Path,
    audit: &str,
) -> Result<Quickstart, GatewayError> {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| GatewayError::Other(format!("echo backend: {e}")))?;
    let backend_addr = backend
        .local_addr()
        .map_err(|e| GatewayError::Other(e.to_string()))?;
    let data = data_dir.display().to_string();
    let env = move |name: &str| match name {
        "HEXON_PORT" => Some(port.to_string()),
        "HEXON_ECHO_PORT" => Some(backend_addr.port().to_string()),
        "HEXON_ADMIN_PORT" => Some("0".into()),
        "HEXON_DATA_DIR" => Some(data.clone()),
        _ => None,
    };
    let mut config = Config::parse(QUICKSTART_CONFIG, &env)?;
    config.gateway.audit = audit.to_owned();
    let gateway = Gateway::build(config).await?;
    let running = gateway.start().await?;
    let gw = running
        .listeners
        .first()
        .copied()
        .ok_or_else(|| GatewayError::Other("quickstart has no listener".into()))?;
    let authorities = [
        format!("127.0.0.1:{}", gw.port()),
        format!("localhost:{}", gw.port()),
    ];
    let verifier = Arc::new(hexon_core::httpsig::Verifier::new(
        gateway.keys().clone(),
        authorities,
    ));
    let backend_task = tokio::spawn(echo::serve(backend, verifier));
    let alice = mint_token(gateway.config(), gateway.key().clone(), "alice").await?;
    let bob = mint_token(gateway.config(), gateway.key().clone(), "bob").await?;
    Ok(Quickstart {
        running,
        gateway: gw,
        backend: backend_addr,
        alice,
        bob,
        backend_task,
    })
}

/// `hexon quickstart`.
pub async fn quickstart(port: u16) -> Result<(), GatewayError> {
    let data_dir = std::env::temp_dir().join("hexon-quickstart");
    let qs = start_quickstart(port, &data_dir, "stdout").await?;
    let g = qs.gateway;
    let admin = qs.running.admin.map(|a| a.to_string()).unwrap_or_default();
    out(&format!(
        r#"
Hexon quickstart — an identity-aware gateway in front of a backend that verifies who called.

  gateway   http://{g}          (audit log: one JSON line per request below)
  backend   http://{backend}    (echo: verifies the signed identity, shows it)
  admin     http://{admin}/metrics
  keys      {data}   (the gateway's signing key; JWKS at http://{g}/.well-known/jwks.json)

Users: alice (group platform, nested in engineering), bob (no group).
Route "whoami" (/*) allows engineering; route "public-hello" (/public/*) is public.

  ALICE={alice}
  BOB={bob}

  curl -s http://{g}/public/hello                                    # public: no credential needed, no identity sent
  curl -s -i http://{g}/whoami                                       # 401: no credential
  curl -s -H "Authorization: Bearer $ALICE" http://{g}/whoami        # 200: alice's identity, verified by the backend
  curl -s -i -H "Authorization: Bearer $BOB" http://{g}/whoami       # 403: bob is not in engineering
  curl -s -i -H "Authorization: Bearer $ALICE" -H "Hexon-User: root" http://{g}/whoami   # spoofed header: stripped

In a browser (single sign-on through the login host; the account page has TOTP and passkeys):

  http://app.localhost:{port}/        sign in as alice / alice-quickstart (bob / bob-quickstart gets a 403)
  http://auth.localhost:{port}/account

Ctrl-C stops it.
"#,
        port = g.port(),
        backend = qs.backend,
        data = data_dir.display(),
        alice = qs.alice,
        bob = qs.bob,
    ));
    shutdown_signal().await;
    qs.shutdown().await;
    Ok(())
}
