//! The reverse proxy end to end: real upstream servers (hyper, HTTP/1.1,
//! h2c, TLS with mTLS) on 127.0.0.1, a small hyper gateway server driving
//! `ReverseProxy`, and real clients — every request crosses two sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs, unreachable_pub)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_proxy::body::{BoxBody, BoxError, boxed, empty, full};
use hexon_proxy::proxy::{
    GroupConfig, ReverseProxy, RoutingTable, RoutingTableHandle, Timeouts, TrustedProxies,
    UpstreamGroup, UpstreamTls,
};
use hexon_proxy::test_util::{self, Handler, count_body, handler, start_gateway, start_upstream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

// ---------------------------------------------------------------- bodies

/// A body produced on demand: `total` bytes in 64 KiB chunks, never held
/// in memory at once.
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(total: u64) -> Self {
        Generated {
            remaining: total,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// A body fed through a channel (no size known: chunked on HTTP/1.1).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Fixed frames, trailers included.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn headers_json(h: &HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for name in h.keys() {
        let vals: Vec<Value> = h
            .get_all(name)
            .iter()
            .map(|v| Value::String(v.to_str().unwrap_or("?").to_owned()))
            .collect();
        m.insert(name.as_str().to_owned(), Value::Array(vals));
    }
    Value::Object(m)
}

/// Answers with what it received, as JSON, and an `x-upstream` name.
fn echo(name: &'static str) -> Handler {
    handler(move |req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let len = count_body(body).await.unwrap_or(u64::MAX);
        let j = json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "version": format!("{:?}", parts.version),
            "headers": headers_json(&parts.headers),
            "body_len": len,
        });
        let mut res = Response::new(full(j.to_string()));
        res.headers_mut()
            .insert("x-upstream", name.parse().unwrap());
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res
    })
}

fn header<'a>(j: &'a Value, name: &str) -> Option<&'a str> {
    j["headers"][name][0].as_str()
}

// ---------------------------------------------------------------- gateway

fn proxy_for(route: &str, urls: &[String], config: GroupConfig) -> ReverseProxy {
    let mut table = RoutingTable::new();
    table.insert(route, UpstreamGroup::new(urls, config).unwrap());
    ReverseProxy::new(RoutingTableHandle::new(table))
}

// ---------------------------------------------------------------- clients

/// One HTTP/1.1 request on a fresh connection.
async fn send_h1(addr: SocketAddr, req: Request<BoxBody>) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    tx.send_request(req).await.unwrap()
}

async fn get(addr: SocketAddr, path: &str, host: &str) -> Response<Incoming> {
    let req = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    send_h1(addr, req).await
}

