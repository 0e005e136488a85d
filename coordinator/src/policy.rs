//! Loading, signing and publishing the policy. The signed envelope sits in the
//! `zdr_policy` KV bucket, where agents watch it; an agent that starts while the
//! coordinator is down still finds it there.

use std::path::Path;

use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};
use zdr_common::envelope::{self, Sealer, Verifier};
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
            buckets: Vec::new(),
        });
    };
    zdr_schemas::load_tasks(path, policy).map_err(|e| PolicyError::Spec(e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the bucket holds, as far as this coordinator can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Empty,
    /// Signed with our own key, expired or not: our own bucket, our own
    /// signature, so its age does not make it a stranger.
    Ours {
        bundle: PolicyBundle,
        exp: i64,
        epoch: u64,
    },
    /// Not verifiable with our key (signed with a key we no longer hold, or
    /// damaged). Only its revision counts, as a floor to exceed.
    Foreign {
        floor: u64,
    },
}

/// Whether to publish, and under which revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The bucket holds this policy, fresh enough and signed under this epoch.
    Keep(u64),
    Sign(u64),
}

/// The revision to publish `digest` under. Revisions never go backwards:
/// agents refuse a lower one, so a coordinator that cannot verify the
/// stored policy (a new key) still counts up from its revision.
pub fn next_revision(stored: &Stored, digest: &str, epoch: u64, now: i64) -> Next {
    match stored {
        Stored::Empty => Next::Sign(1),
        Stored::Ours {
            bundle,
            exp,
            epoch: signed_epoch,
        } if bundle.source_digest == digest => {
            // A new leader signs again: agents that saw its epoch on a
            // command refuse anything signed under an older one.
            if exp - now > RESIGN_BEFORE_SECS && *signed_epoch >= epoch {
                Next::Keep(bundle.revision)
            } else {
                Next::Sign(bundle.revision)
            }
        }
        Stored::Ours { bundle, .. } => Next::Sign(bundle.revision.saturating_add(1)),
        Stored::Foreign { floor } => Next::Sign(floor.saturating_add(1)),
    }
}

/// Reads an entry that our key does not verify: the revision its payload
/// claims, else the entry's KV revision (never below the number of puts,
/// each of which raised the policy revision by one at most).
fn foreign_floor(value: &[u8], kv_revision: u64) -> u64 {
    #[derive(serde::Deserialize)]
    struct Claimed {
        revision: u64,
    }
    envelope::unverified_payload(value)
        .and_then(|p| serde_json::from_slice::<Claimed>(p).ok())
        .map(|c| c.revision)
        .unwrap_or(kv_revision)
}

/// Classifies a raw bucket entry (pure, for tests).
pub fn classify(verifier: &Verifier, value: &[u8], kv_revision: u64) -> Stored {
    let ours = verifier
        .open_cached(subject::POLICY, value)
        .ok()
        .and_then(|o| {
            let bundle: PolicyBundle = serde_json::from_slice(o.payload).ok()?;
            Some(Stored::Ours {
                bundle,
                exp: o.header.exp,
                epoch: o.header.epoch,
            })
        });
    ours.unwrap_or_else(|| Stored::Foreign {
        floor: foreign_floor(value, kv_revision),
    })
}

async fn stored(store: &kv::Store, sealer: &Sealer) -> Result<Stored, PolicyError> {
    // From the stream leader: the revision to exceed must not be a stale one.
    let entry = crate::bus::leader_entry(store, subject::POLICY_KEY)
        .await
        .map_err(PolicyError::Bus)?;
    Ok(match entry {
        Some(e) if !e.deleted => {
            let mut verifier = Verifier::new();
            verifier.trust(sealer.kid(), sealer.verifying_key());
            classify(&verifier, &e.value, e.revision)
        }
        // A deleted or purged key still leaves its KV revision as a floor.
        Some(e) => Stored::Foreign { floor: e.revision },
        None => Stored::Empty,
    })
}

