#!/bin/bash
# replication-guest.sh - runs INSIDE the zfs-vm guest, started by
# replication.sh (read that one first). Real OpenZFS, a real nats-server, the
# real zdr-coordinator and two real zdr-agents (backend "cli"): n1 owns pool
# src, n2 receives into pool dst under dst/n1/ (task root "dst/{node}"), over
# the agents' mutual-TLS data plane. Five checks, in order:
#   1. full, then incremental replication; the target's GUIDs equal the source's
#      and the pairing's hold sits on the newest common snapshot on both sides;
#   2. a transfer throttled low, the target agent killed -9 mid-stream: the
#      target keeps a receive_resume_token, the restarted agent resumes it, the
#      job record says so, and the GUIDs are equal;
#   3. an encrypted dataset (passphrase from a key file) goes raw and arrives
#      encrypted, its key unavailable on the target;
#   4. one byte flipped in transit by a TCP proxy in front of n2 (its
#      `advertise` address): the first attempt fails, the retry completes with
#      equal GUIDs;
#   5. restore from a replica: src/prod (four snapshots, each changing the
#      files) replicated to n2 (full + -I), then POST /api/v1/restores brings
#      @p3 back from n2's copy to the new dataset src/restored on n1: the
#      landed GUID is the source's, the snapshots are exactly @p1..@p3 (GUIDs
#      equal), the files of @p3 (mounted read-only) hash as production's
#      .zfs/snapshot/p3 does, and no zdr-restore- hold is left; the same
#      request again gets 409 (the destination exists) and writes nothing.
# Every check prints PASS or FAIL with its evidence; the exit code is the
# number of failed checks (capped at 100), 0 when all passed.
#
# Environment (set by replication.sh): ZDR_BIN, ZDR_ROOT, ZDR_REPL_LOGS,
# NATS_SERVER, and ZDR_REPL_ONLY (a subset of "1 2 3 4 5").
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
W=$(mktemp -d)
LOGS=${ZDR_REPL_LOGS:-$W/logs}
ONLY=${ZDR_REPL_ONLY:-1 2 3 4}
T0=$EPOCHREALTIME
# The scripts make snapshots behind the agents' backs, which the agents see at
# their next rescan; rescanning much more often slows everything down here.
RESCAN_SECS=20
# shellcheck source=fleet/lib.sh
. "$HERE/fleet/lib.sh"

FAILED=()
PASSED=()
pass() { log "PASS: $*"; PASSED+=("$*"); }
fail() { log "FAIL: $*" >&2; FAILED+=("$*"); }
cleanup() { fleet_stop; pools_destroy; }
trap cleanup EXIT

