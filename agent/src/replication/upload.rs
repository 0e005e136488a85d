//! The source side of an upload to a bucket (`Command::Upload`): `zfs send`
//! streamed into [`crate::offsite::store`] as sealed segments, the signed
//! manifest last, reported like a replication's send.
//!
//! Rules:
//! - the snapshots are checked by GUID against the command before any byte
//!   is sent; an incremental needs its parent manifest's reference, and
//!   lands only on it with the same send flags (`store::check_parent`);
//! - the credentials come from the reference the command names, read here
//!   on this host (a file or one of this agent's environment variables):
//!   the secret never crosses the bus;
//! - the snapshot sent is held under the command's tag (the chain's tip,
//!   which the next incremental starts from); the coordinator moves the hold;
//! - memory is bounded by the sizing: segment size × (uploads in flight + 1);
//! - `zfs send` is read at the command's rate, which `SetRate` changes
//!   while the upload runs (the coordinator's bandwidth allocation).

use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use x25519_dalek::PublicKey;
use zdr_common::wire::{
    BucketSpec, JobPhase, JobRole, LockMode as WireLock, ManifestRef, StreamSpec, UploadJob,
};
use zdr_common::DatasetName;

use super::{pipe_from_zfs, Refused, Replication};
use crate::offsite::manifest::{ManifestSigner, ParentRef, SendFlags};
use crate::offsite::seal;
use crate::offsite::sizing::{self, Budget};
use crate::offsite::store::{BucketConfig, LockMode, ObjectLock, Store, UploadRequest};
use crate::transfer::{pace, Progress, RateHandle};
use crate::zfs::{SendBase, SendSpec, ZfsError};

/// Bytes between the paced `zfs send` and the segmenter.
const PACE_BUFFER: usize = 1 << 20;

/// This node's offsite setup, from its config's `[offsite]`.
pub struct Offsite {
    pub signer: ManifestSigner,
    pub budget: Budget,
    /// For restores: the trusted manifest keys and the recovery key.
    pub config: crate::config::OffsiteConfig,
}

/// What an upload command asks for, checked (pure).
#[derive(Debug)]
pub(crate) struct Checked {
    pub dataset: DatasetName,
    pub spec_from: Option<String>,
    pub to: String,
    pub flags: SendFlags,
    pub parent: Option<ParentRef>,
    pub lock: Option<ObjectLock>,
    pub recipients: Vec<PublicKey>,
}

/// Checks an upload command; `encrypted`: the dataset is encrypted, so it
/// goes raw whatever the command says.
pub(crate) fn check(cmd: &UploadJob, encrypted: bool) -> Result<Checked, Refused> {
    let dataset = DatasetName::parse(&cmd.dataset).map_err(|e| format!("dataset: {e}"))?;
    let (spec_from, to) = match &cmd.stream {
        StreamSpec::Full { snapshot } => (None, snapshot.clone()),
        StreamSpec::Incremental {
            from,
            to,
            intermediates: false,
            from_bookmark: false,
        } => (Some(from.clone()), to.clone()),
        other => {
            return Err(format!(
                "an upload sends a full or one `-i` incremental from a snapshot, not {other:?}"
            ))
        }
    };
    let flags = SendFlags {
        raw: cmd.raw || encrypted,
        ..SendFlags::default()
    };
    let parent = match (&spec_from, cmd.from_guid, &cmd.parent) {
        (None, None, None) => None,
        (Some(_), Some(_), Some(p)) => Some(ParentRef {
            stream: p.stream.clone(),
            hash: p.hash.clone(),
            dataset: p.dataset.clone(),
            to_guid: p.to_guid,
            flags: SendFlags {
                raw: p.raw,
                ..SendFlags::default()
            },
        }),
        (Some(_), _, None) => {
            return Err(
                "an incremental upload names no parent manifest: a chain never continues from \
                 an upload without one"
                    .into(),
            )
        }
        _ => {
            return Err(
                "the stream, from_guid and parent disagree on whether this is a full".into(),
            )
        }
    };
    if cmd.recipients.is_empty() {
        return Err("no recovery key to seal the stream for".into());
    }
    let recipients = cmd
        .recipients
        .iter()
        .map(|r| seal::parse_recipient(r).map_err(|e| format!("recipient {r:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let lock = cmd.lock.map(|l| ObjectLock {
        mode: match l.mode {
            WireLock::Governance => LockMode::Governance,
            WireLock::Compliance => LockMode::Compliance,
        },
        retain_until: l.retain_until,
    });
    Ok(Checked {
        dataset,
        spec_from,
        to,
        flags,
        parent,
        lock,
        recipients,
    })
}

/// The bucket a command names, with the keys its credentials reference
/// names on this host.
pub(crate) fn bucket_config(spec: &BucketSpec) -> Result<BucketConfig, Refused> {
    let (access_key_id, secret_access_key) =
        zdr_common::credentials::resolve_here(&spec.credentials, "this agent")?;
    Ok(BucketConfig {
        endpoint: spec.endpoint.clone(),
        region: spec.region.clone(),
        bucket: spec.bucket.clone(),
        prefix: spec.prefix.clone(),
        access_key_id,
        secret_access_key,
    })
}

/// Counts the stream's bytes into the progress channel as they are read.
struct Counting<R> {
    inner: R,
    progress: watch::Sender<Progress>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.progress.send_modify(|p| p.bytes += read);
        }
        polled
    }
}

