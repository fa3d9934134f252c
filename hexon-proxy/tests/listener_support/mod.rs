//! Shared helpers for the listener integration tests: certificates, clients,
//! a test service.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hexon_proxy::body::{BoxBody, RequestBody, full};
use hexon_proxy::ext::ConnectionInfo;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "hexon-listener-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names`, returns (cert PEM, key PEM, DER).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    pub fn leaf_with(&self, names: &[&str], f: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        f(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Leaf {
    /// Write `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> hexon_proxy::tls::CertificateFiles {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        hexon_proxy::tls::CertificateFiles::new(c, k)
    }
}

pub fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// Accepts any server certificate (to read which one was served).
#[derive(Debug)]
pub struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// A client trusting anything, with ALPN.
pub fn client_any(alpn: &[&[u8]]) -> ClientConfig {
    let mut c = builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// A client trusting `root`, optionally with a client certificate.
pub fn client_trusting(
    root: CertificateDer<'static>,
    client: Option<&Leaf>,
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let b = builder().with_root_certificates(roots);
    let mut c = match client {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::try_from(l.key_der.clone()).unwrap(),
            )
            .unwrap(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// TLS-connect to `addr` with `sni`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented with `sni`.
pub async fn served_cert(addr: std::net::SocketAddr, sni: &str) -> CertificateDer<'static> {
    let s = tls_connect(addr, sni, client_any(&[])).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 GET over `io`: (status, body).
pub async fn get_h1<I>(io: I, path: &str) -> Result<(u16, String), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let res = tx
        .send_request(
            Request::get(path)
                .header("host", "test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/2 GET over `io`: (status, body).
pub async fn get_h2<I>(io: I, path: &str) -> Result<(u16, String), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let res = tx
        .send_request(
            Request::get(format!("https://test{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Test service: reports what it saw as JSON-ish text.
/// `/slow` waits 500 ms, `/very-slow` 10 s; `/ws` upgrades and echoes.
pub async fn echo_service(mut req: Request<RequestBody>) -> Result<Response<BoxBody>, Infallible> {
    if req.uri().path() == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(hexon_proxy::body::empty())
            .unwrap());
    }
    match req.uri().path() {
        "/slow" => tokio::time::sleep(Duration::from_millis(500)).await,
        "/very-slow" => tokio::time::sleep(Duration::from_secs(10)).await,
        _ => {}
    }
    let info = req.extensions().get::<ConnectionInfo>().cloned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let text = match info {
        None => "no-info".to_owned(),
        Some(i) => {
            let tls = i.tls.as_ref();
            format!(
                "peer={} tcp_peer={} local={} scheme={} sni={} alpn={} chain={} body={body}",
                i.peer,
                i.tcp_peer,
                i.local,
                i.scheme(),
                tls.and_then(|t| t.sni.clone()).unwrap_or_default(),
                tls.and_then(|t| t.alpn.clone())
                    .map(|a| String::from_utf8_lossy(&a).into_owned())
                    .unwrap_or_default(),
                tls.map(|t| t.client_chain.len()).unwrap_or(0),
            )
        }
    };
    Ok(Response::new(full(text)))
}

type EchoFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send>,
>;

/// [`echo_service`] as a tower service.
pub fn service() -> tower::util::ServiceFn<fn(Request<RequestBody>) -> EchoFuture> {
    tower::service_fn(|req| Box::pin(echo_service(req)))
}

pub fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}
