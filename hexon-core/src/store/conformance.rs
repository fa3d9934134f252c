//! One conformance suite for every backend of the state layer.
//!
//! Each backend's tests call these functions with a fresh store (an empty
//! SQLite file, a new PostgreSQL schema, a NATS server): the same
//! assertions run against in-process, SQLite, PostgreSQL and NATS, so a
//! backend swapped in by configuration behaves the same. The functions
//! panic with a message naming the backend and the broken rule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use rand_core::{OsRng, RngCore};

use super::bus::{Event, EventBus, StartAt};
use super::durable::{
    AcmeAccountRecord, AcmeAccountStatus, ApiClientRecord, CertificateRecord, ClientStatus,
    CredentialKind, CredentialRecord, DurableStore, Material, NewAuditEvent, OidcClientRecord,
    PermissionRecord, Revocation, RouteRecord,
};
use super::kv::{KvBackend, KvStore, MAX_KEY_LEN, MAX_VALUE_LEN};
use super::{SecretBytes, StoreError};
use crate::UnixTime;
use crate::directory::{GroupRecord, SourceId, SourceSnapshot, UserRecord};

/// A random suffix for names shared with other test runs (buckets, subjects).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", OsRng.next_u64())
}

const TTL: Duration = Duration::from_secs(60);

// ----------------------------------------------------------------------- KV

/// Every KV rule, on fresh buckets of `backend`.
pub async fn kv_suite(backend: &dyn KvBackend) {
    let name = backend.backend();
    let kv = backend
        .bucket(&unique("crud"), Duration::from_secs(3600))
        .await
        .unwrap();
    kv_crud(name, kv.as_ref()).await;
    kv_cas(name, kv.as_ref()).await;
    kv_hostile_keys(name, kv.as_ref()).await;
    kv_limits(name, kv.as_ref()).await;
    let race = backend.bucket(&unique("race"), TTL).await.unwrap();
    kv_put_if_absent_race(name, race).await;
    let ttl = backend.bucket(&unique("ttl"), TTL).await.unwrap();
    kv_ttl_expiry(name, ttl.as_ref()).await;
    kv_buckets_are_separate(backend).await;
}

/// `get_now`, where the backend answers it, says what `get` says.
async fn now_agrees(name: &str, kv: &dyn KvStore, key: &str, step: &str) {
    if let Some(now) = kv.get_now(key) {
        assert_eq!(
            Some(now),
            kv.get(key).await.ok(),
            "{name}: get_now and get disagree {step}"
        );
    }
}

/// get / put / delete.
pub async fn kv_crud(name: &str, kv: &dyn KvStore) {
    let key = unique("k");
    assert_eq!(
        kv.get(&key).await.unwrap(),
        None,
        "{name}: fresh key must be absent"
    );
    now_agrees(name, kv, &key, "on a fresh key").await;
    let r1 = kv.put(&key, b"one", TTL).await.unwrap();
    now_agrees(name, kv, &key, "after put").await;
    let got = kv.get(&key).await.unwrap().expect("value after put");
    assert_eq!(
        (got.value.as_slice(), got.revision),
        (&b"one"[..], r1),
        "{name}: get after put"
    );
    let r2 = kv.put(&key, b"two", TTL).await.unwrap();
    assert_ne!(r1, r2, "{name}: every write must change the revision");
    assert_eq!(kv.get(&key).await.unwrap().unwrap().value, b"two");
    let empty = unique("empty");
    kv.put(&empty, b"", TTL).await.unwrap();
    assert_eq!(
        kv.get(&empty).await.unwrap().unwrap().value,
        b"",
        "{name}: empty values are values"
    );
    let binary: Vec<u8> = (0..=255u8).collect();
    kv.put(&empty, &binary, TTL).await.unwrap();
    assert_eq!(
        kv.get(&empty).await.unwrap().unwrap().value,
        binary,
        "{name}: values are bytes"
    );
    assert!(
        kv.delete(&key).await.unwrap(),
        "{name}: delete of a live key"
    );
    assert!(
        !kv.delete(&key).await.unwrap(),
        "{name}: second delete finds nothing"
    );
    assert_eq!(kv.get(&key).await.unwrap(), None);
    now_agrees(name, kv, &key, "after delete").await;
    assert_eq!(
        kv.get_now(""),
        None,
        "{name}: get_now of an invalid key must leave the error to get"
    );
}

/// compare-and-set, delete-if, and no ABA after delete and re-create.
pub async fn kv_cas(name: &str, kv: &dyn KvStore) {
    let key = unique("cas");
    assert_eq!(
        kv.compare_and_set(&key, super::Revision(1), b"x", TTL)
            .await
            .unwrap(),
        None,
        "{name}: CAS on a missing key must fail"
    );
    let r1 = kv
        .put_if_absent(&key, b"v1", TTL)
        .await
        .unwrap()
        .expect("first create");
    assert_eq!(
        kv.put_if_absent(&key, b"v1b", TTL).await.unwrap(),
        None,
        "{name}: second create"
    );
    let r2 = kv
        .compare_and_set(&key, r1, b"v2", TTL)
        .await
        .unwrap()
        .expect("CAS at the current revision");
    assert_eq!(
        kv.compare_and_set(&key, r1, b"stale", TTL).await.unwrap(),
        None,
        "{name}: CAS at a stale revision must fail"
    );
    assert_eq!(
        kv.get(&key).await.unwrap().unwrap().value,
        b"v2",
        "{name}: a failed CAS writes nothing"
    );
    assert!(
        !kv.delete_if(&key, r1).await.unwrap(),
        "{name}: delete_if at a stale revision"
    );
    assert!(
        kv.delete_if(&key, r2).await.unwrap(),
        "{name}: delete_if at the current revision"
    );
    assert!(
        !kv.delete_if(&key, r2).await.unwrap(),
        "{name}: delete_if twice"
    );
    // ABA: re-created key must not accept a revision from its previous life.
    let r3 = kv
        .put_if_absent(&key, b"again", TTL)
        .await
        .unwrap()
        .expect("re-create after delete");
    assert_ne!(r3, r2, "{name}: revisions must not be reused after delete");
    assert_ne!(r3, r1, "{name}: revisions must not be reused after delete");
    assert_eq!(
        kv.compare_and_set(&key, r1, b"aba", TTL).await.unwrap(),
        None,
        "{name}: ABA"
    );
    assert_eq!(
        kv.compare_and_set(&key, r2, b"aba", TTL).await.unwrap(),
        None,
        "{name}: ABA"
    );
    // CAS from many tasks: exactly one wins per round.
}

