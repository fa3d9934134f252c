//! Passkey ceremonies (registration, sign-in, second step, step-up).

use super::*;

// ------------------------------------------------------------ passkeys

/// A passkey ceremony between its two halves.
#[derive(Serialize, Deserialize)]
pub(super) enum Ceremony {
    Register {
        subject: String,
        label: String,
        state: webauthn_rs::prelude::PasskeyRegistration,
    },
    /// Sign-in without a username: the passkey says who.
    Discover {
        state: webauthn_rs::prelude::DiscoverableAuthentication,
    },
    /// A known user (second factor, step-up).
    Known {
        subject: String,
        state: webauthn_rs::prelude::PasskeyAuthentication,
    },
}

/// How long a passkey prompt may stay open.
const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);

impl LoginService {
    pub(super) async fn passkeys(
        &self,
        subject: &str,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        Ok(self
            .inner
            .store
            .credentials_of(subject)
            .await?
            .into_iter()
            .filter(|c| c.kind == CredentialKind::WebAuthn)
            .collect())
    }

    pub(super) async fn put_ceremony(
        &self,
        label: &str,
        cookie: &str,
        ceremony: &Ceremony,
    ) -> Result<(), StoreError> {
        let key = digest_hex(label, cookie);
        let sealed = self.seal(&format!("hexon webauthn\0{key}"), ceremony)?;
        self.inner
            .flows
            .put(&key, &sealed, CEREMONY_TTL)
            .await
            .map(|_| ())
    }

    /// The ceremony of this browser, removed (it completes once).
    pub(super) async fn take_ceremony(
        &self,
        label: &str,
        cookie: &str,
    ) -> Result<Option<Ceremony>, StoreError> {
        let key = digest_hex(label, cookie);
        let Some(entry) = self.inner.flows.get(&key).await? else {
            return Ok(None);
        };
        if !self.inner.flows.delete_if(&key, entry.revision).await? {
            return Ok(None);
        }
        Ok(self.open(&format!("hexon webauthn\0{key}"), &entry.value))
    }

    pub(super) fn json_error(status: StatusCode, error: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": error }))
    }

    /// The session adding a passkey: signed in, a good CSRF token, and a
    /// sign-in within ten minutes (else the script is sent to confirm it
    /// is you: it follows `redirect`).
    async fn registering(&self, c: &Ctx) -> Result<Result<(String, Session), Reply>, StoreError> {
        let Ok((id, session)) = self.account_post(c).await? else {
            return Ok(Err(Self::json_error(
                StatusCode::FORBIDDEN,
                "Sign in again, then add the passkey.",
            )));
        };
        if !self.fresh(&session, c.now) {
            return Ok(Err(Reply::json(
                StatusCode::OK,
                &serde_json::json!({ "redirect": self.confirm_url("/account") }),
            )));
        }
        Ok(Ok((id, session)))
    }

