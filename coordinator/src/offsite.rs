//! Uploads to buckets (`buckets:` in the tasks file): what each selected
//! dataset uploads next (pure), from the manifests its uploads committed
//! and the source's snapshots, matched by GUID, never by name.
//!
//! Rules, for one bucket task and one source dataset:
//! 1. nothing starts while an upload runs or its hold moves, before
//!    `chain.incremental_every` after the last upload (or a retry's
//!    backoff), or while the source node is offline;
//! 2. the chain is the last committed full and the incrementals after it;
//!    only uploads that reported their manifest count (an upload cut before
//!    its manifest is never continued from);
//! 3. a new full of the newest snapshot when there is no chain, when the
//!    chain's full is `chain.full_every` old, when the send flags would
//!    change (raw), or when the chain's tip GUID is gone from the source;
//! 4. else up to date when the tip is the newest snapshot, or else one `-i`
//!    incremental from the tip (found by GUID) to the newest, continuing the
//!    tip's manifest;
//! 5. with object lock, every object is locked until the chain's last
//!    possible incremental plus `retain` (`LockSpec::retain_until`);
//! 6. no incremental is locked past a stream it depends on: a lock on an
//!    incremental is worthless once its base can be deleted. Its lock is
//!    the policy's, cut to the chain's shortest; when the policy's is
//!    longer than that by more than [`LOCK_SLACK_SECS`] (`retain` or
//!    `full_every` grew, or the bucket gained a lock, since the chain
//!    began), a new full starts instead. The slack absorbs the seconds
//!    between the coordinator's plan, which sets a full's lock, and the
//!    agent's upload, which sets its `created`.

use zdr_common::policy::Pattern;
use zdr_common::wire::{
    BucketSpec, DatasetInventory, LockMode, ManifestRef, SnapshotInfo, SnapshotRef, StreamSpec,
    UploadLock,
};
use zdr_common::DatasetName;
use zdr_schemas::buckets::{self, BucketTask};
use zdr_schemas::tasks::Source;

use crate::jobs::{JobRecord, PlannedStep};
use crate::pairing::Pairing;

/// How much longer than its chain's shortest lock an incremental's lock may
/// be (and is cut to it) before rule 6 starts a new full instead.
pub const LOCK_SLACK_SECS: i64 = 300;

/// Manifests kept per record: the current chain and the one before, at
/// most this many.
const KEEP_COMMITTED: usize = 1_000;

/// What one bucket task's dataset gets on this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadDecision {
    Wait,
    /// The chain's tip is the newest snapshot.
    UpToDate,
    Start(Box<UploadPlan>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPlan {
    pub step: PlannedStep,
    /// The manifest an incremental continues.
    pub parent: Option<ManifestRef>,
    pub raw: bool,
    pub lock: Option<UploadLock>,
    /// Why a full (shown in the history); `None` for an incremental.
    pub full_because: Option<String>,
}

/// Which datasets a bucket task's `source` selects, as for replication
/// tasks: the class the agent resolved, name patterns, nodes.
pub struct Selector<'a> {
    source: &'a Source,
    patterns: Vec<Pattern>,
}

impl<'a> Selector<'a> {
    pub fn new(source: &'a Source) -> Self {
        Selector {
            source,
            patterns: source
                .patterns
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
        }
    }

    pub fn node(&self, node: &str) -> bool {
        self.source
            .nodes
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == node))
    }

    pub fn dataset(&self, inv: &DatasetInventory) -> bool {
        if let Some(class) = &self.source.class {
            if inv.class.as_deref() != Some(class.as_str()) {
                return false;
            }
        }
        if self.source.patterns.is_empty() {
            return true;
        }
        DatasetName::parse(&inv.dataset).is_ok_and(|d| self.patterns.iter().any(|p| p.matches(&d)))
    }
}

/// The hold that keeps a bucket task's chain tip on the source.
pub fn hold_tag(task: &str) -> String {
    format!("zdr-offsite-{task}")
}

/// The record's target end: the bucket stands where a node would.
pub fn pairing(task: &BucketTask, node: &str, dataset: &str) -> Pairing {
    Pairing {
        task: task.name.clone(),
        source_node: node.to_string(),
        dataset: dataset.to_string(),
        target_node: format!("bucket:{}", task.name),
        target_dataset: format!(
            "{}/{}/{}",
            task.bucket.endpoint.trim_end_matches('/'),
            task.bucket.bucket,
            task.bucket.prefix
        ),
        reason: "bucket task".into(),
    }
}

