//! Both ends of replication jobs between two agents on simulated pools, over
//! the real data plane on loopback: the `receive -F` check, the retention
//! floor on a copy, job status, and what a cancelled stream re-sends when it
//! resumes.

mod support {
    #[allow(dead_code)] // shared with transfer.rs, which uses all of it
    pub mod pki;
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::pki::Pki;
use tokio::sync::mpsc::UnboundedReceiver;
use zdr_agent::audit::AuditLog;
use zdr_agent::config::TransferConfig;
use zdr_agent::floor::FLOOR_HOLD;
use zdr_agent::lifecycle::Lifecycle;
use zdr_agent::replication::Replication;
use zdr_agent::state::SignedPolicy;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::{Backend, SendSpec};
use zdr_common::wire::{
    EventKind, FloorOperation, JobPhase, JobRole, JobSecret, JobUpdate, PolicyBundle, PruneReplica,
    ReceiveJob, ReceiveOffer, SendJob, SnapshotRef, StreamSpec,
};
use zdr_common::DatasetName;

const DATASET: &str = "tank/db";
const TAG: &str = "zdr-repl-test";
const SOURCE: &str = "node-a";
const TARGET: &str = "node-b";
const ACTOR: &str = "coordinator:test/cmd-1";

struct Node {
    name: &'static str,
    lc: Arc<Lifecycle>,
    repl: Arc<Replication>,
    updates: UnboundedReceiver<JobUpdate>,
    sim: Arc<SimBackend>,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

async fn node(pki: &Pki, name: &'static str, sim: SimBackend) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let pem = pki.node_pem(name);
    let path = |f: &str, text: &str| {
        let p = dir.path().join(f);
        std::fs::write(&p, text).unwrap();
        p
    };
    let config = TransferConfig {
        ca: path("ca.pem", &pem.ca),
        cert: path("cert.pem", &pem.cert),
        key: path("key.pem", &pem.key),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
    };
    let sim = Arc::new(sim);
    sim.add_pool("tank", 1 << 40).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let lifecycle = Arc::new(Lifecycle::new(
        name.into(),
        sim.clone(),
        AuditLog::open(&audit).unwrap(),
    ));
    let (repl, updates) = Replication::start(
        lifecycle.clone(),
        name.into(),
        Some(&config),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    Node {
        name,
        lc: lifecycle,
        repl,
        updates,
        sim,
        audit,
        _dir: dir,
    }
}

impl Node {
    fn ds(&self) -> DatasetName {
        DatasetName::parse(DATASET).unwrap()
    }

    fn snapshot(&self, name: &str) -> SnapshotRef {
        self.sim.snapshot(&[self.ds()], name, false).unwrap();
        self.find(name).expect("just taken")
    }

    fn find(&self, name: &str) -> Option<SnapshotRef> {
        self.snapshots().into_iter().find(|s| s.name == name)
    }

    fn snapshots(&self) -> Vec<SnapshotRef> {
        match self.sim.list_snapshots(&self.ds()) {
            Ok(v) => v
                .into_iter()
                .map(|s| SnapshotRef {
                    name: s.name,
                    guid: s.guid,
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.snapshots().into_iter().map(|s| s.name).collect()
    }

    /// The audit log's records, as JSON.
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The final report of `job` from this node, skipping progress reports.
    async fn outcome(&mut self, job: &str) -> JobUpdate {
        loop {
            let u = tokio::time::timeout(Duration::from_secs(60), self.updates.recv())
                .await
                .expect("a job report within 60 s")
                .expect("the update channel stays open");
            if u.job == job && u.state != JobPhase::Running {
                return u;
            }
        }
    }

    /// The first progress report of `job` with at least `bytes`.
    async fn progress(&mut self, job: &str, bytes: u64) -> JobUpdate {
        loop {
            let u = tokio::time::timeout(Duration::from_secs(60), self.updates.recv())
                .await
                .expect("a job report within 60 s")
                .expect("the update channel stays open");
            assert_eq!(u.state, JobPhase::Running, "{job} ended early: {u:?}");
            if u.job == job && u.bytes >= bytes {
                return u;
            }
        }
    }
}

fn s1_to_s2() -> StreamSpec {
    StreamSpec::Incremental {
        from: "s1".into(),
        to: "s2".into(),
        intermediates: false,
        from_bookmark: false,
    }
}

fn token() -> JobSecret {
    JobSecret("ab".repeat(32))
}

fn receive_job(job: &str, expect: SnapshotRef) -> ReceiveJob {
    ReceiveJob {
        job: job.into(),
        token: token(),
        source_node: SOURCE.into(),
        dataset: DATASET.into(),
        force: false,
        discards: Vec::new(),
        base: None,
        discard_partial: false,
        expect,
        hold_tag: TAG.into(),
        accept_secs: 30,
        source_dataset: None,
        class: None,
    }
}

fn send_job(job: &str, target: &Node, offer: &ReceiveOffer, stream: StreamSpec) -> SendJob {
    SendJob {
        job: job.into(),
        token: token(),
        target_node: target.name.into(),
        target_addr: offer.addr.clone(),
        dataset: DATASET.into(),
        stream,
        raw: false,
        compress: false,
        bytes_per_sec: None,
        hold_tag: TAG.into(),
    }
}

/// Runs one job to its end on both sides; the target's final report.
async fn run(
    source: &mut Node,
    target: &mut Node,
    receive: ReceiveJob,
    stream: StreamSpec,
) -> JobUpdate {
    let job = receive.job.clone();
    let offer = target.repl.receive(receive, ACTOR.into()).await.unwrap();
    source
        .repl
        .send(send_job(&job, target, &offer, stream))
        .await
        .unwrap();
    let sent = source.outcome(&job).await;
    assert_eq!(sent.state, JobPhase::Done, "{sent:?}");
    target.outcome(&job).await
}

/// A source with `@s1` and a target that received it.
async fn seeded() -> (Node, Node, SnapshotRef) {
    let pki = Pki::new("fleet");
    let mut source = node(&pki, SOURCE, SimBackend::new()).await;
    let mut target = node(&pki, TARGET, SimBackend::new()).await;
    source.sim.create_dataset(&source.ds()).unwrap();
    source.sim.write_data(&source.ds(), 1 << 20).unwrap();
    let s1 = source.snapshot("s1");
    let done = run(
        &mut source,
        &mut target,
        receive_job("seed", s1.clone()),
        StreamSpec::Full {
            snapshot: "s1".into(),
        },
    )
    .await;
    assert_eq!(done.landed, Some(s1.clone()), "{done:?}");
    (source, target, s1)
}

fn forced(job: &str, expect: SnapshotRef, base: &SnapshotRef, discards: &[&str]) -> ReceiveJob {
    ReceiveJob {
        force: true,
        base: Some(base.clone()),
        discards: discards.iter().map(|s| s.to_string()).collect(),
        ..receive_job(job, expect)
    }
}

fn rollback_records(node: &Node) -> Vec<serde_json::Value> {
    node.audit()
        .into_iter()
        .filter(|r| r["action"] == "receive -F")
        .collect()
}

#[tokio::test]
async fn a_forged_rollback_plan_is_refused_before_anything_is_written() {
    let (source, target, s1) = seeded().await;
    for name in ["t1", "t2", "t3"] {
        target.snapshot(name);
    }
    let s2 = source.snapshot("s2");
    let before = target.names();
    let audit_before = target.audit().len();

    // The plan names one snapshot that is not there; three real ones would go.
    let forged = forced("forged", s2.clone(), &s1, &["zdr_fake"]);
    let e = target.repl.receive(forged, ACTOR.into()).await.unwrap_err();
    let e = e.message;
    assert!(e.contains(DATASET), "{e}");
    assert!(e.contains("would destroy [t1, t2, t3]"), "{e}");
    assert!(e.contains("the plan names [zdr_fake]"), "{e}");

    // Without a base, or with a base this node does not have, nothing goes either.
    let no_base = ReceiveJob {
        base: None,
        ..forced("no-base", s2.clone(), &s1, &["t1", "t2", "t3"])
    };
    let e = target
        .repl
        .receive(no_base, ACTOR.into())
        .await
        .unwrap_err()
        .message;
    assert!(e.contains("receive -F without a base"), "{e}");
    let stranger = SnapshotRef {
        name: "s1".into(),
        guid: s1.guid ^ 1,
    };
    let e = target
        .repl
        .receive(
            forced("stranger", s2.clone(), &stranger, &["t1", "t2", "t3"]),
            ACTOR.into(),
        )
        .await
        .unwrap_err()
        .message;
    assert!(
        e.contains("no snapshot of tank/db on this node has that GUID"),
        "{e}"
    );

    assert!(rollback_records(&target).is_empty(), "{:?}", target.audit());
    assert_eq!(target.audit().len(), audit_before);
    assert_eq!(target.names(), before);
    for job in ["forged", "no-base", "stranger"] {
        assert!(
            target.repl.status(job).is_none(),
            "{job} must not be registered"
        );
    }
}

#[tokio::test]
async fn a_true_rollback_plan_is_audited_with_the_real_list_and_lands() {
    let (mut source, mut target, s1) = seeded().await;
    target.snapshot("t1");
    target.snapshot("t2");
    let s2 = source.snapshot("s2");
    let done = run(
        &mut source,
        &mut target,
        // Planned in another order: the same snapshots go all the same.
        forced("rollback", s2.clone(), &s1, &["t2", "t1"]),
        s1_to_s2(),
    )
    .await;
    assert_eq!(done.state, JobPhase::Done, "{done:?}");
    assert_eq!(done.landed, Some(s2.clone()));
    assert_eq!(target.snapshots(), vec![s1.clone(), s2]);
    let records = rollback_records(&target);
    assert_eq!(records.len(), 2, "intent and outcome: {records:?}");
    let why = format!(
        "job rollback: roll tank/db back to @s1 (GUID {}), destroying [t1, t2] as listed on this node",
        s1.guid
    );
    assert_eq!(records[0]["why"], why.as_str());
    assert_eq!(records[0]["outcome"], "intent");
    assert_eq!(records[1]["why"], why.as_str());
    assert_eq!(records[1]["outcome"], "done");
    assert_eq!(records[0]["actor"], ACTOR);
}

/// A signed policy as the agent keeps it: class `gold` with a one-hour
/// window for `tank/db`, copies under `tank/copy/` in no class.
fn gold_policy() -> SignedPolicy {
    let policy = serde_json::from_value(serde_json::json!({
        "version": 1,
        "sites": { "a": {} },
        "nodes": { "node-a": { "site": "a", "media": "ssd" }, "node-b": { "site": "a", "media": "hdd" } },
        "classes": {
            "gold": { "tiers": { "1h": 1 }, "rpo": "1h", "rto": "1h", "immutable_for": "1h" }
        },
        "datasets": [
            { "match": "tank/copy/**", "exclude": true },
            { "match": "tank/db", "class": "gold" }
        ]
    }))
    .unwrap();
    SignedPolicy {
        bundle: PolicyBundle {
            revision: 1,
            issued_at: 0,
            source_digest: String::new(),
            policy,
        },
        kid: "coordinator".into(),
        epoch: 1,
        exp: i64::MAX,
        raw: Vec::new(),
    }
}

#[tokio::test]
async fn a_copy_gets_the_floor_of_its_sources_class_from_the_targets_own_policy() {
    let pki = Pki::new("fleet");
    let mut source = node(&pki, SOURCE, SimBackend::new()).await;
    let mut target = node(&pki, TARGET, SimBackend::new()).await;
    target.lc.install_policy(gold_policy());
    source.sim.create_dataset(&source.ds()).unwrap();
    source.sim.write_data(&source.ds(), 1 << 20).unwrap();
    let copy = DatasetName::parse("tank/copy/db").unwrap();
    // The command names no class: the target's own policy gives tank/db's.
    let into_copy = |job: &str, expect: SnapshotRef| ReceiveJob {
        dataset: copy.to_string(),
        source_dataset: Some(DATASET.into()),
        ..receive_job(job, expect)
    };
    let z1 = source.snapshot("zdr_1");
    let full = StreamSpec::Full {
        snapshot: "zdr_1".into(),
    };
    let done = run(
        &mut source,
        &mut target,
        into_copy("full", z1.clone()),
        full,
    )
    .await;
    assert_eq!(done.state, JobPhase::Done, "{done:?}");
    let z2 = source.snapshot("zdr_2");
    let incr = StreamSpec::Incremental {
        from: "zdr_1".into(),
        to: "zdr_2".into(),
        intermediates: false,
        from_bookmark: false,
    };
    let done = run(&mut source, &mut target, into_copy("incr", z2), incr).await;
    assert_eq!(done.state, JobPhase::Done, "{done:?}");
    for name in ["zdr_1", "zdr_2"] {
        let holds = target.sim.holds(&copy, name).unwrap();
        assert!(
            holds.iter().any(|t| t == FLOOR_HOLD),
            "{copy}@{name}: {holds:?}"
        );
    }

    // A rollback that would discard zdr_2, validly planned: the floor refuses it.
    let z3 = source.snapshot("zdr_3");
    let rollback = ReceiveJob {
        force: true,
        base: Some(z1.clone()),
        discards: vec!["zdr_2".into()],
        ..into_copy("rollback", z3)
    };
    let e = target
        .repl
        .receive(rollback, ACTOR.into())
        .await
        .unwrap_err();
    let refusal = e.floor.expect("a typed floor refusal");
    assert_eq!(refusal.operation, FloorOperation::ReceiveForce);
    assert_eq!(refusal.dataset, copy.as_str());
    let hits: Vec<&str> = refusal.snapshots.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(hits, ["zdr_2"]);
    assert!(
        e.message.contains("inside the immutability window"),
        "{}",
        e.message
    );
    assert!(target.repl.status("rollback").is_none());
    let refused: Vec<_> = target
        .audit()
        .into_iter()
        .filter(|r| r["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["action"], "receive -F");
    assert_eq!(refused[0]["target"], "tank/copy/db@zdr_2");
    let raised = std::iter::from_fn(|| target.lc.pop_event())
        .filter(|e| matches!(e.kind, EventKind::FloorRefused(_)))
        .count();
    assert_eq!(raised, 1);

    // A prune of the copy asking for no window, with the holds gone (a root
    // user released them): the floor refuses that too.
    for name in ["zdr_1", "zdr_2"] {
        target.sim.release(&copy, name, FLOOR_HOLD).unwrap();
    }
    target.sim.release(&copy, "zdr_2", TAG).unwrap();
    // A newer one, so that zdr_2 is neither the newest nor its hour's first.
    target
        .sim
        .snapshot(std::slice::from_ref(&copy), "zdr_3", false)
        .unwrap();
    let prune = PruneReplica {
        dataset: copy.to_string(),
        task: "stolen".into(),
        tiers: serde_json::from_value(serde_json::json!({ "1h": 1 })).unwrap(),
        immutable_for_secs: 0,
        keep: Vec::new(),
    };
    let report = target
        .lc
        .prune_replica(&prune, zdr_agent::clock::now(), ACTOR);
    assert!(report.destroyed.is_empty(), "{report:?}");
    assert_eq!(report.refused.len(), 1, "{report:?}");
    let names: Vec<String> = target
        .sim
        .list_snapshots(&copy)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["zdr_1", "zdr_2", "zdr_3"]);
    let hits: Vec<&str> = report.refused[0]
        .snapshots
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(hits, ["zdr_2"]);
}

#[tokio::test]
async fn a_receive_without_force_neither_lists_nor_audits_a_rollback() {
    let (mut source, mut target, _) = seeded().await;
    let s2 = source.snapshot("s2");
    let mut job = receive_job("plain", s2.clone());
    // A plan the -F check would refuse: ignored, since nothing is forced.
    job.discards = vec!["zdr_fake".into()];
    let done = run(&mut source, &mut target, job, s1_to_s2()).await;
    assert_eq!(done.landed, Some(s2), "{done:?}");
    assert!(rollback_records(&target).is_empty());
}

#[tokio::test]
async fn status_reports_a_running_job_s_latest_bytes_and_its_last_report_once_it_ended() {
    let pki = Pki::new("fleet");
    let mut source = node(&pki, SOURCE, SimBackend::new()).await;
    let mut target = node(&pki, TARGET, SimBackend::new()).await;
    source.sim.create_dataset(&source.ds()).unwrap();
    source.sim.write_data(&source.ds(), 16 << 20).unwrap();
    let s1 = source.snapshot("s1");
    let offer = target
        .repl
        .receive(receive_job("slow", s1), ACTOR.into())
        .await
        .unwrap();
    let mut send = send_job(
        "slow",
        &target,
        &offer,
        StreamSpec::Full {
            snapshot: "s1".into(),
        },
    );
    send.bytes_per_sec = Some(2 << 20);
    source.repl.send(send).await.unwrap();

    let reported = source.progress("slow", 1).await;
    let now = source.repl.status("slow").expect("the send runs");
    assert_eq!(now.role, JobRole::Source);
    assert_eq!(now.state, JobPhase::Running);
    assert!(
        now.bytes >= reported.bytes && now.bytes > 0,
        "{now:?} after {reported:?}"
    );
    // Status is the latest report: the one seen, or one sent since.
    let mut since = vec![reported];
    while let Ok(u) = source.updates.try_recv() {
        since.push(u);
    }
    assert!(since.contains(&now), "{now:?} is none of {since:?}");
    let there = target.repl.status("slow").expect("the receive runs");
    assert_eq!(there.role, JobRole::Target);

    source.repl.cancel("slow").unwrap();
    let (src_end, dst_end) = (source.outcome("slow").await, target.outcome("slow").await);
    assert_eq!(src_end.state, JobPhase::Failed);
    assert_eq!(dst_end.state, JobPhase::Failed);
    // Once ended, status is the job's last report, for a new leader that
    // asks how an attempt ended while nobody listened.
    assert_eq!(source.repl.status("slow"), Some(src_end));
    assert_eq!(target.repl.status("slow"), Some(dst_end));
    assert_eq!(source.repl.status("never-ran"), None);
}

/// The goal from issue 12: a transfer cancelled mid-way and resumed from
/// its token re-sends less than 5 % of the stream. Counts every byte the
/// source sent over both attempts against the stream's own size.
#[tokio::test]
async fn a_cancelled_stream_resumes_re_sending_less_than_5_percent() {
    let pki = Pki::new("fleet");
    let mut source = node(&pki, SOURCE, SimBackend::new()).await;
    let mut target = node(&pki, TARGET, SimBackend::new()).await;
    let ds = source.ds();
    source.sim.create_dataset(&ds).unwrap();
    source.sim.write_data(&ds, 96 << 20).unwrap();
    let s1 = source.snapshot("s1");
    let full = StreamSpec::Full {
        snapshot: "s1".into(),
    };
    let total = source
        .sim
        .send(
            &SendSpec::Full {
                dataset: ds.clone(),
                snapshot: "s1".into(),
                raw: false,
            },
            &mut std::io::sink(),
        )
        .unwrap();

    let offer = target
        .repl
        .receive(receive_job("first", s1.clone()), ACTOR.into())
        .await
        .unwrap();
    let mut send = send_job("first", &target, &offer, full);
    send.bytes_per_sec = Some(32 << 20);
    source.repl.send(send).await.unwrap();
    source.progress("first", total / 2).await;
    // As a new leader cancels an attempt: both ends.
    source.repl.cancel("first").unwrap();
    let _ = target.repl.cancel("first");
    let first = source.outcome("first").await;
    let cut = target.outcome("first").await;
    assert_eq!(cut.state, JobPhase::Failed, "{cut:?}");
    assert!(cut.resumable, "{cut:?}");

    let offer = target
        .repl
        .receive(receive_job("second", s1.clone()), ACTOR.into())
        .await
        .unwrap();
    let token = offer.resume_token.clone().expect("a saved partial receive");
    // The simulator writes OpenZFS-format tokens: the offer and the cut
    // attempt's report say what the partial receive is of.
    let partial = offer.partial.clone().expect("a described partial receive");
    assert_eq!((partial.toguid, partial.fromguid), (s1.guid, None));
    assert!(partial.bytes > 0 && partial.bytes < total, "{partial:?}");
    assert_eq!(cut.partial, Some(partial));
    let send = send_job("second", &target, &offer, StreamSpec::Resume { token });
    source.repl.send(send).await.unwrap();
    let second = source.outcome("second").await;
    assert_eq!(second.state, JobPhase::Done, "{second:?}");
    let landed = target.outcome("second").await;
    assert_eq!(landed.landed, Some(s1), "{landed:?}");

    let re_sent = (first.bytes + second.bytes).saturating_sub(total);
    let fraction = re_sent as f64 / total as f64;
    eprintln!(
        "stream {total} B; first attempt sent {} B before the cancel; the resumed one {} B \
         ({:.1} % of the stream); re-sent {re_sent} B = {:.2} % of the stream",
        first.bytes,
        second.bytes,
        100.0 * second.bytes as f64 / total as f64,
        100.0 * fraction
    );
    assert!(first.bytes >= total / 2 && first.bytes < total, "{first:?}");
    assert!(
        fraction < 0.05,
        "re-sent {:.2} % of the stream",
        100.0 * fraction
    );
}

#[tokio::test]
async fn dropping_a_hold_releases_only_that_tag_and_a_dataset_that_is_gone_holds_nothing() {
    let (source, _target, s1) = seeded().await;
    let ds = source.ds();
    source.sim.hold(&ds, &s1.name, "zdr-drill-j1").unwrap();
    source.sim.hold(&ds, &s1.name, "zdr-other").unwrap();
    let said = source
        .repl
        .drop_holds(DATASET, "zdr-drill-j1")
        .await
        .unwrap();
    assert!(said.contains("released zdr-drill-j1"), "{said}");
    let left = source.sim.holds(&ds, &s1.name).unwrap();
    assert!(left.contains(&"zdr-other".to_string()), "{left:?}");
    assert!(!left.contains(&"zdr-drill-j1".to_string()), "{left:?}");
    // Asked again (the coordinator retries until it hears back): nothing left.
    let said = source
        .repl
        .drop_holds(DATASET, "zdr-drill-j1")
        .await
        .unwrap();
    assert!(said.contains("no snapshot"), "{said}");
    // A failed restore's destination was never made: done, not an error.
    let said = source
        .repl
        .drop_holds("tank/never-made", "zdr-restore-into-j2")
        .await;
    assert!(said.is_ok(), "{said:?}");
}
