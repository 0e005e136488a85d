//! [`Backend`] over an in-memory pool with the ZFS semantics zdr relies on:
//! random GUIDs, a pool-wide createtxg that advances once per transaction
//! (an atomic multi-snapshot shares one), holds that block destroy,
//! all-or-nothing snapshot sets, bookmarks that outlive their snapshot,
//! inherited user properties and free-space accounting. With
//! [`SimBackend::open`] the state lives in a JSON file rewritten atomically
//! after every change, so a demo agent keeps its "pool" across restarts.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use zdr_common::wire::{PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use super::names::{bookmark_name, check_tag, check_user_property};
use super::{Backend, DatasetInfo, ZfsError};

/// Unix seconds, UTC.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What an empty filesystem takes, roughly as on real ZFS.
const DATASET_BYTES: u64 = 96 * 1024;
const DEFAULT_SNAPSHOT_BYTES: u64 = 16 * 1024;

pub struct SimBackend {
    state: Mutex<State>,
    path: Option<PathBuf>,
    clock: Clock,
    snapshot_bytes: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    pools: BTreeMap<String, Pool>,
    datasets: BTreeMap<DatasetName, Dataset>,
    /// Every GUID ever handed out; rebuilt on load.
    #[serde(skip)]
    guids: HashSet<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pool {
    size: u64,
    /// Last transaction group synced.
    txg: u64,
    /// Derived from the datasets; rebuilt on load.
    #[serde(skip)]
    allocated: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dataset {
    guid: u64,
    own_bytes: u64,
    /// Locally set user properties.
    properties: BTreeMap<String, String>,
    /// In createtxg order.
    snapshots: Vec<Snap>,
    bookmarks: BTreeMap<String, Bookmark>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Snap {
    name: String,
    guid: u64,
    createtxg: u64,
    creation: i64,
    used: u64,
    holds: BTreeSet<String>,
}

/// A bookmark carries its source snapshot's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bookmark {
    guid: u64,
    createtxg: u64,
    creation: i64,
}

impl Default for SimBackend {
    fn default() -> Self {
        SimBackend::new()
    }
}

impl SimBackend {
    /// An empty simulation that lives only in memory.
    pub fn new() -> Self {
        SimBackend {
            state: Mutex::new(State::default()),
            path: None,
            clock: Arc::new(|| chrono::Utc::now().timestamp()),
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
        }
    }

    /// Loads the state from `path` if it exists, and saves it there after every change.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ZfsError> {
        let path = path.into();
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut state: State =
                    serde_json::from_slice(&bytes).map_err(|e| sim_state(&path, e))?;
                state.rebuild().map_err(|e| sim_state(&path, e))?;
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(sim_state(&path, e)),
        };
        Ok(SimBackend {
            state: Mutex::new(state),
            path: Some(path),
            ..SimBackend::new()
        })
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Space each new snapshot takes from its pool.
    pub fn with_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.snapshot_bytes = bytes;
        self
    }

    /// Creates a pool of `size` bytes with its root filesystem.
    pub fn add_pool(&self, name: &str, size: u64) -> Result<(), ZfsError> {
        let root = DatasetName::parse(name)?;
        if name.contains('/') {
            return Err(ZfsError::Invalid {
                what: "pool name",
                value: name.into(),
                reason: "a pool name cannot contain '/'".into(),
            });
        }
        self.mutate(|s| {
            if s.pools.contains_key(name) {
                return Err(ZfsError::Exists {
                    what: format!("pool {name}"),
                });
            }
            if size < DATASET_BYTES {
                return Err(ZfsError::NoSpace { pool: name.into() });
            }
            s.pools.insert(
                name.into(),
                Pool {
                    size,
                    txg: 0,
                    allocated: 0,
                },
            );
            s.reserve(name, DATASET_BYTES)?;
            s.insert_dataset(root);
            Ok(())
        })
    }

