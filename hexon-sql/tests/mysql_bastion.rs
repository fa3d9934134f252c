//! The MySQL bastion end to end: the real `mariadb` client (and sqlx's MySQL
//! driver, for prepared statements) through the bastion, started in process
//! with TLS and a self-signed certificate, to the MariaDB server at
//! 127.0.0.1:3306 (`root` with an empty password). Each test makes its own
//! databases and accounts and drops them after. These tests need that
//! server and fail, saying so, when it is not there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use hexon_core::jwt::{IssueParams, JwtIssuer};
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
use hexon_sql::Acl;
use hexon_sql::mysql::MyBastion;
use hexon_sql::wire::BastionConfig;

const ISSUER: &str = "https://hexon.test";
const AUDIENCE: &str = "hexon-sql";
const MARIADB: &str = "127.0.0.1:3306";

fn require_mariadb() {
    if TcpStream::connect_timeout(&MARIADB.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "these tests need MariaDB at {MARIADB} (root with an empty password); start it first"
        );
    }
}

fn unique() -> String {
    let mut b = [0u8; 5];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run SQL directly against MariaDB as root.
fn root(sql: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h127.0.0.1",
            "-P3306",
            "-uroot",
            "--batch",
            "--skip-column-names",
            "-e",
            sql,
        ])
        .env_remove("MYSQL_PWD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "root SQL failed: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Two databases and two accounts (read-only, read-write) on MariaDB.
struct Fixture {
    id: String,
}

impl Fixture {
    fn new() -> Self {
        require_mariadb();
        let id = unique();
        let fixture = Fixture { id: id.clone() };
        root(&format!(
            "CREATE DATABASE hx_{id}; CREATE DATABASE hx2_{id};
             CREATE TABLE hx_{id}.items (id INT PRIMARY KEY, name VARCHAR(20));
             INSERT INTO hx_{id}.items WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 20) SELECT n, CONCAT('n', n) FROM s;
             CREATE TABLE hx2_{id}.things (id INT PRIMARY KEY);
             INSERT INTO hx2_{id}.things VALUES (7);
             CREATE USER 'hxro_{id}'@'%' IDENTIFIED BY 'ro-pw';
             GRANT SELECT ON hx_{id}.* TO 'hxro_{id}'@'%';
             GRANT SELECT ON hx2_{id}.* TO 'hxro_{id}'@'%';
             CREATE USER 'hxrw_{id}'@'%' IDENTIFIED BY 'rw-pw';
             GRANT SELECT, INSERT, UPDATE, DELETE ON hx_{id}.* TO 'hxrw_{id}'@'%';"
        ));
        fixture
    }

    fn count(&self) -> String {
        root(&format!("SELECT COUNT(*) FROM hx_{}.items", self.id))
    }

    fn acl(&self) -> String {
        let id = &self.id;
        format!(
            r#"
[[databases]]
name = "shop"
dialect = "mysql"
upstream = "{MARIADB}"
upstream_database = "hx_{id}"

[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
row_limit = 5
upstream_user = "hxro_{id}"
upstream_password = "ro-pw"
tables = [{{ name = "shop.*", ops = ["select"] }}]

[[databases.roles]]
name = "writer"
groups = ["writers"]
upstream_user = "hxrw_{id}"
upstream_password = "rw-pw"
tables = [{{ name = "shop.*", ops = ["select", "insert", "update", "delete"] }}]

[[databases]]
name = "shop2"
dialect = "mysql"
upstream = "{MARIADB}"
upstream_database = "hx2_{id}"

[[databases.roles]]
name = "reader2"
groups = ["analysts"]
read_only = true
upstream_user = "hxro_{id}"
upstream_password = "ro-pw"
tables = [{{ name = "shop2.*", ops = ["select"] }}]

[[databases]]
name = "pg"
dialect = "postgres"
upstream = "127.0.0.1:5432"
[[databases.roles]]
name = "any"
groups = ["analysts"]
tables = [{{ name = "*", ops = ["select"] }}]
"#
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let id = &self.id;
        let _ = Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-P3306", "-uroot", "-e"])
            .arg(format!(
                "DROP DATABASE IF EXISTS hx_{id}; DROP DATABASE IF EXISTS hx2_{id};
                 DROP USER IF EXISTS 'hxro_{id}'@'%'; DROP USER IF EXISTS 'hxrw_{id}'@'%';"
            ))
            .output();
    }
}

struct Env {
    addr: SocketAddr,
    signer: Arc<Ed25519Signer>,
    fixture: Fixture,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn start(tls: bool) -> Env {
        Env::start_with(tls, None)
    }

    fn start_with(tls: bool, check: Option<hexon_sql::wire::IdentityCheck>) -> Env {
        let fixture = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = if tls {
            let kp = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            let c = params.self_signed(&kp).unwrap();
            let cert = dir.path().join("sql.crt");
            let key = dir.path().join("sql.key");
            std::fs::write(&cert, c.pem()).unwrap();
            std::fs::write(&key, kp.serialize_pem()).unwrap();
            (Some(cert), Some(key))
        } else {
            (None, None)
        };
        let signer = Arc::new(Ed25519Signer::generate("k1").unwrap());
        let mut keys = KeySet::new();
        keys.insert("k1", signer.public_key(), None).unwrap();
        let config = BastionConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: cert,
            tls_key: key,
            dangerous_allow_plaintext: !tls,
            token_issuer: ISSUER.into(),
            token_audience: AUDIENCE.into(),
            verdict_cache: 1000,
            max_connections: 64,
            max_connections_per_user: 8,
            // Two dedicated session threads (the default is one per CPU).
            session_threads: Some(2),
            // Idle polling on (it engages when the CPU pressure is low)
            // and the threads pinned, sessions placed by their client's
            // CPU: sessions must behave the same either way.
            idle_poll_us: Some(100),
            pin_session_threads: Some(true),
        };
        let acl = Arc::new(Acl::from_toml(&fixture.acl()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut bastion = rt.block_on(MyBastion::bind(&config, acl, keys)).unwrap();
        if let Some(c) = check {
            bastion = bastion.with_identity_check(c);
        }
        let addr = bastion.local_addr().unwrap();
        rt.spawn(bastion.serve(std::future::pending()));
        Env {
            addr,
            signer,
            fixture,
            _dir: dir,
            rt,
        }
    }

    fn token(&self, user: &str, groups: &[&str]) -> String {
        let id = Identity::builder(format!("sub-{user}"), user)
            .groups(groups.iter().copied())
            .build()
            .unwrap();
        let issuer = JwtIssuer::new(self.signer.clone());
        let params = IssueParams::new(ISSUER, AUDIENCE, Duration::from_secs(300));
        self.rt
            .block_on(issuer.issue(&id, &params, UnixTime::now()))
            .unwrap()
    }

    /// The `mariadb` client through the bastion; the token goes in
    /// `MYSQL_PWD`.
    fn mariadb(&self, user: &str, token: &str, args: &[&str], sql: &str) -> Output {
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg("-h127.0.0.1")
            .arg(format!("-P{}", self.addr.port()))
            .arg(format!("-u{user}"))
            .args(["--batch", "--skip-column-names", "--connect-timeout=10"])
            .args(args)
            .args(["-e", sql])
            .env("MYSQL_PWD", token)
            .output()
            .unwrap()
    }

    fn ssl(&self, user: &str, token: &str, db: &str, sql: &str) -> Output {
        self.mariadb(user, token, &["--ssl", "-D", db], sql)
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn mariadb_client_reads_through_the_bastion_with_the_row_cap() {
    let env = Env::start(true);
    let tok = env.token("ana", &["analysts"]);
    let o = env.ssl("ana", &tok, "shop", "SELECT name FROM items WHERE id = 3");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "n3");
    // LIMIT injected: 5 of 20 rows.
    let o = env.ssl("ana", &tok, "shop", "SELECT id FROM items ORDER BY id");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        out(&o).split_whitespace().collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5"]
    );
    // Several statements, one per COM_QUERY (the client splits them).
    let o = env.ssl(
        "ana",
        &tok,
        "shop",
        "SELECT COUNT(*) FROM items; SHOW TABLES; SELECT DATABASE()",
    );
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let fixture_db = format!("hx_{}", env.fixture.id);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["20", "items", fixture_db.as_str()],
        "{text}"
    );
    // The server session is read-only too (defence in depth), and its
    // sql_mode has no quote-changing modes.
    let o = env.ssl(
        "ana",
        &tok,
        "shop",
        "SELECT @@session.tx_read_only, @@session.sql_mode LIKE '%ANSI_QUOTES%'",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).split_whitespace().collect::<Vec<_>>(), ["1", "0"]);
}

#[test]
fn read_only_role_cannot_write_or_touch_files() {
    let env = Env::start(true);
    let tok = env.token("ana", &["analysts"]);
    for sql in [
        "INSERT INTO items VALUES (100, 'x')",
        "UPDATE items SET name = 'x' WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        "SELECT * FROM items INTO OUTFILE '/tmp/hexon-out'",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET NAMES gbk",
        "SET SESSION TRANSACTION READ WRITE",
    ] {
        let o = env.ssl("ana", &tok, "shop", sql);
        assert!(!o.status.success(), "admitted: {sql}");
        assert!(err(&o).contains("ERROR"), "{sql}: {}", err(&o));
    }
    let o = env.ssl("ana", &tok, "shop", "INSERT INTO items VALUES (100, 'x')");
    assert!(err(&o).contains("ERROR 1792"), "{}", err(&o));
    // LOAD DATA LOCAL: refused by the pipeline, and the client is never
    // asked for a file (the capability is stripped).
    let o = env.mariadb(
        "ana",
        &tok,
        &["--ssl", "-D", "shop", "--local-infile=1"],
        "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE items",
    );
    assert!(!o.status.success());
    assert_eq!(env.fixture.count(), "20");
    assert!(!std::path::Path::new("/tmp/hexon-out").exists());
}

#[test]
fn stacked_queries_and_comment_tricks_are_refused() {
    let env = Env::start(true);
    let tok = env.token("wes", &["writers"]);
    for sql in [
        // One COM_QUERY with two statements (the client's delimiter is
        // changed so it sends them together).
        "delimiter //\nSELECT 1; DELETE FROM items WHERE id > 0//",
        "SELECT 1 /*!50000 ; DELETE FROM items WHERE id > 0 */",
        "SELECT 1 /*M! ; DELETE FROM items WHERE id > 0 */",
    ] {
        let o = env.ssl("wes", &tok, "shop", sql);
        assert!(!o.status.success(), "admitted: {sql}\n{}", out(&o));
    }
    // A backslash-escaped quote: the bastion lexes it as MySQL does, so
    // this is one string, sent on as one string (the server's sql_mode is
    // pinned to keep backslash escapes), and nothing is deleted.
    let o = env.ssl(
        "wes",
        &tok,
        "shop",
        "SELECT 'a\\'; DELETE FROM items WHERE id > 0; -- '",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "a'; DELETE FROM items WHERE id > 0; --");
    assert_eq!(env.fixture.count(), "20");
}

#[test]
fn write_role_writes_with_where_only() {
    let env = Env::start(true);
    let tok = env.token("wes", &["writers"]);
    let o = env.ssl(
        "wes",
        &tok,
        "shop",
        "INSERT INTO items VALUES (100, 'new'); UPDATE items SET name = 'upd' WHERE id = 100",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(
        root(&format!(
            "SELECT name FROM hx_{}.items WHERE id = 100",
            env.fixture.id
        )),
        "upd"
    );
    let o = env.ssl("wes", &tok, "shop", "DELETE FROM items");
    assert!(!o.status.success());
    assert!(err(&o).contains("ERROR"), "{}", err(&o));
    assert_eq!(env.fixture.count(), "21");
    // The database's real name, qualified: refused (it would name another
    // database on a server where the names differ).
    let o = env.ssl(
        "wes",
        &tok,
        "shop",
        &format!("SELECT * FROM hx_{}.items", env.fixture.id),
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("ERROR 1044"), "{}", err(&o));
}

#[test]
fn use_switches_between_databases_on_the_same_account() {
    let env = Env::start(true);
    let tok = env.token("ana", &["analysts"]);
    let o = env.ssl("ana", &tok, "shop", "USE shop2; SELECT id FROM things");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "7");
    // After the switch the new database's rules apply: items is not there.
    let o = env.ssl("ana", &tok, "shop", "USE shop2; SELECT id FROM items");
    assert!(!o.status.success());
    // Not configured, or not MySQL.
    for target in ["mysql", "pg"] {
        let o = env.ssl("ana", &tok, "shop", &format!("USE {target}"));
        assert!(!o.status.success(), "{target}");
        assert!(err(&o).contains("ERROR 1044"), "{target}: {}", err(&o));
    }
}

#[test]
fn login_failures_say_why() {
    let env = Env::start(true);
    let tok = env.token("ana", &["analysts"]);
    let cases: Vec<(Vec<&str>, &str, &str, &str)> = vec![
        (
            vec!["--skip-ssl", "-D", "shop"],
            "ana",
            tok.as_str(),
            "requires TLS",
        ),
        (
            vec!["--ssl", "-D", "shop"],
            "ana",
            "not-a-token",
            "gateway token",
        ),
        (
            vec!["--ssl", "-D", "shop"],
            "bob",
            tok.as_str(),
            "the token is for user",
        ),
        (
            vec!["--ssl", "-D", "nowhere"],
            "ana",
            tok.as_str(),
            "no access to database",
        ),
        (
            vec!["--ssl", "-D", "pg"],
            "ana",
            tok.as_str(),
            "not a MySQL database",
        ),
        (vec!["--ssl"], "ana", tok.as_str(), "name a database"),
    ];
    for (args, user, token, want) in cases {
        let o = env.mariadb(user, token, &args, "SELECT 1");
        assert!(!o.status.success(), "{args:?}");
        assert!(err(&o).contains(want), "{args:?}: {}", err(&o));
    }
    // A writer's groups do not reach the reader-only database shop2.
    let wes = env.token("wes", &["writers"]);
    let o = env.ssl("wes", &wes, "shop2", "SELECT 1");
    assert!(err(&o).contains("no access"), "{}", err(&o));
}

/// Prepared statements (COM_STMT_PREPARE / EXECUTE, the binary protocol)
/// with sqlx's MySQL driver, over a plaintext bastion (sqlx is built without
/// TLS here).
#[test]
fn prepared_statements_with_a_driver() {
    use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
    use sqlx::{ConnectOptions, Row};
    use std::sync::atomic::{AtomicBool, Ordering};
    let enabled = Arc::new(AtomicBool::new(true));
    let flag = enabled.clone();
    let env = Env::start_with(
        false,
        Some(Arc::new(move |_: &Identity| {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("user disabled")
            }
        })),
    );
    let tok = env.token("ana", &["analysts"]);
    let opts = MySqlConnectOptions::new()
        .host("127.0.0.1")
        .port(env.addr.port())
        .username("ana")
        .password(&tok)
        .database("shop")
        .ssl_mode(MySqlSslMode::Disabled)
        .enable_cleartext_plugin(true)
        // sqlx's connection-time SETs (NAMES, sql_mode, time_zone) are
        // exactly what the bastion refuses: every session is utf8mb4.
        .set_names(false)
        .pipes_as_concat(false)
        .no_engine_substitution(false)
        .timezone(None);
    env.rt.block_on(async {
        let mut c = opts.connect().await.expect("connect through the bastion");
        for _ in 0..3 {
            let rows = sqlx::query("SELECT id FROM items WHERE id > ? ORDER BY id")
                .bind(2)
                .fetch_all(&mut c)
                .await
                .unwrap();
            let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            assert_eq!(ids, [3, 4, 5, 6, 7]);
        }
        let e = sqlx::query("INSERT INTO items VALUES (?, 'x')")
            .bind(500)
            .execute(&mut c)
            .await
            .unwrap_err();
        let db = e.as_database_error().expect("a server error");
        assert_eq!(db.code().as_deref(), Some("25006"), "{db}");
        // The session goes on after a refusal.
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(n, 20);
        // The user is disabled: the open session's statements are refused,
        // and so is a new login.
        enabled.store(false, Ordering::SeqCst);
        let e = sqlx::query("SELECT COUNT(*) FROM items")
            .fetch_one(&mut c)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("may no longer use the bastion"),
            "{e}"
        );
        let e = opts.connect().await.unwrap_err();
        assert!(e.to_string().contains("may not log in"), "{e}");
    });
    assert_eq!(env.fixture.count(), "20");
}

