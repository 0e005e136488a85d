//! The signed envelope that carries every coordinator → agent command and the
//! policy. Agents check it completely before they parse the payload.
//!
//! Wire form (one NATS message body or KV value):
//!
//! ```text
//! ZDR1 <base64 ed25519 signature>\n<header JSON>\n<payload bytes>
//! ```
//!
//! The signature covers `DOMAIN \0 subject \0 header-bytes \n payload-bytes`, i.e.
//! the exact bytes that travel, bound to the logical subject they were meant for,
//! so a valid command for one node cannot be replayed onto another. The header
//! JSON is only read after the signature has been verified.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"ZDR1 ";
const DOMAIN: &[u8] = b"zdr-envelope-v1";
/// Larger envelopes are refused unread; NATS' default max_payload is 1 MiB.
pub const MAX_ENVELOPE: usize = 1 << 20;
/// A header longer than this is refused before any JSON is read.
const MAX_HEADER: usize = 1024;
/// How far into the future an expiry may lie; bounds the replay memory.
pub const MAX_TTL_SECS: i64 = 30 * 86_400;

/// The authenticated metadata of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Key id of the signing key.
    pub kid: String,
    /// Unique command id; duplicates are refused.
    pub id: String,
    /// Issued-at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Fencing token: the coordinator's leadership epoch.
    pub epoch: u64,
}

/// Why an envelope was refused. Every variant is logged by the receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("envelope is {0} bytes, over the {MAX_ENVELOPE}-byte limit")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    #[error("unknown signing key id {0:?}")]
    UnknownKey(String),
    #[error("signature does not verify (forged, altered, or meant for another subject)")]
    BadSignature,
    #[error("header does not parse after a valid signature: {0}")]
    BadHeader(String),
    #[error("header names key {header:?} but the signature line was checked with {line:?}")]
    KeyMismatch { header: String, line: String },
    #[error("expired at {exp}, now {now}")]
    Expired { exp: i64, now: i64 },
    #[error("expiry {exp} is more than {MAX_TTL_SECS}s after now {now}")]
    ExpiryTooFar { exp: i64, now: i64 },
    #[error("stale epoch {got}; the highest epoch seen is {highest} (a deposed coordinator?)")]
    StaleEpoch { got: u64, highest: u64 },
    #[error("command id {0:?} was already accepted (replay)")]
    Replay(String),
}

/// Signs envelopes with the coordinator's key.
pub struct Sealer {
    kid: String,
    key: SigningKey,
}

impl Sealer {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        Sealer {
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

    /// Builds the wire bytes for `payload`, signed for `subject`.
    pub fn seal(
        &self,
        subject: &str,
        id: &str,
        now: i64,
        ttl_secs: i64,
        epoch: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        let header = Header {
            kid: self.kid.clone(),
            id: id.to_string(),
            iat: now,
            exp: now + ttl_secs,
            epoch,
        };
        let header = serde_json::to_vec(&header).expect("header serializes");
        let sig = self.key.sign(&signed_bytes(subject, &header, payload));
        let sig = B64.encode(sig.to_bytes());
        let mut out =
            Vec::with_capacity(MAGIC.len() + sig.len() + header.len() + payload.len() + 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(sig.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&header);
        out.push(b'\n');
        out.extend_from_slice(payload);
        out
    }
}

fn signed_bytes(subject: &str, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + subject.len() + header.len() + payload.len() + 3);
    m.extend_from_slice(DOMAIN);
    m.push(0);
    m.extend_from_slice(subject.as_bytes());
    m.push(0);
    m.extend_from_slice(header);
    m.push(b'\n');
    m.extend_from_slice(payload);
    m
}

/// An envelope whose signature and header have been checked; the payload is
/// still raw bytes for the caller to parse.
#[derive(Debug)]
pub struct Opened<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// The trusted keys, by key id.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: HashMap<String, VerifyingKey>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trust(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }

