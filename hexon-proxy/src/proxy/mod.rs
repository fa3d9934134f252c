//! The reverse proxy: the [`tower_service::Service`] at the bottom of the
//! stack that forwards an authenticated, authorized, signed request to an
//! upstream and streams the response back.
//!
//! ```text
//! listener → strip → request_id → authn → authz → sign → ReverseProxy → upstream
//! ```
//!
//! - **Routing**: the upstream group is chosen by the [`MatchedRoute`]
//!   extension in a hot-swappable [`RoutingTable`] ([`RoutingTableHandle`]).
//!   No route, or a route the table does not know → 502 (fail closed).
//! - **Upstreams**: `http://` (HTTP/1.1), `https://` (rustls, HTTP/2 or
//!   HTTP/1.1 by ALPN, optional client certificate) and `h2c://` (HTTP/2
//!   prior knowledge); base path + request path, query preserved.
//! - **Authority**: the client's `Host` (or HTTP/2 `:authority`) is
//!   preserved: sent as `Host`, and as `:authority` on HTTP/2 upstreams, so
//!   a backend verifying the identity signature's `@authority` against its
//!   public names sees what the gateway signed. HTTP/1.1 upstreams get an
//!   origin-form request target.
//! - **Balancing**: [`Balance`] (round-robin today).
//! - **Pooling** ([`PoolConfig`]): `http://` upstreams keep a stack of
//!   HTTP/1.1 connections per connection thread (`h1pool`); TLS, HTTP/2,
//!   h2c and upgrades use a hyper-util pooled client per upstream and thread.
//! - **Timeouts**: [`Timeouts`] per group; 504 on expiry before the response
//!   head, 502 when the upstream refuses or resets.
//! - **Headers**: hop-by-hop hygiene both ways and forwarding headers; see
//!   [`TrustedProxies`] and the list in the `forward` module docs.
//! - **Bodies** stream both ways; the request body is limited
//!   ([`GroupConfig::max_request_body`], 413).
//! - **WebSocket**: HTTP/1.1 `Upgrade: websocket` is forwarded and spliced.
//! - **gRPC**: HTTP/2 end to end with trailers and `TE: trailers`.
//!
//! Errors answer with [`crate::respond::error`] (status and request id only);
//! detail goes to `tracing` with the fields `request_id`, `route`,
//! `upstream`, `error`.

mod balance;
mod client;
mod error;
mod forward;
pub(crate) mod h1codec;
mod h1conns;
mod h1pool;
mod limit;
mod resend;
mod stacks;
mod upgrade;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{Extensions, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

pub use balance::{Balance, RoundRobin};
pub use client::{PoolConfig, UpstreamTls};
pub use error::UpstreamError;
pub use forward::TrustedProxies;
#[cfg(test)]
pub(crate) use forward::prepare_request;
pub(crate) use forward::{is_valid_value, push_forwarded_value, push_ip};
pub use h1pool::RESEND_AFTER_IDLE;
pub(crate) use upstream::join_path_into;
pub use upstream::{
    DEFAULT_MAX_REQUEST_BODY, GroupConfig, Timeouts, Upstream, UpstreamGroup, UpstreamScheme,
};

use self::error::Chain;
use self::h1pool::PooledBody;
use self::limit::{LimitedBody, LogContext, TimedBody};
use crate::body::{BoxBody, BoxError};
use crate::ext::{ConnectionInfo, MatchedRoute, RequestId};
use crate::respond;

/// Route name → upstream group. Immutable once built; swap a whole new
/// table through a [`RoutingTableHandle`].
#[derive(Debug, Default)]
pub struct RoutingTable {
    // Read on every request; foldhash, as route names come from the
    // configuration.
    routes: HashMap<Arc<str>, Arc<UpstreamGroup>, foldhash::fast::RandomState>,
}

impl RoutingTable {
    /// An empty table (every request gets 502).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace the group of `route`.
    pub fn insert(&mut self, route: impl Into<Arc<str>>, group: UpstreamGroup) -> &mut Self {
        self.routes.insert(route.into(), Arc::new(group));
        self
    }

    /// Add or replace the group of `route` with one shared with another
    /// table (a rebuilt table keeps an unchanged route's group, and so its
    /// pooled connections).
    pub fn insert_shared(
        &mut self,
        route: impl Into<Arc<str>>,
        group: Arc<UpstreamGroup>,
    ) -> &mut Self {
        self.routes.insert(route.into(), group);
        self
    }

