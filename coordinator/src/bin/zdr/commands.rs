//! The subcommands: ask the API, then print its JSON as is (`--json`) or
//! the rendering of it.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use zdr_coordinator::compliance::Report;
use zdr_coordinator::plan::Plan;

use crate::api::{
    FleetView, JobsView, PairingsView, Place, RestoreAccepted, RestorePoints, RestoreStatus,
    RestoresView,
};
use crate::args::{Cli, Cmd, Format, Location, PolicyCmd, RestoreArgs};
use crate::client::{decode, Client, ClientError};
use crate::drill::{DrillStatus, DrillsView};
use crate::policy_check;
use crate::render;
use crate::runbook;

/// How often a running restore is asked for its progress.
const POLL: Duration = Duration::from_secs(1);
/// Polls in a row the coordinator may miss (a leader change takes a lease
/// TTL or two) before the watch gives up; the restore itself goes on.
const POLL_MISSES: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Restore(String),
    #[error(
        "lost track of restore {job}; it goes on without this command, follow it with `zdr restores`: {source}"
    )]
    Watch { job: String, source: ClientError },
    #[error(transparent)]
    Runbook(#[from] runbook::RunbookError),
    #[error("{0}")]
    Drill(String),
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    PolicyCheck(String),
}

pub fn run(cli: &Cli) -> Result<(), CliError> {
    let json = cli.json;
    // Offline: no coordinator, no token.
    if let Cmd::Policy {
        cmd: PolicyCmd::Check { files, strict },
    } = &cli.cmd
    {
        return policy_check(files, *strict, json);
    }
    let c = Client::new(&cli.coordinator)?.with_token_file(cli.token_file.as_deref())?;
    match &cli.cmd {
        Cmd::Status => show(&c, json, "/api/v1/fleet", |f: FleetView| {
            render::render_status(&f)
        }),
        Cmd::Jobs => show(&c, json, "/api/v1/jobs", |j: JobsView| {
            render::render_jobs(&j.jobs, chrono::Utc::now().timestamp_millis())
        }),
        Cmd::Pairings => show(&c, json, "/api/v1/pairings", |p: PairingsView| {
            render::render_pairings(&p)
        }),
        Cmd::Plan => show(&c, json, "/api/v1/plan", |p: Plan| {
            crate::plan::render_plan(&p)
        }),
        Cmd::RestorePoints { source } => show(
            &c,
            json,
            &restore_points_path(source),
            |rp: RestorePoints| render::render_restore_points(&rp, now()),
        ),
        Cmd::Restores => show(&c, json, "/api/v1/restores", |v: RestoresView| {
            render::render_restores(&v.restores, now())
        }),
        Cmd::Restore(a) => restore(&c, json, a),
        Cmd::Report { format, node } => show(
            &c,
            json || *format == Format::Json,
            &match node {
                Some(n) => format!("/api/v1/report?node={}", escape(n)),
                None => "/api/v1/report".to_string(),
            },
            |r: Report| crate::report::render_report(&r),
        ),
        Cmd::Runbook {
            source,
            all,
            format,
        } => runbook(&c, json || *format == Format::Json, source.as_ref(), *all),
        Cmd::Drill { cmd } => crate::drill::run(&c, json, cmd),
        Cmd::Policy { .. } => unreachable!("answered above, offline"),
    }
}

/// `zdr runbook`: built here from the report, so `--json` prints the
/// runbooks, not the report.
fn runbook(c: &Client, json: bool, source: Option<&Location>, all: bool) -> Result<(), CliError> {
    let body = c.get("/api/v1/report")?;
    let r: Report = decode(&c.url("/api/v1/report"), &body)?;
    // A coordinator without drills (older, or none run) leaves the line out.
    let drills: Vec<DrillStatus> = c
        .get("/api/v1/drills")
        .ok()
        .and_then(|b| decode::<DrillsView>(&c.url("/api/v1/drills"), &b).ok())
        .map(|v| v.drills)
        .unwrap_or_default();
    let books = match source {
        Some(l) if !all => vec![runbook::runbook_of(
            &r.datasets,
            &l.node,
            l.dataset.as_str(),
            r.generated_at,
        )?],
        _ => r
            .datasets
            .iter()
            .map(|d| runbook::runbook(d, r.generated_at))
            .collect::<Result<_, _>>()?,
    };
    let books: Vec<runbook::Runbook> = books
        .into_iter()
        .map(|b| runbook::with_last_drill(b, &drills))
        .collect();
    if json {
        let v = match (all, books.as_slice()) {
            (false, [one]) => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&books),
        };
        return print_json(&v.expect("runbooks serialize"));
    }
    print(&if all {
        runbook::markdown_all(&books)
    } else {
        books.iter().map(runbook::markdown).collect()
    })
}

