//! In-process implementations: the single-node default for shared state and
//! events, and a durable store for tests and embedders that keep nothing on
//! disk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use tokio::sync::broadcast;

use super::bus::{Event, EventBus, EventRecord, EventStream, StartAt};
use super::durable::{
    AcmeAccountRecord, AcmeAccountStore, ApiClientRecord, ApiClientStore, AuditRecord, AuditStore,
    CertificateRecord, CertificateStore, CredentialKind, CredentialRecord, CredentialStore,
    DirectoryStore, DurableStore, Material, NewAuditEvent, OidcClientRecord, OidcClientStore,
    PermissionRecord, Revocation, RouteRecord, RouteStore, open_material, seal_material,
};
use super::kv::{
    KvBackend, KvEntry, KvStore, Revision, check_bucket, check_key, check_ttl, check_value,
};
use super::{SecretKeys, StoreError};
use crate::UnixTime;
use crate::directory::{SourceId, SourceSnapshot, UserRecord};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, still consistent
    // for these maps (every mutation is a single insert/remove).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ----------------------------------------------------------------------- KV

/// In-process buckets, sharing one revision counter.
#[derive(Debug, Default)]
pub struct MemoryKvBackend {
    revisions: Arc<AtomicU64>,
    buckets: Mutex<HashMap<String, Arc<MemoryKv>>>,
}

impl MemoryKvBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KvBackend for MemoryKvBackend {
    async fn bucket(&self, name: &str, _max_ttl: Duration) -> Result<Arc<dyn KvStore>, StoreError> {
        check_bucket(name)?;
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryKv::with_counter(self.revisions.clone())))
            .clone();
        Ok(bucket)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

struct Slot {
    value: Vec<u8>,
    revision: Revision,
    expires: Instant,
}

/// One in-process bucket. Expired entries are invisible at once and removed
/// by a sweep every few thousand writes.
#[derive(Default)]
pub struct MemoryKv {
    revisions: Arc<AtomicU64>,
    map: Mutex<HashMap<String, Slot>>,
    writes: AtomicU64,
}

impl std::fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKv")
            .field("entries", &lock(&self.map).len())
            .finish()
    }
}

const SWEEP_EVERY: u64 = 4096;

impl MemoryKv {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_counter(revisions: Arc<AtomicU64>) -> Self {
        MemoryKv {
            revisions,
            ..Self::default()
        }
    }

    fn next_revision(&self) -> Revision {
        Revision(self.revisions.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn write(
        &self,
        map: &mut HashMap<String, Slot>,
        key: &str,
        value: &[u8],
        ttl: Duration,
        now: Instant,
    ) -> Revision {
        let revision = self.next_revision();
        map.insert(
            key.to_owned(),
            Slot {
                value: value.to_vec(),
                revision,
                expires: now + ttl,
            },
        );
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, slot| slot.expires > now);
        }
        revision
    }

    fn live<'a>(map: &'a HashMap<String, Slot>, key: &str, now: Instant) -> Option<&'a Slot> {
        map.get(key).filter(|slot| slot.expires > now)
    }

    /// The live entry under `key` (a checked key).
    fn entry(&self, key: &str) -> Option<KvEntry> {
        let map = lock(&self.map);
        Self::live(&map, key, Instant::now()).map(|slot| KvEntry {
            value: slot.value.clone(),
            revision: slot.revision,
        })
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        check_key(key)?;
        Ok(self.entry(key))
    }

    fn get_now(&self, key: &str) -> Option<Option<KvEntry>> {
        check_key(key).ok()?;
        Some(self.entry(key))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        check_key(key)?;
        check_value(value)?;
        check_ttl(ttl)?;
        let mut map = lock(&self.map);
        Ok(self.write(&mut map, key, value, ttl, Instant::now()))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        check_value(value)?;
        check_ttl(ttl)?;
        let now = Instant::now();
        let mut map = lock(&self.map);
        if Self::live(&map, key, now).is_some() {
            return Ok(None);
        }
        Ok(Some(self.write(&mut map, key, value, ttl, now)))
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
        check_ttl(ttl)?;
        let now = Instant::now();
        let mut map = lock(&self.map);
        match Self::live(&map, key, now) {
            Some(slot) if slot.revision == expected => {
                Ok(Some(self.write(&mut map, key, value, ttl, now)))
            }
            _ => Ok(None),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let now = Instant::now();
        Ok(lock(&self.map)
            .remove(key)
            .is_some_and(|slot| slot.expires > now))
    }

    async fn delete_if(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        check_key(key)?;
        let now = Instant::now();
        let mut map = lock(&self.map);
        if Self::live(&map, key, now).is_some_and(|slot| slot.revision == expected) {
            map.remove(key);
            return Ok(true);
        }
        Ok(false)
    }
}

