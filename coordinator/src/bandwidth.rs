//! How fast each running replication job may send, from its task's cap and the
//! budget of the site-to-site link it crosses, both as in force at a given
//! time. Pure: the caller re-evaluates every few seconds and pushes the rates
//! to the agents' throttles.
//!
//! Rules:
//! - A task's cap is the total of all its concurrent jobs, so running more
//!   of them in parallel does not multiply the task's bandwidth.
//! - A link budget covers both directions between its two sites.
//! - Rates are max-min fair (progressive filling): every capped job grows at
//!   the same pace until a cap or budget it is under runs out, so a job held
//!   low by its task leaves its unused share to the others on the link.
//! - A job under no cap or budget in force is unlimited (`None`).
//! - A share below 1 B/s becomes 1 B/s, never 0, so a transfer is slowed but
//!   never stalled; this can overshoot a budget by at most 1 B/s per job.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use chrono::{DateTime, Timelike, Utc};
use zdr_schemas::buckets::BucketTask;
use zdr_schemas::tasks::{Bandwidth, Link, Task};

/// A running job as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDemand {
    /// Unique among the jobs given together.
    pub id: String,
    /// The name of the task it runs for.
    pub task: String,
    /// Source and target site; `None` within one site, where no link budget applies.
    pub link: Option<(String, String)>,
}

/// The cap in force at `at`, in bytes per second; `None` is unlimited.
pub fn rate_at(bw: &Bandwidth, at: DateTime<Utc>) -> Option<u64> {
    bw.limit_at(minute_of_day(at)).bytes_per_sec()
}

fn minute_of_day(at: DateTime<Utc>) -> u16 {
    // At most 23 * 60 + 59, well within u16.
    (at.hour() * 60 + at.minute()) as u16
}

/// A cap shared by some jobs: a task's or a link's.
struct Shared {
    left: u64,
    members: Vec<usize>,
}

/// The caps by task name: replication tasks' and bucket tasks' (uploads).
pub fn caps<'a>(tasks: &'a [Task], buckets: &'a [BucketTask]) -> Vec<(&'a str, &'a Bandwidth)> {
    tasks
        .iter()
        .map(|t| (t.name.as_str(), &t.bandwidth))
        .chain(buckets.iter().map(|b| (b.name.as_str(), &b.bandwidth)))
        .collect()
}

