//! The agent's NATS side: hello, heartbeats, inventory publication, signed
//! commands and the policy watch. The lifecycle never waits on any of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zdr_common::bus_auth;
use zdr_common::envelope::{Freshness, Verifier};
use zdr_common::subject::{self, AgentSubjects};
use zdr_common::wire::{
    chunk_inventory, Command, CommandResult, Effects, EventKind, Heartbeat, Hello, InventoryDelta,
    JobPhase, JobUpdate, Outcome, PolicyRefused, INVENTORY_CHUNK_BYTES,
};

use crate::clock::now;
use crate::config::Config;
use crate::floor;
use crate::lifecycle::{Lifecycle, PassReport, Publication};
use crate::replication::Replication;
use crate::state::{judge, SignedPolicy, StateDir, Verdict};

pub struct Agent {
    pub config: Config,
    pub lifecycle: Arc<Lifecycle>,
    pub verifier: Verifier,
    pub state: StateDir,
    pub freshness: Mutex<Freshness>,
    pub replication: Arc<Replication>,
    pub started_at: i64,
    heartbeat_seq: AtomicU64,
    /// A coordinator that lost track of this node asked for everything again.
    hello_due: AtomicBool,
    /// Why the policy the bucket offers was refused, for the heartbeats.
    policy_refused: Mutex<Option<PolicyRefused>>,
    /// Long reads running at once (`HashSnapshot` reads every byte of a
    /// snapshot, `VerifyBucket` every segment of a dataset's streams).
    long_reads: Arc<tokio::sync::Semaphore>,
}

/// Long reads one node runs at once; a drill or verification asking for
/// another is told so and asks again.
const LONG_READS: usize = 2;

/// How a command is answered.
pub enum Handled {
    Now(Box<CommandResult>),
    /// A long read (minutes to hours on large data), answered when it ends
    /// while the node goes on answering other commands.
    Later(futures::future::BoxFuture<'static, CommandResult>),
}

impl Agent {
    pub fn new(
        config: Config,
        lifecycle: Arc<Lifecycle>,
        verifier: Verifier,
        state: StateDir,
        freshness: Freshness,
        replication: Arc<Replication>,
    ) -> Self {
        Agent {
            config,
            lifecycle,
            verifier,
            state,
            freshness: Mutex::new(freshness),
            replication,
            long_reads: Arc::new(tokio::sync::Semaphore::new(LONG_READS)),
            started_at: now(),
            heartbeat_seq: AtomicU64::new(0),
            hello_due: AtomicBool::new(false),
            policy_refused: Mutex::new(None),
        }
    }

    fn subjects(&self) -> AgentSubjects {
        AgentSubjects::for_node(&self.config.node)
    }

    fn policy_revision(&self) -> Option<u64> {
        self.lifecycle.policy().map(|p| p.bundle.revision)
    }

