#!/usr/bin/env bash
# Fleet scale benchmark: N simulated agents (real agent code, sim backend, one
# NATS connection each) in one process against a real nats-server and a real
# release zdr-coordinator (integration/src/bin/zdr-fleet-sim.rs).
#
#   ops/bench-scale.sh                         # 10x10x100 and 100x10x100 (a few minutes)
#   ops/bench-scale.sh 1000x10x100 1000x100x100   # opt-in: the large sizes
#   ops/bench-scale.sh 1000x10x100+tasks       # +tasks: one replication task over every dataset
#
# Sizes are NODESxDATASETSxSNAPSHOTS. Environment:
#   ZDR_SCALE_COORDINATOR  another coordinator binary to measure (e.g. an older build)
#   ZDR_SCALE_SETTLE       seconds to watch the fleet after ingest (default 30)
#   ZDR_SCALE_TIMEOUT      seconds to wait for ingest (default 600)
#   ZDR_SCALE_KEEP=1       keep the work directories (logs, JetStream store)
# A size that does not finish ingest within the timeout is reported as such
# and the next size still runs; the script exits non-zero if any failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$HOME/.local/bin:$PATH"

say() { printf 'bench-scale: %s\n' "$*" >&2; }

sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(10x10x100 100x10x100)

say "building release binaries (zdr-coordinator, zdr-fleet-sim)"
cargo build --release --quiet -p zdr-coordinator --bin zdr-coordinator -p zdr-integration --bin zdr-fleet-sim || exit 1
coordinator="${ZDR_SCALE_COORDINATOR:-$root/target/release/zdr-coordinator}"
sim="$root/target/release/zdr-fleet-sim"
command -v nats-server >/dev/null || { say "nats-server not found (ops/install-deps.sh installs it)"; exit 1; }

base=$(mktemp -d)
cleanup() { [ "${ZDR_SCALE_KEEP:-0}" = 1 ] && say "work directories kept in $base" || rm -rf "$base"; }
trap cleanup EXIT

failed=0
for size in "${sizes[@]}"; do
  tasks=()
  spec="$size"
  if [[ "$spec" == *+tasks ]]; then tasks=(--tasks); spec="${spec%+tasks}"; fi
  IFS=x read -r n d s <<<"$spec"
  if ! [[ "$n" =~ ^[0-9]+$ && "$d" =~ ^[0-9]+$ && "$s" =~ ^[0-9]+$ ]]; then
    say "size '$size' is not NODESxDATASETSxSNAPSHOTS (e.g. 100x10x100, optionally +tasks)"; exit 2
  fi
  work="$base/$size"
  ulimit -n 65536 2>/dev/null || true
  if ! "$sim" --nodes "$n" --datasets "$d" --snapshots "$s" "${tasks[@]}" \
      --coordinator "$coordinator" --work "$work" \
      --settle-secs "${ZDR_SCALE_SETTLE:-30}" --ingest-timeout-secs "${ZDR_SCALE_TIMEOUT:-600}"; then
    say "$size failed (logs in $work; ZDR_SCALE_KEEP=1 keeps them)"
    failed=1
  fi
done
exit $failed
