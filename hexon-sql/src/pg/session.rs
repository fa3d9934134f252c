//! One client connection: startup (TLS, cancel, authentication, upstream
//! login), then the relay loop.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::response::{GssEncResponse, SslResponse};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey, Startup};
use pgwire::messages::{
    DecodeContext, PgWireFrontendMessage, ProtocolVersion, SslNegotiationMetaMessage,
};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use hexon_core::UnixTime;

use super::Shared;
use super::auth::{self, LoginError, UpstreamLogin};
use super::frame::{self, FrameError, Severity};
use super::relay::{Flow, Relay, SessionInfo};
use crate::dialect::Dialect;

/// Time a client has from connecting to being logged in.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest password message (a token) accepted.
const MAX_PASSWORD_MESSAGE: usize = 64 * 1024;
/// Stop reading from one side while this much is waiting to be written to
/// the other.
const HIGH_WATER: usize = 256 * 1024;
/// Read granularity.
const READ_CHUNK: usize = 32 * 1024;

/// Startup parameters passed on to the upstream when the client sets them.
const PASSED_SETTINGS: &[&str] = &[
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
];

/// Where the real server's cancel key is, by the bastion's process id.
#[derive(Debug, Default)]
pub(crate) struct CancelMap(Mutex<HashMap<i32, CancelEntry>>);

#[derive(Debug, Clone)]
struct CancelEntry {
    secret: i32,
    upstream: String,
    tls: Option<crate::wire::UpstreamTlsConfig>,
    pid: i32,
    upstream_secret: i32,
}

/// Removes a session's cancel key when the session ends.
pub(crate) struct CancelGuard {
    map: Arc<CancelMap>,
    pid: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.pid);
    }
}

fn random_i32() -> i32 {
    let mut b = [0u8; 4];
    if OsRng.try_fill_bytes(&mut b).is_err() {
        // No OS randomness: a key nobody can guess is impossible; use one
        // that matches nothing useful (the entry is still unique by pid).
        tracing::error!("no OS randomness for a cancel key");
    }
    i32::from_be_bytes(b)
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, CancelEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register the upstream key; returns the bastion's (pid, secret).
    fn register(
        self: &Arc<Self>,
        upstream: &str,
        tls: Option<crate::wire::UpstreamTlsConfig>,
        pid: i32,
        upstream_secret: i32,
    ) -> (CancelGuard, i32, i32) {
        let secret = random_i32();
        let mut map = self.lock();
        let mut our = random_i32() & i32::MAX;
        while our == 0 || map.contains_key(&our) {
            our = random_i32() & i32::MAX;
        }
        map.insert(
            our,
            CancelEntry {
                secret,
                upstream: upstream.to_owned(),
                tls,
                pid,
                upstream_secret,
            },
        );
        (
            CancelGuard {
                map: self.clone(),
                pid: our,
            },
            our,
            secret,
        )
    }

    fn lookup(&self, pid: i32, secret: i32) -> Option<CancelEntry> {
        let map = self.lock();
        let e = map.get(&pid)?;
        // Integers: the comparison is a single instruction.
        (e.secret == secret).then(|| e.clone())
    }
}

