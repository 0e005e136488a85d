//! The pruning loop: while this instance leads, each bucket task with
//! `prune` gets a pass every `prune.every`: list, [`super::plan`], then per
//! stream an audit record (acknowledged by JetStream) before its delete and
//! another with the outcome. Upload records forget the streams that went,
//! so restore points never offer a pruned chain.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zdr_common::subject;
use zdr_schemas::buckets::BucketTask;

use super::{bucket, Doomed, Why};
use crate::jobs::JobKind;
use crate::state::{now, State};

/// How often the loop looks for a task whose pass is due.
const TICK: Duration = Duration::from_secs(5);

/// Runs passes until `stop`; a pass cut by `stop` leaves what the plan's
/// delete order promises (chains that restore).
pub async fn run(state: Arc<State>, stop: CancellationToken) {
    let js = jetstream::new(state.client().clone());
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due: Vec<BucketTask> = {
            let policy = state.policy();
            let Some(p) = policy.as_ref() else { continue };
            p.buckets
                .iter()
                .filter(|t| {
                    t.bucket.prune.as_ref().is_some_and(|pr| {
                        last.get(&t.name)
                            .is_none_or(|at| at.elapsed().as_secs() >= pr.every.secs())
                    })
                })
                .cloned()
                .collect()
        };
        for task in due {
            last.insert(task.name.clone(), Instant::now());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = pass(&state, &js, &task) => {}
            }
        }
    }
}

/// One audit record in `ZDR_AUDIT`.
#[derive(Serialize)]
struct Audit<'a> {
    at: i64,
    actor: &'a str,
    action: &'static str,
    target: &'a str,
    why: &'a str,
    versions: usize,
    /// `intent`, `done` or `failed: ...`.
    outcome: &'a str,
}

async fn audit(js: &jetstream::Context, record: &Audit<'_>) -> Result<(), String> {
    let payload = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    js.publish(subject::COORDINATOR_AUDIT, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn failed(task: &str, why: &str) {
    warn!(
        task,
        error = why,
        "bucket prune pass failed; trying again at the next one"
    );
    metrics::counter!("zdr_prune_failures_total", "task" => task.to_string()).increment(1);
}

async fn pass(state: &State, js: &jetstream::Context, task: &BucketTask) {
    let b = &task.bucket;
    let (Some(spec), Some(retain)) = (b.prune.as_ref(), b.prune_retain()) else {
        return;
    };
    let Some(credentials) = spec.credentials.reference() else {
        return;
    };
    let (id, secret) = match zdr_common::credentials::resolve_here(&credentials, "the coordinator")
    {
        Ok(k) => k,
        Err(e) => return failed(&task.name, &format!("bucket.prune.credentials: {e}")),
    };
    let client = zdr_common::s3::client(&b.endpoint, &b.region, &id, &secret);
    let started = Instant::now();
    let listed = match bucket::list(&client, &b.bucket, &b.prefix).await {
        Ok(l) => l,
        Err(e) => return failed(&task.name, &e.to_string()),
    };
    let plan = super::plan(&listed, now(), retain.secs() as i64);
    for (folder, why) in &plan.left {
        warn!(task = %task.name, bucket = %b.bucket, folder, why, "a dataset's streams were left whole: its chains cannot be worked out");
    }
    metrics::gauge!("zdr_prune_datasets_left_whole", "task" => task.name.clone())
        .set(plan.left.len() as f64);
    let actor = format!(
        "coordinator:{}/prune:{}",
        state.config().instance,
        task.name
    );
    let mut gone: HashSet<String> = HashSet::new();
    let mut failures = 0;
    'plan: for d in &plan.delete {
        for doomed in &d.streams {
            if !state.is_leader() {
                break 'plan;
            }
            let target = format!(
                "s3://{}/{}streams/{}/{}/",
                b.bucket, b.prefix, d.folder, doomed.stream
            );
            match delete_one(js, &client, &b.bucket, (&actor, &target), &d.why, doomed).await {
                Ok(()) => {
                    gone.insert(doomed.stream.clone());
                }
                Err(e) => {
                    // The rest of this chain are the bases of what failed.
                    failed(&task.name, &e);
                    failures += 1;
                    break;
                }
            }
        }
    }
    metrics::counter!("zdr_prune_streams_deleted_total", "task" => task.name.clone())
        .increment(gone.len() as u64);
    if failures == 0 {
        metrics::gauge!("zdr_prune_last_success_timestamp_seconds", "task" => task.name.clone())
            .set(now() as f64);
    }
    if gone.is_empty() {
        return;
    }
    info!(task = %task.name, bucket = %b.bucket, streams = gone.len(), took = ?started.elapsed(), "bucket pruned");
    forget(state, &task.name, &gone).await;
}

/// Audits, deletes, audits the outcome. Nothing is deleted unless the
/// intent record was stored.
async fn delete_one(
    js: &jetstream::Context,
    client: &aws_sdk_s3::Client,
    bucket_name: &str,
    (actor, target): (&str, &str),
    why: &Why,
    d: &Doomed,
) -> Result<(), String> {
    let why = why.to_string();
    let mut record = Audit {
        at: now(),
        actor,
        action: "delete-stream",
        target,
        why: &why,
        versions: d.versions.len(),
        outcome: "intent",
    };
    audit(js, &record).await.map_err(|e| {
        format!("{target}: the audit record could not be stored, so nothing was deleted: {e}")
    })?;
    let (n, err) = bucket::delete(client, bucket_name, d).await;
    let outcome = match &err {
        None => "done".to_string(),
        Some(e) => format!("failed after {n} of {} versions: {e}", d.versions.len()),
    };
    record.at = now();
    record.outcome = &outcome;
    if let Err(e) = audit(js, &record).await {
        warn!(target, error = %e, "the outcome of a prune could not be audited");
    }
    match err {
        None => Ok(()),
        Some(e) => Err(e.to_string()),
    }
}

/// Drops pruned streams from the task's upload records.
async fn forget(state: &State, task: &str, gone: &HashSet<String>) {
    let changed: Vec<(String, crate::jobs::JobRecord)> = {
        let mut jobs = state.jobs();
        jobs.entries_mut()
            .filter(|(_, r)| r.kind == JobKind::Upload && r.task == task)
            .filter_map(|(key, r)| {
                let info = r.upload.as_mut()?;
                let before = info.committed.len();
                info.committed.retain(|m| !gone.contains(&m.stream));
                (info.committed.len() != before).then(|| (key.clone(), r.clone()))
            })
            .collect()
    };
    for (key, rec) in changed {
        crate::jobs::save(state, &key, &rec).await;
    }
}
