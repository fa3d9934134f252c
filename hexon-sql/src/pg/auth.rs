//! Authentication on both sides: the client's password is a gateway token
//! (a JWT, verified by signature and claims); the bastion logs in to the
//! upstream server as the role's database user (trust, cleartext, MD5 or
//! SCRAM-SHA-256).
//!
//! The identity comes from [`JwtVerifier::verify`], which rebuilds it from
//! the claims exactly as the HTTP gateway's bearer authentication does; no
//! claim mapping is duplicated here.

use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::{Password, SASLInitialResponse, SASLResponse, Startup};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hexon_core::jwt::JwtVerifier;
use hexon_core::{Identity, UnixTime};

use super::frame::{self, HEADER};
use crate::acl::Secret;

/// A failed login, with the SQLSTATE and message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginError {
    pub(crate) sqlstate: &'static str,
    pub(crate) message: String,
}

impl LoginError {
    pub(crate) fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self {
            sqlstate,
            message: message.into(),
        }
    }
}

/// Verify the token the client sent as its password, and that it belongs to
/// the user named in the startup packet.
///
/// # Errors
/// `28P01` for a token that does not verify (the message says why, never
/// the token) or a user that is not the token's.
pub(crate) fn verify_client(
    verifier: &JwtVerifier,
    token: &str,
    startup_user: &str,
    now: UnixTime,
) -> Result<Identity, LoginError> {
    crate::wire::verify_token(verifier, token, startup_user, now)
        .map_err(|m| LoginError::new("28P01", m))
}

/// How to log in upstream.
pub(crate) struct UpstreamLogin<'a> {
    pub(crate) addr: &'a str,
    pub(crate) user: &'a str,
    pub(crate) password: Option<&'a Secret>,
    pub(crate) database: &'a str,
    pub(crate) read_only: bool,
    /// Harmless client settings passed on (date style, time zone, …).
    pub(crate) settings: Vec<(String, String)>,
    /// TLS to the server, when the database asks for it.
    pub(crate) tls: Option<&'a crate::wire::UpstreamTlsConfig>,
}

/// A logged-in upstream connection.
pub(crate) struct Upstream {
    pub(crate) stream: crate::wire::UpStream,
    /// `ParameterStatus` frames, to forward to the client as they are.
    pub(crate) parameters: BytesMut,
    /// The server's cancel key (process id, secret).
    pub(crate) key: Option<(i32, i32)>,
    /// Transaction status of the first `ReadyForQuery`.
    pub(crate) status: u8,
    /// Bytes read past the first `ReadyForQuery` (none, normally).
    pub(crate) leftover: BytesMut,
}

const UPSTREAM_STARTUP_MAX: usize = 1 << 20;