    async fn pools(&self) -> Vec<zdr_common::wire::PoolInfo> {
        let lifecycle = self.lifecycle.clone();
        tokio::task::spawn_blocking(move || lifecycle.pools())
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| warn!(error = %e, "listing pools failed"))
                    .ok()
            })
            .unwrap_or_default()
    }

    async fn hello(&self, client: &async_nats::Client) {
        let hello = Hello {
            node: self.config.node.clone(),
            site: self.config.site.clone(),
            media: self.config.media.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            backend: self.lifecycle.backend.kind().into(),
            pools: self.pools().await,
            started_at: self.started_at,
            policy_revision: self.policy_revision(),
        };
        publish(client, self.subjects().hello, &hello).await;
    }

    async fn heartbeat(&self, client: &async_nats::Client) {
        let (generation, delta_seq) = self.lifecycle.inventory_position();
        let hb = Heartbeat {
            node: self.config.node.clone(),
            seq: self.heartbeat_seq.fetch_add(1, Ordering::SeqCst),
            at: now(),
            policy_revision: self.policy_revision(),
            inventory_generation: generation,
            delta_seq,
            pools: self.pools().await,
            policy_refused: self.policy_refused(),
        };
        publish(client, self.subjects().heartbeat, &hb).await;
    }

    /// Publishes a full inventory if one is needed, else pending changes as a delta.
    async fn publish_inventory(&self, client: &async_nats::Client) {
        // Milliseconds keep generations distinct across agent restarts.
        let fresh = chrono::Utc::now().timestamp_millis() as u64;
        let ok = match self.lifecycle.next_publication(fresh) {
            Publication::Full { generation } => {
                let chunks = chunk_inventory(
                    &self.config.node,
                    generation,
                    self.lifecycle.snapshot_inventory(),
                    INVENTORY_CHUNK_BYTES,
                );
                let n = chunks.len();
                let mut ok = true;
                for c in chunks {
                    ok &= publish(client, self.subjects().inventory, &c).await;
                }
                debug!(generation, chunks = n, "full inventory published");
                ok
            }
            Publication::Delta {
                generation,
                seq,
                changes,
            } => {
                let d = InventoryDelta {
                    node: self.config.node.clone(),
                    generation,
                    seq,
                    changes,
                };
                publish(client, self.subjects().delta, &d).await
            }
            Publication::Nothing => true,
        };
        if !ok {
            self.lifecycle.request_full_inventory();
        }
    }

    async fn publish_events(&self, client: &async_nats::Client) {
        loop {
            let Some(ev) = self.lifecycle.pop_event() else {
                return;
            };
            if !publish(client, self.subjects().event, &ev).await {
                self.lifecycle.unpop_event(ev);
                return;
            }
        }
    }

    /// Verifies, checks freshness, then parses and runs one command; long
    /// reads (a content hash, a bucket verification) run apart and are
    /// answered when they end.
    pub async fn handle_command(&self, subject: &str, payload: &[u8]) -> Handled {
        let (id, actor, cmd) = match self.open_command(subject, payload) {
            Ok(opened) => opened,
            Err(refused) => return Handled::Now(refused),
        };
        let node = self.config.node.clone();
        match cmd {
            Command::HashSnapshot { dataset, snapshot } => {
                let lc = self.lifecycle.clone();
                self.long_read(id, move |id| async move {
                    let hashed = tokio::task::spawn_blocking(move || {
                        crate::drill::hash_snapshot(&lc, &dataset, &snapshot)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("hashing panicked: {e}")));
                    match hashed {
                        Ok(hash) => CommandResult {
                            hash: Some(hash),
                            ..CommandResult::new(&id, &node, Outcome::Done, "hashed".into())
                        },
                        Err(m) => CommandResult::new(&id, &node, Outcome::Failed, m),
                    }
                })
            }
            Command::VerifyBucket(job) => {
                let repl = self.replication.clone();
                self.long_read(id, move |id| async move {
                    match repl.verify_bucket(*job).await {
                        Ok(check) => {
                            let (outcome, message) = match check.problems.as_slice() {
                                [] => (Outcome::Done, "verified".to_string()),
                                [one] => (Outcome::Failed, one.clone()),
                                [first, ..] => (
                                    Outcome::Failed,
                                    format!("{first} (and more: see the check's problems)"),
                                ),
                            };
                            CommandResult {
                                bucket_check: Some(check),
                                ..CommandResult::new(&id, &node, outcome, message)
                            }
                        }
                        Err(m) => CommandResult::new(&id, &node, Outcome::Failed, m),
                    }
                })
            }
            cmd => Handled::Now(Box::new(self.run_command(&id, actor, cmd).await)),
        }
    }

    /// Runs `work` apart, holding one of the node's long-read slots; with
    /// none free, answers at once that it is busy.
    fn long_read<F, W>(&self, id: String, work: W) -> Handled
    where
        W: FnOnce(String) -> F,
        F: std::future::Future<Output = CommandResult> + Send + 'static,
    {
        let Ok(slot) = self.long_reads.clone().try_acquire_owned() else {
            return Handled::Now(Box::new(CommandResult::new(
                &id,
                &self.config.node,
                Outcome::Failed,
                format!(
                    "{LONG_READS} long reads (content hashes, bucket verifications) already run \
                     on this node; ask again when one ends"
                ),
            )));
        };
        let work = work(id);
        Handled::Later(Box::pin(async move {
            let _slot = slot;
            work.await
        }))
    }

    /// The command's id, the actor audit records name, and the command;
    /// or the answer that refuses it.
    fn open_command(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<(String, String, Command), Box<CommandResult>> {
        let t = now();
        let refuse = |reason: String| {
            warn!(subject, %reason, "command refused");
            self.lifecycle.event(
                EventKind::CommandRefused {
                    subject: subject.to_string(),
                    reason: reason.clone(),
                },
                t,
            );
            CommandResult::new("", &self.config.node, Outcome::Refused, reason)
        };
        let opened = match self.verifier.open(subject, payload, t) {
            Ok(o) => o,
            Err(e) => return Err(Box::new(refuse(e.to_string()))),
        };
        {
            let mut f = self.freshness.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = f.admit(&opened.header, t) {
                return Err(Box::new(refuse(e.to_string())));
            }
            if let Err(e) = self.state.save_freshness(&f) {
                warn!(error = %e, "could not persist replay memory");
            }
        }
        let id = opened.header.id.clone();
        let cmd: Command = serde_json::from_slice(opened.payload).map_err(|e| {
            Box::new(CommandResult::new(
                &id,
                &self.config.node,
                Outcome::Failed,
                format!("signed command does not parse: {e}"),
            ))
        })?;
        info!(id = %id, command = ?cmd, "command accepted");
        if cmd == (Command::SendInventory {}) {
            self.hello_due.store(true, Ordering::SeqCst);
        }
        let actor = format!("coordinator:{}/{}", opened.header.kid, id);
        Ok((id, actor, cmd))
    }

    async fn run_command(&self, id: &str, actor: String, cmd: Command) -> CommandResult {
        let result =
            |outcome, message: String| CommandResult::new(id, &self.config.node, outcome, message);
        let done = |r: Result<String, String>| match r {
            Ok(m) => result(Outcome::Done, m),
            Err(m) => result(Outcome::Failed, m),
        };
        let repl = &self.replication;
        let cmd = match cmd {
            Command::Receive(job) => {
                return match repl.receive(job, actor).await {
                    Ok(offer) => CommandResult {
                        offer: Some(offer),
                        ..result(Outcome::Done, "waiting for the sender".into())
                    },
                    Err(r) => CommandResult {
                        effects: Effects {
                            floor_refused: r.floor.into_iter().collect(),
                            ..Effects::default()
                        },
                        ..result(Outcome::Failed, r.message)
                    },
                };
            }
            Command::Send(job) => return done(repl.send(job).await),
            Command::Upload(job) => return done(repl.upload(*job).await),
            Command::RestoreFromBucket(job) => {
                return done(repl.restore_from_bucket(*job, actor).await)
            }
            Command::SetRate { job, bytes_per_sec } => {
                return done(repl.set_rate(&job, bytes_per_sec))
            }
            Command::CancelJob { job } => return done(repl.cancel(&job)),
            Command::JobStatus { job } => {
                return match repl.status(&job) {
                    Some(update) => {
                        let how = match update.state {
                            JobPhase::Running => "running",
                            JobPhase::Done => "ended: done",
                            JobPhase::Failed => "ended: failed",
                        };
                        CommandResult {
                            job: Some(update),
                            ..result(Outcome::Done, how.into())
                        }
                    }
                    None => result(Outcome::Failed, format!("no job {job} runs here")),
                }
            }
            Command::ReleaseHolds { dataset, tag, keep } => {
                return done(repl.release_holds(&dataset, &tag, &keep).await)
            }
            Command::DropHolds { dataset, tag } => {
                return done(repl.drop_holds(&dataset, &tag).await)
            }
            Command::Hold {
                dataset,
                snapshots,
                tag,
            } => return done(repl.hold(&dataset, &snapshots, &tag).await),
            Command::DestroyScratch { dataset } => {
                let lc = self.lifecycle.clone();
                let destroyed = tokio::task::spawn_blocking(move || {
                    crate::drill::destroy_scratch(&lc, &dataset, &actor, "the drill ended")
                })
                .await
                .unwrap_or_else(|e| Err(format!("destroying panicked: {e}")));
                return done(destroyed);
            }
            other => other,
        };
        let lc = self.lifecycle.clone();
        let run = move || match cmd {
            Command::Ping {} => summarize(Effects::default(), "pong".into()),
            Command::SendInventory {} => {
                lc.request_full_inventory();
                summarize(Effects::default(), "hello and full inventory queued".into())
            }
            Command::SnapshotNow {} => pass_result(lc.snapshot_pass(now(), true)),
            Command::PruneNow {} => pass_result(lc.prune_pass(now(), &actor)),
            Command::PruneReplica(cmd) => pass_result(lc.prune_replica(&cmd, now(), &actor)),
            _ => unreachable!("replication commands returned above"),
        };
        match tokio::task::spawn_blocking(run).await {
            Ok((outcome, message, effects)) => CommandResult {
                effects,
                ..result(outcome, message)
            },
            Err(e) => result(Outcome::Failed, format!("command panicked: {e}")),
        }
    }

    /// Applies a policy envelope from the KV bucket, or says at warn level,
    /// in an event and in the heartbeats why not.
    pub fn apply_policy(&self, raw: &[u8]) {
        let t = now();
        let current = self.lifecycle.policy();
        let verdict = SignedPolicy::open(&self.verifier, raw, Some(t)).and_then(|new| {
            let mut f = self.freshness.lock().unwrap_or_else(|e| e.into_inner());
            let (epoch, highest) = (new.epoch, f.highest_epoch);
            let verdict = judge(new, current.as_ref(), highest);
            // An authentic envelope raises the epoch even when its revision is refused.
            if epoch > highest {
                f.highest_epoch = epoch;
                let _ = self.state.save_freshness(&f);
            }
            verdict
        });
        let new = match verdict {
            Ok(Verdict::Apply(new)) => *new,
            Ok(Verdict::Same) => return self.set_policy_refused(None),
            Err(refused) => {
                warn!(
                    reason = ?refused.reason,
                    revision = refused.revision,
                    current = current.as_ref().map(|c| c.bundle.revision),
                    "policy refused: {refused}"
                );
                self.lifecycle.event(
                    EventKind::PolicyRefused {
                        reason: refused.message.clone(),
                    },
                    t,
                );
                return self.set_policy_refused(Some(PolicyRefused {
                    reason: refused.reason,
                    revision: refused.revision,
                    at: t,
                }));
            }
        };
        if let Err(e) = self.state.save_policy(&new) {
            warn!(error = %e, "could not cache the policy; applying it anyway");
        }
        let (revision, kid) = (new.bundle.revision, new.kid.clone());
        if self.lifecycle.install_policy(new) {
            info!(revision, key = %kid, "policy applied");
            self.lifecycle
                .event(EventKind::PolicyApplied { revision }, t);
        }
        self.set_policy_refused(None);
    }

    fn set_policy_refused(&self, refused: Option<PolicyRefused>) {
        *self
            .policy_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = refused;
    }

    /// The last refusal, while the bucket still offers what was refused.
    pub fn policy_refused(&self) -> Option<PolicyRefused> {
        self.policy_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The reply's outcome and a line for people; the coordinator reads `effects`.
/// A snapshot or prune pass's typed effects, and one line for people.
fn pass_result(r: PassReport) -> (Outcome, String, Effects) {
    let parts: Vec<String> = [("taken", &r.taken), ("destroyed", &r.destroyed)]
        .into_iter()
        .filter(|(_, items)| !items.is_empty())
        .map(|(verb, items)| counted(verb, items))
        .collect();
    let line = if parts.is_empty() {
        "nothing to take or destroy".to_string()
    } else {
        parts.join("; ")
    };
    let effects = Effects {
        taken: r.taken,
        destroyed: r.destroyed,
        errors: r.errors,
        floor_refused: r.refused,
        ..Effects::default()
    };
    summarize(effects, line)
}

fn summarize(effects: Effects, line: String) -> (Outcome, String, Effects) {
    let mut problems = effects.errors.clone();
    problems.extend(effects.floor_refused.iter().map(floor::describe));
    if problems.is_empty() {
        (Outcome::Done, line, effects)
    } else {
        let line = format!("{line}; errors: {}", problems.join("; "));
        (Outcome::Failed, line, effects)
    }
}

/// "3 destroyed: a@x, a@y, b@z"
fn counted(verb: &str, items: &[String]) -> String {
    format!("{} {verb}: {}", items.len(), items.join(", "))
}

async fn publish<T: serde::Serialize>(
    client: &async_nats::Client,
    subject: String,
    msg: &T,
) -> bool {
    if client.connection_state() != async_nats::connection::State::Connected {
        return false;
    }
    let Ok(body) = serde_json::to_vec(msg) else {
        return false;
    };
    match client.publish(subject, body.into()).await {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "publish failed");
            false
        }
    }
}