// ---------------------------------------------------------------------- bus

/// How many past events the in-process bus keeps for subscribers that
/// resume with [`StartAt::After`].
pub const DEFAULT_HISTORY: usize = 10_000;

struct BusState {
    history: VecDeque<EventRecord>,
    last_seq: u64,
}

/// The in-process event bus: ordered, with a bounded history for replay.
pub struct MemoryBus {
    node: String,
    capacity: usize,
    state: Mutex<BusState>,
    live: broadcast::Sender<EventRecord>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("node", &self.node)
            .field("last_seq", &lock(&self.state).last_seq)
            .finish()
    }
}

impl MemoryBus {
    /// A bus for node `node`, keeping [`DEFAULT_HISTORY`] events.
    pub fn new(node: impl Into<String>) -> Self {
        Self::with_history(node, DEFAULT_HISTORY)
    }

    /// A bus keeping `capacity` past events (at least 1).
    pub fn with_history(node: impl Into<String>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(capacity.min(65_536));
        MemoryBus {
            node: node.into(),
            capacity,
            state: Mutex::new(BusState {
                history: VecDeque::new(),
                last_seq: 0,
            }),
            live,
        }
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        state.last_seq += 1;
        let record = EventRecord {
            seq: state.last_seq,
            published_at: UnixTime::now(),
            node: self.node.clone(),
            event: event.clone(),
        };
        if state.history.len() == self.capacity {
            state.history.pop_front();
        }
        state.history.push_back(record.clone());
        // No receivers is fine: nobody is listening live.
        let _ = self.live.send(record);
        Ok(state.last_seq)
    }

