//! The local snapshot lifecycle: keep an inventory cache, take snapshots when
//! a tier is due, prune by the tiers. Runs on the last signed policy whether or
//! not NATS is up; it never touches the network.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use zdr_common::policy::{Class, Tiers};
use zdr_common::wire::{
    BookmarkInfo, DatasetInventory, Event, EventKind, FloorRefusal, InventoryChange, PoolInfo,
    PruneReplica, SnapshotInfo, RESTORE_HOLD_PREFIX,
};
use zdr_common::DatasetName;

use crate::audit::{AuditLog, Record};
use crate::floor::{self, Book, BookError, Operation};
use crate::retention::{self, KeepReason, Rules};
use crate::state::SignedPolicy;
use crate::zfs::{Backend, DatasetInfo, ZfsError};

/// Events wait here while NATS is down; the oldest go first when it overflows.
const MAX_QUEUED_EVENTS: usize = 10_000;

/// How old the pool capacity that heartbeats carry may be. A `zpool list`
/// per heartbeat was a steady load beside the ZFS work it reports on; what
/// this node changes itself (receives, destroys) is listed again at once.
const POOL_STATS_MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inventory {
    datasets: BTreeMap<DatasetName, (DatasetInfo, Vec<SnapshotInfo>)>,
    /// Listed with the datasets, and again where the lifecycle changes them.
    bookmarks: BTreeMap<DatasetName, Vec<BookmarkInfo>>,
    /// Changes not yet published as a delta.
    pending: Vec<InventoryChange>,
    /// Set when a delta cannot describe what changed (datasets came or went,
    /// or a publication failed): the next publication is a full inventory.
    need_full: bool,
    generation: u64,
    delta_seq: u64,
    last_rescan: i64,
}

/// What the next inventory publication carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Publication {
    /// A full inventory under this new generation.
    Full {
        generation: u64,
    },
    Delta {
        generation: u64,
        seq: u64,
        changes: Vec<InventoryChange>,
    },
    Nothing,
}

impl Inventory {
    /// The cached snapshots of `ds`; none for a dataset not listed.
    fn snapshots_of(&self, ds: &DatasetName) -> &[SnapshotInfo] {
        self.datasets
            .get(ds)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&[])
    }

    /// Decides the next publication and moves the counters on; `fresh_generation`
    /// is used when a full inventory is due.
    fn next_publication(&mut self, fresh_generation: u64) -> Publication {
        if self.need_full {
            self.need_full = false;
            self.pending.clear();
            self.generation = fresh_generation;
            self.delta_seq = 0;
            Publication::Full {
                generation: self.generation,
            }
        } else if !self.pending.is_empty() {
            self.delta_seq += 1;
            Publication::Delta {
                generation: self.generation,
                seq: self.delta_seq,
                changes: std::mem::take(&mut self.pending),
            }
        } else {
            Publication::Nothing
        }
    }
}

/// Snapshots inside streams in flight, counted: two streams may share one.
type InFlightSet = Arc<Mutex<HashMap<(DatasetName, String), usize>>>;

/// Keeps snapshots from pruning while a stream that reads them runs;
/// they are let go when this is dropped.
pub struct InFlight {
    set: InFlightSet,
    entries: Vec<(DatasetName, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut set = lock(&self.set);
        for e in self.entries.drain(..) {
            if let Some(n) = set.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    set.remove(&e);
                }
            }
        }
    }
}

pub struct Lifecycle {
    pub node: String,
    pub backend: Arc<dyn Backend>,
    pub audit: AuditLog,
    policy: RwLock<Option<SignedPolicy>>,
    inventory: Mutex<Inventory>,
    events: Mutex<VecDeque<Event>>,
    in_flight: InFlightSet,
    pool_stats: Mutex<Option<(Instant, Vec<PoolInfo>)>>,
    floor: Mutex<Floor>,
    /// The pools managed here; empty: every pool ([`Lifecycle::with_pools`]).
    pools: BTreeSet<String>,
}

/// The retention floor's book, where it is kept, and the refusals already
/// audited (a pass that plans the same destroy again is refused quietly).
#[derive(Default)]
struct Floor {
    book: Book,
    path: Option<PathBuf>,
    reported: HashSet<(String, String)>,
    /// Snapshots (`dataset@name`) known to carry [`floor::FLOOR_HOLD`].
    held: HashSet<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one pass did, for commands and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub taken: Vec<String>,
    pub destroyed: Vec<String>,
    pub errors: Vec<String>,
    /// Destroys the retention floor refused.
    pub refused: Vec<FloorRefusal>,
}

impl Lifecycle {
    pub fn new(node: String, backend: Arc<dyn Backend>, audit: AuditLog) -> Self {
        Lifecycle {
            node,
            backend,
            audit,
            policy: RwLock::new(None),
            inventory: Mutex::new(Inventory {
                need_full: true,
                ..Default::default()
            }),
            events: Mutex::new(VecDeque::new()),
            in_flight: Arc::default(),
            pool_stats: Mutex::new(None),
            floor: Mutex::default(),
            pools: BTreeSet::new(),
        }
    }

    /// Manages only these pools (the agent's `pools`): the others are never
    /// listed, so no snapshot, prune or floor hold of this node touches them.
    pub fn with_pools(mut self, pools: impl IntoIterator<Item = String>) -> Self {
        self.pools = pools.into_iter().collect();
        self
    }

    /// Whether `pool` is managed here.
    pub fn manages(&self, pool: &str) -> bool {
        self.pools.is_empty() || self.pools.contains(pool)
    }

    /// Loads the retention floor's book from `path` and keeps it there.
    pub fn keep_floor_at(&self, path: &Path) -> Result<(), BookError> {
        let book = Book::load(path)?;
        {
            let mut f = lock(&self.floor);
            f.book = book;
            f.path = Some(path.to_path_buf());
        }
        self.note_floor(crate::clock::now());
        Ok(())
    }

    /// Notes the policy's windows and every listed dataset's class in the
    /// floor's book, and saves it when that changed it.
    fn note_floor(&self, now: i64) {
        self.note_floor_after(now, |_| false);
    }

    /// Notes what a receive into the copy `ds` named (its source dataset
    /// and that dataset's class), then the policy's windows and every
    /// listed dataset's class, saving the book. From then on the copy is in
    /// the class [`floor::replica_class`] gives under this node's own policy.
    pub fn note_copy(&self, ds: &DatasetName, source: &DatasetName, named: Option<&str>, now: i64) {
        self.note_floor_after(now, |book| {
            book.note_replica(ds.as_str(), source.as_str(), named)
        });
    }