# task NAME DATASET [EXTRA-YAML]: replaces the tasks file with one task that
# copies src/DATASET of n1 to n2 (same site, other media) under dst/n1/.
task() {
    fleet_tasks "version: 1
tasks:
  - name: $1
    source: { match: \"$2\", nodes: [n1] }
    target: { site: same, media: different, root: \"dst/{node}\" }
    schedule: { every: 3s }${3:+
    $3}"
}

target_of() { echo "dst/n1/$1"; }

# fill DATASET MIB NAME: writes MIB MiB of random data into a new file
fill() { head -c "$(($2 * 1048576))" /dev/urandom > "$W/mnt/${1#src/}/$3"; }

# caught_up SRC: the target has the same snapshots as SRC (names, GUIDs)
caught_up() { same_snaps "$1" "$(target_of "$1")" 2>/dev/null; }

# job_state DS: state of the newest job of source dataset DS
job_state() { $API "$HTTP_PORT" field "$1" state 2>/dev/null; }
job_done() { [ "$(job_state "$1")" = "done" ]; }
history_of() { $API "$HTTP_PORT" field "$1" history 2>/dev/null || true; }
show_job() {
    echo "    job record of $1:"
    $API "$HTTP_PORT" job "$1" 2>/dev/null | grep -v '^ *"\(steps\|stream\|expect\)' | sed 's/^/    /' | head -n 60 || true
}
guids() { snaps "$1" | tr '\t\n' ': ' | sed 's/ $//'; }

# await_job T DS WHAT SECS: waits up to SECS for DS's target to get WHAT
# (catch up with DS) and then for the job record to say done; the job's
# history goes into H and is printed. On failure says so for test T.
await_job() {
    local t=$1 ds=$2 what=$3 secs=$4 tgt
    tgt=$(target_of "$ds")
    wait_until "$secs" "$tgt to catch up ($what)" caught_up "$ds" || {
        fail "$t: $tgt did not get $what within $secs s"; show_job "$ds"; return 1; }
    wait_until 60 "the job record to say done" job_done "$ds" || {
        fail "$t: job state $(job_state "$ds"), not done"; show_job "$ds"; return 1; }
    H=$(history_of "$ds")
    echo "$H" | sed 's/^/    history: /'
}

# restart_n2: (re)starts agent n2 (stopping it first with SIGTERM if it
# runs) and waits until it is connected to NATS again.
restart_n2() {
    local before
    if alive agent-n2; then stop agent-n2; fi
    before=$(grep -c "connected to NATS" "$LOGS/agent-n2.log" || true)
    fleet_start_agent n2
    wait_until 60 "agent n2 to connect to NATS" \
        bash -c "[ \$(grep -c 'connected to NATS' $LOGS/agent-n2.log) -gt $before ]"
}

# has_hold DS SNAP TAG
has_hold() { zfs holds -H "$1@$2" 2>/dev/null | cut -f2 | grep -qx "$3"; }
# holds_only_on DS SNAP TAG: TAG holds SNAP and no other snapshot of DS
holds_only_on() { [ "$(holds_of "$1" | awk -v t="$3" '$2 == t { print $1 }' | tr '\n' ' ')" = "$2 " ]; }

echo "guest: kernel $(uname -r), $(nproc) vCPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(zfs version | head -n 1)"
pools_create 1G
fleet_setup
fleet_up || { show_logs 40; exit 1; }
log "fleet up: nats-server, coordinator, agents n1 (pool src) and n2 (pool dst)"

# ------------------------------------------------------------------------ 1
test1() {
    local ds=src/data tgt tag=zdr-repl-t1
    tgt=$(target_of $ds)
    log "--- 1. full, then incremental"
    zfs create $ds
    fill $ds 8 a; zfs snapshot $ds@r1
    fill $ds 1 b; zfs snapshot $ds@r2
    task t1 $ds
    await_job 1 $ds "@r1 @r2, full" 300 || return 1
    echo "$H" | grep -q "planned 2 step(s): full @r1, -I @r1 @r2" || {
        fail "1: the first job was not planned as 'full @r1, -I @r1 @r2'"; return 1; }
    log "full: source $(guids $ds); target $(guids "$tgt")"
    wait_until 30 "the hold $tag on @r2 on both sides" \
        bash -c "zfs holds -H $ds@r2 | grep -q $tag && zfs holds -H $tgt@r2 | grep -q $tag" || {
        fail "1: @r2 is not held ($tag) on both sides after the full replication"; return 1; }

    # A backlog of two snapshots while the task is off, so that one job
    # finds both and sends them as one -I stream.
    fleet_tasks "version: 1
tasks: []"
    wait_until 60 "the coordinator to drop the pairing of t1" \
        bash -c "! $API $HTTP_PORT paired t1 n1 $ds" || { fail "1: the pairing of t1 stayed"; return 1; }
    fill $ds 2 c; zfs snapshot $ds@r3
    fill $ds 1 d; zfs snapshot $ds@r4
    wait_until 120 "n1's inventory to list $ds@r4" $API "$HTTP_PORT" has-snap n1 $ds r4 || {
        fail "1: the coordinator never saw $ds@r4"; return 1; }
    task t1 $ds
    await_job 1 $ds "@r3 @r4, incremental" 300 || return 1
    echo "$H" | grep -q -- "-I @r2 @r4" || { fail "1: the second job was not '-I @r2 @r4'"; return 1; }
    wait_until 30 "the hold $tag to move to @r4 alone on both sides" \
        bash -c "$(declare -f holds_of holds_only_on); holds_only_on $ds r4 $tag && holds_only_on $tgt r4 $tag" || {
        fail "1: $tag is not on @r4 alone on both sides: src [$(holds_of $ds | tr '\n' ' ')] dst [$(holds_of "$tgt" | tr '\n' ' ')]"
        return 1; }
    pass "1: full (@r1, -I @r1 @r2) then incremental (-I @r2 @r4): target GUIDs equal the source's: $(guids "$tgt"); hold $tag on @r4 alone on both sides"
}

# ------------------------------------------------------------------------ 2
test2() {
    # Throttled far below what the guest can move (~1 MB/s here), so the kill
    # lands mid-stream even though the API is polled only every few seconds.
    local ds=src/big tgt mib=16 limit=256KiB/s token
    tgt=$(target_of $ds)
    log "--- 2. an interrupted transfer resumes from its token"
    zfs create $ds
    fill $ds $mib a; zfs snapshot $ds@b1
    task t2 $ds "bandwidth: { limit: $limit }"
    local min=$((2 * 1048576))
    wait_until 120 "the job to move $min bytes" \
        bash -c "[ \"\$($API $HTTP_PORT field $ds bytes 2>/dev/null || echo 0)\" -ge $min ]" || {
        fail "2: the job never reached $min bytes"; show_job $ds; return 1; }
    log "job at $($API "$HTTP_PORT" field $ds bytes) bytes, $($API "$HTTP_PORT" field $ds bytes_per_sec) B/s: killing agent n2 (pid ${PIDS[agent-n2]}) with SIGKILL"
    stop agent-n2 KILL
    wait_until 30 "a receive_resume_token on $tgt" \
        bash -c "t=\$(zfs get -H -o value receive_resume_token $tgt 2>/dev/null) && [ -n \"\$t\" ] && [ \"\$t\" != - ]" || {
        fail "2: $tgt has no receive_resume_token after the target agent was killed"; return 1; }
    token=$(zfs get -H -o value receive_resume_token "$tgt")
    log "$tgt has receive_resume_token ${token:0:24}... (${#token} chars); lifting the task's bandwidth limit and restarting agent n2"
    task t2 $ds
    restart_n2
    await_job 2 $ds "@b1 after the restart" 300 || return 1
    local attempt
    attempt=$($API "$HTTP_PORT" field $ds attempt)
    echo "$H" | grep -q "attempt 1 failed" || { fail "2: no failed first attempt in the job history"; return 1; }
    echo "$H" | grep -q "resuming the saved partial receive" || {
        fail "2: no attempt of the job resumed the saved partial receive"; return 1; }
    echo "$H" | grep -q "(resumed) into $tgt" || { fail "2: the target did not report a resumed receive"; return 1; }
    [ "$(zfs get -H -o value receive_resume_token "$tgt")" = - ] || { fail "2: $tgt still has a resume token"; return 1; }
    grep -q "resumed=true" "$LOGS/agent-n2.log" && log "agent n2's log: $(grep 'resumed=true' "$LOGS/agent-n2.log" | tail -n 1 | cut -c1-220)"
    pass "2: killed n2 mid-stream; $tgt kept a receive_resume_token; after the restart the job resumed it (attempt $attempt, 'resuming the saved partial receive'); target GUIDs equal the source's: $(guids "$tgt")"
}

# ------------------------------------------------------------------------ 3
test3() {
    local ds=src/secret tgt enc key=$W/secret.key
    tgt=$(target_of $ds)
    log "--- 3. raw send of an encrypted dataset"
    echo "zdr-vm-test-passphrase" > "$key"
    zfs create -o encryption=on -o keyformat=passphrase -o keylocation="file://$key" $ds
    fill $ds 2 a; zfs snapshot $ds@e1
    task t3 $ds
    await_job 3 $ds @e1 300 || return 1
    enc=$(zfs get -H -o value encryption,keystatus "$tgt" | tr '\n' ' ')
    log "target $tgt: encryption,keystatus = $enc; encryptionroot $(zfs get -H -o value encryptionroot "$tgt")"
    case $enc in
        "off "*) fail "3: $tgt arrived unencrypted ($enc)"; return 1 ;;
        *" unavailable ") ;;
        *) fail "3: $tgt has keystatus other than unavailable ($enc)"; return 1 ;;
    esac
    pass "3: $ds arrived raw and still encrypted: encryption,keystatus = $enc; GUIDs equal: $(guids "$tgt")"
}

