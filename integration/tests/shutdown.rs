//! SIGTERM, as systemd stops a service, at the moments that matter: in the
//! middle of a prune pass, when idle, and in the middle of a transfer. Real
//! nats-server, coordinator and agents (simulated ZFS); what was destroyed is
//! read from the agent's pool file, not from what it says.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: ssd }
classes:
  fast:
    tiers: { 2s: 1 }
    rpo: 1m
    rto: 1h
    immutable_for: 0s
  slow:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/big"
    class: slow
  - match: "tank/**"
    class: fast
"#;

/// One big dataset to the other site, slow enough to cut mid-stream.
const TASKS_BIG: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/big", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    bandwidth: { limit: 4MB/s }
"#;

/// How long an agent may take to stop when nothing is under way.
const IDLE_EXIT: Duration = Duration::from_secs(5);

/// Destroys in an agent's audit log: target → outcomes, in order.
fn destroys(agent: &Agent) -> Vec<(String, String)> {
    agent
        .audit()
        .iter()
        .filter(|r| r["action"] == "destroy")
        .map(|r| {
            (
                r["target"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sigterm_mid_prune_pass_finishes_the_pass_and_exits_0() {
    let fleet = Fleet::start(POLICY, None).await;
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let names: Vec<String> = (0..20).map(|i| format!("tank/d{i:02}")).collect();
    let datasets: Vec<&str> = names.iter().map(String::as_str).collect();
    let spec = AgentSpec {
        node: "node-a1",
        site: "site-a",
        media: "ssd",
        datasets: &datasets,
    };
    // 150 ms per ZFS operation: a prune pass over 20 datasets (a destroy and
    // a relisting each) takes about 6 s, so a signal can land inside it.
    let mut a1 = fleet.agent_with(
        &spec,
        &AgentExtra {
            op_latency_ms: Some(150),
            ..AgentExtra::default()
        },
    );
    let before = wait_for(
        "the first prune pass to start",
        Duration::from_secs(120),
        || async {
            let d = destroys(&a1);
            (!d.is_empty()).then_some(d)
        },
    )
    .await;
    let (status, took) = a1.proc.terminate(Duration::from_secs(60));
    eprintln!("SIGTERM mid prune pass: exited in {took:?} ({status:?})");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGTERM"
    );

    let after = destroys(&a1);
    eprintln!(
        "audited destroy records: {} at the signal, {} at the exit",
        before.len(),
        after.len()
    );
    // The pass went on after the signal: it did not stop between two destroys.
    assert!(
        after.len() > before.len(),
        "no destroy after the signal: the pass was not under way ({before:?})"
    );
    // Only the pass under way went on: its records carry its time.
    let pass_at = |r: &Value| r["at"].as_i64();
    let audit: Vec<Value> = a1
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "destroy")
        .collect();
    let under_way = pass_at(&audit[before.len() - 1]);
    for r in &audit[before.len()..] {
        assert_eq!(
            pass_at(r),
            under_way,
            "a destroy of a later pass after the signal: {r}"
        );
    }
    // Every audited intent was carried out, and the pool agrees.
    let intents: BTreeSet<&str> = after
        .iter()
        .filter(|(_, o)| o == "intent")
        .map(|(t, _)| t.as_str())
        .collect();
    let done: BTreeSet<&str> = after
        .iter()
        .filter(|(_, o)| o == "done")
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(intents, done, "intents without their outcome: {after:#?}");
    // Snapshots (`@`); bookmarks (`#`) are not in the snapshot listing.
    for target in done.iter().filter(|t| t.contains('@')) {
        let (ds, snap) = target.split_once('@').unwrap();
        let on_pool = on_disk(&a1, ds).expect("the dataset in the pool file");
        assert!(
            on_pool.iter().all(|(n, _, _)| n != snap),
            "{target} audited as destroyed but still in the pool"
        );
    }
    // The last pass reached every dataset: each keeps one snapshot of ours.
    for ds in &names {
        let ours = on_disk(&a1, ds)
            .unwrap()
            .iter()
            .filter(|(n, _, _)| n.starts_with("zdr_"))
            .count();
        assert_eq!(ours, 1, "{ds} was left unpruned with {ours} snapshots");
    }
}

#[tokio::test]
async fn sigterm_to_an_idle_agent_exits_0_at_once() {
    let mut fleet = Fleet::start(POLICY, None).await;
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let mut a1 = fleet.agent(&AgentSpec {
        node: "node-a1",
        site: "site-a",
        media: "ssd",
        datasets: &["tank/db"],
    });
    wait_for(
        "the agent's inventory at the coordinator",
        Duration::from_secs(60),
        || async {
            let v = coordinator.fleet().await?;
            snapshots_in(&v, "node-a1", "tank/db").filter(|s| !s.is_empty())
        },
    )
    .await;
    let (status, took) = a1.proc.terminate(Duration::from_secs(30));
    eprintln!("SIGTERM idle: exited in {took:?} ({status:?})");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGTERM"
    );
    assert!(took < IDLE_EXIT, "an idle agent took {took:?} to stop");

    // Also when NATS is not there: the connect loop stops too.
    drop(coordinator);
    fleet.nats.stop();
    let mut b1 = fleet.agent(&AgentSpec {
        node: "node-b1",
        site: "site-b",
        media: "ssd",
        datasets: &["tank/db"],
    });
    wait_for(
        "the agent without NATS to start its passes",
        Duration::from_secs(30),
        || async { b1.proc.output().contains("agent starting").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, took) = b1.proc.terminate(Duration::from_secs(30));
    eprintln!("SIGTERM idle without NATS: exited in {took:?} ({status:?})");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGTERM"
    );
    assert!(
        took < IDLE_EXIT,
        "an agent without NATS took {took:?} to stop"
    );
}

#[tokio::test]
async fn sigterm_mid_transfer_exits_0_and_the_job_resumes_after_restart() {
    let fleet = Fleet::start(POLICY, Some(TASKS_BIG)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let agent = |node: &'static str, site: &'static str| {
        fleet.agent_with(
            &AgentSpec {
                node,
                site,
                media: "ssd",
                datasets: &["tank/big"],
            },
            &AgentExtra {
                pools: vec![("backup".into(), 10_000_000_000)],
                // 24 MB per snapshot at 4 MB/s: about 6 s per stream.
                snapshot_bytes: Some(24_000_000),
                pki: Some(pki.clone()),
                ..AgentExtra::default()
            },
        )
    };
    let mut a1 = agent("node-a1", "site-a");
    let b1 = agent("node-b1", "site-b");
    let copy = "backup/node-a1/tank/big";
    // Past the target's first saved progress (every 4 MiB in the sim).
    wait_for(
        "the stream to be under way",
        Duration::from_secs(90),
        || async {
            let all = jobs(&coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            (j["state"] == "running" && j["bytes"].as_u64()? > 9_000_000).then_some(())
        },
    )
    .await;
    let (status, took) = a1.proc.terminate(Duration::from_secs(60));
    eprintln!("SIGTERM mid transfer: exited in {took:?} ({status:?})");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_secs(15),
        "the source took {took:?} to stop its transfer"
    );
    let cut = Instant::now();
    wait_for(
        "the target to save the partial receive",
        Duration::from_secs(30),
        || async { partial_on_disk(&b1, copy).then_some(()) },
    )
    .await;
    eprintln!("partial receive saved {:?} after the exit", cut.elapsed());

    let a1_again = agent("node-a1", "site-a");
    let job: Value = wait_for(
        "the job to finish after the restart",
        Duration::from_secs(120),
        || async {
            let all = jobs(&coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            (j["state"] == "done").then(|| j.clone())
        },
    )
    .await;
    let history = history(&job);
    assert!(
        history
            .iter()
            .any(|l| l.contains("resuming the saved partial receive")),
        "the attempt after the restart did not resume: {history:#?}"
    );
    let resumed_bytes = job["bytes"].as_u64().unwrap();
    assert!(
        resumed_bytes < 20_000_000,
        "the resume sent {resumed_bytes} bytes, as much as a new stream"
    );
    assert!(
        !partial_on_disk(&b1, copy),
        "the partial receive is still there"
    );
    assert_faithful(&a1_again, &b1, "tank/big", copy, "zdr-repl-offsite");
}
