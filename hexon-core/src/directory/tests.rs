use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;

fn names(list: &[Arc<str>]) -> Vec<&str> {
    list.iter().map(|g| &**g).collect()
}

fn one_source() -> Directory {
    Directory::new(DirectoryConfig::new().source("ldap", 10)).unwrap()
}

fn user(subject: &str, username: &str) -> UserRecord {
    UserRecord::new(subject).username(username)
}

fn groups(snap: SourceSnapshot, list: &[&str]) -> SourceSnapshot {
    list.iter()
        .fold(snap, |s, g| s.with_group(GroupRecord::new(*g)))
}

fn sync(dir: &Directory, snap: SourceSnapshot) -> Result<Arc<Directory>, DirectoryError> {
    dir.sync("ldap", snap, SyncOptions::new())
        .map(|u| u.directory)
}

#[test]
fn nesting_five_deep() {
    let snap = groups(SourceSnapshot::new(), &["g1", "g2", "g3", "g4", "g5"])
        .with_user(user("u1", "alice"))
        .with_nested("g1", "g2")
        .with_nested("g2", "g3")
        .with_nested("g3", "g4")
        .with_nested("g4", "g5")
        .with_member("u1", "g1");
    let dir = sync(&one_source(), snap).unwrap();
    assert_eq!(
        names(dir.effective_groups("u1").unwrap()),
        ["g1", "g2", "g3", "g4", "g5"]
    );
    assert_eq!(names(dir.direct_groups("u1").unwrap()), ["g1"]);
    assert!(dir.is_member("u1", "g5"));
    assert!(!dir.is_member("u1", "nope"));
    let m = dir.membership("u1", "g5").unwrap();
    assert!(!m.direct);
    assert_eq!(names(&m.via), ["g1"]);
    let anc: Vec<&str> = dir
        .ancestor_groups("g2")
        .unwrap()
        .iter()
        .map(|g| &**g.name())
        .collect();
    assert_eq!(anc, ["g3", "g4", "g5"]);
    assert_eq!(dir.effective_members("g5").unwrap().len(), 1);
    assert!(dir.direct_members("g5").unwrap().is_empty());
}

#[test]
fn diamond_counts_each_group_once() {
    let snap = groups(SourceSnapshot::new(), &["A", "B", "C", "D"])
        .with_user(user("u1", "alice"))
        .with_user(user("u2", "bob"))
        .with_nested("A", "B")
        .with_nested("A", "C")
        .with_nested("B", "D")
        .with_nested("C", "D")
        .with_member("u1", "A")
        .with_member("u2", "D");
    let dir = sync(&one_source(), snap).unwrap();
    assert_eq!(
        names(dir.effective_groups("u1").unwrap()),
        ["A", "B", "C", "D"]
    );
    let m = dir.membership("u1", "D").unwrap();
    assert_eq!((m.direct, names(&m.via)), (false, vec!["A"]));
    let members: Vec<&str> = dir
        .effective_members("D")
        .unwrap()
        .iter()
        .map(|u| &**u.subject())
        .collect();
    assert_eq!(members, ["u1", "u2"]);
    let subs: Vec<&str> = dir
        .member_groups("D")
        .unwrap()
        .iter()
        .map(|g| &**g.name())
        .collect();
    assert_eq!(subs, ["B", "C"]);
    let parents: Vec<&str> = dir
        .parent_groups("A")
        .unwrap()
        .iter()
        .map(|g| &**g.name())
        .collect();
    assert_eq!(parents, ["B", "C"]);
}

#[test]
fn direct_and_inherited_kept_apart() {
    let snap = groups(SourceSnapshot::new(), &["inner", "outer"])
        .with_user(user("u1", "alice"))
        .with_nested("inner", "outer")
        .with_member("u1", "inner")
        .with_member("u1", "outer");
    let dir = sync(&one_source(), snap).unwrap();
    let m = dir.membership("u1", "outer").unwrap();
    assert!(m.direct);
    assert_eq!(names(&m.via), ["inner"]);
    let m = dir.membership("u1", "inner").unwrap();
    assert!(m.direct && m.via.is_empty());
    let u = dir.user("u1").unwrap();
    assert!(u.is_direct_member("outer") && u.in_group("outer"));
    assert_eq!(dir.direct_members("outer").unwrap().len(), 1);
}

