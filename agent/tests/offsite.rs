//! The offsite tier against a real S3 server with object lock: SeaweedFS on
//! loopback (`weed mini`), one per test.

mod support {
    pub mod seaweed;
}

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use support::seaweed::Seaweed;
use x25519_dalek::{PublicKey, StaticSecret};
use zdr_agent::offsite::manifest::{
    ChainError, ManifestError, ManifestSigner, SendFlags, TrustedSigners, VerifiedManifest,
};
use zdr_agent::offsite::seal::SealError;
use zdr_agent::offsite::segment_key;
use zdr_agent::offsite::sizing::Sizing;
use zdr_agent::offsite::store::{LockMode, ObjectLock, Store, StoreError, UploadRequest};

const NOW: i64 = 1_780_000_000;
const MIB: u64 = 1 << 20;

/// A deterministic stand-in for a `zfs send` stream (xorshift: incompressible).
fn stream_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Keys {
    signer: ManifestSigner,
    trusted: TrustedSigners,
    recovery: StaticSecret,
}

fn keys() -> Keys {
    keys_of("agent-n1")
}

fn keys_of(kid: &str) -> Keys {
    let signer = ManifestSigner::new(kid, SigningKey::generate(&mut OsRng));
    let mut trusted = TrustedSigners::default();
    trusted.trust(kid, signer.verifying_key());
    Keys {
        signer,
        trusted,
        recovery: StaticSecret::random_from_rng(OsRng),
    }
}

/// Locks must lie in the server's future, so this one reads the clock.
fn compliance() -> Option<ObjectLock> {
    Some(ObjectLock {
        mode: LockMode::Compliance,
        retain_until: chrono::Utc::now().timestamp() + 86_400,
    })
}

fn request(
    keys: &Keys,
    from: Option<u64>,
    to: u64,
    parent: Option<&VerifiedManifest>,
    lock: Option<ObjectLock>,
    sizing: Sizing,
) -> UploadRequest {
    UploadRequest {
        dataset: "tank/vm/disk0".into(),
        from_guid: from,
        to_guid: to,
        to_name: format!("zdr-{to}"),
        flags: SendFlags {
            raw: true,
            ..SendFlags::default()
        },
        parent: parent.map(VerifiedManifest::as_parent),
        recipients: vec![PublicKey::from(&keys.recovery)],
        lock,
        storage_class: None,
        sizing,
        now: NOW,
    }
}

