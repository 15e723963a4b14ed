//! Command-line arguments (and nothing else).

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
    /// Validate a policy file and print its effective limits per tier and model.
    CheckConfig {
        /// The policy file (TOML).
        file: PathBuf,
        /// Only validate; print nothing on success.
        #[arg(long, short)]
        quiet: bool,
    },
}
