//! The alert rules, pure: the compliance report, the fleet and the policy
//! come in with `now`; the set of firing alerts comes out, sorted by
//! fingerprint. The fleet's rules ([`of_fleet`]) run apart from the
//! report's ([`evaluate`]), each on its own inputs. Every alert has the labels `alertname` and `severity`, and
//! those below; no label holds a snapshot name or a figure (the figures are
//! in the `summary` annotation), so a condition keeps one fingerprint for as
//! long as it lasts.
//!
//! | alertname | labels | severity | fires when |
//! |---|---|---|---|
//! | `ZdrCopyRpoBreach` | node, dataset, copy | critical | a copy's lag is beyond the class RPO, or no snapshot on it is confirmed |
//! | `ZdrCopyRpoWarning` | node, dataset, copy | warning | a copy's lag is from 75 % of the RPO up to it |
//! | `ZdrReplicationFailing` | node, dataset, copy | critical | the pairing's last job failed or is blocked, after an earlier success |
//! | `ZdrReplicationNeverSucceeded` | node, dataset, copy | critical | the pairing's job failed or is blocked and it never succeeded |
//! | `ZdrAgentOffline` | node | critical | no heartbeat for longer than the offline timeout, or a policy node never said hello within it |
//! | `ZdrSnapshotScheduleMissed` | node, dataset | warning | production's newest snapshot is older than 1.5 × the class's smallest tier period (sanoid's hourly warning: 90 min), or there is none |
//! | `ZdrNot321Compliant` | node, dataset, check | warning | a 3-2-1 check fails (copies, media, offsite, immutable) |
//! | `ZdrPoolCapacity` | node, pool, severity | warning from 80 %, critical from 90 % | a pool's allocated share of its size |
//! | `ZdrDrillFailed` | node, dataset, copy | critical | the newest ended restore drill of that copy failed (a later pass resolves it) |
//!
//! `node` and `dataset` name the protected dataset on production; `copy`
//! names the node that holds the copy (production's own node for the
//! production copy).

use std::collections::BTreeMap;

use zdr_common::policy::Policy;

use super::Alert;
use crate::compliance::{short, CopyReport, DatasetReport, Report, Role, RpoState};
use crate::fleet::Fleet;
use crate::jobs::JobState;

/// Snapshots are missed once production's newest is older than this share
/// of the smallest tier period.
pub const SCHEDULE_MARGIN_PERCENT: u64 = 150;
pub const POOL_WARN_PERCENT: u64 = 80;
pub const POOL_CRITICAL_PERCENT: u64 = 90;

/// What the rules over the report, the policy and the drills read.
pub struct Input<'a> {
    pub report: &'a Report,
    pub policy: &'a Policy,
    /// Unix seconds.
    pub now: i64,
    /// The newest ended drill of each copy (`crate::drills::outcomes`).
    pub drills: &'a [DrillOutcome],
}

/// What the rules over the fleet (agents offline, pools full) read. They run
/// apart from the others so that the shell holds the fleet lock for these
/// alone, not while it walks the whole report.
pub struct FleetInput<'a> {
    pub fleet: &'a Fleet,
    pub policy: &'a Policy,
    /// Unix seconds.
    pub now: i64,
    pub offline_after_secs: i64,
    /// When this coordinator began to lead: a policy node that never said
    /// hello is offline only once it had the timeout to do so.
    pub leading_since: i64,
}

/// How the newest ended restore drill of one copy of a protected dataset went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillOutcome {
    pub node: String,
    pub dataset: String,
    /// The copy's node; empty when the drill found no copy to restore from.
    pub copy: String,
    pub passed: bool,
    pub why: Option<String>,
    /// Unix seconds.
    pub ended_at: i64,
}

/// The alerts of the fleet's own state: agents offline, pools full.
pub fn of_fleet(input: &FleetInput) -> Vec<Alert> {
    let mut out = agents(input);
    out.extend(pools(input.fleet));
    out
}

