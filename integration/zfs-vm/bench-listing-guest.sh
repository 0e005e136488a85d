#!/bin/bash
# bench-listing-guest.sh - runs INSIDE the zfs-vm guest, started by
# bench-listing.sh (read that one first). Creates the snapshots (of one
# dataset, or spread over ZDR_BENCH_DATASETS children of it) up to each size in turn, and at each size times every listing method,
# interleaved, ZDR_BENCH_REPS times, checking that all of them list the same
# snapshots. Prints a table of medians and ratios to method (a).
#
# Environment (set by bench-listing.sh):
#   ZDR_BENCH_SIZES          ascending snapshot counts, e.g. "1000 10000 100000"
#   ZDR_BENCH_REPS           timed runs of each method per size (median taken)
#   ZDR_BENCH_DATASETS       1: the snapshots are in one dataset, listed with
#                            -d 1; D > 1: in D children of it, listed with -r
#   ZDR_BENCH_LZC            path of the lzc_snapshot loop helper, or empty
#                            (then one `zfs snapshot` per snapshot: far slower)
#   ZDR_BENCH_LUA            path of list_snapshots.lua
#   ZDR_BENCH_CREATE_BUDGET  seconds of snapshot creation allowed per size;
#                            when it runs out (or creation fails) the
#                            snapshots that exist are measured, and no more
#   ZDR_BENCH_LIST_BUDGET    seconds of timed listing allowed per size
#   ZDR_BENCH_POOL_SIZE      size of the sparse file vdev (2G; a 2G pool ran
#                            out of space, ENOSPC from lzc_snapshot, at 4949
#                            snapshots; the progress lines show the pool's
#                            allocated bytes)
#   ZDR_BENCH_TIME_LIMIT     seconds this whole script may take (0: no limit).
#                            A size whose creation plus one listing round (as
#                            extrapolated from the previous size) does not fit
#                            is skipped; a listing run that would overrun it is
#                            killed and shown as "killed".
set -euo pipefail

SIZES=${ZDR_BENCH_SIZES:?}
REPS=${ZDR_BENCH_REPS:-3}
LZC=${ZDR_BENCH_LZC:-}
LUA=${ZDR_BENCH_LUA:?}
CREATE_BUDGET=${ZDR_BENCH_CREATE_BUDGET:-2700}
LIST_BUDGET=${ZDR_BENCH_LIST_BUDGET:-1500}
TIME_LIMIT=${ZDR_BENCH_TIME_LIMIT:-0}
POOL_SIZE=${ZDR_BENCH_POOL_SIZE:-2G}
NDS=${ZDR_BENCH_DATASETS:-1}

POOL=zdrbench
DS=$POOL/fs
COLS=name,guid,createtxg,creation,used,userrefs
METHODS=(a b c d)
declare -A LABEL=(
    [a]="zfs list -Hp -o $COLS -s createtxg"
    [b]="zfs list -H -o name -s name (names only)"
    [c]="zfs program -n -j list_snapshots.lua"
    [d]="zfs list -j -p -o $COLS -s createtxg"
)

