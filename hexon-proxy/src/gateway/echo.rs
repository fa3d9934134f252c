//! A tiny backend for the quickstart and for tests: it verifies Hexon's
//! signed identity exactly as a real backend would (the `hexon-core`
//! verification layer) and answers with what it verified, as JSON.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hexon_core::httpsig::{VerifiedIdentity, Verifier};
use hexon_core::verify::VerifyIdentityLayer;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// Serve the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, verifier: Arc<Verifier>) {
    let verified = ServiceBuilder::new()
        .layer(VerifyIdentityLayer::from_shared(verifier))
        .service_fn(|req: Request<_>| async move { Ok::<_, Infallible>(answer(&req)) });
    // Requests without any signature (public routes) are answered as
    // anonymous; anything that carries one must verify.
    let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut verified = verified.clone();
        async move {
            if req.headers().contains_key("signature-input")
                || req.headers().contains_key("signature")
            {
                tower_service::Service::call(&mut verified, req).await
            } else {
                Ok(anonymous(&req))
            }
        }
    });
    super::serve_plain(listener, service).await;
}

fn anonymous<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "message": "hello anonymous: this request carries no identity (a public route)",
        "method": req.method().as_str(),
        "path": req.uri().path(),
    });
    json(&body)
}

fn answer<B>(req: &Request<B>) -> Response<Full<Bytes>> {
    let Some(v) = req.extensions().get::<VerifiedIdentity>() else {
        let mut res = Response::new(Full::new(Bytes::from_static(b"unverified\n")));
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    };
    let id = &v.identity;
    let body = serde_json::json!({
        "message": format!("hello {}, your identity was verified by this backend", id.username()),
        "user": id.username(),
        "subject": id.subject(),
        "kind": id.kind().as_str(),
        "email": id.email(),
        "groups": id.groups().iter().map(|g| &**g).collect::<Vec<_>>(),
        "auth": id.auth().iter().map(|a| serde_json::json!({"method": a.method.as_str(), "at": a.at.as_secs()})).collect::<Vec<_>>(),
        "session": id.session(),
        "route": &*v.route,
        "key_id": &*v.key_id,
        "request_bound": v.request_bound,
        "method": req.method().as_str(),
        "path": req.uri().path(),
    });
    json(&body)
}

fn json(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}