/// Read one untyped startup-phase packet.
async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<BytesMut> {
    loop {
        match frame::startup_len(buf) {
            Ok(Some(n)) if buf.len() >= n => return Ok(buf.split_to(n)),
            Ok(_) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(1024);
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

pub(crate) enum First {
    Ssl,
    Gss,
    Cancel(i32, i32),
    Startup(Startup),
}

pub(crate) fn classify(packet: BytesMut) -> Result<First, FrameError> {
    let bad = || FrameError::Malformed('?');
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    let mut b = packet.clone();
    match PgWireFrontendMessage::decode(&mut b, &ctx) {
        Ok(Some(PgWireFrontendMessage::SslNegotiation(
            SslNegotiationMetaMessage::PostgresSsl(_),
        ))) => return Ok(First::Ssl),
        Ok(Some(PgWireFrontendMessage::SslNegotiation(
            SslNegotiationMetaMessage::PostgresGss(_),
        ))) => return Ok(First::Gss),
        Ok(Some(PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None))) => {}
        _ => return Err(bad()),
    }
    ctx.awaiting_frontend_ssl = false;
    let mut b = packet;
    match PgWireFrontendMessage::decode(&mut b, &ctx) {
        Ok(Some(PgWireFrontendMessage::CancelRequest(c))) => {
            let secret = c.secret_key.as_i32().ok_or_else(bad)?;
            Ok(First::Cancel(c.pid, secret))
        }
        Ok(Some(PgWireFrontendMessage::Startup(s))) => Ok(First::Startup(s)),
        _ => Err(bad()),
    }
}

/// Serve one accepted connection.
pub(crate) async fn handle(mut tcp: TcpStream, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let mut ssl_asked = false;
    let mut gss_asked = false;
    let first = tokio::time::timeout(STARTUP_TIMEOUT, async {
        loop {
            let packet = read_packet(&mut tcp, &mut buf).await?;
            match classify(packet) {
                Ok(First::Gss) if !gss_asked => {
                    gss_asked = true;
                    let mut out = BytesMut::new();
                    frame::put(&mut out, &GssEncResponse::Refuse);
                    tcp.write_all(&out).await?;
                }
                Ok(First::Ssl) if !ssl_asked => {
                    ssl_asked = true;
                    if shared.tls.is_none() {
                        let mut out = BytesMut::new();
                        frame::put(&mut out, &SslResponse::Refuse);
                        tcp.write_all(&out).await?;
                    } else {
                        return Ok(Some(First::Ssl));
                    }
                }
                Ok(f @ (First::Cancel(..) | First::Startup(_))) => return Ok(Some(f)),
                Ok(_) | Err(_) => return Ok::<_, std::io::Error>(None),
            }
        }
    })
    .await;
    let first = match first {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            let mut out = BytesMut::new();
            frame::error(
                &mut out,
                Severity::Fatal,
                "08P01",
                "invalid startup packet",
                None,
            );
            let _ = tcp.write_all(&out).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "startup failed");
            if e.kind() == std::io::ErrorKind::InvalidData {
                let mut out = BytesMut::new();
                frame::error(
                    &mut out,
                    Severity::Fatal,
                    "08P01",
                    &format!("invalid startup packet: {e}"),
                    None,
                );
                let _ = tcp.write_all(&out).await;
            }
            return;
        }
        Err(_) => return,
    };
    match first {
        First::Ssl => {
            // Bytes sent after SSLRequest and before the handshake would be
            // read as if they came over TLS: refuse (CVE-2021-23214).
            if !buf.is_empty() {
                return;
            }
            let Some(acceptor) = shared.tls.clone() else {
                return;
            };
            let mut out = BytesMut::new();
            frame::put(&mut out, &SslResponse::Accept);
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            let tls = match tokio::time::timeout(STARTUP_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            startup(tls, BytesMut::new(), None, true, shared).await;
        }
        First::Cancel(pid, secret) => cancel(&shared, pid, secret).await,
        First::Startup(s) => startup(tcp, buf, Some(s), false, shared).await,
        First::Gss => {}
    }
}

async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    let Some(e) = shared.cancels.lookup(pid, secret) else {
        tracing::debug!("cancel request with an unknown key ignored");
        return;
    };
    let mut out = BytesMut::new();
    frame::put(
        &mut out,
        &CancelRequest::new(e.pid, SecretKey::I32(e.upstream_secret)),
    );
    let sent = async {
        let tcp = TcpStream::connect(&e.upstream).await?;
        let mut s = auth::connect_tls(tcp, e.tls.as_ref())
            .await
            .map_err(|e| std::io::Error::other(e.message))?;
        s.write_all(&out).await?;
        // The server closes the connection when done.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok::<_, std::io::Error>(())
    };
    if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(10), sent).await {
        tracing::warn!(error = %err, "could not forward a cancel request");
    }
}

