//! A drill's decisions, pure: the snapshot it restores, whether the drill
//! node has room, the verdict from the two content hashes, and which drill
//! scratch no drill uses any more.
//!
//! Rules:
//! - The drill restores the copy's newest snapshot that production still
//!   holds (by GUID): the content is compared with that same snapshot.
//! - A drill sends nothing before production's snapshot is held. If
//!   production no longer lists it by then (its retention was first), the
//!   drill picks again by the first rule from the listings as they are now.
//! - The scratch needs the copy's `used` bytes free in the pool it lands in;
//!   short of that the drill is refused before anything is sent.
//! - It passes only when both sides were read: equal digests when both
//!   hashed files, or both read back every block (ZFS checked checksums;
//!   no digest to compare, and the result says so).

use std::collections::BTreeSet;

use zdr_common::wire::{is_drill_scratch, CheckLevel, ContentHash, SnapshotInfo};

use super::super::restore::plan::{fresh_steps, ordered};
use super::super::restore::points::PointSnapshot;
use crate::jobs::PlannedStep;

/// The newest snapshot of the copy that production still holds, by GUID.
pub fn common_snapshot<'a>(
    copy: &'a [PointSnapshot],
    production: &[SnapshotInfo],
) -> Option<&'a PointSnapshot> {
    copy.iter()
        .rev()
        .find(|s| production.iter().any(|p| p.guid == s.guid))
}

/// A drill that has sent nothing yet, checked against the listings now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repick {
    /// Production still lists the chosen snapshot, or a listing is unknown.
    Keep,
    /// The snapshot to drill instead, and the steps that restore it.
    Pick(PointSnapshot, Vec<PlannedStep>),
    /// Production lists nothing the copy holds.
    Nothing,
}

/// Picks a drill's snapshot again when production's listing no longer has
/// the chosen one (`chosen`, a GUID): production's retention pruned it
/// before the drill's hold landed (kill -9 trials 57, 70, 92, 94).
pub fn repick(chosen: u64, copy: &[SnapshotInfo], production: &[SnapshotInfo]) -> Repick {
    if copy.is_empty() || production.is_empty() || production.iter().any(|p| p.guid == chosen) {
        return Repick::Keep;
    }
    let snaps = ordered(copy);
    // `common_snapshot`'s rule, as an index for the steps.
    match snaps
        .iter()
        .rposition(|s| production.iter().any(|p| p.guid == s.guid))
    {
        Some(c) => Repick::Pick(snaps[c].clone(), fresh_steps(&snaps, c)),
        None => Repick::Nothing,
    }
}

/// Whether `free` bytes hold a restore of `need` bytes.
pub fn fits(need: u64, free: u64) -> bool {
    need <= free
}

/// Drill scratch (`<pool>/zdr-drill/<name>`) that the nodes list, as
/// `(node, dataset)`, and that no drill still going on restores into
/// (`live`): left by a drill whose cleanup failed, or whose record is gone.
/// Only the coordinator can tell: an agent restarting in the middle of a
/// drill cannot know that the drill goes on (the kill -9 trials saw one
/// destroy what the drill's first step had landed).
pub fn orphans<'a>(
    listed: impl IntoIterator<Item = (&'a str, &'a str)>,
    live: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    listed
        .into_iter()
        .filter(|(_, ds)| is_drill_scratch(ds))
        .map(|(n, ds)| (n.to_string(), ds.to_string()))
        .filter(|k| !live.contains(k))
        .collect()
}

/// The content check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub level: Option<CheckLevel>,
    pub why: Option<String>,
    pub production_digest: Option<String>,
    pub restored_digest: Option<String>,
    /// Mounting and reading on the slower side, milliseconds.
    pub mount_ms: u64,
    pub read_ms: u64,
}

