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
use zdr_agent::offsite::store::Store;
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

fn tasks(endpoint: &str, credentials: &str, recipient: &str, incremental_every: &str) -> String {
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
    chain: {{ full_every: 1h, incremental_every: {incremental_every} }}
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

/// A bucket with object lock, its credentials file, node-a1's manifest
/// key, the recovery key and the tasks file that uploads tank/db there.
struct Vault {
    weed: seaweed::Seaweed,
    store: Store,
    dir: tempfile::TempDir,
    manifest_key: std::path::PathBuf,
    signing: ed25519_dalek::SigningKey,
    recovery: StaticSecret,
    tasks: String,
}

async fn vault(incremental_every: &str) -> Vault {
    let weed = seaweed::Seaweed::start();
    let store = weed.bucket("zdr-vault", true).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("vault.credentials");
    std::fs::write(
        &credentials,
        format!(
            "access_key_id = {}\nsecret_access_key = {}\n",
            seaweed::ACCESS_KEY,
            seaweed::SECRET_KEY
        ),
    )
    .unwrap();
    let manifest_key = dir.path().join("manifest.key");
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
        incremental_every,
    );
    Vault {
        weed,
        store,
        dir,
        manifest_key,
        signing,
        recovery,
        tasks,
    }
}

/// node-a1 uploading tank/db, snapshots of `bytes` (20 MB: several 8 MiB segments).
fn uploader(fleet: &Fleet, v: &Vault, bytes: u64) -> Agent {
    fleet.agent_with(
        &AgentSpec {
            node: "node-a1",
            site: "site-a",
            media: "ssd",
            datasets: &["tank/db"],
        },
        &AgentExtra {
            snapshot_bytes: Some(bytes),
            offsite_key: Some(v.manifest_key.clone()),
            ..AgentExtra::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_task_uploads_a_full_then_an_incremental_that_chain_and_restore() {
    let v = vault("3s").await;
    let (store, signing, recovery) = (&v.store, v.signing.clone(), &v.recovery);
    let fleet = Fleet::start(POLICY, Some(&v.tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    let agent = uploader(&fleet, &v, 20_000_000);

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
            .restore_stream(m, recovery, 2, &mut bytes)
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

/// A forged manifest version over the incremental's, and a forged stream
/// claiming the same snapshot (newer, signed by a key nobody trusts under
/// node-a1's id): what an attacker with write access to the bucket can do.
async fn forge(v: &Vault, incr: &Value) {
    let client = v.store.client();
    let key = incr["key"].as_str().unwrap();
    let real = client
        .get_object()
        .bucket("zdr-vault")
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let text = String::from_utf8(real.to_vec()).unwrap();
    let altered = text.replacen("\"to_name\":\"", "\"to_name\":\"x", 1);
    assert_ne!(altered, text);
    let mut trusted = TrustedSigners::default();
    trusted.trust(
        "node-a1",
        ManifestSigner::new("node-a1", v.signing.clone()).verifying_key(),
    );
    let mut m = manifest::verify(key, &real, &trusted).unwrap().manifest;
    let stream = seal::StreamId::generate();
    m.stream = stream.to_string();
    m.created += 1_000_000;
    let attacker = ManifestSigner::new("node-a1", zdr_common::envelope::generate_key());
    let new_key = zdr_agent::offsite::manifest_key("zdr/", "tank/db", &stream);
    for (object, body) in [
        (key.to_string(), altered.into_bytes()),
        (new_key, attacker.sign(&m)),
    ] {
        use base64::Engine;
        use md5::Digest as _;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
        client
            .put_object()
            .bucket("zdr-vault")
            .key(&object)
            .content_md5(md5)
            .body(body.into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("forging {object}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_the_bucket_lands_the_incremental_on_another_node_past_forged_manifests() {
    let v = vault("3s").await;
    let fleet = Fleet::start(POLICY, Some(&v.tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    let source = uploader(&fleet, &v, 20_000_000);
    // The destination signs nothing here, but believes node-a1's manifests
    // and holds the recovery key.
    let b_key = v.dir.path().join("b-manifest.key");
    let b_signing = zdr_common::envelope::generate_key();
    std::fs::write(
        &b_key,
        zdr_common::envelope::key_to_b64(&b_signing.to_bytes()),
    )
    .unwrap();
    let recovery_file = v.dir.path().join("recovery.key");
    use base64::Engine;
    std::fs::write(
        &recovery_file,
        base64::engine::general_purpose::STANDARD.encode(v.recovery.to_bytes()),
    )
    .unwrap();
    let a_public = base64::engine::general_purpose::STANDARD.encode(
        ManifestSigner::new("node-a1", v.signing.clone())
            .verifying_key()
            .as_bytes(),
    );
    let dest = fleet.agent_with(
        &AgentSpec {
            node: "node-b1",
            site: "site-b",
            media: "hdd",
            datasets: &[],
        },
        &AgentExtra {
            offsite_key: Some(b_key),
            recovery_key: Some(recovery_file),
            manifest_signers: vec![("node-a1".into(), a_public)],
            ..AgentExtra::default()
        },
    );

    let (_, list) = committed(&c, 2).await;
    let (full, incr) = (&list[0], &list[1]);
    assert_eq!(incr["from_guid"], full["to_guid"], "{list:#?}");
    let tip = incr["to_guid"].as_u64().unwrap();
    let tip_name = incr["to_name"].as_str().unwrap().to_string();

    // The bucket is a restore point of tank/db, its snapshots the uploads'.
    let (code, body) = c
        .get("/api/v1/restore-points?node=node-a1&dataset=tank/db")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let points: Value = serde_json::from_str(&body).unwrap();
    let bucket = points["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["copy"] == "bucket")
        .unwrap_or_else(|| panic!("no bucket copy: {points:#}"));
    assert_eq!(bucket["node"], "bucket:vault");
    assert!(
        bucket["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["guid"] == tip),
        "{bucket:#}"
    );

    forge(&v, incr).await;
    let request = serde_json::json!({
        "source": "node-a1:tank/db",
        "snapshot": tip_name,
        "from": "bucket:vault",
        "to": "node-b1:tank/from-bucket",
    });
    let (code, body) = c
        .post("/api/v1/restores", &request.to_string())
        .await
        .unwrap();
    assert_eq!(code, 202, "{body}");
    let accepted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(accepted["from"]["node"], "bucket:vault", "{accepted:#}");
    // Sent raw, but the (simulated) dataset is not encrypted: it lands
    // readable, and nobody is told to load a key.
    assert_eq!(accepted["raw"], false, "{accepted:#}");
    assert!(accepted["load_key"].is_null(), "{accepted:#}");
    let job = accepted["job"].as_str().unwrap().to_string();
    let status = wait_for("the restore to end", Duration::from_secs(120), || async {
        let (200, s) = c.get(&format!("/api/v1/restores/{job}")).await? else {
            return None;
        };
        let s: Value = serde_json::from_str(&s).ok()?;
        (s["state"] == "done" || s["state"] == "failed").then_some(s)
    })
    .await;
    assert_eq!(status["state"], "done", "{status:#}");
    assert_eq!(status["landed_guid"], tip, "{status:#}");
    let lines: Vec<String> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    // The forged version and the forged stream were both passed over, and said so.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("skipped 2 manifest(s)") && l.contains("does not verify")),
        "{lines:#?}"
    );

    // The chain landed: the full's and the incremental's GUIDs, the source's.
    let restored = on_disk(&dest, "tank/from-bucket").expect("the restored dataset");
    let src = on_disk(&source, "tank/db").expect("the source dataset");
    for want in [full["to_guid"].as_u64().unwrap(), tip] {
        assert!(
            restored.iter().any(|(_, g, _)| *g == want),
            "{want} not restored: {restored:?}"
        );
        assert!(
            src.iter().any(|(_, g, _)| *g == want),
            "{want} not the source's: {src:?}"
        );
    }
    let _ = &v.weed;
}

/// Objects under the bucket's stream prefix: segments, manifests.
async fn stream_objects(store: &Store) -> Vec<String> {
    let out = store
        .client()
        .list_objects_v2()
        .bucket("zdr-vault")
        .prefix("zdr/streams/")
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_killed_mid_stream_leaves_no_manifest_and_a_clean_full_follows() {
    // Incrementals every 30 min: any second upload here is the retry of
    // the killed one.
    let v = vault("30m").await;
    let fleet = Fleet::start(POLICY, Some(&v.tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    // 30 MB snapshots: the first full is several 8 MiB segments, seconds
    // of upload (a full carries every snapshot's data so far).
    let mut agent = uploader(&fleet, &v, 30_000_000);

    // Killed (SIGKILL) once segments have landed and before the manifest.
    let landed = wait_for(
        "the first segments of the upload",
        Duration::from_secs(120),
        || async {
            let keys = stream_objects(&v.store).await;
            keys.iter().any(|k| k.contains("/seg/")).then_some(keys)
        },
    )
    .await;
    agent.proc.kill();
    let after_kill = stream_objects(&v.store).await;
    assert!(
        !after_kill.iter().any(|k| k.ends_with("/manifest")),
        "the upload ended before the kill; use larger snapshots: {landed:?} {after_kill:?}"
    );

    // What the kill left: a stream with segments and no manifest, which a
    // listing calls incomplete and which no chain uses.
    let mut trusted = TrustedSigners::default();
    trusted.trust(
        "node-a1",
        ManifestSigner::new("node-a1", v.signing.clone()).verifying_key(),
    );
    let listing = v.store.list("tank/db", &trusted).await.unwrap();
    assert!(listing.manifests.is_empty(), "{:?}", listing.manifests);
    assert_eq!(listing.incomplete.len(), 1, "{:?}", listing.incomplete);
    let cut = listing.incomplete[0].clone();

    // The agent comes back; the killed attempt fails as soon as its new
    // process says hello and does not know it (not after the 30 s stall),
    // and the retry uploads a whole new full with its manifest.
    agent = uploader(&fleet, &v, 30_000_000);
    let (job, list) = committed(&c, 1).await;
    let lines = history(&job);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("attempt 1 failed") && l.contains("agent on node-a1 restarted")),
        "the killed attempt is not in the history as lost with the restart: {lines:#?}"
    );
    eprintln!(
        "history after the kill and the restart:\n{}",
        lines.join("\n")
    );
    let full = &list[0];
    assert!(full["from_guid"].is_null(), "{full:#}");
    let listing = v.store.list("tank/db", &trusted).await.unwrap();
    assert_eq!(listing.manifests.len(), 1, "{:?}", listing.manifests);
    assert_ne!(listing.manifests[0].manifest.stream, cut);
    assert_eq!(listing.incomplete, vec![cut.clone()]);

    // The chain restores from the bucket, passing over the cut stream, and
    // lands the source's snapshot.
    let tip = full["to_guid"].as_u64().unwrap();
    let chain = manifest::chain(&listing.manifests, &listing.incomplete, "tank/db", tip).unwrap();
    assert_eq!(chain.len(), 1);
    let sim = SimBackend::new();
    sim.add_pool("restore", 10_000_000_000).unwrap();
    let dest = DatasetName::parse("restore/db").unwrap();
    let mut bytes = Vec::new();
    v.store
        .restore_stream(chain[0], &v.recovery, 2, &mut bytes)
        .await
        .unwrap();
    sim.receive(&dest, &RecvSpec::default(), &mut &bytes[..])
        .unwrap();
    let restored = sim.list_snapshots(&dest).unwrap();
    assert!(restored.iter().any(|s| s.guid == tip), "{restored:?}");
    let source = on_disk(&agent, "tank/db").expect("the source dataset");
    assert!(source.iter().any(|(_, g, _)| *g == tip), "{source:?}");
}

#[test]
fn recovery_keygen_writes_a_secret_the_agent_reads_and_prints_its_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recovery.key");
    let keygen = || {
        std::process::Command::new(bin_dir().join("zdr-coordinator"))
            .arg("recovery-keygen")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = keygen();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let secret = seal::parse_secret(text.trim()).unwrap();
    assert_eq!(seal::recipient_id(&PublicKey::from(&secret)), printed);
    // What a bucket task's checker takes as a recipient.
    assert!(zdr_schemas::buckets::recipient_key(&printed).is_ok());
    // Never overwritten.
    let again = keygen();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwritten"),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

/// The streams (by id) of tank/db with a manifest, and whether every
/// incremental's parent is among them; `None` when the listing raced a
/// delete (a manifest listed, then gone before it was read).
async fn bucket_chains(v: &Vault, trusted: &TrustedSigners) -> Option<(Vec<String>, bool)> {
    let listing = v.store.list("tank/db", trusted).await.ok()?;
    let hashes: std::collections::HashSet<&str> =
        listing.manifests.iter().map(|m| m.hash.as_str()).collect();
    let whole = listing.manifests.iter().all(|m| {
        m.manifest
            .parent
            .as_deref()
            .is_none_or(|p| hashes.contains(p))
    });
    let streams = listing
        .manifests
        .iter()
        .map(|m| m.manifest.stream.clone())
        .collect();
    Some((streams, whole))
}

/// The coordinator's audit records (`ZDR_AUDIT`), oldest first.
async fn audit_records(fleet: &Fleet) -> Vec<Value> {
    let js = async_nats::jetstream::new(fleet.nats.client().await);
    let Ok(mut stream) = js.get_stream("ZDR_AUDIT").await else {
        return Vec::new();
    };
    let Ok(info) = stream.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(serde_json::from_slice(&m.payload).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_prunes_whole_expired_chains_tip_first_and_keeps_the_newest() {
    let mut v = vault("1s").await;
    // Fulls every 6 s, locks and retention of 2 s, a pass every 2 s: old
    // chains expire within seconds. The coordinator's keys are its own file.
    let prune_keys = v.dir.path().join("prune.credentials");
    std::fs::copy(v.dir.path().join("vault.credentials"), &prune_keys).unwrap();
    for (from, to) in [
        ("full_every: 1h", "full_every: 6s".to_string()),
        (
            "retain: 1h }",
            format!(
                "retain: 2s }}\n      prune: {{ credentials: {{ file: {} }}, every: 2s }}",
                prune_keys.display()
            ),
        ),
    ] {
        assert!(v.tasks.contains(from), "{from:?}");
        v.tasks = v.tasks.replacen(from, &to, 1);
    }
    // Left by others: a cut upload (a segment, no manifest) and an object
    // outside the streams; the first goes once old, the second never.
    let client = v.store.client();
    let cut = "zdr/streams/tank%2Fdb/00000000000000000000000000000cut/seg/00000000";
    let other = "zdr/notes/keep-me";
    for key in [cut, other] {
        client
            .put_object()
            .bucket("zdr-vault")
            .key(key)
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let fleet = Fleet::start(POLICY, Some(&v.tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    let _agent = uploader(&fleet, &v, 1_000_000);
    let mut trusted = TrustedSigners::default();
    trusted.trust(
        "node-a1",
        ManifestSigner::new("node-a1", v.signing.clone()).verifying_key(),
    );

    // The first full, as its upload committed it.
    let (_, list) = committed(&c, 1).await;
    let first = list[0]["stream"].as_str().unwrap().to_string();
    assert!(list[0]["from_guid"].is_null(), "{list:#?}");

    // Until the first chain is gone, every look at the bucket finds whole
    // chains: an incremental is never left without its parent.
    let mut looks = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the first chain (full {first}) was not pruned within 120 s; coordinator log:\n{}",
            c.proc.output()
        );
        if let Some((streams, whole)) = bucket_chains(&v, &trusted).await {
            looks += 1;
            assert!(whole, "a chain lost a base: {streams:?}");
            if !streams.contains(&first) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(looks >= 3, "only {looks} looks at the bucket");

    // The newest chain stays and restores: its tip verifies back to a full.
    let (_, list) = committed(&c, 1).await;
    let tip = list.last().unwrap()["to_guid"].as_u64().unwrap();
    let planned = v
        .store
        .plan_restore("tank/db", tip, &trusted)
        .await
        .unwrap();
    assert!(planned.chain[0].manifest.from_guid.is_none());

    // The cut upload went; the object outside the streams did not.
    let keys = wait_for("the cut upload to go", Duration::from_secs(30), || async {
        let out = client
            .list_objects_v2()
            .bucket("zdr-vault")
            .prefix("zdr/")
            .send()
            .await
            .ok()?;
        let keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        (!keys.iter().any(|k| k == cut)).then_some(keys)
    })
    .await;
    assert!(keys.iter().any(|k| k == other), "{keys:?}");

    // Every delete was audited first: an intent, then its outcome, per stream.
    let records = audit_records(&fleet).await;
    eprintln!(
        "{looks} looks at the bucket; {} audit records, {} deletes done",
        records.len(),
        records.iter().filter(|r| r["outcome"] == "done").count()
    );
    let first_target = records
        .iter()
        .position(|r| r["target"].as_str().unwrap().contains(&first))
        .unwrap_or_else(|| panic!("no audit record of {first}: {records:#?}"));
    assert_eq!(records[first_target]["outcome"], "intent");
    assert_eq!(records[first_target]["action"], "delete-stream");
    assert!(
        records[first_target + 1..]
            .iter()
            .any(|r| r["target"] == records[first_target]["target"] && r["outcome"] == "done"),
        "{records:#?}"
    );
    for (i, r) in records.iter().enumerate() {
        if r["outcome"] == "done" {
            assert!(
                records[..i]
                    .iter()
                    .any(|p| p["target"] == r["target"] && p["outcome"] == "intent"),
                "deleted before its intent was recorded: {r}"
            );
        }
    }
    // The upload record forgot the pruned streams: restore points offer
    // only what is still in the bucket.
    wait_for(
        "the upload record to forget the pruned chain",
        Duration::from_secs(30),
        || async {
            let (_, list) = committed(&c, 1).await;
            (!list.iter().any(|m| m["stream"] == first.as_str())).then_some(())
        },
    )
    .await;
    let _ = &v.weed;
}

/// The upload record's last verification once `pick` accepts it.
async fn verified(c: &Coordinator, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(120), || async {
        let all = jobs(c).await;
        let v = job_for(&all, "vault", "node-a1")?["upload"]["verified"].clone();
        (!v.is_null() && pick(&v)).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_re_reads_its_streams_on_schedule_and_a_lost_segment_is_reported() {
    let mut v = vault("30m").await;
    // Without a lock (the bucket keeps versions), so a segment can be lost;
    // verified every 2 s.
    for (from, to) in [
        ("      object_lock: { mode: governance, retain: 1h }\n", ""),
        ("    recipients:", "    verify_every: 2s\n    recipients:"),
    ] {
        assert!(v.tasks.contains(from), "{from:?}");
        v.tasks = v.tasks.replacen(from, to, 1);
    }
    let fleet = Fleet::start(POLICY, Some(&v.tasks)).await;
    let c = fleet.coordinator("c1");
    c.wait_ready().await;
    let _agent = uploader(&fleet, &v, 20_000_000);
    let (_, list) = committed(&c, 1).await;
    let full = &list[0];

    let ok = verified(&c, "a clean verification", |v| v["ok"] == true).await;
    let check = &ok["check"];
    assert!(check["manifests"].as_u64().unwrap() >= 1, "{ok:#}");
    assert!(
        check["segments"].as_u64().unwrap() >= full["segments"].as_u64().unwrap(),
        "{ok:#}"
    );
    assert_eq!(check["problems"], serde_json::json!([]), "{ok:#}");

    // The full's segment 1 is lost: its one version deleted.
    let stream = full["stream"].as_str().unwrap();
    let object = format!("zdr/streams/tank%2Fdb/{stream}/seg/00000001");
    let client = v.store.client();
    let versions = client
        .list_object_versions()
        .bucket("zdr-vault")
        .prefix(&object)
        .send()
        .await
        .unwrap();
    for version in versions.versions() {
        client
            .delete_object()
            .bucket("zdr-vault")
            .key(&object)
            .set_version_id(version.version_id().map(str::to_string))
            .send()
            .await
            .unwrap();
    }
    let bad = verified(&c, "the lost segment reported", |v| v["ok"] == false).await;
    let problems = bad["check"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains(&object)),
        "{bad:#}"
    );
    let (_, metrics) = c.get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("zdr_bucket_verifications_total")
                && l.contains(r#"result="failed""#)
                && l.contains(r#"task="vault""#)),
        "{metrics}"
    );
    let _ = &v.weed;
}
