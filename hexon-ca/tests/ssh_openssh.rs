//! The SSH certificate authority against real OpenSSH: `ssh-keygen -L`
//! parses (and verifies) what it issues, and an sshd started here accepts a
//! valid user certificate and refuses expired ones, ones for another
//! principal, ones from another CA, ones whose critical options exclude the
//! connection; the ssh client accepts the host certificate only under the
//! name it carries.
//!
//! Needs `ssh`, `ssh-keygen` and `/usr/sbin/sshd` (scripts/install-test-deps);
//! runs as root (sshd logs in the current user).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hexon_ca::setup::{CaConfig, open_ssh};
use hexon_ca::{HostCertRequest, SshCa, SshIssued, SshPublicKey, UserCertRequest};
use hexon_core::UnixTime;
use hexon_core::store::{MemoryStore, SecretKeys};
use http_body_util::BodyExt;

const SSHD: &str = "/usr/sbin/sshd";
const HOST: &str = "sshd.example.test";

fn need(tool: &str) {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        found,
        "{tool} is missing: run scripts/install-test-deps (it installs openssh-server and openssh-client)"
    );
}

/// Run a command; (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh key pair from ssh-keygen; returns the private key path.
fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    need("ssh-keygen");
    let path = dir.join(name);
    let (ok, _, err) = run(Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path));
    assert!(ok, "ssh-keygen {args:?}: {err}");
    path
}

fn public_key(private: &Path) -> SshPublicKey {
    let text = std::fs::read_to_string(format!("{}.pub", private.display())).unwrap();
    SshPublicKey::parse(&text).unwrap()
}

/// `ssh-keygen -L` of a certificate (in UTC); panics if it does not parse.
fn keygen_list(dir: &Path, issued: &SshIssued) -> String {
    let path = common::write(dir, "list-cert.pub", format!("{}\n", issued.certificate));
    let (ok, out, err) = run(Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .args(["-L", "-f", &path]));
    assert!(ok, "ssh-keygen -L refused our certificate: {err}");
    out
}

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([9; 32]))))
}

/// `[ca]` with `[ca.ssh]` as an operator writes it.
fn config(extra: &str) -> CaConfig {
    let text = format!(
        r#"
[ssh]
{extra}
host_domains = ["example.test"]
[ssh.groups]
ops = ["deploy", "backup"]
"#
    );
    CaConfig::from_toml(toml::from_str(&text).unwrap()).unwrap()
}

fn ssh_ca(cfg: &CaConfig, dir: &Path) -> SshCa {
    open_ssh(cfg, dir, store())
        .unwrap()
        .expect("[ca.ssh] is configured")
}