now() { echo "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
log() { printf '[%7.1fs] %s\n' "$(sub "$T0" "$(now)")" "$*"; }
die() { log "BENCH FAILED: $*" >&2; exit 1; }
remaining() {  # seconds left under ZDR_BENCH_TIME_LIMIT (a large number if none)
    if [ "$TIME_LIMIT" -gt 0 ]; then
        awk -v l="$TIME_LIMIT" -v e="$(sub "$T0" "$(now)")" 'BEGIN { printf "%d", l - e - 20 }'
    else echo 999999999; fi
}

T0=$(now)
W=$(mktemp -d)
echo "guest: kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo)," \
    "uptime $(cut -d' ' -f1 /proc/uptime)s, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "guest: $(zfs version | tr '\n' ' ')"

# The channel program ceilings (100M instructions, 100 MiB) are module
# parameters; raise them so 100k snapshots fit if they are ever reached.
echo 1000000000 > /sys/module/zfs/parameters/zfs_lua_max_instrlimit
echo 1073741824 > /sys/module/zfs/parameters/zfs_lua_max_memlimit
LUA_T=1000000000
LUA_M=1073741824

truncate -s "$POOL_SIZE" "$W/pool.img"
zpool create -o ashift=12 -O mountpoint=none -O atime=off "$POOL" "$W/pool.img"
zfs create "$DS"
FSS=("$DS")     # the filesystems that get snapshots, one each per round
DEPTH=(-d 1)
if [ "$NDS" -gt 1 ]; then
    FSS=()
    for ((i = 0; i < NDS; i++)); do FSS+=("$(printf '%s/d%04d' "$DS" "$i")"); done
    for f in "${FSS[@]}"; do zfs create "$f"; done
    DEPTH=(-r)
    log "created $NDS datasets under $DS; each round snapshots all of them in one txg"
fi

argv_of() {  # argv_of M: set ARGV to the command that lists $DS by method M
    case $1 in
    a) ARGV=(zfs list -Hp -t snapshot -o "$COLS" -s createtxg "${DEPTH[@]}" "$DS") ;;
    b) ARGV=(zfs list -H -t snapshot -o name -s name "${DEPTH[@]}" "$DS") ;;
    c) ARGV=(zfs program -n -j -t "$LUA_T" -m "$LUA_M" "$POOL" "$LUA" "$DS" "${DEPTH[0]#-}") ;;
    d) ARGV=(zfs list -j -p -t snapshot -o "$COLS" -s createtxg "${DEPTH[@]}" "$DS") ;;
    esac
}

names_of() {  # names_of M OUTFILE: the sorted snapshot names in one output
    case $1 in
    a|b) cut -f1 "$2" ;;
    # JSON: every snapshot is an object key "pool/fs@name":{ ; nothing else
    # in these outputs has an '@' in a key.
    c|d) grep -o "\"$DS[^\"@]*@[^\"]*\":{" "$2" | sed 's/^"//; s/":{$//' ;;
    esac | LC_ALL=C sort
}

HAVE=0          # snapshots created so far
RATE=""         # measured creation rate, snapshots/s
create_upto() {  # create_upto N: extend $DS's snapshots to N; 1 if the budget ran out
    local n=$1 t=$(now) chunk left el tc
    if [ -n "$RATE" ]; then
        local est lest=0
        est=$(awk -v n="$n" -v h="$HAVE" -v r="$RATE" 'BEGIN { printf "%d", (n - h) / r }')
        if [ "$est" -gt "$CREATE_BUDGET" ]; then
            log "SKIP size $n: creating $((n - HAVE)) more snapshots at the measured $RATE/s" \
                "would take ~${est}s, over ZDR_BENCH_CREATE_BUDGET=${CREATE_BUDGET}s"
            return 1
        fi
        [ -z "$LAST_ROUND" ] || lest=$(awk -v r="$LAST_ROUND" -v n="$n" -v p="$LAST_N" 'BEGIN { printf "%d", r * n / p }')
        if [ $((est + lest)) -gt "$(remaining)" ]; then
            log "SKIP size $n: creating $((n - HAVE)) more snapshots at the measured $RATE/s (~${est}s) plus" \
                "one listing round (~${lest}s, scaled linearly from size $LAST_N) exceeds the $(remaining)s left" \
                "of ZDR_BENCH_TIME_LIMIT=${TIME_LIMIT}s"
            return 1
        fi
    fi
    while [ "$HAVE" -lt "$n" ]; do
        # chunk: snapshots per helper call, whole rounds of one per filesystem
        left=$((n - HAVE)); chunk=$((left < 250 ? left : 250)); tc=$(now)
        chunk=$(( (chunk + NDS - 1) / NDS * NDS ))
        if [ -n "$LZC" ]; then
            if ! "$LZC" "$((HAVE / NDS))" "$((chunk / NDS))" "${FSS[@]}"; then
                # keep what exists: count it, and measure at that size
                HAVE=$(zfs list -H -t snapshot -o name "${DEPTH[@]}" "$DS" | wc -l)
                log "CREATION FAILED with $HAVE snapshots; $(zpool list -Hp -o size,alloc,free "$POOL" | tr '\t' ' ')" \
                    "(size alloc free, bytes)"
                return 2
            fi
        else
            for ((i = HAVE / NDS; i < (HAVE + chunk) / NDS; i++)); do
                zfs snapshot "${FSS[@]/%/$(printf '@s%07d' "$i")}"
            done
        fi
        HAVE=$((HAVE + chunk))
        CREATE_SECS=$(awk -v a="$CREATE_SECS" -v c="$(sub "$tc" "$(now)")" 'BEGIN { print a + c }')
        el=$(sub "$t" "$(now)")
        RATE=$(awk -v h="$HAVE" -v e="$CREATE_SECS" 'BEGIN { printf "%.2f", h / e }')
        if [ $((HAVE / 2000)) -gt $(((HAVE - chunk) / 2000)) ] || [ "$HAVE" -eq "$n" ]; then
            log "created $HAVE snapshots (this size: ${el}s; overall $RATE snapshots/s;" \
                "pool size alloc free $(zpool list -Hp -o size,alloc,free "$POOL" | tr '\t' ' '))"
        fi
        if awk -v e="$el" -v b="$CREATE_BUDGET" 'BEGIN { exit !(e > b) }' && [ "$HAVE" -lt "$n" ]; then
            log "STOP size $n: ZDR_BENCH_CREATE_BUDGET=${CREATE_BUDGET}s used up with $HAVE snapshots ($RATE/s)"
            return 2
        fi
    done
    CREATE_TIME[$n]=$(sub "$t" "$(now)")
}

