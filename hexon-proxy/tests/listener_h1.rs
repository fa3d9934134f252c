//! The listener's own HTTP/1.1 reader and writer (`fast_http1`), over real
//! sockets with raw bytes: what it serves itself, what it hands to hyper
//! mid-connection (and that nothing read is lost there), response framing,
//! keep-alive and close, timeouts, and hostile heads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod listener_support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use hexon_proxy::body::{BoxBody, RequestBody};
use hexon_proxy::listener::{Listener, ListenerSettings, ServerHandle};
use hexon_proxy::test_util::{Answer, RawConn as Conn};
use http::{Request, Response};
use http_body_util::{BodyExt as _, StreamBody};
use listener_support::localhost;

/// Answers by path:
/// - `/len/N`: N bytes `x` (exact size, no `content-length` header);
/// - `/declared`: `content-length: 5` and `hello`;
/// - `/short`: `content-length: 10` and only `hello`;
/// - `/stream`: three frames of unknown total size;
/// - `/fail`: one frame, then a body error;
/// - `/close`: `connection: close` from the service;
/// - `/204`: no content;
/// - `/slow`: `slow` after 300 ms;
/// - anything else: `{method} {target} reader={own|hyper} host={host}`.
async fn service(req: Request<RequestBody>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let res = if let Some(n) = path.strip_prefix("/len/") {
        let n: usize = n.parse().unwrap();
        Response::new(hexon_proxy::body::full(vec![b'x'; n]))
    } else {
        match path.as_str() {
            "/declared" => Response::builder()
                .header("content-length", "5")
                .body(unknown_size(vec![Ok(Bytes::from_static(b"hello"))]))
                .unwrap(),
            "/short" => Response::builder()
                .header("content-length", "10")
                .body(unknown_size(vec![Ok(Bytes::from_static(b"hello"))]))
                .unwrap(),
            "/stream" => Response::new(unknown_size(vec![
                Ok(Bytes::from_static(b"one,")),
                Ok(Bytes::new()),
                Ok(Bytes::from(vec![b'y'; 20_000])),
                Ok(Bytes::from_static(b",three")),
            ])),
            "/fail" => Response::new(unknown_size(vec![
                Ok(Bytes::from_static(b"partial")),
                Err("upstream reset".into()),
            ])),
            "/close" => Response::builder()
                .header("connection", "close")
                .body(hexon_proxy::body::full("bye"))
                .unwrap(),
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Response::new(hexon_proxy::body::full("slow"))
            }
            "/204" => Response::builder()
                .status(204)
                .body(hexon_proxy::body::empty())
                .unwrap(),
            _ => {
                let reader = match req.body() {
                    RequestBody::Empty => "own",
                    RequestBody::Hyper(_) => "hyper",
                };
                let text = format!(
                    "{} {} reader={reader} host={}",
                    req.method(),
                    req.uri(),
                    req.headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_owned())
                        .unwrap_or_default()
                );
                let _ = req.into_body().collect().await;
                Response::new(hexon_proxy::body::full(text))
            }
        }
    };
    Ok(res)
}

/// A body whose size is not known in advance.
fn unknown_size(frames: Vec<Result<Bytes, hexon_proxy::body::BoxError>>) -> BoxBody {
    let stream =
        futures_util::stream::iter(frames.into_iter().map(|f| f.map(http_body::Frame::data)));
    BoxBody::new(StreamBody::new(stream))
}

/// `GET target` (host `h`) on `c`, and its answer.
async fn get(c: &mut Conn, target: &str) -> Answer {
    c.exchange(
        format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        "GET",
    )
    .await
    .unwrap()
}

async fn serve(settings: ListenerSettings) -> ServerHandle {
    Listener::bind(settings, None)
        .await
        .unwrap()
        .serve(tower::service_fn(service))
}

async fn server() -> ServerHandle {
    serve(ListenerSettings::new("h1", localhost())).await
}

