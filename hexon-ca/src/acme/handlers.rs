//! ACME request handling: routing, JWS checks, resources.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use hexon_core::UnixTime;
use hexon_core::store::{AcmeAccountRecord, AcmeAccountStatus, StoreError};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::jws::{Jwk, Jws, MAX_JWS_LEN, Signer};
use super::{AcmeServer, Binding, Identifier, Problem, random_id, rfc3339};
use crate::authority::serial_hex;
use crate::ca::{IssueRequest, RevocationReason, Status};
use crate::csr::check_csr;
use crate::profile::SubjectName;

/// A reply before the common headers are added.
struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    location: Option<String>,
    up: Option<String>,
    retry_after: Option<u64>,
}

impl Reply {
    fn json(status: StatusCode, v: &impl Serialize) -> Self {
        Reply {
            status,
            body: serde_json::to_vec(v).unwrap_or_default().into(),
            content_type: "application/json",
            location: None,
            up: None,
            retry_after: None,
        }
    }
    fn empty(status: StatusCode) -> Self {
        Reply {
            status,
            body: Bytes::new(),
            content_type: "",
            location: None,
            up: None,
            retry_after: None,
        }
    }
    fn location(mut self, url: String) -> Self {
        self.location = Some(url);
        self
    }
}

type Res = Result<Reply, Problem>;

fn problem_reply(p: &Problem) -> Reply {
    let mut r = Reply::json(p.status, p);
    r.content_type = "application/problem+json";
    r
}

fn store_err(e: StoreError) -> Problem {
    tracing::warn!(error = %e, "ACME: the store is unavailable");
    Problem::server_internal("the server's state is unavailable; try again later")
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
}

/// A verified POST.
pub(super) struct Post {
    jws: Jws,
    key: Jwk,
    account: Option<AcmeAccountRecord>,
}

impl Post {
    fn account(&self) -> Result<&AcmeAccountRecord, Problem> {
        self.account.as_ref().ok_or_else(|| {
            Problem::malformed("this request must be signed by an account (\"kid\")")
        })
    }
}

// ------------------------------------------------------------------ records

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ChallengeRec {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) token: String,
    pub(super) status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) validated: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<StoredProblem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct StoredProblem {
    #[serde(rename = "type")]
    kind: String,
    detail: String,
}

