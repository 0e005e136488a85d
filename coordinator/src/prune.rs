//! Pruning a bucket (`bucket.prune` in the tasks file): which uploaded
//! streams the coordinator deletes, from a listing of the bucket (pure). The
//! S3 shell that lists, reads and deletes is [`bucket`]. Agents hold
//! write-only keys; only the coordinator, with keys of its own, deletes.
//!
//! The listing is the truth, not the job records: records keep only the
//! last two chains, and a bucket outlives a coordinator's state.
//!
//! Rules, for one bucket (a dataset is a `<prefix>streams/<ds>/` folder;
//! object layout in `agent/src/offsite/mod.rs`):
//! 1. nothing outside `<prefix>streams/<ds>/<stream>/` is ever touched;
//! 2. a dataset with a manifest that cannot be read, or that has more than
//!    one version (it was written over), is left whole and reported: its
//!    chains cannot be worked out safely;
//! 3. streams with a manifest form chains by the parent-manifest hash each
//!    names (SHA-256 of the stored bytes), never by names or GUIDs; a stream
//!    whose parent is not in the bucket heads a chain of its own;
//! 4. a chain's age runs from its newest object (the server's time, which
//!    no uploader can forge); it expires `retain` after that, and not before
//!    every manifest's `retain_until` has passed (a claim read unverified,
//!    so it can only delay a delete);
//! 5. the newest chain of each dataset and signer is kept, whatever its age:
//!    a source that stopped uploading keeps its last offsite copy;
//! 6. a chain is deleted whole: never a base an incremental still needs;
//! 7. a stream without a manifest (an upload cut before its commit, or one
//!    still running) is deleted once its newest object is `retain` old;
//! 8. deletes go tip first (children before parents), and in each stream
//!    the manifest before its segments, so a pass cut short leaves only
//!    chains that restore, and segments without a manifest, which rule 7
//!    takes later. Every version goes, delete markers too.

pub mod bucket;
mod run;

pub use run::run;

use std::collections::{BTreeMap, HashMap, HashSet};

/// One version of one object (or a delete marker), as the bucket lists it.
pub use zdr_common::s3::ObjectVersion as Version;

/// What a stream's manifest says, as far as pruning reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// No manifest: an upload cut before its commit, or one running.
    Missing,
    /// Present but not usable; the reason is shown.
    Unreadable(String),
    Read(ManifestHead),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// Who signed it (the manifest's key id: the agent's node).
    pub signer: String,
    /// SHA-256 (hex) of the stored manifest: what a child names as parent.
    pub hash: String,
    pub parent: Option<String>,
    /// Unix seconds; 0 without object lock.
    pub retain_until: i64,
}

/// One stream's objects: `<prefix>streams/<ds>/<stream>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub id: String,
    pub head: Head,
    /// Every version of its manifest and segments.
    pub versions: Vec<Version>,
}

/// One dataset's folder in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetObjects {
    /// The escaped folder name (`tank%2Fdb`).
    pub folder: String,
    pub streams: Vec<Stream>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// In a chain whose newest object is `retain` old; `root` is its full.
    ChainExpired { root: String },
    /// No manifest, and its newest object is `retain` old.
    NeverCommitted,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::ChainExpired { root } => write!(
                f,
                "its chain (full {root}) is past its retention and is not the dataset's newest"
            ),
            Why::NeverCommitted => write!(f, "an upload never committed, past the retention"),
        }
    }
}

/// One chain (or one upload never committed) to delete: its streams in
/// delete order. A stream's delete that fails ends its chain's (rule 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub folder: String,
    pub why: Why,
    pub streams: Vec<Doomed>,
}

/// One stream to delete, its versions in delete order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub stream: String,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub delete: Vec<Deletion>,
    /// Datasets left whole by rule 2, with the reason.
    pub left: Vec<(String, String)>,
}

/// What to delete from `datasets` at `now` (unix seconds) for a retention
/// of `retain` seconds.
pub fn plan(datasets: &[DatasetObjects], now: i64, retain: i64) -> Plan {
    let mut out = Plan::default();
    for ds in datasets {
        match unreadable(ds) {
            Some(why) => out.left.push((ds.folder.clone(), why)),
            None => plan_dataset(ds, now, retain, &mut out.delete),
        }
    }
    out
}

fn unreadable(ds: &DatasetObjects) -> Option<String> {
    ds.streams.iter().find_map(|s| match &s.head {
        Head::Unreadable(why) => Some(format!("stream {}: {why}", s.id)),
        Head::Read(_) => {
            let manifests = s
                .versions
                .iter()
                .filter(|v| v.key.ends_with("/manifest") && !v.delete_marker)
                .count();
            (manifests > 1).then(|| {
                format!(
                    "stream {}: its manifest has {manifests} versions (written over)",
                    s.id
                )
            })
        }
        Head::Missing => None,
    })
}

