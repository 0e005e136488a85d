//! A failed zfs(8) call, mapped from its exit status and stderr to a
//! [`ZfsError`]. OpenZFS's messages are matched in English (the commands run
//! with `LC_ALL=C`).

use zdr_common::DatasetName;

use crate::zfs::{SendSpec, ZfsError};

pub(super) fn send_error(f: Failure, spec: &SendSpec) -> ZfsError {
    let what = |stderr: &str| quoted(stderr).map_or_else(|| "snapshot".into(), str::to_string);
    if classify(&f.stderr).is_none() && f.stderr.contains("does not exist") {
        return ZfsError::NotFound {
            what: what(&f.stderr),
        };
    }
    f.into_error(send_pool(spec), |_, stderr| what(stderr))
}

fn send_pool(spec: &SendSpec) -> &str {
    match spec {
        SendSpec::Full { dataset, .. } | SendSpec::Incremental { dataset, .. } => dataset.pool(),
        SendSpec::Resume { .. } => "",
    }
}

/// zfs receive's refusals, before the generic classification.
pub(super) fn receive_error(f: Failure, target: &DatasetName) -> ZfsError {
    const INCOMPLETE: [&str; 3] = [
        "incomplete stream",
        "Partially received snapshot is saved",
        "checksum mismatch",
    ];
    const DIVERGED: [&str; 6] = [
        "does not match incremental source",
        "has been modified",
        "destination has snapshots",
        "must specify -F",
        "destination already exists",
        "local origin for clone",
    ];
    // libzfs wraps some of these messages over lines.
    let s = &f.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    if INCOMPLETE.iter().any(|p| s.contains(p)) {
        return ZfsError::Incomplete {
            target: target.to_string(),
            detail: f.stderr,
        };
    }
    if DIVERGED.iter().any(|p| s.contains(p)) {
        return ZfsError::Diverged {
            target: target.to_string(),
            detail: f.stderr,
        };
    }
    if s.contains("partially-complete state") {
        return ZfsError::Busy {
            what: format!("dataset {target}"),
            detail: f.stderr,
        };
    }
    if s.contains("does not exist") {
        return ZfsError::NotFound {
            what: quoted(s).map_or_else(|| format!("dataset {target}"), str::to_string),
        };
    }
    f.into_error(target.pool(), |_, _| format!("dataset {target}"))
}

/// A command that ran and exited non-zero.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) argv: String,
    pub(super) status: String,
    pub(super) stderr: String,
}

/// The failures callers act on, recognised from OpenZFS's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    NotFound,
    Exists,
    Busy,
    Held,
    NoSpace,
}

pub(super) fn classify(stderr: &str) -> Option<Kind> {
    const PATTERNS: [(&str, Kind); 12] = [
        ("it's being held", Kind::Held),
        ("no such tag on this dataset", Kind::NotFound),
        ("could not find any snapshots to destroy", Kind::NotFound),
        ("dataset does not exist", Kind::NotFound),
        ("no such pool or dataset", Kind::NotFound),
        ("tag already exists", Kind::Exists),
        ("dataset already exists", Kind::Exists),
        ("bookmark exists", Kind::Exists),
        ("pool or dataset is busy", Kind::Busy),
        ("dataset is busy", Kind::Busy),
        ("snapshot is cloned", Kind::Busy),
        ("out of space", Kind::NoSpace),
    ];
    PATTERNS
        .iter()
        .find(|(pattern, _)| stderr.contains(pattern))
        .map(|(_, kind)| *kind)
}

impl Failure {
    /// `what` names the object from the kind of failure and the stderr.
    pub(super) fn into_error(self, pool: &str, what: impl Fn(Kind, &str) -> String) -> ZfsError {
        let Some(kind) = classify(&self.stderr) else {
            return ZfsError::Command {
                argv: self.argv,
                status: self.status,
                stderr: self.stderr,
            };
        };
        let what = what(kind, &self.stderr);
        match kind {
            Kind::NotFound => ZfsError::NotFound { what },
            Kind::Exists => ZfsError::Exists { what },
            Kind::Busy | Kind::Held => ZfsError::Busy {
                what,
                detail: self.stderr,
            },
            Kind::NoSpace => ZfsError::NoSpace {
                pool: pool.to_string(),
            },
        }
    }
}

