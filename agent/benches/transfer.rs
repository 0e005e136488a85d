//! Data-plane benchmark, run by `ops/bench-transfer.sh`: throughput on
//! loopback against ssh and a plain pipe, and throttle accuracy.
//!
//! Every method moves the same bytes (a random 16 MiB block, repeated) from
//! this process through an OS pipe, its transport and another OS pipe into
//! `cat > /dev/null`, as an agent's stream goes from `zfs send` to `zfs
//! receive`, and counts its own setup (TLS or ssh handshake, process start).

#[path = "../tests/support/pki.rs"]
mod pki;

use std::io::Write;
use std::num::NonZeroU64;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::unix::pipe;
use zdr_agent::transfer::{Job, JobToken, RateHandle, Receiver, SendOptions, Sender};

const BLOCK: usize = 16 << 20;
const MB: f64 = 1e6;

struct Args {
    bytes: u64,
    runs: usize,
    throttle_secs: f64,
    rates_mb: Vec<u64>,
    ssh: Option<Ssh>,
}

struct Ssh {
    port: u16,
    key: String,
    user: String,
}

impl Args {
    fn parse() -> Args {
        let mut args = Args {
            bytes: 1 << 30,
            runs: 3,
            throttle_secs: 30.0,
            rates_mb: vec![10, 50, 100],
            ssh: None,
        };
        let (mut port, mut key, mut user) = (None, None, None);
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            // `cargo bench` adds --bench.
            if flag == "--bench" {
                continue;
            }
            let value = it.next().unwrap_or_else(|| usage(&flag));
            match flag.as_str() {
                "--bytes" => args.bytes = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--runs" => args.runs = value.parse().unwrap_or_else(|_| usage(&flag)),
                "--throttle-secs" => {
                    args.throttle_secs = value.parse().unwrap_or_else(|_| usage(&flag))
                }
                "--rates-mb" => {
                    args.rates_mb = value
                        .split(',')
                        .map(|r| r.parse().unwrap_or_else(|_| usage(&flag)))
                        .collect()
                }
                "--ssh-port" => port = Some(value.parse().unwrap_or_else(|_| usage(&flag))),
                "--ssh-key" => key = Some(value),
                "--ssh-user" => user = Some(value),
                _ => usage(&flag),
            }
        }
        if let (Some(port), Some(key), Some(user)) = (port, key, user) {
            args.ssh = Some(Ssh { port, key, user });
        }
        args
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "bad or unknown flag {flag}\n\
         usage: transfer [--bytes N] [--runs N] [--throttle-secs S] [--rates-mb 10,50,100]\n\
         \x20              [--ssh-port P --ssh-key PATH --ssh-user USER]"
    );
    std::process::exit(2)
}

/// Seconds to move `bytes` through the data plane (TLS + BLAKE3) on
/// loopback: written into a pipe by a thread (as by `zfs send`), and out of
/// the receiver into `cat > /dev/null` through another (as into `zfs receive`).
async fn data_plane(block: &Arc<Vec<u8>>, bytes: u64, rate: Option<NonZeroU64>) -> f64 {
    let pki = pki::Pki::new("bench-fleet");
    let (source, target) = (pki.tls("node-a"), pki.tls("node-b"));
    let job = Job::new("bench", JobToken::generate()).expect("valid job id");
    let receiver = Receiver::bind(&target, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let addr = receiver.local_addr().expect("local address");
    let opts = SendOptions {
        rate: RateHandle::new(rate),
        ..SendOptions::default()
    };
    let started = Instant::now();
    let (feed, src) = pipe::pipe().expect("pipe");
    let feed = std::fs::File::from(feed.into_blocking_fd().expect("blocking pipe"));
    let b = block.clone();
    let feeding = std::thread::spawn(move || write_repeated(feed, &b, bytes));
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("running cat");
    let stdin = OwnedFd::from(cat.stdin.take().expect("piped stdin"));
    let mut sink = pipe::Sender::from_owned_fd(stdin).expect("pipe to cat");
    // Two tasks, so that both ends may run on their own core.
    let receiving = {
        let job = job.clone();
        tokio::spawn(async move { receiver.accept(&job, &mut sink, None).await })
    };
    let sending = tokio::spawn(async move {
        let mut src = src;
        Sender::new(&source)
            .send(addr, "node-b", &job, &mut src, &opts, None)
            .await
    });
    let (sent, received) = (
        sending.await.expect("sender task"),
        receiving.await.expect("receiver task"),
    );
    feeding.join().expect("feeding thread");
    let status = cat.wait().expect("waiting for cat");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "cat failed: {status}");
    let (sent, received) = (sent.expect("send"), received.expect("receive"));
    assert_eq!(sent.bytes, bytes);
    assert_eq!(sent.hash, received.hash);
    secs
}

/// Writes `bytes` of `block`, repeated, into `w`.
fn write_repeated(mut w: impl Write, block: &[u8], bytes: u64) {
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
        w.write_all(&block[..n]).expect("writing into the pipe");
        left -= n as u64;
    }
}