fn newest(s: &Stream) -> i64 {
    s.versions.iter().map(|v| v.modified).max().unwrap_or(0)
}

fn plan_dataset(ds: &DatasetObjects, now: i64, retain: i64, out: &mut Vec<Deletion>) {
    let expired = |at: i64| now >= at.saturating_add(retain);
    let read: Vec<(&Stream, &ManifestHead)> = ds
        .streams
        .iter()
        .filter_map(|s| match &s.head {
            Head::Read(h) => Some((s, h)),
            _ => None,
        })
        .collect();
    let by_hash: HashMap<&str, usize> = read
        .iter()
        .enumerate()
        .map(|(i, (_, h))| (h.hash.as_str(), i))
        .collect();
    // Rule 3: each committed stream's chain is the one of its furthest
    // ancestor in the bucket (a loop of forged parents stops where it
    // closes).
    let root_of = |mut i: usize| {
        let mut seen = HashSet::new();
        while seen.insert(i) {
            match read[i].1.parent.as_deref().and_then(|p| by_hash.get(p)) {
                Some(&p) => i = p,
                None => break,
            }
        }
        i
    };
    let mut chains: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..read.len() {
        chains.entry(root_of(i)).or_default().push(i);
    }
    // Rule 5: per signer, the chain with the newest object is kept.
    let last = |members: &[usize]| members.iter().map(|&i| newest(read[i].0)).max();
    let mut keep: HashMap<&str, (i64, usize)> = HashMap::new();
    for (&root, members) in &chains {
        let at = last(members).unwrap_or(0);
        let signer = read[root].1.signer.as_str();
        let e = keep.entry(signer).or_insert((at, root));
        if at > e.0 || (at == e.0 && root > e.1) {
            *e = (at, root);
        }
    }
    let kept: HashSet<usize> = keep.values().map(|&(_, r)| r).collect();
    for (&root, members) in &chains {
        let locked = members.iter().any(|&i| now < read[i].1.retain_until);
        if kept.contains(&root) || locked || !expired(last(members).unwrap_or(0)) {
            continue;
        }
        out.push(Deletion {
            folder: ds.folder.clone(),
            why: Why::ChainExpired {
                root: read[root].0.id.clone(),
            },
            streams: tip_first(members, &read, &by_hash)
                .into_iter()
                .map(|i| doomed(read[i].0))
                .collect(),
        });
    }
    // Rule 7.
    for s in &ds.streams {
        if s.head == Head::Missing && expired(newest(s)) {
            out.push(Deletion {
                folder: ds.folder.clone(),
                why: Why::NeverCommitted,
                streams: vec![doomed(s)],
            });
        }
    }
}

/// Rule 8: a chain's members, children before their parents.
fn tip_first(
    members: &[usize],
    read: &[(&Stream, &ManifestHead)],
    by_hash: &HashMap<&str, usize>,
) -> Vec<usize> {
    let mut left: Vec<usize> = members.to_vec();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let parents: HashSet<usize> = left
            .iter()
            .filter_map(|&i| read[i].1.parent.as_deref().and_then(|p| by_hash.get(p)))
            .copied()
            .collect();
        let (leaves, rest): (Vec<usize>, Vec<usize>) =
            left.iter().partition(|i| !parents.contains(i));
        if leaves.is_empty() {
            // A loop of forged parents: no order is safer than another.
            order.extend(rest);
            break;
        }
        order.extend(leaves);
        left = rest;
    }
    order
}

