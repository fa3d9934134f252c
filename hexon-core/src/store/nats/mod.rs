//! Shared KV and cluster events on NATS JetStream (feature `nats`).
//!
//! One [`NatsState`] holds one connection and is both a [`KvBackend`] and an
//! [`EventBus`]:
//!
//! - bucket `name` is the JetStream KV bucket `{prefix}_{name}` (stream
//!   `KV_{prefix}_{name}`, history 1, `max_age` = the bucket's `max_ttl` so
//!   storage is reclaimed);
//! - events go to the stream `{PREFIX}_EVENTS` on subjects
//!   `{prefix}.events.>`, numbered by the stream sequence.
//!
//! NATS 2.9 has no per-message TTL, so every value carries its expiry (Unix
//! milliseconds, header `Hexon-Expires`) and an entry past it is absent for
//! every operation. Keys are encoded as unpadded base64url (a 512-byte key
//! is a 683-character subject token), so any UTF-8 key is a valid, distinct
//! subject. Revisions are stream sequences: never reused, so
//! compare-and-set has no ABA window. Put-if-absent, compare-and-set,
//! `delete` and `delete_if` are conditional writes (the server's
//! expected-last-subject-sequence check), so racing callers on any node
//! get exactly one winner.
//!
//! Failure is closed: while the connection is down, or when the server does
//! not answer within [`NatsOptions::request_timeout`], every KV operation
//! and every publish returns [`StoreError::Unavailable`] — never "absent"
//! or "not removed". A write that timed out may still have been applied.
//! The client reconnects by itself; subscriptions resume after the last
//! event they delivered, so a restart of the server loses nothing and
//! repeats nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hexon_core::store::StoreError> {
//! use std::time::Duration;
//! use hexon_core::store::nats::{NatsOptions, NatsState};
//! use hexon_core::store::{Event, EventBus, KvBackend};
//!
//! let nats = NatsState::connect(&NatsOptions::new("nats://127.0.0.1:4222").node("gw-1")).await?;
//! let nonces = nats.bucket("nonces", Duration::from_secs(300)).await?;
//! let fresh = nonces.put_if_absent("n-123", b"", Duration::from_secs(300)).await?.is_some();
//! nats.publish(&Event::UserDisabled { subject: "u-1".into() }).await?;
//! # let _ = fresh;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use rand_core::{OsRng, RngCore};
use tokio::sync::watch;

use super::StoreError;
use super::bus::{Event, EventBus, EventStream, StartAt};
use super::kv::{KvBackend, KvStore, check_bucket};

mod bus;
mod kv;

const BACKEND: &str = "nats";
/// Longest accepted prefix (bucket and stream names grow from it).
const MAX_PREFIX_LEN: usize = 32;

fn unavailable(detail: impl fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, detail)
}

fn invalid(what: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        what,
        reason: reason.into(),
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Token(String),
    UserPassword(String, String),
    CredentialsFile(PathBuf),
}

/// How to reach NATS and how to name things there.
#[derive(Clone)]
pub struct NatsOptions {
    url: String,
    prefix: String,
    node: String,
    request_timeout: Duration,
    events_max_age: Duration,
    events_max_messages: Option<u64>,
    replicas: usize,
    auth: Auth,
    tls_required: bool,
}

impl fmt::Debug for NatsOptions {
    // Never print credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::UserPassword(..) => "user/password",
            Auth::CredentialsFile(_) => "credentials file",
        };
        f.debug_struct("NatsOptions")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .field("request_timeout", &self.request_timeout)
            .field("events_max_age", &self.events_max_age)
            .field("events_max_messages", &self.events_max_messages)
            .field("replicas", &self.replicas)
            .field("auth", &auth)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl NatsOptions {
    /// Default name prefix of buckets and streams.
    pub const DEFAULT_PREFIX: &'static str = "hexon";
    /// Default bound on every operation.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    /// Default retention of the event stream.
    pub const DEFAULT_EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Options for the server(s) at `url` (`nats://host:4222`, or several
    /// comma-separated URLs of one cluster), with the defaults: prefix
    /// `hexon`, a random node name, a 3 s request timeout, events kept 7
    /// days, one replica, no authentication.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            node: format!("node-{:08x}", OsRng.next_u32()),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            events_max_age: Self::DEFAULT_EVENTS_MAX_AGE,
            events_max_messages: None,
            replicas: 1,
            auth: Auth::None,
            tls_required: false,
        }
    }

    /// Prefix of every bucket (`{prefix}_{name}`) and of the event stream
    /// (`{PREFIX}_EVENTS`, subjects `{prefix}.events.>`): 1..=32 of
    /// `[a-z0-9-]` (no `_`, so `{prefix}_{name}` splits one way only: prefix
    /// `a_b` with bucket `c` would be prefix `a` with bucket `b_c`).
    /// Deployments sharing one NATS account use different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// This node's name, carried by every event it publishes.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = node.into();
        self
    }

    /// The longest any single operation may take (every KV operation as a
    /// whole, a publish until its acknowledgement, a subscribe). Past it the
    /// operation fails with [`StoreError::Unavailable`]. Also the connect
    /// timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the event stream keeps events, so a node that was away that
    /// long can still catch up.
    pub fn events_max_age(mut self, max_age: Duration) -> Self {
        self.events_max_age = max_age;
        self
    }

    /// Also bound the event stream by count: keep at most `n` events.
    pub fn events_max_messages(mut self, n: u64) -> Self {
        self.events_max_messages = Some(n);
        self
    }

    /// How many servers of a JetStream cluster keep each bucket and the
    /// event stream (1, 3 or 5).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticate with a user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticate with a `.creds` file (JWT and NKey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Refuse to talk to the server without TLS.
    pub fn tls_required(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    fn validate(&self) -> Result<(), StoreError> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > MAX_PREFIX_LEN
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "NATS prefix",
                format!("`{p}`: use 1..={MAX_PREFIX_LEN} of [a-z0-9-]"),
            ));
        }
        if self.node.is_empty() || self.node.len() > 256 {
            return Err(invalid("node name", "use 1..=256 bytes"));
        }
        if self.request_timeout < Duration::from_millis(10) {
            return Err(invalid("request timeout", "shorter than 10 ms"));
        }
        if self.events_max_age.is_zero() {
            return Err(invalid("events max age", "zero"));
        }
        if self.events_max_messages == Some(0) || self.events_max_messages > Some(i64::MAX as u64) {
            return Err(invalid("events max messages", "use 1..=2^63-1"));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(invalid("replicas", "use 1..=5"));
        }
        Ok(())
    }
}

