#!/usr/bin/env bash
# bench-catchup.sh - benchmark (not a test) of bringing a replica up to date
# after a backlog of N small snapshots of one filesystem, on real OpenZFS, in
# ONE zfs-vm guest. Three methods, each from the same start state (the target
# dst/n1/src/data holds only the first snapshot, received again before each
# method; no holds), each ending with the target holding the same N snapshots
# with equal GUIDs (checked):
#   (1) zdr: the real zdr-coordinator and two real zdr-agents (backend "cli")
#       and a nats-server, in the guest; agent n1 sends src/data over the
#       agents' mutual-TLS data plane to agent n2, which receives into pool dst.
#       Timed by wall clock from writing the task into the coordinator's tasks
#       file (the fleet is already up, with no task) until the target lists
#       all N snapshots; the job record's own start-to-finish is printed too.
#   (2) N-1 `zfs send -i | zfs recv` steps, each followed by moving a hold on
#       both sides (hold the new snapshot, release the previous one), as
#       zrepl's steps do;
#   (3) one bare `zfs send -I first last | zfs recv`: the limit.
# Methods 2 and 3 send with zdr's flags for the task's raw: (-w by default),
# so all three move the same stream, and receive as zdr's target (and
# zrepl's) does, resumable (-s -u). Zdr's runs alternate with the bare -I
# runs ("1 3 1 3 1 3 2"), each with a fresh fleet; single runs in this lane
# vary by 10-20 %. Prints every run, the medians and the ratios of the
# medians (2)/(1) (goal >= 5x) and (1)/(3) (goal <= 1.2x), and (1)/(3) pair
# by pair. About 20 min for N = 200.
#
#   integration/zfs-vm/bench-catchup.sh [N]        # N >= 200, default 200
#
# Builds zdr-agent and zdr-coordinator with --release on the host first
# (ZDR_BENCH_PROFILE=debug for a debug build; ZDR_BENCH_BIN=DIR runs the
# binaries in DIR instead, without building), and a small C helper (gcc,
# libzfslinux-dev) that writes a 4 KiB file and takes one lzc_snapshot per
# snapshot, and another that waits for a snapshot with lzc_exists (method 1's
# observer). Environment: ZDR_BENCH_METHODS (which methods, in that order;
# default "1 3 1 3 1 3 2"), ZDR_BENCH_RAW (the task's raw:, default true),
# ZDR_BENCH_KEEP_LOGS (a host directory to keep the fleet's logs in), plus
# zfs-vm.sh's ZDR_VM_* (ZDR_VM_TIMEOUT defaults to 3600 here). Run it under
# `nice -n 10` on a shared host. Exit code: the guest's; 125 means the VM
# failed.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ROOT=$(cd -- "$HERE/../.." && pwd)
N=${1:-200}
case $N in ''|*[!0-9]*|0*) echo "bench-catchup: N must be a positive integer, not '$N'" >&2; exit 2 ;; esac
[ "$N" -ge 200 ] || { echo "bench-catchup: N must be at least 200" >&2; exit 2; }

PROFILE=${ZDR_BENCH_PROFILE:-release}
if [ -n "${ZDR_BENCH_BIN:-}" ]; then
    BIN=$(readlink -f -- "$ZDR_BENCH_BIN")
    PROFILE="prebuilt"
else
    case $PROFILE in
        release) (cd "$ROOT" && cargo build --release -p zdr-agent -p zdr-coordinator) ;;
        debug) (cd "$ROOT" && cargo build -p zdr-agent -p zdr-coordinator) ;;
        *) echo "bench-catchup: ZDR_BENCH_PROFILE must be release or debug" >&2; exit 2 ;;
    esac
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
fi

# The guest sees the host's / read-only, so these host directories are visible.
TMP=$(mktemp -d /tmp/zdr-bench-catchup.XXXXXX)
LOGS=${ZDR_BENCH_KEEP_LOGS:-$TMP/logs}
mkdir -p "$LOGS"
trap 'rm -rf -- "$TMP"' EXIT
# helper NAME FALLBACK: builds fleet/NAME.c into $TMP and prints its path, or
# prints nothing and warns (saying what FALLBACK is used instead).
helper() {
    if gcc -O2 -I/usr/include/libzfs -I/usr/include/libspl -o "$TMP/$1" "$HERE/fleet/$1.c" \
        -lzfs_core -lnvpair 2> "$TMP/gcc.err"; then
        echo "$TMP/$1"
    else
        echo "bench-catchup: WARNING: could not build the $1 helper; $2:" >&2
        sed 's/^/  /' "$TMP/gcc.err" >&2
    fi
}
SNAP=$(helper snapwrite "falling back to zfs snapshot")
WAIT=$(helper snapwait "method 1 polls with zfs list")
NATS=${NATS_SERVER:-$(command -v nats-server || true)}
# pyenv shims need a writable home; use the real binary behind the shim.
if [ -n "$NATS" ] && [ "$(head -c 2 "$NATS")" = "#!" ] && command -v pyenv >/dev/null; then
    NATS=$(pyenv which nats-server)
fi

echo "host: $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'); zdr binaries: $BIN ($PROFILE)"
export ZDR_BENCH_N=$N ZDR_BENCH_SNAP=$SNAP ZDR_BENCH_WAIT=$WAIT ZDR_BIN=$BIN ZDR_ROOT=$ROOT ZDR_BENCH_LOGS=$LOGS NATS_SERVER=$NATS
export ZDR_BENCH_METHODS=${ZDR_BENCH_METHODS:-1 3 1 3 1 3 2}
export ZDR_BENCH_M1_TIMEOUT=${ZDR_BENCH_M1_TIMEOUT:-900}
export ZDR_VM_TIMEOUT=${ZDR_VM_TIMEOUT:-3600}
export ZDR_VM_ENV="NATS_SERVER ${ZDR_VM_ENV:-}"
rc=0
# The logs directory is the guest's one read-write share.
ZDR_VM_RW=$LOGS ZDR_VM_TIMING=${ZDR_VM_TIMING:-1} "$HERE/zfs-vm.sh" run /bin/bash "$HERE/bench-catchup-guest.sh" || rc=$?
echo "host: loadavg at the end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
[ "$rc" -eq 0 ] || [ -n "${ZDR_BENCH_KEEP_LOGS:-}" ] || echo "bench-catchup: set ZDR_BENCH_KEEP_LOGS=DIR to keep the fleet's logs" >&2
exit $rc