/// Compares the hash of production's snapshot with the restored one's.
pub fn verdict(
    production: Result<ContentHash, String>,
    restored: Result<ContentHash, String>,
) -> Verdict {
    let times = |h: &Result<ContentHash, String>| {
        h.as_ref()
            .map(|h| (h.mount_ms, h.read_ms))
            .unwrap_or((0, 0))
    };
    let ((pm, pr), (rm, rr)) = (times(&production), times(&restored));
    let mut v = Verdict {
        passed: false,
        level: None,
        why: None,
        production_digest: None,
        restored_digest: None,
        mount_ms: pm.max(rm),
        read_ms: pr.max(rr),
    };
    let (p, r) = match (production, restored) {
        (Err(e), _) => {
            v.why = Some(format!("production could not be hashed: {e}"));
            return v;
        }
        (_, Err(e)) => {
            v.why = Some(format!("the restored copy could not be read: {e}"));
            return v;
        }
        (Ok(p), Ok(r)) => (p, r),
    };
    v.production_digest = p.digest.clone();
    v.restored_digest = r.digest.clone();
    match (p.level, r.level, &p.digest, &r.digest) {
        (CheckLevel::FilesHashed, CheckLevel::FilesHashed, Some(a), Some(b)) => {
            v.level = Some(CheckLevel::FilesHashed);
            if a == b {
                v.passed = true;
            } else {
                v.why = Some(format!(
                    "content differs: production hashes to {a}, the restored copy to {b}; \
                     the copy is corrupt or diverged (check `zpool status` on its node)"
                ));
            }
        }
        _ => {
            // One side could only read its blocks: both reads succeeded,
            // so ZFS found every checksum good, but nothing compares content.
            v.level = Some(CheckLevel::BlocksRead);
            v.passed = true;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(level: CheckLevel, digest: Option<&str>) -> Result<ContentHash, String> {
        Ok(ContentHash {
            level,
            digest: digest.map(String::from),
            files: 3,
            bytes: 10,
            mount_ms: 5,
            read_ms: 7,
        })
    }

    #[test]
    fn scratch_no_live_drill_uses_is_an_orphan() {
        let live: BTreeSet<(String, String)> =
            [("b1".to_string(), "backup/zdr-drill/d2".to_string())].into();
        let listed = [
            ("b1", "backup/zdr-drill/d1"),
            ("b1", "backup/zdr-drill/d2"),
            ("a1", "backup/zdr-drill/d2"),
            ("b1", "backup/zdr-drill"),
            ("b1", "backup/node-a1/tank/big"),
            ("b1", "backup/zdr-drill/d3/child"),
        ];
        assert_eq!(
            orphans(listed, &live),
            [
                ("b1".to_string(), "backup/zdr-drill/d1".to_string()),
                ("a1".to_string(), "backup/zdr-drill/d2".to_string()),
            ]
        );
    }

    #[test]
    fn equal_digests_pass_at_the_files_level() {
        let v = verdict(
            hash(CheckLevel::FilesHashed, Some("ab")),
            hash(CheckLevel::FilesHashed, Some("ab")),
        );
        assert!(v.passed);
        assert_eq!(v.level, Some(CheckLevel::FilesHashed));
        assert_eq!((v.mount_ms, v.read_ms), (5, 7));
    }

    #[test]
    fn different_digests_fail_and_name_both() {
        let v = verdict(
            hash(CheckLevel::FilesHashed, Some("ab")),
            hash(CheckLevel::FilesHashed, Some("cd")),
        );
        assert!(!v.passed);
        let why = v.why.unwrap();
        assert!(why.contains("ab") && why.contains("cd"), "{why}");
    }

    #[test]
    fn an_unreadable_side_fails_and_a_block_read_passes_at_its_level() {
        let v = verdict(
            hash(CheckLevel::FilesHashed, Some("ab")),
            Err("checksum error".into()),
        );
        assert!(!v.passed);
        assert!(v.why.unwrap().contains("checksum error"));
        let v = verdict(Err("gone".into()), hash(CheckLevel::BlocksRead, None));
        assert!(v.why.unwrap().starts_with("production"));
        let v = verdict(
            hash(CheckLevel::FilesHashed, Some("ab")),
            hash(CheckLevel::BlocksRead, None),
        );
        assert!(v.passed);
        assert_eq!(v.level, Some(CheckLevel::BlocksRead));
    }

    #[test]
    fn the_snapshot_is_the_newest_production_still_has() {
        let p = |name: &str, guid| PointSnapshot {
            name: name.into(),
            guid,
            creation: 0,
            createtxg: guid,
        };
        let info = |guid| SnapshotInfo {
            name: format!("s{guid}"),
            guid,
            createtxg: guid,
            creation: 0,
            used: 0,
            userrefs: 0,
        };
        let copy = [p("a", 1), p("b", 2), p("c", 3)];
        assert_eq!(
            common_snapshot(&copy, &[info(1), info(2)]).unwrap().name,
            "b"
        );
        assert!(common_snapshot(&copy, &[info(9)]).is_none());
    }

    #[test]
    fn a_drill_picks_again_only_when_production_lost_its_snapshot() {
        use crate::testing::snap;
        let copy = [snap("a", 1), snap("b", 2), snap("c", 3)];
        // Production still has the chosen @c, or a listing is unknown: keep.
        assert_eq!(repick(3, &copy, &[snap("c", 3)]), Repick::Keep);
        assert_eq!(repick(3, &[], &[snap("a", 1)]), Repick::Keep);
        assert_eq!(repick(3, &copy, &[]), Repick::Keep);
        // Production pruned @c: the newest it shares with the copy is @b,
        // restored as the copy's oldest in full and one -I up to @b.
        let Repick::Pick(s, steps) = repick(3, &copy, &[snap("a", 1), snap("b", 2), snap("d", 4)])
        else {
            panic!("expected a new pick");
        };
        assert_eq!((s.name.as_str(), s.guid), ("b", 2));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].expect.guid, 1);
        assert_eq!(steps[1].expect.guid, 2);
        assert_eq!(steps[1].base.as_ref().map(|b| b.guid), Some(1));
        // The oldest is the pick: one full stream.
        let Repick::Pick(s, steps) = repick(3, &copy, &[snap("a", 1)]) else {
            panic!("expected a new pick");
        };
        assert_eq!((s.guid, steps.len()), (1, 1));
        assert_eq!(repick(3, &copy, &[snap("z", 9)]), Repick::Nothing);
    }

    #[test]
    fn space_is_checked_against_free() {
        assert!(fits(10, 10));
        assert!(!fits(11, 10));
    }
}
