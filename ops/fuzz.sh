#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets of integration/fuzz/ for a set number
# of executions each, starting from the checked-in corpus.
#
#   ops/fuzz.sh [--runs N] [--seed S] [TARGET...]     (default: every target)
#
# Prints per target: executions reached, time, exec/s, crashes; exits non-zero
# on any crash, leaving the input under integration/fuzz/artifacts/TARGET/.
# Keep a crash as integration/fuzz/regressions/TARGET/NAME once fixed: the
# stable test integration/tests/fuzz_corpus.rs replays it.
#
# Needs the nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz
# (CARGO_FUZZ_VERSION) the first time. Builds without a sanitizer (the decoders
# are safe Rust) and with debug assertions, so an overflow is a crash too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
runs=1000000
seed=1
targets=()
usage() { echo "usage: ops/fuzz.sh [--runs N] [--seed S] [TARGET...]" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --runs) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; runs=$2; shift 2 ;;
    --seed) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; seed=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "fuzz: unknown option $1" >&2; usage ;;
    *) targets+=("$1"); shift ;;
  esac
done

say() { printf 'fuzz: %s\n' "$*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "the nightly Rust toolchain is missing; cargo-fuzz needs it for libFuzzer."
  say "Install it with: rustup toolchain install nightly --profile minimal"
  exit 1
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION (once)"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" --quiet
fi

cd "$root/integration/fuzz"
known=$(cargo +nightly fuzz list)
if ((${#targets[@]} == 0)); then
  mapfile -t targets <<<"$known"
fi
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$known" || { say "no target $t; the targets are: $(echo $known)"; exit 2; }
done

flags=(--sanitizer none --debug-assertions)
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
say "built the targets in $(($(date +%s) - start)) s"

failed=0
printf '%-14s %14s %9s %10s %8s\n' target executions seconds exec/s crashes
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  log=$(mktemp)
  artifacts="artifacts/$t"
  mkdir -p "$artifacts"
  before=$(find "$artifacts" -type f | wc -l)
  t0=$(date +%s.%N)
  # New inputs go to the scratch directory (first), the checked-in corpus is only read.
  rc=0
  cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
    -runs="$runs" -seed="$seed" -max_len=8192 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(($(find "$artifacts" -type f | wc -l) - before))
  if ((rc != 0 && crashes == 0)); then crashes=1; fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  rate=$(awk -v n="${execs:-0}" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
  printf '%-14s %14s %9s %10s %8s\n' "$t" "${execs:-?}" "$secs" "$rate" "$crashes"
  if ((crashes > 0)); then
    failed=1
    say "$t crashed; the input is under integration/fuzz/$artifacts/. The end of its log:"
    tail -40 "$log" >&2
  fi
  rm -rf "$work" "$log"
done
exit "$failed"
