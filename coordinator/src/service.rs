//! The coordinator's main loop: lease, policy, agent messages, persistence.
//!
//! `run(config, metrics, shutdown)` serves HTTP and competes for the lease;
//! while it leads, four tasks run side by side so none can starve another:
//! the lease renewal (`keep_lease`, on a thread, runtime and NATS
//! connection of its own, so no load elsewhere can make it lapse), the
//! message loop (agent messages, the
//! job engine's tick, policy re-signing), persistence (`persist_loop`: what
//! messages changed is marked dirty and written to KV in batches, each
//! dataset once per batch) and evaluation (`evaluate_loop`: compliance
//! report, gauges, alerts, pairings). Everything stops on the
//! `shutdown` token: the lease is released on the way out, so a standby
//! takes over at once, and the transfers in flight go on, to be adopted.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zdr_common::subject::{self, AgentTopic};
use zdr_common::wire::{
    Command, DatasetInventory, Event, EventKind, Heartbeat, Hello, InventoryChunk, InventoryDelta,
    JobUpdate,
};

use crate::admit;
use crate::bus;
pub use crate::config::Config;
use crate::fleet::{Changed, NodeRecord};
use crate::jobs;
use crate::lease::{self, Lease, Next, Renewal};
use crate::pairing;
use crate::policy;
use crate::state::{now, now_ms, Dirty, PolicyState, State};

/// A heartbeat handled this long after the agent sent it counts as late.
const LATE_HEARTBEAT_SECS: i64 = 2;

/// Agent messages larger than this are dropped unread.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot connect to NATS at {}: {source}", servers.join(","))]
    Connect {
        servers: Vec<String>,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("subscribing to agent messages: {0}")]
    Subscribe(async_nats::SubscribeError),
    #[error("cannot start the lease's thread: {0}")]
    LeaseThread(std::io::Error),
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Connects, restores state, and runs until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let client = connect(&config, "").await?;
    let js = jetstream::new(client.clone());
    let mut stores = open_stores(&js, &config, &shutdown).await?;
    // The lease has a thread, a runtime and a connection of its own: on the
    // shared connection its renewal queued behind tens of thousands of alert
    // writes (issue 13, run D), and on the shared runtime a 23 s evaluation
    // starved it; either way it lapsed while the leader was alive.
    let lease_stop = CancellationToken::new();
    let _stop_lease_thread = lease_stop.clone().drop_guard();
    let lease_rt = lease_runtime(lease_stop).map_err(ServiceError::LeaseThread)?;
    let cfg = config.clone();
    stores.lease = lease_rt
        .spawn(async move {
            let js = jetstream::new(connect(&cfg, " lease").await?);
            Ok::<_, ServiceError>(bus::lease_store(&js, cfg.nats_replicas).await?)
        })
        .await
        .map_err(|e| ServiceError::LeaseThread(std::io::Error::other(e)))??;
    let state = Arc::new(State::new(client, config.clone(), metrics, stores));

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServiceError::Http {
            addr: config.http_addr,
            source,
        })?;
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP API listening");
    let http = tokio::spawn(crate::http::serve(
        listener,
        state.clone(),
        shutdown.clone(),
    ));
    let micro = tokio::spawn(crate::micro::run(state.clone(), shutdown.clone()));
    let alert_senders = tokio::spawn(crate::alerts::deliver::run(
        js.clone(),
        config.nats_replicas,
        config.receivers.clone(),
        format!("http://{}", config.http_addr),
        shutdown.clone(),
    ));

    // Losing the lease (or NATS) sends this instance back to standby; it
    // competes again and, if it wins, leads under a new, higher epoch.
    let result = loop {
        info!(instance = %config.instance, "waiting for the coordinator lease");
        let lease = tokio::select! {
            lease = Lease::acquire(&state.stores.lease, &config.instance, config.lease_ttl / 3) => lease,
            _ = shutdown.cancelled() => break Ok(()),
        };
        match lead(&state, lease, &lease_rt, &shutdown).await {
            Ok(Led::Shutdown) => break Ok(()),
            Ok(Led::LostLease) => continue,
            Err(e) => break Err(e),
        }
    };
    info!("shutting down");
    let _ = http.await;
    let _ = alert_senders.await;
    let _ = micro.await;
    if bus_connected(&state)
        && tokio::time::timeout(BUS_GRACE, state.client().flush())
            .await
            .is_err()
    {
        warn!("the last publications did not reach NATS in time");
    }
    result
}

/// A current-thread runtime on a thread of its own, until `stop`: what is
/// spawned on it runs whatever the main runtime's workers are busy with.
fn lease_runtime(stop: CancellationToken) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("zdr-lease".into())
        .spawn(move || rt.block_on(stop.cancelled()))?;
    Ok(handle)
}

