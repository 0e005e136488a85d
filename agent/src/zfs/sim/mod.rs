//! [`Backend`] over an in-memory pool with the ZFS semantics zdr relies on:
//! random GUIDs, a pool-wide createtxg that advances once per transaction
//! (an atomic multi-snapshot shares one), holds that block destroy,
//! all-or-nothing snapshot sets, bookmarks that outlive their snapshot,
//! inherited user properties and free-space accounting. With
//! send/receive streams that carry the snapshots' identities (GUIDs, creation),
//! so a receive on another simulator reproduces them as real ZFS does, with
//! resumable partial receives. With
//! [`SimBackend::open`] the state lives in a JSON file rewritten atomically
//! after every change, so a demo agent keeps its "pool" across restarts.
//!
//! The pool model is in `model`, the stream format (and what a send and a
//! receive do to the model) in `streams`, the state file in `persist`.

mod model;
mod persist;
mod streams;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use zdr_common::wire::{BookmarkInfo, CheckLevel, ContentHash, PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use self::model::{parent, snapshot_missing, Bookmark, Pool, Snap, State, DATASET_BYTES};
use self::persist::save;
pub use self::persist::StateError;
use self::streams::{read_header, token_of, CHECKPOINT_BYTES, STREAM_MAGIC};
use super::names::{bookmark_name, check_tag, check_user_property};
use super::stream::{fill, flush_output, write_stream};
use super::{in_createtxg_order, Backend, DatasetInfo, RecvSpec, SendSpec, ZfsError};

/// Unix seconds, UTC.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

const DEFAULT_SNAPSHOT_BYTES: u64 = 16 * 1024;

pub struct SimBackend {
    state: Mutex<State>,
    path: Option<PathBuf>,
    clock: Clock,
    snapshot_bytes: u64,
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
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateError> {
        let path = path.into();
        let state = persist::load(&path)?;
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

    /// A pool configured larger than it was grows to `size`, as `zpool add`
    /// or `zpool online -e` would; it never shrinks.
    pub fn grow_pool(&self, name: &str, size: u64) -> Result<(), ZfsError> {
        self.mutate(|s| {
            let p = s.pool_mut(name)?;
            p.size = p.size.max(size);
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

    /// Corrupts `block` of `dataset@snapshot` behind ZFS's back: its
    /// checksums stay valid, sends carry the damage on, and only
    /// [`Backend::content_hash`] tells. The hook drill tests use; an
    /// integration test reaches it through the state file of a stopped
    /// agent (the snapshot's `damaged` list).
    pub fn damage_block(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        block: u64,
    ) -> Result<(), ZfsError> {
        self.mutate(|s| {
            s.snap_mut(dataset, snapshot)?.damaged.insert(block);
            Ok(())
        })
    }

    /// Writes `bytes` of data into the live filesystem.
    pub fn write_data(&self, dataset: &DatasetName, bytes: u64) -> Result<(), ZfsError> {
        self.mutate(|s| {
            s.dataset(dataset)?;
            s.reserve(dataset.pool(), bytes)?;
            let txg = s.next_txg(dataset.pool());
            let ds = s.dataset_mut(dataset)?;
            ds.own_bytes += bytes;
            ds.head_txg = txg;
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
        let result = f(&mut state).and_then(|out| Ok(save(path, &state).map(|()| out)?));
        if result.is_err() {
            *state = before;
        }
        result
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
                    // The model has no encryption.
                    encrypted: false,
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
                        damaged: BTreeSet::new(),
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

    fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        let s = self.lock();
        let mut marks: Vec<BookmarkInfo> = s
            .dataset(dataset)?
            .bookmarks
            .iter()
            .map(|(name, b)| BookmarkInfo {
                name: name.clone(),
                guid: b.guid,
                createtxg: b.createtxg,
                creation: b.creation,
            })
            .collect();
        in_createtxg_order(&mut marks);
        Ok(marks)
    }

    fn destroy_bookmark(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        let full = bookmark_name(dataset, name)?;
        self.mutate(|s| {
            if s.dataset_mut(dataset)?.bookmarks.remove(name).is_none() {
                return Err(ZfsError::NotFound {
                    what: format!("bookmark {full}"),
                });
            }
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    fn send(&self, spec: &SendSpec, out: &mut dyn Write) -> Result<u64, ZfsError> {
        let records = self.lock().stream_records(spec)?;
        let mut sent = 0u64;
        let filler = vec![0x5au8; 64 << 10];
        for r in records {
            let header = format!(
                "{STREAM_MAGIC}{}\n",
                serde_json::to_string(&r).expect("a record serializes")
            );
            write_stream(out, header.as_bytes(), &mut sent)?;
            let mut left = r.payload - r.offset;
            while left > 0 {
                let n = left.min(filler.len() as u64) as usize;
                write_stream(out, &filler[..n], &mut sent)?;
                left -= n as u64;
            }
        }
        flush_output(out)?;
        Ok(sent)
    }

    fn estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError> {
        let records = self.lock().stream_records(spec)?;
        let bytes = records
            .iter()
            .map(|r| {
                let header = serde_json::to_string(r).expect("a record serializes");
                (STREAM_MAGIC.len() + header.len() + 1) as u64 + r.payload - r.offset
            })
            .sum();
        Ok(Some(bytes))
    }

    fn receive(
        &self,
        target: &DatasetName,
        spec: &RecvSpec,
        input: &mut dyn Read,
    ) -> Result<(), ZfsError> {
        let incomplete = |detail: String| ZfsError::Incomplete {
            target: target.to_string(),
            detail,
        };
        let mut records = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let r = match read_header(input) {
                Ok(Some(r)) => r,
                Ok(None) if records > 0 => return Ok(()),
                Ok(None) => return Err(incomplete("failed to read from stream".into())),
                Err(e) if records == 0 => {
                    return Err(ZfsError::Invalid {
                        what: "stream",
                        value: target.to_string(),
                        reason: e,
                    })
                }
                Err(e) => return Err(incomplete(e)),
            };
            records += 1;
            let begun = self.mutate(|s| s.begin_record(target, &r, spec.force))?;
            let mut got = r.offset;
            let mut checkpoint = got;
            let mut failure = None;
            while got < r.payload {
                let want = (r.payload - got).min(buf.len() as u64) as usize;
                let (n, err) = fill(input, &mut buf[..want]);
                got += n as u64;
                // ZFS saves a receive's progress with every txg, so a receiver
                // killed outright still leaves a resume token; so does the model.
                if let (Some(new_dataset), true) = (begun, got - checkpoint >= CHECKPOINT_BYTES) {
                    checkpoint = got;
                    let mut saved = r.clone();
                    saved.offset = got;
                    self.mutate(|s| s.end_record(target, saved, new_dataset, true, spec.force))?;
                }
                if let Some(e) = err {
                    failure = Some(format!("reading the input: {e}"));
                    break;
                }
                if n < want {
                    failure = Some("checksum mismatch or incomplete stream".into());
                    break;
                }
            }
            let Some(new_dataset) = begun else {
                if let Some(why) = failure {
                    return Err(incomplete(why));
                }
                continue;
            };
            let Some(why) = failure else {
                let held = if spec.force {
                    self.lock().held_after_base(target, &r)
                } else {
                    None
                };
                if let Some(held) = held {
                    let mut saved = r;
                    saved.offset = got;
                    self.mutate(|s| s.end_record(target, saved, new_dataset, true, spec.force))?;
                    return Err(ZfsError::Busy {
                        what: format!("dataset {target}"),
                        detail: format!(
                            "cannot receive incremental stream: dataset is busy \
                             ({target}@{held} is held)"
                        ),
                    });
                }
                self.mutate(|s| s.end_record(target, r, new_dataset, false, spec.force))?;
                continue;
            };
            let mut saved = r;
            saved.offset = got;
            self.mutate(|s| s.end_record(target, saved, new_dataset, true, spec.force))?;
            return Err(incomplete(format!(
                "{why}. Partially received snapshot is saved; resume with the \
                 receive_resume_token of {target}"
            )));
        }
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        let s = self.lock();
        Ok(s.dataset(dataset)?
            .partial
            .as_ref()
            .map(|p| token_of(&p.record)))
    }

    fn create_parents(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        let mut missing = Vec::new();
        let mut at = parent(dataset);
        while let Some(p) = at {
            if self.lock().datasets.contains_key(&p) {
                break;
            }
            at = parent(&p);
            missing.push(p);
        }
        for p in missing.iter().rev() {
            match self.create_dataset(p) {
                Ok(()) | Err(ZfsError::Exists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.mutate(|s| {
            let ds = s.dataset_mut(dataset)?;
            let Some(p) = ds.partial.take() else {
                return Err(ZfsError::NotFound {
                    what: format!("resumable receive state on {dataset}"),
                });
            };
            if p.new_dataset && ds.snapshots.is_empty() {
                let own = ds.own_bytes;
                s.datasets.remove(dataset);
                s.pool_mut(dataset.pool())?.allocated -= own;
            }
            s.next_txg(dataset.pool());
            Ok(())
        })
    }

    /// The modelled content of a snapshot is its identity and its damage:
    /// every copy of it hashes the same until a block of one is damaged.
    fn content_hash(&self, dataset: &DatasetName, snapshot: &str) -> Result<ContentHash, ZfsError> {
        dataset.snapshot(snapshot)?;
        let s = self.lock();
        let snap = s
            .dataset(dataset)?
            .snapshots
            .iter()
            .find(|x| x.name == snapshot)
            .ok_or_else(|| snapshot_missing(dataset, snapshot))?;
        let mut h = blake3::Hasher::new();
        h.update(b"zdr-sim-content-v1\0");
        h.update(&snap.guid.to_le_bytes());
        for block in &snap.damaged {
            h.update(&block.to_le_bytes());
        }
        Ok(ContentHash {
            level: CheckLevel::FilesHashed,
            digest: Some(h.finalize().to_hex().to_string()),
            files: 1,
            // Nothing is read: the model has no data, only its identity.
            bytes: 0,
            mount_ms: 0,
            read_ms: 0,
        })
    }

    fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.mutate(|s| {
            s.dataset(dataset)?;
            let doomed: Vec<DatasetName> = s
                .datasets
                .keys()
                .filter(|d| dataset.contains(d))
                .cloned()
                .collect();
            for d in &doomed {
                if let Some(x) = s.datasets[d].snapshots.iter().find(|x| !x.holds.is_empty()) {
                    return Err(ZfsError::Held {
                        what: format!("{d}@{}", x.name),
                        tags: x.holds.iter().cloned().collect::<Vec<_>>().join(", "),
                    });
                }
            }
            for d in &doomed {
                let ds = s.datasets.remove(d).expect("listed above");
                let freed = ds.own_bytes + ds.snapshots.iter().map(|x| x.used).sum::<u64>();
                s.pool_mut(dataset.pool())?.allocated -= freed;
            }
            s.next_txg(dataset.pool());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    pub(super) fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    /// A pool `tank` of 10 MiB with `tank/a`, `tank/a/child` and `tank/b`.
    pub(super) fn sim() -> SimBackend {
        let sim = SimBackend::new();
        sim.add_pool("tank", 10 << 20).unwrap();
        for d in ["tank/a", "tank/a/child", "tank/b"] {
            sim.create_dataset(&ds(d)).unwrap();
        }
        sim
    }

    pub(super) fn snaps(sim: &SimBackend, d: &str) -> Vec<SnapshotInfo> {
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
    fn a_pool_grows_to_its_configured_size_and_never_shrinks() {
        let sim = SimBackend::new();
        sim.add_pool("small", 100 * 1024).unwrap();
        sim.grow_pool("small", 400 * 1024).unwrap();
        sim.grow_pool("small", 200 * 1024).unwrap();
        let pool = sim
            .pools()
            .unwrap()
            .into_iter()
            .find(|p| p.name == "small")
            .unwrap();
        assert_eq!(pool.size, 400 * 1024);
        assert!(matches!(
            sim.grow_pool("nope", 1),
            Err(ZfsError::NotFound { .. })
        ));
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
    fn a_damaged_block_travels_with_the_stream_and_only_the_hash_tells() {
        let (src, dst) = (sim(), sim());
        src.snapshot(&[ds("tank/a")], "s1", false).unwrap();
        let clean = src.content_hash(&ds("tank/a"), "s1").unwrap();
        src.damage_block(&ds("tank/a"), "s1", 7).unwrap();
        let damaged = src.content_hash(&ds("tank/a"), "s1").unwrap();
        assert_ne!(damaged.digest, clean.digest);
        let spec = SendSpec::Full {
            dataset: ds("tank/a"),
            snapshot: "s1".into(),
            raw: false,
        };
        let mut stream = Vec::new();
        src.send(&spec, &mut stream).unwrap();
        dst.receive(&ds("tank/c"), &RecvSpec::default(), &mut &stream[..])
            .unwrap();
        let copy = dst.content_hash(&ds("tank/c"), "s1").unwrap();
        assert_eq!(copy.digest, damaged.digest, "the damage was copied");
        assert_eq!(
            dst.list_snapshots(&ds("tank/c")).unwrap()[0].guid,
            src.list_snapshots(&ds("tank/a")).unwrap()[0].guid,
            "ZFS sees the same snapshot"
        );
    }
}
