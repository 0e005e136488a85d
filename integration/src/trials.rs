//! Kill -9 trials (issue 18): a seeded plan of faults, and the invariants
//! checked once the fleet has recovered from them. Pure: plain data in,
//! violations out; `integration/tests/trials.rs` is the shell that starts
//! the fleet, injects the faults and reads what the checks need.
//!
//! One trial kills a random process (the source agent, the target agent, the
//! coordinator or nats-server) at a random moment while a replication pair
//! snapshots, prunes and streams, keeps it down for a random while, restarts
//! it, and repeats; the same seed gives the same plan, so a failure replays.
//!
//! Invariants after recovery:
//! - **no snapshot lost that the policy keeps**: for every tier (period P,
//!   keep N) of the source's class, the oldest snapshot ever taken in each of
//!   the N most recent buckets that ever held one is still there. Retention
//!   keeps exactly those representatives, and a bucket among the N most recent
//!   now was among them at every earlier prune too, so none may be missing.
//!   "Ever taken" is what is on disk plus what the audit log says was
//!   destroyed: a destroy that bypassed the audit would hide from this check,
//!   and is what the next rule is for. Buckets go by ZFS `creation`, as
//!   retention's do: from the pool for what is there, from the audit record
//!   for what was destroyed;
//! - **every destroy was audited before it ran**: each `done` destroy has an
//!   earlier `intent` for the same snapshot;
//! - **no common base destroyed**: every snapshot on the copy is a snapshot or
//!   bookmark of the source with the same name and GUID, so the pair continues
//!   incrementally;
//! - **no job stuck, none without a reason**: the job is done again within a
//!   bound after the last fault, and a failed job says why;
//! - **a resumed transfer re-sends little**: the bytes all attempts of a step
//!   moved, less the stream's size, over the stream's size (below 5 %).
//!
//! After recovery a trial also runs a restore and then a drill from the copy,
//! each with one more kill -9 ([`phase_plan`]) while it runs:
//! - **every restore and drill ends**, done/passed or failed with a reason,
//!   within a bound after the restart; a restore that says done landed the
//!   GUID it chose;
//! - **no drill scratch is left** on the drill node once the drill ended.

use std::collections::{BTreeMap, HashMap, HashSet};

/// A process a trial kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Victim {
    Source,
    Target,
    Coordinator,
    Nats,
}

impl Victim {
    pub const ALL: [Victim; 4] = [
        Victim::Source,
        Victim::Target,
        Victim::Coordinator,
        Victim::Nats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Victim::Source => "source agent",
            Victim::Target => "target agent",
            Victim::Coordinator => "coordinator",
            Victim::Nats => "nats-server",
        }
    }
}

/// One kill -9: `after_ms` from the previous restart (or from the first
/// stream under way), down for `down_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub victim: Victim,
    pub after_ms: u64,
    pub down_ms: u64,
}

/// SplitMix64: small, seedable, and the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// The faults of trial `trial` of a run seeded with `seed`: `count` kills,
/// each 1-8 s after the last restart, down for 0-2 s.
pub fn plan(seed: u64, trial: u64, count: usize) -> Vec<Fault> {
    let mut rng = Rng::new(seed ^ trial.wrapping_mul(0xA24B_AED4_963E_E407));
    (0..count)
        .map(|_| Fault {
            victim: Victim::ALL[rng.between(0, 3) as usize],
            after_ms: rng.between(1_000, 8_000),
            down_ms: rng.between(0, 2_000),
        })
        .collect()
}

/// The kills of the restore and the drill phase, in that order: sooner after
/// the phase starts than [`plan`]'s, since both phases are short. Drawn from
/// their own stream of the seed, so that the replication plan stays the same.
pub fn phase_plan(seed: u64, trial: u64) -> [Fault; 2] {
    let mut rng = Rng::new(!seed ^ trial.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut one = || Fault {
        victim: Victim::ALL[rng.between(0, 3) as usize],
        after_ms: rng.between(200, 3_000),
        down_ms: rng.between(0, 2_000),
    };
    [one(), one()]
}

/// One line of an agent's audit log, as the check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    pub action: String,
    /// `dataset@snapshot`.
    pub target: String,
    pub outcome: String,
    /// The snapshot's ZFS `creation`, when the record gives it (retention's
    /// destroys do).
    pub created: Option<i64>,
}

