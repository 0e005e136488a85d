#!/bin/bash
# bench-catchup-guest.sh - runs INSIDE the zfs-vm guest, started by
# bench-catchup.sh (read that one first). Makes a backlog of N small
# snapshots of src/data, then brings dst/n1/src/data (which holds only the
# first one) up to date three ways, from the same start state each time, and
# prints the times and ratios side by side. A method listed more than once in
# ZDR_BENCH_METHODS runs again (a fresh fleet each time for zdr); the ratios
# are then of the medians, and each run is printed.
#
# Environment (set by bench-catchup.sh):
#   ZDR_BENCH_N        snapshots in the backlog (>= 200)
#   ZDR_BENCH_SNAP     path of the snapwrite helper (fleet/snapwrite.c), or empty
#   ZDR_BENCH_WAIT     path of the snapwait helper (fleet/snapwait.c), or empty
#   ZDR_BENCH_METHODS  which methods to run, in order (default "1 3 1 3 1 3 2")
#   ZDR_BENCH_RAW      the task's `raw:` (default true, the task default); the
#                      bare methods send with the same flags (-w when true),
#                      so all three move the same stream; all three receive
#                      with -s -u
#   ZDR_BENCH_M1_TIMEOUT  seconds method 1 may take before it is given up
#                      (default 900; the others still run, the exit code is 1)
#   ZDR_BIN            directory with the zdr-agent and zdr-coordinator to run
#   ZDR_ROOT           the checkout
#   ZDR_BENCH_LOGS     where the fleet's process logs go
#   NATS_SERVER        the nats-server binary
set -euo pipefail

N=${ZDR_BENCH_N:?}
SNAP=${ZDR_BENCH_SNAP:-}
WAIT=${ZDR_BENCH_WAIT:-}
METHODS=${ZDR_BENCH_METHODS:-1 3 1 3 1 3 2}
M1_TIMEOUT=${ZDR_BENCH_M1_TIMEOUT:-900}
RAW=${ZDR_BENCH_RAW:-true}
FAILED_METHODS=""
HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
W=$(mktemp -d)
LOGS=${ZDR_BENCH_LOGS:-$W/logs}
T0=$EPOCHREALTIME
# shellcheck source=fleet/lib.sh
. "$HERE/fleet/lib.sh"

die() { log "BENCH FAILED: $*" >&2; show_logs 30; exit 1; }
cleanup() { fleet_stop; pools_destroy; }
trap cleanup EXIT

SRC=src/data
DST=dst/n1/src/data          # where the task's root "dst/{node}" puts it
FIRST=$(printf 's%05d' 1)
LAST=$(printf 's%05d' "$N")
TAG=zdr-bench                # the hold tag method 2 moves
# What zdr's send adds for the task's raw: (an unencrypted dataset here, so
# -w is -Lec: blocks as stored). The bare methods use the same.
SEND_FLAGS=()
[ "$RAW" != true ] || SEND_FLAGS=(-w)
# And they receive as zdr's target does (and zrepl's: its receiver saves the
# partial state too): resumable, not mounted.
RECV_FLAGS=(-s -u)

echo "guest: kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo)," \
    "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(zfs version | head -n 1)"

pools_create 2G
zfs create "$SRC"
zfs create -p dst/n1/src

# The backlog: N snapshots, each after writing a 4 KiB file.
t=$(now)
if [ -n "$SNAP" ]; then
    "$SNAP" "$SRC" "$W/mnt/data" 1 "$N" || die "snapwrite failed"
else
    for ((i = 1; i <= N; i++)); do
        head -c 4096 /dev/urandom > "$W/mnt/data/$(printf 'f%05d' "$i")"
        zfs snapshot "$SRC@$(printf 's%05d' "$i")"
    done
fi
log "made $N snapshots of $SRC (a 4 KiB file before each) in $(sub "$t" "$(now)")s"
[ "$(snaps "$SRC" | wc -l)" -eq "$N" ] || die "expected $N snapshots of $SRC"

