//! Segment sealing and data-key wrapping (pure, apart from drawing random
//! keys and nonces).
//!
//! Each stream has one random 256-bit data key. Segments are sealed with
//! XChaCha20-Poly1305 under a random 192-bit nonce rather than a nonce derived
//! from the segment index: a resumed or retried upload may seal the same index
//! again with other bytes (a `zfs send` re-run is not guaranteed to be
//! byte-identical), and a derived nonce would then be reused under one key,
//! which breaks both secrecy and integrity. Random 192-bit nonces cannot
//! collide in practice. The associated data binds the stream id, the segment
//! index and the "last segment" flag, so a segment moved to another stream or
//! index, or a stream cut short after a whole segment, fails to open.
//!
//! The data key is wrapped for each recipient X25519 public key: a fresh
//! ephemeral key pair, X25519, HKDF-SHA256 to a key-encryption key, and
//! ChaCha20-Poly1305. Restoring needs only one recipient's secret key, which
//! can be kept offline.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Tag, XChaCha20Poly1305, XNonce};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};

use super::hex;

/// First bytes of every stored segment.
pub const MAGIC: &[u8; 4] = b"ZDS1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes before the ciphertext: magic and nonce.
pub const HEADER: usize = MAGIC.len() + NONCE_LEN;
/// Bytes a stored segment has over its plaintext.
pub const OVERHEAD: usize = HEADER + TAG_LEN;

const SEGMENT_DOMAIN: &[u8] = b"zdr-offsite-segment-v1\0";
const WRAP_DOMAIN: &[u8] = b"zdr-offsite-wrap-v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("segment is {0} bytes, shorter than the {OVERHEAD}-byte sealing overhead")]
    Short(usize),
    #[error("segment does not start with the zdr segment magic")]
    BadMagic,
    #[error(
        "segment {index} of stream {stream} does not open: wrong data key, or the segment was \
         altered, moved from another stream or position, or the stream was cut short"
    )]
    Open { stream: String, index: u64 },
    #[error(
        "no wrapped data key for recovery key {recipient}; the stream was sealed for {listed:?}"
    )]
    NotARecipient {
        recipient: String,
        listed: Vec<String>,
    },
    #[error("the wrapped data key for recipient {0} does not open (altered manifest?)")]
    Unwrap(String),
    #[error("wrapped key field {field} is not valid: {why}")]
    BadWrappedKey { field: &'static str, why: String },
}

/// A stream's id: random, 128 bits, lowercase hex in object keys and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    pub fn generate() -> StreamId {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        StreamId(id)
    }

    pub fn parse(s: &str) -> Option<StreamId> {
        let bytes = super::unhex(s)?;
        Some(StreamId(bytes.try_into().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// One stream's data key.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

/// Redacted: data keys must not end up in logs.
impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> DataKey {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        DataKey(key)
    }
}

/// Where a segment sits: what its associated data binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentAt {
    pub stream: StreamId,
    pub index: u64,
    pub last: bool,
}

impl SegmentAt {
    fn associated_data(&self) -> [u8; SEGMENT_DOMAIN.len() + 16 + 8 + 1] {
        let mut ad = [0u8; SEGMENT_DOMAIN.len() + 16 + 8 + 1];
        let (domain, rest) = ad.split_at_mut(SEGMENT_DOMAIN.len());
        domain.copy_from_slice(SEGMENT_DOMAIN);
        rest[..16].copy_from_slice(&self.stream.0);
        rest[16..24].copy_from_slice(&self.index.to_be_bytes());
        rest[24] = u8::from(self.last);
        ad
    }
}

/// A buffer to read one segment's plaintext into, after [`HEADER`] reserved bytes.
pub fn segment_buffer(plaintext_capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext_capacity + OVERHEAD);
    buf.resize(HEADER, 0);
    buf
}

/// Seals in place the plaintext in `buf[HEADER..]` (see [`segment_buffer`]);
/// returns the stored segment.
pub fn seal(key: &DataKey, at: SegmentAt, mut buf: Vec<u8>) -> Vec<u8> {
    assert!(buf.len() >= HEADER, "segment buffer lacks its header room");
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    buf[..MAGIC.len()].copy_from_slice(MAGIC);
    buf[MAGIC.len()..HEADER].copy_from_slice(&nonce);
    let tag = XChaCha20Poly1305::new((&key.0).into())
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &at.associated_data(),
            &mut buf[HEADER..],
        )
        .expect("XChaCha20-Poly1305 seals any segment under 256 GiB");
    buf.extend_from_slice(&tag);
    buf
}