    /// Creates a filesystem; its pool and parent must exist.
    pub fn create_dataset(&self, name: &DatasetName) -> Result<(), ZfsError> {
        self.mutate(|s| {
            if !s.pools.contains_key(name.pool()) {
                return Err(ZfsError::NotFound {
                    what: format!("pool {}", name.pool()),
                });
            }
            if s.datasets.contains_key(name) {
                return Err(ZfsError::Exists {
                    what: format!("dataset {name}"),
                });
            }
            match parent(name) {
                Some(p) if !s.datasets.contains_key(&p) => {
                    return Err(ZfsError::NotFound {
                        what: format!("parent dataset {p}"),
                    })
                }
                _ => {}
            }
            s.reserve(name.pool(), DATASET_BYTES)?;
            s.insert_dataset(name.clone());
            Ok(())
        })
    }

    /// Sets a user property locally; children inherit it unless they set their own.
    pub fn set_property(
        &self,
        dataset: &DatasetName,
        key: &str,
        value: &str,
    ) -> Result<(), ZfsError> {
        check_user_property(key)?;
        self.mutate(|s| {
            s.dataset_mut(dataset)?
                .properties
                .insert(key.into(), value.into());
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Mutations check before they change anything, so a panic elsewhere
        // cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state and persists the result; on any error the
    /// state stays as it was.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> Result<T, ZfsError>) -> Result<T, ZfsError> {
        let mut state = self.lock();
        let Some(path) = &self.path else {
            return f(&mut state);
        };
        let before = state.clone();
        let result = f(&mut state).and_then(|out| save(path, &state).map(|()| out));
        if result.is_err() {
            *state = before;
        }
        result
    }
}

fn sim_state(path: &Path, reason: impl ToString) -> ZfsError {
    ZfsError::SimState {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Write to a temporary file and rename, so a crash leaves the old or the new state.
fn save(path: &Path, state: &State) -> Result<(), ZfsError> {
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

fn parent(name: &DatasetName) -> Option<DatasetName> {
    let (p, _) = name.as_str().rsplit_once('/')?;
    DatasetName::parse(p).ok()
}

fn snapshot_missing(dataset: &DatasetName, name: &str) -> ZfsError {
    ZfsError::NotFound {
        what: format!("snapshot {dataset}@{name}"),
    }
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

    fn new_guid(&mut self) -> u64 {
        loop {
            // RandomState is seeded randomly per process and varies per call.
            let mut h = RandomState::new().build_hasher();
            h.write_usize(self.guids.len());
            let guid = h.finish();
            if guid != 0 && self.guids.insert(guid) {
                return guid;
            }
        }
    }

    fn pool_mut(&mut self, pool: &str) -> Result<&mut Pool, ZfsError> {
        self.pools.get_mut(pool).ok_or_else(|| ZfsError::NotFound {
            what: format!("pool {pool}"),
        })
    }

    fn next_txg(&mut self, pool: &str) -> u64 {
        let pool = self
            .pools
            .get_mut(pool)
            .expect("every dataset's pool exists");
        pool.txg += 1;
        pool.txg
    }

    fn reserve(&mut self, pool: &str, bytes: u64) -> Result<(), ZfsError> {
        let p = self.pool_mut(pool)?;
        if p.size.saturating_sub(p.allocated) < bytes {
            return Err(ZfsError::NoSpace { pool: pool.into() });
        }
        p.allocated += bytes;
        Ok(())
    }

    /// The caller has checked and reserved the space.
    fn insert_dataset(&mut self, name: DatasetName) {
        let guid = self.new_guid();
        self.next_txg(name.pool());
        self.datasets.insert(
            name,
            Dataset {
                guid,
                own_bytes: DATASET_BYTES,
                properties: BTreeMap::new(),
                snapshots: Vec::new(),
                bookmarks: BTreeMap::new(),
            },
        );
    }

    fn dataset(&self, name: &DatasetName) -> Result<&Dataset, ZfsError> {
        self.datasets.get(name).ok_or_else(|| ZfsError::NotFound {
            what: format!("dataset {name}"),
        })
    }

    fn dataset_mut(&mut self, name: &DatasetName) -> Result<&mut Dataset, ZfsError> {
        self.datasets
            .get_mut(name)
            .ok_or_else(|| ZfsError::NotFound {
                what: format!("dataset {name}"),
            })
    }

    fn snap_mut(&mut self, dataset: &DatasetName, name: &str) -> Result<&mut Snap, ZfsError> {
        self.dataset_mut(dataset)?
            .snapshots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| snapshot_missing(dataset, name))
    }

    /// The value set here or on the nearest ancestor, as ZFS inherits user properties.
    fn property(&self, name: &DatasetName, key: &str) -> Option<String> {
        let mut cur = Some(name.clone());
        while let Some(n) = cur {
            if let Some(v) = self.datasets.get(&n).and_then(|d| d.properties.get(key)) {
                return Some(v.clone());
            }
            cur = parent(&n);
        }
        None
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError> {
        Ok(self
            .lock()
            .pools
            .iter()
            .map(|(name, p)| PoolInfo {
                name: name.clone(),
                size: p.size,
                allocated: p.allocated,
                free: p.size.saturating_sub(p.allocated),
                health: "ONLINE".into(),
            })
            .collect())
    }

    fn list_datasets(&self, class_property: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
        check_user_property(class_property)?;
        let s = self.lock();
        // `used` counts a dataset's own data, its snapshots and its descendants.
        let mut used: HashMap<&str, u64> = HashMap::new();
        for (name, ds) in &s.datasets {
            let bytes = ds.own_bytes + ds.snapshots.iter().map(|x| x.used).sum::<u64>();
            let name = name.as_str();
            let ancestors = name.match_indices('/').map(|(i, _)| &name[..i]);
            for n in ancestors.chain([name]) {
                *used.entry(n).or_default() += bytes;
            }
        }
        s.datasets
            .iter()
            .map(|(name, ds)| {
                let pool = &s.pools[name.pool()];
                Ok(DatasetInfo {
                    name: name.clone(),
                    guid: ds.guid,
                    used: used[name.as_str()],
                    available: pool.size.saturating_sub(pool.allocated),
                    class_property: s.property(name, class_property),
                })
            })
            .collect()
    }

    fn list_snapshots(&self, dataset: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let s = self.lock();
        Ok(s.dataset(dataset)?
            .snapshots
            .iter()
            .map(|x| SnapshotInfo {
                name: x.name.clone(),
                guid: x.guid,
                createtxg: x.createtxg,
                creation: x.creation,
                used: x.used,
                userrefs: x.holds.len() as u32,
            })
            .collect())
    }

    fn snapshot(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        let Some(first) = datasets.first() else {
            return Ok(());
        };
        for d in datasets {
            d.snapshot(name)?;
            if d.pool() != first.pool() {
                return Err(ZfsError::Invalid {
                    what: "snapshot set",
                    value: format!("{first}, {d}"),
                    reason: "an atomic snapshot cannot span pools".into(),
                });
            }
        }
        self.mutate(|s| {
            let mut targets = BTreeSet::new();
            for d in datasets {
                s.dataset(d)?;
                if recursive {
                    targets.extend(s.datasets.keys().filter(|c| d.contains(c)).cloned());
                } else {
                    targets.insert(d.clone());
                }
            }
            // As zfs(8) does, every name of the set (children included) is
            // checked before any exists check: one too long fails them all.
            for t in &targets {
                t.snapshot(name)?;
            }
            for t in &targets {
                if s.datasets[t].snapshots.iter().any(|x| x.name == name) {
                    return Err(ZfsError::Exists {
                        what: format!("{t}@{name}"),
                    });
                }
            }
            s.reserve(
                first.pool(),
                self.snapshot_bytes.saturating_mul(targets.len() as u64),
            )?;
            let txg = s.next_txg(first.pool());
            let creation = (self.clock)();
            for t in targets {
                let guid = s.new_guid();
                s.datasets
                    .get_mut(&t)
                    .expect("checked above")
                    .snapshots
                    .push(Snap {
                        name: name.into(),
                        guid,
                        createtxg: txg,
                        creation,
                        used: self.snapshot_bytes,
                        holds: BTreeSet::new(),
                    });
            }
            Ok(())
        })
    }

    fn destroy_snapshot(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let full = dataset.snapshot(name)?;
        self.mutate(|s| {
            let snap = s.snap_mut(dataset, name)?;
            if !snap.holds.is_empty() {
                return Err(ZfsError::Held {
                    what: full,
                    tags: snap.holds.iter().cloned().collect::<Vec<_>>().join(", "),
                });
            }
            let used = snap.used;
            s.dataset_mut(dataset)?.snapshots.retain(|x| x.name != name);
            s.pool_mut(dataset.pool())?.allocated -= used;
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    fn hold(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        let full = dataset.snapshot(snapshot)?;
        check_tag(tag)?;
        self.mutate(|s| {
            if !s.snap_mut(dataset, snapshot)?.holds.insert(tag.into()) {
                return Err(ZfsError::Exists {
                    what: format!("hold {tag:?} on {full}"),
                });
            }
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    fn release(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        let full = dataset.snapshot(snapshot)?;
        check_tag(tag)?;
        self.mutate(|s| {
            if !s.snap_mut(dataset, snapshot)?.holds.remove(tag) {
                return Err(ZfsError::NotFound {
                    what: format!("hold {tag:?} on {full}"),
                });
            }
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    fn holds(&self, dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
        dataset.snapshot(snapshot)?;
        let s = self.lock();
        s.dataset(dataset)?
            .snapshots
            .iter()
            .find(|x| x.name == snapshot)
            .map(|x| x.holds.iter().cloned().collect())
            .ok_or_else(|| snapshot_missing(dataset, snapshot))
    }

    fn bookmark(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        bookmark: &str,
    ) -> Result<(), ZfsError> {
        dataset.snapshot(snapshot)?;
        let full = bookmark_name(dataset, bookmark)?;
        self.mutate(|s| {
            let snap = s.snap_mut(dataset, snapshot)?;
            let mark = Bookmark {
                guid: snap.guid,
                createtxg: snap.createtxg,
                creation: snap.creation,
            };
            let ds = s.dataset_mut(dataset)?;
            if ds.bookmarks.contains_key(bookmark) {
                return Err(ZfsError::Exists {
                    what: format!("bookmark {full}"),
                });
            }
            ds.bookmarks.insert(bookmark.into(), mark);
            s.next_txg(dataset.pool());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    /// A pool `tank` of 10 MiB with `tank/a`, `tank/a/child` and `tank/b`.
    fn sim() -> SimBackend {
        let sim = SimBackend::new();
        sim.add_pool("tank", 10 << 20).unwrap();
        for d in ["tank/a", "tank/a/child", "tank/b"] {
            sim.create_dataset(&ds(d)).unwrap();
        }
        sim
    }

    fn snaps(sim: &SimBackend, d: &str) -> Vec<SnapshotInfo> {
        sim.list_snapshots(&ds(d)).unwrap()
    }

    #[test]
    fn datasets_need_their_pool_and_parent() {
        let sim = sim();
        assert!(matches!(
            sim.create_dataset(&ds("other/x")),
            Err(ZfsError::NotFound { .. })
        ));
        match sim.create_dataset(&ds("tank/x/y")) {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, "parent dataset tank/x"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            sim.create_dataset(&ds("tank/a")),
            Err(ZfsError::Exists { .. })
        ));
        assert!(matches!(
            sim.add_pool("tank", 1 << 20),
            Err(ZfsError::Exists { .. })
        ));
        assert!(matches!(
            sim.add_pool("tank/x", 1 << 20),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            sim.add_pool("a;b", 1 << 20),
            Err(ZfsError::Name(_))
        ));
        let names: Vec<_> = sim
            .list_datasets("zdr:class")
            .unwrap()
            .into_iter()
            .map(|d| d.name.to_string())
            .collect();
        assert_eq!(names, ["tank", "tank/a", "tank/a/child", "tank/b"]);
    }

    #[test]
    fn guids_are_unique_and_nonzero() {
        let sim = sim();
        for i in 0..50 {
            sim.snapshot(&[ds("tank")], &format!("s{i}"), true).unwrap();
        }
        let mut guids: Vec<u64> = sim
            .list_datasets("zdr:class")
            .unwrap()
            .iter()
            .map(|d| d.guid)
            .collect();
        for d in ["tank", "tank/a", "tank/a/child", "tank/b"] {
            guids.extend(snaps(&sim, d).iter().map(|s| s.guid));
        }
        assert_eq!(guids.len(), 4 + 4 * 50);
        assert!(guids.iter().all(|g| *g != 0));
        let unique: HashSet<_> = guids.iter().collect();
        assert_eq!(unique.len(), guids.len());
    }

    #[test]
    fn one_txg_per_transaction_and_creation_from_the_clock() {
        let now = Arc::new(AtomicI64::new(1_700_000_000));
        let clock = now.clone();
        let sim = sim().with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        sim.snapshot(&[ds("tank/a"), ds("tank/b")], "one", false)
            .unwrap();
        now.store(1_600_000_000, Ordering::SeqCst);
        sim.snapshot(&[ds("tank/a")], "two", false).unwrap();
        let a = snaps(&sim, "tank/a");
        let b = snaps(&sim, "tank/b");
        assert_eq!(a[0].createtxg, b[0].createtxg);
        assert_eq!(a[0].creation, 1_700_000_000);
        // The clock went back; createtxg still moves forward.
        assert_eq!(a[1].creation, 1_600_000_000);
        assert!(a[1].createtxg > a[0].createtxg);
        assert!(snaps(&sim, "tank/a/child").is_empty());
    }

    #[test]
    fn recursive_snapshot_includes_children_only_below() {
        let sim = sim();
        sim.create_dataset(&ds("tank/a b")).unwrap();
        sim.snapshot(&[ds("tank/a")], "r", true).unwrap();
        assert_eq!(snaps(&sim, "tank/a").len(), 1);
        assert_eq!(
            snaps(&sim, "tank/a/child")[0].createtxg,
            snaps(&sim, "tank/a")[0].createtxg
        );
        assert!(snaps(&sim, "tank/a b").is_empty());
        assert!(snaps(&sim, "tank/b").is_empty());
    }

    #[test]
    fn atomic_snapshot_creates_none_when_one_exists() {
        let sim = sim();
        sim.snapshot(&[ds("tank/b")], "n", false).unwrap();
        match sim.snapshot(&[ds("tank/a"), ds("tank/b")], "n", false) {
            Err(ZfsError::Exists { what }) => assert_eq!(what, "tank/b@n"),
            other => panic!("{other:?}"),
        }
        assert!(snaps(&sim, "tank/a").is_empty());
        assert!(matches!(
            sim.snapshot(&[ds("tank/a"), ds("tank/nope")], "m", false),
            Err(ZfsError::NotFound { .. })
        ));
        assert!(snaps(&sim, "tank/a").is_empty());
        sim.add_pool("other", 1 << 20).unwrap();
        assert!(matches!(
            sim.snapshot(&[ds("tank/a"), ds("other")], "x", false),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            sim.snapshot(&[ds("tank/a")], "x;y", false),
            Err(ZfsError::Name(_))
        ));
    }

    #[test]
    fn full_pool_refuses_snapshots_and_destroy_frees_space() {
        let sim = SimBackend::new().with_snapshot_bytes(100 * 1024);
        sim.add_pool("small", DATASET_BYTES + 250 * 1024).unwrap();
        let root = ds("small");
        sim.snapshot(std::slice::from_ref(&root), "1", false)
            .unwrap();
        sim.snapshot(std::slice::from_ref(&root), "2", false)
            .unwrap();
        match sim.snapshot(std::slice::from_ref(&root), "3", false) {
            Err(ZfsError::NoSpace { pool }) => assert_eq!(pool, "small"),
            other => panic!("{other:?}"),
        }
        let pool = &sim.pools().unwrap()[0];
        assert_eq!(pool.allocated, DATASET_BYTES + 200 * 1024);
        assert_eq!(pool.free, 50 * 1024);
        assert!(matches!(
            sim.create_dataset(&ds("small/x")),
            Err(ZfsError::NoSpace { .. })
        ));
        sim.destroy_snapshot(&root, "1").unwrap();
        sim.snapshot(std::slice::from_ref(&root), "3", false)
            .unwrap();
        let info = &sim.list_datasets("zdr:class").unwrap()[0];
        assert_eq!(info.used, DATASET_BYTES + 200 * 1024);
        assert_eq!(info.available, 50 * 1024);
    }

    #[test]
    fn used_includes_snapshots_and_descendants() {
        let sim = sim().with_snapshot_bytes(1000);
        sim.snapshot(&[ds("tank/a")], "r", true).unwrap();
        let by_name: BTreeMap<_, _> = sim
            .list_datasets("zdr:class")
            .unwrap()
            .into_iter()
            .map(|d| (d.name.to_string(), d.used))
            .collect();
        assert_eq!(by_name["tank/a/child"], DATASET_BYTES + 1000);
        assert_eq!(by_name["tank/a"], 2 * (DATASET_BYTES + 1000));
        assert_eq!(by_name["tank"], 4 * DATASET_BYTES + 2000);
    }

    #[test]
    fn holds_block_destroy_until_released() {
        let sim = sim();
        let a = ds("tank/a");
        sim.snapshot(std::slice::from_ref(&a), "s", false).unwrap();
        sim.hold(&a, "s", "zdr").unwrap();
        sim.hold(&a, "s", "other tool").unwrap();
        assert!(matches!(
            sim.hold(&a, "s", "zdr"),
            Err(ZfsError::Exists { .. })
        ));
        assert_eq!(snaps(&sim, "tank/a")[0].userrefs, 2);
        assert_eq!(sim.holds(&a, "s").unwrap(), ["other tool", "zdr"]);
        match sim.destroy_snapshot(&a, "s") {
            Err(ZfsError::Held { what, tags }) => {
                assert_eq!(what, "tank/a@s");
                assert_eq!(tags, "other tool, zdr");
            }
            other => panic!("{other:?}"),
        }
        sim.release(&a, "s", "zdr").unwrap();
        sim.release(&a, "s", "other tool").unwrap();
        assert!(matches!(
            sim.release(&a, "s", "zdr"),
            Err(ZfsError::NotFound { .. })
        ));
        sim.destroy_snapshot(&a, "s").unwrap();
        assert!(snaps(&sim, "tank/a").is_empty());
        assert!(matches!(
            sim.hold(&a, "s", "zdr"),
            Err(ZfsError::NotFound { .. })
        ));
        assert!(matches!(sim.holds(&a, "s"), Err(ZfsError::NotFound { .. })));
        assert!(matches!(
            sim.hold(&a, "s", "-r"),
            Err(ZfsError::Invalid { .. })
        ));
    }

    #[test]
    fn destroying_a_missing_snapshot_is_not_found() {
        let sim = sim();
        match sim.destroy_snapshot(&ds("tank/a"), "nope") {
            Err(ZfsError::NotFound { what }) => assert_eq!(what, "snapshot tank/a@nope"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            sim.destroy_snapshot(&ds("tank/zz"), "s"),
            Err(ZfsError::NotFound { .. })
        ));
        assert!(matches!(
            sim.list_snapshots(&ds("tank/zz")),
            Err(ZfsError::NotFound { .. })
        ));
    }

    #[test]
    fn bookmarks_need_a_source_and_outlive_it() {
        let sim = sim();
        let a = ds("tank/a");
        assert!(matches!(
            sim.bookmark(&a, "s", "b"),
            Err(ZfsError::NotFound { .. })
        ));
        sim.snapshot(std::slice::from_ref(&a), "s", false).unwrap();
        sim.snapshot(std::slice::from_ref(&a), "t", false).unwrap();
        sim.bookmark(&a, "s", "b").unwrap();
        match sim.bookmark(&a, "t", "b") {
            Err(ZfsError::Exists { what }) => assert_eq!(what, "bookmark tank/a#b"),
            other => panic!("{other:?}"),
        }
        let guid = snaps(&sim, "tank/a")[0].guid;
        sim.destroy_snapshot(&a, "s").unwrap();
        assert!(matches!(
            sim.bookmark(&a, "t", "b"),
            Err(ZfsError::Exists { .. })
        ));
        let state = sim.lock();
        assert_eq!(state.datasets[&a].bookmarks["b"].guid, guid);
        drop(state);
        assert!(matches!(
            sim.bookmark(&a, "t", "b#c"),
            Err(ZfsError::Name(_))
        ));
    }

    #[test]
    fn user_properties_are_inherited() {
        let sim = sim();
        sim.set_property(&ds("tank/a"), "zdr:class", "gold")
            .unwrap();
        sim.set_property(&ds("tank/a/child"), "zdr:class", "none")
            .unwrap();
        sim.set_property(&ds("tank/b"), "other:x", "y").unwrap();
        let got: BTreeMap<_, _> = sim
            .list_datasets("zdr:class")
            .unwrap()
            .into_iter()
            .map(|d| (d.name.to_string(), d.class_property))
            .collect();
        assert_eq!(got["tank"], None);
        assert_eq!(got["tank/a"].as_deref(), Some("gold"));
        assert_eq!(got["tank/a/child"].as_deref(), Some("none"));
        assert_eq!(got["tank/b"], None);
        sim.create_dataset(&ds("tank/a/new")).unwrap();
        let new = sim.list_datasets("zdr:class").unwrap();
        let new = new
            .iter()
            .find(|d| d.name.as_str() == "tank/a/new")
            .unwrap();
        assert_eq!(new.class_property.as_deref(), Some("gold"));
        assert!(matches!(
            sim.set_property(&ds("tank/a"), "class", "x"),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            sim.list_datasets("Bad"),
            Err(ZfsError::Invalid { .. })
        ));
        assert!(matches!(
            sim.set_property(&ds("tank/zz"), "zdr:class", "x"),
            Err(ZfsError::NotFound { .. })
        ));
    }

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
            Err(ZfsError::SimState { .. })
        ));
        assert!(sim.pools().unwrap().is_empty());
    }

    #[test]
    fn corrupt_state_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        std::fs::write(&path, b"{\"pools\": [").unwrap();
        match SimBackend::open(&path) {
            Err(ZfsError::SimState { path: p, .. }) => assert_eq!(p, path.display().to_string()),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("corrupt state accepted"),
        }
        std::fs::write(&path, br#"{"pools": {}, "datasets": {"tank/a;b": {}}}"#).unwrap();
        assert!(matches!(
            SimBackend::open(&path),
            Err(ZfsError::SimState { .. })
        ));
        let orphan = r#"{"pools": {}, "datasets": {"tank": {"guid": 1, "own_bytes": 0,
            "properties": {}, "snapshots": [], "bookmarks": {}}}}"#;
        std::fs::write(&path, orphan).unwrap();
        match SimBackend::open(&path) {
            Err(ZfsError::SimState { reason, .. }) => {
                assert!(reason.contains("no pool tank"), "{reason}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("orphan dataset accepted"),
        }
    }
}
