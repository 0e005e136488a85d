//! Restore drills: prove that a copy gives the data back, and time it.
//! `plan` (pure) says which datasets a class's drill restores, from which
//! copy and when; `check` (pure) picks the snapshot, checks the drill
//! node's space and judges the two content hashes; this module is the shell
//! the leader's tick and the `/api/v1/drills` routes call.
//!
//! A drill is a job of kind `Drill` on the shared engine: a restore of the
//! copy's newest snapshot that production still holds into scratch on the
//! copy's own node (`<pool>/zdr-drill/<job>`, received `canmount=noauto`;
//! the replica itself is only read, never written: a snapshot made on a
//! raw replica breaks its next incremental, OpenZFS #15314), then
//! `HashSnapshot` of that snapshot on production and on the scratch, the
//! verdict, and `DestroyScratch`. Production's snapshot carries the hold
//! `zdr-drill-<job>` from the drill's start until it was hashed, so that
//! retention cannot take it in between. Each phase is timed; the measured RTO is
//! start to verified data, compared with the class's RTO. A drill that
//! cannot start (no replica, no room, copy offline) is recorded as failed,
//! so a scheduled drill is never silently skipped.

pub mod check;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use zdr_common::wire::{is_drill_scratch, Command, ContentHash, Outcome, DRILL_ROOT};

use crate::alerts::rules::DrillOutcome;
use crate::fleet::Fleet;
use crate::jobs::{
    self, DrillInfo, DrillResult, JobKind, JobRecord, JobState, RestoreInfo, RestoreSnapshot,
};
use crate::pairing::Pairing;
use crate::restore::plan::{Destination, PlanError, Request as RestoreRequest};
use crate::restore::points::{CopyKind, PointsError};
use crate::restore::{self, At};
use crate::state::{now_ms, State};
use plan::{ClassDrills, PlannedDrill, Subject};

/// KV `zdr_jobs` key of the classes' drill anchors.
pub const ANCHORS_KEY: &str = "drill-anchors";
/// `zdr drill plan` looks this far ahead.
const PLAN_SECS: i64 = 365 * 86_400;
/// and lists at most this many drills.
const PLAN_LIMIT: usize = 500;
/// `DestroyScratch` is sent this many times at most, this long apart; past
/// that the leader's sweep (`sweep`) destroys the scratch.
const CLEANUP_TRIES: u32 = 4;
const CLEANUP_RETRY: std::time::Duration = std::time::Duration::from_secs(15);
/// `HashSnapshot` is asked again this many times at most, `CLEANUP_RETRY`
/// apart, while its node does not answer: a node restarting just as its
/// drill ends (seen in the kill -9 trials) would otherwise fail a drill
/// whose copy is good.
const HASH_TRIES: u32 = 4;

/// A drill request: `NODE:DATASET`, and the copy's node (else the next in turn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub node: String,
    pub dataset: String,
    pub copy: Option<String>,
}

/// Why a drill could not start.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Points(#[from] PointsError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "no policy is loaded yet; wait for the coordinator to load specs/backup/policies.yaml"
    )]
    NoPolicy,
    #[error(
        "{node}:{dataset} has no replica to drill; a replication task must copy it first \
         (GET /api/v1/pairings)"
    )]
    NoReplica { node: String, dataset: String },
    #[error("copy {copy:?}: no replica of the dataset is on that node; replicas are on {copies}")]
    NotACopy { copy: String, copies: String },
    #[error(
        "the copy on {copy} shares no snapshot (by GUID) with production {node}:{dataset}; \
         let replication catch up, then drill again"
    )]
    NoCommonSnapshot {
        node: String,
        dataset: String,
        copy: String,
    },
    #[error(
        "drill node {node}: pool {pool} has {free} bytes free and the restore needs {need}; \
         free space there, or drill another copy (copy)"
    )]
    NoSpace {
        node: String,
        pool: String,
        need: u64,
        free: u64,
    },
    #[error(
        "drill node {node}: it has not reported pool {pool}, so its free space is unknown; \
         wait for its next heartbeat, then retry"
    )]
    PoolUnknown { node: String, pool: String },
}

