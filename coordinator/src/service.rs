//! The coordinator's main loop: lease, policy, agent messages, persistence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::RwLock;
use tracing::{debug, info, warn};
use zdr_common::envelope::Sealer;
use zdr_common::policy::Policy;
use zdr_common::subject::{self, AgentTopic};
use zdr_common::wire::{
    Command, CommandResult, DatasetInventory, Event, Heartbeat, Hello, InventoryChunk,
    InventoryDelta, JobUpdate,
};

use crate::bus::{self, Stores};
use crate::fleet::{Changed, Fleet, NodeRecord};
use crate::jobs;
use crate::lease::Lease;
use crate::pairing;
use crate::policy;

/// Agent messages larger than this are dropped unread.
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub policy_path: PathBuf,
    /// Replication tasks; without it no replication is planned.
    pub tasks_path: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub key_id: String,
    pub signing_key: ed25519_dalek::SigningKey,
    /// This instance's name in the lease.
    pub instance: String,
    pub lease_ttl: Duration,
    /// A node is offline after this long without a heartbeat.
    pub offline_after: Duration,
    pub command_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("lease: {0}")]
    Lease(async_nats::Error),
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct PolicyState {
    pub policy: Policy,
    pub revision: u64,
    pub tasks: Vec<zdr_schemas::tasks::Task>,
    /// Site-to-site bandwidth budgets.
    pub links: Vec<zdr_schemas::tasks::Link>,
}

/// Everything the HTTP handlers and the loops share.
pub struct State {
    pub client: async_nats::Client,
    pub fleet: RwLock<Fleet>,
    pub policy: RwLock<Option<PolicyState>>,
    pub leader: AtomicBool,
    pub epoch: AtomicU64,
    pub sealer: Sealer,
    pub config: Config,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub pairings: RwLock<pairing::Plan>,
    pub jobs: tokio::sync::Mutex<jobs::Jobs>,
    pub(crate) stores: Stores,
    command_seq: AtomicU64,
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl State {
    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Signs and sends one command, waiting for the agent's reply.
    pub async fn send_command(&self, node: &str, cmd: &Command) -> Result<CommandResult, String> {
        if !self.leader.load(Ordering::SeqCst) {
            return Err("this coordinator is a standby; send commands to the leader".into());
        }
        subject::valid_node_id(node)?;
        let subj = subject::AgentSubjects::for_node(node).cmd;
        let payload = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
        let id = format!(
            "{}-{}-{}",
            self.config.instance,
            now(),
            self.command_seq.fetch_add(1, Ordering::SeqCst)
        );
        let ttl = self.config.command_timeout.as_secs().max(1) as i64 * 6;
        let env = self.sealer.seal(
            &subj,
            &id,
            now(),
            ttl,
            self.epoch.load(Ordering::SeqCst),
            &payload,
        );
        metrics::counter!("zdr_commands_sent_total").increment(1);
        let reply = tokio::time::timeout(
            self.config.command_timeout,
            self.client.request(subj, env.into()),
        )
        .await
        .map_err(|_| {
            format!(
                "node {node} did not answer within {:?}",
                self.config.command_timeout
            )
        })?
        .map_err(|e| format!("request to node {node} failed: {e}"))?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("node {node} sent a malformed reply: {e}"))
    }
}

