//! Responses the gateway makes itself: errors and redirects.
//!
//! Clients get a status, a short generic message and the request id — never
//! internal detail (which upstream failed, which rule denied): that goes to
//! the logs under the same request id. Browsers (`Accept: text/html`) get a
//! small page, gRPC clients (`Content-Type: application/grpc…`) a
//! trailers-only gRPC status, everything else JSON.

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{BoxBody, empty, full};
use crate::ext::RequestId;

/// The shape of the gateway's own answers for one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// A JSON object (API clients; the default).
    Json,
    /// A small HTML page (a browser navigation: `Accept: text/html`).
    Html,
    /// A gRPC "trailers-only" response: HTTP 200 with `grpc-status` and
    /// `grpc-message` in the headers and no body, which every gRPC client
    /// reads as a call status. A plain 401 with a JSON body would surface in
    /// the client as a protocol error instead of `UNAUTHENTICATED`.
    Grpc,
}

impl Flavor {
    /// Choose from the request headers: gRPC by its content type (also
    /// `application/grpc+proto`, `application/grpc-web…`), HTML when the
    /// client accepts it, JSON otherwise.
    pub fn of(headers: &HeaderMap) -> Flavor {
        Flavor::from_values(
            headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
            headers.get_all(ACCEPT).iter().map(HeaderValue::as_bytes),
        )
    }

    /// [`of`](Self::of) from the first `Content-Type` value and every
    /// `Accept` value.
    pub fn from_values<'a>(
        content_type: Option<&[u8]>,
        mut accept: impl Iterator<Item = &'a [u8]>,
    ) -> Flavor {
        // `application/grpc`, then nothing or `+codec`, `;params`, `-web…`.
        let grpc = content_type.is_some_and(|v| {
            v.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
                && matches!(v.get(16), None | Some(b'+' | b';' | b'-'))
        });
        // A value that is text (as `HeaderValue::to_str` reads it) asking
        // for HTML.
        let html = |v: &[u8]| {
            v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
                && v.windows(9).any(|w| w == b"text/html")
        };
        if grpc {
            Flavor::Grpc
        } else if accept.any(html) {
            Flavor::Html
        } else {
            Flavor::Json
        }
    }
}

/// The gRPC status code for one of the gateway's HTTP statuses, as the gRPC
/// specification maps them ("HTTP to gRPC Status Code Mapping"), plus
/// `RESOURCE_EXHAUSTED` for the size limits.
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        413 | 431 => 8,              // RESOURCE_EXHAUSTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// A generic error response for `status`, carrying the request id.
pub fn error(
    status: StatusCode,
    request_id: Option<&RequestId>,
    flavor: Flavor,
) -> Response<BoxBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    if flavor == Flavor::Grpc {
        return grpc_error(status, reason, request_id);
    }
    let id = request_id.map(RequestId::as_str).unwrap_or("-");
    let (content_type, body) = if flavor == Flavor::Html {
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
    not_cached_with_id(h, request_id);
    res
}

/// Trailers-only gRPC answer: the HTTP status stays in `x-hexon-status`
/// for people reading a capture; the call status is in `grpc-status`.
fn grpc_error(
    status: StatusCode,
    reason: &str,
    request_id: Option<&RequestId>,
) -> Response<BoxBody> {
    let mut res = Response::new(empty());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_status(status))),
    );
    // Canonical reasons are printable ASCII without '%', so they need no
    // percent-encoding (gRPC's grpc-message rule).
    if let Ok(v) = HeaderValue::from_str(reason) {
        h.insert("grpc-message", v);
    }
    h.insert("x-hexon-status", HeaderValue::from(status.as_u16()));
    not_cached_with_id(h, request_id);
    res
}

/// `302 Found` to `location` (already validated by the caller).
pub fn redirect(location: &str, request_id: Option<&RequestId>) -> Response<BoxBody> {
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(LOCATION, v);
    }
    not_cached_with_id(res.headers_mut(), request_id);
    res
}

/// Every answer the gateway makes itself: never cached, and carrying the
/// request id to quote to an operator.
fn not_cached_with_id(h: &mut HeaderMap, request_id: Option<&RequestId>) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = request_id.and_then(|r| HeaderValue::from_str(r.as_str()).ok()) {
        h.insert(crate::request_id::X_REQUEST_ID, v);
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn flavor_follows_content_type_then_accept() {
        assert_eq!(Flavor::of(&headers(&[])), Flavor::Json);
        assert_eq!(
            Flavor::of(&headers(&[("accept", "text/html,*/*")])),
            Flavor::Html
        );
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; charset=utf-8",
            "Application/GRPC-web+proto",
        ] {
            let h = headers(&[("content-type", ct), ("accept", "text/html")]);
            assert_eq!(Flavor::of(&h), Flavor::Grpc, "{ct}");
        }
        // Neither a prefix of the gRPC type nor a lookalike is gRPC.
        for ct in [
            "application/grp",
            "application/grpcx",
            "application/json",
            "text/grpc",
        ] {
            assert_eq!(
                Flavor::of(&headers(&[("content-type", ct)])),
                Flavor::Json,
                "{ct}"
            );
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only_statuses() {
        let id = crate::request_id::generate();
        let res = error(StatusCode::FORBIDDEN, Some(&id), Flavor::Grpc);
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "7");
        assert_eq!(h["grpc-message"], "Forbidden");
        assert_eq!(h["x-hexon-status"], "403");
        assert_eq!(h["x-request-id"], id.as_str());
        assert_eq!(http_body::Body::size_hint(res.body()).exact(), Some(0));
        for (status, code) in [
            (401, 16),
            (404, 12),
            (413, 8),
            (502, 14),
            (504, 14),
            (500, 2),
        ] {
            assert_eq!(
                grpc_status(StatusCode::from_u16(status).unwrap()),
                code,
                "{status}"
            );
        }
    }
}
