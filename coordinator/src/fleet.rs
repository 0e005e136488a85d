//! The coordinator's view of the fleet, rebuilt from JetStream KV at start and
//! kept current from what agents publish.
//!
//! Invariant: each dataset's snapshots are kept in `createtxg` order (a full
//! inventory is sorted once when it lands, a delta inserts in place), so a
//! dataset's summary (newest snapshot, count) is read in O(1): an evaluation
//! scans no snapshot list and clones nothing ([`summary`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use zdr_common::policy::Policy;
use zdr_common::wire::{
    DatasetInventory, Heartbeat, Hello, InventoryChange, InventoryChunk, InventoryDelta,
    PolicyRefused, PoolInfo,
};
use zdr_common::DatasetName;

use crate::pairing::Pairing;

/// What is persisted per node in the `zdr_fleet` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hello: Hello,
    pub last_seen: i64,
    pub policy_revision: Option<u64>,
    /// The node refused the policy the bucket offers (its heartbeat says why).
    #[serde(default)]
    pub policy_refused: Option<PolicyRefused>,
    pub pools: Vec<PoolInfo>,
    /// Generation of the full inventory the coordinator holds for this node.
    pub inventory_generation: u64,
    pub delta_seq: u64,
}

#[derive(Default)]
pub struct Fleet {
    pub nodes: BTreeMap<String, NodeRecord>,
    pub inventory: BTreeMap<String, BTreeMap<String, DatasetInventory>>,
    /// Chunks of full inventories still arriving, by node.
    pending: HashMap<String, (u64, Vec<InventoryChunk>)>,
}

/// What a message changed, so the caller persists exactly that.
#[derive(Debug, Default, PartialEq)]
pub struct Changed {
    pub node_record: bool,
    pub datasets: Vec<String>,
    pub removed_datasets: Vec<String>,
    /// The coordinator's copy has a gap: ask the agent for a full inventory.
    pub resync: bool,
    /// A refusal the node reports for the first time.
    pub policy_refused: Option<PolicyRefused>,
}

impl Fleet {
    /// One dataset's last known inventory on one node.
    pub fn dataset(&self, node: &str, dataset: &str) -> Option<&DatasetInventory> {
        self.inventory.get(node)?.get(dataset)
    }

    pub fn hello(&mut self, hello: Hello, now: i64) -> Changed {
        let node = hello.node.clone();
        let prev = self.nodes.remove(&node);
        let record = NodeRecord {
            last_seen: now,
            policy_revision: hello.policy_revision,
            // Until its first heartbeat says otherwise.
            policy_refused: prev.as_ref().and_then(|p| p.policy_refused.clone()),
            pools: hello.pools.clone(),
            inventory_generation: prev.as_ref().map(|p| p.inventory_generation).unwrap_or(0),
            delta_seq: prev.as_ref().map(|p| p.delta_seq).unwrap_or(0),
            hello,
        };
        self.nodes.insert(node, record);
        Changed {
            node_record: true,
            ..Default::default()
        }
    }

    pub fn heartbeat(&mut self, hb: Heartbeat, now: i64) -> Changed {
        let Some(rec) = self.nodes.get_mut(&hb.node) else {
            // A heartbeat from a node we have no hello for: ask it to start over.
            return Changed {
                resync: true,
                ..Default::default()
            };
        };
        rec.last_seen = now;
        rec.pools = hb.pools;
        let refusal_changed = rec.policy_refused != hb.policy_refused;
        let policy_changed = rec.policy_revision != hb.policy_revision || refusal_changed;
        rec.policy_revision = hb.policy_revision;
        rec.policy_refused = hb.policy_refused;
        let gap =
            hb.inventory_generation != rec.inventory_generation || hb.delta_seq != rec.delta_seq;
        Changed {
            node_record: policy_changed,
            resync: gap && !self.pending.contains_key(&hb.node),
            policy_refused: rec.policy_refused.clone().filter(|_| refusal_changed),
            ..Default::default()
        }
    }

