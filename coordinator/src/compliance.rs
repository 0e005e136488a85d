//! RPO per copy and 3-2-1 compliance, per protected dataset. Pure: the fleet
//! model, the policy, the pairings and the job records come in, with `now`;
//! the report comes out. The HTTP API serves it and `zdr report` renders it.
//!
//! The rules:
//! - A protected dataset is one with a class, on a node, that is not itself
//!   the target of a pairing. Its copies are production and one replica per
//!   pairing of it.
//! - A copy's lag is `now` minus the creation of the newest snapshot on it
//!   that the source knows by GUID (a snapshot or a bookmark of the
//!   production dataset); a snapshot of the same name with another GUID does
//!   not count. Production's lag is that of its own newest snapshot.
//! - Against the class's RPO a copy is ok below 75 % of it
//!   ([`WARN_PERCENT`]), warning from there up to the RPO, breach beyond it
//!   or when no snapshot on it is confirmed.
//! - Per pairing, what is still to send: the source's snapshots newer than
//!   the newest common one (all of them when none is common); the bytes are
//!   an estimate: the sum of those snapshots' `used`, or the dataset's
//!   `used` when a full send is due.
//! - A copy counts toward 3-2-1 while it is within its RPO (ok or warning):
//!   a copy days behind protects days-old data only. The checks, each
//!   against the class's `copies` (3, 2, 1 by default): copies (production
//!   counts), distinct media, copies at a site other than production's, and
//!   one immutable copy: a counted replica of a class with `immutable_for`
//!   above zero (its agent refuses to destroy younger snapshots).
//! - The RTO estimate is the dataset's `used` over a throughput measured on
//!   a path that brings it back, the best source first: the newest passed
//!   drill of the dataset (its restore's bytes over its transfer time), else
//!   its restores that landed, else the replication jobs from it that
//!   finished (their bytes over their run time, summed over the samples);
//!   otherwise there is no measurement and no estimate. It is compared with
//!   the class's RTO, and the report says where the figure comes from.
//! - A replica or bucket copy is verified by a restore drill only if the
//!   newest drill that ended on it passed, less than the class's drill
//!   interval (`drill.every`) ago; otherwise its [`Verification`] says why
//!   (never drilled, the last drill failed, the last pass is too old).
//!   Drills are read from the job records (`crate::drills::outcomes`), so
//!   the report, the status page and `zdr report` give one verdict.
//!   Production is what drills compare against, so it has none.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use zdr_common::policy::{Class, Policy};
use zdr_common::wire::DatasetInventory;

use crate::alerts::rules::DrillOutcome;
use crate::fleet::{resolved_class, Fleet};
use crate::jobs::{JobKind, JobRecord, JobState};
use crate::pairing::{Pairing, Unpaired};

/// A copy is in warning from this share of its RPO on.
pub const WARN_PERCENT: u64 = 75;

/// Everything the report is computed from.
pub struct Input<'a> {
    pub fleet: &'a Fleet,
    pub policy: &'a Policy,
    pub pairings: &'a [Pairing],
    pub unpaired: &'a [Unpaired],
    pub jobs: &'a [JobRecord],
    /// Unix seconds.
    pub now: i64,
    /// A node is offline after this long without a heartbeat.
    pub offline_after_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub generated_at: i64,
    pub warn_percent: u64,
    pub summary: Summary,
    pub datasets: Vec<DatasetReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub datasets: usize,
    pub compliant: usize,
    pub copies_ok: usize,
    pub copies_warning: usize,
    pub copies_breach: usize,
}

impl Summary {
    /// Every copy the report counted, whatever its RPO state.
    pub fn copies(&self) -> usize {
        self.copies_ok + self.copies_warning + self.copies_breach
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    pub node: String,
    pub dataset: String,
    pub class: String,
    pub rpo_secs: u64,
    /// The class's objective.
    pub rto_secs: u64,
    /// What a restore would take by measured throughput, and its source.
    pub rto_estimate: RtoEstimate,
    pub immutable_for_secs: u64,
    /// The class's drill interval: a copy's last pass must be younger.
    pub drill_every_secs: u64,
    /// The worst state among the copies.
    pub rpo: RpoState,
    /// Every 3-2-1 check passes.
    pub compliant: bool,
    /// Production first, then the replicas by task.
    pub copies: Vec<CopyReport>,
    pub checks: Vec<Check>,
    /// Tasks that select this dataset but found it no target, and why.
    pub unpaired: Vec<UnpairedTask>,
    /// The copies' drill verdicts in one sentence.
    pub verification: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoState {
    Ok,
    Warning,
    Breach,
}

impl RpoState {
    pub fn as_str(self) -> &'static str {
        match self {
            RpoState::Ok => "ok",
            RpoState::Warning => "warning",
            RpoState::Breach => "breach",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Production,
    Replica,
    /// The streams a bucket task uploaded (`crate::offsite`): its newest
    /// point is the current chain's tip.
    Bucket,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Production => "production",
            Role::Replica => "replica",
            Role::Bucket => "bucket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyReport {
    pub role: Role,
    pub node: String,
    pub site: String,
    pub media: String,
    pub dataset: String,
    pub online: bool,
    /// Raw-encrypted (production: encrypted): a restore arrives raw and
    /// needs its key loaded.
    pub encrypted: bool,
    /// The newest snapshot on the copy that the source knows by GUID.
    pub newest: Option<SnapshotPoint>,
    pub lag_secs: Option<i64>,
    pub rpo: RpoState,
    /// Replicas only: their pairing's backlog and last job.
    pub replication: Option<Replication>,
    pub verification: Verification,
}

/// Whether a copy is verified by a restore drill (see the module doc).
/// Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verification {
    /// Production: what drills compare against.
    Source,
    /// The newest drill on the copy passed within the interval.
    Verified {
        passed_at: i64,
    },
    NeverDrilled,
    /// The newest drill on the copy failed.
    Failed {
        ended_at: i64,
        why: Option<String>,
    },
    /// The newest drill passed, longer ago than the interval.
    Stale {
        passed_at: i64,
    },
}

impl Verification {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verification::Verified { .. })
    }

    /// The verdict as a sentence, `every_secs` being the class's interval.
    pub fn describe(&self, now: i64, every_secs: u64) -> String {
        match self {
            Verification::Source => "the source drills compare against".into(),
            Verification::Verified { passed_at } => format!(
                "verified by a drill {} ago (interval {})",
                in_days(now - passed_at),
                in_days(every_secs as i64)
            ),
            Verification::NeverDrilled => "not verified by a drill".into(),
            Verification::Failed { ended_at, why } => format!(
                "last drill failed on {}{}",
                utc_date(*ended_at),
                why.as_ref().map(|w| format!(": {w}")).unwrap_or_default()
            ),
            Verification::Stale { passed_at } => format!(
                "last passed drill is {} old, interval {}",
                in_days(now - passed_at),
                in_days(every_secs as i64)
            ),
        }
    }
}

/// Drill ages and intervals in days from two days on (`120d`, as policies
/// write them, not `17w1d`), else as [`short`].
pub fn in_days(secs: i64) -> String {
    if secs >= 2 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        short(secs)
    }
}

/// A restore-time estimate (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtoEstimate {
    /// `bytes` over the source's throughput; `None` without a measurement.
    pub secs: Option<u64>,
    /// The dataset's `used`.
    pub bytes: u64,
    /// Within the class's RTO; `None` without an estimate.
    pub within: Option<bool>,
    pub source: RtoSource,
}

/// Where an RTO estimate's throughput comes from. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum RtoSource {
    /// The dataset's newest passed drill, restored from the copy on `copy`.
    Drill {
        ended_at: i64,
        copy: String,
        bytes_per_sec: u64,
        /// The drill's own start-to-verified time.
        measured_rto_secs: u64,
    },
    /// Restores of the dataset that landed.
    Restore {
        samples: usize,
        bytes_per_sec: u64,
    },
    /// Replication jobs from the dataset that finished.
    Replication {
        samples: usize,
        bytes_per_sec: u64,
    },
    NoMeasurement,
}

