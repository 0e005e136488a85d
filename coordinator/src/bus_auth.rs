//! The nats-server authorization for a fleet: one nkey user per agent, one
//! for the coordinator, and optionally one for an operator. An agent may
//! speak only as itself, hear only its own commands and its own replies, and
//! read the signed policy without being able to write it. Each process also
//! hears NATS micro discovery (`$SRV.*` for its service name) and its own
//! service endpoints, and answers them through `allow_responses`; nothing
//! lets an agent hear another agent's endpoints.
//!
//! `authorization_block` is pure; `write_credentials` is the shell behind
//! `zdr-coordinator bus-auth`, which makes each identity's seed once and keeps it.

use std::io::Write;
use std::path::{Path, PathBuf};

use zdr_common::bus_auth::{agent_inbox, seed_from_file, CredentialError, COORDINATOR_INBOX};
use zdr_common::subject::{self, AgentSubjects};

/// What one user may do. Everything not allowed is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (and nothing else on their inboxes).
    pub allow_responses: bool,
}

/// The stream behind the policy KV bucket.
fn policy_stream() -> String {
    format!("KV_{}", subject::POLICY_BUCKET)
}

/// Agent `node`: its own topics, replies to the commands it hears, and the
/// JetStream API calls a KV watch of the policy bucket makes.
pub fn agent_permissions(node: &str) -> Permissions {
    let s = AgentSubjects::for_node(node);
    let stream = policy_stream();
    let mut publish = vec![s.hello, s.heartbeat, s.inventory, s.delta, s.event, s.job];
    publish.extend([
        // `get_key_value`: the bucket's stream info.
        format!("$JS.API.STREAM.INFO.{stream}"),
        // The watch: an ordered consumer, re-created after a gap.
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        // Its flow-control answers.
        format!("$JS.FC.{stream}.>"),
    ]);
    let mut subscribe = vec![
        s.cmd,
        format!("{}.>", agent_inbox(node)),
        // Its NATS micro endpoints, and discovery (answered through
        // `allow_responses`).
        format!("{}.>", subject::agent_service_group(node)),
    ];
    subscribe.extend(subject::service_discovery(subject::AGENT_SERVICE));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

/// The coordinator: commands to every agent, everything agents publish, and
/// JetStream (it owns the buckets and the events stream); it answers its
/// NATS micro service's requests.
pub fn coordinator_permissions() -> Permissions {
    Permissions {
        publish: vec![
            format!("{}.agent.*.cmd", subject::PREFIX),
            format!("{}.>", subject::ALERTS_PREFIX),
            subject::COORDINATOR_AUDIT.into(),
            "$JS.API.>".into(),
            "$KV.>".into(),
            "$JS.ACK.>".into(),
            "$JS.FC.>".into(),
        ],
        subscribe: [
            subject::ALL_AGENTS.into(),
            format!("{COORDINATOR_INBOX}.>"),
            format!("{}.>", subject::COORDINATOR_SERVICE_GROUP),
        ]
        .into_iter()
        .chain(subject::service_discovery(subject::COORDINATOR_SERVICE))
        .collect(),
        // Only to answer its NATS micro endpoints and discovery.
        allow_responses: true,
    }
}

/// The users of one fleet, by public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusUsers {
    pub coordinator: String,
    /// Node id and public key.
    pub agents: Vec<(String, String)>,
    /// An operator's key with every right (for `nats` CLI work); none by default.
    pub admin: Option<String>,
}

/// The `authorization { ... }` block for nats-server's config file.
pub fn authorization_block(users: &BusUsers) -> String {
    let mut out = String::from(
        "# Written by `zdr-coordinator bus-auth`; regenerate it after the policy's node list changes.\n\
         authorization {\n  users = [\n",
    );
    out.push_str(&user(
        "coordinator",
        &users.coordinator,
        Some(&coordinator_permissions()),
    ));
    for (node, key) in &users.agents {
        out.push_str(&user(
            &format!("agent {node}"),
            key,
            Some(&agent_permissions(node)),
        ));
    }
    if let Some(key) = &users.admin {
        out.push_str(&user("operator: every right", key, None));
    }
    out.push_str("  ]\n}\n");
    out
}

fn user(label: &str, key: &str, perms: Option<&Permissions>) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(p) = perms else {
        return format!("    # {label}\n    {{ nkey: \"{key}\" }}\n");
    };
    let responses = if p.allow_responses {
        "\n        allow_responses: true"
    } else {
        ""
    };
    format!(
        "    # {label}\n    {{ nkey: \"{key}\", permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}{responses}\n    }} }}\n",
        list(&p.publish),
        list(&p.subscribe),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum BusAuthError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// The seed file of each identity in `dir`. Node ids hold no '.', so no
/// node's file can be the coordinator's or the operator's.
pub fn agent_seed_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("agent-{node}.nk"))
}
pub fn coordinator_seed_file(dir: &Path) -> PathBuf {
    dir.join("coordinator.nk")
}
pub fn admin_seed_file(dir: &Path) -> PathBuf {
    dir.join("admin.nk")
}
pub fn authorization_file(dir: &Path) -> PathBuf {
    dir.join("auth.conf")
}

