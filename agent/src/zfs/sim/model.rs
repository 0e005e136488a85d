//! The simulated pools: datasets, snapshots, bookmarks and holds, with
//! ZFS's GUIDs, createtxg, inherited user properties and space accounting.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};
use zdr_common::DatasetName;

use super::streams::Record;
use crate::zfs::ZfsError;

/// What an empty filesystem takes, roughly as on real ZFS.
pub(super) const DATASET_BYTES: u64 = 96 * 1024;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) pools: BTreeMap<String, Pool>,
    pub(super) datasets: BTreeMap<DatasetName, Dataset>,
    /// Every GUID ever handed out; rebuilt on load.
    #[serde(skip)]
    pub(super) guids: HashSet<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pool {
    pub(super) size: u64,
    /// Last transaction group synced.
    pub(super) txg: u64,
    /// Derived from the datasets; rebuilt on load.
    #[serde(skip)]
    pub(super) allocated: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Dataset {
    pub(super) guid: u64,
    pub(super) own_bytes: u64,
    /// Locally set user properties.
    pub(super) properties: BTreeMap<String, String>,
    /// In createtxg order.
    pub(super) snapshots: Vec<Snap>,
    pub(super) bookmarks: BTreeMap<String, Bookmark>,
    /// The txg of the last change to the live filesystem's data (a write or
    /// a received snapshot); a receive refuses a target changed since its base.
    #[serde(default)]
    pub(super) head_txg: u64,
    /// The saved state of an interrupted `receive -s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) partial: Option<Partial>,
}

/// An interrupted receive: the record and how far it got (`record.offset`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Partial {
    pub(super) record: Record,
    /// The receive created the dataset; aborting it destroys the dataset.
    pub(super) new_dataset: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Snap {
    pub(super) name: String,
    pub(super) guid: u64,
    pub(super) createtxg: u64,
    pub(super) creation: i64,
    pub(super) used: u64,
    pub(super) holds: BTreeSet<String>,
    /// Blocks whose bytes differ from what was written, ZFS checksums
    /// intact (the send/receive bugs of OpenZFS #12762, #6224): a send
    /// carries them on, only a content hash finds them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub(super) damaged: BTreeSet<u64>,
}

/// A bookmark carries its source snapshot's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Bookmark {
    pub(super) guid: u64,
    pub(super) createtxg: u64,
    pub(super) creation: i64,
}

pub(super) fn parent(name: &DatasetName) -> Option<DatasetName> {
    let (p, _) = name.as_str().rsplit_once('/')?;
    DatasetName::parse(p).ok()
}

pub(super) fn snapshot_missing(dataset: &DatasetName, name: &str) -> ZfsError {
    ZfsError::NotFound {
        what: format!("snapshot {dataset}@{name}"),
    }
}

impl State {
    pub(super) fn new_guid(&mut self) -> u64 {
        loop {
            // RandomState is seeded randomly per process and varies per call.
            let mut h = RandomState::new().build_hasher();
            h.write_usize(self.guids.len());
            let guid = h.finish();
            if guid != 0 && self.guids.insert(guid) {
                return guid;
            }
        }
    }

    pub(super) fn pool_mut(&mut self, pool: &str) -> Result<&mut Pool, ZfsError> {
        self.pools.get_mut(pool).ok_or_else(|| ZfsError::NotFound {
            what: format!("pool {pool}"),
        })
    }

    pub(super) fn next_txg(&mut self, pool: &str) -> u64 {
        let pool = self
            .pools
            .get_mut(pool)
            .expect("every dataset's pool exists");
        pool.txg += 1;
        pool.txg
    }

    pub(super) fn reserve(&mut self, pool: &str, bytes: u64) -> Result<(), ZfsError> {
        let p = self.pool_mut(pool)?;
        if p.size.saturating_sub(p.allocated) < bytes {
            return Err(ZfsError::NoSpace { pool: pool.into() });
        }
        p.allocated += bytes;
        Ok(())
    }

    /// The caller has checked and reserved the space.
    pub(super) fn insert_dataset(&mut self, name: DatasetName) {
        let guid = self.new_guid();
        let txg = self.next_txg(name.pool());
        self.datasets.insert(
            name,
            Dataset {
                guid,
                head_txg: txg,
                own_bytes: DATASET_BYTES,
                properties: BTreeMap::new(),
                snapshots: Vec::new(),
                bookmarks: BTreeMap::new(),
                partial: None,
            },
        );
    }

    pub(super) fn dataset(&self, name: &DatasetName) -> Result<&Dataset, ZfsError> {
        self.datasets.get(name).ok_or_else(|| ZfsError::NotFound {
            what: format!("dataset {name}"),
        })
    }

    pub(super) fn dataset_mut(&mut self, name: &DatasetName) -> Result<&mut Dataset, ZfsError> {
        self.datasets
            .get_mut(name)
            .ok_or_else(|| ZfsError::NotFound {
                what: format!("dataset {name}"),
            })
    }

    pub(super) fn snap_mut(
        &mut self,
        dataset: &DatasetName,
        name: &str,
    ) -> Result<&mut Snap, ZfsError> {
        self.dataset_mut(dataset)?
            .snapshots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| snapshot_missing(dataset, name))
    }

    /// The value set here or on the nearest ancestor, as ZFS inherits user properties.
    pub(super) fn property(&self, name: &DatasetName, key: &str) -> Option<String> {
        let mut cur = Some(name.clone());
        while let Some(n) = cur {
            if let Some(v) = self.datasets.get(&n).and_then(|d| d.properties.get(key)) {
                return Some(v.clone());
            }
            cur = parent(&n);
        }
        None
    }
}
