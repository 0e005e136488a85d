//! zdr on a three-server JetStream cluster (loopback): every bucket and
//! stream is kept at three replicas, agents and coordinators know all three
//! servers, and losing a server (or all of them for a while) loses nothing.
//! Small fleets and bounded waits: three nats-servers, a coordinator or two
//! and two agents share the CI host's cores.

use std::time::{Duration, Instant};

use async_nats::jetstream;
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
  slow:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/big"
    class: slow
"#;

/// One big dataset to the other site, slow enough to act mid-stream.
const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/big", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
    bandwidth: { limit: 4MB/s }
"#;

const COPY: &str = "backup/node-a1/tank/big";

/// The buckets and streams the coordinator keeps.
const STREAMS: [&str; 9] = [
    "KV_zdr_fleet",
    "KV_zdr_inventory",
    "KV_zdr_policy",
    "KV_zdr_lease",
    "KV_zdr_pairings",
    "KV_zdr_jobs",
    "KV_zdr_alerts",
    "ZDR_EVENTS",
    "ZDR_AUDIT",
];

struct Setup {
    // Dropped in this order: processes before the fleet's servers and directory.
    a1: Agent,
    b1: Agent,
    fleet: Fleet,
}

/// A cluster fleet with the two nodes' certificates and agents holding
/// `snapshot_bytes` per snapshot.
async fn setup(snapshot_bytes: u64) -> (Setup, Coordinator) {
    let fleet = Fleet::start_cluster(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let c1 = fleet.coordinator("c1");
    c1.wait_ready().await;
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
                pki: Some(pki.clone()),
                snapshot_bytes: Some(snapshot_bytes),
                ..AgentExtra::default()
            },
        )
    };
    let a1 = agent("node-a1", "site-a");
    let b1 = agent("node-b1", "site-b");
    (Setup { a1, b1, fleet }, c1)
}

/// The offsite job once `f` holds of it.
async fn offsite_job(
    c: &Coordinator,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, timeout, || async {
        let all = jobs(c).await;
        let j = job_for(&all, "offsite", "node-a1")?;
        f(j).then(|| j.clone())
    })
    .await
}

fn running_past(bytes: u64) -> impl Fn(&Value) -> bool {
    move |j| j["state"] == "running" && j["bytes"].as_u64().unwrap_or(0) > bytes
}

fn done(j: &Value) -> bool {
    j["state"] == "done"
}

/// Replicas of `stream` as JetStream reports them (leader and followers).
async fn replicas(js: &jetstream::Context, stream: &str) -> Option<usize> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    Some(info.config.num_replicas)
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_and_streams_are_replicated_on_every_server() {
    let fleet = Fleet::start_cluster(POLICY, None).await;
    let c1 = fleet.coordinator("c1");
    c1.wait_ready().await;
    let js = jetstream::new(fleet.nats.client().await);
    for stream in STREAMS {
        let r = wait_for(
            &format!("{stream} to exist"),
            Duration::from_secs(30),
            || async { replicas(&js, stream).await },
        )
        .await;
        assert_eq!(r, 3, "{stream} has {r} replicas on a three-server cluster");
        let mut s = js.get_stream(stream).await.unwrap();
        let cluster = s
            .info()
            .await
            .unwrap()
            .cluster
            .clone()
            .expect("cluster info");
        assert!(cluster.leader.is_some(), "{stream} has no leader");
        assert_eq!(cluster.replicas.len(), 2, "{stream}: {cluster:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn more_replicas_than_servers_is_a_clear_error() {
    let fleet = Fleet::start(POLICY, None).await;
    let mut c1 = fleet.coordinator_with("c1", &["--nats-replicas".into(), "3".into()]);
    let start = Instant::now();
    while c1.proc.running() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!c1.proc.running(), "the coordinator still runs");
    let out = c1.proc.output();
    assert!(
        out.contains("cannot keep 3 replicas") && out.contains("--nats-replicas"),
        "{out}"
    );
}

/// Messages in each of the coordinator's streams.
async fn message_counts(js: &jetstream::Context) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for stream in STREAMS {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                out.push((stream, info.state.messages));
            }
        }
    }
    out
}

