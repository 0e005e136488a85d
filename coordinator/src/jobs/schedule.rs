//! What each pairing needs on this tick: pure, from the pairings, the tasks,
//! the fleet's inventories and the records, at `now_ms`.
//!
//! Rules, in order, for one pairing:
//! 1. an active attempt silent for too long has stalled (see `record`);
//! 2. a parent dataset copied by the same task from the same node lands
//!    first (receiving it later into the placeholder made for its child
//!    would need `-F`);
//! 3. nothing starts while a job runs or its holds move, before it is due
//!    (schedule or backoff), outside the task's window, while either node is
//!    offline, or while another job writes into the same target dataset;
//! 4. after a landing, the next plan waits until the target's inventory
//!    shows it (for a while);
//! 5. then the transfer is planned from both inventories;
//! 6. a plan that removes a snapshot the target's retention floor refused
//!    to let go, while it is inside its window, is blocked, not sent.

use std::collections::HashSet;

use chrono::Timelike;
use zdr_common::wire::{BookmarkInfo, DatasetInventory, SnapshotInfo, SnapshotRef, StreamSpec};
use zdr_schemas::tasks::Task;

use super::record::{JobRecord, PlannedStep};
use crate::pairing::Pairing;
use crate::transfer_plan::{self, Step};

/// What a pairing gets on this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do now, and why (`crate::plan` shows it).
    Wait(Wait),
    /// The target has everything the source has.
    UpToDate,
    /// Start a job with these steps; `discard_partial` when the target's
    /// saved partial receive can no longer be resumed from the source.
    Start {
        steps: Vec<PlannedStep>,
        discard_partial: Option<String>,
    },
    /// Needs a human; the reason.
    Blocked(Block),
}

/// Why a pairing waits (rules 3 and 4, and a source with nothing to send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// A job runs or its holds move, or the schedule or backoff has not
    /// come round (the record says which).
    NotDue,
    OutsideWindow,
    SourceOffline,
    TargetOffline,
    /// Another job writes into the same target dataset.
    TargetBusy,
    /// The source's inventory has not arrived.
    NoSourceInventory,
    /// The last job's snapshot is not in the target's inventory yet.
    AwaitingLanded,
    /// The source has no snapshot yet.
    NothingToSend,
    /// The plan holds only a rollback, nothing to send after it.
    NoSteps,
}

/// Why a pairing needs a human.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Block {
    /// The plan would remove a snapshot the target's floor keeps (rule 6).
    #[error("{0}")]
    Floor(String),
    /// The target has no common snapshot, or diverged.
    #[error(transparent)]
    Plan(transfer_plan::PlanError),
}

/// Pairings whose dataset has never been copied, by (task, node, dataset):
/// built once a tick so that rule 2 costs one lookup per ancestor.
pub struct NeverCopied(HashSet<(String, String, String)>);

impl NeverCopied {
    pub fn new<'a>(
        pairings: &[Pairing],
        record: impl Fn(&Pairing) -> Option<&'a JobRecord>,
    ) -> Self {
        NeverCopied(
            pairings
                .iter()
                .filter(|p| record(p).is_none_or(|r| r.last_success_ms.is_none()))
                .map(|p| (p.task.clone(), p.source_node.clone(), p.dataset.clone()))
                .collect(),
        )
    }

    /// Whether an ancestor of the pairing's dataset, copied by the same task
    /// from the same node, has never been copied yet.
    pub fn parent_first(&self, pairing: &Pairing) -> bool {
        let Ok(name) = zdr_common::DatasetName::parse(&pairing.dataset) else {
            return false;
        };
        std::iter::successors(name.parent(), |p| p.parent()).any(|ancestor| {
            self.0.contains(&(
                pairing.task.clone(),
                pairing.source_node.clone(),
                ancestor.as_str().to_string(),
            ))
        })
    }
}

/// Target datasets an active job writes into, by (node, dataset).
pub fn busy_targets<'a>(records: impl Iterator<Item = &'a JobRecord>) -> HashSet<(String, String)> {
    records
        .filter(|r| r.active())
        .map(|r| (r.target_node.clone(), r.target_dataset.clone()))
        .collect()
}

/// Whether the task's time-of-day window (UTC) admits `now_ms`.
pub fn in_window(task: &Task, now_ms: i64) -> bool {
    task.schedule.window.as_ref().is_none_or(|w| {
        let at = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        w.contains((at.hour() * 60 + at.minute()) as u16)
    })
}

