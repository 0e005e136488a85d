//! JetStream buckets and streams the coordinator's durable state lives in.
//!
//! Every bucket and stream has the same number of replicas (`--nats-replicas`):
//! 1 on a single server, 3 on a three-server cluster, so that losing one
//! server loses nothing. A replica count the servers cannot place is a
//! start-up error that says so (decided on JetStream's error codes).

pub mod parts;

use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, kv, stream, ErrorCode};
use zdr_common::subject;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("JetStream {what}: {source}")]
    JetStream {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error(
        "JetStream {what}: the servers cannot keep {replicas} replicas ({source}); \
         --nats-replicas (ZDR_NATS_REPLICAS) must not exceed the number of JetStream servers \
         in the cluster: 1 for a single server, 3 for a three-server cluster"
    )]
    Replicas {
        what: String,
        replicas: usize,
        #[source]
        source: async_nats::Error,
    },
}

/// JetStream's answers to a replica count it cannot place.
const PLACEMENT_CODES: [ErrorCode; 3] = [
    ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
    ErrorCode::INSUFFICIENT_RESOURCES,
    ErrorCode::CLUSTER_NO_PEERS,
];

/// The JetStream error code somewhere in `e`'s chain of sources.
fn error_code(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(s) = e.downcast_ref::<CreateStreamError>() {
            if let CreateStreamErrorKind::JetStream(j) = s.kind() {
                return Some(j.error_code());
            }
        }
        next = e.source();
    }
    None
}

fn js_err(what: impl Into<String>, replicas: usize) -> impl FnOnce(async_nats::Error) -> BusError {
    let what = what.into();
    move |source| {
        let placement = replicas > 1
            && error_code(source.as_ref()).is_some_and(|c| PLACEMENT_CODES.contains(&c));
        if placement {
            BusError::Replicas {
                what,
                replicas,
                source,
            }
        } else {
            BusError::JetStream { what, source }
        }
    }
}

pub const FLEET_BUCKET: &str = "zdr_fleet";
pub const INVENTORY_BUCKET: &str = "zdr_inventory";
pub const LEASE_BUCKET: &str = "zdr_lease";
pub const PAIRINGS_BUCKET: &str = "zdr_pairings";
pub const JOBS_BUCKET: &str = "zdr_jobs";
pub const ALERTS_BUCKET: &str = "zdr_alerts";
pub const EVENTS_STREAM: &str = "ZDR_EVENTS";
pub const AUDIT_STREAM: &str = "ZDR_AUDIT";

/// Handles on every bucket, created on first start.
#[derive(Clone)]
pub struct Stores {
    pub fleet: kv::Store,
    pub inventory: kv::Store,
    pub policy: kv::Store,
    pub lease: kv::Store,
    pub pairings: kv::Store,
    pub jobs: kv::Store,
    pub alerts: kv::Store,
}

async fn bucket(
    js: &jetstream::Context,
    replicas: usize,
    config: kv::Config,
) -> Result<kv::Store, BusError> {
    let name = config.bucket.clone();
    js.create_or_update_key_value(kv::Config {
        num_replicas: replicas,
        ..config
    })
    .await
    .map_err(|e| js_err(format!("bucket {name}"), replicas)(e.into()))
}

