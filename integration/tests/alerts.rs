//! Alerts end to end: a real nats-server, coordinator and two agents
//! (simulated ZFS) replicating across two sites. When the copy's agent
//! stops, the leader's rules fire an agent-offline alert and an RPO breach
//! of the copy, listed by `GET /api/v1/alerts` with stable labels.

use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

/// A 20 s RPO, so that a stopped copy is in breach within the test.
const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: hdd }
classes:
  fast:
    tiers: { 2s: 10 }
    rpo: 20s
    rto: 1h
datasets:
  - match: "tank/db"
    class: fast
"#;

const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db"],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "hdd",
    datasets: &[],
};

async fn alerts(c: &Coordinator) -> Option<Vec<Value>> {
    let (code, body) = c.get("/api/v1/alerts").await?;
    let v: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
    v["alerts"].as_array().cloned()
}

fn find<'a>(alerts: &'a [Value], name: &str, label: &str, value: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["alert"]["labels"]["alertname"] == name && a["alert"]["labels"][label] == value)
}

#[tokio::test]
async fn a_stopped_copy_fires_agent_offline_and_rpo_breach() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let extra = |pools: Vec<(String, u64)>| AgentExtra {
        pools,
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let a1 = fleet.agent_with(&A1, &extra(vec![]));
    let mut b1 = fleet.agent_with(&B1, &extra(vec![("backup".into(), 10_000_000_000)]));

    // Once the copy is current, neither alert is active.
    wait_for(
        "the copy within RPO, no breach alert",
        Duration::from_secs(90),
        || async {
            let a = alerts(&coordinator).await?;
            let quiet = find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").is_none()
                && find(&a, "ZdrAgentOffline", "node", "node-b1").is_none()
                && find(&a, "ZdrAgentOffline", "node", "node-a1").is_none();
            let (_, r) = coordinator.get("/api/v1/report").await?;
            let r: Value = serde_json::from_str(&r).ok()?;
            (quiet && r["datasets"][0]["copies"][1]["rpo"] == "ok").then_some(())
        },
    )
    .await;

    b1.proc.kill();
    let a = wait_for(
        "agent-offline and RPO-breach alerts for node-b1",
        Duration::from_secs(60),
        || async {
            let a = alerts(&coordinator).await?;
            (find(&a, "ZdrAgentOffline", "node", "node-b1").is_some()
                && find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").is_some())
            .then_some(a)
        },
    )
    .await;
    let offline = &find(&a, "ZdrAgentOffline", "node", "node-b1").unwrap()["alert"];
    assert_eq!(
        offline["labels"],
        serde_json::json!({"alertname": "ZdrAgentOffline", "severity": "critical", "node": "node-b1"})
    );
    let summary = offline["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("agent node-b1 has sent nothing for ")
            && summary.ends_with("(offline after 5s)"),
        "{summary}"
    );
    let breach = &find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").unwrap()["alert"];
    assert_eq!(
        breach["labels"],
        serde_json::json!({"alertname": "ZdrCopyRpoBreach", "severity": "critical",
            "node": "node-a1", "dataset": "tank/db", "copy": "node-b1"})
    );
    let summary = breach["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("replica copy (task offsite) of node-a1:tank/db on node-b1 is ")
            && summary.ends_with(" behind its 20s RPO"),
        "{summary}"
    );
    assert_eq!(breach["fingerprint"].as_str().unwrap().len(), 16);
    // Production keeps snapshotting: no alert about its own copy.
    assert!(
        find(&a, "ZdrCopyRpoBreach", "copy", "node-a1").is_none(),
        "{a:#?}"
    );
    assert!(
        find(&a, "ZdrSnapshotScheduleMissed", "node", "node-a1").is_none(),
        "{a:#?}"
    );
    // The coordinator logged the firing alert.
    assert!(
        coordinator
            .proc
            .output()
            .contains("alertname=\"ZdrCopyRpoBreach\"")
            || coordinator
                .proc
                .output()
                .contains("alertname=ZdrCopyRpoBreach"),
        "no alert log line"
    );
    drop(a1);
}
