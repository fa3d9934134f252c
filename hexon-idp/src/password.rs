//! Passwords: argon2id (RFC 9106) hashed and verified on a bounded pool of
//! dedicated threads.
//!
//! Hashing is deliberately expensive (tens of milliseconds and tens of MiB
//! per attempt). Run on the async runtime, a login flood would stall
//! proxying; run on an unbounded pool, it would exhaust memory. So hashes
//! run on `threads` dedicated threads behind a queue of `queue` waiting
//! jobs; when the queue is full a login is told "busy, try again" at once
//! ([`Busy`]) instead of piling up.
//!
//! Unknown users are verified against a dummy hash of the same cost, so the
//! time a login takes does not say whether the account exists. The dummy
//! is made, not hashed (`dummy_hash`): starting the pool costs no
//! hashing time and keeps no hashing memory.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hexon_core::config::PasswordHashConfig;
use rand_core::OsRng;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// The pool is full (or shutting down): answer "busy, try again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("password hashing is busy; try again in a moment")
    }
}

impl std::error::Error for Busy {}

type Job = Box<dyn FnOnce(&Argon2<'static>) + Send>;

/// A bounded pool of threads that hash and verify passwords.
#[derive(Clone)]
pub struct HashPool {
    jobs: SyncSender<Job>,
    dummy: Arc<str>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").finish_non_exhaustive()
    }
}

