//! Accepting connections: TCP, optional PROXY protocol, optional TLS, then
//! HTTP/1.1 and HTTP/2 (with upgrades) served to a tower service.
//!
//! Per connection: [PROXY header](crate::proxy_protocol) (only on listeners
//! that enable it, under a size limit and a timeout) → [TLS](crate::tls)
//! handshake (with a timeout; ALPN picks HTTP/1.1 or HTTP/2) → with
//! [`ListenerSettings::fast_http1`] (the default) the listener's own
//! HTTP/1.1 reader and writer for requests that cannot have a body, until
//! a request needs more (a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2's
//! preface, a head that does not parse), when the connection and the bytes
//! read so far go to hyper's `auto` server for the rest of its life:
//! HTTP/1.1 (header read timeout, header size and count limits,
//! keep-alive) or HTTP/2 (detected by its preface: over TLS by ALPN, on
//! plain listeners as h2c "prior knowledge" unless
//! [`ListenerSettings::h2c`] is off). Every request carries a
//! [`ConnectionInfo`] extension. [`Listener::serve_with_express`] also
//! offers each head the own reader takes to an express lane
//! ([`crate::express`]), which may forward it without the service.
//!
//! Request smuggling vectors are refused with 400 and the connection is
//! closed; see the `smuggling` module for what hyper already does and what
//! is added here.
//!
//! [`Listener::serve`] runs the accept loop on the current tokio runtime and
//! returns a [`ServerHandle`]: [`ServerHandle::shutdown`] stops accepting,
//! lets in-flight requests finish (HTTP/1 connections close after their
//! current response, HTTP/2 ones get GOAWAY) and aborts what is left after
//! the grace period.

mod h1;
mod smuggling;

#[doc(hidden)]
pub use h1::fuzz_express_head;
#[doc(hidden)]
pub use h1::fuzz_parse as fuzz_h1_heads;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hexon_core::rt::ConnectionThreads;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::{Service, ServiceExt as _};

use crate::body::{BoxBody, BoxError, RequestBody};
use crate::express::{Express, NoExpress};
use crate::ext::ConnectionInfo;
use crate::proxy_protocol::{self, Addresses, PrefixedStream, ProxyProtocolLimits, Transport};
use crate::respond;
use crate::tls::ServerTls;

use smuggling::{Observer, SniffIo, Verdicts};

/// A listener's settings. Build with [`ListenerSettings::new`] and adjust
/// the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerSettings {
    /// Name for logs.
    pub name: String,
    /// Address to bind (`127.0.0.1:0` picks a free port; see
    /// [`Listener::local_addr`]).
    pub bind: SocketAddr,
    /// Expect a PROXY protocol v1/v2 header on every connection, with these
    /// limits. `None` (default): never parse one.
    pub proxy_protocol: Option<ProxyProtocolLimits>,
    /// Time for the TLS handshake (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Time for an HTTP/1 request head to arrive (default 30 s).
    pub header_read_timeout: Duration,
    /// Largest request head: HTTP/1 read buffer, HTTP/2 header list
    /// (default 64 KiB; HTTP/1 never goes below hyper's 8 KiB minimum).
    pub max_header_size: usize,
    /// Most header fields in an HTTP/1 request (default 100).
    pub max_headers: usize,
    /// HTTP/1 keep-alive (default on).
    pub keep_alive: bool,
    /// HTTP/2 PING interval to detect dead peers (default 60 s; `None` off).
    pub http2_keep_alive_interval: Option<Duration>,
    /// HTTP/2 concurrent streams per connection (default 256).
    pub http2_max_concurrent_streams: u32,
    /// Accept HTTP/2 with prior knowledge (h2c) on plain listeners (default
    /// on: gRPC behind a TLS-terminating load balancer needs it).
    pub h2c: bool,
    /// Most simultaneous connections; at the limit the accept loop waits
    /// (the kernel backlog queues). `None` (default): unlimited.
    pub max_connections: Option<usize>,
    /// Read HTTP/1.1 requests that cannot have a body with the listener's
    /// own reader and writer instead of hyper's server (default on; the
    /// [module docs](self) say what it hands to hyper). Off: hyper serves
    /// every connection.
    pub fast_http1: bool,
}