/// Connects, restores state, and runs until the process is stopped.
pub async fn run(
    config: Config,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), ServiceError> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("zdr-coordinator {}", config.instance))
        .retry_on_initial_connect()
        // Else async-nats' own 10 s default cuts every command short.
        .request_timeout(Some(config.command_timeout))
        .connect(&config.nats_url)
        .await
        .map_err(|source| ServiceError::Connect {
            url: config.nats_url.clone(),
            source,
        })?;
    let js = jetstream::new(client.clone());
    let stores = bus::open(&js, config.lease_ttl).await?;
    let sealer = Sealer::new(config.key_id.clone(), config.signing_key.clone());
    let state = Arc::new(State {
        client: client.clone(),
        fleet: RwLock::new(Fleet::default()),
        policy: RwLock::new(None),
        leader: AtomicBool::new(false),
        epoch: AtomicU64::new(0),
        sealer,
        config: config.clone(),
        metrics,
        pairings: RwLock::new(pairing::Plan::default()),
        jobs: tokio::sync::Mutex::new(jobs::Jobs::default()),
        stores,
        command_seq: AtomicU64::new(0),
    });

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServiceError::Http {
            addr: config.http_addr,
            source,
        })?;
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "HTTP API listening");
    tokio::spawn(crate::http::serve(listener, state.clone()));

    // Losing the lease (or NATS) sends this instance back to standby; it
    // competes again and, if it wins, leads under a new, higher epoch.
    loop {
        info!(instance = %config.instance, "waiting for the coordinator lease");
        let lease =
            Lease::acquire(&state.stores.lease, &config.instance, config.lease_ttl / 3).await;
        match lead(&state, lease).await? {
            Led::Shutdown => return Ok(()),
            Led::LostLease => continue,
        }
    }
}

enum Led {
    Shutdown,
    LostLease,
}

async fn lead(state: &Arc<State>, mut lease: Lease) -> Result<Led, ServiceError> {
    let config = &state.config;
    state.epoch.store(lease.epoch, Ordering::SeqCst);
    info!(epoch = lease.epoch, "became leader");
    restore(state).await;
    let loaded = policy::load(&config.policy_path)?;
    let tasks = policy::load_tasks(config.tasks_path.as_deref(), &loaded.policy)?;
    let revision = policy::publish(
        &state.stores.policy,
        &state.sealer,
        lease.epoch,
        &loaded,
        now(),
    )
    .await?;
    info!(revision, digest = %loaded.digest, tasks = tasks.tasks.len(), "policy published");
    *state.policy.write().await = Some(PolicyState {
        policy: loaded.policy,
        revision,
        tasks: tasks.tasks,
        links: tasks.links,
    });
    restore_pairings(state).await;
    let abandoned = jobs::restore(state).await;
    state.leader.store(true, Ordering::SeqCst);
    jobs::cancel_abandoned(state, abandoned);

    let mut sub = state
        .client
        .subscribe(subject::ALL_AGENTS)
        .await
        .map_err(|e| ServiceError::Lease(e.into()))?;
    let mut renew = tokio::time::interval(config.lease_ttl / 3);
    let mut gauges = tokio::time::interval(Duration::from_secs(5));
    let mut job_tick = tokio::time::interval(Duration::from_secs(1));
    let mut specs_seen = spec_stamps(config);
    let mut resync_asked: std::collections::HashMap<String, i64> = Default::default();
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                if let Some(node) = handle_message(state, &msg.subject, &msg.payload).await {
                    let t = now();
                    if resync_asked.get(&node).map(|at| t - at >= 10).unwrap_or(true) {
                        resync_asked.insert(node.clone(), t);
                        let st = state.clone();
                        tokio::spawn(async move {
                            match st.send_command(&node, &Command::SendInventory {}).await {
                                Ok(r) => debug!(node, ?r.outcome, "asked for a full inventory"),
                                Err(e) => warn!(node, error = %e, "could not ask for a full inventory"),
                            }
                        });
                    }
                }
            }
            _ = renew.tick() => {
                if let Err(e) = lease.renew().await {
                    warn!(error = %e, "lost the coordinator lease; back to standby");
                    break;
                }
                resign_policy(state, lease.epoch).await;
            }
            _ = gauges.tick() => {
                update_gauges(state).await;
                update_pairings(state).await;
            }
            _ = job_tick.tick() => {
                // An edit of a spec file takes effect within a second, not at the next renewal.
                let stamps = spec_stamps(config);
                if stamps != specs_seen {
                    specs_seen = stamps;
                    resign_policy(state, lease.epoch).await;
                    update_pairings(state).await;
                }
                jobs::tick(state).await
            }
            _ = tokio::signal::ctrl_c() => {
                info!("shutting down; releasing the lease");
                state.leader.store(false, Ordering::SeqCst);
                lease.release().await;
                let _ = state.client.flush().await;
                return Ok(Led::Shutdown);
            }
        }
    }
    state.leader.store(false, Ordering::SeqCst);
    let _ = sub.unsubscribe().await;
    Ok(Led::LostLease)
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

