//! Restores from a bucket into a backend (`replication::download`), against
//! a real S3 server (SeaweedFS on loopback) and simulated pools: the chain
//! lands by GUID, and a segment altered in the bucket fails the restore
//! before any of its bytes reach `zfs receive`.

mod support {
    pub mod seaweed;
}

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use support::seaweed::Seaweed;
use tokio::sync::watch;
use x25519_dalek::{PublicKey, StaticSecret};
use zdr_agent::offsite::manifest::{ManifestSigner, SendFlags, TrustedSigners, VerifiedManifest};
use zdr_agent::offsite::segment_key;
use zdr_agent::offsite::sizing::Sizing;
use zdr_agent::offsite::store::{Store, StoreError, UploadRequest};
use zdr_agent::replication::download::{restore_chain, DownloadError};
use zdr_agent::transfer::Progress;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::{Backend, SendBase, SendSpec, ZfsError};
use zdr_common::DatasetName;

const MIB: u64 = 1 << 20;

struct Source {
    sim: SimBackend,
    dataset: DatasetName,
    /// (name, GUID) of @s1 and @s2.
    snaps: Vec<(String, u64)>,
}

/// tank/db with two snapshots of 3 MiB each: streams of several 1 MiB segments.
fn source() -> Source {
    let sim = SimBackend::new().with_snapshot_bytes(3 * MIB);
    sim.add_pool("tank", 10_000_000_000).unwrap();
    let dataset = DatasetName::parse("tank/db").unwrap();
    sim.create_dataset(&dataset).unwrap();
    for name in ["s1", "s2"] {
        sim.snapshot(std::slice::from_ref(&dataset), name, false)
            .unwrap();
    }
    let snaps = sim
        .list_snapshots(&dataset)
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.guid))
        .collect();
    Source {
        sim,
        dataset,
        snaps,
    }
}

fn send(src: &Source, spec: SendSpec) -> Vec<u8> {
    let mut out = Vec::new();
    src.sim.send(&spec, &mut out).unwrap();
    out
}

/// Uploads the full of @s1 and the incremental @s1 → @s2; returns both manifests.
async fn upload(
    store: &Store,
    src: &Source,
    signer: &ManifestSigner,
    recovery: &StaticSecret,
) -> (VerifiedManifest, VerifiedManifest) {
    let full = send(
        src,
        SendSpec::Full {
            dataset: src.dataset.clone(),
            snapshot: "s1".into(),
            raw: true,
        },
    );
    let incr = send(
        src,
        SendSpec::Incremental {
            dataset: src.dataset.clone(),
            from: SendBase::Snapshot("s1".into()),
            to: "s2".into(),
            intermediates: false,
            raw: true,
        },
    );
    assert!(full.len() as u64 > 2 * MIB && incr.len() as u64 > 2 * MIB);
    let req = |from: Option<u64>, to: u64, parent: Option<&VerifiedManifest>| UploadRequest {
        dataset: "tank/db".into(),
        from_guid: from,
        to_guid: to,
        to_name: "s".into(),
        flags: SendFlags {
            raw: true,
            ..SendFlags::default()
        },
        parent: parent.map(VerifiedManifest::as_parent),
        recipients: vec![PublicKey::from(recovery)],
        lock: None,
        storage_class: None,
        sizing: Sizing::fixed(MIB, 2 * MIB, 2).unwrap(),
        now: 1_780_000_000,
    };
    let (g1, g2) = (src.snaps[0].1, src.snaps[1].1);
    let f = store
        .upload(&full[..], req(None, g1, None), signer)
        .await
        .unwrap();
    let i = store
        .upload(&incr[..], req(Some(g1), g2, Some(&f.manifest)), signer)
        .await
        .unwrap();
    (f.manifest, i.manifest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_lands_by_guid_and_an_altered_segment_reaches_no_receive() {
    let weed = Seaweed::start();
    // No versions: an overwrite replaces the object, as storage damage would.
    let store = weed.bucket("restore-plain", false).await;
    let signer = ManifestSigner::new("node-a1", SigningKey::generate(&mut OsRng));
    let mut trusted = TrustedSigners::default();
    trusted.trust("node-a1", signer.verifying_key());
    let recovery = StaticSecret::random_from_rng(OsRng);
    let src = source();
    let (full, incr) = upload(&store, &src, &signer, &recovery).await;

    let dst = Arc::new(SimBackend::new());
    dst.add_pool("tank", 10_000_000_000).unwrap();
    let backend: Arc<dyn Backend> = dst.clone();
    let (progress, _) = watch::channel(Progress::default());
    let whole = DatasetName::parse("tank/whole").unwrap();
    let tip = src.snaps[1].1;
    let r = restore_chain(
        &store,
        &trusted,
        &recovery,
        backend.clone(),
        "tank/db",
        tip,
        &whole,
        &progress,
    )
    .await
    .unwrap();
    assert_eq!(r.landed.guid, tip);
    assert_eq!(r.chain, vec![full.clone(), incr.clone()]);
    assert!(r.skipped.is_empty());
    assert_eq!(
        r.bytes,
        full.manifest.stream_bytes + incr.manifest.stream_bytes
    );
    assert_eq!(progress.borrow().bytes, r.bytes);
    let landed: Vec<u64> = dst
        .list_snapshots(&whole)
        .unwrap()
        .iter()
        .map(|s| s.guid)
        .collect();
    assert_eq!(landed, vec![src.snaps[0].1, tip]);

    // One byte of the full's second segment flipped in the bucket.
    let object = segment_key("zdr/", "tank/db", &full.stream, 1);
    let body = store
        .client()
        .get_object()
        .bucket("restore-plain")
        .key(&object)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let mut altered = body.to_vec();
    altered[4096] ^= 0x01;
    use base64::Engine;
    use md5::Digest as _;
    store
        .client()
        .put_object()
        .bucket("restore-plain")
        .key(&object)
        .content_md5(base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&altered)))
        .body(altered.into())
        .send()
        .await
        .unwrap();
    let broken = DatasetName::parse("tank/broken").unwrap();
    let err = restore_chain(
        &store,
        &trusted,
        &recovery,
        backend.clone(),
        "tank/db",
        tip,
        &broken,
        &progress,
    )
    .await
    .unwrap_err();
    match &err {
        DownloadError::Store(StoreError::SegmentHash { object: o, .. }) => assert_eq!(o, &object),
        other => panic!("expected the altered segment to be named, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&object) && text.contains("restore an older chain or another copy"),
        "{text}"
    );
    // No snapshot landed: the receive saw segment 0 (verified) and then
    // the end of its input; what it kept is only a partial state, which
    // the agent drops (`receive -A`, audited) after a failed restore.
    match dst.list_snapshots(&broken) {
        Ok(s) => assert!(s.is_empty(), "{s:?}"),
        Err(ZfsError::NotFound { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    assert!(!dst.list_snapshots(&whole).unwrap().is_empty());
}
