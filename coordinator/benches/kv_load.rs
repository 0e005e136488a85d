//! A new leader's read of a KV bucket, run by `ops/bench-kv-load.sh`: the
//! inventories of a large fleet read back the way the coordinator did before
//! (`keys()`, then one get per key) against `bus::load_all` (one pass of an
//! ordered consumer), side by side in one run, from one real nats-server on
//! loopback. Both hand every value over; neither parses it, so the figures
//! are the bus's.
//!
//! Default: 20,000 keys of 13,300 bytes, the inventories of 200 nodes × 100
//! datasets × 100 snapshots (the scale runs measured 13.3 KB per inventory
//! of 100 snapshots). `ZDR_BENCH_KEYS`, `ZDR_BENCH_VALUE_BYTES` and
//! `ZDR_BENCH_ROUNDS` (3) change it; `ZDR_NATS_SERVER` names the server.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use zdr_coordinator::bus;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start(dir: &std::path::Path) -> (Server, async_nats::Client) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("ZDR_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}; install it with ops/install-deps.sh"));
    let server = Server(child);
    let url = format!("nats://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(c) = async_nats::connect(&url).await {
            return (server, c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nats-server did not answer on {url} within 10 s");
}

/// `keys()` and a get per key: what the coordinator did before `load_all`.
async fn per_key(kv: &async_nats::jetstream::kv::Store) -> (usize, usize) {
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    let (mut n, mut bytes) = (0, 0);
    for key in keys {
        if let Some(v) = kv.get(&key).await.unwrap() {
            n += 1;
            bytes += v.len();
        }
    }
    (n, bytes)
}

async fn one_pass(
    client: &async_nats::Client,
    kv: &async_nats::jetstream::kv::Store,
) -> (usize, usize) {
    let mut bytes = 0;
    let n = bus::load_all(client, kv, |_, v| bytes += v.len())
        .await
        .unwrap();
    (n, bytes)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let keys = env("ZDR_BENCH_KEYS", 20_000);
    let size = env("ZDR_BENCH_VALUE_BYTES", 13_300);
    let rounds = env("ZDR_BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let js = async_nats::jetstream::new(client.clone());
    let stores = bus::open(&js, Duration::from_secs(5), 1).await.unwrap();
    let kv = &stores.inventory;

    let fill = Instant::now();
    let value: bytes::Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    futures::stream::iter(0..keys)
        .map(|i| {
            let key = bus::inventory_key(
                &format!("node-{:04}", i / 100),
                &format!("tank/ds{:03}", i % 100),
            );
            let value = value.clone();
            async move { kv.put(key, value).await.map(|_| ()) }
        })
        .buffer_unordered(256)
        .try_collect::<()>()
        .await
        .unwrap();
    // A key deleted since is history, which both leave out.
    kv.delete(bus::inventory_key("node-0000", "tank/ds000"))
        .await
        .unwrap();
    let live = keys - 1;
    println!(
        "bucket {}: {keys} keys of {size} bytes put in {:.1} s, 1 deleted since",
        bus::INVENTORY_BUCKET,
        fill.elapsed().as_secs_f64()
    );

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let t = Instant::now();
        let got = per_key(kv).await;
        a.push(t.elapsed());
        assert_eq!(got, (live, live * size), "keys() and a get per key");
        let t = Instant::now();
        let got = one_pass(&client, kv).await;
        b.push(t.elapsed());
        assert_eq!(got, (live, live * size), "load_all");
        println!(
            "round {round}: keys() + get per key {:.2} s, load_all {:.2} s",
            a[round - 1].as_secs_f64(),
            b[round - 1].as_secs_f64()
        );
    }
    let (ma, mb) = (median(a), median(b));
    println!(
        "median of {rounds}: keys() + get per key {:.2} s ({:.0} keys/s), load_all {:.2} s ({:.0} keys/s); \
         load_all takes {:.3}x the time of the baseline",
        ma.as_secs_f64(),
        live as f64 / ma.as_secs_f64(),
        mb.as_secs_f64(),
        live as f64 / mb.as_secs_f64(),
        mb.as_secs_f64() / ma.as_secs_f64()
    );
}
