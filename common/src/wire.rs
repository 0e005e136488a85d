//! Wire messages, JSON on NATS. Agent → coordinator messages travel bare (NATS
//! permissions bind a node to its subjects); coordinator → agent messages travel
//! inside a signed [`crate::envelope`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, Tiers};

/// A restore holds what it landed under a tag starting with this until it
/// ends, and the agent takes no snapshot of a dataset whose newest snapshot
/// carries such a hold: one between its streams breaks the next.
pub const RESTORE_HOLD_PREFIX: &str = "zdr-restore-into-";

/// Drills restore into `<pool>/zdr-drill/<job>` on the drill node; an agent
/// destroys scratch datasets only below this, when the coordinator asks.
pub const DRILL_ROOT: &str = "zdr-drill";

/// Whether `dataset` is a drill scratch: `<pool>/zdr-drill/<name>`, no deeper.
pub fn is_drill_scratch(dataset: &str) -> bool {
    let parts: Vec<&str> = dataset.split('/').collect();
    matches!(parts.as_slice(), [pool, root, name] if !pool.is_empty() && *root == DRILL_ROOT && !name.is_empty())
}

/// The hold an agent keeps on its snapshots while they are inside their
/// class's immutability window (the retention floor); no command releases it.
pub const FLOOR_HOLD: &str = "zdr-floor";

/// Inventory chunks stay well under NATS' default 1 MiB max_payload.
pub const INVENTORY_CHUNK_BYTES: usize = 256 * 1024;

/// Sent on start and on every reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub node: String,
    pub site: String,
    pub media: String,
    /// zdr version of the agent.
    pub version: String,
    /// `cli`, `lzc` or `sim`. A `sim` agent protects no real data.
    pub backend: String,
    pub pools: Vec<PoolInfo>,
    /// Unix seconds.
    pub started_at: i64,
    /// Revision of the policy the agent is applying, if any.
    pub policy_revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolInfo {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub health: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node: String,
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    pub policy_revision: Option<u64>,
    /// Generation of the last full inventory, so the coordinator can ask for a
    /// resync when it missed one.
    pub inventory_generation: u64,
    /// Last delta sequence number published in that generation.
    pub delta_seq: u64,
    pub pools: Vec<PoolInfo>,
    /// The last policy the bus offered, when this agent refused it; cleared
    /// once it accepts one again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_refused: Option<PolicyRefused>,
}

/// Why an agent refused the policy in the bucket: it goes on under the one
/// it has, so the fleet status must show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyRefusalReason {
    /// Signed by no key in the agent's `trusted_keys`: a coordinator key not
    /// yet added to the agent (see ops/runbooks/key-rotation.md), or a forgery.
    UntrustedKey,
    /// Not a policy envelope, or its signed payload does not parse.
    Malformed,
    Expired,
    /// Its expiry lies further ahead than any coordinator signs (a clock far off).
    ExpiryTooFar,
    /// Signed under an older leadership epoch than the agent has seen.
    StaleEpoch,
    /// A lower revision than the one the agent applies.
    OlderRevision,
    /// Signed, but fails the policy's own checks.
    Unsound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRefused {
    pub reason: PolicyRefusalReason,
    /// The refused policy's revision, when its signature verified.
    pub revision: Option<u64>,
    /// Unix seconds.
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// The part after `@`.
    pub name: String,
    pub guid: u64,
    pub createtxg: u64,
    /// Unix seconds.
    pub creation: i64,
    pub used: u64,
    pub userrefs: u32,
}