    /// The trusted key ids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Checks size, framing and signature, then expiry. Replay and epoch are
    /// checked by [`Freshness`], which holds the receiver's memory.
    pub fn open<'a>(
        &self,
        subject: &str,
        bytes: &'a [u8],
        now: i64,
    ) -> Result<Opened<'a>, Refusal> {
        let opened = self.open_cached(subject, bytes)?;
        check_expiry(&opened.header, now)?;
        Ok(opened)
    }

    /// Checks everything but time. Only for an envelope this receiver accepted
    /// earlier and kept on its own disk: the agent's last signed policy stays in
    /// force past its expiry while the coordinator is unreachable.
    pub fn open_cached<'a>(&self, subject: &str, bytes: &'a [u8]) -> Result<Opened<'a>, Refusal> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(Refusal::TooLarge(bytes.len()));
        }
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(Refusal::Malformed("does not start with \"ZDR1 \""))?;
        let nl = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Refusal::Malformed("no newline after the signature"))?;
        let (sig_b64, rest) = (&rest[..nl], &rest[nl + 1..]);
        let nl = rest
            .iter()
            .take(MAX_HEADER + 1)
            .position(|b| *b == b'\n')
            .ok_or(Refusal::Malformed(
                "header missing or longer than 1024 bytes",
            ))?;
        let (header_bytes, payload) = (&rest[..nl], &rest[nl + 1..]);
        let sig = B64
            .decode(sig_b64)
            .map_err(|_| Refusal::Malformed("signature is not base64"))?;
        let sig = Signature::from_slice(&sig)
            .map_err(|_| Refusal::Malformed("signature is not 64 bytes"))?;
        let msg = signed_bytes(subject, header_bytes, payload);
        // The key id is needed before the signature check; try every trusted key
        // rather than parse anything unauthenticated.
        let kid = self
            .keys
            .iter()
            .find(|(_, k)| k.verify_strict(&msg, &sig).is_ok())
            .map(|(kid, _)| kid.clone());
        let kid = match kid {
            Some(k) => k,
            None if self.keys.is_empty() => return Err(Refusal::UnknownKey(String::new())),
            None => return Err(Refusal::BadSignature),
        };
        let header: Header =
            serde_json::from_slice(header_bytes).map_err(|e| Refusal::BadHeader(e.to_string()))?;
        if header.kid != kid {
            return Err(Refusal::KeyMismatch {
                header: header.kid,
                line: kid,
            });
        }
        Ok(Opened { header, payload })
    }
}

/// The time checks [`Verifier::open`] makes, for a receiver that opened an
/// envelope with [`Verifier::open_cached`] first (to say which revision it
/// refuses, say).
pub fn check_expiry(header: &Header, now: i64) -> Result<(), Refusal> {
    let exp = header.exp;
    if exp <= now {
        return Err(Refusal::Expired { exp, now });
    }
    if exp > now + MAX_TTL_SECS {
        return Err(Refusal::ExpiryTooFar { exp, now });
    }
    Ok(())
}

/// The payload of an envelope, NOT verified: only for a number the reader
/// must exceed (the coordinator's policy revision floor, when the stored
/// policy was signed with a key it no longer holds), never for anything it
/// would act on or trust.
pub fn unverified_payload(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    let rest = &rest[nl + 1..];
    let nl = rest.iter().take(MAX_HEADER + 1).position(|b| *b == b'\n')?;
    Some(&rest[nl + 1..])
}

/// A receiver's memory of epochs and command ids, persisted by the agent so that
/// a restart does not reopen the replay window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub highest_epoch: u64,
    /// Accepted command ids with their expiry; pruned once expired, since an
    /// expired envelope is refused anyway.
    pub seen: BTreeMap<String, i64>,
}

impl Freshness {
    /// Refuses stale epochs and replays; on success records the command.
    pub fn admit(&mut self, header: &Header, now: i64) -> Result<(), Refusal> {
        if header.epoch < self.highest_epoch {
            return Err(Refusal::StaleEpoch {
                got: header.epoch,
                highest: self.highest_epoch,
            });
        }
        self.seen.retain(|_, exp| *exp > now);
        if self.seen.contains_key(&header.id) {
            return Err(Refusal::Replay(header.id.clone()));
        }
        self.highest_epoch = header.epoch;
        self.seen.insert(header.id.clone(), header.exp);
        Ok(())
    }
}

/// Reads an ed25519 key from 32 bytes of base64, the form `zdr-coordinator keygen` writes.
pub fn signing_key_from_b64(s: &str) -> Result<SigningKey, String> {
    let raw = B64
        .decode(s.trim())
        .map_err(|e| format!("signing key is not base64: {e}"))?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "signing key must be 32 bytes".to_string())?;
    Ok(SigningKey::from_bytes(&raw))
}

pub fn verifying_key_from_b64(s: &str) -> Result<VerifyingKey, String> {
    let raw = B64
        .decode(s.trim())
        .map_err(|e| format!("public key is not base64: {e}"))?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| "public key must be 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&raw)
        .map_err(|e| format!("public key is not a valid ed25519 point: {e}"))
}

pub fn key_to_b64(bytes: &[u8; 32]) -> String {
    B64.encode(bytes)
}

pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJ: &str = "zdr.v1.agent.n1.cmd";
    const NOW: i64 = 1_800_000_000;

    fn setup() -> (Sealer, Verifier) {
        let s = Sealer::new("coord-1", generate_key());
        let mut v = Verifier::new();
        v.trust("coord-1", s.verifying_key());
        (s, v)
    }

    #[test]
    fn round_trip() {
        let (s, v) = setup();
        let env = s.seal(SUBJ, "c1", NOW, 60, 7, br#"{"ping":{}}"#);
        let o = v.open(SUBJ, &env, NOW).unwrap();
        assert_eq!(o.payload, br#"{"ping":{}}"#);
        assert_eq!(o.header.epoch, 7);
        assert_eq!(o.header.id, "c1");
    }

    #[test]
    fn forged_by_another_key_is_refused() {
        let (_, v) = setup();
        let forger = Sealer::new("coord-1", generate_key());
        let env = forger.seal(SUBJ, "c1", NOW, 60, 7, b"{}");
        assert_eq!(v.open(SUBJ, &env, NOW).unwrap_err(), Refusal::BadSignature);
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (s, v) = setup();
        let env = s.seal(SUBJ, "c1", NOW, 60, 7, br#"{"destroy":"tank/a@x"}"#);
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(
                v.open(SUBJ, &bad, NOW).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn other_subject_is_refused() {
        let (s, v) = setup();
        let env = s.seal(SUBJ, "c1", NOW, 60, 7, b"{}");
        assert_eq!(
            v.open("zdr.v1.agent.n2.cmd", &env, NOW).unwrap_err(),
            Refusal::BadSignature
        );
    }

    #[test]
    fn expired_and_far_future_are_refused() {
        let (s, v) = setup();
        let env = s.seal(SUBJ, "c1", NOW - 120, 60, 7, b"{}");
        assert!(matches!(
            v.open(SUBJ, &env, NOW),
            Err(Refusal::Expired { .. })
        ));
        let env = s.seal(SUBJ, "c1", NOW, MAX_TTL_SECS + 10, 7, b"{}");
        assert!(matches!(
            v.open(SUBJ, &env, NOW),
            Err(Refusal::ExpiryTooFar { .. })
        ));
    }

    #[test]
    fn cached_envelopes_skip_only_the_clock() {
        let (s, v) = setup();
        let env = s.seal(SUBJ, "c1", NOW - 120, 60, 7, b"{}");
        assert!(v.open_cached(SUBJ, &env).is_ok());
        let mut bad = env.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            v.open_cached(SUBJ, &bad).unwrap_err(),
            Refusal::BadSignature
        );
    }

    #[test]
    fn the_unverified_payload_is_found_whoever_signed() {
        let (s, _) = setup();
        let env = s.seal(SUBJ, "c1", NOW, 60, 7, br#"{"revision":3}"#);
        assert_eq!(unverified_payload(&env), Some(&br#"{"revision":3}"#[..]));
        let other = Sealer::new("other", generate_key());
        let env = other.seal(SUBJ, "c1", NOW - 999, 60, 7, b"x");
        assert_eq!(unverified_payload(&env), Some(&b"x"[..]));
        assert_eq!(unverified_payload(b"{\"revision\":9}"), None);
        assert_eq!(unverified_payload(b"ZDR1 sig-without-header"), None);
    }

    #[test]
    fn replay_and_stale_epoch_are_refused() {
        let (s, v) = setup();
        let mut f = Freshness::default();
        let env = s.seal(SUBJ, "c1", NOW, 60, 7, b"{}");
        let o = v.open(SUBJ, &env, NOW).unwrap();
        f.admit(&o.header, NOW).unwrap();
        assert_eq!(
            f.admit(&o.header, NOW + 1),
            Err(Refusal::Replay("c1".into()))
        );
        let old = s.seal(SUBJ, "c2", NOW, 60, 6, b"{}");
        let o = v.open(SUBJ, &old, NOW).unwrap();
        assert!(matches!(
            f.admit(&o.header, NOW),
            Err(Refusal::StaleEpoch { got: 6, highest: 7 })
        ));
        let newer = s.seal(SUBJ, "c3", NOW, 60, 8, b"{}");
        let o = v.open(SUBJ, &newer, NOW).unwrap();
        f.admit(&o.header, NOW).unwrap();
        assert_eq!(f.highest_epoch, 8);
    }

    #[test]
    fn seen_ids_are_forgotten_after_expiry() {
        let mut f = Freshness::default();
        let h = |id: &str, exp| Header {
            kid: "k".into(),
            id: id.into(),
            iat: NOW,
            exp,
            epoch: 1,
        };
        f.admit(&h("a", NOW + 10), NOW).unwrap();
        f.admit(&h("b", NOW + 100), NOW + 20).unwrap();
        assert!(!f.seen.contains_key("a"));
        assert!(f.seen.contains_key("b"));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let (_, v) = setup();
        for junk in [
            &b""[..],
            b"ZDR1 ",
            b"ZDR1 !!!\n{}\n",
            b"{\"json\":1}",
            &[0xff; 64],
        ] {
            assert!(v.open(SUBJ, junk, NOW).is_err());
        }
        let big = vec![b'a'; MAX_ENVELOPE + 1];
        assert_eq!(
            v.open(SUBJ, &big, NOW).unwrap_err(),
            Refusal::TooLarge(MAX_ENVELOPE + 1)
        );
    }
}
