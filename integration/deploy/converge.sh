#!/usr/bin/env bash
# Converge test of the Ansible roles on a real host with systemd as PID 1 and
# a real ZFS pool: the zfs-vm lane's qemu VM (integration/zfs-vm), booted into
# the host's own Debian userspace with systemd instead of the lane's one-shot
# init. Inside, converge-guest.sh makes a file-backed pool, then runs
# ops/ansible/site.yml against the VM itself (connection local): nats, a
# coordinator and an agent, from the .debs of ops/package.sh.
#
#   integration/deploy/converge.sh
#
# Checks (converge-guest.sh): the services run under their hardened units,
# the agent snapshots and prunes the real pool, a second converge reports 0
# changed, and --check reports 0 changed. Times are printed; the playbook
# logs are in target/converge/ as they are written. Exit code: the guest's,
# or 125 when the VM failed (ZDR_CONVERGE_TIMEOUT, default 5400 s). Under
# software emulation on a loaded 2-core host this is slow: see the note in
# integration/deploy/README.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
vm=$root/integration/zfs-vm/zfs-vm.sh
CACHE=${ZDR_VM_CACHE:-/var/cache/zdr-zfs-vm}
TIMEOUT=${ZDR_CONVERGE_TIMEOUT:-5400}
say() { echo "converge: $*" >&2; }

bash "$vm" setup >&2
ls target/debian/zdr-agent_*.deb target/debian/zdr-coordinator_*.deb >/dev/null 2>&1 || bash ops/package.sh

kernel=$(ls -t "$CACHE"/vmlinux-* | head -n 1)
base_initrd=$(ls -t "$CACHE"/initrd-*.cpio | head -n 1)
run=$(mktemp -d /var/tmp/zdr-converge.XXXXXX)
qpid=
cleanup() {
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; fi
    rm -rf -- "$run"
}
trap cleanup EXIT

# The lane's initramfs, with a stage2 that hands over to systemd.
mkdir "$run/initrd" "$run/ctl"
(cd "$run/initrd" && cpio -id --quiet < "$base_initrd")
cp "$root/integration/deploy/stage2-systemd" "$run/initrd/stage2"
chmod 755 "$run/initrd/stage2"
(cd "$run/initrd" && find . | cpio -o -H newc --quiet) > "$run/initrd.cpio"

# The nats role installs the real nats-server binary, not a pyenv shim.
nats_bin=$(readlink -f "$(pyenv which nats-server 2>/dev/null || command -v nats-server)")
file -L "$nats_bin" | grep -q ELF || { say "no nats-server binary found (ops/install-deps.sh installs one)"; exit 1; }
{
    printf 'export PATH=%q\n' "$PATH:/root/.local/bin:/usr/local/bin:/usr/sbin:/sbin"
    printf 'export ZDR_CONVERGE_NATS_BIN=%q\n' "$nats_bin"
    printf 'export HOME=/root LANG=C.UTF-8 ZDR_IN_ZFS_VM=1\n'
    printf 'cd %q\n' "$root"
    printf 'exec bash integration/deploy/converge-guest.sh\n'
} > "$run/ctl/cmd.sh"
printf 'ZDR_RW=%q\n' "$root" > "$run/ctl/meta"
: > "$run/ctl/stdout"; : > "$run/ctl/stderr"

t0=$EPOCHREALTIME
# shellcheck disable=SC2054  # commas are qemu option syntax
timeout -s KILL "$TIMEOUT" qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 -accel tcg -cpu max -smp "${ZDR_VM_CPUS:-2}" -m "${ZDR_VM_MEM:-4096M}" \
    -kernel "$kernel" -initrd "$run/initrd.cpio" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic systemd.show_status=0" \
    -serial "file:$run/console.log" \
    -fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=root,mount_tag=zdr_root \
    -fsdev "local,id=ctl,path=$run/ctl,security_model=none" -device virtio-9p-pci,fsdev=ctl,mount_tag=zdr_ctl \
    -fsdev "local,id=rw,path=$root,security_model=none" -device virtio-9p-pci,fsdev=rw,mount_tag=zdr_rw \
    < /dev/null > "$run/qemu.log" 2>&1 &
qpid=$!
tail -s 0.5 -n +1 -f --pid="$qpid" "$run/ctl/stdout" &
tail -s 0.5 -n +1 -f --pid="$qpid" "$run/ctl/stderr" >&2 &
wait "$qpid" || true
qpid=
wait
say "VM total $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s"
if [ -s "$run/ctl/rc" ]; then
    exit "$(cat "$run/ctl/rc")"
fi
say "the VM ended without the converge's exit code; console tail:"
tail -n 40 "$run/console.log" >&2
exit 125
