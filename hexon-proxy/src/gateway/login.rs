//! The login host (`[login]`, feature `idp`): the gateway answers the login
//! pages and every host's `/.hexon/callback` with `hexon_idp::LoginService`,
//! before authentication (a browser arriving there has no session yet).

use std::task::{Context, Poll};

use bytes::Bytes;
use hexon_core::config::Config;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::GatewayError;
use super::state::GatewayState;
use crate::body::BoxBody;
#[cfg(feature = "idp")]
use crate::ext::ConnectionInfo;

/// The running login service and the users it reads (swapped on reload).
#[derive(Clone, Debug)]
pub struct Login {
    #[cfg(feature = "idp")]
    service: hexon_idp::LoginService,
    #[cfg(feature = "idp")]
    users: hexon_idp::ConfigUsers,
}

impl Login {
    /// Whether the login service answers requests for `host` (without
    /// port) and `path`: the login layer takes them before the rest of the
    /// stack.
    pub(crate) fn claims(&self, host: Option<&str>, path: &str) -> bool {
        #[cfg(feature = "idp")]
        {
            self.service.handles_target(host, path)
        }
        #[cfg(not(feature = "idp"))]
        {
            let _ = (host, path);
            false
        }
    }
}

fn route_hosts(config: &Config) -> Vec<String> {
    config.routes.iter().map(|r| r.spec.host.clone()).collect()
}

impl Login {
    /// Start the login service if `[login]` is configured.
    pub async fn start(
        config: &Config,
        state: &GatewayState,
    ) -> Result<Option<Login>, GatewayError> {
        let Some(login) = &config.login else {
            return Ok(None);
        };
        #[cfg(feature = "idp")]
        {
            let users = hexon_idp::ConfigUsers::new(config);
            let service = hexon_idp::LoginService::start(hexon_idp::LoginParts {
                config: login.clone(),
                route_hosts: route_hosts(config),
                users: std::sync::Arc::new(users.clone()),
                store: state.durable.clone(),
                kv: state.kv.clone(),
                sessions: state.sessions.clone(),
                keys: state.keys.clone(),
                clock: None,
            })
            .await
            .map_err(|e| GatewayError::Other(format!("[login]: {e}")))?;
            tracing::info!(login_url = %service.login_url(), "login host enabled");
            Ok(Some(Login { service, users }))
        }
        #[cfg(not(feature = "idp"))]
        {
            let _ = (login, state, route_hosts);
            Err(GatewayError::Other(
                "[login] needs the login service: build hexon-proxy with the `idp` feature (the hexon binary has it)".into(),
            ))
        }
    }

    /// Where browsers without a session are sent.
    pub fn login_url(&self) -> String {
        #[cfg(feature = "idp")]
        {
            self.service.login_url()
        }
        #[cfg(not(feature = "idp"))]
        {
            String::new()
        }
    }

    /// Apply a reloaded configuration's users and route hosts.
    pub fn reload(&self, config: &Config) {
        #[cfg(feature = "idp")]
        {
            self.users.set(config);
            let hosts = route_hosts(config);
            self.service
                .set_route_hosts(hosts.iter().map(String::as_str));
        }
        #[cfg(not(feature = "idp"))]
        let _ = (config, route_hosts);
    }
}

/// Answers login requests; passes everything else on.
#[derive(Clone, Debug)]
pub struct LoginLayer {
    login: Option<Login>,
    trusted: crate::proxy::TrustedProxies,
}

impl LoginLayer {
    /// Answer with `login` (none: pass everything on). Behind a proxy in
    /// `trusted`, the client's address (for throttling and the session
    /// list) is the last `X-Forwarded-For` entry, the one the proxy added.
    pub fn new(login: Option<Login>, trusted: crate::proxy::TrustedProxies) -> Self {
        LoginLayer { login, trusted }
    }
}

impl<S> Layer<S> for LoginLayer {
    type Service = LoginRoute<S>;
    fn layer(&self, inner: S) -> LoginRoute<S> {
        LoginRoute {
            inner,
            login: self.login.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

/// The service of [`LoginLayer`].
#[derive(Clone, Debug)]
pub struct LoginRoute<S> {
    inner: S,
    #[cfg_attr(not(feature = "idp"), allow(dead_code))]
    login: Option<Login>,
    #[cfg_attr(not(feature = "idp"), allow(dead_code))]
    trusted: crate::proxy::TrustedProxies,
}

/// The client's address: the peer, or what a trusted proxy appended to
/// `X-Forwarded-For`.
#[cfg(feature = "idp")]
fn client_ip(
    parts: &http::request::Parts,
    trusted: &crate::proxy::TrustedProxies,
) -> std::net::IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectionInfo>()
        .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| {
            c.peer.ip().to_canonical()
        });
    if !trusted.is_trusted(peer) {
        return peer;
    }
    // What Traefik and Caddy append (the same reading forward-auth uses).
    crate::forward_auth::client_ip(&parts.headers, false).map_or(peer, |ip| ip.to_canonical())
}

impl<S, B> Service<Request<B>> for LoginRoute<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        #[cfg(feature = "idp")]
        if let Some(login) = &self.login {
            let (parts, body) = req.into_parts();
            if login.service.handles(&parts) {
                let ip = client_ip(&parts, &self.trusted);
                let service = login.service.clone();
                let req = Request::from_parts(parts, body);
                return crate::body::own(async move {
                    let res = service.call(req, ip).await;
                    Ok(res.map(crate::body::boxed))
                });
            }
            return crate::body::pass(self.inner.call(Request::from_parts(parts, body)));
        }
        crate::body::pass(self.inner.call(req))
    }
}
