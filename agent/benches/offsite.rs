//! Offsite benchmark, run by `ops/bench-offsite.sh`: zdr's upload and restore
//! (`offsite::store`) against raw PUT and GET of the same bytes, on the same
//! SeaweedFS S3 server on loopback, side by side in one run.
//!
//! - raw PUT: the stream cut into objects of the segment size, `put_object`
//!   with the same client and the same number of requests in flight, no
//!   encryption, no hashing;
//! - zdr upload: `Store::upload` of the same stream with the same segment
//!   size and concurrency: AEAD per segment, SHA-256, Content-MD5, object
//!   lock (governance), the signed manifest last;
//! - raw GET: those raw objects fetched in order, the same number ahead;
//! - zdr restore: `Store::restore_stream` of that upload: manifest check,
//!   per-segment SHA-256 and decryption;
//! - zdr verify: `Store::verify` of that upload: manifest check and every
//!   segment's SHA-256, no decryption (what a scheduled verification reads).
//!
//! Every phase runs in its own child process (this binary with `--phase`),
//! so its peak RSS (VmHWM) is its own. The order of the phases alternates
//! between runs so neither side always gets the warmer server.

#[path = "../tests/support/seaweed.rs"]
mod seaweed;

use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::task::JoinSet;
use x25519_dalek::{PublicKey, StaticSecret};
use zdr_agent::offsite::manifest::{ManifestSigner, SendFlags, TrustedSigners};
use zdr_agent::offsite::sizing::{Sizing, PART};
use zdr_agent::offsite::store::{BucketConfig, LockMode, ObjectLock, Store, UploadRequest};

const MIB: u64 = 1 << 20;
const MB: f64 = 1e6;
const BUCKET: &str = "bench";
const KID: &str = "bench";
/// Fixed keys: the restore phase runs in another process than the upload.
const SIGNING_SEED: [u8; 32] = [7; 32];
const RECOVERY_SEED: [u8; 32] = [9; 32];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    RawPut,
    ZdrUpload,
    RawGet,
    ZdrRestore,
    ZdrVerify,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::RawPut => "raw-put",
            Phase::ZdrUpload => "zdr-upload",
            Phase::RawGet => "raw-get",
            Phase::ZdrRestore => "zdr-restore",
            Phase::ZdrVerify => "zdr-verify",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        [
            Phase::RawPut,
            Phase::ZdrUpload,
            Phase::RawGet,
            Phase::ZdrRestore,
            Phase::ZdrVerify,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

struct Args {
    bytes: u64,
    segment: u64,
    in_flight: u32,
    runs: usize,
    /// Set in a child: the phase to run, where, and which run's objects.
    phase: Option<(Phase, String, usize)>,
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bench offsite: bad or incomplete flag {flag}\n\
         usage: offsite [--bytes N] [--segment-mib N] [--in-flight N] [--runs N]"
    );
    std::process::exit(2)
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            bytes: 512 * MIB,
            segment: 32 * MIB,
            in_flight: 4,
            runs: 3,
            phase: None,
        };
        let (mut phase, mut endpoint, mut run) = (None, None, None);
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            // `cargo bench` adds --bench.
            if flag == "--bench" {
                continue;
            }
            let value = it.next().unwrap_or_else(|| usage(&flag));
            let num = |v: &str| v.parse::<u64>().unwrap_or_else(|_| usage(&flag));
            match flag.as_str() {
                "--bytes" => args.bytes = num(&value),
                "--segment-mib" => args.segment = num(&value) * MIB,
                "--in-flight" => args.in_flight = num(&value) as u32,
                "--runs" => args.runs = num(&value) as usize,
                "--phase" => phase = Some(Phase::parse(&value).unwrap_or_else(|| usage(&flag))),
                "--endpoint" => endpoint = Some(value),
                "--run" => run = Some(num(&value) as usize),
                _ => usage(&flag),
            }
        }
        if let (Some(p), Some(e), Some(r)) = (phase, endpoint, run) {
            args.phase = Some((p, e, r));
        }
        args
    }

    fn sizing(&self) -> Sizing {
        Sizing::fixed(self.segment, PART, self.in_flight).unwrap_or_else(|e| {
            eprintln!("bench offsite: segment {} B: {e}", self.segment);
            std::process::exit(2)
        })
    }
}

