//! Alerts end to end: a real nats-server, coordinator and two agents
//! (simulated ZFS) replicating across two sites. When the copy's agent
//! stops, the leader's rules fire an agent-offline alert and an RPO breach
//! of the copy, listed by `GET /api/v1/alerts` with stable labels and
//! delivered to webhook receivers on loopback.

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

async fn alerts(c: &Coordinator) -> Option<Vec<Value>> {
    let (code, body) = c.get("/api/v1/alerts").await?;
    let v: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
    v["alerts"].as_array().cloned()
}

fn find<'a>(alerts: &'a [Value], name: &str, label: &str, value: &str) -> Option<&'a Value> {
    alerts
        .iter()
        .find(|a| a["alert"]["labels"]["alertname"] == name && a["alert"]["labels"][label] == value)
}

#[tokio::test]
async fn a_stopped_copy_fires_agent_offline_and_rpo_breach() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let extra = |pools: Vec<(String, u64)>| AgentExtra {
        pools,
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let a1 = fleet.agent_with(&A1, &extra(vec![]));
    let mut b1 = fleet.agent_with(&B1, &extra(vec![("backup".into(), 10_000_000_000)]));

    // Once the copy is current, neither alert is active.
    wait_for(
        "the copy within RPO, no breach alert",
        Duration::from_secs(90),
        || async {
            let a = alerts(&coordinator).await?;
            let quiet = find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").is_none()
                && find(&a, "ZdrAgentOffline", "node", "node-b1").is_none()
                && find(&a, "ZdrAgentOffline", "node", "node-a1").is_none();
            let (_, r) = coordinator.get("/api/v1/report").await?;
            let r: Value = serde_json::from_str(&r).ok()?;
            (quiet && r["datasets"][0]["copies"][1]["rpo"] == "ok").then_some(())
        },
    )
    .await;

    b1.proc.kill();
    let a = wait_for(
        "agent-offline and RPO-breach alerts for node-b1",
        Duration::from_secs(60),
        || async {
            let a = alerts(&coordinator).await?;
            (find(&a, "ZdrAgentOffline", "node", "node-b1").is_some()
                && find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").is_some())
            .then_some(a)
        },
    )
    .await;
    let offline = &find(&a, "ZdrAgentOffline", "node", "node-b1").unwrap()["alert"];
    assert_eq!(
        offline["labels"],
        serde_json::json!({"alertname": "ZdrAgentOffline", "severity": "critical", "node": "node-b1"})
    );
    let summary = offline["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("agent node-b1 has sent nothing for ")
            && summary.ends_with("(offline after 5s)"),
        "{summary}"
    );
    let breach = &find(&a, "ZdrCopyRpoBreach", "copy", "node-b1").unwrap()["alert"];
    assert_eq!(
        breach["labels"],
        serde_json::json!({"alertname": "ZdrCopyRpoBreach", "severity": "critical",
            "node": "node-a1", "dataset": "tank/db", "copy": "node-b1"})
    );
    let summary = breach["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("replica copy (task offsite) of node-a1:tank/db on node-b1 is ")
            && summary.ends_with(" behind its 20s RPO"),
        "{summary}"
    );
    assert_eq!(breach["fingerprint"].as_str().unwrap().len(), 16);
    // Filtered by node: node-b1's own alerts (the breach is labelled with
    // production's node).
    let (_, body) = coordinator
        .get("/api/v1/alerts?node=node-b1")
        .await
        .unwrap();
    let of_b1: Value = serde_json::from_str(&body).unwrap();
    let of_b1 = of_b1["alerts"].as_array().unwrap();
    assert!(
        find(of_b1, "ZdrAgentOffline", "node", "node-b1").is_some(),
        "{body}"
    );
    assert!(
        of_b1
            .iter()
            .all(|t| t["alert"]["labels"]["node"] == "node-b1"),
        "{body}"
    );
    // Paged one at a time, in fingerprint order, both alerts come by.
    let mut seen: Vec<String> = Vec::new();
    let mut after = String::new();
    for _ in 0..50 {
        let q = if after.is_empty() {
            "/api/v1/alerts?limit=1".to_string()
        } else {
            format!("/api/v1/alerts?limit=1&after={after}")
        };
        let page: Value = serde_json::from_str(&coordinator.get(&q).await.unwrap().1).unwrap();
        let list = page["alerts"].as_array().unwrap();
        assert!(list.len() <= 1, "{page:#}");
        seen.extend(
            list.iter()
                .map(|t| t["alert"]["fingerprint"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    for t in [offline, breach] {
        let fp = t["fingerprint"].as_str().unwrap();
        assert!(seen.iter().any(|s| s == fp), "{fp} not paged: {seen:?}");
    }
    // Production keeps snapshotting: no alert about its own copy.
    assert!(
        find(&a, "ZdrCopyRpoBreach", "copy", "node-a1").is_none(),
        "{a:#?}"
    );
    assert!(
        find(&a, "ZdrSnapshotScheduleMissed", "node", "node-a1").is_none(),
        "{a:#?}"
    );
    // The coordinator logged the firing alert.
    assert!(
        coordinator
            .proc
            .output()
            .contains("alertname=\"ZdrCopyRpoBreach\"")
            || coordinator
                .proc
                .output()
                .contains("alertname=ZdrCopyRpoBreach"),
        "no alert log line"
    );
    drop(a1);
}

/// Alerts reach webhook receivers through the durable queue: a breach of the
/// copy's RPO fires at both receivers, each in its own format; the one that
/// was down when it fired gets it once it comes up; both get the resolve
/// once the copy has caught up.
#[tokio::test]
async fn an_rpo_breach_reaches_the_webhooks_even_one_that_was_down_and_resolves() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let hook = WebhookSink::start(free_port()).await;
    let down_port = free_port();
    let receivers = fleet.path().join("receivers.yaml");
    std::fs::write(
        &receivers,
        format!(
            "version: 1\nreceivers:\n  - name: am\n    url: http://127.0.0.1:{down_port}/hook\n    timeout: 2s\n  - name: hook\n    url: http://127.0.0.1:{}/zdr\n    format: json\n    timeout: 2s\n",
            hook.port
        ),
    )
    .unwrap();
    let flags: [std::ffi::OsString; 4] = [
        "--alerts".into(),
        receivers.into_os_string(),
        "--alert-hold-secs".into(),
        "3".into(),
    ];
    let mut coordinator = fleet.coordinator_with("c1", &flags);
    coordinator.wait_ready().await;
    let extra = AgentExtra {
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let a1_metrics = free_port();
    let a1 = fleet.agent_with(
        &A1,
        &AgentExtra {
            metrics_port: Some(a1_metrics),
            ..extra.clone()
        },
    );
    let b1_extra = AgentExtra {
        pools: vec![("backup".into(), 10_000_000_000)],
        ..extra.clone()
    };
    let mut b1 = fleet.agent_with(&B1, &b1_extra);
    wait_for("the copy within RPO", Duration::from_secs(90), || {
        copy_ok(&coordinator)
    })
    .await;

    // The source agent's own metrics, from its cache: its snapshots by
    // dataset and class, its pools.
    let (code, agent_metrics) = http_request(a1_metrics, "GET", "/metrics", "")
        .await
        .expect("the agent's /metrics");
    assert_eq!(code, 200);
    let count = agent_metrics
        .lines()
        .find(|l| l.starts_with(r#"zdr_agent_snapshots{dataset="tank/db",class="fast"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no snapshot count for tank/db:\n{agent_metrics}"));
    assert!((1.0..=20.0).contains(&count), "{count}");
    for name in [
        "zdr_agent_newest_snapshot_age_seconds{",
        "zdr_agent_pool_size_bytes{pool=\"tank\"}",
        "zdr_agent_policy_revision ",
        "zdr_agent_snapshots_taken_total ",
    ] {
        assert!(
            agent_metrics.lines().any(|l| l.starts_with(name)),
            "no {name} in\n{agent_metrics}"
        );
    }

    b1.proc.kill();
    // zdr's JSON: one POST per status, rule and node, its alerts under `alerts`.
    let breach_in = |post: &Value| {
        post["alerts"].as_array()?.iter().find_map(|a| {
            (a["alertname"] == "ZdrCopyRpoBreach" && a["labels"]["copy"] == "node-b1")
                .then(|| a.clone())
        })
    };
    let (post, fired) = wait_for(
        "the RPO breach at the json receiver",
        Duration::from_secs(90),
        || async {
            hook.received()
                .into_iter()
                .filter(|v| v["status"] == "firing")
                .find_map(|v| Some((v.clone(), breach_in(&v)?)))
        },
    )
    .await;
    assert_eq!(post["receiver"], "hook");
    assert_eq!(post["group"]["alertname"], "ZdrCopyRpoBreach");
    assert_eq!(post["group"]["node"], "node-a1");
    assert_eq!(fired["labels"]["dataset"], "tank/db");
    assert!(fired["ends_at"].is_null(), "{fired}");
    let fingerprint = fired["fingerprint"].as_str().unwrap().to_string();
    // Both formats list a POST's alerts under `alerts`.
    let carries = |post: &Value| {
        post["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["fingerprint"] == fingerprint.as_str()))
    };

    // The Alertmanager receiver was down all along; it gets the alert once up.
    let am = WebhookSink::start(down_port).await;
    let am_fired = wait_for(
        "the RPO breach at the receiver that was down",
        Duration::from_secs(60),
        || async {
            am.received()
                .into_iter()
                .find(|v| carries(v) && v["status"] == "firing")
        },
    )
    .await;
    assert_eq!(am_fired["version"], "4");
    assert_eq!(am_fired["receiver"], "am");
    assert_eq!(am_fired["truncatedAlerts"], 0);
    assert_eq!(am_fired["commonLabels"]["alertname"], "ZdrCopyRpoBreach");
    assert_eq!(am_fired["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let metrics = coordinator.get("/metrics").await.unwrap().1;
    // Every metric the shipped dashboard and Prometheus rules query is served.
    for file in [
        "ops/grafana/zdr-dashboard.json",
        "ops/prometheus/zdr-rules.yml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file)).unwrap();
        let names = metric_names(&text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{file} queries {name}, which the coordinator does not serve:\n{metrics}"
            );
        }
    }
    // The dashboard's round-trip panel has a figure on this live scrape:
    // replication sent signed commands within the window.
    let p99 = metrics
        .lines()
        .find(|l| l.starts_with("zdr_command_round_trip_seconds{quantile=\"0.99\"} "))
        .unwrap_or_else(|| panic!("no p99 command round trip:\n{metrics}"));
    let secs: f64 = p99.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs.is_finite() && secs > 0.0, "{p99}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("zdr_alerts_failed_tries_total{receiver=\"am\"}")),
        "no failed tries counted for the receiver that was down:\n{metrics}"
    );

    // The leader is killed while the alert is active: its successor takes
    // the alert over (no second firing), and resolves it.
    coordinator.proc.kill();
    // It kept the alert under its own key. Releases before kept the whole
    // book under one `book` key: put it back that way, so that c2 takes
    // over from the old layout and moves it to per-alert keys.
    let kv = async_nats::jetstream::new(fleet.nats.client().await)
        .get_key_value("zdr_alerts")
        .await
        .unwrap();
    let own = format!("alert.{fingerprint}");
    let raw = kv.get(&own).await.unwrap().expect("the alert's own key");
    let tracked: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(tracked["alert"]["fingerprint"], fingerprint.as_str());
    let book = serde_json::json!({ "active": { fingerprint.as_str(): tracked } });
    kv.put("book", serde_json::to_vec(&book).unwrap().into())
        .await
        .unwrap();
    kv.delete(&own).await.unwrap();
    coordinator = fleet.coordinator_with("c2", &flags);
    coordinator.wait_ready().await;
    wait_for(
        "the old book moved to the alert's own key",
        Duration::from_secs(30),
        || async {
            let moved: Value = serde_json::from_slice(&kv.get(&own).await.ok()??).ok()?;
            let gone = kv.get("book").await.ok()?.is_none();
            // Same alert, same start: taken over, not fired anew.
            (gone && moved["starts_at"] == tracked["starts_at"]).then_some(())
        },
    )
    .await;

    // The copy comes back and catches up: both receivers get the resolve.
    b1 = fleet.agent_with(&B1, &b1_extra);
    wait_for("the copy back within RPO", Duration::from_secs(90), || {
        copy_ok(&coordinator)
    })
    .await;
    let resolved = |sink: &WebhookSink| {
        sink.received()
            .into_iter()
            .any(|v| v["status"] == "resolved" && carries(&v))
    };
    wait_for(
        "the resolve at both receivers",
        Duration::from_secs(60),
        || async { (resolved(&hook) && resolved(&am)).then_some(()) },
    )
    .await;
    // Each notification arrived once and in order: firing and resolved
    // alternate (a breach while the copy first synced may come before).
    for sink in [&hook, &am] {
        let statuses: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|v| carries(v))
            .map(|v| v["status"].as_str().unwrap_or_default().to_string())
            .collect();
        let alternating = statuses
            .iter()
            .enumerate()
            .all(|(i, s)| s == if i % 2 == 0 { "firing" } else { "resolved" });
        assert!(
            alternating && statuses.len().is_multiple_of(2),
            "port {}: {statuses:?}",
            sink.port
        );
    }
    drop((a1, b1));
}

/// Every `zdr_...` metric name in a dashboard or rules file.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("zdr_") {
        let boundary = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if boundary {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len().max(1)..];
    }
    out
}

/// Some(()) once the report shows the replica copy within its RPO.
async fn copy_ok(c: &Coordinator) -> Option<()> {
    let (_, r) = c.get("/api/v1/report").await?;
    let r: Value = serde_json::from_str(&r).ok()?;
    (r["datasets"][0]["copies"][1]["rpo"] == "ok").then_some(())
}
