//! The gateway's express lane ([`crate::express`]): which requests skip the
//! tower stack, and the upstream head written for them.
//!
//! A request takes the lane only when the stack (`assemble.rs`) would
//! forward it, and forward it exactly as the lane does. Each condition below
//! stands for the layer that would otherwise act:
//!
//! - `GET` or `HEAD` (the listener's reader already refused bodies,
//!   upgrades, `Expect` and `TE`); not a client certificate connection
//!   (the certificate authenticator and the policy's certificate SANs);
//!   a peer that is not a trusted proxy (trusted peers' `X-Request-Id` and
//!   forwarding fields are kept by the stack);
//! - no `Trailer` (rewritten by strip), no API key field or query
//!   parameter, no `Signature-Input` naming a Hexon credential (API client
//!   authentication), no `Connection` naming other fields;
//! - one `Host`, a valid authority (single authority, proxy); a path not
//!   under `/.well-known/` (JWKS, ACME http-01), not the forward-auth path,
//!   not the login service's and not on the CA's or ACME server's host;
//! - a credential the stack's first authenticator to find one would
//!   accept, known without waiting: one `Authorization: Bearer` with a
//!   token the bearer authenticator verified before and still accepts
//!   ([`BearerJwt::remembered`]), not an API client's identity (rate
//!   limits, grants); or, with no `Authorization`, the session cookie of a
//!   session the store can vouch for at once ([`SessionCookie::remembered`]:
//!   the in-process store, no idle mark due). Other cookies are forwarded
//!   as the stack forwards them, without the session cookie
//!   ([`kept_cookies`]);
//! - the policy allows, on a route whose identity mode is unbound signed
//!   headers with a signature the signer would reuse
//!   ([`HttpSigner::cached_headers`]), or no identity;
//! - the upstream picked is `http://`.
//!
//! Anything else declines and the stack serves the request, which usually
//! also makes the next request of the same client one the lane can take.
//! What the lane then does is what the stack's layers would have done:
//! strip client identity fields, drop the bearer credential, set the
//! request id, the signed identity, `Host` and the forwarding fields, and
//! record the metrics and the audit line.
//!
//! Known differences, none visible to the client or the upstream: the
//! stack's debug-level `authenticated` / `authorized` log lines are not
//! written for lane requests; the lane writes fields in the client's order
//! (the stack's header map groups them by name); and in a route mixing
//! `http://` with other upstreams, a pick of another kind declines after
//! the balancer moved on, so the stack's own pick is the next one.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::httpsig::HttpSigner;
use hexon_core::policy::{Credential, HttpRequest, NormalHost, Subject, Verdict};
use hexon_core::store::session::authority_host;
use http::uri::PathAndQuery;
use http::{Method, StatusCode};

use super::assemble::Handles;
use super::audit::{AuditSink, Line, clip};
use super::ca::CaRoutes;
use super::credentials::kept_cookies;
use super::login::Login;
use crate::authn::{BearerJwt, SessionCookie};
use crate::express::{Express, MAX_REMEMBERED_HOST, Plan, RequestHead, UpstreamHead};
use crate::ext::ConnectionInfo;
use crate::respond::Flavor;
use crate::sign::RouteIdentity;
use crate::strip::StripIdentityLayer;

/// The gateway's choice of express requests. See the [module docs](self).
pub(crate) struct GatewayExpress {
    pub(crate) handles: Handles,
    pub(crate) bearer: Arc<BearerJwt>,
    /// The stack's session authenticator (same store, same check).
    pub(crate) session: SessionCookie,
    pub(crate) signer: Arc<HttpSigner>,
    pub(crate) strip: StripIdentityLayer,
    /// The API key header (lower case).
    pub(crate) api_key_header: http::HeaderName,
    pub(crate) api_key_param: Option<String>,
    pub(crate) forward_auth_path: Option<String>,
    pub(crate) login: Option<Login>,
    pub(crate) ca: Option<CaRoutes>,
    /// Trusted proxies and request-id sources (one list in the config).
    pub(crate) trusted: Vec<ipnet::IpNet>,
    pub(crate) sink: AuditSink,
}

