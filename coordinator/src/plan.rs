//! What the coordinator will do next, and why (`GET /api/v1/plan`, `zdr
//! plan`). Pure: the policy, fleet, pairings, job records and the drill plan
//! come in with `now`; a list of items comes out, each with what, when and
//! a typed reason ([`Why`]), rendered to text only by [`Why::describe`].
//!
//! The rules:
//! - One item per replication pairing, per dataset a bucket task selects,
//!   per drill running or next due, and per protected dataset's next
//!   snapshot (production's smallest tier with a keep above zero).
//! - A pairing's reason is the job engine's own decision: the tick's
//!   predicates (`jobs::schedule::NeverCopied`, `busy_targets`) and
//!   `jobs::schedule::decide`, called here, not copied, so the plan cannot
//!   drift from what the engine does. Before it, what the record alone says
//!   is shown in more detail: a restore writing the source holds it, a
//!   running job runs (with the bandwidth cap that binds it), moving holds
//!   wait, and a blocked job stays blocked (with its recorded reason) until
//!   a new plan finds a way. Uploads follow `offsite::decide` the same way.
//! - When: `now` (under way, or starts on the next tick), `at` a time (a
//!   retry, the next scheduled run, a window opening, a drill, a
//!   snapshot), `waiting` for a condition with no time (a node offline), or
//!   `blocked` (needs a human).
//! - Items are ordered blocked, now, waiting, then by time, and at most
//!   `limit` are returned; `left_out` counts the rest.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use zdr_common::wire::{DatasetInventory, StreamSpec};
use zdr_schemas::buckets::BucketTask;
use zdr_schemas::tasks::{Link, Task};

use crate::compliance::{in_days, short};
use crate::drills::plan::PlannedDrill;
use crate::fleet::{resolved_class, Fleet};
use crate::jobs::schedule::{self, Block, Decision, Ends, NeverCopied, Wait};
use crate::jobs::PlannedStep;
use crate::jobs::{JobKind, JobRecord, JobState};
use crate::offsite::{self, UploadDecision};
use crate::pairing::Pairing;
use crate::state::PolicyState;
use crate::transfer_plan::PlanError;

/// Items returned when the request names no limit.
pub const DEFAULT_LIMIT: usize = 500;

/// Everything the plan is computed from.
pub struct Input<'a> {
    pub policy: &'a PolicyState,
    pub fleet: &'a Fleet,
    pub pairings: &'a [Pairing],
    pub jobs: &'a [JobRecord],
    /// The drills to come, in time order (`crate::drills::plan_view`).
    pub drills: &'a [PlannedDrill],
    pub now_ms: i64,
    pub offline_after_secs: i64,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Unix seconds.
    pub generated_at: i64,
    pub items: Vec<Item>,
    /// Items beyond the limit, not listed.
    pub left_out: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub what: What,
    pub when: When,
    pub why: Why,
}

/// The action an item is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    Replication {
        task: String,
        node: String,
        dataset: String,
        target_node: String,
        target_dataset: String,
    },
    Upload {
        task: String,
        node: String,
        dataset: String,
    },
    Drill {
        class: String,
        /// The class's scheduled drill; `None` when run by hand.
        number: Option<u64>,
        node: String,
        dataset: String,
        /// The copy's node; `None` when the dataset has no replica.
        copy: Option<String>,
    },
    Snapshot {
        node: String,
        dataset: String,
        class: String,
    },
}

