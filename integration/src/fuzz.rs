//! The fuzz cases: what each cargo-fuzz target (`integration/fuzz/`) does
//! with one input. The targets run them on nightly under libFuzzer; the test
//! `tests/fuzz_corpus.rs` replays the checked-in corpus and every crash kept
//! under `integration/fuzz/regressions/` through the same functions on stable.
//!
//! Rules: a case never panics on any input (a panic is the crash libFuzzer
//! reports); it returns whether the decoder accepted the input, and where an
//! accepted value has a property to check (it reads back what it writes, a
//! stream's hash matches what reached the sink) the case asserts it. The
//! first input byte picks the decoder where a target covers several, so one
//! corpus file is `[selector] ++ body`.

use std::fmt::Debug;
use std::sync::OnceLock;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zdr_agent::transfer::{self, Job, JobToken};
use zdr_agent::zfs::cli::parse;
use zdr_agent::zfs::resume_token;
use zdr_common::envelope::{self, Freshness, Sealer, Verifier};
use zdr_common::policy::Policy;
use zdr_common::wire::{
    self, Command, CommandResult, Event, Heartbeat, Hello, InventoryChunk, InventoryDelta,
    JobUpdate, PolicyBundle,
};
use zdr_common::DatasetName;

/// Every target, by the name of its binary in `integration/fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &[
    "envelope",
    "wire",
    "spec",
    "frame",
    "zfs_output",
    "resume_token",
];

/// Runs the case of `target` on `data`: whether the decoder accepted it, or
/// `None` for a target that does not exist.
pub fn run(target: &str, data: &[u8]) -> Option<bool> {
    let case: fn(&[u8]) -> bool = match target {
        "envelope" => envelope,
        "wire" => wire,
        "spec" => spec,
        "frame" => frame,
        "zfs_output" => zfs_output,
        "resume_token" => resume_token,
        _ => return None,
    };
    Some(case(data))
}

/// The subject envelopes are opened for, and the clock they are judged by.
pub const SUBJECT: &str = "zdr.v1.agent.fuzz.cmd";
pub const NOW: i64 = 1_800_000_000;
const KID: &str = "fuzz-1";
/// A fixed key, so that a checked-in envelope still verifies.
const KEY: [u8; 32] = [7; 32];

fn sealer() -> Sealer {
    Sealer::new(KID, SigningKey::from_bytes(&KEY))
}

/// `payload` sealed with the fuzz key for [`SUBJECT`] at [`NOW`]: a seed the
/// envelope target opens.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    sealer().seal(SUBJECT, "c-1", NOW, 60, 1, payload)
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut v = Verifier::new();
        v.trust(KID, sealer().verifying_key());
        v
    })
}

/// The signed envelope, down to the command and policy an agent parses from
/// it. Selector 0: the bytes as they arrive. 1: the body is `header \n
/// payload`, validly signed here, so that the header JSON (read only after
/// a good signature) meets arbitrary bytes. 2: the body is a payload sealed
/// by the real [`Sealer`]: it must open to the same bytes, and only for its
/// own subject.
pub fn envelope(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    match selector % 3 {
        0 => open_and_parse(body),
        1 => {
            let (header, payload) = match body.iter().position(|b| *b == b'\n') {
                Some(nl) => (&body[..nl], &body[nl + 1..]),
                None => (body, &[][..]),
            };
            open_and_parse(&sign_raw(header, payload))
        }
        _ => {
            let sealed = sealer().seal(SUBJECT, "fuzz", NOW, 60, 1, body);
            if sealed.len() > envelope::MAX_ENVELOPE {
                return false;
            }
            let opened = verifier()
                .open(SUBJECT, &sealed, NOW)
                .expect("a sealed envelope opens");
            assert_eq!(opened.payload, body, "the payload opens unchanged");
            assert!(
                verifier()
                    .open("zdr.v1.agent.other.cmd", &sealed, NOW)
                    .is_err(),
                "an envelope opens only on the subject it was signed for"
            );
            open_and_parse(&sealed)
        }
    }
}

