//! The control plane end to end: real nats-server, real coordinator and agent
//! binaries (simulated ZFS backend).

use std::time::Duration;

use futures::StreamExt;

use zdr_common::envelope::Sealer;
use zdr_common::wire::{CommandResult, Outcome};
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
    tiers: { 2s: 3 }
    rpo: 10s
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/scratch"
    exclude: true
  - match: "tank/**"
    class: fast
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db", "tank/my data", "tank/scratch"],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "hdd",
    datasets: &["tank/db"],
};

fn zdr_snaps(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.starts_with("zdr_"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn inventories_reach_the_coordinator_and_pruning_keeps_exactly_the_tiers() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let mut a1 = f.agent(&A1);
    let _b1 = f.agent(&B1);

    // Both nodes appear with their datasets; the excluded one is unprotected.
    let fleet = wait_for(
        "both nodes with inventories",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            (snapshots_in(&v, "node-a1", "tank/my data").is_some()
                && snapshots_in(&v, "node-b1", "tank/db").is_some())
            .then_some(v)
        },
    )
    .await;
    let a1_view = node_in(&fleet, "node-a1").unwrap();
    assert_eq!(a1_view["site"], "site-a");
    assert_eq!(a1_view["backend"], "sim");
    let scratch = a1_view["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == "tank/scratch")
        .unwrap();
    assert!(
        scratch["class"].is_null(),
        "excluded dataset got a class: {scratch}"
    );

    // Snapshots appear on the 2 s schedule, and once more than 3 were taken the
    // tier keeps exactly the 3 newest.
    let kept = wait_for(
        "pruning down to the tier",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            let snaps = zdr_snaps(&snapshots_in(&v, "node-a1", "tank/db")?);
            let destroyed = a1.audit().iter().filter(|r| r["outcome"] == "done").count();
            (destroyed >= 3 && snaps.len() == 3).then_some(snaps)
        },
    )
    .await;
    let mut sorted = kept.clone();
    sorted.sort();
    assert_eq!(kept, sorted, "kept snapshots out of createtxg order");

    // RPO status is computed per dataset.
    let v = coord.fleet().await.unwrap();
    let db = node_in(&v, "node-a1").unwrap()["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == "tank/db")
        .unwrap()
        .clone();
    assert_eq!(db["class"], "fast");
    assert_eq!(db["rpo_secs"], 10);
    assert_eq!(db["rpo_met"], true, "{db}");

    let (code, metrics) = coord.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("zdr_nodes_online"), "{metrics}");

    // Stopped between passes, the pool holds exactly the tier: the 3 newest.
    a1.proc.interrupt();
    let on_disk = sim_snapshots(&a1, "tank/db");
    let ours: Vec<&String> = on_disk.iter().filter(|n| n.starts_with("zdr_")).collect();
    assert_eq!(ours.len(), 3, "pool holds {on_disk:?}");

    // The audit log shows intent before each destroy, with who and why, and
    // only ever older snapshots than those kept were destroyed.
    let audit = a1.audit();
    let first = &audit[0];
    assert_eq!(first["action"], "destroy");
    assert_eq!(first["outcome"], "intent");
    assert_eq!(first["actor"], "agent:node-a1/retention");
    assert!(first["why"].as_str().unwrap().contains("class fast"));
    for r in audit.iter().filter(|r| r["outcome"] == "done") {
        let target = r["target"].as_str().unwrap();
        let (_, snap) = target.split_once('@').unwrap();
        assert!(
            snap < ours[0].as_str(),
            "{target} destroyed but newer than kept {}",
            ours[0]
        );
    }
    // Nothing of the excluded dataset was touched, and it has no snapshots.
    assert!(audit
        .iter()
        .all(|r| !r["target"].as_str().unwrap().starts_with("tank/scratch@")));
    assert!(sim_snapshots(&a1, "tank/scratch").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cut_off_from_nats_keeps_snapshotting_and_resyncs() {
    let mut f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let a1 = f.agent(&A1);
    wait_for("node-a1 inventory", Duration::from_secs(60), || async {
        let v = coord.fleet().await?;
        (!zdr_snaps(&snapshots_in(&v, "node-a1", "tank/db")?).is_empty()).then_some(())
    })
    .await;

    f.nats.stop();
    let cut_at = chrono_now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Pruning went on while cut off: the audit log grew during the outage.
    let pruned_offline = a1
        .audit()
        .iter()
        .filter(|r| r["outcome"] == "done" && r["at"].as_i64().unwrap() > cut_at)
        .count();
    assert!(pruned_offline >= 1, "no pruning while NATS was down");
    f.nats.restart().await;
    let back_at = chrono_now();

    // After reconnecting, the agent re-syncs: the coordinator sees snapshots
    // taken after the outage, and the one-inventory-per-connect rule held.
    wait_for(
        "the inventory re-synced after reconnect",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            let snaps = zdr_snaps(&snapshots_in(&v, "node-a1", "tank/db")?);
            snaps
                .iter()
                .any(|s| snapshot_time(s) >= back_at)
                .then_some(())
        },
    )
    .await;
    assert!(a1.proc.output().contains("NATS connection lost"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_still_knows_the_fleet() {
    let f = Fleet::start(POLICY, None).await;
    let mut coord = f.coordinator("c1");
    coord.wait_ready().await;
    let mut a1 = f.agent(&A1);
    let mut b1 = f.agent(&B1);
    wait_for("both inventories", Duration::from_secs(60), || async {
        let v = coord.fleet().await?;
        (snapshots_in(&v, "node-a1", "tank/db").is_some()
            && snapshots_in(&v, "node-b1", "tank/db").is_some())
        .then_some(())
    })
    .await;
    // Persistence is batched (every 2 s): wait until both inventories are in KV.
    let js = async_nats::jetstream::new(f.nats.client().await);
    wait_for(
        "both inventories in KV",
        Duration::from_secs(30),
        || async {
            let keys = inventory_keys(&js).await?;
            ["node-a1.", "node-b1."]
                .iter()
                .all(|n| keys.iter().any(|k| k.starts_with(n)))
                .then_some(())
        },
    )
    .await;
    // With the agents gone too, all a new coordinator knows comes from JetStream.
    a1.proc.kill();
    b1.proc.kill();
    coord.proc.kill();
    // A key written and then deleted is history, not an inventory: the new
    // coordinator's one-pass load must leave it out.
    let kv = js.get_key_value("zdr_inventory").await.unwrap();
    kv.put("node-a1.ff", "not an inventory".into())
        .await
        .unwrap();
    kv.delete("node-a1.ff").await.unwrap();
    let coord2 = f.coordinator("c2");
    coord2.wait_ready().await;
    let v = coord2.fleet().await.unwrap();
    for node in ["node-a1", "node-b1"] {
        assert!(
            snapshots_in(&v, node, "tank/db").is_some(),
            "{node} forgotten: {v}"
        );
    }
    let log = coord2.proc.output();
    assert!(!log.contains("unreadable inventory"), "{log}");
    assert_eq!(v["policy_revision"], 1);
    assert!(v["epoch"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_replayed_expired_and_stale_commands_are_refused() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let a1 = f.agent(&A1);
    // The real path: the coordinator signs a command for the agent.
    ping_through(&coord, "node-a1").await;
    let epoch = coord.fleet().await.unwrap()["epoch"].as_u64().unwrap();

    let client = f.nats.client().await;
    let subject = "zdr.v1.agent.node-a1.cmd";
    let send = |bytes: Vec<u8>| {
        let client = client.clone();
        async move {
            let reply = client
                .request(subject, bytes.into())
                .await
                .expect("agent replies");
            serde_json::from_slice::<CommandResult>(&reply.payload).expect("a CommandResult")
        }
    };
    let now = chrono_now();
    let body = br#"{"prune_now":{}}"#;

    let forger = Sealer::new("coordinator", zdr_common::envelope::generate_key());
    let r = send(forger.seal(subject, "f1", now, 60, epoch, body)).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.message.contains("signature"), "{}", r.message);

    let real = Sealer::new("coordinator", f.keys.key.clone());
    let genuine = real.seal(subject, "t1", now, 60, epoch, br#"{"ping":{}}"#);
    assert_eq!(send(genuine.clone()).await.outcome, Outcome::Done);
    let r = send(genuine).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.message.contains("replay"), "{}", r.message);

    let r = send(real.seal(subject, "t2", now - 120, 60, epoch, body)).await;
    assert!(r.message.contains("expired"), "{}", r.message);

    let r = send(real.seal(subject, "t3", now, 60, epoch - 1, body)).await;
    assert!(r.message.contains("stale epoch"), "{}", r.message);

    // Signed for another node's subject: refused.
    let r = send(real.seal("zdr.v1.agent.node-b1.cmd", "t4", now, 60, epoch, body)).await;
    assert_eq!(r.outcome, Outcome::Refused);

    let r = send(b"rm -rf /".to_vec()).await;
    assert_eq!(r.outcome, Outcome::Refused);

    // Every refusal is logged with its reason, and nothing was destroyed.
    let log = a1.proc.output();
    assert!(log.matches("command refused").count() >= 5, "{log}");
    assert!(a1
        .audit()
        .iter()
        .all(|r| r["actor"] == "agent:node-a1/retention"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_agent_messages_are_dropped() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let client = f.nats.client().await;
    client
        .publish("zdr.v1.agent.node-x.heartbeat", "{not json".into())
        .await
        .unwrap();
    client
        .publish("zdr.v1.agent.node-x.hello", r#"{"node":"node-y"}"#.into())
        .await
        .unwrap();
    client
        .publish(
            "zdr.v1.agent.node-x.inventory",
            vec![b'x'; 900 * 1024].into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    wait_for("bad messages counted", Duration::from_secs(20), || async {
        let (_, m) = coord.get("/metrics").await?;
        m.contains("zdr_bad_messages_total").then_some(())
    })
    .await;
    let (code, _) = coord.get("/readyz").await.unwrap();
    assert_eq!(code, 200, "coordinator unhealthy after bad input");
    let v = coord.fleet().await.unwrap();
    assert!(v["nodes"].as_array().unwrap().is_empty(), "{v}");
}

/// Sends a ping through the coordinator's API until the agent answers it.
async fn ping_through(coord: &Coordinator, node: &str) {
    let path = format!("/api/v1/nodes/{node}/commands");
    let body = wait_for(
        "a ping through the coordinator",
        Duration::from_secs(60),
        || async {
            let (code, body) = coord.post(&path, r#"{"ping":{}}"#).await?;
            (code == 200).then_some(body)
        },
    )
    .await;
    let r: CommandResult = serde_json::from_str(&body).unwrap();
    assert_eq!(r.outcome, Outcome::Done, "{}", r.message);
}

/// Snapshot names of one dataset in a stopped sim agent's pool file.
fn sim_snapshots(agent: &Agent, dataset: &str) -> Vec<String> {
    let raw = std::fs::read(agent.state_dir.join("sim-pools.json")).expect("sim pool file");
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["datasets"][dataset]["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("{dataset} not in the pool file"))
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Seconds since the epoch from `zdr_YYYYMMDDTHHMMSSZ[-n]`.
fn snapshot_time(name: &str) -> i64 {
    let s = &name["zdr_".len()..];
    let num = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, mo, d, h, mi, se) = (
        num(0, 4),
        num(4, 6),
        num(6, 8),
        num(9, 11),
        num(11, 13),
        num(13, 15),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + se
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_without_nats_runs_on_its_cached_policy() {
    let mut f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let mut a1 = f.agent(&A1);
    wait_for(
        "node-a1 on policy revision 1",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            let n = node_in(&v, "node-a1")?.clone();
            (n["policy_revision"] == 1).then_some(())
        },
    )
    .await;
    a1.proc.interrupt();
    f.nats.stop();

    // No bus, no coordinator: only the policy cached on disk can drive it.
    let a1 = f.agent(&A1);
    let restarted_at = chrono_now();
    wait_for(
        "snapshots and pruning without NATS",
        Duration::from_secs(60),
        || async {
            let pruned = a1
                .audit()
                .iter()
                .filter(|r| r["outcome"] == "done" && r["at"].as_i64().unwrap() >= restarted_at)
                .count();
            (pruned >= 2).then_some(())
        },
    )
    .await;
    assert!(a1.proc.output().contains("cached signed policy loaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_edit_reaches_the_agents_and_a_broken_edit_is_not_applied() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let a1 = f.agent(&A1);
    wait_for(
        "3 snapshots kept under revision 1",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            (zdr_snaps(&snapshots_in(&v, "node-a1", "tank/db")?).len() == 3).then_some(())
        },
    )
    .await;

    // A broken edit: the coordinator says where, and keeps revision 1.
    std::fs::write(&f.policy, POLICY.replace("2s: 3", "2s: 0")).unwrap();
    wait_for(
        "the coordinator to report the broken policy",
        Duration::from_secs(30),
        || async { coord.proc.output().contains("keeps 0").then_some(()) },
    )
    .await;
    let log = coord.proc.output();
    let line = log.lines().find(|l| l.contains("keeps 0")).unwrap();
    assert!(line.contains("policies.yaml:10:"), "no file:line in {line}");
    assert_eq!(coord.fleet().await.unwrap()["policy_revision"], 1);

    // A good edit becomes revision 2 and the agent prunes down to the new tier.
    std::fs::write(&f.policy, POLICY.replace("2s: 3", "2s: 2")).unwrap();
    wait_for(
        "revision 2 applied and 2 snapshots kept",
        Duration::from_secs(60),
        || async {
            let v = coord.fleet().await?;
            let n = node_in(&v, "node-a1")?.clone();
            let snaps = zdr_snaps(&snapshots_in(&v, "node-a1", "tank/db")?);
            (n["policy_revision"] == 2 && snaps.len() == 2).then_some(())
        },
    )
    .await;
    assert!(a1.proc.output().contains("policy applied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_coordinator_takes_over_with_a_higher_epoch() {
    let f = Fleet::start(POLICY, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let c2 = f.coordinator("c2");
    let _a1 = f.agent(&A1);
    // The standby serves HTTP but is not ready and sends no commands.
    let (code, body) = wait_for("the standby's /readyz", Duration::from_secs(30), || async {
        c2.get("/readyz").await
    })
    .await;
    assert_eq!(code, 503, "{body}");
    let first_epoch = c1.fleet().await.unwrap()["epoch"].as_u64().unwrap();
    let (code, _) = c2
        .post("/api/v1/nodes/node-a1/commands", r#"{"ping":{}}"#)
        .await
        .unwrap();
    assert_eq!(code, 502);
    let leader_gauge = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("zdr_coordinator_leader "))
            .map(str::to_string)
    };
    let (_, m) = c2.get("/metrics").await.unwrap();
    assert_eq!(leader_gauge(&m).as_deref(), Some("0"), "{m}");
    let (_, m) = c1.get("/metrics").await.unwrap();
    assert_eq!(leader_gauge(&m).as_deref(), Some("1"), "{m}");

    c1.proc.kill();
    c2.wait_ready().await;
    let v = c2.fleet().await.unwrap();
    assert!(v["epoch"].as_u64().unwrap() > first_epoch, "{v}");
    let (_, m) = c2.get("/metrics").await.unwrap();
    assert_eq!(leader_gauge(&m).as_deref(), Some("1"), "{m}");
    // The agent accepts the new leader's commands (its epoch is higher).
    ping_through(&c2, "node-a1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pairings_follow_the_tasks_and_stay_stable_across_a_restart() {
    let tasks = r#"version: 1
tasks:
  - name: offsite
    source: { class: fast }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 10s }
"#;
    let f = Fleet::start(POLICY, Some(tasks)).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let _a1 = f.agent(&A1);
    let _b1 = f.agent(&B1);
    let find = |v: &serde_json::Value, node: &str, ds: &str| -> Option<serde_json::Value> {
        v["pairings"]
            .as_array()?
            .iter()
            .find(|p| p["source_node"] == node && p["dataset"] == ds)
            .cloned()
    };
    let first = wait_for(
        "pairings for both nodes",
        Duration::from_secs(60),
        || async {
            let v = c1.get_json("/api/v1/pairings").await?;
            let a = find(&v, "node-a1", "tank/db")?;
            find(&v, "node-b1", "tank/db")?;
            Some(a)
        },
    )
    .await;
    assert_eq!(first["target_node"], "node-b1");
    assert_eq!(first["target_dataset"], "backup/node-a1/tank/db");
    assert_eq!(first["task"], "offsite");

    // A new coordinator reads the pairing back from JetStream: same target, same reason.
    c1.proc.kill();
    let c2 = f.coordinator("c2");
    c2.wait_ready().await;
    let again = wait_for(
        "pairings after restart",
        Duration::from_secs(60),
        || async {
            let v = c2.get_json("/api/v1/pairings").await?;
            find(&v, "node-a1", "tank/db")
        },
    )
    .await;
    assert_eq!(again, first);
    // Filtered by node: what has it at either end.
    let of = |node: &'static str| {
        let c2 = &c2;
        async move {
            c2.get_json(&format!("/api/v1/pairings?node={node}"))
                .await
                .unwrap()
        }
    };
    let a1 = of("node-a1").await;
    assert_eq!(find(&a1, "node-a1", "tank/db"), Some(first));
    let list = a1["pairings"].as_array().unwrap();
    assert!(
        list.iter()
            .all(|p| p["source_node"] == "node-a1" || p["target_node"] == "node-a1"),
        "{a1:#}"
    );
    assert_eq!(of("node-zz").await["pairings"], serde_json::json!([]));
}

/// systemd stops a service with SIGTERM: the leader exits 0 and gives its
/// lease up on the way out, so the standby leads within one lease period
/// (3 s here) instead of waiting for the lease to expire.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_the_lease_to_the_standby_at_once() {
    let f = Fleet::start(POLICY, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let c2 = f.coordinator("c2");
    let _a1 = f.agent(&A1);
    wait_for(
        "the standby's HTTP API",
        Duration::from_secs(30),
        || async { c2.get("/readyz").await },
    )
    .await;
    let start = std::time::Instant::now();
    let (status, exited) = c1.proc.terminate(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the leader exits 0 on SIGTERM:\n{}",
        c1.proc.output()
    );
    c2.wait_ready().await;
    let took = start.elapsed();
    eprintln!("SIGTERM to exit: {exited:?}; SIGTERM to the standby leading: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the standby took {took:?} to lead, more than one lease period"
    );
    assert!(c1.proc.output().contains("releasing the lease"));
    ping_through(&c2, "node-a1").await;
}

/// systemd stops the coordinator whether or not the bus is up: with
/// nats-server gone, SIGTERM still ends it at once, exit code 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_coordinator_while_nats_is_down() {
    let mut f = Fleet::start(POLICY, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    f.nats.stop();
    wait_for(
        "the coordinator to see the bus gone",
        Duration::from_secs(30),
        || async { matches!(c1.get("/readyz").await, Some((503, _))).then_some(()) },
    )
    .await;
    let (status, exited) = c1.proc.terminate(Duration::from_secs(15));
    eprintln!("SIGTERM to exit with the bus down: {exited:?}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the coordinator exits 0 on SIGTERM with the bus down (after {exited:?}):\n{}",
        c1.proc.output()
    );
    assert!(exited < Duration::from_secs(5), "took {exited:?}");
}

/// A standby whose policy file is broken when it wins the lease stays up,
/// leads on the last good signed policy, and says why in /readyz.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_with_a_broken_policy_file_keeps_the_last_good_policy() {
    let f = Fleet::start(POLICY, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let _a1 = f.agent(&A1);
    let before = wait_for(
        "the fleet's policy revision",
        Duration::from_secs(30),
        || async { c1.fleet().await?["policy_revision"].as_u64() },
    )
    .await;
    let broken = f.path().join("broken.yaml");
    std::fs::write(&broken, POLICY.replace("rpo: 10s", "rpo: [not a duration")).unwrap();
    let mut c2 = Coordinator::start(f.path(), &f.nats, &broken, None, &f.keys, "c2");
    c1.proc.terminate(Duration::from_secs(10));
    let body = wait_for(
        "the standby to lead and explain its policy",
        Duration::from_secs(30),
        || async {
            let (code, body) = c2.get("/readyz").await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["leader"] == true).then_some((code, v))
        },
    )
    .await;
    let (code, ready) = body;
    assert_eq!(code, 503, "{ready}");
    let why = ready["policy_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("broken.yaml:"),
        "names the file and line: {why}"
    );
    assert!(why.contains("last good"), "{why}");
    assert_eq!(ready["policy_loaded"], true, "{ready}");
    let v = c2.fleet().await.unwrap();
    assert_eq!(v["policy_revision"].as_u64(), Some(before), "{v}");
    assert!(
        c2.proc.running(),
        "the standby stays up:\n{}",
        c2.proc.output()
    );
    ping_through(&c2, "node-a1").await;
}

/// A command for a node the coordinator does not know, or for a malformed
/// node id, is answered at once from the fleet: 404 and 400, not a timeout.
#[tokio::test(flavor = "multi_thread")]
async fn commands_for_unknown_or_malformed_nodes_are_answered_at_once() {
    let f = Fleet::start(POLICY, None).await;
    let c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let _a1 = f.agent(&A1);
    ping_through(&c1, "node-a1").await;
    for (node, want) in [("node-zz", 404), ("-bad-", 400), ("12345", 400)] {
        let start = std::time::Instant::now();
        let (code, body) = c1
            .post(&format!("/api/v1/nodes/{node}/commands"), r#"{"ping":{}}"#)
            .await
            .unwrap();
        assert_eq!(code, want, "{node}: {body}");
        assert!(body.contains(node), "the error names the node: {body}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{node}: answered in {:?}",
            start.elapsed()
        );
    }
}

/// A node record in KV is the commit mark of that node's inventories: a new
/// leader trusts the KV inventories of a node whose heartbeat matches its
/// record. Here KV refuses every inventory write; the records must not be
/// written either, so the next leader asks the agents again. Written beside
/// the failed inventories (as before), the next leader would know the nodes
/// and none of their snapshots, for as long as they took none.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_record_never_vouches_for_an_inventory_kv_lacks() {
    // Agents that take no snapshot for an hour: their inventories' sequence
    // stands still, so only the coordinator's records say whether a new
    // leader's inventories are whole.
    let quiet = POLICY
        .replace("tiers: { 2s: 3 }", "tiers: { 1h: 3 }")
        .replace("rpo: 10s", "rpo: 2h");
    assert!(quiet.contains("tiers: { 1h: 3 }") && quiet.contains("rpo: 2h"));
    let f = Fleet::start(&quiet, None).await;
    let mut coord = f.coordinator("c1");
    coord.wait_ready().await;
    let js = async_nats::jetstream::new(f.nats.client().await);
    let stream = "KV_zdr_inventory";
    let mut config = js
        .get_stream(stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_message_size = 16;
    js.update_stream(&config).await.unwrap();
    let _a1 = f.agent(&A1);
    let _b1 = f.agent(&B1);
    wait_for("both inventories", Duration::from_secs(60), || async {
        let v = coord.fleet().await?;
        (snapshots_in(&v, "node-a1", "tank/db").is_some_and(|s| !s.is_empty())
            && snapshots_in(&v, "node-b1", "tank/db").is_some_and(|s| !s.is_empty()))
        .then_some(())
    })
    .await;
    wait_for("failed writes counted", Duration::from_secs(30), || async {
        let (_, m) = coord.get("/metrics").await?;
        m.lines()
            .any(|l| l.starts_with("zdr_persist_failures_total") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    let fleet_kv = js.get_key_value("zdr_fleet").await.unwrap();
    for node in ["node-a1", "node-b1"] {
        assert!(
            fleet_kv.get(node).await.unwrap().is_none(),
            "{node}'s record was written while its inventories were not"
        );
    }
    coord.proc.kill();
    config.max_message_size = -1;
    js.update_stream(&config).await.unwrap();
    let coord2 = f.coordinator("c2");
    coord2.wait_ready().await;
    wait_for(
        "the new leader knows both inventories",
        Duration::from_secs(60),
        || async {
            let v = coord2.fleet().await?;
            (snapshots_in(&v, "node-a1", "tank/db").is_some_and(|s| !s.is_empty())
                && snapshots_in(&v, "node-b1", "tank/db").is_some_and(|s| !s.is_empty()))
            .then_some(())
        },
    )
    .await;
}

/// The live keys of KV `zdr_inventory`.
async fn inventory_keys(js: &async_nats::jetstream::Context) -> Option<Vec<String>> {
    let kv = js.get_key_value("zdr_inventory").await.ok()?;
    let keys = kv.keys().await.ok()?;
    Some(keys.filter_map(|k| async { k.ok() }).collect().await)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inventory_larger_than_a_kv_message_is_stored_in_parts_and_read_back_whole() {
    // Twelve snapshots per dataset: each inventory is a few KB.
    let many = POLICY.replace("tiers: { 2s: 3 }", "tiers: { 1s: 12 }");
    assert!(many.contains("1s: 12"));
    let f = Fleet::start(&many, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    // A bucket that takes 1.5 KB messages, as 1 MiB takes ~7,900 snapshots.
    let js = async_nats::jetstream::new(f.nats.client().await);
    let mut config = js
        .get_stream("KV_zdr_inventory")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.max_message_size = 1_536;
    js.update_stream(&config).await.unwrap();
    let mut a1 = f.agent(&A1);
    let kv = js.get_key_value("zdr_inventory").await.unwrap();
    let live_keys = || inventory_keys(&js);
    wait_for(
        "tank/db with 10 snapshots, stored in parts",
        Duration::from_secs(60),
        || async {
            let v = c1.fleet().await?;
            let n = snapshots_in(&v, "node-a1", "tank/db")?.len();
            let keys = live_keys().await?;
            (n >= 10 && keys.iter().any(|k| k.contains(".part"))).then_some(())
        },
    )
    .await;
    // The agent stops; what a new leader knows of it comes from KV alone.
    a1.proc.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = snapshots_in(&c1.fleet().await.unwrap(), "node-a1", "tank/db").unwrap();
    // Replaced parts are deleted: every live part belongs to its header's generation.
    let keys = live_keys().await.unwrap();
    let parts: Vec<&String> = keys.iter().filter(|k| k.contains(".part")).collect();
    for part in &parts {
        let (head, rest) = part.rsplit_once(".part").unwrap();
        let header = kv
            .get(head)
            .await
            .unwrap()
            .expect("a part without its header");
        let header = String::from_utf8_lossy(&header).to_string();
        let generation = rest.split('.').next().unwrap();
        assert!(
            header.starts_with(&format!("ZDRPARTS1 {generation} ")),
            "part {part} is not of its header's generation: {header}"
        );
    }
    c1.proc.kill();
    let c2 = f.coordinator("c2");
    c2.wait_ready().await;
    let after = wait_for(
        "the new leader's view of node-a1",
        Duration::from_secs(30),
        || async { snapshots_in(&c2.fleet().await?, "node-a1", "tank/db") },
    )
    .await;
    assert_eq!(after, before, "read back from {} parts", parts.len());
    assert!(
        !c2.proc.output().contains("cannot be read"),
        "{}",
        c2.proc.output()
    );
}
