//! `zdr`, the operator CLI. It talks to the coordinator's HTTP API only:
//! human output by default, the API's JSON with `--json`.

mod api;
mod args;
mod client;
mod commands;
mod drill;
mod plan;
mod policy_check;
mod render;
mod report;
mod runbook;

use std::process::ExitCode;

use clap::Parser;

/// The error alone, as a sentence: no backtrace, even with RUST_BACKTRACE
/// set, as these are answers for operators, not bugs.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zdr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = args::Cli::parse();
    commands::run(&cli)?;
    Ok(())
}
