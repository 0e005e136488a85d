//! zdr-fleet-sim: a whole fleet of simulated agents in one process, against a
//! real nats-server and a real `zdr-coordinator`, to measure how the
//! coordinator's costs grow with the fleet (`ops/bench-scale.sh` runs it).
//!
//! Each simulated node is the real agent code: its own `SimBackend` (in
//! memory), `Lifecycle`, scheduler and `node::run` with its own NATS
//! connection; nothing speaks the protocol on the agents' behalf. The only
//! shortcut is the starting state: each dataset is given its snapshots
//! before the agents start, named and dated as zdr would have taken them at
//! the compressed interval, so that a fleet of 10 M snapshots exists at once.
//! From then on the agents snapshot and prune on the policy's (compressed)
//! schedule, and publish hello, inventories, deltas and heartbeats.
//!
//! Rules: every wait is bounded (`--ingest-timeout-secs`, HTTP timeouts, the
//! settle window); the program fails with a non-zero exit and a message when
//! a bound is hit, after printing what it measured. Timing figures come from
//! the coordinator's own `/metrics` and from `/proc`; nothing here asserts a
//! speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use zdr_agent::audit::AuditLog;
use zdr_agent::config::Config;
use zdr_agent::lifecycle::Lifecycle;
use zdr_agent::node::{self, Agent};
use zdr_agent::replication::Replication;
use zdr_agent::scheduler::{self, Settings};
use zdr_agent::state::StateDir;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::Backend;
use zdr_common::DatasetName;

#[derive(Parser)]
#[command(
    name = "zdr-fleet-sim",
    about = "N simulated agents against a real nats-server and zdr-coordinator"
)]
struct Args {
    /// Nodes.
    #[arg(long)]
    nodes: usize,
    /// Datasets per node.
    #[arg(long)]
    datasets: usize,
    /// Snapshots per dataset at the start (and kept by the policy's tiers).
    #[arg(long)]
    snapshots: usize,
    /// Also a replication task selecting every dataset (one pairing each);
    /// its window is closed during the run, so pairings are planned and
    /// scheduled every tick but no transfer starts (the sim has no data plane).
    #[arg(long)]
    tasks: bool,
    /// The coordinator binary to measure.
    #[arg(long)]
    coordinator: PathBuf,
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Working directory (must not exist yet, or be empty).
    #[arg(long)]
    work: PathBuf,
    /// The compressed snapshot interval, seconds.
    #[arg(long, default_value_t = 10)]
    interval_secs: u64,
    /// Give up on ingest after this long.
    #[arg(long, default_value_t = 600)]
    ingest_timeout_secs: u64,
    /// How long to watch the fleet after ingest (pings, heartbeats, evaluation).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(10..))]
    settle_secs: u64,
    /// Ping commands sent (sequentially, to nodes in turn) during the settle window.
    #[arg(long, default_value_t = 2000)]
    pings: usize,
    /// Heartbeat period of every agent, seconds.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
}

/// The fake wall clock the sim backends read while the starting snapshots
/// are made; 0 means the real clock.
static BACKDATE: AtomicI64 = AtomicI64::new(0);

fn real_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn sim_clock() -> i64 {
    match BACKDATE.load(Ordering::Relaxed) {
        0 => real_now(),
        t => t,
    }
}

fn node_name(i: usize) -> String {
    format!("n{i:04}")
}

fn site_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "site-a"
    } else {
        "site-b"
    }
}

fn media_of(i: usize) -> &'static str {
    if (i / 2).is_multiple_of(2) {
        "ssd"
    } else {
        "hdd"
    }
}

