//! Kept-alive connections to `http://` upstreams: reused, replaced when the
//! upstream closes them (idempotent requests retried when the close raced
//! them), not reused after a body dropped early, while a response streams
//! or an upload goes on, after `Connection: close` or bytes past the
//! response; closed when idle too long, no more kept than the bound;
//! ambiguous framing refused. The upstreams count the connections they
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
};
use hexon_proxy::test_util::start_gateway;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A hyper HTTP/1.1 upstream that counts accepted connections. `GET /big`
/// answers 1 MiB, `/huge` streams 256 MiB, `/chunked` 3 chunks of 10 KiB
/// (no length: chunked framing), `/empty` 204, anything else `ok` and the
/// size of the body it got.
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
                        "/chunked" => {
                            let chunk = Bytes::from(vec![b'c'; 10 * 1024]);
                            let frames = futures_util::stream::iter((0..3).map(move |_| {
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
    raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        After::Close,
    )
    .await
}

/// A raw upstream that answers `403` as soon as it has a request head and
/// then reads and discards whatever follows (as nginx does with the body of
/// a refused upload), keeping the connection open.
async fn early_answer_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(
        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n",
        After::Drain,
    )
    .await
}

/// What a raw upstream does after its first answer on a connection.
#[derive(Clone, Copy)]
enum After {
    /// Close the connection.
    Close,
    /// Read and discard until the proxy closes.
    Drain,
    /// Read the next request head, then close without answering: a
    /// keep-alive timeout that raced the request.
    CloseOnNextRequest,
    /// Answer every request the same way.
    Repeat,
    /// Then, unasked, write these bytes a moment later, and go on as
    /// [`After::Repeat`].
    Unsolicited(&'static [u8]),
}

/// A raw TCP upstream counting its connections: on each, it reads a
/// request head, writes `answer`, then does what `after` says.
async fn raw_upstream(answer: &'static [u8], after: After) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                    match after {
                        After::Close => return,
                        After::Drain => {
                            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                            return;
                        }
                        After::CloseOnNextRequest => {
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                match tcp.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                            }
                            return;
                        }
                        After::Repeat => {}
                        After::Unsolicited(extra) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if tcp.write_all(extra).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The proxy for one upstream behind a server playing the upper layers.
async fn gateway(upstream: SocketAddr, pool: PoolConfig) -> SocketAddr {
    let mut table = RoutingTable::new();
    table.insert(
        "app",
        UpstreamGroup::new(
            &[format!("http://{upstream}")],
            GroupConfig::default().pool(pool),
        )
        .unwrap(),
    );
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

async fn text(res: Response<Incoming>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_requests_one_after_another() {
    let (up, accepted) = counting_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    for _ in 0..10 {
        let res = send(gw, Method::GET, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "ok 0");
        // Empty answers, answers without a body, large and chunked ones
        // keep it too.
        let res = send(gw, Method::GET, "/empty", empty()).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let res = send(gw, Method::HEAD, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = send(gw, Method::GET, "/big", empty()).await;
        assert_eq!(text(res).await.len(), 1 << 20);
        let res = send(gw, Method::GET, "/chunked", empty()).await;
        assert_eq!(text(res).await, "c".repeat(30 * 1024));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Uploads go through hyper-util's client, which keeps a connection of
    // its own.
    for i in 0..10 {
        let res = send(gw, Method::POST, "/x", full(vec![b'a'; i * 100 + 1])).await;
        assert_eq!(text(res).await, format!("ok {}", i * 100 + 1));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_when_a_kept_connection_closes_under_them() {
    let (up, accepted) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        After::CloseOnNextRequest,
    )
    .await;
    let gw = gateway(up, PoolConfig::default()).await;
    // Every second request lands on a connection the upstream closes
    // instead of answering: sent again on a new one.
    for method in [Method::GET, Method::DELETE, Method::PUT, Method::GET] {
        let res = send(gw, method.clone(), "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK, "{method}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    // A POST is not repeated: the upstream may have acted on it.
    let res = send(gw, Method::POST, "/x", empty()).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_not_kept_after_close_or_stray_bytes() {
    for (answer, after) in [
        (
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
            After::Repeat,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            After::Repeat,
        ),
        // Neither length nor chunked: the body ends when the upstream closes.
        (b"HTTP/1.1 200 OK\r\n\r\nok", After::Close),
        // A 204 does not have a body; bytes after it make the connection
        // unusable.
        (b"HTTP/1.1 204 No Content\r\n\r\nstray", After::Repeat),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokstray",
            After::Repeat,
        ),
    ] {
        let (up, accepted) = raw_upstream(answer, after).await;
        let gw = gateway(up, PoolConfig::default()).await;
        for i in 1..=3 {
            let res = send(gw, Method::GET, "/x", empty()).await;
            let ok = res.status().is_success();
            let body = text(res).await;
            assert!(
                ok && (body == "ok" || body.is_empty()),
                "{answer:?}: {body:?}"
            );
            assert_eq!(accepted.load(Ordering::SeqCst), i, "{answer:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_answers_are_502() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    ] {
        let (up, _) = raw_upstream(answer, After::Close).await;
        let gw = gateway(up, PoolConfig::default()).await;
        let res = send(gw, Method::GET, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY, "{answer:?}");
    }
    // A body that breaks off mid-way is never passed on as complete: the
    // client's connection is cut (before or after the head, as hyper's
    // server flushes), without the chunked terminator.
    for answer in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel",
    ] {
        let (up, _) = raw_upstream(answer, After::Close).await;
        let gw = gateway(up, PoolConfig::default()).await;
        let mut tcp = TcpStream::connect(gw).await.unwrap();
        tcp.write_all(b"GET /x HTTP/1.1\r\nhost: app.example\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got));
        let _ = read.await.expect("connection not cut");
        assert!(!got.ends_with(b"0\r\n\r\n"), "{answer:?}: {got:?}");
        let complete = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|i| {
                String::from_utf8_lossy(&got[..i]).contains("content-length: 5")
                    && got.len() - i - 4 == 5
            });
        assert!(!complete, "{answer:?}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_are_replaced_without_failing_a_request() {
    let (up, accepted) = closing_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    for i in 0..6 {
        // A POST is never sent again, so its connection must be known
        // closed before it is written.
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        let res = send(gw, method, "/x", empty()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(text(res).await, "ok");
        // Let the upstream's close arrive before the next request (a close
        // racing a request on the wire is caught by the retry, for
        // idempotent requests only).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_idle_connection_receives_are_never_read_as_the_next_answer() {
    let (up, accepted) = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        After::Unsolicited(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale"),
    )
    .await;
    let gw = gateway(up, PoolConfig::default()).await;
    for i in 1..=3 {
        let res = send(gw, Method::GET, "/x", empty()).await;
        assert_eq!(text(res).await, "ok");
        // The stray answer arrives while the connection is idle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_dropped_early_takes_its_connection_with_it() {
    let (up, accepted) = counting_upstream().await;
    let gw = gateway(up, PoolConfig::default()).await;
    // A client that reads the head of a large answer and hangs up.
    let mut tcp = TcpStream::connect(gw).await.unwrap();
    tcp.write_all(b"GET /huge HTTP/1.1\r\nhost: app.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 4096];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    drop(tcp);
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
    let t0 = std::time::Instant::now();
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let t0 = std::time::Instant::now();
    while closed.load(Ordering::SeqCst) < opened - 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "more than two kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mut slow = TcpStream::connect(gw).await.unwrap();
    slow.write_all(b"GET /huge HTTP/1.1\r\nhost: app.example\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = slow.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
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
