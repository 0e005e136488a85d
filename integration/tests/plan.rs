//! `GET /api/v1/plan` and `zdr plan` on a real fleet: nats-server, a
//! coordinator and two agents (simulated ZFS) at two sites. The task's
//! window opens two hours from now, so its replication is pending until
//! then; the class's first drill is due one drill interval after the leader
//! first saw the class.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
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
    tiers: { 1h: 3 }
    rpo: 2h
    rto: 1h
    drill: { every: 30d }
datasets:
  - match: "tank/db"
    class: fast
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `HH:MM` of a Unix time, UTC.
fn hh_mm(t: i64) -> String {
    let m = t.rem_euclid(86_400) / 60;
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn item<'a>(plan: &'a Value, kind: &str, dataset: &str) -> Option<&'a Value> {
    plan["items"]
        .as_array()?
        .iter()
        .find(|i| i["what"]["kind"] == kind && i["what"]["dataset"] == dataset)
}

#[tokio::test]
async fn the_plan_lists_a_pending_replication_and_the_next_drill() {
    let start = unix_now();
    // A window from two hours on, one hour long: it cannot open during the test.
    let opens = (start / 60 + 120) * 60;
    let window = format!("{}-{}", hh_mm(opens), hh_mm(opens + 3600));
    let tasks = format!(
        r#"version: 1
tasks:
  - name: offsite
    source: {{ match: "tank/db", nodes: [node-a1] }}
    target: {{ site: other, root: "backup/{{node}}" }}
    schedule: {{ every: 10m, window: "{window}" }}
"#
    );
    let fleet = Fleet::start(POLICY, Some(&tasks)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let extra = |pools: Vec<(String, u64)>| AgentExtra {
        pools,
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let _a1 = fleet.agent_with(&A1, &extra(vec![]));
    let _b1 = fleet.agent_with(&B1, &extra(vec![("backup".into(), 10_000_000_000)]));

    let plan = wait_for(
        "the replication and the drill in the plan",
        Duration::from_secs(60),
        || async {
            let (code, body) = coordinator.get("/api/v1/plan").await?;
            let plan: Value = serde_json::from_str(&body).ok()?;
            (code == 200
                && item(&plan, "replication", "tank/db").is_some()
                && item(&plan, "drill", "tank/db").is_some()
                && item(&plan, "snapshot", "tank/db").is_some())
            .then_some(plan)
        },
    )
    .await;

    let repl = item(&plan, "replication", "tank/db").unwrap();
    assert_eq!(
        repl["what"],
        json!({
            "kind": "replication", "task": "offsite", "node": "node-a1", "dataset": "tank/db",
            "target_node": "node-b1", "target_dataset": "backup/node-a1/tank/db"
        })
    );
    assert_eq!(
        repl["when"],
        json!({"state": "at", "at": opens}),
        "pending until the window opens"
    );
    assert_eq!(
        repl["why"],
        json!({"reason": "outside_window", "window": window})
    );

    let drill = item(&plan, "drill", "tank/db").unwrap();
    assert_eq!(drill["what"]["class"], "fast");
    assert_eq!(drill["what"]["number"], 1);
    assert_eq!(drill["what"]["node"], "node-a1");
    // No replica yet: the drill has no copy to restore from.
    assert!(drill["what"]["copy"].is_null(), "{drill:#}");
    let at = drill["when"]["at"].as_i64().unwrap();
    let every = 30 * 86_400;
    assert!(
        (start + every..=unix_now() + every).contains(&at),
        "the first drill is one interval after the anchor: {drill:#}"
    );
    assert_eq!(
        drill["why"],
        json!({"reason": "drill_due", "every_secs": every})
    );
    assert_eq!(
        item(&plan, "snapshot", "tank/db").unwrap()["why"]["period_secs"],
        3600
    );

    // The CLI: the same items as text, and --json as the API answered.
    let url = format!("http://127.0.0.1:{}", coordinator.http);
    let zdr = |args: &[&str]| {
        let out = Command::new(bin_dir().join("zdr"))
            .args(["--coordinator", &url])
            .args(args)
            .env_remove("ZDR_COORDINATOR")
            .output()
            .unwrap();
        assert!(out.status.success(), "zdr {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = zdr(&["plan"]);
    assert!(text.starts_with("plan at "), "{text}");
    let line = text
        .lines()
        .find(|l| {
            l.contains("replicate node-a1:tank/db to node-b1:backup/node-a1/tank/db (offsite)")
        })
        .unwrap_or_else(|| panic!("no replication line: {text}"));
    assert!(
        line.ends_with(&format!("waiting: outside the task's window {window} UTC")),
        "{line}"
    );
    assert!(text.contains("drill node-a1:tank/db  "), "{text}");
    let j: Value = serde_json::from_str(&zdr(&["--json", "plan"])).unwrap();
    assert_eq!(
        item(&j, "replication", "tank/db").unwrap()["why"]["reason"],
        "outside_window"
    );
}