/// What the audit line and the metrics need of an express request.
pub(crate) struct Done {
    route: Arc<str>,
    reason: &'static str,
    /// Only when audit lines are written.
    logged: Option<Box<Logged>>,
}

struct Logged {
    request_id: Arc<str>,
    client: String,
    method: String,
    host: String,
    path: String,
    user: String,
    rule: Option<String>,
}

/// The credential a lane request carries.
#[derive(Clone, Copy)]
enum Cred<'h> {
    /// A bearer token's bytes.
    Bearer(&'h [u8]),
    /// The session cookie's value.
    Session(&'h str),
}

/// What [`Express::plan`] read of the head before the `Host`.
struct Read<'h> {
    cred: Cred<'h>,
    /// Whether the request has `Cookie` fields.
    cookies: bool,
    pq: PathAndQuery,
    content_type: Option<&'h [u8]>,
    peer: IpAddr,
}

/// What the lane reads of a `Host` value.
struct HostFacts {
    /// The value (visible ASCII).
    text: String,
    /// The single authority a signature covers
    /// ([`hexon_core::httpsig::host_authority`]).
    authority: String,
    /// The host without port ([`authority_host`]).
    bare: Option<String>,
    /// The host as the policy reads it.
    normal: NormalHost,
}

impl HostFacts {
    /// `None` for a value the stack would refuse or read otherwise: not a
    /// single authority, or not one the proxy's `Host` check accepts.
    fn read(host: &[u8]) -> Option<Self> {
        let authority = hexon_core::httpsig::host_authority(host)?.into_owned();
        http::uri::Authority::try_from(host).ok()?;
        let text = std::str::from_utf8(host).ok()?.to_owned();
        let bare = authority_host(&text).map(str::to_owned);
        // (A host the policy refuses is denied: the stack answers.)
        let normal = NormalHost::new(&text).ok()?;
        Some(HostFacts {
            text,
            authority,
            bare,
            normal,
        })
    }
}

thread_local! {
    /// The facts of the last `Host` value read on this thread: a
    /// connection's requests, and most of a thread's, name one host, and
    /// comparing the value costs a fraction of reading it again.
    static LAST_HOST: RefCell<Option<HostFacts>> = const { RefCell::new(None) };
}

/// `f` with the facts of `host`; `None` when the value is refused.
fn with_host<R>(host: &[u8], f: impl FnOnce(&HostFacts) -> Option<R>) -> Option<R> {
    if host.len() > MAX_REMEMBERED_HOST {
        return f(&HostFacts::read(host)?);
    }
    LAST_HOST.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|l| l.text.as_bytes() != host) {
            *last = Some(HostFacts::read(host)?);
        }
        f(last.as_ref()?)
    })
}

/// `name` is `lower` in any case.
fn is(name: &[u8], lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower.as_bytes())
}

/// The values of the request's `Cookie` fields, in order.
fn cookie_lines<'h>(head: &RequestHead<'h>) -> impl Iterator<Item = &'h [u8]> + 'h {
    head.fields()
        .filter(|(n, _)| is(n, "cookie"))
        .map(|(_, v)| v)
}

/// A `Connection` value with only `close` and `keep-alive` (which name no
/// other field).
fn names_no_fields(value: &[u8]) -> bool {
    value.split(|b| *b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive")
    })
}

