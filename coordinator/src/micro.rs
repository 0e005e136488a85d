//! The coordinator's NATS micro service (`zdr-coordinator`, ADR-32), so
//! that `nats micro ls|info|stats` find every instance, leader and standbys:
//! discovery on `$SRV.*`, and one endpoint, `zdr.v1.srv.coordinator.health`
//! (one instance answers each request, in a queue group), answering
//! [`Health`]: what `/readyz` says, with the instance and its fleet's size.
//! Metadata: the instance name. It stops on the shutdown token.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zdr_common::subject;

use crate::state::{now, State};

/// What `health` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub instance: String,
    pub version: String,
    /// Leading, on a good policy, connected: what `/readyz` calls ready.
    pub ready: bool,
    pub leader: bool,
    pub epoch: u64,
    pub policy_revision: Option<u64>,
    /// Why the policy or tasks file is not in force.
    pub policy_problem: Option<String>,
    pub nodes: usize,
    pub nodes_online: usize,
}

fn health(st: &State) -> Health {
    let leader = st.is_leader();
    let policy_revision = st.policy().as_ref().map(|p| p.revision);
    let policy_problem = st.policy_problem();
    let (nodes, nodes_online) = {
        let fleet = st.fleet();
        let t = now();
        let after = st.config().offline_after.as_secs() as i64;
        let online = fleet
            .nodes
            .keys()
            .filter(|n| fleet.online(n, t, after))
            .count();
        (fleet.nodes.len(), online)
    };
    Health {
        instance: st.config().instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ready: st.nats_connected()
            && leader
            && policy_revision.is_some()
            && policy_problem.is_none(),
        leader,
        epoch: st.epoch(),
        policy_revision,
        policy_problem,
        nodes,
        nodes_online,
    }
}

/// Registers the service and answers until `shutdown`. A bus that refuses
/// the registration leaves the coordinator working without it.
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let client = state.client().clone();
    let metadata = HashMap::from([("instance".to_string(), state.config().instance.clone())]);
    let started = client
        .service_builder()
        .description("zdr coordinator: fleet state, policy, jobs and the HTTP API")
        .metadata(metadata)
        .start(subject::COORDINATOR_SERVICE, env!("CARGO_PKG_VERSION"))
        .await;
    let service = match started {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "could not register the NATS micro service");
            return;
        }
    };
    let group = service.group(subject::COORDINATOR_SERVICE_GROUP);
    let mut endpoint = match group.endpoint("health").await {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "could not add the NATS micro endpoint health");
            let _ = service.stop().await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            request = endpoint.next() => {
                let Some(request) = request else { break };
                let body = serde_json::to_vec(&health(&state)).unwrap_or_default();
                if let Err(e) = request.respond(Ok(body.into())).await {
                    debug!(error = %e, "health answer not sent");
                }
            }
        }
    }
    let _ = endpoint.stop().await;
    let _ = service.stop().await;
}
