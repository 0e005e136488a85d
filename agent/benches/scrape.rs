//! Agent metrics benchmark, run by `ops/bench-agent-scrape.sh`: the cost of
//! a `/metrics` scrape and of the after-pass update that feeds it, for an
//! agent holding 10,000 snapshots (10 datasets × 1,000), against the same
//! agent holding 100 (10 × 10), side by side in one run. Goal: a scrape
//! under 1 s at 10,000 snapshots, and a ratio near 1 (the scrape reads
//! memory, so it follows datasets, not snapshots).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zdr_agent::audit::AuditLog;
use zdr_agent::lifecycle::{Lifecycle, PassReport};
use zdr_agent::telemetry;
use zdr_agent::zfs::sim::SimBackend;
use zdr_common::dataset::DatasetName;

const DATASETS: usize = 10;
const SCRAPES: usize = 50;

static CLOCK: AtomicI64 = AtomicI64::new(0);

fn lifecycle(snapshots_per_dataset: usize, dir: &std::path::Path) -> Lifecycle {
    let start = 1_700_000_000;
    let backend = SimBackend::new().with_clock(Arc::new(|| CLOCK.load(Ordering::Relaxed)));
    backend.add_pool("tank", 1 << 44).unwrap();
    let names: Vec<DatasetName> = (0..DATASETS)
        .map(|d| DatasetName::parse(&format!("tank/ds{d:02}")).unwrap())
        .collect();
    for n in &names {
        backend.create_dataset(n).unwrap();
    }
    use zdr_agent::zfs::Backend;
    for k in 0..snapshots_per_dataset {
        let t = start + k as i64 * 60;
        CLOCK.store(t, Ordering::Relaxed);
        backend
            .snapshot(
                &names,
                &zdr_agent::retention::snapshot_name("zdr", t),
                false,
            )
            .unwrap();
    }
    let audit = AuditLog::open(&dir.join(format!("audit-{snapshots_per_dataset}.jsonl"))).unwrap();
    let lc = Lifecycle::new("bench".into(), Arc::new(backend), audit);
    lc.rescan(CLOCK.load(Ordering::Relaxed)).unwrap();
    lc
}

async fn scrape(port: u16) -> usize {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200"), "scrape failed");
    buf.len()
}

struct Figures {
    snapshots: usize,
    update: Duration,
    scrape_median: Duration,
    scrape_max: Duration,
    bytes: usize,
}

async fn measure(per_dataset: usize, dir: &std::path::Path, port: u16) -> Figures {
    let lc = lifecycle(per_dataset, dir);
    let now = CLOCK.load(Ordering::Relaxed);
    let empty = PassReport::default();
    let t = Instant::now();
    telemetry::record_pass(&lc, &empty, &empty, now);
    let update = t.elapsed();
    let mut times = Vec::with_capacity(SCRAPES);
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let t = Instant::now();
        bytes = scrape(port).await;
        times.push(t.elapsed());
    }
    times.sort();
    Figures {
        snapshots: per_dataset * DATASETS,
        update,
        scrape_median: times[SCRAPES / 2],
        scrape_max: times[SCRAPES - 1],
        bytes,
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(telemetry::serve(listener, handle, shutdown.clone()));
    let base = measure(10, dir.path(), port).await;
    let big = measure(1_000, dir.path(), port).await;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("| snapshots | after-pass update | scrape median | scrape max | answer |");
    println!("|---|---|---|---|---|");
    for f in [&base, &big] {
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {} B |",
            f.snapshots,
            ms(f.update),
            ms(f.scrape_median),
            ms(f.scrape_max),
            f.bytes
        );
    }
    println!(
        "ratio 10,000 / 100 snapshots: scrape median {:.2}x, update {:.2}x; goal: scrape under 1 s at 10,000 ({})",
        big.scrape_median.as_secs_f64() / base.scrape_median.as_secs_f64(),
        big.update.as_secs_f64() / base.update.as_secs_f64(),
        if big.scrape_max < Duration::from_secs(1) { "met" } else { "NOT met" }
    );
    shutdown.cancel();
    let _ = server.await;
}