async fn json_body(res: Response<Incoming>) -> Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn assert_error(res: &Response<Incoming>, status: StatusCode) {
    assert_eq!(res.status(), status);
    let rid = res.headers()["x-request-id"].to_str().unwrap();
    assert!(rid.starts_with("rid-"), "{rid}");
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test step hung")
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_joins_paths_preserves_host_and_sets_forwarding_headers() {
    let up = start_upstream_ok(echo("a")).await;
    let proxy = proxy_for(
        "app",
        &[format!("http://{up}/base/")],
        GroupConfig::default(),
    );
    let gw = start_gateway(proxy, Some("app")).await.unwrap();

    let req = Request::get("/users/42?q=a%20b&x=1")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "client-chosen")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    assert_eq!(j["method"], "GET");
    assert_eq!(
        j["uri"], "/base/users/42?q=a%20b&x=1",
        "origin-form, base path joined"
    );
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(header(&j, "host"), Some("app.example.com"));
    assert_eq!(header(&j, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&j, "x-forwarded-host"), Some("app.example.com"));
    assert_eq!(header(&j, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(&j, "forwarded"),
        Some("for=127.0.0.1;proto=http;host=app.example.com")
    );
    assert!(header(&j, "x-request-id").unwrap().starts_with("rid-"));
    assert_eq!(header(&j, "x-end-to-end"), Some("kept"));
    for hop in [
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "transfer-encoding",
    ] {
        assert_eq!(header(&j, hop), None, "{hop} must not reach the upstream");
    }
    assert_eq!(j["body_len"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peer_forwarding_headers_are_appended() {
    let up = start_upstream_ok(echo("a")).await;
    let proxy = proxy_for("app", &[format!("http://{up}")], GroupConfig::default())
        .with_trusted_proxies(TrustedProxies::from_fn(|ip| ip.is_loopback()));
    let gw = start_gateway(proxy, Some("app")).await.unwrap();
    let req = Request::get("/")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.7;proto=https")
        .body(empty())
        .unwrap();
    let j = json_body(within(send_h1(gw, req)).await).await;
    assert_eq!(
        header(&j, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(header(&j, "x-forwarded-proto"), Some("https"));
    assert_eq!(
        header(&j, "forwarded"),
        Some("for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=app.example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed() {
    let up = start_upstream_ok(handler(|_req| async {
        Response::builder()
            .header("connection", "x-up-hop")
            .header("x-up-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=x")
            .header("x-end-to-end", "kept")
            .body(full("ok"))
            .unwrap()
    }))
    .await;
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], GroupConfig::default()),
        Some("app"),
    )
    .await
    .unwrap();
    let res = within(get(gw, "/", "app")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers();
    assert_eq!(h["x-end-to-end"], "kept");
    for hop in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!h.contains_key(hop), "{hop} must not reach the client");
    }
    assert_ne!(
        h.get("connection").map(|v| v.to_str().unwrap()),
        Some("x-up-hop")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_across_two_upstreams() {
    let a = start_upstream_ok(echo("a")).await;
    let b = start_upstream_ok(echo("b")).await;
    let gw = start_gateway(
        proxy_for(
            "app",
            &[format!("http://{a}"), format!("http://{b}")],
            GroupConfig::default(),
        ),
        Some("app"),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let res = within(get(gw, "/", "app")).await;
        seen.push(res.headers()["x-upstream"].to_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["a", "b", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_table_hot_swap() {
    let a = start_upstream_ok(echo("a")).await;
    let b = start_upstream_ok(echo("b")).await;
    let proxy = proxy_for("app", &[format!("http://{a}")], GroupConfig::default());
    let handle = proxy.routes().clone();
    let gw = start_gateway(proxy, Some("app")).await.unwrap();
    assert_eq!(
        within(get(gw, "/", "app")).await.headers()["x-upstream"],
        "a"
    );

    let mut next = RoutingTable::new();
    next.insert(
        "app",
        UpstreamGroup::new([format!("http://{b}")], GroupConfig::default()).unwrap(),
    );
    let old = handle.store(next);
    assert!(old.get("app").is_some());
    assert_eq!(
        within(get(gw, "/", "app")).await.headers()["x-upstream"],
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_gets_http2_with_public_authority() {
    let up = start_upstream_ok(echo("h2")).await;
    let gw = start_gateway(
        proxy_for("app", &[format!("h2c://{up}/svc")], GroupConfig::default()),
        Some("app"),
    )
    .await
    .unwrap();
    let j = json_body(within(get(gw, "/x?y=1", "app.example.com:8443")).await).await;
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(
        j["uri"], "http://app.example.com:8443/svc/x?y=1",
        ":authority is the public Host"
    );
    assert_eq!(header(&j, "host"), Some("app.example.com:8443"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_h2c() {
    let up = start_upstream_ok(handler(|req: Request<Incoming>| async move {
        assert_eq!(req.version(), http::Version::HTTP_2);
        let te = req
            .headers()
            .get("te")
            .map(|v| v.to_str().unwrap().to_owned());
        let ct = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let n = count_body(req.into_body()).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let frames = VecDeque::from([
            Frame::data(Bytes::from(format!("te={te:?} ct={ct:?} n={n}"))),
            Frame::trailers(trailers),
        ]);
        Response::builder()
            .header("content-type", "application/grpc")
            .body(boxed(Frames(frames)))
            .unwrap()
    }))
    .await;
    let gw = start_gateway(
        proxy_for("grpc", &[format!("h2c://{up}")], GroupConfig::default()),
        Some("grpc"),
    )
    .await
    .unwrap();

    // The client speaks h2c to the gateway (prior knowledge).
    let tcp = TcpStream::connect(gw).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, BoxBody>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post("http://grpc.example.com/pkg.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\x05hello"[..]))
        .unwrap();
    let res = within(tx.send_request(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    let collected = within(res.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
    assert_eq!(
        body,
        "te=Some(\"trailers\") ct=Some(\"application/grpc\") n=10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mb_up_and_down() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let up = start_upstream_ok(handler(|req: Request<Incoming>| async move {
        if req.uri().path() == "/download" {
            return Response::new(boxed(Generated::new(SIZE)));
        }
        let n = count_body(req.into_body()).await.unwrap();
        Response::new(full(n.to_string()))
    }))
    .await;
    let gw = start_gateway(
        proxy_for(
            "app",
            &[format!("http://{up}")],
            GroupConfig::default().max_request_body(Some(SIZE)),
        ),
        Some("app"),
    )
    .await
    .unwrap();

    // Upload: chunked, generated on the fly, counted by the upstream.
    let req = Request::post("/upload")
        .header("host", "app")
        .body(boxed(Generated::new(SIZE)))
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let n = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, SIZE.to_string());

    // Download: generated by the upstream, counted by the client.
    let res = within(get(gw, "/download", "app")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(within(count_body(res.into_body())).await.unwrap(), SIZE);
}

/// Bytes cross the proxy while the other end is still producing: a
/// buffering proxy would deadlock here (each side waits for the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_without_buffering() {
    let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
    let first_seen_tx = Arc::new(Mutex::new(Some(first_seen_tx)));
    let (dl_tx, dl_rx) = mpsc::channel::<Bytes>(1);
    let dl_rx = Arc::new(Mutex::new(Some(dl_rx)));
    let up = start_upstream_ok(handler(move |req: Request<Incoming>| {
        let first_seen_tx = first_seen_tx.clone();
        let dl_rx = dl_rx.clone();
        async move {
            if req.uri().path() == "/download" {
                let rx = dl_rx.lock().unwrap().take().unwrap();
                return Response::new(boxed(ChannelBody(rx)));
            }
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(f) = body.frame().await {
                n += f.unwrap().into_data().map(|d| d.len()).unwrap_or(0);
                if let Some(tx) = first_seen_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
            Response::new(full(n.to_string()))
        }
    }))
    .await;
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], GroupConfig::default()),
        Some("app"),
    )
    .await
    .unwrap();

    // Upload: the second chunk is only sent once the upstream saw the first.
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post("/upload")
        .header("host", "app")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let pending = tokio::spawn(send_h1(gw, req));
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    within(first_seen_rx).await.unwrap();
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let res = within(pending).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "11");

    // Download: the client reads the first chunk before the second exists.
    let mut body = within(get(gw, "/download", "app")).await.into_body();
    dl_tx.send(Bytes::from_static(b"first")).await.unwrap();
    let f = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "first");
    dl_tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(dl_tx);
    let rest = within(body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_spliced() {
    let up = start_upstream_ok(handler(|mut req: Request<Incoming>| async move {
        let h = req.headers();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        test_util::echo_after_upgrade(&mut req);
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .unwrap()
    }))
    .await;
    let gw = start_gateway(
        proxy_for("ws", &[format!("http://{up}")], GroupConfig::default()),
        Some("ws"),
    )
    .await
    .unwrap();
    let req = Request::get("/chat")
        .header("host", "app")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(res.headers()["upgrade"], "websocket");
    assert_eq!(
        res.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let mut io = TokioIo::new(within(hyper::upgrade::on(res)).await.unwrap());
    // A masked WebSocket text frame "hello", then more bytes: echoed verbatim.
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    for msg in [&frame[..], b"second message"] {
        io.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within(io.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_with_request_id() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{addr}")], GroupConfig::default()),
        Some("app"),
    )
    .await
    .unwrap();
    let res = within(get(gw, "/", "app")).await;
    assert_error(&res, StatusCode::BAD_GATEWAY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(!body.contains("127.0.0.1"), "no internal detail: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let up = start_upstream_ok(handler(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(empty())
    }))
    .await;
    let config = GroupConfig::default()
        .timeouts(Timeouts::default().response_header(Duration::from_millis(200)));
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], config),
        Some("app"),
    )
    .await
    .unwrap();
    let res = within(get(gw, "/", "app")).await;
    assert_error(&res, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_413() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let up = start_upstream_ok(handler(move |req: Request<Incoming>| {
        h.fetch_add(1, Ordering::Relaxed);
        async move {
            let n = count_body(req.into_body()).await.unwrap_or(0);
            Response::new(full(n.to_string()))
        }
    }))
    .await;
    let config = GroupConfig::default().max_request_body(Some(1024));
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], config),
        Some("app"),
    )
    .await
    .unwrap();

    // Declared by Content-Length: refused before the upstream is contacted.
    let req = Request::post("/")
        .header("host", "app")
        .body(full(vec![0u8; 2048]))
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_error(&res, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(hits.load(Ordering::Relaxed), 0);

    // Streamed (chunked): cut when it crosses the limit.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    for _ in 0..4 {
        tx.send(Bytes::from(vec![0u8; 512])).await.unwrap();
    }
    drop(tx);
    let req = Request::post("/")
        .header("host", "app")
        .body(boxed(ChannelBody(rx)))
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_error(&res, StatusCode::PAYLOAD_TOO_LARGE);

    // At the limit: forwarded.
    let req = Request::post("/")
        .header("host", "app")
        .body(full(vec![0u8; 1024]))
        .unwrap();
    let res = within(send_h1(gw, req)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "1024");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_route_is_502() {
    let up = start_upstream_ok(echo("a")).await;
    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], GroupConfig::default()),
        Some("other"),
    )
    .await
    .unwrap();
    assert_error(&within(get(gw, "/", "app")).await, StatusCode::BAD_GATEWAY);

    let gw = start_gateway(
        proxy_for("app", &[format!("http://{up}")], GroupConfig::default()),
        None,
    )
    .await
    .unwrap();
    assert_error(&within(get(gw, "/", "app")).await, StatusCode::BAD_GATEWAY);
}

// ---------------------------------------------------------------- TLS

struct Pki {
    ca_pem: String,
    server_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    server_key: rustls_pki_types::PrivateKeyDer<'static>,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(Vec::<String>::new()).unwrap();
    sp.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let server_cert = sp.signed_by(&server_key, &ca_cert, &ca_key).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let cp = CertificateParams::new(vec!["gateway.internal".to_owned()]).unwrap();
    let client_cert = cp.signed_by(&client_key, &ca_cert, &ca_key).unwrap();

    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server_chain: vec![server_cert.der().clone()],
        server_key: rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

/// A TLS upstream (h2 and http/1.1 by ALPN) that requires a client
/// certificate from the CA, and reports the protocol it got.
async fn start_tls_upstream(pki: &Pki) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let has_client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let j = json!({
                        "version": format!("{:?}", req.version()),
                        "uri": req.uri().to_string(),
                        "client_cert": has_client_cert,
                    });
                    Ok::<_, Infallible>(Response::new(full(j.to_string())))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_private_ca_mtls_and_alpn_h2() {
    let pki = pki();
    let up = start_tls_upstream(&pki).await;
    let tls = UpstreamTls::ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .with_client_cert_pem(
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )
        .unwrap();
    let mut table = RoutingTable::new();
    table
        .insert(
            "mtls",
            UpstreamGroup::new(
                [format!("https://{up}/api")],
                GroupConfig::default().tls(tls.clone()),
            )
            .unwrap(),
        )
        .insert(
            "no-client-cert",
            UpstreamGroup::new(
                [format!("https://{up}")],
                GroupConfig::default().tls(UpstreamTls::ca_pem(pki.ca_pem.as_bytes()).unwrap()),
            )
            .unwrap(),
        )
        .insert(
            "public-roots",
            UpstreamGroup::new([format!("https://{up}")], GroupConfig::default()).unwrap(),
        );
    let proxy = ReverseProxy::new(RoutingTableHandle::new(table));

    let gw = start_gateway(proxy.clone(), Some("mtls")).await.unwrap();
    let res = within(get(gw, "/v1?x=1", "app.example.com")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let j = json_body(res).await;
    assert_eq!(j["version"], "HTTP/2.0", "ALPN picked h2");
    assert_eq!(j["uri"], "https://app.example.com/api/v1?x=1");
    assert_eq!(j["client_cert"], true);

    // Without the client certificate, or without trusting the private CA: 502.
    for route in ["no-client-cert", "public-roots"] {
        let gw = start_gateway(proxy.clone(), Some(route)).await.unwrap();
        assert_error(&within(get(gw, "/", "app")).await, StatusCode::BAD_GATEWAY);
    }
}

async fn start_upstream_ok(h: Handler) -> SocketAddr {
    start_upstream(h).await.unwrap()
}
