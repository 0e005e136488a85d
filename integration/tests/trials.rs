//! Kill -9 trials (issue 18): a real nats-server, coordinator and two
//! agents replicating a dataset that snapshots and prunes every few seconds;
//! a seeded plan kills one of the four processes at a time and restarts it.
//! After the last fault the pair must recover; then a restore and a drill
//! from the copy each run through one more kill, and the invariants of
//! `zdr_integration::trials` must hold.
//!
//! Two lanes run the same trials ([`Lane`]):
//! - the simulated fleet (agents on the sim backend): CI runs a short seeded
//!   subset; `ops/bench-trials.sh` runs 100 trials;
//! - real OpenZFS in the VM lane (`ZDR_TRIAL_ZFS=1`, set by
//!   `integration/zfs-vm/trials.sh`): agents on the cli backend, each on its
//!   own pool, made afresh for every trial, with a writer filling the dataset.
//!
//! - `ZDR_TRIALS` trials (2), `ZDR_TRIAL_FAULTS` kills each (3),
//! - `ZDR_TRIAL_SEED` (20261206): the same seed replays the same plan,
//! - `ZDR_TRIAL_FIRST` (0): the first trial number, to replay one trial,
//! - `ZDR_TRIAL_ONLY` (`2,9,15`): these trials instead, to replay several,
//! - `ZDR_TRIAL_LOGS`: a directory to copy each trial's process logs into.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use zdr_integration::trials::{self, Audited, Fault, Victim, Violation};
use zdr_integration::*;

/// The trial's policy: one class with `tiers` (`[(every secs, keep); 2]`).
fn policy(tiers: [(u64, u32); 2]) -> String {
    let [(a, n), (b, m)] = tiers;
    format!(
        r#"version: 1
sites:
  site-a: {{}}
  site-b: {{}}
nodes:
  node-a1: {{ site: site-a, media: ssd }}
  node-b1: {{ site: site-b, media: ssd }}
classes:
  churn:
    tiers: {{ {a}s: {n}, {b}s: {m} }}
    rpo: 1h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/big"
    class: churn
"#
    )
}

/// The trial's one task: `tank/big` to the other site every `every_secs`,
/// at `mb_per_sec`.
fn tasks(every_secs: u64, mb_per_sec: u64) -> String {
    format!(
        r#"version: 1
tasks:
  - name: offsite
    source: {{ match: "tank/big", nodes: [node-a1] }}
    target: {{ site: other, root: "backup/{{node}}" }}
    schedule: {{ every: {every_secs}s }}
    bandwidth: {{ limit: {mb_per_sec}MB/s }}
"#
    )
}

const DATASET: &str = "tank/big";
const COPY: &str = "backup/node-a1/tank/big";

/// What differs between the simulated fleet and real OpenZFS under the VM's
/// software emulation, where each ZFS operation takes up to a second and
/// every received snapshot costs a txg sync.
struct Lane {
    /// Real ZFS: the cli backend on pools `tank` (node-a1) and `backup`
    /// (node-b1), made afresh for each trial.
    zfs: bool,
    policy: String,
    tasks: String,
    /// The class's tiers, for its policy and for the check.
    tiers: [(u64, u32); 2],
    /// One snapshot's stream in bytes, when every snapshot's is the same
    /// (the simulator); on real ZFS each resumed landing gives its own.
    snapshot_stream: Option<u64>,
    /// How long after the last restart a newer snapshot must reach the copy.
    recovery: Duration,
    /// How long a restore or drill may take to end after its kill's restart.
    phase_end: Duration,
}

impl Lane {
    fn from_env() -> Lane {
        if env("ZDR_TRIAL_ZFS", 0) == 0 {
            return Lane {
                zfs: false,
                policy: policy(SIM_TIERS),
                tasks: tasks(2, 16),
                tiers: SIM_TIERS,
                // 64 MB per snapshot at 16 MB/s: 4 s a stream, so most kills
                // land mid-stream; the simulator saves a partial receive every
                // 4 MiB. One snapshot's incremental stream, records included
                // (a full one is 98,288 bytes longer: 0.15 %, within what the
                // check reads).
                snapshot_stream: Some(64_000_185),
                recovery: Duration::from_secs(180),
                phase_end: Duration::from_secs(180),
            };
        }
        // A snapshot every 12 s of what the writer wrote meanwhile (about
        // 12 MiB at 1 MiB/s), sent at 2 MB/s: about 6 s a stream, plus a few
        // seconds of commands, so most kills land mid-stream.
        Lane {
            zfs: true,
            policy: policy(ZFS_TIERS),
            tasks: tasks(5, 2),
            tiers: ZFS_TIERS,
            snapshot_stream: None,
            recovery: Duration::from_secs(420),
            phase_end: Duration::from_secs(420),
        }
    }
}