/// The answer to `POST /api/v1/drills`.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub job: String,
    pub copy: At,
    pub scratch: At,
    pub snapshot: RestoreSnapshot,
}

/// A drill as `GET /api/v1/drills` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub job: String,
    /// `running`, `passed` or `failed`.
    pub state: &'static str,
    pub class: String,
    /// The class's scheduled drill; `None` when run by hand.
    pub number: Option<u64>,
    pub source: At,
    pub copy: Option<At>,
    pub scratch: Option<At>,
    pub snapshot: Option<RestoreSnapshot>,
    /// Unix seconds.
    pub started: i64,
    pub rto_secs: u64,
    pub plan_ms: u64,
    pub result: Option<DrillResult>,
    pub history: Vec<String>,
}

/// The status of a drill record; `None` for other kinds.
pub fn status(rec: &JobRecord) -> Option<Status> {
    let d = rec.drill.as_ref()?;
    let info = rec.restore.as_ref();
    let state = match &d.result {
        None => "running",
        Some(r) if r.passed => "passed",
        Some(_) => "failed",
    };
    let at = |node: &str, dataset: &str| At {
        node: node.to_string(),
        dataset: dataset.to_string(),
    };
    Some(Status {
        job: rec.id.clone(),
        state,
        class: d.class.clone(),
        number: d.number,
        source: match info {
            Some(i) => at(&i.node, &i.dataset),
            None => at(&rec.source_node, &rec.dataset),
        },
        copy: info.map(|_| at(&rec.source_node, &rec.dataset)),
        scratch: info.map(|_| at(&rec.target_node, &rec.target_dataset)),
        snapshot: info.map(|i| i.snapshot.clone()),
        started: rec.started_at_ms / 1000,
        rto_secs: d.rto_secs,
        plan_ms: d.plan_ms,
        result: d.result.clone(),
        history: rec.history.clone(),
    })
}

/// Every drill, newest first.
pub fn list(state: &State) -> Vec<Status> {
    jobs::list(state).iter().filter_map(status).collect()
}

/// A drill record's key in KV `zdr_jobs`.
pub fn drill_key(id: &str) -> String {
    crate::bus::inventory_key("drill", id)
}

fn names(nodes: &[&str]) -> String {
    if nodes.is_empty() {
        "none".into()
    } else {
        nodes.join(", ")
    }
}

