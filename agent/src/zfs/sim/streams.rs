//! The simulated send stream: per snapshot a header line (the snapshot's
//! identity) and filler bytes for its data; resume tokens that name a
//! record and an offset; and what sending and receiving records do to the model.

use std::collections::BTreeSet;
use std::io::Read;

use serde::{Deserialize, Serialize};
use zdr_common::dataset::parse_snapshot_name;
use zdr_common::DatasetName;

use super::model::{parent, snapshot_missing, Dataset, Partial, Snap, State, DATASET_BYTES};
use crate::zfs::names::{check_token, send_base_name};
use crate::zfs::resume_token::{self, ResumeToken, StreamFlags};
use crate::zfs::stream::fill;
use crate::zfs::{SendBase, SendSpec, ZfsError};

/// One snapshot in a simulated stream: a header line (`STREAM_MAGIC` and
/// this as JSON), then `payload - offset` filler bytes standing for the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The sent snapshot's full name on the source.
    toname: String,
    toguid: u64,
    /// `None` for a full stream.
    fromguid: Option<u64>,
    creation: i64,
    raw: bool,
    /// Where in the payload this stream starts (a resumed stream).
    pub(super) offset: u64,
    pub(super) payload: u64,
    /// The snapshot's damaged blocks, which the stream carries as they are.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    damaged: BTreeSet<u64>,
}

pub(super) const STREAM_MAGIC: &str = "zdr-sim-stream-v1 ";

/// A receive saves its progress every this many bytes, as a txg would.
pub(super) const CHECKPOINT_BYTES: u64 = 4 << 20;

/// The OpenZFS-format token of a partial receive, so that whatever reads
/// real tokens (the agent's offer to the coordinator) reads the model's too.
pub(super) fn token_of(record: &Record) -> String {
    resume_token::encode(&ResumeToken {
        fromguid: record.fromguid,
        // The model has no objects: one stream position serves as both.
        object: 0,
        offset: record.offset,
        bytes: record.offset,
        toguid: record.toguid,
        toname: record.toname.clone(),
        flags: StreamFlags {
            raw: record.raw,
            ..StreamFlags::default()
        },
    })
}

/// The record a resumed send continues; `creation` and `payload` are the
/// source snapshot's, filled in by the send.
fn record_of_token(token: &str) -> Result<Record, ZfsError> {
    check_token(token)?;
    let t = resume_token::decode(token).map_err(|e| ZfsError::Invalid {
        what: "resume token",
        value: token.chars().take(80).collect(),
        reason: e.to_string(),
    })?;
    Ok(Record {
        toname: t.toname,
        toguid: t.toguid,
        fromguid: t.fromguid,
        creation: 0,
        raw: t.flags.raw,
        offset: t.offset,
        payload: 0,
        damaged: BTreeSet::new(),
    })
}

/// One header line; `Ok(None)` at a clean end of stream.
pub(super) fn read_header(input: &mut dyn Read) -> Result<Option<Record>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let (n, err) = fill(input, &mut byte);
        if let Some(e) = err {
            return Err(format!("failed to read from stream: {e}"));
        }
        if n == 0 {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err("stream ended inside a record header".into())
            };
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 64 << 10 {
            return Err("invalid stream (record header too long)".into());
        }
    }
    let json = line
        .strip_prefix(STREAM_MAGIC.as_bytes())
        .ok_or("invalid stream (bad magic number)")?;
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| format!("invalid stream header: {e}"))
}

