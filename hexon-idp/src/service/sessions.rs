//! Where a user is signed in: the per-user session index.

use super::*;

// ------------------------------------------------------------ session list

/// One session as the account page lists it (the index of a user's
/// sessions, kept by the login service).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(super) struct Tracked {
    /// Where the session is stored (SHA-256 of its cookie).
    digest: String,
    /// The sign-in it came from: the login-host session and every host's
    /// session made from it share it.
    family: String,
    host: String,
    created: UnixTime,
    expires: UnixTime,
    ip: String,
    agent: String,
}

/// Sessions remembered per user (the oldest are forgotten first).
const MAX_TRACKED: usize = 64;

impl LoginService {
    pub(super) fn tracked(
        &self,
        c: &Ctx,
        cookie: &str,
        identity: &Identity,
        host: &str,
        expires: UnixTime,
    ) -> Tracked {
        Tracked {
            digest: KvSessionStore::digest(cookie),
            family: identity.session().unwrap_or_default().to_owned(),
            host: host.to_owned(),
            created: c.now,
            expires,
            ip: c.ip.to_string(),
            agent: c
                .parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(120)
                .collect(),
        }
    }

    pub(super) async fn tracked_list(
        &self,
        subject: &str,
    ) -> Result<(String, Option<hexon_core::store::KvEntry>, Vec<Tracked>), StoreError> {
        let key = digest_hex("sessions", subject);
        let entry = self.inner.index.get(&key).await?;
        let list = entry
            .as_ref()
            .and_then(|e| {
                self.open::<Vec<Tracked>>(&format!("hexon session index\0{key}"), &e.value)
            })
            .unwrap_or_default();
        Ok((key, entry, list))
    }

    /// Add `add` to the user's list and drop `drop` (compare-and-set).
    pub(super) async fn track(
        &self,
        c: &Ctx,
        subject: &str,
        add: Option<Tracked>,
        drop: &[String],
    ) -> Result<(), StoreError> {
        let ttl = self.inner.config.session_lifetime.get();
        for _ in 0..16 {
            let (key, entry, mut list) = self.tracked_list(subject).await?;
            list.retain(|t| t.expires > c.now && !drop.contains(&t.digest));
            if let Some(a) = &add {
                list.push(a.clone());
            }
            if list.len() > MAX_TRACKED {
                let extra = list.len() - MAX_TRACKED;
                list.drain(..extra);
            }
            let sealed = self.seal(&format!("hexon session index\0{key}"), &list)?;
            let wrote = match entry {
                None => self.inner.index.put_if_absent(&key, &sealed, ttl).await?,
                Some(e) => {
                    self.inner
                        .index
                        .compare_and_set(&key, e.revision, &sealed, ttl)
                        .await?
                }
            };
            if wrote.is_some() {
                return Ok(());
            }
        }
        Err(StoreError::Conflict {
            what: "session index",
            key: subject.to_owned(),
        })
    }

    /// End every session of one sign-in (`family`) of `subject`.
    pub(super) async fn end_family(
        &self,
        c: &Ctx,
        subject: &str,
        family: &str,
    ) -> Result<usize, StoreError> {
        let (_, _, list) = self.tracked_list(subject).await?;
        let ending: Vec<String> = list
            .iter()
            .filter(|t| !family.is_empty() && t.family == family)
            .map(|t| t.digest.clone())
            .collect();
        for d in &ending {
            self.inner.sessions.remove_digest(d).await?;
        }
        self.track(c, subject, None, &ending).await?;
        Ok(ending.len())
    }

    pub(super) async fn session_rows(
        &self,
        subject: &str,
        current: &Session,
        now: UnixTime,
    ) -> Result<Vec<pages::SessionRow>, StoreError> {
        let (_, _, list) = self.tracked_list(subject).await?;
        let mine = current.identity.session().unwrap_or_default();
        let mut families: Vec<(String, Vec<&Tracked>)> = Vec::new();
        for t in list.iter().filter(|t| t.expires > now) {
            match families.iter_mut().find(|(f, _)| *f == t.family) {
                Some((_, v)) => v.push(t),
                None => families.push((t.family.clone(), vec![t])),
            }
        }
        Ok(families
            .into_iter()
            .rev()
            .map(|(family, entries)| {
                let mut hosts: Vec<&str> = entries.iter().map(|t| t.host.as_str()).collect();
                hosts.sort_unstable();
                hosts.dedup();
                let first = entries.iter().min_by_key(|t| t.created).copied();
                let since = first
                    .and_then(|t| jiff::Timestamp::from_second(t.created.as_secs()).ok())
                    .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
                    .unwrap_or_default();
                pages::SessionRow {
                    current: family == mine,
                    family,
                    hosts: hosts.join(", "),
                    since,
                    from: first.map(|t| t.ip.clone()).unwrap_or_default(),
                    agent: first.map(|t| t.agent.clone()).unwrap_or_default(),
                }
            })
            .collect())
    }

    pub(super) async fn session_end(&self, c: &Ctx) -> Result<Reply, StoreError> {
        let (id, session) = match self.account_post(c).await? {
            Ok(s) => s,
            Err(r) => return Ok(r),
        };
        let subject = session.identity.subject().to_owned();
        let family = c.form.get("family").unwrap_or("").to_owned();
        let ended = self.end_family(c, &subject, &family).await?;
        self.audit(
            c.now,
            "session.end",
            Some(&subject),
            "success",
            serde_json::json!({"sessions": ended}),
        )
        .await;
        if Some(family.as_str()) == session.identity.session() {
            self.inner.sessions.remove(&id).await?;
            return Ok(Reply::redirect("/login?signed_out=1").cookie(clear_cookie(SSO_COOKIE)));
        }
        self.account(
            c,
            None,
            Some(if ended > 0 {
                "Session ended."
            } else {
                "That session had already ended."
            }),
        )
        .await
    }
}
