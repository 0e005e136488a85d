//! What the coordinator's loops and its HTTP API share, behind narrow
//! accessors. Every lock here is a `std::sync` lock: its guard cannot live
//! across an `.await` in a spawned task (the future would not be `Send`), so
//! "no lock held across an await" is checked by the compiler.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use zdr_common::envelope::Sealer;
use zdr_common::policy::Policy;
use zdr_common::subject;
use zdr_common::wire::{Command, CommandResult};

use crate::bus::Stores;
use crate::config::Config;
use crate::fleet::{Changed, Fleet};
use crate::jobs::Jobs;
use crate::pairing;

/// Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct PolicyState {
    pub policy: Policy,
    pub revision: u64,
    pub tasks: Vec<zdr_schemas::tasks::Task>,
    /// Site-to-site bandwidth budgets.
    pub links: Vec<zdr_schemas::tasks::Link>,
    /// Uploads to object storage.
    pub buckets: Vec<zdr_schemas::buckets::BucketTask>,
}

/// Why a command did not get an answer. The HTTP API maps each kind to its
/// status code; nothing reads the wording.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("this coordinator is a standby; send commands to the leader")]
    Standby,
    #[error("{0}")]
    BadNode(String),
    #[error("node {0} is not in the fleet (it never said hello to this coordinator); check the node id with GET /api/v1/fleet")]
    UnknownNode(String),
    #[error("node {node} did not answer within {after:?}")]
    Timeout {
        node: String,
        after: std::time::Duration,
    },
    #[error("request to node {node} failed: {source}")]
    Request {
        node: String,
        source: async_nats::RequestError,
    },
    #[error("node {node} sent a malformed reply: {source}")]
    Malformed {
        node: String,
        source: serde_json::Error,
    },
    #[error("command does not serialize: {0}")]
    Encode(serde_json::Error),
    /// A long read's agent restarted while it ran: no answer will come.
    #[error("the agent on {node} restarted while it ran the command; the work died with it")]
    Restarted { node: String },
}

impl CommandError {
    /// The node gave no answer at all (timed out, or nobody subscribed):
    /// it may be restarting, so the same command can be asked again. An
    /// answer the node did give, or a refusal on this side, is final.
    pub fn unanswered(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Request { .. } | Self::Restarted { .. }
        )
    }
}

/// What changed in the fleet and is not written to KV yet. A dataset is
/// written as it is at flush time (so several deltas make one write), or
/// deleted if it is gone by then.
#[derive(Debug, Default, PartialEq)]
pub struct Dirty {
    pub nodes: BTreeSet<String>,
    /// (node, dataset).
    pub datasets: BTreeSet<(String, String)>,
}

