#!/usr/bin/env bash
# Benchmarks an agent's /metrics scrape (agent/benches/scrape.rs): 10,000
# snapshots against 100, side by side in one run, on the simulated backend
# (the scrape reads the agent's memory; no ZFS is involved either way).
#
#   ops/bench-agent-scrape.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo bench --quiet -p zdr-agent --bench scrape
