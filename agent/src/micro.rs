//! The agent's NATS micro service (`zdr-agent`, ADR-32), so that `nats
//! micro ls|info|stats` find every agent: discovery on `$SRV.*`, and one
//! endpoint, `zdr.v1.srv.agent.<node>.status`, answering [`Status`] from the
//! inventory cache (no ZFS call). Metadata: node, site, media, backend.
//! The bus lets an agent hear its own endpoints only
//! (`zdr-coordinator bus-auth`). It stops on the shutdown token.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zdr_common::subject;

use crate::node::Agent;
use crate::telemetry::DatasetSummary;

/// What `status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub node: String,
    pub site: String,
    pub media: String,
    pub version: String,
    pub backend: String,
    /// Unix seconds.
    pub started_at: i64,
    /// The signed policy it runs on; `None` before the first.
    pub policy_revision: Option<u64>,
    pub datasets: usize,
    /// Datasets in a class of the policy.
    pub protected: usize,
    pub snapshots: usize,
    /// Unix seconds of the newest snapshot on the node.
    pub newest_snapshot: Option<i64>,
    pub used_bytes: u64,
}

/// The node's identity and its datasets, summed.
pub struct Identity<'a> {
    pub node: &'a str,
    pub site: &'a str,
    pub media: &'a str,
    pub backend: &'a str,
    pub started_at: i64,
    pub policy_revision: Option<u64>,
}

/// Pure: the status from the identity and the cache's summaries.
pub fn status(id: &Identity, datasets: &[DatasetSummary]) -> Status {
    Status {
        node: id.node.to_string(),
        site: id.site.to_string(),
        media: id.media.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        backend: id.backend.to_string(),
        started_at: id.started_at,
        policy_revision: id.policy_revision,
        datasets: datasets.len(),
        protected: datasets.iter().filter(|d| d.class.is_some()).count(),
        snapshots: datasets.iter().map(|d| d.snapshots).sum(),
        newest_snapshot: datasets.iter().filter_map(|d| d.newest_creation).max(),
        used_bytes: datasets.iter().map(|d| d.used).sum(),
    }
}

fn status_of(agent: &Agent) -> Status {
    let c = &agent.config;
    let id = Identity {
        node: &c.node,
        site: &c.site,
        media: &c.media,
        backend: agent.lifecycle.backend.kind(),
        started_at: agent.started_at,
        policy_revision: agent.lifecycle.policy().map(|p| p.bundle.revision),
    };
    status(&id, &agent.lifecycle.dataset_summaries())
}

/// Registers the service and answers until `shutdown`. A bus that refuses
/// the registration leaves the agent working without it.
pub async fn run(agent: Arc<Agent>, client: async_nats::Client, shutdown: CancellationToken) {
    let c = &agent.config;
    let metadata = HashMap::from([
        ("node".to_string(), c.node.clone()),
        ("site".to_string(), c.site.clone()),
        ("media".to_string(), c.media.clone()),
        (
            "backend".to_string(),
            agent.lifecycle.backend.kind().to_string(),
        ),
    ]);
    let started = client
        .service_builder()
        .description("zdr agent: snapshots, pruning and replication on one ZFS node")
        .metadata(metadata)
        .start(subject::AGENT_SERVICE, env!("CARGO_PKG_VERSION"))
        .await;
    let service = match started {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "could not register the NATS micro service");
            return;
        }
    };
    let group = service.group(subject::agent_service_group(&c.node));
    let mut endpoint = match group.endpoint("status").await {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "could not add the NATS micro endpoint status");
            let _ = service.stop().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            request = endpoint.next() => {
                let Some(request) = request else { break };
                let body = serde_json::to_vec(&status_of(&agent)).unwrap_or_default();
                if let Err(e) = request.respond(Ok(body.into())).await {
                    debug!(error = %e, "status answer not sent");
                }
            }
        }
    }
    let _ = endpoint.stop().await;
    let _ = service.stop().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(class: Option<&str>, snapshots: usize, newest: Option<i64>) -> DatasetSummary {
        DatasetSummary {
            dataset: "tank/x".into(),
            class: class.map(Into::into),
            snapshots,
            newest_creation: newest,
            used: 100,
        }
    }

    #[test]
    fn status_sums_the_cache() {
        let id = Identity {
            node: "node-a1",
            site: "site-a",
            media: "ssd",
            backend: "sim",
            started_at: 5,
            policy_revision: Some(3),
        };
        let s = status(
            &id,
            &[
                summary(Some("gold"), 10, Some(50)),
                summary(None, 2, Some(70)),
                summary(Some("gold"), 0, None),
            ],
        );
        assert_eq!(
            (
                s.datasets,
                s.protected,
                s.snapshots,
                s.newest_snapshot,
                s.used_bytes
            ),
            (3, 2, 12, Some(70), 300)
        );
        assert_eq!((s.node.as_str(), s.policy_revision), ("node-a1", Some(3)));
        let empty = status(&id, &[]);
        assert_eq!((empty.datasets, empty.newest_snapshot), (0, None));
    }
}
