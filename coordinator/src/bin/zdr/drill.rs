//! `zdr drill run|list|plan`: restore drills through `/api/v1/drills`.
//! The API's answers as the CLI reads them, their rendering (pure), and the
//! subcommands.

use std::time::Duration;

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use zdr_common::wire::CheckLevel;
use zdr_coordinator::jobs::DrillResult;

use crate::api::{Place, RestoreSnapshot};
use crate::args::{parse_location, parse_node, Location};
use crate::client::{decode, Client};
use crate::commands::{print, print_json, show, CliError};
use crate::render::{opt, table, when};

/// How often a running drill is asked how it stands.
const POLL: Duration = Duration::from_secs(1);

#[derive(Subcommand, Debug)]
pub enum DrillCmd {
    /// Drill one dataset now: restore it from a copy into scratch, compare
    /// its content with production, destroy the scratch; waits for the result.
    Run {
        /// The protected dataset, as NODE:DATASET.
        #[arg(value_parser = parse_location)]
        source: Location,
        /// The node of the copy to drill (default: the next copy in turn).
        #[arg(long, value_parser = parse_node)]
        copy: Option<String>,
        /// Print the job id and return; follow it with `zdr drill list`.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drills, newest first: result, level of check, measured RTO.
    List,
    /// The drills of the next year, by the policy: what, which copy, when.
    Plan,
}

/// The body of `POST /api/v1/drills`.
#[derive(Debug, Serialize)]
pub struct DrillRequest {
    pub source: String,
    pub copy: Option<String>,
}

/// `202` to `POST /api/v1/drills`.
#[derive(Debug, Deserialize)]
pub struct DrillAccepted {
    pub job: String,
    pub copy: Place,
    pub scratch: Place,
    pub snapshot: RestoreSnapshot,
}

/// Each of `GET /api/v1/drills`.
#[derive(Debug, Deserialize)]
pub struct DrillStatus {
    pub job: String,
    /// `running`, `passed` or `failed`.
    pub state: String,
    pub class: String,
    pub number: Option<u64>,
    pub source: Place,
    pub copy: Option<Place>,
    pub snapshot: Option<RestoreSnapshot>,
    pub started: i64,
    pub rto_secs: u64,
    pub result: Option<DrillResult>,
}

#[derive(Debug, Deserialize)]
pub struct DrillsView {
    pub drills: Vec<DrillStatus>,
}

/// One entry of `GET /api/v1/drills/plan`.
#[derive(Debug, Deserialize)]
pub struct PlannedView {
    pub at: i64,
    pub class: String,
    pub number: u64,
    pub node: String,
    pub dataset: String,
    pub copy: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PlanView {
    pub drills: Vec<PlannedView>,
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn level(l: Option<CheckLevel>) -> &'static str {
    match l {
        Some(CheckLevel::FilesHashed) => "files hashed",
        Some(CheckLevel::BlocksRead) => "blocks read",
        None => "-",
    }
}

/// `zdr drill list`.
pub fn render_drills(list: &[DrillStatus]) -> String {
    if list.is_empty() {
        return "no drills\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let r = d.result.as_ref();
            vec![
                d.job.clone(),
                d.state.to_uppercase(),
                match d.number {
                    Some(n) => format!("{} #{n}", d.class),
                    None => format!("{} by hand", d.class),
                },
                format!("{}:{}", d.source.node, d.source.dataset),
                opt(d.copy.as_ref().map(|c| c.node.clone())),
                opt(d.snapshot.as_ref().map(|s| format!("@{}", s.name))),
                when(d.started),
                level(r.and_then(|r| r.level)).into(),
                match r.and_then(|r| r.rto_ms) {
                    Some(ms) => format!(
                        "{} of {}s{}",
                        secs(ms),
                        d.rto_secs,
                        if r.is_some_and(|r| r.within_rto) {
                            ""
                        } else {
                            " OVER"
                        }
                    ),
                    None => "-".into(),
                },
                opt(r.map(|r| {
                    format!(
                        "transfer {} hash {} cleanup {}",
                        secs(r.transfer_ms),
                        secs(r.hash_ms),
                        secs(r.cleanup_ms)
                    )
                })),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "JOB", "RESULT", "DRILL", "DATASET", "COPY", "SNAPSHOT", "STARTED", "CHECK", "RTO",
            "PHASES",
        ],
        &rows,
    );
    for d in list {
        if let Some(why) = d.result.as_ref().and_then(|r| r.why.as_ref()) {
            out.push_str(&format!("{}: {why}\n", d.job));
        }
    }
    out
}

/// `zdr drill plan`.
pub fn render_plan(p: &PlanView) -> String {
    if p.drills.is_empty() {
        return "no drills planned: no class has protected datasets yet\n".into();
    }
    let rows: Vec<Vec<String>> = p
        .drills
        .iter()
        .map(|d| {
            vec![
                when(d.at),
                format!("{} #{}", d.class, d.number),
                format!("{}:{}", d.node, d.dataset),
                d.copy.clone().unwrap_or_else(|| "NO REPLICA".into()),
            ]
        })
        .collect();
    table(&["WHEN", "DRILL", "DATASET", "COPY"], &rows)
}

/// The drill's own verdict as the exit status: a failed drill is an error.
pub fn verdict(d: &DrillStatus) -> Result<(), String> {
    match d.state.as_str() {
        "passed" => Ok(()),
        _ => Err(format!(
            "drill {} FAILED: {}",
            d.job,
            d.result
                .as_ref()
                .and_then(|r| r.why.clone())
                .unwrap_or_else(|| "no reason given".into())
        )),
    }
}

pub fn run(c: &Client, json: bool, cmd: &DrillCmd) -> Result<(), CliError> {
    match cmd {
        DrillCmd::List => show(c, json, "/api/v1/drills", |v: DrillsView| {
            render_drills(&v.drills)
        }),
        DrillCmd::Plan => show(c, json, "/api/v1/drills/plan", |p: PlanView| {
            render_plan(&p)
        }),
        DrillCmd::Run {
            source,
            copy,
            no_wait,
        } => {
            let req = DrillRequest {
                source: source.to_string(),
                copy: copy.clone(),
            };
            let body = serde_json::to_string(&req).expect("a request serializes");
            let answer = c.post("/api/v1/drills", &body)?;
            let a: DrillAccepted = decode(&c.url("/api/v1/drills"), &answer)?;
            if !json {
                print(&format!(
                    "drill {}: {}:{}@{} -> scratch {}:{}\n",
                    a.job,
                    a.copy.node,
                    a.copy.dataset,
                    a.snapshot.name,
                    a.scratch.node,
                    a.scratch.dataset
                ))?;
            }
            if *no_wait {
                return if json { print_json(&answer) } else { Ok(()) };
            }
            let url = c.url("/api/v1/drills");
            let (done, raw) = loop {
                let list: serde_json::Value = decode(&url, &c.get("/api/v1/drills")?)?;
                let found = list["drills"]
                    .as_array()
                    .and_then(|all| all.iter().find(|d| d["job"] == a.job.as_str()))
                    .filter(|d| d["state"] != "running");
                if let Some(raw) = found {
                    let d: DrillStatus = decode(&url, &raw.to_string())?;
                    break (d, raw.to_string());
                }
                std::thread::sleep(POLL);
            };
            if json {
                print_json(&raw)?;
            } else {
                print(&render_drills(std::slice::from_ref(&done)))?;
            }
            verdict(&done).map_err(CliError::Drill)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, why: Option<&str>) -> DrillStatus {
        DrillStatus {
            job: "c1-1-1".into(),
            state: state.into(),
            class: "gold".into(),
            number: None,
            source: Place {
                node: "n1".into(),
                dataset: "tank/db".into(),
            },
            copy: Some(Place {
                node: "n2".into(),
                dataset: "backup/n1/tank/db".into(),
            }),
            snapshot: None,
            started: 0,
            rto_secs: 60,
            result: Some(DrillResult {
                passed: state == "passed",
                level: Some(CheckLevel::FilesHashed),
                why: why.map(String::from),
                production_digest: None,
                restored_digest: None,
                transfer_ms: 1500,
                mount_ms: 0,
                hash_ms: 200,
                cleanup_ms: 100,
                rto_ms: (state == "passed").then_some(2_000),
                within_rto: true,
                cleaned: true,
                ended_at: 2,
            }),
        }
    }

    #[test]
    fn a_passed_drill_shows_its_rto_and_phases() {
        let out = render_drills(&[status("passed", None)]);
        assert!(
            out.contains("PASSED") && out.contains("gold by hand"),
            "{out}"
        );
        assert!(out.contains("2.0s of 60s"), "{out}");
        assert!(
            out.contains("transfer 1.5s hash 0.2s cleanup 0.1s"),
            "{out}"
        );
        assert!(verdict(&status("passed", None)).is_ok());
    }

    #[test]
    fn a_failed_drill_says_why_and_is_an_error() {
        let d = status("failed", Some("content differs"));
        assert!(render_drills(std::slice::from_ref(&d)).contains("c1-1-1: content differs"));
        assert!(verdict(&d).unwrap_err().contains("FAILED: content differs"));
    }

    #[test]
    fn the_plan_names_a_dataset_without_replica() {
        let p = PlanView {
            drills: vec![PlannedView {
                at: 0,
                class: "gold".into(),
                number: 3,
                node: "n1".into(),
                dataset: "tank/db".into(),
                copy: None,
            }],
        };
        let out = render_plan(&p);
        assert!(
            out.contains("gold #3") && out.contains("NO REPLICA"),
            "{out}"
        );
    }
}
