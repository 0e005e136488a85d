//! The retention floor: this node refuses any operation that would remove a
//! snapshot inside its immutability window, whoever signed the command. Pure:
//! plain data in and out, `now` passed in. The lifecycle keeps the [`Book`] in
//! the state dir and asks [`decide`] before every destructive operation.
//!
//! - A snapshot's window is the longest `immutable_for` that any class of its
//!   dataset had, under any policy this agent applied, at any time from the
//!   snapshot's creation on. So a policy that lengthens a window protects at
//!   once, while one that shortens it, or moves the dataset to another class
//!   or out of every class, applies only to snapshots taken after this agent
//!   applied it. A snapshot is inside while `now < creation + window`; one
//!   dated in the future (a clock jump) is inside too.
//! - The history is this agent's: from the policies it verified, dated by its
//!   own clock. The window a command carries (`immutable_for_secs` of a
//!   prune) counts for nothing here. The first entry of a history also stands
//!   for the time before the agent noted it, so snapshots older than the
//!   agent's first policy are covered by it.
//! - A dataset's class is the policy's (class property or rule). A copy
//!   received from another node is usually left out by the policy
//!   (`backup/**: exclude`); its class is the one this node's own policy
//!   gives the source dataset the receive named (by rule: the source's class
//!   property is not visible here), or the class the receive named, whichever
//!   has the longer window here ([`replica_class`], [`longer`]). A class the
//!   policy does not define counts for nothing. The book keeps every source
//!   named for a copy, so a later command naming another source cannot move
//!   the copy to a shorter window; nor can a policy change for snapshots
//!   already taken (the history above).
//! - Refused, when they touch a snapshot inside its window: destroying it,
//!   `receive -F` (the rollback destroys every snapshot after its base), and
//!   releasing the floor's own hold ([`FLOOR_HOLD`]) from it.
//! - `receive -A` is always allowed, because it removes no snapshot: zfs(8)
//!   destroys either the hidden clone `<dataset>/%recv` that holds the
//!   partial state of a receive into an existing dataset, or, for a full
//!   receive into a new dataset, that dataset itself, which it destroys
//!   non-recursively and so only while it has no snapshot. Either way what
//!   goes is the unfinished state of a snapshot that its source still has.
//! - There is no exception: no key shrinks the floor at once.
//!
//! Inside the window a snapshot of ours (named with the fleet's prefix,
//! taken here or received) also carries the ZFS hold [`FLOOR_HOLD`]
//! ([`hold_changes`]), so a plain `zfs destroy` fails too; the lifecycle
//! releases it once the window has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use zdr_common::policy::Policy;
use zdr_common::wire::{FloorHit, FloorOperation, FloorRefusal, SnapshotInfo};
use zdr_common::DatasetName;

pub use zdr_common::wire::FLOOR_HOLD;

/// One value of a history, from `since` (Unix seconds) until the next entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since<T> {
    pub since: i64,
    pub value: T,
}

/// What the floor remembers, persisted in the agent's state dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Book {
    /// Per class, the windows (seconds) its policies gave, oldest first.
    windows: BTreeMap<String, Vec<Since<u64>>>,
    /// Per dataset, the class it was in, oldest first; `None` is unprotected.
    classes: BTreeMap<String, Vec<Since<Option<String>>>>,
    /// Copies received here, by dataset: what their receives named.
    replicas: BTreeMap<String, Replica>,
}