impl From<&Problem> for StoredProblem {
    fn from(p: &Problem) -> Self {
        StoredProblem {
            kind: p.kind.clone(),
            detail: p.detail.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AuthzRec {
    pub(super) id: String,
    pub(super) account: String,
    pub(super) identifier: Identifier,
    pub(super) wildcard: bool,
    pub(super) status: String,
    pub(super) expires: i64,
    pub(super) challenges: Vec<ChallengeRec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct OrderRec {
    id: String,
    account: String,
    status: String,
    expires: i64,
    identifiers: Vec<Identifier>,
    authzs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<StoredProblem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaces: Option<String>,
}

impl AcmeServer {
    // -------------------------------------------------------------- routing

    /// Answer a request under [`base_path`](Self::base_path). `client` is
    /// the client's address, for rate limits.
    pub async fn call<B>(
        self: &Arc<Self>,
        req: Request<B>,
        client: Option<IpAddr>,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path()
            .strip_prefix(self.base_path.as_str())
            .unwrap_or_default()
            .to_owned();
        let method = parts.method.clone();
        let result = if method == Method::POST {
            match Limited::new(body, MAX_JWS_LEN).collect().await {
                Ok(b) => {
                    let ct_ok = parts
                        .headers
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/jose+json"));
                    if ct_ok {
                        self.post(&path, &b.to_bytes(), client).await
                    } else {
                        Err(
                            Problem::malformed("send Content-Type: application/jose+json")
                                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                        )
                    }
                }
                Err(_) => Err(Problem::malformed(format!(
                    "the request is larger than {MAX_JWS_LEN} bytes"
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)),
            }
        } else if method == Method::GET || method == Method::HEAD {
            self.get(&path, method == Method::HEAD).await
        } else {
            Err(Problem::malformed("method not allowed")
                .with_status(StatusCode::METHOD_NOT_ALLOWED))
        };
        let (reply, with_nonce) = match result {
            Ok(r) => {
                let nonce = method == Method::POST || path == "/new-nonce";
                (r, nonce)
            }
            Err(p) => (problem_reply(&p), true),
        };
        self.finish(reply, with_nonce).await
    }

    async fn finish(&self, reply: Reply, with_nonce: bool) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(reply.body));
        *resp.status_mut() = reply.status;
        let h = resp.headers_mut();
        if !reply.content_type.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
        }
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&format!("<{}>;rel=\"index\"", self.url("/directory")))
        {
            h.append(LINK, v);
        }
        if let Some(up) = reply.up
            && let Ok(v) = HeaderValue::from_str(&format!("<{up}>;rel=\"up\""))
        {
            h.append(LINK, v);
        }
        if let Some(loc) = reply.location
            && let Ok(v) = HeaderValue::from_str(&loc)
        {
            h.insert(LOCATION, v);
        }
        if let Some(secs) = reply.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if with_nonce {
            match self.new_nonce().await {
                Ok(n) => {
                    if let Ok(v) = HeaderValue::from_str(&n) {
                        h.insert("replay-nonce", v);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ACME: cannot store a nonce"),
            }
        }
        resp
    }

    async fn get(self: &Arc<Self>, path: &str, head: bool) -> Res {
        match path {
            "/directory" => Ok(Reply::json(StatusCode::OK, &self.directory())),
            "/new-nonce" => Ok(Reply::empty(if head {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            })),
            p if p.starts_with("/renewal-info/") => {
                self.renewal_info(p.trim_start_matches("/renewal-info/"))
                    .await
            }
            _ => Err(Problem::not_found(
                "resource; ACME resources other than the directory, nonces and renewal information take POST",
            )),
        }
    }

    fn directory(&self) -> Value {
        let mut meta = serde_json::Map::new();
        if let Some(tos) = &self.cfg.terms_of_service {
            meta.insert("termsOfService".into(), tos.clone().into());
        }
        if let Some(w) = &self.cfg.website {
            meta.insert("website".into(), w.clone().into());
        }
        meta.insert(
            "externalAccountRequired".into(),
            self.cfg.eab_required.into(),
        );
        meta.insert("caaIdentities".into(), json!([]));
        json!({
            "newNonce": self.url("/new-nonce"),
            "newAccount": self.url("/new-account"),
            "newOrder": self.url("/new-order"),
            "revokeCert": self.url("/revoke-cert"),
            "keyChange": self.url("/key-change"),
            "renewalInfo": self.url("/renewal-info"),
            "meta": meta,
        })
    }

    async fn post(self: &Arc<Self>, path: &str, body: &[u8], client: Option<IpAddr>) -> Res {
        let jwk_ok = matches!(path, "/new-account" | "/revoke-cert");
        let post = self.verify_post(path, body, jwk_ok).await?;
        let mut seg = path.trim_start_matches('/').split('/');
        match (seg.next(), seg.next(), seg.next(), seg.next()) {
            (Some("new-account"), None, ..) => self.new_account(post, client).await,
            (Some("new-order"), None, ..) => self.new_order(post).await,
            (Some("revoke-cert"), None, ..) => self.revoke(post).await,
            (Some("key-change"), None, ..) => self.key_change(post).await,
            (Some("acct"), Some(id), None, _) => self.account_update(post, id).await,
            (Some("acct"), Some(id), Some("orders"), None) => self.account_orders(post, id).await,
            (Some("order"), Some(id), None, _) => self.order_get(post, id).await,
            (Some("order"), Some(id), Some("finalize"), None) => self.finalize(post, id).await,
            (Some("authz"), Some(id), None, _) => self.authz_post(post, id).await,
            (Some("chall"), Some(authz), Some(kind), None) => {
                self.challenge_post(post, authz, kind).await
            }
            (Some("cert"), Some(serial), None, _) => self.certificate(post, serial).await,
            _ => Err(Problem::not_found("resource")),
        }
    }

    /// Check a POST: JWS shape, `url`, signer, signature, nonce (consumed
    /// last, so a request that fails earlier does not burn it).
    pub(super) async fn verify_post(
        &self,
        path: &str,
        body: &[u8],
        jwk_ok: bool,
    ) -> Result<Post, Problem> {
        let jws = Jws::parse(body)?;
        let expected = self.url(path);
        if jws.url != expected {
            return Err(Problem::unauthorized(format!(
                "the JWS \"url\" is {:?} but the request went to {expected:?}",
                jws.url.chars().take(200).collect::<String>()
            )));
        }
        let Some(nonce) = jws.nonce.clone() else {
            return Err(Problem::bad_nonce(
                "the protected header lacks \"nonce\"; get one from newNonce",
            ));
        };
        let (key, account) = match &jws.signer {
            Signer::Jwk(k) => {
                if !jwk_ok {
                    return Err(Problem::malformed(
                        "this request must be signed by an account (\"kid\"), not a bare \"jwk\"",
                    ));
                }
                (k.clone(), None)
            }
            Signer::Kid(kid) => {
                let id = kid
                    .strip_prefix(&self.url("/acct/"))
                    .filter(|id| !id.is_empty() && !id.contains('/'))
                    .ok_or_else(|| {
                        Problem::account_does_not_exist(
                            "\"kid\" is not an account URL of this server",
                        )
                    })?;
                let acct = self
                    .accounts
                    .acme_account(id)
                    .await
                    .map_err(store_err)?
                    .ok_or_else(|| Problem::account_does_not_exist("no such account"))?;
                if acct.status != AcmeAccountStatus::Valid {
                    return Err(Problem::unauthorized(format!(
                        "the account is {}",
                        acct.status.as_str()
                    )));
                }
                let key: Value = serde_json::from_str(&acct.jwk)
                    .map_err(|_| Problem::server_internal("a stored account key does not parse"))?;
                (Jwk::from_value(&key)?, Some(acct))
            }
        };
        jws.verify(&key)?;
        if !self.consume_nonce(&nonce).await.map_err(store_err)? {
            return Err(Problem::bad_nonce(
                "the nonce is unknown, used or expired; use the new one in Replay-Nonce",
            ));
        }
        Ok(Post { jws, key, account })
    }

    // ------------------------------------------------------------- accounts

    fn account_json(&self, a: &AcmeAccountRecord) -> Value {
        let mut v = json!({
            "status": a.status.as_str(),
            "contact": a.contacts,
            "orders": self.url(&format!("/acct/{}/orders", a.id)),
        });
        if self.cfg.terms_of_service.is_some()
            && let Some(o) = v.as_object_mut()
        {
            o.insert("termsOfServiceAgreed".into(), true.into());
        }
        v
    }

    fn check_contacts(contacts: &Value) -> Result<Vec<String>, Problem> {
        let list = match contacts {
            Value::Null => return Ok(Vec::new()),
            Value::Array(l) => l,
            _ => {
                return Err(Problem::malformed(
                    "\"contact\" must be an array of mailto: URLs",
                ));
            }
        };
        if list.len() > 5 {
            return Err(Problem::invalid_contact("at most 5 contacts"));
        }
        let mut out = Vec::new();
        for c in list {
            let c = c
                .as_str()
                .ok_or_else(|| Problem::malformed("a contact is not a string"))?;
            let Some(addr) = c.strip_prefix("mailto:") else {
                return Err(Problem::unsupported_contact(format!(
                    "only mailto: contacts are supported, not {:?}",
                    c.chars().take(80).collect::<String>()
                )));
            };
            let valid = addr.len() <= 254
                && !addr.contains(['?', ',', ' ', '<', '>'])
                && addr
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
            if !valid {
                return Err(Problem::invalid_contact(format!(
                    "{:?} is not a single e-mail address",
                    c.chars().take(80).collect::<String>()
                )));
            }
            out.push(c.to_owned());
        }
        Ok(out)
    }

    async fn new_account(&self, post: Post, client: Option<IpAddr>) -> Res {
        let payload = post.jws.json()?;
        let thumb = post.key.thumbprint();
        if let Some(existing) = self
            .accounts
            .acme_account_by_thumbprint(&thumb)
            .await
            .map_err(store_err)?
        {
            if existing.status != AcmeAccountStatus::Valid {
                return Err(Problem::unauthorized(format!(
                    "the account for this key is {}",
                    existing.status.as_str()
                )));
            }
            return Ok(Reply::json(StatusCode::OK, &self.account_json(&existing))
                .location(self.url(&format!("/acct/{}", existing.id))));
        }
        if payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true) {
            return Err(Problem::account_does_not_exist("no account has this key"));
        }
        if self.cfg.terms_of_service.is_some()
            && payload.get("termsOfServiceAgreed").and_then(Value::as_bool) != Some(true)
        {
            return Err(Problem::malformed(
                "agree to the terms of service (termsOfServiceAgreed: true)",
            ));
        }
        let contacts = Self::check_contacts(payload.get("contact").unwrap_or(&Value::Null))?;
        let eab_key_id = match payload.get("externalAccountBinding") {
            Some(eab) => Some(self.check_eab(eab, &post.key)?),
            None if self.cfg.eab_required => {
                return Err(Problem::external_account_required(
                    "this server requires an external account binding; ask its operator for a key id and HMAC key",
                ));
            }
            None => None,
        };
        if let Some(ip) = client
            && !self
                .count(
                    &format!("rate/a/{}", ip_bucket(ip)),
                    self.cfg.accounts_per_hour,
                )
                .await?
        {
            return Err(Problem::rate_limited(
                "too many new accounts from this address; try again within the hour",
            ));
        }
        let record = AcmeAccountRecord {
            id: random_id(12),
            key_thumbprint: thumb.clone(),
            jwk: post.key.canonical_json(),
            contacts,
            status: AcmeAccountStatus::Valid,
            eab_key_id,
            created_at: UnixTime::now(),
            version: 0,
        };
        match self.accounts.insert_acme_account(&record).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // Raced with another registration of the same key.
                if let Some(existing) = self
                    .accounts
                    .acme_account_by_thumbprint(&thumb)
                    .await
                    .map_err(store_err)?
                {
                    return Ok(Reply::json(StatusCode::OK, &self.account_json(&existing))
                        .location(self.url(&format!("/acct/{}", existing.id))));
                }
                return Err(Problem::server_internal(
                    "account creation raced; try again",
                ));
            }
            Err(e) => return Err(store_err(e)),
        }
        tracing::info!(account = %record.id, eab = record.eab_key_id.as_deref().unwrap_or("-"), "ACME account created");
        Ok(
            Reply::json(StatusCode::CREATED, &self.account_json(&record))
                .location(self.url(&format!("/acct/{}", record.id))),
        )
    }

