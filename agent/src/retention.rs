//! Retention planning for the snapshots of one dataset: which to keep, why,
//! and which to destroy. Pure: no I/O, and `now` is passed in.
//!
//! - Only snapshots named `<prefix>_…` are ours and may be destroyed; every
//!   other snapshot is kept ([`KeepReason::NotOurs`]).
//! - The newest snapshot, and the newest of ours, are kept. "Newest" is by
//!   createtxg, never by creation time, because clocks jump.
//! - Held snapshots, protected GUIDs (the newest common snapshot of a
//!   replication pair) and snapshots created after `now - immutable_for` are
//!   kept; the last includes snapshots dated in the future after a clock jump.
//! - Snapshots inside a stream in flight ([`in_stream`]) are kept while it
//!   runs: a target that received part of an `-I` stream would otherwise hold
//!   a snapshot the source no longer has, and diverge.
//! - Each tier (period P, keep N) puts our snapshots in UTC buckets
//!   `floor(creation / P)`; periods that are whole weeks start on Monday
//!   00:00 UTC. The oldest snapshot (lowest createtxg) of a bucket represents
//!   it, and the representatives of the N most recent buckets are kept.
//! - Everything else of ours is destroyed.
//!
//! Before it destroys a snapshot of its own, the source bookmarks it, so that
//! a target which kept that snapshot still shares a GUID-matched base with it.
//! Bookmarks are bounded by [`stale_bookmarks`]: one of ours goes once it is
//! older than the dataset's oldest snapshot by more than the class's longest
//! tier span (period × count). By then the history the class keeps has turned
//! over once more since that bookmark's snapshot was pruned.
//!
//! Planning again on what a plan keeps destroys nothing, and new snapshots
//! never change which older snapshot represents a bucket.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};
use zdr_common::policy::{Period, Tiers};
use zdr_common::wire::{BookmarkInfo, SnapshotInfo};

const WEEK: u64 = 7 * 86_400;
/// 1970-01-01 was a Thursday; Monday 1970-01-05 starts week 0.
const MONDAY_OFFSET: i64 = 4 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Our snapshots are named `<prefix>_…`.
    pub prefix: String,
    pub tiers: Tiers,
    pub immutable_for_secs: u64,
    pub protected_guids: HashSet<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    NotOurs,
    /// The newest snapshot, or the newest of ours, by createtxg.
    Newest,
    Held,
    Protected,
    Immutable,
    /// Read by a stream in flight.
    InFlight,
    /// Represents one of the tier's most recent buckets.
    Tier(Period),
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotOurs => f.write_str("not ours"),
            KeepReason::Newest => f.write_str("newest"),
            KeepReason::Held => f.write_str("held"),
            KeepReason::Protected => f.write_str("protected common snapshot"),
            KeepReason::Immutable => f.write_str("immutable"),
            KeepReason::InFlight => f.write_str("inside a stream in flight"),
            KeepReason::Tier(period) => write!(f, "{period} tier"),
        }
    }
}

/// Both lists are in createtxg order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshot names (the part after `@`) with every reason they are kept.
    pub keep: Vec<(String, Vec<KeepReason>)>,
    pub destroy: Vec<String>,
}

pub fn is_ours(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('_'))
}

/// The UTC bucket of `t` for a period of `period` seconds (0 counts as 1).
pub fn bucket(t: i64, period: u64) -> i64 {
    let period = period.max(1);
    let p = i64::try_from(period).unwrap_or(i64::MAX);
    let t = if period.is_multiple_of(WEEK) {
        t.saturating_sub(MONDAY_OFFSET)
    } else {
        t
    };
    t.div_euclid(p)
}

pub fn plan(snaps: &[SnapshotInfo], rules: &Rules, now: i64) -> Plan {
    plan_sparing(snaps, rules, &HashSet::new(), now)
}

