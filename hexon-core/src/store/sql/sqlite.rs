//! The embedded SQLite store: one file, owned by one gateway process.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::db::{Engine, Pools, map_err};
use super::kv::Buckets;
use super::{Core, MigrationReport};
use crate::store::{SecretKeys, StoreError};

/// How long a statement waits for a lock held by another connection before
/// giving up with [`StoreError::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections (reads run concurrently in WAL mode).
const READERS: u32 = 4;
/// How long an operation waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening waits for another holder of the state file's lock.
const LOCK_PATIENCE: Duration = Duration::from_millis(500);

/// Durable objects and KV buckets in one SQLite file (WAL mode,
/// `synchronous = FULL`, foreign keys on).
///
/// `synchronous = FULL` syncs the write-ahead log at every commit, so a
/// write that returned survives a power loss or an OS crash: a revoked
/// session, a consumed one-time code or a revision handed out is never
/// undone (with `NORMAL`, the last commits before the crash could be).
///
/// **The file belongs to one gateway process**: the store holds an
/// exclusive lock on `<file>.lock` while it is open, and opening the same
/// file from a second process fails. The path is resolved first (symbolic
/// links, `..`), so every spelling of one file takes the same lock. That
/// lets KV gets be answered from an in-process cache that every write
/// updates (a session lookup is a hash lookup, not a query). Several gateways share state through
/// [`PostgresStore`](super::PostgresStore) instead.
///
/// Writes go through one connection (SQLite has one writer anyway), so
/// they queue in process instead of failing with `SQLITE_BUSY`; reads use a
/// few more connections and run alongside writes.
///
/// Cloning is cheap and shares the connections, the cache and the lock.
#[derive(Clone)]
pub struct SqliteStore {
    pub(super) core: Arc<Core>,
    pub(super) buckets: Arc<Buckets>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("keys", &self.core.keys)
            .finish_non_exhaustive()
    }
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        backend: "sqlite",
        detail,
    }
}

/// `<file>.lock`, next to the database.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Open (creating) a file readable and writable by its owner only.
fn open_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Make an existing file owner-only (state files hold sessions, hashes and
/// sealed secrets).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "state file was readable by others; restricting it to its owner (0600)"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The file's one true path: symbolic links followed (the file's own
/// included, even if it does not exist yet), the directory resolved (`.`,
/// `..`, links). The lock file is named after this, so two spellings of one
/// file cannot take two different locks. The directory must exist.
fn canonical(path: &Path) -> std::io::Result<PathBuf> {
    /// Links followed at most (as the kernel's `ELOOP` limit).
    const MAX_LINKS: usize = 40;
    let mut path = path.to_owned();
    for _ in 0..MAX_LINKS {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            let name = path.file_name().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path does not name a file",
                )
            })?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            return Ok(std::fs::canonicalize(parent)?.join(name));
        }
        let target = std::fs::read_link(&path)?;
        path = match path.parent() {
            Some(parent) => parent.join(target),
            None => target,
        };
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

fn create_parent(path: &Path) -> std::io::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(parent)
}

/// Take the exclusive lock that makes this process the file's only user.
///
/// A holder that lets go within [`LOCK_PATIENCE`] is waited for: a
/// gateway restarting right after the previous one exited, or a child
/// process that shares the lock for the instant between its fork and exec.
async fn lock_state_file(path: &Path) -> Result<File, StoreError> {
    let lock = lock_path(path);
    let file = open_private(&lock).map_err(|e| {
        unavailable(format!(
            "cannot create the lock file {}: {e}; check the directory's permissions",
            lock.display()
        ))
    })?;
    let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match fs4::FileExt::try_lock(&file) {
            Err(fs4::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return lock_outcome(other, file, path, &lock),
        }
    }
}

fn lock_outcome(
    outcome: Result<(), fs4::TryLockError>,
    file: File,
    path: &Path,
    lock: &Path,
) -> Result<File, StoreError> {
    match outcome {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(unavailable(format!(
            "the state file {} is in use by another Hexon process (it holds {}); an SQLite state file \
             belongs to one gateway process: stop the other one, give this one its own file, or \
             share state between gateways with PostgreSQL",
            path.display(),
            lock.display()
        ))),
        Err(fs4::TryLockError::Error(e)) => {
            Err(unavailable(format!("cannot lock {}: {e}", lock.display())))
        }
    }
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Every commit durable on return (see `SqliteStore`).
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
}

impl SqliteStore {
    /// Connect to the state file at `path` (creating it and its directory,
    /// owner-only), without migrating. Fails with
    /// [`StoreError::Unavailable`] if another process has it open.
    pub async fn connect(path: &Path, keys: Arc<SecretKeys>) -> Result<SqliteStore, StoreError> {
        create_parent(path).map_err(|e| {
            unavailable(format!(
                "cannot create the directory of {}: {e}",
                path.display()
            ))
        })?;
        let given = path;
        let path = &canonical(given).map_err(|e| {
            unavailable(format!("cannot resolve the path {}: {e}", given.display()))
        })?;
        let lock = lock_state_file(path).await?;
        open_private(path)
            .and_then(|_| restrict(path))
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let connect_error = |e: sqlx::Error| match map_err(Engine::Sqlite, e) {
            StoreError::Unavailable { detail, .. } => {
                unavailable(format!("cannot open {}: {detail}", path.display()))
            }
            other => other,
        };
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options(path))
            .await
            .map_err(connect_error)?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options(path))
            .await
            .map_err(connect_error)?;
        let core = Core::new(Engine::Sqlite, Pools::Sqlite { read, write }, keys);
        *core.file_lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
        Ok(SqliteStore {
            core: Arc::new(core),
            buckets: Arc::new(Buckets::default()),
            path: Some(given.to_owned()),
        })
    }

    /// [`connect`](Self::connect), then [`migrate`](Self::migrate): the
    /// way a gateway opens its state.
    pub async fn open(path: &Path, keys: Arc<SecretKeys>) -> Result<SqliteStore, StoreError> {
        let store = Self::connect(path, keys).await?;
        let report: MigrationReport = store.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(
                path = %path.display(),
                from = report.from,
                to = report.to,
                "SQLite state migrated"
            );
        }
        Ok(store)
    }

    /// A migrated store in memory, gone when the last handle drops: for
    /// tests and embedders that persist nothing.
    pub async fn open_in_memory(keys: Arc<SecretKeys>) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| unavailable(e.to_string()))?
            .foreign_keys(true);
        // One connection for everything, never recycled: each new
        // connection to `:memory:` would be a new, empty database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| map_err(Engine::Sqlite, e))?;
        let pools = Pools::Sqlite {
            read: pool.clone(),
            write: pool,
        };
        let store = SqliteStore {
            core: Arc::new(Core::new(Engine::Sqlite, pools, keys)),
            buckets: Arc::new(Buckets::default()),
            path: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The state file (as given to `open`), if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}
