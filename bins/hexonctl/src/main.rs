//! `hexonctl`: the admin API from the command line. API clients, their
//! credentials and permissions, routes kept in the durable store; human tables by default, `--json` for
//! scripts. Every call goes through the gateway's admin API (docs/API-CLIENTS.md),
//! so it is authorized and audited there.
// A command-line tool: its output is what it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "hexonctl",
    version,
    about = "Manage Hexon API clients through the admin API"
)]
struct Cli {
    /// The gateway's admin listener (`gateway.admin_bind`).
    #[arg(long, env = "HEXON_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    url: String,
    /// A gateway token of an admin (`hexon token -u NAME`).
    #[arg(long, env = "HEXON_TOKEN", hide_env_values = true)]
    token: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API clients.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Credentials of a client (API keys, HMAC secrets).
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Grant a client methods on a route (adds to its permissions).
    Grant {
        /// Client id.
        client: String,
        /// Route name (`hexonctl routes`).
        route: String,
        /// HTTP methods, or `*`.
        #[arg(required = true)]
        methods: Vec<String>,
    },
    /// Take a route away from a client.
    Revoke {
        /// Client id.
        client: String,
        /// Route name.
        route: String,
    },
    /// The gateway's routes (the names permissions refer to), from
    /// hexon.toml and from the durable store.
    Routes,
    /// Routes kept in the durable store: applied at once on every node.
    #[command(subcommand)]
    Route(RouteCmd),
    /// End every session of a user (on every host and node).
    EndSessions {
        /// The user's subject (a local user's name).
        user: String,
    },
}

#[derive(Subcommand)]
enum RouteCmd {
    /// A route's whole definition.
    Show {
        /// Route name.
        name: String,
    },
    /// Create or replace a store route from a file in the `[[route]]`
    /// schema: TOML (a table, or one `[[route]]`) or JSON; `-` reads stdin.
    Set {
        /// The file.
        file: String,
        /// Only create: fail if the route exists.
        #[arg(long)]
        create: bool,
    },
    /// Delete a store route.
    Delete {
        /// Route name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// List clients.
    List,
    /// Show one client with its permissions and credentials.
    Show {
        /// Client id.
        id: String,
    },
    /// Create a client.
    Create {
        /// Display name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// Groups (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Suspend a client (its credentials stop working until reactivated).
    Suspend {
        /// Client id.
        id: String,
    },
    /// Reactivate a suspended client.
    Activate {
        /// Client id.
        id: String,
    },
    /// Revoke a client for good.
    Disable {
        /// Client id.
        id: String,
    },
    /// Set (or, without a value, remove) the client's rate limit.
    RateLimit {
        /// Client id.
        id: String,
        /// Requests per minute.
        per_minute: Option<u32>,
    },
    /// Delete a client with its credentials and permissions.
    Delete {
        /// Client id.
        id: String,
    },
}

#[derive(Subcommand)]
enum CredentialCmd {
    /// Issue an API key or HMAC secret (printed once), or register the
    /// client's Ed25519 public key (RFC 9421 signatures).
    Issue {
        /// Client id.
        client: String,
        /// `api-key`, `hmac` or `ed25519`.
        #[arg(long, default_value = "api-key")]
        kind: String,
        /// For `--kind ed25519`: file with the client's public key (PEM, or
        /// base64 of the 32 raw bytes); `-` reads standard input.
        #[arg(long)]
        public_key: Option<String>,
        /// Label.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Issue a new credential of the same kind, then delete the old one.
    Rotate {
        /// Client id.
        client: String,
        /// The credential to replace.
        credential: String,
    },
    /// Delete a credential.
    Delete {
        /// Client id.
        client: String,
        /// Credential id.
        credential: String,
    },
}

struct Api {
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let uri: http::Uri = format!("{}/api/v1{path}", self.url.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("--url {:?}: {e}", self.url))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--url {:?}: the admin listener speaks plain http (keep it on loopback or an internal network)",
                self.url
            ));
        }
        let host = uri.host().unwrap_or("127.0.0.1").to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.url))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(uri.path())
            .header("host", format!("{host}:{port}"))
            .header("authorization", format!("Bearer {}", self.token.trim()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let res = tx
            .send_request(req)
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("admin API: {e}"))?
            .to_bytes();
        let j: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(j)
        } else {
            let msg = at(&j, "/error").as_str().unwrap_or("(no message)");
            let hint = match status {
                StatusCode::UNAUTHORIZED => " (is HEXON_TOKEN a fresh `hexon token` of an admin?)",
                _ => "",
            };
            Err(format!("{} {msg}{hint}", status.as_u16()))
        }
    }
}

