#!/usr/bin/env bash
# trials.sh - the kill -9 trials of integration/tests/trials.rs on real
# OpenZFS, in ONE zfs-vm guest: the same test binary and seeded plan as the
# simulated fleet's (ops/bench-trials.sh), with ZDR_TRIAL_ZFS=1: the two
# agents run the cli backend, node-a1 on pool `tank`, node-b1 on `backup`,
# both made afresh for every trial, while a writer fills tank/big.
#
#   integration/zfs-vm/trials.sh                        # 20 trials, seed 20261206
#   ZDR_TRIALS=1 ZDR_TRIAL_FIRST=7 integration/zfs-vm/trials.sh   # replay trial 7
#   ZDR_TRIAL_ONLY=2,9 integration/zfs-vm/trials.sh      # replay trials 2 and 9
#   ZDR_VM_ZFS=2.1 integration/zfs-vm/trials.sh          # on OpenZFS 2.1
#
# The host side is replication.sh's (the binaries, nats-server, a kept logs
# directory); each trial's process logs go to trial-N/ in it. Exit code: 0
# when every trial kept every invariant; 125 means the VM failed.
set -euo pipefail
HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ROOT=$(cd -- "$HERE/../.." && pwd)
bin=$(cd "$ROOT" && cargo test -p zdr-integration --test trials --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "trials" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "trials.sh: building the trials test binary failed" >&2; exit 2; }
export ZDR_TRIALS_BIN=$bin ZDR_TRIAL_ZFS=1 ZDR_TRIALS=${ZDR_TRIALS:-20}
export ZDR_VM_TIMEOUT=${ZDR_VM_TIMEOUT:-$((900 * ZDR_TRIALS + 600))}
ZDR_REPL_GUEST=trials-guest.sh exec "$HERE/replication.sh"
