//! What the end-to-end tests share: real upstream servers, the gateway
//! built from `hexon.toml` as `hexon serve` builds it, an HTTP/1 client.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hexon_core::config::Config;
use hexon_core::keys::KeySet;
use hexon_proxy::body::{BoxBody, empty, full};
use hexon_proxy::gateway::{Gateway, Running, mint_token};
use hexon_proxy::test_util::{self, Handler, handler};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

// ------------------------------------------------------------ upstreams

pub async fn start_upstream(h: Handler) -> SocketAddr {
    test_util::start_upstream(h).await.unwrap()
}

pub async fn count_body(body: Incoming) -> u64 {
    test_util::count_body(body).await.unwrap()
}

/// Answers with the request it received as JSON.
pub fn header_echo() -> Handler {
    handler(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let n = count_body(body).await;
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let vals: Vec<Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::from(v.to_str().unwrap_or("?")))
                .collect();
            headers.insert(name.as_str().to_owned(), Value::Array(vals));
        }
        let j = json!({"method": parts.method.as_str(), "uri": parts.uri.to_string(), "headers": headers, "body_len": n});
        Response::builder()
            .header("content-type", "application/json")
            .body(full(j.to_string()))
            .unwrap()
    })
}

/// What [`recording_upstream`] saw.
#[derive(Clone, Default)]
pub struct Recorded {
    /// Every request head, in arrival order.
    pub heads: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

/// An upstream that records each request head (these requests have no
/// body) and answers by path: `/…/chunked` with a chunked body, `/…/close`
/// with a fixed length and `Connection: close` (then closes), `/…/slow`
/// after 1.5 s, anything else with a fixed length; all with hop-by-hop fields the gateway must
/// drop.
pub async fn recording_upstream() -> (SocketAddr, Recorded) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let recorded = Recorded::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = recorded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head: Vec<u8> = buf.drain(..end).collect();
                    let target = head
                        .split(|b| *b == b' ')
                        .nth(1)
                        .unwrap_or_default()
                        .to_vec();
                    seen.heads.lock().unwrap().push(head);
                    if target.ends_with(b"/slow") {
                        // Past a route's 1 s answer timeout.
                        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                    }
                    if target.ends_with(b"/late") {
                        // The body comes after the head, not with it.
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: t\r\n\r\n";
                        if s.write_all(head).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        if s.write_all(b"later").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let answer: &[u8] = if target.ends_with(b"/chunked") {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\nX-Up: c\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    } else if target.ends_with(b"/empty") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Up: e\r\n\r\n"
                    } else if target.ends_with(b"/nocontent") {
                        b"HTTP/1.1 204 No Content\r\nX-Up: n\r\n\r\n"
                    } else if target.ends_with(b"/close") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\nX-Up: x\r\n\r\nclose"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Up: l\r\nX-Request-Id: from-upstream\r\nDate: Sun, 06 Dec 2026 00:00:00 GMT\r\n\r\nok"
                    };
                    if s.write_all(answer).await.is_err() || target.ends_with(b"/close") {
                        return;
                    }
                }
            });
        }
    });
    (addr, recorded)
}

// ------------------------------------------------------------ gateway