/// One connection to NATS as this coordinator; `purpose` tells the
/// connections apart in the server's `connz`.
async fn connect(config: &Config, purpose: &str) -> Result<async_nats::Client, ServiceError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("zdr-coordinator {}{purpose}", config.instance))
        // The bus lets the coordinator's user read its own replies only.
        .custom_inbox_prefix(zdr_common::bus_auth::COORDINATOR_INBOX);
    if let Some(seed) = &config.nats_seed {
        if purpose.is_empty() {
            info!(user = seed.public_key(), "connecting to NATS with an nkey");
        }
        options = options.nkey(seed.secret().to_string());
    }
    options
        .retry_on_initial_connect()
        // Else async-nats' own 10 s default cuts every command short.
        .request_timeout(Some(config.command_timeout))
        .connect(config.nats_servers.clone())
        .await
        .map_err(|source| ServiceError::Connect {
            servers: config.nats_servers.clone(),
            source,
        })
}

/// How long the buckets may fail to open before the coordinator gives up:
/// a cluster that is still forming (or has lost a server) cannot place
/// every replica yet, while a replica count above the servers never can.
const OPEN_PATIENCE: Duration = Duration::from_secs(20);

async fn open_stores(
    js: &jetstream::Context,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<bus::Stores, ServiceError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match bus::open(js, config.lease_ttl, config.nats_replicas).await {
            Ok(stores) => return Ok(stores),
            Err(e) if started.elapsed() < OPEN_PATIENCE && !shutdown.is_cancelled() => {
                warn!(error = %e, "cannot open the JetStream buckets yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn bus_connected(state: &State) -> bool {
    state.client().connection_state() == async_nats::connection::State::Connected
}

/// The leader sets the fleet's gauges this often.
const GAUGE_PERIOD: Duration = Duration::from_secs(5);

/// A gauge not set for this long leaves `/metrics`: the series of a copy,
/// dataset or node that is gone stops there instead of repeating its last
/// value for ever, and so do a standby's (it does not follow the fleet).
pub const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// How long the way out waits on the bus (flush, unsubscribe, lease
/// release): with nats-server gone, those would wait for ever.
const BUS_GRACE: Duration = Duration::from_secs(2);

enum Led {
    Shutdown,
    LostLease,
}

/// Loads the policy and tasks files. When they have errors, a new leader
/// keeps the last good signed policy from KV, and says why in `/readyz`.
async fn load_policy(state: &State, epoch: u64) {
    let config = state.config();
    let loaded = policy::load(&config.policy_path)
        .and_then(|l| policy::load_tasks(config.tasks_path.as_deref(), &l.policy).map(|t| (l, t)));
    match loaded {
        Ok((loaded, tasks)) => publish_policy(state, epoch, loaded, tasks).await,
        Err(e) => {
            let why = format!(
                "policy or tasks file has errors; keeping the last good signed policy: {e}"
            );
            warn!("{why}");
            state.set_policy_problem(Some(why));
            if state.policy().is_some() {
                return;
            }
            let Some(bundle) = policy::last_signed(&state.stores.policy, state.sealer()).await
            else {
                warn!("no signed policy in KV either: no snapshots are scheduled and no jobs run until the files are fixed");
                return;
            };
            let tasks = policy::load_tasks(config.tasks_path.as_deref(), &bundle.policy)
                .map(|t| (t.tasks, t.links, t.buckets))
                .unwrap_or_default();
            info!(
                revision = bundle.revision,
                "leading on the last good signed policy"
            );
            state.set_policy(PolicyState {
                policy: bundle.policy,
                revision: bundle.revision,
                tasks: tasks.0,
                links: tasks.1,
                buckets: tasks.2,
            });
        }
    }
}

async fn publish_policy(
    state: &State,
    epoch: u64,
    loaded: policy::Loaded,
    tasks: zdr_schemas::tasks::Tasks,
) {
    match policy::publish(&state.stores.policy, state.sealer(), epoch, &loaded, now()).await {
        Ok(revision) => {
            if state.policy().as_ref().map(|p| p.revision) != Some(revision) {
                info!(revision, digest = %loaded.digest, tasks = tasks.tasks.len(), "policy published");
            }
            state.set_policy_problem(None);
            state.set_policy(PolicyState {
                policy: loaded.policy,
                revision,
                tasks: tasks.tasks,
                links: tasks.links,
                buckets: tasks.buckets,
            });
        }
        Err(e) => {
            warn!(error = %e, "could not publish the policy");
            state.set_policy_problem(Some(format!("could not publish the policy: {e}")));
        }
    }
}

async fn lead(
    state: &Arc<State>,
    lease: Lease,
    lease_rt: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> Result<Led, ServiceError> {
    let config = state.config();
    let epoch = lease.epoch;
    info!(epoch, "became leader");
    // Renewed from the start: reading a large fleet back from KV (below)
    // can take longer than the lease's TTL.
    let stop = CancellationToken::new();
    let lost = CancellationToken::new();
    let renewal = lease_rt.spawn(keep_lease(
        lease,
        config.lease_ttl,
        stop.clone(),
        lost.clone(),
    ));
    restore(state).await;
    crate::alerts::restore_book(state).await;
    load_policy(state, epoch).await;
    restore_pairings(state).await;
    let running = jobs::restore(state).await;
    if lost.is_cancelled() {
        // Lapsed while reading back: no command was sent and no job adopted
        // under this epoch yet.
        stop.cancel();
        return Ok(Led::LostLease);
    }
    state.set_leader(Some(epoch));
    let mut tasks = JoinSet::new();
    jobs::adopt(state, &mut tasks, running);

    let mut sub = match state.client().subscribe(subject::ALL_AGENTS).await {
        Ok(s) => s,
        Err(e) => {
            state.set_leader(None);
            stop.cancel();
            if let Ok(Ok(Some(lease))) = tokio::time::timeout(BUS_GRACE, renewal).await {
                let _ = tokio::time::timeout(BUS_GRACE, lease.release()).await;
            }
            return Err(ServiceError::Subscribe(e));
        }
    };
    // Each in its own task, so a long message backlog or evaluation can
    // starve neither the lease nor persistence.
    let persistence = tokio::spawn(persist_loop(state.clone(), stop.clone()));
    let evaluation = tokio::spawn(evaluate_loop(state.clone(), stop.clone()));
    let pruning = tokio::spawn(crate::prune::run(state.clone(), stop.clone()));
    let verifying = tokio::spawn(crate::bucket_verify::run(state.clone(), stop.clone()));
    let mut resign = tokio::time::interval(config.lease_ttl / 3);
    let mut job_tick = tokio::time::interval(Duration::from_secs(1));
    let mut specs_seen = spec_stamps(config);
    let mut resync_asked: std::collections::HashMap<String, i64> = Default::default();
    let led = loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break Led::LostLease };
                if let Some(node) = handle_message(state, &mut tasks, &msg.subject, &msg.payload).await {
                    let t = now();
                    if resync_asked.get(&node).map(|at| t - at >= 10).unwrap_or(true) {
                        resync_asked.insert(node.clone(), t);
                        let st = state.clone();
                        tasks.spawn(async move {
                            match st.send_command(&node, &Command::SendInventory {}).await {
                                Ok(r) => debug!(node, ?r.outcome, "asked for a full inventory"),
                                Err(e) => warn!(node, error = %e, "could not ask for a full inventory"),
                            }
                        });
                    }
                }
            }
            _ = lost.cancelled() => break Led::LostLease,
            _ = resign.tick() => resign_policy(state, epoch).await,
            _ = job_tick.tick() => {
                // An edit of a spec file takes effect within a second, not at the next renewal.
                let stamps = spec_stamps(config);
                if stamps != specs_seen {
                    specs_seen = stamps;
                    resign_policy(state, epoch).await;
                    update_pairings(state).await;
                }
                let started = std::time::Instant::now();
                jobs::tick(state, &mut tasks, now_ms()).await;
                metrics::gauge!("zdr_job_tick_seconds").set(started.elapsed().as_secs_f64());
            }
            Some(done) = tasks.join_next() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!(error = %e, "a job task panicked");
                    }
                }
            }
            _ = shutdown.cancelled() => break Led::Shutdown,
        }
    };
    state.set_leader(None);
    stop.cancel();
    let _ = evaluation.await;
    let _ = pruning.await;
    let _ = verifying.await;
    // Commands half sent are dropped; the agents' transfers go on and the
    // next leader adopts them.
    tasks.shutdown().await;
    let connected = bus_connected(state);
    if connected {
        let _ = tokio::time::timeout(BUS_GRACE, sub.unsubscribe()).await;
    }
    // The last batch is written (bounded: NATS may be gone).
    let _ = persistence.await;
    let lease = tokio::time::timeout(BUS_GRACE, renewal)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    if matches!(led, Led::Shutdown) {
        info!("releasing the lease");
        let released = match lease {
            Some(lease) if connected => tokio::time::timeout(BUS_GRACE, lease.release())
                .await
                .is_ok(),
            _ => false,
        };
        if !released {
            warn!("the lease could not be released (NATS unreachable); a standby takes over when it expires");
        }
    }
    Ok(led)
}

