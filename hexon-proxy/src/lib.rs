//! # hexon-proxy
//!
//! Hexon's HTTP data plane, as tower layers usable one by one in any
//! tower/axum/hyper service, plus the reverse proxy and TLS listeners the
//! `hexon` gateway assembles from them:
//!
//! - [`strip`] — remove every client-sent identity header (spoofing is impossible);
//! - [`request_id`] — `X-Request-Id`, generated or passed through from trusted sources;
//! - [`authn`] — pluggable authenticators producing an [`Identity`](hexon_core::Identity):
//!   bearer JWT, session cookie, mTLS client certificate;
//! - [`authz`] — the `hexon-core` policy decides: allow, login redirect, step-up, 401, 403;
//! - [`sign`] — RFC 9421 signed identity headers or JWT injection, per route;
//! - [`proxy`] — the reverse proxy: hyper client, pooling, HTTP/1.1 + HTTP/2,
//!   WebSocket, gRPC trailers, streaming, timeouts, forwarding headers, balancing;
//! - [`express`] — the express lane: the common request (known bearer token,
//!   allowed, signature cached, `http://` upstream) served from the bytes read,
//!   without the tower stack; everything else declines to the stack;
//! - [`listener`], [`tls`], [`proxy_protocol`] — accepting connections: rustls with SNI
//!   and reload, client certificates, PROXY protocol v1/v2.
//!
//! Layers communicate through request extensions defined in [`ext`]; error
//! responses are built in one place, [`respond`].
#![forbid(unsafe_code)]

pub mod authn;
pub mod authz;
pub mod body;
pub mod clients;
pub mod express;
pub mod ext;
pub mod forward_auth;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod listener;
pub mod proxy;
pub mod proxy_protocol;
pub mod request_id;
pub mod respond;
pub mod sign;
pub mod strip;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;
