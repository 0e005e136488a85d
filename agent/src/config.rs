//! The agent's config file (`/etc/zdr/agent.toml`). Errors name the file, line
//! and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zdr_common::bus_auth::{seed_from_file, NkeySeed};
use zdr_common::envelope::{verifying_key_from_b64, Verifier};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node id: one NATS subject token, unique in the fleet.
    pub node: String,
    pub site: String,
    /// Media type label (`ssd`, `hdd`, ...).
    pub media: String,
    /// One NATS URL, or a cluster's servers separated by commas.
    #[serde(default = "default_nats")]
    pub nats_url: String,
    /// This node's NATS nkey seed (mode 0600), as `zdr-coordinator bus-auth`
    /// makes it; without it the agent connects anonymously.
    #[serde(default)]
    pub nats_nkey: Option<PathBuf>,
    /// Where the agent keeps its last signed policy, replay memory and audit log.
    pub state_dir: PathBuf,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// How often the scheduler checks whether snapshots are due.
    #[serde(default = "default_tick")]
    pub tick_secs: u64,
    /// How often the whole inventory is listed again, to see changes made outside zdr.
    #[serde(default = "default_rescan")]
    pub rescan_secs: u64,
    pub backend: BackendConfig,
    /// Coordinator keys whose signatures this agent accepts, each under its
    /// own id: two while a key is rotated (ops/runbooks/key-rotation.md).
    pub trusted_keys: Vec<TrustedKey>,
    /// The replication data plane; without it the agent neither sends nor receives.
    #[serde(default)]
    pub transfer: Option<TransferConfig>,
    /// Uploads to object storage; without it the agent refuses uploads.
    #[serde(default)]
    pub offsite: Option<OffsiteConfig>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g.
    /// `"127.0.0.1:9464"`; not served when absent.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The pools this agent manages (inventory, snapshots, pruning, the
    /// floor); empty (the default) means every pool it can see. For a host
    /// whose other pools belong to someone else, such as a boot pool.
    #[serde(default)]
    pub pools: Vec<String>,
}

/// Mutual TLS between agents, with certificates from the fleet CA (`ops/pki.sh`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// The fleet CA certificate, PEM.
    pub ca: PathBuf,
    /// This node's certificate, PEM; it must name the node id.
    pub cert: PathBuf,
    /// This node's private key, PEM.
    pub key: PathBuf,
    /// Where this agent receives streams; port 0 picks a free port at start.
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// The address senders are told, when a proxy or NAT sits in front of `listen`.
    #[serde(default)]
    pub advertise: Option<std::net::SocketAddr>,
}

/// The offsite tier on this node. Bucket credentials are not here: each
/// bucket task names a file or environment variable the agent reads when
/// it uploads (keys that can write, not delete).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsiteConfig {
    /// The ed25519 key (base64 seed, as `zdr-coordinator keygen` writes
    /// one) that signs this node's manifests, under the node id as key id.
    pub manifest_key: PathBuf,
    /// Bytes of segment buffers one upload may hold (default 1 GiB).
    #[serde(default = "default_offsite_memory")]
    pub memory_bytes: u64,
    /// Segment uploads in flight per upload (default 4).
    #[serde(default = "default_offsite_in_flight")]
    pub in_flight: u32,
    /// A recovery secret key (X25519, base64 of its 32 bytes, mode 0600)
    /// that restores from buckets decrypt with. Read at each restore, so it
    /// can be put in place when a restore is needed; without it this node
    /// restores from no bucket.
    #[serde(default)]
    pub recovery_key: Option<PathBuf>,
    /// Other nodes' manifest keys (kid = their node id), whose manifests a
    /// restore here believes; this node's own key is believed always. A
    /// manifest signed by any other key is skipped.
    #[serde(default)]
    pub manifest_signers: Vec<TrustedKey>,
}

fn default_offsite_memory() -> u64 {
    crate::offsite::sizing::Budget::default().memory
}

fn default_offsite_in_flight() -> u32 {
    crate::offsite::sizing::Budget::default().in_flight
}

impl OffsiteConfig {
    /// Reads the manifest key; `node` is its key id.
    pub fn signer(&self, node: &str) -> Result<crate::offsite::manifest::ManifestSigner, String> {
        let path = self.manifest_key.display();
        let text = std::fs::read_to_string(&self.manifest_key)
            .map_err(|e| format!("offsite.manifest_key: cannot read {path}: {e}"))?;
        let key = zdr_common::envelope::signing_key_from_b64(text.trim()).map_err(|e| {
            format!("offsite.manifest_key: {path}: {e}; write a base64 ed25519 seed there (`zdr-coordinator keygen` makes one)")
        })?;
        Ok(crate::offsite::manifest::ManifestSigner::new(node, key))
    }

