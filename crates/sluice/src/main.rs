//! The `sluice` binary: argument parsing and wiring, nothing more.
#![forbid(unsafe_code)]

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

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
