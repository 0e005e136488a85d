//! Bucket tasks (`buckets:` in `specs/replication/tasks.yml`): datasets
//! uploaded by their source agent as encrypted, signed, locked `zfs send`
//! streams into an S3 bucket (the offsite tier, `agent/src/offsite`).
//!
//! Rules the checker enforces:
//! - the secret never appears in the file: `credentials` names a file on
//!   the source agent's host or an environment variable of its agent, which
//!   holds write-only keys; an inline key is refused, wherever it is put;
//! - a chain is a full every `chain.full_every` and incrementals every
//!   `chain.incremental_every` in between, so the incremental interval is
//!   shorter than the full one;
//! - every upload is sealed for at least one recovery public key (X25519,
//!   base64 of the 32-byte public key), so a restore needs only
//!   an offline recovery key;
//! - with object lock, every object of a chain is locked until
//!   `retain` after the chain's last possible incremental (its full's
//!   creation plus `full_every`): a lock on an incremental is worth nothing
//!   if its base can be deleted first.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use zdr_common::duration::Duration;
use zdr_common::policy::{Policy, Problem};
use zdr_common::wire::CredentialsRef;

use crate::tasks::{problem, source_problems, window_problems, Bandwidth, Source};

/// One bucket task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketTask {
    /// Unique among all tasks (replication and bucket), shown in the job history.
    pub name: String,
    /// Which datasets to upload (as a replication task's `source`).
    pub source: Source,
    /// Where the streams go.
    pub bucket: BucketTarget,
    /// How often fulls and incrementals are uploaded.
    pub chain: ChainShape,
    /// Recovery public keys (X25519, base64) each stream's data key is
    /// sealed for; a restore needs one of their secret halves.
    pub recipients: Vec<String>,
    /// Send every dataset raw (`zfs send -w`); encrypted datasets always go
    /// raw. The same flags are used along a whole chain.
    #[serde(default = "yes")]
    pub raw: bool,
    /// Upload rate cap for this task, shared by its uploads running at
    /// once; unlimited when absent.
    #[serde(default)]
    pub bandwidth: Bandwidth,
    /// Each dataset's streams in the bucket are re-read (signatures, links,
    /// every segment's SHA-256) at least this often, by its source agent.
    #[serde(default = "weekly")]
    pub verify_every: Duration,
}

fn yes() -> bool {
    true
}

fn weekly() -> Duration {
    Duration::from_secs(7 * 86_400)
}

/// An S3 (or B2) bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketTarget {
    /// `https://host[:port]` of the S3 API.
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// The region the bucket is in (`us-east-1` where the provider has none).
    pub region: String,
    /// Prepended to every object key; ends with `/` when set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Where the source agent finds the access key: never the secret itself.
    pub credentials: Credentials,
    /// Object lock on every object uploaded; the bucket must have object lock
    /// enabled. Without it objects can be deleted by anyone with the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<LockSpec>,
    /// The S3 storage class (`STANDARD`, `STANDARD_IA`, `GLACIER_IR`, ...);
    /// the bucket's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Backblaze B2's S3 API: it has no storage classes and refuses every
    /// `x-amz-checksum-*` header (zdr never sends them; it sends Content-MD5).
    #[serde(default)]
    pub b2: bool,
    /// Old chains deleted by the coordinator; without it nothing in the
    /// bucket is ever deleted by zdr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneSpec>,
}

/// Pruning of whole chains by the coordinator (`coordinator/src/prune.rs`):
/// only the coordinator holds keys that may delete; agents keep write-only
/// ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneSpec {
    /// Where the coordinator finds keys that may list, read and delete
    /// object versions, on its own host: never the secret itself.
    pub credentials: Credentials,
    /// How long a chain is kept after its newest upload, such as `180d`;
    /// `object_lock.retain` when absent. The newest chain of each dataset is
    /// kept whatever its age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<Duration>,
    /// How often the coordinator looks for chains to delete.
    #[serde(default = "hourly")]
    pub every: Duration,
}

fn hourly() -> Duration {
    Duration::from_secs(3_600)
}

impl BucketTarget {
    /// How long chains are kept, when they are pruned at all.
    pub fn prune_retain(&self) -> Option<Duration> {
        let p = self.prune.as_ref()?;
        p.retain.or(self.object_lock.map(|l| l.retain))
    }
}

/// A reference to the credentials, resolved by the source agent on its
/// host: a file with `access_key_id = ...` and `secret_access_key = ...`
/// lines, or an environment variable holding `ACCESS_KEY_ID:SECRET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Absolute path of the credentials file on the agent's host (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Name of an environment variable of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl Credentials {
    /// As a command carries it; `None` when it names nothing (the checker
    /// refuses that).
    pub fn reference(&self) -> Option<CredentialsRef> {
        match (&self.file, &self.env) {
            (Some(f), _) => Some(CredentialsRef::File(f.clone())),
            (None, Some(e)) => Some(CredentialsRef::Env(e.clone())),
            (None, None) => None,
        }
    }
}

