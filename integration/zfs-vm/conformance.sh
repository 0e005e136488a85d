#!/usr/bin/env bash
# conformance.sh - runs agent/tests/conformance.rs against real OpenZFS.
#
# Builds the conformance test binary on the host, then runs it in ONE zfs-vm
# guest with ZDR_CONFORMANCE=cli (each test creates and destroys its own
# file-backed pool in the guest's /tmp). Extra arguments go to the test
# binary (a name filter, --nocapture, ...). Exits with the test binary's exit
# code; 125 means the VM itself failed (see zfs-vm.sh).
#
#   integration/zfs-vm/conformance.sh [TEST-BINARY-ARGS...]
#
# ZDR_CONFORMANCE=lzc runs the same cases through the libzfs_core backend
# (builds with --features lzc), then the lzc unit test that needs /dev/zfs.
set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
ROOT=$(cd -- "$HERE/../.." && pwd)
cd -- "$ROOT"

t0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# The last "executable" cargo reports for the conformance test target.
mode=${ZDR_CONFORMANCE:-cli}
features=()
case $mode in
    cli) ;;
    lzc) features=(--features lzc) ;;
    *) echo "conformance.sh: ZDR_CONFORMANCE must be cli or lzc, not '$mode'" >&2; exit 2 ;;
esac

# The last "executable" cargo reports for test target $1 (extra cargo args follow).
test_binary() {
    local target=$1
    shift
    cargo test -p zdr-agent "${features[@]}" "$@" --no-run --message-format=json |
        python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m.get("target", {}).get("name") == sys.argv[1]:
        exe = m["executable"]
print(exe or "")
' "$target"
}

bin=$(test_binary conformance --test conformance)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "conformance.sh: cannot find the conformance test binary" >&2
    exit 1
fi
echo "conformance.sh: built $bin in $(elapsed "$t0")s" >&2

t1=$EPOCHREALTIME
rc=0
"$HERE/zfs-vm.sh" run env ZDR_CONFORMANCE="$mode" "$bin" --test-threads=1 "$@" || rc=$?
echo "conformance.sh: real OpenZFS lane ($mode) exit $rc; VM run $(elapsed "$t1")s, total $(elapsed "$t0")s wall" >&2
if [ "$rc" -eq 0 ] && [ "$mode" = lzc ]; then
    lib=$(test_binary zdr_agent --lib)
    "$HERE/zfs-vm.sh" run "$lib" --ignored --exact zfs::lzc::tests::real_zfs_clones_and_errlists || rc=$?
    echo "conformance.sh: lzc unit test on real OpenZFS exit $rc" >&2
fi
exit "$rc"
