//! Kill -9 trials on the simulated fleet (issue 18): a real nats-server,
//! coordinator and two agents (simulated ZFS) replicating a dataset that
//! snapshots and prunes every few seconds; a seeded plan kills one of the
//! four processes at a time and restarts it. After the last fault the pair
//! must recover; then a restore and a drill from the copy each run through
//! one more kill, and the invariants of `zdr_integration::trials` must hold.
//!
//! CI runs a short seeded subset; `ops/bench-trials.sh` runs 100 trials:
//!
//! - `ZDR_TRIALS` trials (2), `ZDR_TRIAL_FAULTS` kills each (3),
//! - `ZDR_TRIAL_SEED` (20261206): the same seed replays the same plan,
//! - `ZDR_TRIAL_FIRST` (0): the first trial number, to replay one trial.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use zdr_integration::trials::{self, Audited, Fault, Victim, Violation};
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: ssd }
classes:
  churn:
    tiers: { 4s: 4, 16s: 3 }
    rpo: 1h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/big"
    class: churn
"#;

/// The class's tiers, as the check needs them.
const TIERS: [(u64, u32); 2] = [(4, 4), (16, 3)];

const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/big", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    bandwidth: { limit: 16MB/s }
"#;

/// 64 MB per snapshot at 16 MB/s: 4 s a stream, so most kills land mid-stream;
/// the simulator saves a partial receive every 4 MiB.
const SNAPSHOT_BYTES: u64 = 64_000_000;
/// One snapshot's incremental stream in the simulator, records included
/// (a full one is 98,288 bytes longer: 0.15 %, within what the check reads).
const SNAPSHOT_STREAM: u64 = 64_000_185;
const DATASET: &str = "tank/big";
const COPY: &str = "backup/node-a1/tank/big";
const RECOVERY: Duration = Duration::from_secs(180);
/// How long a restore or drill may take to end after its kill's restart.
const PHASE_END: Duration = Duration::from_secs(180);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
        .unwrap_or(default)
}