impl RtoEstimate {
    /// The estimate as a sentence, against the class's `rto_secs`.
    pub fn describe(&self, rto_secs: u64) -> String {
        let rate = |b: &u64| format!("{}/s", indicatif::HumanBytes(*b));
        let from = match &self.source {
            RtoSource::Drill {
                ended_at,
                copy,
                bytes_per_sec,
                measured_rto_secs,
            } => format!(
                "from the drill of {} from {copy}, {} (it took {})",
                utc_date(*ended_at),
                rate(bytes_per_sec),
                short(*measured_rto_secs as i64)
            ),
            RtoSource::Restore {
                samples,
                bytes_per_sec,
            } => format!(
                "from restores, {} sample{}, {}",
                samples,
                if *samples == 1 { "" } else { "s" },
                rate(bytes_per_sec)
            ),
            RtoSource::Replication {
                samples,
                bytes_per_sec,
            } => format!(
                "from replication, {} sample{}, {}",
                samples,
                if *samples == 1 { "" } else { "s" },
                rate(bytes_per_sec)
            ),
            RtoSource::NoMeasurement => return "no measurement".into(),
        };
        match self.secs {
            Some(secs) => format!(
                "~{} for {} ({} the {} RTO), {from}",
                short(secs as i64),
                indicatif::HumanBytes(self.bytes),
                if secs <= rto_secs { "within" } else { "OVER" },
                short(rto_secs as i64)
            ),
            None => format!("no estimate, {from}"),
        }
    }
}

/// `bytes` over `ms` milliseconds, per second; `None` for no time.
fn per_sec(bytes: u64, ms: i64) -> Option<u64> {
    (ms > 0 && bytes > 0).then(|| (bytes as u128 * 1000 / ms as u128).min(u64::MAX as u128) as u64)
}

/// The estimate for `node:dataset` of `bytes` from the job records.
pub fn rto_estimate<'a, J>(
    jobs: J,
    node: &str,
    dataset: &str,
    bytes: u64,
    rto_secs: u64,
) -> RtoEstimate
where
    J: IntoIterator<Item = &'a JobRecord> + Clone,
{
    let of_dataset = |j: &&JobRecord| {
        j.restore
            .as_ref()
            .is_some_and(|r| r.node == node && r.dataset == dataset)
    };
    let drill = jobs
        .clone()
        .into_iter()
        .filter(of_dataset)
        .filter_map(|j| {
            let r = j.drill.as_ref()?.result.as_ref().filter(|r| r.passed)?;
            let moved = j
                .restore
                .as_ref()
                .map_or(0, |i| i.landed_bytes)
                .max(j.bytes);
            let rate = per_sec(moved, r.transfer_ms as i64)?;
            Some((r.ended_at, j, rate, r.rto_ms.unwrap_or(0) / 1000))
        })
        .max_by_key(|(ended_at, ..)| *ended_at);
    let summed = |kind: JobKind, mine: &dyn Fn(&JobRecord) -> bool| {
        let (mut n, mut moved, mut ms) = (0usize, 0u64, 0i64);
        for j in jobs
            .clone()
            .into_iter()
            .filter(|j| j.kind == kind && j.state == JobState::Done)
        {
            let (Some(end), true) = (j.finished_at_ms, mine(j)) else {
                continue;
            };
            let took = end - j.started_at_ms;
            let b = j
                .restore
                .as_ref()
                .map_or(0, |i| i.landed_bytes)
                .max(j.bytes);
            if per_sec(b, took).is_some() {
                n += 1;
                moved += b;
                ms += took;
            }
        }
        per_sec(moved, ms).map(|rate| (n, rate))
    };
    let source = if let Some((ended_at, j, rate, rto)) = drill {
        RtoSource::Drill {
            ended_at,
            copy: j.source_node.clone(),
            bytes_per_sec: rate,
            measured_rto_secs: rto,
        }
    } else if let Some((samples, rate)) = summed(JobKind::Restore, &|j| of_dataset(&j)) {
        RtoSource::Restore {
            samples,
            bytes_per_sec: rate,
        }
    } else if let Some((samples, rate)) = summed(JobKind::Replication, &|j| {
        j.source_node == node && j.dataset == dataset
    }) {
        RtoSource::Replication {
            samples,
            bytes_per_sec: rate,
        }
    } else {
        RtoSource::NoMeasurement
    };
    let rate = match &source {
        RtoSource::Drill { bytes_per_sec, .. }
        | RtoSource::Restore { bytes_per_sec, .. }
        | RtoSource::Replication { bytes_per_sec, .. } => Some(*bytes_per_sec),
        RtoSource::NoMeasurement => None,
    };
    let secs = rate.map(|r| bytes.div_ceil(r.max(1)));
    RtoEstimate {
        secs,
        bytes,
        within: secs.map(|s| s <= rto_secs),
        source,
    }
}

/// A day in UTC: `2026-12-01`.
pub fn utc_date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// The verdict for the copy on `copy` of `node:dataset`, from the newest
/// ended drill of each copy (`crate::drills::outcomes`).
pub fn verification(
    outcomes: &[DrillOutcome],
    node: &str,
    dataset: &str,
    copy: &str,
    every_secs: u64,
    now: i64,
) -> Verification {
    let newest = outcomes
        .iter()
        .filter(|o| o.node == node && o.dataset == dataset && o.copy == copy)
        .max_by_key(|o| o.ended_at);
    match newest {
        None => Verification::NeverDrilled,
        Some(o) if !o.passed => Verification::Failed {
            ended_at: o.ended_at,
            why: o.why.clone(),
        },
        Some(o) if now - o.ended_at > every_secs as i64 => Verification::Stale {
            passed_at: o.ended_at,
        },
        Some(o) => Verification::Verified {
            passed_at: o.ended_at,
        },
    }
}

/// The dataset's line: how many copies a drill verified, and why not the
/// others.
fn verification_line(copies: &[CopyReport], now: i64, every_secs: u64) -> String {
    let drilled: Vec<&CopyReport> = copies
        .iter()
        .filter(|c| c.verification != Verification::Source)
        .collect();
    if drilled.is_empty() {
        return "not verified by a drill: no copy besides production".into();
    }
    let ok = drilled
        .iter()
        .filter(|c| c.verification.is_verified())
        .count();
    let mut out = format!(
        "{ok} of {} verified by a drill within {}",
        plural_copies(drilled.len()),
        in_days(every_secs as i64)
    );
    for c in drilled.iter().filter(|c| !c.verification.is_verified()) {
        out.push_str(&format!(
            "; {}: {}",
            name(c, false),
            c.verification.describe(now, every_secs)
        ));
    }
    out
}

