#!/usr/bin/env bash
# Runs a local zdr fleet: nats-server with JetStream, the coordinator, and three
# agents in two sites (node-a1 ssd and node-a2 hdd in site-a, node-b1 hdd in
# site-b) under specs/demo/policies.yaml, replicating under specs/demo/tasks.yml
# over mutual TLS (a demo fleet CA is made with ops/pki.sh). Everything listens
# on 127.0.0.1. The bus has authorization on: each agent and the coordinator
# connect with their own nkey (`zdr-coordinator bus-auth`).
#
# The offsite copy: SeaweedFS (`weed mini`) serves S3 on 127.0.0.1:8333 with a
# bucket under object lock, and a bucket task (added to the tasks file unless
# it has its own `buckets:`) uploads node-a1's datasets there, encrypted for a
# demo recovery key (.zdr-demo/recovery.key), which node-b1 holds to restore
# from the bucket.
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
s3_port="${ZDR_S3_PORT:-8333}"
# weed mini's other services: master, volume, filer and admin on these four
# ports, and each one's gRPC 10000 above (none may be S3's port + 10000).
weed_base="${ZDR_WEED_PORT_BASE:-19340}"

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

# The offsite tier's keys and bucket credentials, made once and kept: the
# recovery key decrypts the bucket's streams (keep it offline in real life),
# each agent signs its manifests with its own key.
[ -f "$dir/recovery.key" ] || "$bin/zdr-coordinator" recovery-keygen "$dir/recovery.key" >"$dir/recovery.pub"
for node in node-a1 node-b1; do
  [ -f "$dir/$node.manifest.key" ] || "$bin/zdr-coordinator" keygen "$dir/$node.manifest.key" >/dev/null
done
if [ ! -s "$dir/offsite.credentials" ]; then
  (umask 077 && printf 'access_key_id = zdrdemo\nsecret_access_key = %s\n' \
    "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$dir/offsite.credentials")
fi
# The coordinator prunes with keys of its own; the demo's SeaweedFS has one
# identity, so here they are a copy (in real life: keys that may delete,
# while the agents' may only write).
[ -s "$dir/prune.credentials" ] || (umask 077 && cp "$dir/offsite.credentials" "$dir/prune.credentials")
s3_key=$(awk -F' = ' '$1 == "access_key_id" {print $2}' "$dir/offsite.credentials")
s3_secret=$(awk -F' = ' '$1 == "secret_access_key" {print $2}' "$dir/offsite.credentials")

# The demo's tasks: the replication tasks, and an upload of node-a1 to the bucket.
if grep -q '^buckets:' "$tasks"; then
  cp "$tasks" "$dir/tasks.yml"
else
  {
    cat "$tasks"
    cat <<YAML

# Added by ops/demo.sh: node-a1's datasets, encrypted, signed and locked, to the
# local SeaweedFS bucket; a full every 10 minutes, an incremental every minute.
buckets:
  - name: demo-vault
    source: { class: demo, nodes: [node-a1] }
    bucket:
      endpoint: http://127.0.0.1:$s3_port
      bucket: zdr-vault
      region: us-east-1
      prefix: demo/
      credentials: { file: $dir/offsite.credentials }
      object_lock: { mode: governance, retain: 1h }
      prune: { credentials: { file: $dir/prune.credentials }, every: 5m }
    chain: { full_every: 10m, incremental_every: 1m }
    verify_every: 5m
    recipients: ["$(cat "$dir/recovery.pub")"]
YAML
  } >"$dir/tasks.yml"
fi
tasks="$dir/tasks.yml"
"$bin/zdr-coordinator" check "$policy" --tasks "$tasks"

mkdir -p "$dir/seaweedfs"
AWS_ACCESS_KEY_ID="$s3_key" AWS_SECRET_ACCESS_KEY="$s3_secret" weed mini -dir="$dir/seaweedfs" \
  -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -webdav=false -admin.ui=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -s3.port="$s3_port" -master.port="$weed_base" \
  -volume.port=$((weed_base + 1)) -filer.port=$((weed_base + 2)) -admin.port=$((weed_base + 3)) \
  >"$dir/seaweedfs.log" 2>&1 &
weed_pid=$!
pids+=("$weed_pid")
s3=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$s3_key:$s3_secret")
bucket_url="http://127.0.0.1:$s3_port/zdr-vault"
for _ in $(seq 150); do
  kill -0 "$weed_pid" 2>/dev/null || break
  curl -fs -o /dev/null "${s3[@]}" -I "$bucket_url" && break
  # Object lock is set when a bucket is made, never later.
  curl -fs -o /dev/null "${s3[@]}" -X PUT -H "x-amz-bucket-object-lock-enabled: true" "$bucket_url" && break
  sleep 0.4
done
# A bucket made with object lock is versioned; check the lock took.
if ! curl -fsS "${s3[@]}" "$bucket_url?object-lock=" 2>/dev/null | grep -q '<ObjectLockEnabled>Enabled<'; then
  echo "demo: SeaweedFS has no bucket zdr-vault with object lock on 127.0.0.1:$s3_port; see $dir/seaweedfs.log" >&2
  exit 1
fi
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
    # node-a1 uploads to the bucket; node-b1 can restore from it.
    case "$node" in
      node-a1) printf '\n[offsite]\nmanifest_key = "%s/node-a1.manifest.key"\n' "$dir" ;;
      node-b1)
        printf '\n[offsite]\nmanifest_key = "%s/node-b1.manifest.key"\nrecovery_key = "%s/recovery.key"\n' "$dir" "$dir"
        printf '[[offsite.manifest_signers]]\nkid = "node-a1"\npublic_key = "%s"\n' \
          "$("$bin/zdr-coordinator" pubkey "$dir/node-a1.manifest.key")"
        ;;
    esac
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
  offsite:  bucket zdr-vault at http://127.0.0.1:$s3_port (SeaweedFS, object lock, governance 1h),
            task demo-vault; restore from it onto node-b1:
            ZDR_COORDINATOR=http://127.0.0.1:$http_port ZDR_TOKEN_FILE=$dir/api.token \
              zdr restore node-a1:tank/db --from bucket:demo-vault --to node-b1:tank/db-from-bucket
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
