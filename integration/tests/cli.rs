//! The operator CLI `zdr` end to end: the built binary against a real
//! coordinator (real nats-server, real agents on the simulated backend).

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

const POLICY: &str = r#"version: 1
sites:
  site-a: {}
  site-b: {}
nodes:
  node-a1: { site: site-a, media: ssd }
  node-b1: { site: site-b, media: hdd }
classes:
  fast:
    tiers: { 2s: 10 }
    rpo: 1m
    rto: 1h
    immutable_for: 0s
datasets:
  - match: "tank/scratch"
    exclude: true
  - match: "tank/**"
    class: fast
"#;

/// One copy, made at once and then left alone for an hour, so that the
/// job's state stays `done` while the test reads it.
const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 1h }
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db", "tank/scratch"],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "hdd",
    datasets: &["tank/other"],
};

/// Runs the built `zdr` with `args`, never with the caller's ZDR_COORDINATOR,
/// and with RUST_BACKTRACE=1, which must not turn errors into backtraces.
fn zdr(args: &[&str]) -> Output {
    zdr_env(args, None)
}

fn zdr_env(args: &[&str], coordinator_env: Option<&str>) -> Output {
    let mut cmd = Command::new(bin_dir().join("zdr"));
    cmd.args(args)
        .env_remove("ZDR_COORDINATOR")
        .env("RUST_BACKTRACE", "1");
    if let Some(url) = coordinator_env {
        cmd.env("ZDR_COORDINATOR", url);
    }
    cmd.output().expect("running zdr")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stdout of a run that must succeed.
fn ok(args: &[&str]) -> String {
    let out = zdr(args);
    assert!(
        out.status.success(),
        "zdr {args:?} failed ({}): {}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn an_unreachable_coordinator_says_what_to_check_and_fails() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for out in [
        zdr(&["--coordinator", &url, "status"]),
        zdr_env(&["jobs"], Some(&url)),
    ] {
        assert_eq!(out.status.code(), Some(1), "exit {}", out.status);
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.starts_with("zdr: cannot reach the coordinator at "),
            "{err}"
        );
        assert!(!err.contains("backtrace"), "{err}");
        for want in [
            url.as_str(),
            "cannot reach the coordinator",
            "--coordinator",
            "ZDR_COORDINATOR",
            "systemctl status zdr-coordinator",
        ] {
            assert!(err.contains(want), "{want:?} missing from: {err}");
        }
    }
}

