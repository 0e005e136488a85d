//! A modelled per-operation latency in front of any backend, chosen in the
//! simulated backend's config (`op_latency_ms`). Real ZFS operations take
//! milliseconds to seconds each; the simulator answers at once, so without
//! this a test cannot catch the agent in the middle of a pass. It models
//! time only: every call still goes to the wrapped backend unchanged.

use std::sync::Arc;
use std::time::Duration;

use zdr_common::wire::{BookmarkInfo, PoolInfo, SnapshotInfo};
use zdr_common::DatasetName;

use crate::zfs::{Backend, DatasetInfo, RecvSpec, SendSpec, ZfsError};

pub struct Slow {
    inner: Arc<dyn Backend>,
    per_op: Duration,
    /// Added to each content hash: a real one reads the snapshot's data.
    hash: Duration,
}

impl Slow {
    pub fn new(inner: Arc<dyn Backend>, per_op: Duration) -> Self {
        Slow {
            inner,
            per_op,
            hash: Duration::ZERO,
        }
    }

    pub fn with_hash(self, hash: Duration) -> Self {
        Slow { hash, ..self }
    }

    /// Blocks like a zfs(8) call would; backends run on blocking threads.
    fn wait(&self) {
        std::thread::sleep(self.per_op);
    }
}

impl Backend for Slow {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn pools(&self) -> Result<Vec<PoolInfo>, ZfsError> {
        self.wait();
        self.inner.pools()
    }

    fn list_datasets(&self, class_property: &str) -> Result<Vec<DatasetInfo>, ZfsError> {
        self.wait();
        self.inner.list_datasets(class_property)
    }

    fn list_snapshots(&self, dataset: &DatasetName) -> Result<Vec<SnapshotInfo>, ZfsError> {
        self.wait();
        self.inner.list_snapshots(dataset)
    }

    fn snapshot(
        &self,
        datasets: &[DatasetName],
        name: &str,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        self.wait();
        self.inner.snapshot(datasets, name, recursive)
    }

    fn destroy_snapshot(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        self.wait();
        self.inner.destroy_snapshot(dataset, name)
    }

    fn hold(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        self.wait();
        self.inner.hold(dataset, snapshot, tag)
    }

    fn release(&self, dataset: &DatasetName, snapshot: &str, tag: &str) -> Result<(), ZfsError> {
        self.wait();
        self.inner.release(dataset, snapshot, tag)
    }

    fn holds(&self, dataset: &DatasetName, snapshot: &str) -> Result<Vec<String>, ZfsError> {
        self.wait();
        self.inner.holds(dataset, snapshot)
    }

    fn bookmark(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
        bookmark: &str,
    ) -> Result<(), ZfsError> {
        self.wait();
        self.inner.bookmark(dataset, snapshot, bookmark)
    }

    fn list_bookmarks(&self, dataset: &DatasetName) -> Result<Vec<BookmarkInfo>, ZfsError> {
        self.wait();
        self.inner.list_bookmarks(dataset)
    }

    fn destroy_bookmark(&self, dataset: &DatasetName, name: &str) -> Result<(), ZfsError> {
        self.wait();
        self.inner.destroy_bookmark(dataset, name)
    }

    fn send(&self, spec: &SendSpec, out: &mut dyn std::io::Write) -> Result<u64, ZfsError> {
        self.wait();
        self.inner.send(spec, out)
    }

    fn estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError> {
        self.wait();
        self.inner.estimate(spec)
    }

    fn receive(
        &self,
        target: &DatasetName,
        spec: &RecvSpec,
        input: &mut dyn std::io::Read,
    ) -> Result<(), ZfsError> {
        self.wait();
        self.inner.receive(target, spec, input)
    }

    fn create_parents(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.wait();
        self.inner.create_parents(dataset)
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<String>, ZfsError> {
        self.wait();
        self.inner.resume_token(dataset)
    }

    fn abort_receive(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.wait();
        self.inner.abort_receive(dataset)
    }

    fn content_hash(
        &self,
        dataset: &DatasetName,
        snapshot: &str,
    ) -> Result<zdr_common::wire::ContentHash, ZfsError> {
        self.wait();
        std::thread::sleep(self.hash);
        self.inner.content_hash(dataset, snapshot)
    }

    fn destroy_dataset(&self, dataset: &DatasetName) -> Result<(), ZfsError> {
        self.wait();
        self.inner.destroy_dataset(dataset)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::zfs::sim::SimBackend;

    #[test]
    fn each_call_takes_the_latency_and_reaches_the_backend() {
        let sim = SimBackend::new();
        sim.add_pool("tank", 1 << 30).unwrap();
        let ds = DatasetName::parse("tank/a").unwrap();
        sim.create_dataset(&ds).unwrap();
        let slow = Slow::new(Arc::new(sim), Duration::from_millis(30));
        let t = Instant::now();
        slow.snapshot(std::slice::from_ref(&ds), "s1", false)
            .unwrap();
        let listed = slow.list_snapshots(&ds).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(60));
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["s1"]
        );
    }
}