pub struct Gw {
    pub gateway: Arc<Gateway>,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Gw {
    pub async fn start(toml: &str) -> Gw {
        let dir = std::env::temp_dir().join(format!(
            "hexon-e2e-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Gw::start_in(dir, toml).await
    }

    /// Stop and start again on the same data directory (a restart).
    pub async fn restart(mut self, toml: &str) -> Gw {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
        // The state (an SQLite file belongs to one gateway) goes first.
        let dir = self.dir.clone();
        drop(self.gateway);
        Gw::start_in(dir, toml).await
    }

    async fn start_in(dir: PathBuf, toml: &str) -> Gw {
        let data = dir.display().to_string();
        let config = Config::parse(toml, &|n| (n == "DATA").then(|| data.clone())).unwrap();
        let gateway = Arc::new(Gateway::build(config).await.unwrap());
        let running = gateway.start().await.unwrap();
        let addr = running.listeners[0];
        Gw {
            gateway,
            running: Some(running),
            addr,
            dir,
        }
    }

    pub async fn token(&self, user: &str) -> String {
        mint_token(self.gateway.config(), self.gateway.key().clone(), user)
            .await
            .unwrap()
    }

    pub fn keys(&self) -> KeySet {
        self.gateway.keys().clone()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub async fn send(addr: SocketAddr, req: Request<BoxBody>) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    within(tx.send_request(req)).await.unwrap()
}

pub async fn json_body(res: Response<Incoming>) -> Value {
    serde_json::from_slice(&within(res.into_body().collect()).await.unwrap().to_bytes()).unwrap()
}

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out after 30 s")
}

/// A call to the admin API (`[gateway] admin_bind`) with `token`.
pub async fn admin_call(
    gw: &Gw,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let admin = gw.running.as_ref().unwrap().admin.unwrap();
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin.internal");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b
        .body(body.map_or_else(empty, |j| full(j.to_string())))
        .unwrap();
    let res = send(admin, req).await;
    let status = res.status();
    (status, json_body(res).await)
}

// ------------------------------------------------------------ DNS

/// pebble-challtestsrv answering 127.0.0.1 for every name.
pub struct Dns(pub std::process::Child, pub u16);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn dns() -> Dns {
    let (port, mgmt) = (free_port(), free_port());
    let child = std::process::Command::new("pebble-challtestsrv")
        .args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args([
            "-dns01",
            &format!("127.0.0.1:{port}"),
            "-management",
            &format!("127.0.0.1:{mgmt}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv (apt-get install pebble)");
    // Dropping it kills it, whatever happens next.
    let server = Dns(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_ok() {
            return server;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("pebble-challtestsrv did not start");
}

// ------------------------------------------------------------ browser

/// A port free at the moment of asking, outside the kernel's ephemeral
/// range (for configurations that must name their public port before the
/// gateway binds it).
pub use hexon_core::testing::free_port;

/// A browser: cookies per host, no JavaScript.
pub struct Browser {
    pub addr: SocketAddr,
    pub cookies: HashMap<String, Vec<(String, String)>>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Page {
    /// The CSRF token the passkey button carries.
    pub fn data_csrf(&self) -> String {
        let at = self.body.find("data-csrf=\"").expect("a passkey button") + 11;
        let rest = &self.body[at..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF field");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let slash = rest.find('/').unwrap_or(rest.len());
    let authority = rest[..slash].to_owned();
    let path = if slash == rest.len() {
        "/".to_owned()
    } else {
        rest[slash..].to_owned()
    };
    (authority, path)
}

pub fn host_of(authority: &str) -> String {
    authority.split(':').next().unwrap().to_owned()
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        Browser {
            addr,
            cookies: HashMap::new(),
        }
    }

    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.cookies
            .get(host)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set(&mut self, host: &str, name: &str, value: &str) {
        let jar = self.cookies.entry(host.to_owned()).or_default();
        jar.retain(|(n, _)| n != name);
        jar.push((name.to_owned(), value.to_owned()));
    }

    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Page {
        let (authority, path) = split_url(url);
        let host = host_of(&authority);
        let mut b = Request::builder()
            .method(method)
            .uri(&path)
            .header("host", &authority);
        if !headers.iter().any(|(k, _)| *k == "accept") {
            b = b.header("accept", "text/html");
        }
        let jar = self.cookies.get(&host).cloned().unwrap_or_default();
        if !jar.is_empty() {
            let line = jar
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            b = b.header("cookie", line);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = match form {
            Some(f) => {
                b = b.header("content-type", "application/x-www-form-urlencoded");
                let mut s = form_urlencoded_serialize(f);
                s.shrink_to_fit();
                full(s)
            }
            None => full(""),
        };
        let res = send(self.addr, b.body(body).unwrap()).await;
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let set_cookies: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set_cookies {
            let first = c.split(';').next().unwrap();
            let (n, v) = first.split_once('=').unwrap();
            let jar = self.cookies.entry(host.clone()).or_default();
            jar.retain(|(name, _)| name != n);
            if !c.contains("Max-Age=0") {
                jar.push((n.to_owned(), v.to_owned()));
            }
        }
        let body = within(res.into_body().collect()).await.unwrap().to_bytes();
        Page {
            status,
            location,
            set_cookies,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// What the passkey script does: JSON with the CSRF token in a header.
    pub async fn json(&mut self, url: &str, csrf: &str, body: &str) -> (StatusCode, Value, Page) {
        let (authority, path) = split_url(url);
        let host = host_of(&authority);
        let jar = self.cookies.get(&host).cloned().unwrap_or_default();
        let line = jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let req = Request::post(&path)
            .header("host", &authority)
            .header("content-type", "application/json")
            .header("x-csrf-token", csrf)
            .header("cookie", line)
            .body(full(body.to_owned()))
            .unwrap();
        let res = send(self.addr, req).await;
        let status = res.status();
        for c in res.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (n, v) = c.split(';').next().unwrap().split_once('=').unwrap();
            let jar = self.cookies.entry(host.clone()).or_default();
            jar.retain(|(name, _)| name != n);
            if !c.contains("Max-Age=0") {
                jar.push((n.to_owned(), v.to_owned()));
            }
        }
        let bytes = within(res.into_body().collect()).await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let page = Page {
            status,
            location: None,
            set_cookies: vec![],
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        (status, v, page)
    }

    pub async fn get(&mut self, url: &str) -> Page {
        self.request("GET", url, None, &[]).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        self.request("POST", url, Some(form), &[]).await
    }

    /// Follow redirects from `url`, returning the last page.
    pub async fn visit(&mut self, url: &str) -> Page {
        let mut page = self.get(url).await;
        for _ in 0..10 {
            match &page.location {
                Some(l) if page.status.is_redirection() => {
                    let next = if l.starts_with('/') {
                        let (authority, _) = split_url(url);
                        format!("http://{authority}{l}")
                    } else {
                        l.clone()
                    };
                    page = self.get(&next).await;
                }
                _ => break,
            }
        }
        page
    }
}

pub fn form_urlencoded_serialize(f: &[(&str, &str)]) -> String {
    f.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An argon2id hash of `password` at the lowest cost (tests only).
pub fn cheap_hash(password: &str) -> String {
    let mut c = hexon_core::config::PasswordHashConfig::default();
    c.memory_kib = 64;
    c.iterations = 1;
    hexon_idp::password::hash_now(&hexon_idp::password::argon2(&c).unwrap(), password).unwrap()
}
