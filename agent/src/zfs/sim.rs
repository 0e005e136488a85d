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

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use zdr_common::dataset::parse_snapshot_name;
use zdr_common::wire::{BookmarkInfo, PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use super::names::{bookmark_name, check_tag, check_token, check_user_property, send_base_name};
use super::resume_token::{self, ResumeToken, StreamFlags};
use super::stream::{fill, flush_output, write_stream};
use super::{in_createtxg_order, Backend, DatasetInfo, RecvSpec, SendBase, SendSpec, ZfsError};

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
    /// The txg of the last change to the live filesystem's data (a write or
    /// a received snapshot); a receive refuses a target changed since its base.
    #[serde(default)]
    head_txg: u64,
    /// The saved state of an interrupted `receive -s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<Partial>,
}

/// One snapshot in a simulated stream: a header line (`STREAM_MAGIC` and
/// this as JSON), then `payload - offset` filler bytes standing for the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The sent snapshot's full name on the source.
    toname: String,
    toguid: u64,
    /// `None` for a full stream.
    fromguid: Option<u64>,
    creation: i64,
    raw: bool,
    /// Where in the payload this stream starts (a resumed stream).
    offset: u64,
    payload: u64,
}

const STREAM_MAGIC: &str = "zdr-sim-stream-v1 ";

