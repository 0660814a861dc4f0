#!/usr/bin/env bash
# The control plane at scale (issue 21): two real agents in namespaces and a
# simulated cluster written through the state API (1,000 services x 10 tasks
# over 50 nodes by default), on SQLite and on etcd; convergence, agent memory
# and CPU, store size and listing latency at 10, 100 and 1,000 services.
# Needs etcd-server (scripts/install-deps.sh), builds in release and runs
# target/release/netns-scale as root; arguments go to it:
#
#   scripts/bench-scale.sh --json /tmp/scale.json --svg docs/scale.svg
#   scripts/bench-scale.sh --store sqlite --soak 1h
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh
if ! command -v etcd >/dev/null; then
  echo "etcd not found: run scripts/install-deps.sh (Debian's etcd-server)" >&2
  exit 1
fi
# the harness runs the vxmesh binary from beside itself
cargo build --release -q -p vxmesh-control -p vxmesh-benches --bins
exec target/release/netns-scale "$@"
