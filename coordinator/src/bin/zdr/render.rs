//! Human output: pure functions from what the API answered (and the time
//! now, passed in) to text.

use indicatif::HumanBytes;
use zdr_coordinator::jobs::{JobRecord, JobState};

use crate::api::{
    FleetView, PairingsView, Place, RestoreAccepted, RestorePoints, RestoreState, RestoreStatus,
};

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub use zdr_coordinator::compliance::short;

pub fn when(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn place(p: &Place) -> String {
    format!("{}:{}", p.node, p.dataset)
}

/// `zdr status`.
pub fn render_status(f: &FleetView) -> String {
    let mut out = String::new();
    let revision = opt(f.policy_revision);
    if f.leader {
        out.push_str(&format!(
            "coordinator: leader, epoch {}, policy revision {revision}\n",
            f.epoch
        ));
    } else {
        out.push_str(&format!(
            "coordinator: STANDBY (epoch {}, policy revision {revision}): its view may be stale; \
             point --coordinator at the leader\n",
            f.epoch
        ));
    }
    let online = f.nodes.iter().filter(|n| n.online).count();
    out.push_str(&format!("\nnodes: {online} of {} online\n", f.nodes.len()));
    let rows: Vec<Vec<String>> = f
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.site.clone(),
                n.media.clone(),
                n.backend.clone(),
                if n.online { "online" } else { "OFFLINE" }.into(),
                format!("{} ago", short(f.generated_at - n.last_seen)),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "SITE", "MEDIA", "BACKEND", "STATE", "LAST SEEN"],
        &rows,
    ));
    for n in &f.nodes {
        if let Some(r) = &n.policy_refused {
            out.push_str(&format!(
                "{} REFUSES policy revision {} ({}), stays on revision {}; see \
                 ops/runbooks/key-rotation.md\n",
                n.node,
                opt(r.revision),
                serde_json::to_value(r.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                opt(n.policy_revision),
            ));
        }
    }

    let mut rows = Vec::new();
    let (mut met, mut missed, mut unprotected) = (0, 0, 0);
    for n in &f.nodes {
        for d in &n.datasets {
            let state = match (d.rpo_met, &d.class, &d.replica_of) {
                (Some(true), _, _) => {
                    met += 1;
                    "ok".to_string()
                }
                (Some(false), _, _) => {
                    missed += 1;
                    "RPO MISSED".to_string()
                }
                (None, None, Some(r)) => {
                    format!("replica of {}:{} ({})", r.source_node, r.dataset, r.task)
                }
                (None, None, None) => {
                    unprotected += 1;
                    "unprotected".to_string()
                }
                (None, Some(_), _) => "no RPO".to_string(),
            };
            rows.push(vec![
                n.node.clone(),
                d.dataset.clone(),
                opt(d.class.as_deref()),
                opt(d.newest.as_deref()),
                opt(d.newest_age_secs.map(short)),
                opt(d.rpo_secs.map(|r| short(r as i64))),
                HumanBytes(d.used).to_string(),
                state,
            ]);
        }
    }
    out.push_str(&format!(
        "\ndatasets: {met} within RPO, {missed} missed, {unprotected} unprotected\n"
    ));
    out.push_str(&table(
        &[
            "NODE",
            "DATASET",
            "CLASS",
            "NEWEST SNAPSHOT",
            "LAG",
            "RPO",
            "USED",
            "STATE",
        ],
        &rows,
    ));
    out
}

fn progress(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!(
            "{} / {} ({}%)",
            HumanBytes(done),
            HumanBytes(t),
            (done.min(t) * 100) / t
        ),
        _ => HumanBytes(done).to_string(),
    }
}

pub fn job_state(s: JobState) -> &'static str {
    match s {
        JobState::Planned => "planned",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "FAILED",
        JobState::Blocked => "BLOCKED",
    }
}

