//! Users, groups and nested groups, merged from several sources.
//!
//! A [`Directory`] is an immutable snapshot. Every source (LDAP, SCIM, a local
//! store, ...) delivers its own [`SourceSnapshot`] of users, groups and
//! memberships; [`Directory::sync`] replaces one source's snapshot and
//! [`Directory::apply`] applies incremental [`Change`]s to it. Both return an
//! [`Update`]: the next `Directory` (the host swaps the `Arc`, for instance
//! with [`SharedDirectory`]) and the [`DirectoryEvent`]s that describe the
//! difference. Nothing is read from the network or the clock here.
//!
//! # Nested groups
//!
//! A group can be a member of another group; its members inherit the outer
//! group. The group graph must be a DAG: cycles are refused with the cycle
//! in the error ([`DirectoryError::Cycle`]), and nesting deeper than
//! [`DirectoryConfig::max_depth`] (default 32) is refused
//! ([`DirectoryError::TooDeep`]). The transitive closure is computed when a
//! snapshot is built — groups interned to integers, ordered topologically,
//! each group's ancestor set computed once, each user's effective groups
//! stored as a sorted list (shared between users with the same direct
//! groups) — so a lookup never walks the graph. Direct and inherited
//! memberships are kept apart: [`User::direct_groups`], [`User::groups`],
//! [`Directory::membership`].
//!
//! # Several sources
//!
//! - Users are matched across sources by **subject id**, groups by **name**.
//! - Per attribute (username, email, display name, disabled flag, group
//!   display name), the **highest-priority source that has a value wins**,
//!   and the merged value remembers its source ([`Sourced`]).
//! - Memberships are unioned across sources, or, with
//!   [`MembershipMode::Override`], taken for each user from the
//!   highest-priority membership source that knows the user. Group nesting is
//!   always unioned.
//! - **Unknown references are refused**: a membership must name a user and a
//!   group that some source defines ([`DirectoryError::UnknownUser`],
//!   [`DirectoryError::UnknownGroup`]). A user needs a username from some
//!   source; two users may not share one.
//!
//! # Deletion safety
//!
//! A sync that would delete more than [`DirectoryConfig::max_delete_ratio`]
//! (default 10%) of the source's users or of its groups is refused with a
//! [`DeletionReport`] unless forced ([`SyncOptions::forced`]). The classic
//! case — an empty export over a populated source — is refused. Incremental
//! changes are deliberate and not subject to the ratio.
//!
//! # Example
//!
//! ```
//! use hexon_core::directory::{
//!     Directory, DirectoryConfig, DirectoryEvent, GroupRecord, SourceSnapshot, SyncOptions,
//!     UserRecord,
//! };
//! use hexon_core::UnixTime;
//!
//! let dir = Directory::new(DirectoryConfig::new().source("ldap", 10))?;
//! let snapshot = SourceSnapshot::new()
//!     .with_user(UserRecord::new("u-1").username("alice").email("alice@example.com"))
//!     .with_group(GroupRecord::new("backend"))
//!     .with_group(GroupRecord::new("eng"))
//!     .with_group(GroupRecord::new("staff"))
//!     .with_nested("backend", "eng") // backend is a member of eng
//!     .with_nested("eng", "staff")
//!     .with_member("u-1", "backend");
//! let update = dir.sync("ldap", snapshot, SyncOptions::new())?;
//! assert!(matches!(&update.events[0], DirectoryEvent::UserCreated { .. }));
//! let dir = update.directory;
//!
//! let groups = dir.effective_groups("u-1").unwrap();
//! assert_eq!(groups.iter().map(|g| &**g).collect::<Vec<_>>(), ["backend", "eng", "staff"]);
//! let how = dir.membership("u-1", "staff").unwrap();
//! assert!(!how.direct);
//! assert_eq!(&*how.via[0], "backend");
//!
//! let identity = dir
//!     .identity_builder("u-1")?
//!     .auth("password", UnixTime::from_secs(1_700_000_000))?
//!     .build()?;
//! assert!(identity.in_group("staff"));
//! assert_eq!(identity.email(), Some("alice@example.com"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod events;
mod graph;
mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

