//! Errors and the deletion-safety report.

use std::fmt;
use std::sync::Arc;

use crate::identity::IdentityError;

use super::model::SourceId;

/// How many names a report or an error lists before it says "and N more".
pub(crate) const LIST_LIMIT: usize = 20;

/// Longest excerpt of an offending value quoted in an error.
const EXCERPT_CHARS: usize = 64;

/// Which kind of name or attribute a validation error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A user's stable subject id.
    Subject,
    /// A user's login name.
    Username,
    /// A user's email address.
    Email,
    /// A user's or a group's display name.
    DisplayName,
    /// A group name.
    Group,
    /// A source id.
    Source,
}

impl NameKind {
    /// A lower-case label for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Subject => "subject id",
            NameKind::Username => "username",
            NameKind::Email => "email",
            NameKind::DisplayName => "display name",
            NameKind::Group => "group name",
            NameKind::Source => "source id",
        }
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A path through the group graph, printed as `a -> b -> c`
/// (each name is a member of the next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPath(pub Vec<Arc<str>>);

impl fmt::Display for GroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{name:?}")?;
        }
        Ok(())
    }
}

/// Why the directory refused a configuration, a sync, a change or a lookup.
///
/// Nothing is applied when an error is returned: the previous snapshot stays
/// in force.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The directory configuration is inconsistent.
    #[error("invalid directory configuration: {0}")]
    InvalidConfig(String),
    /// A sync or change named a source that is not configured.
    #[error("unknown directory source {0:?}: add it to the directory configuration first")]
    UnknownSource(SourceId),
    /// A name or attribute is empty, too long or contains control characters.
    #[error("{source_id}: invalid {kind} {value:?}: {reason}")]
    InvalidName {
        /// The source that delivered it.
        source_id: SourceId,
        /// What the value is.
        kind: NameKind,
        /// The value, truncated to 64 characters.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// One source delivered the same subject id twice.
    #[error(
        "{source_id}: user {subject:?} appears twice in one snapshot: a source must deliver each subject id once"
    )]
    DuplicateUser {
        /// The source.
        source_id: SourceId,
        /// The repeated subject id.
        subject: Arc<str>,
    },
    /// One source delivered the same group name twice.
    #[error(
        "{source_id}: group {name:?} appears twice in one snapshot: a source must deliver each group once"
    )]
    DuplicateGroup {
        /// The source.
        source_id: SourceId,
        /// The repeated group name.
        name: Arc<str>,
    },
    /// Two different subjects ended up with the same username after the merge.
    #[error(
        "username {username:?} belongs to two subjects ({first:?} and {second:?}): usernames must be unique; fix the sources or rename one user"
    )]
    DuplicateUsername {
        /// The contested username.
        username: Arc<str>,
        /// One subject holding it.
        first: Arc<str>,
        /// The other subject holding it.
        second: Arc<str>,
    },
    /// No source provides a username for a subject (for instance an
    /// override record for a user no other source knows).
    #[error(
        "user {subject:?} has no username in any source: a source must provide one (an override record alone is not a user)"
    )]
    MissingUsername {
        /// The subject.
        subject: Arc<str>,
    },
    /// A membership names a user that no source defines.
    #[error(
        "{source_id}: membership of unknown user {subject:?} in group {group:?}: define the user in a source or drop the membership"
    )]
    UnknownUser {
        /// The source that delivered the membership.
        source_id: SourceId,
        /// The unknown subject.
        subject: Arc<str>,
        /// The group of the membership.
        group: Arc<str>,
    },
    /// A membership names a group that no source defines.
    #[error(
        "{source_id}: membership of {member:?} in {container:?} names unknown group {group:?}: define the group in a source or drop the membership"
    )]
    UnknownGroup {
        /// The source that delivered the membership.
        source_id: SourceId,
        /// The member of the membership (a subject id or a group name).
        member: Arc<str>,
        /// The group the member is put in.
        container: Arc<str>,
        /// The name no source defines (`member` or `container`).
        group: Arc<str>,
    },
    /// A source that is configured not to state memberships delivered some.
    #[error(
        "{source_id}: this source is configured with memberships disabled but delivered {count} membership(s): enable memberships for it or drop them"
    )]
    MembershipsNotAccepted {
        /// The source.
        source_id: SourceId,
        /// How many memberships it delivered.
        count: usize,
    },
    /// The group graph has a cycle. Groups must form a DAG.
    #[error("group nesting cycle {path}: remove one of these memberships")]
    Cycle {
        /// The cycle, first name repeated at the end; each name is a member of the next.
        path: GroupPath,
    },
    /// Groups are nested deeper than the configured limit.
    #[error(
        "groups nested {depth} levels deep ({path}), above the limit of {limit}: flatten the nesting or raise max_depth"
    )]
    TooDeep {
        /// A chain of the offending length; each name is a member of the next.
        path: GroupPath,
        /// Its depth (number of group-in-group memberships).
        depth: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A user or a group would be in more groups than the configured limit.
    #[error(
        "{member:?} would be in {count} groups, above the limit of {limit}: reduce the memberships or raise max_groups_per_member"
    )]
    TooManyGroups {
        /// The subject id or group name.
        member: Arc<str>,
        /// How many groups (direct and inherited).
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A sync would delete more than the configured share of the source's
    /// users or groups.
    #[error("{0}")]
    DeletionRefused(Box<DeletionReport>),
    /// A lookup named a subject that is not in the directory.
    #[error("no user with subject id {0:?} in the directory")]
    NoSuchUser(Arc<str>),
    /// An identity was requested for a disabled user.
    #[error("user {0:?} is disabled: no identity is issued for a disabled user")]
    UserDisabled(Arc<str>),
    /// Building the [`Identity`](crate::Identity) failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What a sync deletes from its source, measured against the deletion limit.
///
/// Returned with every successful sync (for logs and audit) and inside
/// [`DirectoryError::DeletionRefused`] when the sync is refused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeletionReport {
    /// The source being synced.
    pub source_id: SourceId,
    /// Users the source had before the sync.
    pub users_before: usize,
    /// Users the sync removes from the source.
    pub users_deleted: usize,
    /// Groups the source had before the sync.
    pub groups_before: usize,
    /// Groups the sync removes from the source.
    pub groups_deleted: usize,
    /// The first removed subject ids (sorted, at most 20).
    pub deleted_users: Vec<Arc<str>>,
    /// The first removed group names (sorted, at most 20).
    pub deleted_groups: Vec<Arc<str>>,
    /// The configured maximum share (0.0 to 1.0) of users or groups a sync may delete.
    pub max_delete_ratio: f64,
    /// Whether the sync was forced past the limit.
    pub forced: bool,
}

