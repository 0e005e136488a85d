//! NATS micro services on a real nats-server with the fleet's authorization:
//! every agent registers as `zdr-agent` and the coordinator as
//! `zdr-coordinator`; `$SRV.PING` and `$SRV.INFO.zdr-agent` (what `nats micro
//! ls` and `info` send) find them all, their endpoints answer, and an agent
//! cannot listen on another agent's endpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: hdd }
classes:
  fast:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
datasets:
  - match: "tank/db"
    class: fast
"#;

/// Sends `subject` with a reply inbox and collects every answer for `wait`,
/// as `nats micro ls` does.
async fn gather(client: &async_nats::Client, subject: &str, wait: Duration) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    out
}

fn names(replies: &[Value], key: &str) -> BTreeSet<String> {
    replies
        .iter()
        .map(|r| r["metadata"][key].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn agents_and_the_coordinator_answer_service_discovery_under_authorization() {
    let fleet = Fleet::start(POLICY, None).await;
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let _a1 = fleet.agent(&AgentSpec {
        node: "node-a1",
        site: "site-a",
        media: "ssd",
        datasets: &["tank/db"],
    });
    let _b1 = fleet.agent(&AgentSpec {
        node: "node-b1",
        site: "site-b",
        media: "hdd",
        datasets: &[],
    });
    let (admin, _) = fleet.nats.connect_as(BusUser::Admin).await.unwrap();

    // `nats micro ls`: a PING to every service.
    let pings = wait_for(
        "both agents and the coordinator to answer $SRV.PING",
        Duration::from_secs(30),
        || async {
            let p = gather(&admin, "$SRV.PING", Duration::from_millis(500)).await;
            (p.len() == 3).then_some(p)
        },
    )
    .await;
    let mut by_name: Vec<(String, String)> = pings
        .iter()
        .map(|p| {
            assert_eq!(p["type"], "io.nats.micro.v1.ping_response", "{p}");
            assert_eq!(p["version"], env!("CARGO_PKG_VERSION"), "{p}");
            (
                p["name"].as_str().unwrap().to_string(),
                p["metadata"]["node"]
                    .as_str()
                    .or(p["metadata"]["instance"].as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    by_name.sort();
    assert_eq!(
        by_name,
        [
            ("zdr-agent".to_string(), "node-a1".to_string()),
            ("zdr-agent".to_string(), "node-b1".to_string()),
            ("zdr-coordinator".to_string(), "c1".to_string()),
        ]
    );

    // `nats micro info zdr-agent`: every agent, its metadata and endpoint.
    let infos = gather(&admin, "$SRV.INFO.zdr-agent", Duration::from_secs(1)).await;
    assert_eq!(
        names(&infos, "node"),
        BTreeSet::from(["node-a1".to_string(), "node-b1".to_string()])
    );
    assert_eq!(
        names(&infos, "site"),
        BTreeSet::from(["site-a".to_string(), "site-b".to_string()])
    );
    for i in &infos {
        let node = i["metadata"]["node"].as_str().unwrap();
        assert_eq!(i["type"], "io.nats.micro.v1.info_response");
        assert_eq!(
            i["endpoints"][0]["subject"],
            format!("zdr.v1.srv.agent.{node}.status"),
            "{i}"
        );
    }

    // The endpoints answer from live state.
    let status: Value = wait_for(
        "node-a1's status with its dataset",
        Duration::from_secs(30),
        || async {
            let m = admin
                .request("zdr.v1.srv.agent.node-a1.status", "".into())
                .await
                .ok()?;
            let v: Value = serde_json::from_slice(&m.payload).ok()?;
            (v["protected"] == 1).then_some(v)
        },
    )
    .await;
    assert_eq!(status["node"], "node-a1");
    assert_eq!(status["site"], "site-a");
    assert_eq!(status["backend"], "sim");
    assert!(status["policy_revision"].is_u64(), "{status}");
    let health = admin
        .request("zdr.v1.srv.coordinator.health", "".into())
        .await
        .unwrap();
    let health: Value = serde_json::from_slice(&health.payload).unwrap();
    assert_eq!(health["instance"], "c1");
    assert_eq!(health["leader"], true);
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(health["nodes"], 2, "{health}");

    // `nats micro stats`: the endpoint counted the requests.
    let stats = gather(
        &admin,
        "$SRV.STATS.zdr-coordinator",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(stats.len(), 1);
    assert!(stats[0]["endpoints"][0]["num_requests"].as_u64().unwrap() >= 1);

    // An agent may not listen on another agent's endpoint.
    let (as_a1, mut errors) = fleet
        .nats
        .connect_as(BusUser::Agent("node-a1"))
        .await
        .unwrap();
    let _sub = as_a1
        .subscribe("zdr.v1.srv.agent.node-b1.status")
        .await
        .unwrap();
    as_a1.flush().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("a permissions violation")
        .unwrap();
    assert!(
        err.to_lowercase().contains("permissions violation"),
        "{err}"
    );
}
