#!/usr/bin/env bash
# replication.sh - zdr's replication through the real agents and the real
# data plane, on real OpenZFS, in ONE zfs-vm guest (replication-guest.sh says
# what is checked):
#   1. full then incremental replication between two pools, GUIDs equal;
#   2. a transfer interrupted by killing the target agent (-9) resumes from the
#      target's receive_resume_token;
#   3. a raw send of an encrypted dataset arrives encrypted, key unavailable;
#   4. a byte flipped in transit (a TCP proxy in front of the target's
#      advertise address) fails the first attempt; the retry completes;
#   5. a restore (POST /api/v1/restores) of a middle snapshot from the replica
#      to a new dataset: GUIDs, snapshot chain and file hashes equal
#      production's; the same request again gets 409 and writes nothing.
#
#   integration/zfs-vm/replication.sh            # checks 1-4 (5 runs alone: ZDR_REPL_ONLY=5)
#   ZDR_REPL_ONLY="1 3" integration/zfs-vm/replication.sh
#
# ZDR_REPL_GUEST names another guest script beside this one to run instead,
# with the same fleet set-up (drill.sh runs drill-guest.sh so).
#
# Builds zdr-agent and zdr-coordinator (debug; ZDR_REPL_PROFILE=release for a
# release build) on the host; the guest runs them from the host's target dir,
# with the host's nats-server (NATS_SERVER, or the one on PATH). The fleet's
# logs (nats-server, coordinator, agents, proxy) go to a host directory that
# is kept, and named, when a check fails (ZDR_REPL_KEEP_LOGS=DIR keeps them
# there in any case). Exit code: 0 when every check passed, else the guest's
# (the number of failed checks); 125 means the VM failed. Run it under
# `nice -n 10` on a shared host.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ROOT=$(cd -- "$HERE/../.." && pwd)

PROFILE=${ZDR_REPL_PROFILE:-debug}
case $PROFILE in
    release) (cd "$ROOT" && cargo build --release -p zdr-agent -p zdr-coordinator) ;;
    debug) (cd "$ROOT" && cargo build -p zdr-agent -p zdr-coordinator) ;;
    *) echo "replication.sh: ZDR_REPL_PROFILE must be debug or release" >&2; exit 2 ;;
esac
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE

NATS=${NATS_SERVER:-$(command -v nats-server || true)}
# A pyenv shim is a script that needs pyenv; run the real binary behind it.
if [ -n "$NATS" ] && [ "$(head -c 2 "$NATS")" = "#!" ] && command -v pyenv >/dev/null; then
    NATS=$(pyenv which nats-server)
fi
[ -n "$NATS" ] && [ -x "$NATS" ] || { echo "replication.sh: no nats-server (set NATS_SERVER)" >&2; exit 2; }

if [ -n "${ZDR_REPL_KEEP_LOGS:-}" ]; then
    LOGS=$ZDR_REPL_KEEP_LOGS
    mkdir -p "$LOGS"
    KEEP=1
else
    LOGS=$(mktemp -d /tmp/zdr-replication.XXXXXX)
    KEEP=0
fi

echo "host: $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'); zdr binaries: $BIN ($PROFILE); nats-server: $NATS"
export ZDR_BIN=$BIN ZDR_ROOT=$ROOT ZDR_REPL_LOGS=$LOGS NATS_SERVER=$NATS
export ZDR_REPL_ONLY=${ZDR_REPL_ONLY:-1 2 3 4}
export ZDR_VM_TIMEOUT=${ZDR_VM_TIMEOUT:-2400}
export ZDR_VM_ENV="NATS_SERVER ${ZDR_VM_ENV:-}"
t0=$EPOCHREALTIME
rc=0
# The logs directory is the guest's one read-write share.
GUEST=$HERE/${ZDR_REPL_GUEST:-replication-guest.sh}
[ -f "$GUEST" ] || { echo "replication.sh: no guest script $GUEST (ZDR_REPL_GUEST)" >&2; exit 2; }
ZDR_VM_RW=$LOGS ZDR_VM_TIMING=${ZDR_VM_TIMING:-1} "$HERE/zfs-vm.sh" run /bin/bash "$GUEST" || rc=$?
echo "replication.sh: exit $rc after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')s; host loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ "$rc" -ne 0 ] || [ "$KEEP" = 1 ]; then
    echo "replication.sh: the fleet's logs are in $LOGS" >&2
else
    rm -rf -- "$LOGS"
fi
exit $rc
