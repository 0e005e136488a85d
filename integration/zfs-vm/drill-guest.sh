#!/bin/bash
# drill-guest.sh - runs INSIDE the zfs-vm guest, started by drill.sh (read
# that one first). The fleet of replication-guest.sh (fleet/lib.sh: a real
# nats-server, the real zdr-coordinator, two real zdr-agents with the "cli"
# backend; n1 owns pool src, n2 holds the replicas under dst/n1/), with a
# class `gold` for the drilled datasets. Three checks, in order:
#   1. a drill that passes: src/drill (files, a subdirectory, a symlink, two
#      snapshots) replicated to n2; POST /api/v1/drills restores the copy's
#      newest snapshot into scratch dst/zdr-drill/<job> on n2: the drill is
#      recorded passed in /api/v1/drills at level files-hashed with equal
#      digests, phase times and a measured RTO; zpool history shows the
#      scratch received `-o canmount=noauto` and destroyed; no scratch is
#      left; the replica's snapshots and holds are as before; the files of
#      the snapshot (read-only mounts) hash the same on production and on
#      the replica;
#   2. the next raw incremental after a drill: src/secret (encrypted, sent
#      raw) drilled (level blocks-read: no key on n2), then a new snapshot
#      on the source: the next job sends it incrementally and completes on
#      its first attempt, GUIDs equal, the replica still without its key
#      (a drill never snapshots the replica: OpenZFS #15314);
#   3. real corruption: src/rot (16 MiB of random data) replicated to n2;
#      pool dst exported, 4 KiB inverted inside four of the file's records
#      in dst's vdev file (found by their content: data, never labels),
#      imported again (nothing cached): the drill FAILS, its reason names
#      the I/O error, its scratch is destroyed; `zpool status -v dst` then
#      counts checksum errors, and a scrub lists the permanent errors.
# Every check prints PASS or FAIL with its evidence; the exit code is the
# number of failed checks, 0 when all passed.
#
# Environment (set by drill.sh through replication.sh): ZDR_BIN, ZDR_ROOT,
# ZDR_REPL_LOGS, NATS_SERVER, and ZDR_DRILL_ONLY (a subset of "1 2 3").
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
W=$(mktemp -d)
LOGS=${ZDR_REPL_LOGS:-$W/logs}
ONLY=${ZDR_DRILL_ONLY:-1 2 3}
T0=$EPOCHREALTIME
RESCAN_SECS=20
# shellcheck source=fleet/lib.sh
. "$HERE/fleet/lib.sh"

FAILED=()
PASSED=()
pass() { log "PASS: $*"; PASSED+=("$*"); }
fail() { log "FAIL: $*" >&2; FAILED+=("$*"); }
cleanup() { fleet_stop; pools_destroy; }
trap cleanup EXIT

DATASETS=(src/drill src/secret src/rot)

# gold_policy: the fleet's policy with class gold for the drilled datasets
# (one snapshot a day by the agent; drills only when asked: every 90 days)
gold_policy() {
    {
        cat <<'EOF'
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
EOF
        local d
        for d in "${DATASETS[@]}"; do printf '  - match: "%s"\n    class: gold\n' "$d"; done
    } > "$W/fleet/policy.yaml"
}