    pub fn inventory_chunk(&mut self, chunk: InventoryChunk) -> Changed {
        let node = chunk.node.clone();
        let entry = self
            .pending
            .entry(node.clone())
            .or_insert((chunk.generation, Vec::new()));
        if entry.0 != chunk.generation {
            *entry = (chunk.generation, Vec::new());
        }
        if entry.1.iter().any(|c| c.chunk == chunk.chunk) || chunk.chunk >= chunk.chunks {
            return Changed::default();
        }
        let total = chunk.chunks as usize;
        let generation = chunk.generation;
        entry.1.push(chunk);
        if entry.1.len() < total {
            return Changed::default();
        }
        let (_, chunks) = self.pending.remove(&node).expect("present");
        let datasets = zdr_common::wire::join_inventory(chunks);
        let new: BTreeMap<String, DatasetInventory> = datasets
            .into_iter()
            .map(|mut d| {
                if !d.snapshots.is_sorted_by_key(|s| s.createtxg) {
                    d.snapshots.sort_by_key(|s| s.createtxg);
                }
                (d.dataset.clone(), d)
            })
            .collect();
        let old = self.inventory.remove(&node).unwrap_or_default();
        let removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        self.inventory.insert(node.clone(), new);
        let node_record = match self.nodes.get_mut(&node) {
            Some(rec) => {
                rec.inventory_generation = generation;
                rec.delta_seq = 0;
                true
            }
            None => false,
        };
        Changed {
            node_record,
            datasets: changed,
            removed_datasets: removed,
            resync: false,
            policy_refused: None,
        }
    }

    pub fn delta(&mut self, delta: InventoryDelta) -> Changed {
        let Some(rec) = self.nodes.get_mut(&delta.node) else {
            return Changed {
                resync: true,
                ..Default::default()
            };
        };
        if delta.generation != rec.inventory_generation || delta.seq != rec.delta_seq + 1 {
            // Out of order or missed: only a full inventory can repair it.
            return Changed {
                resync: !self.pending.contains_key(&delta.node),
                ..Default::default()
            };
        }
        rec.delta_seq = delta.seq;
        let inv = self.inventory.entry(delta.node.clone()).or_default();
        let mut touched = Vec::new();
        for change in delta.changes {
            match change {
                InventoryChange::SnapshotCreated { dataset, snapshot } => {
                    if let Some(ds) = inv.get_mut(&dataset) {
                        if !ds.snapshots.iter().any(|s| s.guid == snapshot.guid) {
                            // Usually the newest: found at the end.
                            let at = ds
                                .snapshots
                                .partition_point(|s| s.createtxg <= snapshot.createtxg);
                            ds.snapshots.insert(at, snapshot);
                        }
                        touched.push(dataset);
                    }
                }
                InventoryChange::SnapshotDestroyed { dataset, guid, .. } => {
                    if let Some(ds) = inv.get_mut(&dataset) {
                        ds.snapshots.retain(|s| s.guid != guid);
                        touched.push(dataset);
                    }
                }
                InventoryChange::BookmarkCreated { dataset, bookmark } => {
                    if let Some(ds) = inv.get_mut(&dataset) {
                        if !ds.bookmarks.iter().any(|b| b.name == bookmark.name) {
                            ds.bookmarks.push(bookmark);
                            ds.bookmarks.sort_by_key(|b| b.createtxg);
                        }
                        touched.push(dataset);
                    }
                }
                InventoryChange::BookmarkDestroyed { dataset, name, .. } => {
                    if let Some(ds) = inv.get_mut(&dataset) {
                        ds.bookmarks.retain(|b| b.name != name);
                        touched.push(dataset);
                    }
                }
            }
        }
        touched.sort();
        touched.dedup();
        Changed {
            node_record: true,
            datasets: touched,
            ..Default::default()
        }
    }