/// Renews the lease by `lease::after_renewal`'s rules until `stop` (then
/// hands it back for release), or cancels `lost` once it may no longer be
/// ours.
async fn keep_lease(
    mut lease: Lease,
    ttl: Duration,
    stop: CancellationToken,
    lost: CancellationToken,
) -> Option<Lease> {
    let mut next = lease::after_renewal(Renewal::Confirmed, lease.since_confirmed(), ttl);
    loop {
        let Next::RenewIn { after, within } = next else {
            warn!("lost the coordinator lease; back to standby");
            lost.cancel();
            return None;
        };
        tokio::select! {
            _ = stop.cancelled() => return Some(lease),
            _ = tokio::time::sleep(after) => {}
        }
        let r = lease.renew(within).await;
        if r == Renewal::Unanswered {
            metrics::counter!("zdr_lease_renewals_unanswered_total").increment(1);
            debug!("a lease renewal got no answer in time; trying again");
        }
        next = lease::after_renewal(r, lease.since_confirmed(), ttl);
    }
}

/// Alert notifications logged one by one per evaluation.
const ALERT_LOG_LINES: usize = 50;

/// The gauges, alerts and pairings, every `GAUGE_PERIOD`, until `stop`.
async fn evaluate_loop(state: Arc<State>, stop: CancellationToken) {
    let mut gauges = tokio::time::interval(GAUGE_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = gauges.tick() => {}
        }
        let started = std::time::Instant::now();
        // One report per tick, for the gauges and the alerts. On a blocking
        // thread: at 10 million snapshots it took 23 s of CPU, and on a
        // runtime worker it starved the lease renewal, which then lapsed.
        let st = state.clone();
        let evaluated = tokio::task::spawn_blocking(move || {
            let report = st.compliance_report();
            update_gauges(&st, report.as_ref());
            report
                .map(|r| crate::alerts::evaluate(&st, &r, now()))
                .unwrap_or_default()
        })
        .await;
        let notes = match evaluated {
            Ok(notes) => notes,
            Err(e) => {
                warn!(error = %e, "the evaluation failed; the next tick tries again");
                continue;
            }
        };
        // A mass outage changes thousands at once (100,000 lines per
        // evaluation in the 10-million-snapshot run); the receivers get them all.
        for n in notes.iter().take(ALERT_LOG_LINES) {
            let a = &n.alert;
            warn!(status = n.status.as_str(), alertname = a.name(), fingerprint = %a.fingerprint, labels = ?a.labels, "alert: {}", a.annotations["summary"]);
        }
        if notes.len() > ALERT_LOG_LINES {
            warn!(
                more = notes.len() - ALERT_LOG_LINES,
                "and more alert notifications, not logged one by one (GET /api/v1/alerts lists them)"
            );
        }
        if !notes.is_empty() {
            crate::alerts::save_book(&state, &notes).await;
            let receivers = &state.config().receivers;
            if !receivers.is_empty() {
                let js = jetstream::new(state.client().clone());
                let replicas = state.config().nats_replicas;
                crate::alerts::deliver::enqueue(&js, replicas, receivers, &notes, now()).await;
            }
        }
        metrics::gauge!("zdr_evaluation_seconds").set(started.elapsed().as_secs_f64());
        update_pairings(&state).await;
    }
}

