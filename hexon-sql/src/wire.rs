//! What the wire-protocol bastions (PostgreSQL and MySQL) share: their
//! configuration, the TLS acceptor, the accept loop, verification of the
//! gateway token presented as the password, and the query log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use hexon_core::jwt::JwtVerifier;
use hexon_core::rt::{ConnectionThreads, IdlePoll, ThreadOptions};
use hexon_core::{Identity, UnixTime};

use crate::acl::err;
use crate::request::{Refusal, SqlRequest, Stage};

/// A check run on the caller's identity at login and before every
/// statement (e.g. the gateway's "is this user still enabled"): an error
/// refuses the login, or the statement, with its reason.
pub type IdentityCheck = Arc<dyn Fn(&Identity) -> Result<(), &'static str> + Send + Sync + 'static>;

/// The refusal for an identity the check no longer accepts.
pub(crate) fn revoked(identity: &Identity, reason: &str) -> Refusal {
    Refusal::new(
        Stage::DatabaseAccess,
        "identity_revoked",
        format!(
            "user {:?} may no longer use the bastion ({reason}); the session's statements are refused",
            identity.username()
        ),
    )
}

/// Configuration of a wire-protocol bastion (the same for PostgreSQL and
/// MySQL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BastionConfig {
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
    /// Connections open at once (logged in or not); more are closed at
    /// accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Sessions one user may have open at once.
    #[serde(default = "default_max_per_user")]
    pub max_connections_per_user: usize,
    /// Threads that run the sessions, each a single-threaded runtime that
    /// serves many sessions: unset for one per CPU (at most
    /// 256), `0` to run them on the caller's runtime.
    #[serde(default)]
    pub session_threads: Option<usize>,
    /// Microseconds a session thread keeps polling its sockets after its
    /// last activity instead of sleeping (at most 1000; `0`: off). Unset:
    /// [`DEFAULT_IDLE_POLL_US`] when the process may use every CPU of the
    /// host ([`hexon_core::rt::uses_every_cpu`]: no CPU quota, no affinity
    /// mask) and runs session threads, off otherwise. Cuts the wake-up
    /// latency of statements at the cost of CPU; it polls only while the
    /// host's CPU pressure is low and while polling catches activity
    /// ([`hexon_core::rt::IdlePoll`]; docs/SQL.md, "Idle polling").
    #[serde(default)]
    pub idle_poll_us: Option<u64>,
    /// Pin session thread `i` to the `i`-th CPU the process may use, so
    /// that the kernel does not move it. Unset: pinned when the process
    /// may use every CPU of the host ([`hexon_core::rt::uses_every_cpu`]);
    /// `false` lets the kernel place the threads (docs/SQL.md, "Pinned
    /// session threads").
    #[serde(default)]
    pub pin_session_threads: Option<bool>,
}

/// The idle-polling window when `idle_poll_us` is unset and the host's
/// CPUs are all the process's: long enough to cover a database's answer on
/// the same host or a near one (docs/BENCHMARKS.md: 50 µs missed the
/// extended protocol's answers, 100 and 200 µs did not).
pub const DEFAULT_IDLE_POLL_US: u64 = 100;

fn default_cache() -> usize {
    10_000
}

pub(crate) fn default_max_connections() -> usize {
    1024
}

pub(crate) fn default_max_per_user() -> usize {
    64
}

/// The connection limits of one bastion.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    open: Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    per_user: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max_per_user: usize,
}

