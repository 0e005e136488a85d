//! The destination side of a restore from a bucket
//! (`Command::RestoreFromBucket`): the chain that lands a snapshot, read
//! from the bucket, verified and received on this node. No other agent
//! takes part; the coordinator only names the snapshot (by GUID).
//!
//! Rules:
//! - the destination must not exist: a chain starts with a full;
//! - every manifest version in the bucket is checked against this node's
//!   trusted manifest keys (its own and `[offsite] manifest_signers`); what
//!   does not verify is skipped and named in the job's messages, so a forged
//!   or altered manifest neither blocks nor steers the restore;
//! - the newest validly signed chain that lands the GUID is received, full
//!   first, one stream at a time; each segment's size and SHA-256 are
//!   checked against its manifest before it is decrypted, and only then do
//!   its bytes reach `zfs receive`;
//! - after each stream the snapshot it landed must carry the manifest's
//!   GUID; after the last, the GUID the command asked for;
//! - on any failure the partial receive is aborted (`receive -A`, audited):
//!   what stays is only streams that were verified and landed whole;
//! - memory is bounded by the segment size × (prefetch + 1).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use x25519_dalek::StaticSecret;
use zdr_common::wire::{
    BucketCheck, BucketRestoreJob, BucketVerifyJob, JobPhase, JobRole, SnapshotRef,
};
use zdr_common::DatasetName;

use super::{landed, pipe_to_zfs, upload, Refused, Replication};
use crate::offsite::manifest::{ManifestError, TrustedSigners, VerifiedManifest};
use crate::offsite::store::{Store, StoreError};
use crate::transfer::Progress;
use crate::zfs::{Backend, RecvSpec, ZfsError};

/// Segments fetched ahead of the one being written.
const PREFETCH: usize = 2;

/// Why a restore from a bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("zfs receive of stream {stream} into {dataset}: {source}")]
    Receive {
        stream: String,
        dataset: String,
        #[source]
        source: ZfsError,
    },
    #[error("stream {stream}: {why}")]
    Landed { stream: String, why: String },
    #[error("{0}")]
    Local(String),
    #[error("cancelled")]
    Cancelled,
}

/// What a restore from a bucket landed.
#[derive(Debug, Clone)]
pub struct Restored {
    pub landed: SnapshotRef,
    /// The streams received, full first.
    pub chain: Vec<VerifiedManifest>,
    pub bytes: u64,
    pub skipped: Vec<ManifestError>,
}

/// `; skipped: ...` for a message, empty when nothing was.
pub fn skipped_note(skipped: &[ManifestError]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let all: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(
        "; skipped {} manifest(s) that do not verify: {}",
        skipped.len(),
        all.join("; ")
    )
}

/// Restores `source_dataset`'s snapshot `to_guid` from `store` into `dest`:
/// the chain picked, verified and received as the module says. `progress`
/// counts the plaintext bytes written to `zfs receive`.
#[allow(clippy::too_many_arguments)] // one restore's inputs, each used once
pub async fn restore_chain(
    store: &Store,
    trusted: &TrustedSigners,
    recovery: &StaticSecret,
    backend: Arc<dyn Backend>,
    source_dataset: &str,
    to_guid: u64,
    dest: &DatasetName,
    progress: &watch::Sender<Progress>,
) -> Result<Restored, DownloadError> {
    let planned = store.plan_restore(source_dataset, to_guid, trusted).await?;
    if let Some(skipped) = (!planned.skipped.is_empty()).then_some(&planned.skipped) {
        warn!(%dest, skipped = %skipped_note(skipped), "restoring from the newest validly signed chain");
    }
    let total: u64 = planned.chain.iter().map(|m| m.manifest.stream_bytes).sum();
    progress.send_modify(|p| p.size_hint = Some(total));
    let mut bytes = 0u64;
    let mut last = None;
    for m in &planned.chain {
        let (mut sink, input) =
            pipe_to_zfs().map_err(|e| DownloadError::Local(format!("creating a pipe: {e}")))?;
        let (b, ds) = (backend.clone(), dest.clone());
        let spec = RecvSpec {
            force: false,
            noauto: zdr_common::wire::is_drill_scratch(dest.as_str()),
        };
        let zfs = tokio::task::spawn_blocking(move || {
            let mut input = input;
            b.receive(&ds, &spec, &mut input)
        });
        let mut counted = Counted {
            inner: &mut sink,
            progress,
        };
        let streamed = store
            .restore_stream(m, recovery, PREFETCH, &mut counted)
            .await;
        let _ = sink.shutdown().await;
        drop(sink); // EOF: a whole stream ends the receive, a cut one fails it.
        let received = zfs
            .await
            .map_err(|e| DownloadError::Local(format!("zfs receive panicked: {e}")))?;
        let n = streamed?;
        received.map_err(|source| DownloadError::Receive {
            stream: m.manifest.stream.clone(),
            dataset: dest.to_string(),
            source,
        })?;
        bytes += n;
        let snaps = {
            let (b, ds) = (backend.clone(), dest.clone());
            tokio::task::spawn_blocking(move || b.list_snapshots(&ds))
                .await
                .map_err(|e| DownloadError::Local(format!("listing panicked: {e}")))?
                .map_err(|e| DownloadError::Local(format!("listing {dest}: {e}")))?
        };
        let got = snaps
            .iter()
            .find(|s| s.guid == m.manifest.to_guid)
            .ok_or_else(|| DownloadError::Landed {
                stream: m.manifest.stream.clone(),
                why: format!(
                    "{dest} has no snapshot with GUID {} after the receive (it has {:?})",
                    m.manifest.to_guid,
                    snaps.iter().map(|s| (&s.name, s.guid)).collect::<Vec<_>>()
                ),
            })?;
        last = Some(SnapshotRef {
            name: got.name.clone(),
            guid: got.guid,
        });
    }
    let landed = last.ok_or_else(|| DownloadError::Local("the chain is empty".into()))?;
    Ok(Restored {
        landed,
        chain: planned.chain,
        bytes,
        skipped: planned.skipped,
    })
}