/// The modification time and size of the policy and tasks files: cheap to
/// read every second, and changed by any edit (a missing file reads as None).
fn spec_stamps(config: &Config) -> [Option<(std::time::SystemTime, u64)>; 2] {
    let stamp = |p: Option<&std::path::Path>| {
        let m = std::fs::metadata(p?).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    [
        stamp(Some(&config.policy_path)),
        stamp(config.tasks_path.as_deref()),
    ]
}

/// Re-reads both spec files and publishes what changed; a broken edit keeps
/// the running policy and says why in `/readyz`.
async fn resign_policy(state: &State, epoch: u64) {
    let config = state.config();
    let loaded = policy::load(&config.policy_path)
        .and_then(|l| policy::load_tasks(config.tasks_path.as_deref(), &l.policy).map(|t| (l, t)));
    match loaded {
        Ok((loaded, tasks)) => publish_policy(state, epoch, loaded, tasks).await,
        Err(e) => {
            let why =
                format!("policy or tasks file has errors; keeping the last good revision: {e}");
            if state.policy_problem().as_deref() != Some(why.as_str()) {
                warn!("{why}");
            }
            state.set_policy_problem(Some(why));
        }
    }
}

/// Loads the pairings made before, so they stay stable across restarts.
async fn restore_pairings(state: &State) {
    let mut kept = Vec::new();
    let read = bus::load_all(state.client(), &state.stores.pairings, |key, raw| {
        match serde_json::from_slice::<pairing::Pairing>(raw) {
            Ok(p) => kept.push(p),
            Err(e) => warn!(key, error = %e, "unreadable pairing in KV; skipped"),
        }
    })
    .await;
    if let Err(e) = read {
        warn!(error = %e, "cannot read the pairings made before; pairing afresh");
    }
    state.set_pairings(pairing::Plan {
        pairings: kept,
        ..Default::default()
    });
}

/// Re-plans pairings from the fleet as it is now and persists what changed.
async fn update_pairings(state: &Arc<State>) {
    // The plan walks every dataset: on a blocking thread, as the evaluation.
    let st = state.clone();
    let Ok(Some((plan, changed))) = tokio::task::spawn_blocking(move || plan_pairings(&st)).await
    else {
        return;
    };
    for p in &changed {
        info!(task = %p.task, node = %p.source_node, dataset = %p.dataset, target = %p.target_node, reason = %p.reason, "pairing");
        let key = bus::pairing_key(&p.task, &p.source_node, &p.dataset);
        if let Ok(raw) = serde_json::to_vec(p) {
            if let Err(e) = state.stores.pairings.put(key, raw.into()).await {
                warn!(error = %e, "could not persist a pairing");
            }
        }
    }
    metrics::gauge!("zdr_pairings").set(plan.pairings.len() as f64);
    metrics::gauge!("zdr_unpaired_datasets").set(plan.unpaired.len() as f64);
    state.set_pairings(plan);
}

/// The pairings for the live fleet, and those new or changed since the
/// last plan; `None` without a policy.
fn plan_pairings(state: &State) -> Option<(pairing::Plan, Vec<pairing::Pairing>)> {
    let fleet = state.fleet();
    let policy = state.policy();
    let p = policy.as_ref()?;
    let nodes: Vec<pairing::NodeFacts> = fleet
        .nodes
        .iter()
        .filter_map(|(name, rec)| {
            // The policy's labels are authoritative; a node it no longer lists is gone.
            let labels = p.policy.nodes.get(name)?;
            Some(pairing::NodeFacts {
                name: name.clone(),
                site: labels.site.clone(),
                media: labels.media.clone(),
                pools: rec.pools.iter().map(|p| (p.name.clone(), p.free)).collect(),
            })
        })
        .collect();
    let sources: Vec<pairing::SourceDataset> = fleet
        .inventory
        .iter()
        .flat_map(|(node, datasets)| {
            datasets.values().filter_map(move |d| {
                Some(pairing::SourceDataset {
                    node: node.clone(),
                    dataset: zdr_common::DatasetName::parse(&d.dataset).ok()?,
                    class: d.class.clone(),
                    used: d.used,
                })
            })
        })
        .collect();
    let previous = state.pairings();
    let plan = pairing::plan(&p.tasks, &nodes, &sources, &previous.pairings);
    let before: std::collections::HashSet<&pairing::Pairing> = previous.pairings.iter().collect();
    let changed: Vec<pairing::Pairing> = plan
        .pairings
        .iter()
        .filter(|p| !before.contains(p))
        .cloned()
        .collect();
    Some((plan, changed))
}

/// Loads node records and inventories from KV.
async fn restore(state: &State) {
    let gone = |what: &str, e: async_nats::Error| warn!(error = %e, "cannot read the {what} in KV; they come back as agents report");
    let mut nodes = Vec::new();
    let read =
        bus::load_all(
            state.client(),
            &state.stores.fleet,
            |key, raw| match serde_json::from_slice::<NodeRecord>(raw) {
                Ok(rec) => nodes.push((key.to_string(), rec)),
                Err(e) => warn!(key, error = %e, "unreadable node record in KV; skipped"),
            },
        )
        .await;
    if let Err(e) = read {
        gone("node records", e);
    }
    let mut inventories = Vec::new();
    // Inventories stored in parts (`bus::parts`): headers, and every part.
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut parts: HashMap<(String, String, usize), Vec<u8>> = HashMap::new();
    let mut parse = |key: &str, raw: &[u8]| {
        let Some((node, _)) = key.split_once('.') else {
            return;
        };
        match serde_json::from_slice::<DatasetInventory>(raw) {
            Ok(mut inv) => {
                // The fleet keeps snapshots in createtxg order.
                inv.snapshots.sort_by_key(|s| s.createtxg);
                inventories.push((node.to_string(), inv))
            }
            Err(e) => warn!(key, error = %e, "unreadable inventory in KV; skipped"),
        }
    };
    let read = bus::load_all(state.client(), &state.stores.inventory, |key, raw| {
        if let Some((head, generation, i)) = bus::parts::part_of(key) {
            parts.insert((head.to_string(), generation.to_string(), i), raw.to_vec());
        } else if bus::parts::header(raw).is_some() {
            headers.push((key.to_string(), raw.to_vec()));
        } else {
            parse(key, raw);
        }
    })
    .await;
    if let Err(e) = read {
        gone("inventories", e);
    }
    for (key, header) in &headers {
        let whole = bus::parts::assemble(header, |generation, i| {
            parts
                .get(&(key.clone(), generation.to_string(), i))
                .map(Vec::as_slice)
        });
        match whole {
            Ok(raw) => parse(key, &raw),
            // The agent's next full inventory brings it back.
            Err(e) => {
                warn!(key, error = %e, "an inventory stored in parts cannot be read; skipped")
            }
        }
        if let Some(Ok((generation, count, _))) = bus::parts::header(header) {
            state.swap_inventory_parts(key, Some((generation.clone(), count)));
            parts.retain(|(k, g, _), _| !(k == key && *g == generation));
        }
    }
    // What is left is named by no header: left over from a write cut short.
    for (key, generation, i) in parts.into_keys() {
        let part = bus::parts::part_key(&key, &generation, i);
        if let Err(e) = state.stores.inventory.delete(&part).await {
            debug!(key = part, error = %e, "could not delete a left-over inventory part");
        }
    }
    let mut fleet = state.fleet_mut();
    for (key, rec) in nodes {
        fleet.nodes.insert(key, rec);
    }
    for (node, inv) in inventories {
        fleet
            .inventory
            .entry(node)
            .or_default()
            .insert(inv.dataset.clone(), inv);
    }
    info!(nodes = fleet.nodes.len(), "fleet restored from JetStream");
}

fn bad_message(subject: &str, reason: &str, detail: impl std::fmt::Display) {
    metrics::counter!("zdr_bad_messages_total", "reason" => reason.to_string()).increment(1);
    warn!(subject, reason, %detail, "dropped an agent message");
}

fn decode<T: serde::de::DeserializeOwned>(subject: &str, payload: &[u8]) -> Option<T> {
    match serde_json::from_slice(payload) {
        Ok(v) => Some(v),
        Err(e) => {
            bad_message(subject, "malformed", e);
            None
        }
    }
}

/// Applies one agent message; returns the node when it needs a full resync.
async fn handle_message(
    state: &Arc<State>,
    tasks: &mut JoinSet<()>,
    subject: &str,
    payload: &[u8],
) -> Option<String> {
    metrics::counter!("zdr_agent_messages_total").increment(1);
    if payload.len() > MAX_MESSAGE {
        bad_message(subject, "oversized", format!("{} bytes", payload.len()));
        return None;
    }
    let Some((node, topic)) = subject::parse_agent_subject(subject) else {
        return None; // commands and replies share the prefix
    };
    let t = now();
    let named = admit::named_node(state.policy().as_ref().map(|p| &p.policy), node);
    if let Err(why) = named {
        // A stray agent heartbeats every few seconds: warn at its hello only.
        if topic == AgentTopic::Hello {
            warn!(node, %why, "hello refused");
        } else {
            debug!(node, %why, "message from a node the policy does not name dropped");
        }
        metrics::counter!("zdr_bad_messages_total", "reason" => why.reason()).increment(1);
        return None;
    }
    let refuse = |what: &str, why: admit::Refusal| {
        metrics::counter!("zdr_bad_messages_total", "reason" => why.reason()).increment(1);
        warn!(node, %why, "{what} refused");
    };
    let check = |claimed: &str| {
        if claimed != node {
            bad_message(subject, "node_mismatch", format!("body says {claimed:?}"));
            false
        } else {
            true
        }
    };
    let changed = match topic {
        AgentTopic::Hello => {
            let m: Hello = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            info!(node, site = %m.site, media = %m.media, backend = %m.backend, "agent said hello");
            if m.backend == "sim" {
                warn!(
                    node,
                    "agent runs the SIMULATED backend: it protects no real data"
                );
            }
            // Reports it sent while nobody heard (a cut uplink) are asked for.
            jobs::catch_up(state, tasks, node, m.started_at.saturating_mul(1000));
            // The agent publishes a full inventory right after its hello.
            state.fleet_mut().hello(m, t)
        }
        AgentTopic::Heartbeat => {
            let m: Heartbeat = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            // Stamped by the agent's clock: a backlog here, or clock skew.
            if t - m.at >= LATE_HEARTBEAT_SECS {
                metrics::counter!("zdr_heartbeats_late_total").increment(1);
            }
            let changed = state.fleet_mut().heartbeat(m, t);
            if let Some(r) = &changed.policy_refused {
                warn!(node, reason = ?r.reason, revision = r.revision,
                    "the node refuses the published policy and stays on its own; see /api/v1/fleet");
            }
            changed
        }
        AgentTopic::Inventory => {
            let m: InventoryChunk = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            if let Err(why) = admit::inventory_times(&m.datasets, t) {
                refuse("inventory", why);
                return None;
            }
            state.fleet_mut().inventory_chunk(m)
        }
        AgentTopic::Delta => {
            let m: InventoryDelta = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            if let Err(why) = admit::delta_times(&m.changes, t) {
                refuse("inventory delta", why);
                return None;
            }
            state.fleet_mut().delta(m)
        }
        AgentTopic::Event => {
            let m: Event = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            info!(node, event = ?m.kind, "agent event");
            metrics::counter!("zdr_agent_events_total").increment(1);
            if let EventKind::FloorRefused(r) = &m.kind {
                let snapshots: Vec<&str> = r.snapshots.iter().map(|h| h.name.as_str()).collect();
                warn!(node, dataset = %r.dataset, operation = ?r.operation, ?snapshots,
                    "the node's retention floor refused a destructive operation inside the immutability window");
                metrics::counter!("zdr_floor_refusals_total", "node" => node.to_string())
                    .increment(1);
            }
            Changed::default()
        }
        AgentTopic::Job => {
            let m: JobUpdate = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            jobs::on_update(state, tasks, m).await;
            Changed::default()
        }
    };
    state.mark_dirty(node, &changed);
    changed.resync.then(|| node.to_string())
}

/// Persistence runs this often: what changed since is written in one batch,
/// each dataset once however many deltas it had.
const PERSIST_PERIOD: Duration = Duration::from_secs(2);

/// KV writes in flight at once within a batch.
const PERSIST_CONCURRENCY: usize = 64;

/// Records serialized per hold of the fleet lock, so a large batch does not
/// keep the message loop from the fleet.
const PERSIST_SLICE: usize = 256;

/// Writes the dirty node records and inventories every `PERSIST_PERIOD`,
/// off the message path, until `stop`; then one last batch, bounded.
async fn persist_loop(state: Arc<State>, stop: CancellationToken) {
    let mut every = tokio::time::interval(PERSIST_PERIOD);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => persist_batch(&state).await,
        }
    }
    if tokio::time::timeout(BUS_GRACE, persist_batch(&state))
        .await
        .is_err()
    {
        warn!("the last persistence batch did not finish; the next leader asks the agents for what is missing");
    }
}

