//! Partitions and full disks (issue 18, item 4), with a real nats-server,
//! the real coordinator and agents (simulated ZFS), streams over the agents'
//! mutual-TLS data plane:
//! - a site cut off from NATS mid-transfer: its connection to the bus goes
//!   through a [`CutProxy`], which drops it and refuses it for a while;
//! - a target pool that fills up: the copy's pool is too small for the
//!   snapshots it is sent; the admin then grows it (in the simulator, a
//!   restart with a larger `size_bytes`, as `zpool add` would).
//!
//! Each expects the alert within one RPO, nothing lost on either side (the
//! copy's snapshots are the source's, by GUID; nothing rolled back), and
//! replication going on by itself once the cause clears.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use zdr_integration::*;

/// A 30 s RPO: "within one RPO" is checked against it.
const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: ssd }
classes:
  fast:
    tiers: { 4s: 8 }
    rpo: 30s
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/db"
    class: fast
"#;
const RPO: Duration = Duration::from_secs(30);

const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    bandwidth: { limit: 4MB/s }
"#;

const DATASET: &str = "tank/db";
const COPY: &str = "backup/node-a1/tank/db";
const TAG: &str = "zdr-repl-offsite";

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &[DATASET],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "ssd",
    datasets: &[],
};

async fn alerts(c: &Coordinator) -> Option<Vec<Value>> {
    let (code, body) = c.get("/api/v1/alerts").await?;
    let v: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
    v["alerts"].as_array().cloned()
}

fn firing(alerts: &[Value], name: &str, label: &str, value: &str) -> bool {
    alerts
        .iter()
        .any(|a| a["alert"]["labels"]["alertname"] == name && a["alert"]["labels"][label] == value)
}

async fn online(c: &Coordinator, node: &str) -> Option<bool> {
    let fleet = c.fleet().await?;
    node_in(&fleet, node)?["online"].as_bool()
}

fn names(agent: &Agent, dataset: &str) -> BTreeSet<String> {
    on_disk(agent, dataset)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect()
}

/// Nothing on the copy was rolled back or received with `-F`.
fn nothing_rolled_back(target: &Agent) {
    let audit = target.audit();
    assert!(
        !audit.iter().any(|r| {
            matches!(r["action"].as_str(), Some("receive -F" | "rollback"))
                && r["target"].as_str().unwrap_or("").starts_with(COPY)
        }),
        "the copy was rolled back: {audit:#?}"
    );
}

/// The copy is faithful (GUIDs, the base held on both sides), checked at a
/// moment when no job lands a snapshot or moves its holds.
async fn faithful_when_quiet(c: &Coordinator, source: &Agent, target: &Agent) {
    wait_for(
        "a quiet moment: the job done, its holds moved",
        Duration::from_secs(60),
        || async {
            let all = jobs(c).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            let newest = on_disk(target, COPY)?.last()?.0.clone();
            let held = on_disk(source, DATASET)?
                .iter()
                .any(|(n, _, tags)| *n == newest && tags.iter().any(|t| t == TAG));
            (j["state"] == "done" && j["moving_holds_to"].is_null() && held).then_some(())
        },
    )
    .await;
    assert_faithful(source, target, DATASET, COPY, TAG);
}

/// Waits until the copy holds a snapshot the source had not taken when
/// `before` was read: replication goes on by itself.
async fn a_newer_snapshot_lands(target: &Agent, before: &BTreeSet<String>) {
    wait_for(
        "a snapshot taken after the fault cleared to land on the copy",
        Duration::from_secs(180),
        || async { names(target, COPY).difference(before).next().map(|_| ()) },
    )
    .await;
}

#[tokio::test]
async fn a_site_cut_off_from_nats_mid_transfer_alerts_within_one_rpo_and_catches_up() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    // Alerts resolve 5 s after their cause clears (default 120 s).
    let coordinator = fleet.coordinator_with("c1", &["--alert-hold-secs".into(), "5".into()]);
    coordinator.wait_ready().await;
    let uplink = CutProxy::start(fleet.nats.port(0)).await;
    let a1 = fleet.agent_with(
        &A1,
        &AgentExtra {
            snapshot_bytes: Some(24_000_000),
            pki: Some(pki.clone()),
            ..AgentExtra::default()
        },
    );
    let b1 = fleet.agent_with(
        &B1,
        &AgentExtra {
            pools: vec![("backup".into(), 10_000_000_000)],
            pki: Some(pki.clone()),
            nats_url: Some(uplink.url()),
            ..AgentExtra::default()
        },
    );

    // A first copy, then an incremental of 24 MB at 4 MB/s under way.
    wait_for(
        "a first copy on node-b1",
        Duration::from_secs(120),
        || async { (!names(&b1, COPY).is_empty()).then_some(()) },
    )
    .await;
    wait_for("a transfer under way", Duration::from_secs(120), || async {
        let all = jobs(&coordinator).await;
        let j = job_for(&all, "offsite", "node-a1")?;
        (j["state"] == "running" && j["bytes"].as_u64()? > 2_000_000).then_some(())
    })
    .await;

    uplink.cut();
    let cut_at = Instant::now();
    let seen = wait_for(
        "node-b1 offline and ZdrAgentOffline firing",
        RPO,
        || async {
            let a = alerts(&coordinator).await?;
            (online(&coordinator, "node-b1").await == Some(false)
                && firing(&a, "ZdrAgentOffline", "node", "node-b1"))
            .then(|| cut_at.elapsed())
        },
    )
    .await;
    eprintln!("cut off: node-b1 offline and alerted {seen:?} after the cut (RPO {RPO:?})");
    // The data plane does not go through the bus: the stream goes on.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let before = names(&a1, DATASET);
    uplink.heal();
    let healed_at = Instant::now();
    wait_for(
        "node-b1 online again, ZdrAgentOffline resolved",
        Duration::from_secs(60),
        || async {
            let a = alerts(&coordinator).await?;
            (online(&coordinator, "node-b1").await == Some(true)
                && !firing(&a, "ZdrAgentOffline", "node", "node-b1"))
            .then_some(())
        },
    )
    .await;
    a_newer_snapshot_lands(&b1, &before).await;
    eprintln!(
        "healed: a snapshot taken after the heal landed {:?} later",
        healed_at.elapsed()
    );

    faithful_when_quiet(&coordinator, &a1, &b1).await;
    nothing_rolled_back(&b1);
    let all = jobs(&coordinator).await;
    let job = job_for(&all, "offsite", "node-a1").expect("the offsite job");
    for line in history(job) {
        eprintln!("    history: {line}");
    }
    assert_ne!(job["state"], "blocked", "{job:#}");
    // Every failure on the way has its reason.
    assert!(
        all.iter()
            .filter(|j| j["state"] == "failed")
            .all(|j| j["error"].as_str().is_some_and(|e| !e.is_empty())),
        "{all:#?}"
    );
}

