//! Restore drills on the simulated fleet: real nats-server and agent
//! binaries; what exists is read from the agent's pool file, what was
//! destroyed from its audit log.

use std::time::Duration;

use serde_json::Value;
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

/// A drill's scratch that no drill uses (the drill's cleanup failed, or its
/// record is gone) is destroyed by the leader's sweep, audited first, and
/// nothing else is touched. The agent itself destroys nothing at start: a
/// drill it was killed in may go on after its restart.
#[tokio::test]
async fn scratch_no_drill_uses_is_destroyed_by_the_leader_audited() {
    let fleet = Fleet::start(POLICY, None).await;
    let spec = AgentSpec {
        node: "node-a1",
        site: "site-a",
        media: "ssd",
        // The sim creates these at start, as a crash would have left them.
        datasets: &["tank/data", "tank/zdr-drill", "tank/zdr-drill/n1-17-3"],
    };
    let agent = fleet.agent(&spec);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let records = wait_for(
        "the scratch's destroy in the audit log",
        // The first sweep can come before the agent's inventory lists the
        // scratch; the next is a minute later.
        Duration::from_secs(150),
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
    assert!(
        agent.audit().iter().all(|r| r["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("coordinator:"))),
        "destroyed on the coordinator's signed command: {:?}",
        agent.audit()
    );
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

/// Two nodes at one site: node-a1 holds tank/db (class gold), the task
/// `local` copies it to node-a2's pool `backup`. Snapshots once at start:
/// within the hour nothing is taken or pruned on its own.
fn drill_policy(drill: &str) -> String {
    format!(
        r#"version: 1
sites:
  site-a: {{}}
  site-b: {{}}
nodes:
  node-a1: {{ site: site-a, media: ssd }}
  node-a2: {{ site: site-a, media: hdd }}
classes:
  gold:
    tiers: {{ 1h: 3 }}
    rpo: 2h
    rto: 1h
    immutable_for: 1h
{drill}datasets:
  - match: "tank/db"
    class: gold
"#
    )
}

const TASKS: &str = r#"version: 1
tasks:
  - name: local
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: same, media: different, root: "backup/{node}" }
    schedule: { every: 2s }
"#;

const REPLICA: &str = "backup/node-a1/tank/db";

struct Setup {
    coordinator: Coordinator,
    pki: std::path::PathBuf,
    fleet: Fleet,
}

impl Setup {
    async fn start(drill: &str) -> Setup {
        let fleet = Fleet::start(&drill_policy(drill), Some(TASKS)).await;
        let pki = pki(fleet.path(), &["node-a1", "node-a2"]);
        let coordinator = fleet.coordinator("c1");
        coordinator.wait_ready().await;
        Setup {
            coordinator,
            pki,
            fleet,
        }
    }

    fn agent(&self, node: &'static str, datasets: &'static [&'static str]) -> Agent {
        self.agent_sized(node, datasets, 10_000_000_000, None)
    }

    /// With a `backup` pool of `backup_bytes`, and snapshots of that many bytes.
    fn agent_sized(
        &self,
        node: &'static str,
        datasets: &'static [&'static str],
        backup_bytes: u64,
        snapshot_bytes: Option<u64>,
    ) -> Agent {
        let extra = AgentExtra {
            snapshot_bytes,
            ..AgentExtra::default()
        };
        self.agent_with(node, datasets, backup_bytes, extra)
    }

    fn agent_with(
        &self,
        node: &'static str,
        datasets: &'static [&'static str],
        backup_bytes: u64,
        extra: AgentExtra,
    ) -> Agent {
        let media = if node == "node-a1" { "ssd" } else { "hdd" };
        let extra = AgentExtra {
            pools: vec![("backup".into(), backup_bytes)],
            pki: Some(self.pki.clone()),
            ..extra
        };
        let spec = AgentSpec {
            node,
            site: "site-a",
            media,
            datasets,
        };
        self.fleet.agent_with(&spec, &extra)
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.coordinator.get(path).await.expect("coordinator up");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn post_drill(&self, body: Value) -> (u16, Value) {
        let (code, body) = self
            .coordinator
            .post("/api/v1/drills", &body.to_string())
            .await
            .expect("coordinator up");
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn drills(&self) -> Vec<Value> {
        let (_, v) = self.json("/api/v1/drills").await;
        v["drills"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the first drill `pick` accepts to end.
    async fn drill_ended(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, Duration::from_secs(90), || async {
            self.drills()
                .await
                .into_iter()
                .find(|d| pick(d) && d["state"] != "running")
        })
        .await
    }

    /// node-a1's production hashing for `hash_ms` per content hash, its
    /// replica on node-a2, and a drill started and hashing production:
    /// the agents and the drill's job.
    async fn drill_while_hashing(&self, hash_ms: u64) -> (Agent, Agent, String) {
        let a1 = self.agent_with("node-a1", &["tank/db"], 10_000_000_000, slow_hash(hash_ms));
        let a2 = self.agent("node-a2", &[]);
        self.replicated(&a1, &a2).await;
        let (code, accepted) = self
            .post_drill(serde_json::json!({"source": "node-a1:tank/db"}))
            .await;
        assert_eq!(code, 202, "{accepted}");
        let job = accepted["job"].as_str().unwrap().to_string();
        wait_for("production to hash", Duration::from_secs(60), || async {
            a1.proc
                .output()
                .contains("command=HashSnapshot")
                .then_some(())
        })
        .await;
        (a1, a2, job)
    }

    /// Waits until the coordinator lists the replica with the source's snapshots.
    async fn replicated(&self, a1: &Agent, a2: &Agent) {
        wait_for("the replica", Duration::from_secs(90), || async {
            let src = on_disk(a1, "tank/db").filter(|v| !v.is_empty())?;
            let dst = on_disk(a2, REPLICA)?;
            let (_, p) = self
                .json("/api/v1/restore-points?node=node-a1&dataset=tank/db")
                .await;
            let listed = p["copies"][1]["snapshots"].as_array().map_or(0, Vec::len);
            (dst.len() == src.len() && listed == src.len()).then_some(())
        })
        .await;
    }
}

/// A simulated agent whose content hashes take `ms`.
fn slow_hash(ms: u64) -> AgentExtra {
    AgentExtra {
        hash_latency_ms: Some(ms),
        ..AgentExtra::default()
    }
}

/// Runs the built `zdr`, never with the caller's ZDR_COORDINATOR.
fn zdr(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("zdr"))
        .args(args)
        .env_remove("ZDR_COORDINATOR")
        .output()
        .expect("running zdr")
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Names and GUIDs, without holds.
fn snapshots(agent: &Agent, dataset: &str) -> Vec<(String, u64)> {
    on_disk(agent, dataset)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, g, _)| (n, g))
        .collect()
}

fn scratch_destroyed(agent: &Agent, scratch: &str) -> bool {
    agent
        .audit()
        .iter()
        .any(|r| r["action"] == "destroy -r" && r["target"] == scratch && r["outcome"] == "done")
}

/// A drill by hand restores the replica into scratch on its node, finds
/// the same content as production, times it, destroys the scratch and
/// leaves the replica as it was; it is listed with its result and shows in
/// the metrics. Bad requests are refused with what to do.
#[tokio::test]
async fn a_drill_passes_is_timed_cleaned_up_and_listed() {
    let s = Setup::start("").await;
    let a1 = s.agent("node-a1", &["tank/db", "tank/other"]);
    let a2 = s.agent("node-a2", &[]);
    s.replicated(&a1, &a2).await;
    let replica_before = snapshots(&a2, REPLICA);

    let (code, accepted) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/db"}))
        .await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["copy"]["node"], "node-a2");
    assert_eq!(accepted["copy"]["dataset"], REPLICA);
    let scratch = accepted["scratch"]["dataset"].as_str().unwrap().to_string();
    assert!(scratch.starts_with("backup/zdr-drill/"), "{scratch}");
    assert_eq!(
        accepted["snapshot"]["name"].as_str().unwrap(),
        replica_before.last().unwrap().0,
        "the newest snapshot both hold"
    );

    let job = accepted["job"].as_str().unwrap().to_string();
    let d = s
        .drill_ended("the drill to end", |d| d["job"] == job.as_str())
        .await;
    assert_eq!(d["state"], "passed", "{d:#}");
    let r = &d["result"];
    assert_eq!(r["level"], "files-hashed", "{d:#}");
    assert!(r["production_digest"].is_string());
    assert_eq!(r["production_digest"], r["restored_digest"]);
    let rto_ms = r["rto_ms"].as_u64().expect("a measured RTO");
    assert!(rto_ms >= r["transfer_ms"].as_u64().unwrap(), "{r}");
    assert_eq!(r["within_rto"], true, "an hour is plenty: {r}");
    assert_eq!(r["cleaned"], true);
    assert_eq!(d["rto_secs"], 3600);
    assert!(d["number"].is_null(), "run by hand");

    assert!(on_disk(&a2, &scratch).is_none(), "the scratch is gone");
    assert!(scratch_destroyed(&a2, &scratch), "its destroy is audited");
    assert_eq!(
        snapshots(&a2, REPLICA),
        replica_before,
        "the replica is untouched"
    );

    // The gauges, labelled by dataset and copy.
    let (_, metrics) = s.coordinator.get("/metrics").await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("zdr_drill_rto_seconds{"))
        .unwrap_or_else(|| panic!("no drill RTO gauge in:\n{metrics}"));
    for label in [
        r#"node="node-a1""#,
        r#"dataset="tank/db""#,
        r#"copy_node="node-a2""#,
    ] {
        assert!(line.contains(label), "{line}");
    }
    assert!(metrics.contains("zdr_drill_last_pass_timestamp_seconds{"));

    // A second drill: history keeps both, newest first.
    let (code, second) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/db", "copy": "node-a2"}))
        .await;
    assert_eq!(code, 202, "{second}");
    let job2 = second["job"].as_str().unwrap().to_string();
    s.drill_ended("the second drill", |d| d["job"] == job2.as_str())
        .await;
    let jobs: Vec<Value> = s.drills().await.iter().map(|d| d["job"].clone()).collect();
    assert_eq!(jobs, [Value::from(job2), Value::from(job)]);

    // The CLI: run (waits for the verdict), list, plan.
    let url = format!("http://127.0.0.1:{}", s.coordinator.http);
    let token = s.coordinator.token_file.display().to_string();
    let out = zdr(&[
        "--coordinator",
        &url,
        "--token-file",
        &token,
        "drill",
        "run",
        "node-a1:tank/db",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        run.contains("PASSED") && run.contains("gold by hand"),
        "{run}"
    );
    let out = zdr(&["--coordinator", &url, "drill", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(list.matches("PASSED").count(), 3, "{list}");
    let out = zdr(&["--coordinator", &url, "drill", "plan"]);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && plan.contains("gold #1") && plan.contains("node-a2"),
        "{plan}"
    );

    // Bad input: refused, nothing started.
    let (code, e) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/other"}))
        .await;
    assert_eq!(code, 404, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("is not protected"),
        "{e}"
    );
    let (code, e) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/db", "copy": "node-a1"}))
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("replicas are on node-a2"),
        "{e}"
    );
    let (code, e) = s.post_drill(serde_json::json!({"source": "tank/db"})).await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(s.drills().await.len(), 3, "nothing started");
}

/// A block of the replica went bad with its ZFS checksums intact (what
/// send/receive bugs did, OpenZFS #12762): the restore succeeds, only the
/// content hash tells, and the drill fails loudly, cleaning up all the same.
#[tokio::test]
async fn a_drill_of_a_corrupted_copy_fails_and_says_why() {
    let s = Setup::start("").await;
    let a1 = s.agent("node-a1", &["tank/db"]);
    let mut a2 = s.agent("node-a2", &[]);
    s.replicated(&a1, &a2).await;

    // Damage every snapshot of the replica in the stopped agent's pool file.
    a2.proc.kill();
    let file = a2.state_dir.join("sim-pools.json");
    let mut pools: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for snap in pools["datasets"][REPLICA]["snapshots"]
        .as_array_mut()
        .unwrap()
    {
        snap["damaged"] = serde_json::json!([7]);
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&pools).unwrap()).unwrap();
    let restarted = chrono_now();
    let a2 = s.agent("node-a2", &[]);
    wait_for(
        "node-a2's heartbeats again",
        Duration::from_secs(60),
        || async {
            let fleet = s.coordinator.fleet().await?;
            let seen = node_in(&fleet, "node-a2")?["last_seen"].as_i64()?;
            (seen >= restarted + 2).then_some(())
        },
    )
    .await;

    let (code, accepted) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/db"}))
        .await;
    assert_eq!(code, 202, "{accepted}");
    let job = accepted["job"].as_str().unwrap().to_string();
    let scratch = accepted["scratch"]["dataset"].as_str().unwrap().to_string();
    let d = s
        .drill_ended("the drill to end", |d| d["job"] == job.as_str())
        .await;
    assert_eq!(d["state"], "failed", "{d:#}");
    let r = &d["result"];
    assert!(
        r["why"].as_str().unwrap().contains("content differs"),
        "{d:#}"
    );
    assert_ne!(r["production_digest"], r["restored_digest"]);
    assert!(r["rto_ms"].is_null(), "no verified data, no RTO");
    assert_eq!(r["cleaned"], true);
    assert!(scratch_destroyed(&a2, &scratch));
    assert!(on_disk(&a2, &scratch).is_none());

    // Loudly: a critical alert names the dataset and the copy.
    let alert = wait_for("the drill alert", Duration::from_secs(30), || async {
        let (_, v) = s.json("/api/v1/alerts").await;
        v["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["alert"]["labels"]["alertname"] == "ZdrDrillFailed")
            .cloned()
    })
    .await;
    let labels = &alert["alert"]["labels"];
    assert_eq!(
        (
            &labels["node"],
            &labels["dataset"],
            &labels["copy"],
            &labels["severity"]
        ),
        (
            &"node-a1".into(),
            &"tank/db".into(),
            &"node-a2".into(),
            &"critical".into()
        ),
        "{alert}"
    );
}

/// With `drill: { every: 10s }`, the leader starts the class's drills by
/// itself: drill 1 ten seconds after it first saw the class, and so on;
/// `GET /api/v1/drills/plan` lists the ones to come with their copy.
#[tokio::test]
async fn the_scheduler_runs_a_due_drill_by_policy() {
    let s = Setup::start("    drill: { every: 10s, sample: 1 }\n").await;
    let a1 = s.agent("node-a1", &["tank/db"]);
    let a2 = s.agent("node-a2", &[]);
    s.replicated(&a1, &a2).await;
    let d = s
        .drill_ended("a scheduled drill to pass", |d| {
            d["number"].is_u64() && d["state"] == "passed"
        })
        .await;
    assert_eq!(d["class"], "gold");
    assert_eq!(d["copy"]["node"], "node-a2");
    assert_eq!(d["result"]["level"], "files-hashed");
    let (code, plan) = s.json("/api/v1/drills/plan").await;
    assert_eq!(code, 200, "{plan}");
    let next = &plan["drills"][0];
    assert_eq!(next["dataset"], "tank/db", "{plan}");
    assert_eq!(next["copy"], "node-a2", "{plan}");
    assert!(next["number"].as_u64().unwrap() > d["number"].as_u64().unwrap());
    // Drill numbers are never run twice.
    let mut numbers: Vec<u64> = s
        .drills()
        .await
        .iter()
        .filter_map(|d| d["number"].as_u64())
        .collect();
    let n = numbers.len();
    numbers.dedup();
    assert_eq!(numbers.len(), n, "{numbers:?}");
}

/// A drill node whose pool cannot hold another copy of the replica is
/// refused before anything is sent: no scratch, no drill, nothing audited.
#[tokio::test]
async fn a_drill_node_without_room_is_refused_before_any_transfer() {
    let s = Setup::start("").await;
    let a1 = s.agent_sized("node-a1", &["tank/db"], 10_000_000_000, Some(40_000_000));
    let a2 = s.agent_sized("node-a2", &[], 60_000_000, Some(40_000_000));
    s.replicated(&a1, &a2).await;
    // The free space the check reads is the one node-a2's heartbeats report.
    wait_for(
        "node-a2's pool with the replica in it",
        Duration::from_secs(30),
        || async {
            let fleet = s.coordinator.fleet().await?;
            let pools = node_in(&fleet, "node-a2")?["pools"].as_array()?.clone();
            let backup = pools.iter().find(|p| p["name"] == "backup")?;
            (backup["free"].as_u64()? < 40_000_000).then_some(())
        },
    )
    .await;
    let (code, e) = s
        .post_drill(serde_json::json!({"source": "node-a1:tank/db"}))
        .await;
    assert_eq!(code, 507, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.starts_with("drill node node-a2: pool backup has ") && msg.contains("free space there"),
        "{msg}"
    );
    assert!(s.drills().await.is_empty(), "no drill recorded");
    assert!(a2.audit().is_empty(), "nothing destroyed: {:?}", a2.audit());
    let (_, points) = s.json("/api/v1/fleet").await;
    assert!(
        !points.to_string().contains("zdr-drill"),
        "no scratch: {points}"
    );
}

/// A content hash takes longer than a command's answer may (production's
/// here: 14 s against the coordinator's 10 s command timeout; a real one
/// reads every byte). The drill waits for it and passes, and the agent
/// answers other commands meanwhile.
#[tokio::test]
async fn a_drill_waits_for_a_slow_content_hash_and_the_agent_keeps_answering() {
    let s = Setup::start("").await;
    let (_a1, _a2, job) = s.drill_while_hashing(14_000).await;
    // While production hashes, node-a1 takes a snapshot on command.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    let (code, body) = s
        .coordinator
        .post("/api/v1/nodes/node-a1/commands", r#"{"snapshot_now":{}}"#)
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "node-a1 answered after {:?}: its commands waited behind the hash",
        asked.elapsed()
    );
    let d = s
        .drill_ended("the drill to end", |d| d["job"] == job.as_str())
        .await;
    assert_eq!(d["state"], "passed", "{d:#}");
    assert!(
        d["result"]["hash_ms"].as_u64().unwrap_or(0) >= 14_000,
        "the hash did not take its modelled time: {d:#}"
    );
}

/// Production's agent restarts while it hashes: the drill does not wait out
/// its 24 h for an answer that cannot come; it asks the new process again
/// and passes.
#[tokio::test]
async fn a_drill_whose_hashing_agent_restarts_asks_again_and_passes() {
    let s = Setup::start("").await;
    let (mut a1, _a2, job) = s.drill_while_hashing(20_000).await;
    a1.proc.kill();
    let killed = std::time::Instant::now();
    let _a1 = s.agent_with("node-a1", &["tank/db"], 10_000_000_000, slow_hash(20_000));
    let d = s
        .drill_ended("the drill to end", |d| d["job"] == job.as_str())
        .await;
    assert_eq!(d["state"], "passed", "{d:#}");
    assert!(
        killed.elapsed() < Duration::from_secs(90),
        "the drill took {:?} after the restart",
        killed.elapsed()
    );
    let history = d["history"].as_array().unwrap();
    eprintln!("{history:#?}");
}