/// One batch: serialized in slices under the fleet lock, written after it
/// is dropped, several at once. Inventories first, then the node records
/// that vouch for them (`state::records_to_commit`); what failed is tried
/// again at the next batch.
async fn persist_batch(state: &State) {
    let dirty = state.take_dirty();
    metrics::gauge!("zdr_persist_backlog").set(dirty.len() as f64);
    if dirty.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    // Records are read before the inventories, so a record never says more
    // than the inventories written with it.
    let mut records = Vec::with_capacity(dirty.nodes.len());
    let nodes: Vec<String> = dirty.nodes.into_iter().collect();
    for slice in nodes.chunks(PERSIST_SLICE) {
        let fleet = state.fleet();
        for node in slice {
            if let Some(raw) = fleet
                .nodes
                .get(node)
                .and_then(|r| serde_json::to_vec(r).ok())
            {
                records.push((node.clone(), raw));
            }
        }
    }
    let mut inventories = Vec::with_capacity(dirty.datasets.len());
    let datasets: Vec<(String, String)> = dirty.datasets.into_iter().collect();
    for slice in datasets.chunks(PERSIST_SLICE) {
        let fleet = state.fleet();
        for (node, ds) in slice {
            // Gone since it was marked: what is gone is deleted (`None`).
            let raw = fleet
                .dataset(node, ds)
                .map(|d| serde_json::to_vec(d).unwrap_or_default());
            inventories.push(((node.clone(), ds.clone()), raw));
        }
    }
    let written = records.len() + inventories.len();
    let limit = inventory_limit(state).await;
    let failed: BTreeSet<(String, String)> = futures::stream::iter(inventories)
        .map(|((node, ds), raw)| async move {
            let key = bus::inventory_key(&node, &ds);
            write_inventory(state, &key, raw, limit)
                .await
                .map_err(
                    |e| warn!(key, error = %e, "could not persist; tried again at the next batch"),
                )
                .err()
                .map(|()| (node, ds))
        })
        .buffer_unordered(PERSIST_CONCURRENCY)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    let (commit, waiting) =
        crate::state::records_to_commit(records.iter().map(|(n, _)| n.clone()).collect(), &failed);
    let commit: BTreeSet<String> = commit.into_iter().collect();
    let mut unwritten = Dirty {
        nodes: waiting.into_iter().collect(),
        datasets: failed,
    };
    let records = records.into_iter().filter(|(n, _)| commit.contains(n));
    let failed_records: Vec<String> = futures::stream::iter(records)
        .map(|(node, raw)| async move {
            match state.stores.fleet.put(&node, raw.into()).await {
                Ok(_) => None,
                Err(e) => {
                    warn!(key = node, error = %e, "could not persist; tried again at the next batch");
                    Some(node)
                }
            }
        })
        .buffer_unordered(PERSIST_CONCURRENCY)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    unwritten.nodes.extend(failed_records);
    if !unwritten.is_empty() {
        metrics::counter!("zdr_persist_failures_total").increment(unwritten.len() as u64);
        state.requeue_dirty(unwritten);
    }
    metrics::gauge!("zdr_persist_batch_seconds").set(started.elapsed().as_secs_f64());
    debug!(written, "persisted a batch");
}

