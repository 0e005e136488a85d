//! The one way zdr builds an S3 client, for the agent's offsite store and
//! the coordinator's bucket pruning: SigV4 on rustls + ring (no aws-lc-rs),
//! path-style addressing (SeaweedFS, MinIO, B2), and the SDK's checksums only
//! "when required", because B2 refuses every `x-amz-checksum-*` header.
//! Building makes no request.

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsError;
use aws_sdk_s3::Client;

/// A client for `endpoint` (`http(s)://host:port`) in `region`.
pub fn client(endpoint: &str, region: &str, access_key_id: &str, secret: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            access_key_id,
            secret,
            None,
            None,
            "zdr-bucket-target",
        ))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .http_client(http)
        .build();
    Client::from_conf(conf)
}

/// One version of one object, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    /// `None` in a bucket without versioning (S3 says "null").
    pub version_id: Option<String>,
    /// Unix seconds, the server's.
    pub modified: i64,
    pub delete_marker: bool,
}

/// Every version and delete marker under `prefix`, page after page.
pub async fn list_versions(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<
    Vec<ObjectVersion>,
    SdkError<ListObjectVersionsError, aws_sdk_s3::config::http::HttpResponse>,
> {
    let mut out = Vec::new();
    let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
    let one = |key: Option<&str>,
               id: Option<&str>,
               at: Option<&aws_sdk_s3::primitives::DateTime>,
               marker| {
        Some(ObjectVersion {
            key: key?.to_string(),
            version_id: id.filter(|id| *id != "null").map(str::to_string),
            modified: at.map_or(0, |t| t.secs()),
            delete_marker: marker,
        })
    };
    loop {
        let page = client
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await?;
        out.extend(
            page.versions()
                .iter()
                .filter_map(|v| one(v.key(), v.version_id(), v.last_modified(), false)),
        );
        out.extend(
            page.delete_markers()
                .iter()
                .filter_map(|m| one(m.key(), m.version_id(), m.last_modified(), true)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_string);
        version_marker = page.next_version_id_marker().map(str::to_string);
        if key_marker.is_none() {
            break;
        }
    }
    Ok(out)
}
