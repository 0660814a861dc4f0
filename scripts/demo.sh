#!/usr/bin/env bash
# The demo: a vxmesh overlay across three nodes (namespaces on this machine),
# traffic between them, then everything removed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh
scripts/install-deps.sh
cargo build --release --bins -q
exec target/release/vxmesh-demo
