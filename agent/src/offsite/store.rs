//! The S3 shell: uploads a stream as sealed segments and a manifest, lists and
//! verifies manifests, restores a stream. Decisions are in the pure modules.
//!
//! Every request is plain SigV4 with Content-MD5 on each PUT and part, and
//! the SDK's request checksums only "when required": B2 refuses every
//! `x-amz-checksum-*` header. PUT and part bodies are not signed
//! (`UNSIGNED-PAYLOAD`): Content-MD5 and the manifest's SHA-256 already
//! cover every byte.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectLockMode, StorageClass};
use aws_sdk_s3::Client;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest as _, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use x25519_dalek::{PublicKey, StaticSecret};

use super::manifest::{
    self, sha256_hex, ChainError, Manifest, ManifestError, ManifestSigner, ParentRef, SegmentEntry,
    SendFlags, TrustedSigners, VerifiedManifest,
};
use super::seal::{self, DataKey, SealError, SegmentAt, StreamId};
use super::sizing::Sizing;
use super::{dataset_prefix, manifest_key, segment_key};

/// Where the bucket is and how to reach it.
#[derive(Clone)]
pub struct BucketConfig {
    /// `http(s)://host:port`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Prepended to every object key (may be empty; end it with `/`).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Redacted: the secret must not end up in logs.
impl std::fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A delete or shortening needs the bypass permission.
    Governance,
    /// Nobody can delete or shorten it until it expires.
    Compliance,
}

/// The object lock put on every object of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// Unix seconds.
    pub retain_until: i64,
}

/// What every object of one upload is stored with.
#[derive(Debug, Clone)]
struct Placement {
    lock: Option<ObjectLock>,
    storage_class: Option<StorageClass>,
}

impl ObjectLock {
    fn mode(&self) -> ObjectLockMode {
        match self.mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "bucket {bucket} at {endpoint} refused the credentials ({code}): check the access key id \
         and secret the task's credentials reference points to"
    )]
    Credentials {
        bucket: String,
        endpoint: String,
        code: String,
    },
    #[error(
        "bucket {bucket} does not exist at {endpoint}: create it (with object lock enabled, which \
         most providers allow only at creation) or fix the bucket name"
    )]
    NoBucket { bucket: String, endpoint: String },
    #[error(
        "bucket {bucket} has no object lock, which the task requires: create a new bucket with \
         object lock enabled (it cannot be turned on later on most providers), or drop the lock \
         from the task"
    )]
    NoObjectLock { bucket: String },
    #[error(
        "bucket {bucket}: the server says our clock is off ({code}); fix this host's time sync \
         (chrony/ntp) and retry"
    )]
    ClockSkew { bucket: String, code: String },
    #[error("bucket {bucket} at {endpoint} is unreachable: {why}")]
    Unreachable {
        bucket: String,
        endpoint: String,
        why: String,
    },
    #[error("bucket {bucket}, object {object}: {op} failed: {code} {message}")]
    S3 {
        bucket: String,
        object: String,
        op: &'static str,
        code: String,
        message: String,
    },
    #[error(
        "bucket {bucket}, object {object}: stored bytes do not match the manifest \
         (size {size} sha256 {sha256}, manifest says size {want_size} sha256 {want_sha256}); \
         the segment was altered or damaged: restore an older chain or another copy"
    )]
    SegmentHash {
        bucket: String,
        object: String,
        size: u64,
        sha256: String,
        want_size: u64,
        want_sha256: String,
    },
    #[error("bucket {bucket}, object {object}: {source}")]
    Seal {
        bucket: String,
        object: String,
        #[source]
        source: SealError,
    },
    #[error("bucket {bucket}: {source}{}", skipped_hint(.skipped))]
    NoChain {
        bucket: String,
        #[source]
        source: Box<ChainError>,
        skipped: Vec<ManifestError>,
    },
    #[error("bucket {bucket}: {source}")]
    Chain {
        bucket: String,
        #[source]
        source: Box<ChainError>,
    },
    #[error(
        "stream {stream}: restored {got} bytes, the manifest says {want}; the restore is incomplete"
    )]
    ShortStream { stream: String, got: u64, want: u64 },
    #[error("no recovery key to seal the data key for: name at least one recipient")]
    NoRecipients,
    #[error("reading the stream to upload: {0}")]
    Source(#[source] std::io::Error),
    #[error("writing the restored stream: {0}")]
    Sink(#[source] std::io::Error),
    #[error("a segment task failed: {0}")]
    Task(String),
    #[error("{0}; no manifest was written, so nothing restores or continues from this upload")]
    Unfinished(String),
}

/// One bucket, as the agent sees it.
#[derive(Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    endpoint: String,
    prefix: String,
}

