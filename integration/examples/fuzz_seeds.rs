//! Writes the fuzz corpus seeds that must be computed (signatures, hashes,
//! zstd) into `integration/fuzz/corpus/`; the others there are written by
//! hand. Run after a format change: `cargo run -p zdr-integration --example
//! fuzz_seeds`. `tests/fuzz_corpus.rs` checks that every `valid-*` seed is
//! accepted.

use std::path::Path;

use zdr_common::wire::PolicyBundle;
use zdr_integration::fuzz;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, name, bytes) in seeds() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        println!("wrote {target}/{name}");
    }
    Ok(())
}

fn with_selector(selector: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(body);
    out
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let policy = zdr_schemas::parse_policy(
        "specs/backup/policies.yaml",
        include_str!("../../specs/backup/policies.yaml"),
    )
    .expect("the shipped policy parses");
    let bundle = PolicyBundle {
        revision: 3,
        issued_at: fuzz::NOW,
        source_digest: "00".repeat(32),
        policy,
    };
    let bundle = serde_json::to_vec(&bundle).expect("serializes");
    let ping = br#"{"ping":{}}"#;
    let release = br#"{"release_holds":{"dataset":"tank/data","tag":"zdr-repl-t1","keep":"s2"}}"#;
    let header = format!(
        r#"{{"kid":"fuzz-1","id":"c-2","iat":{},"exp":{},"epoch":4}}"#,
        fuzz::NOW,
        fuzz::NOW + 60
    );
    let mut signed_header = header.into_bytes();
    signed_header.push(b'\n');
    signed_header.extend_from_slice(release);

    let stream: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    vec![
        (
            "envelope",
            "valid-command",
            with_selector(0, &fuzz::seal(ping)),
        ),
        (
            "envelope",
            "valid-policy",
            with_selector(0, &fuzz::seal(&bundle)),
        ),
        (
            "envelope",
            "valid-signed-header",
            with_selector(1, &signed_header),
        ),
        (
            "envelope",
            "valid-sealed-payload",
            with_selector(2, release),
        ),
        ("wire", "valid-policy-bundle", with_selector(8, &bundle)),
        ("frame", "valid-raw", frames(false, &[b"hello, zfs stream"])),
        ("frame", "valid-empty", frames(false, &[])),
        (
            "frame",
            "valid-zstd",
            frames(true, &[&stream[..1000], b"short raw frame"]),
        ),
    ]
}

/// A sender's side of the data plane: hello for the fuzz job, then one data
/// frame per chunk (zstd when asked and smaller), then the end frame.
fn frames(zstd: bool, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = b"ZDRT".to_vec();
    out.push(1);
    out.push(if zstd { 1 | 2 } else { 0 });
    out.extend_from_slice(&fuzz::FRAME_TOKEN);
    out.extend_from_slice(&4096u64.to_be_bytes());
    out.push(fuzz::FRAME_JOB.len() as u8);
    out.extend_from_slice(fuzz::FRAME_JOB.as_bytes());
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    for chunk in chunks {
        hasher.update(chunk);
        total += chunk.len() as u64;
        let packed = zstd::bulk::compress(chunk, 3).expect("zstd");
        let (kind, body) = if zstd && packed.len() < chunk.len() {
            (2u8, &packed[..])
        } else {
            (1u8, &chunk[..])
        };
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out.push(3);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(hasher.finalize().as_bytes());
    out
}