    /// Check an External Account Binding; returns its key id.
    fn check_eab(&self, eab: &Value, account_key: &Jwk) -> Result<String, Problem> {
        let inner = Jws::from_value(eab)?;
        let Signer::Kid(kid) = &inner.signer else {
            return Err(Problem::malformed(
                "the external account binding must name its key with \"kid\"",
            ));
        };
        let Some((key, _)) = self.eab.get(kid) else {
            return Err(Problem::unauthorized(
                "unknown external account binding key id",
            ));
        };
        if inner.url != self.url("/new-account") {
            return Err(Problem::malformed(
                "the external account binding's \"url\" must be the newAccount URL",
            ));
        }
        if inner.nonce.is_some() {
            return Err(Problem::malformed(
                "the external account binding must not carry a nonce",
            ));
        }
        inner.verify_hmac(key)?;
        let bound = Jwk::from_value(&inner.json()?)?;
        if bound != *account_key {
            return Err(Problem::unauthorized(
                "the external account binding is for another account key",
            ));
        }
        Ok(kid.clone())
    }

    fn binding(&self, a: &AcmeAccountRecord) -> Binding {
        a.eab_key_id
            .as_ref()
            .and_then(|k| self.eab.get(k))
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }

    async fn account_update(&self, post: Post, id: &str) -> Res {
        let acct = post.account()?.clone();
        if acct.id != id {
            return Err(Problem::unauthorized(
                "an account can only read and change itself",
            ));
        }
        if post.jws.is_post_as_get() {
            return Ok(Reply::json(StatusCode::OK, &self.account_json(&acct)));
        }
        let payload = post.jws.json()?;
        let mut next = acct.clone();
        if let Some(c) = payload.get("contact") {
            next.contacts = Self::check_contacts(c)?;
        }
        match payload.get("status").and_then(Value::as_str) {
            None => {}
            Some("deactivated") => next.status = AcmeAccountStatus::Deactivated,
            Some(other) => {
                return Err(Problem::malformed(format!(
                    "an account's status can only be set to \"deactivated\", not {other:?}"
                )));
            }
        }
        if next != acct {
            match self.accounts.update_acme_account(&next).await {
                Ok(v) => next.version = v,
                Err(StoreError::Conflict { .. }) => {
                    return Err(
                        Problem::malformed("the account changed meanwhile; try again")
                            .with_status(StatusCode::CONFLICT),
                    );
                }
                Err(e) => return Err(store_err(e)),
            }
            tracing::info!(account = %acct.id, status = next.status.as_str(), "ACME account updated");
        }
        Ok(Reply::json(StatusCode::OK, &self.account_json(&next)))
    }

    async fn account_orders(&self, post: Post, id: &str) -> Res {
        let acct = post.account()?;
        if acct.id != id {
            return Err(Problem::unauthorized(
                "an account can only list its own orders",
            ));
        }
        let ids: Vec<String> = self
            .read_json(&format!("orders/{id}"))
            .await?
            .map(|(v, _)| v)
            .unwrap_or_default();
        let urls: Vec<String> = ids
            .iter()
            .map(|o| self.url(&format!("/order/{o}")))
            .collect();
        Ok(Reply::json(StatusCode::OK, &json!({ "orders": urls })))
    }

