//! What the agent keeps on its own disk so that it works on without the
//! coordinator: the last signed policy (verified again on load) and its replay
//! and epoch memory.

use std::path::{Path, PathBuf};

use zdr_common::envelope::{check_expiry, Freshness, Refusal, Verifier};
use zdr_common::subject;
use zdr_common::wire::{PolicyBundle, PolicyRefusalReason};

pub struct StateDir {
    dir: PathBuf,
}

/// A policy that passed verification, with the envelope facts the agent needs.
#[derive(Debug, Clone)]
pub struct SignedPolicy {
    pub bundle: PolicyBundle,
    /// The key id it was signed with.
    pub kid: String,
    pub epoch: u64,
    pub exp: i64,
    pub raw: Vec<u8>,
}

/// A policy envelope the agent will not apply: the reason as a value (it goes
/// into the heartbeat), and the details for the log.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub reason: PolicyRefusalReason,
    /// Known once the signature verified.
    pub revision: Option<u64>,
    pub message: String,
}

impl Refused {
    pub fn new(reason: PolicyRefusalReason, revision: Option<u64>, message: String) -> Refused {
        Refused {
            reason,
            revision,
            message,
        }
    }
}

/// The reason an envelope refusal gives a policy.
fn reason_of(e: &Refusal) -> PolicyRefusalReason {
    use PolicyRefusalReason as R;
    match e {
        Refusal::TooLarge(_) | Refusal::Malformed(_) | Refusal::BadHeader(_) => R::Malformed,
        Refusal::UnknownKey(_) | Refusal::BadSignature | Refusal::KeyMismatch { .. } => {
            R::UntrustedKey
        }
        Refusal::Expired { .. } => R::Expired,
        Refusal::ExpiryTooFar { .. } => R::ExpiryTooFar,
        // A policy has no replay memory, only the epoch.
        Refusal::StaleEpoch { .. } | Refusal::Replay(_) => R::StaleEpoch,
    }
}

impl SignedPolicy {
    /// Verifies and parses a policy envelope; `now` of `None` skips the clock
    /// (only for the agent's own cached copy). The time is checked last, so
    /// an expired policy's revision is known.
    pub fn open(
        verifier: &Verifier,
        raw: &[u8],
        now: Option<i64>,
    ) -> Result<SignedPolicy, Refused> {
        let envelope = |e: Refusal, revision| {
            let mut message = e.to_string();
            if reason_of(&e) == PolicyRefusalReason::UntrustedKey {
                message = format!(
                    "{message}; this agent trusts the key ids {:?} (trusted_keys)",
                    verifier.kids()
                );
            }
            Refused::new(reason_of(&e), revision, message)
        };
        let opened = verifier
            .open_cached(subject::POLICY, raw)
            .map_err(|e| envelope(e, None))?;
        let bundle: PolicyBundle = serde_json::from_slice(opened.payload).map_err(|e| {
            Refused::new(
                PolicyRefusalReason::Malformed,
                None,
                format!("signed policy does not parse: {e}"),
            )
        })?;
        let revision = Some(bundle.revision);
        if let Some(p) = bundle.policy.problems().first() {
            return Err(Refused::new(
                PolicyRefusalReason::Unsound,
                revision,
                format!(
                    "signed policy is unsound at {}: {}",
                    p.path.join("."),
                    p.message
                ),
            ));
        }
        if let Some(now) = now {
            check_expiry(&opened.header, now).map_err(|e| envelope(e, revision))?;
        }
        Ok(SignedPolicy {
            kid: opened.header.kid,
            epoch: opened.header.epoch,
            exp: opened.header.exp,
            bundle,
            raw: raw.to_vec(),
        })
    }
}

/// What to do with a verified policy envelope.
#[derive(Debug)]
pub enum Verdict {
    Apply(Box<SignedPolicy>),
    /// The policy in force, delivered again.
    Same,
}