/// One bookmark (`dataset#name`): what an incremental send needs of a
/// snapshot that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BookmarkInfo {
    /// The part after `#`.
    pub name: String,
    /// The GUID of the snapshot it was made from.
    pub guid: u64,
    pub createtxg: u64,
    /// Unix seconds (the snapshot's creation).
    pub creation: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetInventory {
    pub dataset: String,
    pub guid: u64,
    pub used: u64,
    pub available: u64,
    /// The class the agent resolved for it under the current policy; `None` if unprotected.
    pub class: Option<String>,
    /// Snapshots in createtxg order.
    pub snapshots: Vec<SnapshotInfo>,
    /// Bookmarks in createtxg order. The source bookmarks what it sends, so a
    /// target that kept a snapshot the source since pruned still has a common
    /// base (matched by GUID) to continue from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bookmarks: Vec<BookmarkInfo>,
    /// ZFS native encryption: a copy of it arrives raw and needs its key loaded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// One chunk of a full inventory. A full inventory is complete when chunks
/// `0..chunks` of one generation have arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryChunk {
    pub node: String,
    pub generation: u64,
    pub chunk: u32,
    pub chunks: u32,
    pub datasets: Vec<DatasetInventory>,
}

/// Changes since the full inventory of `generation`, numbered from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryDelta {
    pub node: String,
    pub generation: u64,
    pub seq: u64,
    pub changes: Vec<InventoryChange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum InventoryChange {
    SnapshotCreated {
        dataset: String,
        snapshot: SnapshotInfo,
    },
    SnapshotDestroyed {
        dataset: String,
        name: String,
        guid: u64,
    },
    BookmarkCreated {
        dataset: String,
        bookmark: BookmarkInfo,
    },
    BookmarkDestroyed {
        dataset: String,
        name: String,
        guid: u64,
    },
}

/// The policy as signed into the `zdr_policy` KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBundle {
    /// Increases with every change; agents refuse to go back to a lower one.
    pub revision: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// SHA-256 of the source file, hex, for `zdr status` and audits.
    pub source_digest: String,
    pub policy: Policy,
}

/// Commands, inside a signed envelope on `zdr.v1.agent.<node>.cmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Answer with an empty success.
    Ping {},
    /// Publish a full inventory now.
    SendInventory {},
    /// Take a snapshot of every protected dataset now, outside the schedule.
    SnapshotNow {},
    /// Apply retention now.
    PruneNow {},
    /// Target side of a replication step: wait for the sender and receive.
    Receive(ReceiveJob),
    /// Source side of a replication step: send to the waiting target.
    Send(SendJob),
    /// New rate for a running send; `None` is unlimited.
    SetRate {
        job: String,
        bytes_per_sec: Option<u64>,
    },
    /// Stop a job's send or receive; a partial receive is kept for resuming.
    CancelJob { job: String },
    /// How the agent's end of a job stands now (in the reply's `job`): a new
    /// leader adopts the attempts still streaming instead of cancelling them.
    JobStatus { job: String },
    /// Releases `tag` from every snapshot of `dataset` but `keep`: the
    /// replication base moved on to `keep`.
    ReleaseHolds {
        dataset: String,
        tag: String,
        keep: String,
    },
    /// Applies a replication task's retention to its copy on this node.
    PruneReplica(PruneReplica),
    /// Source side of an upload to a bucket: `zfs send` into sealed
    /// segment objects, then the signed manifest (the commit marker).
    Upload(Box<UploadJob>),
    /// Target side of a restore from a bucket: the chain that lands a
    /// snapshot, verified and received on this node.
    RestoreFromBucket(Box<BucketRestoreJob>),
    /// Releases `tag` from every snapshot of `dataset`: the holds of a
    /// restore that ended.
    DropHolds { dataset: String, tag: String },
    /// Puts `tag` on each of `dataset`'s `snapshots` (one already held is
    /// fine): a restore or drill keeps the snapshots it will read from
    /// retention until it ends, and then `DropHolds` lets them go.
    Hold {
        dataset: String,
        snapshots: Vec<String>,
        tag: String,
    },
    /// Hashes the content of `dataset@snapshot` (the reply's `hash`).
    HashSnapshot { dataset: String, snapshot: String },
    /// Re-reads a dataset's streams in a bucket without restoring them:
    /// every manifest's signature, every chain's links, every segment's
    /// SHA-256 (the reply's `bucket_check`). Answered when it ends.
    VerifyBucket(Box<BucketVerifyJob>),
    /// Destroys a drill's scratch dataset (`<pool>/zdr-drill/<name>`) and
    /// everything in it; refused for any other dataset. A scratch that is
    /// gone already is done.
    DestroyScratch { dataset: String },
}