    /// The group of `route`.
    pub fn get(&self, route: &str) -> Option<&Arc<UpstreamGroup>> {
        self.routes.get(route)
    }

    /// The route's name as the table holds it (shared, not copied), and
    /// its group.
    pub fn get_named(&self, route: &str) -> Option<(&Arc<str>, &Arc<UpstreamGroup>)> {
        self.routes.get_key_value(route)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// A table from the configuration's routes, every group with `config`.
    /// A route without upstreams gets an empty group (503).
    pub fn from_routes(
        routes: &[hexon_core::config::RouteConfig],
        config: &GroupConfig,
    ) -> Result<Self, UpstreamError> {
        let mut table = RoutingTable::new();
        for r in routes {
            let group = UpstreamGroup::new(&r.upstream, config.clone())?;
            table.insert(r.spec.name.as_str(), group);
        }
        Ok(table)
    }
}

/// A shared, hot-swappable [`RoutingTable`]. Clones share the table.
///
/// [`load`](Self::load) takes a snapshot for one request; [`store`](Self::store)
/// swaps in a new table on config reload. In-flight requests finish on the
/// snapshot they loaded (and its connection pools).
#[derive(Clone, Debug, Default)]
pub struct RoutingTableHandle(Arc<RwLock<Arc<RoutingTable>>>);

impl RoutingTableHandle {
    /// A handle on `table`.
    pub fn new(table: RoutingTable) -> Self {
        RoutingTableHandle(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The current table.
    pub fn load(&self) -> Arc<RoutingTable> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replace the table; returns the previous one.
    pub fn store(&self, table: RoutingTable) -> Arc<RoutingTable> {
        self.store_shared(Arc::new(table))
    }

    /// Replace the table with one the caller keeps a handle on; returns the
    /// previous one.
    pub fn store_shared(&self, table: Arc<RoutingTable>) -> Arc<RoutingTable> {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *guard, table)
    }
}

/// The reverse proxy service. Cheap to clone; never fails (errors become
/// responses).
///
/// Reads the request extensions [`MatchedRoute`] (required),
/// [`ConnectionInfo`] (for `X-Forwarded-*`; without it the client's values
/// are dropped and no `for=` is added) and [`RequestId`].
#[derive(Clone, Debug)]
pub struct ReverseProxy {
    routes: RoutingTableHandle,
    trust: TrustedProxies,
}

impl ReverseProxy {
    /// A proxy routing through `routes`, trusting no forwarding proxy.
    pub fn new(routes: RoutingTableHandle) -> Self {
        ReverseProxy {
            routes,
            trust: TrustedProxies::none(),
        }
    }

    /// Believe `X-Forwarded-*`/`Forwarded` from the peers `trust` accepts.
    pub fn with_trusted_proxies(mut self, trust: TrustedProxies) -> Self {
        self.trust = trust;
        self
    }

    /// The routing table handle (for reloads).
    pub fn routes(&self) -> &RoutingTableHandle {
        &self.routes
    }
}

impl<B> tower_service::Service<Request<B>> for ReverseProxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req).await) })
    }
}

/// What a failure log line carries.
struct Failure<'a> {
    rid: Option<&'a RequestId>,
    route: &'a str,
    upstream: &'a str,
    flavor: respond::Flavor,
}

impl Failure<'_> {
    fn respond(
        &self,
        status: StatusCode,
        msg: &str,
        err: Option<&(dyn std::error::Error + 'static)>,
    ) -> Response<BoxBody> {
        let rid = self.rid.map(RequestId::as_str).unwrap_or("-");
        match err {
            Some(e) => tracing::warn!(
                request_id = %rid,
                route = %self.route,
                upstream = %self.upstream,
                error = %Chain(e),
                status = status.as_u16(),
                "{msg}"
            ),
            None => tracing::warn!(
                request_id = %rid,
                route = %self.route,
                upstream = %self.upstream,
                status = status.as_u16(),
                "{msg}"
            ),
        }
        respond::error(status, self.rid, self.flavor)
    }
}

impl ReverseProxy {
    async fn forward<B>(self, mut req: Request<B>) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let rid = req.extensions().get::<RequestId>().cloned();
        let route = req.extensions().get::<MatchedRoute>().cloned();
        let conn = req.extensions().get::<ConnectionInfo>().cloned();
        let mut fail = Failure {
            rid: rid.as_ref(),
            route: route.as_ref().map(MatchedRoute::name).unwrap_or("-"),
            upstream: "-",
            flavor: respond::Flavor::of(req.headers()),
        };

