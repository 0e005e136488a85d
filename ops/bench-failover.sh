#!/usr/bin/env bash
# Coordinator failover benchmark on a three-server JetStream cluster (loopback):
# the cluster test `leader_killed_mid_stream_hands_over_within_ten_seconds`
# run with ZDR_FAILOVER_TRIALS trials (default 20). Each trial kills the
# leader with SIGKILL, times until the standby answers /readyz 200, and starts
# a fresh standby for the next trial. The first trial kills it mid-stream (a
# 48 MB replication at 4 MB/s); the job must then be adopted, sent once.
# The coordinators run with the product's default lease TTL (tests use 3 s;
# ZDR_TEST_LEASE_TTL=SECS measures another).
#
#   ops/bench-failover.sh          # 20 trials, prints each and the median and worst
#   ZDR_FAILOVER_TRIALS=5 ops/bench-failover.sh
#   ZDR_TEST_LEASE_TTL=15 ops/bench-failover.sh   # the old default
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.local/bin:$PATH"
export ZDR_FAILOVER_TRIALS="${ZDR_FAILOVER_TRIALS:-20}"
export ZDR_TEST_LEASE_TTL="${ZDR_TEST_LEASE_TTL:-default}"
echo "bench-failover: lease TTL $ZDR_TEST_LEASE_TTL, $ZDR_FAILOVER_TRIALS trials" >&2
cargo test --quiet -p zdr-integration --test cluster \
    leader_killed_mid_stream_hands_over_within_ten_seconds -- --nocapture 2>&1 |
    grep -E '^(trial |failover over|sent |test result)'
