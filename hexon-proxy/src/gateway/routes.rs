//! Routes kept in the durable store, beside the `[[route]]`s of
//! `hexon.toml`: created, changed and deleted through the admin API
//! (`/api/v1/routes`, `hexonctl route …`) and applied at runtime on every
//! node, without a restart.
//!
//! The gateway runs one route table: the file's routes, then the store's.
//! Both are validated together exactly as a file is ([`Config::with_routes`]):
//! names are unique across both, groups must exist, upstreams be well formed;
//! and the tables are built (a dry run) before a change is stored. The
//! store's routes are a second tier of the policy: a request that any file
//! route matches is decided by the file's routes, however specific a store
//! route is, so the API cannot take traffic the file claims. A change that
//! does not validate is refused before it is stored. A store route that no
//! longer fits a node's file (its file differs, or changed) is left out on
//! that node with an error naming it; the others apply. At start, such a
//! route stops the gateway with the repair command instead.
//!
//! Store routes may not name files on the gateway's disk
//! (`upstream_ca`, `upstream_client_cert`, `upstream_client_key`): files are
//! per node, and the admin API must not make a node read arbitrary paths.
//! Routes that need them belong in `hexon.toml`.

use std::sync::{Arc, Mutex};

use hexon_core::config::{Config, ConfigError, ConfigErrors, RouteConfig};
use hexon_core::store::{DurableStore, RouteRecord};

use super::GatewayError;

/// Largest route definition accepted (JSON bytes).
pub const MAX_ROUTE_BYTES: usize = 32 * 1024;

/// Most routes the store may hold (the file has its own limit: its size).
pub const MAX_STORE_ROUTES: usize = 10_000;

/// Applies a merged configuration to the running gateway (policy, routing
/// and signing tables, users); with `true`, only builds the tables (a dry
/// run: everything that could fail, nothing swapped).
pub(crate) type Apply = Box<dyn Fn(&Config, bool) -> Result<(), GatewayError> + Send + Sync>;

/// The file's configuration and the store's routes the gateway runs now.
struct Current {
    file: Config,
    /// The store's records as last read (what the next read is compared
    /// with, before anything is parsed).
    seen: Vec<RouteRecord>,
    /// The store's routes running (`seen` minus any this node refused).
    store: Vec<RouteConfig>,
}

/// The gateway's route table sources: the file and the durable store. See
/// the [module docs](self).
#[derive(Clone)]
pub struct RouteSet {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn DurableStore>,
    /// Serialises applies: a file reload and a store change never interleave.
    current: Mutex<Current>,
    /// Serialises store reads with their apply, so an older read is never
    /// applied after a newer one.
    reading: tokio::sync::Mutex<()>,
    apply: Apply,
    /// `gateway.api_key_query_param` as the running layers read it (fixed
    /// at start).
    query_param: Option<String>,
}

impl std::fmt::Debug for RouteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSet").finish_non_exhaustive()
    }
}

/// A stored route as a [`RouteConfig`], with what is wrong with it located
/// by its name.
pub fn parse_record(record: &RouteRecord) -> Result<RouteConfig, ConfigErrors> {
    let value: serde_json::Value = serde_json::from_str(&record.definition).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            format!("route {:?}", record.name),
            format!("stored definition is not JSON: {e}"),
        )])
    })?;
    let route = parse_definition(value).map_err(|e| relocate(e, &record.name))?;
    if route.spec.name != record.name {
        return Err(ConfigErrors(vec![ConfigError::new(
            format!("route {:?}.name", record.name),
            format!(
                "the stored definition names {:?}; a stored route's name is its key",
                route.spec.name
            ),
        )]));
    }
    Ok(route)
}

/// A route definition given to the admin API: the `[[route]]` schema, minus
/// the per-node file paths (see the [module docs](self)).
pub fn parse_definition(value: serde_json::Value) -> Result<RouteConfig, ConfigErrors> {
    let route = RouteConfig::from_json(value)?;
    let o = &route.upstream_options;
    let files = [
        ("upstream_ca", o.upstream_ca.is_some()),
        ("upstream_client_cert", o.upstream_client_cert.is_some()),
        ("upstream_client_key", o.upstream_client_key.is_some()),
    ];
    let errs: Vec<ConfigError> = files
        .iter()
        .filter(|(_, set)| *set)
        .map(|(field, _)| {
            ConfigError::new(
                format!("route.{field}"),
                "names a file on the gateway's disk; routes that need one go in hexon.toml \
                 (files are per node, and the admin API does not make nodes read paths)",
            )
        })
        .collect();
    if errs.is_empty() {
        Ok(route)
    } else {
        Err(ConfigErrors(errs))
    }
}