    async fn subscribe(&self, start: StartAt) -> Result<EventStream, StoreError> {
        // Take the backlog and the live receiver under one lock, so no event
        // falls between them.
        let state = lock(&self.state);
        let receiver = self.live.subscribe();
        let (mut backlog, mut last) = (Vec::new(), state.last_seq);
        if let StartAt::After(after) = start {
            let first_available = state.history.front().map_or(state.last_seq + 1, |r| r.seq);
            if after + 1 < first_available && after < state.last_seq {
                backlog.push(Err(StoreError::EventsMissed {
                    after,
                    first_available,
                }));
            }
            backlog.extend(
                state
                    .history
                    .iter()
                    .filter(|r| r.seq > after)
                    .cloned()
                    .map(Ok),
            );
            // Live events start after the backlog; anything up to `after` the
            // subscriber has already seen.
            last = after;
        }
        drop(state);
        let live =
            futures_util::stream::unfold((receiver, last), |(mut rx, mut last)| async move {
                loop {
                    match rx.recv().await {
                        Ok(record) if record.seq <= last => continue,
                        Ok(record) => {
                            last = record.seq;
                            return Some((Ok(record), (rx, last)));
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let missed = StoreError::EventsMissed {
                                after: last,
                                first_available: last + n + 1,
                            };
                            last += n;
                            return Some((Err(missed), (rx, last)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        Ok(futures_util::stream::iter(backlog).chain(live).boxed())
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.state).last_seq)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

// ------------------------------------------------------------------ durable

#[derive(Default)]
struct Durable {
    sources: BTreeMap<String, SourceSnapshot>,
    credentials: BTreeMap<String, (CredentialRecord, &'static str, Vec<u8>)>,
    clients: BTreeMap<String, ApiClientRecord>,
    permissions: BTreeMap<String, Vec<PermissionRecord>>,
    oidc: BTreeMap<String, OidcClientRecord>,
    routes: BTreeMap<String, RouteRecord>,
    acme_accounts: BTreeMap<String, AcmeAccountRecord>,
    certificates: BTreeMap<(String, String), CertificateRecord>,
    audit: Vec<AuditRecord>,
}

/// Every durable object in process memory: for tests and for embedders who
/// persist nothing. Secrets are sealed exactly as the SQL backends seal them.
pub struct MemoryStore {
    keys: Arc<SecretKeys>,
    state: Mutex<Durable>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store sealing secrets with `keys`.
    pub fn new(keys: Arc<SecretKeys>) -> Self {
        MemoryStore {
            keys,
            state: Mutex::new(Durable::default()),
        }
    }

    fn open(
        &self,
        stored: &(CredentialRecord, &'static str, Vec<u8>),
    ) -> Result<CredentialRecord, StoreError> {
        let (record, tag, bytes) = stored;
        let mut record = record.clone();
        record.material = open_material(
            &self.keys,
            &record.owner,
            &record.id,
            record.kind,
            tag,
            bytes.clone(),
        )?;
        Ok(record)
    }
}

fn not_found(what: &'static str, key: &str) -> StoreError {
    StoreError::NotFound {
        what,
        key: key.to_owned(),
    }
}

fn exists(what: &'static str, key: &str) -> StoreError {
    StoreError::AlreadyExists {
        what,
        key: key.to_owned(),
    }
}

#[async_trait]
impl DirectoryStore for MemoryStore {
    async fn save_source(
        &self,
        source: &SourceId,
        snapshot: &SourceSnapshot,
    ) -> Result<(), StoreError> {
        lock(&self.state)
            .sources
            .insert(source.as_str().to_owned(), snapshot.clone());
        Ok(())
    }

    async fn load_sources(&self) -> Result<Vec<(SourceId, SourceSnapshot)>, StoreError> {
        Ok(lock(&self.state)
            .sources
            .iter()
            .map(|(k, v)| (SourceId::new(k.as_str()), v.clone()))
            .collect())
    }

    async fn delete_source(&self, source: &SourceId) -> Result<bool, StoreError> {
        Ok(lock(&self.state).sources.remove(source.as_str()).is_some())
    }

    async fn find_user(&self, subject: &str) -> Result<Vec<(SourceId, UserRecord)>, StoreError> {
        Ok(lock(&self.state)
            .sources
            .iter()
            .filter_map(|(source, snap)| {
                snap.users()
                    .iter()
                    .find(|u| &*u.subject == subject)
                    .map(|u| (SourceId::new(source.as_str()), u.clone()))
            })
            .collect())
    }
}

#[async_trait]
impl CredentialStore for MemoryStore {
    async fn insert_credential(&self, c: &CredentialRecord) -> Result<(), StoreError> {
        let (tag, bytes) = seal_material(&self.keys, &c.owner, &c.id, c.kind, &c.material)?;
        let mut state = lock(&self.state);
        if state.credentials.contains_key(&c.id) {
            return Err(exists("credential", &c.id));
        }
        if let Some(lookup) = &c.lookup {
            if state
                .credentials
                .values()
                .any(|(o, _, _)| o.kind == c.kind && o.lookup.as_deref() == Some(lookup))
            {
                return Err(exists("credential lookup", lookup));
            }
        }
        let mut stored = c.clone();
        stored.material = Material::Public(Vec::new());
        state.credentials.insert(c.id.clone(), (stored, tag, bytes));
        Ok(())
    }

    async fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let state = lock(&self.state);
        state.credentials.get(id).map(|s| self.open(s)).transpose()
    }

    async fn credential_by_lookup(
        &self,
        kind: CredentialKind,
        lookup: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        let state = lock(&self.state);
        state
            .credentials
            .values()
            .find(|(c, _, _)| c.kind == kind && c.lookup.as_deref() == Some(lookup))
            .map(|s| self.open(s))
            .transpose()
    }

    async fn credentials_of(&self, owner: &str) -> Result<Vec<CredentialRecord>, StoreError> {
        let state = lock(&self.state);
        let mut out = state
            .credentials
            .values()
            .filter(|(c, _, _)| c.owner == owner)
            .map(|s| self.open(s))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn advance_counter(
        &self,
        id: &str,
        expected: u64,
        new: u64,
        used_at: UnixTime,
    ) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        let (c, _, _) = state
            .credentials
            .get_mut(id)
            .ok_or_else(|| not_found("credential", id))?;
        if c.counter != expected {
            return Ok(false);
        }
        c.counter = new;
        c.last_used_at = Some(used_at);
        Ok(true)
    }

    async fn replace_material(&self, id: &str, material: &Material) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let (c, tag, bytes) = state
            .credentials
            .get_mut(id)
            .ok_or_else(|| not_found("credential", id))?;
        let (new_tag, new_bytes) = seal_material(&self.keys, &c.owner, &c.id, c.kind, material)?;
        *tag = new_tag;
        *bytes = new_bytes;
        Ok(())
    }

    async fn delete_credential(&self, id: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.state).credentials.remove(id).is_some())
    }

    async fn rewrap_secrets(&self) -> Result<usize, StoreError> {
        let mut state = lock(&self.state);
        let mut n = 0;
        for (c, tag, bytes) in state.credentials.values_mut() {
            if *tag == "sealed" && self.keys.needs_rewrap(bytes) {
                *bytes = self.keys.rewrap(
                    bytes,
                    &super::durable::material_context(&c.owner, &c.id, c.kind),
                )?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl ApiClientStore for MemoryStore {
    async fn insert_api_client(&self, client: &ApiClientRecord) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if state.clients.contains_key(&client.id) {
            return Err(exists("API client", &client.id));
        }
        if state.clients.values().any(|c| c.name == client.name) {
            return Err(exists("API client name", &client.name));
        }
        let mut stored = client.clone();
        stored.version = 1;
        state.clients.insert(client.id.clone(), stored);
        Ok(())
    }

    async fn api_client(&self, id: &str) -> Result<Option<ApiClientRecord>, StoreError> {
        Ok(lock(&self.state).clients.get(id).cloned())
    }

    async fn api_clients(&self) -> Result<Vec<ApiClientRecord>, StoreError> {
        Ok(lock(&self.state).clients.values().cloned().collect())
    }

    async fn update_api_client(&self, client: &ApiClientRecord) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        if state
            .clients
            .values()
            .any(|c| c.name == client.name && c.id != client.id)
        {
            return Err(exists("API client name", &client.name));
        }
        let stored = state
            .clients
            .get_mut(&client.id)
            .ok_or_else(|| not_found("API client", &client.id))?;
        if stored.version != client.version {
            return Err(StoreError::Conflict {
                what: "API client",
                key: client.id.clone(),
            });
        }
        *stored = client.clone();
        stored.version = client.version + 1;
        Ok(stored.version)
    }

    async fn delete_api_client(&self, id: &str) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        state.permissions.remove(id);
        state.credentials.retain(|_, (c, _, _)| c.owner != id);
        Ok(state.clients.remove(id).is_some())
    }

    async fn set_permissions(
        &self,
        client: &str,
        permissions: &[PermissionRecord],
    ) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if !state.clients.contains_key(client) {
            return Err(not_found("API client", client));
        }
        let mut sorted = permissions.to_vec();
        sorted.sort_by(|a, b| a.route.cmp(&b.route));
        state.permissions.insert(client.to_owned(), sorted);
        Ok(())
    }

    async fn permissions(&self, client: &str) -> Result<Vec<PermissionRecord>, StoreError> {
        Ok(lock(&self.state)
            .permissions
            .get(client)
            .cloned()
            .unwrap_or_default())
    }
}

#[async_trait]
impl OidcClientStore for MemoryStore {
    async fn insert_oidc_client(&self, client: &OidcClientRecord) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if state.oidc.contains_key(&client.client_id) {
            return Err(exists("OIDC client", &client.client_id));
        }
        let mut stored = client.clone();
        stored.version = 1;
        state.oidc.insert(client.client_id.clone(), stored);
        Ok(())
    }

    async fn oidc_client(&self, client_id: &str) -> Result<Option<OidcClientRecord>, StoreError> {
        Ok(lock(&self.state).oidc.get(client_id).cloned())
    }

    async fn oidc_clients(&self) -> Result<Vec<OidcClientRecord>, StoreError> {
        Ok(lock(&self.state).oidc.values().cloned().collect())
    }

    async fn update_oidc_client(&self, client: &OidcClientRecord) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        let stored = state
            .oidc
            .get_mut(&client.client_id)
            .ok_or_else(|| not_found("OIDC client", &client.client_id))?;
        if stored.version != client.version {
            return Err(StoreError::Conflict {
                what: "OIDC client",
                key: client.client_id.clone(),
            });
        }
        *stored = client.clone();
        stored.version = client.version + 1;
        Ok(stored.version)
    }

    async fn delete_oidc_client(&self, client_id: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.state).oidc.remove(client_id).is_some())
    }
}

#[async_trait]
impl RouteStore for MemoryStore {
    async fn insert_route(&self, route: &RouteRecord) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if state.routes.contains_key(&route.name) {
            return Err(exists("route", &route.name));
        }
        let mut stored = route.clone();
        stored.version = 1;
        state.routes.insert(route.name.clone(), stored);
        Ok(())
    }