/// How deep a content check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CheckLevel {
    /// Every file of the snapshot read and hashed (path, mode, size, bytes,
    /// symlink targets, in path order): two copies compare by `digest`.
    FilesHashed,
    /// The content could not be read (a zvol, or no key loaded): every
    /// block was read back, so ZFS checked its checksums; no digest to compare.
    BlocksRead,
}

/// The content of one snapshot, as an agent read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentHash {
    pub level: CheckLevel,
    /// BLAKE3, hex; `None` at [`CheckLevel::BlocksRead`].
    pub digest: Option<String>,
    /// Entries hashed (files, directories, links); 0 when blocks were read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Milliseconds spent mounting (and unmounting) the snapshot.
    pub mount_ms: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
}

/// Destroys the copy's snapshots that `tiers` no longer keep. Held snapshots
/// (the replication base), the newest, those inside the immutability window
/// and those not named by the fleet's prefix are kept, as in local pruning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneReplica {
    pub dataset: String,
    /// The task whose retention this is (for the audit log).
    pub task: String,
    pub tiers: Tiers,
    pub immutable_for_secs: u64,
    /// Snapshots a restore or drill is reading from this copy: kept by this
    /// pass whatever the tiers say, even where the job's own hold has not
    /// landed (its node was down when the job began).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
}

/// A snapshot and its GUID, which is what identifies it across pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// The part after `@`.
    pub name: String,
    pub guid: u64,
}

/// A data-plane job token: on the wire inside the signed command, never in
/// a log line (`Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct JobSecret(pub String);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveJob {
    pub job: String,
    /// 64 hex digits the sender must present; the source gets the same.
    pub token: JobSecret,
    /// Node id the sender's certificate must name.
    pub source_node: String,
    /// The dataset to receive into; missing parents are created.
    pub dataset: String,
    /// `zfs receive -F`: roll back to the stream's base first.
    pub force: bool,
    /// Snapshots `-F` will destroy, as the coordinator planned them. The
    /// target lists what would really go from its own pool and refuses
    /// when the two differ.
    #[serde(default)]
    pub discards: Vec<String>,
    /// The common snapshot the stream starts from (matched by GUID on the
    /// target); `None` for a full stream. `-F` rolls back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<SnapshotRef>,
    /// `zfs receive -A` before anything else: a saved partial receive is not to be resumed.
    #[serde(default)]
    pub discard_partial: bool,
    /// The snapshot this step lands, with its GUID on the source.
    pub expect: SnapshotRef,
    /// Hold tag that protects the replication base on this side.
    pub hold_tag: String,
    /// How long to wait for the sender to connect.
    pub accept_secs: u64,
    /// For a replication: the dataset on `source_node` this is a copy of.
    /// The target finds the copy's class for its retention floor in its
    /// own signed policy from this name. `None` for a restore or a drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_dataset: Option<String>,
    /// The source dataset's class as the coordinator knows it. The target
    /// keeps the longer window of this and its own policy's class, so a
    /// command can lengthen a copy's floor, never shorten it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendJob {
    pub job: String,
    pub token: JobSecret,
    /// Node id the receiver's certificate must name.
    pub target_node: String,
    /// `ip:port` the target agent gave in its [`ReceiveOffer`].
    pub target_addr: String,
    pub dataset: String,
    pub stream: StreamSpec,
    /// `zfs send -w`: encrypted datasets leave encrypted, others as stored.
    pub raw: bool,
    /// zstd frames on the wire (ignored for raw sends, already compressed).
    pub compress: bool,
    /// Throttle; `None` is unlimited.
    pub bytes_per_sec: Option<u64>,
    /// Hold tag that protects the replication base on this side.
    pub hold_tag: String,
}

