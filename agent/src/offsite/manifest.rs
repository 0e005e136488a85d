//! Stream manifests: what one uploaded stream holds, signed, and the chain
//! they form (pure).
//!
//! A manifest object is `ZDRM1 <kid> <base64 ed25519 signature>\n<JSON>`. The
//! signature covers `DOMAIN \0 kid \0 JSON bytes`, the exact bytes stored, and
//! is checked (`verify_strict`) before the JSON is parsed. Chains are worked
//! out from snapshot GUIDs and parent-manifest hashes, never from names.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hex;
use super::seal::{StreamId, WrappedKey};

const MAGIC: &[u8] = b"ZDRM1 ";
const DOMAIN: &[u8] = b"zdr-offsite-manifest-v1";
pub const VERSION: u32 = 1;

/// The `zfs send` flags a stream was made with. They must not change along a
/// chain: a raw full with non-raw incrementals does not restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFlags {
    /// `-w`: encrypted datasets leave encrypted.
    pub raw: bool,
    /// `-c`: blocks as compressed on disk.
    pub compressed: bool,
    /// `-L`: blocks over 128 KiB kept whole.
    pub large_blocks: bool,
    /// `-e`: embedded data blocks kept.
    pub embedded: bool,
}

/// One stored segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    pub index: u64,
    /// Bytes of the stored (sealed) object.
    pub size: u64,
    /// SHA-256 of the stored object, lowercase hex; checked before decrypting.
    pub sha256: String,
    /// The object version written, where the bucket keeps versions: a restore
    /// reads exactly it, whatever was put over it later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// [`StreamId`] in hex; the objects live under it.
    pub stream: String,
    pub dataset: String,
    /// GUID of the snapshot the incremental starts from; `None` for a full.
    pub from_guid: Option<u64>,
    /// GUID of the snapshot the stream lands.
    pub to_guid: u64,
    /// The snapshot's name when it was sent; shown to people, never matched.
    pub to_name: String,
    pub flags: SendFlags,
    /// Bytes of the `zfs send` stream (plaintext).
    pub stream_bytes: u64,
    /// Plaintext bytes per segment (the last may be shorter).
    pub segment_size: u64,
    pub segments: Vec<SegmentEntry>,
    /// The data key, wrapped for each recovery key.
    pub keys: Vec<WrappedKey>,
    /// SHA-256 (hex) of the parent manifest's stored bytes; `None` for a full.
    pub parent: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// Every object of this stream is locked until then (unix seconds).
    pub retain_until: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {object}: malformed: {why}")]
    Malformed { object: String, why: String },
    #[error(
        "manifest {object}: signed by unknown key {kid:?}; add the agent's manifest key to the \
         trusted signers, or treat the bucket as tampered with"
    )]
    UnknownSigner { object: String, kid: String },
    #[error("manifest {object}: the signature does not verify (altered or forged)")]
    BadSignature { object: String },
    #[error("manifest {object}: invalid after a valid signature: {why}")]
    Invalid { object: String, why: String },
}

/// Signs manifests with one agent's key.
pub struct ManifestSigner {
    kid: String,
    key: SigningKey,
}

impl ManifestSigner {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        ManifestSigner {
            kid: kid.into(),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The bytes to store.
    pub fn sign(&self, manifest: &Manifest) -> Vec<u8> {
        let json = serde_json::to_vec(manifest).expect("manifest serializes");
        let sig = self.key.sign(&signed_bytes(&self.kid, &json));
        let mut out = Vec::with_capacity(json.len() + 128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.kid.as_bytes());
        out.push(b' ');
        out.extend_from_slice(B64.encode(sig.to_bytes()).as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&json);
        out
    }
}

fn signed_bytes(kid: &str, json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + kid.len() + json.len() + 2);
    m.extend_from_slice(DOMAIN);
    m.push(0);
    m.extend_from_slice(kid.as_bytes());
    m.push(0);
    m.extend_from_slice(json);
    m
}

/// The keys whose manifests are believed, by key id.
#[derive(Clone, Default)]
pub struct TrustedSigners(HashMap<String, VerifyingKey>);

impl TrustedSigners {
    pub fn trust(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.0.insert(kid.into(), key);
    }
}

/// A manifest whose signature and shape were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    pub manifest: Manifest,
    pub stream: StreamId,
    /// SHA-256 (hex) of the stored bytes: what a child's `parent` names.
    pub hash: String,
    pub kid: String,
}

/// What a child stream needs of its parent manifest: the parent as stored
/// (its hash) and what it lands. An agent with write-only keys cannot read
/// the bucket, so the coordinator hands it this from the upload's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub stream: String,
    /// SHA-256 (hex) of the parent manifest's stored bytes.
    pub hash: String,
    pub dataset: String,
    pub to_guid: u64,
    pub flags: SendFlags,
}

