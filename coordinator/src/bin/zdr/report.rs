//! `zdr report` as Markdown: a pure function of `GET /api/v1/report`.

use indicatif::HumanBytes;
use zdr_coordinator::compliance::{CopyReport, DatasetReport, Report, Role, Verification};

use crate::render::{job_state, opt, short, when};
use zdr_coordinator::compliance::in_days;

/// A Markdown table; `|` in a cell is escaped, line breaks become spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push_str(&line(header.iter().map(|_| "---".to_string()).collect()));
    for r in rows {
        out.push_str(&line(r.iter().map(|c| cell(c)).collect()));
    }
    out
}

pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn copy_row(c: &CopyReport, now: i64, every_secs: u64) -> Vec<String> {
    let role = match (&c.role, &c.replication) {
        (Role::Production, _) => "production".to_string(),
        (Role::Replica, Some(r)) => format!("replica ({})", r.task),
        (Role::Replica, None) => "replica".to_string(),
        (Role::Bucket, Some(r)) => format!("bucket ({})", r.task),
        (Role::Bucket, None) => "bucket".to_string(),
    };
    vec![
        role,
        format!("{}{}", c.node, if c.online { "" } else { " (OFFLINE)" }),
        c.site.clone(),
        c.media.clone(),
        c.dataset.clone(),
        opt(c
            .newest
            .as_ref()
            .map(|s| format!("{} ({})", s.name, when(s.creation)))),
        opt(c.lag_secs.map(short)),
        if c.rpo == zdr_coordinator::compliance::RpoState::Ok {
            "ok".into()
        } else {
            format!("**{}**", c.rpo.as_str())
        },
        match &c.verification {
            Verification::Source => "-".into(),
            v if v.is_verified() => v.describe(now, every_secs),
            v => format!("**{}**", v.describe(now, every_secs)),
        },
    ]
}

/// One row per copy: where it is, its newest confirmed snapshot, its lag,
/// its drill verdict (`now` and the class's drill interval date it).
pub fn copies_table(copies: &[CopyReport], now: i64, every_secs: u64) -> String {
    let rows: Vec<Vec<String>> = copies
        .iter()
        .map(|c| copy_row(c, now, every_secs))
        .collect();
    table(
        &[
            "Copy",
            "Node",
            "Site",
            "Media",
            "Dataset",
            "Newest confirmed snapshot",
            "Lag",
            "RPO",
            "Restore drill",
        ],
        &rows,
    )
}

fn replication_rows(d: &DatasetReport) -> Vec<Vec<String>> {
    d.copies
        .iter()
        .filter_map(|c| Some((c, c.replication.as_ref()?)))
        .map(|(c, r)| {
            let job = r.last_job.as_ref();
            vec![
                r.task.clone(),
                format!("{}:{}", c.node, c.dataset),
                format!(
                    "{}, {}",
                    plural(r.pending_snapshots, "snapshot", "snapshots"),
                    HumanBytes(r.pending_bytes)
                ),
                opt(job.map(|j| job_state(j.state))),
                opt(job
                    .and_then(|j| j.last_success_ms)
                    .map(|ms| when(ms / 1000))),
                opt(job.and_then(|j| j.error.clone())),
            ]
        })
        .collect()
}