/// A stream of `remaining` bytes: one random 16 MiB block, repeated (no
/// compression anywhere on the path, so repeats cost what fresh bytes would).
struct Source {
    block: Arc<Vec<u8>>,
    pos: usize,
    remaining: u64,
}

impl Source {
    fn new(bytes: u64) -> Source {
        let mut block = vec![0u8; 16 * MIB as usize];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut block);
        Source {
            block: Arc::new(block),
            pos: 0,
            remaining: bytes,
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.remaining)
            .min((self.block.len() - self.pos) as u64) as usize;
        let start = self.pos;
        buf.put_slice(&self.block[start..start + n]);
        self.pos = (self.pos + n) % self.block.len();
        self.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

fn config(endpoint: &str) -> BucketConfig {
    BucketConfig {
        endpoint: endpoint.to_string(),
        region: "us-east-1".into(),
        bucket: BUCKET.into(),
        prefix: "zdr/".into(),
        access_key_id: seaweed::ACCESS_KEY.into(),
        secret_access_key: seaweed::SECRET_KEY.into(),
    }
}

fn raw_key(run: usize, index: u64) -> String {
    format!("raw/{run}/{index:08}")
}

fn dataset(run: usize) -> String {
    format!("bench/r{run}")
}

/// CPU seconds (user + system, all threads) this process has used so far,
/// from /proc/self/stat, whose times are in USER_HZ ticks: 100 a second on
/// every Linux x86_64 and arm64 build.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, the 12th and
    // 13th after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Peak resident set of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn raw_put(store: &Store, args: &Args, run: usize) -> u64 {
    let mut src = Source::new(args.bytes);
    let mut tasks = JoinSet::new();
    let (mut index, mut total) = (0u64, 0u64);
    loop {
        let mut buf = Vec::with_capacity(args.segment as usize);
        let n = (&mut src)
            .take(args.segment)
            .read_to_end(&mut buf)
            .await
            .expect("the source cannot fail");
        if n == 0 {
            break;
        }
        total += n as u64;
        while tasks.len() >= args.in_flight as usize {
            tasks.join_next().await.unwrap().unwrap();
        }
        let (client, key) = (store.client().clone(), raw_key(run, index));
        tasks.spawn(async move {
            client
                .put_object()
                .bucket(BUCKET)
                .key(&key)
                .body(ByteStream::from(Bytes::from(buf)))
                .send()
                .await
                .unwrap_or_else(|e| panic!("raw PUT {key}: {e:?}"));
        });
        index += 1;
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    total
}

async fn zdr_upload(store: &Store, args: &Args, run: usize) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let signer = ManifestSigner::new(KID, SigningKey::from_bytes(&SIGNING_SEED));
    let recovery = StaticSecret::from(RECOVERY_SEED);
    let req = UploadRequest {
        dataset: dataset(run),
        from_guid: None,
        to_guid: 1,
        to_name: "bench".into(),
        flags: SendFlags {
            raw: true,
            ..SendFlags::default()
        },
        parent: None,
        recipients: vec![PublicKey::from(&recovery)],
        lock: Some(ObjectLock {
            mode: LockMode::Governance,
            retain_until: now + 86_400,
        }),
        storage_class: None,
        sizing: args.sizing(),
        now,
    };
    let up = store
        .upload(Source::new(args.bytes), req, &signer)
        .await
        .unwrap_or_else(|e| panic!("zdr upload: {e}"));
    up.manifest.manifest.stream_bytes
}

