//! Append-only audit log of destructive operations: one JSON line each, written
//! and synced before the operation runs and again with its outcome.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub at: i64,
    /// Who asked: `agent:<node>/retention`, or `coordinator:<kid>/<command id>`.
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub why: &'a str,
    /// `intent`, `done` or `failed: ...`.
    pub outcome: &'a str,
    pub policy_revision: Option<u64>,
    /// The snapshot's ZFS `creation` (Unix seconds), on the destroy of one
    /// snapshot: retention chose it by that time, not by its name, so the
    /// record says which bucket it was in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A failed audit write stops the destructive operation it describes.
    pub fn write(&self, record: &Record<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_keeps_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        for i in 0..2 {
            let log = AuditLog::open(&p).unwrap();
            log.write(&Record {
                at: i,
                actor: "agent:n1/retention",
                action: "destroy",
                target: "tank/a@zdr_1",
                why: "tiers",
                outcome: "intent",
                policy_revision: Some(1),
                created: (i == 1).then_some(1_700_000_000),
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["target"], "tank/a@zdr_1");
        assert_eq!(v["at"], 1);
        assert_eq!(v["created"], 1_700_000_000);
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(first.get("created").is_none(), "{first}");
    }
}
