//! The S3 shell of pruning: lists a bucket's streams with every version,
//! reads the head of each manifest, deletes one stream's versions in the
//! plan's order. Decisions are in [`super::plan`].

use std::collections::BTreeMap;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{DatasetObjects, Doomed, Head, ManifestHead, Stream, Version};

/// What went wrong talking to the bucket; names the bucket, the request
/// and the object, and what the server said.
#[derive(Debug, thiserror::Error)]
#[error("bucket {bucket}: {op} {object}: {why}")]
pub struct BucketError {
    pub bucket: String,
    pub op: &'static str,
    pub object: String,
    pub why: String,
}

fn error<E: ProvideErrorMetadata + std::fmt::Debug>(
    bucket: &str,
    op: &'static str,
    object: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> BucketError {
    let why = match &err {
        SdkError::DispatchFailure(d) => format!("unreachable: {:?}", d.as_connector_error()),
        SdkError::TimeoutError(_) => "timed out".into(),
        _ => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let code = err.code().unwrap_or_default();
            let hint = match code {
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                    "; check bucket.prune.credentials on the coordinator's host"
                }
                "AccessDenied" => {
                    "; the coordinator's keys must be allowed to list, read and delete object versions"
                }
                "NoSuchBucket" => "; check bucket.bucket and bucket.endpoint",
                "RequestTimeTooSkewed" => "; set the coordinator's clock (NTP)",
                _ => "",
            };
            format!(
                "{} (HTTP {}) {}{hint}",
                if code.is_empty() { "error" } else { code },
                status.unwrap_or_default(),
                err.message().unwrap_or_default()
            )
        }
    };
    BucketError {
        bucket: bucket.to_string(),
        op,
        object: object.to_string(),
        why,
    }
}

/// Every stream under `<prefix>streams/`, by dataset folder, with the head
/// of its manifest where it has one.
pub async fn list(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<DatasetObjects>, BucketError> {
    let root = format!("{prefix}streams/");
    // folder → stream → versions
    let mut found: BTreeMap<String, BTreeMap<String, Vec<Version>>> = BTreeMap::new();
    let all = zdr_common::s3::list_versions(client, bucket, &root)
        .await
        .map_err(|e| error(bucket, "ListObjectVersions", &root, e))?;
    for v in all {
        let Some((folder, rest)) = v.key.strip_prefix(&root).and_then(|r| r.split_once('/')) else {
            continue;
        };
        // Rule 1: only `<stream>/manifest` and `<stream>/seg/<n>`.
        let Some((stream, tail)) = rest.split_once('/') else {
            continue;
        };
        if tail != "manifest" && !tail.starts_with("seg/") {
            continue;
        }
        let (folder, stream) = (folder.to_string(), stream.to_string());
        found
            .entry(folder)
            .or_default()
            .entry(stream)
            .or_default()
            .push(Version {
                key: v.key,
                version_id: v.version_id,
                modified: v.modified,
                delete_marker: v.delete_marker,
            });
    }
    let mut out = Vec::with_capacity(found.len());
    for (folder, streams) in found {
        let mut ds = DatasetObjects {
            folder,
            streams: Vec::with_capacity(streams.len()),
        };
        for (id, versions) in streams {
            let manifest = versions
                .iter()
                .filter(|v| v.key.ends_with("/manifest") && !v.delete_marker)
                .max_by_key(|v| v.modified);
            let head = match manifest {
                None => Head::Missing,
                Some(v) => match get(client, bucket, v).await {
                    Ok(bytes) => head_of(&bytes).map_or_else(Head::Unreadable, Head::Read),
                    Err(e) => Head::Unreadable(e.to_string()),
                },
            };
            ds.streams.push(Stream { id, head, versions });
        }
        out.push(ds);
    }
    Ok(out)
}

async fn get(client: &Client, bucket: &str, v: &Version) -> Result<Vec<u8>, BucketError> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(&v.key)
        .set_version_id(v.version_id.clone())
        .send()
        .await
        .map_err(|e| error(bucket, "GetObject", &v.key, e))?;
    let body = out.body.collect().await.map_err(|e| BucketError {
        bucket: bucket.to_string(),
        op: "GetObject",
        object: v.key.clone(),
        why: format!("body: {e}"),
    })?;
    Ok(body.into_bytes().to_vec())
}

/// The fields of a manifest's JSON pruning reads; the rest is passed over.
#[derive(Deserialize)]
struct HeadFields {
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    retain_until: i64,
}

/// A stored manifest's head: `ZDRM1 <kid> <signature>\n<JSON>`. The
/// signature is not checked here (the coordinator holds no agent's manifest
/// key); what is read can only keep objects longer (module rules 3-5).
pub fn head_of(bytes: &[u8]) -> Result<ManifestHead, String> {
    let rest = bytes
        .strip_prefix(b"ZDRM1 ")
        .ok_or("does not start with \"ZDRM1 \"")?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no newline after the signature line")?;
    let line = std::str::from_utf8(&rest[..nl]).map_err(|_| "the signature line is not UTF-8")?;
    let signer = line
        .split_once(' ')
        .map(|(kid, _)| kid)
        .ok_or("the signature line is not \"<kid> <signature>\"")?;
    let f: HeadFields =
        serde_json::from_slice(&rest[nl + 1..]).map_err(|e| format!("its JSON: {e}"))?;
    let hash = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(ManifestHead {
        signer: signer.to_string(),
        hash,
        parent: f.parent,
        retain_until: f.retain_until,
    })
}

/// Deletes `d`'s versions in order; stops at the first refusal (a lock the
/// server still enforces, a permission), so the order's promise holds.
/// Returns how many versions went.
pub async fn delete(client: &Client, bucket: &str, d: &Doomed) -> (usize, Option<BucketError>) {
    for (n, v) in d.versions.iter().enumerate() {
        let sent = client
            .delete_object()
            .bucket(bucket)
            .key(&v.key)
            .set_version_id(v.version_id.clone())
            .send()
            .await;
        if let Err(e) = sent {
            return (n, Some(error(bucket, "DeleteObject", &v.key, e)));
        }
    }
    (d.versions.len(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_read_without_the_rest_of_the_manifest() {
        let bytes =
            b"ZDRM1 node-a1 c2ln\n{\"version\":1,\"parent\":\"ab12\",\"retain_until\":77,\"x\":[1]}";
        let h = head_of(bytes).unwrap();
        assert_eq!(h.signer, "node-a1");
        assert_eq!(h.parent.as_deref(), Some("ab12"));
        assert_eq!(h.retain_until, 77);
        assert_eq!(h.hash.len(), 64);
        let full = head_of(b"ZDRM1 n s\n{\"parent\":null}").unwrap();
        assert_eq!((full.parent, full.retain_until), (None, 0));
        assert!(head_of(b"ZDRM2 n s\n{}").unwrap_err().contains("ZDRM1"));
        assert!(head_of(b"ZDRM1 n s{}").unwrap_err().contains("newline"));
        assert!(head_of(b"ZDRM1 n s\n{").unwrap_err().contains("JSON"));
    }
}