# ------------------------------------------------------------------------ 4
test4() {
    local ds=src/corrupt tgt proxy_port=17012 flip_at=300000 attempt
    tgt=$(target_of $ds)
    log "--- 4. a corrupted byte in transit"
    # No other task while n2 restarts behind the proxy: a re-planned job of an
    # earlier task (seen: a full resend of t3 planned before n2's inventory
    # came back) would otherwise take the flipped byte.
    fleet_tasks "version: 1
tasks: []"
    wait_until 60 "the coordinator to drop the earlier pairings" \
        bash -c "[ \"\$($API $HTTP_PORT get /api/v1/pairings | tr -d ' \n')\" = '{\"pairings\":[],\"unpaired\":[]}' ]" ||
        log "(earlier pairings still listed: $($API "$HTTP_PORT" get /api/v1/pairings | tr -d '\n' | cut -c1-200))"
    start proxy "$LOGS/proxy.log" "$PY" "$HERE/fleet/proxy.py" "$proxy_port" "${LISTEN_PORT[n2]}" "$flip_at"
    wait_until 20 "the proxy on :$proxy_port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port" || {
        fail "4: the proxy did not start"; return 1; }
    # n2 now tells senders to connect through the proxy.
    fleet_agent_config n2 hdd "$proxy_port"
    restart_n2 || { fail "4: n2 did not come back"; return 1; }
    zfs create $ds
    fill $ds 6 a; zfs snapshot $ds@c1
    task t4 $ds
    await_job 4 $ds @c1 300 || { sed 's/^/    proxy: /' "$LOGS/proxy.log"; return 1; }
    sed 's/^/    proxy: /' "$LOGS/proxy.log"
    attempt=$($API "$HTTP_PORT" field $ds attempt)
    grep -q "flipped the byte" "$LOGS/proxy.log" || { fail "4: the proxy never flipped a byte"; return 1; }
    local why
    why=$(echo "$H" | grep -m1 "attempt 1 failed" | sed 's/^[0-9:.]* attempt 1 failed after [0-9]* bytes: //')
    [ -n "$why" ] || { fail "4: the first attempt did not fail"; return 1; }
    case $why in
        "no word from either agent"*)
            fail "4: attempt 1 failed as stalled, not on the corrupted stream: $why"; return 1 ;;
    esac
    [ "$attempt" -ge 2 ] || { fail "4: the job finished on attempt $attempt, not a retry"; return 1; }
    # Whichever end reported first, the target's word is kept: its TLS layer saw the change.
    local target_word
    target_word=$(echo "$H" | grep -m1 -o "target n2: TLS: [^;]*altered in transit") ||
        { fail "4: the history has no word from the target on the altered stream"; return 1; }
    pass "4: the proxy flipped one byte in transit; attempt 1 failed ($why; $target_word); attempt $attempt completed; GUIDs equal: $(guids "$tgt")"
}

