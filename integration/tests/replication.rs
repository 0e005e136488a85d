//! Replication end to end: a real nats-server, the real coordinator and agents
//! (simulated ZFS), streams over the agents' mutual-TLS data plane. What
//! landed is read from each agent's pool file, not from what the agents say.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-a2: { site: site-a, media: hdd }
  node-b1: { site: site-b, media: ssd }
  node-b2: { site: site-b, media: hdd }
classes:
  fast:
    tiers: { 3s: 20 }
    rpo: 1m
    rto: 1h
    immutable_for: 0s
  slow:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/db"
    class: fast
  - match: "tank/big"
    class: slow
"#;

/// Copies of `tank/db` within each site on the other media, and to the other site.
const TASKS: &str = r#"version: 1
tasks:
  - name: local
    source: { match: "tank/db" }
    target: { site: same, media: different, root: "backup/{node}" }
    schedule: { every: 2s }
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
"#;

/// One big dataset to one other node, slow enough to cut mid-stream.
const TASKS_BIG: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/big", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    bandwidth: { limit: 4MB/s }
"#;

fn spec(node: &'static str) -> AgentSpec<'static> {
    let (site, media) = match node {
        "node-a1" => ("site-a", "ssd"),
        "node-a2" => ("site-a", "hdd"),
        "node-b1" => ("site-b", "ssd"),
        _ => ("site-b", "hdd"),
    };
    AgentSpec {
        node,
        site,
        media,
        datasets: &["tank/db", "tank/big"],
    }
}

/// The `offsite` job of node-a1 once it is done.
async fn offsite_job_done(c: &Coordinator, what: &str, timeout: Duration) -> Value {
    wait_for(what, timeout, || async {
        let all = jobs(c).await;
        let j = job_for(&all, "offsite", "node-a1")?;
        (j["state"] == "done").then(|| j.clone())
    })
    .await
}

/// Waits until the offsite job's stream has moved more than `bytes`.
async fn offsite_stream_past(c: &Coordinator, bytes: u64) {
    wait_for(
        "the offsite stream to be under way",
        Duration::from_secs(90),
        || async {
            let all = jobs(c).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            (j["state"] == "running" && j["bytes"].as_u64()? > bytes).then_some(())
        },
    )
    .await;
}

/// Snapshots a "planned" history line targets although an earlier "done"
/// line already reported them landed.
fn resent(history: &[String]) -> Vec<String> {
    let mut landed = Vec::new();
    let mut again = Vec::new();
    for line in history {
        if let Some(rest) = line.split_once(" done: ").map(|(_, r)| r) {
            if let Some(name) = rest.split_once('@').and_then(|(_, r)| r.split(' ').next()) {
                landed.push(name.to_string());
            }
        } else if let Some((_, steps)) = line.split_once(" step(s): ") {
            for step in steps.split(", ") {
                let to = step.split(' ').rev().find_map(|w| w.strip_prefix('@'));
                if let Some(to) = to.filter(|t| landed.iter().any(|l| l == t)) {
                    again.push(to.to_string());
                }
            }
        }
    }
    again
}

/// A fleet with the four nodes' certificates and a ready coordinator on `tasks`.
struct Setup {
    // Dropped in this order: the coordinator stops before the fleet's
    // nats-server and directory go.
    coordinator: Coordinator,
    pki: std::path::PathBuf,
    fleet: Fleet,
}

async fn setup(tasks: &str) -> Setup {
    setup_with(POLICY, tasks).await
}

async fn setup_with(policy: &str, tasks: &str) -> Setup {
    let fleet = Fleet::start(policy, Some(tasks)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-a2", "node-b1", "node-b2"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    Setup {
        coordinator,
        pki,
        fleet,
    }
}

impl Setup {
    fn path(&self) -> &Path {
        self.fleet.path()
    }

    fn agent(&self, node: &'static str, snapshot_bytes: Option<u64>) -> Agent {
        self.agent_with(
            node,
            AgentExtra {
                snapshot_bytes,
                ..AgentExtra::default()
            },
        )
    }

    /// With a 10 GB `backup` pool and the fleet's certificates unless `extra` says otherwise.
    fn agent_with(&self, node: &'static str, mut extra: AgentExtra) -> Agent {
        if extra.pools.is_empty() {
            extra.pools = vec![("backup".into(), 10_000_000_000)];
        }
        extra.pki.get_or_insert_with(|| self.pki.clone());
        self.fleet.agent_with(&spec(node), &extra)
    }
}

#[tokio::test]
async fn two_sites_get_their_copies_and_incrementals_follow() {
    let s = setup(TASKS).await;
    let a1 = s.agent("node-a1", None);
    let a2 = s.agent("node-a2", None);
    let b1 = s.agent("node-b1", None);
    let b2 = s.agent("node-b2", None);

    // Full copies, then at least two later rounds of incrementals.
    let done = wait_for(
        "local and offsite copies with incrementals",
        Duration::from_secs(120),
        || async {
            let all = jobs(&s.coordinator).await;
            let local_a = job_for(&all, "local", "node-a1")?;
            let local_b = job_for(&all, "local", "node-b1")?;
            let offsite = job_for(&all, "offsite", "node-a1")?;
            let copies = [
                (&a2, "backup/node-a1/tank/db"),
                (&b2, "backup/node-b1/tank/db"),
            ];
            for (agent, copy) in copies {
                if on_disk(agent, copy).map(|s| s.len()).unwrap_or(0) < 4 {
                    return None;
                }
            }
            let incrementals = |j: &Value| {
                j["history"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .filter(|l| l.as_str().is_some_and(|l| l.contains("-I @")))
                            .count()
                    })
                    .unwrap_or(0)
            };
            (offsite["state"] == "done" && incrementals(local_a) + incrementals(local_b) >= 1)
                .then(|| (local_a.clone(), offsite.clone()))
        },
    )
    .await;
    let (local_a, offsite) = done;
    assert_eq!(
        local_a["target_node"], "node-a2",
        "local copy on the other media: {local_a}"
    );
    let offsite_target = offsite["target_node"].as_str().unwrap().to_string();
    assert!(
        offsite_target.starts_with("node-b"),
        "offsite copy in the other site: {offsite}"
    );

    // Let the schedules settle between jobs, then read the disks.
    wait_for(
        "a quiet moment with every job done",
        Duration::from_secs(60),
        || async {
            let all = jobs(&s.coordinator).await;
            all.iter()
                .all(|j| j["state"] == "done" && j["moving_holds_to"].is_null())
                .then_some(())
        },
    )
    .await;
    assert_faithful(
        &a1,
        &a2,
        "tank/db",
        "backup/node-a1/tank/db",
        "zdr-repl-local",
    );
    assert_faithful(
        &b1,
        &b2,
        "tank/db",
        "backup/node-b1/tank/db",
        "zdr-repl-local",
    );
    let offsite_agent = if offsite_target == "node-b1" {
        &b1
    } else {
        &b2
    };
    assert_faithful(
        &a1,
        offsite_agent,
        "tank/db",
        "backup/node-a1/tank/db",
        "zdr-repl-offsite",
    );
    // No plan sends again what an earlier job of the pairing landed (a
    // coordinator planning from a lagging target inventory would).
    for j in jobs(&s.coordinator).await {
        let h = history(&j);
        assert_eq!(resent(&h), Vec::<String>::new(), "{h:#?}");
    }
    // Older bases are released: between jobs exactly one snapshot per side
    // holds the pairing's tag (during one, the source also holds what it sends).
    let held = |agent: &Agent, ds: &str, tag: &str| {
        on_disk(agent, ds)
            .unwrap()
            .iter()
            .filter(|(_, _, h)| h.iter().any(|t| t == tag))
            .count()
    };
    wait_for(
        "one held base per side",
        Duration::from_secs(60),
        || async {
            let copy = held(&a2, "backup/node-a1/tank/db", "zdr-repl-local");
            let source = held(&a1, "tank/db", "zdr-repl-local");
            assert!(
                copy <= 2 && source <= 2,
                "holds pile up: {copy} on the copy, {source} on the source"
            );
            (copy == 1 && source == 1).then_some(())
        },
    )
    .await;
}