fn spec(node: &'static str) -> AgentSpec<'static> {
    AgentSpec {
        node,
        site: if node == "node-a1" {
            "site-a"
        } else {
            "site-b"
        },
        media: "ssd",
        datasets: &[DATASET],
    }
}

/// `node` on the simulated backend, with a 100 GB `backup` pool.
fn agent(fleet: &Fleet, pki: &std::path::Path, node: &'static str) -> Agent {
    let extra = AgentExtra {
        snapshot_bytes: Some(SNAPSHOT_BYTES),
        pools: vec![("backup".into(), 100_000_000_000)],
        pki: Some(pki.to_path_buf()),
        ..AgentExtra::default()
    };
    fleet.agent_with(&spec(node), &extra)
}

/// One trial's fleet, and what it saw of the job while the faults ran.
struct World {
    coordinator: Coordinator,
    source: Agent,
    target: Agent,
    pki: std::path::PathBuf,
    fleet: Fleet,
    /// The job's history, merged across polls (the record keeps its last lines only).
    history: Vec<String>,
    failed_without_reason: Vec<String>,
}

impl World {
    async fn start() -> World {
        let fleet = Fleet::start(POLICY, Some(TASKS)).await;
        let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
        let coordinator = fleet.coordinator("c1");
        coordinator.wait_ready().await;
        World {
            source: agent(&fleet, &pki, "node-a1"),
            target: agent(&fleet, &pki, "node-b1"),
            coordinator,
            pki,
            fleet,
            history: Vec::new(),
            failed_without_reason: Vec::new(),
        }
    }

    fn agent(&self, node: &'static str) -> Agent {
        agent(&self.fleet, &self.pki, node)
    }

    /// One look at the job: merges its history.
    async fn look(&mut self) -> Option<Value> {
        let all = jobs(&self.coordinator).await;
        let job = job_for(&all, "offsite", "node-a1")?.clone();
        merge(&mut self.history, &history(&job));
        if job["state"] == "failed" && job["error"].as_str().is_none_or(str::is_empty) {
            self.failed_without_reason.push(format!("{job}"));
        }
        Some(job)
    }

    /// Looks at the job every 250 ms for `d`.
    async fn watch(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.look().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn kill_and_restart(&mut self, f: &Fault) {
        match f.victim {
            Victim::Source => self.source.proc.kill(),
            Victim::Target => self.target.proc.kill(),
            Victim::Coordinator => self.coordinator.proc.kill(),
            Victim::Nats => self.fleet.nats.stop(),
        }
        tokio::time::sleep(Duration::from_millis(f.down_ms)).await;
        match f.victim {
            Victim::Source => self.source = self.agent("node-a1"),
            Victim::Target => self.target = self.agent("node-b1"),
            Victim::Coordinator => {
                self.coordinator = self.fleet.coordinator("c1");
                self.coordinator.wait_ready().await;
            }
            Victim::Nats => self.fleet.nats.restart().await,
        }
    }
}

/// Appends the lines of `now` that follow the last line already in `seen`.
fn merge(seen: &mut Vec<String>, now: &[String]) {
    let start = match seen.last() {
        Some(last) => now.iter().rposition(|l| l == last).map_or(0, |i| i + 1),
        None => 0,
    };
    seen.extend(now[start..].iter().cloned());
}

fn audit_of(agent: &Agent) -> Vec<Audited> {
    agent
        .audit()
        .iter()
        .map(|r| Audited {
            action: r["action"].as_str().unwrap_or("").into(),
            target: r["target"].as_str().unwrap_or("").into(),
            outcome: r["outcome"].as_str().unwrap_or("").into(),
        })
        .collect()
}

/// What one trial found.
#[derive(Debug, Default)]
struct Outcome {
    violations: Vec<Violation>,
    recovered_in: Option<Duration>,
    /// Per resumed landing: the share of the stream sent twice.
    resent: Vec<f64>,
    /// The kills of the restore and drill phases, when they ran.
    phase_faults: Vec<Fault>,
}

async fn trial(seed: u64, n: u64, faults: &[Fault]) -> Outcome {
    let begun = Instant::now();
    let mut w = World::start().await;
    eprintln!("trial {n}: fleet up in {:?}", begun.elapsed());
    let mut out = Outcome::default();
    // The first stream under way.
    let start = Instant::now();
    loop {
        let job = w.look().await;
        if job.is_some_and(|j| j["state"] == "running" && j["bytes"].as_u64() > Some(0)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "trial {n} (seed {seed}): no stream started within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("trial {n}: first stream under way at {:?}", begun.elapsed());
    for f in faults {
        w.watch(Duration::from_millis(f.after_ms)).await;
        eprintln!(
            "trial {n}: kill -9 the {} for {} ms",
            f.victim.name(),
            f.down_ms
        );
        w.kill_and_restart(f).await;
    }
    // Recovery: a snapshot taken after the last restart lands on the copy.
    let restarted = chrono::Utc::now().timestamp();
    let start = Instant::now();
    while start.elapsed() < RECOVERY {
        w.look().await;
        let landed_after = on_disk(&w.target, COPY).is_some_and(|c| {
            c.iter()
                .any(|(name, _, _)| trials::created_at(name, "zdr").is_some_and(|t| t >= restarted))
        });
        if landed_after {
            out.recovered_in = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if out.recovered_in.is_none() {
        let job = w.look().await.unwrap_or_default();
        out.violations.push(Violation(format!(
            "stuck: no snapshot taken after the last restart reached the copy within {} s; job: state {} error {}",
            RECOVERY.as_secs(),
            job["state"],
            job["error"]
        )));
    }
    // A restore and a drill from the copy, each with a kill -9 while it runs.
    if out.recovered_in.is_some() {
        let [restore, drill] = trials::phase_plan(seed, n);
        out.violations
            .extend(restore_phase(&mut w, n, &restore).await);
        out.violations.extend(drill_phase(&mut w, n, &drill).await);
        out.phase_faults = vec![restore, drill];
    }
    // Everything stops before the disks and audits are read, so that they
    // agree with each other.
    w.coordinator.proc.kill();
    w.source.proc.kill();
    w.target.proc.kill();

    let src = on_disk(&w.source, DATASET).unwrap_or_default();
    let copy = on_disk(&w.target, COPY).unwrap_or_default();
    let marks = bookmarks_on_disk(&w.source, DATASET);
    let (src_audit, dst_audit) = (audit_of(&w.source), audit_of(&w.target));
    out.violations
        .extend(trials::unaudited_destroys(&src_audit));
    out.violations
        .extend(trials::unaudited_destroys(&dst_audit));
    let present: HashSet<String> = src.iter().map(|(n, _, _)| n.clone()).collect();
    let prefix = format!("{DATASET}@");
    let ever: HashSet<String> = present
        .iter()
        .cloned()
        .chain(
            src_audit
                .iter()
                .filter(|r| r.outcome == "done")
                .filter_map(|r| r.target.strip_prefix(&prefix).map(String::from)),
        )
        .collect();
    out.violations
        .extend(trials::lost_representatives(&ever, &present, "zdr", &TIERS));
    let pairs = |v: &[(String, u64, Vec<String>)]| -> Vec<(String, u64)> {
        v.iter().map(|(n, g, _)| (n.clone(), *g)).collect()
    };
    out.violations
        .extend(trials::foreign_on_copy(&pairs(&copy), &pairs(&src), &marks));
    out.violations.extend(
        w.failed_without_reason
            .iter()
            .map(|j| Violation(format!("a job failed without a reason: {j}"))),
    );
    out.resent = trials::resent_by_resumes(&w.history, SNAPSHOT_STREAM);
    eprintln!(
        "trial {n} (seed {seed}) history:\n  {}",
        w.history.join("\n  ")
    );
    out
}

/// Polls GET `path` until `pick` finds the ended record in its body; `None`
/// after [`PHASE_END`]. The coordinator may be restarting meanwhile.
async fn until_ended(
    w: &World,
    path: &str,
    pick: impl Fn(&Value) -> Option<Value>,
) -> Option<Value> {
    let start = Instant::now();
    while start.elapsed() < PHASE_END {
        if let Some((200, body)) = w.coordinator.get(path).await {
            if let Some(v) = serde_json::from_str::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(&pick)
            {
                return Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// POSTs `body` to `path`; the 202 answer, or why there is none. First waits
/// (bounded) for both nodes online: a coordinator just restarted by the last
/// kill rightly refuses a copy it has not heard from yet.
async fn accepted(w: &World, path: &str, body: Value) -> Result<Value, Violation> {
    let start = Instant::now();
    loop {
        let online = match w.coordinator.get("/api/v1/fleet").await {
            Some((200, f)) => serde_json::from_str::<Value>(&f).is_ok_and(|f| {
                ["node-a1", "node-b1"]
                    .iter()
                    .all(|n| node_in(&f, n).is_some_and(|n| n["online"] == true))
            }),
            _ => false,
        };
        if online {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(Violation(format!(
                "before POST {path}: the nodes were not both online within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match w.coordinator.post(path, &body.to_string()).await {
        Some((202, reply)) => Ok(serde_json::from_str(&reply).unwrap_or_default()),
        Some((code, reply)) => Err(Violation(format!(
            "POST {path} {body} answered {code}: {reply}"
        ))),
        None => Err(Violation(format!(
            "POST {path}: the coordinator did not answer"
        ))),
    }
}

/// Restores the source from the copy (node-b1) into a new dataset on its
/// own node while `f` kills a process: the restore must end, and a done one
/// must have landed the GUID it chose.
async fn restore_phase(w: &mut World, n: u64, f: &Fault) -> Vec<Violation> {
    let to = format!("tank/restored-{n}");
    let body = serde_json::json!({
        "source": format!("node-a1:{DATASET}"), "from": "node-b1", "to": format!("node-a1:{to}")
    });
    let a = match accepted(w, "/api/v1/restores", body).await {
        Ok(a) => a,
        Err(v) => return vec![v],
    };
    let job = a["job"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "trial {n}: restore {job} of @{} from node-b1; kill -9 the {} after {} ms for {} ms",
        a["snapshot"]["name"],
        f.victim.name(),
        f.after_ms,
        f.down_ms
    );
    tokio::time::sleep(Duration::from_millis(f.after_ms)).await;
    w.kill_and_restart(f).await;
    let path = format!("/api/v1/restores/{job}");
    let ended = |s: &Value| (s["state"] == "done" || s["state"] == "failed").then(|| s.clone());
    let Some(status) = until_ended(w, &path, ended).await else {
        return vec![Violation(format!(
            "stuck: restore {job} did not end within {} s of the restart",
            PHASE_END.as_secs()
        ))];
    };
    eprintln!(
        "trial {n}: restore {job} ended {} (error {})",
        status["state"], status["error"]
    );
    let mut v = Vec::new();
    if status["state"] == "failed" && status["error"].as_str().is_none_or(str::is_empty) {
        v.push(Violation(format!(
            "restore {job} failed without a reason: {status}"
        )));
    }
    if status["state"] == "done" {
        let chosen = a["snapshot"]["guid"].as_u64();
        let landed = on_disk(&w.source, &to).and_then(|s| s.last().map(|(_, g, _)| *g));
        if chosen.is_none() || landed != chosen {
            v.push(Violation(format!(
                "restore {job} says done, but {to}'s newest GUID is {landed:?}, not the chosen {chosen:?}"
            )));
        }
    }
    v
}

/// Drills the copy while `f` kills a process: the drill must end, a failed
/// one must say why, and its scratch must be gone from the drill node.
async fn drill_phase(w: &mut World, n: u64, f: &Fault) -> Vec<Violation> {
    let body = serde_json::json!({ "source": format!("node-a1:{DATASET}") });
    let a = match accepted(w, "/api/v1/drills", body).await {
        Ok(a) => a,
        Err(v) => return vec![v],
    };
    let job = a["job"].as_str().unwrap_or_default().to_string();
    let scratch = a["scratch"]["dataset"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "trial {n}: drill {job} into {scratch}; kill -9 the {} after {} ms for {} ms",
        f.victim.name(),
        f.after_ms,
        f.down_ms
    );
    tokio::time::sleep(Duration::from_millis(f.after_ms)).await;
    w.kill_and_restart(f).await;
    let ended = |v: &Value| {
        v["drills"]
            .as_array()?
            .iter()
            .find(|d| d["job"] == job.as_str() && d["state"] != "running")
            .cloned()
    };
    let Some(d) = until_ended(w, "/api/v1/drills", ended).await else {
        return vec![Violation(format!(
            "stuck: drill {job} did not end within {} s of the restart",
            PHASE_END.as_secs()
        ))];
    };
    let why = d["result"]["why"].as_str().unwrap_or_default();
    eprintln!("trial {n}: drill {job} ended {} ({why})", d["state"]);
    let mut v = Vec::new();
    if d["state"] == "failed" && why.is_empty() {
        v.push(Violation(format!(
            "drill {job} failed without a reason: {d}"
        )));
    }
    // Cleanup runs as the drill ends, or when a killed target starts again;
    // the hold that kept production's snapshot for the hash goes too.
    let tag = format!("zdr-drill-{job}");
    let start = Instant::now();
    loop {
        let scratch_left = on_disk(&w.target, &scratch).is_some();
        let held = on_disk(&w.source, DATASET)
            .is_some_and(|s| s.iter().any(|(_, _, tags)| tags.contains(&tag)));
        if !scratch_left && !held {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            v.push(Violation(format!(
                "drill {job} ended {} but after 60 s its scratch is {} node-b1 and {DATASET} {} the hold {tag}",
                d["state"],
                if scratch_left { "still on" } else { "gone from" },
                if held { "still has" } else { "lost" },
            )));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    v
}

#[tokio::test]
async fn kill_9_trials_keep_every_invariant() {
    let count = env("ZDR_TRIALS", 2);
    let first = env("ZDR_TRIAL_FIRST", 0);
    let seed = env("ZDR_TRIAL_SEED", 20_261_206);
    let per = env("ZDR_TRIAL_FAULTS", 3) as usize;
    let mut injected: BTreeMap<Victim, usize> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut resent = Vec::new();
    let mut recovery = Vec::new();
    for n in first..first + count {
        let faults = trials::plan(seed, n, per);
        let out = trial(seed, n, &faults).await;
        for f in faults.iter().chain(&out.phase_faults) {
            *injected.entry(f.victim).or_default() += 1;
        }
        eprintln!(
            "trial {n}: {} violation(s), recovered in {:?}, re-sent {:?}",
            out.violations.len(),
            out.recovered_in,
            out.resent
        );
        violations.extend(
            out.violations
                .into_iter()
                .map(|v| format!("trial {n} (seed {seed}): {}", v.0)),
        );
        resent.extend(out.resent);
        recovery.extend(out.recovered_in);
    }
    resent.sort_by(f64::total_cmp);
    recovery.sort();
    let pct = |f: f64| format!("{:.1} %", f * 100.0);
    println!(
        "kill -9 trials: {count} from #{first}, seed {seed}, {per} faults each during replication, \
         then one during a restore and one during a drill"
    );
    for (v, c) in &injected {
        println!("  faults injected, {}: {c}", v.name());
    }
    println!("  invariant violations: {}", violations.len());
    let over = resent.iter().filter(|f| **f >= 0.05).count();
    println!(
        "  resumed landings: {} ({over} re-sent 5 % or more of their stream); re-sent median {}, max {}",
        resent.len(),
        resent.get(resent.len() / 2).copied().map_or("-".into(), pct),
        resent.last().copied().map_or("-".into(), pct),
    );
    println!(
        "  recovery after the last restart: median {:?}, max {:?}",
        recovery.get(recovery.len() / 2),
        recovery.last()
    );
    assert!(violations.is_empty(), "{violations:#?}");
}
