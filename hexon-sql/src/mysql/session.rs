//! One client connection: greeting, TLS, the token login, the upstream
//! login, then the command loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::constants::CapabilityFlags;
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use hexon_core::UnixTime;

use super::Shared;
use super::auth::{self, LoginError, UpstreamLogin};
use super::frame::{self, MAX_PAYLOAD};
use super::relay::{Relay, SessionInfo, Step, Upstream};
use crate::dialect::Dialect;

/// Time a client has from connecting to being logged in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest packet accepted before login (a token is well below this).
const MAX_LOGIN_PACKET: usize = 64 * 1024;
/// Write relayed results to the client once this much is buffered.
const HIGH_WATER: usize = 64 * 1024;
/// What the bastion tells clients it is. Clients gate features on the
/// version; the relay speaks the 8.0 / 10.x protocol subset both share.
const SERVER_VERSION: &str = "8.0.36-hexon";

/// A nonce of printable bytes (clients treat the greeting's scramble as a
/// C string).
fn nonce() -> [u8; 20] {
    let mut n = [0u8; 20];
    if OsRng.try_fill_bytes(&mut n).is_err() {
        tracing::error!("no OS randomness for a MySQL greeting nonce");
    }
    for b in &mut n {
        *b = 33 + *b % 94;
    }
    n
}

async fn fail<S: AsyncWrite + Unpin>(s: &mut S, seq: u8, e: &LoginError) {
    let mut out = BytesMut::new();
    frame::error(&mut out, seq, e.code, e.sqlstate, &e.message);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Serve one accepted connection.
pub(crate) async fn handle(mut tcp: TcpStream, shared: Arc<Shared>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let greeting = auth::greeting(SERVER_VERSION, id, &nonce(), shared.tls.is_some());
    if auth::write_packet(&mut tcp, 0, &greeting).await.is_err() {
        return;
    }
    let mut buf = BytesMut::with_capacity(1024);
    let first = match tokio::time::timeout(
        LOGIN_TIMEOUT,
        auth::read_packet(&mut tcp, &mut buf, MAX_LOGIN_PACKET),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "MySQL handshake failed");
            if e.kind() == std::io::ErrorKind::InvalidData {
                fail(
                    &mut tcp,
                    1,
                    &LoginError::new(1043, "08S01", "bad handshake"),
                )
                .await;
            }
            return;
        }
        Err(_) => return,
    };
    let caps = frame::u32_at(&first.payload, 0).unwrap_or(0);
    // An SSLRequest is the first 32 bytes of a handshake response.
    if caps & CapabilityFlags::CLIENT_SSL.bits() != 0 && first.payload.len() == 32 {
        let Some(acceptor) = shared.tls.clone() else {
            fail(
                &mut tcp,
                first.seq.wrapping_add(1),
                &LoginError::new(1043, "08S01", "TLS was not offered"),
            )
            .await;
            return;
        };
        // Bytes sent before the handshake would be read as if they came
        // over TLS.
        if !buf.is_empty() {
            return;
        }
        let tls = match tokio::time::timeout(LOGIN_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        session(tls, BytesMut::new(), None, true, shared).await;
    } else {
        session(tcp, buf, Some(first), false, shared).await;
    }
}

async fn session<S>(
    mut client: S,
    mut buf: BytesMut,
    hello: Option<frame::Packet>,
    tls: bool,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut seq = 2u8;
    let login = tokio::time::timeout(
        LOGIN_TIMEOUT,
        login(&mut client, &mut buf, hello, tls, &shared, &mut seq),
    )
    .await;
    let (relay, upstream, _user_slot) = match login {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::info!(code = e.code, reason = %e.message, "MySQL login refused");
            fail(&mut client, seq, &e).await;
            return;
        }
        Err(_) => {
            fail(
                &mut client,
                seq,
                &LoginError::new(1043, "08S01", "login timed out"),
            )
            .await;
            return;
        }
    };
    tracing::debug!(database = relay.database(), "MySQL session started");
    if let Err(e) = command_loop(client, buf, upstream, relay).await {
        tracing::debug!(error = %e, "MySQL session ended with an error");
    }
}

