//! Leadership through a JetStream KV lease. The lease key's revision at
//! acquisition is the epoch (fencing token) stamped on every command; stream
//! sequences only grow, so a later leader always has a higher epoch. No
//! consensus of our own: JetStream's compare-and-set does the work.

use std::time::Duration;

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
}

impl Lease {
    /// One attempt; `Ok(None)` when another coordinator holds the lease.
    pub async fn try_acquire(
        store: &kv::Store,
        holder: &str,
        now: i64,
    ) -> Result<Option<Lease>, async_nats::Error> {
        let placeholder = Bytes::from_static(b"{}");
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

    /// Extends the lease; an error means leadership is lost and the caller must stop acting.
    pub async fn renew(&mut self) -> Result<(), async_nats::Error> {
        let record = LeaseRecord {
            holder: self.holder.clone(),
            epoch: self.epoch,
            since: chrono::Utc::now().timestamp(),
        };
        self.revision = self
            .store
            .update(KEY, serde_json::to_vec(&record)?.into(), self.revision)
            .await?;
        Ok(())
    }

    /// Gives the lease up so a standby can take over at once.
    pub async fn release(self) {
        let _ = self.store.purge(KEY).await;
    }
}