/// How long running jobs get to stop at shutdown before their final reports
/// are sent (or lost: the coordinator then times the attempt out).
const JOB_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the last publications may take on the way out.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Runs the NATS side until `shutdown`. Connection loss is normal: the
/// client reconnects, and on every (re)connect the agent says hello and
/// publishes a full inventory. On shutdown it takes no more commands, stops
/// the running jobs and publishes their last reports.
pub async fn run(
    agent: Arc<Agent>,
    mut job_updates: mpsc::UnboundedReceiver<JobUpdate>,
    shutdown: CancellationToken,
) {
    let (conn_tx, mut conn_rx) = watch::channel(false);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("zdr-agent {}", agent.config.node))
        // The bus lets this node's user read replies on its own inbox only.
        .custom_inbox_prefix(bus_auth::agent_inbox(&agent.config.node));
    match agent.config.nats_seed() {
        Ok(Some(seed)) => {
            info!(user = seed.public_key(), "connecting to NATS with an nkey");
            options = options.nkey(seed.secret().to_string());
        }
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "NATS credential unusable; running on the cached policy alone");
            return;
        }
    }
    let servers = match agent.config.nats_servers() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "NATS unusable; running on the cached policy alone");
            return;
        }
    };
    let connect = options
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |ev| {
            let tx = conn_tx.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => {
                        let _ = tx.send(true);
                    }
                    async_nats::Event::Disconnected => {
                        let _ = tx.send(false);
                    }
                    other => debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(servers);
    let connected = tokio::select! {
        c = connect => c,
        _ = shutdown.cancelled() => return,
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, url = %agent.config.nats_url, "NATS unusable; running on the cached policy alone");
            return;
        }
    };

    let commands = tokio::spawn(commands(agent.clone(), client.clone(), shutdown.clone()));
    let micro = tokio::spawn(crate::micro::run(
        agent.clone(),
        client.clone(),
        shutdown.clone(),
    ));
    // Apart from the loop below, whose heartbeats wait on zpool(8).
    let (c, subject, a, stop) = (
        client.clone(),
        agent.subjects().job,
        agent.clone(),
        shutdown.clone(),
    );
    let job_publisher = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                update = job_updates.recv() => match update {
                    // Lost while disconnected: the coordinator times the job out and retries.
                    Some(update) => { publish(&c, subject.clone(), &update).await; }
                    None => return,
                },
            }
        }
        a.replication.stop(JOB_STOP_GRACE).await;
        while let Ok(update) = job_updates.try_recv() {
            publish(&c, subject.clone(), &update).await;
        }
    });
    tokio::spawn(policy_watch(
        agent.clone(),
        client.clone(),
        shutdown.clone(),
    ));

    // Jittered within one heartbeat period, so a fleet that starts (or
    // reconnects) together does not send in one burst.
    let period = Duration::from_secs(agent.config.heartbeat_secs);
    let node = agent.config.node.clone();
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + jitter(&node, 0, period),
        period,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut publish_tick = tokio::time::interval(Duration::from_millis(500));
    let mut connects = 0;
    // When to say hello and publish the full inventory after a (re)connect.
    let mut announce: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            changed = conn_rx.changed() => {
                if changed.is_err() { return; }
                if *conn_rx.borrow_and_update() {
                    info!(url = %agent.config.nats_url, "connected to NATS");
                    connects += 1;
                    announce = Some(tokio::time::Instant::now() + jitter(&node, connects, period));
                } else {
                    warn!("NATS connection lost; snapshots and pruning go on under the cached policy");
                }
            }
            _ = tokio::time::sleep_until(announce.unwrap_or_else(tokio::time::Instant::now)), if announce.is_some() => {
                announce = None;
                agent.lifecycle.request_full_inventory();
                agent.hello(&client).await;
                agent.publish_inventory(&client).await;
            }
            // Nothing is published before the hello.
            _ = heartbeat.tick(), if announce.is_none() => agent.heartbeat(&client).await,
            _ = publish_tick.tick(), if announce.is_none() => {
                if agent.hello_due.swap(false, Ordering::SeqCst) {
                    agent.hello(&client).await;
                }
                agent.publish_inventory(&client).await;
                agent.publish_events(&client).await;
            }
        }
    }
    // A command being handled finishes; then the jobs stop and report.
    let _ = commands.await;
    let _ = micro.await;
    let _ = job_publisher.await;
    let last = async {
        agent.publish_inventory(&client).await;
        agent.publish_events(&client).await;
        // Flushing waits for a connection; without one there is nothing to send.
        if client.connection_state() == async_nats::connection::State::Connected {
            let _ = client.flush().await;
        }
    };
    if tokio::time::timeout(FLUSH_GRACE, last).await.is_err() {
        debug!("the last publications did not go out in time");
    }
}

