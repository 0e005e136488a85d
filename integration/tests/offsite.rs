//! Uploads to a bucket end to end: a real nats-server, the real coordinator
//! and agent (simulated ZFS), a real S3 server with object lock (SeaweedFS,
//! `weed mini` on loopback). A bucket task uploads a full, then an
//! incremental; the test reads the bucket itself: the manifests verify and
//! chain, and the streams restored from it land the source's GUIDs.

#[path = "../../agent/tests/support/seaweed.rs"]
mod seaweed;

use std::time::Duration;

use serde_json::Value;
use x25519_dalek::{PublicKey, StaticSecret};
use zdr_agent::offsite::manifest::{self, ManifestSigner, TrustedSigners};
use zdr_agent::offsite::seal;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::{Backend, RecvSpec};
use zdr_common::DatasetName;
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
    tiers: { 2s: 30 }
    rpo: 1m
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/db"
    class: fast
"#;

fn tasks(endpoint: &str, credentials: &str, recipient: &str) -> String {
    format!(
        r#"version: 1
tasks: []
buckets:
  - name: vault
    source: {{ match: "tank/db" }}
    bucket:
      endpoint: {endpoint}
      bucket: zdr-vault
      region: us-east-1
      prefix: zdr/
      credentials: {{ file: {credentials} }}
      object_lock: {{ mode: governance, retain: 1h }}
    chain: {{ full_every: 1h, incremental_every: 3s }}
    recipients: ["{recipient}"]
"#
    )
}