# tasks DS...: one task per dataset (copy-<last component>), copying src/X of n1 to n2 under dst/n1/
tasks() {
    local d text="version: 1
tasks:"
    for d in "$@"; do
        text+="
  - name: copy-${d##*/}
    source: { match: \"$d\", nodes: [n1] }
    target: { site: same, media: different, root: \"dst/{node}\" }
    schedule: { every: 3s }"
    done
    [ $# -gt 0 ] || text+=" []"
    fleet_tasks "$text"
}

target_of() { echo "dst/n1/$1"; }
fill() { head -c "$(($2 * 1048576))" /dev/urandom > "$W/mnt/${1#src/}/$3"; }
caught_up() { same_snaps "$1" "$(target_of "$1")" 2>/dev/null; }
job_state() { $API "$HTTP_PORT" field "$1" state 2>/dev/null; }
job_done() { [ "$(job_state "$1")" = "done" ]; }
guids() { snaps "$1" | tr '\t\n' ': ' | sed 's/ $//'; }

# await_job T DS WHAT SECS: DS's target catches up, then its job says done;
# the job's history goes into H.
await_job() {
    local t=$1 ds=$2 what=$3 secs=$4
    wait_until "$secs" "$(target_of "$ds") to catch up ($what)" caught_up "$ds" || {
        fail "$t: $(target_of "$ds") did not get $what within $secs s"; return 1; }
    wait_until 60 "the job record to say done" job_done "$ds" || {
        fail "$t: job state $(job_state "$ds"), not done"; return 1; }
    H=$($API "$HTTP_PORT" field "$ds" history 2>/dev/null || true)
}

# copy_has DS SNAP: the restore points of n1:DS list n2's copy with @SNAP
copy_has() {
    $API "$HTTP_PORT" value "/api/v1/restore-points?node=n1&dataset=$1" 'copies.1.snapshots.*.name' |
        grep -qx "$2"
}

# n2_reports_dst: n2's last heartbeat lists pool dst
n2_reports_dst() {
    $API "$HTTP_PORT" value "/api/v1/fleet?node=n2" 'nodes.0.pools.*.name' | grep -qx dst
}

# snap_hashes DS@SNAP: "sha256  ./path" of every file, read-only mount
snap_hashes() {
    local m
    m=$(mktemp -d "$W/ro.XXXXXX")
    mount -t zfs -o ro "$1" "$m" || { rmdir "$m"; return 1; }
    (cd "$m" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) || { umount "$m"; return 1; }
    umount "$m" && rmdir "$m"
}

drill_value() { $API "$HTTP_PORT" drill "$1" "$2" 2>/dev/null; }
drill_ended() { case $(drill_value "$1" state) in passed | failed) return 0 ;; *) return 1 ;; esac; }
show_drill() {
    echo "    drill $1:"
    $API "$HTTP_PORT" drill "$1" result 2>/dev/null | sed 's/^/    result: /' || true
    $API "$HTTP_PORT" drill "$1" history 2>/dev/null | sed 's/^/    history: /' || true
}

# drill_result: D_* from one read of drill $DRILL's record
drill_result() {
    local v
    mapfile -t v < <($API "$HTTP_PORT" drill "$DRILL" state result.level result.why result.production_digest \
        result.restored_digest result.cleaned result.transfer_ms result.mount_ms result.hash_ms result.cleanup_ms \
        result.rto_ms result.within_rto)
    [ "${#v[@]}" = 12 ] || return 1
    D_STATE=${v[0]} D_LEVEL=${v[1]} D_WHY=${v[2]} D_PD=${v[3]} D_RD=${v[4]} D_CLEANED=${v[5]}
    D_PHASES="transfer ${v[6]} ms, mount ${v[7]} ms, hash ${v[8]} ms, cleanup ${v[9]} ms, measured RTO ${v[10]} ms (class RTO 3600 s, within: ${v[11]})"
}

# SCRATCH_SEEN: "canmount mounted" of the scratch, sampled while it exists
SCRATCH_SEEN=
# drill_run T DS: POSTs a drill of n1:DS from n2's copy and waits for its
# end, sampling the scratch's canmount meanwhile; sets DRILL (job id),
# SCRATCH and DSNAP (the drilled snapshot).
drill_run() {
    local t=$1 ds=$2 body reply code accepted
    body="{\"source\":\"n1:$ds\",\"copy\":\"n2\"}"
    reply=$($API "$HTTP_PORT" post /api/v1/drills "$body") || { fail "$t: POST /api/v1/drills got no answer"; return 1; }
    code=$(head -n 1 <<< "$reply"); accepted=$(tail -n 1 <<< "$reply")
    [ "$code" = 202 ] || { fail "$t: POST /api/v1/drills $body -> $code $accepted"; return 1; }
    DRILL=$($API "$HTTP_PORT" value - job <<< "$accepted")
    SCRATCH=$($API "$HTTP_PORT" value - scratch.dataset <<< "$accepted")
    DSNAP=$($API "$HTTP_PORT" value - snapshot.name <<< "$accepted")
    log "POST /api/v1/drills $body -> 202: job $DRILL, scratch n2:$SCRATCH, snapshot @$DSNAP"
    SCRATCH_SEEN=
    # shellcheck disable=SC2329  # called through wait_until
    ended_sampling() {
        local seen
        if [ -z "$SCRATCH_SEEN" ] && seen=$(zfs get -H -o value canmount,mounted "$SCRATCH" 2>/dev/null); then
            SCRATCH_SEEN=$(echo "$seen" | tr '\n' ' ')
        fi
        drill_ended "$DRILL"
    }
    # (not through wait_until: SCRATCH_SEEN must be set in this shell)
    local t0
    t0=$(now)
    while ! ended_sampling; do
        if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 300) }'; then
            fail "$t: drill $DRILL did not end within 300 s"; show_drill "$DRILL"; return 1
        fi
        sleep 0.5
    done
    drill_result || { fail "$t: could not read drill $DRILL's record"; return 1; }
    log "drill $DRILL ended $D_STATE; the scratch was seen as canmount,mounted = ${SCRATCH_SEEN:-(never seen)}"
}