declare -A CREATE_TIME TIMES MED MIN MAX COUNT NREPS KILLED NRUN
RESULT_SIZES=()
LAST_ROUND=""   # seconds of the first listing round at the last size measured
LAST_N=""
CREATE_SECS=0   # seconds spent creating snapshots, all sizes

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

print_table() {
    echo
    echo "== Snapshot listing: $([ "$NDS" -gt 1 ] && echo "$NDS datasets, recursive" || echo "one dataset"), OpenZFS $(zfs version | head -n 1 | sed 's/^zfs-//'), median of the timed runs =="
    printf '%-9s  %-74s  %4s  %9s  %9s  %9s  %8s  %8s\n' snapshots method runs "median s" "min s" "max s" "vs (a)" "listed"
    local n m
    for n in "${RESULT_SIZES[@]}"; do
        for m in "${METHODS[@]}"; do
            if [ "${MED[$n,$m]}" = nan ]; then
                printf '%-9s  %-74s  %4s  %9s  %9s  %9s  %8s  %8s\n' "$n" "($m) ${LABEL[$m]}" 0 killed - - - "${COUNT[$n,$m]}"
                continue
            fi
            printf '%-9s  %-74s  %4s  %9.3f  %9.3f  %9.3f  %8s  %8s\n' "$n" "($m) ${LABEL[$m]}" "${NRUN[$n,$m]}" \
                "${MED[$n,$m]}" "${MIN[$n,$m]}" "${MAX[$n,$m]}" \
                "$(awk -v x="${MED[$n,$m]}" -v a="${MED[$n,a]}" 'BEGIN { if (a == "nan") print "-"; else printf "%.2fx", x / a }')" "${COUNT[$n,$m]}"
        done
    done
    for n in "${RESULT_SIZES[@]}"; do
        echo "creation up to $n: ${CREATE_TIME[$n]}s for this step"
    done
}

