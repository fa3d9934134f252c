//! What the end-to-end tests share: real upstream servers, the gateway
//! built from `hexon.toml` as `hexon serve` builds it, an HTTP/1 client.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hexon_core::config::Config;
use hexon_core::keys::KeySet;
use hexon_proxy::body::{BoxBody, full};
use hexon_proxy::gateway::{Gateway, Running, mint_token};
use hexon_proxy::test_util::{self, Handler, handler};
use http::{Request, Response};
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
