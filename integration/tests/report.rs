//! The compliance report end to end: a real nats-server, coordinator and two
//! agents (simulated ZFS) at two sites replicating; `GET /api/v1/report` and
//! `zdr report` checked field by field, then the copy's agent is stopped and
//! the copy must fall into breach.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use zdr_integration::*;

/// A 20 s RPO, so that a stopped copy is in breach within the test.
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
    rpo: 20s
    rto: 1h
    immutable_for: 1m
datasets:
  - match: "tank/db"
    class: fast
"#;

const TASKS: &str = r#"version: 1
tasks:
  - name: offsite
    source: { match: "tank/db", nodes: [node-a1] }
    target: { site: other, root: "backup/{node}" }
    schedule: { every: 2s }
"#;

const A1: AgentSpec = AgentSpec {
    node: "node-a1",
    site: "site-a",
    media: "ssd",
    datasets: &["tank/db"],
};
const B1: AgentSpec = AgentSpec {
    node: "node-b1",
    site: "site-b",
    media: "hdd",
    datasets: &[],
};

const COPY: &str = "backup/node-a1/tank/db";

async fn report(c: &Coordinator) -> Option<Value> {
    c.get_json("/api/v1/report").await
}

fn dataset<'a>(r: &'a Value, node: &str, ds: &str) -> Option<&'a Value> {
    r["datasets"]
        .as_array()?
        .iter()
        .find(|d| d["node"] == node && d["dataset"] == ds)
}

fn check<'a>(d: &'a Value, kind: &str) -> &'a Value {
    d["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == kind))
        .unwrap_or_else(|| panic!("no {kind} check in {d:#}"))
}

