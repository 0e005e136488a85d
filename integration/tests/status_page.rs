//! The status page in a real browser: a real nats-server, coordinator (API
//! token on) and two agents (simulated ZFS) at two sites replicating;
//! headless Chromium (Debian's `chromium`) loads `GET /`, and the rendered
//! DOM must show the copies, their RPO state and the 3-2-1 verdict, first
//! all ok, then with the copy's agent stopped and the copy in breach. A
//! screenshot of each lands in the test's directory (`ZDR_SCREENSHOT_DIR`
//! also keeps a copy, for the docs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use zdr_integration::*;

/// A 20 s RPO, so that a stopped copy is in breach within the test; two
/// copies make 3-2-1 here, so the verdict flips with the copy.
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
    copies: { total: 2, media: 2, offsite: 1 }
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

/// A browser that hangs fails the test rather than the CI run.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium_bin() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for name in ["chromium", "chromium-browser"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is not on PATH; install Debian's chromium package (ops/install-deps.sh does)");
}

/// Runs headless Chromium on `url` with `extra` flags; its stdout.
fn chromium(dir: &Path, url: &str, extra: &[String]) -> String {
    let mut child = Command::new(chromium_bin())
        .args([
            "--headless",
            // Root in CI: Chromium's sandbox refuses to run as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let start = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > BROWSER_TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish with {url} within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap()
}

fn dump_dom(dir: &Path, url: &str) -> String {
    let dom = chromium(dir, url, &["--dump-dom".to_string()]);
    assert!(dom.contains("<title>zdr status</title>"), "no page: {dom}");
    dom
}

/// A PNG of the page, checked to be one, at `dir/name`.
fn screenshot(dir: &Path, url: &str, name: &str) -> PathBuf {
    let path = dir.join(name);
    chromium(dir, url, &[format!("--screenshot={}", path.display())]);
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot {path:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {path:?}");
    assert!(
        png.len() > 10_000,
        "an empty-looking page: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("ZDR_SCREENSHOT_DIR") {
        std::fs::copy(&path, Path::new(&keep).join(name)).unwrap();
    }
    path
}

async fn replica(c: &Coordinator) -> Option<Value> {
    let (code, body) = c.get("/api/v1/report").await?;
    let r: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
    r["datasets"]
        .as_array()?
        .iter()
        .find(|d| d["node"] == "node-a1" && d["dataset"] == "tank/db")
        .map(|d| d["copies"][1].clone())
}

/// The `<tr>` of one copy, as rendered.
fn copy_row<'a>(dom: &'a str, role: &str, node: &str) -> &'a str {
    let marker = format!("data-role=\"{role}\" data-node=\"{node}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {role} copy on {node} in {dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    &dom[start..end]
}

#[tokio::test]
async fn the_status_page_renders_copies_rpo_state_and_the_3_2_1_verdict_in_chromium() {
    let fleet = Fleet::start(POLICY, Some(TASKS)).await;
    let pki = pki(fleet.path(), &["node-a1", "node-b1"]);
    let coordinator = fleet.coordinator("c1");
    coordinator.wait_ready().await;
    let extra = |pools: Vec<(String, u64)>| AgentExtra {
        pools,
        pki: Some(pki.clone()),
        ..AgentExtra::default()
    };
    let _a1 = fleet.agent_with(&A1, &extra(vec![]));
    let mut b1 = fleet.agent_with(&B1, &extra(vec![("backup".into(), 10_000_000_000)]));
    let url = format!("http://127.0.0.1:{}/", coordinator.http);
    let dir = fleet.path();

    // Served without the token (the API token is on: reads stay open), with
    // a policy that forbids anything but inline styles.
    let (code, _) = coordinator.get("/status").await.unwrap();
    assert_eq!(code, 200);

    wait_for(
        "the copy within RPO after a finished job",
        Duration::from_secs(90),
        || async {
            let r = replica(&coordinator).await?;
            (r["rpo"] == "ok" && r["replication"]["last_job"]["state"] == "done").then_some(())
        },
    )
    .await;
    let dom = dump_dom(dir, &url);
    assert!(
        dom.contains("data-node=\"node-a1\" data-dataset=\"tank/db\""),
        "{dom}"
    );
    let prod = copy_row(&dom, "production", "node-a1");
    let copy = copy_row(&dom, "replica", "node-b1");
    for row in [prod, copy] {
        assert!(row.contains("class=\"copy state-ok\""), "{row}");
    }
    assert!(
        copy.contains("backup/node-a1/tank/db") && copy.contains("site-b, hdd"),
        "{copy}"
    );
    assert!(copy.contains(">offsite</span>") && copy.contains(">immutable</span>"));
    assert!(copy.contains("not verified by a drill"), "{copy}");
    assert!(copy.contains("/ 20s ("), "lag against the RPO: {copy}");
    assert!(dom.contains("3-2-1: compliant"), "{dom}");
    screenshot(dir, &url, "status-ok.png");

    // The copy's agent stops: the copy falls into breach, in red, and
    // 3-2-1 fails with it.
    b1.proc.kill();
    wait_for(
        "the stopped copy in breach",
        Duration::from_secs(60),
        || async { (replica(&coordinator).await?["rpo"] == "breach").then_some(()) },
    )
    .await;
    let dom = dump_dom(dir, &url);
    let copy = copy_row(&dom, "replica", "node-b1");
    assert!(copy.contains("class=\"copy state-breach\""), "{copy}");
    assert!(copy.contains(">BREACH</span>"), "{copy}");
    assert!(
        dom.contains(".state-breach{background:#ffd7d5}"),
        "breach is red"
    );
    assert!(dom.contains("3-2-1: NOT compliant"), "{dom}");
    assert!(
        dom.contains("replica on node-b1 is ") && dom.contains("behind its 20s RPO"),
        "the failing check says why: {dom}"
    );
    assert!(dom.contains("OFFLINE"), "node-b1 offline: {dom}");
    let shot = screenshot(dir, &url, "status-breach.png");
    eprintln!("screenshot: {}", shot.display());
}