# ------------------------------------------------------------------------ 5
# snap_hashes DS@SNAP: "sha256  ./path" of every file of the snapshot, in
# path order, read through a private read-only mount of it
snap_hashes() {
    local m
    m=$(mktemp -d "$W/ro.XXXXXX")
    mount -t zfs -o ro "$1" "$m" || { rmdir "$m"; return 1; }
    (cd "$m" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum) || { umount "$m"; return 1; }
    umount "$m" && rmdir "$m"
}

# restore_holds DS...: the zdr-restore- holds on the datasets' snapshots
restore_holds() { local d; for d in "$@"; do holds_of "$d"; done | grep ' zdr-restore-'; }
no_restore_holds() { ! restore_holds "$@"; }

# restore_state JOB: state of restore JOB
restore_state() { $API "$HTTP_PORT" value "/api/v1/restores/$1" state 2>/dev/null; }
restore_ended() { case $(restore_state "$1") in done | failed) return 0 ;; *) return 1 ;; esac; }
restores_count() { $API "$HTTP_PORT" value /api/v1/restores restores | wc -l; }

test5() {
    local ds=src/prod tgt rs=src/restored pick=p3 points
    local body reply code accepted job st landed want rhash phash newest
    tgt=$(target_of $ds)
    points="/api/v1/restore-points?node=n1&dataset=$ds"
    log "--- 5. restore from a replica"
    # Every snapshot changes the files, so a restore of the wrong one shows.
    zfs create $ds
    fill $ds 4 a; zfs snapshot $ds@p1
    fill $ds 2 b; zfs snapshot $ds@p2
    fill $ds 1 a; mkdir -p "$W/mnt/prod/sub"; fill $ds 1 sub/c; zfs snapshot $ds@p3
    rm -f "$W/mnt/prod/b"; fill $ds 1 d; zfs snapshot $ds@p4
    wait_until 120 "n1's inventory to list $ds@p4" $API "$HTTP_PORT" has-snap n1 $ds p4 || {
        fail "5: the coordinator never saw $ds@p4"; return 1; }
    task t5 $ds
    await_job 5 $ds "@p1..@p4" 300 || return 1
    echo "$H" | grep -q "planned 2 step(s): full @p1, -I @p1 @p4" || {
        fail "5: the replication was not planned as 'full @p1, -I @p1 @p4'"; return 1; }
    # The coordinator plans from its inventory: wait until it lists the copy.
    local src_guids
    src_guids=$(snaps $ds | cut -f2 | tr '\n' ' ')
    # shellcheck disable=SC2329  # called through wait_until
    copies_listed() {
        [ "$($API "$HTTP_PORT" value "$points" 'copies.*.node' | tr '\n' ' ')" = "n1 n2 " ] &&
            [ "$($API "$HTTP_PORT" value "$points" 'copies.1.snapshots.*.guid' | tr '\n' ' ')" = "$src_guids" ]
    }
    wait_until 120 "the restore points to list n2's copy with @p1..@p4" copies_listed || {
        fail "5: the restore points never listed n2's copy with the source's GUIDs: $($API "$HTTP_PORT" get "$points" | cut -c1-400)"
        return 1; }
    log "restore points: $($API "$HTTP_PORT" value "$points" 'copies.*.dataset' | tr '\n' ' ')"

    body="{\"source\":\"n1:$ds\",\"snapshot\":\"$pick\",\"from\":\"n2\",\"to\":\"n1:$rs\"}"
    reply=$($API "$HTTP_PORT" post /api/v1/restores "$body") || { fail "5: POST /api/v1/restores got no answer"; return 1; }
    code=$(head -n 1 <<< "$reply"); accepted=$(tail -n 1 <<< "$reply")
    [ "$code" = 202 ] || { fail "5: POST $body -> $code $accepted"; return 1; }
    job=$($API "$HTTP_PORT" value - job <<< "$accepted")
    log "POST $body -> 202 $accepted"
    wait_until 300 "restore $job to end" restore_ended "$job"
    st=$(restore_state "$job")
    $API "$HTTP_PORT" value "/api/v1/restores/$job" history | sed 's/^/    history: /'
    [ "$st" = "done" ] || {
        fail "5: restore $job ended $st: $($API "$HTTP_PORT" value "/api/v1/restores/$job" error)"; return 1; }

    want=$(zfs get -H -p -o value guid "$ds@$pick")
    landed=$($API "$HTTP_PORT" value "/api/v1/restores/$job" landed_guid)
    [ "$landed" = "$want" ] || { fail "5: landed GUID $landed, not $ds@$pick's $want"; return 1; }
    [ "$(zfs get -H -p -o value guid "$rs@$pick")" = "$want" ] || {
        fail "5: $rs@$pick has GUID $(zfs get -H -p -o value guid "$rs@$pick" 2>&1), not $want"; return 1; }
    cmp -s <(snaps $ds | sed "/^$pick\t/q") <(snaps $rs) || {
        fail "5: $rs has [$(guids $rs)], not the chain up to @$pick of $ds [$(guids $ds)]"; return 1; }

    # The content: each snapshot mounted read-only at a private mountpoint.
    rhash=$(snap_hashes "$rs@$pick") || { fail "5: could not read $rs@$pick through a read-only mount"; return 1; }
    phash=$(snap_hashes "$ds@$pick") || { fail "5: could not read $ds@$pick through a read-only mount"; return 1; }
    newest=$(snap_hashes "$ds@p4") || { fail "5: could not read $ds@p4 through a read-only mount"; return 1; }
    echo "$rhash" | sed "s/^/    restored @$pick: /"
    # (so that a restore of the wrong snapshot cannot pass)
    [ "$(wc -l <<< "$phash")" = 3 ] && [ "$phash" != "$newest" ] || {
        fail "5: production's @$pick is not what the script wrote: $(wc -l <<< "$phash") files, @p4 $([ "$phash" = "$newest" ] && echo same || echo different)"
        return 1; }
    [ "$rhash" = "$phash" ] || {
        fail "5: the restored @$pick differs from production's: $(diff <(echo "$phash") <(echo "$rhash") | tr '\n' ' ')"; return 1; }

    wait_until 60 "the zdr-restore- holds to go from $rs and $tgt" no_restore_holds $rs "$tgt" || {
        fail "5: restore holds left: $(restore_holds $rs "$tgt" | tr '\n' ' ')"; return 1; }

    # Bad input: the same request, now that the destination exists.
    wait_until 120 "n1's inventory to list $rs@$pick" $API "$HTTP_PORT" has-snap n1 $rs $pick || {
        fail "5: the coordinator never saw $rs@$pick"; return 1; }
    local before_snaps before_count
    before_snaps=$(snaps $rs); before_count=$(restores_count)
    reply=$($API "$HTTP_PORT" post /api/v1/restores "$body") || { fail "5: the second POST got no answer"; return 1; }
    code=$(head -n 1 <<< "$reply")
    local why
    why=$($API "$HTTP_PORT" value - error <<< "$(tail -n 1 <<< "$reply")" || true)
    [ "$code" = 409 ] || { fail "5: POST again to the existing $rs -> $code $(tail -n 1 <<< "$reply"), not 409"; return 1; }
    case $why in *"the dataset exists"*) ;; *) fail "5: the 409 does not say the dataset exists: $why"; return 1 ;; esac
    sleep 5
    [ "$(restores_count)" = "$before_count" ] && [ "$(snaps $rs)" = "$before_snaps" ] || {
        fail "5: the refused request wrote something: restores $before_count -> $(restores_count), $rs [$(guids $rs)]"; return 1; }
    pass "5: restored $ds@$pick from n2's copy ($tgt) to $rs (job $job): landed GUID $landed = source's; snapshots $(guids $rs); $(wc -l <<< "$rhash") files hash as production's @$pick; no restore hold left; again without replace -> 409 ($why), nothing written"
}

for t in $ONLY; do
    "test$t" || true
    if ! alive coordinator || ! alive agent-n1; then
        fail "after test $t: a zdr process died (agent-n1 $(alive agent-n1 && echo up || echo down), coordinator $(alive coordinator && echo up || echo down)); stopping"
        break
    fi
    # A failed test 2 may leave n2 killed; the next tests need it.
    alive agent-n2 || restart_n2 || { fail "after test $t: agent n2 could not be restarted"; break; }
done

echo
echo "== zdr replication on real OpenZFS ($(zfs version | head -n 1)): ${#PASSED[@]} passed, ${#FAILED[@]} failed =="
for p in "${PASSED[@]}"; do echo "PASS $p"; done
for f in "${FAILED[@]}"; do echo "FAIL $f"; done
if [ "${#FAILED[@]}" -gt 0 ]; then
    show_logs 40
    exit "$(( ${#FAILED[@]} > 100 ? 100 : ${#FAILED[@]} ))"
fi
log "all passed; guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