/// What the receives into one copy named.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Every source dataset a receive named (one, unless commands disagreed).
    pub sources: BTreeSet<String>,
    /// The class the last receive named for the source.
    pub named: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("retention floor book {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "retention floor book {path} does not parse: {source}; restore it from a backup \
         of the state dir (removing it restarts every window's history from now)"
    )]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl Book {
    /// The book at `path`; an empty one when there is none yet.
    pub fn load(path: &Path) -> Result<Book, BookError> {
        match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|source| BookError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book::default()),
            Err(source) => Err(BookError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Notes the windows of a policy's classes; true when one changed.
    pub fn note_windows<'a>(
        &mut self,
        classes: impl IntoIterator<Item = (&'a str, u64)>,
        now: i64,
    ) -> bool {
        let mut changed = false;
        for (class, secs) in classes {
            changed |= push(
                self.windows.entry(class.to_string()).or_default(),
                secs,
                now,
            );
        }
        changed
    }

    /// Notes the class `dataset` is in now; true when it changed.
    pub fn note_class(&mut self, dataset: &str, class: Option<&str>, now: i64) -> bool {
        let line = self.classes.entry(dataset.to_string()).or_default();
        push(line, class.map(str::to_string), now)
    }

    /// Notes what a receive into the copy `dataset` named: the source
    /// dataset and its class. True when that changed the book.
    pub fn note_replica(&mut self, dataset: &str, source: &str, named: Option<&str>) -> bool {
        let r = self.replicas.entry(dataset.to_string()).or_default();
        let named = named.map(str::to_string);
        let changed = r.sources.insert(source.to_string()) | (r.named != named);
        r.named = named;
        changed
    }

    /// What the receives into the copy `dataset` named; `None` for a
    /// dataset never received into with a source named.
    pub fn replica(&self, dataset: &str) -> Option<&Replica> {
        self.replicas.get(dataset)
    }

    /// When a snapshot of `dataset` created at `creation` leaves its window;
    /// `None` when no window covers it.
    pub fn until(&self, dataset: &str, creation: i64) -> Option<i64> {
        let classes = self.classes.get(dataset)?;
        let mut longest = 0u64;
        for (class, start, end) in in_force(classes, creation, i64::MAX) {
            let Some(windows) = class.as_ref().and_then(|c| self.windows.get(c)) else {
                continue;
            };
            for (secs, _, _) in in_force(windows, start.max(creation), end) {
                longest = longest.max(*secs);
            }
        }
        (longest > 0).then(|| creation.saturating_add(i64::try_from(longest).unwrap_or(i64::MAX)))
    }

    /// Whether a snapshot of `dataset` created at `creation` is inside its window.
    pub fn inside(&self, dataset: &str, creation: i64, now: i64) -> bool {
        self.until(dataset, creation).is_some_and(|u| now < u)
    }
}

/// The window `policy` gives `class`; `None` for a class it does not define.
fn window(policy: &Policy, class: &str) -> Option<u64> {
    policy.classes.get(class).map(|c| c.immutable_for.secs())
}

/// Of two classes, the one with the longer window in `policy`; `a` on a tie.
/// A class the policy does not define counts as none.
pub fn longer<'a>(policy: &Policy, a: Option<&'a str>, b: Option<&'a str>) -> Option<&'a str> {
    let a = a.filter(|c| window(policy, c).is_some());
    let b = b.filter(|c| window(policy, c).is_some());
    let key = |c: Option<&str>| c.and_then(|c| window(policy, c));
    if key(b) > key(a) {
        b
    } else {
        a
    }
}

/// The class a copy's floor follows under this node's `policy`: the longest
/// window among the classes the policy's rules give its source datasets
/// and the class its last receive named.
pub fn replica_class(policy: &Policy, r: &Replica) -> Option<String> {
    let mut best = r.named.as_deref().filter(|c| window(policy, c).is_some());
    for source in &r.sources {
        let own = DatasetName::parse(source)
            .ok()
            .and_then(|d| policy.class_for(&d, None).map(|(n, _)| n));
        best = longer(policy, own, best);
    }
    best.map(str::to_string)
}

/// Appends `value` unless it is the current one. Entries stay in order when
/// the clock goes back.
fn push<T: PartialEq>(line: &mut Vec<Since<T>>, value: T, now: i64) -> bool {
    if line.last().is_some_and(|l| l.value == value) {
        return false;
    }
    let since = line.last().map_or(now, |l| l.since.max(now));
    line.push(Since { since, value });
    true
}

/// The entries of `line` in force at some time in `[from, to)`, each with
/// the span it was in force; the first one's span starts at the beginning.
/// One that ended in the very second `from` counts: clocks tick in seconds.
fn in_force<T>(line: &[Since<T>], from: i64, to: i64) -> impl Iterator<Item = (&T, i64, i64)> {
    line.iter().enumerate().filter_map(move |(i, e)| {
        let start = if i == 0 { i64::MIN } else { e.since };
        let end = line.get(i + 1).map_or(i64::MAX, |n| n.since);
        (end >= from && start < to).then_some((&e.value, start, end))
    })
}

/// A destructive operation on one dataset, with the snapshots (names after
/// `@`) it removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    Destroy(&'a [String]),
    /// `receive -F`, destroying the snapshots after its base.
    ReceiveForce(&'a [String]),
    /// Releasing [`FLOOR_HOLD`] from these snapshots.
    ReleaseHold(&'a [String]),
    /// `receive -A`: drops a partial receive, which is not a snapshot.
    AbortReceive,
}

/// Allowed, or refused naming the snapshots inside their window. `snaps` is
/// the dataset's listing on this node; a name it lacks is no snapshot here.
pub fn decide(
    book: &Book,
    dataset: &str,
    snaps: &[SnapshotInfo],
    op: Operation<'_>,
    now: i64,
) -> Result<(), FloorRefusal> {
    let (operation, names) = match op {
        Operation::Destroy(n) => (FloorOperation::Destroy, n),
        Operation::ReceiveForce(n) => (FloorOperation::ReceiveForce, n),
        Operation::ReleaseHold(n) => (FloorOperation::ReleaseHold, n),
        Operation::AbortReceive => return Ok(()),
    };
    let snapshots: Vec<FloorHit> = snaps
        .iter()
        .filter(|s| names.contains(&s.name))
        .filter_map(|s| {
            let until = book.until(dataset, s.creation)?;
            (now < until).then(|| FloorHit {
                name: s.name.clone(),
                creation: s.creation,
                until,
            })
        })
        .collect();
    if snapshots.is_empty() {
        return Ok(());
    }
    Err(FloorRefusal {
        dataset: dataset.to_string(),
        operation,
        snapshots,
    })
}

/// One line for logs and the audit record.
pub fn describe(r: &FloorRefusal) -> String {
    let op = match r.operation {
        FloorOperation::Destroy => "destroy",
        FloorOperation::ReceiveForce => "receive -F (rollback)",
        FloorOperation::ReleaseHold => "releasing the floor's hold",
    };
    let hits: Vec<String> = r
        .snapshots
        .iter()
        .map(|h| format!("@{} until {}", h.name, rfc3339(h.until)))
        .collect();
    format!(
        "retention floor: {op} of {} refused: {} inside the immutability window ({}); \
         nothing was changed; wait until the window has passed",
        r.dataset,
        if hits.len() == 1 { "it is" } else { "they are" },
        hits.join(", ")
    )
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| t.to_string())
}

/// What the floor's holds should become on one dataset: snapshots of ours
/// (`is_ours`) inside their window and not known held get it; those past it
/// that carry it lose it. `held` says whether a snapshot carries it now.
pub fn hold_changes(
    book: &Book,
    dataset: &str,
    snaps: &[SnapshotInfo],
    is_ours: impl Fn(&str) -> bool,
    held: impl Fn(&SnapshotInfo) -> bool,
    now: i64,
) -> (Vec<String>, Vec<String>) {
    let (mut hold, mut release) = (Vec::new(), Vec::new());
    for s in snaps {
        let inside = book.inside(dataset, s.creation, now);
        match (inside, held(s)) {
            (true, false) if is_ours(&s.name) => hold.push(s.name.clone()),
            (false, true) => release.push(s.name.clone()),
            _ => {}
        }
    }
    (hold, release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    fn snap(name: &str, creation: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid: creation as u64,
            createtxg: creation as u64,
            creation,
            used: 0,
            userrefs: 0,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `tank/a` in class `gold`, whose window is `days` from `t`.
    fn book(days: u64, t: i64) -> Book {
        let mut b = Book::default();
        b.note_windows([("gold", days * DAY as u64)], t);
        b.note_class("tank/a", Some("gold"), t);
        b
    }

    #[test]
    fn a_snapshot_inside_its_window_is_refused_and_one_past_it_is_not() {
        let b = book(7, 0);
        let now = 100 * DAY;
        let snaps = [snap("old", now - 8 * DAY), snap("young", now - DAY)];
        let both = names(&["old", "young"]);
        let e = decide(&b, "tank/a", &snaps, Operation::Destroy(&both), now).unwrap_err();
        assert_eq!(e.operation, FloorOperation::Destroy);
        assert_eq!(
            e.snapshots,
            [FloorHit {
                name: "young".into(),
                creation: now - DAY,
                until: now + 6 * DAY
            }]
        );
        assert_eq!(
            describe(&e),
            "retention floor: destroy of tank/a refused: it is inside the immutability window \
             (@young until 1970-04-17T00:00:00Z); nothing was changed; wait until the window \
             has passed"
        );
        let old = names(&["old"]);
        assert_eq!(
            decide(&b, "tank/a", &snaps, Operation::Destroy(&old), now),
            Ok(())
        );
        // The same snapshots by rollback or by releasing the floor's hold.
        let e = decide(&b, "tank/a", &snaps, Operation::ReceiveForce(&both), now);
        assert_eq!(e.unwrap_err().operation, FloorOperation::ReceiveForce);
        let e = decide(&b, "tank/a", &snaps, Operation::ReleaseHold(&both), now);
        assert_eq!(e.unwrap_err().operation, FloorOperation::ReleaseHold);
        // A dataset the floor never saw in a class, and a name not listed here.
        assert_eq!(
            decide(&b, "tank/b", &snaps, Operation::Destroy(&both), now),
            Ok(())
        );
        let ghost = names(&["ghost"]);
        assert_eq!(
            decide(&b, "tank/a", &snaps, Operation::Destroy(&ghost), now),
            Ok(())
        );
    }

    #[test]
    fn a_partial_receive_is_no_snapshot() {
        let b = book(7, 0);
        let snaps = [snap("young", 10)];
        assert_eq!(
            decide(&b, "tank/a", &snaps, Operation::AbortReceive, 11),
            Ok(())
        );
    }

    #[test]
    fn a_future_dated_snapshot_is_inside() {
        let b = book(1, 0);
        let now = 10 * DAY;
        let snaps = [snap("ahead", now + 30 * DAY)];
        let n = names(&["ahead"]);
        assert!(decide(&b, "tank/a", &snaps, Operation::Destroy(&n), now).is_err());
    }

    #[test]
    fn shortening_applies_to_later_snapshots_only_and_lengthening_at_once() {
        let mut b = book(7, 0);
        let before = 5 * DAY;
        // Shortened to one day at day 10: what was taken before keeps 7 days.
        assert!(b.note_windows([("gold", DAY as u64)], 10 * DAY));
        assert_eq!(b.until("tank/a", before), Some(before + 7 * DAY));
        assert_eq!(b.until("tank/a", 11 * DAY), Some(12 * DAY));
        // Lengthened to 30 days at day 20: at once, for everything.
        assert!(b.note_windows([("gold", 30 * DAY as u64)], 20 * DAY));
        assert_eq!(b.until("tank/a", 11 * DAY), Some(41 * DAY));
        assert_eq!(b.until("tank/a", before), Some(before + 30 * DAY));
        // The same window again changes nothing.
        assert!(!b.note_windows([("gold", 30 * DAY as u64)], 21 * DAY));
    }

    #[test]
    fn leaving_the_class_keeps_the_window_of_earlier_snapshots() {
        let mut b = book(7, 0);
        // A policy that unprotects tank/a, or moves it to a class without a window.
        assert!(b.note_class("tank/a", None, 10 * DAY));
        assert_eq!(b.until("tank/a", 9 * DAY), Some(16 * DAY));
        assert_eq!(b.until("tank/a", 11 * DAY), None);
        b.note_windows([("bronze", 0)], 12 * DAY);
        assert!(b.note_class("tank/a", Some("bronze"), 12 * DAY));
        assert_eq!(b.until("tank/a", 9 * DAY), Some(16 * DAY));
        assert_eq!(b.until("tank/a", 13 * DAY), None);
    }

    /// Classes `gold` (30 d), `silver` (7 d) and `bronze` (no window);
    /// `tank/db/**` is gold, `tank/**` silver, copies under `backup/` excluded.
    fn fleet_policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "sites": { "a": {} },
            "nodes": { "n1": { "site": "a", "media": "ssd" } },
            "classes": {
                "gold": { "rpo": "1h", "rto": "1h", "immutable_for": "30d" },
                "silver": { "rpo": "1h", "rto": "1h", "immutable_for": "7d" },
                "bronze": { "rpo": "1h", "rto": "1h" }
            },
            "datasets": [
                { "match": "backup/**", "exclude": true },
                { "match": "tank/db/**", "class": "gold" },
                { "match": "tank/**", "class": "silver" }
            ]
        }))
        .unwrap()
    }

    fn replica(sources: &[&str], named: Option<&str>) -> Replica {
        Replica {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            named: named.map(str::to_string),
        }
    }

    #[test]
    fn a_copy_takes_the_longer_of_its_own_policy_and_the_named_class() {
        let p = fleet_policy();
        // The command names nothing, or something shorter: the target's own rule.
        let c = replica_class(&p, &replica(&["tank/db/x"], None));
        assert_eq!(c.as_deref(), Some("gold"));
        let c = replica_class(&p, &replica(&["tank/db/x"], Some("bronze")));
        assert_eq!(c.as_deref(), Some("gold"));
        // A class property on the source (not visible here) named a longer class.
        let c = replica_class(&p, &replica(&["tank/web"], Some("gold")));
        assert_eq!(c.as_deref(), Some("gold"));
        // A class this node's policy does not define counts for nothing.
        let c = replica_class(&p, &replica(&["tank/web"], Some("platinum")));
        assert_eq!(c.as_deref(), Some("silver"));
        // A source no rule protects, with nothing named: no class.
        assert_eq!(replica_class(&p, &replica(&["other/x"], None)), None);
        // Every source named counts: a later command naming another cannot shrink it.
        let c = replica_class(&p, &replica(&["other/x", "tank/db/x"], None));
        assert_eq!(c.as_deref(), Some("gold"));
        // On a tie the first stands; a class with a zero window beats none.
        assert_eq!(longer(&p, Some("silver"), Some("silver")), Some("silver"));
        assert_eq!(longer(&p, None, Some("bronze")), Some("bronze"));
        assert_eq!(longer(&p, Some("bronze"), None), Some("bronze"));
    }

    #[test]
    fn a_replica_keeps_every_source_and_the_last_named_class() {
        let mut b = Book::default();
        b.note_windows([("gold", 7 * DAY as u64)], 0);
        assert!(b.note_replica("backup/n1/tank/a", "tank/a", Some("gold")));
        assert!(!b.note_replica("backup/n1/tank/a", "tank/a", Some("gold")));
        assert!(b.note_replica("backup/n1/tank/a", "tank/b", None));
        assert_eq!(
            b.replica("backup/n1/tank/a"),
            Some(&replica(&["tank/a", "tank/b"], None))
        );
        assert_eq!(b.replica("backup/n1/tank/c"), None);
        b.note_class("backup/n1/tank/a", Some("gold"), DAY);
        // Received snapshots keep their creation on the source, before the
        // class was noted: the first entry stands for the time before.
        assert_eq!(b.until("backup/n1/tank/a", 0), Some(7 * DAY));
    }

    proptest! {
        /// Whatever receives name, a copy's class never has a shorter window
        /// than what this node's own policy gives any of its sources.
        #[test]
        fn no_command_shortens_a_copys_window(
            names in prop::collection::vec(
                (prop::sample::select(vec!["tank/db/x", "tank/web", "other/x"]),
                 prop::option::of(prop::sample::select(vec!["gold", "silver", "bronze", "platinum"]))),
                1..6,
            ),
        ) {
            let p = fleet_policy();
            let mut b = Book::default();
            for (source, named) in &names {
                b.note_replica("backup/n1/copy", source, *named);
            }
            let r = b.replica("backup/n1/copy").unwrap();
            let got = replica_class(&p, r).and_then(|c| window(&p, &c));
            for (source, _) in &names {
                let own = p
                    .class_for(&DatasetName::parse(source).unwrap(), None)
                    .map(|(_, c)| c.immutable_for.secs());
                prop_assert!(got >= own);
            }
            let last = names.last().and_then(|(_, n)| *n).and_then(|n| window(&p, n));
            prop_assert!(got >= last);
        }
    }

    #[test]
    fn the_clock_going_back_keeps_the_history_in_order() {
        let mut b = book(7, 10 * DAY);
        b.note_windows([("gold", DAY as u64)], 5 * DAY);
        let line = &b.windows["gold"];
        assert_eq!(line[1].since, 10 * DAY);
        // A snapshot of day 8 was taken under the 7-day window.
        assert_eq!(b.until("tank/a", 8 * DAY), Some(15 * DAY));
    }

    #[test]
    fn the_book_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("floor.json");
        assert_eq!(Book::load(&path).unwrap(), Book::default());
        let mut b = book(7, 0);
        b.note_replica("backup/x", "tank/x", Some("gold"));
        std::fs::write(&path, serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(Book::load(&path).unwrap(), b);
        std::fs::write(&path, b"{").unwrap();
        let e = Book::load(&path).unwrap_err().to_string();
        assert!(e.contains("floor.json does not parse"), "{e}");
    }

    #[test]
    fn holds_go_on_young_snapshots_of_ours_and_come_off_old_ones() {
        let b = book(7, 0);
        let now = 20 * DAY;
        let snaps = [
            snap("zdr_old", now - 8 * DAY),
            snap("zdr_young", now - DAY),
            snap("mine", now - DAY),
            snap("zdr_held", now - 2 * DAY),
        ];
        let (hold, release) = hold_changes(
            &b,
            "tank/a",
            &snaps,
            |n| n.starts_with("zdr_"),
            |s| s.name == "zdr_old" || s.name == "zdr_held",
            now,
        );
        assert_eq!(hold, ["zdr_young"]);
        assert_eq!(release, ["zdr_old"]);
    }

    /// A random history of one class's windows: (days after the last change, window in days).
    fn history() -> impl Strategy<Value = Vec<(i64, u64)>> {
        prop::collection::vec((0i64..20, 0u64..40), 1..8)
    }

    fn apply(history: &[(i64, u64)]) -> (Book, Vec<(i64, u64)>) {
        let mut b = Book::default();
        b.note_class("tank/a", Some("gold"), 0);
        let mut t = 0;
        let mut dated = Vec::new();
        for (gap, days) in history {
            t += gap * DAY;
            b.note_windows([("gold", days * DAY as u64)], t);
            dated.push((t, days * DAY as u64));
        }
        (b, dated)
    }

    proptest! {
        /// No later policy brings a snapshot's end of window before what
        /// the window it was taken under, or any window applied after, gave.
        #[test]
        fn no_policy_shortens_a_snapshot_already_taken(h in history(), created in 0i64..200) {
            let created = created * DAY;
            let (b, dated) = apply(&h);
            let until = b.until("tank/a", created).unwrap_or(created);
            // The window in force when it was taken: the last change at or before it
            // (the first one covers earlier times).
            let taken_under = dated.iter().rev().find(|(t, _)| *t <= created).unwrap_or(&dated[0]).1;
            prop_assert!(until >= created + taken_under as i64);
            for (t, secs) in &dated {
                if *t >= created {
                    prop_assert!(until >= created + *secs as i64);
                }
            }
        }

        /// The floor is no wider than the longest window seen since a
        /// snapshot's creation: with nothing longer, it can go when that passes.
        #[test]
        fn the_floor_is_exactly_the_longest_window_since_creation(h in history(), created in 0i64..200) {
            let created = created * DAY;
            let (b, dated) = apply(&h);
            let first_after = dated.iter().position(|(t, _)| *t >= created).unwrap_or(dated.len());
            let from = first_after.saturating_sub(1);
            let longest = dated[from..].iter().map(|(_, s)| *s).max().unwrap_or(0);
            let expect = (longest > 0).then_some(created + longest as i64);
            prop_assert_eq!(b.until("tank/a", created), expect);
        }

        /// A destroy is refused exactly when it names a snapshot inside its
        /// window, and the refusal names exactly those.
        #[test]
        fn decide_refuses_exactly_the_snapshots_inside(
            h in history(),
            created in prop::collection::vec(0i64..200, 1..10),
            pick in prop::collection::vec(any::<bool>(), 10),
            now in 0i64..250,
        ) {
            let (b, _) = apply(&h);
            let now = now * DAY;
            let snaps: Vec<SnapshotInfo> = created
                .iter()
                .enumerate()
                .map(|(i, c)| snap(&format!("s{i}"), c * DAY))
                .collect();
            let named: Vec<String> = snaps
                .iter()
                .zip(&pick)
                .filter(|(_, p)| **p)
                .map(|(s, _)| s.name.clone())
                .collect();
            let inside: Vec<String> = snaps
                .iter()
                .filter(|s| named.contains(&s.name) && b.inside("tank/a", s.creation, now))
                .map(|s| s.name.clone())
                .collect();
            match decide(&b, "tank/a", &snaps, Operation::Destroy(&named), now) {
                Ok(()) => prop_assert!(inside.is_empty()),
                Err(r) => {
                    let hit: Vec<String> = r.snapshots.iter().map(|h| h.name.clone()).collect();
                    prop_assert_eq!(hit, inside);
                    for h in &r.snapshots {
                        prop_assert!(now < h.until);
                    }
                }
            }
        }
    }
}
