//! Configuration, source snapshots and the merged user and group records.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityBuilder};

/// The name of a directory source, e.g. `ldap`, `scim`, `local`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceId(Arc<str>);

impl SourceId {
    /// Wrap a source name. It is validated when the directory is configured.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        SourceId(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SourceId {
    fn from(s: &str) -> Self {
        SourceId(Arc::from(s))
    }
}

/// A merged value and the source it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// The highest-priority source that had a value for this attribute.
    pub source: SourceId,
}

/// How memberships from several sources combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MembershipMode {
    /// A user's direct groups are the union of what every source says.
    #[default]
    Union,
    /// A user's direct groups are exactly what the highest-priority
    /// membership source that knows the user says (it knows the user when
    /// it delivers the user's record or at least one membership of the
    /// user); other sources' memberships for that user are ignored. Group
    /// nesting (group-in-group) is always the union.
    Override,
}

/// One source of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceConfig {
    /// The source's name.
    pub id: SourceId,
    /// Precedence: for every attribute the source with the highest
    /// priority that has a value wins. Priorities must be distinct.
    pub priority: i32,
    /// Whether the source states memberships. A source that only overlays
    /// attributes (for instance a local "disabled" flag on LDAP users) sets
    /// this to `false`, so that in [`MembershipMode::Override`] its records
    /// do not hide the memberships of lower sources. Default `true`.
    #[serde(default = "yes")]
    pub memberships: bool,
}

fn yes() -> bool {
    true
}

impl SourceConfig {
    /// A source with a priority (higher wins) that states memberships.
    pub fn new(id: impl Into<SourceId>, priority: i32) -> Self {
        SourceConfig {
            id: id.into(),
            priority,
            memberships: true,
        }
    }

    /// Whether the source states memberships (default `true`).
    pub fn memberships(mut self, states_memberships: bool) -> Self {
        self.memberships = states_memberships;
        self
    }
}

/// Directory configuration. Build with [`DirectoryConfig::new`] and the
/// setters; it is validated by [`Directory::new`](super::Directory::new).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DirectoryConfig {
    /// The sources, in any order (precedence is their priority).
    pub sources: Vec<SourceConfig>,
    /// How memberships from several sources combine (default union).
    pub membership_mode: MembershipMode,
    /// Deepest allowed group nesting, counted in group-in-group memberships
    /// along one chain (default 32).
    pub max_depth: usize,
    /// Largest share (0.0 to 1.0) of a source's users, or of its groups, that
    /// one sync may delete without being forced (default 0.1).
    pub max_delete_ratio: f64,
    /// Most groups (direct and inherited) a user may be in, and most
    /// ancestors a group may have (default 4096). Bounds memory on hostile
    /// input.
    pub max_groups_per_member: usize,
    /// Longest subject id, username, email, display name or group name, in
    /// bytes (default 256).
    pub max_name_len: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            sources: Vec::new(),
            membership_mode: MembershipMode::Union,
            max_depth: 32,
            max_delete_ratio: 0.1,
            max_groups_per_member: 4096,
            max_name_len: 256,
        }
    }
}

impl DirectoryConfig {
    /// Defaults, no sources.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a source with a priority (higher wins) that states memberships.
    pub fn source(mut self, id: impl Into<SourceId>, priority: i32) -> Self {
        self.sources.push(SourceConfig::new(id, priority));
        self
    }
    /// Add a fully specified source.
    pub fn source_config(mut self, source: SourceConfig) -> Self {
        self.sources.push(source);
        self
    }
    /// How memberships from several sources combine.
    pub fn membership_mode(mut self, mode: MembershipMode) -> Self {
        self.membership_mode = mode;
        self
    }
    /// Deepest allowed group nesting.
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }
    /// Largest share of a source's users or groups one sync may delete.
    pub fn max_delete_ratio(mut self, ratio: f64) -> Self {
        self.max_delete_ratio = ratio;
        self
    }
    /// Most groups a user may be in / ancestors a group may have.
    pub fn max_groups_per_member(mut self, n: usize) -> Self {
        self.max_groups_per_member = n;
        self
    }
    /// Longest name in bytes.
    pub fn max_name_len(mut self, n: usize) -> Self {
        self.max_name_len = n;
        self
    }
}