async fn fatal<S: AsyncWrite + Unpin>(s: &mut S, e: &LoginError) {
    let mut out = BytesMut::new();
    frame::error(&mut out, Severity::Fatal, e.sqlstate, &e.message, None);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// What the startup packet asks for, once checked.
pub(crate) struct StartupParams {
    user: String,
    database: String,
    /// Settings passed on to the upstream.
    settings: Vec<(String, String)>,
}

/// Check the startup parameters.
pub(crate) fn check_parameters(s: &Startup) -> Result<StartupParams, LoginError> {
    if s.protocol_number_minor != 0 {
        return Err(LoginError::new(
            "0A000",
            format!(
                "protocol 3.{} is not supported by the bastion; use 3.0",
                s.protocol_number_minor
            ),
        ));
    }
    let mut user = None;
    let mut database = None;
    let mut settings = Vec::new();
    for (k, v) in &s.parameters {
        match k.to_ascii_lowercase().as_str() {
            "user" => user = Some(v.clone()),
            "database" => database = Some(v.clone()),
            "application_name" => {}
            "replication" => {
                return Err(LoginError::new(
                    "0A000",
                    "replication connections are not supported by the bastion",
                ));
            }
            "options" => {
                return Err(LoginError::new(
                    "0A000",
                    "the startup parameter \"options\" is refused by the bastion: settings must go through the ACL (unset PGOPTIONS)",
                ));
            }
            "client_encoding" => {
                let e = v.to_ascii_lowercase().replace(['-', '_'], "");
                if !matches!(e.as_str(), "utf8" | "unicode" | "auto") {
                    return Err(LoginError::new(
                        "0A000",
                        format!("client_encoding {v:?} is not supported by the bastion: use UTF8"),
                    ));
                }
            }
            other if PASSED_SETTINGS.contains(&other) => {
                settings.push((other.to_owned(), v.clone()))
            }
            other => {
                return Err(LoginError::new(
                    "0A000",
                    format!("the startup parameter {other:?} is refused by the bastion"),
                ));
            }
        }
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or_else(|| LoginError::new("28000", "no user name in the startup packet"))?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(StartupParams {
        user,
        database,
        settings,
    })
}

async fn startup<S>(
    mut client: S,
    mut buf: BytesMut,
    first: Option<Startup>,
    tls: bool,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let login = tokio::time::timeout(
        STARTUP_TIMEOUT,
        login(&mut client, &mut buf, first, tls, &shared),
    )
    .await;
    let (relay, upstream, info, _guard) = match login {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::info!(sqlstate = e.sqlstate, reason = %e.message, "PostgreSQL login refused");
            fatal(&mut client, &e).await;
            return;
        }
        Err(_) => {
            fatal(&mut client, &LoginError::new("08006", "login timed out")).await;
            return;
        }
    };
    tracing::debug!(
        user = info.0,
        database = info.1,
        "PostgreSQL session started"
    );
    if let Err(e) = relay_loop(client, buf, upstream, relay).await {
        tracing::debug!(error = %e, "PostgreSQL session ended with an error");
    }
}

type LoggedIn = (
    Relay,
    auth::Upstream,
    (String, String),
    (Option<CancelGuard>, crate::wire::UserSlot),
);

async fn login<S>(
    client: &mut S,
    buf: &mut BytesMut,
    first: Option<Startup>,
    tls: bool,
    shared: &Shared,
) -> Result<Option<LoggedIn>, LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let io = |e: std::io::Error| LoginError::new("08006", format!("connection failure: {e}"));
    let startup = match first {
        Some(s) => s,
        None => {
            let packet = read_packet(client, buf).await.map_err(io)?;
            match classify(packet) {
                Ok(First::Startup(s)) => s,
                Ok(First::Cancel(pid, secret)) => {
                    cancel(shared, pid, secret).await;
                    return Ok(None);
                }
                _ => return Err(LoginError::new("08P01", "invalid startup packet")),
            }
        }
    };
    let StartupParams {
        user,
        database,
        settings,
    } = check_parameters(&startup)?;
    if !tls && !shared.allow_plaintext {
        return Err(LoginError::new(
            "28000",
            "this bastion requires TLS (the password is a gateway token): connect with sslmode=require or stricter",
        ));
    }
    let mut out = BytesMut::new();
    frame::put(&mut out, &Authentication::CleartextPassword);
    client.write_all(&out).await.map_err(io)?;
    client.flush().await.map_err(io)?;
    let f = auth::read_typed(client, buf, MAX_PASSWORD_MESSAGE)
        .await
        .map_err(io)?;
    if f.first() != Some(&b'p') {
        return Err(LoginError::new("08P01", "expected a password message"));
    }
    let password = match frame::decode_frontend(f) {
        Ok(PgWireFrontendMessage::PasswordMessageFamily(p)) => p
            .into_password()
            .map_err(|_| LoginError::new("08P01", "malformed password message"))?,
        _ => return Err(LoginError::new("08P01", "malformed password message")),
    };
    let identity =
        auth::verify_client(&shared.verifier, &password.password, &user, UnixTime::now())?;
    if let Some(Err(reason)) = shared.check.as_ref().map(|c| c(&identity)) {
        return Err(LoginError::new(
            "28000",
            format!("user {user:?} may not log in: {reason}"),
        ));
    }
    let user_slot = shared
        .limits
        .user(identity.username())
        .map_err(|m| LoginError::new("53300", m))?;
    drop(password);
    let no_access = || {
        LoginError::new(
            "28000",
            format!(
                "no access to database {database:?}: it is not configured in the bastion, or none of your groups has a role there"
            ),
        )
    };
    let db = shared.acl.database(&database).ok_or_else(no_access)?;
    let role = db.role_for(&identity).ok_or_else(no_access)?.clone();
    if db.dialect != Dialect::Postgres {
        return Err(LoginError::new(
            "28000",
            format!("database {database:?} is not a PostgreSQL database"),
        ));
    }
    let addr = db.upstream.as_deref().ok_or_else(|| {
        LoginError::new(
            "08006",
            format!("database {database:?} has no upstream server configured"),
        )
    })?;
    let upstream_user = role
        .config()
        .upstream_user
        .as_deref()
        .unwrap_or(identity.username());
    let upstream = auth::connect_upstream(UpstreamLogin {
        addr,
        user: upstream_user,
        password: role.config().upstream_password.as_ref(),
        database: &db.upstream_database,
        read_only: role.read_only(),
        settings,
        tls: shared.upstream_tls.get(&db.name),
    })
    .await?;
    let mut out = BytesMut::new();
    frame::put(&mut out, &Authentication::Ok);
    out.extend_from_slice(&upstream.parameters);
    let guard = match upstream.key {
        Some((pid, secret)) => {
            let (guard, our_pid, our_secret) = shared.cancels.register(
                addr,
                shared.upstream_tls.get(&db.name).cloned(),
                pid,
                secret,
            );
            frame::put(
                &mut out,
                &BackendKeyData::new(our_pid, SecretKey::I32(our_secret)),
            );
            Some(guard)
        }
        None => None,
    };
    frame::ready(&mut out, upstream.status);
    client.write_all(&out).await.map_err(io)?;
    client.flush().await.map_err(io)?;
    let info = SessionInfo {
        identity,
        database: db.name.clone(),
        role,
        acl: shared.acl.clone(),
    };
    let relay = Relay::new(info, shared.pipeline.clone()).with_check(shared.check.clone());
    Ok(Some((
        relay,
        upstream,
        (user, database),
        (guard, user_slot),
    )))
}

