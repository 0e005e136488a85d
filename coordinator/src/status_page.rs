//! The status page (`GET /` and `GET /status`): one self-contained HTML
//! page, rendered on the server from plain data. Pure: [`Input`] in, HTML
//! out; the HTTP shell gathers the input.
//!
//! The rules:
//! - Self-contained: inline CSS, no script, no external asset; it reloads
//!   itself every [`REFRESH_SECS`] (`<meta http-equiv="refresh">`).
//! - Every text that comes from the fleet (dataset and node names, errors,
//!   alert summaries) is HTML-escaped; nothing is inserted unescaped.
//! - Per protected dataset: each copy's lag against the class's RPO and its
//!   state (ok, warning, breach, also as `data-state` for tools), its newest
//!   confirmed snapshot, and what marks it: offsite (another site than
//!   production's), immutable (a replica of a class with `immutable_for`),
//!   and its drill verdict, as the report gives it
//!   (`crate::compliance::Verification`). Then the 3-2-1 verdict and
//!   each check with its reason.
//! - Datasets are listed worst first (breach, warning, not compliant), at
//!   most [`MAX_DATASETS`]; the page says how many it left out, and
//!   `zdr report` has them all. Jobs and alerts are bounded the same way.
//! - Jobs shown are those under way (planned, running), retrying (failed,
//!   with a next attempt) or blocked; finished ones are history
//!   (`zdr jobs`).
//!
//! The page is read-only and carries no token: it shows what the API's open
//! reads show (`crate::api_auth`: GET stays open), so it is public exactly
//! where they are, and it is behind the same guard as every route if reads
//! are ever closed.

use std::fmt::{self, Write};

use zdr_common::wire::PoolInfo;

use crate::alerts::state::Tracked;
use crate::compliance::{short, CopyReport, DatasetReport, Report, Role, Verification};
use crate::jobs::{JobKind, JobRecord, JobState};

/// The page reloads itself this often.
pub const REFRESH_SECS: u32 = 15;
/// Datasets shown at most, worst first.
pub const MAX_DATASETS: usize = 200;
/// Jobs shown at most.
pub const MAX_JOBS: usize = 100;
/// Alerts shown at most, newest first.
pub const MAX_ALERTS: usize = 100;

/// The `Content-Security-Policy` the page is served with: inline styles,
/// nothing else (no script, no fetch, no frame).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Everything the page is rendered from.
pub struct Input<'a> {
    /// Unix seconds.
    pub now: i64,
    pub leader: bool,
    pub policy_revision: Option<u64>,
    /// Why the policy or tasks file is not in force.
    pub policy_problem: Option<&'a str>,
    /// `None` until a policy is loaded.
    pub report: Option<&'a Report>,
    pub nodes: &'a [NodeLine],
    pub jobs: &'a [JobRecord],
    pub alerts: &'a [Tracked],
}

/// One node as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLine {
    pub node: String,
    pub site: String,
    pub media: String,
    pub online: bool,
    /// Unix seconds.
    pub last_seen: i64,
    pub pools: Vec<PoolInfo>,
}

/// Worst first: breach, warning, not compliant, then by node and name.
pub fn order(datasets: &[DatasetReport]) -> Vec<&DatasetReport> {
    let mut out: Vec<&DatasetReport> = datasets.iter().collect();
    out.sort_by(|a, b| {
        (std::cmp::Reverse(a.rpo), a.compliant, &a.node, &a.dataset).cmp(&(
            std::cmp::Reverse(b.rpo),
            b.compliant,
            &b.node,
            &b.dataset,
        ))
    });
    out
}

/// How a job shown on the page stands; `None` for one that is not shown.
pub fn job_standing(j: &JobRecord) -> Option<&'static str> {
    match j.state {
        JobState::Planned => Some("planned"),
        JobState::Running => Some("running"),
        JobState::Failed if j.next_attempt_at_ms.is_some() => Some("retrying"),
        JobState::Blocked => Some("blocked"),
        JobState::Failed | JobState::Done => None,
    }
}

