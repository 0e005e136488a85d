//! What the coordinator's HTTP API answers, as far as the CLI reads it.
//! Unknown fields are ignored, so a newer coordinator still renders.

use serde::{Deserialize, Serialize};
use zdr_coordinator::fleet::ReplicaOf;
use zdr_coordinator::jobs::JobRecord;
use zdr_coordinator::pairing::Pairing;

/// `GET /api/v1/fleet`.
#[derive(Debug, Deserialize)]
pub struct FleetView {
    pub generated_at: i64,
    pub leader: bool,
    pub epoch: u64,
    pub policy_revision: Option<u64>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub site: String,
    pub media: String,
    pub backend: String,
    pub online: bool,
    pub last_seen: i64,
    #[serde(default)]
    pub policy_revision: Option<u64>,
    /// The node refuses the published policy (a coordinator older than the
    /// field sends none).
    #[serde(default)]
    pub policy_refused: Option<zdr_common::wire::PolicyRefused>,
    pub datasets: Vec<DatasetView>,
}

#[derive(Debug, Deserialize)]
pub struct DatasetView {
    pub dataset: String,
    pub class: Option<String>,
    pub newest: Option<String>,
    pub newest_age_secs: Option<i64>,
    pub rpo_secs: Option<u64>,
    pub rpo_met: Option<bool>,
    pub used: u64,
    /// Set on a replica (a coordinator older than the field sends none).
    #[serde(default)]
    pub replica_of: Option<ReplicaOf>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobsView {
    pub jobs: Vec<JobRecord>,
}

/// `GET /api/v1/pairings`.
#[derive(Debug, Deserialize)]
pub struct PairingsView {
    pub pairings: Vec<Pairing>,
    pub unpaired: Vec<UnpairedView>,
}

#[derive(Debug, Deserialize)]
pub struct UnpairedView {
    pub task: String,
    pub source_node: String,
    pub dataset: String,
    pub why: String,
}

/// `GET /api/v1/restore-points?node=N&dataset=D`.
#[derive(Debug, Deserialize)]
pub struct RestorePoints {
    pub node: String,
    pub dataset: String,
    pub copies: Vec<RestoreCopy>,
}

#[derive(Debug, Deserialize)]
pub struct RestoreCopy {
    /// "production" or "replica".
    pub copy: String,
    pub node: String,
    pub site: String,
    pub media: String,
    pub dataset: String,
    pub online: bool,
    pub raw: bool,
    /// Oldest first.
    pub snapshots: Vec<PointSnapshot>,
}

#[derive(Debug, Deserialize)]
pub struct PointSnapshot {
    pub name: String,
    pub guid: u64,
    pub creation: i64,
}

/// The body of `POST /api/v1/restores`.
#[derive(Debug, Serialize)]
pub struct RestoreRequest {
    pub source: String,
    pub at: Option<String>,
    pub snapshot: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub replace: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Place {
    pub node: String,
    pub dataset: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RestoreSnapshot {
    pub name: String,
    pub guid: u64,
    pub creation: i64,
}

/// `202` to `POST /api/v1/restores`.
#[derive(Debug, Deserialize)]
pub struct RestoreAccepted {
    pub job: String,
    pub from: Place,
    pub snapshot: RestoreSnapshot,
    pub to: Place,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    Planned,
    Running,
    Done,
    Failed,
    /// A state this CLI does not know yet: the job is still under way.
    #[serde(other)]
    Other,
}

impl RestoreState {
    pub fn finished(self) -> bool {
        matches!(self, RestoreState::Done | RestoreState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RestoreState::Planned => "planned",
            RestoreState::Running => "running",
            RestoreState::Done => "done",
            RestoreState::Failed => "failed",
            RestoreState::Other => "other",
        }
    }
}

/// `GET /api/v1/restores/{job}`, and each of `GET /api/v1/restores`.
#[derive(Debug, Clone, Deserialize)]
pub struct RestoreStatus {
    pub job: String,
    pub state: RestoreState,
    pub from: Place,
    pub to: Place,
    pub snapshot: RestoreSnapshot,
    pub bytes: u64,
    pub estimated_bytes: Option<u64>,
    pub started: i64,
    pub finished: Option<i64>,
    pub landed_guid: Option<u64>,
    pub error: Option<String>,
    /// Beyond the contract: the copy is raw-encrypted. Without it, the
    /// CLI asks the restore points.
    #[serde(default)]
    pub raw: Option<bool>,
}

/// `GET /api/v1/restores`.
#[derive(Debug, Deserialize)]
pub struct RestoresView {
    pub restores: Vec<RestoreStatus>,
}