/// One stream to upload into a bucket (the offsite tier). The agent reads
/// the credentials from the reference on its own host; the secret never
/// crosses the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadJob {
    pub job: String,
    pub dataset: String,
    /// `Full`, or `Incremental` without intermediates (one snapshot per link).
    pub stream: StreamSpec,
    /// The GUID of the snapshot the stream lands (checked before sending).
    pub to_guid: u64,
    /// The GUID of the snapshot an incremental starts from.
    pub from_guid: Option<u64>,
    /// The committed manifest an incremental continues; required with `from_guid`.
    pub parent: Option<ManifestRef>,
    /// `zfs send -w`; encrypted datasets go raw whatever this says.
    pub raw: bool,
    pub bucket: BucketSpec,
    /// Object lock on every object; `None` for a bucket without one.
    pub lock: Option<UploadLock>,
    /// Recovery public keys (X25519, base64) the data key is sealed for.
    pub recipients: Vec<String>,
    /// Hold tag that keeps the snapshot while it is sent.
    pub hold_tag: String,
    /// Throttle on the stream read from `zfs send`; `None` is unlimited.
    /// `SetRate` changes it while the upload runs.
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
}

/// A restore from a bucket, run by the destination agent alone: it lists
/// the dataset's manifests, keeps those that verify under its own trusted
/// manifest keys, picks the newest chain that lands `to_guid`, and receives
/// it stream by stream, each segment's hash checked before its bytes reach
/// `zfs receive`. The recovery key is in the agent's own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketRestoreJob {
    pub job: String,
    /// The dataset as it was uploaded (its streams' prefix in the bucket).
    pub source_dataset: String,
    /// The snapshot to land, by GUID; `to_name` is what it is called after.
    pub to_guid: u64,
    pub to_name: String,
    /// The dataset to receive into; it must not exist. Missing parents are created.
    pub dataset: String,
    pub bucket: BucketSpec,
    /// Hold tag put on what landed.
    pub hold_tag: String,
}

/// The dataset (as uploaded) whose streams a [`Command::VerifyBucket`] reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketVerifyJob {
    pub dataset: String,
    pub bucket: BucketSpec,
}

/// What a bucket verification read and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketCheck {
    /// Manifests that verified, and their segments and stored bytes read.
    pub manifests: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Streams without a manifest (uploads cut short): never restored, not
    /// a problem.
    pub incomplete: u64,
    /// Each thing wrong, naming the object; empty when all is well.
    pub problems: Vec<String>,
}

/// Where a bucket is and where the agent finds its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub prefix: String,
    pub storage_class: Option<String>,
    pub credentials: CredentialsRef,
}

/// A reference to credentials on the agent's host, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialsRef {
    /// A file with `access_key_id = ...` and `secret_access_key = ...` lines.
    File(String),
    /// An environment variable of the agent holding `KEY_ID:SECRET`.
    Env(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    Governance,
    Compliance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadLock {
    pub mode: LockMode,
    /// Unix seconds.
    pub retain_until: i64,
}

/// A committed manifest in the bucket, as its upload reported it: what the
/// next incremental names as its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestRef {
    /// The stream id (hex).
    pub stream: String,
    /// SHA-256 (hex) of the stored manifest.
    pub hash: String,
    /// The object key of the manifest.
    pub key: String,
    pub dataset: String,
    pub from_guid: Option<u64>,
    pub to_guid: u64,
    /// The snapshot's name when sent; shown, never matched.
    pub to_name: String,
    pub raw: bool,
    /// Plaintext stream bytes.
    pub stream_bytes: u64,
    pub segments: u64,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; 0 without object lock.
    pub retain_until: i64,
}