const SIM_TIERS: [(u64, u32); 2] = [(4, 4), (16, 3)];
const ZFS_TIERS: [(u64, u32); 2] = [(12, 4), (48, 3)];

static LANE: LazyLock<Lane> = LazyLock::new(Lane::from_env);

/// The simulator's bytes per snapshot.
const SNAPSHOT_BYTES: u64 = 64_000_000;
/// The real lane's writer: bytes written to the dataset per second, into
/// this many files rewritten in turn (so the pool's use stays bounded).
const WRITE_BYTES_PER_SEC: usize = 1 << 20;
const WRITE_FILES: usize = 16;
/// Each real pool's sparse file.
const POOL_BYTES: u64 = 2 << 30;

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

/// `node` on the simulated backend, with a 100 GB `backup` pool; on real
/// ZFS, on its own pool.
fn agent(fleet: &Fleet, pki: &Path, node: &'static str) -> Agent {
    let extra = if LANE.zfs {
        AgentExtra {
            zfs_pools: vec![if node == "node-a1" { "tank" } else { "backup" }.into()],
            tick_secs: Some(2),
            pki: Some(pki.to_path_buf()),
            ..AgentExtra::default()
        }
    } else {
        AgentExtra {
            snapshot_bytes: Some(SNAPSHOT_BYTES),
            pools: vec![("backup".into(), 100_000_000_000)],
            pki: Some(pki.to_path_buf()),
            ..AgentExtra::default()
        }
    };
    fleet.agent_with(&spec(node), &extra)
}

/// The coordinator; on real ZFS it waits longer for a command's reply, as a
/// `send` answers only after a hold and a size estimate (`send -nvP`).
fn coordinator(fleet: &Fleet) -> Coordinator {
    if LANE.zfs {
        fleet.coordinator_with("c1", &["--command-timeout-secs".into(), "60".into()])
    } else {
        fleet.coordinator("c1")
    }
}

