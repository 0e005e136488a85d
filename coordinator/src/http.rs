//! The HTTP health and status API.
//!
//! - `GET /` and `GET /status`: the status page (`crate::status_page`).
//! - `GET /healthz`: the process is alive.
//! - `GET /readyz`: NATS connected, policy loaded and this instance leads (503 otherwise).
//! - `GET /metrics`: Prometheus text.
//! - `GET /api/v1/fleet`: nodes, their datasets, snapshots and RPO status, and
//!   the fleet's totals; paged by node with `?limit=N&after=NODE` (the answer's
//!   `next` is the `after` of the next page), one node with `?node=NODE`,
//!   without snapshot names with `?snapshots=false`.
//! - `GET /api/v1/pairings`: replication pairings and datasets that cannot be paired.
//! - `GET /api/v1/jobs`: replication jobs: state, progress (bytes, rate, ETA), errors, history.
//!   Both take `?node=NODE`: what has that node at either end.
//! - `GET /api/v1/report`: RPO per copy and 3-2-1 compliance of every protected dataset;
//!   paged by production node like the fleet (`?limit=N&after=NODE`, `next`), or one
//!   node's with `?node=NODE`: only those are computed, and the summary counts them.
//! - `GET /api/v1/plan`: what the coordinator will do next and why
//!   (`crate::plan`), at most `?limit=N` items (500 by default).
//! - `GET /api/v1/alerts`: the alerts active now (`crate::alerts`), with when each began;
//!   `?node=NODE` those of one node, `?limit=N&after=FINGERPRINT` a page (`next`).
//! - `POST /api/v1/nodes/{node}/commands`: sign and send a command, e.g. `{"snapshot_now":{}}`.
//! - `GET /api/v1/restore-points?node=N&dataset=D`, `POST /api/v1/restores`,
//!   `GET /api/v1/restores[/{job}]`: restores (planned by `crate::restore`).
//! - `POST /api/v1/drills`, `GET /api/v1/drills`, `GET /api/v1/drills/plan`:
//!   restore drills run now, their history, the next year's (`crate::drills`).
//!
//! Reads are open; every other method needs the API's bearer token
//! (`crate::api_auth`).

use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use zdr_common::wire::{Command, PolicyRefused, PoolInfo};

use crate::drills::DrillError;
use crate::fleet::{dataset_status, DatasetStatus};
use crate::restore::plan::{parse_at, parse_node_dataset, PlanError, Request};
use crate::restore::points::PointsError;
use crate::restore::RestoreError;
use crate::state::{now, CommandError, State};