/// What one upload wrote.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub manifest_key: String,
    /// The manifest as stored, to be the parent of the next incremental.
    pub manifest: VerifiedManifest,
}

/// What a stream's upload is.
pub struct UploadRequest {
    pub dataset: String,
    pub from_guid: Option<u64>,
    pub to_guid: u64,
    pub to_name: String,
    pub flags: SendFlags,
    /// Required for an incremental: the manifest of the stream it continues.
    pub parent: Option<ParentRef>,
    pub recipients: Vec<PublicKey>,
    /// `None` only for a bucket without object lock.
    pub lock: Option<ObjectLock>,
    /// The S3 storage class of every object; the bucket's default when `None`.
    pub storage_class: Option<String>,
    pub sizing: Sizing,
    /// Unix seconds.
    pub now: i64,
}

/// The manifests of one dataset in the bucket.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub manifests: Vec<VerifiedManifest>,
    /// Streams with segments and no manifest: interrupted uploads.
    pub incomplete: Vec<String>,
    /// Manifest objects (or versions) that did not verify: altered,
    /// forged, or signed by a key not trusted here.
    pub skipped: Vec<ManifestError>,
}

/// A restore's chain, full first, and the manifests passed over.
#[derive(Debug, Clone)]
pub struct PlannedRestore {
    pub chain: Vec<VerifiedManifest>,
    pub skipped: Vec<ManifestError>,
}

/// `; skipped: a; b` for an error, empty when nothing was skipped.
fn skipped_hint(skipped: &[ManifestError]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let all: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(
        "; manifests that do not verify were skipped (the bucket was written by someone else, \
         or a signer is not trusted here): {}",
        all.join("; ")
    )
}

/// Refuses an incremental whose parent does not land its base, or whose
/// flags differ (a pure check before any byte is written).
pub fn check_parent(req: &UploadRequest) -> Result<(), ChainError> {
    let Some(from_guid) = req.from_guid else {
        return Ok(());
    };
    let Some(parent) = &req.parent else {
        return Err(ChainError::NotFound {
            dataset: req.dataset.clone(),
            guid: from_guid,
            incomplete: Vec::new(),
        });
    };
    manifest::check_link(&req.dataset, "(new upload)", from_guid, req.flags, parent)
}

fn content_md5(bytes: &[u8]) -> String {
    B64.encode(Md5::digest(bytes))
}

/// Reads up to `limit` bytes into `buf` (after what it holds); returns how many.
async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, StoreError> {
    let start = buf.len();
    let mut taken = src.take(limit as u64);
    taken.read_to_end(buf).await.map_err(StoreError::Source)?;
    Ok(buf.len() - start)
}

