#!/usr/bin/env bash
# Benchmarks a new leader's read of a KV bucket (coordinator/benches/kv_load.rs):
# keys() then a get per key (the baseline) against bus::load_all (one
# ordered-consumer pass), side by side in one run against one nats-server.
#
#   ops/bench-kv-load.sh                          # 20,000 inventories of 13.3 KB
#   ZDR_BENCH_KEYS=100000 ops/bench-kv-load.sh    # 1,000 nodes x 100 datasets
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo bench --quiet -p zdr-coordinator --bench kv_load
