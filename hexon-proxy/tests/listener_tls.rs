//! TLS listeners over real sockets: SNI selection, reload, fail-closed
//! loading, client certificates, dev certificates, version limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod listener_support;

use std::time::{Duration, SystemTime};

use hexon_proxy::listener::{Listener, ListenerSettings, ServerHandle};
use hexon_proxy::tls::{
    ClientAuth, DevCertificate, MinTlsVersion, ServerTls, TlsError, TlsSettings,
};
use listener_support::*;

async fn serve(tls: ServerTls) -> ServerHandle {
    let l = Listener::bind(ListenerSettings::new("tls", localhost()), Some(tls))
        .await
        .unwrap();
    l.serve(service())
}

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default() {
    let dir = temp_dir("sni");
    let ca = Ca::new("test CA");
    let default = ca.leaf(&["default.test"]);
    let exact = ca.leaf(&["a.example.com"]);
    let wild = ca.leaf(&["*.example.com"]);
    let settings = TlsSettings::new(vec![
        default.write(&dir, "default"),
        exact.write(&dir, "exact"),
        wild.write(&dir, "wild"),
    ]);
    let tls = ServerTls::load(settings).unwrap();
    let certs = tls.certificates();
    assert_eq!(certs.len(), 3);
    assert!(certs[0].default);
    assert_eq!(certs[2].names, vec!["*.example.com".to_owned()]);
    let server = serve(tls).await;
    let addr = server.local_addr();

    assert_eq!(served_cert(addr, "a.example.com").await, exact.der);
    assert_eq!(served_cert(addr, "A.Example.COM").await, exact.der);
    assert_eq!(served_cert(addr, "b.example.com").await, wild.der);
    // A wildcard covers one label only.
    assert_eq!(served_cert(addr, "x.b.example.com").await, default.der);
    assert_eq!(served_cert(addr, "example.com").await, default.der);
    assert_eq!(served_cert(addr, "unknown.test").await, default.der);

    // A verifying client gets a certificate valid for its name.
    let s = tls_connect(addr, "b.example.com", client_trusting(ca.der(), None, &[]))
        .await
        .unwrap();
    let (status, body) = get_h1(s, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("scheme=https sni=b.example.com alpn= chain=0"),
        "{body}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn reload_swaps_certificates_and_failed_reload_keeps_old() {
    let dir = temp_dir("reload");
    let ca = Ca::new("test CA");
    let first = ca.leaf(&["a.example.com"]);
    let files = first.write(&dir, "site");
    let tls = ServerTls::load(TlsSettings::new(vec![files.clone()])).unwrap();
    let server = serve(tls.clone()).await;
    let addr = server.local_addr();
    assert_eq!(served_cert(addr, "a.example.com").await, first.der);

    // An open connection keeps its certificate; new ones get the new one.
    let old_conn = tls_connect(addr, "a.example.com", client_any(&[]))
        .await
        .unwrap();
    let second = ca.leaf(&["a.example.com"]);
    second.write(&dir, "site");
    tls.reload().unwrap();
    assert_eq!(served_cert(addr, "a.example.com").await, second.der);
    let (status, _) = get_h1(old_conn, "/").await.unwrap();
    assert_eq!(status, 200);

    // Broken file: reload fails naming it, the second certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(err.contains("site.crt"), "{err}");
    assert!(err.contains("no CERTIFICATE"), "{err}");
    assert_eq!(served_cert(addr, "a.example.com").await, second.der);

    // Mismatched pair: refused too.
    let third = ca.leaf(&["a.example.com"]);
    std::fs::write(&files.cert, &third.cert_pem).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert_eq!(served_cert(addr, "a.example.com").await, second.der);
    server.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn invalid_material_fails_closed_naming_the_file() {
    let dir = temp_dir("invalid");
    let ca = Ca::new("test CA");
    let good = ca.leaf(&["a.example.com"]);
    let other = ca.leaf(&["b.example.com"]);
    let files = good.write(&dir, "good");

    let load = |cert: &std::path::Path, key: &std::path::Path| {
        ServerTls::load(TlsSettings::new(vec![
            hexon_proxy::tls::CertificateFiles::new(cert, key),
        ]))
        .map(|_| ())
        .unwrap_err()
    };

    // Missing file.
    let e = load(&dir.join("missing.crt"), &files.key);
    assert!(matches!(e, TlsError::Read { .. }));
    assert!(e.to_string().contains("missing.crt: cannot read"), "{e}");
    // No certificate in the PEM (a key instead).
    let e = load(&files.key, &files.key);
    assert!(
        e.to_string().contains("good.key: no CERTIFICATE block"),
        "{e}"
    );
    // No key in the key file.
    let e = load(&files.cert, &files.cert);
    assert!(e.to_string().contains("good.crt: no private key"), "{e}");
    // Key of another certificate.
    let other_key = write_pem(&dir, "other.key", &other.key_pem);
    let e = load(&files.cert, &other_key);
    assert!(matches!(e, TlsError::KeyMismatch { .. }));
    assert!(
        e.to_string()
            .contains("other.key: private key does not match the certificate in"),
        "{e}"
    );
    // Garbage PEM.
    let garbage = write_pem(
        &dir,
        "garbage.crt",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    let e = load(&garbage, &files.key);
    assert!(e.to_string().contains("garbage.crt"), "{e}");
    // Client CA file without certificates.
    let mut s = TlsSettings::new(vec![files.clone()]);
    s.client_ca = Some(files.key.clone());
    let e = ServerTls::load(s).map(|_| ()).unwrap_err();
    assert!(
        e.to_string().contains("good.key: no CERTIFICATE block"),
        "{e}"
    );
    // Nothing configured, no dev mode.
    let e = ServerTls::load(TlsSettings::new(vec![]))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate));
}

#[test]
fn expired_certificate_loads_with_its_dates_reported() {
    let dir = temp_dir("expired");
    let ca = Ca::new("test CA");
    let expired = ca.leaf_with(&["old.example.com"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let tls = ServerTls::load(TlsSettings::new(vec![expired.write(&dir, "old")])).unwrap();
    assert!(tls.certificates()[0].not_after < SystemTime::now());
}

fn client_leaf(ca: &Ca, name: &str) -> Leaf {
    ca.leaf_with(&[name], |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    })
}

#[tokio::test]
async fn required_client_certificate() {
    let dir = temp_dir("mtls");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let rogue_ca = Ca::new("rogue CA");
    let server_leaf = ca.leaf(&["a.example.com"]);
    let mut s = TlsSettings::new(vec![server_leaf.write(&dir, "server")]);
    s.client_ca = Some(write_pem(&dir, "clients.pem", &client_ca.cert.pem()));
    let server = serve(ServerTls::load(s).unwrap()).await;
    let addr = server.local_addr();

    // No certificate: TLS 1.3 reports the refusal on the first read.
    let r = async {
        let s = tls_connect(addr, "a.example.com", client_trusting(ca.der(), None, &[])).await?;
        get_h1(s, "/").await.map_err(std::io::Error::other)
    }
    .await;
    assert!(r.is_err(), "{r:?}");

    // A certificate from another CA: refused.
    let rogue = client_leaf(&rogue_ca, "mallory");
    let r = async {
        let s = tls_connect(
            addr,
            "a.example.com",
            client_trusting(ca.der(), Some(&rogue), &[]),
        )
        .await?;
        get_h1(s, "/").await.map_err(std::io::Error::other)
    }
    .await;
    assert!(r.is_err(), "{r:?}");

    // A CA-signed certificate: the chain reaches the service.
    let alice = client_leaf(&client_ca, "alice");
    let s = tls_connect(
        addr,
        "a.example.com",
        client_trusting(ca.der(), Some(&alice), &[b"h2"]),
    )
    .await
    .unwrap();
    let (status, body) = get_h2(s, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("alpn=h2 chain=1"), "{body}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn optional_client_certificate_and_chain_contents() {
    let dir = temp_dir("mtls-opt");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let mut s = TlsSettings::new(vec![ca.leaf(&["a.example.com"]).write(&dir, "server")]);
    s.client_ca = Some(write_pem(&dir, "clients.pem", &client_ca.cert.pem()));
    s.client_auth = ClientAuth::Optional;
    let tls = ServerTls::load(s).unwrap();
    let l = Listener::bind(ListenerSettings::new("mtls", localhost()), Some(tls))
        .await
        .unwrap();
    let alice = client_leaf(&client_ca, "alice");
    let want = alice.der.clone();
    let server = l.serve(tower::service_fn(
        move |req: http::Request<hexon_proxy::body::RequestBody>| {
            let want = want.clone();
            async move {
                let info = req
                    .extensions()
                    .get::<hexon_proxy::ext::ConnectionInfo>()
                    .unwrap();
                let chain = &info.tls.as_ref().unwrap().client_chain;
                let text = match chain.first() {
                    None => "anonymous".to_owned(),
                    Some(leaf) if *leaf == want => "alice".to_owned(),
                    Some(_) => "someone else".to_owned(),
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(hexon_proxy::body::full(
                    text,
                )))
            }
        },
    ));
    let addr = server.local_addr();

    let s = tls_connect(addr, "a.example.com", client_trusting(ca.der(), None, &[]))
        .await
        .unwrap();
    assert_eq!(get_h1(s, "/").await.unwrap(), (200, "anonymous".to_owned()));
    let s = tls_connect(
        addr,
        "a.example.com",
        client_trusting(ca.der(), Some(&alice), &[]),
    )
    .await
    .unwrap();
    assert_eq!(get_h1(s, "/").await.unwrap(), (200, "alice".to_owned()));
    // Optional does not mean unverified.
    let rogue = client_leaf(&Ca::new("rogue"), "alice");
    let r = async {
        let s = tls_connect(
            addr,
            "a.example.com",
            client_trusting(ca.der(), Some(&rogue), &[]),
        )
        .await?;
        get_h1(s, "/").await.map_err(std::io::Error::other)
    }
    .await;
    assert!(r.is_err(), "{r:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dev_self_signed_certificate_is_generated_stored_and_reused() {
    let dir = temp_dir("dev");
    let mut dev = DevCertificate::new(Some(dir.clone()));
    dev.names.push("hexon.test".into());
    let tls = ServerTls::load(TlsSettings::dev(dev.clone())).unwrap();
    let stored = dir.join("dev-tls/cert.pem");
    let pem = std::fs::read(&stored).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("dev-tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    assert!(
        tls.certificates()[0]
            .names
            .contains(&"hexon.test".to_owned())
    );

    let server = serve(tls).await;
    let addr = server.local_addr();
    for name in ["localhost", "hexon.test"] {
        let s = tls_connect(addr, name, client_trusting(der.clone(), None, &[]))
            .await
            .unwrap();
        assert_eq!(get_h1(s, "/").await.unwrap().0, 200);
    }
    server.shutdown(Duration::from_secs(1)).await;

    // A restart reuses the stored certificate.
    let again = ServerTls::load(TlsSettings::dev(dev)).unwrap();
    assert_eq!(again.certificates()[0].cert_file, stored);
    assert_eq!(std::fs::read(&stored).unwrap(), pem);

    // Without a data dir: in memory, stable across reloads.
    let mem = ServerTls::load(TlsSettings::dev(DevCertificate::new(None))).unwrap();
    let before = mem.certificates()[0].not_after;
    mem.reload().unwrap();
    assert_eq!(mem.certificates()[0].not_after, before);

    // Configured certificates win over dev mode.
    let ca = Ca::new("ca");
    let mut s = TlsSettings::new(vec![ca.leaf(&["real.test"]).write(&dir, "real")]);
    s.dev = Some(DevCertificate::new(None));
    let real = ServerTls::load(s).unwrap();
    assert_eq!(real.certificates()[0].names, vec!["real.test".to_owned()]);
}

#[tokio::test]
async fn tls13_only_refuses_tls12_clients() {
    let dir = temp_dir("v13");
    let ca = Ca::new("ca");
    let mut s = TlsSettings::new(vec![ca.leaf(&["a.example.com"]).write(&dir, "s")]);
    s.min_version = MinTlsVersion::Tls13;
    let server = serve(ServerTls::load(s).unwrap()).await;
    let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
    .with_no_client_auth();
    assert!(
        tls_connect(server.local_addr(), "a.example.com", tls12)
            .await
            .is_err()
    );
    // TLS 1.2 is accepted by default.
    let s = TlsSettings::new(vec![ca.leaf(&["a.example.com"]).write(&dir, "t")]);
    let server2 = serve(ServerTls::load(s).unwrap()).await;
    let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
    .with_no_client_auth();
    let c = tls_connect(server2.local_addr(), "a.example.com", tls12)
        .await
        .unwrap();
    assert_eq!(get_h1(c, "/").await.unwrap().0, 200);
    server.shutdown(Duration::from_secs(1)).await;
    server2.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients() {
    let dir = temp_dir("hs-timeout");
    let ca = Ca::new("ca");
    let tls = ServerTls::load(TlsSettings::new(vec![
        ca.leaf(&["a.test"]).write(&dir, "s"),
    ]))
    .unwrap();
    let mut settings = ListenerSettings::new("t", localhost());
    settings.tls_handshake_timeout = Duration::from_millis(200);
    let server = Listener::bind(settings, Some(tls))
        .await
        .unwrap()
        .serve(service());
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("server closed the connection")
    .unwrap_or(0);
    assert_eq!(n, 0);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn acme_tls_alpn_handshakes_get_the_challenge_certificate_and_nothing_else() {
    use hexon_proxy::tls::AcmeFiles;
    use tokio::io::AsyncReadExt as _;
    let dir = temp_dir("acme-alpn");
    let mut settings = TlsSettings::new(Vec::new());
    settings.acme = Some(AcmeFiles::new(
        dir.join("acme"),
        vec!["gw.example.test".into()],
        true,
    ));
    let tls = ServerTls::load(settings).unwrap();
    // No certificate obtained yet: a placeholder.
    assert!(tls.certificates()[0].placeholder);
    let ca = Ca::new("challenge CA");
    let challenge = ca.leaf(&["gw.example.test"]);
    let key = rustls::crypto::ring::sign::any_supported_type(
        &rustls::pki_types::PrivateKeyDer::try_from(challenge.key_der.clone()).unwrap(),
    )
    .unwrap();
    tls.alpn_challenges().insert(
        "GW.example.test",
        std::sync::Arc::new(rustls::sign::CertifiedKey::new(
            vec![challenge.der.clone()],
            key,
        )),
    );
    let server = serve(tls.clone()).await;
    let addr = server.local_addr();
    const ACME: &[u8] = b"acme-tls/1";

    // The validation handshake: the challenge certificate, then the
    // connection is closed (no application data).
    let mut s = tls_connect(addr, "gw.example.test", client_any(&[ACME]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.peer_certificates().unwrap()[0], challenge.der);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(ACME));
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // acme-tls/1 mixed with other protocols, or for a name without a
    // challenge: no certificate at all.
    assert!(
        tls_connect(addr, "gw.example.test", client_any(&[ACME, b"h2"]))
            .await
            .is_err()
    );
    assert!(
        tls_connect(addr, "other.example.test", client_any(&[ACME]))
            .await
            .is_err()
    );
    // Everyone else sees the listener's own certificate.
    let s = tls_connect(addr, "gw.example.test", client_any(&[b"h2"]))
        .await
        .unwrap();
    assert_ne!(s.get_ref().1.peer_certificates().unwrap()[0], challenge.der);

    // Withdrawn: refused.
    tls.alpn_challenges().remove("gw.example.test");
    assert!(
        tls_connect(addr, "gw.example.test", client_any(&[ACME]))
            .await
            .is_err()
    );
    server.shutdown(Duration::from_secs(1)).await;
}