async fn login<S>(
    client: &mut S,
    buf: &mut BytesMut,
    hello: Option<frame::Packet>,
    tls: bool,
    shared: &Shared,
    seq: &mut u8,
) -> Result<(Relay, auth::Upstream, crate::wire::UserSlot), LoginError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let io = |e: std::io::Error| LoginError::new(1043, "08S01", format!("connection failure: {e}"));
    let hello = match hello {
        Some(h) => h,
        None => auth::read_packet(client, buf, MAX_LOGIN_PACKET)
            .await
            .map_err(io)?,
    };
    *seq = hello.seq.wrapping_add(1);
    let h = auth::parse_hello(&hello.payload)?;
    if !tls && !shared.allow_plaintext {
        return Err(LoginError::denied(
            "this bastion requires TLS (the password is a gateway token): connect with --ssl (mariadb) or --ssl-mode=REQUIRED (mysql)",
        ));
    }
    let password = match h.password {
        Some(p) => p,
        None => {
            auth::write_packet(client, *seq, &auth::switch_to_clear_password())
                .await
                .map_err(io)?;
            let p = auth::read_packet(client, buf, MAX_LOGIN_PACKET)
                .await
                .map_err(io)?;
            *seq = p.seq.wrapping_add(1);
            let data = p.payload.strip_suffix(&[0]).unwrap_or(&p.payload);
            String::from_utf8(data.to_vec())
                .map_err(|_| LoginError::denied("the password is not UTF-8"))?
        }
    };
    let identity = crate::wire::verify_token(&shared.verifier, &password, &h.user, UnixTime::now())
        .map_err(LoginError::denied)?;
    drop(password);
    if let Some(Err(reason)) = shared.check.as_ref().map(|c| c(&identity)) {
        return Err(LoginError::denied(format!(
            "user {:?} may not log in: {reason}",
            h.user
        )));
    }
    // ER_TOO_MANY_USER_CONNECTIONS
    let user_slot = shared
        .limits
        .user(identity.username())
        .map_err(|m| LoginError::new(1203, "42000", m))?;
    let database = h.database.ok_or_else(|| {
        LoginError::new(
            1046,
            "3D000",
            "name a database when connecting (mysql -D name): the bastion decides per database",
        )
    })?;
    let no_access = || {
        LoginError::new(
            1044,
            "42000",
            format!(
                "no access to database {database:?}: it is not configured in the bastion, or none of your groups has a role there"
            ),
        )
    };
    let db = shared
        .acl
        .database(&database)
        .ok_or_else(no_access)?
        .clone();
    let role = db.role_for(&identity).ok_or_else(no_access)?.clone();
    if db.dialect != Dialect::Mysql {
        return Err(LoginError::new(
            1044,
            "42000",
            format!("database {database:?} is not a MySQL database"),
        ));
    }
    let addr = db.upstream.as_deref().ok_or_else(|| {
        LoginError::upstream(format!(
            "database {database:?} has no upstream server configured"
        ))
    })?;
    let upstream_user = role
        .config()
        .upstream_user
        .clone()
        .unwrap_or_else(|| identity.username().to_owned());
    let upstream = auth::connect_upstream(UpstreamLogin {
        addr,
        user: &upstream_user,
        password: role.config().upstream_password.as_ref(),
        database: &db.upstream_database,
        read_only: role.read_only(),
        client_capabilities: h.capabilities,
        tls: shared.upstream_tls.get(&db.name),
    })
    .await?;
    let mut out = BytesMut::new();
    frame::ok(&mut out, *seq, frame::SERVER_STATUS_AUTOCOMMIT);
    client.write_all(&out).await.map_err(io)?;
    client.flush().await.map_err(io)?;
    let info = SessionInfo {
        identity,
        db,
        role,
        acl: shared.acl.clone(),
        upstream_user,
    };
    let relay = Relay::new(info, shared.pipeline.clone()).with_check(shared.check.clone());
    Ok((relay, upstream, user_slot))
}

async fn flush<S: AsyncWrite + Unpin>(s: &mut S, out: &mut BytesMut) -> std::io::Result<()> {
    if !out.is_empty() {
        s.write_all(out).await?;
        out.clear();
        s.flush().await?;
    }
    Ok(())
}

async fn command_loop<S>(
    mut client: S,
    mut cin: BytesMut,
    upstream: auth::Upstream,
    mut relay: Relay,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut server = upstream.stream;
    let mut uin = upstream.leftover;
    let mut to_client = BytesMut::with_capacity(HIGH_WATER);
    let mut to_upstream = BytesMut::with_capacity(4096);
    loop {
        // The last command's answer is written: now its query log; the
        // thread idle polls for the next command (when configured).
        relay.log_finished();
        hexon_core::rt::mark_active();
        let command = match auth::read_packet(&mut client, &mut cin, MAX_PAYLOAD).await {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Client gone: end the upstream session politely.
                let _ = auth::write_packet(&mut server, 0, &[super::relay::com::QUIT]).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // A command arrived: the thread idle polls for the server's answer.
        hexon_core::rt::mark_active();
        let step = relay.on_command(command, &mut to_upstream, &mut to_client);
        flush(&mut server, &mut to_upstream).await?;
        match step {
            Step::Answered | Step::ForwardOnly => flush(&mut client, &mut to_client).await?,
            Step::Close => {
                flush(&mut client, &mut to_client).await?;
                let _ = server.shutdown().await;
                let _ = client.shutdown().await;
                return Ok(());
            }
            Step::Forward => loop {
                let p = auth::read_packet(&mut server, &mut uin, MAX_PAYLOAD).await?;
                match relay.on_upstream(&p, &mut to_client) {
                    Upstream::More => {
                        if to_client.len() >= HIGH_WATER {
                            client.write_all(&to_client).await?;
                            to_client.clear();
                        }
                    }
                    Upstream::Done => {
                        flush(&mut client, &mut to_client).await?;
                        break;
                    }
                    Upstream::DoneReset => {
                        flush(&mut client, &mut to_client).await?;
                        for s in auth::pin_statements(relay.read_only()) {
                            if let Err(e) = auth::run_internal(&mut server, &mut uin, &s).await {
                                tracing::warn!(reason = %e.message, "could not pin the session after COM_RESET_CONNECTION; closing it");
                                let _ = client.shutdown().await;
                                return Ok(());
                            }
                        }
                        break;
                    }
                    Upstream::Close => {
                        flush(&mut client, &mut to_client).await?;
                        let _ = server.shutdown().await;
                        let _ = client.shutdown().await;
                        return Ok(());
                    }
                }
            },
        }
    }
}