    async fn key_change(&self, post: Post) -> Res {
        let acct = post.account()?.clone();
        let inner = Jws::from_value(&post.jws.json()?)?;
        let Signer::Jwk(new_key) = &inner.signer else {
            return Err(Problem::malformed(
                "the inner JWS of a key change must carry the new key as \"jwk\"",
            ));
        };
        if inner.url != post.jws.url {
            return Err(Problem::malformed(
                "the inner JWS's \"url\" must equal the outer one's",
            ));
        }
        if inner.nonce.is_some() {
            return Err(Problem::malformed(
                "the inner JWS of a key change must not carry a nonce",
            ));
        }
        inner.verify(new_key)?;
        let body = inner.json()?;
        let account_url = self.url(&format!("/acct/{}", acct.id));
        if body.get("account").and_then(Value::as_str) != Some(account_url.as_str()) {
            return Err(Problem::unauthorized(
                "the key change names another account",
            ));
        }
        let old = Jwk::from_value(body.get("oldKey").unwrap_or(&Value::Null))?;
        if old != post.key {
            return Err(Problem::unauthorized(
                "\"oldKey\" is not the account's current key",
            ));
        }
        let thumb = new_key.thumbprint();
        if let Some(other) = self
            .accounts
            .acme_account_by_thumbprint(&thumb)
            .await
            .map_err(store_err)?
        {
            // RFC 8555 7.3.5: 409 with the other account's URL.
            let p = Problem::malformed("the new key belongs to another account")
                .with_status(StatusCode::CONFLICT);
            return Ok(problem_reply(&p).location(self.url(&format!("/acct/{}", other.id))));
        }
        let mut next = acct.clone();
        next.jwk = new_key.canonical_json();
        next.key_thumbprint = thumb;
        match self.accounts.update_acme_account(&next).await {
            Ok(v) => next.version = v,
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(Problem::malformed("the new key belongs to another account")
                    .with_status(StatusCode::CONFLICT));
            }
            Err(StoreError::Conflict { .. }) => {
                return Err(
                    Problem::malformed("the account changed meanwhile; try again")
                        .with_status(StatusCode::CONFLICT),
                );
            }
            Err(e) => return Err(store_err(e)),
        }
        tracing::info!(account = %acct.id, "ACME account key changed");
        Ok(Reply::json(StatusCode::OK, &self.account_json(&next)))
    }

    // --------------------------------------------------------------- orders

    async fn new_order(self: &Arc<Self>, post: Post) -> Res {
        let acct = post.account()?.clone();
        let payload = post.jws.json()?;
        for field in ["notBefore", "notAfter"] {
            if payload.get(field).is_some_and(|v| !v.is_null()) {
                return Err(Problem::malformed(format!(
                    "{field} is not supported; certificates start now and last the profile's lifetime"
                )));
            }
        }
        let raw: Vec<Identifier> =
            serde_json::from_value(payload.get("identifiers").cloned().unwrap_or(Value::Null))
                .map_err(|_| {
                    Problem::malformed("\"identifiers\" must be an array of {type, value}")
                })?;
        if raw.is_empty() || raw.len() > 100 {
            return Err(Problem::malformed("an order has 1 to 100 identifiers"));
        }
        let mut identifiers: Vec<Identifier> = Vec::new();
        let mut names = Vec::new();
        for id in raw {
            let (ident, name) = normalise(&id)?;
            if !identifiers.contains(&ident) {
                identifiers.push(ident);
                names.push(name);
            }
        }
        // Identity-aware issuance: the profile's rules, narrowed by the
        // account's binding.
        let (_, rules) = self
            .ca
            .profile(self.cfg.profile)
            .ok_or_else(|| Problem::server_internal("the ACME profile is not configured"))?;
        let binding = self.binding(&acct);
        let mut subproblems = Vec::new();
        for (ident, name) in identifiers.iter().zip(&names) {
            let mut verdict = rules
                .check(self.cfg.profile, std::slice::from_ref(name))
                .map_err(|e| match e {
                    crate::CaError::Refused(why) => why,
                    other => other.to_string(),
                });
            if verdict.is_ok()
                && !binding.dns.is_empty()
                && let SubjectName::Dns(n) = name
            {
                let bare = n.strip_prefix("*.").unwrap_or(n);
                if !binding
                    .dns
                    .iter()
                    .any(|s| bare == s || bare.ends_with(&format!(".{s}")))
                {
                    verdict = Err(format!("this account's binding does not allow {n}"));
                }
            }
            if let Err(why) = verdict {
                subproblems.push(super::problem::SubProblem {
                    kind: "urn:ietf:params:acme:error:rejectedIdentifier".into(),
                    detail: why,
                    identifier: ident.clone(),
                });
            }
        }
        if !subproblems.is_empty() {
            let mut p = Problem::rejected_identifier(
                "the server will not issue for some of these identifiers",
            );
            if let [only] = subproblems.as_slice() {
                p.detail = only.detail.clone();
            }
            p.subproblems = subproblems;
            return Err(p);
        }
        let replaces = match payload.get("replaces").and_then(Value::as_str) {
            None => None,
            Some(certid) => {
                let (_, record) = self.find_by_ari_id(certid).await?.ok_or_else(|| {
                    Problem::malformed("\"replaces\" names no certificate of this server")
                })?;
                if record.requester.as_deref() != Some(&format!("acme:{}", acct.id)) {
                    return Err(Problem::unauthorized(
                        "\"replaces\" names a certificate of another account",
                    ));
                }
                Some(certid.to_owned())
            }
        };
        if !self
            .count(&format!("rate/o/{}", acct.id), self.cfg.orders_per_hour)
            .await?
        {
            let mut p = Problem::rate_limited(format!(
                "at most {} new orders per hour per account",
                self.cfg.orders_per_hour
            ));
            p.status = StatusCode::TOO_MANY_REQUESTS;
            return Err(p);
        }

        let now = UnixTime::now().as_secs();
        let ttl = self.cfg.order_lifetime.get();
        let expires = now + i64::try_from(ttl.as_secs()).unwrap_or(86_400);
        let mut authz_ids = Vec::new();
        for ident in &identifiers {
            let wildcard = ident.kind == "dns" && ident.value.starts_with("*.");
            let kinds: &[&str] = match (ident.kind.as_str(), wildcard) {
                ("dns", true) => &["dns-01"],
                ("dns", false) => &["http-01", "tls-alpn-01", "dns-01"],
                _ => &["http-01"],
            };
            let authz = AuthzRec {
                id: random_id(12),
                account: acct.id.clone(),
                identifier: Identifier {
                    kind: ident.kind.clone(),
                    value: ident.value.trim_start_matches("*.").to_owned(),
                },
                wildcard,
                status: "pending".into(),
                expires,
                challenges: kinds
                    .iter()
                    .map(|k| ChallengeRec {
                        kind: (*k).to_owned(),
                        token: random_id(32),
                        status: "pending".into(),
                        validated: None,
                        error: None,
                    })
                    .collect(),
            };
            self.write_json(&format!("authz/{}", authz.id), &authz, None, ttl)
                .await?;
            authz_ids.push(authz.id);
        }
        let order = OrderRec {
            id: random_id(12),
            account: acct.id.clone(),
            status: "pending".into(),
            expires,
            identifiers,
            authzs: authz_ids,
            error: None,
            certificate: None,
            replaces,
        };
        self.write_json(&format!("order/{}", order.id), &order, None, ttl)
            .await?;
        self.remember_order(&acct.id, &order.id).await?;
        tracing::info!(account = %acct.id, order = %order.id, identifiers = ?order.identifiers.iter().map(|i| i.value.as_str()).collect::<Vec<_>>(), "ACME order created");
        let body = self.order_json(&order).await?;
        Ok(Reply::json(StatusCode::CREATED, &body)
            .location(self.url(&format!("/order/{}", order.id))))
    }

    async fn remember_order(&self, account: &str, order: &str) -> Result<(), Problem> {
        let key = format!("orders/{account}");
        for _ in 0..8 {
            let current = self.read_json::<Vec<String>>(&key).await?;
            let (mut list, rev) = current.map(|(v, r)| (v, Some(r))).unwrap_or_default();
            list.push(order.to_owned());
            let excess = list.len().saturating_sub(200);
            list.drain(..excess);
            if self.write_json(&key, &list, rev, super::KV_MAX_TTL).await? {
                return Ok(());
            }
        }
        Err(Problem::server_internal(
            "too much contention on the account's order list; try again",
        ))
    }

    /// The order's status as of now, from its authorizations.
    async fn order_status(&self, order: &OrderRec) -> Result<String, Problem> {
        if order.status != "pending" {
            return Ok(order.status.clone());
        }
        if UnixTime::now().as_secs() >= order.expires {
            return Ok("invalid".into());
        }
        let mut all_valid = true;
        for id in &order.authzs {
            let Some((a, _)) = self.read_json::<AuthzRec>(&format!("authz/{id}")).await? else {
                return Ok("invalid".into());
            };
            match a.status.as_str() {
                "valid" => {}
                "pending" => all_valid = false,
                _ => return Ok("invalid".into()),
            }
        }
        Ok(if all_valid {
            "ready".into()
        } else {
            "pending".into()
        })
    }

    async fn order_json(&self, order: &OrderRec) -> Result<Value, Problem> {
        let status = self.order_status(order).await?;
        let mut v = json!({
            "status": status,
            "expires": rfc3339(order.expires),
            "identifiers": order.identifiers,
            "authorizations": order.authzs.iter().map(|a| self.url(&format!("/authz/{a}"))).collect::<Vec<_>>(),
            "finalize": self.url(&format!("/order/{}/finalize", order.id)),
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(serial) = &order.certificate {
                o.insert(
                    "certificate".into(),
                    self.url(&format!("/cert/{serial}")).into(),
                );
            }
            if let Some(e) = &order.error {
                o.insert("error".into(), serde_json::to_value(e).unwrap_or_default());
            }
            if let Some(r) = &order.replaces {
                o.insert("replaces".into(), r.clone().into());
            }
        }
        Ok(v)
    }

    async fn load_order(
        &self,
        post: &Post,
        id: &str,
    ) -> Result<(OrderRec, hexon_core::store::Revision), Problem> {
        let acct = post.account()?;
        let (order, rev) = self
            .read_json::<OrderRec>(&format!("order/{id}"))
            .await?
            .ok_or_else(|| Problem::not_found("order"))?;
        if order.account != acct.id {
            return Err(Problem::unauthorized(
                "the order belongs to another account",
            ));
        }
        Ok((order, rev))
    }

    async fn order_get(&self, post: Post, id: &str) -> Res {
        let (order, _) = self.load_order(&post, id).await?;
        let body = self.order_json(&order).await?;
        let mut r = Reply::json(StatusCode::OK, &body);
        if body.get("status").and_then(Value::as_str) == Some("processing") {
            r.retry_after = Some(1);
        }
        Ok(r)
    }

    async fn authz_post(&self, post: Post, id: &str) -> Res {
        let acct = post.account()?;
        let (mut authz, rev) = self
            .read_json::<AuthzRec>(&format!("authz/{id}"))
            .await?
            .ok_or_else(|| Problem::not_found("authorization"))?;
        if authz.account != acct.id {
            return Err(Problem::unauthorized(
                "the authorization belongs to another account",
            ));
        }
        if !post.jws.is_post_as_get() {
            let payload = post.jws.json()?;
            if payload.get("status").and_then(Value::as_str) == Some("deactivated") {
                if !matches!(authz.status.as_str(), "pending" | "valid") {
                    return Err(Problem::malformed(format!(
                        "an authorization that is {} cannot be deactivated",
                        authz.status
                    )));
                }
                authz.status = "deactivated".into();
                if !self
                    .write_json(
                        &format!("authz/{id}"),
                        &authz,
                        Some(rev),
                        self.cfg.order_lifetime.get(),
                    )
                    .await?
                {
                    return Err(Problem::malformed(
                        "the authorization changed meanwhile; try again",
                    )
                    .with_status(StatusCode::CONFLICT));
                }
            }
        }
        Ok(Reply::json(StatusCode::OK, &self.authz_json(&authz)))
    }

    fn authz_json(&self, a: &AuthzRec) -> Value {
        let status = if a.status == "pending" && UnixTime::now().as_secs() >= a.expires {
            "expired"
        } else {
            a.status.as_str()
        };
        let mut v = json!({
            "identifier": a.identifier,
            "status": status,
            "expires": rfc3339(a.expires),
            "challenges": a.challenges.iter().map(|c| self.challenge_json(a, c)).collect::<Vec<_>>(),
        });
        if a.wildcard
            && let Some(o) = v.as_object_mut()
        {
            o.insert("wildcard".into(), true.into());
        }
        v
    }

    fn challenge_json(&self, a: &AuthzRec, c: &ChallengeRec) -> Value {
        let mut v = json!({
            "type": c.kind,
            "url": self.url(&format!("/chall/{}/{}", a.id, c.kind)),
            "status": c.status,
            "token": c.token,
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(t) = c.validated {
                o.insert("validated".into(), rfc3339(t).into());
            }
            if let Some(e) = &c.error {
                o.insert("error".into(), serde_json::to_value(e).unwrap_or_default());
            }
        }
        v
    }

    async fn challenge_post(self: &Arc<Self>, post: Post, authz_id: &str, kind: &str) -> Res {
        let acct = post.account()?.clone();
        let key = format!("authz/{authz_id}");
        let (mut authz, rev) = self
            .read_json::<AuthzRec>(&key)
            .await?
            .ok_or_else(|| Problem::not_found("challenge"))?;
        if authz.account != acct.id {
            return Err(Problem::unauthorized(
                "the challenge belongs to another account",
            ));
        }
        let Some(idx) = authz.challenges.iter().position(|c| c.kind == kind) else {
            return Err(Problem::not_found("challenge"));
        };
        let up = self.url(&format!("/authz/{authz_id}"));
        if !post.jws.is_post_as_get() && !post.jws.json()?.is_object() {
            return Err(Problem::malformed("respond to a challenge with {}"));
        }
        let start = !post.jws.is_post_as_get()
            && authz.status == "pending"
            && UnixTime::now().as_secs() < authz.expires
            && authz
                .challenges
                .get(idx)
                .is_some_and(|c| c.status == "pending");
        if start && let Some(c) = authz.challenges.get_mut(idx) {
            c.status = "processing".into();
            let key_authz = format!("{}.{}", c.token, post.key.thumbprint());
            if !self
                .write_json(&key, &authz, Some(rev), self.cfg.order_lifetime.get())
                .await?
            {
                return Err(
                    Problem::malformed("the authorization changed meanwhile; try again")
                        .with_status(StatusCode::CONFLICT),
                );
            }
            let this = self.clone();
            let (id, kind) = (authz_id.to_owned(), kind.to_owned());
            tokio::spawn(async move { this.run_validation(id, kind, key_authz).await });
        }
        let Some(challenge) = authz.challenges.get(idx) else {
            return Err(Problem::not_found("challenge"));
        };
        let mut r = Reply::json(StatusCode::OK, &self.challenge_json(&authz, challenge));
        r.up = Some(up);
        if challenge.status == "processing" {
            r.retry_after = Some(1);
        }
        Ok(r)
    }

    async fn run_validation(self: Arc<Self>, authz_id: String, kind: String, key_authz: String) {
        let key = format!("authz/{authz_id}");
        let Ok(Some((authz, _))) = self.read_json::<AuthzRec>(&key).await else {
            return;
        };
        let outcome = super::validate::validate(&self, &kind, &authz, &key_authz).await;
        for _ in 0..8 {
            let Ok(Some((mut authz, rev))) = self.read_json::<AuthzRec>(&key).await else {
                return;
            };
            let Some(c) = authz.challenges.iter_mut().find(|c| c.kind == kind) else {
                return;
            };
            match &outcome {
                Ok(()) => {
                    c.status = "valid".into();
                    c.validated = Some(UnixTime::now().as_secs());
                    authz.status = "valid".into();
                }
                Err(p) => {
                    c.status = "invalid".into();
                    c.error = Some(p.into());
                    authz.status = "invalid".into();
                }
            }
            match self
                .write_json(&key, &authz, Some(rev), self.cfg.order_lifetime.get())
                .await
            {
                Ok(true) => {
                    tracing::info!(authz = %authz_id, kind, identifier = %authz.identifier.value, valid = outcome.is_ok(), error = outcome.as_ref().err().map(|p| p.detail.as_str()).unwrap_or("-"), "ACME challenge validated");
                    return;
                }
                Ok(false) => continue,
                Err(_) => return,
            }
        }
    }

    async fn finalize(self: &Arc<Self>, post: Post, id: &str) -> Res {
        let (mut order, rev) = self.load_order(&post, id).await?;
        let status = self.order_status(&order).await?;
        if status != "ready" {
            return Err(Problem::order_not_ready(format!(
                "the order is {status}, not ready"
            )));
        }
        let payload = post.jws.json()?;
        let csr_b64 = payload
            .get("csr")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("\"csr\" is missing"))?;
        let der = B64
            .decode(csr_b64.trim_end_matches('='))
            .map_err(|_| Problem::bad_csr("\"csr\" is not base64url"))?;
        let csr = check_csr(&der).map_err(|e| Problem::bad_csr(e.to_string()))?;
        let mut want: Vec<SubjectName> = order
            .identifiers
            .iter()
            .map(|i| normalise(i).map(|(_, n)| n))
            .collect::<Result<_, _>>()?;
        let mut got = csr.names.clone();
        want.sort();
        got.sort();
        if want != got {
            return Err(Problem::bad_csr(format!(
                "the CSR asks for [{}] but the order is for [{}]",
                got.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                want.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        order.status = "processing".into();
        if !self
            .write_json(
                &format!("order/{id}"),
                &order,
                Some(rev),
                self.cfg.order_lifetime.get(),
            )
            .await?
        {
            return Err(Problem::order_not_ready(
                "the order is being finalized already",
            ));
        }
        let acct = post.account()?.clone();
        let binding = self.binding(&acct);
        let mut request = IssueRequest::from_csr(self.cfg.profile, csr);
        request.requester = Some(format!("acme:{}", acct.id));
        let this = self.clone();
        let order_id = id.to_owned();
        let identity = binding.identity.clone();
        let task =
            tokio::spawn(async move { this.issue_for_order(order_id, request, identity).await });
        // Local keys sign in microseconds; a threshold key takes about a
        // second: wait a little, then let the client poll.
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        let (order, _) = self
            .read_json::<OrderRec>(&format!("order/{id}"))
            .await?
            .ok_or_else(|| Problem::not_found("order"))?;
        let body = self.order_json(&order).await?;
        let mut r = Reply::json(StatusCode::OK, &body).location(self.url(&format!("/order/{id}")));
        if order.status == "processing" {
            r.retry_after = Some(1);
        }
        Ok(r)
    }

    async fn issue_for_order(
        self: Arc<Self>,
        order_id: String,
        request: IssueRequest,
        identity: Option<String>,
    ) {
        let outcome = self.ca.issue(&request).await;
        let key = format!("order/{order_id}");
        for _ in 0..8 {
            let Ok(Some((mut order, rev))) = self.read_json::<OrderRec>(&key).await else {
                return;
            };
            match &outcome {
                Ok(issued) => {
                    order.status = "valid".into();
                    order.certificate = Some(issued.serial.clone());
                }
                Err(e) => {
                    tracing::warn!(order = %order_id, error = %e, "ACME issuance failed");
                    order.status = "invalid".into();
                    let p = match e {
                        crate::CaError::Refused(why) => Problem::rejected_identifier(why.clone()),
                        crate::CaError::BadCsr(why) => Problem::bad_csr(why.clone()),
                        _ => Problem::server_internal(
                            "issuance failed; the operator has the details",
                        ),
                    };
                    order.error = Some((&p).into());
                }
            }
            if let Ok(true) = self
                .write_json(&key, &order, Some(rev), self.cfg.order_lifetime.get())
                .await
            {
                if let Ok(issued) = &outcome {
                    tracing::info!(order = %order_id, serial = %issued.serial, identity = identity.as_deref().unwrap_or("-"), "ACME certificate issued");
                }
                return;
            }
        }
    }

    async fn certificate(&self, post: Post, serial: &str) -> Res {
        let acct = post.account()?;
        if serial.len() > 42 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Problem::not_found("certificate"));
        }
        let record = self
            .ca
            .find(serial)
            .await
            .map_err(|e| Problem::server_internal(e.to_string()))?
            .ok_or_else(|| Problem::not_found("certificate"))?;
        if record.requester.as_deref() != Some(&format!("acme:{}", acct.id)) {
            return Err(Problem::unauthorized(
                "the certificate belongs to another account",
            ));
        }
        let issuer = self
            .ca
            .authority(&record.issuer)
            .ok_or_else(|| Problem::server_internal("the issuing CA is gone"))?;
        let mut chain = crate::authority::pem("CERTIFICATE", &record.der);
        chain.push_str(&issuer.certificate_pem());
        Ok(Reply {
            status: StatusCode::OK,
            body: chain.into(),
            content_type: "application/pem-certificate-chain",
            location: None,
            up: None,
            retry_after: None,
        })
    }

    // ------------------------------------------------------------ revocation

    async fn revoke(&self, post: Post) -> Res {
        let payload = post.jws.json()?;
        let der = payload
            .get("certificate")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s.trim_end_matches('=')).ok())
            .ok_or_else(|| {
                Problem::malformed("\"certificate\" must be the base64url DER certificate")
            })?;
        let reason = match payload.get("reason") {
            None | Some(Value::Null) => RevocationReason::Unspecified,
            Some(v) => v
                .as_u64()
                .and_then(|c| u8::try_from(c).ok())
                .and_then(RevocationReason::from_code)
                .ok_or_else(|| {
                    Problem::bad_revocation_reason("reasons accepted: 0, 1, 3, 4, 5, 9")
                })?,
        };
        let (rest, cert) = X509Certificate::from_der(&der)
            .map_err(|_| Problem::malformed("the certificate does not parse"))?;
        if !rest.is_empty() {
            return Err(Problem::malformed("trailing bytes after the certificate"));
        }
        let issuer = self
            .ca
            .authorities()
            .find(|a| a.subject_der() == cert.issuer().as_raw())
            .ok_or_else(|| {
                Problem::unauthorized("the certificate was not issued by this server")
            })?;
        let serial = serial_hex(cert.raw_serial());
        let record = self
            .ca
            .store()
            .certificate(issuer.name(), &serial)
            .await
            .map_err(store_err)?
            .filter(|r| r.der == der)
            .ok_or_else(|| {
                Problem::unauthorized("the certificate was not issued by this server")
            })?;
        match &post.account {
            Some(acct) => {
                if record.requester.as_deref() != Some(&format!("acme:{}", acct.id)) {
                    return Err(Problem::unauthorized(
                        "only the account that ordered a certificate, or its key, may revoke it",
                    ));
                }
            }
            None => {
                if !post.key.matches_spki(cert.public_key()) {
                    return Err(Problem::unauthorized(
                        "the request is signed neither by an account nor by the certificate's key",
                    ));
                }
            }
        }
        if let Status::Revoked(_) = self
            .ca
            .status(issuer.name(), &serial)
            .await
            .map_err(|e| Problem::server_internal(e.to_string()))?
        {
            return Err(Problem::already_revoked(
                "the certificate is revoked already",
            ));
        }
        let by = post
            .account
            .as_ref()
            .map(|a| format!("acme:{}", a.id))
            .unwrap_or_else(|| "certificate key".into());
        match self
            .ca
            .revoke(issuer.name(), &serial, reason, Some(&by))
            .await
        {
            Ok(true) => Ok(Reply::empty(StatusCode::OK)),
            Ok(false) => Err(Problem::already_revoked(
                "the certificate is revoked already",
            )),
            Err(e) => Err(Problem::server_internal(e.to_string())),
        }
    }

    // ------------------------------------------------------------------ ARI

    /// The authority and record an ARI certificate id (RFC 9773 section 4.1) names.
    async fn find_by_ari_id(
        &self,
        id: &str,
    ) -> Result<Option<(String, hexon_core::store::CertificateRecord)>, Problem> {
        let (aki, serial) = id.split_once('.').ok_or_else(|| {
            Problem::malformed("a certificate id is base64url(AKI).base64url(serial)")
        })?;
        let aki = B64
            .decode(aki)
            .map_err(|_| Problem::malformed("the AKI part is not base64url"))?;
        let serial = B64
            .decode(serial)
            .map_err(|_| Problem::malformed("the serial part is not base64url"))?;
        let Some(authority) = self
            .ca
            .authorities()
            .find(|a| a.key_identifier() == aki.as_slice())
        else {
            return Ok(None);
        };
        let record = self
            .ca
            .store()
            .certificate(authority.name(), &serial_hex(&serial))
            .await
            .map_err(store_err)?;
        Ok(record.map(|r| (authority.name().to_owned(), r)))
    }

    async fn renewal_info(&self, id: &str) -> Res {
        let (_, record) = self
            .find_by_ari_id(id)
            .await?
            .ok_or_else(|| Problem::not_found("certificate"))?;
        let (nb, na) = (record.not_before.as_secs(), record.not_after.as_secs());
        let now = UnixTime::now().as_secs();
        let (start, end) = if record.revoked.is_some() {
            // Renew now.
            (now - 3600, now)
        } else {
            let life = na - nb;
            (nb + life * 2 / 3, nb + life * 3 / 4)
        };
        let mut r = Reply::json(
            StatusCode::OK,
            &json!({
                "suggestedWindow": { "start": rfc3339(start), "end": rfc3339(end) },
            }),
        );
        r.retry_after = Some(6 * 3600);
        Ok(r)
    }

    // ------------------------------------------------------------------- KV

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, hexon_core::store::Revision)>, Problem> {
        let Some(entry) = self.kv.get(key).await.map_err(store_err)? else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&entry.value)
            .map_err(|_| Problem::server_internal("stored ACME state does not parse"))?;
        Ok(Some((v, entry.revision)))
    }

    /// Write `v`; with `expected`, only if the entry is still at that
    /// revision (false when it moved on).
    async fn write_json<T: Serialize>(
        &self,
        key: &str,
        v: &T,
        expected: Option<hexon_core::store::Revision>,
        ttl: Duration,
    ) -> Result<bool, Problem> {
        let bytes = serde_json::to_vec(v)
            .map_err(|_| Problem::server_internal("cannot encode ACME state"))?;
        match expected {
            None => self
                .kv
                .put(key, &bytes, ttl)
                .await
                .map(|_| true)
                .map_err(store_err),
            Some(rev) => self
                .kv
                .compare_and_set(key, rev, &bytes, ttl)
                .await
                .map(|r| r.is_some())
                .map_err(store_err),
        }
    }

    /// Count one event under `key` in the current hour; false past `limit`.
    async fn count(&self, key: &str, limit: u32) -> Result<bool, Problem> {
        let hour = UnixTime::now().as_secs() / 3600;
        let key = format!("{key}/{hour}");
        let ttl = Duration::from_secs(3600);
        for attempt in 0..RATE_COUNT_ATTEMPTS {
            if attempt > 0 {
                // Lost a compare-and-set to a concurrent request: back off
                // a random 0–2^n ms (n ≤ 5) so the contenders spread out.
                let mut b = [0u8; 1];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
                let cap = 1u64 << attempt.min(5);
                tokio::time::sleep(Duration::from_micros(u64::from(b[0]) * cap * 1000 / 256)).await;
            }
            match self.read_json::<u32>(&key).await? {
                None => {
                    let put = self
                        .kv
                        .put_if_absent(&key, b"1", ttl)
                        .await
                        .map_err(store_err)?;
                    if put.is_some() {
                        return Ok(true);
                    }
                }
                Some((n, _)) if n >= limit => return Ok(false),
                Some((n, rev)) => {
                    if self.write_json(&key, &(n + 1), Some(rev), ttl).await? {
                        return Ok(true);
                    }
                }
            }
        }
        // Still losing: refuse this request (fail closed) — but as the
        // server being busy, not as the account being over its limit.
        Err(Problem::server_internal(
            "too many concurrent requests for this rate counter; retry shortly",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE))
    }
}