pub use error::{DeletionReport, DirectoryError, GroupPath, NameKind};
pub use events::{DirectoryEvent, SharedDirectory, Subscriber, SubscriptionId, UserAttribute};
pub use model::{
    Change, DirectoryConfig, Group, GroupRecord, Membership, MembershipMode, SourceConfig,
    SourceId, SourceSnapshot, Sourced, User, UserRecord,
};

use crate::identity::{Identity, IdentityBuilder};
use error::{LIST_LIMIT, check_name};
use graph::Closure;

/// Options for [`Directory::sync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncOptions {
    /// Apply even if the sync deletes more than the configured share.
    pub force: bool,
}

impl SyncOptions {
    /// Not forced.
    pub fn new() -> Self {
        Self::default()
    }
    /// Forced past the deletion limit (after an operator confirmed it).
    pub fn forced() -> Self {
        SyncOptions { force: true }
    }
    /// Set whether the sync is forced.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
}

/// The result of a sync or a change: the next directory and what changed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Update {
    /// The next snapshot, to install in place of the current one.
    pub directory: Arc<Directory>,
    /// What changed, sorted (users by subject id, then groups by name).
    /// Empty when nothing changed.
    pub events: Vec<DirectoryEvent>,
    /// For a sync: what it deleted from the source, against the limit.
    pub deletions: Option<DeletionReport>,
}

/// An immutable directory snapshot: configuration, each source's snapshot,
/// and the merged users and groups with resolved memberships.
///
/// Cloning is cheap (three `Arc`s).
#[derive(Clone)]
pub struct Directory {
    config: Arc<DirectoryConfig>,
    sources: Arc<BTreeMap<SourceId, Arc<SourceSnapshot>>>,
    view: Arc<View>,
}

/// The merged, resolved data.
#[derive(Default)]
struct View {
    /// Sorted by subject id.
    users: Vec<User>,
    by_username: HashMap<Arc<str>, u32>,
    /// Sorted by name; the index is the group's id in `closure`.
    groups: Vec<Group>,
    closure: Closure,
    /// Users that are direct members of each group, sorted by index.
    direct_users: Vec<Box<[u32]>>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("users", &self.view.users.len())
            .field("groups", &self.view.groups.len())
            .finish()
    }
}

impl Directory {
    /// An empty directory with a validated configuration.
    pub fn new(config: DirectoryConfig) -> Result<Self, DirectoryError> {
        validate_config(&config)?;
        Ok(Directory {
            config: Arc::new(config),
            sources: Arc::default(),
            view: Arc::default(),
        })
    }

    /// Build a directory from a configuration and one full snapshot per
    /// source, without deletion checks (for start-up from persisted state).
    pub fn from_snapshots<I>(config: DirectoryConfig, snapshots: I) -> Result<Self, DirectoryError>
    where
        I: IntoIterator<Item = (SourceId, SourceSnapshot)>,
    {
        let dir = Directory::new(config)?;
        let mut sources = BTreeMap::new();
        for (id, snap) in snapshots {
            let sc = dir.source_config(id.as_str())?;
            validate_snapshot(&dir.config, sc, &snap)?;
            sources.insert(id, Arc::new(snap));
        }
        let view = build_view(&dir.config, &sources)?;
        Ok(Directory {
            config: dir.config,
            sources: Arc::new(sources),
            view: Arc::new(view),
        })
    }

    /// Replace `source`'s snapshot with a full new one (a sync).
    ///
    /// Refused with [`DirectoryError::DeletionRefused`] when it deletes more
    /// than [`DirectoryConfig::max_delete_ratio`] of the source's users or
    /// groups, unless `options` force it. On success the update carries the
    /// deletion report either way.
    pub fn sync(
        &self,
        source: &str,
        snapshot: SourceSnapshot,
        options: SyncOptions,
    ) -> Result<Update, DirectoryError> {
        let sc = self.source_config(source)?;
        validate_snapshot(&self.config, sc, &snapshot)?;
        let report = deletion_report(
            &self.config,
            &sc.id,
            self.sources.get(&sc.id).map(|s| &**s),
            &snapshot,
            options.force,
        );
        if report.exceeds_limit() && !options.force {
            return Err(DirectoryError::DeletionRefused(Box::new(report)));
        }
        let mut update = self.replace_source(sc.id.clone(), snapshot)?;
        update.deletions = Some(report);
        Ok(update)
    }