async fn raw_get(store: &Store, args: &Args, run: usize) -> u64 {
    let count = args.bytes.div_ceil(args.segment);
    let client = store.client().clone();
    let mut bodies = futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let key = raw_key(run, i);
                let out = client
                    .get_object()
                    .bucket(BUCKET)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("raw GET {key}: {e:?}"));
                out.body.collect().await.unwrap().into_bytes()
            }
        })
        .buffered(args.in_flight as usize);
    let mut total = 0u64;
    while let Some(body) = bodies.next().await {
        total += body.len() as u64;
    }
    total
}

async fn zdr_restore(store: &Store, args: &Args, run: usize) -> u64 {
    let signer = ManifestSigner::new(KID, SigningKey::from_bytes(&SIGNING_SEED));
    let mut trusted = TrustedSigners::default();
    trusted.trust(KID, signer.verifying_key());
    let plan = store
        .plan_restore(&dataset(run), 1, &trusted)
        .await
        .unwrap_or_else(|e| panic!("zdr restore plan: {e}"));
    let recovery = StaticSecret::from(RECOVERY_SEED);
    let mut sink = tokio::io::sink();
    let mut total = 0;
    for m in &plan.chain {
        total += store
            .restore_stream(m, &recovery, args.in_flight as usize, &mut sink)
            .await
            .unwrap_or_else(|e| panic!("zdr restore: {e}"));
    }
    total
}

/// Re-reads the stream's segments (signature, SHA-256) without opening
/// them; returns the stored bytes read (the sealed segments are a little
/// larger than the stream).
async fn zdr_verify(store: &Store, args: &Args, run: usize) -> u64 {
    let signer = ManifestSigner::new(KID, SigningKey::from_bytes(&SIGNING_SEED));
    let mut trusted = TrustedSigners::default();
    trusted.trust(KID, signer.verifying_key());
    let check = store
        .verify(&dataset(run), &trusted, args.in_flight as usize)
        .await
        .unwrap_or_else(|e| panic!("zdr verify: {e}"));
    assert!(check.problems.is_empty(), "{check:?}");
    check.bytes
}

