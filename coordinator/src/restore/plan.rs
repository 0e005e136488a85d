//! Restore planning, pure: a request, the restore points, what the
//! destination node holds and `now` in; the chosen copy and snapshot and the
//! steps out (a full stream of the copy's oldest snapshot, then one `-I` to
//! the chosen one), or a typed error naming the input and the fix.

use zdr_common::wire::{DatasetInventory, SnapshotInfo, SnapshotRef, StreamSpec};
use zdr_common::DatasetName;

use super::points::{bucket_task, Copy, CopyKind, NodeFacts, PointSnapshot, RestorePoints};
use crate::jobs::{read_snapshots, PlannedStep};

/// A restore request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub node: String,
    pub dataset: String,
    /// Unix seconds: the newest snapshot at or before it.
    pub at: Option<i64>,
    pub snapshot: Option<String>,
    /// The node of the copy to restore from.
    pub from: Option<String>,
    pub to_node: String,
    pub to_dataset: String,
    pub replace: bool,
}

/// The destination node as the coordinator knows it.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// `None`: not in the fleet.
    pub facts: Option<&'a NodeFacts>,
    /// The destination dataset, if it exists there.
    pub existing: Option<&'a DatasetInventory>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub from_node: String,
    pub from_dataset: String,
    pub snapshot: PointSnapshot,
    /// The copy is raw-encrypted: it lands raw, without its key loaded.
    pub raw: bool,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{input} {value:?}: {why}")]
    BadInput {
        input: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "at and snapshot are both given; give at most one (neither restores the newest snapshot)"
    )]
    AtAndSnapshot,
    #[error(
        "at {at}: the copy on {node} has no snapshot that old; its oldest is @{} from {}; \
         give a time at or after it",
        oldest.name, iso(oldest.creation)
    )]
    TooEarly {
        at: String,
        node: String,
        oldest: PointSnapshot,
    },
    #[error("snapshot {name:?} is not on the copy on {node}; its snapshots are {have}; pick one of them")]
    NoSuchSnapshot {
        name: String,
        node: String,
        have: String,
    },
    #[error("the copy on {node} has no snapshot yet; restore from another copy (from)")]
    NoSnapshots { node: String },
    #[error("{input} names node {node:?}, which is not in the fleet; known nodes: {known}")]
    UnknownNode {
        input: &'static str,
        node: String,
        known: String,
    },
    #[error("from {from:?}: no copy of the dataset is on that node; copies are on {copies}")]
    NotACopy { from: String, copies: String },
    #[error("from {from:?}: that copy is offline; reachable copies: {reachable}; pick one of them or wait for {from}")]
    CopyOffline { from: String, reachable: String },
    #[error("no copy is online (copies on {copies}); bring one of those nodes back, then retry")]
    NoCopyOnline { copies: String },
    #[error("to {node:?}: the destination node is offline; bring it back or restore elsewhere")]
    DestinationOffline { node: String },
    #[error(
        "to {node}:{dataset}: the dataset exists; restore to a new name, or set replace to \
         roll it back and overwrite it"
    )]
    DestinationExists { node: String, dataset: String },
    #[error("to {node}:{dataset}: that is the copy restored from; restore to another name")]
    DestinationIsCopy { node: String, dataset: String },
    #[error(
        "to {node}:{dataset}: the dataset exists, and a restore from a bucket lands a new \
         dataset (its chain starts with a full); restore to a new name"
    )]
    BucketNeedsNewDataset { node: String, dataset: String },
    #[error(
        "to {node}:{dataset}: replace cannot overwrite it: {why}; restore to a new name instead"
    )]
    ReplaceNeedsBase {
        node: String,
        dataset: String,
        why: String,
    },
}

fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// `NODE:DATASET` (`input` names the field for the error).
pub fn parse_node_dataset(
    input: &'static str,
    value: &str,
) -> Result<(String, DatasetName), PlanError> {
    let bad = |why: String| PlanError::BadInput {
        input,
        value: value.to_string(),
        why,
    };
    let (node, dataset) = value
        .split_once(':')
        .ok_or_else(|| bad("expected NODE:DATASET, e.g. n1:tank/db".into()))?;
    zdr_common::subject::valid_node_id(node).map_err(|e| bad(format!("node: {e}")))?;
    let dataset = DatasetName::parse(dataset).map_err(|e| bad(format!("dataset: {e}")))?;
    Ok((node.to_string(), dataset))
}

