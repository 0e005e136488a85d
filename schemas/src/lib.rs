//! zdr's spec files: the backup policy (`specs/backup/policies.yaml`), the
//! replication and bucket tasks (`specs/replication/tasks.yml`) and the coordinator's
//! alert receivers (`specs/alerts/receivers.yaml`). Loading reports every
//! problem as `file:line:column: path: message`, and [`jsonschema`] writes the
//! JSON Schemas of both files and of every wire message.
//!
//! Type and key errors stop deserialization at the first one (serde cannot go
//! on past it); syntax and duplicate-key errors, and all semantic problems, are
//! reported together.

pub mod buckets;
mod clock;
mod de;
mod error;
pub mod jsonschema;
mod rate;
pub mod receivers;
pub mod tasks;
mod tree;

use std::path::Path;

use serde::de::DeserializeOwned;
use zdr_common::policy::{Policy, Problem};

pub use clock::{TimeOfDay, Window};
pub use error::{Diagnostic, SpecError};
pub use rate::Rate;
pub use receivers::Receivers;
pub use tasks::Tasks;

use tree::{Pos, Seg, Value};

const POLICY_SHAPE: &str =
    "a mapping with the keys `version`, `sites`, `nodes`, `classes` and `datasets`";
const RECEIVERS_SHAPE: &str = "a mapping with the keys `version` and `receivers`";
const TASKS_SHAPE: &str =
    "a mapping with the keys `version`, `tasks` (the list of tasks goes under `tasks:`) and, optionally, `links` and `buckets`";

pub fn load_policy(path: &Path) -> Result<Policy, SpecError> {
    let (label, text) = read(path)?;
    parse_policy(&label, &text)
}

/// Parses and checks a policy; `file_label` is the name errors start with.
pub fn parse_policy(file_label: &str, text: &str) -> Result<Policy, SpecError> {
    parse_spec(file_label, text, POLICY_SHAPE, Policy::problems)
}

/// What is sound but likely a mistake in a policy that parsed
/// (`Policy::warnings`: rules that never apply), located in its text.
pub fn policy_warnings(file_label: &str, text: &str, policy: &Policy) -> Vec<Diagnostic> {
    let Ok(Some(root)) = tree::parse(text) else {
        return Vec::new();
    };
    let mut found: Vec<Diagnostic> = policy
        .warnings()
        .into_iter()
        .map(|p| {
            let (pos, path) = tree::locate(&root, &p.path);
            Diagnostic {
                file: file_label.to_string(),
                line: pos.line,
                column: pos.column,
                path: tree::render(&path),
                message: p.message,
            }
        })
        .collect();
    found.sort_by_key(|d| (d.line, d.column));
    found
}

pub fn load_tasks(path: &Path, policy: &Policy) -> Result<Tasks, SpecError> {
    let (label, text) = read(path)?;
    parse_tasks(&label, &text, policy)
}

/// Parses and checks replication tasks against the policy they refer to.
pub fn parse_tasks(file_label: &str, text: &str, policy: &Policy) -> Result<Tasks, SpecError> {
    parse_spec(file_label, text, TASKS_SHAPE, |t: &Tasks| {
        t.problems(policy)
    })
}

pub fn load_receivers(path: &Path) -> Result<Receivers, SpecError> {
    let (label, text) = read(path)?;
    parse_receivers(&label, &text)
}

/// Parses and checks an alert receivers file.
pub fn parse_receivers(file_label: &str, text: &str) -> Result<Receivers, SpecError> {
    parse_spec(file_label, text, RECEIVERS_SHAPE, Receivers::problems)
}

fn read(path: &Path) -> Result<(String, String), SpecError> {
    let label = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((label, text)),
        Err(source) => Err(SpecError::Read {
            file: label,
            source,
        }),
    }
}

fn parse_spec<T: DeserializeOwned>(
    file: &str,
    text: &str,
    shape: &str,
    problems: impl FnOnce(&T) -> Vec<Problem>,
) -> Result<T, SpecError> {
    let diagnostic = |pos: Pos, path: &[Seg], message: String| Diagnostic {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        path: tree::render(path),
        message,
    };
    let one = |pos: Pos, message: String| SpecError::Invalid(vec![diagnostic(pos, &[], message)]);
    let root = match tree::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return Err(one(
                Pos::START,
                format!("the file is empty; expected {shape}"),
            ))
        }
        Err(e) => {
            return Err(SpecError::Invalid(vec![diagnostic(
                e.pos, &e.path, e.message,
            )]))
        }
    };
    match &root.value {
        Value::Map(_) => {}
        Value::Seq(_) => {
            return Err(one(
                root.pos,
                format!("the top level is a list; expected {shape}"),
            ))
        }
        Value::Scalar { .. } => {
            return Err(one(
                root.pos,
                format!("the top level is a single value; expected {shape}"),
            ))
        }
    }
    let duplicates = tree::duplicates(&root);
    if !duplicates.is_empty() {
        let found = duplicates
            .into_iter()
            .map(|d| diagnostic(d.pos, &d.path, d.message));
        return Err(invalid(found.collect()));
    }
    let value: T = de::from_root(&root).map_err(|e| {
        let (pos, path) = e.at.unwrap_or((root.pos, Vec::new()));
        SpecError::Invalid(vec![diagnostic(pos, &path, e.message)])
    })?;
    let found: Vec<Diagnostic> = problems(&value)
        .into_iter()
        .map(|p| {
            let (pos, path) = tree::locate(&root, &p.path);
            diagnostic(pos, &path, p.message)
        })
        .collect();
    if found.is_empty() {
        Ok(value)
    } else {
        Err(invalid(found))
    }
}

fn invalid(mut found: Vec<Diagnostic>) -> SpecError {
    found.sort_by_key(|d| (d.line, d.column));
    SpecError::Invalid(found)
}
