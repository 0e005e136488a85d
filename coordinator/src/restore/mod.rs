//! Restore: the copies of a protected dataset and their snapshots
//! (`points`), the choice of copy, snapshot and steps (`plan`), both pure,
//! and the thin shell the HTTP API calls. The restore runs as a job of kind
//! `Restore` on the shared engine (`crate::jobs`).

pub mod plan;
pub mod points;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use tracing::warn;
use zdr_common::wire::{Command, Outcome};

use crate::jobs::{self, JobKind, JobRecord, JobState, RestoreInfo, RestoreSnapshot};
use crate::pairing::Pairing;
use crate::state::{now, now_ms, State};
use plan::{Destination, PlanError, Request};
use points::{bucket_task, BucketCopy, CopyLink, NodeFacts, PointsError, RestorePoints};

/// `node` and `dataset`, as the API shows a copy or a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct At {
    pub node: String,
    pub dataset: String,
}

/// The answer to `POST /api/v1/restores`.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub job: String,
    pub from: At,
    pub snapshot: RestoreSnapshot,
    pub to: At,
    /// The copy is raw-encrypted: load its key on the destination after.
    pub raw: bool,
    /// How to load that key; `None` when the copy is not encrypted.
    pub load_key: Option<String>,
}

/// A restore as `GET /api/v1/restores` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub job: String,
    /// `planned`, `running` (also while a failed attempt waits for its
    /// retry), `done` (the chosen GUID landed) or `failed` (for good).
    pub state: &'static str,
    /// The protected dataset restored.
    pub source: At,
    pub from: At,
    pub to: At,
    pub snapshot: RestoreSnapshot,
    pub bytes: u64,
    pub estimated_bytes: Option<u64>,
    pub started: i64,
    pub finished: Option<i64>,
    pub landed_guid: Option<u64>,
    pub error: Option<String>,
    pub raw: bool,
    pub load_key: Option<String>,
    pub history: Vec<String>,
}

/// What to do after a raw-encrypted copy landed: it arrives without its key.
pub fn load_key(raw: bool, node: &str, dataset: &str) -> Option<String> {
    raw.then(|| {
        format!(
            "the copy is raw-encrypted and landed without its key: on {node}, run \
             `zfs load-key {dataset}` with the source dataset's key, then `zfs mount {dataset}`"
        )
    })
}

/// The status of a restore record; `None` for other kinds.
pub fn status(rec: &JobRecord) -> Option<Status> {
    // A drill's restore part is the drill's to show.
    let info = rec
        .restore
        .as_ref()
        .filter(|_| rec.kind == JobKind::Restore)?;
    let state = match rec.state {
        JobState::Planned => "planned",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed if rec.next_attempt_at_ms.is_some() => "running",
        JobState::Failed | JobState::Blocked => "failed",
    };
    let done = rec.state == JobState::Done;
    Some(Status {
        job: rec.id.clone(),
        state,
        source: At {
            node: info.node.clone(),
            dataset: info.dataset.clone(),
        },
        from: At {
            node: rec.source_node.clone(),
            dataset: rec.dataset.clone(),
        },
        to: At {
            node: rec.target_node.clone(),
            dataset: rec.target_dataset.clone(),
        },
        snapshot: info.snapshot.clone(),
        bytes: info.landed_bytes + if done { 0 } else { rec.bytes },
        estimated_bytes: rec.size_hint,
        started: rec.started_at_ms / 1000,
        finished: rec.finished_at_ms.map(|t| t / 1000),
        landed_guid: info.landed_guid,
        error: rec.error.clone(),
        raw: info.raw,
        load_key: load_key(info.raw, &rec.target_node, &rec.target_dataset),
        history: rec.history.clone(),
    })
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Points(#[from] PointsError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "to {node}:{dataset}: job {job} is writing to it now; wait for it to end \
         (GET /api/v1/jobs), or restore to another name"
    )]
    Busy {
        node: String,
        dataset: String,
        job: String,
    },
    #[error(
        "to {node}:{dataset}: job {job} restored it {secs_ago}s ago, and the node's \
         inventory does not show it yet; it exists: add --replace to overwrite it, \
         or restore to another name"
    )]
    JustRestored {
        node: String,
        dataset: String,
        job: String,
        secs_ago: i64,
    },
}

/// A restore that ended this recently still counts as its destination
/// existing while the node's inventory has not shown it yet (the agent's
/// delta can arrive after the job's end).
const JUST_RESTORED_MS: i64 = 60_000;

/// The nodes as points see them, now.
pub(crate) fn node_facts(state: &State) -> BTreeMap<String, NodeFacts> {
    let fleet = state.fleet();
    let (t, offline) = (now(), state.config().offline_after.as_secs() as i64);
    fleet
        .nodes
        .iter()
        .map(|(name, rec)| {
            let facts = NodeFacts {
                site: rec.hello.site.clone(),
                media: rec.hello.media.clone(),
                online: fleet.online(name, t, offline),
            };
            (name.clone(), facts)
        })
        .collect()
}

