#!/usr/bin/env bash
# bench-restore.sh - benchmark (not a test) of giving data back, on real
# OpenZFS, in ONE zfs-vm guest (bench-restore-guest.sh says what runs):
#   R/B  a zdr restore of a MIB MiB dataset from its replica (the real
#        coordinator and agents, the mutual-TLS data plane) against a bare
#        `zfs send -w | zfs receive -s -u` of the same snapshot (goal <= 1.2x);
#   C/H  the drill's content hash (the agent's own code) against `cat` of the
#        same files to /dev/null (goal: hash throughput >= 0.8x cat's);
# side by side, in turn, ZDR_BENCH_PAIRS times (default 3), then one drill
# through the fleet for its phase times. About 10 min here for 256 MiB.
#
#   integration/zfs-vm/bench-restore.sh [MIB]     # MIB >= 256, a multiple of 16
#
# Builds zdr-agent, zdr-coordinator and the agent's content_hash example
# with --release first (ZDR_BENCH_PROFILE=debug for a debug build;
# ZDR_BENCH_BIN=DIR runs the binaries in DIR without building, and
# ZDR_BENCH_HASH=FILE another content_hash build).
# ZDR_BENCH_KEEP_LOGS=DIR keeps the fleet's logs; zfs-vm.sh's ZDR_VM_*
# apply (ZDR_VM_MEM defaults to 6144M here: the pools live in guest RAM).
# Run it under `nice -n 10` on a shared host. Exit code: the guest's; 125
# means the VM failed.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ROOT=$(cd -- "$HERE/../.." && pwd)
MIB=${1:-256}
case $MIB in ''|*[!0-9]*|0*) echo "bench-restore: MIB must be a positive integer, not '$MIB'" >&2; exit 2 ;; esac
[ "$MIB" -ge 256 ] && [ $((MIB % 16)) = 0 ] || { echo "bench-restore: MIB must be at least 256 and a multiple of 16" >&2; exit 2; }

PROFILE=${ZDR_BENCH_PROFILE:-release}
if [ -n "${ZDR_BENCH_BIN:-}" ]; then
    BIN=$(readlink -f -- "$ZDR_BENCH_BIN")
    PROFILE="prebuilt"
else
    case $PROFILE in
        release) (cd "$ROOT" && cargo build --release -p zdr-agent -p zdr-coordinator --bins --example content_hash) ;;
        debug) (cd "$ROOT" && cargo build -p zdr-agent -p zdr-coordinator --bins --example content_hash) ;;
        *) echo "bench-restore: ZDR_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
    esac
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
fi
HASH=${ZDR_BENCH_HASH:-$BIN/examples/content_hash}
[ -x "$HASH" ] || { echo "bench-restore: no content_hash example at $HASH (ZDR_BENCH_HASH)" >&2; exit 2; }

NATS=${NATS_SERVER:-$(command -v nats-server || true)}
# A pyenv shim is a script that needs pyenv; run the real binary behind it.
if [ -n "$NATS" ] && [ "$(head -c 2 "$NATS")" = "#!" ] && command -v pyenv >/dev/null; then
    NATS=$(pyenv which nats-server)
fi
[ -n "$NATS" ] && [ -x "$NATS" ] || { echo "bench-restore: no nats-server (set NATS_SERVER)" >&2; exit 2; }

TMP=$(mktemp -d /tmp/zdr-bench-restore.XXXXXX)
LOGS=${ZDR_BENCH_KEEP_LOGS:-$TMP/logs}
mkdir -p "$LOGS"
trap 'rm -rf -- "$TMP"' EXIT

echo "host: $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'); zdr binaries: $BIN ($PROFILE); commit $(git -C "$ROOT" rev-parse --short HEAD)"
export ZDR_BIN=$BIN ZDR_ROOT=$ROOT ZDR_BENCH_LOGS=$LOGS NATS_SERVER=$NATS ZDR_BENCH_MIB=$MIB
export ZDR_BENCH_HASH=$HASH
export ZDR_VM_TIMEOUT=${ZDR_VM_TIMEOUT:-3600} ZDR_VM_MEM=${ZDR_VM_MEM:-6144M}
export ZDR_VM_ENV="NATS_SERVER ${ZDR_VM_ENV:-}"
rc=0
# The logs directory is the guest's one read-write share.
ZDR_VM_RW=$LOGS ZDR_VM_TIMING=${ZDR_VM_TIMING:-1} "$HERE/zfs-vm.sh" run /bin/bash "$HERE/bench-restore-guest.sh" || rc=$?
echo "host: loadavg at the end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
[ "$rc" -eq 0 ] || [ -n "${ZDR_BENCH_KEEP_LOGS:-}" ] || echo "bench-restore: set ZDR_BENCH_KEEP_LOGS=DIR to keep the fleet's logs" >&2
exit $rc