#[test]
fn self_loop_is_a_cycle() {
    let snap = groups(SourceSnapshot::new(), &["a"]).with_nested("a", "a");
    match sync(&one_source(), snap).unwrap_err() {
        DirectoryError::Cycle { path } => assert_eq!(names(&path.0), ["a", "a"]),
        e => panic!("{e}"),
    }
}

#[test]
fn longer_cycle_names_the_path() {
    let snap = groups(SourceSnapshot::new(), &["a", "b", "c", "tail", "top"])
        .with_nested("tail", "a")
        .with_nested("a", "b")
        .with_nested("b", "c")
        .with_nested("c", "a")
        .with_nested("c", "top");
    let err = sync(&one_source(), snap).unwrap_err();
    let msg = err.to_string();
    match err {
        DirectoryError::Cycle { path } => {
            let p = names(&path.0);
            assert_eq!(p.len(), 4, "{p:?}");
            assert_eq!(p.first(), p.last());
            let mut members = p[..3].to_vec();
            members.sort_unstable();
            assert_eq!(members, ["a", "b", "c"]);
            // Each name is a member of the next.
            for w in p.windows(2) {
                let ok = matches!((w[0], w[1]), ("a", "b") | ("b", "c") | ("c", "a"));
                assert!(ok, "{p:?}");
            }
        }
        e => panic!("{e}"),
    }
    assert!(msg.contains("cycle") && msg.contains(" -> "), "{msg}");
}

fn chain(levels: usize) -> SourceSnapshot {
    let names: Vec<String> = (0..levels).map(|i| format!("g{i:02}")).collect();
    let mut snap = SourceSnapshot::new();
    for n in &names {
        snap.push_group(GroupRecord::new(n.as_str()));
    }
    for w in names.windows(2) {
        snap.push_nested(w[0].as_str(), w[1].as_str());
    }
    snap
}

#[test]
fn depth_limit() {
    // Default 32: a chain of 33 groups (32 nestings) passes, 34 does not.
    assert!(sync(&one_source(), chain(33)).is_ok());
    match sync(&one_source(), chain(34)).unwrap_err() {
        DirectoryError::TooDeep { path, depth, limit } => {
            assert_eq!((depth, limit), (33, 32));
            assert_eq!(path.0.len(), 34);
            assert_eq!(&*path.0[0], "g00");
            assert_eq!(&*path.0[33], "g33");
        }
        e => panic!("{e}"),
    }
    let small = Directory::new(DirectoryConfig::new().source("ldap", 1).max_depth(3)).unwrap();
    assert!(sync(&small, chain(4)).is_ok());
    let err = sync(&small, chain(5)).unwrap_err();
    assert!(err.to_string().contains("max_depth"), "{err}");
}

#[test]
fn unknown_references_refused() {
    let base = groups(SourceSnapshot::new(), &["g"]).with_user(user("u1", "alice"));
    let err = sync(&one_source(), base.clone().with_member("u1", "ghost")).unwrap_err();
    assert!(
        matches!(&err, DirectoryError::UnknownGroup { group, .. } if &**group == "ghost"),
        "{err}"
    );
    let err = sync(&one_source(), base.clone().with_member("u9", "g")).unwrap_err();
    assert!(
        matches!(&err, DirectoryError::UnknownUser { subject, .. } if &**subject == "u9"),
        "{err}"
    );
    let err = sync(&one_source(), base.clone().with_nested("ghost", "g")).unwrap_err();
    assert!(
        matches!(&err, DirectoryError::UnknownGroup { group, member, .. } if &**group == "ghost" && &**member == "ghost"),
        "{err}"
    );
    let err = sync(&one_source(), base.with_nested("g", "ghost")).unwrap_err();
    assert!(err.to_string().contains("define the group"), "{err}");
}

