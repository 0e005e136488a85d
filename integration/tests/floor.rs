//! The retention floor with real processes: a prune validly signed with the
//! real coordinator key, asking for a window of 0 s, destroys nothing inside
//! the target's own window.

use std::time::Duration;

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