/// Keys with characters that mean something to some backend are just keys.
pub async fn kv_hostile_keys(name: &str, kv: &dyn KvStore) {
    let base = unique("h");
    let keys = [
        format!("{base} with spaces"),
        format!("{base}.*"),
        format!("{base}.>"),
        format!("../{base}/../../etc"),
        format!("{base}\u{e9}\u{1F600}"),
        format!(".{base}."),
        format!("{base}%00\0nul"),
        format!("{base}'; DROP TABLE kv; --"),
        format!("{base}=="),
        "x".repeat(MAX_KEY_LEN),
    ];
    let mut revisions = HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        let r = kv
            .put(key, format!("v{i}").as_bytes(), TTL)
            .await
            .unwrap_or_else(|e| panic!("{name}: key {key:?} refused: {e}"));
        revisions.insert(r);
    }
    for (i, key) in keys.iter().enumerate() {
        let got = kv
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: key {key:?} lost"));
        assert_eq!(
            got.value,
            format!("v{i}").as_bytes(),
            "{name}: key {key:?} collided with another"
        );
    }
    assert_eq!(
        kv.get(&format!("{base}.x")).await.unwrap(),
        None,
        "{name}: wildcard key matched"
    );
    for key in &keys {
        assert!(kv.delete(key).await.unwrap());
    }
}

/// Empty, oversized keys and oversized values are refused with `Invalid`.
pub async fn kv_limits(name: &str, kv: &dyn KvStore) {
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Invalid { .. }));
    assert!(invalid(kv.get("").await.map(|_| ())), "{name}: empty key");
    assert!(
        invalid(
            kv.put(&"k".repeat(MAX_KEY_LEN + 1), b"v", TTL)
                .await
                .map(|_| ())
        ),
        "{name}: long key"
    );
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(
        invalid(kv.put(&unique("big"), &big, TTL).await.map(|_| ())),
        "{name}: big value"
    );
    assert!(
        invalid(
            kv.put(&unique("ttl"), b"v", Duration::ZERO)
                .await
                .map(|_| ())
        ),
        "{name}: zero TTL"
    );
    let max = vec![7u8; MAX_VALUE_LEN];
    let key = unique("max");
    kv.put(&key, &max, TTL)
        .await
        .unwrap_or_else(|e| panic!("{name}: largest value refused: {e}"));
    assert_eq!(
        kv.get(&key).await.unwrap().unwrap().value.len(),
        MAX_VALUE_LEN
    );
}

