//! Sign-in by email code or magic link.

use super::*;

// ------------------------------------------------------------ email

/// An emailed code and link, waiting (under the browser's flow cookie).
#[derive(Serialize, Deserialize)]
pub(super) struct EmailAttempt {
    subject: String,
    /// SHA-256 (hex) of the code and of the link token.
    code: String,
    link: String,
    attempts: u32,
    expires: UnixTime,
}

impl LoginService {
    pub(super) fn email_ttl(&self) -> Duration {
        self.inner
            .config
            .email
            .as_ref()
            .map_or(Duration::from_secs(600), |e| e.ttl.get())
    }

    pub(super) fn email_page(&self, id: &str, status: StatusCode, error: Option<&str>) -> Reply {
        Reply::page(
            status,
            pages::email_sent(
                self.brand(),
                &csrf_token(id),
                self.email_ttl().as_secs() / 60,
                error,
            ),
        )
    }

    pub(super) async fn email_request(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let expired = "Your sign-in page expired. Please sign in again.";
        let Some((id, flow, _)) = self.flow(c).await? else {
            return self.restart(c, expired).await;
        };
        if !self.csrf_ok(c, &id) {
            return Ok(self.forbidden_csrf());
        }
        if !matches!(flow.stage, Stage::Password { subject: None }) {
            return self.restart(c, expired).await;
        }
        let who: String = c
            .form
            .get("who")
            .unwrap_or("")
            .trim()
            .chars()
            .take(256)
            .collect();
        if who.is_empty() {
            return self
                .restart(c, "Enter your username or email address.")
                .await;
        }
        let ukey = user_key(&who);
        let ikey = ip_key(c.ip);
        // Every request counts (`begin`), sent or not: mailing is not free,
        // and asking repeatedly must slow down like guessing does.
        if let Some(wait) = self.inner.throttle.begin(&[&ukey, &ikey], c.now).await? {
            return Ok(self.email_page(
                &id,
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many attempts. Wait {} seconds, then try again.",
                    wait.as_secs().max(1)
                )),
            ));
        }
        let user = self
            .inner
            .users
            .by_name(&who)
            .or_else(|| self.inner.users.by_email(&who))
            .filter(|u| u.email.is_some());
        if let (Some(user), Some(mailer)) = (user, self.inner.mailer.clone()) {
            let code = crate::email::new_code();
            let token = random_token();
            let ttl = self.email_ttl();
            let attempt = EmailAttempt {
                subject: user.subject.clone(),
                code: digest_hex("email code", &code),
                link: digest_hex("email link", &token),
                attempts: 0,
                expires: c.now.saturating_add(ttl),
            };
            let key = digest_hex("email", &id);
            let sealed = self.seal(&format!("hexon email sign-in\0{key}"), &attempt)?;
            self.inner.flows.put(&key, &sealed, ttl).await?;
            let minutes = ttl.as_secs() / 60;
            let body = format!(
                "Your sign-in code for {name}: {code}\n\nOr open this link in the browser where you asked for it:\n{origin}/login/email/link?t={token}\n\nBoth work once, for {minutes} minutes. If you did not ask to sign in, ignore this message.\n",
                name = self.brand().name,
                origin = self.inner.origin,
            );
            let subject_line = format!("Your {} sign-in code", self.brand().name);
            let to = user.email.clone().unwrap_or_default();
            let service = self.clone();
            let now = c.now;
            let who = user.subject.clone();
            // Sent in the background: the answer takes as long whether or
            // not the account exists.
            tokio::spawn(async move {
                let outcome = mailer.send(&to, &subject_line, body).await;
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "sign-in email not sent");
                }
                service
                    .audit(
                        now,
                        "login.email_sent",
                        Some(&who),
                        if outcome.is_ok() {
                            "success"
                        } else {
                            "failure"
                        },
                        serde_json::json!({}),
                    )
                    .await;
            });
        } else {
            self.audit(
                c.now,
                "login.email_requested",
                None,
                "ignored",
                serde_json::json!({"reason": "unknown_user_or_no_email", "who": who, "ip": c.ip.to_string()}),
            )
            .await;
        }
        Ok(self.email_page(&id, StatusCode::OK, None))
    }

    /// The email attempt of this flow.
    pub(super) async fn email_attempt(
        &self,
        id: &str,
    ) -> Result<Option<(EmailAttempt, hexon_core::store::Revision)>, StoreError> {
        let key = digest_hex("email", id);
        let Some(entry) = self.inner.flows.get(&key).await? else {
            return Ok(None);
        };
        Ok(self
            .open::<EmailAttempt>(&format!("hexon email sign-in\0{key}"), &entry.value)
            .map(|a| (a, entry.revision)))
    }

    pub(super) async fn email_code(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let Some((id, flow, flow_revision)) = self.flow(c).await? else {
            return self
                .restart(c, "Your sign-in page expired. Please sign in again.")
                .await;
        };
        if !self.csrf_ok(c, &id) {
            return Ok(self.forbidden_csrf());
        }
        let Some((attempt, revision)) = self.email_attempt(&id).await? else {
            return self
                .restart(c, "That code has expired. Ask for a new one.")
                .await;
        };
        let key = digest_hex("email", &id);
        let code = c.form.get("code").unwrap_or("").trim();
        let presented = digest_hex("email code", code);
        let right =
            code.len() == 6 && bool::from(presented.as_bytes().ct_eq(attempt.code.as_bytes()));
        if !right {
            let attempts = attempt.attempts + 1;
            self.audit(
                c.now,
                "login.failure",
                Some(&attempt.subject),
                "failure",
                serde_json::json!({"method": "email", "reason": "wrong_code", "ip": c.ip.to_string()}),
            )
            .await;
            if attempts >= crate::email::MAX_CODE_ATTEMPTS {
                self.inner.flows.delete_if(&key, revision).await?;
                return self
                    .restart(c, "Too many wrong codes. Ask for a new one.")
                    .await;
            }
            let left = attempt.expires.since(c.now);
            let updated = EmailAttempt {
                attempts,
                ..attempt
            };
            let sealed = self.seal(&format!("hexon email sign-in\0{key}"), &updated)?;
            // Compare-and-set: racing guesses each count.
            if left.is_zero()
                || self
                    .inner
                    .flows
                    .compare_and_set(&key, revision, &sealed, left)
                    .await?
                    .is_none()
            {
                return self
                    .restart(c, "That code has expired. Ask for a new one.")
                    .await;
            }
            return Ok(self.email_page(
                &id,
                StatusCode::UNAUTHORIZED,
                Some("That code is not right."),
            ));
        }
        if !self.inner.flows.delete_if(&key, revision).await? {
            return self
                .restart(c, "That code has expired. Ask for a new one.")
                .await;
        }
        // Email is a first factor: a user with TOTP or a passkey is asked
        // for it next.
        self.after_first_factor(c, &id, flow_revision, &flow, &attempt.subject, "email")
            .await
    }

    pub(super) async fn email_link(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let elsewhere = || {
            self.message(
                StatusCode::BAD_REQUEST,
                "Open the link where you asked for it",
                "This sign-in link works once, for a few minutes, and only in the browser where you asked for it. Ask for a new one there.",
            )
        };
        let Some((id, flow, flow_revision)) = self.flow(c).await? else {
            return Ok(elsewhere());
        };
        let Some((attempt, revision)) = self.email_attempt(&id).await? else {
            return Ok(elsewhere());
        };
        let presented = digest_hex("email link", c.query.get("t").unwrap_or(""));
        if !bool::from(presented.as_bytes().ct_eq(attempt.link.as_bytes())) {
            return Ok(elsewhere());
        }
        if !self
            .inner
            .flows
            .delete_if(&digest_hex("email", &id), revision)
            .await?
        {
            return Ok(elsewhere());
        }
        // Email is a first factor: a user with TOTP or a passkey is asked
        // for it next.
        self.after_first_factor(c, &id, flow_revision, &flow, &attempt.subject, "email")
            .await
    }
}