impl Replication {
    /// Enables uploads on this node (its config has `[offsite]`).
    pub fn enable_offsite(&self, offsite: Offsite) {
        let _ = self.offsite.set(offsite);
    }

    /// Checks the command and the snapshots' GUIDs, holds what it sends and
    /// uploads in the background.
    pub async fn upload(self: &Arc<Self>, cmd: UploadJob) -> Result<String, Refused> {
        if self.offsite.get().is_none() {
            return Err(
                "this agent's config has no [offsite] section, so it cannot sign manifests; \
                 add one with its manifest_key"
                    .into(),
            );
        }
        let dataset = DatasetName::parse(&cmd.dataset).map_err(|e| format!("dataset: {e}"))?;
        let checked = check(&cmd, self.lifecycle.is_encrypted(&dataset))?;
        let bucket = bucket_config(&cmd.bucket)?;
        let lifecycle = self.lifecycle.clone();
        let (ds, tag) = (checked.dataset.clone(), cmd.hold_tag.clone());
        let (from, to, from_guid, to_guid) = (
            checked.spec_from.clone(),
            checked.to.clone(),
            cmd.from_guid,
            cmd.to_guid,
        );
        let in_flight = tokio::task::spawn_blocking(move || {
            let snaps = lifecycle
                .backend
                .list_snapshots(&ds)
                .map_err(|e| format!("{ds}: {e}"))?;
            let guid_of = |name: &str| snaps.iter().find(|s| s.name == name).map(|s| s.guid);
            match guid_of(&to) {
                Some(g) if g == to_guid => {}
                got => {
                    return Err(format!(
                        "{ds}@{to} has GUID {got:?} here, the plan says {to_guid}: plan again"
                    ))
                }
            }
            if let (Some(from), Some(want)) = (&from, from_guid) {
                match guid_of(from) {
                    Some(g) if g == want => {}
                    got => {
                        return Err(format!(
                        "{ds}@{from} has GUID {got:?} here, the chain's tip is {want}: plan again"
                    ))
                    }
                }
            }
            let in_flight = lifecycle.stream_in_flight(&ds, from.as_deref(), &to, false);
            match lifecycle.backend.hold(&ds, &to, &tag) {
                Ok(()) | Err(ZfsError::Exists { .. }) => Ok(in_flight),
                Err(e) => Err(format!("holding {ds}@{to}: {e}")),
            }
        })
        .await
        .map_err(|e| format!("preparing the upload panicked: {e}"))??;
        let rate = RateHandle::new(cmd.bytes_per_sec.and_then(NonZeroU64::new));
        let cancel = self.register(&cmd.job, JobRole::Source, Some(rate.clone()))?;
        let me = self.clone();
        let what = format!(
            "uploading {}@{} to {}/{}{}",
            checked.dataset,
            checked.to,
            cmd.bucket.endpoint,
            cmd.bucket.bucket,
            match cmd.bytes_per_sec {
                Some(r) => format!(", limited to {r} B/s"),
                None => String::new(),
            }
        );
        tokio::spawn(async move {
            let id = cmd.job.clone();
            me.run_upload(cmd, checked, bucket, (cancel, rate)).await;
            drop(in_flight);
            me.jobs().remove(&(id, JobRole::Source));
        });
        Ok(what)
    }