/// The largest message the inventory bucket takes: the server's
/// `max_payload`, or the bucket's `max_message_size` when smaller.
async fn inventory_limit(state: &State) -> usize {
    let payload = state.client().server_info().max_payload;
    let mut stream = state.stores.inventory.stream.clone();
    match stream.info().await.map(|i| i.config.max_message_size) {
        Ok(n) if n > 0 => payload.min(n as usize),
        _ => payload,
    }
}

/// Writes one inventory (`None`: deletes it), in parts when it is larger
/// than `limit` (`bus::parts`), and then deletes the parts it replaced.
async fn write_inventory(
    state: &State,
    key: &str,
    raw: Option<Vec<u8>>,
    limit: usize,
) -> Result<(), String> {
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let store = &state.stores.inventory;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let stored = match raw {
        None => {
            store.delete(key).await.map_err(|e| err(&e))?;
            None
        }
        Some(raw) => {
            let generation = format!(
                "{:x}x{:x}",
                now_ms(),
                GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            match bus::parts::layout(key, raw, limit, &generation) {
                bus::parts::Layout::Whole(raw) => {
                    store.put(key, raw.into()).await.map_err(|e| err(&e))?;
                    None
                }
                bus::parts::Layout::Parts {
                    generation,
                    parts,
                    header,
                } => {
                    let count = parts.len();
                    for (part_key, bytes) in parts {
                        store
                            .put(&part_key, bytes.into())
                            .await
                            .map_err(|e| err(&e))?;
                    }
                    store.put(key, header.into()).await.map_err(|e| err(&e))?;
                    Some((generation, count))
                }
            }
        }
    };
    if let Some((generation, count)) = state.swap_inventory_parts(key, stored) {
        delete_parts(store, key, &generation, count).await;
    }
    Ok(())
}

/// Deletes parts no header names any more; one that stays is deleted at the
/// next leader's start.
async fn delete_parts(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    generation: &str,
    count: usize,
) {
    for i in 0..count {
        let part = bus::parts::part_key(key, generation, i);
        if let Err(e) = store.delete(&part).await {
            debug!(key = part, error = %e, "could not delete a replaced inventory part");
        }
    }
}

/// Fleet gauges, per node and class (never one series per dataset: a
/// fleet of 100,000 datasets would scrape as 100,000 series). Reads each
/// dataset's summary only: no snapshot list is scanned or cloned.
fn update_gauges(state: &State, report: Option<&crate::compliance::Report>) {
    let fleet = state.fleet();
    let policy = state.policy();
    let t = now();
    let timeout = state.config().offline_after.as_secs() as i64;
    let mut online = 0;
    for n in fleet.nodes.keys() {
        let up = fleet.online(n, t, timeout);
        online += usize::from(up);
        metrics::gauge!("zdr_node_online", "node" => n.clone()).set(f64::from(u8::from(up)));
        // A counter shows from the start, so `increase()` sees its first step.
        metrics::counter!("zdr_floor_refusals_total", "node" => n.clone()).increment(0);
    }
    metrics::gauge!("zdr_nodes_total").set(fleet.nodes.len() as f64);
    metrics::gauge!("zdr_nodes_online").set(online as f64);
    let mut missed = 0;
    let (mut datasets, mut snapshots) = (0usize, 0usize);
    // (node, class) -> the oldest "newest snapshot" among its datasets.
    let mut worst: std::collections::BTreeMap<(&str, String), i64> = Default::default();
    for (node, inventory) in &fleet.inventory {
        for inv in inventory.values() {
            let s = crate::fleet::summary(policy.as_ref().map(|p| &p.policy), inv, t);
            datasets += 1;
            snapshots += s.count;
            if let (Some(age), Some(class)) = (s.newest_age_secs, s.class) {
                let w = worst.entry((node.as_str(), class)).or_insert(age);
                *w = (*w).max(age);
            }
            if s.rpo_met == Some(false) {
                missed += 1;
            }
        }
    }
    for ((node, class), age) in worst {
        metrics::gauge!("zdr_newest_snapshot_age_seconds", "node" => node.to_string(), "class" => class)
            .set(age as f64);
    }
    metrics::gauge!("zdr_datasets_total").set(datasets as f64);
    metrics::gauge!("zdr_snapshots_total").set(snapshots as f64);
    metrics::gauge!("zdr_datasets_rpo_missed").set(missed as f64);
    drop((fleet, policy));
    if let Some(report) = report {
        copy_gauges(report, state.config().copy_metrics_max);
    }
}

/// The totals per production node, class and role always; per copy of each
/// protected dataset too while the fleet has at most `per_copy_max` copies
/// (labels name the dataset and the copy's node, never a snapshot). A series
/// no longer set leaves `/metrics` after the exporter's idle timeout.
fn copy_gauges(report: &crate::compliance::Report, per_copy_max: usize) {
    use crate::compliance::RpoState;
    let totals = crate::compliance::totals(report);
    for ((node, class, role), t) in &totals.copies {
        let labels = [
            ("node", node.to_string()),
            ("class", class.to_string()),
            ("role", role.as_str().to_string()),
        ];
        for (rpo, n) in [("ok", t.ok), ("warning", t.warning), ("breach", t.breach)] {
            let mut with_state = labels.to_vec();
            with_state.push(("rpo", rpo.to_string()));
            metrics::gauge!("zdr_class_copies", &with_state).set(n as f64);
        }
        if let Some(lag) = t.max_lag_secs {
            metrics::gauge!("zdr_class_copy_lag_max_seconds", &labels).set(lag as f64);
        }
        if *role != crate::compliance::Role::Production {
            metrics::gauge!("zdr_class_pending_snapshots", &labels).set(t.pending_snapshots as f64);
            metrics::gauge!("zdr_class_pending_bytes", &labels).set(t.pending_bytes as f64);
        }
    }
    for ((node, class), n) in &totals.not_compliant {
        let labels = [("node", node.to_string()), ("class", class.to_string())];
        metrics::gauge!("zdr_class_datasets_not_3_2_1", &labels).set(*n as f64);
    }
    let per_copy = report.summary.copies() <= per_copy_max;
    metrics::gauge!("zdr_copy_series_served").set(f64::from(u8::from(per_copy)));
    if per_copy {
        for d in &report.datasets {
            for c in &d.copies {
                let labels = [
                    ("node", d.node.clone()),
                    ("dataset", d.dataset.clone()),
                    ("copy_node", c.node.clone()),
                    ("role", c.role.as_str().to_string()),
                ];
                if let Some(lag) = c.lag_secs {
                    metrics::gauge!("zdr_copy_lag_seconds", &labels).set(lag as f64);
                }
                let breach = matches!(c.rpo, RpoState::Breach);
                metrics::gauge!("zdr_copy_rpo_breach", &labels).set(f64::from(u8::from(breach)));
                if let Some(r) = &c.replication {
                    metrics::gauge!("zdr_copy_pending_snapshots", &labels)
                        .set(r.pending_snapshots as f64);
                    metrics::gauge!("zdr_copy_pending_bytes", &labels).set(r.pending_bytes as f64);
                }
            }
            let labels = [("node", d.node.clone()), ("dataset", d.dataset.clone())];
            metrics::gauge!("zdr_dataset_3_2_1_compliant", &labels)
                .set(f64::from(u8::from(d.compliant)));
        }
    }
    let s = &report.summary;
    for (state, n) in [
        ("ok", s.copies_ok),
        ("warning", s.copies_warning),
        ("breach", s.copies_breach),
    ] {
        metrics::gauge!("zdr_copies", "rpo" => state).set(n as f64);
    }
}