impl Store {
    /// A client for `cfg`; makes no request.
    pub fn new(cfg: &BucketConfig) -> Store {
        Store {
            client: zdr_common::s3::client(
                &cfg.endpoint,
                &cfg.region,
                &cfg.access_key_id,
                &cfg.secret_access_key,
            ),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint.clone(),
            prefix: cfg.prefix.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 client, for what the offsite tier does not wrap (creating
    /// buckets in tests, administration).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn error<E: ProvideErrorMetadata>(
        &self,
        op: &'static str,
        object: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError {
        let bucket = self.bucket.clone();
        let endpoint = self.endpoint.clone();
        let status = err.raw_response().map(|r| r.status().as_u16());
        let why = match &err {
            SdkError::DispatchFailure(d) => Some(format!("{:?}", d.as_connector_error())),
            SdkError::TimeoutError(_) => Some("timed out".to_string()),
            _ => None,
        };
        if let Some(why) = why {
            return StoreError::Unreachable {
                bucket,
                endpoint,
                why,
            };
        }
        let code = err.code().unwrap_or_default().to_string();
        match code.as_str() {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
                StoreError::Credentials {
                    bucket,
                    endpoint,
                    code,
                }
            }
            "NoSuchBucket" => StoreError::NoBucket { bucket, endpoint },
            "RequestTimeTooSkewed" => StoreError::ClockSkew { bucket, code },
            _ => StoreError::S3 {
                bucket,
                object: object.to_string(),
                op,
                code: if code.is_empty() {
                    format!("HTTP {}", status.unwrap_or_default())
                } else {
                    code
                },
                message: err.message().unwrap_or_default().to_string(),
            },
        }
    }

    /// Checks the bucket exists, takes the credentials and, when
    /// `require_lock`, has object lock enabled. Returns whether it has.
    pub async fn check(&self, require_lock: bool) -> Result<bool, StoreError> {
        let enabled = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled"),
            Err(err) if err.code() == Some("ObjectLockConfigurationNotFoundError") => false,
            Err(err) => return Err(self.error("GetObjectLockConfiguration", "", err)),
        };
        if require_lock && !enabled {
            return Err(StoreError::NoObjectLock {
                bucket: self.bucket.clone(),
            });
        }
        Ok(enabled)
    }

    /// Uploads `src` (a `zfs send` stream) as one stream; writes the manifest
    /// last. A failure leaves segments without a manifest, which are never
    /// restored nor continued from.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        src: R,
        req: UploadRequest,
        signer: &ManifestSigner,
    ) -> Result<Uploaded, StoreError> {
        self.upload_gated(src, req, signer, async { Ok(()) }).await
    }