fn three_sources(mode: MembershipMode) -> Directory {
    Directory::new(
        DirectoryConfig::new()
            .source("ldap", 10)
            .source("scim", 20)
            .source_config(SourceConfig::new("local", 30).memberships(false))
            .membership_mode(mode),
    )
    .unwrap()
}

#[test]
fn merge_precedence_per_attribute_records_source() {
    let dir = three_sources(MembershipMode::Union);
    let dir = dir
        .sync(
            "ldap",
            SourceSnapshot::new()
                .with_user(
                    user("u1", "alice")
                        .email("alice@ldap")
                        .display_name("Alice L")
                        .disabled(false),
                )
                .with_group(GroupRecord::new("eng").display_name("Engineering (LDAP)")),
            SyncOptions::new(),
        )
        .unwrap()
        .directory;
    let dir = dir
        .sync(
            "scim",
            SourceSnapshot::new()
                .with_user(UserRecord::new("u1").email("alice@scim"))
                .with_group(GroupRecord::new("eng").display_name("Engineering")),
            SyncOptions::new(),
        )
        .unwrap()
        .directory;
    let dir = dir
        .apply(
            "local",
            [Change::SetDisabled {
                subject: "u1".into(),
                disabled: true,
            }],
        )
        .unwrap()
        .directory;
    let u = dir.user_by_username("alice").unwrap();
    assert_eq!(&*u.username().value, "alice");
    assert_eq!(u.username().source.as_str(), "ldap");
    let email = u.email().unwrap();
    assert_eq!(
        (&*email.value, email.source.as_str()),
        ("alice@scim", "scim")
    );
    let dn = u.display_name().unwrap();
    assert_eq!((&*dn.value, dn.source.as_str()), ("Alice L", "ldap"));
    let dis = u.disabled().unwrap();
    assert_eq!((dis.value, dis.source.as_str()), (true, "local"));
    assert!(u.is_disabled());
    let srcs: Vec<&str> = u.sources().iter().map(SourceId::as_str).collect();
    assert_eq!(srcs, ["local", "scim", "ldap"]);
    let g = dir.group("eng").unwrap();
    assert_eq!(g.display_name().unwrap().source.as_str(), "scim");
    assert!(matches!(
        dir.identity("u1"),
        Err(DirectoryError::UserDisabled(_))
    ));
}

fn membership_fixture(mode: MembershipMode) -> Arc<Directory> {
    let dir = three_sources(mode);
    let dir = dir
        .sync(
            "ldap",
            groups(SourceSnapshot::new(), &["a", "b", "c"])
                .with_user(user("u1", "alice"))
                .with_user(user("u2", "bob"))
                .with_member("u1", "a")
                .with_member("u2", "a"),
            SyncOptions::new(),
        )
        .unwrap()
        .directory;
    let dir = dir
        .sync(
            "scim",
            SourceSnapshot::new()
                .with_member("u1", "b")
                .with_member("u1", "c"),
            SyncOptions::new(),
        )
        .unwrap()
        .directory;
    // An attribute-only overlay from a non-membership source.
    dir.sync(
        "local",
        SourceSnapshot::new().with_user(UserRecord::new("u2").email("bob@local")),
        SyncOptions::new(),
    )
    .unwrap()
    .directory
}

#[test]
fn union_memberships() {
    let dir = membership_fixture(MembershipMode::Union);
    assert_eq!(names(dir.direct_groups("u1").unwrap()), ["a", "b", "c"]);
    assert_eq!(names(dir.direct_groups("u2").unwrap()), ["a"]);
}