impl VerifiedManifest {
    pub fn as_parent(&self) -> ParentRef {
        ParentRef {
            stream: self.manifest.stream.clone(),
            hash: self.hash.clone(),
            dataset: self.manifest.dataset.clone(),
            to_guid: self.manifest.to_guid,
            flags: self.manifest.flags,
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Checks a stored manifest (`object` names it in errors).
pub fn verify(
    object: &str,
    bytes: &[u8],
    trusted: &TrustedSigners,
) -> Result<VerifiedManifest, ManifestError> {
    let malformed = |why: &str| ManifestError::Malformed {
        object: object.to_string(),
        why: why.to_string(),
    };
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| malformed("does not start with \"ZDRM1 \""))?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| malformed("no newline after the signature line"))?;
    let (line, json) = (&rest[..nl], &rest[nl + 1..]);
    let line = std::str::from_utf8(line).map_err(|_| malformed("signature line is not UTF-8"))?;
    let (kid, sig) = line
        .split_once(' ')
        .ok_or_else(|| malformed("signature line is not \"<kid> <signature>\""))?;
    let key = trusted
        .0
        .get(kid)
        .ok_or_else(|| ManifestError::UnknownSigner {
            object: object.to_string(),
            kid: kid.to_string(),
        })?;
    let sig: [u8; 64] = B64
        .decode(sig)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed("signature is not 64 bytes of base64"))?;
    key.verify_strict(&signed_bytes(kid, json), &Signature::from_bytes(&sig))
        .map_err(|_| ManifestError::BadSignature {
            object: object.to_string(),
        })?;
    let invalid = |why: String| ManifestError::Invalid {
        object: object.to_string(),
        why,
    };
    let manifest: Manifest = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    if manifest.version != VERSION {
        return Err(invalid(format!(
            "version {} (this agent reads {VERSION})",
            manifest.version
        )));
    }
    let stream = StreamId::parse(&manifest.stream).ok_or_else(|| {
        invalid(format!(
            "stream id {:?} is not 32 hex digits",
            manifest.stream
        ))
    })?;
    if manifest.from_guid.is_some() != manifest.parent.is_some() {
        return Err(invalid(
            "an incremental needs a parent manifest and a full has none".into(),
        ));
    }
    if manifest.segments.is_empty()
        || manifest
            .segments
            .iter()
            .enumerate()
            .any(|(i, s)| s.index != i as u64)
    {
        return Err(invalid("segments are not numbered 0, 1, 2, ...".into()));
    }
    if manifest.keys.is_empty() {
        return Err(invalid("no wrapped data key".into()));
    }
    Ok(VerifiedManifest {
        manifest,
        stream,
        hash: sha256_hex(bytes),
        kid: kid.to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error(
        "no manifest in the bucket lands snapshot GUID {guid} of {dataset}{}",
        incomplete_hint(.incomplete)
    )]
    NotFound {
        dataset: String,
        guid: u64,
        incomplete: Vec<String>,
    },
    #[error(
        "stream {stream} of {dataset} names parent manifest {parent}, which is not in the bucket \
         (deleted, or never committed); the chain is broken there: start a new full"
    )]
    MissingParent {
        dataset: String,
        stream: String,
        parent: String,
    },
    #[error(
        "stream {stream} starts from snapshot GUID {from_guid} of {dataset}, but its parent \
         manifest {parent_stream} lands {parent_dataset} GUID {parent_guid}"
    )]
    BrokenLink {
        dataset: String,
        stream: String,
        from_guid: u64,
        parent_stream: String,
        parent_dataset: String,
        parent_guid: u64,
    },
    #[error(
        "send flags change along the chain of {dataset}: stream {stream} has {flags:?}, its \
         parent {parent_stream} {parent_flags:?}; such a chain does not restore"
    )]
    FlagsChanged {
        dataset: String,
        stream: String,
        flags: SendFlags,
        parent_stream: String,
        parent_flags: SendFlags,
    },
    #[error("the chain of {dataset} loops back through stream {stream}")]
    Loop { dataset: String, stream: String },
}

fn incomplete_hint(incomplete: &[String]) -> String {
    if incomplete.is_empty() {
        String::new()
    } else {
        format!(
            "; streams {incomplete:?} have segments but no manifest (interrupted uploads): they \
             are never restored or continued from"
        )
    }
}

