//! Both logins: the client's (its password is a gateway token, sent with
//! `mysql_clear_password` over TLS) and the bastion's own to the upstream
//! server, as the role's database account (`mysql_native_password`, or
//! `caching_sha2_password` when the server has the account cached).

use std::borrow::Cow;
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse, SslRequest,
};
use mysql_common::proto::{MyDeserialize, MySerialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{self, Packet};
use crate::acl::Secret;

/// Capabilities the bastion always uses, on both sides.
pub(crate) const REQUIRED: CapabilityFlags = CapabilityFlags::CLIENT_LONG_PASSWORD
    .union(CapabilityFlags::CLIENT_PROTOCOL_41)
    .union(CapabilityFlags::CLIENT_SECURE_CONNECTION)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    .union(CapabilityFlags::CLIENT_TRANSACTIONS);

/// Capabilities passed through from the client to the upstream when the
/// client asks for them. Everything else is dropped: among them
/// `CLIENT_LOCAL_FILES` (the server could read client files),
/// `CLIENT_MULTI_STATEMENTS` (stacked queries), `CLIENT_IGNORE_SPACE`
/// (changes how function names parse), compression, session tracking and
/// `CLIENT_DEPRECATE_EOF` (the relay reads the classic result layout).
pub(crate) const PASSED: CapabilityFlags = CapabilityFlags::CLIENT_FOUND_ROWS
    .union(CapabilityFlags::CLIENT_LONG_FLAG)
    .union(CapabilityFlags::CLIENT_INTERACTIVE)
    .union(CapabilityFlags::CLIENT_MULTI_RESULTS)
    .union(CapabilityFlags::CLIENT_PS_MULTI_RESULTS);

/// What the bastion announces to clients (plus `CLIENT_SSL` with TLS).
pub(crate) const ANNOUNCED: CapabilityFlags = REQUIRED
    .union(PASSED)
    .union(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
    .union(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA);

/// `utf8mb4_general_ci`: every session speaks UTF-8, whatever the client
/// asked, so no multi-byte character set can hide a quote.
pub(crate) const UTF8MB4_GENERAL_CI: u8 = 45;

/// The plugin that carries the token.
pub(crate) const CLEAR_PASSWORD: &[u8] = b"mysql_clear_password";

/// A failed login, with the error number, SQLSTATE and message for the
/// client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoginError {
    pub(crate) code: u16,
    pub(crate) sqlstate: &'static str,
    pub(crate) message: String,
}

impl LoginError {
    pub(crate) fn new(code: u16, sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            sqlstate,
            message: message.into(),
        }
    }

    /// `ER_ACCESS_DENIED_ERROR`.
    pub(crate) fn denied(message: impl Into<String>) -> Self {
        Self::new(1045, "28000", message)
    }

    /// `ER_CONNECT_TO_FOREIGN_DATA_SOURCE`: the upstream could not be used.
    /// (Not a 2xxx client error number: clients read those from a server
    /// as a malformed packet.)
    pub(crate) fn upstream(message: impl Into<String>) -> Self {
        Self::new(1429, "08S01", message)
    }
}

