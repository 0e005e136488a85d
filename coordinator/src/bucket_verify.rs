//! Bucket verification: each dataset a bucket task uploads is re-read in
//! the bucket at least every `verify_every` by its source agent
//! (`VerifyBucket`: every manifest's signature, every chain link, every
//! segment's size and SHA-256), without restoring it. The choice of what
//! to read next is pure ([`next`]); [`run`] is the leader's loop.
//!
//! Rules:
//! 1. a dataset is due when it has a committed upload and was never
//!    verified, or its last verification is `verify_every` old;
//! 2. the most overdue goes first (never verified before all others), so
//!    every dataset, and so every chain of it, is read within its period
//!    as long as the reads keep up;
//! 3. one verification runs at a time per source node, and at most
//!    [`AT_ONCE`] in the fleet: each reads whole chains back (egress, and
//!    the bucket's and the agents' bandwidth), and one that hangs holds up
//!    only its node;
//! 4. a source that is offline waits; its turn comes when it is back. One
//!    that restarts mid-read fails that read at once (its turn comes again).
//!
//! A failed verification is kept in the upload record (`upload.verified`,
//! with the objects named) and counted in `zdr_bucket_verifications_total`
//! by task and result.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zdr_common::wire::{BucketVerifyJob, Command, Outcome};

use crate::jobs::JobKind;
use crate::jobs::Verified;
use crate::offsite::bucket_spec;
use crate::state::{now_ms, State};

/// How often the loop looks for a due dataset.
const TICK: Duration = Duration::from_secs(5);
/// How long one verification may take before it counts as failed.
const WITHIN: Duration = Duration::from_secs(24 * 3_600);
/// Verifications running at once in the fleet.
pub const AT_ONCE: usize = 4;

/// One upload record, as rule 1 sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    /// The source node, which reads.
    pub node: String,
    /// The task's `verify_every`, milliseconds.
    pub every_ms: i64,
    /// The last verification's end; `None`: never.
    pub last_ms: Option<i64>,
    pub committed: bool,
    pub online: bool,
}

/// The candidate to verify now, by rules 1 to 4; `busy`: the nodes
/// reading now.
pub fn next<'a>(
    candidates: &'a [Candidate],
    now_ms: i64,
    busy: &std::collections::HashSet<String>,
) -> Option<&'a Candidate> {
    if busy.len() >= AT_ONCE {
        return None;
    }
    candidates
        .iter()
        .filter(|c| c.committed && c.online && !busy.contains(&c.node))
        .filter(|c| c.last_ms.is_none_or(|at| now_ms - at >= c.every_ms))
        .min_by_key(|c| c.last_ms.map_or(i64::MIN, |at| at + c.every_ms))
}

fn candidates(state: &State) -> Vec<Candidate> {
    let every: std::collections::HashMap<String, i64> = match state.policy().as_ref() {
        Some(p) => p
            .buckets
            .iter()
            .map(|t| (t.name.clone(), t.verify_every.secs() as i64 * 1_000))
            .collect(),
        None => return Vec::new(),
    };
    let online: std::collections::HashSet<String> = {
        let fleet = state.fleet();
        let offline_after = state.config().offline_after.as_secs() as i64;
        let now = crate::state::now();
        fleet
            .nodes
            .keys()
            .filter(|id| fleet.online(id, now, offline_after))
            .cloned()
            .collect()
    };
    let jobs = state.jobs();
    let mut out = Vec::new();
    for (key, r) in jobs.entries() {
        let (Some(u), Some(&every_ms)) = (r.upload.as_ref(), every.get(&r.task)) else {
            continue;
        };
        if r.kind != JobKind::Upload {
            continue;
        }
        out.push(Candidate {
            key: key.clone(),
            node: r.source_node.clone(),
            every_ms,
            last_ms: u.verified.as_ref().map(|v| v.at_ms),
            committed: !u.committed.is_empty(),
            online: online.contains(&r.source_node),
        });
    }
    out
}

