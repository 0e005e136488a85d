//! `zdr runbook`: one runbook per protected dataset, from live state
//! (`GET /api/v1/report`). Pure: the report comes in; the runbook comes out,
//! as data (`--format json`) or as Markdown to print and keep offline.
//!
//! What a runbook holds, and why:
//! - the class's targets (RPO, RTO, immutability window) and every copy's
//!   place, newest confirmed snapshot and lag: what can be restored, and
//!   how old it is;
//! - procedures with the exact commands. With `zdr` while the coordinator is
//!   up: beside production, back to the original name after a loss, or in
//!   place with `--replace`. With plain `zfs send | zfs receive` over ssh for
//!   when the coordinator or NATS is gone, one per replica;
//! - the copy to restore from: the online replica with the smallest lag
//!   ([`best_replica`]); with no replica online, the freshest offline one,
//!   and the runbook says it is offline;
//! - the key-loading step when the dataset is encrypted: replicas are raw, so
//!   a restore lands with its key unloaded.
//!
//! Every name in a command comes from the report and is checked again here
//! (node ids, ZFS dataset and snapshot names), so a name that is not one
//! cannot put anything else into a shell line.

use serde::Serialize;
use zdr_common::dataset::{parse_snapshot_name, DatasetName};
use zdr_common::subject::valid_node_id;
use zdr_coordinator::compliance::{CopyReport, DatasetReport, Role};

use zdr_common::wire::CheckLevel;

use crate::drill::DrillStatus;
use crate::render::{shell_quote, short, when};
use crate::report::{copies_table, plural};

#[derive(Debug, Clone, Serialize)]
pub struct Runbook {
    pub node: String,
    pub dataset: String,
    pub class: String,
    pub rpo_secs: u64,
    pub rto_secs: u64,
    pub immutable_for_secs: u64,
    pub drill_every_secs: u64,
    /// When the live state was read (Unix seconds).
    pub generated_at: i64,
    pub encrypted: bool,
    /// Production first, as the report lists them.
    pub copies: Vec<CopyReport>,
    pub verification: String,
    /// The newest ended restore drill of the dataset, when the coordinator
    /// listed its drills.
    pub last_drill: Option<LastDrill>,
    pub procedures: Vec<Procedure>,
}

/// How the dataset's newest restore drill went.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    pub job: String,
    /// Unix seconds.
    pub ended_at: i64,
    pub passed: bool,
    /// The copy's node.
    pub copy: Option<String>,
    pub level: Option<CheckLevel>,
    pub rto_ms: Option<u64>,
    pub within_rto: bool,
    pub why: Option<String>,
}

/// Adds the newest ended drill of the runbook's dataset among `drills`.
pub fn with_last_drill(mut book: Runbook, drills: &[DrillStatus]) -> Runbook {
    book.last_drill = drills
        .iter()
        .filter(|d| d.source.node == book.node && d.source.dataset == book.dataset)
        .filter_map(|d| d.result.as_ref().map(|r| (d, r)))
        .max_by_key(|(_, r)| r.ended_at)
        .map(|(d, r)| LastDrill {
            job: d.job.clone(),
            ended_at: r.ended_at,
            passed: r.passed,
            copy: d.copy.as_ref().map(|c| c.node.clone()),
            level: r.level,
            rto_ms: r.rto_ms,
            within_rto: r.within_rto,
            why: r.why.clone(),
        });
    book
}

fn drill_line(r: &Runbook) -> String {
    let Some(d) = &r.last_drill else {
        return format!(
            "Last drill: none listed; `zdr drill run {}:{}` runs one.",
            r.node,
            shell_quote(&r.dataset)
        );
    };
    let from = d
        .copy
        .as_ref()
        .map(|c| format!(" from the copy on {c}"))
        .unwrap_or_default();
    if !d.passed {
        return format!(
            "Last drill: {}{from} FAILED: {} (job {}).",
            when(d.ended_at),
            d.why.as_deref().unwrap_or("no reason given"),
            d.job
        );
    }
    let level = match d.level {
        Some(CheckLevel::BlocksRead) => "every block read back",
        _ => "content hashes equal",
    };
    format!(
        "Last drill: {}{from} passed ({level}); measured RTO {:.1} s, {} the class's {} (job {}).",
        when(d.ended_at),
        d.rto_ms.unwrap_or(0) as f64 / 1000.0,
        if d.within_rto { "within" } else { "OVER" },
        short(r.rto_secs as i64),
        d.job
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct Procedure {
    pub title: String,
    /// When to use it.
    pub when: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    /// The node whose shell runs it; `None`: any host with `zdr` that
    /// reaches the coordinator.
    pub on: Option<String>,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunbookError {
    #[error(
        "{node}:{dataset} is not a protected dataset; protected: {known}; \
         check the name with `zdr report`"
    )]
    NotProtected {
        node: String,
        dataset: String,
        known: String,
    },
    #[error(
        "the report names {what} {name:?}, which is not a valid one ({why}); no runbook is \
         written with it: check the coordinator's inventory of that node"
    )]
    BadName {
        what: &'static str,
        name: String,
        why: String,
    },
}