/// Plans a drill and hands it to the job engine; nothing is sent before
/// every check passed. `number` is the class's scheduled drill, if any.
pub async fn submit(
    state: &Arc<State>,
    req: &Request,
    number: Option<u64>,
) -> Result<Accepted, DrillError> {
    let t0 = now_ms();
    let points = restore::restore_points(state, &req.node, &req.dataset)?;
    let nodes = restore::node_facts(state);
    let known: Vec<String> = nodes.keys().cloned().collect();
    let rec =
        {
            let policy = state.policy();
            let p = policy.as_ref().ok_or(DrillError::NoPolicy)?;
            let fleet = state.fleet();
            let production = fleet.dataset(&req.node, &req.dataset);
            let class = production.and_then(|i| i.class.clone()).ok_or_else(|| {
                PointsError::NotProtected {
                    node: req.node.clone(),
                    dataset: req.dataset.clone(),
                }
            })?;
            let rto_secs = p.policy.classes.get(&class).map_or(0, |c| c.rto.secs());
            let replicas: Vec<_> = points
                .copies
                .iter()
                .filter(|c| c.copy == CopyKind::Replica)
                .collect();
            let replica_nodes: Vec<&str> = replicas.iter().map(|c| c.node.as_str()).collect();
            let mut jobs = state.jobs();
            let copy =
                match &req.copy {
                    Some(n) => *replicas.iter().find(|c| &c.node == n).ok_or_else(|| {
                        DrillError::NotACopy {
                            copy: n.clone(),
                            copies: names(&replica_nodes),
                        }
                    })?,
                    None if replicas.is_empty() => {
                        return Err(DrillError::NoReplica {
                            node: req.node.clone(),
                            dataset: req.dataset.clone(),
                        })
                    }
                    None => {
                        // By hand, copies take turns after the drills before.
                        let before = jobs
                            .records()
                            .filter_map(|r| r.restore.as_ref().filter(|_| r.kind == JobKind::Drill))
                            .filter(|i| i.node == req.node && i.dataset == req.dataset)
                            .count();
                        replicas[before % replicas.len()]
                    }
                };
            let snapshot = check::common_snapshot(
                &copy.snapshots,
                production.map_or(&[][..], |i| &i.snapshots[..]),
            )
            .ok_or_else(|| DrillError::NoCommonSnapshot {
                node: req.node.clone(),
                dataset: req.dataset.clone(),
                copy: copy.node.clone(),
            })?
            .clone();
            let pool = copy
                .dataset
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let need = fleet
                .dataset(&copy.node, &copy.dataset)
                .map_or(0, |i| i.used);
            let free = fleet
                .nodes
                .get(&copy.node)
                .and_then(|n| n.pools.iter().find(|x| x.name == pool))
                .map(|x| x.free)
                .ok_or_else(|| DrillError::PoolUnknown {
                    node: copy.node.clone(),
                    pool: pool.clone(),
                })?;
            if !check::fits(need, free) {
                return Err(DrillError::NoSpace {
                    node: copy.node.clone(),
                    pool,
                    need,
                    free,
                });
            }
            let t = now_ms();
            let seq = jobs.next_seq();
            let instance = &state.config().instance;
            let scratch = format!("{pool}/{DRILL_ROOT}/{instance}-{t}-{seq}");
            let rreq = RestoreRequest {
                node: req.node.clone(),
                dataset: req.dataset.clone(),
                at: None,
                snapshot: Some(snapshot.name.clone()),
                from: Some(copy.node.clone()),
                to_node: copy.node.clone(),
                to_dataset: scratch.clone(),
                replace: false,
            };
            let dest = Destination {
                facts: nodes.get(&copy.node),
                existing: fleet.dataset(&copy.node, &scratch),
            };
            let planned = restore::plan::plan(&rreq, &points, dest, &known, t / 1000)?;
            let link = Pairing {
                task: "drill".into(),
                source_node: copy.node.clone(),
                dataset: copy.dataset.clone(),
                target_node: copy.node.clone(),
                target_dataset: scratch,
                reason: String::new(),
            };
            let mut rec = JobRecord::new(JobKind::Drill, &link, instance, seq, planned.steps, t)
                .continue_from(None, t);
            rec.next_attempt_at_ms = Some(t);
            rec.restore = Some(RestoreInfo {
                node: req.node.clone(),
                dataset: req.dataset.clone(),
                snapshot: RestoreSnapshot {
                    name: snapshot.name.clone(),
                    guid: snapshot.guid,
                    creation: snapshot.creation,
                },
                raw: planned.raw,
                replace: false,
                landed_bytes: 0,
                landed_guid: None,
                holds_released: false,
                release_at_ms: None,
                holds_taken: false,
                take_at_ms: None,
            });
            rec.drill = Some(DrillInfo {
                class,
                number,
                rto_secs,
                plan_ms: (now_ms() - t0).max(0) as u64,
                verifying: false,
                checked: None,
                result: None,
            });
            rec.log(
                format!(
                    "drill of {}:{}@{} (GUID {}) from the copy {}:{} into scratch {}:{}",
                    req.node,
                    req.dataset,
                    snapshot.name,
                    snapshot.guid,
                    copy.node,
                    copy.dataset,
                    rec.target_node,
                    rec.target_dataset
                ),
                t,
            );
            jobs.insert(drill_key(&rec.id), rec.clone());
            rec
        };
    // The tick takes its holds (`Effect::TakeHolds`), off the request: a
    // slow or restarting node must not hold up the answer.
    jobs::save(state, &drill_key(&rec.id), &rec).await;
    let info = rec.restore.as_ref().expect("set above");
    Ok(Accepted {
        job: rec.id.clone(),
        copy: At {
            node: rec.source_node.clone(),
            dataset: rec.dataset.clone(),
        },
        scratch: At {
            node: rec.target_node.clone(),
            dataset: rec.target_dataset.clone(),
        },
        snapshot: info.snapshot.clone(),
    })
}