/// The policy in the bucket, signed with our own key: what a new leader
/// keeps when its own policy file has errors.
pub async fn last_signed(store: &kv::Store, sealer: &Sealer) -> Option<PolicyBundle> {
    match stored(store, sealer).await {
        Ok(Stored::Ours { bundle, .. }) => Some(bundle),
        _ => None,
    }
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
    let existing = stored(store, sealer).await?;
    let revision = match next_revision(&existing, &loaded.digest, epoch, now) {
        Next::Keep(r) => return Ok(r),
        Next::Sign(r) => r,
    };
    if let Stored::Foreign { floor } = existing {
        tracing::warn!(
            floor,
            revision,
            key = sealer.kid(),
            "the stored policy is not signed with this coordinator's key (a new key?); \
             publishing above its revision"
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn bundle(revision: u64, digest: &str) -> PolicyBundle {
        PolicyBundle {
            revision,
            issued_at: NOW,
            source_digest: digest.into(),
            policy: serde_json::from_value(serde_json::json!({
                "version": 1, "sites": {}, "nodes": {}, "classes": {}, "datasets": []
            }))
            .unwrap(),
        }
    }

    fn sealed(sealer: &Sealer, b: &PolicyBundle, iat: i64) -> Vec<u8> {
        let payload = serde_json::to_vec(b).unwrap();
        sealer.seal(subject::POLICY, "p", iat, POLICY_TTL_SECS, 1, &payload)
    }

    fn ours(sealer: &Sealer) -> Verifier {
        let mut v = Verifier::new();
        v.trust(sealer.kid(), sealer.verifying_key());
        v
    }

    #[test]
    fn the_same_policy_is_kept_until_it_needs_signing_again() {
        let stored = Stored::Ours {
            bundle: bundle(4, "d"),
            exp: NOW + POLICY_TTL_SECS,
            epoch: 2,
        };
        assert_eq!(next_revision(&stored, "d", 2, NOW), Next::Keep(4));
        // A new leader, or little validity left: signed again, same revision.
        assert_eq!(next_revision(&stored, "d", 3, NOW), Next::Sign(4));
        let late = NOW + POLICY_TTL_SECS - RESIGN_BEFORE_SECS;
        assert_eq!(next_revision(&stored, "d", 2, late), Next::Sign(4));
        assert_eq!(next_revision(&stored, "edited", 2, NOW), Next::Sign(5));
        assert_eq!(next_revision(&Stored::Empty, "d", 1, NOW), Next::Sign(1));
    }

    #[test]
    fn an_expired_policy_of_ours_keeps_its_revision() {
        // The coordinator was down for more than the policy's lifetime.
        let sealer = Sealer::new("k1", zdr_common::envelope::generate_key());
        let raw = sealed(&sealer, &bundle(7, "d"), NOW - POLICY_TTL_SECS - 86_400);
        let stored = classify(&ours(&sealer), &raw, 40);
        assert!(matches!(&stored, Stored::Ours { bundle, .. } if bundle.revision == 7));
        assert_eq!(next_revision(&stored, "d", 1, NOW), Next::Sign(7));
        assert_eq!(next_revision(&stored, "edited", 1, NOW), Next::Sign(8));
    }

    #[test]
    fn a_policy_signed_with_another_key_is_a_floor_to_exceed() {
        let old = Sealer::new("k1", zdr_common::envelope::generate_key());
        let new = Sealer::new("k2", zdr_common::envelope::generate_key());
        let raw = sealed(&old, &bundle(3, "d"), NOW);
        let stored = classify(&ours(&new), &raw, 40);
        assert_eq!(stored, Stored::Foreign { floor: 3 });
        // Even for the same file: the content cannot be vouched for.
        assert_eq!(next_revision(&stored, "d", 1, NOW), Next::Sign(4));
        // Unreadable: the KV revision, which no policy revision exceeds.
        let stored = classify(&ours(&new), b"not an envelope", 40);
        assert_eq!(stored, Stored::Foreign { floor: 40 });
        assert_eq!(next_revision(&stored, "d", 1, NOW), Next::Sign(41));
        let max = Stored::Foreign { floor: u64::MAX };
        assert_eq!(next_revision(&max, "d", 1, NOW), Next::Sign(u64::MAX));
    }
}