    /// The manifest keys a restore here believes: this node's own and
    /// `manifest_signers`.
    pub fn trusted_signers(
        &self,
        own: &crate::offsite::manifest::ManifestSigner,
    ) -> Result<crate::offsite::manifest::TrustedSigners, String> {
        let mut trusted = crate::offsite::manifest::TrustedSigners::default();
        trusted.trust(own.kid(), own.verifying_key());
        for k in &self.manifest_signers {
            let key = verifying_key_from_b64(&k.public_key).map_err(|e| {
                format!("offsite.manifest_signers {:?}: {e}; give the node's manifest public key (base64 ed25519)", k.kid)
            })?;
            trusted.trust(k.kid.clone(), key);
        }
        Ok(trusted)
    }

    /// Reads the recovery secret key.
    pub fn recovery(&self) -> Result<x25519_dalek::StaticSecret, String> {
        let path = self.recovery_key.as_ref().ok_or_else(|| {
            "this agent's [offsite] has no recovery_key, so it cannot decrypt what it restores \
             from a bucket: put the recovery secret key (base64) in a file readable by the agent \
             only and set offsite.recovery_key to its path"
                .to_string()
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("offsite.recovery_key: cannot read {}: {e}", path.display()))?;
        crate::offsite::seal::parse_secret(text.trim()).map_err(|e| {
            format!(
                "offsite.recovery_key: {}: {e}; the file holds the recovery secret key, base64 of 32 bytes",
                path.display()
            )
        })
    }

    pub fn budget(&self) -> crate::offsite::sizing::Budget {
        crate::offsite::sizing::Budget {
            memory: self.memory_bytes,
            in_flight: self.in_flight,
        }
    }
}

fn default_listen() -> std::net::SocketAddr {
    ([0, 0, 0, 0], 7480).into()
}

fn default_nats() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_heartbeat() -> u64 {
    5
}
fn default_tick() -> u64 {
    5
}
fn default_rescan() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// zfs(8) and zpool(8).
    Cli {
        #[serde(default = "default_zfs")]
        zfs: PathBuf,
        #[serde(default = "default_zpool")]
        zpool: PathBuf,
    },
    /// libzfs_core for changes (zfs(8) still lists); needs an agent built with `--features lzc`.
    Lzc {
        #[serde(default = "default_zfs")]
        zfs: PathBuf,
        #[serde(default = "default_zpool")]
        zpool: PathBuf,
    },
    /// Simulated pools, for the demo and scale tests only. State persists in `state_dir`.
    Sim {
        pools: Vec<SimPool>,
        /// Data each new snapshot holds, so its streams have that many bytes.
        #[serde(default)]
        snapshot_bytes: Option<u64>,
        /// A modelled latency, in milliseconds, added to every simulated ZFS
        /// operation (real ones take milliseconds to seconds); lets tests
        /// catch the agent in the middle of a pass. Off by default.
        #[serde(default)]
        op_latency_ms: Option<u64>,
        /// A modelled time, in milliseconds, for the content hash of a
        /// snapshot (a real one reads every byte: minutes for large data).
        /// Off by default.
        #[serde(default)]
        hash_latency_ms: Option<u64>,
    },
}