/// Cuts the stream by killing one end, restarts it, and checks that the
/// next attempt resumed the saved partial receive and the copy is exact.
async fn interrupted(kill_target: bool) {
    let s = setup(TASKS_BIG).await;
    // 24 MB per snapshot at 4 MB/s: about 6 s per stream.
    let mut a1 = s.agent("node-a1", Some(24_000_000));
    let mut b1 = s.agent("node-b1", Some(24_000_000));
    let copy = "backup/node-a1/tank/big";

    let victim = if kill_target { &mut b1 } else { &mut a1 };
    // Killed once the target has saved some progress (every 4 MiB in the sim).
    wait_for(
        "the stream to be under way",
        Duration::from_secs(90),
        || async {
            let all = jobs(&s.coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            // Progress as the status API shows it: bytes, the estimate, rate and ETA.
            let running = j["state"] == "running" && j["bytes"].as_u64().unwrap_or(0) > 9_000_000;
            (running
                && j["size_hint"].as_u64()? > 20_000_000
                && j["eta_secs"].is_u64()
                && j["bytes_per_sec"].as_u64()? > 0)
                .then_some(())
        },
    )
    .await;
    victim.proc.kill();
    let restarted = if kill_target {
        assert!(
            partial_on_disk(&b1, copy),
            "no partial receive saved on the target"
        );
        b1 = s.agent("node-b1", Some(24_000_000));
        "target"
    } else {
        a1 = s.agent("node-a1", Some(24_000_000));
        "source"
    };

    // The history outlives the job: a later run (a newer snapshot) may be
    // the one shown when this wait looks, so the resumed run is found in it.
    let history = wait_for(
        "the job to finish after the restart",
        Duration::from_secs(120),
        || async {
            let all = jobs(&s.coordinator).await;
            let h = history(job_for(&all, "offsite", "node-a1")?);
            let resumed = h
                .iter()
                .rposition(|l| l.contains("resuming the saved partial receive"))?;
            h[resumed..]
                .iter()
                .any(|l| l.contains(" done: "))
                .then_some(h)
        },
    )
    .await;
    assert!(
        history.iter().any(|l| l.contains("failed")),
        "the cut attempt failed ({restarted} killed): {history:#?}"
    );
    // The resumed attempt sent only the rest of the stream.
    let resumed_bytes = sent_by_resumed_attempt(&history)
        .unwrap_or_else(|| panic!("no byte count for the resumed attempt: {history:#?}"));
    assert!(
        resumed_bytes < 20_000_000,
        "the resume sent {resumed_bytes} bytes, as much as a new stream ({restarted} killed): {history:#?}"
    );
    assert!(
        !partial_on_disk(&b1, copy),
        "the partial receive state is still there"
    );
    assert_faithful(&a1, &b1, "tank/big", copy, "zdr-repl-offsite");
}

/// The bytes the "done" line after the last resumed attempt says it sent.
fn sent_by_resumed_attempt(history: &[String]) -> Option<u64> {
    let resumed = history
        .iter()
        .rposition(|l| l.contains("resuming the saved partial receive"))?;
    let done = history[resumed..].iter().find(|l| l.contains(" done: "))?;
    let (_, rest) = done.rsplit_once(" sent ")?;
    rest.strip_suffix(" bytes")?.parse().ok()
}

#[tokio::test]
async fn a_killed_source_resumes_from_the_token() {
    interrupted(false).await;
}

#[tokio::test]
async fn a_killed_target_resumes_from_the_token() {
    interrupted(true).await;
}

/// A bit flipped on the wire between the agents fails the attempt on TLS's
/// integrity check; the history has both ends' word on it, and the retry
/// resumes from what had arrived intact and lands an exact copy.
#[tokio::test]
async fn a_corrupted_byte_in_transit_fails_the_attempt_and_the_retry_lands() {
    let s = setup(TASKS_BIG).await;
    let a1 = s.agent("node-a1", Some(24_000_000));
    let listen = free_port();
    // Past the TLS handshake and the first saved progress (every 4 MiB in the sim).
    let proxy = FlipProxy::start(listen, 9_000_000).await;
    let b1 = s.agent_with(
        "node-b1",
        AgentExtra {
            snapshot_bytes: Some(24_000_000),
            listen: Some(format!("127.0.0.1:{listen}")),
            advertise: Some(format!("127.0.0.1:{}", proxy.port)),
            ..AgentExtra::default()
        },
    );
    let job = offsite_job_done(
        &s.coordinator,
        "the job to finish after the corrupted attempt",
        Duration::from_secs(120),
    )
    .await;
    assert!(proxy.flipped(), "the proxy never flipped a bit");
    let history = history(&job);
    let failed: Vec<&String> = history
        .iter()
        .filter(|l| l.contains("attempt 1 ") && l.contains("failed"))
        .collect();
    // The target's TLS layer is the one that sees the corruption.
    assert!(
        failed
            .iter()
            .any(|l| l.contains("target node-b1") && l.contains("altered in transit")),
        "no word from the target on the corrupted stream: {history:#?}"
    );
    assert!(
        failed.iter().any(|l| l.contains("source node-a1")),
        "no word from the source: {history:#?}"
    );
    assert!(job["attempt"].as_u64().unwrap() >= 2, "{history:#?}");
    assert!(
        history
            .iter()
            .any(|l| l.contains("resuming the saved partial receive")),
        "the retry did not resume: {history:#?}"
    );
    assert_faithful(
        &a1,
        &b1,
        "tank/big",
        "backup/node-a1/tank/big",
        "zdr-repl-offsite",
    );
}

/// The copy keeps the task's retention, not the source's: older copies are
/// destroyed (audited) after each job, the held base never.
#[tokio::test]
async fn a_copy_is_pruned_to_the_tasks_retention() {
    let s = setup(
        r#"version: 1
tasks:
  - name: local
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: same, media: different, root: "backup/{node}" }
    schedule: { every: 2s }
    retention: { tiers: { 3s: 2 } }
"#,
    )
    .await;
    let a1 = s.agent("node-a1", None);
    let a2 = s.agent("node-a2", None);
    let copy = "backup/node-a1/tank/db";
    wait_for(
        "the copy to be pruned while the source keeps more",
        Duration::from_secs(120),
        || async {
            let pruned = a2
                .audit()
                .iter()
                .filter(|r| r["outcome"] == "done" && r["action"] == "destroy")
                .count();
            let source = on_disk(&a1, "tank/db")?.len();
            (pruned >= 3 && source >= 7).then_some(())
        },
    )
    .await;
    // Between jobs: two 3 s buckets, plus the newest, which is the held base.
    // (While a job lands its snapshot, the copy briefly has one more.)
    let on_copy = wait_for(
        "a quiet moment with the copy at its retention",
        Duration::from_secs(60),
        || async {
            let all = jobs(&s.coordinator).await;
            let j = job_for(&all, "local", "node-a1")?;
            let quiet = j["state"] == "done" && j["moving_holds_to"].is_null();
            let on_copy = on_disk(&a2, copy)?;
            (quiet && on_copy.len() <= 3).then_some(on_copy)
        },
    )
    .await;
    assert!(
        on_copy
            .iter()
            .any(|(_, _, holds)| holds.iter().any(|t| t == "zdr-repl-local")),
        "the base is still there and held: {on_copy:?}"
    );
    assert!(on_disk(&a1, "tank/db").unwrap().len() > on_copy.len());
    assert_faithful(&a1, &a2, "tank/db", copy, "zdr-repl-local");
    let audit = a2.audit();
    let why = audit
        .iter()
        .find(|r| r["action"] == "destroy")
        .map(|r| r["why"].as_str().unwrap_or("").to_string())
        .unwrap();
    assert!(why.contains("task local keeps 3s 2"), "{why}");
    assert!(
        audit
            .iter()
            .filter(|r| r["action"] == "destroy")
            .all(|r| r["target"].as_str().unwrap().starts_with(copy)),
        "only the copy was pruned on the target"
    );
}

