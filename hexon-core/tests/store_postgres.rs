//! The PostgreSQL store against a real server: the conformance suite,
//! restarts, migrations (one given up part-way), key rotation, the
//! append-only audit trail, several nodes on one schema, the sweep racing a
//! revival, consistent directory loads, lock and statement timeouts, and an
//! unreachable server (which never sees a password).
//!
//! Needs PostgreSQL at `HEXON_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, trust auth). Each test works
//! in its own schema, dropped at the end. Nothing is skipped: without a
//! server these tests fail and say how to start one.
#![cfg(all(feature = "postgres", feature = "test-util"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::directory::{SourceId, SourceSnapshot, UserRecord};
use hexon_core::store::sql::{PostgresOptions, PostgresStore};
use hexon_core::store::{
    AcmeAccountRecord, AcmeAccountStatus, AcmeAccountStore, ApiClientStore, AuditStore,
    CredentialKind, CredentialRecord, CredentialStore, DirectoryStore, DurableStore, KvBackend,
    Material, NewAuditEvent, SecretBytes, SecretKeys, StoreError, conformance,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

const HOUR: Duration = Duration::from_secs(3600);

fn url() -> String {
    std::env::var("HEXON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn keys(k: u8) -> Arc<SecretKeys> {
    Arc::new(SecretKeys::new([k; 32]))
}

/// A pool on the server, outside any store: `search_path` = `schema`.
async fn raw(schema: Option<&str>) -> PgPool {
    let mut options = PgConnectOptions::from_str(&url()).unwrap();
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 (or point HEXON_TEST_POSTGRES_URL at a server with trust auth and a `test` database)",
                url()
            )
        })
}

/// A schema of this test's own, dropped when the test ends (passed or not).
struct Schema {
    name: String,
}

impl Schema {
    async fn new() -> Schema {
        // Check the server now, so a missing one fails with how to start it.
        raw(None).await.close().await;
        Schema {
            name: conformance::unique("hx").replace('-', "_"),
        }
    }

    fn options(&self) -> PostgresOptions {
        PostgresOptions::new(url())
            .schema(&self.name)
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
    }

    async fn open(&self, keys: Arc<SecretKeys>) -> PostgresStore {
        PostgresStore::open(&self.options(), keys).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime: clean up on a thread of
        // its own with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let pool = raw(None).await;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            });
        });
        if cleanup.join().is_err() && !std::thread::panicking() {
            panic!("could not drop schema {}", self.name);
        }
    }
}

async fn first_migrations(n: usize) -> Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut migrator = Migrator::new(dir).await.unwrap();
    migrator.migrations = Cow::Owned(migrator.migrations[..n].to_vec());
    migrator
}

fn secret_credential(id: &str, secret: &[u8]) -> CredentialRecord {
    CredentialRecord {
        id: id.into(),
        owner: "u1".into(),
        kind: CredentialKind::HmacSecret,
        label: "hmac".into(),
        lookup: Some(format!("{id}-lookup")),
        material: Material::Secret(SecretBytes::new(secret.to_vec())),
        counter: 0,
        created_at: UnixTime::from_secs(1_700_000_000),
        last_used_at: None,
        expires_at: Some(UnixTime::from_secs(1_900_000_000)),
    }
}