/// Reserve room to read: at least a chunk, or what the message in progress
/// still needs (bounded by the cap, already checked).
fn reserve(buf: &mut BytesMut, max: usize) {
    let want = frame::missing(buf, max).clamp(READ_CHUNK, READ_CHUNK.max(1 << 20));
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
}

async fn relay_loop<S>(
    mut client: S,
    cin: BytesMut,
    upstream: auth::Upstream,
    relay: Relay,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut server = upstream.stream;
    let mut pump = Pump {
        max_client: relay.max_message,
        relay,
        cin,
        uin: upstream.leftover,
        to_client: BytesMut::with_capacity(64 * 1024),
        to_upstream: BytesMut::with_capacity(16 * 1024),
        closing: false,
        client_eof: false,
        flush_client: false,
        flush_upstream: false,
    };
    // Messages the client sent before the first turn.
    if process_client(
        &mut pump.relay,
        &mut pump.cin,
        pump.max_client,
        &mut pump.to_upstream,
        &mut pump.to_client,
    ) {
        pump.closing = true;
    }
    std::future::poll_fn(|cx| pump.poll(cx, &mut client, &mut server)).await?;
    let _ = server.shutdown().await;
    if !pump.client_eof {
        let _ = client.shutdown().await;
    }
    Ok(())
}

/// The relay's two directions, driven from one poll function.
///
/// One function owning both streams (rather than `tokio::io::split` halves
/// raced in `select!`) reads, decides and writes in the same turn: a
/// statement read from the client is on its way to the server before the
/// task yields, with no lock around either stream and no futures rebuilt
/// per message. This is the hot path of the bastion (docs/BENCHMARKS.md).
struct Pump {
    relay: Relay,
    max_client: usize,
    cin: BytesMut,
    uin: BytesMut,
    to_client: BytesMut,
    to_upstream: BytesMut,
    closing: bool,
    client_eof: bool,
    flush_client: bool,
    flush_upstream: bool,
}