/// An RFC 3339 time, e.g. `2026-12-05T07:30:00Z`, as unix seconds.
pub fn parse_at(value: &str) -> Result<i64, PlanError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp())
        .map_err(|e| PlanError::BadInput {
            input: "at",
            value: value.to_string(),
            why: format!("{e}; give an RFC 3339 time such as 2026-12-05T07:30:00Z"),
        })
}

fn names(copies: &[&Copy]) -> String {
    if copies.is_empty() {
        return "none".into();
    }
    copies
        .iter()
        .map(|c| format!("{}:{}", c.node, c.dataset))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Index into the copy's snapshots of the one the request asks for.
fn pick(req: &Request, copy: &Copy) -> Result<usize, PlanError> {
    let snaps = &copy.snapshots;
    if snaps.is_empty() {
        return Err(PlanError::NoSnapshots {
            node: copy.node.clone(),
        });
    }
    if let Some(name) = &req.snapshot {
        return snaps.iter().position(|s| &s.name == name).ok_or_else(|| {
            PlanError::NoSuchSnapshot {
                name: name.clone(),
                node: copy.node.clone(),
                have: snaps
                    .iter()
                    .map(|s| format!("@{}", s.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        });
    }
    match req.at {
        None => Ok(snaps.len() - 1),
        Some(at) => {
            snaps
                .iter()
                .rposition(|s| s.creation <= at)
                .ok_or_else(|| PlanError::TooEarly {
                    at: iso(at),
                    node: copy.node.clone(),
                    oldest: snaps[0].clone(),
                })
        }
    }
}

/// How close a copy is to the destination: same node, same site, any.
fn distance(copy: &Copy, to_node: &str, to_site: &str) -> u8 {
    if copy.node == to_node {
        0
    } else if copy.site == to_site {
        1
    } else {
        2
    }
}

fn sref(s: &PointSnapshot) -> SnapshotRef {
    SnapshotRef {
        name: s.name.clone(),
        guid: s.guid,
    }
}

/// The steps onto a new dataset: the copy's oldest snapshot in full, then
/// one `-I` up to `c`, so the restored dataset has the copy's history.
/// `snaps` are in [`ordered`] order.
pub fn fresh_steps(snaps: &[PointSnapshot], c: usize) -> Vec<PlannedStep> {
    let mut steps = vec![PlannedStep {
        stream: StreamSpec::Full {
            snapshot: snaps[0].name.clone(),
        },
        expect: sref(&snaps[0]),
        force: false,
        discards: vec![],
        base: None,
    }];
    if c > 0 {
        steps.push(PlannedStep {
            stream: StreamSpec::Incremental {
                from: snaps[0].name.clone(),
                to: snaps[c].name.clone(),
                intermediates: true,
                from_bookmark: false,
            },
            expect: sref(&snaps[c]),
            force: false,
            discards: vec![],
            base: Some(sref(&snaps[0])),
        });
    }
    steps
}

/// What a fresh restore's next attempt sends, checked against the copy's
/// snapshots as the coordinator lists them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replan {
    /// The planned steps still read only snapshots the copy holds (or the
    /// restore is past its first step, or over an existing dataset).
    Keep,
    /// The copy's retention destroyed a snapshot the plan reads after the
    /// plan was made from an inventory a moment behind (seen in the kill -9
    /// trials: the copy's oldest, which a fresh restore sends in full). The
    /// same chosen snapshot, from the copy's oldest now.
    Steps(Vec<PlannedStep>),
    /// The chosen snapshot itself is gone from the copy.
    Gone(String),
}

/// A node's listing of a copy as restore points: oldest first, by
/// creation and then createtxg.
pub fn ordered(copy: &[SnapshotInfo]) -> Vec<PointSnapshot> {
    let mut snaps: Vec<PointSnapshot> = copy.iter().map(PointSnapshot::from).collect();
    snaps.sort_by_key(|s| (s.creation, s.createtxg));
    snaps
}

/// Plans a fresh restore's steps again before an attempt of its first
/// step, if the copy (`copy`, its snapshots listed now) no longer holds one
/// the steps read. Later steps already have their base landed and held.
pub fn replan(steps: &[PlannedStep], step: usize, copy: &[SnapshotInfo]) -> Replan {
    let fresh = matches!(steps.first(), Some(s) if s.base.is_none()
        && matches!(s.stream, StreamSpec::Full { .. }));
    let Some(chosen) = steps.last().map(|s| &s.expect) else {
        return Replan::Keep;
    };
    if step != 0 || !fresh || copy.is_empty() {
        return Replan::Keep;
    }
    let held = |name: &String| copy.iter().any(|s| &s.name == name);
    if read_snapshots(steps).iter().all(held) {
        return Replan::Keep;
    }
    let snaps = ordered(copy);
    match snaps.iter().position(|s| s.guid == chosen.guid) {
        Some(c) => Replan::Steps(fresh_steps(&snaps, c)),
        None => Replan::Gone(format!(
            "the copy no longer holds the chosen snapshot @{} (GUID {}): its retention \
             destroyed it after the restore was planned; ask for the restore again to pick \
             from what the copy holds now",
            chosen.name, chosen.guid
        )),
    }
}

/// The step over an existing dataset: `receive -F` of one `-I` from the
/// newest snapshot it shares (by GUID) with the copy before `c`; the
/// snapshots after that base go, as listed (the target checks the list).
fn replace_step(
    req: &Request,
    snaps: &[PointSnapshot],
    c: usize,
    existing: &DatasetInventory,
) -> Result<PlannedStep, PlanError> {
    let refuse = |why: String| PlanError::ReplaceNeedsBase {
        node: req.to_node.clone(),
        dataset: req.to_dataset.clone(),
        why,
    };
    let has = |guid: u64| existing.snapshots.iter().position(|s| s.guid == guid);
    let b = (0..c)
        .rev()
        .find(|&i| has(snaps[i].guid).is_some())
        .ok_or_else(|| {
            refuse(format!(
                "it shares no snapshot (by GUID) with the copy older than @{}, so there is \
             nothing to roll it back to",
                snaps[c].name
            ))
        })?;
    if let Some(s) = snaps[b + 1..=c].iter().find(|s| has(s.guid).is_some()) {
        return Err(refuse(format!(
            "it already holds @{} of the copy; roll it back by hand (zfs rollback -r)",
            s.name
        )));
    }
    let at = has(snaps[b].guid).expect("found above");
    Ok(PlannedStep {
        stream: StreamSpec::Incremental {
            from: snaps[b].name.clone(),
            to: snaps[c].name.clone(),
            intermediates: true,
            from_bookmark: false,
        },
        expect: sref(&snaps[c]),
        force: true,
        discards: existing.snapshots[at + 1..]
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        base: Some(sref(&snaps[b])),
    })
}

/// Plans a restore. `known` lists the fleet's nodes, for errors.
pub fn plan(
    req: &Request,
    points: &RestorePoints,
    dest: Destination<'_>,
    known: &[String],
    now: i64,
) -> Result<RestorePlan, PlanError> {
    if req.at.is_some() && req.snapshot.is_some() {
        return Err(PlanError::AtAndSnapshot);
    }
    if let Some(at) = req.at.filter(|&at| at > now) {
        return Err(PlanError::BadInput {
            input: "at",
            value: iso(at),
            why: "that is in the future; leave at out to restore the newest snapshot".into(),
        });
    }
    let unknown = |input, node: &str| PlanError::UnknownNode {
        input,
        node: node.to_string(),
        known: known.join(", "),
    };
    let to = dest.facts.ok_or_else(|| unknown("to", &req.to_node))?;
    if !to.online {
        return Err(PlanError::DestinationOffline {
            node: req.to_node.clone(),
        });
    }
    let all: Vec<&Copy> = points.copies.iter().collect();
    // A bucket is restored from only when asked for (`from: bucket:NAME`):
    // the destination needs the recovery key.
    let online: Vec<&Copy> = all
        .iter()
        .copied()
        .filter(|c| c.online && c.copy != CopyKind::Bucket)
        .collect();
    let (copy, c) = match &req.from {
        Some(from) => {
            if !known.contains(from) && bucket_task(from).is_none() {
                return Err(unknown("from", from));
            }
            let copy = all
                .iter()
                .find(|c| &c.node == from)
                .ok_or_else(|| PlanError::NotACopy {
                    from: from.clone(),
                    copies: names(&all),
                })?;
            if !copy.online {
                return Err(PlanError::CopyOffline {
                    from: from.clone(),
                    reachable: names(&online),
                });
            }
            (*copy, pick(req, copy)?)
        }
        None => {
            let mut ranked = online.clone();
            ranked.sort_by_key(|c| distance(c, &req.to_node, &to.site));
            let mut first_err = None;
            let mut found = None;
            for copy in ranked {
                match pick(req, copy) {
                    Ok(c) => {
                        found = Some((copy, c));
                        break;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            match (found, first_err) {
                (Some(f), _) => f,
                (None, Some(e)) => return Err(e),
                (None, None) => {
                    return Err(PlanError::NoCopyOnline {
                        copies: names(&all),
                    })
                }
            }
        }
    };
    if copy.node == req.to_node && copy.dataset == req.to_dataset {
        return Err(PlanError::DestinationIsCopy {
            node: req.to_node.clone(),
            dataset: req.to_dataset.clone(),
        });
    }
    let steps = match (dest.existing, req.replace) {
        // The destination agent picks the chain from the bucket's manifests
        // by GUID and receives it whole: one step.
        (None, _) if copy.copy == CopyKind::Bucket => vec![PlannedStep {
            stream: StreamSpec::Full {
                snapshot: copy.snapshots[c].name.clone(),
            },
            expect: sref(&copy.snapshots[c]),
            force: false,
            discards: vec![],
            base: None,
        }],
        (Some(_), _) if copy.copy == CopyKind::Bucket => {
            return Err(PlanError::BucketNeedsNewDataset {
                node: req.to_node.clone(),
                dataset: req.to_dataset.clone(),
            })
        }
        (None, _) => fresh_steps(&copy.snapshots, c),
        (Some(_), false) => {
            return Err(PlanError::DestinationExists {
                node: req.to_node.clone(),
                dataset: req.to_dataset.clone(),
            })
        }
        (Some(existing), true) => vec![replace_step(req, &copy.snapshots, c, existing)?],
    };
    Ok(RestorePlan {
        from_node: copy.node.clone(),
        from_dataset: copy.dataset.clone(),
        snapshot: copy.snapshots[c].clone(),
        raw: copy.raw,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::super::points::tests::{ds, facts, fleet, snap};
    use super::super::points::{restore_points, NodeFacts};
    use super::*;

    const NOW: i64 = 10_000;

    fn points() -> RestorePoints {
        let (nodes, inv, links) = fleet();
        restore_points("n1", "tank/db", &nodes, &inv, &links, &[]).unwrap()
    }

    fn req(to: &str) -> Request {
        Request {
            node: "n1".into(),
            dataset: "tank/db".into(),
            at: None,
            snapshot: None,
            from: None,
            to_node: to.into(),
            to_dataset: "tank/restored".into(),
            replace: false,
        }
    }

    fn known() -> Vec<String> {
        ["n1", "n2", "n3", "n4"].map(String::from).to_vec()
    }

    fn run(r: &Request, p: &RestorePoints, to: &NodeFacts) -> Result<RestorePlan, PlanError> {
        let dest = Destination {
            facts: Some(to),
            existing: None,
        };
        plan(r, p, dest, &known(), NOW)
    }

    #[test]
    fn the_newest_snapshot_of_the_closest_online_copy_full_then_one_dash_i() {
        let p = points();
        // n1 is on the destination's node: production is the closest.
        let got = run(&req("n1"), &p, &facts("s1", true)).unwrap();
        assert_eq!(
            (got.from_node.as_str(), got.snapshot.name.as_str()),
            ("n1", "c")
        );
        assert_eq!(
            crate::jobs::describe(&got.steps),
            "full @a, -I @a @c",
            "a full stream of the oldest, then one -I to the chosen"
        );
        assert_eq!(
            got.steps[1].expect,
            SnapshotRef {
                name: "c".into(),
                guid: 3
            }
        );
        assert_eq!(got.steps[1].base.as_ref().map(|b| b.guid), Some(1));
        // Destination n2: its own replica is closer than production.
        let got = run(&req("n2"), &p, &facts("s1", true)).unwrap();
        assert_eq!(
            (got.from_node.as_str(), got.from_dataset.as_str()),
            ("n2", "backup/n1/tank/db")
        );
        assert_eq!(got.snapshot.name, "b");
        // A node elsewhere on site s1: production before the replica.
        let got = run(&req("n4"), &p, &facts("s1", true)).unwrap();
        assert_eq!(got.from_node, "n1");
        // On site s2, n3 would be closest but is offline: the next online one.
        let got = run(&req("n4"), &p, &facts("s2", true)).unwrap();
        assert_eq!(got.from_node, "n1");
    }

    #[test]
    fn at_picks_the_newest_snapshot_at_or_before_it() {
        let p = points();
        let to = facts("s1", true);
        for (at, want) in [(100, "a"), (199, "a"), (200, "b"), (299, "b"), (5_000, "c")] {
            let r = Request {
                at: Some(at),
                ..req("n1")
            };
            let got = run(&r, &p, &to).unwrap();
            assert_eq!(got.snapshot.name, want, "at {at}");
        }
        let r = Request {
            at: Some(100),
            ..req("n1")
        };
        assert_eq!(
            run(&r, &p, &to).unwrap().steps.len(),
            1,
            "the oldest needs no -I"
        );
    }

    #[test]
    fn a_fresh_restore_is_planned_again_when_the_copy_lost_its_oldest() {
        let copy = vec![snap("a", 1, 100), snap("b", 2, 200), snap("c", 3, 300)];
        let steps = fresh_steps(&copy.iter().map(PointSnapshot::from).collect::<Vec<_>>(), 2);
        assert_eq!(replan(&steps, 0, &copy), Replan::Keep);
        // The copy's retention destroyed @a after the plan.
        let now = &copy[1..];
        let Replan::Steps(again) = replan(&steps, 0, now) else {
            panic!("expected new steps")
        };
        assert_eq!(crate::jobs::describe(&again), "full @b, -I @b @c");
        assert_eq!(
            again.last().unwrap().expect.guid,
            3,
            "the same chosen snapshot"
        );
        assert_eq!(replan(&again, 0, now), Replan::Keep);
        // Past the first step the base has landed: kept, the attempt says why.
        assert_eq!(replan(&steps, 1, now), Replan::Keep);
        // An inventory not listed (the node unknown now): kept.
        assert_eq!(replan(&steps, 0, &[]), Replan::Keep);
        // The chosen snapshot itself is gone.
        let Replan::Gone(why) = replan(&steps, 0, &copy[..1]) else {
            panic!("expected gone")
        };
        assert!(why.contains("@c (GUID 3)"), "{why}");
    }

    #[test]
    fn a_restore_over_an_existing_dataset_is_never_planned_again() {
        let step = PlannedStep {
            stream: StreamSpec::Incremental {
                from: "a".into(),
                to: "c".into(),
                intermediates: true,
                from_bookmark: false,
            },
            expect: SnapshotRef {
                name: "c".into(),
                guid: 3,
            },
            force: true,
            discards: vec![],
            base: Some(SnapshotRef {
                name: "a".into(),
                guid: 1,
            }),
        };
        assert_eq!(replan(&[step], 0, &[snap("c", 3, 300)]), Replan::Keep);
    }

    #[test]
    fn a_time_before_the_oldest_snapshot_names_the_oldest() {
        let r = Request {
            at: Some(99),
            ..req("n1")
        };
        let e = run(&r, &points(), &facts("s1", true)).unwrap_err();
        assert!(matches!(&e, PlanError::TooEarly { oldest, .. } if oldest.name == "a"));
        assert!(e
            .to_string()
            .contains("its oldest is @a from 1970-01-01T00:01:40Z"));
    }

    #[test]
    fn a_named_snapshot_is_found_on_a_copy_that_has_it() {
        let p = points();
        let r = Request {
            snapshot: Some("c".into()),
            ..req("n2")
        };
        // n2's replica lacks @c: the next copy that has it.
        let got = run(&r, &p, &facts("s1", true)).unwrap();
        assert_eq!((got.from_node.as_str(), got.snapshot.guid), ("n1", 3));
        let r = Request {
            snapshot: Some("zz".into()),
            from: Some("n2".into()),
            ..req("n2")
        };
        let e = run(&r, &p, &facts("s1", true)).unwrap_err();
        assert!(e.to_string().contains("its snapshots are @a, @b"), "{e}");
        let r = Request {
            snapshot: Some("a".into()),
            at: Some(5),
            ..req("n2")
        };
        assert_eq!(
            run(&r, &p, &facts("s1", true)),
            Err(PlanError::AtAndSnapshot)
        );
    }

    #[test]
    fn an_offline_copy_names_the_reachable_ones() {
        let r = Request {
            from: Some("n3".into()),
            ..req("n1")
        };
        let e = run(&r, &points(), &facts("s1", true)).unwrap_err();
        assert_eq!(
            e,
            PlanError::CopyOffline {
                from: "n3".into(),
                reachable: "n1:tank/db, n2:backup/n1/tank/db".into()
            }
        );
        let mut p = points();
        p.copies.iter_mut().for_each(|c| c.online = false);
        let e = run(&req("n1"), &p, &facts("s1", true)).unwrap_err();
        assert!(matches!(e, PlanError::NoCopyOnline { .. }));
    }

    #[test]
    fn from_must_be_a_known_node_holding_a_copy() {
        let p = points();
        let r = Request {
            from: Some("n4".into()),
            ..req("n1")
        };
        let e = run(&r, &p, &facts("s1", true)).unwrap_err();
        assert!(matches!(e, PlanError::NotACopy { .. }));
        let r = Request {
            from: Some("n9".into()),
            ..req("n1")
        };
        let e = run(&r, &p, &facts("s1", true)).unwrap_err();
        assert!(matches!(e, PlanError::UnknownNode { input: "from", .. }));
    }

    #[test]
    fn an_unknown_or_offline_destination_is_refused() {
        let p = points();
        let dest = Destination {
            facts: None,
            existing: None,
        };
        let e = plan(&req("n9"), &p, dest, &known(), NOW).unwrap_err();
        assert!(matches!(e, PlanError::UnknownNode { input: "to", .. }));
        let e = run(&req("n3"), &p, &facts("s2", false)).unwrap_err();
        assert!(matches!(e, PlanError::DestinationOffline { .. }));
    }

    #[test]
    fn an_existing_destination_needs_replace_and_a_common_base() {
        let p = points();
        let to = facts("s1", true);
        let theirs = ds(
            "tank/restored",
            None,
            vec![snap("a", 1, 100), snap("x", 50, 250)],
        );
        let dest = Destination {
            facts: Some(&to),
            existing: Some(&theirs),
        };
        let e = plan(&req("n1"), &p, dest, &known(), NOW).unwrap_err();
        assert!(matches!(e, PlanError::DestinationExists { .. }));
        // With replace: -F back to @a (shared by GUID), @x listed to go.
        let r = Request {
            replace: true,
            ..req("n1")
        };
        let got = plan(&r, &p, dest, &known(), NOW).unwrap();
        assert_eq!(got.steps.len(), 1);
        let step = &got.steps[0];
        assert!(step.force);
        assert_eq!(step.discards, vec!["x".to_string()]);
        assert_eq!(step.base.as_ref().map(|b| b.guid), Some(1));
        assert_eq!(crate::jobs::describe(&got.steps), "-I @a @c with -F");
        // Nothing in common: refused, not destroyed.
        let unrelated = ds("tank/restored", None, vec![snap("x", 50, 250)]);
        let dest = Destination {
            existing: Some(&unrelated),
            ..dest
        };
        let e = plan(&r, &p, dest, &known(), NOW).unwrap_err();
        assert!(e.to_string().contains("shares no snapshot"), "{e}");
        // Behind the copy: -F from its newest, nothing to discard.
        let behind = ds(
            "tank/restored",
            None,
            vec![snap("a", 1, 100), snap("b", 2, 200)],
        );
        let dest = Destination {
            existing: Some(&behind),
            ..dest
        };
        let got = plan(&r, &p, dest, &known(), NOW).unwrap();
        assert_eq!(crate::jobs::describe(&got.steps), "-I @b @c with -F");
        assert!(got.steps[0].discards.is_empty());
        // It already holds the chosen snapshot: a rollback, not a receive.
        let ahead = ds(
            "tank/restored",
            None,
            vec![snap("a", 1, 100), snap("c", 3, 300)],
        );
        let dest = Destination {
            existing: Some(&ahead),
            ..dest
        };
        let e = plan(&r, &p, dest, &known(), NOW).unwrap_err();
        assert!(e.to_string().contains("already holds @c"), "{e}");
    }

    #[test]
    fn the_copy_itself_and_a_future_time_are_refused() {
        let p = points();
        let r = Request {
            to_dataset: "tank/db".into(),
            replace: true,
            ..req("n1")
        };
        let existing = ds("tank/db", None, vec![]);
        let to = facts("s1", true);
        let dest = Destination {
            facts: Some(&to),
            existing: Some(&existing),
        };
        let e = plan(&r, &p, dest, &known(), NOW).unwrap_err();
        assert!(matches!(e, PlanError::DestinationIsCopy { .. }));
        let r = Request {
            at: Some(NOW + 1),
            ..req("n1")
        };
        let e = run(&r, &p, &to).unwrap_err();
        assert!(matches!(e, PlanError::BadInput { input: "at", .. }));
    }

    #[test]
    fn inputs_are_parsed_with_errors_naming_them() {
        let (n, d) = parse_node_dataset("to", "n2:tank/x").unwrap();
        assert_eq!((n.as_str(), d.as_str()), ("n2", "tank/x"));
        let e = parse_node_dataset("source", "tank/x").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("source \"tank/x\": expected NODE:DATASET"));
        assert!(parse_node_dataset("to", "n2:tank/../x").is_err());
        assert_eq!(parse_at("1970-01-01T00:01:40Z").unwrap(), 100);
        let e = parse_at("yesterday").unwrap_err();
        assert!(e.to_string().contains("RFC 3339"));
    }

    #[test]
    fn a_bucket_is_used_only_when_named_and_lands_a_new_dataset_in_one_step() {
        use super::super::points::tests::{upload, vault};
        let (nodes, inv, links) = fleet();
        let b = vault(vec![upload(None, 2, 250), upload(Some(2), 3, 350)]);
        let p = restore_points("n1", "tank/db", &nodes, &inv, &links, &[b]).unwrap();
        let to = facts("s9", true);
        // Not picked by itself, even with every node copy offline.
        let mut offline = p.clone();
        offline
            .copies
            .iter_mut()
            .filter(|c| c.copy != CopyKind::Bucket)
            .for_each(|c| c.online = false);
        assert!(matches!(
            run(&req("n2"), &offline, &to),
            Err(PlanError::NoCopyOnline { .. })
        ));
        let mut r = req("n2");
        r.from = Some("bucket:vault".into());
        r.snapshot = Some("b".into());
        let chosen = run(&r, &offline, &to).unwrap();
        assert_eq!(
            (chosen.from_node.as_str(), chosen.snapshot.guid, chosen.raw),
            ("bucket:vault", 2, true)
        );
        assert_eq!(chosen.steps.len(), 1);
        assert_eq!(chosen.steps[0].expect.guid, 2);
        // Another bucket is not a copy; an existing destination is refused.
        r.from = Some("bucket:other".into());
        assert!(matches!(run(&r, &p, &to), Err(PlanError::NotACopy { .. })));
        r.from = Some("bucket:vault".into());
        r.replace = true;
        let existing = ds("tank/restored", None, vec![]);
        let dest = Destination {
            facts: Some(&to),
            existing: Some(&existing),
        };
        assert!(matches!(
            plan(&r, &p, dest, &known(), NOW),
            Err(PlanError::BucketNeedsNewDataset { .. })
        ));
    }
}