    /// [`Store::upload`], with the manifest written only if `finished`
    /// says the stream's producer ended well (`zfs send`'s exit: a send that
    /// fails looks like the end of the stream to the reader).
    pub async fn upload_gated<R: AsyncRead + Unpin>(
        &self,
        mut src: R,
        req: UploadRequest,
        signer: &ManifestSigner,
        finished: impl std::future::Future<Output = Result<(), String>>,
    ) -> Result<Uploaded, StoreError> {
        check_parent(&req).map_err(|source| StoreError::Chain {
            bucket: self.bucket.clone(),
            source: Box::new(source),
        })?;
        if req.recipients.is_empty() {
            return Err(StoreError::NoRecipients);
        }
        let stream = StreamId::generate();
        let key = Arc::new(DataKey::generate());
        let placed = Placement {
            lock: req.lock,
            storage_class: req.storage_class.as_deref().map(StorageClass::from),
        };
        let seg_len = usize::try_from(req.sizing.segment).expect("segment size fits in memory");
        let mut tasks: JoinSet<Result<SegmentEntry, StoreError>> = JoinSet::new();
        let mut done: Vec<SegmentEntry> = Vec::new();
        let mut stream_bytes = 0u64;
        let mut index = 0u64;
        let mut current = seal::segment_buffer(seg_len);
        let mut n = fill(&mut src, &mut current, seg_len).await?;
        loop {
            // A full segment may still be the last: look one segment ahead.
            let mut next = None;
            if n == seg_len {
                let mut buf = seal::segment_buffer(seg_len);
                let m = match fill(&mut src, &mut buf, seg_len).await {
                    Ok(m) => m,
                    Err(e) => {
                        // Let the segments in flight land: a resume can use them.
                        while tasks.join_next().await.is_some() {}
                        return Err(e);
                    }
                };
                if m > 0 {
                    next = Some((buf, m));
                }
            }
            stream_bytes += n as u64;
            let at = SegmentAt {
                stream,
                index,
                last: next.is_none(),
            };
            while tasks.len() >= req.sizing.in_flight as usize {
                done.push(join(tasks.join_next().await.expect("tasks are running"))?);
            }
            let (store, key, dataset) = (self.clone(), key.clone(), req.dataset.clone());
            let (part, placed) = (req.sizing.part, placed.clone());
            tasks.spawn(async move {
                store
                    .put_segment(&dataset, &key, at, current, part, &placed)
                    .await
            });
            match next {
                Some((buf, m)) => {
                    (current, n) = (buf, m);
                    index += 1;
                }
                None => break,
            }
        }
        while let Some(result) = tasks.join_next().await {
            done.push(join(result)?);
        }
        drop(src);
        finished.await.map_err(StoreError::Unfinished)?;
        done.sort_by_key(|s| s.index);
        let manifest = Manifest {
            version: manifest::VERSION,
            stream: stream.to_string(),
            dataset: req.dataset.clone(),
            from_guid: req.from_guid,
            to_guid: req.to_guid,
            to_name: req.to_name.clone(),
            flags: req.flags,
            stream_bytes,
            segment_size: req.sizing.segment,
            segments: done,
            keys: req
                .recipients
                .iter()
                .map(|r| seal::wrap(&key, &stream, r))
                .collect(),
            parent: req.parent.as_ref().map(|p| p.hash.clone()),
            created: req.now,
            retain_until: req.lock.map_or(0, |l| l.retain_until),
        };
        let bytes = signer.sign(&manifest);
        let object = manifest_key(&self.prefix, &req.dataset, &stream);
        let md5 = content_md5(&bytes);
        self.put(&object, Bytes::from(bytes.clone()), md5, &placed)
            .await?;
        Ok(Uploaded {
            manifest_key: object,
            manifest: VerifiedManifest {
                manifest,
                stream,
                hash: sha256_hex(&bytes),
                kid: signer.kid().to_string(),
            },
        })
    }