/// The upload record's committed manifests once there are `n`.
async fn committed(c: &Coordinator, n: usize) -> (Value, Vec<Value>) {
    wait_for(
        &format!("{n} committed uploads"),
        Duration::from_secs(150),
        || async {
            let all = jobs(c).await;
            let j = job_for(&all, "vault", "node-a1")?;
            let list = j["upload"]["committed"].as_array()?.clone();
            (list.len() >= n).then(|| (j.clone(), list))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_task_uploads_a_full_then_an_incremental_that_chain_and_restore() {
    let weed = seaweed::Seaweed::start();
    let store = weed.bucket("zdr-vault", true).await;
    let keys_dir = tempfile::tempdir().unwrap();
    let credentials = keys_dir.path().join("vault.credentials");
    std::fs::write(
        &credentials,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            seaweed::ACCESS_KEY,
            seaweed::SECRET_KEY
        ),
    )
    .unwrap();
    let manifest_key = keys_dir.path().join("manifest.key");
    let signing = zdr_common::envelope::generate_key();
    std::fs::write(
        &manifest_key,
        zdr_common::envelope::key_to_b64(&signing.to_bytes()),
    )
    .unwrap();
    let recovery = StaticSecret::from([42u8; 32]);
    let recipient = seal::recipient_id(&PublicKey::from(&recovery));
    let tasks = tasks(
        &weed.endpoint(),
        &credentials.display().to_string(),
        &recipient,
    );

    let fleet = Fleet::start(POLICY, Some(&tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    let agent = fleet.agent_with(
        &AgentSpec {
            node: "node-a1",
            site: "site-a",
            media: "ssd",
            datasets: &["tank/db"],
        },
        &AgentExtra {
            // Streams of several 8 MiB segments.
            snapshot_bytes: Some(20_000_000),
            offsite_key: Some(manifest_key.clone()),
            ..AgentExtra::default()
        },
    );

    let (job, list) = committed(&c, 2).await;
    assert_eq!(job["kind"], "upload", "{job:#}");
    assert_eq!(job["target_node"], "bucket:vault");
    let lines = history(&job);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a new chain starts with a full")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("as incremental stream")),
        "{lines:#?}"
    );
    let (full, incr) = (&list[0], &list[1]);
    assert!(full["from_guid"].is_null(), "{full:#}");
    assert_eq!(incr["from_guid"], full["to_guid"], "{list:#?}");
    assert!(full["segments"].as_u64().unwrap() >= 2, "{full:#}");
    assert!(full["retain_until"].as_i64().unwrap() > chrono::Utc::now().timestamp());

    // The bucket itself: every manifest verifies under the agent's key, no
    // stream lacks its manifest, and the two chain by hash and GUID.
    let mut trusted = TrustedSigners::default();
    trusted.trust(
        "node-a1",
        ManifestSigner::new("node-a1", signing).verifying_key(),
    );
    let listing = store.list("tank/db", &trusted).await.unwrap();
    assert!(listing.incomplete.is_empty(), "{:?}", listing.incomplete);
    let tip = incr["to_guid"].as_u64().unwrap();
    let chain = manifest::chain(&listing.manifests, &listing.incomplete, "tank/db", tip).unwrap();
    assert_eq!(chain.len(), 2, "{chain:#?}");
    assert_eq!(chain[0].hash, full["hash"].as_str().unwrap());
    assert_eq!(chain[1].hash, incr["hash"].as_str().unwrap());
    assert_eq!(
        chain[1].manifest.parent.as_deref(),
        Some(chain[0].hash.as_str())
    );
    assert!(chain[0].manifest.flags.raw && chain[1].manifest.flags.raw);

    // Restored from the bucket alone, the streams land the source's GUIDs.
    let source = on_disk(&agent, "tank/db").expect("the source dataset");
    let sim = SimBackend::new();
    sim.add_pool("restore", 10_000_000_000).unwrap();
    let dest = DatasetName::parse("restore/db").unwrap();
    for m in &chain {
        let mut bytes = Vec::new();
        store
            .restore_stream(m, &recovery, 2, &mut bytes)
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, m.manifest.stream_bytes);
        sim.receive(&dest, &RecvSpec::default(), &mut &bytes[..])
            .unwrap();
    }
    let restored = sim.list_snapshots(&dest).unwrap();
    for m in &chain {
        let want = m.manifest.to_guid;
        assert!(
            restored.iter().any(|s| s.guid == want),
            "GUID {want} is not restored: {restored:?}"
        );
        assert!(
            source.iter().any(|(_, g, _)| *g == want),
            "GUID {want} is not the source's: {source:?}"
        );
    }

    // The coordinator's report lists the bucket as a copy of the dataset,
    // its newest point a committed upload the source knows by GUID.
    let copy = wait_for(
        "the bucket copy in the report",
        Duration::from_secs(30),
        || async {
            let (200, body) = c.get("/api/v1/report").await? else {
                return None;
            };
            let report: Value = serde_json::from_str(&body).ok()?;
            let ds = report["datasets"]
                .as_array()?
                .iter()
                .find(|d| d["node"] == "node-a1" && d["dataset"] == "tank/db")?
                .clone();
            let copy = ds["copies"]
                .as_array()?
                .iter()
                .find(|c| c["role"] == "bucket")?
                .clone();
            (!copy["newest"].is_null()).then_some(copy)
        },
    )
    .await;
    assert_eq!(copy["node"], "bucket:vault", "{copy:#}");
    assert_eq!(copy["replication"]["task"], "vault", "{copy:#}");
    let newest = copy["newest"]["guid"].clone();
    let (_, now_committed) = committed(&c, 2).await;
    assert!(
        now_committed.iter().any(|m| m["to_guid"] == newest),
        "the bucket's newest point {newest} is no committed upload: {now_committed:#?}"
    );

    // The source holds the chain's tip for the next incremental; the
    // full's snapshot is let go once the incremental committed.
    let full_guid = full["to_guid"].as_u64().unwrap();
    wait_for(
        "the upload hold to move on",
        Duration::from_secs(30),
        || async {
            let snaps = on_disk(&agent, "tank/db")?;
            let held = |g: u64| {
                snaps
                    .iter()
                    .any(|(_, guid, h)| *guid == g && h.iter().any(|t| t == "zdr-offsite-vault"))
            };
            let any = snaps
                .iter()
                .any(|(_, _, h)| h.iter().any(|t| t == "zdr-offsite-vault"));
            (any && !held(full_guid)).then_some(())
        },
    )
    .await;
}
