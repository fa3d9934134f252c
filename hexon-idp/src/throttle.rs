//! Growing delays after failed logins, per account name and per client
//! address, in the shared KV (so every node of a cluster counts alike).
//!
//! After `free_failures` failures in a bucket, each further attempt must
//! wait `base_delay × 2^(failures − free_failures − 1)`, at most
//! `max_delay`, after the last failure. Buckets exist for any name typed,
//! known or not, so the answer never tells whether an account exists.
//!
//! An attempt is counted **before** it is checked ([`Throttle::begin`],
//! compare-and-set): a burst of parallel guesses cannot all slip through
//! between a read and a write. A login that completes takes its count back
//! ([`Throttle::succeeded`]). IPv6 clients are counted per /64 (one host
//! usually holds a whole /64).

use std::sync::Arc;
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::config::ThrottleConfig;
use hexon_core::store::{KvStore, StoreError};

/// How often a compare-and-set loop retries.
const ATTEMPTS: usize = 16;

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Bucket {
    failures: u32,
    last: i64,
}

/// The throttle.
#[derive(Clone, Debug)]
pub struct Throttle {
    kv: Arc<dyn KvStore>,
    config: ThrottleConfig,
}

/// The bucket key of a login name (case-insensitive).
pub fn user_key(username: &str) -> String {
    crate::digest_hex("user", &username.trim().to_lowercase())
}

/// The bucket key of a client address.
pub fn ip_key(ip: std::net::IpAddr) -> String {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    };
    crate::digest_hex("ip", &ip.to_string())
}

fn encode(b: &Bucket) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(b).map_err(|e| StoreError::Invalid {
        what: "throttle bucket",
        reason: e.to_string(),
    })
}

impl Throttle {
    /// Count failures in `kv`.
    pub fn new(kv: Arc<dyn KvStore>, config: ThrottleConfig) -> Throttle {
        Throttle { kv, config }
    }

