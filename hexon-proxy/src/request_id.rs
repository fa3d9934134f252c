//! `X-Request-Id`: one id per request, in logs, upstream requests and responses.
//!
//! [`RequestIdLayer`] keeps a client's `X-Request-Id` only when the request
//! comes from a **trusted source** (a CIDR list or predicate over
//! [`ConnectionInfo`]; a request without `ConnectionInfo` is untrusted) and
//! the id is **well-formed** (1-128 visible ASCII characters, no comma — so
//! it is one header value and safe in logs). Otherwise it generates one:
//! 128 random bits as 32 lower-case hex digits.
//!
//! The id is put into the request extensions ([`RequestId`]), set on the
//! request (for the upstream) and on the response.
//!
//! The CIDR list is matched against [`ConnectionInfo::peer`], the client
//! address after PROXY protocol. When an L7 load balancer that sets
//! `X-Request-Id` also speaks PROXY protocol, trust its address with
//! [`RequestIdLayer::trust_if`] over [`ConnectionInfo::tcp_peer`] instead.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use crate::ext::{ConnectionInfo, RequestId};

/// `X-Request-Id`.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Longest request id accepted from a trusted source.
pub const MAX_REQUEST_ID_LEN: usize = 128;

type TrustFn = Arc<dyn Fn(&ConnectionInfo) -> bool + Send + Sync>;

/// Adds a [`RequestId`] to every request. See the [module docs](self).
#[derive(Clone, Default)]
pub struct RequestIdLayer {
    trusted: Arc<[IpNet]>,
    trust_fn: Option<TrustFn>,
}

impl fmt::Debug for RequestIdLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestIdLayer")
            .field("trusted", &self.trusted)
            .field("trust_fn", &self.trust_fn.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl RequestIdLayer {
    /// Trust nobody: every request gets a fresh id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keep ids from clients whose address ([`ConnectionInfo::peer`]) is in one of `nets`.
    pub fn trust_cidrs(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut v = self.trusted.to_vec();
        v.extend(nets);
        self.trusted = v.into();
        self
    }

    /// Keep ids from connections for which `f` returns true (in addition to the CIDRs).
    pub fn trust_if(mut self, f: impl Fn(&ConnectionInfo) -> bool + Send + Sync + 'static) -> Self {
        self.trust_fn = Some(Arc::new(f));
        self
    }

    fn is_trusted(&self, conn: Option<&ConnectionInfo>) -> bool {
        let Some(conn) = conn else {
            return false;
        };
        let ip = canonical(conn.peer.ip());
        self.trusted.iter().any(|n| n.contains(&ip))
            || self.trust_fn.as_ref().is_some_and(|f| f(conn))
    }

    /// The id for a request: the client's when trusted and well-formed, else a new one.
    pub fn request_id<B>(&self, req: &Request<B>) -> RequestId {
        if self.is_trusted(req.extensions().get::<ConnectionInfo>()) {
            let mut values = req.headers().get_all(X_REQUEST_ID).iter();
            if let (Some(v), None) = (values.next(), values.next()) {
                if is_well_formed(v.as_bytes()) {
                    if let Ok(s) = v.to_str() {
                        return RequestId(Arc::from(s));
                    }
                }
            }
        }
        generate()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as IPv4, so v4 CIDRs match dual-stack sockets.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `id` may be passed through: 1-128 bytes of visible ASCII (`!`..`~`) without `,`.
pub fn is_well_formed(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| (0x21..=0x7e).contains(b) && *b != b',')
}

/// A new request id: 128 bits as 32 lower-case hex digits.
///
/// Ids must be unique and should not reveal how many requests the gateway
/// served; they are not secrets. So instead of a `getrandom` system call per
/// request (measurable under load), each id hashes a process-wide counter
/// with std's randomly keyed hasher (`RandomState`: SipHash under a key drawn
/// from the OS once): the counter is hashed once, and the hasher's state
/// is finished twice, before and after one more byte, for 128 bits.
pub fn generate() -> RequestId {
    use std::hash::{BuildHasher as _, Hasher as _};
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(std::hash::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = keys.build_hasher();
    h.write_u64(n);
    let hi = h.finish();
    h.write_u8(1);
    let lo = h.finish();
    let raw = ((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes();
    // Written on the stack and copied once into the `Arc`.
    let mut text = [0u8; 32];
    for (pair, b) in text.chunks_exact_mut(2).zip(raw) {
        pair.copy_from_slice(&hexon_core::hex::digits(b));
    }
    RequestId(Arc::from(std::str::from_utf8(&text).unwrap_or_default()))
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`RequestIdLayer`].
#[derive(Clone)]
pub struct SetRequestId<S> {
    inner: S,
    layer: RequestIdLayer,
}

impl<S: fmt::Debug> fmt::Debug for SetRequestId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetRequestId")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S> SetRequestId<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwrap.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = self.layer.request_id(&req);
        // Well-formed ids and generated hex are always valid header values.
        let value = HeaderValue::from_str(id.as_str()).ok();
        match &value {
            Some(v) => {
                req.headers_mut().insert(X_REQUEST_ID, v.clone());
            }
            None => {
                req.headers_mut().remove(X_REQUEST_ID);
            }
        }
        req.extensions_mut().insert(id);
        ResponseFuture {
            inner: self.inner.call(req),
            value,
        }
    }
}

pin_project_lite::pin_project! {
    /// Future of [`SetRequestId`]: sets `X-Request-Id` on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(v) = this.value.take() {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed() {
        assert!(is_well_formed(b"abc-123_./:"));
        assert!(is_well_formed(&[b'a'; 128]));
        assert!(!is_well_formed(&[b'a'; 129]));
        assert!(!is_well_formed(b""));
        assert!(!is_well_formed(b"a b"));
        assert!(!is_well_formed(b"a,b"));
        assert!(!is_well_formed(b"a\tb"));
        assert!(!is_well_formed("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_ne!(a, b);
    }
}
