//! Notifications grouped for delivery, as Alertmanager groups alerts: pure.
//!
//! One evaluation's notifications are split by status and by the
//! [`GROUP_BY`] labels (the rule and the node), and each group goes to a
//! receiver as one message of at most [`MAX_PER_MESSAGE`] alerts. When a
//! whole fleet falls behind its RPO at once (issue 13's 10-million-snapshot
//! run fired 74,000 alerts in one evaluation), a receiver gets one POST per
//! rule and node rather than one per alert, and the queue holds a few
//! thousand messages rather than tens of thousands. A group larger than
//! one message is sent as several, none truncated: `truncatedAlerts` stays 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{Notification, Status};

/// The labels a group shares; an alert without one of them groups under
/// the others.
pub const GROUP_BY: [&str; 2] = ["alertname", "node"];

/// Alerts per message: about 500 bytes each, so a message stays far below
/// NATS' 1 MiB payload limit.
pub const MAX_PER_MESSAGE: usize = 200;

/// One message to a receiver: notifications of one status and group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub status: Status,
    /// The [`GROUP_BY`] labels the notifications share.
    pub group: BTreeMap<String, String>,
    pub notes: Vec<Notification>,
}

impl Batch {
    /// Alertmanager's group key for a route without matchers:
    /// `{}:{alertname="…", node="…"}`.
    pub fn key(&self) -> String {
        let labels: Vec<String> = self
            .group
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{{}}:{{{}}}", labels.join(", "))
    }

    /// The labels every alert of the batch has, with the same value.
    pub fn common_labels(&self) -> BTreeMap<String, String> {
        common(self.notes.iter().map(|n| &n.alert.labels))
    }

    /// The annotations every alert of the batch has, with the same value.
    pub fn common_annotations(&self) -> BTreeMap<String, String> {
        common(self.notes.iter().map(|n| &n.alert.annotations))
    }
}

fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut shared = first.clone();
    for m in maps {
        shared.retain(|k, v| m.get(k) == Some(v));
    }
    shared
}

/// The batches for `notes`, in a stable order: by status, then group; the
/// notifications keep their order within a group.
pub fn batches(notes: &[Notification]) -> Vec<Batch> {
    let mut groups: BTreeMap<(Status, BTreeMap<String, String>), Vec<Notification>> =
        BTreeMap::new();
    for n in notes {
        let group = GROUP_BY
            .iter()
            .filter_map(|k| Some((k.to_string(), n.alert.labels.get(*k)?.clone())))
            .collect();
        groups.entry((n.status, group)).or_default().push(n.clone());
    }
    groups
        .into_iter()
        .flat_map(|((status, group), notes)| {
            notes
                .chunks(MAX_PER_MESSAGE)
                .map(|c| Batch {
                    status,
                    group: group.clone(),
                    notes: c.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Alert;

    fn note(name: &str, node: &str, dataset: &str, status: Status) -> Notification {
        let labels = BTreeMap::from([
            ("alertname".to_string(), name.to_string()),
            ("node".to_string(), node.to_string()),
            ("dataset".to_string(), dataset.to_string()),
            ("severity".to_string(), "critical".to_string()),
        ]);
        Notification {
            status,
            alert: Alert::new(labels, format!("{node}:{dataset} is behind")),
            starts_at: 1_764_900_000,
            ends_at: None,
        }
    }

    #[test]
    fn a_storm_makes_one_message_per_rule_node_and_status() {
        let mut notes = Vec::new();
        for node in ["n1", "n2"] {
            for d in 0..450 {
                notes.push(note(
                    "ZdrCopyRpoBreach",
                    node,
                    &format!("tank/d{d}"),
                    Status::Firing,
                ));
            }
        }
        notes.push(note("ZdrCopyRpoBreach", "n1", "tank/x", Status::Resolved));
        notes.push(note("ZdrAgentOffline", "n1", "", Status::Firing));
        let b = batches(&notes);
        // n1 and n2: 450 each in 3 messages (200, 200, 50); one resolve; one offline.
        assert_eq!(b.len(), 3 + 3 + 1 + 1);
        let sizes: Vec<usize> = b.iter().map(|b| b.notes.len()).collect();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            notes.len(),
            "none lost: {sizes:?}"
        );
        assert!(sizes.iter().all(|s| *s <= MAX_PER_MESSAGE), "{sizes:?}");
        for batch in &b {
            for n in &batch.notes {
                assert_eq!(n.status, batch.status);
                for (k, v) in &batch.group {
                    assert_eq!(n.alert.labels.get(k), Some(v));
                }
            }
        }
        // Order within a group is kept.
        let n1: Vec<&str> = b
            .iter()
            .filter(|b| b.group["node"] == "n1" && b.group["alertname"] == "ZdrCopyRpoBreach")
            .filter(|b| b.status == Status::Firing)
            .flat_map(|b| b.notes.iter().map(|n| n.alert.labels["dataset"].as_str()))
            .collect();
        assert_eq!(n1.first(), Some(&"tank/d0"));
        assert_eq!(n1.last(), Some(&"tank/d449"));
    }

    #[test]
    fn common_labels_are_those_all_share() {
        let b = batches(&[
            note("ZdrCopyRpoBreach", "n1", "tank/a", Status::Firing),
            note("ZdrCopyRpoBreach", "n1", "tank/b", Status::Firing),
        ]);
        assert_eq!(b.len(), 1);
        let common = b[0].common_labels();
        assert_eq!(common.get("node").map(String::as_str), Some("n1"));
        assert_eq!(common.get("severity").map(String::as_str), Some("critical"));
        assert!(!common.contains_key("dataset"), "{common:?}");
        assert!(b[0].common_annotations().is_empty());
        assert_eq!(
            b[0].key(),
            r#"{}:{alertname="ZdrCopyRpoBreach", node="n1"}"#
        );
    }
}