#[test]
fn bad_node_dataset_arguments_are_refused_before_any_request() {
    // An unreachable coordinator: had a request been tried, the error would say so.
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = zdr(&["--coordinator", &url, "restore-points", "tank/db"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("write NODE:DATASET"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");

    let out = zdr(&[
        "--coordinator",
        &url,
        "restore",
        "node-a1:tank/db",
        "--at",
        "2026-12-05 07:30",
        "--to",
        "node-a1:tank/r",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("RFC 3339 with a zone"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_jobs_and_pairings_against_a_real_fleet() {
    let f = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(f.path(), &["node-a1", "node-b1"]);
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let extra = || AgentExtra {
        pools: vec![("backup".into(), 10_000_000_000)],
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let _a1 = f.agent_with(&A1, &extra());
    let _b1 = f.agent_with(&B1, &extra());
    wait_for(
        "the offsite copy of tank/db",
        Duration::from_secs(120),
        || async {
            let all = jobs(&coord).await;
            (job_for(&all, "offsite", "node-a1")?["state"] == "done").then_some(())
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{}", coord.http);

    let status = ok(&["--coordinator", &url, "status"]);
    assert!(
        status.starts_with("coordinator: leader, epoch "),
        "{status}"
    );
    assert!(status.contains("nodes: 2 of 2 online\n"), "{status}");
    let row = |node: &str, ds: &str| -> Vec<String> {
        status
            .lines()
            .find(|l| l.starts_with(node) && l.split_whitespace().nth(1) == Some(ds))
            .unwrap_or_else(|| panic!("no row for {node} {ds}: {status}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let db = row("node-a1", "tank/db");
    assert_eq!(db[2], "fast", "{status}");
    assert!(db[3].starts_with("zdr_"), "{status}");
    assert_eq!(db.last().unwrap(), "ok", "{status}");
    assert_eq!(
        row("node-a1", "tank/scratch").last().unwrap(),
        "unprotected"
    );

    let v: Value = serde_json::from_str(&ok(&["--coordinator", &url, "--json", "status"]))
        .expect("--json status is JSON");
    assert_eq!(v["leader"], true);
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node-a1", "node-b1"]);

    let jobs_out = ok(&["--coordinator", &url, "jobs"]);
    let line = jobs_out
        .lines()
        .find(|l| l.starts_with("offsite "))
        .unwrap_or_else(|| panic!("no offsite job: {jobs_out}"));
    assert!(
        line.contains("node-a1:tank/db")
            && line.contains("node-b1:backup/node-a1/tank/db")
            && line.split_whitespace().nth(3) == Some("done"),
        "{jobs_out}"
    );
    // The ZDR_COORDINATOR variable is honoured, and --json gives the API's body.
    let out = zdr_env(&["jobs", "--json"], Some(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json jobs is JSON");
    let j = job_for(v["jobs"].as_array().unwrap(), "offsite", "node-a1").unwrap();
    assert_eq!(j["target_dataset"], "backup/node-a1/tank/db");

    let pairings = ok(&["--coordinator", &url, "pairings"]);
    assert!(
        pairings
            .lines()
            .any(|l| l.starts_with("offsite  node-a1:tank/db  node-b1:backup/node-a1/tank/db")),
        "{pairings}"
    );

    // A standby says what it is.
    let c2 = f.coordinator("c2");
    let standby = format!("http://127.0.0.1:{}", c2.http);
    let out = wait_for("the standby's HTTP API", Duration::from_secs(30), || {
        let standby = standby.clone();
        async move {
            let out = zdr(&["--coordinator", &standby, "status"]);
            out.status.success().then_some(text(&out.stdout))
        }
    })
    .await;
    assert!(out.starts_with("coordinator: STANDBY"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_points_restore_and_restores_against_a_real_fleet() {
    let f = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(f.path(), &["node-a1", "node-b1"]);
    let coord = f.coordinator("c1");
    coord.wait_ready().await;
    let extra = || AgentExtra {
        pools: vec![("backup".into(), 10_000_000_000)],
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let a1 = f.agent_with(&A1, &extra());
    let _b1 = f.agent_with(&B1, &extra());
    let url = format!("http://127.0.0.1:{}", coord.http);
    // The replica has snapshots once the offsite copy landed.
    let points = wait_for("a replica with snapshots", Duration::from_secs(120), || {
        let url = url.clone();
        async move {
            let out = zdr(&[
                "--coordinator",
                &url,
                "--json",
                "restore-points",
                "node-a1:tank/db",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let replica = v["copies"]
                .as_array()?
                .iter()
                .find(|c| c["copy"] == "replica")?
                .clone();
            (!replica["snapshots"].as_array()?.is_empty()).then_some(replica)
        }
    })
    .await;
    assert_eq!(points["node"], "node-b1");
    let human = ok(&["--coordinator", &url, "restore-points", "node-a1:tank/db"]);
    assert!(human.starts_with("node-a1:tank/db: 2 copies\n"), "{human}");
    assert!(
        human.contains("replica node-b1:backup/node-a1/tank/db (site site-b, hdd), online"),
        "{human}"
    );

    let snap = points["snapshots"][0]["name"].as_str().unwrap().to_string();
    let token = coord.token_file.display().to_string();
    let out = ok(&[
        "--coordinator",
        &url,
        "--token-file",
        &token,
        "restore",
        "node-a1:tank/db",
        "--snapshot",
        &snap,
        "--from",
        "node-b1",
        "--to",
        "node-a1:tank/restored",
    ]);
    assert!(out.starts_with("restore "), "{out}");
    assert!(
        out.contains(&format!(
            "restored node-a1:tank/restored from node-b1:backup/node-a1/tank/db@{snap}: "
        )),
        "{out}"
    );
    assert!(on_disk(&a1, "tank/restored").is_some_and(|s| s.iter().any(|(n, _, _)| *n == snap)));

    // An existing destination without --replace: the API's 409, non-zero exit.
    let again = zdr(&[
        "--coordinator",
        &url,
        "--token-file",
        &token,
        "restore",
        "node-a1:tank/db",
        "--to",
        "node-a1:tank/restored",
    ]);
    assert!(!again.status.success());
    let err = text(&again.stderr);
    assert!(err.contains("answered 409"), "{err}");

    let list = ok(&["--coordinator", &url, "restores"]);
    assert!(
        list.lines().nth(1).is_some_and(|l| l.contains(" done ")),
        "{list}"
    );
}