/// A connection slot; freed on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A user's session slot; freed on drop.
#[derive(Debug)]
pub(crate) struct UserSlot {
    map: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    user: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl ConnectionLimits {
    pub(crate) fn new(config: &BastionConfig) -> Self {
        Self {
            open: Arc::default(),
            max: config.max_connections,
            per_user: Arc::default(),
            max_per_user: config.max_connections_per_user,
        }
    }

    /// A slot for a new connection, if under the limit.
    pub(crate) fn connection(&self) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let mut n = self.open.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Slot(self.open.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// A session slot for `user`.
    ///
    /// # Errors
    /// A message for the client when the user has too many sessions.
    pub(crate) fn user(&self, user: &str) -> Result<UserSlot, String> {
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_owned()).or_insert(0);
        if *n >= self.max_per_user {
            return Err(format!(
                "too many sessions for user {user:?} (at most {}): close some first",
                self.max_per_user
            ));
        }
        *n += 1;
        Ok(UserSlot {
            map: self.per_user.clone(),
            user: user.to_owned(),
        })
    }
}

/// Why a bastion could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BastionError {
    /// The configuration is incomplete or inconsistent.
    #[error("SQL bastion configuration: {0}")]
    Config(String),
    /// The certificate or key could not be loaded.
    #[error("SQL bastion TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("SQL bastion listener: {0}")]
    Io(#[from] std::io::Error),
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, BastionError> {
    let tls = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        BastionError::Tls(format!("{what} {}: {e}", path.display()))
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
        .map_err(|e| BastionError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| BastionError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS acceptor `config` asks for (`None`: plaintext allowed and no
/// certificate configured).
///
/// # Errors
/// No TLS without `dangerous_allow_plaintext`, only one of certificate and
/// key, unreadable PEM.
pub(crate) fn tls_from(config: &BastionConfig) -> Result<Option<TlsAcceptor>, BastionError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Ok(Some(tls_acceptor(c, k)?)),
        (None, None) if config.dangerous_allow_plaintext => Ok(None),
        (None, None) => Err(BastionError::Config(
            "set tls_cert and tls_key (clients send their token as the password), or dangerous_allow_plaintext = true for tests".into(),
        )),
        _ => Err(BastionError::Config(
            "tls_cert and tls_key go together".into(),
        )),
    }
}

/// What every session of either bastion shares (each bastion adds its own
/// protocol's state beside it).
pub(crate) struct Common {
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) allow_plaintext: bool,
    pub(crate) verifier: JwtVerifier,
    pub(crate) acl: Arc<crate::acl::Acl>,
    pub(crate) pipeline: crate::layers::PipelineService,
    pub(crate) check: Option<IdentityCheck>,
    pub(crate) limits: ConnectionLimits,
    /// TLS to the real servers, by database.
    pub(crate) upstream_tls: std::collections::HashMap<Arc<str>, UpstreamTlsConfig>,
    /// Dedicated session threads (0: the caller's runtime).
    pub(crate) session_threads: usize,
    /// Idle polling of the session threads (0: off).
    pub(crate) idle_poll: Duration,
    /// Pin the session threads to CPUs.
    pub(crate) pin_session_threads: bool,
    /// Idle polling or pinning was left unset and is off because the
    /// process may not use every CPU of the host (said once at start).
    pub(crate) off_for_cpus: bool,
}

impl Common {
    /// Load the TLS material `config` and `acl` name, and prepare the
    /// pipeline; tokens are verified against `keys`.
    ///
    /// # Errors
    /// As [`tls_from`] and [`upstream_tls`].
    pub(crate) fn new(
        config: &BastionConfig,
        acl: Arc<crate::acl::Acl>,
        keys: hexon_core::KeySet,
    ) -> Result<Self, BastionError> {
        check_thread_options(
            config.idle_poll_us,
            config.pin_session_threads,
            config.session_threads,
        )
        .map_err(|(key, m)| BastionError::Config(format!("{key}: {m}")))?;
        let session_threads = config
            .session_threads
            .unwrap_or_else(default_session_threads)
            .min(MAX_SESSION_THREADS);
        // What the defaults of idle polling and pinning follow: the
        // process's own threads, on every CPU of the host.
        let whole_host = hexon_core::rt::host_defaults_apply(session_threads);
        Ok(Self {
            session_threads,
            idle_poll: Duration::from_micros(config.idle_poll_us.unwrap_or(if whole_host {
                DEFAULT_IDLE_POLL_US
            } else {
                0
            })),
            pin_session_threads: config.pin_session_threads.unwrap_or(whole_host),
            off_for_cpus: session_threads > 0
                && !whole_host
                && (config.idle_poll_us.is_none() || config.pin_session_threads.is_none()),
            tls: tls_from(config)?,
            allow_plaintext: config.dangerous_allow_plaintext,
            verifier: JwtVerifier::new(
                keys,
                config.token_issuer.clone(),
                config.token_audience.clone(),
            ),
            pipeline: crate::layers::Pipeline::build(acl.clone(), config.verdict_cache),
            check: None,
            limits: ConnectionLimits::new(config),
            upstream_tls: upstream_tls(&acl)?,
            acl,
        })
    }
}

/// Accept connections on `listener` until `shutdown` completes, each in its
/// own task running `handle`. Sessions already running go on until their
/// clients leave.
pub(crate) async fn serve<F, Fut>(
    listener: &TcpListener,
    protocol: &'static str,
    common: &Common,
    shutdown: impl std::future::Future<Output = ()>,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    // Each thread hands its batched query-log lines on when it runs out
    // of work (`QueryLog::batched`).
    let options = ThreadOptions {
        on_park: Some(Arc::new(crate::query_log::flush)),
        idle_poll: (!common.idle_poll.is_zero()).then(|| IdlePoll::new(common.idle_poll)),
        pin_cpus: common.pin_session_threads,
    };
    let threads = match ConnectionThreads::start_with(
        common.session_threads,
        &format!("hexon-{protocol}"),
        options,
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, protocol, "could not start the session threads; sessions run on the caller's runtime");
            ConnectionThreads::default()
        }
    };
    if !threads.is_empty() {
        tracing::info!(
            protocol,
            threads = threads.len(),
            idle_poll_us = common.idle_poll.as_micros(),
            pinned = common.pin_session_threads,
            "session threads started"
        );
    }
    if common.off_for_cpus {
        tracing::info!(
            protocol,
            "idle polling and pinning, where left unset, are off: this process may not use every CPU of the host (a CPU quota or affinity mask); set idle_poll_us and pin_session_threads to have them anyway"
        );
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let Some(slot) = common.limits.connection() else {
                        tracing::warn!(%peer, protocol, "SQL connection refused: max_connections reached");
                        drop(tcp);
                        continue;
                    };
                    tracing::debug!(%peer, protocol, "SQL client connected");
                    let _ = tcp.set_nodelay(true);
                    place(&threads, &handle, tcp, slot);
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

/// Sessions run on connection threads ([`ConnectionThreads`]: each its own
/// single-threaded runtime). A SQL session is long-lived and strictly
/// request/response, so it gains nothing from work stealing, while a
/// multi-threaded runtime's wake-ups across threads cost CPU on every
/// statement; one thread serves many sessions from one `epoll` loop, as
/// pgbouncer does. The default is one thread per CPU: with a single thread,
/// every session waits whenever the kernel preempts it (on a host shared
/// with the database that is about every other statement), while two
/// threads on two CPUs served 8–12 % more statements per second under
/// `pgbench` (docs/BENCHMARKS.md, "2026-12-05: one session thread per CPU").
fn default_session_threads() -> usize {
    ConnectionThreads::per_cpu()
}

/// Run `handle` on `tcp` on the least busy session thread (on the caller's
/// runtime when there are none), holding `slot` until it ends.
fn place<F, Fut>(threads: &ConnectionThreads, handle: &Arc<F>, tcp: TcpStream, slot: Slot)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = handle.clone();
    let Some(p) = threads.place_near(&tcp) else {
        tokio::spawn(async move {
            handle(tcp).await;
            drop(slot);
        });
        return;
    };
    // The socket moves to the thread's own reactor.
    match tcp.into_std() {
        Ok(std) => {
            p.spawn(async move {
                match TcpStream::from_std(std) {
                    Ok(tcp) => handle(tcp).await,
                    Err(e) => tracing::warn!(error = %e, "could not register a SQL connection"),
                }
                drop(slot);
            });
        }
        Err(e) => tracing::warn!(error = %e, "could not move a SQL connection to a session thread"),
    }
}

/// Verify the token the client sent as its password, and that it belongs to
/// the user the client logged in as.
///
/// # Errors
/// A message for the client saying why (never the token).
pub(crate) fn verify_token(
    verifier: &JwtVerifier,
    token: &str,
    login_user: &str,
    now: UnixTime,
) -> Result<Identity, String> {
    let verified = verifier.verify(token.trim(), now).map_err(|e| {
        format!("password authentication failed: the password must be a valid gateway token ({e})")
    })?;
    let identity = verified.identity;
    if identity.username() != login_user {
        return Err(format!(
            "password authentication failed: the token is for user {:?}, not {login_user:?}",
            identity.username()
        ));
    }
    Ok(identity)
}

/// The normalised text of a refused statement, when it got as far as being
/// parsed (never the raw text: it may carry secrets in literals).
pub(crate) fn refused_statement(acl: &crate::acl::Acl, req: &SqlRequest, r: &Refusal) -> Arc<str> {
    match r.stage {
        Stage::Validation | Stage::RateLimit | Stage::Parse => "".into(),
        _ => req
            .analysis(&crate::layers::limits(acl))
            .map(|a| Arc::from(a.normalized.as_str()))
            .unwrap_or_else(|_| "".into()),
    }
}

/// Who a query-log event is about.
pub(crate) struct LogSubject<'a> {
    pub(crate) identity: &'a Identity,
    pub(crate) database: &'a str,
    pub(crate) role: &'a str,
}

