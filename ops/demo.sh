#!/usr/bin/env bash
# Runs a local zdr fleet: nats-server with JetStream, the coordinator, and three
# agents in two sites (node-a1 ssd and node-a2 hdd in site-a, node-b1 hdd in
# site-b) under specs/demo/policies.yaml, replicating under specs/demo/tasks.yml
# over mutual TLS (a demo fleet CA is made with ops/pki.sh). Everything listens
# on 127.0.0.1. The bus has authorization on: each agent and the coordinator
# connect with their own nkey (`zdr-coordinator bus-auth`).
#
#   ops/demo.sh              run until Ctrl-C
#   ops/demo.sh --for 60     run 60 seconds, print the fleet, stop
#
# Agents use the SIMULATED ZFS backend unless ZDR_DEMO_BACKEND=cli, which points
# node-a1 at this host's real pools through zfs(8) (protected datasets are the
# ones specs/demo/policies.yaml matches, or set ZDR_DEMO_POLICY to your own).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_for=""
if [ "${1:-}" = "--for" ]; then run_for="${2:?--for needs a number of seconds}"; fi

dir="${ZDR_DEMO_DIR:-$root/.zdr-demo}"
nats_port="${ZDR_NATS_PORT:-4222}"
http_port="${ZDR_HTTP_PORT:-8080}"
policy="${ZDR_DEMO_POLICY:-$root/specs/demo/policies.yaml}"
tasks="${ZDR_DEMO_TASKS:-$root/specs/demo/tasks.yml}"
backend="${ZDR_DEMO_BACKEND:-sim}"

bash "$root/ops/install-deps.sh"
echo "demo: building zdr (debug)..." >&2
cargo build --quiet -p zdr-agent -p zdr-coordinator
bin="$root/target/debug"

mkdir -p "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/zdr-coordinator" check "$policy" --tasks "$tasks"
# The bus's authorization: one nkey per node of the policy, one for the
# coordinator, and an operator's for the nats CLI; made once, then kept.
"$bin/zdr-coordinator" bus-auth --policy "$policy" --dir "$dir/bus" --admin
nats-server -c "$dir/bus/auth.conf" -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/jetstream" \
  >"$dir/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.2
done