/// The bucket as an upload command gives it; `None` when the task names no
/// credentials (the checker refuses such a task).
pub fn bucket_spec(task: &BucketTask) -> Option<BucketSpec> {
    let credentials = task.bucket.credentials.reference()?;
    Some(BucketSpec {
        endpoint: task.bucket.endpoint.clone(),
        region: task.bucket.region.clone(),
        bucket: task.bucket.bucket.clone(),
        prefix: task.bucket.prefix.clone(),
        storage_class: task.bucket.storage_class.clone(),
        credentials,
    })
}

/// Rule 1, then [`plan`].
pub fn decide(
    task: &BucketTask,
    record: Option<&JobRecord>,
    source_online: bool,
    source: Option<&DatasetInventory>,
    now_ms: i64,
) -> UploadDecision {
    let every_ms = task.chain.incremental_every.secs() as i64 * 1000;
    if record.is_some_and(|r| !r.due(every_ms, now_ms)) || !source_online {
        return UploadDecision::Wait;
    }
    let Some(src) = source else {
        return UploadDecision::Wait;
    };
    let committed = record
        .and_then(|r| r.upload.as_ref())
        .map_or(&[][..], |u| u.committed.as_slice());
    plan(
        task,
        committed,
        &src.snapshots,
        src.encrypted,
        now_ms / 1000,
    )
}

/// The current chain: the last full and what follows it.
pub fn current_chain(committed: &[ManifestRef]) -> &[ManifestRef] {
    match committed.iter().rposition(|m| m.from_guid.is_none()) {
        Some(i) => &committed[i..],
        None => &[],
    }
}

/// Rules 2 to 5. `now` in unix seconds; `snapshots` in createtxg order.
pub fn plan(
    task: &BucketTask,
    committed: &[ManifestRef],
    snapshots: &[SnapshotInfo],
    encrypted: bool,
    now: i64,
) -> UploadDecision {
    let Some(newest) = snapshots.last() else {
        return UploadDecision::Wait;
    };
    let raw = task.raw || encrypted;
    let chain = current_chain(committed);
    let to = SnapshotRef {
        name: newest.name.clone(),
        guid: newest.guid,
    };
    let full = |why: String| {
        UploadDecision::Start(Box::new(UploadPlan {
            step: PlannedStep {
                stream: StreamSpec::Full {
                    snapshot: newest.name.clone(),
                },
                expect: to.clone(),
                force: false,
                discards: Vec::new(),
                base: None,
            },
            parent: None,
            raw,
            lock: lock(task, now, now),
            full_because: Some(why),
        }))
    };
    let (Some(first), Some(tip)) = (chain.first(), chain.last()) else {
        return full("no committed chain in the bucket yet".into());
    };
    let age = now - first.created;
    if age >= task.chain.full_every.secs() as i64 {
        return full(format!(
            "the chain's full is {age} s old; a new full every {}",
            task.chain.full_every
        ));
    }
    if first.raw != raw {
        return full(format!(
            "the send flags change (raw {} → {raw}); a chain keeps its flags",
            first.raw
        ));
    }
    if tip.to_guid == newest.guid {
        return UploadDecision::UpToDate;
    }
    let Some(base) = snapshots.iter().find(|s| s.guid == tip.to_guid) else {
        return full(format!(
            "the chain's tip (GUID {}, sent as @{}) is gone from the source",
            tip.to_guid, tip.to_name
        ));
    };
    let lock = match lock(task, first.created, now) {
        None => None,
        Some(wanted) => {
            let (shortest, stream) = chain
                .iter()
                .map(|m| (m.retain_until, m.stream.as_str()))
                .min()
                .expect("the chain has a full");
            if wanted.retain_until > shortest + LOCK_SLACK_SECS {
                let held = if shortest == 0 {
                    "is not locked at all".to_string()
                } else {
                    format!("is locked only until {shortest}")
                };
                return full(format!(
                    "an incremental would be locked until {} but stream {stream} of the chain                      {held}; a base must outlive what depends on it",
                    wanted.retain_until
                ));
            }
            Some(UploadLock {
                retain_until: wanted.retain_until.min(shortest),
                ..wanted
            })
        }
    };
    UploadDecision::Start(Box::new(UploadPlan {
        step: PlannedStep {
            stream: StreamSpec::Incremental {
                from: base.name.clone(),
                to: newest.name.clone(),
                intermediates: false,
                from_bookmark: false,
            },
            expect: to,
            force: false,
            discards: Vec::new(),
            base: Some(SnapshotRef {
                name: base.name.clone(),
                guid: base.guid,
            }),
        },
        parent: Some(tip.clone()),
        raw,
        lock,
        full_because: None,
    }))
}

