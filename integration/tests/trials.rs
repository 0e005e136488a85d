//! Kill -9 trials on the simulated fleet (issue 18): a real nats-server,
//! coordinator and two agents (simulated ZFS) replicating a dataset that
//! snapshots and prunes every few seconds; a seeded plan kills one of the
//! four processes at a time and restarts it. After the last fault the pair
//! must recover, and the invariants of `zdr_integration::trials` must hold.
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
        for f in &faults {
            *injected.entry(f.victim).or_default() += 1;
        }
        let out = trial(seed, n, &faults).await;
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
    println!("kill -9 trials: {count} from #{first}, seed {seed}, {per} faults each");
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
