//! Directory benchmarks: closure rebuild for 100k users / 10k groups nested
//! 5 deep (each user in 3 direct groups), and per-user lookups.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hexon_core::directory::{
    Directory, DirectoryConfig, GroupRecord, SourceId, SourceSnapshot, SyncOptions, UserRecord,
};

const USERS: usize = 100_000;
const GROUPS: usize = 10_000;
const LEVELS: usize = 5;

/// A small deterministic generator (no `rand` dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound
    }
}

/// 10k groups in 5 levels of 2k; each group below the top is nested in two
/// groups of the next level up (so chains are 5 groups deep and the graph
/// has diamonds). 100k users, each a direct member of 3 random groups.
fn snapshot() -> SourceSnapshot {
    let mut rng = Lcg(42);
    let per_level = GROUPS / LEVELS;
    let name = |g: usize| format!("group-{g:05}");
    let mut snap = SourceSnapshot::new();
    for g in 0..GROUPS {
        snap.push_group(GroupRecord::new(name(g).as_str()));
    }
    for level in 0..LEVELS - 1 {
        for i in 0..per_level {
            let child = level * per_level + i;
            for _ in 0..2 {
                let parent = (level + 1) * per_level + rng.next(per_level);
                snap.push_nested(name(child).as_str(), name(parent).as_str());
            }
        }
    }
    for u in 0..USERS {
        let subject = format!("subject-{u:06}");
        snap.push_user(
            UserRecord::new(subject.as_str())
                .username(format!("user{u}"))
                .email(format!("user{u}@example.com")),
        );
        for _ in 0..3 {
            snap.push_member(subject.as_str(), name(rng.next(GROUPS)).as_str());
        }
    }
    snap
}

fn config() -> DirectoryConfig {
    DirectoryConfig::new().source("ldap", 10)
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let dir =
        Directory::from_snapshots(config(), [(SourceId::from("ldap"), snap.clone())]).unwrap();

    let mut g = c.benchmark_group("directory");
    g.sample_size(10);
    g.bench_function("rebuild_100k_users_10k_groups_5_deep", |b| {
        b.iter_batched(
            || snap.clone(),
            |s| Directory::from_snapshots(config(), [(SourceId::from("ldap"), s)]).unwrap(),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("sync_unchanged_100k_with_diff", |b| {
        b.iter_batched(
            || snap.clone(),
            |s| dir.sync("ldap", s, SyncOptions::new()).unwrap(),
            BatchSize::LargeInput,
        );
    });
    g.finish();

    let mut i = 0usize;
    c.bench_function("directory/effective_groups_by_username", |b| {
        b.iter(|| {
            i = (i + 7919) % USERS;
            let name = format!("user{i}");
            black_box(
                dir.user_by_username(black_box(&name))
                    .unwrap()
                    .groups()
                    .len(),
            )
        });
    });
    let names: Vec<String> = (0..1024).map(|i| format!("user{}", i * 97)).collect();
    let mut j = 0usize;
    c.bench_function("directory/effective_groups_by_username_prebuilt_key", |b| {
        b.iter(|| {
            j = (j + 1) & 1023;
            black_box(
                dir.user_by_username(black_box(&names[j]))
                    .unwrap()
                    .groups()
                    .len(),
            )
        });
    });
    c.bench_function("directory/identity_for_subject", |b| {
        b.iter(|| black_box(dir.identity(black_box("subject-012345")).unwrap()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