impl ListenerSettings {
    /// Defaults for a listener on `bind`.
    pub fn new(name: impl Into<String>, bind: SocketAddr) -> Self {
        ListenerSettings {
            name: name.into(),
            bind,
            proxy_protocol: None,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_header_size: 64 * 1024,
            max_headers: 100,
            keep_alive: true,
            http2_keep_alive_interval: Some(Duration::from_secs(60)),
            http2_max_concurrent_streams: 256,
            h2c: true,
            max_connections: None,
            fast_http1: true,
        }
    }
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Binding failed.
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    local: SocketAddr,
    settings: ListenerSettings,
    tls: Option<ServerTls>,
    threads: Option<Arc<ConnectionThreads>>,
}

impl Listener {
    /// Bind `settings.bind`. `tls`: serve HTTPS with it (load it first with
    /// [`ServerTls::load`], which fails closed); `None`: plain HTTP.
    pub async fn bind(
        settings: ListenerSettings,
        tls: Option<ServerTls>,
    ) -> Result<Self, ListenerError> {
        let err = |source| ListenerError::Bind {
            name: settings.name.clone(),
            addr: settings.bind,
            source,
        };
        let tcp = TcpListener::bind(settings.bind).await.map_err(err)?;
        let local = tcp.local_addr().map_err(err)?;
        tracing::info!(
            listener = %settings.name,
            addr = %local,
            tls = tls.is_some(),
            proxy_protocol = settings.proxy_protocol.is_some(),
            "listening"
        );
        Ok(Listener {
            tcp,
            local,
            settings,
            tls,
            threads: None,
        })
    }

    /// Serve each connection on the least busy of `threads` (each a
    /// single-threaded runtime; see [`hexon_core::rt`]) instead of the
    /// runtime [`serve`](Self::serve) is called on. An empty set changes
    /// nothing.
    #[must_use]
    pub fn with_threads(mut self, threads: Arc<ConnectionThreads>) -> Self {
        self.threads = Some(threads).filter(|t| !t.is_empty());
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serve `service` on the current tokio runtime until
    /// [`ServerHandle::shutdown`]. Dropping the handle leaves it running.
    pub fn serve<S>(self, service: S) -> ServerHandle
    where
        S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.serve_inner::<S, NoExpress>(service, None)
    }

    /// [`serve`](Self::serve), with `express` choosing the requests that
    /// take the express lane ([`crate::express`]) when
    /// [`ListenerSettings::fast_http1`] is on; the others go to `service`.
    pub fn serve_with_express<S, E>(self, service: S, express: Arc<E>) -> ServerHandle
    where
        S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        E: Express,
    {
        self.serve_inner(service, Some(express))
    }

    fn serve_inner<S, E>(self, service: S, express: Option<Arc<E>>) -> ServerHandle
    where
        S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        E: Express,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let local = self.local;
        let name = self.settings.name.clone();
        let task = tokio::spawn(accept_loop(self, service, express, stop_rx));
        ServerHandle {
            name,
            local,
            stop: stop_tx,
            task,
        }
    }
}

/// Controls a serving listener.
#[derive(Debug)]
pub struct ServerHandle {
    name: String,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(JoinSet<()>, watch::Sender<bool>)>,
}

/// How a shutdown went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections that finished within the grace period.
    pub finished: usize,
    /// Connections aborted when the grace period ran out.
    pub aborted: usize,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stop accepting, ask every connection to finish (HTTP/1: after the
    /// current response; HTTP/2: GOAWAY, open streams complete; handshakes
    /// in progress: dropped), wait up to `grace`, then abort the rest.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let _ = self.stop.send(true);
        let (mut conns, conn_stop) = match self.task.await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(listener = %self.name, error = %e, "accept loop failed");
                return ShutdownReport {
                    finished: 0,
                    aborted: 0,
                };
            }
        };
        let _ = conn_stop.send(true);
        let mut finished = 0;
        let drained = tokio::time::timeout(grace, async {
            while conns.join_next().await.is_some() {
                finished += 1;
            }
        })
        .await
        .is_ok();
        let aborted = if drained { 0 } else { conns.len() };
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        tracing::info!(listener = %self.name, finished, aborted, "listener stopped");
        ShutdownReport { finished, aborted }
    }
}