    async fn route(&self, name: &str) -> Result<Option<RouteRecord>, StoreError> {
        Ok(lock(&self.state).routes.get(name).cloned())
    }

    async fn routes(&self) -> Result<Vec<RouteRecord>, StoreError> {
        Ok(lock(&self.state).routes.values().cloned().collect())
    }

    async fn update_route(&self, route: &RouteRecord) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        let stored = state
            .routes
            .get_mut(&route.name)
            .ok_or_else(|| not_found("route", &route.name))?;
        if stored.version != route.version {
            return Err(StoreError::Conflict {
                what: "route",
                key: route.name.clone(),
            });
        }
        stored.definition = route.definition.clone();
        stored.updated_at = route.updated_at;
        stored.version = route.version + 1;
        Ok(stored.version)
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.state).routes.remove(name).is_some())
    }
}

#[async_trait]
impl AcmeAccountStore for MemoryStore {
    async fn insert_acme_account(&self, account: &AcmeAccountRecord) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        if state.acme_accounts.contains_key(&account.id) {
            return Err(exists("ACME account", &account.id));
        }
        if state
            .acme_accounts
            .values()
            .any(|a| a.key_thumbprint == account.key_thumbprint)
        {
            return Err(exists("ACME account key", &account.key_thumbprint));
        }
        let mut stored = account.clone();
        stored.version = 1;
        state.acme_accounts.insert(account.id.clone(), stored);
        Ok(())
    }

    async fn acme_account(&self, id: &str) -> Result<Option<AcmeAccountRecord>, StoreError> {
        Ok(lock(&self.state).acme_accounts.get(id).cloned())
    }

    async fn acme_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> Result<Option<AcmeAccountRecord>, StoreError> {
        Ok(lock(&self.state)
            .acme_accounts
            .values()
            .find(|a| a.key_thumbprint == thumbprint)
            .cloned())
    }

    async fn update_acme_account(&self, account: &AcmeAccountRecord) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        // The order of the SQL backends' checks: unknown, stale, then the
        // thumbprint's uniqueness.
        let stored = state
            .acme_accounts
            .get(&account.id)
            .ok_or_else(|| not_found("ACME account", &account.id))?;
        if stored.version != account.version {
            return Err(StoreError::Conflict {
                what: "ACME account",
                key: account.id.clone(),
            });
        }
        if state
            .acme_accounts
            .values()
            .any(|a| a.key_thumbprint == account.key_thumbprint && a.id != account.id)
        {
            return Err(exists("ACME account key", &account.key_thumbprint));
        }
        let stored = state
            .acme_accounts
            .get_mut(&account.id)
            .ok_or_else(|| not_found("ACME account", &account.id))?;
        stored.key_thumbprint = account.key_thumbprint.clone();
        stored.jwk = account.jwk.clone();
        stored.contacts = account.contacts.clone();
        stored.status = account.status;
        stored.version = account.version + 1;
        Ok(stored.version)
    }
}