fn utc(t: UnixTime) -> String {
    jiff::Timestamp::from_second(t.as_secs())
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

#[tokio::test]
async fn ssh_keygen_reads_user_and_host_certificates() {
    let dir = tempfile::tempdir().unwrap();
    for (alg, ca_type) in [
        ("", "ED25519"),
        ("key_algorithm = \"ecdsa-p256-sha256\"", "ECDSA"),
    ] {
        let ca_dir = dir.path().join(if alg.is_empty() { "ed" } else { "ec" });
        let ca = ssh_ca(&config(alg), &ca_dir);
        for (key, ktype) in [
            (
                keygen(&ca_dir, "id_ed25519", &["-t", "ed25519"]),
                "ssh-ed25519-cert-v01@openssh.com",
            ),
            (
                keygen(&ca_dir, "id_rsa", &["-t", "rsa", "-b", "2048"]),
                "ssh-rsa-cert-v01@openssh.com",
            ),
        ] {
            let mut req = UserCertRequest::new(public_key(&key), "alice", &["ops".into()]);
            req.principals = vec!["alice".into(), "deploy".into()];
            req.key_id = Some("alice@example.test:via-hexon".into());
            req.force_command = Some("/usr/bin/rsync --server".into());
            req.source_address = vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
            ];
            req.extensions = Some(vec!["permit-pty".into(), "permit-port-forwarding".into()]);
            let issued = ca.issue_user(&req).await.unwrap();
            let listing = keygen_list(&ca_dir, &issued);
            let lines: Vec<&str> = listing.lines().map(str::trim).collect();
            let has = |l: &str| {
                assert!(lines.contains(&l), "missing {l:?} in:\n{listing}");
            };
            has(&format!("Type: {ktype} user certificate"));
            has(&format!(
                "Signing CA: {ca_type} {} (using {})",
                ca.user_ca_fingerprint(),
                if ca_type == "ED25519" {
                    "ssh-ed25519"
                } else {
                    "ecdsa-sha2-nistp256"
                }
            ));
            has("Key ID: \"alice@example.test:via-hexon\"");
            has(&format!("Serial: {}", issued.serial));
            has(&format!(
                "Valid: from {} to {}",
                utc(issued.valid_after),
                utc(issued.valid_before)
            ));
            assert_eq!(
                issued.valid_before.since(issued.valid_after),
                Duration::from_secs(8 * 3600 + 300),
                "default 8h, backdated 5 minutes"
            );
            let section = |name: &str| -> Vec<&str> {
                let start = lines
                    .iter()
                    .position(|l| *l == name)
                    .unwrap_or_else(|| panic!("no {name} in\n{listing}"));
                lines[start + 1..]
                    .iter()
                    .take_while(|l| !l.ends_with(':') && !l.contains(": "))
                    .copied()
                    .collect()
            };
            assert_eq!(section("Principals:"), ["alice", "deploy"]);
            assert_eq!(
                section("Critical Options:"),
                [
                    "force-command /usr/bin/rsync --server",
                    "source-address 10.0.0.0/8,192.0.2.7/32"
                ]
            );
            assert_eq!(
                section("Extensions:"),
                ["permit-port-forwarding", "permit-pty"]
            );
        }

        // A host certificate.
        let host_key = keygen(&ca_dir, "ssh_host_ed25519_key", &["-t", "ed25519"]);
        let issued = ca
            .issue_host(&HostCertRequest {
                public_key: public_key(&host_key),
                names: vec![HOST.into(), "example.test".into()],
                key_id: None,
                valid_for: Some(Duration::from_secs(7 * 86_400)),
                requester: Some("test".into()),
            })
            .await
            .unwrap();
        let listing = keygen_list(&ca_dir, &issued);
        assert!(
            listing.contains("Type: ssh-ed25519-cert-v01@openssh.com host certificate"),
            "{listing}"
        );
        assert!(
            listing.contains(&format!(
                "Signing CA: {ca_type} {}",
                ca.host_ca_fingerprint()
            )),
            "{listing}"
        );
        assert!(listing.contains("Key ID: \"example.test\""), "{listing}");
        assert!(
            listing.contains(&format!(
                "Valid: from {} to {}",
                utc(issued.valid_after),
                utc(issued.valid_before)
            )),
            "{listing}"
        );
        assert!(
            listing.contains(
                "Principals: \n                example.test\n                sshd.example.test\n"
            ),
            "{listing}"
        );
        assert!(
            listing.contains("Critical Options: (none)") && listing.contains("Extensions: (none)"),
            "{listing}"
        );
        assert_ne!(
            ca.user_ca_fingerprint(),
            ca.host_ca_fingerprint(),
            "two CA keys"
        );
    }
}