/// Log a refused statement (target `hexon_sql::query`).
pub(crate) fn log_refused(who: &LogSubject<'_>, r: &Refusal, statement: &str) {
    tracing::info!(
        target: crate::query_log::TARGET,
        user = who.identity.username(),
        database = who.database,
        role = who.role,
        statement,
        verdict = "refused",
        stage = r.stage.as_str(),
        code = r.code,
        duration_us = 0u64,
        rows = 0u64,
        "statement refused: {}",
        r.reason
    );
}

/// How an admitted statement ended, for the query log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Results relayed.
    Done,
    /// The server reported an error.
    Failed,
    /// The row cap cut the result.
    RowCap,
}

impl Outcome {
    /// How an execution ended, from its flags: the row cap first.
    pub(crate) fn of(over_cap: bool, failed: bool) -> Self {
        if over_cap {
            Outcome::RowCap
        } else if failed {
            Outcome::Failed
        } else {
            Outcome::Done
        }
    }
}

/// When a statement started, for the query log's `duration_us`; `None`
/// when the query log is off, so that no statement reads the clock for a
/// log nobody reads (nor is logged: [`Finished::push`]).
pub(crate) fn log_start() -> Option<Instant> {
    tracing::enabled!(target: crate::query_log::TARGET, tracing::Level::INFO).then(Instant::now)
}

