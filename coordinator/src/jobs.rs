//! Replication jobs. Every pairing has at most one job at a time, and no two
//! jobs write into the same target dataset. A job is the plan made from both
//! sides' inventories (see `transfer_plan`), run step by step: each attempt
//! of a step is a signed `receive` to the target, then a signed `send` to the
//! source, then [`JobUpdate`]s from both until the target says what landed.
//! A failed attempt is retried with backoff; the target keeps a partial
//! receive, and the next attempt resumes it with `send -t`.
//!
//! Records live in KV `zdr_jobs`, one per pairing, so a restarted or standby
//! coordinator sees every job's state and history.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zdr_common::wire::{
    Command, JobPhase, JobRole, JobSecret, JobUpdate, Outcome, PruneReplica, ReceiveJob, SendJob,
    SnapshotInfo, SnapshotRef, StreamSpec,
};

use crate::bus;
use crate::pairing::Pairing;
use crate::service::{now, State};
use crate::transfer_plan::{self, Step};

/// The first retry waits this long; every further one twice as long.
pub const BACKOFF_FIRST_MS: i64 = 2_000;
pub const BACKOFF_MAX_MS: i64 = 300_000;
/// A running attempt with no word from either end for this long has failed.
pub const STALL_MS: i64 = 30_000;
/// How long the target waits for its sender.
const ACCEPT_SECS: u64 = 60;
/// Lines of history kept per job.
const HISTORY: usize = 30;
/// After a job, the next plan waits this long at most for the target's
/// inventory to show what landed; planning from an older one sends it again.
const LANDED_WAIT_MS: i64 = 60_000;
/// Progress is written to KV at most this often.
const PERSIST_PROGRESS_MS: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Commands are on their way to the two agents.
    Planned,
    Running,
    Done,
    /// The last attempt failed; another follows at `next_attempt_at_ms`.
    Failed,
    /// Needs a human: a diverged target, or no common snapshot.
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub id: String,
    pub attempt: u32,
}

impl JobRecord {
    fn log(&mut self, line: String) {
        info!(job = %self.id, task = %self.task, dataset = %self.dataset, target = %self.target_node, "{line}");
        if self.history.len() >= HISTORY {
            self.history.remove(0);
        }
        self.history.push(format!(
            "{} {line}",
            chrono::Utc::now().format("%H:%M:%S%.3f")
        ));
    }

    fn active(&self) -> bool {
        matches!(self.state, JobState::Planned | JobState::Running)
    }
}