/// A child: runs one phase and prints `bytes secs peak_rss_bytes cpu_secs`.
fn child(args: &Args, phase: Phase, endpoint: &str, run: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::new(&config(endpoint));
    let (start, cpu) = (Instant::now(), cpu_secs());
    let bytes = rt.block_on(async {
        match phase {
            Phase::RawPut => raw_put(&store, args, run).await,
            Phase::ZdrUpload => zdr_upload(&store, args, run).await,
            Phase::RawGet => raw_get(&store, args, run).await,
            Phase::ZdrRestore => zdr_restore(&store, args, run).await,
            Phase::ZdrVerify => zdr_verify(&store, args, run).await,
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let expected = if phase == Phase::ZdrVerify {
        bytes >= args.bytes
    } else {
        bytes == args.bytes
    };
    assert!(
        expected,
        "{} moved {bytes} bytes, not {}",
        phase.name(),
        args.bytes
    );
    println!("{bytes} {secs} {} {}", peak_rss_bytes(), cpu_secs() - cpu);
}

struct Measured {
    mb_s: f64,
    rss: u64,
    /// The client's CPU seconds per GB moved (the S3 server's are not counted).
    cpu_s_gb: f64,
}

fn spawn_phase(args: &Args, phase: Phase, endpoint: &str, run: usize) -> Measured {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--phase", phase.name(), "--endpoint", endpoint])
        .args([
            "--run",
            &run.to_string(),
            "--bytes",
            &args.bytes.to_string(),
        ])
        .args(["--segment-mib", &(args.segment / MIB).to_string()])
        .args(["--in-flight", &args.in_flight.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "phase {} failed: {}\n{}",
        phase.name(),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<f64> = stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let (bytes, secs, rss, cpu) = (fields[0], fields[1], fields[2], fields[3]);
    Measured {
        mb_s: bytes / secs / MB,
        rss: rss as u64,
        cpu_s_gb: cpu / (bytes / 1e9),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    if let Some((phase, endpoint, run)) = &args.phase {
        child(&args, *phase, endpoint, *run);
        return;
    }
    let sizing = args.sizing();
    let weed = seaweed::Seaweed::start();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(weed.bucket(BUCKET, true));
    let endpoint = weed.endpoint();
    println!(
        "offsite: {} MiB per phase, segment {} MiB, {} in flight, {} runs; SeaweedFS {} (object lock on)",
        args.bytes / MIB,
        args.segment / MIB,
        args.in_flight,
        args.runs,
        endpoint
    );
    println!(
        "zdr upload's own bound (segment x (in flight + 1)): {:.0} MiB",
        sizing.peak_memory() as f64 / MIB as f64
    );
    println!(
        "{:>4} {:>12} {:>10} {:>12} {:>15}",
        "run", "phase", "MB/s", "peak RSS MiB", "client CPU s/GB"
    );
    let mut results: Vec<(Phase, Measured)> = Vec::new();
    for run in 0..args.runs {
        let order = if run % 2 == 0 {
            [
                Phase::RawPut,
                Phase::ZdrUpload,
                Phase::RawGet,
                Phase::ZdrRestore,
                Phase::ZdrVerify,
            ]
        } else {
            [
                Phase::ZdrUpload,
                Phase::RawPut,
                Phase::ZdrVerify,
                Phase::ZdrRestore,
                Phase::RawGet,
            ]
        };
        for phase in order {
            let m = spawn_phase(&args, phase, &endpoint, run);
            println!(
                "{run:>4} {:>12} {:>10.1} {:>12.0} {:>15.2}",
                phase.name(),
                m.mb_s,
                m.rss as f64 / MIB as f64,
                m.cpu_s_gb
            );
            results.push((phase, m));
        }
    }
    // Median throughput and CPU, worst peak RSS.
    let of = |p: Phase| -> (f64, f64, f64) {
        let picked: Vec<&Measured> = results
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, m)| m)
            .collect();
        (
            median(picked.iter().map(|m| m.mb_s).collect()),
            picked.iter().map(|m| m.rss).max().unwrap_or(0) as f64 / MIB as f64,
            median(picked.iter().map(|m| m.cpu_s_gb).collect()),
        )
    };
    let (put, put_rss, put_cpu) = of(Phase::RawPut);
    let (up, up_rss, up_cpu) = of(Phase::ZdrUpload);
    let (get, get_rss, get_cpu) = of(Phase::RawGet);
    let (restore, restore_rss, restore_cpu) = of(Phase::ZdrRestore);
    println!(
        "\nmedians over {} runs (peak RSS: the worst run)",
        args.runs
    );
    println!(
        "upload:  zdr {up:.1} MB/s, raw PUT {put:.1} MB/s, ratio {:.2} (goal >= 0.80); \
         peak RSS zdr {up_rss:.0} MiB, raw {put_rss:.0} MiB; client CPU s/GB zdr {up_cpu:.2}, \
         raw {put_cpu:.2}",
        up / put
    );
    println!(
        "restore: zdr {restore:.1} MB/s, raw GET {get:.1} MB/s, ratio {:.2} (goal >= 0.80); \
         peak RSS zdr {restore_rss:.0} MiB, raw {get_rss:.0} MiB; client CPU s/GB zdr \
         {restore_cpu:.2}, raw {get_cpu:.2}",
        restore / get
    );
    let (verify, verify_rss, verify_cpu) = of(Phase::ZdrVerify);
    println!(
        "verify:  zdr {verify:.1} MB/s (stored bytes), raw GET {get:.1} MB/s, ratio {:.2}; \
         peak RSS zdr {verify_rss:.0} MiB; client CPU s/GB zdr {verify_cpu:.2}",
        verify / get
    );
}