/// Admitted statements whose results went out, waiting to be logged.
///
/// A session logs them once it has written its answer to the client
/// ([`Finished::log`]), not while it relays the answer: formatting a line
/// costs about as much as relaying the statement, and at one client that
/// was time added to every round trip. A refusal logs what is waiting
/// first, so lines keep the statements' order.
#[derive(Debug, Default)]
pub(crate) struct Finished(Vec<Done>);

#[derive(Debug)]
struct Done {
    role: Arc<str>,
    statement: Arc<str>,
    duration_us: u64,
    rows: u64,
    outcome: Outcome,
}

impl Finished {
    /// An admitted statement started at `start` ([`log_start`]) is done:
    /// its duration ends now. A statement that started while the query log
    /// was off (`start` is `None`) is not logged.
    pub(crate) fn push(
        &mut self,
        role: &Arc<str>,
        statement: &Arc<str>,
        start: Option<Instant>,
        rows: u64,
        outcome: Outcome,
    ) {
        let Some(start) = start else { return };
        let duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.0.push(Done {
            role: role.clone(),
            statement: statement.clone(),
            duration_us,
            rows,
            outcome,
        });
    }

    /// Log what is waiting, for `identity` on `database`.
    #[inline]
    pub(crate) fn log(&mut self, identity: &Identity, database: &str) {
        // Called each time a session has written: mostly nothing to do.
        if !self.0.is_empty() {
            self.log_all(identity, database);
        }
    }

    fn log_all(&mut self, identity: &Identity, database: &str) {
        for d in self.0.drain(..) {
            log_admitted(
                &LogSubject {
                    identity,
                    database,
                    role: &d.role,
                },
                &d.statement,
                d.duration_us,
                d.rows,
                d.outcome,
            );
        }
    }
}

/// Log an admitted statement whose results were relayed.
fn log_admitted(
    who: &LogSubject<'_>,
    statement: &str,
    duration_us: u64,
    rows: u64,
    outcome: Outcome,
) {
    tracing::info!(
        target: crate::query_log::TARGET,
        user = who.identity.username(),
        database = who.database,
        role = who.role,
        statement,
        verdict = "admitted",
        stage = "",
        code = match outcome {
            Outcome::Done => "",
            Outcome::Failed => "error",
            Outcome::RowCap => "row_cap",
        },
        duration_us,
        rows,
        "statement"
    );
}

/// One bastion listener of the gateway's `[sql]` section (`[sql.postgres]`,
/// `[sql.mysql]`). Tokens are checked against the gateway's `[jwt]` issuer
/// and audience, so `hexon token` mints the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Accept logins without TLS (tests and loopback only).
    #[serde(default)]
    pub dangerous_allow_plaintext: bool,
    /// Connections open at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Sessions one user may have open at once.
    #[serde(default = "default_max_per_user")]
    pub max_connections_per_user: usize,
    /// Threads that run the sessions; unset for one per CPU, `0` for the
    /// gateway's own runtime.
    #[serde(default)]
    pub session_threads: Option<usize>,
    /// Microseconds a session thread polls after activity before it
    /// sleeps (at most 1000; `0`: off; unset: [`DEFAULT_IDLE_POLL_US`]
    /// where the process has the host's every CPU). See
    /// [`BastionConfig::idle_poll_us`].
    #[serde(default)]
    pub idle_poll_us: Option<u64>,
    /// Pin session threads to CPUs (unset: where the process has the
    /// host's every CPU). See [`BastionConfig::pin_session_threads`].
    #[serde(default)]
    pub pin_session_threads: Option<bool>,
}