/// Seconds to write `bytes` into the standard input of `argv`.
fn child(block: &[u8], bytes: u64, argv: &[String]) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    write_repeated(child.stdin.take().expect("piped stdin"), block, bytes);
    let status = child.wait().expect("waiting for the child");
    assert!(status.success(), "{argv:?} failed: {status}");
    started.elapsed().as_secs_f64()
}

fn ssh_argv(ssh: &Ssh, cipher: Option<&str>) -> Vec<String> {
    let mut argv: Vec<String> = ["ssh", "-T", "-p", &ssh.port.to_string(), "-i", &ssh.key]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for option in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "Compression=no",
    ] {
        argv.extend(["-o".to_owned(), option.to_owned()]);
    }
    if let Some(cipher) = cipher {
        argv.extend(["-c".to_owned(), cipher.to_owned()]);
    }
    argv.push(format!("{}@127.0.0.1", ssh.user));
    argv.push("cat > /dev/null".to_owned());
    argv
}

fn best(runs: &[f64]) -> f64 {
    runs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut block = vec![0u8; BLOCK];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut block);
    let block = Arc::new(block);

    let mut methods: Vec<(String, Box<dyn Fn() -> f64>)> = Vec::new();
    let (b, n) = (block.clone(), args.bytes);
    methods.push((
        "plain pipe (cat > /dev/null)".to_owned(),
        Box::new(move || child(&b, n, &["cat".to_owned()])),
    ));
    if let Some(ssh) = &args.ssh {
        for (label, cipher) in [
            ("ssh 127.0.0.1 (default cipher)", None),
            (
                "ssh 127.0.0.1 -c aes128-gcm",
                Some("aes128-gcm@openssh.com"),
            ),
        ] {
            let (b, argv) = (block.clone(), ssh_argv(ssh, cipher));
            methods.push((label.to_owned(), Box::new(move || child(&b, n, &argv))));
        }
    }
    let handle = runtime.handle().clone();
    let b = block.clone();
    methods.push((
        "zdr data plane (TLS 1.3 + BLAKE3)".to_owned(),
        Box::new(move || handle.block_on(data_plane(&b, n, None))),
    ));

    println!(
        "throughput: {:.2} GiB per run, best of {} runs, loopback, 2 cores shared",
        args.bytes as f64 / (1u64 << 30) as f64,
        args.runs
    );
    let mut results = Vec::new();
    for (label, run) in &methods {
        let secs: Vec<f64> = (0..args.runs).map(|_| run()).collect();
        results.push((label.clone(), secs));
    }
    let rate = |secs: f64| args.bytes as f64 / secs / MB;
    let pipe = rate(best(&results[0].1));
    // Ratios against ssh with its default cipher and with its fastest one.
    let ssh: Vec<f64> = results[1..results.len() - 1]
        .iter()
        .map(|(_, secs)| rate(best(secs)))
        .collect();
    let ratio =
        |mbps: f64, base: Option<f64>| base.map_or("-".to_owned(), |b| format!("{:.2}x", mbps / b));
    println!(
        "{:<36} {:>7} {:>7} {:>8} {:>10} {:>8}  runs (s)",
        "method", "best s", "MB/s", "vs ssh", "vs ssh-aes", "vs pipe"
    );
    for (label, secs) in &results {
        let mbps = rate(best(secs));
        let runs: Vec<String> = secs.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{:<36} {:>7.2} {:>7.0} {:>8} {:>10} {:>7.2}x  {}",
            label,
            best(secs),
            mbps,
            ratio(mbps, ssh.first().copied()),
            ratio(mbps, ssh.last().copied()),
            mbps / pipe,
            runs.join(" ")
        );
    }
    if let Some(ssh) = &args.ssh {
        // Setup is in every figure above; for ssh it is large enough to show.
        let mut argv = ssh_argv(ssh, None);
        *argv.last_mut().expect("a remote command") = "true".to_owned();
        let setup = best(
            &(0..args.runs)
                .map(|_| child(&block, 0, &argv))
                .collect::<Vec<_>>(),
        );
        println!("ssh connection setup (ssh ... true): {setup:.2} s, included in the ssh rows;");
        let zdr = rate(best(&results[results.len() - 1].1));
        for (label, secs) in &results[1..results.len() - 1] {
            let steady = rate(best(secs) - setup);
            println!(
                "  without it, {label}: {steady:.0} MB/s, zdr {:.2}x that",
                zdr / steady
            );
        }
    }

    println!();
    println!(
        "throttle accuracy: {:.0} s per rate, data plane, 1 MB = 10^6 B",
        args.throttle_secs
    );
    println!(
        "{:>16} {:>16} {:>10} {:>9}",
        "configured MB/s", "measured MB/s", "error", "seconds"
    );
    for &mb in &args.rates_mb {
        let bytes_per_sec = mb * 1_000_000;
        let bytes = (bytes_per_sec as f64 * args.throttle_secs) as u64;
        let secs = runtime.block_on(data_plane(&block, bytes, NonZeroU64::new(bytes_per_sec)));
        let measured = bytes as f64 / secs / MB;
        println!(
            "{:>16} {:>16.3} {:>+9.2}% {:>9.2}",
            mb,
            measured,
            (measured / mb as f64 - 1.0) * 100.0,
            secs
        );
    }
}
