//! The CA's public HTTP endpoints: CRLs, issuer certificates, the trust
//! bundle, the SPIFFE bundle and the OCSP responder.
//!
//! | path (under the prefix, default `/ca`) | answer |
//! |---|---|
//! | `GET /crl/{ca}.crl` | the CA's current CRL, DER (`application/pkix-crl`) |
//! | `GET /certs/{ca}.crt`, `/certs/{ca}.pem` | the CA's certificate, DER or PEM |
//! | `GET /bundle.pem` | the root, PEM |
//! | `GET /spiffe/bundle` | the SPIFFE trust bundle (JWKS, `use: x509-svid`) |
//! | `POST /ocsp` (`application/ocsp-request`), `GET /ocsp/{base64}` | OCSP (RFC 6960) |
//! | `GET /ssh/user_ca.pub` | the SSH user CA key, for sshd's `TrustedUserCAKeys` (with `[ca.ssh]`) |
//! | `GET /ssh/host_ca.pub` | the SSH host CA key |
//! | `GET /ssh/known_hosts` | the `@cert-authority` line for clients' `known_hosts` |

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

use crate::ca::CertificateAuthority;
use crate::ocsp::{MAX_REQUEST_LEN, OcspResponder};
use crate::ssh::SshCa;

/// The CA's public endpoints, as a service.
#[derive(Clone, Debug)]
pub struct CaHttp {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca: Arc<CertificateAuthority>,
    ocsp: Arc<OcspResponder>,
    prefix: String,
    ssh: Option<Arc<SshCa>>,
}

fn reply(
    status: StatusCode,
    content_type: &str,
    max_age: u64,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    let cache = if max_age == 0 {
        "no-store".to_owned()
    } else {
        format!("public, max-age={max_age}")
    };
    if let Ok(v) = http::HeaderValue::from_str(&cache) {
        r.headers_mut().insert(CACHE_CONTROL, v);
    }
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", 0, format!("{msg}\n"))
}

impl CaHttp {
    /// Serve `ca` and `ocsp` under `prefix` (e.g. `/ca`).
    pub fn new(ca: Arc<CertificateAuthority>, ocsp: Arc<OcspResponder>, prefix: &str) -> Self {
        CaHttp {
            inner: Arc::new(Inner {
                ca,
                ocsp,
                prefix: prefix.trim_end_matches('/').to_owned(),
                ssh: None,
            }),
        }
    }

    /// Also serve the public keys of the SSH certificate authority.
    pub fn with_ssh(self, ssh: Arc<SshCa>) -> Self {
        CaHttp {
            inner: Arc::new(Inner {
                ca: self.inner.ca.clone(),
                ocsp: self.inner.ocsp.clone(),
                prefix: self.inner.prefix.clone(),
                ssh: Some(ssh),
            }),
        }
    }

