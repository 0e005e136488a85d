//! The bus with authorization on (issue 17, item 5): each identity speaks
//! only as itself. Every attack found against the open bus is one assertion
//! here; the last test shows the first of them working on an open bus, so
//! these assertions can fail.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use zdr_common::wire::{CommandResult, Outcome};
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: hdd }
classes:
  fast:
    tiers: { 2s: 3 }
    rpo: 10s
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/**"
    class: fast
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db"],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "hdd",
    datasets: &["tank/db"],
};

const PING: &str = r#"{"ping":{}}"#;
const WAIT: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A hello as `node` would send it, claiming a real ZFS backend.
fn hello(node: &str, site: &str, media: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "node": node, "site": site, "media": media, "version": "0.1.0",
        "backend": "cli", "pools": [], "started_at": unix_now(), "policy_revision": null
    }))
    .unwrap()
}

fn heartbeat(node: &str, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "node": node, "seq": seq, "at": unix_now(), "policy_revision": null,
        "inventory_generation": 0, "delta_seq": 0, "pools": []
    }))
    .unwrap()
}

/// A full inventory of one chunk: `tank/db` with one snapshot made at `creation`.
fn inventory(node: &str, generation: u64, snapshot: &str, creation: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "node": node, "generation": generation, "chunk": 0, "chunks": 1,
        "datasets": [{
            "dataset": "tank/db", "guid": 7, "used": 1, "available": 1, "class": "fast",
            "snapshots": [{ "name": snapshot, "guid": 8, "createtxg": 9, "creation": creation,
                            "used": 0, "userrefs": 0 }]
        }]
    }))
    .unwrap()
}

/// Waits for the server to tell this client it may not use `subject`.
async fn violation(errors: &mut UnboundedReceiver<String>, subject: &str) {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return Some(e);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(got, Ok(Some(_))),
        "no permissions violation for {subject}"
    );
}

async fn node(coord: &Coordinator, name: &str) -> Option<Value> {
    node_in(&coord.fleet().await?, name).cloned()
}

async fn online(coord: &Coordinator, name: &str) {
    wait_for(&format!("{name} online"), WAIT, || async {
        (node(coord, name).await?["online"] == true).then_some(())
    })
    .await;
}

async fn command(coord: &Coordinator, node: &str) -> (u16, String) {
    coord
        .post(&format!("/api/v1/nodes/{node}/commands"), PING)
        .await
        .expect("the coordinator answers")
}

/// An authorized fleet with a ready coordinator and these agents online.
async fn fleet_of(specs: &[&AgentSpec<'_>]) -> (Fleet, Coordinator, Vec<Agent>) {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let agents: Vec<Agent> = specs.iter().map(|s| f.agent(s)).collect();
    for s in specs {
        online(&coord, s.node).await;
    }
    (f, coord, agents)
}

/// Node B online; node A's credentials are the attacker's.
async fn with_node_b() -> (Fleet, Coordinator, Agent) {
    let (f, coord, mut agents) = fleet_of(&[&B1]).await;
    (f, coord, agents.remove(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_is_refused_and_the_authorized_fleet_works_without_violations() {
    let (f, coord, _agents) = fleet_of(&[&A1, &B1]).await;

    assert!(
        f.nats.connect_as(BusUser::Anonymous).await.is_err(),
        "an anonymous connection was accepted"
    );

    // Both agents come online and apply the signed policy, read from KV.
    let revision = wait_for("the policy revision", WAIT, || async {
        coord.fleet().await?["policy_revision"].as_u64()
    })
    .await;
    for name in ["node-a1", "node-b1"] {
        wait_for(&format!("{name} on the policy"), WAIT, || async {
            (node(&coord, name).await?["policy_revision"].as_u64() == Some(revision)).then_some(())
        })
        .await;
        let (code, body) = command(&coord, name).await;
        assert_eq!(code, 200, "{body}");
        let r: CommandResult = serde_json::from_str(&body).unwrap();
        assert_eq!((r.outcome, r.node.as_str()), (Outcome::Done, name));
    }
    // Snapshots are taken and show in the inventories.
    wait_for("snapshots in the fleet", WAIT, || async {
        let fleet = coord.fleet().await?;
        let snaps = snapshots_in(&fleet, "node-b1", "tank/db")?;
        (!snaps.is_empty()).then_some(())
    })
    .await;

    // What the zdr processes do needs no right they were not given.
    let log = std::fs::read_to_string(f.path().join("nats-server.log")).unwrap();
    assert!(
        !log.to_lowercase().contains("violation"),
        "the fleet hit the bus's permissions:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_a_cannot_speak_as_node_b_nor_keep_it_alive() {
    let (f, coord, mut b1) = with_node_b().await;
    let (a, mut errors) = f.nats.connect_as(BusUser::Agent("node-a1")).await.unwrap();
    // Its own subjects are its to use.
    a.publish(
        "zdr.v1.agent.node-a1.hello",
        hello("node-a1", "site-a", "ssd").into(),
    )
    .await
    .unwrap();

    // Add a node that claims a real backend.
    a.publish(
        "zdr.v1.agent.node-x.hello",
        hello("node-x", "site-a", "ssd").into(),
    )
    .await
    .unwrap();
    violation(&mut errors, "zdr.v1.agent.node-x.hello").await;

    // Keep node B "online" after it died, by replaying its heartbeats and
    // a fresh inventory, and rewrite its site and media.
    b1.proc.kill();
    let forge = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                let hb = heartbeat("node-b1", seq);
                let _ = a.publish("zdr.v1.agent.node-b1.heartbeat", hb.into()).await;
                let inv = inventory("node-b1", 1000 + seq, "zdr_fresh", unix_now());
                let _ = a
                    .publish("zdr.v1.agent.node-b1.inventory", inv.into())
                    .await;
                let h = hello("node-b1", "site-evil", "tape");
                let _ = a.publish("zdr.v1.agent.node-b1.hello", h.into()).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    for topic in ["heartbeat", "inventory", "hello"] {
        violation(&mut errors, &format!("zdr.v1.agent.node-b1.{topic}")).await;
    }
    // B goes offline and misses its RPO (10 s) while A forges on.
    let b = wait_for("node-b1 offline, RPO missed", WAIT, || async {
        let n = node(&coord, "node-b1").await?;
        let missed = n["datasets"]
            .as_array()?
            .iter()
            .any(|d| d["dataset"] == "tank/db" && d["rpo_met"] == false);
        (n["online"] == false && missed).then_some(n)
    })
    .await;
    forge.abort();
    assert_eq!(
        (&b["site"], &b["media"], &b["backend"]),
        (&json!("site-b"), &json!("hdd"), &json!("sim")),
        "{b}"
    );
    let snaps = snapshots_in(&coord.fleet().await.unwrap(), "node-b1", "tank/db").unwrap();
    assert!(!snaps.iter().any(|s| s == "zdr_fresh"), "{snaps:?}");
    let fleet = coord.fleet().await.unwrap();
    assert!(node_in(&fleet, "node-x").is_none(), "{fleet}");
}

#[tokio::test(flavor = "multi_thread")]
async fn node_a_cannot_hear_or_answer_node_b_commands_nor_write_the_policy() {
    let (f, coord, mut b1) = with_node_b().await;
    let (a, mut errors) = f.nats.connect_as(BusUser::Agent("node-a1")).await.unwrap();
    // Listen where B's commands, or the coordinator's replies, could be
    // read, and answer anything heard with a forged success.
    let mut heard = Vec::new();
    for subject in [
        "zdr.v1.agent.node-b1.cmd",
        "zdr.v1.agent.*.cmd",
        "_INBOX.>",
        "_INBOX.zdr.coordinator.>",
        ">",
    ] {
        let sub = a.subscribe(subject).await.unwrap();
        violation(&mut errors, subject).await;
        heard.push(sub);
    }
    let (tx, mut overheard) = tokio::sync::mpsc::unbounded_channel();
    let mut all = futures::stream::select_all(heard);
    let answering = {
        let a = a.clone();
        tokio::spawn(async move {
            while let Some(m) = all.next().await {
                let _ = tx.send(m.subject.to_string());
                if let Some(reply) = m.reply {
                    let forged = json!({"id": "x", "node": "node-b1", "outcome": "done", "message": "forged"});
                    let _ = a.publish(reply, forged.to_string().into()).await;
                }
            }
        })
    };

    // B answers its own commands; A hears none of them.
    for _ in 0..3 {
        let (code, body) = command(&coord, "node-b1").await;
        assert_eq!(code, 200, "{body}");
        let r: CommandResult = serde_json::from_str(&body).unwrap();
        assert_eq!(r.message, "pong", "{body}");
    }
    // B dead: nobody answers for it (3 of 3 tries). The coordinator's own
    // subscription to agent subjects keeps the server from saying "no
    // responders", so each try ends in a timeout after 10 s: the
    // coordinator's (502 or 504) or the harness's at the same moment.
    b1.proc.kill();
    let path = "/api/v1/nodes/node-b1/commands";
    let tries = futures::future::join_all((0..3).map(|_| coord.post(path, PING))).await;
    for answer in tries {
        assert!(
            matches!(&answer, None | Some((502 | 504, _))),
            "a command to a dead node was answered: {answer:?}"
        );
    }
    answering.abort();
    assert!(
        overheard.try_recv().is_err(),
        "node A heard traffic that is not its own"
    );

    // The policy: readable, never writable.
    let js = async_nats::jetstream::new(a.clone());
    let kv = js
        .get_key_value("zdr_policy")
        .await
        .expect("A may open the bucket");
    let admin = async_nats::jetstream::new(f.nats.client().await);
    let policy_entry = || async {
        admin
            .get_key_value("zdr_policy")
            .await
            .unwrap()
            .entry("current")
            .await
            .unwrap()
            .expect("a signed policy")
    };
    let before = policy_entry().await;
    assert!(
        kv.put("current", "{}".into()).await.is_err(),
        "A wrote the policy"
    );
    violation(&mut errors, "$KV.zdr_policy.current").await;
    assert!(kv.delete("current").await.is_err(), "A deleted the policy");
    assert!(kv.purge("current").await.is_err(), "A purged the policy");
    assert!(
        js.delete_stream("KV_zdr_policy").await.is_err(),
        "A deleted the policy bucket"
    );
    let after = policy_entry().await;
    assert_eq!(
        (after.revision, &after.value),
        (before.revision, &before.value)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_refuses_unnamed_nodes_and_inventories_from_the_future() {
    let (f, coord, _agents) = fleet_of(&[&A1]).await;

    // The operator's rights let this test reach the coordinator with a
    // node the policy does not name.
    let admin = f.nats.client().await;
    admin
        .publish(
            "zdr.v1.agent.node-x.hello",
            hello("node-x", "site-a", "ssd").into(),
        )
        .await
        .unwrap();
    // A node's own credentials, with snapshots dated a day ahead.
    let (a, _) = f.nats.connect_as(BusUser::Agent("node-a1")).await.unwrap();
    let ahead = inventory("node-a1", 1_000_000, "zdr_tomorrow", unix_now() + 86_400);
    a.publish("zdr.v1.agent.node-a1.inventory", ahead.into())
        .await
        .unwrap();
    admin.flush().await.unwrap();
    a.flush().await.unwrap();

    let log = wait_for("both refusals logged", WAIT, || async {
        let log = coord.proc.output();
        (log.contains("hello refused") && log.contains("inventory refused")).then_some(log)
    })
    .await;
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_default()
            .to_string()
    };
    let hello_line = line("hello refused");
    assert!(
        hello_line.contains("WARN")
            && hello_line.contains("node-x")
            && hello_line.contains("not in the policy"),
        "{hello_line}"
    );
    let inv_line = line("inventory refused");
    assert!(
        inv_line.contains("WARN")
            && inv_line.contains("node-a1")
            && inv_line.contains("tank/db@zdr_tomorrow"),
        "{inv_line}"
    );
    let fleet = coord.fleet().await.unwrap();
    assert!(node_in(&fleet, "node-x").is_none(), "{fleet}");
    let snaps = snapshots_in(&fleet, "node-a1", "tank/db").unwrap();
    assert!(!snaps.iter().any(|s| s == "zdr_tomorrow"), "{snaps:?}");
}

/// The control: on an open bus the first attack works, so the assertions
/// above can tell an open bus from a closed one.
#[tokio::test(flavor = "multi_thread")]
async fn on_an_open_bus_anyone_can_pose_as_a_node() {
    let f = Fleet::start_with(POLICY, None, false).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let (anyone, _) = f.nats.connect_as(BusUser::Anonymous).await.unwrap();
    let forged = wait_for("the forged node online", WAIT, || async {
        anyone
            .publish(
                "zdr.v1.agent.node-b1.hello",
                hello("node-b1", "site-evil", "tape").into(),
            )
            .await
            .ok()?;
        let n = node(&coord, "node-b1").await?;
        (n["online"] == true).then_some(n)
    })
    .await;
    assert_eq!(forged["backend"], "cli", "{forged}");
    assert_eq!(forged["site"], "site-evil", "{forged}");
}