/// Every alert firing now, sorted by fingerprint: those of the report, the
/// policy and the drills, with `fleet` ([`of_fleet`]'s).
pub fn evaluate(input: &Input, fleet: Vec<Alert>) -> Vec<Alert> {
    let mut out = fleet;
    for d in &input.report.datasets {
        for c in &d.copies {
            out.extend(copy_rpo(d, c));
            out.extend(replication(input.now, d, c));
        }
        out.extend(schedule(input, d));
        out.extend(three_two_one(d));
    }
    out.extend(input.drills.iter().filter_map(|d| drill(input.now, d)));
    out.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
    out.dedup_by(|a, b| a.fingerprint == b.fingerprint);
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn copy_labels(name: &str, severity: &str, d: &DatasetReport, c: &CopyReport) -> Alert {
    let l = labels(&[
        ("alertname", name),
        ("severity", severity),
        ("node", &d.node),
        ("dataset", &d.dataset),
        ("copy", &c.node),
    ]);
    Alert::new(l, String::new())
}

fn with_summary(mut a: Alert, summary: String) -> Alert {
    a.annotations.insert("summary".into(), summary);
    a
}

/// "replica copy (task offsite) of node-a1:tank/db on node-b1".
fn copy_name(d: &DatasetReport, c: &CopyReport) -> String {
    match (&c.role, &c.replication) {
        (Role::Replica, Some(r)) => format!(
            "replica copy (task {}) of {}:{} on {}",
            r.task, d.node, d.dataset, c.node
        ),
        _ => format!(
            "{} copy of {}:{} on {}",
            c.role.as_str(),
            d.node,
            d.dataset,
            c.node
        ),
    }
}

fn copy_rpo(d: &DatasetReport, c: &CopyReport) -> Option<Alert> {
    let (name, severity) = match c.rpo {
        RpoState::Ok => return None,
        RpoState::Warning => ("ZdrCopyRpoWarning", "warning"),
        RpoState::Breach => ("ZdrCopyRpoBreach", "critical"),
    };
    let rpo = short(d.rpo_secs as i64);
    let summary = match c.lag_secs {
        Some(lag) => format!("{} is {} behind its {rpo} RPO", copy_name(d, c), short(lag)),
        None => format!(
            "{} holds no confirmed snapshot; its RPO is {rpo}",
            copy_name(d, c)
        ),
    };
    Some(with_summary(copy_labels(name, severity, d, c), summary))
}

fn replication(now: i64, d: &DatasetReport, c: &CopyReport) -> Option<Alert> {
    let job = c.replication.as_ref()?.last_job.as_ref()?;
    if !matches!(job.state, JobState::Failed | JobState::Blocked) {
        return None;
    }
    let error = job.error.as_deref().unwrap_or("no error given");
    let (name, summary) = match job.last_success_ms {
        Some(ms) => (
            "ZdrReplicationFailing",
            format!(
                "replication to the {} is {}, last success {} ago: {error}",
                copy_name(d, c),
                state_word(job.state),
                short(now - ms / 1000)
            ),
        ),
        None => (
            "ZdrReplicationNeverSucceeded",
            format!(
                "replication to the {} has never succeeded; job {} is {}: {error}",
                copy_name(d, c),
                job.id,
                state_word(job.state)
            ),
        ),
    };
    Some(with_summary(copy_labels(name, "critical", d, c), summary))
}

fn state_word(s: JobState) -> &'static str {
    match s {
        JobState::Blocked => "blocked",
        _ => "failing",
    }
}

/// The smallest tier period that keeps snapshots, in seconds.
fn smallest_period(policy: &Policy, class: &str) -> Option<u64> {
    policy
        .classes
        .get(class)?
        .tiers
        .iter()
        .find(|(_, keep)| **keep > 0)
        .map(|(p, _)| p.0.secs())
}

fn schedule(input: &Input, d: &DatasetReport) -> Option<Alert> {
    let period = smallest_period(input.policy, &d.class)?;
    let limit = period * SCHEDULE_MARGIN_PERCENT / 100;
    let production = d.copies.iter().find(|c| c.role == Role::Production)?;
    let age = production.newest.as_ref().map(|s| input.now - s.creation);
    let summary = match age {
        Some(age) if age <= limit as i64 => return None,
        Some(age) => format!(
            "production {}:{} took its newest snapshot {} ago; its smallest tier takes one every {} (late after {})",
            d.node,
            d.dataset,
            short(age),
            short(period as i64),
            short(limit as i64)
        ),
        None => format!(
            "production {}:{} has no snapshot; its smallest tier takes one every {}",
            d.node,
            d.dataset,
            short(period as i64)
        ),
    };
    let l = labels(&[
        ("alertname", "ZdrSnapshotScheduleMissed"),
        ("severity", "warning"),
        ("node", &d.node),
        ("dataset", &d.dataset),
    ]);
    Some(Alert::new(l, summary))
}

