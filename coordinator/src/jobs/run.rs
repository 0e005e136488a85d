//! The shell around the records: reads the shared state under its locks,
//! asks the pure parts (`schedule`, `record`, `rates`) what to do, drops the
//! locks, then persists and sends. No lock is held across an await; every
//! task it starts goes into the leader's `JoinSet`, so a shutdown or a lost
//! lease stops them all.

use std::sync::Arc;

use futures::StreamExt;
use tokio::task::JoinSet;
use tracing::{info, warn};
use zdr_common::wire::{
    BucketRestoreJob, Command, JobPhase, JobRole, JobSecret, JobUpdate, Outcome, PruneReplica,
    ReceiveJob, SendJob, StreamSpec, UploadJob,
};

use super::record::{describe, drops_resume, floor_reason, Effect, JobKind, JobRecord, UploadInfo};
use super::schedule::{self, Decision, Ends, NeverCopied};
use super::{hold_tag, rates, restore_tag, ACCEPT_SECS};
use crate::bus;
use crate::drills;
use crate::offsite::{self, UploadDecision};
use crate::restore::plan::{replan, Replan};
use crate::state::{now_ms, State};

/// Writes one record to KV.
async fn persist(state: &State, key: &str, rec: &JobRecord) {
    if let Ok(raw) = serde_json::to_vec(rec) {
        if let Err(e) = state.stores.jobs.put(key, raw.into()).await {
            warn!(key, error = %e, "could not persist a job record");
        }
    }
}

/// Persists the record if the effects say so, then starts the rest as tasks.
async fn carry_out(
    state: &Arc<State>,
    tasks: &mut JoinSet<()>,
    key: &str,
    rec: JobRecord,
    effects: Vec<Effect>,
) {
    for effect in effects {
        let st = state.clone();
        let key = key.to_string();
        match effect {
            Effect::Persist => persist(state, &key, &rec).await,
            Effect::Start => {
                tasks.spawn(async move { start_attempt(&st, &key).await });
            }
            Effect::Cancel { nodes, attempt } => {
                tasks.spawn(async move { cancel(&st, &nodes, &attempt).await });
            }
            Effect::MoveHolds { keep } if rec.kind == JobKind::Upload => {
                let rec = rec.clone();
                tasks.spawn(async move {
                    release_upload_hold(&st, &rec, &keep).await;
                    if let Some(r) = st.jobs().get_mut(&key) {
                        r.holds_moved();
                    }
                });
            }
            Effect::MoveHolds { keep } => {
                let rec = rec.clone();
                tasks.spawn(async move {
                    move_holds(&st, &rec, &keep).await;
                    prune_replica(&st, &key, &rec).await;
                    if let Some(r) = st.jobs().get_mut(&key) {
                        r.holds_moved();
                    }
                });
            }
            Effect::TakeHolds => {
                let rec = rec.clone();
                tasks.spawn(async move {
                    let confirmed = crate::restore::take_holds(&st, &key, &rec).await;
                    settle(&st, &key, confirmed, |r| r.holds_taken(confirmed)).await;
                });
            }
            Effect::DropHolds => {
                let rec = rec.clone();
                tasks.spawn(async move {
                    let confirmed = drop_holds(&st, &rec).await;
                    settle(&st, &key, confirmed, |r| r.holds_dropped(confirmed)).await;
                });
            }
            Effect::Verify => {
                tasks.spawn(async move { crate::drills::verify(&st, &key).await });
            }
        }
    }
}