fn dataset(d: &DatasetReport, now: i64) -> String {
    let mut out = format!(
        "## {}:{}: {}, RPO {}\n\n",
        d.node,
        d.dataset,
        if d.compliant {
            "3-2-1 compliant"
        } else {
            "NOT 3-2-1 compliant"
        },
        d.rpo.as_str()
    );
    out.push_str(&format!(
        "Class `{}`: RPO {}, RTO {} (the objective), snapshots immutable for {}, \
         a restore drill every {}.\n\nRTO estimate: {}.\n\n",
        d.class,
        short(d.rpo_secs as i64),
        short(d.rto_secs as i64),
        short(d.immutable_for_secs as i64),
        in_days(d.drill_every_secs as i64),
        d.rto_estimate.describe(d.rto_secs)
    ));
    out.push_str(&copies_table(&d.copies, now, d.drill_every_secs));
    let rows = replication_rows(d);
    if !rows.is_empty() {
        out.push_str("\nReplication:\n\n");
        out.push_str(&table(
            &[
                "Task",
                "Copy",
                "Still to send",
                "Last job",
                "Last success",
                "Error",
            ],
            &rows,
        ));
    }
    out.push_str("\n3-2-1:\n\n");
    let rows: Vec<Vec<String>> = d
        .checks
        .iter()
        .map(|c| {
            vec![
                c.check.as_str().into(),
                if c.pass { "pass" } else { "**FAIL**" }.into(),
                format!("{} / {}", c.have, c.want),
                c.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["Check", "Result", "Have / want", "Why"], &rows));
    for u in &d.unpaired {
        out.push_str(&format!(
            "\nTask `{}` finds no target for this dataset: {}.\n",
            u.task, u.why
        ));
    }
    out.push_str(&format!("\nVerification: {}.\n", d.verification));
    out
}

/// `zdr report`.
pub fn render_report(r: &Report) -> String {
    let s = &r.summary;
    let mut out = format!(
        "# zdr report\n\nGenerated {} from the coordinator's live state.\n\n\
         {} of {} comply with 3-2-1. Copies: {} ok, {} warning, {} breach.\n\n\
         A copy's lag is the age of its newest snapshot that the source knows by GUID. \
         It is in warning from {} % of its class's RPO and in breach beyond it; \
         a copy counts toward 3-2-1 while within its RPO.\n",
        when(r.generated_at),
        s.compliant,
        plural(s.datasets, "protected dataset", "protected datasets"),
        s.copies_ok,
        s.copies_warning,
        s.copies_breach,
        r.warn_percent
    );
    if r.datasets.is_empty() {
        out.push_str("\nNo protected dataset: no dataset matches a class of the policy.\n");
    }
    for d in &r.datasets {
        out.push('\n');
        out.push_str(&dataset(d, r.generated_at));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::decode;

    /// The API's answer for a two-site fleet: one dataset with a current
    /// copy and a copy in breach behind a failing job, one never replicated.
    const REPORT: &str = include_str!("testdata/report.json");
    const GOLDEN: &str = include_str!("testdata/report.md");

    #[test]
    fn markdown_matches_the_golden_file() {
        let r: Report = decode("u", REPORT).unwrap();
        let out = render_report(&r);
        if out != GOLDEN {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/bin/zdr/testdata/report.md.new"
            );
            std::fs::write(path, &out).unwrap();
            panic!("the Markdown differs from testdata/report.md; see {path}:\n{out}");
        }
    }

    /// The fixture is exactly what the coordinator serializes: no field
    /// missing, renamed or left over, so `--format json` has this shape.
    #[test]
    fn the_json_fixture_is_the_api_shape() {
        let r: Report = decode("u", REPORT).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(REPORT).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), fixture);
    }

    #[test]
    fn pipes_in_cells_are_escaped() {
        let t = table(&["A"], &[vec!["x | y\nz".into()]]);
        assert_eq!(t, "| A |\n| --- |\n| x \\| y z |\n");
    }

    #[test]
    fn an_empty_report_says_why() {
        let r: Report = decode(
            "u",
            r#"{"generated_at":0,"warn_percent":75,"summary":{"datasets":0,"compliant":0,
            "copies_ok":0,"copies_warning":0,"copies_breach":0},"datasets":[]}"#,
        )
        .unwrap();
        let out = render_report(&r);
        assert!(out.contains("0 of 0 protected datasets comply"), "{out}");
        assert!(
            out.ends_with("no dataset matches a class of the policy.\n"),
            "{out}"
        );
    }
}