/// The tick's check of a drill that waits for its holds
/// ([`JobRecord::awaits_drill_holds`]): when production no longer lists the
/// chosen snapshot, the drill picks again from the listings now
/// (`check::repick`), or fails if production lists nothing the copy holds.
/// Not while a hold ask is under way: its answer is about the old pick.
pub fn pick_again(rec: &mut JobRecord, fleet: &Fleet, now_ms: i64) -> Vec<jobs::Effect> {
    let Some(info) = rec.restore.as_ref() else {
        return Vec::new();
    };
    if !rec.awaits_drill_holds() || rec.taking_holds {
        return Vec::new();
    }
    let listed = |node: &str, dataset: &str| {
        fleet
            .dataset(node, dataset)
            .map_or(&[][..], |d| &d.snapshots[..])
    };
    let copy = listed(&rec.source_node, &rec.dataset);
    match check::repick(info.snapshot.guid, copy, listed(&info.node, &info.dataset)) {
        check::Repick::Keep => Vec::new(),
        check::Repick::Pick(s, steps) => {
            let snapshot = RestoreSnapshot {
                name: s.name,
                guid: s.guid,
                creation: s.creation,
            };
            rec.repicked(snapshot, steps, now_ms)
        }
        check::Repick::Nothing => {
            let why = DrillError::NoCommonSnapshot {
                node: info.node.clone(),
                dataset: info.dataset.clone(),
                copy: rec.source_node.clone(),
            };
            rec.not_started(why.to_string(), now_ms)
        }
    }
}

/// Records a scheduled drill that could not start, as a failed drill.
async fn refused(state: &State, d: &PlannedDrill, rto_secs: u64, why: String) {
    let t = now_ms();
    let rec = {
        let mut jobs = state.jobs();
        let link = Pairing {
            task: "drill".into(),
            source_node: d.node.clone(),
            dataset: d.dataset.clone(),
            target_node: d.copy.clone().unwrap_or_default(),
            target_dataset: String::new(),
            reason: String::new(),
        };
        let seq = jobs.next_seq();
        let mut rec = JobRecord::new(
            JobKind::Drill,
            &link,
            &state.config().instance,
            seq,
            Vec::new(),
            t,
        );
        rec.state = JobState::Failed;
        rec.error = Some(why.clone());
        rec.finished_at_ms = Some(t);
        rec.drill = Some(DrillInfo {
            class: d.class.clone(),
            number: Some(d.number),
            rto_secs,
            plan_ms: 0,
            verifying: false,
            checked: None,
            result: None,
        });
        rec.drill_ended(failed(why, t), t);
        jobs.insert(drill_key(&rec.id), rec.clone());
        rec
    };
    error!(node = %d.node, dataset = %d.dataset, class = %d.class, "drill failed: {}", rec.error.as_deref().unwrap_or(""));
    jobs::save(state, &drill_key(&rec.id), &rec).await;
}

fn failed(why: String, now_ms: i64) -> DrillResult {
    DrillResult {
        passed: false,
        level: None,
        why: Some(why),
        production_digest: None,
        restored_digest: None,
        transfer_ms: 0,
        mount_ms: 0,
        hash_ms: 0,
        cleanup_ms: 0,
        rto_ms: None,
        within_rto: false,
        cleaned: true,
        ended_at: now_ms / 1000,
    }
}