    /// Apply incremental changes to `source`'s snapshot, atomically: either
    /// all apply or none. Not subject to the deletion ratio.
    pub fn apply<I>(&self, source: &str, changes: I) -> Result<Update, DirectoryError>
    where
        I: IntoIterator<Item = Change>,
    {
        let sc = self.source_config(source)?;
        let mut snapshot = self
            .sources
            .get(&sc.id)
            .map(|s| (**s).clone())
            .unwrap_or_default();
        for change in changes {
            snapshot.apply(change);
        }
        validate_snapshot(&self.config, sc, &snapshot)?;
        self.replace_source(sc.id.clone(), snapshot)
    }

    fn replace_source(
        &self,
        id: SourceId,
        snapshot: SourceSnapshot,
    ) -> Result<Update, DirectoryError> {
        let mut sources = (*self.sources).clone();
        sources.insert(id, Arc::new(snapshot));
        let view = build_view(&self.config, &sources)?;
        let events = diff(&self.view, &view);
        Ok(Update {
            directory: Arc::new(Directory {
                config: self.config.clone(),
                sources: Arc::new(sources),
                view: Arc::new(view),
            }),
            events,
            deletions: None,
        })
    }

    fn source_config(&self, source: &str) -> Result<&SourceConfig, DirectoryError> {
        self.config
            .sources
            .iter()
            .find(|s| s.id.as_str() == source)
            .ok_or_else(|| DirectoryError::UnknownSource(SourceId::from(source)))
    }

    /// The configuration.
    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// The snapshot `source` last delivered, if any.
    pub fn source(&self, source: &str) -> Option<&SourceSnapshot> {
        self.sources.get(&SourceId::from(source)).map(|s| &**s)
    }

    /// All users, sorted by subject id.
    pub fn users(&self) -> &[User] {
        &self.view.users
    }

    /// All groups, sorted by name.
    pub fn groups(&self) -> &[Group] {
        &self.view.groups
    }

    /// The user with this subject id. O(log n).
    pub fn user(&self, subject: &str) -> Option<&User> {
        self.user_index(subject)
            .and_then(|i| self.view.users.get(i))
    }

    /// The user with this username (exact, case-sensitive match). O(1).
    pub fn user_by_username(&self, username: &str) -> Option<&User> {
        self.view
            .by_username
            .get(username)
            .and_then(|&i| self.view.users.get(i as usize))
    }

