//! What a `zfs receive -F` destroys, from the target's own listing: every
//! snapshot after the stream's base (ZFS destroys them when the receive
//! ends, `dmu_recv_end_check`). The target compares that with the
//! coordinator's plan, so a forged or stale plan cannot make it destroy
//! snapshots nobody audited.

use std::collections::BTreeSet;

use zdr_common::wire::{SnapshotInfo, SnapshotRef};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackRefused {
    #[error(
        "{dataset}: receive -F without a base: the command must name the common snapshot \
         the stream starts from, so this node can list what the rollback destroys; \
         nothing was received or destroyed"
    )]
    NoBase { dataset: String },
    #[error(
        "{dataset}: receive -F rolls back to @{} (GUID {}), but no snapshot of {dataset} \
         on this node has that GUID; nothing was received or destroyed; plan again from \
         this node's inventory",
        base.name, base.guid
    )]
    BaseMissing { dataset: String, base: SnapshotRef },
    #[error(
        "{dataset}: receive -F back to @{} would destroy {} on this node, but the plan \
         names {}; nothing was received or destroyed; plan again from this node's inventory",
        base.name, list(real), list(planned)
    )]
    Differs {
        dataset: String,
        base: SnapshotRef,
        planned: Vec<String>,
        real: Vec<String>,
    },
}

/// A `receive -F` this node agreed to: back to `base`, destroying `destroys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub base: SnapshotRef,
    pub destroys: Vec<String>,
}

impl std::fmt::Display for Rollback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "to @{} (GUID {}), destroying {} as listed on this node",
            self.base.name,
            self.base.guid,
            list(&self.destroys)
        )
    }
}

/// The rollback of `dataset` (its snapshots listed in createtxg order in
/// `target`) that a `receive -F` from `base` makes, if it destroys the
/// `planned` snapshots and no others.
pub fn check(
    dataset: &str,
    base: Option<&SnapshotRef>,
    planned: &[String],
    target: &[SnapshotInfo],
) -> Result<Rollback, RollbackRefused> {
    let base = base.ok_or_else(|| RollbackRefused::NoBase {
        dataset: dataset.to_string(),
    })?;
    // By GUID: a name on the target says nothing about where it came from.
    let at = target
        .iter()
        .position(|s| s.guid == base.guid)
        .ok_or_else(|| RollbackRefused::BaseMissing {
            dataset: dataset.to_string(),
            base: base.clone(),
        })?;
    let real: Vec<String> = target[at + 1..].iter().map(|s| s.name.clone()).collect();
    if real.iter().collect::<BTreeSet<_>>() != planned.iter().collect::<BTreeSet<_>>() {
        return Err(RollbackRefused::Differs {
            dataset: dataset.to_string(),
            base: base.clone(),
            planned: planned.to_vec(),
            real,
        });
    }
    Ok(Rollback {
        base: base.clone(),
        destroys: real,
    })
}

/// `[a, b]`, or `nothing`.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        format!("[{}]", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, guid: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: guid,
            creation: guid as i64,
            used: 0,
            userrefs: 0,
        }
    }

    fn target() -> Vec<SnapshotInfo> {
        vec![snap("a", 1), snap("b", 2), snap("c", 3), snap("d", 4)]
    }

    fn base(name: &str, guid: u64) -> SnapshotRef {
        SnapshotRef {
            name: name.into(),
            guid,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lists_everything_after_the_base_found_by_guid() {
        let got = check(
            "tank/a",
            Some(&base("b", 2)),
            &names(&["d", "c"]),
            &target(),
        );
        let got = got.unwrap();
        assert_eq!(got.destroys, names(&["c", "d"]));
        assert_eq!(
            got.to_string(),
            "to @b (GUID 2), destroying [c, d] as listed on this node"
        );
        // The base's name on the target does not matter, only its GUID.
        let got = check(
            "tank/a",
            Some(&base("renamed", 3)),
            &names(&["d"]),
            &target(),
        );
        assert_eq!(got.unwrap().destroys, names(&["d"]));
        let got = check("tank/a", Some(&base("d", 4)), &[], &target()).unwrap();
        assert_eq!(
            got.to_string(),
            "to @d (GUID 4), destroying nothing as listed on this node"
        );
    }

    #[test]
    fn a_forged_plan_is_refused_naming_both_lists() {
        let e = check("tank/a", Some(&base("a", 1)), &names(&["fake"]), &target()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tank/a: receive -F back to @a would destroy [b, c, d] on this node, but the plan \
             names [fake]; nothing was received or destroyed; plan again from this node's inventory"
        );
        // One real snapshot left out is as bad as a fake one.
        let e = check(
            "tank/a",
            Some(&base("a", 1)),
            &names(&["b", "c"]),
            &target(),
        );
        assert!(matches!(e, Err(RollbackRefused::Differs { .. })));
        let e = check("tank/a", Some(&base("d", 4)), &names(&["d"]), &target());
        assert!(matches!(e, Err(RollbackRefused::Differs { .. })));
    }

    #[test]
    fn no_base_or_an_unknown_base_is_refused() {
        let e = check("tank/a", None, &[], &target()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("tank/a: receive -F without a base"));
        // The right name with another GUID is not the base.
        let e = check(
            "tank/a",
            Some(&base("b", 99)),
            &names(&["c", "d"]),
            &target(),
        );
        assert_eq!(
            e.unwrap_err().to_string(),
            "tank/a: receive -F rolls back to @b (GUID 99), but no snapshot of tank/a on this \
             node has that GUID; nothing was received or destroyed; plan again from this node's \
             inventory"
        );
        let e = check("tank/a", Some(&base("b", 2)), &[], &[]);
        assert!(matches!(e, Err(RollbackRefused::BaseMissing { .. })));
    }
}