async fn resign_policy(state: &State, epoch: u64) {
    let loaded = policy::load(&state.config.policy_path).and_then(|l| {
        policy::load_tasks(state.config.tasks_path.as_deref(), &l.policy).map(|t| (l, t))
    });
    let (loaded, tasks) = match loaded {
        Ok(v) => v,
        // A broken edit must not replace the running policy.
        Err(e) => {
            warn!(error = %e, "policy or tasks file has errors; keeping the last good revision");
            return;
        }
    };
    match policy::publish(&state.stores.policy, &state.sealer, epoch, &loaded, now()).await {
        Ok(revision) => {
            let mut p = state.policy.write().await;
            if p.as_ref().map(|p| p.revision) != Some(revision) {
                info!(revision, "policy file changed; new revision published");
            }
            *p = Some(PolicyState {
                policy: loaded.policy,
                revision,
                tasks: tasks.tasks,
                links: tasks.links,
            });
        }
        Err(e) => warn!(error = %e, "could not publish the policy"),
    }
}

/// Loads the pairings made before, so they stay stable across restarts.
async fn restore_pairings(state: &State) {
    let mut kept = Vec::new();
    if let Ok(mut keys) = state.stores.pairings.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(raw)) = state.stores.pairings.get(&key).await {
                match serde_json::from_slice::<pairing::Pairing>(&raw) {
                    Ok(p) => kept.push(p),
                    Err(e) => warn!(key, error = %e, "unreadable pairing in KV; skipped"),
                }
            }
        }
    }
    state.pairings.write().await.pairings = kept;
}

/// Re-plans pairings from the fleet as it is now and persists what changed.
async fn update_pairings(state: &State) {
    let (plan, previous) = {
        let fleet = state.fleet.read().await;
        let policy = state.policy.read().await;
        let Some(p) = policy.as_ref() else { return };
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
                    free_bytes: rec.pools.iter().map(|p| p.free).sum(),
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
        let previous = state.pairings.read().await.pairings.clone();
        (
            pairing::plan(&p.tasks, &nodes, &sources, &previous),
            previous,
        )
    };
    for p in &plan.pairings {
        if previous.iter().any(|q| q == p) {
            continue;
        }
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
    *state.pairings.write().await = plan;
}

/// Loads node records and inventories from KV.
async fn restore(state: &State) {
    let mut fleet = state.fleet.write().await;
    if let Ok(mut keys) = state.stores.fleet.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(raw)) = state.stores.fleet.get(&key).await {
                match serde_json::from_slice::<NodeRecord>(&raw) {
                    Ok(rec) => {
                        fleet.nodes.insert(key, rec);
                    }
                    Err(e) => warn!(key, error = %e, "unreadable node record in KV; skipped"),
                }
            }
        }
    }
    if let Ok(mut keys) = state.stores.inventory.keys().await {
        while let Some(Ok(key)) = keys.next().await {
            if let Ok(Some(raw)) = state.stores.inventory.get(&key).await {
                let Some((node, _)) = key.split_once('.') else {
                    continue;
                };
                match serde_json::from_slice::<DatasetInventory>(&raw) {
                    Ok(inv) => {
                        fleet
                            .inventory
                            .entry(node.to_string())
                            .or_default()
                            .insert(inv.dataset.clone(), inv);
                    }
                    Err(e) => warn!(key, error = %e, "unreadable inventory in KV; skipped"),
                }
            }
        }
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
async fn handle_message(state: &Arc<State>, subject: &str, payload: &[u8]) -> Option<String> {
    metrics::counter!("zdr_agent_messages_total").increment(1);
    if payload.len() > MAX_MESSAGE {
        bad_message(subject, "oversized", format!("{} bytes", payload.len()));
        return None;
    }
    let Some((node, topic)) = subject::parse_agent_subject(subject) else {
        return None; // commands and replies share the prefix
    };
    let t = now();
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
            // The agent publishes a full inventory right after its hello.
            state.fleet.write().await.hello(m, t)
        }
        AgentTopic::Heartbeat => {
            let m: Heartbeat = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            state.fleet.write().await.heartbeat(m, t)
        }
        AgentTopic::Inventory => {
            let m: InventoryChunk = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            state.fleet.write().await.inventory_chunk(m)
        }
        AgentTopic::Delta => {
            let m: InventoryDelta = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            state.fleet.write().await.delta(m)
        }
        AgentTopic::Event => {
            let m: Event = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            info!(node, event = ?m.kind, "agent event");
            metrics::counter!("zdr_agent_events_total").increment(1);
            Changed::default()
        }
        AgentTopic::Job => {
            let m: JobUpdate = decode(subject, payload)?;
            if !check(&m.node) {
                return None;
            }
            jobs::on_update(state, m).await;
            Changed::default()
        }
    };
    persist(state, node, &changed).await;
    changed.resync.then(|| node.to_string())
}