/// Opens a stored segment in place; returns its plaintext.
pub fn open(key: &DataKey, at: SegmentAt, mut stored: Vec<u8>) -> Result<Vec<u8>, SealError> {
    if stored.len() < OVERHEAD {
        return Err(SealError::Short(stored.len()));
    }
    if &stored[..MAGIC.len()] != MAGIC {
        return Err(SealError::BadMagic);
    }
    let nonce = *XNonce::from_slice(&stored[MAGIC.len()..HEADER]);
    let tag_at = stored.len() - TAG_LEN;
    let tag = *Tag::from_slice(&stored[tag_at..]);
    XChaCha20Poly1305::new((&key.0).into())
        .decrypt_in_place_detached(
            &nonce,
            &at.associated_data(),
            &mut stored[HEADER..tag_at],
            &tag,
        )
        .map_err(|_| SealError::Open {
            stream: at.stream.to_string(),
            index: at.index,
        })?;
    stored.truncate(tag_at);
    stored.drain(..HEADER);
    Ok(stored)
}

/// A recovery key pair's public half, as the policy names it (base64).
pub fn recipient_id(public: &PublicKey) -> String {
    B64.encode(public.as_bytes())
}

/// The data key sealed for one recipient, as it is stored in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// The recipient's X25519 public key, base64.
    pub recipient: String,
    /// The ephemeral X25519 public key, base64.
    pub ephemeral: String,
    /// The data key sealed with ChaCha20-Poly1305, base64.
    pub sealed: String,
}

fn key_encryption_key(
    shared: &[u8; 32],
    stream: &StreamId,
    ephemeral: &PublicKey,
    recipient: &PublicKey,
) -> [u8; 32] {
    let mut info = Vec::with_capacity(WRAP_DOMAIN.len() + 16 + 64);
    info.extend_from_slice(WRAP_DOMAIN);
    info.extend_from_slice(&stream.0);
    info.extend_from_slice(ephemeral.as_bytes());
    info.extend_from_slice(recipient.as_bytes());
    let mut kek = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, shared)
        .expand(&info, &mut kek)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    kek
}

