#!/bin/bash
# trials-guest.sh - runs INSIDE the zfs-vm guest, started by trials.sh
# (through replication.sh): the trials test binary on real OpenZFS. The
# test makes and destroys its pools (tank, backup) itself; this script only
# points it at the host's binaries and keeps the logs on the share.
set -euo pipefail
echo "== zdr kill -9 trials on real OpenZFS ($(zfs version | head -n 1))"
export ZDR_NATS_SERVER=$NATS_SERVER ZDR_TRIAL_LOGS=${ZDR_REPL_LOGS:?}
trap 'zpool destroy -f tank 2>/dev/null || true; zpool destroy -f backup 2>/dev/null || true' EXIT
"${ZDR_TRIALS_BIN:?}" --exact kill_9_trials_keep_every_invariant --nocapture --test-threads 1
