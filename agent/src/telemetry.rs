//! The agent's own Prometheus metrics, served at `GET /metrics` on
//! `metrics_listen` when the config sets it.
//!
//! Rules:
//! - a scrape never touches ZFS: the gauges are set after each lifecycle
//!   pass from the agent's cache ([`Lifecycle::dataset_summaries`]) and the
//!   pool list that pass read, and a scrape renders what is in memory; so
//!   its cost follows the number of datasets, not of snapshots;
//! - labels are datasets, classes and pools, never a snapshot name;
//! - a gauge not set for [`gauge_idle`] leaves the output, so a destroyed
//!   dataset or an exported pool stops repeating its last value.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use zdr_common::wire::PoolInfo;

use crate::lifecycle::{Lifecycle, PassReport};

/// One dataset as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    pub dataset: String,
    pub class: Option<String>,
    pub snapshots: usize,
    /// Unix seconds of the newest snapshot.
    pub newest_creation: Option<i64>,
    pub used: u64,
}

/// One gauge value: name, labels, value. Plain data, so the rules are
/// tested without a recorder.
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

/// The gauges for one pass: per dataset and per pool.
pub fn gauges(datasets: &[DatasetSummary], pools: &[PoolInfo], now: i64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(datasets.len() * 3 + pools.len() * 3);
    for d in datasets {
        let labels = vec![
            ("dataset", d.dataset.clone()),
            ("class", d.class.clone().unwrap_or_default()),
        ];
        out.push(("zdr_agent_snapshots", labels.clone(), d.snapshots as f64));
        if let Some(c) = d.newest_creation {
            out.push((
                "zdr_agent_newest_snapshot_age_seconds",
                labels.clone(),
                now.saturating_sub(c).max(0) as f64,
            ));
        }
        out.push(("zdr_agent_dataset_used_bytes", labels, d.used as f64));
    }
    for p in pools {
        let labels = vec![("pool", p.name.clone())];
        out.push(("zdr_agent_pool_size_bytes", labels.clone(), p.size as f64));
        out.push((
            "zdr_agent_pool_allocated_bytes",
            labels.clone(),
            p.allocated as f64,
        ));
        out.push((
            "zdr_agent_pool_healthy",
            labels,
            f64::from(u8::from(p.health == "ONLINE")),
        ));
    }
    out
}

/// How long a gauge outlives its last update: a few passes.
pub fn gauge_idle(tick: Duration) -> Duration {
    (tick * 3).max(Duration::from_secs(60))
}

/// Sets the gauges and counters after one lifecycle pass.
pub fn record_pass(lc: &Lifecycle, snapshot: &PassReport, prune: &PassReport, now: i64) {
    let pools = match lc.pools() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pools for the metrics");
            Vec::new()
        }
    };
    for (name, labels, value) in gauges(&lc.dataset_summaries(), &pools, now) {
        metrics::gauge!(name, &labels).set(value);
    }
    let revision = lc.policy().map_or(0, |p| p.bundle.revision);
    metrics::gauge!("zdr_agent_policy_revision").set(revision as f64);
    metrics::gauge!("zdr_agent_last_pass_timestamp_seconds").set(now as f64);
    metrics::counter!("zdr_agent_snapshots_taken_total").increment(snapshot.taken.len() as u64);
    metrics::counter!("zdr_agent_snapshots_destroyed_total")
        .increment(prune.destroyed.len() as u64);
    metrics::counter!("zdr_agent_pass_errors_total")
        .increment((snapshot.errors.len() + prune.errors.len()) as u64);
    metrics::counter!("zdr_agent_floor_refusals_total")
        .increment((snapshot.refused.len() + prune.refused.len()) as u64);
}

#[derive(Debug, thiserror::Error)]
#[error("metrics_listen {addr}: {source}; choose a free address or remove metrics_listen")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds `addr`; separate from [`serve`] so that a taken port stops the
/// agent at start with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

/// Serves `GET /metrics` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { h.render() }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_per_dataset_and_pool_never_per_snapshot() {
        let ds = [
            DatasetSummary {
                dataset: "tank/db".into(),
                class: Some("gold".into()),
                snapshots: 10_000,
                newest_creation: Some(1_000),
                used: 5,
            },
            DatasetSummary {
                dataset: "tank/new".into(),
                class: None,
                snapshots: 0,
                newest_creation: None,
                used: 0,
            },
        ];
        let pools = [PoolInfo {
            name: "tank".into(),
            size: 100,
            allocated: 40,
            free: 60,
            health: "DEGRADED".into(),
        }];
        let g = gauges(&ds, &pools, 1_090);
        let find = |name: &str, label: &str| {
            g.iter()
                .find(|(n, l, _)| *n == name && l.iter().any(|(_, v)| v == label))
                .map(|s| s.2)
        };
        assert_eq!(find("zdr_agent_snapshots", "tank/db"), Some(10_000.0));
        assert_eq!(
            find("zdr_agent_newest_snapshot_age_seconds", "tank/db"),
            Some(90.0)
        );
        // No snapshot yet: no age, rather than a made-up one.
        assert_eq!(
            find("zdr_agent_newest_snapshot_age_seconds", "tank/new"),
            None
        );
        assert_eq!(find("zdr_agent_pool_healthy", "tank"), Some(0.0));
        assert_eq!(find("zdr_agent_pool_allocated_bytes", "tank"), Some(40.0));
        // 3 per dataset with a snapshot, 2 without, 3 per pool.
        assert_eq!(g.len(), 3 + 2 + 3);
    }

    #[test]
    fn gauges_outlive_a_few_passes() {
        assert_eq!(gauge_idle(Duration::from_secs(5)), Duration::from_secs(60));
        assert_eq!(
            gauge_idle(Duration::from_secs(300)),
            Duration::from_secs(900)
        );
    }
}