        let Some(route) = route.as_ref() else {
            return fail.respond(StatusCode::BAD_GATEWAY, "no matched route", None);
        };
        // A snapshot pinned on the request (one configuration generation for
        // the whole stack) wins over the handle's current table.
        let table = req
            .extensions()
            .get::<Arc<RoutingTable>>()
            .cloned()
            .unwrap_or_else(|| self.routes.load());
        let Some(group) = table.get(route.name()).cloned() else {
            return fail.respond(StatusCode::BAD_GATEWAY, "route has no upstream group", None);
        };
        let config = group.config();

        if let Some(limit) = config.max_request_body {
            let declared = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return fail.respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over the size limit",
                    None,
                );
            }
        }

        let Some(upstream) = group.pick().cloned() else {
            return fail.respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream available",
                None,
            );
        };
        fail.upstream = upstream.url();

        // The public authority: Host, else the HTTP/2 :authority.
        let host = match req.headers().get(HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let Some((host, authority)) = host.and_then(|h| {
            let a = Authority::try_from(h.as_bytes()).ok()?;
            Some((h, a))
        }) else {
            return fail.respond(
                StatusCode::BAD_REQUEST,
                "request without a usable Host",
                None,
            );
        };

        let ws = upgrade::websocket(req.version(), req.headers());
        let client_upgrade = ws.as_ref().map(|_| hyper::upgrade::on(&mut req));
        // `None`: the upstream's ordinary client, looked up when used (an
        // `http://` upstream's requests mostly take its kept connections).
        let upgrade_client = match ws {
            Some(_) => match upstream.upgrade_client() {
                Some(c) => Some(c),
                None => {
                    return fail.respond(
                        StatusCode::BAD_GATEWAY,
                        "WebSocket upgrade to an h2c upstream",
                        None,
                    );
                }
            },
            None => None,
        };

        let (parts, body) = req.into_parts();
        let uri = match upstream.request_uri(&authority, parts.uri.path_and_query()) {
            Ok(u) => u,
            Err(e) => {
                return fail.respond(
                    StatusCode::BAD_REQUEST,
                    "cannot build upstream URI",
                    Some(&e),
                );
            }
        };
        let mut headers = parts.headers;
        forward::prepare_request(
            &mut headers,
            ws.as_ref(),
            &host,
            conn.as_ref(),
            &self.trust,
            rid.as_ref(),
        );
        let too_large = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(body, config.max_request_body, Arc::clone(&too_large));
        let mut up_req = Request::new(body.boxed_unsync());
        *up_req.method_mut() = parts.method;
        *up_req.uri_mut() = uri;
        *up_req.version_mut() = if upstream.scheme() == UpstreamScheme::H2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        *up_req.headers_mut() = headers;

        let t = config.timeouts;
        let (deadline, head_deadline) = deadlines(&t);
        // Plain `http://` without an upgrade: the thread's kept connections
        // (CONNECT keeps hyper-util's authority-form handling).
        let pool = if ws.is_none() && up_req.method() != http::Method::CONNECT {
            upstream.h1_pool()
        } else {
            None
        };
        let sent = async {
            match pool {
                Some(pool) => {
                    h1pool::origin_form(up_req.uri_mut());
                    pool.send(up_req).await
                }
                None => {
                    let client = upgrade_client.unwrap_or_else(|| upstream.client());
                    // Upgrades are not sent again (see `resend`).
                    let copy = if ws.is_none() {
                        resend::copy_if_resendable(&up_req)
                    } else {
                        None
                    };
                    let res = match (client.request(up_req).await, copy) {
                        (Err(e), Some(copy)) if resend::closed_under(&e) => {
                            tracing::debug!(error = %Chain(&e), "upstream closed a connection under a request; sending it again");
                            client.request(*copy).await
                        }
                        (res, _) => res,
                    };
                    match res {
                        Ok(res) => Ok(res.map(|b| PooledBody::new(b, None))),
                        Err(e) => Err(BoxError::from(e)),
                    }
                }
            }
        };
        // Boxed: the send is the largest state of this future by far, and
        // unboxed it made every move of the whole future (into the boxes and
        // layers above) copy it too.
        let res = match Box::pin(tokio::time::timeout_at(head_deadline, sent)).await {
            Err(_) => {
                return fail.respond(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream response timeout",
                    None,
                );
            }
            Ok(Err(e)) => {
                let status = if too_large.load(Ordering::Relaxed) {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    error::status_for(&*e)
                };
                return fail.respond(status, "upstream request failed", Some(&*e));
            }
            Ok(Ok(res)) => res,
        };

        // Shared, not copied: read only when a body times out or an
        // upgrade ends.
        let ctx = LogContext {
            request_id: rid
                .as_ref()
                .map_or_else(|| Arc::from("-"), |r| Arc::clone(&r.0)),
            route: Arc::clone(&route.0),
            upstream: upstream.clone(),
        };
        let (mut parts, body) = res.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let up_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
            match (client_upgrade, up_upgrade) {
                (Some(c), Some(u)) => upgrade::splice(c, u, ctx),
                _ => {
                    return fail.respond(
                        StatusCode::BAD_GATEWAY,
                        "upstream switched protocols without an upgrade request",
                        None,
                    );
                }
            }
            forward::prepare_response(&mut parts.headers, true);
            parts.extensions = Extensions::new();
            parts.version = Version::HTTP_11;
            return Response::from_parts(parts, crate::body::empty());
        }

        forward::prepare_response(&mut parts.headers, false);
        parts.extensions = Extensions::new();
        parts.version = Version::HTTP_11;
        let body = TimedBody::new(body, t.idle, deadline, ctx);
        Response::from_parts(parts, crate::body::boxed(body))
    }
}

