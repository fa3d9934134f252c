//! Public-API tests of the directory: a shared handle used from several threads.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use hexon_core::directory::{
    Change, Directory, DirectoryConfig, DirectoryEvent, GroupRecord, SharedDirectory,
    SourceSnapshot, SyncOptions, UserRecord,
};

#[test]
fn readers_see_consistent_snapshots_while_a_writer_updates() {
    let snap = SourceSnapshot::new()
        .with_group(GroupRecord::new("eng"))
        .with_group(GroupRecord::new("staff"))
        .with_nested("eng", "staff")
        .with_user(UserRecord::new("u1").username("alice"))
        .with_member("u1", "eng");
    let dir = Directory::new(DirectoryConfig::new().source("local", 1)).unwrap();
    let shared = Arc::new(SharedDirectory::new(
        dir.sync("local", snap, SyncOptions::new())
            .unwrap()
            .directory
            .as_ref()
            .clone(),
    ));
    let disabled = Arc::new(AtomicUsize::new(0));
    let d2 = disabled.clone();
    shared.subscribe(move |e: &DirectoryEvent| {
        if matches!(e, DirectoryEvent::UserDisabled { .. }) {
            d2.fetch_add(1, Ordering::SeqCst);
        }
    });

    let readers: Vec<_> = (0..4)
        .map(|_| {
            let shared = shared.clone();
            thread::spawn(move || {
                for _ in 0..2_000 {
                    let d = shared.load();
                    let u = d.user_by_username("alice").unwrap();
                    // Effective groups always include the inherited one.
                    assert!(u.in_group("eng") && u.in_group("staff"));
                    match d.identity("u1") {
                        Ok(id) => assert!(id.in_group("staff")),
                        Err(e) => assert!(u.is_disabled(), "{e}"),
                    }
                }
            })
        })
        .collect();
    for i in 0..50 {
        shared
            .apply(
                "local",
                [Change::SetDisabled {
                    subject: "u1".into(),
                    disabled: i % 2 == 0,
                }],
            )
            .unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(disabled.load(Ordering::SeqCst), 25);
    assert!(!shared.load().user("u1").unwrap().is_disabled());
}