async fn persist(state: &State, node: &str, changed: &Changed) {
    let fleet = state.fleet.read().await;
    if changed.node_record {
        if let Some(rec) = fleet.nodes.get(node) {
            if let Ok(raw) = serde_json::to_vec(rec) {
                if let Err(e) = state.stores.fleet.put(node, raw.into()).await {
                    warn!(node, error = %e, "could not persist node record");
                }
            }
        }
    }
    let inv = fleet.inventory.get(node);
    for ds in &changed.datasets {
        let Some(d) = inv.and_then(|i| i.get(ds)) else {
            continue;
        };
        if let Ok(raw) = serde_json::to_vec(d) {
            if let Err(e) = state
                .stores
                .inventory
                .put(bus::inventory_key(node, ds), raw.into())
                .await
            {
                warn!(node, dataset = %ds, error = %e, "could not persist inventory");
            }
        }
    }
    for ds in &changed.removed_datasets {
        let _ = state
            .stores
            .inventory
            .delete(bus::inventory_key(node, ds))
            .await;
    }
}

async fn update_gauges(state: &State) {
    let fleet = state.fleet.read().await;
    let policy = state.policy.read().await;
    let t = now();
    let timeout = state.config.offline_after.as_secs() as i64;
    let online = fleet
        .nodes
        .keys()
        .filter(|n| fleet.online(n, t, timeout))
        .count();
    metrics::gauge!("zdr_nodes_total").set(fleet.nodes.len() as f64);
    metrics::gauge!("zdr_nodes_online").set(online as f64);
    let mut missed = 0;
    for (node, datasets) in &fleet.inventory {
        for inv in datasets.values() {
            let st = crate::fleet::dataset_status(policy.as_ref().map(|p| &p.policy), inv, t);
            if let Some(age) = st.newest_age_secs {
                metrics::gauge!("zdr_dataset_newest_snapshot_age_seconds", "node" => node.clone(), "dataset" => inv.dataset.clone())
                    .set(age as f64);
            }
            if st.rpo_met == Some(false) {
                missed += 1;
            }
        }
    }
    metrics::gauge!("zdr_datasets_rpo_missed").set(missed as f64);
    metrics::gauge!("zdr_coordinator_leader").set(if state.leader.load(Ordering::SeqCst) {
        1.0
    } else {
        0.0
    });
}
