#!/usr/bin/env bash
# Kill -9 trials on the simulated fleet (issue 18): integration/tests/trials.rs
# with more trials than CI runs: kills during replication, then one during a
# restore and one during a drill from the copy. Prints the faults injected per
# kind, the invariant violations (the test fails on any), the share of a cut
# stream re-sent, and the recovery times.
#
#   ops/bench-trials.sh                       # 100 trials, 3 kills each, seed 20261206
#   ZDR_TRIALS=20 ZDR_TRIAL_SEED=7 ops/bench-trials.sh
#   ZDR_TRIALS=1 ZDR_TRIAL_FIRST=42 ops/bench-trials.sh    # replay trial 42 alone
#   ZDR_TRIAL_ONLY=19,26 ops/bench-trials.sh              # replay trials 19 and 26
#
# A trial takes about a minute on an idle 2-core machine, several on a loaded one.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.local/bin:$PATH"
export ZDR_TRIALS="${ZDR_TRIALS:-100}"
exec cargo test -p zdr-integration --test trials -- --nocapture --test-threads 1
