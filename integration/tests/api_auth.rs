//! The HTTP API's bearer token (issue 17, item 6): reads stay open; a
//! command, a restore or any other mutation without the token, or with a
//! wrong one, is refused (401) and nothing happens; with it, it works. A
//! coordinator without a token file refuses every mutation (403), and one
//! whose token file others can read does not start.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
classes:
  slow:
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/**"
    class: slow
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db"],
};

const SNAPSHOT: &str = r#"{"snapshot_now":{}}"#;
const COMMAND: &str = "/api/v1/nodes/node-a1/commands";
const RESTORE: &str = r#"{"source":"node-a1:tank/db","to":"node-a1:tank/restored"}"#;
const WAIT: Duration = Duration::from_secs(60);

fn snapshots(a: &Agent) -> usize {
    on_disk(a, "tank/db").map(|s| s.len()).unwrap_or(0)
}

async fn request(
    c: &Coordinator,
    method: &str,
    path: &str,
    body: &str,
    auth: Option<&str>,
) -> (u16, String) {
    http_request_as(c.http, method, path, body, auth)
        .await
        .expect("the coordinator answers")
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("not an API error: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_need_the_token_and_reads_stay_open() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let a1 = f.agent(&A1);
    // The 1 h tier takes one snapshot at start, then none for an hour.
    wait_for("node-a1's first snapshot", WAIT, || async {
        let fleet = coord.fleet().await?;
        let online = node_in(&fleet, "node-a1")?["online"] == true;
        (online && snapshots(&a1) == 1).then_some(())
    })
    .await;

    for (auth, why) in [
        (None, "needs `Authorization: Bearer <token>`"),
        (
            Some("Bearer not-the-token-0123456789"),
            "not this coordinator's API token",
        ),
        (Some("Basic bm9kZTpwYXNz"), "is not `Bearer <token>`"),
    ] {
        let (code, body) = request(&coord, "POST", COMMAND, SNAPSHOT, auth).await;
        assert_eq!(code, 401, "{auth:?}: {body}");
        assert!(error_of(&body).contains(why), "{auth:?}: {body}");
        let (code, body) = request(&coord, "POST", "/api/v1/restores", RESTORE, auth).await;
        assert_eq!(code, 401, "{auth:?}: {body}");
    }
    // Any other method too, on any route.
    let (code, _) = request(&coord, "DELETE", "/api/v1/restores", "", None).await;
    assert_eq!(code, 401);

    // Nothing happened: no command reached the agent, no restore started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(snapshots(&a1), 1);
    assert!(!a1.proc.output().contains("command accepted"));
    let (code, body) = request(&coord, "GET", "/api/v1/restores", "", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["restores"],
        serde_json::json!([])
    );

    // Reads stay open.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/fleet",
        "/api/v1/jobs",
    ] {
        let (code, body) = request(&coord, "GET", path, "", None).await;
        assert_eq!(code, 200, "GET {path}: {body}");
    }

    // With the token (the harness sends it), the command runs.
    let (code, body) = coord.post(COMMAND, SNAPSHOT).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(snapshots(&a1), 2);
    assert!(coord.proc.output().contains("HTTP request refused"));

    // The CLI: refused without --token-file and told how; with it, the
    // request reaches the API (which refuses the restore for its own reason).
    let url = format!("http://127.0.0.1:{}", coord.http);
    let zdr = |token: Option<&std::path::Path>| {
        let mut cmd = Command::new(bin_dir().join("zdr"));
        cmd.args([
            "--coordinator",
            &url,
            "restore",
            "node-a1:tank/nope",
            "--to",
            "node-a1:tank/r",
        ])
        .env_remove("ZDR_COORDINATOR")
        .env_remove("ZDR_TOKEN_FILE");
        if let Some(t) = token {
            cmd.arg("--token-file").arg(t);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = zdr(None);
    assert!(
        err.contains("answered 401") && err.contains("--token-file"),
        "{err}"
    );
    let err = zdr(Some(&coord.token_file));
    // Not "401" alone: the URL's port may contain those digits.
    assert!(
        err.contains("answered 4") && !err.contains("answered 401"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_file_every_mutation_is_refused_and_says_how_to_configure_one() {
    let f = Fleet::start(POLICY, None).await;
    let coord = f.coordinator_with_token_file("c1", None);
    coord.wait_ready().await;
    // Even with a bearer token: there is none to compare it with.
    let (code, body) = coord.post(COMMAND, SNAPSHOT).await.unwrap();
    assert_eq!(code, 403, "{body}");
    let e = error_of(&body);
    assert!(
        e.contains("--api-token-file") && e.contains("ZDR_TOKEN_FILE"),
        "{e}"
    );
    let (code, _) = request(&coord, "GET", "/api/v1/fleet", "", None).await;
    assert_eq!(code, 200);
    assert!(coord.proc.output().contains("no --api-token-file"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_others_can_read_stops_the_coordinator_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fleet::start(POLICY, None).await;
    let file = f.path().join("open.token");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut coord = f.coordinator_with_token_file("c1", Some(&file));
    wait_for("the coordinator to refuse to start", WAIT, || {
        let running = coord.proc.running();
        async move { (!running).then_some(()) }
    })
    .await;
    let log = coord.proc.output();
    let shown = file.display().to_string();
    assert!(
        log.contains(&shown) && log.contains("0644") && log.contains(&format!("chmod 600 {shown}")),
        "{log}"
    );

    std::fs::write(&file, "\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut coord = f.coordinator_with_token_file("c2", Some(&file));
    wait_for("the coordinator to refuse an empty token", WAIT, || {
        let running = coord.proc.running();
        async move { (!running).then_some(()) }
    })
    .await;
    assert!(
        coord.proc.output().contains("is empty"),
        "{}",
        coord.proc.output()
    );
}