/// Starts what is due: new runs on schedule, retries after their backoff.
/// Fails attempts that went silent. Runs on the leader every second.
pub async fn tick(state: &Arc<State>, tasks: &mut JoinSet<()>, now_ms: i64) {
    let mut work: Vec<(String, JobRecord, Vec<Effect>)> = Vec::new();
    let pushes;
    {
        let pairings = state.pairings();
        let fleet = state.fleet();
        let policy = state.policy();
        let Some(p) = policy.as_ref() else { return };
        let mut jobs = state.jobs();
        let offline = state.config().offline_after.as_secs() as i64;
        let t = now_ms / 1000;
        let key_of =
            |q: &crate::pairing::Pairing| bus::pairing_key(&q.task, &q.source_node, &q.dataset);
        for pairing in &pairings.pairings {
            let key = key_of(pairing);
            if let Some(rec) = jobs.get_mut(&key) {
                let fx = rec.check_stall(now_ms);
                if !fx.is_empty() {
                    work.push((key, rec.clone(), fx));
                }
            }
        }
        for (key, rec) in jobs.entries_mut() {
            if rec.kind == JobKind::Upload {
                let fx = rec.check_stall(now_ms);
                if !fx.is_empty() {
                    work.push((key.clone(), rec.clone(), fx));
                }
            }
        }
        plan_uploads(
            p,
            &fleet,
            &mut jobs,
            &state.config().instance,
            (t, offline),
            now_ms,
            &mut work,
        );
        for (key, rec) in jobs.entries_mut() {
            // Both look at listings only in the rare states they act in.
            let mut listed = drills::pick_again(rec, &fleet, now_ms);
            if listed.is_empty() && rec.retry_waits() {
                listed = fleet
                    .dataset(&rec.target_node, &rec.target_dataset)
                    .map(|d| rec.found_landed(&d.snapshots, now_ms))
                    .unwrap_or_default();
            }
            if !listed.is_empty() {
                work.push((key.clone(), rec.clone(), listed));
                continue;
            }
            let fx = rec.restore_tick(now_ms);
            if !fx.is_empty() {
                work.push((key.clone(), rec.clone(), fx));
            }
        }
        let never = NeverCopied::new(&pairings.pairings, |q| jobs.get(&key_of(q)));
        let mut busy = schedule::busy_targets(jobs.records());
        for pairing in &pairings.pairings {
            let Some(task) = p.tasks.iter().find(|x| x.name == pairing.task) else {
                continue;
            };
            if never.parent_first(pairing) {
                continue;
            }
            // A restore is writing the source: a plan from its half-landed
            // history would read the copy as diverged.
            if busy.contains(&(pairing.source_node.clone(), pairing.dataset.clone())) {
                continue;
            }
            let key = key_of(pairing);
            let ends = Ends {
                source_online: fleet.online(&pairing.source_node, t, offline),
                target_online: fleet.online(&pairing.target_node, t, offline),
                source: fleet.dataset(&pairing.source_node, &pairing.dataset),
                target: fleet.dataset(&pairing.target_node, &pairing.target_dataset),
            };
            let target = (pairing.target_node.clone(), pairing.target_dataset.clone());
            let previous = jobs.get(&key);
            match schedule::decide(task, previous, &ends, busy.contains(&target), now_ms) {
                Decision::Wait(_) => {}
                Decision::UpToDate => {
                    if let Some(r) = jobs.get_mut(&key) {
                        let fx = r.up_to_date(now_ms);
                        work.push((key, r.clone(), fx));
                    }
                }
                Decision::Start {
                    steps,
                    discard_partial,
                } => {
                    let seq = jobs.next_seq();
                    let instance = &state.config().instance;
                    let mut rec =
                        JobRecord::new(JobKind::Replication, pairing, instance, seq, steps, now_ms)
                            .continue_from(jobs.get(&key), now_ms);
                    if let Some(why) = discard_partial {
                        rec.discard_partial = true;
                        rec.partial = None;
                        rec.log(
                            format!("the target's partial receive will be dropped: {why}"),
                            now_ms,
                        );
                    }
                    busy.insert(target);
                    jobs.insert(key.clone(), rec.clone());
                    work.push((key, rec, vec![Effect::Start]));
                }
                Decision::Blocked(why) => {
                    let rec = JobRecord::new(
                        JobKind::Replication,
                        pairing,
                        &state.config().instance,
                        jobs.next_seq(),
                        Vec::new(),
                        now_ms,
                    )
                    .block(jobs.get(&key), why.to_string(), now_ms);
                    jobs.insert(key.clone(), rec.clone());
                    work.push((key, rec, vec![Effect::Persist]));
                }
            }
        }
        let allocation = rates::allocation(p, jobs.records(), now_ms);
        pushes = rates::changes(&allocation, jobs.records_mut(), now_ms);
    }
    for (key, rec, effects) in work {
        carry_out(state, tasks, &key, rec, effects).await;
    }
    crate::drills::tick(state, tasks, now_ms).await;
    for change in pushes {
        let st = state.clone();
        tasks.spawn(async move {
            let cmd = Command::SetRate {
                job: change.attempt,
                bytes_per_sec: change.bytes_per_sec,
            };
            if let Err(e) = st.send_command(&change.source_node, &cmd).await {
                warn!(node = %change.source_node, error = %e, "could not change a job's rate");
            }
        });
    }
}

