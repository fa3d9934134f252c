//! A benchmark reference point, not a usage example and not a proxy anyone
//! should run: about the least a tokio HTTP/1.1 relay can do. One
//! current-thread runtime per worker with its own `SO_REUSEPORT` listener;
//! each client connection is served by one task that parses the request
//! head with `httparse`, writes it to an upstream connection, reads the
//! answer (`Content-Length` framing only) and writes it back. No `http`
//! types, no checks beyond what framing needs, no timeouts.
//! `scripts/bench-proxy` runs it beside nginx, the minimal hyper proxy and
//! hexon, so the report shows what tokio itself reaches on the machine.
//!
//! ```sh
//! cargo run --release -p hexon-proxy --example bench_peer_relay -- 127.0.0.1:18088 127.0.0.1:18081
//! ```
//!
//! Worker threads follow `TOKIO_WORKER_THREADS` (default 2). Two switches
//! take it apart (docs/BENCHMARKS.md, "2026-12-06, seventh session"):
//! - `RELAY_SERVER=hyper`: hyper's HTTP/1.1 server in front instead of the
//!   `httparse` loop; the upstream is still written and read in the
//!   request's own task (with `http` types for the answer);
//! - `RELAY_POOL=1`: upstream connections from a stack per thread, taken
//!   for one request and put back, instead of one per client connection;
//! - `RELAY_WORK_NS=8000`: spin that long on each request before it goes
//!   upstream (without hyper in front), standing in for a gateway's own
//!   work per request; `RELAY_DEFER=1` then yields once before the
//!   upstream write, so the writes of one run of the thread go out
//!   together after it.

use std::cell::RefCell;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod bench_support;

type BoxError = Box<dyn Error + Send + Sync>;

#[derive(Clone, Copy)]
struct Mode {
    hyper_server: bool,
    pooled: bool,
    /// Busy time per request (`RELAY_WORK_NS`).
    work: std::time::Duration,
    defer: bool,
    upstream: SocketAddr,
}

thread_local! {
    /// `RELAY_POOL=1`: this thread's idle upstream connections.
    static POOL: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_peer_relay LISTEN_ADDR UPSTREAM_ADDR";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let mode = Mode {
        upstream: args.next().ok_or(usage)?.parse()?,
        hyper_server: std::env::var("RELAY_SERVER").is_ok_and(|v| v == "hyper"),
        pooled: std::env::var("RELAY_POOL").is_ok_and(|v| v == "1"),
        work: std::time::Duration::from_nanos(
            std::env::var("RELAY_WORK_NS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        defer: std::env::var("RELAY_DEFER").is_ok_and(|v| v == "1"),
    };
    bench_support::per_core(
        listen,
        bench_support::workers(),
        move |listener| async move {
            loop {
                let (client, _) = listener.accept().await.map_err(|e| e.to_string())?;
                if mode.hyper_server {
                    tokio::spawn(hyper_front(client, mode));
                } else {
                    tokio::spawn(async move {
                        let _ = relay(client, mode).await;
                    });
                }
            }
        },
    )?;
    Ok(())
}

/// A whole message at the front of a buffer, once there is one: (head
/// length, body length).
type Framed = Result<Option<(usize, usize)>, BoxError>;

/// A complete request at the front of `buf`.
fn framed_request(buf: &[u8]) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head) => Ok(Some((head, content_length(req.headers)?))),
    }
}

/// A complete response at the front of `buf`.
fn framed_response(buf: &[u8]) -> Framed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head) => Ok(Some((head, content_length(res.headers)?))),
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, BoxError> {
    let mut len = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked framing is not relayed".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)?.trim().parse()?;
        }
    }
    Ok(len)
}