/// A broken invariant, said so that the log of the trial explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Destroys that ran without an earlier `intent` record for the same target.
pub fn unaudited_destroys(audit: &[Audited]) -> Vec<Violation> {
    let mut intended = HashSet::new();
    let mut out = Vec::new();
    for r in audit.iter().filter(|r| r.action.starts_with("destroy")) {
        match r.outcome.as_str() {
            "intent" => {
                intended.insert(r.target.as_str());
            }
            "done" if !intended.contains(r.target.as_str()) => out.push(Violation(format!(
                "{} was destroyed with no intent audited before it",
                r.target
            ))),
            _ => {}
        }
    }
    out
}

/// The creation time (Unix seconds) in one of our snapshot names,
/// `<prefix>_YYYYMMDDTHHMMSSZ`.
pub fn created_at(name: &str, prefix: &str) -> Option<i64> {
    let stamp = name.strip_prefix(prefix)?.strip_prefix('_')?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Tier representatives missing from `present`: for each `(period_secs,
/// keep)`, the oldest snapshot ever taken (of `ever`: our snapshots, each
/// with its ZFS `creation`) in each of the `keep` most recent buckets that
/// ever held one.
///
/// Buckets go by `creation`, as the agent's retention does, never by the
/// time in the name: the agent names a snapshot before ZFS stamps it, and
/// under load the two fall on either side of a bucket boundary.
pub fn lost_representatives(
    ever: &HashMap<String, i64>,
    present: &HashSet<String>,
    tiers: &[(u64, u32)],
) -> Vec<Violation> {
    let mut out = Vec::new();
    for &(period, keep) in tiers {
        let mut oldest: BTreeMap<i64, (i64, &str)> = BTreeMap::new();
        for (name, &t) in ever {
            let b = zdr_agent::retention::bucket(t, period);
            let e = oldest.entry(b).or_insert((t, name));
            if (t, name.as_str()) < *e {
                *e = (t, name);
            }
        }
        for (_, (_, name)) in oldest.iter().rev().take(keep as usize) {
            if !present.contains(*name) {
                out.push(Violation(format!(
                    "@{name} represents one of the {keep} newest {period} s buckets, and is gone"
                )));
            }
        }
    }
    out
}

/// Snapshots on the copy that match no source snapshot or bookmark of the
/// same name and GUID: the pair would have lost its common base.
pub fn foreign_on_copy(
    copy: &[(String, u64)],
    source: &[(String, u64)],
    bookmarks: &[(String, u64)],
) -> Vec<Violation> {
    let known: HashMap<&str, u64> = source
        .iter()
        .chain(bookmarks)
        .map(|(n, g)| (n.as_str(), *g))
        .collect();
    copy.iter()
        .filter(|(n, g)| known.get(n.as_str()) != Some(g))
        .map(|(n, g)| {
            Violation(format!(
                "the copy's @{n} (GUID {g}) is neither a snapshot nor a bookmark of the source"
            ))
        })
        .collect()
}

/// For each resumed landing in `history`: the bytes the cut attempt moved
/// that neither landed nor stayed in the saved partial receive (re-sent by
/// the resume), as a fraction of one snapshot's stream. Reads `attempt N
/// failed after B bytes`, `resuming the saved partial receive of P bytes`,
/// then the landing (`attempt N sent X bytes`).
///
/// The cut attempt may be an `-I` stream that landed whole snapshots before
/// the one whose partial was saved; with every snapshot's stream `snapshot`
/// bytes long (as in the trials), what it re-sends is `(B - P) mod snapshot`.
pub fn resent_by_resumes(history: &[String], snapshot: u64) -> Vec<f64> {
    let mut cut = None;
    let mut partial = None;
    let mut out = Vec::new();
    for line in history {
        if let Some(b) = number_between(line, " failed after ", " bytes") {
            cut = Some(b);
            partial = None;
        } else if let Some(p) =
            number_between(line, "resuming the saved partial receive of ", " bytes")
        {
            partial = Some(p);
        } else if number_between(line, " sent ", " bytes").is_some()
            && (line.contains(" done: ") || line.contains("the resumed receive landed"))
        {
            if let (Some(b), Some(p)) = (cut, partial) {
                out.push(resent_fraction(b, p, snapshot));
            }
            cut = None;
            partial = None;
        }
    }
    out
}

/// The same on real ZFS, where snapshots' streams differ in size: per
/// resumed landing, the bytes sent twice and the cut snapshot's stream. A
/// resumed `zfs send -t` sends the rest of the one snapshot that was cut,
/// `X` bytes, so that snapshot's stream is `P + X` and the cut attempt moved
/// `B - P` of it twice, provided the cut attempt streamed that snapshot
/// alone: a full, or an incremental that `one_snapshot(from, to)` says spans
/// one snapshot. A cut `-I` over several snapshots gives `None`: how much of
/// `B` whole snapshots took is not in the history.
pub fn resent_on_real_zfs(
    history: &[String],
    one_snapshot: impl Fn(&str, &str) -> bool,
) -> Vec<Option<(u64, u64)>> {
    let mut single = false;
    let mut cut = None;
    let mut partial = None;
    let mut out = Vec::new();
    for line in history {
        if let Some((_, what)) = line.split_once(" of step ") {
            let what = what.split_once(": ").map_or("", |(_, w)| w);
            let mut words = what.split(' ').map(|w| w.trim_end_matches(','));
            single = match (words.next(), words.next(), words.next()) {
                (Some("full"), _, _) => true,
                (Some("-I" | "-i"), Some(from), Some(to)) => one_snapshot(
                    from.trim_start_matches(['@', '#']),
                    to.trim_start_matches('@'),
                ),
                _ => false,
            };
        }
        if let Some(b) = number_between(line, " failed after ", " bytes") {
            cut = Some((b, single));
            partial = None;
        } else if let Some(p) =
            number_between(line, "resuming the saved partial receive of ", " bytes")
        {
            partial = Some(p);
        } else if let Some(x) = number_between(line, " sent ", " bytes")
            .filter(|_| line.contains(" done: ") || line.contains("the resumed receive landed"))
        {
            if let (Some((b, single)), Some(p)) = (cut, partial) {
                out.push(single.then(|| (b.saturating_sub(p), p + x)));
            }
            cut = None;
            partial = None;
        }
    }
    out
}

fn number_between(line: &str, before: &str, after: &str) -> Option<u64> {
    let (_, rest) = line.rsplit_once(before)?;
    rest.split_once(after)?.0.trim().parse().ok()
}

/// `cut` bytes moved by the failed attempt, `kept` of them in the saved
/// partial receive of a snapshot whose stream is `snapshot` bytes, whole
/// earlier snapshots landed: the share of that snapshot's stream sent twice.
pub fn resent_fraction(cut: u64, kept: u64, snapshot: u64) -> f64 {
    if snapshot == 0 {
        return 0.0;
    }
    (cut.saturating_sub(kept) % snapshot) as f64 / snapshot as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn stamped(snaps: &[(&str, i64)]) -> HashMap<String, i64> {
        snaps.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_every_victim_comes_up() {
        assert_eq!(plan(7, 3, 4), plan(7, 3, 4));
        assert_ne!(plan(7, 3, 4), plan(7, 4, 4));
        let victims: HashSet<Victim> = (0..50)
            .flat_map(|t| plan(1, t, 2))
            .map(|f| f.victim)
            .collect();
        assert_eq!(victims.len(), 4);
        for f in plan(9, 0, 100) {
            assert!((1_000..=8_000).contains(&f.after_ms) && f.down_ms <= 2_000);
        }
        assert_eq!(phase_plan(7, 3), phase_plan(7, 3));
        let phase_victims: HashSet<Victim> = (0..50)
            .flat_map(|t| phase_plan(1, t))
            .map(|f| f.victim)
            .collect();
        assert_eq!(phase_victims.len(), 4);
        for f in (0..50).flat_map(|t| phase_plan(9, t)) {
            assert!((200..=3_000).contains(&f.after_ms) && f.down_ms <= 2_000);
        }
    }

    #[test]
    fn a_destroy_needs_an_earlier_intent() {
        let r = |a: &str, t: &str, o: &str| Audited {
            action: a.into(),
            target: t.into(),
            outcome: o.into(),
            created: None,
        };
        let ok = [r("destroy", "t@a", "intent"), r("destroy", "t@a", "done")];
        assert!(unaudited_destroys(&ok).is_empty());
        let bad = [r("destroy", "t@a", "done"), r("destroy", "t@a", "intent")];
        assert_eq!(unaudited_destroys(&bad).len(), 1);
        let other = [r("destroy", "t@b", "intent"), r("destroy", "t@a", "done")];
        assert_eq!(unaudited_destroys(&other).len(), 1);
    }

    #[test]
    fn names_carry_their_creation_time() {
        assert_eq!(created_at("zdr_19700101T000010Z", "zdr"), Some(10));
        assert_eq!(created_at("manual", "zdr"), None);
        assert_eq!(created_at("zdrx_19700101T000010Z", "zdr"), None);
    }

    #[test]
    fn a_missing_representative_of_a_recent_bucket_is_a_loss() {
        // 2 s buckets, keep 2: buckets 5 (10, 11) and 6 (12) are the newest.
        let ever = stamped(&[
            ("zdr_19700101T000008Z", 8),
            ("zdr_19700101T000010Z", 10),
            ("zdr_19700101T000011Z", 11),
            ("zdr_19700101T000012Z", 12),
        ]);
        let kept = set(&["zdr_19700101T000010Z", "zdr_19700101T000012Z"]);
        assert!(lost_representatives(&ever, &kept, &[(2, 2)]).is_empty());
        // @10 represents bucket 5; @11 alone does not make up for it.
        let wrong = set(&["zdr_19700101T000011Z", "zdr_19700101T000012Z"]);
        let v = lost_representatives(&ever, &wrong, &[(2, 2)]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].0.contains("zdr_19700101T000010Z"));
    }

    #[test]
    fn buckets_go_by_creation_not_by_the_name() {
        // VM trial 18: @47 was stamped by ZFS at 48 s, so by creation it
        // shares bucket 1 with @48 (stamped 49 s) and represents it, and
        // retention may prune @48. By name, @48 looked like bucket 1's.
        let ever = stamped(&[("zdr_19700101T000047Z", 48), ("zdr_19700101T000048Z", 49)]);
        let kept = set(&["zdr_19700101T000047Z"]);
        assert!(lost_representatives(&ever, &kept, &[(48, 2)]).is_empty());
        let lost = set(&["zdr_19700101T000048Z"]);
        assert_eq!(lost_representatives(&ever, &lost, &[(48, 2)]).len(), 1);
    }

    #[test]
    fn the_copy_must_share_names_and_guids_with_the_source() {
        let src = vec![("a".to_string(), 1), ("c".to_string(), 3)];
        let marks = vec![("b".to_string(), 2)];
        let copy = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        assert!(foreign_on_copy(&copy, &src, &marks).is_empty());
        let forged = vec![("c".to_string(), 9)];
        assert_eq!(foreign_on_copy(&forged, &src, &marks).len(), 1);
    }

    #[test]
    fn a_resume_re_sends_what_the_cut_attempt_moved_beyond_the_partial() {
        let h: Vec<String> = [
            "t planned 1 step(s): full @s1",
            "t attempt 1 failed after 9000000 bytes: source node-a1: gone; retrying in 1 s",
            "t attempt 2 of step 1: resuming the saved partial receive of 8000000 bytes to b at x",
            "t done: b/t@s1 (GUID 5) is on b in 9.0 s; attempt 2 sent 16000000 bytes",
            "t planned 1 step(s): -I @s1 @s2",
            "t done: b/t@s2 (GUID 6) is on b in 1.0 s; attempt 1 sent 100 bytes",
            "t attempt 1 failed after 10 bytes: x; retrying in 1 s",
            "t attempt 2 failed after 0 bytes: y; retrying in 2 s",
            "t attempt 3 of step 1: -I @s2 @s3 to b at x",
            "t done: b/t@s3 (GUID 7) is on b in 1.0 s; attempt 3 sent 100 bytes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(resent_by_resumes(&h, 24_000_000), vec![1.0 / 24.0]);
        assert_eq!(resent_fraction(5, 8, 16), 0.0);
        assert_eq!(resent_fraction(0, 0, 0), 0.0);
        // An -I stream that landed two 10-byte snapshots, then cut the third
        // 3 bytes past its saved 4: 3 of 10 re-sent.
        assert_eq!(resent_fraction(27, 4, 10), 0.3);
    }

    #[test]
    fn on_real_zfs_a_resume_is_measured_when_one_snapshot_was_cut() {
        let h: Vec<String> = [
            "t attempt 1 of step 1: -I @s1 @s2, limited to 4000000 B/s to b at x",
            "t attempt 1 failed after 700 bytes: source node-a1: gone; retrying in 1 s",
            "t attempt 2 of step 1: resuming the saved partial receive of 600 bytes to b at x",
            "t done: b/t@s2 (GUID 5) is on b in 9.0 s; attempt 2 sent 400 bytes",
            "t attempt 1 of step 1: -I @s2 @s5 to b at x",
            "t attempt 1 failed after 900 bytes: x; retrying in 1 s",
            "t attempt 2 of step 1: resuming the saved partial receive of 100 bytes to b at x",
            "t the resumed receive landed @s3 (GUID 6), not @s5; planning again; attempt 2 sent 50 bytes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let adjacent =
            |a: &str, b: &str| a[1..].parse::<u32>().unwrap() + 1 == b[1..].parse::<u32>().unwrap();
        // 100 of the 1,000-byte @s2 sent twice; the cut @s2..@s5 is not measured.
        assert_eq!(
            resent_on_real_zfs(&h, adjacent),
            vec![Some((100, 1000)), None]
        );
    }
}
