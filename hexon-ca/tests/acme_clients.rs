//! Real ACME clients against Hexon's ACME server: certbot and lego
//! register, obtain (http-01, tls-alpn-01, dns-01), renew and revoke; the
//! chains verify with `openssl verify`; revocations show in OCSP and CRLs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;

use common::*;

async fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} runs (apt-get install certbot lego pebble): {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn verify_chain(h: &AcmeHarness, chain: &Path) {
    let int = h.t.path("tls-server.crt");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        &h.root_pem,
        "-untrusted",
        int.to_str().unwrap(),
        "-purpose",
        "sslserver",
        chain.to_str().unwrap(),
    ]);
    assert!(ok, "openssl verify: {out}");
}

fn ocsp_status(h: &AcmeHarness, cert: &Path) -> String {
    let int = h.t.path("tls-server.crt");
    let url = h.directory.replace("/acme/directory", "/ca/ocsp");
    let (ok, out) = openssl(&[
        "ocsp",
        "-issuer",
        int.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-url",
        &url,
        "-CAfile",
        &h.root_pem,
        "-VAfile",
        &h.root_pem,
        "-no_nonce",
    ]);
    assert!(ok, "{out}");
    out
}

fn serial_of(cert: &Path) -> String {
    let (ok, out) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"]);
    assert!(ok, "{out}");
    out.trim().trim_start_matches("serial=").to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_registers_obtains_renews_and_revokes_over_http_01() {
    let h = acme_harness(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let d = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
    let port = h.http01_port.to_string();
    let base: Vec<String> = vec![
        "--non-interactive".into(),
        "--server".into(),
        h.directory.clone(),
        "--config-dir".into(),
        d("config"),
        "--work-dir".into(),
        d("work"),
        "--logs-dir".into(),
        d("logs"),
    ];
    let env = [("REQUESTS_CA_BUNDLE", h.root_pem.as_str())];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        a.extend(base.iter().cloned());
        a
    };
    let call = |a: Vec<String>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run("certbot", &refs, &env).await
    };

    let (ok, out) = call(args(&["register", "--agree-tos", "-m", "ops@example.test"])).await;
    assert!(ok, "certbot register: {out}");
    let (ok, out) = call(args(&[
        "certonly",
        "--standalone",
        "--http-01-port",
        &port,
        "-d",
        "www.example.test",
        "-d",
        "api.example.test",
        "--cert-name",
        "www",
    ]))
    .await;
    assert!(ok, "certbot certonly: {out}");
    let live = dir.path().join("config/live/www");
    verify_chain(&h, &live.join("fullchain.pem"));
    let (_, text) = openssl(&[
        "x509",
        "-in",
        live.join("cert.pem").to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        text.contains("DNS:www.example.test") && text.contains("DNS:api.example.test"),
        "{text}"
    );
    let first = serial_of(&live.join("cert.pem"));
    let rec =
        h.t.ca
            .find(&first)
            .await
            .unwrap()
            .expect("recorded in the store");
    assert!(
        rec.requester.as_deref().unwrap().starts_with("acme:"),
        "{rec:?}"
    );

    // Renew (forced: the certificate is fresh).
    let (ok, out) = call(args(&[
        "renew",
        "--force-renewal",
        "--no-random-sleep-on-renew",
        "--standalone",
        "--http-01-port",
        &port,
    ]))
    .await;
    assert!(ok, "certbot renew: {out}");
    let second = serial_of(&live.join("cert.pem"));
    assert_ne!(first, second, "renewal made a new certificate");
    verify_chain(&h, &live.join("fullchain.pem"));

    // Revoke; OCSP and the CRL say so.
    let cert = live.join("cert.pem");
    assert!(ocsp_status(&h, &cert).contains(": good"));
    let (ok, out) = call(args(&[
        "revoke",
        "--cert-path",
        cert.to_str().unwrap(),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    ]))
    .await;
    assert!(ok, "certbot revoke: {out}");
    let status = ocsp_status(&h, &cert);
    assert!(status.contains(": revoked"), "{status}");
    let crl = h.t.ca.crl("tls-server").await.unwrap();
    let crl_path = write(dir.path(), "crl.der", &crl.der);
    let (_, text) = openssl(&["crl", "-inform", "DER", "-in", &crl_path, "-noout", "-text"]);
    assert!(text.to_lowercase().contains(&second), "{text}");

    // A name outside the profile's rules is refused with the ACME error.
    let (ok, out) = call(args(&[
        "certonly",
        "--standalone",
        "--http-01-port",
        &port,
        "-d",
        "www.elsewhere.test",
        "--cert-name",
        "bad",
    ]))
    .await;
    assert!(!ok, "issued outside the rules: {out}");
    // Debian's certbot 2.1 crashes in josepy while printing any ACME error
    // ("AttributeError: can't set attribute"); the error it got is in its log.
    let log = std::fs::read_to_string(dir.path().join("logs/letsencrypt.log")).unwrap();
    assert!(
        log.contains("urn:ietf:params:acme:error:rejectedIdentifier")
            && log.contains("outside the names the tls-server profile allows"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_obtains_over_tls_alpn_01_and_dns_01_renews_and_revokes() {
    let h = acme_harness(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let env_ca = [("LEGO_CA_CERTIFICATES", h.root_pem.as_str())];
    let lego = |extra: Vec<String>| {
        let mut a = vec![
            "--accept-tos".to_owned(),
            "--server".into(),
            h.directory.clone(),
            "--email".into(),
            "ops@example.test".into(),
            "--path".into(),
            path.clone(),
        ];
        a.extend(extra);
        a
    };
    let call = |a: Vec<String>, env: Vec<(String, String)>| async move {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut envs: Vec<(&str, &str)> = env_ca.to_vec();
        envs.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run("lego", &refs, &envs).await
    };

    // tls-alpn-01.
    let tls = format!(":{}", h.tls_alpn01_port);
    let (ok, out) = call(
        lego(vec![
            "--tls".into(),
            "--tls.port".into(),
            tls.clone(),
            "-d".into(),
            "tls.example.test".into(),
            "run".into(),
        ]),
        vec![],
    )
    .await;
    assert!(ok, "lego run --tls: {out}");
    let cert = dir.path().join("certificates/tls.example.test.crt");
    verify_chain(&h, &cert);

    // dns-01 through the test DNS server's API.
    let hook = dir.path().join("dns-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\ncase \"$1\" in\n present) curl -sf -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" http://127.0.0.1:{m}/set-txt ;;\n cleanup) curl -sf -d \"{{\\\"host\\\":\\\"$2\\\"}}\" http://127.0.0.1:{m}/clear-txt ;;\nesac\n",
            m = h.dns.management
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Solved one after the other (the wildcard and the bare name share a
    // TXT name); lego waits 60 s between them unless told otherwise.
    let dns_env = vec![
        ("EXEC_PATH".to_owned(), hook.to_str().unwrap().to_owned()),
        ("EXEC_SEQUENCE_INTERVAL".to_owned(), "1".to_owned()),
    ];
    let dns_args = |cmd: Vec<String>| {
        let mut a = vec![
            "--dns".to_owned(),
            "exec".into(),
            "--dns.disable-cp".into(),
            "--dns.resolvers".into(),
            h.dns.dns.to_string(),
            "-d".into(),
            "*.wild.example.test".into(),
            "-d".into(),
            "wild.example.test".into(),
        ];
        a.extend(cmd);
        lego(a)
    };
    let (ok, out) = call(dns_args(vec!["run".into()]), dns_env.clone()).await;
    assert!(ok, "lego run --dns: {out}");
    let wild = dir.path().join("certificates/_.wild.example.test.crt");
    verify_chain(&h, &wild);
    let (_, text) = openssl(&[
        "x509",
        "-in",
        wild.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(text.contains("DNS:*.wild.example.test"), "{text}");

    // Renew (our certificates live 7 days: "within 30 days" is now).
    let before = serial_of(&wild);
    let (ok, out) = call(
        dns_args(vec![
            "renew".into(),
            "--no-random-sleep".into(),
            "--days".into(),
            "30".into(),
        ]),
        dns_env.clone(),
    )
    .await;
    assert!(ok, "lego renew: {out}");
    assert_ne!(serial_of(&wild), before);

    // Revoke.
    let (ok, out) = call(
        lego(vec![
            "--tls".into(),
            "--tls.port".into(),
            tls,
            "-d".into(),
            "tls.example.test".into(),
            "revoke".into(),
            "--keep".into(),
        ]),
        vec![],
    )
    .await;
    assert!(ok, "lego revoke: {out}");
    assert!(ocsp_status(&h, &cert).contains(": revoked"));
}