fn audit_event(i: i64) -> NewAuditEvent {
    NewAuditEvent {
        at: UnixTime::from_secs(1_700_000_000 + i),
        kind: "client.revoked".into(),
        actor: Some("admin".into()),
        subject: Some("svc-1".into()),
        outcome: "success".into(),
        detail: serde_json::json!({ "i": i, "nested": { "ok": true } }),
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
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    assert_eq!(KvBackend::backend(&store), "postgres");
    conformance::kv_suite(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_conformance() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    assert_eq!(store.schema_version().await.unwrap(), 4);
    assert_eq!(store.schema(), Some(schema.name.as_str()));
    conformance::durable_suite(&store).await;
    store.close().await;
}

// ------------------------------------------------------------------ restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    let snap = SourceSnapshot::new()
        .with_user(UserRecord::new("u1").email("a@example.com"))
        .with_nested("eng", "staff");
    store
        .save_source(&SourceId::new("scim"), &snap)
        .await
        .unwrap();
    store
        .insert_credential(&secret_credential("c1", b"hmac-key"))
        .await
        .unwrap();
    let seq = store.append_audit(&audit_event(1)).await.unwrap();
    let codes = store.bucket("codes", HOUR).await.unwrap();
    let rev = codes.put("code\0with nul", b"grant", HOUR).await.unwrap();
    store.close().await;
    drop((store, codes));

    let store = schema.open(keys(1)).await;
    let loaded = store.load_sources().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].1.users()[0].email.as_deref(),
        Some("a@example.com")
    );
    assert_eq!(loaded[0].1.group_memberships().len(), 1);
    let c = store.credential("c1").await.unwrap().unwrap();
    assert_eq!(c, secret_credential("c1", b"hmac-key"));
    let trail = store.audit_after(0, 10).await.unwrap();
    assert_eq!((trail[0].seq, &trail[0].event), (seq, &audit_event(1)));
    let codes = store.bucket("codes", HOUR).await.unwrap();
    let got = codes.get("code\0with nul").await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"grant"[..], rev));
    assert!(codes.delete("code\0with nul").await.unwrap());
    let again = codes
        .put_if_absent("code\0with nul", b"new", HOUR)
        .await
        .unwrap()
        .unwrap();
    assert!(again > rev, "revision reused after a restart");
    store.close().await;
}

