//! Routes kept in the durable store, beside the `[[route]]`s of
//! `hexon.toml`: created, changed and deleted through the admin API
//! (`/api/v1/routes`, `hexonctl route …`) and applied at runtime on every
//! node, without a restart.
//!
//! The gateway runs one route table: the file's routes, then the store's.
//! Both are validated together exactly as a file is ([`Config::with_routes`]):
//! names are unique across both, groups must exist, upstreams be well formed.
//! A change that does not validate is refused before it is stored; a table
//! that no longer validates (the file changed, or another node stored
//! something this node's file contradicts) is not applied: the node keeps the
//! table it has and says why. A route missing from the table matches nothing,
//! so nothing is ever served under a route the operator did not see validated.
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
/// and signing tables, users).
pub(crate) type Apply = Box<dyn Fn(&Config) -> Result<(), GatewayError> + Send + Sync>;

/// The file's configuration and the store's routes the gateway runs now.
struct Current {
    file: Config,
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
    apply: Apply,
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
        let routes = load(&*store).await?;
        let merged = file.with_routes(routes.clone()).map_err(|e| {
            GatewayError::Other(format!(
                "the routes kept in the durable store do not fit hexon.toml:\n{e}\n\
                 fix hexon.toml, or remove the route from the store: \
                 `hexon routes delete -c hexon.toml NAME`"
            ))
        })?;
        apply(&merged)?;
        let set = RouteSet {
            inner: Arc::new(Inner {
                store,
                current: Mutex::new(Current {
                    file,
                    store: routes,
                }),
                apply,
            }),
        };
        Ok((set, merged))
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        match self.inner.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A new file configuration (a reload): applied with the store's routes.
    /// If the two do not validate together, nothing changes and the error
    /// says which routes clash.
    pub(crate) fn set_file(&self, file: &Config) -> Result<Config, GatewayError> {
        let mut current = self.current();
        let merged = file.with_routes(current.store.clone()).map_err(|e| {
            GatewayError::Other(format!(
                "the new configuration does not fit the routes kept in the durable store \
                 (change them with the admin API or `hexonctl route`):\n{e}"
            ))
        })?;
        (self.inner.apply)(&merged)?;
        current.file = file.clone();
        Ok(merged)
    }

    /// Read the store's routes again and apply them when they changed.
    /// Returns whether the table changed. On error the running table stays.
    pub async fn reload(&self) -> Result<bool, GatewayError> {
        let routes = load(&*self.inner.store).await?;
        let mut current = self.current();
        if current.store == routes {
            return Ok(false);
        }
        let merged = current.file.with_routes(routes.clone()).map_err(|e| {
            GatewayError::Other(format!(
                "the routes in the durable store do not fit this node's hexon.toml; \
                 keeping the current table:\n{e}"
            ))
        })?;
        (self.inner.apply)(&merged)?;
        current.store = routes;
        Ok(true)
    }

    /// Check that `store` (the store's routes after a change) validates with
    /// the file, before the change is written.
    pub fn check(&self, store: Vec<RouteConfig>) -> Result<(), ConfigErrors> {
        let current = self.current();
        current.file.with_routes(store).map(drop)
    }

    /// Whether `name` is a route of the file (not editable through the API).
    pub fn in_file(&self, name: &str) -> bool {
        self.current()
            .file
            .routes
            .iter()
            .any(|r| r.spec.name == name)
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

/// Every route in `store`, parsed; the first that cannot be is an error
/// naming it.
pub async fn load(store: &dyn DurableStore) -> Result<Vec<RouteConfig>, GatewayError> {
    let records = store
        .routes()
        .await
        .map_err(|e| GatewayError::Other(format!("reading the routes in the store: {e}")))?;
    let mut routes = Vec::with_capacity(records.len());
    let mut errs = Vec::new();
    for r in &records {
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
