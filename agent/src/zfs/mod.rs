//! The one door to ZFS. Everything in zdr that reads or changes a pool goes
//! through [`Backend`]; the backends are `cli` (zfs(8) as an argv), and `sim`
//! (an in-memory pool for the demo and scale tests, checked against real
//! OpenZFS by the conformance suite).

pub mod cli;
pub mod error;
#[cfg(feature = "lzc")]
pub mod lzc;
mod names;
pub mod sim;

pub use error::ZfsError;
use zdr_common::wire::{PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

/// A filesystem or volume as listed by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    pub name: DatasetName,
    pub guid: u64,
    pub used: u64,
    pub available: u64,
    /// Value of the policy's class property (a ZFS user property), if set locally or inherited.
    pub class_property: Option<String>,
}

/// Synchronous by design: zfs(8) and libzfs_core calls block, so callers run
/// them on `spawn_blocking`.
pub trait Backend: Send + Sync {
    /// `cli`, `lzc` or `sim`.
    fn kind(&self) -> &'static str;

    fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError>;

    /// All filesystems and volumes, reading `class_property` for each.
    fn list_datasets(&self, class_property: &str) -> Result<Vec<DatasetInfo>, ZfsError>;

    /// Snapshots of exactly this dataset (not its children), in createtxg order.
    fn list_snapshots(&self, dataset: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError>;

    /// Takes `dataset@name` for every listed dataset in one atomic transaction
    /// (one `zfs snapshot` call); with `recursive`, children are included too.
    fn snapshot(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<(), ZfsError>;

    /// Destroys one snapshot; refused with [`ZfsError::Held`] while it has holds.
    fn destroy_snapshot(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError>;

    fn hold(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError>;
    fn release(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError>;
    /// Hold tags on one snapshot.
    fn holds(&self, dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError>;

    /// Creates `dataset#bookmark` from `dataset@snapshot`.
    fn bookmark(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        bookmark: &str,
    ) -> Result<(), ZfsError>;
}