/// What buckets and subscriptions share: the connection and the names.
pub(crate) struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    node: String,
    timeout: Duration,
    replicas: usize,
    events_stream: String,
    events_subject: String,
    /// Bumped on every (re)connection; subscriptions recreate their consumer.
    connections: watch::Receiver<u64>,
}

impl Shared {
    /// Fail at once while disconnected: nothing is queued for later.
    fn check_connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            State::Disconnected => Err(unavailable("not connected (reconnecting)")),
            State::Pending => Err(unavailable("not connected yet")),
        }
    }

    /// Run `op` while connected, bounded by the request timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.check_connected()?;
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format_args!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// A connection to NATS: the KV backend and the event bus of a cluster.
/// Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct NatsState {
    shared: Arc<Shared>,
}

impl fmt::Debug for NatsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsState")
            .field("prefix", &self.shared.prefix)
            .field("node", &self.shared.node)
            .field("state", &self.shared.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsState {
    /// Connect and make sure the event stream exists (created, or its
    /// retention updated to the options). Fails with
    /// [`StoreError::Unavailable`] if the server cannot be reached within
    /// the request timeout; once connected, the client reconnects by itself.
    pub async fn connect(options: &NatsOptions) -> Result<NatsState, StoreError> {
        options.validate()?;
        let (connections_tx, connections) = watch::channel(0u64);
        let mut connect = async_nats::ConnectOptions::new()
            .name(format!("hexon {}", options.node))
            .connection_timeout(options.request_timeout)
            .request_timeout(Some(options.request_timeout))
            .ping_interval(Duration::from_secs(10))
            .require_tls(options.tls_required)
            .event_callback(move |event| {
                let tx = connections_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("nats: connected");
                            tx.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("nats: disconnected; reconnecting");
                        }
                        other => tracing::debug!("nats: {other}"),
                    }
                }
            });
        connect = match &options.auth {
            Auth::None => connect,
            Auth::Token(token) => connect.token(token.clone()),
            Auth::UserPassword(user, password) => {
                connect.user_and_password(user.clone(), password.clone())
            }
            Auth::CredentialsFile(path) => connect.credentials_file(path).await.map_err(|e| {
                invalid("NATS credentials file", format!("{}: {e}", path.display()))
            })?,
        };
        // A comma-separated list is several servers of one cluster. The URLs
        // stay out of error messages: they may carry credentials.
        let servers: Vec<&str> = options
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = tokio::time::timeout(options.request_timeout, connect.connect(servers))
            .await
            .map_err(|_| unavailable("connecting to the NATS server(s): timed out"))?
            .map_err(|e| unavailable(format_args!("connecting to the NATS server(s): {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        let prefix = options.prefix.clone();
        let shared = Shared {
            client,
            js,
            events_stream: format!("{}_EVENTS", prefix.to_ascii_uppercase()),
            events_subject: format!("{prefix}.events.v1"),
            prefix,
            node: options.node.clone(),
            timeout: options.request_timeout,
            replicas: options.replicas,
            connections,
        };
        let config = stream::Config {
            name: shared.events_stream.clone(),
            description: Some("Hexon cluster events".into()),
            subjects: vec![format!("{}.events.>", shared.prefix)],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: options.events_max_age,
            max_messages: options
                .events_max_messages
                .and_then(|n| i64::try_from(n).ok())
                .unwrap_or(-1),
            max_bytes: -1,
            max_message_size: -1,
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            deny_delete: true,
            ..Default::default()
        };
        shared
            .bounded("creating the event stream", async {
                shared
                    .js
                    .create_or_update_stream(config)
                    .await
                    .map_err(|e| unavailable(format_args!("event stream: {e}")))
            })
            .await?;
        Ok(NatsState {
            shared: Arc::new(shared),
        })
    }

    /// This node's name, as put on published events.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// The prefix of this deployment's buckets and streams.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == State::Connected
    }
}

#[async_trait]
impl KvBackend for NatsState {
    async fn bucket(&self, name: &str, max_ttl: Duration) -> Result<Arc<dyn KvStore>, StoreError> {
        check_bucket(name)?;
        Ok(Arc::new(
            kv::NatsKv::open(self.shared.clone(), name, max_ttl).await?,
        ))
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

#[async_trait]
impl EventBus for NatsState {
    async fn publish(&self, event: &Event) -> Result<u64, StoreError> {
        bus::publish(&self.shared, event).await
    }

    async fn subscribe(&self, start: StartAt) -> Result<EventStream, StoreError> {
        bus::subscribe(self.shared.clone(), start).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        let shared = &self.shared;
        shared
            .bounded("reading the event stream", bus::stream_bounds(shared))
            .await
            .map(|(_, last)| last)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}