    /// The group with this name. O(log n).
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.group_id(name)
            .and_then(|g| self.view.groups.get(g as usize))
    }

    /// A user's effective groups (direct and inherited), sorted, ready for
    /// an [`Identity`].
    pub fn effective_groups(&self, subject: &str) -> Option<&Arc<[Arc<str>]>> {
        self.user(subject).map(User::groups)
    }

    /// A user's direct groups, sorted.
    pub fn direct_groups(&self, subject: &str) -> Option<&Arc<[Arc<str>]>> {
        self.user(subject).map(User::direct_groups)
    }

    /// Whether the user is in the group, directly or by inheritance.
    /// `false` for an unknown user or group. O(log n).
    pub fn is_member(&self, subject: &str, group: &str) -> bool {
        self.user(subject).is_some_and(|u| u.in_group(group))
    }

    /// How the user is in the group (directly, through which of its direct
    /// groups, or both); `None` if it is not, or either is unknown.
    pub fn membership(&self, subject: &str, group: &str) -> Option<Membership> {
        let user = self.user(subject)?;
        let target = self.group_id(group)?;
        let mut m = Membership {
            direct: false,
            via: Vec::new(),
        };
        for d in user.direct_groups.iter() {
            let Some(id) = self.group_id(d) else { continue };
            if id == target {
                m.direct = true;
            } else if self.ancestors_of(id).binary_search(&target).is_ok() {
                m.via.push(d.clone());
            }
        }
        (m.direct || !m.via.is_empty()).then_some(m)
    }

    /// Direct user members of a group, sorted by subject id.
    pub fn direct_members(&self, group: &str) -> Option<Vec<&User>> {
        let g = self.group_id(group)?;
        Some(self.users_at(self.view.direct_users.get(g as usize).map_or(&[], |v| v)))
    }

    /// Direct and inherited user members of a group (members of the group
    /// and of every group nested in it), sorted by subject id.
    pub fn effective_members(&self, group: &str) -> Option<Vec<&User>> {
        let g = self.group_id(group)?;
        let mut seen = vec![false; self.view.groups.len()];
        let mut stack = vec![g];
        let mut users: Vec<u32> = Vec::new();
        while let Some(x) = stack.pop() {
            match seen.get_mut(x as usize) {
                Some(s) if !*s => *s = true,
                _ => continue,
            }
            users.extend_from_slice(self.view.direct_users.get(x as usize).map_or(&[], |v| v));
            stack.extend_from_slice(self.children_of(x));
        }
        users.sort_unstable();
        users.dedup();
        Some(self.users_at(&users))
    }

    /// Groups that are direct members of `group`, sorted by name.
    pub fn member_groups(&self, group: &str) -> Option<Vec<&Group>> {
        let g = self.group_id(group)?;
        Some(self.groups_at(self.children_of(g)))
    }

    /// Groups `group` is a direct member of, sorted by name.
    pub fn parent_groups(&self, group: &str) -> Option<Vec<&Group>> {
        let g = self.group_id(group)?;
        Some(self.groups_at(self.view.closure.parents.get(g as usize).map_or(&[], |v| v)))
    }

    /// Every group `group` is in, directly or by inheritance, sorted by name.
    pub fn ancestor_groups(&self, group: &str) -> Option<Vec<&Group>> {
        let g = self.group_id(group)?;
        Some(self.groups_at(self.ancestors_of(g)))
    }

    /// An [`IdentityBuilder`] for the user with subject, username, email,
    /// display name and effective groups filled in. Refuses unknown and
    /// disabled users.
    pub fn identity_builder(&self, subject: &str) -> Result<IdentityBuilder, DirectoryError> {
        let user = self
            .user(subject)
            .ok_or_else(|| DirectoryError::NoSuchUser(Arc::from(error::excerpt(subject))))?;
        if user.is_disabled() {
            return Err(DirectoryError::UserDisabled(user.subject.clone()));
        }
        Ok(user.identity_builder())
    }

    /// The [`Identity`] of a user (no authentication events or session).
    /// Refuses unknown and disabled users.
    pub fn identity(&self, subject: &str) -> Result<Identity, DirectoryError> {
        Ok(self.identity_builder(subject)?.build()?)
    }

    fn user_index(&self, subject: &str) -> Option<usize> {
        self.view
            .users
            .binary_search_by(|u| (*u.subject).cmp(subject))
            .ok()
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        self.view
            .groups
            .binary_search_by(|g| (*g.name).cmp(name))
            .ok()
            .and_then(|i| u32::try_from(i).ok())
    }

    fn ancestors_of(&self, g: u32) -> &[u32] {
        self.view
            .closure
            .ancestors
            .get(g as usize)
            .map_or(&[], |v| v)
    }

    fn children_of(&self, g: u32) -> &[u32] {
        self.view
            .closure
            .children
            .get(g as usize)
            .map_or(&[], |v| v)
    }

    fn users_at(&self, ids: &[u32]) -> Vec<&User> {
        ids.iter()
            .filter_map(|&i| self.view.users.get(i as usize))
            .collect()
    }

    fn groups_at(&self, ids: &[u32]) -> Vec<&Group> {
        ids.iter()
            .filter_map(|&i| self.view.groups.get(i as usize))
            .collect()
    }
}

fn invalid_config(msg: String) -> DirectoryError {
    DirectoryError::InvalidConfig(msg)
}