/// 64 tasks race put-if-absent on the same keys: exactly one wins each key.
pub async fn kv_put_if_absent_race(name: &str, kv: Arc<dyn KvStore>) {
    const TASKS: usize = 64;
    const KEYS: usize = 20;
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|_| unique("nonce")).collect());
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (kv, keys) = (kv.clone(), keys.clone());
        handles.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for key in keys.iter() {
                if kv
                    .put_if_absent(key, task.to_string().as_bytes(), TTL)
                    .await
                    .unwrap()
                    .is_some()
                {
                    won.push(key.clone());
                }
            }
            (task, won)
        }));
    }
    let mut winners = std::collections::HashMap::new();
    for h in handles {
        let (task, won) = h.await.unwrap();
        for key in won {
            assert!(
                winners.insert(key.clone(), task).is_none(),
                "{name}: two winners for {key}"
            );
        }
    }
    assert_eq!(
        winners.len(),
        KEYS,
        "{name}: every key must have exactly one winner"
    );
    for (key, task) in winners {
        let stored = kv.get(&key).await.unwrap().unwrap();
        assert_eq!(
            stored.value,
            task.to_string().as_bytes(),
            "{name}: the winner's value must stay"
        );
    }

    // CAS race: 16 tasks increment one counter 10 times each with retries.
    let counter = unique("counter");
    kv.put(&counter, b"0", TTL).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..16 {
        let (kv, counter) = (kv.clone(), counter.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let e = kv.get(&counter).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    if kv
                        .compare_and_set(&counter, e.revision, next.as_bytes(), TTL)
                        .await
                        .unwrap()
                        .is_some()
                    {
                        break;
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = kv.get(&counter).await.unwrap().unwrap();
    assert_eq!(total.value, b"160", "{name}: CAS lost increments");
}

/// Entries disappear for every operation once their TTL passes.
pub async fn kv_ttl_expiry(name: &str, kv: &dyn KvStore) {
    let short = Duration::from_secs(1);
    let (a, b, c, d) = (unique("a"), unique("b"), unique("c"), unique("d"));
    kv.put(&a, b"a", short).await.unwrap();
    let rb = kv.put_if_absent(&b, b"b", short).await.unwrap().unwrap();
    let rc = kv.put(&c, b"c", short).await.unwrap();
    kv.put(&d, b"d", TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(
        kv.get(&a).await.unwrap(),
        None,
        "{name}: expired entry still visible"
    );
    now_agrees(name, kv, &a, "after expiry").await;
    assert!(
        kv.put_if_absent(&b, b"b2", TTL).await.unwrap().is_some(),
        "{name}: put_if_absent must succeed over an expired entry"
    );
    assert_ne!(kv.get(&b).await.unwrap().unwrap().revision, rb);
    assert_eq!(
        kv.compare_and_set(&c, rc, b"c2", TTL).await.unwrap(),
        None,
        "{name}: CAS on an expired entry"
    );
    assert!(
        !kv.delete(&a).await.unwrap(),
        "{name}: delete of an expired entry reports a live one"
    );
    assert_eq!(
        kv.get(&d).await.unwrap().unwrap().value,
        b"d",
        "{name}: a long TTL expired early"
    );
    // A put refreshes the TTL.
    let e = unique("e");
    kv.put(&e, b"1", short).await.unwrap();
    kv.put(&e, b"2", TTL).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        kv.get(&e).await.unwrap().unwrap().value,
        b"2",
        "{name}: put must reset the TTL"
    );
}

/// The same key in two buckets is two entries.
pub async fn kv_buckets_are_separate(backend: &dyn KvBackend) {
    let name = backend.backend();
    let (one, two) = (unique("one"), unique("two"));
    let a = backend.bucket(&one, TTL).await.unwrap();
    let b = backend.bucket(&two, TTL).await.unwrap();
    a.put("shared-key", b"a", TTL).await.unwrap();
    assert_eq!(
        b.get("shared-key").await.unwrap(),
        None,
        "{name}: buckets leak into each other"
    );
    let again = backend.bucket(&one, TTL).await.unwrap();
    assert_eq!(
        again.get("shared-key").await.unwrap().unwrap().value,
        b"a",
        "{name}: reopening a bucket"
    );
    assert!(
        matches!(
            backend.bucket("Bad Name!", TTL).await,
            Err(StoreError::Invalid { .. })
        ),
        "{name}: invalid bucket name accepted"
    );
}

// ---------------------------------------------------------------------- bus

/// Event bus rules: order, replay after a sequence number, live delivery to
/// several subscribers, unknown events decoded.
pub async fn bus_suite(bus: Arc<dyn EventBus>) {
    let name = bus.backend();
    let start = bus.last_seq().await.unwrap();
    let mut live_a = bus.subscribe(StartAt::New).await.unwrap();
    let mut live_b = bus.subscribe(StartAt::New).await.unwrap();
    let subject = unique("user");
    let events: Vec<Event> = (0..50)
        .map(|i| match i % 3 {
            0 => Event::UserDisabled {
                subject: format!("{subject}-{i}"),
            },
            1 => Event::SessionRevoked {
                session: format!("s-{i}"),
                subject: subject.clone(),
            },
            _ => Event::ConfigChanged {
                sha256: format!("{i:064x}"),
            },
        })
        .collect();
    let mut seqs = Vec::new();
    for e in &events {
        seqs.push(bus.publish(e).await.unwrap());
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{name}: sequence numbers must increase"
    );
    assert!(
        seqs[0] > start,
        "{name}: sequence must move past the last one"
    );
    assert_eq!(
        bus.last_seq().await.unwrap(),
        *seqs.last().unwrap(),
        "{name}: last_seq"
    );
    for sub in [&mut live_a, &mut live_b] {
        for (e, seq) in events.iter().zip(&seqs) {
            let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: live event {seq} not delivered"))
                .unwrap()
                .unwrap();
            assert_eq!((&got.event, got.seq), (e, *seq), "{name}: live order");
        }
    }
    // Replay from the middle, then live.
    let mid = seqs[24];
    let mut replay = bus.subscribe(StartAt::After(mid)).await.unwrap();
    for (e, seq) in events.iter().zip(&seqs).skip(25) {
        let got = tokio::time::timeout(Duration::from_secs(10), replay.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((&got.event, got.seq), (e, *seq), "{name}: replay order");
    }
    let later = Event::UserSessionsRevoked {
        subject: subject.clone(),
    };
    let seq = bus.publish(&later).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), replay.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.event, got.seq),
        (later, seq),
        "{name}: live after replay"
    );
    assert!(
        !got.node.is_empty(),
        "{name}: events carry the publishing node"
    );
}

// ------------------------------------------------------------------ durable

fn credential(
    id: &str,
    owner: &str,
    kind: CredentialKind,
    lookup: Option<&str>,
    material: Material,
    at: i64,
) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        owner: owner.into(),
        kind,
        label: format!("{} of {owner}", kind.as_str()),
        lookup: lookup.map(Into::into),
        material,
        counter: 0,
        created_at: UnixTime::from_secs(at),
        last_used_at: None,
        expires_at: None,
    }
}

fn client(id: &str, name: &str) -> ApiClientRecord {
    ApiClientRecord {
        id: id.into(),
        name: name.into(),
        status: ClientStatus::Active,
        groups: vec!["billing".into(), "ci".into()],
        description: "CI runner".into(),
        rate_limit_per_minute: Some(600),
        created_at: UnixTime::from_secs(1_700_000_000),
        updated_at: UnixTime::from_secs(1_700_000_000),
        version: 0,
    }
}

/// Every durable rule, on a fresh (empty) store.
pub async fn durable_suite(store: &dyn DurableStore) {
    durable_directory(store).await;
    durable_credentials(store).await;
    durable_api_clients(store).await;
    durable_oidc_clients(store).await;
    durable_routes(store).await;
    durable_acme_accounts(store).await;
    durable_certificates(store).await;
    durable_audit(store).await;
}