/// What the source sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum StreamSpec {
    /// `zfs send dataset@snapshot`
    Full { snapshot: String },
    /// `zfs send -i|-I dataset@from dataset@to`, or `-i dataset#from
    /// dataset@to` from a bookmark (never with `intermediates`).
    Incremental {
        from: String,
        to: String,
        intermediates: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        from_bookmark: bool,
    },
    /// `zfs send -t token`: the rest of an interrupted receive.
    Resume { token: String },
}

/// The target's answer to [`Command::Receive`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveOffer {
    /// Where the sender connects.
    pub addr: String,
    /// `receive_resume_token` of a saved partial receive: send with `-t` to finish it.
    pub resume_token: Option<String>,
    /// What that token resumes, decoded from it by the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialReceive>,
}

/// A saved partial receive, as its resume token describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PartialReceive {
    /// GUID of the snapshot being received.
    pub toguid: u64,
    /// GUID of the incremental source; `None` for a full stream.
    pub fromguid: Option<u64>,
    /// Stream bytes already received (the token's `bytes`).
    pub bytes: u64,
}

/// Progress and outcome of one end of a job, on `zdr.v1.agent.<node>.job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobUpdate {
    pub node: String,
    pub job: String,
    pub role: JobRole,
    pub state: JobPhase,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Stream bytes so far.
    pub bytes: u64,
    /// `zfs send -nvP` estimate of the whole stream, when ZFS gave one.
    pub size_hint: Option<u64>,
    /// Over the last second or so.
    pub bytes_per_sec: u64,
    pub message: String,
    /// Target, when done: the snapshot that landed, as listed after the receive.
    pub landed: Option<SnapshotRef>,
    /// Target, when failed: a partial receive is saved and can be resumed.
    pub resumable: bool,
    /// Target, when failed and resumable: what the saved partial receive holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialReceive>,
    /// An upload, when done: the manifest it committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<ManifestRef>,
    /// Source, when failed: `zfs send` itself failed while the transfer did
    /// not (a resume token it cannot use, a snapshot gone), so a saved partial
    /// receive is not to be resumed again. A failed transfer leaves it false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zfs_failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobRole {
    Source,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Running,
    Done,
    Failed,
}

/// The reply to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    /// The command id, or empty when the envelope was refused before its id could be trusted.
    pub id: String,
    pub node: String,
    pub outcome: Outcome,
    pub message: String,
    /// Set by a [`Command::Receive`] that is ready for its sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<ReceiveOffer>,
    /// What the command did, as data: the coordinator decides on these,
    /// never on the wording of `message`.
    #[serde(default, skip_serializing_if = "Effects::is_empty")]
    pub effects: Effects,
    /// Set by [`Command::JobStatus`]: the agent's latest report of that job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobUpdate>,
    /// Set by [`Command::HashSnapshot`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ContentHash>,
    /// Set by [`Command::VerifyBucket`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_check: Option<BucketCheck>,
}

impl CommandResult {
    /// A reply with nothing but its outcome and message.
    pub fn new(id: &str, node: &str, outcome: Outcome, message: String) -> Self {
        CommandResult {
            id: id.to_string(),
            node: node.to_string(),
            outcome,
            message,
            offer: None,
            effects: Effects::default(),
            job: None,
            hash: None,
            bucket_check: None,
        }
    }
}

/// The typed part of a [`CommandResult`]: snapshots as `name` (the part after
/// `@`) or `dataset@name`, as the command's scope makes clear.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Effects {
    /// Snapshots taken (`dataset@name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<String>,
    /// Snapshots destroyed (`dataset@name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destroyed: Vec<String>,
    /// Snapshots whose hold was released (`dataset@name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    /// One line per item that failed; the outcome is then `failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What the node's retention floor refused; the outcome is then `failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floor_refused: Vec<FloorRefusal>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
            && self.destroyed.is_empty()
            && self.released.is_empty()
            && self.errors.is_empty()
            && self.floor_refused.is_empty()
    }
}