/// The chain that restores `target_guid` of `dataset`, full first.
///
/// `manifests` are the verified manifests in the bucket; `incomplete` the
/// stream ids that have segments but no manifest (named in the error only).
/// When several uploads land the target, the newest that chains wholly wins.
pub fn chain<'a>(
    manifests: &'a [VerifiedManifest],
    incomplete: &[String],
    dataset: &str,
    target_guid: u64,
) -> Result<Vec<&'a VerifiedManifest>, ChainError> {
    let mut candidates: Vec<&VerifiedManifest> = manifests
        .iter()
        .filter(|m| m.manifest.dataset == dataset && m.manifest.to_guid == target_guid)
        .collect();
    candidates.sort_by_key(|m| std::cmp::Reverse(m.manifest.created));
    let mut first_err = None;
    for tip in candidates {
        match walk(manifests, tip) {
            Ok(chain) => return Ok(chain),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| ChainError::NotFound {
        dataset: dataset.to_string(),
        guid: target_guid,
        incomplete: incomplete.to_vec(),
    }))
}

/// Checks that `parent` lands the snapshot a stream of `dataset` starts
/// from, with the same send flags.
pub fn check_link(
    dataset: &str,
    stream: &str,
    from_guid: u64,
    flags: SendFlags,
    parent: &ParentRef,
) -> Result<(), ChainError> {
    if parent.dataset != dataset || parent.to_guid != from_guid {
        return Err(ChainError::BrokenLink {
            dataset: dataset.to_string(),
            stream: stream.to_string(),
            from_guid,
            parent_stream: parent.stream.clone(),
            parent_dataset: parent.dataset.clone(),
            parent_guid: parent.to_guid,
        });
    }
    if parent.flags != flags {
        return Err(ChainError::FlagsChanged {
            dataset: dataset.to_string(),
            stream: stream.to_string(),
            flags,
            parent_stream: parent.stream.clone(),
            parent_flags: parent.flags,
        });
    }
    Ok(())
}

