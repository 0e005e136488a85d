//! The command line: flags, subcommands, and the local checks of their
//! values, so that a bad argument is refused before any request is sent.

use std::fmt;

use clap::{Args, Parser, Subcommand};
use zdr_common::dataset::check_component;
use zdr_common::subject::valid_node_id;
use zdr_common::DatasetName;

use crate::api::RestoreRequest;

/// The coordinator's own default `--http` address.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:8080";

#[derive(Parser, Debug)]
#[command(
    name = "zdr",
    version,
    about = "zdr operator CLI: asks the coordinator's HTTP API, never a node"
)]
pub struct Cli {
    /// The coordinator's HTTP address (what it listens on with `--http`).
    #[arg(long, global = true, env = "ZDR_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// Print the API's JSON as it comes, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// The coordinator's API token (its --api-token-file), sent as a bearer
    /// token with every request that changes something (restore).
    #[arg(long, global = true, env = "ZDR_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The fleet: nodes online, datasets against their class's RPO, lag.
    Status,
    /// Jobs (replication, restore): state, progress, rate, errors.
    Jobs,
    /// Replication pairings, and the datasets that cannot be paired.
    Pairings,
    /// What the coordinator will do next and why: replications, uploads,
    /// drills and snapshots, each now, at a time, waiting or blocked.
    Plan,
    /// Every copy of a dataset (production and replicas) and its snapshots.
    RestorePoints {
        /// The protected dataset, as NODE:DATASET (e.g. node-a1:tank/db).
        #[arg(value_parser = parse_location)]
        source: Location,
    },
    /// Restore a dataset from one of its copies, and watch it to the end.
    ///
    /// Lands in a new dataset unless --replace is given. Ctrl-C stops
    /// watching; the restore goes on (`zdr restores` follows it).
    Restore(RestoreArgs),
    /// Restore jobs, newest first.
    Restores,
    /// RPO per copy and 3-2-1 compliance of every protected dataset, from
    /// live state: Markdown, or the API's JSON.
    Report {
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
        /// Only the datasets whose production is on this node (on a large
        /// fleet, a report the coordinator builds for that node alone).
        #[arg(long)]
        node: Option<String>,
    },
    /// A runbook per protected dataset from live state: its targets, where
    /// each copy is and how far behind, and the exact restore commands,
    /// with `zdr` and with plain `zfs send | zfs receive` for when the
    /// coordinator is gone. Keep a printed copy.
    Runbook {
        /// The protected dataset, as NODE:DATASET.
        #[arg(value_parser = parse_location, required_unless_present = "all", conflicts_with = "all")]
        source: Option<Location>,
        /// One runbook for every protected dataset.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
    },
    /// Restore drills: run one now, list them with their results, or show
    /// the next year's drills by the policy.
    Drill {
        #[command(subcommand)]
        cmd: crate::drill::DrillCmd,
    },
    /// The spec files, checked offline (no coordinator is asked).
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Check policies.yaml, tasks.yml and receivers.yaml files: every error
    /// as FILE:LINE:COLUMN, and a warning for a dataset rule that never
    /// applies because an earlier rule matches all its datasets.
    ///
    /// A file's kind comes from its top-level keys, or KIND=FILE (policy=,
    /// tasks=, receivers=). A tasks file is checked against the policy
    /// given with it. Exit status: 0 no errors (warnings are printed),
    /// 1 errors, or warnings with --strict; 2 bad arguments.
    Check {
        /// The files, each as FILE or KIND=FILE.
        #[arg(required = true)]
        files: Vec<String>,
        /// Warnings fail the check too (exit 1).
        #[arg(long)]
        strict: bool,
    },
}

/// `zdr report`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The protected dataset to restore, as NODE:DATASET.
    #[arg(value_parser = parse_location)]
    pub source: Location,
    /// The newest snapshot at or before TIME (RFC 3339, e.g. 2026-12-05T07:30:00Z),
    /// or `@NAME` for one snapshot. Without --at and --snapshot: the newest.
    #[arg(long, value_parser = parse_at, conflicts_with = "snapshot")]
    pub at: Option<Point>,
    /// This snapshot (the part after '@').
    #[arg(long, value_parser = parse_snapshot)]
    pub snapshot: Option<String>,
    /// The copy to restore from: a node, or `bucket:TASK` for a bucket
    /// task's uploads (the destination's agent needs the recovery key).
    /// Default: the online node copy closest to the destination.
    #[arg(long, value_parser = parse_copy)]
    pub from: Option<String>,
    /// Where the data lands, as NODE:DATASET.
    #[arg(long, value_parser = parse_location)]
    pub to: Location,
    /// Roll back and overwrite the destination if it exists.
    #[arg(long)]
    pub replace: bool,
    /// Print the job id and return; follow it with `zdr restores`.
    #[arg(long)]
    pub no_wait: bool,
}