/// The value at a JSON pointer, or null.
fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

fn set(v: &mut Value, key: &str, value: Value) {
    if let Value::Object(m) = v {
        m.insert(key.to_owned(), value);
    }
}

impl Api {
    /// The client's permissions without the one for `route` (grants are
    /// replaced as a whole: read, edit, write).
    async fn permissions_except(&self, client: &str, route: &str) -> Result<Vec<Value>, String> {
        let shown = self
            .call(Method::GET, &format!("/clients/{client}"), None)
            .await?;
        Ok(at(&shown, "/permissions")
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| at(p, "/route") != route)
            .collect())
    }

    /// Issue (or register) a credential for `client`; the answer names
    /// the client.
    async fn issue(&self, client: String, body: Value) -> Result<Value, String> {
        let path = format!("/clients/{client}/credentials");
        let mut j = self.call(Method::POST, &path, Some(body)).await?;
        set(&mut j, "client", Value::String(client));
        Ok(j)
    }

    async fn set_permissions(&self, client: &str, perms: Vec<Value>) -> Result<Value, String> {
        self.call(
            Method::PUT,
            &format!("/clients/{client}/permissions"),
            Some(Value::Array(perms)),
        )
        .await
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(&mut headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        out.push('\n');
        out.push_str(&line(&mut r.iter().cloned()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn client_rows(clients: &[Value]) -> String {
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            ["id", "name", "status", "groups", "rate_limit_per_minute"]
                .iter()
                .map(|k| text(c.get(*k).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    table(&["id", "name", "status", "groups", "rate/min"], &rows)
}

fn show_client(c: &Value) -> String {
    let mut out = client_rows(std::slice::from_ref(c));
    let perms: Vec<Vec<String>> = at(c, "/permissions")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| vec![text(at(p, "/route")), text(at(p, "/methods"))])
                .collect()
        })
        .unwrap_or_default();
    out.push_str("\n\n");
    out.push_str(&table(&["route", "methods"], &perms));
    let creds: Vec<Vec<String>> = at(c, "/credentials")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    ["id", "kind", "label", "prefix", "expires_at"]
                        .iter()
                        .map(|k| text(p.get(*k).unwrap_or(&Value::Null)))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str("\n\n");
    out.push_str(&table(
        &["credential", "kind", "label", "prefix", "expires"],
        &creds,
    ));
    out
}

fn issued(j: &Value) -> String {
    if at(j, "/secret").is_null() {
        return format!(
            "registered {} {} for {}\n{}",
            text(at(j, "/credential/kind")),
            text(at(j, "/credential/id")),
            text(at(j, "/client")),
            text(at(j, "/note")),
        );
    }
    format!(
        "issued {} {} for {}\nsecret (shown once, store it now):\n{}",
        text(at(j, "/credential/kind")),
        text(at(j, "/credential/id")),
        text(at(j, "/client")),
        text(at(j, "/secret")),
    )
}

/// Largest route file read.
const MAX_ROUTE_FILE: u64 = 64 * 1024;

/// A route from `file` (`-`: stdin), TOML or JSON, as the API's JSON.
fn read_route(file: &str) -> Result<Value, String> {
    use std::io::Read as _;
    let mut text = String::new();
    let read = if file == "-" {
        std::io::stdin()
            .take(MAX_ROUTE_FILE)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_ROUTE_FILE).read_to_string(&mut text))
    };
    read.map_err(|e| format!("{file}: {e}"))?;
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(&text).map_err(|e| format!("{file}: not JSON: {e}"));
    }
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{file}: not TOML or JSON: {}", e.message()))?;
    // `[[route]]` with one entry, as in hexon.toml.
    if let Some(toml::Value::Array(routes)) = table.remove("route") {
        let [route] = <[toml::Value; 1]>::try_from(routes)
            .map_err(|_| format!("{file}: one [[route]] per file"))?;
        return serde_json::to_value(route).map_err(|e| format!("{file}: {e}"));
    }
    serde_json::to_value(table).map_err(|e| format!("{file}: {e}"))
}

