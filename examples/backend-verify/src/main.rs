//! A backend behind Hexon, in about thirty lines: it trusts the gateway's
//! public keys (JWKS), verifies every request's signed identity, and greets
//! the caller. Unsigned, forged, expired or tampered requests get a 401
//! before any handler runs.
//!
//! ```sh
//! cargo run -p backend-verify -- jwks.json 127.0.0.1:8080 [api.internal ...]
//! ```
//!
//! The optional names after the address are the authorities (`host[:port]`)
//! the gateway's upstream requests carry; by default the listen address.
//! Signatures made for any other authority are refused.

use axum::{Router, routing::get};
use hexon_core::httpsig::{VerifiedIdentity, Verifier};
use hexon_core::verify::VerifyIdentityLayer;
use hexon_core::{Identity, KeySet};

/// The whole backend: routes plus one verification layer.
fn app(keys: KeySet, authorities: &[String]) -> Router {
    Router::new()
        .route(
            "/",
            get(|who: Identity| async move { format!("hello {}\n", who.username()) }),
        )
        .route(
            "/whoami",
            get(|v: VerifiedIdentity| async move {
                format!(
                    "{} in {:?} via route {}\n",
                    v.identity.username(),
                    v.identity.groups(),
                    v.route
                )
            }),
        )
        .layer(VerifyIdentityLayer::new(Verifier::new(keys, authorities)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jwks_path = args
        .next()
        .ok_or("usage: backend-verify <jwks.json> [listen-addr]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let keys = KeySet::from_jwks_json(&std::fs::read_to_string(&jwks_path)?)
        .map_err(|e| format!("{jwks_path}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?.to_string();
    let mut authorities: Vec<String> = args.collect();
    if authorities.is_empty() {
        authorities.push(local.clone());
    }
    #[allow(clippy::print_stderr)] // a binary's one line of output
    {
        eprintln!("backend-verify listening on {local} for {authorities:?}");
    }
    axum::serve(listener, app(keys, &authorities)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use hexon_core::httpsig::{Binding, HttpSigner};
    use hexon_core::{Ed25519Signer, Signer, UnixTime};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn greets_verified_callers_and_refuses_others() {
        let key = Arc::new(Ed25519Signer::generate("gw-1").unwrap());
        let jwks = serde_json_jwks(&*key);
        let app = app(
            KeySet::from_jwks_json(&jwks).unwrap(),
            &["api.internal".to_owned()],
        );

        let alice = Identity::builder("u-1", "alice")
            .groups(["eng"])
            .build()
            .unwrap();
        let (mut parts, body) = axum::http::Request::get("/whoami")
            .header("host", "api.internal")
            .body(Body::empty())
            .unwrap()
            .into_parts();
        HttpSigner::new(key)
            .sign(&alice, "api", Binding::REQUEST, &mut parts, UnixTime::now())
            .await
            .unwrap();
        let res = app
            .clone()
            .oneshot(axum::http::Request::from_parts(parts, body))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"alice in [\"eng\"] via route api\n");

        let unsigned = axum::http::Request::get("/")
            .header("host", "api.internal")
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(unsigned).await.unwrap().status(), 401);
    }

    fn serde_json_jwks(key: &dyn Signer) -> String {
        let mut set = KeySet::new();
        set.insert(key.key_id(), key.public_key(), None).unwrap();
        serde_json::to_string(&set.to_jwks(UnixTime::now())).unwrap()
    }
}