/// The upstream is trusted, but its messages are still bounded (PostgreSQL's
/// own limit is 1 GiB).
const MAX_UPSTREAM_MESSAGE: usize = 1 << 30;

impl Pump {
    fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        server: &mut U,
    ) -> Poll<std::io::Result<()>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        // The thread idle polls after this (when configured).
        hexon_core::rt::mark_active();
        // A side whose read was pending in this call has our waker: polling
        // it again before we return only costs a readiness check.
        let (mut client_waits, mut server_waits) = (false, false);
        loop {
            let mut progress = false;
            // Client → relay → server.
            if !client_waits
                && !self.closing
                && !self.client_eof
                && self.to_upstream.len() < HIGH_WATER
                && self.to_client.len() < HIGH_WATER
            {
                reserve(&mut self.cin, self.max_client);
                let read = poll_read_buf(Pin::new(&mut *client), cx, &mut self.cin);
                client_waits = read.is_pending();
                if let Poll::Ready(r) = read {
                    progress = true;
                    if r? == 0 {
                        // Client gone: end the upstream session politely.
                        self.client_eof = true;
                        self.closing = true;
                        frame::put(
                            &mut self.to_upstream,
                            &pgwire::messages::terminate::Terminate::new(),
                        );
                    } else if process_client(
                        &mut self.relay,
                        &mut self.cin,
                        self.max_client,
                        &mut self.to_upstream,
                        &mut self.to_client,
                    ) {
                        self.closing = true;
                    }
                }
            }
            // Server → relay → client.
            if !server_waits && !self.closing && self.to_client.len() < HIGH_WATER {
                reserve(&mut self.uin, MAX_UPSTREAM_MESSAGE);
                let read = poll_read_buf(Pin::new(&mut *server), cx, &mut self.uin);
                server_waits = read.is_pending();
                if let Poll::Ready(r) = read {
                    progress = true;
                    if r? == 0 {
                        self.closing = true;
                        self.to_upstream.clear();
                    } else {
                        self.process_upstream();
                    }
                }
            }
            if !self.to_upstream.is_empty() {
                if let Poll::Ready(r) = Pin::new(&mut *server).poll_write(cx, &self.to_upstream) {
                    progress = true;
                    self.to_upstream.advance(written(r)?);
                    self.flush_upstream = self.to_upstream.is_empty();
                }
            }
            if !self.to_client.is_empty() {
                if let Poll::Ready(r) = Pin::new(&mut *client).poll_write(cx, &self.to_client) {
                    progress = true;
                    self.to_client.advance(written(r)?);
                    self.flush_client = self.to_client.is_empty();
                }
            }
            // Flushing plain TCP is free; a TLS stream may hold a record.
            if self.flush_upstream && Pin::new(&mut *server).poll_flush(cx)?.is_ready() {
                self.flush_upstream = false;
            }
            if self.flush_client && Pin::new(&mut *client).poll_flush(cx)?.is_ready() {
                self.flush_client = false;
            }
            if self.closing
                && self.to_client.is_empty()
                && self.to_upstream.is_empty()
                && !self.flush_client
                && !self.flush_upstream
            {
                self.relay.log_finished();
                return Poll::Ready(Ok(()));
            }
            if !progress {
                // The answers are written: now the query log.
                self.relay.log_finished();
                return Poll::Pending;
            }
        }
    }

    fn process_upstream(&mut self) {
        let (relay, to_client) = (&mut self.relay, &mut self.to_client);
        let handled = frame::each_typed(&mut self.uin, MAX_UPSTREAM_MESSAGE, |f| {
            relay.on_upstream(f, to_client);
            false
        });
        if let Err(e) = handled {
            frame::error(
                &mut self.to_client,
                Severity::Fatal,
                "08P01",
                &format!("the database server sent an invalid message: {e}"),
                None,
            );
            self.closing = true;
            self.to_upstream.clear();
        }
    }
}

