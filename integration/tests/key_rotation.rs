//! Rotating the coordinator's signing key (issue 17, item 7), as
//! ops/runbooks/key-rotation.md does it: add the new key to the agents, sign
//! with it, retire the old one. Revisions never go back, and an agent that
//! refuses the published policy shows it in the fleet status.

use std::time::Duration;

use serde_json::Value;
use zdr_common::envelope::{self, Sealer};
use zdr_common::subject;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: hdd }
classes:
  slow:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/**"
    class: slow
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

const WAIT: Duration = Duration::from_secs(60);

/// An edit the agents apply: the class's RTO.
fn edit_policy(f: &Fleet, rto: &str) {
    std::fs::write(&f.policy, POLICY.replace("rto: 1h", &format!("rto: {rto}"))).unwrap();
}

fn trusting(keys: &[&Keys]) -> AgentExtra {
    AgentExtra {
        trusted: keys
            .iter()
            .map(|k| (k.kid.clone(), k.public_b64.clone()))
            .collect(),
        ..AgentExtra::default()
    }
}

/// Every node online, applying `revision` and refusing nothing.
async fn all_on(c: &Coordinator, revision: u64) -> Value {
    wait_for(
        &format!("every node on revision {revision}"),
        WAIT,
        || async {
            let fleet = c.fleet().await?;
            let nodes = fleet["nodes"].as_array()?;
            let done = fleet["policy_revision"] == revision
                && nodes.len() == 2
                && nodes.iter().all(|n| {
                    n["online"] == true
                        && n["policy_revision"] == revision
                        && n["policy_refused"].is_null()
                });
            done.then_some(fleet)
        },
    )
    .await
}

fn restart(f: &Fleet, agent: &mut Agent, spec: &AgentSpec, extra: &AgentExtra) {
    agent.proc.kill();
    *agent = f.agent_with(spec, extra);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_moves_every_agent_to_the_new_key_and_never_back() {
    let f = Fleet::start(POLICY, None).await;
    let old = &f.keys;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let mut a1 = f.agent(&A1);
    let mut b1 = f.agent(&B1);
    all_on(&c1, 1).await;
    edit_policy(&f, "2h");
    all_on(&c1, 2).await;

    // 1. The new key goes to the agents, beside the old one. node-b1 is
    //    forgotten, to show what the fleet status says about it.
    let new = Keys::create_named(f.path(), "coordinator-2027");
    restart(&f, &mut a1, &A1, &trusting(&[old, &new]));
    wait_for("node-a1 back on its cached policy", WAIT, || async {
        a1.proc
            .output()
            .contains("cached signed policy loaded")
            .then_some(())
    })
    .await;
    all_on(&c1, 2).await;

    // 2. The coordinator signs with the new key: it cannot verify what is
    //    in the bucket, and publishes above it rather than at 1.
    c1.proc.terminate(Duration::from_secs(10));
    let c2 = f.coordinator_signing_with("c2", &new);
    c2.wait_ready().await;
    let fleet = wait_for(
        "node-a1 on revision 3, node-b1 refusing it",
        WAIT,
        || async {
            let fleet = c2.fleet().await?;
            let a = node_in(&fleet, "node-a1")?;
            let b = node_in(&fleet, "node-b1")?;
            let done = a["policy_revision"] == 3
                && a["policy_refused"].is_null()
                && b["policy_refused"]["reason"] == "untrusted_key";
            done.then_some(fleet)
        },
    )
    .await;
    assert_eq!(fleet["policy_revision"], 3);
    assert_eq!(fleet["policy_key"], "coordinator-2027");
    let b = node_in(&fleet, "node-b1").unwrap();
    assert_eq!(b["policy_revision"], 2, "node-b1 stays on what it has");
    assert!(b["policy_refused"]["revision"].is_null(), "{b}");
    let log = b1.proc.output();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("policy refused")
            && l.contains("UntrustedKey")),
        "{log}"
    );
    assert!(c2
        .proc
        .output()
        .contains("the node refuses the published policy"));

    restart(&f, &mut b1, &B1, &trusting(&[old, &new]));
    all_on(&c2, 3).await;

    // 3. An edit under the new key reaches every agent.
    edit_policy(&f, "3h");
    all_on(&c2, 4).await;

    // 4. The old key is retired: the agents trust only the new one, start
    //    on the policy they cached (signed with it) and apply the next edit.
    restart(&f, &mut a1, &A1, &trusting(&[&new]));
    restart(&f, &mut b1, &B1, &trusting(&[&new]));
    for a in [&a1, &b1] {
        wait_for("an agent back on its cached policy", WAIT, || async {
            let loads = a
                .proc
                .output()
                .matches("cached signed policy loaded")
                .count();
            (loads >= 2).then_some(())
        })
        .await;
    }
    all_on(&c2, 4).await;
    edit_policy(&f, "4h");
    all_on(&c2, 5).await;
    for a in [&a1, &b1] {
        let log = a.proc.output();
        assert!(log.contains("coordinator-2027"), "{log}");
        assert!(!log.contains("cached policy refused"), "{log}");
    }
}

/// The signed envelope now in the bucket, and its payload as JSON.
async fn stored_policy(f: &Fleet) -> (async_nats::jetstream::kv::Store, Value) {
    let (client, _) = f.nats.connect_as(BusUser::Admin).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(subject::POLICY_BUCKET)
        .await
        .unwrap();
    let raw = kv.get(subject::POLICY_KEY).await.unwrap().unwrap();
    let payload = envelope::unverified_payload(&raw).unwrap();
    (kv, serde_json::from_slice(payload).unwrap())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `bundle` with this revision, signed by `sealer` at `iat` for 7 days.
fn resealed(sealer: &Sealer, bundle: &Value, revision: u64, iat: i64) -> Vec<u8> {
    let mut b = bundle.clone();
    b["revision"] = revision.into();
    b["source_digest"] = "an older file".into();
    let payload = serde_json::to_vec(&b).unwrap();
    sealer.seal(
        subject::POLICY,
        &format!("test-{revision}"),
        iat,
        7 * 86_400,
        1,
        &payload,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_that_cannot_verify_the_stored_policy_counts_upward() {
    let f = Fleet::start(POLICY, None).await;
    let mut c1 = f.coordinator("c1");
    c1.wait_ready().await;
    let _a1 = f.agent(&A1);
    let _b1 = f.agent(&B1);
    all_on(&c1, 1).await;
    c1.proc.kill();

    // The coordinator was down for more than the policy's 7 days: what is
    // in the bucket (revision 6, our key) has expired.
    let (kv, bundle) = stored_policy(&f).await;
    let ours = Sealer::new(f.keys.kid.clone(), f.keys.key.clone());
    let expired = resealed(&ours, &bundle, 6, unix_now() - 8 * 86_400);
    kv.put(subject::POLICY_KEY, expired.into()).await.unwrap();
    let c2 = f.coordinator("c2");
    c2.wait_ready().await;
    all_on(&c2, 7).await;
    drop(c2);

    // Signed with a key this coordinator does not hold (revision 9).
    let stranger = Sealer::new("gone", envelope::generate_key());
    let foreign = resealed(&stranger, &bundle, 9, unix_now());
    kv.put(subject::POLICY_KEY, foreign.into()).await.unwrap();
    let c3 = f.coordinator("c3");
    c3.wait_ready().await;
    all_on(&c3, 10).await;
    assert!(
        c3.proc.output().contains("publishing above its revision"),
        "{}",
        c3.proc.output()
    );
}
