//! Responses the gateway makes itself: errors and redirects.
//!
//! Clients get a status, a short generic message and the request id — never
//! internal detail (which upstream failed, which rule denied): that goes to
//! the logs under the same request id. Browsers (`Accept: text/html`) get a
//! small page, everything else JSON.

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{BoxBody, empty, full};
use crate::ext::RequestId;

/// Whether the client prefers HTML (a browser navigation).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// A generic error response for `status`, carrying the request id.
pub fn error(status: StatusCode, request_id: Option<&RequestId>, html: bool) -> Response<BoxBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let id = request_id.map(RequestId::as_str).unwrap_or("-");
    let (content_type, body) = if html {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\
                 <body><main><h1>{code} {reason}</h1><p>Request id: <code>{id}</code></p></main></body></html>\n",
                code = status.as_u16(),
                reason = html_escape(reason),
                id = html_escape(id),
            ),
        )
    } else {
        (
            "application/json",
            serde_json::json!({"error": reason, "status": status.as_u16(), "request_id": id})
                .to_string()
                + "\n",
        )
    };
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = request_id.and_then(|r| HeaderValue::from_str(r.as_str()).ok()) {
        h.insert(crate::request_id::X_REQUEST_ID, v);
    }
    res
}

/// `302 Found` to `location` (already validated by the caller).
pub fn redirect(location: &str, request_id: Option<&RequestId>) -> Response<BoxBody> {
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(LOCATION, v);
    }
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = request_id.and_then(|r| HeaderValue::from_str(r.as_str()).ok()) {
        res.headers_mut().insert(crate::request_id::X_REQUEST_ID, v);
    }
    res
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
