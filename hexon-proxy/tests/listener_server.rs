//! The server loop over real sockets: HTTP/1.1, h2c, h2 over TLS, PROXY
//! protocol, upgrades, smuggling vectors, graceful shutdown, limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod listener_support;

use std::time::Duration;

use hexon_proxy::listener::{Listener, ListenerSettings, ServerHandle};
use hexon_proxy::proxy_protocol::{ProxyProtocolLimits, V2_SIGNATURE};
use hexon_proxy::tls::{ServerTls, TlsSettings};
use listener_support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn plain(settings: ListenerSettings) -> ServerHandle {
    Listener::bind(settings, None)
        .await
        .unwrap()
        .serve(service())
}

/// Send raw bytes, read until the server closes (or 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn http1_request_carries_connection_info() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let addr = server.local_addr();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let (status, body) = get_h1(tcp, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&format!(
            "peer={me} tcp_peer={me} local={addr} scheme=http sni= alpn= chain=0"
        )),
        "{body}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn h2c_prior_knowledge_on_plain_listeners_unless_disabled() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (status, body) = get_h2(tcp, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("scheme=http"), "{body}");
    server.shutdown(Duration::from_secs(1)).await;

    let mut s = ListenerSettings::new("plain", localhost());
    s.h2c = false;
    let server = plain(s).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let r = get_h2(tcp, "/").await;
    assert!(r.is_err(), "{r:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn h2_and_http11_over_tls_by_alpn() {
    let dir = temp_dir("alpn");
    let ca = Ca::new("ca");
    let tls = ServerTls::load(TlsSettings::new(vec![
        ca.leaf(&["a.test"]).write(&dir, "s"),
    ]))
    .unwrap();
    let server = Listener::bind(ListenerSettings::new("tls", localhost()), Some(tls))
        .await
        .unwrap()
        .serve(service());
    let addr = server.local_addr();
    let s = tls_connect(
        addr,
        "a.test",
        client_trusting(ca.der(), None, &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = get_h2(s, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("scheme=https sni=a.test alpn=h2"), "{body}");

    let s = tls_connect(
        addr,
        "a.test",
        client_trusting(ca.der(), None, &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (status, body) = get_h1(s, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("alpn=http/1.1"), "{body}");
    server.shutdown(Duration::from_secs(1)).await;
}

fn proxy_settings() -> ListenerSettings {
    let mut s = ListenerSettings::new("lb", localhost());
    s.proxy_protocol = Some(ProxyProtocolLimits::default());
    s
}

#[tokio::test]
async fn proxy_protocol_v1_sets_the_peer() {
    let server = plain(proxy_settings()).await;
    let addr = server.local_addr();
    let reply = raw(
        addr,
        b"PROXY TCP4 203.0.113.9 192.0.2.1 41234 443\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("peer=203.0.113.9:41234 tcp_peer=127.0.0.1:"),
        "{reply}"
    );

    // UNKNOWN: the TCP peer.
    let reply = raw(
        addr,
        b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.contains("peer=127.0.0.1:"), "{reply}");

    // No header on a listener that expects one: closed without a response.
    let reply = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(reply, "");
    // Malformed header: closed.
    let reply = raw(
        addr,
        b"PROXY TCP4 203.0.113.9 192.0.2.1 99999 443\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(reply, "");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn proxy_protocol_header_times_out() {
    let mut s = proxy_settings();
    s.proxy_protocol = Some({
        let mut l = ProxyProtocolLimits::default();
        l.read_timeout = Duration::from_millis(200);
        l
    });
    let server = plain(s).await;
    // A partial header and then silence.
    let reply = raw(server.local_addr(), b"PROXY TCP4 1.2.3.4").await;
    assert_eq!(reply, "");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn listener_without_proxy_protocol_never_parses_one() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let reply = raw(
        server.local_addr(),
        b"PROXY TCP4 203.0.113.9 192.0.2.1 41234 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(!reply.contains("203.0.113.9"));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn proxy_protocol_v2_before_tls_keeps_the_client_hello() {
    let dir = temp_dir("ppv2-tls");
    let ca = Ca::new("ca");
    let tls = ServerTls::load(TlsSettings::new(vec![
        ca.leaf(&["a.test"]).write(&dir, "s"),
    ]))
    .unwrap();
    let server = Listener::bind(proxy_settings(), Some(tls))
        .await
        .unwrap()
        .serve(service());
    let addr = server.local_addr();

    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0, 36 + 7]);
    header.extend_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&5555u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    header.extend_from_slice(&[0xEA, 0, 4, 1, 2, 3, 4]); // a TLV, skipped

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    // The ClientHello follows immediately (likely in the same read).
    let s =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_trusting(ca.der(), None, &[])))
            .connect(
                rustls::pki_types::ServerName::try_from("a.test").unwrap(),
                tcp,
            )
            .await
            .unwrap();
    let (status, body) = get_h1(s, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("peer=[2001:db8::5]:5555 tcp_peer=127.0.0.1:"),
        "{body}"
    );
    assert!(body.contains("scheme=https"), "{body}");

    // LOCAL (health check): the real peer.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    tcp.write_all(&local).await.unwrap();
    let s =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_trusting(ca.der(), None, &[])))
            .connect(
                rustls::pki_types::ServerName::try_from("a.test").unwrap(),
                tcp,
            )
            .await
            .unwrap();
    let (_, body) = get_h1(s, "/").await.unwrap();
    assert!(body.contains("peer=127.0.0.1:"), "{body}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn upgrade_passes_through_and_echoes() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Raw bytes after the upgrade, including ones that look like HTTP.
    for msg in [
        &b"\x81\x05hello"[..],
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn smuggling_vectors_get_400_and_a_closed_connection() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let addr = server.local_addr();
    let vectors: &[&[u8]] = &[
        // CL.TE and TE.CL
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        // Differing Content-Lengths, in two headers and in one.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        // Transfer-Encoding other than a single final chunked.
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // The smuggled request rides on a valid first one (pipelined).
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for v in vectors {
        let reply = raw(addr, v).await;
        let last = reply.rfind("HTTP/1.1 ").map(|i| &reply[i..]).unwrap_or("");
        assert!(
            last.starts_with("HTTP/1.1 400"),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(v)
        );
        assert!(!last.contains("peer="), "{reply}");
    }
    // Sanity: valid chunked and Content-Length bodies pass, also pipelined.
    let reply = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    assert!(
        reply.contains("body=5") && reply.contains("body=3"),
        "{reply}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let addr = server.local_addr();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(get_h1(tcp, "/slow"));
    // An idle keep-alive connection must not hold shutdown up.
    let idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = server.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.aborted, 0);
    assert!(report.finished >= 2, "{report:?}");
    let (status, _) = slow.await.unwrap().unwrap();
    assert_eq!(status, 200);
    drop(idle);
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_aborts_after_the_grace_period() {
    let server = plain(ListenerSettings::new("plain", localhost())).await;
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let stuck = tokio::spawn(get_h1(tcp, "/very-slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let report = server.shutdown(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(report.aborted, 1, "{report:?}");
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test]
async fn max_connections_queues_the_excess() {
    let mut s = ListenerSettings::new("plain", localhost());
    s.max_connections = Some(1);
    let server = plain(s).await;
    let addr = server.local_addr();
    let first = tokio::spawn(get_h1(TcpStream::connect(addr).await.unwrap(), "/slow"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let (status, _) = get_h1(TcpStream::connect(addr).await.unwrap(), "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Served only after the first connection finished and closed.
    assert!(first.is_finished() || started.elapsed() >= Duration::from_millis(300));
    first.await.unwrap().unwrap();
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let mut s = ListenerSettings::new("plain", localhost());
    s.max_header_size = 8192;
    let server = plain(s).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let reply = raw(server.local_addr(), big.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    server.shutdown(Duration::from_secs(1)).await;
}

/// A plain listener serving on `threads`.
async fn on_threads(threads: &std::sync::Arc<hexon_core::rt::ConnectionThreads>) -> ServerHandle {
    Listener::bind(ListenerSettings::new("threads", localhost()), None)
        .await
        .unwrap()
        .with_threads(threads.clone())
        .serve(service())
}

/// With pinned threads a connection is served by the thread on its
/// client's CPU; by count alone the first would go to the first thread.
#[tokio::test]
async fn pinned_connection_threads_serve_each_client_on_its_cpu() {
    use hexon_core::rt::{ConnectionThreads, ThreadOptions};
    let affinity = rustix::thread::sched_getaffinity(None).unwrap();
    let allowed: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| affinity.is_set(c))
        .collect();
    let options = ThreadOptions {
        pin_cpus: true,
        ..ThreadOptions::default()
    };
    let threads = std::sync::Arc::new(
        ConnectionThreads::start_with(allowed.len(), "pinned-test", options).unwrap(),
    );
    let server = on_threads(&threads).await;
    let addr = server.local_addr();
    // A client on each CPU, last first: one request each, kept open.
    let mut open = Vec::new();
    for (i, &cpu) in allowed.iter().enumerate().rev() {
        let client = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).unwrap();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            s
        });
        open.push(
            tokio::task::spawn_blocking(move || client.join().unwrap())
                .await
                .unwrap(),
        );
        let live = threads.live();
        assert_eq!(live.get(i), Some(&1), "the client on CPU {cpu}: {live:?}");
        assert_eq!(live.iter().sum::<usize>(), allowed.len() - i, "{live:?}");
    }
    server.shutdown(Duration::from_secs(1)).await;
    drop(open);
}

#[tokio::test]
async fn connection_threads_serve_connections_and_shut_down_gracefully() {
    use hexon_core::rt::ConnectionThreads;
    let threads = std::sync::Arc::new(ConnectionThreads::start(2, "listener-test").unwrap());
    let server = on_threads(&threads).await;
    let addr = server.local_addr();
    // Three keep-alive connections, each served once: least busy first.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        open.push(s);
    }
    let mut live = threads.live();
    live.sort_unstable();
    assert_eq!(live, [1, 2]);
    // A slow request on a thread finishes during a graceful shutdown.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let slow = tokio::spawn(get_h1(tcp, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = server.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.aborted, 0, "{report:?}");
    assert_eq!(slow.await.unwrap().unwrap().0, 200);
    drop(open);
    assert_eq!(threads.live(), [0, 0]);
}
