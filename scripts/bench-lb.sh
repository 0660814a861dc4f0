#!/usr/bin/env bash
# The load-balancer load harness (issue 11): a service VIP and a published port
# of vxmesh beside the kernel doing the same (nft DNAT with numgen, kube-proxy
# nftables style, over its VXLAN + bridge), between the same two nodes in one run.
# Installs what it needs with apt (wrk, nginx, iperf3, nftables, iproute2), builds
# in release and runs target/release/netns-lb as root; arguments go to it:
#
#   scripts/bench-lb.sh --runs 3 --secs 5 --json docs/lb.json --svg docs/lb.svg
#
# With --flow-logs-ab it compares vxmesh with flow logs off and on instead (the
# cost of issue 22's flow logs; docs/benchmarks.md):
#
#   scripts/bench-lb.sh --flow-logs-ab --runs 5 --secs 5 --json docs/lb-flow-logs.json
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/as-root.sh

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

pkgs=(iproute2 nftables iputils-ping iperf3 wrk gcc libc6-dev ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
# any flavour of nginx will do; nginx-light is the smallest where Debian has it
nginx_found=no
if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
  nginx_found=yes
fi
if [ ${#missing[@]} -gt 0 ] || [ "$nginx_found" = no ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if [ "$nginx_found" = no ]; then
    if apt-cache show nginx-light >/dev/null 2>&1; then
      missing+=(nginx-light)
    else
      missing+=(nginx)
    fi
  fi
  echo "installing: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
# the harness runs the vxmesh binary from beside itself
cargo build --release -q -p vxmesh-control -p vxmesh-benches --bins
exec target/release/netns-lb "$@"