/// A user as one source delivers it. Every attribute but the subject id is
/// optional, so a source can overlay only some attributes of a user another
/// source defines.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserRecord {
    /// Stable subject id: never reused, survives renames. Users are matched
    /// across sources by subject id.
    pub subject: Arc<str>,
    /// Login name.
    pub username: Option<Arc<str>>,
    /// Email address.
    pub email: Option<Arc<str>>,
    /// Human-readable name.
    pub display_name: Option<Arc<str>>,
    /// Disabled flag.
    pub disabled: Option<bool>,
}

impl UserRecord {
    /// A record with only a subject id.
    pub fn new(subject: impl Into<Arc<str>>) -> Self {
        UserRecord {
            subject: subject.into(),
            username: None,
            email: None,
            display_name: None,
            disabled: None,
        }
    }
    /// Set the login name.
    pub fn username(mut self, v: impl Into<Arc<str>>) -> Self {
        self.username = Some(v.into());
        self
    }
    /// Set the email address.
    pub fn email(mut self, v: impl Into<Arc<str>>) -> Self {
        self.email = Some(v.into());
        self
    }
    /// Set the display name.
    pub fn display_name(mut self, v: impl Into<Arc<str>>) -> Self {
        self.display_name = Some(v.into());
        self
    }
    /// Set the disabled flag.
    pub fn disabled(mut self, v: bool) -> Self {
        self.disabled = Some(v);
        self
    }
}

/// A group as one source delivers it. Groups are matched across sources by
/// name; the name is what ends up in an [`Identity`]'s groups.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupRecord {
    /// Group name.
    pub name: Arc<str>,
    /// Human-readable name.
    pub display_name: Option<Arc<str>>,
}

impl GroupRecord {
    /// A group with a name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        GroupRecord {
            name: name.into(),
            display_name: None,
        }
    }
    /// Set the display name.
    pub fn display_name(mut self, v: impl Into<Arc<str>>) -> Self {
        self.display_name = Some(v.into());
        self
    }
}

/// Everything one source says: its users, groups and memberships. A sync
/// replaces the source's previous snapshot as a whole.
///
/// Memberships may name users and groups that another source defines; every
/// name must be defined by some source once merged, or the sync is refused.
/// Repeated memberships are harmless; repeated users or groups are refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSnapshot {
    pub(crate) users: Vec<UserRecord>,
    pub(crate) groups: Vec<GroupRecord>,
    pub(crate) user_memberships: Vec<(Arc<str>, Arc<str>)>,
    pub(crate) group_memberships: Vec<(Arc<str>, Arc<str>)>,
}