/// Read into `buf` until `frame` finds a whole message; returns its length,
/// or `None` at a clean end of the stream.
async fn read_message(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    frame: fn(&[u8]) -> Framed,
) -> Result<Option<usize>, BoxError> {
    loop {
        match frame(buf)? {
            Some((head, body)) if buf.len() >= head + body => return Ok(Some(head + body)),
            Some(_) => {}
            None if buf.len() > 64 * 1024 => return Err("head too large".into()),
            None => {}
        }
        if io.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a message".into())
            };
        }
    }
}

/// An upstream connection: the client connection's own (`kept`), or one
/// from the thread's stack.
async fn upstream_conn(kept: &mut Option<TcpStream>, mode: Mode) -> Result<TcpStream, BoxError> {
    if let Some(c) = kept.take() {
        return Ok(c);
    }
    if mode.pooled {
        if let Some(c) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(c);
        }
    }
    let c = TcpStream::connect(mode.upstream).await?;
    c.set_nodelay(true)?;
    Ok(c)
}

fn release(kept: &mut Option<TcpStream>, conn: TcpStream, mode: Mode) {
    if mode.pooled {
        POOL.with(|p| p.borrow_mut().push(conn));
    } else {
        *kept = Some(conn);
    }
}

async fn relay(mut client: TcpStream, mode: Mode) -> Result<(), BoxError> {
    client.set_nodelay(true)?;
    let mut kept = None;
    let (mut cbuf, mut ubuf) = (Vec::with_capacity(4096), Vec::with_capacity(4096));
    while let Some(n) = read_message(&mut client, &mut cbuf, framed_request).await? {
        if !mode.work.is_zero() {
            let start = std::time::Instant::now();
            while start.elapsed() < mode.work {
                std::hint::spin_loop();
            }
        }
        if mode.defer {
            tokio::task::yield_now().await;
        }
        let mut conn = upstream_conn(&mut kept, mode).await?;
        conn.write_all(cbuf.get(..n).ok_or("short")?).await?;
        cbuf.drain(..n);
        let m = read_message(&mut conn, &mut ubuf, framed_response)
            .await?
            .ok_or("upstream closed")?;
        release(&mut kept, conn, mode);
        client.write_all(ubuf.get(..m).ok_or("short")?).await?;
        ubuf.drain(..m);
    }
    Ok(())
}

/// The client connection's upstream state under `RELAY_SERVER=hyper`.
type Up = Arc<tokio::sync::Mutex<(Option<TcpStream>, Vec<u8>)>>;

async fn hyper_front(client: TcpStream, mode: Mode) {
    let _ = client.set_nodelay(true);
    let up: Up = Arc::new(tokio::sync::Mutex::new((None, Vec::with_capacity(4096))));
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        forward(Arc::clone(&up), mode, req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(client), svc)
        .await;
}

type Answer = http::Response<http_body_util::Full<bytes::Bytes>>;

async fn forward(
    up: Up,
    mode: Mode,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Answer, String> {
    forward_inner(up, mode, req)
        .await
        .map_err(|e| e.to_string())
}

async fn forward_inner(
    up: Up,
    mode: Mode,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Answer, BoxError> {
    let mut guard = up.lock().await;
    let (kept, buf) = &mut *guard;
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in req.headers() {
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut conn = upstream_conn(kept, mode).await?;
    conn.write_all(&head).await?;
    let m = read_message(&mut conn, buf, framed_response)
        .await?
        .ok_or("upstream closed")?;
    release(kept, conn, mode);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err("partial head".into()),
    };
    let mut map = http::HeaderMap::new();
    for h in res.headers.iter() {
        map.append(
            http::HeaderName::from_bytes(h.name.as_bytes())?,
            http::HeaderValue::from_bytes(h.value)?,
        );
    }
    let status = http::StatusCode::from_u16(res.code.unwrap_or(502))?;
    let body = bytes::Bytes::copy_from_slice(buf.get(head_len..m).ok_or("short")?);
    buf.drain(..m);
    let mut out = http::Response::new(http_body_util::Full::new(body));
    *out.status_mut() = status;
    *out.headers_mut() = map;
    Ok(out)
}