/// What the express lane ([`crate::express`]) sends upstream: a request
/// head, already rewritten for the upstream, for a request without a body.
pub(crate) struct ExpressForward<'a> {
    /// The whole head: request line, fields, empty line.
    pub(crate) head: &'a [u8],
    /// `GET` or `HEAD`.
    pub(crate) method: &'a http::Method,
    pub(crate) upstream: &'a Upstream,
    pub(crate) timeouts: Timeouts,
    pub(crate) request_id: &'a RequestId,
    pub(crate) route: &'a Arc<str>,
    pub(crate) flavor: respond::Flavor,
}

/// What the express lane answers a client.
pub(crate) enum ExpressAnswer {
    /// The upstream's answer: its head (the fields a client may see are
    /// the offsets `forward_express` was given) and its body.
    Upstream {
        head: h1codec::ResponseHead,
        body: ExpressBody,
    },
    /// The gateway's own answer (an upstream failure), request id set.
    Own(Response<BoxBody>),
}

/// An upstream answer's body on the express lane.
pub(crate) enum ExpressBody {
    /// All of it, read with the head (the usual small answer): its
    /// connection is back in the pool, and there is nothing to wait for.
    Whole(Bytes),
    /// The rest is still to come from the upstream, timed (idle and total
    /// deadlines) as the stack times it.
    Streaming(BoxBody),
}

impl ExpressAnswer {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ExpressAnswer::Upstream { head, .. } => head.status,
            ExpressAnswer::Own(res) => res.status(),
        }
    }
}

