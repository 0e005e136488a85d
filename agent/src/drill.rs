//! The agent's part of a restore drill: hashing a snapshot's content, and
//! destroying drill scratch (`<pool>/zdr-drill/<name>`, nothing else), on
//! request. Nothing is destroyed at start: a drill the agent was killed in
//! may go on after its restart, and only the coordinator knows (its sweep
//! destroys scratch that no drill uses, `drills::sweep` there).
//! Blocking: callers run these on `spawn_blocking`.

use tracing::warn;
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
            created: None,
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
}
