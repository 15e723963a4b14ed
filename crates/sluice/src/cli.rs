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
    },
    /// API keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
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
}