#[test]
fn override_memberships() {
    let dir = membership_fixture(MembershipMode::Override);
    // scim (higher) states u1's memberships: ldap's are ignored for u1.
    assert_eq!(names(dir.direct_groups("u1").unwrap()), ["b", "c"]);
    // scim says nothing about u2; local knows u2 but states no memberships.
    assert_eq!(names(dir.direct_groups("u2").unwrap()), ["a"]);
    // A source without memberships may not deliver any.
    let err = dir
        .apply(
            "local",
            [Change::AddMember {
                subject: "u2".into(),
                group: "b".into(),
            }],
        )
        .unwrap_err();
    assert!(
        matches!(err, DirectoryError::MembershipsNotAccepted { count: 1, .. }),
        "{err}"
    );
}

#[test]
fn override_with_user_record_and_no_memberships_empties_groups() {
    let dir = membership_fixture(MembershipMode::Override);
    // scim now delivers u2's record without memberships: it is authoritative.
    let dir = dir
        .sync(
            "scim",
            SourceSnapshot::new()
                .with_user(UserRecord::new("u2"))
                .with_member("u1", "b"),
            SyncOptions::forced(),
        )
        .unwrap()
        .directory;
    assert!(dir.direct_groups("u2").unwrap().is_empty());
    assert_eq!(names(dir.direct_groups("u1").unwrap()), ["b"]);
}

fn many_users(n: usize, skip: usize) -> SourceSnapshot {
    let mut snap = groups(SourceSnapshot::new(), &["g"]);
    for i in skip..n {
        snap.push_user(user(&format!("u{i:03}"), &format!("name{i:03}")));
    }
    snap
}

#[test]
fn deletion_safety() {
    let dir = sync(&one_source(), many_users(100, 0)).unwrap();
    // 20 of 100 deleted: above 10%.
    let err = dir
        .sync("ldap", many_users(100, 20), SyncOptions::new())
        .unwrap_err();
    let msg = err.to_string();
    let DirectoryError::DeletionRefused(report) = err else {
        panic!("{err}")
    };
    assert_eq!((report.users_before, report.users_deleted), (100, 20));
    assert_eq!((report.groups_before, report.groups_deleted), (1, 0));
    assert_eq!(report.deleted_users.len(), 20);
    assert_eq!(&*report.deleted_users[0], "u000");
    assert!((report.user_ratio() - 0.2).abs() < 1e-9);
    assert!((report.max_delete_ratio - 0.1).abs() < 1e-9);
    assert!(!report.forced);
    assert!(
        msg.contains("20 of 100 users") && msg.contains("forced"),
        "{msg}"
    );
    // Nothing changed on refusal.
    assert_eq!(dir.users().len(), 100);

    // 10 of 100 is at the limit, not above it.
    let up = dir
        .sync("ldap", many_users(100, 10), SyncOptions::new())
        .unwrap();
    let report = up.deletions.unwrap();
    assert_eq!(report.users_deleted, 10);
    assert_eq!(up.directory.users().len(), 90);

    // Forced: applied, report says so.
    let up = dir
        .sync("ldap", many_users(100, 50), SyncOptions::forced())
        .unwrap();
    let report = up.deletions.unwrap();
    assert!(report.forced && report.exceeds_limit());
    assert_eq!(up.directory.users().len(), 50);
    assert_eq!(
        up.events
            .iter()
            .filter(|e| matches!(e, DirectoryEvent::UserDeleted { .. }))
            .count(),
        50
    );
}

#[test]
fn empty_snapshot_over_populated_source_is_refused() {
    let dir = sync(&one_source(), many_users(30, 0)).unwrap();
    let err = dir
        .sync("ldap", SourceSnapshot::new(), SyncOptions::new())
        .unwrap_err();
    match &err {
        DirectoryError::DeletionRefused(r) => {
            assert_eq!((r.users_deleted, r.users_before), (30, 30));
            assert_eq!((r.groups_deleted, r.groups_before), (1, 1));
            assert_eq!(r.deleted_users.len(), 20, "list truncated");
            assert!(err.to_string().contains("and 10 more"), "{err}");
        }
        e => panic!("{e}"),
    }
    // Groups alone count too.
    let g = sync(&one_source(), groups(SourceSnapshot::new(), &["a", "b"])).unwrap();
    assert!(
        g.sync(
            "ldap",
            groups(SourceSnapshot::new(), &["a"]),
            SyncOptions::new()
        )
        .is_err()
    );
}

