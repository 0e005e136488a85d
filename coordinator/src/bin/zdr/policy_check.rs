//! `zdr policy check FILE...`: the spec files checked offline, with the
//! schemas crate's parsers, so an edit is checked before it is deployed.
//!
//! The rules:
//! - Each file is read with a bound ([`MAX_BYTES`]): `/dev/zero` or a log
//!   given by mistake is refused at once, not read to the end.
//! - A file's kind comes from `KIND=FILE` (`policy=`, `tasks=`,
//!   `receivers=`), else from its top-level keys: `classes`, `datasets`,
//!   `nodes` or `sites` make a policy, `tasks` or `links` a tasks file,
//!   `receivers` a receivers file.
//! - A tasks file is checked against the one policy given with it (its
//!   tasks name the policy's nodes and sites); without a sound policy it
//!   is not checked, and that is an error.
//! - Errors are `file:line:column: path: message`. Warnings (a dataset rule
//!   no dataset can reach, as an earlier rule takes all of them) do not
//!   change the exit code unless `--strict` is given.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use zdr_common::policy::Policy;
use zdr_schemas::{Diagnostic, SpecError};

/// A spec file is a few KiB; anything past this is not one.
pub const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Policy,
    Tasks,
    Receivers,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Tasks => "tasks",
            Kind::Receivers => "receivers",
        }
    }

    fn from_prefix(s: &str) -> Option<Kind> {
        match s {
            "policy" => Some(Kind::Policy),
            "tasks" => Some(Kind::Tasks),
            "receivers" => Some(Kind::Receivers),
            _ => None,
        }
    }
}

/// One argument: its path, and its kind when given as `KIND=FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub path: String,
    pub kind: Option<Kind>,
}

pub fn parse_arg(s: &str) -> Arg {
    match s.split_once('=') {
        Some((k, path)) if Kind::from_prefix(k).is_some() && !path.is_empty() => Arg {
            path: path.to_string(),
            kind: Kind::from_prefix(k),
        },
        _ => Arg {
            path: s.to_string(),
            kind: None,
        },
    }
}

/// A file as read: its text, or why it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub arg: Arg,
    pub text: Result<String, String>,
}

/// One problem, located when it is in the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Where in the document, e.g. `datasets[2].match`; empty for the file.
    pub path: String,
    pub message: String,
}

