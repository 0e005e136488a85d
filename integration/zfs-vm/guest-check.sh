#!/bin/bash
# guest-check.sh - runs INSIDE the zfs-vm guest (`zfs-vm.sh check`).
# Exercises the ZFS features zdr relies on, with a time per step; exits
# non-zero on the first failure. Pools are file-backed in guest RAM (/tmp).
set -euo pipefail

T_START=$EPOCHREALTIME
T=$T_START
STEP=start
trap 'echo "CHECK FAILED in step: $STEP (line $LINENO: $BASH_COMMAND)" >&2' ERR
step() {  # step NAME: close the previous step, print its time
    local t=$EPOCHREALTIME
    [ "$STEP" = start ] || printf '  %-52s %6.2fs\n' "$STEP" "$(awk -v a="$T" -v b="$t" 'BEGIN{print b-a}')"
    STEP=$1; T=$t
}
fail() { echo "CHECK FAILED in step: $STEP: $*" >&2; exit 1; }

echo "guest: kernel $(uname -r), uptime at start $(cut -d' ' -f1 /proc/uptime)s"
echo "guest: $(zfs version | tr '\n' ' ')"

D=/tmp/zdr-check
mkdir -p $D
step "zpool create x2 (512M file vdevs)"
truncate -s 512M $D/src.img $D/dst.img
zpool create -o ashift=12 -O mountpoint=/zsrc zsrc $D/src.img
# atime=off on the target: reading it back to compare must not modify it, or
# the next incremental recv is refused ("destination has been modified")
zpool create -o ashift=12 -O mountpoint=/zdst -O atime=off zdst $D/dst.img

step "zfs create + write 20MB + zfs snapshot"
zfs create zsrc/data
head -c 20M /dev/urandom > /zsrc/data/f1
zfs snapshot zsrc/data@s1

step "zfs list -Hp"
out=$(zfs list -Hp -t snapshot -o name,guid,createtxg,used,creation -r zsrc)
echo "$out" | sed 's/^/    /'
IFS=$'\t' read -r name guid txg used creation <<<"$out"
[ "$name" = zsrc/data@s1 ] || fail "unexpected name '$name'"
for n in "$guid" "$txg" "$used" "$creation"; do
    [[ $n =~ ^[0-9]+$ ]] || fail "-p did not give a plain number: '$n'"
done

step "zfs send | zfs recv (full, 20MB)"
zfs send zsrc/data@s1 | zfs recv zdst/data
cmp /zsrc/data/f1 /zdst/data/f1 || fail "received data differs"
[ "$(zfs get -Hp -o value guid zdst/data@s1)" = "$guid" ] || fail "snapshot guid not preserved"

step "zfs send -i | zfs recv (incremental, 5MB)"
head -c 5M /dev/urandom > /zsrc/data/f2
zfs snapshot zsrc/data@s2
zfs send -i @s1 zsrc/data@s2 | zfs recv zdst/data
cmp /zsrc/data/f2 /zdst/data/f2 || fail "incremental data differs"

step "zfs hold, destroy refused, release, destroy"
zfs hold zdr-keep zsrc/data@s1
zfs holds -H zsrc/data@s1 | grep -q zdr-keep || fail "hold not listed"
if zfs destroy zsrc/data@s1 2>$D/err; then fail "destroy of a held snapshot succeeded"; fi
echo "    refused as expected: $(head -n 1 $D/err)"
zfs release zdr-keep zsrc/data@s1
zfs destroy zsrc/data@s1

step "zfs bookmark + incremental from bookmark"
zfs bookmark zsrc/data@s2 'zsrc/data#b2'
zfs destroy zsrc/data@s2
head -c 5M /dev/urandom > /zsrc/data/f3
zfs snapshot zsrc/data@s3
zfs send -i 'zsrc/data#b2' zsrc/data@s3 | zfs recv zdst/data
cmp /zsrc/data/f3 /zdst/data/f3 || fail "data sent from a bookmark differs"
zfs list -H -t bookmark -o name zsrc/data | grep -qx 'zsrc/data#b2' || fail "bookmark not listed"

step "zpool destroy x2"
zpool destroy zsrc
zpool destroy zdst
step end
printf '  %-52s %6.2fs\n' "all steps" "$(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')"
echo "CHECK PASSED"