impl What {
    /// `node:dataset`, and where it goes.
    pub fn describe(&self) -> String {
        match self {
            What::Replication {
                task,
                node,
                dataset,
                target_node,
                target_dataset,
            } => format!("replicate {node}:{dataset} to {target_node}:{target_dataset} ({task})"),
            What::Upload {
                task,
                node,
                dataset,
            } => format!("upload {node}:{dataset} to bucket task {task}"),
            What::Drill {
                node,
                dataset,
                copy,
                ..
            } => match copy {
                Some(c) => format!("drill {node}:{dataset} from the copy on {c}"),
                None => format!("drill {node}:{dataset}"),
            },
            What::Snapshot { node, dataset, .. } => format!("snapshot {node}:{dataset}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum When {
    Now,
    /// Unix seconds.
    At {
        at: i64,
    },
    Waiting,
    Blocked,
}

impl When {
    /// Blocked first, then now, waiting, then by time.
    fn rank(&self) -> (u8, i64) {
        match self {
            When::Blocked => (0, 0),
            When::Now => (1, 0),
            When::Waiting => (2, 0),
            When::At { at } => (3, *at),
        }
    }
}

/// What binds a running transfer's rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Cap {
    /// A site-to-site budget shared by `jobs` running jobs.
    Link {
        sites: [String; 2],
        budget: u64,
        jobs: usize,
    },
    /// The task's cap, shared by its `jobs` running jobs.
    Task { cap: u64, jobs: usize },
}

/// A rollback of the target to its common snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub to: String,
    /// Snapshots it discards.
    pub discards: usize,
}

/// Why an item is where it is. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Why {
    /// A job is under way.
    Running {
        bytes: u64,
        size_hint: Option<u64>,
        bytes_per_sec: u64,
        /// The throttle given to the source, and what sets it.
        rate_limit: Option<u64>,
        cap: Option<Cap>,
    },
    /// The planner has steps: the job starts on the next tick.
    Pending {
        steps: usize,
        /// The newest snapshot it lands.
        to: String,
        /// An incremental from this base; `None` for a full.
        from: Option<String>,
        /// `receive -F` first rolls the target back.
        rollback: Option<Rollback>,
    },
    /// An upload starts on the next tick: a full (and why) or an incremental.
    UploadPending {
        to: String,
        full_because: Option<String>,
    },
    /// The last attempt failed; the next one is at the item's time.
    Retry {
        attempt: u32,
        error: Option<String>,
    },
    /// Up to date or just run; the next run is one `every` after the last.
    Scheduled {
        every_secs: u64,
    },
    OutsideWindow {
        window: String,
    },
    NodeOffline {
        node: String,
    },
    /// Another job writes into the same target dataset.
    TargetBusy {
        node: String,
        dataset: String,
    },
    /// A restore is writing the source dataset.
    RestoreWritingSource,
    /// A parent dataset, copied by the same task from the same node, has
    /// never been copied: it lands first.
    ParentFirst,
    NoInventory {
        node: String,
    },
    /// The last job landed; its snapshot is not in the target's inventory yet.
    AwaitingLanded {
        snapshot: String,
    },
    MovingHolds {
        to: String,
    },
    /// The planner found nothing to send (no snapshot on the source yet).
    NothingToSend,
    /// Needs a human: the job's recorded reason (a floor refusal, a
    /// diverged target, a failed plan).
    Blocked {
        why: String,
    },
    /// The target holds snapshots, none the source knows by GUID.
    NoCommonSnapshot {
        target_has: Vec<String>,
    },
    /// The target has snapshots after the newest common one and the task
    /// does not allow a rollback.
    Diverged {
        after: Vec<String>,
        common: String,
    },
    /// The class's next drill.
    DrillDue {
        every_secs: u64,
    },
    /// The smallest tier's period after the newest snapshot; `late` once
    /// that has passed (the agent takes it on its own timer).
    SnapshotDue {
        period_secs: u64,
        newest: Option<i64>,
        late: bool,
    },
}