/// Wraps `key` for `recipient`. Each wrap uses a fresh ephemeral key, so
/// every key-encryption key is used once and a fixed nonce is safe.
pub fn wrap(key: &DataKey, stream: &StreamId, recipient: &PublicKey) -> WrappedKey {
    let ephemeral = EphemeralSecret::random_from_rng(OsRng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(recipient);
    let kek = key_encryption_key(shared.as_bytes(), stream, &ephemeral_public, recipient);
    let mut sealed = key.0.to_vec();
    let tag = ChaCha20Poly1305::new((&kek).into())
        .encrypt_in_place_detached(&Default::default(), &stream.0, &mut sealed)
        .expect("ChaCha20-Poly1305 seals 32 bytes");
    sealed.extend_from_slice(&tag);
    WrappedKey {
        recipient: recipient_id(recipient),
        ephemeral: B64.encode(ephemeral_public.as_bytes()),
        sealed: B64.encode(sealed),
    }
}

/// A recipient's public key from its base64 form ([`recipient_id`]).
pub fn parse_recipient(b64: &str) -> Result<PublicKey, SealError> {
    public_key("recipient", b64)
}

fn public_key(field: &'static str, b64: &str) -> Result<PublicKey, SealError> {
    let bytes: [u8; 32] = B64
        .decode(b64)
        .map_err(|e| SealError::BadWrappedKey {
            field,
            why: e.to_string(),
        })?
        .try_into()
        .map_err(|_| SealError::BadWrappedKey {
            field,
            why: "not 32 bytes".into(),
        })?;
    Ok(PublicKey::from(bytes))
}

/// A recovery secret key from its base64 form (32 bytes).
pub fn parse_secret(b64: &str) -> Result<StaticSecret, String> {
    let bytes: [u8; 32] = B64
        .decode(b64)
        .map_err(|e| format!("not base64: {e}"))?
        .try_into()
        .map_err(|_| "not 32 bytes".to_string())?;
    Ok(StaticSecret::from(bytes))
}

/// Unwraps the data key with a recovery secret key.
pub fn unwrap(
    wrapped: &[WrappedKey],
    stream: &StreamId,
    secret: &StaticSecret,
) -> Result<DataKey, SealError> {
    let public = PublicKey::from(secret);
    let me = recipient_id(&public);
    let entry =
        wrapped
            .iter()
            .find(|w| w.recipient == me)
            .ok_or_else(|| SealError::NotARecipient {
                recipient: me.clone(),
                listed: wrapped.iter().map(|w| w.recipient.clone()).collect(),
            })?;
    let ephemeral = public_key("ephemeral", &entry.ephemeral)?;
    let shared = secret.diffie_hellman(&ephemeral);
    if !shared.was_contributory() {
        return Err(SealError::Unwrap(me));
    }
    let kek = key_encryption_key(shared.as_bytes(), stream, &ephemeral, &public);
    let mut sealed = B64
        .decode(&entry.sealed)
        .map_err(|e| SealError::BadWrappedKey {
            field: "sealed",
            why: e.to_string(),
        })?;
    if sealed.len() != 32 + TAG_LEN {
        return Err(SealError::BadWrappedKey {
            field: "sealed",
            why: format!("{} bytes, expected {}", sealed.len(), 32 + TAG_LEN),
        });
    }
    let tag = *Tag::from_slice(&sealed[32..]);
    ChaCha20Poly1305::new((&kek).into())
        .decrypt_in_place_detached(&Default::default(), &stream.0, &mut sealed[..32], &tag)
        .map_err(|_| SealError::Unwrap(me))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&sealed[..32]);
    Ok(DataKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &DataKey, at: SegmentAt, plain: &[u8]) -> Vec<u8> {
        let mut buf = segment_buffer(plain.len());
        buf.extend_from_slice(plain);
        seal(key, at, buf)
    }

    fn at(stream: StreamId, index: u64, last: bool) -> SegmentAt {
        SegmentAt {
            stream,
            index,
            last,
        }
    }

    #[test]
    fn round_trip_and_overhead() {
        let key = DataKey::generate();
        let s = StreamId::generate();
        for plain in [&b""[..], b"x", &[7u8; 100_000][..]] {
            let stored = sealed(&key, at(s, 3, false), plain);
            assert_eq!(stored.len(), plain.len() + OVERHEAD);
            if !plain.is_empty() {
                assert_ne!(&stored[HEADER..HEADER + plain.len()], plain);
            }
            assert_eq!(open(&key, at(s, 3, false), stored).unwrap(), plain);
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_fails() {
        let key = DataKey::generate();
        let s = StreamId::generate();
        let stored = sealed(&key, at(s, 0, true), &[1u8; 4096]);
        for pos in [HEADER - 1, HEADER, HEADER + 2000, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[pos] ^= 0x01;
            assert!(matches!(
                open(&key, at(s, 0, true), bad),
                Err(SealError::Open { index: 0, .. })
            ));
        }
        let mut bad = stored.clone();
        bad[0] ^= 1;
        assert_eq!(open(&key, at(s, 0, true), bad), Err(SealError::BadMagic));
        assert_eq!(
            open(&key, at(s, 0, true), stored[..OVERHEAD - 1].to_vec()),
            Err(SealError::Short(OVERHEAD - 1))
        );
    }

    #[test]
    fn swapped_reordered_or_foreign_segments_fail() {
        let key = DataKey::generate();
        let s = StreamId::generate();
        let seg0 = sealed(&key, at(s, 0, false), b"first");
        let seg1 = sealed(&key, at(s, 1, true), b"second");
        // Swapped: each presented at the other's index.
        assert!(open(&key, at(s, 0, false), seg1.clone()).is_err());
        assert!(open(&key, at(s, 1, true), seg0.clone()).is_err());
        // From another stream under the same key.
        assert!(open(&key, at(StreamId::generate(), 0, false), seg0.clone()).is_err());
        // Truncated: the stream cut after segment 0 would need it to be last.
        assert!(open(&key, at(s, 0, true), seg0.clone()).is_err());
        // Wrong key.
        assert!(open(&DataKey::generate(), at(s, 0, false), seg0.clone()).is_err());
        assert_eq!(open(&key, at(s, 0, false), seg0).unwrap(), b"first");
        assert_eq!(open(&key, at(s, 1, true), seg1).unwrap(), b"second");
    }

    #[test]
    fn wrapped_keys_open_for_each_recipient_and_no_one_else() {
        let key = DataKey::generate();
        let s = StreamId::generate();
        let alice = StaticSecret::random_from_rng(OsRng);
        let bob = StaticSecret::random_from_rng(OsRng);
        let eve = StaticSecret::random_from_rng(OsRng);
        let wrapped = vec![
            wrap(&key, &s, &PublicKey::from(&alice)),
            wrap(&key, &s, &PublicKey::from(&bob)),
        ];
        assert_eq!(unwrap(&wrapped, &s, &alice).unwrap(), key);
        assert_eq!(unwrap(&wrapped, &s, &bob).unwrap(), key);
        let err = unwrap(&wrapped, &s, &eve).unwrap_err();
        assert!(matches!(err, SealError::NotARecipient { ref listed, .. } if listed.len() == 2));
        // Bound to the stream: a wrapped key copied into another manifest fails.
        assert!(matches!(
            unwrap(&wrapped, &StreamId::generate(), &alice),
            Err(SealError::Unwrap(_))
        ));
        // Altered.
        let mut altered = wrapped.clone();
        let mut bytes = B64.decode(&altered[0].sealed).unwrap();
        bytes[5] ^= 0x80;
        altered[0].sealed = B64.encode(bytes);
        assert!(matches!(
            unwrap(&altered, &s, &alice),
            Err(SealError::Unwrap(_))
        ));
    }

    #[test]
    fn stream_ids_print_and_parse_as_hex() {
        let s = StreamId::generate();
        let text = s.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(StreamId::parse(&text), Some(s));
        assert_eq!(StreamId::parse("xyz"), None);
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(..)");
    }
}