/// The leader dies mid-stream: the standby takes over, cancels the attempt
/// the agents are still running for the dead leader, and resumes it.
/// A leader killed mid-stream: the standby that takes over asks both agents
/// how the attempt stands and adopts it, so the healthy transfer goes on
/// instead of being cancelled and sent again.
#[tokio::test]
async fn a_new_leader_adopts_the_attempt_still_streaming() {
    let mut s = setup(TASKS_BIG).await;
    let standby = s.fleet.coordinator("c2");
    // 48 MB at 4 MB/s: about 12 s per stream, longer than a takeover.
    let a1 = s.agent("node-a1", Some(48_000_000));
    let b1 = s.agent("node-b1", Some(48_000_000));
    let copy = "backup/node-a1/tank/big";
    offsite_stream_past(&s.coordinator, 6_000_000).await;
    s.coordinator.proc.kill();
    standby.wait_ready().await;
    let job = offsite_job_done(
        &standby,
        "the new leader to finish the job",
        Duration::from_secs(120),
    )
    .await;
    let history = history(&job);
    assert!(
        history
            .iter()
            .any(|l| l.contains("adopted by a new leader")),
        "{history:#?}"
    );
    assert!(
        !history.iter().any(|l| l.contains("failed")),
        "no attempt failed: {history:#?}"
    );
    let (out_a1, out_b1) = (a1.proc.output(), b1.proc.output());
    assert!(
        !out_a1.contains("cancelled by the coordinator")
            && !out_b1.contains("cancelled by the coordinator"),
        "nothing was cancelled: {history:#?}"
    );
    assert_faithful(&a1, &b1, "tank/big", copy, "zdr-repl-offsite");
}

