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

/// One HTTP/1.1 response read by [`RawConn::answer`]: status, header fields
/// (names lowercased, values trimmed, in order) and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Header fields in the order received; `x-truncated: 1` is added when
    /// a chunked body ended before its last chunk.
    pub headers: Vec<(String, String)>,
    /// The body (decoded when chunked).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection speaking HTTP/1.1 as raw bytes, to see exactly what
/// a server writes: each read waits at most 5 s.
#[derive(Debug)]
pub struct RawConn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl RawConn {
    /// Connect to `addr`.
    pub async fn open(addr: SocketAddr) -> std::io::Result<RawConn> {
        Ok(RawConn {
            s: tokio::net::TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Write `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.s.write_all(bytes).await
    }

    /// Write `request`, then read its answer ([`answer`](Self::answer)).
    pub async fn exchange(&mut self, request: &[u8], method: &str) -> std::io::Result<Answer> {
        self.send(request).await?;
        self.answer(method).await
    }

    /// Read more; `false` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt as _;
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), self.s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
            .unwrap_or(0);
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    async fn take(&mut self, n: usize) -> std::io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf.drain(..n).collect()))
    }

    async fn line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next response, to a request made with `method`: framed by
    /// `content-length` (what came before a close when short), chunked
    /// encoding, or the end of the stream.
    pub async fn answer(&mut self, method: &str) -> std::io::Result<Answer> {
        let status_line = self
            .line()
            .await?
            .ok_or_else(|| protocol("connection closed before a response"))?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| protocol("no HTTP/1.x status line"))?;
        let mut headers = Vec::new();
        loop {
            let line = self
                .line()
                .await?
                .ok_or_else(|| protocol("connection closed in a head"))?;
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| protocol("header line without a colon"))?;
            headers.push((n.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" || status == 204 || status == 304 {
            return Ok(a);
        }
        if let Some(n) = a.header("content-length") {
            let n: usize = n.parse().map_err(|_| protocol("bad content-length"))?;
            a.body = match self.take(n).await? {
                Some(b) => b,
                None => std::mem::take(&mut self.buf),
            };
        } else if a.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(size) = self.line().await? else {
                    a.headers.push(("x-truncated".into(), "1".into()));
                    break;
                };
                let size =
                    usize::from_str_radix(&size, 16).map_err(|_| protocol("bad chunk size"))?;
                if size == 0 {
                    if self.line().await?.as_deref() != Some("") {
                        return Err(protocol("trailers after the last chunk"));
                    }
                    break;
                }
                let Some(data) = self.take(size).await? else {
                    a.headers.push(("x-truncated".into(), "1".into()));
                    break;
                };
                a.body.extend_from_slice(&data);
                if self.line().await?.as_deref() != Some("") {
                    return Err(protocol("chunk not followed by CRLF"));
                }
            }
        } else {
            while self.fill().await? {}
            a.body = std::mem::take(&mut self.buf);
        }
        Ok(a)
    }

    /// Whether the server closed the connection (within 5 s) with nothing
    /// more to read.
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.fill().await, Ok(false))
    }
}
