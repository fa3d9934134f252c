//! The SQLite store: the conformance suite, restarts, migrations, key
//! rotation, the append-only audit trail, the KV read cache (writes given up
//! part-way, a closed store), consistent directory loads and the
//! one-process-per-file lock.
#![cfg(all(feature = "sqlite", feature = "test-util"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexon_core::UnixTime;
use hexon_core::directory::{SourceId, SourceSnapshot, UserRecord};
use hexon_core::store::sql::SqliteStore;
use hexon_core::store::{
    AcmeAccountRecord, AcmeAccountStatus, AcmeAccountStore, ApiClientRecord, ApiClientStore,
    AuditStore, ClientStatus, CredentialKind, CredentialRecord, CredentialStore, DirectoryStore,
    DurableStore, KvBackend, Material, NewAuditEvent, SecretBytes, SecretKeys, StoreError,
    conformance,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

const HOUR: Duration = Duration::from_secs(3600);

fn keys(k: u8) -> Arc<SecretKeys> {
    Arc::new(SecretKeys::new([k; 32]))
}

fn state_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("hexon.db");
    (dir, path)
}

/// A plain connection pool on the file, bypassing the store (as an operator
/// with the `sqlite3` shell would).
async fn raw(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap()
}

/// The migrator built from the files on disk, keeping the first `n`.
async fn first_migrations(n: usize) -> Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut migrator = Migrator::new(dir).await.unwrap();
    migrator.migrations = Cow::Owned(migrator.migrations[..n].to_vec());
    migrator
}

fn secret_credential(id: &str, secret: &[u8]) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        owner: "u1".into(),
        kind: CredentialKind::Totp,
        label: "phone".into(),
        lookup: None,
        material: Material::Secret(SecretBytes::new(secret.to_vec())),
        counter: 3,
        created_at: UnixTime::from_secs(1_700_000_000),
        last_used_at: None,
        expires_at: None,
    }
}

fn audit_event(i: i64) -> NewAuditEvent {
    NewAuditEvent {
        at: UnixTime::from_secs(1_700_000_000 + i),
        kind: "login.success".into(),
        actor: None,
        subject: Some("u1".into()),
        outcome: "success".into(),
        detail: serde_json::json!({ "i": i }),
    }
}

fn acme_account() -> AcmeAccountRecord {
    AcmeAccountRecord {
        id: "acct-1".into(),
        key_thumbprint: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
        jwk: r#"{"e":"AQAB","kty":"RSA","n":"0vx7"}"#.into(),
        contacts: vec!["mailto:admin@example.com".into()],
        status: AcmeAccountStatus::Valid,
        eab_key_id: None,
        created_at: UnixTime::from_secs(1_700_000_000),
        version: 0,
    }
}

// -------------------------------------------------------------- conformance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_conformance() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    conformance::kv_suite(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_conformance() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    assert_eq!(DurableStore::backend(&store), "sqlite");
    assert_eq!(store.schema_version().await.unwrap(), 4);
    conformance::durable_suite(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_store_conforms_too() {
    let store = SqliteStore::open_in_memory(keys(1)).await.unwrap();
    assert_eq!(store.path(), None);
    conformance::durable_suite(&store).await;
    conformance::kv_suite(&store).await;
}

// ------------------------------------------------------------------ restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let snap = SourceSnapshot::new()
        .with_user(UserRecord::new("u1").username("alice"))
        .with_member("u1", "eng");
    store
        .save_source(&SourceId::new("ldap"), &snap)
        .await
        .unwrap();
    store
        .insert_credential(&secret_credential("c1", b"SEED"))
        .await
        .unwrap();
    let seq = store.append_audit(&audit_event(1)).await.unwrap();
    let sessions = store.bucket("sessions", HOUR).await.unwrap();
    let rev = sessions.put("s1", b"session-record", HOUR).await.unwrap();
    store.close().await;
    drop((store, sessions));

    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let loaded = store.load_sources().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].1.users()[0].username.as_deref(), Some("alice"));
    assert_eq!(loaded[0].1.user_memberships().len(), 1);
    assert_eq!(
        store.credential("c1").await.unwrap().unwrap().material,
        Material::Secret(SecretBytes::new(b"SEED".to_vec()))
    );
    assert_eq!(store.audit_after(0, 10).await.unwrap()[0].seq, seq);
    let sessions = store.bucket("sessions", HOUR).await.unwrap();
    let got = sessions.get("s1").await.unwrap().unwrap();
    assert_eq!(
        (got.value.as_slice(), got.revision),
        (&b"session-record"[..], rev)
    );
    // Revisions keep growing across restarts, even for a deleted key.
    assert!(sessions.delete("s1").await.unwrap());
    let again = sessions
        .put_if_absent("s1", b"new", HOUR)
        .await
        .unwrap()
        .unwrap();
    assert!(
        again > rev,
        "revision {again} reused after a restart (was {rev})"
    );
    store.close().await;
}

