//! A job's record and its transitions. Pure: the time comes in as `now_ms`,
//! and what the shell must do next comes out as [`Effect`]s; nothing here
//! sends, persists or reads a clock.
//!
//! A record goes `Planned → Running → Done`, or `→ Failed` (retried after a
//! backoff: 2 s, doubling, 5 min at most) or `Blocked` (needs a human). A
//! step the target's retention floor refused (the reply's typed
//! `effects.floor_refused`, never its wording) blocks the record: the same
//! step is not tried again while the floor keeps those snapshots. Each
//! step of the plan is attempted until it lands; an attempt is known to both
//! agents by its `attempt_id`. A failed attempt's id is kept so that the
//! other end's later word on it (often the cause) still reaches the history.

use serde::{Deserialize, Serialize};
use zdr_common::wire::{
    CheckLevel, FloorOperation, FloorRefusal, JobPhase, JobRole, JobUpdate, ManifestRef,
    PartialReceive, SnapshotInfo, SnapshotRef, StreamSpec, UploadLock,
};

use super::{drill_production_tag, restore_tag};
use crate::pairing::Pairing;

/// The first retry waits this long; every further one twice as long.
pub const BACKOFF_FIRST_MS: i64 = 2_000;
pub const BACKOFF_MAX_MS: i64 = 300_000;
/// A running attempt with no word from either end for this long has failed.
pub const STALL_MS: i64 = 30_000;
/// Lines of history kept per job.
const HISTORY: usize = 30;
/// After a job, the next plan waits this long at most for the target's
/// inventory to show what landed; planning from an older one sends it again.
pub const LANDED_WAIT_MS: i64 = 60_000;
/// Progress is written to KV at most this often.
const PERSIST_PROGRESS_MS: i64 = 5_000;
/// Attempts of a restore step before the restore fails for good: unlike a
/// replication, nothing plans it again later.
pub const RESTORE_ATTEMPTS: u32 = 3;

/// What a job does. Every kind runs on the same record, schedule, retries
/// and persistence; a kind brings its planner and how an attempt starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Keep a copy of a source dataset on a target node current.
    #[default]
    Replication,
    /// Copy a snapshot of a protected dataset from one of its copies to a
    /// dataset named by an operator, once.
    Restore,
    /// A restore into drill scratch (`<pool>/zdr-drill/<job>`), then its
    /// content compared with production's same snapshot, then the scratch
    /// destroyed (`crate::drills`).
    Drill,
    /// `zfs send` of a source dataset into a bucket, by its source agent
    /// alone (`crate::offsite`); the target end is the bucket.
    Upload,
}

/// What an upload record holds beyond the shared fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The manifests this dataset's uploads committed, oldest first: the
    /// current chain and the one before (`crate::offsite::commit`).
    pub committed: Vec<ManifestRef>,
    /// The manifest the current upload continues.
    pub parent: Option<ManifestRef>,
    pub raw: bool,
    /// The source dataset is encrypted: its uploads carry ciphertext, and a
    /// restore from them lands it locked (a raw send of a plain dataset is
    /// not encrypted).
    #[serde(default)]
    pub encrypted: bool,
    pub lock: Option<UploadLock>,
    /// The last re-read of this dataset's streams in the bucket
    /// (`crate::bucket_verify`), carried from record to record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
}

/// How a bucket verification ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// When it ended, Unix milliseconds.
    pub at_ms: i64,
    /// Every manifest and segment read back as written.
    pub ok: bool,
    /// What was wrong, or why it could not run.
    pub summary: String,
    /// What the agent read; `None` when it could not run.
    pub check: Option<zdr_common::wire::BucketCheck>,
}

/// What a drill record holds beyond its restore part (whose target is the
/// scratch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillInfo {
    pub class: String,
    /// The class's scheduled drill this is part of; `None` when run by hand.
    pub number: Option<u64>,
    /// The class's RTO when the drill started.
    pub rto_secs: u64,
    /// Milliseconds spent planning.
    pub plan_ms: u64,
    /// The check after the restore is under way (not persisted: a new
    /// leader checks again).
    #[serde(skip)]
    pub verifying: bool,
    /// The content check's result, persisted before the scratch is
    /// destroyed: a new leader taking over then only cleans up (hashing the
    /// destroyed scratch again would fail a drill that passed).
    #[serde(default)]
    pub checked: Option<DrillResult>,
    /// Set once the drill ended, passed or not.
    pub result: Option<DrillResult>,
}

/// How a drill ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillResult {
    pub passed: bool,
    /// How deep the content check went; `None` when it never ran.
    pub level: Option<CheckLevel>,
    /// Why it failed.
    pub why: Option<String>,
    pub production_digest: Option<String>,
    pub restored_digest: Option<String>,
    /// Phase times, milliseconds.
    pub transfer_ms: u64,
    pub mount_ms: u64,
    pub hash_ms: u64,
    pub cleanup_ms: u64,
    /// Start to verified data, milliseconds; `None` unless verified.
    pub rto_ms: Option<u64>,
    /// The measured RTO is within the class's RTO.
    pub within_rto: bool,
    /// The scratch was destroyed.
    pub cleaned: bool,
    /// Unix seconds.
    pub ended_at: i64,
}

/// The snapshot a restore brings back, as chosen from the copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSnapshot {
    pub name: String,
    pub guid: u64,
    /// Unix seconds.
    pub creation: i64,
}

/// What a restore record holds beyond the shared fields (whose source is
/// the copy restored from, whose target is the destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The protected dataset, as the request named it.
    pub node: String,
    pub dataset: String,
    pub snapshot: RestoreSnapshot,
    /// The copy is raw-encrypted: the restored dataset needs its key loaded.
    pub raw: bool,
    pub replace: bool,
    /// Stream bytes of the steps that landed.
    pub landed_bytes: u64,
    /// The GUID the target listed for the chosen snapshot after the last step.
    pub landed_guid: Option<u64>,
    /// Every hold of [`JobRecord::releases`] was released, as the agents
    /// confirmed, after the job ended (done or failed).
    pub holds_released: bool,
    /// When the next try to release them is due: a node that is down or
    /// restarting misses one, and a hold left behind keeps its snapshot
    /// for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_at_ms: Option<i64>,
    /// Every hold of [`JobRecord::takes`] was taken, as the agents
    /// confirmed. Until then the tick asks again while the job runs: the
    /// first ask misses a node that is restarting, or dies with the leader.
    #[serde(default)]
    pub holds_taken: bool,
    /// When the next try to take them is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_at_ms: Option<i64>,
}

/// How long after a try to take a running job's holds, or to release an
/// ended job's, the next one runs, until every node confirmed.
pub const RELEASE_RETRY_MS: i64 = 30_000;

/// A drill whose holds are still not confirmed this long after it was
/// committed fails without sending anything: production or the copy's node
/// is down for longer than a restart, and a drill must not hang.
pub const DRILL_HOLD_WAIT_MS: i64 = 5 * 60_000;

/// A bucket (`bucket:<task>`, a restore's source in object storage) holds
/// nothing: no hold is taken or released there.
fn in_bucket(node: &str) -> bool {
    crate::restore::points::bucket_task(node).is_some()
}

/// A hold a restore or drill takes as it begins: `tag` on `snapshots` of
/// `node:dataset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub node: String,
    pub dataset: String,
    pub snapshots: Vec<String>,
    pub tag: String,
}

/// A hold an ended restore or drill must release: `tag` on `node:dataset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub node: String,
    pub dataset: String,
    pub tag: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Commands are on their way to the two agents.
    Planned,
    Running,
    Done,
    /// The last attempt failed; another follows at `next_attempt_at_ms`.
    Failed,
    /// Needs a human: a diverged target, no common snapshot, or a step the
    /// target's retention floor refused.
    Blocked,
}

/// One `zfs send | zfs receive` of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub stream: StreamSpec,
    /// The snapshot the step lands, with the source's GUID.
    pub expect: SnapshotRef,
    /// `zfs receive -F`, discarding these target snapshots.
    pub force: bool,
    pub discards: Vec<String>,
    /// The common snapshot (or bookmark) the stream starts from, by GUID.
    #[serde(default)]
    pub base: Option<SnapshotRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub id: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    #[serde(default)]
    pub kind: JobKind,
    pub task: String,
    pub source_node: String,
    pub dataset: String,
    pub target_node: String,
    pub target_dataset: String,
    pub state: JobState,
    pub steps: Vec<PlannedStep>,
    /// Index into `steps` of the step under way.
    pub step: usize,
    /// Attempts of the current step so far.
    pub attempt: u32,
    /// The id both agents know the current attempt by.
    pub attempt_id: String,
    /// The current attempt continues a saved partial receive (`send -t`).
    pub resumed: bool,
    /// The next attempt drops the target's partial receive (`receive -A`).
    pub discard_partial: bool,
    /// What the target's saved partial receive holds, as it last said.
    #[serde(default)]
    pub partial: Option<PartialReceive>,
    pub bytes: u64,
    pub size_hint: Option<u64>,
    pub bytes_per_sec: u64,
    pub eta_secs: Option<u64>,
    /// The throttle given to the source; `None` is unlimited.
    pub rate_limit: Option<u64>,
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub next_attempt_at_ms: Option<i64>,
    /// When the pairing last was up to date (a job finished, or nothing to send).
    pub last_success_ms: Option<i64>,
    /// The hold is being moved to this snapshot; no new job starts until then.
    #[serde(default)]
    pub moving_holds_to: Option<String>,
    /// The last attempt that failed, so that its other end's later report
    /// is still kept (it may come after the retry started).
    #[serde(default)]
    pub failed_attempt: Option<FailedAttempt>,
    pub history: Vec<String>,
    /// What the target's retention floor refused of this pairing's steps,
    /// kept while a snapshot it named is inside its window: a plan that
    /// would remove one of them is blocked, not sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floor_refused: Vec<FloorRefusal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadInfo>,
    /// When this record was last written to KV (not itself persisted).
    #[serde(skip)]
    pub persisted_at_ms: i64,
    /// An `Effect::TakeHolds` of this leader is under way (not persisted:
    /// a new leader's predecessor's died with it). The release waits for
    /// it: a hold that lands after the release stays for good (seen in the
    /// VM-lane trials, when the ask waited out a restarting node).
    #[serde(skip)]
    pub taking_holds: bool,
}

/// What the shell does after a transition, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the record to KV.
    Persist,
    /// Start the next attempt of the current step.
    Start,
    /// Cancel an attempt on these nodes (best effort: it may be over there).
    Cancel { nodes: Vec<String>, attempt: String },
    /// Move the pairing's holds to `keep` on both sides, then apply the
    /// task's retention to the copy; no new job starts until that is done.
    MoveHolds { keep: String },
    /// Hold what a running restore or drill reads ([`JobRecord::takes`]).
    TakeHolds,
    /// Release an ended restore's holds on its copy and its destination.
    DropHolds,
    /// A drill's restore ended: check the content, destroy the scratch,
    /// record the result.
    Verify,
}

/// How a new leader treats an attempt its predecessor left running, from
/// what the two agents say of it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Both ends still work on it: keep it, under this leader.
    Adopt,
    /// One end or both are gone: cancel what is left and retry (the target's
    /// partial receive makes the retry resume, not start over).
    Retry { cancel: Vec<JobRole> },
}

pub fn backoff_ms(attempt: u32) -> i64 {
    let shift = attempt.saturating_sub(1).min(20);
    (BACKOFF_FIRST_MS << shift).min(BACKOFF_MAX_MS)
}

fn side(role: JobRole) -> &'static str {
    match role {
        JobRole::Source => "source",
        JobRole::Target => "target",
    }
}

fn level_name(level: Option<CheckLevel>) -> &'static str {
    match level {
        Some(CheckLevel::FilesHashed) => "files hashed",
        Some(CheckLevel::BlocksRead) => "blocks read back",
        None => "not checked",
    }
}

