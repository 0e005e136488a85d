//! The job engine. Every job — today replication, restore and drill; upload
//! and verify to come — is a record in KV `zdr_jobs` (one per pairing, one
//! per restore, so a restarted or standby coordinator sees every job's state
//! and history), driven through the same transitions, retries and rates.
//! A restore (`crate::restore` plans it) is started by the tick, runs its
//! steps like a replication, is done only when the target lists the chosen
//! GUID, and then releases its holds. A drill (`crate::drills`) is a
//! restore into scratch whose end starts the content check (`Verify`).
//!
//! The split follows zrepl's: planning decides, a driver carries it out.
//! - `record`: the record and its transitions, pure (`apply(update, now)`
//!   returns [`Effect`]s); retries, backoff, late reports of a failed
//!   attempt, adoption by a new leader.
//! - `schedule`: which pairing starts what on a tick, pure: due times,
//!   windows, admission (one job per target dataset), parents before
//!   children, planning from both inventories (`crate::transfer_plan`).
//! - `rates`: the bandwidth rules applied to the running jobs.
//! - `run`: the shell: locks, KV, signed commands, tasks in a `JoinSet`.
//!
//! A replication attempt is a signed `receive` to the target, then a signed
//! `send` to the source, then `JobUpdate`s from both until the target says
//! what landed; the target keeps a partial receive and the next attempt
//! resumes it with `send -t`. A new job kind adds a [`JobKind`] variant, its
//! planner (a `Decision::Start` with its steps) and its arm where `run`
//! starts an attempt; the record, retries and persistence are shared.

mod rates;
mod record;
mod run;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};

pub use record::{
    describe, read_snapshots, Adoption, DrillInfo, DrillResult, Effect, FailedAttempt, JobKind,
    JobRecord, JobState, PlannedStep, RestoreInfo, RestoreSnapshot, UploadInfo, Verified,
};
pub use run::{adopt, catch_up, list, on_update, restore, save, tick};

/// How long the target waits for its sender.
const ACCEPT_SECS: u64 = 60;

/// Hold tags name the task: each pairing protects its own base.
pub fn hold_tag(task: &str) -> String {
    format!("zdr-repl-{task}")
}

/// A restore's hold tags, its own on each end, released when it ends.
pub fn restore_tag(end: zdr_common::wire::JobRole, id: &str) -> String {
    match end {
        zdr_common::wire::JobRole::Source => format!("zdr-restore-from-{id}"),
        zdr_common::wire::JobRole::Target => {
            format!("{}{id}", zdr_common::wire::RESTORE_HOLD_PREFIX)
        }
    }
}

/// The hold a drill puts on the production snapshot it restores, so that
/// retention cannot destroy it before the drill has hashed it.
pub fn drill_production_tag(id: &str) -> String {
    format!("zdr-drill-{id}")
}

/// A restore record's key in KV `zdr_jobs`.
pub fn restore_key(id: &str) -> String {
    crate::bus::inventory_key("restore", id)
}

/// Jobs by key: a pairing's, or a restore's.
#[derive(Default)]
pub struct Jobs {
    records: BTreeMap<String, JobRecord>,
    seq: u64,
    /// Attempt id to record key, filled by lookups: a job update finds its
    /// record without a scan of every record (1,000 nodes send many).
    attempts: HashMap<String, String>,
    /// When the leader first saw each class: its drills count from there
    /// (`crate::drills::plan`), persisted under `drills::ANCHORS_KEY`.
    pub drill_anchors: BTreeMap<String, i64>,
    /// When the leader last looked for orphaned drill scratch
    /// (`crate::drills::sweep`); not persisted.
    pub scratch_swept_ms: i64,
}

impl Jobs {
    pub fn get(&self, key: &str) -> Option<&JobRecord> {
        self.records.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut JobRecord> {
        self.records.get_mut(key)
    }

    pub fn insert(&mut self, key: String, rec: JobRecord) {
        self.records.insert(key, rec);
    }

    pub fn clear(&mut self) {
        self.records.clear();
    }

    pub fn records(&self) -> impl Iterator<Item = &JobRecord> {
        self.records.values()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &JobRecord)> {
        self.records.iter()
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = (&String, &mut JobRecord)> {
        self.records.iter_mut()
    }

    pub fn records_mut(&mut self) -> impl Iterator<Item = &mut JobRecord> {
        self.records.values_mut()
    }

    /// A sequence number for record ids, unique within this instance.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The key of the record that knows `attempt` (current or last failed).
    pub fn key_of_attempt(&mut self, attempt: &str) -> Option<String> {
        let known = |jobs: &Jobs, key: &String| {
            jobs.records
                .get(key)
                .is_some_and(|r| r.knows_attempt(attempt))
        };
        if let Some(key) = self.attempts.get(attempt).filter(|k| known(self, k)) {
            return Some(key.clone());
        }
        let key = self
            .records
            .iter()
            .find(|(_, r)| r.knows_attempt(attempt))
            .map(|(k, _)| k.clone())?;
        // Ids of finished attempts are never asked for again: dropped wholesale.
        if self.attempts.len() > 4 * self.records.len() + 64 {
            self.attempts.clear();
        }
        self.attempts.insert(attempt.to_string(), key.clone());
        Some(key)
    }
}
