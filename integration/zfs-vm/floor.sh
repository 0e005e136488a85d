#!/usr/bin/env bash
# floor.sh - the retention floor through the real coordinator and agents, on
# real OpenZFS, in ONE zfs-vm guest (floor-guest.sh says what is checked):
# snapshots held by `zdr-floor` on source and copy, signed prunes with no
# window destroy nothing, root's `zfs destroy` fails on the hold, and a
# compromised source's rollback is refused by the target.
#
#   integration/zfs-vm/floor.sh
#   ZDR_VM_ZFS=2.1 integration/zfs-vm/floor.sh     # on Debian 12's own OpenZFS
#
# The same host side as replication.sh (the build, nats-server, the logs
# directory, kept when a check fails): it runs that script with
# floor-guest.sh as the guest. Exit code: the number of failed checks; 125
# means the VM failed.
set -euo pipefail
HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ZDR_REPL_GUEST=floor-guest.sh exec "$HERE/replication.sh"