    async fn run_upload(
        self: &Arc<Self>,
        cmd: UploadJob,
        checked: Checked,
        bucket: BucketConfig,
        (cancel, rate): (Arc<Notify>, RateHandle),
    ) {
        let offsite = self.offsite.get().expect("upload checked it");
        let spec = match &checked.spec_from {
            None => SendSpec::Full {
                dataset: checked.dataset.clone(),
                snapshot: checked.to.clone(),
                raw: checked.flags.raw,
            },
            Some(from) => SendSpec::Incremental {
                dataset: checked.dataset.clone(),
                from: SendBase::Snapshot(from.clone()),
                to: checked.to.clone(),
                intermediates: false,
                raw: checked.flags.raw,
            },
        };
        let (progress, mut reporter) = self.reporter(&cmd.job, JobRole::Source);
        // The segment size comes from the estimate, so it is awaited first.
        let backend = self.lifecycle.backend.clone();
        let s = spec.clone();
        let estimate = match tokio::task::spawn_blocking(move || backend.estimate(&s)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                warn!(job = %cmd.job, error = %e, "no size estimate; the largest segments the budget allows");
                None
            }
            Err(_) => None,
        };
        progress.send_modify(|p| p.size_hint = estimate);
        let outcome = match sizing::plan(estimate, offsite.budget) {
            Err(e) => Err(format!("sizing: {e}")),
            Ok(sizing) => {
                self.stream_upload(
                    &cmd,
                    spec,
                    checked,
                    &bucket,
                    sizing,
                    progress,
                    (cancel, rate),
                )
                .await
            }
        };
        reporter.stop().await;
        let r = reporter.last();
        let mut update = r.job_update(
            &self.node,
            &cmd.job,
            JobRole::Source,
            JobPhase::Done,
            String::new(),
        );
        match outcome {
            Ok(m) => {
                info!(job = %cmd.job, manifest = %m.key, bytes = m.stream_bytes, "uploaded");
                update.bytes = m.stream_bytes;
                update.message = format!(
                    "uploaded {} bytes in {} segments to {}/{}, manifest {} (SHA-256 {}) committed",
                    m.stream_bytes, m.segments, bucket.endpoint, bucket.bucket, m.key, m.hash
                );
                update.uploaded = Some(m);
            }
            Err(message) => {
                warn!(job = %cmd.job, %message, "upload failed");
                update.state = JobPhase::Failed;
                update.message = message;
            }
        }
        self.report(update);
    }

    #[allow(clippy::too_many_arguments)] // one upload's parts, each used once
    async fn stream_upload(
        &self,
        cmd: &UploadJob,
        spec: SendSpec,
        checked: Checked,
        bucket: &BucketConfig,
        sizing: sizing::Sizing,
        progress: watch::Sender<Progress>,
        (cancel, rate): (Arc<Notify>, RateHandle),
    ) -> Result<ManifestRef, String> {
        let offsite = self.offsite.get().expect("upload checked it");
        let (output, source) = pipe_from_zfs().map_err(|e| format!("creating a pipe: {e}"))?;
        let backend = self.lifecycle.backend.clone();
        let zfs = tokio::task::spawn_blocking(move || {
            let mut output = output;
            backend.send(&spec, &mut output)
        });
        // The stream is read at the job's rate (SetRate changes it); the
        // buffer between the pace and the segmenter is one pipe's worth.
        let (paced, paced_reader) = tokio::io::duplex(PACE_BUFFER);
        let pump = tokio::spawn(async move { pace(source, paced, &rate).await });
        // The manifest is written only once zfs send said it finished and
        // the pace passed every byte on: a send that failed looks like the
        // end of the stream to the reader.
        let sent = async move {
            match zfs.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("zfs send: {e}")),
                Err(e) => return Err(format!("zfs send panicked: {e}")),
            }
            match pump.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("reading zfs send: {e}")),
                Err(e) => Err(format!("the pace panicked: {e}")),
            }
        };
        let store = Store::new(bucket);
        let req = UploadRequest {
            dataset: checked.dataset.to_string(),
            from_guid: cmd.from_guid,
            to_guid: cmd.to_guid,
            to_name: checked.to.clone(),
            flags: checked.flags,
            parent: checked.parent,
            recipients: checked.recipients,
            lock: checked.lock,
            storage_class: cmd.bucket.storage_class.clone(),
            sizing,
            now: crate::clock::now(),
        };
        let reader = Counting {
            inner: paced_reader,
            progress,
        };
        let up = tokio::select! {
            r = store.upload_gated(reader, req, &offsite.signer, sent) => r.map_err(|e| e.to_string())?,
            _ = cancel.notified() => return Err("cancelled; no manifest was written, so nothing continues from this upload".to_string()),
        };
        let m = &up.manifest.manifest;
        Ok(ManifestRef {
            stream: m.stream.clone(),
            hash: up.manifest.hash.clone(),
            key: up.manifest_key.clone(),
            dataset: m.dataset.clone(),
            from_guid: m.from_guid,
            to_guid: m.to_guid,
            to_name: m.to_name.clone(),
            raw: m.flags.raw,
            stream_bytes: m.stream_bytes,
            segments: m.segments.len() as u64,
            created: m.created,
            retain_until: m.retain_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_common::wire::{CredentialsRef, UploadLock};

    fn cmd(stream: StreamSpec, from_guid: Option<u64>, parent: Option<ManifestRef>) -> UploadJob {
        UploadJob {
            job: "j".into(),
            dataset: "tank/db".into(),
            stream,
            to_guid: 2,
            from_guid,
            parent,
            raw: false,
            bucket: BucketSpec {
                endpoint: "http://127.0.0.1:1".into(),
                region: "r".into(),
                bucket: "b".into(),
                prefix: String::new(),
                storage_class: None,
                credentials: CredentialsRef::Env("X".into()),
            },
            lock: Some(UploadLock {
                mode: WireLock::Compliance,
                retain_until: 9,
            }),
            recipients: vec![seal::recipient_id(&PublicKey::from([9u8; 32]))],
            hold_tag: "t".into(),
            bytes_per_sec: None,
        }
    }

    fn parent() -> ManifestRef {
        ManifestRef {
            stream: "s".into(),
            hash: "h".into(),
            key: "k".into(),
            dataset: "tank/db".into(),
            from_guid: None,
            to_guid: 1,
            to_name: "a".into(),
            raw: true,
            stream_bytes: 1,
            segments: 1,
            created: 0,
            retain_until: 0,
        }
    }

    fn incr() -> StreamSpec {
        StreamSpec::Incremental {
            from: "a".into(),
            to: "b".into(),
            intermediates: false,
            from_bookmark: false,
        }
    }

    #[test]
    fn commands_are_checked_before_anything_is_sent() {
        let full = check(
            &cmd(
                StreamSpec::Full {
                    snapshot: "b".into(),
                },
                None,
                None,
            ),
            false,
        )
        .unwrap();
        assert!(full.parent.is_none() && !full.flags.raw);
        assert_eq!(full.lock.unwrap().mode, LockMode::Compliance);
        // Encrypted datasets go raw whatever the task says.
        assert!(
            check(
                &cmd(
                    StreamSpec::Full {
                        snapshot: "b".into()
                    },
                    None,
                    None
                ),
                true
            )
            .unwrap()
            .flags
            .raw
        );
        let inc = check(&cmd(incr(), Some(1), Some(parent())), true).unwrap();
        assert_eq!(inc.parent.unwrap().to_guid, 1);
        assert!(check(&cmd(incr(), Some(1), None), true)
            .unwrap_err()
            .contains("no parent manifest"));
        assert!(check(
            &cmd(
                StreamSpec::Full {
                    snapshot: "b".into()
                },
                Some(1),
                None
            ),
            true
        )
        .is_err());
        let intermediates = StreamSpec::Incremental {
            from: "a".into(),
            to: "b".into(),
            intermediates: true,
            from_bookmark: false,
        };
        assert!(check(&cmd(intermediates, Some(1), Some(parent())), true).is_err());
        let mut bad = cmd(
            StreamSpec::Full {
                snapshot: "b".into(),
            },
            None,
            None,
        );
        bad.recipients = vec!["nope".into()];
        assert!(check(&bad, false).unwrap_err().contains("recipient"));
    }
}
