//! Loading, signing and publishing the policy. The signed envelope sits in the
//! `zdr_policy` KV bucket, where agents watch it; an agent that starts while the
//! coordinator is down still finds it there.

use std::path::Path;

use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};
use zdr_common::envelope::{Sealer, Verifier};
use zdr_common::policy::Policy;
use zdr_common::subject;
use zdr_common::wire::PolicyBundle;

/// A policy envelope lives this long; the coordinator re-signs it well before.
pub const POLICY_TTL_SECS: i64 = 7 * 86_400;
/// Re-sign when less than this is left.
pub const RESIGN_BEFORE_SECS: i64 = 6 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Spec(String),
    #[error("policy bucket: {0}")]
    Bus(#[from] async_nats::Error),
}

pub struct Loaded {
    pub policy: Policy,
    pub digest: String,
}

pub fn load(path: &Path) -> Result<Loaded, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let policy = zdr_schemas::parse_policy(&path.display().to_string(), &text)
        .map_err(|e| PolicyError::Spec(e.to_string()))?;
    Ok(Loaded {
        policy,
        digest: hex(&Sha256::digest(text.as_bytes())),
    })
}

/// The replication tasks, checked against the policy; none without a file.
/// The tasks file; without one, no tasks and no link budgets.
pub fn load_tasks(
    path: Option<&Path>,
    policy: &Policy,
) -> Result<zdr_schemas::tasks::Tasks, PolicyError> {
    let Some(path) = path else {
        return Ok(zdr_schemas::tasks::Tasks {
            version: 1,
            tasks: Vec::new(),
            links: Vec::new(),
        });
    };
    zdr_schemas::load_tasks(path, policy).map_err(|e| PolicyError::Spec(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is in the bucket now, verified with our own key: the bundle, its
/// expiry and the epoch it was signed under.
async fn current(
    store: &kv::Store,
    verifier: &Verifier,
    now: i64,
) -> Option<(PolicyBundle, i64, u64)> {
    let raw = store.get(subject::POLICY_KEY).await.ok()??;
    let opened = verifier.open(subject::POLICY, &raw, now).ok()?;
    let bundle: PolicyBundle = serde_json::from_slice(opened.payload).ok()?;
    Some((bundle, opened.header.exp, opened.header.epoch))
}

/// The policy in the bucket, verified with our own key: what a new leader
/// keeps when its own policy file has errors.
pub async fn last_signed(store: &kv::Store, sealer: &Sealer, now: i64) -> Option<PolicyBundle> {
    let mut verifier = Verifier::new();
    verifier.trust(sealer.kid(), sealer.verifying_key());
    current(store, &verifier, now)
        .await
        .map(|(bundle, _, _)| bundle)
}

/// Publishes `loaded` unless the bucket already holds the same policy with
/// plenty of validity left. Returns the revision in force.
pub async fn publish(
    store: &kv::Store,
    sealer: &Sealer,
    epoch: u64,
    loaded: &Loaded,
    now: i64,
) -> Result<u64, PolicyError> {
    let mut verifier = Verifier::new();
    verifier.trust(sealer.kid(), sealer.verifying_key());
    let existing = current(store, &verifier, now).await;
    let revision = match &existing {
        Some((b, exp, signed_epoch)) if b.source_digest == loaded.digest => {
            // A new leader signs again: agents that saw its epoch on a
            // command refuse anything signed under an older one.
            if exp - now > RESIGN_BEFORE_SECS && *signed_epoch >= epoch {
                return Ok(b.revision);
            }
            b.revision
        }
        Some((b, _, _)) => b.revision + 1,
        None => 1,
    };
    let bundle = PolicyBundle {
        revision,
        issued_at: now,
        source_digest: loaded.digest.clone(),
        policy: loaded.policy.clone(),
    };
    let payload = serde_json::to_vec(&bundle).map_err(|e| PolicyError::Bus(e.into()))?;
    let id = format!("policy-{revision}-{now}");
    let env = sealer.seal(subject::POLICY, &id, now, POLICY_TTL_SECS, epoch, &payload);
    store
        .put(subject::POLICY_KEY, env.into())
        .await
        .map_err(|e| PolicyError::Bus(e.into()))?;
    Ok(revision)
}
