//! Restore end to end: a real nats-server, the real coordinator and agents
//! (simulated ZFS), the restore streams over the agents' mutual-TLS data
//! plane. What landed is read from each agent's pool file.

use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

/// Snapshots once at start and on demand (`snapshot_now`): within the hour
/// nothing is taken or pruned on its own, so the tests know every snapshot.
const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-a2: { site: site-a, media: hdd }
  node-b1: { site: site-b, media: ssd }
classes:
  gold:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 1h
datasets:
  - match: "tank/db"
    class: gold
"#;

const TASKS: &str = r#"version: 1
tasks:
  - name: local
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: same, media: different, root: "backup/{node}" }
    schedule: { every: 2s }
"#;

const REPLICA: &str = "backup/node-a1/tank/db";

fn spec(node: &'static str, datasets: &'static [&'static str]) -> AgentSpec<'static> {
    let (site, media) = match node {
        "node-a1" => ("site-a", "ssd"),
        "node-a2" => ("site-a", "hdd"),
        _ => ("site-b", "ssd"),
    };
    AgentSpec {
        node,
        site,
        media,
        datasets,
    }
}

struct Setup {
    coordinator: Coordinator,
    pki: std::path::PathBuf,
    fleet: Fleet,
}

impl Setup {
    async fn start() -> Setup {
        let fleet = Fleet::start(POLICY, Some(TASKS)).await;
        let pki = pki(fleet.path(), &["node-a1", "node-a2", "node-b1"]);
        let coordinator = fleet.coordinator("c1");
        coordinator.wait_ready().await;
        Setup {
            coordinator,
            pki,
            fleet,
        }
    }

    fn agent(&self, node: &'static str, datasets: &'static [&'static str]) -> Agent {
        let extra = AgentExtra {
            pools: vec![("backup".into(), 10_000_000_000)],
            pki: Some(self.pki.clone()),
            ..AgentExtra::default()
        };
        self.fleet.agent_with(&spec(node, datasets), &extra)
    }

    async fn snapshot_now(&self, node: &str) {
        let path = format!("/api/v1/nodes/{node}/commands");
        let r = self.coordinator.post(&path, r#"{"snapshot_now":{}}"#).await;
        assert!(matches!(r, Some((200, _))), "snapshot_now on {node}: {r:?}");
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.coordinator.get(path).await.expect("coordinator up");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn post_restore(&self, body: Value) -> (u16, Value) {
        let (code, body) = self
            .coordinator
            .post("/api/v1/restores", &body.to_string())
            .await
            .expect("coordinator up");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn restore_ended(&self, job: &str) -> Value {
        let path = format!("/api/v1/restores/{job}");
        wait_for("the restore to end", Duration::from_secs(90), || async {
            let (code, s) = self.json(&path).await;
            (code == 200 && (s["state"] == "done" || s["state"] == "failed")).then_some(s)
        })
        .await
    }

    async fn restores(&self) -> usize {
        let (_, v) = self.json("/api/v1/restores").await;
        v["restores"].as_array().map_or(0, Vec::len)
    }
}

/// Waits until the replica holds `n` snapshots or more, by GUID those of the source.
async fn replicated(s: &Setup, a1: &Agent, a2: &Agent, n: usize) {
    wait_for(
        "the replica to catch up",
        Duration::from_secs(90),
        || async {
            let src = on_disk(a1, "tank/db")?;
            let dst = on_disk(a2, REPLICA)?;
            let all = jobs(&s.coordinator).await;
            let idle = job_for(&all, "local", "node-a1")
                .is_some_and(|j| j["state"] == "done" && j["moving_holds_to"].is_null());
            (idle && src.len() >= n && dst.len() == src.len() && dst.last()?.1 == src.last()?.1)
                .then_some(())
        },
    )
    .await;
}

/// The startup snapshot of node-a1's tank/db, then two more a second apart
/// (names are per second), all on the replica.
async fn three_snapshots_replicated(s: &Setup, a1: &Agent, a2: &Agent) {
    wait_for("the first snapshot", Duration::from_secs(30), || async {
        on_disk(a1, "tank/db").filter(|v| !v.is_empty()).map(|_| ())
    })
    .await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        s.snapshot_now("node-a1").await;
    }
    replicated(s, a1, a2, 3).await;
}

/// The datasets in an agent's simulated pools, with their snapshot GUIDs.
fn datasets(agent: &Agent) -> Vec<(String, Vec<u64>)> {
    let raw = std::fs::read(agent.state_dir.join("sim-pools.json")).unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    let names: Vec<String> = v["datasets"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names
        .into_iter()
        .map(|d| {
            let guids = on_disk(agent, &d)
                .unwrap_or_default()
                .iter()
                .map(|x| x.1)
                .collect();
            (d, guids)
        })
        .collect()
}

/// `zdr_20261205T070000Z` as RFC 3339: the time the snapshot was named for.
fn name_time(name: &str) -> String {
    let t = name.strip_prefix("zdr_").expect("a zdr snapshot");
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[9..11],
        &t[11..13],
        &t[13..15]
    )
}

#[tokio::test]
async fn restores_to_new_datasets_as_of_a_time_and_refuses_bad_input() {
    let s = Setup::start().await;
    let a1 = s.agent("node-a1", &["tank/db", "tank/scratch"]);
    let mut a2 = s.agent("node-a2", &[]);
    let b1 = s.agent("node-b1", &[]);
    three_snapshots_replicated(&s, &a1, &a2).await;
    let source = on_disk(&a1, "tank/db").unwrap();

    // Restore points: production first, then the replica, same GUIDs.
    // (once the coordinator's inventory of the replica caught up)
    let points = wait_for("both copies listed", Duration::from_secs(30), || async {
        let (code, p) = s
            .json("/api/v1/restore-points?node=node-a1&dataset=tank/db")
            .await;
        assert_eq!(code, 200, "{p}");
        let n = p["copies"][1]["snapshots"].as_array().map_or(0, Vec::len);
        (n == source.len()).then_some(p)
    })
    .await;
    let copies = points["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{points}");
    assert_eq!(
        (&copies[0]["copy"], &copies[0]["node"]),
        (&"production".into(), &"node-a1".into())
    );
    assert_eq!(copies[1]["copy"], "replica");
    assert_eq!(copies[1]["dataset"], REPLICA);
    assert_eq!(copies[1]["site"], "site-a");
    assert_eq!(copies[1]["online"], true);
    let guids = |c: &Value| -> Vec<u64> {
        c["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["guid"].as_u64().unwrap())
            .collect()
    };
    let on_a1: Vec<u64> = source.iter().map(|x| x.1).collect();
    assert_eq!(guids(&copies[0]), on_a1);
    assert_eq!(guids(&copies[1]), on_a1);

    // The newest, from the replica, to a new dataset on another site's node.
    let (code, accepted) = s
        .post_restore(serde_json::json!({
            "source": "node-a1:tank/db", "from": "node-a2", "to": "node-b1:tank/restored"
        }))
        .await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["from"]["node"], "node-a2");
    assert_eq!(accepted["from"]["dataset"], REPLICA);
    let newest = source.last().unwrap();
    assert_eq!(accepted["snapshot"]["name"], newest.0.as_str());
    assert_eq!(accepted["snapshot"]["guid"], newest.1);
    let status = s.restore_ended(accepted["job"].as_str().unwrap()).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["landed_guid"], newest.1);
    assert!(status["bytes"].as_u64().unwrap() > 0);
    assert!(status["finished"].as_i64().is_some());
    let landed = on_disk(&b1, "tank/restored").expect("restored on node-b1");
    let landed_guids: Vec<u64> = landed.iter().map(|x| x.1).collect();
    assert_eq!(
        landed_guids, on_a1,
        "full of the oldest, then -I to the newest"
    );
    // Its holds went when it ended, on the copy and the restored dataset.
    wait_for(
        "the restore holds to go",
        Duration::from_secs(30),
        || async {
            let held = |v: Vec<(String, u64, Vec<String>)>| {
                v.iter()
                    .any(|x| x.2.iter().any(|t| t.starts_with("zdr-restore-")))
            };
            (!held(on_disk(&b1, "tank/restored")?) && !held(on_disk(&a2, REPLICA)?)).then_some(())
        },
    )
    .await;

    // As of the second snapshot's time: that one, not the newest; by
    // default from the closest copy (production, as no copy is on site-b).
    let second = &source[1];
    let (code, accepted) = s
        .post_restore(serde_json::json!({
            "source": "node-a1:tank/db", "at": name_time(&second.0), "to": "node-b1:tank/pit"
        }))
        .await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["snapshot"]["name"], second.0.as_str());
    assert_eq!(accepted["from"]["node"], "node-a1");
    let status = s.restore_ended(accepted["job"].as_str().unwrap()).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["landed_guid"], second.1);
    let pit: Vec<u64> = on_disk(&b1, "tank/pit")
        .unwrap()
        .iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(pit, on_a1[..2].to_vec());
    // Over the existing tank/pit, with replace: -F back to what it shares
    // with the copy, audited on node-b1 before it ran.
    // (planned from the coordinator's inventory, once it shows tank/pit)
    wait_for(
        "tank/pit in the inventory",
        Duration::from_secs(30),
        || async {
            let fleet = s.coordinator.fleet().await?;
            (snapshots_in(&fleet, "node-b1", "tank/pit")?.len() == 2).then_some(())
        },
    )
    .await;
    let (code, accepted) = s
        .post_restore(serde_json::json!({
            "source": "node-a1:tank/db", "to": "node-b1:tank/pit", "replace": true
        }))
        .await;
    assert_eq!(code, 202, "{accepted}");
    let status = s.restore_ended(accepted["job"].as_str().unwrap()).await;
    assert_eq!(status["state"], "done", "{status}");
    let pit: Vec<u64> = on_disk(&b1, "tank/pit")
        .unwrap()
        .iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(pit, on_a1);
    let forced: Vec<String> = b1
        .audit()
        .iter()
        .filter(|r| r["action"] == "receive -F" && r["target"] == "tank/pit")
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(forced, ["intent", "done"], "audited before and after");
    // To node-a2 itself: its own replica is the closest copy.
    let (code, accepted) = s
        .post_restore(serde_json::json!({
            "source": "node-a1:tank/db", "to": "node-a2:tank/local-restore"
        }))
        .await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["from"]["node"], "node-a2");
    let status = s.restore_ended(accepted["job"].as_str().unwrap()).await;
    assert_eq!(status["state"], "done", "{status}");

    // Bad input: each answered with its code, nothing written.
    let count = s.restores().await;
    let b1_before = datasets(&b1);
    let bad = [
        (
            serde_json::json!({"source": "node-a1:tank/db", "to": "node-b1:tank/restored"}),
            409,
            "the dataset exists",
        ),
        (
            serde_json::json!({"source": "node-a1:tank/db", "at": "2000-01-01T00:00:00Z",
                               "to": "node-b1:tank/early"}),
            400,
            &*format!("its oldest is @{}", source[0].0),
        ),
        (
            serde_json::json!({"source": "node-a1:tank/scratch", "to": "node-b1:tank/x"}),
            404,
            "is not protected",
        ),
        (
            serde_json::json!({"source": "node-zz:tank/db", "to": "node-b1:tank/x"}),
            404,
            "node-zz",
        ),
        (
            serde_json::json!({"source": "node-a1:tank/db", "to": "node-b1"}),
            400,
            "expected NODE:DATASET",
        ),
    ];
    for (body, want, says) in bad {
        let (code, answer) = s.post_restore(body.clone()).await;
        assert_eq!(code, want, "{body} -> {answer}");
        let msg = answer["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body} -> {msg}");
    }
    // A copy that is offline: the answer names the reachable ones.
    a2.proc.kill();
    wait_for("node-a2 offline", Duration::from_secs(30), || async {
        let (_, p) = s
            .json("/api/v1/restore-points?node=node-a1&dataset=tank/db")
            .await;
        (p["copies"][1]["online"] == false).then_some(())
    })
    .await;
    let (code, answer) = s
        .post_restore(serde_json::json!({
            "source": "node-a1:tank/db", "from": "node-a2", "to": "node-b1:tank/x"
        }))
        .await;
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("reachable copies: node-a1:tank/db"),
        "{answer}"
    );
    assert_eq!(s.restores().await, count, "no restore job was made");
    assert_eq!(datasets(&b1), b1_before, "nothing was written on node-b1");
}