# Warm-up, not timed. The first method in a fresh guest met cold caches (the
# binaries come over the 9p share, the backlog's blocks were not in the ARC)
# and was the slowest of its kind in both paired runs before this was added.
t=$(now)
zfs send "${SEND_FLAGS[@]}" -I "@$FIRST" "$SRC@$LAST" > /dev/null
cat "$ZDR_BIN/zdr-agent" "$ZDR_BIN/zdr-coordinator" "$NATS_SERVER" "$(command -v zfs)" > /dev/null
log "warm-up: the backlog sent to /dev/null, the binaries read once ($(sub "$t" "$(now)")s)"

# reset: the start state of every method. The target has only the first
# snapshot (destroyed and received again), and no holds are left anywhere.
reset() {
    release_all "$SRC"
    if zfs list -H -o name "$DST" >/dev/null 2>&1; then
        release_all "$DST"
        zfs destroy -r "$DST"
    fi
    zfs send "$SRC@$FIRST" | zfs recv -u "$DST"
    [ "$(snaps "$DST" | wc -l)" -eq 1 ] || die "reset: $DST should have one snapshot"
    sync
}

# check M: the end state is right: the same N snapshots, equal GUIDs.
check() {
    local m=$1
    same_snaps "$SRC" "$DST" || {
        diff <(snaps "$SRC") <(snaps "$DST") | head -n 10 >&2
        die "method $m: $DST does not have the same snapshots (names and GUIDs) as $SRC"
    }
    CHECKED[$m]="$N snapshots, GUIDs equal (newest $(snaps "$DST" | tail -n 1))"
    HOLDS[$m]="src: $(holds_of "$SRC" | tr '\n' ' ')| dst: $(holds_of "$DST" | tr '\n' ' ')"
    log "method $m: checked: ${CHECKED[$m]}; holds ${HOLDS[$m]}"
}

# TIMES[M]: every run's seconds of method M; TIME[M]: their median, at the end
declare -A TIME CHECKED HOLDS NOTE TIMES
# took M START [WHAT]: a run of method M that started at START ends now
took() {
    local secs
    secs=$(sub "$2" "$(now)")
    TIMES[$1]+="$secs "
    log "method $1: ${secs}s${3:+ $3}"
}

# (3) one bare -I stream: the limit.
method3() {
    reset
    log "method 3: zfs send ${SEND_FLAGS[*]} -I @$FIRST $SRC@$LAST | zfs recv ${RECV_FLAGS[*]}"
    local t
    t=$(now)
    zfs send "${SEND_FLAGS[@]}" -I "@$FIRST" "$SRC@$LAST" | zfs recv "${RECV_FLAGS[@]}" "$DST"
    took 3 "$t"
    check 3
}

# (2) N-1 -i steps, each followed by moving the holds on both sides (hold the
# new snapshot, release the previous one), as zrepl's steps do. The base is
# held on both sides before the clock starts.
method2() {
    reset
    zfs hold "$TAG" "$SRC@$FIRST" "$DST@$FIRST"
    log "method 2: $((N - 1)) x (zfs send ${SEND_FLAGS[*]} -i | zfs recv ${RECV_FLAGS[*]}; hold new and release previous on both sides)"
    local t i prev cur
    t=$(now)
    prev=$FIRST
    for ((i = 2; i <= N; i++)); do
        cur=$(printf 's%05d' "$i")
        zfs send "${SEND_FLAGS[@]}" -i "@$prev" "$SRC@$cur" | zfs recv "${RECV_FLAGS[@]}" "$DST"
        zfs hold "$TAG" "$DST@$cur"
        zfs hold "$TAG" "$SRC@$cur"
        zfs release "$TAG" "$DST@$prev"
        zfs release "$TAG" "$SRC@$prev"
        prev=$cur
        if [ $((i % 50)) -eq 0 ]; then log "method 2: $i/$N ($(sub "$t" "$(now)")s)"; fi
    done
    took 2 "$t"
    check 2
}