# no_scratch_left: dst/zdr-drill has no child
no_scratch_left() { [ "$(zfs list -H -o name -r dst/zdr-drill 2>/dev/null | grep -c /zdr-drill/)" = 0 ]; }
# holds_but_repl DS: holds on DS's snapshots other than replication's
holds_but_repl() { holds_of "$1" | grep -v ' zdr-repl-' || true; }

echo "guest: kernel $(uname -r), $(nproc) vCPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(zfs version | head -n 1)"
pools_create 1G
fleet_setup
gold_policy
fleet_up || { show_logs 40; exit 1; }
log "fleet up: nats-server, coordinator, agents n1 (pool src) and n2 (pool dst); class gold for ${DATASETS[*]}"

# ------------------------------------------------------------------------ 1
test1() {
    local ds=src/drill tgt before_snaps before_holds hist
    tgt=$(target_of $ds)
    log "--- 1. a drill that passes, content hashes equal"
    zfs create $ds
    fill $ds 6 a; mkdir -p "$W/mnt/drill/sub"; fill $ds 2 sub/b; ln -s sub/b "$W/mnt/drill/link"
    chmod 0600 "$W/mnt/drill/a"
    zfs snapshot $ds@d1
    fill $ds 1 c; zfs snapshot $ds@d2
    tasks $ds
    await_job 1 $ds "@d1 @d2" 300 || return 1
    wait_until 120 "the restore points to list n2's copy with @d2" copy_has $ds d2 || {
        fail "1: n2's copy with @d2 never appeared in the restore points"; return 1; }
    before_snaps=$(snaps "$tgt"); before_holds=$(holds_but_repl "$tgt")
    drill_run 1 $ds || return 1
    [ "$D_STATE" = passed ] || { fail "1: drill $DRILL $D_STATE: $D_WHY"; show_drill "$DRILL"; return 1; }
    [ "$D_LEVEL" = files-hashed ] && [ -n "$D_PD" ] && [ "$D_PD" != - ] && [ "$D_PD" = "$D_RD" ] || {
        fail "1: level $D_LEVEL, digests production $D_PD, restored $D_RD"; show_drill "$DRILL"; return 1; }
    [ "$D_CLEANED" = true ] || { fail "1: the drill says its scratch was not cleaned"; return 1; }
    wait_until 30 "no drill scratch left" no_scratch_left || {
        fail "1: scratch left: $(zfs list -H -o name -r dst/zdr-drill | tr '\n' ' ')"; return 1; }
    case $SCRATCH_SEEN in
        "noauto no "*) ;;
        "") log "(the scratch came and went between two samples; zpool history is the evidence)" ;;
        *) fail "1: the scratch was canmount,mounted = $SCRATCH_SEEN, not noauto and unmounted"; return 1 ;;
    esac
    hist=$(zpool history dst | grep -F "$SCRATCH" || true)
    echo "$hist" | sed 's/^/    zpool history: /'
    echo "$hist" | grep -q "zfs receive -s -u -o canmount=noauto $SCRATCH" || {
        fail "1: zpool history has no 'zfs receive -s -u -o canmount=noauto $SCRATCH'"; return 1; }
    echo "$hist" | grep -q "zfs destroy -r $SCRATCH" || { fail "1: zpool history has no 'zfs destroy -r $SCRATCH'"; return 1; }
    [ "$(snaps "$tgt")" = "$before_snaps" ] && [ "$(holds_but_repl "$tgt")" = "$before_holds" ] || {
        fail "1: the drill changed the replica: snapshots [$(guids "$tgt")], holds [$(holds_but_repl "$tgt" | tr '\n' ' ')]"; return 1; }
    local ph rh
    ph=$(snap_hashes "$ds@$DSNAP") && rh=$(snap_hashes "$tgt@$DSNAP") || { fail "1: could not mount @$DSNAP read-only"; return 1; }
    [ "$ph" = "$rh" ] && [ "$(wc -l <<< "$ph")" -ge 3 ] || { fail "1: sha256 of the files differ between production and replica @$DSNAP"; return 1; }
    show_drill "$DRILL"
    pass "1: drill $DRILL of n1:$ds@$DSNAP from n2's copy passed at level $D_LEVEL, digests equal (${D_PD:0:16}...); scratch $SCRATCH received canmount=noauto (seen: ${SCRATCH_SEEN:-not sampled}) and destroyed; replica unchanged [$(guids "$tgt")]; $(wc -l <<< "$ph") files' sha256 equal on production and replica; $D_PHASES"
}

