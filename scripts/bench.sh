#!/usr/bin/env bash
# Benchmarks against real peers (release build); prints a markdown table. Usage: scripts/bench.sh ssh|vnc|rdp|workspace|upgrades|events|soak|files [options]
# Options: --window 30 --warmup 5 --repeats 3 --sessions 1,5,20 --idle 100,1000 --rate 200 --minutes 10 (see portico-bench --help).
# The soak: scripts/bench.sh soak --minutes 60 (the hour; CI runs --minutes 5), --plot docs/img/soak-60min.png.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh >&2
# The comparison peer of the graphical benchmark.
if [ "${1:-}" = vnc ] && ! command -v websockify >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends install websockify >&2
fi
# Emulated links (--links): tc (iproute2), iptables, python3 for the delay line.
if [[ " $* " == *" --links"* ]] && ! command -v iptables >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends install iptables iproute2 python3 >&2
fi
if [ "${1:-}" = workspace ] || [ "${1:-}" = soak ]; then
  ./scripts/build-workspace-image.sh --rootfs-only >&2
fi
export PORTICO_BENCH_RELEASE=1
cargo build --release --locked -p portico --bin portico -p portico-tests --bin portico-bench >&2
exec ./target/release/portico-bench "$@"
