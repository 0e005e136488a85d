//! What a receiver is sent, and when to try again: pure.
//!
//! - [`body`]: one notification as the receiver's format wants it. For
//!   Alertmanager's webhook format (payload version 4) each notification is
//!   a group of one: `groupLabels` and `commonLabels` are the alert's labels,
//!   so a receiver that groups by label groups zdr's alerts as it would
//!   Alertmanager's. `truncatedAlerts` is always 0.
//! - [`backoff`]: the wait after a failed try, doubling from 1 s up to
//!   [`MAX_BACKOFF`], so a receiver that comes back gets its alerts within
//!   that long.
//! - [`expired`]: an alert older than the receiver's `retry_for` is dropped
//!   (and counted) instead of being tried again.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use zdr_schemas::receivers::Format;

use super::state::{Notification, Status};

pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Alertmanager's "not ended" time, as it sends it.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The JSON body POSTed to `receiver` for `note`. `external_url` is the
/// coordinator's HTTP API, where `/api/v1/alerts` lists what is active.
pub fn body(format: Format, receiver: &str, note: &Notification, external_url: &str) -> Value {
    let a = &note.alert;
    let ends_at = note.ends_at.map(rfc3339);
    match format {
        Format::Alertmanager => {
            let group_key = format!(
                "{{}}:{{{}}}",
                a.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            json!({
                "version": "4",
                "groupKey": group_key,
                "truncatedAlerts": 0,
                "status": note.status.as_str(),
                "receiver": receiver,
                "groupLabels": a.labels,
                "commonLabels": a.labels,
                "commonAnnotations": a.annotations,
                "externalURL": external_url,
                "alerts": [{
                    "status": note.status.as_str(),
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(note.starts_at),
                    "endsAt": ends_at.as_deref().unwrap_or(ZERO_TIME),
                    "generatorURL": format!("{}/api/v1/alerts", external_url.trim_end_matches('/')),
                    "fingerprint": a.fingerprint,
                }],
            })
        }
        Format::Json => json!({
            "receiver": receiver,
            "status": note.status.as_str(),
            "alertname": a.name(),
            "fingerprint": a.fingerprint,
            "labels": a.labels,
            "annotations": a.annotations,
            "starts_at": rfc3339(note.starts_at),
            "ends_at": ends_at,
        }),
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

/// The queue's dedup id: the same notification enqueued twice for a
/// receiver (a retried publish) is stored once; a repeat, a resolve or
/// another receiver's copy is a new message (JetStream dedupes per stream,
/// not per subject).
pub fn message_id(receiver: &str, note: &Notification, sent_at: i64) -> String {
    let status = match note.status {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    };
    format!("{receiver}-{}-{status}-{sent_at}", note.alert.fingerprint)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
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

    #[test]
    fn alertmanager_v4_has_every_field_alertmanager_sends() {
        let b = body(
            Format::Alertmanager,
            "ops",
            &note(Status::Firing, None),
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
            r#"{}:{alertname="ZdrAgentOffline", node="node-b1", severity="critical"}"#
        );
        let a = &b["alerts"][0];
        assert_eq!(a["startsAt"], "2025-12-05T02:00:00Z");
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["labels"]["node"], "node-b1");
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert_eq!(a["generatorURL"], "http://127.0.0.1:8080/api/v1/alerts");
    }

    #[test]
    fn a_resolve_carries_its_end() {
        let n = note(Status::Resolved, Some(1_764_900_600));
        let am = body(Format::Alertmanager, "ops", &n, "http://c/");
        assert_eq!(am["status"], "resolved");
        assert_eq!(am["alerts"][0]["endsAt"], "2025-12-05T02:10:00Z");
        let js = body(Format::Json, "hook", &n, "http://c/");
        assert_eq!(js["status"], "resolved");
        assert_eq!(js["alertname"], "ZdrAgentOffline");
        assert_eq!(js["ends_at"], "2025-12-05T02:10:00Z");
        assert_eq!(
            js["annotations"]["summary"],
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
        let n = note(Status::Firing, None);
        assert_eq!(message_id("a", &n, 5), message_id("a", &n, 5));
        assert_ne!(message_id("a", &n, 5), message_id("a", &n, 6));
        assert_ne!(message_id("a", &n, 5), message_id("b", &n, 5));
        assert_ne!(
            message_id("a", &n, 5),
            message_id("a", &note(Status::Resolved, Some(5)), 5)
        );
    }
}