/// Directory snapshots per source round-trip; a save replaces the source.
pub async fn durable_directory(store: &dyn DurableStore) {
    let name = store.backend();
    let ldap = SourceId::new("ldap");
    let local = SourceId::new("local");
    let snap = SourceSnapshot::new()
        .with_user(
            UserRecord::new("u1")
                .username("alice")
                .email("alice@example.com")
                .display_name("Alice Ä"),
        )
        .with_user(UserRecord::new("u2").username("bob").disabled(true))
        .with_group(GroupRecord::new("eng").display_name("Engineering"))
        .with_group(GroupRecord::new("staff"))
        .with_member("u1", "eng")
        .with_member("u2", "staff")
        .with_nested("eng", "staff");
    store.save_source(&ldap, &snap).await.unwrap();
    let overlay = SourceSnapshot::new()
        .with_user(UserRecord::new("u1").disabled(false))
        .with_member("u1", "staff");
    store.save_source(&local, &overlay).await.unwrap();
    let loaded = store.load_sources().await.unwrap();
    assert_eq!(loaded.len(), 2, "{name}: two sources");
    assert_eq!(loaded[0].0, ldap);
    assert_eq!(
        normalise(&loaded[0].1),
        normalise(&snap),
        "{name}: snapshot round trip"
    );
    assert_eq!(
        normalise(&loaded[1].1),
        normalise(&overlay),
        "{name}: overlay round trip"
    );
    let found = store.find_user("u1").await.unwrap();
    assert_eq!(found.len(), 2, "{name}: find_user across sources");
    assert_eq!(found[0].1.username.as_deref(), Some("alice"));
    assert_eq!(found[1].1.disabled, Some(false));
    // The merged directory builds from what was loaded.
    let dir = crate::directory::Directory::from_snapshots(
        crate::directory::DirectoryConfig::new()
            .source("ldap", 10)
            .source("local", 20),
        loaded.iter().cloned(),
    )
    .unwrap();
    assert!(
        dir.is_member("u1", "staff"),
        "{name}: nested membership after load"
    );
    // A save replaces the source's previous snapshot.
    let smaller = SourceSnapshot::new().with_user(UserRecord::new("u1").username("alice"));
    store.save_source(&ldap, &smaller).await.unwrap();
    let loaded = store.load_sources().await.unwrap();
    assert_eq!(
        normalise(&loaded[0].1),
        normalise(&smaller),
        "{name}: save must replace"
    );
    assert!(
        store.find_user("u2").await.unwrap().is_empty(),
        "{name}: removed user still found"
    );
    assert!(store.delete_source(&local).await.unwrap());
    assert!(!store.delete_source(&local).await.unwrap());
    assert_eq!(store.load_sources().await.unwrap().len(), 1);
}

fn normalise(s: &SourceSnapshot) -> SourceSnapshot {
    let mut s = s.clone();
    s.users.sort_by(|a, b| a.subject.cmp(&b.subject));
    s.groups.sort_by(|a, b| a.name.cmp(&b.name));
    s.user_memberships.sort();
    s.user_memberships.dedup();
    s.group_memberships.sort();
    s.group_memberships.dedup();
    s
}

/// A source's snapshot: users `<p>01..<p>50`, all members of group `g_<p>`.
fn snapshot_of(prefix: &str) -> SourceSnapshot {
    let group = format!("g_{prefix}");
    let mut snapshot = SourceSnapshot::new().with_group(GroupRecord::new(group.as_str()));
    for i in 1..=50 {
        let subject = format!("{prefix}{i:02}");
        snapshot = snapshot
            .with_user(UserRecord::new(subject.as_str()))
            .with_member(subject.as_str(), group.as_str());
    }
    snapshot
}