/// Bad input ends in a clear error in the job's state, is retried, and
/// touches nothing else.
#[tokio::test]
async fn bad_targets_fail_the_job_with_a_clear_error() {
    let s = setup(TASKS_BIG).await;
    let a1 = s.agent("node-a1", Some(24_000_000));

    // A target pool far too small for the stream.
    let small = s.agent_with(
        "node-b1",
        AgentExtra {
            pools: vec![("backup".into(), 5_000_000)],
            ..AgentExtra::default()
        },
    );
    let job = wait_for(
        "the job to fail for lack of space, twice",
        Duration::from_secs(90),
        || async {
            let all = jobs(&s.coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            (j["state"] == "failed" && j["attempt"].as_u64()? >= 2).then(|| j.clone())
        },
    )
    .await;
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("space") && error.contains("backup"),
        "{job:#}"
    );
    let before = on_disk(&a1, "tank/big").unwrap();
    drop(small);

    // A target whose advertised address nobody listens on.
    let closed = free_port();
    let _b1 = s.agent_with(
        "node-b1",
        AgentExtra {
            pools: vec![("backup2".into(), 10_000_000_000)],
            advertise: Some(format!("127.0.0.1:{closed}")),
            ..AgentExtra::default()
        },
    );
    let job = wait_for(
        "the job to fail on the unreachable peer",
        Duration::from_secs(90),
        || async {
            let all = jobs(&s.coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            let e = j["error"].as_str()?;
            e.contains(&format!("127.0.0.1:{closed}"))
                .then(|| j.clone())
        },
    )
    .await;
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("connecting to") && error.contains("refused"),
        "{job:#}"
    );

    // The source lost nothing and kept its snapshots unheld but for the send.
    let after = on_disk(&a1, "tank/big").unwrap();
    let names = |v: &[(String, u64, Vec<String>)]| {
        v.iter()
            .map(|(n, g, _)| (n.clone(), *g))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&before)[..], names(&after)[..before.len()]);

    // A command for a dataset the agent does not have names it.
    let body = r#"{"send":{"job":"j1","token":"0000000000000000000000000000000000000000000000000000000000000000","target_node":"node-b1","target_addr":"127.0.0.1:9","dataset":"tank/nope","stream":{"kind":"full","snapshot":"x"},"raw":true,"compress":false,"bytes_per_sec":null,"hold_tag":"t"}}"#;
    let (code, reply) = s
        .coordinator
        .post("/api/v1/nodes/node-a1/commands", body)
        .await
        .unwrap();
    assert_eq!(code, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["outcome"], "failed", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("tank/nope"),
        "{reply}"
    );
}

