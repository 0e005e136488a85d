//! Drill planning, pure: which datasets a class's drill restores, from
//! which copy, and when. `now` comes in; nothing here reads a clock.
//!
//! Rules:
//! - A class's drills are numbered from 1; drill `k` is at
//!   `anchor + k * every`, where `anchor` is when the leader first saw the
//!   class (persisted, so a restart does not push drills back).
//! - The class's datasets are sorted (node, then name); drill `k` takes the
//!   `s = min(sample, n)` positions `(k-1)*s .. k*s` modulo `n`. Any
//!   `ceil(n / s)` consecutive drills take `ceil(n / s) * s >= n`
//!   consecutive positions, so they cover every dataset.
//! - A dataset's copies (its replicas, sorted by node) take turns: the
//!   `t`-th drill of a dataset uses copy `t mod m`.
//! - A drill missed while no coordinator led (an outage across its time)
//!   is caught up when one leads again, with the others missed, but only
//!   within the last `ceil(n / s)` drills: those cover every dataset once,
//!   so an older missed drill would only repeat one of them.

use serde::Serialize;

/// A protected dataset with its replicas, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub node: String,
    pub dataset: String,
    /// Nodes holding a replica, sorted.
    pub copies: Vec<String>,
}

/// A class's drill settings and its datasets (sorted by node, dataset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDrills {
    pub class: String,
    pub every_secs: u64,
    pub sample: u32,
    /// Unix seconds: drill 1 is one `every` after this.
    pub anchor: i64,
    pub datasets: Vec<Subject>,
}

/// One dataset restored by one drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDrill {
    /// Unix seconds.
    pub at: i64,
    pub class: String,
    pub number: u64,
    pub node: String,
    pub dataset: String,
    /// The copy's node; `None` when the dataset has no replica (that drill
    /// fails: there is nothing to restore from but production).
    pub copy: Option<String>,
}

/// Positions (into the sorted datasets) of drill `k`'s sample; `k >= 1`.
pub fn sample(n: usize, sample: u32, k: u64) -> Vec<usize> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let s = (sample as usize).clamp(1, n);
    let start = ((k - 1) % n as u64) as usize * s % n;
    (0..s).map(|i| (start + i) % n).collect()
}

/// How many of drills `1..k` took position `i`: the first `k - 1` drills
/// took `(k - 1) * s` consecutive positions, round and round.
pub fn times_before(n: usize, sample: u32, i: usize, k: u64) -> u64 {
    if n == 0 || k == 0 {
        return 0;
    }
    let s = (sample as u64).clamp(1, n as u64);
    let taken = (k - 1) * s;
    let i = i as u64;
    if taken <= i {
        0
    } else {
        (taken - i).div_ceil(n as u64)
    }
}

/// The newest drill number due at `now`, if any is.
pub fn due_number(anchor: i64, every_secs: u64, now: i64) -> Option<u64> {
    if every_secs == 0 || now < anchor {
        return None;
    }
    let k = (now - anchor) as u64 / every_secs;
    (k >= 1).then_some(k)
}

/// Drills a class needs to cover its `n` datasets, `sample` at a time:
/// `ceil(n / s)`, at least 1.
pub fn covering(n: usize, sample: u32) -> u64 {
    let s = (sample as usize).clamp(1, n.max(1));
    n.div_ceil(s).max(1) as u64
}

/// The drills to start at `now`, oldest first: every due drill not
/// `started` among the newest `window` due ones (`covering`), so one
/// missed during an outage runs late rather than never.
pub fn due_numbers(
    anchor: i64,
    every_secs: u64,
    now: i64,
    window: u64,
    started: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let Some(k) = due_number(anchor, every_secs, now) else {
        return Vec::new();
    };
    let first = k.saturating_sub(window.max(1) - 1).max(1);
    (first..=k).filter(|&i| !started(i)).collect()
}

/// When drill `k` of a class is.
pub fn drill_at(anchor: i64, every_secs: u64, k: u64) -> i64 {
    anchor.saturating_add((every_secs.saturating_mul(k)).min(i64::MAX as u64) as i64)
}

/// What drill `k` of a class restores, each dataset from its copy in turn.
pub fn drill(c: &ClassDrills, k: u64) -> Vec<PlannedDrill> {
    let n = c.datasets.len();
    let at = drill_at(c.anchor, c.every_secs, k);
    sample(n, c.sample, k)
        .into_iter()
        .map(|i| {
            let d = &c.datasets[i];
            let t = times_before(n, c.sample, i, k);
            let copy = (!d.copies.is_empty())
                .then(|| d.copies[(t % d.copies.len() as u64) as usize].clone());
            PlannedDrill {
                at,
                class: c.class.clone(),
                number: k,
                node: d.node.clone(),
                dataset: d.dataset.clone(),
                copy,
            }
        })
        .collect()
}