#[tokio::test]
async fn report_shows_lag_per_copy_and_3_2_1_then_a_stopped_copy_breaches() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let mut coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let extra = |pools: Vec<(String, u64)>| AgentExtra {
        pools,
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let a1 = fleet.agent_with(&A1, &extra(vec![]));
    let mut b1 = fleet.agent_with(&B1, &extra(vec![("backup".into(), 10_000_000_000)]));

    // The copy landed, a job finished, and the copy is within RPO.
    let d = wait_for(
        "the offsite copy within RPO in the report",
        Duration::from_secs(90),
        || async {
            let r = report(&coordinator).await?;
            let d = dataset(&r, "node-a1", "tank/db")?.clone();
            let replica = &d["copies"][1];
            (replica["rpo"] == "ok" && replica["replication"]["last_job"]["state"] == "done")
                .then_some(d)
        },
    )
    .await;
    assert_eq!(d["class"], "fast");
    assert_eq!(d["rpo_secs"], 20);
    assert_eq!(d["rto_secs"], 3600);
    assert_eq!(d["immutable_for_secs"], 60);
    let copies = d["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "production and one replica: {d:#}");
    let (prod, replica) = (&copies[0], &copies[1]);
    assert_eq!(prod["role"], "production");
    assert_eq!(
        (
            &prod["node"],
            &prod["site"],
            &prod["media"],
            &prod["dataset"]
        ),
        (
            &Value::from("node-a1"),
            &Value::from("site-a"),
            &Value::from("ssd"),
            &Value::from("tank/db")
        )
    );
    assert_eq!(prod["online"], true);
    assert!(prod["lag_secs"].as_i64().unwrap() < 15, "{prod:#}");
    assert_eq!(replica["role"], "replica");
    assert_eq!(
        (
            &replica["node"],
            &replica["site"],
            &replica["media"],
            &replica["dataset"]
        ),
        (
            &Value::from("node-b1"),
            &Value::from("site-b"),
            &Value::from("hdd"),
            &Value::from(COPY)
        )
    );
    assert_eq!(replica["online"], true);
    let lag = replica["lag_secs"].as_i64().unwrap();
    assert!((0..15).contains(&lag), "ok means under 75 % of 20 s: {lag}");
    // The newest confirmed snapshot is on both disks with the same GUID.
    let newest = &replica["newest"];
    let guid = newest["guid"].as_u64().unwrap();
    let name = newest["name"].as_str().unwrap();
    for (agent, ds) in [(&a1, "tank/db"), (&b1, COPY)] {
        let snaps = on_disk(agent, ds).unwrap_or_default();
        assert!(
            snaps.iter().any(|(n, g, _)| n == name && *g == guid),
            "{name} with GUID {guid} not on {ds}: {snaps:?}"
        );
    }
    let rep = &replica["replication"];
    assert_eq!(rep["task"], "offsite");
    assert!(rep["pending_snapshots"].as_u64().unwrap() <= 5, "{rep:#}");
    assert!(rep["last_job"]["error"].is_null(), "{rep:#}");
    assert!(rep["last_job"]["last_success_ms"].as_i64().unwrap() > 0);

    // 3-2-1: two copies within RPO, on two media, one offsite, immutable.
    assert_eq!(d["compliant"], false);
    let copies = check(&d, "copies");
    assert_eq!(
        (&copies["pass"], &copies["have"], &copies["want"]),
        (&Value::from(false), &Value::from(2), &Value::from(3))
    );
    assert_eq!(
        copies["reason"],
        "2 copies within RPO (production on node-a1, replica on node-b1); the class asks for 3"
    );
    assert_eq!(check(&d, "media")["pass"], true);
    assert_eq!(check(&d, "offsite")["pass"], true);
    assert_eq!(
        check(&d, "offsite")["reason"],
        "1 within RPO at another site (node-b1 at site-b); the class asks for 1"
    );
    assert_eq!(check(&d, "immutable")["pass"], true);
    // The RTO estimate comes from the finished replication (no drill, no
    // restore yet): the dataset's size over its measured rate.
    let est = &d["rto_estimate"];
    assert_eq!(est["source"]["from"], "replication", "{est:#}");
    assert_eq!(est["source"]["samples"], 1, "{est:#}");
    let rate = est["source"]["bytes_per_sec"].as_u64().unwrap();
    let bytes = est["bytes"].as_u64().unwrap();
    assert!(rate > 0 && bytes > 0, "{est:#}");
    assert_eq!(est["secs"].as_u64(), Some(bytes.div_ceil(rate)), "{est:#}");
    assert_eq!(
        est["within"],
        est["secs"].as_u64().unwrap() <= 3600,
        "{est:#}"
    );
    // No drill ran: the replica is not verified, production is the source.
    assert_eq!(d["drill_every_secs"], 90 * 86_400, "the default interval");
    assert_eq!(prod["verification"], serde_json::json!({"state": "source"}));
    assert_eq!(
        replica["verification"],
        serde_json::json!({"state": "never_drilled"})
    );
    assert_eq!(
        d["verification"],
        "0 of 1 copy verified by a drill within 90d; replica on node-b1: not verified by a drill"
    );

    // The replica in /api/v1/fleet names its pairing.
    let f = coordinator.fleet().await.unwrap();
    let copy = node_in(&f, "node-b1").unwrap()["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["dataset"] == COPY)
        .cloned()
        .unwrap();
    assert_eq!(
        copy["replica_of"],
        serde_json::json!({"task": "offsite", "source_node": "node-a1", "dataset": "tank/db"})
    );

    // The CLI renders the same report; --format json is the API's JSON.
    let url = format!("http://127.0.0.1:{}", coordinator.http);
    let zdr = |args: &[&str]| {
        let out = Command::new(bin_dir().join("zdr"))
            .args(["--coordinator", &url])
            .args(args)
            .env_remove("ZDR_COORDINATOR")
            // The runbook's restore commands change something: the API token.
            .env("ZDR_TOKEN_FILE", &coordinator.token_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "zdr {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let md = zdr(&["report"]);
    assert!(md.starts_with("# zdr report\n"), "{md}");
    assert!(
        md.contains("\n## node-a1:tank/db: NOT 3-2-1 compliant, RPO "),
        "{md}"
    );
    assert!(
        md.contains("| copies | **FAIL** | 2 / 3 | 2 copies within RPO (production on node-a1, replica on node-b1); the class asks for 3"),
        "{md}"
    );
    assert!(
        md.contains(
            "\nVerification: 0 of 1 copy verified by a drill within 90d; replica on node-b1: \
             not verified by a drill.\n"
        ),
        "{md}"
    );
    let json: Value = serde_json::from_str(&zdr(&["report", "--format", "json"])).unwrap();
    assert_eq!(
        dataset(&json, "node-a1", "tank/db").unwrap()["copies"][1]["node"],
        "node-b1"
    );

    // The runbook names the copy, and its first command is one that works:
    // run as written, it restores beside production.
    let md = zdr(&["runbook", "node-a1:tank/db"]);
    assert!(md.starts_with("# Runbook: node-a1:tank/db\n"), "{md}");
    assert!(
        md.contains(&format!("ssh node-b1 \"zfs send '{COPY}@zdr_")),
        "{md}"
    );
    let book: Value =
        serde_json::from_str(&zdr(&["runbook", "node-a1:tank/db", "--format", "json"])).unwrap();
    let first = book["procedures"][0]["steps"][0]["command"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first.starts_with("zdr restore node-a1:tank/db --snapshot zdr_")
            && first.ends_with(" --from node-b1 --to node-a1:tank/db-restore"),
        "{first}"
    );
    let args: Vec<&str> = first.split(' ').skip(1).collect();
    let out = zdr(&args);
    assert!(
        out.contains("\nrestored node-a1:tank/db-restore from node-b1:"),
        "{out}"
    );

    // The copy's agent stops: its lag grows past the RPO.
    b1.proc.kill();
    let d = wait_for(
        "the stopped copy to be in breach",
        Duration::from_secs(60),
        || async {
            let r = report(&coordinator).await?;
            let d = dataset(&r, "node-a1", "tank/db")?.clone();
            (d["copies"][1]["rpo"] == "breach").then_some(d)
        },
    )
    .await;
    let replica = &d["copies"][1];
    assert_eq!(replica["online"], false);
    assert!(replica["lag_secs"].as_i64().unwrap() > 20, "{replica:#}");
    assert_eq!(d["rpo"], "breach");
    assert_eq!(d["copies"][0]["rpo"], "ok", "production keeps snapshotting");
    let offsite = check(&d, "offsite");
    assert_eq!(offsite["pass"], false);
    let reason = offsite["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "no copy within RPO at a site other than site-a (production's); the class asks for 1; \
             offsite copy on node-b1 is "
        ) && reason.ends_with(" behind its 20s RPO"),
        "{reason}"
    );
    assert_eq!(check(&d, "copies")["have"], 1);
    assert_eq!(
        report(&coordinator).await.unwrap()["summary"]["copies_breach"],
        1
    );
    // Paged by node: node-a1's page has tank/db with both its copies; node-b1
    // holds only the replica, so its page has no dataset and no next page.
    let c = &coordinator;
    let page = |q: &'static str| async move {
        c.get_json(&format!("/api/v1/report{q}"))
            .await
            .unwrap_or_else(|| panic!("{q}: no JSON page"))
    };
    let first = page("?limit=1").await;
    assert_eq!(first["next"], "node-a1", "{first:#}");
    assert_eq!(first["datasets"].as_array().unwrap().len(), 1);
    assert_eq!(first["datasets"][0]["copies"].as_array().unwrap().len(), 2);
    assert_eq!(first["summary"]["copies_breach"], 1);
    let second = page("?limit=1&after=node-a1").await;
    assert!(second.get("next").is_none(), "{second:#}");
    assert_eq!(second["datasets"].as_array().unwrap().len(), 0);
    assert_eq!(second["summary"]["datasets"], 0);
    assert_eq!(
        page("?node=node-a1").await["datasets"][0]["dataset"],
        "tank/db"
    );
    // The same, as metrics: one series per copy, no snapshot in a label.
    let replica_breach = r#"zdr_copy_rpo_breach{node="node-a1",dataset="tank/db",copy_node="node-b1",role="replica"} 1"#;
    let metrics = wait_for(
        "the copy's breach in /metrics",
        Duration::from_secs(20),
        || async {
            let (_, m) = coordinator.get("/metrics").await?;
            m.contains(replica_breach).then_some(m)
        },
    )
    .await;
    assert!(
        metrics.contains(
            r#"zdr_copy_rpo_breach{node="node-a1",dataset="tank/db",copy_node="node-a1",role="production"} 0"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"zdr_copy_lag_seconds{node="node-a1",dataset="tank/db",copy_node="node-b1",role="replica"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"zdr_copies{rpo="breach"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("zdr_20"), "a snapshot name in a label");
    // The totals per node and class are served at any size.
    let class_breach =
        r#"zdr_class_copies{node="node-a1",class="fast",role="replica",rpo="breach"} 1"#;
    assert!(metrics.contains(class_breach), "{metrics}");
    assert!(metrics.contains("zdr_copy_series_served 1"), "{metrics}");

    // Above --copy-metrics-max copies (2 here, the limit 1) a leader serves
    // only the totals.
    coordinator.proc.kill();
    let small = fleet.coordinator_with("c2", &["--copy-metrics-max".into(), "1".into()]);
    small.wait_ready().await;
    let metrics = wait_for(
        "the totals alone in /metrics",
        Duration::from_secs(30),
        || async {
            let (_, m) = small.get("/metrics").await?;
            m.contains("zdr_copy_series_served 0").then_some(m)
        },
    )
    .await;
    assert!(metrics.contains(class_breach), "{metrics}");
    assert!(
        !metrics.contains("zdr_copy_rpo_breach{") && !metrics.contains("zdr_copy_lag_seconds{"),
        "{metrics}"
    );
    drop(a1);
}