    pub(super) async fn passkey_register_begin(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.registering(c).await? {
            Ok(s) => s,
            Err(reply) => return Ok(reply),
        };
        let label: String = serde_json::from_slice::<serde_json::Value>(&c.body)
            .ok()
            .and_then(|v| {
                v.get("label")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default()
            .trim()
            .chars()
            .filter(|ch| !ch.is_control())
            .take(64)
            .collect();
        let label = if label.is_empty() {
            "passkey".to_owned()
        } else {
            label
        };
        let subject = session.identity.subject().to_owned();
        let exclude: Vec<_> = self
            .passkeys(&subject)
            .await?
            .iter()
            .filter_map(crate::webauthn::passkey_of)
            .map(|p| p.cred_id().clone())
            .collect();
        let display = self
            .inner
            .users
            .by_subject(&subject)
            .and_then(|u| u.display_name)
            .unwrap_or_else(|| session.identity.username().to_owned());
        let (mut ccr, state) = match self.inner.webauthn.webauthn().start_passkey_registration(
            crate::webauthn::user_handle(&subject),
            session.identity.username(),
            &display,
            Some(exclude),
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "passkey registration could not start");
                return Ok(Self::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Passkeys are not available right now.",
                ));
            }
        };
        crate::webauthn::prefer_discoverable(&mut ccr);
        self.put_ceremony(
            "webauthn-register",
            &id,
            &Ceremony::Register {
                subject,
                label,
                state,
            },
        )
        .await?;
        Ok(Reply::json(
            StatusCode::OK,
            &serde_json::to_value(&ccr).unwrap_or_default(),
        ))
    }

    pub(super) async fn passkey_register_finish(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.registering(c).await? {
            Ok(s) => s,
            Err(reply) => return Ok(reply),
        };
        let Some(Ceremony::Register {
            subject,
            label,
            state,
        }) = self.take_ceremony("webauthn-register", &id).await?
        else {
            return Ok(Self::json_error(
                StatusCode::BAD_REQUEST,
                "That took too long. Try again.",
            ));
        };
        if subject != session.identity.subject() {
            return Ok(Self::json_error(
                StatusCode::BAD_REQUEST,
                "That took too long. Try again.",
            ));
        }
        let Ok(reg) =
            serde_json::from_slice::<webauthn_rs::prelude::RegisterPublicKeyCredential>(&c.body)
        else {
            return Ok(Self::json_error(
                StatusCode::BAD_REQUEST,
                "The browser's answer could not be read.",
            ));
        };
        let passkey = match self
            .inner
            .webauthn
            .webauthn()
            .finish_passkey_registration(&reg, &state)
        {
            Ok(p) => p,
            Err(e) => {
                self.audit(
                    c.now,
                    "webauthn.register",
                    Some(&subject),
                    "failure",
                    serde_json::json!({"reason": e.to_string()}),
                )
                .await;
                return Ok(Self::json_error(
                    StatusCode::BAD_REQUEST,
                    "The passkey could not be verified. Try again.",
                ));
            }
        };
        let material = serde_json::to_vec(&passkey).map_err(|e| StoreError::Invalid {
            what: "passkey",
            reason: e.to_string(),
        })?;
        self.inner
            .store
            .insert_credential(&CredentialRecord {
                id: format!("wa_{}", &random_token()[..22]),
                owner: subject.clone(),
                kind: CredentialKind::WebAuthn,
                label: label.clone(),
                lookup: Some(crate::webauthn::credential_lookup(passkey.cred_id())),
                material: Material::Public(material),
                counter: 0,
                created_at: c.now,
                last_used_at: None,
                expires_at: None,
            })
            .await?;
        // A new way in is a privilege change: a new session id.
        let new_id = self
            .rotate(c, &id, session.identity.clone(), session.expires)
            .await?;
        self.audit(
            c.now,
            "webauthn.registered",
            Some(&subject),
            "success",
            serde_json::json!({"label": label}),
        )
        .await;
        Ok(
            Reply::json(StatusCode::OK, &serde_json::json!({"redirect": "/account"}))
                .cookie(set_cookie(SSO_COOKIE, &new_id)),
        )
    }

    pub(super) async fn passkey_remove(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        if !self.fresh(&session, c.now) {
            return Ok(Reply::redirect(&self.confirm_url("/account")));
        }
        let subject = session.identity.subject().to_owned();
        let wanted = c.form.get("id").unwrap_or("");
        let Some(cred) = self
            .passkeys(&subject)
            .await?
            .into_iter()
            .find(|p| p.id == wanted)
        else {
            return self.account(c, Some("No such passkey."), None).await;
        };
        self.inner.store.delete_credential(&cred.id).await?;
        let new_id = self
            .rotate(c, &id, session.identity.clone(), session.expires)
            .await?;
        self.audit(
            c.now,
            "webauthn.removed",
            Some(&subject),
            "success",
            serde_json::json!({"label": cred.label}),
        )
        .await;
        self.account_changed(&new_id, session, "Passkey removed.")
            .await
    }

    pub(super) async fn passkey_login_begin(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let Some((id, flow, _)) = self.flow(c).await? else {
            return Ok(Self::json_error(
                StatusCode::BAD_REQUEST,
                "Your sign-in page expired. Reload the page.",
            ));
        };
        if !self.csrf_ok(c, &id) {
            return Ok(Self::json_error(
                StatusCode::FORBIDDEN,
                "Your sign-in page expired. Reload the page.",
            ));
        }
        let known = match &flow.stage {
            Stage::Password { subject } => subject.clone(),
            Stage::SecondFactor { subject, .. } => Some(subject.clone()),
        };
        let wa = self.inner.webauthn.webauthn();
        let (rcr, ceremony) = match known {
            None => match wa.start_discoverable_authentication() {
                Ok((mut rcr, state)) => {
                    // A button press, not the autofill ("conditional") UI.
                    rcr.mediation = None;
                    (rcr, Ceremony::Discover { state })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "passkey sign-in could not start");
                    return Ok(Self::json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Passkeys are not available right now.",
                    ));
                }
            },
            Some(subject) => {
                let keys: Vec<_> = self
                    .passkeys(&subject)
                    .await?
                    .iter()
                    .filter_map(crate::webauthn::passkey_of)
                    .collect();
                if keys.is_empty() {
                    return Ok(Self::json_error(
                        StatusCode::BAD_REQUEST,
                        "No passkey is set up for this account.",
                    ));
                }
                match wa.start_passkey_authentication(&keys) {
                    Ok((rcr, state)) => (rcr, Ceremony::Known { subject, state }),
                    Err(e) => {
                        tracing::warn!(error = %e, "passkey authentication could not start");
                        return Ok(Self::json_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Passkeys are not available right now.",
                        ));
                    }
                }
            }
        };
        self.put_ceremony("webauthn-login", &id, &ceremony).await?;
        Ok(Reply::json(
            StatusCode::OK,
            &serde_json::to_value(&rcr).unwrap_or_default(),
        ))
    }

    pub(super) async fn passkey_login_finish(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let expired = || {
            Self::json_error(
                StatusCode::BAD_REQUEST,
                "Your sign-in page expired. Reload the page.",
            )
        };
        let Some((id, flow, revision)) = self.flow(c).await? else {
            return Ok(expired());
        };
        if !self.csrf_ok(c, &id) {
            return Ok(Self::json_error(
                StatusCode::FORBIDDEN,
                "Your sign-in page expired. Reload the page.",
            ));
        }
        let ikey = ip_key(c.ip);
        // The account is known when the flow names it (second step,
        // step-up): count there too.
        let flow_subject = match &flow.stage {
            Stage::Password { subject } => subject.clone(),
            Stage::SecondFactor { subject, .. } => Some(subject.clone()),
        };
        let ukey = flow_subject
            .as_deref()
            .and_then(|s| self.inner.users.by_subject(s))
            .map(|u| user_key(&u.username));
        // A sign-in without a username is a first step: the address
        // counts. A second step or step-up counts against the account.
        let keys: Vec<&str> = match ukey.as_deref() {
            Some(u) => vec![u],
            None => vec![ikey.as_str()],
        };
        if let Some(wait) = self.inner.throttle.begin(&keys, c.now).await? {
            return Ok(Self::json_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many attempts. Wait {} seconds, then try again.",
                    wait.as_secs().max(1)
                ),
            ));
        }
        // Single use: a replayed assertion finds no ceremony.
        let Some(ceremony) = self.take_ceremony("webauthn-login", &id).await? else {
            return Ok(expired());
        };
        // A step-up (no first factor in this flow) needs its login-host
        // session still there.
        let step_up_alive = match &flow.stage {
            Stage::Password { subject: Some(s) }
            | Stage::SecondFactor {
                subject: s,
                first: None,
                ..
            } => self
                .sso(c)
                .await?
                .is_some_and(|(_, session)| session.identity.subject() == s),
            _ => true,
        };
        if !step_up_alive {
            return Ok(expired());
        }
        // (Attempts were counted by `begin`; a completed login takes its
        // count back.)
        let refused = |why: &'static str| async move {
            self.audit(
                c.now,
                "login.failure",
                None,
                "failure",
                serde_json::json!({"method": "webauthn", "reason": why, "ip": c.ip.to_string()}),
            )
            .await;
            Ok::<Reply, StoreError>(Self::json_error(
                StatusCode::UNAUTHORIZED,
                "That passkey could not sign you in.",
            ))
        };
        let Ok(cred) = serde_json::from_slice::<webauthn_rs::prelude::PublicKeyCredential>(&c.body)
        else {
            return refused("unreadable_assertion").await;
        };
        let lookup = crate::webauthn::credential_lookup(cred.get_credential_id());
        let Some(record) = self
            .inner
            .store
            .credential_by_lookup(CredentialKind::WebAuthn, &lookup)
            .await?
        else {
            return refused("unknown_credential").await;
        };
        let Some(mut passkey) = crate::webauthn::passkey_of(&record) else {
            return refused("unreadable_credential").await;
        };
        if self.inner.users.by_subject(&record.owner).is_none() {
            return refused("unknown_or_disabled_user").await;
        }
        // The ceremony must be the flow's: a sign-in without a username
        // only where no user is named yet, else the named user's.
        let matches_flow = match (&ceremony, &flow_subject) {
            (Ceremony::Discover { .. }, None) => true,
            (Ceremony::Known { subject, .. }, Some(named)) => subject == named,
            _ => false,
        };
        if !matches_flow {
            return refused("ceremony_not_of_this_flow").await;
        }
        let wa = self.inner.webauthn.webauthn();
        let result = match ceremony {
            Ceremony::Discover { state } => {
                match wa.identify_discoverable_authentication(&cred) {
                    Ok((handle, _)) if handle == crate::webauthn::user_handle(&record.owner) => {}
                    _ => return refused("user_handle_mismatch").await,
                }
                wa.finish_discoverable_authentication(&cred, state, &[(&passkey).into()])
            }
            Ceremony::Known { subject, state } => {
                if subject != record.owner {
                    return refused("credential_of_another_user").await;
                }
                wa.finish_passkey_authentication(&cred, &state)
            }
            Ceremony::Register { .. } => return Ok(expired()),
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(error = %e, "passkey assertion refused");
                return refused("assertion_invalid").await;
            }
        };
        // The sign count moves forward, once (compare-and-set).
        let presented = result.counter();
        if !crate::webauthn::counter_ok(record.counter, presented)
            || !self
                .inner
                .store
                .advance_counter(&record.id, record.counter, u64::from(presented), c.now)
                .await?
        {
            self.audit(
                c.now,
                "webauthn.counter_refused",
                Some(&record.owner),
                "denied",
                serde_json::json!({"stored": record.counter, "presented": presented, "credential": record.label}),
            )
            .await;
            return refused("sign_count_not_increasing").await;
        }
        if passkey.update_credential(&result) == Some(true) {
            if let Ok(json) = serde_json::to_vec(&passkey) {
                self.inner
                    .store
                    .replace_material(&record.id, &Material::Public(json))
                    .await?;
            }
        }
        let mut events = vec![("webauthn", c.now)];
        if let Stage::SecondFactor {
            first: Some((m, at)),
            ..
        } = &flow.stage
        {
            events.insert(0, (m.as_str(), UnixTime::from_secs(*at)));
        }
        let reply = self
            .complete(c, &id, revision, &flow, &record.owner, &events)
            .await?;
        Ok(reply.into_json("Your sign-in page expired. Reload the page."))
    }
}