    /// Whether `path` is one of ours.
    pub fn handles(&self, path: &str) -> bool {
        path.strip_prefix(self.inner.prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Answer a request.
    pub async fn call<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &self.inner;
        let (parts, body) = req.into_parts();
        let Some(path) = parts.uri.path().strip_prefix(inner.prefix.as_str()) else {
            return text(StatusCode::NOT_FOUND, "not found");
        };
        let path = path.to_owned();
        if parts.method == Method::POST {
            if path != "/ocsp" {
                return text(StatusCode::METHOD_NOT_ALLOWED, "only /ocsp takes POST");
            }
            let is_ocsp = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("application/ocsp-request"));
            if !is_ocsp {
                return text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send Content-Type: application/ocsp-request",
                );
            }
            let body = match Limited::new(body, MAX_REQUEST_LEN).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "OCSP request too large"),
            };
            let answer = inner.ocsp.respond(&body).await;
            // POST answers are not cacheable by intermediaries anyway.
            return reply(
                StatusCode::OK,
                "application/ocsp-response",
                0,
                Bytes::from(answer.der.to_vec()),
            );
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        if let Some(encoded) = path.strip_prefix("/ocsp/") {
            // RFC 6960 appendix A.1: the base64 of the DER request, URL-encoded.
            if encoded.len() > MAX_REQUEST_LEN * 2 {
                return text(StatusCode::URI_TOO_LONG, "OCSP request too large");
            }
            let decoded = percent_decode(encoded);
            let Ok(der) = base64::engine::general_purpose::STANDARD.decode(decoded.as_bytes())
            else {
                return text(StatusCode::BAD_REQUEST, "the OCSP request is not base64");
            };
            let answer = inner.ocsp.respond(&der).await;
            return reply(
                StatusCode::OK,
                "application/ocsp-response",
                answer.max_age,
                Bytes::from(answer.der.to_vec()),
            );
        }
        if path == "/bundle.pem" {
            return reply(
                StatusCode::OK,
                "application/x-pem-file",
                3600,
                inner.ca.bundle_pem(),
            );
        }
        if path == "/spiffe/bundle" {
            return self.spiffe_bundle();
        }
        if let Some(file) = path.strip_prefix("/ssh/") {
            let Some(ssh) = &inner.ssh else {
                return text(StatusCode::NOT_FOUND, "the SSH CA is not enabled");
            };
            let line = match file {
                "user_ca.pub" => ssh.user_ca_openssh(),
                "host_ca.pub" => ssh.host_ca_openssh(),
                "known_hosts" => match ssh.known_hosts_line() {
                    Some(l) => l,
                    None => {
                        return text(
                            StatusCode::NOT_FOUND,
                            "no host certificates are issued ([ca.ssh] host_domains is empty)",
                        );
                    }
                },
                _ => return text(StatusCode::NOT_FOUND, "not found"),
            };
            return reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                3600,
                format!("{line}\n"),
            );
        }
        if let Some(name) = path
            .strip_prefix("/crl/")
            .and_then(|n| n.strip_suffix(".crl"))
        {
            if inner.ca.authority(name).is_none() {
                return text(StatusCode::NOT_FOUND, "no such certificate authority");
            }
            return match inner.ca.crl(name).await {
                Ok(crl) => {
                    let age = crl.next_update.as_secs() - hexon_core::UnixTime::now().as_secs();
                    let max_age = u64::try_from(age / 2).unwrap_or(0);
                    reply(
                        StatusCode::OK,
                        "application/pkix-crl",
                        max_age,
                        Bytes::from(crl.der.to_vec()),
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, ca = name, "cannot make a CRL");
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the CRL is unavailable; try again later",
                    )
                }
            };
        }
        if let Some(file) = path.strip_prefix("/certs/") {
            let (name, pem) = match (file.strip_suffix(".crt"), file.strip_suffix(".pem")) {
                (Some(n), _) => (n, false),
                (_, Some(n)) => (n, true),
                _ => return text(StatusCode::NOT_FOUND, "not found"),
            };
            let Some(a) = inner.ca.authority(name) else {
                return text(StatusCode::NOT_FOUND, "no such certificate authority");
            };
            return if pem {
                reply(
                    StatusCode::OK,
                    "application/x-pem-file",
                    3600,
                    a.certificate_pem(),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "application/pkix-cert",
                    3600,
                    Bytes::from(a.certificate_der().to_vec()),
                )
            };
        }
        text(StatusCode::NOT_FOUND, "not found")
    }

    fn spiffe_bundle(&self) -> Response<Full<Bytes>> {
        let ca = &self.inner.ca;
        let Some((_, rules)) = ca.profile(crate::Profile::Spiffe) else {
            return text(StatusCode::NOT_FOUND, "SPIFFE is not enabled");
        };
        let root = ca.root();
        let mut jwk =
            match serde_json::to_value(root.signer().public_key().to_jwk(root.signer().key_id())) {
                Ok(v) => v,
                Err(_) => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode the bundle",
                    );
                }
            };
        if let Some(obj) = jwk.as_object_mut() {
            obj.remove("alg");
            obj.insert("use".into(), "x509-svid".into());
            obj.insert(
                "x5c".into(),
                serde_json::json!([
                    base64::engine::general_purpose::STANDARD.encode(root.certificate_der())
                ]),
            );
        }
        let bundle = serde_json::json!({
            "keys": [jwk],
            "spiffe_sequence": root.not_after().as_secs(),
            "spiffe_refresh_hint": 300,
            "trust_domain": rules.trust_domain,
        });
        reply(StatusCode::OK, "application/json", 300, bundle.to_string())
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl<B> tower_service::Service<Request<B>> for CaHttp
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.call(req).await) })
    }
}