/// `zdr jobs`; `now_ms` for the time to the next retry.
pub fn render_jobs(jobs: &[JobRecord], now_ms: i64) -> String {
    if jobs.is_empty() {
        return "no jobs (`zdr pairings` shows what is paired for replication)\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let running = j.state == JobState::Running;
            vec![
                j.task.clone(),
                format!("{}:{}", j.source_node, j.dataset),
                format!("{}:{}", j.target_node, j.target_dataset),
                job_state(j.state).into(),
                format!(
                    "{}/{}",
                    (j.step + 1).min(j.steps.len().max(1)),
                    j.steps.len()
                ),
                progress(j.bytes, j.size_hint),
                if running {
                    format!("{}/s", HumanBytes(j.bytes_per_sec))
                } else {
                    "-".into()
                },
                if running {
                    opt(j.eta_secs.map(|s| short(s as i64)))
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "TASK", "SOURCE", "TARGET", "STATE", "STEP", "PROGRESS", "RATE", "ETA",
        ],
        &rows,
    );
    for j in jobs.iter().filter(|j| j.error.is_some()) {
        let retry = match (j.state, j.next_attempt_at_ms) {
            (JobState::Failed, Some(at)) => {
                format!(
                    " (attempt {}; next in {})",
                    j.attempt,
                    short((at - now_ms).max(0) / 1000)
                )
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{} {}:{}: {}{retry}\n",
            j.task,
            j.source_node,
            j.dataset,
            j.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// `zdr pairings`.
pub fn render_pairings(p: &PairingsView) -> String {
    let mut out = if p.pairings.is_empty() {
        "no pairings (no task selects a dataset, or no tasks file)\n".to_string()
    } else {
        let rows: Vec<Vec<String>> = p
            .pairings
            .iter()
            .map(|x| {
                vec![
                    x.task.clone(),
                    format!("{}:{}", x.source_node, x.dataset),
                    format!("{}:{}", x.target_node, x.target_dataset),
                    x.reason.clone(),
                ]
            })
            .collect();
        table(&["TASK", "SOURCE", "TARGET", "WHY"], &rows)
    };
    if !p.unpaired.is_empty() {
        let rows: Vec<Vec<String>> = p
            .unpaired
            .iter()
            .map(|u| {
                vec![
                    u.task.clone(),
                    format!("{}:{}", u.source_node, u.dataset),
                    u.why.clone(),
                ]
            })
            .collect();
        out.push_str(&format!("\nunpaired: {}\n", p.unpaired.len()));
        out.push_str(&table(&["TASK", "SOURCE", "WHY NOT"], &rows));
    }
    out
}

/// `zdr restore-points`.
pub fn render_restore_points(rp: &RestorePoints, now: i64) -> String {
    let mut out = format!(
        "{}:{}: {} cop{}\n",
        rp.node,
        rp.dataset,
        rp.copies.len(),
        if rp.copies.len() == 1 { "y" } else { "ies" }
    );
    for c in &rp.copies {
        out.push_str(&format!(
            "\n{} {}:{} (site {}, {}), {}{}, {} snapshot(s)\n",
            c.copy,
            c.node,
            c.dataset,
            c.site,
            c.media,
            if c.online { "online" } else { "OFFLINE" },
            if c.raw { ", raw-encrypted" } else { "" },
            c.snapshots.len()
        ));
        let rows: Vec<Vec<String>> = c
            .snapshots
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    when(s.creation),
                    format!("{} ago", short(now - s.creation)),
                    s.guid.to_string(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&table(&["SNAPSHOT", "CREATED", "AGE", "GUID"], &rows));
        }
    }
    out
}

/// `zdr restores`.
pub fn render_restores(list: &[RestoreStatus], now: i64) -> String {
    if list.is_empty() {
        return "no restores\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.job.clone(),
                r.state.as_str().into(),
                format!("{}@{}", place(&r.from), r.snapshot.name),
                place(&r.to),
                progress(r.bytes, r.estimated_bytes),
                format!("{} ago", short(now - r.started)),
                opt(r.finished.map(|f| short(f - r.started))),
            ]
        })
        .collect();
    let mut out = table(
        &["JOB", "STATE", "FROM", "TO", "PROGRESS", "STARTED", "TOOK"],
        &rows,
    );
    for r in list {
        if let Some(e) = &r.error {
            out.push_str(&format!("{}: {e}\n", r.job));
        }
    }
    out
}

/// What `zdr restore` prints once the coordinator took the job.
pub fn render_restore_accepted(a: &RestoreAccepted) -> String {
    format!(
        "restore {}: {}@{} (taken {}) -> {}\n",
        a.job,
        place(&a.from),
        a.snapshot.name,
        when(a.snapshot.creation),
        place(&a.to)
    )
}

/// Whether a finished restore gave back the snapshot asked for: done, and
/// the landed GUID is the source snapshot's.
pub fn verdict(s: &RestoreStatus) -> Result<(), String> {
    match (s.state, s.landed_guid) {
        (RestoreState::Done, Some(g)) if g == s.snapshot.guid => Ok(()),
        (RestoreState::Done, Some(g)) => Err(format!(
            "restore {} landed GUID {g}, but the source snapshot {}@{} has GUID {}: \
             the data is not that snapshot; do not use {} and report this",
            s.job,
            place(&s.from),
            s.snapshot.name,
            s.snapshot.guid,
            place(&s.to)
        )),
        (RestoreState::Done, None) => Err(format!(
            "restore {} is done but the coordinator reports no landed GUID to check against \
             the source snapshot's {}; check {} by hand",
            s.job,
            s.snapshot.guid,
            place(&s.to)
        )),
        (state, _) => Err(format!(
            "restore {} {}: {}",
            s.job,
            state.as_str(),
            s.error.as_deref().unwrap_or("(no error given)")
        )),
    }
}

/// ZFS names hold no quote, `$` or backslash (see `zdr_common::dataset`);
/// a space is the one character a shell would split on.
pub fn shell_quote(s: &str) -> String {
    if s.contains(' ') {
        format!("'{s}'")
    } else {
        s.to_string()
    }
}

/// What `zdr restore` prints after a restore that passed [`verdict`];
/// `raw`: the copy was raw-encrypted, so the data landed locked.
pub fn render_restore_done(s: &RestoreStatus, raw: bool) -> String {
    let mut out = format!(
        "restored {} from {}@{}: {}{}, landed GUID {} = source snapshot's\n",
        place(&s.to),
        place(&s.from),
        s.snapshot.name,
        HumanBytes(s.bytes),
        s.finished
            .map(|f| format!(" in {}", short(f - s.started)))
            .unwrap_or_default(),
        s.snapshot.guid
    );
    if raw {
        let ds = shell_quote(&s.to.dataset);
        out.push_str(&format!(
            "The copy is raw-encrypted and landed as it is, locked. To read it, on {} run:\n  \
             zfs load-key {ds}\n  zfs mount {ds}\n",
            s.to.node
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FleetView, PairingsView, RestoreAccepted, RestorePoints, RestoresView};
    use crate::client::decode;

    const FLEET: &str = r#"{"generated_at":1000,"leader":true,"epoch":3,"policy_revision":2,
      "nodes":[
       {"node":"node-a1","site":"site-a","media":"ssd","backend":"sim","version":"0.1.0",
        "online":true,"last_seen":998,"policy_revision":2,"pools":[],
        "datasets":[
          {"dataset":"tank/db","class":"fast","snapshots":["zdr_a"],"newest":"zdr_a",
           "newest_age_secs":5,"rpo_secs":10,"rpo_met":true,"used":1048576},
          {"dataset":"tank/scratch","class":null,"snapshots":[],"newest":null,
           "newest_age_secs":null,"rpo_secs":null,"rpo_met":null,"used":0}]},
       {"node":"node-b1","site":"site-b","media":"hdd","backend":"sim","version":"0.1.0",
        "online":false,"last_seen":700,"policy_revision":1,"pools":[],
        "policy_refused":{"reason":"untrusted_key","revision":null,"at":900},
        "datasets":[
          {"dataset":"tank/db","class":"fast","snapshots":["zdr_b"],"newest":"zdr_b",
           "newest_age_secs":300,"rpo_secs":10,"rpo_met":false,"used":0},
          {"dataset":"backup/node-a1/tank/db","class":null,"snapshots":["zdr_a"],"newest":"zdr_a",
           "newest_age_secs":5,"rpo_secs":null,"rpo_met":null,"used":0,
           "replica_of":{"task":"offsite","source_node":"node-a1","dataset":"tank/db"}}]}]}"#;

    #[test]
    fn status_counts_nodes_and_rpo_and_shows_lag() {
        let f: FleetView = decode("u", FLEET).unwrap();
        let out = render_status(&f);
        assert!(
            out.starts_with("coordinator: leader, epoch 3, policy revision 2\n"),
            "{out}"
        );
        assert!(out.contains("nodes: 1 of 2 online\n"), "{out}");
        assert!(
            out.contains(
                "\nnode-b1 REFUSES policy revision - (untrusted_key), stays on revision 1; see"
            ),
            "{out}"
        );
        assert!(
            out.contains("datasets: 1 within RPO, 1 missed, 1 unprotected\n"),
            "{out}"
        );
        let line = |node: &str, ds: &str| {
            out.lines()
                .find(|l| l.starts_with(node) && l.contains(ds))
                .unwrap_or_else(|| panic!("no line for {node} {ds}: {out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("node-a1", "tank/db"),
            ["node-a1", "tank/db", "fast", "zdr_a", "5s", "10s", "1.00", "MiB", "ok"]
        );
        assert_eq!(
            line("node-b1", "tank/db"),
            ["node-b1", "tank/db", "fast", "zdr_b", "5m", "10s", "0", "B", "RPO", "MISSED"]
        );
        assert_eq!(
            line("node-b1", "OFFLINE"),
            ["node-b1", "site-b", "hdd", "sim", "OFFLINE", "5m", "ago"]
        );
        assert!(line("node-a1", "tank/scratch").ends_with(&["unprotected"]));
        assert!(line("node-b1", "backup/node-a1/tank/db").ends_with(&[
            "replica",
            "of",
            "node-a1:tank/db",
            "(offsite)"
        ]));
    }

    #[test]
    fn a_standby_says_so() {
        let f: FleetView =
            decode("u", &FLEET.replace(r#""leader":true"#, r#""leader":false"#)).unwrap();
        assert!(render_status(&f).starts_with("coordinator: STANDBY"));
    }

    #[test]
    fn columns_line_up() {
        let t = table(
            &["A", "B", "C"],
            &[vec!["long-cell".into(), "x".into(), "end".into()]],
        );
        assert_eq!(t, "A          B  C\nlong-cell  x  end\n");
    }

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(short(9), "9s");
        assert_eq!(short(920), "15m20s");
        assert_eq!(short(3 * 86_400 + 4 * 3_600 + 5), "3d4h");
        assert_eq!(short(-4), "0s");
    }

    fn job(state: &str, error: Option<&str>) -> String {
        format!(
            r#"{{"id":"j1","task":"offsite","source_node":"node-a1","dataset":"tank/db",
            "target_node":"node-b1","target_dataset":"backup/node-a1/tank/db","state":"{state}",
            "steps":[],"step":0,"attempt":2,"attempt_id":"j1.2","resumed":false,
            "discard_partial":false,"bytes":1048576,"size_hint":4194304,"bytes_per_sec":524288,
            "eta_secs":6,"rate_limit":null,"error":{},"started_at_ms":0,"updated_at_ms":0,
            "finished_at_ms":null,"next_attempt_at_ms":60000,"last_success_ms":null,
            "history":[]}}"#,
            serde_json::to_string(&error).unwrap()
        )
    }

    #[test]
    fn jobs_show_progress_rate_eta_and_errors() {
        let body = format!(
            r#"{{"jobs":[{},{}]}}"#,
            job("running", None),
            job("failed", Some("target node-b1: pool full"))
        );
        let jobs: crate::api::JobsView = decode("u", &body).unwrap();
        let out = render_jobs(&jobs.jobs, 30_000);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("TASK"));
        assert!(
            lines[1].contains("running")
                && lines[1].contains("1.00 MiB / 4.00 MiB (25%)")
                && lines[1].contains("512.00 KiB/s")
                && lines[1].ends_with("6s"),
            "{out}"
        );
        assert!(lines[2].contains("FAILED"), "{out}");
        assert_eq!(
            lines[3],
            "offsite node-a1:tank/db: target node-b1: pool full (attempt 2; next in 30s)"
        );
        assert!(render_jobs(&[], 0).starts_with("no jobs"));
    }

    #[test]
    fn pairings_and_unpaired() {
        let p: PairingsView = decode(
            "u",
            r#"{"pairings":[{"task":"offsite","source_node":"node-a1","dataset":"tank/db",
              "target_node":"node-b1","target_dataset":"backup/node-a1/tank/db","reason":"first choice"}],
              "unpaired":[{"task":"local","source_node":"node-a1","dataset":"tank/db",
              "why":"no node with different media in site-a"}]}"#,
        )
        .unwrap();
        let out = render_pairings(&p);
        assert!(
            out.contains("offsite  node-a1:tank/db  node-b1:backup/node-a1/tank/db  first choice"),
            "{out}"
        );
        assert!(out.contains("unpaired: 1\n"), "{out}");
        assert!(
            out.contains("local  node-a1:tank/db  no node with different media in site-a"),
            "{out}"
        );
    }

    const POINTS: &str = r#"{"node":"node-a1","dataset":"tank/db","copies":[
      {"copy":"production","node":"node-a1","site":"site-a","media":"ssd","dataset":"tank/db",
       "online":true,"raw":false,"snapshots":[
         {"name":"zdr_20261205T070000Z","guid":123,"creation":1764918000,"createtxg":55}]},
      {"copy":"replica","node":"node-b1","site":"site-b","media":"hdd",
       "dataset":"backup/node-a1/tank/db","online":false,"raw":true,"snapshots":[]}]}"#;

    #[test]
    fn restore_points_per_copy() {
        let rp: RestorePoints = decode("u", POINTS).unwrap();
        let out = render_restore_points(&rp, 1764918000 + 7200);
        assert!(out.starts_with("node-a1:tank/db: 2 copies\n"), "{out}");
        assert!(
            out.contains("production node-a1:tank/db (site site-a, ssd), online, 1 snapshot(s)\n"),
            "{out}"
        );
        assert!(
            out.contains("zdr_20261205T070000Z  2025-12-05 07:00:00Z  2h ago  123\n"),
            "{out}"
        );
        assert!(out.contains(
            "replica node-b1:backup/node-a1/tank/db (site site-b, hdd), OFFLINE, raw-encrypted, 0 snapshot(s)\n"
        ), "{out}");
    }

    fn status(state: &str, landed: Option<u64>, error: Option<&str>) -> RestoreStatus {
        decode(
            "u",
            &format!(
                r#"{{"job":"r-7","state":"{state}","from":{{"node":"node-b1","dataset":"backup/node-a1/tank/db"}},
                "to":{{"node":"node-a1","dataset":"tank/db restored"}},
                "snapshot":{{"name":"zdr_x","guid":42,"creation":1000}},
                "bytes":2048,"estimated_bytes":4096,"started":1000,"finished":1065,
                "landed_guid":{},"error":{}}}"#,
                serde_json::to_string(&landed).unwrap(),
                serde_json::to_string(&error).unwrap()
            ),
        )
        .unwrap()
    }

    #[test]
    fn the_verdict_checks_the_landed_guid() {
        assert_eq!(verdict(&status("done", Some(42), None)), Ok(()));
        let e = verdict(&status("done", Some(41), None)).unwrap_err();
        assert!(
            e.contains("landed GUID 41") && e.contains("has GUID 42"),
            "{e}"
        );
        assert!(verdict(&status("done", None, None)).is_err());
        let e = verdict(&status("failed", None, Some("source node-b1 went offline"))).unwrap_err();
        assert_eq!(e, "restore r-7 failed: source node-b1 went offline");
    }

    #[test]
    fn unknown_states_are_not_final() {
        let s = status("verifying", None, None);
        assert_eq!(s.state, RestoreState::Other);
        assert!(!s.state.finished());
        assert!(status("failed", None, None).state.finished());
    }

    #[test]
    fn a_raw_restore_says_how_to_load_the_key() {
        let s = status("done", Some(42), None);
        let plain = render_restore_done(&s, false);
        assert_eq!(
            plain,
            "restored node-a1:tank/db restored from node-b1:backup/node-a1/tank/db@zdr_x: \
             2.00 KiB in 1m5s, landed GUID 42 = source snapshot's\n"
        );
        let raw = render_restore_done(&s, true);
        assert!(
            raw.contains("on node-a1 run:\n  zfs load-key 'tank/db restored'\n"),
            "{raw}"
        );
    }

    #[test]
    fn restores_list_and_accepted() {
        let v: RestoresView = decode(
            "u",
            &format!(
                r#"{{"restores":[{}]}}"#,
                serde_json::to_string(&serde_json::json!({
                    "job":"r-7","state":"failed","from":{"node":"n2","dataset":"b/db"},
                    "to":{"node":"n1","dataset":"tank/r"},
                    "snapshot":{"name":"s1","guid":1,"creation":0},"bytes":10,
                    "estimated_bytes":null,"started":100,"finished":160,"landed_guid":null,
                    "error":"n2 offline"}))
                .unwrap()
            ),
        )
        .unwrap();
        let out = render_restores(&v.restores, 400);
        assert_eq!(
            out,
            "JOB  STATE   FROM        TO         PROGRESS  STARTED  TOOK\n\
             r-7  failed  n2:b/db@s1  n1:tank/r  10 B      5m ago   1m\n\
             r-7: n2 offline\n"
        );
        let a: RestoreAccepted = decode(
            "u",
            r#"{"job":"r-8","from":{"node":"n2","dataset":"b/db"},
               "snapshot":{"name":"s1","guid":1,"creation":0},"to":{"node":"n1","dataset":"tank/r"}}"#,
        )
        .unwrap();
        assert_eq!(
            render_restore_accepted(&a),
            "restore r-8: n2:b/db@s1 (taken 1970-01-01 00:00:00Z) -> n1:tank/r\n"
        );
        assert!(render_restores(&[], 0).starts_with("no restores"));
    }
}
