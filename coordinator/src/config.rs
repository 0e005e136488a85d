//! The coordinator's run-time settings, as `main` builds them from flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// The NATS servers: one, or a cluster's (the client fails over among them).
    pub nats_servers: Vec<String>,
    /// Replicas of every bucket and stream: at most the JetStream servers.
    pub nats_replicas: usize,
    /// The coordinator's own NATS identity; `None` connects anonymously.
    pub nats_seed: Option<zdr_common::bus_auth::NkeySeed>,
    pub policy_path: PathBuf,
    /// Replication tasks; without it no replication is planned.
    pub tasks_path: Option<PathBuf>,
    pub http_addr: SocketAddr,
    /// Mutating HTTP requests need this bearer token; without one they are
    /// all refused (`crate::api_auth`).
    pub api_token: Option<crate::api_auth::ApiToken>,
    pub key_id: String,
    pub signing_key: ed25519_dalek::SigningKey,
    /// This instance's name in the lease.
    pub instance: String,
    pub lease_ttl: Duration,
    /// A node is offline after this long without a heartbeat.
    pub offline_after: Duration,
    pub command_timeout: Duration,
    /// How long a drill waits for a content hash (it reads every byte).
    pub drill_hash_timeout: Duration,
    /// Where alerts are sent (`--alerts`); none: alerts are only logged and listed.
    pub receivers: Vec<zdr_schemas::receivers::Receiver>,
    /// A cleared alert resolves after this long without firing again.
    pub alert_hold: Duration,
    /// Per-copy series on `/metrics` while the fleet has at most this many
    /// copies; above it, only the totals per node and class.
    pub copy_metrics_max: usize,
}