impl GatewayExpress {
    /// The rest of [`Express::plan`], with what the `Host` value says.
    fn plan_for(
        &self,
        head: &RequestHead<'_>,
        conn: &ConnectionInfo,
        out: &mut Vec<u8>,
        facts: &HostFacts,
        read: Read<'_>,
    ) -> Option<Plan<Done>> {
        let Read {
            cred,
            cookies,
            pq,
            content_type,
            peer,
        } = read;
        let method = head.method();
        let path = pq.path();
        let (host, host_text) = (facts.text.as_bytes(), &*facts.text);
        let bare = facts.bare.as_deref();
        if self.login.as_ref().is_some_and(|l| l.claims(bare, path))
            || self
                .ca
                .as_ref()
                .is_some_and(|c| bare.is_none_or(|h| c.may_claim(h)))
        {
            return None;
        }

        let now = UnixTime::now();
        let (identity, credential) = match cred {
            Cred::Bearer(token) => (self.bearer.remembered(token, now)?, Credential::Jwt),
            Cred::Session(id) => (self.session.remembered(id, bare, now)?, Credential::Session),
        };
        if crate::clients::is_api_client_login(&identity) {
            return None;
        }
        let (policy, routes, sign) = self.handles.pin();
        let subject = Subject::new(Some(&identity), now)
            .with_source_ip(peer)
            .with_credential(credential);
        let decision = policy.decide(
            &HttpRequest::with_normal_host(method.as_str(), &facts.normal, path),
            &subject,
        );
        if decision.verdict != Verdict::Allow {
            return None;
        }
        let route_name = decision.route?;
        let cached = match sign.get(route_name)? {
            RouteIdentity::Headers { binding } if !binding.is_bound() => Some(
                self.signer
                    .cached_headers(&identity, route_name, &facts.authority, now)?,
            ),
            RouteIdentity::None => None,
            _ => return None,
        };
        let (route, group) = routes.get_named(route_name)?;
        let upstream = group.pick()?;
        let request_id = crate::request_id::generate();

        let mut w = UpstreamHead::start(out, method, upstream.base_path(), &pq);
        for (name, value) in head.fields() {
            let dropped = UpstreamHead::replaces(name)
                || is(name, "authorization")
                || is(name, "cookie")
                || is(name, "x-request-id")
                || self.strip.strips(name);
            if !dropped && !w.copy(name, value) {
                return None;
            }
        }
        if cookies {
            let lines = cookie_lines(head);
            if !w.add_with(b"cookie", |out| {
                kept_cookies(lines, self.session.cookie_name(), out);
            }) {
                return None;
            }
        }
        if let Some(c) = &cached {
            w.add_lines(c.lines());
        }
        w.finish(host, conn, &request_id);

        let flavor = Flavor::from_values(
            content_type,
            head.fields()
                .filter(|(n, _)| is(n, "accept"))
                .map(|(_, v)| v),
        );
        let logged = self.sink.logs().then(|| {
            Box::new(Logged {
                request_id: Arc::clone(&request_id.0),
                client: conn.peer.ip().to_string(),
                method: method.to_string(),
                host: clip(host_text),
                path: clip(path),
                user: identity.username().to_owned(),
                rule: decision.rule.map(|r| r.to_string()),
            })
        });
        let done = Done {
            route: Arc::clone(route),
            reason: decision.reason.as_str(),
            logged,
        };
        Plan::new(
            upstream,
            group.config().timeouts,
            request_id,
            Arc::clone(route),
            flavor,
            done,
        )
    }
}

impl Express for GatewayExpress {
    type Done = Done;

