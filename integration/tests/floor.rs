//! The retention floor with real processes: commands validly signed with
//! the real coordinator key destroy nothing inside the target's own window,
//! on the node's own datasets and on the copies it received.

use std::time::Duration;

use serde_json::Value;
use zdr_common::wire::{CommandResult, Outcome};
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
classes:
  fast:
    tiers: { 2s: 1 }
    rpo: 10s
    rto: 1h
    immutable_for: 1h
datasets:
  - match: "tank/**"
    class: fast
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db"],
};

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_prune_with_no_window_destroys_nothing_inside_the_floor() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let a1 = f.agent(&A1);
    // The 2 s tier would keep one; the floor keeps every one, held.
    let snaps = wait_for("three snapshots, held", Duration::from_secs(60), || async {
        let snaps = on_disk(&a1, "tank/db")?;
        let held = snaps
            .iter()
            .filter(|(_, _, tags)| tags.iter().any(|t| t == "zdr-floor"))
            .count();
        (snaps.len() >= 3 && held == snaps.len()).then_some(snaps)
    })
    .await;
    let path = "/api/v1/nodes/node-a1/commands";
    let body = r#"{"prune_replica":{"dataset":"tank/db","task":"stolen","tiers":{"2s":1},"immutable_for_secs":0}}"#;
    let (code, reply) = coord
        .post(path, body)
        .await
        .expect("the coordinator answers");
    assert_eq!(code, 200, "{reply}");
    let r: CommandResult = serde_json::from_str(&reply).unwrap();
    assert_eq!(r.outcome, Outcome::Done, "{}", r.message);
    assert!(r.effects.destroyed.is_empty(), "{r:?}");
    let after = on_disk(&a1, "tank/db").unwrap();
    for (name, guid, _) in &snaps {
        assert!(
            after.iter().any(|(n, g, _)| n == name && g == guid),
            "{name} was destroyed: {after:?}"
        );
    }
    assert!(
        a1.audit().iter().all(|r| r["action"] != "destroy"),
        "{:?}",
        a1.audit()
    );
}

/// Two sites; copies under `backup/` are in no class of the policy, so the
/// target takes the copy's class from the rule for its source dataset.
const POLICY_TWO_SITES: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: ssd }
classes:
  fast:
    tiers: { 2s: 1 }
    rpo: 10s
    rto: 1h
    immutable_for: 1h
datasets:
  - match: "backup/**"
    exclude: true
  - match: "tank/**"
    class: fast
"#;

const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    allow_rollback: true
"#;

const COPY: &str = "backup/node-a1/tank/db";

const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "ssd",
    datasets: &[],
};

/// Removes the newest `n` snapshots of `dataset` (and any bookmark of them)
/// from a stopped agent's simulated pools, as a root user on a compromised
/// source would destroy them whatever the holds.
fn destroy_newest(agent: &Agent, dataset: &str, n: usize) -> Vec<String> {
    let path = agent.state_dir.join("sim-pools.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ds = &mut v["datasets"][dataset];
    let snaps = ds["snapshots"].as_array_mut().unwrap();
    let gone: Vec<Value> = snaps.split_off(snaps.len() - n);
    let guids: Vec<&Value> = gone.iter().map(|s| &s["guid"]).collect();
    if let Some(marks) = ds["bookmarks"].as_object_mut() {
        marks.retain(|_, b| !guids.contains(&&b["guid"]));
    }
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    gone.iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_received_copy_is_held_and_its_target_refuses_a_signed_prune_and_rollback() {
    let f = Fleet::start(POLICY_TWO_SITES, Some(TASKS)).await;
    let pki = pki(f.path(), &["node-a1", "node-b1"]);
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let with_pki = AgentExtra {
        pki: Some(pki),
        pools: vec![("backup".into(), 10_000_000_000)],
        ..AgentExtra::default()
    };
    let mut a1 = f.agent_with(&A1, &with_pki);
    let b1 = f.agent_with(&B1, &with_pki);

    // Every received snapshot carries the floor's hold, on the target's own word.
    let copied = wait_for(
        "three received snapshots, each held by the floor",
        Duration::from_secs(90),
        || async {
            let all = jobs(&coord).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            if j["state"] != "done" || !j["moving_holds_to"].is_null() {
                return None;
            }
            let snaps = on_disk(&b1, COPY)?;
            let held = snaps
                .iter()
                .all(|(_, _, tags)| tags.iter().any(|t| t == "zdr-floor"));
            (snaps.len() >= 3 && held).then_some(snaps)
        },
    )
    .await;

    // (a) A prune of the copy asking for no window, validly signed: nothing goes.
    let path = "/api/v1/nodes/node-b1/commands";
    let body = format!(
        r#"{{"prune_replica":{{"dataset":"{COPY}","task":"stolen","tiers":{{"2s":1}},"immutable_for_secs":0}}}}"#
    );
    let (code, reply) = coord
        .post(path, &body)
        .await
        .expect("the coordinator answers");
    assert_eq!(code, 200, "{reply}");
    let r: CommandResult = serde_json::from_str(&reply).unwrap();
    assert!(r.effects.destroyed.is_empty(), "{r:?}");

    // (b) The source loses its two newest snapshots (a compromised source):
    // the plan now rolls the copy back, and the target refuses.
    a1.proc.kill();
    let gone = destroy_newest(&a1, "tank/db", 2);
    a1 = f.agent_with(&A1, &with_pki);
    let blocked = wait_for(
        "the job blocked by the target's floor",
        Duration::from_secs(60),
        || async {
            let all = jobs(&coord).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            (j["state"] == "blocked" && j["floor_refused"].is_array()).then(|| j.clone())
        },
    )
    .await;
    let error = blocked["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "target node-b1 refused: receive -F (rollback) of backup/node-a1/tank/db: "
        ),
        "{error}"
    );
    assert!(
        error.contains("inside its 1h immutability window"),
        "{error}"
    );
    assert!(error.ends_with("(floor)"), "{error}");
    let refused = &blocked["floor_refused"][0];
    assert_eq!(refused["operation"], "receive_force");
    let hit: Vec<String> = refused["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    // What the source lost and the copy had (the newest may not have been copied yet).
    assert!(!hit.is_empty(), "{blocked}");
    assert!(
        hit.iter().all(|h| gone.contains(h)),
        "{hit:?} not in {gone:?}"
    );
    let h = history(&blocked);
    assert!(
        h.iter()
            .any(|l| l.contains("refused for good") && l.contains("(floor)")),
        "{h:#?}"
    );

    // Not retried: three more schedule periods plan nothing new.
    let planned = |h: &[String]| h.iter().filter(|l| l.contains(" planned ")).count();
    let before = planned(&h);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let all = jobs(&coord).await;
    let j = job_for(&all, "offsite", "node-a1").unwrap();
    assert_eq!(j["state"], "blocked", "{j}");
    assert_eq!(planned(&history(j)), before, "{:#?}", history(j));

    // Everything the copy had is still there, audited as refused.
    let after = on_disk(&b1, COPY).unwrap();
    for name in &hit {
        assert!(
            after.iter().any(|(n, _, _)| n == name),
            "{COPY}@{name} is gone"
        );
    }
    for (name, guid, _) in &copied {
        assert!(
            after.iter().any(|(n, g, _)| n == name && g == guid),
            "{COPY}@{name} was destroyed: {after:?}"
        );
    }
    let audit = b1.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "receive -F" && r["outcome"] == "refused"),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .all(|r| r["action"] != "destroy" || r["outcome"] == "refused"),
        "{audit:?}"
    );
    drop(a1);
}
