//! Restore points, pure: from the fleet's inventories and the replication
//! links (pairings, and the job records that remember copies whose source
//! is gone), every copy of a protected dataset and the snapshots on each.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use zdr_common::wire::{DatasetInventory, ManifestRef, SnapshotInfo};

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
    /// Streams in a bucket (the offsite tier); restored by the destination
    /// agent alone, from the bucket's signed manifests.
    Bucket,
}

/// A bucket task's committed uploads of one dataset, as its upload record
/// keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketCopy {
    /// `bucket:<task>`: where a copy's node would be.
    pub node: String,
    pub source_node: String,
    pub dataset: String,
    /// `endpoint/bucket/prefix`, shown.
    pub location: String,
    /// The source dataset is encrypted: a restore lands it locked.
    pub raw: bool,
    pub uploads: Vec<ManifestRef>,
}

/// The prefix of a bucket copy's node (`bucket:<task>`).
pub const BUCKET_PREFIX: &str = "bucket:";

/// The bucket task a copy's node names, if it is a bucket.
pub fn bucket_task(node: &str) -> Option<&str> {
    node.strip_prefix(BUCKET_PREFIX)
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
    buckets: &[BucketCopy],
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
    let buckets: Vec<&BucketCopy> = buckets
        .iter()
        .filter(|b| b.source_node == node && b.dataset == dataset && !b.uploads.is_empty())
        .collect();
    if !classed && targets.is_empty() && buckets.is_empty() {
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
    copies.extend(buckets.into_iter().map(|b| bucket_copy(b, production)));
    Ok(RestorePoints {
        node: node.to_string(),
        dataset: dataset.to_string(),
        copies,
    })
}

/// A bucket's snapshots are its committed uploads' (one per GUID), dated
/// by production's snapshot of that GUID when it still has it, else by the
/// upload.
fn bucket_copy(b: &BucketCopy, production: Option<&DatasetInventory>) -> Copy {
    let known = |guid: u64| production.and_then(|p| p.snapshots.iter().find(|s| s.guid == guid));
    let mut snapshots: Vec<PointSnapshot> = Vec::new();
    for m in &b.uploads {
        if snapshots.iter().any(|s| s.guid == m.to_guid) {
            continue;
        }
        snapshots.push(match known(m.to_guid) {
            Some(s) => PointSnapshot::from(s),
            None => PointSnapshot {
                name: m.to_name.clone(),
                guid: m.to_guid,
                creation: m.created,
                createtxg: 0,
            },
        });
    }
    snapshots.sort_by_key(|s| (s.creation, s.createtxg));
    Copy {
        copy: CopyKind::Bucket,
        node: b.node.clone(),
        site: "offsite".into(),
        media: "bucket".into(),
        dataset: b.location.clone(),
        online: true,
        raw: b.raw,
        snapshots,
    }
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
    pub type Inventory = BTreeMap<String, BTreeMap<String, DatasetInventory>>;

    pub fn fleet() -> (BTreeMap<String, NodeFacts>, Inventory, Vec<CopyLink>) {
        let nodes = BTreeMap::from([
            ("n1".to_string(), facts("s1", true)),
            ("n2".to_string(), facts("s1", true)),
            ("n3".to_string(), facts("s2", false)),
        ]);
        let snaps = vec![snap("a", 1, 100), snap("b", 2, 200), snap("c", 3, 300)];
        let mut inv = Inventory::new();
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
        let p = restore_points("n1", "tank/db", &nodes, &inv, &links, &[]).unwrap();
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
        let p = restore_points("n1", "tank/db", &nodes, &inv, &links, &[]).unwrap();
        assert_eq!(p.copies.len(), 2);
        assert!(p.copies.iter().all(|c| c.copy == CopyKind::Replica));
    }

    #[test]
    fn an_unknown_node_and_an_unprotected_dataset_are_refused() {
        let (nodes, mut inv, links) = fleet();
        let e = restore_points("n9", "tank/db", &nodes, &inv, &links, &[]).unwrap_err();
        assert!(matches!(&e, PointsError::UnknownNode { node, .. } if node == "n9"));
        assert!(e.to_string().contains("n1, n2, n3"));
        inv.get_mut("n1")
            .unwrap()
            .insert("tank/tmp".into(), ds("tank/tmp", None, vec![]));
        let e = restore_points("n1", "tank/tmp", &nodes, &inv, &links, &[]).unwrap_err();
        assert!(matches!(e, PointsError::NotProtected { .. }));
        let e = restore_points("n1", "tank/nope", &nodes, &inv, &links, &[]).unwrap_err();
        assert!(e.to_string().contains("n1:tank/nope is not protected"));
    }

    pub fn upload(from: Option<u64>, to: u64, created: i64) -> ManifestRef {
        ManifestRef {
            stream: format!("s{to}"),
            hash: format!("h{to}"),
            key: format!("k{to}"),
            dataset: "tank/db".into(),
            from_guid: from,
            to_guid: to,
            to_name: format!("n{to}"),
            raw: true,
            stream_bytes: 1,
            segments: 1,
            created,
            retain_until: 0,
        }
    }

    pub fn vault(uploads: Vec<ManifestRef>) -> BucketCopy {
        BucketCopy {
            node: "bucket:vault".into(),
            source_node: "n1".into(),
            dataset: "tank/db".into(),
            location: "http://s3/zdr/".into(),
            raw: true,
            uploads,
        }
    }

    #[test]
    fn a_bucket_lists_its_committed_uploads_last_even_when_production_is_gone() {
        let (nodes, mut inv, links) = fleet();
        // GUID 2 is production's @b; GUID 9 was pruned there: dated by its upload.
        let b = vault(vec![
            upload(None, 2, 250),
            upload(Some(2), 9, 900),
            upload(Some(2), 9, 901),
        ]);
        let p = restore_points(
            "n1",
            "tank/db",
            &nodes,
            &inv,
            &links,
            std::slice::from_ref(&b),
        )
        .unwrap();
        let last = p.copies.last().unwrap();
        assert_eq!(
            (last.copy, last.node.as_str(), last.online),
            (CopyKind::Bucket, "bucket:vault", true)
        );
        let snaps: Vec<(&str, u64, i64)> = last
            .snapshots
            .iter()
            .map(|s| (s.name.as_str(), s.guid, s.creation))
            .collect();
        assert_eq!(snaps, vec![("b", 2, 200), ("n9", 9, 900)]);
        // No production, no replica, no class: the bucket alone keeps it a restore point.
        inv.get_mut("n1").unwrap().remove("tank/db");
        let p = restore_points("n1", "tank/db", &nodes, &inv, &[], &[b]).unwrap();
        assert_eq!(p.copies.len(), 1);
        assert_eq!(bucket_task(&p.copies[0].node), Some("vault"));
        assert!(matches!(
            restore_points("n1", "tank/db", &nodes, &inv, &[], &[vault(vec![])]),
            Err(PointsError::NotProtected { .. })
        ));
    }
}