/// The first '...'-quoted name in a message such as
/// `cannot create snapshot 'tank/a@x': dataset already exists`.
pub(super) fn quoted(stderr: &str) -> Option<&str> {
    let (_, rest) = stderr.split_once('\'')?;
    let (inner, _) = rest.split_once('\'')?;
    Some(inner)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::argv::{render_argv, strings};
    use super::super::tests::ds;
    use super::*;

    #[test]
    fn classifies_receive_refusals() {
        let t = ds("tank/dst");
        let f = |stderr: &str| Failure {
            argv: "zfs receive".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        };
        let cases: [(&str, &str); 7] = [
            ("cannot receive incremental stream: most recent snapshot of tank/dst does not\nmatch incremental source", "Diverged"),
            ("cannot receive new filesystem stream: destination 'tank/dst' exists\nmust specify -F to overwrite it", "Diverged"),
            ("cannot receive new filesystem stream: destination has snapshots (eg. tank/dst@a)\nmust destroy them to overwrite it", "Diverged"),
            ("cannot receive incremental stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.", "Incomplete"),
            ("cannot receive incremental stream: destination 'tank/nope' does not exist", "NotFound"),
            ("cannot receive: destination tank/dst contains partially-complete state from \"zfs receive -s\".", "Busy"),
            ("cannot receive: permission denied", "Command"),
        ];
        for (stderr, want) in cases {
            let got = receive_error(f(stderr), &t);
            let name = format!("{got:?}");
            assert!(name.starts_with(want), "{stderr}: {got:?}");
        }
    }

    #[test]
    fn classifies_openzfs_messages() {
        let cases = [
            ("cannot open 'tank/x': dataset does not exist", Some(Kind::NotFound)),
            ("could not find any snapshots to destroy; check snapshot names.", Some(Kind::NotFound)),
            ("cannot hold snapshot 'tank/a@s': no such pool or dataset", Some(Kind::NotFound)),
            ("cannot release hold from snapshot 'tank/a@s': no such tag on this dataset", Some(Kind::NotFound)),
            ("cannot create snapshot 'tank/a@s': dataset already exists", Some(Kind::Exists)),
            ("cannot hold snapshot 'tank/a@s': tag already exists on this dataset", Some(Kind::Exists)),
            ("cannot create bookmark 'tank/a#b': bookmark exists", Some(Kind::Exists)),
            ("cannot destroy snapshot tank/a@s: dataset is busy", Some(Kind::Busy)),
            ("cannot destroy 'tank/a': pool or dataset is busy", Some(Kind::Busy)),
            (
                "cannot destroy snapshot tank/a@s: it's being held. Run 'zfs holds -r tank/a@s' to see holders.",
                Some(Kind::Held),
            ),
            ("cannot create snapshot 'tank/a@s': out of space", Some(Kind::NoSpace)),
            ("cannot open 'tank/a': permission denied", None),
        ];
        for (stderr, kind) in cases {
            assert_eq!(classify(stderr), kind, "{stderr}");
        }
    }

    #[test]
    fn unknown_failures_keep_a_readable_argv() {
        let f = Failure {
            argv: render_argv(
                Path::new("/sbin/zfs"),
                &strings(&["destroy", "tank/my data@s", "it's"]),
            ),
            status: "exit status: 2".into(),
            stderr: "cannot open 'tank/my data@s': permission denied".into(),
        };
        match f.into_error("tank", |_, _| unreachable!()) {
            ZfsError::Command {
                argv,
                status,
                stderr,
            } => {
                assert_eq!(argv, r"/sbin/zfs destroy 'tank/my data@s' 'it'\''s'");
                assert_eq!(status, "exit status: 2");
                assert!(stderr.contains("permission denied"));
            }
            other => panic!("{other:?}"),
        }
    }
}