fn validate_config(config: &DirectoryConfig) -> Result<(), DirectoryError> {
    if !(config.max_delete_ratio.is_finite() && (0.0..=1.0).contains(&config.max_delete_ratio)) {
        return Err(invalid_config(format!(
            "max_delete_ratio is {}: use a share between 0.0 and 1.0 (0.1 = 10%)",
            config.max_delete_ratio
        )));
    }
    if config.max_name_len == 0 {
        return Err(invalid_config(
            "max_name_len is 0: no name would be accepted; use at least 1 (default 256)".into(),
        ));
    }
    if config.sources.len() > 64 {
        return Err(invalid_config(format!(
            "{} sources configured: at most 64 are supported",
            config.sources.len()
        )));
    }
    let mut ids = HashSet::new();
    let mut priorities = HashMap::new();
    for s in &config.sources {
        check_name(&s.id, NameKind::Source, s.id.as_str(), config.max_name_len)?;
        if !ids.insert(&s.id) {
            return Err(invalid_config(format!(
                "source {} is configured twice: give each source a distinct id",
                s.id
            )));
        }
        if let Some(other) = priorities.insert(s.priority, &s.id) {
            return Err(invalid_config(format!(
                "sources {other} and {} share priority {}: give each source a distinct priority so precedence is unambiguous",
                s.id, s.priority
            )));
        }
    }
    Ok(())
}

fn validate_snapshot(
    config: &DirectoryConfig,
    sc: &SourceConfig,
    snap: &SourceSnapshot,
) -> Result<(), DirectoryError> {
    let max = config.max_name_len;
    let id = &sc.id;
    let mut subjects = HashSet::with_capacity(snap.users.len());
    for u in &snap.users {
        check_name(id, NameKind::Subject, &u.subject, max)?;
        if let Some(v) = &u.username {
            check_name(id, NameKind::Username, v, max)?;
        }
        if let Some(v) = &u.email {
            check_name(id, NameKind::Email, v, max)?;
        }
        if let Some(v) = &u.display_name {
            check_name(id, NameKind::DisplayName, v, max)?;
        }
        if !subjects.insert(&*u.subject) {
            return Err(DirectoryError::DuplicateUser {
                source_id: id.clone(),
                subject: u.subject.clone(),
            });
        }
    }
    let mut names = HashSet::with_capacity(snap.groups.len());
    for g in &snap.groups {
        check_name(id, NameKind::Group, &g.name, max)?;
        if let Some(v) = &g.display_name {
            check_name(id, NameKind::DisplayName, v, max)?;
        }
        if !names.insert(&*g.name) {
            return Err(DirectoryError::DuplicateGroup {
                source_id: id.clone(),
                name: g.name.clone(),
            });
        }
    }
    let count = snap.user_memberships.len() + snap.group_memberships.len();
    if !sc.memberships && count > 0 {
        return Err(DirectoryError::MembershipsNotAccepted {
            source_id: id.clone(),
            count,
        });
    }
    // Names in memberships are checked when resolved: an invalid name is
    // never defined, so it is reported as an unknown reference.
    Ok(())
}

fn deletion_report(
    config: &DirectoryConfig,
    id: &SourceId,
    old: Option<&SourceSnapshot>,
    new: &SourceSnapshot,
    forced: bool,
) -> DeletionReport {
    let (mut users_before, mut groups_before) = (0, 0);
    let mut deleted_users: Vec<Arc<str>> = Vec::new();
    let mut deleted_groups: Vec<Arc<str>> = Vec::new();
    if let Some(old) = old {
        users_before = old.users.len();
        groups_before = old.groups.len();
        let kept: HashSet<&str> = new.users.iter().map(|u| &*u.subject).collect();
        deleted_users = old
            .users
            .iter()
            .filter(|u| !kept.contains(&*u.subject))
            .map(|u| u.subject.clone())
            .collect();
        let kept: HashSet<&str> = new.groups.iter().map(|g| &*g.name).collect();
        deleted_groups = old
            .groups
            .iter()
            .filter(|g| !kept.contains(&*g.name))
            .map(|g| g.name.clone())
            .collect();
    }
    let (users_deleted, groups_deleted) = (deleted_users.len(), deleted_groups.len());
    deleted_users.sort_unstable();
    deleted_users.truncate(LIST_LIMIT);
    deleted_groups.sort_unstable();
    deleted_groups.truncate(LIST_LIMIT);
    DeletionReport {
        source_id: id.clone(),
        users_before,
        users_deleted,
        groups_before,
        groups_deleted,
        deleted_users,
        deleted_groups,
        max_delete_ratio: config.max_delete_ratio,
        forced,
    }
}