/// Starts due verifications (rule 3) until `stop`.
pub async fn run(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    let mut running = tokio::task::JoinSet::new();
    let mut busy = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(done) = running.join_next() => {
                if let Ok(node) = done {
                    busy.remove(&node);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let due = next(&candidates(&state), now_ms(), &busy).cloned();
        if let Some(c) = due {
            busy.insert(c.node.clone());
            let state = state.clone();
            running.spawn(async move {
                verify(&state, &c.key).await;
                c.node
            });
        }
    }
}

async fn verify(state: &State, key: &str) {
    let job = {
        // Policy before jobs, as everywhere else.
        let policy = state.policy();
        let jobs = state.jobs();
        let Some(rec) = jobs.get(key) else { return };
        let task = policy
            .as_ref()
            .and_then(|p| p.buckets.iter().find(|t| t.name == rec.task));
        let Some(bucket) = task.and_then(bucket_spec) else {
            return;
        };
        let cmd = Command::VerifyBucket(Box::new(BucketVerifyJob {
            dataset: rec.dataset.clone(),
            bucket,
        }));
        (
            rec.source_node.clone(),
            rec.dataset.clone(),
            rec.task.clone(),
            cmd,
        )
    };
    let (node, dataset, task, cmd) = job;
    let started = std::time::Instant::now();
    let verified = match state.send_command_within(&node, &cmd, WITHIN).await {
        Ok(r) => Verified {
            at_ms: now_ms(),
            ok: r.outcome == Outcome::Done && r.bucket_check.is_some(),
            summary: r.message,
            check: r.bucket_check,
        },
        Err(e) => Verified {
            at_ms: now_ms(),
            ok: false,
            summary: format!("{node} could not verify: {e}"),
            check: None,
        },
    };
    let result = if verified.ok { "ok" } else { "failed" };
    metrics::counter!("zdr_bucket_verifications_total", "task" => task.clone(), "result" => result)
        .increment(1);
    if verified.ok {
        let c = verified.check.clone().unwrap_or_default();
        info!(%task, %node, %dataset, manifests = c.manifests, segments = c.segments, bytes = c.bytes, took = ?started.elapsed(), "bucket verified");
    } else {
        warn!(%task, %node, %dataset, why = %verified.summary, "bucket verification failed");
    }
    let rec = {
        let mut jobs = state.jobs();
        let Some(rec) = jobs.get_mut(key) else { return };
        let Some(u) = rec.upload.as_mut() else { return };
        u.verified = Some(verified);
        rec.clone()
    };
    crate::jobs::save(state, key, &rec).await;
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn c(key: &str, last_ms: Option<i64>) -> Candidate {
        Candidate {
            key: key.into(),
            node: format!("node-{key}"),
            every_ms: 1_000,
            last_ms,
            committed: true,
            online: true,
        }
    }

    #[test]
    fn the_most_overdue_goes_first_and_never_verified_before_all() {
        let idle = HashSet::new();
        let all = [c("a", Some(5_000)), c("b", Some(4_500)), c("c", None)];
        assert_eq!(next(&all, 6_000, &idle).unwrap().key, "c");
        assert_eq!(next(&all[..2], 6_000, &idle).unwrap().key, "b");
        // Not yet due: a's period ends at 6,000, b's at 5,500.
        assert_eq!(next(&all[..2], 5_499, &idle), None);
        assert_eq!(next(&all[..1], 5_999, &idle), None);
    }

    #[test]
    fn one_read_per_node_and_a_few_in_the_fleet() {
        let all = [c("a", None), c("b", None)];
        let busy: HashSet<String> = ["node-a".to_string()].into();
        assert_eq!(next(&all, 6_000, &busy).unwrap().key, "b");
        let full: HashSet<String> = (0..AT_ONCE).map(|i| format!("n{i}")).collect();
        assert_eq!(next(&all, 6_000, &full), None);
    }

    #[test]
    fn nothing_committed_or_an_offline_source_waits() {
        let mut empty = c("a", None);
        empty.committed = false;
        let mut away = c("b", None);
        away.online = false;
        let idle = HashSet::new();
        assert_eq!(next(&[empty, away.clone()], 10_000, &idle), None);
        away.online = true;
        assert_eq!(next(&[away], 10_000, &idle).unwrap().key, "b");
    }
}