/// The replica to restore from: online first, then the smallest lag (a copy
/// with no confirmed snapshot last), then by node for a stable choice.
pub fn best_replica(d: &DatasetReport) -> Option<&CopyReport> {
    replicas(d).into_iter().next()
}

/// The replicas, the one to restore from first (see [`best_replica`]).
fn replicas(d: &DatasetReport) -> Vec<&CopyReport> {
    let mut r: Vec<&CopyReport> = d
        .copies
        .iter()
        .filter(|c| c.role == Role::Replica)
        .collect();
    r.sort_by_key(|c| (!c.online, c.lag_secs.is_none(), c.lag_secs, c.node.clone()));
    r
}

/// The dataset name a restore beside production lands in.
fn beside(dataset: &str) -> String {
    format!("{dataset}-restore")
}

fn check_node(node: &str) -> Result<(), RunbookError> {
    valid_node_id(node).map_err(|why| RunbookError::BadName {
        what: "node",
        name: node.into(),
        why,
    })
}

fn check_dataset(name: &str) -> Result<(), RunbookError> {
    DatasetName::parse(name)
        .map(drop)
        .map_err(|e| RunbookError::BadName {
            what: "dataset",
            name: name.into(),
            why: e.to_string(),
        })
}

fn check_snapshot(full: &str) -> Result<(), RunbookError> {
    parse_snapshot_name(full)
        .map(drop)
        .map_err(|e| RunbookError::BadName {
            what: "snapshot",
            name: full.into(),
            why: e.to_string(),
        })
}

/// The runbook of `d`, the report read at `generated_at`.
pub fn runbook(d: &DatasetReport, generated_at: i64) -> Result<Runbook, RunbookError> {
    check_node(&d.node)?;
    check_dataset(&d.dataset)?;
    for c in &d.copies {
        check_node(&c.node)?;
        check_dataset(&c.dataset)?;
        if let Some(s) = &c.newest {
            check_snapshot(&format!("{}@{}", c.dataset, s.name))?;
        }
    }
    let encrypted = d.copies.iter().any(|c| c.encrypted);
    let mut procedures = Vec::new();
    if let Some(best) = best_replica(d) {
        procedures.extend(with_zdr(d, best, encrypted));
    }
    procedures.extend(replicas(d).into_iter().map(|c| by_hand(d, c, encrypted)));
    Ok(Runbook {
        node: d.node.clone(),
        dataset: d.dataset.clone(),
        class: d.class.clone(),
        rpo_secs: d.rpo_secs,
        rto_secs: d.rto_secs,
        immutable_for_secs: d.immutable_for_secs,
        drill_every_secs: d.drill_every_secs,
        generated_at,
        encrypted,
        copies: d.copies.clone(),
        verification: d.verification.clone(),
        last_drill: None,
        procedures,
    })
}

