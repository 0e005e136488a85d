//! What the agent keeps on its own disk so that it works on without the
//! coordinator: the last signed policy (verified again on load) and its replay
//! and epoch memory.

use std::path::{Path, PathBuf};

use zdr_common::envelope::{Freshness, Verifier};
use zdr_common::subject;
use zdr_common::wire::PolicyBundle;

pub struct StateDir {
    dir: PathBuf,
}

/// A policy that passed verification, with the envelope facts the agent needs.
#[derive(Debug, Clone)]
pub struct SignedPolicy {
    pub bundle: PolicyBundle,
    pub epoch: u64,
    pub exp: i64,
    pub raw: Vec<u8>,
}

impl SignedPolicy {
    /// Verifies and parses a policy envelope; `now` of `None` skips the clock
    /// (only for the agent's own cached copy).
    pub fn open(verifier: &Verifier, raw: &[u8], now: Option<i64>) -> Result<SignedPolicy, String> {
        let opened = match now {
            Some(now) => verifier.open(subject::POLICY, raw, now),
            None => verifier.open_cached(subject::POLICY, raw),
        }
        .map_err(|e| e.to_string())?;
        let bundle: PolicyBundle = serde_json::from_slice(opened.payload)
            .map_err(|e| format!("signed policy does not parse: {e}"))?;
        let problems = bundle.policy.problems();
        if let Some(p) = problems.first() {
            return Err(format!(
                "signed policy is unsound at {}: {}",
                p.path.join("."),
                p.message
            ));
        }
        Ok(SignedPolicy {
            epoch: opened.header.epoch,
            exp: opened.header.exp,
            bundle,
            raw: raw.to_vec(),
        })
    }
}

/// Written whole or not at all.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl StateDir {
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn load_policy(&self, verifier: &Verifier) -> Result<Option<SignedPolicy>, String> {
        let p = self.path("policy.env");
        match std::fs::read(&p) {
            Ok(raw) => SignedPolicy::open(verifier, &raw, None)
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    pub fn save_policy(&self, policy: &SignedPolicy) -> std::io::Result<()> {
        write_atomic(&self.path("policy.env"), &policy.raw)
    }

    pub fn load_freshness(&self) -> Result<Freshness, String> {
        let p = self.path("freshness.json");
        match std::fs::read(&p) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Freshness::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    pub fn save_freshness(&self, f: &Freshness) -> std::io::Result<()> {
        write_atomic(
            &self.path("freshness.json"),
            &serde_json::to_vec(f).map_err(std::io::Error::other)?,
        )
    }
}