/// A delay in `[0, max)` for this node's `n`-th use: spread over the fleet
/// (it hashes the node id), and the same for a node every run, so tests
/// can rely on it.
pub fn jitter(node: &str, n: u64, max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    if max_ms == 0 {
        return Duration::ZERO;
    }
    // FNV-1a of the node id, mixed with `n` by splitmix64.
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut z = h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Duration::from_millis(z % max_ms)
}

async fn commands(agent: Arc<Agent>, client: async_nats::Client, shutdown: CancellationToken) {
    let subject = AgentSubjects::for_node(&agent.config.node).cmd;
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "subscribing to commands failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    // Answers of long work (content hashes), sent when it ends.
    let mut later = tokio::task::JoinSet::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            Some(_) = later.join_next() => continue,
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let reply = msg.reply.clone();
        match agent.handle_command(&msg.subject, &msg.payload).await {
            Handled::Now(result) => answer(&client, reply, &result).await,
            Handled::Later(work) => {
                let client = client.clone();
                later.spawn(async move { answer(&client, reply, &work.await).await });
            }
        }
    }
}

async fn answer(
    client: &async_nats::Client,
    reply: Option<async_nats::Subject>,
    result: &CommandResult,
) {
    if let Some(reply) = reply {
        if let Ok(body) = serde_json::to_vec(result) {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

async fn policy_watch(agent: Arc<Agent>, client: async_nats::Client, shutdown: CancellationToken) {
    tokio::select! {
        _ = watch_policy(agent, client) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// The first pause before a failed policy watch is made again, and the longest.
const WATCH_RETRY_MIN: Duration = Duration::from_secs(1);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);
/// A watch that lived this long was healthy: the next failure starts the backoff over.
const WATCH_HEALTHY: Duration = Duration::from_secs(60);

/// The pause before the `failures`-th consecutive re-creation of the
/// watch: doubling from 1 s to at most 30 s, plus this node's jitter of up
/// to as much again, so a fleet reconnecting together (a cluster restart)
/// neither piles watch consumers up on the servers nor re-creates them in
/// one burst. Each watch is a server-side consumer that outlives a dropped
/// client by its inactivity threshold (30 s).
pub fn watch_retry(node: &str, failures: u32) -> Duration {
    let base = WATCH_RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(WATCH_RETRY_MAX);
    base + jitter(node, u64::from(failures), base)
}

/// Applying a policy is synchronous, so dropping this at any await is safe.
/// The crate's ordered consumer re-creates the watch itself across
/// reconnects; this loop only starts over when the watch ends or fails.
async fn watch_policy(agent: Arc<Agent>, client: async_nats::Client) {
    let js = jetstream::new(client);
    let node = agent.config.node.clone();
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            tokio::time::sleep(watch_retry(&node, failures)).await;
        }
        failures = failures.saturating_add(1);
        let store = match js.get_key_value(subject::POLICY_BUCKET).await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "policy bucket not reachable yet");
                continue;
            }
        };
        let mut watch = match store.watch_with_history(subject::POLICY_KEY).await {
            Ok(w) => w,
            Err(e) => {
                debug!(error = %e, "policy watch failed");
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) if e.operation == jetstream::kv::Operation::Put => {
                    agent.apply_policy(&e.value)
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "policy watch error");
                    break;
                }
            }
        }
        if started.elapsed() >= WATCH_HEALTHY {
            failures = 1;
        }
    }
}