/// What each bucket task's datasets upload next (`crate::offsite`).
fn plan_uploads(
    p: &crate::state::PolicyState,
    fleet: &crate::fleet::Fleet,
    jobs: &mut super::Jobs,
    instance: &str,
    (t, offline): (i64, i64),
    now_ms: i64,
    work: &mut Vec<(String, JobRecord, Vec<Effect>)>,
) {
    for task in &p.buckets {
        let selector = offsite::Selector::new(&task.source);
        for (node, datasets) in &fleet.inventory {
            if !p.policy.nodes.contains_key(node) || !selector.node(node) {
                continue;
            }
            let online = fleet.online(node, t, offline);
            for inv in datasets.values().filter(|d| selector.dataset(d)) {
                let key = bus::pairing_key(&task.name, node, &inv.dataset);
                let previous = jobs.get(&key);
                match offsite::decide(task, previous, online, Some(inv), now_ms) {
                    UploadDecision::Wait => {}
                    UploadDecision::UpToDate => {
                        if let Some(r) = jobs.get_mut(&key) {
                            let fx = r.up_to_date(now_ms);
                            work.push((key, r.clone(), fx));
                        }
                    }
                    UploadDecision::Start(plan) => {
                        let (committed, verified) = previous
                            .and_then(|r| r.upload.as_ref())
                            .map(|u| (u.committed.clone(), u.verified.clone()))
                            .unwrap_or_default();
                        let pairing = offsite::pairing(task, node, &inv.dataset);
                        let seq = jobs.next_seq();
                        let mut rec = JobRecord::new(
                            JobKind::Upload,
                            &pairing,
                            instance,
                            seq,
                            vec![plan.step],
                            now_ms,
                        )
                        .continue_from(jobs.get(&key), now_ms);
                        if let Some(why) = plan.full_because {
                            rec.log(format!("a new chain starts with a full: {why}"), now_ms);
                        }
                        rec.upload = Some(UploadInfo {
                            committed,
                            parent: plan.parent,
                            raw: plan.raw,
                            encrypted: inv.encrypted,
                            lock: plan.lock,
                            verified,
                        });
                        jobs.insert(key.clone(), rec.clone());
                        work.push((key, rec, vec![Effect::Start]));
                    }
                }
            }
        }
    }
}

/// Applies one agent's report on a job.
pub async fn on_update(state: &Arc<State>, tasks: &mut JoinSet<()>, update: JobUpdate) {
    let (key, rec, effects) = {
        let mut jobs = state.jobs();
        let Some(key) = jobs.key_of_attempt(&update.job) else {
            return; // an older attempt, or a job this coordinator never started
        };
        let rec = jobs.get_mut(&key).expect("found above");
        if update.node != rec.node_of(update.role) {
            warn!(job = %update.job, node = %update.node, "job update from a node not in the job; dropped");
            return;
        }
        let effects = rec.apply(&update, now_ms());
        (key, rec.clone(), effects)
    };
    carry_out(state, tasks, &key, rec, effects).await;
}