#[derive(Default)]
struct UserAcc {
    username: Option<Sourced<Arc<str>>>,
    email: Option<Sourced<Arc<str>>>,
    display_name: Option<Sourced<Arc<str>>>,
    disabled: Option<Sourced<bool>>,
    /// Bit `i` set: `ordered[i]` delivers a record of the user.
    sources: u64,
}

fn fill<T: Clone>(slot: &mut Option<Sourced<T>>, value: Option<&T>, source: &SourceId) {
    if slot.is_none()
        && let Some(v) = value
    {
        *slot = Some(Sourced {
            value: v.clone(),
            source: source.clone(),
        });
    }
}

type GroupList = Arc<[Arc<str>]>;

/// A name for an error message: as is, or cut to 64 characters if longer
/// (a membership may carry a name that failed validation elsewhere).
fn short(name: &Arc<str>) -> Arc<str> {
    if name.len() <= 64 {
        name.clone()
    } else {
        Arc::from(error::excerpt(name))
    }
}

/// A group's display name and the sources that define it.
type GroupAcc = (Option<Sourced<Arc<str>>>, Vec<SourceId>);

/// Merge the sources and resolve memberships.
fn build_view(
    config: &DirectoryConfig,
    sources: &BTreeMap<SourceId, Arc<SourceSnapshot>>,
) -> Result<View, DirectoryError> {
    let mut ordered: Vec<(&SourceConfig, &SourceSnapshot)> = config
        .sources
        .iter()
        .filter_map(|sc| sources.get(&sc.id).map(|s| (sc, &**s)))
        .collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.0.priority));

    // Users: per attribute, the first (highest-priority) source with a value.
    let mut accs: HashMap<Arc<str>, UserAcc> = HashMap::new();
    for (bit, (sc, snap)) in ordered.iter().enumerate() {
        for r in &snap.users {
            let a = accs.entry(r.subject.clone()).or_default();
            fill(&mut a.username, r.username.as_ref(), &sc.id);
            fill(&mut a.email, r.email.as_ref(), &sc.id);
            fill(&mut a.display_name, r.display_name.as_ref(), &sc.id);
            fill(&mut a.disabled, r.disabled.as_ref(), &sc.id);
            a.sources |= 1u64 << bit;
        }
    }
    let mut accs: Vec<(Arc<str>, UserAcc)> = accs.into_iter().collect();
    accs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let user_ix: HashMap<Arc<str>, u32> = (0u32..)
        .zip(&accs)
        .map(|(i, (s, _))| (s.clone(), i))
        .collect();

    // Groups.
    let mut gaccs: BTreeMap<Arc<str>, GroupAcc> = BTreeMap::new();
    for (sc, snap) in &ordered {
        for r in &snap.groups {
            let a = gaccs.entry(r.name.clone()).or_default();
            fill(&mut a.0, r.display_name.as_ref(), &sc.id);
            a.1.push(sc.id.clone());
        }
    }
    let groups: Vec<Group> = gaccs
        .into_iter()
        .map(|(name, (display_name, srcs))| Group {
            name,
            display_name,
            sources: srcs.into_boxed_slice(),
        })
        .collect();
    let group_names: Vec<Arc<str>> = groups.iter().map(|g| g.name.clone()).collect();
    let group_ix: HashMap<Arc<str>, u32> = (0u32..)
        .zip(&group_names)
        .map(|(i, n)| (n.clone(), i))
        .collect();

    // User memberships, as (user, group) pairs.
    let mut direct: Vec<(u32, u32)> = Vec::new();
    let mut decided: Vec<bool> = vec![false; accs.len()];
    let override_mode = config.membership_mode == MembershipMode::Override;
    for (sc, snap) in &ordered {
        let mut knows: Vec<u32> = Vec::new();
        for (s, g) in &snap.user_memberships {
            let u = *user_ix.get(s).ok_or_else(|| DirectoryError::UnknownUser {
                source_id: sc.id.clone(),
                subject: short(s),
                group: short(g),
            })?;
            let gid = *group_ix
                .get(g)
                .ok_or_else(|| DirectoryError::UnknownGroup {
                    source_id: sc.id.clone(),
                    member: short(s),
                    container: short(g),
                    group: short(g),
                })?;
            if override_mode && decided.get(u as usize).copied().unwrap_or(false) {
                continue;
            }
            direct.push((u, gid));
            knows.push(u);
        }
        if override_mode && sc.memberships {
            knows.extend(
                snap.users
                    .iter()
                    .filter_map(|r| user_ix.get(&r.subject).copied()),
            );
            for u in knows {
                if let Some(d) = decided.get_mut(u as usize) {
                    *d = true;
                }
            }
        }
    }

    // Group nesting: always the union.
    let mut parents: Vec<Vec<u32>> = vec![Vec::new(); groups.len()];
    for (sc, snap) in &ordered {
        for (c, p) in &snap.group_memberships {
            let unknown = |name: &Arc<str>| DirectoryError::UnknownGroup {
                source_id: sc.id.clone(),
                member: short(c),
                container: short(p),
                group: short(name),
            };
            let cid = *group_ix.get(c).ok_or_else(|| unknown(c))?;
            let pid = *group_ix.get(p).ok_or_else(|| unknown(p))?;
            if let Some(v) = parents.get_mut(cid as usize) {
                v.push(pid);
            }
        }
    }
    let parents: Vec<Box<[u32]>> = parents
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v.into_boxed_slice()
        })
        .collect();
    let closure = graph::close(
        parents,
        &group_names,
        config.max_depth,
        config.max_groups_per_member,
    )?;

    // Effective groups, shared between users with the same direct groups.
    let names_of = |ids: &[u32]| -> GroupList {
        ids.iter()
            .filter_map(|&g| group_names.get(g as usize).cloned())
            .collect()
    };
    let mut cache: HashMap<Box<[u32]>, (GroupList, GroupList)> = HashMap::new();
    let mut direct_users: Vec<Vec<u32>> = vec![Vec::new(); groups.len()];
    let mut acc: Vec<u32> = Vec::new();
    let mut users: Vec<User> = Vec::with_capacity(accs.len());
    let mut by_username: HashMap<Arc<str>, u32> = HashMap::with_capacity(accs.len());
    let mut source_lists: HashMap<u64, Arc<[SourceId]>> = HashMap::new();
    direct.sort_unstable();
    direct.dedup();
    let mut edges = direct.iter().peekable();
    let mut d: Vec<u32> = Vec::new();
    for (i, (subject, a)) in (0u32..).zip(accs) {
        d.clear();
        while let Some(&&(u, g)) = edges.peek() {
            if u != i {
                break;
            }
            d.push(g);
            edges.next();
        }
        for &g in &d {
            if let Some(v) = direct_users.get_mut(g as usize) {
                v.push(i);
            }
        }
        let (direct_groups, eff) = match cache.get(d.as_slice()) {
            Some(hit) => hit.clone(),
            None => {
                acc.clear();
                acc.extend_from_slice(&d);
                for &g in &d {
                    acc.extend_from_slice(closure.ancestors.get(g as usize).map_or(&[], |v| v));
                }
                acc.sort_unstable();
                acc.dedup();
                if acc.len() > config.max_groups_per_member {
                    return Err(DirectoryError::TooManyGroups {
                        member: subject,
                        count: acc.len(),
                        limit: config.max_groups_per_member,
                    });
                }
                let entry = (names_of(&d), names_of(&acc));
                cache.insert(d.as_slice().into(), entry.clone());
                entry
            }
        };
        let Some(username) = a.username else {
            return Err(DirectoryError::MissingUsername { subject });
        };
        if let Some(prev) = by_username.insert(username.value.clone(), i) {
            let first = users
                .get(prev as usize)
                .map_or_else(|| subject.clone(), |u| u.subject.clone());
            return Err(DirectoryError::DuplicateUsername {
                username: username.value,
                first,
                second: subject,
            });
        }
        users.push(User {
            subject,
            username,
            email: a.email,
            display_name: a.display_name,
            disabled: a.disabled,
            sources: source_lists
                .entry(a.sources)
                .or_insert_with(|| {
                    (0..ordered.len())
                        .filter(|b| a.sources & (1u64 << b) != 0)
                        .filter_map(|b| ordered.get(b).map(|(sc, _)| sc.id.clone()))
                        .collect()
                })
                .clone(),
            direct_groups,
            groups: eff,
        });
    }
    Ok(View {
        users,
        by_username,
        groups,
        closure,
        direct_users: direct_users
            .into_iter()
            .map(Vec::into_boxed_slice)
            .collect(),
    })
}