async fn restore(
    store: &Store,
    m: &VerifiedManifest,
    recovery: &StaticSecret,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    store.restore_stream(m, recovery, 2, &mut out).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_round_trip_byte_identical_through_a_locked_bucket() {
    let weed = Seaweed::start();
    let store = weed.bucket("offsite-locked", true).await;
    assert!(store.check(true).await.unwrap());
    let k = keys();

    // Full: 3.5 segments of 1 MiB, one PUT each, 3 in flight.
    let full_bytes = stream_bytes((3 * MIB + MIB / 2) as usize, 1);
    let small = Sizing::fixed(MIB, 2 * MIB, 3).unwrap();
    let full = store
        .upload(
            &full_bytes[..],
            request(&k, None, 1001, None, compliance(), small),
            &k.signer,
        )
        .await
        .unwrap();
    assert_eq!(full.manifest.manifest.segments.len(), 4);
    assert!(full
        .manifest
        .manifest
        .segments
        .iter()
        .all(|s| s.version_id.is_some()));

    // Incremental: segments of 11 MiB in 5 MiB multipart parts, 2 in flight.
    let inc_bytes = stream_bytes((25 * MIB) as usize, 2);
    let multipart = Sizing::fixed(11 * MIB, 5 * MIB, 2).unwrap();
    assert_eq!(multipart.parts_per_segment(), 3);
    let inc = store
        .upload(
            &inc_bytes[..],
            request(
                &k,
                Some(1001),
                1002,
                Some(&full.manifest),
                compliance(),
                multipart,
            ),
            &k.signer,
        )
        .await
        .unwrap();
    assert_eq!(inc.manifest.manifest.segments.len(), 3);
    assert_eq!(
        inc.manifest.manifest.parent.as_deref(),
        Some(full.manifest.hash.as_str())
    );

    let chain = store
        .plan_restore("tank/vm/disk0", 1002, &k.trusted)
        .await
        .unwrap()
        .chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], full.manifest);
    assert_eq!(chain[1], inc.manifest);
    assert_eq!(
        restore(&store, &chain[0], &k.recovery).await.unwrap(),
        full_bytes
    );
    assert_eq!(
        restore(&store, &chain[1], &k.recovery).await.unwrap(),
        inc_bytes
    );

    // A stream of exactly two segments, and an empty one.
    for (len, to) in [(2 * MIB as usize, 1003), (0, 1004)] {
        let bytes = stream_bytes(len, 3);
        let up = store
            .upload(
                &bytes[..],
                request(&k, None, to, None, compliance(), small),
                &k.signer,
            )
            .await
            .unwrap();
        assert_eq!(
            up.manifest.manifest.segments.len(),
            (len as u64 / MIB).max(1) as usize
        );
        assert_eq!(
            restore(&store, &up.manifest, &k.recovery).await.unwrap(),
            bytes
        );
    }

    // Someone else's recovery key opens nothing.
    let err = restore(&store, &chain[0], &StaticSecret::random_from_rng(OsRng))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Seal {
                source: SealError::NotARecipient { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_objects_refuse_deletion_and_overwrites_never_reach_a_restore() {
    let weed = Seaweed::start();
    let store = weed.bucket("offsite-worm", true).await;
    let k = keys();
    let bytes = stream_bytes((2 * MIB + 10) as usize, 4);
    let up = store
        .upload(
            &bytes[..],
            request(
                &k,
                None,
                7,
                None,
                compliance(),
                Sizing::fixed(MIB, 2 * MIB, 2).unwrap(),
            ),
            &k.signer,
        )
        .await
        .unwrap();
    let seg = &up.manifest.manifest.segments[1];
    let object = segment_key("zdr/", "tank/vm/disk0", &up.manifest.stream, 1);
    let client = store.client();

    // Deleting the locked version is refused by the server.
    let err = client
        .delete_object()
        .bucket("offsite-worm")
        .key(&object)
        .version_id(seg.version_id.clone().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
        Some("AccessDenied"),
        "{err:?}"
    );
    // So is shortening its retention.
    let shorten = client
        .put_object_retention()
        .bucket("offsite-worm")
        .key(&object)
        .version_id(seg.version_id.clone().unwrap())
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(NOW))
                .build(),
        )
        .send()
        .await;
    assert!(
        shorten.is_err(),
        "shortening a compliance lock was accepted"
    );

    // An overwrite only adds a version; a delete only adds a delete marker.
    put(&store, &object, b"garbage".to_vec()).await;
    let first = segment_key("zdr/", "tank/vm/disk0", &up.manifest.stream, 0);
    client
        .delete_object()
        .bucket("offsite-worm")
        .key(&first)
        .send()
        .await
        .unwrap();
    let versions = client
        .list_object_versions()
        .bucket("offsite-worm")
        .prefix(&object)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 2);

    // The restore reads the versions the manifest pinned.
    let chain = store
        .plan_restore("tank/vm/disk0", 7, &k.trusted)
        .await
        .unwrap()
        .chain;
    assert_eq!(
        restore(&store, &chain[0], &k.recovery).await.unwrap(),
        bytes
    );
}

async fn get(store: &Store, object: &str) -> Vec<u8> {
    let out = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(object)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().to_vec()
}

