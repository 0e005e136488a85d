//! `zdr-schemas` writes the JSON Schemas under `schemas/json/`;
//! `zdr-schemas --check` lists the files that differ from the types and fails.

use std::process::ExitCode;

use zdr_schemas::jsonschema;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = jsonschema::default_dir();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => match jsonschema::write(&dir) {
            Ok(written) => {
                println!(
                    "wrote {} schema files under {}",
                    written.len(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("zdr-schemas: writing under {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        ["--check"] => match jsonschema::check(&dir) {
            Ok(drift) if drift.is_empty() => ExitCode::SUCCESS,
            Ok(drift) => {
                for d in &drift {
                    eprintln!("{d}");
                }
                eprintln!("JSON Schemas are out of date; run `cargo run -p zdr-schemas` and commit the result");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("zdr-schemas: reading {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: zdr-schemas [--check]");
            ExitCode::from(2)
        }
    }
}
