//! What a receiver is sent, and when to try again: pure.
//!
//! - [`body`]: one batch of notifications (`group`: one status, one rule
//!   and node) as the receiver's format wants it. For Alertmanager's
//!   webhook format (payload version 4) the batch is a group:
//!   `groupLabels` are the `group::GROUP_BY` labels, `commonLabels` and
//!   `commonAnnotations` what every alert of it shares, as Alertmanager
//!   computes them. zdr's JSON has the same alerts under `alerts`, each
//!   with its name, fingerprint, labels, annotations and times.
//!   `truncatedAlerts` is always 0: a large group is sent as several
//!   batches, never cut.
//! - [`backoff`]: the wait after a failed try, doubling from 1 s up to
//!   [`MAX_BACKOFF`], so a receiver that comes back gets its alerts within
//!   that long.
//! - [`expired`]: an alert older than the receiver's `retry_for` is dropped
//!   (and counted) instead of being tried again.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use zdr_schemas::receivers::Format;

use super::group::Batch;

pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Alertmanager's "not ended" time, as it sends it.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The JSON body POSTed to `receiver` for `batch`. `external_url` is the
/// coordinator's HTTP API, where `/api/v1/alerts` lists what is active.
pub fn body(format: Format, receiver: &str, batch: &Batch, external_url: &str) -> Value {
    let status = batch.status.as_str();
    match format {
        Format::Alertmanager => {
            let generator = format!("{}/api/v1/alerts", external_url.trim_end_matches('/'));
            let alerts: Vec<Value> = batch
                .notes
                .iter()
                .map(|n| {
                    json!({
                        "status": n.status.as_str(),
                        "labels": n.alert.labels,
                        "annotations": n.alert.annotations,
                        "startsAt": rfc3339(n.starts_at),
                        "endsAt": n.ends_at.map(rfc3339).as_deref().unwrap_or(ZERO_TIME),
                        "generatorURL": generator,
                        "fingerprint": n.alert.fingerprint,
                    })
                })
                .collect();
            json!({
                "version": "4",
                "groupKey": batch.key(),
                "truncatedAlerts": 0,
                "status": status,
                "receiver": receiver,
                "groupLabels": batch.group,
                "commonLabels": batch.common_labels(),
                "commonAnnotations": batch.common_annotations(),
                "externalURL": external_url,
                "alerts": alerts,
            })
        }
        Format::Json => {
            let alerts: Vec<Value> = batch
                .notes
                .iter()
                .map(|n| {
                    json!({
                        "alertname": n.alert.name(),
                        "fingerprint": n.alert.fingerprint,
                        "labels": n.alert.labels,
                        "annotations": n.alert.annotations,
                        "starts_at": rfc3339(n.starts_at),
                        "ends_at": n.ends_at.map(rfc3339),
                    })
                })
                .collect();
            json!({
                "receiver": receiver,
                "status": status,
                "group": batch.group,
                "alerts": alerts,
            })
        }
    }
}

/// The wait after the `attempt`th failed try (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Whether an alert queued at `queued_at` is past its receiver's `retry_for`.
pub fn expired(queued_at: i64, now: i64, retry_for_secs: u64) -> bool {
    now.saturating_sub(queued_at) > retry_for_secs as i64
}

/// The queue's dedup id: the same batch enqueued twice for a receiver (a
/// retried publish) is stored once; a repeat, a resolve, another batch of
/// the group or another receiver's copy is a new message (JetStream
/// dedupes per stream, not per subject).
pub fn message_id(receiver: &str, batch: &Batch, sent_at: i64) -> String {
    let first = batch
        .notes
        .first()
        .map_or("", |n| n.alert.fingerprint.as_str());
    format!(
        "{receiver}-{}-{}-{first}-{sent_at}",
        super::fingerprint(&batch.group),
        batch.status.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alerts::group::batches;
    use crate::alerts::state::{Notification, Status};
    use crate::alerts::Alert;

    fn note(status: Status, ends_at: Option<i64>) -> Notification {
        let labels = BTreeMap::from([
            ("alertname".to_string(), "ZdrAgentOffline".to_string()),
            ("node".to_string(), "node-b1".to_string()),
            ("severity".to_string(), "critical".to_string()),
        ]);
        Notification {
            status,
            alert: Alert::new(labels, "agent node-b1 has sent nothing for 40s".into()),
            starts_at: 1_764_900_000,
            ends_at,
        }
    }

    fn one(n: Notification) -> Batch {
        batches(&[n]).remove(0)
    }

    #[test]
    fn alertmanager_v4_has_every_field_alertmanager_sends() {
        let b = body(
            Format::Alertmanager,
            "ops",
            &one(note(Status::Firing, None)),
            "http://127.0.0.1:8080",
        );
        for key in [
            "version",
            "groupKey",
            "truncatedAlerts",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ] {
            assert!(b.get(key).is_some(), "no {key} in {b}");
        }
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["receiver"], "ops");
        assert_eq!(
            b["groupKey"],
            r#"{}:{alertname="ZdrAgentOffline", node="node-b1"}"#
        );
        let a = &b["alerts"][0];
        assert_eq!(a["startsAt"], "2025-12-05T02:00:00Z");
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["labels"]["node"], "node-b1");
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(a["generatorURL"], "http://127.0.0.1:8080/api/v1/alerts");
        assert_eq!(b["groupLabels"].as_object().unwrap().len(), 2, "{b}");
        assert_eq!(b["commonLabels"]["severity"], "critical");
    }

    #[test]
    fn a_resolve_carries_its_end() {
        let n = one(note(Status::Resolved, Some(1_764_900_600)));
        let am = body(Format::Alertmanager, "ops", &n, "http://c/");
        assert_eq!(am["status"], "resolved");
        assert_eq!(am["alerts"][0]["endsAt"], "2025-12-05T02:10:00Z");
        let js = body(Format::Json, "hook", &n, "http://c/");
        assert_eq!(js["status"], "resolved");
        assert_eq!(js["group"]["node"], "node-b1");
        let a = &js["alerts"][0];
        assert_eq!(a["alertname"], "ZdrAgentOffline");
        assert_eq!(a["ends_at"], "2025-12-05T02:10:00Z");
        assert_eq!(
            a["annotations"]["summary"],
            "agent node-b1 has sent nothing for 40s"
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn expiry_is_past_retry_for_only() {
        assert!(!expired(1000, 1000 + 3600, 3600));
        assert!(expired(1000, 1000 + 3601, 3600));
    }

    #[test]
    fn ids_tell_a_repeat_from_a_retry() {
        let n = one(note(Status::Firing, None));
        assert_eq!(message_id("a", &n, 5), message_id("a", &n, 5));
        assert_ne!(message_id("a", &n, 5), message_id("a", &n, 6));
        assert_ne!(message_id("a", &n, 5), message_id("b", &n, 5));
        assert_ne!(
            message_id("a", &n, 5),
            message_id("a", &one(note(Status::Resolved, Some(5))), 5)
        );
        // Two batches of one group in the same second are two messages.
        let mut other = note(Status::Firing, None);
        other.alert.fingerprint = "0123456789abcdef".into();
        assert_ne!(message_id("a", &n, 5), message_id("a", &one(other), 5));
    }
}