/// [`plan`], also keeping the snapshots named in `in_flight`.
pub fn plan_sparing(
    snaps: &[SnapshotInfo],
    rules: &Rules,
    in_flight: &HashSet<String>,
    now: i64,
) -> Plan {
    let mut order: Vec<&SnapshotInfo> = snaps.iter().collect();
    order.sort_by_key(|s| s.createtxg);
    let ours: Vec<bool> = order
        .iter()
        .map(|s| is_ours(&s.name, &rules.prefix))
        .collect();
    let last_ours = ours.iter().rposition(|o| *o);
    let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); order.len()];

    let immutable_after =
        now.saturating_sub(i64::try_from(rules.immutable_for_secs).unwrap_or(i64::MAX));
    for (i, s) in order.iter().enumerate() {
        let r = &mut reasons[i];
        if !ours[i] {
            r.push(KeepReason::NotOurs);
        }
        if i + 1 == order.len() || Some(i) == last_ours {
            r.push(KeepReason::Newest);
        }
        if s.userrefs > 0 {
            r.push(KeepReason::Held);
        }
        if rules.protected_guids.contains(&s.guid) {
            r.push(KeepReason::Protected);
        }
        if s.creation > immutable_after {
            r.push(KeepReason::Immutable);
        }
        if in_flight.contains(&s.name) {
            r.push(KeepReason::InFlight);
        }
    }

    for (period, keep) in &rules.tiers {
        // Walking in createtxg order, the first snapshot seen in a bucket is its oldest.
        let mut representatives: BTreeMap<i64, usize> = BTreeMap::new();
        for (i, s) in order.iter().enumerate().filter(|(i, _)| ours[*i]) {
            representatives
                .entry(bucket(s.creation, period.0.secs()))
                .or_insert(i);
        }
        for &i in representatives.values().rev().take(*keep as usize) {
            reasons[i].push(KeepReason::Tier(*period));
        }
    }

    let mut plan = Plan::default();
    for (s, r) in order.into_iter().zip(reasons) {
        if r.is_empty() {
            plan.destroy.push(s.name.clone());
        } else {
            plan.keep.push((s.name.clone(), r));
        }
    }
    plan
}

/// The snapshots (names after `@`) a stream from `from` to `to` reads, by
/// createtxg in `snaps`: `to` alone for a full stream; `from` and `to` for
/// `-i`; everything from `from` to `to` for `-I`. When `from` is not among
/// `snaps` (a bookmark, or a cache that lags) an `-I` stream counts as
/// reading everything up to `to`, and when `to` is not, everything from
/// `from` on: too much kept for a while is safe, too little is not.
pub fn in_stream(
    snaps: &[SnapshotInfo],
    from: Option<&str>,
    to: &str,
    intermediates: bool,
) -> Vec<String> {
    let txg = |name: &str| snaps.iter().find(|s| s.name == name).map(|s| s.createtxg);
    let mut names = vec![to.to_string()];
    let Some(from) = from else {
        return names;
    };
    names.push(from.to_string());
    if intermediates {
        let lo = txg(from).unwrap_or(0);
        let hi = txg(to).unwrap_or(u64::MAX);
        names.extend(
            snaps
                .iter()
                .filter(|s| s.createtxg > lo && s.createtxg < hi)
                .map(|s| s.name.clone()),
        );
    }
    names
}

/// The longest span a tier covers: its period times its count, in seconds.
pub fn longest_span(tiers: &Tiers) -> u64 {
    tiers
        .iter()
        .map(|(p, n)| p.0.secs().saturating_mul(u64::from(*n)))
        .max()
        .unwrap_or(0)
}

/// Our bookmarks (names after `#`) that the bound in the module docs lets
/// go: created more than `longest_span(tiers)` before the oldest snapshot in
/// `snaps`. With no snapshot there is nothing to measure by: none goes.
pub fn stale_bookmarks(
    bookmarks: &[BookmarkInfo],
    snaps: &[SnapshotInfo],
    tiers: &Tiers,
    prefix: &str,
) -> Vec<String> {
    let Some(oldest) = snaps.iter().map(|s| s.creation).min() else {
        return Vec::new();
    };
    let span = i64::try_from(longest_span(tiers)).unwrap_or(i64::MAX);
    let limit = oldest.saturating_sub(span);
    bookmarks
        .iter()
        .filter(|b| is_ours(&b.name, prefix) && b.creation < limit)
        .map(|b| b.name.clone())
        .collect()
}

/// Due when there is no snapshot of ours yet, or `now` lies in another bucket
/// of the smallest period than the newest (by createtxg) of ours. A clock jump
/// either way therefore triggers one snapshot, not a storm.
pub fn snapshot_due(newest_ours: Option<&SnapshotInfo>, smallest_period: u64, now: i64) -> bool {
    match newest_ours {
        None => true,
        Some(s) => bucket(s.creation, smallest_period) != bucket(now, smallest_period),
    }
}