/// `program` with `args`, which must succeed.
fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Real ZFS: pools `tank` (mounted under `dir`, with the dataset) and
/// `backup` (unmounted), each on a sparse file in `dir`, the last trial's
/// destroyed first.
fn fresh_pools(dir: &Path) {
    destroy_pools();
    let mnt = dir.join("mnt");
    for (pool, mountpoint) in [("tank", mnt.to_str().unwrap()), ("backup", "none")] {
        let img = dir.join(format!("{pool}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(POOL_BYTES))
            .unwrap();
        let mountpoint = format!("mountpoint={mountpoint}");
        run(
            "zpool",
            &[
                "create",
                "-f",
                "-o",
                "ashift=12",
                "-O",
                "atime=off",
                "-O",
                &mountpoint,
                pool,
                img.to_str().unwrap(),
            ],
        );
    }
    run("zfs", &["create", DATASET]);
}

fn destroy_pools() {
    for pool in ["tank", "backup"] {
        let _ = std::process::Command::new("zpool")
            .args(["destroy", "-f", pool])
            .output();
    }
}

/// Real ZFS: rewrites the dataset's files with fresh pseudo-random bytes at
/// [`WRITE_BYTES_PER_SEC`], so that each snapshot has data to send, until
/// `stop` is set.
fn writer(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = WRITE_BYTES_PER_SEC / 4;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; chunk];
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for b in buf.chunks_mut(8) {
                // xorshift64: incompressible enough that the stream is the bytes.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            let file = dir.join(format!("f{:02}", (i / 4) % WRITE_FILES));
            let at = (i % 4) as u64 * chunk as u64;
            if let Ok(f) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&file)
            {
                use std::os::unix::fs::FileExt;
                let _ = f.write_all_at(&buf, at);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

/// One trial's fleet, and what it saw of the job while the faults ran.
struct World {
    /// Real ZFS: the writer and its stop flag.
    writing: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    coordinator: Coordinator,
    source: Agent,
    target: Agent,
    pki: PathBuf,
    fleet: Fleet,
    /// The job's history, merged across polls (the record keeps its last lines only).
    history: Vec<String>,
    failed_without_reason: Vec<String>,
}

impl World {
    async fn start() -> World {
        let fleet = Fleet::start(&LANE.policy, Some(&LANE.tasks)).await;
        let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
        let writing = LANE.zfs.then(|| {
            fresh_pools(fleet.path());
            let stop = Arc::new(AtomicBool::new(false));
            let w = writer(fleet.path().join("mnt/big"), stop.clone());
            (stop, w)
        });
        let coordinator = coordinator(&fleet);
        coordinator.wait_ready().await;
        World {
            writing,
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
                self.coordinator = coordinator(&self.fleet);
                self.coordinator.wait_ready().await;
            }
            Victim::Nats => self.fleet.nats.restart().await,
        }
    }
}

/// Copies the processes' logs of a trial (`ZDR_TRIAL_LOGS`): the fleet's
/// directory goes with the trial, and the VM lane's with the guest.
fn keep_logs(from: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
        // Each agent's audit log, which the retention check reads.
        let audit = e.path().join("audit.jsonl");
        if audit.is_file() {
            let name = format!("audit-{}.jsonl", e.file_name().to_string_lossy());
            let _ = std::fs::copy(&audit, to.join(name));
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
            created: r["created"].as_i64(),
        })
        .collect()
}

/// What one trial found.
#[derive(Debug, Default)]
struct Outcome {
    violations: Vec<Violation>,
    recovered_in: Option<Duration>,
    /// Per resumed landing: the share of the stream sent twice, when the
    /// history tells it (see `trials::resent_on_real_zfs`).
    resent: Vec<Option<f64>>,
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
    while start.elapsed() < LANE.recovery {
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
            LANE.recovery.as_secs(),
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
    if let Some((stop, writer)) = w.writing.take() {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
    }

    let listed = listing(&w.source, DATASET).unwrap_or_default();
    let src: Vec<(String, u64, Vec<String>)> = listed
        .iter()
        .map(|s| (s.name.clone(), s.guid, s.holds.clone()))
        .collect();
    let copy = on_disk(&w.target, COPY).unwrap_or_default();
    let marks = bookmarks_on_disk(&w.source, DATASET);
    let (src_audit, dst_audit) = (audit_of(&w.source), audit_of(&w.target));
    out.violations
        .extend(trials::unaudited_destroys(&src_audit));
    out.violations
        .extend(trials::unaudited_destroys(&dst_audit));
    let present: HashSet<String> = src.iter().map(|(n, _, _)| n.clone()).collect();
    let prefix = format!("{DATASET}@");
    // Our snapshots ever taken, each with its creation: from the pool for
    // those still there, from the audited destroy for the others (the name's
    // time only where a record does not say).
    let on_pool: HashMap<&str, Option<i64>> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.creation))
        .collect();
    let destroyed = src_audit
        .iter()
        .filter(|r| r.outcome == "done")
        .filter_map(|r| Some((r.target.strip_prefix(&prefix)?.to_string(), r.created)));
    let ever: HashMap<String, i64> = present
        .iter()
        .map(|n| (n.clone(), on_pool.get(n.as_str()).copied().flatten()))
        .chain(destroyed)
        .filter_map(|(n, created)| {
            let named = trials::created_at(&n, "zdr")?;
            Some((n, created.unwrap_or(named)))
        })
        .collect();
    out.violations
        .extend(trials::lost_representatives(&ever, &present, &LANE.tiers));
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
    out.resent = match LANE.snapshot_stream {
        Some(stream) => trials::resent_by_resumes(&w.history, stream)
            .into_iter()
            .map(Some)
            .collect(),
        None => {
            // Which snapshots were ever taken, in order, to tell whether a
            // cut incremental spanned one.
            let mut order: Vec<(i64, &String)> = ever
                .keys()
                .filter_map(|n| Some((trials::created_at(n, "zdr")?, n)))
                .collect();
            order.sort();
            let at = |n: &str| order.iter().position(|(_, m)| m.as_str() == n);
            let resumes = trials::resent_on_real_zfs(
                &w.history,
                |from, to| matches!((at(from), at(to)), (Some(a), Some(b)) if b == a + 1),
            );
            for (twice, stream) in resumes.iter().flatten() {
                eprintln!("trial {n}: a resume sent {twice} bytes twice of a {stream}-byte stream");
            }
            resumes
                .into_iter()
                .map(|r| r.map(|(twice, stream)| twice as f64 / stream.max(1) as f64))
                .collect()
        }
    };
    if LANE.zfs {
        destroy_pools();
    }
    if let Ok(keep) = std::env::var("ZDR_TRIAL_LOGS") {
        keep_logs(w.fleet.path(), &Path::new(&keep).join(format!("trial-{n}")));
    }
    eprintln!(
        "trial {n} (seed {seed}) history:\n  {}",
        w.history.join("\n  ")
    );
    out
}