/// The gateway's `[sql]` section: the ACL (`[sql.validation]`,
/// `[[sql.databases]]`), the bastion listeners and the verdict cache size.
#[derive(Debug, Clone)]
pub struct SqlSection {
    /// The compiled ACL.
    pub acl: Arc<crate::acl::Acl>,
    /// The PostgreSQL bastion, if any.
    pub postgres: Option<ListenerSection>,
    /// The MySQL bastion, if any.
    pub mysql: Option<ListenerSection>,
    /// Entries of each bastion's verdict cache.
    pub verdict_cache: usize,
}

fn listener(
    table: &mut toml::Table,
    key: &str,
    errs: &mut Vec<crate::acl::AclError>,
) -> Option<ListenerSection> {
    let value = table.remove(key)?;
    let section: ListenerSection = serde_path_to_error::deserialize(value)
        .map_err(|e| errs.push(crate::acl::located(key, e)))
        .ok()?;
    if section
        .session_threads
        .is_some_and(|n| n > MAX_SESSION_THREADS)
    {
        errs.push(crate::acl::err(
            &format!("{key}.session_threads"),
            &format!("at most {MAX_SESSION_THREADS}; one thread serves many sessions (leave it unset for one per CPU)"),
        ));
        return None;
    }
    if let Err((option, m)) = check_thread_options(
        section.idle_poll_us,
        section.pin_session_threads,
        section.session_threads,
    ) {
        errs.push(crate::acl::err(&format!("{key}.{option}"), &m));
        return None;
    }
    Some(section)
}

/// Most session threads a listener may ask for.
const MAX_SESSION_THREADS: usize = hexon_core::rt::MAX_THREADS;

/// Longest idle-polling window, in microseconds.
const MAX_IDLE_POLL_US: u64 = 1000;

/// `idle_poll_us` within its bound; idle polling and pinning only with
/// session threads to poll and pin (`session_threads = 0` runs sessions on
/// the embedding program's runtime). The error names the option at fault.
fn check_thread_options(
    idle_poll_us: Option<u64>,
    pin_session_threads: Option<bool>,
    session_threads: Option<usize>,
) -> Result<(), (&'static str, String)> {
    const NEEDS_THREADS: &str = "needs session threads, and session_threads = 0 runs sessions on the caller's own runtime: unset one of them";
    if pin_session_threads == Some(true) && session_threads == Some(0) {
        return Err(("pin_session_threads", NEEDS_THREADS.into()));
    }
    let Some(idle_poll_us) = idle_poll_us else {
        return Ok(());
    };
    if idle_poll_us > MAX_IDLE_POLL_US {
        return Err((
            "idle_poll_us",
            format!(
                "{idle_poll_us} is over the limit: at most {MAX_IDLE_POLL_US}; a thread polls that long after each statement (100-200 covers a database's answer; 0 turns polling off)"
            ),
        ));
    }
    if idle_poll_us > 0 && session_threads == Some(0) {
        return Err(("idle_poll_us", NEEDS_THREADS.into()));
    }
    Ok(())
}