impl Why {
    /// The reason as a line, `now` in Unix seconds.
    pub fn describe(&self, now: i64) -> String {
        let rate = |b: u64| format!("{}/s", indicatif::HumanBytes(b));
        match self {
            Why::Running {
                bytes,
                size_hint,
                bytes_per_sec,
                rate_limit,
                cap,
            } => {
                let mut s = format!("running: {}", indicatif::HumanBytes(*bytes));
                if let Some(total) = size_hint {
                    s.push_str(&format!(" of ~{}", indicatif::HumanBytes(*total)));
                }
                s.push_str(&format!(" at {}", rate(*bytes_per_sec)));
                match (rate_limit, cap) {
                    (
                        Some(l),
                        Some(Cap::Link {
                            sites,
                            budget,
                            jobs,
                        }),
                    ) => s.push_str(&format!(
                        "; throttled to {}: link {}<->{} budget {} shared by {} job{}",
                        rate(*l),
                        sites[0],
                        sites[1],
                        rate(*budget),
                        jobs,
                        if *jobs == 1 { "" } else { "s" }
                    )),
                    (Some(l), Some(Cap::Task { cap, jobs })) => s.push_str(&format!(
                        "; throttled to {}: task cap {} shared by {} job{}",
                        rate(*l),
                        rate(*cap),
                        jobs,
                        if *jobs == 1 { "" } else { "s" }
                    )),
                    (Some(l), None) => s.push_str(&format!("; throttled to {}", rate(*l))),
                    (None, _) => {}
                }
                s
            }
            Why::Pending {
                steps,
                to,
                from,
                rollback,
            } => {
                let mut s = match from {
                    Some(f) => format!("starts next tick: incremental {f} -> {to}"),
                    None => format!("starts next tick: full send of {to}"),
                };
                if *steps > 1 {
                    s.push_str(&format!(" in {steps} steps"));
                }
                if let Some(r) = rollback {
                    s.push_str(&format!(
                        "; first rolls the target back to @{} (discards {})",
                        r.to, r.discards
                    ));
                }
                s
            }
            Why::UploadPending { to, full_because } => match full_because {
                Some(why) => format!("starts next tick: full upload of {to} ({why})"),
                None => format!("starts next tick: incremental upload up to {to}"),
            },
            Why::Retry { attempt, error } => format!(
                "retry after attempt {attempt} failed{}",
                error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            Why::Scheduled { every_secs } => {
                format!("up to date; runs every {}", short(*every_secs as i64))
            }
            Why::OutsideWindow { window } => {
                format!("waiting: outside the task's window {window} UTC")
            }
            Why::NodeOffline { node } => format!("waiting: node {node} is offline"),
            Why::TargetBusy { node, dataset } => {
                format!("waiting: another job writes into {node}:{dataset}")
            }
            Why::RestoreWritingSource => "waiting: a restore is writing the source".into(),
            Why::ParentFirst => "waiting: a parent dataset of the same task lands first".into(),
            Why::NoInventory { node } => format!("waiting: no inventory from {node} yet"),
            Why::AwaitingLanded { snapshot } => {
                format!("waiting: the target's inventory to show the landed @{snapshot}")
            }
            Why::MovingHolds { to } => format!("waiting: the holds move to @{to}"),
            Why::NothingToSend => "waiting: the source has no snapshot to send".into(),
            Why::Blocked { why } => format!("blocked: {why}"),
            Why::NoCommonSnapshot { target_has } => format!(
                "blocked: the target holds {} snapshot{} and none in common with the source \
                 (by GUID); move it aside or destroy it",
                target_has.len(),
                if target_has.len() == 1 { "" } else { "s" }
            ),
            Why::Diverged { after, common } => format!(
                "blocked: the target diverged ({} snapshot{} after the common @{common}); \
                 allow_rollback in the task would discard them",
                after.len(),
                if after.len() == 1 { "" } else { "s" }
            ),
            Why::DrillDue { every_secs } => {
                format!(
                    "next drill of the class (every {})",
                    in_days(*every_secs as i64)
                )
            }
            Why::SnapshotDue {
                period_secs,
                newest,
                late,
            } => {
                let period = short(*period_secs as i64);
                match (newest, late) {
                    (None, _) => {
                        format!("no snapshot yet; the smallest tier takes one every {period}")
                    }
                    (Some(n), true) => format!(
                        "LATE: the newest is {} old, the smallest tier takes one every {period}",
                        short(now - n)
                    ),
                    (Some(_), false) => format!("the smallest tier takes one every {period}"),
                }
            }
        }
    }
}

/// The job records that hold a pairing's or bucket task's state, by
/// (task, source node, dataset), as the engine keys them.
fn by_pairing(jobs: &[JobRecord]) -> HashMap<(&str, &str, &str), &JobRecord> {
    jobs.iter()
        .filter(|j| matches!(j.kind, JobKind::Replication | JobKind::Upload))
        .map(|j| {
            (
                (j.task.as_str(), j.source_node.as_str(), j.dataset.as_str()),
                j,
            )
        })
        .collect()
}

pub fn plan(input: &Input) -> Plan {
    let now = input.now_ms / 1000;
    let records = by_pairing(input.jobs);
    let mut items = Vec::new();
    let record_of = |p: &Pairing| {
        records
            .get(&(p.task.as_str(), p.source_node.as_str(), p.dataset.as_str()))
            .copied()
    };
    let never = NeverCopied::new(input.pairings, record_of);
    let busy = schedule::busy_targets(input.jobs.iter());
    for p in input.pairings {
        let Some(task) = input.policy.tasks.iter().find(|t| t.name == p.task) else {
            continue;
        };
        let rec = record_of(p);
        let (when, why) = if never.parent_first(p) {
            (When::Waiting, Why::ParentFirst)
        } else {
            replication(input, task, p, rec, &busy)
        };
        items.push(Item {
            what: What::Replication {
                task: p.task.clone(),
                node: p.source_node.clone(),
                dataset: p.dataset.clone(),
                target_node: p.target_node.clone(),
                target_dataset: p.target_dataset.clone(),
            },
            when,
            why,
        });
    }
    for task in &input.policy.buckets {
        uploads(input, task, &records, &mut items);
    }
    drills(input, &mut items);
    snapshots(input, now, &mut items);
    items.sort_by_key(|a| a.when.rank());
    let left_out = items.len().saturating_sub(input.limit);
    items.truncate(input.limit);
    Plan {
        generated_at: now,
        items,
        left_out,
    }
}

fn online(input: &Input, node: &str) -> bool {
    input
        .fleet
        .online(node, input.now_ms / 1000, input.offline_after_secs)
}

/// A running job, with the cap that binds it.
fn running(input: &Input, r: &JobRecord) -> Why {
    Why::Running {
        bytes: r.bytes,
        size_hint: r.size_hint,
        bytes_per_sec: r.bytes_per_sec,
        rate_limit: r.rate_limit,
        cap: r.rate_limit.and_then(|_| cap(input, r)),
    }
}

/// The tighter per-job share of the link budget and the task cap in force.
fn cap(input: &Input, r: &JobRecord) -> Option<Cap> {
    let at = chrono::DateTime::from_timestamp_millis(input.now_ms).unwrap_or_default();
    let site = |n: &str| input.policy.policy.nodes.get(n).map(|l| l.site.clone());
    let active: Vec<&JobRecord> = input
        .jobs
        .iter()
        .filter(|j| j.active() && j.kind != JobKind::Upload)
        .collect();
    let mut caps = Vec::new();
    if let (Some(a), Some(b)) = (site(&r.source_node), site(&r.target_node)) {
        if a != b {
            let link: Option<&Link> = input.policy.links.iter().find(|l| l.joins(&a, &b));
            if let Some(budget) = link.and_then(|l| bandwidth_at(l.limit_at(minute(at)))) {
                let jobs = active
                    .iter()
                    .filter(|j| match (site(&j.source_node), site(&j.target_node)) {
                        (Some(x), Some(y)) => (x == a && y == b) || (x == b && y == a),
                        _ => false,
                    })
                    .count()
                    .max(1);
                caps.push(Cap::Link {
                    sites: [a, b],
                    budget,
                    jobs,
                });
            }
        }
    }
    let task: Option<&Task> = input.policy.tasks.iter().find(|t| t.name == r.task);
    if let Some(c) = task.and_then(|t| bandwidth_at(t.bandwidth.limit_at(minute(at)))) {
        let jobs = active.iter().filter(|j| j.task == r.task).count().max(1);
        caps.push(Cap::Task { cap: c, jobs });
    }
    caps.into_iter().min_by_key(|c| match c {
        Cap::Link { budget, jobs, .. } => budget / *jobs as u64,
        Cap::Task { cap, jobs } => cap / *jobs as u64,
    })
}

fn bandwidth_at(r: zdr_schemas::Rate) -> Option<u64> {
    r.bytes_per_sec()
}

fn minute(at: chrono::DateTime<chrono::Utc>) -> u16 {
    use chrono::Timelike;
    (at.hour() * 60 + at.minute()) as u16
}

/// When a job not due is next: its retry, else one `every` after its last run.
fn not_due(r: &JobRecord, every_ms: i64) -> (When, Why) {
    if r.state == JobState::Failed {
        let at = r.next_attempt_at_ms.unwrap_or(r.updated_at_ms) / 1000;
        return (
            When::At { at },
            Why::Retry {
                attempt: r.attempt,
                error: r.error.clone(),
            },
        );
    }
    let last = r.last_success_ms.max(Some(r.started_at_ms)).unwrap_or(0);
    (
        When::At {
            at: (last + every_ms) / 1000,
        },
        Why::Scheduled {
            every_secs: (every_ms / 1000) as u64,
        },
    )
}

/// The first minute from `now` the task's window admits, as Unix seconds.
fn window_opens(task: &Task, now_ms: i64) -> Option<i64> {
    let start = now_ms / 60_000 * 60_000;
    (1..=24 * 60)
        .map(|m| start + m * 60_000)
        .find(|&t| schedule::in_window(task, t))
        .map(|t| t / 1000)
}

fn replication(
    input: &Input,
    task: &Task,
    p: &Pairing,
    rec: Option<&JobRecord>,
    busy: &HashSet<(String, String)>,
) -> (When, Why) {
    let now_ms = input.now_ms;
    let every_ms = task.schedule.every.secs() as i64 * 1000;
    if busy.contains(&(p.source_node.clone(), p.dataset.clone())) {
        return (When::Waiting, Why::RestoreWritingSource);
    }
    // What the record alone says, in more detail than the engine needs.
    if let Some(r) = rec {
        if r.active() {
            return (When::Now, running(input, r));
        }
        if let Some(to) = &r.moving_holds_to {
            return (When::Waiting, Why::MovingHolds { to: to.clone() });
        }
        // Blocked until a new plan, due or not, finds a way.
        if r.state == JobState::Blocked {
            let why = r
                .error
                .clone()
                .unwrap_or_else(|| "the job is blocked".into());
            return (When::Blocked, Why::Blocked { why });
        }
    }
    let ends = Ends {
        source_online: online(input, &p.source_node),
        target_online: online(input, &p.target_node),
        source: input.fleet.dataset(&p.source_node, &p.dataset),
        target: input.fleet.dataset(&p.target_node, &p.target_dataset),
    };
    let target_busy = busy.contains(&(p.target_node.clone(), p.target_dataset.clone()));
    // The engine's own rules, so that the plan cannot drift from them.
    match schedule::decide(task, rec, &ends, target_busy, now_ms) {
        Decision::Start { steps, .. } => (When::Now, pending(&steps)),
        Decision::UpToDate | Decision::Wait(Wait::NoSteps) => (
            When::At {
                at: (now_ms + every_ms) / 1000,
            },
            Why::Scheduled {
                every_secs: task.schedule.every.secs(),
            },
        ),
        Decision::Wait(Wait::NotDue) => match rec {
            Some(r) => not_due(r, every_ms),
            None => (When::Waiting, Why::NothingToSend),
        },
        Decision::Wait(Wait::OutsideWindow) => {
            let window = task
                .schedule
                .window
                .as_ref()
                .map(|w| w.to_string())
                .unwrap_or_default();
            let when = window_opens(task, now_ms).map_or(When::Waiting, |at| When::At { at });
            (when, Why::OutsideWindow { window })
        }
        Decision::Wait(Wait::SourceOffline) => (
            When::Waiting,
            Why::NodeOffline {
                node: p.source_node.clone(),
            },
        ),
        Decision::Wait(Wait::TargetOffline) => (
            When::Waiting,
            Why::NodeOffline {
                node: p.target_node.clone(),
            },
        ),
        Decision::Wait(Wait::TargetBusy) => (
            When::Waiting,
            Why::TargetBusy {
                node: p.target_node.clone(),
                dataset: p.target_dataset.clone(),
            },
        ),
        Decision::Wait(Wait::NoSourceInventory) => (
            When::Waiting,
            Why::NoInventory {
                node: p.source_node.clone(),
            },
        ),
        Decision::Wait(Wait::AwaitingLanded) => {
            let snapshot = rec
                .and_then(|r| r.steps.last())
                .map(|s| s.expect.name.clone())
                .unwrap_or_default();
            (When::Waiting, Why::AwaitingLanded { snapshot })
        }
        Decision::Wait(Wait::NothingToSend) => (When::Waiting, Why::NothingToSend),
        Decision::Blocked(Block::Plan(PlanError::NoCommon(target_has))) => {
            (When::Blocked, Why::NoCommonSnapshot { target_has })
        }
        Decision::Blocked(Block::Plan(PlanError::Diverged(after, common))) => {
            (When::Blocked, Why::Diverged { after, common })
        }
        Decision::Blocked(why) => (
            When::Blocked,
            Why::Blocked {
                why: why.to_string(),
            },
        ),
    }
}

/// The transfer's first base and last snapshot.
fn pending(steps: &[PlannedStep]) -> Why {
    let from = steps.first().and_then(|s| match &s.stream {
        StreamSpec::Full { .. } => None,
        StreamSpec::Incremental {
            from,
            from_bookmark: true,
            ..
        } => Some(format!("#{from}")),
        StreamSpec::Incremental { from, .. } => Some(from.clone()),
        StreamSpec::Resume { .. } => None,
    });
    let rollback = steps.first().filter(|s| s.force).map(|s| Rollback {
        to: s.base.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
        discards: s.discards.len(),
    });
    Why::Pending {
        steps: steps.len(),
        to: steps
            .last()
            .map(|s| s.expect.name.clone())
            .unwrap_or_default(),
        from,
        rollback,
    }
}

fn uploads(
    input: &Input,
    task: &BucketTask,
    records: &HashMap<(&str, &str, &str), &JobRecord>,
    items: &mut Vec<Item>,
) {
    let selector = offsite::Selector::new(&task.source);
    let every_ms = task.chain.incremental_every.secs() as i64 * 1000;
    for (node, datasets) in &input.fleet.inventory {
        if !input.policy.policy.nodes.contains_key(node) || !selector.node(node) {
            continue;
        }
        for inv in datasets.values().filter(|d| selector.dataset(d)) {
            let rec = records
                .get(&(task.name.as_str(), node.as_str(), inv.dataset.as_str()))
                .copied();
            let (when, why) = upload(input, task, node, inv, rec, every_ms);
            items.push(Item {
                what: What::Upload {
                    task: task.name.clone(),
                    node: node.clone(),
                    dataset: inv.dataset.clone(),
                },
                when,
                why,
            });
        }
    }
}

fn upload(
    input: &Input,
    task: &BucketTask,
    node: &str,
    inv: &DatasetInventory,
    rec: Option<&JobRecord>,
    every_ms: i64,
) -> (When, Why) {
    if let Some(r) = rec {
        if r.active() {
            return (When::Now, running(input, r));
        }
        if !r.due(every_ms, input.now_ms) {
            return not_due(r, every_ms);
        }
    }
    let up = online(input, node);
    if !up {
        return (
            When::Waiting,
            Why::NodeOffline {
                node: node.to_string(),
            },
        );
    }
    match offsite::decide(task, rec, up, Some(inv), input.now_ms) {
        UploadDecision::Start(plan) => (
            When::Now,
            Why::UploadPending {
                to: plan.step.expect.name.clone(),
                full_because: plan.full_because.clone(),
            },
        ),
        UploadDecision::UpToDate => (
            When::At {
                at: (input.now_ms + every_ms) / 1000,
            },
            Why::Scheduled {
                every_secs: (every_ms / 1000) as u64,
            },
        ),
        UploadDecision::Wait => (When::Waiting, Why::NothingToSend),
    }
}

/// Drills under way, and each dataset's next scheduled drill.
fn drills(input: &Input, items: &mut Vec<Item>) {
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for r in input
        .jobs
        .iter()
        .filter(|j| j.kind == JobKind::Drill && j.active())
    {
        let (Some(info), Some(d)) = (r.restore.as_ref(), r.drill.as_ref()) else {
            continue;
        };
        seen.insert((info.node.as_str(), info.dataset.as_str()));
        items.push(Item {
            what: What::Drill {
                class: d.class.clone(),
                number: d.number,
                node: info.node.clone(),
                dataset: info.dataset.clone(),
                copy: Some(r.source_node.clone()),
            },
            when: When::Now,
            why: running(input, r),
        });
    }
    for d in input.drills {
        if !seen.insert((d.node.as_str(), d.dataset.as_str())) {
            continue;
        }
        let every_secs = input
            .policy
            .policy
            .classes
            .get(&d.class)
            .map_or(0, |c| c.drill.every.secs());
        items.push(Item {
            what: What::Drill {
                class: d.class.clone(),
                number: Some(d.number),
                node: d.node.clone(),
                dataset: d.dataset.clone(),
                copy: d.copy.clone(),
            },
            when: When::At { at: d.at },
            why: Why::DrillDue { every_secs },
        });
    }
}

/// Each protected dataset's next snapshot by its smallest tier. Replicas
/// (targets of a pairing) are not snapshotted by their own class here.
fn snapshots(input: &Input, now: i64, items: &mut Vec<Item>) {
    let targets: HashSet<(&str, &str)> = input
        .pairings
        .iter()
        .map(|p| (p.target_node.as_str(), p.target_dataset.as_str()))
        .collect();
    let policy = &input.policy.policy;
    for (node, datasets) in &input.fleet.inventory {
        for inv in datasets.values() {
            if targets.contains(&(node.as_str(), inv.dataset.as_str()))
                || zdr_common::wire::is_drill_scratch(&inv.dataset)
            {
                continue;
            }
            let Some(class) = resolved_class(Some(policy), inv) else {
                continue;
            };
            let Some(period) = policy.classes.get(&class).and_then(|c| {
                c.tiers
                    .iter()
                    .filter(|(_, keep)| **keep > 0)
                    .map(|(p, _)| p.0.secs())
                    .min()
            }) else {
                continue;
            };
            let newest = inv.snapshots.iter().map(|s| s.creation).max();
            let due = newest.map_or(now, |n| n + period as i64);
            let late = newest.is_some() && due < now;
            let (when, why) = if !online(input, node) {
                (When::Waiting, Why::NodeOffline { node: node.clone() })
            } else {
                (
                    if late || newest.is_none() {
                        When::Now
                    } else {
                        When::At { at: due }
                    },
                    Why::SnapshotDue {
                        period_secs: period,
                        newest,
                        late,
                    },
                )
            };
            items.push(Item {
                what: What::Snapshot {
                    node: node.clone(),
                    dataset: inv.dataset.clone(),
                    class,
                },
                when,
                why,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::NodeRecord;
    use zdr_common::wire::{Hello, SnapshotInfo};

    /// 2026-12-05 12:00:00Z.
    const NOW: i64 = 1_796_472_000;

    const POLICY: &str = r#"version: 1
sites: { a: {}, b: {} }
nodes:
  a1: { site: a, media: ssd }
  b1: { site: b, media: hdd }
classes:
  gold: { rpo: 1h, rto: 1h, tiers: { 15m: 4, 1h: 24 } }
datasets:
  - { match: "backup/**", exclude: true }
  - { match: "tank/**", class: gold }
"#;

    const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { class: gold }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 10m }
    bandwidth: { limit: 50MB/s }
  - name: nightly
    source: { match: "tank/logs" }
    target: { site: other, root: "night/{node}" }
    schedule: { every: 1h, window: "22:00-06:00" }
links:
  - between: [a, b]
    limit: 30MB/s
"#;

    fn policy() -> PolicyState {
        let policy = zdr_schemas::parse_policy("p.yaml", POLICY).unwrap();
        let tasks = zdr_schemas::parse_tasks("t.yaml", TASKS, &policy).unwrap();
        PolicyState {
            policy,
            revision: 1,
            tasks: tasks.tasks,
            links: tasks.links,
            buckets: tasks.buckets,
        }
    }

    fn snap(i: u64, age: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: format!("zdr_{i}"),
            guid: 1000 + i,
            createtxg: i,
            creation: NOW - age,
            used: 10,
            userrefs: 0,
        }
    }

    fn fleet(b1_seen: i64) -> Fleet {
        let mut f = Fleet::default();
        for (name, site, seen) in [("a1", "a", NOW), ("b1", "b", b1_seen)] {
            let hello = Hello {
                node: name.into(),
                site: site.into(),
                media: "ssd".into(),
                version: "0".into(),
                backend: "sim".into(),
                pools: vec![],
                started_at: 0,
                policy_revision: None,
            };
            f.nodes.insert(
                name.into(),
                NodeRecord {
                    hello,
                    last_seen: seen,
                    policy_revision: None,
                    policy_refused: None,
                    pools: vec![],
                    inventory_generation: 0,
                    delta_seq: 0,
                },
            );
        }
        for ds in ["tank/db", "tank/logs"] {
            f.inventory.entry("a1".into()).or_default().insert(
                ds.into(),
                DatasetInventory {
                    dataset: ds.into(),
                    guid: 1,
                    used: 5000,
                    available: 0,
                    class: Some("gold".into()),
                    encrypted: false,
                    snapshots: vec![snap(1, 3600), snap(2, 600)],
                    bookmarks: vec![],
                },
            );
        }
        f
    }

    fn pairing(task: &str, dataset: &str, root: &str) -> Pairing {
        Pairing {
            task: task.into(),
            source_node: "a1".into(),
            dataset: dataset.into(),
            target_node: "b1".into(),
            target_dataset: format!("{root}/a1/{dataset}"),
            reason: String::new(),
        }
    }

    fn run(
        fleet: &Fleet,
        pairings: &[Pairing],
        jobs: &[JobRecord],
        drills: &[PlannedDrill],
    ) -> Plan {
        let p = policy();
        plan(&Input {
            policy: &p,
            fleet,
            pairings,
            jobs,
            drills,
            now_ms: NOW * 1000,
            offline_after_secs: 30,
            limit: DEFAULT_LIMIT,
        })
    }

    fn find(p: &Plan, f: impl Fn(&What) -> bool) -> &Item {
        p.items.iter().find(|i| f(&i.what)).expect("an item")
    }

    fn replication_of<'a>(p: &'a Plan, ds: &str) -> &'a Item {
        find(
            p,
            |w| matches!(w, What::Replication { dataset, .. } if dataset == ds),
        )
    }

    #[test]
    fn a_never_copied_pairing_starts_now_with_a_full_and_the_window_holds_the_other() {
        let f = fleet(NOW);
        let ps = [
            pairing("offsite", "tank/db", "backup"),
            pairing("nightly", "tank/logs", "night"),
        ];
        let p = run(&f, &ps, &[], &[]);
        let db = replication_of(&p, "tank/db");
        assert_eq!(db.when, When::Now);
        assert_eq!(
            db.why,
            Why::Pending {
                steps: 2,
                to: "zdr_2".into(),
                from: None,
                rollback: None
            }
        );
        assert_eq!(
            db.why.describe(NOW),
            "starts next tick: full send of zdr_2 in 2 steps"
        );
        // 12:00 is outside 22:00-06:00: it opens at 22:00 today.
        let logs = replication_of(&p, "tank/logs");
        assert_eq!(
            logs.when,
            When::At {
                at: NOW + 10 * 3600
            }
        );
        assert_eq!(
            logs.why.describe(NOW),
            "waiting: outside the task's window 22:00-06:00 UTC"
        );
    }

    #[test]
    fn an_offline_target_waits_and_a_job_that_failed_retries_at_its_time() {
        let f = fleet(NOW - 300);
        let ps = [pairing("offsite", "tank/db", "backup")];
        let p = run(&f, &ps, &[], &[]);
        let db = replication_of(&p, "tank/db");
        assert_eq!(
            (db.when, db.why.clone()),
            (When::Waiting, Why::NodeOffline { node: "b1".into() })
        );

        let mut rec = JobRecord::new(
            JobKind::Replication,
            &ps[0],
            "c1",
            1,
            vec![],
            (NOW - 60) * 1000,
        );
        rec.state = JobState::Failed;
        rec.attempt = 2;
        rec.error = Some("node b1 did not answer within 10s".into());
        rec.next_attempt_at_ms = Some((NOW + 40) * 1000);
        let p = run(&fleet(NOW), &ps, &[rec], &[]);
        let db = replication_of(&p, "tank/db");
        assert_eq!(db.when, When::At { at: NOW + 40 });
        assert_eq!(
            db.why.describe(NOW),
            "retry after attempt 2 failed: node b1 did not answer within 10s"
        );
    }

    #[test]
    fn a_running_job_names_the_cap_that_binds_it() {
        let ps = [pairing("offsite", "tank/db", "backup")];
        let mut rec = JobRecord::new(
            JobKind::Replication,
            &ps[0],
            "c1",
            1,
            vec![],
            (NOW - 60) * 1000,
        );
        rec.state = JobState::Running;
        rec.bytes = 1 << 30;
        rec.bytes_per_sec = 30_000_000;
        rec.rate_limit = Some(30_000_000);
        let p = run(&fleet(NOW), &ps, &[rec], &[]);
        let db = replication_of(&p, "tank/db");
        assert_eq!(db.when, When::Now);
        // The link's 30 MB/s is tighter than the task's 50 MB/s.
        let Why::Running { cap, .. } = &db.why else {
            panic!("{:?}", db.why)
        };
        assert_eq!(
            cap,
            &Some(Cap::Link {
                sites: ["a".into(), "b".into()],
                budget: 30_000_000,
                jobs: 1
            })
        );
        assert!(
            db.why.describe(NOW).ends_with(
                "throttled to 28.61 MiB/s: link a<->b budget 28.61 MiB/s shared by 1 job"
            ),
            "{}",
            db.why.describe(NOW)
        );
    }

    #[test]
    fn a_diverged_target_is_blocked_with_a_typed_reason() {
        let mut f = fleet(NOW);
        let mut theirs = snap(9, 60);
        theirs.guid = 77;
        f.inventory.entry("b1".into()).or_default().insert(
            "backup/a1/tank/db".into(),
            DatasetInventory {
                dataset: "backup/a1/tank/db".into(),
                guid: 2,
                used: 0,
                available: 0,
                class: None,
                encrypted: false,
                snapshots: vec![snap(1, 3600), theirs],
                bookmarks: vec![],
            },
        );
        let ps = [pairing("offsite", "tank/db", "backup")];
        let p = run(&f, &ps, &[], &[]);
        let db = replication_of(&p, "tank/db");
        assert_eq!(db.when, When::Blocked);
        assert_eq!(
            db.why,
            Why::Diverged {
                after: vec!["zdr_9".into()],
                common: "zdr_1".into()
            }
        );
        // Blocked items come first.
        assert_eq!(p.items[0].when, When::Blocked);
    }

    #[test]
    fn snapshots_and_drills_are_listed_with_their_times() {
        let f = fleet(NOW);
        let drill = PlannedDrill {
            at: NOW + 86_400,
            class: "gold".into(),
            number: 3,
            node: "a1".into(),
            dataset: "tank/db".into(),
            copy: Some("b1".into()),
        };
        let later = PlannedDrill {
            at: NOW + 2 * 86_400,
            number: 4,
            ..drill.clone()
        };
        let p = run(&f, &[], &[], &[drill, later]);
        let drills: Vec<&Item> = p
            .items
            .iter()
            .filter(|i| matches!(i.what, What::Drill { .. }))
            .collect();
        assert_eq!(drills.len(), 1, "only the next drill of each dataset");
        assert_eq!(drills[0].when, When::At { at: NOW + 86_400 });
        assert_eq!(
            drills[0].what.describe(),
            "drill a1:tank/db from the copy on b1"
        );
        // The newest snapshot is 10 min old; the 15m tier is next in 5 min.
        let s = find(
            &p,
            |w| matches!(w, What::Snapshot { dataset, .. } if dataset == "tank/db"),
        );
        assert_eq!(s.when, When::At { at: NOW + 300 });
        assert_eq!(s.why.describe(NOW), "the smallest tier takes one every 15m");
    }

    #[test]
    fn the_limit_cuts_the_latest_and_counts_them() {
        let f = fleet(NOW);
        let p = policy();
        let out = plan(&Input {
            policy: &p,
            fleet: &f,
            pairings: &[pairing("offsite", "tank/db", "backup")],
            jobs: &[],
            drills: &[],
            now_ms: NOW * 1000,
            offline_after_secs: 30,
            limit: 1,
        });
        assert_eq!(out.items.len(), 1);
        assert_eq!(out.left_out, 2);
        assert_eq!(out.items[0].when, When::Now, "the soonest stays");
    }
}