#[tokio::test]
async fn a_target_pool_that_fills_up_fails_clearly_keeps_the_copy_and_resumes_once_grown() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    // Alerts resolve 5 s after their cause clears (default 120 s).
    let coordinator = fleet.coordinator_with("c1", &["--alert-hold-secs".into(), "5".into()]);
    coordinator.wait_ready().await;
    let a1 = fleet.agent_with(
        &A1,
        &AgentExtra {
            snapshot_bytes: Some(16_000_000),
            pki: Some(pki.clone()),
            ..AgentExtra::default()
        },
    );
    // Room for about three 16 MB snapshots; the class keeps eight.
    let small = AgentExtra {
        pools: vec![("backup".into(), 56_000_000)],
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let mut b1 = fleet.agent_with(&B1, &small);

    let failed = wait_for(
        "a receive refused for space on node-b1's pool backup",
        Duration::from_secs(240),
        || async {
            let all = jobs(&coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            let error = j["error"].as_str()?;
            (error.contains("out of space on pool backup")
                && j["last_success_ms"].as_i64().is_some())
            .then(|| (Instant::now(), j.clone()))
        },
    )
    .await;
    let (failed_at, job) = failed;
    eprintln!(
        "pool full: the job says {:?} (state {})",
        job["error"], job["state"]
    );
    let kept = on_disk(&b1, COPY).expect("the copy");
    assert!(!kept.is_empty(), "the copy lost its snapshots");
    let seen = wait_for(
        "ZdrReplicationFailing and ZdrPoolCapacity for node-b1",
        RPO,
        || async {
            let a = alerts(&coordinator).await?;
            (firing(&a, "ZdrReplicationFailing", "copy", "node-b1")
                && firing(&a, "ZdrPoolCapacity", "node", "node-b1"))
            .then(|| failed_at.elapsed())
        },
    )
    .await;
    eprintln!("pool full: both alerts firing {seen:?} after the failure was seen (RPO {RPO:?})");
    // Nothing lost on the copy while it is full: every snapshot it had, it
    // still has, unless retention destroyed it (audited).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let audit = b1.audit();
    for (name, guid, _) in &kept {
        let target = format!("{COPY}@{name}");
        assert!(
            on_disk(&b1, COPY)
                .unwrap()
                .iter()
                .any(|(n, g, _)| n == name && g == guid)
                || audit.iter().any(|r| r["action"] == "destroy"
                    && r["target"] == target.as_str()
                    && r["outcome"] == "done"),
            "{target} is gone without an audited retention destroy"
        );
    }

    // The admin grows the pool; the agent restarts on the new size.
    let (status, _) = b1.proc.terminate(Duration::from_secs(20));
    assert!(status.is_some(), "node-b1 did not stop on SIGTERM");
    let grown = AgentExtra {
        pools: vec![("backup".into(), 10_000_000_000)],
        ..small
    };
    let before = names(&a1, DATASET);
    b1 = fleet.agent_with(&B1, &grown);
    let grown_at = Instant::now();
    a_newer_snapshot_lands(&b1, &before).await;
    wait_for(
        "ZdrReplicationFailing and ZdrPoolCapacity resolved",
        RPO,
        || async {
            let a = alerts(&coordinator).await?;
            (!firing(&a, "ZdrReplicationFailing", "copy", "node-b1")
                && !firing(&a, "ZdrPoolCapacity", "node", "node-b1"))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "pool grown: a snapshot taken after it landed, alerts resolved, {:?} after the restart",
        grown_at.elapsed()
    );
    faithful_when_quiet(&coordinator, &a1, &b1).await;
    nothing_rolled_back(&b1);
}