/// Signs arbitrary header bytes as the envelope's module header lays the
/// signed message out: `domain \0 subject \0 header \n payload`.
fn sign_raw(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut msg = b"zdr-envelope-v1\0".to_vec();
    msg.extend_from_slice(SUBJECT.as_bytes());
    msg.push(0);
    msg.extend_from_slice(header);
    msg.push(b'\n');
    msg.extend_from_slice(payload);
    let sig = SigningKey::from_bytes(&KEY).sign(&msg);
    let mut out = b"ZDR1 ".to_vec();
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .as_bytes(),
    );
    out.push(b'\n');
    out.extend_from_slice(header);
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

/// What an agent does with a message on its command subject or a policy from
/// the bucket: verify, admit, and only then parse.
fn open_and_parse(bytes: &[u8]) -> bool {
    let _ = envelope::unverified_payload(bytes);
    let Ok(opened) = verifier().open(SUBJECT, bytes, NOW) else {
        return false;
    };
    let _ = Freshness::default().admit(&opened.header, NOW);
    let command = serde_json::from_slice::<Command>(opened.payload).is_ok();
    let policy = match serde_json::from_slice::<PolicyBundle>(opened.payload) {
        Ok(bundle) => {
            let _ = bundle.policy.problems();
            true
        }
        Err(_) => false,
    };
    command || policy
}

/// Every message decoded from bus bytes, picked by the selector: the agent's
/// messages the coordinator reads, the commands and policy the agent reads,
/// and the command results. What decodes must read back equal from its own
/// JSON; a full inventory must survive re-chunking.
pub fn wire(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    match selector % 9 {
        0 => round_trip::<Hello>(body).is_some(),
        1 => round_trip::<Heartbeat>(body).is_some(),
        2 => match round_trip::<InventoryChunk>(body) {
            Some(chunk) => {
                rechunk(chunk, selector);
                true
            }
            None => false,
        },
        3 => round_trip::<InventoryDelta>(body).is_some(),
        4 => round_trip::<Event>(body).is_some(),
        5 => round_trip::<JobUpdate>(body).is_some(),
        6 => round_trip::<Command>(body).is_some(),
        7 => round_trip::<CommandResult>(body).is_some(),
        _ => match round_trip::<PolicyBundle>(body) {
            Some(bundle) => {
                let _ = bundle.policy.problems();
                true
            }
            None => false,
        },
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(body: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(body).ok()?;
    let json = serde_json::to_vec(&value).expect("a decoded message serializes");
    let again: T = serde_json::from_slice(&json).expect("a message reads back what it wrote");
    assert_eq!(value, again, "a message reads back equal from its own JSON");
    Some(value)
}

/// Joining, chunking (at a small limit the selector picks) and joining again
/// gives the same datasets: what the coordinator assembles does not depend on
/// how the agent cut it.
fn rechunk(chunk: InventoryChunk, selector: u8) {
    let node = chunk.node.clone();
    let joined = wire::join_inventory(vec![chunk]);
    let limit = 64 + usize::from(selector) * 16;
    let chunks = wire::chunk_inventory(&node, 1, joined.clone(), limit);
    let n = chunks.len();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!((c.chunk as usize, c.chunks as usize), (i, n));
    }
    assert_eq!(wire::join_inventory(chunks), joined, "re-chunked inventory");
}

/// The spec files through the positioned YAML tree and its deserializer.
/// Selector 0: policies.yaml; 1: tasks.yml (against the shipped policy);
/// 2: the alert receivers. Every problem must point into the file.
pub fn spec(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let result = match selector % 3 {
        0 => zdr_schemas::parse_policy("fuzz.yaml", text).map(drop),
        1 => zdr_schemas::parse_tasks("fuzz.yml", text, shipped_policy()).map(drop),
        _ => zdr_schemas::parse_receivers("fuzz.yaml", text).map(drop),
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            // Line and column are 1-based; YAML ends a line at `\n`, `\r\n` or a lone `\r`.
            let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
            for d in e.diagnostics() {
                assert!(
                    d.line >= 1 && d.line <= lines && d.column >= 1,
                    "diagnostic outside the file ({lines} lines): {d}"
                );
            }
            let _ = e.to_string();
            false
        }
    }
}