const INLINE_SECRET: &str = "must not hold the secret: tasks.yml is read by the coordinator and \
    copied around. Put `access_key_id = ...` and `secret_access_key = ...` in a file on each \
    source agent's host (mode 0600) and write `credentials: { file: /etc/zdr/offsite.credentials }`, \
    or give the agent an environment variable holding `KEY_ID:SECRET` and write \
    `credentials: { env: ZDR_OFFSITE_CREDENTIALS }`";

/// What may be written under `credentials`; the secret-looking keys are
/// only recognised to be refused with a clear message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Credentials;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`{ file: PATH }` or `{ env: NAME }`")
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Credentials, E> {
                Err(E::custom(format!(
                    "credentials is a plain value; it {INLINE_SECRET}"
                )))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Credentials, A::Error> {
                let raw =
                    RawCredentials::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let inline = [
                    ("access_key_id", raw.access_key_id.is_some()),
                    ("secret_access_key", raw.secret_access_key.is_some()),
                    ("secret", raw.secret.is_some()),
                    ("session_token", raw.session_token.is_some()),
                ];
                if let Some((key, _)) = inline.iter().find(|(_, set)| *set) {
                    return Err(serde::de::Error::custom(format!(
                        "credentials has `{key}`; credentials {INLINE_SECRET}"
                    )));
                }
                Ok(Credentials {
                    file: raw.file,
                    env: raw.env,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Object lock on every object of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    pub mode: LockMode,
    /// How long after the chain's last possible incremental its objects stay
    /// locked, such as `90d`.
    pub retain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// A delete or a shorter lock needs the bypass permission.
    Governance,
    /// Nobody, not even the root account, can delete it before it expires.
    Compliance,
}

/// The shape of a chain: a full, then incrementals, then a new full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainShape {
    /// A new full this long after the chain's full, such as `30d`.
    pub full_every: Duration,
    /// An incremental this long after the chain's last upload, such as `1d`.
    pub incremental_every: Duration,
}

impl LockSpec {
    /// The retain-until (unix seconds) of an upload made at `now` in a chain
    /// whose full was made at `chain_start` (`now` for a full): past the
    /// chain's last possible incremental, so no base expires before a stream
    /// that depends on it.
    pub fn retain_until(&self, chain: ChainShape, chain_start: i64, now: i64) -> i64 {
        let last_dependent = (chain_start + chain.full_every.secs() as i64).max(now);
        last_dependent + self.retain.secs() as i64
    }
}

/// Decodes a recovery public key: base64 of 32 bytes.
pub fn recipient_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = B64.decode(s.trim()).map_err(|e| {
        format!("{s:?} is not base64 ({e}); give the recovery key's X25519 public half, base64")
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{s:?} decodes to {} bytes; a recovery public key (X25519) is 32",
            b.len()
        )
    })
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Every problem of one bucket task (paths relative to it).
pub fn bucket_task_problems(task: &BucketTask, policy: &Policy) -> Vec<Problem> {
    let mut out = Vec::new();
    source_problems(&task.source, policy, &mut out);
    window_problems(&task.bandwidth.windows, &["bandwidth", "windows"], &mut out);
    let b = &task.bucket;
    match b.endpoint.split_once("://") {
        Some(("http" | "https", host)) if !host.is_empty() && !host.contains('/') => {}
        _ => out.push(problem(
            &["bucket", "endpoint"],
            format!(
                "{:?} is not an S3 endpoint; write `https://host` or `https://host:port` (no path: the bucket goes in `bucket`)",
                b.endpoint
            ),
        )),
    }
    if !valid_bucket_name(&b.bucket) {
        out.push(problem(
            &["bucket", "bucket"],
            format!(
                "{:?} is not a bucket name: 3 to 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
                b.bucket
            ),
        ));
    }
    if b.region.trim().is_empty() {
        out.push(problem(
            &["bucket", "region"],
            "is empty; give the bucket's region (`us-east-1` where the provider has none)".into(),
        ));
    }
    if !b.prefix.is_empty() && (!b.prefix.ends_with('/') || b.prefix.starts_with('/')) {
        out.push(problem(
            &["bucket", "prefix"],
            format!(
                "{:?} must end with `/` and not start with one, such as `zdr/`",
                b.prefix
            ),
        ));
    }
    credentials_problems(
        &b.credentials,
        &["bucket", "credentials"],
        "agent",
        &mut out,
    );
    if let Some(class) = &b.storage_class {
        if b.b2 {
            out.push(problem(
                &["bucket", "storage_class"],
                "B2 has no storage classes; remove `storage_class` or set `b2: false`".into(),
            ));
        } else if class.is_empty()
            || !class
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(problem(
                &["bucket", "storage_class"],
                format!("{class:?} is not an S3 storage class; write it as S3 does, such as STANDARD or STANDARD_IA"),
            ));
        }
    }
    if let Some(lock) = &b.object_lock {
        if lock.retain.secs() == 0 {
            out.push(problem(
                &["bucket", "object_lock", "retain"],
                "must be at least 1s; remove `object_lock` for objects without a lock".into(),
            ));
        }
    }
    if let Some(p) = &b.prune {
        prune_problems(p, b, &mut out);
    }
    let (full, incr) = (
        task.chain.full_every.secs(),
        task.chain.incremental_every.secs(),
    );
    if incr == 0 {
        out.push(problem(
            &["chain", "incremental_every"],
            "must be at least 1s".into(),
        ));
    }
    if full <= incr {
        out.push(problem(
            &["chain", "full_every"],
            format!(
                "{} is not longer than incremental_every ({}); a chain is a full and incrementals until the next full, so make full_every longer",
                task.chain.full_every, task.chain.incremental_every
            ),
        ));
    }
    if task.verify_every.secs() == 0 {
        out.push(problem(
            &["verify_every"],
            "must be at least 1s; it is how often the bucket's streams are re-read".into(),
        ));
    }
    if task.recipients.is_empty() {
        out.push(problem(
            &["recipients"],
            "lists no recovery key; every stream is encrypted for these keys, so give at least one (an X25519 public key, base64)".into(),
        ));
    }
    for (i, r) in task.recipients.iter().enumerate() {
        if let Err(e) = recipient_key(r) {
            out.push(problem(&["recipients", &i.to_string()], e));
        }
    }
    out
}