/// Each job's rate by id. `tasks` are the caps by task name (replication
/// and bucket tasks). A job whose task is not in `tasks` (removed while it
/// ran) has no task cap, but still shares its link's budget.
pub fn allocate(
    jobs: &[JobDemand],
    tasks: &[(&str, &Bandwidth)],
    links: &[Link],
    at: DateTime<Utc>,
) -> BTreeMap<String, Option<NonZeroU64>> {
    let minute = minute_of_day(at);
    let members = |on: &dyn Fn(&JobDemand) -> bool| -> Vec<usize> {
        (0..jobs.len()).filter(|&i| on(&jobs[i])).collect()
    };
    let task_caps = tasks.iter().filter_map(|(name, bw)| {
        let cap = bw.limit_at(minute).bytes_per_sec()?;
        Some((cap, members(&|j| j.task == *name)))
    });
    let link_caps = links.iter().filter_map(|l| {
        let cap = l.limit_at(minute).bytes_per_sec()?;
        let on_link = |j: &JobDemand| j.link.as_ref().is_some_and(|(a, b)| l.joins(a, b));
        Some((cap, members(&on_link)))
    });
    let mut shared: Vec<Shared> = task_caps
        .chain(link_caps)
        .filter(|(_, m)| !m.is_empty())
        .map(|(left, members)| Shared { left, members })
        .collect();

    let mut capped = vec![false; jobs.len()];
    for s in &shared {
        for &j in &s.members {
            capped[j] = true;
        }
    }
    let mut rate = vec![0u64; jobs.len()];
    // Unlimited jobs never take part in the filling.
    let mut growing = capped.clone();
    loop {
        let active: Vec<u64> = shared
            .iter()
            .map(|s| s.members.iter().filter(|&&j| growing[j]).count() as u64)
            .collect();
        let Some(step) = shared
            .iter()
            .zip(&active)
            .filter(|(_, &n)| n > 0)
            .map(|(s, &n)| s.left / n)
            .min()
        else {
            break;
        };
        for (j, r) in rate.iter_mut().enumerate() {
            if growing[j] {
                *r += step;
            }
        }
        // The tightest cap cannot give each of its jobs another byte now,
        // so at least one job stops growing per round.
        for (s, &n) in shared.iter_mut().zip(&active) {
            s.left -= step * n;
            if n > 0 && s.left < n {
                for &j in &s.members {
                    growing[j] = false;
                }
            }
        }
    }

    jobs.iter()
        .zip(capped.iter().zip(rate))
        .map(|(job, (&capped, r))| {
            let r = capped.then(|| NonZeroU64::new(r.max(1)).expect("at least 1"));
            (job.id.clone(), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use zdr_schemas::tasks::Tasks;

    const MB: u64 = 1_000_000;

    const POLICY: &str = r#"version: 1
sites: { a: {}, b: {}, c: {} }
nodes:
  a1: { site: a, media: hdd }
  b1: { site: b, media: hdd }
  c1: { site: c, media: hdd }
classes:
  gold: { rpo: 1h, rto: 1h }
datasets:
  - { match: "backup/**", exclude: true }
  - { match: "tank/**", class: gold }
"#;

    const TASKS: &str = r#"version: 1
tasks:
  - name: free
    source: { class: gold }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 1h }
  - name: slow
    source: { class: gold }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 1h }
    bandwidth: { limit: 10MB/s }
  - name: pooled
    source: { class: gold }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 1h }
    bandwidth:
      limit: 30MB/s
      windows:
        - { from: "08:00", to: "18:00", limit: 20MB/s }
        - { from: "22:00", to: "06:00", limit: unlimited }
links:
  - between: [a, b]
    limit: 90MB/s
    windows:
      - { from: "22:00", to: "06:00", limit: unlimited }
  - between: [a, c]
    limit: 3B/s
"#;

    fn spec() -> Tasks {
        let policy = zdr_schemas::parse_policy("p.yaml", POLICY).unwrap();
        zdr_schemas::parse_tasks("t.yml", TASKS, &policy).unwrap()
    }

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, hour, minute, 30)
            .unwrap()
    }

    fn job(id: &str, task: &str, link: Option<(&str, &str)>) -> JobDemand {
        JobDemand {
            id: id.into(),
            task: task.into(),
            link: link.map(|(a, b)| (a.into(), b.into())),
        }
    }

    /// Rates in MB/s (exact), `None` for unlimited, in job order.
    fn run(jobs: &[JobDemand], links: bool, at: DateTime<Utc>) -> Vec<Option<u64>> {
        let spec = spec();
        let links = if links { &spec.links[..] } else { &[] };
        let rates = allocate(jobs, &caps(&spec.tasks, &spec.buckets), links, at);
        assert_eq!(rates.len(), jobs.len());
        let in_mb = |r: NonZeroU64| {
            assert_eq!(r.get() % MB, 0, "{r}");
            r.get() / MB
        };
        jobs.iter().map(|j| rates[&j.id].map(in_mb)).collect()
    }

    const AB: Option<(&str, &str)> = Some(("a", "b"));
    const BA: Option<(&str, &str)> = Some(("b", "a"));

    #[test]
    fn rate_at_follows_windows_including_past_midnight() {
        let pooled = &spec().tasks[2].bandwidth;
        assert_eq!(rate_at(pooled, at(7, 59)), Some(30 * MB));
        assert_eq!(rate_at(pooled, at(8, 0)), Some(20 * MB));
        assert_eq!(rate_at(pooled, at(17, 59)), Some(20 * MB));
        assert_eq!(rate_at(pooled, at(18, 0)), Some(30 * MB));
        assert_eq!(rate_at(pooled, at(23, 0)), None);
        assert_eq!(rate_at(pooled, at(0, 0)), None);
        assert_eq!(rate_at(pooled, at(5, 59)), None);
        assert_eq!(rate_at(pooled, at(6, 0)), Some(30 * MB));
        assert_eq!(rate_at(&spec().tasks[0].bandwidth, at(12, 0)), None);
    }

    #[test]
    fn a_link_budget_is_split_equally() {
        let jobs = [
            job("1", "free", AB),
            job("2", "free", AB),
            job("3", "free", AB),
        ];
        assert_eq!(run(&jobs, true, at(12, 0)), [Some(30); 3]);
    }

    #[test]
    fn a_job_capped_lower_leaves_its_share_to_the_others() {
        let jobs = [
            job("1", "slow", AB),
            job("2", "free", AB),
            job("3", "free", AB),
        ];
        assert_eq!(run(&jobs, true, at(12, 0)), [Some(10), Some(40), Some(40)]);
    }

    #[test]
    fn a_task_cap_is_shared_by_its_jobs() {
        let jobs = [job("1", "pooled", AB), job("2", "pooled", Some(("a", "c")))];
        assert_eq!(run(&jobs, false, at(19, 0)), [Some(15), Some(15)]);
        // The task's two jobs on the link hold 10MB/s each; the third job gets
        // the rest of the budget.
        let jobs = [
            job("1", "pooled", AB),
            job("2", "pooled", AB),
            job("3", "free", AB),
        ];
        assert_eq!(run(&jobs, true, at(12, 0)), [Some(10), Some(10), Some(70)]);
    }

    #[test]
    fn unlimited_everywhere_is_none() {
        let jobs = [
            job("1", "free", AB),
            job("2", "free", None),
            job("3", "gone", BA),
            job("4", "pooled", AB),
        ];
        // 23:00: the a-b link and the pooled task are both unlimited.
        assert_eq!(run(&jobs, true, at(23, 0)), [None; 4]);
        assert_eq!(run(&jobs[..3], false, at(12, 0)), [None; 3]);
    }

    #[test]
    fn a_link_budget_applies_to_its_pair_in_both_directions_only() {
        let jobs = [
            job("1", "free", AB),
            job("2", "free", BA),
            job("3", "free", Some(("b", "c"))),
            job("4", "free", None),
            job("5", "gone", AB),
        ];
        assert_eq!(
            run(&jobs, true, at(12, 0)),
            [Some(30), Some(30), None, None, Some(30)]
        );
    }

    #[test]
    fn tiny_shares_are_never_zero() {
        let ac = Some(("c", "a"));
        let jobs = [
            job("1", "free", ac),
            job("2", "free", ac),
            job("3", "free", ac),
            job("4", "free", ac),
        ];
        let spec = spec();
        let rates = allocate(
            &jobs,
            &caps(&spec.tasks, &spec.buckets),
            &spec.links,
            at(12, 0),
        );
        let got: Vec<u64> = rates.values().map(|r| r.unwrap().get()).collect();
        assert_eq!(got, [1, 1, 1, 1]);
        let rates = allocate(
            &jobs[..2],
            &caps(&spec.tasks, &spec.buckets),
            &spec.links,
            at(12, 0),
        );
        let got: Vec<u64> = rates.values().map(|r| r.unwrap().get()).collect();
        assert_eq!(got, [1, 1]);
    }

    #[test]
    fn uploads_share_their_bucket_tasks_cap_beside_replication_caps() {
        let tasks = format!(
            "{TASKS}buckets:
  - name: vault
    source: {{ class: gold }}
    bucket:
      endpoint: http://127.0.0.1:9
      bucket: zdr-vault
      region: r
      credentials: {{ env: ZDR_VAULT }}
    chain: {{ full_every: 30d, incremental_every: 1d }}
    recipients: [\"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\"]
    bandwidth: {{ limit: 8MB/s }}
"
        );
        let policy = zdr_schemas::parse_policy("p.yaml", POLICY).unwrap();
        let spec = zdr_schemas::parse_tasks("t.yml", &tasks, &policy).unwrap();
        let jobs = [
            job("u1", "vault", None),
            job("u2", "vault", None),
            job("r1", "slow", None),
        ];
        let rates = allocate(&jobs, &caps(&spec.tasks, &spec.buckets), &[], at(12, 0));
        let mbs = |id: &str| rates[id].map(|r| r.get() / MB);
        assert_eq!(
            (mbs("u1"), mbs("u2"), mbs("r1")),
            (Some(4), Some(4), Some(10))
        );
        // Without its bucket task's cap (none in the file), an upload is unlimited.
        let rates = allocate(&jobs, &caps(&spec.tasks, &[]), &[], at(12, 0));
        assert_eq!(rates["u1"], None);
    }
}
