//! The certificate authority of `[ca]` (feature `ca`): its public
//! endpoints (CRLs, issuer certificates, bundles, OCSP, and with `[ca.ssh]`
//! the SSH CA public keys) at `[ca] url`, and
//! the ACME server at `[ca.acme] url`, answered before authentication
//! (relying parties and ACME clients carry no gateway credentials; ACME
//! requests are signed JWS the ACME server checks itself).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hexon_core::config::{Config, ConfigError, ConfigErrors};
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::GatewayError;
use super::state::GatewayState;
use crate::body::BoxBody;

/// The `[ca]` section, validated (`None` when there is none).
///
/// # Errors
/// The problem, located under `ca`; or a build without the `ca` feature
/// asked to run one.
pub fn section(config: &Config) -> Result<Option<CaSection>, ConfigErrors> {
    let Some(table) = config.ca.clone() else {
        return Ok(None);
    };
    #[cfg(feature = "ca")]
    {
        let cfg = hexon_ca::setup::CaConfig::from_toml(table).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                "ca",
                e.to_string().trim_start_matches("[ca] ").to_owned(),
            )])
        })?;
        let Some(url) = cfg.url.clone() else {
            return Err(ConfigErrors(vec![ConfigError::new(
                "ca.url",
                "required: the gateway serves the CA's CRLs, certificates and OCSP there (e.g. \"https://ca.example.com/ca\")".to_owned(),
            )]));
        };
        Ok(Some(CaSection { cfg, url }))
    }
    #[cfg(not(feature = "ca"))]
    {
        let _ = table;
        Err(ConfigErrors(vec![ConfigError::new(
            "ca",
            "needs the certificate authority: build hexon-proxy with the `ca` feature (the hexon binary has it)".to_owned(),
        )]))
    }
}

/// A validated `[ca]`.
#[derive(Clone, Debug)]
pub struct CaSection {
    #[cfg(feature = "ca")]
    cfg: hexon_ca::setup::CaConfig,
    url: String,
}

impl CaSection {
    /// One line for `hexon check`.
    pub fn summary(&self) -> String {
        #[cfg(feature = "ca")]
        {
            let profiles: Vec<&str> = self.cfg.profiles.keys().map(|p| p.as_str()).collect();
            format!(
                "ca: served at {}; profiles {}; ACME {}; SSH {}",
                self.url,
                profiles.join(", "),
                self.cfg
                    .acme
                    .as_ref()
                    .map_or("off".to_owned(), |a| format!("at {}/directory", a.url)),
                if self.cfg.ssh.is_some() {
                    format!("CA keys at {}/ssh/", self.url)
                } else {
                    "off".to_owned()
                }
            )
        }
        #[cfg(not(feature = "ca"))]
        {
            format!("ca: served at {}", self.url)
        }
    }
}

/// Split `https://host[:port]/path` into (host, path).
#[cfg(feature = "ca")]
fn host_and_path(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    (
        host.to_ascii_lowercase(),
        format!("/{}", path.trim_end_matches('/')),
    )
}

/// The running CA endpoints and ACME server.
#[derive(Clone, Debug)]
pub struct CaRoutes {
    #[cfg(feature = "ca")]
    ca_host: String,
    #[cfg(feature = "ca")]
    http: hexon_ca::CaHttp,
    #[cfg(feature = "ca")]
    acme: Option<(String, std::sync::Arc<hexon_ca::acme::AcmeServer>)>,
}