    /// Snapshots that `node`'s reply to a command says it destroyed
    /// (`dataset@name`) leave its inventory now, not at its delta a moment
    /// later: a restore planned in between read one (kill -9 trials, 150 ms
    /// after a replica's prune). The delta then finds nothing to remove.
    /// The datasets touched.
    pub fn destroyed(&mut self, node: &str, destroyed: &[String]) -> Vec<String> {
        let Some(inv) = self.inventory.get_mut(node) else {
            return Vec::new();
        };
        let mut touched = Vec::new();
        for full in destroyed {
            let Some((dataset, name)) = full.split_once('@') else {
                continue;
            };
            if let Some(ds) = inv.get_mut(dataset) {
                let before = ds.snapshots.len();
                ds.snapshots.retain(|s| s.name != name);
                if ds.snapshots.len() != before && !touched.iter().any(|t| t == dataset) {
                    touched.push(dataset.to_string());
                }
            }
        }
        touched
    }

    /// Datasets and snapshots in all: O(datasets).
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            nodes: self.nodes.len(),
            ..Default::default()
        };
        for datasets in self.inventory.values() {
            t.datasets += datasets.len();
            t.snapshots += datasets.values().map(|d| d.snapshots.len()).sum::<usize>();
        }
        t
    }

    pub fn online(&self, node: &str, now: i64, timeout_secs: i64) -> bool {
        self.nodes
            .get(node)
            .map(|r| now - r.last_seen <= timeout_secs)
            .unwrap_or(false)
    }
}

/// How big the fleet is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub nodes: usize,
    pub datasets: usize,
    pub snapshots: usize,
}

/// One dataset against its class, without its snapshot list: O(1) and
/// allocation-free but for the class name (see the module's invariant).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary<'a> {
    pub class: Option<String>,
    pub newest: Option<&'a zdr_common::wire::SnapshotInfo>,
    pub newest_age_secs: Option<i64>,
    pub count: usize,
    pub rpo_secs: Option<u64>,
    pub rpo_met: Option<bool>,
}

pub fn summary<'a>(policy: Option<&Policy>, inv: &'a DatasetInventory, now: i64) -> Summary<'a> {
    let class = resolved_class(policy, inv);
    let rpo = class
        .as_deref()
        .and_then(|c| policy?.classes.get(c))
        .map(|c| c.rpo.secs());
    let newest = inv.snapshots.last();
    let age = newest.map(|s| now - s.creation);
    Summary {
        class,
        newest,
        newest_age_secs: age,
        count: inv.snapshots.len(),
        rpo_secs: rpo,
        rpo_met: match (rpo, age) {
            (Some(r), Some(a)) => Some(a <= r as i64),
            (Some(_), None) => Some(false),
            _ => None,
        },
    }
}

/// Status of one dataset against its class, as the API and metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetStatus {
    pub dataset: String,
    pub class: Option<String>,
    pub snapshots: Vec<String>,
    pub newest: Option<String>,
    pub newest_age_secs: Option<i64>,
    pub rpo_secs: Option<u64>,
    /// Whether the newest local snapshot is within the class's RPO. Replication
    /// lag is not counted yet.
    pub rpo_met: Option<bool>,
    pub used: u64,
    /// Set on a replica: the pairing it belongs to (replicas have no class
    /// of their own).
    pub replica_of: Option<ReplicaOf>,
}

/// Which source dataset and task a replica dataset belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaOf {
    pub task: String,
    pub source_node: String,
    pub dataset: String,
}

/// The pairing whose target is `dataset` on `node`, if any.
pub fn replica_of(pairings: &[Pairing], node: &str, dataset: &str) -> Option<ReplicaOf> {
    pairings
        .iter()
        .find(|p| p.target_node == node && p.target_dataset == dataset)
        .map(ReplicaOf::from)
}

impl From<&Pairing> for ReplicaOf {
    fn from(p: &Pairing) -> Self {
        ReplicaOf {
            task: p.task.clone(),
            source_node: p.source_node.clone(),
            dataset: p.dataset.clone(),
        }
    }
}

/// Pairings by their target (node, dataset): one lookup per replica instead
/// of a scan of every pairing.
pub fn by_target(pairings: &[Pairing]) -> HashMap<(&str, &str), &Pairing> {
    pairings
        .iter()
        .map(|p| ((p.target_node.as_str(), p.target_dataset.as_str()), p))
        .collect()
}

