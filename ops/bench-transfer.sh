#!/usr/bin/env bash
# Benchmarks the replication data plane (agent/src/transfer) on loopback:
# throughput against ssh and a plain pipe, then throttle accuracy.
#
#   ops/bench-transfer.sh                    # 1 GiB per run, 30 s per rate
#   BYTES=268435456 THROTTLE_SECS=5 ops/bench-transfer.sh
#
# Runs its own sshd on 127.0.0.1 (temporary host and client keys, a free
# port), so the ssh figures do not depend on the machine's sshd. Installs
# openssh-server with apt if sshd is missing (needs root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

BYTES="${BYTES:-1073741824}"
RUNS="${RUNS:-3}"
THROTTLE_SECS="${THROTTLE_SECS:-30}"
RATES_MB="${RATES_MB:-10,50,100}"

say() { printf 'bench-transfer: %s\n' "$*" >&2; }

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1; then
  say "installing openssh-server and openssh-client"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi

tmp=$(mktemp -d)
sshd_pid=""
cleanup() {
  if [ -n "$sshd_pid" ]; then kill "$sshd_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user=$(id -un)
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/client_key"
cp "$tmp/client_key.pub" "$tmp/authorized_keys"
cat >"$tmp/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $tmp/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
EOF
# sshd wants its privilege separation directory.
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$tmp/sshd_config" 2>"$tmp/sshd.log" &
sshd_pid=$!

ssh_opts=(-p "$port" -i "$tmp/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
for _ in $(seq 50); do
  if ssh "${ssh_opts[@]}" "$user@127.0.0.1" true 2>/dev/null; then break; fi
  sleep 0.1
done
if ! ssh "${ssh_opts[@]}" "$user@127.0.0.1" true; then
  say "the temporary sshd does not answer; its log:"
  cat "$tmp/sshd.log" >&2
  exit 1
fi
say "sshd on 127.0.0.1:$port ($(ssh -V 2>&1))"

say "building the benchmark (release)"
cargo bench -p zdr-agent --bench transfer --no-run --quiet
cargo bench -p zdr-agent --bench transfer --quiet -- \
  --bytes "$BYTES" --runs "$RUNS" --throttle-secs "$THROTTLE_SECS" --rates-mb "$RATES_MB" \
  --ssh-port "$port" --ssh-key "$tmp/client_key" --ssh-user "$user"