bash "$root/ops/pki.sh" "$dir/pki" node-a1 node-a2 node-b1
[ -f "$dir/coordinator.key" ] || "$bin/zdr-coordinator" keygen "$dir/coordinator.key" >/dev/null
pub=$("$bin/zdr-coordinator" pubkey "$dir/coordinator.key")
# The HTTP API's token: commands and restores need it (reads stay open).
if [ ! -s "$dir/api.token" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/api.token")
fi

"$bin/zdr-coordinator" run --nats-url "nats://127.0.0.1:$nats_port" --nats-nkey "$dir/bus/coordinator.nk" \
  --policy "$policy" --tasks "$tasks" \
  --http "127.0.0.1:$http_port" --key-file "$dir/coordinator.key" --api-token-file "$dir/api.token" \
  --instance demo \
  >"$dir/coordinator.log" 2>&1 &
pids+=($!)

agent() { # node site media
  local node=$1 site=$2 media=$3 kind=sim
  if [ "$backend" = cli ] && [ "$node" = node-a1 ]; then kind=cli; fi
  {
    printf 'node = "%s"\nsite = "%s"\nmedia = "%s"\n' "$node" "$site" "$media"
    printf 'nats_url = "nats://127.0.0.1:%s"\nnats_nkey = "%s/bus/agent-%s.nk"\n' "$nats_port" "$dir" "$node"
    printf 'state_dir = "%s/%s"\n' "$dir" "$node"
    printf 'heartbeat_secs = 2\ntick_secs = 1\n\n[backend]\n'
    if [ "$kind" = cli ]; then
      printf 'kind = "cli"\n'
    else
      printf 'kind = "sim"\npools = [{ name = "tank", size_bytes = 107374182400, datasets = ["tank/db", "tank/home", "tank/home/alice", "tank/vm-101", "tank/scratch"] }, { name = "backup", size_bytes = 107374182400 }]\n'
      # Every snapshot holds 2 MB, so transfers take a moment to watch.
      printf 'snapshot_bytes = 2000000\n'
    fi
    printf '\n[[trusted_keys]]\nkid = "coordinator"\npublic_key = "%s"\n' "$pub"
    printf '\n[transfer]\nca = "%s/pki/ca.pem"\ncert = "%s/pki/%s.pem"\nkey = "%s/pki/%s.key"\nlisten = "127.0.0.1:0"\n' \
      "$dir" "$dir" "$node" "$dir" "$node"
  } >"$dir/$node.toml"
  "$bin/zdr-agent" --config "$dir/$node.toml" >"$dir/$node.log" 2>&1 &
  pids+=($!)
}
agent node-a1 site-a ssd
agent node-a2 site-a hdd
agent node-b1 site-b hdd

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
  sleep 0.3
done

cat <<MSG

zdr demo fleet is running (backend: $backend$([ "$backend" = sim ] && echo ' - SIMULATED ZFS, no real data is protected')).
  health:   curl http://127.0.0.1:$http_port/healthz   (and /readyz, /metrics)
  status:   curl -s http://127.0.0.1:$http_port/api/v1/fleet | python3 -m json.tool
  pairing:  curl -s http://127.0.0.1:$http_port/api/v1/pairings | python3 -m json.tool
  jobs:     curl -s http://127.0.0.1:$http_port/api/v1/jobs | python3 -m json.tool
  command:  curl -s -XPOST -H "Authorization: Bearer \$(cat $dir/api.token)" -d '{"snapshot_now":{}}' \
              http://127.0.0.1:$http_port/api/v1/nodes/node-a1/commands
  CLI:      ZDR_COORDINATOR=http://127.0.0.1:$http_port ZDR_TOKEN_FILE=$dir/api.token zdr status
  NATS:     nats --server nats://127.0.0.1:$nats_port --nkey $dir/bus/admin.nk sub 'zdr.v1.>'
            (authorization is on: each agent's nkey speaks only as its node; see $dir/bus/auth.conf)
  logs:     $dir/*.log      audit: $dir/<node>/audit.jsonl
MSG

if [ -n "$run_for" ]; then
  sleep "$run_for"
  curl -s "http://127.0.0.1:$http_port/api/v1/fleet" | python3 -c '
import json, sys
f = json.load(sys.stdin)
for n in f["nodes"]:
    state = "online" if n["online"] else "OFFLINE"
    print("%s (%s/%s, backend %s, %s)" % (n["node"], n["site"], n["media"], n["backend"], state))
    for d in n["datasets"]:
        print("  %-18s class=%s rpo_met=%s snapshots=%d newest=%s"
              % (d["dataset"], d["class"], d["rpo_met"], len(d["snapshots"]), d["newest"]))
'
  echo "replication jobs:"
  curl -s "http://127.0.0.1:$http_port/api/v1/jobs" | python3 -c '
import json, sys
for j in json.load(sys.stdin)["jobs"]:
    print("  %-13s %s:%s -> %s:%s  %s, attempt %d, %d bytes%s"
          % (j["task"], j["source_node"], j["dataset"], j["target_node"], j["target_dataset"],
             j["state"], j["attempt"], j["bytes"], ("  error: " + j["error"]) if j["error"] else ""))
'
  echo "pairings:"
  curl -s "http://127.0.0.1:$http_port/api/v1/pairings" | python3 -c '
import json, sys
p = json.load(sys.stdin)
for x in p["pairings"]:
    print("  %-13s %s:%s -> %s:%s" % (x["task"], x["source_node"], x["dataset"], x["target_node"], x["target_dataset"]))
for x in p["unpaired"]:
    print("  %-13s %s:%s UNPAIRED: %s" % (x["task"], x["source_node"], x["dataset"], x["why"]))
'
else
  echo "Ctrl-C stops the fleet." >&2
  wait
fi
