//! Shared helpers of the `layers_*` integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hexon_core::{Ed25519Signer, Identity, KeySet, Signer, UnixTime};
use hexon_proxy::body::{BoxBody, full};
use hexon_proxy::ext::{ConnectionInfo, TlsInfo};
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use rustls_pki_types::CertificateDer;
use tower::ServiceExt as _;

pub const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

/// What the inner (test) service saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub parts: Arc<Parts>,
    pub body: Bytes,
}

impl Seen {
    pub fn identity(&self) -> Option<&Identity> {
        self.parts.extensions.get::<Identity>()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An inner service that records the request in the response extensions.
pub fn echo<B>() -> impl tower::Service<
    Request<B>,
    Response = Response<BoxBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<BoxBody>, Infallible>> + Send,
> + Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    tower::service_fn(|req: Request<B>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let mut res = Response::new(full("upstream"));
        res.extensions_mut().insert(Seen {
            parts: Arc::new(parts),
            body,
        });
        Ok(res)
    })
}

pub fn seen(res: &Response<BoxBody>) -> &Seen {
    res.extensions()
        .get::<Seen>()
        .expect("request reached the inner service")
}

pub async fn body_string(res: Response<BoxBody>) -> String {
    let b = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

pub fn peer(ip: &str) -> ConnectionInfo {
    let peer: SocketAddr = format!("{ip}:40000").parse().unwrap();
    ConnectionInfo::plain(peer, "127.0.0.1:8443".parse().unwrap())
}

/// A TLS connection whose client presented `chain`.
pub fn tls_peer(ip: &str, chain: Vec<CertificateDer<'static>>) -> ConnectionInfo {
    let mut c = peer(ip);
    let mut tls = TlsInfo::default();
    tls.client_chain = chain;
    c.tls = Some(Arc::new(tls));
    c
}

pub fn signer(kid: &str) -> (Arc<Ed25519Signer>, KeySet) {
    let s = Arc::new(Ed25519Signer::generate(kid).unwrap());
    let mut keys = KeySet::new();
    keys.insert(kid, s.public_key(), None).unwrap();
    (s, keys)
}

pub fn alice() -> Identity {
    Identity::builder("u-1", "alice")
        .email("alice@example.com")
        .groups(["eng"])
        .auth("password", NOW)
        .unwrap()
        .session("s-1")
        .build()
        .unwrap()
}

/// A test CA and certificates signed by it.
pub struct Ca {
    pub key: rcgen::KeyPair,
    pub cert: rcgen::Certificate,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "hexon test CA");
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    /// A leaf with these SANs and EKUs; returns its DER and key.
    pub fn issue(
        &self,
        sans: Vec<rcgen::SanType>,
        ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.extended_key_usages = ekus;
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.der().clone(), key)
    }
}

pub fn uri_san(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}
pub fn email_san(s: &str) -> rcgen::SanType {
    rcgen::SanType::Rfc822Name(s.try_into().unwrap())
}
pub fn dns_san(s: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(s.try_into().unwrap())
}

/// Call `svc` once.
pub async fn call<S, B>(svc: S, req: Request<B>) -> Response<BoxBody>
where
    S: tower::Service<Request<B>, Response = Response<BoxBody>, Error = Infallible>,
{
    svc.oneshot(req).await.unwrap()
}