/// The runbook of `node:dataset` in `datasets`.
pub fn runbook_of(
    datasets: &[DatasetReport],
    node: &str,
    dataset: &str,
    generated_at: i64,
) -> Result<Runbook, RunbookError> {
    match datasets
        .iter()
        .find(|d| d.node == node && d.dataset == dataset)
    {
        Some(d) => runbook(d, generated_at),
        None => Err(RunbookError::NotProtected {
            node: node.into(),
            dataset: dataset.into(),
            known: if datasets.is_empty() {
                "none".into()
            } else {
                datasets
                    .iter()
                    .map(|d| format!("{}:{}", d.node, d.dataset))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

fn key_steps(node: &str, dataset: &str) -> Vec<Step> {
    let ds = shell_quote(dataset);
    vec![Step {
        what: "Load the key (from the dataset's keylocation; `-L prompt` or \
                   `-L file:///PATH` gives it another way), then mount"
            .into(),
        on: Some(node.into()),
        command: format!("zfs load-key {ds} && zfs mount {ds}"),
    }]
}

fn with_zdr(d: &DatasetReport, best: &CopyReport, encrypted: bool) -> Vec<Procedure> {
    let source = format!("{}:{}", d.node, d.dataset);
    let pick = best
        .newest
        .as_ref()
        .map(|s| format!("--snapshot {}", s.name))
        .unwrap_or_else(|| "--at TIME".into());
    let restore = |to: &str, extra: &str| Step {
        what: format!(
            "Restore from {}'s copy; `--at TIME` (RFC 3339, e.g. 2026-12-05T07:30:00Z) picks the \
             newest snapshot at or before TIME instead",
            best.node
        ),
        on: None,
        command: format!(
            "zdr restore {source} {pick} --from {} --to {}:{}{extra}",
            best.node,
            d.node,
            shell_quote(to)
        ),
    };
    let then_key = |to: &str| {
        if encrypted {
            key_steps(&d.node, to)
        } else {
            vec![]
        }
    };
    let new = beside(&d.dataset);
    let mut beside_steps = vec![restore(&new, "")];
    beside_steps.extend(then_key(&new));
    let mut lost_steps = vec![restore(&d.dataset, "")];
    lost_steps.extend(then_key(&d.dataset));
    let mut in_place = vec![
        Step {
            what: "List the snapshots on the copy, to pick one from before the damage".into(),
            on: None,
            command: format!("zdr restore-points {source}"),
        },
        Step {
            what: "Roll production back to it: what is newer on production is destroyed, \
                   listed and audited first"
                .into(),
            on: None,
            command: format!(
                "zdr restore {source} --at TIME --from {} --to {source} --replace",
                best.node
            ),
        },
    ];
    in_place.extend(then_key(&d.dataset));
    vec![
        Procedure {
            title: format!("Restore beside production, to {}:{new}", d.node),
            when: "Files were deleted or damaged and production still runs: restore, inspect, \
                   then copy back what is needed"
                .into(),
            steps: beside_steps,
        },
        Procedure {
            title: format!("Production lost: restore to {source}"),
            when: "The dataset or its pool is gone (destroyed, pool rebuilt, node replaced): \
                   replication then continues from the restored snapshot, without a new full send"
                .into(),
            steps: lost_steps,
        },
        Procedure {
            title: "Roll production back in place".into(),
            when: format!(
                "Production holds bad data (ransomware, a bad upgrade) and nothing newer than the \
                 chosen snapshot is worth keeping. No agent destroys a snapshot younger than {}, \
                 whoever asks: the copies keep them, and a rollback over them on production is \
                 refused; then restore beside production (1) and swap the names instead",
                short(d.immutable_for_secs as i64)
            ),
            steps: in_place,
        },
    ]
}

fn by_hand(d: &DatasetReport, c: &CopyReport, encrypted: bool) -> Procedure {
    let raw = if encrypted { " -w" } else { "" };
    let snapshot = c
        .newest
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_else(|| "SNAPSHOT".into());
    let to = beside(&d.dataset);
    let mut steps = vec![
        Step {
            what: "List the snapshots on the copy (oldest first) and pick one; the newest \
                   confirmed when this runbook was written is in the command below"
                .into(),
            on: Some(c.node.clone()),
            command: format!(
                "zfs list -H -t snapshot -o name,guid,creation -s createtxg {}",
                shell_quote(&c.dataset)
            ),
        },
        Step {
            what: format!(
                "Send it as one full stream{} to {} (node ids as ssh hosts: use the \
                 hosts' addresses where they differ)",
                if encrypted { ", raw" } else { "" },
                d.node
            ),
            on: None,
            command: format!(
                "ssh {} \"zfs send{raw} '{}@{snapshot}'\" | ssh {} \"zfs receive -u '{to}'\"",
                c.node, c.dataset, d.node
            ),
        },
    ];
    if encrypted {
        steps.extend(key_steps(&d.node, &to));
    } else {
        steps.push(Step {
            what: "Mount it".into(),
            on: Some(d.node.clone()),
            command: format!("zfs mount {}", shell_quote(&to)),
        });
    }
    steps.push(Step {
        what: "If production is gone, give it production's name (`zfs rename`); its snapshot \
               keeps the copy's GUID, so once the coordinator is back replication continues \
               from it"
            .into(),
        on: Some(d.node.clone()),
        command: format!(
            "zfs rename {} {}",
            shell_quote(&to),
            shell_quote(&d.dataset)
        ),
    });
    Procedure {
        title: format!(
            "Without the coordinator: from {}:{}{}",
            c.node,
            c.dataset,
            if c.online {
                ""
            } else {
                " (OFFLINE when written)"
            }
        ),
        when: "The coordinator or NATS is down and the data is needed now; needs ssh to both \
               nodes"
            .into(),
        steps,
    }
}

/// The runbook as Markdown.
pub fn markdown(r: &Runbook) -> String {
    let mut out = format!(
        "# Runbook: {}:{}\n\nWritten {} from the coordinator's live state; \
         `zdr runbook {}:{}` writes it again.\n\n",
        r.node,
        r.dataset,
        when(r.generated_at),
        r.node,
        shell_quote(&r.dataset)
    );
    out.push_str(&format!(
        "Class `{}`: RPO {}, RTO {}, snapshots immutable for {}.{}\n\n",
        r.class,
        short(r.rpo_secs as i64),
        short(r.rto_secs as i64),
        short(r.immutable_for_secs as i64),
        if r.encrypted {
            " Encrypted: the replicas are raw, so a restore lands with its key unloaded; \
             have the key at hand."
        } else {
            ""
        }
    ));
    out.push_str("## Copies\n\n");
    out.push_str(&copies_table(&r.copies, r.generated_at, r.drill_every_secs));
    out.push_str(&format!("\nVerification: {}.\n\n", r.verification));
    out.push_str(&format!("{}\n\n", drill_line(r)));
    if r.procedures.is_empty() {
        out.push_str(
            "No replica holds a copy of this dataset: nothing to restore from but \
             production's own snapshots. Add a replication task for it.\n",
        );
    }
    for (i, p) in r.procedures.iter().enumerate() {
        out.push_str(&format!("## {}. {}\n\n{}.\n\n", i + 1, p.title, p.when));
        for (j, s) in p.steps.iter().enumerate() {
            let on =
                s.on.as_ref()
                    .map(|n| format!(" (on {n})"))
                    .unwrap_or_default();
            out.push_str(&format!(
                "{}. {}{on}:\n\n   ```sh\n   {}\n   ```\n\n",
                j + 1,
                s.what,
                s.command
            ));
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// Several runbooks, one document: `--all`.
pub fn markdown_all(books: &[Runbook]) -> String {
    if books.is_empty() {
        return "No protected dataset: no dataset matches a class of the policy.\n".into();
    }
    let mut out = format!(
        "{} follow, one per protected dataset.\n",
        plural(books.len(), "runbook", "runbooks")
    );
    for b in books {
        out.push('\n');
        out.push_str(&markdown(b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::decode;
    use zdr_coordinator::compliance::Report;

    const REPORT: &str = include_str!("testdata/report.json");
    const GOLDEN: &str = include_str!("testdata/runbook.md");

    fn report() -> Report {
        decode("u", REPORT).unwrap()
    }

    #[test]
    fn markdown_matches_the_golden_file() {
        let r = report();
        let books: Vec<Runbook> = r
            .datasets
            .iter()
            .map(|d| runbook(d, r.generated_at).unwrap())
            .collect();
        let out = markdown_all(&books);
        if out != GOLDEN {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/bin/zdr/testdata/runbook.md.new"
            );
            std::fs::write(path, &out).unwrap();
            panic!("the Markdown differs from testdata/runbook.md; see {path}:\n{out}");
        }
    }

    #[test]
    fn the_last_drill_of_the_dataset_is_shown_with_its_rto() {
        let r = report();
        let d = &r.datasets[0];
        let drill = |job: &str, ended_at: i64, passed: bool, node: &str| {
            serde_json::from_value::<DrillStatus>(serde_json::json!({
                "job": job, "state": if passed { "passed" } else { "failed" },
                "class": d.class, "number": null,
                "source": { "node": node, "dataset": d.dataset },
                "copy": { "node": "nb", "dataset": "backup/x" },
                "snapshot": null, "started": 0, "rto_secs": d.rto_secs,
                "result": {
                    "passed": passed, "level": "files-hashed",
                    "why": if passed { None } else { Some("content differs") },
                    "production_digest": null, "restored_digest": null,
                    "transfer_ms": 1, "mount_ms": 0, "hash_ms": 1, "cleanup_ms": 1,
                    "rto_ms": if passed { Some(2500) } else { None },
                    "within_rto": passed, "cleaned": true, "ended_at": ended_at
                }
            }))
            .unwrap()
        };
        let drills = [
            drill("old", 10, false, &d.node),
            drill("new", 20, true, &d.node),
            drill("other", 30, false, "elsewhere"),
        ];
        let book = with_last_drill(runbook(d, r.generated_at).unwrap(), &drills);
        let md = markdown(&book);
        let line = md.lines().find(|l| l.starts_with("Last drill:")).unwrap();
        assert!(
            line.contains(
                "from the copy on nb passed (content hashes equal); measured RTO 2.5 s, within"
            ) && line.contains("(job new)"),
            "{line}"
        );
        let book = with_last_drill(runbook(d, r.generated_at).unwrap(), &drills[..1]);
        assert!(markdown(&book).contains("FAILED: content differs (job old)"));
    }

    #[test]
    fn the_online_replica_with_the_smallest_lag_is_the_source() {
        let mut d = report().datasets[0].clone();
        // node-a2: online, 20 min behind; node-b1: offline, in breach.
        assert_eq!(best_replica(&d).unwrap().node, "node-a2");
        d.copies[1].online = false;
        d.copies[2].online = true;
        assert_eq!(best_replica(&d).unwrap().node, "node-b1");
        // Both offline: the freshest.
        d.copies[2].online = false;
        assert_eq!(best_replica(&d).unwrap().node, "node-a2");
        let book = runbook(&d, 0).unwrap();
        assert!(
            book.procedures[0].steps[0]
                .command
                .contains("--from node-a2 "),
            "{:?}",
            book.procedures[0]
        );
        assert!(book.procedures[4].title.contains("(OFFLINE when written)"));
    }

    #[test]
    fn an_encrypted_dataset_is_sent_raw_and_its_key_loaded() {
        let mut d = report().datasets[0].clone();
        for c in &mut d.copies {
            c.encrypted = true;
        }
        let book = runbook(&d, 0).unwrap();
        let commands: Vec<&str> = book
            .procedures
            .iter()
            .flat_map(|p| p.steps.iter().map(|s| s.command.as_str()))
            .collect();
        assert!(commands.iter().any(|c| c.contains("zfs send -w '")));
        assert!(!commands
            .iter()
            .any(|c| c.contains("zfs send '") || c.contains("zfs send SNAP")));
        // Every restore that lands data is followed by loading the key.
        for p in &book.procedures {
            assert!(
                p.steps
                    .iter()
                    .any(|s| s.command.starts_with("zfs load-key")),
                "{p:?}"
            );
        }
        assert!(markdown(&book).contains("lands with its key unloaded"));
    }

    #[test]
    fn names_with_spaces_are_quoted_and_hostile_names_refused() {
        let mut d = report().datasets[0].clone();
        d.dataset = "tank/my db".into();
        d.copies[0].dataset = "tank/my db".into();
        d.copies[1].dataset = "backup/node-a1/tank/my db".into();
        let book = runbook(&d, 0).unwrap();
        let hand = &book.procedures[3].steps[1].command;
        assert!(
            hand.contains("\"zfs send 'backup/node-a1/tank/my db@")
                && hand.ends_with("\"zfs receive -u 'tank/my db-restore'\""),
            "{hand}"
        );
        for bad in ["tank/x;rm -rf /", "tank/$(id)", "tank/a'b"] {
            let mut d = report().datasets[0].clone();
            d.copies[1].dataset = bad.into();
            match runbook(&d, 0) {
                Err(RunbookError::BadName { what, name, .. }) => {
                    assert_eq!((what, name.as_str()), ("dataset", bad))
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let mut d = report().datasets[0].clone();
        d.copies[2].node = "node b1".into();
        assert!(matches!(
            runbook(&d, 0),
            Err(RunbookError::BadName { what: "node", .. })
        ));
    }

    #[test]
    fn an_unknown_dataset_names_the_protected_ones() {
        let r = report();
        let e = runbook_of(&r.datasets, "node-a1", "tank/nope", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node-a1:tank/nope is not a protected dataset; protected: node-a1:tank/db, \
             node-a1:tank/logs; check the name with `zdr report`"
        );
        let e = runbook_of(&[], "node-a1", "tank/db", 0).unwrap_err();
        assert!(e.to_string().contains("protected: none;"), "{e}");
    }

    #[test]
    fn a_dataset_without_replica_says_there_is_nothing_to_restore_from() {
        let r = report();
        let d = r
            .datasets
            .iter()
            .find(|d| d.copies.iter().all(|c| c.role == Role::Production))
            .expect("the fixture has a dataset never replicated");
        let book = runbook(d, 0).unwrap();
        assert!(book.procedures.is_empty());
        assert!(markdown(&book).contains("No replica holds a copy of this dataset"));
    }
}
