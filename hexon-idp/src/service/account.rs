//! The account page: password change and reset, TOTP, signing out.

use super::*;

const TOTP_ALREADY_ON: &str = "Two-step verification is already on. To use another authenticator, turn it off first (that asks for a current code), then set it up again.";

impl LoginService {
    /// Whether the session proved who it is recently (any method within
    /// ten minutes): adding a way in (TOTP, a passkey) needs that, so a
    /// stolen or forgotten session cannot make itself permanent.
    pub(super) fn fresh(&self, session: &Session, now: UnixTime) -> bool {
        session
            .identity
            .auth()
            .iter()
            .any(|e| now.since(e.at) <= RESET_WINDOW)
    }

    /// Where to confirm it is you (any method, within ten minutes) before
    /// returning to `path` on the login host.
    pub(super) fn confirm_url(&self, path: &str) -> String {
        let rd = format!("{}{path}", self.inner.origin);
        format!(
            "/login?step_up=1&max_age={}&rd={}",
            RESET_WINDOW.as_secs(),
            percent_encoding::utf8_percent_encode(&rd, percent_encoding::NON_ALPHANUMERIC)
        )
    }

    // ------------------------------------------------------------ account

    pub(super) async fn account(
        &self,
        c: &Ctx,
        error: Option<&str>,
        notice: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let Some((id, session)) = self.sso(c).await? else {
            return Ok(Reply::redirect("/login"));
        };
        Ok(Reply::page(
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            self.account_html(&id, &session, error, notice).await?,
        ))
    }

    pub(super) async fn account_html(
        &self,
        id: &str,
        session: &Session,
        error: Option<&str>,
        notice: Option<&str>,
    ) -> Result<String, StoreError> {
        let subject = session.identity.subject();
        // One read of the user's credentials for everything the page shows.
        let creds = self.inner.store.credentials_of(subject).await?;
        let of = |kind| creds.iter().filter(move |c| c.kind == kind);
        let now = (self.inner.clock)();
        let methods = session
            .identity
            .auth()
            .iter()
            .map(|e| {
                let ago = now.since(e.at).as_secs();
                let ago = if ago < 120 {
                    "just now".to_owned()
                } else if ago < 7200 {
                    format!("{} minutes ago", ago / 60)
                } else {
                    format!("{} hours ago", ago / 3600)
                };
                (e.method.as_str().to_owned(), ago)
            })
            .collect();
        let user = self.inner.users.by_subject(subject);
        let sessions = self.session_rows(subject, session, now).await?;
        Ok(pages::account(
            self.brand(),
            &csrf_token(id),
            &pages::Account {
                username: session.identity.username(),
                display_name: user.as_ref().and_then(|u| u.display_name.as_deref()),
                methods,
                totp: of(CredentialKind::Totp).next().is_some(),
                recovery_left: of(CredentialKind::RecoveryCode).count(),
                sessions,
                passkeys: of(CredentialKind::WebAuthn)
                    .map(|p| {
                        let added = jiff::Timestamp::from_second(p.created_at.as_secs())
                            .map(|t| t.strftime("%Y-%m-%d").to_string())
                            .unwrap_or_default();
                        (p.id.clone(), p.label.clone(), added)
                    })
                    .collect(),
            },
            error,
            notice,
        ))
    }

    /// A POST on the account pages: the session and a good CSRF token.
    pub(super) async fn account_post(
        &self,
        c: &Ctx,
    ) -> Result<Result<(String, Session), Reply>, StoreError> {
        let Some((id, session)) = self.sso(c).await? else {
            return Ok(Err(Reply::redirect("/login")));
        };
        if !self.csrf_ok(c, &id) {
            return Ok(Err(self.forbidden_csrf()));
        }
        Ok(Ok((id, session)))
    }