/// A new cap in the tasks file reaches the running send: same attempt, new rate.
#[tokio::test]
async fn a_rate_change_reaches_the_running_job() {
    let slow = TASKS_BIG.replace("limit: 4MB/s", "limit: 1MB/s");
    let s = setup(&slow).await;
    let _a1 = s.agent("node-a1", Some(24_000_000));
    let _b1 = s.agent("node-b1", Some(24_000_000));
    offsite_stream_past(&s.coordinator, 1_000_000).await;
    // The coordinator rereads its files while it leads.
    std::fs::write(
        s.path().join("tasks.yml"),
        slow.replace("limit: 1MB/s", "limit: 40MB/s"),
    )
    .unwrap();
    let job = offsite_job_done(
        &s.coordinator,
        "the job to finish at the new rate",
        Duration::from_secs(60),
    )
    .await;
    let history = history(&job);
    assert!(
        history.iter().any(|l| l.contains("rate now 40000000 B/s")),
        "{history:#?}"
    );
    assert_eq!(job["attempt"], 1, "the job was restarted: {history:#?}");
    assert!(
        !history.iter().any(|l| l.contains("failed")),
        "{history:#?}"
    );
    // At 1 MB/s the 24 MB stream would have taken 24 s.
    let took = job["finished_at_ms"].as_i64().unwrap() - job["started_at_ms"].as_i64().unwrap();
    assert!(took < 20_000, "took {took} ms: the new rate did not apply");
}

