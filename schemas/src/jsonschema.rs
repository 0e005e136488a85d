//! JSON Schemas of the spec files and every wire message, committed under
//! `schemas/json/` so that editors can validate spec files and other
//! implementations can check what they send.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::{schema_for, JsonSchema, Schema};
use serde_json::Value;
use zdr_common::policy::Policy;
use zdr_common::wire;

use crate::tasks::Tasks;

/// Where the committed schemas live in the source tree.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("json")
}

fn render<T: JsonSchema>() -> String {
    render_schema(schema_for!(T))
}

/// Pretty JSON with sorted keys and a trailing newline. Sorting keeps the
/// output the same if a crate in the build turns on serde_json's
/// `preserve_order`.
fn render_schema(schema: Schema) -> String {
    let sorted = sort_keys(schema.to_value());
    let mut text = serde_json::to_string_pretty(&sorted).expect("a JSON value serializes");
    text.push('\n');
    text
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// Every schema file, as a path relative to the schema directory and its text.
pub fn generate() -> Vec<(PathBuf, String)> {
    let wire =
        |name: &str, text: String| (Path::new("wire").join(format!("{name}.schema.json")), text);
    vec![
        (PathBuf::from("policy.schema.json"), render::<Policy>()),
        (PathBuf::from("tasks.schema.json"), render::<Tasks>()),
        wire("hello", render::<wire::Hello>()),
        wire("heartbeat", render::<wire::Heartbeat>()),
        wire("inventory_chunk", render::<wire::InventoryChunk>()),
        wire("inventory_delta", render::<wire::InventoryDelta>()),
        wire("policy_bundle", render::<wire::PolicyBundle>()),
        wire("command", render::<wire::Command>()),
        wire("command_result", render::<wire::CommandResult>()),
        wire("event", render::<wire::Event>()),
        wire("job_update", render::<wire::JobUpdate>()),
    ]
}

/// Writes every schema under `dir` and removes schema files that are no
/// longer generated.
pub fn write(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let generated = generate();
    for (rel, text) in &generated {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
    }
    for stale in existing(dir)?
        .into_iter()
        .filter(|p| !generated.iter().any(|(rel, _)| rel == p))
    {
        std::fs::remove_file(dir.join(stale))?;
    }
    Ok(generated
        .into_iter()
        .map(|(rel, _)| dir.join(rel))
        .collect())
}

/// A committed schema file that does not match the types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Missing(PathBuf),
    Differs(PathBuf),
    /// A schema file for a type that is no longer generated.
    Stale(PathBuf),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing(p) => write!(f, "{}: missing", p.display()),
            Drift::Differs(p) => write!(f, "{}: differs from the types", p.display()),
            Drift::Stale(p) => write!(f, "{}: no longer generated", p.display()),
        }
    }
}

/// Compares the files under `dir` with what the types generate now.
pub fn check(dir: &Path) -> std::io::Result<Vec<Drift>> {
    let generated = generate();
    let mut drift = Vec::new();
    for (rel, text) in &generated {
        let path = dir.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == *text => {}
            Ok(_) => drift.push(Drift::Differs(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => drift.push(Drift::Missing(path)),
            Err(e) => return Err(e),
        }
    }
    for stale in existing(dir)?
        .into_iter()
        .filter(|p| !generated.iter().any(|(rel, _)| rel == p))
    {
        drift.push(Drift::Stale(dir.join(stale)));
    }
    Ok(drift)
}

/// `*.schema.json` files under `dir` and `dir/wire`, relative to `dir`.
fn existing(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for sub in [Path::new(""), Path::new("wire")] {
        let entries = match std::fs::read_dir(dir.join(sub)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let name = entry?.file_name();
            if name.to_string_lossy().ends_with(".schema.json") {
                out.push(sub.join(name));
            }
        }
    }
    out.sort();
    Ok(out)
}
