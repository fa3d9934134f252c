//! The PostgreSQL wire-protocol bastion.
//!
//! PostgreSQL clients (`psql`, `pgbench`, drivers) connect to the bastion as
//! if it were the server. They log in with their gateway user name and a
//! short-lived gateway token (a JWT, as minted by `hexon token`) as the
//! password, over TLS. The bastion verifies the token, picks the caller's
//! role on the database from the [`Acl`], logs in to the real server as that
//! role's database user, and from then on relays the session: every
//! statement (simple `Query`, or `Parse` of the extended protocol) passes the
//! [`Pipeline`](crate::Pipeline) first, and what the server receives is the
//! pipeline's canonical text, never the client's bytes. Results are relayed
//! frame by frame, and capped at the statement's row cap.
//!
//! ```no_run
//! # async fn run(acl: std::sync::Arc<hexon_sql::Acl>, keys: hexon_core::KeySet) -> Result<(), hexon_sql::wire::BastionError> {
//! use hexon_sql::pg::PgBastion;
//! use hexon_sql::wire::BastionConfig;
//! let config: BastionConfig = toml::from_str(r#"
//!     listen = "127.0.0.1:6432"
//!     tls_cert = "/etc/hexon/pg.crt"
//!     tls_key = "/etc/hexon/pg.key"
//!     token_issuer = "https://hexon.example"
//!     token_audience = "hexon"
//! "#).map_err(|e| hexon_sql::wire::BastionError::Config(e.to_string()))?;
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
//! normalised text —, `verdict`, `stage`, `code`, `duration_us`, `rows`);
//! [`crate::query_log`] writes them as JSON lines. Tokens and upstream
//! passwords are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

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
    cancels: Arc<session::CancelMap>,
}

impl std::ops::Deref for Shared {
    type Target = wire::Common;
    fn deref(&self) -> &wire::Common {
        &self.common
    }
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

impl PgBastion {
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
                cancels: Arc::default(),
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
            "postgres",
            &shared.common,
            shutdown,
            move |tcp| session::handle(tcp, for_sessions.clone()),
        )
        .await;
    }
}

/// For the fuzz targets only (not a stable API): run the startup-packet
/// parsers on `data`, then a relay session whose client sends the first
/// part of `data` and whose server answers with the rest. Never panics.
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) {
    use bytes::BytesMut;
    let mut b = BytesMut::from(data);
    if let Ok(Some(n)) = frame::startup_len(&b) {
        if b.len() >= n {
            if let Ok(session::First::Startup(s)) = session::classify(b.split_to(n)) {
                let _ = session::check_parameters(&s);
            }
        }
    }
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = rest.len() * usize::from(split) / 255;
    let (client, server) = rest.split_at(at);
    let mut relay = match (crate::fuzzing::pg_session(), crate::fuzzing::pipeline()) {
        (Some(info), Some(pipeline)) => relay::Relay::new(info, pipeline),
        _ => return,
    };
    let (mut cin, mut sin) = (BytesMut::from(client), BytesMut::from(server));
    let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
    while let Ok(Some(f)) = frame::take_typed(&mut cin, 1 << 20) {
        if relay.on_client(&f, &mut up, &mut cl) == relay::Flow::Close {
            break;
        }
    }
    while let Ok(Some(f)) = frame::take_typed(&mut sin, 1 << 20) {
        relay.on_upstream(&f, &mut cl);
    }
}