/// The stream's versions, manifest ones first.
fn doomed(s: &Stream) -> Doomed {
    let mut versions = s.versions.clone();
    versions.sort_by_key(|v| (!v.key.ends_with("/manifest"), v.key.clone()));
    Doomed {
        stream: s.id.clone(),
        versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: i64 = 100;

    fn version(stream: &str, obj: &str, modified: i64) -> Version {
        Version {
            key: format!("zdr/streams/tank%2Fdb/{stream}/{obj}"),
            version_id: Some(format!("v-{stream}-{obj}")),
            modified,
            delete_marker: false,
        }
    }

    /// A committed stream `id` at `at`, signed by `signer`, child of `parent`.
    fn committed(id: &str, parent: Option<&str>, at: i64, signer: &str) -> Stream {
        Stream {
            id: id.into(),
            head: Head::Read(ManifestHead {
                signer: signer.into(),
                hash: format!("h-{id}"),
                parent: parent.map(|p| format!("h-{p}")),
                retain_until: 0,
            }),
            versions: vec![
                version(id, "seg/00000000", at),
                version(id, "seg/00000001", at),
                version(id, "manifest", at),
            ],
        }
    }

    fn dataset(streams: Vec<Stream>) -> Vec<DatasetObjects> {
        vec![DatasetObjects {
            folder: "tank%2Fdb".into(),
            streams,
        }]
    }

    /// The streams to delete, in order.
    fn deleted(p: &Plan) -> Vec<&str> {
        p.delete
            .iter()
            .flat_map(|d| d.streams.iter().map(|s| s.stream.as_str()))
            .collect()
    }

    /// Two chains: f1 <- i1 <- i2 (old), f2 <- i3 (newer).
    fn two_chains(second_at: i64) -> Vec<Stream> {
        vec![
            committed("f1", None, 1_000, "node-a1"),
            committed("i1", Some("f1"), 1_010, "node-a1"),
            committed("i2", Some("i1"), 1_020, "node-a1"),
            committed("f2", None, second_at, "node-a1"),
            committed("i3", Some("f2"), second_at + 10, "node-a1"),
        ]
    }

    #[test]
    fn an_expired_chain_goes_whole_tip_first_and_the_newest_stays() {
        let ds = dataset(two_chains(1_100));
        // Not yet: the old chain's newest object is 1_020.
        assert!(plan(&ds, 1_119, RETAIN).delete.is_empty());
        let p = plan(&ds, 1_120, RETAIN);
        assert_eq!(deleted(&p), ["i2", "i1", "f1"]);
        // One chain, one unit: a failed delete stops it there.
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].why, Why::ChainExpired { root: "f1".into() });
        // Manifest first in each stream.
        let tip = &p.delete[0].streams[0];
        assert!(tip.versions[0].key.ends_with("/manifest"));
        assert_eq!(tip.versions.len(), 3);
        // Years later, the newest chain is still kept (rule 5).
        assert_eq!(deleted(&plan(&ds, 1_000_000, RETAIN)), ["i2", "i1", "f1"]);
    }

    #[test]
    fn an_incremental_keeps_its_whole_chain() {
        // A late incremental on the old chain keeps its base too.
        let mut streams = two_chains(1_100);
        streams.push(committed("i4", Some("i2"), 1_200, "node-a1"));
        let ds = dataset(streams);
        // f2's chain is now the older (newest object 1_110) and goes; f1's stays.
        assert_eq!(deleted(&plan(&ds, 1_250, RETAIN)), ["i3", "f2"]);
        assert!(plan(&ds, 1_209, RETAIN).delete.is_empty());
    }

    #[test]
    fn locks_and_other_signers_are_respected() {
        let mut streams = two_chains(1_100);
        if let Head::Read(h) = &mut streams[0].head {
            h.retain_until = 5_000;
        }
        let ds = dataset(streams.clone());
        assert!(plan(&ds, 4_999, RETAIN).delete.is_empty());
        assert_eq!(deleted(&plan(&ds, 5_000, RETAIN)), ["i2", "i1", "f1"]);
        // Another node's only chain under the same dataset name is its newest.
        streams.push(committed("g1", None, 900, "node-a2"));
        let p = plan(&dataset(streams), 5_000, RETAIN);
        assert_eq!(deleted(&p), ["i2", "i1", "f1"]);
    }

    #[test]
    fn a_dataset_that_cannot_be_read_is_left_whole() {
        let mut streams = two_chains(1_100);
        streams[3].head = Head::Unreadable("does not start with \"ZDRM1 \"".into());
        let p = plan(&dataset(streams), 1_000_000, RETAIN);
        assert!(p.delete.is_empty());
        assert_eq!(p.left.len(), 1);
        assert!(
            p.left[0].1.starts_with("stream f2: does not start"),
            "{p:?}"
        );

        let mut streams = two_chains(1_100);
        streams[1].versions.push(version("i1", "manifest", 1_500));
        let p = plan(&dataset(streams), 1_000_000, RETAIN);
        assert!(p.delete.is_empty());
        assert!(p.left[0].1.contains("2 versions (written over)"), "{p:?}");
    }

    #[test]
    fn uploads_never_committed_go_after_the_retention() {
        let mut streams = two_chains(1_100);
        streams.push(Stream {
            id: "cut".into(),
            head: Head::Missing,
            versions: vec![
                version("cut", "seg/00000000", 1_050),
                version("cut", "seg/00000001", 1_300),
            ],
        });
        let ds = dataset(streams);
        assert_eq!(deleted(&plan(&ds, 1_399, RETAIN)), ["i2", "i1", "f1"]);
        let p = plan(&ds, 1_400, RETAIN);
        assert_eq!(deleted(&p), ["i2", "i1", "f1", "cut"]);
        assert_eq!(p.delete[1].why, Why::NeverCommitted);
    }

    #[test]
    fn a_loop_of_forged_parents_ends() {
        let streams = vec![
            committed("x", Some("y"), 1_000, "node-a1"),
            committed("y", Some("x"), 1_000, "node-a1"),
            committed("f", None, 2_000, "node-a1"),
        ];
        let p = plan(&dataset(streams), 10_000, RETAIN);
        let mut d = deleted(&p);
        d.sort();
        assert_eq!(d, ["x", "y"]);
    }
}