impl DeletionReport {
    /// Share of the source's users the sync deletes (0.0 when it had none).
    pub fn user_ratio(&self) -> f64 {
        ratio(self.users_deleted, self.users_before)
    }

    /// Share of the source's groups the sync deletes (0.0 when it had none).
    pub fn group_ratio(&self) -> f64 {
        ratio(self.groups_deleted, self.groups_before)
    }

    /// Whether the deletions exceed the limit (regardless of `forced`).
    pub fn exceeds_limit(&self) -> bool {
        self.user_ratio() > self.max_delete_ratio || self.group_ratio() > self.max_delete_ratio
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, names: &[Arc<str>], total: usize) -> fmt::Result {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{n:?}")?;
    }
    if total > names.len() {
        write!(f, " and {} more", total - names.len())?;
    }
    Ok(())
}

impl fmt::Display for DeletionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sync of source {} would delete {} of {} users ({:.1}%) and {} of {} groups ({:.1}%); the limit is {:.1}%",
            self.source_id,
            self.users_deleted,
            self.users_before,
            self.user_ratio() * 100.0,
            self.groups_deleted,
            self.groups_before,
            self.group_ratio() * 100.0,
            self.max_delete_ratio * 100.0,
        )?;
        if !self.deleted_users.is_empty() {
            f.write_str("; deleted users: ")?;
            write_list(f, &self.deleted_users, self.users_deleted)?;
        }
        if !self.deleted_groups.is_empty() {
            f.write_str("; deleted groups: ")?;
            write_list(f, &self.deleted_groups, self.groups_deleted)?;
        }
        if self.forced {
            f.write_str(" (forced)")
        } else if self.exceeds_limit() {
            f.write_str(
                ". Check the source (an empty or partial export is the usual cause); if the deletions are intended, re-run the sync forced",
            )
        } else {
            Ok(())
        }
    }
}

/// Validate a name or attribute value.
pub(crate) fn check_name(
    source_id: &SourceId,
    kind: NameKind,
    value: &str,
    max_len: usize,
) -> Result<(), DirectoryError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > max_len {
        Some("is longer than max_name_len bytes")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if value.trim() != value {
        Some("must not start or end with whitespace")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(DirectoryError::InvalidName {
            source_id: source_id.clone(),
            kind,
            value: excerpt(value),
            reason,
        }),
    }
}

/// At most 64 characters of `s`, with an ellipsis when cut.
pub(crate) fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
