//! Restore points, pure: from the fleet's inventories and the replication
//! links (pairings, and the job records that remember copies whose source
//! is gone), every copy of a protected dataset and the snapshots on each.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use zdr_common::wire::{DatasetInventory, SnapshotInfo};

/// A source dataset copied to a target dataset by a replication task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CopyLink {
    pub source_node: String,
    pub dataset: String,
    pub target_node: String,
    pub target_dataset: String,
}

/// What points need to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub site: String,
    pub media: String,
    pub online: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    Production,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointSnapshot {
    pub name: String,
    pub guid: u64,
    pub creation: i64,
    pub createtxg: u64,
}

impl From<&SnapshotInfo> for PointSnapshot {
    fn from(s: &SnapshotInfo) -> Self {
        PointSnapshot {
            name: s.name.clone(),
            guid: s.guid,
            creation: s.creation,
            createtxg: s.createtxg,
        }
    }
}

/// One copy of a protected dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub copy: CopyKind,
    pub node: String,
    pub site: String,
    pub media: String,
    pub dataset: String,
    pub online: bool,
    /// Raw-encrypted: a restore of it arrives raw and needs its key loaded.
    pub raw: bool,
    /// Oldest first.
    pub snapshots: Vec<PointSnapshot>,
}

/// `GET /api/v1/restore-points`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoints {
    pub node: String,
    pub dataset: String,
    /// Production first, then replicas by node name.
    pub copies: Vec<Copy>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointsError {
    #[error("node {node:?} is not in the fleet; known nodes: {known}; check the node name")]
    UnknownNode { node: String, known: String },
    #[error(
        "{node}:{dataset} is not protected: no class of the policy selects it and no replication \
         task holds a copy of it; check the name with GET /api/v1/fleet, or protect it in the policy"
    )]
    NotProtected { node: String, dataset: String },
}