/// `HashSnapshot` on one agent, asked again while the agent gives no
/// answer (`CommandError::unanswered`); an answer, even a refusal, is final.
async fn hash(
    state: &State,
    node: &str,
    dataset: &str,
    snapshot: &str,
) -> Result<ContentHash, String> {
    let cmd = Command::HashSnapshot {
        dataset: dataset.to_string(),
        snapshot: snapshot.to_string(),
    };
    let mut attempt = 1;
    let within = state.config().drill_hash_timeout;
    loop {
        match state.send_command_within(node, &cmd, within).await {
            Ok(r) if r.outcome == Outcome::Done => {
                return r
                    .hash
                    .ok_or_else(|| format!("{node} hashed {dataset}@{snapshot} but sent no hash"))
            }
            Ok(r) => return Err(format!("{node}: {}", r.message)),
            Err(e) if e.unanswered() && attempt < HASH_TRIES => {
                warn!(%node, %dataset, %snapshot, attempt, error = %e, "hashing for a drill got no answer; asking again");
                attempt += 1;
                tokio::time::sleep(CLEANUP_RETRY).await;
            }
            Err(e) if attempt > 1 => {
                return Err(format!(
                    "{node}: {e} (asked {attempt} times, {}s apart)",
                    CLEANUP_RETRY.as_secs()
                ))
            }
            Err(e) => return Err(format!("{node}: {e}")),
        }
    }
}

/// `DestroyScratch` on the drill node, tried again while it fails: after a
/// failed restore the target's `zfs receive` into the scratch can still be
/// ending (seen: ~1 min under emulation after the source's send failed),
/// and the dataset is busy until it has. Destroying a scratch that is gone
/// is done, so a late first reply does no harm. Whether it was destroyed.
async fn destroy_scratch(state: &State, node: &str, scratch: &str) -> bool {
    for attempt in 1..=CLEANUP_TRIES {
        let Err(why) = destroy_once(state, node, scratch).await else {
            return true;
        };
        warn!(%node, %scratch, attempt, error = %why, "destroying drill scratch failed");
        if attempt < CLEANUP_TRIES {
            tokio::time::sleep(CLEANUP_RETRY).await;
        }
    }
    false
}

