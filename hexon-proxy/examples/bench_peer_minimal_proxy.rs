//! A benchmark reference point, not a usage example: the smallest reverse
//! proxy hyper 1 allows — hyper-util's `auto` server and pooled client,
//! nothing else (no authentication, policy, signing, forwarding headers,
//! timeouts or limits). `scripts/bench-proxy` runs it beside nginx and hexon,
//! so the report separates what hexon's pipeline costs from what the
//! hyper/tokio foundation costs on the same machine.
//!
//! ```sh
//! cargo run --release -p hexon-proxy --example bench_peer_minimal_proxy -- 127.0.0.1:18085 http://127.0.0.1:18081
//! ```
//!
//! Worker threads follow `TOKIO_WORKER_THREADS`, like `hexon serve`.

use std::error::Error;
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

mod bench_support;

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_peer_minimal_proxy LISTEN_ADDR UPSTREAM_URL";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: Uri = args.next().ok_or(usage)?.parse()?;
    let authority = upstream
        .authority()
        .ok_or("upstream URL needs a host")?
        .clone();
    if std::env::var("PER_CORE").is_ok_and(|v| v == "1") {
        // One current-thread runtime per worker, each with its own
        // SO_REUSEPORT listener and upstream pool: no cross-thread wake-ups.
        let workers = bench_support::workers();
        bench_support::per_core(listen, workers, move |listener| {
            let authority = authority.clone();
            async move { serve(listener, authority).await.map_err(|e| e.to_string()) }
        })?;
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            serve(listener, authority).await
        })
}

async fn serve(
    listener: tokio::net::TcpListener,
    upstream: http::uri::Authority,
) -> Result<(), Box<dyn Error>> {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(upstream.clone());
                parts.path_and_query = req.uri().path_and_query().cloned();
                async move {
                    let res: Response<Body> = match Uri::from_parts(parts) {
                        Ok(uri) => {
                            *req.uri_mut() = uri;
                            match client.request(req).await {
                                Ok(r) => r.map(BodyExt::boxed_unsync),
                                Err(_) => status(StatusCode::BAD_GATEWAY),
                            }
                        }
                        Err(_) => status(StatusCode::BAD_REQUEST),
                    };
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
            // A failed connection is the client's business here.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = code;
    res
}
