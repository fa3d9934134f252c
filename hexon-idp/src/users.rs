//! Who can log in: the directory, and where passwords come from.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hexon_core::config::Config;
use hexon_core::directory::Directory;
use hexon_core::identity::IdentityBuilder;

/// A user as the login service needs them.
#[derive(Clone, Debug)]
pub struct LocalUser {
    /// Stable subject id.
    pub subject: String,
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Email address (where sign-in codes go).
    pub email: Option<String>,
    /// The initial password hash from configuration (a password set on the
    /// login host, in the durable store, takes precedence).
    pub configured_hash: Option<String>,
}

/// Looks users up. Disabled users are not found.
pub trait Users: Send + Sync + 'static {
    /// The enabled user with this login name (exact, after trimming).
    fn by_name(&self, username: &str) -> Option<LocalUser>;
    /// The enabled user with this subject.
    fn by_subject(&self, subject: &str) -> Option<LocalUser>;
    /// The enabled user with this email address (ASCII case-insensitive),
    /// if exactly one has it.
    fn by_email(&self, email: &str) -> Option<LocalUser> {
        let _ = email;
        None
    }
    /// A fresh identity builder for the enabled user `subject` (groups
    /// resolved now), without authentication events.
    fn identity(&self, subject: &str) -> Option<IdentityBuilder>;
}

/// The local users of a [`Config`] (`[[user]]`, `[[group]]`), swapped on
/// reload.
#[derive(Clone, Default)]
pub struct ConfigUsers(Arc<RwLock<Arc<Snapshot>>>);

#[derive(Default)]
struct Snapshot {
    directory: Option<Directory>,
    hashes: HashMap<String, String>,
}

impl std::fmt::Debug for ConfigUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigUsers").finish_non_exhaustive()
    }
}

impl ConfigUsers {
    /// The users of `config`.
    pub fn new(config: &Config) -> ConfigUsers {
        let users = ConfigUsers::default();
        users.set(config);
        users
    }

    /// Replace the users with those of `config` (after a reload).
    pub fn set(&self, config: &Config) {
        // An invalid directory cannot come from a validated config; if it
        // did, nobody can log in (fail closed).
        let snapshot = Snapshot {
            directory: config.directory().ok(),
            hashes: config
                .users
                .iter()
                .filter_map(|u| Some((u.name.clone(), u.password_hash.clone()?)))
                .collect(),
        };
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    fn current(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Users for ConfigUsers {
    fn by_name(&self, username: &str) -> Option<LocalUser> {
        // Local users' subject is their name.
        self.by_subject(username.trim())
    }

    fn by_subject(&self, subject: &str) -> Option<LocalUser> {
        let s = self.current();
        let user = s.directory.as_ref()?.user(subject)?;
        if user.is_disabled() {
            return None;
        }
        Some(LocalUser {
            subject: user.subject().to_string(),
            username: user.username().value.to_string(),
            display_name: user.display_name().map(|d| d.value.to_string()),
            email: user.email().map(|e| e.value.to_string()),
            configured_hash: s.hashes.get(subject).cloned(),
        })
    }

    fn by_email(&self, email: &str) -> Option<LocalUser> {
        let s = self.current();
        let email = email.trim();
        let mut found = s
            .directory
            .as_ref()?
            .users()
            .iter()
            .filter(|u| !u.is_disabled())
            .filter(|u| {
                u.email()
                    .is_some_and(|e| e.value.eq_ignore_ascii_case(email))
            });
        let user = found.next()?;
        if found.next().is_some() {
            return None; // ambiguous: nobody
        }
        let subject = user.subject().to_string();
        drop(s);
        self.by_subject(&subject)
    }

    fn identity(&self, subject: &str) -> Option<IdentityBuilder> {
        self.current()
            .directory
            .as_ref()?
            .identity_builder(subject)
            .ok()
    }
}