#[test]
fn events_for_disable_delete_membership_and_none_when_unchanged() {
    let base = groups(SourceSnapshot::new(), &["inner", "outer", "other"])
        .with_nested("inner", "outer")
        .with_user(user("u1", "alice"))
        .with_member("u1", "other");
    let up = one_source()
        .sync("ldap", base.clone(), SyncOptions::new())
        .unwrap();
    assert_eq!(
        up.events,
        vec![
            DirectoryEvent::UserCreated {
                subject: "u1".into(),
                username: "alice".into()
            },
            DirectoryEvent::GroupCreated {
                name: "inner".into()
            },
            DirectoryEvent::GroupCreated {
                name: "other".into()
            },
            DirectoryEvent::GroupCreated {
                name: "outer".into()
            },
        ]
    );
    let dir = up.directory;
    // Same snapshot: no events.
    assert!(
        dir.sync("ldap", base.clone(), SyncOptions::new())
            .unwrap()
            .events
            .is_empty()
    );
    // A no-op change: no events.
    let noop = dir
        .apply(
            "ldap",
            [Change::AddMember {
                subject: "u1".into(),
                group: "other".into(),
            }],
        )
        .unwrap();
    assert!(noop.events.is_empty());

    // Membership change: nested groups show in the effective diff.
    let up = dir
        .apply(
            "ldap",
            [
                Change::AddMember {
                    subject: "u1".into(),
                    group: "inner".into(),
                },
                Change::RemoveMember {
                    subject: "u1".into(),
                    group: "other".into(),
                },
            ],
        )
        .unwrap();
    assert_eq!(
        up.events,
        vec![DirectoryEvent::MembershipChanged {
            subject: "u1".into(),
            added: vec!["inner".into(), "outer".into()],
            removed: vec!["other".into()],
            direct_added: vec!["inner".into()],
            direct_removed: vec!["other".into()],
        }]
    );
    assert!(up.events[0].revokes_access());
    let dir = up.directory;

    // Unnesting changes effective but not direct groups.
    let up = dir
        .apply(
            "ldap",
            [Change::Unnest {
                child: "inner".into(),
                parent: "outer".into(),
            }],
        )
        .unwrap();
    assert!(matches!(
        &up.events[..],
        [DirectoryEvent::MembershipChanged { removed, direct_removed, .. }]
            if names(removed) == ["outer"] && direct_removed.is_empty()
    ));

    // Disable, then enable.
    let up = dir
        .apply(
            "ldap",
            [Change::SetDisabled {
                subject: "u1".into(),
                disabled: true,
            }],
        )
        .unwrap();
    assert_eq!(
        up.events,
        vec![DirectoryEvent::UserDisabled {
            subject: "u1".into(),
            username: "alice".into()
        }]
    );
    let up2 = up
        .directory
        .apply(
            "ldap",
            [Change::SetDisabled {
                subject: "u1".into(),
                disabled: false,
            }],
        )
        .unwrap();
    assert!(matches!(
        &up2.events[..],
        [DirectoryEvent::UserEnabled { .. }]
    ));

    // Attribute change.
    let up = dir
        .apply(
            "ldap",
            [Change::UpsertUser(user("u1", "alice2").email("a@x"))],
        )
        .unwrap();
    assert_eq!(
        up.events,
        vec![DirectoryEvent::UserUpdated {
            subject: "u1".into(),
            attributes: vec![UserAttribute::Username, UserAttribute::Email],
        }]
    );

    // Delete.
    let up = dir
        .apply("ldap", [Change::RemoveUser("u1".into())])
        .unwrap();
    assert_eq!(
        up.events,
        vec![DirectoryEvent::UserDeleted {
            subject: "u1".into(),
            username: "alice".into()
        }]
    );
    assert!(up.events[0].revokes_access());
    assert!(up.directory.user("u1").is_none());
}