/// Where copies are: the pairings, and the replication records, which
/// remember a copy after its source dataset (and so its pairing) is gone.
pub(crate) fn links(state: &State) -> Vec<CopyLink> {
    let link =
        |source_node: &str, dataset: &str, target_node: &str, target_dataset: &str| CopyLink {
            source_node: source_node.into(),
            dataset: dataset.into(),
            target_node: target_node.into(),
            target_dataset: target_dataset.into(),
        };
    let mut out: Vec<CopyLink> = state
        .pairings()
        .pairings
        .iter()
        .map(|p| {
            link(
                &p.source_node,
                &p.dataset,
                &p.target_node,
                &p.target_dataset,
            )
        })
        .collect();
    out.extend(
        state
            .jobs()
            .records()
            .filter(|r| r.kind == JobKind::Replication)
            .map(|r| {
                link(
                    &r.source_node,
                    &r.dataset,
                    &r.target_node,
                    &r.target_dataset,
                )
            }),
    );
    out
}

/// The buckets' copies: each bucket task's committed uploads, from the
/// upload records (which outlive the source dataset).
pub(crate) fn bucket_copies(state: &State) -> Vec<BucketCopy> {
    state
        .jobs()
        .records()
        .filter(|r| r.kind == JobKind::Upload)
        .filter_map(|r| {
            let info = r.upload.as_ref()?;
            Some(BucketCopy {
                node: r.target_node.clone(),
                source_node: r.source_node.clone(),
                dataset: r.dataset.clone(),
                location: r.target_dataset.clone(),
                raw: info.encrypted,
                uploads: info.committed.clone(),
            })
        })
        .collect()
}

/// `GET /api/v1/restore-points`.
pub fn restore_points(
    state: &State,
    node: &str,
    dataset: &str,
) -> Result<RestorePoints, PointsError> {
    let links = links(state);
    let nodes = node_facts(state);
    let buckets = bucket_copies(state);
    let fleet = state.fleet();
    points::restore_points(node, dataset, &nodes, &fleet.inventory, &links, &buckets)
}

/// Plans a restore and hands it to the job engine; nothing is sent before
/// every check passed.
pub async fn submit(state: &Arc<State>, req: Request) -> Result<Accepted, RestoreError> {
    let points = restore_points(state, &req.node, &req.dataset)?;
    let nodes = node_facts(state);
    let known: Vec<String> = nodes.keys().cloned().collect();
    let (plan, rec) = {
        let fleet = state.fleet();
        let dest = Destination {
            facts: nodes.get(&req.to_node),
            existing: fleet.dataset(&req.to_node, &req.to_dataset),
        };
        let plan = plan::plan(&req, &points, dest, &known, now())?;
        let mut jobs = state.jobs();
        if let Some(busy) = jobs.records().find(|r| {
            r.active() && r.target_node == req.to_node && r.target_dataset == req.to_dataset
        }) {
            return Err(RestoreError::Busy {
                node: req.to_node.clone(),
                dataset: req.to_dataset.clone(),
                job: busy.id.clone(),
            });
        }
        let t = now_ms();
        if dest.existing.is_none() {
            if let Some((r, at)) = jobs.records().find_map(|r| {
                let at = r.finished_at_ms?;
                (r.kind == JobKind::Restore
                    && r.state == JobState::Done
                    && r.target_node == req.to_node
                    && r.target_dataset == req.to_dataset
                    && t - at < JUST_RESTORED_MS)
                    .then_some((r, at))
            }) {
                return Err(RestoreError::JustRestored {
                    node: req.to_node.clone(),
                    dataset: req.to_dataset.clone(),
                    job: r.id.clone(),
                    secs_ago: (t - at) / 1000,
                });
            }
        }
        // A bucket's streams are found by the protected dataset's name.
        let from_dataset = match bucket_task(&plan.from_node) {
            Some(_) => req.dataset.clone(),
            None => plan.from_dataset.clone(),
        };
        let link = Pairing {
            task: "restore".into(),
            source_node: plan.from_node.clone(),
            dataset: from_dataset,
            target_node: req.to_node.clone(),
            target_dataset: req.to_dataset.clone(),
            reason: String::new(),
        };
        let seq = jobs.next_seq();
        let mut rec = JobRecord::new(
            JobKind::Restore,
            &link,
            &state.config().instance,
            seq,
            plan.steps.clone(),
            t,
        )
        .continue_from(None, t);
        rec.next_attempt_at_ms = Some(t);
        rec.restore = Some(RestoreInfo {
            node: req.node.clone(),
            dataset: req.dataset.clone(),
            snapshot: RestoreSnapshot {
                name: plan.snapshot.name.clone(),
                guid: plan.snapshot.guid,
                creation: plan.snapshot.creation,
            },
            raw: plan.raw,
            replace: req.replace,
            landed_bytes: 0,
            landed_guid: None,
            holds_released: false,
            release_at_ms: None,
            holds_taken: false,
            take_at_ms: None,
        });
        rec.log(
            format!(
                "restore of {}:{}@{} (GUID {}) from the copy {}:{} to {}:{}{}",
                req.node,
                req.dataset,
                plan.snapshot.name,
                plan.snapshot.guid,
                plan.from_node,
                plan.from_dataset,
                req.to_node,
                req.to_dataset,
                if req.replace { ", replacing it" } else { "" }
            ),
            t,
        );
        // Inserted under the same lock as the busy check: two requests
        // for one destination cannot both pass it.
        jobs.insert(jobs::restore_key(&rec.id), rec.clone());
        (plan, rec)
    };
    let accepted = Accepted {
        job: rec.id.clone(),
        from: At {
            node: plan.from_node,
            dataset: plan.from_dataset,
        },
        snapshot: rec
            .restore
            .as_ref()
            .map(|i| i.snapshot.clone())
            .expect("set above"),
        load_key: load_key(plan.raw, &req.to_node, &req.to_dataset),
        to: At {
            node: req.to_node,
            dataset: req.to_dataset,
        },
        raw: plan.raw,
    };
    // The tick takes its holds (`Effect::TakeHolds`), off the request: a
    // slow or restarting copy node must not hold up the answer.
    jobs::save(state, &jobs::restore_key(&rec.id), &rec).await;
    Ok(accepted)
}