/// Serves until `shutdown` is cancelled (requests under way finish).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/pairings", get(pairings))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/report", get(report))
        .route("/api/v1/plan", get(plan))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/nodes/{node}/commands", post(command))
        .route("/api/v1/restore-points", get(restore_points))
        .route("/api/v1/restores", get(restores).post(restore))
        .route("/api/v1/restores/{job}", get(restore_status))
        .route("/api/v1/drills", get(drills).post(drill))
        .route("/api/v1/drills/plan", get(drill_plan))
        // Every route, so a new endpoint is guarded too (`crate::api_auth`).
        .layer(axum::middleware::from_fn_with_state(
            state.config().api_token.clone(),
            crate::api_auth::guard,
        ))
        .with_state(state);
    let stop = async move { shutdown.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// Each piece of state is read under its own lock, one after the other.
/// Work that walks every dataset runs on a blocking thread, as the leader's
/// evaluation does: at 10 million snapshots a whole report took 12 s of
/// CPU, which on a runtime worker holds up every other request and loop.
async fn off_runtime<T: Send + 'static>(
    st: &Arc<State>,
    f: impl FnOnce(&State) -> T + Send + 'static,
) -> T {
    let st = st.clone();
    match tokio::task::spawn_blocking(move || f(&st)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn status_page(AxState(st): AxState<Arc<State>>) -> Response {
    off_runtime(&st, status_page_of).await
}

fn status_page_of(st: &State) -> Response {
    use axum::http::header;
    let report = st.compliance_report();
    let jobs = crate::jobs::list(st);
    let alerts: Vec<_> = st.alerts().active.values().cloned().collect();
    let revision = st.policy().as_ref().map(|p| p.revision);
    let t = now();
    let timeout = st.config().offline_after.as_secs() as i64;
    let nodes: Vec<crate::status_page::NodeLine> = {
        let fleet = st.fleet();
        fleet
            .nodes
            .iter()
            .map(|(name, rec)| crate::status_page::NodeLine {
                node: name.clone(),
                site: rec.hello.site.clone(),
                media: rec.hello.media.clone(),
                online: fleet.online(name, t, timeout),
                last_seen: rec.last_seen,
                pools: rec.pools.clone(),
            })
            .collect()
    };
    let problem = st.policy_problem();
    let html = crate::status_page::render(&crate::status_page::Input {
        now: t,
        leader: st.is_leader(),
        policy_revision: revision,
        policy_problem: problem.as_deref(),
        report: report.as_ref(),
        nodes: &nodes,
        jobs: &jobs,
        alerts: &alerts,
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, crate::status_page::CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

#[derive(Serialize)]
struct AlertsView {
    leader: bool,
    alerts: Vec<crate::alerts::state::Tracked>,
    /// More alerts follow: ask again with `after` set to this fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Which alerts: all by default; those labelled `node=NODE` with `?node`;
/// a page in fingerprint order with `?limit=N&after=FINGERPRINT`.
#[derive(Debug, Deserialize)]
struct AlertsQuery {
    node: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// Only the leader evaluates: a standby's list is empty and says so.
async fn alerts(
    AxState(st): AxState<Arc<State>>,
    Query(q): Query<AlertsQuery>,
) -> Json<AlertsView> {
    let book = st.alerts();
    let from = match &q.after {
        Some(a) => std::ops::Bound::Excluded(a.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut page = book
        .active
        .range::<String, _>((from, std::ops::Bound::Unbounded))
        .map(|(_, t)| t)
        .filter(|t| {
            q.node
                .as_ref()
                .is_none_or(|n| t.alert.labels.get("node") == Some(n))
        });
    let alerts: Vec<_> = page
        .by_ref()
        .take(q.limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let next = page
        .next()
        .and(alerts.last().map(|t| t.alert.fingerprint.clone()));
    Json(AlertsView {
        leader: st.is_leader(),
        alerts,
        next,
    })
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
    /// The key id this coordinator signs with.
    policy_key: String,
    totals: crate::fleet::Totals,
    nodes: Vec<NodeView>,
    /// More nodes follow: ask again with `after` set to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
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
    /// The node refuses the published policy (and applies its own), and why.
    policy_refused: Option<PolicyRefused>,
    pools: Vec<PoolInfo>,
    datasets: Vec<DatasetStatus>,
}

/// Which part of the fleet to answer with; by default all of it.
#[derive(Debug, Deserialize)]
struct FleetQuery {
    node: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    snapshots: Option<bool>,
}

/// The node names a page covers: `node` alone, or those after `after`.
fn node_range(
    node: &Option<String>,
    after: &Option<String>,
) -> (std::ops::Bound<String>, std::ops::Bound<String>) {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    match (node, after) {
        (Some(n), _) => (Included(n.clone()), Included(n.clone())),
        (None, Some(a)) => (Excluded(a.clone()), Unbounded),
        (None, None) => (Unbounded, Unbounded),
    }
}

/// The node names of one page of `map` (`node_range`, at most `limit`),
/// and the `after` of the next page when there is one.
fn page_of<V>(
    map: &std::collections::BTreeMap<String, V>,
    node: &Option<String>,
    after: &Option<String>,
    limit: Option<usize>,
) -> (Vec<String>, Option<String>) {
    let mut page = map
        .range::<String, _>(node_range(node, after))
        .map(|(n, _)| n);
    let names: Vec<String> = page
        .by_ref()
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    let next = page.next().and(names.last().cloned());
    (names, next)
}

/// Built on a blocking thread, a few nodes per hold of the fleet's lock
/// (`REPORT_NODES_PER_HOLD`), with the policy and pairings copied first: at
/// 10 million snapshots the whole answer took 36 s, and one hold of the
/// lock for all of it stopped the message loop as long.
async fn fleet(AxState(st): AxState<Arc<State>>, Query(q): Query<FleetQuery>) -> Json<FleetView> {
    Json(off_runtime(&st, move |st| fleet_view(st, &q)).await)
}

fn fleet_view(st: &State, q: &FleetQuery) -> FleetView {
    let t = now();
    let timeout = st.config().offline_after.as_secs() as i64;
    let with_snapshots = q.snapshots.unwrap_or(true);
    let (names, next) = page_of(&st.fleet().nodes, &q.node, &q.after, q.limit);
    let (policy, revision) = match st.policy().as_ref() {
        Some(p) => (Some(p.policy.clone()), Some(p.revision)),
        None => (None, None),
    };
    let pairings = st.pairings().pairings.clone();
    let replicas = crate::fleet::by_target(&pairings);
    let mut nodes = Vec::with_capacity(names.len());
    for some in names.chunks(crate::state::REPORT_NODES_PER_HOLD) {
        let fleet = st.fleet();
        for name in some {
            let Some(rec) = fleet.nodes.get(name) else {
                continue; // gone since the page was listed
            };
            nodes.push(NodeView {
                node: name.clone(),
                site: rec.hello.site.clone(),
                media: rec.hello.media.clone(),
                backend: rec.hello.backend.clone(),
                version: rec.hello.version.clone(),
                online: fleet.online(name, t, timeout),
                last_seen: rec.last_seen,
                policy_revision: rec.policy_revision,
                policy_refused: rec.policy_refused.clone(),
                pools: rec.pools.clone(),
                datasets: fleet
                    .inventory
                    .get(name)
                    .map(|m| {
                        m.values()
                            .map(|inv| DatasetStatus {
                                replica_of: replicas
                                    .get(&(name.as_str(), inv.dataset.as_str()))
                                    .map(|p| crate::fleet::ReplicaOf::from(*p)),
                                ..dataset_status(policy.as_ref(), inv, t, with_snapshots)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    FleetView {
        generated_at: t,
        leader: st.is_leader(),
        epoch: st.epoch(),
        policy_revision: revision,
        policy_key: st.config().key_id.clone(),
        totals: st.fleet().totals(),
        nodes,
        next,
    }
}

/// `?node=NODE`: only what has that node at either end.
#[derive(Debug, Deserialize)]
struct NodeQuery {
    node: Option<String>,
}

impl NodeQuery {
    fn wants(&self, source: &str, target: &str) -> bool {
        self.node
            .as_deref()
            .is_none_or(|n| n == source || n == target)
    }
}

async fn pairings(
    AxState(st): AxState<Arc<State>>,
    Query(q): Query<NodeQuery>,
) -> Json<serde_json::Value> {
    let plan = st.pairings();
    let pairings: Vec<_> = plan
        .pairings
        .iter()
        .filter(|p| q.wants(&p.source_node, &p.target_node))
        .collect();
    let unpaired: Vec<_> = plan
        .unpaired
        .iter()
        .filter(|u| q.wants(&u.source_node, &u.source_node))
        .collect();
    Json(serde_json::json!({ "pairings": pairings, "unpaired": unpaired }))
}

async fn jobs(
    AxState(st): AxState<Arc<State>>,
    Query(q): Query<NodeQuery>,
) -> Json<serde_json::Value> {
    let mut jobs = crate::jobs::list(&st);
    jobs.retain(|j| q.wants(&j.source_node, &j.target_node));
    Json(serde_json::json!({ "jobs": jobs }))
}

#[derive(Serialize)]
struct ReportPage {
    #[serde(flatten)]
    report: crate::compliance::Report,
    /// More production nodes follow: ask again with `after` set to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Which production nodes' datasets to report on: all by default; one with
/// `?node=NODE`; a page with `?limit=N&after=NODE`. Only those are computed.
#[derive(Debug, Deserialize)]
struct ReportQuery {
    node: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

async fn report(AxState(st): AxState<Arc<State>>, Query(q): Query<ReportQuery>) -> Response {
    let (nodes, next) = page_of(&st.fleet().inventory, &q.node, &q.after, q.limit);
    match off_runtime(&st, move |st| st.compliance_report_of(&nodes)).await {
        Some(report) => Json(ReportPage { report, next }).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy loaded yet, so no dataset has a class to report on; see GET /readyz\n",
        )
            .into_response(),
    }
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
        CommandError::Standby
        | CommandError::Request { .. }
        | CommandError::Malformed { .. }
        | CommandError::Restarted { .. } => StatusCode::BAD_GATEWAY,
        CommandError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}

/// `{"error": ...}` with its status code.
fn api_error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

fn restore_error(e: RestoreError) -> Response {
    let code = match &e {
        RestoreError::Points(
            PointsError::UnknownNode { .. } | PointsError::NotProtected { .. },
        ) => StatusCode::NOT_FOUND,
        RestoreError::Plan(p) => match p {
            PlanError::UnknownNode { .. } => StatusCode::NOT_FOUND,
            PlanError::DestinationExists { .. }
            | PlanError::ReplaceNeedsBase { .. }
            | PlanError::BucketNeedsNewDataset { .. } => StatusCode::CONFLICT,
            PlanError::CopyOffline { .. }
            | PlanError::NoCopyOnline { .. }
            | PlanError::DestinationOffline { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PlanError::BadInput { .. }
            | PlanError::AtAndSnapshot
            | PlanError::TooEarly { .. }
            | PlanError::NoSuchSnapshot { .. }
            | PlanError::NoSnapshots { .. }
            | PlanError::NotACopy { .. }
            | PlanError::DestinationIsCopy { .. } => StatusCode::BAD_REQUEST,
        },
        RestoreError::Busy { .. } | RestoreError::JustRestored { .. } => StatusCode::CONFLICT,
    };
    api_error(code, e.to_string())
}

/// A standby knows no fleet: it says so rather than answer from nothing.
#[derive(Deserialize)]
struct PlanQuery {
    limit: Option<usize>,
}

/// The leader's plan: jobs and the drill plan first (each under its own
/// locks), then pairings, fleet and policy together, in the lock order.
async fn plan(AxState(st): AxState<Arc<State>>, Query(q): Query<PlanQuery>) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    let now_ms = crate::state::now_ms();
    let jobs = crate::jobs::list(&st);
    let drills = crate::drills::plan_view(&st, now_ms / 1000);
    let pairings = st.pairings();
    let fleet = st.fleet();
    let policy = st.policy();
    let Some(p) = policy.as_ref() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy loaded yet, so there is nothing to plan; see GET /readyz".into(),
        );
    };
    let plan = crate::plan::plan(&crate::plan::Input {
        policy: p,
        fleet: &fleet,
        pairings: &pairings.pairings,
        jobs: &jobs,
        drills: &drills,
        now_ms,
        offline_after_secs: st.config().offline_after.as_secs() as i64,
        limit: q.limit.unwrap_or(crate::plan::DEFAULT_LIMIT),
    });
    Json(plan).into_response()
}

fn standby(st: &State) -> Option<Response> {
    (!st.is_leader()).then(|| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this coordinator is a standby; ask the leader (GET /readyz says which one leads)"
                .into(),
        )
    })
}

#[derive(Deserialize)]
struct PointsQuery {
    node: Option<String>,
    dataset: Option<String>,
}

async fn restore_points(
    AxState(st): AxState<Arc<State>>,
    Query(q): Query<PointsQuery>,
) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    let (Some(node), Some(dataset)) = (q.node, q.dataset) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "node and dataset are required, e.g. /api/v1/restore-points?node=n1&dataset=tank/db"
                .into(),
        );
    };
    match crate::restore::restore_points(&st, &node, &dataset) {
        Ok(points) => Json(points).into_response(),
        Err(e) => restore_error(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    source: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    from: Option<String>,
    to: String,
    #[serde(default)]
    replace: bool,
}

fn request(body: &[u8]) -> Result<Request, PlanError> {
    let b: RestoreBody = serde_json::from_slice(body).map_err(|e| PlanError::BadInput {
        input: "body",
        value: String::from_utf8_lossy(body).chars().take(200).collect(),
        why: format!(
            "{e}; send {{\"source\":\"n1:tank/db\",\"to\":\"n2:tank/db-restored\"}} \
             with optional at, snapshot, from and replace"
        ),
    })?;
    let (node, dataset) = parse_node_dataset("source", &b.source)?;
    let (to_node, to_dataset) = parse_node_dataset("to", &b.to)?;
    Ok(Request {
        node,
        dataset: dataset.to_string(),
        at: b.at.as_deref().map(parse_at).transpose()?,
        snapshot: b.snapshot,
        from: b.from,
        to_node,
        to_dataset: to_dataset.to_string(),
        replace: b.replace,
    })
}

async fn restore(AxState(st): AxState<Arc<State>>, body: axum::body::Bytes) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    let req = match request(&body) {
        Ok(r) => r,
        Err(e) => return restore_error(e.into()),
    };
    match crate::restore::submit(&st, req).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => restore_error(e),
    }
}

async fn restores(AxState(st): AxState<Arc<State>>) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    Json(serde_json::json!({ "restores": crate::restore::list(&st) })).into_response()
}

async fn restore_status(AxState(st): AxState<Arc<State>>, Path(job): Path<String>) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    match crate::restore::list(&st).into_iter().find(|s| s.job == job) {
        Some(s) => Json(s).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            format!("restore job {job:?} is not known; GET /api/v1/restores lists them"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    source: String,
    #[serde(default)]
    copy: Option<String>,
}

fn drill_error(e: DrillError) -> Response {
    let code = match e {
        DrillError::Points(p) => return restore_error(p.into()),
        DrillError::Plan(p) => return restore_error(p.into()),
        DrillError::NoPolicy | DrillError::PoolUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        DrillError::NoReplica { .. }
        | DrillError::NotACopy { .. }
        | DrillError::NoCommonSnapshot { .. } => StatusCode::BAD_REQUEST,
        DrillError::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
    };
    api_error(code, e.to_string())
}

async fn drill(AxState(st): AxState<Arc<State>>, body: axum::body::Bytes) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    let b: DrillBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                "body: {e}; send {{\"source\":\"n1:tank/db\"}} with an optional \"copy\":\"n2\""
            ),
            )
        }
    };
    let (node, dataset) = match parse_node_dataset("source", &b.source) {
        Ok(x) => x,
        Err(e) => return restore_error(e.into()),
    };
    let req = crate::drills::Request {
        node,
        dataset: dataset.to_string(),
        copy: b.copy,
    };
    match crate::drills::submit(&st, &req, None).await {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => drill_error(e),
    }
}

async fn drills(AxState(st): AxState<Arc<State>>) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    Json(serde_json::json!({ "drills": crate::drills::list(&st) })).into_response()
}

async fn drill_plan(AxState(st): AxState<Arc<State>>) -> Response {
    if let Some(r) = standby(&st) {
        return r;
    }
    let now = crate::state::now();
    Json(serde_json::json!({ "from": now, "drills": crate::drills::plan_view(&st, now) }))
        .into_response()
}
