//! B2 strict mode: a recording proxy between the store and SeaweedFS fails
//! the test on any `x-amz-checksum-*` header, or on a PUT without Content-MD5.

mod support {
    pub mod seaweed;
}

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use support::seaweed::Seaweed;
use x25519_dalek::{PublicKey, StaticSecret};
use zdr_agent::offsite::manifest::{ManifestSigner, SendFlags, TrustedSigners};
use zdr_agent::offsite::sizing::Sizing;
use zdr_agent::offsite::store::{LockMode, ObjectLock, Store, UploadRequest};

/// Each request's method, path and header names (lowercase) with values.
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// Forwards loopback HTTP/1.1 to `upstream`, recording every request head.
fn proxy(upstream: u16, seen: Seen) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || relay(client, upstream, seen));
        }
    });
    port
}

fn relay(mut client: TcpStream, upstream: u16, seen: Seen) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut back = server.try_clone().unwrap();
    let mut to_client = client.try_clone().unwrap();
    std::thread::spawn(move || std::io::copy(&mut back, &mut to_client));
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        // One request head, byte by byte up to the blank line.
        buf.clear();
        while !buf.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let mut lines = head.split("\r\n");
        let request = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: u64 = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let chunked = headers.iter().any(|(k, _)| k == "transfer-encoding");
        seen.lock().unwrap().push((request, headers));
        if chunked || server.write_all(&buf).is_err() {
            return;
        }
        let mut body = (&mut client).take(length);
        if std::io::copy(&mut body, &mut server).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_strict_no_checksum_headers_and_content_md5_on_every_put() {
    let weed = Seaweed::start();
    weed.bucket("offsite-b2", true).await;
    let seen: Seen = Arc::default();
    let port = proxy(weed.s3_port, seen.clone());
    let mut cfg = weed.config("offsite-b2");
    cfg.endpoint = format!("http://127.0.0.1:{port}");
    let store = Store::new(&cfg);
    assert!(store.check(true).await.unwrap());

    let signer = ManifestSigner::new("agent-b2", SigningKey::generate(&mut OsRng));
    let mut trusted = TrustedSigners::default();
    trusted.trust("agent-b2", signer.verifying_key());
    let recovery = StaticSecret::random_from_rng(OsRng);
    let bytes: Vec<u8> = (0..(13u32 << 20))
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    // 6 MiB segments in 5 MiB parts: PUTs and multipart parts both.
    let sizing = Sizing::fixed(6 << 20, 5 << 20, 2).unwrap();
    let up = store
        .upload(
            &bytes[..],
            UploadRequest {
                dataset: "tank/b2".into(),
                from_guid: None,
                to_guid: 42,
                to_name: "zdr-42".into(),
                flags: SendFlags::default(),
                parent: None,
                recipients: vec![PublicKey::from(&recovery)],
                lock: Some(ObjectLock {
                    mode: LockMode::Governance,
                    retain_until: chrono::Utc::now().timestamp() + 3_600,
                }),
                storage_class: None,
                sizing,
                now: chrono::Utc::now().timestamp(),
            },
            &signer,
        )
        .await
        .unwrap();
    let chain = store
        .plan_restore("tank/b2", 42, &trusted)
        .await
        .unwrap()
        .chain;
    let mut out = Vec::new();
    store
        .restore_stream(&chain[0], &recovery, 2, &mut out)
        .await
        .unwrap();
    assert_eq!(out, bytes);
    assert_eq!(chain[0], up.manifest);

    let seen = seen.lock().unwrap();
    let puts: Vec<_> = seen.iter().filter(|(r, _)| r.starts_with("PUT ")).collect();
    // 3 segments: 2 multipart (2 parts each), 1 single PUT, plus the manifest.
    assert_eq!(puts.len(), 2 * 2 + 1 + 1, "{puts:#?}");
    for (request, headers) in seen.iter() {
        let checksums: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-amz-checksum") || k == "x-amz-sdk-checksum-algorithm")
            .collect();
        assert!(checksums.is_empty(), "{request} sent {checksums:?}");
        if request.starts_with("PUT ") {
            assert!(
                headers.iter().any(|(k, _)| k == "content-md5"),
                "{request} has no Content-MD5: {headers:?}"
            );
        }
    }
}
