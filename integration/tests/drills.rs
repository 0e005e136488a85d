//! Restore drills on the simulated fleet: real nats-server and agent
//! binaries; what exists is read from the agent's pool file, what was
//! destroyed from its audit log.

use std::time::Duration;

use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
classes:
  gold:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/data"
    class: gold
"#;

/// A drill's scratch that is there when the agent starts was left by a
/// drill that never ended (the agent killed mid-drill): the agent destroys
/// it before it serves anything, audited first, and touches nothing else.
#[tokio::test]
async fn scratch_found_at_agent_start_is_destroyed_audited() {
    let fleet = Fleet::start(POLICY, None).await;
    let spec = AgentSpec {
        node: "node-a1",
        site: "site-a",
        media: "ssd",
        // The sim creates these at start, as a crash would have left them.
        datasets: &["tank/data", "tank/zdr-drill", "tank/zdr-drill/n1-17-3"],
    };
    let agent = fleet.agent(&spec);
    let records = wait_for(
        "the scratch's destroy in the audit log",
        Duration::from_secs(20),
        || {
            let records: Vec<(String, String, String)> = agent
                .audit()
                .iter()
                .map(|r| {
                    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                    (s("action"), s("target"), s("outcome"))
                })
                .collect();
            let done = records.iter().any(|(_, _, o)| o == "done");
            async move { done.then_some(records) }
        },
    )
    .await;
    let scratch = "tank/zdr-drill/n1-17-3".to_string();
    assert_eq!(
        records,
        [
            (
                "destroy -r".to_string(),
                scratch.clone(),
                "intent".to_string()
            ),
            (
                "destroy -r".to_string(),
                scratch.clone(),
                "done".to_string()
            ),
        ]
    );
    assert!(on_disk(&agent, &scratch).is_none(), "the scratch is gone");
    assert!(
        on_disk(&agent, "tank/zdr-drill").is_some(),
        "its root stays"
    );
    assert!(on_disk(&agent, "tank/data").is_some(), "the data stays");
}