# (1) zdr: the real coordinator and agents. The fleet starts with no task;
# the wall clock starts when the task is written to the tasks file (the
# coordinator checks it every second) and stops when the target has the last
# snapshot, seen by the snapwait helper (one lzc_exists ioctl every 0.5 s; a
# `zfs list` a second, the fallback, starts a process each time and loads the
# guest it measures; methods 2 and 3 have no observer at all).
# The coordinator's job record gives the job's own start (planned) and finish
# (the target reported the last snapshot landed, GUID checked).
# landed: whether the target has @$LAST, waiting up to LANDED_STEP seconds
LANDED_STEP=$([ -n "$WAIT" ] && echo 30 || echo 1)
landed() {
    if [ -n "$WAIT" ]; then
        "$WAIT" "$DST@$LAST" "$LANDED_STEP"
    else
        zfs list -H -o name "$DST@$LAST" >/dev/null 2>&1 || { sleep 1; return 1; }
    fi
}

method1() {
    reset
    [ -x "$ZDR_BIN/zdr-agent" ] && [ -x "$ZDR_BIN/zdr-coordinator" ] || die "no zdr binaries in $ZDR_BIN"
    rm -rf "$W/fleet"            # a fresh fleet for every run: keys, NATS store, agents' state
    fleet_setup
    fleet_up || die "the fleet did not come up"
    log "method 1: fleet up (coordinator, agents n1 and n2); writing the task"
    local t job_start job_end cpu0
    cpu0=$(fleet_cpu)
    t=$(now)
    fleet_tasks "version: 1
tasks:
  - name: catchup
    source: { match: \"$SRC\", nodes: [n1] }
    target: { site: same, media: different, root: \"dst/{node}\" }
    schedule: { every: 10s }
    raw: $RAW"
    local waited=0
    until landed; do
        waited=$((waited + LANDED_STEP))
        if [ "$waited" -ge "$M1_TIMEOUT" ]; then
            log "method 1: the target did not get @$LAST within ${M1_TIMEOUT}s; the job's history:"
            $API "$HTTP_PORT" field "$SRC" history 2>/dev/null | sed 's/^/    history: /' || true
            NOTE[1]="did not finish within ${M1_TIMEOUT}s; last error: $($API "$HTTP_PORT" field "$SRC" error 2>/dev/null | cut -c1-200)"
            FAILED_METHODS+=" 1"
            fleet_stop
            return 0
        fi
    done
    took 1 "$t" "until the target had @$LAST (wall clock from writing the task)"
    # What the fleet's own processes cost the guest meanwhile (zfs(8) children not counted).
    CPU1=$(join <(echo "$cpu0" | sort) <(fleet_cpu | sort) |
        awk '{ printf "%s%s %.1f s", sep, $1, $3 - $2; sep = ", " }')
    log "method 1: CPU (user+system) of the fleet's processes meanwhile: $CPU1"
    wait_until 120 "the job record to say done" \
        bash -c "[ \"\$($API $HTTP_PORT field $SRC state)\" = done ]" ||
        log "method 1: the job record is not done: $($API "$HTTP_PORT" field "$SRC" state)"
    $API "$HTTP_PORT" job "$SRC" > "$LOGS/bench-job.json" 2>/dev/null || true
    $API "$HTTP_PORT" field "$SRC" history 2>/dev/null | sed 's/^/    history: /' || true
    job_start=$($API "$HTTP_PORT" field "$SRC" started_at_ms 2>/dev/null || echo -)
    job_end=$($API "$HTTP_PORT" field "$SRC" finished_at_ms 2>/dev/null || echo -)
    local job_time
    job_time=$(awk -v a="$job_start" -v b="$job_end" 'BEGIN { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) printf "%.3f", (b - a) / 1000; else print "-" }')
    NOTE[1]="job record: state $($API "$HTTP_PORT" field "$SRC" state 2>/dev/null), attempt $($API "$HTTP_PORT" field "$SRC" attempt 2>/dev/null), $($API "$HTTP_PORT" field "$SRC" bytes 2>/dev/null) bytes, started_at_ms to finished_at_ms ${job_time}s"
    [ "$job_time" = - ] || JOB_TIMES+="$job_time "
    log "method 1: ${NOTE[1]}"
    # The hold moves after the job is done; give the agents time for it.
    wait_until 60 "the hold zdr-repl-catchup on @$LAST on both sides" \
        bash -c "zfs holds -H $SRC@$LAST | grep -q zdr-repl-catchup && zfs holds -H $DST@$LAST | grep -q zdr-repl-catchup" || true
    check 1
    fleet_stop
}

for m in $METHODS; do
    "method$m"
done

# median "T1 T2 ...": the middle one, or the mean of the middle two
median() {
    # shellcheck disable=SC2086 # one word per time
    printf '%s\n' $1 | sort -g |
        awk 'NF { v[++n] = $1 } END { if (n) printf "%.3f", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'
}
for m in "${!TIMES[@]}"; do TIME[$m]=$(median "${TIMES[$m]}"); done
JOB_TIME=$(median "${JOB_TIMES:-}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }

echo
echo "== Replication catch-up: $N snapshots of one filesystem (4 KiB written before each), $(zfs version | head -n 1 | sed 's/^zfs-//') =="
echo "raw: $RAW (all methods send with: ${SEND_FLAGS[*]:-no flags}, receive with: ${RECV_FLAGS[*]}); seconds are the median of the runs listed"
printf '%-4s  %-72s  %10s  %s\n' method what seconds "end state"
declare -A WHAT=(
    [1]="zdr: coordinator + 2 agents, mTLS data plane (wall clock: task written -> last snapshot on target)"
    [2]="$((N - 1)) x zfs send ${SEND_FLAGS[*]} -i | zfs recv ${RECV_FLAGS[*]}, holds moved on both sides each step"
    [3]="one zfs send ${SEND_FLAGS[*]} -I first..last | zfs recv ${RECV_FLAGS[*]} (no holds)"
)
for m in 1 2 3; do
    [ -n "${TIME[$m]:-}" ] || continue
    printf '%-4s  %-72s  %10s  %s\n' "($m)" "${WHAT[$m]}" "${TIME[$m]}" "${CHECKED[$m]}"
    printf '%-4s  %s\n' "" "runs: ${TIMES[$m]}"
done
[ -z "${NOTE[1]:-}" ] || printf '%-4s  %s\n' "" "(1) ${NOTE[1]}"
[ -z "${CPU1:-}" ] || printf '%-4s  %s\n' "" "(1) CPU of the fleet's processes, task written to last snapshot landed: $CPU1"
for m in 1 2 3; do [ -z "${HOLDS[$m]:-}" ] || printf 'holds after (%s): %s\n' "$m" "${HOLDS[$m]}"; done
echo "method2/method1 = $(ratio "${TIME[2]:-}" "${TIME[1]:-}") (goal >= 5x)"
echo "method1/method3 = $(ratio "${TIME[1]:-}" "${TIME[3]:-}") (goal <= 1.2x)"
# Runs of 1 and 3 taken in turn ("1 3 1 3 ..."): the k-th of each as a pair.
read -ra R1 <<< "${TIMES[1]:-}"
read -ra R3 <<< "${TIMES[3]:-}"
if [ "${#R1[@]}" -gt 1 ] && [ "${#R1[@]}" -eq "${#R3[@]}" ]; then
    pairs=""
    for k in "${!R1[@]}"; do pairs+="$(ratio "${R1[$k]}" "${R3[$k]}") "; done
    echo "method1/method3 run by run: $pairs"
fi
if [ -n "${JOB_TIME:-}" ] && [ "$JOB_TIME" != - ]; then
    echo "with the job record's time for (1), ${JOB_TIME}s (median of ${JOB_TIMES}): method2/method1 = $(ratio "${TIME[2]:-}" "$JOB_TIME"), method1/method3 = $(ratio "$JOB_TIME" "${TIME[3]:-}")"
fi
log "done; guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$FAILED_METHODS" ] || { log "BENCH INCOMPLETE: method(s)$FAILED_METHODS did not finish"; exit 1; }
