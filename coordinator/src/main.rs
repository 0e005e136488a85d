use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zdr_common::envelope;
use zdr_coordinator::service::{self, Config};

#[derive(Parser)]
#[command(name = "zdr-coordinator", version, about = "zdr fleet coordinator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of the `run` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the coordinator.
    Run(RunArgs),
    /// Write a new ed25519 signing key (base64) to KEY_FILE and print its public half.
    Keygen { key_file: PathBuf },
    /// Print the public half of a signing key, for the agents' `trusted_keys`.
    Pubkey { key_file: PathBuf },
    /// Write a new offsite recovery key (X25519, base64, mode 0600) to
    /// KEY_FILE and print its public half, a bucket task's `recipients` entry.
    /// Keep the file offline: it alone decrypts the bucket's streams.
    RecoveryKeygen { key_file: PathBuf },
    /// Make (once) an nkey seed for the coordinator and each node of the policy
    /// in DIR, and write DIR/auth.conf, the nats-server authorization.
    BusAuth {
        #[arg(long, env = "ZDR_POLICY", default_value = "specs/backup/policies.yaml")]
        policy: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        /// Also an operator user with every right, for the `nats` CLI.
        #[arg(long)]
        admin: bool,
    },
    /// Check a policy file (and a tasks file, an alert receivers file) and print what is wrong, with file, line and column.
    Check {
        policy: PathBuf,
        #[arg(long)]
        tasks: Option<PathBuf>,
        #[arg(long)]
        alerts: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// One NATS URL, or a cluster's servers separated by commas.
    #[arg(long, env = "ZDR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Replicas of the buckets and streams the coordinator creates (1 to 5):
    /// 1 on a single server, 3 on a three-server cluster. More than the
    /// cluster's JetStream servers is refused at start.
    #[arg(long, env = "ZDR_NATS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// This coordinator's nkey seed (mode 0600), as `bus-auth` writes it;
    /// without it the coordinator connects anonymously.
    #[arg(long, env = "ZDR_NATS_NKEY")]
    nats_nkey: Option<PathBuf>,
    #[arg(long, env = "ZDR_POLICY", default_value = "specs/backup/policies.yaml")]
    policy: PathBuf,
    /// Replication tasks (optional).
    #[arg(long, env = "ZDR_TASKS")]
    tasks: Option<PathBuf>,
    /// Alert receivers (optional; `specs/alerts/receivers.yaml` shows the format).
    #[arg(long, env = "ZDR_ALERTS")]
    alerts: Option<PathBuf>,
    #[arg(long, env = "ZDR_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The HTTP API's bearer token (mode 0600, one random word, e.g.
    /// `openssl rand -hex 32`). POST and every other mutation need it;
    /// without it they are all refused. Reads stay open.
    #[arg(long, env = "ZDR_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Base64 ed25519 signing key, as `keygen` writes it.
    #[arg(long, env = "ZDR_KEY_FILE")]
    key_file: PathBuf,
    #[arg(long, env = "ZDR_KEY_ID", default_value = "coordinator")]
    key_id: String,
    /// Name of this instance in the leadership lease.
    #[arg(long, env = "ZDR_INSTANCE")]
    instance: Option<String>,
    /// How long the leadership lease outlives the leader's last renewal
    /// (renewed every third of it). A standby leads within about 4/3 of it
    /// after the leader dies: 5 s keeps failover under 10 s (BENCHMARKS.md,
    /// "Failover"). Values below 3 are raised to 3.
    #[arg(long, env = "ZDR_LEASE_TTL_SECS", default_value_t = 5)]
    lease_ttl_secs: u64,
    #[arg(long, default_value_t = 30)]
    offline_after_secs: u64,
    #[arg(long, default_value_t = 10)]
    command_timeout_secs: u64,
    /// How long a drill waits for one content hash of a snapshot; the hash
    /// reads every byte, so give large datasets hours.
    #[arg(long, default_value_t = 86_400)]
    drill_hash_timeout_secs: u64,
    /// A cleared alert resolves only after this long without firing again,
    /// so that a flapping condition is one alert.
    #[arg(long, default_value_t = zdr_coordinator::alerts::KEEP_FIRING_SECS as u64)]
    alert_hold_secs: u64,
    /// `/metrics` serves one series per copy (lag, breach, pending) while
    /// the fleet has at most this many copies, and only the totals per node
    /// and class above it, so that a large fleet's scrape stays small.
    /// `/api/v1/report` has every copy whatever the size.
    #[arg(long, env = "ZDR_COPY_METRICS_MAX", default_value_t = 10_000)]
    copy_metrics_max: usize,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Check the signing key, the NATS credential, the policy and the tasks
    /// file, print what is wrong (with file, line and column), and exit:
    /// non-zero when something is wrong. Connects to nothing.
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

/// SIGINT or SIGTERM (systemd's stop) cancels `token`: one way to stop.
async fn stop_on_signal(token: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
    token.cancel();
}

fn read_seed(path: &std::path::Path) -> anyhow::Result<zdr_common::bus_auth::NkeySeed> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the NATS credential {}", path.display()))?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the NATS credential {}", path.display()))?;
    Ok(zdr_common::bus_auth::seed_from_file(
        path,
        meta.permissions().mode(),
        &text,
    )?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Keygen { key_file } => {
            let key = envelope::generate_key();
            if key_file.exists() {
                anyhow::bail!(
                    "{} exists; refusing to overwrite a signing key",
                    key_file.display()
                );
            }
            std::fs::write(&key_file, envelope::key_to_b64(&key.to_bytes()) + "\n")
                .with_context(|| format!("writing {}", key_file.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
            }
            println!("{}", envelope::key_to_b64(key.verifying_key().as_bytes()));
            Ok(())
        }
        Cmd::RecoveryKeygen { key_file } => {
            let secret = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
            let public = x25519_dalek::PublicKey::from(&secret);
            let mut file = {
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                options.open(&key_file).with_context(|| {
                    format!(
                        "creating {} (an existing recovery key is never overwritten)",
                        key_file.display()
                    )
                })?
            };
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            std::io::Write::write_all(&mut file, (b64.encode(secret.to_bytes()) + "\n").as_bytes())
                .with_context(|| format!("writing {}", key_file.display()))?;
            println!("{}", b64.encode(public.as_bytes()));
            Ok(())
        }
        Cmd::Pubkey { key_file } => {
            let text = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let key = envelope::signing_key_from_b64(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
            println!("{}", envelope::key_to_b64(key.verifying_key().as_bytes()));
            Ok(())
        }
        Cmd::BusAuth { policy, dir, admin } => {
            let p = zdr_schemas::load_policy(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let nodes: Vec<String> = p.nodes.keys().cloned().collect();
            let users = zdr_coordinator::bus_auth::write_credentials(&dir, &nodes, admin)?;
            println!(
                "{}: {} agents, the coordinator{}",
                zdr_coordinator::bus_auth::authorization_file(&dir).display(),
                users.agents.len(),
                if admin { " and an operator" } else { "" }
            );
            Ok(())
        }
        Cmd::Check {
            policy,
            tasks,
            alerts,
        } => {
            let p = zdr_schemas::load_policy(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}: ok ({} sites, {} nodes, {} classes, {} dataset rules)",
                policy.display(),
                p.sites.len(),
                p.nodes.len(),
                p.classes.len(),
                p.datasets.len()
            );
            if let Some(tasks) = tasks {
                let t = zdr_schemas::load_tasks(&tasks, &p).map_err(|e| anyhow::anyhow!("{e}"))?;
                println!(
                    "{}: ok ({} tasks, {} bucket tasks)",
                    tasks.display(),
                    t.tasks.len(),
                    t.buckets.len()
                );
            }
            if let Some(alerts) = alerts {
                let r = zdr_schemas::load_receivers(&alerts).map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("{}: ok ({} receivers)", alerts.display(), r.receivers.len());
            }
            Ok(())
        }
        Cmd::Run(a) if a.check_config => {
            let key_text = std::fs::read_to_string(&a.key_file)
                .with_context(|| format!("reading signing key {}", a.key_file.display()))?;
            envelope::signing_key_from_b64(&key_text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.key_file.display()))?;
            a.nats_nkey.as_deref().map(read_seed).transpose()?;
            zdr_common::servers::server_urls(&a.nats_url).context("--nats-url / ZDR_NATS_URL")?;
            let p = zdr_schemas::load_policy(&a.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(tasks) = &a.tasks {
                zdr_schemas::load_tasks(tasks, &p).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "ok: signing key {}, policy {} ({} nodes){}",
                a.key_file.display(),
                a.policy.display(),
                p.nodes.len(),
                a.tasks
                    .as_ref()
                    .map(|t| format!(", tasks {}", t.display()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Run(a) => {
            init_logs(a.json_logs);
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .idle_timeout(
                    metrics_util::MetricKindMask::GAUGE,
                    Some(zdr_coordinator::service::GAUGE_IDLE),
                )
                .install_recorder()
                .context("installing the metrics recorder")?;
            let key_text = std::fs::read_to_string(&a.key_file)
                .with_context(|| format!("reading signing key {}", a.key_file.display()))?;
            let signing_key = envelope::signing_key_from_b64(&key_text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.key_file.display()))?;
            let nats_seed = a.nats_nkey.as_deref().map(read_seed).transpose()?;
            let receivers = match &a.alerts {
                Some(path) => {
                    zdr_schemas::load_receivers(path)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .receivers
                }
                None => Vec::new(),
            };
            let api_token = a
                .api_token_file
                .as_deref()
                .map(zdr_coordinator::api_auth::read_token)
                .transpose()?;
            if api_token.is_none() {
                tracing::warn!(
                    "no --api-token-file: the HTTP API refuses every command, restore and other \
                     mutation (reads stay open)"
                );
            }
            let instance = a
                .instance
                .unwrap_or_else(|| format!("coordinator-{}", std::process::id()));
            let config = Config {
                nats_servers: zdr_common::servers::server_urls(&a.nats_url)
                    .context("--nats-url / ZDR_NATS_URL")?,
                nats_replicas: usize::from(a.nats_replicas),
                nats_seed,
                policy_path: a.policy,
                tasks_path: a.tasks,
                http_addr: a.http,
                api_token,
                key_id: a.key_id,
                signing_key,
                instance,
                lease_ttl: Duration::from_secs(a.lease_ttl_secs.max(3)),
                offline_after: Duration::from_secs(a.offline_after_secs),
                command_timeout: Duration::from_secs(a.command_timeout_secs),
                drill_hash_timeout: Duration::from_secs(a.drill_hash_timeout_secs),
                receivers,
                alert_hold: Duration::from_secs(a.alert_hold_secs),
                copy_metrics_max: a.copy_metrics_max,
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            service::run(config, metrics, shutdown).await?;
            Ok(())
        }
    }
}
