//! The audit log: one JSON line per request — request id, client, method,
//! host, path, user, route, decision, reason, status, latency — written by a
//! background task so a slow disk never blocks a request. Also feeds the
//! Prometheus metrics.
//!
//! [`AuditLayer`] is the outermost layer; [`CaptureLayer`] sits right after
//! authentication and copies the caller's identity into the request's
//! [`AuditSlot`], so even requests the policy refuses are logged with their user.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use hexon_core::Identity;
use http::{Request, Response};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

use super::metrics::Metrics;
use crate::authz::AuthzOutcome;
use crate::body::BoxBody;
use crate::ext::{ConnectionInfo, MatchedRoute};

/// What the inner layers learned about a request, for its audit line.
#[derive(Clone, Debug, Default)]
pub struct AuditSlot(Arc<Mutex<AuditFields>>);

/// Shared handles only (no copies of strings): most requests are never
/// written out (`audit = "off"`), and this is filled for every one.
#[derive(Debug, Default)]
struct AuditFields {
    user: Option<Identity>,
    route: Option<Arc<str>>,
    decision: Option<&'static str>,
    reason: Option<std::borrow::Cow<'static, str>>,
}

impl AuditSlot {
    fn with<R>(&self, f: impl FnOnce(&mut AuditFields) -> R) -> R {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Record the policy's outcome (verdict and reason codes, route name).
    pub fn set_decision(&self, decision: &'static str, reason: &str, route: Option<&str>) {
        self.with(|a| {
            a.decision = Some(decision);
            a.reason = Some(reason.to_owned().into());
            if let Some(r) = route {
                a.route = Some(r.into());
            }
        });
    }
}

/// Where audit lines go.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: Option<mpsc::Sender<String>>,
    metrics: Arc<Metrics>,
}

impl AuditSink {
    /// `stdout`, `off`, or a file path (appended). Starts the writer task.
    pub async fn open(target: &str, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match target {
            "off" => return Ok(AuditSink { tx: None, metrics }),
            "stdout" => Box::new(tokio::io::stdout()),
            path => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        let (tx, rx) = mpsc::channel::<String>(16_384);
        tokio::spawn(write_lines(rx, writer));
        Ok(AuditSink {
            tx: Some(tx),
            metrics,
        })
    }

    /// Whether lines are written (not `off`).
    pub(crate) fn logs(&self) -> bool {
        self.tx.is_some()
    }

    /// The metrics every request feeds.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queue one request's line.
    pub(crate) fn write(&self, l: &Line<'_>) {
        if self.tx.is_none() {
            return;
        }
        let line = serde_json::json!({
            "ts": jiff::Timestamp::now().to_string(),
            "request_id": l.request_id,
            "client": l.client,
            "method": l.method,
            "host": l.host,
            "path": l.path,
            "user": l.user,
            "route": l.route.filter(|r| !r.is_empty()),
            "decision": l.decision,
            "reason": l.reason,
            "rule": l.rule,
            "status": l.status,
            "latency_ms": (l.elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        });
        self.emit(line.to_string());
    }

    fn emit(&self, line: String) {
        if let Some(tx) = &self.tx {
            if tx.try_send(line).is_err() {
                tracing::warn!("audit log is not keeping up; a line was dropped");
            }
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<String>,
    mut w: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        // Batch whatever else is queued into one write.
        while let Ok(more) = rx.try_recv() {
            line.push_str(&more);
            line.push('\n');
            if line.len() > 64 * 1024 {
                break;
            }
        }
        if w.write_all(line.as_bytes()).await.is_err() || w.flush().await.is_err() {
            tracing::error!("cannot write the audit log");
        }
    }
}

/// Outermost layer: times the request and writes its audit line.
#[derive(Clone, Debug)]
pub struct AuditLayer {
    sink: AuditSink,
}

impl AuditLayer {
    /// Log to `sink`.
    pub fn new(sink: AuditSink) -> Self {
        AuditLayer { sink }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            sink: self.sink.clone(),
        }
    }
}

/// Service of [`AuditLayer`].
#[derive(Clone, Debug)]
pub struct Audit<S> {
    inner: S,
    sink: AuditSink,
}

impl<S, B> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<BoxBody>, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let slot = AuditSlot::default();
        req.extensions_mut().insert(slot.clone());
        // What only the audit line needs is copied only when there is one
        // (metrics need just the route, decision and status).
        let logged = self.sink.tx.is_some().then(|| {
            let method = req.method().to_string();
            let host = req
                .uri()
                .host()
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .map(clip)
                .unwrap_or_default();
            let path = clip(req.uri().path());
            let client = req
                .extensions()
                .get::<ConnectionInfo>()
                .map(|c| c.peer.ip().to_string());
            (method, host, path, client)
        });
        let sink = self.sink.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let elapsed = start.elapsed();
            let status = res.as_ref().map(|r| r.status().as_u16()).unwrap_or(500);
            let outcome = res
                .as_ref()
                .ok()
                .and_then(|r| r.extensions().get::<AuthzOutcome>());
            let mut fields = slot.with(std::mem::take);
            if let Some(o) = outcome {
                fields.decision = Some(o.verdict.as_str());
                fields.reason = Some(o.reason.as_str().into());
                if let Some(r) = &o.route {
                    fields.route = Some(r.clone());
                }
            }
            let decision = fields.decision.unwrap_or("none");
            sink.metrics.observe(
                fields.route.as_ref(),
                decision,
                status,
                elapsed.as_secs_f64(),
            );
            let Some((method, host, path, client)) = logged else {
                return res;
            };
            let rule = outcome.and_then(|o| o.rule.as_deref());
            let request_id = res
                .as_ref()
                .ok()
                .and_then(|r| r.headers().get(crate::request_id::X_REQUEST_ID))
                .and_then(|v| v.to_str().ok());
            sink.write(&Line {
                request_id,
                client: client.as_deref(),
                method: &method,
                host: &host,
                path: &path,
                user: fields.user.as_ref().map(Identity::username),
                route: fields.route.as_deref(),
                decision,
                reason: fields.reason.as_deref(),
                rule,
                status,
                elapsed,
            });
            res
        })
    }
}

/// One request's audit line.
pub(crate) struct Line<'a> {
    pub(crate) request_id: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    pub(crate) decision: &'a str,
    pub(crate) reason: Option<&'a str>,
    pub(crate) rule: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) elapsed: std::time::Duration,
}

/// Client-controlled strings in audit lines are cut at 1 KiB, so a flood of
/// long paths cannot make the queue hold gigabytes.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 1024;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or(""))
}

/// Copies the authenticated identity and the matched route into the
/// request's [`AuditSlot`]. Place it right after authentication.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureLayer;

impl<S> Layer<S> for CaptureLayer {
    type Service = Capture<S>;
    fn layer(&self, inner: S) -> Capture<S> {
        Capture { inner }
    }
}

/// Service of [`CaptureLayer`].
#[derive(Clone)]
pub struct Capture<S> {
    inner: S,
}

impl<S: fmt::Debug> fmt::Debug for Capture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B> Service<Request<B>> for Capture<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if let Some(slot) = req.extensions().get::<AuditSlot>() {
            let user = req.extensions().get::<Identity>().cloned();
            let route = req.extensions().get::<MatchedRoute>().map(|r| r.0.clone());
            slot.with(|a| {
                if user.is_some() {
                    a.user = user;
                }
                if route.is_some() {
                    a.route = route;
                }
            });
        }
        self.inner.call(req)
    }
}