#[test]
fn shared_directory_notifies_after_swap() {
    let shared = Arc::new(SharedDirectory::new(one_source()));
    let seen: Arc<Mutex<Vec<(DirectoryEvent, usize)>>> = Arc::default();
    let (s2, seen2) = (shared.clone(), seen.clone());
    let id = shared.subscribe(move |e: &DirectoryEvent| {
        // The new snapshot is already visible to readers.
        let users = s2.load().users().len();
        seen2.lock().unwrap().push((e.clone(), users));
    });
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    shared.subscribe(move |_: &DirectoryEvent| {
        c2.fetch_add(1, Ordering::SeqCst);
    });

    shared
        .sync(
            "ldap",
            SourceSnapshot::new().with_user(user("u1", "alice")),
            SyncOptions::new(),
        )
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(
            DirectoryEvent::UserCreated {
                subject: "u1".into(),
                username: "alice".into()
            },
            1
        )]
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // A refused sync changes nothing and notifies no one.
    assert!(
        shared
            .sync("ldap", SourceSnapshot::new(), SyncOptions::new())
            .is_err()
    );
    assert_eq!(shared.load().users().len(), 1);
    assert_eq!(count.load(Ordering::SeqCst), 1);

    assert!(shared.unsubscribe(id));
    assert!(!shared.unsubscribe(id));
    shared
        .apply(
            "ldap",
            [Change::SetDisabled {
                subject: "u1".into(),
                disabled: true,
            }],
        )
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1, "unsubscribed");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(shared.load().user("u1").unwrap().is_disabled());
}

#[test]
fn identity_from_directory() {
    let snap = groups(SourceSnapshot::new(), &["eng", "staff"])
        .with_user(
            user("u1", "alice")
                .email("a@example.com")
                .display_name("Alice"),
        )
        .with_nested("eng", "staff")
        .with_member("u1", "eng");
    let dir = sync(&one_source(), snap).unwrap();
    let id = dir.identity("u1").unwrap();
    assert_eq!((id.subject(), id.username()), ("u1", "alice"));
    assert_eq!(id.email(), Some("a@example.com"));
    assert_eq!(id.display_name(), Some("Alice"));
    assert_eq!(names(id.groups()), ["eng", "staff"]);
    assert!(matches!(
        dir.identity("nobody"),
        Err(DirectoryError::NoSuchUser(_))
    ));
}

#[test]
fn users_with_same_direct_groups_share_lists() {
    let snap = groups(SourceSnapshot::new(), &["a", "b"])
        .with_nested("a", "b")
        .with_user(user("u1", "x"))
        .with_user(user("u2", "y"))
        .with_member("u1", "a")
        .with_member("u2", "a");
    let dir = sync(&one_source(), snap).unwrap();
    let (g1, g2) = (
        dir.effective_groups("u1").unwrap(),
        dir.effective_groups("u2").unwrap(),
    );
    assert!(Arc::ptr_eq(g1, g2));
}

