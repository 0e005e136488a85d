#!/usr/bin/env bash
# bench-listing.sh - benchmark (not a test) of listing snapshots (of one
# dataset, or of D datasets under one parent: ZDR_BENCH_DATASETS) on real OpenZFS, in ONE zfs-vm guest, by each method available:
#   (a) zfs list -Hp -t snapshot -o name,guid,createtxg,creation,used,userrefs
#       -s createtxg -d 1 DS          (what zdr's agent runs, agent/src/zfs/cli.rs)
#   (b) zfs list -H -t snapshot -o name -s name -d 1 DS      (names only)
#   (c) zfs program -n -j POOL list_snapshots.lua DS         (channel program)
#   (d) zfs list -j -p ... with the columns of (a)           (JSON, new in 2.3)
# libzfs_core has no listing call, so there is no lzc method; lzc is used only
# to CREATE the snapshots fast (a small C loop around lzc_snapshot, built here
# on the host with gcc and libzfslinux-dev, which `zfs-vm.sh setup` installs).
#
#   integration/zfs-vm/bench-listing.sh [SIZES...]     # default: 1000 10000 100000
#
# Snapshots of one filesystem cannot share a txg (a channel program's second
# zfs.sync.snapshot of the same filesystem returns EAGAIN; `zfs snapshot
# fs@a fs@b` is refused), so creating N snapshots costs N txg syncs. Sizes are
# reached in turn in the same dataset; before each size the guest estimates the
# creation time from the rate so far and skips the size (saying so) if it is
# over ZDR_BENCH_CREATE_BUDGET. At each size every method runs ZDR_BENCH_REPS
# times, interleaved and rotated, and the table shows the median and the ratio
# to (a). Every run's output is checked to list exactly the N snapshots, with
# the same names as (a). The machine is shared and the guest is emulated (tcg):
# read the ratios, not the absolute seconds.
#
# Environment: ZDR_BENCH_REPS (3), ZDR_BENCH_CREATE_BUDGET (2700 s of creation
# per size), ZDR_BENCH_LIST_BUDGET (1500 s of timed listing per size; fewer
# rounds are run above it), ZDR_BENCH_TIME_LIMIT (0: none; seconds for the
# whole guest part: sizes that do not fit are skipped, runs that overrun are
# killed and shown as such), ZDR_BENCH_POOL_SIZE (2G: the file vdev; 2G ran
# out of space at 4949 snapshots, so give 10k+ more, and ZDR_VM_MEM),
# ZDR_BENCH_DATASETS (1: all snapshots in one dataset; D > 1: spread evenly
# over D child datasets of one parent, listed recursively from the parent;
# sizes must be multiples of D), plus zfs-vm.sh's ZDR_VM_* (ZDR_VM_TIMEOUT defaults
# to 14400 here). Exit code: the guest's; 125 means the VM failed.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 10000 100000)
DATASETS=${ZDR_BENCH_DATASETS:-1}
case $DATASETS in ''|*[!0-9]*|0*) echo "bench-listing: ZDR_BENCH_DATASETS must be a positive integer, not '$DATASETS'" >&2; exit 2 ;; esac
prev=0
for n in "${SIZES[@]}"; do
    case $n in ''|*[!0-9]*|0*) echo "bench-listing: sizes must be positive integers, not '$n'" >&2; exit 2 ;; esac
    [ "$n" -gt "$prev" ] || { echo "bench-listing: sizes must be ascending" >&2; exit 2; }
    [ $((n % DATASETS)) -eq 0 ] || { echo "bench-listing: size $n is not a multiple of ZDR_BENCH_DATASETS=$DATASETS" >&2; exit 2; }
    prev=$n
done

# The creation helper. The guest sees the host's / (so this /tmp directory)
# read-only through its overlay.
TMP=$(mktemp -d /tmp/zdr-bench-listing.XXXXXX)
trap 'rm -rf -- "$TMP"' EXIT
cat > "$TMP/snapmany.c" <<'EOF'
/* snapmany FIRST COUNT FS...: for i in FIRST..FIRST+COUNT-1, one lzc_snapshot
 * call (one txg sync) taking FS@s<i> (7 digits) of every FS at once, in one
 * process. Snapshots of different filesystems share a txg; those of one
 * filesystem cannot. */
#include <stdio.h>
#include <stdlib.h>
#include <libzfs_core.h>
#include <libnvpair.h>
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: snapmany FIRST COUNT FS...\n"); return 2; }
    if (libzfs_core_init() != 0) { perror("libzfs_core_init"); return 1; }
    long first = atol(argv[1]), count = atol(argv[2]);
    char name[512];
    for (long i = first; i < first + count; i++) {
        nvlist_t *snaps = fnvlist_alloc(), *errs = NULL;
        for (int f = 3; f < argc; f++) {
            snprintf(name, sizeof name, "%s@s%07ld", argv[f], i);
            fnvlist_add_boolean(snaps, name);
        }
        int e = lzc_snapshot(snaps, NULL, &errs);
        if (e != 0) { fprintf(stderr, "lzc_snapshot %s: error %d\n", name, e); return 1; }
        fnvlist_free(snaps);
        if (errs) fnvlist_free(errs);
    }
    libzfs_core_fini();
    return 0;
}
EOF
LZC=""
if gcc -O2 -I/usr/include/libzfs -I/usr/include/libspl -o "$TMP/snapmany" "$TMP/snapmany.c" \
    -lzfs_core -lnvpair 2> "$TMP/gcc.err"; then
    LZC=$TMP/snapmany
else
    echo "bench-listing: WARNING: could not build the lzc helper (gcc, libzfslinux-dev?);" \
        "falling back to one zfs snapshot per snapshot (much slower):" >&2
    sed 's/^/  /' "$TMP/gcc.err" >&2
fi

echo "host: $(nproc) cores, loadavg $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
export ZDR_BENCH_SIZES="${SIZES[*]}"
export ZDR_BENCH_LZC=$LZC
export ZDR_BENCH_LUA=$HERE/list_snapshots.lua
export ZDR_BENCH_REPS=${ZDR_BENCH_REPS:-3}
export ZDR_BENCH_CREATE_BUDGET=${ZDR_BENCH_CREATE_BUDGET:-2700}
export ZDR_BENCH_LIST_BUDGET=${ZDR_BENCH_LIST_BUDGET:-1500}
export ZDR_BENCH_TIME_LIMIT=${ZDR_BENCH_TIME_LIMIT:-0}
export ZDR_BENCH_POOL_SIZE=${ZDR_BENCH_POOL_SIZE:-2G}
export ZDR_BENCH_DATASETS=$DATASETS
export ZDR_VM_TIMEOUT=${ZDR_VM_TIMEOUT:-14400}
rc=0
ZDR_VM_RW=none ZDR_VM_TIMING=${ZDR_VM_TIMING:-1} "$HERE/zfs-vm.sh" run /bin/bash "$HERE/bench-listing-guest.sh" || rc=$?
echo "host: loadavg at the end $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
exit $rc