impl State {
    /// The records `spec` sends, checked against the source.
    pub(super) fn stream_records(&self, spec: &SendSpec) -> Result<Vec<Record>, ZfsError> {
        match spec {
            SendSpec::Full {
                dataset,
                snapshot,
                raw,
            } => {
                let full = dataset.snapshot(snapshot)?;
                let ds = self.dataset(dataset)?;
                let i = ds
                    .snapshots
                    .iter()
                    .position(|x| &x.name == snapshot)
                    .ok_or_else(|| snapshot_missing(dataset, snapshot))?;
                let x = &ds.snapshots[i];
                Ok(vec![Record {
                    toname: full,
                    toguid: x.guid,
                    fromguid: None,
                    creation: x.creation,
                    raw: *raw,
                    offset: 0,
                    payload: full_payload(ds, i),
                    damaged: x.damaged.clone(),
                }])
            }
            SendSpec::Incremental {
                dataset,
                from,
                to,
                intermediates,
                raw,
            } => {
                let base = send_base_name(dataset, from, *intermediates)?;
                dataset.snapshot(to)?;
                let ds = self.dataset(dataset)?;
                let to_snap = ds
                    .snapshots
                    .iter()
                    .find(|x| &x.name == to)
                    .ok_or_else(|| snapshot_missing(dataset, to))?;
                let (guid, txg) = match from {
                    SendBase::Snapshot(n) => ds
                        .snapshots
                        .iter()
                        .find(|x| &x.name == n)
                        .map(|x| (x.guid, x.createtxg)),
                    SendBase::Bookmark(n) => ds.bookmarks.get(n).map(|b| (b.guid, b.createtxg)),
                }
                .ok_or_else(|| ZfsError::NotFound { what: base.clone() })?;
                if txg >= to_snap.createtxg {
                    return Err(ZfsError::Invalid {
                        what: "incremental source",
                        value: base,
                        reason: format!("not earlier than {dataset}@{to}"),
                    });
                }
                let sent = ds.snapshots.iter().filter(|x| {
                    x.createtxg > txg
                        && x.createtxg <= to_snap.createtxg
                        && (*intermediates || x.guid == to_snap.guid)
                });
                let mut fromguid = guid;
                Ok(sent
                    .map(|x| {
                        let r = Record {
                            toname: format!("{dataset}@{}", x.name),
                            toguid: x.guid,
                            fromguid: Some(fromguid),
                            creation: x.creation,
                            raw: *raw,
                            offset: 0,
                            payload: x.used,
                            damaged: x.damaged.clone(),
                        };
                        fromguid = x.guid;
                        r
                    })
                    .collect())
            }
            SendSpec::Resume { token } => {
                let mut r = record_of_token(token)?;
                let (dataset, name) = parse_snapshot_name(&r.toname)?;
                let ds = self.dataset(&dataset)?;
                let i = ds
                    .snapshots
                    .iter()
                    .position(|x| x.name == name && x.guid == r.toguid)
                    .ok_or_else(|| snapshot_missing(&dataset, &name))?;
                if let Some(g) = r.fromguid {
                    let has = ds.snapshots.iter().any(|x| x.guid == g)
                        || ds.bookmarks.values().any(|b| b.guid == g);
                    if !has {
                        return Err(ZfsError::NotFound {
                            what: format!("incremental source of {} (guid {g})", r.toname),
                        });
                    }
                }
                r.creation = ds.snapshots[i].creation;
                r.damaged = ds.snapshots[i].damaged.clone();
                r.payload = match r.fromguid {
                    None => full_payload(ds, i),
                    Some(_) => ds.snapshots[i].used,
                };
                if r.offset > r.payload {
                    return Err(ZfsError::Invalid {
                        what: "resume token",
                        value: token.chars().take(80).collect(),
                        reason: "offset past the end of the stream".into(),
                    });
                }
                Ok(vec![r])
            }
        }
    }

