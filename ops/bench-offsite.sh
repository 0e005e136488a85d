#!/usr/bin/env bash
# Benchmarks the offsite tier (agent/src/offsite) against the same S3 server's
# raw PUT and GET of the same bytes, side by side in one run, with peak RSS
# per phase. The benchmark starts its own SeaweedFS (`weed mini`, object lock
# on) on loopback; ops/install-deps.sh installs `weed`.
#
#   ops/bench-offsite.sh                              # 512 MiB, 32 MiB segments, 4 in flight, 3 runs
#   ops/bench-offsite.sh --bytes 1073741824 --segment-mib 64 --in-flight 2 --runs 5
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.local/bin:$PATH"
command -v weed >/dev/null || bash ops/install-deps.sh

printf 'bench-offsite: building the benchmark (release)\n' >&2
cargo bench -p zdr-agent --bench offsite --no-run --quiet
exec cargo bench -p zdr-agent --bench offsite --quiet -- "$@"