/// Raw protocol: a client that asks for multi-statements, changes user, or
/// executes statements it never prepared.
#[test]
fn hostile_commands_on_the_wire() {
    use std::io::Write;
    let env = Env::start(false);
    let tok = env.token("ana", &["analysts"]);
    let mut s = TcpStream::connect(env.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let read = |s: &mut TcpStream| -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        (h[3], p)
    };
    let write = |s: &mut TcpStream, seq: u8, p: &[u8]| {
        let len = p.len();
        let mut b = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        b.extend_from_slice(p);
        s.write_all(&b).unwrap();
    };
    let (_, greeting) = read(&mut s);
    assert_eq!(greeting[0], 10);
    // Handshake response: protocol 4.1, secure connection, plugin auth,
    // LENENC data, CONNECT_WITH_DB, plus LOCAL_FILES and MULTI_STATEMENTS,
    // which the bastion must not pass on.
    let caps: u32 = 0x0000_0200 | 0x8000 | 0x8_0000 | 0x20_0000 | 0x8 | 0x80 | 0x1_0000;
    let mut hello = Vec::new();
    hello.extend_from_slice(&caps.to_le_bytes());
    hello.extend_from_slice(&(1u32 << 24).to_le_bytes());
    hello.push(45);
    hello.extend_from_slice(&[0u8; 23]);
    hello.extend_from_slice(b"ana\0");
    hello.push(0xFC);
    let pw = format!("{tok}\0");
    hello.extend_from_slice(&(pw.len() as u16).to_le_bytes());
    hello.extend_from_slice(pw.as_bytes());
    hello.extend_from_slice(b"shop\0mysql_clear_password\0");
    write(&mut s, 1, &hello);
    let (_, ok) = read(&mut s);
    assert_eq!(ok[0], 0, "login: {}", String::from_utf8_lossy(&ok));
    // Multi-statements were asked for at login but not passed on: a stacked
    // query is refused by the pipeline anyway, and the server would refuse
    // it too.
    write(&mut s, 0, b"\x03SELECT 1; SELECT 2");
    let (_, e) = read(&mut s);
    assert_eq!(e[0], 0xFF);
    // Turning them on later.
    write(&mut s, 0, &[0x1b, 0, 0]);
    let (_, e) = read(&mut s);
    assert_eq!(e[0], 0xFF);
    // Executing a statement id nobody prepared through the bastion.
    write(&mut s, 0, &[0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0]);
    let (_, e) = read(&mut s);
    assert_eq!(e[0], 0xFF);
    assert_eq!(u16::from_le_bytes([e[1], e[2]]), 1243);
    // The session is still good.
    write(&mut s, 0, b"\x03SELECT 41 + 1");
    let mut rows = Vec::new();
    loop {
        let (_, p) = read(&mut s);
        let eof = p[0] == 0xFE && p.len() < 9;
        rows.push(p);
        if eof && rows.len() > 3 {
            break;
        }
    }
    assert_eq!(rows[3], b"\x0242");
    // Changing user ends the session.
    write(&mut s, 0, b"\x11root\0");
    let (_, e) = read(&mut s);
    assert_eq!(e[0], 0xFF);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
}