/// `(in b but not a, in a but not b)` for two sorted lists.
fn sorted_diff(a: &[Arc<str>], b: &[Arc<str>]) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Less => removed.extend(ia.next().cloned()),
                std::cmp::Ordering::Greater => added.extend(ib.next().cloned()),
                std::cmp::Ordering::Equal => {
                    ia.next();
                    ib.next();
                }
            },
            (Some(_), None) => removed.extend(ia.next().cloned()),
            (None, Some(_)) => added.extend(ib.next().cloned()),
            (None, None) => return (added, removed),
        }
    }
}

fn value<T>(s: Option<&Sourced<T>>) -> Option<&T> {
    s.map(|s| &s.value)
}

fn user_events(old: &User, new: &User, out: &mut Vec<DirectoryEvent>) {
    let (subject, username) = (&new.subject, &new.username.value);
    match (old.is_disabled(), new.is_disabled()) {
        (false, true) => out.push(DirectoryEvent::UserDisabled {
            subject: subject.clone(),
            username: username.clone(),
        }),
        (true, false) => out.push(DirectoryEvent::UserEnabled {
            subject: subject.clone(),
            username: username.clone(),
        }),
        _ => {}
    }
    let mut attributes = Vec::new();
    if old.username.value != new.username.value {
        attributes.push(UserAttribute::Username);
    }
    if value(old.email.as_ref()) != value(new.email.as_ref()) {
        attributes.push(UserAttribute::Email);
    }
    if value(old.display_name.as_ref()) != value(new.display_name.as_ref()) {
        attributes.push(UserAttribute::DisplayName);
    }
    if !attributes.is_empty() {
        out.push(DirectoryEvent::UserUpdated {
            subject: subject.clone(),
            attributes,
        });
    }
    let same = |a: &GroupList, b: &GroupList| Arc::ptr_eq(a, b) || a == b;
    if !same(&old.groups, &new.groups) || !same(&old.direct_groups, &new.direct_groups) {
        let (added, removed) = sorted_diff(&old.groups, &new.groups);
        let (direct_added, direct_removed) = sorted_diff(&old.direct_groups, &new.direct_groups);
        out.push(DirectoryEvent::MembershipChanged {
            subject: subject.clone(),
            added,
            removed,
            direct_added,
            direct_removed,
        });
    }
}

