//! Kept-alive connections to `http://` upstreams: reused, replaced when the
//! upstream closes them, not reused after a body dropped early nor while a
//! response streams or an upload goes on, closed when idle too long, no
//! more kept than the bound. The upstreams count the connections they
//! accept (and some those closed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hexon_proxy::body::{BoxBody, boxed, empty, full};
use hexon_proxy::proxy::{
    GroupConfig, PoolConfig, ReverseProxy, RoutingTable, RoutingTableHandle, UpstreamGroup,
    UpstreamTls,
};
use hexon_proxy::test_util::start_gateway;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A hyper HTTP/1.1 upstream that counts accepted connections. `GET /big`
/// answers 1 MiB, `/huge` streams 256 MiB, `/empty` 204, anything else
/// `ok` and the size of the body it got.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, accepted, _) = counting_upstream_closes().await;
    (addr, accepted)
}

/// [`counting_upstream`], also counting the connections the proxy closed.
async fn counting_upstream_closes() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (count, ended) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let ended = ended.clone();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body: BoxBody = match req.uri().path() {
                        "/big" => full(Bytes::from(vec![b'x'; 1 << 20])),
                        "/huge" => {
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            let frames = futures_util::stream::iter((0..4096).map(move |_| {
                                Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))
                            }));
                            boxed(StreamBody::new(frames))
                        }
                        "/empty" => {
                            return Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(StatusCode::NO_CONTENT)
                                    .body(empty())
                                    .unwrap(),
                            );
                        }
                        _ => {
                            let sent = req.into_body().collect().await.unwrap().to_bytes();
                            full(format!("ok {}", sent.len()))
                        }
                    };
                    Ok(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

/// A raw upstream that answers one request per connection and then closes
/// it, without saying so (`Connection: close` absent): the proxy finds out
/// only from the closed socket.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await
}

/// A raw upstream that answers `403` as soon as it has a request head and
/// then reads and discards whatever follows (as nginx does with the body of
/// a refused upload), keeping the connection open.
async fn early_answer_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n", true).await
}

/// A raw TCP upstream counting its connections: on each, it reads one
/// request head, writes `answer`, then either closes or (`drain`) reads
/// and discards until the proxy closes.
async fn raw_upstream(answer: &'static [u8], drain: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    counted(move |mut tcp| async move {
        if !read_head(&mut tcp, &mut Vec::new()).await {
            return;
        }
        let _ = tcp.write_all(answer).await;
        let mut buf = [0u8; 4096];
        while drain && matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
}

/// A raw upstream counting its connections that answers the first request
/// on each and keeps it open, then reads the next request and closes the
/// connection without an answer: an upstream's idle timeout closing a
/// connection just as a request is written on it, every time.
async fn closes_under_the_second_request() -> (SocketAddr, Arc<AtomicUsize>) {
    counted(|mut tcp| async move {
        let mut seen = Vec::new();
        if read_head(&mut tcp, &mut seen).await {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            tcp.write_all(answer).await.unwrap();
            // Dropped once the second head is in: closed under it.
            read_head(&mut tcp, &mut seen).await;
        }
    })
    .await
}

/// The same over TLS (HTTP/1.1 by ALPN, a self-signed certificate for
/// 127.0.0.1, returned as PEM): odd connections end without TLS
/// `close_notify` (an abrupt close), even ones with it.
async fn tls_closes_under_the_second_request() -> (SocketAddr, String, Arc<AtomicUsize>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let served = Arc::new(AtomicUsize::new(0));
    let (addr, accepted) = counted(move |tcp| {
        let acceptor = acceptor.clone();
        let abrupt = served.fetch_add(1, Ordering::SeqCst) % 2 == 0;
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut seen = Vec::new();
            if read_head(&mut tls, &mut seen).await {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                tls.write_all(answer).await.unwrap();
                tls.flush().await.unwrap();
                if read_head(&mut tls, &mut seen).await && !abrupt {
                    let _ = tls.shutdown().await;
                }
            }
        }
    })
    .await;
    (addr, cert.pem(), accepted)
}