#[tokio::test]
async fn a_destroyed_dataset_comes_back_to_its_node_and_replication_goes_on_incrementally() {
    let s = Setup::start().await;
    let mut a1 = s.agent("node-a1", &["tank/db"]);
    let a2 = s.agent("node-a2", &[]);
    three_snapshots_replicated(&s, &a1, &a2).await;
    let replica = on_disk(&a2, REPLICA).unwrap();

    // The dataset is lost: gone from node-a1's pool, which restarts without it.
    a1.proc.kill();
    let pools = a1.state_dir.join("sim-pools.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&pools).unwrap()).unwrap();
    v["datasets"].as_object_mut().unwrap().remove("tank/db");
    std::fs::write(&pools, serde_json::to_vec(&v).unwrap()).unwrap();
    let a1 = s.agent("node-a1", &[]);
    wait_for(
        "the loss seen by the coordinator",
        Duration::from_secs(30),
        || async {
            let fleet = s.coordinator.fleet().await?;
            let node = node_in(&fleet, "node-a1")?;
            (node["online"] == true && snapshots_in(&fleet, "node-a1", "tank/db").is_none())
                .then_some(())
        },
    )
    .await;

    // The replica is still a restore point, and comes back under the old name.
    let (code, points) = s
        .json("/api/v1/restore-points?node=node-a1&dataset=tank/db")
        .await;
    assert_eq!(code, 200, "{points}");
    assert_eq!(points["copies"].as_array().unwrap().len(), 1, "{points}");
    assert_eq!(points["copies"][0]["node"], "node-a2");
    let (code, accepted) = s
        .post_restore(serde_json::json!({"source": "node-a1:tank/db", "to": "node-a1:tank/db"}))
        .await;
    assert_eq!(code, 202, "{accepted}");
    let status = s.restore_ended(accepted["job"].as_str().unwrap()).await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["landed_guid"], replica.last().unwrap().1);
    let back: Vec<u64> = on_disk(&a1, "tank/db")
        .unwrap()
        .iter()
        .map(|x| x.1)
        .collect();
    let copy: Vec<u64> = replica.iter().map(|x| x.1).collect();
    assert_eq!(back, copy, "the copy's snapshots, GUID for GUID");

    // A new snapshot reaches the replica as an incremental from the restored one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.snapshot_now("node-a1").await;
    replicated(&s, &a1, &a2, 4).await;
    assert_faithful(&a1, &a2, "tank/db", REPLICA, "zdr-repl-local");
    let all = jobs(&s.coordinator).await;
    let local = job_for(&all, "local", "node-a1").expect("the local job");
    let planned: Vec<String> = history(local)
        .into_iter()
        .filter(|l| l.contains(" planned "))
        .collect();
    let fulls = planned.iter().filter(|l| l.contains("full @")).count();
    assert_eq!(
        fulls, 1,
        "only the first copy was a full stream: {planned:?}"
    );
    assert!(
        planned.last().unwrap().contains("-I @") || planned.last().unwrap().contains("-i @"),
        "{planned:?}"
    );
}