    /// Checks that `target` can take `r`: `Some(creates the dataset)`, or
    /// `None` when the target already has the snapshot (zfs(8) then succeeds
    /// without a change).
    pub(super) fn begin_record(
        &mut self,
        target: &DatasetName,
        r: &Record,
        force: bool,
    ) -> Result<Option<bool>, ZfsError> {
        let diverged = |detail: String| ZfsError::Diverged {
            target: target.to_string(),
            detail,
        };
        let (_, name) = parse_snapshot_name(&r.toname)?;
        target.snapshot(&name)?;
        if r.offset > 0 {
            let p = self
                .datasets
                .get(target)
                .and_then(|d| d.partial.as_ref())
                .ok_or_else(|| diverged("no partially received state to resume".into()))?;
            if p.record.toguid != r.toguid || p.record.offset != r.offset {
                return Err(diverged(format!(
                    "resume stream does not match the saved state (offset {} of guid {})",
                    p.record.offset, p.record.toguid
                )));
            }
            return Ok(Some(p.new_dataset));
        }
        if let Some(ds) = self.datasets.get(target) {
            // zfs(8) refuses a full stream onto an existing dataset without
            // -F first ("must specify -F"), before the kernel's EBUSY.
            if ds.partial.is_some() && (force || r.fromguid.is_some()) {
                return Err(ZfsError::Busy {
                    what: format!("dataset {target}"),
                    detail: "contains partially-complete state from \"zfs receive -s\"".into(),
                });
            }
        }
        match r.fromguid {
            None => {
                let Some(ds) = self.datasets.get(target) else {
                    if !self.pools.contains_key(target.pool()) {
                        return Err(ZfsError::NotFound {
                            what: format!("pool {}", target.pool()),
                        });
                    }
                    if let Some(p) = parent(target).filter(|p| !self.datasets.contains_key(p)) {
                        return Err(ZfsError::NotFound {
                            what: format!("parent dataset {p}"),
                        });
                    }
                    return Ok(Some(true));
                };
                if !force {
                    return Err(diverged(format!(
                        "destination '{target}' exists; must specify -F to overwrite it"
                    )));
                }
                if let Some(x) = ds.snapshots.first() {
                    return Err(diverged(format!(
                        "destination has snapshots (eg. {target}@{})",
                        x.name
                    )));
                }
                Ok(Some(false))
            }
            Some(g) => {
                let ds = self.dataset(target)?;
                if ds
                    .snapshots
                    .iter()
                    .any(|x| x.guid == r.toguid && x.name == name)
                {
                    return Ok(None);
                }
                let Some(base) = ds.snapshots.iter().position(|x| x.guid == g) else {
                    return Err(diverged(format!(
                        "most recent snapshot of {target} does not match incremental source"
                    )));
                };
                // With -F, ZFS destroys the snapshots after the base when
                // the receive completes (end_record).
                if !force && ds.head_txg > ds.snapshots[base].createtxg {
                    return Err(diverged(format!(
                        "destination {target} has been modified since most recent snapshot"
                    )));
                }
                let kept = if force {
                    &ds.snapshots[..=base]
                } else {
                    &ds.snapshots[..]
                };
                if kept.iter().any(|x| x.name == name) {
                    return Err(diverged(format!(
                        "destination snapshot {target}@{name} already exists"
                    )));
                }
                Ok(Some(false))
            }
        }
    }

    /// The first snapshot of `target` with a hold that landing `r` with -F
    /// would destroy. ZFS checks them as a destroy would, at the end of the
    /// receive, after the stream was read: the receive fails busy, and with
    /// `-s` the whole stream stays as saved state.
    pub(super) fn held_after_base(&self, target: &DatasetName, r: &Record) -> Option<String> {
        let ds = self.datasets.get(target)?;
        let base = ds
            .snapshots
            .iter()
            .position(|x| Some(x.guid) == r.fromguid)?;
        ds.snapshots[base + 1..]
            .iter()
            .find(|x| !x.holds.is_empty())
            .map(|x| x.name.clone())
    }