/// Problems of a credentials reference at `at`, read on `host`'s host
/// ("agent", "coordinator").
fn credentials_problems(c: &Credentials, at: &[&str], host: &str, out: &mut Vec<Problem>) {
    let at_key = |k: &'static str| [at, &[k]].concat();
    match (&c.file, &c.env) {
        (Some(_), Some(_)) => out.push(problem(at, "gives both `file` and `env`; give one".into())),
        (None, None) => out.push(problem(
            at,
            "names no credentials; write `{ file: /etc/zdr/offsite.credentials }` or `{ env: NAME }`"
                .into(),
        )),
        (Some(file), None) if !file.starts_with('/') => out.push(problem(
            &at_key("file"),
            format!("{file:?} is not an absolute path; the {host} reads it on its own host, so write the full path"),
        )),
        (None, Some(env)) if !valid_env_name(env) => out.push(problem(
            &at_key("env"),
            format!("{env:?} is not an environment variable name; use capitals, digits and '_', such as ZDR_OFFSITE_CREDENTIALS"),
        )),
        _ => {}
    }
}

fn prune_problems(p: &PruneSpec, b: &BucketTarget, out: &mut Vec<Problem>) {
    credentials_problems(
        &p.credentials,
        &["bucket", "prune", "credentials"],
        "coordinator",
        out,
    );
    if p.credentials == b.credentials {
        out.push(problem(
            &["bucket", "prune", "credentials"],
            "names the agents' credentials; pruning needs keys that may delete, and agents must \
             hold write-only ones, so give the coordinator keys of its own"
                .into(),
        ));
    }
    match (p.retain, b.object_lock) {
        (None, None) => out.push(problem(
            &["bucket", "prune"],
            "has no `retain` and the bucket has no object_lock to take it from; write how long \
             chains are kept after their newest upload, such as `retain: 180d`"
                .into(),
        )),
        (Some(r), _) if r.secs() == 0 => out.push(problem(
            &["bucket", "prune", "retain"],
            "must be at least 1s".into(),
        )),
        (Some(r), Some(lock)) if r.secs() < lock.retain.secs() => out.push(problem(
            &["bucket", "prune", "retain"],
            format!(
                "{r} is shorter than object_lock.retain ({}): the server would refuse to delete \
                 chains still locked; make it at least {}",
                lock.retain, lock.retain
            ),
        )),
        _ => {}
    }
    if p.every.secs() == 0 {
        out.push(problem(
            &["bucket", "prune", "every"],
            "must be at least 1s".into(),
        ));
    }
}

fn valid_bucket_name(name: &str) -> bool {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && ok_edge(name.chars().next())
        && ok_edge(name.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_outlast_the_chain() {
        let lock = LockSpec {
            mode: LockMode::Compliance,
            retain: Duration::from_secs(100),
        };
        let chain = ChainShape {
            full_every: Duration::from_secs(1_000),
            incremental_every: Duration::from_secs(10),
        };
        // A full at 5_000 and an incremental on it both last until the
        // chain's last possible incremental plus the retention.
        assert_eq!(lock.retain_until(chain, 5_000, 5_000), 6_100);
        assert_eq!(lock.retain_until(chain, 5_000, 5_990), 6_100);
        // Late (a full that did not come): never shorter than its own retention.
        assert_eq!(lock.retain_until(chain, 5_000, 7_000), 7_100);
    }

    #[test]
    fn names_and_keys() {
        assert!(valid_bucket_name("zdr-offsite.1"));
        assert!(!valid_bucket_name("Zdr"));
        assert!(!valid_bucket_name("-ab"));
        assert!(!valid_bucket_name("ab"));
        assert!(valid_env_name("ZDR_B2"));
        assert!(!valid_env_name("zdr"));
        assert!(!valid_env_name("1A"));
        assert!(recipient_key(&B64.encode([7u8; 32])).is_ok());
        assert!(recipient_key(&B64.encode([7u8; 31]))
            .unwrap_err()
            .contains("31 bytes"));
        assert!(recipient_key("not base64!").is_err());
    }
}
