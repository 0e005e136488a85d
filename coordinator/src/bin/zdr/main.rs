//! `zdr`, the operator CLI. It talks to the coordinator's HTTP API only:
//! human output by default, the API's JSON with `--json`.

mod api;
mod args;
mod client;
mod commands;
mod render;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = args::Cli::parse();
    commands::run(&cli)?;
    Ok(())
}