    /// Applies `first` to the book (true when it changed it), then notes the
    /// floor and saves the book if either changed it.
    fn note_floor_after(&self, now: i64, first: impl FnOnce(&mut Book) -> bool) {
        let policy = self.policy();
        let classes: Vec<(DatasetName, Option<String>)> = match &policy {
            None => Vec::new(),
            Some(p) => lock(&self.inventory)
                .datasets
                .values()
                .map(|(info, _)| {
                    let class = self.class_of(p, info).map(|(n, _)| n);
                    (info.name.clone(), class)
                })
                .collect(),
        };
        let mut f = lock(&self.floor);
        let mut changed = first(&mut f.book);
        if let Some(policy) = &policy {
            let policy = &policy.bundle.policy;
            let windows = policy
                .classes
                .iter()
                .map(|(n, c)| (n.as_str(), c.immutable_for.secs()));
            changed |= f.book.note_windows(windows, now);
            for (ds, own) in classes {
                let copy = f
                    .book
                    .replica(ds.as_str())
                    .and_then(|r| floor::replica_class(policy, r));
                let class = floor::longer(policy, own.as_deref(), copy.as_deref());
                changed |= f.book.note_class(ds.as_str(), class, now);
            }
        }
        if let (true, Some(path)) = (changed, &f.path) {
            let saved = serde_json::to_vec(&f.book)
                .map_err(std::io::Error::other)
                .and_then(|raw| crate::state::write_atomic(path, &raw));
            if let Err(e) = saved {
                warn!(error = %e, path = %path.display(), "saving the retention floor's book failed");
            }
        }
    }

    /// The retention floor's word on a destructive operation on `ds`, whose
    /// snapshots are `snaps`: every destroy, rollback and release of the
    /// floor's hold asks here first, whoever signed it. A refusal is logged,
    /// audited and raised as an event (once per snapshot and operation).
    pub fn floor_vet(
        &self,
        ds: &DatasetName,
        snaps: &[SnapshotInfo],
        op: Operation<'_>,
        actor: &str,
        now: i64,
    ) -> Result<(), FloorRefusal> {
        let refusal = {
            let f = lock(&self.floor);
            match floor::decide(&f.book, ds.as_str(), snaps, op, now) {
                Ok(()) => return Ok(()),
                Err(r) => r,
            }
        };
        let fresh = {
            let mut f = lock(&self.floor);
            let key = |h: &zdr_common::wire::FloorHit| {
                (
                    format!("{ds}@{}", h.name),
                    format!("{:?}", refusal.operation),
                )
            };
            let fresh = refusal
                .snapshots
                .iter()
                .any(|h| !f.reported.contains(&key(h)));
            f.reported.extend(refusal.snapshots.iter().map(key));
            fresh
        };
        let why = floor::describe(&refusal);
        if fresh {
            warn!(dataset = %ds, actor, "{why}");
            let targets: Vec<String> = refusal
                .snapshots
                .iter()
                .map(|h| format!("{ds}@{}", h.name))
                .collect();
            let record = Record {
                at: now,
                actor,
                action: match op {
                    Operation::ReceiveForce(_) => "receive -F",
                    Operation::ReleaseHold(_) => "release",
                    _ => "destroy",
                },
                target: &targets.join(" "),
                why: &why,
                outcome: "refused",
                policy_revision: self.policy().map(|p| p.bundle.revision),
                created: None,
            };
            if let Err(e) = self.audit.write(&record) {
                warn!(error = %e, "audit log write failed for a refusal; refused all the same");
            }
            self.event(EventKind::FloorRefused(refusal.clone()), now);
        }
        Err(refusal)
    }

    /// Installs a verified policy. True when its revision differs from the
    /// one before; then classes may have changed, so a full inventory follows.
    pub fn install_policy(&self, policy: SignedPolicy) -> bool {
        let revision = policy.bundle.revision;
        let before = self
            .policy
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(policy)
            .map(|p| p.bundle.revision);
        let changed = before != Some(revision);
        if changed {
            self.request_full_inventory();
            self.note_floor(crate::clock::now());
        }
        changed
    }

    /// The next publication is a full inventory.
    pub fn request_full_inventory(&self) {
        lock(&self.inventory).need_full = true;
    }

    /// Whether the last full listing is at least `every` seconds old.
    pub fn rescan_due(&self, now: i64, every: i64) -> bool {
        now - lock(&self.inventory).last_rescan >= every
    }

    /// The published inventory's generation and delta sequence, for heartbeats.
    pub fn inventory_position(&self) -> (u64, u64) {
        let inv = lock(&self.inventory);
        (inv.generation, inv.delta_seq)
    }

    /// Takes what is to be published next; `fresh_generation` names a full
    /// inventory if one is due. A publication that fails must be followed by
    /// [`Lifecycle::request_full_inventory`].
    pub fn next_publication(&self, fresh_generation: u64) -> Publication {
        lock(&self.inventory).next_publication(fresh_generation)
    }

    /// The oldest event waiting for publication.
    pub fn pop_event(&self) -> Option<Event> {
        lock(&self.events).pop_front()
    }

    /// Puts back an event whose publication failed, first in line.
    pub fn unpop_event(&self, event: Event) {
        lock(&self.events).push_front(event);
    }

    /// Marks the snapshots a stream of `ds` reads as in flight, found in the
    /// inventory cache by [`retention::in_stream`]; pruning spares them until
    /// the returned guard is dropped. Blocks while a prune destroys a
    /// snapshot: call it from a blocking thread.
    pub fn stream_in_flight(
        &self,
        ds: &DatasetName,
        from: Option<&str>,
        to: &str,
        intermediates: bool,
    ) -> InFlight {
        let names = {
            let inv = lock(&self.inventory);
            retention::in_stream(inv.snapshots_of(ds), from, to, intermediates)
        };
        let entries: Vec<(DatasetName, String)> =
            names.into_iter().map(|n| (ds.clone(), n)).collect();
        let mut set = lock(&self.in_flight);
        for e in &entries {
            *set.entry(e.clone()).or_default() += 1;
        }
        InFlight {
            set: self.in_flight.clone(),
            entries,
        }
    }

    /// Marks what a resumed stream reads as in flight: the snapshot its
    /// token names and, for an incremental, the base with the token's GUID.
    pub fn resume_in_flight(&self, ds: &DatasetName, to: &str, fromguid: Option<u64>) -> InFlight {
        let from = fromguid.and_then(|g| {
            let inv = lock(&self.inventory);
            let snaps = inv.snapshots_of(ds);
            snaps.iter().find(|s| s.guid == g).map(|s| s.name.clone())
        });
        self.stream_in_flight(ds, from.as_deref(), to, false)
    }

