#!/usr/bin/env bash
# Runs the README's demo command (ops/demo.sh) in a throwaway directory and
# waits, through the coordinator's API, until the fleet does what the README
# says: three agents online, and each of the demo's tasks (demo-local,
# demo-offsite, the bucket task demo-vault) with a job that succeeded, the
# bucket's with a committed upload. Fails after ZDR_SMOKE_SECS (default 240).
# Uses the demo's fixed ports (4222, 8080, 8333, 19340-19343).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
limit="${ZDR_SMOKE_SECS:-240}"
dir=$(mktemp -d)
ZDR_DEMO_DIR="$dir" bash "$root/ops/demo.sh" >"$dir/demo.out" 2>&1 &
demo=$!
stop() {
  kill -TERM "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
}
trap stop EXIT

check() {
  python3 - "$1" "$2" <<'PY'
import json, sys
fleet, jobs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
online = sorted(n["node"] for n in fleet["nodes"] if n["online"])
ok = {}
for j in jobs["jobs"]:
    good = j["last_success_ms"] is not None
    if j["kind"] == "upload":
        good = good and len((j.get("upload") or {}).get("committed") or []) > 0
    ok[j["task"]] = ok.get(j["task"], False) or good
want = ["demo-local", "demo-offsite", "demo-vault"]
missing = [t for t in want if not ok.get(t)]
print("online: %s; tasks without a success yet: %s" % (online, missing or "none"))
sys.exit(0 if online == ["node-a1", "node-a2", "node-b1"] and not missing else 1)
PY
}

start=$(date +%s)
while :; do
  if ! kill -0 "$demo" 2>/dev/null; then
    echo "demo-smoke: ops/demo.sh exited early; its output:" >&2
    cat "$dir/demo.out" >&2
    exit 1
  fi
  fleet=$(curl -fs http://127.0.0.1:8080/api/v1/fleet || true)
  jobs=$(curl -fs http://127.0.0.1:8080/api/v1/jobs || true)
  if [ -n "$fleet" ] && [ -n "$jobs" ]; then
    if said=$(check "$fleet" "$jobs"); then
      echo "demo-smoke: ok after $(($(date +%s) - start)) s: $said"
      stop
      rm -rf "$dir"
      exit 0
    fi
  fi
  if [ $(($(date +%s) - start)) -ge "$limit" ]; then
    echo "demo-smoke: not there after $limit s: ${said:-the API did not answer}" >&2
    tail -n 20 "$dir"/*.log >&2 || true
    exit 1
  fi
  sleep 3
done
