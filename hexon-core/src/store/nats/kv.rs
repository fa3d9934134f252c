//! One JetStream KV bucket, with expiry carried by each value.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::{self, HeaderMap, HeaderValue};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Shared, invalid, unavailable};
use crate::store::StoreError;
use crate::store::kv::{
    KvEntry, KvStore, MAX_BUCKET_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, Revision, check_key, check_ttl,
    check_value,
};

/// The header carrying a value's expiry, Unix milliseconds.
const EXPIRES: &str = "Hexon-Expires";
/// The standard KV operation header (`DEL`, `PURGE`; absent for a put).
const KV_OPERATION: &str = "KV-Operation";
/// Set by servers from 2.11 on a marker left where a message was removed.
const MARKER_REASON: &str = "Nats-Marker-Reason";
/// Room for the headers on top of the largest value.
const HEADROOM: usize = 1024;
/// Encoded keys are whole subject tokens: the longest subject
/// (`$KV.{prefix}_{bucket}.{key}`) must fit the server's control line
/// (4096 bytes by default) with the reply inbox and sizes beside it.
const MAX_SUBJECT_LEN: usize =
    4 + super::MAX_PREFIX_LEN + 1 + MAX_BUCKET_LEN + 1 + 4 * MAX_KEY_LEN.div_ceil(3);
const _: () = assert!(MAX_SUBJECT_LEN < 2048);
/// Conditional writes lost to other writers before giving up (each loss
/// means someone else wrote the key; only endless churn gets here).
const MAX_ATTEMPTS: usize = 64;

/// The last message of a key, as far as the KV semantics go.
enum Slot {
    /// Nothing was ever written, or the server removed it (`max_age`).
    Absent,
    /// A delete marker, or a value past its expiry: a conditional write
    /// must name this revision.
    Dead(u64),
    /// A live value.
    Live { value: Vec<u8>, revision: u64 },
}

impl Slot {
    /// The revision a write must expect to replace this slot.
    fn revision(&self) -> u64 {
        match self {
            Slot::Absent => 0,
            Slot::Dead(revision) | Slot::Live { revision, .. } => *revision,
        }
    }
}

/// One bucket. Cheap handle on the shared connection.
pub(super) struct NatsKv {
    shared: Arc<Shared>,
    bucket: String,
    stream: stream::Stream<()>,
    max_ttl: Duration,
}

impl fmt::Debug for NatsKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsKv")
            .field("bucket", &self.bucket)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> Result<u64, StoreError> {
    // A clock before 1970 would make every entry look live forever: refuse.
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| unavailable("the system clock is before 1970"))?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a message is a delete/purge marker rather than a value.
fn is_marker(headers: &HeaderMap) -> bool {
    headers.get(MARKER_REASON).is_some()
        || headers
            .get(KV_OPERATION)
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

impl NatsKv {
    /// Create or bind `{prefix}_{name}`, its `max_age` at least `max_ttl`
    /// (raised if smaller, never lowered).
    pub(super) async fn open(
        shared: Arc<Shared>,
        name: &str,
        max_ttl: Duration,
    ) -> Result<NatsKv, StoreError> {
        check_ttl(max_ttl)?;
        let bucket = format!("{}_{name}", shared.prefix);
        let stream_name = format!("KV_{bucket}");
        let config = stream::Config {
            name: stream_name.clone(),
            description: Some(format!("Hexon shared state `{name}`")),
            subjects: vec![format!("$KV.{bucket}.>")],
            // One message per key: an overwrite or a delete marker replaces
            // the previous value, and max_age reclaims what expired.
            max_messages_per_subject: 1,
            max_age: max_ttl,
            max_messages: -1,
            max_bytes: -1,
            max_message_size: i32::try_from(MAX_VALUE_LEN + HEADROOM).unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: shared.replicas,
            allow_rollup: true,
            deny_delete: true,
            // Reads go to the stream leader (`STREAM.MSG.GET`): a direct get
            // may be answered by a lagging replica and show a deleted entry.
            allow_direct: false,
            ..Default::default()
        };
        let js = &shared.js;
        let stream = shared
            .bounded("opening a bucket", async {
                let mut config = config;
                // Never shrink retention another node (or version) chose: a
                // shorter max_age would drop its nonces and revocation
                // markers before their TTL.
                if let Ok(mut existing) = js.get_stream(&stream_name).await {
                    if let Ok(info) = existing.info().await {
                        config.max_age = config.max_age.max(info.config.max_age);
                    }
                }
                js.create_or_update_stream(config)
                    .await
                    .map_err(|e| unavailable(format_args!("bucket `{bucket}`: {e}")))?;
                js.get_stream_no_info(&stream_name)
                    .await
                    .map_err(|e| unavailable(format_args!("bucket `{bucket}`: {e}")))
            })
            .await?;
        Ok(NatsKv {
            shared,
            bucket,
            stream,
            max_ttl,
        })
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{}", self.bucket, URL_SAFE_NO_PAD.encode(key))
    }

    fn check_ttl(&self, ttl: Duration) -> Result<(), StoreError> {
        check_ttl(ttl)?;
        // The server drops messages older than the bucket's max_age: a
        // longer TTL would silently end early (a nonce forgotten too soon).
        if ttl > self.max_ttl {
            return Err(invalid(
                "ttl",
                format!(
                    "{ttl:?} is longer than the bucket's max_ttl of {:?}",
                    self.max_ttl
                ),
            ));
        }
        Ok(())
    }

    /// The key's last message, classified.
    async fn read(&self, subject: &str) -> Result<Slot, StoreError> {
        let message = match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Slot::Absent);
            }
            Err(e) => return Err(unavailable(format_args!("bucket `{}`: {e}", self.bucket))),
        };
        self.classify(message, now_ms()?)
    }

    fn classify(&self, message: StreamMessage, now: u64) -> Result<Slot, StoreError> {
        if is_marker(&message.headers) {
            return Ok(Slot::Dead(message.sequence));
        }
        let expires = message
            .headers
            .get(EXPIRES)
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "bucket `{}`: entry #{} has no {EXPIRES} header (not written by Hexon?)",
                    self.bucket, message.sequence
                ))
            })?;
        if expires <= now {
            return Ok(Slot::Dead(message.sequence));
        }
        Ok(Slot::Live {
            value: message.payload.to_vec(),
            revision: message.sequence,
        })
    }

    /// Publish to `subject`; `expect` is the revision the key must still be
    /// at (0: no message). `Ok(None)`: another write came first.
    async fn write(
        &self,
        subject: &str,
        mut headers: HeaderMap,
        payload: Vec<u8>,
        expect: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(revision) = expect {
            headers.insert(
                header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                HeaderValue::from(revision),
            );
        }
        let ack = self
            .shared
            .js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(|e| unavailable(format_args!("bucket `{}`: {e}", self.bucket)))?
            .await;
        match ack {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(unavailable(format_args!("bucket `{}`: {e}", self.bucket))),
        }
    }

    fn value_headers(ttl: Duration) -> Result<HeaderMap, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            EXPIRES,
            HeaderValue::from(now_ms()?.saturating_add(millis(ttl))),
        );
        Ok(headers)
    }

    fn delete_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        headers
    }

    async fn put_if_absent_inner(
        &self,
        subject: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        // Most keys put this way are new (nonces, codes): try creating
        // first, one round trip; look only if something is there.
        let headers = Self::value_headers(ttl)?;
        if let Some(revision) = self
            .write(subject, headers, value.to_vec(), Some(0))
            .await?
        {
            return Ok(Some(Revision(revision)));
        }
        for _ in 0..MAX_ATTEMPTS {
            let slot = self.read(subject).await?;
            if matches!(slot, Slot::Live { .. }) {
                return Ok(None);
            }
            // Absent, deleted or expired: replace exactly that message. A
            // racing writer makes this fail; read again to see what won.
            let headers = Self::value_headers(ttl)?;
            if let Some(revision) = self
                .write(subject, headers, value.to_vec(), Some(slot.revision()))
                .await?
            {
                return Ok(Some(Revision(revision)));
            }
        }
        Err(contended(&self.bucket))
    }

    async fn delete_inner(&self, subject: &str) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Slot::Live { revision, .. } = self.read(subject).await? else {
                return Ok(false);
            };
            if self
                .write(subject, Self::delete_headers(), Vec::new(), Some(revision))
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Err(contended(&self.bucket))
    }
}

