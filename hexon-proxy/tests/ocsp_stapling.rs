//! OCSP stapling against a real responder (hexon-ca's), and against
//! responders that misbehave: a response is stapled only when it is a
//! valid, signed, `good` answer about exactly the served certificate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hexon_ca::setup::{CaConfig, ProfileConfig, open};
use hexon_ca::{CaHttp, CertificateAuthority, OcspResponder, OcspSettings, Profile};
use hexon_core::store::{MemoryStore, SecretKeys};
use hexon_proxy::tls::{CertificateFiles, ServerTls, StapleStatus, TlsSettings};
use http_body_util::{BodyExt as _, Full};

/// What the responder does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Answer as hexon-ca's responder does.
    Real,
    /// 200 with bytes that are not DER.
    Garbage,
    /// HTTP 500.
    Error,
    /// A real response with a digit of its `producedAt` changed (still
    /// well-formed, no longer what was signed).
    Tampered,
    /// A real response about another certificate.
    OtherCert,
    /// 100 KiB of zeros.
    Oversized,
}

struct Responder {
    mode: Mutex<Mode>,
    /// Request bodies seen, in order.
    requests: Mutex<Vec<Bytes>>,
    /// The request to answer instead in `OtherCert` mode.
    other: Mutex<Option<Bytes>>,
    http: CaHttp,
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
    responder: Arc<Responder>,
    dir: PathBuf,
}

async fn setup(signing: hexon_ca::ResponderSigning) -> Setup {
    // The responder's address goes into the certificates (AIA): bind
    // first, then make the CA.
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = CaConfig {
        url: Some(format!("http://127.0.0.1:{port}/ca")),
        ..CaConfig::default()
    };
    cfg.profiles.insert(
        Profile::TlsServer,
        ProfileConfig {
            dns: vec!["example.test".into()],
            ..ProfileConfig::default()
        },
    );
    cfg.validate().unwrap();
    let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([5; 32]))));
    let ca = Arc::new(open(&cfg, &dir.path().join("ca"), store).await.unwrap());
    let ocsp = Arc::new(OcspResponder::new(
        ca.clone(),
        OcspSettings {
            signing,
            ..OcspSettings::default()
        },
    ));
    let responder = Arc::new(Responder {
        mode: Mutex::new(Mode::Real),
        requests: Mutex::new(Vec::new()),
        other: Mutex::new(None),
        http: CaHttp::new(ca.clone(), ocsp, "/ca"),
    });
    spawn_accept(listener, responder.clone());
    Setup {
        dir: dir.path().to_owned(),
        _dir: dir,
        ca,
        responder,
    }
}

fn spawn_accept(listener: tokio::net::TcpListener, responder: Arc<Responder>) {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let r = responder.clone();
            tokio::spawn(handle(tcp, r));
        }
    });
}

