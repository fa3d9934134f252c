//! Request extensions: how the layers of the stack talk to each other.
//!
//! | extension | set by | read by |
//! |---|---|---|
//! | [`ConnectionInfo`] | the listener (after PROXY protocol and TLS) | authn (mTLS), proxy (`X-Forwarded-*`), policy (source IP) |
//! | [`RequestId`] | [`crate::request_id`] | every response, the proxy (`X-Request-Id` upstream), audit |
//! | [`hexon_core::Identity`] | [`crate::authn`] when a credential verified | authz, sign, audit |
//! | [`MatchedRoute`] | [`crate::authz`] when the policy allowed | sign, proxy (upstream choice), audit |
//! | [`ClientSignature`] | [`crate::strip`] when the client sent `Signature-Input` | the API clients' RFC 9421 authenticator |
//! | [`hexon_core::policy::Credential`] | [`crate::authn`] with the identity | authz (routes' `credentials`) |

use std::net::SocketAddr;

use http::HeaderMap;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

/// The connection a request arrived on.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The client's address: from a PROXY protocol header when the listener
    /// expects one, else the TCP peer.
    pub peer: SocketAddr,
    /// The TCP peer (the load balancer when PROXY protocol is used).
    pub tcp_peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// TLS details, if the connection is TLS.
    pub tls: Option<Arc<TlsInfo>>,
}

impl ConnectionInfo {
    /// A plain-TCP connection whose client is the TCP peer.
    pub fn plain(peer: SocketAddr, local: SocketAddr) -> Self {
        ConnectionInfo {
            peer,
            tcp_peer: peer,
            local,
            tls: None,
        }
    }

    /// `https` on TLS connections, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What the TLS handshake established.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct TlsInfo {
    /// Server name the client asked for (SNI).
    pub sni: Option<String>,
    /// Negotiated ALPN protocol (`h2`, `http/1.1`).
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain, leaf first, when it presented one
    /// that the listener's client CA verified.
    pub client_chain: Vec<CertificateDer<'static>>,
}

/// The request's id: generated, or passed through from a trusted source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The route the policy matched and allowed (its name, as in the config).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatchedRoute(pub Arc<str>);

impl MatchedRoute {
    /// The route name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// A client's own RFC 9421 `Signature-Input` and `Signature` fields, taken
/// off the request by [`crate::strip`] (no `Signature*` header survives it)
/// for the authenticator that checks them.
#[derive(Clone, Debug, Default)]
pub struct ClientSignature(pub HeaderMap);
