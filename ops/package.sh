#!/usr/bin/env bash
# Builds the Debian packages of zdr with cargo-deb, then checks them with
# lintian (overrides, each with its reason, are in ops/deb/lintian/):
#
#   ops/package.sh        -> target/debian/zdr-agent_*.deb, zdr-coordinator_*.deb
#
# zdr-agent: the agent, its unit and /etc/zdr/agent.toml. zdr-coordinator: the
# coordinator and the `zdr` CLI, its unit, /etc/zdr/coordinator.env, an
# example /etc/zdr/policies.yaml and the zdr system user. Units ship disabled:
# Ansible (ops/ansible/) or the admin enables them once configured.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash "$root/ops/install-deps.sh" --package

echo "package: cargo build --release (several minutes on 2 cores)" >&2
cargo build --release --locked -p zdr-agent -p zdr-coordinator
rm -f target/debian/zdr-agent_*.deb target/debian/zdr-coordinator_*.deb
cargo deb --no-build --locked -p zdr-agent
cargo deb --no-build --locked -p zdr-coordinator

debs=(target/debian/zdr-agent_*.deb target/debian/zdr-coordinator_*.deb)
lintian --fail-on error,warning --display-info "${debs[@]}"
ls -l "${debs[@]}"