// --------------------------------------------------------------- migrations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_on_an_empty_schema() {
    let schema = Schema::new().await;
    let store = PostgresStore::connect(&schema.options(), keys(1))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 0);
    let pending = store.pending_migrations().await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
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
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_the_previous_version_keep_rows() {
    let schema = Schema::new().await;
    let admin = raw(None).await;
    sqlx::query(&format!("CREATE SCHEMA \"{}\"", schema.name))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = raw(Some(&schema.name)).await;
    first_migrations(1).await.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO credentials (id, owner, kind, label, lookup, material_type, material, counter, created_at) \
         VALUES ('c-old', 'u1', 'password', 'pw', NULL, 'hash', convert_to('$argon2id$old', 'UTF8'), 0, 1700000000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO api_clients (id, name, status, groups, description, rate_limit_per_minute, created_at, updated_at, version) \
         VALUES ('svc', 'ci', 'active', '[\"ci\"]', 'CI', 60, 1700000000, 1700000000, 1)",
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

    let store = PostgresStore::connect(&schema.options(), keys(1))
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let report = store.migrate().await.unwrap();
    assert_eq!((report.from, report.to), (1, 4));
    assert_eq!(
        report.applied,
        [
            (2, "kv and append only audit".to_owned()),
            (3, "acme accounts".to_owned()),
            (4, "routes".to_owned())
        ]
    );
    assert_eq!(
        store.credential("c-old").await.unwrap().unwrap().material,
        Material::Hash("$argon2id$old".into())
    );
    let client = store.api_client("svc").await.unwrap().unwrap();
    assert_eq!(
        (client.name.as_str(), client.rate_limit_per_minute),
        ("ci", Some(60))
    );
    assert_eq!(store.audit_after(0, 10).await.unwrap().len(), 1);
    let kv = store.bucket("codes", HOUR).await.unwrap();
    kv.put("k", b"v", HOUR).await.unwrap();
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
    let schema = Schema::new().await;
    schema.open(keys(1)).await.close().await;
    let pool = raw(Some(&schema.name)).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (5, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = PostgresStore::open(&schema.options(), keys(1))
        .await
        .unwrap_err();
    let StoreError::Migration(message) = &err else {
        panic!("expected a migration error, got {err:?}");
    };
    assert!(
        message.contains("version 5") && message.contains("upgrade Hexon"),
        "{message}"
    ); // A dry run says so too, instead of "nothing to do".
    let store = PostgresStore::connect(&schema.options(), keys(1))
        .await
        .unwrap();
    assert!(matches!(
        store.pending_migrations().await,
        Err(StoreError::Migration(m)) if m.contains("upgrade Hexon")
    ));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let schema = Schema::new().await;
    let options = schema.options();
    let opens =
        futures_util::future::join_all((0..4).map(|_| PostgresStore::open(&options, keys(1))))
            .await;
    for store in opens {
        let store = store.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 4);
        store.close().await;
    }
}

/// Wait until `pid` blocks another session (which is then waiting for a
/// lock `pid` holds), or `done` says the other side finished first.
async fn until_blocking(pool: &PgPool, pid: i32, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 || done() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing ever waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_given_up_part_way_does_not_keep_its_lock() {
    let schema = Schema::new().await;
    schema.open(keys(1)).await.close().await;
    // Hold the migrations table, so the next migration stops there — after
    // it took the migration's advisory lock.
    let pool = raw(Some(&schema.name)).await;
    let mut holder = pool.begin().await.unwrap();
    let (holder_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let store = PostgresStore::connect(&schema.options().max_connections(1), keys(1))
        .await
        .unwrap();
    {
        let migrate = store.migrate();
        tokio::pin!(migrate);
        tokio::select! {
            result = &mut migrate => panic!("the migration went through a locked table: {result:?}"),
            () = until_blocking(&pool, holder_pid, || false) => {}
        }
        // Given up here: the future is dropped while its statement waits.
    }
    holder.rollback().await.unwrap();
    // Another node (the store above still open) migrates: nothing holds
    // the migration lock any more.
    let other = tokio::time::timeout(
        Duration::from_secs(60),
        PostgresStore::open(&schema.options(), keys(1)),
    )
    .await
    .expect("the migration lock is still held by the given-up migration's connection")
    .unwrap();
    assert_eq!(other.schema_version().await.unwrap(), 4);
    // And the first store still works, on a fresh connection.
    assert_eq!(store.schema_version().await.unwrap(), 4);
    other.close().await;
    store.close().await;
    pool.close().await;
}

// ------------------------------------------------------------ key rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_rewraps_secrets() {
    let schema = Schema::new().await;
    let (a, b) = ([0xA1; 32], [0xB2; 32]);
    let secret = Material::Secret(SecretBytes::new(b"shared-hmac".to_vec()));

    let store = schema.open(Arc::new(SecretKeys::new(a))).await;
    store
        .insert_credential(&secret_credential("c-hmac", b"shared-hmac"))
        .await
        .unwrap();
    store.close().await;

    let store = schema
        .open(Arc::new(SecretKeys::new(b).with_previous(a)))
        .await;
    assert_eq!(
        store.credential("c-hmac").await.unwrap().unwrap().material,
        secret
    );
    assert_eq!(store.rewrap_secrets().await.unwrap(), 1);
    assert_eq!(store.rewrap_secrets().await.unwrap(), 0);
    store.close().await;

    let store = schema.open(Arc::new(SecretKeys::new(b))).await;
    assert_eq!(
        store.credential("c-hmac").await.unwrap().unwrap().material,
        secret
    );
    store.close().await;

    let store = schema.open(Arc::new(SecretKeys::new(a))).await;
    assert!(matches!(
        store.credential("c-hmac").await,
        Err(StoreError::Crypto(_))
    ));
    store.close().await;
}

// -------------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_cannot_be_changed_or_removed_with_sql() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    for i in 0..3 {
        store.append_audit(&audit_event(i)).await.unwrap();
    }
    let pool = raw(Some(&schema.name)).await;
    for sql in [
        "UPDATE audit_log SET outcome = 'tampered' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 2",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    pool.close().await;
    let trail = store.audit_after(0, 10).await.unwrap();
    assert_eq!(trail.len(), 3);
    assert_eq!(trail[0].event, audit_event(0));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_audit_appends_get_distinct_increasing_positions() {
    let schema = Schema::new().await;
    let store = Arc::new(schema.open(keys(1)).await);
    let seqs = futures_util::future::join_all((0..40).map(|i| {
        let store = store.clone();
        async move { store.append_audit(&audit_event(i)).await.unwrap() }
    }))
    .await;
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 40);
    let trail = store.audit_after(0, 100).await.unwrap();
    assert_eq!(
        trail.iter().map(|r| r.seq).collect::<Vec<_>>(),
        sorted,
        "every position is visible, in order"
    );
    store.close().await;
}

// ------------------------------------------------------------ several nodes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_kv_and_objects_without_stale_reads() {
    let schema = Schema::new().await;
    let a = schema.open(keys(1)).await;
    let b = schema.open(keys(1)).await;
    let (ka, kb) = (
        a.bucket("sessions", HOUR).await.unwrap(),
        b.bucket("sessions", HOUR).await.unwrap(),
    );
    let r1 = ka.put("s", b"v1", HOUR).await.unwrap();
    assert_eq!(kb.get("s").await.unwrap().unwrap().value, b"v1");
    let r2 = kb
        .compare_and_set("s", r1, b"v2", HOUR)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ka.get("s").await.unwrap().unwrap().revision,
        r2,
        "node A sees node B's write at once"
    );
    assert_eq!(
        ka.compare_and_set("s", r1, b"stale", HOUR).await.unwrap(),
        None
    );
    assert!(kb.delete("s").await.unwrap());
    assert_eq!(ka.get("s").await.unwrap(), None);

    // Exactly one node wins a one-time code.
    let code = ka.put("code", b"c", HOUR).await.unwrap();
    let (x, y) = tokio::join!(ka.delete_if("code", code), kb.delete_if("code", code));
    assert!(
        x.unwrap() ^ y.unwrap(),
        "exactly one node consumes the code"
    );

    b.insert_api_client(&hexon_core::store::ApiClientRecord {
        id: "svc".into(),
        name: "svc".into(),
        status: hexon_core::store::ClientStatus::Active,
        groups: vec![],
        description: String::new(),
        rate_limit_per_minute: None,
        created_at: UnixTime::from_secs(1),
        updated_at: UnixTime::from_secs(1),
        version: 0,
    })
    .await
    .unwrap();
    assert!(a.api_client("svc").await.unwrap().is_some());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_never_removes_a_row_revived_meanwhile() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    let kv = store.bucket("codes", HOUR).await.unwrap();
    kv.put("k", b"old", HOUR).await.unwrap();
    let pool = raw(Some(&schema.name)).await;
    // Expired...
    sqlx::query("UPDATE kv SET expires_at = 0 WHERE bucket = 'codes'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(kv.get("k").await.unwrap(), None);
    // ... and revived by another session (as a put-if-absent does), which
    // has not committed yet when the sweep looks for expired rows.
    let mut reviver = pool.begin().await.unwrap();
    let (reviver_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *reviver)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE kv SET value = 'new'::bytea, revision = nextval('kv_revision'), \
         expires_at = 9000000000000 WHERE bucket = 'codes'",
    )
    .execute(&mut *reviver)
    .await
    .unwrap();
    let sweeper = tokio::spawn({
        let store = store.clone();
        async move { store.sweep_expired().await }
    });
    // The sweep either skips the locked row or waits for it.
    until_blocking(&pool, reviver_pid, || sweeper.is_finished()).await;
    reviver.commit().await.unwrap();
    assert_eq!(sweeper.await.unwrap().unwrap(), 0, "a live row was swept");
    assert_eq!(kv.get("k").await.unwrap().unwrap().value, b"new");
    pool.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_fails_requests_instead_of_hanging_them() {
    let schema = Schema::new().await;
    let short_locks = schema.options().lock_timeout(Duration::from_millis(200));
    let store = PostgresStore::open(&short_locks, keys(1)).await.unwrap();
    let kv = store.bucket("sessions", HOUR).await.unwrap();
    kv.put("s", b"v", HOUR).await.unwrap();
    // Someone holds the table (a forgotten manual transaction, a stuck node).
    let pool = raw(Some(&schema.name)).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let must_not_hang = Duration::from_secs(60);
    let err = tokio::time::timeout(must_not_hang, kv.put("s", b"w", HOUR))
        .await
        .expect("a write waited for the lock without end")
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("55P03"), "lock_timeout: {err}");
    // A statement running too long is cancelled the same way.
    let short_statements = schema
        .options()
        .statement_timeout(Duration::from_millis(200));
    let other = PostgresStore::open(&short_statements, keys(1))
        .await
        .unwrap();
    let err = tokio::time::timeout(
        must_not_hang,
        other.bucket("sessions", HOUR).await.unwrap().get("s"),
    )
    .await
    .expect("a read waited for the lock without end")
    .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.to_string().contains("57014"),
        "statement_timeout: {err}"
    );
    holder.rollback().await.unwrap();
    assert_eq!(kv.get("s").await.unwrap().unwrap().value, b"v");
    other.close().await;
    store.close().await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_load_sees_each_save_whole() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    conformance::durable_loads_are_whole(Arc::new(store.clone())).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_separate() {
    let (one, two) = (Schema::new().await, Schema::new().await);
    let a = one.open(keys(1)).await;
    let b = two.open(keys(1)).await;
    a.bucket("x", HOUR)
        .await
        .unwrap()
        .put("k", b"v", HOUR)
        .await
        .unwrap();
    assert_eq!(
        b.bucket("x", HOUR).await.unwrap().get("k").await.unwrap(),
        None
    );
    a.close().await;
    b.close().await;
}

