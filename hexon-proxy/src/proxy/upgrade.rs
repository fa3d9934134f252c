//! HTTP/1.1 WebSocket upgrades: detect, forward, splice on `101`.
//!
//! Only `Upgrade: websocket` is forwarded; any other upgrade token (`h2c`,
//! `TLS/1.0`, …) is stripped as hop-by-hop and the request goes on as an
//! ordinary request. Once both sides switched protocols the two upgraded
//! connections are spliced with `copy_bidirectional`; the tunnel has no
//! timeout of its own (the listener's connection limits still apply).
//! The listener must serve connections with upgrades enabled
//! (`serve_connection_with_upgrades` / `.with_upgrades()`).

use http::header::UPGRADE;
use http::{HeaderMap, HeaderValue, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::error::Chain;
use super::forward::connection_tokens;
use super::limit::LogContext;

/// The `Upgrade` value when the request is an HTTP/1.1 WebSocket upgrade.
pub(crate) fn websocket(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    if !connection_tokens(headers).iter().any(|t| t == "upgrade") {
        return None;
    }
    let value = headers.get(UPGRADE)?;
    let is_ws = value
        .to_str()
        .ok()?
        .split(',')
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
    is_ws.then(|| value.clone())
}

/// Splice the client's and the upstream's upgraded connections, in the
/// background.
pub(crate) fn splice(client: OnUpgrade, upstream: OnUpgrade, ctx: LogContext) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(
                    request_id = %ctx.request_id,
                    route = %ctx.route,
                    upstream = %ctx.upstream.url(),
                    error = %Chain(&e),
                    "upgrade failed"
                );
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(
                request_id = %ctx.request_id,
                route = %ctx.route,
                upstream = %ctx.upstream.url(),
                bytes_up = up,
                bytes_down = down,
                "upgraded connection closed"
            ),
            Err(e) => tracing::debug!(
                request_id = %ctx.request_id,
                route = %ctx.route,
                upstream = %ctx.upstream.url(),
                error = %e,
                "upgraded connection ended with an error"
            ),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_websocket_over_http11() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(websocket(Version::HTTP_11, &h).is_some());
        assert!(websocket(Version::HTTP_2, &h).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(websocket(Version::HTTP_11, &h).is_none());
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.remove("connection");
        assert!(websocket(Version::HTTP_11, &h).is_none());
    }
}
