#!/usr/bin/env bash
# Installs what building and running vxmesh's demo and tests need, from Debian's
# packages: nftables (nft: the agent's tables), and for the tests iproute2 (ip,
# bridge), util-linux (nsenter), ethtool, ping, iperf3,
# tcpdump, wireguard-go + wg (a stock WireGuard peer for the interop tests),
# busybox-static (httpd and wget in the guides, which the docs test runs),
# a C compiler for the bundled SQLite, etcd (the cluster store the tests run
# against), sqlite3 (the invalid-rows test edits the store behind the agents),
# protoc with its well-known types (etcd-client builds its gRPC
# code at build time), and a Docker engine (docker.io) for the Docker driver
# tests, whose test image is imported from busybox-static, with docker-compose
# for the compose file in docs/docker.md, and openssl (the CLI the operations
# guide makes etcd's certificates with, which the docs test runs). Idempotent;
# quiet when all is there.
set -euo pipefail
pkgs=(iproute2 util-linux nftables ethtool iputils-ping iperf3 tcpdump wireguard-go wireguard-tools busybox-static gcc libc6-dev ca-certificates openssl etcd-server sqlite3 protobuf-compiler libprotobuf-dev)
# Only where no Docker is installed at all: docker.io conflicts with Docker's own
# docker-ce packages, which apt would otherwise remove.
if ! command -v docker >/dev/null && ! command -v dockerd >/dev/null; then
  pkgs+=(docker.io)
fi
# Compose v1 (Debian's docker-compose) runs docs/docker-compose.yml in the tests;
# only where no docker-compose is on PATH (Docker's own packages may bring one).
if ! command -v docker-compose >/dev/null; then
  pkgs+=(docker-compose)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