/// `zdr policy check`: the report on stdout; failing, the count as the error.
fn policy_check(files: &[String], strict: bool, json: bool) -> Result<(), CliError> {
    let inputs: Vec<policy_check::Input> = files
        .iter()
        .map(|f| {
            let arg = policy_check::parse_arg(f);
            let text = policy_check::read_bounded(std::path::Path::new(&arg.path));
            policy_check::Input { arg, text }
        })
        .collect();
    let o = policy_check::check(&inputs);
    if json {
        print_json(&serde_json::to_string_pretty(&o).expect("the outcome serializes"))?;
    } else {
        print(&policy_check::render(&o))?;
    }
    if o.failed(strict) {
        return Err(CliError::PolicyCheck(format!(
            "{} error{} and {} warning{}{}",
            o.errors,
            if o.errors == 1 { "" } else { "s" },
            o.warnings,
            if o.warnings == 1 { "" } else { "s" },
            if strict && o.errors == 0 {
                " (--strict: warnings fail)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Writes to stdout; a closed pipe (`zdr jobs | head`) is not an error.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

pub(crate) fn print_json(body: &str) -> Result<(), CliError> {
    if body.ends_with('\n') {
        print(body)
    } else {
        print(&format!("{body}\n"))
    }
}

pub(crate) fn show<T: DeserializeOwned>(
    c: &Client,
    json: bool,
    path: &str,
    render: impl FnOnce(T) -> String,
) -> Result<(), CliError> {
    let body = c.get(path)?;
    if json {
        return print_json(&body);
    }
    let v = decode(&c.url(path), &body)?;
    print(&render(v))
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn restore_points_path(l: &Location) -> String {
    format!(
        "/api/v1/restore-points?node={}&dataset={}",
        escape(&l.node),
        escape(l.dataset.as_str())
    )
}

fn restore(c: &Client, json: bool, a: &RestoreArgs) -> Result<(), CliError> {
    let request = serde_json::to_string(&a.request()).expect("a struct of strings serializes");
    let body = c.post("/api/v1/restores", &request)?;
    let accepted: RestoreAccepted = decode(&c.url("/api/v1/restores"), &body)?;
    if a.no_wait {
        return if json {
            print_json(&body)
        } else {
            print(&format!(
                "{}follow it with `zdr restores`\n",
                render::render_restore_accepted(&accepted)
            ))
        };
    }
    if !json {
        print(&render::render_restore_accepted(&accepted))?;
    }
    let (status, body) = watch(c, &accepted.job, !json)?;
    if json {
        print_json(&body)?;
    }
    render::verdict(&status).map_err(CliError::Restore)?;
    if !json {
        let raw = match status
            .raw
            .map_or_else(|| copy_is_raw(c, &a.source, &status.from), Ok)
        {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("zdr: cannot tell whether the copy is raw-encrypted: {e}");
                false
            }
        };
        print(&render::render_restore_done(&status, raw))?;
    }
    Ok(())
}

/// Whether the copy restored from is raw-encrypted (it then landed locked).
fn copy_is_raw(c: &Client, source: &Location, from: &Place) -> Result<bool, ClientError> {
    let path = restore_points_path(source);
    let rp: RestorePoints = decode(&c.url(&path), &c.get(&path)?)?;
    Ok(rp
        .copies
        .iter()
        .any(|x| x.raw && x.node == from.node && x.dataset == from.dataset))
}

/// Polls the job until it is done or failed, with a progress bar on a
/// terminal; returns the last status and its body.
fn watch(c: &Client, job: &str, bar: bool) -> Result<(RestoreStatus, String), CliError> {
    let path = format!("/api/v1/restores/{}", escape(job));
    let pb = if bar {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(spinner_style());
    pb.enable_steady_tick(Duration::from_millis(200));
    let mut misses = 0;
    loop {
        match c.get(&path) {
            Ok(body) => {
                misses = 0;
                let s: RestoreStatus = decode(&c.url(&path), &body).map_err(|e| {
                    pb.abandon();
                    CliError::Client(e)
                })?;
                if let Some(total) = s.estimated_bytes.filter(|t| *t > 0) {
                    if pb.length() != Some(total) {
                        pb.set_length(total);
                        pb.set_style(bar_style());
                    }
                }
                pb.set_position(s.bytes);
                pb.set_message(s.state.as_str());
                if s.state.finished() {
                    pb.finish_and_clear();
                    return Ok((s, body));
                }
            }
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Unavailable { .. }))
                if misses < POLL_MISSES =>
            {
                misses += 1;
                pb.set_message(format!("waiting for the coordinator ({misses}): {e}"));
            }
            Err(source) => {
                pb.abandon();
                return Err(CliError::Watch {
                    job: job.to_string(),
                    source,
                });
            }
        }
        std::thread::sleep(POLL);
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed_precise} {bytes} {binary_bytes_per_sec} {msg}")
        .expect("a valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .expect("a valid template")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_location;
    use crate::client::tests::serve;

    #[test]
    fn query_values_are_escaped() {
        let l = parse_location("node-a1:tank/my data").unwrap();
        assert_eq!(
            restore_points_path(&l),
            "/api/v1/restore-points?node=node-a1&dataset=tank%2Fmy%20data"
        );
        assert_eq!(escape("a:b.c~_-"), "a%3Ab.c~_-");
    }

    fn status(state: &str, bytes: u64, landed: u64) -> String {
        serde_json::json!({"job": "r 1", "state": state,
            "from": {"node": "node-b1", "dataset": "backup/node-a1/tank/db"},
            "to": {"node": "node-a1", "dataset": "tank/r"},
            "snapshot": {"name": "s1", "guid": 42, "creation": 0},
            "bytes": bytes, "estimated_bytes": 100, "started": 0, "finished": null,
            "landed_guid": landed, "error": null})
        .to_string()
    }

    const ACCEPTED: &str = r#"{"job":"r 1","from":{"node":"node-b1","dataset":"backup/node-a1/tank/db"},
        "snapshot":{"name":"s1","guid":42,"creation":0},"to":{"node":"node-a1","dataset":"tank/r"}}"#;

    fn restore_args(extra: &[&str]) -> RestoreArgs {
        let mut argv = vec![
            "zdr",
            "restore",
            "node-a1:tank/db",
            "--to",
            "node-a1:tank/r",
        ];
        argv.extend_from_slice(extra);
        match <Cli as clap::Parser>::try_parse_from(argv).unwrap().cmd {
            Cmd::Restore(a) => a,
            other => panic!("not a restore: {other:?}"),
        }
    }

    #[test]
    fn restore_posts_then_polls_until_done_and_checks_the_guid() {
        let points = r#"{"node":"node-a1","dataset":"tank/db","copies":[{"copy":"replica",
            "node":"node-b1","site":"s","media":"hdd","dataset":"backup/node-a1/tank/db",
            "online":true,"raw":true,"snapshots":[]}]}"#;
        let running =
            status("running", 50, 0).replace(r#""landed_guid":0"#, r#""landed_guid":null"#);
        let done = status("done", 100, 42);
        let (base, h) = serve(vec![
            (202, ACCEPTED.into()),
            (200, running),
            (200, done),
            (200, points.into()),
        ]);
        let c = Client::new(&base).unwrap();
        restore(&c, false, &restore_args(&["--snapshot", "s1"])).unwrap();
        let seen = h.join().unwrap();
        assert!(seen[0].starts_with("POST /api/v1/restores "), "{}", seen[0]);
        let body: serde_json::Value =
            serde_json::from_str(seen[0].split_once("\n\n").unwrap().1).unwrap();
        assert_eq!(body["snapshot"], "s1");
        assert_eq!(body["to"], "node-a1:tank/r");
        assert!(
            seen[1].starts_with("GET /api/v1/restores/r%201 "),
            "{}",
            seen[1]
        );
        assert!(
            seen[2].starts_with("GET /api/v1/restores/r%201 "),
            "{}",
            seen[2]
        );
        assert!(
            seen[3].starts_with("GET /api/v1/restore-points?node=node-a1&dataset=tank%2Fdb "),
            "{}",
            seen[3]
        );
    }

    #[test]
    fn a_failed_or_wrong_restore_is_an_error() {
        let failed =
            status("failed", 10, 0).replace(r#""error":null"#, r#""error":"node-b1 went offline""#);
        let (base, h) = serve(vec![(202, ACCEPTED.into()), (200, failed)]);
        let e = restore(&Client::new(&base).unwrap(), true, &restore_args(&[])).unwrap_err();
        assert_eq!(e.to_string(), "restore r 1 failed: node-b1 went offline");
        h.join().unwrap();

        let (base, h) = serve(vec![(202, ACCEPTED.into()), (200, status("done", 100, 41))]);
        let e = restore(&Client::new(&base).unwrap(), true, &restore_args(&[])).unwrap_err();
        assert!(e.to_string().contains("landed GUID 41"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn no_wait_returns_after_the_post_and_api_errors_pass_through() {
        let (base, h) = serve(vec![(202, ACCEPTED.into())]);
        restore(
            &Client::new(&base).unwrap(),
            false,
            &restore_args(&["--no-wait"]),
        )
        .unwrap();
        assert_eq!(h.join().unwrap().len(), 1);

        let (base, h) = serve(vec![(
            409,
            r#"{"error":"node-a1:tank/r exists; pass --replace"}"#.into(),
        )]);
        let e = restore(&Client::new(&base).unwrap(), false, &restore_args(&[])).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("answered 409: node-a1:tank/r exists; pass --replace"),
            "{e}"
        );
        h.join().unwrap();
    }

    #[test]
    fn progress_templates_parse() {
        let _ = spinner_style();
        let _ = bar_style();
    }
}