/// Jobs by pairing key, and when each was last written to KV.
#[derive(Default)]
pub struct Jobs {
    pub records: BTreeMap<String, JobRecord>,
    persisted_ms: BTreeMap<String, i64>,
    seq: u64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn backoff_ms(attempt: u32) -> i64 {
    let shift = attempt.saturating_sub(1).min(20);
    (BACKOFF_FIRST_MS << shift).min(BACKOFF_MAX_MS)
}

/// Hold tags name the task: each pairing protects its own base.
pub fn hold_tag(task: &str) -> String {
    format!("zdr-repl-{task}")
}

/// An attempt a former leader started: (source node, target node, attempt id).
pub type Abandoned = (String, String, String);

/// Loads the records made before. An attempt that was under way belongs to a
/// coordinator that is gone: it is failed and retried, and returned, to be
/// cancelled on both agents (it may still run there) by [`cancel_abandoned`]
/// once this coordinator leads.
pub async fn restore(state: &State) -> Vec<Abandoned> {
    let mut jobs = state.jobs.lock().await;
    jobs.records.clear();
    let mut abandoned = Vec::new();
    let Ok(mut keys) = state.stores.jobs.keys().await else {
        return abandoned;
    };
    use futures::StreamExt;
    while let Some(Ok(key)) = keys.next().await {
        let Ok(Some(raw)) = state.stores.jobs.get(&key).await else {
            continue;
        };
        match serde_json::from_slice::<JobRecord>(&raw) {
            Ok(mut r) => {
                r.moving_holds_to = None;
                if r.active() {
                    abandoned.push((
                        r.source_node.clone(),
                        r.target_node.clone(),
                        r.attempt_id.clone(),
                    ));
                    r.state = JobState::Failed;
                    r.error = Some("the coordinator changed during the attempt".into());
                    // Time for the cancel to reach the agents before the retry.
                    r.next_attempt_at_ms = Some(now_ms() + BACKOFF_FIRST_MS);
                    r.log("attempt abandoned and cancelled: the coordinator changed".into());
                }
                jobs.records.insert(key, r);
            }
            Err(e) => warn!(key, error = %e, "unreadable job record in KV; skipped"),
        }
    }
    abandoned
}

/// Cancels a former leader's attempts on their agents (commands go out only
/// from the leader, so call this after taking the lead).
pub fn cancel_abandoned(state: &Arc<State>, abandoned: Vec<Abandoned>) {
    for (source, target, attempt) in abandoned {
        let st = state.clone();
        tokio::spawn(async move { cancel(&st, &source, &target, &attempt).await });
    }
}

async fn persist(state: &State, key: &str, rec: &JobRecord) {
    if let Ok(raw) = serde_json::to_vec(rec) {
        if let Err(e) = state.stores.jobs.put(key, raw.into()).await {
            warn!(key, error = %e, "could not persist a job record");
        }
    }
}

/// Starts what is due: new runs on schedule, retries after their backoff.
/// Fails attempts that went silent. Runs on the leader every few seconds.
pub async fn tick(state: &Arc<State>) {
    let t = now();
    let t_ms = now_ms();
    let pairings = state.pairings.read().await.pairings.clone();
    let mut to_start = Vec::new();
    let mut to_cancel = Vec::new();
    {
        let fleet = state.fleet.read().await;
        let policy = state.policy.read().await;
        let Some(p) = policy.as_ref() else { return };
        let mut jobs = state.jobs.lock().await;
        let offline = state.config.offline_after.as_secs() as i64;
        for pairing in &pairings {
            let key = bus::pairing_key(&pairing.task, &pairing.source_node, &pairing.dataset);
            if let Some(rec) = jobs.records.get_mut(&key) {
                if rec.active() && t_ms - rec.updated_at_ms > STALL_MS {
                    to_cancel.push((
                        rec.source_node.clone(),
                        rec.target_node.clone(),
                        rec.attempt_id.clone(),
                    ));
                    fail_attempt(
                        rec,
                        format!("no word from either agent for {} s", STALL_MS / 1000),
                        false,
                    );
                    let r = rec.clone();
                    persist(state, &key, &r).await;
                    continue;
                }
            }
            let Some(task) = p.tasks.iter().find(|x| x.name == pairing.task) else {
                continue;
            };
            // A parent that is copied too lands first: receiving it later into
            // the placeholder made for its child's sake would need -F.
            if parent_first(pairing, &pairings, &jobs.records) {
                continue;
            }
            let rec = jobs.records.get(&key);
            // A new send would hold its snapshot while the last base's holds move.
            if rec.is_some_and(|r| r.active() || r.moving_holds_to.is_some()) {
                continue;
            }
            let due = match rec {
                Some(r) if r.state == JobState::Failed => {
                    r.next_attempt_at_ms.is_none_or(|at| t_ms >= at)
                }
                Some(r) => r
                    .last_success_ms
                    .max(Some(r.started_at_ms))
                    .is_none_or(|last| t_ms - last >= (task.schedule.every.secs() as i64) * 1000),
                None => true,
            };
            let in_window = task.schedule.window.as_ref().is_none_or(|w| {
                use chrono::Timelike;
                let at = chrono::Utc::now();
                w.contains((at.hour() * 60 + at.minute()) as u16)
            });
            if !due || !in_window {
                continue;
            }
            if !fleet.online(&pairing.source_node, t, offline)
                || !fleet.online(&pairing.target_node, t, offline)
            {
                continue;
            }
            let busy = jobs.records.values().any(|r| {
                r.active()
                    && r.target_node == pairing.target_node
                    && r.target_dataset == pairing.target_dataset
            });
            if busy {
                continue;
            }
            let Some(src) = fleet.dataset(&pairing.source_node, &pairing.dataset) else {
                continue;
            };
            let tgt = fleet
                .dataset(&pairing.target_node, &pairing.target_dataset)
                .map(|d| d.snapshots.as_slice())
                .unwrap_or(&[]);
            if let Some(r) = jobs.records.get(&key) {
                if awaiting_landed_inventory(r, tgt, t_ms) {
                    continue;
                }
            }
            let planned = transfer_plan::plan(
                &src.snapshots,
                tgt,
                task.keep_intermediates,
                task.allow_rollback,
            );
            let previous = jobs.records.get(&key).cloned();
            jobs.seq += 1;
            let seq = jobs.seq;
            match planned {
                Ok(None) => {
                    if let Some(r) = jobs.records.get_mut(&key) {
                        r.last_success_ms = Some(t_ms);
                        if r.state != JobState::Done {
                            r.state = JobState::Done;
                            r.error = None;
                            r.log("up to date".into());
                        }
                        let r = r.clone();
                        persist(state, &key, &r).await;
                    }
                }
                Ok(Some(plan)) => {
                    let steps = steps_of(&plan.steps, &src.snapshots);
                    if steps.is_empty() {
                        continue;
                    }
                    let retry = previous.as_ref().filter(|r| r.state == JobState::Failed);
                    let mut rec = new_record(pairing, &state.config.instance, seq, steps, t_ms);
                    if let Some(prev) = retry {
                        rec.attempt = prev.attempt;
                        rec.discard_partial = prev.discard_partial;
                        rec.failed_attempt = prev.failed_attempt.clone();
                        rec.history = prev.history.clone();
                    }
                    rec.last_success_ms = previous.as_ref().and_then(|r| r.last_success_ms);
                    rec.attempt += 1;
                    rec.log(format!(
                        "planned {} step(s): {}",
                        rec.steps.len(),
                        describe(&rec.steps)
                    ));
                    jobs.records.insert(key.clone(), rec);
                    to_start.push(key);
                }
                Err(e) => {
                    let blocked = JobRecord {
                        state: JobState::Blocked,
                        error: Some(e.to_string()),
                        last_success_ms: previous.as_ref().and_then(|r| r.last_success_ms),
                        history: previous.map(|r| r.history).unwrap_or_default(),
                        ..new_record(pairing, &state.config.instance, seq, Vec::new(), t_ms)
                    };
                    let mut blocked = blocked;
                    blocked.log(format!("blocked: {e}"));
                    persist(state, &key, &blocked).await;
                    jobs.records.insert(key, blocked);
                }
            }
        }
    }
    // Never awaited here: the leader's loop must not wait on agents.
    for (source, target, attempt) in to_cancel {
        let st = state.clone();
        tokio::spawn(async move { cancel(&st, &source, &target, &attempt).await });
    }
    for key in to_start {
        let st = state.clone();
        tokio::spawn(async move { start_attempt(&st, &key).await });
    }
    update_rates(state).await;
}

/// Whether the target's inventory does not show the snapshot the last job
/// landed yet (for a while after it).
fn awaiting_landed_inventory(rec: &JobRecord, target: &[SnapshotInfo], t_ms: i64) -> bool {
    let (JobState::Done, Some(done), Some(last)) =
        (rec.state, rec.finished_at_ms, rec.steps.last())
    else {
        return false;
    };
    t_ms - done < LANDED_WAIT_MS && !target.iter().any(|s| s.guid == last.expect.guid)
}

/// Whether an ancestor of the pairing's dataset, copied by the same task from
/// the same node, has never been copied yet.
fn parent_first(pairing: &Pairing, all: &[Pairing], records: &BTreeMap<String, JobRecord>) -> bool {
    let Ok(name) = zdr_common::DatasetName::parse(&pairing.dataset) else {
        return false;
    };
    std::iter::successors(name.parent(), |p| p.parent()).any(|ancestor| {
        all.iter().any(|q| {
            q.task == pairing.task
                && q.source_node == pairing.source_node
                && q.dataset == ancestor.as_str()
                && records
                    .get(&bus::pairing_key(&q.task, &q.source_node, &q.dataset))
                    .is_none_or(|r| r.last_success_ms.is_none())
        })
    })
}

fn new_record(
    pairing: &Pairing,
    instance: &str,
    seq: u64,
    steps: Vec<PlannedStep>,
    t_ms: i64,
) -> JobRecord {
    JobRecord {
        id: format!("{instance}-{t_ms}-{seq}"),
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
        bytes: 0,
        size_hint: None,
        bytes_per_sec: 0,
        eta_secs: None,
        rate_limit: None,
        error: None,
        started_at_ms: t_ms,
        updated_at_ms: t_ms,
        finished_at_ms: None,
        next_attempt_at_ms: None,
        last_success_ms: None,
        moving_holds_to: None,
        failed_attempt: None,
        history: Vec::new(),
    }
}

/// The plan's steps as streams; a rollback becomes `-F` on the step after it.
fn steps_of(steps: &[Step], source: &[zdr_common::wire::SnapshotInfo]) -> Vec<PlannedStep> {
    let guid = |name: &str| source.iter().find(|s| s.name == name).map(|s| s.guid);
    let mut out = Vec::new();
    let mut force = None;
    for step in steps {
        let (stream, to) = match step {
            Step::Rollback { discards, .. } => {
                force = Some(discards.clone());
                continue;
            }
            Step::Full { snapshot } => (
                StreamSpec::Full {
                    snapshot: snapshot.clone(),
                },
                snapshot,
            ),
            Step::Incremental {
                from,
                to,
                intermediates,
            } => (
                StreamSpec::Incremental {
                    from: from.clone(),
                    to: to.clone(),
                    intermediates: *intermediates,
                    from_bookmark: false,
                },
                to,
            ),
        };
        let Some(g) = guid(to) else { continue };
        let discards = force.take();
        out.push(PlannedStep {
            stream,
            expect: SnapshotRef {
                name: to.clone(),
                guid: g,
            },
            force: discards.is_some(),
            discards: discards.unwrap_or_default(),
        });
    }
    out
}

fn describe(steps: &[PlannedStep]) -> String {
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
                    ..
                } => format!(
                    "{} @{from} @{to}{f}",
                    if *intermediates { "-I" } else { "-i" }
                ),
                StreamSpec::Resume { .. } => "resume".into(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn fail_attempt(rec: &mut JobRecord, why: String, discard_partial: bool) {
    let wait = backoff_ms(rec.attempt);
    rec.failed_attempt = Some(FailedAttempt {
        id: rec.attempt_id.clone(),
        attempt: rec.attempt,
    });
    rec.state = JobState::Failed;
    rec.error = Some(why.clone());
    rec.discard_partial = discard_partial;
    rec.next_attempt_at_ms = Some(now_ms() + wait);
    rec.updated_at_ms = now_ms();
    rec.log(format!(
        "attempt {} failed: {why}; retrying in {} s",
        rec.attempt,
        wait / 1000
    ));
}

/// Token for the data plane: 32 random bytes, hex.
fn token() -> JobSecret {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    JobSecret(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sends the current step's two commands.
async fn start_attempt(state: &Arc<State>, key: &str) {
    let Some(mut rec) = state.jobs.lock().await.records.get(key).cloned() else {
        return;
    };
    let Some(step) = rec.steps.get(rec.step).cloned() else {
        return;
    };
    let attempt_id = format!("{}-s{}-a{}", rec.id, rec.step, rec.attempt);
    let token = token();
    let tag = hold_tag(&rec.task);
    let receive = ReceiveJob {
        job: attempt_id.clone(),
        token: token.clone(),
        source_node: rec.source_node.clone(),
        dataset: rec.target_dataset.clone(),
        force: step.force,
        discards: step.discards.clone(),
        base: None,
        discard_partial: rec.discard_partial,
        expect: step.expect.clone(),
        hold_tag: tag.clone(),
        accept_secs: ACCEPT_SECS,
    };
    let (raw, compress) = {
        let policy = state.policy.read().await;
        policy
            .as_ref()
            .and_then(|p| p.tasks.iter().find(|t| t.name == rec.task))
            .map(|t| (t.raw, t.compress == zdr_schemas::tasks::Compress::Zstd))
            .unwrap_or((true, false))
    };
    {
        let mut jobs = state.jobs.lock().await;
        if let Some(cur) = jobs.records.get_mut(key) {
            cur.attempt_id = attempt_id.clone();
            cur.updated_at_ms = now_ms();
        }
    }
    rec.attempt_id = attempt_id.clone();
    let offer = match state
        .send_command(&rec.target_node, &Command::Receive(receive))
        .await
    {
        Ok(r) if r.outcome == Outcome::Done && r.offer.is_some() => r.offer.expect("checked"),
        Ok(r) => {
            let why = format!("target {}: {}", rec.target_node, r.message);
            return fail_current(state, key, &attempt_id, why, false).await;
        }
        Err(e) => {
            return fail_current(state, key, &attempt_id, format!("target: {e}"), false).await
        }
    };
    let resumed = offer.resume_token.is_some();
    let stream = match &offer.resume_token {
        Some(t) => StreamSpec::Resume { token: t.clone() },
        None => step.stream.clone(),
    };
    let rate = initial_rate(state, &rec).await;
    let send = SendJob {
        job: attempt_id.clone(),
        token,
        target_node: rec.target_node.clone(),
        target_addr: offer.addr.clone(),
        dataset: rec.dataset.clone(),
        stream,
        raw,
        compress,
        bytes_per_sec: rate,
        hold_tag: tag,
    };
    let sent = state
        .send_command(&rec.source_node, &Command::Send(send))
        .await;
    let why = match sent {
        Ok(r) if r.outcome == Outcome::Done => None,
        Ok(r) => Some(format!("source {}: {}", rec.source_node, r.message)),
        Err(e) => Some(format!("source: {e}")),
    };
    if let Some(why) = why {
        cancel(state, "", &rec.target_node, &attempt_id).await;
        // A resume the source cannot continue is dropped on the next attempt.
        return fail_current(state, key, &attempt_id, why, resumed).await;
    }
    let mut jobs = state.jobs.lock().await;
    if let Some(cur) = jobs.records.get_mut(key) {
        // Progress may have arrived before this reply: the attempt may be Running already.
        if cur.attempt_id == attempt_id && cur.active() {
            cur.state = JobState::Running;
            cur.resumed = resumed;
            cur.discard_partial = false;
            cur.rate_limit = rate;
            cur.updated_at_ms = now_ms();
            cur.log(format!(
                "attempt {} of step {}: {}{} to {} at {}",
                cur.attempt,
                cur.step + 1,
                if resumed {
                    "resuming the saved partial receive".to_string()
                } else {
                    describe(std::slice::from_ref(&step))
                },
                match rate {
                    Some(r) => format!(", limited to {r} B/s"),
                    None => String::new(),
                },
                cur.target_node,
                offer.addr
            ));
            let r = cur.clone();
            persist(state, key, &r).await;
        }
    }
}

async fn fail_current(state: &State, key: &str, attempt_id: &str, why: String, discard: bool) {
    let mut jobs = state.jobs.lock().await;
    if let Some(cur) = jobs.records.get_mut(key) {
        if cur.attempt_id == attempt_id && cur.active() {
            fail_attempt(cur, why, discard);
            let r = cur.clone();
            persist(state, key, &r).await;
        }
    }
}

async fn cancel(state: &State, source: &str, target: &str, attempt: &str) {
    for node in [source, target].into_iter().filter(|n| !n.is_empty()) {
        let cmd = Command::CancelJob {
            job: attempt.to_string(),
        };
        // Best effort: the job may be over there already.
        let _ = state.send_command(node, &cmd).await;
    }
}

/// Applies one agent's report on a job.
pub async fn on_update(state: &Arc<State>, update: JobUpdate) {
    let mut jobs = state.jobs.lock().await;
    let failed_here = |r: &JobRecord| {
        r.failed_attempt
            .as_ref()
            .is_some_and(|f| f.id == update.job)
    };
    let Some((key, rec)) = jobs
        .records
        .iter_mut()
        .find(|(_, r)| r.attempt_id == update.job || failed_here(r))
    else {
        return; // an older attempt, or a job this coordinator never started
    };
    let key = key.clone();
    let expected_node = match update.role {
        JobRole::Source => &rec.source_node,
        JobRole::Target => &rec.target_node,
    };
    if &update.node != expected_node {
        warn!(job = %update.job, node = %update.node, "job update from a node not in the job; dropped");
        return;
    }
    if rec.attempt_id != update.job || !rec.active() {
        // The other end's word on an attempt that already failed is often the
        // cause: a target's TLS error arrives after the source's broken pipe.
        let Some(attempt) = rec
            .failed_attempt
            .as_ref()
            .filter(|f| f.id == update.job)
            .map(|f| f.attempt)
        else {
            return;
        };
        if update.state != JobPhase::Failed {
            return;
        }
        let line = format!("{} {}: {}", side(update.role), update.node, update.message);
        rec.log(format!("attempt {attempt} also failed at the {line}"));
        if rec.attempt_id == update.job {
            rec.error = Some(match rec.error.take() {
                Some(first) => format!("{first}; {line}"),
                None => line,
            });
        }
        let rec = rec.clone();
        drop(jobs);
        persist(state, &key, &rec).await;
        return;
    }
    rec.updated_at_ms = now_ms();
    rec.state = JobState::Running;
    if update.role == JobRole::Source || update.state != JobPhase::Running {
        rec.bytes = update.bytes;
        rec.size_hint = update.size_hint.or(rec.size_hint);
        rec.bytes_per_sec = update.bytes_per_sec;
        rec.eta_secs = match (rec.size_hint, update.bytes_per_sec) {
            (Some(size), rate) if rate > 0 => Some(size.saturating_sub(update.bytes) / rate),
            _ => None,
        };
    }
    let mut follow_up = None;
    match (update.role, update.state) {
        (_, JobPhase::Running) => {
            let last = jobs_persisted(&jobs.persisted_ms, &key);
            if now_ms() - last < PERSIST_PROGRESS_MS {
                return;
            }
        }
        (JobRole::Source, JobPhase::Done) => {
            let rec = jobs.records.get_mut(&key).expect("found above");
            rec.log(format!("source: {}", update.message));
        }
        (role, JobPhase::Failed) => {
            let rec = jobs.records.get_mut(&key).expect("found above");
            let discard = role == JobRole::Source && rec.resumed;
            let other = if role == JobRole::Source {
                rec.target_node.clone()
            } else {
                rec.source_node.clone()
            };
            follow_up = Some(FollowUp::Cancel(other, rec.attempt_id.clone()));
            fail_attempt(
                rec,
                format!("{} {}: {}", side(role), update.node, update.message),
                discard,
            );
        }
        (JobRole::Target, JobPhase::Done) => {
            let rec = jobs.records.get_mut(&key).expect("found above");
            let step = rec.steps[rec.step].clone();
            rec.log(format!("target: {}", update.message));
            match &update.landed {
                Some(l) if l.guid == step.expect.guid => {
                    rec.step += 1;
                    rec.resumed = false;
                    if rec.step < rec.steps.len() {
                        rec.state = JobState::Planned;
                        rec.attempt = 1;
                        follow_up = Some(FollowUp::Next);
                    } else {
                        let t = now_ms();
                        rec.state = JobState::Done;
                        rec.error = None;
                        rec.finished_at_ms = Some(t);
                        rec.last_success_ms = Some(t);
                        rec.eta_secs = Some(0);
                        rec.log(format!(
                            "done: {}@{} (GUID {}) is on {} in {:.1} s",
                            rec.target_dataset,
                            step.expect.name,
                            step.expect.guid,
                            rec.target_node,
                            (t - rec.started_at_ms) as f64 / 1000.0
                        ));
                        rec.moving_holds_to = Some(step.expect.name.clone());
                        follow_up = Some(FollowUp::MoveHolds(step.expect.name.clone()));
                    }
                }
                Some(l) => {
                    // A resume finished an earlier stream: plan again from what is there now.
                    let why = format!(
                        "the resumed receive landed @{} (GUID {}), not @{}; planning again",
                        l.name, l.guid, step.expect.name
                    );
                    rec.state = JobState::Failed;
                    rec.error = Some(why.clone());
                    rec.next_attempt_at_ms = Some(now_ms() + BACKOFF_FIRST_MS);
                    rec.log(why);
                }
                None => {
                    let why = "the target reported success without the snapshot it landed".into();
                    fail_attempt(rec, why, false);
                }
            }
        }
    }
    let rec = jobs.records.get(&key).expect("found above").clone();
    jobs.persisted_ms.insert(key.clone(), now_ms());
    drop(jobs);
    persist(state, &key, &rec).await;
    let st = state.clone();
    match follow_up {
        None => {}
        Some(FollowUp::Cancel(node, attempt)) => {
            tokio::spawn(async move { cancel(&st, "", &node, &attempt).await });
        }
        Some(FollowUp::Next) => {
            tokio::spawn(async move { start_attempt(&st, &key).await });
        }
        Some(FollowUp::MoveHolds(keep)) => {
            tokio::spawn(async move {
                move_holds(&st, &rec, &keep).await;
                prune_replica(&st, &key, &rec).await;
                if let Some(r) = st.jobs.lock().await.records.get_mut(&key) {
                    r.moving_holds_to = None;
                }
            });
        }
    }
}

fn side(role: JobRole) -> &'static str {
    match role {
        JobRole::Source => "source",
        JobRole::Target => "target",
    }
}

fn jobs_persisted(persisted: &BTreeMap<String, i64>, key: &str) -> i64 {
    persisted.get(key).copied().unwrap_or(0)
}

enum FollowUp {
    Cancel(String, String),
    Next,
    MoveHolds(String),
}

/// The new common snapshot is held on both sides; older holds of the pairing go.
async fn move_holds(state: &State, rec: &JobRecord, keep: &str) {
    let tag = hold_tag(&rec.task);
    for (node, dataset) in [
        (&rec.source_node, &rec.dataset),
        (&rec.target_node, &rec.target_dataset),
    ] {
        let cmd = Command::ReleaseHolds {
            dataset: dataset.clone(),
            tag: tag.clone(),
            keep: keep.to_string(),
        };
        match state.send_command(node, &cmd).await {
            Ok(r) if r.outcome == Outcome::Done => info!(node, %dataset, "{}", r.message),
            Ok(r) => {
                warn!(node, %dataset, message = %r.message, "moving the replication hold failed")
            }
            Err(e) => warn!(node, %dataset, error = %e, "moving the replication hold failed"),
        }
    }
}

/// Applies the task's retention (the source class's tiers when it has none)
/// to the copy. Runs before the pairing's next job may start.
async fn prune_replica(state: &State, key: &str, rec: &JobRecord) {
    let cmd = {
        let policy = state.policy.read().await;
        let fleet = state.fleet.read().await;
        let Some(p) = policy.as_ref() else { return };
        let Some(task) = p.tasks.iter().find(|t| t.name == rec.task) else {
            return;
        };
        let class = fleet
            .dataset(&rec.source_node, &rec.dataset)
            .and_then(|d| d.class.as_ref())
            .and_then(|c| p.policy.classes.get(c));
        let tiers = match (&task.retention, class) {
            (Some(r), _) => r.tiers.clone(),
            (None, Some(c)) => c.tiers.clone(),
            (None, None) => return,
        };
        Command::PruneReplica(PruneReplica {
            dataset: rec.target_dataset.clone(),
            task: rec.task.clone(),
            tiers,
            immutable_for_secs: class.map_or(0, |c| c.immutable_for.secs()),
        })
    };
    let line = match state.send_command(&rec.target_node, &cmd).await {
        Ok(r) if r.outcome == Outcome::Done && r.effects.destroyed.is_empty() => return,
        Ok(r) if r.outcome == Outcome::Done => format!("retention on the copy: {}", r.message),
        Ok(r) => format!("retention on the copy failed: {}", r.message),
        Err(e) => format!("retention on the copy failed: {e}"),
    };
    if let Some(r) = state.jobs.lock().await.records.get_mut(key) {
        r.log(line);
    }
}

fn site_of(state_policy: &zdr_common::policy::Policy, node: &str) -> Option<String> {
    state_policy.nodes.get(node).map(|n| n.site.clone())
}

/// The rates the bandwidth rules give every running job now.
async fn allocation(state: &State) -> BTreeMap<String, Option<std::num::NonZeroU64>> {
    let policy = state.policy.read().await;
    let Some(p) = policy.as_ref() else {
        return BTreeMap::new();
    };
    let jobs = state.jobs.lock().await;
    let demands: Vec<crate::bandwidth::JobDemand> = jobs
        .records
        .values()
        .filter(|r| r.active())
        .map(|r| {
            let (a, b) = (
                site_of(&p.policy, &r.source_node),
                site_of(&p.policy, &r.target_node),
            );
            crate::bandwidth::JobDemand {
                id: r.attempt_id.clone(),
                task: r.task.clone(),
                link: match (a, b) {
                    (Some(a), Some(b)) if a != b => Some((a, b)),
                    _ => None,
                },
            }
        })
        .collect();
    crate::bandwidth::allocate(&demands, &p.tasks, &p.links, chrono::Utc::now())
}

async fn initial_rate(state: &State, rec: &JobRecord) -> Option<u64> {
    allocation(state)
        .await
        .get(&rec.attempt_id)
        .copied()
        .flatten()
        .map(|r| r.get())
}

/// Pushes changed rates to running sends (a window opened, a job came or went).
async fn update_rates(state: &Arc<State>) {
    let rates = allocation(state).await;
    let mut changes = Vec::new();
    {
        let mut jobs = state.jobs.lock().await;
        for rec in jobs.records.values_mut() {
            if rec.state != JobState::Running {
                continue;
            }
            let Some(rate) = rates.get(&rec.attempt_id) else {
                continue;
            };
            let rate = rate.map(|r| r.get());
            if rate != rec.rate_limit {
                rec.rate_limit = rate;
                rec.log(match rate {
                    Some(r) => format!("rate now {r} B/s"),
                    None => "rate now unlimited".into(),
                });
                changes.push((rec.source_node.clone(), rec.attempt_id.clone(), rate));
            }
        }
    }
    for (node, job, rate) in changes {
        let cmd = Command::SetRate {
            job,
            bytes_per_sec: rate,
        };
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = st.send_command(&node, &cmd).await {
                warn!(node, error = %e, "could not change a job's rate");
            }
        });
    }
}

/// For the status API: every job, newest first.
pub async fn list(state: &State) -> Vec<JobRecord> {
    let mut all: Vec<JobRecord> = state.jobs.lock().await.records.values().cloned().collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, guid: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: guid,
            creation: guid as i64,
            used: 0,
            userrefs: 0,
        }
    }

    #[test]
    fn a_rollback_becomes_force_on_the_next_step() {
        let source = vec![s("a", 1), s("b", 2), s("c", 3)];
        let steps = steps_of(
            &[
                Step::Rollback {
                    to: "a".into(),
                    discards: vec!["x".into()],
                },
                Step::Incremental {
                    from: "a".into(),
                    to: "c".into(),
                    intermediates: true,
                },
            ],
            &source,
        );
        assert_eq!(steps.len(), 1);
        assert!(steps[0].force);
        assert_eq!(steps[0].discards, vec!["x".to_string()]);
        assert_eq!(
            steps[0].expect,
            SnapshotRef {
                name: "c".into(),
                guid: 3
            }
        );
    }

    #[test]
    fn the_next_plan_waits_for_the_target_inventory_to_show_the_landing() {
        let pairing = Pairing {
            task: "t".into(),
            source_node: "a".into(),
            dataset: "tank/d".into(),
            target_node: "b".into(),
            target_dataset: "backup/d".into(),
            reason: String::new(),
        };
        let source = vec![s("s1", 1), s("s2", 2)];
        let steps = steps_of(
            &[Step::Incremental {
                from: "s1".into(),
                to: "s2".into(),
                intermediates: true,
            }],
            &source,
        );
        let mut rec = new_record(&pairing, "c", 1, steps, 0);
        assert!(!awaiting_landed_inventory(&rec, &[s("s1", 1)], 1_000));
        rec.state = JobState::Done;
        rec.finished_at_ms = Some(1_000);
        // Lagging: the target's inventory does not list @s2 (GUID 2) yet.
        assert!(awaiting_landed_inventory(&rec, &[s("s1", 1)], 2_000));
        assert!(!awaiting_landed_inventory(
            &rec,
            &[s("s1", 1), s("s2", 2)],
            2_000
        ));
        // Not for ever: a snapshot destroyed on the target meanwhile is planned for again.
        assert!(!awaiting_landed_inventory(
            &rec,
            &[s("s1", 1)],
            1_000 + LANDED_WAIT_MS
        ));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff_ms(1), BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(2), 2 * BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(3), 4 * BACKOFF_FIRST_MS);
        assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    }
}