async fn destroy_once(state: &State, node: &str, scratch: &str) -> Result<(), String> {
    let destroy = Command::DestroyScratch {
        dataset: scratch.to_string(),
    };
    match state.send_command(node, &destroy).await {
        Ok(r) if r.outcome == Outcome::Done => Ok(()),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

/// Orphaned drill scratch is looked for this often.
const SWEEP_MS: i64 = 60_000;

/// Destroys the drill scratch on online nodes that no drill still going on
/// restores into (`check::orphans`): one ask each, and the next sweep asks
/// again. It is what cleans up after a drill whose own cleanup failed, or
/// whose record was lost.
fn sweep(state: &Arc<State>, tasks: &mut JoinSet<()>, now_ms: i64) {
    if now_ms - state.jobs().scratch_swept_ms < SWEEP_MS {
        return;
    }
    let offline_after = state.config().offline_after.as_secs() as i64;
    let (listed, heard) = {
        let fleet = state.fleet();
        let online: Vec<_> = fleet
            .inventory
            .iter()
            .filter(|(node, _)| fleet.online(node, now_ms / 1000, offline_after))
            .collect();
        let listed: Vec<(String, String)> = online
            .iter()
            .flat_map(|(node, m)| {
                m.keys()
                    .filter(|ds| is_drill_scratch(ds))
                    .map(move |ds| (node.to_string(), ds.clone()))
            })
            .collect();
        (listed, !online.is_empty())
    };
    // Until a node's inventory is in (a new leader, a fleet starting),
    // the next tick looks again rather than a minute later.
    if !heard {
        return;
    }
    let orphans = {
        let mut jobs = state.jobs();
        jobs.scratch_swept_ms = now_ms;
        let live: BTreeSet<(String, String)> = jobs
            .records()
            .filter(|r| r.drill.as_ref().is_some_and(|d| d.result.is_none()))
            .map(|r| (r.target_node.clone(), r.target_dataset.clone()))
            .collect();
        check::orphans(listed.iter().map(|(n, d)| (n.as_str(), d.as_str())), &live)
    };
    for (node, scratch) in orphans {
        let st = state.clone();
        tasks.spawn(async move {
            match destroy_once(&st, &node, &scratch).await {
                Ok(()) => info!(%node, %scratch, "destroyed drill scratch no drill uses"),
                Err(why) => {
                    warn!(%node, %scratch, error = %why, "destroying orphaned drill scratch failed")
                }
            }
        });
    }
}

/// A drill's restore ended: compare the content, destroy the scratch,
/// record the result. Run by the job engine on `Effect::Verify`.
///
/// The verdict is persisted before the scratch is destroyed
/// (`DrillInfo::checked`): a new leader that takes over between the two
/// only cleans up. Hashing again would read a scratch already destroyed
/// and fail a drill that passed.
pub async fn verify(state: &Arc<State>, key: &str) {
    let Some(rec) = state.jobs().get(key).cloned() else {
        return;
    };
    let (Some(info), Some(d)) = (rec.restore.as_ref(), rec.drill.as_ref()) else {
        return;
    };
    let checked = match d.checked.clone() {
        Some(c) => c,
        None => {
            let c = check_content(state, &rec).await;
            let rec = {
                let mut jobs = state.jobs();
                let Some(cur) = jobs.get_mut(key) else { return };
                let Some(cd) = cur.drill.as_mut().filter(|cd| cd.result.is_none()) else {
                    return;
                };
                cd.checked = Some(c.clone());
                cur.clone()
            };
            jobs::save(state, key, &rec).await;
            c
        }
    };
    let verified = now_ms();
    let cleaned = destroy_scratch(state, &rec.target_node, &rec.target_dataset).await;
    let end = now_ms();
    let result = DrillResult {
        cleanup_ms: (end - verified).max(0) as u64,
        cleaned,
        ended_at: end / 1000,
        within_rto: checked
            .rto_ms
            .is_some_and(|r| r <= d.rto_secs.saturating_mul(1000)),
        ..checked
    };
    if !result.passed {
        error!(job = %rec.id, node = %info.node, dataset = %info.dataset, copy = %rec.source_node, "drill failed: {}", result.why.as_deref().unwrap_or(""));
    }
    let rec = {
        let mut jobs = state.jobs();
        let Some(cur) = jobs.get_mut(key) else { return };
        if cur.drill_ended(result, end).is_empty() {
            return;
        }
        cur.clone()
    };
    set_gauges(std::iter::once(&rec));
    jobs::save(state, key, &rec).await;
}

/// The content check of an ended drill restore: both hashes and the
/// verdict, or the restore's failure; cleanup fields left to fill.
async fn check_content(state: &State, rec: &JobRecord) -> DrillResult {
    let start = now_ms();
    let transfer_ms = (rec.finished_at_ms.unwrap_or(start) - rec.started_at_ms).max(0) as u64;
    let v = match rec.restore.as_ref() {
        Some(info) if rec.state == JobState::Done => {
            let snap = &info.snapshot.name;
            let (p, r) = tokio::join!(
                hash(state, &info.node, &info.dataset, snap),
                hash(state, &rec.target_node, &rec.target_dataset, snap)
            );
            check::verdict(p, r)
        }
        _ => check::Verdict {
            passed: false,
            level: None,
            why: Some(format!(
                "the restore from {}:{} failed: {}",
                rec.source_node,
                rec.dataset,
                rec.error.as_deref().unwrap_or("no reason given")
            )),
            production_digest: None,
            restored_digest: None,
            mount_ms: 0,
            read_ms: 0,
        },
    };
    let verified = now_ms();
    DrillResult {
        passed: v.passed,
        level: v.level,
        why: v.why,
        production_digest: v.production_digest,
        restored_digest: v.restored_digest,
        transfer_ms,
        mount_ms: v.mount_ms,
        hash_ms: (verified - start).max(0) as u64,
        cleanup_ms: 0,
        rto_ms: v
            .passed
            .then_some((verified - rec.started_at_ms).max(0) as u64),
        within_rto: false,
        cleaned: false,
        ended_at: verified / 1000,
    }
}

/// Each class's drill settings and protected datasets with their replicas.
fn classes(state: &State, anchors: &BTreeMap<String, i64>) -> Vec<ClassDrills> {
    let links = restore::links(state);
    let policy = state.policy();
    let Some(p) = policy.as_ref() else {
        return Vec::new();
    };
    let fleet = state.fleet();
    p.policy
        .classes
        .iter()
        .filter_map(|(name, class)| {
            let anchor = *anchors.get(name)?;
            let mut datasets: Vec<Subject> = fleet
                .inventory
                .iter()
                .flat_map(|(node, m)| m.values().map(move |i| (node, i)))
                .filter(|(_, i)| i.class.as_deref() == Some(name.as_str()))
                .filter(|(_, i)| !zdr_common::wire::is_drill_scratch(&i.dataset))
                .map(|(node, i)| {
                    let mut copies: Vec<String> = links
                        .iter()
                        .filter(|l| &l.source_node == node && l.dataset == i.dataset)
                        .filter(|l| fleet.dataset(&l.target_node, &l.target_dataset).is_some())
                        .map(|l| l.target_node.clone())
                        .collect();
                    copies.sort();
                    copies.dedup();
                    Subject {
                        node: node.clone(),
                        dataset: i.dataset.clone(),
                        copies,
                    }
                })
                .collect();
            datasets.sort_by(|a, b| (&a.node, &a.dataset).cmp(&(&b.node, &b.dataset)));
            Some(ClassDrills {
                class: name.clone(),
                every_secs: class.drill.every.secs(),
                sample: class.drill.sample,
                anchor,
                datasets,
            })
        })
        .collect()
}

/// `GET /api/v1/drills/plan`: the drills of the next year.
pub fn plan_view(state: &State, now: i64) -> Vec<PlannedDrill> {
    let anchors = state.jobs().drill_anchors.clone();
    plan::plan(&classes(state, &anchors), now, now + PLAN_SECS, PLAN_LIMIT)
}

/// The leader's part, every tick: the sweep of orphaned scratch, anchors
/// for new classes, then each class's due drills that have not started (the
/// newest, and those missed while no coordinator led, `plan::due_numbers`);
/// and the gauges.
pub async fn tick(state: &Arc<State>, tasks: &mut JoinSet<()>, now_ms: i64) {
    sweep(state, tasks, now_ms);
    let now = now_ms / 1000;
    let (due, started, rtos, anchors, new_anchor) = {
        let policy = state.policy();
        let Some(p) = policy.as_ref() else { return };
        let mut jobs = state.jobs();
        let mut new_anchor = false;
        let started: BTreeSet<(String, u64)> = jobs
            .records()
            .filter_map(|r| r.drill.as_ref())
            .filter_map(|d| Some((d.class.clone(), d.number?)))
            .collect();
        let mut due = false;
        let mut rtos = BTreeMap::new();
        for (name, class) in &p.policy.classes {
            let anchor = *jobs.drill_anchors.entry(name.clone()).or_insert_with(|| {
                new_anchor = true;
                now
            });
            rtos.insert(name.clone(), class.rto.secs());
            // A missed drill is never newer than the newest due one, which
            // starts together with it: this finds every tick with work.
            due |= plan::due_number(anchor, class.drill.every.secs(), now)
                .is_some_and(|k| !started.contains(&(name.clone(), k)));
        }
        set_gauges(jobs.records());
        (due, started, rtos, jobs.drill_anchors.clone(), new_anchor)
    };
    if new_anchor {
        if let Ok(raw) = serde_json::to_vec(&anchors) {
            if let Err(e) = state.stores.jobs.put(ANCHORS_KEY, raw.into()).await {
                warn!(error = %e, "could not persist the drill anchors");
            }
        }
    }
    if !due {
        return;
    }
    for c in classes(state, &anchors) {
        let rto_secs = rtos.get(&c.class).copied().unwrap_or(0);
        let window = plan::covering(c.datasets.len(), c.sample);
        let numbers = plan::due_numbers(c.anchor, c.every_secs, now, window, |k| {
            started.contains(&(c.class.clone(), k))
        });
        for k in numbers {
            for d in plan::drill(&c, k) {
                let req = Request {
                    node: d.node.clone(),
                    dataset: d.dataset.clone(),
                    copy: d.copy.clone(),
                };
                let refusal = match &d.copy {
                    None => Some(
                        DrillError::NoReplica {
                            node: d.node.clone(),
                            dataset: d.dataset.clone(),
                        }
                        .to_string(),
                    ),
                    Some(_) => submit(state, &req, Some(k))
                        .await
                        .err()
                        .map(|e| e.to_string()),
                };
                if let Some(why) = refusal {
                    refused(state, &d, rto_secs, why).await;
                }
            }
        }
    }
}

/// The newest ended drill of each copy of each dataset, for the alerts.
pub fn outcomes<'a>(records: impl Iterator<Item = &'a JobRecord>) -> Vec<DrillOutcome> {
    let mut newest: BTreeMap<(String, String, String), DrillOutcome> = BTreeMap::new();
    for rec in records {
        let Some(r) = rec.drill.as_ref().and_then(|d| d.result.as_ref()) else {
            continue;
        };
        // A drill that never started names production as its source.
        let (node, dataset, copy) = match rec.restore.as_ref() {
            Some(i) => (&i.node, &i.dataset, &rec.source_node),
            None => (&rec.source_node, &rec.dataset, &rec.target_node),
        };
        let o = DrillOutcome {
            node: node.clone(),
            dataset: dataset.clone(),
            copy: copy.clone(),
            passed: r.passed,
            why: r.why.clone(),
            ended_at: r.ended_at,
        };
        let key = (o.node.clone(), o.dataset.clone(), o.copy.clone());
        if newest.get(&key).is_none_or(|x| x.ended_at <= o.ended_at) {
            newest.insert(key, o);
        }
    }
    newest.into_values().collect()
}

/// The newest passed drill's end and measured RTO per dataset and copy.
pub fn last_passes<'a>(
    records: impl Iterator<Item = &'a JobRecord>,
) -> BTreeMap<(String, String, String), (i64, u64)> {
    let mut out: BTreeMap<(String, String, String), (i64, u64)> = BTreeMap::new();
    for rec in records {
        let (Some(info), Some(d)) = (rec.restore.as_ref(), rec.drill.as_ref()) else {
            continue;
        };
        let Some(r) = d.result.as_ref().filter(|r| r.passed) else {
            continue;
        };
        let key = (
            info.node.clone(),
            info.dataset.clone(),
            rec.source_node.clone(),
        );
        let entry = (r.ended_at, r.rto_ms.unwrap_or(0));
        if out.get(&key).is_none_or(|(t, _)| *t <= entry.0) {
            out.insert(key, entry);
        }
    }
    out
}

fn set_gauges<'a>(records: impl Iterator<Item = &'a JobRecord>) {
    for ((node, dataset, copy), (at, rto_ms)) in last_passes(records) {
        let labels = [("node", node), ("dataset", dataset), ("copy_node", copy)];
        metrics::gauge!("zdr_drill_last_pass_timestamp_seconds", &labels).set(at as f64);
        metrics::gauge!("zdr_drill_rto_seconds", &labels).set(rto_ms as f64 / 1000.0);
    }
}