impl Dirty {
    pub fn len(&self) -> usize {
        self.nodes.len() + self.datasets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds what one message changed.
    pub fn mark(&mut self, node: &str, changed: &Changed) {
        if changed.node_record {
            self.nodes.insert(node.to_string());
        }
        for ds in changed.datasets.iter().chain(&changed.removed_datasets) {
            self.datasets.insert((node.to_string(), ds.clone()));
        }
    }

    /// Adds back what a batch could not write, for the next batch.
    pub fn merge(&mut self, other: Dirty) {
        self.nodes.extend(other.nodes);
        self.datasets.extend(other.datasets);
    }
}

/// Which dirty node records a batch may write once its inventory writes
/// are done, and which wait for the next batch. A node record is the
/// commit mark of that node's inventories in KV: it carries the generation
/// and delta sequence they are at, and a new leader asks a node for a full
/// inventory only when its heartbeat disagrees with the record. A record
/// written beside an inventory write that failed, or that a kill -9 cut
/// off, would vouch for an inventory KV does not hold, and nobody would
/// ask for it again. So a record is written only after every inventory of
/// its node in the batch was; `failed` are the (node, dataset) writes that
/// were not.
pub fn records_to_commit(
    nodes: Vec<String>,
    failed: &BTreeSet<(String, String)>,
) -> (Vec<String>, Vec<String>) {
    let held: BTreeSet<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    nodes.into_iter().partition(|n| !held.contains(n.as_str()))
}

/// Nodes a compliance report reads per hold of the fleet's lock: about
/// 1 ms of the message loop's time per node of 10 datasets x 100 snapshots.
pub const REPORT_NODES_PER_HOLD: usize = 4;

pub struct State {
    client: async_nats::Client,
    config: Config,
    sealer: Sealer,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) stores: Stores,
    fleet: RwLock<Fleet>,
    policy: RwLock<Option<PolicyState>>,
    /// Why the policy or tasks file was not applied; `None` when it was.
    policy_problem: Mutex<Option<String>>,
    pairings: RwLock<pairing::Plan>,
    dirty: Mutex<Dirty>,
    /// Inventory keys stored in parts (`bus::parts`): their generation and
    /// part count, so the next write deletes the parts it replaces.
    inventory_parts: Mutex<HashMap<String, (String, usize)>>,
    jobs: Mutex<Jobs>,
    leader: AtomicBool,
    /// Unix seconds: when this instance last took the lead.
    leading_since: AtomicI64,
    epoch: AtomicU64,
    alerts: Mutex<crate::alerts::state::Book>,
    command_seq: AtomicU64,
    /// Command round trips (`crate::rtt`).
    rtt: Mutex<crate::rtt::Rtt>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub fn new(
        client: async_nats::Client,
        config: Config,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        stores: Stores,
    ) -> Self {
        State {
            client,
            sealer: Sealer::new(config.key_id.clone(), config.signing_key.clone()),
            config,
            metrics,
            stores,
            fleet: RwLock::new(Fleet::default()),
            policy: RwLock::new(None),
            policy_problem: Mutex::new(None),
            pairings: RwLock::new(pairing::Plan::default()),
            dirty: Mutex::new(Dirty::default()),
            inventory_parts: Mutex::new(HashMap::new()),
            jobs: Mutex::new(Jobs::default()),
            leader: AtomicBool::new(false),
            leading_since: AtomicI64::new(0),
            alerts: Mutex::new(Default::default()),
            epoch: AtomicU64::new(0),
            command_seq: AtomicU64::new(0),
            rtt: Mutex::new(crate::rtt::Rtt::new(now())),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn render_metrics(&self) -> String {
        // Set at every scrape, so a standby says 0 (its fleet gauges age out).
        metrics::gauge!("zdr_coordinator_leader").set(if self.is_leader() { 1.0 } else { 0.0 });
        let figures = self
            .rtt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .figures(now());
        match figures {
            Some(f) => {
                for (q, secs) in f.quantiles {
                    metrics::gauge!("zdr_command_round_trip_seconds", "quantile" => q).set(secs);
                }
                metrics::gauge!("zdr_command_round_trips").set(f.count as f64);
            }
            None => {
                for (_, q) in crate::rtt::QUANTILES {
                    metrics::gauge!("zdr_command_round_trip_seconds", "quantile" => q)
                        .set(f64::NAN);
                }
                metrics::gauge!("zdr_command_round_trips").set(0.0);
            }
        }
        self.metrics.render()
    }

    pub fn fleet(&self) -> RwLockReadGuard<'_, Fleet> {
        read(&self.fleet)
    }

    pub fn fleet_mut(&self) -> RwLockWriteGuard<'_, Fleet> {
        write(&self.fleet)
    }

