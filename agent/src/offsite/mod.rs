//! The offsite tier: `zfs send` streams as encrypted, signed, locked segment
//! objects in an S3 bucket, and back.
//!
//! - [`sizing`]: segment and part sizes from the stream's size estimate (pure);
//! - [`seal`]: segment AEAD and data-key wrapping for recovery keys (pure);
//! - [`manifest`]: the signed manifest and the chain check (pure);
//! - [`store`]: the S3 shell (upload, restore, bucket checks).
//!
//! Object layout in the bucket (`<ds>` is the dataset name with `%` and `/`
//! percent-escaped, `<stream>` a random 128-bit id in hex):
//!
//! ```text
//! <prefix>streams/<ds>/<stream>/seg/00000000    sealed segment 0 ─┐ locked until
//! <prefix>streams/<ds>/<stream>/seg/00000001    sealed segment 1  │ retain_until
//! ...                                                             │
//! <prefix>streams/<ds>/<stream>/manifest        signed manifest ──┘ written last:
//!                                               the commit marker; a stream
//!                                               without it is never restored
//!                                               nor continued from
//! ```
//!
//! One stored segment (the plaintext is a slice of the `zfs send` stream):
//!
//! ```text
//! "ZDS1" nonce:[24] ciphertext:[plaintext length] tag:[16]
//!
//! cipher: XChaCha20-Poly1305 under the stream's data key
//! associated data: "zdr-offsite-segment-v1\0" stream:[16] index:u64be last:u8
//! ```
//!
//! A manifest names the dataset, the from/to snapshot GUIDs, the send flags,
//! each segment's size, SHA-256 and object version, the data key wrapped for
//! each recovery key, and the SHA-256 of its parent manifest: see
//! [`manifest::Manifest`]. A restore verifies the manifest signatures and the
//! chain, then per segment checks the SHA-256 of the stored bytes before
//! decrypting them.

pub mod manifest;
pub mod seal;
pub mod sizing;
pub mod store;

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The object key prefix of one dataset's streams.
pub fn dataset_prefix(prefix: &str, dataset: &str) -> String {
    let escaped = dataset.replace('%', "%25").replace('/', "%2F");
    format!("{prefix}streams/{escaped}/")
}

pub fn segment_key(prefix: &str, dataset: &str, stream: &seal::StreamId, index: u64) -> String {
    format!("{}{stream}/seg/{index:08}", dataset_prefix(prefix, dataset))
}

pub fn manifest_key(prefix: &str, dataset: &str, stream: &seal::StreamId) -> String {
    format!("{}{stream}/manifest", dataset_prefix(prefix, dataset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn keys_keep_datasets_apart() {
        let s = seal::StreamId([1; 16]);
        assert_eq!(
            segment_key("zdr/", "tank/a", &s, 7),
            format!("zdr/streams/tank%2Fa/{s}/seg/00000007")
        );
        // tank/a's prefix is not a prefix of tank/a/b's.
        assert!(!dataset_prefix("", "tank/a/b").starts_with(&dataset_prefix("", "tank/a")));
        assert_ne!(dataset_prefix("", "a%2Fb"), dataset_prefix("", "a/b"));
    }
}