/// Both nodes online in the leader's view.
async fn both_online(c: &Coordinator) -> Option<()> {
    let fleet = c.fleet().await?;
    ["node-a1", "node-b1"]
        .iter()
        .all(|n| node_in(&fleet, n).is_some_and(|v| v["online"] == true))
        .then_some(())
}

/// No destroy, `receive -F` or `receive -A` was run twice on the same thing.
fn no_destructive_step_twice(agent: &Agent) {
    let mut seen = std::collections::BTreeSet::new();
    for r in agent.audit() {
        if r["outcome"] == "refused" {
            continue;
        }
        let key = (r["action"].to_string(), r["target"].to_string());
        assert!(seen.insert(key.clone()), "audited twice: {key:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_replication_loses_nothing() {
    // 48 MB at 4 MB/s: about 12 s of stream.
    let (mut s, c1) = setup(48_000_000).await;
    offsite_job(
        &c1,
        "the stream to be under way",
        Duration::from_secs(120),
        running_past(6_000_000),
    )
    .await;
    let js = jetstream::new(s.fleet.nats.client().await);
    let before = message_counts(&js).await;
    assert_eq!(before.len(), STREAMS.len(), "{before:?}");
    s.fleet.nats.kill_server(0);
    let job = offsite_job(
        &c1,
        "the job to finish with one server down",
        Duration::from_secs(120),
        done,
    )
    .await;
    let history = history(&job);
    eprintln!("job history: {history:#?}");
    assert_faithful(&s.a1, &s.b1, "tank/big", COPY, "zdr-repl-offsite");
    // The coordinator kept (or took back) its lease; both agents are online.
    c1.wait_ready().await;
    wait_for(
        "both agents online with a server down",
        Duration::from_secs(60),
        || both_online(&c1),
    )
    .await;
    // Nothing the two remaining servers hold went missing.
    let after = message_counts(&js).await;
    for (stream, n) in &before {
        let now = after.iter().find(|(s, _)| s == stream).map(|(_, n)| *n);
        assert!(
            now.is_some_and(|m| m >= *n),
            "{stream} had {n} messages before the kill, {now:?} after"
        );
    }
    // The killed server comes back and catches up on every stream.
    s.fleet.nats.start_server(0).await;
    for stream in STREAMS {
        wait_for(
            &format!("{stream} current on all three servers"),
            Duration::from_secs(60),
            || async {
                let mut st = js.get_stream(stream).await.ok()?;
                let info = st.info().await.ok()?.clone();
                let c = info.cluster?;
                (c.leader.is_some()
                    && c.replicas.len() == 2
                    && c.replicas.iter().all(|r| r.current))
                .then_some(())
            },
        )
        .await;
    }
    assert!(s.fleet.nats.server_running(0));
}

/// Watch consumers on the coordinator's buckets, as JetStream counts them.
async fn watch_consumers(js: &jetstream::Context) -> Option<usize> {
    let mut total = 0;
    for stream in STREAMS.iter().filter(|s| s.starts_with("KV_")) {
        let mut s = js.get_stream(*stream).await.ok()?;
        total += s.info().await.ok()?.state.consumer_count;
    }
    Some(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_every_server_leaves_no_watch_consumers_behind() {
    let (mut s, c1) = setup(1_000_000).await;
    let _agents = (&s.a1, &s.b1);
    wait_for("both agents online", Duration::from_secs(60), || {
        both_online(&c1)
    })
    .await;
    let js = jetstream::new(s.fleet.nats.client().await);
    // Each agent watches the policy key: one consumer each, and no more.
    let baseline = wait_for(
        "one policy watch per agent",
        Duration::from_secs(60),
        || async { watch_consumers(&js).await.filter(|n| *n == 2) },
    )
    .await;
    s.fleet.nats.restart().await;
    c1.wait_ready().await;
    wait_for(
        "both agents online after the restart",
        Duration::from_secs(90),
        || both_online(&c1),
    )
    .await;
    wait_for(
        "the watch consumers back to their number before",
        Duration::from_secs(90),
        || async { watch_consumers(&js).await.filter(|n| *n == baseline) },
    )
    .await;
    // And there they stay, past the 30 s after which the server drops a
    // consumer whose client went away: nothing piles up.
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        if let Some(n) = watch_consumers(&js).await {
            most = most.max(n);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let last = watch_consumers(&js).await;
    eprintln!("watch consumers: {baseline} before, at most {most} after, {last:?} at the end");
    assert!(
        most <= baseline,
        "watch consumers piled up: {most} > {baseline}"
    );
    assert_eq!(last, Some(baseline));
}

/// How many trials `leader_killed_mid_stream_hands_over_within_ten_seconds`
/// runs: 1 in CI, `ZDR_FAILOVER_TRIALS` for the benchmark (ops/bench-failover.sh).
fn trials() -> usize {
    std::env::var("ZDR_FAILOVER_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_mid_stream_hands_over_within_ten_seconds() {
    let (s, c1) = setup(48_000_000).await;
    let mut leader = c1;
    let mut standby = s.fleet.coordinator("c2");
    offsite_job(
        &leader,
        "the stream to be under way",
        Duration::from_secs(120),
        running_past(6_000_000),
    )
    .await;
    let mut times = Vec::new();
    for trial in 0..trials() {
        // The standby is up (serves HTTP, not ready) before the kill.
        wait_for(
            "the standby's HTTP API",
            Duration::from_secs(60),
            || async { matches!(standby.get("/readyz").await, Some((503, _))).then_some(()) },
        )
        .await;
        let start = Instant::now();
        leader.proc.kill();
        standby.wait_ready().await;
        let took = start.elapsed();
        eprintln!("trial {}: the standby led after {took:?}", trial + 1);
        times.push(took);
        assert!(
            took < Duration::from_secs(10),
            "trial {}: the standby took {took:?} to lead",
            trial + 1
        );
        let name = format!("c{}", trial + 3);
        leader = std::mem::replace(&mut standby, s.fleet.coordinator(&name));
    }
    if times.len() > 1 {
        times.sort();
        eprintln!(
            "failover over {} trials: median {:?}, worst {:?}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    let job = offsite_job(
        &leader,
        "the new leader to finish the job",
        Duration::from_secs(120),
        done,
    )
    .await;
    let history = history(&job);
    // Adopted, not dispatched again: one plan, one attempt, no failure.
    assert!(
        history
            .iter()
            .any(|l| l.contains("adopted by a new leader")),
        "{history:#?}"
    );
    assert_eq!(
        history.iter().filter(|l| l.contains(" step(s): ")).count(),
        1,
        "the job was planned more than once: {history:#?}"
    );
    assert_eq!(job["attempt"], 1, "{history:#?}");
    assert!(
        !history.iter().any(|l| l.contains("failed")),
        "{history:#?}"
    );
    // The stream was sent once: its bytes are the stream's size, not twice it.
    let (bytes, size) = (
        job["bytes"].as_u64().unwrap(),
        job["size_hint"].as_u64().unwrap(),
    );
    eprintln!("sent {bytes} bytes of a {size}-byte stream");
    assert!(
        bytes >= size * 9 / 10 && bytes <= size * 11 / 10,
        "sent {bytes} bytes of a {size}-byte stream: {history:#?}"
    );
    no_destructive_step_twice(&s.a1);
    no_destructive_step_twice(&s.b1);
    assert_faithful(&s.a1, &s.b1, "tank/big", COPY, "zdr-repl-offsite");
}
