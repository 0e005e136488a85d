#!/usr/bin/env bash
# In the converge VM (systemd is PID 1, see converge.sh): a real pool, then
# ops/ansible/site.yml three times against this host. Prints the times and
# checks; exits non-zero on the first check that fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
work=/var/tmp/zdr-converge
# The playbook logs go to the shared work tree, so the host can follow them.
logs=$root/target/converge
mkdir -p "$work" "$logs"
rm -f "$logs"/*.log
fail() { echo "converge FAILED: $*" >&2; exit 1; }
trap 'echo "converge FAILED: converge-guest.sh line $LINENO exited $?" >&2' ERR
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "systemd: $(systemctl is-system-running || true) (PID 1: $(cat /proc/1/comm))"
modprobe zfs
truncate -s 1G "$work/tank.img"
zpool create -O mountpoint=/tank tank "$work/tank.img"
zfs create tank/db

# Controller and host are this VM. The binaries the zdr_fleet role runs on
# the controller are the packaged ones, from the release build.
mkdir -p "$work/inventory/group_vars"
cat > "$work/inventory/hosts.yml" <<INV
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: /usr/bin/python3
  children:
    nats: { hosts: { zdr-vm: { nats_address: zdr-vm, nats_binary_src: $ZDR_CONVERGE_NATS_BIN } } }
    zdr_coordinators: { hosts: { zdr-vm: } }
    zdr_agents:
      hosts: { zdr-vm: }
      vars: { zdr_agent_site: site-a, zdr_agent_media: ssd, zdr_agent_node: zdr-vm }
INV
cat > "$work/inventory/group_vars/all.yml" <<'VARS'
zdr_fleet_secrets_dir: /var/tmp/zdr-converge/secrets
zdr_fleet_sites:
  - { name: site-a, description: converge test site }
zdr_fleet_classes:
  fast:
    tiers: { 10s: 3, 1m: 2 }
    rpo: 30s
    rto: 10m
    immutable_for: 0s
    copies: { total: 1, media: 1, offsite: 0 }
zdr_fleet_datasets:
  - { match: "tank/**", class: fast }
zdr_agent_online_timeout_secs: 240
VARS

export ANSIBLE_CONFIG=$root/ops/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
play() { # label args...: runs site.yml, prints its recap line and time
    local label=$1 t0 rc=0; shift
    t0=$(now)
    ansible-playbook -i "$work/inventory" "$root/ops/ansible/site.yml" "$@" > "$logs/$label.log" 2>&1 || rc=$?
    recap=$(grep -E '^zdr-vm +:' "$logs/$label.log" | tail -n 1)
    echo "$label: $(secs "$t0" "$(now)") s, rc $rc, $recap"
    if [ "$rc" != 0 ]; then tail -n 60 "$logs/$label.log" >&2; fail "$label"; fi
}
changed() { grep -E '^zdr-vm +:' "$logs/$1.log" | tail -n 1 | sed -n 's/.*changed=\([0-9]*\).*/\1/p'; }

echo "pool tank ready; ansible-playbook logs: $logs/*.log"
play converge-1
play converge-2
[ "$(changed converge-2)" = 0 ] || { grep -B2 -E '^changed:' "$logs/converge-2.log" >&2; fail "second converge changed something"; }
play check --check --diff
[ "$(changed check)" = 0 ] || { grep -B2 -E '^changed:' "$logs/check.log" >&2; fail "--check reports changes"; }

echo "units:"
for u in nats-server zdr-coordinator zdr-agent; do
    systemctl is-active --quiet "$u" || { journalctl -u "$u" --no-pager | tail -20 >&2; fail "$u is not active"; }
    echo "  $u: $(systemctl show "$u" -p ActiveState -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome \
        -p ProtectKernelTunables -p ProtectControlGroups -p PrivateDevices -p PrivateUsers -p DeviceAllow \
        | tr '\n' ' ')"
    echo "  $u: $(systemd-analyze security "$u" 2>/dev/null | tail -n 1)"
done
[ "$(systemctl show zdr-coordinator -p User --value)" = zdr ] || fail "the coordinator does not run as zdr"
[ "$(systemctl show zdr-agent -p NoNewPrivileges --value)" = yes ] || fail "the agent unit is not hardened"
[ "$(systemctl show zdr-agent -p ProtectSystem --value)" = strict ] || fail "the agent unit is not ProtectSystem=strict"

# The agent snapshots the real pool, and prunes it to the tiers (10s: 3, 1m: 2 keep at most 5).
t0=$(now)
most=0
for _ in $(seq 60); do
    n=$(zfs list -H -t snapshot -o name -r tank/db | grep -c '@zdr_' || true)
    [ "$n" -gt "$most" ] && most=$n
    if [ "$most" -ge 5 ] && [ "$(secs "$t0" "$(now)" | cut -d. -f1)" -ge 75 ]; then break; fi
    sleep 3
done
n=$(zfs list -H -t snapshot -o name -r tank/db | grep -c '@zdr_' || true)
echo "snapshots of tank/db: $n now, at most $most seen, over $(secs "$t0" "$(now)") s"
[ "$most" -ge 3 ] || fail "the agent made fewer than 3 snapshots of tank/db"
[ "$n" -le 5 ] || fail "the agent did not prune tank/db to its tiers ($n snapshots kept)"
grep -q '"destroy' /var/lib/zdr/agent/audit.jsonl || fail "no destroy in the agent's audit log"
echo "converge: ok"