    /// A new login-host session for the same identity (after a privilege
    /// change), the old one removed.
    pub(super) async fn rotate(
        &self,
        c: &Ctx,
        old_id: &str,
        identity: Identity,
        expires: UnixTime,
    ) -> Result<String, StoreError> {
        self.inner.sessions.remove(old_id).await?;
        let id = random_token();
        self.inner
            .sessions
            .insert(&id, &self.session(identity.clone(), expires, c.now), c.now)
            .await?;
        let host = self.inner.host.clone();
        let entry = self.tracked(c, &id, &identity, &host, expires);
        self.track(
            c,
            identity.subject(),
            Some(entry),
            &[KvSessionStore::digest(old_id)],
        )
        .await?;
        Ok(id)
    }

    pub(super) async fn change_password(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let subject = session.identity.subject().to_owned();
        let Some(user) = self.inner.users.by_subject(&subject) else {
            return Ok(Reply::redirect("/login"));
        };
        let current = c.form.get("current").unwrap_or("");
        let new = c.form.get("new").unwrap_or("");
        let confirm = c.form.get("confirm").unwrap_or("");
        let min = self.inner.config.password.min_length;
        let problem = if new != confirm {
            Some("The new passwords do not match.".to_owned())
        } else if new.chars().count() < min {
            Some(format!("Choose a password of at least {min} characters."))
        } else if new.len() > 1024 {
            Some("That password is too long.".to_owned())
        } else {
            None
        };
        if let Some(p) = problem {
            return self.account(c, Some(&p), None).await;
        }
        let ukey = user_key(&user.username);
        if let Some(wait) = self.inner.throttle.begin(&[&ukey], c.now).await? {
            return self
                .account(
                    c,
                    Some(&format!(
                        "Too many attempts. Wait {} seconds.",
                        wait.as_secs().max(1)
                    )),
                    None,
                )
                .await;
        }
        let (hash, stored_id) = self.password_hash(&user).await?;
        // A reset: signed in by email, a passkey or TOTP within the last
        // ten minutes, a user who forgot the password sets a new one
        // without it.
        let reset = current.is_empty()
            && ["email", "webauthn", "totp"].iter().any(|m| {
                session
                    .identity
                    .last_auth(m)
                    .is_some_and(|at| c.now.since(at) <= RESET_WINDOW)
            });
        let verified = if reset {
            Ok(true)
        } else {
            self.inner.hashes.verify(hash.as_deref(), current).await
        };
        match verified {
            Ok(true) => self.inner.throttle.reset(&ukey).await?,
            Ok(false) => {
                self.audit(
                    c.now,
                    "password.change",
                    Some(&subject),
                    "failure",
                    serde_json::json!({"reason": "wrong_current_password"}),
                )
                .await;
                return self
                    .account(c, Some("Your current password is not right."), None)
                    .await;
            }
            Err(busy) => return self.account(c, Some(&busy.to_string()), None).await,
        }
        let new_hash = match self.inner.hashes.hash(new).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                return Err(StoreError::Invalid {
                    what: "password",
                    reason: e,
                });
            }
            Err(busy) => return self.account(c, Some(&busy.to_string()), None).await,
        };
        match stored_id {
            Some(cid) => {
                self.inner
                    .store
                    .replace_material(&cid, &Material::Hash(new_hash))
                    .await?
            }
            None => {
                self.inner
                    .store
                    .insert_credential(&CredentialRecord {
                        id: format!("pwd_{}", &random_token()[..22]),
                        owner: subject.clone(),
                        kind: CredentialKind::Password,
                        label: "password".into(),
                        lookup: None,
                        material: Material::Hash(new_hash),
                        counter: 0,
                        created_at: c.now,
                        last_used_at: None,
                        expires_at: None,
                    })
                    .await?
            }
        }
        // Every other session of the user ends; this browser gets a new one.
        self.inner.sessions.revoke_subject(&subject).await?;
        self.inner
            .index
            .delete(&digest_hex("sessions", &subject))
            .await?;
        let new_id = self
            .rotate(c, &id, session.identity.clone(), session.expires)
            .await?;
        self.audit(
            c.now,
            "password.change",
            Some(&subject),
            "success",
            serde_json::json!({"other_sessions": "ended", "reset": reset}),
        )
        .await;
        self.account_changed(
            &new_id,
            session,
            "Password changed. You were signed out everywhere else.",
        )
        .await
    }

    /// The account page after a change that rotated the session to `new_id`.
    pub(super) async fn account_changed(
        &self,
        new_id: &str,
        session: Session,
        notice: &str,
    ) -> Result<Reply, StoreError> {
        let session = Session::new(session.identity, session.expires);
        Ok(Reply::page(
            StatusCode::OK,
            self.account_html(new_id, &session, None, Some(notice))
                .await?,
        )
        .cookie(set_cookie(SSO_COOKIE, new_id)))
    }

    pub(super) async fn enrol_page(
        &self,
        c: &Ctx,
        error: Option<&str>,
    ) -> Result<Reply, StoreError> {
        let Some((id, session)) = self.sso(c).await? else {
            return Ok(Reply::redirect("/login"));
        };
        if !self.fresh(&session, c.now) {
            return Ok(Reply::redirect(&self.confirm_url("/account/totp")));
        }
        if self.second_factors(session.identity.subject()).await?.totp {
            return self.account(c, Some(TOTP_ALREADY_ON), None).await;
        }
        let key = digest_hex("enrol", &id);
        let context = format!("hexon totp enrolment\0{key}");
        let secret = match self.inner.flows.get(&key).await? {
            Some(e) => self
                .open::<PendingTotp>(&context, &e.value)
                .map(|p| p.secret),
            None => None,
        };
        let secret = match secret {
            Some(s) => s,
            None => {
                let s = totp::base32(&totp::new_secret());
                let sealed = self.seal(&context, &PendingTotp { secret: s.clone() })?;
                self.inner.flows.put(&key, &sealed, FLOW_TTL).await?;
                s
            }
        };
        let raw = data_encoding::BASE32_NOPAD
            .decode(secret.as_bytes())
            .unwrap_or_default();
        let account = session
            .identity
            .email()
            .unwrap_or(session.identity.username())
            .to_owned();
        let uri = totp::otpauth_uri(&self.brand().name, &account, &raw);
        let qr = totp::qr_svg(&uri).unwrap_or_default();
        Ok(Reply::page(
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            pages::enrol_totp(self.brand(), &csrf_token(&id), &qr, &secret, error),
        ))
    }

    pub(super) async fn enrol_confirm(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        if !self.fresh(&session, c.now) {
            return Ok(Reply::redirect(&self.confirm_url("/account/totp")));
        }
        let subject = session.identity.subject().to_owned();
        if self.second_factors(&subject).await?.totp {
            return self.account(c, Some(TOTP_ALREADY_ON), None).await;
        }
        let key = digest_hex("enrol", &id);
        let context = format!("hexon totp enrolment\0{key}");
        let Some(entry) = self.inner.flows.get(&key).await? else {
            return self
                .enrol_page(c, Some("That took too long; scan this new code."))
                .await;
        };
        let Some(pending) = self.open::<PendingTotp>(&context, &entry.value) else {
            return self
                .enrol_page(c, Some("That took too long; scan this new code."))
                .await;
        };
        let raw = data_encoding::BASE32_NOPAD
            .decode(pending.secret.as_bytes())
            .unwrap_or_default();
        let secs = u64::try_from(c.now.as_secs()).unwrap_or(0);
        let Some(step) = totp::matching_step(&raw, c.form.get("code").unwrap_or(""), secs, 0)
        else {
            return self
                .enrol_page(c, Some("That code is not right. Check the time on your phone and try the next code."))
                .await;
        };
        if !self.inner.flows.delete_if(&key, entry.revision).await? {
            return self
                .enrol_page(c, Some("That took too long; scan this new code."))
                .await;
        }
        let (old_totp, old_recovery) = self.totp_credentials(&subject).await?;
        for cred in old_totp.iter().chain(&old_recovery) {
            self.inner.store.delete_credential(&cred.id).await?;
        }
        self.inner
            .store
            .insert_credential(&CredentialRecord {
                id: format!("totp_{}", &random_token()[..22]),
                owner: subject.clone(),
                kind: CredentialKind::Totp,
                label: "authenticator app".into(),
                lookup: None,
                material: Material::Secret(SecretBytes::new(raw)),
                counter: step,
                created_at: c.now,
                last_used_at: Some(c.now),
                expires_at: None,
            })
            .await?;
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let mut b = [0u8; 10];
            OsRng.fill_bytes(&mut b);
            let code = data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase();
            let shown = format!("{}-{}", &code[..8], &code[8..16]);
            self.inner
                .store
                .insert_credential(&CredentialRecord {
                    id: format!("rc_{}", &random_token()[..22]),
                    owner: subject.clone(),
                    kind: CredentialKind::RecoveryCode,
                    label: "recovery code".into(),
                    lookup: None,
                    material: Material::Hash(digest_hex("recovery", &code[..16])),
                    counter: 0,
                    created_at: c.now,
                    last_used_at: None,
                    expires_at: None,
                })
                .await?;
            codes.push(shown);
        }
        // Privilege change: a new session id. Setting up TOTP is not
        // signing in with it: the session's methods stay as they were.
        let new_id = self
            .rotate(c, &id, session.identity.clone(), session.expires)
            .await?;
        self.audit(
            c.now,
            "totp.enrolled",
            Some(&subject),
            "success",
            serde_json::json!({"recovery_codes": RECOVERY_CODES}),
        )
        .await;
        Ok(
            Reply::page(StatusCode::OK, pages::recovery_codes(self.brand(), &codes))
                .cookie(set_cookie(SSO_COOKIE, &new_id)),
        )
    }

    pub(super) async fn totp_disable(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let subject = session.identity.subject().to_owned();
        let ukey = user_key(session.identity.username());
        if let Some(wait) = self.inner.throttle.begin(&[&ukey], c.now).await? {
            let wait = format!("Too many attempts. Wait {} seconds.", wait.as_secs().max(1));
            return self.account(c, Some(&wait), None).await;
        }
        if self
            .second_factor(&subject, c.form.get("code").unwrap_or(""), c.now)
            .await?
            .is_none()
        {
            return self.account(c, Some("That code is not valid."), None).await;
        }
        self.inner.throttle.reset(&ukey).await?;
        let (totp, recovery) = self.totp_credentials(&subject).await?;
        for cred in totp.iter().chain(&recovery) {
            self.inner.store.delete_credential(&cred.id).await?;
        }
        let new_id = self
            .rotate(c, &id, session.identity.clone(), session.expires)
            .await?;
        self.audit(
            c.now,
            "totp.removed",
            Some(&subject),
            "success",
            serde_json::json!({}),
        )
        .await;
        self.account_changed(&new_id, session, "Two-step verification is off.")
            .await
    }

    // ------------------------------------------------------------ logout

    pub(super) async fn logout_page(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let Some((id, session)) = self.sso(c).await? else {
            return Ok(Reply::redirect("/login?signed_out=1"));
        };
        Ok(Reply::page(
            StatusCode::OK,
            self.account_html(&id, &session, None, Some("Sign out below."))
                .await?,
        ))
    }

    pub(super) async fn logout(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let subject = session.identity.subject().to_owned();
        let everywhere = c.form.get("everywhere") == Some("1");
        if everywhere {
            self.inner.sessions.revoke_subject(&subject).await?;
            self.inner
                .index
                .delete(&digest_hex("sessions", &subject))
                .await?;
        } else {
            // This browser: its sessions on every host.
            self.inner.sessions.remove(&id).await?;
            let family = session.identity.session().unwrap_or_default().to_owned();
            self.end_family(c, &subject, &family).await?;
        }
        self.audit(
            c.now,
            "logout",
            Some(&subject),
            "success",
            serde_json::json!({"everywhere": everywhere}),
        )
        .await;
        Ok(Reply::redirect("/login?signed_out=1").cookie(clear_cookie(SSO_COOKIE)))
    }
}