async fn handle(tcp: tokio::net::TcpStream, r: Arc<Responder>) {
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let r = r.clone();
        async move { Ok::<_, Infallible>(answer(&r, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
        .await;
}

async fn answer(
    r: &Responder,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    r.requests.lock().unwrap().push(body.clone());
    let mode = *r.mode.lock().unwrap();
    let real = |body: Bytes| {
        let req = http::Request::from_parts(parts.clone(), Full::new(body));
        let http = r.http.clone();
        async move {
            http.call(req)
                .await
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
        }
    };
    let bytes = match mode {
        Mode::Real => real(body).await,
        Mode::Garbage => Bytes::from_static(b"this is not an OCSP response"),
        Mode::Error => {
            let mut res = http::Response::new(Full::new(Bytes::new()));
            *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            return res;
        }
        Mode::Tampered => {
            let mut v = real(body).await.to_vec();
            // producedAt: GeneralizedTime, 15 bytes "YYYYMMDDHHMMSSZ" — the
            // first one in the response (tbsResponseData comes first).
            let at = v
                .windows(2)
                .position(|w| w == [0x18, 0x0f])
                .expect("a GeneralizedTime in the response");
            let digit = &mut v[at + 2 + 13];
            *digit = b'0' + (*digit - b'0' + 1) % 10;
            Bytes::from(v)
        }
        Mode::OtherCert => {
            let other = r.other.lock().unwrap().clone().unwrap();
            real(other).await
        }
        Mode::Oversized => Bytes::from(vec![0u8; 100 * 1024]),
    };
    let mut res = http::Response::new(Full::new(bytes));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/ocsp-response"),
    );
    res
}

/// Issue a certificate for `name` and write chain and key under `dir`.
async fn issue(s: &Setup, name: &str) -> (CertificateFiles, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let req = hexon_ca::IssueRequest::from_csr(
        Profile::TlsServer,
        hexon_ca::check_csr(csr.der()).unwrap(),
    );
    let issued = s.ca.issue(&req).await.unwrap();
    let (cert, keyf) = (
        s.dir.join(format!("{name}.crt")),
        s.dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &issued.chain_pem).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (CertificateFiles::new(cert, keyf), issued.serial)
}

/// Start a listener TLS state with stapling for `files`; wait until the
/// first fetch has an outcome.
async fn staple(files: &CertificateFiles) -> StapleStatus {
    let tls = ServerTls::load(TlsSettings::new(vec![files.clone()])).unwrap();
    let task = tokio::spawn(tls.clone().run_stapling());
    let start = Instant::now();
    let status = loop {
        let st = tls.staples().remove(0);
        if st.valid_until.is_some() || st.last_error.is_some() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stapling outcome"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    task.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_good_responses_about_the_certificate_are_stapled() {
    let s = setup(hexon_ca::ResponderSigning::Delegated).await;
    let (files, serial) = issue(&s, "www.example.test").await;

    // A good response from the real responder is stapled, until its
    // nextUpdate.
    let st = staple(&files).await;
    assert_eq!(st.last_error, None);
    assert!(
        st.responder
            .as_deref()
            .is_some_and(|u| u.ends_with("/ca/ocsp")),
        "{st:?}"
    );
    assert!(!st.must_staple);
    let until = st.valid_until.expect("stapled");
    assert!(
        until > SystemTime::now() + Duration::from_secs(3600),
        "{st:?}"
    );

    // Another certificate's request, to answer with later.
    let (other, _) = issue(&s, "other.example.test").await;
    let before = s.responder.requests.lock().unwrap().len();
    assert!(staple(&other).await.valid_until.is_some());
    let other_req = s.responder.requests.lock().unwrap()[before].clone();
    *s.responder.other.lock().unwrap() = Some(other_req);

    for (mode, expect) in [
        (Mode::Garbage, "malformed OCSP response"),
        (Mode::Error, "HTTP 500"),
        (Mode::Tampered, "not signed by the issuer"),
        (Mode::OtherCert, "not about this certificate"),
        (Mode::Oversized, "length limit exceeded"),
    ] {
        *s.responder.mode.lock().unwrap() = mode;
        let st = staple(&files).await;
        assert_eq!(st.valid_until, None, "{mode:?} was stapled: {st:?}");
        let err = st.last_error.unwrap_or_default();
        assert!(err.contains(expect), "{mode:?}: {err}");
    }

    // Revoked: the responder says so, nothing is stapled, and the error
    // tells the operator to renew.
    *s.responder.mode.lock().unwrap() = Mode::Real;
    let issuer = s.ca.find(&serial).await.unwrap().unwrap().issuer;
    assert!(
        s.ca.revoke(
            &issuer,
            &serial,
            hexon_ca::RevocationReason::KeyCompromise,
            None
        )
        .await
        .unwrap()
    );
    let st = staple(&files).await;
    assert_eq!(st.valid_until, None);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("REVOKED")),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_signed_by_the_issuer_itself_are_checked_too() {
    let s = setup(hexon_ca::ResponderSigning::Authority).await;
    let (files, _) = issue(&s, "www.example.test").await;
    let st = staple(&files).await;
    assert!(st.valid_until.is_some(), "{st:?}");
    *s.responder.mode.lock().unwrap() = Mode::Tampered;
    let st = staple(&files).await;
    assert_eq!(st.valid_until, None);
    let err = st.last_error.unwrap_or_default();
    assert!(err.contains("not signed by the issuer"), "{err}");
}

#[tokio::test]
async fn a_certificate_without_an_ocsp_url_or_issuer_is_not_stapled() {
    // A self-signed certificate names no responder: nothing to do, no
    // error.
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["self.example.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let tls = ServerTls::load(TlsSettings::new(vec![CertificateFiles::new(&c, &k)])).unwrap();
    let st = tls.staples().remove(0);
    assert_eq!(st.responder, None);
    assert_eq!(st.valid_until, None);
    assert_eq!(st.last_error, None);
}
