//! placeholder: filled in by its owner.

/// `X-Request-Id`.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
