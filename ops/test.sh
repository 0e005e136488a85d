#!/usr/bin/env bash
# Every test zdr has, as CI runs it (.ci/run calls this). Installs what it needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash ops/install-deps.sh
export PATH="$HOME/.local/bin:$PATH"

step() { printf '\n== %s\n' "$*" >&2; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "unit and integration tests (real nats-server, real binaries, simulated ZFS)"
cargo test --workspace

# Real OpenZFS runs only in a VM here (the host kernel cannot load it). The first
# setup installs the kernel and builds the module (about 10 minutes); later runs
# reuse the cache.
step "real OpenZFS: set up the VM lane"
bash integration/zfs-vm/zfs-vm.sh setup
step "real OpenZFS: feature check"
bash integration/zfs-vm/zfs-vm.sh check
step "real OpenZFS: the conformance suite on the cli backend"
bash integration/zfs-vm/conformance.sh
