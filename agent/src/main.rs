use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use tracing::{info, warn};
use zdr_agent::audit::AuditLog;
use zdr_agent::config::{BackendConfig, Config};
use zdr_agent::lifecycle::Lifecycle;
use zdr_agent::node::{self, Agent};
use zdr_agent::replication::Replication;
use zdr_agent::state::StateDir;
use zdr_agent::zfs::cli::CliBackend;
use zdr_agent::zfs::sim::SimBackend;
use zdr_agent::zfs::{Backend, ZfsError};
use zdr_common::DatasetName;

#[derive(Parser)]
#[command(name = "zdr-agent", version, about = "zdr storage-node agent")]
struct Cli {
    #[arg(
        long,
        short,
        env = "ZDR_AGENT_CONFIG",
        default_value = "/etc/zdr/agent.toml"
    )]
    config: PathBuf,
    /// Overrides `nats_url` from the config file.
    #[arg(long, env = "ZDR_NATS_URL")]
    nats_url: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn backend(config: &Config, state: &StateDir) -> anyhow::Result<Arc<dyn Backend>> {
    match &config.backend {
        BackendConfig::Cli { zfs, zpool } => {
            Ok(Arc::new(CliBackend::new(zfs.clone(), zpool.clone())))
        }
        #[cfg(feature = "lzc")]
        BackendConfig::Lzc { zfs, zpool } => Ok(Arc::new(
            zdr_agent::zfs::lzc::LzcBackend::open(zfs.clone(), zpool.clone())?,
        )),
        #[cfg(not(feature = "lzc"))]
        BackendConfig::Lzc { .. } => Err(anyhow!(
            "backend kind \"lzc\" needs a zdr-agent built with `--features lzc`; rebuild it or use kind = \"cli\""
        )),
        BackendConfig::Sim {
            pools,
            snapshot_bytes,
        } => {
            warn!("SIMULATED ZFS BACKEND: this agent protects no real data (demo and scale tests only)");
            let mut sim = SimBackend::open(state.path("sim-pools.json"))?;
            if let Some(bytes) = snapshot_bytes {
                sim = sim.with_snapshot_bytes(*bytes);
            }
            for pool in pools {
                match sim.add_pool(&pool.name, pool.size_bytes) {
                    Ok(()) | Err(ZfsError::Exists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                for ds in &pool.datasets {
                    let name = DatasetName::parse(ds)?;
                    match sim.create_dataset(&name) {
                        Ok(()) | Err(ZfsError::Exists { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(Arc::new(sim))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.json_logs);
    let mut config = Config::load(&cli.config)?;
    if let Some(url) = cli.nats_url {
        config.nats_url = url;
    }
    let state = StateDir::open(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let verifier = config
        .verifier()
        .map_err(|e| anyhow!("{}: {e}", cli.config.display()))?;
    let backend = backend(&config, &state)?;
    let audit = AuditLog::open(&state.path("audit.jsonl")).context("opening the audit log")?;
    let lifecycle = Arc::new(Lifecycle::new(config.node.clone(), backend, audit));
    match state.load_policy(&verifier) {
        Ok(Some(p)) => {
            info!(revision = p.bundle.revision, "cached signed policy loaded");
            *lifecycle.policy.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        Ok(None) => info!("no cached policy yet; waiting for the coordinator's"),
        Err(e) => warn!(error = %e, "cached policy refused; waiting for the coordinator's"),
    }
    let freshness = state.load_freshness().map_err(|e| anyhow!(e))?;
    info!(node = %config.node, site = %config.site, media = %config.media, backend = lifecycle.backend.kind(), "agent starting");

    let tick = Duration::from_secs(config.tick_secs);
    let rescan = config.rescan_secs as i64;
    let actor = format!("agent:{}/retention", config.node);
    let lc = lifecycle.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        let mut warned_expiry = 0;
        loop {
            // A stop is only seen between passes: never in the middle of a destroy.
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop_rx.changed() => return,
            }
            let lc = lc.clone();
            let actor = actor.clone();
            let t = node::now();
            if let Some(p) = lc.policy() {
                if p.exp < t && t - warned_expiry > 3600 {
                    warned_expiry = t;
                    warn!(expired_at = p.exp, "the cached policy has expired; still applying it until the coordinator sends a new one");
                }
            }
            let pass = tokio::task::spawn_blocking(move || {
                let last = lc
                    .inventory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_rescan;
                if t - last >= rescan {
                    if let Err(e) = lc.rescan(t) {
                        warn!(error = %e, "inventory scan failed");
                    }
                }
                lc.snapshot_pass(t, false);
                lc.prune_pass(t, &actor);
            });
            if let Err(e) = pass.await {
                warn!(error = %e, "lifecycle pass panicked");
            }
        }
    });

    let (replication, job_updates) = Replication::start(
        lifecycle.clone(),
        config.node.clone(),
        config.transfer.as_ref(),
    )
    .await
    .with_context(|| format!("{}", cli.config.display()))?;
    let agent = Arc::new(Agent::new(
        config,
        lifecycle,
        verifier,
        state,
        freshness,
        replication,
    ));
    tokio::select! {
        _ = node::run(agent, job_updates) => {}
        _ = tokio::signal::ctrl_c() => info!("shutting down after the current pass"),
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(120), scheduler).await;
    Ok(())
}
