//! `zdr policy check`, the built binary: offline (no coordinator listens),
//! exit 0 for the shipped spec files, 1 with errors or, under --strict,
//! warnings, and `/dev/zero` refused at once rather than read.

use std::path::Path;
use std::process::{Command, Output};

fn zdr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zdr"))
        .args(args)
        // Nothing listens here: the check must not ask.
        .env("ZDR_COORDINATOR", "http://127.0.0.1:1")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_shipped_specs_pass() {
    let out = zdr(&[
        "policy",
        "check",
        "specs/backup/policies.yaml",
        "specs/replication/tasks.yml",
        "specs/alerts/receivers.yaml",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "specs/backup/policies.yaml (policy): ok\nspecs/replication/tasks.yml (tasks): ok\n\
         specs/alerts/receivers.yaml (receivers): ok\n"
    );
}

#[test]
fn dev_zero_is_refused_unread() {
    let out = zdr(&["policy", "check", "policy=/dev/zero"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stdout).contains(
        "/dev/zero: larger than 4 MiB, so not a spec file (those are a few KiB); check the path"
    ));
    assert_eq!(text(&out.stderr), "zdr: 1 error and 0 warnings\n");
}

#[test]
fn warnings_pass_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "version: 1\nsites:\n  a: {}\nnodes:\n  n1: { site: a, media: ssd }\nclasses:\n  std:\n    \
         rpo: 2h\n    rto: 8h\n    copies: { total: 1, media: 1, offsite: 0 }\ndatasets:\n  - match: tank/**\n    class: std\n  \
         - match: tank/db/*\n    class: std\n",
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let out = zdr(&["policy", "check", p]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("(policy): ok, 1 warning\n"), "{stdout}");
    assert!(
        stdout.contains(":14:12: datasets[1].match: this rule never applies"),
        "{stdout}"
    );
    let strict = zdr(&["policy", "check", "--strict", p]);
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
    assert_eq!(
        text(&strict.stderr),
        "zdr: 0 errors and 1 warning (--strict: warnings fail)\n"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&zdr(&["--json", "policy", "check", p]).stdout).unwrap();
    assert_eq!(json["warnings"], 1);
    assert_eq!(json["files"][0]["warnings"][0]["line"], 14);
}
