//! Growing delays after failed logins, per account name and per client
//! address, in the shared KV (so every node of a cluster counts alike).
//!
//! After `free_failures` failures in a bucket, each further attempt must
//! wait `base_delay × 2^(failures − free_failures − 1)`, at most
//! `max_delay`, after the last failure. Buckets exist for any name typed,
//! known or not, so the answer never tells whether an account exists.

use std::sync::Arc;
use std::time::Duration;

use hexon_core::UnixTime;
use hexon_core::config::ThrottleConfig;
use hexon_core::store::{KvStore, StoreError};
use sha2::{Digest as _, Sha256};

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
    digest_key("user", &username.trim().to_lowercase())
}

/// The bucket key of a client address.
pub fn ip_key(ip: std::net::IpAddr) -> String {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    digest_key("ip", &ip.to_string())
}

fn digest_key(kind: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    hexon_core::hex::encode(&h.finalize())
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
                let delay = i64::try_from(self.delay(b.failures).as_secs()).unwrap_or(i64::MAX);
                let left = b.last.saturating_add(delay).saturating_sub(now.as_secs());
                longest = longest.max(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
            }
        }
        Ok((!longest.is_zero()).then_some(longest))
    }

    /// Record a failure in every bucket of `keys`.
    pub async fn failed(&self, keys: &[&str], now: UnixTime) -> Result<(), StoreError> {
        let ttl = self
            .config
            .window
            .get()
            .max(self.config.max_delay.get())
            .max(Duration::from_secs(1));
        for key in keys {
            let mut done = false;
            for _ in 0..ATTEMPTS {
                let current = self.kv.get(key).await?;
                let mut b: Bucket = current
                    .as_ref()
                    .and_then(|e| serde_json::from_slice(&e.value).ok())
                    .unwrap_or_default();
                b.failures = b.failures.saturating_add(1);
                b.last = now.as_secs();
                let value = serde_json::to_vec(&b).map_err(|e| StoreError::Invalid {
                    what: "throttle bucket",
                    reason: e.to_string(),
                })?;
                let wrote = match current {
                    None => self.kv.put_if_absent(key, &value, ttl).await?,
                    Some(e) => {
                        self.kv
                            .compare_and_set(key, e.revision, &value, ttl)
                            .await?
                    }
                };
                if wrote.is_some() {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(StoreError::Conflict {
                    what: "throttle bucket",
                    key: (*key).to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Forget the failures of `key` (after a successful login).
    pub async fn reset(&self, key: &str) -> Result<(), StoreError> {
        self.kv.delete(key).await.map(|_| ())
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
    async fn delays_grow_after_the_free_failures_and_reset_on_success() {
        let t = throttle().await;
        let now = UnixTime::from_secs(1_700_000_000);
        let u = user_key("Alice");
        assert_eq!(u, user_key(" alice "));
        let ip = ip_key("192.0.2.7".parse().unwrap());
        assert_eq!(ip, ip_key("::ffff:192.0.2.7".parse().unwrap()));
        for _ in 0..3 {
            assert_eq!(t.wait(&[&u, &ip], now).await.unwrap(), None);
            t.failed(&[&u, &ip], now).await.unwrap();
        }
        assert_eq!(t.wait(&[&u], now).await.unwrap(), None);
        t.failed(&[&u, &ip], now).await.unwrap();
        assert_eq!(
            t.wait(&[&u], now).await.unwrap(),
            Some(Duration::from_secs(2))
        );
        t.failed(&[&u], now).await.unwrap();
        assert_eq!(
            t.wait(&[&u], now).await.unwrap(),
            Some(Duration::from_secs(4))
        );
        // The address bucket counted four; the user bucket five.
        assert_eq!(
            t.wait(&[&ip], now).await.unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            t.wait(&[&u], now.saturating_add(Duration::from_secs(4)))
                .await
                .unwrap(),
            None
        );
        t.reset(&u).await.unwrap();
        assert_eq!(t.wait(&[&u], now).await.unwrap(), None);
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