/// `tank/big` keeps only its three newest snapshots, taken every 2 s: the
/// source prunes what a slow offsite stream is still carrying.
const POLICY_CHURN: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: ssd }
classes:
  churn:
    tiers: { 2s: 3 }
    rpo: 1h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/big"
    class: churn
"#;

/// The defect that blocked a pairing for good: source retention pruned a
/// snapshot the target had already received from an `-I` stream, the
/// coordinator died, the stream was cut, and every later plan read the
/// target as diverged. Now the source bookmarks what it prunes, and the
/// planner continues from the bookmark: no rollback, no new full.
#[tokio::test]
async fn a_stream_cut_while_the_source_prunes_continues_from_a_bookmark() {
    let mut s = setup_with(POLICY_CHURN, TASKS_BIG).await;
    let standby = s.fleet.coordinator("c2");
    // 12 MB per snapshot at 4 MB/s: 3 s each, while one is taken every 2 s,
    // so every incremental carries several snapshots.
    let bytes = Some(12_000_000);
    let mut a1 = s.agent("node-a1", bytes);
    let b1 = s.agent("node-b1", bytes);
    let copy = "backup/node-a1/tank/big";

    // An -I stream of several snapshots, with at least one of them landed.
    let before_cut = wait_for(
        "an incremental of several snapshots under way",
        Duration::from_secs(120),
        || async {
            let all = jobs(&s.coordinator).await;
            let j = job_for(&all, "offsite", "node-a1")?;
            let plan = history(j).last()?.clone();
            let several = plan.contains("-I @") && j["size_hint"].as_u64()? > 30_000_000;
            let one_in = j["bytes"].as_u64()? > 16_000_000;
            (j["state"] == "running" && several && one_in).then_some(plan)
        },
    )
    .await;
    // The coordinator and the source die together: no one adopts the stream.
    s.coordinator.proc.kill();
    a1.proc.kill();
    // What landed from the cut stream: the snapshots after the held base.
    let on_target = on_disk(&b1, copy).unwrap();
    let base = on_target
        .iter()
        .rposition(|(_, _, holds)| holds.iter().any(|t| t == "zdr-repl-offsite"))
        .expect("a held base on the target");
    let received: Vec<(String, u64)> = on_target[base + 1..]
        .iter()
        .map(|(n, g, _)| (n.clone(), *g))
        .collect();
    assert!(
        !received.is_empty(),
        "the cut stream landed a snapshot first: {on_target:?}"
    );
    a1 = s.agent("node-a1", bytes);
    standby.wait_ready().await;

    // The source prunes a snapshot the target holds, keeping its bookmark.
    let pruned = wait_for(
        "the source to prune a snapshot the target received",
        Duration::from_secs(60),
        || async {
            let src = on_disk(&a1, "tank/big")?;
            let (name, guid) = received
                .iter()
                .find(|(n, _)| !src.iter().any(|(m, _, _)| m == n))?;
            Some((name.clone(), *guid))
        },
    )
    .await;

    // The pairing goes on: a later attempt lands a newer snapshot.
    let job = wait_for(
        "a later attempt to land after the prune",
        Duration::from_secs(120),
        || async {
            let all = jobs(&standby).await;
            let j = job_for(&all, "offsite", "node-a1")?.clone();
            let newer = on_disk(&b1, copy)?.last()?.0 > pruned.0;
            (j["state"] == "done" && newer).then_some(j)
        },
    )
    .await;
    // The history keeps its last lines only: the cut's last line may have
    // rolled out of it, and then every line is from after the cut.
    let full = history(&job);
    let after_cut = match full.iter().rposition(|l| *l == before_cut) {
        Some(i) => &full[i + 1..],
        None => &full[..],
    };
    assert!(
        !after_cut
            .iter()
            .any(|l| l.contains("diverged") || l.contains("with -F") || l.contains("full @")),
        "no block, rollback or new full after the cut: {after_cut:#?}"
    );
    assert!(
        after_cut.iter().any(|l| l.contains(" #")),
        "an attempt was planned from a bookmark: {after_cut:#?}"
    );
    // The partial receive of a pruned snapshot was dropped at planning,
    // not found out by a failing send.
    assert!(
        !after_cut.iter().any(|l| l.contains("does not exist")),
        "{after_cut:#?}"
    );
    // The target kept what it had: nothing rolled back. Its own retention
    // may have pruned the snapshot since (2 s tiers), audited as a destroy.
    let dst = on_disk(&b1, copy).unwrap();
    let audit = b1.audit();
    assert!(
        !audit
            .iter()
            .any(|r| r["action"] == "receive -F"
                && r["target"].as_str().unwrap_or("").starts_with(copy)),
        "the copy was rolled back: {audit:#?}"
    );
    let pruned_name = format!("{copy}@{}", pruned.0);
    assert!(
        dst.iter().any(|(n, g, _)| *n == pruned.0 && *g == pruned.1)
            || audit.iter().any(|r| r["action"] == "destroy"
                && r["target"] == pruned_name.as_str()
                && r["outcome"] == "done"),
        "{pruned_name} is gone from the target without a retention destroy: {dst:?} {audit:#?}"
    );
    let src = on_disk(&a1, "tank/big").unwrap();
    let marks = bookmarks_on_disk(&a1, "tank/big");
    for (name, guid, _) in &dst {
        let known = src.iter().any(|(n, g, _)| n == name && g == guid)
            || marks.iter().any(|(n, g)| n == name && g == guid);
        assert!(
            known,
            "{copy}@{name} ({guid}) is neither a source snapshot nor a bookmark"
        );
    }
}
