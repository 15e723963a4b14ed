//! Command-line arguments (and nothing else).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Rate limits and quotas for LLM APIs.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OpenAI-compatible gateway.
    Serve {
        /// The policy file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Listen here instead of `server.listen` (port 0: any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Let the built-in mock upstream obey `x-mock-*` request headers
        /// (for tests and benchmarks only: any client could then make a
        /// response huge, slow or free).
        #[arg(long)]
        mock_controls: bool,
    },
    /// Validate a policy file and print its effective limits per tier and model.
    CheckConfig {
        /// The policy file (TOML).
        file: PathBuf,
        /// Only validate; print nothing on success.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Run the built-in mock OpenAI-compatible upstream (for tests,
    /// benchmarks and demos): deterministic token counts, JSON and SSE.
    MockUpstream {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Milliseconds before each response starts.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Milliseconds between stream chunks.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Completion tokens when a request sets no max_tokens.
        #[arg(long, default_value_t = 16)]
        tokens: u64,
        /// Obey `x-mock-*` request headers (for tests and benchmarks only).
        #[arg(long)]
        controls: bool,
    },
    /// API keys: make one locally, or manage a tenant's through the admin API.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tenants, through the admin API.
    Tenants {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// A tenant's usage: every limit that applies, used, remaining, reset.
    Usage {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// Reset the tenant's counters (all, or one limit's with --limit).
        #[arg(long)]
        reset: bool,
        /// With --reset: only this limit.
        #[arg(long)]
        limit: Option<String>,
    },
    /// The policy in force, through the admin API.
    Policy {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

/// How to reach the admin API.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin API's address.
    #[arg(long, env = "SLUICE_ADMIN_URL", default_value = "http://127.0.0.1:8090", global = true)]
    pub admin_url: String,
    /// The admin token.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `sluice tenants …`
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// List tenants.
    List,
    /// Show a tenant and its keys.
    Get {
        /// The tenant id.
        id: String,
    },
    /// Create a tenant.
    Create {
        /// The tenant id.
        id: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// The tier (default: the policy's default).
        #[arg(long)]
        tier: Option<String>,
        /// Environment: production, sandbox, demo, trial, …
        #[arg(long)]
        environment: Option<String>,
        /// A group (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A label, `key=value` (repeat for several).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// IANA time zone of its calendar windows.
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Change a tenant's tier, environment or groups.
    Set {
        /// The tenant id.
        id: String,
        /// The new tier (e.g. after a payment method was linked).
        #[arg(long)]
        tier: Option<String>,
        /// The new environment.
        #[arg(long)]
        environment: Option<String>,
        /// The new groups, comma-separated (empty: none).
        #[arg(long)]
        groups: Option<String>,
        /// The new time zone.
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Grant a tenant its own amount for a limit (a limit increase).
    Grant {
        /// The tenant id.
        id: String,
        /// The limit's name (see `sluice check-config`).
        limit: String,
        /// The amount granted: a whole number, or for a `cost` limit money in
        /// the policy's currency (`100`, `12.50`).
        amount: serde_json::Number,
        /// When the grant ends (2026-12-31 or an RFC 3339 time).
        #[arg(long)]
        until: Option<String>,
    },
    /// Remove a grant.
    Ungrant {
        /// The tenant id.
        id: String,
        /// The limit's name.
        limit: String,
    },
    /// Delete a tenant and its keys.
    Delete {
        /// The tenant id.
        id: String,
    },
}

/// `sluice policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the policy in force.
    Show,
    /// Read the policy file again (an invalid file is refused).
    Reload,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// `sluice keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new secret key and the hash to put in the policy file.
    Generate {
        /// Print `secret hash` on one line (for scripts).
        #[arg(long)]
        plain: bool,
    },
    /// Print the hash of an existing secret read from standard input.
    Hash,
    /// Create a key for a tenant (admin API); its secret is shown once.
    Create {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// A key id (default: generated).
        #[arg(long)]
        id: Option<String>,
        /// A label, `key=value`, e.g. `channel=apex` (repeat for several).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// When it stops working (2026-12-31 or an RFC 3339 time).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List a tenant's keys (admin API).
    List {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
    },
    /// Revoke a key (admin API): refused at once, on every instance.
    Revoke {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// The key id.
        key: String,
    },
    /// Replace a key by a new one and revoke it (admin API); the new key
    /// keeps the old one's grants.
    Rotate {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// The key id.
        key: String,
    },
    /// Grant a key its own amount of a limit split by key (admin API): it
    /// wins over the tenant's grant of the limit.
    Grant {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// The key id.
        key: String,
        /// The limit's name (a limit with `by = ["key"]`; see `sluice check-config`).
        limit: String,
        /// The amount granted: a whole number, or for a `cost` limit money in
        /// the policy's currency (`100`, `12.50`).
        amount: serde_json::Number,
        /// When the grant ends (2026-12-31 or an RFC 3339 time).
        #[arg(long)]
        until: Option<String>,
    },
    /// Remove a key's grant (admin API).
    Ungrant {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// The tenant.
        tenant: String,
        /// The key id.
        key: String,
        /// The limit's name.
        limit: String,
    },
}