/// A destructive operation that an agent's retention floor refused, whoever
/// signed it: it would have removed snapshots inside their immutability window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloorRefusal {
    pub dataset: String,
    pub operation: FloorOperation,
    /// The snapshots inside their window that it would have removed.
    pub snapshots: Vec<FloorHit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FloorOperation {
    /// `zfs destroy` of snapshots (pruning, local or of a copy).
    Destroy,
    /// `zfs receive -F`: the rollback destroys the snapshots after its base.
    ReceiveForce,
    /// Releasing the floor's own hold ([`FLOOR_HOLD`]).
    ReleaseHold,
}

/// One snapshot the floor keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FloorHit {
    /// The part after `@`.
    pub name: String,
    /// Unix seconds.
    pub creation: i64,
    /// Unix seconds, on the agent's clock: when it leaves its window.
    pub until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Failed,
    /// The envelope failed verification; nothing was parsed or done.
    Refused,
}

/// Something that happened on an agent, for the coordinator's log and alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub node: String,
    /// Unix seconds.
    pub at: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EventKind {
    SnapshotTaken {
        dataset: String,
        snapshot: String,
    },
    SnapshotPruned {
        dataset: String,
        snapshot: String,
        reason: String,
    },
    CommandRefused {
        subject: String,
        reason: String,
    },
    PolicyApplied {
        revision: u64,
    },
    PolicyRefused {
        reason: String,
    },
    BackendError {
        operation: String,
        message: String,
    },
    /// The retention floor refused a destructive operation.
    FloorRefused(FloorRefusal),
}

/// Splits datasets into chunks whose JSON stays under `limit` bytes. A single
/// dataset larger than that is split over several chunks by snapshots.
pub fn chunk_inventory(
    node: &str,
    generation: u64,
    datasets: Vec<DatasetInventory>,
    limit: usize,
) -> Vec<InventoryChunk> {
    // Approximate per-entry cost from its JSON; exact sizing is not needed.
    fn cost<T: Serialize>(v: &T) -> usize {
        serde_json::to_vec(v).map(|v| v.len() + 1).unwrap_or(256)
    }
    let mut chunks: Vec<Vec<DatasetInventory>> = vec![Vec::new()];
    let mut size = 0usize;
    for mut ds in datasets {
        let base = 200 + ds.dataset.len() * 2;
        let mut pieces: Vec<(DatasetInventory, usize)> = Vec::new();
        let empty = DatasetInventory {
            snapshots: Vec::new(),
            bookmarks: Vec::new(),
            ..ds.clone()
        };
        let mut cur = empty.clone();
        let mut cur_size = base;
        let snapshots = std::mem::take(&mut ds.snapshots);
        let bookmarks = std::mem::take(&mut ds.bookmarks);
        let mut push = |n: usize, cur: &mut DatasetInventory, cur_size: &mut usize| {
            if *cur_size + n > limit && (!cur.snapshots.is_empty() || !cur.bookmarks.is_empty()) {
                pieces.push((std::mem::replace(cur, empty.clone()), *cur_size));
                *cur_size = base;
            }
            *cur_size += n;
        };
        for s in snapshots {
            push(cost(&s), &mut cur, &mut cur_size);
            cur.snapshots.push(s);
        }
        for b in bookmarks {
            push(cost(&b), &mut cur, &mut cur_size);
            cur.bookmarks.push(b);
        }
        pieces.push((cur, cur_size));
        for (piece, psize) in pieces {
            if size + psize > limit && !chunks.last().map(Vec::is_empty).unwrap_or(true) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += psize;
            chunks.last_mut().expect("one chunk").push(piece);
        }
    }
    let n = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, datasets)| InventoryChunk {
            node: node.to_string(),
            generation,
            chunk: i as u32,
            chunks: n,
            datasets,
        })
        .collect()
}