// --------------------------------------------------------------- migrations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_on_an_empty_database() {
    let (_dir, path) = state_file();
    let store = SqliteStore::connect(&path, keys(1)).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 0);
    let pending = store.pending_migrations().await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{pending:?}"
    );
    let report = store.migrate().await.unwrap();
    assert_eq!((report.from, report.to), (0, 4));
    assert_eq!(report.applied, pending);
    let again = store.migrate().await.unwrap();
    assert_eq!(
        (again.from, again.to, again.applied.len()),
        (4, 4, 0),
        "second migrate is a no-op"
    );
    assert!(store.pending_migrations().await.unwrap().is_empty());
    assert_eq!(store.schema_version().await.unwrap(), 4);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_the_previous_version_keep_rows() {
    let (_dir, path) = state_file();
    // A database at version 1, with rows written by that version.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let pool = raw(&path).await;
    first_migrations(1).await.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO credentials (id, owner, kind, label, lookup, material_type, material, counter, created_at) \
         VALUES ('c-old', 'u1', 'password', 'pw', NULL, 'hash', CAST('$argon2id$old' AS BLOB), 0, 1700000000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO api_clients (id, name, status, groups, description, rate_limit_per_minute, created_at, updated_at, version) \
         VALUES ('svc', 'ci', 'active', '[\"ci\"]', 'CI', NULL, 1700000000, 1700000000, 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (at, kind, actor, subject, outcome, detail) \
         VALUES (1700000000, 'login.success', NULL, 'u1', 'success', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = SqliteStore::connect(&path, keys(1)).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let report = store.migrate().await.unwrap();
    assert_eq!((report.from, report.to), (1, 4));
    assert_eq!(
        report.applied,
        [
            (2, "kv and append only audit".to_owned()),
            (3, "acme accounts".to_owned()),
            (4, "routes".to_owned())
        ],
        "only the missing migrations are applied"
    );
    assert_eq!(
        store.credential("c-old").await.unwrap().unwrap().material,
        Material::Hash("$argon2id$old".into())
    );
    let client = store.api_client("svc").await.unwrap().unwrap();
    assert_eq!(
        (client.name.as_str(), client.groups.as_slice()),
        ("ci", &["ci".to_owned()][..])
    );
    assert_eq!(store.audit_after(0, 10).await.unwrap().len(), 1);
    // What version 2 added works.
    let kv = store.bucket("codes", HOUR).await.unwrap();
    kv.put("k", b"v", HOUR).await.unwrap();
    // And what version 3 added.
    store.insert_acme_account(&acme_account()).await.unwrap();
    // And what version 4 added.
    let route = hexon_core::store::RouteRecord {
        name: "orders".into(),
        definition: r#"{"name":"orders"}"#.into(),
        created_at: hexon_core::UnixTime::from_secs(1_700_000_000),
        updated_at: hexon_core::UnixTime::from_secs(1_700_000_000),
        version: 0,
    };
    hexon_core::store::RouteStore::insert_route(&store, &route)
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_hexon_is_refused() {
    let (_dir, path) = state_file();
    SqliteStore::open(&path, keys(1))
        .await
        .unwrap()
        .close()
        .await;
    let pool = raw(&path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (5, 'from the future', TRUE, X'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = SqliteStore::open(&path, keys(1)).await.unwrap_err();
    let StoreError::Migration(message) = &err else {
        panic!("expected a migration error, got {err:?}");
    };
    assert!(
        message.contains("version 5") && message.contains("upgrade Hexon"),
        "{message}"
    ); // A dry run says so too, instead of "nothing to do".
    let store = SqliteStore::connect(&path, keys(1)).await.unwrap();
    assert!(matches!(
        store.pending_migrations().await,
        Err(StoreError::Migration(m)) if m.contains("upgrade Hexon")
    ));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_applied_migration_is_refused() {
    let (_dir, path) = state_file();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let pool = raw(&path).await;
    let original = first_migrations(1).await;
    let m = &original.migrations[0];
    let edited = Migration::new(
        m.version,
        m.description.clone(),
        MigrationType::Simple,
        Cow::Owned(format!("{}\n-- edited after release\n", m.sql)),
        false,
    );
    let migrator = Migrator {
        migrations: Cow::Owned(vec![edited]),
        ..Migrator::DEFAULT
    };
    migrator.run(&pool).await.unwrap();
    pool.close().await;
    let err = SqliteStore::open(&path, keys(1)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Migration(m) if m.contains("migration 1") && m.contains("checksum")),
        "{err:?}"
    );
}

// ------------------------------------------------------------ key rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_rewraps_secrets() {
    let (_dir, path) = state_file();
    let (a, b) = ([0xA1; 32], [0xB2; 32]);
    let seed = Material::Secret(SecretBytes::new(b"JBSWY3DPEHPK3PXP".to_vec()));

    let store = SqliteStore::open(&path, Arc::new(SecretKeys::new(a)))
        .await
        .unwrap();
    store
        .insert_credential(&secret_credential("c-totp", b"JBSWY3DPEHPK3PXP"))
        .await
        .unwrap();
    store.close().await;

    let rotated = Arc::new(SecretKeys::new(b).with_previous(a));
    let store = SqliteStore::open(&path, rotated).await.unwrap();
    assert_eq!(
        store.credential("c-totp").await.unwrap().unwrap().material,
        seed
    );
    assert_eq!(store.rewrap_secrets().await.unwrap(), 1);
    assert_eq!(
        store.rewrap_secrets().await.unwrap(),
        0,
        "already rewrapped"
    );
    store.close().await;

    let store = SqliteStore::open(&path, Arc::new(SecretKeys::new(b)))
        .await
        .unwrap();
    assert_eq!(
        store.credential("c-totp").await.unwrap().unwrap().material,
        seed,
        "opens with the new key alone"
    );
    store.close().await;

    let store = SqliteStore::open(&path, Arc::new(SecretKeys::new(a)))
        .await
        .unwrap();
    assert!(
        matches!(store.credential("c-totp").await, Err(StoreError::Crypto(_))),
        "the old key alone must no longer open it"
    );
    store.close().await;
}

// -------------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_cannot_be_changed_or_removed_with_sql() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    for i in 0..3 {
        store.append_audit(&audit_event(i)).await.unwrap();
    }
    let pool = raw(&path).await;
    for sql in [
        "UPDATE audit_log SET outcome = 'tampered' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    pool.close().await;
    let trail = store.audit_after(0, 10).await.unwrap();
    assert_eq!(trail.len(), 3);
    assert_eq!(trail[0].event.outcome, "success");
    store.close().await;
}

// -------------------------------------------------------------------- cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_follows_every_write() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let kv = store.bucket("sessions", HOUR).await.unwrap();
    let other_handle = store.bucket("sessions", HOUR).await.unwrap();

    let r1 = kv.put("s", b"v1", HOUR).await.unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().value, b"v1");
    let r2 = kv
        .compare_and_set("s", r1, b"v2", HOUR)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().revision, r2);
    assert_eq!(other_handle.get("s").await.unwrap().unwrap().value, b"v2");
    other_handle.put("s", b"v3", HOUR).await.unwrap();
    assert_eq!(
        kv.get("s").await.unwrap().unwrap().value,
        b"v3",
        "another handle's put"
    );
    assert!(kv.delete("s").await.unwrap());
    assert_eq!(kv.get("s").await.unwrap(), None, "delete");
    let r4 = kv.put_if_absent("s", b"v4", HOUR).await.unwrap().unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().value, b"v4");
    assert!(kv.delete_if("s", r4).await.unwrap());
    assert_eq!(kv.get("s").await.unwrap(), None, "delete_if");

    // Expiry is respected from the cache.
    kv.put("short", b"x", Duration::from_secs(1)).await.unwrap();
    assert!(kv.get("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        kv.get("short").await.unwrap(),
        None,
        "expired entry served from the cache"
    );
    assert!(
        kv.put_if_absent("short", b"y", HOUR)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(kv.get("short").await.unwrap().unwrap().value, b"y");

    // Gets are answered by the cache: a change made behind the store's back
    // (which the one-process rule forbids) is not seen until the store writes.
    kv.put("c", b"through the store", HOUR).await.unwrap();
    assert_eq!(
        kv.get("c").await.unwrap().unwrap().value,
        b"through the store"
    );
    let pool = raw(&path).await;
    sqlx::query("UPDATE kv SET value = X'00' WHERE bucket = 'sessions'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(
        kv.get("c").await.unwrap().unwrap().value,
        b"through the store"
    );
    kv.put("c", b"again", HOUR).await.unwrap();
    assert_eq!(kv.get("c").await.unwrap().unwrap().value, b"again");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_stays_coherent_under_concurrent_writers() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let kv = store.bucket("counters", HOUR).await.unwrap();
    kv.put("n", b"0", HOUR).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let e = kv.get("n").await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
                    if kv
                        .compare_and_set("n", e.revision, (n + 1).to_string().as_bytes(), HOUR)
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
    for t in tasks {
        t.await.unwrap();
    }
    let cached = kv.get("n").await.unwrap().unwrap();
    assert_eq!(cached.value, b"200");
    let pool = raw(&path).await;
    let (value, revision): (Vec<u8>, i64) = sqlx::query_as(
        "SELECT value, revision FROM kv WHERE bucket = 'counters' AND key = CAST('n' AS BLOB)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!((value, revision as u64), (cached.value, cached.revision.0));
    store.close().await;
}

/// Every row of `bucket`, read behind the store's back: key → (value,
/// revision), live rows only.
async fn rows_of(path: &Path, bucket: &str) -> HashMap<String, (Vec<u8>, u64)> {
    let pool = raw(path).await;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>, i64)> =
        sqlx::query_as("SELECT key, value, revision FROM kv WHERE bucket = $1 AND expires_at > $2")
            .bind(bucket)
            .bind(now)
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(k, v, r)| (String::from_utf8(k).unwrap(), (v, r as u64)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_part_way_still_updates_the_cache() {
    const N: usize = 200;
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let kv = store.bucket("sessions", HOUR).await.unwrap();
    let mut revisions = Vec::new();
    for i in 0..N {
        let key = format!("s{i}");
        revisions.push(kv.put(&key, b"live", HOUR).await.unwrap());
        assert_eq!(kv.get(&key).await.unwrap().unwrap().value, b"live");
    }
    // Revoke every session, but give up on each write right after its first
    // poll (a request cancelled, a timeout): the write has started, the
    // caller is gone.
    for (i, rev) in revisions.iter().enumerate() {
        let key = format!("s{i}");
        let _ = match i % 4 {
            0 => tokio::time::timeout(Duration::ZERO, kv.delete(&key))
                .await
                .map(drop),
            1 => tokio::time::timeout(Duration::ZERO, kv.delete_if(&key, *rev))
                .await
                .map(drop),
            2 => tokio::time::timeout(Duration::ZERO, kv.put(&key, b"revoked", HOUR))
                .await
                .map(drop),
            _ => tokio::time::timeout(
                Duration::ZERO,
                kv.compare_and_set(&key, *rev, b"revoked", HOUR),
            )
            .await
            .map(drop),
        };
    }
    // Every write completes without its caller...
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = rows_of(&path, "sessions").await;
        let settled = (0..N).all(|i| match rows.get(&format!("s{i}")) {
            None => i % 4 < 2,
            Some((value, _)) => i % 4 >= 2 && value == b"revoked",
        });
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes given up on never completed: {} of {N} rows still live and unchanged",
            rows.values().filter(|(v, _)| v == b"live").count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and (once the last one lets the writer go) the cache says what
    // the database says, for every key.
    kv.put("sentinel", b"x", HOUR).await.unwrap();
    let rows = rows_of(&path, "sessions").await;
    for i in 0..N {
        let key = format!("s{i}");
        let cached = kv.get(&key).await.unwrap().map(|e| (e.value, e.revision.0));
        assert_eq!(
            cached.as_ref(),
            rows.get(&key),
            "{key}: the cache disagrees with the database"
        );
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_answers_nothing_from_its_cache() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let kv = store.bucket("sessions", HOUR).await.unwrap();
    let rev = kv.put("s", b"v", HOUR).await.unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().revision, rev);
    store.close().await;
    assert!(kv.get("s").await.unwrap_err().is_unavailable(), "get");
    let again = store.bucket("sessions", HOUR).await.unwrap();
    assert!(
        again.get("s").await.unwrap_err().is_unavailable(),
        "new handle"
    );
    assert!(kv.put("s", b"w", HOUR).await.unwrap_err().is_unavailable());
    assert!(
        kv.put_if_absent("t", b"w", HOUR)
            .await
            .unwrap_err()
            .is_unavailable()
    );
    assert!(
        kv.compare_and_set("s", rev, b"w", HOUR)
            .await
            .unwrap_err()
            .is_unavailable()
    );
    assert!(kv.delete("s").await.unwrap_err().is_unavailable());
    assert!(kv.delete_if("s", rev).await.unwrap_err().is_unavailable());
    assert!(store.sweep_expired().await.unwrap_err().is_unavailable());
    assert!(store.load_sources().await.unwrap_err().is_unavailable());
    // Nothing was written after the close.
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    let kv = store.bucket("sessions", HOUR).await.unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().value, b"v");
    store.close().await;
}

// ---------------------------------------------------------------- directory

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_load_sees_each_save_whole() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    conformance::durable_loads_are_whole(Arc::new(store.clone())).await;
    store.close().await;
}

// ---------------------------------------------------------- one process

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_has_one_owner() {
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    // flock locks belong to an open file, so a second open in this process
    // is refused exactly like one from another process.
    let err = SqliteStore::open(&path, keys(1)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable { backend: "sqlite", detail } if detail.contains("another Hexon process")),
        "{err:?}"
    );
    // Another process sees the lock too.
    let lock = lock_file(&path);
    let probe = std::process::Command::new("flock")
        .args(["--nonblock", "--exclusive"])
        .arg(&lock)
        .arg("true")
        .status()
        .expect("util-linux `flock` must be installed for this test");
    assert!(!probe.success(), "another process could take the lock");
    store.close().await;
    // Closing releases it.
    SqliteStore::open(&path, keys(1))
        .await
        .unwrap()
        .close()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_held_by_another_process_is_refused() {
    let (_dir, path) = state_file();
    SqliteStore::open(&path, keys(1))
        .await
        .unwrap()
        .close()
        .await;
    let lock = lock_file(&path);
    // It waits for the lock (the probes below hold it for an instant).
    // `--close`: the lock stays with `flock` itself, not its `sleep`, so
    // killing it releases the lock.
    let mut holder = std::process::Command::new("flock")
        .args(["--exclusive", "--close", "--timeout", "10"])
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("util-linux `flock` must be installed for this test");
    // Wait until the other process holds the lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let free = std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success();
        if !free {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other process never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = SqliteStore::open(&path, keys(1)).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("another Hexon process"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    SqliteStore::open(&path, keys(1))
        .await
        .unwrap()
        .close()
        .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_state_file_takes_the_same_lock() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&real).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let file = real.join("hexon.db");
    // A linked directory, and a link to the file itself in another one.
    std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(&file, elsewhere.join("state.db")).unwrap();
    // And a link to a file that does not exist yet.
    std::os::unix::fs::symlink(real.join("later.db"), elsewhere.join("later.db")).unwrap();
    let lock_files = || {
        std::fs::read_dir(&real)
            .unwrap()
            .chain(std::fs::read_dir(&elsewhere).unwrap())
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".lock")
            })
            .count()
    };

    let store = SqliteStore::open(&file, keys(1)).await.unwrap();
    for other in [
        dir.path().join("link").join("hexon.db"),
        real.join("..").join("link").join(".").join("hexon.db"),
        elsewhere.join("state.db"),
    ] {
        let err = SqliteStore::open(&other, keys(1)).await.unwrap_err();
        assert!(
            err.to_string().contains("another Hexon process"),
            "{} opened a second time: {err:?}",
            other.display()
        );
    }
    assert_eq!(lock_files(), 1, "one lock file for one state file");
    store.close().await;

    let later = SqliteStore::open(&elsewhere.join("later.db"), keys(1))
        .await
        .unwrap();
    let err = SqliteStore::open(&real.join("later.db"), keys(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another Hexon process"), "{err:?}");
    assert_eq!(lock_files(), 2);
    later.close().await;

    // Through a link, once the first is closed: the same file.
    let store = SqliteStore::open(&elsewhere.join("state.db"), keys(1))
        .await
        .unwrap();
    assert_eq!(store.path(), Some(elsewhere.join("state.db").as_path()));
    store.close().await;
}

fn lock_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let (_dir, path) = state_file();
    let store = SqliteStore::open(&path, keys(1)).await.unwrap();
    store
        .bucket("b", HOUR)
        .await
        .unwrap()
        .put("k", b"v", HOUR)
        .await
        .unwrap();
    for file in [
        path.clone(),
        lock_file(&path),
        PathBuf::from(format!("{}-wal", path.display())),
    ] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", file.display());
    }
    store.close().await;
    // An existing file readable by others is restricted at open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    SqliteStore::open(&path, keys(1))
        .await
        .unwrap()
        .close()
        .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_store_says_how_to_fix_it() {
    let (_dir, path) = state_file();
    let store = SqliteStore::connect(&path, keys(1)).await.unwrap();
    let err = store.api_clients().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("migrate"), "{err}");
    store.close().await;
    // And a closed store is unavailable, not empty.
    let err = store.api_clients().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    let kv_err = store
        .bucket("b", HOUR)
        .await
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(kv_err.is_unavailable(), "{kv_err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_client_rows_round_trip_all_fields() {
    // Field mapping beyond the suite: no rate limit, every status.
    let store = SqliteStore::open_in_memory(keys(1)).await.unwrap();
    for (i, status) in [
        ClientStatus::Active,
        ClientStatus::Suspended,
        ClientStatus::Revoked,
    ]
    .into_iter()
    .enumerate()
    {
        let c = ApiClientRecord {
            id: format!("c{i}"),
            name: format!("n{i}"),
            status,
            groups: vec![],
            description: String::new(),
            rate_limit_per_minute: None,
            created_at: UnixTime::from_secs(1),
            updated_at: UnixTime::from_secs(2),
            version: 0,
        };
        store.insert_api_client(&c).await.unwrap();
        let got = store.api_client(&c.id).await.unwrap().unwrap();
        assert_eq!(ApiClientRecord { version: 0, ..got }, c);
    }
}