fn shipped_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        zdr_schemas::parse_policy(
            "specs/backup/policies.yaml",
            include_str!("../../specs/backup/policies.yaml"),
        )
        .expect("the shipped policy parses")
    })
}

/// The job the frame target's hello must name, with its token.
pub const FRAME_JOB: &str = "fuzz-job";
pub const FRAME_TOKEN: [u8; 32] = [0x5a; 32];

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// The data plane's receiving end: hello, data frames, end frame. A stream
/// that ends well delivered exactly the bytes its summary hashes.
pub fn frame(data: &[u8]) -> bool {
    let job = Job::new(FRAME_JOB, JobToken::from_bytes(FRAME_TOKEN)).expect("a valid job id");
    let (sink, result) = RUNTIME.with(|rt| rt.block_on(transfer::receive_from_bytes(data, &job)));
    match result {
        Ok(summary) => {
            assert_eq!(sink.len() as u64, summary.bytes, "bytes in the sink");
            assert_eq!(blake3::hash(&sink), summary.hash, "hash of the sink");
            true
        }
        Err(_) => false,
    }
}

/// The dataset the snapshot and bookmark listings are read for.
pub const ZFS_DATASET: &str = "tank/data";

/// zfs(8) and zpool(8) output, picked by the selector: `zpool list -Hp`,
/// `zfs list -Hp` of datasets, snapshots and bookmarks, `zfs holds -H`, and
/// `zfs send -nvP` (plain, and from a bookmark). A listing that parses has
/// one entry per line, each with a valid name.
pub fn zfs_output(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    let Ok(out) = std::str::from_utf8(body) else {
        return false;
    };
    let dataset = DatasetName::parse(ZFS_DATASET).expect("a valid dataset name");
    let lines = out.lines().count();
    match selector % 7 {
        0 => match parse::parse_pools(out) {
            Ok(pools) => {
                assert!(
                    pools.len() == lines
                        || (pools.is_empty() && out.trim() == "no pools available")
                );
                for p in &pools {
                    DatasetName::parse(&p.name).expect("a pool name that parsed is valid");
                }
                true
            }
            Err(_) => false,
        },
        1 => match parse::parse_datasets(out) {
            Ok(sets) => {
                assert_eq!(sets.len(), lines, "one dataset per line");
                true
            }
            Err(_) => false,
        },
        2 => match parse::parse_snapshots(&dataset, out) {
            Ok(snaps) => {
                assert_eq!(snaps.len(), lines, "one snapshot per line");
                for s in &snaps {
                    let full = format!("{ZFS_DATASET}@{}", s.name);
                    zdr_common::dataset::parse_snapshot_name(&full)
                        .expect("a snapshot name that parsed is valid");
                }
                true
            }
            Err(_) => false,
        },
        3 => match parse::parse_bookmarks(&dataset, out) {
            Ok(marks) => {
                assert_eq!(marks.len(), lines, "one bookmark per line");
                assert!(
                    marks.windows(2).all(|w| w[0].createtxg <= w[1].createtxg),
                    "bookmarks in createtxg order"
                );
                true
            }
            Err(_) => false,
        },
        4 => match parse::parse_holds(&format!("{ZFS_DATASET}@s1"), out) {
            Ok(tags) => {
                assert_eq!(tags.len(), lines, "one hold per line");
                true
            }
            Err(_) => false,
        },
        n => parse::parse_estimate(out, n == 6).is_ok(),
    }
}

/// OpenZFS resume tokens. Selector 0: the token text as `zfs get
/// receive_resume_token` prints it; 1: the packed nvlist inside it. A token
/// that decodes reads back equal from the token zdr would write for it.
pub fn resume_token(data: &[u8]) -> bool {
    let Some((&selector, body)) = data.split_first() else {
        return false;
    };
    let decoded = match selector % 2 {
        0 => match std::str::from_utf8(body) {
            Ok(text) => resume_token::decode(text),
            Err(_) => return false,
        },
        _ => resume_token::from_nvlist(body),
    };
    match decoded {
        Ok(token) => {
            let again = resume_token::decode(&resume_token::encode(&token));
            assert_eq!(
                again.as_ref(),
                Ok(&token),
                "a token reads back what it wrote"
            );
            true
        }
        Err(_) => false,
    }
}
