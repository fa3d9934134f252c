//! The API key and HMAC authenticators, and the layer that holds an
//! body of a signed request (HMAC or RFC 9421) for the signature check.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hexon_core::UnixTime;
use hexon_core::policy::Credential;
use hexon_core::store::KvStore;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, Either, Full, Limited};
use sha2::{Digest as _, Sha256};
use tower_layer::Layer;
use tower_service::Service;

use super::hmac;
use super::{API_KEY_METHOD, ClientEntry, ClientRegistry, HMAC_METHOD, Rejection};
use crate::authn::{Authenticator, AuthnFuture, AuthnResult};
use crate::body::{BoxBody, BoxError};
use crate::ext::{ClientSignature, RequestId};
use crate::respond;

/// Largest body of a signed request (it is held in memory to be
/// signed over).
pub const SIGNED_BODY_MAX: usize = 1024 * 1024;

pub(crate) fn identity(entry: &ClientEntry, method: &str, now: UnixTime) -> AuthnResult {
    match entry
        .identity()
        .to_builder()
        .auth(method, now)
        .and_then(|b| b.build())
    {
        Ok(i) => AuthnResult::Authenticated(i),
        Err(e) => AuthnResult::invalid(format!("API client identity: {e}")),
    }
}

/// Extra seconds a spent nonce is kept beyond twice the time window.
const NONCE_MARGIN_SECS: u64 = 60;

/// Spend a signed request's nonce (put-if-absent for twice the time
/// window; `scope` names the signer and the nonce) and answer with the
/// client's identity, or a replay. Only called once the signature verified,
/// so nobody can burn a client's nonces with forged requests.
pub(crate) async fn spend_nonce(
    nonces: &dyn KvStore,
    scope: &str,
    entry: &ClientEntry,
    method: &str,
    now: UnixTime,
) -> AuthnResult {
    let key = hexon_core::hex::encode(&Sha256::digest(scope.as_bytes()));
    // Kept past the last instant the same `created` can still be accepted
    // (first use at the window's start + the whole window), with a margin
    // for clock differences between nodes.
    let ttl = Duration::from_secs(2 * hmac::WINDOW_SECS.unsigned_abs() + NONCE_MARGIN_SECS);
    match nonces.put_if_absent(&key, b"1", ttl).await {
        Ok(Some(_)) => identity(entry, method, now),
        Ok(None) => AuthnResult::invalid("replayed signature nonce"),
        Err(e) => AuthnResult::Unavailable(format!("nonce store: {e}").into()),
    }
}

fn rejected(r: Rejection) -> AuthnResult {
    AuthnResult::invalid(r.as_str())
}

/// `Authorization: Bearer hxk_…`, `Authorization: ApiKey hxk_…`, the key
/// alone in a configured header (`X-API-Key` by default), and — when a
/// parameter name is set — the query parameter (`?api_key=hxk_…`). Bearer
/// values that are not API keys are left to the JWT authenticator.
///
/// A key in the query records [`Credential::ApiKeyQuery`], which routes
/// accept only when they list it: URLs end up in browser histories, proxy
/// logs and `Referer` headers. The gateway removes the parameter before
/// forwarding ([`crate::gateway`]'s credential scrubbing).
#[derive(Clone, Debug)]
pub struct ApiKeyAuth {
    registry: ClientRegistry,
    header: Option<HeaderName>,
    query: Option<Box<str>>,
}

