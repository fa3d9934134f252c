//! What the benchmark reference proxies share; not an example itself.

use std::future::Future;
use std::net::SocketAddr;

/// Worker threads: `TOKIO_WORKER_THREADS`, default 2 (as for `hexon serve`).
pub(crate) fn workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// Run `serve` on `workers` threads, each a current-thread tokio runtime
/// with its own `SO_REUSEPORT` listener on `listen` (no cross-thread
/// wake-ups); returns the first failure.
pub(crate) fn per_core<F, Fut>(listen: SocketAddr, workers: usize, serve: F) -> Result<(), String>
where
    F: Fn(tokio::net::TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>>,
{
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let serve = serve.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
                    socket.set_reuseport(true).map_err(|e| e.to_string())?;
                    socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
                    socket.bind(listen).map_err(|e| e.to_string())?;
                    serve(socket.listen(1024).map_err(|e| e.to_string())?).await
                })
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "worker panicked".to_owned())??;
    }
    Ok(())
}