pub fn join_inventory(mut chunks: Vec<InventoryChunk>) -> Vec<DatasetInventory> {
    chunks.sort_by_key(|c| c.chunk);
    let mut out: Vec<DatasetInventory> = Vec::new();
    for c in chunks {
        for ds in c.datasets {
            match out.last_mut() {
                Some(last) if last.dataset == ds.dataset => {
                    last.snapshots.extend(ds.snapshots);
                    last.bookmarks.extend(ds.bookmarks);
                }
                _ => out.push(ds),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(name: &str, n: u64) -> DatasetInventory {
        DatasetInventory {
            dataset: name.into(),
            guid: 1,
            used: 0,
            available: 0,
            class: None,
            encrypted: false,
            snapshots: (0..n)
                .map(|i| SnapshotInfo {
                    name: format!("zdr_{i:08}"),
                    guid: i + 100,
                    createtxg: i,
                    creation: i as i64,
                    used: 0,
                    userrefs: 0,
                })
                .collect(),
            bookmarks: (0..n / 2)
                .map(|i| BookmarkInfo {
                    name: format!("zdr_{i:08}"),
                    guid: i + 100,
                    createtxg: i,
                    creation: i as i64,
                })
                .collect(),
        }
    }

    #[test]
    fn only_a_direct_child_of_a_pools_drill_root_is_scratch() {
        assert!(is_drill_scratch("tank/zdr-drill/d1"));
        assert!(is_drill_scratch("backup/zdr-drill/n1-17-3"));
        for not in [
            "tank/zdr-drill",
            "tank/zdr-drill/d1/child",
            "tank/data/zdr-drill/d1",
            "tank/zdr-drills/d1",
            "zdr-drill/d1",
            "tank/zdr-drill/",
        ] {
            assert!(!is_drill_scratch(not), "{not}");
        }
    }

    #[test]
    fn chunks_fit_and_rejoin() {
        let input = vec![ds("tank/a", 10), ds("tank/big", 30_000), ds("tank/c", 5)];
        let chunks = chunk_inventory("n1", 3, input.clone(), INVENTORY_CHUNK_BYTES);
        assert!(chunks.len() > 1);
        for c in &chunks {
            let len = serde_json::to_vec(c).unwrap().len();
            assert!(
                len <= INVENTORY_CHUNK_BYTES + 1024,
                "chunk {} is {len} bytes",
                c.chunk
            );
            assert_eq!(c.chunks as usize, chunks.len());
        }
        assert_eq!(join_inventory(chunks), input);
    }

    #[test]
    fn empty_inventory_is_one_chunk() {
        let chunks = chunk_inventory("n1", 1, vec![], 1000);
        assert_eq!(chunks.len(), 1);
        assert!(join_inventory(chunks).is_empty());
    }

    #[test]
    fn commands_refuse_unknown_fields() {
        let ok: Command = serde_json::from_str(r#"{"ping":{}}"#).unwrap();
        assert_eq!(ok, Command::Ping {});
        assert!(serde_json::from_str::<Command>(r#"{"ping":{"x":1}}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"rm_rf":{}}"#).is_err());
    }

    #[test]
    fn job_tokens_travel_but_are_never_logged() {
        let secret = "ab".repeat(32);
        let body = format!(
            r#"{{"send":{{"job":"j1","token":"{secret}","target_node":"n2","target_addr":"127.0.0.1:9","dataset":"tank/a","stream":{{"kind":"full","snapshot":"s1"}},"raw":true,"compress":false,"bytes_per_sec":null,"hold_tag":"t"}}}}"#
        );
        let cmd: Command = serde_json::from_str(&body).unwrap();
        let Command::Send(send) = &cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(send.token.0, secret);
        assert!(serde_json::to_string(&cmd).unwrap().contains(&secret));
        assert!(!format!("{cmd:?}").contains(&secret), "{cmd:?}");
    }
}