/// Where a key was found.
enum Found<'a> {
    Header(&'a str),
    Query(std::borrow::Cow<'a, str>),
}

impl ApiKeyAuth {
    /// Check keys against `registry`; also read them from `X-API-Key`.
    pub fn new(registry: ClientRegistry) -> Self {
        ApiKeyAuth {
            registry,
            header: Some(HeaderName::from_static("x-api-key")),
            query: None,
        }
    }

    /// Read keys from `header` instead of `X-API-Key` (`None`: only from
    /// `Authorization`).
    #[must_use]
    pub fn with_header(mut self, header: Option<HeaderName>) -> Self {
        self.header = header;
        self
    }

    /// Also read keys from the query parameter `name` (`None`: never).
    #[must_use]
    pub fn with_query_param(mut self, name: Option<&str>) -> Self {
        self.query = name.map(Box::from);
        self
    }

    /// The key on the request: `Some(Err)` when more than one place holds
    /// one, or a value is malformed.
    fn key<'a>(&self, parts: &'a Parts) -> Option<Result<Found<'a>, &'static str>> {
        const TWO: &str = "more than one API key on the request";
        let mut found = None;
        for v in parts.headers.get_all(AUTHORIZATION) {
            // Most requests carry a bearer JWT here: look at the scheme and
            // the key tag on the bytes before checking the whole value.
            let raw = v.as_bytes();
            let space = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
            let (scheme, rest) = raw.split_at(space);
            // Schemes are case-insensitive (RFC 9110 §11.1).
            let ours = scheme.eq_ignore_ascii_case(b"apikey")
                || (scheme.eq_ignore_ascii_case(b"bearer")
                    && rest.trim_ascii().starts_with(super::KEY_TAG.as_bytes()));
            if !ours {
                continue;
            }
            // A value that is not visible ASCII holds no key.
            let Ok(v) = v.to_str() else { continue };
            let key = v.get(space..).unwrap_or_default().trim();
            if found.replace(key).is_some() {
                return Some(Err(TWO));
            }
        }
        if let Some(h) = &self.header {
            for v in parts.headers.get_all(h) {
                let k = v.to_str().map_err(|_| "API key header is not ASCII");
                match (k, found.is_some()) {
                    (Ok(k), false) => found = Some(k.trim()),
                    (Ok(_), true) => return Some(Err(TWO)),
                    (Err(e), _) => return Some(Err(e)),
                }
            }
        }
        let mut found = found.map(Found::Header);
        if let (Some(name), Some(query)) = (&self.query, parts.uri.query()) {
            for value in query_values(query, name) {
                if found.is_some() {
                    return Some(Err(TWO));
                }
                found = Some(Found::Query(value));
            }
        }
        found.map(Ok)
    }
}

/// The percent-decoded values of the query parameter `name` (names are
/// compared as written: `api_key`, not `api%5Fkey`).
fn query_values<'q, 'n>(
    query: &'q str,
    name: &'n str,
) -> impl Iterator<Item = std::borrow::Cow<'q, str>> + use<'q, 'n> {
    query.split('&').filter_map(move |pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .unwrap_or(std::borrow::Cow::Borrowed("\u{fffd}"))
        })
    })
}

impl Authenticator for ApiKeyAuth {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        let result = match self.key(parts) {
            None => AuthnResult::NoCredential,
            Some(Err(why)) => AuthnResult::invalid(why),
            Some(Ok(found)) => {
                let key = match &found {
                    Found::Header(k) => k,
                    Found::Query(k) => &**k,
                };
                match self.registry.load().check_api_key(key, now) {
                    Ok(entry) => identity(entry, API_KEY_METHOD, now),
                    Err(r) => rejected(r),
                }
            }
        };
        AuthnFuture::ready(result)
    }

    fn name(&self) -> &str {
        "api_key"
    }

    fn credential(&self, parts: &Parts) -> Credential {
        match self.key(parts) {
            Some(Ok(Found::Query(_))) => Credential::ApiKeyQuery,
            _ => Credential::ApiKey,
        }
    }
}

/// The body a signed request carried, held by [`SignedBodyLayer`] for
/// [`HmacAuth`] (a request extension).
#[derive(Clone, Debug, Default)]
pub struct SignedBody(pub Bytes);

/// `Authorization: HMAC …` (see [`super::hmac`]). Needs [`SignedBodyLayer`]
/// outside the authenticate layer: without the body it refuses the request.
#[derive(Clone, Debug)]
pub struct HmacAuth {
    registry: ClientRegistry,
    nonces: Arc<dyn KvStore>,
}

impl HmacAuth {
    /// Verify against `registry`; remember nonces in `nonces` (a KV bucket
    /// whose entries live at least [`hmac::WINDOW_SECS`] × 2).
    pub fn new(registry: ClientRegistry, nonces: Arc<dyn KvStore>) -> Self {
        HmacAuth { registry, nonces }
    }
}

/// Whether the request is signed over its body: `Authorization: HMAC …`,
/// or an RFC 9421 signature (moved aside by the strip layer).
fn is_signed(parts: &Parts) -> bool {
    parts.extensions.get::<ClientSignature>().is_some()
        || parts
            .headers
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"HMAC "))
}

impl Authenticator for HmacAuth {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        let mut values = parts.headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next().filter(|v| v.as_bytes().starts_with(b"HMAC ")) else {
            return AuthnFuture::ready(AuthnResult::NoCredential);
        };
        AuthnFuture::new(async move {
            if values.next().is_some() {
                return AuthnResult::invalid("more than one Authorization header");
            }
            let Ok(value) = value.to_str() else {
                return AuthnResult::invalid("HMAC authorization is not ASCII");
            };
            let params = match hmac::parse(value) {
                Ok(p) => p,
                Err(e) => return AuthnResult::invalid(e.to_string()),
            };
            if let Err(e) = params.check_time(now.as_secs()) {
                return AuthnResult::invalid(e.to_string());
            }
            let Some(body) = parts.extensions.get::<SignedBody>() else {
                return AuthnResult::invalid("HMAC-signed request without its body");
            };
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let message = params.message(parts.method.as_str(), target, &body.0);
            let table = self.registry.load();
            let entry = match table.check_hmac(params.client_id, &message, &params.signature, now) {
                Ok(e) => e.clone(),
                Err(r) => return rejected(r),
            };
            drop(table);
            // Only now, with a valid signature, is the nonce spent.
            let scope = format!("{}\0{}", params.client_id, params.nonce);
            spend_nonce(&*self.nonces, &scope, &entry, HMAC_METHOD, now).await
        })
    }

    fn name(&self) -> &str {
        "hmac"
    }

    fn credential(&self, _: &Parts) -> Credential {
        Credential::Hmac
    }
}