/// Every copy of `node:dataset`. `inventory` is by node, then dataset.
pub fn restore_points(
    node: &str,
    dataset: &str,
    nodes: &BTreeMap<String, NodeFacts>,
    inventory: &BTreeMap<String, BTreeMap<String, DatasetInventory>>,
    links: &[CopyLink],
) -> Result<RestorePoints, PointsError> {
    if !nodes.contains_key(node) {
        return Err(PointsError::UnknownNode {
            node: node.to_string(),
            known: nodes.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    }
    let inv = |n: &str, d: &str| inventory.get(n).and_then(|m| m.get(d));
    let copy = |kind, n: &str, inv: &DatasetInventory| {
        let facts = nodes.get(n);
        Copy {
            copy: kind,
            node: n.to_string(),
            site: facts.map(|f| f.site.clone()).unwrap_or_default(),
            media: facts.map(|f| f.media.clone()).unwrap_or_default(),
            dataset: inv.dataset.clone(),
            online: facts.is_some_and(|f| f.online),
            raw: inv.encrypted,
            snapshots: inv.snapshots.iter().map(PointSnapshot::from).collect(),
        }
    };
    let targets: BTreeSet<(&str, &str)> = links
        .iter()
        .filter(|l| l.source_node == node && l.dataset == dataset)
        .map(|l| (l.target_node.as_str(), l.target_dataset.as_str()))
        .collect();
    let production = inv(node, dataset);
    let classed = production.is_some_and(|p| p.class.is_some());
    if !classed && targets.is_empty() {
        return Err(PointsError::NotProtected {
            node: node.to_string(),
            dataset: dataset.to_string(),
        });
    }
    let mut copies: Vec<Copy> = production
        .map(|p| copy(CopyKind::Production, node, p))
        .into_iter()
        .collect();
    // BTreeSet order: by node name, then dataset. A link whose target has
    // no inventory (never copied) holds no restore point.
    copies.extend(
        targets
            .into_iter()
            .filter_map(|(n, d)| inv(n, d).map(|i| copy(CopyKind::Replica, n, i))),
    );
    Ok(RestorePoints {
        node: node.to_string(),
        dataset: dataset.to_string(),
        copies,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn snap(name: &str, guid: u64, creation: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: guid,
            creation,
            used: 0,
            userrefs: 0,
        }
    }

    pub fn ds(name: &str, class: Option<&str>, snaps: Vec<SnapshotInfo>) -> DatasetInventory {
        DatasetInventory {
            dataset: name.into(),
            guid: 7,
            used: 0,
            available: 0,
            class: class.map(str::to_string),
            snapshots: snaps,
            bookmarks: vec![],
            encrypted: false,
        }
    }

    pub fn facts(site: &str, online: bool) -> NodeFacts {
        NodeFacts {
            site: site.into(),
            media: "hdd".into(),
            online,
        }
    }

    pub fn link(target: &str, target_dataset: &str) -> CopyLink {
        CopyLink {
            source_node: "n1".into(),
            dataset: "tank/db".into(),
            target_node: target.into(),
            target_dataset: target_dataset.into(),
        }
    }

    /// n1 (s1) holds tank/db with a class; n3 (s2, offline) and n2 (s1) hold replicas.
    pub fn fleet() -> (
        BTreeMap<String, NodeFacts>,
        BTreeMap<String, BTreeMap<String, DatasetInventory>>,
        Vec<CopyLink>,
    ) {
        let nodes = BTreeMap::from([
            ("n1".to_string(), facts("s1", true)),
            ("n2".to_string(), facts("s1", true)),
            ("n3".to_string(), facts("s2", false)),
        ]);
        let snaps = vec![snap("a", 1, 100), snap("b", 2, 200), snap("c", 3, 300)];
        let mut inv: BTreeMap<String, BTreeMap<String, DatasetInventory>> = BTreeMap::new();
        let mut put = |n: &str, d: DatasetInventory| {
            inv.entry(n.into())
                .or_default()
                .insert(d.dataset.clone(), d);
        };
        put("n1", ds("tank/db", Some("gold"), snaps.clone()));
        put("n2", ds("backup/n1/tank/db", None, snaps[..2].to_vec()));
        let mut raw = ds("backup/n1/tank/db", None, snaps[1..].to_vec());
        raw.encrypted = true;
        put("n3", raw);
        let links = vec![
            link("n3", "backup/n1/tank/db"),
            link("n2", "backup/n1/tank/db"),
            // The same copy, known from a pairing and a job record.
            link("n2", "backup/n1/tank/db"),
            // Paired, never copied.
            link("n4", "backup/n1/tank/db"),
        ];
        (nodes, inv, links)
    }

    #[test]
    fn production_first_then_replicas_by_node_each_with_its_snapshots() {
        let (nodes, inv, links) = fleet();
        let p = restore_points("n1", "tank/db", &nodes, &inv, &links).unwrap();
        let seen: Vec<(CopyKind, &str, bool, bool, usize)> = p
            .copies
            .iter()
            .map(|c| (c.copy, c.node.as_str(), c.online, c.raw, c.snapshots.len()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (CopyKind::Production, "n1", true, false, 3),
                (CopyKind::Replica, "n2", true, false, 2),
                (CopyKind::Replica, "n3", false, true, 2),
            ]
        );
        assert_eq!(p.copies[2].site, "s2");
        assert_eq!(p.copies[2].snapshots[0].name, "b");
        assert_eq!(p.copies[1].dataset, "backup/n1/tank/db");
    }

    #[test]
    fn replicas_of_a_destroyed_source_are_still_restore_points() {
        let (nodes, mut inv, links) = fleet();
        inv.get_mut("n1").unwrap().remove("tank/db");
        let p = restore_points("n1", "tank/db", &nodes, &inv, &links).unwrap();
        assert_eq!(p.copies.len(), 2);
        assert!(p.copies.iter().all(|c| c.copy == CopyKind::Replica));
    }

    #[test]
    fn an_unknown_node_and_an_unprotected_dataset_are_refused() {
        let (nodes, mut inv, links) = fleet();
        let e = restore_points("n9", "tank/db", &nodes, &inv, &links).unwrap_err();
        assert!(matches!(&e, PointsError::UnknownNode { node, .. } if node == "n9"));
        assert!(e.to_string().contains("n1, n2, n3"));
        inv.get_mut("n1")
            .unwrap()
            .insert("tank/tmp".into(), ds("tank/tmp", None, vec![]));
        let e = restore_points("n1", "tank/tmp", &nodes, &inv, &links).unwrap_err();
        assert!(matches!(e, PointsError::NotProtected { .. }));
        let e = restore_points("n1", "tank/nope", &nodes, &inv, &links).unwrap_err();
        assert!(e.to_string().contains("n1:tank/nope is not protected"));
    }
}