/// What the fleet says of one pairing's two ends.
pub struct Ends<'a> {
    pub source_online: bool,
    pub target_online: bool,
    pub source: Option<&'a DatasetInventory>,
    pub target: Option<&'a DatasetInventory>,
}

/// Rules 3 to 5 for one pairing (rules 1 and 2 are the caller's, as they
/// need the record mutably or every pairing).
pub fn decide(
    task: &Task,
    record: Option<&JobRecord>,
    ends: &Ends,
    target_busy: bool,
    now_ms: i64,
) -> Decision {
    let every_ms = task.schedule.every.secs() as i64 * 1000;
    if record.is_some_and(|r| !r.due(every_ms, now_ms)) {
        return Decision::Wait(Wait::NotDue);
    }
    if !in_window(task, now_ms) {
        return Decision::Wait(Wait::OutsideWindow);
    }
    if !ends.source_online {
        return Decision::Wait(Wait::SourceOffline);
    }
    if !ends.target_online {
        return Decision::Wait(Wait::TargetOffline);
    }
    if target_busy {
        return Decision::Wait(Wait::TargetBusy);
    }
    let Some(src) = ends.source else {
        return Decision::Wait(Wait::NoSourceInventory);
    };
    let tgt = ends.target.map(|d| d.snapshots.as_slice()).unwrap_or(&[]);
    if record.is_some_and(|r| r.awaiting_landed_inventory(tgt, now_ms)) {
        return Decision::Wait(Wait::AwaitingLanded);
    }
    let planned = transfer_plan::plan_with_bookmarks(
        &src.snapshots,
        &src.bookmarks,
        tgt,
        task.keep_intermediates,
        task.allow_rollback,
    );
    match planned {
        Ok(None) => Decision::UpToDate,
        Ok(Some(plan)) => {
            let steps = steps_of(&plan.steps, &src.snapshots, &src.bookmarks);
            if steps.is_empty() {
                return Decision::Wait(Wait::NoSteps);
            }
            if let Some(why) = record.and_then(|r| r.floor_keeps(&steps, now_ms)) {
                return Decision::Blocked(Block::Floor(why));
            }
            let discard_partial = record
                .and_then(|r| r.partial.as_ref())
                .and_then(|p| unresumable(p, &src.snapshots, &src.bookmarks));
            Decision::Start {
                steps,
                discard_partial,
            }
        }
        // A new dataset before its first snapshot: not a human's problem.
        Err(transfer_plan::PlanError::NothingToSend) => Decision::Wait(Wait::NothingToSend),
        Err(e) => Decision::Blocked(Block::Plan(e)),
    }
}

/// Why a saved partial receive is not worth continuing: the source no
/// longer has the snapshot it is of, or its incremental source; or it holds
/// no stream data yet (on real OpenZFS such a resume was refused as an
/// "incompatible embedded data stream", while a fresh send loses nothing).
pub(super) fn unresumable(
    partial: &zdr_common::wire::PartialReceive,
    snapshots: &[SnapshotInfo],
    bookmarks: &[BookmarkInfo],
) -> Option<String> {
    if partial.bytes == 0 {
        return Some("the target's partial receive holds no stream data yet".into());
    }
    if !snapshots.iter().any(|s| s.guid == partial.toguid) {
        return Some(format!(
            "the source no longer has the snapshot (GUID {}) the target's partial receive is of",
            partial.toguid
        ));
    }
    let from = partial.fromguid?;
    let has_base =
        snapshots.iter().any(|s| s.guid == from) || bookmarks.iter().any(|b| b.guid == from);
    (!has_base).then(|| {
        format!(
            "the source no longer has the incremental base (GUID {from}) of the target's partial receive"
        )
    })
}