/// Holds the body of signed requests (`Authorization: HMAC …`, or an RFC
/// 9421 [`ClientSignature`]; at most
/// [`SIGNED_BODY_MAX`] bytes; larger is a 413) as an [`SignedBody`] extension,
/// and passes the same bytes on. Other requests stream through untouched.
#[derive(Clone, Copy, Debug, Default)]
pub struct SignedBodyLayer;

impl<S> Layer<S> for SignedBodyLayer {
    type Service = SignedBodyService<S>;
    fn layer(&self, inner: S) -> SignedBodyService<S> {
        SignedBodyService { inner }
    }
}

/// See [`SignedBodyLayer`].
#[derive(Clone, Debug)]
pub struct SignedBodyService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for SignedBodyService<S>
where
    S: Service<Request<Either<B, Full<Bytes>>>, Response = Response<BoxBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = crate::body::PassOrOwn<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        if !is_signed(&parts) {
            let fut = self
                .inner
                .call(Request::from_parts(parts, Either::Left(body)));
            return crate::body::pass(fut);
        }
        // The service that was made ready serves this request; a clone takes
        // its place for the next one.
        let mut inner = crate::body::take_ready(&mut self.inner);
        crate::body::own(async move {
            match Limited::new(body, SIGNED_BODY_MAX).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    parts.extensions.insert(SignedBody(bytes.clone()));
                    let req = Request::from_parts(parts, Either::Right(Full::new(bytes)));
                    inner.call(req).await
                }
                Err(e) => {
                    let too_large = e.is::<http_body_util::LengthLimitError>();
                    let id = parts.extensions.get::<RequestId>();
                    let flavor = respond::Flavor::of(&parts.headers);
                    let status = if too_large {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    Ok(respond::error(status, id, flavor))
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hexon_core::store::{MemoryStore, SecretKeys};

    fn auth() -> ApiKeyAuth {
        let store = Arc::new(MemoryStore::new(Arc::new(SecretKeys::new([7; 32]))));
        let registry = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ClientRegistry::open(store))
            .unwrap();
        ApiKeyAuth::new(registry)
    }

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut b = Request::builder().uri("/x");
        for (n, v) in headers {
            b = b.header(*n, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    fn found(a: &ApiKeyAuth, headers: &[(&str, &[u8])]) -> Option<Result<String, &'static str>> {
        let p = parts(headers);
        a.key(&p).map(|r| {
            r.map(|f| match f {
                Found::Header(k) => k.to_owned(),
                Found::Query(k) => k.into_owned(),
            })
        })
    }

    #[test]
    fn keys_are_found_under_either_scheme_in_any_case_and_jwts_are_left_alone() {
        let a = auth();
        let key = "hxk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAA";
        for value in [
            format!("ApiKey {key}"),
            format!("apikey  {key} "),
            format!("Bearer {key}"),
            format!("BEARER  {key}"),
        ] {
            assert_eq!(
                found(&a, &[("authorization", value.as_bytes())]),
                Some(Ok(key.to_owned())),
                "{value}"
            );
        }
        // A bearer JWT, another scheme, or a bearer without the key tag is
        // not an API key.
        for value in [
            &b"Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln"[..],
            b"Basic dXNlcjpwYXNz",
            b"Bearer",
            b"ApiKeyhxk_x",
        ] {
            assert_eq!(found(&a, &[("authorization", value)]), None);
        }
        // A key value that is not visible ASCII is not read.
        assert_eq!(found(&a, &[("authorization", b"ApiKey hxk_\xff")]), None);
        // Two keys, in any two places, are refused.
        assert_eq!(
            found(
                &a,
                &[
                    ("authorization", format!("ApiKey {key}").as_bytes()),
                    ("authorization", format!("Bearer {key}").as_bytes()),
                ]
            ),
            Some(Err("more than one API key on the request"))
        );
        assert_eq!(
            found(
                &a,
                &[
                    ("authorization", format!("Bearer {key}").as_bytes()),
                    ("x-api-key", key.as_bytes()),
                ]
            ),
            Some(Err("more than one API key on the request"))
        );
    }
}
