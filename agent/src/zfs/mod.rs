//! The one door to ZFS. Everything in zdr that reads or changes a pool goes
//! through [`Backend`]; the backends are `cli` (zfs(8) as an argv), and `sim`
//! (an in-memory pool for the demo and scale tests, checked against real
//! OpenZFS by the conformance suite).

pub mod cli;
pub mod content;
pub mod error;
#[cfg(feature = "lzc")]
pub mod lzc;
mod names;
pub mod resume_token;
pub mod sim;
mod stream;

pub use error::ZfsError;
use zdr_common::wire::{BookmarkInfo, ContentHash, PoolInfo, SnapshotInfo};
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
    /// `encryption` is not `off`: such a dataset is only ever sent raw.
    pub encrypted: bool,
}

/// The incremental source of a send: a snapshot or a bookmark of the sent dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBase {
    /// `dataset@name`
    Snapshot(String),
    /// `dataset#name`
    Bookmark(String),
}

/// What `zfs send` sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendSpec {
    /// `zfs send [-w] dataset@snapshot`
    Full {
        dataset: DatasetName,
        snapshot: String,
        raw: bool,
    },
    /// `zfs send [-w] -i from dataset@to`, or `-I` with `intermediates`
    /// (every snapshot between; only from a snapshot, not a bookmark).
    Incremental {
        dataset: DatasetName,
        from: SendBase,
        to: String,
        intermediates: bool,
        raw: bool,
    },
    /// `zfs send -t token`: the rest of an interrupted resumable receive.
    Resume { token: String },
}

/// How `zfs receive -s -u` receives: always resumable, never mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvSpec {
    /// `-F`: roll the target back to the stream's base first, destroying
    /// the target's later snapshots.
    pub force: bool,
    /// `-o canmount=noauto`: a drill's scratch is never mounted by itself.
    pub noauto: bool,
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

    /// Bookmarks of exactly this dataset (not its children), in createtxg
    /// order; bookmarks of one snapshot (one createtxg) by name.
    fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError>;

    /// Destroys `dataset#name`; [`ZfsError::NotFound`] when it does not exist.
    fn destroy_bookmark(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError>;

    /// Writes the stream to `out`; returns the bytes written. A failing
    /// `out` stops the sender and comes back as [`ZfsError::Stream`].
    fn send(&self, spec: &SendSpec, out: &mut dyn std::io::Write) -> Result<u64, ZfsError>;

    /// `zfs send -nvP`: the stream size ZFS expects, or `None` when it gave
    /// no usable figure (0, or an incremental from a bookmark, OpenZFS #12265).
    fn estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError>;

    /// `zfs receive -s -u [-F] target` from `input`. A stream that ends early
    /// is [`ZfsError::Incomplete`] and leaves a [`Backend::resume_token`];
    /// a target whose history does not continue the stream's is
    /// [`ZfsError::Diverged`].
    fn receive(
        &self,
        target: &DatasetName,
        spec: &RecvSpec,
        input: &mut dyn std::io::Read,
    ) -> Result<(), ZfsError>;

    /// Creates the missing ancestors of `dataset` (`zfs create -p`), so a
    /// receive can create `dataset` itself.
    fn create_parents(&self, dataset: &DatasetName) -> Result<(), ZfsError>;

    /// `receive_resume_token` of the dataset; `None` when no receive is pending.
    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError>;

    /// `zfs receive -A`: drops the partial state of an interrupted receive
    /// (a partially received new filesystem goes with it).
    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError>;

    /// Hashes what `dataset@snapshot` holds: its files when they can be
    /// read, else every block read back ([`ContentHash::level`] says which).
    fn content_hash(&self, dataset: &DatasetName, snapshot: &str) -> Result<ContentHash, ZfsError>;

    /// `zfs destroy -r dataset`: the dataset, its snapshots and children.
    /// [`ZfsError::NotFound`] when it does not exist; held snapshots make it
    /// fail (release them first).
    fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError>;
}

/// The order of [`Backend::list_bookmarks`], the same for every backend.
pub(crate) fn in_createtxg_order(marks: &mut [BookmarkInfo]) {
    marks.sort_by(|a, b| (a.createtxg, &a.name).cmp(&(b.createtxg, &b.name)));
}
