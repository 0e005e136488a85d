//! The drill's content check of one snapshot, as the agent runs it
//! (`Backend::content_hash` of the cli backend: a private read-only mount,
//! the BLAKE3 walk, the unmount), for `integration/zfs-vm/bench-restore.sh`.
//!
//!     content_hash DATASET@SNAPSHOT
//!
//! Prints the `ContentHash` as JSON (level, digest, files, bytes, mount_ms,
//! read_ms). Needs root and zfs(8) on PATH.

use std::path::PathBuf;
use std::process::ExitCode;

use zdr_agent::zfs::cli::CliBackend;
use zdr_agent::zfs::Backend;
use zdr_common::DatasetName;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let Some((dataset, snapshot)) = arg.split_once('@') else {
        eprintln!("content_hash: give DATASET@SNAPSHOT, e.g. tank/data@daily-1 (got {arg:?})");
        return ExitCode::from(2);
    };
    let dataset = match DatasetName::parse(dataset) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("content_hash: dataset {dataset:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let backend = CliBackend::new(PathBuf::from("zfs"), PathBuf::from("zpool"));
    match backend.content_hash(&dataset, snapshot) {
        Ok(h) => match serde_json::to_string(&h) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("content_hash: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("content_hash: {arg}: {e}");
            ExitCode::FAILURE
        }
    }
}
