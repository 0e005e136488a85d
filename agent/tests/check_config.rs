//! `zdr-agent --check-config`, the unit's `ExecStartPre` and Ansible's
//! `validate:`: exit 0 on a good config, else non-zero with the file, line and
//! column, before anything starts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

fn config(dir: &Path, extra: &str) -> String {
    format!(
        "node = \"n1\"\nsite = \"a\"\nmedia = \"ssd\"\nstate_dir = \"{}\"\n{extra}\n[backend]\nkind = \"cli\"\n\n[[trusted_keys]]\nkid = \"coordinator\"\npublic_key = \"{KEY}\"\n",
        dir.join("state").display()
    )
}

/// Runs the check on `text`; exit success, stdout and stderr.
fn check(dir: &Path, text: &str) -> (bool, String, String) {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zdr-agent"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_config_passes_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = check(dir.path(), &config(dir.path(), ""));
    assert!(ok, "{err}");
    assert!(
        out.contains("agent.toml: ok (node n1, site a, backend cli)"),
        "{out}"
    );
    // No state dir made, no audit log opened: a check only reads.
    assert!(!dir.path().join("state").exists());
}

#[test]
fn a_typo_is_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "").replace("media = \"ssd\"", "media = \"ssd\"\nmedai = 1");
    let (ok, _, err) = check(dir.path(), &text);
    assert!(!ok);
    assert!(
        err.contains("agent.toml:4:1: unknown field `medai`"),
        "{err}"
    );
}

#[test]
fn a_credential_others_can_read_and_a_missing_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("agent.nk");
    std::fs::write(&seed, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = config(
        dir.path(),
        &format!("nats_nkey = {:?}\n", seed.display().to_string()),
    );
    let (ok, _, err) = check(dir.path(), &text);
    assert!(!ok);
    assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = dir.path().join("n1.pem");
    let text = format!(
        "{}\n[transfer]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        text,
        missing.display().to_string(),
        missing.display().to_string(),
        missing.display().to_string()
    );
    let (ok, _, err) = check(dir.path(), &text);
    assert!(!ok);
    assert!(
        err.contains("[transfer]") && err.contains(&missing.display().to_string()),
        "{err}"
    );
}