    /// Lands a record that `begin_record` accepted, whole (`partial` false)
    /// or as the saved state of an interrupted receive.
    pub(super) fn end_record(
        &mut self,
        target: &DatasetName,
        mut r: Record,
        new_dataset: bool,
        partial: bool,
        force: bool,
    ) -> Result<(), ZfsError> {
        if !self.datasets.contains_key(target) {
            self.reserve(target.pool(), DATASET_BYTES)?;
            self.insert_dataset(target.clone());
        }
        if partial {
            self.dataset_mut(target)?.partial = Some(Partial {
                record: r,
                new_dataset,
            });
            self.next_txg(target.pool());
            return Ok(());
        }
        let (_, name) = parse_snapshot_name(&r.toname)?;
        if let (true, Some(g)) = (force, r.fromguid) {
            let ds = self.dataset_mut(target)?;
            if let Some(i) = ds.snapshots.iter().position(|x| x.guid == g) {
                let freed: u64 = ds.snapshots.drain(i + 1..).map(|x| x.used).sum();
                self.pool_mut(target.pool())?.allocated -= freed;
            }
        }
        self.reserve(target.pool(), r.payload)?;
        let txg = self.next_txg(target.pool());
        self.guids.insert(r.toguid);
        r.offset = r.payload;
        let ds = self.dataset_mut(target)?;
        ds.partial = None;
        ds.head_txg = txg;
        ds.snapshots.push(Snap {
            name,
            guid: r.toguid,
            createtxg: txg,
            creation: r.creation,
            used: r.payload,
            holds: BTreeSet::new(),
            damaged: r.damaged,
        });
        Ok(())
    }
}

/// What a full stream of the `i`th snapshot carries in the model.
fn full_payload(ds: &Dataset, i: usize) -> u64 {
    ds.own_bytes + ds.snapshots[..=i].iter().map(|x| x.used).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use zdr_common::wire::SnapshotInfo;

    use super::super::tests::{ds, sim, snaps};
    use super::super::SimBackend;
    use super::*;
    use crate::zfs::{Backend, RecvSpec};

    #[test]
    fn streams_carry_guids_to_another_simulator() {
        let src = sim();
        let dir = tempfile::tempdir().unwrap();
        let dst = SimBackend::open(dir.path().join("pool.json")).unwrap();
        dst.add_pool("backup", 10 << 20).unwrap();
        let a = ds("tank/a");
        for n in ["s1", "s2", "s3"] {
            src.write_data(&a, 1000).unwrap();
            src.snapshot(std::slice::from_ref(&a), n, false).unwrap();
        }
        let target = ds("backup/a");
        let mut stream = Vec::new();
        let spec = SendSpec::Full {
            dataset: a.clone(),
            snapshot: "s1".into(),
            raw: false,
        };
        let n = src.send(&spec, &mut stream).unwrap();
        assert_eq!(Some(n), src.estimate(&spec).unwrap());
        dst.receive(&target, &RecvSpec::default(), &mut &stream[..])
            .unwrap();
        let incr = SendSpec::Incremental {
            dataset: a.clone(),
            from: SendBase::Snapshot("s1".into()),
            to: "s3".into(),
            intermediates: true,
            raw: false,
        };
        let mut stream = Vec::new();
        src.send(&incr, &mut stream).unwrap();
        // Cut inside the last snapshot's record: s2 lands, s3 is resumable.
        let cut = stream.len() - 10;
        assert!(matches!(
            dst.receive(&target, &RecvSpec::default(), &mut &stream[..cut]),
            Err(ZfsError::Incomplete { .. })
        ));
        assert_eq!(snaps(&dst, "backup/a").len(), 2);
        drop(dst);
        let dst = SimBackend::open(dir.path().join("pool.json")).unwrap();
        let token = dst.resume_token(&target).unwrap().expect("token");
        let mut rest = Vec::new();
        src.send(&SendSpec::Resume { token }, &mut rest).unwrap();
        dst.receive(&target, &RecvSpec::default(), &mut &rest[..])
            .unwrap();
        let key = |v: Vec<SnapshotInfo>| {
            v.into_iter()
                .map(|x| (x.name, x.guid, x.creation))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(snaps(&src, "tank/a")), key(snaps(&dst, "backup/a")));
        assert_eq!(dst.resume_token(&target).unwrap(), None);
    }
}
