//! Cluster events on a JetStream stream, numbered by the stream sequence.
//!
//! A subscription is an ephemeral pull consumer started just after the last
//! event delivered. Whenever it breaks — the connection came back, heartbeats
//! stopped, the server lost the consumer in a restart, a delivery was lost on
//! the wire — a new one starts after the last event delivered, so events
//! arrive in order, exactly once. Sequence numbers that jump (history trimmed
//! by retention while the subscriber was away, or the stream re-created)
//! surface as [`StoreError::EventsMissed`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, pull};
use futures_util::StreamExt as _;

use super::{Shared, unavailable};
use crate::UnixTime;
use crate::store::StoreError;
use crate::store::bus::{Event, EventRecord, EventStream, StartAt};

/// The server sends a heartbeat this often while there is nothing to deliver;
/// two missed ones and the consumer is recreated.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Events asked for per pull request.
const BATCH: usize = 256;
/// The server removes a consumer nobody pulls from after this long.
const INACTIVE: Duration = Duration::from_secs(60);
/// Retry delays while a consumer cannot be created.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The stream's first and last sequence numbers.
pub(super) async fn stream_bounds(shared: &Shared) -> Result<(u64, u64), StoreError> {
    let stream = shared
        .js
        .get_stream_no_info(&shared.events_stream)
        .await
        .map_err(|e| unavailable(format_args!("event stream: {e}")))?;
    let info = stream
        .get_info()
        .await
        .map_err(|e| unavailable(format_args!("event stream: {e}")))?;
    Ok((info.state.first_sequence, info.state.last_sequence))
}

pub(super) async fn publish(shared: &Shared, event: &Event) -> Result<u64, StoreError> {
    let body = EventRecord::encode(&shared.node, UnixTime::now(), event)?;
    shared
        .bounded("publish", async {
            let ack = shared
                .js
                .publish(shared.events_subject.clone(), body.into())
                .await
                .map_err(|e| unavailable(format_args!("publish: {e}")))?
                .await
                .map_err(|e| unavailable(format_args!("publish: {e}")))?;
            if ack.stream != shared.events_stream {
                return Err(unavailable(format_args!(
                    "publish: stored by stream `{}`, not `{}`: another stream claims `{}`",
                    ack.stream, shared.events_stream, shared.events_subject
                )));
            }
            Ok(ack.sequence)
        })
        .await
}

pub(super) async fn subscribe(
    shared: Arc<Shared>,
    start: StartAt,
) -> Result<EventStream, StoreError> {
    let mut sub = Subscription {
        cursor: 0,
        pending: VecDeque::new(),
        consumer: None,
        connections: shared.connections.clone(),
        retry: RETRY_MIN,
        shared,
    };
    // Mark the current connection as seen: only later reconnections matter.
    sub.connections.borrow_and_update();
    let shared = sub.shared.clone();
    shared
        .bounded("subscribe", async {
            let (first, last) = stream_bounds(&shared).await?;
            sub.cursor = match start {
                StartAt::New => last,
                StartAt::After(after) => after,
            };
            sub.check_bounds(first, last);
            sub.consumer = Some(sub.open().await?);
            Ok(())
        })
        .await?;
    Ok(futures_util::stream::unfold(sub, |mut sub| async move {
        let item = sub.next().await;
        Some((item, sub))
    })
    .boxed())
}

/// A live consumer and its delivery count.
struct Live {
    name: String,
    messages: pull::Stream,
    /// The consumer sequence of the last delivery: a gap means a delivery
    /// was lost on the wire.
    delivered: u64,
}

/// What woke a subscription up.
enum Step {
    Message(Box<Option<Result<jetstream::Message, pull::MessagesError>>>),
    Reconnected,
}

struct Subscription {
    shared: Arc<Shared>,
    /// The last stream sequence delivered (or known to be gone).
    cursor: u64,
    /// Items to hand out before reading more.
    pending: VecDeque<Result<EventRecord, StoreError>>,
    consumer: Option<Live>,
    connections: tokio::sync::watch::Receiver<u64>,
    retry: Duration,
}

