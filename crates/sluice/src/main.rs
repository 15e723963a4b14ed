//! The `sluice` binary: argument parsing and wiring, nothing more.
#![forbid(unsafe_code)]

mod admin_cli;
mod cli;
mod history;
mod serve;

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, KeysCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file, quiet } => check_config(&file, quiet),
        Command::Serve { config, listen, mock_controls } => {
            serve::run(&config, listen, mock_controls)
        }
        Command::MockUpstream { listen, latency_ms, chunk_delay_ms, tokens, controls } => {
            serve::mock_upstream(listen, latency_ms, chunk_delay_ms, tokens, controls)
        }
        Command::Keys { command: KeysCommand::Generate { plain } } => keys_generate(plain),
        Command::Tenants { admin, command } => admin_cli::tenants(&admin, command),
        Command::Usage { admin, tenant, reset, limit } => {
            admin_cli::usage(&admin, &tenant, reset, limit.as_deref())
        }
        Command::Policy { admin, command } => admin_cli::policy(&admin, &command),
        Command::Keys { command: KeysCommand::Hash } => {
            let mut secret = String::new();
            std::io::stdin().read_to_string(&mut secret)?;
            let secret = secret.trim();
            anyhow::ensure!(!secret.is_empty(), "give the secret on standard input");
            writeln!(std::io::stdout(), "{}", sluice_served::auth::hash_text(secret))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => admin_cli::keys(command),
    }
}

fn check_config(file: &std::path::Path, quiet: bool) -> anyhow::Result<ExitCode> {
    match sluice_config::load(file) {
        Ok(config) => {
            if !quiet {
                let mut out = std::io::stdout().lock();
                out.write_all(sluice_config::report::effective_limits(&config).as_bytes())?;
                writeln!(out, "\n{}: ok", file.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{errors}")?;
            writeln!(
                err,
                "{}: {} problem(s); the policy was not loaded",
                file.display(),
                errors.0.len()
            )?;
            Ok(ExitCode::from(2))
        }
    }
}

/// A new key: `sk-sluice-` and 48 hex digits of the operating system's
/// randomness (192 bits).
fn keys_generate(plain: bool) -> anyhow::Result<ExitCode> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = format!("sk-sluice-{}", hex::encode(bytes));
    let hash = sluice_served::auth::hash_text(&secret);
    let mut out = std::io::stdout().lock();
    if plain {
        writeln!(out, "{secret} {hash}")?;
    } else {
        writeln!(out, "secret: {secret}")?;
        writeln!(out, "hash:   {hash}")?;
        writeln!(out)?;
        writeln!(out, "Give the secret to the client; it is shown only now. Put the hash in the")?;
        writeln!(out, "policy file under the tenant:")?;
        writeln!(out)?;
        writeln!(out, "[[tenants.<tenant>.keys]]")?;
        writeln!(out, "id = \"<a name for this key>\"")?;
        writeln!(out, "hash = \"{hash}\"")?;
    }
    Ok(ExitCode::SUCCESS)
}
