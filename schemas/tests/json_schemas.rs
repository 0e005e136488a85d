//! The committed JSON Schemas match the types.

use zdr_schemas::jsonschema::{check, default_dir, generate, write, Drift};

#[test]
fn committed_schemas_match_the_types() {
    let drift = check(&default_dir()).unwrap();
    let list: Vec<String> = drift.iter().map(ToString::to_string).collect();
    assert!(
        drift.is_empty(),
        "JSON Schemas are out of date; run `cargo run -p zdr-schemas` and commit schemas/json:\n{}",
        list.join("\n")
    );
}

#[test]
fn check_finds_changed_missing_and_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path()).unwrap();
    assert_eq!(check(dir.path()).unwrap(), []);
    let policy = dir.path().join("policy.schema.json");
    std::fs::write(&policy, "{}\n").unwrap();
    let hello = dir.path().join("wire/hello.schema.json");
    std::fs::remove_file(&hello).unwrap();
    let stale = dir.path().join("wire/goodbye.schema.json");
    std::fs::write(&stale, "{}\n").unwrap();
    assert_eq!(
        check(dir.path()).unwrap(),
        [
            Drift::Differs(policy),
            Drift::Missing(hello),
            Drift::Stale(stale.clone())
        ]
    );
    write(dir.path()).unwrap();
    assert!(!stale.exists());
    assert_eq!(check(dir.path()).unwrap(), []);
}

#[test]
fn output_is_deterministic_and_ends_with_a_newline() {
    let first = generate();
    assert_eq!(first, generate());
    assert_eq!(first.len(), 11);
    for (path, text) in &first {
        assert!(text.ends_with("}\n"), "{}", path.display());
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(value.get("$schema").is_some(), "{}", path.display());
    }
}