/// What every connection task shares.
struct Shared {
    name: String,
    settings: ListenerSettings,
    tls: Option<ServerTls>,
    auto: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

async fn accept_loop<S, E>(
    listener: Listener,
    service: S,
    express: Option<Arc<E>>,
    mut stop: watch::Receiver<bool>,
) -> (JoinSet<()>, watch::Sender<bool>)
where
    S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    E: Express,
{
    let Listener {
        tcp,
        local,
        settings,
        tls,
        threads,
    } = listener;
    let (conn_stop_tx, conn_stop_rx) = watch::channel(false);
    let (auto, http1, http2) = builders(&settings);
    let shared = Arc::new(Shared {
        name: settings.name.clone(),
        http1,
        http2,
        auto,
        settings,
        tls,
    });
    let limit = shared
        .settings
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n)));
    let mut conns = JoinSet::new();
    let stopped = async move {
        // A dropped handle means "run forever".
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(stopped);
    loop {
        let permit = match &limit {
            Some(sem) => tokio::select! {
                p = Arc::clone(sem).acquire_owned() => p.ok(),
                () = &mut stopped => break,
            },
            None => None,
        };
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            () = &mut stopped => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %shared.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stop = conn_stop_rx.clone();
        let service = service.clone();
        let express = express.clone();
        match threads.as_ref().and_then(|t| t.place_near(&stream)) {
            None => {
                conns.spawn(async move {
                    let _permit = permit;
                    connection(shared, service, express, stream, peer, local, stop).await;
                });
            }
            // The socket moves to the thread's own reactor: every wake-up of
            // this connection then stays on that thread.
            Some(place) => match stream.into_std() {
                Ok(std) => {
                    let live = place.live;
                    conns.spawn_on(
                        async move {
                            let (_permit, _live) = (permit, live);
                            match TcpStream::from_std(std) {
                                Ok(stream) => {
                                    connection(shared, service, express, stream, peer, local, stop).await;
                                }
                                Err(e) => {
                                    tracing::warn!(listener = %shared.name, error = %e, "could not register a connection");
                                }
                            }
                        },
                        &place.handle,
                    );
                }
                Err(e) => {
                    tracing::warn!(listener = %shared.name, error = %e, "could not move a connection to its thread");
                }
            },
        }
    }
    drop(tcp);
    (conns, conn_stop_tx)
}

/// The `auto` builder (HTTP/1 or HTTP/2 by preface) and single-protocol
/// ones, configured alike. (`auto`'s `http1_only`/`http2_only` are ignored
/// by `serve_connection_with_upgrades`, hence hyper's own builders.)
fn builders(
    s: &ListenerSettings,
) -> (
    auto::Builder<TokioExecutor>,
    hyper::server::conn::http1::Builder,
    hyper::server::conn::http2::Builder<TokioExecutor>,
) {
    let max_buf = s.max_header_size.max(8192);
    let max_list = u32::try_from(s.max_header_size).unwrap_or(u32::MAX);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .keep_alive(s.keep_alive)
        .max_buf_size(max_buf)
        .max_headers(s.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_list)
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .keep_alive_interval(s.http2_keep_alive_interval);
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .keep_alive(s.keep_alive)
        .max_buf_size(max_buf)
        .max_headers(s.max_headers);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(max_list)
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .keep_alive_interval(s.http2_keep_alive_interval);
    (b, h1, h2)
}

/// Drive a hyper connection to completion; on shutdown, ask it to finish
/// gracefully and keep driving it.
macro_rules! drive {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r.map_err(BoxError::from),
            () = stopped($stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(BoxError::from)
            }
        }
    }};
}

/// Which protocol the connection may speak.
#[derive(Clone, Copy)]
enum Proto {
    Auto,
    Http1,
    Http2,
}