/// Read one packet (payload at most `max` bytes).
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<Packet> {
    loop {
        match frame::take(buf, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(frame::missing(buf, max).clamp(frame::HEADER, 64 * 1024));
        if r.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Write one packet and flush.
pub(crate) async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    seq: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frame::put(&mut out, seq, payload);
    w.write_all(&out).await?;
    w.flush().await
}

fn serialize(m: &impl MySerialize) -> Vec<u8> {
    let mut v = Vec::new();
    m.serialize(&mut v);
    v
}

/// The greeting the bastion sends a new client.
pub(crate) fn greeting(
    server_version: &str,
    connection_id: u32,
    nonce: &[u8; 20],
    tls: bool,
) -> Vec<u8> {
    let mut caps = ANNOUNCED;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let mut s1 = [0u8; 8];
    s1.copy_from_slice(&nonce[..8]);
    // The second part carries its NUL, as servers send it.
    let mut s2 = nonce[8..].to_vec();
    s2.push(0);
    serialize(&HandshakePacket::new(
        10,
        server_version.as_bytes(),
        connection_id,
        s1,
        Some(s2),
        caps,
        UTF8MB4_GENERAL_CI,
        mysql_common::constants::StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        Some(CLEAR_PASSWORD),
    ))
}

/// The client's handshake response, as far as the bastion uses it.
#[derive(Debug)]
pub(crate) struct ClientHello {
    pub(crate) capabilities: CapabilityFlags,
    pub(crate) user: String,
    pub(crate) database: Option<String>,
    /// The password, when the client already sent it in clear.
    pub(crate) password: Option<String>,
}

/// Parse a client's handshake response.
///
/// # Errors
/// Malformed packets, pre-4.1 clients, names that are not UTF-8.
pub(crate) fn parse_hello(payload: &[u8]) -> Result<ClientHello, LoginError> {
    let bad = |what: &str| LoginError::new(1043, "08S01", format!("bad handshake: {what}"));
    // What is in effect is what both sides announced: clients set flags
    // the server did not offer (e.g. CLIENT_CONNECT_ATTRS) and then leave
    // the fields out, so parse with the intersection.
    let mut payload = payload.to_vec();
    let Some(flags) = payload.first_chunk_mut::<4>() else {
        return Err(bad("short packet"));
    };
    let ours = (ANNOUNCED | CapabilityFlags::CLIENT_SSL).bits();
    *flags = (u32::from_le_bytes(*flags) & ours).to_le_bytes();
    let h = HandshakeResponse::deserialize((), &mut ParseBuf(&payload))
        .map_err(|e| bad(&e.to_string()))?;
    let capabilities = h.capabilities();
    if !capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
        return Err(bad("the client does not speak protocol 4.1"));
    }
    let text = |b: &[u8], what: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| bad(&format!("the {what} is not UTF-8")))
    };
    let user = text(h.user(), "user name")?;
    let database = match h.db_name() {
        Some(d) if !d.is_empty() => Some(text(d, "database name")?),
        _ => None,
    };
    let password = match h.auth_plugin() {
        Some(AuthPlugin::MysqlClearPassword) => {
            let data = h.scramble_buf();
            let data = data.strip_suffix(&[0]).unwrap_or(data);
            Some(text(data, "password")?)
        }
        _ => None,
    };
    Ok(ClientHello {
        capabilities,
        user,
        database,
        password,
    })
}

/// The payload of an `AuthSwitchRequest` to `mysql_clear_password`.
pub(crate) fn switch_to_clear_password() -> Vec<u8> {
    serialize(&AuthSwitchRequest::new(CLEAR_PASSWORD, &[][..]))
}

/// How to log in upstream.
pub(crate) struct UpstreamLogin<'a> {
    pub(crate) addr: &'a str,
    pub(crate) user: &'a str,
    pub(crate) password: Option<&'a Secret>,
    pub(crate) database: &'a str,
    pub(crate) read_only: bool,
    /// The client's capabilities (those in [`PASSED`] are passed on).
    pub(crate) client_capabilities: CapabilityFlags,
    /// TLS to the server, when the database asks for it.
    pub(crate) tls: Option<&'a crate::wire::UpstreamTlsConfig>,
}

/// A logged-in upstream connection.
pub(crate) struct Upstream {
    pub(crate) stream: crate::wire::UpStream,
    /// Bytes read past the login (none, normally).
    pub(crate) leftover: BytesMut,
}

const UPSTREAM_LOGIN_MAX: usize = 1 << 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(e: std::io::Error) -> LoginError {
    LoginError::upstream(format!(
        "the bastion could not reach the database server: {e}"
    ))
}