/// A directory load sees each save of a source whole, never a mix of two:
/// a writer alternates two snapshots of one source while loads run (a user
/// removed from a group must not keep the membership on a node that loaded
/// half of a sync).
pub async fn durable_loads_are_whole(store: Arc<dyn DurableStore>) {
    let name = store.backend();
    let (a, b) = (normalise(&snapshot_of("a")), normalise(&snapshot_of("b")));
    let source = SourceId::new("loads-are-whole");
    store.save_source(&source, &a).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, source, done) = (store.clone(), source.clone(), done.clone());
        let (a, b) = (a.clone(), b.clone());
        async move {
            for i in 0..40 {
                let next = if i % 2 == 0 { &b } else { &a };
                store.save_source(&source, next).await.unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut loads = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) || loads < 20 {
        let loaded = store.load_sources().await.unwrap();
        let got = loaded
            .iter()
            .find(|(id, _)| *id == source)
            .map(|(_, s)| normalise(s))
            .unwrap_or_else(|| panic!("{name}: the source vanished during a save"));
        assert!(
            got == a || got == b,
            "{name}: load {loads} mixed two saves: users {:?}…, groups {:?}",
            got.users
                .iter()
                .take(2)
                .map(|u| &u.subject)
                .collect::<Vec<_>>(),
            got.groups.iter().map(|g| &g.name).collect::<Vec<_>>(),
        );
        loads += 1;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(store.delete_source(&source).await.unwrap());
}

/// Credentials: sealing, lookups, uniqueness, counter compare-and-set.
pub async fn durable_credentials(store: &dyn DurableStore) {
    let name = store.backend();
    let totp = credential(
        "c-totp",
        "u1",
        CredentialKind::Totp,
        None,
        Material::Secret(SecretBytes::new(b"JBSWY3DPEHPK3PXP".to_vec())),
        10,
    );
    let pw = credential(
        "c-pw",
        "u1",
        CredentialKind::Password,
        None,
        Material::Hash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        5,
    );
    let key = credential(
        "c-key",
        "svc-1",
        CredentialKind::ApiKey,
        Some("hx_ab12"),
        Material::Hash("9f86d08".into()),
        7,
    );
    let passkey = credential(
        "c-wa",
        "u1",
        CredentialKind::WebAuthn,
        Some("Y3JlZC1pZA"),
        Material::Public(vec![1, 2, 3]),
        20,
    );
    for c in [&totp, &pw, &key, &passkey] {
        store.insert_credential(c).await.unwrap();
    }
    assert_eq!(
        store.credential("c-totp").await.unwrap().as_ref(),
        Some(&totp),
        "{name}: sealed secret round trip"
    );
    assert_eq!(store.credential("nope").await.unwrap(), None);
    let mine: Vec<String> = store
        .credentials_of("u1")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        mine,
        ["c-pw", "c-totp", "c-wa"],
        "{name}: credentials_of order"
    );
    assert_eq!(
        store
            .credential_by_lookup(CredentialKind::ApiKey, "hx_ab12")
            .await
            .unwrap()
            .as_ref(),
        Some(&key),
        "{name}: lookup"
    );
    assert_eq!(
        store
            .credential_by_lookup(CredentialKind::WebAuthn, "hx_ab12")
            .await
            .unwrap(),
        None,
        "{name}: lookup is per kind"
    );
    let dup_id = credential(
        "c-pw",
        "u9",
        CredentialKind::Password,
        None,
        Material::Hash("x".into()),
        1,
    );
    assert!(
        matches!(
            store.insert_credential(&dup_id).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: duplicate id"
    );
    let dup_lookup = credential(
        "c-key2",
        "svc-2",
        CredentialKind::ApiKey,
        Some("hx_ab12"),
        Material::Hash("y".into()),
        1,
    );
    assert!(
        matches!(
            store.insert_credential(&dup_lookup).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: duplicate lookup"
    );

    // Sign counts move by compare-and-set only.
    let t = UnixTime::from_secs(1_700_000_100);
    assert!(store.advance_counter("c-wa", 0, 5, t).await.unwrap());
    assert!(
        !store.advance_counter("c-wa", 0, 6, t).await.unwrap(),
        "{name}: stale counter accepted"
    );
    let wa = store.credential("c-wa").await.unwrap().unwrap();
    assert_eq!(
        (wa.counter, wa.last_used_at),
        (5, Some(t)),
        "{name}: counter after CAS"
    );
    assert!(matches!(
        store.advance_counter("nope", 0, 1, t).await,
        Err(StoreError::NotFound { .. })
    ));
    // Racing advances: exactly one of many wins.
    let results =
        futures_util::future::join_all((0..16).map(|i| store.advance_counter("c-wa", 5, 6 + i, t)))
            .await;
    assert_eq!(
        results.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1,
        "{name}: counter race"
    );

    // Material replacement (password change).
    store
        .replace_material("c-pw", &Material::Hash("$argon2id$new".into()))
        .await
        .unwrap();
    assert_eq!(
        store.credential("c-pw").await.unwrap().unwrap().material,
        Material::Hash("$argon2id$new".into())
    );
    let new_seed = Material::Secret(SecretBytes::new(b"NEWSEED".to_vec()));
    store.replace_material("c-totp", &new_seed).await.unwrap();
    assert_eq!(
        store.credential("c-totp").await.unwrap().unwrap().material,
        new_seed
    );
    assert!(matches!(
        store.replace_material("nope", &new_seed).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.rewrap_secrets().await.unwrap(),
        0,
        "{name}: nothing to rewrap under one key"
    );

    assert!(store.delete_credential("c-pw").await.unwrap());
    assert!(!store.delete_credential("c-pw").await.unwrap());
    assert_eq!(store.credential("c-pw").await.unwrap(), None);
}

/// API clients: uniqueness, optimistic updates, permissions, cascade delete.
pub async fn durable_api_clients(store: &dyn DurableStore) {
    let name = store.backend();
    let c = client("svc-1", "ci-runner");
    store.insert_api_client(&c).await.unwrap();
    let read = store.api_client("svc-1").await.unwrap().unwrap();
    assert_eq!(read.version, 1, "{name}: version starts at 1");
    assert_eq!(
        ApiClientRecord {
            version: 0,
            ..read.clone()
        },
        c,
        "{name}: client round trip"
    );
    assert!(
        matches!(
            store.insert_api_client(&c).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: same id"
    );
    assert!(
        matches!(
            store.insert_api_client(&client("svc-2", "ci-runner")).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: same name"
    );
    store
        .insert_api_client(&client("svc-0", "backup"))
        .await
        .unwrap();
    let ids: Vec<String> = store
        .api_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["svc-0", "svc-1"], "{name}: api_clients sorted by id");

    // Two admins edit the same version: the second loses.
    let mut first = read.clone();
    first.status = ClientStatus::Suspended;
    let mut second = read.clone();
    second.description = "edited".into();
    assert_eq!(store.update_api_client(&first).await.unwrap(), 2);
    assert!(
        store
            .update_api_client(&second)
            .await
            .unwrap_err()
            .is_conflict(),
        "{name}: lost update"
    );
    let now = store.api_client("svc-1").await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.description.as_str(), now.version),
        (ClientStatus::Suspended, "CI runner", 2)
    );
    assert!(matches!(
        store.update_api_client(&client("ghost", "ghost")).await,
        Err(StoreError::NotFound { .. })
    ));

    let perms = vec![
        PermissionRecord {
            route: "reports".into(),
            methods: vec!["GET".into()],
        },
        PermissionRecord {
            route: "billing".into(),
            methods: vec!["GET".into(), "POST".into()],
        },
    ];
    store.set_permissions("svc-1", &perms).await.unwrap();
    let got = store.permissions("svc-1").await.unwrap();
    assert_eq!(
        got.iter().map(|p| p.route.as_str()).collect::<Vec<_>>(),
        ["billing", "reports"],
        "{name}: permissions sorted"
    );
    assert_eq!(got[0].methods, ["GET", "POST"]);
    store.set_permissions("svc-1", &perms[..1]).await.unwrap();
    assert_eq!(
        store.permissions("svc-1").await.unwrap().len(),
        1,
        "{name}: set_permissions replaces"
    );
    assert!(matches!(
        store.set_permissions("ghost", &perms).await,
        Err(StoreError::NotFound { .. })
    ));

    let cred = credential(
        "c-svc1",
        "svc-1",
        CredentialKind::HmacSecret,
        Some("svc-1-hmac"),
        Material::Secret(SecretBytes::new(b"s3cr3t".to_vec())),
        1,
    );
    store.insert_credential(&cred).await.unwrap();
    assert!(store.delete_api_client("svc-1").await.unwrap());
    assert!(!store.delete_api_client("svc-1").await.unwrap());
    assert!(
        store.permissions("svc-1").await.unwrap().is_empty(),
        "{name}: permissions outlived their client"
    );
    assert_eq!(
        store.credential("c-svc1").await.unwrap(),
        None,
        "{name}: credentials outlived their client"
    );
}

/// OIDC clients: CRUD and optimistic updates.
pub async fn durable_oidc_clients(store: &dyn DurableStore) {
    let name = store.backend();
    let c = OidcClientRecord {
        client_id: "grafana".into(),
        name: "Grafana".into(),
        redirect_uris: vec!["https://grafana.example.com/login/generic_oauth".into()],
        secret_hash: Some("$argon2id$secret".into()),
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        scopes: vec!["openid".into(), "email".into()],
        created_at: UnixTime::from_secs(1_700_000_000),
        version: 0,
    };
    store.insert_oidc_client(&c).await.unwrap();
    assert!(matches!(
        store.insert_oidc_client(&c).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let read = store.oidc_client("grafana").await.unwrap().unwrap();
    assert_eq!(
        OidcClientRecord {
            version: 0,
            ..read.clone()
        },
        c,
        "{name}: OIDC client round trip"
    );
    let public = OidcClientRecord {
        client_id: "cli".into(),
        secret_hash: None,
        ..c.clone()
    };
    store.insert_oidc_client(&public).await.unwrap();
    assert_eq!(store.oidc_clients().await.unwrap().len(), 2);
    assert_eq!(
        store.oidc_client("cli").await.unwrap().unwrap().secret_hash,
        None,
        "{name}: public client"
    );
    let mut edit = read.clone();
    edit.redirect_uris
        .push("https://grafana.example.com/cb2".into());
    assert_eq!(
        store.update_oidc_client(&edit).await.unwrap(),
        read.version + 1
    );
    assert!(
        store
            .update_oidc_client(&edit)
            .await
            .unwrap_err()
            .is_conflict(),
        "{name}: stale OIDC update"
    );
    assert_eq!(
        store
            .oidc_client("grafana")
            .await
            .unwrap()
            .unwrap()
            .redirect_uris
            .len(),
        2
    );
    assert!(store.delete_oidc_client("grafana").await.unwrap());
    assert_eq!(store.oidc_client("grafana").await.unwrap(), None);
}

/// Routes: CRUD, sorted listing, optimistic updates, definitions kept
/// byte for byte.
pub async fn durable_routes(store: &dyn DurableStore) {
    let name = store.backend();
    // Non-ASCII, quotes, backslashes, a NUL escape and key order: the store
    // keeps the text, it does not re-encode it.
    let definition = r#"{"name":"orders","host":"api.example.com","path":"/orders/ü","upstream":["http://10.0.0.5:8080"],"description":"\"q\" \\ \u0000"}"#;
    let r = RouteRecord {
        name: "orders".into(),
        definition: definition.into(),
        created_at: UnixTime::from_secs(1_700_000_000),
        updated_at: UnixTime::from_secs(1_700_000_000),
        version: 0,
    };
    store.insert_route(&r).await.unwrap();
    assert!(
        matches!(
            store.insert_route(&r).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: duplicate route name"
    );
    let read = store.route("orders").await.unwrap().unwrap();
    assert_eq!(read.version, 1, "{name}: first version");
    assert_eq!(
        RouteRecord {
            version: 0,
            ..read.clone()
        },
        r,
        "{name}: route round trip"
    );
    store
        .insert_route(&RouteRecord {
            name: "billing".into(),
            ..r.clone()
        })
        .await
        .unwrap();
    let names: Vec<String> = store
        .routes()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["billing", "orders"],
        "{name}: routes sorted by name"
    );
    let edit = RouteRecord {
        definition: r#"{"name":"orders","host":"api.example.com","path":"/v2/"}"#.into(),
        updated_at: UnixTime::from_secs(1_700_000_100),
        ..read.clone()
    };
    assert_eq!(store.update_route(&edit).await.unwrap(), 2);
    assert!(
        store.update_route(&edit).await.unwrap_err().is_conflict(),
        "{name}: stale route update"
    );
    let now = store.route("orders").await.unwrap().unwrap();
    assert_eq!(
        now.definition, edit.definition,
        "{name}: updated definition"
    );
    assert_eq!(now.updated_at, edit.updated_at);
    assert_eq!(now.created_at, r.created_at, "{name}: created_at kept");
    assert!(matches!(
        store
            .update_route(&RouteRecord {
                name: "nope".into(),
                ..edit.clone()
            })
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.delete_route("orders").await.unwrap());
    assert!(!store.delete_route("orders").await.unwrap());
    assert_eq!(store.route("orders").await.unwrap(), None);
    assert!(store.delete_route("billing").await.unwrap());
}

fn acme_account(id: &str, thumbprint: &str) -> AcmeAccountRecord {
    AcmeAccountRecord {
        id: id.into(),
        key_thumbprint: thumbprint.into(),
        jwk: format!(r#"{{"crv":"P-256","kty":"EC","x":"{thumbprint}-x","y":"{thumbprint}-y"}}"#),
        contacts: vec![
            "mailto:admin@example.com".into(),
            "mailto:ops@example.com".into(),
        ],
        status: AcmeAccountStatus::Valid,
        eab_key_id: Some("eab-kid-1".into()),
        created_at: UnixTime::from_secs(1_700_000_000),
        version: 0,
    }
}

/// ACME accounts: one account per key (thumbprint), lookups by id and by
/// thumbprint, optimistic updates, key rollover.
pub async fn durable_acme_accounts(store: &dyn DurableStore) {
    let name = store.backend();
    let a = acme_account("acct-a", "thumb-a");
    store.insert_acme_account(&a).await.unwrap();
    let read = store.acme_account("acct-a").await.unwrap().unwrap();
    assert_eq!(
        read.version, 1,
        "{name}: an inserted ACME account is at version 1"
    );
    assert_eq!(
        AcmeAccountRecord {
            version: 0,
            ..read.clone()
        },
        a,
        "{name}: ACME account round trip"
    );
    assert_eq!(store.acme_account("ghost").await.unwrap(), None);

    // The id is taken; the key is taken by another id.
    assert!(
        matches!(
            store
                .insert_acme_account(&acme_account("acct-a", "thumb-other"))
                .await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: same ACME account id"
    );
    assert!(
        matches!(
            store
                .insert_acme_account(&acme_account("acct-dup", "thumb-a"))
                .await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: same ACME account key"
    );
    assert_eq!(
        store.acme_account("acct-dup").await.unwrap(),
        None,
        "{name}: a refused ACME account was stored"
    );

    // A second account, without contacts or EAB.
    let b = AcmeAccountRecord {
        contacts: Vec::new(),
        eab_key_id: None,
        ..acme_account("acct-b", "thumb-b")
    };
    store.insert_acme_account(&b).await.unwrap();
    let read_b = store.acme_account_by_thumbprint("thumb-b").await.unwrap();
    assert_eq!(
        read_b.map(|r| AcmeAccountRecord { version: 0, ..r }),
        Some(b.clone()),
        "{name}: ACME account by thumbprint"
    );
    assert_eq!(
        store
            .acme_account_by_thumbprint("thumb-a")
            .await
            .unwrap()
            .map(|r| r.id),
        Some("acct-a".to_owned())
    );
    assert_eq!(
        store
            .acme_account_by_thumbprint("thumb-none")
            .await
            .unwrap(),
        None
    );

    // Contacts change: the version moves; the read version is now stale.
    let mut edit = read.clone();
    edit.contacts = vec!["mailto:new@example.com".into()];
    assert_eq!(
        store.update_acme_account(&edit).await.unwrap(),
        read.version + 1,
        "{name}: ACME update bumps the version"
    );
    let mut stale = read.clone();
    stale.status = AcmeAccountStatus::Revoked;
    assert!(
        store
            .update_acme_account(&stale)
            .await
            .unwrap_err()
            .is_conflict(),
        "{name}: stale ACME account update"
    );
    let now = store.acme_account("acct-a").await.unwrap().unwrap();
    assert_eq!(
        (now.contacts.as_slice(), now.status, now.version),
        (
            &["mailto:new@example.com".to_owned()][..],
            AcmeAccountStatus::Valid,
            2
        ),
        "{name}: the stale update changed nothing"
    );
    assert!(
        matches!(
            store
                .update_acme_account(&acme_account("ghost", "thumb-ghost"))
                .await,
            Err(StoreError::NotFound { .. })
        ),
        "{name}: update of an unknown ACME account"
    );

    // Key rollover onto a key another account holds: refused, neither changes.
    let before_b = store.acme_account("acct-b").await.unwrap().unwrap();
    let mut steal = now.clone();
    steal.key_thumbprint = "thumb-b".into();
    steal.jwk = b.jwk.clone();
    assert!(
        matches!(
            store.update_acme_account(&steal).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: key rollover onto another account's key"
    );
    assert_eq!(
        store.acme_account("acct-a").await.unwrap().unwrap(),
        now,
        "{name}: a refused key rollover changed the account"
    );
    assert_eq!(
        store.acme_account("acct-b").await.unwrap().unwrap(),
        before_b,
        "{name}: a refused key rollover changed the other account"
    );

    // Key rollover onto a fresh key: found by the new thumbprint only, and
    // the old key is free again.
    let mut roll = now.clone();
    roll.key_thumbprint = "thumb-a2".into();
    roll.jwk = acme_account("acct-a", "thumb-a2").jwk;
    // What records the creation is kept, whatever the update says.
    roll.eab_key_id = None;
    roll.created_at = UnixTime::from_secs(1);
    assert_eq!(store.update_acme_account(&roll).await.unwrap(), 3);
    let rolled = store
        .acme_account_by_thumbprint("thumb-a2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rolled.id.as_str(), rolled.jwk.as_str(), rolled.version),
        ("acct-a", roll.jwk.as_str(), 3),
        "{name}: key rollover"
    );
    assert_eq!(
        (rolled.eab_key_id.as_deref(), rolled.created_at),
        (Some("eab-kid-1"), a.created_at),
        "{name}: an update rewrote eab_key_id or created_at"
    );
    assert_eq!(
        store.acme_account_by_thumbprint("thumb-a").await.unwrap(),
        None,
        "{name}: the old key still finds the account"
    );
    store
        .insert_acme_account(&acme_account("acct-c", "thumb-a"))
        .await
        .unwrap();

    // Deactivation persists.
    let mut deactivate = rolled.clone();
    deactivate.status = AcmeAccountStatus::Deactivated;
    store.update_acme_account(&deactivate).await.unwrap();
    let gone = store.acme_account("acct-a").await.unwrap().unwrap();
    assert_eq!(
        (gone.status, gone.version),
        (AcmeAccountStatus::Deactivated, 4),
        "{name}: ACME account deactivation"
    );
    assert_eq!(
        store
            .acme_account_by_thumbprint("thumb-a2")
            .await
            .unwrap()
            .map(|r| r.status),
        Some(AcmeAccountStatus::Deactivated)
    );
}

/// Issued certificates and revocation.
pub async fn durable_certificates(store: &dyn DurableStore) {
    let name = store.backend();
    let cert = |serial: &str, not_after: i64| CertificateRecord {
        serial: serial.into(),
        issuer: "tls-int".into(),
        subject: "CN=api.example.com".into(),
        sans: vec!["api.example.com".into(), "10.0.0.1".into()],
        profile: "tls-server".into(),
        not_before: UnixTime::from_secs(1_700_000_000),
        not_after: UnixTime::from_secs(not_after),
        requester: Some("acme:acct-1".into()),
        der: vec![0x30, 0x82, 0x01, 0x00, 0xff],
        revoked: None,
    };
    let a = cert("0a1b", 1_800_000_000);
    store.insert_certificate(&a).await.unwrap();
    store
        .insert_certificate(&cert("0c", 1_800_000_000))
        .await
        .unwrap();
    store
        .insert_certificate(&cert("expired", 1_700_000_500))
        .await
        .unwrap();
    assert!(
        matches!(
            store.insert_certificate(&a).await,
            Err(StoreError::AlreadyExists { .. })
        ),
        "{name}: serial reuse"
    );
    assert_eq!(
        store.certificate("tls-int", "0a1b").await.unwrap().as_ref(),
        Some(&a),
        "{name}: certificate round trip"
    );
    assert_eq!(
        store.certificate("other-ca", "0a1b").await.unwrap(),
        None,
        "{name}: serials are per issuer"
    );
    let r = Revocation {
        at: UnixTime::from_secs(1_700_001_000),
        reason: 1,
    };
    assert!(store.revoke_certificate("tls-int", "0c", r).await.unwrap());
    assert!(
        store
            .revoke_certificate("tls-int", "expired", r)
            .await
            .unwrap()
    );
    let again = Revocation { reason: 4, ..r };
    assert!(
        !store
            .revoke_certificate("tls-int", "0c", again)
            .await
            .unwrap(),
        "{name}: second revocation"
    );
    assert!(matches!(
        store.revoke_certificate("tls-int", "nope", r).await,
        Err(StoreError::NotFound { .. })
    ));
    let crl = store
        .revoked_certificates("tls-int", UnixTime::from_secs(1_700_002_000))
        .await
        .unwrap();
    assert_eq!(
        crl,
        vec![("0c".to_owned(), r)],
        "{name}: CRL keeps the first revocation, drops expired"
    );
}

/// The audit trail: ordered, paged, append-only.
pub async fn durable_audit(store: &dyn DurableStore) {
    let name = store.backend();
    let mut seqs = Vec::new();
    for i in 0..25 {
        let e = NewAuditEvent {
            at: UnixTime::from_secs(1_700_000_000 + i),
            kind: "login.failure".into(),
            actor: Some("203.0.113.9".into()),
            subject: (i % 2 == 0).then(|| "u1".to_owned()),
            outcome: "failure".into(),
            detail: serde_json::json!({"reason": "bad_password", "attempt": i, "ua": "curl/8 \"q\""}),
        };
        seqs.push((store.append_audit(&e).await.unwrap(), e));
    }
    assert!(
        seqs.windows(2).all(|w| w[0].0 < w[1].0),
        "{name}: audit positions increase"
    );
    let first = store.audit_after(0, 10).await.unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].event, seqs[0].1, "{name}: audit round trip");
    let rest = store.audit_after(first[9].seq, 100).await.unwrap();
    assert_eq!(rest.len(), 15, "{name}: paging");
    assert_eq!(rest.last().unwrap().event, seqs[24].1);
}

/// Delete every stream a NATS prefix owns (its KV buckets and its event
/// stream): cleanup for tests and benchmarks on a shared server. Best effort.
#[cfg(feature = "nats")]
pub async fn delete_nats_prefix(url: &str, prefix: &str) {
    let Ok(Ok(client)) =
        tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await
    else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    // nats-server removes an account's storage directory when its last
    // stream is deleted; a stream being created at that moment by another
    // test fails ("could not create storage directory", error 10049). A
    // file-backed stream no test deletes keeps the directory in place.
    let _ = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "HEXON_TESTS_KEEP_STORAGE".into(),
            subjects: vec!["hexon-tests.keep-storage".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            max_messages: 1,
            ..Default::default()
        })
        .await;
    let kv = format!("KV_{prefix}_");
    let events = format!("{}_EVENTS", prefix.to_ascii_uppercase());
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names {
        if name.starts_with(&kv) || name == events {
            let _ = js.delete_stream(&name).await;
        }
    }
}

/// A nats-server of a test's own (JetStream, storage in a directory the test
/// owns), on a free port, killed when dropped: for tests that stop and
/// restart the server under a client.
#[cfg(feature = "nats")]
#[derive(Debug)]
pub struct NatsServer {
    child: Option<std::process::Child>,
    port: u16,
    storage: std::path::PathBuf,
}

#[cfg(feature = "nats")]
impl NatsServer {
    /// Where Debian installs the server.
    pub const BINARY: &'static str = "/usr/sbin/nats-server";

    /// Start one storing its streams in `storage` (which must outlive it).
    pub fn start(storage: impl Into<std::path::PathBuf>) -> NatsServer {
        assert!(
            std::path::Path::new(Self::BINARY).exists(),
            "{} is missing: apt-get install nats-server",
            Self::BINARY
        );
        let port = crate::testing::free_port();
        let mut server = NatsServer {
            child: None,
            port,
            storage: storage.into(),
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start it again (after [`kill`](Self::kill)) on the same port and
    /// storage; returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = std::process::Command::new(Self::BINARY)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.storage)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen on {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (SIGKILL: a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(feature = "nats")]
impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