/// Every drill after `from` up to `until` (the test plan), in time order,
/// at most `limit` entries.
pub fn plan(classes: &[ClassDrills], from: i64, until: i64, limit: usize) -> Vec<PlannedDrill> {
    let mut out = Vec::new();
    for c in classes {
        if c.every_secs == 0 || c.datasets.is_empty() {
            continue;
        }
        let mut k = due_number(c.anchor, c.every_secs, from).unwrap_or(0) + 1;
        let mut added = 0;
        while added < limit && drill_at(c.anchor, c.every_secs, k) <= until {
            let d = drill(c, k);
            added += d.len();
            out.extend(d);
            k += 1;
        }
    }
    out.sort_by(|a, b| (a.at, &a.class, a.number).cmp(&(b.at, &b.class, b.number)));
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn class(n: usize, sample: u32, copies: usize) -> ClassDrills {
        ClassDrills {
            class: "gold".into(),
            every_secs: 100,
            sample,
            anchor: 1_000,
            datasets: (0..n)
                .map(|i| Subject {
                    node: "n1".into(),
                    dataset: format!("tank/d{i:03}"),
                    copies: (0..copies).map(|c| format!("r{c}")).collect(),
                })
                .collect(),
        }
    }

    proptest! {
        /// Any ceil(n / sample) drills in a row cover every dataset.
        #[test]
        fn any_window_of_ceil_n_over_s_drills_covers_all(
            n in 1usize..60, s in 1u32..80, first in 1u64..10_000,
        ) {
            let window = n.div_ceil((s as usize).min(n)) as u64;
            let covered: BTreeSet<usize> =
                (first..first + window).flat_map(|k| sample(n, s, k)).collect();
            prop_assert_eq!(covered.len(), n);
        }

        /// The closed form counts what the drills before `k` really took.
        #[test]
        fn times_before_counts_the_earlier_samples(
            n in 1usize..30, s in 1u32..40, k in 1u64..200,
        ) {
            for i in 0..n {
                let counted = (1..k).filter(|&j| sample(n, s, j).contains(&i)).count() as u64;
                prop_assert_eq!(times_before(n, s, i, k), counted);
            }
        }

        /// A dataset's copies take turns: m of its drills in a row use m
        /// distinct copies.
        #[test]
        fn copies_take_turns(n in 1usize..12, s in 1u32..12, m in 1usize..4) {
            let c = class(n, s, m);
            let mut seen: Vec<Vec<String>> = vec![Vec::new(); n];
            let mut k = 1;
            while seen.iter().any(|v| v.len() < m) {
                for d in drill(&c, k) {
                    let i = c.datasets.iter().position(|x| x.dataset == d.dataset).unwrap();
                    if seen[i].len() < m {
                        seen[i].push(d.copy.unwrap());
                    }
                }
                k += 1;
            }
            for v in seen {
                prop_assert_eq!(v.iter().collect::<BTreeSet<_>>().len(), m);
            }
        }
    }

    #[test]
    fn drills_are_due_one_every_after_the_anchor() {
        assert_eq!(due_number(1_000, 100, 1_099), None, "drill 1 is at 1100");
        assert_eq!(due_number(1_000, 100, 1_100), Some(1));
        assert_eq!(due_number(1_000, 100, 1_350), Some(3), "only the newest");
        assert_eq!(due_number(1_000, 100, 900), None);
    }

    #[test]
    fn drills_missed_in_an_outage_are_caught_up_within_the_covering_window() {
        let started = |done: &'static [u64]| move |k: u64| done.contains(&k);
        // Drills 2 and 3 fell in an outage; at 1_420 drill 4 is due.
        assert_eq!(due_numbers(1_000, 100, 1_420, 3, started(&[1])), [2, 3, 4]);
        assert_eq!(due_numbers(1_000, 100, 1_420, 3, started(&[1, 3])), [2, 4]);
        assert_eq!(
            due_numbers(1_000, 100, 1_420, 3, started(&[2, 3, 4])),
            [0u64; 0]
        );
        // A long outage: only the newest `window` drills, which cover all.
        assert_eq!(due_numbers(1_000, 100, 2_050, 3, started(&[1])), [8, 9, 10]);
        assert_eq!(due_numbers(1_000, 100, 2_050, 1, started(&[])), [10]);
        assert_eq!(
            due_numbers(1_000, 100, 1_099, 3, started(&[])),
            [0u64; 0],
            "none due yet"
        );
        assert_eq!(covering(0, 1), 1);
        assert_eq!(covering(5, 2), 3);
        assert_eq!(covering(3, 10), 1);
    }

    proptest! {
        /// After any outage, the drills started then and the ones before
        /// cover every dataset: none is left undrilled for longer than
        /// `covering` drills.
        #[test]
        fn catch_up_keeps_every_dataset_covered(
            n in 1usize..20, s in 1u32..8, last_run in 0u64..30, gap in 0u64..40,
        ) {
            let now_k = last_run + gap.max(1);
            let now = 1_000 + 100 * now_k as i64 + 50;
            let window = covering(n, s);
            let run = due_numbers(1_000, 100, now, window, |k| k <= last_run);
            let from = now_k.saturating_sub(window - 1).max(1);
            let covered: BTreeSet<usize> = (from..=now_k)
                .filter(|k| *k <= last_run || run.contains(k))
                .flat_map(|k| sample(n, s, k))
                .collect();
            if now_k >= window {
                prop_assert_eq!(covered.len(), n);
            }
        }
    }

    #[test]
    fn the_plan_lists_each_drill_with_its_copy_in_time_order() {
        let c = class(3, 2, 2);
        let p = plan(std::slice::from_ref(&c), 1_150, 1_400, 100);
        let got: Vec<(i64, u64, &str, Option<&str>)> = p
            .iter()
            .map(|d| (d.at, d.number, d.dataset.as_str(), d.copy.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (1_200, 2, "tank/d002", Some("r0")),
                (1_200, 2, "tank/d000", Some("r1")),
                (1_300, 3, "tank/d001", Some("r1")),
                (1_300, 3, "tank/d002", Some("r1")),
                (1_400, 4, "tank/d000", Some("r0")),
                (1_400, 4, "tank/d001", Some("r0")),
            ]
        );
        assert_eq!(plan(&[c], 1_150, 100_000, 5).len(), 5, "bounded");
    }

    #[test]
    fn a_dataset_without_a_replica_is_planned_without_a_copy() {
        let c = class(1, 1, 0);
        assert_eq!(drill(&c, 1)[0].copy, None);
    }
}