    pub fn policy(&self) -> RwLockReadGuard<'_, Option<PolicyState>> {
        read(&self.policy)
    }

    pub fn set_policy(&self, p: PolicyState) {
        *write(&self.policy) = Some(p);
    }

    pub fn policy_problem(&self) -> Option<String> {
        self.policy_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_policy_problem(&self, problem: Option<String>) {
        *self
            .policy_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Notes what a message changed, for the next persistence batch.
    pub fn mark_dirty(&self, node: &str, changed: &Changed) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mark(node, changed);
    }

    /// What changed since the last call.
    pub fn take_dirty(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records how `key` is now stored (`None`: whole, or deleted) and
    /// returns how it was.
    pub fn swap_inventory_parts(
        &self,
        key: &str,
        now: Option<(String, usize)>,
    ) -> Option<(String, usize)> {
        let mut parts = self
            .inventory_parts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match now {
            Some(p) => parts.insert(key.to_string(), p),
            None => parts.remove(key),
        }
    }

    /// What a batch could not write goes back, for the next batch.
    pub fn requeue_dirty(&self, unwritten: Dirty) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(unwritten);
    }

    pub fn pairings(&self) -> RwLockReadGuard<'_, pairing::Plan> {
        read(&self.pairings)
    }

    pub fn set_pairings(&self, plan: pairing::Plan) {
        *write(&self.pairings) = plan;
    }

    /// The live compliance report (RPO per copy, 3-2-1); `None` until a
    /// policy is loaded.
    /// The compliance report, taken a few nodes at a time
    /// ([`REPORT_NODES_PER_HOLD`]): the message loop writes the fleet for
    /// every message, and a report of 1,000 nodes held it for over a second
    /// (issue 13's scale runs: pings timed out, heartbeats came late).
    pub fn compliance_report(&self) -> Option<crate::compliance::Report> {
        let nodes: Vec<String> = self.fleet().inventory.keys().cloned().collect();
        self.compliance_report_of(&nodes)
    }

    /// The report of the protected datasets on `nodes` only (a page of
    /// `GET /api/v1/report`); its summary counts those.
    pub fn compliance_report_of(&self, nodes: &[String]) -> Option<crate::compliance::Report> {
        use crate::compliance::{assemble, datasets, Index, Input};
        // The jobs first: their lock is not held with the others. Only
        // those about the page's nodes are copied: a job speaks for the
        // node it copies from, or the production it restores or drills.
        let jobs = {
            let page: std::collections::HashSet<&str> = nodes.iter().map(String::as_str).collect();
            let mut some: Vec<crate::jobs::JobRecord> = self
                .jobs()
                .records()
                .filter(|j| {
                    page.contains(j.source_node.as_str())
                        || j.restore
                            .as_ref()
                            .is_some_and(|r| page.contains(r.node.as_str()))
                })
                .cloned()
                .collect();
            some.sort_by_key(|r| std::cmp::Reverse(r.started_at_ms));
            some
        };
        let policy = self.policy();
        let policy = policy.as_ref()?;
        let plan = self.pairings();
        let index = Index::new(&plan.pairings, &plan.unpaired, &jobs);
        let now = now();
        let mut all = Vec::new();
        for some in nodes.chunks(REPORT_NODES_PER_HOLD) {
            let fleet = self.fleet();
            let input = Input {
                fleet: &fleet,
                policy: &policy.policy,
                pairings: &plan.pairings,
                unpaired: &plan.unpaired,
                jobs: &jobs,
                now,
                offline_after_secs: self.config().offline_after.as_secs() as i64,
            };
            all.extend(datasets(&input, &index, some));
        }
        Some(assemble(all, now))
    }

    pub fn jobs(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn leading_since(&self) -> i64 {
        self.leading_since.load(Ordering::SeqCst)
    }

    /// The alerts active now (see `crate::alerts::state`).
    pub fn alerts(&self) -> MutexGuard<'_, crate::alerts::state::Book> {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Takes the lead under `epoch`, or steps down (`None`).
    pub fn set_leader(&self, epoch: Option<u64>) {
        if let Some(e) = epoch {
            self.epoch.store(e, Ordering::SeqCst);
            self.leading_since.store(now(), Ordering::SeqCst);
        } else {
            // A standby evaluates nothing; the next leader starts afresh.
            *self.alerts() = Default::default();
        }
        self.leader.store(epoch.is_some(), Ordering::SeqCst);
    }

    pub fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Checks that `node` is a node id this coordinator knows (it said
    /// hello); the HTTP API answers at once with this.
    pub fn known_node(&self, node: &str) -> Result<(), CommandError> {
        subject::valid_node_id(node).map_err(CommandError::BadNode)?;
        if !self.fleet().nodes.contains_key(node) {
            return Err(CommandError::UnknownNode(node.to_string()));
        }
        Ok(())
    }

    /// Signs and sends one command, waiting for the agent's reply.
    pub async fn send_command(
        &self,
        node: &str,
        cmd: &Command,
    ) -> Result<CommandResult, CommandError> {
        self.request(node, cmd, self.config.command_timeout, true)
            .await
    }

    /// [`Self::send_command`], waiting up to `after` for the answer: for
    /// long work the agent answers when it ends (a content hash). Not a
    /// round trip of the `zdr_command_rtt` figures. Ends early, with
    /// [`CommandError::Restarted`], once the node says hello from a new
    /// process: the work died with the old one.
    pub async fn send_command_within(
        &self,
        node: &str,
        cmd: &Command,
        after: std::time::Duration,
    ) -> Result<CommandResult, CommandError> {
        let started = |s: &Self| s.fleet().nodes.get(node).map(|n| n.hello.started_at);
        let before = started(self);
        let restarted = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                if started(self) != before {
                    return;
                }
            }
        };
        tokio::select! {
            answer = self.request(node, cmd, after, false) => answer,
            _ = restarted => Err(CommandError::Restarted { node: node.to_string() }),
        }
    }

    async fn request(
        &self,
        node: &str,
        cmd: &Command,
        after: std::time::Duration,
        round_trip: bool,
    ) -> Result<CommandResult, CommandError> {
        if !self.is_leader() {
            return Err(CommandError::Standby);
        }
        // Not `known_node`: a node heard only through heartbeats is asked
        // for its hello and inventory this way.
        subject::valid_node_id(node).map_err(CommandError::BadNode)?;
        let subj = subject::AgentSubjects::for_node(node).cmd;
        let payload = serde_json::to_vec(cmd).map_err(CommandError::Encode)?;
        let t = now();
        let id = format!(
            "{}-{}-{}",
            self.config.instance,
            t,
            self.command_seq.fetch_add(1, Ordering::SeqCst)
        );
        let ttl = self.config.command_timeout.as_secs().max(1) as i64 * 6;
        let env = self.sealer.seal(&subj, &id, t, ttl, self.epoch(), &payload);
        metrics::counter!("zdr_commands_sent_total").increment(1);
        let sent = std::time::Instant::now();
        let request = async_nats::Request::new()
            .payload(env.into())
            .timeout(Some(after));
        let answer = tokio::time::timeout(after, self.client.send_request(subj, request)).await;
        // A timeout counts with its timeout; a request refused at once is no round trip.
        if round_trip && !matches!(answer, Ok(Err(_))) {
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.rtt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(micros, now());
        }
        let reply = answer
            .map_err(|_| CommandError::Timeout {
                node: node.to_string(),
                after,
            })?
            .map_err(|source| CommandError::Request {
                node: node.to_string(),
                source,
            })?;
        serde_json::from_slice(&reply.payload).map_err(|source| CommandError::Malformed {
            node: node.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_answer_may_be_asked_again() {
        let timeout = CommandError::Timeout {
            node: "n1".into(),
            after: std::time::Duration::from_secs(10),
        };
        assert!(timeout.unanswered());
        let nobody = CommandError::Request {
            node: "n1".into(),
            source: async_nats::RequestError::new(async_nats::RequestErrorKind::NoResponders),
        };
        assert!(nobody.unanswered());
        for final_ in [
            CommandError::Standby,
            CommandError::BadNode("bad".into()),
            CommandError::UnknownNode("n9".into()),
            CommandError::Malformed {
                node: "n1".into(),
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            },
        ] {
            assert!(!final_.unanswered(), "{final_}");
        }
    }

    #[test]
    fn dirty_coalesces_deltas_and_removals() {
        let mut d = Dirty::default();
        let touched = |ds: &[&str], removed: &[&str], node_record| Changed {
            node_record,
            datasets: ds.iter().map(|s| s.to_string()).collect(),
            removed_datasets: removed.iter().map(|s| s.to_string()).collect(),
            resync: false,
            policy_refused: None,
        };
        d.mark("n1", &touched(&["tank/a"], &[], true));
        d.mark("n1", &touched(&["tank/a", "tank/b"], &[], true));
        d.mark("n1", &touched(&[], &["tank/b"], false));
        d.mark("n2", &touched(&["tank/a"], &[], false));
        // Three deltas to n1's datasets make two writes; n2's record is untouched.
        assert_eq!(d.nodes, BTreeSet::from(["n1".to_string()]));
        assert_eq!(d.datasets.len(), 3);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn a_node_record_waits_for_its_inventories() {
        let failed = BTreeSet::from([("n2".to_string(), "tank/a".to_string())]);
        let nodes = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        let (commit, wait) = records_to_commit(nodes.clone(), &failed);
        assert_eq!(commit, ["n1", "n3"]);
        assert_eq!(wait, ["n2"]);
        // Nothing failed: every record is written.
        let (commit, wait) = records_to_commit(nodes, &BTreeSet::new());
        assert_eq!((commit.len(), wait.len()), (3, 0));
        let mut d = Dirty::default();
        d.nodes.insert("n1".into());
        d.merge(Dirty {
            nodes: BTreeSet::from(["n2".to_string()]),
            datasets: failed,
        });
        assert_eq!(d.len(), 3);
    }
}