/// `<prefix>_YYYYMMDDTHHMMSSZ` in UTC; times beyond chrono's range are clamped.
pub fn snapshot_name(prefix: &str, now: i64) -> String {
    let at = DateTime::<Utc>::from_timestamp(now, 0).unwrap_or(if now < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    });
    format!("{prefix}_{}", at.format("%Y%m%dT%H%M%SZ"))
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, NaiveDate, TimeZone};
    use proptest::prelude::*;
    use zdr_common::Duration;

    use super::*;

    const HOUR: u64 = 3_600;
    const DAY: u64 = 86_400;
    /// 2024-01-01T00:00:00Z, a Monday.
    const T0: i64 = 1_704_067_200;

    fn period(secs: u64) -> Period {
        Period(Duration::from_secs(secs))
    }

    fn tiers(list: &[(u64, u32)]) -> Tiers {
        list.iter().map(|(p, n)| (period(*p), *n)).collect()
    }

    fn rules(t: Tiers, immutable_for_secs: u64) -> Rules {
        Rules {
            prefix: "zdr".into(),
            tiers: t,
            immutable_for_secs,
            protected_guids: HashSet::new(),
        }
    }

    fn snap(name: &str, createtxg: u64, creation: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid: createtxg + 1000,
            createtxg,
            creation,
            used: 0,
            userrefs: 0,
        }
    }

    fn kept_names(p: &Plan) -> Vec<&str> {
        p.keep.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn reasons_of<'a>(p: &'a Plan, name: &str) -> &'a [KeepReason] {
        p.keep
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    }

    fn hourly(n: u64) -> Vec<SnapshotInfo> {
        (0..n)
            .map(|h| {
                let at = T0 + (h * HOUR) as i64;
                snap(&snapshot_name("zdr", at), 10 + h, at)
            })
            .collect()
    }

    #[test]
    fn bookmarks_go_once_older_than_the_kept_history_by_the_longest_span() {
        let t = tiers(&[(HOUR, 24), (DAY, 7)]);
        assert_eq!(longest_span(&t), 7 * DAY);
        let snaps = hourly(3); // the oldest was created at T0
        let mark = |name: &str, creation: i64| BookmarkInfo {
            name: name.into(),
            guid: 1,
            createtxg: 1,
            creation,
        };
        let span = (7 * DAY) as i64;
        let marks = [
            mark("zdr_old", T0 - span - 1),
            mark("zdr_edge", T0 - span),
            mark("zdr_recent", T0 - 1),
            mark("manual", T0 - 10 * span),
        ];
        assert_eq!(stale_bookmarks(&marks, &snaps, &t, "zdr"), ["zdr_old"]);
        assert!(stale_bookmarks(&marks, &[], &t, "zdr").is_empty());
    }

    #[test]
    fn in_stream_reads_what_each_kind_of_stream_sends() {
        let snaps = hourly(6);
        let n = |i: usize| snaps[i].name.clone();
        assert_eq!(in_stream(&snaps, None, &n(4), false), [n(4)]);
        assert_eq!(in_stream(&snaps, Some(&n(1)), &n(4), false), [n(4), n(1)]);
        let mut got = in_stream(&snaps, Some(&n(1)), &n(4), true);
        got.sort();
        assert_eq!(got, [n(1), n(2), n(3), n(4)]);
        // From a bookmark: everything up to `to`.
        let mut got = in_stream(&snaps, Some("zdr_gone"), &n(2), true);
        got.sort();
        assert_eq!(got, [n(0), n(1), n(2), "zdr_gone".to_string()]);
    }

    #[test]
    fn snapshots_in_flight_are_kept_and_say_why() {
        let snaps = hourly(10);
        let now = T0 + 9 * HOUR as i64;
        let r = rules(tiers(&[(DAY, 1)]), 0);
        let before = plan(&snaps, &r, now);
        let victim = before.destroy[3].clone();
        let spared = plan_sparing(&snaps, &r, &HashSet::from([victim.clone()]), now);
        assert_eq!(reasons_of(&spared, &victim), [KeepReason::InFlight]);
        assert!(!spared.destroy.contains(&victim));
        assert_eq!(spared.destroy.len(), before.destroy.len() - 1);
        assert_eq!(
            KeepReason::InFlight.to_string(),
            "inside a stream in flight"
        );
    }

    #[test]
    fn hundred_hourly_keeps_48_hours_and_daily_representatives() {
        let snaps = hourly(100);
        let now = T0 + 99 * HOUR as i64 + 1_800;
        let p = plan(&snaps, &rules(tiers(&[(HOUR, 48), (DAY, 30)]), 0), now);
        let hourly_kept: Vec<_> = p
            .keep
            .iter()
            .filter(|(_, r)| r.contains(&KeepReason::Tier(period(HOUR))))
            .map(|(n, _)| n.clone())
            .collect();
        let expected: Vec<_> = snaps[52..].iter().map(|s| s.name.clone()).collect();
        assert_eq!(hourly_kept, expected);
        // Midnights of the five days touched; the last two lie inside the hourly window.
        for h in [0, 24, 48, 72, 96] {
            assert!(
                reasons_of(&p, &snaps[h].name).contains(&KeepReason::Tier(period(DAY))),
                "hour {h}"
            );
        }
        assert_eq!(p.keep.len(), 48 + 3);
        assert_eq!(p.destroy.len(), 100 - 51);
        assert_eq!(
            reasons_of(&p, &snaps[99].name),
            [KeepReason::Newest, KeepReason::Tier(period(HOUR))]
        );
    }

    #[test]
    fn others_held_protected_and_immutable_are_kept() {
        let mut snaps = hourly(10);
        snaps[1].name = "manual".into();
        snaps[2].userrefs = 1;
        snaps[3].guid = 77;
        let mut r = rules(tiers(&[(HOUR, 1)]), 2 * HOUR);
        r.protected_guids.insert(77);
        let now = T0 + 9 * HOUR as i64;
        let p = plan(&snaps, &r, now);
        assert_eq!(reasons_of(&p, "manual"), [KeepReason::NotOurs]);
        assert_eq!(reasons_of(&p, &snaps[2].name), [KeepReason::Held]);
        assert_eq!(reasons_of(&p, &snaps[3].name), [KeepReason::Protected]);
        assert_eq!(reasons_of(&p, &snaps[8].name), [KeepReason::Immutable]);
        assert!(p.destroy.contains(&snaps[7].name));
        assert!(p.destroy.contains(&snaps[0].name));
    }

    #[test]
    fn newest_is_by_createtxg_and_newest_of_ours_is_kept_too() {
        // The clock went back: the newest snapshot has the oldest creation time.
        let snaps = vec![
            snap("zdr_a", 1, T0 + 10 * DAY as i64),
            snap("zdr_b", 2, T0 + 11 * DAY as i64),
            snap("zdr_c", 3, T0),
            snap("other", 4, T0 + DAY as i64),
        ];
        let p = plan(&snaps, &rules(tiers(&[(DAY, 1)]), 0), T0 + 20 * DAY as i64);
        assert_eq!(reasons_of(&p, "zdr_c"), [KeepReason::Newest]);
        assert_eq!(
            reasons_of(&p, "other"),
            [KeepReason::NotOurs, KeepReason::Newest]
        );
        assert_eq!(reasons_of(&p, "zdr_b"), [KeepReason::Tier(period(DAY))]);
        assert_eq!(p.destroy, ["zdr_a"]);
    }

    #[test]
    fn the_oldest_of_a_bucket_represents_it() {
        let snaps = vec![
            snap("zdr_1", 1, T0 + 100),
            snap("zdr_2", 2, T0 + 50),
            snap("zdr_3", 3, T0 + 200),
            snap("zdr_4", 4, T0 + 300),
        ];
        let p = plan(&snaps, &rules(tiers(&[(HOUR, 5)]), 0), T0 + DAY as i64);
        assert_eq!(kept_names(&p), ["zdr_1", "zdr_4"]);
        assert_eq!(reasons_of(&p, "zdr_1"), [KeepReason::Tier(period(HOUR))]);
        assert_eq!(reasons_of(&p, "zdr_4"), [KeepReason::Newest]);
    }

    #[test]
    fn prefix_needs_the_underscore() {
        assert!(is_ours("zdr_1", "zdr"));
        assert!(!is_ours("zdrx_1", "zdr"));
        assert!(!is_ours("zdr", "zdr"));
        assert!(!is_ours("x_zdr_1", "zdr"));
    }

    #[test]
    fn weeks_start_on_monday_utc() {
        let w = WEEK;
        assert_ne!(bucket(T0 - 1, w), bucket(T0, w));
        assert_eq!(bucket(T0, w), bucket(T0 + 7 * DAY as i64 - 1, w));
        assert_ne!(
            bucket(T0 + 7 * DAY as i64 - 1, w),
            bucket(T0 + 7 * DAY as i64, w)
        );
        assert_ne!(bucket(T0 - 1, DAY), bucket(T0, DAY));
        assert_eq!(bucket(-1, HOUR), -1);
        assert_eq!(bucket(5, 0), 5);
    }

    #[test]
    fn snapshot_due_fires_once_per_bucket_and_once_after_a_jump() {
        assert!(snapshot_due(None, HOUR, T0));
        let s = snap("zdr_x", 5, T0 + 60);
        assert!(!snapshot_due(Some(&s), HOUR, T0 + 3_599));
        assert!(snapshot_due(Some(&s), HOUR, T0 + 3_600));
        for jumped in [T0 - DAY as i64, T0 + DAY as i64] {
            assert!(snapshot_due(Some(&s), HOUR, jumped));
            let taken = snap("zdr_y", 6, jumped);
            assert!(!snapshot_due(Some(&taken), HOUR, jumped + 60));
        }
    }

    #[test]
    fn snapshot_names_are_utc() {
        assert_eq!(snapshot_name("zdr", T0), "zdr_20240101T000000Z");
        assert_eq!(snapshot_name("zdr", T0 + 3_723), "zdr_20240101T010203Z");
        assert_eq!(snapshot_name("a b", 0), "a b_19700101T000000Z");
        assert!(snapshot_name("zdr", i64::MAX).starts_with("zdr_+262"));
        assert!(snapshot_name("zdr", i64::MIN).starts_with("zdr_-262"));
    }

    /// Instants one real hour apart across a European DST change, written as
    /// local wall-clock times with the offset in force: `before` steps back
    /// from `change_local` at `old` offset, `after` steps on from `resume_local`.
    fn across_dst(
        change_local: (u32, u32, u32),
        old: i32,
        resume_local: (u32, u32, u32),
        new: i32,
        before: u32,
        after: u32,
    ) -> Vec<i64> {
        let local = |(m, d, h): (u32, u32, u32)| {
            NaiveDate::from_ymd_opt(2024, m, d)
                .unwrap()
                .and_hms_opt(h, 0, 0)
                .unwrap()
        };
        let old = FixedOffset::east_opt(old * 3_600).unwrap();
        let new = FixedOffset::east_opt(new * 3_600).unwrap();
        let mut out: Vec<i64> = (1..=before)
            .rev()
            .map(|k| {
                let wall = local(change_local) - chrono::Duration::hours(k.into());
                old.from_local_datetime(&wall).unwrap().timestamp()
            })
            .collect();
        out.extend((0..after).map(|k| {
            let wall = local(resume_local) + chrono::Duration::hours(k.into());
            new.from_local_datetime(&wall).unwrap().timestamp()
        }));
        out
    }

    fn arb_snaps() -> impl Strategy<Value = Vec<SnapshotInfo>> {
        let one = (
            prop::bool::weighted(0.85),
            prop_oneof![
                0i64..7_200,
                0i64..(3 * DAY as i64),
                -(2 * DAY as i64)..(2 * DAY as i64)
            ],
            prop::bool::weighted(0.1),
        );
        prop::collection::vec(one, 0..60).prop_map(|items| {
            let mut at = T0;
            items
                .into_iter()
                .enumerate()
                .map(|(i, (ours, step, held))| {
                    at += step;
                    let i = i as u64;
                    SnapshotInfo {
                        name: if ours {
                            format!("zdr_{i}")
                        } else {
                            format!("manual_{i}")
                        },
                        guid: i + 1,
                        createtxg: 100 + 3 * i,
                        creation: at,
                        used: 0,
                        userrefs: u32::from(held),
                    }
                })
                .collect()
        })
    }

    fn arb_rules() -> impl Strategy<Value = Rules> {
        let periods = prop::sample::select(vec![60, 900, HOUR, 2 * HOUR, DAY, WEEK, 2 * WEEK]);
        (
            prop::collection::btree_map(periods, 1u32..8, 1..4),
            prop::sample::select(vec![0, HOUR, DAY]),
            prop::collection::hash_set(1u64..70, 0..3),
        )
            .prop_map(|(t, immutable, protected)| Rules {
                prefix: "zdr".into(),
                tiers: t.into_iter().map(|(p, n)| (period(p), n)).collect(),
                immutable_for_secs: immutable,
                protected_guids: protected,
            })
    }

    fn arb_case() -> impl Strategy<Value = (Vec<SnapshotInfo>, Rules, i64)> {
        (arb_snaps(), arb_rules(), -(DAY as i64)..(90 * DAY as i64))
            .prop_map(|(s, r, off)| (s, r, T0 + off))
    }

    fn newest(snaps: &[SnapshotInfo]) -> Option<&SnapshotInfo> {
        snaps.iter().max_by_key(|s| s.createtxg)
    }

    proptest! {
        #[test]
        fn plan_partitions_the_snapshots((snaps, rules, now) in arb_case()) {
            let p = plan(&snaps, &rules, now);
            let mut all: Vec<&str> = kept_names(&p);
            all.extend(p.destroy.iter().map(String::as_str));
            all.sort_unstable();
            let mut expected: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
            expected.sort_unstable();
            prop_assert_eq!(all, expected);
        }

        #[test]
        fn each_tier_keeps_min_n_buckets((snaps, rules, now) in arb_case()) {
            let p = plan(&snaps, &rules, now);
            for (per, n) in &rules.tiers {
                let buckets: HashSet<i64> = snaps
                    .iter()
                    .filter(|s| is_ours(&s.name, &rules.prefix))
                    .map(|s| bucket(s.creation, per.0.secs()))
                    .collect();
                let kept = p.keep.iter().filter(|(_, r)| r.contains(&KeepReason::Tier(*per))).count();
                prop_assert_eq!(kept, (*n as usize).min(buckets.len()), "tier {}", per);
            }
        }

        #[test]
        fn never_destroys_the_newest((snaps, rules, now) in arb_case()) {
            let p = plan(&snaps, &rules, now);
            if let Some(n) = newest(&snaps) {
                prop_assert!(!p.destroy.contains(&n.name));
            }
        }

        #[test]
        fn planning_what_is_kept_destroys_nothing((snaps, rules, now) in arb_case()) {
            let p = plan(&snaps, &rules, now);
            let kept: Vec<SnapshotInfo> = snaps.iter().filter(|s| !p.destroy.contains(&s.name)).cloned().collect();
            let again = plan(&kept, &rules, now);
            prop_assert!(again.destroy.is_empty(), "second plan destroys {:?}", again.destroy);
            prop_assert_eq!(again.keep, p.keep);
        }

        #[test]
        fn never_destroys_what_must_stay((snaps, rules, now) in arb_case()) {
            let p = plan(&snaps, &rules, now);
            let floor = now - rules.immutable_for_secs as i64;
            for s in snaps.iter().filter(|s| p.destroy.contains(&s.name)) {
                prop_assert!(is_ours(&s.name, &rules.prefix));
                prop_assert_eq!(s.userrefs, 0);
                prop_assert!(!rules.protected_guids.contains(&s.guid));
                prop_assert!(s.creation <= floor);
            }
        }

        #[test]
        fn clock_jumps_never_destroy_the_newest_or_the_future((snaps, rules, now) in arb_case()) {
            for at in [now - DAY as i64, now, now + DAY as i64] {
                let p = plan(&snaps, &rules, at);
                if let Some(n) = newest(&snaps) {
                    prop_assert!(!p.destroy.contains(&n.name));
                }
                for s in snaps.iter().filter(|s| s.creation > at) {
                    prop_assert!(!p.destroy.contains(&s.name), "{} is in the future of {}", s.name, at);
                }
            }
        }

        #[test]
        fn dst_changes_do_not_merge_or_split_hours(before in 1u32..30, after in 1u32..30, spring in any::<bool>()) {
            // Spring: 02:00 CET jumps to 03:00 CEST. Autumn: 03:00 CEST falls back to 02:00 CET.
            let instants = if spring {
                across_dst((3, 31, 2), 1, (3, 31, 3), 2, before, after)
            } else {
                across_dst((10, 27, 3), 2, (10, 27, 2), 1, before, after)
            };
            for w in instants.windows(2) {
                prop_assert_eq!(w[1] - w[0], HOUR as i64);
                prop_assert_eq!(bucket(w[1], HOUR), bucket(w[0], HOUR) + 1);
            }
            let snaps: Vec<SnapshotInfo> = instants
                .iter()
                .enumerate()
                .map(|(i, at)| snap(&snapshot_name("zdr", *at), i as u64 + 1, *at))
                .collect();
            let names: HashSet<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
            prop_assert_eq!(names.len(), snaps.len());
            let mut sorted: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
            let now = instants[instants.len() - 1] + 60;
            let n = (before + after) as usize;
            let p = plan(&snaps, &rules(tiers(&[(HOUR, n as u32)]), 0), now);
            prop_assert!(p.destroy.is_empty());
            let p = plan(&snaps, &rules(tiers(&[(HOUR, 24)]), 0), now);
            prop_assert_eq!(p.keep.len(), n.min(24));
        }
    }
}
