# shellcheck shell=bash
# fleet/lib.sh - sourced (never run) by the zfs-vm guest scripts that drive a
# real zdr fleet inside ONE guest: a nats-server with JetStream, one
# zdr-coordinator and two zdr-agents with the "cli" backend, all on loopback.
# One kernel means one pool namespace, so the agents get different pools:
# node n1 (site lab, media ssd) owns the sources on pool `src`, node n2 (site
# lab, media hdd) receives into pool `dst`. Both list every pool; the tasks
# (`source.nodes: [n1]`, `target: {site: same, media: different}`) pick the
# right datasets and the right target.
#
# The caller sets, before sourcing:
#   W           a scratch directory in the guest (pools, configs, state)
#   LOGS        where process logs go (the host can read it if it is shared)
#   ZDR_BIN     directory with zdr-agent and zdr-coordinator (host-built)
#   ZDR_ROOT    the checkout (for ops/pki.sh)
# and may set NATS_SERVER (default: nats-server on PATH).
#
# Every wait is bounded; fleet_stop (called from the caller's EXIT trap)
# ends every process started here, by pid.

FLEET_LIB_DIR=$(dirname -- "${BASH_SOURCE[0]}")
PY=${PY:-/usr/bin/python3}
API="$PY $FLEET_LIB_DIR/api.py"
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || true)}
NATS_PORT=14222
# How often the agents list every dataset again (they list what they change at
# once). Each rescan is several zfs(8) runs, ~0.5-2 s each under emulation.
RESCAN_SECS=${RESCAN_SECS:-300}
# The agents' defaults. Every heartbeat runs `zpool list`; at 1 s, two agents
# ran two of those a second, competing with the ZFS work being measured.
HEARTBEAT_SECS=${HEARTBEAT_SECS:-5}
TICK_SECS=${TICK_SECS:-5}
HTTP_PORT=18080
# How long the coordinator waits for an agent's reply to a command. The
# default 10 s is too short here: the source agent answers `send` only after
# holding the snapshot and a `zfs send -nvP` size estimate, which took ~16 s
# for a 200-snapshot -I backlog in this emulated guest, so every attempt
# timed out and was retried with a doubling backoff, never progressing.
COMMAND_TIMEOUT=${COMMAND_TIMEOUT:-60}
# The receivers' data-plane ports (fixed, so a proxy can sit in front).
declare -A LISTEN_PORT=([n1]=17001 [n2]=17002)
declare -A PIDS=()          # name -> pid of every process started here
# Set AGENT_POOLS=([n1]=src [n2]=dst) before fleet_up to give each agent only
# its own pool (agent config `pools`): with a class whose datasets both
# agents can see, each would otherwise snapshot, prune and hold the other's.
declare -A AGENT_POOLS=()

