//! The lifecycle's clock: every tick, a rescan when one is due, a snapshot
//! pass and a prune pass, until shutdown. A pass that has begun always ends:
//! shutdown is seen between passes, never in the middle of a destroy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::now;
use crate::lifecycle::Lifecycle;

/// How often an expired cached policy is mentioned in the log.
const EXPIRY_WARNING_EVERY: i64 = 3600;

pub struct Settings {
    /// How often snapshots and pruning are checked.
    pub tick: Duration,
    /// How often, in seconds, the whole inventory is listed again.
    pub rescan_secs: i64,
    /// Who the audit log names for retention's destroys.
    pub actor: String,
}

/// Runs passes every `settings.tick` until `shutdown`; returns once the pass
/// under way, if any, has finished.
pub async fn run(lifecycle: Arc<Lifecycle>, settings: Settings, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(settings.tick);
    // A pass longer than a tick is followed by one pass, not a burst of them.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_expiry = 0;
    loop {
        tokio::select! {
            // Checked first: after a long pass both are ready.
            biased;
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let t = now();
        if let Some(p) = lifecycle.policy() {
            if p.exp < t && t - warned_expiry > EXPIRY_WARNING_EVERY {
                warned_expiry = t;
                warn!(expired_at = p.exp, "the cached policy has expired; still applying it until the coordinator sends a new one");
            }
        }
        let (lc, actor, rescan) = (
            lifecycle.clone(),
            settings.actor.clone(),
            settings.rescan_secs,
        );
        let pass = tokio::task::spawn_blocking(move || {
            if lc.rescan_due(t, rescan) {
                if let Err(e) = lc.rescan(t) {
                    warn!(error = %e, "inventory scan failed");
                }
            }
            let taken = lc.snapshot_pass(t, false);
            let pruned = lc.prune_pass(t, &actor);
            crate::telemetry::record_pass(&lc, &taken, &pruned, t);
        });
        // Not raced against `shutdown`: the pass finishes first.
        if let Err(e) = pass.await {
            warn!(error = %e, "lifecycle pass panicked");
        }
    }
}