/// Bytes a `poll_write` took; zero means the peer cannot take more.
fn written(r: std::io::Result<usize>) -> std::io::Result<usize> {
    match r? {
        0 => Err(std::io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

/// Handle every complete client message in `cin`; true when the session
/// must close. Frames are handled where they lie (no copy), then the buffer
/// advances past them.
fn process_client(
    relay: &mut Relay,
    cin: &mut BytesMut,
    max: usize,
    to_upstream: &mut BytesMut,
    to_client: &mut BytesMut,
) -> bool {
    frame::each_typed(cin, max, |f| {
        relay.on_client(f, to_upstream, to_client) == Flow::Close
    })
    .unwrap_or_else(|e| {
        frame::error(
            to_client,
            Severity::Fatal,
            "08P01",
            &format!("protocol violation: {e}"),
            None,
        );
        frame::put(to_upstream, &pgwire::messages::terminate::Terminate::new());
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters() {
        let mut s = Startup::new();
        s.parameters.insert("user".into(), "alice".into());
        s.parameters.insert("client_encoding".into(), "UTF8".into());
        s.parameters.insert("DateStyle".into(), "ISO".into());
        let p = check_parameters(&s).unwrap();
        assert_eq!((p.user.as_str(), p.database.as_str()), ("alice", "alice"));
        assert_eq!(p.settings, vec![("datestyle".to_owned(), "ISO".to_owned())]);
        for (k, v, code) in [
            ("options", "-c search_path=x", "0A000"),
            ("replication", "database", "0A000"),
            ("search_path", "evil", "0A000"),
            ("client_encoding", "LATIN1", "0A000"),
        ] {
            let mut s2 = Startup::new();
            s2.parameters.insert("user".into(), "alice".into());
            s2.parameters.insert(k.into(), v.into());
            assert_eq!(check_parameters(&s2).err().unwrap().sqlstate, code, "{k}");
        }
        assert_eq!(
            check_parameters(&Startup::new()).err().unwrap().sqlstate,
            "28000"
        );
    }

    fn relay() -> Relay {
        match (crate::fuzzing::pg_session(), crate::fuzzing::pipeline()) {
            (Some(info), Some(pipeline)) => Relay::new(info, pipeline),
            _ => panic!("fuzzing ACL"),
        }
    }

    #[test]
    fn client_frames_are_taken_in_place_and_lengths_checked() {
        let mut r = relay();
        let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
        // Two whole messages and the first bytes of a third: the two are
        // handled, the partial one stays.
        let mut cin = BytesMut::new();
        cin.extend_from_slice(&frame::framed(b'Q', b"SELECT 1\0"));
        cin.extend_from_slice(&frame::framed(b'Q', b"SELECT 2\0"));
        let third = frame::framed(b'Q', b"SELECT 3\0");
        cin.extend_from_slice(&third[..7]);
        assert!(!process_client(&mut r, &mut cin, 1 << 20, &mut up, &mut cl));
        assert_eq!(&cin[..], &third[..7]);
        assert_eq!(up.iter().filter(|&&b| b == b'Q').count(), 2);
        cin.extend_from_slice(&third[7..]);
        assert!(!process_client(&mut r, &mut cin, 1 << 20, &mut up, &mut cl));
        assert!(cin.is_empty());
        assert!(cl.is_empty());
        // Lengths below 4 or above the cap end the session before anything
        // of the message is read or reserved; the server gets Terminate.
        for bad in [
            &[b'B', 0, 0, 0, 3][..],
            &[b'E', 0xff, 0xff, 0xff, 0xff],
            &[b'Q', 0x7f, 0xff, 0xff, 0xff],
            &[b'B', 0, 0x10, 0, 5],
        ] {
            let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
            let mut cin = BytesMut::from(bad);
            assert!(process_client(&mut r, &mut cin, 1 << 20, &mut up, &mut cl));
            assert_eq!(&up[..], b"X\0\0\0\x04", "{bad:?}");
            assert!(String::from_utf8_lossy(&cl).contains("08P01"), "{bad:?}");
        }
    }

    #[test]
    fn cancel_keys_map_and_unmap() {
        let map = Arc::new(CancelMap::default());
        let (guard, pid, secret) = map.register("127.0.0.1:5432", None, 42, 7);
        let e = map.lookup(pid, secret).unwrap();
        assert_eq!((e.pid, e.upstream_secret), (42, 7));
        assert!(map.lookup(pid, secret.wrapping_add(1)).is_none());
        drop(guard);
        assert!(map.lookup(pid, secret).is_none());
    }
}