now() { echo "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
log() { printf '[%7.1fs] %s\n' "$(sub "$T0" "$(now)")" "$*"; }
T0=${T0:-$(now)}

# wait_until SECS WHAT CMD...: polls CMD (every 0.5 s) until it succeeds; returns
# 1 after SECS (the caller decides whether that is fatal).
wait_until() {
    local secs=$1 what=$2 t
    shift 2
    t=$(now)
    while ! "$@" >/dev/null 2>&1; do
        if awk -v a="$t" -v b="$(now)" -v s="$secs" 'BEGIN { exit !(b - a > s) }'; then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# ------------------------------------------------------------------ pools ---

# pools_create SIZE: pools src and dst on sparse files in $W; src/... datasets
# mount under $W/mnt, dst is not mounted (mountpoint=none).
pools_create() {
    local size=$1
    truncate -s "$size" "$W/src.img" "$W/dst.img"
    zpool create -f -o ashift=12 -O atime=off -O mountpoint="$W/mnt" src "$W/src.img"
    zpool create -f -o ashift=12 -O atime=off -O mountpoint=none dst "$W/dst.img"
}

pools_destroy() {
    zpool destroy -f src 2>/dev/null || true
    zpool destroy -f dst 2>/dev/null || true
}

# snaps DS: "name guid" of DS's snapshots (name without the dataset), oldest first
snaps() {
    zfs list -Hp -t snapshot -o name,guid -s createtxg -d 1 "$1" | sed 's/^[^@]*@//'
}

# same_snaps SRC DST: the two datasets have the same snapshots (names and GUIDs)
same_snaps() {
    cmp -s <(snaps "$1") <(snaps "$2")
}

# holds_of DS: "snapshot tag" of every hold on DS's snapshots (one `zfs holds`
# per held snapshot only: a process start costs ~0.5-1 s under emulation)
holds_of() {
    local s
    for s in $(zfs list -Hp -t snapshot -o name,userrefs -d 1 "$1" | awk -F'\t' '$2 > 0 { print $1 }'); do
        zfs holds -H "$s" | awk -F'\t' '{ sub(/^[^@]*@/, "", $1); print $1, $2 }'
    done
}

# release_all DS: releases every hold on DS's snapshots
release_all() {
    local snap tag
    # (zfs send's own temporary holds, ".send-PID-N", may vanish meanwhile)
    holds_of "$1" | while read -r snap tag; do zfs release "$tag" "$1@$snap" 2>/dev/null || true; done
}

# ------------------------------------------------------------------ fleet ---

# fleet_setup: PKI, the coordinator's signing key, the policy, and an empty
# tasks file (no task yet: nothing replicates until fleet_tasks writes one).
fleet_setup() {
    mkdir -p "$W/fleet" "$LOGS"
    bash "$ZDR_ROOT/ops/pki.sh" "$W/fleet/pki" n1 n2
    FLEET_PUB=$("$ZDR_BIN/zdr-coordinator" keygen "$W/fleet/coordinator.key")
    # The HTTP API's token: api.py sends it with every POST.
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/fleet/api.token")
    export ZDR_TOKEN_FILE="$W/fleet/api.token"
    cat > "$W/fleet/policy.yaml" <<'EOF'
# No class: the agents neither snapshot nor prune; the scripts make the snapshots.
version: 1
sites:
  lab: {}
nodes:
  n1: { site: lab, media: ssd }
  n2: { site: lab, media: hdd }
classes: {}
datasets: []
EOF
    printf 'version: 1\ntasks: []\n' > "$W/fleet/tasks.yml"
}

# fleet_tasks TEXT: replaces the tasks file at once (the coordinator re-reads
# it on every lease renewal: every 5 s with the default 15 s lease).
fleet_tasks() {
    printf '%s\n' "$1" > "$W/fleet/tasks.yml.new"
    mv -f "$W/fleet/tasks.yml.new" "$W/fleet/tasks.yml"
}

# fleet_agent_config NODE MEDIA [ADVERTISE_PORT]
fleet_agent_config() {
    local node=$1 media=$2 adv=${3:-}
    mkdir -p "$W/fleet/state-$node"
    {
        cat <<EOF
node = "$node"
site = "lab"
media = "$media"
nats_url = "nats://127.0.0.1:$NATS_PORT"
state_dir = "$W/fleet/state-$node"
heartbeat_secs = $HEARTBEAT_SECS
tick_secs = $TICK_SECS
rescan_secs = ${RESCAN_SECS:-300}

[backend]
kind = "cli"

[[trusted_keys]]
kid = "coordinator"
public_key = "$FLEET_PUB"

[transfer]
ca = "$W/fleet/pki/ca.pem"
cert = "$W/fleet/pki/$node.pem"
key = "$W/fleet/pki/$node.key"
listen = "127.0.0.1:${LISTEN_PORT[$node]}"
EOF
        [ -z "$adv" ] || echo "advertise = \"127.0.0.1:$adv\""
    } > "$W/fleet/$node.toml"
    # `pools` is a top-level key: it goes before the first table
    if [ -n "${AGENT_POOLS[$node]:-}" ]; then
        sed -i "1i pools = [\"${AGENT_POOLS[$node]}\"]" "$W/fleet/$node.toml"
    fi
}

# start NAME LOGFILE CMD...: runs CMD in the background, its output appended
# to LOGFILE; PIDS[NAME] is its pid.
start() {
    local name=$1 logf=$2
    shift 2
    echo "=== $(date -u +%T) start: $*" >> "$logf"
    "$@" >> "$logf" 2>&1 < /dev/null &
    PIDS[$name]=$!
}

# stop NAME [SIGNAL]: signals the process (TERM by default) and waits up to
# 10 s for it, then KILLs it.
stop() {
    local name=$1 sig=${2:-TERM} pid=${PIDS[$1]:-} i
    [ -n "$pid" ] || return 0
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -s KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
}

alive() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }

# fleet_cpu: "NAME SECONDS" lines, the user+system CPU time of every process
# started here (fields 14 and 15 of /proc/PID/stat, after the command name)
fleet_cpu() {
    local n tck
    tck=$(getconf CLK_TCK)
    for n in "${!PIDS[@]}"; do
        [ -r "/proc/${PIDS[$n]}/stat" ] || continue
        awk -v n="$n" -v t="$tck" '{ sub(/^.*\) /, ""); printf "%s %.2f\n", n, ($12 + $13) / t }' \
            "/proc/${PIDS[$n]}/stat"
    done
}

fleet_start_nats() {
    [ -x "$NATS_SERVER" ] || { log "no nats-server (set NATS_SERVER)"; return 1; }
    mkdir -p "$W/fleet/nats"
    start nats "$LOGS/nats-server.log" "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$W/fleet/nats"
    wait_until 30 "nats-server on :$NATS_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"
}

fleet_start_agent() {  # fleet_start_agent NODE
    start "agent-$1" "$LOGS/agent-$1.log" env RUST_LOG="${RUST_LOG:-info}" \
        "$ZDR_BIN/zdr-agent" --config "$W/fleet/$1.toml"
}

fleet_start_coordinator() {
    start coordinator "$LOGS/coordinator.log" env RUST_LOG="${RUST_LOG:-info}" \
        "$ZDR_BIN/zdr-coordinator" run --nats-url "nats://127.0.0.1:$NATS_PORT" \
        --policy "$W/fleet/policy.yaml" --tasks "$W/fleet/tasks.yml" \
        --http "127.0.0.1:$HTTP_PORT" --key-file "$W/fleet/coordinator.key" \
        --api-token-file "$W/fleet/api.token" \
        --instance c1 --offline-after-secs 30 --command-timeout-secs "$COMMAND_TIMEOUT"
    # (A 3 s lease was lost under emulation: a renewal came too late and the
    # coordinator fell back to standby mid-job. The default 15 s holds.)
}

# fleet_up: nats, coordinator, agents n1 and n2 (n2's advertise port from
# $N2_ADVERTISE if set); waits until both nodes report inventories.
fleet_up() {
    fleet_agent_config n1 ssd
    fleet_agent_config n2 hdd "${N2_ADVERTISE:-}"
    fleet_start_nats || return 1
    fleet_start_coordinator
    wait_until 60 "coordinator /readyz" $API "$HTTP_PORT" get /readyz || return 1
    fleet_start_agent n1
    fleet_start_agent n2
    wait_until 90 "both agents in /api/v1/fleet with inventories" $API "$HTTP_PORT" ready n1 n2 || return 1
}

fleet_stop() {
    local n
    for n in agent-n1 agent-n2 coordinator nats proxy; do stop "$n"; done
    for n in "${!PIDS[@]}"; do stop "$n"; done
}

# show_logs [LINES]: the tail of every process log, to stderr
show_logs() {
    local f
    for f in "$LOGS"/*.log; do
        [ -f "$f" ] || continue
        echo "----- $(basename "$f") (last ${1:-40} lines)" >&2
        tail -n "${1:-40}" "$f" >&2
    done
}