fn three_two_one(d: &DatasetReport) -> Vec<Alert> {
    d.checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| {
            let l = labels(&[
                ("alertname", "ZdrNot321Compliant"),
                ("severity", "warning"),
                ("node", &d.node),
                ("dataset", &d.dataset),
                ("check", c.check.as_str()),
            ]);
            let summary = format!(
                "{}:{} fails the 3-2-1 {} check: {}",
                d.node,
                d.dataset,
                c.check.as_str(),
                c.reason
            );
            Alert::new(l, summary)
        })
        .collect()
}

fn offline(node: &str, summary: String) -> Alert {
    let l = labels(&[
        ("alertname", "ZdrAgentOffline"),
        ("severity", "critical"),
        ("node", node),
    ]);
    Alert::new(l, summary)
}

fn agents(input: &FleetInput) -> Vec<Alert> {
    let timeout = input.offline_after_secs;
    let mut out: Vec<Alert> = input
        .fleet
        .nodes
        .iter()
        .filter(|(n, _)| !input.fleet.online(n, input.now, timeout))
        .map(|(n, rec)| {
            let summary = format!(
                "agent {n} has sent nothing for {} (offline after {})",
                short(input.now - rec.last_seen),
                short(timeout)
            );
            offline(n, summary)
        })
        .collect();
    if input.now - input.leading_since > timeout {
        for n in input.policy.nodes.keys() {
            if !input.fleet.nodes.contains_key(n) {
                let summary = format!(
                    "agent {n} is in the policy but has not said hello to this coordinator in {}",
                    short(input.now - input.leading_since)
                );
                out.push(offline(n, summary));
            }
        }
    }
    out
}

fn drill(now: i64, d: &DrillOutcome) -> Option<Alert> {
    if d.passed {
        return None;
    }
    let l = labels(&[
        ("alertname", "ZdrDrillFailed"),
        ("severity", "critical"),
        ("node", &d.node),
        ("dataset", &d.dataset),
        ("copy", &d.copy),
    ]);
    let from = if d.copy.is_empty() {
        String::new()
    } else {
        format!(" from the copy on {}", d.copy)
    };
    let summary = format!(
        "the restore drill of {}:{}{from} failed {} ago: {}; `zdr drill list` has the details, \
         `zdr drill run {}:{}` drills it again",
        d.node,
        d.dataset,
        short(now - d.ended_at),
        d.why.as_deref().unwrap_or("no reason given"),
        d.node,
        d.dataset
    );
    Some(Alert::new(l, summary))
}

