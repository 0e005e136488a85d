#!/bin/bash
# bench-restore-guest.sh - runs INSIDE the zfs-vm guest, started by
# bench-restore.sh (read that one first). src/big (MIB MiB of random data in
# 16 MiB files, snapshot @b1, class gold) is replicated to n2 (untimed), the
# task removed, and then, side by side, in turn:
#   (R) zdr: POST /api/v1/restores of n1:src/big@b1 from n2's copy to a new
#       dataset on n1, timed from the POST until the restore says done;
#   (B) bare: `zfs send -w dst/n1/src/big@b1 | zfs receive -s -u src/...`,
#       the same stream zdr sends (a restore sends the copy as stored, -w)
#       received as zdr's target does;
#   (H) the drill's content hash of src/big@b1, by the agent's own code
#       (agent/examples/content_hash.rs: private read-only mount, BLAKE3 walk,
#       unmount): its read_ms over the bytes it read;
#   (C) `cat` of the same files (the same read-only mount, path order) to
#       /dev/null, timed without the mount.
# Every restore is checked (landed GUID = the snapshot's) and destroyed
# before the next. An untimed warm-up reads the replica and the snapshot
# once, so every method reads from the ARC. Then one drill of src/big
# through the fleet, for its phase times. Prints each run, the medians and
# the ratios R/B (goal <= 1.2x) and H/C throughput (goal >= 0.8x).
#
# Environment (set by bench-restore.sh): ZDR_BIN, ZDR_ROOT, ZDR_BENCH_LOGS,
# NATS_SERVER, ZDR_BENCH_HASH (the content_hash example), ZDR_BENCH_MIB
# (default 256), ZDR_BENCH_PAIRS (default 3).
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
W=$(mktemp -d)
LOGS=${ZDR_BENCH_LOGS:-$W/logs}
MIB=${ZDR_BENCH_MIB:-256}
PAIRS=${ZDR_BENCH_PAIRS:-3}
HASH=${ZDR_BENCH_HASH:?the content_hash example}
T0=$EPOCHREALTIME
RESCAN_SECS=20
# shellcheck source=fleet/lib.sh
. "$HERE/fleet/lib.sh"

die() { log "BENCH FAILED: $*" >&2; show_logs 30; exit 1; }
cleanup() { fleet_stop; pools_destroy; }
trap cleanup EXIT

SRC=src/big
COPY=dst/n1/src/big
secs_since() { sub "$1" "$(now)"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "guest: kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {printf "%d MiB", $2/1024}' /proc/meminfo)," \
    "loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(zfs version | head -n 1)"
pools_create 3G
fleet_setup
cat > "$W/fleet/policy.yaml" <<'EOF'
version: 1
sites:
  lab: {}
nodes:
  n1: { site: lab, media: ssd }
  n2: { site: lab, media: hdd }
classes:
  gold:
    tiers: { 1d: 3 }
    rpo: 1d
    rto: 1h
    immutable_for: 0s
    copies: { total: 2, media: 2, offsite: 0 }
datasets:
  - match: "src/big"
    class: gold
EOF
fleet_up || die "the fleet did not come up"

# Written outside the class and renamed into it, so that @b1 is the first
# snapshot (the agent snapshots a class's new dataset at its next pass): a
# restore of @b1 is then one full stream, as the bare method's.
zfs create src/stage
for i in $(seq 1 $((MIB / 16))); do head -c 16777216 /dev/urandom > "$W/mnt/stage/f$i"; done
zfs snapshot src/stage@b1
zfs rename src/stage $SRC
GUID=$(zfs get -H -p -o value guid $SRC@b1)
log "$SRC@b1: $MIB MiB in $((MIB / 16)) files, GUID $GUID, referenced $(zfs get -H -p -o value referenced $SRC@b1) bytes"

t=$(now)
fleet_tasks 'version: 1
tasks:
  - name: big
    source: { match: "src/big", nodes: [n1] }
    target: { site: same, media: different, root: "dst/{node}" }
    schedule: { every: 3s }'
# shellcheck disable=SC2329  # called through wait_until
copied() { [ "$(zfs get -H -p -o value guid $COPY@b1 2>/dev/null)" = "$GUID" ]; }
wait_until 900 "$COPY@b1" copied || die "the replication of $SRC never landed"
log "replicated to n2 in $(secs_since "$t") s (untimed here; includes the fleet noticing the task)"
fleet_tasks 'version: 1
tasks: []'
POINTS="/api/v1/restore-points?node=n1&dataset=$SRC"
# shellcheck disable=SC2329  # called through wait_until
listed() { $API "$HTTP_PORT" value "$POINTS" 'copies.1.snapshots.*.name' | grep -qx b1; }
wait_until 120 "the restore points to list n2's copy" listed || die "n2's copy never listed"

# The warm-up: the copy's blocks and the snapshot's files into the ARC.
t=$(now)
zfs send -w $COPY@b1 > /dev/null
"$HASH" $SRC@b1 > /dev/null
log "warm-up (send of the copy to /dev/null, one hash) $(secs_since "$t") s"

restore_state() { $API "$HTTP_PORT" value "/api/v1/restores/$1" state 2>/dev/null; }
restore_ended() { case $(restore_state "$1") in done | failed) return 0 ;; *) return 1 ;; esac; }
no_restore_holds() { ! { holds_of $COPY; holds_of "$1"; } | grep -q ' zdr-restore-'; }