/// Token for the data plane: 32 random bytes, hex.
fn token() -> JobSecret {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    JobSecret(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Records a failed start of `attempt` and persists it.
async fn fail_current(state: &State, key: &str, attempt: &str, why: String, discard: bool) {
    let rec = {
        let mut jobs = state.jobs();
        let Some(cur) = jobs.get_mut(key) else { return };
        if cur
            .attempt_failed(attempt, why, discard, now_ms())
            .is_empty()
        {
            return;
        }
        cur.clone()
    };
    persist(state, key, &rec).await;
}

/// Records that both ends took `attempt`'s commands, and persists it.
async fn mark_running(
    state: &State,
    key: &str,
    attempt: &str,
    resumed: bool,
    rate: Option<u64>,
    line: String,
) {
    let rec = {
        let mut jobs = state.jobs();
        let Some(cur) = jobs.get_mut(key) else { return };
        if cur
            .attempt_running(attempt, resumed, rate, line, now_ms())
            .is_empty()
        {
            return;
        }
        cur.clone()
    };
    persist(state, key, &rec).await;
}

/// Records that the target's retention floor refused `attempt`'s step, and persists it.
async fn floor_refused(
    state: &State,
    key: &str,
    attempt: &str,
    refusals: Vec<zdr_common::wire::FloorRefusal>,
) {
    let rec = {
        let mut jobs = state.jobs();
        let Some(cur) = jobs.get_mut(key) else { return };
        if cur.floor_refused(attempt, refusals, now_ms()).is_empty() {
            return;
        }
        cur.clone()
    };
    persist(state, key, &rec).await;
}

/// Sends the current step's two commands: `receive` to the target, then
/// `send` to the source with the target's address (and resume token).
async fn start_attempt(state: &Arc<State>, key: &str) {
    if state
        .jobs()
        .get(key)
        .is_some_and(|r| r.kind == JobKind::Upload)
    {
        return start_upload(state, key).await;
    }
    if state
        .jobs()
        .get(key)
        .is_some_and(|r| r.from_bucket().is_some())
    {
        return start_bucket_restore(state, key).await;
    }
    // A restore's copy as listed now: its plan may read a snapshot the
    // copy's retention has destroyed since.
    let copy = {
        let of = state
            .jobs()
            .get(key)
            .filter(|r| r.restore.is_some())
            .map(|r| (r.source_node.clone(), r.dataset.clone()));
        of.and_then(|(node, ds)| {
            let fleet = state.fleet();
            fleet.dataset(&node, &ds).map(|d| d.snapshots.clone())
        })
        .unwrap_or_default()
    };
    let (rec, attempt, step, gone) = {
        let mut jobs = state.jobs();
        let Some(rec) = jobs.get_mut(key) else { return };
        let gone = match replan(&rec.steps, rec.step, &copy) {
            Replan::Keep => None,
            Replan::Steps(steps) => {
                rec.replanned(steps, now_ms());
                None
            }
            Replan::Gone(why) => Some(why),
        };
        let Some(step) = rec.steps.get(rec.step).cloned() else {
            return;
        };
        let attempt = rec.begin_attempt(now_ms());
        (rec.clone(), attempt, step, gone)
    };
    if let Some(why) = gone {
        return fail_current(state, key, &attempt, why, false).await;
    }
    let token = token();
    // A restore holds the copy and what landed under different tags: only
    // the latter stops the destination's snapshots (`RESTORE_HOLD_PREFIX`).
    let (send_tag, tag) = match rec.kind {
        JobKind::Replication => (hold_tag(&rec.task), hold_tag(&rec.task)),
        JobKind::Restore | JobKind::Drill | JobKind::Upload => (
            restore_tag(JobRole::Source, &rec.id),
            restore_tag(JobRole::Target, &rec.id),
        ),
    };
    // A copy's target finds its class for the retention floor in its own
    // policy from the source dataset; the class named here can only lengthen it.
    let (source_dataset, class) = match rec.kind {
        JobKind::Replication => (
            Some(rec.dataset.clone()),
            state
                .fleet()
                .dataset(&rec.source_node, &rec.dataset)
                .and_then(|d| d.class.clone()),
        ),
        JobKind::Restore | JobKind::Drill | JobKind::Upload => (None, None),
    };
    let receive = ReceiveJob {
        job: attempt.clone(),
        token: token.clone(),
        source_node: rec.source_node.clone(),
        dataset: rec.target_dataset.clone(),
        force: step.force,
        discards: step.discards.clone(),
        base: step.base.clone(),
        discard_partial: rec.discard_partial,
        expect: step.expect.clone(),
        hold_tag: tag.clone(),
        accept_secs: ACCEPT_SECS,
        source_dataset,
        class,
    };
    // A restore sends the copy as it is stored: raw-encrypted stays raw.
    let (raw, compress) = match rec.kind {
        JobKind::Restore | JobKind::Drill | JobKind::Upload => (true, false),
        JobKind::Replication => state
            .policy()
            .as_ref()
            .and_then(|p| p.tasks.iter().find(|t| t.name == rec.task))
            .map(|t| (t.raw, t.compress == zdr_schemas::tasks::Compress::Zstd))
            .unwrap_or((true, false)),
    };
    let offer = match state
        .send_command(&rec.target_node, &Command::Receive(receive))
        .await
    {
        Ok(r) if !r.effects.floor_refused.is_empty() => {
            return floor_refused(state, key, &attempt, r.effects.floor_refused).await;
        }
        Ok(r) if r.outcome == Outcome::Done && r.offer.is_some() => r.offer.expect("checked"),
        Ok(r) => {
            let why = format!("target {}: {}", rec.target_node, r.message);
            return fail_current(state, key, &attempt, why, false).await;
        }
        Err(e) => return fail_current(state, key, &attempt, format!("target: {e}"), false).await,
    };
    // A partial receive the source cannot continue is dropped now, not
    // found out by a failing send.
    let gone = offer.partial.as_ref().and_then(|p| {
        let fleet = state.fleet();
        let src = fleet.dataset(&rec.source_node, &rec.dataset)?;
        schedule::unresumable(p, &src.snapshots, &src.bookmarks)
    });
    if let Some(why) = gone {
        cancel(state, std::slice::from_ref(&rec.target_node), &attempt).await;
        return fail_current(state, key, &attempt, why, true).await;
    }
    let resumed = offer.resume_token.is_some();
    let stream = match &offer.resume_token {
        Some(t) => StreamSpec::Resume { token: t.clone() },
        None => step.stream.clone(),
    };
    let rate = {
        let policy = state.policy();
        let jobs = state.jobs();
        policy
            .as_ref()
            .and_then(|p| {
                rates::allocation(p, jobs.records(), now_ms())
                    .get(&attempt)
                    .copied()
            })
            .flatten()
            .map(|r| r.get())
    };
    let send = SendJob {
        job: attempt.clone(),
        token,
        target_node: rec.target_node.clone(),
        target_addr: offer.addr.clone(),
        dataset: rec.dataset.clone(),
        stream,
        raw,
        compress,
        bytes_per_sec: rate,
        hold_tag: send_tag,
    };
    // The source answering that it cannot start this send is its word on
    // the resume; no answer (it may be restarting) or a refused envelope is not.
    let failed = match state
        .send_command(&rec.source_node, &Command::Send(send))
        .await
    {
        Ok(r) if r.outcome == Outcome::Done => None,
        Ok(r) => Some((
            format!("source {}: {}", rec.source_node, r.message),
            r.outcome == Outcome::Failed,
        )),
        Err(e) => Some((format!("source: {e}"), false)),
    };
    if let Some((why, cannot)) = failed {
        cancel(state, std::slice::from_ref(&rec.target_node), &attempt).await;
        let discard = resumed && drops_resume(cannot, rec.attempt, rec.attempts());
        return fail_current(state, key, &attempt, why, discard).await;
    }
    let line = format!(
        "attempt {} of step {}: {}{} to {} at {}",
        rec.attempt,
        rec.step + 1,
        if resumed {
            match offer.partial.as_ref() {
                Some(p) => format!("resuming the saved partial receive of {} bytes", p.bytes),
                None => "resuming the saved partial receive".to_string(),
            }
        } else {
            describe(std::slice::from_ref(&step))
        },
        match rate {
            Some(r) => format!(", limited to {r} B/s"),
            None => String::new(),
        },
        rec.target_node,
        offer.addr
    );
    mark_running(state, key, &attempt, resumed, rate, line).await;
}

/// Sends an upload's one command, to its source: the bucket has no agent.
async fn start_upload(state: &Arc<State>, key: &str) {
    let (rec, attempt, step) = {
        let mut jobs = state.jobs();
        let Some(rec) = jobs.get_mut(key) else { return };
        let Some(step) = rec.steps.get(rec.step).cloned() else {
            return;
        };
        let attempt = rec.begin_attempt(now_ms());
        (rec.clone(), attempt, step)
    };
    let task = state
        .policy()
        .as_ref()
        .and_then(|p| p.buckets.iter().find(|b| b.name == rec.task).cloned());
    let Some(task) = task else {
        let why = format!("bucket task {} is no longer in the tasks file", rec.task);
        return fail_current(state, key, &attempt, why, false).await;
    };
    let Some(bucket) = offsite::bucket_spec(&task) else {
        let why = format!("bucket task {} names no credentials", rec.task);
        return fail_current(state, key, &attempt, why, false).await;
    };
    let info = rec.upload.clone().unwrap_or(UploadInfo {
        committed: Vec::new(),
        parent: None,
        raw: true,
        encrypted: false,
        lock: None,
        verified: None,
    });
    let rate = {
        let policy = state.policy();
        let jobs = state.jobs();
        policy
            .as_ref()
            .and_then(|p| {
                rates::allocation(p, jobs.records(), now_ms())
                    .get(&attempt)
                    .copied()
            })
            .flatten()
            .map(|r| r.get())
    };
    let cmd = UploadJob {
        job: attempt.clone(),
        dataset: rec.dataset.clone(),
        stream: step.stream.clone(),
        to_guid: step.expect.guid,
        from_guid: step.base.as_ref().map(|b| b.guid),
        parent: info.parent.clone(),
        raw: info.raw,
        bucket,
        lock: info.lock,
        recipients: task.recipients.clone(),
        hold_tag: offsite::hold_tag(&rec.task),
        bytes_per_sec: rate,
    };
    let why = match state
        .send_command(&rec.source_node, &Command::Upload(Box::new(cmd)))
        .await
    {
        Ok(r) if r.outcome == Outcome::Done => None,
        Ok(r) => Some(format!("source {}: {}", rec.source_node, r.message)),
        Err(e) => Some(format!("source: {e}")),
    };
    if let Some(why) = why {
        return fail_current(state, key, &attempt, why, false).await;
    }
    let line = format!(
        "attempt {}: {} from {} to {}{}",
        rec.attempt,
        describe(std::slice::from_ref(&step)),
        rec.source_node,
        rec.target_dataset,
        match rate {
            Some(r) => format!(", limited to {r} B/s"),
            None => String::new(),
        }
    );
    mark_running(state, key, &attempt, false, rate, line).await;
}

/// Sends a restore from a bucket's one command, to the destination: the
/// bucket has no agent. The destination picks and checks the chain itself.
async fn start_bucket_restore(state: &Arc<State>, key: &str) {
    let (rec, attempt, step) = {
        let mut jobs = state.jobs();
        let Some(rec) = jobs.get_mut(key) else { return };
        let Some(step) = rec.steps.get(rec.step).cloned() else {
            return;
        };
        let attempt = rec.begin_attempt(now_ms());
        (rec.clone(), attempt, step)
    };
    let name = rec.from_bucket().unwrap_or_default().to_string();
    let task = state
        .policy()
        .as_ref()
        .and_then(|p| p.buckets.iter().find(|b| b.name == name).cloned());
    let Some(bucket) = task.as_ref().and_then(offsite::bucket_spec) else {
        let why = format!(
            "bucket task {name} is not in the tasks file (or names no credentials): the \
             coordinator knows the bucket only from it; put it back to restore from it"
        );
        return fail_current(state, key, &attempt, why, false).await;
    };
    let cmd = BucketRestoreJob {
        job: attempt.clone(),
        source_dataset: rec.dataset.clone(),
        to_guid: step.expect.guid,
        to_name: step.expect.name.clone(),
        dataset: rec.target_dataset.clone(),
        bucket,
        hold_tag: restore_tag(JobRole::Target, &rec.id),
    };
    let why = match state
        .send_command(&rec.target_node, &Command::RestoreFromBucket(Box::new(cmd)))
        .await
    {
        Ok(r) if r.outcome == Outcome::Done => None,
        Ok(r) => Some(format!("target {}: {}", rec.target_node, r.message)),
        Err(e) => Some(format!("target: {e}")),
    };
    if let Some(why) = why {
        return fail_current(state, key, &attempt, why, false).await;
    }
    let line = format!(
        "attempt {}: {} reads the chain that lands {}@{} (GUID {}) from bucket task {name}",
        rec.attempt, rec.target_node, rec.dataset, step.expect.name, step.expect.guid
    );
    mark_running(state, key, &attempt, false, None, line).await;
}

/// An upload landed: the source holds its new chain tip alone.
async fn release_upload_hold(state: &State, rec: &JobRecord, keep: &str) {
    let cmd = Command::ReleaseHolds {
        dataset: rec.dataset.clone(),
        tag: offsite::hold_tag(&rec.task),
        keep: keep.to_string(),
    };
    match state.send_command(&rec.source_node, &cmd).await {
        Ok(r) if r.outcome == Outcome::Done => {
            info!(node = %rec.source_node, dataset = %rec.dataset, "{}", r.message)
        }
        Ok(r) => {
            warn!(node = %rec.source_node, dataset = %rec.dataset, message = %r.message, "moving the upload hold failed")
        }
        Err(e) => {
            warn!(node = %rec.source_node, dataset = %rec.dataset, error = %e, "moving the upload hold failed")
        }
    }
}

async fn cancel(state: &State, nodes: &[String], attempt: &str) {
    // A bucket has no agent to tell.
    for node in nodes
        .iter()
        .filter(|n| crate::restore::points::bucket_task(n).is_none())
    {
        let cmd = Command::CancelJob {
            job: attempt.to_string(),
        };
        // Best effort: the job may be over there already.
        let _ = state.send_command(node, &cmd).await;
    }
}

/// Sends `cmd(end, dataset)` to both ends of a job; logs what each said.
async fn on_both_ends(
    state: &State,
    rec: &JobRecord,
    what: &str,
    cmd: impl Fn(JobRole, &String) -> Command,
) {
    for (end, node, dataset) in [
        (JobRole::Source, &rec.source_node, &rec.dataset),
        (JobRole::Target, &rec.target_node, &rec.target_dataset),
    ] {
        if crate::restore::points::bucket_task(node).is_some() {
            continue; // a bucket holds nothing
        }
        match state.send_command(node, &cmd(end, dataset)).await {
            Ok(r) if r.outcome == Outcome::Done => info!(node, %dataset, "{}", r.message),
            Ok(r) => warn!(node, %dataset, message = %r.message, "{what} failed"),
            Err(e) => warn!(node, %dataset, error = %e, "{what} failed"),
        }
    }
}

/// The new common snapshot is held on both sides; older holds of the pairing go.
async fn move_holds(state: &State, rec: &JobRecord, keep: &str) {
    let tag = hold_tag(&rec.task);
    on_both_ends(state, rec, "moving the replication hold", |_, dataset| {
        Command::ReleaseHolds {
            dataset: dataset.clone(),
            tag: tag.clone(),
            keep: keep.to_string(),
        }
    })
    .await;
}

/// Tells the record how an ask for its holds ended (`mark`), and writes it
/// to KV once every node confirmed; otherwise the tick asks again.
async fn settle(state: &State, key: &str, confirmed: bool, mark: impl FnOnce(&mut JobRecord)) {
    let rec = state.jobs().get_mut(key).map(|r| {
        mark(r);
        r.clone()
    });
    if let Some(r) = rec.filter(|_| confirmed) {
        persist(state, key, &r).await;
    }
}

/// Releases an ended restore's or drill's holds ([`JobRecord::releases`]);
/// true when every node confirmed.
async fn drop_holds(state: &State, rec: &JobRecord) -> bool {
    let mut all = true;
    for r in rec.releases() {
        all &= drop_tag(state, &r.node, &r.dataset, &r.tag).await;
    }
    all
}

/// Sends `DropHolds` of `tag` on `node:dataset`; whether the node confirmed.
/// A failure is logged.
async fn drop_tag(state: &State, node: &str, dataset: &str, tag: &str) -> bool {
    let cmd = Command::DropHolds {
        dataset: dataset.to_string(),
        tag: tag.to_string(),
    };
    match state.send_command(node, &cmd).await {
        Ok(r) if r.outcome == Outcome::Done => {
            info!(%node, %dataset, "{}", r.message);
            true
        }
        Ok(r) => {
            warn!(%node, %dataset, %tag, message = %r.message, "releasing a hold failed");
            false
        }
        Err(e) => {
            warn!(%node, %dataset, %tag, error = %e, "releasing a hold failed; trying again later");
            false
        }
    }
}

/// Writes a record made outside the tick (a restore request) to KV.
pub async fn save(state: &State, key: &str, rec: &JobRecord) {
    persist(state, key, rec).await;
}

/// Applies the task's retention (the source class's tiers when it has none)
/// to the copy. Runs before the pairing's next job may start.
async fn prune_replica(state: &State, key: &str, rec: &JobRecord) {
    let keep = crate::restore::being_read(
        state.jobs().records(),
        &rec.target_node,
        &rec.target_dataset,
    );
    let cmd = {
        let policy = state.policy();
        let fleet = state.fleet();
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
            keep,
        })
    };
    let answer = state.send_command(&rec.target_node, &cmd).await;
    if let Ok(r) = &answer {
        state
            .fleet_mut()
            .destroyed(&rec.target_node, &r.effects.destroyed);
    }
    let line = match answer {
        Ok(r) if !r.effects.floor_refused.is_empty() => format!(
            "retention on the copy: {}",
            floor_reason(&rec.target_node, &r.effects.floor_refused)
        ),
        Ok(r) if r.outcome == Outcome::Done && r.effects.destroyed.is_empty() => return,
        Ok(r) if r.outcome == Outcome::Done => format!(
            "retention on the copy: {} destroyed: {}",
            r.effects.destroyed.len(),
            r.effects.destroyed.join(", ")
        ),
        Ok(r) => format!("retention on the copy failed: {}", r.message),
        Err(e) => format!("retention on the copy failed: {e}"),
    };
    let rec = {
        let mut jobs = state.jobs();
        let Some(r) = jobs.get_mut(key) else { return };
        r.note(line, now_ms());
        r.clone()
    };
    persist(state, key, &rec).await;
}