#[test]
fn invalid_names_refused() {
    let long = "x".repeat(257);
    let cases = [
        SourceSnapshot::new().with_user(user("", "alice")),
        SourceSnapshot::new().with_user(user("u1", "")),
        SourceSnapshot::new().with_user(user(&long, "alice")),
        SourceSnapshot::new().with_user(user("u1", "al\nice")),
        SourceSnapshot::new().with_user(user("u1", " alice")),
        SourceSnapshot::new().with_group(GroupRecord::new("")),
        SourceSnapshot::new().with_group(GroupRecord::new(long.as_str())),
        SourceSnapshot::new().with_user(user("u1", "alice").email(long.as_str())),
    ];
    for snap in cases {
        let err = sync(&one_source(), snap.clone()).unwrap_err();
        let DirectoryError::InvalidName { value, .. } = &err else {
            panic!("{snap:?}: {err}")
        };
        assert!(
            value.chars().count() <= 65,
            "value is truncated in the error"
        );
    }
    // A very long name in a membership is cut in the error.
    let err = sync(
        &one_source(),
        SourceSnapshot::new()
            .with_user(user("u1", "alice"))
            .with_member("u1", "y".repeat(1 << 20)),
    )
    .unwrap_err();
    assert!(matches!(err, DirectoryError::UnknownGroup { .. }), "{err}");
    assert!(err.to_string().len() < 1000, "{err}");
    // 256 bytes is fine.
    assert!(
        sync(
            &one_source(),
            groups(SourceSnapshot::new(), &[&"x".repeat(256)])
        )
        .is_ok()
    );
}

#[test]
fn duplicates_and_missing_usernames_refused() {
    let dup = SourceSnapshot::new()
        .with_user(user("u1", "a"))
        .with_user(user("u1", "b"));
    assert!(matches!(
        sync(&one_source(), dup),
        Err(DirectoryError::DuplicateUser { .. })
    ));
    let dup = groups(SourceSnapshot::new(), &["g", "g"]);
    assert!(matches!(
        sync(&one_source(), dup),
        Err(DirectoryError::DuplicateGroup { .. })
    ));
    let same_name = SourceSnapshot::new()
        .with_user(user("u1", "alice"))
        .with_user(user("u2", "alice"));
    let err = sync(&one_source(), same_name).unwrap_err();
    assert!(
        matches!(&err, DirectoryError::DuplicateUsername { first, second, .. } if &**first == "u1" && &**second == "u2"),
        "{err}"
    );
    let overlay_only = three_sources(MembershipMode::Union).apply(
        "local",
        [Change::SetDisabled {
            subject: "ghost".into(),
            disabled: true,
        }],
    );
    assert!(matches!(
        overlay_only,
        Err(DirectoryError::MissingUsername { .. })
    ));
}

#[test]
fn config_validation() {
    let bad = [
        DirectoryConfig::new().source("a", 1).source("b", 1),
        DirectoryConfig::new().source("a", 1).source("a", 2),
        DirectoryConfig::new().source("", 1),
        DirectoryConfig::new().max_delete_ratio(1.5),
        DirectoryConfig::new().max_delete_ratio(f64::NAN),
        DirectoryConfig::new().max_name_len(0),
    ];
    for c in bad {
        assert!(Directory::new(c.clone()).is_err(), "{c:?}");
    }
    let err = one_source()
        .sync("nope", SourceSnapshot::new(), SyncOptions::new())
        .unwrap_err();
    assert!(matches!(err, DirectoryError::UnknownSource(_)));
}