/// Text made safe for HTML content and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// IEC units, one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1f2328;background:#fff}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.5em 0 .4em}
h3{font-size:1em;margin:1.2em 0 .3em;font-family:monospace}
table{border-collapse:collapse;margin:.3em 0}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
.meta{color:#59636e}.note{background:#fff8c5;padding:.4em .6em;border:1px solid #d4a72c}
.state-ok{background:#dafbe1}.state-warning{background:#fff1c2}.state-breach{background:#ffd7d5}
.badge{display:inline-block;padding:0 .45em;border-radius:.8em;font-weight:600;font-size:.85em;color:#fff}
.badge.state-ok,.badge.pass{background:#1a7f37}.badge.state-warning{background:#9a6700}
.badge.state-breach,.badge.fail{background:#cf222e}
.mark{display:inline-block;margin-right:.3em;padding:0 .35em;border:1px solid #8c959f;border-radius:.3em;font-size:.8em}
.verdict-pass{color:#1a7f37;font-weight:600}.verdict-fail{color:#cf222e;font-weight:600}
progress{width:9em}
";

/// The whole page.
pub fn render(input: &Input) -> String {
    let mut h = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = page(&mut h, input);
    h
}

fn page(h: &mut String, input: &Input) -> fmt::Result {
    write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>zdr status</title><style>{STYLE}</style></head><body>\n"
    )?;
    writeln!(h, "<h1>zdr status</h1>")?;
    writeln!(
        h,
        "<p class=\"meta\" id=\"generated\">generated {} by the {} coordinator, policy revision {}; \
         reloads every {REFRESH_SECS} s</p>",
        utc(input.now),
        if input.leader { "leading" } else { "standby" },
        input
            .policy_revision
            .map_or("none".to_string(), |r| r.to_string()),
    )?;
    if !input.leader {
        writeln!(
            h,
            "<p class=\"note\" id=\"standby\">This coordinator is a standby: it evaluates \
             nothing and its view may be stale. Open the leader's page (GET /readyz says which \
             instance leads).</p>"
        )?;
    }
    if let Some(p) = input.policy_problem {
        writeln!(
            h,
            "<p class=\"note\" id=\"policy-problem\">The policy or tasks file is not in force \
             (the last good signed policy is): {}</p>",
            Esc(p)
        )?;
    }
    summary(h, input)?;
    alerts(h, input)?;
    datasets(h, input)?;
    jobs(h, input)?;
    nodes(h, input)?;
    h.push_str("</body></html>\n");
    Ok(())
}

fn summary(h: &mut String, input: &Input) -> fmt::Result {
    let Some(r) = input.report else {
        return writeln!(
            h,
            "<p class=\"note\" id=\"no-policy\">No policy is loaded yet, so no dataset has a \
             class to report on.</p>"
        );
    };
    let s = &r.summary;
    let online = input.nodes.iter().filter(|n| n.online).count();
    writeln!(
        h,
        "<table id=\"summary\"><tr><th>nodes online</th><th>protected datasets</th>\
         <th>3-2-1 compliant</th><th>copies ok</th><th>warning</th><th>breach</th>\
         <th>alerts</th></tr><tr><td>{online} of {}</td><td>{}</td><td>{}</td>\
         <td class=\"state-ok\">{}</td><td class=\"state-warning\">{}</td>\
         <td class=\"state-breach\">{}</td><td>{}</td></tr></table>",
        input.nodes.len(),
        s.datasets,
        s.compliant,
        s.copies_ok,
        s.copies_warning,
        s.copies_breach,
        input.alerts.len()
    )
}

fn alerts(h: &mut String, input: &Input) -> fmt::Result {
    writeln!(h, "<h2>Active alerts</h2>")?;
    if input.alerts.is_empty() {
        return writeln!(h, "<p id=\"alerts\">None.</p>");
    }
    let mut list: Vec<&Tracked> = input.alerts.iter().collect();
    list.sort_by_key(|t| std::cmp::Reverse(t.starts_at));
    writeln!(
        h,
        "<table id=\"alerts\"><tr><th>severity</th><th>alert</th><th>summary</th><th>since</th></tr>"
    )?;
    for t in list.iter().take(MAX_ALERTS) {
        let label = |k: &str| t.alert.labels.get(k).map_or("", String::as_str);
        let severity = label("severity");
        let class = if severity == "critical" {
            "state-breach"
        } else {
            "state-warning"
        };
        writeln!(
            h,
            "<tr class=\"alert {class}\"><td>{}</td><td>{}</td><td>{}</td><td>{} ({} ago)</td></tr>",
            Esc(severity),
            Esc(t.alert.name()),
            Esc(t
                .alert
                .annotations
                .get("summary")
                .map_or("", String::as_str)),
            utc(t.starts_at),
            short(input.now - t.starts_at)
        )?;
    }
    h.push_str("</table>\n");
    left_out(h, list.len(), MAX_ALERTS, "alerts", "GET /api/v1/alerts")
}

fn left_out(h: &mut String, total: usize, max: usize, what: &str, all: &str) -> fmt::Result {
    if total > max {
        writeln!(
            h,
            "<p class=\"meta\">{} more {what} not shown; {all} lists them all.</p>",
            total - max
        )?;
    }
    Ok(())
}

fn datasets(h: &mut String, input: &Input) -> fmt::Result {
    let Some(r) = input.report else {
        return Ok(());
    };
    writeln!(h, "<h2>Protected datasets</h2>")?;
    if r.datasets.is_empty() {
        return writeln!(
            h,
            "<p>No protected dataset: no dataset in the fleet has a class.</p>"
        );
    }
    let ordered = order(&r.datasets);
    for d in ordered.iter().take(MAX_DATASETS) {
        dataset(h, input, d)?;
    }
    left_out(
        h,
        ordered.len(),
        MAX_DATASETS,
        "datasets (the healthiest)",
        "zdr report",
    )
}

fn dataset(h: &mut String, input: &Input, d: &DatasetReport) -> fmt::Result {
    let every = d.drill_every_secs;
    let production_site = d.copies.first().map_or("", |c| c.site.as_str());
    write!(
        h,
        "<section class=\"dataset\" data-node=\"{}\" data-dataset=\"{}\" data-state=\"{}\">\
         <h3>{}:{} <span class=\"badge state-{}\">{}</span></h3>\n\
         <p class=\"meta\">class {}: RPO {}, RTO {} (estimate: {}), immutable for {}, drill every {}</p>\n",
        Esc(&d.node),
        Esc(&d.dataset),
        d.rpo.as_str(),
        Esc(&d.node),
        Esc(&d.dataset),
        d.rpo.as_str(),
        d.rpo.as_str().to_uppercase(),
        Esc(&d.class),
        short(d.rpo_secs as i64),
        short(d.rto_secs as i64),
        Esc(&d.rto_estimate.describe(d.rto_secs)),
        short(d.immutable_for_secs as i64),
        if every == 0 {
            "-".to_string()
        } else {
            short(every as i64)
        },
    )?;
    writeln!(
        h,
        "<table class=\"copies\"><tr><th>copy</th><th>node → dataset</th><th>site, media</th>\
         <th>RPO now / target</th><th>state</th><th>newest confirmed snapshot</th>\
         <th>replication</th><th>drill</th></tr>"
    )?;
    for c in &d.copies {
        copy(h, input, d, c, production_site, every)?;
    }
    h.push_str("</table>\n");
    write!(
        h,
        "<p class=\"verdict {}\">3-2-1: {}</p>\n<ul class=\"checks\">",
        if d.compliant {
            "verdict-pass"
        } else {
            "verdict-fail"
        },
        if d.compliant {
            "compliant"
        } else {
            "NOT compliant"
        }
    )?;
    for c in &d.checks {
        writeln!(
            h,
            "<li data-check=\"{}\" data-pass=\"{}\"><span class=\"badge {}\">{}</span> {} \
             ({} of {}): {}</li>",
            c.check.as_str(),
            c.pass,
            if c.pass { "pass" } else { "fail" },
            if c.pass { "pass" } else { "fail" },
            c.check.as_str(),
            c.have,
            c.want,
            Esc(&c.reason)
        )?;
    }
    h.push_str("</ul>\n");
    for u in &d.unpaired {
        writeln!(
            h,
            "<p class=\"note\">task {} found no target: {}</p>",
            Esc(&u.task),
            Esc(&u.why)
        )?;
    }
    h.push_str("</section>\n");
    Ok(())
}

fn copy(
    h: &mut String,
    input: &Input,
    d: &DatasetReport,
    c: &CopyReport,
    production_site: &str,
    every: u64,
) -> fmt::Result {
    let state = c.rpo.as_str();
    let lag = match c.lag_secs {
        Some(l) => format!(
            "{} / {} ({} %)",
            short(l),
            short(d.rpo_secs as i64),
            (l.max(0) as u64 * 100) / d.rpo_secs.max(1)
        ),
        None => format!("none confirmed / {}", short(d.rpo_secs as i64)),
    };
    let mut marks = String::new();
    if !c.online {
        marks.push_str("<span class=\"mark offline\">offline</span>");
    }
    if c.role == Role::Replica && c.site != production_site {
        marks.push_str("<span class=\"mark offsite\">offsite</span>");
    }
    if c.role == Role::Replica && d.immutable_for_secs > 0 {
        marks.push_str("<span class=\"mark immutable\">immutable</span>");
    }
    if c.encrypted {
        marks.push_str("<span class=\"mark\">encrypted</span>");
    }
    let newest = match &c.newest {
        Some(s) => format!(
            "@{} at {} ({} ago)",
            Esc(&s.name),
            utc(s.creation),
            short(input.now - s.creation)
        ),
        None => "none".into(),
    };
    let replication = match &c.replication {
        None => "-".to_string(),
        Some(r) => {
            let mut s = format!(
                "task {}: {} snapshot{} ({}) to send",
                Esc(&r.task),
                r.pending_snapshots,
                if r.pending_snapshots == 1 { "" } else { "s" },
                bytes(r.pending_bytes)
            );
            match &r.last_job {
                Some(j) => {
                    let _ = write!(s, "; last job {}", job_state(j.state));
                    if let Some(e) = &j.error {
                        let _ = write!(s, ": {}", Esc(e));
                    }
                }
                None => s.push_str("; no job yet"),
            }
            s
        }
    };
    let drill = match &c.verification {
        Verification::Source => "-".to_string(),
        Verification::Verified { passed_at } => format!(
            "<span class=\"badge pass\">verified</span> by a drill {} ago",
            short(input.now - passed_at)
        ),
        Verification::Failed { .. } => format!(
            "<span class=\"badge fail\">drill failed</span> {}",
            Esc(&c.verification.describe(input.now, every))
        ),
        v => Esc(&v.describe(input.now, every)).to_string(),
    };
    writeln!(
        h,
        "<tr class=\"copy state-{state}\" data-role=\"{}\" data-node=\"{}\" data-state=\"{state}\">\
         <td>{} {marks}</td><td>{} → {}</td><td>{}, {}</td><td>{lag}</td>\
         <td><span class=\"badge state-{state}\">{}</span></td><td>{newest}</td>\
         <td>{replication}</td><td>{drill}</td></tr>",
        c.role.as_str(),
        Esc(&c.node),
        c.role.as_str(),
        Esc(&c.node),
        Esc(&c.dataset),
        Esc(&c.site),
        Esc(&c.media),
        state.to_uppercase(),
    )
}

fn job_state(s: JobState) -> &'static str {
    match s {
        JobState::Planned => "planned",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Blocked => "blocked",
    }
}

fn kind(k: JobKind) -> &'static str {
    match k {
        JobKind::Replication => "replication",
        JobKind::Restore => "restore",
        JobKind::Drill => "drill",
        JobKind::Upload => "upload",
    }
}

fn jobs(h: &mut String, input: &Input) -> fmt::Result {
    writeln!(h, "<h2>Jobs under way</h2>")?;
    let shown: Vec<(&JobRecord, &str)> = input
        .jobs
        .iter()
        .filter_map(|j| job_standing(j).map(|s| (j, s)))
        .collect();
    if shown.is_empty() {
        return writeln!(h, "<p id=\"jobs\">None.</p>");
    }
    writeln!(
        h,
        "<table id=\"jobs\"><tr><th>kind</th><th>task</th><th>from → to</th><th>state</th>\
         <th>progress</th><th>rate</th><th>ETA</th><th>error</th></tr>"
    )?;
    for (j, standing) in shown.iter().take(MAX_JOBS) {
        let progress = match j.size_hint.filter(|s| *s > 0) {
            Some(size) => format!(
                "<progress value=\"{}\" max=\"{size}\"></progress> {} of {} ({} %)",
                j.bytes.min(size),
                bytes(j.bytes),
                bytes(size),
                j.bytes.min(size) * 100 / size
            ),
            None => bytes(j.bytes),
        };
        let class = match *standing {
            "retrying" | "blocked" => " state-breach",
            _ => "",
        };
        writeln!(
            h,
            "<tr class=\"job{class}\" data-state=\"{standing}\"><td>{}</td><td>{}</td>\
             <td>{}:{} → {}:{}</td><td>{standing}</td><td>{progress}</td><td>{}/s</td>\
             <td>{}</td><td>{}</td></tr>",
            kind(j.kind),
            Esc(&j.task),
            Esc(&j.source_node),
            Esc(&j.dataset),
            Esc(&j.target_node),
            Esc(&j.target_dataset),
            bytes(j.bytes_per_sec),
            j.eta_secs.map_or("-".to_string(), |e| short(e as i64)),
            Esc(j.error.as_deref().unwrap_or(""))
        )?;
    }
    h.push_str("</table>\n");
    left_out(h, shown.len(), MAX_JOBS, "jobs", "zdr jobs")
}

fn nodes(h: &mut String, input: &Input) -> fmt::Result {
    writeln!(h, "<h2>Nodes</h2>")?;
    if input.nodes.is_empty() {
        return writeln!(h, "<p id=\"nodes\">No node has said hello yet.</p>");
    }
    writeln!(
        h,
        "<table id=\"nodes\"><tr><th>node</th><th>site</th><th>media</th><th>state</th>\
         <th>last seen</th><th>pools</th></tr>"
    )?;
    for n in input.nodes {
        let pools = n
            .pools
            .iter()
            .map(|p| {
                format!(
                    "{} {} % of {} ({})",
                    Esc(&p.name),
                    p.allocated * 100 / p.size.max(1),
                    bytes(p.size),
                    Esc(&p.health)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        writeln!(
            h,
            "<tr class=\"node {}\" data-online=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{} ago</td><td>{pools}</td></tr>",
            if n.online { "state-ok" } else { "state-breach" },
            n.online,
            Esc(&n.node),
            Esc(&n.site),
            Esc(&n.media),
            if n.online { "online" } else { "OFFLINE" },
            short(input.now - n.last_seen),
        )?;
    }
    h.push_str("</table>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Alert;
    use crate::compliance::{
        Check, CheckKind, LastJob, Replication, RpoState, SnapshotPoint, Summary,
    };

    const NOW: i64 = 1_800_000_000;
    const HOSTILE: &str = "tank/<script>alert(1)</script>&\"'";

    fn copy(role: Role, node: &str, site: &str, lag: Option<i64>, rpo: RpoState) -> CopyReport {
        CopyReport {
            role,
            node: node.into(),
            site: site.into(),
            media: "ssd".into(),
            dataset: if role == Role::Production {
                HOSTILE.into()
            } else {
                format!("backup/{HOSTILE}")
            },
            online: true,
            encrypted: false,
            newest: lag.map(|l| SnapshotPoint {
                name: "zdr-<b>1".into(),
                guid: 7,
                creation: NOW - l,
            }),
            lag_secs: lag,
            rpo,
            replication: (role == Role::Replica).then(|| Replication {
                task: "offsite".into(),
                pending_snapshots: 3,
                pending_bytes: 3 << 20,
                last_job: Some(LastJob {
                    id: "j1".into(),
                    state: JobState::Failed,
                    error: Some("<img src=x onerror=alert(2)>".into()),
                    last_success_ms: None,
                    finished_at_ms: None,
                }),
            }),
            verification: if role == Role::Production {
                Verification::Source
            } else {
                Verification::Verified {
                    passed_at: NOW - 3600,
                }
            },
        }
    }

    fn dataset(node: &str, name: &str, rpo: RpoState, compliant: bool) -> DatasetReport {
        DatasetReport {
            node: node.into(),
            dataset: name.into(),
            class: "critical".into(),
            rpo_secs: 3600,
            rto_secs: 14_400,
            rto_estimate: crate::compliance::rto_estimate(&[], node, name, 0, 14_400),
            immutable_for_secs: 86_400,
            drill_every_secs: 90 * 86_400,
            rpo,
            compliant,
            copies: vec![
                copy(Role::Production, node, "site-a", Some(60), RpoState::Ok),
                copy(Role::Replica, "node-b1", "site-b", Some(7200), rpo),
            ],
            checks: vec![Check {
                check: CheckKind::Offsite,
                pass: compliant,
                have: usize::from(compliant),
                want: 1,
                reason: "offsite copy on node-b1 is 2h behind its 1h RPO <&>".into(),
            }],
            unpaired: vec![],
            verification: "1 of 1 copy verified by a drill within 90d".into(),
        }
    }

    fn report(datasets: Vec<DatasetReport>) -> Report {
        Report {
            generated_at: NOW,
            warn_percent: 75,
            summary: Summary {
                datasets: datasets.len(),
                ..Summary::default()
            },
            datasets,
        }
    }

    fn job(state: JobState, next: Option<i64>) -> JobRecord {
        serde_json::from_value(serde_json::json!({
            "id": "j1", "task": "offsite", "source_node": "node-a1", "dataset": HOSTILE,
            "target_node": "node-b1", "target_dataset": "backup/x", "state": state,
            "steps": [], "step": 0, "attempt": 1, "attempt_id": "a", "resumed": false,
            "discard_partial": false, "bytes": 512u64 << 20, "size_hint": 1u64 << 30,
            "bytes_per_sec": 10u64 << 20, "eta_secs": 51, "rate_limit": null, "error": null,
            "started_at_ms": 0, "updated_at_ms": 0, "finished_at_ms": null,
            "next_attempt_at_ms": next, "last_success_ms": null, "history": []
        }))
        .unwrap()
    }

    #[test]
    fn escaping_covers_the_five_characters() {
        assert_eq!(Esc("a<b>&\"c'").to_string(), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(Esc("plain tank/db").to_string(), "plain tank/db");
        assert_eq!(Esc("").to_string(), "");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_has_no_markup(s in ".*") {
            let e = Esc(&s).to_string();
            proptest::prop_assert!(!e.contains(['<', '>', '"', '\'']));
            // Every `&` starts one of our entities.
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                proptest::prop_assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|x| rest.starts_with(x))
                );
            }
        }
    }

    #[test]
    fn each_copy_shows_the_reports_drill_verdict() {
        let mut d = dataset("node-a1", "tank/db", RpoState::Ok, true);
        d.copies[1].verification = Verification::Failed {
            ended_at: NOW - 86_400,
            why: Some("digests <differ>".into()),
        };
        let mut stale = d.copies[1].clone();
        stale.node = "node-c1".into();
        stale.verification = Verification::Stale {
            passed_at: NOW - 120 * 86_400,
        };
        d.copies.push(stale);
        let r = report(vec![d]);
        let html = render(&input(Some(&r), &[], &[], &[]));
        assert!(
            html.contains(
                "<span class=\"badge fail\">drill failed</span> last drill failed on 2027-01-14: \
             digests &lt;differ&gt;"
            ),
            "{html}"
        );
        assert!(
            html.contains("last passed drill is 120d old, interval 90d"),
            "{html}"
        );
    }

    #[test]
    fn datasets_come_worst_first() {
        let ds = vec![
            dataset("n1", "tank/ok", RpoState::Ok, true),
            dataset("n1", "tank/ok-but-not-321", RpoState::Ok, false),
            dataset("n1", "tank/breach", RpoState::Breach, false),
            dataset("n1", "tank/warn", RpoState::Warning, true),
        ];
        let names: Vec<&str> = order(&ds).iter().map(|d| d.dataset.as_str()).collect();
        assert_eq!(
            names,
            ["tank/breach", "tank/warn", "tank/ok-but-not-321", "tank/ok"]
        );
    }

    #[test]
    fn only_jobs_under_way_retrying_or_blocked_are_shown() {
        assert_eq!(job_standing(&job(JobState::Running, None)), Some("running"));
        assert_eq!(job_standing(&job(JobState::Planned, None)), Some("planned"));
        assert_eq!(
            job_standing(&job(JobState::Failed, Some(5))),
            Some("retrying")
        );
        assert_eq!(job_standing(&job(JobState::Blocked, None)), Some("blocked"));
        assert_eq!(job_standing(&job(JobState::Failed, None)), None);
        assert_eq!(job_standing(&job(JobState::Done, None)), None);
    }

    fn input<'a>(
        r: Option<&'a Report>,
        nodes: &'a [NodeLine],
        jobs: &'a [JobRecord],
        alerts: &'a [Tracked],
    ) -> Input<'a> {
        Input {
            now: NOW,
            leader: true,
            policy_revision: Some(4),
            policy_problem: None,
            report: r,
            nodes,
            jobs,
            alerts,
        }
    }

    #[test]
    fn the_page_shows_copies_states_verdicts_jobs_and_alerts_and_escapes_every_name() {
        let r = report(vec![
            dataset("node-a1", HOSTILE, RpoState::Breach, false),
            dataset("node-a1", "tank/fine", RpoState::Ok, true),
        ]);
        let nodes = [NodeLine {
            node: "node-a1".into(),
            site: "site-a".into(),
            media: "ssd".into(),
            online: false,
            last_seen: NOW - 300,
            pools: vec![PoolInfo {
                name: "tank".into(),
                size: 100 << 30,
                allocated: 85 << 30,
                free: 15 << 30,
                health: "ONLINE".into(),
            }],
        }];
        let jobs = [job(JobState::Running, None), job(JobState::Done, None)];
        let alert = Tracked {
            alert: Alert::new(
                [
                    ("alertname".to_string(), "ZdrCopyRpoBreach".to_string()),
                    ("severity".to_string(), "critical".to_string()),
                ]
                .into(),
                format!("{HOSTILE} on node-b1 is 2h behind"),
            ),
            starts_at: NOW - 600,
            last_sent: NOW,
            last_firing: NOW,
        };
        let html = render(&input(
            Some(&r),
            &nodes,
            &jobs,
            std::slice::from_ref(&alert),
        ));

        // No hostile name got through as markup.
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>1"), "{html}");
        assert!(html.contains("tank/&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"));
        // Nothing external.
        for external in [
            "<script", "<link", "<img", "<iframe", "url(", "@import", "http:", "https:",
        ] {
            assert!(!html.contains(external), "{external} in {html}");
        }
        // The breached dataset first, its replica in red, the verdict.
        let breach = html.find("data-state=\"breach\"").unwrap();
        let fine = html.find("data-dataset=\"tank/fine\"").unwrap();
        assert!(breach < fine);
        assert!(html.contains(
            "<tr class=\"copy state-breach\" data-role=\"replica\" data-node=\"node-b1\" \
             data-state=\"breach\">"
        ));
        assert!(html.contains(".state-breach{background:#ffd7d5}"));
        assert!(html.contains("2h / 1h (200 %)"));
        assert!(html.contains("3-2-1: NOT compliant"));
        assert!(html.contains("3-2-1: compliant"));
        assert!(html.contains("<span class=\"mark offsite\">offsite</span>"));
        assert!(html.contains("<span class=\"mark immutable\">immutable</span>"));
        assert!(html.contains("<span class=\"badge pass\">verified</span> by a drill 1h ago"));
        assert!(html.contains("last job failed: &lt;img"));
        // One job under way, with its progress; the done one is history.
        assert_eq!(html.matches("<tr class=\"job").count(), 1);
        assert!(html.contains("<progress value=\"536870912\" max=\"1073741824\"></progress>"));
        assert!(html.contains("512.0 MiB of 1.0 GiB (50 %)"));
        // The alert, and the offline node.
        assert!(html.contains(
            "<tr class=\"alert state-breach\"><td>critical</td><td>ZdrCopyRpoBreach</td>"
        ));
        assert!(html.contains("OFFLINE"));
        assert!(html.contains("tank 85 % of 100.0 GiB (ONLINE)"));
    }

    #[test]
    fn without_a_policy_or_as_standby_the_page_says_so() {
        let mut i = input(None, &[], &[], &[]);
        i.leader = false;
        i.policy_problem = Some("policies.yaml:3:1: <bad>");
        let html = render(&i);
        assert!(html.contains("id=\"no-policy\""));
        assert!(html.contains("id=\"standby\""));
        assert!(html.contains("policies.yaml:3:1: &lt;bad&gt;"));
        assert!(!html.contains("Protected datasets"));
    }

    #[test]
    fn a_large_fleet_is_cut_and_the_page_says_how_much() {
        let ds: Vec<DatasetReport> = (0..MAX_DATASETS + 5)
            .map(|i| dataset("n1", &format!("tank/d{i:04}"), RpoState::Ok, true))
            .collect();
        let r = report(ds);
        let html = render(&input(Some(&r), &[], &[], &[]));
        assert_eq!(
            html.matches("<section class=\"dataset\"").count(),
            MAX_DATASETS
        );
        assert!(html.contains("5 more datasets (the healthiest) not shown; zdr report"));
    }
}