impl RestoreArgs {
    /// The body of `POST /api/v1/restores`.
    pub fn request(&self) -> RestoreRequest {
        let (at, snapshot) = match &self.at {
            Some(Point::Time(t)) => (Some(t.clone()), None),
            Some(Point::Snapshot(s)) => (None, Some(s.clone())),
            None => (None, self.snapshot.clone()),
        };
        RestoreRequest {
            source: self.source.to_string(),
            at,
            snapshot,
            from: self.from.clone(),
            to: self.to.to_string(),
            replace: self.replace,
        }
    }
}

/// A dataset on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub node: String,
    pub dataset: DatasetName,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.dataset)
    }
}

/// What `--at` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// RFC 3339 in UTC, as the API takes it.
    Time(String),
    Snapshot(String),
}

pub fn parse_node(s: &str) -> Result<String, String> {
    valid_node_id(s)?;
    Ok(s.to_string())
}

/// A copy: a node id, or `bucket:TASK`.
pub fn parse_copy(s: &str) -> Result<String, String> {
    match s.strip_prefix("bucket:") {
        Some(task) if task.is_empty() || task.contains(char::is_whitespace) => Err(format!(
            "{s:?}: write bucket:TASK with the bucket task's name from the tasks file"
        )),
        Some(_) => Ok(s.to_string()),
        None => parse_node(s),
    }
}

/// `NODE:DATASET`; node ids never hold ':' but dataset names may.
pub fn parse_location(s: &str) -> Result<Location, String> {
    let Some((node, dataset)) = s.split_once(':') else {
        return Err(format!(
            "{s:?} names no node; write NODE:DATASET, e.g. node-a1:tank/db"
        ));
    };
    valid_node_id(node).map_err(|e| format!("in {s:?}: {e}"))?;
    if dataset.contains('@') {
        return Err(format!(
            "{s:?} names a snapshot; write NODE:DATASET and pick the snapshot with --snapshot or --at"
        ));
    }
    let dataset = DatasetName::parse(dataset).map_err(|e| format!("in {s:?}: {e}"))?;
    Ok(Location {
        node: node.to_string(),
        dataset,
    })
}

/// A snapshot's own name; a leading '@' is allowed.
pub fn parse_snapshot(s: &str) -> Result<String, String> {
    let name = s.strip_prefix('@').unwrap_or(s);
    if name.contains('@') || name.contains('/') {
        return Err(format!(
            "{s:?} is not a snapshot name; give only the part after '@', e.g. zdr_20261205T070000Z"
        ));
    }
    check_component(name, name, 0).map_err(|e| format!("snapshot {e}"))?;
    Ok(name.to_string())
}