/// The class the agent resolved, else the policy's name rules.
pub fn resolved_class(policy: Option<&Policy>, inv: &DatasetInventory) -> Option<String> {
    inv.class.clone().or_else(|| {
        let p = policy?;
        let name = DatasetName::parse(&inv.dataset).ok()?;
        p.class_for(&name, None).map(|(n, _)| n.to_string())
    })
}

/// The API's view of one dataset; `with_snapshots` lists every snapshot name.
pub fn dataset_status(
    policy: Option<&Policy>,
    inv: &DatasetInventory,
    now: i64,
    with_snapshots: bool,
) -> DatasetStatus {
    let s = summary(policy, inv, now);
    DatasetStatus {
        dataset: inv.dataset.clone(),
        snapshots: if with_snapshots {
            inv.snapshots.iter().map(|s| s.name.clone()).collect()
        } else {
            Vec::new()
        },
        newest: s.newest.map(|n| n.name.clone()),
        newest_age_secs: s.newest_age_secs,
        rpo_secs: s.rpo_secs,
        rpo_met: s.rpo_met,
        class: s.class,
        used: inv.used,
        replica_of: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_common::wire::SnapshotInfo;

    fn hello(node: &str) -> Hello {
        Hello {
            node: node.into(),
            site: "s".into(),
            media: "ssd".into(),
            version: "0".into(),
            backend: "sim".into(),
            pools: vec![],
            started_at: 0,
            policy_revision: None,
        }
    }

    fn snap(i: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: format!("zdr_{i}"),
            guid: 1000 + i,
            createtxg: i,
            creation: i as i64,
            used: 0,
            userrefs: 0,
        }
    }

    fn inv(name: &str, snaps: Vec<SnapshotInfo>) -> DatasetInventory {
        DatasetInventory {
            dataset: name.into(),
            guid: 1,
            used: 0,
            available: 0,
            class: None,
            snapshots: snaps,
            bookmarks: vec![],
            encrypted: false,
        }
    }

    #[test]
    fn snapshots_a_reply_says_destroyed_leave_at_once_and_the_delta_after_is_harmless() {
        let mut f = Fleet::default();
        f.hello(hello("n1"), 0);
        for c in zdr_common::wire::chunk_inventory(
            "n1",
            5,
            vec![inv("tank/a", vec![snap(1), snap(2), snap(3)])],
            10,
        ) {
            f.inventory_chunk(c);
        }
        let gone = [
            "tank/a@zdr_1".to_string(),
            "tank/a@zdr_2".into(),
            "junk".into(),
        ];
        assert_eq!(f.destroyed("n1", &gone), vec!["tank/a".to_string()]);
        assert!(f.destroyed("n1", &gone).is_empty(), "already gone");
        assert!(f.destroyed("n2", &gone).is_empty(), "unknown node");
        let names = |f: &Fleet| -> Vec<String> {
            f.dataset("n1", "tank/a")
                .unwrap()
                .snapshots
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names(&f), ["zdr_3"]);
        let d = InventoryDelta {
            node: "n1".into(),
            generation: 5,
            seq: 1,
            changes: vec![InventoryChange::SnapshotDestroyed {
                dataset: "tank/a".into(),
                name: "zdr_1".into(),
                guid: 1001,
            }],
        };
        f.delta(d);
        assert_eq!(names(&f), ["zdr_3"]);
    }

    #[test]
    fn chunks_assemble_then_deltas_apply_in_order() {
        let mut f = Fleet::default();
        f.hello(hello("n1"), 0);
        let chunks = zdr_common::wire::chunk_inventory(
            "n1",
            5,
            vec![inv("tank/a", vec![snap(1)]), inv("tank/b", vec![])],
            10,
        );
        assert!(chunks.len() >= 2);
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let ch = f.inventory_chunk(c);
            assert_eq!(ch.node_record, i + 1 == n);
        }
        assert_eq!(f.inventory["n1"].len(), 2);
        let d = InventoryDelta {
            node: "n1".into(),
            generation: 5,
            seq: 1,
            changes: vec![InventoryChange::SnapshotCreated {
                dataset: "tank/a".into(),
                snapshot: snap(2),
            }],
        };
        assert_eq!(f.delta(d.clone()).datasets, vec!["tank/a".to_string()]);
        assert_eq!(f.inventory["n1"]["tank/a"].snapshots.len(), 2);
        // A replayed or skipped delta is not applied and asks for a resync.
        let again = f.delta(d);
        assert!(again.resync);
        assert_eq!(f.inventory["n1"]["tank/a"].snapshots.len(), 2);
    }

    #[test]
    fn a_policy_refusal_is_kept_until_the_node_clears_it_and_reported_once() {
        use zdr_common::wire::{PolicyRefusalReason, PolicyRefused};
        let mut f = Fleet::default();
        f.hello(hello("n1"), 0);
        let refused = PolicyRefused {
            reason: PolicyRefusalReason::UntrustedKey,
            revision: None,
            at: 5,
        };
        let hb = |refusal: Option<PolicyRefused>| Heartbeat {
            node: "n1".into(),
            seq: 1,
            at: 1,
            policy_revision: Some(3),
            inventory_generation: 0,
            delta_seq: 0,
            pools: vec![],
            policy_refused: refusal,
        };
        let c = f.heartbeat(hb(Some(refused.clone())), 6);
        assert!(c.node_record);
        assert_eq!(c.policy_refused, Some(refused.clone()));
        let c = f.heartbeat(hb(Some(refused.clone())), 7);
        assert_eq!(c.policy_refused, None, "reported once");
        assert!(!c.node_record);
        assert_eq!(f.nodes["n1"].policy_refused, Some(refused));
        // A hello keeps it: the next heartbeat is the node's word on it.
        f.hello(hello("n1"), 8);
        assert!(f.nodes["n1"].policy_refused.is_some());
        let c = f.heartbeat(hb(None), 9);
        assert!(c.node_record);
        assert_eq!(f.nodes["n1"].policy_refused, None);
    }

    #[test]
    fn heartbeat_gap_asks_for_resync() {
        let mut f = Fleet::default();
        f.hello(hello("n1"), 0);
        let hb = Heartbeat {
            node: "n1".into(),
            seq: 1,
            at: 1,
            policy_revision: None,
            inventory_generation: 3,
            delta_seq: 0,
            pools: vec![],
            policy_refused: None,
        };
        assert!(f.heartbeat(hb, 1).resync);
        assert!(f.online("n1", 10, 30));
        assert!(!f.online("n1", 100, 30));
        assert!(!f.online("nope", 0, 30));
    }

    #[test]
    fn snapshots_stay_in_createtxg_order_so_the_summary_reads_the_last() {
        let mut f = Fleet::default();
        f.hello(hello("n1"), 0);
        // A full inventory out of order is sorted once when it lands.
        let chunks = zdr_common::wire::chunk_inventory(
            "n1",
            1,
            vec![inv("tank/a", vec![snap(3), snap(1), snap(2)])],
            1 << 20,
        );
        for c in chunks {
            f.inventory_chunk(c);
        }
        let created = |seq, s| InventoryDelta {
            node: "n1".into(),
            generation: 1,
            seq,
            changes: vec![InventoryChange::SnapshotCreated {
                dataset: "tank/a".into(),
                snapshot: s,
            }],
        };
        f.delta(created(1, snap(5)));
        // A late one lands in its place, not at the end.
        f.delta(created(2, snap(4)));
        let d = f.dataset("n1", "tank/a").unwrap();
        let txgs: Vec<u64> = d.snapshots.iter().map(|s| s.createtxg).collect();
        assert_eq!(txgs, [1, 2, 3, 4, 5]);
        let s = summary(None, d, 105);
        assert_eq!(s.newest.map(|n| n.name.as_str()), Some("zdr_5"));
        assert_eq!((s.count, s.newest_age_secs), (5, Some(100)));
        assert_eq!(
            f.totals(),
            Totals {
                nodes: 1,
                datasets: 1,
                snapshots: 5
            }
        );
        let without = dataset_status(None, d, 105, false);
        assert!(without.snapshots.is_empty());
        assert_eq!(without.newest.as_deref(), Some("zdr_5"));
        assert_eq!(dataset_status(None, d, 105, true).snapshots.len(), 5);
    }
}