impl CaRoutes {
    /// Open the hierarchy (creating it in `<data_dir>/ca` on first start)
    /// and start the responders, if `[ca]` is configured.
    pub async fn start(
        config: &Config,
        state: &GatewayState,
    ) -> Result<Option<CaRoutes>, GatewayError> {
        let Some(section) = section(config)? else {
            return Ok(None);
        };
        #[cfg(feature = "ca")]
        {
            use std::sync::Arc;
            let err = |e: hexon_ca::CaError| GatewayError::Other(format!("[ca]: {e}"));
            let dir = std::path::Path::new(&config.gateway.data_dir).join("ca");
            let certs: Arc<dyn hexon_core::store::CertificateStore> = state.durable.clone();
            let ca = Arc::new(
                hexon_ca::setup::open(&section.cfg, &dir, certs)
                    .await
                    .map_err(err)?,
            );
            let ocsp = Arc::new(hexon_ca::OcspResponder::new(
                ca.clone(),
                section.cfg.ocsp_settings(),
            ));
            let (ca_host, ca_path) = host_and_path(&section.url);
            let mut http = hexon_ca::CaHttp::new(ca.clone(), ocsp, &ca_path);
            let certs: Arc<dyn hexon_core::store::CertificateStore> = state.durable.clone();
            if let Some(ssh) = hexon_ca::setup::open_ssh(&section.cfg, &dir, certs)
                .map_err(|e| GatewayError::Other(format!("[ca.ssh]: {e}")))?
            {
                http = http.with_ssh(Arc::new(ssh));
            }
            let acme = match &section.cfg.acme {
                None => None,
                Some(acme_cfg) => {
                    let accounts: Arc<dyn hexon_core::store::AcmeAccountStore> =
                        state.durable.clone();
                    let [(orders, orders_ttl), (nonces, nonces_ttl)] =
                        hexon_ca::acme::AcmeServer::BUCKETS;
                    let bucket = |name, ttl| state.kv.bucket(name, ttl);
                    let kv = bucket(orders, orders_ttl)
                        .await
                        .map_err(|e| GatewayError::Other(format!("[ca.acme]: {e}")))?;
                    let nonce_kv = bucket(nonces, nonces_ttl)
                        .await
                        .map_err(|e| GatewayError::Other(format!("[ca.acme]: {e}")))?;
                    let server = hexon_ca::acme::AcmeServer::new(
                        acme_cfg.clone(),
                        ca.clone(),
                        accounts,
                        kv,
                        nonce_kv,
                    )
                    .map_err(err)?;
                    let (host, _) = host_and_path(&acme_cfg.url);
                    tracing::info!(directory = %format!("{}/directory", acme_cfg.url), "ACME server enabled");
                    Some((host, Arc::new(server)))
                }
            };
            tracing::info!(url = %section.url, root = %dir.join("root.crt").display(), "certificate authority enabled");
            Ok(Some(CaRoutes {
                ca_host,
                http,
                acme,
            }))
        }
        #[cfg(not(feature = "ca"))]
        {
            let _ = (section, state);
            Ok(None)
        }
    }
}

/// Answers the CA's and the ACME server's requests; passes everything else on.
#[derive(Clone, Debug)]
pub struct CaLayer {
    routes: Option<CaRoutes>,
}

impl CaLayer {
    /// Answer with `routes` (none: pass everything on).
    pub fn new(routes: Option<CaRoutes>) -> Self {
        CaLayer { routes }
    }
}

impl<S> Layer<S> for CaLayer {
    type Service = CaRoute<S>;
    fn layer(&self, inner: S) -> CaRoute<S> {
        CaRoute {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// The service of [`CaLayer`].
#[derive(Clone, Debug)]
pub struct CaRoute<S> {
    inner: S,
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    routes: Option<CaRoutes>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<Request<B>> for CaRoute<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<BoxBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        #[cfg(feature = "ca")]
        if let Some(routes) = &self.routes {
            let (parts, body) = req.into_parts();
            let host =
                hexon_core::store::session::request_host(&parts).map(str::to_ascii_lowercase);
            let path = parts.uri.path();
            if let Some((acme_host, acme)) = &routes.acme
                && host.as_deref() == Some(acme_host.as_str())
                && acme.handles(path)
            {
                let acme = acme.clone();
                let client = parts
                    .extensions
                    .get::<crate::ext::ConnectionInfo>()
                    .map(|c| c.peer.ip().to_canonical());
                let req = Request::from_parts(parts, body);
                return Box::pin(async move {
                    Ok(acme.call(req, client).await.map(crate::body::boxed))
                });
            }
            if host.as_deref() == Some(routes.ca_host.as_str()) && routes.http.handles(path) {
                let http = routes.http.clone();
                let req = Request::from_parts(parts, body);
                return Box::pin(async move { Ok(http.call(req).await.map(crate::body::boxed)) });
            }
            return Box::pin(self.inner.call(Request::from_parts(parts, body)));
        }
        Box::pin(self.inner.call(req))
    }
}