/// `@NAME`, or an RFC 3339 time (an explicit zone is required: a restore
/// point off by the local offset is a wrong restore).
pub fn parse_at(s: &str) -> Result<Point, String> {
    if s.starts_with('@') {
        return parse_snapshot(s).map(Point::Snapshot);
    }
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(Point::Time(
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
        )),
        Err(e) => Err(format!(
            "{s:?} is not a time ({e}); write RFC 3339 with a zone, e.g. 2026-12-05T07:30:00Z \
             or 2026-12-05T08:30:00+01:00, or @SNAPSHOT for one snapshot"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("zdr").chain(args.iter().copied()))
    }

    #[test]
    fn locations_split_at_the_first_colon() {
        let l = parse_location("node-a1:tank/vm:disk0").unwrap();
        assert_eq!(l.node, "node-a1");
        assert_eq!(l.dataset.as_str(), "tank/vm:disk0");
        assert_eq!(l.to_string(), "node-a1:tank/vm:disk0");
    }

    #[test]
    fn bad_locations_say_what_to_write() {
        let e = parse_location("tank/db").unwrap_err();
        assert!(e.contains("NODE:DATASET"), "{e}");
        let e = parse_location("node a1:tank/db").unwrap_err();
        assert!(e.contains("node id") && e.contains("\"node a1\""), "{e}");
        let e = parse_location("node-a1:tank//db").unwrap_err();
        assert!(e.contains("empty component"), "{e}");
        let e = parse_location("node-a1:tank/db@zdr_1").unwrap_err();
        assert!(e.contains("--snapshot"), "{e}");
        assert!(parse_location(":tank/db").is_err());
    }

    #[test]
    fn times_are_normalised_to_utc_and_need_a_zone() {
        assert_eq!(
            parse_at("2026-12-05T08:30:00+01:00").unwrap(),
            Point::Time("2026-12-05T07:30:00Z".into())
        );
        assert_eq!(
            parse_at("@zdr_20261205T070000Z").unwrap(),
            Point::Snapshot("zdr_20261205T070000Z".into())
        );
        let e = parse_at("2026-12-05T07:30:00").unwrap_err();
        assert!(e.contains("with a zone"), "{e}");
        assert!(parse_at("yesterday").is_err());
    }

    #[test]
    fn snapshot_names_are_checked() {
        assert_eq!(parse_snapshot("@s1").unwrap(), "s1");
        assert!(parse_snapshot("tank/db@s1")
            .unwrap_err()
            .contains("after '@'"));
        assert!(parse_snapshot("bad*name").is_err());
    }

    #[test]
    fn restore_builds_the_api_request() {
        let cli = parse(&[
            "restore",
            "node-a1:tank/db",
            "--at",
            "2026-12-05T07:30:00Z",
            "--from",
            "node-b1",
            "--to",
            "node-a2:tank/db-restored",
            "--replace",
        ])
        .unwrap();
        let Cmd::Restore(r) = cli.cmd else {
            panic!("not a restore: {:?}", cli.cmd)
        };
        let body = serde_json::to_value(r.request()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"source": "node-a1:tank/db", "at": "2026-12-05T07:30:00Z",
                "snapshot": null, "from": "node-b1", "to": "node-a2:tank/db-restored",
                "replace": true})
        );
        assert!(!r.no_wait);
    }

    #[test]
    fn from_is_a_node_or_a_bucket_task() {
        let cli = parse(&[
            "restore",
            "n1:tank/db",
            "--from",
            "bucket:vault",
            "--to",
            "n2:tank/r",
        ])
        .unwrap();
        let Cmd::Restore(r) = cli.cmd else {
            panic!("not a restore")
        };
        assert_eq!(r.request().from.as_deref(), Some("bucket:vault"));
        assert!(parse_copy("bucket:").is_err());
        assert!(parse_copy("no de").is_err());
        assert_eq!(parse_copy("node-b1").unwrap(), "node-b1");
    }

    #[test]
    fn at_snapshot_is_a_snapshot_request() {
        let cli = parse(&["restore", "n1:tank/db", "--at", "@s7", "--to", "n1:tank/r"]).unwrap();
        let Cmd::Restore(r) = cli.cmd else {
            panic!("not a restore")
        };
        let req = r.request();
        assert_eq!((req.at, req.snapshot), (None, Some("s7".to_string())));
    }

    #[test]
    fn at_and_snapshot_exclude_each_other_and_to_is_required() {
        let e = parse(&[
            "restore",
            "n1:tank/db",
            "--at",
            "@s1",
            "--snapshot",
            "s2",
            "--to",
            "n1:tank/r",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = parse(&["restore", "n1:tank/db"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let e = parse(&["restore", "n1:tank/db", "--to", "tank/r"]).unwrap_err();
        assert!(e.to_string().contains("NODE:DATASET"), "{e}");
    }

    #[test]
    fn report_is_markdown_unless_json_is_asked() {
        let cli = parse(&["report"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Report {
                format: Format::Md,
                node: None
            }
        ));
        let cli = parse(&["report", "--format", "json", "--node", "n1"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Report {
                format: Format::Json,
                node: Some(ref n),
            } if n == "n1"
        ));
        let e = parse(&["report", "--format", "html"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["jobs", "--json", "--coordinator", "http://c:9"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.coordinator, "http://c:9");
        assert!(matches!(cli.cmd, Cmd::Jobs));
    }
}