# ------------------------------------------------------------------------ 2
test2() {
    local ds=src/secret tgt key=$W/secret.key before enc attempt
    tgt=$(target_of $ds)
    log "--- 2. a raw-encrypted replica drilled, then the next raw incremental"
    echo "zdr-vm-drill-passphrase" > "$key"
    zfs create -o encryption=on -o keyformat=passphrase -o keylocation="file://$key" $ds
    fill $ds 3 a; zfs snapshot $ds@e1
    tasks $ds
    await_job 2 $ds @e1 300 || return 1
    wait_until 120 "the restore points to list n2's copy with @e1" copy_has $ds e1 || {
        fail "2: n2's copy with @e1 never appeared in the restore points"; return 1; }
    before=$(snaps "$tgt")
    drill_run 2 $ds || return 1
    [ "$D_STATE" = passed ] && [ "$D_LEVEL" = blocks-read ] || {
        fail "2: drill $DRILL $D_STATE at level $D_LEVEL (want passed, blocks-read): $D_WHY"; show_drill "$DRILL"; return 1; }
    wait_until 30 "no drill scratch left" no_scratch_left || { fail "2: a drill scratch was left"; return 1; }
    [ "$(snaps "$tgt")" = "$before" ] || { fail "2: the drill changed the replica's snapshots: [$(guids "$tgt")]"; return 1; }
    local job_before
    job_before=$($API "$HTTP_PORT" field $ds id)
    fill $ds 1 b; zfs snapshot $ds@e2
    # (one record per pairing: a new job has a new id)
    # shellcheck disable=SC2329  # called through wait_until
    new_job_done() { [ "$($API "$HTTP_PORT" field $ds id)" != "$job_before" ] && job_done $ds && caught_up $ds; }
    wait_until 300 "the next job of $ds to bring @e2" new_job_done || {
        fail "2: the replication after the drill did not complete: job $($API "$HTTP_PORT" field $ds id) $(job_state $ds); source [$(guids $ds)], replica [$(guids "$tgt")]"; return 1; }
    H=$($API "$HTTP_PORT" field $ds history)
    echo "$H" | sed 's/^/    history: /'
    attempt=$($API "$HTTP_PORT" field $ds attempt)
    echo "$H" | grep -q -- "-[iI] @[^ ]* @e2" || { fail "2: the job after the drill was not an incremental to @e2"; return 1; }
    [ "$attempt" = 1 ] || { fail "2: the incremental after the drill needed attempt $attempt"; return 1; }
    enc=$(zfs get -H -o value encryption,keystatus "$tgt" | tr '\n' ' ')
    case $enc in *" unavailable ") ;; *) fail "2: $tgt encryption,keystatus = $enc"; return 1 ;; esac
    pass "2: drill $DRILL of the raw-encrypted copy passed at level $D_LEVEL (no key on n2; $D_PHASES), replica unchanged; then the next raw incremental ($(echo "$H" | grep -o -- "-[iI] @[^ ]* @e2" | head -n 1)) completed on attempt 1: GUIDs equal [$(guids "$tgt")], $tgt still $enc"
}