impl Subscription {
    /// Compare the cursor with what the stream still has; report a gap.
    fn check_bounds(&mut self, first: u64, last: u64) {
        let first_available = first.max(1);
        if self.cursor > last {
            // Further than the stream ever went: it was re-created and its
            // history is not the one the subscriber saw.
            self.pending.push_back(Err(StoreError::EventsMissed {
                after: self.cursor,
                first_available,
            }));
            self.cursor = first_available - 1;
        } else if self.cursor + 1 < first_available && self.cursor < last {
            self.pending.push_back(Err(StoreError::EventsMissed {
                after: self.cursor,
                first_available,
            }));
            self.cursor = first_available - 1;
        }
    }

    /// A consumer delivering from `cursor + 1`.
    async fn open(&self) -> Result<Live, StoreError> {
        let shared = &self.shared;
        let stream = shared
            .js
            .get_stream_no_info(&shared.events_stream)
            .await
            .map_err(|e| unavailable(format_args!("event stream: {e}")))?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .create_consumer(pull::Config {
                description: Some(format!("hexon events for {}", shared.node)),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.cursor + 1,
                },
                ack_policy: consumer::AckPolicy::None,
                replay_policy: consumer::ReplayPolicy::Instant,
                inactive_threshold: INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format_args!("event consumer: {e}")))?;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| unavailable(format_args!("event consumer: {e}")))?;
        Ok(Live {
            name,
            messages,
            delivered: 0,
        })
    }

    /// (Re)open the consumer after `cursor`, checking the stream first.
    async fn reopen(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        shared
            .bounded("resubscribe", async {
                let (first, last) = stream_bounds(&shared).await?;
                self.check_bounds(first, last);
                self.consumer = Some(self.open().await?);
                Ok(())
            })
            .await
    }

    /// Drop the consumer; the server forgets it (now, or when inactive).
    fn close(&mut self) {
        if let Some(live) = self.consumer.take() {
            let shared = self.shared.clone();
            drop(live.messages);
            tokio::spawn(async move {
                let stream = shared.js.get_stream_no_info(&shared.events_stream).await;
                if let Ok(stream) = stream {
                    let _ =
                        tokio::time::timeout(shared.timeout, stream.delete_consumer(&live.name))
                            .await;
                }
            });
        }
    }

    /// Resolves when the client reconnected (never if it is gone).
    async fn reconnected(connections: &mut tokio::sync::watch::Receiver<u64>) {
        if connections.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn next(&mut self) -> Result<EventRecord, StoreError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item;
            }
            let Some(live) = self.consumer.as_mut() else {
                match self.reopen().await {
                    Ok(()) => self.retry = RETRY_MIN,
                    Err(e) => {
                        tracing::debug!("nats: event consumer not recreated yet: {e}");
                        let delay = self.retry;
                        self.retry = (self.retry * 2).min(RETRY_MAX);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            // Back: try again at once, and soon after.
                            () = Self::reconnected(&mut self.connections) => self.retry = RETRY_MIN,
                        }
                    }
                }
                continue;
            };
            let step = tokio::select! {
                message = live.messages.next() => Step::Message(Box::new(message)),
                () = Self::reconnected(&mut self.connections) => Step::Reconnected,
            };
            let message = match step {
                Step::Reconnected => {
                    tracing::debug!("nats: reconnected; resuming events after #{}", self.cursor);
                    self.close();
                    continue;
                }
                Step::Message(message) => match *message {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::debug!(
                            "nats: event consumer broke ({e}); resuming after #{}",
                            self.cursor
                        );
                        self.close();
                        continue;
                    }
                    None => {
                        self.close();
                        continue;
                    }
                },
            };
            let (stream_seq, consumer_seq) = match message.info() {
                Ok(info) => (info.stream_sequence, info.consumer_sequence),
                Err(e) => {
                    tracing::debug!("nats: event without metadata ({e}); resubscribing");
                    self.close();
                    continue;
                }
            };
            if consumer_seq != live.delivered + 1 {
                // A delivery was lost in transit: start over from the cursor.
                self.close();
                continue;
            }
            live.delivered = consumer_seq;
            if stream_seq <= self.cursor {
                continue;
            }
            if stream_seq > self.cursor + 1 {
                self.pending.push_back(Err(StoreError::EventsMissed {
                    after: self.cursor,
                    first_available: stream_seq,
                }));
            }
            self.cursor = stream_seq;
            self.pending
                .push_back(EventRecord::decode(stream_seq, &message.payload));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.consumer.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            self.close();
        }
    }
}
