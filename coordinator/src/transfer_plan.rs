//! Planning one transfer from the snapshots on both sides. Common snapshots are
//! matched by GUID, never by name; a backlog goes as one `-I` stream when the
//! task keeps intermediates.
//!
//! The source's bookmarks count as common too: a bookmark keeps the GUID of a
//! snapshot the source has since pruned, and `zfs send -i #bookmark` continues
//! from it. So a target that kept a snapshot the source no longer has (an
//! interrupted `-I` stream landed it, then the source pruned it) continues
//! incrementally instead of reading as diverged.

use serde::Serialize;
use zdr_common::wire::{BookmarkInfo, SnapshotInfo};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Step {
    /// `zfs send <snap>` into an empty target.
    Full { snapshot: String },
    /// `zfs send -i|-I <from> <to>`.
    Incremental {
        from: String,
        to: String,
        intermediates: bool,
    },
    /// `zfs send -i #<bookmark> <to>`: from a bookmark, never with intermediates.
    FromBookmark { bookmark: String, to: String },
    /// `zfs receive -F` rolls the target back to the common snapshot first.
    Rollback { to: String, discards: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferPlan {
    pub steps: Vec<Step>,
    /// The newest common snapshot before the transfer (held on both sides).
    pub base: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("source has no snapshots to send")]
    NothingToSend,
    #[error("target has snapshots but none in common with the source (matched by GUID): {0:?}; refusing to overwrite it, move it aside or destroy it")]
    NoCommon(Vec<String>),
    #[error("target diverged: it has {0:?} after the newest common snapshot {1}; allow_rollback in the task would discard them")]
    Diverged(Vec<String>, String),
}

/// `source` and `target` in createtxg order (as listed).
pub fn plan(
    source: &[SnapshotInfo],
    target: &[SnapshotInfo],
    keep_intermediates: bool,
    allow_rollback: bool,
) -> Result<Option<TransferPlan>, PlanError> {
    plan_with_bookmarks(source, &[], target, keep_intermediates, allow_rollback)
}

/// [`plan`], where the source's `bookmarks` may be the common base too. A
/// bookmark wins only when the target's copy of it is newer than that of
/// every common snapshot.
pub fn plan_with_bookmarks(
    source: &[SnapshotInfo],
    bookmarks: &[BookmarkInfo],
    target: &[SnapshotInfo],
    keep_intermediates: bool,
    allow_rollback: bool,
) -> Result<Option<TransferPlan>, PlanError> {
    let newest = source.last().ok_or(PlanError::NothingToSend)?;
    if target.is_empty() {
        let steps = match (keep_intermediates, source.first()) {
            (true, Some(oldest)) if oldest.guid != newest.guid => vec![
                Step::Full {
                    snapshot: oldest.name.clone(),
                },
                Step::Incremental {
                    from: oldest.name.clone(),
                    to: newest.name.clone(),
                    intermediates: true,
                },
            ],
            _ => vec![Step::Full {
                snapshot: newest.name.clone(),
            }],
        };
        return Ok(Some(TransferPlan { steps, base: None }));
    }
    // Newest source snapshot whose GUID the target also has.
    let common = source.iter().rev().find_map(|s| {
        target
            .iter()
            .position(|t| t.guid == s.guid)
            .map(|ti| (s, ti))
    });
    let on_target = |guid: u64| target.iter().position(|t| t.guid == guid);
    let bookmark = bookmarks
        .iter()
        .rev()
        .find_map(|b| on_target(b.guid).map(|ti| (b, ti)))
        .filter(|(_, bi)| common.is_none_or(|(_, si)| bi > &si));
    if let Some((bm, bm_at)) = bookmark {
        return from_bookmark(
            source,
            bm,
            target,
            bm_at,
            keep_intermediates,
            allow_rollback,
        );
    }
    let Some((base, base_at)) = common else {
        return Err(PlanError::NoCommon(
            target.iter().map(|t| t.name.clone()).collect(),
        ));
    };
    let after: Vec<String> = target[base_at + 1..]
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let mut steps = Vec::new();
    if !after.is_empty() {
        if !allow_rollback {
            return Err(PlanError::Diverged(after, base.name.clone()));
        }
        steps.push(Step::Rollback {
            to: base.name.clone(),
            discards: after,
        });
    }
    if base.guid != newest.guid {
        steps.push(Step::Incremental {
            from: base.name.clone(),
            to: newest.name.clone(),
            intermediates: keep_intermediates,
        });
    }
    if steps.is_empty() {
        return Ok(None);
    }
    Ok(Some(TransferPlan {
        steps,
        base: Some(base.name.clone()),
    }))
}

/// The plan when the newest common base is the source's bookmark `bm`, found
/// at `bm_at` in `target`.
fn from_bookmark(
    source: &[SnapshotInfo],
    bm: &BookmarkInfo,
    target: &[SnapshotInfo],
    bm_at: usize,
    keep_intermediates: bool,
    allow_rollback: bool,
) -> Result<Option<TransferPlan>, PlanError> {
    let after: Vec<String> = target[bm_at + 1..].iter().map(|t| t.name.clone()).collect();
    let mut steps = Vec::new();
    if !after.is_empty() {
        if !allow_rollback {
            return Err(PlanError::Diverged(after, format!("#{}", bm.name)));
        }
        steps.push(Step::Rollback {
            to: format!("#{}", bm.name),
            discards: after,
        });
    }
    let later: Vec<&SnapshotInfo> = source
        .iter()
        .filter(|s| s.createtxg > bm.createtxg)
        .collect();
    let (Some(first), Some(newest)) = (later.first(), later.last()) else {
        return Ok((!steps.is_empty()).then(|| TransferPlan {
            steps,
            base: Some(format!("#{}", bm.name)),
        }));
    };
    // `-i #bookmark` carries one snapshot; `-I` takes over from there.
    let to = if keep_intermediates { first } else { newest };
    steps.push(Step::FromBookmark {
        bookmark: bm.name.clone(),
        to: to.name.clone(),
    });
    if to.guid != newest.guid {
        steps.push(Step::Incremental {
            from: to.name.clone(),
            to: newest.name.clone(),
            intermediates: true,
        });
    }
    Ok(Some(TransferPlan {
        steps,
        base: Some(format!("#{}", bm.name)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::snap_at as s;

    fn src() -> Vec<SnapshotInfo> {
        (1..=200)
            .map(|i| s(&format!("zdr_{i:03}"), 1000 + i, i))
            .collect()
    }

    #[test]
    fn empty_target_gets_a_full_then_one_i_stream() {
        let p = plan(&src(), &[], true, false).unwrap().unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Full {
                    snapshot: "zdr_001".into()
                },
                Step::Incremental {
                    from: "zdr_001".into(),
                    to: "zdr_200".into(),
                    intermediates: true
                },
            ]
        );
        let p = plan(&src(), &[], false, false).unwrap().unwrap();
        assert_eq!(
            p.steps,
            vec![Step::Full {
                snapshot: "zdr_200".into()
            }]
        );
    }

    #[test]
    fn a_backlog_is_one_step_from_the_newest_common_guid() {
        // The target's copy of zdr_010 has the source's GUID; the names of others are decoys.
        let target = vec![s("zdr_005", 1005, 1), s("zdr_010", 1010, 2)];
        let p = plan(&src(), &target, true, false).unwrap().unwrap();
        assert_eq!(p.base.as_deref(), Some("zdr_010"));
        assert_eq!(
            p.steps,
            vec![Step::Incremental {
                from: "zdr_010".into(),
                to: "zdr_200".into(),
                intermediates: true
            }]
        );
    }

    #[test]
    fn names_alone_never_make_a_common_snapshot() {
        let target = vec![s("zdr_200", 42, 1)];
        assert_eq!(
            plan(&src(), &target, true, false),
            Err(PlanError::NoCommon(vec!["zdr_200".into()]))
        );
    }

    #[test]
    fn a_diverged_target_is_refused_unless_rollback_is_allowed() {
        let target = vec![s("zdr_010", 1010, 1), s("manual", 7, 2)];
        let err = plan(&src(), &target, true, false).unwrap_err();
        assert_eq!(
            err,
            PlanError::Diverged(vec!["manual".into()], "zdr_010".into())
        );
        assert!(err.to_string().contains("allow_rollback"));
        let p = plan(&src(), &target, true, true).unwrap().unwrap();
        assert_eq!(
            p.steps[0],
            Step::Rollback {
                to: "zdr_010".into(),
                discards: vec!["manual".into()]
            }
        );
    }

    #[test]
    fn up_to_date_is_nothing_to_do() {
        let target = vec![s("zdr_200", 1200, 9)];
        assert_eq!(plan(&src(), &target, true, false), Ok(None));
        assert_eq!(
            plan(&[], &target, true, false),
            Err(PlanError::NothingToSend)
        );
    }

    fn b(name: &str, guid: u64, txg: u64) -> BookmarkInfo {
        BookmarkInfo {
            name: name.into(),
            guid,
            createtxg: txg,
            creation: txg as i64,
        }
    }

    /// The source pruned zdr_150 after an interrupted `-I` landed it on the
    /// target, but bookmarked it first: the pairing continues from the bookmark.
    #[test]
    fn a_target_ahead_of_the_pruned_source_continues_from_a_bookmark() {
        let source: Vec<SnapshotInfo> = src().into_iter().filter(|s| s.guid != 1150).collect();
        let target = vec![s("zdr_100", 1100, 1), s("zdr_150", 1150, 2)];
        // Without the bookmark this is the blocked pairing of issue 12.
        assert!(matches!(
            plan(&source, &target, true, false),
            Err(PlanError::Diverged(..))
        ));
        let bms = vec![b("zdr_100", 1100, 100), b("zdr_150", 1150, 150)];
        let p = plan_with_bookmarks(&source, &bms, &target, true, false)
            .unwrap()
            .unwrap();
        assert_eq!(p.base.as_deref(), Some("#zdr_150"));
        assert_eq!(
            p.steps,
            vec![
                Step::FromBookmark {
                    bookmark: "zdr_150".into(),
                    to: "zdr_151".into()
                },
                Step::Incremental {
                    from: "zdr_151".into(),
                    to: "zdr_200".into(),
                    intermediates: true
                },
            ]
        );
        let p = plan_with_bookmarks(&source, &bms, &target, false, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.steps,
            vec![Step::FromBookmark {
                bookmark: "zdr_150".into(),
                to: "zdr_200".into()
            }]
        );
    }

    #[test]
    fn a_snapshot_in_common_beats_an_older_bookmark() {
        let target = vec![s("zdr_100", 1100, 1), s("zdr_120", 1120, 2)];
        let bms = vec![b("zdr_100", 1100, 100)];
        let p = plan_with_bookmarks(&src(), &bms, &target, true, false)
            .unwrap()
            .unwrap();
        assert_eq!(p.base.as_deref(), Some("zdr_120"));
    }

    #[test]
    fn a_bookmark_base_with_later_target_snapshots_is_diverged() {
        let source: Vec<SnapshotInfo> = src().into_iter().filter(|s| s.guid != 1150).collect();
        let target = vec![s("zdr_150", 1150, 1), s("manual", 7, 2)];
        let bms = vec![b("zdr_150", 1150, 150)];
        assert_eq!(
            plan_with_bookmarks(&source, &bms, &target, true, false),
            Err(PlanError::Diverged(
                vec!["manual".into()],
                "#zdr_150".into()
            ))
        );
        let p = plan_with_bookmarks(&source, &bms, &target, true, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            p.steps[0],
            Step::Rollback {
                to: "#zdr_150".into(),
                discards: vec!["manual".into()]
            }
        );
    }
}