/// Loads the records made before. Attempts still under way are returned,
/// for [`adopt`] once this coordinator leads.
pub async fn restore(state: &State) -> Vec<(String, String)> {
    let mut loaded = Vec::new();
    let mut anchors = std::collections::BTreeMap::new();
    if let Ok(mut keys) = state.stores.jobs.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            // From the stream leader: adoption and the steps after it
            // (holds moved, `receive -F`) rest on the newest record.
            let Ok(Some(entry)) = crate::bus::leader_entry(&state.stores.jobs, &key).await else {
                continue;
            };
            if entry.deleted {
                continue;
            }
            let raw = entry.value;
            if key == crate::drills::ANCHORS_KEY {
                match serde_json::from_slice(&raw) {
                    Ok(a) => anchors = a,
                    Err(e) => {
                        warn!(key, error = %e, "unreadable drill anchors in KV; drills count from now")
                    }
                }
                continue;
            }
            match serde_json::from_slice::<JobRecord>(&raw) {
                Ok(r) => loaded.push((key, r)),
                Err(e) => warn!(key, error = %e, "unreadable job record in KV; skipped"),
            }
        }
    }
    let mut jobs = state.jobs();
    jobs.clear();
    jobs.drill_anchors = anchors;
    let t = now_ms();
    let mut running = Vec::new();
    for (key, mut rec) in loaded {
        if let Some(attempt) = rec.loaded_by_new_leader(t) {
            running.push((key.clone(), attempt));
        }
        jobs.insert(key, rec);
    }
    running
}

