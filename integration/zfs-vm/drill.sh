#!/usr/bin/env bash
# drill.sh - zdr's restore drills through the real coordinator and agents, on
# real OpenZFS, in ONE zfs-vm guest (drill-guest.sh says what is checked):
#   1. a drill that passes: restored into scratch (canmount=noauto), content
#      hashes of the mounted snapshots equal, recorded in /api/v1/drills;
#   2. a drill of a raw-encrypted copy, then the next raw incremental
#      replication completes (a drill never snapshots the replica);
#   3. bytes inverted inside the replica pool's vdev file: the drill fails,
#      naming the I/O error, and zpool reports the checksum errors.
#
#   integration/zfs-vm/drill.sh                    # all three
#   ZDR_DRILL_ONLY="1 3" integration/zfs-vm/drill.sh
#
# The same host side as replication.sh (the build, nats-server, the logs
# directory, kept when a check fails, ZDR_REPL_KEEP_LOGS, ZDR_REPL_PROFILE):
# it runs that script with drill-guest.sh as the guest. Exit code: the
# number of failed checks; 125 means the VM failed. 25 min here on a 2-core
# host at load 10-15 (other builds beside it); a quiet host was not measured.
set -euo pipefail
HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
export ZDR_DRILL_ONLY=${ZDR_DRILL_ONLY:-1 2 3}
ZDR_REPL_GUEST=drill-guest.sh exec "$HERE/replication.sh"
