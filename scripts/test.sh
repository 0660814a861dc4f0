#!/usr/bin/env bash
# Every test: unit and property tests of each crate, then the netns suite
# (real agents, real devices, real traffic in throwaway namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh
scripts/install-deps.sh
cargo build --workspace --bins --tests -q
# Two at a time: the machine has two cores, and each netns test runs agents.
cargo test --workspace -- --test-threads=2