/// Asks both agents of each attempt a former leader left running how it
/// stands, then keeps the ones both still run and retries the rest (commands
/// go out only from the leader, so call this after taking the lead).
pub fn adopt(state: &Arc<State>, tasks: &mut JoinSet<()>, running: Vec<(String, String)>) {
    for (key, attempt) in running {
        let st = state.clone();
        tasks.spawn(async move {
            let Some(rec) = st.jobs().get(&key).cloned() else {
                return;
            };
            let status = |node: String| {
                let st = st.clone();
                let job = attempt.clone();
                async move {
                    match st.send_command(&node, &Command::JobStatus { job }).await {
                        Ok(r) if r.outcome == Outcome::Done => r.job,
                        _ => None,
                    }
                }
            };
            let (source, target) = if rec.kind == JobKind::Upload {
                // The bucket is no agent: the source alone runs an upload.
                let source = status(rec.source_node.clone()).await;
                (source.clone(), source)
            } else if rec.from_bucket().is_some() {
                // Nor for a restore from it: the destination alone runs it.
                let target = status(rec.target_node.clone()).await;
                (target.clone(), target)
            } else {
                tokio::join!(
                    status(rec.source_node.clone()),
                    status(rec.target_node.clone())
                )
            };
            // An end that finished while no leader listened: its last report
            // is applied as if it had just arrived, so the attempt ends as it
            // did instead of being sent again.
            let mut inner = JoinSet::new();
            for ended in [&source, &target]
                .into_iter()
                .flatten()
                .filter(|u| u.state != JobPhase::Running)
            {
                on_update(&st, &mut inner, ended.clone()).await;
            }
            let decision = JobRecord::adoption(source.as_ref(), target.as_ref());
            let (rec, effects) = {
                let mut jobs = st.jobs();
                let Some(cur) = jobs.get_mut(&key) else {
                    return;
                };
                let effects = cur.adopt(&attempt, &decision, now_ms());
                (cur.clone(), effects)
            };
            carry_out(&st, &mut inner, &key, rec, effects).await;
            while inner.join_next().await.is_some() {}
        });
    }
}