/// The plan's steps as streams; a rollback becomes `-F` on the step after it.
pub fn steps_of(
    steps: &[Step],
    source: &[SnapshotInfo],
    bookmarks: &[BookmarkInfo],
) -> Vec<PlannedStep> {
    let snap = |name: &str| {
        source.iter().find(|s| s.name == name).map(|s| SnapshotRef {
            name: s.name.clone(),
            guid: s.guid,
        })
    };
    let bookmark = |name: &str| {
        bookmarks
            .iter()
            .find(|b| b.name == name)
            .map(|b| SnapshotRef {
                name: format!("#{}", b.name),
                guid: b.guid,
            })
    };
    let mut out = Vec::new();
    let mut force = None;
    for step in steps {
        let (stream, to, base) = match step {
            Step::Rollback { discards, .. } => {
                force = Some(discards.clone());
                continue;
            }
            Step::Full { snapshot } => (
                StreamSpec::Full {
                    snapshot: snapshot.clone(),
                },
                snapshot,
                None,
            ),
            Step::Incremental {
                from,
                to,
                intermediates,
            } => (
                StreamSpec::Incremental {
                    from: from.clone(),
                    to: to.clone(),
                    intermediates: *intermediates,
                    from_bookmark: false,
                },
                to,
                snap(from),
            ),
            Step::FromBookmark { bookmark: bm, to } => (
                StreamSpec::Incremental {
                    from: bm.clone(),
                    to: to.clone(),
                    intermediates: false,
                    from_bookmark: true,
                },
                to,
                bookmark(bm),
            ),
        };
        let Some(expect) = snap(to) else { continue };
        let discards = force.take();
        out.push(PlannedStep {
            stream,
            expect,
            force: discards.is_some(),
            discards: discards.unwrap_or_default(),
            base,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_common::wire::PartialReceive;

    use crate::transfer_plan::PlanError;

    use crate::testing::snap as s;

    fn pairing(dataset: &str) -> Pairing {
        Pairing {
            task: "t".into(),
            source_node: "a".into(),
            dataset: dataset.into(),
            target_node: "b".into(),
            target_dataset: format!("backup/{dataset}"),
            reason: String::new(),
        }
    }

    /// demo-local from the demo specs: every 10 s, keep intermediates, no rollback.
    fn task() -> Task {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/demo/");
        let policy = zdr_schemas::load_policy(format!("{dir}policies.yaml").as_ref()).unwrap();
        let tasks = zdr_schemas::load_tasks(format!("{dir}tasks.yml").as_ref(), &policy).unwrap();
        tasks
            .tasks
            .into_iter()
            .find(|t| t.name == "demo-local")
            .unwrap()
    }

    fn inv(snaps: Vec<SnapshotInfo>) -> DatasetInventory {
        DatasetInventory {
            dataset: "tank/d".into(),
            guid: 1,
            used: 0,
            available: 0,
            class: None,
            snapshots: snaps,
            bookmarks: vec![],
            encrypted: false,
        }
    }

    #[test]
    fn decide_plans_waits_and_blocks() {
        let t = task();
        let src = inv(vec![s("a", 1), s("b", 2)]);
        let tgt = inv(vec![s("a", 1)]);
        let ends = |source_online, target| Ends {
            source_online,
            target_online: true,
            source: Some(&src),
            target,
        };
        let Decision::Start {
            steps,
            discard_partial,
        } = decide(&t, None, &ends(true, Some(&tgt)), false, 0)
        else {
            panic!("expected a start")
        };
        assert_eq!(steps.len(), 1);
        assert_eq!(discard_partial, None);
        assert_eq!(
            decide(&t, None, &ends(false, Some(&tgt)), false, 0),
            Decision::Wait(Wait::SourceOffline)
        );
        assert_eq!(
            decide(&t, None, &ends(true, Some(&tgt)), true, 0),
            Decision::Wait(Wait::TargetBusy)
        );
        // A new dataset with no snapshot yet waits; it is not blocked.
        let empty = inv(vec![]);
        let new_dataset = Ends {
            source: Some(&empty),
            ..ends(true, Some(&tgt))
        };
        assert_eq!(
            decide(&t, None, &new_dataset, false, 0),
            Decision::Wait(Wait::NothingToSend)
        );
        assert_eq!(
            decide(&t, None, &ends(true, Some(&src)), false, 0),
            Decision::UpToDate
        );
        let diverged = inv(vec![s("a", 1), s("x", 9)]);
        assert!(matches!(
            decide(&t, None, &ends(true, Some(&diverged)), false, 0),
            Decision::Blocked(Block::Plan(PlanError::Diverged(after, common)))
                if after == ["x"] && common == "a"
        ));
    }

    #[test]
    fn a_rollback_the_targets_floor_refused_waits_for_the_window() {
        let mut t = task();
        t.allow_rollback = true;
        let src = inv(vec![s("a", 1), s("b", 2)]);
        let tgt = inv(vec![s("a", 1), s("x", 9)]);
        let ends = Ends {
            source_online: true,
            target_online: true,
            source: Some(&src),
            target: Some(&tgt),
        };
        let Decision::Start { steps, .. } = decide(&t, None, &ends, false, 0) else {
            panic!("expected a start")
        };
        assert_eq!(steps[0].discards, ["x"]);
        let mut rec = JobRecord::new(
            super::super::record::JobKind::Replication,
            &pairing("tank/d"),
            "c",
            1,
            steps,
            0,
        );
        let attempt = rec.begin_attempt(0);
        let refusal = zdr_common::wire::FloorRefusal {
            dataset: "backup/tank/d".into(),
            operation: zdr_common::wire::FloorOperation::ReceiveForce,
            snapshots: vec![zdr_common::wire::FloorHit {
                name: "x".into(),
                creation: 0,
                until: 3600,
            }],
        };
        assert!(!rec.floor_refused(&attempt, vec![refusal], 0).is_empty());
        // Due again on schedule, but the plan is the one refused: blocked, not sent.
        assert!(matches!(
            decide(&t, Some(&rec), &ends, false, 600_000),
            Decision::Blocked(Block::Floor(why)) if why.starts_with("target b refused: receive -F")
        ));
        // Once x has left its window the target would let it go.
        assert!(matches!(
            decide(&t, Some(&rec), &ends, false, 3_600_000),
            Decision::Start { .. }
        ));
    }

    #[test]
    fn a_rollback_becomes_force_on_the_next_step() {
        let source = vec![s("a", 1), s("b", 2), s("c", 3)];
        let steps = steps_of(
            &[
                Step::Rollback {
                    to: "a".into(),
                    discards: vec!["x".into()],
                },
                Step::Incremental {
                    from: "a".into(),
                    to: "c".into(),
                    intermediates: true,
                },
            ],
            &source,
            &[],
        );
        assert_eq!(steps.len(), 1);
        assert!(steps[0].force);
        assert_eq!(steps[0].discards, vec!["x".to_string()]);
        assert_eq!(
            steps[0].expect,
            SnapshotRef {
                name: "c".into(),
                guid: 3
            }
        );
        assert_eq!(steps[0].base.as_ref().map(|b| b.guid), Some(1));
    }

    #[test]
    fn a_bookmark_step_names_the_bookmark_as_base() {
        let source = vec![s("c", 3)];
        let bms = vec![BookmarkInfo {
            name: "b".into(),
            guid: 2,
            createtxg: 2,
            creation: 2,
        }];
        let steps = steps_of(
            &[Step::FromBookmark {
                bookmark: "b".into(),
                to: "c".into(),
            }],
            &source,
            &bms,
        );
        assert_eq!(
            steps[0].stream,
            StreamSpec::Incremental {
                from: "b".into(),
                to: "c".into(),
                intermediates: false,
                from_bookmark: true
            }
        );
        assert_eq!(
            steps[0].base,
            Some(SnapshotRef {
                name: "#b".into(),
                guid: 2
            })
        );
    }

    #[test]
    fn parents_land_before_their_children() {
        let all = vec![pairing("tank"), pairing("tank/a"), pairing("tank/a/b")];
        let none = NeverCopied::new(&all, |_| None);
        assert!(!none.parent_first(&all[0]));
        assert!(none.parent_first(&all[1]));
        assert!(none.parent_first(&all[2]));
        // Another task's or node's parent does not count.
        let other = Pairing {
            task: "u".into(),
            ..pairing("tank/a")
        };
        assert!(!none.parent_first(&other));
    }

    #[test]
    fn a_partial_receive_the_source_cannot_continue_is_dropped_at_planning() {
        let src = vec![s("a", 1), s("c", 3)];
        let p = |toguid, fromguid| PartialReceive {
            toguid,
            fromguid,
            bytes: 1,
        };
        assert_eq!(unresumable(&p(3, Some(1)), &src, &[]), None);
        assert_eq!(unresumable(&p(3, None), &src, &[]), None);
        assert!(unresumable(&p(2, Some(1)), &src, &[])
            .unwrap()
            .contains("GUID 2"));
        assert!(unresumable(&p(3, Some(9)), &src, &[])
            .unwrap()
            .contains("GUID 9"));
        let bm = BookmarkInfo {
            name: "x".into(),
            guid: 9,
            createtxg: 2,
            creation: 2,
        };
        assert_eq!(unresumable(&p(3, Some(9)), &src, &[bm]), None);
        let empty = PartialReceive {
            bytes: 0,
            ..p(3, Some(1))
        };
        assert!(unresumable(&empty, &src, &[])
            .unwrap()
            .contains("no stream data"));
    }
}