/// A throwaway MariaDB server with TLS (its own data directory, port and
/// certificate), for the upstream-TLS test: the machine's server has TLS
/// off.
struct TlsMariadb {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsMariadb {
    fn start() -> TlsMariadb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let o = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .output()
            .expect("mariadb-install-db (Debian package mariadb-server)");
        assert!(o.status.success(), "{}", err(&o));
        let kp = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&kp).unwrap();
        let ca = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        let port = hexon_core::testing::free_port();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("s.sock").display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"])
            .arg(format!("--ssl-cert={}", ca.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = TlsMariadb {
            child,
            port,
            ca,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let o = server.root("SELECT 1");
            if o.status.success() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS MariaDB did not start: {}",
                err(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let o = server.root(
            "CREATE DATABASE tls_db; CREATE TABLE tls_db.items (id INT PRIMARY KEY); INSERT INTO tls_db.items VALUES (1), (2)",
        );
        assert!(o.status.success(), "{}", err(&o));
        server
    }

    fn root(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uroot", "--skip-ssl"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .unwrap()
    }
}

impl Drop for TlsMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_to_the_upstream_server() {
    let server = TlsMariadb::start();
    let acl = format!(
        r#"
[[databases]]
name = "secure"
dialect = "mysql"
upstream = "127.0.0.1:{port}"
upstream_database = "tls_db"
upstream_tls = "verify"
upstream_ca = "{ca}"
upstream_tls_name = "localhost"
[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
upstream_user = "root"
tables = [{{ name = "secure.*", ops = ["select"] }}]

[[databases]]
name = "wrong_name"
dialect = "mysql"
upstream = "127.0.0.1:{port}"
upstream_database = "tls_db"
upstream_tls = "verify"
upstream_ca = "{ca}"
upstream_tls_name = "db.internal"
[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
upstream_user = "root"
tables = [{{ name = "wrong_name.*", ops = ["select"] }}]

[[databases]]
name = "no_tls"
dialect = "mysql"
upstream = "{MARIADB}"
upstream_database = "test"
upstream_tls = "require"
[[databases.roles]]
name = "reader"
groups = ["analysts"]
read_only = true
upstream_user = "root"
tables = [{{ name = "no_tls.*", ops = ["select"] }}]
"#,
        port = server.port,
        ca = server.ca.display(),
    );
    let signer = Arc::new(Ed25519Signer::generate("k1").unwrap());
    let mut keys = KeySet::new();
    keys.insert("k1", signer.public_key(), None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = BastionConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: None,
        tls_key: None,
        dangerous_allow_plaintext: true,
        token_issuer: ISSUER.into(),
        token_audience: AUDIENCE.into(),
        verdict_cache: 100,
        max_connections: 64,
        max_connections_per_user: 8,
        // Sessions on the test's own runtime.
        session_threads: Some(0),
        idle_poll_us: Some(0),
        pin_session_threads: Some(false),
    };
    let bastion = rt
        .block_on(MyBastion::bind(
            &config,
            Arc::new(Acl::from_toml(&acl).unwrap()),
            keys,
        ))
        .unwrap();
    let port = bastion.local_addr().unwrap().port();
    rt.spawn(bastion.serve(std::future::pending()));
    let id = Identity::builder("sub-ana", "ana")
        .groups(["analysts"])
        .build()
        .unwrap();
    let token = rt
        .block_on(JwtIssuer::new(signer).issue(
            &id,
            &IssueParams::new(ISSUER, AUDIENCE, Duration::from_secs(300)),
            UnixTime::now(),
        ))
        .unwrap();
    let run = |db: &str, sql: &str| {
        Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uana", "--skip-ssl"])
            .args(["--batch", "--skip-column-names"])
            .arg(format!("-P{port}"))
            .args(["-D", db, "-e", sql])
            .env("MYSQL_PWD", &token)
            .output()
            .unwrap()
    };
    let o = run("secure", "SELECT id FROM items ORDER BY id");
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
    // The server reports the bastion's connection as encrypted.
    let o = run("secure", "SHOW SESSION STATUS LIKE 'Ssl_version'");
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("TLSv1."), "{}", out(&o));
    // Another name than the certificate's: refused, no plain fallback.
    let o = run("wrong_name", "SELECT 1");
    assert!(!o.status.success());
    assert!(
        err(&o).contains("TLS to the database server failed"),
        "{}",
        err(&o)
    );
    // A server without TLS when TLS is required.
    let o = run("no_tls", "SELECT 1");
    assert!(!o.status.success());
    assert!(err(&o).contains("does not offer TLS"), "{}", err(&o));
}

#[test]
fn sessions_per_user_are_limited() {
    use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
    use sqlx::{ConnectOptions, Connection};
    let env = Env::start(false);
    let opts = |user: &str, token: &str| {
        MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(env.addr.port())
            .username(user)
            .password(token)
            .database("shop")
            .ssl_mode(MySqlSslMode::Disabled)
            .enable_cleartext_plugin(true)
            .set_names(false)
            .pipes_as_concat(false)
            .no_engine_substitution(false)
            .timezone(None)
    };
    let ana = env.token("ana", &["analysts"]);
    let wes = env.token("wes", &["writers"]);
    env.rt.block_on(async {
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(opts("ana", &ana).connect().await.unwrap());
        }
        let e = opts("ana", &ana).connect().await.unwrap_err();
        assert!(e.to_string().contains("too many sessions"), "{e}");
        // Another user is not affected.
        let w = opts("wes", &wes).connect().await.unwrap();
        w.close().await.unwrap();
        // A session ending frees its slot.
        open.pop().unwrap().close().await.unwrap();
        let mut again = None;
        for _ in 0..50 {
            if let Ok(c) = opts("ana", &ana).connect().await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(again.is_some(), "the freed slot was not reused");
    });
}