/// A node back on the bus (its hello) may have ended attempts while nobody
/// heard its reports, as when its site was cut off from NATS but not from
/// the other end: asks it how each active attempt it is an end of stands,
/// and applies an ended one's last report as if it had just arrived, so the
/// job ends as it did instead of stalling and being sent again. An attempt
/// its agent does not know, from a process started after the attempt
/// (`agent_started_ms`), died with the process before:
/// [`JobRecord::lost_with_restart`]. Holds it missed are asked for at the
/// next tick ([`JobRecord::node_back`]).
pub fn catch_up(state: &Arc<State>, tasks: &mut JoinSet<()>, node: &str, agent_started_ms: i64) {
    for rec in state.jobs().records_mut() {
        rec.node_back(node);
    }
    let attempts: Vec<String> = state
        .jobs()
        .records()
        .filter(|r| r.active() && (r.source_node == node || r.target_node == node))
        .map(|r| r.attempt_id.clone())
        .collect();
    for job in attempts {
        let st = state.clone();
        let node = node.to_string();
        tasks.spawn(async move {
            let answer = st
                .send_command(&node, &Command::JobStatus { job: job.clone() })
                .await;
            let mut inner = JoinSet::new();
            match answer {
                Ok(r) if r.outcome == Outcome::Done => {
                    if let Some(update) = r.job.filter(|u| u.state != JobPhase::Running) {
                        on_update(&st, &mut inner, update).await;
                    }
                }
                // It answered, and has no such job.
                Ok(r) if r.outcome == Outcome::Failed && r.job.is_none() => {
                    let found = {
                        let mut jobs = st.jobs();
                        let key = jobs.key_of_attempt(&job);
                        key.and_then(|key| {
                            let rec = jobs.get_mut(&key)?;
                            let fx = rec.lost_with_restart(&job, &node, agent_started_ms, now_ms());
                            Some((key, rec.clone(), fx))
                        })
                    };
                    if let Some((key, rec, fx)) = found {
                        carry_out(&st, &mut inner, &key, rec, fx).await;
                    }
                }
                _ => {}
            }
            while inner.join_next().await.is_some() {}
        });
    }
}

/// For the status API: every job, newest first.
pub fn list(state: &State) -> Vec<JobRecord> {
    let mut all: Vec<JobRecord> = state.jobs().records().cloned().collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
    all
}