impl SourceSnapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }
    /// Add a user.
    pub fn with_user(mut self, user: UserRecord) -> Self {
        self.users.push(user);
        self
    }
    /// Add a group.
    pub fn with_group(mut self, group: GroupRecord) -> Self {
        self.groups.push(group);
        self
    }
    /// Make user `subject` a direct member of `group`.
    pub fn with_member(mut self, subject: impl Into<Arc<str>>, group: impl Into<Arc<str>>) -> Self {
        self.push_member(subject, group);
        self
    }
    /// Make group `child` a member of group `parent`: members of `child`
    /// inherit `parent`.
    pub fn with_nested(mut self, child: impl Into<Arc<str>>, parent: impl Into<Arc<str>>) -> Self {
        self.push_nested(child, parent);
        self
    }
    /// Add a user.
    pub fn push_user(&mut self, user: UserRecord) {
        self.users.push(user);
    }
    /// Add a group.
    pub fn push_group(&mut self, group: GroupRecord) {
        self.groups.push(group);
    }
    /// Make user `subject` a direct member of `group`.
    pub fn push_member(&mut self, subject: impl Into<Arc<str>>, group: impl Into<Arc<str>>) {
        self.user_memberships.push((subject.into(), group.into()));
    }
    /// Make group `child` a member of group `parent`.
    pub fn push_nested(&mut self, child: impl Into<Arc<str>>, parent: impl Into<Arc<str>>) {
        self.group_memberships.push((child.into(), parent.into()));
    }
    /// The users.
    pub fn users(&self) -> &[UserRecord] {
        &self.users
    }
    /// The groups.
    pub fn groups(&self) -> &[GroupRecord] {
        &self.groups
    }
    /// User memberships as `(subject, group)`.
    pub fn user_memberships(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.user_memberships
    }
    /// Group nesting as `(child, parent)`.
    pub fn group_memberships(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.group_memberships
    }

    /// Apply one incremental change to this snapshot.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::UpsertUser(u) => match self.users.iter_mut().find(|r| r.subject == u.subject) {
                Some(r) => *r = u,
                None => self.users.push(u),
            },
            Change::RemoveUser(subject) => {
                self.users.retain(|r| r.subject != subject);
                self.user_memberships.retain(|(s, _)| *s != subject);
            }
            Change::SetDisabled { subject, disabled } => {
                match self.users.iter_mut().find(|r| r.subject == subject) {
                    Some(r) => r.disabled = Some(disabled),
                    None => self.users.push(UserRecord::new(subject).disabled(disabled)),
                }
            }
            Change::UpsertGroup(g) => match self.groups.iter_mut().find(|r| r.name == g.name) {
                Some(r) => *r = g,
                None => self.groups.push(g),
            },
            Change::RemoveGroup(name) => {
                self.groups.retain(|r| r.name != name);
                self.user_memberships.retain(|(_, g)| *g != name);
                self.group_memberships
                    .retain(|(c, p)| *c != name && *p != name);
            }
            Change::AddMember { subject, group } => {
                if !self
                    .user_memberships
                    .iter()
                    .any(|(s, g)| *s == subject && *g == group)
                {
                    self.user_memberships.push((subject, group));
                }
            }
            Change::RemoveMember { subject, group } => {
                self.user_memberships
                    .retain(|(s, g)| !(*s == subject && *g == group));
            }
            Change::Nest { child, parent } => {
                if !self
                    .group_memberships
                    .iter()
                    .any(|(c, p)| *c == child && *p == parent)
                {
                    self.group_memberships.push((child, parent));
                }
            }
            Change::Unnest { child, parent } => {
                self.group_memberships
                    .retain(|(c, p)| !(*c == child && *p == parent));
            }
        }
    }
}

/// An incremental change to one source's snapshot (an admin action, a SCIM
/// PATCH). See [`Directory::apply`](super::Directory::apply).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Add a user record, or replace the source's record with the same subject.
    UpsertUser(UserRecord),
    /// Remove the source's record of a user and the source's memberships of
    /// that user. The user stays in the directory if another source defines it.
    RemoveUser(Arc<str>),
    /// Set the disabled flag in the source's record of the user, adding an
    /// override record (subject and flag only) if the source has none.
    SetDisabled {
        /// The user.
        subject: Arc<str>,
        /// Disabled or enabled.
        disabled: bool,
    },
    /// Add a group record, or replace the source's record with the same name.
    UpsertGroup(GroupRecord),
    /// Remove the source's record of a group and every membership of the
    /// source that names it.
    RemoveGroup(Arc<str>),
    /// Make a user a direct member of a group.
    AddMember {
        /// The user.
        subject: Arc<str>,
        /// The group.
        group: Arc<str>,
    },
    /// Remove a user's direct membership (as stated by this source).
    RemoveMember {
        /// The user.
        subject: Arc<str>,
        /// The group.
        group: Arc<str>,
    },
    /// Make group `child` a member of group `parent`.
    Nest {
        /// The member group.
        child: Arc<str>,
        /// The containing group.
        parent: Arc<str>,
    },
    /// Remove a group-in-group membership (as stated by this source).
    Unnest {
        /// The member group.
        child: Arc<str>,
        /// The containing group.
        parent: Arc<str>,
    },
}