    fn plan(
        &self,
        head: &RequestHead<'_>,
        conn: &ConnectionInfo,
        out: &mut Vec<u8>,
    ) -> Option<Plan<Done>> {
        let method = head.method();
        if *method != Method::GET && *method != Method::HEAD {
            return None;
        }
        if conn
            .tls
            .as_ref()
            .is_some_and(|t| !t.client_chain.is_empty())
        {
            return None;
        }
        let peer = conn.peer.ip().to_canonical();
        if self.trusted.iter().any(|n| n.contains(&peer)) {
            return None;
        }

        // One pass over the fields for what decides.
        let (mut host, mut hosts) = (None, 0usize);
        let (mut auth, mut auths) = (None, 0usize);
        let mut content_type = None;
        let mut cookies = false;
        for (name, value) in head.fields() {
            if is(name, "host") {
                hosts += 1;
                host = Some(value);
            } else if is(name, "authorization") {
                auths += 1;
                auth = Some(value);
            } else if is(name, "cookie") {
                cookies = true;
            } else if is(name, "trailer")
                || is(name, self.api_key_header.as_str())
                || (is(name, "connection") && !names_no_fields(value))
                || (is(name, "signature-input") && crate::strip::names_hexon_credential(value))
            {
                return None;
            } else if is(name, "content-type") {
                content_type = content_type.or(Some(value));
            }
        }
        let (Some(host), 1) = (host, hosts) else {
            return None;
        };
        // The stack's authenticators in their order: a bearer token decides
        // before a session cookie.
        let cred = match (auth, auths) {
            (Some(auth), 1) => {
                let token = auth
                    .get(..7)
                    .filter(|s| s.eq_ignore_ascii_case(b"bearer "))
                    .and(auth.get(7..))?
                    .trim_ascii();
                if token.is_empty() || token.starts_with(crate::clients::KEY_TAG.as_bytes()) {
                    return None;
                }
                Cred::Bearer(token)
            }
            (None, 0) if cookies => Cred::Session(self.session.value_in(cookie_lines(head)).ok()??),
            _ => return None,
        };
        let pq = head.path_and_query()?;
        if let (Some(param), Some(query)) = (&self.api_key_param, pq.query()) {
            let named = |pair: &str| pair.split_once('=').map_or(pair, |(n, _)| n) == param;
            if query.split('&').any(named) {
                return None;
            }
        }
        let path = pq.path();
        if path.starts_with("/.well-known/") || self.forward_auth_path.as_deref() == Some(path) {
            return None;
        }
        let read = Read {
            cred,
            cookies,
            pq,
            content_type,
            peer,
        };
        with_host(host, |facts| self.plan_for(head, conn, out, facts, read))
    }
    fn finished(&self, done: Done, status: StatusCode, elapsed: Duration) {
        let status = status.as_u16();
        let metrics = self.sink.metrics();
        metrics.observe(Some(&done.route), "allow", status, elapsed.as_secs_f64());
        metrics.observe_express();
        if let Some(l) = done.logged {
            self.sink.write(&Line {
                request_id: Some(&l.request_id),
                client: Some(&l.client),
                method: &l.method,
                host: &l.host,
                path: &l.path,
                user: Some(&l.user),
                route: Some(&done.route),
                decision: "allow",
                reason: Some(done.reason),
                rule: l.rule.as_deref(),
                status,
                elapsed,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the per-thread memo gives is what reading the value gives, as
    /// the `Host` changes, repeats, is refused or is too long to remember.
    #[test]
    fn remembered_host_facts_are_the_ones_read() {
        let long = format!("{}.example", "h".repeat(MAX_REMEMBERED_HOST));
        let facts = |f: &HostFacts| {
            (
                f.text.clone(),
                f.authority.clone(),
                f.bare.clone(),
                f.normal.clone(),
            )
        };
        for host in [
            "a.example",
            "a.example",
            "B.Example:8443",
            "bad host",
            "a.example",
            "[2001:db8::1]:80",
            "[2001:db8::1",
            long.as_str(),
            "a.example",
        ] {
            let fresh = HostFacts::read(host.as_bytes()).map(|f| facts(&f));
            let remembered = with_host(host.as_bytes(), |f| Some(facts(f)));
            assert_eq!(remembered, fresh, "{host}");
        }
        // And what it reads is what each reader gives.
        let f = HostFacts::read(b"B.Example:80").unwrap();
        assert_eq!(f.authority, "b.example");
        assert_eq!(f.bare.as_deref(), Some("B.Example"));
        assert_eq!(f.normal.as_str(), "b.example");
        assert!(HostFacts::read(b"a b").is_none());
    }
}