impl SqlSection {
    /// Validate the `[sql]` table of hexon.toml. Locations are relative to
    /// it (`databases[0].roles[1].name`, `postgres.listen`).
    ///
    /// # Errors
    /// Every problem found: the ACL's, the listeners', databases whose
    /// dialect has no listener or that name no upstream server, and a
    /// section without any listener.
    pub fn from_table(mut table: toml::Table) -> Result<Self, Vec<crate::acl::AclError>> {
        let mut errs = Vec::new();
        let postgres = listener(&mut table, "postgres", &mut errs);
        let mysql = listener(&mut table, "mysql", &mut errs);
        let verdict_cache = match table.remove("verdict_cache") {
            None => default_cache(),
            Some(v) => match v.as_integer().map(usize::try_from) {
                Some(Ok(n)) => n,
                _ => {
                    errs.push(err("verdict_cache", "must be a non-negative integer"));
                    0
                }
            },
        };
        let config: Option<crate::acl::AclConfig> =
            serde_path_to_error::deserialize(toml::Value::Table(table))
                .map_err(|e| errs.push(crate::acl::located("", e)))
                .ok();
        let acl = config.and_then(|c| {
            if postgres.is_none() && mysql.is_none() {
                errs.push(err(
                    "",
                    "no bastion listener: add [sql.postgres] and/or [sql.mysql] with listen = \"host:port\"",
                ));
            }
            for (i, db) in c.databases.iter().enumerate() {
                let served = match db.dialect {
                    crate::Dialect::Postgres => postgres.is_some(),
                    crate::Dialect::Mysql => mysql.is_some(),
                };
                if !served {
                    errs.push(err(
                        &format!("databases[{i}].dialect"),
                        &format!(
                            "no [sql.{}] listener serves this database",
                            db.dialect.as_str()
                        ),
                    ));
                }
                if db.upstream.is_none() {
                    errs.push(err(
                        &format!("databases[{i}].upstream"),
                        "missing: the bastion needs the real server's host:port",
                    ));
                }
            }
            crate::acl::Acl::new(&c).map_err(|mut e| errs.append(&mut e)).ok()
        });
        match acl {
            Some(acl) if errs.is_empty() => Ok(Self {
                acl: Arc::new(acl),
                postgres,
                mysql,
                verdict_cache,
            }),
            _ => Err(errs),
        }
    }