async fn connection<S, E>(
    shared: Arc<Shared>,
    mut service: S,
    express: Option<Arc<E>>,
    stream: TcpStream,
    tcp_peer: SocketAddr,
    local: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    E: Express,
{
    let setup = async {
        let mut stream = stream;
        let (peer, prefix) = match shared.settings.proxy_protocol {
            None => (tcp_peer, bytes::Bytes::new()),
            Some(limits) => {
                let (header, rest) = proxy_protocol::read_header(&mut stream, limits)
                    .await
                    .map_err(|e| e.to_string())?;
                let peer = match &header.addresses {
                    Addresses::Inet {
                        transport: Transport::Datagram,
                        ..
                    } => return Err("PROXY header for a datagram connection".to_owned()),
                    _ => header.source().unwrap_or(tcp_peer),
                };
                (peer, rest)
            }
        };
        let io = PrefixedStream::new(prefix, stream);
        let mut info = ConnectionInfo {
            peer,
            tcp_peer,
            local,
            tls: None,
        };
        match &shared.tls {
            None => Ok((Io::Plain(io), info)),
            Some(tls) => {
                let accept = tls.acceptor().accept(io);
                let tls_stream =
                    match tokio::time::timeout(shared.settings.tls_handshake_timeout, accept).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return Err(format!("TLS handshake: {e}")),
                        Err(_) => return Err("TLS handshake timed out".to_owned()),
                    };
                if tls_stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                    // RFC 8737 §3: the handshake was the validation; no
                    // application data follows.
                    return Err("ACME tls-alpn-01 validation handshake answered".to_owned());
                }
                info.tls = Some(Arc::new(crate::tls::tls_info(tls_stream.get_ref().1)));
                Ok((Io::Tls(Box::new(tls_stream)), info))
            }
        }
    };
    let (io, info) = tokio::select! {
        r = setup => match r {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(listener = %shared.name, peer = %tcp_peer, error = %e, "connection refused");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    let proto = match (&io, info.tls.as_ref().and_then(|t| t.alpn.as_deref())) {
        (Io::Tls(_), Some(b"h2")) => Proto::Http2,
        (Io::Tls(_), Some(_)) => Proto::Http1,
        (Io::Tls(_), None) => Proto::Auto,
        (Io::Plain(_), _) if shared.settings.h2c => Proto::Auto,
        (Io::Plain(_), _) => Proto::Http1,
    };
    let peer = info.peer;
    let info = Arc::new(info);
    // HTTP/1 requests without a body: the own reader, until one needs hyper.
    let (io, prefix) = if shared.settings.fast_http1 && !matches!(proto, Proto::Http2) {
        let mut io = io;
        let limits = h1::Limits {
            max_head: shared.settings.max_header_size.max(8192),
            max_headers: shared.settings.max_headers,
            header_read_timeout: shared.settings.header_read_timeout,
            keep_alive: shared.settings.keep_alive,
        };
        match h1::serve(
            &mut io,
            &mut service,
            express.as_deref(),
            &info,
            limits,
            &mut stop,
        )
        .await
        {
            h1::End::Closed => return,
            h1::End::Handoff(rest) => (io, rest),
        }
    } else {
        (io, bytes::Bytes::new())
    };
    let io = PrefixedStream::new(prefix, io);
    let verdicts = Verdicts::default();
    let observer = Observer::new(
        shared.settings.max_header_size.max(8192),
        shared.settings.max_headers,
        verdicts.clone(),
    );
    let io = TokioIo::new(SniffIo::new(
        io,
        observer,
        shared.settings.header_read_timeout,
    ));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let service = service.clone();
        let info = Arc::clone(&info);
        // HTTP/1 requests are dispatched in order: the next verdict is theirs.
        let verdict = match req.version() {
            Version::HTTP_10 | Version::HTTP_11 => verdicts.pop(),
            _ => None,
        };
        handle(service, info, verdict, req)
    });
    let result = match proto {
        Proto::Auto => drive!(
            shared.auto.serve_connection_with_upgrades(io, svc),
            &mut stop
        ),
        Proto::Http1 => drive!(
            shared.http1.serve_connection(io, svc).with_upgrades(),
            &mut stop
        ),
        Proto::Http2 => drive!(shared.http2.serve_connection(io, svc), &mut stop),
    };
    if let Err(e) = result {
        tracing::debug!(listener = %shared.name, peer = %peer, tcp_peer = %tcp_peer, error = %e, "connection error");
    }
}

/// Resolves once shutdown is requested (or the listener is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn handle<S>(
    mut service: S,
    info: Arc<ConnectionInfo>,
    verdict: Option<&'static str>,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, BoxError>
where
    S: Service<Request<RequestBody>, Response = Response<BoxBody>> + Send,
    S::Error: Into<BoxError>,
{
    if let Some(reason) = verdict.or_else(|| smuggling::check_headers(req.headers())) {
        tracing::debug!(peer = %info.peer, reason, "request refused: possible request smuggling");
        let mut res = respond::error(StatusCode::BAD_REQUEST, None, respond::Flavor::Json);
        if req.version() <= Version::HTTP_11 {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(res);
    }
    req.extensions_mut().insert(ConnectionInfo::clone(&info));
    service.ready().await.map_err(Into::into)?;
    service
        .call(req.map(RequestBody::Hyper))
        .await
        .map_err(Into::into)
}

/// The connection after PROXY protocol and TLS.
enum Io {
    Plain(PrefixedStream<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<PrefixedStream<TcpStream>>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