/// An sshd on a free port, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, host_key: &Path, host_cert: &Path, user_ca_pub: &Path) -> Sshd {
        need(SSHD);
        // Privilege separation needs its empty directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = common::free_port();
        let config = common::write(
            dir,
            "sshd_config",
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 HostCertificate {}\n\
                 TrustedUserCAKeys {}\n\
                 AuthorizedKeysFile none\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile none\n\
                 PermitRootLogin prohibit-password\n\
                 LogLevel VERBOSE\n",
                host_key.display(),
                host_cert.display(),
                user_ca_pub.display()
            ),
        );
        let log = dir.join("sshd.log");
        let (ok, _, err) = run(Command::new(SSHD).args(["-t", "-f", &config]));
        assert!(ok, "sshd -t refused the test configuration: {err}");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f", &config, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sshd starts");
        let mut sshd = Sshd { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = sshd.child.try_wait().unwrap() {
                panic!("sshd exited ({status}): {}", sshd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                sshd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines written since `mark` (a previous `log_text().len()`).
    fn log_since(&self, mark: usize) -> String {
        // sshd writes a connection's lines as it handles it; give the last
        // ones a moment to land.
        std::thread::sleep(Duration::from_millis(200));
        self.log_text().get(mark..).unwrap_or_default().to_owned()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh … root@127.0.0.1 echo hello` with `key` and `cert`, trusting hosts
/// through `known_hosts` only, calling the server `alias`.
fn ssh(
    sshd: &Sshd,
    dir: &Path,
    key: &Path,
    cert: &str,
    known_hosts: &str,
    alias: &str,
    user: &str,
) -> (bool, String, String) {
    need("ssh");
    let cert_path = common::write(dir, "try-cert.pub", format!("{cert}\n"));
    run(Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
        ])
        .arg("-i")
        .arg(key)
        .args(["-o", &format!("CertificateFile={cert_path}")])
        .args([
            "-o",
            &format!("UserKnownHostsFile={known_hosts}"),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("HostKeyAlias={alias}"),
        ])
        .args(["-o", "ConnectTimeout=10", "-p", &sshd.port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
        .args(["echo", "hello"]))
}

/// The current user's name (the tests run as root in CI).
fn login_name() -> String {
    let (ok, out, err) = run(Command::new("id").arg("-un"));
    assert!(ok, "id -un: {err}");
    out.trim().to_owned()
}

async fn fetch(http: &hexon_ca::CaHttp, path: &str) -> String {
    let req = http::Request::get(format!("/ca{path}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = http.call(req).await;
    assert_eq!(resp.status(), 200, "GET {path}");
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn sshd_accepts_valid_user_certificates_and_refuses_the_rest() {
    let me = login_name();
    let x509 = common::test_ca(&common::config(None)).await;
    let dir = x509.dir.path();
    let ca = Arc::new(ssh_ca(&config(""), dir));
    let ocsp = Arc::new(hexon_ca::OcspResponder::new(
        x509.ca.clone(),
        Default::default(),
    ));
    let http = hexon_ca::CaHttp::new(x509.ca.clone(), ocsp, "/ca").with_ssh(ca.clone());

    // What operators fetch: the user CA key for sshd, the known_hosts line
    // for clients.
    let user_ca_pub = fetch(&http, "/ssh/user_ca.pub").await;
    assert_eq!(user_ca_pub.trim(), ca.user_ca_openssh());
    assert_eq!(
        fetch(&http, "/ssh/host_ca.pub").await.trim(),
        ca.host_ca_openssh()
    );
    let known_hosts_line = fetch(&http, "/ssh/known_hosts").await;
    assert!(
        known_hosts_line.starts_with("@cert-authority *.example.test,example.test ssh-ed25519 "),
        "{known_hosts_line}"
    );
    let user_ca_path = PathBuf::from(common::write(dir, "user_ca.pub", &user_ca_pub));
    let known_hosts = common::write(dir, "known_hosts", &known_hosts_line);

    let host_key = keygen(dir, "ssh_host_ed25519_key", &["-t", "ed25519"]);
    let host_cert = ca
        .issue_host(&HostCertRequest {
            public_key: public_key(&host_key),
            names: vec![HOST.into()],
            key_id: None,
            valid_for: None,
            requester: None,
        })
        .await
        .unwrap();
    let host_cert_path = PathBuf::from(common::write(
        dir,
        "ssh_host_ed25519_key-cert.pub",
        format!("{}\n", host_cert.certificate),
    ));
    let sshd = Sshd::start(dir, &host_key, &host_cert_path, &user_ca_path);

    let key = keygen(dir, "id_ed25519", &["-t", "ed25519"]);
    let mut req = UserCertRequest::new(public_key(&key), &me, &[]);
    req.key_id = Some(format!("{me}-valid"));
    let valid = ca.issue_user(&req).await.unwrap();
    assert_eq!(
        valid.principals,
        std::slice::from_ref(&me),
        "the user name is the default principal"
    );

    // 1. A valid certificate: in, and the host certificate checked out
    //    (StrictHostKeyChecking with only the @cert-authority line).
    let mark = sshd.log_text().len();
    let (ok, out, err) = ssh(
        &sshd,
        dir,
        &key,
        &valid.certificate,
        &known_hosts,
        HOST,
        &me,
    );
    assert!(
        ok && out.trim() == "hello",
        "a valid certificate was refused: {err}\nsshd: {}",
        sshd.log_text()
    );
    let log = sshd.log_since(mark);
    assert!(
        log.contains(&format!("ID {me}-valid (serial {})", valid.serial))
            && log.contains(&ca.user_ca_fingerprint().to_string()),
        "sshd did not log our certificate: {log}"
    );

    let refused =
        |what: &str, (ok, out, err): (bool, String, String), mark: usize, sshd_says: &str| {
            // sshd logs why, then "Failed publickey" for the certificate.
            assert!(!ok && !out.contains("hello"), "{what}: let in ({out}{err})");
            assert!(
                err.contains("Permission denied"),
                "{what}: refused for another reason: {err}"
            );
            let log = sshd.log_since(mark);
            assert!(
                log.contains(sshd_says),
                "{what}: sshd did not say {sshd_says:?}: {log}"
            );
        };

    // 2. Expired: issued two days ago for an hour.
    let mut old = req.clone();
    old.valid_for = Some(Duration::from_secs(3600));
    let expired = ca
        .issue_user_at(
            &old,
            UnixTime::now().saturating_sub(Duration::from_secs(2 * 86_400)),
        )
        .await
        .unwrap();
    let mark = sshd.log_text().len();
    refused(
        "an expired certificate",
        ssh(
            &sshd,
            dir,
            &key,
            &expired.certificate,
            &known_hosts,
            HOST,
            &me,
        ),
        mark,
        "Certificate invalid: expired",
    );

    // 3. For another principal.
    let other = ca
        .issue_user(&UserCertRequest::new(public_key(&key), "someone-else", &[]))
        .await
        .unwrap();
    let mark = sshd.log_text().len();
    refused(
        "a certificate for another principal",
        ssh(
            &sshd,
            dir,
            &key,
            &other.certificate,
            &known_hosts,
            HOST,
            &me,
        ),
        mark,
        "Certificate invalid: name is not a listed principal",
    );

    // 4. From another CA (same policy, its own keys).
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = ssh_ca(&config(""), other_dir.path());
    let foreign = stranger.issue_user(&req).await.unwrap();
    let mark = sshd.log_text().len();
    refused(
        "a certificate from another CA",
        ssh(
            &sshd,
            dir,
            &key,
            &foreign.certificate,
            &known_hosts,
            HOST,
            &me,
        ),
        mark,
        // The CA key is not in TrustedUserCAKeys: no reason line, just the failure.
        &format!(
            "ID {me}-valid (serial {}) CA ED25519 {}",
            foreign.serial,
            stranger.user_ca_fingerprint()
        ),
    );

    // 5. source-address that excludes 127.0.0.1.
    let mut elsewhere = req.clone();
    elsewhere.source_address = vec!["192.0.2.0/24".parse().unwrap()];
    let elsewhere = ca.issue_user(&elsewhere).await.unwrap();
    let mark = sshd.log_text().len();
    refused(
        "a certificate for another source address",
        ssh(
            &sshd,
            dir,
            &key,
            &elsewhere.certificate,
            &known_hosts,
            HOST,
            &me,
        ),
        mark,
        "not from a permitted source address",
    );

    // 6. force-command replaces the command.
    let mut forced = req.clone();
    forced.force_command = Some("echo forced".into());
    let forced = ca.issue_user(&forced).await.unwrap();
    let (ok, out, err) = ssh(
        &sshd,
        dir,
        &key,
        &forced.certificate,
        &known_hosts,
        HOST,
        &me,
    );
    assert!(
        ok && out.trim() == "forced",
        "force-command was not applied: {out}{err}"
    );

    // 7. The host certificate does not name the host the client thinks it
    //    is talking to: the client refuses (before authenticating).
    let (ok, out, err) = ssh(
        &sshd,
        dir,
        &key,
        &valid.certificate,
        &known_hosts,
        "other.example.test",
        &me,
    );
    assert!(
        !ok && !out.contains("hello"),
        "a host certificate for another name was accepted"
    );
    assert!(
        err.contains("Certificate invalid: name is not a listed principal")
            && err.contains("Host key verification failed"),
        "{err}"
    );
    // A host the @cert-authority line does not cover: no trust at all.
    let (ok, _, err) = ssh(
        &sshd,
        dir,
        &key,
        &valid.certificate,
        &known_hosts,
        "sshd.elsewhere.test",
        &me,
    );
    assert!(
        !ok && err.contains("No ED25519 host key is known for sshd.elsewhere.test"),
        "{err}"
    );
}

#[tokio::test]
async fn ssh_config_is_validated() {
    let bad = |text: &str, needle: &str| {
        let table: toml::Table = toml::from_str(text).unwrap();
        match CaConfig::from_toml(table) {
            Err(e) => assert!(e.to_string().contains(needle), "{e}"),
            Ok(_) => panic!("accepted {text}"),
        }
    };
    bad(
        "[ssh]\nuser_lifetim = \"1h\"",
        "unknown field `user_lifetim`",
    );
    bad(
        "[ssh]\nuser_lifetime = \"48h\"",
        "ssh.user_lifetime is longer than user_max_lifetime",
    );
    bad(
        "[ssh]\nextensions = [\"permit-all\"]",
        "ssh.extensions: unknown extension \"permit-all\"",
    );
    bad(
        "[ssh.groups]\nops = [\"-oProxyCommand\"]",
        "ssh.groups.ops: principal",
    );
    bad(
        "[ssh]\nhost_domains = [\"exa mple.test\"]",
        "ssh.host_domains",
    );
    bad("[ssh]\nkey_algorithm = \"rsa\"", "ssh.key_algorithm");

    // Keys: created once (0600), the same on reopening.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("");
    let first = ssh_ca(&cfg, dir.path());
    use std::os::unix::fs::PermissionsExt as _;
    for name in ["ssh_user_ca.key", "ssh_host_ca.key"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let again = ssh_ca(&cfg, dir.path());
    assert_eq!(first.user_ca_openssh(), again.user_ca_openssh());
    assert_eq!(first.host_ca_openssh(), again.host_ca_openssh());
    // No [ca.ssh]: no SSH CA.
    assert!(
        open_ssh(&CaConfig::default(), dir.path(), store())
            .unwrap()
            .is_none()
    );
}