/// A receive saves its progress every this many bytes, as a txg would.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// An interrupted receive: the record and how far it got (`record.offset`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Partial {
    record: Record,
    /// The receive created the dataset; aborting it destroys the dataset.
    new_dataset: bool,
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
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateError> {
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

/// The simulator's state file could not be read or written: the simulator's
/// own failure, which reaches callers of [`Backend`] as [`ZfsError::Backend`].
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

/// Write to a temporary file and rename, so a crash leaves the old or the new state.
fn save(path: &Path, state: &State) -> Result<(), StateError> {
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
        let txg = self.next_txg(name.pool());
        self.datasets.insert(
            name,
            Dataset {
                guid,
                head_txg: txg,
                own_bytes: DATASET_BYTES,
                properties: BTreeMap::new(),
                snapshots: Vec::new(),
                bookmarks: BTreeMap::new(),
                partial: None,
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

/// The OpenZFS-format token of a partial receive, so that whatever reads
/// real tokens (the agent's offer to the coordinator) reads the model's too.
fn token_of(record: &Record) -> String {
    resume_token::encode(&ResumeToken {
        fromguid: record.fromguid,
        // The model has no objects: one stream position serves as both.
        object: 0,
        offset: record.offset,
        bytes: record.offset,
        toguid: record.toguid,
        toname: record.toname.clone(),
        flags: StreamFlags {
            raw: record.raw,
            ..StreamFlags::default()
        },
    })
}

/// The record a resumed send continues; `creation` and `payload` are the
/// source snapshot's, filled in by the send.
fn record_of_token(token: &str) -> Result<Record, ZfsError> {
    check_token(token)?;
    let t = resume_token::decode(token).map_err(|e| ZfsError::Invalid {
        what: "resume token",
        value: token.chars().take(80).collect(),
        reason: e.to_string(),
    })?;
    Ok(Record {
        toname: t.toname,
        toguid: t.toguid,
        fromguid: t.fromguid,
        creation: 0,
        raw: t.flags.raw,
        offset: t.offset,
        payload: 0,
    })
}

/// One header line; `Ok(None)` at a clean end of stream.
fn read_header(input: &mut dyn Read) -> Result<Option<Record>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let (n, err) = fill(input, &mut byte);
        if let Some(e) = err {
            return Err(format!("failed to read from stream: {e}"));
        }
        if n == 0 {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err("stream ended inside a record header".into())
            };
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 64 << 10 {
            return Err("invalid stream (record header too long)".into());
        }
    }
    let json = line
        .strip_prefix(STREAM_MAGIC.as_bytes())
        .ok_or("invalid stream (bad magic number)")?;
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| format!("invalid stream header: {e}"))
}

impl State {
    /// The records `spec` sends, checked against the source.
    fn stream_records(&self, spec: &SendSpec) -> Result<Vec<Record>, ZfsError> {
        match spec {
            SendSpec::Full {
                dataset,
                snapshot,
                raw,
            } => {
                let full = dataset.snapshot(snapshot)?;
                let ds = self.dataset(dataset)?;
                let i = ds
                    .snapshots
                    .iter()
                    .position(|x| &x.name == snapshot)
                    .ok_or_else(|| snapshot_missing(dataset, snapshot))?;
                let x = &ds.snapshots[i];
                Ok(vec![Record {
                    toname: full,
                    toguid: x.guid,
                    fromguid: None,
                    creation: x.creation,
                    raw: *raw,
                    offset: 0,
                    payload: full_payload(ds, i),
                }])
            }
            SendSpec::Incremental {
                dataset,
                from,
                to,
                intermediates,
                raw,
            } => {
                let base = send_base_name(dataset, from, *intermediates)?;
                dataset.snapshot(to)?;
                let ds = self.dataset(dataset)?;
                let to_snap = ds
                    .snapshots
                    .iter()
                    .find(|x| &x.name == to)
                    .ok_or_else(|| snapshot_missing(dataset, to))?;
                let (guid, txg) = match from {
                    SendBase::Snapshot(n) => ds
                        .snapshots
                        .iter()
                        .find(|x| &x.name == n)
                        .map(|x| (x.guid, x.createtxg)),
                    SendBase::Bookmark(n) => ds.bookmarks.get(n).map(|b| (b.guid, b.createtxg)),
                }
                .ok_or_else(|| ZfsError::NotFound { what: base.clone() })?;
                if txg >= to_snap.createtxg {
                    return Err(ZfsError::Invalid {
                        what: "incremental source",
                        value: base,
                        reason: format!("not earlier than {dataset}@{to}"),
                    });
                }
                let sent = ds.snapshots.iter().filter(|x| {
                    x.createtxg > txg
                        && x.createtxg <= to_snap.createtxg
                        && (*intermediates || x.guid == to_snap.guid)
                });
                let mut fromguid = guid;
                Ok(sent
                    .map(|x| {
                        let r = Record {
                            toname: format!("{dataset}@{}", x.name),
                            toguid: x.guid,
                            fromguid: Some(fromguid),
                            creation: x.creation,
                            raw: *raw,
                            offset: 0,
                            payload: x.used,
                        };
                        fromguid = x.guid;
                        r
                    })
                    .collect())
            }
            SendSpec::Resume { token } => {
                let mut r = record_of_token(token)?;
                let (dataset, name) = parse_snapshot_name(&r.toname)?;
                let ds = self.dataset(&dataset)?;
                let i = ds
                    .snapshots
                    .iter()
                    .position(|x| x.name == name && x.guid == r.toguid)
                    .ok_or_else(|| snapshot_missing(&dataset, &name))?;
                if let Some(g) = r.fromguid {
                    let has = ds.snapshots.iter().any(|x| x.guid == g)
                        || ds.bookmarks.values().any(|b| b.guid == g);
                    if !has {
                        return Err(ZfsError::NotFound {
                            what: format!("incremental source of {} (guid {g})", r.toname),
                        });
                    }
                }
                r.creation = ds.snapshots[i].creation;
                r.payload = match r.fromguid {
                    None => full_payload(ds, i),
                    Some(_) => ds.snapshots[i].used,
                };
                if r.offset > r.payload {
                    return Err(ZfsError::Invalid {
                        what: "resume token",
                        value: token.chars().take(80).collect(),
                        reason: "offset past the end of the stream".into(),
                    });
                }
                Ok(vec![r])
            }
        }
    }

    /// Checks that `target` can take `r`: `Some(creates the dataset)`, or
    /// `None` when the target already has the snapshot (zfs(8) then succeeds
    /// without a change).
    fn begin_record(
        &mut self,
        target: &DatasetName,
        r: &Record,
        force: bool,
    ) -> Result<Option<bool>, ZfsError> {
        let diverged = |detail: String| ZfsError::Diverged {
            target: target.to_string(),
            detail,
        };
        let (_, name) = parse_snapshot_name(&r.toname)?;
        target.snapshot(&name)?;
        if r.offset > 0 {
            let p = self
                .datasets
                .get(target)
                .and_then(|d| d.partial.as_ref())
                .ok_or_else(|| diverged("no partially received state to resume".into()))?;
            if p.record.toguid != r.toguid || p.record.offset != r.offset {
                return Err(diverged(format!(
                    "resume stream does not match the saved state (offset {} of guid {})",
                    p.record.offset, p.record.toguid
                )));
            }
            return Ok(Some(p.new_dataset));
        }
        if let Some(ds) = self.datasets.get(target) {
            // zfs(8) refuses a full stream onto an existing dataset without
            // -F first ("must specify -F"), before the kernel's EBUSY.
            if ds.partial.is_some() && (force || r.fromguid.is_some()) {
                return Err(ZfsError::Busy {
                    what: format!("dataset {target}"),
                    detail: "contains partially-complete state from \"zfs receive -s\"".into(),
                });
            }
        }
        match r.fromguid {
            None => {
                let Some(ds) = self.datasets.get(target) else {
                    if !self.pools.contains_key(target.pool()) {
                        return Err(ZfsError::NotFound {
                            what: format!("pool {}", target.pool()),
                        });
                    }
                    if let Some(p) = parent(target).filter(|p| !self.datasets.contains_key(p)) {
                        return Err(ZfsError::NotFound {
                            what: format!("parent dataset {p}"),
                        });
                    }
                    return Ok(Some(true));
                };
                if !force {
                    return Err(diverged(format!(
                        "destination '{target}' exists; must specify -F to overwrite it"
                    )));
                }
                if let Some(x) = ds.snapshots.first() {
                    return Err(diverged(format!(
                        "destination has snapshots (eg. {target}@{})",
                        x.name
                    )));
                }
                Ok(Some(false))
            }
            Some(g) => {
                let ds = self.dataset(target)?;
                if ds
                    .snapshots
                    .iter()
                    .any(|x| x.guid == r.toguid && x.name == name)
                {
                    return Ok(None);
                }
                let Some(base) = ds.snapshots.iter().position(|x| x.guid == g) else {
                    return Err(diverged(format!(
                        "most recent snapshot of {target} does not match incremental source"
                    )));
                };
                // With -F, ZFS destroys the snapshots after the base when
                // the receive completes (end_record).
                if !force && ds.head_txg > ds.snapshots[base].createtxg {
                    return Err(diverged(format!(
                        "destination {target} has been modified since most recent snapshot"
                    )));
                }
                let kept = if force {
                    &ds.snapshots[..=base]
                } else {
                    &ds.snapshots[..]
                };
                if kept.iter().any(|x| x.name == name) {
                    return Err(diverged(format!(
                        "destination snapshot {target}@{name} already exists"
                    )));
                }
                Ok(Some(false))
            }
        }
    }

    /// Lands a record that `begin_record` accepted, whole (`partial` false)
    /// or as the saved state of an interrupted receive.
    fn end_record(
        &mut self,
        target: &DatasetName,
        mut r: Record,
        new_dataset: bool,
        partial: bool,
        force: bool,
    ) -> Result<(), ZfsError> {
        if !self.datasets.contains_key(target) {
            self.reserve(target.pool(), DATASET_BYTES)?;
            self.insert_dataset(target.clone());
        }
        if partial {
            self.dataset_mut(target)?.partial = Some(Partial {
                record: r,
                new_dataset,
            });
            self.next_txg(target.pool());
            return Ok(());
        }
        let (_, name) = parse_snapshot_name(&r.toname)?;
        if let (true, Some(g)) = (force, r.fromguid) {
            let ds = self.dataset_mut(target)?;
            if let Some(i) = ds.snapshots.iter().position(|x| x.guid == g) {
                let freed: u64 = ds.snapshots.drain(i + 1..).map(|x| x.used).sum();
                self.pool_mut(target.pool())?.allocated -= freed;
            }
        }
        self.reserve(target.pool(), r.payload)?;
        let txg = self.next_txg(target.pool());
        self.guids.insert(r.toguid);
        r.offset = r.payload;
        let ds = self.dataset_mut(target)?;
        ds.partial = None;
        ds.head_txg = txg;
        ds.snapshots.push(Snap {
            name,
            guid: r.toguid,
            createtxg: txg,
            creation: r.creation,
            used: r.payload,
            holds: BTreeSet::new(),
        });
        Ok(())
    }
}

/// What a full stream of the `i`th snapshot carries in the model.
fn full_payload(ds: &Dataset, i: usize) -> u64 {
    ds.own_bytes + ds.snapshots[..=i].iter().map(|x| x.used).sum::<u64>()
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
            Err(ZfsError::Backend { backend: "sim", source }) if source.is::<StateError>()
        ));
        assert!(sim.pools().unwrap().is_empty());
    }

    #[test]
    fn streams_carry_guids_to_another_simulator() {
        let src = sim();
        let dir = tempfile::tempdir().unwrap();
        let dst = SimBackend::open(dir.path().join("pool.json")).unwrap();
        dst.add_pool("backup", 10 << 20).unwrap();
        let a = ds("tank/a");
        for n in ["s1", "s2", "s3"] {
            src.write_data(&a, 1000).unwrap();
            src.snapshot(std::slice::from_ref(&a), n, false).unwrap();
        }
        let target = ds("backup/a");
        let mut stream = Vec::new();
        let spec = SendSpec::Full {
            dataset: a.clone(),
            snapshot: "s1".into(),
            raw: false,
        };
        let n = src.send(&spec, &mut stream).unwrap();
        assert_eq!(Some(n), src.estimate(&spec).unwrap());
        dst.receive(&target, &RecvSpec::default(), &mut &stream[..])
            .unwrap();
        let incr = SendSpec::Incremental {
            dataset: a.clone(),
            from: SendBase::Snapshot("s1".into()),
            to: "s3".into(),
            intermediates: true,
            raw: false,
        };
        let mut stream = Vec::new();
        src.send(&incr, &mut stream).unwrap();
        // Cut inside the last snapshot's record: s2 lands, s3 is resumable.
        let cut = stream.len() - 10;
        assert!(matches!(
            dst.receive(&target, &RecvSpec::default(), &mut &stream[..cut]),
            Err(ZfsError::Incomplete { .. })
        ));
        assert_eq!(snaps(&dst, "backup/a").len(), 2);
        drop(dst);
        let dst = SimBackend::open(dir.path().join("pool.json")).unwrap();
        let token = dst.resume_token(&target).unwrap().expect("token");
        let mut rest = Vec::new();
        src.send(&SendSpec::Resume { token }, &mut rest).unwrap();
        dst.receive(&target, &RecvSpec::default(), &mut &rest[..])
            .unwrap();
        let key = |v: Vec<SnapshotInfo>| {
            v.into_iter()
                .map(|x| (x.name, x.guid, x.creation))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(snaps(&src, "tank/a")), key(snaps(&dst, "backup/a")));
        assert_eq!(dst.resume_token(&target).unwrap(), None);
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