bench_size() {  # bench_size N: time every method at the current $HAVE == N
    local n=$1 r m k t f reps=$REPS order
    log "size $n: warm-up (names only, untimed)"
    argv_of b; "${ARGV[@]}" > "$W/warm"
    for m in "${METHODS[@]}"; do TIMES[$m]=""; done
    for ((r = 0; r < reps; r++)); do
        # interleaved, and rotated each round so no method always runs first
        order=()
        for ((k = 0; k < ${#METHODS[@]}; k++)); do order+=("${METHODS[(k + r) % ${#METHODS[@]}]}"); done
        local round_t0
        round_t0=$(now)
        for m in "${order[@]}"; do
            f="$W/out.$n.$m.$r"
            local left cap rc=0
            left=$(remaining)
            cap=$((left > 30 ? left : 30))
            argv_of "$m"
            t=$(now)
            timeout -s TERM "$cap" "${ARGV[@]}" > "$f" || rc=$?
            t=$(sub "$t" "$(now)")
            if [ $rc -eq 124 ]; then
                log "size $n round $((r + 1))/$reps: ($m) KILLED after ${t}s (ZDR_BENCH_TIME_LIMIT)"
                KILLED[$n,$m]=$t
                rm -f "$f"
                continue
            fi
            [ $rc -eq 0 ] || die "method ($m) failed at size $n (exit $rc)"
            TIMES[$m]+="$t "
            # check: every method lists exactly the snapshots that exist
            names_of "$m" "$f" > "$f.names"
            COUNT[$n,$m]=$(wc -l < "$f.names")
            [ "${COUNT[$n,$m]}" -eq "$n" ] || die "method ($m) listed ${COUNT[$n,$m]} snapshots, expected $n"
            if [ -f "$W/ref.names" ]; then
                cmp -s "$W/ref.names" "$f.names" || die "method ($m) listed other names than method (a) at size $n"
            fi
            [ "$m" != a ] || [ -f "$W/ref.names" ] || cp "$f.names" "$W/ref.names"
            log "size $n round $((r + 1))/$reps: ($m) ${t}s, $n listed"
            rm -f "$f" "$f.names"
        done
        if [ "$r" -eq 0 ]; then LAST_ROUND=$(sub "$round_t0" "$(now)"); LAST_N=$n; fi
        if [ "$r" -lt $((reps - 1)) ] && [ "$(remaining)" -lt "${LAST_ROUND%.*}" ]; then
            log "size $n: stopping after $((r + 1)) round(s): another (~${LAST_ROUND}s) does not fit ZDR_BENCH_TIME_LIMIT"
            reps=$((r + 1))
        fi
        if [ "$r" -eq 0 ] && [ "$reps" -gt 1 ]; then
            local round need
            round=$(sub "$round_t0" "$(now)")
            need=$(awk -v r="$round" -v n="$reps" 'BEGIN { printf "%d", r * (n - 1) }')
            if [ "$need" -gt "$LIST_BUDGET" ]; then
                reps=$(awk -v r="$round" -v b="$LIST_BUDGET" -v n="$reps" 'BEGIN { k = int(b / r) + 1; if (k < 1) k = 1; if (k > n) k = n; print k }')
                log "size $n: one round took ${round}s; only $reps round(s) fit ZDR_BENCH_LIST_BUDGET=${LIST_BUDGET}s"
            fi
        fi
    done
    rm -f "$W/ref.names"
    NREPS[$n]=$reps
    for m in "${METHODS[@]}"; do
        if [ -z "${TIMES[$m]// /}" ]; then
            MED[$n,$m]=nan; MIN[$n,$m]=nan; MAX[$n,$m]=nan; COUNT[$n,$m]="killed@${KILLED[$n,$m]}s"; continue
        fi
        MED[$n,$m]=$(echo "${TIMES[$m]}" | median)
        NRUN[$n,$m]=$(echo "${TIMES[$m]}" | wc -w)
        MIN[$n,$m]=$(echo "${TIMES[$m]}" | tr ' ' '\n' | grep . | sort -g | head -n 1)
        MAX[$n,$m]=$(echo "${TIMES[$m]}" | tr ' ' '\n' | grep . | sort -g | tail -n 1)
    done
    RESULT_SIZES+=("$n")
    print_table
}

for n in $SIZES; do
    log "=== size $n ==="
    rc=0; create_upto "$n" || rc=$?
    if [ $rc -eq 2 ] && [ "$HAVE" -gt 0 ]; then
        log "measuring at the $HAVE snapshots that exist instead of $n; larger sizes were not measured"
        CREATE_TIME[$HAVE]="(failed at $HAVE)"
        bench_size "$HAVE"
        break
    fi
    [ $rc -eq 0 ] || { log "sizes from $n on were not measured"; break; }
    bench_size "$n"
done
log "done; guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
zpool destroy "$POOL"
[ "${#RESULT_SIZES[@]}" -gt 0 ] || die "no size was measured"