# ------------------------------------------------------------------------ 3
test3() {
    local ds=src/rot tgt file i st offsets
    tgt=$(target_of $ds)
    file=$W/mnt/rot/data
    log "--- 3. a drill detects real corruption in the replica's pool"
    zfs create $ds
    fill $ds 16 data; zfs snapshot $ds@r1
    tasks $ds
    await_job 3 $ds @r1 300 || return 1
    # Nothing may write to dst while it is out: no task.
    tasks
    wait_until 60 "the coordinator to drop the pairings" \
        bash -c "[ \"\$($API $HTTP_PORT get /api/v1/pairings | tr -d ' \n')\" = '{\"pairings\":[],\"unpaired\":[]}' ]" || true
    # (records of 128 KiB: these offsets start four different records)
    offsets="2097152 6291456 10485760 14680064"
    for i in 1 2 3 4 5 6 7 8 9 10; do zpool export dst 2>/dev/null && break; sleep 1; done
    if zpool list dst >/dev/null 2>&1; then fail "3: pool dst could not be exported"; return 1; fi
    local out
    out=$($PY "$HERE/fleet/corrupt.py" "$W/dst.img" "$file" $offsets 2>&1) || {
        zpool import -d "$W/dst.img" dst || true; fail "3: $out"; return 1; }
    echo "$out" | sed 's/^/    inverted 4 KiB at file offset -> vdev offset: /'
    zpool import -d "$W/dst.img" dst || { fail "3: pool dst did not import after the damage"; return 1; }
    wait_until 120 "the restore points to list n2's copy with @r1" copy_has $ds r1 || {
        fail "3: n2's copy with @r1 never came back in the restore points"; return 1; }
    # The drill checks dst's free space, known only once a heartbeat after
    # the import reports the pool again (a drill before that is refused, 503).
    wait_until 120 "n2's heartbeat to report pool dst again" n2_reports_dst || {
        fail "3: n2 never reported pool dst after the import"; return 1; }
    drill_run 3 $ds || return 1
    show_drill "$DRILL"
    [ "$D_STATE" = failed ] || { fail "3: the drill of the damaged copy ended $D_STATE"; return 1; }
    case $D_WHY in
        *"Input/output error"* | *"checksum"* | *"I/O error"*) ;;
        *) fail "3: the drill failed, but its reason names no I/O or checksum error: $D_WHY"; return 1 ;;
    esac
    [ "$D_CLEANED" = true ] || { fail "3: the failed drill did not clean its scratch"; return 1; }
    wait_until 30 "no drill scratch left" no_scratch_left || {
        fail "3: scratch left after the failed drill: $(zfs list -H -o name -r dst/zdr-drill | tr '\n' ' ')"; return 1; }
    st=$(zpool status -v dst)
    echo "$st" | sed 's/^/    zpool status (after the drill): /'
    local cksum
    cksum=$(awk -v f="$W/dst.img" '$1 == f { print $5 }' <<< "$st")
    [ -n "$cksum" ] && [ "$cksum" != 0 ] || { fail "3: zpool status counts no checksum errors on $W/dst.img after the drill"; return 1; }
    zpool scrub -w dst || true
    st=$(zpool status -v dst)
    echo "$st" | sed -n '/errors:/,$p' | sed 's/^/    zpool status (after a scrub): /'
    echo "$st" | grep -q "Permanent errors have been detected" || { fail "3: the scrub reports no permanent errors"; return 1; }
    pass "3: 4 KiB inverted in 4 records of $tgt's file inside dst's vdev: drill $DRILL FAILED ($D_WHY); scratch destroyed; zpool status: $cksum checksum errors on the vdev, and the scrub lists permanent errors"
}

for t in $ONLY; do
    "test$t" || true
    if ! alive coordinator || ! alive agent-n1 || ! alive agent-n2; then
        fail "after test $t: a zdr process died (agent-n1 $(alive agent-n1 && echo up || echo down), agent-n2 $(alive agent-n2 && echo up || echo down), coordinator $(alive coordinator && echo up || echo down)); stopping"
        break
    fi
done

echo
echo "== zdr restore drills on real OpenZFS ($(zfs version | head -n 1)): ${#PASSED[@]} passed, ${#FAILED[@]} failed =="
for p in "${PASSED[@]}"; do echo "PASS $p"; done
for f in "${FAILED[@]}"; do echo "FAIL $f"; done
if [ "${#FAILED[@]}" -gt 0 ]; then
    show_logs 40
    exit "${#FAILED[@]}"
fi
log "all passed; guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