    /// The bastion configuration for `listener`, accepting tokens of
    /// `issuer` for `audience`.
    pub fn bastion_config(
        &self,
        listener: &ListenerSection,
        issuer: &str,
        audience: &str,
    ) -> BastionConfig {
        BastionConfig {
            listen: listener.listen,
            tls_cert: listener.tls_cert.clone(),
            tls_key: listener.tls_key.clone(),
            dangerous_allow_plaintext: listener.dangerous_allow_plaintext,
            token_issuer: issuer.to_owned(),
            token_audience: audience.to_owned(),
            verdict_cache: self.verdict_cache,
            max_connections: listener.max_connections,
            max_connections_per_user: listener.max_connections_per_user,
            session_threads: listener.session_threads,
            idle_poll_us: listener.idle_poll_us,
            pin_session_threads: listener.pin_session_threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<SqlSection, Vec<String>> {
        let t: toml::Table = text.parse().unwrap_or_default();
        SqlSection::from_table(t).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn an_idle_poll_window_over_the_limit_is_refused() {
        let acl = Arc::new(crate::acl::Acl::from_toml("").unwrap_or_else(|e| panic!("{e:?}")));
        let config = |us: u64| -> BastionConfig {
            toml::from_str(&format!(
                "listen = \"127.0.0.1:0\"\ndangerous_allow_plaintext = true\ntoken_issuer = \"i\"\ntoken_audience = \"a\"\nidle_poll_us = {us}"
            ))
            .unwrap()
        };
        let keys = hexon_core::KeySet::new;
        match Common::new(&config(1001), acl.clone(), keys()) {
            Err(BastionError::Config(m)) => {
                assert!(m.contains("idle_poll_us: 1001 is over the limit"), "{m}");
            }
            other => panic!("{:?}", other.err()),
        }
        let ok = Common::new(&config(1000), acl.clone(), keys()).map_err(|e| e.to_string());
        assert_eq!(ok.map(|c| c.idle_poll), Ok(Duration::from_micros(1000)));
        let mut own_runtime = config(100);
        own_runtime.session_threads = Some(0);
        match Common::new(&own_runtime, acl, keys()) {
            Err(BastionError::Config(m)) => assert!(m.contains("needs session threads"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn idle_polling_is_on_by_default_only_with_every_cpu_and_session_threads() {
        let acl = Arc::new(crate::acl::Acl::from_toml("").unwrap_or_else(|e| panic!("{e:?}")));
        let common = |extra: &str| {
            let config: BastionConfig = toml::from_str(&format!(
                "listen = \"127.0.0.1:0\"\ndangerous_allow_plaintext = true\ntoken_issuer = \"i\"\ntoken_audience = \"a\"\n{extra}"
            ))
            .unwrap();
            Common::new(&config, acl.clone(), hexon_core::KeySet::new())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let unset = common("");
        let expected = if hexon_core::rt::uses_every_cpu() {
            Duration::from_micros(DEFAULT_IDLE_POLL_US)
        } else {
            Duration::ZERO
        };
        assert_eq!(unset.idle_poll, expected);
        assert_eq!(unset.off_for_cpus, !hexon_core::rt::uses_every_cpu());
        let off = common("idle_poll_us = 0");
        assert_eq!(off.idle_poll, Duration::ZERO);
        // Sessions on the caller's runtime: nothing to poll, and no error
        // for a setting the user did not make.
        assert_eq!(common("session_threads = 0").idle_poll, Duration::ZERO);
        assert_eq!(
            common("idle_poll_us = 250").idle_poll,
            Duration::from_micros(250)
        );
        // Pinning follows the same rule.
        assert_eq!(unset.pin_session_threads, hexon_core::rt::uses_every_cpu());
        let pinned = common("pin_session_threads = true\nidle_poll_us = 0");
        assert!(pinned.pin_session_threads && !pinned.off_for_cpus);
        assert!(!common("pin_session_threads = false").pin_session_threads);
        assert!(!common("session_threads = 0").pin_session_threads);
    }

    #[test]
    fn connection_limits_count_and_free() {
        let config: BastionConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            token_issuer = "i"
            token_audience = "a"
            max_connections = 2
            max_connections_per_user = 1
            "#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let l = ConnectionLimits::new(&config);
        let a = l.connection();
        let b = l.connection();
        assert!(a.is_some() && b.is_some());
        assert!(l.connection().is_none());
        drop(a);
        assert!(l.connection().is_some());
        let u = l.user("ana").unwrap_or_else(|e| panic!("{e}"));
        assert!(l.user("ana").is_err());
        assert!(l.user("bob").is_ok());
        drop(u);
        assert!(l.user("ana").is_ok());
    }

    #[test]
    fn a_valid_section() {
        let s = section(
            r#"
            verdict_cache = 50
            [postgres]
            listen = "127.0.0.1:6432"
            dangerous_allow_plaintext = true
            [[databases]]
            name = "app"
            dialect = "postgres"
            upstream = "127.0.0.1:5432"
            [[databases.roles]]
            name = "r"
            groups = ["g"]
            read_only = true
            "#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(s.verdict_cache, 50);
        assert!(s.mysql.is_none());
        let b = s.bastion_config(s.postgres.as_ref().unwrap_or_else(|| panic!()), "i", "a");
        assert_eq!((b.token_issuer.as_str(), b.verdict_cache), ("i", 50));
        assert!(s.acl.database("app").is_some());
    }

    #[test]
    fn errors_are_located() {
        let e = section(
            r#"
            verdict_cache = -1
            [postgres]
            listen = "nowhere"
            [[databases]]
            name = "shop"
            dialect = "mysql"
            [[databases.roles]]
            name = "r"
            groups = ["g"]
            "#,
        )
        .err()
        .unwrap_or_default();
        let joined = e.join("\n");
        for want in [
            "postgres.listen:",
            "verdict_cache: must be a non-negative integer",
            "databases[0].dialect: no [sql.mysql] listener",
            "databases[0].upstream: missing",
        ] {
            assert!(joined.contains(want), "{want}\n{joined}");
        }
        let e = section("[[databases]]\nname = 1").err().unwrap_or_default();
        assert!(
            e.iter().any(|m| m.starts_with("databases[0].name:")),
            "{e:?}"
        );
        let e = section("").err().unwrap_or_default();
        assert!(e.iter().any(|m| m.contains("no bastion listener")), "{e:?}");
        let e = section("[postgres]\nlisten = \"127.0.0.1:1\"\nsession_threads = 100000")
            .err()
            .unwrap_or_default();
        assert!(
            e.iter().any(|m| m.starts_with("postgres.session_threads")),
            "{e:?}"
        );
        for (extra, at, says) in [
            ("idle_poll_us = 5000", "idle_poll_us", "at most 1000"),
            (
                "idle_poll_us = 100\nsession_threads = 0",
                "idle_poll_us",
                "needs session threads",
            ),
            (
                "pin_session_threads = true\nsession_threads = 0",
                "pin_session_threads",
                "needs session threads",
            ),
        ] {
            let e = section(&format!("[mysql]\nlisten = \"127.0.0.1:1\"\n{extra}"))
                .err()
                .unwrap_or_default();
            assert!(
                e.iter()
                    .any(|m| m.starts_with(&format!("mysql.{at}")) && m.contains(says)),
                "{extra}: {e:?}"
            );
        }
        // Turning either off on the caller's runtime is fine.
        assert!(section(
            "[mysql]\nlisten = \"127.0.0.1:1\"\nsession_threads = 0\npin_session_threads = false\nidle_poll_us = 0"
        )
        .err()
        .unwrap_or_default()
        .iter()
        .all(|m| !m.contains("needs session threads")));
        let e = section("[mysql]\nlisten = \"127.0.0.1:1\"\nbogus = 1")
            .err()
            .unwrap_or_default();
        assert!(e.iter().any(|m| m.starts_with("mysql")), "{e:?}");
    }

    #[tokio::test]
    async fn sessions_go_to_the_least_busy_thread_and_threads_end_with_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config: BastionConfig = toml::from_str(&format!(
            "listen = \"{addr}\"\ntoken_issuer = \"i\"\ntoken_audience = \"a\"\nmax_connections = 8"
        ))
        .unwrap();
        let limits = ConnectionLimits::new(&config);
        // A session: say which thread it runs on, then echo until EOF.
        let handle = Arc::new(|mut tcp: TcpStream| async move {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = tcp.write_all(format!("{name}\n").as_bytes()).await;
            let mut b = [0u8; 64];
            while matches!(tcp.read(&mut b).await, Ok(n) if n > 0) {}
        });
        let threads = ConnectionThreads::start(2, "hexon-test").unwrap();
        let mut clients = Vec::new();
        let mut names = Vec::new();
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            place(&threads, &handle, tcp, limits.connection().unwrap());
            let mut line = vec![0u8; 64];
            let n = c.read(&mut line).await.unwrap();
            names.push(String::from_utf8_lossy(&line[..n]).trim().to_owned());
            clients.push(c);
        }
        names.sort();
        assert_eq!(names, ["hexon-test-0", "hexon-test-0", "hexon-test-1"]);
        let mut live = threads.live();
        live.sort_unstable();
        assert_eq!(live, [1, 2]);
        assert_eq!(limits.open.load(std::sync::atomic::Ordering::Acquire), 3);
        // Clients leave: the sessions end and their slots are freed.
        drop(threads);
        drop(clients);
        while limits.open.load(std::sync::atomic::Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // No threads: the session runs on the caller's runtime.
        let none = ConnectionThreads::default();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        place(&none, &handle, tcp, limits.connection().unwrap());
        let mut line = vec![0u8; 64];
        let n = c.read(&mut line).await.unwrap();
        assert!(!String::from_utf8_lossy(&line[..n]).starts_with("hexon-test"));
    }
}

/// The connection to the real server: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum UpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for UpStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to speak TLS to one database's server.
#[derive(Clone)]
pub(crate) struct UpstreamTlsConfig {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConfig")
            .field("name", &self.name)
            .finish()
    }
}

impl UpstreamTlsConfig {
    /// Run the TLS handshake over `tcp`.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> std::io::Result<UpStream> {
        let tls = self.connector.connect(self.name.clone(), tcp).await?;
        Ok(UpStream::Tls(Box::new(tls)))
    }
}

/// `upstream_tls = "require"`: encrypt, accept any certificate (but still
/// check that the handshake is signed by the key in it).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS configuration of every database that asks for TLS upstream.
///
/// # Errors
/// An unreadable CA file or an invalid server name, naming the database.
pub(crate) fn upstream_tls(
    acl: &crate::acl::Acl,
) -> Result<std::collections::HashMap<Arc<str>, UpstreamTlsConfig>, BastionError> {
    use crate::acl::UpstreamTls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut out = std::collections::HashMap::new();
    for db in acl.databases() {
        if db.upstream_tls == UpstreamTls::Disable {
            continue;
        }
        let fail = |m: String| BastionError::Tls(format!("database {:?}: {m}", db.name));
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?;
        let config = match (&db.upstream_tls, &db.upstream_ca) {
            (UpstreamTls::Verify, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| fail(format!("upstream_ca {}: {e}", ca.display())))?;
                for c in certs {
                    let c = c.map_err(|e| fail(format!("upstream_ca {}: {e}", ca.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| fail(format!("upstream_ca {}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(fail(format!(
                        "upstream_ca {}: no certificate in the file",
                        ca.display()
                    )));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (UpstreamTls::Verify, None) => {
                return Err(fail("upstream_tls = \"verify\" needs upstream_ca".into()));
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
                .with_no_client_auth(),
        };
        let host = match (&db.upstream_tls_name, &db.upstream) {
            (Some(n), _) => n.clone(),
            (None, Some(u)) => u
                .rsplit_once(':')
                .map_or(u.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            (None, None) => continue,
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| fail(format!("server name {host:?}: {e}")))?;
        out.insert(
            db.name.clone(),
            UpstreamTlsConfig {
                connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
                name,
            },
        );
    }
    Ok(out)
}