/// A PUT as a user with write access would do it, over whatever is there.
async fn put(store: &Store, object: &str, body: Vec<u8>) {
    use base64::Engine;
    use md5::Digest;
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
    store
        .client()
        .put_object()
        .bucket(store.bucket())
        .key(object)
        .content_md5(md5)
        .body(aws_sdk_s3::primitives::ByteStream::from(body))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_segment_or_manifest_is_caught_before_any_of_it_is_used() {
    let weed = Seaweed::start();
    // No lock and no versions: an overwrite replaces the object.
    let store = weed.bucket("offsite-plain", false).await;
    assert!(!store.check(false).await.unwrap());
    let k = keys();
    let bytes = stream_bytes((3 * MIB) as usize + 5, 5);
    let up = store
        .upload(
            &bytes[..],
            request(
                &k,
                None,
                9,
                None,
                None,
                Sizing::fixed(MIB, 2 * MIB, 2).unwrap(),
            ),
            &k.signer,
        )
        .await
        .unwrap();
    assert!(up
        .manifest
        .manifest
        .segments
        .iter()
        .all(|s| s.version_id.is_none()));
    // Verification re-reads every segment: all well before the damage.
    let clean = store.verify("tank/vm/disk0", &k.trusted, 2).await.unwrap();
    assert_eq!((clean.manifests, clean.incomplete), (1, 0), "{clean:?}");
    assert_eq!(clean.segments, up.manifest.manifest.segments.len() as u64);
    assert!(clean.bytes > bytes.len() as u64, "{clean:?}");
    assert!(clean.problems.is_empty(), "{clean:?}");
    let object = segment_key("zdr/", "tank/vm/disk0", &up.manifest.stream, 1);
    let mut stored = get(&store, &object).await;
    stored[1000] ^= 0x40;
    put(&store, &object, stored).await;
    // Verification finds the damaged segment, and only it.
    let damaged = store.verify("tank/vm/disk0", &k.trusted, 2).await.unwrap();
    assert_eq!(damaged.problems.len(), 1, "{damaged:?}");
    assert!(
        damaged.problems[0].contains(&object) && damaged.problems[0].contains("do not match"),
        "{damaged:?}"
    );
    assert_eq!(damaged.segments, clean.segments - 1);

    let chain = store
        .plan_restore("tank/vm/disk0", 9, &k.trusted)
        .await
        .unwrap()
        .chain;
    let mut out = Vec::new();
    let err = store
        .restore_stream(&chain[0], &k.recovery, 1, &mut out)
        .await
        .unwrap_err();
    match &err {
        StoreError::SegmentHash {
            bucket, object: o, ..
        } => {
            assert_eq!(bucket, "offsite-plain");
            assert_eq!(o, &object);
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&object), "{err}");
    // Only segment 0 reached the writer.
    assert_eq!(out, bytes[..MIB as usize]);

    // A manifest altered in place fails its signature.
    let key = &up.manifest_key;
    let text = String::from_utf8(get(&store, key).await).unwrap();
    let forged = text.replace("\"to_guid\":9", "\"to_guid\":8");
    assert_ne!(forged, text);
    put(&store, key, forged.into_bytes()).await;
    let forged = store.verify("tank/vm/disk0", &k.trusted, 2).await.unwrap();
    assert_eq!(forged.manifests, 0, "{forged:?}");
    assert!(
        forged
            .problems
            .iter()
            .any(|p| p.contains(key.as_str()) && p.contains("signature")),
        "{forged:?}"
    );
    let err = store
        .plan_restore("tank/vm/disk0", 9, &k.trusted)
        .await
        .unwrap_err();
    // Skipped, named, and no chain is left to restore.
    match &err {
        StoreError::NoChain {
            source, skipped, ..
        } => {
            assert!(
                matches!(**source, ChainError::NotFound { guid: 9, .. }),
                "{err}"
            );
            assert!(
                matches!(&skipped[..], [ManifestError::BadSignature { object }] if object == key),
                "{err}"
            );
        }
        other => panic!("expected no chain, got {other}"),
    }
    // A signer nobody trusts.
    let stranger = keys_of("agent-n9");
    let err = store
        .plan_restore("tank/vm/disk0", 9, &stranger.trusted)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoChain { skipped, .. }
            if matches!(&skipped[..], [ManifestError::UnknownSigner { .. }])),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_buckets_credentials_and_chains_get_clear_errors_and_write_nothing() {
    let weed = Seaweed::start();
    let plain = weed.bucket("offsite-nolock", false).await;
    let err = plain.check(true).await.unwrap_err();
    assert!(matches!(err, StoreError::NoObjectLock { ref bucket } if bucket == "offsite-nolock"));
    assert!(err.to_string().contains("object lock enabled"), "{err}");

    let missing = Store::new(&weed.config("offsite-missing"));
    let err = missing.check(false).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NoBucket { ref bucket, .. } if bucket == "offsite-missing"),
        "{err}"
    );

    let mut wrong = weed.config("offsite-nolock");
    wrong.secret_access_key = "not-the-secret".into();
    let err = Store::new(&wrong).check(false).await.unwrap_err();
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("credentials reference"), "{err}");
    let mut unknown = weed.config("offsite-nolock");
    unknown.access_key_id = "nobody".into();
    let err = Store::new(&unknown).check(false).await.unwrap_err();
    assert!(matches!(err, StoreError::Credentials { .. }), "{err}");

    // An incremental without its parent's manifest is refused before any byte goes up.
    let k = keys();
    let sizing = Sizing::fixed(MIB, 2 * MIB, 1).unwrap();
    let err = plain
        .upload(
            &b"data"[..],
            request(&k, Some(5), 6, None, None, sizing),
            &k.signer,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Chain { source, .. } if matches!(**source, ChainError::NotFound { guid: 5, .. })),
        "{err}"
    );
    let listing = plain.list("tank/vm/disk0", &k.trusted).await.unwrap();
    assert!(listing.manifests.is_empty() && listing.incomplete.is_empty());

    // An upload whose source fails midway leaves segments and no manifest:
    // never restored, never continued from.
    let broken = FailAfter {
        data: stream_bytes(3 * MIB as usize, 6),
        at: 2 * MIB as usize + 100,
    };
    let err = plain
        .upload(broken, request(&k, None, 11, None, None, sizing), &k.signer)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Source(_)), "{err}");
    let listing = plain.list("tank/vm/disk0", &k.trusted).await.unwrap();
    assert!(listing.manifests.is_empty());
    assert_eq!(listing.incomplete.len(), 1);
    let err = plain
        .plan_restore("tank/vm/disk0", 11, &k.trusted)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("interrupted uploads"), "{err}");
}

/// A reader that fails after `at` bytes, like a `zfs send` that dies.
struct FailAfter {
    data: Vec<u8>,
    at: usize,
}

impl tokio::io::AsyncRead for FailAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("zfs send died")));
        }
        let n = buf.remaining().min(self.at).min(64 * 1024);
        let chunk: Vec<u8> = self.data.drain(..n).collect();
        buf.put_slice(&chunk);
        self.at -= n;
        std::task::Poll::Ready(Ok(()))
    }
}