/// `route.x` → `route "name".x`.
fn relocate(mut e: ConfigErrors, name: &str) -> ConfigErrors {
    for err in &mut e.0 {
        if let Some(rest) = err.location.strip_prefix("route") {
            err.location = format!("route {name:?}{rest}");
        }
    }
    e
}

/// The store routes an error names (`route "billing".allow[0]…`).
fn named_in(e: &GatewayError, store: &[RouteConfig]) -> Vec<String> {
    let GatewayError::Config(errs) = e else {
        return Vec::new();
    };
    store
        .iter()
        .map(|r| &r.spec.name)
        .filter(|name| {
            let at = format!("route {name:?}");
            errs.0.iter().any(|e| {
                e.location
                    .strip_prefix(&at)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        })
        .cloned()
        .collect()
}

impl RouteSet {
    /// Start from the file's configuration and the routes in `store`; the
    /// merged configuration is applied with `apply` now and on every change.
    /// Fails (the gateway does not start) when the store's routes do not
    /// validate with the file, naming each problem and how to fix it.
    pub(crate) async fn open(
        file: Config,
        store: Arc<dyn DurableStore>,
        apply: Apply,
    ) -> Result<(RouteSet, Config), GatewayError> {
        let records = read(&*store).await?;
        let routes = parse_all(&records)?;
        let set = RouteSet {
            inner: Arc::new(Inner {
                store,
                current: Mutex::new(Current {
                    file: file.clone(),
                    seen: Vec::new(),
                    store: Vec::new(),
                }),
                reading: tokio::sync::Mutex::new(()),
                apply,
                query_param: file.gateway.api_key_query_param.clone(),
            }),
        };
        let merged = set
            .merge(&file, &routes)
            .and_then(|m| (set.inner.apply)(&m, false).map(|()| m))
            .map_err(|e| {
                GatewayError::Other(format!(
                    "the routes kept in the durable store do not fit hexon.toml:\n{e}\n\
                     fix hexon.toml, or remove the route from the store: \
                     `hexon routes delete -c hexon.toml NAME` (`hexon routes list` shows them)"
                ))
            })?;
        {
            let mut current = set.current();
            current.seen = records;
            current.store = routes;
        }
        Ok((set, merged))
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        match self.inner.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `file` with `store`, validated as one configuration.
    fn merge(&self, file: &Config, store: &[RouteConfig]) -> Result<Config, GatewayError> {
        // The key parameter is read and removed by layers built at start:
        // no route may rely on another name (or none). A file that does is
        // refused whole; a store route that does is named, so a node leaves
        // out just that route.
        if file.gateway.api_key_query_param != self.inner.query_param {
            let lists = |r: &&RouteConfig| {
                r.spec
                    .credentials
                    .contains(&hexon_core::policy::Credential::ApiKeyQuery)
            };
            if file.routes.iter().any(|r| lists(&r)) {
                return Err(GatewayError::Other(
                    "gateway.api_key_query_param changed and routes list api_key_query: \
                     restart to apply it (the running gateway reads the old parameter)"
                        .into(),
                ));
            }
            let errs: Vec<ConfigError> = store
                .iter()
                .filter(lists)
                .map(|r| {
                    ConfigError::new(
                        format!("route {:?}.credentials", r.spec.name),
                        "lists api_key_query, but gateway.api_key_query_param changed since \
                         the gateway started: restart it first",
                    )
                })
                .collect();
            if !errs.is_empty() {
                return Err(GatewayError::Config(ConfigErrors(errs)));
            }
        }
        Ok(file.with_routes(store.to_vec())?)
    }

    /// A new file configuration (a reload): applied with the store's routes.
    /// If the two do not validate together, nothing changes and the error
    /// says which routes clash.
    pub(crate) fn set_file(&self, file: &Config) -> Result<Config, GatewayError> {
        let mut current = self.current();
        let merged = self
            .merge(file, &current.store)
            .and_then(|m| (self.inner.apply)(&m, false).map(|()| m))
            .map_err(|e| {
                GatewayError::Other(format!(
                    "the new configuration does not fit the routes kept in the durable store \
                     (change them with the admin API or `hexonctl route`):\n{e}"
                ))
            })?;
        current.file = file.clone();
        Ok(merged)
    }

    /// Read the store's routes again and apply them when they changed.
    /// Returns whether the table changed. A store route that does not fit
    /// this node's file (or cannot be built) is left out, with an error in
    /// the log naming it; the rest apply (so deletions and changes of other
    /// routes are never held back by it). If the table still cannot be
    /// built, the running one stays and the error says why.
    pub async fn reload(&self) -> Result<bool, GatewayError> {
        let _reading = self.inner.reading.lock().await;
        let records = read(&*self.inner.store).await?;
        if self.current().seen == records {
            return Ok(false);
        }
        let mut running = parse_all(&records)?;
        let mut current = self.current();
        let mut refused = Vec::new();
        // Each round leaves out the routes the errors name; a route can
        // only be named once, so this ends. `apply` builds every table
        // before it swaps anything, so a failed round changes nothing.
        loop {
            let attempt = self
                .merge(&current.file, &running)
                .and_then(|m| (self.inner.apply)(&m, false));
            match attempt {
                Ok(()) => break,
                Err(e) => {
                    let named = named_in(&e, &running);
                    if named.is_empty() {
                        return Err(GatewayError::Other(format!(
                            "the routes in the durable store do not fit this node's \
                             configuration; keeping the current table:\n{e}"
                        )));
                    }
                    tracing::error!(error = %e, routes = ?named, "store routes left out on this node: they do not fit its configuration");
                    running.retain(|r| !named.contains(&r.spec.name));
                    refused.extend(named);
                }
            }
        }
        current.seen = records;
        current.store = running;
        if refused.is_empty() {
            Ok(true)
        } else {
            Err(GatewayError::Other(format!(
                "applied without the store routes {refused:?}, which do not fit this node's \
                 configuration (see the log)"
            )))
        }
    }

    /// Check that `store` (the store's routes after a change) validates with
    /// the file and builds, before the change is written.
    pub fn check(&self, store: &[RouteConfig]) -> Result<Config, GatewayError> {
        let file = self.current().file.clone();
        let merged = self.merge(&file, store)?;
        (self.inner.apply)(&merged, true)?;
        Ok(merged)
    }

    /// Whether `name` is a route of the file (not editable through the API).
    pub fn in_file(&self, name: &str) -> bool {
        self.file_route(name).is_some()
    }

    /// The file's route `name`.
    pub fn file_route(&self, name: &str) -> Option<RouteConfig> {
        self.current()
            .file
            .routes
            .iter()
            .find(|r| r.spec.name == name)
            .cloned()
    }

    /// The names of the file's routes.
    pub fn file_route_names(&self) -> std::collections::HashSet<String> {
        let current = self.current();
        current
            .file
            .routes
            .iter()
            .map(|r| r.spec.name.clone())
            .collect()
    }

    /// The file's routes and the store's, as the gateway runs them now.
    pub fn running(&self) -> (Vec<RouteConfig>, Vec<RouteConfig>) {
        let current = self.current();
        (current.file.routes.clone(), current.store.clone())
    }

    /// The durable store the routes are kept in.
    pub fn store(&self) -> &Arc<dyn DurableStore> {
        &self.inner.store
    }
}

/// Every route in `store`, parsed; those that cannot be are errors naming
/// them.
pub async fn load(store: &dyn DurableStore) -> Result<Vec<RouteConfig>, GatewayError> {
    parse_all(&read(store).await?)
}

async fn read(store: &dyn DurableStore) -> Result<Vec<RouteRecord>, GatewayError> {
    store
        .routes()
        .await
        .map_err(|e| GatewayError::Other(format!("reading the routes in the store: {e}")))
}

fn parse_all(records: &[RouteRecord]) -> Result<Vec<RouteConfig>, GatewayError> {
    let mut routes = Vec::with_capacity(records.len());
    let mut errs = Vec::new();
    for r in records {
        match parse_record(r) {
            Ok(route) => routes.push(route),
            Err(e) => errs.extend(e.0),
        }
    }
    if errs.is_empty() {
        Ok(routes)
    } else {
        Err(GatewayError::Config(ConfigErrors(errs)))
    }
}

/// A request `route` matches (its host with `x` for wildcards, its path
/// with `x` for globs), to see whether a file route takes it first.
pub fn sample_request(route: &RouteConfig) -> (String, String, String) {
    let host = match route.spec.host.as_str() {
        "*" => "sample.invalid".to_owned(),
        h => h.replace('*', "x"),
    };
    let path = route.spec.path.replace('*', "x");
    let method = route
        .spec
        .methods
        .first()
        .cloned()
        .unwrap_or_else(|| "GET".to_owned());
    (method, host, path)
}
