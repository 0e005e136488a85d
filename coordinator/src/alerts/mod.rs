//! Alerts: the coordinator evaluates its own rules over the live state and
//! notifies webhook receivers.
//!
//! - `rules` (pure): compliance report, fleet and policy in, the firing
//!   alerts out, each with stable labels and a fingerprint.
//! - `state` (pure): the previous state, the firing set and `now` in, the
//!   notifications to send out: fire once, repeat, resolve, hold through flaps.
//! - `webhook` (pure): a notification as a receiver's body (Alertmanager
//!   payload version 4, or zdr's JSON), the backoff and the expiry.
//! - `deliver`: the shell. Notifications go to the JetStream stream
//!   `ZDR_ALERTS`, one subject per receiver; a task per receiver posts them
//!   with timeouts, retry and backoff, so no receiver can block the loops.
//!   The receivers come from `--alerts` (`zdr_schemas::receivers`).

pub mod deliver;
pub mod rules;
pub mod state;
pub mod webhook;

use std::collections::BTreeMap;

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

/// The KV key (bucket `zdr_alerts`) of the active alerts' first piece;
/// piece `i > 0` is under `book.<i>` (`state::Book::pieces`).
const BOOK_KEY: &str = "book";
/// The JSON of one piece stays near this, well under max_payload.
const PIECE_BYTES: usize = 256 * 1024;

/// One KV value of the alert book. The first piece says how many there are
/// (`pieces`); a book stored whole before pieces existed reads as one.
#[derive(Serialize, Deserialize)]
struct Piece {
    active: BTreeMap<String, state::Tracked>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pieces: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn piece_key(i: usize) -> String {
    format!("{BOOK_KEY}.{i}")
}

/// A new leader takes over the alerts its predecessor had fired, so that it
/// neither fires them again nor leaves them unresolved at the receivers.
pub async fn restore_book(state: &crate::state::State) {
    let read = |raw: &[u8]| serde_json::from_slice::<Piece>(raw);
    let first = match state.stores.alerts.get(BOOK_KEY).await {
        Ok(Some(raw)) => match read(&raw) {
            Ok(p) => p,
            Err(e) => {
                return tracing::warn!(error = %e, "unreadable alert book in KV; starting afresh")
            }
        },
        Ok(None) => return,
        Err(e) => return tracing::warn!(error = %e, "cannot read the alert book; starting afresh"),
    };
    let pieces = first.pieces.max(1);
    let mut book = state::Book {
        active: first.active,
    };
    for i in 1..pieces {
        match state.stores.alerts.get(piece_key(i)).await {
            Ok(Some(raw)) => match read(&raw) {
                Ok(p) => book.active.extend(p.active),
                Err(e) => {
                    tracing::warn!(piece = i, pieces, error = %e, "unreadable piece of the alert book; its alerts may fire again")
                }
            },
            Ok(None) => tracing::warn!(
                piece = i,
                pieces,
                "a piece of the alert book is missing; its alerts may fire again"
            ),
            Err(e) => {
                tracing::warn!(piece = i, pieces, error = %e, "cannot read a piece of the alert book; its alerts may fire again")
            }
        }
    }
    tracing::info!(
        active = book.active.len(),
        pieces,
        "took over the active alerts"
    );
    *state.alerts() = book;
}

/// Stores the active alerts; called when a notification went out, which is
/// whenever the set changed. The first piece goes last: it carries the
/// count, so a reader never counts pieces not yet written. Pieces past the
/// count, left by a larger book before, are not read.
pub async fn save_book(state: &crate::state::State) {
    let pieces = state.alerts().pieces(PIECE_BYTES);
    let count = pieces.len();
    let mut puts: Vec<(String, Piece)> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let key = if i == 0 {
                BOOK_KEY.to_string()
            } else {
                piece_key(i)
            };
            let pieces = if i == 0 { count } else { 0 };
            (
                key,
                Piece {
                    active: p.active,
                    pieces,
                },
            )
        })
        .collect();
    puts.rotate_left(1);
    for (key, piece) in puts {
        let raw = match serde_json::to_vec(&piece) {
            Ok(raw) => raw,
            Err(e) => return tracing::warn!(error = %e, "cannot encode the alert book"),
        };
        if let Err(e) = state.stores.alerts.put(&key, raw.into()).await {
            return tracing::warn!(key, error = %e, "cannot store the alert book; a new leader would fire these alerts again");
        }
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
        let fleet = state.fleet();
        rules::evaluate(&rules::Input {
            report,
            fleet: &fleet,
            policy: &policy.policy,
            now,
            offline_after_secs: state.config().offline_after.as_secs() as i64,
            leading_since: state.leading_since(),
            drills: &drills,
        })
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
