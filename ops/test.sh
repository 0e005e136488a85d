#!/usr/bin/env bash
# Every test zdr has, as CI runs it (.ci/run calls this). Installs what it needs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash ops/install-deps.sh
export PATH="$HOME/.local/bin:$PATH"
# A clean clone builds once: incremental caches would only add gigabytes to
# the target directory (see the dev profile in Cargo.toml).
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*" >&2; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "docs (broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
step "Prometheus rules: promtool check and unit tests"
promtool check rules ops/prometheus/zdr-rules.yml
promtool test rules ops/prometheus/zdr-rules.test.yml
step "unit and integration tests (real nats-server, real binaries, simulated ZFS)"
cargo test --workspace
# Each cargo-fuzz target briefly, from its checked-in corpus (BENCHMARKS.md,
# "Fuzzing", has the 10-million runs). libFuzzer needs the nightly toolchain.
step "fuzzing: every cargo-fuzz target, 200,000 executions each (seeded)"
if rustup run nightly rustc --version >/dev/null 2>&1 ||
  rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  bash ops/fuzz.sh --runs 200000 --seed "${ZDR_FUZZ_SEED:-1}"
else
  echo "fuzzing SKIPPED: no nightly Rust toolchain here and rustup could not install one" >&2
fi
step "the demo fleet (ops/demo.sh): agents online, replication and bucket uploads succeed"
bash integration/demo-smoke.sh

# Real OpenZFS runs only in a VM here (the host kernel cannot load it). The first
# setup installs the kernel and builds the module (about 10 minutes); later runs
# reuse the cache.
step "real OpenZFS: set up the VM lane"
bash integration/zfs-vm/zfs-vm.sh setup
step "real OpenZFS: feature check"
bash integration/zfs-vm/zfs-vm.sh check
step "real OpenZFS: the conformance suite on the cli backend"
bash integration/zfs-vm/conformance.sh
step "real OpenZFS: replication through the real coordinator and agents"
bash integration/zfs-vm/replication.sh
step "real OpenZFS: restore drills through the real coordinator and agents"
bash integration/zfs-vm/drill.sh
step "real OpenZFS: the retention floor refuses commands signed with the real key"
bash integration/zfs-vm/floor.sh
step "real OpenZFS: kill -9 trials 0 and 1 (seeded; integration/zfs-vm/trials.sh runs 20)"
ZDR_TRIALS=2 bash integration/zfs-vm/trials.sh
# The lzc backend binds libzfs_core with bindgen: it needs libclang and the
# libzfs headers (the VM setup installed libzfslinux-dev).
dpkg -s libclang-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
step "clippy with the lzc backend"
cargo clippy -p zdr-agent --all-targets --features lzc --quiet -- -D warnings
step "real OpenZFS: the conformance suite on the lzc backend"
ZDR_CONFORMANCE=lzc bash integration/zfs-vm/conformance.sh

# Debian 12's own OpenZFS (2.1) runs in the guest from a layer over the host's
# root, so the host keeps 2.3 and one run tests both (zfs-vm/README.md).
step "real OpenZFS 2.1: build it for the guest"
bash integration/zfs-vm/zfs-vm.sh setup --zfs 2.1
step "real OpenZFS 2.1: the conformance suite on the cli backend"
ZDR_VM_ZFS=2.1 bash integration/zfs-vm/conformance.sh
step "real OpenZFS 2.1: replication through the real coordinator and agents"
ZDR_VM_ZFS=2.1 bash integration/zfs-vm/replication.sh
step "real OpenZFS 2.1: the retention floor refuses commands signed with the real key"
ZDR_VM_ZFS=2.1 bash integration/zfs-vm/floor.sh
step "real OpenZFS 2.1: the conformance suite on the lzc backend"
ZDR_VM_ZFS=2.1 ZDR_CONFORMANCE=lzc bash integration/zfs-vm/conformance.sh