#[test]
fn huge_fan_out() {
    // One group with 50_000 direct members: fine.
    let mut snap = groups(SourceSnapshot::new(), &["all"]);
    for i in 0..50_000 {
        let s = format!("u{i}");
        snap.push_user(user(&s, &s));
        snap.push_member(s.as_str(), "all");
    }
    let dir = sync(&one_source(), snap).unwrap();
    assert_eq!(dir.effective_members("all").unwrap().len(), 50_000);

    // One user in 5_000 groups: above the default 4096.
    let mut snap = SourceSnapshot::new().with_user(user("u", "u"));
    for i in 0..5_000 {
        let g = format!("g{i}");
        snap.push_group(GroupRecord::new(g.as_str()));
        snap.push_member("u", g.as_str());
    }
    let err = sync(&one_source(), snap).unwrap_err();
    assert!(
        matches!(
            err,
            DirectoryError::TooManyGroups {
                count: 5_000,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );

    // One group nested in 5_000 groups.
    let mut snap = groups(SourceSnapshot::new(), &["child"]);
    for i in 0..5_000 {
        let g = format!("g{i}");
        snap.push_group(GroupRecord::new(g.as_str()));
        snap.push_nested("child", g.as_str());
    }
    let err = sync(&one_source(), snap).unwrap_err();
    assert!(
        matches!(&err, DirectoryError::TooManyGroups { member, .. } if &**member == "child"),
        "{err}"
    );
}

#[test]
fn from_snapshots_builds_without_deletion_checks() {
    let dir = Directory::from_snapshots(
        DirectoryConfig::new().source("ldap", 1).source("scim", 2),
        [
            (SourceId::from("ldap"), many_users(3, 0)),
            (
                SourceId::from("scim"),
                SourceSnapshot::new().with_member("u001", "g"),
            ),
        ],
    )
    .unwrap();
    assert_eq!(dir.users().len(), 3);
    assert!(dir.is_member("u001", "g"));
    assert!(dir.source("scim").is_some() && dir.source("other").is_none());
}

// ---- proptest: closure against a naive BFS ----

fn naive_effective(direct: &[usize], parents: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; parents.len()];
    let mut queue: std::collections::VecDeque<usize> = direct.iter().copied().collect();
    while let Some(g) = queue.pop_front() {
        if seen[g] {
            continue;
        }
        seen[g] = true;
        queue.extend(parents[g].iter().copied());
    }
    (0..parents.len()).filter(|&g| seen[g]).collect()
}

fn dag_strategy() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, Vec<Vec<usize>>)> {
    (1usize..25).prop_flat_map(|n| {
        let edges = proptest::collection::vec((0..n, 0..n), 0..60);
        let users = proptest::collection::vec(proptest::collection::vec(0..n, 0..4), 0..12);
        (Just(n), edges, users)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn closure_matches_naive_bfs((n, edges, users) in dag_strategy()) {
        // Orient every edge from the lower to the higher index: a DAG.
        let edges: Vec<(usize, usize)> = edges
            .into_iter()
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (a.min(b), a.max(b)))
            .collect();
        // Zero-padded names sort like their indices.
        let name = |g: usize| format!("g{g:03}");
        let mut snap = SourceSnapshot::new();
        let mut parents = vec![Vec::new(); n];
        for g in 0..n {
            snap.push_group(GroupRecord::new(name(g).as_str()));
        }
        for &(c, p) in &edges {
            snap.push_nested(name(c).as_str(), name(p).as_str());
            parents[c].push(p);
        }
        for (i, direct) in users.iter().enumerate() {
            let s = format!("u{i:03}");
            snap.push_user(user(&s, &s));
            for &g in direct {
                snap.push_member(s.as_str(), name(g).as_str());
            }
        }
        let cfg = DirectoryConfig::new().source("ldap", 1).max_depth(usize::MAX);
        let dir = Directory::from_snapshots(cfg, [(SourceId::from("ldap"), snap)]).unwrap();
        for (i, direct) in users.iter().enumerate() {
            let s = format!("u{i:03}");
            let want: Vec<String> = naive_effective(direct, &parents).into_iter().map(name).collect();
            let got: Vec<String> = dir.effective_groups(&s).unwrap().iter().map(|g| g.to_string()).collect();
            prop_assert_eq!(&got, &want);
            for g in 0..n {
                let inherited = direct.iter().any(|&d| d != g && naive_effective(&[d], &parents).contains(&g));
                let m = dir.membership(&s, &name(g));
                prop_assert_eq!(m.is_some(), want.contains(&name(g)));
                if let Some(m) = m {
                    prop_assert_eq!(m.direct, direct.contains(&g));
                    prop_assert_eq!(!m.via.is_empty(), inherited);
                }
            }
        }
        for g in 0..n {
            let mut want = naive_effective(&[g], &parents);
            want.retain(|&x| x != g);
            let got: Vec<String> = dir.ancestor_groups(&name(g)).unwrap().iter().map(|x| x.name().to_string()).collect();
            prop_assert_eq!(got, want.into_iter().map(name).collect::<Vec<_>>());
        }
    }
}