fn clock(now_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

pub fn describe(steps: &[PlannedStep]) -> String {
    steps
        .iter()
        .map(|s| {
            let f = if s.force { " with -F" } else { "" };
            match &s.stream {
                StreamSpec::Full { snapshot } => format!("full @{snapshot}{f}"),
                StreamSpec::Incremental {
                    from,
                    to,
                    intermediates,
                    from_bookmark,
                } => format!(
                    "{} {}{from} @{to}{f}",
                    if *intermediates { "-I" } else { "-i" },
                    if *from_bookmark { "#" } else { "@" }
                ),
                StreamSpec::Resume { .. } => "resume".into(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The refusals' snapshots still inside their window at `now_ms`.
fn still_kept(refusals: &[FloorRefusal], now_ms: i64) -> Vec<FloorRefusal> {
    refusals
        .iter()
        .filter_map(|r| {
            let snapshots: Vec<_> = r
                .snapshots
                .iter()
                .filter(|h| h.until.saturating_mul(1000) > now_ms)
                .cloned()
                .collect();
            (!snapshots.is_empty()).then(|| FloorRefusal {
                snapshots,
                ..r.clone()
            })
        })
        .collect()
}

/// The reason a job shows for what `node`'s retention floor refused, from
/// the typed refusals.
pub fn floor_reason(node: &str, refusals: &[FloorRefusal]) -> String {
    let parts: Vec<String> = refusals
        .iter()
        .map(|r| {
            let op = match r.operation {
                FloorOperation::Destroy => "destroy",
                FloorOperation::ReceiveForce => "receive -F (rollback)",
                FloorOperation::ReleaseHold => "releasing the floor's hold",
            };
            let hits: Vec<String> = r
                .snapshots
                .iter()
                .map(|h| {
                    let window = u64::try_from(h.until.saturating_sub(h.creation)).unwrap_or(0);
                    format!(
                        "@{} is inside its {} immutability window until {}",
                        h.name,
                        zdr_common::duration::Duration::from_secs(window),
                        chrono::DateTime::from_timestamp(h.until, 0)
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_else(|| h.until.to_string())
                    )
                })
                .collect();
            format!("{op} of {}: {}", r.dataset, hits.join(", "))
        })
        .collect();
    format!("target {node} refused: {} (floor)", parts.join("; "))
}

/// The copy's snapshots that `steps` send in full or send up to: the ones
/// retention must not take before each step's `zfs send` holds them.
pub fn read_snapshots(steps: &[PlannedStep]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for s in steps {
        let (a, b) = match &s.stream {
            StreamSpec::Full { snapshot } => (Some(snapshot), None),
            StreamSpec::Incremental {
                from,
                to,
                from_bookmark,
                ..
            } => ((!from_bookmark).then_some(from), Some(to)),
            StreamSpec::Resume { .. } => (None, None),
        };
        for n in a.into_iter().chain(b) {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
}

/// Whether a source that failed `attempt` while resuming a saved partial
/// receive makes the next attempt drop it and start over. Yes when `zfs send`
/// itself failed on the token; a broken transfer alone (the target or the
/// network went away, the source restarted) keeps it, except that a resume
/// still failing by the third attempt is dropped too: a token zfs cannot use
/// can also surface as a broken transfer, and must not be retried forever.
/// A job with `attempts` in all (a restore's) drops it before its last one,
/// which then starts the step afresh instead of repeating the resume (seen
/// on real OpenZFS in the kill -9 trials: a restore resumed twice, failed
/// twice, and gave up).
pub fn drops_resume(zfs_failed: bool, attempt: u32, attempts: Option<u32>) -> bool {
    zfs_failed || attempt >= 3 || attempts.is_some_and(|n| attempt + 1 >= n)
}

impl JobRecord {
    pub fn new(
        kind: JobKind,
        pairing: &Pairing,
        instance: &str,
        seq: u64,
        steps: Vec<PlannedStep>,
        now_ms: i64,
    ) -> JobRecord {
        JobRecord {
            id: format!("{instance}-{now_ms}-{seq}"),
            kind,
            task: pairing.task.clone(),
            source_node: pairing.source_node.clone(),
            dataset: pairing.dataset.clone(),
            target_node: pairing.target_node.clone(),
            target_dataset: pairing.target_dataset.clone(),
            state: JobState::Planned,
            steps,
            step: 0,
            attempt: 0,
            attempt_id: String::new(),
            resumed: false,
            discard_partial: false,
            partial: None,
            bytes: 0,
            size_hint: None,
            bytes_per_sec: 0,
            eta_secs: None,
            rate_limit: None,
            error: None,
            started_at_ms: now_ms,
            updated_at_ms: now_ms,
            finished_at_ms: None,
            next_attempt_at_ms: None,
            last_success_ms: None,
            moving_holds_to: None,
            failed_attempt: None,
            history: Vec::new(),
            floor_refused: Vec::new(),
            restore: None,
            drill: None,
            upload: None,
            persisted_at_ms: 0,
            taking_holds: false,
        }
    }

    /// Appends a line to the history (and the log).
    pub fn log(&mut self, line: String, now_ms: i64) {
        tracing::info!(job = %self.id, task = %self.task, dataset = %self.dataset, target = %self.target_node, "{line}");
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(format!("{} {line}", clock(now_ms)));
    }

    /// The nodes of the job: an upload's other end is a bucket, and so is
    /// the copy of a restore from a bucket.
    pub fn nodes(&self) -> Vec<String> {
        match self.kind {
            JobKind::Upload => vec![self.source_node.clone()],
            _ if self.from_bucket().is_some() => vec![self.target_node.clone()],
            _ => vec![self.source_node.clone(), self.target_node.clone()],
        }
    }

    /// The bucket task a restore reads from, when its copy is a bucket.
    pub fn from_bucket(&self) -> Option<&str> {
        crate::restore::points::bucket_task(&self.source_node)
    }

    pub fn active(&self) -> bool {
        matches!(self.state, JobState::Planned | JobState::Running)
    }

    fn persist(&mut self, now_ms: i64) -> Effect {
        self.persisted_at_ms = now_ms;
        Effect::Persist
    }

    /// The node an update's role must come from.
    pub fn node_of(&self, role: JobRole) -> &str {
        match role {
            JobRole::Source => &self.source_node,
            JobRole::Target => &self.target_node,
        }
    }

    /// Whether `attempt` is the current attempt or the last failed one.
    pub fn knows_attempt(&self, attempt: &str) -> bool {
        self.attempt_id == attempt
            || self
                .failed_attempt
                .as_ref()
                .is_some_and(|f| f.id == attempt)
    }

    pub fn fail_attempt(&mut self, why: String, discard_partial: bool, now_ms: i64) {
        let wait = backoff_ms(self.attempt);
        self.failed_attempt = Some(FailedAttempt {
            id: self.attempt_id.clone(),
            attempt: self.attempt,
        });
        self.state = JobState::Failed;
        self.error = Some(why.clone());
        self.discard_partial = discard_partial;
        self.updated_at_ms = now_ms;
        if self.restore.is_some() && self.attempt >= RESTORE_ATTEMPTS {
            self.next_attempt_at_ms = None;
            self.log(
                format!(
                    "attempt {} failed: {why}; the restore failed after {} attempts",
                    self.attempt, self.attempt
                ),
                now_ms,
            );
            return;
        }
        self.next_attempt_at_ms = Some(now_ms + wait);
        self.log(
            format!(
                "attempt {} failed after {} bytes: {why}; retrying in {} s",
                self.attempt,
                self.bytes,
                wait / 1000
            ),
            now_ms,
        );
    }

    /// The tick's check: an active attempt with no word from either end for
    /// `STALL_MS` has failed, and is cancelled on both agents.
    pub fn check_stall(&mut self, now_ms: i64) -> Vec<Effect> {
        if !self.active() || now_ms - self.updated_at_ms <= STALL_MS {
            return Vec::new();
        }
        let cancel = Effect::Cancel {
            nodes: self.nodes(),
            attempt: self.attempt_id.clone(),
        };
        let why = format!("no word from either agent for {} s", STALL_MS / 1000);
        self.fail_attempt(why, false, now_ms);
        vec![self.persist(now_ms), cancel]
    }

    /// `node`'s agent said hello from a process started at `agent_started_ms`
    /// (its clock) and, asked, does not know this attempt: if that process
    /// started after the attempt did, the attempt died with the one before
    /// (kill -9, a crash, a reboot). It fails now, instead of waiting out
    /// the stall time (`STALL_MS`), and both ends are told to cancel it: the other end
    /// still runs it, and a start command still in flight to the restarted
    /// one must not begin a stream nobody follows.
    pub fn lost_with_restart(
        &mut self,
        attempt: &str,
        node: &str,
        agent_started_ms: i64,
        now_ms: i64,
    ) -> Vec<Effect> {
        if self.attempt_id != attempt || !self.active() || agent_started_ms <= self.started_at_ms {
            return Vec::new();
        }
        let why = format!(
            "the agent on {node} restarted during the attempt and does not know it; the attempt \
             died with the previous process"
        );
        let cancel = Effect::Cancel {
            nodes: self.nodes(),
            attempt: attempt.to_string(),
        };
        self.fail_attempt(why, false, now_ms);
        vec![self.persist(now_ms), cancel]
    }

    /// Whether a new run is due: a retry after its backoff, else `every_ms`
    /// after the last success (or start). Active records and records whose
    /// holds are moving are never due.
    pub fn due(&self, every_ms: i64, now_ms: i64) -> bool {
        if self.active() || self.moving_holds_to.is_some() {
            return false;
        }
        match self.state {
            JobState::Failed => self.next_attempt_at_ms.is_none_or(|at| now_ms >= at),
            _ => self
                .last_success_ms
                .max(Some(self.started_at_ms))
                .is_none_or(|last| now_ms - last >= every_ms),
        }
    }

    /// Whether the target's inventory does not show the snapshot the last job
    /// landed yet (for a while after it).
    pub fn awaiting_landed_inventory(&self, target: &[SnapshotInfo], now_ms: i64) -> bool {
        let (JobState::Done, Some(done), Some(last)) =
            (self.state, self.finished_at_ms, self.steps.last())
        else {
            return false;
        };
        now_ms - done < LANDED_WAIT_MS && !target.iter().any(|s| s.guid == last.expect.guid)
    }

    /// A new plan for a pairing that had `previous`: a retry carries the
    /// attempt count, the partial-receive state and the history on.
    pub fn continue_from(mut self, previous: Option<&JobRecord>, now_ms: i64) -> JobRecord {
        if let Some(prev) = previous {
            if prev.state == JobState::Failed {
                self.attempt = prev.attempt;
                self.discard_partial = prev.discard_partial;
                self.partial = prev.partial.clone();
                self.failed_attempt = prev.failed_attempt.clone();
            }
            self.history = prev.history.clone();
            self.last_success_ms = prev.last_success_ms;
            self.floor_refused = still_kept(&prev.floor_refused, now_ms);
        }
        self.attempt += 1;
        self.log(
            format!(
                "planned {} step(s): {}",
                self.steps.len(),
                describe(&self.steps)
            ),
            now_ms,
        );
        self
    }

    /// The source has nothing the target lacks.
    pub fn up_to_date(&mut self, now_ms: i64) -> Vec<Effect> {
        self.last_success_ms = Some(now_ms);
        if self.state != JobState::Done {
            self.state = JobState::Done;
            self.error = None;
            self.log("up to date".into(), now_ms);
        }
        vec![self.persist(now_ms)]
    }

    /// The plan needs a human: the record says why, keeps its history (the
    /// same reason again adds no line).
    pub fn block(mut self, previous: Option<&JobRecord>, why: String, now_ms: i64) -> JobRecord {
        self.state = JobState::Blocked;
        self.error = Some(why.clone());
        let mut again = false;
        if let Some(prev) = previous {
            self.last_success_ms = prev.last_success_ms;
            self.history = prev.history.clone();
            self.floor_refused = still_kept(&prev.floor_refused, now_ms);
            again = prev.state == JobState::Blocked && prev.error.as_deref() == Some(&why);
        }
        if !again {
            self.log(format!("blocked: {why}"), now_ms);
        }
        self.persisted_at_ms = now_ms;
        self
    }

    /// The target's retention floor refused the current attempt's step: a
    /// permanent failure for that step. The record is blocked with the
    /// reason, and no plan that removes those snapshots is sent again
    /// until they leave their window ([`JobRecord::floor_keeps`]).
    pub fn floor_refused(
        &mut self,
        attempt: &str,
        refusals: Vec<FloorRefusal>,
        now_ms: i64,
    ) -> Vec<Effect> {
        if self.attempt_id != attempt || !self.active() || refusals.is_empty() {
            return Vec::new();
        }
        let why = floor_reason(&self.target_node, &refusals);
        self.failed_attempt = Some(FailedAttempt {
            id: self.attempt_id.clone(),
            attempt: self.attempt,
        });
        self.state = JobState::Blocked;
        self.error = Some(why.clone());
        self.next_attempt_at_ms = None;
        self.updated_at_ms = now_ms;
        self.floor_refused = refusals;
        self.log(
            format!(
                "attempt {} refused for good: {why}; not tried again while the floor keeps them",
                self.attempt
            ),
            now_ms,
        );
        vec![self.persist(now_ms)]
    }

    /// Why `steps` must not start: one of them removes a snapshot on the
    /// target that its retention floor refused to let go and still keeps.
    pub fn floor_keeps(&self, steps: &[PlannedStep], now_ms: i64) -> Option<String> {
        let kept = still_kept(&self.floor_refused, now_ms);
        let removes = |r: &FloorRefusal| {
            r.dataset == self.target_dataset
                && r.snapshots.iter().any(|h| {
                    steps
                        .iter()
                        .any(|s| s.force && s.discards.contains(&h.name))
                })
        };
        kept.iter()
            .any(removes)
            .then(|| floor_reason(&self.target_node, &kept))
    }

    /// The id of the attempt about to start.
    pub fn begin_attempt(&mut self, now_ms: i64) -> String {
        self.attempt_id = format!("{}-s{}-a{}", self.id, self.step, self.attempt);
        // Progress is the attempt's own: a failure before its first report
        // must not count the previous attempt's bytes.
        self.bytes = 0;
        self.bytes_per_sec = 0;
        self.eta_secs = None;
        self.updated_at_ms = now_ms;
        self.attempt_id.clone()
    }

    /// Both agents took their commands.
    pub fn attempt_running(
        &mut self,
        attempt: &str,
        resumed: bool,
        rate: Option<u64>,
        line: String,
        now_ms: i64,
    ) -> Vec<Effect> {
        // Progress may have arrived before the source's reply: the attempt
        // may be Running already; a failure may have ended it.
        if self.attempt_id != attempt || !self.active() {
            return Vec::new();
        }
        self.state = JobState::Running;
        self.resumed = resumed;
        self.discard_partial = false;
        self.partial = None;
        self.rate_limit = rate;
        self.updated_at_ms = now_ms;
        self.log(line, now_ms);
        vec![self.persist(now_ms)]
    }

    /// An attempt that could not start (a command refused or unanswered).
    pub fn attempt_failed(
        &mut self,
        attempt: &str,
        why: String,
        discard: bool,
        now_ms: i64,
    ) -> Vec<Effect> {
        if self.attempt_id != attempt || !self.active() {
            return Vec::new();
        }
        self.fail_attempt(why, discard, now_ms);
        vec![self.persist(now_ms)]
    }

    /// Applies one agent's report. The caller checked that the update's node
    /// is [`JobRecord::node_of`] its role and that the record knows its attempt.
    pub fn apply(&mut self, update: &JobUpdate, now_ms: i64) -> Vec<Effect> {
        if self.attempt_id != update.job || !self.active() {
            return self.late_report(update, now_ms);
        }
        self.updated_at_ms = now_ms;
        self.state = JobState::Running;
        if update.role == JobRole::Source || update.state != JobPhase::Running {
            self.bytes = update.bytes;
            self.size_hint = update.size_hint.or(self.size_hint);
            self.bytes_per_sec = update.bytes_per_sec;
            self.eta_secs = match (self.size_hint, update.bytes_per_sec) {
                (Some(size), rate) if rate > 0 => Some(size.saturating_sub(update.bytes) / rate),
                _ => None,
            };
        }
        match (update.role, update.state) {
            (_, JobPhase::Running) => {
                if now_ms - self.persisted_at_ms < PERSIST_PROGRESS_MS {
                    return Vec::new();
                }
                vec![self.persist(now_ms)]
            }
            (JobRole::Source, JobPhase::Done) if self.kind == JobKind::Upload => {
                self.uploaded(update, now_ms)
            }
            (JobRole::Source, JobPhase::Done) => {
                self.log(format!("source: {}", update.message), now_ms);
                vec![self.persist(now_ms)]
            }
            (JobRole::Source, JobPhase::Failed) if self.kind == JobKind::Upload => {
                let why = format!("source {}: {}", update.node, update.message);
                self.fail_attempt(why, false, now_ms);
                vec![self.persist(now_ms)]
            }
            (role, JobPhase::Failed) => {
                let discard = role == JobRole::Source
                    && self.resumed
                    && drops_resume(update.zfs_failed, self.attempt, self.attempts());
                let other = match role {
                    JobRole::Source => self.target_node.clone(),
                    JobRole::Target => self.source_node.clone(),
                };
                if role == JobRole::Target {
                    self.partial = update.partial.clone();
                }
                let cancel = Effect::Cancel {
                    nodes: vec![other],
                    attempt: self.attempt_id.clone(),
                };
                let why = format!("{} {}: {}", side(role), update.node, update.message);
                self.fail_attempt(why, discard, now_ms);
                if self.from_bucket().is_some() {
                    return vec![self.persist(now_ms)];
                }
                vec![self.persist(now_ms), cancel]
            }
            (JobRole::Target, JobPhase::Done) => {
                self.landed(update.landed.as_ref(), &update.message, now_ms)
            }
        }
    }

    /// The source says its upload committed a manifest: done only if it is
    /// the stream planned (by GUID, on the planned parent).
    fn uploaded(&mut self, update: &JobUpdate, now_ms: i64) -> Vec<Effect> {
        let step = self.steps[self.step].clone();
        self.log(format!("source: {}", update.message), now_ms);
        if self.upload.is_none() {
            return Vec::new();
        }
        let m = match &update.uploaded {
            Some(m) => m.clone(),
            None => {
                let why = "the source reported an upload without its manifest".into();
                self.fail_attempt(why, false, now_ms);
                return vec![self.persist(now_ms)];
            }
        };
        let want_from = step.base.as_ref().map(|b| b.guid);
        let want_parent = self
            .upload
            .as_ref()
            .and_then(|u| u.parent.as_ref())
            .map(|p| p.hash.clone());
        if m.to_guid != step.expect.guid || m.from_guid != want_from {
            let why = format!(
                "the upload's manifest lands GUID {} from {:?}, the plan was {} from {want_from:?}; not continued from",
                m.to_guid, m.from_guid, step.expect.guid
            );
            self.fail_attempt(why, false, now_ms);
            return vec![self.persist(now_ms)];
        }
        let line =
            format!(
            "done: {}@{} (GUID {}) is in {} as {} stream {} ({} bytes, {} segments{}{}) in {:.1} s",
            self.dataset,
            step.expect.name,
            m.to_guid,
            self.target_dataset,
            if m.from_guid.is_some() { "incremental" } else { "full" },
            m.stream,
            m.stream_bytes,
            m.segments,
            want_parent
                .map(|p| format!(", parent manifest {p}"))
                .unwrap_or_default(),
            if m.retain_until > 0 {
                format!(", locked until {}", m.retain_until)
            } else {
                String::new()
            },
            (now_ms - self.started_at_ms) as f64 / 1000.0
        );
        if let Some(info) = self.upload.as_mut() {
            crate::offsite::commit(&mut info.committed, m);
        }
        self.step += 1;
        self.state = JobState::Done;
        self.error = None;
        self.finished_at_ms = Some(now_ms);
        self.last_success_ms = Some(now_ms);
        self.eta_secs = Some(0);
        self.log(line, now_ms);
        self.moving_holds_to = Some(step.expect.name.clone());
        vec![
            self.persist(now_ms),
            Effect::MoveHolds {
                keep: step.expect.name,
            },
        ]
    }

    /// The target says the current step's receive is over (`message`),
    /// and which snapshot it landed.
    fn landed(&mut self, landed: Option<&SnapshotRef>, message: &str, now_ms: i64) -> Vec<Effect> {
        let step = self.steps[self.step].clone();
        self.log(format!("target: {message}"), now_ms);
        match landed {
            Some(l) if l.guid == step.expect.guid => {
                self.step += 1;
                self.resumed = false;
                if let Some(info) = &mut self.restore {
                    info.landed_bytes += self.bytes;
                }
                if self.step < self.steps.len() {
                    self.state = JobState::Planned;
                    self.attempt = 1;
                    return vec![self.persist(now_ms), Effect::Start];
                }
                self.state = JobState::Done;
                self.error = None;
                self.finished_at_ms = Some(now_ms);
                self.last_success_ms = Some(now_ms);
                self.eta_secs = Some(0);
                if let Some(info) = &mut self.restore {
                    // Done only now: the target listed the chosen snapshot
                    // with the copy's GUID.
                    info.landed_guid = Some(l.guid);
                    self.log(
                        format!(
                            "done: {}@{} has GUID {}, the GUID of {}:{}@{}; restored in {:.1} s",
                            self.target_dataset,
                            step.expect.name,
                            l.guid,
                            self.source_node,
                            self.dataset,
                            step.expect.name,
                            (now_ms - self.started_at_ms) as f64 / 1000.0
                        ),
                        now_ms,
                    );
                    return vec![self.persist(now_ms)];
                }
                self.log(
                    format!(
                        "done: {}@{} (GUID {}) is on {} in {:.1} s; attempt {} sent {} bytes",
                        self.target_dataset,
                        step.expect.name,
                        step.expect.guid,
                        self.target_node,
                        (now_ms - self.started_at_ms) as f64 / 1000.0,
                        self.attempt,
                        self.bytes
                    ),
                    now_ms,
                );
                self.moving_holds_to = Some(step.expect.name.clone());
                vec![
                    self.persist(now_ms),
                    Effect::MoveHolds {
                        keep: step.expect.name,
                    },
                ]
            }
            Some(l) if self.restore.is_some() => {
                let why = format!(
                    "the target landed @{} (GUID {}), not @{} (GUID {})",
                    l.name, l.guid, step.expect.name, step.expect.guid
                );
                self.fail_attempt(why, true, now_ms);
                vec![self.persist(now_ms)]
            }
            Some(l) => {
                // A resume finished an earlier stream: plan again from what is there now.
                let why = format!(
                    "the resumed receive landed @{} (GUID {}), not @{}; planning again; attempt {} sent {} bytes",
                    l.name, l.guid, step.expect.name, self.attempt, self.bytes
                );
                self.state = JobState::Failed;
                self.error = Some(why.clone());
                self.next_attempt_at_ms = Some(now_ms + BACKOFF_FIRST_MS);
                self.log(why, now_ms);
                vec![self.persist(now_ms)]
            }
            None => {
                let why = "the target reported success without the snapshot it landed".into();
                self.fail_attempt(why, false, now_ms);
                vec![self.persist(now_ms)]
            }
        }
    }

    /// The other end's word on an attempt that already failed is often the
    /// cause: a target's TLS error arrives after the source's broken pipe.
    fn late_report(&mut self, update: &JobUpdate, now_ms: i64) -> Vec<Effect> {
        let Some(attempt) = self
            .failed_attempt
            .as_ref()
            .filter(|f| f.id == update.job)
            .map(|f| f.attempt)
        else {
            return Vec::new();
        };
        if self.lands_current_step(update) {
            let line =
                format!("attempt {attempt} had failed, but its target reports the step landed");
            return self.landed_late(line, update.landed.as_ref(), &update.message, now_ms);
        }
        if update.state != JobPhase::Failed {
            return Vec::new();
        }
        let line = format!("{} {}: {}", side(update.role), update.node, update.message);
        self.log(
            format!("attempt {attempt} also failed at the {line}"),
            now_ms,
        );
        if update.role == JobRole::Target && update.partial.is_some() {
            self.partial = update.partial.clone();
        }
        if self.attempt_id == update.job {
            self.error = Some(match self.error.take() {
                Some(first) => format!("{first}; {line}"),
                None => line,
            });
        }
        vec![self.persist(now_ms)]
    }

    /// Whether `update` is the target's word that the current step's
    /// snapshot landed (by GUID), while the job still goes on: a job that
    /// gave up has ended, and its drill or release may have followed.
    fn lands_current_step(&self, update: &JobUpdate) -> bool {
        let step = self.steps.get(self.step);
        let going_on = self.active() || self.next_attempt_at_ms.is_some();
        going_on
            && self.kind != JobKind::Upload
            && update.role == JobRole::Target
            && update.state == JobPhase::Done
            && matches!((&update.landed, step), (Some(l), Some(s)) if l.guid == s.expect.guid)
    }

    /// The target landed the step of an attempt already failed: its source
    /// restarted just as the stream ended (seen in the VM-lane kill -9
    /// trials), or the report came after the stall time. The snapshot is
    /// there, so the step is done; sending it again would find the
    /// destination taken (`destination ... exists`) on every retry. A retry
    /// already under way is cancelled on both ends.
    /// `why` says how the landing became known.
    fn landed_late(
        &mut self,
        why: String,
        landed: Option<&SnapshotRef>,
        message: &str,
        now_ms: i64,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.active() {
            fx.push(Effect::Cancel {
                nodes: self.nodes(),
                attempt: self.attempt_id.clone(),
            });
        }
        self.next_attempt_at_ms = None;
        self.log(why, now_ms);
        fx.extend(self.landed(landed, message, now_ms));
        fx
    }

    /// A restore or drill whose attempt failed and whose retry is due
    /// later: the only state in which [`Self::found_landed`] looks.
    pub fn retry_waits(&self) -> bool {
        self.restore.is_some()
            && self.kind != JobKind::Upload
            && self.state == JobState::Failed
            && self.next_attempt_at_ms.is_some()
    }

    /// The destination lists the current step's snapshot, with its GUID,
    /// while the job waits to send the step again: the receive finished but
    /// its agent died before it could say so (VM-lane kill -9 run 4, OpenZFS
    /// 2.1), so no late report comes. The step is done; sending it again is
    /// refused (`destination ... exists`) on every retry. `destination` is
    /// the target dataset's snapshots as its node lists them now.
    pub fn found_landed(&mut self, destination: &[SnapshotInfo], now_ms: i64) -> Vec<Effect> {
        if !self.retry_waits() {
            return Vec::new();
        }
        let Some(step) = self.steps.get(self.step) else {
            return Vec::new();
        };
        let Some(found) = destination.iter().find(|s| s.guid == step.expect.guid) else {
            return Vec::new();
        };
        let landed = SnapshotRef {
            name: found.name.clone(),
            guid: found.guid,
        };
        let message = format!(
            "{}@{} is listed with GUID {} on {}, though no report said it landed",
            self.target_dataset, found.name, found.guid, self.target_node
        );
        let why = format!(
            "attempt {} had failed, but the destination lists the step's snapshot",
            self.attempt
        );
        self.landed_late(why, Some(&landed), &message, now_ms)
    }

    /// A fresh restore's steps planned again before an attempt
    /// (`restore::plan::replan`): what the target saved of the old first
    /// step is dropped, and the holds are taken again on what is read now.
    pub fn replanned(&mut self, steps: Vec<PlannedStep>, now_ms: i64) {
        self.log(
            format!(
                "the copy no longer holds every snapshot the plan read; planned again from its \
                 snapshots now: {} step(s): {}",
                steps.len(),
                describe(&steps)
            ),
            now_ms,
        );
        self.steps = steps;
        self.discard_partial = true;
        self.partial = None;
        if let Some(info) = self.restore.as_mut() {
            info.holds_taken = false;
            info.take_at_ms = None;
        }
    }

    /// A drill that has sent nothing yet and whose holds are not all
    /// confirmed. It waits for them: a transfer begun before production's
    /// hold landed lost production's snapshot to retention in the kill -9
    /// trials, and the drill then had nothing to compare with.
    pub fn awaits_drill_holds(&self) -> bool {
        self.kind == JobKind::Drill
            && self.attempt_id.is_empty()
            && self.restore.as_ref().is_some_and(|i| !i.holds_taken)
    }

    /// A drill that [`Self::awaits_drill_holds`] drills `snapshot` instead
    /// (`drills::check::repick`): production no longer lists the one it
    /// chose. Its holds are asked again at once, on the new snapshots.
    pub fn repicked(
        &mut self,
        snapshot: RestoreSnapshot,
        steps: Vec<PlannedStep>,
        now_ms: i64,
    ) -> Vec<Effect> {
        let Some(info) = self.restore.as_mut() else {
            return Vec::new();
        };
        let line =
            format!(
            "production {}:{} no longer lists @{} (GUID {}): its retention pruned it before the \
             drill's hold landed; drilling @{} (GUID {}) instead, the newest snapshot the copy \
             shares with production",
            info.node, info.dataset, info.snapshot.name, info.snapshot.guid, snapshot.name,
            snapshot.guid
        );
        info.snapshot = snapshot;
        info.holds_taken = false;
        info.take_at_ms = None;
        self.steps = steps;
        self.log(line, now_ms);
        vec![self.persist(now_ms)]
    }

    /// A restore or drill that will never send its first step fails, with
    /// `why`; the tick then checks a drill and releases the holds.
    pub fn not_started(&mut self, why: String, now_ms: i64) -> Vec<Effect> {
        self.log(format!("failed before sending anything: {why}"), now_ms);
        self.state = JobState::Failed;
        self.error = Some(why);
        self.next_attempt_at_ms = None;
        self.finished_at_ms = Some(now_ms);
        self.updated_at_ms = now_ms;
        vec![self.persist(now_ms)]
    }

    /// A restore's part of the tick: its first attempt, a retry after its
    /// backoff, or, once it ended, the release of its holds. Restores are
    /// started by the tick only, so a request never starts one twice; a
    /// drill starts only once its holds are on ([`Self::awaits_drill_holds`]).
    pub fn restore_tick(&mut self, now_ms: i64) -> Vec<Effect> {
        if self.restore.is_none() {
            return Vec::new();
        }
        let unheld = self.awaits_drill_holds();
        if unheld
            && self.state == JobState::Planned
            && now_ms - self.started_at_ms >= DRILL_HOLD_WAIT_MS
        {
            return self.not_started(
                format!(
                    "the snapshots it reads could not all be held within {} min, so nothing was \
                     sent (each node's answer is in the history); bring production and the \
                     copy's node online, then drill again",
                    DRILL_HOLD_WAIT_MS / 60_000
                ),
                now_ms,
            );
        }
        let running = self.active() || self.next_attempt_at_ms.is_some();
        let mut take = Vec::new();
        if let Some(info) = self
            .restore
            .as_mut()
            .filter(|i| running && !i.holds_taken && i.take_at_ms.is_none_or(|at| now_ms >= at))
        {
            info.take_at_ms = Some(now_ms + RELEASE_RETRY_MS);
            self.taking_holds = true;
            take.push(Effect::TakeHolds);
        }
        let waiting = matches!(self.state, JobState::Planned | JobState::Failed);
        if waiting && !unheld && self.next_attempt_at_ms.is_some_and(|at| now_ms >= at) {
            self.next_attempt_at_ms = None;
            if self.state == JobState::Failed {
                self.attempt += 1;
            }
            self.state = JobState::Planned;
            self.updated_at_ms = now_ms;
            take.push(Effect::Start);
            return take;
        }
        if !take.is_empty() {
            return take;
        }
        let fx = self.check_stall(now_ms);
        if !fx.is_empty() {
            return fx;
        }
        let ended = !self.active() && self.next_attempt_at_ms.is_none();
        // A drill keeps production's snapshot held until it was hashed.
        let verdict = self.drill.as_ref().is_none_or(|d| d.result.is_some());
        let settled = ended && verdict && !self.taking_holds;
        let mut fx = Vec::new();
        if let Some(info) = self.restore.as_mut().filter(|i| {
            settled && !i.holds_released && i.release_at_ms.is_none_or(|at| now_ms >= at)
        }) {
            info.release_at_ms = Some(now_ms + RELEASE_RETRY_MS);
            fx.push(Effect::DropHolds);
        }
        if let Some(d) = self
            .drill
            .as_mut()
            .filter(|d| ended && d.result.is_none() && !d.verifying)
        {
            d.verifying = true;
            fx.push(Effect::Verify);
        }
        if !fx.is_empty() {
            fx.insert(0, self.persist(now_ms));
        }
        fx
    }

    /// A drill's check ended: the result goes into the record.
    pub fn drill_ended(&mut self, result: DrillResult, now_ms: i64) -> Vec<Effect> {
        let Some(d) = self.drill.as_mut() else {
            return Vec::new();
        };
        d.verifying = false;
        let line = match (&result.why, result.rto_ms) {
            (None, Some(rto)) => format!(
                "drill passed ({}): measured RTO {:.1} s against the class's {} s{}; scratch {}",
                level_name(result.level),
                rto as f64 / 1000.0,
                d.rto_secs,
                if result.within_rto {
                    ""
                } else {
                    ", OVER the RTO"
                },
                if result.cleaned {
                    "destroyed"
                } else {
                    "NOT destroyed (the leader's sweep destroys it within a minute or two)"
                }
            ),
            (why, _) => format!(
                "DRILL FAILED: {}; scratch {}",
                why.as_deref().unwrap_or("no reason given"),
                if result.cleaned {
                    "destroyed"
                } else {
                    "NOT destroyed (the leader's sweep destroys it within a minute or two)"
                }
            ),
        };
        d.result = Some(result);
        self.log(line, now_ms);
        vec![self.persist(now_ms)]
    }

    /// How many attempts the job gets in all, when limited (a restore's).
    pub fn attempts(&self) -> Option<u32> {
        self.restore.is_some().then_some(RESTORE_ATTEMPTS)
    }

    /// The holds an ended restore or drill took and must release: on the
    /// copy it read and where it landed (a drill's scratch goes with its
    /// holds; production's snapshot instead, which the drill hashed).
    pub fn releases(&self) -> Vec<Release> {
        let at = |node: &str, dataset: &str, tag: String| Release {
            node: node.to_string(),
            dataset: dataset.to_string(),
            tag,
        };
        let copy = at(
            &self.source_node,
            &self.dataset,
            restore_tag(JobRole::Source, &self.id),
        );
        let mut all = match (&self.kind, &self.restore) {
            (JobKind::Drill, Some(info)) => vec![
                copy,
                at(&info.node, &info.dataset, drill_production_tag(&self.id)),
            ],
            (JobKind::Restore, Some(_)) => vec![
                copy,
                at(
                    &self.target_node,
                    &self.target_dataset,
                    restore_tag(JobRole::Target, &self.id),
                ),
            ],
            _ => Vec::new(),
        };
        all.retain(|r| !in_bucket(&r.node));
        all
    }

    /// The holds a restore or drill takes as it begins: the copy's snapshots
    /// its steps read, and a drill's production snapshot, which it hashes.
    pub fn takes(&self) -> Vec<Take> {
        let Some(info) = &self.restore else {
            return Vec::new();
        };
        let mut out = vec![Take {
            node: self.source_node.clone(),
            dataset: self.dataset.clone(),
            snapshots: read_snapshots(&self.steps),
            tag: restore_tag(JobRole::Source, &self.id),
        }];
        if self.kind == JobKind::Drill {
            out.push(Take {
                node: info.node.clone(),
                dataset: info.dataset.clone(),
                snapshots: vec![info.snapshot.name.clone()],
                tag: drill_production_tag(&self.id),
            });
        }
        out.retain(|t| !in_bucket(&t.node));
        out
    }

    /// `node` said hello: an ask for [`Self::takes`] it missed while it was
    /// down or restarting is due now, not at its retry time. A restarted
    /// agent prunes by its own schedule, and a drill's production snapshot
    /// went before the retry in the kill -9 trials. Whether one is due.
    pub fn node_back(&mut self, node: &str) -> bool {
        let involved = self.takes().iter().any(|t| t.node == node);
        match self.restore.as_mut() {
            Some(info) if involved && !info.holds_taken && info.take_at_ms.is_some() => {
                info.take_at_ms = None;
                true
            }
            _ => false,
        }
    }

    /// The ask for [`Self::takes`] ended; `confirmed` when every node
    /// said the holds are on.
    pub fn holds_taken(&mut self, confirmed: bool) {
        self.taking_holds = false;
        if let Some(info) = self.restore.as_mut().filter(|_| confirmed) {
            info.holds_taken = true;
            info.take_at_ms = None;
        }
    }

    /// The ask to release [`Self::releases`] ended; `confirmed` when every
    /// node said the holds are gone.
    pub fn holds_dropped(&mut self, confirmed: bool) {
        if let Some(info) = self.restore.as_mut().filter(|_| confirmed) {
            info.holds_released = true;
            info.release_at_ms = None;
        }
    }

    /// The holds moved and the copy was pruned: the pairing may plan again.
    pub fn holds_moved(&mut self) {
        self.moving_holds_to = None;
    }

    /// Logs a line about the copy's retention.
    pub fn note(&mut self, line: String, now_ms: i64) -> Vec<Effect> {
        self.log(line, now_ms);
        vec![self.persist(now_ms)]
    }

    /// Loaded by a new leader: a hold move in flight is forgotten (the
    /// move is idempotent and runs again after the next job); an attempt
    /// under way is returned for adoption and gets a full stall period for it.
    pub fn loaded_by_new_leader(&mut self, now_ms: i64) -> Option<String> {
        self.moving_holds_to = None;
        // A restore not started yet is the tick's to start, not to adopt.
        let unstarted = self.restore.is_some() && self.next_attempt_at_ms.is_some();
        // A drill whose check was under way is checked again by the tick.
        if let Some(d) = self.drill.as_mut() {
            d.verifying = false;
        }
        if !self.active() || unstarted {
            return None;
        }
        self.updated_at_ms = now_ms;
        Some(self.attempt_id.clone())
    }

    /// Which of its predecessor's attempts a new leader keeps: only one whose
    /// two ends both still run it (`JobStatus` answered with a report).
    pub fn adoption(source: Option<&JobUpdate>, target: Option<&JobUpdate>) -> Adoption {
        let phase = |u: Option<&JobUpdate>| u.map(|u| u.state);
        let running = |u: Option<&JobUpdate>| phase(u) == Some(JobPhase::Running);
        match (running(source), running(target)) {
            (true, true) => Adoption::Adopt,
            // The whole stream went out; the target is still landing it.
            (false, true) if phase(source) == Some(JobPhase::Done) => Adoption::Adopt,
            (s, t) => Adoption::Retry {
                cancel: [(s, JobRole::Source), (t, JobRole::Target)]
                    .into_iter()
                    .filter(|(r, _)| *r)
                    .map(|(_, role)| role)
                    .collect(),
            },
        }
    }

    /// Applies a new leader's [`Adoption`] decision for `attempt`.
    pub fn adopt(&mut self, attempt: &str, decision: &Adoption, now_ms: i64) -> Vec<Effect> {
        if self.attempt_id != attempt || !self.active() {
            return Vec::new();
        }
        match decision {
            Adoption::Adopt => {
                self.state = JobState::Running;
                self.updated_at_ms = now_ms;
                self.log(
                    format!(
                        "attempt {} adopted by a new leader: both ends still stream",
                        self.attempt
                    ),
                    now_ms,
                );
                vec![self.persist(now_ms)]
            }
            Adoption::Retry { cancel } => {
                let nodes = cancel
                    .iter()
                    .map(|role| match role {
                        JobRole::Source => self.source_node.clone(),
                        JobRole::Target => self.target_node.clone(),
                    })
                    .collect();
                let effect = Effect::Cancel {
                    nodes,
                    attempt: self.attempt_id.clone(),
                };
                self.fail_attempt(
                    "the coordinator changed during the attempt and one end no longer runs it"
                        .into(),
                    false,
                    now_ms,
                );
                // Time for the cancel to reach the agents before the retry.
                self.next_attempt_at_ms = Some(now_ms + BACKOFF_FIRST_MS);
                vec![self.persist(now_ms), effect]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::snap as s;

    fn pairing() -> Pairing {
        Pairing {
            task: "t".into(),
            source_node: "a".into(),
            dataset: "tank/d".into(),
            target_node: "b".into(),
            target_dataset: "backup/d".into(),
            reason: String::new(),
        }
    }

    fn step(to: &str, guid: u64) -> PlannedStep {
        PlannedStep {
            stream: StreamSpec::Full {
                snapshot: to.into(),
            },
            expect: SnapshotRef {
                name: to.into(),
                guid,
            },
            force: false,
            discards: vec![],
            base: None,
        }
    }

    /// What node `b`'s floor says of `backup/d@x`: taken at 0, kept for 1h.
    fn refused_x() -> Vec<FloorRefusal> {
        vec![FloorRefusal {
            dataset: "backup/d".into(),
            operation: FloorOperation::ReceiveForce,
            snapshots: vec![zdr_common::wire::FloorHit {
                name: "x".into(),
                creation: 0,
                until: 3600,
            }],
        }]
    }

    #[test]
    fn a_step_the_floor_refused_blocks_the_job_for_good() {
        let mut r = running(1);
        r.steps[0].force = true;
        r.steps[0].discards = vec!["x".into()];
        let attempt = r.attempt_id.clone();
        // A late refusal of another attempt changes nothing.
        assert!(r.floor_refused("other", refused_x(), 1_000).is_empty());
        assert_eq!(
            r.floor_refused(&attempt, refused_x(), 1_000),
            [Effect::Persist]
        );
        assert_eq!(r.state, JobState::Blocked);
        assert_eq!(r.next_attempt_at_ms, None);
        let why = "target b refused: receive -F (rollback) of backup/d: @x is inside its 1h \
                   immutability window until 1970-01-01T01:00:00Z (floor)";
        assert_eq!(r.error.as_deref(), Some(why));
        assert!(r.history.last().unwrap().ends_with(&format!(
            "attempt 1 refused for good: {why}; not tried again while the floor keeps them"
        )));
        // The same step again is kept back until the window has passed; a
        // plan that leaves x alone is not.
        let steps = r.steps.clone();
        assert_eq!(r.floor_keeps(&steps, 3_599_999).as_deref(), Some(why));
        assert_eq!(r.floor_keeps(&steps, 3_600_000), None);
        assert_eq!(r.floor_keeps(&[step("s2", 2)], 1_000), None);
        // A blocked record made from it keeps the refusal, and says the same once.
        let lines = r.history.len();
        let again = JobRecord::new(JobKind::Replication, &pairing(), "c", 2, vec![], 2_000).block(
            Some(&r),
            why.to_string(),
            2_000,
        );
        assert_eq!(again.floor_refused, r.floor_refused);
        assert_eq!(again.history.len(), lines);
        let later = JobRecord::new(JobKind::Replication, &pairing(), "c", 3, vec![], 4_000_000)
            .block(Some(&again), "diverged".into(), 4_000_000);
        assert!(later.floor_refused.is_empty(), "past its window");
        assert_eq!(later.history.len(), lines + 1);
    }

    /// A record with `n` steps whose first attempt has started.
    fn running(n: u64) -> JobRecord {
        let steps = (1..=n).map(|i| step(&format!("s{i}"), i)).collect();
        let mut r = JobRecord::new(JobKind::Replication, &pairing(), "c", 1, steps, 0)
            .continue_from(None, 0);
        r.begin_attempt(0);
        r
    }

    fn update(r: &JobRecord, role: JobRole, state: JobPhase, bytes: u64) -> JobUpdate {
        JobUpdate {
            node: r.node_of(role).to_string(),
            job: r.attempt_id.clone(),
            role,
            state,
            at_ms: 0,
            bytes,
            size_hint: Some(1000),
            bytes_per_sec: 100,
            message: format!("{state:?}"),
            landed: None,
            resumable: false,
            partial: None,
            uploaded: None,
            zfs_failed: false,
        }
    }

    fn landed(r: &JobRecord, name: &str, guid: u64) -> JobUpdate {
        JobUpdate {
            landed: Some(SnapshotRef {
                name: name.into(),
                guid,
            }),
            ..update(r, JobRole::Target, JobPhase::Done, 1000)
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff_ms(1), BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(2), 2 * BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(3), 4 * BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    }

    #[test]
    fn the_next_plan_waits_for_the_target_inventory_to_show_the_landing() {
        let mut rec = JobRecord::new(
            JobKind::Replication,
            &pairing(),
            "c",
            1,
            vec![step("s2", 2)],
            0,
        );
        assert!(!rec.awaiting_landed_inventory(&[s("s1", 1)], 1_000));
        rec.state = JobState::Done;
        rec.finished_at_ms = Some(1_000);
        // Lagging: the target's inventory does not list @s2 (GUID 2) yet.
        assert!(rec.awaiting_landed_inventory(&[s("s1", 1)], 2_000));
        assert!(!rec.awaiting_landed_inventory(&[s("s1", 1), s("s2", 2)], 2_000));
        // Not for ever: a snapshot destroyed on the target meanwhile is planned for again.
        assert!(!rec.awaiting_landed_inventory(&[s("s1", 1)], 1_000 + LANDED_WAIT_MS));
    }

    #[test]
    fn progress_is_persisted_at_most_every_few_seconds() {
        let mut r = running(1);
        let u = update(&r, JobRole::Source, JobPhase::Running, 10);
        assert_eq!(r.apply(&u, 10_000), vec![Effect::Persist]);
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.bytes, 10);
        assert_eq!(r.eta_secs, Some(9));
        assert!(r.apply(&u, 11_000).is_empty());
        assert_eq!(
            r.apply(&u, 10_000 + PERSIST_PROGRESS_MS),
            vec![Effect::Persist]
        );
        // The target's running reports do not move the byte count.
        let t = update(&r, JobRole::Target, JobPhase::Running, 5);
        r.apply(&t, 20_000);
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn a_landed_step_starts_the_next_and_the_last_moves_the_holds() {
        let mut r = running(2);
        let u = landed(&r, "s1", 1);
        assert_eq!(r.apply(&u, 1_000), vec![Effect::Persist, Effect::Start]);
        assert_eq!((r.step, r.attempt, r.state), (1, 1, JobState::Planned));
        r.begin_attempt(1_100);
        let u = landed(&r, "s2", 2);
        assert_eq!(
            r.apply(&u, 2_000),
            vec![Effect::Persist, Effect::MoveHolds { keep: "s2".into() }]
        );
        assert_eq!(r.state, JobState::Done);
        assert_eq!(r.last_success_ms, Some(2_000));
        assert_eq!(r.moving_holds_to.as_deref(), Some("s2"));
        // No new run while the holds move, however long ago the last success was.
        assert!(!r.due(0, 1_000_000));
        r.holds_moved();
        assert!(r.due(0, 1_000_000));
        assert!(!r.due(10_000, 3_000));
    }

    #[test]
    fn a_landing_of_another_snapshot_plans_again_and_none_fails() {
        let mut r = running(1);
        let u = landed(&r, "s0", 99);
        assert_eq!(r.apply(&u, 1_000), vec![Effect::Persist]);
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(r.next_attempt_at_ms, Some(1_000 + BACKOFF_FIRST_MS));
        let mut r = running(1);
        let u = update(&r, JobRole::Target, JobPhase::Done, 10);
        r.apply(&u, 1_000);
        assert_eq!(r.state, JobState::Failed);
        assert!(r.error.as_deref().unwrap().contains("without the snapshot"));
    }

    #[test]
    fn a_failure_cancels_the_other_end_and_retries_after_backoff() {
        let mut r = running(1);
        let mut u = update(&r, JobRole::Target, JobPhase::Failed, 10);
        u.partial = Some(PartialReceive {
            toguid: 1,
            fromguid: None,
            bytes: 10,
        });
        let fx = r.apply(&u, 5_000);
        assert_eq!(
            fx,
            vec![
                Effect::Persist,
                Effect::Cancel {
                    nodes: vec!["a".into()],
                    attempt: r.attempt_id.clone()
                }
            ]
        );
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(r.next_attempt_at_ms, Some(5_000 + backoff_ms(1)));
        assert_eq!(r.partial.as_ref().map(|p| p.bytes), Some(10));
        assert!(!r.due(1, 5_000 + backoff_ms(1) - 1));
        assert!(r.due(1, 5_000 + backoff_ms(1)));
        // The retry counts on, keeps the partial receive and the history.
        let again = JobRecord::new(
            JobKind::Replication,
            &pairing(),
            "c",
            2,
            vec![step("s1", 1)],
            9_000,
        )
        .continue_from(Some(&r), 9_000);
        assert_eq!(again.attempt, 2);
        assert!(again.partial.is_some());
        assert!(again.history.len() > r.history.len());
    }

    /// The source fails attempt `attempt` while resuming; `zfs_failed` as it says.
    fn resumed_source_fails(attempt: u32, zfs_failed: bool) -> JobRecord {
        let mut r = running(1);
        r.attempt = attempt;
        let id = r.begin_attempt(50);
        r.attempt_running(&id, true, None, "resuming".into(), 100);
        let mut u = update(&r, JobRole::Source, JobPhase::Failed, 0);
        u.zfs_failed = zfs_failed;
        r.apply(&u, 200);
        assert_eq!(r.state, JobState::Failed);
        r
    }

    #[test]
    fn zfs_send_failing_on_a_resume_drops_the_partial_next_time() {
        assert!(resumed_source_fails(2, true).discard_partial);
    }

    #[test]
    fn a_broken_transfer_while_resuming_keeps_the_partial_until_the_third_attempt() {
        // The target or the network went away, or the source restarted.
        assert!(!resumed_source_fails(2, false).discard_partial);
        assert!(resumed_source_fails(3, false).discard_partial);
    }

    #[test]
    fn a_source_failure_on_a_fresh_stream_never_drops_a_partial() {
        let mut r = running(1);
        let id = r.attempt_id.clone();
        r.attempt_running(&id, false, None, "sending".into(), 100);
        let mut u = update(&r, JobRole::Source, JobPhase::Failed, 0);
        u.zfs_failed = true;
        r.apply(&u, 200);
        assert!(!r.discard_partial);
    }

    #[test]
    fn the_other_ends_late_report_is_kept_even_after_the_retry_started() {
        let mut r = running(1);
        let first = r.attempt_id.clone();
        let src = update(&r, JobRole::Source, JobPhase::Failed, 0);
        r.apply(&src, 1_000);
        let tgt = JobUpdate {
            message: "altered in transit".into(),
            ..update(&r, JobRole::Target, JobPhase::Failed, 0)
        };
        // Retry planned and begun: the target's word on the first attempt still counts.
        let mut r = JobRecord::new(
            JobKind::Replication,
            &pairing(),
            "c",
            2,
            vec![step("s1", 1)],
            4_000,
        )
        .continue_from(Some(&r), 4_000);
        r.begin_attempt(4_000);
        assert!(r.knows_attempt(&first));
        assert_eq!(r.apply(&tgt, 5_000), vec![Effect::Persist]);
        assert!(r
            .history
            .iter()
            .any(|l| l.contains("also failed at the target b: altered in transit")));
        assert_eq!(r.state, JobState::Planned, "the retry is untouched");
        // Running reports of an old attempt change nothing.
        let old = JobUpdate {
            job: first,
            ..update(&r, JobRole::Source, JobPhase::Running, 1)
        };
        assert!(r.apply(&old, 6_000).is_empty());
    }

    #[test]
    fn an_attempt_lost_with_a_restarted_agent_fails_at_once() {
        let mut r = running(1);
        let attempt = r.attempt_id.clone();
        let began = r.started_at_ms;
        // A process that was already up when the attempt began: not this rule.
        assert!(r
            .lost_with_restart(&attempt, "a", began - 1, began + 5)
            .is_empty());
        // Another attempt's id: nothing.
        assert!(r
            .lost_with_restart("other", "a", began + 1, began + 5)
            .is_empty());
        let fx = r.lost_with_restart(&attempt, "a", began + 1, began + 5);
        assert_eq!(r.state, JobState::Failed);
        assert!(
            r.error.as_deref().unwrap().contains("agent on a restarted"),
            "{:?}",
            r.error
        );
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Cancel { nodes, .. } if nodes == &["a".to_string(), "b".to_string()]
        )));
        // Only once.
        assert!(r
            .lost_with_restart(&attempt, "a", began + 1, began + 6)
            .is_empty());
    }

    #[test]
    fn a_silent_attempt_stalls_and_is_cancelled_on_both_ends() {
        let mut r = running(1);
        assert!(r.check_stall(STALL_MS).is_empty());
        let fx = r.check_stall(STALL_MS + 1);
        assert_eq!(fx.len(), 2);
        assert!(
            matches!(&fx[1], Effect::Cancel { nodes, .. } if nodes == &["a".to_string(), "b".to_string()])
        );
        assert_eq!(r.state, JobState::Failed);
    }

    #[test]
    fn an_attempt_that_could_not_start_fails_once() {
        let mut r = running(1);
        let id = r.attempt_id.clone();
        assert_eq!(
            r.attempt_failed(&id, "target refused".into(), false, 10),
            vec![Effect::Persist]
        );
        assert!(r.attempt_failed(&id, "again".into(), false, 20).is_empty());
        assert_eq!(r.error.as_deref(), Some("target refused"));
    }

    #[test]
    fn a_new_leader_adopts_only_attempts_both_ends_still_run() {
        let mut r = running(1);
        let id = r.attempt_id.clone();
        r.updated_at_ms = 0;
        assert_eq!(r.loaded_by_new_leader(50_000), Some(id.clone()));
        assert!(
            r.check_stall(50_000 + STALL_MS).is_empty(),
            "a full stall period to adopt"
        );
        let src = update(&r, JobRole::Source, JobPhase::Running, 500);
        let tgt = update(&r, JobRole::Target, JobPhase::Running, 500);
        assert_eq!(JobRecord::adoption(Some(&src), Some(&tgt)), Adoption::Adopt);
        assert_eq!(
            r.adopt(&id, &Adoption::Adopt, 51_000),
            vec![Effect::Persist]
        );
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.attempt, 1, "no new attempt");

        let mut r = running(1);
        let id = r.attempt_id.clone();
        let decision = JobRecord::adoption(None, Some(&tgt));
        assert_eq!(
            decision,
            Adoption::Retry {
                cancel: vec![JobRole::Target]
            }
        );
        let fx = r.adopt(&id, &decision, 60_000);
        assert_eq!(
            fx[1],
            Effect::Cancel {
                nodes: vec!["b".into()],
                attempt: id
            }
        );
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(
            JobRecord::adoption(None, None),
            Adoption::Retry { cancel: vec![] }
        );
        // The source sent everything while no leader listened; the target lands it.
        let sent = update(&r, JobRole::Source, JobPhase::Done, 500);
        assert_eq!(
            JobRecord::adoption(Some(&sent), Some(&tgt)),
            Adoption::Adopt
        );
        let failed = update(&r, JobRole::Source, JobPhase::Failed, 500);
        assert_eq!(
            JobRecord::adoption(Some(&failed), Some(&tgt)),
            Adoption::Retry {
                cancel: vec![JobRole::Target]
            }
        );
    }

    #[test]
    fn jobs_find_an_attempts_record_and_forget_attempts_that_moved_on() {
        let mut jobs = crate::jobs::Jobs::default();
        let a = running(1);
        let first = a.attempt_id.clone();
        jobs.insert("k1".into(), a);
        let mut b = JobRecord::new(JobKind::Replication, &pairing(), "c", 2, vec![], 0)
            .continue_from(None, 0);
        b.begin_attempt(0);
        let other = b.attempt_id.clone();
        jobs.insert("k2".into(), b);
        assert_eq!(jobs.key_of_attempt(&other).as_deref(), Some("k2"));
        assert_eq!(jobs.key_of_attempt(&first).as_deref(), Some("k1"));
        assert_eq!(jobs.key_of_attempt("c-9-s0-a1"), None);
        // The next attempt replaces the remembered one.
        let r = jobs.get_mut("k1").unwrap();
        r.attempt += 1;
        let next = r.begin_attempt(1_000);
        assert_eq!(jobs.key_of_attempt(&first), None);
        assert_eq!(jobs.key_of_attempt(&next).as_deref(), Some("k1"));
    }

    #[test]
    fn blocked_keeps_the_history_and_says_why() {
        let prev = running(1);
        let b = JobRecord::new(JobKind::Replication, &pairing(), "c", 3, vec![], 7).block(
            Some(&prev),
            "target diverged".into(),
            7,
        );
        assert_eq!(b.state, JobState::Blocked);
        assert!(b
            .history
            .last()
            .unwrap()
            .contains("blocked: target diverged"));
        assert!(b.history.len() > prev.history.len());
    }

    /// A restore of two steps, not started yet (as the API makes it).
    fn restore_record() -> JobRecord {
        let mut r = JobRecord::new(
            JobKind::Restore,
            &pairing(),
            "c",
            9,
            vec![step("s1", 1), step("s2", 2)],
            0,
        )
        .continue_from(None, 0);
        r.next_attempt_at_ms = Some(0);
        r.restore = Some(RestoreInfo {
            node: "a".into(),
            dataset: "tank/d".into(),
            snapshot: RestoreSnapshot {
                name: "s2".into(),
                guid: 2,
                creation: 2,
            },
            raw: false,
            replace: false,
            landed_bytes: 0,
            landed_guid: None,
            holds_released: false,
            release_at_ms: None,
            holds_taken: true, // its own test: a_running_restore_takes_its_holds_until_confirmed
            take_at_ms: None,
        });
        r
    }

    fn drill_record() -> JobRecord {
        let mut r = restore_record();
        r.kind = JobKind::Drill;
        r.drill = Some(DrillInfo {
            class: "gold".into(),
            number: Some(3),
            rto_secs: 60,
            plan_ms: 1,
            verifying: false,
            checked: None,
            result: None,
        });
        r
    }

    fn drill_result(passed: bool) -> DrillResult {
        DrillResult {
            passed,
            level: Some(CheckLevel::FilesHashed),
            why: (!passed).then(|| "content differs".into()),
            production_digest: None,
            restored_digest: None,
            transfer_ms: 10,
            mount_ms: 0,
            hash_ms: 5,
            cleanup_ms: 1,
            rto_ms: passed.then_some(20),
            within_rto: passed,
            cleaned: true,
            ended_at: 1,
        }
    }

    #[test]
    fn a_drill_checks_once_after_its_restore_and_again_under_a_new_leader() {
        let mut r = drill_record();
        assert_eq!(r.restore_tick(10), vec![Effect::Start]);
        r.begin_attempt(30);
        r.apply(&landed(&r, "s1", 1), 40);
        r.begin_attempt(50);
        r.apply(&landed(&r, "s2", 2), 60);
        assert_eq!(
            r.restore_tick(70),
            vec![Effect::Persist, Effect::Verify],
            "production's snapshot stays held until the check hashed it"
        );
        assert!(r.restore_tick(80).is_empty(), "checked once");
        // A new leader: the check under way is not persisted, so it runs again.
        let mut loaded: JobRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(loaded.loaded_by_new_leader(90), None);
        assert_eq!(
            loaded.restore_tick(100),
            vec![Effect::Persist, Effect::Verify]
        );
        assert_eq!(
            r.drill_ended(drill_result(false), 110),
            vec![Effect::Persist]
        );
        assert!(r
            .history
            .last()
            .unwrap()
            .contains("DRILL FAILED: content differs"));
        assert_eq!(
            r.restore_tick(120),
            vec![Effect::Persist, Effect::DropHolds],
            "the verdict lets the holds go"
        );
        r.holds_dropped(true);
        assert!(r.restore_tick(200_000).is_empty(), "ended for good");
    }

    #[test]
    fn a_verdict_reached_before_a_leader_change_survives_it() {
        let mut r = drill_record();
        r.restore_tick(10);
        r.begin_attempt(30);
        r.apply(&landed(&r, "s1", 1), 40);
        r.begin_attempt(50);
        r.apply(&landed(&r, "s2", 2), 60);
        assert!(r.restore_tick(70).contains(&Effect::Verify));
        // The old leader checked, persisted the verdict, then stopped before
        // its cleanup was recorded.
        r.drill.as_mut().unwrap().checked = Some(drill_result(true));
        let mut loaded: JobRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(loaded.loaded_by_new_leader(90), None);
        assert_eq!(
            loaded.drill.as_ref().unwrap().checked,
            Some(drill_result(true)),
            "the verdict is persisted"
        );
        assert_eq!(
            loaded.restore_tick(100),
            vec![Effect::Persist, Effect::Verify],
            "the new leader finishes the drill (its cleanup)"
        );
        // A record written before the field existed still loads.
        let mut old = serde_json::to_value(&r).unwrap();
        old["drill"].as_object_mut().unwrap().remove("checked");
        let old: JobRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.drill.unwrap().checked, None);
    }

    #[test]
    fn a_drill_whose_restore_failed_for_good_is_checked_too() {
        let mut r = drill_record();
        for n in 1..=RESTORE_ATTEMPTS {
            assert_eq!(r.restore_tick(1_000_000 * n as i64), vec![Effect::Start]);
            let a = r.begin_attempt(1_000_000 * n as i64);
            r.attempt_failed(&a, "boom".into(), false, 1_000_000 * n as i64 + 1);
        }
        let fx = r.restore_tick(i64::MAX / 2);
        assert!(fx.contains(&Effect::Verify), "{fx:?}");
        r.drill_ended(drill_result(true), 1);
        assert!(r
            .history
            .last()
            .unwrap()
            .contains("drill passed (files hashed)"));
    }

    #[test]
    fn a_restore_starts_once_from_the_tick_and_is_done_only_on_the_chosen_guid() {
        let mut r = restore_record();
        assert_eq!(r.restore_tick(10), vec![Effect::Start]);
        assert!(r.restore_tick(20).is_empty(), "never started twice");
        r.begin_attempt(30);
        assert_eq!(
            r.apply(&landed(&r, "s1", 1), 40),
            vec![Effect::Persist, Effect::Start]
        );
        assert_eq!(r.restore.as_ref().unwrap().landed_bytes, 1000);
        r.begin_attempt(50);
        // The last step lands: done, no replication hold move, GUID kept.
        assert_eq!(r.apply(&landed(&r, "s2", 2), 60), vec![Effect::Persist]);
        assert_eq!(r.state, JobState::Done);
        let info = r.restore.as_ref().unwrap();
        assert_eq!((info.landed_guid, info.landed_bytes), (Some(2), 2000));
        assert!(r.moving_holds_to.is_none());
        // Then its holds go: tried again until the nodes confirm.
        assert_eq!(r.restore_tick(70), vec![Effect::Persist, Effect::DropHolds]);
        assert!(r.restore_tick(80).is_empty());
        assert!(r.restore_tick(70 + RELEASE_RETRY_MS - 1).is_empty());
        let mut loaded: JobRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            r.restore_tick(70 + RELEASE_RETRY_MS),
            vec![Effect::Persist, Effect::DropHolds],
            "a node that missed the release is asked again"
        );
        r.holds_dropped(true);
        assert!(r.restore_tick(70 + 10 * RELEASE_RETRY_MS).is_empty());
        // A new leader goes on trying where the old one left off.
        loaded.loaded_by_new_leader(100);
        assert_eq!(
            loaded.restore_tick(70 + RELEASE_RETRY_MS),
            vec![Effect::Persist, Effect::DropHolds]
        );
    }

    #[test]
    fn a_restore_planned_again_drops_the_old_partial_and_takes_its_holds_anew() {
        let mut r = restore_record();
        r.partial = Some(PartialReceive {
            toguid: 1,
            fromguid: None,
            bytes: 10,
        });
        r.replanned(vec![step("s2", 2)], 5);
        assert_eq!(r.steps.len(), 1);
        assert!(r.discard_partial && r.partial.is_none());
        assert!(!r.restore.as_ref().unwrap().holds_taken);
        assert_eq!(r.restore_tick(10), vec![Effect::TakeHolds, Effect::Start]);
    }

    #[test]
    fn a_node_back_on_the_bus_is_asked_for_its_missed_holds_at_once() {
        let mut r = restore_record();
        r.restore.as_mut().unwrap().holds_taken = false;
        assert_eq!(r.restore_tick(10), vec![Effect::TakeHolds, Effect::Start]);
        r.holds_taken(false);
        assert!(r.restore_tick(20).is_empty(), "the retry waits its time");
        assert!(
            !r.node_back("elsewhere"),
            "a node the job does not read from"
        );
        assert!(r.node_back("a"));
        assert_eq!(r.restore_tick(30), vec![Effect::TakeHolds]);
        r.holds_taken(true);
        assert!(!r.node_back("a"), "taken: nothing to ask");
    }

    /// A restore's first attempt, failed by its source's restart, and the
    /// target's report (landing `snapshot`, GUID `guid`) that comes after.
    fn cut_after_landing(snapshot: &str, guid: u64) -> (JobRecord, JobUpdate) {
        let mut r = restore_record();
        r.restore_tick(10);
        r.begin_attempt(30);
        let report = landed(&r, snapshot, guid);
        let began = r.started_at_ms;
        r.lost_with_restart(&r.attempt_id.clone(), "a", began + 1, 40);
        (r, report)
    }

    #[test]
    fn a_step_the_destination_lists_while_a_retry_waits_is_done() {
        // The target's agent died as its receive ended: no report came.
        let (mut r, _) = cut_after_landing("s1", 1);
        assert!(r.next_attempt_at_ms.is_some(), "a retry waits");
        assert!(
            r.found_landed(&[s("other", 7)], 41).is_empty(),
            "another snapshot proves nothing"
        );
        assert_eq!(
            r.found_landed(&[s("s1", 1)], 42),
            vec![Effect::Persist, Effect::Start],
            "step 1 is done, step 2 starts"
        );
        assert_eq!((r.step, r.state), (1, JobState::Planned));
        assert!(r.history.iter().any(|l| l.contains("listed with GUID 1")));
        // Only while a retry waits: a running attempt reports for itself.
        assert!(r.found_landed(&[s("s2", 2)], 43).is_empty());
    }

    #[test]
    fn a_landing_reported_after_its_attempt_failed_completes_the_step() {
        // The source restarted as its stream ended: the attempt was failed,
        // then the target's report that it landed came.
        let (mut r, first) = cut_after_landing("s1", 1);
        assert_eq!(r.state, JobState::Failed);
        assert_eq!(
            r.apply(&first, 45),
            vec![Effect::Persist, Effect::Start],
            "step 1 is done, step 2 starts"
        );
        assert_eq!(
            (r.step, r.state, r.next_attempt_at_ms),
            (1, JobState::Planned, None)
        );
        assert!(r
            .history
            .iter()
            .any(|l| l.contains("reports the step landed")));

        // The same, with the retry of step 1 already under way: it is cancelled.
        let (mut r, first) = cut_after_landing("s1", 1);
        assert_eq!(
            r.restore_tick(r.next_attempt_at_ms.unwrap()),
            vec![Effect::Start]
        );
        let retry = r.begin_attempt(50_000);
        let fx = r.apply(&first, 50_010);
        assert_eq!(
            fx,
            vec![
                Effect::Cancel {
                    nodes: vec!["a".into(), "b".into()],
                    attempt: retry
                },
                Effect::Persist,
                Effect::Start
            ]
        );
        assert_eq!(r.step, 1);

        // After the restore gave up, a late landing changes nothing.
        let mut r = restore_record();
        r.restore_tick(10);
        r.begin_attempt(30);
        let first = landed(&r, "s1", 1);
        r.attempt = RESTORE_ATTEMPTS;
        r.fail_attempt("the last one".into(), false, 40);
        assert_eq!(r.next_attempt_at_ms, None);
        assert_eq!(r.apply(&first, 45), Vec::<Effect>::new());
        assert_eq!((r.step, r.state), (0, JobState::Failed));

        // A late report of another snapshot, or a late failure, moves nothing.
        let (mut r, wrong) = cut_after_landing("s2", 2);
        r.apply(&wrong, 45);
        assert_eq!((r.step, r.state), (0, JobState::Failed));
    }

    #[test]
    fn a_job_holds_the_ends_of_its_streams_but_no_bookmark() {
        let step = |stream: StreamSpec| PlannedStep {
            stream,
            expect: zdr_common::wire::SnapshotRef {
                name: "x".into(),
                guid: 1,
            },
            force: false,
            discards: vec![],
            base: None,
        };
        let inc = |from: &str, to: &str, from_bookmark: bool| StreamSpec::Incremental {
            from: from.into(),
            to: to.into(),
            intermediates: true,
            from_bookmark,
        };
        let steps = [
            step(StreamSpec::Full {
                snapshot: "a".into(),
            }),
            step(inc("a", "c", false)),
            step(inc("b", "d", true)),
        ];
        assert_eq!(read_snapshots(&steps), ["a", "c", "d"]);
    }

    #[test]
    fn a_drill_sends_nothing_until_its_holds_are_on() {
        let mut d = drill_record();
        d.restore.as_mut().unwrap().holds_taken = false;
        assert!(d.awaits_drill_holds());
        assert_eq!(d.restore_tick(10), vec![Effect::TakeHolds]);
        d.holds_taken(false);
        assert!(
            d.restore_tick(20).is_empty(),
            "no start, and no ask before the retry"
        );
        // Production lost @s2 before its hold landed: the drill picks again,
        // and its holds are asked at once on the new snapshots.
        let fx = d.repicked(
            RestoreSnapshot {
                name: "s1".into(),
                guid: 1,
                creation: 1,
            },
            vec![step("s1", 1)],
            30,
        );
        assert_eq!(fx, vec![Effect::Persist]);
        assert_eq!(d.restore.as_ref().unwrap().snapshot.guid, 1);
        assert_eq!(d.takes()[1].snapshots, vec!["s1".to_string()]);
        assert_eq!(d.restore_tick(40), vec![Effect::TakeHolds]);
        d.holds_taken(true);
        assert!(!d.awaits_drill_holds());
        assert_eq!(d.restore_tick(50), vec![Effect::Start]);
        // A restore does not wait: the copy's retention is planned around
        // (`replan`), and it has nothing to compare with production.
        let mut r = restore_record();
        r.restore.as_mut().unwrap().holds_taken = false;
        assert!(!r.awaits_drill_holds());
        // Holds never confirmed: the drill fails with a reason, once.
        let mut d = drill_record();
        d.restore.as_mut().unwrap().holds_taken = false;
        d.restore_tick(10);
        d.holds_taken(false);
        let fx = d.restore_tick(DRILL_HOLD_WAIT_MS);
        assert_eq!(fx, vec![Effect::Persist]);
        assert_eq!(d.state, JobState::Failed);
        assert!(d.error.as_deref().unwrap().contains("nothing was sent"));
        assert_eq!(d.next_attempt_at_ms, None);
        assert!(d
            .restore_tick(DRILL_HOLD_WAIT_MS + 1)
            .contains(&Effect::Verify));
    }

    #[test]
    fn a_running_restore_takes_its_holds_until_confirmed() {
        let mut r = restore_record();
        r.restore.as_mut().unwrap().holds_taken = false;
        assert_eq!(r.restore_tick(10), vec![Effect::TakeHolds, Effect::Start]);
        r.begin_attempt(20);
        assert!(
            r.restore_tick(30).is_empty(),
            "asked again only after a while"
        );
        assert_eq!(
            r.restore_tick(10 + RELEASE_RETRY_MS),
            vec![Effect::TakeHolds],
            "a node that missed it (restarting, or the leader died) is asked again"
        );
        r.holds_taken(true);
        assert!(!r
            .restore_tick(10 + 3 * RELEASE_RETRY_MS)
            .contains(&Effect::TakeHolds));
        // What it holds: the copy's snapshots its steps read; for a drill,
        // production's snapshot too.
        let t = r.takes();
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].node.as_str(), t[0].snapshots.clone(), t[0].tag.clone()),
            (
                r.source_node.as_str(),
                vec!["s1".to_string(), "s2".to_string()],
                restore_tag(JobRole::Source, &r.id)
            )
        );
        let d = drill_record();
        let t = d.takes();
        let info = d.restore.as_ref().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (
                t[1].node.as_str(),
                t[1].dataset.as_str(),
                t[1].snapshots.clone(),
                t[1].tag.clone()
            ),
            (
                info.node.as_str(),
                info.dataset.as_str(),
                vec![info.snapshot.name.clone()],
                drill_production_tag(&d.id)
            )
        );
        // An ask still under way as the job ends holds back the release,
        // which would otherwise run first and leave the late hold behind.
        let mut late = restore_record();
        late.restore.as_mut().unwrap().holds_taken = false;
        late.restore_tick(10);
        late.begin_attempt(20);
        late.apply(&landed(&late, "s1", 1), 30);
        late.begin_attempt(40);
        late.apply(&landed(&late, "s2", 2), 50);
        assert_eq!(late.state, JobState::Done);
        assert!(
            late.restore_tick(60).is_empty(),
            "no release while a take runs"
        );
        late.holds_taken(false);
        assert_eq!(
            late.restore_tick(70),
            vec![Effect::Persist, Effect::DropHolds]
        );
        // An ended job takes nothing more.
        let mut ended = restore_record();
        ended.restore.as_mut().unwrap().holds_taken = false;
        ended.state = JobState::Done;
        ended.next_attempt_at_ms = None;
        assert!(!ended.restore_tick(5).contains(&Effect::TakeHolds));
    }

    #[test]
    fn a_restore_s_last_attempt_starts_afresh_rather_than_resume_again() {
        // Replication keeps a partial through two broken resumes.
        assert!(!drops_resume(false, 2, None));
        assert!(drops_resume(false, 3, None));
        assert!(drops_resume(true, 1, None));
        // A restore has three attempts: the second resume's failure drops it.
        assert!(!drops_resume(false, 1, Some(RESTORE_ATTEMPTS)));
        assert!(drops_resume(false, 2, Some(RESTORE_ATTEMPTS)));
        let mut r = restore_record();
        r.restore_tick(10);
        r.attempt = 2;
        let a = r.begin_attempt(20);
        r.attempt_running(&a, true, None, "resuming".into(), 21);
        let mut broken = update(&r, JobRole::Source, JobPhase::Failed, 5);
        broken.message = "network: Connection reset by peer".into();
        r.apply(&broken, 22);
        assert!(r.discard_partial, "attempt 3 sends the step afresh");
        assert_eq!(r.state, JobState::Failed);
        assert!(r.next_attempt_at_ms.is_some(), "and it is still to come");
    }

    #[test]
    fn a_copy_keeps_what_restores_read_until_their_holds_are_released() {
        let r = restore_record();
        let (node, ds) = (r.source_node.clone(), r.dataset.clone());
        let mut replication = r.clone();
        replication.kind = JobKind::Replication;
        replication.restore = None;
        let mut released = r.clone();
        released.steps = vec![step("s9", 9)];
        released.holds_dropped(true);
        let all = [r.clone(), replication, released];
        assert_eq!(
            crate::restore::being_read(all.iter(), &node, &ds),
            ["s1", "s2"],
            "the restore's snapshots; not a replication's, not a released one's"
        );
        assert!(crate::restore::being_read(all.iter(), "elsewhere", &ds).is_empty());
        assert!(crate::restore::being_read(all.iter(), &node, "tank/other").is_empty());
    }

    #[test]
    fn an_ended_job_releases_the_holds_it_took() {
        let r = restore_record();
        let tags: Vec<(String, String, String)> = r
            .releases()
            .into_iter()
            .map(|x| (x.node, x.dataset, x.tag))
            .collect();
        assert_eq!(
            tags,
            vec![
                (
                    r.source_node.clone(),
                    r.dataset.clone(),
                    restore_tag(JobRole::Source, &r.id)
                ),
                (
                    r.target_node.clone(),
                    r.target_dataset.clone(),
                    restore_tag(JobRole::Target, &r.id)
                ),
            ]
        );
        let d = drill_record();
        let info = d.restore.clone().unwrap();
        let tags: Vec<(String, String)> =
            d.releases().into_iter().map(|x| (x.node, x.tag)).collect();
        assert_eq!(
            tags,
            vec![
                (d.source_node.clone(), restore_tag(JobRole::Source, &d.id)),
                (info.node.clone(), drill_production_tag(&d.id)),
            ],
            "a drill's scratch goes with its holds; production's hold goes"
        );
        // A restore from a bucket holds nothing there.
        let mut from_bucket = restore_record();
        from_bucket.source_node = "bucket:offsite".into();
        let nodes: Vec<String> = from_bucket.releases().into_iter().map(|x| x.node).collect();
        assert_eq!(nodes, [from_bucket.target_node.clone()]);
        assert!(from_bucket.takes().is_empty());
    }

    #[test]
    fn a_restore_landing_another_guid_fails_and_gives_up_after_its_attempts() {
        let mut r = restore_record();
        for n in 1..=RESTORE_ATTEMPTS {
            assert_eq!(r.restore_tick(1_000_000 * n as i64), vec![Effect::Start]);
            assert_eq!(r.attempt, n);
            r.begin_attempt(1_000_000 * n as i64);
            r.apply(&landed(&r, "s1", 77), 1_000_000 * n as i64 + 1);
            assert_eq!(r.state, JobState::Failed);
            assert!(r.restore.as_ref().unwrap().landed_guid.is_none());
        }
        assert_eq!(
            r.next_attempt_at_ms, None,
            "no retry after the last attempt"
        );
        assert!(r.error.as_deref().unwrap().contains("GUID 77"));
        assert!(r
            .history
            .last()
            .unwrap()
            .contains("failed after 3 attempts"));
        assert_eq!(
            r.restore_tick(i64::MAX / 2),
            vec![Effect::Persist, Effect::DropHolds]
        );
    }

    #[test]
    fn a_new_leader_starts_an_unstarted_restore_and_adopts_a_running_one() {
        let mut r = restore_record();
        assert_eq!(r.loaded_by_new_leader(5), None);
        assert_eq!(r.restore_tick(6), vec![Effect::Start]);
        let id = r.begin_attempt(7);
        assert_eq!(r.loaded_by_new_leader(8), Some(id));
    }

    #[test]
    fn a_replication_ignores_the_restore_tick() {
        let mut r = running(1);
        assert!(r.restore_tick(STALL_MS * 10).is_empty());
        assert_eq!(r.state, JobState::Planned);
    }

    fn upload_record() -> JobRecord {
        let mut r = JobRecord::new(JobKind::Upload, &pairing(), "c", 1, vec![step("s1", 1)], 0)
            .continue_from(None, 0);
        r.upload = Some(UploadInfo {
            verified: None,
            committed: Vec::new(),
            parent: None,
            raw: true,
            encrypted: false,
            lock: None,
        });
        r.begin_attempt(0);
        r
    }

    fn manifest(to: u64) -> ManifestRef {
        ManifestRef {
            stream: "s".into(),
            hash: "h".into(),
            key: "k".into(),
            dataset: "tank/d".into(),
            from_guid: None,
            to_guid: to,
            to_name: format!("s{to}"),
            raw: true,
            stream_bytes: 10,
            segments: 1,
            created: 0,
            retain_until: 0,
        }
    }

    #[test]
    fn an_upload_is_done_only_with_the_planned_manifest() {
        let mut r = upload_record();
        // A manifest of another snapshot is never continued from.
        let wrong = JobUpdate {
            uploaded: Some(manifest(7)),
            ..update(&r, JobRole::Source, JobPhase::Done, 10)
        };
        assert_eq!(r.apply(&wrong, 1_000), vec![Effect::Persist]);
        assert_eq!(r.state, JobState::Failed);
        assert!(r.upload.as_ref().unwrap().committed.is_empty());
        // No manifest at all: failed too.
        let mut r = upload_record();
        r.apply(&update(&r, JobRole::Source, JobPhase::Done, 10), 1_000);
        assert_eq!(r.state, JobState::Failed);
        // The planned one: committed, and the source's hold moves to it.
        let mut r = upload_record();
        let right = JobUpdate {
            uploaded: Some(manifest(1)),
            ..update(&r, JobRole::Source, JobPhase::Done, 10)
        };
        let fx = r.apply(&right, 1_000);
        assert_eq!(
            fx,
            vec![Effect::Persist, Effect::MoveHolds { keep: "s1".into() }]
        );
        assert_eq!(r.state, JobState::Done);
        assert_eq!(r.upload.as_ref().unwrap().committed, vec![manifest(1)]);
    }

    #[test]
    fn a_failed_or_silent_upload_cancels_only_its_source() {
        let mut r = upload_record();
        let fx = r.apply(&update(&r, JobRole::Source, JobPhase::Failed, 0), 1_000);
        assert_eq!(fx, vec![Effect::Persist]);
        assert_eq!(r.state, JobState::Failed);
        let mut r = upload_record();
        let fx = r.check_stall(STALL_MS + 1);
        assert!(
            matches!(&fx[1], Effect::Cancel { nodes, .. } if nodes == &["a".to_string()]),
            "{fx:?}"
        );
    }
}
