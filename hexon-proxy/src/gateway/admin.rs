//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process
//! answers), `/readyz` (configuration loaded and listeners accepting),
//! `/health` (the durable and shared stores answer), and
//! the admin REST API under `/api/v1/` ([`super::admin_api`]). Bind it to
//! loopback or an internal network only.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// Readiness: flipped by the gateway once it serves, and lowered while the
/// shared state store does not answer (requests that need it would fail
/// with 503; a load balancer should send them elsewhere).
#[derive(Debug)]
pub struct Readiness {
    serving: AtomicBool,
    state_up: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            serving: AtomicBool::new(false),
            state_up: AtomicBool::new(true),
        }
    }
}

impl Readiness {
    /// Mark serving (or not).
    pub fn set(&self, ready: bool) {
        self.serving.store(ready, Ordering::Release);
    }
    /// Record whether the shared state store answers.
    pub fn set_state_up(&self, up: bool) {
        self.state_up.store(up, Ordering::Release);
    }
    /// Whether ready: serving, with the state store answering.
    pub fn get(&self) -> bool {
        self.serving.load(Ordering::Acquire) && self.state_up.load(Ordering::Acquire)
    }
    fn why_not(&self) -> &'static str {
        if !self.serving.load(Ordering::Acquire) {
            "not ready: not serving yet\n"
        } else {
            "not ready: the shared state store does not answer\n"
        }
    }
}

/// Serve the admin endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    api: Option<super::admin_api::AdminApi>,
) {
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let path = req.uri().path();
        let api = api
            .clone()
            .filter(|_| path.starts_with("/api/v1/") || path == "/health");
        let res = if api.is_some() {
            None
        } else {
            Some(answer(&req, &metrics, &ready))
        };
        async move {
            Ok::<_, Infallible>(match (res, api) {
                (Some(res), _) => res,
                (None, Some(api)) if req.uri().path() == "/health" => api.health().await,
                (None, Some(api)) => api.handle(req).await,
                (None, None) => Response::new(Full::new(Bytes::new())),
            })
        }
    });
    super::serve_plain(listener, svc).await;
}

fn answer<B>(req: &Request<B>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if ready.get() => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            ready.why_not().to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn readyz(ready: &Readiness) -> (StatusCode, String) {
        let req = Request::get("/readyz").body(()).unwrap();
        let res = answer(&req, &Metrics::new(), ready);
        let body = res.body().clone();
        let bytes = body_text(body);
        (res.status(), bytes)
    }

    fn body_text(body: Full<Bytes>) -> String {
        use http_body::Body as _;
        let mut body = std::pin::pin!(body);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match body.as_mut().poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
            }
            _ => String::new(),
        }
    }

    #[test]
    fn readiness_follows_serving_and_the_state_store() {
        let ready = Readiness::default();
        assert_eq!(
            readyz(&ready),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: not serving yet\n".into()
            )
        );
        ready.set(true);
        assert_eq!(readyz(&ready), (StatusCode::OK, "ready\n".into()));
        ready.set_state_up(false);
        assert_eq!(
            readyz(&ready),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the shared state store does not answer\n".into()
            )
        );
        ready.set_state_up(true);
        assert_eq!(readyz(&ready).0, StatusCode::OK);
    }
}
