//! Directory events and the shared, subscribable directory handle.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::error::DirectoryError;
use super::model::{Change, SourceSnapshot};
use super::{Directory, SyncOptions, Update};

/// A user attribute, as reported by [`DirectoryEvent::UserUpdated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UserAttribute {
    /// The login name.
    Username,
    /// The email address.
    Email,
    /// The display name.
    DisplayName,
}

/// Something that changed in the directory, computed by diffing two
/// snapshots. Other components subscribe to these (session revocation
/// reacts to [`UserDisabled`](Self::UserDisabled),
/// [`UserDeleted`](Self::UserDeleted) and
/// [`MembershipChanged`](Self::MembershipChanged)).
///
/// Events come sorted: users by subject id, then groups by name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryEvent {
    /// A user appeared.
    UserCreated {
        /// Subject id.
        subject: Arc<str>,
        /// Username.
        username: Arc<str>,
    },
    /// A user disappeared from every source.
    UserDeleted {
        /// Subject id.
        subject: Arc<str>,
        /// Username it had.
        username: Arc<str>,
    },
    /// A user was disabled.
    UserDisabled {
        /// Subject id.
        subject: Arc<str>,
        /// Username.
        username: Arc<str>,
    },
    /// A disabled user was enabled again.
    UserEnabled {
        /// Subject id.
        subject: Arc<str>,
        /// Username.
        username: Arc<str>,
    },
    /// Some of a user's attributes changed value.
    UserUpdated {
        /// Subject id.
        subject: Arc<str>,
        /// Which attributes.
        attributes: Vec<UserAttribute>,
    },
    /// A user's groups changed (direct, effective, or both).
    MembershipChanged {
        /// Subject id.
        subject: Arc<str>,
        /// Effective groups gained, sorted.
        added: Vec<Arc<str>>,
        /// Effective groups lost, sorted.
        removed: Vec<Arc<str>>,
        /// Direct groups gained, sorted.
        direct_added: Vec<Arc<str>>,
        /// Direct groups lost, sorted.
        direct_removed: Vec<Arc<str>>,
    },
    /// A group appeared.
    GroupCreated {
        /// Group name.
        name: Arc<str>,
    },
    /// A group disappeared from every source.
    GroupDeleted {
        /// Group name.
        name: Arc<str>,
    },
}

impl DirectoryEvent {
    /// The subject id of the user the event is about, if it is about a user.
    pub fn subject(&self) -> Option<&Arc<str>> {
        match self {
            DirectoryEvent::UserCreated { subject, .. }
            | DirectoryEvent::UserDeleted { subject, .. }
            | DirectoryEvent::UserDisabled { subject, .. }
            | DirectoryEvent::UserEnabled { subject, .. }
            | DirectoryEvent::UserUpdated { subject, .. }
            | DirectoryEvent::MembershipChanged { subject, .. } => Some(subject),
            DirectoryEvent::GroupCreated { .. } | DirectoryEvent::GroupDeleted { .. } => None,
        }
    }

    /// Whether sessions of the user should be re-checked or revoked: the
    /// user was disabled or deleted, or lost an effective group.
    pub fn revokes_access(&self) -> bool {
        match self {
            DirectoryEvent::UserDeleted { .. } | DirectoryEvent::UserDisabled { .. } => true,
            DirectoryEvent::MembershipChanged { removed, .. } => !removed.is_empty(),
            _ => false,
        }
    }
}

/// Receives directory events after the new snapshot is in place.
///
/// Closures `Fn(&DirectoryEvent) + Send + Sync` implement it. A subscriber
/// runs on the thread that applied the update, while further updates on the
/// same [`SharedDirectory`] wait: keep it short (hand work to a queue), do not
/// panic, and do not apply updates to the same handle from inside it
/// ([`SharedDirectory::load`] is fine).
pub trait Subscriber: Send + Sync {
    /// Called once per event, in order.
    fn on_event(&self, event: &DirectoryEvent);
}

impl<F> Subscriber for F
where
    F: Fn(&DirectoryEvent) + Send + Sync,
{
    fn on_event(&self, event: &DirectoryEvent) {
        self(event);
    }
}

/// Identifies a subscription, to cancel it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Subscribers = Vec<(SubscriptionId, Arc<dyn Subscriber>)>;

/// A directory shared between threads: readers take the current snapshot
/// (an `Arc` clone under a short read lock), writers compute the next one
/// off-lock, swap it in, then notify subscribers.
///
/// Updates are serialized, so none is lost and subscribers see events in
/// the order the snapshots were installed.
pub struct SharedDirectory {
    current: RwLock<Arc<Directory>>,
    writer: Mutex<()>,
    subscribers: RwLock<Subscribers>,
    next_id: AtomicU64,
}

impl fmt::Debug for SharedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subscribers = self
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("SharedDirectory")
            .field("current", &self.load())
            .field("subscribers", &subscribers)
            .finish()
    }
}

impl SharedDirectory {
    /// Share a directory.
    pub fn new(directory: Directory) -> Self {
        SharedDirectory {
            current: RwLock::new(Arc::new(directory)),
            writer: Mutex::new(()),
            subscribers: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Register a subscriber for the events of later updates.
    pub fn subscribe<S: Subscriber + 'static>(&self, subscriber: S) -> SubscriptionId {
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, Arc::new(subscriber)));
        id
    }

    /// Cancel a subscription. Returns whether it existed.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut subs = self
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = subs.len();
        subs.retain(|(i, _)| *i != id);
        subs.len() != before
    }

    /// Compute the next snapshot from the current one with `f`, install it,
    /// then notify subscribers of its events. Nothing changes if `f` fails.
    pub fn update<F>(&self, f: F) -> Result<Update, DirectoryError>
    where
        F: FnOnce(&Directory) -> Result<Update, DirectoryError>,
    {
        let _serial = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let base = self.load();
        let update = f(&base)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = update.directory.clone();
        if !update.events.is_empty() {
            let subs: Vec<Arc<dyn Subscriber>> = self
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            for event in &update.events {
                for s in &subs {
                    s.on_event(event);
                }
            }
        }
        Ok(update)
    }

    /// [`Directory::sync`] on the current snapshot, installed and notified.
    pub fn sync(
        &self,
        source: &str,
        snapshot: SourceSnapshot,
        options: SyncOptions,
    ) -> Result<Update, DirectoryError> {
        self.update(|d| d.sync(source, snapshot, options))
    }

    /// [`Directory::apply`] on the current snapshot, installed and notified.
    pub fn apply<I>(&self, source: &str, changes: I) -> Result<Update, DirectoryError>
    where
        I: IntoIterator<Item = Change>,
    {
        self.update(|d| d.apply(source, changes))
    }
}