// -------------------------------------------------------------- unreachable

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_not_a_hang() {
    let options = PostgresOptions::new("postgres://postgres:hunter2@127.0.0.1:1/test")
        .acquire_timeout(Duration::from_millis(500));
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        PostgresStore::open(&options, keys(1)),
    )
    .await
    .expect("connecting to a closed port must give up, not hang");
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Unavailable {
                backend: "postgres",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains("hunter2"),
        "the password leaked: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_query_never_shows() {
    for url in [
        "postgres://postgres@127.0.0.1:1/test?password=s3cret-q",
        "postgres://127.0.0.1:1/test?user=u&password=s3cret-q",
        "postgres://u:s3cret-q@127.0.0.1:1/test?application_name=x",
    ] {
        let options = PostgresOptions::new(url).acquire_timeout(Duration::from_millis(500));
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let err = tokio::time::timeout(
            Duration::from_secs(15),
            PostgresStore::open(&options, keys(1)),
        )
        .await
        .expect("connecting to a closed port must give up, not hang")
        .unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        let shown = format!("{err}\n{err:?}");
        assert!(!shown.contains("s3cret"), "the password leaked: {shown}");
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_server_goes_away_is_unavailable() {
    let schema = Schema::new().await;
    let store = schema.open(keys(1)).await;
    let kv = store.bucket("nonces", HOUR).await.unwrap();
    store.close().await;
    assert!(kv.get("n").await.unwrap_err().is_unavailable());
    assert!(store.credential("c").await.unwrap_err().is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_invalid() {
    let err = PostgresStore::connect(&PostgresOptions::new("not a url"), keys(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    let err = PostgresStore::connect(
        &PostgresOptions::new(url()).schema("Robert'); DROP TABLE x;--"),
        keys(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}
