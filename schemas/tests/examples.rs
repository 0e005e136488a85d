//! The example spec files under `specs/` load cleanly and survive a JSON
//! round trip.

use std::path::{Path, PathBuf};

use zdr_common::policy::Policy;
use zdr_schemas::{load_policy, load_tasks, parse_policy, parse_tasks, Tasks};

fn spec(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../specs")
        .join(rel)
}

fn load_pair(policy: &str, tasks: &str) -> (Policy, Tasks) {
    let policy = load_policy(&spec(policy)).unwrap_or_else(|e| panic!("{e}"));
    let tasks = load_tasks(&spec(tasks), &policy).unwrap_or_else(|e| panic!("{e}"));
    (policy, tasks)
}

fn round_trip(policy: &Policy, tasks: &Tasks) {
    let json = serde_json::to_string_pretty(policy).unwrap();
    assert_eq!(&serde_json::from_str::<Policy>(&json).unwrap(), policy);
    assert_eq!(&parse_policy("policy.json", &json).unwrap(), policy);
    let json = serde_json::to_string_pretty(tasks).unwrap();
    assert_eq!(&serde_json::from_str::<Tasks>(&json).unwrap(), tasks);
    assert_eq!(&parse_tasks("tasks.json", &json, policy).unwrap(), tasks);
}

#[test]
fn production_examples_load_and_round_trip() {
    let (policy, tasks) = load_pair("backup/policies.yaml", "replication/tasks.yml");
    assert_eq!(policy.sites.len(), 3);
    assert_eq!(policy.nodes.len(), 6);
    assert_eq!(policy.classes["critical"].rpo.secs(), 30 * 60);
    assert_eq!(policy.classes["critical"].tiers.len(), 4);
    assert_eq!(
        policy.classes["standard"].tiers,
        zdr_common::policy::default_tiers()
    );
    assert!(policy.datasets.iter().any(|r| r.exclude));
    let names: Vec<&str> = tasks.tasks.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"critical-local") && names.contains(&"critical-offsite"),
        "{names:?}"
    );
    round_trip(&policy, &tasks);
}

#[test]
fn demo_examples_load_and_round_trip() {
    let (policy, tasks) = load_pair("demo/policies.yaml", "demo/tasks.yml");
    assert_eq!(
        policy.nodes.keys().collect::<Vec<_>>(),
        ["node-a1", "node-a2", "node-b1"]
    );
    let demo = &policy.classes["demo"];
    assert_eq!(demo.tiers.keys().next().unwrap().0.secs(), 10);
    assert_eq!(demo.immutable_for.secs(), 0);
    assert_eq!(tasks.tasks.len(), 2);
    round_trip(&policy, &tasks);
}