/// Counts what is written into the progress channel.
struct Counted<'a, W> {
    inner: &'a mut W,
    progress: &'a watch::Sender<Progress>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            self.progress.send_modify(|p| p.bytes += n as u64);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Segments read ahead while a bucket is verified.
const VERIFY_PREFETCH: usize = 2;

impl Replication {
    /// Re-reads `job.dataset`'s streams in the bucket without restoring
    /// them (`Store::verify`), with this node's trusted manifest keys.
    pub async fn verify_bucket(&self, job: BucketVerifyJob) -> Result<BucketCheck, Refused> {
        let offsite = self.offsite.get().ok_or_else(|| {
            "this agent's config has no [offsite] section, so it trusts no manifest key; add \
             one with its manifest_key"
                .to_string()
        })?;
        let trusted = offsite.config.trusted_signers(&offsite.signer)?;
        DatasetName::parse(&job.dataset).map_err(|e| format!("dataset: {e}"))?;
        let store = Store::new(&upload::bucket_config(&job.bucket)?);
        store
            .verify(&job.dataset, &trusted, VERIFY_PREFETCH)
            .await
            .map_err(|e| e.to_string())
    }

    /// Checks a restore-from-bucket command and runs it in the background.
    pub async fn restore_from_bucket(
        self: &Arc<Self>,
        cmd: BucketRestoreJob,
        actor: String,
    ) -> Result<String, Refused> {
        let offsite = self.offsite.get().ok_or_else(|| {
            "this agent's config has no [offsite] section, so it restores from no bucket; add \
             one with its manifest_key, recovery_key and the manifest_signers of the nodes that \
             upload"
                .to_string()
        })?;
        let trusted = offsite.config.trusted_signers(&offsite.signer)?;
        let recovery = offsite.config.recovery()?;
        DatasetName::parse(&cmd.source_dataset).map_err(|e| format!("source_dataset: {e}"))?;
        let dataset = DatasetName::parse(&cmd.dataset).map_err(|e| format!("dataset: {e}"))?;
        let bucket = upload::bucket_config(&cmd.bucket)?;
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        tokio::task::spawn_blocking(move || {
            match backend.list_snapshots(&ds) {
                Err(ZfsError::NotFound { .. }) => {}
                Ok(_) => {
                    return Err(format!(
                        "{ds} exists; a restore from a bucket lands a new dataset: restore to \
                         another name"
                    ))
                }
                Err(e) => return Err(format!("{ds}: {e}")),
            }
            backend
                .create_parents(&ds)
                .map_err(|e| format!("creating the parents of {ds}: {e}"))
        })
        .await
        .map_err(|e| format!("preparing {dataset} panicked: {e}"))??;
        let cancel = self.register(&cmd.job, JobRole::Target, None)?;
        let me = self.clone();
        let what = format!(
            "restoring {} GUID {} from {}/{} into {dataset}",
            cmd.source_dataset, cmd.to_guid, cmd.bucket.endpoint, cmd.bucket.bucket
        );
        tokio::spawn(async move {
            let id = cmd.job.clone();
            let store = Store::new(&bucket);
            me.run_download(cmd, &store, (trusted, recovery), dataset, actor, cancel)
                .await;
            me.jobs().remove(&(id, JobRole::Target));
        });
        Ok(what)
    }