/// The lease bucket (made by `open`) on another connection's context.
pub async fn lease_store(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, BusError> {
    js.get_key_value(LEASE_BUCKET)
        .await
        .map_err(|e| js_err(format!("bucket {LEASE_BUCKET}"), replicas)(e.into()))
}

/// Creates (or opens) every bucket and the event stream, each with
/// `replicas` replicas (an existing one is scaled to that).
pub async fn open(
    js: &jetstream::Context,
    lease_ttl: Duration,
    replicas: usize,
) -> Result<Stores, BusError> {
    let fleet = bucket(
        js,
        replicas,
        kv::Config {
            bucket: FLEET_BUCKET.into(),
            description: "zdr node records".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let inventory = bucket(
        js,
        replicas,
        kv::Config {
            bucket: INVENTORY_BUCKET.into(),
            description: "zdr snapshot inventory, one key per node and dataset".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let policy = bucket(
        js,
        replicas,
        kv::Config {
            bucket: subject::POLICY_BUCKET.into(),
            description: "the signed zdr policy".into(),
            history: 5,
            ..Default::default()
        },
    )
    .await?;
    let lease = bucket(
        js,
        replicas,
        kv::Config {
            bucket: LEASE_BUCKET.into(),
            description: "coordinator leadership lease".into(),
            history: 1,
            max_age: lease_ttl,
            ..Default::default()
        },
    )
    .await?;
    let pairings = bucket(
        js,
        replicas,
        kv::Config {
            bucket: PAIRINGS_BUCKET.into(),
            description: "zdr replication pairings, kept stable once made".into(),
            history: 5,
            ..Default::default()
        },
    )
    .await?;
    let jobs = bucket(
        js,
        replicas,
        kv::Config {
            bucket: JOBS_BUCKET.into(),
            description: "zdr replication jobs, one key per pairing: state, progress, history"
                .into(),
            history: 5,
            ..Default::default()
        },
    )
    .await?;
    let alerts = bucket(
        js,
        replicas,
        kv::Config {
            bucket: ALERTS_BUCKET.into(),
            description: "zdr alerts active now, so that a new leader neither fires them again nor forgets to resolve them".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    js.create_or_update_stream(stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: vec!["zdr.v1.agent.*.event".into()],
        max_age: Duration::from_secs(30 * 86_400),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(format!("stream {EVENTS_STREAM}"), replicas)(e.into()))?;
    // A year and a month: long enough to answer "who deleted this, and why".
    js.create_or_update_stream(stream::Config {
        name: AUDIT_STREAM.into(),
        description: Some("zdr coordinator audit: destructive steps, before and after".into()),
        subjects: vec![subject::COORDINATOR_AUDIT.into()],
        max_age: Duration::from_secs(400 * 86_400),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| js_err(format!("stream {AUDIT_STREAM}"), replicas)(e.into()))?;
    Ok(Stores {
        fleet,
        inventory,
        policy,
        lease,
        pairings,
        jobs,
        alerts,
    })
}

/// A key as the stream leader has it.
#[derive(Debug, Clone)]
pub struct LeaderEntry {
    pub value: bytes::Bytes,
    /// The KV revision (stream sequence).
    pub revision: u64,
    /// A delete or purge marker: the value is empty.
    pub deleted: bool,
}

/// Reads `key` from the bucket's stream leader. `kv::Store::get` and
/// `entry` use JetStream's direct get on buckets (async-nats creates
/// them with `allow_direct`), which any replica answers, a follower
/// possibly behind; a read that a decision rests on (a new leader's job
/// records, the policy revision it must exceed) goes through the
/// stream's message-get API instead, which only the leader answers.
pub async fn leader_entry(
    store: &kv::Store,
    key: &str,
) -> Result<Option<LeaderEntry>, async_nats::Error> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => {
            let op = m
                .headers
                .get("KV-Operation")
                .map(|v| v.as_str().to_string());
            Ok(Some(LeaderEntry {
                deleted: matches!(op.as_deref(), Some("DEL" | "PURGE")),
                value: m.payload,
                revision: m.sequence,
            }))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Hands `each` every live key of `store` with its newest value, in one
/// pass of an ordered consumer (last value per subject), in stream order;
/// deleted and purged keys are left out. Returns how many it handed over.
///
/// `keys()` and then a get per key costs a round trip per key: 100,000 of
/// them for the inventories of a 1,000 × 100 fleet, all before a new leader
/// can serve (`ops/bench-kv-load.sh` compares the two). Values go to `each`
/// one at a time, so that the caller parses each and never holds the raw
/// bucket. The consumer is served by the stream's leader; a decision that
/// needs the leader's newest record even so uses [`leader_entry`].
pub async fn load_all(
    client: &async_nats::Client,
    store: &kv::Store,
    mut each: impl FnMut(&str, &[u8]),
) -> Result<usize, async_nats::Error> {
    use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
    use futures::StreamExt;
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some("zdr load_all".into()),
            filter_subject: format!("{}>", store.prefix),
            replay_policy: ReplayPolicy::Instant,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let mut handed = 0;
    if consumer.cached_info().num_pending == 0 {
        return Ok(handed);
    }
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let pending = m.info()?.pending;
        let op = m.headers.as_ref().and_then(|h| h.get("KV-Operation"));
        let deleted = op.is_some_and(|v| matches!(v.as_str(), "DEL" | "PURGE"));
        if !deleted {
            if let Some(key) = m.subject.strip_prefix(store.prefix.as_str()) {
                each(key, &m.payload);
                handed += 1;
            }
        }
        if pending == 0 {
            break;
        }
    }
    Ok(handed)
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; dataset names may hold spaces and ':'.
/// Hex keeps keys readable from the NATS CLI's `kv ls` sort order per node.
pub fn inventory_key(node: &str, dataset: &str) -> String {
    let mut key = String::with_capacity(node.len() + 1 + dataset.len() * 2);
    key.push_str(node);
    key.push('.');
    for b in dataset.as_bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

pub fn pairing_key(task: &str, node: &str, dataset: &str) -> String {
    inventory_key(&format!("{node}.{task}"), dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_keys_are_kv_safe() {
        let k = inventory_key("n1", "tank/a b:c");
        assert!(k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c)));
        assert_ne!(k, inventory_key("n1", "tank/a_b:c"));
        assert!(k.starts_with("n1."));
    }
}
