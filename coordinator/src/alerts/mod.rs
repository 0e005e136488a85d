//! Alerts: the coordinator evaluates its own rules over the live state and
//! notifies webhook receivers.
//!
//! - `rules` (pure): compliance report, fleet and policy in, the firing
//!   alerts out, each with stable labels and a fingerprint.
//! - `state` (pure): the previous state, the firing set and `now` in, the
//!   notifications to send out: fire once, repeat, resolve, hold through flaps.
//! - `group` (pure): one evaluation's notifications in batches per status,
//!   rule and node, as Alertmanager groups them.
//! - `webhook` (pure): a batch as a receiver's body (Alertmanager
//!   payload version 4, or zdr's JSON), the backoff and the expiry.
//! - `deliver`: the shell. Notifications go to the JetStream stream
//!   `ZDR_ALERTS`, one subject per receiver; a task per receiver posts them
//!   with timeouts, retry and backoff, so no receiver can block the loops.
//!   The receivers come from `--alerts` (`zdr_schemas::receivers`).

pub mod deliver;
pub mod group;
pub mod rules;
pub mod state;
pub mod webhook;

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One firing alert as the rules make it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable: what the alert is about, never a figure or a snapshot name.
    pub labels: BTreeMap<String, String>,
    /// The figures: `summary` names the dataset, the copy and the number.
    pub annotations: BTreeMap<String, String>,
    /// 16 hex digits from the labels: the same condition, the same print.
    pub fingerprint: String,
}

impl Alert {
    pub fn new(labels: BTreeMap<String, String>, summary: String) -> Alert {
        let fingerprint = fingerprint(&labels);
        Alert {
            labels,
            annotations: BTreeMap::from([("summary".to_string(), summary)]),
            fingerprint,
        }
    }

    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// A hash of the sorted labels (`name=value` lines); a value cannot hold a
/// line break that would let two label sets collide, as every value is
/// escaped first.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.escape_default().to_string().as_bytes());
        h.update(b"\n");
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often a firing alert is sent again.
pub const REPEAT_SECS: i64 = 4 * 3600;
/// How long a cleared condition stays active before it resolves, unless
/// `--alert-hold-secs` says otherwise.
pub const KEEP_FIRING_SECS: i64 = 120;

/// The KV key prefix (bucket `zdr_alerts`) of one active alert:
/// `alert.<fingerprint>`. One key per alert, written as it fires or is sent
/// again and deleted as it resolves: a book of all of them in one value
/// passed NATS' max_payload at 100,000 alerts (9 MB; issue 13's
/// 10-million-snapshot run), and rewriting it whole on every change cost
/// more than the change.
const ALERT_PREFIX: &str = "alert.";
/// Where releases before per-alert keys kept the whole book; read once
/// and moved to per-alert keys.
const LEGACY_BOOK_KEY: &str = "book";

fn alert_key(fingerprint: &str) -> String {
    format!("{ALERT_PREFIX}{fingerprint}")
}

/// A new leader takes over the alerts its predecessor had fired, so that it
/// neither fires them again nor leaves them unresolved at the receivers.
pub async fn restore_book(state: &crate::state::State) {
    let store = &state.stores.alerts;
    let mut book = state::Book::default();
    let mut legacy = None;
    let read = crate::bus::load_all(state.client(), store, |key, raw| {
        if key == LEGACY_BOOK_KEY {
            match serde_json::from_slice::<state::Book>(raw) {
                Ok(old) => legacy = Some(old),
                Err(e) => tracing::warn!(error = %e, "unreadable alert book in KV; skipped"),
            }
            return;
        }
        match serde_json::from_slice::<state::Tracked>(raw) {
            Ok(t) => {
                book.active.insert(t.alert.fingerprint.clone(), t);
            }
            Err(e) => tracing::warn!(key, error = %e, "unreadable alert in KV; it may fire again"),
        }
    })
    .await;
    if let Err(e) = read {
        return tracing::warn!(error = %e, "cannot read the active alerts; starting afresh");
    }
    if let Some(old) = legacy {
        for t in old.active.values() {
            put(state, t).await;
        }
        if let Err(e) = store.purge(LEGACY_BOOK_KEY).await {
            tracing::warn!(error = %e, "cannot remove the old alert book");
        }
        book.active.extend(old.active);
    }
    tracing::info!(active = book.active.len(), "took over the active alerts");
    *state.alerts() = book;
}

/// Stores what `notes` changed in the active alerts: a firing alert (new or
/// sent again) is written, a resolved one deleted. `SAVES_IN_FLIGHT` at a
/// time: a mass outage changes hundreds of thousands at once.
pub async fn save_book(state: &crate::state::State, notes: &[state::Notification]) {
    futures::stream::iter(notes)
        .for_each_concurrent(SAVES_IN_FLIGHT, |n| async move {
            let fingerprint = &n.alert.fingerprint;
            match n.status {
                state::Status::Firing => {
                    let tracked = state.alerts().active.get(fingerprint).cloned();
                    if let Some(t) = tracked {
                        put(state, &t).await;
                    }
                }
                state::Status::Resolved => {
                    if let Err(e) = state.stores.alerts.delete(alert_key(fingerprint)).await {
                        tracing::warn!(fingerprint, error = %e, "cannot delete a resolved alert; a new leader would resolve it again");
                    }
                }
            }
        })
        .await;
}

/// KV writes of [`save_book`] under way at once.
const SAVES_IN_FLIGHT: usize = 64;

async fn put(state: &crate::state::State, t: &state::Tracked) {
    let raw = match serde_json::to_vec(t) {
        Ok(raw) => raw,
        Err(e) => return tracing::warn!(error = %e, "cannot encode an alert"),
    };
    let key = alert_key(&t.alert.fingerprint);
    if let Err(e) = state.stores.alerts.put(&key, raw.into()).await {
        tracing::warn!(key, error = %e, "cannot store an alert; a new leader would fire it again");
    }
}

/// One evaluation on the leader: the rules over the live state, then the
/// state machine. Returns the notifications due.
/// `report` is the compliance report of this tick.
pub fn evaluate(
    state: &crate::state::State,
    report: &crate::compliance::Report,
    now: i64,
) -> Vec<state::Notification> {
    let drills = crate::drills::outcomes(state.jobs().records());
    let firing = {
        let policy = state.policy();
        let Some(policy) = policy.as_ref() else {
            return Vec::new();
        };
        // The fleet lock for the fleet's rules only: the report's walk
        // (every dataset of a large fleet) runs without it.
        let of_fleet = rules::of_fleet(&rules::FleetInput {
            fleet: &state.fleet(),
            policy: &policy.policy,
            now,
            offline_after_secs: state.config().offline_after.as_secs() as i64,
            leading_since: state.leading_since(),
        });
        let input = rules::Input {
            report,
            policy: &policy.policy,
            now,
            drills: &drills,
        };
        rules::evaluate(&input, of_fleet)
    };
    let settings = state::Settings {
        repeat_secs: REPEAT_SECS,
        keep_firing_secs: state.config().alert_hold.as_secs() as i64,
    };
    let mut book = state.alerts();
    let (next, notes) = state::step(&book, &firing, now, &settings);
    *book = next;
    notes
}