/// The events that turn `old` into `new`.
fn diff(old: &View, new: &View) -> Vec<DirectoryEvent> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.users.iter().peekable(), new.users.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.subject.cmp(&y.subject) {
                std::cmp::Ordering::Less => {
                    out.push(DirectoryEvent::UserDeleted {
                        subject: x.subject.clone(),
                        username: x.username.value.clone(),
                    });
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push(DirectoryEvent::UserCreated {
                        subject: y.subject.clone(),
                        username: y.username.value.clone(),
                    });
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    user_events(x, y, &mut out);
                    a.next();
                    b.next();
                }
            },
            (Some(x), None) => {
                out.push(DirectoryEvent::UserDeleted {
                    subject: x.subject.clone(),
                    username: x.username.value.clone(),
                });
                a.next();
            }
            (None, Some(y)) => {
                out.push(DirectoryEvent::UserCreated {
                    subject: y.subject.clone(),
                    username: y.username.value.clone(),
                });
                b.next();
            }
            (None, None) => break,
        }
    }
    let old_names: Vec<Arc<str>> = old.groups.iter().map(|g| g.name.clone()).collect();
    let new_names: Vec<Arc<str>> = new.groups.iter().map(|g| g.name.clone()).collect();
    let (created, deleted) = sorted_diff(&old_names, &new_names);
    let mut group_events: Vec<(Arc<str>, DirectoryEvent)> = created
        .into_iter()
        .map(|name| (name.clone(), DirectoryEvent::GroupCreated { name }))
        .chain(
            deleted
                .into_iter()
                .map(|name| (name.clone(), DirectoryEvent::GroupDeleted { name })),
        )
        .collect();
    group_events.sort_by(|x, y| x.0.cmp(&y.0));
    out.extend(group_events.into_iter().map(|(_, e)| e));
    out
}

#[cfg(test)]
mod tests;