/// Read one typed message (header included) from `r` into `buf`.
pub(crate) async fn read_typed<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<BytesMut> {
    loop {
        match frame::take_typed(buf, max) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(frame::missing(buf, max).clamp(HEADER, 64 * 1024));
        if r.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn io_err(e: std::io::Error) -> LoginError {
    LoginError::new(
        "08006",
        format!("the bastion could not reach the database server: {e}"),
    )
}

/// The `M` and `C` fields of an `ErrorResponse` body.
pub(crate) fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let v = String::from_utf8_lossy(tail.get(..end).unwrap_or_default()).into_owned();
        match t {
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

fn auth_code(f: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(
        f.get(HEADER..HEADER + 4)?.try_into().ok()?,
    ))
}

/// `SSLRequest`: length 8 and the code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Turn `tcp` into a TLS connection when `tls` is set (the server must
/// agree: a server that refuses is an error, never a fallback to plain).
pub(crate) async fn connect_tls(
    mut tcp: TcpStream,
    tls: Option<&crate::wire::UpstreamTlsConfig>,
) -> Result<crate::wire::UpStream, LoginError> {
    let Some(tls) = tls else {
        return Ok(crate::wire::UpStream::Plain(tcp));
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_err)?;
    if answer != *b"S" {
        return Err(LoginError::new(
            "08006",
            "the database server does not accept TLS, and upstream_tls asks for it",
        ));
    }
    tls.connect(tcp)
        .await
        .map_err(|e| LoginError::new("08006", format!("TLS to the database server failed: {e}")))
}

/// Connect to the upstream server and log in.
///
/// # Errors
/// `08006` when the server cannot be reached, `08004` when it refuses the
/// login (its message is included), `28000` when it wants a password the
/// role does not configure or an unsupported method.
pub(crate) async fn connect_upstream(login: UpstreamLogin<'_>) -> Result<Upstream, LoginError> {
    let tcp = TcpStream::connect(login.addr).await.map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    let mut stream = connect_tls(tcp, login.tls).await?;
    let mut startup = Startup::new();
    let p = &mut startup.parameters;
    for (k, v) in login.settings {
        p.insert(k, v);
    }
    p.insert("user".into(), login.user.into());
    p.insert("database".into(), login.database.into());
    p.insert("application_name".into(), "hexon-sql".into());
    p.insert("client_encoding".into(), "UTF8".into());
    // The pipeline's lexer assumes standard strings.
    p.insert("standard_conforming_strings".into(), "on".into());
    if login.read_only {
        p.insert("default_transaction_read_only".into(), "on".into());
    }
    let mut out = BytesMut::new();
    frame::put(&mut out, &startup);
    stream.write_all(&out).await.map_err(io_err)?;

    let mut buf = BytesMut::with_capacity(8192);
    let mut parameters = BytesMut::new();
    let mut key = None;
    let mut scram: Option<ScramSha256> = None;
    let need_password = || {
        login.password.ok_or_else(|| {
            LoginError::new(
                "28000",
                format!(
                    "the database server asks for a password for {:?} and the role configures no upstream_password",
                    login.user
                ),
            )
        })
    };
    loop {
        let f = read_typed(&mut stream, &mut buf, UPSTREAM_STARTUP_MAX)
            .await
            .map_err(io_err)?;
        let body = f.get(HEADER..).unwrap_or_default();
        let mut out = BytesMut::new();
        match f.first() {
            Some(b'R') => match auth_code(&f) {
                Some(0) => {}
                Some(3) => {
                    let pw = need_password()?;
                    frame::put(&mut out, &Password::new(pw.expose().to_owned()));
                }
                Some(5) => {
                    let pw = need_password()?;
                    let salt: [u8; 4] =
                        body.get(4..8)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| {
                                LoginError::new(
                                    "08P01",
                                    "malformed MD5 request from the database server",
                                )
                            })?;
                    let hash = md5_hash(login.user.as_bytes(), pw.expose().as_bytes(), salt);
                    frame::put(&mut out, &Password::new(hash));
                }
                Some(10) => {
                    let pw = need_password()?;
                    let offers_scram = body
                        .get(4..)
                        .unwrap_or_default()
                        .split(|&b| b == 0)
                        .any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(LoginError::new(
                            "28000",
                            "the database server offers no SASL mechanism the bastion supports (SCRAM-SHA-256)",
                        ));
                    }
                    let s = ScramSha256::new(pw.expose().as_bytes(), ChannelBinding::unsupported());
                    frame::put(
                        &mut out,
                        &SASLInitialResponse::new(
                            SCRAM_SHA_256.to_owned(),
                            Some(Bytes::copy_from_slice(s.message())),
                        ),
                    );
                    scram = Some(s);
                }
                Some(11) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| LoginError::new("08P01", "unexpected SASL message"))?;
                    s.update(body.get(4..).unwrap_or_default()).map_err(|e| {
                        LoginError::new("28000", format!("SCRAM exchange failed: {e}"))
                    })?;
                    frame::put(
                        &mut out,
                        &SASLResponse::new(Bytes::copy_from_slice(s.message())),
                    );
                }
                Some(12) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| LoginError::new("08P01", "unexpected SASL message"))?;
                    s.finish(body.get(4..).unwrap_or_default()).map_err(|e| {
                        LoginError::new(
                            "28000",
                            format!("the database server's SCRAM signature does not verify: {e}"),
                        )
                    })?;
                }
                other => {
                    return Err(LoginError::new(
                        "28000",
                        format!(
                            "the database server asks for an authentication method the bastion does not support ({other:?})"
                        ),
                    ));
                }
            },
            Some(b'S') => parameters.extend_from_slice(&f),
            Some(b'K') => {
                let pid = body
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .map(i32::from_be_bytes);
                let secret = body
                    .get(4..8)
                    .and_then(|s| s.try_into().ok())
                    .map(i32::from_be_bytes);
                key = pid.zip(secret);
            }
            Some(b'Z') => {
                return Ok(Upstream {
                    stream,
                    parameters,
                    key,
                    status: body.first().copied().unwrap_or(b'I'),
                    leftover: buf,
                });
            }
            Some(b'E') => {
                let (code, message) = error_fields(body);
                return Err(LoginError::new(
                    "08004",
                    format!("the database server refused the bastion's login ({code}): {message}"),
                ));
            }
            // Notices, protocol negotiation: nothing to do.
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_tolerate_garbage() {
        assert_eq!(
            error_fields(b"SFATAL\0C28P01\0Mno\0\0"),
            ("28P01".to_owned(), "no".to_owned())
        );
        assert_eq!(error_fields(b"Cabc"), ("abc".to_owned(), String::new()));
        assert_eq!(error_fields(b""), (String::new(), String::new()));
    }

    /// The SCRAM client against a server built from the same library's
    /// primitives: what the relay sends is a well-formed exchange.
    #[test]
    fn scram_client_messages_are_well_formed() {
        let s = ScramSha256::new(b"secret", ChannelBinding::unsupported());
        let first = String::from_utf8(s.message().to_vec()).unwrap();
        assert!(first.starts_with("n,,n=,r="), "{first}");
        let mut out = BytesMut::new();
        frame::put(
            &mut out,
            &SASLInitialResponse::new(
                SCRAM_SHA_256.to_owned(),
                Some(Bytes::copy_from_slice(s.message())),
            ),
        );
        assert_eq!(out.first(), Some(&b'p'));
        assert!(out.windows(13).any(|w| w == b"SCRAM-SHA-256"));
    }

    #[test]
    fn md5_matches_postgres() {
        // md5(md5(password || user) || salt), as PostgreSQL computes it.
        let h = md5_hash(b"u", b"p", [1, 2, 3, 4]);
        assert!(h.starts_with("md5") && h.len() == 35);
    }
}
