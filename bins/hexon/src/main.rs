//! `hexon`: the reference gateway. Parses the command line and hands over to
//! `hexon_proxy::gateway`; no logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hexon_proxy::gateway;

/// See the `mimalloc` feature in Cargo.toml for why.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "hexon", version, about = "Hexon identity enforcement gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
    /// Run the gateway on an embedded example configuration, with a built-in
    /// echo backend that shows the verified identity. No external service.
    Quickstart {
        /// Gateway port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Validate a configuration and print its non-default values.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
    /// Mint a bearer token for a configured user (for scripts and demos).
    Token {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
        /// Username of a `[[user]]`.
        #[arg(short, long)]
        user: String,
    },
    /// Bring the durable store's schema (SQLite or PostgreSQL) up to date.
    /// `serve` does this at start too; run it alone to migrate before
    /// rolling out, or to see what would change.
    Migrate {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
        /// Only list the migrations that would run.
        #[arg(long)]
        dry_run: bool,
    },
    /// Signing keys and secret-sealing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read a password on stdin and print its argon2id hash for a
    /// `[[user]]`'s `password_hash`
    /// (`printf '%s' "$PW" | hexon hash-password -c hexon.toml`).
    HashPassword {
        /// Configuration file whose `[login.password]` cost to use
        /// (default: the built-in cost).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// The routes kept in the durable store (managed with the admin API or
    /// `hexonctl route`); here to inspect them and to repair a store whose
    /// routes keep the gateway from starting.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// The SQL bastions of `[sql]`.
    Sql {
        #[command(subcommand)]
        command: SqlCommand,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// List the store's routes and check them against the file.
    List {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
    /// Delete a route from the store.
    Delete {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
        /// The route's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum SqlCommand {
    /// Read a database password on stdin and print it sealed with the
    /// gateway's secret key, for a role's `upstream_password`
    /// (`printf '%s' "$PW" | hexon sql seal-password -c hexon.toml`).
    SealPassword {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a PKCS#8 PEM signing key.
    Generate {
        /// Output file (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// `ed25519` or `ecdsa-p256-sha256`.
        #[arg(long, default_value = "ed25519")]
        algorithm: String,
    },
    /// Print a new random key for `state.encryption_keys` (seals TOTP seeds,
    /// HMAC secrets and other secrets at rest). To rotate, put the new key
    /// first and keep the old ones after it.
    Secret,
    /// After rotating `state.encryption_keys` (new key first, old ones
    /// after it): re-seal every stored secret with the new key, so the old
    /// keys can be removed.
    Rewrap {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
    /// Rotate the signing key: write a new key and print the two
    /// configuration steps (publish it, then sign with it while the old key
    /// stays published) that keep every signature verifiable.
    Rotate {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
        /// Where to write the new PKCS#8 PEM key (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// Key id of the new key (default: the current one with its trailing
        /// number incremented, e.g. gw-7 -> gw-8).
        #[arg(long)]
        key_id: Option<String>,
    },
    /// Print the public JWKS: the signing key and `[[signing.publish]]` keys.
    Jwks {
        /// Configuration file.
        #[arg(short, long, default_value = "hexon.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gateway::init_logging();
    let result = match cli.command {
        Command::Check { config } => gateway::check(&config),
        Command::Token { config, user } => gateway::token(&config, &user),
        Command::Keys {
            command: KeysCommand::Generate { out, algorithm },
        } => gateway::generate_key(&out, &algorithm),
        Command::Keys {
            command: KeysCommand::Jwks { config },
        } => gateway::print_jwks(&config),
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    config,
                    out,
                    key_id,
                },
        } => gateway::rotate_key(&config, &out, key_id.as_deref()),
        Command::Keys {
            command: KeysCommand::Secret,
        } => gateway::print_secret_key(),
        Command::Keys {
            command: KeysCommand::Rewrap { config },
        } => gateway::run(gateway::rewrap_secrets(config)),
        Command::Sql {
            command: SqlCommand::SealPassword { config },
        } => gateway::seal_sql_password(&config),
        Command::Routes {
            command: RoutesCommand::List { config },
        } => gateway::run(gateway::list_store_routes(config)),
        Command::Routes {
            command: RoutesCommand::Delete { config, name },
        } => gateway::run(gateway::delete_store_route(config, &name)),
        Command::HashPassword { config } => gateway::hash_password(config.as_deref()),
        Command::Migrate { config, dry_run } => gateway::run(gateway::migrate(config, dry_run)),
        Command::Serve { config } => gateway::run(gateway::serve(config)),
        Command::Quickstart { port } => gateway::run(gateway::quickstart(port)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            gateway::report(&e);
            ExitCode::FAILURE
        }
    }
}