#[async_trait]
impl CertificateStore for MemoryStore {
    async fn insert_certificate(&self, cert: &CertificateRecord) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        let key = (cert.issuer.clone(), cert.serial.clone());
        if state.certificates.contains_key(&key) {
            return Err(exists("certificate", &cert.serial));
        }
        state.certificates.insert(key, cert.clone());
        Ok(())
    }

    async fn certificate(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        Ok(lock(&self.state)
            .certificates
            .get(&(issuer.to_owned(), serial.to_owned()))
            .cloned())
    }

    async fn revoke_certificate(
        &self,
        issuer: &str,
        serial: &str,
        revocation: Revocation,
    ) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        let cert = state
            .certificates
            .get_mut(&(issuer.to_owned(), serial.to_owned()))
            .ok_or_else(|| not_found("certificate", serial))?;
        if cert.revoked.is_some() {
            return Ok(false);
        }
        cert.revoked = Some(revocation);
        Ok(true)
    }

    async fn revoked_certificates(
        &self,
        issuer: &str,
        now: UnixTime,
    ) -> Result<Vec<(String, Revocation)>, StoreError> {
        Ok(lock(&self.state)
            .certificates
            .values()
            .filter(|c| c.issuer == issuer && c.not_after > now)
            .filter_map(|c| c.revoked.map(|r| (c.serial.clone(), r)))
            .collect())
    }
}

#[async_trait]
impl AuditStore for MemoryStore {
    async fn append_audit(&self, event: &NewAuditEvent) -> Result<u64, StoreError> {
        let mut state = lock(&self.state);
        let seq = state.audit.len() as u64 + 1;
        state.audit.push(AuditRecord {
            seq,
            event: event.clone(),
        });
        Ok(seq)
    }

    async fn audit_after(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let state = lock(&self.state);
        Ok(state
            .audit
            .iter()
            .filter(|r| r.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl DurableStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(0)
    }
}
