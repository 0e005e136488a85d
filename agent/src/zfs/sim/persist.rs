//! The simulator's state file: JSON, rewritten atomically after every change.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::model::{parent, State};
use crate::zfs::ZfsError;

/// The simulator's state file could not be read or written: the simulator's
/// own failure, which reaches callers of [`Backend`](crate::zfs::Backend) as
/// [`ZfsError::Backend`].
#[derive(Debug, thiserror::Error)]
#[error("simulated pool state {path}: {reason}")]
pub struct StateError {
    pub path: String,
    pub reason: String,
}

impl From<StateError> for ZfsError {
    fn from(e: StateError) -> Self {
        ZfsError::Backend {
            backend: "sim",
            source: Box::new(e),
        }
    }
}

fn sim_state(path: &Path, reason: impl ToString) -> StateError {
    StateError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The state saved at `path`, or an empty one when there is no file yet.
pub(super) fn load(path: &Path) -> Result<State, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut state: State =
                serde_json::from_slice(&bytes).map_err(|e| sim_state(path, e))?;
            state.rebuild().map_err(|e| sim_state(path, e))?;
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(sim_state(path, e)),
    }
}

/// Write to a temporary file and rename, so a crash leaves the old or the new state.
pub(super) fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| sim_state(path, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| sim_state(path, e))
}

impl State {
    /// Recomputes the derived fields of a loaded state and checks that every
    /// dataset has its pool and parent, which the rest of the code relies on.
    fn rebuild(&mut self) -> Result<(), String> {
        self.guids.clear();
        for pool in self.pools.values_mut() {
            pool.allocated = 0;
        }
        for (name, ds) in &self.datasets {
            if let Some(p) = parent(name).filter(|p| !self.datasets.contains_key(p)) {
                return Err(format!("dataset {name} has no parent {p}"));
            }
            let pool = self
                .pools
                .get_mut(name.pool())
                .ok_or_else(|| format!("dataset {name} has no pool {}", name.pool()))?;
            pool.allocated += ds.own_bytes + ds.snapshots.iter().map(|s| s.used).sum::<u64>();
            self.guids.insert(ds.guid);
            self.guids.extend(ds.snapshots.iter().map(|s| s.guid));
            self.guids.extend(ds.bookmarks.values().map(|b| b.guid));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ds, snaps};
    use super::super::SimBackend;
    use super::*;
    use crate::zfs::Backend;

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        let sim = SimBackend::open(&path).unwrap();
        sim.add_pool("tank", 1 << 20).unwrap();
        sim.create_dataset(&ds("tank/my data")).unwrap();
        sim.set_property(&ds("tank/my data"), "zdr:class", "gold")
            .unwrap();
        sim.snapshot(&[ds("tank/my data")], "s", false).unwrap();
        sim.hold(&ds("tank/my data"), "s", "zdr").unwrap();
        sim.bookmark(&ds("tank/my data"), "s", "b").unwrap();
        let before = (
            sim.pools().unwrap(),
            sim.list_datasets("zdr:class").unwrap(),
            snaps(&sim, "tank/my data"),
        );
        drop(sim);

        let sim = SimBackend::open(&path).unwrap();
        let after = (
            sim.pools().unwrap(),
            sim.list_datasets("zdr:class").unwrap(),
            snaps(&sim, "tank/my data"),
        );
        assert_eq!(before, after);
        assert!(matches!(
            sim.bookmark(&ds("tank/my data"), "s", "b"),
            Err(ZfsError::Exists { .. })
        ));
        sim.snapshot(&[ds("tank/my data")], "t", false).unwrap();
        let s = snaps(&sim, "tank/my data");
        assert!(s[1].createtxg > s[0].createtxg);
        assert_ne!(s[1].guid, s[0].guid);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["pool.json"]);
    }

    #[test]
    fn failed_save_leaves_the_state_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("pool.json");
        let sim = SimBackend::open(&path).unwrap();
        assert!(matches!(
            sim.add_pool("tank", 1 << 20),
            Err(ZfsError::Backend { backend: "sim", source }) if source.is::<StateError>()
        ));
        assert!(sim.pools().unwrap().is_empty());
    }

    #[test]
    fn corrupt_state_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        std::fs::write(&path, b"{\"pools\": [").unwrap();
        match SimBackend::open(&path) {
            Err(StateError { path: p, .. }) => assert_eq!(p, path.display().to_string()),
            Ok(_) => panic!("corrupt state accepted"),
        }
        std::fs::write(&path, br#"{"pools": {}, "datasets": {"tank/a;b": {}}}"#).unwrap();
        assert!(matches!(SimBackend::open(&path), Err(StateError { .. })));
        let orphan = r#"{"pools": {}, "datasets": {"tank": {"guid": 1, "own_bytes": 0,
            "properties": {}, "snapshots": [], "bookmarks": {}}}}"#;
        std::fs::write(&path, orphan).unwrap();
        match SimBackend::open(&path) {
            Err(StateError { reason, .. }) => {
                assert!(reason.contains("no pool tank"), "{reason}")
            }
            Ok(_) => panic!("orphan dataset accepted"),
        }
    }
}