/// The snapshots of `node:dataset` that restores and drills read, from
/// their start until their holds are released: the copy's retention keeps
/// them ([`zdr_common::wire::PruneReplica::keep`]), so a restore whose hold
/// did not land (the copy's node was down as it began) still finds them.
pub fn being_read<'a>(
    records: impl Iterator<Item = &'a jobs::JobRecord>,
    node: &str,
    dataset: &str,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let takes = records
        .filter(|r| r.restore.as_ref().is_some_and(|i| !i.holds_released))
        .flat_map(jobs::JobRecord::takes)
        .filter(|t| t.node == node && t.dataset == dataset);
    for n in takes.flat_map(|t| t.snapshots) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Holds what a running restore or drill reads ([`JobRecord::takes`]):
/// retention on the copy (or, for a drill's hash, on production) would
/// otherwise destroy a snapshot before the job reads it, and the job would
/// fail although the copy was fine (seen in the kill -9 trials). True when
/// every node confirmed; a failure goes to the job's history, and the tick
/// asks again while the job runs. The nodes are asked at once, so that one
/// restarting (a command timeout) does not delay the other's hold.
pub async fn take_holds(state: &State, key: &str, rec: &JobRecord) -> bool {
    let asks = rec
        .takes()
        .into_iter()
        .map(|t| hold(state, key, t.node, t.dataset, t.snapshots, t.tag));
    futures::future::join_all(asks)
        .await
        .into_iter()
        .all(|held| held)
}

/// Sends `Hold`; whether the node confirmed.
async fn hold(
    state: &State,
    key: &str,
    node: String,
    dataset: String,
    snapshots: Vec<String>,
    tag: String,
) -> bool {
    let cmd = Command::Hold {
        dataset: dataset.to_string(),
        snapshots: snapshots.clone(),
        tag: tag.clone(),
    };
    let why = match state.send_command(&node, &cmd).await {
        Ok(r) if r.outcome == Outcome::Done => return true,
        Ok(r) => r.message,
        Err(e) => e.to_string(),
    };
    warn!(%node, %dataset, %tag, error = %why, "holding the snapshots a job reads failed");
    let rec = {
        let mut jobs = state.jobs();
        let Some(cur) = jobs.get_mut(key) else {
            return false;
        };
        cur.log(
            format!(
                "{node}:{dataset}@{{{}}} not held with {tag} ({why}); retention may destroy them first",
                snapshots.join(",")
            ),
            now_ms(),
        );
        cur.clone()
    };
    jobs::save(state, key, &rec).await;
    false
}

/// Every restore, newest first.
pub fn list(state: &State) -> Vec<Status> {
    jobs::list(state).iter().filter_map(status).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_raw_copy_says_how_to_load_its_key() {
        assert_eq!(load_key(false, "n2", "tank/x"), None);
        let hint = load_key(true, "n2", "tank/x").unwrap();
        assert!(hint.contains("on n2, run `zfs load-key tank/x`"), "{hint}");
    }
}
