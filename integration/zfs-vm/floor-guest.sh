#!/bin/bash
# floor-guest.sh - runs INSIDE the zfs-vm guest, started by floor.sh (through
# replication.sh, which builds the binaries and keeps the logs). The retention
# floor (agent/src/floor.rs) on real OpenZFS, with the real coordinator key:
# class `fast` keeps one snapshot of src/db but makes every snapshot immutable
# for 1 h, and task `copy` replicates src/db of n1 to dst/n1/src/db on n2
# (allow_rollback: true). Checks, in order:
#   1. every snapshot of the source and of the copy carries the `zdr-floor`
#      hold, taken by each agent on its own clock and policy;
#   2. prune commands validly signed by the coordinator (POST .../commands),
#      asking for no window, destroy nothing: on the source (n1) and on the
#      copy (n2);
#   3. a plain `zfs destroy` of a copy's snapshot, as root, fails: the hold;
#   4. a compromised source: with n1 stopped, root on it destroys the two
#      newest snapshots the copy also has (and every bookmark). The plan then
#      needs `receive -F` on the copy; n2 refuses it (floor), the job goes to
#      `blocked` with `floor_refused`, the copy keeps every snapshot (names
#      and GUIDs), and n2's audit log has the refusal and no allowed destroy.
# Every check prints PASS or FAIL with its evidence; the exit code is the
# number of failed checks.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
W=$(mktemp -d)
LOGS=${ZDR_REPL_LOGS:-$W/logs}
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

DS=src/db
COPY=dst/n1/src/db