/// Whether `new` replaces `current`, given the highest epoch seen. Revisions
/// never go back: a lower one is refused, and said so (a coordinator that
/// restarted its count would otherwise leave the agent behind in silence).
pub fn judge(
    new: SignedPolicy,
    current: Option<&SignedPolicy>,
    highest_epoch: u64,
) -> Result<Verdict, Refused> {
    let revision = Some(new.bundle.revision);
    if new.epoch < highest_epoch {
        return Err(Refused::new(
            PolicyRefusalReason::StaleEpoch,
            revision,
            format!(
                "stale epoch {}; the highest epoch seen is {highest_epoch}",
                new.epoch
            ),
        ));
    }
    if let Some(cur) = current {
        if new.bundle.revision < cur.bundle.revision {
            return Err(Refused::new(
                PolicyRefusalReason::OlderRevision,
                revision,
                format!(
                    "revision {} is older than revision {} in force; revisions never go back",
                    new.bundle.revision, cur.bundle.revision
                ),
            ));
        }
        if new.bundle.revision == cur.bundle.revision && new.exp <= cur.exp {
            return Ok(Verdict::Same);
        }
    }
    Ok(Verdict::Apply(Box::new(new)))
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
                .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use zdr_common::envelope::{generate_key, Sealer};

    const NOW: i64 = 1_800_000_000;

    fn bundle(revision: u64) -> PolicyBundle {
        PolicyBundle {
            revision,
            issued_at: NOW,
            source_digest: String::new(),
            policy: serde_json::from_value(serde_json::json!({
                "version": 1, "sites": {}, "nodes": {}, "classes": {}, "datasets": []
            }))
            .unwrap(),
        }
    }

    fn seal(s: &Sealer, revision: u64, iat: i64, epoch: u64) -> Vec<u8> {
        let payload = serde_json::to_vec(&bundle(revision)).unwrap();
        s.seal(subject::POLICY, "p", iat, 3600, epoch, &payload)
    }

    fn trusting(s: &Sealer) -> Verifier {
        let mut v = Verifier::new();
        v.trust(s.kid(), s.verifying_key());
        v
    }

    #[test]
    fn each_refusal_has_its_reason_and_the_revision_when_known() {
        let a = Sealer::new("key-a", generate_key());
        let b = Sealer::new("key-b", generate_key());
        let v = trusting(&a);
        let ok = SignedPolicy::open(&v, &seal(&a, 3, NOW, 1), Some(NOW)).unwrap();
        assert_eq!((ok.bundle.revision, ok.kid.as_str()), (3, "key-a"));

        let e = SignedPolicy::open(&v, &seal(&b, 4, NOW, 1), Some(NOW)).unwrap_err();
        assert_eq!(
            (e.reason, e.revision),
            (PolicyRefusalReason::UntrustedKey, None)
        );
        assert!(e.message.contains("[\"key-a\"]"), "{e}");

        let old = seal(&a, 5, NOW - 7200, 1);
        let e = SignedPolicy::open(&v, &old, Some(NOW)).unwrap_err();
        assert_eq!(
            (e.reason, e.revision),
            (PolicyRefusalReason::Expired, Some(5))
        );
        assert!(
            SignedPolicy::open(&v, &old, None).is_ok(),
            "the cached copy skips the clock"
        );

        let e = SignedPolicy::open(&v, b"junk", Some(NOW)).unwrap_err();
        assert_eq!(e.reason, PolicyRefusalReason::Malformed);

        // Trusting both keys, as during a rotation: either verifies.
        let mut both = trusting(&a);
        both.trust(b.kid(), b.verifying_key());
        let p = SignedPolicy::open(&both, &seal(&b, 4, NOW, 1), Some(NOW)).unwrap();
        assert_eq!(p.kid, "key-b");
    }

    #[test]
    fn revisions_and_epochs_never_go_back() {
        let a = Sealer::new("key-a", generate_key());
        let v = trusting(&a);
        let open =
            |rev, iat, epoch| SignedPolicy::open(&v, &seal(&a, rev, iat, epoch), None).unwrap();
        let cur = open(3, NOW, 2);
        assert!(matches!(
            judge(open(4, NOW, 2), Some(&cur), 2),
            Ok(Verdict::Apply(_))
        ));
        assert!(matches!(
            judge(open(1, NOW, 2), None, 2),
            Ok(Verdict::Apply(_))
        ));
        let e = judge(open(1, NOW + 60, 3), Some(&cur), 2).unwrap_err();
        assert_eq!(
            (e.reason, e.revision),
            (PolicyRefusalReason::OlderRevision, Some(1))
        );
        assert!(e.message.contains("revision 3 in force"), "{e}");
        let e = judge(open(9, NOW, 1), Some(&cur), 2).unwrap_err();
        assert_eq!(
            (e.reason, e.revision),
            (PolicyRefusalReason::StaleEpoch, Some(9))
        );
        // The same revision again: nothing to do; re-signed later: applied.
        assert!(matches!(
            judge(open(3, NOW, 2), Some(&cur), 2),
            Ok(Verdict::Same)
        ));
        assert!(matches!(
            judge(open(3, NOW + 60, 2), Some(&cur), 2),
            Ok(Verdict::Apply(_))
        ));
    }
}
