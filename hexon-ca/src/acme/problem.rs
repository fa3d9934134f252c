//! ACME problem documents (RFC 8555 section 6.7, RFC 7807).

use http::StatusCode;
use serde::Serialize;

/// An ACME error: `urn:ietf:params:acme:error:<kind>`, a detail for the
/// client, and the HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The type URN.
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong, for the client's operator.
    pub detail: String,
    /// HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// Per-identifier problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subproblems: Vec<SubProblem>,
}

/// A problem with one identifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubProblem {
    /// The type URN.
    #[serde(rename = "type")]
    pub kind: String,
    /// Detail.
    pub detail: String,
    /// The identifier.
    pub identifier: super::Identifier,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

macro_rules! problems {
    ($($fn:ident => $urn:literal, $status:ident;)*) => {
        impl Problem {
            $(
                #[doc = concat!("`urn:ietf:params:acme:error:", $urn, "`.")]
                pub fn $fn(detail: impl Into<String>) -> Self {
                    Problem {
                        kind: concat!("urn:ietf:params:acme:error:", $urn).to_owned(),
                        detail: detail.into(),
                        status: StatusCode::$status,
                        subproblems: Vec::new(),
                    }
                }
            )*
        }
    };
}

problems! {
    malformed => "malformed", BAD_REQUEST;
    bad_nonce => "badNonce", BAD_REQUEST;
    bad_csr => "badCSR", BAD_REQUEST;
    bad_public_key => "badPublicKey", BAD_REQUEST;
    bad_revocation_reason => "badRevocationReason", BAD_REQUEST;
    unauthorized => "unauthorized", FORBIDDEN;
    account_does_not_exist => "accountDoesNotExist", BAD_REQUEST;
    rejected_identifier => "rejectedIdentifier", BAD_REQUEST;
    unsupported_identifier => "unsupportedIdentifier", BAD_REQUEST;
    order_not_ready => "orderNotReady", FORBIDDEN;
    already_revoked => "alreadyRevoked", BAD_REQUEST;
    external_account_required => "externalAccountRequired", UNAUTHORIZED;
    unsupported_contact => "unsupportedContact", BAD_REQUEST;
    invalid_contact => "invalidContact", BAD_REQUEST;
    rate_limited => "rateLimited", TOO_MANY_REQUESTS;
    server_internal => "serverInternal", INTERNAL_SERVER_ERROR;
    connection => "connection", BAD_REQUEST;
    incorrect_response => "incorrectResponse", BAD_REQUEST;
    dns => "dns", BAD_REQUEST;
    tls => "tls", BAD_REQUEST;
    caa => "caa", FORBIDDEN;
}

impl Problem {
    /// `badSignatureAlgorithm`, listing what is accepted.
    pub fn bad_signature_algorithm(alg: &str) -> Self {
        // The algorithm is the client's text: quote at most 40 characters.
        let alg: String = alg.chars().take(40).collect();
        Problem {
            kind: "urn:ietf:params:acme:error:badSignatureAlgorithm".into(),
            detail: format!(
                "JWS algorithm {alg:?} is not accepted with this key; use ES256, ES384, EdDSA or RS256"
            ),
            status: StatusCode::BAD_REQUEST,
            subproblems: Vec::new(),
        }
    }

    /// A not-found resource (still a problem document, type `malformed`).
    pub fn not_found(what: &str) -> Self {
        Problem {
            status: StatusCode::NOT_FOUND,
            ..Problem::malformed(format!("no such {what}"))
        }
    }

    /// With another HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}
