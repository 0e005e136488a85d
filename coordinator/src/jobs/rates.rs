//! Transfer rates: the bandwidth rules (`crate::bandwidth`) applied to the
//! running jobs, and the changes pushed to their sources.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use zdr_common::policy::Policy;

use super::record::{JobRecord, JobState};
use crate::bandwidth::{self, JobDemand};
use crate::state::PolicyState;

fn site_of(policy: &Policy, node: &str) -> Option<String> {
    policy.nodes.get(node).map(|n| n.site.clone())
}

/// The rate every active job gets now, by attempt id (`None`: unlimited).
pub fn allocation<'a>(
    policy: &PolicyState,
    records: impl Iterator<Item = &'a JobRecord>,
    now_ms: i64,
) -> BTreeMap<String, Option<NonZeroU64>> {
    let demands: Vec<JobDemand> = records
        // A restore from a bucket has no sender to throttle. An upload is
        // under its bucket task's cap; no site-to-site link carries it.
        .filter(|r| r.active() && r.from_bucket().is_none())
        .map(|r| {
            let (a, b) = (
                site_of(&policy.policy, &r.source_node),
                site_of(&policy.policy, &r.target_node),
            );
            JobDemand {
                id: r.attempt_id.clone(),
                task: r.task.clone(),
                link: match (a, b) {
                    (Some(a), Some(b)) if a != b => Some((a, b)),
                    _ => None,
                },
            }
        })
        .collect();
    let at = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let caps = bandwidth::caps(&policy.tasks, &policy.buckets);
    bandwidth::allocate(&demands, &caps, &policy.links, at)
}

/// A rate to push to a running send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateChange {
    pub source_node: String,
    pub attempt: String,
    pub bytes_per_sec: Option<u64>,
}

/// Records the new rate of every running job whose rate changed (a window
/// opened, a job came or went) and returns what to push.
pub fn changes<'a>(
    rates: &BTreeMap<String, Option<NonZeroU64>>,
    records: impl Iterator<Item = &'a mut JobRecord>,
    now_ms: i64,
) -> Vec<RateChange> {
    let mut out = Vec::new();
    for rec in records {
        if rec.state != JobState::Running {
            continue;
        }
        let Some(rate) = rates.get(&rec.attempt_id) else {
            continue;
        };
        let rate = rate.map(|r| r.get());
        if rate != rec.rate_limit {
            rec.rate_limit = rate;
            rec.log(
                match rate {
                    Some(r) => format!("rate now {r} B/s"),
                    None => "rate now unlimited".into(),
                },
                now_ms,
            );
            out.push(RateChange {
                source_node: rec.source_node.clone(),
                attempt: rec.attempt_id.clone(),
                bytes_per_sec: rate,
            });
        }
    }
    out
}