fn contended(bucket: &str) -> StoreError {
    unavailable(format_args!(
        "bucket `{bucket}`: {MAX_ATTEMPTS} conditional writes in a row lost to other writers"
    ))
}

#[async_trait]
impl KvStore for NatsKv {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        check_key(key)?;
        let subject = self.subject(key);
        let slot = self.shared.bounded("get", self.read(&subject)).await?;
        Ok(match slot {
            Slot::Live { value, revision } => Some(KvEntry {
                value,
                revision: Revision(revision),
            }),
            Slot::Absent | Slot::Dead(_) => None,
        })
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.check_ttl(ttl)?;
        let subject = self.subject(key);
        let headers = Self::value_headers(ttl)?;
        let written = self
            .shared
            .bounded("put", self.write(&subject, headers, value.to_vec(), None))
            .await?;
        written
            .map(Revision)
            .ok_or_else(|| unavailable("put: refused without a condition"))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.check_ttl(ttl)?;
        let subject = self.subject(key);
        self.shared
            .bounded(
                "put_if_absent",
                self.put_if_absent_inner(&subject, value, ttl),
            )
            .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        check_value(value)?;
        self.check_ttl(ttl)?;
        let subject = self.subject(key);
        self.shared
            .bounded("compare_and_set", async {
                match self.read(&subject).await? {
                    // Live at `expected`: the write succeeds only if nothing
                    // was written since.
                    Slot::Live { revision, .. } if revision == expected.0 => {
                        let headers = Self::value_headers(ttl)?;
                        Ok(self
                            .write(&subject, headers, value.to_vec(), Some(revision))
                            .await?
                            .map(Revision))
                    }
                    _ => Ok(None),
                }
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let subject = self.subject(key);
        self.shared
            .bounded("delete", self.delete_inner(&subject))
            .await
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        check_key(key)?;
        let subject = self.subject(key);
        self.shared
            .bounded("delete_if", async {
                match self.read(&subject).await? {
                    Slot::Live { revision, .. } if revision == expected.0 => Ok(self
                        .write(&subject, Self::delete_headers(), Vec::new(), Some(revision))
                        .await?
                        .is_some()),
                    _ => Ok(false),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encoded_keys_are_single_valid_tokens() {
        for key in ["a.b", "*", ">", " x ", "..", "\u{e9}\u{1F600}", "=="] {
            let token = URL_SAFE_NO_PAD.encode(key);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{key:?} -> {token}"
            );
        }
        assert_eq!(
            URL_SAFE_NO_PAD.encode("x".repeat(MAX_KEY_LEN)).len(),
            4 * MAX_KEY_LEN.div_ceil(3) - 1
        );
    }
}