impl From<&Diagnostic> for Finding {
    fn from(d: &Diagnostic) -> Finding {
        Finding {
            file: d.file.clone(),
            line: Some(d.line),
            column: Some(d.column),
            path: d.path.clone(),
            message: d.message.clone(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileResult {
    pub file: String,
    /// `None` when it could not be told.
    pub kind: Option<Kind>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub files: Vec<FileResult>,
    pub errors: usize,
    pub warnings: usize,
}

impl Outcome {
    /// Exit 1 on any error, and on warnings with `strict`.
    pub fn failed(&self, strict: bool) -> bool {
        self.errors > 0 || (strict && self.warnings > 0)
    }
}

/// The kind from the top-level keys of a block-style YAML mapping.
pub fn detect(text: &str) -> Option<Kind> {
    let mut found = None;
    for line in text.lines() {
        let Some(first) = line.chars().next() else {
            continue;
        };
        if first.is_whitespace() || matches!(first, '#' | '-' | '{' | '[') {
            continue;
        }
        let Some((key, _)) = line.split_once(':') else {
            continue;
        };
        let kind = match key.trim().trim_matches(['"', '\'']) {
            "classes" | "datasets" | "nodes" | "sites" => Kind::Policy,
            "tasks" | "links" => Kind::Tasks,
            "receivers" => Kind::Receivers,
            _ => continue,
        };
        match found {
            None => found = Some(kind),
            Some(k) if k == kind => {}
            Some(_) => return None,
        }
    }
    found
}

fn whole(file: &str, message: String) -> Finding {
    Finding {
        file: file.to_string(),
        line: None,
        column: None,
        path: String::new(),
        message,
    }
}

fn spec_errors(e: &SpecError, file: &str) -> Vec<Finding> {
    match e {
        SpecError::Invalid(d) => d.iter().map(Finding::from).collect(),
        SpecError::Read { .. } => vec![whole(file, e.to_string())],
    }
}

/// Checks every file (pure: the texts come in).
pub fn check(inputs: &[Input]) -> Outcome {
    let kinds: Vec<Option<Kind>> = inputs
        .iter()
        .map(|i| {
            i.arg
                .kind
                .or_else(|| i.text.as_deref().ok().and_then(detect))
        })
        .collect();
    // Policies first: the tasks files are checked against them.
    let mut results: Vec<Option<FileResult>> = vec![None; inputs.len()];
    let mut policies: Vec<(String, Option<Policy>)> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let file = &input.arg.path;
        let mut r = FileResult {
            file: file.clone(),
            kind: kinds[i],
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let text = match &input.text {
            Ok(t) => t,
            Err(why) => {
                r.errors.push(whole(file, why.clone()));
                results[i] = Some(r);
                continue;
            }
        };
        match kinds[i] {
            None => r.errors.push(whole(
                file,
                "cannot tell whether this is a policy, a tasks or a receivers file: no \
                 top-level `classes`, `tasks` or `receivers` key; name it as policy=FILE, \
                 tasks=FILE or receivers=FILE"
                    .into(),
            )),
            Some(Kind::Policy) => match zdr_schemas::parse_policy(file, text) {
                Ok(p) => {
                    r.warnings = zdr_schemas::policy_warnings(file, text, &p)
                        .iter()
                        .map(Finding::from)
                        .collect();
                    policies.push((file.clone(), Some(p)));
                }
                Err(e) => {
                    r.errors = spec_errors(&e, file);
                    policies.push((file.clone(), None));
                }
            },
            Some(Kind::Receivers) => {
                if let Err(e) = zdr_schemas::parse_receivers(file, text) {
                    r.errors = spec_errors(&e, file);
                }
            }
            Some(Kind::Tasks) => continue,
        }
        results[i] = Some(r);
    }
    for (i, input) in inputs.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        let file = &input.arg.path;
        let text = input.text.as_deref().unwrap_or_default();
        let mut r = FileResult {
            file: file.clone(),
            kind: Some(Kind::Tasks),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let against = match policies.as_slice() {
            [] => Err(format!(
                "a tasks file is checked against the policy whose nodes and sites it names; \
                 give the policy file too, e.g. `zdr policy check policies.yaml {file}`"
            )),
            [(_, Some(p))] => Ok(p),
            [(pfile, None)] => Err(format!(
                "not checked: the policy {pfile} it is checked against has errors; fix those first"
            )),
            several => Err(format!(
                "not checked: {} policy files were given ({}); check a tasks file with one",
                several.len(),
                several
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        match against {
            Ok(p) => {
                if let Err(e) = zdr_schemas::parse_tasks(file, text, p) {
                    r.errors = spec_errors(&e, file);
                }
            }
            Err(why) => r.errors.push(whole(file, why)),
        }
        results[i] = Some(r);
    }
    let files: Vec<FileResult> = results.into_iter().flatten().collect();
    Outcome {
        errors: files.iter().map(|f| f.errors.len()).sum(),
        warnings: files.iter().map(|f| f.warnings.len()).sum(),
        files,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The human report: one line per file, then its errors and warnings.
pub fn render(o: &Outcome) -> String {
    let mut out = String::new();
    for f in &o.files {
        let kind = f.kind.map_or("unknown", Kind::as_str);
        let verdict = match (f.errors.len(), f.warnings.len()) {
            (0, 0) => "ok".to_string(),
            (0, w) => format!("ok, {}", plural(w, "warning", "warnings")),
            (e, 0) => plural(e, "error", "errors"),
            (e, w) => format!(
                "{}, {}",
                plural(e, "error", "errors"),
                plural(w, "warning", "warnings")
            ),
        };
        out.push_str(&format!("{} ({kind}): {verdict}\n", f.file));
        for e in &f.errors {
            out.push_str(&format!("  error: {e}\n"));
        }
        for w in &f.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
    }
    out
}

/// Reads at most [`MAX_BYTES`] of a file, as UTF-8.
pub fn read_bounded(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut buf = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(format!(
            "larger than {} MiB, so not a spec file (those are a few KiB); check the path",
            MAX_BYTES >> 20
        ));
    }
    String::from_utf8(buf).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); spec files are UTF-8 YAML",
            e.utf8_error().valid_up_to()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
version: 1
sites:
  a: {}
  b: {}
nodes:
  n1: { site: a, media: ssd }
  n2: { site: b, media: hdd }
classes:
  gold:
    rpo: 1h
    rto: 4h
datasets:
  - match: tank/**
    class: gold
  - match: tank/db
    class: gold
";

    const TASKS: &str = "\
version: 1
tasks:
  - name: offsite
    source: { match: \"tank/**\", nodes: [n1] }
    target: { site: other, root: \"backup/{node}\" }
    schedule: { every: 1h }
";

    fn input(path: &str, text: &str) -> Input {
        Input {
            arg: parse_arg(path),
            text: Ok(text.to_string()),
        }
    }

    #[test]
    fn kinds_come_from_the_prefix_or_the_top_level_keys() {
        assert_eq!(detect(POLICY), Some(Kind::Policy));
        assert_eq!(detect(TASKS), Some(Kind::Tasks));
        assert_eq!(
            detect("version: 1\nreceivers:\n  - name: x\n"),
            Some(Kind::Receivers)
        );
        assert_eq!(detect("# tasks: no\nversion: 1\n"), None);
        // Keys of two kinds: ambiguous.
        assert_eq!(detect("tasks: []\nclasses: {}\n"), None);
        assert_eq!(
            parse_arg("tasks=a=b.yml"),
            Arg {
                path: "a=b.yml".into(),
                kind: Some(Kind::Tasks)
            }
        );
        assert_eq!(parse_arg("x=y.yml").kind, None);
        assert_eq!(parse_arg("x=y.yml").path, "x=y.yml");
    }

    /// The whole human output, as an operator sees it.
    #[test]
    fn golden_human_output() {
        let broken_tasks = TASKS.replace("nodes: [n1]", "nodes: [n9]");
        let o = check(&[
            input("specs/tasks.yml", &broken_tasks),
            input("specs/policies.yaml", POLICY),
            Input {
                arg: parse_arg("/dev/zero"),
                text: Err(
                    "larger than 4 MiB, so not a spec file (those are a few KiB); \
                           check the path"
                        .into(),
                ),
            },
            input("notes.yaml", "hello: world\n"),
        ]);
        let expected = "\
specs/tasks.yml (tasks): 1 error
  error: specs/tasks.yml:4:41: tasks[0].source.nodes[0]: \"n9\" is not a node in the policy; did you mean `n1`?
specs/policies.yaml (policy): ok, 1 warning
  warning: specs/policies.yaml:15:12: datasets[1].match: this rule never applies: rule 0 (match \"tank/**\") matches every dataset \"tank/db\" matches and gives them class \"gold\" first (the first matching rule wins); move this rule above it or remove it
/dev/zero (unknown): 1 error
  error: /dev/zero: larger than 4 MiB, so not a spec file (those are a few KiB); check the path
notes.yaml (unknown): 1 error
  error: notes.yaml: cannot tell whether this is a policy, a tasks or a receivers file: no top-level `classes`, `tasks` or `receivers` key; name it as policy=FILE, tasks=FILE or receivers=FILE
";
        assert_eq!(render(&o), expected);
        assert_eq!((o.errors, o.warnings), (3, 1));
        assert!(o.failed(false));
    }

    #[test]
    fn golden_json_output() {
        let o = check(&[input("p.yaml", POLICY), input("t.yml", TASKS)]);
        let expected = serde_json::json!({
            "files": [
                {"file": "p.yaml", "kind": "policy", "errors": [], "warnings": [{
                    "file": "p.yaml", "line": 15, "column": 12, "path": "datasets[1].match",
                    "message": "this rule never applies: rule 0 (match \"tank/**\") matches every \
                                dataset \"tank/db\" matches and gives them class \"gold\" first \
                                (the first matching rule wins); move this rule above it or remove it"
                }]},
                {"file": "t.yml", "kind": "tasks", "errors": [], "warnings": []}
            ],
            "errors": 0,
            "warnings": 1
        });
        assert_eq!(serde_json::to_value(&o).unwrap(), expected);
        // Warnings alone pass, unless strict.
        assert!(!o.failed(false));
        assert!(o.failed(true));
    }

    #[test]
    fn tasks_need_one_sound_policy() {
        let alone = check(&[input("t.yml", TASKS)]);
        assert!(alone.files[0].errors[0]
            .message
            .contains("give the policy file too, e.g. `zdr policy check policies.yaml t.yml`"));
        let bad = POLICY.replace("rpo: 1h", "rpo: soon");
        let o = check(&[input("p.yaml", &bad), input("t.yml", TASKS)]);
        assert_eq!(o.files[0].errors.len(), 1);
        assert!(o.files[1].errors[0]
            .message
            .contains("the policy p.yaml it is checked against has errors"));
        let two = check(&[
            input("p1.yaml", POLICY),
            input("p2.yaml", POLICY),
            input("tasks=t.txt", TASKS),
        ]);
        assert!(two.files[2].errors[0]
            .message
            .contains("2 policy files were given (p1.yaml, p2.yaml)"));
    }

    #[test]
    fn reading_is_bounded_and_wants_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_BYTES as usize + 1]).unwrap();
        assert!(read_bounded(&big)
            .unwrap_err()
            .starts_with("larger than 4 MiB"));
        let exact = dir.path().join("exact.yaml");
        std::fs::write(&exact, vec![b'#'; MAX_BYTES as usize]).unwrap();
        assert!(read_bounded(&exact).is_ok());
        let bin = dir.path().join("bin.yaml");
        std::fs::write(&bin, b"version: 1\n\xff").unwrap();
        assert_eq!(
            read_bounded(&bin).unwrap_err(),
            "not UTF-8 text (invalid byte at offset 11); spec files are UTF-8 YAML"
        );
        assert!(read_bounded(&dir.path().join("missing"))
            .unwrap_err()
            .starts_with("cannot open it: "));
    }
}