fn policy_yaml(a: &Args) -> String {
    let mut nodes = String::new();
    for i in 0..a.nodes {
        nodes.push_str(&format!(
            "  {}: {{ site: {}, media: {} }}\n",
            node_name(i),
            site_of(i),
            media_of(i)
        ));
    }
    format!(
        r#"version: 1
snapshot_prefix: zdr
sites:
  site-a: {{}}
  site-b: {{}}
nodes:
{nodes}classes:
  sim:
    tiers:
      {every}s: {keep}
    rpo: {rpo}s
    rto: 1h
    immutable_for: 0s
    # Production alone passes: no alert per dataset for missing copies.
    copies: {{ total: 1, media: 1, offsite: 0 }}
datasets:
  - match: backup/**
    exclude: true
  - match: tank/**
    class: sim
"#,
        every = a.interval_secs,
        keep = a.snapshots,
        rpo = a.interval_secs * 6,
    )
}

/// One task over every dataset, its window twelve hours away.
fn tasks_yaml() -> String {
    let now = chrono::Utc::now();
    let from = (now + chrono::Duration::hours(12)).format("%H:%M");
    let to = (now + chrono::Duration::hours(12) + chrono::Duration::minutes(1)).format("%H:%M");
    format!(
        r#"version: 1
tasks:
  - name: sim-offsite
    source:
      class: sim
    target:
      site: other
      root: backup/{{node}}
    schedule:
      every: 1h
      window: "{from}-{to}"
"#
    )
}

/// A child process killed on drop.
struct Proc(Child);

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        cmd.stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null());
        Ok(Proc(
            cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?,
        ))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What /proc says of a process: CPU seconds so far, RSS and peak RSS (bytes).
#[derive(Debug, Clone, Copy, Default)]
struct ProcStat {
    cpu_secs: f64,
    rss: u64,
    peak_rss: u64,
}

fn proc_stat(pid: u32) -> ProcStat {
    let mut s = ProcStat::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name, which may hold spaces: utime is 14th, stime 15th.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            // USER_HZ is 100 on Linux.
            s.cpu_secs = ticks as f64 / 100.0;
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| -> u64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("VmRSS:") {
                s.rss = kb(line);
            } else if line.starts_with("VmHWM:") {
                s.peak_rss = kb(line);
            }
        }
    }
    s
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.0 request on loopback: status, body, and how long it took.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>, Duration)> {
    request(port, method, path, body, None, timeout).await
}

/// [`http`] with `Authorization: Bearer <token>`: every mutation of the
/// API needs it (`--api-token-file`).
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>, Duration)> {
    let start = Instant::now();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let run = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow!("{method} {path}: no answer within {timeout:?}"))??;
    let took = start.elapsed();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, raw[split + 4..].to_vec(), took))
}

/// The value of an unlabelled metric (the first series of that name).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        let k = k.split('{').next()?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

/// The `n` metric names with the most series, most first, as `name count`.
fn largest_families(text: &str, n: usize) -> String {
    let mut by_name: std::collections::HashMap<&str, usize> = Default::default();
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap_or(l);
        *by_name.entry(name).or_default() += 1;
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.iter()
        .take(n)
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nodes, datasets and snapshots the coordinator's fleet view holds: from
/// its `totals` when it has them, else counted from the whole answer.
fn fleet_counts(body: &[u8]) -> Option<(u64, u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(t) = v.get("totals") {
        return Some((
            t["nodes"].as_u64()?,
            t["datasets"].as_u64()?,
            t["snapshots"].as_u64()?,
        ));
    }
    let nodes = v["nodes"].as_array()?;
    let (mut ds, mut snaps) = (0u64, 0u64);
    for n in nodes {
        for d in n["datasets"].as_array()? {
            ds += 1;
            snaps += d["snapshots"].as_array().map(|s| s.len()).unwrap_or(0) as u64;
        }
    }
    Some((nodes.len() as u64, ds, snaps))
}

struct SimNode {
    backend: Arc<SimBackend>,
    config: Config,
}

/// A node's pools and its starting snapshots, dated at `interval` steps
/// back from `start`.
fn make_node(
    a: &Args,
    i: usize,
    public_key: &str,
    nats_url: &str,
    start: i64,
) -> anyhow::Result<SimNode> {
    let node = node_name(i);
    let backend = SimBackend::new()
        .with_clock(Arc::new(sim_clock))
        .with_snapshot_bytes(4096);
    backend.add_pool("tank", 1 << 44)?;
    let names: Vec<DatasetName> = (0..a.datasets)
        .map(|d| DatasetName::parse(&format!("tank/ds{d:03}")))
        .collect::<Result<_, _>>()?;
    for n in &names {
        backend.create_dataset(n)?;
    }
    for k in 0..a.snapshots {
        let t = start - ((a.snapshots - k) as i64) * a.interval_secs as i64;
        BACKDATE.store(t, Ordering::Relaxed);
        let snap = zdr_agent::retention::snapshot_name("zdr", t);
        backend.snapshot(&names, &snap, false)?;
    }
    BACKDATE.store(0, Ordering::Relaxed);
    let state_dir = a.work.join("agents").join(&node);
    let toml = format!(
        r#"node = "{node}"
site = "{site}"
media = "{media}"
nats_url = "{nats_url}"
state_dir = "{state}"
heartbeat_secs = {hb}
tick_secs = 5

[backend]
kind = "sim"
pools = []

[[trusted_keys]]
kid = "coordinator"
public_key = "{public_key}"
"#,
        site = site_of(i),
        media = media_of(i),
        state = state_dir.display(),
        hb = a.heartbeat_secs,
    );
    let config = Config::parse(&node, &toml).map_err(|e| anyhow!("{e}"))?;
    Ok(SimNode {
        backend: Arc::new(backend),
        config,
    })
}

/// Starts one node's agent: the scheduler and the NATS side, as `zdr-agent`'s main does.
async fn start_agent(
    sim: SimNode,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let config = sim.config;
    let state = StateDir::open(&config.state_dir)?;
    let verifier = config.verifier().map_err(|e| anyhow!(e))?;
    let audit = AuditLog::open(&state.path("audit.jsonl"))?;
    let backend: Arc<dyn Backend> = sim.backend;
    let lifecycle = Arc::new(Lifecycle::new(config.node.clone(), backend, audit));
    lifecycle.keep_floor_at(&state.path("floor.json"))?;
    let freshness = state.load_freshness().map_err(|e| anyhow!(e))?;
    let settings = Settings {
        tick: Duration::from_secs(config.tick_secs),
        rescan_secs: config.rescan_secs as i64,
        actor: format!("agent:{}/retention", config.node),
    };
    tasks.spawn(scheduler::run(
        lifecycle.clone(),
        settings,
        shutdown.clone(),
    ));
    let (replication, job_updates) = Replication::start(
        lifecycle.clone(),
        config.node.clone(),
        None,
        shutdown.clone(),
    )
    .await?;
    let agent = Arc::new(Agent::new(
        config,
        lifecycle,
        verifier,
        state,
        freshness,
        replication,
    ));
    tasks.spawn(node::run(agent, job_updates, shutdown));
    Ok(())
}

#[derive(Default)]
struct Report {
    lines: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, k: &str, v: impl std::fmt::Display) {
        let v = v.to_string();
        println!("  {k:<34} {v}");
        self.lines.push((k.to_string(), v));
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes == 0 || args.datasets == 0 || args.snapshots == 0 {
        bail!("--nodes, --datasets and --snapshots must each be at least 1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&args));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(a: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.work)?;
    if std::fs::read_dir(&a.work)?.next().is_some() {
        bail!(
            "--work {}: the directory is not empty; give a new one",
            a.work.display()
        );
    }
    let size = format!("{}x{}x{}", a.nodes, a.datasets, a.snapshots);
    println!(
        "== {size}{}: {} nodes x {} datasets x {} snapshots = {} snapshots",
        if a.tasks { " (with a task)" } else { "" },
        a.nodes,
        a.datasets,
        a.snapshots,
        a.nodes * a.datasets * a.snapshots
    );
    let mut report = Report::default();

    // nats-server, JetStream in the work dir.
    let (port, mon) = (free_port()?, free_port()?);
    let js_dir = a.work.join("jetstream");
    let mut cmd = Command::new(&a.nats_server);
    cmd.args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-m",
        &mon.to_string(),
        "-js",
        "-sd",
    ])
    .arg(&js_dir);
    let mut nats = Proc::spawn(cmd, &a.work.join("nats-server.log"))?;
    let nats_url = format!("nats://127.0.0.1:{port}");
    let up = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if up.elapsed() > Duration::from_secs(20) {
            bail!(
                "nats-server did not accept connections within 20 s (log: {}/nats-server.log)",
                a.work.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The coordinator, on a fresh key, policy and tasks file.
    let key = zdr_common::envelope::generate_key();
    let key_file = a.work.join("coordinator.key");
    std::fs::write(&key_file, zdr_common::envelope::key_to_b64(&key.to_bytes()))?;
    let public = zdr_common::envelope::key_to_b64(key.verifying_key().as_bytes());
    let policy = a.work.join("policies.yaml");
    std::fs::write(&policy, policy_yaml(a))?;
    let http_port = free_port()?;
    let mut cmd = Command::new(&a.coordinator);
    cmd.args([
        "run",
        "--nats-url",
        &nats_url,
        "--http",
        &format!("127.0.0.1:{http_port}"),
        "--instance",
        "sim",
    ])
    .arg("--policy")
    .arg(&policy)
    .arg("--key-file")
    .arg(&key_file);
    // The pings are commands: without a token the API refuses them all.
    let (token_file, token) = zdr_integration::api_token_file(&a.work);
    cmd.arg("--api-token-file").arg(&token_file);
    if a.tasks {
        let tasks = a.work.join("tasks.yml");
        std::fs::write(&tasks, tasks_yaml())?;
        cmd.arg("--tasks").arg(&tasks);
    }
    let mut coordinator = Proc::spawn(cmd, &a.work.join("coordinator.log"))?;
    let cpid = coordinator.pid();
    let ready = Instant::now();
    loop {
        if let Ok((200, _, _)) = http(http_port, "GET", "/readyz", "", Duration::from_secs(2)).await
        {
            break;
        }
        if ready.elapsed() > Duration::from_secs(60) {
            bail!(
                "the coordinator was not ready within 60 s (log: {}/coordinator.log)",
                a.work.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The fleet's starting state, then every agent at once (as after a power cut).
    let made = Instant::now();
    let start = real_now();
    let nodes: Vec<SimNode> = (0..a.nodes)
        .map(|i| make_node(a, i, &public, &nats_url, start))
        .collect::<anyhow::Result<_>>()?;
    report.add(
        "starting state built in",
        format!("{:.1} s", made.elapsed().as_secs_f64()),
    );
    let shutdown = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    let cpu0 = proc_stat(cpid).cpu_secs;
    let t0 = Instant::now();
    for sim in nodes {
        start_agent(sim, shutdown.clone(), &mut agents).await?;
    }

    // Ingest: the fleet view holds every node, dataset and snapshot.
    let want = (a.nodes * a.datasets * a.snapshots) as u64;
    let deadline = Duration::from_secs(a.ingest_timeout_secs);
    let mut last = (0, 0, 0);
    let ingest = loop {
        if t0.elapsed() > deadline {
            break None;
        }
        if let Ok((200, body, _)) = http(
            http_port,
            "GET",
            "/api/v1/fleet?limit=0",
            "",
            Duration::from_secs(60),
        )
        .await
        {
            if let Some(c) = fleet_counts(&body) {
                last = c;
                // Every dataset (each arrives with its snapshot list); pruning
                // and new snapshots move the count by one here and there.
                if c.0 == a.nodes as u64
                    && c.1 >= (a.nodes * a.datasets) as u64
                    && c.2 >= want * 99 / 100
                {
                    break Some(t0.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let cpu_ingest = proc_stat(cpid).cpu_secs - cpu0;
    match ingest {
        Some(t) => report.add("ingest time", format!("{:.2} s", t.as_secs_f64())),
        None => report.add(
            "ingest time",
            format!(
                "NOT REACHED in {} s: {} nodes, {} datasets, {} snapshots seen",
                a.ingest_timeout_secs, last.0, last.1, last.2
            ),
        ),
    }
    report.add(
        "coordinator CPU during ingest",
        format!("{cpu_ingest:.1} s"),
    );

    // Settle: pings, heartbeats and evaluation while the fleet runs.
    let metrics_at = |text: &str, name: &str| metric(text, name);
    let late0 = match http(http_port, "GET", "/metrics", "", Duration::from_secs(30)).await {
        Ok((_, body, _)) => {
            metrics_at(&String::from_utf8_lossy(&body), "zdr_heartbeats_late_total")
        }
        Err(_) => None,
    };
    let cpu1 = proc_stat(cpid).cpu_secs;
    let settle = Instant::now();
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut ping_errors = 0usize;
    let mut min_online = f64::INFINITY;
    let mut next_sample = Instant::now();
    let mut pings = 0usize;
    while settle.elapsed() < Duration::from_secs(a.settle_secs) {
        // The gauges are set every 5 s: samples start once they have seen the whole fleet.
        if settle.elapsed() >= Duration::from_secs(6) && Instant::now() >= next_sample {
            next_sample = Instant::now() + Duration::from_secs(2);
            if let Ok((_, body, _)) =
                http(http_port, "GET", "/metrics", "", Duration::from_secs(30)).await
            {
                if let Some(v) = metric(&String::from_utf8_lossy(&body), "zdr_nodes_online") {
                    min_online = min_online.min(v);
                }
            }
        }
        if pings < a.pings {
            let node = node_name(pings % a.nodes);
            pings += 1;
            let path = format!("/api/v1/nodes/{node}/commands");
            match request(
                http_port,
                "POST",
                &path,
                r#"{"ping":{}}"#,
                Some(&token),
                Duration::from_secs(15),
            )
            .await
            {
                Ok((200, _, took)) => hist.record(took.as_micros().max(1) as u64)?,
                failed => {
                    if ping_errors == 0 {
                        match failed {
                            Ok((code, body, _)) => eprintln!(
                                "the first ping refused: HTTP {code}: {}",
                                String::from_utf8_lossy(&body)
                            ),
                            Err(e) => eprintln!("the first ping failed: {e:#}"),
                        }
                    }
                    ping_errors += 1;
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let settle_secs = settle.elapsed().as_secs_f64();
    let cpu_settle = proc_stat(cpid).cpu_secs - cpu1;
    let us = |q: f64| format!("{:.2} ms", hist.value_at_quantile(q) as f64 / 1000.0);
    report.add(
        "command round trip (ping, HTTP)",
        format!(
            "p50 {} p99 {} p999 {} max {} (n={}, errors {})",
            us(0.5),
            us(0.99),
            us(0.999),
            us(1.0),
            hist.len(),
            ping_errors
        ),
    );
    report.add(
        "coordinator CPU while settled",
        format!(
            "{:.0} % of one core over {settle_secs:.0} s",
            100.0 * cpu_settle / settle_secs
        ),
    );
    report.add(
        "nodes online, lowest after ingest",
        if min_online.is_finite() {
            format!("{min_online} of {}", a.nodes)
        } else {
            "n/a".into()
        },
    );

    // The read side and the coordinator's own timings.
    let (code, body, took) =
        http(http_port, "GET", "/metrics", "", Duration::from_secs(120)).await?;
    let text = String::from_utf8_lossy(&body).to_string();
    report.add(
        "/metrics",
        format!(
            "{:.1} ms, {} bytes, {} series (HTTP {code})",
            took.as_secs_f64() * 1000.0,
            body.len(),
            series(&text)
        ),
    );
    report.add("/metrics, largest families", largest_families(&text, 5));
    // A counter shows once it has counted; a coordinator that times its
    // evaluation counts late heartbeats too.
    let counts = metric(&text, "zdr_evaluation_seconds").is_some();
    let late = match (late0, metric(&text, "zdr_heartbeats_late_total")) {
        (a0, Some(a1)) => format!("{} while settled (total {a1})", a1 - a0.unwrap_or(0.0)),
        (_, None) if counts => "0".into(),
        _ => "n/a (this coordinator does not count them)".into(),
    };
    report.add("heartbeats processed late (>=2 s)", late);
    for (name, label) in [
        (
            "zdr_evaluation_seconds",
            "one evaluation (report, gauges, alerts)",
        ),
        ("zdr_job_tick_seconds", "one job tick (schedule)"),
        ("zdr_persist_backlog", "datasets waiting to be persisted"),
    ] {
        match metric(&text, name) {
            Some(v) if name.ends_with("seconds") => {
                report.add(label, format!("{:.1} ms (last)", v * 1000.0))
            }
            Some(v) => report.add(label, v),
            None => report.add(label, "n/a"),
        }
    }
    // Each answer whole, and a page of it: the pages must stay small
    // whatever the fleet's size.
    for (path, label) in [
        ("/api/v1/fleet", "/api/v1/fleet (whole)"),
        ("/api/v1/fleet?limit=10", "/api/v1/fleet?limit=10"),
        ("/api/v1/report", "/api/v1/report (whole)"),
        ("/api/v1/report?limit=10", "/api/v1/report?limit=10"),
        ("/api/v1/alerts?limit=100", "/api/v1/alerts?limit=100"),
    ] {
        match http(http_port, "GET", path, "", Duration::from_secs(120)).await {
            Ok((code, body, took)) => report.add(
                label,
                format!(
                    "{:.1} ms, {} (HTTP {code})",
                    took.as_secs_f64() * 1000.0,
                    mib(body.len() as u64)
                ),
            ),
            Err(e) => report.add(label, format!("failed: {e}")),
        }
    }
    let c = proc_stat(cpid);
    report.add(
        "coordinator RSS / peak",
        format!("{} / {}", mib(c.rss), mib(c.peak_rss)),
    );
    let n = proc_stat(nats.pid());
    report.add(
        "nats-server RSS / peak",
        format!("{} / {}", mib(n.rss), mib(n.peak_rss)),
    );
    report.add("JetStream store", mib(dir_size(&js_dir)));
    let me = proc_stat(std::process::id());
    report.add(
        "simulator (agents) RSS / peak",
        format!("{} / {}", mib(me.rss), mib(me.peak_rss)),
    );

    // Stop: agents first (bounded), then the coordinator and the server.
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(20), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        agents.abort_all();
    }
    coordinator.terminate();
    nats.terminate();
    let summary: Vec<String> = report
        .lines
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    std::fs::write(a.work.join("report.txt"), summary.join("\n") + "\n")?;
    if ingest.is_none() {
        bail!(
            "{size}: the fleet was not ingested within {} s",
            a.ingest_timeout_secs
        );
    }
    if pings > 0 && hist.is_empty() {
        bail!("{size}: none of {pings} pings was answered (coordinator.log says why)");
    }
    Ok(())
}
