//! `zdr-coordinator run --check-config`, the unit's `ExecStartPre` and
//! Ansible's `validate:`: it reads the settings the unit passes (ZDR_*
//! variables) and exits 0, or non-zero naming the file at fault.

use std::path::Path;
use std::process::Command;

const POLICY: &str = "version: 1\nsites:\n  a: {}\n  b: {}\nnodes:\n  n1: { site: a, media: ssd }\nclasses:\n  std:\n    rpo: 2h\n    rto: 8h\ndatasets:\n  - match: tank/**\n    class: std\n";

fn check(dir: &Path, policy: &str) -> (bool, String, String) {
    let key = dir.join("signing.key");
    if !key.exists() {
        let st = Command::new(env!("CARGO_BIN_EXE_zdr-coordinator"))
            .arg("keygen")
            .arg(&key)
            .output()
            .unwrap();
        assert!(st.status.success());
    }
    std::fs::write(dir.join("policies.yaml"), policy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zdr-coordinator"))
        .args(["run", "--check-config"])
        .env("ZDR_KEY_FILE", &key)
        .env("ZDR_POLICY", dir.join("policies.yaml"))
        // Nothing listens here: a check connects to nothing.
        .env("ZDR_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_setup_passes_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = check(dir.path(), POLICY);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ok: signing key") && out.contains("(1 nodes)"),
        "{out}"
    );
}

#[test]
fn a_broken_policy_is_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = check(dir.path(), &POLICY.replace("rpo: 2h", "rpo: soon"));
    assert!(!ok);
    assert!(err.contains("policies.yaml:9:10: classes.std.rpo"), "{err}");
}