/// The answer to an authentication challenge with `plugin`.
fn auth_data(
    plugin: &AuthPlugin<'_>,
    nonce: &[u8],
    password: Option<&Secret>,
) -> Result<Vec<u8>, LoginError> {
    let pw = password.map(|p| p.expose().as_bytes()).unwrap_or_default();
    match plugin {
        AuthPlugin::MysqlNativePassword => Ok(scramble_native(nonce, pw)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        AuthPlugin::CachingSha2Password => {
            let nonce: &[u8; 20] =
                nonce
                    .get(..20)
                    .and_then(|n| n.try_into().ok())
                    .ok_or_else(|| {
                        LoginError::upstream(
                            "the database server sent a short authentication nonce",
                        )
                    })?;
            Ok(scramble_sha256(nonce, pw)
                .map(|s| s.to_vec())
                .unwrap_or_default())
        }
        other => Err(LoginError::upstream(format!(
            "the database server asks for the authentication plugin {:?}, which the bastion does not use: give the bastion's account mysql_native_password (or caching_sha2_password)",
            String::from_utf8_lossy(other.as_bytes())
        ))),
    }
}

fn server_version(v: &[u8]) -> (u16, u16, u16) {
    let s = String::from_utf8_lossy(v);
    let s = s.strip_prefix("5.5.5-").unwrap_or(&s);
    let mut it = s
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u16>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Connect to the upstream server, log in, and pin the session settings the
/// pipeline relies on.
///
/// # Errors
/// The server cannot be reached, refuses the login (its message is
/// included), or wants a method the bastion does not support.
pub(crate) async fn connect_upstream(login: UpstreamLogin<'_>) -> Result<Upstream, LoginError> {
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(login.addr))
        .await
        .map_err(|_| LoginError::upstream("connecting to the database server timed out"))?
        .map_err(io_err)?;
    tcp.set_nodelay(true).map_err(io_err)?;
    let mut buf = BytesMut::with_capacity(4096);
    let hello = read_packet(&mut tcp, &mut buf, UPSTREAM_LOGIN_MAX)
        .await
        .map_err(io_err)?;
    if hello.kind() == Some(0xFF) {
        let (code, message) = frame::error_fields(&hello.payload);
        return Err(LoginError::upstream(format!(
            "the database server refused the connection ({code}): {message}"
        )));
    }
    let h = HandshakePacket::deserialize((), &mut ParseBuf(&hello.payload)).map_err(|e| {
        LoginError::upstream(format!("the database server's greeting is invalid: {e}"))
    })?;
    let server_caps = h.capabilities();
    // Not REQUIRED as a whole: MariaDB leaves CLIENT_LONG_PASSWORD
    // ("CLIENT_MYSQL") out to announce its extended capabilities.
    let needed = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    if !server_caps.contains(needed) {
        return Err(LoginError::upstream(
            "the database server does not support protocol 4.1 with plugin authentication",
        ));
    }
    let mut nonce = h.scramble_1_ref().to_vec();
    nonce.extend_from_slice(h.scramble_2_ref().unwrap_or_default());
    if nonce.last() == Some(&0) {
        nonce.pop();
    }
    let plugin = h
        .auth_plugin()
        .map(|p| p.into_owned())
        .unwrap_or(AuthPlugin::MysqlNativePassword);
    let data = auth_data(&plugin, &nonce, login.password)?;
    // The database is always named; servers read the flags of an SSL
    // request as the session's, so they are complete before TLS starts.
    let mut caps =
        (REQUIRED | CapabilityFlags::CLIENT_CONNECT_WITH_DB | (login.client_capabilities & PASSED))
            & server_caps;
    let mut seq = hello.seq.wrapping_add(1);
    let mut stream = match login.tls {
        None => crate::wire::UpStream::Plain(tcp),
        Some(tls) => {
            if !server_caps.contains(CapabilityFlags::CLIENT_SSL) {
                return Err(LoginError::upstream(
                    "the database server does not offer TLS, and upstream_tls asks for it",
                ));
            }
            if !buf.is_empty() {
                return Err(LoginError::upstream(
                    "the database server sent data before the TLS handshake",
                ));
            }
            caps |= CapabilityFlags::CLIENT_SSL;
            let request = SslRequest::new(caps, 16 * 1024 * 1024, UTF8MB4_GENERAL_CI);
            write_packet(&mut tcp, seq, &serialize(&request))
                .await
                .map_err(io_err)?;
            seq = seq.wrapping_add(1);
            tls.connect(tcp).await.map_err(|e| {
                LoginError::upstream(format!("TLS to the database server failed: {e}"))
            })?
        }
    };
    let response = HandshakeResponse::new(
        Some(Cow::Owned(data)),
        server_version(h.server_version_ref()),
        Some(login.user.as_bytes()),
        Some(login.database.as_bytes()),
        Some(plugin),
        caps,
        None,
        16 * 1024 * 1024,
    );
    write_packet(&mut stream, seq, &serialize(&response))
        .await
        .map_err(io_err)?;
    loop {
        let p = read_packet(&mut stream, &mut buf, UPSTREAM_LOGIN_MAX)
            .await
            .map_err(io_err)?;
        seq = p.seq.wrapping_add(1);
        match p.kind() {
            Some(0x00) => break,
            Some(0xFF) => {
                let (code, message) = frame::error_fields(&p.payload);
                return Err(LoginError::upstream(format!(
                    "the database server refused the bastion's login as {:?} ({code}): {message}",
                    login.user
                )));
            }
            Some(0xFE) => {
                let switch = AuthSwitchRequest::deserialize((), &mut ParseBuf(&p.payload))
                    .map_err(|e| {
                        LoginError::upstream(format!("invalid authentication switch: {e}"))
                    })?;
                let data = auth_data(&switch.auth_plugin(), switch.plugin_data(), login.password)?;
                write_packet(&mut stream, seq, &data)
                    .await
                    .map_err(io_err)?;
            }
            // caching_sha2_password: 3 = fast authentication succeeded (an
            // OK follows), 4 = the server wants the password itself.
            Some(0x01) if p.payload.get(1) == Some(&3) => {}
            Some(0x01) => {
                return Err(LoginError::upstream(
                    "the database server wants caching_sha2_password's full authentication, which needs TLS or RSA towards the server: give the bastion's account mysql_native_password",
                ));
            }
            _ => {
                return Err(LoginError::upstream(
                    "the database server sent an unexpected packet during login",
                ));
            }
        }
    }
    for statement in pin_statements(login.read_only) {
        run_internal(&mut stream, &mut buf, &statement).await?;
    }
    Ok(Upstream {
        stream,
        leftover: buf,
    })
}

/// Statements that put an upstream session in the state the pipeline
/// assumes: no mode that changes how strings or identifiers are quoted
/// (`ANSI_QUOTES`, `NO_BACKSLASH_ESCAPES`, and the compound modes that
/// imply them or switch grammars), and for read-only roles a read-only
/// session on the server too.
pub(crate) fn pin_statements(read_only: bool) -> Vec<String> {
    let mut mode = "@@SESSION.sql_mode".to_owned();
    for m in [
        "ANSI_QUOTES",
        "NO_BACKSLASH_ESCAPES",
        "ANSI",
        "ORACLE",
        "MSSQL",
        "DB2",
        "POSTGRESQL",
        "MAXDB",
    ] {
        mode = format!("REPLACE({mode}, '{m}', '')");
    }
    let mut v = vec![format!("SET SESSION sql_mode = {mode}")];
    if read_only {
        v.push("SET SESSION TRANSACTION READ ONLY".to_owned());
    }
    v
}

/// Run one of the bastion's own statements; it must answer OK.
pub(crate) async fn run_internal<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    sql: &str,
) -> Result<(), LoginError> {
    let mut out = BytesMut::new();
    frame::put_command(&mut out, super::relay::com::QUERY, sql.as_bytes());
    stream.write_all(&out).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    let p = read_packet(stream, buf, UPSTREAM_LOGIN_MAX)
        .await
        .map_err(io_err)?;
    match p.kind() {
        Some(0x00) => Ok(()),
        _ => {
            let (code, message) = frame::error_fields(&p.payload);
            Err(LoginError::upstream(format!(
                "the database server refused the session setup ({code}): {message}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_parses_back_with_what_clients_need() {
        let g = greeting("8.0.36-hexon", 7, &[7u8; 20], true);
        let h = HandshakePacket::deserialize((), &mut ParseBuf(&g)).unwrap();
        assert_eq!(h.connection_id(), 7);
        assert!(h.capabilities().contains(CapabilityFlags::CLIENT_SSL));
        assert!(
            !h.capabilities()
                .contains(CapabilityFlags::CLIENT_LOCAL_FILES)
        );
        assert!(
            !h.capabilities()
                .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
        );
        assert_eq!(h.auth_plugin(), Some(AuthPlugin::MysqlClearPassword));
        let mut nonce = h.scramble_1_ref().to_vec();
        nonce.extend_from_slice(h.scramble_2_ref().unwrap());
        assert_eq!(&nonce[..20], &[7u8; 20]);
        let plain = greeting("8.0.36-hexon", 7, &[7u8; 20], false);
        let h = HandshakePacket::deserialize((), &mut ParseBuf(&plain)).unwrap();
        assert!(!h.capabilities().contains(CapabilityFlags::CLIENT_SSL));
    }

    #[test]
    fn hello_with_a_clear_password_and_without() {
        let caps = REQUIRED | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        let r = HandshakeResponse::new(
            Some(&b"tok.en.sig\0"[..]),
            (8, 0, 36),
            Some(&b"ana"[..]),
            Some(&b"shop"[..]),
            Some(AuthPlugin::MysqlClearPassword),
            caps,
            None,
            1 << 24,
        );
        let h = parse_hello(&serialize(&r)).unwrap();
        assert_eq!(h.user, "ana");
        assert_eq!(h.database.as_deref(), Some("shop"));
        assert_eq!(h.password.as_deref(), Some("tok.en.sig"));
        // A native-password response carries no usable password.
        let r = HandshakeResponse::new(
            Some(&[1u8; 20][..]),
            (8, 0, 36),
            Some(&b"ana"[..]),
            None::<&[u8]>,
            Some(AuthPlugin::MysqlNativePassword),
            caps,
            None,
            1 << 24,
        );
        let h = parse_hello(&serialize(&r)).unwrap();
        assert_eq!((h.password, h.database), (None, None));
    }

    #[test]
    fn malformed_hellos_are_refused() {
        for bad in [&b""[..], &[0u8; 10][..], &[0xFF; 40][..]] {
            assert!(parse_hello(bad).is_err(), "{bad:?}");
        }
        // Protocol 4.1 is required.
        let r = HandshakeResponse::new(
            Some(&b"x"[..]),
            (8, 0, 36),
            Some(&b"ana"[..]),
            None::<&[u8]>,
            None,
            CapabilityFlags::CLIENT_LONG_PASSWORD,
            None,
            1 << 24,
        );
        assert_eq!(parse_hello(&serialize(&r)).unwrap_err().code, 1043);
    }

    #[test]
    fn pinning_strips_quote_changing_modes() {
        let s = pin_statements(true);
        assert_eq!(s.len(), 2);
        for m in ["ANSI_QUOTES", "NO_BACKSLASH_ESCAPES", "ORACLE"] {
            assert!(s[0].contains(m), "{m}");
        }
        // ANSI_QUOTES is replaced first (innermost), or 'ANSI' would leave '_QUOTES'.
        assert!(s[0].find("'ANSI_QUOTES'") < s[0].find("'ANSI'"));
        assert_eq!(pin_statements(false).len(), 1);
    }

    #[test]
    fn version_numbers() {
        assert_eq!(server_version(b"5.5.5-10.11.19-MariaDB"), (10, 11, 19));
        assert_eq!(server_version(b"8.0.36"), (8, 0, 36));
        assert_eq!(server_version(b"garbage"), (0, 0, 0));
    }
}
