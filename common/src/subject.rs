//! The NATS subject scheme. Every subject starts with `zdr.v1.` so that a wire
//! change can run beside the old one. Node ids are single subject tokens.
//!
//! | subject                           | direction          | payload                 |
//! |-----------------------------------|--------------------|-------------------------|
//! | `zdr.v1.agent.<node>.hello`       | agent → coord      | [`crate::wire::Hello`]  |
//! | `zdr.v1.agent.<node>.heartbeat`   | agent → coord      | [`crate::wire::Heartbeat`] |
//! | `zdr.v1.agent.<node>.inventory`   | agent → coord      | [`crate::wire::InventoryChunk`] |
//! | `zdr.v1.agent.<node>.delta`       | agent → coord      | [`crate::wire::InventoryDelta`] |
//! | `zdr.v1.agent.<node>.event`       | agent → coord      | [`crate::wire::Event`]  |
//! | `zdr.v1.agent.<node>.job`         | agent → coord      | [`crate::wire::JobUpdate`] (replication progress and outcome) |
//! | `zdr.v1.agent.<node>.cmd`         | coord → agent, req/reply | signed [`crate::wire::Command`], reply [`crate::wire::CommandResult`] |
//! | KV `zdr_policy`, key `current`    | coord → agents     | signed [`crate::wire::PolicyBundle`] |
//! | `zdr.v1.alerts.<receiver>`        | coord → coord (JetStream work queue `ZDR_ALERTS`) | a queued alert notification |
//! | `zdr.v1.audit.coordinator`        | coord → JetStream stream `ZDR_AUDIT` | one audit record (JSON) per destructive step, before and after it |
//! | `$SRV.{PING,INFO,STATS}[.<service>[.<id>]]` | admin → agents, coordinators, req/reply | NATS micro discovery (ADR-32): services `zdr-agent`, `zdr-coordinator` |
//! | `zdr.v1.srv.agent.<node>.status`  | admin → agent, req/reply | the agent's status (JSON) |
//! | `zdr.v1.srv.coordinator.health`   | admin → one coordinator, req/reply | its health (JSON) |

pub const PREFIX: &str = "zdr.v1";

/// Subjects an agent publishes on, and the one it listens on.
#[derive(Debug, Clone)]
pub struct AgentSubjects {
    pub hello: String,
    pub heartbeat: String,
    pub inventory: String,
    pub delta: String,
    pub event: String,
    pub job: String,
    pub cmd: String,
}

impl AgentSubjects {
    pub fn for_node(node: &str) -> Self {
        let base = format!("{PREFIX}.agent.{node}");
        AgentSubjects {
            hello: format!("{base}.hello"),
            heartbeat: format!("{base}.heartbeat"),
            inventory: format!("{base}.inventory"),
            delta: format!("{base}.delta"),
            event: format!("{base}.event"),
            job: format!("{base}.job"),
            cmd: format!("{base}.cmd"),
        }
    }
}

/// Alerts wait for their receivers under `zdr.v1.alerts.<receiver>`.
pub const ALERTS_PREFIX: &str = "zdr.v1.alerts";

/// The coordinator's audit records (bucket pruning), kept in JetStream.
pub const COORDINATOR_AUDIT: &str = "zdr.v1.audit.coordinator";

/// The NATS micro service every agent registers as.
pub const AGENT_SERVICE: &str = "zdr-agent";
/// The NATS micro service every coordinator instance registers as.
pub const COORDINATOR_SERVICE: &str = "zdr-coordinator";

/// Where agent `node`'s service endpoints live (outside `zdr.v1.agent.>`,
/// which the coordinator reads as agent messages).
pub fn agent_service_group(node: &str) -> String {
    format!("{PREFIX}.srv.agent.{node}")
}

/// Where the coordinators' service endpoints live.
pub const COORDINATOR_SERVICE_GROUP: &str = "zdr.v1.srv.coordinator";

/// The discovery subjects a NATS micro service named `name` subscribes to:
/// each verb for all services, for its name, and for its name and id. The
/// id is random per start, so the last is a wildcard.
pub fn service_discovery(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        out.push(format!("$SRV.{verb}"));
        out.push(format!("$SRV.{verb}.{name}"));
        out.push(format!("$SRV.{verb}.{name}.*"));
    }
    out
}

/// Wildcard the coordinator subscribes to for everything agents publish.
pub const ALL_AGENTS: &str = "zdr.v1.agent.*.*";

/// Logical subject the policy envelope is signed for (it travels through KV).
pub const POLICY: &str = "zdr.v1.policy";
pub const POLICY_BUCKET: &str = "zdr_policy";
pub const POLICY_KEY: &str = "current";

/// What an agent-published subject is about, parsed from `zdr.v1.agent.<node>.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentTopic {
    Hello,
    Heartbeat,
    Inventory,
    Delta,
    Event,
    Job,
}

/// Splits an agent subject into its node id and topic; `None` for anything else.
pub fn parse_agent_subject(subject: &str) -> Option<(&str, AgentTopic)> {
    let rest = subject.strip_prefix("zdr.v1.agent.")?;
    let (node, kind) = rest.split_once('.')?;
    let topic = match kind {
        "hello" => AgentTopic::Hello,
        "heartbeat" => AgentTopic::Heartbeat,
        "inventory" => AgentTopic::Inventory,
        "delta" => AgentTopic::Delta,
        "event" => AgentTopic::Event,
        "job" => AgentTopic::Job,
        _ => return None,
    };
    valid_node_id(node).ok()?;
    Some((node, topic))
}

/// Node ids become subject tokens and KV keys, so they are kept to a safe alphabet.
pub fn valid_node_id(node: &str) -> Result<(), String> {
    // 63: a DNS label's limit (the id names the node's certificate).
    if node.is_empty() || node.len() > 63 {
        return Err(format!("node id {node:?} must be 1 to 63 characters long"));
    }
    if let Some(c) = node
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "node id {node:?} contains {c:?}; use only ASCII letters, digits, '-' and '_'"
        ));
    }
    // The id is also the DNS name in the node's TLS certificate.
    if node.starts_with('-') || node.ends_with('-') {
        return Err(format!(
            "node id {node:?} starts or ends with '-', which a certificate's DNS name cannot; \
             move or drop the '-'"
        ));
    }
    if node.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "node id {node:?} is all digits, which a certificate's DNS name cannot be; add a letter"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_subjects_round_trip() {
        let s = AgentSubjects::for_node("stor-fra-01");
        assert_eq!(s.cmd, "zdr.v1.agent.stor-fra-01.cmd");
        assert_eq!(
            parse_agent_subject(&s.inventory),
            Some(("stor-fra-01", AgentTopic::Inventory))
        );
        assert_eq!(parse_agent_subject(&s.cmd), None);
        assert_eq!(parse_agent_subject("zdr.v1.agent.a b.hello"), None);
        assert_eq!(parse_agent_subject("other.subject"), None);
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(valid_node_id("stor_01-a").is_ok());
        for bad in ["", "a.b", "a*", "a>", "nœud", "a b", "-a", "a-", "042"] {
            assert!(valid_node_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(valid_node_id(&"n".repeat(63)).is_ok());
        assert!(valid_node_id(&"n".repeat(64)).is_err());
    }
}