/// A user of the merged directory, with resolved groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub(crate) subject: Arc<str>,
    pub(crate) username: Sourced<Arc<str>>,
    pub(crate) email: Option<Sourced<Arc<str>>>,
    pub(crate) display_name: Option<Sourced<Arc<str>>>,
    pub(crate) disabled: Option<Sourced<bool>>,
    pub(crate) sources: Arc<[SourceId]>,
    pub(crate) direct_groups: Arc<[Arc<str>]>,
    pub(crate) groups: Arc<[Arc<str>]>,
}

impl User {
    /// Stable subject id.
    pub fn subject(&self) -> &Arc<str> {
        &self.subject
    }
    /// Login name, and the source it came from.
    pub fn username(&self) -> &Sourced<Arc<str>> {
        &self.username
    }
    /// Email address, and the source it came from.
    pub fn email(&self) -> Option<&Sourced<Arc<str>>> {
        self.email.as_ref()
    }
    /// Display name, and the source it came from.
    pub fn display_name(&self) -> Option<&Sourced<Arc<str>>> {
        self.display_name.as_ref()
    }
    /// The disabled flag and the source that set it; `None` when no source
    /// states it (the user is enabled).
    pub fn disabled(&self) -> Option<&Sourced<bool>> {
        self.disabled.as_ref()
    }
    /// Whether the user is disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled.as_ref().is_some_and(|d| d.value)
    }
    /// The sources that deliver a record of this user, highest priority first.
    pub fn sources(&self) -> &[SourceId] {
        &self.sources
    }
    /// Groups the user is a direct member of, sorted.
    pub fn direct_groups(&self) -> &Arc<[Arc<str>]> {
        &self.direct_groups
    }
    /// Effective groups (direct and inherited), sorted, without duplicates.
    pub fn groups(&self) -> &Arc<[Arc<str>]> {
        &self.groups
    }
    /// Whether the user is in `group`, directly or by inheritance. O(log n).
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.binary_search_by(|g| (**g).cmp(group)).is_ok()
    }
    /// Whether the user is a direct member of `group`. O(log n).
    pub fn is_direct_member(&self, group: &str) -> bool {
        self.direct_groups
            .binary_search_by(|g| (**g).cmp(group))
            .is_ok()
    }
    /// An [`IdentityBuilder`] with subject, username, email, display name and
    /// effective groups filled in; add authentication events and a session.
    ///
    /// This does not look at the disabled flag: use
    /// [`Directory::identity_builder`](super::Directory::identity_builder),
    /// which refuses disabled users, on login paths.
    pub fn identity_builder(&self) -> IdentityBuilder {
        let mut b = Identity::builder(self.subject.clone(), self.username.value.clone())
            .set_groups(self.groups.iter().cloned());
        if let Some(e) = &self.email {
            b = b.email(e.value.clone());
        }
        if let Some(d) = &self.display_name {
            b = b.display_name(d.value.clone());
        }
        b
    }
}

/// A group of the merged directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub(crate) name: Arc<str>,
    pub(crate) display_name: Option<Sourced<Arc<str>>>,
    pub(crate) sources: Box<[SourceId]>,
}

impl Group {
    /// Group name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// Display name, and the source it came from.
    pub fn display_name(&self) -> Option<&Sourced<Arc<str>>> {
        self.display_name.as_ref()
    }
    /// The sources that deliver a record of this group, highest priority first.
    pub fn sources(&self) -> &[SourceId] {
        &self.sources
    }
}

/// How a user is in a group: directly, through other groups, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Membership {
    /// The user is a direct member of the group.
    pub direct: bool,
    /// The user's direct groups through which the group is inherited
    /// (sorted; empty when the membership is only direct).
    pub via: Vec<Arc<str>>,
}
