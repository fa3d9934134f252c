//! Cluster events: user disabled, sessions revoked, config changed.
//!
//! Every node publishes what it changes and subscribes to what others
//! change; disabling a user is one event, and every node drops that user's
//! sessions when it sees it. Events are numbered by the bus; a subscriber
//! that reconnects resumes after the last number it saw, so nothing
//! published while it was away is lost (the in-process bus keeps a bounded
//! history; NATS JetStream keeps a stream).

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::UnixTime;

/// Something every node must know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A user was disabled or deleted: end their sessions, tokens and
    /// connections everywhere.
    UserDisabled {
        /// Subject id.
        subject: String,
    },
    /// All sessions of a user were revoked (the user stays enabled).
    UserSessionsRevoked {
        /// Subject id.
        subject: String,
    },
    /// One session was revoked.
    SessionRevoked {
        /// The session's public handle (never the cookie value).
        session: String,
        /// Its user.
        subject: String,
    },
    /// The configuration changed on some node.
    ConfigChanged {
        /// SHA-256 of the new configuration, hex.
        sha256: String,
    },
    /// An API client, its credentials or its permissions changed in the
    /// durable store: read them again.
    ApiClientChanged {
        /// The client's id.
        client: String,
    },
    /// A route in the durable store was created, changed or deleted: read
    /// the store's routes again.
    RouteChanged {
        /// The route's name.
        name: String,
    },
    /// An event type this version does not know (published by a newer node).
    /// Subscribers that cannot act on it should treat it as "something
    /// changed" and refresh what they cache.
    #[serde(other)]
    Unknown,
}

/// An event as the bus delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Position in the bus, increasing, never reused.
    pub seq: u64,
    /// When it was published (the publisher's clock).
    pub published_at: UnixTime,
    /// Which node published it.
    pub node: String,
    /// The event.
    pub event: Event,
}

/// Largest event accepted from a bus (events are small; anything larger is
/// not one of ours).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    node: std::borrow::Cow<'a, str>,
    published_at: UnixTime,
    event: std::borrow::Cow<'a, Event>,
}

impl EventRecord {
    /// The form a bus stores: JSON of `node`, `published_at` and `event`
    /// (the sequence number is the bus's own).
    pub fn encode(
        node: &str,
        published_at: UnixTime,
        event: &Event,
    ) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&Wire {
            node: node.into(),
            published_at,
            event: std::borrow::Cow::Borrowed(event),
        })
        .map_err(|e| StoreError::Corrupt(format!("encoding an event: {e}")))
    }

    /// Decode what [`encode`](Self::encode) wrote, numbered `seq`. Input
    /// comes from the network: oversized or malformed payloads are
    /// [`StoreError::Corrupt`], never a panic.
    pub fn decode(seq: u64, payload: &[u8]) -> Result<EventRecord, StoreError> {
        if payload.len() > MAX_EVENT_BYTES {
            return Err(StoreError::Corrupt(format!(
                "event #{seq}: {} bytes, larger than {MAX_EVENT_BYTES}",
                payload.len()
            )));
        }
        let wire: Wire<'_> = serde_json::from_slice(payload)
            .map_err(|e| StoreError::Corrupt(format!("event #{seq}: {e}")))?;
        Ok(EventRecord {
            seq,
            published_at: wire.published_at,
            node: wire.node.into_owned(),
            event: wire.event.into_owned(),
        })
    }
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// Only events published after subscribing.
    New,
    /// Every event after `seq` (0 = from the start of the retained history),
    /// then live events.
    After(u64),
}

/// A subscription: events in order. An `Err` item means events may have
/// been missed (history no longer retained, or the backend failed): the
/// subscriber must assume the worst — drop what it caches — and continue.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EventRecord, StoreError>> + Send>>;

/// Publish and subscribe to cluster events.
#[async_trait]
pub trait EventBus: Send + Sync + fmt::Debug {
    /// Publish; returns the event's sequence number once it is durable in the
    /// bus (so a caller may report "revoked everywhere").
    async fn publish(&self, event: &Event) -> Result<u64, StoreError>;

    /// Subscribe from `start`.
    async fn subscribe(&self, start: StartAt) -> Result<EventStream, StoreError>;

    /// The sequence number of the last published event (0 if none).
    async fn last_seq(&self) -> Result<u64, StoreError>;

    /// Which backend (`memory`, `nats`).
    fn backend(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_have_a_stable_wire_form_and_unknown_types_decode() {
        let e = Event::UserDisabled {
            subject: "u-1".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"type":"user_disabled","subject":"u-1"}"#);
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        let future: Event = serde_json::from_str(r#"{"type":"quota_exceeded","n":3}"#).unwrap();
        assert_eq!(future, Event::Unknown);
        assert!(serde_json::from_str::<Event>(r#"{"subject":"x"}"#).is_err());
    }

    #[test]
    fn wire_form_round_trips_and_hostile_payloads_are_errors() {
        let e = Event::SessionRevoked {
            session: "s-1".into(),
            subject: "u \"quoted\" é".into(),
        };
        let bytes = EventRecord::encode("node-a", UnixTime::from_secs(7), &e).unwrap();
        let r = EventRecord::decode(42, &bytes).unwrap();
        assert_eq!(
            (r.seq, r.node.as_str(), r.published_at, &r.event),
            (42, "node-a", UnixTime::from_secs(7), &e)
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"node\":1}",
            deep.as_bytes(),
            &huge,
            b"\xff\xfe",
        ] {
            assert!(matches!(
                EventRecord::decode(1, bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