fn plural_copies(n: usize) -> String {
    format!("{n} cop{}", if n == 1 { "y" } else { "ies" })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPoint {
    pub name: String,
    pub guid: u64,
    pub creation: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replication {
    pub task: String,
    pub pending_snapshots: usize,
    /// An estimate (see the module doc).
    pub pending_bytes: u64,
    pub last_job: Option<LastJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastJob {
    pub id: String,
    pub state: JobState,
    pub error: Option<String>,
    pub last_success_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Copies,
    Media,
    Offsite,
    Immutable,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Copies => "copies",
            CheckKind::Media => "media",
            CheckKind::Offsite => "offsite",
            CheckKind::Immutable => "immutable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub check: CheckKind,
    pub pass: bool,
    pub have: usize,
    pub want: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpairedTask {
    pub task: String,
    pub why: String,
}

/// A duration in its two largest units: `3d4h`, `15m20s`, `9s`.
pub fn short(secs: i64) -> String {
    let full = zdr_common::Duration::from_secs(secs.max(0) as u64).to_string();
    let mut units = 0;
    let mut out = String::new();
    for c in full.chars() {
        out.push(c);
        if c.is_ascii_alphabetic() {
            units += 1;
            if units == 2 {
                break;
            }
        }
    }
    out
}

/// Ok below [`WARN_PERCENT`] of the RPO, warning up to it, breach beyond
/// it or without a confirmed snapshot.
pub fn rpo_state(lag_secs: Option<i64>, rpo_secs: u64) -> RpoState {
    let Some(lag) = lag_secs else {
        return RpoState::Breach;
    };
    let lag = lag.max(0) as u64;
    if lag * 100 < rpo_secs * WARN_PERCENT {
        RpoState::Ok
    } else if lag <= rpo_secs {
        RpoState::Warning
    } else {
        RpoState::Breach
    }
}

/// The pairings, unpaired datasets and jobs by the dataset they concern,
/// built once per report: a fleet of 10,000 pairings is not scanned once
/// per dataset. It reads no inventory, so it outlives a hold of the fleet.
pub struct Index<'a> {
    targets: HashSet<(&'a str, &'a str)>,
    by_source: HashMap<(&'a str, &'a str), Vec<&'a Pairing>>,
    unpaired: HashMap<(&'a str, &'a str), Vec<&'a Unpaired>>,
    /// (task, source node, dataset) to the latest job.
    last_job: HashMap<(&'a str, &'a str, &'a str), &'a JobRecord>,
    /// (source node, dataset) to its upload records, one per bucket task.
    uploads: HashMap<(&'a str, &'a str), Vec<&'a JobRecord>>,
    /// The newest ended drill of each copy.
    drills: Vec<DrillOutcome>,
    /// (node, dataset) to the jobs that may measure its RTO: restores and
    /// drills of it, replications from it (`rto_estimate` picks).
    rto_jobs: HashMap<(&'a str, &'a str), Vec<&'a JobRecord>>,
}

impl<'a> Index<'a> {
    pub fn new(pairings: &'a [Pairing], unpaired: &'a [Unpaired], jobs: &'a [JobRecord]) -> Self {
        let mut by_source: HashMap<_, Vec<_>> = HashMap::new();
        for p in pairings {
            by_source
                .entry((p.source_node.as_str(), p.dataset.as_str()))
                .or_default()
                .push(p);
        }
        let mut by_unpaired: HashMap<_, Vec<_>> = HashMap::new();
        for u in unpaired {
            by_unpaired
                .entry((u.source_node.as_str(), u.dataset.as_str()))
                .or_default()
                .push(u);
        }
        let mut rto_jobs: HashMap<_, Vec<&JobRecord>> = HashMap::new();
        for j in jobs {
            let from = (j.source_node.as_str(), j.dataset.as_str());
            rto_jobs.entry(from).or_default().push(j);
            if let Some(r) = j
                .restore
                .as_ref()
                .map(|r| (r.node.as_str(), r.dataset.as_str()))
            {
                if r != from {
                    rto_jobs.entry(r).or_default().push(j);
                }
            }
        }
        let mut last_job: HashMap<_, &JobRecord> = HashMap::new();
        let mut uploads: HashMap<_, Vec<&JobRecord>> = HashMap::new();
        for j in jobs.iter().filter(|j| j.kind == JobKind::Upload) {
            uploads
                .entry((j.source_node.as_str(), j.dataset.as_str()))
                .or_default()
                .push(j);
        }
        for j in jobs {
            let key = (j.task.as_str(), j.source_node.as_str(), j.dataset.as_str());
            match last_job.get(&key) {
                // Ties go to the later record, as `max_by_key` would.
                Some(prev) if prev.started_at_ms > j.started_at_ms => {}
                _ => {
                    last_job.insert(key, j);
                }
            }
        }
        Index {
            targets: pairings
                .iter()
                .map(|p| (p.target_node.as_str(), p.target_dataset.as_str()))
                .collect(),
            by_source,
            unpaired: by_unpaired,
            last_job,
            uploads,
            drills: crate::drills::outcomes(jobs.iter()),
            rto_jobs,
        }
    }
}

/// The report over the whole fleet of `input`, in one hold of it.
pub fn report(input: &Input) -> Report {
    let index = Index::new(input.pairings, input.unpaired, input.jobs);
    let nodes: Vec<String> = input.fleet.inventory.keys().cloned().collect();
    assemble(datasets(input, &index, &nodes), input.now)
}

/// The protected datasets of `nodes`, in their order: the report a piece
/// at a time, so that the fleet is held (`State::compliance_report`) for
/// a few nodes and not for the whole fleet.
pub fn datasets(input: &Input, index: &Index, nodes: &[String]) -> Vec<DatasetReport> {
    let mut datasets = Vec::new();
    for (node, invs) in nodes
        .iter()
        .filter_map(|n| Some((n, input.fleet.inventory.get(n)?)))
    {
        for inv in invs.values() {
            if index
                .targets
                .contains(&(node.as_str(), inv.dataset.as_str()))
            {
                continue;
            }
            let Some(class_name) = resolved_class(Some(input.policy), inv) else {
                continue;
            };
            // A class the policy does not define is one of the policy's
            // problems, reported there.
            let Some(class) = input.policy.classes.get(&class_name) else {
                continue;
            };
            datasets.push(dataset_report(input, index, node, inv, &class_name, class));
        }
    }
    datasets
}

/// The report from its datasets, with the summary.
pub fn assemble(datasets: Vec<DatasetReport>, now: i64) -> Report {
    let mut summary = Summary {
        datasets: datasets.len(),
        compliant: datasets.iter().filter(|d| d.compliant).count(),
        ..Summary::default()
    };
    for c in datasets.iter().flat_map(|d| &d.copies) {
        match c.rpo {
            RpoState::Ok => summary.copies_ok += 1,
            RpoState::Warning => summary.copies_warning += 1,
            RpoState::Breach => summary.copies_breach += 1,
        }
    }
    Report {
        generated_at: now,
        warn_percent: WARN_PERCENT,
        summary,
        datasets,
    }
}

/// Where a GUID sits in the source's history.
#[derive(Clone, Copy)]
struct SourcePoint {
    createtxg: u64,
    creation: i64,
}

fn dataset_report(
    input: &Input,
    index: &Index,
    node: &str,
    inv: &DatasetInventory,
    class_name: &str,
    class: &Class,
) -> DatasetReport {
    let rpo_secs = class.rpo.secs();
    let every_secs = class.drill.every.secs();
    let (site, media) = labels(input, node);
    let production_site = site.clone();
    let newest = inv.snapshots.iter().max_by_key(|s| s.createtxg);
    let lag = newest.map(|s| input.now - s.creation);
    let key = (node, inv.dataset.as_str());
    let mut mine: Vec<&Pairing> = index.by_source.get(&key).cloned().unwrap_or_default();
    let mut copies = vec![CopyReport {
        role: Role::Production,
        node: node.to_string(),
        site,
        media,
        dataset: inv.dataset.clone(),
        online: input
            .fleet
            .online(node, input.now, input.offline_after_secs),
        encrypted: inv.encrypted,
        newest: newest.map(|s| SnapshotPoint {
            name: s.name.clone(),
            guid: s.guid,
            creation: s.creation,
        }),
        lag_secs: lag,
        rpo: rpo_state(lag, rpo_secs),
        replication: None,
        verification: Verification::Source,
    }];
    let snapshots = inv
        .snapshots
        .iter()
        .map(|s| (s.guid, s.createtxg, s.creation));
    let bookmarks = inv
        .bookmarks
        .iter()
        .map(|b| (b.guid, b.createtxg, b.creation));
    let uploads = index.uploads.get(&key).cloned().unwrap_or_default();
    // Only a dataset with copies needs its history by GUID.
    let wanted = if mine.is_empty() && uploads.is_empty() {
        0
    } else {
        usize::MAX
    };
    let known: HashMap<u64, SourcePoint> = snapshots
        .chain(bookmarks)
        .take(wanted)
        .map(|(guid, createtxg, creation)| {
            let at = SourcePoint {
                createtxg,
                creation,
            };
            (guid, at)
        })
        .collect();
    mine.sort_by(|a, b| (&a.task, &a.target_node).cmp(&(&b.task, &b.target_node)));
    for p in mine {
        let verdict = verification(
            &index.drills,
            node,
            &inv.dataset,
            &p.target_node,
            every_secs,
            input.now,
        );
        copies.push(replica(input, index, inv, &known, p, rpo_secs, verdict));
    }
    for u in uploads {
        let verdict = verification(
            &index.drills,
            node,
            &inv.dataset,
            &u.target_node,
            every_secs,
            input.now,
        );
        copies.push(bucket_copy(inv, &known, u, input.now, rpo_secs, verdict));
    }
    let checks = checks(class_name, class, &production_site, &copies);
    DatasetReport {
        node: node.to_string(),
        dataset: inv.dataset.clone(),
        class: class_name.to_string(),
        rpo_secs,
        rto_secs: class.rto.secs(),
        rto_estimate: rto_estimate(
            index
                .rto_jobs
                .get(&(node, inv.dataset.as_str()))
                .into_iter()
                .flatten()
                .copied(),
            node,
            &inv.dataset,
            inv.used,
            class.rto.secs(),
        ),
        immutable_for_secs: class.immutable_for.secs(),
        drill_every_secs: every_secs,
        rpo: copies
            .iter()
            .map(|c| c.rpo)
            .max()
            .unwrap_or(RpoState::Breach),
        compliant: checks.iter().all(|c| c.pass),
        checks,
        unpaired: index
            .unpaired
            .get(&key)
            .into_iter()
            .flatten()
            .map(|u| UnpairedTask {
                task: u.task.clone(),
                why: u.why.clone(),
            })
            .collect(),
        verification: verification_line(&copies, input.now, every_secs),
        copies,
    }
}

/// A node's site and media as it said hello, else as the policy lists it.
fn labels(input: &Input, node: &str) -> (String, String) {
    match input.fleet.nodes.get(node) {
        Some(rec) => (rec.hello.site.clone(), rec.hello.media.clone()),
        None => input
            .policy
            .nodes
            .get(node)
            .map(|l| (l.site.clone(), l.media.clone()))
            .unwrap_or_default(),
    }
}

fn replica(
    input: &Input,
    index: &Index,
    source: &DatasetInventory,
    known: &HashMap<u64, SourcePoint>,
    p: &Pairing,
    rpo_secs: u64,
    verification: Verification,
) -> CopyReport {
    let target = input.fleet.dataset(&p.target_node, &p.target_dataset);
    // The newest snapshot on the copy whose GUID the source knows, with
    // the source's place and time for it.
    let confirmed = target.and_then(|t| {
        t.snapshots
            .iter()
            .filter_map(|s| known.get(&s.guid).map(|at| (s, *at)))
            .max_by_key(|(_, at)| at.createtxg)
    });
    let pending: Vec<_> = source
        .snapshots
        .iter()
        .filter(|s| confirmed.is_none_or(|(_, at)| s.createtxg > at.createtxg))
        .collect();
    let pending_bytes = match confirmed {
        None if !pending.is_empty() => source.used,
        _ => pending.iter().map(|s| s.used).sum(),
    };
    let last_job = index
        .last_job
        .get(&(p.task.as_str(), p.source_node.as_str(), p.dataset.as_str()))
        .map(|j| LastJob {
            id: j.id.clone(),
            state: j.state,
            error: j.error.clone(),
            last_success_ms: j.last_success_ms,
            finished_at_ms: j.finished_at_ms,
        });
    let lag = confirmed.map(|(_, at)| input.now - at.creation);
    let (site, media) = labels(input, &p.target_node);
    CopyReport {
        role: Role::Replica,
        node: p.target_node.clone(),
        site,
        media,
        dataset: p.target_dataset.clone(),
        online: input
            .fleet
            .online(&p.target_node, input.now, input.offline_after_secs),
        encrypted: target.is_some_and(|t| t.encrypted),
        newest: confirmed.map(|(s, at)| SnapshotPoint {
            name: s.name.clone(),
            guid: s.guid,
            creation: at.creation,
        }),
        lag_secs: lag,
        rpo: rpo_state(lag, rpo_secs),
        replication: Some(Replication {
            task: p.task.clone(),
            pending_snapshots: pending.len(),
            pending_bytes,
            last_job,
        }),
        verification,
    }
}

/// A bucket task's copy: the newest committed upload the source knows by
/// GUID; the bucket is away from every site.
fn bucket_copy(
    source: &DatasetInventory,
    known: &HashMap<u64, SourcePoint>,
    u: &JobRecord,
    now: i64,
    rpo_secs: u64,
    verification: Verification,
) -> CopyReport {
    let committed = u
        .upload
        .as_ref()
        .map_or(&[][..], |i| i.committed.as_slice());
    let confirmed = committed
        .iter()
        .filter_map(|m| known.get(&m.to_guid).map(|at| (m, *at)))
        .max_by_key(|(_, at)| at.createtxg);
    let pending: Vec<_> = source
        .snapshots
        .iter()
        .filter(|s| confirmed.is_none_or(|(_, at)| s.createtxg > at.createtxg))
        .collect();
    let lag = confirmed.map(|(_, at)| now - at.creation);
    CopyReport {
        role: Role::Bucket,
        node: u.target_node.clone(),
        site: u.target_node.clone(),
        media: "object-storage".into(),
        dataset: u.target_dataset.clone(),
        // Not probed: the bucket answers only the agent that uploads.
        online: true,
        encrypted: source.encrypted,
        newest: confirmed.map(|(m, at)| SnapshotPoint {
            name: m.to_name.clone(),
            guid: m.to_guid,
            creation: at.creation,
        }),
        lag_secs: lag,
        rpo: rpo_state(lag, rpo_secs),
        replication: Some(Replication {
            task: u.task.clone(),
            pending_snapshots: pending.len(),
            pending_bytes: pending.iter().map(|s| s.used).sum(),
            last_job: Some(LastJob {
                id: u.id.clone(),
                state: u.state,
                error: u.error.clone(),
                last_success_ms: u.last_success_ms,
                finished_at_ms: u.finished_at_ms,
            }),
        }),
        verification,
    }
}

fn role(c: &CopyReport) -> &'static str {
    c.role.as_str()
}

/// "replica on node-b1", and "offsite copy on node-b1" when `offsite`.
fn name(c: &CopyReport, offsite: bool) -> String {
    if offsite {
        format!("offsite copy on {}", c.node)
    } else {
        format!("{} on {}", role(c), c.node)
    }
}

/// Why a copy in breach does not count.
fn behind(c: &CopyReport, offsite: bool, rpo_secs: u64) -> String {
    match c.lag_secs {
        Some(lag) => format!(
            "{} is {} behind its {} RPO",
            name(c, offsite),
            short(lag),
            short(rpo_secs as i64)
        ),
        None if c.role == Role::Production => format!("{} has no snapshot", name(c, offsite)),
        None => format!(
            "{} holds no snapshot the source knows by GUID",
            name(c, offsite)
        ),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn checks(
    class_name: &str,
    class: &Class,
    production_site: &str,
    copies: &[CopyReport],
) -> Vec<Check> {
    let rpo = class.rpo.secs();
    let want = class.copies;
    let counted: Vec<&CopyReport> = copies
        .iter()
        .filter(|c| c.rpo != RpoState::Breach)
        .collect();
    let lagging: Vec<&CopyReport> = copies
        .iter()
        .filter(|c| c.rpo == RpoState::Breach)
        .collect();
    let offsite = |c: &CopyReport| c.site != production_site;
    let with_lagging =
        |mut reason: String, which: &dyn Fn(&CopyReport) -> bool, as_offsite: bool| {
            for c in lagging.iter().filter(|c| which(c)) {
                reason.push_str(&format!("; {}", behind(c, as_offsite, rpo)));
            }
            reason
        };

    let have = counted.len();
    let copies_check = Check {
        check: CheckKind::Copies,
        pass: have >= want.total as usize,
        have,
        want: want.total as usize,
        reason: with_lagging(
            format!(
                "{have} cop{} within RPO ({}); the class asks for {}",
                if have == 1 { "y" } else { "ies" },
                list(&counted.iter().map(|c| name(c, false)).collect::<Vec<_>>()),
                want.total
            ),
            &|_| true,
            false,
        ),
    };

    let media: BTreeSet<&str> = counted.iter().map(|c| c.media.as_str()).collect();
    let media_check = Check {
        check: CheckKind::Media,
        pass: media.len() >= want.media as usize,
        have: media.len(),
        want: want.media as usize,
        reason: with_lagging(
            format!(
                "{} distinct media among the copies within RPO ({}); the class asks for {}",
                media.len(),
                list(&media.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
                want.media
            ),
            &|c| !media.contains(c.media.as_str()),
            false,
        ),
    };

    let away: Vec<&&CopyReport> = counted.iter().filter(|c| offsite(c)).collect();
    let offsite_reason = if away.is_empty() {
        format!("no copy within RPO at a site other than {production_site} (production's)")
    } else {
        format!(
            "{} within RPO at another site ({})",
            away.len(),
            list(
                &away
                    .iter()
                    .map(|c| format!("{} at {}", c.node, c.site))
                    .collect::<Vec<_>>()
            )
        )
    };
    let offsite_check = Check {
        check: CheckKind::Offsite,
        pass: away.len() >= want.offsite as usize,
        have: away.len(),
        want: want.offsite as usize,
        reason: with_lagging(
            format!("{offsite_reason}; the class asks for {}", want.offsite),
            &|c| offsite(c),
            true,
        ),
    };

    let immutable_for = class.immutable_for.secs();
    let replicas: Vec<&&CopyReport> = counted.iter().filter(|c| c.role == Role::Replica).collect();
    let immutable_check = if immutable_for == 0 {
        Check {
            check: CheckKind::Immutable,
            pass: false,
            have: 0,
            want: 1,
            reason: format!(
                "class {class_name} has immutable_for 0s, so every copy's snapshots may be \
                 destroyed at any time; set immutable_for in the policy"
            ),
        }
    } else if replicas.is_empty() {
        Check {
            check: CheckKind::Immutable,
            pass: false,
            have: 0,
            want: 1,
            reason: with_lagging(
                format!(
                    "no replica within RPO to keep snapshots younger than {} (class {class_name})",
                    short(immutable_for as i64)
                ),
                &|c| c.role == Role::Replica,
                false,
            ),
        }
    } else {
        Check {
            check: CheckKind::Immutable,
            pass: true,
            have: replicas.len(),
            want: 1,
            reason: format!(
                "{}: snapshots younger than {} are never destroyed (class {class_name})",
                list(&replicas.iter().map(|c| name(c, false)).collect::<Vec<_>>()),
                short(immutable_for as i64)
            ),
        }
    };
    vec![copies_check, media_check, offsite_check, immutable_check]
}

/// The copies of one production node's datasets of one class, in one role,
/// summed: served per node and class whatever the fleet's size, where the
/// per-copy series stop at `--copy-metrics-max`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyTotals {
    pub ok: usize,
    pub warning: usize,
    pub breach: usize,
    /// The worst lag among those with a confirmed snapshot.
    pub max_lag_secs: Option<i64>,
    pub pending_snapshots: usize,
    pub pending_bytes: u64,
}

/// What `/metrics` serves per production node and class.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals<'a> {
    /// By (production node, class, role).
    pub copies: BTreeMap<(&'a str, &'a str, Role), CopyTotals>,
    /// Datasets that fail a 3-2-1 check, by (production node, class); 0 is
    /// listed too, so that a gauge goes back to 0.
    pub not_compliant: BTreeMap<(&'a str, &'a str), usize>,
}

pub fn totals(report: &Report) -> Totals<'_> {
    let mut t = Totals::default();
    for d in &report.datasets {
        *t.not_compliant
            .entry((d.node.as_str(), d.class.as_str()))
            .or_insert(0) += usize::from(!d.compliant);
        for c in &d.copies {
            let e = t
                .copies
                .entry((d.node.as_str(), d.class.as_str(), c.role))
                .or_default();
            match c.rpo {
                RpoState::Ok => e.ok += 1,
                RpoState::Warning => e.warning += 1,
                RpoState::Breach => e.breach += 1,
            }
            if let Some(lag) = c.lag_secs {
                e.max_lag_secs = Some(e.max_lag_secs.map_or(lag, |m| m.max(lag)));
            }
            if let Some(r) = &c.replication {
                e.pending_snapshots += r.pending_snapshots;
                e.pending_bytes += r.pending_bytes;
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::NodeRecord;
    use crate::jobs::JobKind;
    use zdr_common::wire::{BookmarkInfo, Hello, SnapshotInfo};

    const NOW: i64 = 1_000_000;

    const POLICY: &str = r#"version: 1
sites: { a: {}, b: {} }
nodes:
  a1: { site: a, media: ssd }
  a2: { site: a, media: hdd }
  b1: { site: b, media: hdd }
classes:
  gold: { rpo: 1h, rto: 2h, immutable_for: 3d }
  bronze: { rpo: 1h, rto: 2h }
datasets:
  - { match: "tank/db", class: gold }
  - { match: "tank/logs", class: bronze }
"#;

    fn policy() -> Policy {
        zdr_schemas::parse_policy("p.yaml", POLICY).unwrap()
    }

    /// Snapshot `i`: GUID 1000+i, created `age` seconds before NOW.
    fn snap(i: u64, age: i64) -> SnapshotInfo {
        SnapshotInfo {
            name: format!("zdr_{i}"),
            guid: 1000 + i,
            createtxg: i,
            creation: NOW - age,
            used: 10 * i,
            userrefs: 0,
        }
    }

    fn inv(name: &str, snaps: Vec<SnapshotInfo>) -> DatasetInventory {
        DatasetInventory {
            dataset: name.into(),
            guid: 1,
            used: 5000,
            available: 0,
            class: None,
            encrypted: false,
            snapshots: snaps,
            bookmarks: vec![],
        }
    }

    fn node(fleet: &mut Fleet, name: &str, site: &str, media: &str, seen: i64) {
        let hello = Hello {
            node: name.into(),
            site: site.into(),
            media: media.into(),
            version: "0".into(),
            backend: "sim".into(),
            pools: vec![],
            started_at: 0,
            policy_revision: None,
        };
        fleet.nodes.insert(
            name.into(),
            NodeRecord {
                hello,
                last_seen: seen,
                policy_revision: None,
                policy_refused: None,
                pools: vec![],
                inventory_generation: 0,
                delta_seq: 0,
            },
        );
    }

    fn put(fleet: &mut Fleet, node: &str, d: DatasetInventory) {
        fleet
            .inventory
            .entry(node.into())
            .or_default()
            .insert(d.dataset.clone(), d);
    }

    fn pairing(task: &str, target: &str) -> Pairing {
        Pairing {
            task: task.into(),
            source_node: "a1".into(),
            dataset: "tank/db".into(),
            target_node: target.into(),
            target_dataset: "backup/a1/tank/db".into(),
            reason: String::new(),
        }
    }

    /// a1 (site a, ssd) holds tank/db with snapshots 1..=4, the newest 10 min old.
    fn fleet() -> Fleet {
        let mut f = Fleet::default();
        node(&mut f, "a1", "a", "ssd", NOW);
        node(&mut f, "a2", "a", "hdd", NOW);
        node(&mut f, "b1", "b", "hdd", NOW);
        put(
            &mut f,
            "a1",
            inv(
                "tank/db",
                vec![snap(1, 4000), snap(2, 3000), snap(3, 1200), snap(4, 600)],
            ),
        );
        f
    }

    fn run(fleet: &Fleet, pairings: &[Pairing], jobs: &[JobRecord]) -> Report {
        let p = policy();
        report(&Input {
            fleet,
            policy: &p,
            pairings,
            unpaired: &[],
            jobs,
            now: NOW,
            offline_after_secs: 30,
        })
    }

    fn check(d: &DatasetReport, k: CheckKind) -> &Check {
        d.checks.iter().find(|c| c.check == k).unwrap()
    }

    #[test]
    fn a_report_taken_a_few_nodes_at_a_time_is_the_whole_report() {
        let mut f = fleet();
        put(&mut f, "a2", inv("tank/logs", vec![snap(7, 100)]));
        put(
            &mut f,
            "b1",
            inv("backup/a1/tank/db", vec![snap(1, 4000), snap(3, 1200)]),
        );
        let pairings = [pairing("offsite", "b1")];
        let whole = run(&f, &pairings, &[]);
        assert_eq!(
            whole.datasets.len(),
            2,
            "tank/db and tank/logs; not the replica"
        );
        let p = policy();
        let input = Input {
            fleet: &f,
            policy: &p,
            pairings: &pairings,
            unpaired: &[],
            jobs: &[],
            now: NOW,
            offline_after_secs: 30,
        };
        let index = Index::new(&pairings, &[], &[]);
        // a1's copy on b1 is read though b1 is in another piece.
        let mut pieces = datasets(&input, &index, &["a1".to_string()]);
        assert_eq!(pieces[0].copies.len(), 2);
        pieces.extend(datasets(
            &input,
            &index,
            &["a2".into(), "b1".into(), "zz".into()],
        ));
        assert_eq!(assemble(pieces, NOW), whole);
    }

    #[test]
    fn totals_sum_the_copies_per_production_node_class_and_role() {
        let mut f = fleet();
        put(&mut f, "a2", inv("tank/logs", vec![snap(7, 100)]));
        // The copy has only zdr_1 (4000 s old): past gold's 1 h RPO, 3 behind.
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(1, 4000)]));
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let t = totals(&r);
        let production = &t.copies[&("a1", "gold", Role::Production)];
        assert_eq!((production.ok, production.breach), (1, 0));
        assert_eq!(production.max_lag_secs, Some(600));
        let replica = &t.copies[&("a1", "gold", Role::Replica)];
        assert_eq!((replica.ok, replica.warning, replica.breach), (0, 0, 1));
        assert_eq!(replica.max_lag_secs, Some(4000));
        assert_eq!(replica.pending_snapshots, 3);
        let pending = r.datasets[0].copies[1].replication.as_ref().unwrap();
        assert!(pending.pending_bytes > 0);
        assert_eq!(replica.pending_bytes, pending.pending_bytes);
        assert_eq!(t.copies[&("a2", "bronze", Role::Production)].ok, 1);
        assert_eq!(t.copies.len(), 3);
        // Two copies and one: neither meets 3-2-1's three.
        assert_eq!(t.not_compliant[&("a1", "gold")], 1);
        assert_eq!(t.not_compliant[&("a2", "bronze")], 1);
    }

    #[test]
    fn rpo_states_split_at_75_percent_and_at_the_rpo() {
        assert_eq!(rpo_state(Some(0), 3600), RpoState::Ok);
        assert_eq!(rpo_state(Some(2699), 3600), RpoState::Ok);
        assert_eq!(rpo_state(Some(2700), 3600), RpoState::Warning);
        assert_eq!(rpo_state(Some(3600), 3600), RpoState::Warning);
        assert_eq!(rpo_state(Some(3601), 3600), RpoState::Breach);
        assert_eq!(rpo_state(None, 3600), RpoState::Breach);
        // A snapshot from a clock slightly ahead is not negative lag.
        assert_eq!(rpo_state(Some(-5), 3600), RpoState::Ok);
    }

    #[test]
    fn replica_lag_counts_only_snapshots_matched_by_guid() {
        let mut f = fleet();
        // The copy has zdr_1 and zdr_2 by GUID, and a zdr_4 of its own (another GUID).
        let mut fake = snap(4, 0);
        fake.guid = 99;
        put(
            &mut f,
            "b1",
            inv(
                "backup/a1/tank/db",
                vec![snap(1, 4000), snap(2, 3000), fake],
            ),
        );
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let d = &r.datasets[0];
        let copy = &d.copies[1];
        assert_eq!(copy.role, Role::Replica);
        assert_eq!(copy.newest.as_ref().unwrap().guid, 1002);
        assert_eq!(copy.lag_secs, Some(3000));
        assert_eq!(copy.rpo, RpoState::Warning);
        let rep = copy.replication.as_ref().unwrap();
        // zdr_3 and zdr_4 remain: 30 + 40 bytes of `used`.
        assert_eq!((rep.pending_snapshots, rep.pending_bytes), (2, 70));
        // Production: the newest, 10 min old.
        assert_eq!(d.copies[0].lag_secs, Some(600));
        assert_eq!(d.copies[0].rpo, RpoState::Ok);
        assert_eq!(d.rpo, RpoState::Warning);
    }

    #[test]
    fn a_bookmark_on_the_source_confirms_a_pruned_snapshot() {
        let mut f = fleet();
        let src = f
            .inventory
            .get_mut("a1")
            .unwrap()
            .get_mut("tank/db")
            .unwrap();
        src.snapshots.remove(0);
        src.bookmarks.push(BookmarkInfo {
            name: "zdr_1".into(),
            guid: 1001,
            createtxg: 1,
            creation: NOW - 4000,
        });
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(1, 4000)]));
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let copy = &r.datasets[0].copies[1];
        assert_eq!(copy.lag_secs, Some(4000));
        assert_eq!(copy.rpo, RpoState::Breach);
        assert_eq!(copy.replication.as_ref().unwrap().pending_snapshots, 3);
    }

    #[test]
    fn a_copy_not_yet_received_is_in_breach_and_owes_a_full_send() {
        let f = fleet();
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let copy = &r.datasets[0].copies[1];
        assert_eq!((copy.newest.as_ref(), copy.lag_secs), (None, None));
        assert_eq!(copy.rpo, RpoState::Breach);
        let rep = copy.replication.as_ref().unwrap();
        assert_eq!((rep.pending_snapshots, rep.pending_bytes), (4, 5000));
        let c = check(&r.datasets[0], CheckKind::Offsite);
        assert!(!c.pass);
        assert!(
            c.reason
                .ends_with("; offsite copy on b1 holds no snapshot the source knows by GUID"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn three_copies_on_two_media_with_one_offsite_and_immutable_comply() {
        let mut f = fleet();
        put(
            &mut f,
            "a2",
            inv("backup/a1/tank/db", vec![snap(3, 1200), snap(4, 600)]),
        );
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(3, 1200)]));
        let r = run(&f, &[pairing("local", "a2"), pairing("offsite", "b1")], &[]);
        assert_eq!(r.summary.datasets, 1);
        assert_eq!(r.summary.compliant, 1);
        assert_eq!(r.summary.copies_ok, 3);
        let d = &r.datasets[0];
        assert!(d.compliant, "{:#?}", d.checks);
        assert_eq!(
            check(d, CheckKind::Copies).reason,
            "3 copies within RPO (production on a1, replica on a2, replica on b1); the class asks for 3"
        );
        assert_eq!(
            check(d, CheckKind::Media).reason,
            "2 distinct media among the copies within RPO (hdd, ssd); the class asks for 2"
        );
        assert_eq!(
            check(d, CheckKind::Offsite).reason,
            "1 within RPO at another site (b1 at b); the class asks for 1"
        );
        assert_eq!(
            check(d, CheckKind::Immutable).reason,
            "replica on a2, replica on b1: snapshots younger than 3d are never destroyed (class gold)"
        );
        assert_eq!(
            d.verification,
            "0 of 2 copies verified by a drill within 90d; replica on a2: not verified by a \
             drill; replica on b1: not verified by a drill"
        );
        // The replica itself is not a protected dataset of its own.
        assert_eq!(d.copies.len(), 3);
    }

    #[test]
    fn two_copies_fail_the_copies_check_and_say_why() {
        let mut f = fleet();
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(4, 600)]));
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let d = &r.datasets[0];
        let c = check(d, CheckKind::Copies);
        assert_eq!((c.pass, c.have, c.want), (false, 2, 3));
        assert_eq!(
            c.reason,
            "2 copies within RPO (production on a1, replica on b1); the class asks for 3"
        );
        assert!(check(d, CheckKind::Media).pass);
        assert!(check(d, CheckKind::Offsite).pass);
        assert!(!d.compliant);
    }

    #[test]
    fn an_offsite_copy_in_breach_does_not_count_and_says_how_far_behind() {
        let mut f = fleet();
        let old = 3 * 86_400;
        let src = f
            .inventory
            .get_mut("a1")
            .unwrap()
            .get_mut("tank/db")
            .unwrap();
        src.snapshots.insert(0, snap(0, old));
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(0, old)]));
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        let d = &r.datasets[0];
        let c = check(d, CheckKind::Offsite);
        assert_eq!((c.pass, c.have), (false, 0));
        assert_eq!(
            c.reason,
            "no copy within RPO at a site other than a (production's); the class asks for 1; \
             offsite copy on b1 is 3d behind its 1h RPO"
        );
        let m = check(d, CheckKind::Media);
        assert_eq!((m.pass, m.have), (false, 1));
        assert!(
            m.reason
                .ends_with("; replica on b1 is 3d behind its 1h RPO"),
            "{}",
            m.reason
        );
        assert_eq!(d.rpo, RpoState::Breach);
        assert_eq!(r.summary.copies_breach, 1);
    }

    #[test]
    fn immutability_needs_the_class_and_a_replica() {
        let mut f = fleet();
        put(&mut f, "a1", inv("tank/logs", vec![snap(1, 60)]));
        let r = run(&f, &[], &[]);
        let logs = r
            .datasets
            .iter()
            .find(|d| d.dataset == "tank/logs")
            .unwrap();
        let c = check(logs, CheckKind::Immutable);
        assert!(!c.pass);
        assert!(
            c.reason.starts_with("class bronze has immutable_for 0s"),
            "{}",
            c.reason
        );
        let db = r.datasets.iter().find(|d| d.dataset == "tank/db").unwrap();
        let c = check(db, CheckKind::Immutable);
        assert!(!c.pass);
        assert_eq!(
            c.reason,
            "no replica within RPO to keep snapshots younger than 3d (class gold)"
        );
        // Production alone: one copy.
        assert_eq!(check(db, CheckKind::Copies).have, 1);
    }

    #[test]
    fn the_last_job_of_the_pairing_is_shown_with_its_error() {
        let mut f = fleet();
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(4, 600)]));
        let p = pairing("offsite", "b1");
        let mut old = JobRecord::new(JobKind::Replication, &p, "c1", 1, vec![], 1_000);
        old.state = JobState::Done;
        let mut new = JobRecord::new(JobKind::Replication, &p, "c1", 2, vec![], 2_000);
        new.state = JobState::Failed;
        new.error = Some("target went away".into());
        let other = JobRecord::new(
            JobKind::Replication,
            &pairing("local", "a2"),
            "c1",
            3,
            vec![],
            3_000,
        );
        let r = run(&f, &[p], &[old, new.clone(), other]);
        let job = r.datasets[0].copies[1]
            .replication
            .as_ref()
            .unwrap()
            .last_job
            .clone()
            .unwrap();
        assert_eq!(job.id, new.id);
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.error.as_deref(), Some("target went away"));
    }

    #[test]
    fn offline_copies_are_marked_and_unclassed_datasets_left_out() {
        let mut f = fleet();
        node(&mut f, "b1", "b", "hdd", NOW - 60);
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(4, 600)]));
        put(&mut f, "a1", inv("tank/scratch", vec![]));
        let r = run(&f, &[pairing("offsite", "b1")], &[]);
        assert_eq!(r.datasets.len(), 1);
        assert!(r.datasets[0].copies[0].online);
        assert!(!r.datasets[0].copies[1].online);
        assert_eq!(r.datasets[0].copies[1].site, "b");
    }

    #[test]
    fn replica_datasets_name_their_pairing() {
        let p = [pairing("offsite", "b1")];
        let of = crate::fleet::replica_of(&p, "b1", "backup/a1/tank/db").unwrap();
        assert_eq!(
            (
                of.task.as_str(),
                of.source_node.as_str(),
                of.dataset.as_str()
            ),
            ("offsite", "a1", "tank/db")
        );
        assert_eq!(
            crate::fleet::replica_of(&p, "a1", "backup/a1/tank/db"),
            None
        );
        assert_eq!(crate::fleet::replica_of(&p, "b1", "tank/db"), None);
    }

    fn outcome(copy: &str, passed: bool, ended_at: i64) -> DrillOutcome {
        DrillOutcome {
            node: "a1".into(),
            dataset: "tank/db".into(),
            copy: copy.into(),
            passed,
            why: (!passed).then(|| "content hashes differ".into()),
            ended_at,
        }
    }

    #[test]
    fn a_copy_is_verified_only_by_its_newest_drill_passed_within_the_interval() {
        let day = 86_400;
        let v = |o: &[DrillOutcome], every| verification(o, "a1", "tank/db", "b1", every, NOW);
        assert_eq!(v(&[], 90 * day), Verification::NeverDrilled);
        let passed = [outcome("b1", true, NOW - 3600)];
        assert_eq!(
            v(&passed, 90 * day),
            Verification::Verified {
                passed_at: NOW - 3600
            }
        );
        // The interval is strict: one second past it is stale.
        assert_eq!(
            v(&passed, 3600),
            Verification::Verified {
                passed_at: NOW - 3600
            }
        );
        assert_eq!(
            v(&passed, 3599),
            Verification::Stale {
                passed_at: NOW - 3600
            }
        );
        // A newer failure wins over an older pass, and the reverse.
        let both = [
            outcome("b1", true, NOW - 7200),
            outcome("b1", false, NOW - 60),
        ];
        assert!(
            matches!(v(&both, 90 * day), Verification::Failed { ended_at, .. } if ended_at == NOW - 60)
        );
        let healed = [
            outcome("b1", false, NOW - 7200),
            outcome("b1", true, NOW - 60),
        ];
        assert!(v(&healed, 90 * day).is_verified());
        // Another copy's drill, or another dataset's, says nothing of this one.
        assert_eq!(
            v(&[outcome("a2", true, NOW)], 90 * day),
            Verification::NeverDrilled
        );
        let mut elsewhere = outcome("b1", true, NOW);
        elsewhere.dataset = "tank/logs".into();
        assert_eq!(v(&[elsewhere], 90 * day), Verification::NeverDrilled);
    }

    #[test]
    fn verdicts_read_as_sentences() {
        let day = 86_400;
        let every = 90 * day as u64;
        assert_eq!(
            Verification::Stale {
                passed_at: NOW - 120 * day
            }
            .describe(NOW, every),
            "last passed drill is 120d old, interval 90d"
        );
        // NOW is 1970-01-12.
        assert_eq!(
            Verification::Failed {
                ended_at: NOW - day,
                why: Some("content hashes differ".into())
            }
            .describe(NOW, every),
            "last drill failed on 1970-01-11: content hashes differ"
        );
        assert_eq!(
            Verification::Verified {
                passed_at: NOW - 3 * day
            }
            .describe(NOW, every),
            "verified by a drill 3d ago (interval 90d)"
        );
    }

    /// The report reads drill records from the jobs: the copy verified,
    /// the one whose drill failed and the one never drilled each say so.
    #[test]
    fn the_report_takes_each_copys_verdict_from_the_drill_records() {
        let mut f = fleet();
        put(
            &mut f,
            "a2",
            inv("backup/a1/tank/db", vec![snap(3, 1200), snap(4, 600)]),
        );
        put(&mut f, "b1", inv("backup/a1/tank/db", vec![snap(4, 600)]));
        let drill = |copy: &str, passed: bool, ended_at: i64| {
            let p = Pairing {
                task: "drill".into(),
                source_node: copy.into(),
                dataset: "backup/a1/tank/db".into(),
                target_node: copy.into(),
                target_dataset: "tank/zdr-drill/x".into(),
                reason: String::new(),
            };
            let mut r = JobRecord::new(JobKind::Drill, &p, "c1", 1, vec![], 1_000);
            r.restore = Some(crate::jobs::RestoreInfo {
                node: "a1".into(),
                dataset: "tank/db".into(),
                snapshot: crate::jobs::RestoreSnapshot {
                    name: "zdr_4".into(),
                    guid: 1004,
                    creation: NOW - 600,
                },
                raw: false,
                replace: false,
                landed_bytes: 0,
                landed_guid: None,
                holds_released: true,
                release_at_ms: None,
                holds_taken: false,
                take_at_ms: None,
            });
            r.drill = Some(crate::jobs::DrillInfo {
                class: "gold".into(),
                number: Some(1),
                rto_secs: 7200,
                plan_ms: 0,
                verifying: false,
                checked: None,
                result: Some(crate::jobs::DrillResult {
                    passed,
                    level: None,
                    why: (!passed).then(|| "content hashes differ".into()),
                    production_digest: None,
                    restored_digest: None,
                    transfer_ms: 0,
                    mount_ms: 0,
                    hash_ms: 0,
                    cleanup_ms: 0,
                    rto_ms: passed.then_some(1000),
                    within_rto: passed,
                    cleaned: true,
                    ended_at,
                }),
            });
            r
        };
        let jobs = [
            drill("a2", true, NOW - 3600),
            drill("b1", false, NOW - 86_400),
        ];
        let r = run(
            &f,
            &[pairing("local", "a2"), pairing("offsite", "b1")],
            &jobs,
        );
        let d = &r.datasets[0];
        assert_eq!(d.copies[0].verification, Verification::Source);
        assert_eq!(
            d.copies[1].verification,
            Verification::Verified {
                passed_at: NOW - 3600
            }
        );
        assert!(matches!(
            d.copies[2].verification,
            Verification::Failed { .. }
        ));
        assert_eq!(
            d.verification,
            "1 of 2 copies verified by a drill within 90d; replica on b1: last drill failed \
             on 1970-01-11: content hashes differ"
        );
    }

    fn finished(kind: JobKind, bytes: u64, took_ms: i64) -> JobRecord {
        let mut r = JobRecord::new(kind, &pairing("offsite", "b1"), "c1", 1, vec![], 1_000_000);
        r.state = JobState::Done;
        r.bytes = bytes;
        r.finished_at_ms = Some(1_000_000 + took_ms);
        r
    }

    #[test]
    fn the_rto_estimate_takes_the_best_measured_path_and_says_which() {
        let mib = 1u64 << 20;
        // Nothing measured.
        let e = rto_estimate(&[], "a1", "tank/db", 100 * mib, 3600);
        assert_eq!((e.secs, e.within), (None, None));
        assert_eq!(e.describe(3600), "no measurement");
        // Two replications: 30 MiB in 2 s and 10 MiB in 2 s, 10 MiB/s together.
        let jobs = vec![
            finished(JobKind::Replication, 30 * mib, 2000),
            finished(JobKind::Replication, 10 * mib, 2000),
        ];
        let e = rto_estimate(&jobs, "a1", "tank/db", 100 * mib, 3600);
        assert_eq!(
            e.source,
            RtoSource::Replication {
                samples: 2,
                bytes_per_sec: 10 * mib
            }
        );
        assert_eq!((e.secs, e.within), (Some(10), Some(true)));
        assert_eq!(
            e.describe(3600),
            "~10s for 100.00 MiB (within the 1h RTO), from replication, 2 samples, 10.00 MiB/s"
        );
        // Over the objective.
        let e = rto_estimate(&jobs, "a1", "tank/db", 100 * mib, 5);
        assert_eq!(e.within, Some(false));
        // Another dataset's jobs say nothing of this one.
        assert_eq!(
            rto_estimate(&jobs, "a1", "tank/logs", mib, 60).source,
            RtoSource::NoMeasurement
        );
        // A passed drill of the dataset wins: 4 MiB moved in 1 s.
        let mut drill = finished(JobKind::Drill, 4 * mib, 5000);
        drill.source_node = "b1".into();
        drill.restore = Some(crate::jobs::RestoreInfo {
            node: "a1".into(),
            dataset: "tank/db".into(),
            snapshot: crate::jobs::RestoreSnapshot {
                name: "zdr_4".into(),
                guid: 1004,
                creation: NOW - 600,
            },
            raw: false,
            replace: false,
            landed_bytes: 4 * mib,
            landed_guid: Some(1004),
            holds_released: true,
            release_at_ms: None,
            holds_taken: false,
            take_at_ms: None,
        });
        drill.drill = Some(crate::jobs::DrillInfo {
            class: "gold".into(),
            number: None,
            rto_secs: 7200,
            plan_ms: 0,
            verifying: false,
            checked: None,
            result: Some(crate::jobs::DrillResult {
                passed: true,
                level: None,
                why: None,
                production_digest: None,
                restored_digest: None,
                transfer_ms: 1000,
                mount_ms: 0,
                hash_ms: 0,
                cleanup_ms: 0,
                rto_ms: Some(5000),
                within_rto: true,
                cleaned: true,
                ended_at: 86_400 * 334,
            }),
        });
        let mut all = jobs.clone();
        all.push(drill.clone());
        let e = rto_estimate(&all, "a1", "tank/db", 100 * mib, 3600);
        assert_eq!(
            e.source,
            RtoSource::Drill {
                ended_at: 86_400 * 334,
                copy: "b1".into(),
                bytes_per_sec: 4 * mib,
                measured_rto_secs: 5
            }
        );
        assert_eq!(e.secs, Some(25));
        assert_eq!(
            e.describe(3600),
            "~25s for 100.00 MiB (within the 1h RTO), from the drill of 1970-12-01 from b1, \
             4.00 MiB/s (it took 5s)"
        );
        // A report reads the jobs its index groups per dataset: the drill
        // ran from the copy on b1 and still counts for a1's dataset.
        let index = Index::new(&[], &[], &all);
        let grouped = index.rto_jobs.get(&("a1", "tank/db")).unwrap();
        assert_eq!(grouped.len(), all.len());
        assert_eq!(
            rto_estimate(grouped.iter().copied(), "a1", "tank/db", 100 * mib, 3600),
            e
        );
        // A failed drill measures nothing: back to replication.
        drill
            .drill
            .as_mut()
            .unwrap()
            .result
            .as_mut()
            .unwrap()
            .passed = false;
        let mut all = jobs.clone();
        all.push(drill);
        assert!(matches!(
            rto_estimate(&all, "a1", "tank/db", mib, 60).source,
            RtoSource::Replication { .. }
        ));
    }

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(in_days(120 * 86_400 + 5), "120d");
        assert_eq!(in_days(86_400 + 3600), "1d1h");
        assert_eq!(short(3 * 86_400 + 4 * 3600 + 5), "3d4h");
        assert_eq!(short(920), "15m20s");
        assert_eq!(short(-3), "0s");
    }
}
