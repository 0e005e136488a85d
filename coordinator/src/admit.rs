//! Which agent messages the coordinator believes: only from nodes its policy
//! names, and no inventory whose snapshots or bookmarks were created in the
//! future (such a snapshot would meet every RPO for as long as it is "new").

use zdr_common::policy::Policy;
use zdr_common::wire::{DatasetInventory, InventoryChange};

/// How far ahead of the coordinator's clock an agent's clock may run.
pub const CLOCK_SKEW_SECS: i64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no policy is loaded, so no node is known to belong to the fleet")]
    NoPolicy,
    #[error("node {0} is not in the policy's `nodes`; add it there if it belongs to the fleet")]
    NotInPolicy(String),
    #[error(
        "{what} was created at {creation}, {ahead} s after the coordinator's clock \
         (more than the {CLOCK_SKEW_SECS} s allowed); check the node's clock (NTP)"
    )]
    FromTheFuture {
        what: String,
        creation: i64,
        ahead: i64,
    },
}

impl Refusal {
    /// A metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoPolicy | Refusal::NotInPolicy(_) => "unknown_node",
            Refusal::FromTheFuture { .. } => "future_creation",
        }
    }
}

/// Whether `policy` names `node`.
pub fn named_node(policy: Option<&Policy>, node: &str) -> Result<(), Refusal> {
    match policy {
        None => Err(Refusal::NoPolicy),
        Some(p) if p.nodes.contains_key(node) => Ok(()),
        Some(_) => Err(Refusal::NotInPolicy(node.to_string())),
    }
}

/// The first snapshot or bookmark of a full inventory created after `now`
/// plus the allowed skew.
pub fn inventory_times(datasets: &[DatasetInventory], now: i64) -> Result<(), Refusal> {
    let times = datasets.iter().flat_map(|d| {
        let snaps = d
            .snapshots
            .iter()
            .map(move |s| (d.dataset.as_str(), '@', s.name.as_str(), s.creation));
        let marks = d
            .bookmarks
            .iter()
            .map(move |b| (d.dataset.as_str(), '#', b.name.as_str(), b.creation));
        snaps.chain(marks)
    });
    first_future(times, now)
}

/// The same for what a delta adds.
pub fn delta_times(changes: &[InventoryChange], now: i64) -> Result<(), Refusal> {
    let times = changes.iter().filter_map(|c| match c {
        InventoryChange::SnapshotCreated { dataset, snapshot } => Some((
            dataset.as_str(),
            '@',
            snapshot.name.as_str(),
            snapshot.creation,
        )),
        InventoryChange::BookmarkCreated { dataset, bookmark } => Some((
            dataset.as_str(),
            '#',
            bookmark.name.as_str(),
            bookmark.creation,
        )),
        InventoryChange::SnapshotDestroyed { .. } | InventoryChange::BookmarkDestroyed { .. } => {
            None
        }
    });
    first_future(times, now)
}

fn first_future<'a>(
    mut times: impl Iterator<Item = (&'a str, char, &'a str, i64)>,
    now: i64,
) -> Result<(), Refusal> {
    match times.find(|t| t.3 - now > CLOCK_SKEW_SECS) {
        Some((dataset, sep, name, creation)) => Err(Refusal::FromTheFuture {
            what: format!("{dataset}{sep}{name}"),
            creation,
            ahead: creation - now,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_common::wire::{BookmarkInfo, SnapshotInfo};

    const NOW: i64 = 1_800_000_000;

    fn policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "sites": { "s": {} },
            "nodes": { "node-a": { "site": "s", "media": "ssd" } },
            "classes": {},
            "datasets": []
        }))
        .unwrap()
    }

    fn snap(name: &str, creation: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid: 1,
            createtxg: 1,
            creation,
            used: 0,
            userrefs: 0,
        }
    }

    fn mark(name: &str, creation: i64) -> BookmarkInfo {
        BookmarkInfo {
            name: name.into(),
            guid: 2,
            createtxg: 1,
            creation,
        }
    }

    fn dataset(snapshots: Vec<SnapshotInfo>, bookmarks: Vec<BookmarkInfo>) -> DatasetInventory {
        DatasetInventory {
            dataset: "tank/db".into(),
            guid: 9,
            used: 0,
            available: 0,
            class: None,
            encrypted: false,
            snapshots,
            bookmarks,
        }
    }

    #[test]
    fn only_nodes_the_policy_names_are_heard() {
        let p = policy();
        assert_eq!(named_node(Some(&p), "node-a"), Ok(()));
        let e = named_node(Some(&p), "node-x").unwrap_err();
        assert_eq!(e, Refusal::NotInPolicy("node-x".into()));
        assert!(e.to_string().contains("node-x"), "{e}");
        assert_eq!(named_node(None, "node-a"), Err(Refusal::NoPolicy));
    }

    #[test]
    fn creation_times_within_the_skew_are_accepted() {
        let d = dataset(
            vec![
                snap("old", NOW - 3600),
                snap("now", NOW),
                snap("skewed", NOW + CLOCK_SKEW_SECS),
            ],
            vec![mark("b", NOW + CLOCK_SKEW_SECS)],
        );
        assert_eq!(inventory_times(&[d], NOW), Ok(()));
    }

    #[test]
    fn a_snapshot_or_bookmark_from_the_future_refuses_the_inventory() {
        let ahead = CLOCK_SKEW_SECS + 1;
        let d = dataset(vec![snap("a", NOW), snap("z", NOW + ahead)], vec![]);
        let e = inventory_times(&[d], NOW).unwrap_err();
        assert_eq!(
            e,
            Refusal::FromTheFuture {
                what: "tank/db@z".into(),
                creation: NOW + ahead,
                ahead
            }
        );
        assert!(e.to_string().contains("tank/db@z"), "{e}");
        let d = dataset(vec![snap("a", NOW)], vec![mark("m", NOW + 86_400)]);
        assert!(matches!(
            inventory_times(&[d], NOW),
            Err(Refusal::FromTheFuture { what, .. }) if what == "tank/db#m"
        ));
    }

    #[test]
    fn a_delta_adding_a_future_snapshot_is_refused() {
        let created = |creation| InventoryChange::SnapshotCreated {
            dataset: "tank/db".into(),
            snapshot: snap("s", creation),
        };
        let destroyed = InventoryChange::SnapshotDestroyed {
            dataset: "tank/db".into(),
            name: "old".into(),
            guid: 3,
        };
        assert_eq!(delta_times(&[destroyed.clone(), created(NOW)], NOW), Ok(()));
        let e = delta_times(&[destroyed, created(NOW + 3600)], NOW).unwrap_err();
        assert_eq!(e.reason(), "future_creation");
        let b = InventoryChange::BookmarkCreated {
            dataset: "tank/db".into(),
            bookmark: mark("m", NOW + 3600),
        };
        assert!(delta_times(&[b], NOW).is_err());
    }
}
