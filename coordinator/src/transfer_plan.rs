//! Planning one transfer from the snapshots on both sides. Common snapshots are
//! matched by GUID, never by name; a backlog goes as one `-I` stream when the
//! task keeps intermediates.

use serde::Serialize;
use zdr_common::wire::SnapshotInfo;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, guid: u64, txg: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: txg,
            creation: txg as i64,
            used: 0,
            userrefs: 0,
        }
    }

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
}
