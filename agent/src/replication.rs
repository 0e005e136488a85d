//! The agent's side of replication jobs. The target registers the job with
//! its transfer listener and pipes what arrives into `zfs receive -s -u`; the
//! source pipes `zfs send` to it. Both ends report progress and their outcome
//! as [`JobUpdate`]s; the coordinator decides what happens next.

pub mod download;
pub mod rollback;
pub mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zdr_common::wire::{
    FloorRefusal, JobPhase, JobRole, JobUpdate, PartialReceive, ReceiveJob, ReceiveOffer, SendJob,
    SnapshotInfo, SnapshotRef, StreamSpec,
};
use zdr_common::DatasetName;

use crate::audit::Record;
use crate::clock::now;
use crate::config::TransferConfig;
use crate::floor::{self, Operation, FLOOR_HOLD};
use crate::lifecycle::Lifecycle;
use crate::transfer::{
    Compression, FleetTls, Job, JobToken, Listener, Progress, RateHandle, SendOptions, Sender,
    TransferError,
};
use crate::zfs::{resume_token, RecvSpec, SendBase, SendSpec, ZfsError};

/// zstd level on the wire: level 1 keeps up with a 10 Gb/s link per core.
const ZSTD_LEVEL: i32 = 1;
/// How often a running job reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The data plane of one node, when its config has a `[transfer]` section.
struct Plane {
    listener: Arc<Listener>,
    advertise: SocketAddr,
    sender: Sender,
}

/// What a command can still change in a running job.
struct Running {
    cancel: Arc<Notify>,
    rate: Option<RateHandle>,
    role: JobRole,
    /// The job's latest report, for [`Replication::status`].
    last: Option<JobUpdate>,
}

/// Reports of ended jobs kept for a new leader's question (a few per pairing).
const ENDED_KEPT: usize = 256;

pub struct Replication {
    lifecycle: Arc<Lifecycle>,
    node: String,
    plane: Option<Plane>,
    /// By id and role: a restore to the node of its copy runs both ends here.
    jobs: Mutex<HashMap<(String, JobRole), Running>>,
    /// The last reports of jobs that ended here, newest last: a new leader
    /// asks after an attempt whose end its predecessor never heard (the
    /// report went out while no coordinator listened), and learns how it
    /// ended instead of sending it again.
    ended: Mutex<std::collections::VecDeque<JobUpdate>>,
    /// Set by [`Replication::stop`]: no new job starts.
    stopping: AtomicBool,
    updates: mpsc::UnboundedSender<JobUpdate>,
    /// Set when the config has `[offsite]`: uploads to buckets.
    offsite: std::sync::OnceLock<upload::Offsite>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("[transfer]: {0}")]
    Tls(#[from] TransferError),
    #[error("[transfer]: listen = {0} is not an address a sender can reach; set advertise to this node's address")]
    NoAdvertise(SocketAddr),
}

/// Why a job command was refused; the message goes back to the coordinator.
type Refused = String;

/// Why a receive was refused: the message for people and, when the
/// retention floor was the cause, its typed refusal, which the reply
/// carries in `effects.floor_refused` for the coordinator to decide on.
#[derive(Debug)]
pub struct ReceiveRefused {
    pub message: String,
    pub floor: Option<FloorRefusal>,
}

impl From<String> for ReceiveRefused {
    fn from(message: String) -> Self {
        ReceiveRefused {
            message,
            floor: None,
        }
    }
}

impl Replication {
    /// Binds the transfer listener (when configured) and serves it until `shutdown`.
    pub async fn start(
        lifecycle: Arc<Lifecycle>,
        node: String,
        config: Option<&TransferConfig>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Replication>, mpsc::UnboundedReceiver<JobUpdate>), SetupError> {
        let plane = match config {
            None => None,
            Some(c) => {
                let tls = FleetTls::from_pem_files(&c.ca, &c.cert, &c.key)?;
                let listener = Listener::bind(&tls, c.listen).await?;
                let bound = listener.local_addr()?;
                let advertise = match c.advertise {
                    Some(a) => a,
                    None if bound.ip().is_unspecified() => {
                        return Err(SetupError::NoAdvertise(bound))
                    }
                    None => bound,
                };
                info!(listen = %bound, %advertise, "transfer listener up");
                let serve = listener.clone().serve();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
                Some(Plane {
                    listener,
                    advertise,
                    sender: Sender::new(&tls),
                })
            }
        };
        let (updates, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Replication {
            lifecycle,
            node,
            plane,
            jobs: Mutex::new(HashMap::new()),
            ended: Mutex::new(std::collections::VecDeque::new()),
            stopping: AtomicBool::new(false),
            updates,
            offsite: std::sync::OnceLock::new(),
        });
        Ok((me, rx))
    }

