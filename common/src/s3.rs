//! The one way zdr builds an S3 client, for the agent's offsite store and
//! the coordinator's bucket pruning: SigV4 on rustls + ring (no aws-lc-rs),
//! path-style addressing (SeaweedFS, MinIO, B2), and the SDK's checksums only
//! "when required", because B2 refuses every `x-amz-checksum-*` header.
//! Building makes no request.

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
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