/// Compare-and-set attempts on a rate counter before giving up.
const RATE_COUNT_ATTEMPTS: u32 = 32;

/// An IPv4 address, or the /64 of an IPv6 one.
fn ip_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Check and normalise an identifier: lower-case DNS names (a wildcard
/// only as the whole first label), canonical IP addresses.
fn normalise(id: &Identifier) -> Result<(Identifier, SubjectName), Problem> {
    match id.kind.as_str() {
        "dns" => {
            let n = id.value.to_ascii_lowercase();
            if n.parse::<IpAddr>().is_ok() {
                return Err(Problem::malformed(
                    "an IP address is an \"ip\" identifier, not \"dns\"",
                ));
            }
            crate::profile::check_dns_name(&n)
                .map_err(|e| Problem::rejected_identifier(e.to_string()))?;
            Ok((
                Identifier {
                    kind: "dns".into(),
                    value: n.clone(),
                },
                SubjectName::Dns(n),
            ))
        }
        "ip" => {
            let ip: IpAddr = id.value.parse().map_err(|_| {
                Problem::malformed(format!(
                    "{:?} is not an IP address",
                    id.value.chars().take(60).collect::<String>()
                ))
            })?;
            Ok((
                Identifier {
                    kind: "ip".into(),
                    value: ip.to_string(),
                },
                SubjectName::Ip(ip),
            ))
        }
        other => Err(Problem::unsupported_identifier(format!(
            "identifier type {:?} is not supported (dns, ip)",
            other.chars().take(20).collect::<String>()
        ))),
    }
}