    /// The delay owed after `failures` failures.
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(over) = failures.checked_sub(self.config.free_failures) else {
            return Duration::ZERO;
        };
        if over == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(over - 1).unwrap_or(u32::MAX);
        self.config
            .base_delay
            .get()
            .saturating_mul(factor)
            .min(self.config.max_delay.get())
    }

    /// How long the caller must still wait before trying, if at all: the
    /// longest wait of `keys`' buckets.
    pub async fn wait(&self, keys: &[&str], now: UnixTime) -> Result<Option<Duration>, StoreError> {
        let mut longest = Duration::ZERO;
        for key in keys {
            if let Some(e) = self.kv.get(key).await? {
                let b: Bucket = serde_json::from_slice(&e.value).unwrap_or_default();
                longest = longest.max(self.left(&b, now));
            }
        }
        Ok((!longest.is_zero()).then_some(longest))
    }

    /// Count an attempt in every bucket of `keys` — unless one of them
    /// says to wait, which is returned (and nothing is counted). The count
    /// stays a failure until [`succeeded`](Self::succeeded) takes it back.
    pub async fn begin(
        &self,
        keys: &[&str],
        now: UnixTime,
    ) -> Result<Option<Duration>, StoreError> {
        if let Some(wait) = self.wait(keys, now).await? {
            return Ok(Some(wait));
        }
        for key in keys {
            if let Some(wait) = self.count(key, now).await? {
                return Ok(Some(wait));
            }
        }
        Ok(None)
    }

    /// One more attempt in `key`'s bucket, by compare-and-set; the wait if
    /// the bucket is closed.
    async fn count(&self, key: &str, now: UnixTime) -> Result<Option<Duration>, StoreError> {
        let ttl = self.ttl();
        for _ in 0..ATTEMPTS {
            let current = self.kv.get(key).await?;
            let mut b: Bucket = current
                .as_ref()
                .and_then(|e| serde_json::from_slice(&e.value).ok())
                .unwrap_or_default();
            let left = self.left(&b, now);
            if !left.is_zero() {
                return Ok(Some(left));
            }
            b.failures = b.failures.saturating_add(1);
            b.last = now.as_secs();
            let value = encode(&b)?;
            let wrote = match current {
                None => self.kv.put_if_absent(key, &value, ttl).await?,
                Some(e) => {
                    self.kv
                        .compare_and_set(key, e.revision, &value, ttl)
                        .await?
                }
            };
            if wrote.is_some() {
                return Ok(None);
            }
        }
        Err(StoreError::Conflict {
            what: "throttle bucket",
            key: key.to_owned(),
        })
    }

    /// A login completed: forget the account's failures, and take this
    /// attempt back from the address (so many people behind one address
    /// who sign in fine are not slowed down).
    pub async fn succeeded(&self, user: &str, ip: &str) -> Result<(), StoreError> {
        self.reset(user).await?;
        for _ in 0..ATTEMPTS {
            let Some(e) = self.kv.get(ip).await? else {
                return Ok(());
            };
            let mut b: Bucket = serde_json::from_slice(&e.value).unwrap_or_default();
            if b.failures == 0 {
                return Ok(());
            }
            b.failures -= 1;
            if self
                .kv
                .compare_and_set(ip, e.revision, &encode(&b)?, self.ttl())
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Ok(()) // contended: the count stays one higher, which is safe
    }

    /// Forget the failures of `key`.
    pub async fn reset(&self, key: &str) -> Result<(), StoreError> {
        self.kv.delete(key).await.map(|_| ())
    }

    fn ttl(&self) -> Duration {
        self.config
            .window
            .get()
            .max(self.config.max_delay.get())
            .max(Duration::from_secs(1))
    }

    fn left(&self, b: &Bucket, now: UnixTime) -> Duration {
        let delay = i64::try_from(self.delay(b.failures).as_secs()).unwrap_or(i64::MAX);
        let left = b.last.saturating_add(delay).saturating_sub(now.as_secs());
        Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hexon_core::store::{KvBackend as _, MemoryKvBackend};

    async fn throttle() -> Throttle {
        let kv = MemoryKvBackend::new()
            .bucket("login_throttle", Duration::from_secs(7200))
            .await
            .unwrap();
        Throttle::new(kv, ThrottleConfig::default())
    }

    #[tokio::test]
    async fn attempts_count_first_delays_grow_and_success_takes_back() {
        let t = throttle().await;
        let now = UnixTime::from_secs(1_700_000_000);
        let u = user_key("Alice");
        assert_eq!(u, user_key(" alice "));
        let ip = ip_key("192.0.2.7".parse().unwrap());
        assert_eq!(ip, ip_key("::ffff:192.0.2.7".parse().unwrap()));
        // Three free failures, and the fourth attempt is still let in.
        for _ in 0..4 {
            assert_eq!(t.begin(&[&u, &ip], now).await.unwrap(), None);
        }
        // Now both buckets are closed for 2 s; a refused attempt is not counted.
        let two = Some(Duration::from_secs(2));
        assert_eq!(t.begin(&[&u, &ip], now).await.unwrap(), two);
        assert_eq!(t.begin(&[&ip], now).await.unwrap(), two);
        let later = now.saturating_add(Duration::from_secs(2));
        assert_eq!(t.begin(&[&u], later).await.unwrap(), None);
        assert_eq!(
            t.wait(&[&u], later).await.unwrap(),
            Some(Duration::from_secs(4))
        );
        // A completed login: the account starts over, the address gets this
        // attempt back (4 → 3: open again).
        t.succeeded(&u, &ip).await.unwrap();
        assert_eq!(t.wait(&[&u], later).await.unwrap(), None);
        assert_eq!(t.wait(&[&ip], later).await.unwrap(), None);
    }

    #[tokio::test]
    async fn parallel_attempts_are_each_counted() {
        let t = throttle().await;
        let now = UnixTime::from_secs(1_700_000_000);
        let key = user_key("target");
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (t, key) = (t.clone(), key.clone());
            tasks.push(tokio::spawn(
                async move { t.begin(&[&key], now).await.unwrap() },
            ));
        }
        let mut let_in = 0;
        for task in tasks {
            if task.await.unwrap().is_none() {
                let_in += 1;
            }
        }
        assert_eq!(let_in, 4, "free failures plus one, however many race");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = |s: &str| ip_key(s.parse().unwrap());
        assert_eq!(a("2001:db8:1:2::1"), a("2001:db8:1:2:ffff:ffff:ffff:9"));
        assert_ne!(a("2001:db8:1:2::1"), a("2001:db8:1:3::1"));
        assert_ne!(a("192.0.2.1"), a("192.0.2.2"));
    }

    #[tokio::test]
    async fn delay_is_capped() {
        let t = throttle().await;
        assert_eq!(t.delay(0), Duration::ZERO);
        assert_eq!(t.delay(3), Duration::ZERO);
        assert_eq!(t.delay(4), Duration::from_secs(2));
        assert_eq!(t.delay(8), Duration::from_secs(32));
        assert_eq!(t.delay(40), Duration::from_secs(900));
        assert_eq!(t.delay(u32::MAX), Duration::from_secs(900));
    }
}