#[tokio::test]
async fn bodiless_requests_are_read_by_the_listener_and_keep_alive() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    for i in 0..3 {
        c.send(format!("GET /q?i={i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = c.answer("GET").await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), format!("GET /q?i={i} reader=own host=a.test"));
        assert!(
            a.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{a:?}"
        );
        assert_eq!(a.header("connection"), None);
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    c.send(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nDELETE /3 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await.unwrap();
    assert_eq!(
        c.answer("GET").await.unwrap().text(),
        "GET /1 reader=own host=a"
    );
    let head = c.answer("HEAD").await.unwrap();
    assert_eq!(head.status, 200);
    // The length of the answer a GET would get, and no body.
    assert_eq!(head.header("content-length"), Some("25"));
    assert_eq!(
        c.answer("DELETE").await.unwrap().text(),
        "DELETE /3 reader=own host=a"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_to_hyper_with_nothing_lost() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    // The second request arrives in the same write as the first, and the
    // third right behind the body: all of it must reach hyper intact.
    c.send(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbodyGET /c HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    assert_eq!(
        c.answer("GET").await.unwrap().text(),
        "GET /a reader=own host=h"
    );
    assert_eq!(
        c.answer("POST").await.unwrap().text(),
        "POST /b reader=hyper host=h"
    );
    assert_eq!(
        c.answer("GET").await.unwrap().text(),
        "GET /c reader=hyper host=h"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn what_the_reader_does_not_take_goes_to_hyper() {
    let server = server().await;
    for (req, method, want) in [
        // HTTP/1.0 keeps its own keep-alive rules.
        (
            "GET /x HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET",
            "GET /x reader=hyper host=h",
        ),
        // Absolute form.
        (
            "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET",
            "GET http://h/x reader=hyper host=h",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET",
            "GET /x reader=hyper host=h",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
            "GET",
            "GET /x reader=hyper host=h",
        ),
        (
            "GET /x HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n",
            "GET",
            "GET /x reader=hyper host=h",
        ),
    ] {
        let mut c = Conn::open(server.local_addr()).await.unwrap();
        let a = c.exchange(req.as_bytes(), method).await.unwrap();
        assert_eq!(a.status, 200, "{req:?}");
        assert_eq!(a.text(), want, "{req:?}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn malformed_and_hostile_heads_get_hypers_refusal() {
    let server = server().await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded: x\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        b"G\xffT / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ] {
        let mut c = Conn::open(server.local_addr()).await.unwrap();
        let a = c.exchange(req, "GET").await.unwrap();
        assert_eq!(a.status, 400, "{:?}", String::from_utf8_lossy(req));
        assert!(c.closed().await, "{:?}", String::from_utf8_lossy(req));
    }
    // More header fields than the listener allows, and a head larger than
    // it allows: hyper's 431.
    let mut s = ListenerSettings::new("h1", localhost());
    s.max_headers = 5;
    s.max_header_size = 8192;
    let small = serve(s).await;
    let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "X: y\r\n".repeat(10));
    let large = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
        "y".repeat(9000)
    );
    for req in [many, large] {
        let mut c = Conn::open(small.local_addr()).await.unwrap();
        assert_eq!(c.exchange(req.as_bytes(), "GET").await.unwrap().status, 431);
    }
    small.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn heads_split_across_reads_are_put_together() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    for part in [
        &b"GET /sp"[..],
        b"lit HTTP/1.1\r\nHo",
        b"st: h\r",
        b"\n\r",
        b"\n",
    ] {
        c.send(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.answer("GET").await.unwrap().text(),
        "GET /split reader=own host=h"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn response_framing() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    // Exact size: a content-length, small and past the direct-write size.
    for n in [0usize, 10, 100_000] {
        let a = get(&mut c, &format!("/len/{n}")).await;
        assert_eq!(a.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(a.body.len(), n);
    }
    // The service's own content-length is kept.
    let a = get(&mut c, "/declared").await;
    assert_eq!(
        (a.header("content-length"), a.text().as_str()),
        (Some("5"), "hello")
    );
    // Unknown size: chunked, empty frames skipped.
    let a = get(&mut c, "/stream").await;
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.header("x-truncated"), None);
    assert_eq!(a.body.len(), 4 + 20_000 + 6);
    assert!(a.text().starts_with("one,yyy") && a.text().ends_with("y,three"));
    // No body for 204.
    let a = get(&mut c, "/204").await;
    assert_eq!(a.status, 204);
    assert_eq!(a.header("content-length"), None);
    assert_eq!(a.header("transfer-encoding"), None);
    // The connection is still usable after all of them.
    assert_eq!(
        get(&mut c, "/last").await.text(),
        "GET /last reader=own host=h"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_that_fails_or_ends_short_ends_the_connection_not_the_message_framing() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    let a = get(&mut c, "/fail").await;
    // The chunk that came is delivered; the terminating chunk never is.
    assert_eq!(a.header("x-truncated"), Some("1"), "{a:?}");
    assert_eq!(a.text(), "partial");
    assert!(c.closed().await);

    let mut c = Conn::open(server.local_addr()).await.unwrap();
    c.send(b"GET /short HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let a = c.answer("GET").await.unwrap();
    assert_eq!(a.header("content-length"), Some("10"));
    assert_eq!(a.text(), "hello");
    assert!(
        c.closed().await,
        "the pipelined request must not be answered"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connection_close_from_either_side_or_keep_alive_off() {
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    c.send(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n")
        .await
        .unwrap();
    let a = c.answer("GET").await.unwrap();
    assert_eq!(a.header("connection"), Some("close"));
    assert_eq!(a.text(), "GET /x reader=own host=h");
    assert!(c.closed().await);

    let mut c = Conn::open(server.local_addr()).await.unwrap();
    let a = get(&mut c, "/close").await;
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed().await);
    server.shutdown(Duration::from_secs(1)).await;

    let mut s = ListenerSettings::new("h1", localhost());
    s.keep_alive = false;
    let server = serve(s).await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    assert_eq!(get(&mut c, "/x").await.header("connection"), Some("close"));
    assert!(c.closed().await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_read_timeout() {
    let mut s = ListenerSettings::new("h1", localhost());
    s.header_read_timeout = Duration::from_millis(300);
    let server = serve(s).await;
    // Idle after a response.
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    assert_eq!(get(&mut c, "/x").await.status, 200);
    let started = std::time::Instant::now();
    assert!(c.closed().await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Half a head, then nothing.
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    c.send(b"GET /x HTTP/1.1\r\nHost:").await.unwrap();
    assert!(c.closed().await);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn answers_are_the_ones_hyper_gives() {
    // The same requests to the own reader and writer and to hyper alone:
    // status, header fields (the date aside, in any order) and body equal.
    let own = server().await;
    let mut s = ListenerSettings::new("h1", localhost());
    s.fast_http1 = false;
    let hyper = serve(s).await;
    for (method, path, extra) in [
        ("GET", "/len/0", ""),
        ("GET", "/len/10", ""),
        ("GET", "/len/100000", ""),
        ("GET", "/declared", ""),
        ("GET", "/stream", ""),
        ("GET", "/204", ""),
        ("HEAD", "/len/10", ""),
        ("HEAD", "/len/0", ""),
        ("HEAD", "/declared", ""),
        ("HEAD", "/stream", ""),
        ("GET", "/close", ""),
        ("GET", "/x", "Connection: close\r\n"),
        ("OPTIONS", "/x", "X-Many: 1\r\nx-many: 2\r\n"),
    ] {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        let mut answers = Vec::new();
        for server in [&own, &hyper] {
            let mut c = Conn::open(server.local_addr()).await.unwrap();
            let mut a = c.exchange(req.as_bytes(), method).await.unwrap();
            // Which reader it was shows in the text, and so in the length.
            let text = a.text().replace("reader=own", "reader=hyper");
            let length = (a.body.len().to_string(), text.len().to_string());
            a.headers.retain(|(n, _)| n != "date");
            for (n, v) in &mut a.headers {
                if n == "content-length" && *v == length.0 && method != "HEAD" {
                    v.clone_from(&length.1);
                }
            }
            a.headers.sort();
            answers.push((a.status, a.headers, text));
        }
        assert_eq!(answers[0], answers[1], "{req:?}");
    }
    own.shutdown(Duration::from_secs(1)).await;
    hyper.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn turned_off_hyper_reads_everything() {
    let mut s = ListenerSettings::new("h1", localhost());
    s.fast_http1 = false;
    let server = serve(s).await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    assert_eq!(get(&mut c, "/x").await.text(), "GET /x reader=hyper host=h");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_the_request_in_flight() {
    let server = server().await;
    let mut idle = Conn::open(server.local_addr()).await.unwrap();
    assert_eq!(get(&mut idle, "/x").await.status, 200);
    let mut busy = Conn::open(server.local_addr()).await.unwrap();
    busy.send(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let a = busy.answer("GET").await.unwrap();
        (a, busy.closed().await)
    });
    // The request has reached the service before the shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = server.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.aborted, 0);
    assert!(idle.closed().await);
    // Answered in full, marked as the connection's last, then closed.
    let (a, closed) = in_flight.await.unwrap();
    assert_eq!((a.status, a.text().as_str()), (200, "slow"));
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed);
}

#[tokio::test]
async fn many_requests_on_one_connection_with_full_bodies() {
    // Keep-alive over many requests (buffers reused), each answer checked.
    let server = server().await;
    let mut c = Conn::open(server.local_addr()).await.unwrap();
    for i in 0..200 {
        let n = (i * 37) % 3000;
        let a = get(&mut c, &format!("/len/{n}")).await;
        assert_eq!(a.body, vec![b'x'; n]);
    }
    server.shutdown(Duration::from_secs(1)).await;
}