# run_r N: prints the seconds of one zdr restore into src/rzN
run_r() {
    local to=src/rz$1 body reply job t st
    body="{\"source\":\"n1:$SRC\",\"snapshot\":\"b1\",\"from\":\"n2\",\"to\":\"n1:$to\"}"
    t=$(now)
    reply=$($API "$HTTP_PORT" post /api/v1/restores "$body") || die "POST /api/v1/restores got no answer"
    [ "$(head -n 1 <<< "$reply")" = 202 ] || die "POST $body -> $(tr '\n' ' ' <<< "$reply")"
    job=$($API "$HTTP_PORT" value - job <<< "$(tail -n 1 <<< "$reply")")
    while ! restore_ended "$job"; do sleep 0.2; done
    R_SECS=$(secs_since "$t")
    st=$(restore_state "$job")
    [ "$st" = done ] || die "restore $job ended $st: $($API "$HTTP_PORT" value "/api/v1/restores/$job" error)"
    [ "$(zfs get -H -p -o value guid "$to@b1")" = "$GUID" ] || die "$to@b1 has not GUID $GUID"
    $API "$HTTP_PORT" value "/api/v1/restores/$job" history | sed 's/^/    history: /' | tail -n 4
    wait_until 60 "the restore's holds to go" no_restore_holds "$to" || log "(restore holds still there)"
    zfs destroy -r "$to"
}

# run_b N: one bare send | receive into src/rbN
run_b() {
    local to=src/rb$1 t
    t=$(now)
    zfs send -w $COPY@b1 | zfs receive -s -u "$to"
    B_SECS=$(secs_since "$t")
    [ "$(zfs get -H -p -o value guid "$to@b1")" = "$GUID" ] || die "$to@b1 has not GUID $GUID"
    zfs destroy -r "$to"
}

# run_h: the agent's content hash; H_MS its read_ms, H_BYTES what it read
run_h() {
    local out
    out=$("$HASH" $SRC@b1) || die "content_hash failed"
    H_MS=$($API 0 value - read_ms <<< "$out"); H_BYTES=$($API 0 value - bytes <<< "$out")
    H_DIGEST=$($API 0 value - digest <<< "$out")
    [ "$($API 0 value - level <<< "$out")" = files-hashed ] || die "content_hash: $out"
}

# run_c: cat of the same files, the same kind of mount; C_SECS without it
run_c() {
    local m t
    m=$(mktemp -d "$W/ro.XXXXXX")
    mount -t zfs -o ro $SRC@b1 "$m"
    t=$(now)
    (cd "$m" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 cat > /dev/null)
    C_SECS=$(secs_since "$t")
    umount "$m" && rmdir "$m"
}

RS="" BS="" HS="" CS=""
for i in $(seq 1 "$PAIRS"); do
    run_r "$i"; RS+=" $R_SECS"
    run_b "$i"; BS+=" $B_SECS"
    run_h; HS+=" $(awk -v m="$H_MS" 'BEGIN { printf "%.3f", m / 1000 }')"
    run_c; CS+=" $C_SECS"
    log "pair $i: zdr restore $R_SECS s, bare send|receive $B_SECS s ($(ratio "$R_SECS" "$B_SECS")x); hash read $H_MS ms of $H_BYTES bytes, cat $C_SECS s"
done

# One drill through the fleet, for its phases (restore into scratch on n2,
# both hashes, cleanup).
reply=$($API "$HTTP_PORT" post /api/v1/drills "{\"source\":\"n1:$SRC\",\"copy\":\"n2\"}")
[ "$(head -n 1 <<< "$reply")" = 202 ] || die "POST /api/v1/drills -> $(tr '\n' ' ' <<< "$reply")"
DRILL=$($API "$HTTP_PORT" value - job <<< "$(tail -n 1 <<< "$reply")")
# shellcheck disable=SC2329  # called through wait_until
drill_ended() { case $($API "$HTTP_PORT" drill "$DRILL" state) in passed | failed) return 0 ;; *) return 1 ;; esac; }
wait_until 900 "drill $DRILL to end" drill_ended || die "the drill did not end"
dv() { $API "$HTTP_PORT" drill "$DRILL" "result.$1"; }
DRILL_LINE="drill $DRILL $($API "$HTTP_PORT" drill "$DRILL" state) at level $(dv level): transfer $(dv transfer_ms) ms, mount $(dv mount_ms) ms, hashes (both sides at once) $(dv hash_ms) ms, cleanup $(dv cleanup_ms) ms, measured RTO $(dv rto_ms) ms"
[ "$(dv production_digest)" = "$H_DIGEST" ] || DRILL_LINE+="; WARNING: its production digest differs from content_hash's"

R=$(median <<< "$RS"); B=$(median <<< "$BS"); H=$(median <<< "$HS"); C=$(median <<< "$CS")
MB=$(awk -v b="$H_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
echo
echo "== restore and drill benchmark, $MIB MiB ($H_BYTES bytes in $((MIB / 16)) files), $(zfs version | head -n 1) =="
echo "(R) zdr restore from n2's copy, POST to done (s): $RS   median $R"
echo "(B) bare zfs send -w | zfs receive -s -u (s):      $BS   median $B"
echo "    R/B = $(ratio "$R" "$B")x (goal <= 1.2x); pair by pair:$(paste -d' ' <(tr ' ' '\n' <<< "${RS# }") <(tr ' ' '\n' <<< "${BS# }") | while read -r a b; do printf ' %sx' "$(ratio "$a" "$b")"; done)"
echo "(H) drill content hash, read (s):                  $HS   median $H ($(awk -v b="$MB" -v s="$H" 'BEGIN { printf "%.1f", b / s }') MB/s)"
echo "(C) cat of the same files to /dev/null (s):        $CS   median $C ($(awk -v b="$MB" -v s="$C" 'BEGIN { printf "%.1f", b / s }') MB/s)"
echo "    hash throughput / cat throughput = C/H = $(ratio "$C" "$H")x (goal >= 0.8x)"
echo "$DRILL_LINE"
log "done; guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
