//! Test harness: a real nats-server on a free loopback port, and the real
//! `zdr-coordinator` and `zdr-agent` binaries as child processes. Everything is
//! killed on drop; every wait is bounded.

pub mod fuzz;
pub mod trials;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The repository's root (shipped files such as `ops/` are read from there).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Builds the two binaries once per test process and returns their directory.
/// `ZDR_BIN`, when set, names a directory of prebuilt binaries instead: the
/// VM lane runs a test binary in a guest that should not start cargo.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("ZDR_BIN") {
            return PathBuf::from(dir);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "zdr-agent",
                "-p",
                "zdr-coordinator",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the zdr binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        target.join("debug")
    })
}

/// A child process killed on drop, with its output in a log file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        // Appended: a restarted process keeps its predecessor's log above its own.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Interrupts it (SIGINT) and waits up to 10 s for a clean exit.
    pub fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// Sends SIGTERM, as systemd does to stop a service, and waits up to
    /// `within` for the exit: its status (`None` if it did not exit in
    /// time, then it is killed) and how long it took.
    pub fn terminate(&mut self, within: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        (None, start.elapsed())
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn nats_server_bin() -> PathBuf {
    std::env::var("ZDR_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("nats-server"))
}

/// A real nats-server with JetStream, on loopback only; or a cluster of
/// them (nats.rs' test-server style: loopback ports, routes to every peer,
/// each server's store in the test's directory).
pub struct Nats {
    pub dir: PathBuf,
    /// With authorization: the directory `zdr-coordinator bus-auth` wrote
    /// (`auth.conf` and one nkey seed per identity).
    pub auth: Option<PathBuf>,
    servers: Vec<NatsServer>,
}

/// One server of [`Nats`].
struct NatsServer {
    port: u16,
    /// The cluster (route) port; unused by a single server.
    cluster_port: u16,
    proc: Option<Proc>,
}

/// Who a test connects to the bus as.
#[derive(Debug, Clone, Copy)]
pub enum BusUser<'a> {
    Agent(&'a str),
    Coordinator,
    /// The operator, with every right.
    Admin,
    Anonymous,
}

impl Nats {
    /// Open to anyone on loopback.
    pub async fn start(dir: &Path) -> Nats {
        Self::start_with(dir, None).await
    }

    /// With the authorization in `auth` (see [`Nats::auth`]), or open.
    pub async fn start_with(dir: &Path, auth: Option<PathBuf>) -> Nats {
        Self::start_cluster(dir, auth, 1).await
    }

    /// `n` servers; more than one form a JetStream cluster, and this returns
    /// once it has a meta leader (streams can be created).
    pub async fn start_cluster(dir: &Path, auth: Option<PathBuf>, n: usize) -> Nats {
        assert!(n >= 1, "a bus needs a server");
        let mut nats = Nats {
            dir: dir.to_path_buf(),
            auth,
            servers: (0..n)
                .map(|_| NatsServer {
                    port: free_port(),
                    cluster_port: free_port(),
                    proc: None,
                })
                .collect(),
        };
        nats.restart().await;
        nats
    }

    /// How many servers (the replicas the coordinator is told to keep).
    pub fn size(&self) -> usize {
        self.servers.len()
    }

    /// The client port of server `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].port
    }

    /// The seed file of `who`, when the server has authorization.
    pub fn seed_file(&self, who: BusUser) -> Option<PathBuf> {
        let dir = self.auth.as_ref()?;
        match who {
            BusUser::Agent(node) => Some(dir.join(format!("agent-{node}.nk"))),
            BusUser::Coordinator => Some(dir.join("coordinator.nk")),
            BusUser::Admin => Some(dir.join("admin.nk")),
            BusUser::Anonymous => None,
        }
    }

    /// Connects as `who`, with that identity's inbox prefix; the receiver
    /// gets the errors the server sends, such as permission violations.
    pub async fn connect_as(
        &self,
        who: BusUser<'_>,
    ) -> Result<
        (
            async_nats::Client,
            tokio::sync::mpsc::UnboundedReceiver<String>,
        ),
        async_nats::ConnectError,
    > {
        self.connect_to(self.urls(), who).await
    }

    async fn connect_to(
        &self,
        urls: Vec<String>,
        who: BusUser<'_>,
    ) -> Result<
        (
            async_nats::Client,
            tokio::sync::mpsc::UnboundedReceiver<String>,
        ),
        async_nats::ConnectError,
    > {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // A cluster's client fails over to the other servers.
        let reconnects = (self.servers.len() == 1).then_some(1);
        let mut options = async_nats::ConnectOptions::new()
            .max_reconnects(reconnects)
            .event_callback(move |ev| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = ev {
                        let _ = tx.send(e.to_string());
                    }
                }
            });
        options = match who {
            BusUser::Agent(node) => {
                options.custom_inbox_prefix(zdr_common::bus_auth::agent_inbox(node))
            }
            BusUser::Coordinator => {
                options.custom_inbox_prefix(zdr_common::bus_auth::COORDINATOR_INBOX)
            }
            BusUser::Admin | BusUser::Anonymous => options,
        };
        if let Some(file) = self.seed_file(who) {
            let seed = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            options = options.nkey(seed.trim().to_string());
        }
        let client = options.connect(urls).await?;
        Ok((client, rx))
    }

    /// Every server's URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect()
    }

    /// Every server's URL, separated by commas (`--nats-url`, `nats_url`).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Stops every server.
    pub fn stop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill_server(i);
        }
    }

    /// Kills server `i` (SIGKILL: no lame-duck mode, no goodbye to its peers).
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].proc.take() {
            p.kill();
        }
    }

    /// Whether server `i` runs.
    pub fn server_running(&mut self, i: usize) -> bool {
        self.servers[i].proc.as_mut().is_some_and(Proc::running)
    }

    /// Starts server `i` again on its ports and store, and waits until it
    /// accepts connections.
    pub async fn start_server(&mut self, i: usize) {
        self.kill_server(i);
        let clustered = self.servers.len() > 1;
        let mut cmd = Command::new(nats_server_bin());
        if let Some(dir) = &self.auth {
            cmd.arg("-c").arg(dir.join("auth.conf"));
        }
        let (store, log) = if clustered {
            (
                self.dir.join(format!("nats-{i}")).join("jetstream"),
                self.dir.join(format!("nats-server-{i}.log")),
            )
        } else {
            (self.dir.join("jetstream"), self.dir.join("nats-server.log"))
        };
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.servers[i].port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(store);
        if clustered {
            let routes: Vec<String> = self
                .servers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| format!("nats://127.0.0.1:{}", s.cluster_port))
                .collect();
            cmd.args([
                "--server_name",
                &format!("zdr-nats-{i}"),
                "--cluster_name",
                "zdr-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.servers[i].cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        self.servers[i].proc = Some(Proc::spawn(cmd, log));
        let url = format!("nats://127.0.0.1:{}", self.servers[i].port);
        // Generous: a restarted cluster member recovers its JetStream store
        // first, and CI runs several clusters at once on two cores.
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        while self
            .connect_to(vec![url.clone()], BusUser::Admin)
            .await
            .is_err()
        {
            let proc = self.servers[i].proc.as_mut().expect("spawned above");
            // One that exited (its port taken meanwhile, say) will not come up.
            if !proc.running() || start.elapsed() > timeout {
                panic!(
                    "nats-server {i} did not accept connections on {url} within {timeout:?} \
                     (running: {}); the end of its log:\n{}",
                    proc.running(),
                    log_tail(&proc.output(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts every server again on the same ports and stores; with a
    /// cluster, returns once JetStream has a meta leader.
    pub async fn restart(&mut self) {
        self.stop();
        // A member's client port opens before its routes are up.
        for i in 0..self.servers.len() {
            self.start_server(i).await;
        }
        self.wait_meta_leader().await;
    }

    /// Waits until a cluster has elected its meta leader and every server
    /// has joined: a stream with one replica per server can be placed.
    pub async fn wait_meta_leader(&self) {
        let n = self.servers.len();
        if n == 1 {
            return;
        }
        let client = self.client().await;
        let js = async_nats::jetstream::new(client);
        wait_for(
            "the JetStream cluster's meta leader and all its servers",
            Duration::from_secs(60),
            || async {
                let probe = async_nats::jetstream::stream::Config {
                    name: "ZDR_HARNESS_PROBE".into(),
                    subjects: vec!["zdr.harness.probe".into()],
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    num_replicas: n,
                    ..Default::default()
                };
                js.create_stream(probe).await.ok()?;
                js.delete_stream("ZDR_HARNESS_PROBE").await.ok()
            },
        )
        .await;
    }

    /// A client with every right: the operator's when the server has authorization.
    pub async fn client(&self) -> async_nats::Client {
        self.connect_as(BusUser::Admin)
            .await
            .expect("connect to test nats-server")
            .0
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A signing key written where the coordinator reads it; the test keeps the
/// key too so it can sign (and forge) commands itself.
pub struct Keys {
    pub key: ed25519_dalek::SigningKey,
    pub file: PathBuf,
    pub public_b64: String,
    /// The key id (`--key-id`, and the agents' `trusted_keys` entry).
    pub kid: String,
}

impl Keys {
    /// The fleet's key, id `coordinator`, in `coordinator.key`.
    pub fn create(dir: &Path) -> Keys {
        Self::create_named(dir, "coordinator")
    }

    /// Another key, in `<kid>.key` (a key rotation's new key).
    pub fn create_named(dir: &Path, kid: &str) -> Keys {
        let key = zdr_common::envelope::generate_key();
        let file = dir.join(format!("{kid}.key"));
        std::fs::write(&file, zdr_common::envelope::key_to_b64(&key.to_bytes())).unwrap();
        let public_b64 = zdr_common::envelope::key_to_b64(key.verifying_key().as_bytes());
        Keys {
            key,
            file,
            public_b64,
            kid: kid.to_string(),
        }
    }
}

pub struct Coordinator {
    pub proc: Proc,
    pub http: u16,
    /// The API token file (`--api-token-file`), one per fleet directory.
    pub token_file: PathBuf,
    token: String,
}

/// The fleet's API token, written (mode 0600) on first use.
pub fn api_token_file(dir: &Path) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("api.token");
    if !file.exists() {
        let token =
            zdr_common::envelope::key_to_b64(&zdr_common::envelope::generate_key().to_bytes());
        std::fs::write(&file, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    (file, token)
}

impl Coordinator {
    pub fn start(
        dir: &Path,
        nats: &Nats,
        policy: &Path,
        tasks: Option<&Path>,
        keys: &Keys,
        instance: &str,
    ) -> Coordinator {
        let (token_file, _) = api_token_file(dir);
        Self::start_with(
            dir,
            nats,
            policy,
            tasks,
            keys,
            instance,
            Some(&token_file),
            &[],
        )
    }

    /// With this `--api-token-file`, or none, and `extra` flags after the usual ones.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        dir: &Path,
        nats: &Nats,
        policy: &Path,
        tasks: Option<&Path>,
        keys: &Keys,
        instance: &str,
        token_file: Option<&Path>,
        extra: &[std::ffi::OsString],
    ) -> Coordinator {
        let http = free_port();
        let (fleet_token_file, token) = api_token_file(dir);
        let mut cmd = Command::new(bin_dir().join("zdr-coordinator"));
        cmd.args([
            "run",
            "--nats-url",
            &nats.url(),
            "--http",
            &format!("127.0.0.1:{http}"),
        ])
        .arg("--policy")
        .arg(policy)
        .arg("--key-file")
        .arg(&keys.file)
        .arg("--key-id")
        .arg(&keys.kid)
        .args(["--instance", instance, "--offline-after-secs", "5"]);
        // Tests lead sooner with a 3 s lease; ops/bench-failover.sh measures
        // the product's default by setting ZDR_TEST_LEASE_TTL=default.
        match std::env::var("ZDR_TEST_LEASE_TTL").as_deref() {
            Ok("default") => {}
            Ok(secs) => {
                cmd.args(["--lease-ttl-secs", secs]);
            }
            Err(_) => {
                cmd.args(["--lease-ttl-secs", "3"]);
            }
        }
        if let Some(t) = tasks {
            cmd.arg("--tasks").arg(t);
        }
        if let Some(t) = token_file {
            cmd.arg("--api-token-file").arg(t);
        }
        if let Some(seed) = nats.seed_file(BusUser::Coordinator) {
            cmd.arg("--nats-nkey").arg(seed);
        }
        if nats.size() > 1 {
            // Every bucket and stream on every server of the cluster.
            cmd.args(["--nats-replicas", &nats.size().to_string()]);
        }
        cmd.args(extra);
        let proc = Proc::spawn(cmd, dir.join(format!("{instance}.log")));
        Coordinator {
            proc,
            http,
            token_file: fleet_token_file,
            token,
        }
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_request(self.http, "GET", path, "").await
    }

    /// With the API token, as an operator would.
    pub async fn post(&self, path: &str, body: &str) -> Option<(u16, String)> {
        let auth = format!("Bearer {}", self.token);
        http_request_as(self.http, "POST", path, body, Some(&auth)).await
    }

    /// GET `path`: the JSON of a 200 answer; `None` for any other answer,
    /// a body that is not JSON, or no answer.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get(path).await?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    pub async fn fleet(&self) -> Option<serde_json::Value> {
        self.get_json("/api/v1/fleet").await
    }

    pub async fn wait_ready(&self) {
        wait_for("coordinator /readyz", Duration::from_secs(60), || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await;
    }
}

/// A fleet's working directory: a running nats-server, the coordinator's
/// signing key, the policy file and, when given, the tasks file.
/// Coordinators and agents start in it and log there; a failing test prints
/// every process's log, as CI has nothing else to go on.
pub struct Fleet {
    dir: tempfile::TempDir,
    pub nats: Nats,
    pub keys: Keys,
    pub policy: PathBuf,
    pub tasks: Option<PathBuf>,
}

impl Fleet {
    /// With the bus's authorization on: each node of `policy` and the
    /// coordinator connect with their own nkeys, as in production.
    pub async fn start(policy: &str, tasks: Option<&str>) -> Fleet {
        Self::start_with(policy, tasks, true).await
    }

    /// On an open bus (`authorized` false), as the demo ran before.
    pub async fn start_with(policy: &str, tasks: Option<&str>, authorized: bool) -> Fleet {
        Self::start_on(policy, tasks, authorized, 1).await
    }

    /// On a three-server JetStream cluster, with authorization: coordinators
    /// keep every bucket and stream at three replicas, and every process is
    /// given all three servers.
    pub async fn start_cluster(policy: &str, tasks: Option<&str>) -> Fleet {
        Self::start_on(policy, tasks, true, 3).await
    }

    async fn start_on(
        policy: &str,
        tasks: Option<&str>,
        authorized: bool,
        servers: usize,
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policies.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let auth = authorized.then(|| bus_auth(dir.path(), &policy_file));
        let nats = Nats::start_cluster(dir.path(), auth, servers).await;
        let keys = Keys::create(dir.path());
        let tasks = tasks.map(|t| {
            let file = dir.path().join("tasks.yml");
            std::fs::write(&file, t).unwrap();
            file
        });
        Fleet {
            dir,
            nats,
            keys,
            policy: policy_file,
            tasks,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A coordinator on the fleet's policy and tasks files.
    pub fn coordinator(&self, instance: &str) -> Coordinator {
        self.coordinator_signing_with(instance, &self.keys)
    }

    /// The same with this `--api-token-file`, or none.
    pub fn coordinator_with_token_file(&self, instance: &str, file: Option<&Path>) -> Coordinator {
        Coordinator::start_with(
            self.path(),
            &self.nats,
            &self.policy,
            self.tasks.as_deref(),
            &self.keys,
            instance,
            file,
            &[],
        )
    }

    /// The same, signing with `keys` rather than the fleet's key.
    pub fn coordinator_signing_with(&self, instance: &str, keys: &Keys) -> Coordinator {
        Coordinator::start(
            self.path(),
            &self.nats,
            &self.policy,
            self.tasks.as_deref(),
            keys,
            instance,
        )
    }

    /// A coordinator with the fleet's API token and `extra` flags.
    pub fn coordinator_with(&self, instance: &str, extra: &[std::ffi::OsString]) -> Coordinator {
        let (token_file, _) = api_token_file(self.path());
        Coordinator::start_with(
            self.path(),
            &self.nats,
            &self.policy,
            self.tasks.as_deref(),
            &self.keys,
            instance,
            Some(&token_file),
            extra,
        )
    }

    pub fn agent(&self, spec: &AgentSpec) -> Agent {
        self.agent_with(spec, &AgentExtra::default())
    }

    pub fn agent_with(&self, spec: &AgentSpec, extra: &AgentExtra) -> Agent {
        Agent::start(self.path(), &self.nats, &self.keys, spec, extra)
    }
}

/// The bus's nkeys and authorization for the nodes of `policy`, made by
/// `zdr-coordinator bus-auth` as an admin would (with an operator user,
/// which the tests use to act on the bus freely).
pub fn bus_auth(dir: &Path, policy: &Path) -> PathBuf {
    let out = dir.join("bus");
    let status = Command::new(bin_dir().join("zdr-coordinator"))
        .arg("bus-auth")
        .arg("--policy")
        .arg(policy)
        .arg("--dir")
        .arg(&out)
        .arg("--admin")
        .stdout(Stdio::null())
        .status()
        .expect("running zdr-coordinator bus-auth");
    assert!(status.success(), "zdr-coordinator bus-auth failed");
    out
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(self.path());
        }
    }
}

/// The last lines of every `*.log` in `dir`, on stderr.
fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            eprintln!("===== {} (its end)", p.display());
            eprintln!("{}", log_tail(&text, 60));
        }
    }
}

/// The last `n` lines of a log, in order.
fn log_tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One HTTP/1.1 request on loopback; `None` if the server is not up.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u16, String)> {
    http_request_as(port, method, path, body, None).await
}

/// The same with an `Authorization` header.
pub async fn http_request_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub struct AgentSpec<'a> {
    pub node: &'a str,
    pub site: &'a str,
    pub media: &'a str,
    pub datasets: &'a [&'a str],
}

/// Beyond [`AgentSpec`]: more pools, sim settings and the data plane.
#[derive(Default, Clone)]
pub struct AgentExtra {
    /// Pools beside `tank`, each empty: name and size in bytes.
    pub pools: Vec<(String, u64)>,
    /// `[transfer] listen` (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// `[transfer] advertise`: the address senders are told.
    pub advertise: Option<String>,
    /// Bytes each new simulated snapshot holds.
    pub snapshot_bytes: Option<u64>,
    /// Directory with `ca.pem`, `<node>.pem` and `<node>.key` (see [`pki`]).
    pub pki: Option<PathBuf>,
    /// The sim backend's modelled latency per ZFS operation, in milliseconds.
    pub op_latency_ms: Option<u64>,
    /// The sim backend's modelled time for one content hash, in milliseconds.
    pub hash_latency_ms: Option<u64>,
    /// Serve the agent's metrics on this loopback port.
    pub metrics_port: Option<u16>,
    /// `trusted_keys` (key id, public key) instead of the fleet's one key,
    /// as during a key rotation.
    pub trusted: Vec<(String, String)>,
    /// `[offsite] manifest_key` (with segment buffers of 16 MiB over 2
    /// uploads in flight): the agent may upload to buckets.
    pub offsite_key: Option<PathBuf>,
    /// `[offsite] recovery_key`: the agent may restore from buckets.
    pub recovery_key: Option<PathBuf>,
    /// `[offsite] manifest_signers` (node, base64 public key): other nodes'
    /// manifests a restore here believes.
    pub manifest_signers: Vec<(String, String)>,
    /// Reach NATS here instead of the fleet's server (a [`CutProxy`]).
    pub nats_url: Option<String>,
    /// Real ZFS: the "cli" backend on these existing pools, the only ones
    /// the agent manages (agent config `pools`), instead of simulated ones.
    /// Only in the VM lane, which has a ZFS kernel.
    pub zfs_pools: Vec<String>,
    /// `heartbeat_secs` and `tick_secs` (default 1). On real ZFS under
    /// emulation each heartbeat's `zpool list` takes up to a second.
    pub tick_secs: Option<u64>,
}

/// The fleet CA and node certificates, made by `ops/pki.sh` as an admin would.
pub fn pki(dir: &Path, nodes: &[&str]) -> PathBuf {
    let out = dir.join("pki");
    let status = Command::new("bash")
        .arg(workspace_root().join("ops/pki.sh"))
        .arg(&out)
        .args(nodes)
        .status()
        .expect("running ops/pki.sh");
    assert!(status.success(), "ops/pki.sh failed");
    out
}

pub struct Agent {
    pub proc: Proc,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    /// On real ZFS ([`AgentExtra::zfs_pools`]): what is on disk is read with
    /// zfs(8), not from the simulator's file.
    pub real_zfs: bool,
}

impl Agent {
    pub fn write_config(
        dir: &Path,
        nats: &Nats,
        keys: &Keys,
        spec: &AgentSpec,
    ) -> (PathBuf, PathBuf) {
        Self::write_config_with(dir, nats, keys, spec, &AgentExtra::default())
    }

    pub fn write_config_with(
        dir: &Path,
        nats: &Nats,
        keys: &Keys,
        spec: &AgentSpec,
        extra: &AgentExtra,
    ) -> (PathBuf, PathBuf) {
        let state_dir = dir.join(format!("agent-{}", spec.node));
        std::fs::create_dir_all(&state_dir).unwrap();
        let datasets: Vec<String> = spec.datasets.iter().map(|d| format!("{d:?}")).collect();
        let backend = if extra.zfs_pools.is_empty() {
            format!(
                "kind = \"sim\"\npools = [{{ name = \"tank\", size_bytes = 10000000000, datasets = [{datasets}] }}{more_pools}]\n",
                datasets = datasets.join(", "),
                more_pools = extra
                    .pools
                    .iter()
                    .map(|(p, size)| format!(", {{ name = {p:?}, size_bytes = {size} }}"))
                    .collect::<String>(),
            )
        } else {
            "kind = \"cli\"\n".to_string()
        };
        let managed = if extra.zfs_pools.is_empty() {
            String::new()
        } else {
            format!("pools = {:?}\n", extra.zfs_pools)
        };
        let config = format!(
            r#"node = "{node}"
site = "{site}"
media = "{media}"
nats_url = "{url}"
{nkey}{metrics}{managed}state_dir = "{state}"
heartbeat_secs = {tick}
tick_secs = {tick}

[backend]
{backend}{snapshot_bytes}{op_latency_ms}{trusted}{transfer}{offsite}"#,
            tick = extra.tick_secs.unwrap_or(1),
            node = spec.node,
            site = spec.site,
            media = spec.media,
            url = extra.nats_url.clone().unwrap_or_else(|| nats.url()),
            nkey = nats
                .seed_file(BusUser::Agent(spec.node))
                .filter(|f| f.exists())
                .map(|f| format!("nats_nkey = {:?}\n", f.display().to_string()))
                .unwrap_or_default(),
            metrics = extra
                .metrics_port
                .map(|p| format!("metrics_listen = \"127.0.0.1:{p}\"\n"))
                .unwrap_or_default(),
            state = state_dir.display(),
            trusted = if extra.trusted.is_empty() {
                vec![(keys.kid.clone(), keys.public_b64.clone())]
            } else {
                extra.trusted.clone()
            }
            .iter()
            .map(|(kid, key)| format!("\n[[trusted_keys]]\nkid = {kid:?}\npublic_key = {key:?}\n"))
            .collect::<String>(),
            snapshot_bytes = extra
                .snapshot_bytes
                .map(|b| format!("snapshot_bytes = {b}\n"))
                .unwrap_or_default(),
            op_latency_ms = [
                ("op_latency_ms", extra.op_latency_ms),
                ("hash_latency_ms", extra.hash_latency_ms),
            ]
            .iter()
            .filter_map(|(k, v)| v.map(|ms| format!("{k} = {ms}\n")))
            .collect::<String>(),
            transfer = extra
                .pki
                .as_ref()
                .map(|d| {
                    format!(
                        "\n[transfer]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\nlisten = {listen:?}\n{advertise}",
                        ca = d.join("ca.pem").display().to_string(),
                        cert = d.join(format!("{}.pem", spec.node)).display().to_string(),
                        key = d.join(format!("{}.key", spec.node)).display().to_string(),
                        listen = extra.listen.as_deref().unwrap_or("127.0.0.1:0"),
                        advertise = extra
                            .advertise
                            .as_ref()
                            .map(|a| format!("advertise = {a:?}\n"))
                            .unwrap_or_default(),
                    )
                })
                .unwrap_or_default(),
            offsite = extra
                .offsite_key
                .as_ref()
                .map(|k| {
                    format!(
                        "\n[offsite]\nmanifest_key = {:?}\nmemory_bytes = 16777216\nin_flight = 2\n{}{}",
                        k.display().to_string(),
                        extra
                            .recovery_key
                            .as_ref()
                            .map(|r| format!("recovery_key = {:?}\n", r.display().to_string()))
                            .unwrap_or_default(),
                        extra
                            .manifest_signers
                            .iter()
                            .map(|(kid, key)| format!(
                                "[[offsite.manifest_signers]]\nkid = {kid:?}\npublic_key = {key:?}\n"
                            ))
                            .collect::<String>()
                    )
                })
                .unwrap_or_default(),
        );
        let path = dir.join(format!("agent-{}.toml", spec.node));
        std::fs::write(&path, config).unwrap();
        (path, state_dir)
    }

    pub fn start(
        dir: &Path,
        nats: &Nats,
        keys: &Keys,
        spec: &AgentSpec,
        extra: &AgentExtra,
    ) -> Agent {
        let (config, state_dir) = Self::write_config_with(dir, nats, keys, spec, extra);
        let mut cmd = Command::new(bin_dir().join("zdr-agent"));
        cmd.arg("--config").arg(&config);
        let proc = Proc::spawn(cmd, dir.join(format!("agent-{}.log", spec.node)));
        Agent {
            proc,
            state_dir,
            config,
            real_zfs: !extra.zfs_pools.is_empty(),
        }
    }

    /// Audit log lines, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state_dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// One node of `/api/v1/fleet`.
pub fn node_in<'a>(fleet: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    fleet["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
}

/// Snapshot names of `dataset` on `node` as the coordinator's API shows them.
pub fn snapshots_in(fleet: &serde_json::Value, node: &str, dataset: &str) -> Option<Vec<String>> {
    let d = node_in(fleet, node)?["datasets"]
        .as_array()?
        .iter()
        .find(|d| d["dataset"] == dataset)?;
    Some(
        d["snapshots"]
            .as_array()?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
    )
}

/// One snapshot as an agent's pools hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    pub name: String,
    pub guid: u64,
    pub holds: Vec<String>,
    /// ZFS `creation`, Unix seconds; `None` when the listing lacks it
    /// (the caller falls back on the name's time).
    pub creation: Option<i64>,
}

/// `dataset`'s snapshots in an agent's pools, oldest first, read once;
/// `None` when there is no such dataset.
pub fn listing(agent: &Agent, dataset: &str) -> Option<Vec<OnDisk>> {
    if agent.real_zfs {
        return real_zfs::snapshots(dataset);
    }
    let v = sim_pools(agent)?;
    let ds = v["datasets"].get(dataset)?;
    Some(
        ds["snapshots"]
            .as_array()?
            .iter()
            .map(|s| OnDisk {
                name: s["name"].as_str().unwrap_or("").to_string(),
                guid: s["guid"].as_u64().unwrap_or(0),
                holds: s["holds"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                creation: s["creation"].as_i64(),
            })
            .collect(),
    )
}

/// `dataset` in an agent's pools: snapshot name, GUID and hold tags, oldest
/// first; `None` when there is no such dataset.
pub fn on_disk(agent: &Agent, dataset: &str) -> Option<Vec<(String, u64, Vec<String>)>> {
    Some(
        listing(agent, dataset)?
            .into_iter()
            .map(|s| (s.name, s.guid, s.holds))
            .collect(),
    )
}

/// The bookmarks of `dataset` in an agent's pools: name and GUID.
pub fn bookmarks_on_disk(agent: &Agent, dataset: &str) -> Vec<(String, u64)> {
    if agent.real_zfs {
        return real_zfs::bookmarks(dataset);
    }
    let v = sim_pools(agent).unwrap_or_default();
    v["datasets"][dataset]["bookmarks"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(n, b)| (n.clone(), b["guid"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `dataset` in an agent's simulated pools has a saved partial receive.
pub fn partial_on_disk(agent: &Agent, dataset: &str) -> bool {
    sim_pools(agent).is_some_and(|v| !v["datasets"][dataset]["partial"].is_null())
}

/// The simulated backend's pools file of an agent, as JSON.
fn sim_pools(agent: &Agent) -> Option<Value> {
    let raw = std::fs::read(agent.state_dir.join("sim-pools.json")).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// What is on real pools, read with zfs(8) as an admin would (the VM lane).
pub mod real_zfs {
    use std::process::Command;

    /// zfs(8) with `args`; its output, or `None` when it fails (no dataset).
    fn zfs(args: &[&str]) -> Option<String> {
        let out = Command::new("zfs").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The snapshots of `dataset`, oldest first.
    pub fn snapshots(dataset: &str) -> Option<Vec<super::OnDisk>> {
        zfs(&["list", "-H", "-o", "name", dataset])?;
        let list = zfs(&[
            "list",
            "-Hp",
            "-t",
            "snapshot",
            "-o",
            "name,guid,userrefs,creation",
            "-s",
            "createtxg",
            "-d",
            "1",
            dataset,
        ])?;
        Some(
            list.lines()
                .filter_map(|l| {
                    let mut f = l.split('\t');
                    let (full, guid, refs) = (f.next()?, f.next()?, f.next()?);
                    let creation = f.next().and_then(|c| c.trim().parse().ok());
                    let name = full.split_once('@')?.1.to_string();
                    // One `zfs holds` per held snapshot only: a process start
                    // costs up to a second under emulation.
                    let holds = if refs.trim() == "0" {
                        Vec::new()
                    } else {
                        zfs(&["holds", "-H", full])
                            .unwrap_or_default()
                            .lines()
                            .filter_map(|h| h.split('\t').nth(1).map(String::from))
                            .collect()
                    };
                    Some(super::OnDisk {
                        name,
                        guid: guid.trim().parse().ok()?,
                        holds,
                        creation,
                    })
                })
                .collect(),
        )
    }

    /// The bookmarks of `dataset`: name and GUID.
    pub fn bookmarks(dataset: &str) -> Vec<(String, u64)> {
        zfs(&[
            "list",
            "-Hp",
            "-t",
            "bookmark",
            "-o",
            "name,guid",
            "-d",
            "1",
            dataset,
        ])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (full, guid) = l.split_once('\t')?;
            Some((
                full.split_once('#')?.1.to_string(),
                guid.trim().parse().ok()?,
            ))
        })
        .collect()
    }
}

/// The coordinator's jobs (`/api/v1/jobs`); empty while it does not answer.
pub async fn jobs(c: &Coordinator) -> Vec<Value> {
    let Some((200, body)) = c.get("/api/v1/jobs").await else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["jobs"].as_array().cloned())
        .unwrap_or_default()
}

/// A job's history lines.
pub fn history(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The job of `task` from `source` among `jobs`.
pub fn job_for<'a>(jobs: &'a [Value], task: &str, source: &str) -> Option<&'a Value> {
    jobs.iter()
        .find(|j| j["task"] == task && j["source_node"] == source)
}

/// Every snapshot of the copy has the GUID of its source's snapshot of the
/// same name, or of the bookmark the source left when it pruned it; the
/// newest common one is held on both sides.
pub fn assert_faithful(source: &Agent, target: &Agent, dataset: &str, copy: &str, tag: &str) {
    let src = on_disk(source, dataset).expect("source dataset");
    let dst = on_disk(target, copy).expect("target dataset");
    let bookmarks = bookmarks_on_disk(source, dataset);
    let src_guids: BTreeMap<&str, u64> = bookmarks
        .iter()
        .map(|(n, g)| (n.as_str(), *g))
        .chain(src.iter().map(|(n, g, _)| (n.as_str(), *g)))
        .collect();
    for (name, guid, _) in &dst {
        assert_eq!(
            src_guids.get(name.as_str()),
            Some(guid),
            "{copy}@{name} has GUID {guid}, which neither the source's {dataset}@{name} nor its #{name} has"
        );
    }
    let (newest, _, held) = dst.last().expect("a snapshot on the target");
    assert!(
        held.iter().any(|t| t == tag),
        "{copy}@{newest} is not held by {tag}: {held:?}"
    );
    let on_source = src
        .iter()
        .find(|(n, _, _)| n == newest)
        .expect("newest common on source");
    assert!(
        on_source.2.iter().any(|t| t == tag),
        "{dataset}@{newest} on the source is not held by {tag}: {:?}",
        on_source.2
    );
}

/// A TCP relay on loopback that flips one bit of the first connection's
/// client-to-server bytes at `offset`, as a faulty link would; later
/// connections pass untouched.
pub struct FlipProxy {
    pub port: u16,
    flipped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FlipProxy {
    pub async fn start(upstream: u16, offset: u64) -> FlipProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let flipped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flipped.clone();
        let accept = tokio::spawn(async move {
            let mut flip_at = Some(offset);
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue; // the client sees its connection closed
                };
                tokio::spawn(relay(client, server, flip_at.take(), f.clone()));
            }
        });
        FlipProxy {
            port,
            flipped,
            accept,
        }
    }

    pub fn flipped(&self) -> bool {
        self.flipped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FlipProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    flip_at: Option<u64>,
    flipped: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(o) = flip_at.filter(|o| (at..at + n as u64).contains(o)) {
            buf[(o - at) as usize] ^= 0x01;
            flipped.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        at += n as u64;
        if sw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = sw.shutdown().await;
    let _ = back.await;
}

/// A TCP relay on loopback that can cut a site off: [`CutProxy::cut`] drops
/// every connection through it and refuses new ones until
/// [`CutProxy::heal`], as a failed uplink would.
pub struct CutProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: u16) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (cut.clone(), relays.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let relay = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut relays = r.lock().unwrap();
                relays.retain(|h| !h.is_finished());
                relays.push(relay);
            }
        });
        CutProxy {
            port,
            cut,
            relays,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

/// A webhook receiver on loopback: it answers every POST with 200 and keeps
/// the JSON bodies, in order. Dropping it closes the port.
pub struct WebhookSink {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookSink {
    pub async fn start(port: u16) -> WebhookSink {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let keep = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let keep = keep.clone();
                tokio::spawn(async move {
                    if let Some(body) = read_request_body(&mut s).await {
                        if let Ok(v) = serde_json::from_slice(&body) {
                            keep.lock().unwrap().push(v);
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        WebhookSink {
            port,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of one HTTP/1.1 request with a Content-Length, bounded in size and time.
async fn read_request_body(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Some(buf[end + 4..end + 4 + len].to_vec());
                }
            }
            if buf.len() > 1 << 20 {
                return None;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}