fn lock(task: &BucketTask, chain_start: i64, now: i64) -> Option<UploadLock> {
    task.bucket.object_lock.map(|l| UploadLock {
        mode: match l.mode {
            buckets::LockMode::Governance => LockMode::Governance,
            buckets::LockMode::Compliance => LockMode::Compliance,
        },
        retain_until: l.retain_until(task.chain, chain_start, now),
    })
}

/// Adds a committed manifest; keeps the current chain and the one before.
pub fn commit(committed: &mut Vec<ManifestRef>, m: ManifestRef) {
    committed.push(m);
    let fulls: Vec<usize> = committed
        .iter()
        .enumerate()
        .filter(|(_, m)| m.from_guid.is_none())
        .map(|(i, _)| i)
        .collect();
    let keep_from = match fulls.len() {
        0 | 1 => 0,
        n => fulls[n - 2],
    };
    let keep_from = keep_from.max(committed.len().saturating_sub(KEEP_COMMITTED));
    committed.drain(..keep_from);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: &str = r#"version: 1
tasks: []
buckets:
  - name: vault
    source: { class: gold }
    bucket:
      endpoint: http://127.0.0.1:9
      bucket: zdr-vault
      region: r
      credentials: { env: ZDR_VAULT }
      object_lock: { mode: governance, retain: 100s }
    chain: { full_every: 1000s, incremental_every: 10s }
    recipients: ["BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="]
"#;

    fn task() -> BucketTask {
        let policy = zdr_schemas::parse_policy(
            "p.yaml",
            "version: 1\nsites: { a: {}, b: {} }\nnodes: { n: { site: a, media: ssd }, m: { site: b, media: hdd } }\nclasses: { gold: { rpo: 1h, rto: 1h } }\ndatasets: [{ match: tank/**, class: gold }]\n",
        )
        .unwrap();
        zdr_schemas::parse_tasks("t.yml", TASKS, &policy)
            .unwrap()
            .buckets
            .remove(0)
    }

    fn snap(name: &str, guid: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: guid,
            creation: 0,
            used: 0,
            userrefs: 0,
        }
    }

    /// An upload of `task()` at `created`, locked as its chain's full would be.
    fn uploaded(from: Option<u64>, to: u64, created: i64) -> ManifestRef {
        locked(from, to, created, created + 1_000 + 100)
    }

    fn locked(from: Option<u64>, to: u64, created: i64, retain_until: i64) -> ManifestRef {
        ManifestRef {
            stream: format!("s{to}"),
            hash: format!("h{to}"),
            key: format!("k{to}"),
            dataset: "tank/d".into(),
            from_guid: from,
            to_guid: to,
            to_name: format!("n{to}"),
            raw: true,
            stream_bytes: 1,
            segments: 1,
            created,
            retain_until,
        }
    }

    fn start(d: UploadDecision) -> UploadPlan {
        match d {
            UploadDecision::Start(p) => *p,
            other => panic!("no upload planned: {other:?}"),
        }
    }

    #[test]
    fn first_a_full_of_the_newest_locked_past_the_chain() {
        let p = start(plan(
            &task(),
            &[],
            &[snap("a", 1), snap("b", 2)],
            false,
            5_000,
        ));
        assert_eq!(
            p.step.stream,
            StreamSpec::Full {
                snapshot: "b".into()
            }
        );
        assert_eq!(p.step.expect.guid, 2);
        assert!(p.parent.is_none() && p.raw);
        let lock = p.lock.unwrap();
        assert_eq!(lock.mode, LockMode::Governance);
        assert_eq!(lock.retain_until, 5_000 + 1_000 + 100);
    }

    #[test]
    fn then_incrementals_from_the_tip_by_guid() {
        let committed = [uploaded(None, 2, 5_000)];
        // The tip was renamed on the source: found by GUID all the same.
        let snaps = [snap("renamed", 2), snap("c", 3)];
        let p = start(plan(&task(), &committed, &snaps, false, 5_010));
        assert_eq!(
            p.step.stream,
            StreamSpec::Incremental {
                from: "renamed".into(),
                to: "c".into(),
                intermediates: false,
                from_bookmark: false
            }
        );
        assert_eq!(p.parent.unwrap().hash, "h2");
        assert_eq!(p.lock.unwrap().retain_until, 5_000 + 1_000 + 100);
        assert_eq!(
            plan(&task(), &committed, &[snap("b", 2)], false, 5_010),
            UploadDecision::UpToDate
        );
    }

    #[test]
    fn a_new_full_when_the_chain_cannot_go_on() {
        let committed = [uploaded(None, 2, 5_000), uploaded(Some(2), 3, 5_010)];
        let snaps = [snap("b", 2), snap("c", 3), snap("d", 4)];
        // The full is too old.
        let p = start(plan(&task(), &committed, &snaps, false, 6_000));
        assert!(p.full_because.unwrap().contains("old"));
        // The tip is gone from the source (same name, another GUID).
        let p = start(plan(&task(), &committed, &[snap("c", 99)], false, 5_020));
        assert!(p.full_because.unwrap().contains("gone"));
        // The flags would change.
        let mut plain = task();
        plain.raw = false;
        let p = start(plan(&plain, &committed, &snaps, false, 5_020));
        assert!(p.full_because.unwrap().contains("raw"));
        // An encrypted dataset is raw all the same: the chain goes on.
        let p = start(plan(&plain, &committed, &snaps, true, 5_020));
        assert!(p.full_because.is_none());
        assert_eq!(p.parent.unwrap().to_guid, 3);
        // No snapshot yet: nothing to upload.
        assert_eq!(plan(&task(), &[], &[], false, 0), UploadDecision::Wait);
    }

    #[test]
    fn no_incremental_is_locked_past_its_base() {
        // The agent's `created` is a few seconds after the plan that set
        // the full's lock: the incremental takes the full's lock, not later.
        let committed = [locked(None, 2, 5_004, 5_000 + 1_100)];
        let snaps = [snap("b", 2), snap("c", 3)];
        let p = start(plan(&task(), &committed, &snaps, false, 5_010));
        assert!(p.full_because.is_none());
        assert_eq!(p.lock.unwrap().retain_until, 5_000 + 1_100);

        // `retain` grew from 100 s to 1 day since the chain began.
        let mut longer = task();
        longer.bucket.object_lock.as_mut().unwrap().retain = "1d".parse().unwrap();
        let why = start(plan(&longer, &committed, &snaps, false, 5_010))
            .full_because
            .unwrap();
        assert!(
            why.contains("is locked only until 6100") && why.contains("outlive"),
            "{why}"
        );

        // The bucket gained a lock after an unlocked chain.
        let bare = [locked(None, 2, 5_000, 0)];
        let why = start(plan(&task(), &bare, &snaps, false, 5_010))
            .full_because
            .unwrap();
        assert!(why.contains("is not locked at all"), "{why}");

        // A shorter `retain` needs nothing: the base outlives the incremental.
        let mut shorter = task();
        shorter.bucket.object_lock.as_mut().unwrap().retain = "10s".parse().unwrap();
        let p = start(plan(&shorter, &committed, &snaps, false, 5_010));
        assert!(p.full_because.is_none());
        assert_eq!(p.lock.unwrap().retain_until, 5_004 + 1_000 + 10);
    }

    proptest::proptest! {
        /// Whatever the policy did since the chain began and whenever the
        /// plan runs, an incremental is never locked past a stream of its chain.
        #[test]
        fn an_incremental_never_outlives_its_chain(
            locks in proptest::collection::vec(0i64..20_000, 1..6),
            retain in 1u64..10_000,
            full_every in 1u64..10_000,
            created in 0i64..5_000,
            after in 0i64..10_000,
        ) {
            let mut t = task();
            t.bucket.object_lock.as_mut().unwrap().retain = format!("{retain}s").parse().unwrap();
            t.chain.full_every = format!("{full_every}s").parse().unwrap();
            let committed: Vec<ManifestRef> = locks
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let from = (i > 0).then_some(i as u64);
                    locked(from, i as u64 + 1, created, *l)
                })
                .collect();
            let tip = committed.len() as u64;
            let snaps = [snap("tip", tip), snap("new", tip + 1)];
            if let UploadDecision::Start(p) = plan(&t, &committed, &snaps, false, created + after) {
                if p.full_because.is_none() {
                    let until = p.lock.unwrap().retain_until;
                    let shortest = *locks.iter().min().unwrap();
                    proptest::prop_assert!(until <= shortest, "{until} > {shortest}");
                }
            }
        }
    }

    #[test]
    fn only_the_current_chain_and_the_one_before_are_kept() {
        let mut c = Vec::new();
        for (i, from) in [None, Some(1), None, Some(3), None].into_iter().enumerate() {
            commit(&mut c, uploaded(from, i as u64 + 1, i as i64));
        }
        let kept: Vec<u64> = c.iter().map(|m| m.to_guid).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(current_chain(&c).len(), 1);
        assert!(current_chain(&[uploaded(Some(1), 2, 0)]).is_empty());
    }
}