/// Makes (once) a seed file for the coordinator, each node and, if asked,
/// an operator, then writes `auth.conf` in `dir`. Existing seeds are kept,
/// so agents already deployed keep working.
pub fn write_credentials(
    dir: &Path,
    nodes: &[String],
    admin: bool,
) -> Result<BusUsers, BusAuthError> {
    std::fs::create_dir_all(dir).map_err(|source| BusAuthError::Io {
        path: dir.into(),
        source,
    })?;
    let mut agents = Vec::new();
    for node in nodes {
        agents.push((node.clone(), seed_public_key(&agent_seed_file(dir, node))?));
    }
    let users = BusUsers {
        coordinator: seed_public_key(&coordinator_seed_file(dir))?,
        agents,
        admin: if admin {
            Some(seed_public_key(&admin_seed_file(dir))?)
        } else {
            None
        },
    };
    let path = authorization_file(dir);
    std::fs::write(&path, authorization_block(&users))
        .map_err(|source| BusAuthError::Io { path, source })?;
    Ok(users)
}

/// The public key of the seed in `path`, made (mode 0600) if the file is absent.
fn seed_public_key(path: &Path) -> Result<String, BusAuthError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| BusAuthError::Io {
        path: path.into(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let text = std::fs::read_to_string(path).map_err(io)?;
            Ok(seed_from_file(path, meta.permissions().mode(), &text)?
                .public_key()
                .to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair
                .seed()
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(format!("{seed}\n").as_bytes()).map_err(io)?;
            Ok(pair.public_key())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS subject matching: `*` is one token, `>` one or more at the end.
    fn matches(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn allowed(list: &[String], subject: &str) -> bool {
        list.iter().any(|p| matches(p, subject))
    }

    #[test]
    fn subject_matching_in_these_tests_is_right() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.b", "a.b.c"));
    }

    #[test]
    fn an_agent_publishes_only_as_itself() {
        let p = agent_permissions("node-a");
        let own = AgentSubjects::for_node("node-a");
        for s in [
            &own.hello,
            &own.heartbeat,
            &own.inventory,
            &own.delta,
            &own.event,
            &own.job,
        ] {
            assert!(allowed(&p.publish, s), "{s}");
        }
        let other = AgentSubjects::for_node("node-b");
        for s in [
            &other.hello,
            &other.heartbeat,
            &other.inventory,
            &other.delta,
            &other.event,
            &other.job,
            &other.cmd,
        ] {
            assert!(!allowed(&p.publish, s), "{s}");
        }
        // Not even a command to itself.
        assert!(!allowed(&p.publish, &own.cmd));
    }

    #[test]
    fn an_agent_hears_only_its_commands_and_its_replies() {
        let p = agent_permissions("node-a");
        assert!(allowed(&p.subscribe, "zdr.v1.agent.node-a.cmd"));
        assert!(allowed(&p.subscribe, "_INBOX.zdr.agent.node-a.x1.y"));
        for s in [
            "zdr.v1.agent.node-b.cmd",
            "zdr.v1.agent.node-b.heartbeat",
            "zdr.v1.agent.node-ab.cmd",
            "_INBOX.zdr.agent.node-b.x1",
            "_INBOX.zdr.agent.node-ab.x1",
            "_INBOX.zdr.coordinator.x1.y",
            "_INBOX.x1.y",
            "$KV.zdr_policy.current",
            "$KV.zdr_jobs.k",
        ] {
            assert!(!allowed(&p.subscribe, s), "{s}");
        }
        // Commands are answered through the reply subject they carry.
        assert!(p.allow_responses);
        // Discovery of its service, and its own endpoints; not another's.
        for s in [
            "$SRV.PING",
            "$SRV.INFO.zdr-agent",
            "$SRV.STATS.zdr-agent.NUID123",
            "zdr.v1.srv.agent.node-a.status",
        ] {
            assert!(allowed(&p.subscribe, s), "{s}");
        }
        for s in [
            "$SRV.PING.zdr-coordinator",
            "$SRV.INFO.other.id",
            "zdr.v1.srv.agent.node-b.status",
            "zdr.v1.srv.coordinator.health",
        ] {
            assert!(!allowed(&p.subscribe, s), "{s}");
        }
        assert!(!allowed(&p.publish, "$SRV.PING"));
        assert!(!allowed(&p.publish, "_INBOX.zdr.coordinator.x1.y"));
    }

    #[test]
    fn an_agent_reads_the_policy_bucket_and_writes_nothing_in_jetstream() {
        let p = agent_permissions("node-a");
        assert!(allowed(&p.publish, "$JS.API.STREAM.INFO.KV_zdr_policy"));
        assert!(allowed(
            &p.publish,
            "$JS.API.CONSUMER.CREATE.KV_zdr_policy.c1.$KV.zdr_policy.current"
        ));
        for s in [
            "$KV.zdr_policy.current",
            "$KV.zdr_fleet.node-b",
            "$JS.API.STREAM.PURGE.KV_zdr_policy",
            "$JS.API.STREAM.DELETE.KV_zdr_policy",
            "$JS.API.STREAM.UPDATE.KV_zdr_policy",
            "$JS.API.STREAM.MSG.DELETE.KV_zdr_policy",
            "$JS.API.CONSUMER.CREATE.KV_zdr_jobs.c1",
            "$JS.API.STREAM.INFO.KV_zdr_jobs",
            "$JS.API.DIRECT.GET.KV_zdr_jobs.$KV.zdr_jobs.k",
            "$JS.API.STREAM.CREATE.KV_zdr_policy",
        ] {
            assert!(!allowed(&p.publish, s), "{s}");
        }
    }

    #[test]
    fn the_coordinator_commands_and_listens_but_never_speaks_as_an_agent() {
        let p = coordinator_permissions();
        let a = AgentSubjects::for_node("node-a");
        assert!(allowed(&p.publish, &a.cmd));
        assert!(allowed(&p.publish, "zdr.v1.alerts.ops"));
        assert!(allowed(&p.publish, "$KV.zdr_policy.current"));
        assert!(allowed(&p.publish, "$JS.API.STREAM.CREATE.KV_zdr_jobs"));
        for s in [&a.hello, &a.heartbeat, &a.inventory, &a.job] {
            assert!(!allowed(&p.publish, s), "{s}");
            assert!(allowed(&p.subscribe, s), "{s}");
        }
        assert!(allowed(&p.subscribe, "_INBOX.zdr.coordinator.x.y"));
        assert!(!allowed(&p.subscribe, "_INBOX.zdr.agent.node-a.x"));
        assert!(allowed(&p.subscribe, "$SRV.INFO.zdr-coordinator.NUID1"));
        assert!(allowed(&p.subscribe, "zdr.v1.srv.coordinator.health"));
        assert!(!allowed(&p.subscribe, "$SRV.INFO.zdr-agent"));
        assert!(!allowed(&p.subscribe, "zdr.v1.srv.agent.node-a.status"));
    }

    #[test]
    fn the_block_names_every_user_with_its_rights() {
        let users = BusUsers {
            coordinator: "UCOORD".into(),
            agents: vec![
                ("node-a".into(), "UAAA".into()),
                ("node-b".into(), "UBBB".into()),
            ],
            admin: None,
        };
        let text = authorization_block(&users);
        assert_eq!(text.matches("nkey: ").count(), 3, "{text}");
        let a = text.lines().position(|l| l.contains("\"UAAA\"")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[a + 1].contains("\"zdr.v1.agent.node-a.heartbeat\""),
            "{text}"
        );
        assert!(!lines[a + 1].contains("node-b"), "{text}");
        assert!(
            lines[a + 2].contains("\"zdr.v1.agent.node-a.cmd\""),
            "{text}"
        );
        assert!(lines[a + 3].contains("allow_responses: true"), "{text}");
        assert!(!text.contains("UADMIN"));
        let with_admin = authorization_block(&BusUsers {
            admin: Some("UADMIN".into()),
            ..users
        });
        assert!(with_admin.contains("{ nkey: \"UADMIN\" }"), "{with_admin}");
    }

    #[test]
    fn seeds_are_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let nodes = vec!["node-a".to_string(), "node-b".to_string()];
        let first = write_credentials(dir.path(), &nodes, false).unwrap();
        for f in [
            agent_seed_file(dir.path(), "node-a"),
            agent_seed_file(dir.path(), "node-b"),
            coordinator_seed_file(dir.path()),
        ] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        assert!(!admin_seed_file(dir.path()).exists());
        let again = write_credentials(dir.path(), &nodes, true).unwrap();
        assert_eq!(again.agents, first.agents);
        assert_eq!(again.coordinator, first.coordinator);
        assert!(again.admin.is_some());
        let conf = std::fs::read_to_string(authorization_file(dir.path())).unwrap();
        assert!(conf.contains(&first.agents[1].1), "{conf}");

        let f = agent_seed_file(dir.path(), "node-a");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = write_credentials(dir.path(), &nodes, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&f.display().to_string()) && e.contains("0644"),
            "{e}"
        );
    }
}