/// A TCP upstream counting the connections it accepts, each served by
/// `serve`.
async fn counted<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (addr, accepted)
}

/// Read until `seen` holds a whole request head, and take it out; false
/// when the connection ended first.
async fn read_head<S: AsyncRead + Unpin>(tcp: &mut S, seen: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            seen.drain(..end + 4);
            return true;
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The proxy for one upstream behind a server playing the upper layers.
async fn gateway(upstream: SocketAddr, pool: PoolConfig) -> SocketAddr {
    gateway_to(
        format!("http://{upstream}"),
        GroupConfig::default().pool(pool),
    )
    .await
}

async fn gateway_to(url: String, config: GroupConfig) -> SocketAddr {
    let mut table = RoutingTable::new();
    table.insert("app", UpstreamGroup::new(&[url], config).unwrap());
    let proxy = ReverseProxy::new(RoutingTableHandle::new(table));
    start_gateway(proxy, Some("app")).await.unwrap()
}

/// One request on a fresh client connection.
async fn send(gw: SocketAddr, method: Method, path: &str, body: BoxBody) -> Response<Incoming> {
    let tcp = TcpStream::connect(gw).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.example")
        .body(body)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), tx.send_request(req))
        .await
        .expect("hung")
        .unwrap()
}

/// A client connection that asked for `/huge` and read the answer's head
/// (`200`), leaving the body unread.
async fn huge_download(gw: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    tcp.write_all(b"GET /huge HTTP/1.1\r\nhost: app.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 4096];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    tcp
}

/// Wait (up to 10 s) until `count` reaches `at_least`.
async fn reaches(count: &AtomicUsize, at_least: usize, otherwise: &str) {
    let t0 = std::time::Instant::now();
    while count.load(Ordering::SeqCst) < at_least {
        assert!(t0.elapsed() < Duration::from_secs(10), "{otherwise}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn text(res: Response<Incoming>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_requests_one_after_another() {
    let (up, accepted) = counting_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    for i in 0..10 {
        let res = send(gw, Method::GET, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "ok 0");
        // Bodies up, empty answers and answers without a body keep it too.
        let res = send(gw, Method::POST, "/x", full(vec![b'a'; i * 100])).await;
        assert_eq!(text(res).await, format!("ok {}", i * 100));
        let res = send(gw, Method::GET, "/empty", empty()).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let res = send(gw, Method::HEAD, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = send(gw, Method::GET, "/big", empty()).await;
        assert_eq!(text(res).await.len(), 1 << 20);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_are_replaced_without_failing_a_request() {
    let (up, accepted) = closing_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    for _ in 0..5 {
        let res = send(gw, Method::GET, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "ok");
        // Let the upstream's close arrive before the next request (for a
        // close racing a request on the wire, see the next test).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_the_upstream_closed_a_connection_under_is_sent_again() {
    let (up, accepted) = closes_under_the_second_request().await;
    let gw = gateway(up, PoolConfig::default()).await;
    let idle = hexon_proxy::proxy::RESEND_AFTER_IDLE + Duration::from_millis(50);
    let res = send(gw, Method::GET, "/x", empty()).await;
    assert_eq!(text(res).await, "ok");
    // Each idempotent request meets the kept connection closing under it,
    // and is answered on a new one.
    for (i, method) in [Method::GET, Method::DELETE, Method::OPTIONS]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(idle).await;
        let res = send(gw, method.clone(), "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK, "{method}");
        assert_eq!(accepted.load(Ordering::SeqCst), i + 2, "{method}");
    }
    // A POST may have had its effect: not sent again, a 502.
    tokio::time::sleep(idle).await;
    let res = send(gw, Method::POST, "/x", empty()).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_idempotent_request_the_upstream_closed_a_connection_under_is_sent_again() {
    let (up, cert, accepted) = tls_closes_under_the_second_request().await;
    let tls = UpstreamTls::ca_pem(cert.as_bytes()).unwrap();
    let gw = gateway_to(format!("https://{up}"), GroupConfig::default().tls(tls)).await;
    let res = send(gw, Method::GET, "/x", empty()).await;
    assert_eq!(text(res).await, "ok");
    // Each idempotent request meets the kept connection closing under it
    // (abruptly, then with close_notify, then abruptly), and is answered on
    // a new one.
    for (i, method) in [Method::GET, Method::DELETE, Method::OPTIONS]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let res = send(gw, method.clone(), "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK, "{method}");
        assert_eq!(accepted.load(Ordering::SeqCst), i + 2, "{method}");
    }
    // A POST may have had its effect: not sent again, a 502.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let res = send(gw, Method::POST, "/x", empty()).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dropped_early_takes_its_connection_with_it() {
    let (up, accepted) = counting_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    // A client that reads the head of a large answer and hangs up.
    drop(huge_download(gw).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = send(gw, Method::GET, "/x", empty()).await;
    assert_eq!(text(res).await, "ok 0");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // That one went back: the next request reuses it.
    let res = send(gw, Method::GET, "/x", empty()).await;
    assert_eq!(text(res).await, "ok 0");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_expire() {
    let (up, accepted, closed) = counting_upstream_closes().await;
    let pool = PoolConfig::default().idle_timeout(Duration::from_secs(1));
    let gw = gateway(up, pool).await;
    assert_eq!(
        text(send(gw, Method::GET, "/x", empty()).await).await,
        "ok 0"
    );
    assert_eq!(
        text(send(gw, Method::GET, "/x", empty()).await).await,
        "ok 0"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Closed by the proxy once idle past the timeout, without another request.
    reaches(&closed, 1, "never closed").await;
    assert_eq!(
        text(send(gw, Method::GET, "/x", empty()).await).await,
        "ok 0"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_idle_connections_than_the_pool_keeps() {
    let (up, accepted, closed) = counting_upstream_closes().await;
    let pool = PoolConfig::default().max_idle_per_host(2);
    let gw = gateway(up, pool).await;
    // Eight at once need eight connections; two are kept afterwards.
    let all = (0..8).map(|_| send(gw, Method::GET, "/x", empty()));
    for res in futures_util::future::join_all(all).await {
        assert_eq!(text(res).await, "ok 0");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened >= 2, "{opened}");
    // All but two were closed when their answers ended.
    reaches(&closed, opened - 2, "more than two kept").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(closed.load(Ordering::SeqCst), opened - 2);
    for _ in 0..2 {
        let a = send(gw, Method::GET, "/x", empty());
        let b = send(gw, Method::GET, "/x", empty());
        let (a, b) = tokio::join!(a, b);
        assert_eq!(text(a).await, "ok 0");
        assert_eq!(text(b).await, "ok 0");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), opened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_streaming_is_not_handed_to_another_request() {
    let (up, accepted) = counting_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    // A download the client does not read: its connection stays busy.
    let slow = huge_download(gw).await;
    // Another request meanwhile gets its own connection at once.
    let res = tokio::time::timeout(Duration::from_secs(5), send(gw, Method::GET, "/x", empty()))
        .await
        .expect("waited behind the download");
    assert_eq!(text(res).await, "ok 0");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_uploading_is_not_handed_to_another_request() {
    let (up, accepted) = early_answer_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    // An upload that never ends; the upstream answers it at once.
    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let res = send(gw, Method::POST, "/upload", boxed(StreamBody::new(frames))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let _ = res.into_body().collect().await;
    // The next request does not wait behind that upload.
    let res = tokio::time::timeout(Duration::from_secs(5), send(gw, Method::GET, "/x", empty()))
        .await
        .expect("waited behind the upload");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(chunks);
}