fn pools(fleet: &Fleet) -> Vec<Alert> {
    let mut out = Vec::new();
    for (node, rec) in &fleet.nodes {
        for p in &rec.pools {
            if p.size == 0 {
                continue;
            }
            let percent = u128::from(p.allocated) * 100 / u128::from(p.size);
            let severity = if percent >= u128::from(POOL_CRITICAL_PERCENT) {
                "critical"
            } else if percent >= u128::from(POOL_WARN_PERCENT) {
                "warning"
            } else {
                continue;
            };
            let l = labels(&[
                ("alertname", "ZdrPoolCapacity"),
                ("severity", severity),
                ("node", node),
                ("pool", &p.name),
            ]);
            let summary = format!(
                "pool {} on {node} is {percent} % full ({} of {} bytes allocated; warning from {POOL_WARN_PERCENT} %, critical from {POOL_CRITICAL_PERCENT} %)",
                p.name, p.allocated, p.size
            );
            out.push(Alert::new(l, summary));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::{Check, CheckKind, LastJob, Replication, SnapshotPoint};
    use crate::fleet::NodeRecord;
    use zdr_common::wire::{Hello, PoolInfo};

    const NOW: i64 = 1_000_000;

    const POLICY: &str = r#"version: 1
sites: { a: {}, b: {} }
nodes:
  a1: { site: a, media: ssd }
  b1: { site: b, media: hdd }
classes:
  gold: { rpo: 1h, rto: 2h, tiers: { 15m: 4, hourly: 24 } }
datasets:
  - { match: "tank/db", class: gold }
"#;

    fn policy() -> Policy {
        zdr_schemas::parse_policy("p.yaml", POLICY).unwrap()
    }

    fn node(fleet: &mut Fleet, name: &str, seen: i64, pools: Vec<PoolInfo>) {
        let hello = Hello {
            node: name.into(),
            site: "a".into(),
            media: "ssd".into(),
            version: "0".into(),
            backend: "sim".into(),
            pools: pools.clone(),
            started_at: 0,
            policy_revision: None,
        };
        let rec = NodeRecord {
            hello,
            last_seen: seen,
            policy_revision: None,
            policy_refused: None,
            pools,
            inventory_generation: 0,
            delta_seq: 0,
        };
        fleet.nodes.insert(name.into(), rec);
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::default();
        node(&mut f, "a1", NOW, vec![]);
        node(&mut f, "b1", NOW, vec![]);
        f
    }

    fn copy(role: Role, node: &str, lag: Option<i64>, rpo: RpoState) -> CopyReport {
        CopyReport {
            role,
            node: node.into(),
            site: "a".into(),
            media: "ssd".into(),
            dataset: "tank/db".into(),
            online: true,
            encrypted: false,
            newest: lag.map(|l| SnapshotPoint {
                name: "zdr_1".into(),
                guid: 1,
                creation: NOW - l,
            }),
            lag_secs: lag,
            rpo,
            replication: (role == Role::Replica).then(|| Replication {
                task: "offsite".into(),
                pending_snapshots: 0,
                pending_bytes: 0,
                last_job: None,
            }),
            verification: crate::compliance::Verification::NeverDrilled,
        }
    }

    fn pass(kind: CheckKind) -> Check {
        Check {
            check: kind,
            pass: true,
            have: 1,
            want: 1,
            reason: "fine".into(),
        }
    }

    /// tank/db on a1, a replica on b1; both fresh, every check passing.
    fn dataset() -> DatasetReport {
        DatasetReport {
            node: "a1".into(),
            dataset: "tank/db".into(),
            class: "gold".into(),
            rpo_secs: 3600,
            rto_secs: 7200,
            rto_estimate: crate::compliance::rto_estimate(&[], "a1", "tank/db", 0, 7200),
            immutable_for_secs: 0,
            drill_every_secs: 90 * 86_400,
            rpo: RpoState::Ok,
            compliant: true,
            copies: vec![
                copy(Role::Production, "a1", Some(60), RpoState::Ok),
                copy(Role::Replica, "b1", Some(600), RpoState::Ok),
            ],
            checks: [
                CheckKind::Copies,
                CheckKind::Media,
                CheckKind::Offsite,
                CheckKind::Immutable,
            ]
            .into_iter()
            .map(pass)
            .collect(),
            unpaired: vec![],
            verification: String::new(),
        }
    }

    fn eval(d: DatasetReport, fleet: &Fleet) -> Vec<Alert> {
        let report = Report {
            generated_at: NOW,
            warn_percent: 75,
            summary: Default::default(),
            datasets: vec![d],
        };
        let p = policy();
        let of_fleet = of_fleet(&FleetInput {
            fleet,
            policy: &p,
            now: NOW,
            offline_after_secs: 30,
            leading_since: NOW - 3600,
        });
        evaluate(
            &Input {
                report: &report,
                policy: &p,
                now: NOW,
                drills: &[],
            },
            of_fleet,
        )
    }

    #[test]
    fn a_failed_drill_fires_until_that_copy_passes_one() {
        let p = policy();
        let f = fleet();
        let report = Report {
            generated_at: NOW,
            warn_percent: 75,
            summary: Default::default(),
            datasets: vec![],
        };
        let outcome = |passed| DrillOutcome {
            node: "a1".into(),
            dataset: "tank/db".into(),
            copy: "b1".into(),
            passed,
            why: (!passed).then(|| "content differs".into()),
            ended_at: NOW - 60,
        };
        let at = |drills: &[DrillOutcome]| {
            let of_fleet = of_fleet(&FleetInput {
                fleet: &f,
                policy: &p,
                now: NOW,
                offline_after_secs: 30,
                leading_since: NOW,
            });
            evaluate(
                &Input {
                    report: &report,
                    policy: &p,
                    now: NOW,
                    drills,
                },
                of_fleet,
            )
        };
        let fired = at(&[outcome(false)]);
        let a = named(&fired, "ZdrDrillFailed");
        assert_eq!(a.len(), 1, "{fired:?}");
        assert_eq!(a[0].labels["copy"], "b1");
        assert_eq!(a[0].labels["severity"], "critical");
        assert!(
            summary(a[0]).contains("from the copy on b1 failed 1m ago: content differs"),
            "{}",
            summary(a[0])
        );
        assert!(named(&at(&[outcome(true)]), "ZdrDrillFailed").is_empty());
    }

    fn named<'a>(alerts: &'a [Alert], name: &str) -> Vec<&'a Alert> {
        alerts.iter().filter(|a| a.name() == name).collect()
    }

    fn summary(a: &Alert) -> &str {
        &a.annotations["summary"]
    }

    #[test]
    fn a_healthy_fleet_fires_nothing() {
        assert_eq!(eval(dataset(), &fleet()), vec![]);
    }

    #[test]
    fn copy_rpo_breach_and_warning_fire_per_copy() {
        let mut d = dataset();
        d.copies[1].lag_secs = Some(3 * 86_400);
        d.copies[1].rpo = RpoState::Breach;
        let alerts = eval(d.clone(), &fleet());
        let breach = named(&alerts, "ZdrCopyRpoBreach");
        assert_eq!(breach.len(), 1, "{alerts:#?}");
        assert_eq!(
            breach[0].labels,
            labels(&[
                ("alertname", "ZdrCopyRpoBreach"),
                ("severity", "critical"),
                ("node", "a1"),
                ("dataset", "tank/db"),
                ("copy", "b1"),
            ])
        );
        assert_eq!(
            summary(breach[0]),
            "replica copy (task offsite) of a1:tank/db on b1 is 3d behind its 1h RPO"
        );
        assert!(named(&alerts, "ZdrCopyRpoWarning").is_empty());

        d.copies[1].lag_secs = Some(3000);
        d.copies[1].rpo = RpoState::Warning;
        let alerts = eval(d.clone(), &fleet());
        assert!(named(&alerts, "ZdrCopyRpoBreach").is_empty());
        let warn = named(&alerts, "ZdrCopyRpoWarning");
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].labels["severity"], "warning");

        // No confirmed snapshot is a breach too, and says so.
        d.copies[1].lag_secs = None;
        d.copies[1].newest = None;
        d.copies[1].rpo = RpoState::Breach;
        let alerts = eval(d, &fleet());
        assert_eq!(
            summary(named(&alerts, "ZdrCopyRpoBreach")[0]),
            "replica copy (task offsite) of a1:tank/db on b1 holds no confirmed snapshot; its RPO is 1h"
        );
    }

    #[test]
    fn the_fingerprint_follows_the_labels_not_the_figures() {
        let mut d = dataset();
        d.copies[1].lag_secs = Some(4000);
        d.copies[1].rpo = RpoState::Breach;
        let a = eval(d.clone(), &fleet());
        d.copies[1].lag_secs = Some(9000);
        let b = eval(d, &fleet());
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        assert_ne!(summary(&a[0]), summary(&b[0]));
        assert_eq!(a[0].fingerprint.len(), 16);
        let mut other = a[0].labels.clone();
        other.insert("copy".into(), "b2".into());
        assert_ne!(super::super::fingerprint(&other), a[0].fingerprint);
    }

    fn with_job(state: JobState, last_success_ms: Option<i64>) -> DatasetReport {
        let mut d = dataset();
        d.copies[1].replication.as_mut().unwrap().last_job = Some(LastJob {
            id: "job-7".into(),
            state,
            error: Some("target refused".into()),
            last_success_ms,
            finished_at_ms: None,
        });
        d
    }

    #[test]
    fn replication_failing_and_never_succeeded() {
        let alerts = eval(
            with_job(JobState::Failed, Some((NOW - 7200) * 1000)),
            &fleet(),
        );
        let failing = named(&alerts, "ZdrReplicationFailing");
        assert_eq!(failing.len(), 1, "{alerts:#?}");
        assert_eq!(failing[0].labels["copy"], "b1");
        assert_eq!(
            summary(failing[0]),
            "replication to the replica copy (task offsite) of a1:tank/db on b1 is failing, last success 2h ago: target refused"
        );
        assert!(named(&alerts, "ZdrReplicationNeverSucceeded").is_empty());

        let alerts = eval(with_job(JobState::Blocked, None), &fleet());
        let never = named(&alerts, "ZdrReplicationNeverSucceeded");
        assert_eq!(never.len(), 1);
        assert!(
            summary(never[0]).contains("has never succeeded; job job-7 is blocked"),
            "{}",
            summary(never[0])
        );
        assert!(named(&alerts, "ZdrReplicationFailing").is_empty());

        for ok in [JobState::Done, JobState::Running, JobState::Planned] {
            let alerts = eval(with_job(ok, None), &fleet());
            assert_eq!(alerts, vec![], "{ok:?}");
        }
    }

    #[test]
    fn an_agent_offline_fires_and_a_silent_policy_node_after_the_timeout() {
        let mut f = fleet();
        node(&mut f, "b1", NOW - 300, vec![]);
        let alerts = eval(dataset(), &f);
        let off = named(&alerts, "ZdrAgentOffline");
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].labels["node"], "b1");
        assert_eq!(
            summary(off[0]),
            "agent b1 has sent nothing for 5m (offline after 30s)"
        );
        // Within the timeout it is online.
        node(&mut f, "b1", NOW - 30, vec![]);
        assert_eq!(eval(dataset(), &f), vec![]);

        // b1 never said hello: offline once the coordinator waited the timeout.
        f.nodes.remove("b1");
        let report = Report {
            generated_at: NOW,
            warn_percent: 75,
            summary: Default::default(),
            datasets: vec![],
        };
        let p = policy();
        let at = |leading_since| {
            let of_fleet = of_fleet(&FleetInput {
                fleet: &f,
                policy: &p,
                now: NOW,
                offline_after_secs: 30,
                leading_since,
            });
            let input = Input {
                report: &report,
                policy: &p,
                now: NOW,
                drills: &[],
            };
            evaluate(&input, of_fleet)
        };
        assert_eq!(at(NOW - 10), vec![]);
        let late = at(NOW - 600);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].labels["node"], "b1");
        assert!(summary(&late[0]).contains("has not said hello"));
    }

    #[test]
    fn a_missed_snapshot_schedule_uses_the_smallest_tier_with_a_margin() {
        // The smallest tier is 15m: late after 22m30s.
        let mut d = dataset();
        d.copies[0].newest.as_mut().unwrap().creation = NOW - 22 * 60;
        assert!(named(&eval(d.clone(), &fleet()), "ZdrSnapshotScheduleMissed").is_empty());
        d.copies[0].newest.as_mut().unwrap().creation = NOW - 40 * 60;
        let alerts = eval(d.clone(), &fleet());
        let missed = named(&alerts, "ZdrSnapshotScheduleMissed");
        assert_eq!(missed.len(), 1);
        assert_eq!(
            summary(missed[0]),
            "production a1:tank/db took its newest snapshot 40m ago; its smallest tier takes one every 15m (late after 22m30s)"
        );
        assert!(!missed[0].labels.contains_key("copy"));
        d.copies[0].newest = None;
        let alerts = eval(d, &fleet());
        assert!(summary(named(&alerts, "ZdrSnapshotScheduleMissed")[0]).contains("has no snapshot"));
    }

    #[test]
    fn each_failing_3_2_1_check_fires_with_its_reason() {
        let mut d = dataset();
        d.checks[2].pass = false;
        d.checks[2].reason = "offsite copy on b1 is 3d behind its 1h RPO".into();
        d.compliant = false;
        let alerts = eval(d, &fleet());
        let v = named(&alerts, "ZdrNot321Compliant");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].labels["check"], "offsite");
        assert_eq!(
            summary(v[0]),
            "a1:tank/db fails the 3-2-1 offsite check: offsite copy on b1 is 3d behind its 1h RPO"
        );
    }

    #[test]
    fn pool_capacity_warns_at_80_and_is_critical_at_90_percent() {
        let pool = |allocated| PoolInfo {
            name: "tank".into(),
            size: 1000,
            allocated,
            free: 1000 - allocated,
            health: "ONLINE".into(),
        };
        let mut f = fleet();
        for (allocated, want) in [
            (799, None),
            (800, Some("warning")),
            (899, Some("warning")),
            (900, Some("critical")),
        ] {
            node(&mut f, "a1", NOW, vec![pool(allocated)]);
            let alerts = eval(dataset(), &f);
            let got = named(&alerts, "ZdrPoolCapacity");
            assert_eq!(
                got.first().map(|a| a.labels["severity"].as_str()),
                want,
                "{allocated}"
            );
            if let Some(a) = got.first() {
                assert_eq!(a.labels["pool"], "tank");
                assert!(summary(a)
                    .starts_with(&format!("pool tank on a1 is {} % full", allocated / 10)));
            }
        }
    }
}