/// The express lane's upstream exchange, answered as [`ReverseProxy`]
/// answers an `http://` request: the same timeouts, the same error
/// answers (with the request id), the body timed. The upstream's head is
/// left as read, its client-visible fields' offsets in `fields`; the
/// listener writes it (hop-by-hop fields are already out, `X-Request-Id`
/// is the listener's to set).
pub(crate) async fn forward_express(
    f: ExpressForward<'_>,
    fields: &mut Vec<[usize; 4]>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> ExpressAnswer {
    let fail = Failure {
        rid: Some(f.request_id),
        route: f.route,
        upstream: f.upstream.url(),
        flavor: f.flavor,
    };
    let own = |res| ExpressAnswer::Own(with_request_id(res, f.request_id));
    let Some(conns) = f.upstream.express_conns() else {
        return own(fail.respond(
            StatusCode::BAD_GATEWAY,
            "upstream has no HTTP/1.1 connections",
            None,
        ));
    };
    let t = f.timeouts;
    let (deadline, head_deadline) = deadlines(&t);
    let sent = conns.send(f.head, f.method, fields);
    let (head, mut body) = match until(timer, head_deadline, sent).await {
        None => {
            return own(fail.respond(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream response timeout",
                None,
            ));
        }
        Some(Err(e)) => {
            let status = error::status_for(&*e);
            return own(fail.respond(status, "upstream request failed", Some(&*e)));
        }
        Some(Ok(answer)) => answer,
    };
    if let Some(data) = body.take_whole() {
        return ExpressAnswer::Upstream {
            head,
            body: ExpressBody::Whole(data),
        };
    }
    let ctx = LogContext {
        request_id: Arc::clone(&f.request_id.0),
        route: Arc::clone(f.route),
        upstream: f.upstream.clone(),
    };
    let body = crate::body::boxed(TimedBody::new(body, t.idle, deadline, ctx));
    ExpressAnswer::Upstream {
        head,
        body: ExpressBody::Streaming(body),
    }
}

/// `fut`'s output, or `None` when `deadline` comes first, timed by `timer`,
/// which the caller keeps from one call to the next (made on first use).
/// A new timer per call (`tokio::time::timeout_at`) is entered into the
/// runtime's timer wheel and taken out again each time.
///
/// The kept timer is moved lazily. Set for later than `deadline`, it is
/// moved earlier at once; set for earlier (the usual case: each request's
/// deadline is a little later than the last one's), it is left, and when
/// it fires before `deadline` it is moved then. So a connection's timer
/// moves about once per timeout, not once per request.
pub(crate) async fn until<F: Future>(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // (Once moved, the timer is at `deadline`: later polls leave it.)
        if t.deadline() > deadline {
            t.as_mut().reset(deadline);
        }
        loop {
            match t.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => return Poll::Ready(None),
                // Fired for an earlier deadline: on to this one.
                Poll::Ready(()) => t.as_mut().reset(deadline),
            }
        }
    })
    .await
}

/// From now: the whole exchange's deadline (if any) and the answer head's.
fn deadlines(t: &Timeouts) -> (Option<Instant>, Instant) {
    let start = Instant::now();
    let deadline = t.total.map(|d| start + d);
    let head = start + t.response_header;
    (deadline, deadline.map_or(head, |d| d.min(head)))
}

fn with_request_id(mut res: Response<BoxBody>, rid: &RequestId) -> Response<BoxBody> {
    if let Ok(v) = HeaderValue::from_str(rid.as_str()) {
        res.headers_mut().insert(crate::request_id::X_REQUEST_ID, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The kept timer ends each wait at that wait's deadline, whether it
    /// was set for earlier (left, then moved when it fires), for later
    /// (moved at once), or fired long ago; a future ready in time wins.
    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_ends_each_wait_at_its_own_deadline() {
        let mut timer = None;
        let never = std::future::pending::<()>;
        // (Timers fire on whole milliseconds: at most one late.)
        let waited = |start: Instant, d: Duration| {
            let w = Instant::now() - start;
            assert!(
                w >= d && w <= d + Duration::from_millis(1),
                "waited {w:?}, not {d:?}"
            );
        };

        // First use: made for this deadline.
        let start = Instant::now();
        assert_eq!(
            until(&mut timer, start + Duration::from_secs(1), never()).await,
            None
        );
        waited(start, Duration::from_secs(1));

        // Set for earlier (it fired already): waits for the new deadline.
        let start = Instant::now();
        assert_eq!(
            until(&mut timer, start + Duration::from_secs(5), never()).await,
            None
        );
        waited(start, Duration::from_secs(5));

        // Set for earlier and not yet fired: it fires, is moved, and the
        // wait still ends at the new deadline.
        let start = Instant::now();
        let early = start + Duration::from_secs(2);
        timer.as_mut().unwrap().as_mut().reset(early);
        assert_eq!(
            until(&mut timer, start + Duration::from_secs(3), never()).await,
            None
        );
        waited(start, Duration::from_secs(3));

        // Set for later: moved earlier at once.
        let start = Instant::now();
        timer
            .as_mut()
            .unwrap()
            .as_mut()
            .reset(start + Duration::from_secs(60));
        assert_eq!(
            until(&mut timer, start + Duration::from_secs(1), never()).await,
            None
        );
        waited(start, Duration::from_secs(1));

        // A future that is ready before the deadline gives its output, and
        // a deadline already past ends a wait for a pending one at once.
        let start = Instant::now();
        let soon = tokio::time::sleep(Duration::from_millis(300));
        let out = until(&mut timer, start + Duration::from_secs(1), async {
            soon.await;
            7
        })
        .await;
        assert_eq!(out, Some(7));
        waited(start, Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(
            until(&mut timer, start - Duration::from_millis(1), never()).await,
            None
        );
        waited(start, Duration::ZERO);
    }
}