    async fn put_segment(
        &self,
        dataset: &str,
        key: &DataKey,
        at: SegmentAt,
        plain: Vec<u8>,
        part: u64,
        placed: &Placement,
    ) -> Result<SegmentEntry, StoreError> {
        let key = key.clone();
        // Sealing and every hash (SHA-256 for the manifest, MD5 per PUT or
        // part) are CPU work: off the runtime, in parallel across segments.
        let (stored, sha256, md5s) = tokio::task::spawn_blocking(move || {
            let stored = seal::seal(&key, at, plain);
            let sha256 = sha256_hex(&stored);
            let md5s: Vec<String> = stored.chunks(part as usize).map(content_md5).collect();
            (Bytes::from(stored), sha256, md5s)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        let object = segment_key(&self.prefix, dataset, &at.stream, at.index);
        let size = stored.len() as u64;
        let version_id = if size <= part {
            let md5 = md5s
                .into_iter()
                .next()
                .expect("a sealed segment holds at least its header and tag");
            self.put(&object, stored, md5, placed).await?
        } else {
            self.put_multipart(&object, stored, part, &md5s, placed)
                .await?
        };
        Ok(SegmentEntry {
            index: at.index,
            size,
            sha256,
            version_id,
        })
    }

    /// One PUT with Content-MD5 (`md5`, of `body`) and the lock; returns
    /// the version written.
    async fn put(
        &self,
        object: &str,
        body: Bytes,
        md5: String,
        placed: &Placement,
    ) -> Result<Option<String>, StoreError> {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .content_md5(md5)
            .set_storage_class(placed.storage_class.clone())
            .body(ByteStream::from(body));
        if let Some(lock) = placed.lock {
            put = put
                .object_lock_mode(lock.mode())
                .object_lock_retain_until_date(DateTime::from_secs(lock.retain_until));
        }
        // The body's integrity rests on Content-MD5, which the server checks,
        // and on the manifest's SHA-256: a third hash of every byte for the
        // signature (SigV4's signed payload) would only cost CPU.
        let out = put
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.error("PutObject", object, e))?;
        Ok(out.version_id().map(str::to_string))
    }

    /// `md5s`: the Content-MD5 of each `part`-sized slice of `body`.
    async fn put_multipart(
        &self,
        object: &str,
        body: Bytes,
        part: u64,
        md5s: &[String],
        placed: &Placement,
    ) -> Result<Option<String>, StoreError> {
        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .set_storage_class(placed.storage_class.clone());
        if let Some(lock) = placed.lock {
            create = create
                .object_lock_mode(lock.mode())
                .object_lock_retain_until_date(DateTime::from_secs(lock.retain_until));
        }
        let upload = create
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", object, e))?;
        let id = upload.upload_id().unwrap_or_default().to_string();
        let result = self.put_parts(object, &id, body, part, md5s).await;
        if result.is_err() {
            // Best effort: an unfinished upload only costs storage until the
            // bucket's lifecycle rule removes it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(&id)
                .send()
                .await;
        }
        result
    }

    async fn put_parts(
        &self,
        object: &str,
        id: &str,
        body: Bytes,
        part: u64,
        md5s: &[String],
    ) -> Result<Option<String>, StoreError> {
        let part = part as usize;
        let mut parts = Vec::with_capacity(body.len().div_ceil(part));
        assert_eq!(md5s.len(), body.len().div_ceil(part), "one MD5 per part");
        for (i, start) in (0..body.len()).step_by(part).enumerate() {
            let chunk = body.slice(start..(start + part).min(body.len()));
            let number = i as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(id)
                .part_number(number)
                .content_md5(&md5s[i])
                .body(ByteStream::from(chunk))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| self.error("UploadPart", object, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", object, e))?;
        Ok(out.version_id().map(str::to_string))
    }

    /// One object (version), read into one buffer of its announced size:
    /// a segment is copied once on its way in, and then opened in place.
    async fn get(&self, object: &str, version: Option<&str>) -> Result<Vec<u8>, StoreError> {
        let mut out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.error("GetObject", object, e))?;
        let announced = out.content_length().and_then(|n| usize::try_from(n).ok());
        let mut buf = Vec::with_capacity(announced.unwrap_or(0));
        loop {
            match out.body.try_next().await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) => return Ok(buf),
                Err(e) => {
                    return Err(StoreError::S3 {
                        bucket: self.bucket.clone(),
                        object: object.to_string(),
                        op: "GetObject",
                        code: "body".into(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    /// Every object key under `prefix` with its versions, newest first
    /// (`None`: a bucket without versioning). Delete markers are passed
    /// over: they hide nothing from a restore.
    async fn versions(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, Vec<Option<String>>>, StoreError> {
        let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        let all = zdr_common::s3::list_versions(&self.client, &self.bucket, prefix)
            .await
            .map_err(|e| self.error("ListObjectVersions", prefix, e))?;
        for v in all.into_iter().filter(|v| !v.delete_marker) {
            out.entry(v.key).or_default().push(v.version_id);
        }
        Ok(out)
    }

    /// Lists and verifies the manifests of `dataset`. Every version of a
    /// manifest key is tried, newest first, and the newest that verifies is
    /// kept: whoever can write to the bucket can put a newer version or a
    /// delete marker over a manifest, but neither hides the one the agent
    /// wrote. What does not verify is skipped and named in the listing.
    pub async fn list(
        &self,
        dataset: &str,
        trusted: &TrustedSigners,
    ) -> Result<Listing, StoreError> {
        let prefix = dataset_prefix(&self.prefix, dataset);
        let keys = self.versions(&prefix).await?;
        // stream id → the versions of its manifest (empty: no manifest)
        let mut streams: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        for (key, versions) in &keys {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let Some((stream, tail)) = rest.split_once('/') else {
                continue;
            };
            let entry = streams.entry(stream.to_string()).or_default();
            if tail == "manifest" {
                entry.extend(versions.iter().cloned());
            }
        }
        let mut listing = Listing::default();
        for (stream, versions) in streams {
            if versions.is_empty() {
                listing.incomplete.push(stream);
                continue;
            }
            let object = format!("{prefix}{stream}/manifest");
            for version in versions {
                let named = match &version {
                    Some(v) => format!("{object} (version {v})"),
                    None => object.clone(),
                };
                let bytes = self.get(&object, version.as_deref()).await?;
                let checked = manifest::verify(&named, &bytes, trusted).and_then(|v| {
                    if v.manifest.stream != stream || v.manifest.dataset != dataset {
                        return Err(ManifestError::Invalid {
                            object: named.clone(),
                            why: format!(
                                "it is the manifest of stream {} of {}, not of the stream its key \
                                 names (copied there?)",
                                v.manifest.stream, v.manifest.dataset
                            ),
                        });
                    }
                    Ok(v)
                });
                match checked {
                    Ok(v) => {
                        listing.manifests.push(v);
                        break;
                    }
                    Err(e) => listing.skipped.push(e),
                }
            }
        }
        Ok(listing)
    }

    /// Re-reads every stream of `dataset` without restoring it: each
    /// manifest's signature (through [`Self::list`]), each incremental's
    /// link to a parent that verified, and each segment's size and SHA-256,
    /// `prefetch` segments at a time. What is wrong is listed, naming the
    /// object; only a listing that fails is an error.
    pub async fn verify(
        &self,
        dataset: &str,
        trusted: &TrustedSigners,
        prefetch: usize,
    ) -> Result<zdr_common::wire::BucketCheck, StoreError> {
        let listing = self.list(dataset, trusted).await?;
        let mut check = zdr_common::wire::BucketCheck {
            incomplete: listing.incomplete.len() as u64,
            problems: listing.skipped.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        let hashes: std::collections::HashSet<&str> =
            listing.manifests.iter().map(|m| m.hash.as_str()).collect();
        for m in &listing.manifests {
            let manifest = &m.manifest;
            if let Some(parent) = manifest.parent.as_deref().filter(|p| !hashes.contains(p)) {
                check.problems.push(format!(
                    "{}: its parent manifest (SHA-256 {parent}) is missing or did not verify; \
                     the chain is broken from here",
                    manifest_key(&self.prefix, dataset, &m.stream)
                ));
            }
            check.manifests += 1;
            let results: Vec<Result<u64, StoreError>> =
                futures::stream::iter(manifest.segments.iter().cloned())
                    .map(|entry| {
                        let object = segment_key(&self.prefix, dataset, &m.stream, entry.index);
                        async move {
                            let stored = self.get(&object, entry.version_id.as_deref()).await?;
                            let bucket = self.bucket.clone();
                            tokio::task::spawn_blocking(move || {
                                check_segment(&bucket, &object, &stored, &entry)
                                    .map(|()| stored.len() as u64)
                            })
                            .await
                            .map_err(|e| StoreError::Task(e.to_string()))?
                        }
                    })
                    .buffered(prefetch.max(1))
                    .collect()
                    .await;
            for r in results {
                match r {
                    Ok(bytes) => {
                        check.segments += 1;
                        check.bytes += bytes;
                    }
                    Err(e) => check.problems.push(e.to_string()),
                }
            }
        }
        // The answer travels as one NATS message: a bucket emptied by
        // someone could otherwise name thousands of objects.
        if check.problems.len() > MAX_PROBLEMS {
            let more = check.problems.len() - MAX_PROBLEMS;
            check.problems.truncate(MAX_PROBLEMS);
            check.problems.push(format!("... and {more} more"));
        }
        Ok(check)
    }

    /// The verified chain that restores `target_guid` of `dataset`, full
    /// first: the newest validly signed one, with what was skipped.
    pub async fn plan_restore(
        &self,
        dataset: &str,
        target_guid: u64,
        trusted: &TrustedSigners,
    ) -> Result<PlannedRestore, StoreError> {
        let listing = self.list(dataset, trusted).await?;
        let chain = manifest::chain(
            &listing.manifests,
            &listing.incomplete,
            dataset,
            target_guid,
        )
        .map_err(|source| StoreError::NoChain {
            bucket: self.bucket.clone(),
            source: Box::new(source),
            skipped: listing.skipped.clone(),
        })?;
        Ok(PlannedRestore {
            chain: chain.into_iter().cloned().collect(),
            skipped: listing.skipped,
        })
    }

    /// Streams one stream's plaintext into `dst` (`zfs receive`'s stdin):
    /// per segment, fetch, check size and SHA-256, then decrypt and write.
    /// Fetches up to `prefetch` segments ahead. Returns the bytes written.
    pub async fn restore_stream<W: AsyncWrite + Unpin>(
        &self,
        verified: &VerifiedManifest,
        recovery: &StaticSecret,
        prefetch: usize,
        dst: &mut W,
    ) -> Result<u64, StoreError> {
        let m = &verified.manifest;
        let stream = verified.stream;
        let key = Arc::new(seal::unwrap(&m.keys, &stream, recovery).map_err(|source| {
            StoreError::Seal {
                bucket: self.bucket.clone(),
                object: manifest_key(&self.prefix, &m.dataset, &stream),
                source,
            }
        })?);
        let count = m.segments.len() as u64;
        let mut plain = futures::stream::iter(m.segments.iter().cloned())
            .map(|entry| {
                let key = key.clone();
                let object = segment_key(&self.prefix, &m.dataset, &stream, entry.index);
                async move {
                    let stored = self.get(&object, entry.version_id.as_deref()).await?;
                    let at = SegmentAt {
                        stream,
                        index: entry.index,
                        last: entry.index + 1 == count,
                    };
                    let bucket = self.bucket.clone();
                    // Hashing and opening are CPU work: off the runtime, and
                    // in parallel across the segments fetched ahead.
                    tokio::task::spawn_blocking(move || {
                        check_segment(&bucket, &object, &stored, &entry)?;
                        seal::open(&key, at, stored).map_err(|source| StoreError::Seal {
                            bucket,
                            object,
                            source,
                        })
                    })
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
                }
            })
            .buffered(prefetch.max(1));
        let mut written = 0u64;
        while let Some(segment) = plain.next().await {
            let segment = segment?;
            dst.write_all(&segment).await.map_err(StoreError::Sink)?;
            written += segment.len() as u64;
        }
        dst.flush().await.map_err(StoreError::Sink)?;
        if written != m.stream_bytes {
            return Err(StoreError::ShortStream {
                stream: m.stream.clone(),
                got: written,
                want: m.stream_bytes,
            });
        }
        Ok(written)
    }
}

/// Problems a verification names one by one; the rest are counted.
const MAX_PROBLEMS: usize = 100;

/// The stored bytes of a segment are the ones its manifest names.
fn check_segment(
    bucket: &str,
    object: &str,
    stored: &[u8],
    entry: &SegmentEntry,
) -> Result<(), StoreError> {
    let sha256 = sha256_hex(stored);
    if stored.len() as u64 != entry.size || sha256 != entry.sha256 {
        return Err(StoreError::SegmentHash {
            bucket: bucket.to_string(),
            object: object.to_string(),
            size: stored.len() as u64,
            sha256,
            want_size: entry.size,
            want_sha256: entry.sha256.clone(),
        });
    }
    Ok(())
}

fn join(
    result: Result<Result<SegmentEntry, StoreError>, tokio::task::JoinError>,
) -> Result<SegmentEntry, StoreError> {
    result.map_err(|e| StoreError::Task(e.to_string()))?
}