copy_task() {
    fleet_tasks "version: 1
tasks:
  - name: copy
    source: { match: \"$DS\", nodes: [n1] }
    target: { site: same, media: different, root: \"dst/{node}\" }
    schedule: { every: 5s }
    allow_rollback: true"
}

# all_held DS MIN: DS has at least MIN snapshots and each has the floor's hold
all_held() {
    local n held
    n=$(snaps "$1" | wc -l)
    held=$(holds_of "$1" | awk '$2 == "zdr-floor"' | wc -l)
    [ "$n" -ge "$2" ] && [ "$held" = "$n" ]
}
job_state() { $API "$HTTP_PORT" field "$DS" state 2>/dev/null; }
# blocked_by_floor: the task's newest job is blocked and names the floor's refusal
blocked_by_floor() {
    [ "$(job_state)" = blocked ] &&
        $API "$HTTP_PORT" job "$DS" | grep -q '"floor_refused": \['
}
idle() { [ "$(job_state)" != running ] && [ "$(job_state)" != planned ]; }

# prune_nothing NODE DATASET: a signed prune with no window; the reply must
# be 200 with nothing destroyed, and DATASET must keep every snapshot it had
prune_nothing() {
    local node=$1 ds=$2 before reply lost
    before=$(snaps "$ds")
    reply=$($API "$HTTP_PORT" post "/api/v1/nodes/$node/commands" \
        "{\"prune_replica\":{\"dataset\":\"$ds\",\"task\":\"stolen\",\"tiers\":{\"10s\":1},\"immutable_for_secs\":0}}")
    echo "    $node: $reply" | cut -c1-400
    [ "$(echo "$reply" | head -n 1)" = 200 ] || { echo "    not 200"; return 1; }
    echo "$reply" | sed -n 2p | $PY -c '
import json, sys
r = json.load(sys.stdin)
gone = r.get("effects", {}).get("destroyed") or []
sys.exit(1 if gone else 0)' || { echo "    the reply lists destroyed snapshots"; return 1; }
    # (the agent may have taken a new one meanwhile: only losses count)
    lost=$(comm -23 <(echo "$before" | sort) <(snaps "$ds" | sort))
    [ -z "$lost" ] || { echo "    $ds lost: $lost"; return 1; }
}


echo "guest: kernel $(uname -r), $(nproc) vCPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg); $(zfs version | head -n 1)"
pools_create 1G
fleet_setup
cat > "$W/fleet/policy.yaml" <<'EOF'
version: 1
sites:
  lab: {}
nodes:
  n1: { site: lab, media: ssd }
  n2: { site: lab, media: hdd }
classes:
  fast:
    tiers: { 10s: 1 }
    rpo: 1h
    rto: 1h
    immutable_for: 1h
    copies: { total: 2, media: 2, offsite: 0 }
datasets:
  - match: "dst/**"
    exclude: true
  - match: "src/db"
    class: fast
EOF
zfs create $DS
AGENT_POOLS=([n1]=src [n2]=dst)
head -c 4194304 /dev/urandom > "$W/mnt/db/data"
fleet_up || { show_logs 40; exit 1; }
copy_task
log "fleet up; class fast (tiers 10s:1, immutable_for 1h) for $DS, task copy to $COPY"

# ------------------------------------------------------------------------ 1
if wait_until 300 "three snapshots on $COPY, each held by zdr-floor" all_held $COPY 3 &&
    wait_until 60 "every snapshot of $DS held by zdr-floor" all_held $DS 3; then
    pass "1: every snapshot held by zdr-floor: $DS [$(snaps $DS | cut -f1 | tr '\n' ' ')] and $COPY [$(snaps $COPY | cut -f1 | tr '\n' ' ')]"
else
    fail "1: holds on $DS: [$(holds_of $DS | tr '\n' ';')]; on $COPY: [$(holds_of $COPY | tr '\n' ';')]"
    show_logs 30
    exit 1
fi

# ------------------------------------------------------------------------ 2
if prune_nothing n1 $DS && prune_nothing n2 $COPY; then
    pass "2: signed prunes with no window destroyed nothing on n1:$DS nor n2:$COPY"
else
    fail "2: a signed prune destroyed or failed (above)"
fi

# ------------------------------------------------------------------------ 3
oldest=$(snaps $COPY | head -n 1 | cut -f1)
if out=$(zfs destroy "$COPY@$oldest" 2>&1); then
    fail "3: zfs destroy $COPY@$oldest succeeded as root"
elif snaps $COPY | cut -f1 | grep -qx "$oldest"; then
    pass "3: zfs destroy $COPY@$oldest as root refused: $out"
else
    fail "3: zfs destroy failed ($out) but $COPY@$oldest is gone"
fi

# ------------------------------------------------------------------------ 4
fleet_tasks "version: 1
tasks: []"
wait_until 120 "no job of $DS in flight" idle || true
stop agent-n1 KILL
before=$(snaps $COPY)
# The copy's two newest, which the source has too: root destroys them there.
gone=$(echo "$before" | tail -n 2 | cut -f1)
for s in $gone; do
    holds_of $DS | awk -v s="$s" '$1 == s { print $2 }' | while read -r tag; do
        zfs release "$tag" "$DS@$s"
    done
    zfs destroy "$DS@$s"
done
zfs list -H -o name -t bookmark $DS 2>/dev/null | while read -r b; do zfs destroy "$b"; done
log "n1 stopped; root destroyed $DS@{$(echo $gone | tr ' ' ,)} and every bookmark of $DS"
fleet_start_agent n1
copy_task
if wait_until 240 "the job blocked by n2's floor" blocked_by_floor; then
    err=$($API "$HTTP_PORT" field "$DS" error)
    echo "    error: $err"
    audit=$W/fleet/state-n2/audit.jsonl
    why=
    case $err in *"inside its 1h immutability window"*"(floor)") ;; *) why="error does not name the window: $err" ;; esac
    [ "$(snaps $COPY)" = "$before" ] || why="$COPY changed: [$(snaps $COPY | tr '\n' ' ')]"
    audit_says=$($PY - "$audit" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not any(r.get("action") == "receive -F" and r.get("outcome") == "refused" for r in rows):
    print("no refused receive -F")
elif any(r.get("action") == "destroy" and r.get("outcome") != "refused" for r in rows):
    print("an allowed destroy")
PY
)
    [ -z "$audit_says" ] || why="n2's audit log ($audit): $audit_says"
    if [ -z "$why" ]; then
        pass "4: source lost @{$(echo $gone | tr ' ' ,)}; n2 refused receive -F, job blocked ($err); $COPY kept all $(echo "$before" | wc -l) snapshots with their GUIDs; audited refused"
    else
        fail "4: $why"
    fi
else
    fail "4: the job did not block on the floor: state $(job_state)"
    $API "$HTTP_PORT" job "$DS" | head -n 60 | sed 's/^/    /'
fi

echo "== zdr retention floor on real OpenZFS ($(zfs version | head -n 1)): ${#PASSED[@]} passed, ${#FAILED[@]} failed =="
for p in "${PASSED[@]}"; do echo "PASS $p"; done
for f in "${FAILED[@]}"; do echo "FAIL $f"; done
log "$([ ${#FAILED[@]} = 0 ] && echo "all passed" || echo "${#FAILED[@]} failed"); guest loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
[ ${#FAILED[@]} = 0 ] || show_logs 30
exit "${#FAILED[@]}"