#[cfg(test)]
mod jitter_tests {
    use super::*;

    #[test]
    fn jitter_is_bounded_seeded_and_spread() {
        let max = Duration::from_secs(5);
        let all: Vec<Duration> = (0..1000)
            .map(|i| jitter(&format!("n{i:04}"), 1, max))
            .collect();
        assert!(all.iter().all(|d| *d < max));
        // The same node and use: the same delay; another use: another delay.
        assert_eq!(jitter("n0001", 1, max), all[1]);
        assert_ne!(jitter("n0001", 2, max), all[1]);
        // 1,000 nodes fill each fifth of the window with 200 ± 60.
        for k in 0..5u64 {
            let lo = Duration::from_millis(k * 1000);
            let hi = Duration::from_millis((k + 1) * 1000);
            let n = all.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!((140..=260).contains(&n), "fifth {k}: {n}");
        }
        assert_eq!(jitter("n0001", 1, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn watch_retries_back_off_to_thirty_seconds_with_jitter() {
        let secs = |f| watch_retry("n0001", f).as_secs_f64();
        for (f, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (5, 16.0),
            (6, 30.0),
            (40, 30.0),
        ] {
            assert!(
                (base..2.0 * base).contains(&secs(f)),
                "failure {f}: {} s",
                secs(f)
            );
        }
        // 1,000 nodes at their sixth failure spread over 30 s, not one instant.
        let spread: std::collections::BTreeSet<u64> = (0..1000)
            .map(|i| watch_retry(&format!("n{i:04}"), 6).as_secs())
            .collect();
        assert!(spread.len() >= 25, "{spread:?}");
    }
}