    async fn run_download(
        self: &Arc<Self>,
        cmd: BucketRestoreJob,
        store: &Store,
        (trusted, recovery): (TrustedSigners, StaticSecret),
        dataset: DatasetName,
        actor: String,
        cancel: Arc<Notify>,
    ) {
        let (progress, mut reporter) = self.reporter(&cmd.job, JobRole::Target);
        let backend = self.lifecycle.backend.clone();
        let run = restore_chain(
            store,
            &trusted,
            &recovery,
            backend,
            &cmd.source_dataset,
            cmd.to_guid,
            &dataset,
            &progress,
        );
        let outcome = tokio::select! {
            r = run => r,
            _ = cancel.notified() => Err(DownloadError::Cancelled),
        };
        // The last snapshot is the one asked for, then held like any restore's.
        let outcome = match outcome {
            Ok(r) if r.landed.guid != cmd.to_guid => Err(DownloadError::Landed {
                stream: r
                    .chain
                    .last()
                    .map(|m| m.manifest.stream.clone())
                    .unwrap_or_default(),
                why: format!(
                    "the chain landed GUID {}, the restore asked for {}",
                    r.landed.guid, cmd.to_guid
                ),
            }),
            Ok(r) => {
                let (b, ds, tag, want) = (
                    self.lifecycle.backend.clone(),
                    dataset.clone(),
                    cmd.hold_tag.clone(),
                    r.landed.clone(),
                );
                match tokio::task::spawn_blocking(move || landed(&*b, &ds, &want, &tag)).await {
                    Ok(Ok((snap, listing))) => Ok((r, snap, listing)),
                    Ok(Err(e)) => Err(DownloadError::Local(e)),
                    Err(e) => Err(DownloadError::Local(format!("checking panicked: {e}"))),
                }
            }
            Err(e) => Err(e),
        };
        let mut note = String::new();
        if outcome.is_err() {
            let why = format!(
                "job {}: the restore from the bucket failed; no partial receive stays",
                cmd.job
            );
            note = match self.abort_audited(&actor, &dataset, &why).await {
                Ok(true) => "; the partial receive was aborted (zfs receive -A)".into(),
                Ok(false) => String::new(),
                Err(e) => format!("; {e}"),
            };
        }
        let lc = self.lifecycle.clone();
        let ds = dataset.clone();
        let listing = outcome.as_ref().ok().map(|(_, _, l)| l.clone());
        let _ = tokio::task::spawn_blocking(move || match listing {
            Some(snaps) => lc.dataset_listed(&ds, snaps, crate::clock::now()),
            None => lc.dataset_changed(&ds, crate::clock::now()),
        })
        .await;
        reporter.stop().await;
        let r = reporter.last();
        let mut update = r.job_update(
            &self.node,
            &cmd.job,
            JobRole::Target,
            JobPhase::Done,
            String::new(),
        );
        match outcome {
            Ok((restored, snap, _)) => {
                info!(job = %cmd.job, %dataset, snapshot = %snap.name, bytes = restored.bytes, "restored from the bucket");
                let streams: Vec<&str> = restored
                    .chain
                    .iter()
                    .map(|m| m.manifest.stream.as_str())
                    .collect();
                update.bytes = restored.bytes;
                update.message = format!(
                    "received {} bytes from {}/{} in {} stream(s) {streams:?}, every manifest \
                     signature, chain link and segment SHA-256 checked; {dataset}@{} has GUID {}{}",
                    restored.bytes,
                    cmd.bucket.endpoint,
                    cmd.bucket.bucket,
                    restored.chain.len(),
                    snap.name,
                    snap.guid,
                    skipped_note(&restored.skipped)
                );
                update.landed = Some(snap);
            }
            Err(e) => {
                warn!(job = %cmd.job, %dataset, error = %e, "restore from the bucket failed");
                update.state = JobPhase::Failed;
                update.message = format!("{e}{note}");
            }
        }
        self.report(update);
    }
}
