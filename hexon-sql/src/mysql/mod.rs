//! The MySQL / MariaDB wire-protocol bastion.
//!
//! MySQL clients (`mysql`, `mariadb`, drivers) connect to the bastion as if
//! it were the server. They log in with their gateway user name and a
//! short-lived gateway token (as minted by `hexon token`) as the password,
//! sent with the `mysql_clear_password` plugin over TLS (`mariadb --ssl`,
//! `mysql --ssl-mode=REQUIRED --enable-cleartext-plugin`), and must name a
//! database. The bastion verifies the token, picks the caller's role on that
//! database from the [`Acl`], logs in to the real server as the role's
//! database account, and relays the session: every statement (`COM_QUERY`,
//! `COM_STMT_PREPARE`, and `COM_INIT_DB` as `USE`) passes the [`Pipeline`](crate::Pipeline)
//! first, and what the server receives is the pipeline's canonical text,
//! never the client's bytes.
//!
//! ```no_run
//! # async fn run(acl: std::sync::Arc<hexon_sql::Acl>, keys: hexon_core::KeySet) -> Result<(), hexon_sql::wire::BastionError> {
//! use hexon_sql::mysql::MyBastion;
//! use hexon_sql::wire::BastionConfig;
//! let config: BastionConfig = toml::from_str(r#"
//!     listen = "127.0.0.1:3307"
//!     tls_cert = "/etc/hexon/sql.crt"
//!     tls_key = "/etc/hexon/sql.key"
//!     token_issuer = "https://hexon.example"
//!     token_audience = "hexon"
//! "#).map_err(|e| hexon_sql::wire::BastionError::Config(e.to_string()))?;
//! let bastion = MyBastion::bind(&config, acl, keys).await?;
//! bastion.serve(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! What the relay enforces beyond the pipeline:
//! - capabilities: `CLIENT_LOCAL_FILES`, `CLIENT_MULTI_STATEMENTS`,
//!   `CLIENT_IGNORE_SPACE`, compression and session tracking are never
//!   passed to the server; every session is `utf8mb4` whatever the client
//!   asked; the server session's `sql_mode` is stripped of the modes that
//!   change how strings and identifiers are quoted (`ANSI_QUOTES`,
//!   `NO_BACKSLASH_ESCAPES`, and the compound modes), and read-only roles get
//!   `SET SESSION TRANSACTION READ ONLY` on the server too;
//! - commands: `COM_CHANGE_USER` closes the session, `COM_SET_OPTION` may
//!   only turn multi-statements off, `COM_FIELD_LIST`, replication, process
//!   and shutdown commands are refused; `COM_STMT_EXECUTE`, `COM_STMT_FETCH`,
//!   `COM_STMT_SEND_LONG_DATA` and `COM_STMT_RESET` must name a statement
//!   prepared (and admitted) through the bastion; after
//!   `COM_RESET_CONNECTION` the settings above are pinned again;
//! - `USE db` / `COM_INIT_DB` switch only to a database on the same server,
//!   account and read-only setting (the rules of the new database apply from
//!   then on); otherwise the client is told to connect to it directly;
//! - every result is capped at the statement's row cap: past it, rows are
//!   dropped and the result ends with error 1104 (SQLSTATE `54000`). Rows
//!   fetched from a cursor (`COM_STMT_FETCH`) are counted cumulatively.
//!
//! Each statement is logged like the PostgreSQL bastion's (target
//! `hexon_sql::query`). Tokens and upstream passwords are never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use tokio::net::TcpListener;

use hexon_core::KeySet;

use crate::acl::Acl;
use crate::wire::{self, BastionConfig, BastionError};

mod auth;
mod frame;
pub(crate) mod relay;
mod session;

/// What every session shares.
pub(crate) struct Shared {
    common: wire::Common,
    /// Connection ids shown in greetings.
    next_id: AtomicU32,
}

impl std::ops::Deref for Shared {
    type Target = wire::Common;
    fn deref(&self) -> &wire::Common {
        &self.common
    }
}

/// A bound MySQL bastion; [`serve`](Self::serve) runs it.
pub struct MyBastion {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MyBastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MyBastion")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

impl MyBastion {
    /// Bind the listener, load the TLS certificate, and prepare the
    /// pipeline for `acl`. Tokens are verified against `keys`, the
    /// configured issuer and audience.
    ///
    /// # Errors
    /// No TLS configured without `dangerous_allow_plaintext`, only one of
    /// certificate and key, unreadable PEM, or a listener that cannot bind.
    pub async fn bind(
        config: &BastionConfig,
        acl: Arc<Acl>,
        keys: KeySet,
    ) -> Result<Self, BastionError> {
        let common = wire::Common::new(config, acl, keys)?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                common,
                next_id: AtomicU32::new(1),
            }),
        })
    }

    /// Run `check` on the caller's identity at login and before every
    /// statement; the gateway passes its "user still enabled" check, so
    /// disabling a user refuses their logins and stops their open sessions.
    #[must_use]
    pub fn with_identity_check(mut self, check: wire::IdentityCheck) -> Self {
        // Only `serve` shares the state; before it, this is the only handle.
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.common.check = Some(check);
        }
        self
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
        let shared = self.shared;
        let for_sessions = shared.clone();
        wire::serve(
            &self.listener,
            "mysql",
            &shared.common,
            shutdown,
            move |tcp| session::handle(tcp, for_sessions.clone()),
        )
        .await;
    }
}

/// For the fuzz targets only (not a stable API): parse `data` as a client's
/// handshake response, then run a relay session in which client commands
/// and server answers both come from `data` (each command forwarded to the
/// server is answered by the packets that follow it). Never panics.
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) {
    use bytes::BytesMut;
    let _ = auth::parse_hello(data);
    let mut relay = match (crate::fuzzing::my_session(), crate::fuzzing::pipeline()) {
        (Some(info), Some(pipeline)) => relay::Relay::new(info, pipeline),
        _ => return,
    };
    let mut input = BytesMut::from(data);
    let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
    'commands: while let Ok(Some(command)) = frame::take(&mut input, frame::MAX_PAYLOAD) {
        match relay.on_command(command, &mut up, &mut cl) {
            relay::Step::Close => break,
            relay::Step::Forward => loop {
                match frame::take(&mut input, frame::MAX_PAYLOAD) {
                    Ok(Some(p)) => match relay.on_upstream(&p, &mut cl) {
                        relay::Upstream::More => {}
                        relay::Upstream::Close => break 'commands,
                        _ => break,
                    },
                    _ => break 'commands,
                }
            },
            _ => {}
        }
        up.clear();
        cl.clear();
    }
}
