//! The HTTP health and status API.
//!
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: NATS connected, policy loaded and this instance leads (503 otherwise).
//! - `GET /metrics`: Prometheus text.
//! - `GET /api/v1/fleet`: nodes, their datasets, snapshots and RPO status.
//! - `GET /api/v1/pairings`: replication pairings and datasets that cannot be paired.
//! - `GET /api/v1/jobs`: replication jobs: state, progress (bytes, rate, ETA), errors, history.
//! - `GET /api/v1/report`: RPO per copy and 3-2-1 compliance of every protected dataset.
//! - `POST /api/v1/nodes/{node}/commands`: sign and send a command, e.g. `{"snapshot_now":{}}`.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use zdr_common::wire::{Command, PoolInfo};

use crate::fleet::{dataset_status, replica_of, DatasetStatus};
use crate::state::{now, CommandError, State};

/// Serves until `shutdown` is cancelled (requests under way finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/pairings", get(pairings))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/report", get(report))
        .route("/api/v1/nodes/{node}/commands", post(command))
        .with_state(state);
    let stop = async move { shutdown.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

#[derive(Serialize)]
struct Ready {
    ready: bool,
    nats_connected: bool,
    policy_loaded: bool,
    leader: bool,
    epoch: u64,
    /// Why the policy or tasks file is not in force (the last good signed
    /// policy is); the instance is not ready until it is fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_error: Option<String>,
}

async fn readyz(AxState(st): AxState<Arc<State>>) -> Response {
    let r = Ready {
        nats_connected: st.nats_connected(),
        policy_loaded: st.policy().is_some(),
        leader: st.is_leader(),
        epoch: st.epoch(),
        policy_error: st.policy_problem(),
        ready: false,
    };
    let ready = r.nats_connected && r.policy_loaded && r.leader && r.policy_error.is_none();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Ready { ready, ..r })).into_response()
}

async fn metrics(AxState(st): AxState<Arc<State>>) -> String {
    st.render_metrics()
}

#[derive(Serialize)]
struct FleetView {
    generated_at: i64,
    leader: bool,
    epoch: u64,
    policy_revision: Option<u64>,
    nodes: Vec<NodeView>,
}

#[derive(Serialize)]
struct NodeView {
    node: String,
    site: String,
    media: String,
    backend: String,
    version: String,
    online: bool,
    last_seen: i64,
    policy_revision: Option<u64>,
    pools: Vec<PoolInfo>,
    datasets: Vec<DatasetStatus>,
}

async fn fleet(AxState(st): AxState<Arc<State>>) -> Json<FleetView> {
    let fleet = st.fleet();
    let policy = st.policy();
    let plan = st.pairings();
    let t = now();
    let timeout = st.config().offline_after.as_secs() as i64;
    let nodes = fleet
        .nodes
        .iter()
        .map(|(name, rec)| NodeView {
            node: name.clone(),
            site: rec.hello.site.clone(),
            media: rec.hello.media.clone(),
            backend: rec.hello.backend.clone(),
            version: rec.hello.version.clone(),
            online: fleet.online(name, t, timeout),
            last_seen: rec.last_seen,
            policy_revision: rec.policy_revision,
            pools: rec.pools.clone(),
            datasets: fleet
                .inventory
                .get(name)
                .map(|m| {
                    m.values()
                        .map(|inv| DatasetStatus {
                            replica_of: replica_of(&plan.pairings, name, &inv.dataset),
                            ..dataset_status(policy.as_ref().map(|p| &p.policy), inv, t)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Json(FleetView {
        generated_at: t,
        leader: st.is_leader(),
        epoch: st.epoch(),
        policy_revision: policy.as_ref().map(|p| p.revision),
        nodes,
    })
}

async fn pairings(AxState(st): AxState<Arc<State>>) -> Json<serde_json::Value> {
    let plan = st.pairings();
    Json(serde_json::json!({ "pairings": plan.pairings, "unpaired": plan.unpaired }))
}

async fn jobs(AxState(st): AxState<Arc<State>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "jobs": crate::jobs::list(&st) }))
}

async fn report(AxState(st): AxState<Arc<State>>) -> Response {
    // The jobs first: their lock is not held with the others.
    let jobs = crate::jobs::list(&st);
    let policy = st.policy();
    let Some(policy) = policy.as_ref() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy loaded yet, so no dataset has a class to report on; see GET /readyz\n",
        )
            .into_response();
    };
    let fleet = st.fleet();
    let plan = st.pairings();
    Json(crate::compliance::report(&crate::compliance::Input {
        fleet: &fleet,
        policy: &policy.policy,
        pairings: &plan.pairings,
        unpaired: &plan.unpaired,
        jobs: &jobs,
        now: now(),
        offline_after_secs: st.config().offline_after.as_secs() as i64,
    }))
    .into_response()
}

async fn command(
    AxState(st): AxState<Arc<State>>,
    Path(node): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // Answered at once from the fleet this coordinator knows (a standby
    // knows none: it says so first).
    if !st.is_leader() {
        return command_error(CommandError::Standby);
    }
    if let Err(e) = st.known_node(&node) {
        return command_error(e);
    }
    let cmd: Command = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "request body is not a command ({e}); send e.g. {{\"snapshot_now\":{{}}}}\n"
                ),
            )
                .into_response()
        }
    };
    match st.send_command(&node, &cmd).await {
        Ok(result) => Json(result).into_response(),
        Err(e) => command_error(e),
    }
}

fn command_error(e: CommandError) -> Response {
    let code = match &e {
        CommandError::BadNode(_) => StatusCode::BAD_REQUEST,
        CommandError::UnknownNode(_) => StatusCode::NOT_FOUND,
        CommandError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        CommandError::Standby | CommandError::Request { .. } | CommandError::Malformed { .. } => {
            StatusCode::BAD_GATEWAY
        }
        CommandError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}
