//! The agent's part of a restore drill: hashing a snapshot's content, and
//! destroying drill scratch (`<pool>/zdr-drill/<name>`, nothing else), on
//! request and, at start, whatever a drill interrupted by a crash left.
//! Blocking: callers run these on `spawn_blocking`.

use tracing::{info, warn};
use zdr_common::wire::{is_drill_scratch, ContentHash};
use zdr_common::DatasetName;

use crate::audit::Record;
use crate::clock::now;
use crate::lifecycle::Lifecycle;
use crate::zfs::ZfsError;

/// `dataset@snapshot`'s content hash; the error names the snapshot.
pub fn hash_snapshot(lc: &Lifecycle, dataset: &str, snapshot: &str) -> Result<ContentHash, String> {
    let ds = DatasetName::parse(dataset).map_err(|e| format!("dataset {dataset:?}: {e}"))?;
    lc.backend
        .content_hash(&ds, snapshot)
        .map_err(|e| format!("content hash of {dataset}@{snapshot}: {e}"))
}

/// Destroys one drill scratch dataset, audited first; its holds (the
/// restore's) go with it. A scratch that is gone already is done.
pub fn destroy_scratch(
    lc: &Lifecycle,
    dataset: &str,
    actor: &str,
    why: &str,
) -> Result<String, String> {
    if !is_drill_scratch(dataset) {
        return Err(format!(
            "dataset {dataset:?} is not a drill scratch (<pool>/{}/<name>); nothing destroyed",
            zdr_common::wire::DRILL_ROOT
        ));
    }
    let ds = DatasetName::parse(dataset).map_err(|e| format!("dataset {dataset:?}: {e}"))?;
    let audit = |outcome: &str| {
        lc.audit.write(&Record {
            at: now(),
            actor,
            action: "destroy -r",
            target: dataset,
            why,
            outcome,
            policy_revision: lc.policy().map(|p| p.bundle.revision),
        })
    };
    let snaps = match lc.backend.list_snapshots(&ds) {
        Ok(s) => s,
        Err(ZfsError::NotFound { .. }) => return Ok(format!("{dataset} is gone already")),
        Err(e) => return Err(format!("listing {dataset}: {e}")),
    };
    if let Err(e) = audit("intent") {
        return Err(format!("audit log: {e}; nothing destroyed"));
    }
    for s in &snaps {
        for tag in lc.backend.holds(&ds, &s.name).unwrap_or_default() {
            if let Err(e) = lc.backend.release(&ds, &s.name, &tag) {
                warn!(dataset, snapshot = %s.name, %tag, error = %e, "releasing a scratch hold failed");
            }
        }
    }
    let result = lc.backend.destroy_dataset(&ds);
    let _ = audit(&match &result {
        Ok(()) => "done".to_string(),
        Err(e) => format!("failed: {e}"),
    });
    if let Err(e) = lc.rescan(now()) {
        warn!(error = %e, "relisting after destroying a drill scratch failed");
    }
    match result {
        Ok(()) | Err(ZfsError::NotFound { .. }) => Ok(format!("destroyed {dataset}")),
        Err(e) => Err(format!("zfs destroy -r {dataset}: {e}")),
    }
}

/// At start: every drill scratch still there was left by a drill that
/// did not end (a crash, a kill -9); it is destroyed, audited. Returns
/// what was destroyed.
pub fn clean_leftovers(lc: &Lifecycle) -> Vec<String> {
    // Which class property is read does not matter here.
    let datasets = match lc.backend.list_datasets("zdr:class") {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "listing datasets for leftover drill scratch failed");
            return Vec::new();
        }
    };
    let actor = format!("agent:{}/drill-cleanup", lc.node);
    let mut destroyed = Vec::new();
    for d in datasets
        .iter()
        .filter(|d| lc.manages(d.name.pool()) && is_drill_scratch(d.name.as_str()))
    {
        let why = "drill scratch left over from a drill that did not end";
        match destroy_scratch(lc, d.name.as_str(), &actor, why) {
            Ok(m) => {
                info!("{m}: {why}");
                destroyed.push(d.name.to_string());
            }
            Err(e) => warn!(error = %e, "leftover drill scratch not destroyed"),
        }
    }
    destroyed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::AuditLog;
    use crate::zfs::sim::SimBackend;
    use crate::zfs::Backend;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    fn lifecycle(dir: &std::path::Path) -> (Arc<SimBackend>, Lifecycle) {
        let sim = Arc::new(SimBackend::new());
        sim.add_pool("tank", 1 << 30).unwrap();
        for d in ["tank/data", "tank/zdr-drill", "tank/zdr-drill/d1"] {
            sim.create_dataset(&ds(d)).unwrap();
        }
        sim.snapshot(&[ds("tank/zdr-drill/d1")], "s1", false)
            .unwrap();
        sim.hold(&ds("tank/zdr-drill/d1"), "s1", "zdr-restore-into-x")
            .unwrap();
        let audit = AuditLog::open(&dir.join("audit.jsonl")).unwrap();
        let lc = Lifecycle::new("n1".into(), sim.clone(), audit);
        (sim, lc)
    }

    fn audited(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn destroys_only_scratch_held_or_not_and_audits_first() {
        let dir = tempfile::tempdir().unwrap();
        let (sim, lc) = lifecycle(dir.path());
        for not in ["tank/data", "tank/zdr-drill", "tank/data/zdr-drill/x"] {
            let e = destroy_scratch(&lc, not, "t", "test").unwrap_err();
            assert!(e.contains("not a drill scratch"), "{e}");
        }
        assert!(sim.list_snapshots(&ds("tank/data")).is_ok());
        assert!(audited(dir.path()).is_empty(), "nothing refused is audited");
        destroy_scratch(&lc, "tank/zdr-drill/d1", "t", "test").unwrap();
        assert!(matches!(
            sim.list_snapshots(&ds("tank/zdr-drill/d1")),
            Err(ZfsError::NotFound { .. })
        ));
        let lines = audited(dir.path());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("\"intent\"") && lines[0].contains("tank/zdr-drill/d1"));
        assert!(lines[1].contains("\"done\""));
        let again = destroy_scratch(&lc, "tank/zdr-drill/d1", "t", "test").unwrap();
        assert!(again.contains("gone already"), "{again}");
    }

    #[test]
    fn leftovers_are_found_and_destroyed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (sim, lc) = lifecycle(dir.path());
        assert_eq!(clean_leftovers(&lc), ["tank/zdr-drill/d1"]);
        let left: Vec<String> = sim
            .list_datasets("zdr:class")
            .unwrap()
            .into_iter()
            .map(|d| d.name.to_string())
            .collect();
        assert_eq!(left, ["tank", "tank/data", "tank/zdr-drill"]);
        assert!(clean_leftovers(&lc).is_empty());
    }
}