/// The argon2id instance for `config` (what new hashes use; verification
/// reads the parameters from each stored hash).
pub fn argon2(config: &PasswordHashConfig) -> Result<Argon2<'static>, String> {
    let params = Params::new(
        config.memory_kib,
        config.iterations,
        config.parallelism,
        None,
    )
    .map_err(|e| format!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash `password` with `argon2` (synchronously; for tools such as
/// `hexon hash-password`, not for the request path).
pub fn hash_now(argon2: &Argon2<'_>, password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing: {e}"))
}

/// A hash of no password, for unknown users: `argon2`'s parameters (what
/// verifying costs is read from them), a random salt and a random output
/// of the length `argon2` makes. Verifying any password against it
/// costs what verifying a real hash of the configured cost does and fails:
/// a match would take a preimage of a random 256-bit output. Made rather
/// than hashed, so that no hashing time or memory (tens of MiB, kept by
/// the allocator afterwards) is spent at start.
fn dummy_hash(argon2: &Argon2<'_>) -> Result<String, String> {
    use argon2::password_hash::{Output, ParamsString};
    use rand_core::RngCore as _;
    let salt = SaltString::generate(&mut OsRng);
    let len = argon2
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let mut output = vec![0u8; len];
    OsRng.fill_bytes(&mut output);
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params())
            .map_err(|e| format!("argon2 parameters: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|e| format!("dummy hash: {e}"))?),
    };
    Ok(hash.to_string())
}

/// Whether `phc` is an argon2id hash this crate can verify.
pub fn is_valid_hash(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

fn verify_with(argon2: &Argon2<'_>, phc: &str, password: &str) -> bool {
    // A stored hash carries its own parameters; a malformed one verifies
    // nothing (fail closed).
    match PasswordHash::new(phc) {
        Ok(h) if h.algorithm.as_str() == "argon2id" => {
            argon2.verify_password(password.as_bytes(), &h).is_ok()
        }
        _ => false,
    }
}

impl HashPool {
    /// Start `config.threads` hashing threads with room for `config.queue`
    /// waiting jobs.
    pub fn start(config: &PasswordHashConfig) -> Result<HashPool, String> {
        let argon2 = argon2(config)?;
        let dummy = dummy_hash(&argon2)?;
        let (tx, rx) = sync_channel::<Job>(config.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let argon2 = argon2.clone();
            std::thread::Builder::new()
                .name(format!("hexon-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while taking a job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&argon2),
                            Err(_) => return, // every sender dropped
                        }
                    }
                })
                .map_err(|e| format!("starting a password hashing thread: {e}"))?;
        }
        Ok(HashPool {
            jobs: tx,
            dummy: Arc::from(dummy),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |a| {
            let _ = tx.send(f(a));
        });
        match self.jobs.try_send(job) {
            Ok(()) => rx.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// Whether `password` matches `phc`. `phc = None` (no such user, or no
    /// password set) verifies against the dummy hash and answers `false`,
    /// taking as long as a real check.
    pub async fn verify(&self, phc: Option<&str>, password: &str) -> Result<bool, Busy> {
        let (phc, real) = match phc {
            Some(p) => (Arc::<str>::from(p), true),
            None => (self.dummy.clone(), false),
        };
        let password = Zeroizing::new(password.to_owned());
        let ok = self.run(move |a| verify_with(a, &phc, &password)).await?;
        Ok(ok && real)
    }

    /// A new argon2id hash of `password` with the configured cost.
    pub async fn hash(&self, password: &str) -> Result<Result<String, String>, Busy> {
        let password = Zeroizing::new(password.to_owned());
        self.run(move |a| hash_now(a, &password)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cheap() -> PasswordHashConfig {
        let mut c = PasswordHashConfig::default();
        c.memory_kib = 64;
        c.iterations = 1;
        c.queue = 2;
        c
    }

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let pool = HashPool::start(&cheap()).unwrap();
        let h = pool.hash("correct horse").await.unwrap().unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(is_valid_hash(&h));
        assert!(pool.verify(Some(&h), "correct horse").await.unwrap());
        assert!(!pool.verify(Some(&h), "correct horsE").await.unwrap());
        assert!(!pool.verify(Some(&h), "").await.unwrap());
    }

    #[tokio::test]
    async fn unknown_users_and_malformed_hashes_never_verify() {
        let pool = HashPool::start(&cheap()).unwrap();
        // The dummy has the configured cost (what verifying it costs), a
        // salt of its own, and matches nothing.
        let real = pool.hash("x").await.unwrap().unwrap();
        let params = |h: &str| h.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(&pool.dummy), params(&real));
        assert_eq!(params(&real), "$argon2id$v=19$m=64,t=1,p=1");
        assert!(is_valid_hash(&pool.dummy));
        let parsed = PasswordHash::new(&pool.dummy).unwrap();
        assert_eq!(
            parsed.hash.unwrap().len(),
            PasswordHash::new(&real).unwrap().hash.unwrap().len()
        );
        assert_ne!(pool.dummy, HashPool::start(&cheap()).unwrap().dummy);
        for password in ["", "x", "hexon dummy password for unknown users"] {
            assert!(!pool.verify(None, password).await.unwrap());
            assert!(!verify_with(
                &argon2(&cheap()).unwrap(),
                &pool.dummy,
                password
            ));
        }
        for bad in [
            "",
            "plaintext",
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            "$2b$12$abcdefghijklmnopqrstuv",
        ] {
            assert!(!pool.verify(Some(bad), "plaintext").await.unwrap(), "{bad}");
            assert!(!is_valid_hash(bad));
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let mut c = cheap();
        c.queue = 1;
        let pool = HashPool::start(&c).unwrap();
        // Hold the one thread until released, and wait until it holds it:
        // a job still queued would take the slot the test means to fill.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, holding) = std::sync::mpsc::channel::<()>();
        let holder = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move |_| {
                    let _ = started.send(());
                    held.recv().is_ok()
                })
                .await
            })
        };
        while holding.try_recv().is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // The thread is held and the queue has one slot: the first job
        // takes it, the next two are refused without waiting.
        let h = pool.hash("pw");
        let v1 = pool.verify(None, "pw");
        let v2 = pool.verify(None, "pw");
        let (h, v1, v2) = tokio::join!(
            async { h.await.map(|_| ()) },
            async { v1.await.map(|_| ()) },
            async {
                let r = v2.await.map(|_| ());
                release.send(()).unwrap();
                r
            }
        );
        assert_eq!((h, v1, v2), (Ok(()), Err(Busy), Err(Busy)));
        assert_eq!(holder.await.unwrap(), Ok(true));
    }
}