    fn in_flight_of(&self, ds: &DatasetName) -> HashSet<String> {
        lock(&self.in_flight)
            .keys()
            .filter(|(d, _)| d == ds)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn policy(&self) -> Option<SignedPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn event(&self, kind: EventKind, now: i64) {
        let mut q = lock(&self.events);
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
        }
        q.push_back(Event {
            node: self.node.clone(),
            at: now,
            kind,
        });
    }

    fn class_of(&self, policy: &SignedPolicy, info: &DatasetInfo) -> Option<(String, Class)> {
        policy
            .bundle
            .policy
            .class_for(&info.name, info.class_property.as_deref())
            .map(|(n, c)| (n.to_string(), c.clone()))
    }

    /// Lists everything again and records what changed.
    pub fn rescan(&self, now: i64) -> Result<(), ZfsError> {
        let class_property = self
            .policy()
            .map(|p| p.bundle.policy.class_property.clone())
            .unwrap_or_else(|| "zdr:class".into());
        let mut listed = self.backend.list_datasets(&class_property)?;
        listed.retain(|d| self.manages(d.name.pool()));
        let mut fresh = BTreeMap::new();
        let mut marks = BTreeMap::new();
        for info in listed {
            let listing = self
                .backend
                .list_snapshots(&info.name)
                .and_then(|s| Ok((s, self.backend.list_bookmarks(&info.name)?)));
            let (snaps, bookmarks) = match listing {
                Ok(l) => l,
                // Destroyed between the listings.
                Err(ZfsError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            marks.insert(info.name.clone(), bookmarks);
            fresh.insert(info.name.clone(), (info, snaps));
        }
        let mut inv = lock(&self.inventory);
        if fresh.keys().ne(inv.datasets.keys()) {
            inv.need_full = true;
        }
        for (name, (_, snaps)) in &fresh {
            let before = inv
                .datasets
                .get(name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            diff_into(&mut inv.pending, name, &before, snaps);
        }
        for (name, after) in &marks {
            let before = inv.bookmarks.get(name).cloned().unwrap_or_default();
            diff_bookmarks_into(&mut inv.pending, name, &before, after);
        }
        inv.datasets = fresh;
        inv.bookmarks = marks;
        inv.last_rescan = now;
        drop(inv);
        self.note_floor(now);
        Ok(())
    }

    /// From the last listing; a dataset not listed yet counts as encrypted,
    /// so that it is sent raw.
    pub fn is_encrypted(&self, ds: &DatasetName) -> bool {
        lock(&self.inventory)
            .datasets
            .get(ds)
            .is_none_or(|(info, _)| info.encrypted)
    }

    /// Pool capacity, from `zpool list` at most `POOL_STATS_MAX_AGE` ago.
    pub fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError> {
        if let Some((at, pools)) = &*lock(&self.pool_stats) {
            if at.elapsed() < POOL_STATS_MAX_AGE {
                return Ok(pools.clone());
            }
        }
        let mut pools = self.backend.pools()?;
        pools.retain(|p| self.manages(&p.name));
        *lock(&self.pool_stats) = Some((Instant::now(), pools.clone()));
        Ok(pools)
    }

    /// After a receive: relists the dataset, or everything when it is new.
    pub fn dataset_changed(&self, ds: &DatasetName, now: i64) {
        *lock(&self.pool_stats) = None;
        let known = lock(&self.inventory).datasets.contains_key(ds);
        if known {
            self.refresh(ds);
        } else if let Err(e) = self.rescan(now) {
            warn!(dataset = %ds, error = %e, "relisting after a new dataset failed");
        }
    }

    /// Takes a listing of one dataset's snapshots made by the caller after
    /// it changed them, so the dataset is not listed twice.
    pub fn dataset_listed(&self, ds: &DatasetName, snaps: Vec<SnapshotInfo>, now: i64) {
        *lock(&self.pool_stats) = None;
        if !self.replace_listing(ds, snaps) {
            if let Err(e) = self.rescan(now) {
                warn!(dataset = %ds, error = %e, "relisting after a new dataset failed");
            }
        }
    }

    /// Lists one dataset's snapshots again after we changed them.
    fn refresh(&self, ds: &DatasetName) {
        match self.backend.list_snapshots(ds) {
            Ok(snaps) => {
                self.replace_listing(ds, snaps);
            }
            Err(e) => warn!(dataset = %ds, error = %e, "relisting snapshots failed"),
        }
    }

    /// Lists one dataset's bookmarks again after we changed them.
    fn refresh_bookmarks(&self, ds: &DatasetName) {
        let marks = match self.backend.list_bookmarks(ds) {
            Ok(m) => m,
            Err(e) => {
                warn!(dataset = %ds, error = %e, "relisting bookmarks failed");
                return;
            }
        };
        let mut inv = lock(&self.inventory);
        let inv = &mut *inv;
        let old = inv.bookmarks.entry(ds.clone()).or_default();
        diff_bookmarks_into(&mut inv.pending, ds, old, &marks);
        *old = marks;
    }

    /// False if the dataset is not in the inventory yet.
    fn replace_listing(&self, ds: &DatasetName, snaps: Vec<SnapshotInfo>) -> bool {
        let mut inv = lock(&self.inventory);
        let inv = &mut *inv;
        let Some((_, old)) = inv.datasets.get_mut(ds) else {
            return false;
        };
        diff_into(&mut inv.pending, ds, old, &snaps);
        *old = snaps;
        true
    }

    /// Protected datasets with their class, from the cache.
    fn protected(
        &self,
        policy: &SignedPolicy,
    ) -> Vec<(DatasetInfo, String, Class, Vec<SnapshotInfo>)> {
        let inv = lock(&self.inventory);
        inv.datasets
            .values()
            .filter_map(|(info, snaps)| {
                self.class_of(policy, info)
                    .map(|(n, c)| (info.clone(), n, c, snaps.clone()))
            })
            .collect()
    }

    /// Whether a restore is landing into `ds`: its newest snapshot carries a
    /// restore's hold until the restore ends (see [`RESTORE_HOLD_PREFIX`]).
    fn restoring(&self, ds: &DatasetName, snaps: &[SnapshotInfo]) -> bool {
        let Some(newest) = snaps.iter().max_by_key(|s| s.createtxg) else {
            return false;
        };
        newest.userrefs > 0
            && self
                .backend
                .holds(ds, &newest.name)
                .is_ok_and(|tags| tags.iter().any(|t| t.starts_with(RESTORE_HOLD_PREFIX)))
    }

    /// Takes the snapshots that are due (all protected datasets with `force`).
    pub fn snapshot_pass(&self, now: i64, force: bool) -> PassReport {
        let mut report = PassReport::default();
        let Some(policy) = self.policy() else {
            return report;
        };
        let prefix = &policy.bundle.policy.snapshot_prefix;
        let due: Vec<DatasetName> = self
            .protected(&policy)
            .into_iter()
            .filter(|(info, _, _, snaps)| !self.restoring(&info.name, snaps))
            .filter(|(_, _, class, snaps)| {
                let smallest = class
                    .tiers
                    .keys()
                    .next()
                    .map(|p| p.0.secs())
                    .unwrap_or(3600);
                let newest = snaps
                    .iter()
                    .filter(|s| retention::is_ours(&s.name, prefix))
                    .max_by_key(|s| s.createtxg);
                force || retention::snapshot_due(newest, smallest, now)
            })
            .map(|(info, ..)| info.name)
            .collect();
        if due.is_empty() {
            return report;
        }
        let base = retention::snapshot_name(prefix, now);
        let mut by_pool: BTreeMap<&str, Vec<DatasetName>> = BTreeMap::new();
        for ds in &due {
            by_pool.entry(ds.pool()).or_default().push(ds.clone());
        }
        let mut taken: Vec<(DatasetName, String)> = Vec::new();
        // One atomic call per pool (ZFS cannot span pools); if it fails, fall
        // back per dataset so one bad dataset cannot hold the others back.
        for group in by_pool.values() {
            match self.take_with_unique_name(group, &base) {
                Ok(name) => taken.extend(group.iter().map(|d| (d.clone(), name.clone()))),
                Err(_) if group.len() > 1 => {
                    for ds in group {
                        match self.take_with_unique_name(std::slice::from_ref(ds), &base) {
                            Ok(name) => taken.push((ds.clone(), name)),
                            Err(e) => self.backend_error(&mut report, "snapshot", ds, &e, now),
                        }
                    }
                }
                Err(e) => self.backend_error(&mut report, "snapshot", &group[0], &e, now),
            }
        }
        if !taken.is_empty() {
            for (ds, _) in &taken {
                self.refresh(ds);
            }
            self.floor_holds_pass(now);
        }
        for (ds, name) in taken {
            info!(dataset = %ds, snapshot = %name, "snapshot taken");
            self.event(
                EventKind::SnapshotTaken {
                    dataset: ds.to_string(),
                    snapshot: name.clone(),
                },
                now,
            );
            report.taken.push(format!("{ds}@{name}"));
        }
        report
    }

    fn take_with_unique_name(
        &self,
        datasets: &[DatasetName],
        base: &str,
    ) -> Result<String, ZfsError> {
        let mut name = base.to_string();
        for n in 2..10 {
            match self.backend.snapshot(datasets, &name, false) {
                Err(ZfsError::Exists { .. }) => name = format!("{base}-{n}"),
                other => return other.map(|_| name),
            }
        }
        self.backend.snapshot(datasets, &name, false).map(|_| name)
    }

    fn backend_error(
        &self,
        report: &mut PassReport,
        op: &str,
        ds: &DatasetName,
        e: &ZfsError,
        now: i64,
    ) {
        warn!(dataset = %ds, error = %e, "{op} failed");
        report.errors.push(format!("{op} {ds}: {e}"));
        self.event(
            EventKind::BackendError {
                operation: format!("{op} {ds}"),
                message: e.to_string(),
            },
            now,
        );
    }

    /// Puts the floor's hold on our snapshots inside their window and takes
    /// it off those past it, so that retention can then destroy them.
    pub fn floor_holds_pass(&self, now: i64) {
        let Some(policy) = self.policy() else { return };
        let names: Vec<DatasetName> = lock(&self.inventory).datasets.keys().cloned().collect();
        for ds in names {
            self.holds_of(&ds, &policy.bundle.policy.snapshot_prefix, now);
        }
    }

    /// [`Self::floor_holds_pass`] for one dataset, from the inventory cache
    /// (a receive calls it once it listed what landed).
    pub fn floor_holds_of(&self, ds: &DatasetName, now: i64) {
        if let Some(policy) = self.policy() {
            self.holds_of(ds, &policy.bundle.policy.snapshot_prefix, now);
        }
    }

    fn holds_of(&self, ds: &DatasetName, prefix: &str, now: i64) {
        let snaps = lock(&self.inventory).snapshots_of(ds).to_vec();
        let (hold, release) = {
            let f = lock(&self.floor);
            let held = |s: &SnapshotInfo| {
                f.held.contains(&format!("{ds}@{}", s.name))
                    || (s.userrefs > 0
                        && !f.book.inside(ds.as_str(), s.creation, now)
                        && self
                            .backend
                            .holds(ds, &s.name)
                            .is_ok_and(|t| t.iter().any(|t| t == floor::FLOOR_HOLD)))
            };
            floor::hold_changes(
                &f.book,
                ds.as_str(),
                &snaps,
                |n| retention::is_ours(n, prefix),
                held,
                now,
            )
        };
        let changes = hold.into_iter().map(|n| (n, true));
        for (name, held) in changes.chain(release.into_iter().map(|n| (n, false))) {
            let done = match held {
                true => self.backend.hold(ds, &name, floor::FLOOR_HOLD),
                false => self.backend.release(ds, &name, floor::FLOOR_HOLD),
            };
            let changed = match done {
                Ok(()) => 1,
                // Already so: held before, or released by someone else.
                Err(ZfsError::Exists { .. }) if held => 0,
                Err(ZfsError::NotFound { .. }) if !held => 0,
                Err(e) => {
                    warn!(snapshot = %format!("{ds}@{name}"), error = %e, held, "changing the floor's hold failed");
                    continue;
                }
            };
            if !held {
                info!(snapshot = %format!("{ds}@{name}"), "out of the immutability window; the floor's hold is released");
            }
            self.floor_held(ds, &name, held, changed);
        }
    }

    /// Records whether a snapshot carries the floor's hold, and moves its
    /// cached hold count by `changed`.
    fn floor_held(&self, ds: &DatasetName, name: &str, held: bool, changed: u32) {
        let key = format!("{ds}@{name}");
        let mut f = lock(&self.floor);
        if held {
            f.held.insert(key);
        } else {
            f.held.remove(&key);
        }
        drop(f);
        let mut inv = lock(&self.inventory);
        let snap = inv
            .datasets
            .get_mut(ds)
            .and_then(|(_, s)| s.iter_mut().find(|s| s.name == name));
        if let Some(s) = snap {
            s.userrefs = match held {
                true => s.userrefs + changed,
                false => s.userrefs.saturating_sub(changed),
            };
        }
    }

    /// Destroys what the tiers no longer keep. Each destroy is audited first.
    pub fn prune_pass(&self, now: i64, actor: &str) -> PassReport {
        let mut report = PassReport::default();
        let Some(policy) = self.policy() else {
            return report;
        };
        self.floor_holds_pass(now);
        for (info, class_name, class, snaps) in self.protected(&policy) {
            let rules = Rules {
                prefix: policy.bundle.policy.snapshot_prefix.clone(),
                tiers: class.tiers.clone(),
                immutable_for_secs: class.immutable_for.secs(),
                protected_guids: HashSet::new(),
            };
            let reason = Reason {
                actor,
                why: format!(
                    "retention: class {class_name} keeps {}; bookmarked (#same name) first, \
                     as a common base for targets that keep it",
                    describe_tiers(&class.tiers)
                ),
                revision: Some(policy.bundle.revision),
                now,
                bookmark_first: true,
            };
            let destroyed = report.destroyed.len();
            if !self.prune(&info.name, &snaps, &rules, &reason, &mut report) {
                break;
            }
            if report.destroyed.len() > destroyed {
                self.refresh_bookmarks(&info.name);
            }
            if !self.prune_bookmarks(
                &info.name,
                &class.tiers,
                &rules.prefix,
                &reason,
                &mut report,
            ) {
                break;
            }
        }
        report
    }

    /// Destroys the bookmarks of ours that [`retention::stale_bookmarks`]
    /// lets go, from the cache, each audited first. False if the audit log
    /// cannot be written.
    fn prune_bookmarks(
        &self,
        ds: &DatasetName,
        tiers: &Tiers,
        prefix: &str,
        reason: &Reason<'_>,
        report: &mut PassReport,
    ) -> bool {
        let stale = {
            let inv = lock(&self.inventory);
            let snaps = inv.snapshots_of(ds);
            let marks = inv.bookmarks.get(ds).map(Vec::as_slice).unwrap_or(&[]);
            retention::stale_bookmarks(marks, snaps, tiers, prefix)
        };
        if stale.is_empty() {
            return true;
        }
        let why = format!(
            "retention: bookmark older than the oldest snapshot by more than the longest tier span ({}s)",
            retention::longest_span(tiers)
        );
        for name in &stale {
            let target = format!("{ds}#{name}");
            let record = |outcome| Record {
                at: reason.now,
                actor: reason.actor,
                action: "destroy",
                target: &target,
                why: &why,
                outcome,
                policy_revision: reason.revision,
                created: None,
            };
            if let Err(e) = self.audit.write(&record("intent")) {
                warn!(error = %e, path = %self.audit.path().display(), "audit log write failed; not destroying anything");
                report.errors.push(format!("audit log: {e}"));
                return false;
            }
            match self.backend.destroy_bookmark(ds, name) {
                Ok(()) => {
                    let _ = self.audit.write(&record("done"));
                    info!(bookmark = %target, "pruned");
                }
                Err(e) => {
                    let _ = self.audit.write(&record(&format!("failed: {e}")));
                    self.backend_error(report, "destroy bookmark", ds, &e, reason.now);
                }
            }
        }
        self.refresh_bookmarks(ds);
        true
    }

    /// Applies a replication task's retention to its copy here, listed afresh
    /// (the holds that protect the base must be current).
    pub fn prune_replica(&self, cmd: &PruneReplica, now: i64, actor: &str) -> PassReport {
        let mut report = PassReport::default();
        let ds = match DatasetName::parse(&cmd.dataset) {
            Ok(ds) => ds,
            Err(e) => {
                report.errors.push(format!("dataset: {e}"));
                return report;
            }
        };
        let Some(policy) = self.policy() else {
            report
                .errors
                .push("no signed policy yet: the snapshot prefix is unknown".into());
            return report;
        };
        let snaps = match self.backend.list_snapshots(&ds) {
            Ok(s) => s,
            Err(e) => {
                self.backend_error(&mut report, "list", &ds, &e, now);
                return report;
            }
        };
        let rules = Rules {
            prefix: policy.bundle.policy.snapshot_prefix.clone(),
            tiers: cmd.tiers.clone(),
            immutable_for_secs: cmd.immutable_for_secs,
            protected_guids: snaps
                .iter()
                .filter(|s| cmd.keep.contains(&s.name))
                .map(|s| s.guid)
                .collect(),
        };
        let reason = Reason {
            actor,
            why: format!(
                "retention: task {} keeps {} on its copy",
                cmd.task,
                describe_tiers(&cmd.tiers)
            ),
            revision: Some(policy.bundle.revision),
            now,
            bookmark_first: false,
        };
        if !self.prune(&ds, &snaps, &rules, &reason, &mut report) {
            return report;
        }
        if report.destroyed.is_empty() {
            self.dataset_listed(&ds, snaps, now);
        }
        report
    }

    /// Destroys what `rules` do not keep of `ds`, auditing each destroy
    /// first. False if the audit log cannot be written: then nothing more
    /// may be destroyed.
    fn prune(
        &self,
        ds: &DatasetName,
        snaps: &[SnapshotInfo],
        rules: &Rules,
        reason: &Reason<'_>,
        report: &mut PassReport,
    ) -> bool {
        let Reason {
            actor,
            ref why,
            revision,
            now,
            bookmark_first,
        } = *reason;
        let plan = retention::plan_sparing(snaps, rules, &self.in_flight_of(ds), now);
        for (snap, reasons) in &plan.keep {
            if reasons == &[KeepReason::InFlight] {
                info!(snapshot = %format!("{ds}@{snap}"), "not pruned: {}", KeepReason::InFlight);
            }
        }
        if plan.destroy.is_empty() {
            return true;
        }
        let kept: HashSet<String> =
            match self.floor_vet(ds, snaps, Operation::Destroy(&plan.destroy), actor, now) {
                Ok(()) => HashSet::new(),
                Err(r) => {
                    let names = r.snapshots.iter().map(|h| h.name.clone()).collect();
                    report.refused.push(r);
                    names
                }
            };
        let creation: HashMap<&str, i64> = snaps
            .iter()
            .map(|s| (s.name.as_str(), s.creation))
            .collect();
        for snap in plan.destroy.iter().filter(|s| !kept.contains(*s)) {
            let target = format!("{ds}@{snap}");
            let created = creation.get(snap.as_str()).copied();
            let record = |outcome| Record {
                at: now,
                actor,
                action: "destroy",
                target: &target,
                why,
                outcome,
                policy_revision: revision,
                created,
            };
            if let Err(e) = self.audit.write(&record("intent")) {
                warn!(error = %e, path = %self.audit.path().display(), "audit log write failed; not destroying anything");
                report.errors.push(format!("audit log: {e}"));
                return false;
            }
            if bookmark_first {
                match self.backend.bookmark(ds, snap, snap) {
                    // Left by an earlier attempt at this destroy.
                    Ok(()) | Err(ZfsError::Exists { .. }) => {}
                    Err(e) => {
                        let _ = self.audit.write(&record(&format!("failed: bookmark: {e}")));
                        self.backend_error(report, "bookmark", ds, &e, now);
                        continue;
                    }
                }
            }
            // Checked again, and held through the destroy: a stream that
            // registered after the plan was made keeps its snapshot, and one
            // registering now waits until this snapshot is gone.
            let gate = lock(&self.in_flight);
            if gate.contains_key(&(ds.clone(), snap.clone())) {
                drop(gate);
                let _ = self
                    .audit
                    .write(&record("skipped: a stream started reading it"));
                info!(snapshot = %target, "not pruned: {}", KeepReason::InFlight);
                continue;
            }
            let destroyed = self.backend.destroy_snapshot(ds, snap);
            drop(gate);
            match destroyed {
                Ok(()) => {
                    let _ = self.audit.write(&record("done"));
                    info!(snapshot = %target, "pruned");
                    self.event(
                        EventKind::SnapshotPruned {
                            dataset: ds.to_string(),
                            snapshot: snap.clone(),
                            reason: why.clone(),
                        },
                        now,
                    );
                    report.destroyed.push(target);
                }
                Err(e) => {
                    let failed = format!("failed: {e}");
                    let _ = self.audit.write(&record(&failed));
                    self.backend_error(report, "destroy", ds, &e, now);
                }
            }
        }
        self.dataset_changed(ds, now);
        true
    }

    /// Per dataset: name, class, snapshot count and newest creation, read
    /// from the cache without copying a snapshot list (for the metrics).
    pub fn dataset_summaries(&self) -> Vec<crate::telemetry::DatasetSummary> {
        let policy = self.policy();
        let inv = lock(&self.inventory);
        inv.datasets
            .values()
            .map(|(info, snaps)| crate::telemetry::DatasetSummary {
                dataset: info.name.to_string(),
                class: policy
                    .as_ref()
                    .and_then(|p| self.class_of(p, info))
                    .map(|(n, _)| n),
                snapshots: snaps.len(),
                newest_creation: snaps.iter().map(|s| s.creation).max(),
                used: info.used,
            })
            .collect()
    }

    /// The cache as wire inventory.
    pub fn snapshot_inventory(&self) -> Vec<DatasetInventory> {
        let policy = self.policy();
        let inv = lock(&self.inventory);
        inv.datasets
            .values()
            .map(|(info, snaps)| DatasetInventory {
                dataset: info.name.to_string(),
                guid: info.guid,
                used: info.used,
                available: info.available,
                class: policy
                    .as_ref()
                    .and_then(|p| self.class_of(p, info))
                    .map(|(n, _)| n),
                snapshots: snaps.clone(),
                bookmarks: inv.bookmarks.get(&info.name).cloned().unwrap_or_default(),
                encrypted: info.encrypted,
            })
            .collect()
    }
}

/// Who prunes, why, under which policy revision and when: what each
/// destroy's audit record and event carry.
struct Reason<'a> {
    actor: &'a str,
    why: String,
    revision: Option<u64>,
    now: i64,
    /// The source bookmarks its own snapshots before it destroys them.
    bookmark_first: bool,
}

fn describe_tiers(tiers: &Tiers) -> String {
    tiers
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends what turned `before` into `after` (matched by GUID).
fn diff_into(
    out: &mut Vec<InventoryChange>,
    ds: &DatasetName,
    before: &[SnapshotInfo],
    after: &[SnapshotInfo],
) {
    let old: HashSet<u64> = before.iter().map(|s| s.guid).collect();
    let new: HashSet<u64> = after.iter().map(|s| s.guid).collect();
    for s in before.iter().filter(|s| !new.contains(&s.guid)) {
        out.push(InventoryChange::SnapshotDestroyed {
            dataset: ds.to_string(),
            name: s.name.clone(),
            guid: s.guid,
        });
    }
    for s in after.iter().filter(|s| !old.contains(&s.guid)) {
        out.push(InventoryChange::SnapshotCreated {
            dataset: ds.to_string(),
            snapshot: s.clone(),
        });
    }
}

/// Appends the bookmarks that came and went (matched by name and GUID).
fn diff_bookmarks_into(
    out: &mut Vec<InventoryChange>,
    ds: &DatasetName,
    before: &[BookmarkInfo],
    after: &[BookmarkInfo],
) {
    let key = |b: &BookmarkInfo| (b.name.clone(), b.guid);
    let old: HashSet<(String, u64)> = before.iter().map(key).collect();
    let new: HashSet<(String, u64)> = after.iter().map(key).collect();
    for b in before.iter().filter(|b| !new.contains(&key(b))) {
        out.push(InventoryChange::BookmarkDestroyed {
            dataset: ds.to_string(),
            name: b.name.clone(),
            guid: b.guid,
        });
    }
    for b in after.iter().filter(|b| !old.contains(&key(b))) {
        out.push(InventoryChange::BookmarkCreated {
            dataset: ds.to_string(),
            bookmark: b.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::sim::SimBackend;

    fn created(name: &str) -> InventoryChange {
        InventoryChange::SnapshotCreated {
            dataset: "tank/a".into(),
            snapshot: SnapshotInfo {
                name: name.into(),
                guid: 1,
                createtxg: 1,
                creation: 0,
                used: 0,
                userrefs: 0,
            },
        }
    }

    #[test]
    fn publications_go_full_then_deltas_in_sequence() {
        let mut inv = Inventory {
            need_full: true,
            pending: vec![created("old")],
            ..Default::default()
        };
        assert_eq!(inv.next_publication(7), Publication::Full { generation: 7 });
        assert_eq!(inv.next_publication(8), Publication::Nothing);
        inv.pending.push(created("s1"));
        assert_eq!(
            inv.next_publication(9),
            Publication::Delta {
                generation: 7,
                seq: 1,
                changes: vec![created("s1")]
            }
        );
        inv.pending.push(created("s2"));
        let Publication::Delta { seq, .. } = inv.next_publication(9) else {
            panic!("a delta was due");
        };
        assert_eq!(seq, 2);
        inv.need_full = true;
        assert_eq!(
            inv.next_publication(10),
            Publication::Full { generation: 10 }
        );
        assert_eq!(inv.delta_seq, 0);
    }

    #[test]
    fn an_agent_with_pools_lists_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let sim = SimBackend::new();
        for pool in ["src", "dst"] {
            sim.add_pool(pool, 1 << 30).unwrap();
            sim.create_dataset(&DatasetName::parse(&format!("{pool}/db")).unwrap())
                .unwrap();
        }
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit).with_pools(["src".to_string()]);
        lc.rescan(0).unwrap();
        let listed: Vec<String> = lock(&lc.inventory)
            .datasets
            .keys()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(listed, ["src", "src/db"]);
        let pools: Vec<String> = lc.pools().unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(pools, ["src"]);
        assert!(lc.manages("src") && !lc.manages("dst"));
    }

    #[test]
    fn in_flight_snapshots_are_released_when_the_last_stream_ends() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let lc = Lifecycle::new("n".into(), Arc::new(SimBackend::new()), audit);
        let ds = DatasetName::parse("tank/a").unwrap();
        let first = lc.stream_in_flight(&ds, Some("s1"), "s3", false);
        let second = lc.stream_in_flight(&ds, None, "s3", false);
        assert_eq!(
            lc.in_flight_of(&ds),
            HashSet::from(["s1".to_string(), "s3".to_string()])
        );
        drop(first);
        assert_eq!(lc.in_flight_of(&ds), HashSet::from(["s3".to_string()]));
        let other = DatasetName::parse("tank/b").unwrap();
        assert!(lc.in_flight_of(&other).is_empty());
        drop(second);
        assert!(lc.in_flight_of(&ds).is_empty());
    }

    #[test]
    fn a_full_inventory_once_and_rescans_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let lc = Lifecycle::new("n".into(), Arc::new(SimBackend::new()), audit);
        assert!(matches!(lc.next_publication(1), Publication::Full { .. }));
        assert_eq!(lc.next_publication(2), Publication::Nothing);
        assert!(lc.rescan_due(300, 300));
        lc.rescan(300).unwrap();
        assert!(!lc.rescan_due(599, 300));
        assert!(lc.rescan_due(600, 300));
    }

    fn policy() -> SignedPolicy {
        windowed(1, "0s")
    }

    /// The test policy at `revision`, with class `fast`'s window `immutable_for`.
    fn windowed(revision: u64, immutable_for: &str) -> SignedPolicy {
        let policy = serde_json::from_value(serde_json::json!({
            "version": 1,
            "sites": { "site-a": {} },
            "nodes": { "n": { "site": "site-a", "media": "ssd" } },
            "classes": {
                "fast": { "tiers": { "1h": 1 }, "rpo": "2h", "rto": "1h", "immutable_for": immutable_for }
            },
            "datasets": [{ "match": "tank/a", "class": "fast" }]
        }))
        .unwrap();
        SignedPolicy {
            bundle: zdr_common::wire::PolicyBundle {
                revision,
                issued_at: 0,
                source_digest: String::new(),
                policy,
            },
            kid: "coordinator".into(),
            epoch: 1,
            exp: i64::MAX,
            raw: Vec::new(),
        }
    }

    /// `tank/a` with `zdr_1..zdr_4` in a simulated pool, and an audit log.
    fn four_snapshots() -> (tempfile::TempDir, AuditLog, SimBackend, DatasetName) {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let sim = SimBackend::new();
        sim.add_pool("tank", 1 << 30).unwrap();
        let ds = DatasetName::parse("tank/a").unwrap();
        sim.create_dataset(&ds).unwrap();
        for name in ["zdr_1", "zdr_2", "zdr_3", "zdr_4"] {
            sim.snapshot(std::slice::from_ref(&ds), name, false)
                .unwrap();
        }
        (dir, audit, sim, ds)
    }

    #[test]
    fn a_copy_keeps_what_the_coordinator_says_a_restore_reads() {
        let (_dir, audit, sim, ds) = four_snapshots();
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit);
        assert!(lc.install_policy(policy()));
        let now = crate::clock::now();
        let mut cmd = PruneReplica {
            dataset: "tank/a".into(),
            task: "t".into(),
            tiers: serde_json::from_value(serde_json::json!({ "1h": 1 })).unwrap(),
            immutable_for_secs: 0,
            keep: vec!["zdr_2".into()],
        };
        // The hour's first (zdr_1) is the tier's; zdr_2 is a restore's.
        let r = lc.prune_replica(&cmd, now, "test");
        assert_eq!(r.destroyed, ["tank/a@zdr_3"], "{r:?}");
        cmd.keep.clear();
        let r = lc.prune_replica(&cmd, now, "test");
        assert_eq!(r.destroyed, ["tank/a@zdr_2"], "{r:?}");
        let left: Vec<String> = lc
            .backend
            .list_snapshots(&ds)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(left, ["zdr_1", "zdr_4"]);
    }

    #[test]
    fn prune_spares_what_a_stream_in_flight_reads() {
        let (dir, audit, sim, ds) = four_snapshots();
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit);
        assert!(lc.install_policy(policy()));
        let now = crate::clock::now();
        lc.rescan(now).unwrap();
        // The hour's oldest and the newest are kept; zdr_2 and zdr_3 are not,
        // but an -I stream from zdr_1 to zdr_4 reads them.
        let stream = lc.stream_in_flight(&ds, Some("zdr_1"), "zdr_4", true);
        let r = lc.prune_pass(now, "test");
        assert_eq!(r.destroyed, Vec::<String>::new(), "{r:?}");
        drop(stream);
        let r = lc.prune_pass(now, "test");
        assert_eq!(r.destroyed, ["tank/a@zdr_2", "tank/a@zdr_3"]);
        // Each was bookmarked first, and the inventory says so.
        let marks = |m: &[BookmarkInfo]| m.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            marks(&lc.backend.list_bookmarks(&ds).unwrap()),
            ["zdr_2", "zdr_3"]
        );
        let inventory = lc.snapshot_inventory();
        let a = inventory.iter().find(|d| d.dataset == "tank/a").unwrap();
        assert_eq!(marks(&a.bookmarks), ["zdr_2", "zdr_3"]);
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(audit.contains("bookmarked (#same name) first"), "{audit}");
    }

    #[test]
    fn a_resumed_stream_spares_its_snapshot_and_base() {
        let (_dir, audit, sim, ds) = four_snapshots();
        let guid_of_2 = sim.list_snapshots(&ds).unwrap()[1].guid;
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit);
        assert!(lc.install_policy(policy()));
        let now = crate::clock::now();
        lc.rescan(now).unwrap();
        // A resume of zdr_2 -> zdr_3: the token names zdr_3 and zdr_2's GUID.
        let stream = lc.resume_in_flight(&ds, "zdr_3", Some(guid_of_2));
        let r = lc.prune_pass(now, "test");
        assert_eq!(r.destroyed, Vec::<String>::new(), "{r:?}");
        drop(stream);
        let r = lc.prune_pass(now, "test");
        assert_eq!(r.destroyed, ["tank/a@zdr_2", "tank/a@zdr_3"]);
    }

    #[test]
    fn a_stream_registered_during_a_prune_keeps_its_snapshot() {
        let (dir, audit, sim, ds) = four_snapshots();
        // Every ZFS call takes 300 ms, so the stream below registers while
        // the pass (planned with nothing in flight) destroys zdr_2.
        let slow = crate::latency::Slow::new(Arc::new(sim), Duration::from_millis(300));
        let lc = Arc::new(Lifecycle::new("n".into(), Arc::new(slow), audit));
        assert!(lc.install_policy(policy()));
        let now = crate::clock::now();
        lc.rescan(now).unwrap();
        let pass = {
            let lc = lc.clone();
            std::thread::spawn(move || lc.prune_pass(now, "test"))
        };
        // Past the plan and into zdr_2's bookmark and destroy.
        std::thread::sleep(Duration::from_millis(450));
        let stream = lc.stream_in_flight(&ds, None, "zdr_3", false);
        let r = pass.join().unwrap();
        assert_eq!(r.destroyed, ["tank/a@zdr_2"], "{r:?}");
        let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(
            audit.contains("skipped: a stream started reading it"),
            "{audit}"
        );
        drop(stream);
    }

    #[test]
    fn no_snapshot_is_taken_of_a_dataset_a_restore_lands_into() {
        let dir = tempfile::tempdir().unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.jsonl")).unwrap();
        let sim = SimBackend::new();
        sim.add_pool("tank", 1 << 30).unwrap();
        let ds = DatasetName::parse("tank/a").unwrap();
        sim.create_dataset(&ds).unwrap();
        sim.snapshot(std::slice::from_ref(&ds), "zdr_1", false)
            .unwrap();
        sim.hold(&ds, "zdr_1", "zdr-restore-into-c1-1-1").unwrap();
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit);
        assert!(lc.install_policy(policy()));
        let now = crate::clock::now();
        lc.rescan(now).unwrap();
        assert!(lc.snapshot_pass(now, true).taken.is_empty());
        // Another hold (a restore reading it as its copy) does not stop it.
        lc.backend
            .hold(&ds, "zdr_1", "zdr-restore-from-c1-1-1")
            .unwrap();
        lc.backend
            .release(&ds, "zdr_1", "zdr-restore-into-c1-1-1")
            .unwrap();
        lc.rescan(now).unwrap();
        assert_eq!(lc.snapshot_pass(now, true).taken.len(), 1);
    }

    #[test]
    fn a_policy_that_shortens_the_window_cannot_prune_what_it_protected() {
        let (dir, audit, sim, ds) = four_snapshots();
        let book = dir.path().join("floor.json");
        let lc = Lifecycle::new("n".into(), Arc::new(sim), audit);
        lc.keep_floor_at(&book).unwrap();
        assert!(lc.install_policy(windowed(1, "7d")));
        let now = crate::clock::now();
        lc.rescan(now).unwrap();
        // A validly signed policy drops the window; a prune follows.
        assert!(lc.install_policy(windowed(2, "0s")));
        let r = lc.prune_pass(now, "coordinator:stolen/1");
        assert!(r.destroyed.is_empty(), "{r:?}");
        // The pass put the floor's hold on them first, so retention kept them.
        for name in ["zdr_1", "zdr_2", "zdr_3", "zdr_4"] {
            let tags = lc.backend.holds(&ds, name).unwrap();
            assert_eq!(tags, [floor::FLOOR_HOLD], "{name}");
        }
        // Without the holds (a root user released them), the floor refuses.
        for name in ["zdr_2", "zdr_3"] {
            lc.backend.release(&ds, name, floor::FLOOR_HOLD).unwrap();
            lock(&lc.floor).held.remove(&format!("{ds}@{name}"));
        }
        let cmd = PruneReplica {
            dataset: "tank/a".into(),
            task: "t".into(),
            tiers: zdr_common::policy::default_tiers(),
            immutable_for_secs: 0,
            keep: Vec::new(),
        };
        let r = lc.prune_replica(&cmd, now, "coordinator:stolen/1");
        assert!(r.destroyed.is_empty(), "{r:?}");
        assert_eq!(r.refused.len(), 1, "{r:?}");
        let hit: Vec<&str> = r.refused[0]
            .snapshots
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(hit, ["zdr_2", "zdr_3"]);
        assert_eq!(lc.backend.list_snapshots(&ds).unwrap().len(), 4);
        let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        assert!(log.contains("\"outcome\":\"refused\""), "{log}");
        assert!(!log.contains("\"outcome\":\"intent\""), "{log}");
        let mut refused_events = 0;
        while let Some(e) = lc.pop_event() {
            refused_events += usize::from(matches!(e.kind, EventKind::FloorRefused(_)));
        }
        assert_eq!(refused_events, 1);

        // After a restart, under the short window alone, the book still says no.
        let audit = AuditLog::open(&dir.path().join("audit2.jsonl")).unwrap();
        let again = Lifecycle::new("n".into(), lc.backend.clone(), audit);
        again.keep_floor_at(&book).unwrap();
        assert!(again.install_policy(windowed(2, "0s")));
        again.rescan(now).unwrap();
        let r = again.prune_pass(now, "coordinator:stolen/2");
        assert!(r.destroyed.is_empty(), "{r:?}");
        assert_eq!(lc.backend.holds(&ds, "zdr_2").unwrap(), [floor::FLOOR_HOLD]);
        // Past the window, retention goes ahead.
        let r = again.prune_pass(now + 8 * 86_400, "agent:n/retention");
        assert_eq!(r.destroyed, ["tank/a@zdr_2", "tank/a@zdr_3"], "{r:?}");
        assert!(r.refused.is_empty());
    }
}
