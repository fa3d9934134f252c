//! Test helpers (feature `test-util`): real upstream servers for tests that
//! drive the proxy or the whole gateway over sockets.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::BoxBody;

/// What an upstream answers, as a shareable async function.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>
        + Send
        + Sync,
>;

/// A [`Handler`] from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A hyper upstream on 127.0.0.1 (HTTP/1.1 and h2c prior knowledge,
/// upgrades on), serving `h` until the runtime stops.
pub async fn start_upstream(h: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Read a body to its end, counting data bytes without keeping them.
pub async fn count_body(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// After the `101` this handler returns, echo every byte on the upgraded
/// connection (a WebSocket-shaped upstream without framing).
pub fn echo_after_upgrade(req: &mut Request<Incoming>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
                break;
            };
            if io.write_all(data).await.is_err() {
                break;
            }
        }
    });
}

/// A hyper server on 127.0.0.1 in front of `proxy` that plays the upper
/// layers: it inserts `ConnectionInfo`, a `RequestId` (`rid-N`) and, when
/// given, `MatchedRoute`. Serves until the runtime stops.
pub async fn start_gateway(
    proxy: crate::proxy::ReverseProxy,
    route: Option<&'static str>,
) -> std::io::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower_service::Service as _;
    static RID: AtomicU64 = AtomicU64::new(1);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let ext = req.extensions_mut();
                    ext.insert(crate::ext::ConnectionInfo::plain(peer, local));
                    let id = format!("rid-{}", RID.fetch_add(1, Ordering::Relaxed));
                    ext.insert(crate::ext::RequestId(id.into()));
                    if let Some(r) = route {
                        ext.insert(crate::ext::MatchedRoute(r.into()));
                    }
                    let mut p = proxy.clone();
                    p.call(req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