/// A route's JSON as a `[[route]]` in TOML, for people.
fn toml_text(route: &Value) -> String {
    let wrapped = json!({ "route": [route] });
    toml::Value::try_from(&wrapped)
        .ok()
        .and_then(|v| toml::to_string_pretty(&v).ok())
        .unwrap_or_else(|| route.to_string())
}

/// A store route's name as the API takes it (a URL path segment).
fn route_name(name: &str) -> Result<&str, String> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.bytes().any(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "{name:?}: a route name is 1-128 of A-Z a-z 0-9 . _ - (a route of hexon.toml with other characters cannot be addressed here)"
        ))
    }
}

async fn run(cli: Cli) -> Result<String, String> {
    let api = Api {
        url: cli.url,
        token: cli.token,
    };
    let patch = |id: &str, body: Value| (format!("/clients/{id}"), body);
    let (j, human): (Value, String) = match cli.command {
        Command::Client(ClientCmd::List) => {
            let j = api.call(Method::GET, "/clients", None).await?;
            let h = client_rows(at(&j, "/clients").as_array().map_or(&[][..], Vec::as_slice));
            (j, h)
        }
        Command::Client(ClientCmd::Show { id }) => {
            let j = api
                .call(Method::GET, &format!("/clients/{id}"), None)
                .await?;
            let h = show_client(&j);
            (j, h)
        }
        Command::Client(ClientCmd::Create {
            name,
            id,
            groups,
            description,
        }) => {
            let mut body = json!({ "name": name, "groups": groups, "description": description });
            if let (Some(id), Value::Object(m)) = (id, &mut body) {
                m.insert("id".into(), Value::String(id));
            }
            let j = api.call(Method::POST, "/clients", Some(body)).await?;
            let h = format!("created client {}", text(at(&j, "/id")));
            (j, h)
        }
        Command::Client(
            ClientCmd::Suspend { ref id }
            | ClientCmd::Activate { ref id }
            | ClientCmd::Disable { ref id },
        ) => {
            let status = match cli.command {
                Command::Client(ClientCmd::Suspend { .. }) => "suspended",
                Command::Client(ClientCmd::Activate { .. }) => "active",
                _ => "revoked",
            };
            let (path, body) = patch(id, json!({ "status": status }));
            let j = api.call(Method::PATCH, &path, Some(body)).await?;
            let h = format!("client {id} is {status}");
            (j, h)
        }
        Command::Client(ClientCmd::RateLimit { id, per_minute }) => {
            let (path, body) = patch(&id, json!({ "rate_limit_per_minute": per_minute }));
            let j = api.call(Method::PATCH, &path, Some(body)).await?;
            let h = match per_minute {
                Some(n) => format!("client {id}: {n} requests per minute"),
                None => format!("client {id}: no rate limit"),
            };
            (j, h)
        }
        Command::Client(ClientCmd::Delete { id }) => {
            let j = api
                .call(Method::DELETE, &format!("/clients/{id}"), None)
                .await?;
            (j, format!("deleted client {id}"))
        }
        Command::Credential(CredentialCmd::Issue {
            client,
            kind,
            label,
            expires_in,
            public_key,
        }) => {
            let kind = kind.replace('-', "_");
            let mut body = json!({ "kind": kind, "label": label, "expires_in": expires_in });
            if let Some(path) = public_key {
                let text = if path == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&path)
                }
                .map_err(|e| format!("reading the public key from {path}: {e}"))?;
                set(&mut body, "public_key", Value::String(text));
            }
            let j = api.issue(client, body).await?;
            let h = issued(&j);
            (j, h)
        }
        Command::Credential(CredentialCmd::Rotate { client, credential }) => {
            let shown = api
                .call(Method::GET, &format!("/clients/{client}"), None)
                .await?;
            let old = at(&shown, "/credentials")
                .as_array()
                .and_then(|a| a.iter().find(|c| at(c, "/id") == credential.as_str()))
                .ok_or_else(|| format!("client {client} has no credential {credential}"))?;
            if at(old, "/kind") == "ed25519" {
                return Err(format!(
                    "{credential} is a public key the client holds the private half of: register the new one with `hexonctl credential issue {client} --kind ed25519 --public-key FILE`, then delete {credential}"
                ));
            }
            let body = json!({ "kind": at(old, "/kind"), "label": at(old, "/label") });
            let mut j = api.issue(client.clone(), body).await?;
            // The new secret is printed whatever happens to the old one.
            let deleted = api
                .call(
                    Method::DELETE,
                    &format!("/clients/{client}/credentials/{credential}"),
                    None,
                )
                .await;
            set(&mut j, "replaced", Value::String(credential.clone()));
            set(&mut j, "old_deleted", Value::Bool(deleted.is_ok()));
            let h = match &deleted {
                Ok(_) => format!("{}\n(deleted {credential})", issued(&j)),
                Err(e) => format!(
                    "{}\nWARNING: the old credential {credential} was NOT deleted ({e}); delete it with `hexonctl credential delete {client} {credential}`",
                    issued(&j),
                ),
            };
            (j, h)
        }
        Command::Credential(CredentialCmd::Delete { client, credential }) => {
            let j = api
                .call(
                    Method::DELETE,
                    &format!("/clients/{client}/credentials/{credential}"),
                    None,
                )
                .await?;
            (j, format!("deleted credential {credential}"))
        }
        Command::Grant {
            client,
            route,
            methods,
        } => {
            let mut perms = api.permissions_except(&client, &route).await?;
            perms.push(json!({ "route": route, "methods": methods }));
            let j = api.set_permissions(&client, perms).await?;
            let h = format!("client {client} may {} on {route}", methods.join(","));
            (j, h)
        }
        Command::Revoke { client, route } => {
            let perms = api.permissions_except(&client, &route).await?;
            let j = api.set_permissions(&client, perms).await?;
            (j, format!("client {client} no longer has {route}"))
        }
        Command::EndSessions { user } => {
            // Path segments are taken as written by the admin API.
            if user.is_empty()
                || !user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
            {
                return Err(format!(
                    "{user:?}: a subject of letters, digits and . _ @ + - (end other users' sessions with the admin API directly)"
                ));
            }
            let path = format!("/users/{user}/sessions");
            let j = api.call(Method::DELETE, &path, None).await?;
            (j, format!("ended every session of {user}"))
        }
        Command::Route(RouteCmd::Show { name }) => {
            let name = route_name(&name)?;
            let j = api
                .call(Method::GET, &format!("/routes/{name}"), None)
                .await?;
            let h = format!(
                "route {} (from {})\n{}",
                text(at(&j, "/name")),
                text(at(&j, "/source")),
                toml_text(at(&j, "/route"))
            );
            (j, h)
        }
        Command::Route(RouteCmd::Set { file, create }) => {
            let route = read_route(&file)?;
            let Some(name) = route.get("name").and_then(Value::as_str).map(str::to_owned) else {
                return Err(format!("{file}: the route has no name"));
            };
            route_name(&name)?;
            let put = if create {
                None
            } else {
                match api
                    .call(Method::PUT, &format!("/routes/{name}"), Some(route.clone()))
                    .await
                {
                    Err(e) if e.starts_with("404 ") => None,
                    other => Some(other?),
                }
            };
            let (j, verb) = match put {
                Some(j) => (j, "replaced"),
                None => (
                    api.call(Method::POST, "/routes", Some(route)).await?,
                    "created",
                ),
            };
            let h = format!(
                "{verb} route {name} (version {}); applied on this node, the others follow",
                text(at(&j, "/version"))
            );
            (j, h)
        }
        Command::Route(RouteCmd::Delete { name }) => {
            route_name(&name)?;
            let j = api
                .call(Method::DELETE, &format!("/routes/{name}"), None)
                .await?;
            (j, format!("deleted route {name}"))
        }
        Command::Routes => {
            let j = api.call(Method::GET, "/routes", None).await?;
            let keys = [
                "name",
                "host",
                "path",
                "methods",
                "public",
                "credentials",
                "source",
            ];
            let rows: Vec<Vec<String>> = at(&j, "/routes")
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            keys.iter()
                                .map(|k| text(r.get(*k).unwrap_or(&Value::Null)))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let h = table(
                &[
                    "route",
                    "host",
                    "path",
                    "methods",
                    "public",
                    "credentials",
                    "source",
                ],
                &rows,
            );
            (j, h)
        }
    };
    Ok(if cli.json { j.to_string() } else { human })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hexonctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hexonctl: {e}");
            ExitCode::FAILURE
        }
    }
}
