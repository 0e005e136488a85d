use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zdr_agent::audit::AuditLog;
use zdr_agent::config::{BackendConfig, Config};
use zdr_agent::latency::Slow;
use zdr_agent::lifecycle::Lifecycle;
use zdr_agent::node::{self, Agent};
use zdr_agent::replication::Replication;
use zdr_agent::scheduler::{self, Settings};
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
    /// Overrides `nats_url` from the config file (one URL, or several
    /// separated by commas).
    #[arg(long, env = "ZDR_NATS_URL")]
    nats_url: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Check the config file and the files it names (NATS credential, TLS
    /// certificates and key), print what is wrong with file, line and column,
    /// and exit: non-zero when something is wrong. Starts nothing.
    #[arg(long)]
    check_config: bool,
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
            zdr_agent::zfs::lzc::LzcBackend::open(Box::new(CliBackend::new(
                zfs.clone(),
                zpool.clone(),
            )))?,
        )),
        #[cfg(not(feature = "lzc"))]
        BackendConfig::Lzc { .. } => Err(anyhow!(
            "backend kind \"lzc\" needs a zdr-agent built with `--features lzc`; rebuild it or use kind = \"cli\""
        )),
        BackendConfig::Sim {
            pools,
            snapshot_bytes,
            op_latency_ms,
            hash_latency_ms,
        } => {
            warn!("SIMULATED ZFS BACKEND: this agent protects no real data (demo and scale tests only)");
            let mut sim = SimBackend::open(state.path("sim-pools.json"))?;
            if let Some(bytes) = snapshot_bytes {
                sim = sim.with_snapshot_bytes(*bytes);
            }
            for pool in pools {
                match sim.add_pool(&pool.name, pool.size_bytes) {
                    Ok(()) => {}
                    Err(ZfsError::Exists { .. }) => sim.grow_pool(&pool.name, pool.size_bytes)?,
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
            let sim: Arc<dyn Backend> = Arc::new(sim);
            Ok(match (op_latency_ms, hash_latency_ms) {
                (None, None) => sim,
                (op, hash) => {
                    warn!(?op, ?hash, "simulated ZFS operations are slowed down (op_latency_ms, hash_latency_ms)");
                    let ms = |v: &Option<u64>| Duration::from_millis(v.unwrap_or(0));
                    Arc::new(Slow::new(sim, ms(op)).with_hash(ms(hash)))
                }
            })
        }
    }
}

/// How long work still running after the orderly shutdown (a blocking ZFS
/// call whose job did not stop in its grace time) may hold up the exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(run());
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

/// One token for SIGINT and SIGTERM (systemd stops services with the latter).
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutting down: the pass under way finishes, running jobs stop resumably"
        );
        t.cancel();
    });
    Ok(token)
}

/// `--check-config`: what a start would refuse, found before a restart.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if let Some(t) = &config.transfer {
        zdr_agent::transfer::FleetTls::from_pem_files(&t.ca, &t.cert, &t.key)
            .map_err(|e| anyhow!("{}: [transfer]: {e}", path.display()))?;
    }
    println!(
        "{}: ok (node {}, site {}, backend {})",
        path.display(),
        config.node,
        config.site,
        match config.backend {
            BackendConfig::Cli { .. } => "cli",
            BackendConfig::Lzc { .. } => "lzc",
            BackendConfig::Sim { .. } => "sim",
        }
    );
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.check_config {
        return check_config(&cli.config);
    }
    init_logs(cli.json_logs);
    let shutdown = shutdown_on_signals()?;
    let mut config = Config::load(&cli.config)?;
    if let Some(url) = cli.nats_url {
        zdr_common::servers::server_urls(&url).context("--nats-url / ZDR_NATS_URL")?;
        config.nats_url = url;
    }
    let state = StateDir::open(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let verifier = config
        .verifier()
        .map_err(|e| anyhow!("{}: {e}", cli.config.display()))?;
    let backend = backend(&config, &state)?;
    let audit = AuditLog::open(&state.path("audit.jsonl")).context("opening the audit log")?;
    let lifecycle = Arc::new(
        Lifecycle::new(config.node.clone(), backend, audit).with_pools(config.pools.clone()),
    );
    lifecycle
        .keep_floor_at(&state.path("floor.json"))
        .context("loading the retention floor")?;
    match state.load_policy(&verifier) {
        Ok(Some(p)) => {
            info!(revision = p.bundle.revision, "cached signed policy loaded");
            lifecycle.install_policy(p);
        }
        Ok(None) => info!("no cached policy yet; waiting for the coordinator's"),
        Err(e) => warn!(error = %e, "cached policy refused; waiting for the coordinator's"),
    }
    let freshness = state.load_freshness().map_err(|e| anyhow!(e))?;
    info!(node = %config.node, site = %config.site, media = %config.media, backend = lifecycle.backend.kind(), "agent starting");

    let settings = Settings {
        tick: Duration::from_secs(config.tick_secs),
        rescan_secs: config.rescan_secs as i64,
        actor: format!("agent:{}/retention", config.node),
    };
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .idle_timeout(
                    metrics_util::MetricKindMask::GAUGE,
                    Some(zdr_agent::telemetry::gauge_idle(settings.tick)),
                )
                .install_recorder()
                .context("installing the metrics recorder")?;
            let listener = zdr_agent::telemetry::bind(addr)
                .await
                .map_err(|e| anyhow!("{}: {e}", cli.config.display()))?;
            info!(%addr, "metrics at /metrics");
            Some(tokio::spawn(zdr_agent::telemetry::serve(
                listener,
                handle,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let scheduler = tokio::spawn(scheduler::run(
        lifecycle.clone(),
        settings,
        shutdown.clone(),
    ));
    let (replication, job_updates) = Replication::start(
        lifecycle.clone(),
        config.node.clone(),
        config.transfer.as_ref(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("{}", cli.config.display()))?;
    if let Some(o) = &config.offsite {
        let signer = o
            .signer(&config.node)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
        replication.enable_offsite(zdr_agent::replication::upload::Offsite {
            signer,
            budget: o.budget(),
            config: o.clone(),
        });
    }
    let agent = Arc::new(Agent::new(
        config,
        lifecycle,
        verifier,
        state,
        freshness,
        replication,
    ));
    node::run(agent, job_updates, shutdown.clone()).await;
    // Early only when NATS is unusable: the lifecycle goes on alone.
    shutdown.cancelled().await;
    if let Err(e) = scheduler.await {
        warn!(error = %e, "the scheduler panicked");
    }
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    info!("stopped");
    Ok(())
}