fn walk<'a>(
    manifests: &'a [VerifiedManifest],
    tip: &'a VerifiedManifest,
) -> Result<Vec<&'a VerifiedManifest>, ChainError> {
    let by_hash: HashMap<&str, &VerifiedManifest> =
        manifests.iter().map(|m| (m.hash.as_str(), m)).collect();
    let mut chain = vec![tip];
    let mut at = tip;
    while let (Some(from_guid), Some(parent)) = (at.manifest.from_guid, &at.manifest.parent) {
        let m = &at.manifest;
        let up = by_hash
            .get(parent.as_str())
            .ok_or_else(|| ChainError::MissingParent {
                dataset: m.dataset.clone(),
                stream: m.stream.clone(),
                parent: parent.clone(),
            })?;
        check_link(&m.dataset, &m.stream, from_guid, m.flags, &up.as_parent())?;
        if chain.len() > manifests.len() {
            return Err(ChainError::Loop {
                dataset: m.dataset.clone(),
                stream: m.stream.clone(),
            });
        }
        chain.push(up);
        at = up;
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn manifest(
        dataset: &str,
        from: Option<u64>,
        to: u64,
        parent: Option<&VerifiedManifest>,
    ) -> Manifest {
        Manifest {
            version: VERSION,
            stream: StreamId::generate().to_string(),
            dataset: dataset.into(),
            from_guid: from,
            to_guid: to,
            to_name: format!("snap-{to}"),
            flags: SendFlags {
                raw: true,
                ..SendFlags::default()
            },
            stream_bytes: 10,
            segment_size: 8,
            segments: vec![
                SegmentEntry {
                    index: 0,
                    size: 52,
                    sha256: "00".repeat(32),
                    version_id: None,
                },
                SegmentEntry {
                    index: 1,
                    size: 46,
                    sha256: "11".repeat(32),
                    version_id: Some("v1".into()),
                },
            ],
            keys: vec![WrappedKey {
                recipient: "r".into(),
                ephemeral: "e".into(),
                sealed: "s".into(),
            }],
            parent: parent.map(|p| p.hash.clone()),
            created: to as i64,
            retain_until: 1_000_000,
        }
    }

    struct Fixture {
        signer: ManifestSigner,
        trusted: TrustedSigners,
    }

    fn fixture() -> Fixture {
        let signer = ManifestSigner::new("agent-n1", SigningKey::generate(&mut OsRng));
        let mut trusted = TrustedSigners::default();
        trusted.trust("agent-n1", signer.verifying_key());
        Fixture { signer, trusted }
    }

    impl Fixture {
        fn stored(&self, m: &Manifest) -> VerifiedManifest {
            verify("obj", &self.signer.sign(m), &self.trusted).unwrap()
        }
    }

    #[test]
    fn signed_manifests_verify_and_hash_their_stored_bytes() {
        let f = fixture();
        let m = manifest("tank/a", None, 1, None);
        let bytes = f.signer.sign(&m);
        let v = verify("obj", &bytes, &f.trusted).unwrap();
        assert_eq!(v.manifest, m);
        assert_eq!(v.hash, sha256_hex(&bytes));
        assert_eq!(v.kid, "agent-n1");
    }

    #[test]
    fn a_bad_signature_or_an_unknown_signer_is_refused() {
        let f = fixture();
        let bytes = f.signer.sign(&manifest("tank/a", None, 1, None));
        // One byte of the JSON altered: the 10 → 11 of stream_bytes.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let altered = text.replace("\"stream_bytes\":10", "\"stream_bytes\":11");
        assert_ne!(altered, text);
        assert_eq!(
            verify("tank-a/manifest", altered.as_bytes(), &f.trusted),
            Err(ManifestError::BadSignature {
                object: "tank-a/manifest".into()
            })
        );
        let other = fixture();
        let err = verify("obj", &bytes, &other.trusted);
        assert!(
            matches!(err, Err(ManifestError::BadSignature { .. })),
            "{err:?}"
        );
        let err = verify("obj", &bytes, &TrustedSigners::default()).unwrap_err();
        assert!(matches!(err, ManifestError::UnknownSigner { ref kid, .. } if kid == "agent-n1"));
        assert!(matches!(
            verify("obj", b"{\"version\":1}", &f.trusted),
            Err(ManifestError::Malformed { .. })
        ));
    }

    #[test]
    fn an_incremental_without_parent_or_with_gaps_in_segments_is_invalid() {
        let f = fixture();
        let mut m = manifest("tank/a", Some(1), 2, None);
        let err = verify("obj", &f.signer.sign(&m), &f.trusted).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { .. }), "{err:?}");
        m.from_guid = None;
        m.segments[1].index = 2;
        let err = verify("obj", &f.signer.sign(&m), &f.trusted).unwrap_err();
        assert!(err.to_string().contains("numbered"), "{err}");
    }

    #[test]
    fn chain_from_full_to_target_by_guid() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let i1 = f.stored(&manifest("tank/a", Some(100), 200, Some(&full)));
        let i2 = f.stored(&manifest("tank/a", Some(200), 300, Some(&i1)));
        let other = f.stored(&manifest("tank/b", None, 300, None));
        let all = vec![i2.clone(), other, full.clone(), i1.clone()];
        let c = chain(&all, &[], "tank/a", 300).unwrap();
        let streams: Vec<_> = c.iter().map(|m| m.stream).collect();
        assert_eq!(streams, vec![full.stream, i1.stream, i2.stream]);
        assert_eq!(chain(&all, &[], "tank/a", 100).unwrap().len(), 1);
        assert_eq!(chain(&all, &[], "tank/b", 300).unwrap().len(), 1);
    }

    #[test]
    fn a_gap_is_refused() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let i1 = f.stored(&manifest("tank/a", Some(100), 200, Some(&full)));
        let i2 = f.stored(&manifest("tank/a", Some(200), 300, Some(&i1)));
        let err = chain(&[full, i2.clone()], &[], "tank/a", 300).unwrap_err();
        assert_eq!(
            err,
            ChainError::MissingParent {
                dataset: "tank/a".into(),
                stream: i2.manifest.stream.clone(),
                parent: i1.hash.clone(),
            }
        );
    }

    #[test]
    fn a_parent_link_to_the_wrong_snapshot_is_refused() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let liar = f.stored(&manifest("tank/a", Some(150), 200, Some(&full)));
        let err = chain(&[full, liar], &[], "tank/a", 200).unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::BrokenLink {
                    from_guid: 150,
                    parent_guid: 100,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn flags_that_change_along_the_chain_are_refused() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let mut m = manifest("tank/a", Some(100), 200, Some(&full));
        m.flags.raw = false;
        let inc = f.stored(&m);
        let err = chain(&[full, inc], &[], "tank/a", 200).unwrap_err();
        assert!(matches!(err, ChainError::FlagsChanged { .. }), "{err:?}");
        assert!(err.to_string().contains("does not restore"));
    }

    #[test]
    fn segments_without_a_manifest_are_named_and_never_chained() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let err = chain(&[full], &["abc".into()], "tank/a", 200).unwrap_err();
        assert!(
            matches!(err, ChainError::NotFound { guid: 200, ref incomplete, .. } if incomplete == &["abc".to_string()])
        );
        assert!(err.to_string().contains("no manifest"), "{err}");
    }

    #[test]
    fn the_newest_complete_upload_of_a_target_wins() {
        let f = fixture();
        let full = f.stored(&manifest("tank/a", None, 100, None));
        let old = f.stored(&manifest("tank/a", Some(100), 200, Some(&full)));
        let mut m = manifest("tank/a", Some(100), 200, Some(&full));
        m.created = 999;
        let new = f.stored(&m);
        let mut orphan = manifest("tank/a", Some(100), 200, Some(&full));
        orphan.created = 5_000;
        orphan.parent = Some("ff".repeat(32));
        let orphan = f.stored(&orphan);
        let all = vec![full, old, new.clone(), orphan];
        let c = chain(&all, &[], "tank/a", 200).unwrap();
        assert_eq!(c[1].stream, new.stream);
    }
}