fn default_zfs() -> PathBuf {
    "zfs".into()
}
fn default_zpool() -> PathBuf {
    "zpool".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimPool {
    pub name: String,
    pub size_bytes: u64,
    /// Datasets created below the pool on first start.
    #[serde(default)]
    pub datasets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub kid: String,
    /// Base64 ed25519 public key, as `zdr-coordinator keygen` prints it.
    pub public_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let config = Self::parse(&path.display().to_string(), &text)?;
        // A credential that will not do is a config error, found at start.
        config.nats_seed().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        if let Some(o) = &config.offsite {
            o.signer(&config.node)
                .map_err(|message| ConfigError::Invalid {
                    path: path.display().to_string(),
                    message,
                })?;
        }
        Ok(config)
    }

    /// Reads and checks `nats_nkey`.
    pub fn nats_seed(&self) -> Result<Option<NkeySeed>, String> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = &self.nats_nkey else {
            return Ok(None);
        };
        let read = |e: std::io::Error| format!("nats_nkey: cannot read {}: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(read)?;
        let text = std::fs::read_to_string(path).map_err(read)?;
        seed_from_file(path, meta.permissions().mode(), &text)
            .map(Some)
            .map_err(|e| format!("nats_nkey: {e}"))
    }

    pub fn parse(label: &str, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: label.into(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: label.into(),
            message,
        };
        zdr_common::subject::valid_node_id(&config.node)
            .map_err(|e| invalid(format!("node: {e}")))?;
        zdr_common::servers::server_urls(&config.nats_url)
            .map_err(|e| invalid(format!("nats_url: {e}")))?;
        if config.trusted_keys.is_empty() {
            return Err(invalid(
                "trusted_keys is empty: the agent could accept no policy or command; add the coordinator's public key".into(),
            ));
        }
        let mut kids = std::collections::BTreeSet::new();
        if let Some(k) = config.trusted_keys.iter().find(|k| !kids.insert(&k.kid)) {
            return Err(invalid(format!(
                "trusted_keys names the key id {:?} twice; give each coordinator key its own id \
                 (during a rotation both keys are listed, each under its id)",
                k.kid
            )));
        }
        config.verifier().map_err(invalid)?;
        if config.heartbeat_secs == 0 || config.tick_secs == 0 || config.rescan_secs == 0 {
            return Err(invalid(
                "heartbeat_secs, tick_secs and rescan_secs must be at least 1".into(),
            ));
        }
        if let Some(o) = &config.offsite {
            crate::offsite::sizing::plan(None, o.budget())
                .map_err(|e| invalid(format!("offsite: {e}")))?;
            for k in &o.manifest_signers {
                verifying_key_from_b64(&k.public_key)
                    .map_err(|e| invalid(format!("offsite.manifest_signers {:?}: {e}", k.kid)))?;
            }
        }
        for p in &config.pools {
            let name = zdr_common::DatasetName::parse(p)
                .map_err(|e| invalid(format!("pools: {p:?}: {e}")))?;
            if name.as_str() != name.pool() {
                return Err(invalid(format!(
                    "pools: {p:?} is a dataset, not a pool; list pool names only, such as {:?}",
                    name.pool()
                )));
            }
        }
        if let BackendConfig::Sim { pools, .. } = &config.backend {
            for p in pools {
                for ds in std::iter::once(&p.name).chain(&p.datasets) {
                    zdr_common::DatasetName::parse(ds)
                        .map_err(|e| invalid(format!("backend.pools: {e}")))?;
                }
            }
        }
        Ok(config)
    }

    /// The NATS servers, from `nats_url` (checked at load).
    pub fn nats_servers(&self) -> Result<Vec<String>, String> {
        zdr_common::servers::server_urls(&self.nats_url).map_err(|e| format!("nats_url: {e}"))
    }

    pub fn verifier(&self) -> Result<Verifier, String> {
        let mut v = Verifier::new();
        for k in &self.trusted_keys {
            let key = verifying_key_from_b64(&k.public_key)
                .map_err(|e| format!("trusted_keys {:?}: {e}", k.kid))?;
            v.trust(k.kid.clone(), key);
        }
        Ok(v)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn good() -> String {
        format!(
            r#"node = "n1"
site = "a"
media = "ssd"
state_dir = "/tmp/x"

[backend]
kind = "sim"
pools = [{{ name = "tank", size_bytes = 1000000, datasets = ["tank/a b"] }}]

[[trusted_keys]]
kid = "coordinator"
public_key = "{KEY}"
"#
        )
    }

    #[test]
    fn nats_url_takes_a_cluster_and_names_a_bad_entry() {
        let cluster = good().replace(
            "media = \"ssd\"\n",
            "media = \"ssd\"\nnats_url = \"nats://a:4222,nats://b:4222, nats://c:4222\"\n",
        );
        let c = Config::parse("agent.toml", &cluster).unwrap();
        assert_eq!(c.nats_servers().unwrap().len(), 3);
        let bad = cluster.replace("nats://b:4222", "http://b:4222");
        let e = Config::parse("agent.toml", &bad).unwrap_err().to_string();
        assert!(
            e.starts_with("agent.toml: nats_url: ") && e.contains("entry 2"),
            "{e}"
        );
    }

    #[test]
    fn transfer_section_is_optional_and_checked() {
        assert!(Config::parse("agent.toml", &good())
            .unwrap()
            .transfer
            .is_none());
        let text = format!(
            "{}\n[transfer]\nca = \"/ca.pem\"\ncert = \"/n1.pem\"\nkey = \"/n1.key\"\nlisten = \"127.0.0.1:0\"\n",
            good()
        );
        let t = Config::parse("agent.toml", &text)
            .unwrap()
            .transfer
            .unwrap();
        assert_eq!(t.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(t.advertise, None);
        let e = Config::parse("agent.toml", &text.replace("127.0.0.1:0", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("agent.toml:18:10: invalid socket address"),
            "{e}"
        );
    }

    #[test]
    fn a_nats_credential_others_can_read_is_refused_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("nats.nk");
        std::fs::write(&seed, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
        let config = dir.path().join("agent.toml");
        let text = format!("nats_nkey = {:?}\n{}", seed.display().to_string(), good());
        std::fs::write(&config, text).unwrap();

        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::load(&config).unwrap();
        assert!(c.nats_seed().unwrap().is_some());

        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&config).unwrap_err().to_string();
        let shown = seed.display().to_string();
        assert!(
            e.contains("nats_nkey")
                && e.contains(&shown)
                && e.contains("0644")
                && e.contains("chmod 600"),
            "{e}"
        );

        std::fs::remove_file(&seed).unwrap();
        let e = Config::load(&config).unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains(&shown), "{e}");
    }

    #[test]
    fn several_keys_are_trusted_each_under_its_own_id() {
        const NEW: &str = "HmIndHengloFoFoDAehM2uTPq2l/YQ2/BHEQNfm8l1o=";
        let two = format!(
            "{}\n[[trusted_keys]]\nkid = \"coordinator-2\"\npublic_key = \"{NEW}\"\n",
            good()
        );
        let c = Config::parse("agent.toml", &two).unwrap();
        assert_eq!(
            c.verifier().unwrap().kids(),
            ["coordinator", "coordinator-2"]
        );
        let e = Config::parse("agent.toml", &two.replace("coordinator-2", "coordinator"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("agent.toml: trusted_keys names the key id \"coordinator\" twice"),
            "{e}"
        );
    }

    /// The packaged default parses, and refuses to start only for the reason
    /// its comments give: no coordinator key yet.
    #[test]
    fn the_packaged_default_config_asks_only_for_a_key() {
        let text = include_str!("../../ops/deb/agent.toml");
        let e = Config::parse("agent.toml", text).unwrap_err().to_string();
        assert!(e.starts_with("agent.toml: trusted_keys is empty"), "{e}");
    }

    #[test]
    fn pools_take_pool_names_only() {
        let with = |v: &str| {
            good().replace(
                "media = \"ssd\"\n",
                &format!("media = \"ssd\"\npools = {v}\n"),
            )
        };
        let c = Config::parse("agent.toml", &with(r#"["tank", "dst"]"#)).unwrap();
        assert_eq!(c.pools, ["tank", "dst"]);
        let e = Config::parse("agent.toml", &with(r#"["tank/db"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("agent.toml: pools: \"tank/db\" is a dataset, not a pool; list pool names only, such as \"tank\""),
            "{e}"
        );
        let e = Config::parse("agent.toml", &with(r#"["-o"]"#))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("agent.toml: pools: \"-o\": "), "{e}");
    }

    #[test]
    fn parses_a_good_file() {
        let c = Config::parse("agent.toml", &good()).unwrap();
        assert_eq!(c.node, "n1");
        assert_eq!(c.heartbeat_secs, 5);
    }

    #[test]
    fn unknown_key_names_file_line_column() {
        let text = good().replace("media = \"ssd\"", "media = \"ssd\"\nmedai = \"hdd\"");
        let e = Config::parse("agent.toml", &text).unwrap_err().to_string();
        assert!(
            e.starts_with("agent.toml:4:1: unknown field `medai`"),
            "{e}"
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let e = Config::parse("agent.toml", &good().replace("tank/a b", "tank/$(reboot)"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tank/$(reboot)") && e.contains("'$'"), "{e}");
        let e = Config::parse("agent.toml", &good().replace("\"n1\"", "\"n1.x\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node id"), "{e}");
        let e = Config::parse("agent.toml", &good().replace(KEY, "bm90IGEga2V5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 bytes"), "{e}");
    }
}