/// Polls GET `path` until `pick` finds the ended record in its body; `None`
/// after the lane's `phase_end`. The coordinator may be restarting meanwhile.
async fn until_ended(
    w: &World,
    path: &str,
    pick: impl Fn(&Value) -> Option<Value>,
) -> Option<Value> {
    let start = Instant::now();
    while start.elapsed() < LANE.phase_end {
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
            LANE.phase_end.as_secs()
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
    // Its holds go once it ended (`zdr-restore-from-` on the copy,
    // `zdr-restore-into-` where it landed), even when a kill made the
    // coordinator miss a node's answer: a hold left behind keeps the copy's
    // snapshot for good and stops the agent from snapshotting what landed.
    let tags = [
        (
            &w.target,
            COPY.to_string(),
            format!("zdr-restore-from-{job}"),
        ),
        (&w.source, to.clone(), format!("zdr-restore-into-{job}")),
    ];
    let start = Instant::now();
    loop {
        let left: Vec<String> = tags
            .iter()
            .filter(|(agent, ds, tag)| {
                on_disk(agent, ds).is_some_and(|s| s.iter().any(|(_, _, t)| t.contains(tag)))
            })
            .map(|(_, ds, tag)| format!("{ds} still has {tag}"))
            .collect();
        if left.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            v.push(Violation(format!(
                "restore {job} ended {}, but after 60 s {}",
                status["state"],
                left.join(", ")
            )));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
            LANE.phase_end.as_secs()
        ))];
    };
    let why = d["result"]["why"].as_str().unwrap_or_default();
    eprintln!("trial {n}: drill {job} ended {} ({why})", d["state"]);
    // Which path a drill took (a new pick, holds asked again) shows only here.
    for line in d["history"].as_array().into_iter().flatten() {
        eprintln!("trial {n}:   {}", line.as_str().unwrap_or_default());
    }
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
    let mut unmeasured = 0;
    let mut recovery = Vec::new();
    let numbers: Vec<u64> = match std::env::var("ZDR_TRIAL_ONLY") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim().parse().unwrap_or_else(|_| {
                    panic!("ZDR_TRIAL_ONLY={list:?}: {n:?} is not a trial number (say 2,9,15)")
                })
            })
            .collect(),
        Err(_) => (first..first + count).collect(),
    };
    let count = numbers.len();
    let contiguous = numbers.windows(2).all(|w| w[1] == w[0] + 1);
    let which = match (numbers.first(), numbers.last()) {
        (Some(a), Some(b)) if contiguous => format!("#{a}-#{b}"),
        _ => format!("{numbers:?}"),
    };
    for n in numbers {
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
        for v in &out.violations {
            eprintln!("trial {n}: VIOLATION: {}", v.0);
        }
        violations.extend(
            out.violations
                .into_iter()
                .map(|v| format!("trial {n} (seed {seed}): {}", v.0)),
        );
        unmeasured += out.resent.iter().filter(|r| r.is_none()).count();
        resent.extend(out.resent.into_iter().flatten());
        recovery.extend(out.recovered_in);
    }
    resent.sort_by(f64::total_cmp);
    recovery.sort();
    let pct = |f: f64| format!("{:.1} %", f * 100.0);
    println!(
        "kill -9 trials on {}: {count} ({which}), seed {seed}, {per} faults each during replication, \
         then one during a restore and one during a drill",
        if LANE.zfs { "real OpenZFS" } else { "the simulated fleet" }
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
    if unmeasured > 0 {
        println!("  resumed landings not measured (the cut -I stream spanned several snapshots): {unmeasured}");
    }
    println!(
        "  recovery after the last restart: median {:?}, max {:?}",
        recovery.get(recovery.len() / 2),
        recovery.last()
    );
    assert!(violations.is_empty(), "{violations:#?}");
}