    fn plane(&self) -> Result<&Plane, Refused> {
        self.plane.as_ref().ok_or_else(|| {
            "this agent's config has no [transfer] section, so it can neither send nor receive; \
             add one with the fleet CA, this node's certificate and key"
                .to_string()
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, JobRole), Running>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a job id; refused if it runs already.
    fn register(
        &self,
        id: &str,
        role: JobRole,
        rate: Option<RateHandle>,
    ) -> Result<Arc<Notify>, Refused> {
        let mut jobs = self.jobs();
        if self.stopping.load(Ordering::SeqCst) {
            return Err(format!("job {id} refused: this agent is shutting down"));
        }
        if jobs.contains_key(&(id.to_string(), role)) {
            return Err(format!("job {id} is already running on this node"));
        }
        let cancel = Arc::new(Notify::new());
        jobs.insert(
            (id.to_string(), role),
            Running {
                cancel: cancel.clone(),
                rate,
                last: None,
                role,
            },
        );
        Ok(cancel)
    }

    fn update(&self, job: &str, role: JobRole, state: JobPhase, p: &Reporter, message: String) {
        self.report(p.job_update(&self.node, job, role, state, message));
    }

    /// Sends `update` to the coordinator and keeps it as the job's latest;
    /// one that ends a job is also kept for [`Self::status`].
    fn report(&self, update: JobUpdate) {
        let key = (update.job.clone(), update.role);
        if let Some(running) = self.jobs().get_mut(&key) {
            running.last = Some(update.clone());
        }
        if update.state != JobPhase::Running {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.len() >= ENDED_KEPT {
                ended.pop_front();
            }
            ended.push_back(update.clone());
        }
        let _ = self.updates.send(update);
    }

    /// The latest report of a job that runs here, or the last one of a job
    /// that ended here lately; `None` when this node knows no such job.
    pub fn status(&self, job: &str) -> Option<JobUpdate> {
        let jobs = self.jobs();
        let running = [JobRole::Target, JobRole::Source]
            .iter()
            .find_map(|&role| jobs.get(&(job.to_string(), role)));
        let Some(running) = running else {
            drop(jobs);
            let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            return ended.iter().rev().find(|u| u.job == job).cloned();
        };
        Some(running.last.clone().unwrap_or_else(|| {
            Reporter::default().job_update(
                &self.node,
                job,
                running.role,
                JobPhase::Running,
                "starting".into(),
            )
        }))
    }

    /// Target side: checks the command, prepares the dataset and waits for
    /// the sender in the background. Returns where the sender connects.
    pub async fn receive(
        self: &Arc<Self>,
        cmd: ReceiveJob,
        actor: String,
    ) -> Result<ReceiveOffer, ReceiveRefused> {
        let plane = self.plane()?;
        let dataset = DatasetName::parse(&cmd.dataset).map_err(|e| format!("dataset: {e}"))?;
        dataset
            .snapshot(&cmd.expect.name)
            .map_err(|e| format!("expect.name: {e}"))?;
        let job = job(&cmd.job, &cmd.token.0)?;
        // A copy's class comes before any check: the floor then covers
        // what it holds already, and what lands.
        if let Some(source) = &cmd.source_dataset {
            let source = DatasetName::parse(source).map_err(|e| format!("source_dataset: {e}"))?;
            let (lc, ds, named) = (self.lifecycle.clone(), dataset.clone(), cmd.class.clone());
            tokio::task::spawn_blocking(move || {
                lc.note_copy(&ds, &source, named.as_deref(), now())
            })
            .await
            .map_err(|e| format!("noting the copy's class panicked: {e}"))?;
        }
        // Checked before anything is written: a refused -F changes nothing.
        let why_force = match cmd.force {
            true => Some(self.rollback_audit(&cmd, &dataset, &actor).await?),
            false => None,
        };
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        if cmd.discard_partial {
            let why = format!(
                "job {}: the saved partial receive is not to be resumed",
                cmd.job
            );
            self.abort_audited(&actor, &dataset, &why).await?;
        }
        let resume_token = tokio::task::spawn_blocking(move || {
            match backend.resume_token(&ds) {
                Ok(Some(token)) => return Ok(Some(token)),
                Ok(None) | Err(ZfsError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            backend.create_parents(&ds)?;
            Ok(None)
        })
        .await
        .map_err(|e| format!("preparing {dataset} panicked: {e}"))?
        .map_err(|e| format!("preparing {dataset}: {e}"))?;
        let cancel = self.register(&cmd.job, JobRole::Target, None)?;
        let pending = plane.listener.expect(job, &cmd.source_node);
        let me = self.clone();
        let how = How {
            actor,
            resuming: resume_token.is_some(),
            why_force,
        };
        let partial = resume_token.as_deref().and_then(|t| decoded(&dataset, t));
        tokio::spawn(async move {
            let id = cmd.job.clone();
            me.run_receive(cmd, dataset, pending, cancel, how).await;
            me.jobs().remove(&(id, JobRole::Target));
        });
        Ok(ReceiveOffer {
            addr: plane.advertise.to_string(),
            resume_token,
            partial,
        })
    }

    /// Why `receive -F` runs, for the audit log: what it will destroy here,
    /// listed from this node's pool. Refused unless it is what the
    /// coordinator planned, and unless the retention floor lets every
    /// snapshot it destroys go.
    async fn rollback_audit(
        &self,
        cmd: &ReceiveJob,
        dataset: &DatasetName,
        actor: &str,
    ) -> Result<String, ReceiveRefused> {
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        let listing = tokio::task::spawn_blocking(move || match backend.list_snapshots(&ds) {
            Err(ZfsError::NotFound { .. }) => Ok(Vec::new()),
            r => r,
        })
        .await
        .map_err(|e| format!("listing {dataset} panicked: {e}"))?
        .map_err(|e| format!("listing {dataset} before receive -F: {e}"))?;
        let rollback =
            rollback::check(dataset.as_str(), cmd.base.as_ref(), &cmd.discards, &listing).map_err(
                |e| {
                    warn!(job = %cmd.job, error = %e, "receive -F refused");
                    e.to_string()
                },
            )?;
        let destroys = Operation::ReceiveForce(&rollback.destroys);
        self.lifecycle
            .floor_vet(dataset, &listing, destroys, actor, now())
            .map_err(|r| ReceiveRefused {
                message: floor::describe(&r),
                floor: Some(r),
            })?;
        Ok(format!("job {}: roll {dataset} back {rollback}", cmd.job))
    }

    async fn run_receive(
        self: &Arc<Self>,
        cmd: ReceiveJob,
        dataset: DatasetName,
        pending: crate::transfer::Pending,
        cancel: Arc<Notify>,
        how: How,
    ) {
        let How {
            actor,
            resuming,
            why_force,
        } = how;
        if let Some(why) = &why_force {
            if !self.audit(&actor, "receive -F", dataset.as_str(), why, "intent") {
                let r = Reporter::default();
                self.update(
                    &cmd.job,
                    JobRole::Target,
                    JobPhase::Failed,
                    &r,
                    "the audit log could not be written; not receiving with -F".into(),
                );
                return;
            }
        }
        let (mut sink, input) = match pipe_to_zfs() {
            Ok(p) => p,
            Err(e) => {
                let r = Reporter::default();
                let msg = format!("creating a pipe: {e}");
                self.update(&cmd.job, JobRole::Target, JobPhase::Failed, &r, msg);
                return;
            }
        };
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        let spec = RecvSpec {
            force: cmd.force,
            noauto: zdr_common::wire::is_drill_scratch(ds.as_str()),
        };
        let zfs = tokio::task::spawn_blocking(move || {
            let mut input = input;
            backend.receive(&ds, &spec, &mut input)
        });
        let (progress, mut reporter) = self.reporter(&cmd.job, JobRole::Target);
        let wait = Duration::from_secs(cmd.accept_secs.max(1));
        let transfer = tokio::select! {
            r = pending.receive(wait, &mut sink, Some(&progress)) => r,
            _ = cancel.notified() => Err(TransferError::Cancelled),
        };
        drop(sink); // EOF: a complete stream ends the receive, a cut one leaves it partial.
        let zfs = zfs.await.unwrap_or_else(|e| {
            Err(ZfsError::Invalid {
                what: "receive",
                value: dataset.to_string(),
                reason: format!("panicked: {e}"),
            })
        });
        // The reporter keeps the coordinator informed until the final word:
        // checking, holding and relisting can take a while on a busy pool.
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        let job_id = cmd.job.clone();
        let mut outcome = match (&transfer, zfs) {
            (Ok(summary), Ok(())) => {
                let expect = cmd.expect.clone();
                let tag = cmd.hold_tag.clone();
                let landed =
                    tokio::task::spawn_blocking(move || landed(&*backend, &ds, &expect, &tag))
                        .await
                        .unwrap_or_else(|e| Err(format!("checking the result panicked: {e}")));
                match landed {
                    Ok((snap, listing)) => Ok((snap, listing, summary.clone())),
                    Err(e) => Err((e, None)),
                }
            }
            (Err(mismatch @ TransferError::HashMismatch { .. }), _) => {
                // The held-back tail never reached zfs, so a partial state may
                // exist: it holds corrupt data and must not be resumed.
                let why = format!("job {job_id}: the stream's hash did not match");
                let note = match self.abort_audited(&actor, &dataset, &why).await {
                    Ok(true) => "; the partial receive was aborted (zfs receive -A)".to_string(),
                    Ok(false) => String::new(),
                    Err(e) => format!("; {e}"),
                };
                Err((format!("{mismatch}{note}"), None))
            }
            (t, z) => {
                let token = tokio::task::spawn_blocking(move || backend.resume_token(&ds))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                let mut msg = match (t, z) {
                    (Err(t), Err(z)) => format!("{t}; zfs receive: {z}"),
                    (Err(t), Ok(())) => t.to_string(),
                    (Ok(_), Err(z)) => format!("zfs receive: {z}"),
                    (Ok(_), Ok(())) => unreachable!("handled above"),
                };
                if token.is_some() {
                    msg.push_str("; the partial receive is saved for resuming");
                }
                Err((msg, token))
            }
        };
        if let Some(why) = &why_force {
            let result = match &outcome {
                Ok(_) => "done".to_string(),
                Err((e, _)) => format!("failed: {e}"),
            };
            self.audit(&actor, "receive -F", dataset.as_str(), why, &result);
        }
        let lc = self.lifecycle.clone();
        let ds = dataset.clone();
        let listing = match &mut outcome {
            Ok((_, listing, _)) => Some(std::mem::take(listing)),
            Err(_) => None,
        };
        let _ = tokio::task::spawn_blocking(move || {
            match listing {
                Some(snaps) => lc.dataset_listed(&ds, snaps, now()),
                None => lc.dataset_changed(&ds, now()),
            }
            // What landed in a copy inside its window gets the floor's hold now.
            lc.floor_holds_of(&ds, now());
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
            Ok((snap, _, summary)) => {
                info!(job = %cmd.job, %dataset, snapshot = %snap.name, bytes = summary.bytes, resumed = resuming, "received");
                update.bytes = summary.bytes;
                update.message = format!(
                    "received {} bytes{} into {dataset}, BLAKE3 {} agreed by both ends; {}@{} has GUID {}",
                    summary.bytes,
                    if resuming { " (resumed)" } else { "" },
                    summary.hash,
                    dataset,
                    snap.name,
                    snap.guid
                );
                update.landed = Some(snap);
            }
            Err((message, token)) => {
                warn!(job = %cmd.job, %dataset, %message, "receive failed");
                update.state = JobPhase::Failed;
                update.message = message;
                update.resumable = token.is_some();
                update.partial = token.as_deref().and_then(|t| decoded(&dataset, t));
            }
        }
        self.report(update);
    }

    /// Source side: checks the command, holds the snapshot it sends and
    /// streams in the background.
    pub async fn send(self: &Arc<Self>, cmd: SendJob) -> Result<String, Refused> {
        self.plane()?;
        let dataset = DatasetName::parse(&cmd.dataset).map_err(|e| format!("dataset: {e}"))?;
        let addr: SocketAddr = cmd
            .target_addr
            .parse()
            .map_err(|e| format!("target_addr {:?}: {e}", cmd.target_addr))?;
        zdr_common::subject::valid_node_id(&cmd.target_node)?;
        let job = job(&cmd.job, &cmd.token.0)?;
        // Never decrypted on the way out, whatever the task says.
        let encrypted = self.lifecycle.is_encrypted(&dataset);
        let raw = cmd.raw || encrypted;
        let (spec, held) = match &cmd.stream {
            StreamSpec::Full { snapshot } => (
                SendSpec::Full {
                    dataset: dataset.clone(),
                    snapshot: snapshot.clone(),
                    raw,
                },
                Some(snapshot.clone()),
            ),
            StreamSpec::Incremental {
                from,
                to,
                intermediates,
                from_bookmark,
            } => (
                SendSpec::Incremental {
                    dataset: dataset.clone(),
                    from: if *from_bookmark {
                        SendBase::Bookmark(from.clone())
                    } else {
                        SendBase::Snapshot(from.clone())
                    },
                    to: to.clone(),
                    intermediates: *intermediates,
                    raw,
                },
                Some(to.clone()),
            ),
            StreamSpec::Resume { token } => (
                SendSpec::Resume {
                    token: token.clone(),
                },
                None,
            ),
        };
        let lifecycle = self.lifecycle.clone();
        let (ds, tag, stream) = (dataset.clone(), cmd.hold_tag.clone(), cmd.stream.clone());
        // Registered and held on a blocking thread: registering waits while a
        // prune destroys a snapshot, and a hold is a ZFS call.
        let in_flight = tokio::task::spawn_blocking(move || {
            let in_flight = match &stream {
                StreamSpec::Full { snapshot } => {
                    Some(lifecycle.stream_in_flight(&ds, None, snapshot, false))
                }
                StreamSpec::Incremental {
                    from,
                    to,
                    intermediates,
                    ..
                } => Some(lifecycle.stream_in_flight(&ds, Some(from), to, *intermediates)),
                // A token this build cannot read relies on the hold of its
                // `to` taken by the first attempt.
                StreamSpec::Resume { token } => resume_token::decode(token).ok().and_then(|t| {
                    let (_, to) = t.toname.split_once('@')?;
                    Some(lifecycle.resume_in_flight(&ds, to, t.fromguid))
                }),
            };
            // Held too, so pruning cannot take the snapshot while it is sent.
            match &held {
                Some(snap) => match lifecycle.backend.hold(&ds, snap, &tag) {
                    Ok(()) | Err(ZfsError::Exists { .. }) => Ok(in_flight),
                    Err(e) => Err(e),
                },
                None => Ok(in_flight),
            }
        })
        .await
        .map_err(|e| format!("preparing the send panicked: {e}"))?
        .map_err(|e| format!("{dataset}: {e}"))?;
        let rate = RateHandle::new(cmd.bytes_per_sec.and_then(NonZeroU64::new));
        let cancel = self.register(&cmd.job, JobRole::Source, Some(rate.clone()))?;
        let opts = SendOptions {
            compression: if cmd.compress && !raw {
                Compression::Zstd { level: ZSTD_LEVEL }
            } else {
                Compression::None
            },
            rate,
            size_hint: None,
        };
        let me = self.clone();
        tokio::spawn(async move {
            let id = cmd.job.clone();
            me.run_send(cmd, spec, job, addr, opts, cancel).await;
            drop(in_flight);
            me.jobs().remove(&(id, JobRole::Source));
        });
        Ok(format!("sending {dataset} to {addr}"))
    }

    async fn run_send(
        self: &Arc<Self>,
        cmd: SendJob,
        spec: SendSpec,
        job: Job,
        addr: SocketAddr,
        opts: SendOptions,
        cancel: Arc<Notify>,
    ) {
        let plane = self.plane.as_ref().expect("send checked the plane");
        let (progress, mut reporter) = self.reporter(&cmd.job, JobRole::Source);
        // Beside the stream, not before it: `zfs send -nvP` of a long backlog
        // takes a while, and the size only feeds the progress report.
        let backend = self.lifecycle.backend.clone();
        let s = spec.clone();
        let mut estimate = Some(tokio::task::spawn_blocking(move || backend.estimate(&s)));
        let (output, mut source) = match pipe_from_zfs() {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("creating a pipe: {e}");
                self.update(
                    &cmd.job,
                    JobRole::Source,
                    JobPhase::Failed,
                    &Reporter::default(),
                    msg,
                );
                return;
            }
        };
        let backend = self.lifecycle.backend.clone();
        let zfs = tokio::task::spawn_blocking(move || {
            let mut output = output;
            backend.send(&spec, &mut output)
        });
        let transfer = {
            let send = plane.sender.send(
                addr,
                &cmd.target_node,
                &job,
                &mut source,
                &opts,
                Some(&progress),
            );
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    e = async { estimate.as_mut().expect("guarded").await }, if estimate.is_some() => {
                        estimate = None;
                        match e {
                            Ok(Ok(hint)) => progress.send_modify(|p| p.size_hint = hint),
                            Ok(Err(e)) => warn!(job = %cmd.job, error = %e, "no size estimate"),
                            Err(_) => {}
                        }
                    }
                    _ = cancel.notified() => break Err(TransferError::Cancelled),
                }
            }
        };
        drop(source); // a sender still writing gets EPIPE and stops
        let zfs = zfs.await.unwrap_or_else(|e| {
            Err(ZfsError::Invalid {
                what: "send",
                value: cmd.dataset.clone(),
                reason: format!("panicked: {e}"),
            })
        });
        reporter.stop().await;
        let r = reporter.last();
        let (state, message, zfs_failed) = match (transfer, zfs) {
            (Ok(s), Ok(_)) => (
                JobPhase::Done,
                format!(
                    "sent {} bytes ({} on the wire), BLAKE3 {}",
                    s.bytes, s.wire_bytes, s.hash
                ),
                false,
            ),
            (Err(t), Ok(_)) => (JobPhase::Failed, t.to_string(), false),
            // A failed transfer makes zfs send fail on its pipe: the transfer is the cause.
            (Err(t), Err(_)) => (JobPhase::Failed, t.to_string(), false),
            (Ok(_), Err(z)) => (JobPhase::Failed, format!("zfs send: {z}"), true),
        };
        if state == JobPhase::Failed {
            warn!(job = %cmd.job, %message, "send failed");
        } else {
            info!(job = %cmd.job, %message, "sent");
        }
        let mut update = r.job_update(&self.node, &cmd.job, JobRole::Source, state, message);
        update.zfs_failed = zfs_failed;
        self.report(update);
    }

    pub fn set_rate(&self, job: &str, bytes_per_sec: Option<u64>) -> Result<String, Refused> {
        let jobs = self.jobs();
        let rate = jobs
            .get(&(job.to_string(), JobRole::Source))
            .and_then(|r| r.rate.as_ref())
            .ok_or_else(|| format!("no send of job {job} is running on this node"))?;
        rate.set(bytes_per_sec.and_then(NonZeroU64::new));
        Ok(match bytes_per_sec {
            Some(b) => format!("job {job} now limited to {b} bytes/s"),
            None => format!("job {job} now unlimited"),
        })
    }

    pub fn cancel(&self, job: &str) -> Result<String, Refused> {
        let jobs = self.jobs();
        let mut found = false;
        for role in [JobRole::Source, JobRole::Target] {
            if let Some(running) = jobs.get(&(job.to_string(), role)) {
                running.cancel.notify_one();
                found = true;
            }
        }
        match found {
            true => Ok(format!("job {job} cancelled")),
            false => Err(format!("job {job} is not running on this node")),
        }
    }

    /// At shutdown: takes no new job, cancels the running ones (a target keeps
    /// its partial receive for resuming) and waits up to `grace` for them to
    /// end and report.
    pub async fn stop(&self, grace: Duration) {
        let running: Vec<String> = {
            let jobs = self.jobs();
            self.stopping.store(true, Ordering::SeqCst);
            let ids: std::collections::BTreeSet<String> =
                jobs.keys().map(|(id, _)| id.clone()).collect();
            ids.into_iter().collect()
        };
        for id in &running {
            let _ = self.cancel(id);
        }
        let deadline = Instant::now() + grace;
        while !self.jobs().is_empty() {
            if Instant::now() >= deadline {
                warn!(jobs = ?self.jobs().keys().collect::<Vec<_>>(), "jobs still running at shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !running.is_empty() {
            info!(jobs = ?running, "running jobs stopped for shutdown");
        }
    }

    /// Moves the replication hold `tag` to `keep` alone on `dataset`.
    pub async fn release_holds(
        &self,
        dataset: &str,
        tag: &str,
        keep: &str,
    ) -> Result<String, Refused> {
        let released = self.release_tag(dataset, tag, Some(keep)).await?;
        Ok(if released.is_empty() {
            format!("{dataset}@{keep} holds the base; nothing else to release")
        } else {
            format!(
                "{dataset}@{keep} holds the base; released {}",
                released.join(", ")
            )
        })
    }

    /// Puts `tag` on each of `snapshots` of `dataset` (a restore or drill
    /// begins); one already held by `tag` counts as held.
    pub async fn hold(
        &self,
        dataset: &str,
        snapshots: &[String],
        tag: &str,
    ) -> Result<String, Refused> {
        let ds = DatasetName::parse(dataset).map_err(|e| format!("dataset: {e}"))?;
        if tag == FLOOR_HOLD {
            return Err(format!(
                "tag {FLOOR_HOLD} refused: only the retention floor puts its own hold"
            ));
        }
        let backend = self.lifecycle.backend.clone();
        let (tag, snaps) = (tag.to_string(), snapshots.to_vec());
        tokio::task::spawn_blocking(move || {
            for s in &snaps {
                match backend.hold(&ds, s, &tag) {
                    Ok(()) | Err(ZfsError::Exists { .. }) => {}
                    Err(e) => return Err(format!("holding {ds}@{s} with {tag}: {e}")),
                }
            }
            Ok(format!("held {ds}@{{{}}} with {tag}", snaps.join(",")))
        })
        .await
        .unwrap_or_else(|e| Err(format!("holding panicked: {e}")))
    }

    /// Releases `tag` from every snapshot of `dataset` (a restore ended).
    pub async fn drop_holds(&self, dataset: &str, tag: &str) -> Result<String, Refused> {
        let released = self.release_tag(dataset, tag, None).await?;
        Ok(match released.is_empty() {
            true => format!("no snapshot of {dataset} had the hold {tag}"),
            false => format!("released {tag} from {}", released.join(", ")),
        })
    }

    /// Releases `tag` from every snapshot of `dataset` but `keep`, which is
    /// held first; returns the snapshots released.
    async fn release_tag(
        &self,
        dataset: &str,
        tag: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>, Refused> {
        let ds = DatasetName::parse(dataset).map_err(|e| format!("dataset: {e}"))?;
        if tag == FLOOR_HOLD {
            return Err(format!(
                "tag {FLOOR_HOLD} refused: the retention floor releases its own hold once a \
                 snapshot's window has passed; no command releases it"
            ));
        }
        let backend = self.lifecycle.backend.clone();
        let (tag, kept) = (tag.to_string(), keep.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            // The new base is held before any older one is let go.
            if let Some(keep) = &kept {
                match backend.hold(&ds, keep, &tag) {
                    Ok(()) | Err(ZfsError::Exists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut released = Vec::new();
            let snapshots = match backend.list_snapshots(&ds) {
                // A dataset that is gone (a failed restore's destination)
                // holds nothing: the coordinator asks until it hears so.
                Err(ZfsError::NotFound { .. }) if kept.is_none() => return Ok(released),
                other => other?,
            };
            for s in snapshots {
                if Some(&s.name) == kept.as_ref() || s.userrefs == 0 {
                    continue;
                }
                match backend.holds(&ds, &s.name) {
                    Ok(tags) if tags.contains(&tag) => {}
                    // Destroyed since the listing: nothing to release.
                    Ok(_) | Err(ZfsError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
                match backend.release(&ds, &s.name, &tag) {
                    Ok(()) => released.push(s.name),
                    Err(ZfsError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(released)
        })
        .await
        .map_err(|e| format!("releasing holds panicked: {e}"))?
        .map_err(|e| format!("{dataset}: {e}"))
    }

    /// `zfs receive -A` on `dataset` if it has a saved partial receive,
    /// audited before and after. True when one was dropped. The retention
    /// floor allows it always: `-A` removes no snapshot (see [`floor`]).
    async fn abort_audited(
        &self,
        actor: &str,
        dataset: &DatasetName,
        why: &str,
    ) -> Result<bool, Refused> {
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        let pending = tokio::task::spawn_blocking(move || backend.resume_token(&ds))
            .await
            .map_err(|e| format!("reading the resume token panicked: {e}"))?;
        match pending {
            Ok(Some(_)) => {}
            Ok(None) | Err(ZfsError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(format!("reading the resume token of {dataset}: {e}")),
        }
        if !self.audit(actor, "receive -A", dataset.as_str(), why, "intent") {
            return Err("the audit log could not be written; the partial receive stays".into());
        }
        let backend = self.lifecycle.backend.clone();
        let ds = dataset.clone();
        let aborted = tokio::task::spawn_blocking(move || backend.abort_receive(&ds))
            .await
            .map_err(|e| format!("zfs receive -A panicked: {e}"))?;
        let outcome = match &aborted {
            Ok(()) => "done".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        self.audit(actor, "receive -A", dataset.as_str(), why, &outcome);
        aborted
            .map(|()| true)
            .map_err(|e| format!("zfs receive -A on {dataset}: {e}"))
    }

    /// False when the record could not be written.
    fn audit(&self, actor: &str, action: &str, target: &str, why: &str, outcome: &str) -> bool {
        let record = Record {
            at: now(),
            actor,
            action,
            target,
            why,
            outcome,
            policy_revision: self.lifecycle.policy().map(|p| p.bundle.revision),
            created: None,
        };
        match self.lifecycle.audit.write(&record) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "audit log write failed");
                false
            }
        }
    }

    /// A progress channel and the task that reports it every second.
    fn reporter(
        self: &Arc<Self>,
        job: &str,
        role: JobRole,
    ) -> (watch::Sender<Progress>, Reporting) {
        let (tx, mut rx) = watch::channel(Progress::default());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let me = self.clone();
        let job = job.to_string();
        let task = tokio::spawn(async move {
            let mut r = Reporter::default();
            let mut last = (Instant::now(), 0u64);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => {}
                }
                let p = *rx.borrow_and_update();
                let elapsed = last.0.elapsed().as_secs_f64();
                if elapsed > 0.0 && p.bytes >= last.1 {
                    r.rate = ((p.bytes - last.1) as f64 / elapsed) as u64;
                }
                last = (Instant::now(), p.bytes);
                r.bytes = p.bytes;
                r.size_hint = p.size_hint;
                if *stop_rx.borrow() {
                    return r;
                }
                me.update(&job, role, JobPhase::Running, &r, String::new());
            }
        });
        (
            tx,
            Reporting {
                stop: stop_tx,
                task: Some(task),
                last: Reporter::default(),
            },
        )
    }
}

/// How a receive runs, as `receive` found it.
struct How {
    actor: String,
    /// A saved partial receive is being finished.
    resuming: bool,
    /// `-F`, with the audit log's reason: what it destroys on this node.
    why_force: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Reporter {
    bytes: u64,
    size_hint: Option<u64>,
    rate: u64,
}

impl Reporter {
    /// A report of one end of `job` at this progress; the outcome's details
    /// (what landed, the partial receive, the manifest, the cause) are the
    /// caller's to add.
    fn job_update(
        self,
        node: &str,
        job: &str,
        role: JobRole,
        state: JobPhase,
        message: String,
    ) -> JobUpdate {
        JobUpdate {
            node: node.to_string(),
            job: job.to_string(),
            role,
            state,
            at_ms: chrono::Utc::now().timestamp_millis(),
            bytes: self.bytes,
            size_hint: self.size_hint,
            bytes_per_sec: self.rate,
            message,
            landed: None,
            resumable: false,
            partial: None,
            uploaded: None,
            zfs_failed: false,
        }
    }
}

struct Reporting {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Reporter>>,
    last: Reporter,
}

impl Reporting {
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            self.last = task.await.unwrap_or_default();
        }
    }

    fn last(&self) -> Reporter {
        self.last
    }
}

/// What a saved partial receive holds, from its resume token; `None` for a
/// token this build cannot read (a newer OpenZFS token version, say).
fn decoded(dataset: &DatasetName, token: &str) -> Option<PartialReceive> {
    match resume_token::decode(token) {
        Ok(t) => Some(t.partial()),
        Err(e) => {
            info!(%dataset, error = %e, "resume token not decoded; the partial receive is offered undescribed");
            None
        }
    }
}

fn job(id: &str, token: &str) -> Result<Job, Refused> {
    let token: JobToken = token.parse().map_err(|e| format!("token: {e}"))?;
    Job::new(id, token).map_err(|e| e.to_string())
}

/// The snapshot the receive had to land, checked by GUID, then held; and
/// the dataset's listing, which the inventory takes as it is.
fn landed(
    backend: &dyn crate::zfs::Backend,
    dataset: &DatasetName,
    expect: &SnapshotRef,
    tag: &str,
) -> Result<(SnapshotRef, Vec<SnapshotInfo>), String> {
    let mut snaps = backend
        .list_snapshots(dataset)
        .map_err(|e| format!("listing {dataset} after the receive: {e}"))?;
    let at = match snaps.iter().position(|s| s.name == expect.name) {
        Some(i) if snaps[i].guid != expect.guid => {
            return Err(format!(
                "{dataset}@{} has GUID {} after the receive, but the source's has {}",
                expect.name, snaps[i].guid, expect.guid
            ))
        }
        Some(i) => i,
        // A resumed stream may have finished an earlier step instead.
        None => snaps
            .len()
            .checked_sub(1)
            .ok_or_else(|| format!("{dataset} has no snapshot after the receive"))?,
    };
    let got = &mut snaps[at];
    match backend.hold(dataset, &got.name, tag) {
        Ok(()) => got.userrefs += 1,
        Err(ZfsError::Exists { .. }) => {}
        Err(e) => return Err(format!("holding {dataset}@{}: {e}", got.name)),
    }
    let landed = SnapshotRef {
        name: got.name.clone(),
        guid: got.guid,
    };
    Ok((landed, snaps))
}

/// An OS pipe that we write and `zfs receive` reads.
fn pipe_to_zfs() -> std::io::Result<(tokio::net::unix::pipe::Sender, File)> {
    let (tx, rx) = tokio::net::unix::pipe::pipe()?;
    Ok((tx, File::from(rx.into_blocking_fd()?)))
}

/// An OS pipe that `zfs send` writes and we read.
fn pipe_from_zfs() -> std::io::Result<(File, tokio::net::unix::pipe::Receiver)> {
    let (tx, rx) = tokio::net::unix::pipe::pipe()?;
    Ok((File::from(tx.into_blocking_fd()?), rx))
}
