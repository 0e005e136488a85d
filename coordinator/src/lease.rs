//! Leadership through a JetStream KV lease. The lease key's revision at
//! acquisition is the epoch (fencing token) stamped on every command; stream
//! sequences only grow, so a later leader always has a higher epoch. No
//! consensus of our own: JetStream's compare-and-set does the work.
//!
//! Renewal rules (`after_renewal`, pure):
//! - the key expires `ttl` after its last write (the bucket's `max_age`),
//!   so the lease is surely ours until `ttl` after the *send* time of the
//!   last renewal the server confirmed; the leader stops acting a margin
//!   (`ttl / 5`) before that;
//! - a renewal that got no answer in time (an overloaded server or
//!   connection: issue 13's run D lost the lease to an alert storm) is
//!   tried again while that holds, each attempt bounded by what is left;
//! - a refused compare-and-set is final, unless the key still names this
//!   holder and epoch: then an earlier update landed and only its ack was
//!   lost, and the next attempt uses the key's revision.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

const KEY: &str = "leader";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    pub epoch: u64,
    pub since: i64,
}

pub struct Lease {
    store: kv::Store,
    holder: String,
    revision: u64,
    pub epoch: u64,
    /// When the last write the server confirmed was sent.
    confirmed: Instant,
}

/// What one renewal attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Confirmed,
    /// No answer in time, a transport error, or our own earlier update
    /// found in place of the ack: the lease may still be ours.
    Unanswered,
    /// The key is gone or names another holder or epoch.
    Taken,
}

/// What the renewal loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Renew again after this long, each attempt given at most `within`.
    RenewIn { after: Duration, within: Duration },
    /// Stop acting as leader now.
    Lost,
}

/// A renewal that got no answer is tried again after this long.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The rules in the module doc. `since` is the time since the last
/// confirmed write was sent.
pub fn after_renewal(r: Renewal, since: Duration, ttl: Duration) -> Next {
    let every = ttl / 3;
    let safe = ttl - ttl / 5;
    match r {
        Renewal::Taken => Next::Lost,
        Renewal::Confirmed => Next::RenewIn {
            after: every,
            within: every.min(safe.saturating_sub(every)),
        },
        Renewal::Unanswered => {
            let left = safe.saturating_sub(since + RETRY_PAUSE);
            if left.is_zero() {
                Next::Lost
            } else {
                Next::RenewIn {
                    after: RETRY_PAUSE,
                    within: left.min(every),
                }
            }
        }
    }
}

impl Lease {
    /// One attempt; `Ok(None)` when another coordinator holds the lease.
    pub async fn try_acquire(
        store: &kv::Store,
        holder: &str,
        now: i64,
    ) -> Result<Option<Lease>, async_nats::Error> {
        let placeholder = Bytes::from_static(b"{}");
        let sent = Instant::now();
        let revision = match store.create(KEY, placeholder).await {
            Ok(rev) => rev,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record = LeaseRecord {
            holder: holder.to_string(),
            epoch: revision,
            since: now,
        };
        let revision = store
            .update(KEY, serde_json::to_vec(&record)?.into(), revision)
            .await?;
        Ok(Some(Lease {
            store: store.clone(),
            holder: holder.to_string(),
            revision,
            epoch: record.epoch,
            confirmed: sent,
        }))
    }

    /// Waits until this coordinator holds the lease; NATS errors only delay it.
    pub async fn acquire(store: &kv::Store, holder: &str, retry: Duration) -> Lease {
        loop {
            match Self::try_acquire(store, holder, chrono::Utc::now().timestamp()).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "lease attempt failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Time since the last confirmed write was sent.
    pub fn since_confirmed(&self) -> Duration {
        self.confirmed.elapsed()
    }

    /// One renewal attempt, given at most `within`.
    pub async fn renew(&mut self, within: Duration) -> Renewal {
        let record = LeaseRecord {
            holder: self.holder.clone(),
            epoch: self.epoch,
            since: chrono::Utc::now().timestamp(),
        };
        let Ok(raw) = serde_json::to_vec(&record) else {
            return Renewal::Unanswered;
        };
        let sent = Instant::now();
        let update = self.store.update(KEY, raw.into(), self.revision);
        match tokio::time::timeout(within, update).await {
            Ok(Ok(revision)) => {
                self.revision = revision;
                self.confirmed = sent;
                Renewal::Confirmed
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match tokio::time::timeout(within, self.store.entry(KEY)).await {
                    Ok(Ok(Some(entry))) => {
                        let ours = serde_json::from_slice::<LeaseRecord>(&entry.value)
                            .is_ok_and(|r| r.holder == self.holder && r.epoch == self.epoch);
                        if ours && entry.operation == kv::Operation::Put {
                            // When it landed is unknown: `confirmed` stays.
                            self.revision = entry.revision;
                            Renewal::Unanswered
                        } else {
                            Renewal::Taken
                        }
                    }
                    Ok(Ok(None)) => Renewal::Taken,
                    _ => Renewal::Unanswered,
                }
            }
            _ => Renewal::Unanswered,
        }
    }

    /// Gives the lease up so a standby can take over at once.
    pub async fn release(self) {
        let _ = self.store.purge(KEY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn a_confirmed_renewal_waits_a_third_of_the_ttl() {
        let n = after_renewal(Renewal::Confirmed, Duration::ZERO, TTL);
        let Next::RenewIn { after, within } = n else {
            panic!("{n:?}")
        };
        assert_eq!(after, TTL / 3);
        // An attempt's wait never reaches past the safe end of the lease.
        assert!(after + within <= TTL - TTL / 5, "{n:?}");
    }

    #[test]
    fn an_unanswered_renewal_is_retried_until_the_safe_end_only() {
        let mut since = TTL / 3;
        let mut tries = 0;
        while let Next::RenewIn { after, within } = after_renewal(Renewal::Unanswered, since, TTL) {
            assert!(since + after + within <= TTL - TTL / 5, "at {since:?}");
            since += after + within;
            tries += 1;
        }
        assert!(tries >= 1, "one retry at least");
        assert!(since <= TTL - TTL / 5);
        // Past the safe end nothing is tried.
        assert_eq!(
            after_renewal(Renewal::Unanswered, TTL - TTL / 5, TTL),
            Next::Lost
        );
    }

    #[test]
    fn a_taken_lease_is_lost_at_once() {
        assert_eq!(
            after_renewal(Renewal::Taken, Duration::ZERO, TTL),
            Next::Lost
        );
    }
}
